//! The delivery core of one node: channels (created on first use, forgotten when idle), the
//! registry of live connections, quotas, and counters. Transports talk to the hub through
//! [`crate::Session`]; the REST API publishes through [`Hub::publish`]. Everything that
//! depends on the backend goes through its roles ([`crate::backend`]); the hub never asks which
//! backend it has.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_types::model::{EffectiveChannelOptions, TenantStatus};
use serde_json::value::RawValue;

use crate::backend::{Backend, Command, Join, NewMessage, Node, PublishError};
use crate::channel::{
    Channel, HistorySlice, PublishOutcome, ReplyBuilder, StreamPosition, SubscribeOutcome, Subscriber,
};
use crate::directory::{Directory, TenantSnapshot};
use crate::error::Error;
use crate::hooks::{Detector, HookEvent, HookSink};
use crate::outbox::{Outbox, OutboxLimits, Outgoing};
use crate::protocol::{self, ServerFrame};
use crate::stats::StatsSample;
use crate::{ConnId, Disconnect, Stats, Transport, validate};
use herald_types::model::WebhookEvent;

/// Node-wide realtime settings (from configuration).
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub node_id: String,
    pub outbox: OutboxLimits,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub auth_timeout: Duration,
    /// A write to a client that makes no progress for this long ends the connection.
    pub write_timeout: Duration,
    pub max_inbound_frame_bytes: usize,
    pub max_subscriptions_per_connection: u32,
    pub idempotency_window: Duration,
    /// Clients told to reconnect on shutdown spread their reconnects over this window.
    pub reconnect_spread: Duration,
    /// Bytes of history (recent messages) this node keeps for all tenants together.
    pub history_max_bytes: u64,
    /// Bytes of history this node keeps per tenant, unless the tenant's limits say otherwise.
    pub tenant_history_max_bytes: u64,
    /// Channels (explicit and implicit) one tenant may have live on this node.
    pub max_live_channels_per_tenant: u64,
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
    pub counters: Arc<crate::Counters>,
    pub connected_at: chrono::DateTime<chrono::Utc>,
}

const SHARDS: usize = 32;

/// Tenant → channel name → channel. Nested so lookups borrow `&str` without allocating.
type ChannelMap = HashMap<Arc<str>, HashMap<Arc<str>, Arc<Channel>>>;

/// The node's live connections, by id and by tenant and user.
#[derive(Default)]
struct Connections {
    by_id: HashMap<ConnId, Arc<Connection>>,
    /// Tenant → user → that user's connections here. Nested so lookups borrow `&str`.
    by_user: HashMap<Arc<str>, HashMap<Arc<str>, Vec<ConnId>>>,
}

impl Connections {
    fn insert(&mut self, conn: Arc<Connection>) {
        self.by_user
            .entry(conn.tenant.clone())
            .or_default()
            .entry(conn.user.clone())
            .or_default()
            .push(conn.id);
        self.by_id.insert(conn.id, conn);
    }

    fn remove(&mut self, id: ConnId) -> Option<Arc<Connection>> {
        let conn = self.by_id.remove(&id)?;
        if let Some(users) = self.by_user.get_mut(&*conn.tenant) {
            if let Some(ids) = users.get_mut(&*conn.user) {
                ids.retain(|c| *c != id);
                if ids.is_empty() {
                    users.remove(&*conn.user);
                }
            }
            if users.is_empty() {
                self.by_user.remove(&*conn.tenant);
            }
        }
        Some(conn)
    }

    fn of_user(&self, tenant: &str, user: &str) -> Vec<Arc<Connection>> {
        let ids = self.by_user.get(tenant).and_then(|users| users.get(user));
        let mut conns: Vec<Arc<Connection>> =
            ids.into_iter().flatten().filter_map(|id| self.by_id.get(id).cloned()).collect();
        conns.sort_by_key(|c| c.id);
        conns
    }

