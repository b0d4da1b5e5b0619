//! The HQ API's HTTP layer, below every handler: who is calling ([`auth`]: bearer tokens,
//! scopes, failed-authentication limits), what every handler is given ([`state`]), the one
//! error shape ([`error`]), how typed answers become bytes ([`wire`]), the response cache keyed
//! by data versions with the per-token rate limit ([`cache`]), what report requests share
//! ([`context`]: the cache, single flights, the site list, the statement timeout) and cached
//! answers ([`cached`]). The handlers (`crate::api`, `crate::reports`) build on it and
//! `crate::routes` ties them to their paths; nothing here imports either (the layering test's
//! import-circle check).
//!
//! Layering (no module imports one above it): `error`, `wire`, `cache` ← `context`, `auth` ←
//! `state` ← `cached`.

pub mod auth;
pub mod cache;
pub mod cached;
pub mod context;
pub mod error;
pub mod state;
pub mod wire;
