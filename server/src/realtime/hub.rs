//! The delivery core of one node: channels (created on first use, forgotten when idle), the
//! registry of live connections, quotas, and counters. Transports talk to the hub through
//! [`super::Session`]; the REST API publishes through [`Hub::publish`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::channel::{
    Channel, HistorySlice, JoinRequest, PublishOutcome, ReplyBuilder, StreamPosition, SubscribeError,
    SubscribeOutcome, Subscriber,
};
use super::cluster::{Cluster, Control};
use super::directory::{Directory, TenantSnapshot};
use super::outbox::{Outbox, OutboxLimits};
use super::{ConnId, Disconnect, Stats, Transport};
use crate::model::EffectiveChannelOptions;
use crate::store::StoreError;

/// Node-wide realtime settings (from configuration).
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub node_id: String,
    pub outbox: OutboxLimits,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub auth_timeout: Duration,
    pub max_inbound_frame_bytes: usize,
    pub max_subscriptions_per_connection: u32,
    pub idempotency_window: Duration,
    /// Clients told to reconnect on shutdown spread their reconnects over this window.
    pub reconnect_spread: Duration,
}

/// A live connection as the hub knows it.
pub struct Connection {
    pub id: ConnId,
    pub tenant: Arc<str>,
    pub user: Arc<str>,
    /// `jti` and `iat` of the token in use; a `refresh` replaces them.
    pub token: Mutex<(String, i64)>,
    /// The token's `info` claim, shown in presence.
    pub info: Option<Arc<serde_json::value::RawValue>>,
    pub transport: Transport,
    pub outbox: Arc<Outbox>,
    /// The tenant's counters on this node.
    pub counters: Arc<super::Counters>,
    pub connected_at: chrono::DateTime<chrono::Utc>,
}

/// Deepest nesting of arrays and objects accepted in message data. Herald itself never parses
/// the data into a tree, but clients do, and many parsers recurse.
pub const MAX_DATA_DEPTH: usize = 64;

/// Nesting depth of a JSON text, found by a linear scan that skips strings.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[derive(Debug)]
pub enum HubError {
    ChannelNotFound,
    /// Data nested deeper than [`MAX_DATA_DEPTH`].
    TooDeep,
    MessageTooLarge(u64),
    RateLimited(u32),
    Store(StoreError),
    /// Cluster mode: NATS cannot be reached (or did not acknowledge); nothing was accepted.
    ClusterUnavailable(String),
}

impl From<StoreError> for HubError {
    fn from(e: StoreError) -> Self {
        HubError::Store(e)
    }
}

const SHARDS: usize = 32;

/// Tenant → channel name → channel. Nested so lookups borrow `&str` without allocating.
type ChannelMap = HashMap<Arc<str>, HashMap<Arc<str>, Arc<Channel>>>;

/// Per-tenant publish rate limiter (token bucket, burst = one second's worth).
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

pub struct Hub {
    pub settings: HubSettings,
    pub directory: Directory,
    pub stats: Stats,
    shards: Vec<Mutex<ChannelMap>>,
    connections: Mutex<HashMap<ConnId, Arc<Connection>>>,
    tenant_connections: Mutex<HashMap<Arc<str>, u32>>,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
    next_conn: AtomicU64,
    /// The latest statistics sample (refreshed every second).
    sample: Mutex<Arc<super::StatsSample>>,
    /// The backend: `None` delivers in process (one node); `Some` shares channels, history,
    /// presence and commands with the other nodes over NATS.
    cluster: Option<Arc<Cluster>>,
}