    fn values(&self) -> impl Iterator<Item = &Arc<Connection>> {
        self.by_id.values()
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }
}

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
    connections: Mutex<Connections>,
    tenant_connections: Mutex<HashMap<Arc<str>, u32>>,
    buckets: Mutex<HashMap<Arc<str>, Bucket>>,
    next_conn: AtomicU64,
    /// The latest statistics sample (refreshed every second).
    sample: Mutex<Arc<StatsSample>>,
    /// Broker, presence and control: in process on one node, or shared over NATS.
    backend: Backend,
    /// Where webhook events go, once the server installed it ([`Hub::set_hooks`]).
    hooks: std::sync::OnceLock<Arc<dyn HookSink>>,
    /// Wakes the hook detector when local presence changed.
    hooks_changed: tokio::sync::Notify,
    /// Calls tenants' proxy endpoints, once the server installed it ([`Hub::set_proxy`]).
    proxy: std::sync::OnceLock<Arc<dyn crate::proxy::ProxyClient>>,
}

/// Who published a message, as `message.published` reports it.
#[derive(Debug, Clone, Copy)]
pub enum Publisher<'a> {
    /// The tenant's backend, through the REST API.
    Api,
    /// A client connection.
    Client { user: &'a str, client: ConnId },
}

impl Hub {
    pub fn new(settings: HubSettings, directory: Directory, backend: Backend) -> Arc<Hub> {
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
            backend,
            hooks: std::sync::OnceLock::new(),
            hooks_changed: tokio::sync::Notify::new(),
            proxy: std::sync::OnceLock::new(),
        });
        hub.stats.node().history.set_limit(hub.settings.history_max_bytes);
        let node: Arc<dyn Node> = hub.clone();
        hub.backend.broker.start(Arc::downgrade(&node));
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
    pub async fn channel(&self, tenant: &TenantSnapshot, name: &str) -> Result<Arc<Channel>, Error> {
        if let Some(channel) = self.lookup(tenant.id(), name) {
            return Ok(channel);
        }
        let options = self.directory.resolve_channel(tenant, name).await?.ok_or(Error::ChannelNotFound)?;
        let counters = self.stats.tenant(tenant.id());
        counters.history.set_limit(self.tenant_history_limit(tenant));
        let mut shard = self.shard(tenant.id(), name).lock().expect("shard lock");
        let channels = shard.entry(Arc::from(tenant.id())).or_default();
        if let Some(existing) = channels.get(name) {
            return Ok(existing.clone());
        }
        let max = self.settings.max_live_channels_per_tenant;
        if counters.live_channels.load(Ordering::Relaxed) >= max {
            return Err(Error::QuotaExceeded { what: "channels", limit: max });
        }
        let channel = Arc::new(Channel::new(
            Arc::from(tenant.id()),
            Arc::from(name),
            options,
            counters,
            self.stats.node().clone(),
            self.backend.broker.open_channel(),
        ));
        channels.insert(channel.name.clone(), channel.clone());
        Ok(channel)
    }

    /// The history budget of a tenant on this node.
    fn tenant_history_limit(&self, tenant: &TenantSnapshot) -> u64 {
        tenant.tenant.limits.max_history_bytes.unwrap_or(self.settings.tenant_history_max_bytes)
    }

    /// Options of a channel without creating it.
    pub async fn channel_options(
        &self,
        tenant: &TenantSnapshot,
        name: &str,
    ) -> Result<EffectiveChannelOptions, Error> {
        if let Some(channel) = self.lookup(tenant.id(), name) {
            return Ok(channel.options());
        }
        self.directory.resolve_channel(tenant, name).await?.ok_or(Error::ChannelNotFound)
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

    /// The largest message data the tenant may send to a channel with these options.
    fn max_message_bytes(tenant: &TenantSnapshot, options: Option<&EffectiveChannelOptions>) -> u32 {
        let channel = options.map_or(herald_types::model::MAX_MESSAGE_BYTES, |o| o.max_message_bytes);
        tenant.tenant.limits.max_message_bytes.map_or(channel, |t| t.min(channel))
    }

    /// The one limit path of every publish-like operation: the message passes the validator
    /// and the tenant has a publish token left.
    fn admit(&self, tenant: &TenantSnapshot, message: &NewMessage, max_bytes: u32) -> Result<(), Error> {
        validate::fields(message.event.as_deref(), message.idempotency_key.as_deref())?;
        validate::data(&message.data, max_bytes)?;
        self.take_publish_token(tenant).map_err(|limit| Error::RateLimited { limit: u64::from(limit) })
    }

    /// Publishes to a channel after checking the message and the tenant's limits.
    pub async fn publish(
        &self,
        tenant: &TenantSnapshot,
        channel: &str,
        message: NewMessage,
        by: Publisher<'_>,
    ) -> Result<PublishOutcome, Error> {
        let mut message = message;
        let mut admitted = false;
        let from_api = matches!(by, Publisher::Api);
        // A copy for `message.published`, only when a webhook may want it.
        let hook = self
            .hook_sink(tenant.id(), WebhookEvent::MessagePublished, from_api)
            .map(|sink| (sink, message.data.clone(), message.event.clone()));
        loop {
            let ch = self.channel(tenant, channel).await?;
            if !admitted {
                self.admit(tenant, &message, Self::max_message_bytes(tenant, Some(&ch.options())))?;
                admitted = true;
            }
            match self.backend.broker.publish(&ch, message, &self.stats).await {
                Ok(outcome) => {
                    if let Some((sink, data, event)) = hook
                        && !outcome.duplicate
                    {
                        let data: serde_json::Value = serde_json::from_str(data.get()).unwrap_or_default();
                        let mut fields = serde_json::json!({
                            "channel": channel,
                            "id": outcome.id,
                            "position": outcome.position,
                            "epoch": &*outcome.epoch,
                            "event": event,
                            "data": data,
                        });
                        if let Publisher::Client { user, client } = by {
                            fields["user"] = user.into();
                            fields["client"] = self.client_id(client).into();
                        }
                        let mut e = HookEvent::new(
                            tenant.id(),
                            WebhookEvent::MessagePublished,
                            Some(channel),
                            fields,
                        );
                        e.from_api = from_api;
                        sink.emit(e);
                    }
                    return Ok(outcome);
                }
                Err(PublishError::Failed(e)) => return Err(e),
                // Forgotten between lookup and publish: look it up again.
                Err(PublishError::Retired(returned)) => message = returned,
            }
        }
    }

    /// The hook sink, if one is installed and may want this event.
    fn hook_sink(&self, tenant: &str, kind: WebhookEvent, from_api: bool) -> Option<&Arc<dyn HookSink>> {
        self.hooks.get().filter(|s| s.wants(tenant, kind, from_api))
    }

    /// Emits an event built only when a webhook may want it.
    pub fn emit_hook(&self, tenant: &str, kind: WebhookEvent, event: impl FnOnce() -> HookEvent) {
        if let Some(sink) = self.hook_sink(tenant, kind, false) {
            sink.emit(event());
        }
    }

    /// Installs the webhook sink and starts the detector of channel and presence events: it
    /// diffs the backend's cluster-wide view whenever local presence changed, and at least
    /// every `tick` (other nodes' changes, grace deadlines).
    pub fn set_hooks(self: &Arc<Self>, sink: Arc<dyn HookSink>, grace: Duration, tick: Duration) {
        if self.hooks.set(sink.clone()).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut detector: Option<Detector> = None;
            loop {
                let Some(hub) = weak.upgrade() else { return };
                tokio::select! {
                    _ = hub.hooks_changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
                    _ = tokio::time::sleep(tick) => {}
                }
                let wanted = |tenant: &str| sink.wants_presence(tenant);
                let Some(found) = hub.backend.presence.hook_view(&wanted).await else {
                    detector = None; // Another node detects now.
                    continue;
                };
                let d = detector.get_or_insert_with(|| Detector::new(grace));
                if found.took_over {
                    d.adopt(&found.view);
                    continue;
                }
                for event in d.observe(&found.view, Instant::now()) {
                    if sink.wants(&event.tenant, event.kind, false) {
                        sink.emit(event);
                    }
                }
            }
        });
    }

    /// Something the hook detector watches changed on this node.
    fn presence_changed(&self, change: crate::backend::PresenceChange<'_>) {
        self.backend.presence.changed(change);
        if self.hooks.get().is_some() {
            self.hooks_changed.notify_one();
        }
    }

    /// Installs the client that calls tenants' proxy endpoints.
    pub fn set_proxy(&self, client: Arc<dyn crate::proxy::ProxyClient>) {
        let _ = self.proxy.set(client);
    }

    /// Asks the tenant's proxy for `kind`, if it has one: `Ok(None)` when there is none (or it
    /// failed and the tenant's policy is to allow), `Ok(Some(result))` when it allowed, and
    /// `ProxyDenied` / `ProxyUnavailable` when it refused or failed under a deny policy.
    pub async fn consult(
        &self,
        tenant: &TenantSnapshot,
        kind: herald_types::model::ProxyKind,
        body: impl FnOnce() -> serde_json::Value,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, Error> {
        let (Some(proxy), Some(client)) = (tenant.proxy.as_ref(), self.proxy.get()) else { return Ok(None) };
        if proxy.settings.url(kind).is_none() {
            return Ok(None);
        }
        match client.call(proxy, kind, body()).await {
            Ok(crate::proxy::Verdict::Allow(result)) => Ok(Some(result)),
            Ok(crate::proxy::Verdict::Deny(reason)) => Err(Error::ProxyDenied(reason)),
            Err(why) => match proxy.settings.on_failure {
                herald_types::model::ProxyFailure::Allow => Ok(None),
                herald_types::model::ProxyFailure::Deny => Err(Error::ProxyUnavailable(why)),
            },
        }
    }

    /// The backend's kind (`memory` or `nats`).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Why this node cannot serve its backend's traffic, if it cannot.
    pub fn health(&self) -> Result<(), String> {
        self.backend.broker.health()
    }

    /// Adds a subscriber to a channel. `reply` builds the confirmation frames, queued before
    /// any replayed message; the broker fills a resume gap first (no gap, no duplicate).
    pub async fn subscribe(
        &self,
        ch: &Arc<Channel>,
        conn: ConnId,
        subscriber: Subscriber,
        since: Option<StreamPosition>,
        reply: ReplyBuilder,
    ) -> Result<SubscribeOutcome, crate::backend::SubscribeError> {
        let outcome = self.backend.broker.subscribe(ch, Join { conn, subscriber, since, reply }).await;
        if outcome.is_ok() {
            self.presence_changed(crate::backend::PresenceChange::Subscription {
                tenant: &ch.tenant,
                channel: &ch.name,
            });
        }
        outcome
    }

    /// Ends a subscription (the session owns the counters and leave events).
    pub fn unsubscribe(&self, ch: &Channel, conn: ConnId) -> bool {
        let was = ch.unsubscribe(conn);
        self.presence_changed(crate::backend::PresenceChange::Subscription {
            tenant: &ch.tenant,
            channel: &ch.name,
        });
        was
    }

    /// Sends a join/leave frame to a channel's subscribers on every node, except `origin`
    /// unless `include_origin`.
    pub fn broadcast_event(
        &self,
        ch: &Arc<Channel>,
        frame: tokio_tungstenite::tungstenite::Utf8Bytes,
        origin: ConnId,
        include_origin: bool,
    ) {
        self.backend.broker.broadcast_event(ch, frame, (!include_origin).then_some(origin));
    }

    /// A channel's history, from its broker.
    pub async fn history(
        &self,
        ch: &Arc<Channel>,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistorySlice, Error> {
        self.backend.broker.history(ch, since, limit).await
    }

    /// The id others see for a connection of this node (unique in the cluster).
    pub fn client_id(&self, conn: ConnId) -> String {
        self.backend.presence.client_id(conn)
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

    /// The live channels of one tenant on this node.
    pub fn tenant_channels(&self, tenant: &str) -> Vec<Arc<Channel>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            if let Some(channels) = shard.lock().expect("shard lock").get(tenant) {
                out.extend(channels.values().cloned());
            }
        }
        out
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
    pub async fn disconnect_user(&self, tenant: &str, user: &str) -> Result<u64, Error> {
        self.backend
            .control
            .gather(Command::DisconnectUser { tenant: tenant.into(), user: user.into() })
            .await
    }

    /// Sends a `message` frame to every connection of a user, on every node, after the same
    /// checks as a publish; returns the message id and how many connections took it.
    pub async fn send_to_user(
        &self,
        tenant: &TenantSnapshot,
        user: &str,
        data: Box<RawValue>,
        event: Option<String>,
    ) -> Result<(String, u64), Error> {
        let message = NewMessage { data, event, idempotency_key: None };
        self.admit(tenant, &message, Self::max_message_bytes(tenant, None))?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let frame = protocol::frame(&ServerFrame::Message {
            id: &id,
            ts: chrono::Utc::now().timestamp_millis(),
            event: message.event.as_deref(),
            data: &message.data,
        });
        let command = Command::UserMessage {
            tenant: tenant.id().into(),
            user: user.into(),
            frame: frame.as_str().into(),
        };
        let delivered = self.backend.control.gather(command).await?;
        Ok((id, delivered))
    }

    /// The latest statistics sample (at most a second old).
    pub fn sample(&self) -> Arc<StatsSample> {
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
                tracing::debug!(
                    tenant = %conn.tenant,
                    conn = %self.client_id(conn.id),
                    node = %self.settings.node_id,
                    transport = conn.transport.as_str(),
                    limit = max,
                    "connection refused: the tenant's connection limit"
                );
                return Err(Disconnect::ConnectionLimit);
            }
            *count += 1;
        }
        self.stats.connection_opened(&conn.counters, conn.transport);
        tracing::debug!(
            tenant = %conn.tenant,
            conn = %self.client_id(conn.id),
            node = %self.settings.node_id,
            transport = conn.transport.as_str(),
            "connection opened"
        );
        self.emit_hook(&conn.tenant, WebhookEvent::ConnectionOpen, || {
            HookEvent::new(
                &conn.tenant,
                WebhookEvent::ConnectionOpen,
                None,
                serde_json::json!({
                    "client": self.client_id(conn.id),
                    "user": &*conn.user,
                    "transport": conn.transport.as_str(),
                }),
            )
        });
        self.connections.lock().expect("registry lock").insert(conn.clone());
        self.presence_changed(crate::backend::PresenceChange::Connection {
            tenant: &conn.tenant,
            user: &conn.user,
        });
        Ok(())
    }

    pub fn unregister(&self, id: ConnId) {
        let Some(conn) = self.connections.lock().expect("registry lock").remove(id) else { return };
        let mut counts = self.tenant_connections.lock().expect("registry lock");
        if let Some(count) = counts.get_mut(&conn.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&conn.tenant);
            }
        }
        drop(counts);
        self.stats.connection_closed(&conn.counters, conn.transport);
        // Closed by the server for a reason, or else by the client (normal closure).
        let reason = conn.outbox.close_reason().unwrap_or(Disconnect::Normal);
        crate::metrics::metrics().connection_closed(conn.transport, reason.code());
        tracing::debug!(
            tenant = %conn.tenant,
            conn = %self.client_id(conn.id),
            node = %self.settings.node_id,
            transport = conn.transport.as_str(),
            code = reason.code(),
            reason = %reason.reason(),
            "connection closed"
        );
        self.emit_hook(&conn.tenant, WebhookEvent::ConnectionClose, || {
            HookEvent::new(
                &conn.tenant,
                WebhookEvent::ConnectionClose,
                None,
                serde_json::json!({
                    "client": self.client_id(conn.id),
                    "user": &*conn.user,
                    "transport": conn.transport.as_str(),
                    "code": reason.code(),
                    "reason": reason.reason(),
                    "duration_ms": (chrono::Utc::now() - conn.connected_at).num_milliseconds().max(0),
                }),
            )
        });
        self.presence_changed(crate::backend::PresenceChange::Connection {
            tenant: &conn.tenant,
            user: &conn.user,
        });
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
        if let Err(e) =
            self.backend.control.broadcast(Command::TenantChanged { tenant: tenant_id.into() }).await
        {
            // Other nodes still reload it within the directory TTL.
            tracing::warn!(error = ?e, tenant = tenant_id, "could not tell other nodes about a tenant change");
        }
    }

    /// Reloads a tenant's configuration after a change: re-resolves the options of its live
    /// channels and closes connections that may no longer stay (suspension, revocation,
    /// deletion).
    pub async fn apply_tenant_change(&self, tenant_id: &str) {
        if let Some(sink) = self.hooks.get() {
            sink.tenant_changed(tenant_id);
        }
        let snapshot = match self.directory.reload(tenant_id).await {
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
        self.stats.tenant(tenant_id).history.set_limit(self.tenant_history_limit(&snapshot));
        if snapshot.tenant.status == TenantStatus::Suspended {
            self.disconnect_where(tenant_id, Disconnect::TenantSuspended, |_| true);
        }
        self.disconnect_where(tenant_id, Disconnect::TokenRevoked, |c| {
            let (jti, iat) = &*c.token.lock().expect("token lock");
            snapshot.is_revoked(Some(jti), &c.user, *iat)
        });
        for channel in self.tenant_channels(tenant_id) {
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
        self.connections.lock().expect("registry lock").of_user(tenant, user)
    }

    /// Sends a frame to every connection of a user on this node; returns how many took it.
    pub fn deliver_to_user_here(&self, tenant: &str, user: &str, frame: Outgoing) -> usize {
        let delivered =
            self.connections_of(tenant, user).iter().filter(|c| c.outbox.push(frame.clone()).is_ok()).count();
        let counters = self.stats.tenant(tenant);
        self.stats.record_user_delivery(&counters, delivered as u64);
        delivered
    }

    pub fn live_connections(&self) -> usize {
        self.connections.lock().expect("registry lock").len()
    }

    fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut shard = shard.lock().expect("shard lock");
            shard.retain(|_, channels| {
                channels.retain(|_, channel| !self.backend.broker.sweep(channel, now));
                !channels.is_empty()
            });
        }
    }
}

