//! Herald's delivery core, shared by every transport and every backend.
//!
//! - [`hub::Hub`]: one node: channels, the connection registry, quotas and counters. It talks
//!   to its backend only through the roles in [`backend`] (broker, presence, control), and the
//!   backend calls back through [`backend::Node`].
//! - [`memory`]: the single-node backend (the default): in-process streams and presence.
//! - [`channel::Channel`]: one channel on this node: its subscribers and recent messages, under
//!   one lock, the same type with every backend.
//! - [`session::Session`]: one client connection's protocol state (auth, subscriptions,
//!   commands); transports only move bytes between a socket and a session.
//! - [`protocol`]: the JSON frames; [`disconnect`]: close codes; [`error`]: the one table of
//!   error codes; [`validate`]: the one publish validator.
//! - [`outbox::Outbox`]: the bounded per-connection queue.
//! - [`directory::Directory`]: cached tenant configuration over a [`directory::ConfigSource`];
//!   [`client_auth`]: client JWTs; [`crypto`]: secrets.
//!
//! Architecture invariant: this crate knows no HTTP server, database or message broker. Its
//! Cargo.toml has no poem, sea-orm or async-nats (a test reads it), so every such dependency
//! has to come in through a trait defined here.

pub mod backend;
pub mod channel;
pub mod client_auth;
pub mod crypto;
pub mod directory;
pub mod disconnect;
pub mod error;
pub mod hooks;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod proxy;
pub mod publication;
pub mod session;
pub mod stats;
pub mod validate;

pub use disconnect::Disconnect;
pub use error::{Error, StoreError};
pub use hub::{Connection, Hub, HubSettings};
pub use session::{CommandOutcome, Session, origin_allowed};
pub use stats::{Counters, Stats, StatsSample, StatsSnapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Sse,
    LongPoll,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::LongPoll];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "long_poll",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
