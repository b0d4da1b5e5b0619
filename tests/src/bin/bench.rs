//! `bench`: the benchmark suite in one command.
//!
//! ```text
//! cargo run --release -p system-tests --bin bench -- all      # every suite, 3 runs, writes docs/benchmarks.md
//! cargo run --release -p system-tests --bin bench -- quick    # every suite, tiny sizes, 1 run (smoke)
//! bench [all|quick|SUITE...] [--runs N] [--out FILE] [--reports-database NAME] [--no-build]
//! ```
//!
//! Suites (each a program of this package, run as its own process, which prints `FIGURE`
//! lines, see `system_tests::benchout`): `edge` (edge API write path vs raw SQLite),
//! `sync` (backlog drain with two live sites, the plain `INSERT … UNNEST` reference,
//! propagation both ways, wire cost), `reports` (reporting API at 6,000 connections over a
//! 10M-event dataset) and `sizes` (stripped release binaries, measured here). Every figure is
//! reported as min / median / max over the runs, beside its target; a figure whose target is
//! missed says so. Timings are never asserted: the quick mode checks only that every suite
//! runs and reports its figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use system_tests::benchout;

/// `(key, value, unit)` as the suite programs print them.
type Figures = Vec<(String, f64, String)>;

/// How a figure is judged against the product's targets.
#[derive(Clone, Copy)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// Shown without a target (a reference or a context figure).
    None,
}