/// How long a subscription waits for the channel's feed in cluster mode.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Hub {
    pub fn new(settings: HubSettings, directory: Directory, cluster: Option<Arc<Cluster>>) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            settings,
            directory,
            stats: Stats::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            connections: Mutex::default(),
            tenant_connections: Mutex::default(),
            buckets: Mutex::default(),
            next_conn: AtomicU64::new(1),
            sample: Mutex::default(),
            cluster,
        });
        if let Some(cluster) = &hub.cluster {
            cluster.start(&hub);
        }
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                hub.sweep();
                let next = hub.sample().next(&hub.stats);
                *hub.sample.lock().expect("sample lock") = Arc::new(next);
            }
        });
        hub
    }

    fn shard(&self, tenant: &str, channel: &str) -> &Mutex<ChannelMap> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.hash(&mut h);
        channel.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn lookup(&self, tenant: &str, channel: &str) -> Option<Arc<Channel>> {
        self.shard(tenant, channel).lock().expect("shard lock").get(tenant)?.get(channel).cloned()
    }

    /// The live channel, created (with its options resolved) on first use.
    pub async fn channel(&self, tenant: &TenantSnapshot, name: &str) -> Result<Arc<Channel>, HubError> {
        if let Some(channel) = self.lookup(tenant.id(), name) {
            return Ok(channel);
        }
        let options = self.directory.resolve_channel(tenant, name).await?.ok_or(HubError::ChannelNotFound)?;
        let mut shard = self.shard(tenant.id(), name).lock().expect("shard lock");
        let channels = shard.entry(Arc::from(tenant.id())).or_default();
        if let Some(existing) = channels.get(name) {
            return Ok(existing.clone());
        }
        let channel = Arc::new(Channel::new(
            Arc::from(tenant.id()),
            Arc::from(name),
            options,
            self.stats.tenant(tenant.id()),
            self.cluster.is_some(),
        ));
        channels.insert(channel.name.clone(), channel.clone());
        Ok(channel)
    }

    /// Options of a channel without creating it.
    pub async fn channel_options(
        &self,
        tenant: &TenantSnapshot,
        name: &str,
    ) -> Result<EffectiveChannelOptions, HubError> {
        if let Some(channel) = self.lookup(tenant.id(), name) {
            return Ok(channel.options());
        }
        self.directory.resolve_channel(tenant, name).await?.ok_or(HubError::ChannelNotFound)
    }

    /// Checks the tenant's publish rate; returns the limit when exceeded.
    fn take_publish_token(&self, tenant: &TenantSnapshot) -> Result<(), u32> {
        let Some(rate) = tenant.tenant.limits.max_publishes_per_second else { return Ok(()) };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("bucket lock");
        let bucket = buckets
            .entry(Arc::from(tenant.id()))
            .or_insert(Bucket { tokens: f64::from(rate), refilled: now });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        bucket.refilled = now;
        if bucket.tokens < 1.0 {
            return Err(rate);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Publishes to a channel after checking size and rate limits.
    pub async fn publish(
        &self,
        tenant: &TenantSnapshot,
        channel: &str,
        data: Box<RawValue>,
        event: Option<String>,
        idempotency_key: Option<String>,
    ) -> Result<PublishOutcome, HubError> {
        let mut data = data;
        loop {
            let ch = self.channel(tenant, channel).await?;
            let options = ch.options();
            let limit = tenant
                .tenant
                .limits
                .max_message_bytes
                .map_or(options.max_message_bytes, |t| t.min(options.max_message_bytes));
            if data.get().len() > limit as usize {
                return Err(HubError::MessageTooLarge(u64::from(limit)));
            }
            if json_depth(data.get()) > MAX_DATA_DEPTH {
                return Err(HubError::TooDeep);
            }
            self.take_publish_token(tenant).map_err(HubError::RateLimited)?;
            if let Some(cluster) = &self.cluster {
                ch.touch();
                let outcome = cluster.publish(&ch, data, event, idempotency_key).await?;
                if !outcome.duplicate {
                    self.stats.record_published(&ch.counters);
                }
                return Ok(outcome);
            }
            match ch.publish(
                data,
                event.clone(),
                idempotency_key.clone(),
                self.settings.idempotency_window,
                &self.stats,
            ) {
                Ok(outcome) => return Ok(outcome),
                // Forgotten between lookup and publish: look it up again.
                Err((_, returned)) => data = returned,
            }
        }
    }

    /// The cluster backend, if this node runs in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Why this node cannot serve cluster traffic, if it cannot (always fine on one node).
    pub fn cluster_health(&self) -> Result<(), String> {
        self.cluster.as_ref().map_or(Ok(()), |c| c.health())
    }

    /// Adds a subscriber to a channel. `reply` builds the confirmation frames, queued before
    /// any replayed message. In cluster mode the channel's feed admits the subscriber, filling
    /// a resume gap from the shared history first.
    pub async fn subscribe(
        self: &Arc<Self>,
        ch: &Arc<Channel>,
        conn: ConnId,
        subscriber: Subscriber,
        since: Option<StreamPosition>,
        reply: ReplyBuilder,
    ) -> Result<SubscribeOutcome, SubscribeError> {
        let (Some(cluster), Some(slot)) = (&self.cluster, &ch.cluster) else {
            return ch.subscribe(conn, subscriber, since.as_ref(), None, reply);
        };
        if cluster.health().is_err() && slot.feed.lock().expect("feed lock").is_none() {
            // A new feed could not subscribe before NATS is back; say so at once.
            return Err(SubscribeError::Unavailable);
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let join = JoinRequest { conn, subscriber, since, reply, done };
        {
            // Sent under the feed lock: a feed only stops while holding it, after checking
            // that no join is pending.
            let mut feed = slot.feed.lock().expect("feed lock");
            let sender = feed.get_or_insert_with(|| {
                super::cluster::feed::start(cluster.clone(), self.clone(), ch.clone())
            });
            if let Err(returned) = sender.send(join) {
                let sender =
                    feed.insert(super::cluster::feed::start(cluster.clone(), self.clone(), ch.clone()));
                sender.send(returned.0).map_err(|_| SubscribeError::Unavailable)?;
            }
        }
        let outcome = match tokio::time::timeout(JOIN_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            _ => Err(SubscribeError::Unavailable),
        };
        if outcome.is_ok() {
            cluster.presence.changed();
        }
        outcome
    }

    /// Ends a subscription (the session owns the counters and leave events).
    pub fn unsubscribe(&self, ch: &Channel, conn: ConnId) -> bool {
        let was = ch.unsubscribe(conn);
        if let Some(cluster) = &self.cluster {
            cluster.presence.changed();
        }
        was
    }

    /// Sends a join/leave frame to a channel's subscribers on every node, except `origin`
    /// unless `include_origin`. In cluster mode the frame goes out through NATS in the
    /// background.
    pub fn broadcast_event(
        &self,
        ch: &Arc<Channel>,
        frame: tokio_tungstenite::tungstenite::Utf8Bytes,
        origin: ConnId,
        include_origin: bool,
    ) {
        let except = (!include_origin).then_some(origin);
        let Some(cluster) = &self.cluster else {
            ch.broadcast(super::outbox::Outgoing::Frame(frame), except);
            return;
        };
        let (cluster, ch) = (cluster.clone(), ch.clone());
        tokio::spawn(async move {
            if let Err(e) = cluster.publish_event(&ch, frame, except).await {
                tracing::warn!(error = ?e, channel = %ch.name, "could not send a join/leave event");
            }
        });
    }

    /// A channel's history: from its local history on one node, from the shared stream in
    /// cluster mode.
    pub async fn history(
        &self,
        ch: &Channel,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistorySlice, HubError> {
        match &self.cluster {
            Some(cluster) => cluster.history(ch, since, limit).await,
            None => Ok(ch.history(since, limit)),
        }
    }

    /// Every live connection on this node.
    pub fn all_connections(&self) -> Vec<Arc<Connection>> {
        self.connections.lock().expect("registry lock").values().cloned().collect()
    }

    /// Tenants with live connections or channels on this node.
    pub fn tenants_in_use(&self) -> Vec<Arc<str>> {
        let mut tenants: std::collections::BTreeSet<Arc<str>> =
            self.tenant_connections.lock().expect("registry lock").keys().cloned().collect();
        for shard in &self.shards {
            tenants.extend(shard.lock().expect("shard lock").keys().cloned());
        }
        tenants.into_iter().collect()
    }

    /// Every live channel on this node.
    pub fn live_channels(&self) -> Vec<Arc<Channel>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for channels in shard.lock().expect("shard lock").values() {
                out.extend(channels.values().cloned());
            }
        }
        out
    }

    /// Closes every connection of a user, on every node; returns how many.
    pub async fn disconnect_user(&self, tenant: &str, user: &str) -> Result<u64, HubError> {
        match &self.cluster {
            Some(cluster) => {
                cluster.gather(Control::DisconnectUser { tenant: tenant.into(), user: user.into() }).await
            }
            None => Ok(self.disconnect_where(tenant, Disconnect::Kicked, |c| *c.user == *user) as u64),
        }
    }

    /// Sends a `message` frame to every connection of a user, on every node; returns how many
    /// connections took it.
    pub async fn send_to_user(
        &self,
        tenant: &str,
        user: &str,
        frame: tokio_tungstenite::tungstenite::Utf8Bytes,
    ) -> Result<u64, HubError> {
        match &self.cluster {
            Some(cluster) => {
                let control = Control::UserMessage {
                    tenant: tenant.into(),
                    user: user.into(),
                    frame: frame.as_str().into(),
                };
                cluster.gather(control).await
            }
            None => Ok(self.deliver_to_user_here(tenant, user, super::outbox::Outgoing::Frame(frame)) as u64),
        }
    }

    /// The latest statistics sample (at most a second old).
    pub fn sample(&self) -> Arc<super::StatsSample> {
        self.sample.lock().expect("sample lock").clone()
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a connection, enforcing the tenant's connection limit.
    pub fn register(&self, conn: Arc<Connection>, tenant: &TenantSnapshot) -> Result<(), Disconnect> {
        {
            let mut counts = self.tenant_connections.lock().expect("registry lock");
            let count = counts.entry(conn.tenant.clone()).or_insert(0);
            if let Some(max) = tenant.tenant.limits.max_connections
                && *count >= max
            {
                return Err(Disconnect::ConnectionLimit);
            }
            *count += 1;
        }
        self.stats.connection_opened(&conn.counters, conn.transport);
        self.connections.lock().expect("registry lock").insert(conn.id, conn);
        if let Some(cluster) = &self.cluster {
            cluster.presence.changed();
        }
        Ok(())
    }

    pub fn unregister(&self, id: ConnId) {
        let Some(conn) = self.connections.lock().expect("registry lock").remove(&id) else { return };
        let mut counts = self.tenant_connections.lock().expect("registry lock");
        if let Some(count) = counts.get_mut(&conn.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&conn.tenant);
            }
        }
        self.stats.connection_closed(&conn.counters, conn.transport);
        if let Some(cluster) = &self.cluster {
            cluster.presence.changed();
        }
    }

    /// Closes every connection of `tenant` for which `matches` holds; returns how many.
    pub fn disconnect_where(
        &self,
        tenant: &str,
        reason: Disconnect,
        matches: impl Fn(&Connection) -> bool,
    ) -> usize {
        let conns: Vec<Arc<Connection>> = self
            .connections
            .lock()
            .expect("registry lock")
            .values()
            .filter(|c| &*c.tenant == tenant && matches(c))
            .cloned()
            .collect();
        for c in &conns {
            c.outbox.close(reason.clone());
        }
        conns.len()
    }

    /// A tenant's configuration changed: applies it here, then on every other node.
    pub async fn tenant_changed(&self, tenant_id: &str) {
        self.apply_tenant_change(tenant_id).await;
        if let Some(cluster) = &self.cluster
            && let Err(e) = cluster.broadcast(Control::TenantChanged { tenant: tenant_id.into() }).await
        {
            // Other nodes still reload it within the directory TTL.
            tracing::warn!(error = ?e, tenant = tenant_id, "could not tell other nodes about a tenant change");
        }
    }

    /// Reloads a tenant's configuration after a change: re-resolves the options of its live
    /// channels and closes connections that may no longer stay (suspension, revocation,
    /// deletion).
    pub async fn apply_tenant_change(&self, tenant_id: &str) {
        self.directory.invalidate(tenant_id);
        let snapshot = match self.directory.tenant(tenant_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, tenant = tenant_id, "could not reload tenant configuration");
                return;
            }
        };
        let Some(snapshot) = snapshot else {
            // Deleted: close everything and forget its channels.
            self.disconnect_where(tenant_id, Disconnect::TenantSuspended, |_| true);
            for shard in &self.shards {
                shard.lock().expect("shard lock").remove(tenant_id);
            }
            return;
        };
        if snapshot.tenant.status == crate::model::TenantStatus::Suspended {
            self.disconnect_where(tenant_id, Disconnect::TenantSuspended, |_| true);
        }
        self.disconnect_where(tenant_id, Disconnect::TokenRevoked, |c| {
            let (jti, iat) = &*c.token.lock().expect("token lock");
            snapshot.is_revoked(Some(jti), &c.user, *iat)
        });
        let channels: Vec<Arc<Channel>> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .expect("shard lock")
                    .get(tenant_id)
                    .map(|m| m.values().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        for channel in channels {
            match self.directory.resolve_channel(&snapshot, &channel.name).await {
                Ok(Some(options)) => channel.set_options(options),
                Ok(None) => {} // No longer allowed: existing subscribers keep it until they leave.
                Err(e) => tracing::warn!(error = %e, "could not re-resolve channel options"),
            }
        }
    }

    /// Tells every client to reconnect elsewhere, each after its own delay within the spread
    /// window, so a restart does not become a stampede.
    pub fn shutdown(&self) {
        use rand::Rng;
        let spread = self.settings.reconnect_spread.as_millis() as u64;
        let conns: Vec<Arc<Connection>> =
            self.connections.lock().expect("registry lock").values().cloned().collect();
        let mut rng = rand::thread_rng();
        for c in conns {
            let retry_after_ms = if spread == 0 { 0 } else { rng.gen_range(0..=spread) };
            c.outbox.close(Disconnect::ShuttingDown { retry_after_ms });
        }
    }

    /// Live connections of one user of a tenant on this node.
    pub fn connections_of(&self, tenant: &str, user: &str) -> Vec<Arc<Connection>> {
        let mut conns: Vec<Arc<Connection>> = self
            .connections
            .lock()
            .expect("registry lock")
            .values()
            .filter(|c| &*c.tenant == tenant && &*c.user == user)
            .cloned()
            .collect();
        conns.sort_by_key(|c| c.id);
        conns
    }

    /// Sends a frame to every connection of a user on this node; returns how many took it.
    pub fn deliver_to_user_here(&self, tenant: &str, user: &str, frame: super::outbox::Outgoing) -> usize {
        let delivered =
            self.connections_of(tenant, user).iter().filter(|c| c.outbox.push(frame.clone()).is_ok()).count();
        let counters = self.stats.tenant(tenant);
        self.stats.record_user_delivery(&counters, delivered as u64);
        delivered
    }

    /// Subscribers of a live channel on this node, or `None` if it is not live here.
    pub fn channel_presence(&self, tenant: &str, channel: &str) -> Option<Vec<super::channel::Present>> {
        self.lookup(tenant, channel).map(|c| c.subscribers())
    }

    /// Live channels of a tenant on this node with their subscriber counts.
    pub fn occupancy(&self, tenant: &str) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            if let Some(channels) = shard.lock().expect("shard lock").get(tenant) {
                out.extend(channels.values().map(|c| (c.name.clone(), c.subscriber_count())));
            }
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    pub fn live_connections(&self) -> usize {
        self.connections.lock().expect("registry lock").len()
    }

    fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut shard = shard.lock().expect("shard lock");
            shard.retain(|_, channels| {
                channels.retain(|_, channel| !channel.sweep(now));
                !channels.is_empty()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::json_depth;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"["[[[[", "\\\"[["]"#), 1);
        assert_eq!(json_depth(&format!("{}{}", "[".repeat(100), "]".repeat(100))), 100);
    }
}
