//! Black-box system tests of the `edge-agent` binary, against the contract in
//! `docs/edge-api.md`.
//!
//! Every test starts the real binary (`edge-agent run` on 127.0.0.1:0) on its own temporary
//! data directory, after creating an API key and importing master data with the binary's own
//! subcommands, talks to it over real HTTP and checks what was stored by opening the real
//! SQLite file read-only. Nothing is mocked: `api` proves the HTTP contract (happy paths, a
//! data-driven table of bad inputs that must store nothing, idempotency, work-order state
//! rules, concurrent writers), `crash` proves that an answered `201` survives `kill -9`, and
//! `credentials` that API keys are revoked in a running agent and that supervisor PINs resist
//! guessing (persisted, escalating locks that tell nobody who is a supervisor).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod crash;
mod credentials;
mod install;
mod support;
mod terminal;