/// The figures the document shows, in order: key, label, target, what the target says.
const FIGURES: &[(&str, &str, Target, &str)] = &[
    (
        "edge.b_p99_ms",
        "edge API p99, 200 clients at 6,000 events/s (open loop)",
        Target::AtMost(10.0),
        "p99 < 10 ms",
    ),
    ("edge.b_p50_ms", "edge API p50, same load", Target::None, ""),
    (
        "edge.a_events_per_s",
        "edge API, 200 clients closed loop, 1 event/request",
        Target::AtLeast(5_000.0),
        "≥ 5,000 events/s",
    ),
    (
        "edge.a_p99_ms",
        "edge API p99 at saturation (queueing)",
        Target::None,
        "",
    ),
    (
        "edge.c_events_per_s",
        "edge API, 100 events/request",
        Target::None,
        "",
    ),
    (
        "edge.raw_1_row_per_tx_per_s",
        "reference: raw SQLite, 1 row per durable transaction",
        Target::None,
        "",
    ),
    (
        "edge.raw_1000_rows_per_tx_per_s",
        "reference: raw SQLite, 1,000 rows per transaction",
        Target::None,
        "",
    ),
    (
        "edge.api_a_over_raw_1_row",
        "edge API ÷ raw SQLite (1 row per transaction)",
        Target::None,
        "",
    ),
    (
        "edge.rss_mb",
        "edge agent RSS after the open-loop phase",
        Target::AtMost(40.0),
        "< 40 MB",
    ),
    (
        "edge.lost_events",
        "acknowledged but not stored",
        Target::AtMost(0.0),
        "0",
    ),
    (
        "sync.drain_s",
        "7-day backlog (500k events) drain, two other sites live",
        Target::AtMost(20.0),
        "< 20 s",
    ),
    (
        "sync.live_p99_during_drain_ms",
        "live sites' edge → hub p99 during the drain",
        Target::AtMost(2_000.0),
        "< 2 s",
    ),
    (
        "sync.drain_events_per_s",
        "full-path ingest over QUIC",
        Target::AtLeast(50_000.0),
        "≥ 50,000 events/s",
    ),
    (
        "sync.plain_events_per_s",
        "reference: plain INSERT … UNNEST of the same rows into the same partitioned, RLS tables",
        Target::None,
        "",
    ),
    (
        "sync.ingest_call_events_per_s",
        "the hub's ingest call alone (insert, duplicate check, rollups), same rows, no QUIC",
        Target::None,
        "",
    ),
    (
        "sync.full_over_plain",
        "full path ÷ plain INSERT reference",
        Target::AtLeast(0.8),
        "≥ 0.8",
    ),
    (
        "sync.edge_hub_p50_ms",
        "edge → hub propagation p50",
        Target::None,
        "",
    ),
    (
        "sync.edge_hub_p99_ms",
        "edge → hub propagation p99",
        Target::AtMost(250.0),
        "< 250 ms",
    ),
    (
        "sync.release_p50_ms",
        "HQ release → connected edge p50",
        Target::None,
        "",
    ),
    (
        "sync.release_p99_ms",
        "HQ release → connected edge p99",
        Target::AtMost(1_000.0),
        "< 1 s",
    ),
    (
        "sync.wire_bytes_per_event",
        "bytes on the wire per event (batch frame)",
        Target::None,
        "",
    ),
    (
        "reports.events",
        "events in the reporting dataset",
        Target::AtLeast(10_000_000.0),
        "≥ 10M",
    ),
    (
        "reports.load_events_per_s",
        "dataset load through the ingest path (4 sites in parallel)",
        Target::None,
        "",
    ),
    (
        "reports.connections",
        "HTTP connections",
        Target::AtLeast(6_000.0),
        "6,000",
    ),
    (
        "reports.req_per_s",
        "reporting API throughput",
        Target::AtLeast(10_000.0),
        "≥ 10,000 req/s",
    ),
    (
        "reports.p99_ms",
        "reporting API p99",
        Target::AtMost(100.0),
        "< 100 ms",
    ),
    ("reports.p50_ms", "reporting API p50", Target::None, ""),
    (
        "reports.cold_median_ms",
        "cold report (empty cache), median",
        Target::None,
        "",
    ),
    (
        "reports.cold_max_ms",
        "cold report (empty cache), slowest",
        Target::None,
        "",
    ),
    (
        "reports.errors",
        "failed requests",
        Target::AtMost(0.0),
        "0",
    ),
    (
        "fleet.rss_0_mb",
        "hub RSS, no edges connected",
        Target::None,
        "",
    ),
    (
        "fleet.rss_30_mb",
        "hub RSS, 30 connected edges",
        Target::None,
        "",
    ),
    (
        "fleet.rss_300_mb",
        "hub RSS, 300 connected edges",
        Target::None,
        "",
    ),
    (
        "fleet.rss_1000_mb",
        "hub RSS, 1,000 connected edges",
        Target::None,
        "",
    ),
    (
        "fleet.rss_after_close_mb",
        "hub RSS after the 1,000 sessions closed",
        Target::None,
        "",
    ),
    (
        "fleet.rss_second_cycle_mb",
        "hub RSS, the same 1,000 edges connected a second time",
        Target::None,
        "",
    ),
    (
        "fleet.rss_after_second_close_mb",
        "hub RSS after the second 1,000 sessions closed (a leak would grow it)",
        Target::None,
        "",
    ),
    (
        "fleet.per_edge_kb",
        "hub memory per connected edge (1,000 vs none)",
        Target::None,
        "",
    ),
    (
        "fleet.connect_1000_s",
        "time to connect edges 301–1,000",
        Target::None,
        "",
    ),
    (
        "sizes.edge_agent_mb",
        "stripped `edge-agent`",
        Target::AtMost(20.0),
        "< 20 MB",
    ),
    (
        "sizes.central_hub_mb",
        "stripped `central-hub`",
        Target::None,
        "",
    ),
];

/// Every suite, in the order `all` runs them.
const SUITES: [&str; 6] = ["edge", "sync", "reports", "scale", "fleet", "sizes"];

/// The dataset sizes of the growth figures.
const SCALE_SIZES: &str = "1000000,10000000,30000000";

