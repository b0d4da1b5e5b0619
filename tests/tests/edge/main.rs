//! The site's box as the people at the site meet it: the operator terminal in a browser, the
//! field installer, and the edge's files and their restore. One test binary with a module per
//! former test file; run one with `cargo test -p system-tests --test edge <module>::`.

mod connectors;
mod connectors_exact;
mod connectors_modbus;
mod connectors_opcua;
mod connectors_sparkplug;
mod install;
mod restore;
mod terminal;
