//! The realtime delivery core, shared by every transport.
//!
//! - [`Hub`]: channels, the connection registry, quotas and counters of one node.
//! - [`channel::Channel`]: one channel's positions, epoch, history, idempotency window and
//!   local subscribers, under one lock.
//! - [`Session`]: one client connection's protocol state (auth, subscriptions, commands);
//!   transports only move bytes between a socket and a session.
//! - [`outbox::Outbox`]: the bounded per-connection queue.
//! - [`directory::Directory`]: cached tenant configuration; [`client_auth`]: client JWTs.
//!
//! Nothing in here knows HTTP: poem stays in `transport` and `api`.

pub mod channel;
pub mod client_auth;
pub mod cluster;
pub mod directory;
mod disconnect;
mod hub;
pub mod outbox;
pub mod protocol;
pub mod publication;
mod session;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub use cluster::{Cluster, ClusterError};
pub use disconnect::Disconnect;
pub use hub::{Connection, Hub, HubError, HubSettings, MAX_DATA_DEPTH};
pub use session::{CommandError, CommandOutcome, Session, origin_allowed};

/// Checks the optional fields of a publish (REST or client); returns the field and why.
pub fn validate_publish_fields(
    event: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<(), (&'static str, &'static str)> {
    if event.is_some_and(|e| e.is_empty() || e.len() > 64 || e.chars().any(char::is_control)) {
        return Err(("event", "must be 1-64 bytes without control characters"));
    }
    if idempotency_key.is_some_and(|k| k.is_empty() || k.len() > 128 || k.chars().any(char::is_control)) {
        return Err(("idempotency_key", "must be 1-128 bytes without control characters"));
    }
    Ok(())
}

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

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of the delivery core, for one node or one tenant on it (monotonic unless named as
/// a gauge).
#[derive(Default)]
pub struct Counters {
    /// Gauge: open connections per transport.
    connections: [AtomicI64; 3],
    /// Gauge: active subscriptions.
    subscriptions: AtomicI64,
    /// Messages accepted for publishing (REST and clients).
    pub published: AtomicU64,
    /// Messages handed to subscriber queues.
    pub delivered: AtomicU64,
    /// Connections closed because their queue overflowed.
    pub slow_consumers: AtomicU64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub connections_websocket: i64,
    pub connections_sse: i64,
    pub connections_long_poll: i64,
    pub subscriptions: i64,
    pub published: u64,
    pub delivered: u64,
    pub slow_consumers: u64,
}

impl Counters {
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = |t: Transport| self.connections[t.index()].load(Ordering::Relaxed);
        StatsSnapshot {
            connections_websocket: c(Transport::WebSocket),
            connections_sse: c(Transport::Sse),
            connections_long_poll: c(Transport::LongPoll),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            slow_consumers: self.slow_consumers.load(Ordering::Relaxed),
        }
    }
}

/// The node's counters, and the same counters per tenant.
#[derive(Default)]
pub struct Stats {
    node: Counters,
    tenants: std::sync::Mutex<std::collections::HashMap<std::sync::Arc<str>, std::sync::Arc<Counters>>>,
}

impl Stats {
    /// The counters of one tenant (created on first use; channels and connections keep them).
    pub fn tenant(&self, id: &str) -> std::sync::Arc<Counters> {
        let mut tenants = self.tenants.lock().expect("stats lock");
        if let Some(c) = tenants.get(id) {
            return c.clone();
        }
        let c = std::sync::Arc::new(Counters::default());
        tenants.insert(std::sync::Arc::from(id), c.clone());
        c
    }

    fn connection_opened(&self, tenant: &Counters, t: Transport) {
        for c in [&self.node, tenant] {
            c.connections[t.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn connection_closed(&self, tenant: &Counters, t: Transport) {
        for c in [&self.node, tenant] {
            c.connections[t.index()].fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn subscribed(&self, tenant: &Counters, delta: i64) {
        for c in [&self.node, tenant] {
            c.subscriptions.fetch_add(delta, Ordering::Relaxed);
        }
    }

    fn record_publish(&self, tenant: &Counters, delivered: u64, overflowed: u64) {
        for c in [&self.node, tenant] {
            c.published.fetch_add(1, Ordering::Relaxed);
            c.delivered.fetch_add(delivered, Ordering::Relaxed);
            if overflowed > 0 {
                c.slow_consumers.fetch_add(overflowed, Ordering::Relaxed);
            }
        }
    }

    /// Cluster mode, publishing node: a message stored in the shared stream.
    pub fn record_published(&self, tenant: &Counters) {
        for c in [&self.node, tenant] {
            c.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Cluster mode, every node with subscribers: a stored message fanned out locally.
    fn record_delivery(&self, tenant: &Counters, delivered: u64, overflowed: u64) {
        for c in [&self.node, tenant] {
            c.delivered.fetch_add(delivered, Ordering::Relaxed);
            if overflowed > 0 {
                c.slow_consumers.fetch_add(overflowed, Ordering::Relaxed);
            }
        }
    }

    /// A user-targeted message handed to `delivered` connections.
    fn record_user_delivery(&self, tenant: &Counters, delivered: u64) {
        for c in [&self.node, tenant] {
            c.published.fetch_add(1, Ordering::Relaxed);
            c.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.node.snapshot()
    }

    /// Every tenant with counters on this node, by id.
    pub fn tenant_snapshots(&self) -> Vec<(std::sync::Arc<str>, StatsSnapshot)> {
        let tenants = self.tenants.lock().expect("stats lock");
        let mut out: Vec<_> = tenants.iter().map(|(id, c)| (id.clone(), c.snapshot())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Counters with their rates over the last sampling interval.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Rated {
    pub counters: StatsSnapshot,
    pub published_per_second: f64,
    pub delivered_per_second: f64,
}

/// One sample of the node's statistics, taken every second by the hub.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StatsSample {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub node: Rated,
    pub tenants: Vec<(std::sync::Arc<str>, Rated)>,
}

impl StatsSample {
    /// The next sample, with rates computed against `self` (the previous one).
    pub fn next(&self, stats: &Stats) -> StatsSample {
        let now = chrono::Utc::now().timestamp_millis();
        let seconds = ((now - self.ts) as f64 / 1000.0).max(0.001);
        let rate = |current: StatsSnapshot, previous: Option<&StatsSnapshot>| {
            let (p, d) =
                previous.map_or((current.published, current.delivered), |p| (p.published, p.delivered));
            Rated {
                published_per_second: current.published.saturating_sub(p) as f64 / seconds,
                delivered_per_second: current.delivered.saturating_sub(d) as f64 / seconds,
                counters: current,
            }
        };
        let node = rate(stats.snapshot(), Some(&self.node.counters));
        let tenants = stats
            .tenant_snapshots()
            .into_iter()
            .map(|(id, snap)| {
                let previous = self.tenants.iter().find(|(t, _)| *t == id).map(|(_, r)| &r.counters);
                (id, rate(snap, previous))
            })
            .collect();
        StatsSample { ts: now, node, tenants }
    }
}