struct Args {
    suites: Vec<String>,
    quick: bool,
    runs: usize,
    out: Option<PathBuf>,
    reports_database: Option<String>,
    build: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        suites: Vec::new(),
        quick: false,
        runs: 0,
        out: None,
        reports_database: None,
        build: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "all" => a.suites.extend(SUITES.map(String::from)),
            "quick" => {
                a.quick = true;
                a.suites.extend(SUITES.map(String::from));
            }
            s if SUITES.contains(&s) => a.suites.push(arg),
            "--runs" => a.runs = it.next().context("--runs needs a number")?.parse()?,
            "--out" => a.out = Some(it.next().context("--out needs a file")?.into()),
            "--reports-database" => {
                a.reports_database = Some(it.next().context("--reports-database needs a name")?);
            }
            "--no-build" => a.build = false,
            other => bail!(
                "unknown argument {other}; use all | quick | edge sync reports scale fleet sizes, \
                 --runs N, --out FILE, --reports-database NAME, --no-build"
            ),
        }
    }
    if a.suites.is_empty() {
        bail!("name what to run: all, quick, or suites (edge sync reports scale fleet sizes)");
    }
    a.suites.dedup();
    if a.runs == 0 {
        a.runs = if a.quick { 1 } else { 3 };
    }
    a.runs = a.runs.min(20);
    if a.out.is_none() && !a.quick {
        a.out = Some(repo_root().join("docs/benchmarks.md"));
    }
    Ok(a)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory of this executable: the suite's programs are its siblings (same profile).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating bench")?;
    Ok(exe.parent().context("bench has no directory")?.to_owned())
}

