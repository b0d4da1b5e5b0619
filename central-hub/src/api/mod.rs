//! The hub's HQ API handlers: sites with their sync status ([`sites`]), work-order lists,
//! releases and edits ([`work_orders`]), master-data uploads ([`master_data`]), open conflicts
//! ([`conflicts`]). Each file holds its handlers, their SQL and their typed rows and answers.
//!
//! Every `/api/v1` request needs a bearer token (`central-hub api-token create`) with a scope:
//! `hq:read` or `hq:write`, HQ-wide or for one site ([`crate::http::auth`]). Writes go through
//! the site-scoped store (row-level security as the hub role); cross-site reads use the
//! reporting connection (`--read-database-url`, role `mes_reporting`), never the sync path.

pub mod conflicts;
pub mod master_data;
pub mod sites;
pub mod work_orders;

// Token administration lives with the token checks; these paths are what the CLI and the
// system tests have always called.
pub use crate::http::auth::{
    TOKEN_CACHE_TTL, create_token, list_tokens, revoke_tokens, token_hash,
};

/// Largest request body of the HQ API.
pub const BODY_BYTES_MAX: usize = 256 * 1024;
