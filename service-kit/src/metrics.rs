//! The OpenMetrics text both binaries expose at `/metrics` (`prometheus-client` writes it).

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Asserts that `text` is a finished exposition holding every one of `lines`, with no name
/// mangled on the way (a doubled `_total`, an empty name part). The binaries' tests call it
/// on what their renderers write.
#[track_caller]
pub fn assert_exposition(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    assert!(
        !text.contains("_total_total") && !text.contains(".."),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}
