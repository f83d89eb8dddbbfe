//! End-to-end tests: each one starts the real `herald` binary on port 0 and talks HTTP to it.
//! Tests that touch the store run on SQLite and on PostgreSQL (see `on_both_backends!`).

#[path = "../support.rs"]
pub mod support;
#[path = "../support_nats.rs"]
pub mod support_nats;

mod auth;
mod browser;
mod channels;
mod cli;
mod cluster;
mod dashboard;
mod errors;
mod isolation;
mod jwt;
mod keys;
mod openapi_client;
mod persistence;
mod publish;
mod sse_poll;
mod stats;
mod tenants;
mod tokens;
mod users;
mod ws;
