//! Plumbing the edge agent and the hub share at the process and HTTP level, and nothing of
//! the domain: the tokio runtime and the shutdown signal of a `main`, the headers of a page
//! compiled into the binary, and the OpenMetrics exposition's content type and checks.
//!
//! It depends on no workspace crate, and no workspace crate but the two binaries depends on
//! it (`tests/tests/layering` checks both), so the binaries still share nothing else.

pub mod metrics;
pub mod process;
pub mod static_page;