#[async_trait]
impl Node for Hub {
    fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn connections(&self) -> Vec<Arc<Connection>> {
        self.all_connections()
    }

    fn channels(&self) -> Vec<Arc<Channel>> {
        self.live_channels()
    }

    fn connections_of(&self, tenant: &str, user: &str) -> Vec<Arc<Connection>> {
        Hub::connections_of(self, tenant, user)
    }

    fn channels_of(&self, tenant: &str) -> Vec<Arc<Channel>> {
        self.tenant_channels(tenant)
    }

    fn channel(&self, tenant: &str, channel: &str) -> Option<Arc<Channel>> {
        self.lookup(tenant, channel)
    }

    fn tenants_in_use(&self) -> Vec<Arc<str>> {
        Hub::tenants_in_use(self)
    }

    fn sample(&self) -> Arc<StatsSample> {
        Hub::sample(self)
    }

    async fn apply(&self, command: Command) -> u64 {
        match command {
            Command::TenantChanged { tenant } => {
                self.apply_tenant_change(&tenant).await;
                0
            }
            Command::DisconnectUser { tenant, user } => {
                self.disconnect_where(&tenant, Disconnect::Kicked, |c| *c.user == *user) as u64
            }
            Command::UserMessage { tenant, user, frame } => {
                self.deliver_to_user_here(&tenant, &user, Outgoing::Frame(frame.into())) as u64
            }
        }
    }
}
