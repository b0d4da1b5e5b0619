//! Machine-readable figures of the benchmark programs. Each prints `FIGURE <key> <value>
//! <unit>` lines beside its human-readable output; `bench` (the suite) runs them repeatedly,
//! collects these lines and writes `docs/benchmarks.md`.

/// Prints one figure (`key` is `suite.name`, no spaces).
pub fn figure(key: &str, value: f64, unit: &str) {
    println!("FIGURE {key} {value} {unit}");
}

/// The figures in a program's output, in order.
pub fn parse(stdout: &str) -> Vec<(String, f64, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("FIGURE ")?.split_whitespace();
            let key = it.next()?.to_owned();
            let value = it.next()?.parse().ok()?;
            let unit = it.next().unwrap_or("").to_owned();
            Some((key, value, unit))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn figures_round_trip() {
        let out = "noise\nFIGURE sync.drain_s 18.5 s\nFIGURE x.y NaN ms\nFIGURE bad\n";
        let f = super::parse(out);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0], ("sync.drain_s".to_owned(), 18.5, "s".to_owned()));
        assert!(f[1].1.is_nan());
    }
}
