//! Counters per node and per tenant, sampled every second into [`StatsSample`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::Transport;

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
    /// Bytes of history this node holds (for a tenant: its channels'), against its budget.
    pub history: Budget,
    /// Gauge: channels live on this node (explicit and implicit).
    pub live_channels: AtomicU64,
}

/// A byte budget: what is used of it, and its limit (0: none).
#[derive(Default)]
pub struct Budget {
    used: AtomicU64,
    limit: AtomicU64,
}

impl Budget {
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit under the limit.
    pub fn try_take(&self, n: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                let next = used.checked_add(n)?;
                (limit == 0 || next <= limit).then_some(next)
            })
            .is_ok()
    }

    pub fn give(&self, n: u64) {
        let _ =
            self.used.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| Some(used.saturating_sub(n)));
    }
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
    node: std::sync::Arc<Counters>,
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

    pub(crate) fn connection_opened(&self, tenant: &Counters, t: Transport) {
        for c in [&*self.node, tenant] {
            c.connections[t.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connection_closed(&self, tenant: &Counters, t: Transport) {
        for c in [&*self.node, tenant] {
            c.connections[t.index()].fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn subscribed(&self, tenant: &Counters, delta: i64) {
        for c in [&*self.node, tenant] {
            c.subscriptions.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// A message stored in the channel's stream (by its broker).
    pub fn record_published(&self, tenant: &Counters) {
        for c in [&*self.node, tenant] {
            c.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A stored message fanned out to this node's subscribers.
    pub(crate) fn record_delivery(&self, tenant: &Counters, delivered: u64, overflowed: u64) {
        for c in [&*self.node, tenant] {
            c.delivered.fetch_add(delivered, Ordering::Relaxed);
            if overflowed > 0 {
                c.slow_consumers.fetch_add(overflowed, Ordering::Relaxed);
            }
        }
    }

    /// A user-targeted message handed to `delivered` connections.
    pub(crate) fn record_user_delivery(&self, tenant: &Counters, delivered: u64) {
        for c in [&*self.node, tenant] {
            c.published.fetch_add(1, Ordering::Relaxed);
            c.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.node.snapshot()
    }

    /// The node's own counters (its history budget among them).
    pub fn node(&self) -> &std::sync::Arc<Counters> {
        &self.node
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
