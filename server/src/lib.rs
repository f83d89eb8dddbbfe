//! Herald: a self-hosted, multi-tenant real-time push server.
//!
//! The `herald` binary (`main.rs`) parses flags and calls into this library:
//!
//! - [`config`]: layered configuration (defaults, file, `HERALD_*`, flags) and its validation.
//! - [`state`]: start-up (data dir, secret key, migrations, admin credential) and shared state.
//! - [`api`]: the REST API (poem-openapi), one module per area; [`auth`] says who is calling.
//! - [`error`]: the problem-details shape, built from the core's table of error codes.
//! - [`hooks`]: webhooks: matching events, the durable queue, signed delivery with retries.
//! - [`outbound`]: HTTP calls to tenants' endpoints, refused for private addresses.
//! - [`proxy`]: tenants' connect/subscribe/publish/refresh proxies over HTTP.
//! - [`transport`]: WebSocket, SSE and long polling, each an adapter onto `herald_core::Session`;
//!   [`sockets`]: the runtime WebSocket connections run on, apart from HTTP's.
//! - [`server`]: routes, health endpoints, graceful shutdown; [`listener`]: the connection
//!   layer (accept loop, header-read and write timeouts, per-address limits, HTTP/2 by ALPN);
//!   [`tls`]: the certificate it serves over HTTPS, reloaded on SIGHUP or when its files change.
//!
//! The delivery core is `herald-core`, the cluster backend `herald-nats`, persistence
//! `herald-store`, the domain types `herald-types`.
//!
//! See `ARCHITECTURE.md` at the repository root for the map and the invariants.

pub mod api;
pub mod auth;
pub mod compress;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod hooks;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod proxy;
pub mod server;
pub mod sockets;
pub mod state;
pub mod tls;
pub mod transport;