fn profile_is_release(dir: &Path) -> bool {
    dir.file_name().is_some_and(|n| n == "release")
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Runs one suite program, echoing its output, and returns its figures and its output.
fn run_program(program: &Path, args: &[String]) -> anyhow::Result<(Figures, String)> {
    println!("$ {} {}", program.display(), args.join(" "));
    let started = Instant::now();
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for l in stdout.lines().filter(|l| !l.starts_with("FIGURE ")) {
        println!("  {l}");
    }
    if !out.status.success() {
        bail!("{} failed ({}):\n{stdout}", program.display(), out.status);
    }
    let figures = benchout::parse(&stdout);
    if figures.is_empty() {
        bail!("{} printed no figures", program.display());
    }
    println!(
        "  ({} figures in {:.0} s)",
        figures.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((figures, stdout.into_owned()))
}

/// Stripped sizes of the two release binaries (a stripped copy; the originals stay).
fn sizes(dir: &Path) -> anyhow::Result<Figures> {
    let mut out = Vec::new();
    for (bin, key) in [
        ("edge-agent", "sizes.edge_agent_mb"),
        ("central-hub", "sizes.central_hub_mb"),
    ] {
        let path = dir.join(bin);
        anyhow::ensure!(path.exists(), "{} missing: build it first", path.display());
        let copy = std::env::temp_dir().join(format!("bench-size-{bin}-{}", std::process::id()));
        std::fs::copy(&path, &copy)?;
        let status = Command::new("strip")
            .arg(&copy)
            .status()
            .context("running strip")?;
        anyhow::ensure!(status.success(), "strip failed on {}", copy.display());
        let bytes = std::fs::metadata(&copy)?.len();
        let _ = std::fs::remove_file(&copy);
        println!("  stripped {bin}: {bytes} bytes");
        out.push((key.to_owned(), bytes as f64 / 1e6, "MB".to_owned()));
    }
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".to_owned()
    } else if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v);
        // Thousands separators for the big counts.
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn verdict(target: Target, values: &[f64]) -> &'static str {
    let worst = match target {
        Target::AtMost(_) => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Target::AtLeast(_) => values.iter().copied().fold(f64::INFINITY, f64::min),
        Target::None => return "",
    };
    let median = median(&mut values.to_vec());
    let ok = |v: f64| match target {
        Target::AtMost(t) => v <= t,
        Target::AtLeast(t) => v >= t,
        Target::None => true,
    };
    if ok(worst) {
        "met"
    } else if ok(median) {
        "met by the median, **missed in some runs**"
    } else {
        "**missed**"
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = bin_dir()?;
    let release = profile_is_release(&dir);
    if !release && !args.quick {
        println!("note: a debug build; figures for the document come from `cargo run --release`");
    }
    if args.build {
        // The suite's programs and the binaries they start, in this executable's profile.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--locked",
            "-p",
            "system-tests",
            "-p",
            "edge-agent",
            "-p",
            "central-hub",
            "--bins",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(repo_root())
            .status()
            .context("running cargo build")?;
        anyhow::ensure!(status.success(), "cargo build failed");
    }
    let started = Instant::now();
    let mut figures: BTreeMap<String, (Vec<f64>, String)> = BTreeMap::new();
    let mut record = |got: Figures| {
        for (k, v, u) in got {
            let e = figures.entry(k).or_insert_with(|| (Vec::new(), u));
            e.0.push(v);
        }
    };
    let mut commands: Vec<String> = Vec::new();
    let mut reports_db = args.reports_database.clone();
    for suite in &args.suites {
        // Sizes do not change between runs, and growing a dataset to 30M events takes
        // minutes: each measured once.
        let runs = if suite == "sizes" || suite == "scale" {
            1
        } else {
            args.runs
        };
        for run in 1..=runs {
            println!("== {suite} run {run} of {runs}");
            match suite.as_str() {
                "edge" => {
                    let mut a: Vec<String> = vec![
                        "--agent".into(),
                        dir.join("edge-agent").display().to_string(),
                    ];
                    if args.quick {
                        a.extend(
                            ["--seconds", "1", "--clients", "20", "--rate", "500"]
                                .map(String::from),
                        );
                    }
                    commands.push(format!("bench-edge {}", a[2..].join(" ")).trim().to_owned());
                    record(run_program(&dir.join("bench-edge"), &a)?.0);
                }
                "sync" => {
                    let backlog = if args.quick { "5000" } else { "500000" };
                    let a = vec!["--backlog".to_owned(), backlog.to_owned()];
                    commands.push(format!("bench-sync {}", a.join(" ")));
                    record(run_program(&dir.join("bench-sync"), &a)?.0);
                }
                "reports" => {
                    let mut a: Vec<String> = Vec::new();
                    if args.quick {
                        a.push("--quick".into());
                    }
                    // The 10M-event dataset is loaded once (its load rate is the first run's
                    // figure) and reused by the later runs.
                    if let Some(db) = &reports_db {
                        a.extend(["--database".to_owned(), db.clone()]);
                    }
                    commands.push(format!("bench-reports {}", a.join(" ")).trim().to_owned());
                    let (got, stdout) = run_program(&dir.join("bench-reports"), &a)?;
                    if reports_db.is_none() && !args.quick {
                        // "database NAME (reuse with --database NAME)" after a fresh load.
                        reports_db = stdout
                            .lines()
                            .find_map(|l| l.strip_prefix("database "))
                            .and_then(|l| l.split_whitespace().next())
                            .map(str::to_owned);
                    }
                    record(got);
                }
                "scale" => {
                    let mut a = vec!["--scale".to_owned(), SCALE_SIZES.to_owned()];
                    if args.quick {
                        a.push("--quick".into());
                    }
                    commands.push(format!("bench-reports {}", a.join(" ")));
                    record(run_program(&dir.join("bench-reports"), &a)?.0);
                }
                "fleet" => {
                    let a: Vec<String> = if args.quick {
                        vec!["--quick".into()]
                    } else {
                        Vec::new()
                    };
                    commands.push(format!("bench-fleet {}", a.join(" ")).trim().to_owned());
                    record(run_program(&dir.join("bench-fleet"), &a)?.0);
                }
                "sizes" => record(sizes(&dir)?),
                other => bail!("unknown suite {other}"),
            }
        }
    }
    let took = started.elapsed();
    // A quick run's fleet has other sizes than the table's; every program's figures were
    // checked present by `run_program`.
    for (key, _, _, _) in FIGURES {
        let suite = key.split('.').next().unwrap_or("");
        if !args.quick && args.suites.iter().any(|s| s == suite) && !figures.contains_key(*key) {
            bail!("the {suite} suite did not report {key}");
        }
    }
    let doc = document(&args, &figures, &commands, took);
    match &args.out {
        Some(path) => {
            let notes = repo_root().join("docs/benchmarks-notes.md");
            let mut text = doc;
            if let Ok(n) = std::fs::read_to_string(&notes) {
                text.push('\n');
                text.push_str(&n);
            }
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        None => println!("{doc}"),
    }
    Ok(())
}

fn document(
    args: &Args,
    figures: &BTreeMap<String, (Vec<f64>, String)>,
    commands: &[String],
    took: std::time::Duration,
) -> String {
    let mut d = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(String::new, |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0));
    let _ = writeln!(d, "# Benchmarks\n");
    let _ = writeln!(
        d,
        "Generated by `cargo run --release -p system-tests --bin bench -- {}` (do not edit by hand;\n\
         the hand-written analysis is `docs/benchmarks-notes.md`, appended below).\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(d, "- date: {}", sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(
        d,
        "- commit: `{}`{}",
        sh("git", &["rev-parse", "--short", "HEAD"]),
        if sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            " (with uncommitted changes)"
        }
    );
    let _ = writeln!(
        d,
        "- machine: {} cores ({cpu}), {mem}, {}; {}",
        sh("nproc", &[]),
        sh("uname", &["-sr"]),
        sh("psql", &["--version"])
    );
    let _ = writeln!(
        d,
        "- runs per figure: {}; whole suite took {:.0} min; load generators share the cores with the system under test",
        args.runs,
        took.as_secs_f64() / 60.0
    );
    // Each distinct command once, with how often it ran.
    let mut distinct: Vec<(String, usize)> = Vec::new();
    for c in commands {
        match distinct.iter_mut().find(|(d, _)| d == c) {
            Some((_, n)) => *n += 1,
            None => distinct.push((c.clone(), 1)),
        }
    }
    let list: Vec<String> = distinct
        .iter()
        .map(|(c, n)| {
            if *n > 1 {
                format!("`{c}` ×{n}")
            } else {
                format!("`{c}`")
            }
        })
        .collect();
    let _ = writeln!(
        d,
        "- programs run (each as its own process; the reporting dataset is loaded by the first \
         `bench-reports` and reused): {}; stripped sizes measured by `bench` itself\n",
        list.join(", ")
    );
    let _ = writeln!(
        d,
        "| figure | min | median | max | unit | target | verdict |"
    );
    let _ = writeln!(d, "|---|---|---|---|---|---|---|");
    for (key, label, target, says) in FIGURES {
        let Some((values, unit)) = figures.get(*key) else {
            continue;
        };
        let mut v = values.clone();
        let med = median(&mut v);
        let min = v.first().copied().unwrap_or(f64::NAN);
        let max = v.last().copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            d,
            "| {label} | {} | {} | {} | {unit} | {says} | {} |",
            fmt(min),
            fmt(med),
            fmt(max),
            verdict(*target, values)
        );
    }
    scale_table(&mut d, figures);
    d
}

