//! The HQ API's HTTP layer, below the handlers: who is calling ([`auth`]: bearer tokens,
//! scopes, failed-authentication limits), what every handler is given ([`state`]), the one
//! error shape ([`error`]), how typed answers become bytes ([`wire`]) and cached responses
//! ([`cached`]); and on top the [`router`] that ties the handlers of [`crate::api`] and
//! [`crate::reports`] to their paths.
//!
//! Layering (no module imports one above it): `error`, `wire` ← `auth` ← `state` ← `cached` ←
//! handlers (`crate::api::*`, `crate::reports::handler`) ← `openapi` ← `router`.

pub mod auth;
pub mod cached;
pub mod error;
pub mod openapi;
pub mod router;
pub mod state;
pub mod wire;
