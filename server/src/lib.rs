//! Herald: a self-hosted, multi-tenant real-time push server.
//!
//! The `herald` binary (`main.rs`) parses flags and calls into this library:
//!
//! - [`config`]: layered configuration (defaults, file, `HERALD_*`, flags) and its validation.
//! - [`state`]: start-up (data dir, secret key, migrations, admin credential) and shared state.
//! - [`store`]: persistence on SQLite or PostgreSQL through sea-orm; speaks [`model`] types.
//! - [`api`]: the REST API (poem-openapi), one module per area; [`auth`] says who is calling.
//! - [`error`]: the single problem-details error shape.
//! - [`realtime`]: the delivery core (channels, history, sessions); [`transport`]: WebSocket.
//! - [`server`]: routes, health endpoints, graceful shutdown.
//! - [`crypto`], [`names`], [`tokens`]: secrets, name rules, client JWT claims.
//!
//! See `ARCHITECTURE.md` at the repository root for the map and the invariants.

pub mod api;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod error;
pub mod model;
pub mod names;
pub mod realtime;
pub mod server;
pub mod state;
pub mod store;
pub mod tokens;
pub mod transport;