/// The growth figures (`scale.<size>.<name>`), one row per dataset size.
fn scale_table(d: &mut String, figures: &BTreeMap<String, (Vec<f64>, String)>) {
    let mut sizes: Vec<(f64, String)> = figures
        .iter()
        .filter_map(|(k, (v, _))| {
            let label = k.strip_prefix("scale.")?.strip_suffix(".events")?;
            Some((v.first().copied()?, label.to_owned()))
        })
        .collect();
    if sizes.is_empty() {
        return;
    }
    sizes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let _ = writeln!(
        d,
        "\n**How cost grows** (`bench-reports --scale {SCALE_SIZES}`, one run: the dataset is \
         grown to each size in turn, each step a layer over the same 30 days, and measured there)\n"
    );
    let _ = writeln!(
        d,
        "| events at the hub | one site's ingest, one connection (events/s) | the step's load, 4 sites in parallel (events/s) | cold report, median (ms) | cold report, slowest (ms) |"
    );
    let _ = writeln!(d, "|---|---|---|---|---|");
    let get = |label: &str, name: &str| {
        figures
            .get(&format!("scale.{label}.{name}"))
            .and_then(|(v, _)| v.first().copied())
            .map_or_else(|| "–".to_owned(), fmt)
    };
    for (n, label) in &sizes {
        let _ = writeln!(
            d,
            "| {} | {} | {} | {} | {} |",
            fmt(*n),
            get(label, "ingest_events_per_s"),
            get(label, "load_events_per_s"),
            get(label, "cold_median_ms"),
            get(label, "cold_max_ms")
        );
    }
}
