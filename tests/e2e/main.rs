//! End-to-end tests: each one starts the real `herald` binary on port 0 and talks HTTP to it.
//! Tests that touch the store run on SQLite and on PostgreSQL (see `on_both_backends!`).

#[path = "../support/mod.rs"]
pub mod support;

mod api_fuzz;
mod architecture;
mod assets;
mod auth;
mod browser;
mod channels;
mod cli;
mod cluster;
mod consistency;
mod dashboard;
mod errors;
mod hardening;
mod isolation;
mod jwt;
mod keys;
mod logs;
mod metrics;
mod openapi_client;
mod outbound;
mod persistence;
mod proxies;
mod publish;
mod rolling;
mod rust_client;
mod sdk;
mod soak;
mod sse_poll;
mod stats;
mod tenants;
mod tls;
mod tokens;
mod users;
mod webhook_signatures;
mod webhooks;
mod ws;
