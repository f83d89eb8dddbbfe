//! Test support: start the real `herald` binary on port 0 with a throw-away data directory and,
//! for PostgreSQL runs, a database of its own; talk to it over real HTTP.
//!
//! - [`process`]: the node (start, restart, stop, kill), SQLite/PostgreSQL backends,
//!   clustered nodes, `on_both_backends!` and `on_both_fanouts!`;
//! - [`http`]: the REST client, its replies, and tenant setup;
//! - [`ws`]: WebSocket clients;
//! - [`sse_poll`]: SSE and long-poll clients;
//! - [`proxy`]: a TCP proxy that cuts live connections;
//! - [`receiver`]: a real HTTP receiver for webhooks, with scripted answers;
//! - [`browser`]: pages served on their own origin and driven in headless Chromium;
//! - [`nats`]: a real `nats-server` for cluster mode.
//!
//! Everything public is re-exported here, so tests use `crate::support::Name`.

#![allow(dead_code)]

mod browser;
mod http;
mod nats;
mod process;
mod proxy;
mod receiver;
mod sse_poll;
mod ws;

pub use browser::*;
pub use http::*;
pub use nats::*;
pub use process::*;
pub use proxy::*;
pub use receiver::*;
pub use sse_poll::*;
pub use ws::*;
