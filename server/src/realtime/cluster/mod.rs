//! Cluster mode: the NATS backend of the delivery core, enabled by `nats_url`.
//!
//! - [`stream`]: every channel's messages live in one JetStream stream (`HERALD`), one subject
//!   per channel. Positions are made contiguous per channel by publishing with
//!   `Nats-Expected-Last-Subject-Sequence`; a publish is acknowledged only once stored.
//! - [`feed`]: a node subscribes (core NATS) to the channels its clients are subscribed to and
//!   nowhere else; the stream republishes each stored message there, in order. Gaps (a lost
//!   connection, a late subscriber resuming) are filled from the stream.
//! - [`presence`]: a KV bucket whose entries each node refreshes every heartbeat; a node that
//!   stops refreshing loses its entries after two heartbeats.
//! - This module: the connection, the control plane (configuration changes, user commands)
//!   and statistics shared between nodes.

pub mod feed;
pub mod presence;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::hub::{Hub, HubError};
use super::{Disconnect, StatsSample};

/// Subject of control messages, seen by every node.
const CONTROL_SUBJECT: &str = "herald.ctl";
/// Subject on which every node publishes its statistics each second.
const STATS_SUBJECT: &str = "herald.stats";
/// A peer whose statistics are older than this is left out of cluster views.
const PEER_STALE: Duration = Duration::from_secs(3);
/// How long a cluster-wide command waits for every node's answer.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// A command every node applies to its own connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// Tenant configuration changed (options, keys, revocations, suspension): reload it.
    TenantChanged { tenant: String },
    /// Close every connection of a user (code 4006).
    DisconnectUser { tenant: String, user: String },
    /// Deliver a serialised `message` frame to every connection of a user.
    UserMessage { tenant: String, user: String, frame: String },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(flatten)]
    control: Control,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    node: String,
    count: u64,
}

#[derive(Serialize, Deserialize)]
struct PeerStats {
    node: String,
    sample: StatsSample,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error(
        "cannot set up JetStream ({0}); NATS must run with JetStream enabled (-js), version 2.11 or later"
    )]
    JetStream(String),
}

/// Cluster settings from configuration.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSettings {
    /// Presence refresh interval; entries live two.
    pub heartbeat: Duration,
    /// The stream's de-duplication window for idempotency keys.
    pub idempotency_window: Duration,
    /// The most the history stream holds.
    pub history_max_bytes: u64,
    /// JetStream replicas of the stream and the presence bucket.
    pub replicas: usize,
}

/// Messages a channel feed's NATS subscription buffers before NATS drops them (the feed then
/// fills the gap from the stream): bounds memory when a node falls behind.
const FEED_BUFFER: usize = 8192;

pub struct Cluster {
    pub node_id: String,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    pub presence: presence::Registry,
    settings: ClusterSettings,
    hub: OnceLock<Weak<Hub>>,
    peers: Mutex<HashMap<String, (Instant, Arc<StatsSample>)>>,
    /// Bumped on every (re)connection to NATS, so feeds check what they missed meanwhile.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Cluster {
    /// Connects to NATS and sets up the stream and the presence bucket. Fails fast when NATS
    /// cannot be reached at start-up; after that, reconnection is automatic and endless.
    pub async fn connect(
        url: &str,
        node_id: &str,
        settings: ClusterSettings,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let generation = tokio::sync::watch::Sender::new(0u64);
        let on_event = generation.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("herald {node_id}"))
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None::<usize>)
            .subscription_capacity(FEED_BUFFER)
            .event_callback(move |event| {
                let generation = on_event.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            generation.send_modify(|g| *g += 1);
                        }
                        async_nats::Event::Disconnected => tracing::warn!("lost the connection to NATS"),
                        // NATS dropped messages of a subscription: feeds catch up from the stream.
                        async_nats::Event::SlowConsumer(_) => {
                            tracing::warn!(
                                "NATS dropped messages for this node (slow consumer); catching up"
                            );
                            generation.send_modify(|g| *g += 1);
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| ClusterError::Connect {
                url: crate::config::redact_url(url),
                message: e.to_string(),
            })?;
        let max_payload = client.server_info().max_payload;
        if max_payload < crate::model::MAX_MESSAGE_BYTES as usize + 4096 {
            // Said once at start, not per refused publish: the default NATS setting is common.
            tracing::info!(
                max_payload,
                "NATS max_payload is below Herald's largest message plus framing: publishes that do \
                 not fit are refused with 413; set max_payload: 2MB in the NATS configuration to allow them"
            );
        }
        let js = jetstream::new(client.clone());
        let stream =
            stream::ensure(&js, &settings).await.map_err(|e| ClusterError::JetStream(e.to_string()))?;
        let presence = presence::Registry::open(&js, node_id, &settings)
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        Ok(Arc::new(Cluster {
            node_id: node_id.to_owned(),
            client,
            js,
            stream,
            presence,
            settings,
            hub: OnceLock::new(),
            peers: Mutex::default(),
            generation,
        }))
    }

    /// Starts the control plane, statistics and presence tasks for `hub`.
    pub fn start(self: &Arc<Self>, hub: &Arc<Hub>) {
        let _ = self.hub.set(Arc::downgrade(hub));
        let cluster = self.clone();
        tokio::spawn(async move { cluster.control_loop().await });
        let cluster = self.clone();
        tokio::spawn(async move { cluster.stats_loop().await });
        let cluster = self.clone();
        tokio::spawn(async move { cluster.heartbeat_loop().await });
        let cluster = self.clone();
        tokio::spawn(async move { cluster.reconnect_loop().await });
    }

    /// After every reconnection, makes sure the stream and the presence bucket exist (a NATS
    /// server that lost its storage, or the in-memory bucket after a restart) and rewrites
    /// this node's presence.
    async fn reconnect_loop(self: Arc<Self>) {
        let mut generation = self.generation.subscribe();
        generation.mark_unchanged();
        while generation.changed().await.is_ok() {
            loop {
                let setup = async {
                    stream::ensure(&self.js, &self.settings).await?;
                    presence::Registry::ensure_bucket(&self.js, &self.settings).await?;
                    Ok::<_, async_nats::Error>(())
                };
                match setup.await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot set up JetStream after reconnecting; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            self.presence.changed();
            // Configuration changes broadcast while this node was away were missed: re-read
            // every tenant it serves (closing what was revoked or suspended meanwhile).
            if let Some(hub) = self.hub() {
                for tenant in hub.tenants_in_use() {
                    hub.apply_tenant_change(&tenant).await;
                }
            }
        }
    }

    fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.get().and_then(Weak::upgrade)
    }

    /// Why the node cannot serve cluster traffic right now, if it cannot.
    pub fn health(&self) -> Result<(), String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(format!("NATS connection is {state:?}").to_lowercase()),
        }
    }

    fn unavailable(what: impl std::fmt::Display) -> HubError {
        HubError::ClusterUnavailable(what.to_string())
    }

    /// Sends a control message to every node without waiting for them (this node has already
    /// applied it).
    ///
    /// Fails at once while NATS is unreachable (a node that misses a change re-reads every
    /// tenant it serves when it reconnects), and never waits more than two seconds.
    pub async fn broadcast(&self, control: Control) -> Result<(), HubError> {
        self.health().map_err(HubError::ClusterUnavailable)?;
        let envelope = Envelope { origin: self.node_id.clone(), control };
        let payload = serde_json::to_vec(&envelope).expect("control serialises");
        let send = async {
            self.client.publish(CONTROL_SUBJECT, payload.into()).await.map_err(Self::unavailable)?;
            self.client.flush().await.map_err(Self::unavailable)
        };
        tokio::time::timeout(GATHER_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| Err(Self::unavailable("NATS did not take the message in time")))
    }

    /// Sends a control message to every node, this one included, and sums their answers
    /// (connections affected). Waits for the nodes known to be alive, at most two seconds.
    pub async fn gather(&self, control: Control) -> Result<u64, HubError> {
        self.health().map_err(HubError::ClusterUnavailable)?;
        let mut expected: std::collections::HashSet<String> = self.peer_nodes().into_iter().collect();
        expected.insert(self.node_id.clone());
        let inbox = self.client.new_inbox();
        let mut answers = self.client.subscribe(inbox.clone()).await.map_err(Self::unavailable)?;
        let envelope = Envelope { origin: self.node_id.clone(), control };
        let payload = serde_json::to_vec(&envelope).expect("control serialises");
        self.client
            .publish_with_reply(CONTROL_SUBJECT, inbox, payload.into())
            .await
            .map_err(Self::unavailable)?;
        self.client.flush().await.map_err(Self::unavailable)?;
        let mut total = 0;
        let deadline = tokio::time::Instant::now() + GATHER_TIMEOUT;
        while !expected.is_empty() {
            let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await else { break };
            if let Ok(answer) = serde_json::from_slice::<Answer>(&msg.payload)
                && expected.remove(&answer.node)
            {
                total += answer.count;
            }
        }
        if !expected.is_empty() {
            tracing::warn!(missing = ?expected, "nodes did not answer a cluster command in time");
        }
        Ok(total)
    }

    /// Subscribes to `subject`, retrying until it works.
    async fn subscribe_retrying(&self, subject: &'static str) -> async_nats::Subscriber {
        loop {
            match self.client.subscribe(subject).await {
                Ok(sub) => return sub,
                Err(e) => {
                    tracing::warn!(error = %e, subject, "cannot subscribe; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn control_loop(self: Arc<Self>) {
        while self.hub().is_some() {
            let sub = self.subscribe_retrying(CONTROL_SUBJECT).await;
            self.follow_control(sub).await;
        }
    }

    async fn follow_control(&self, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let Some(hub) = self.hub() else { return };
            let envelope: Envelope = match serde_json::from_slice(&msg.payload) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a malformed control message");
                    continue;
                }
            };
            let count = match envelope.control {
                // The origin applied the change before broadcasting it.
                Control::TenantChanged { tenant } => {
                    if envelope.origin != self.node_id {
                        let hub = hub.clone();
                        tokio::spawn(async move { hub.apply_tenant_change(&tenant).await });
                    }
                    0
                }
                Control::DisconnectUser { tenant, user } => {
                    hub.disconnect_where(&tenant, Disconnect::Kicked, |c| *c.user == *user) as u64
                }
                Control::UserMessage { tenant, user, frame } => {
                    let frame = tokio_tungstenite::tungstenite::Utf8Bytes::from(frame);
                    hub.deliver_to_user_here(&tenant, &user, super::outbox::Outgoing::Frame(frame)) as u64
                }
            };
            if let Some(reply) = msg.reply {
                let answer =
                    serde_json::to_vec(&Answer { node: self.node_id.clone(), count }).expect("serialises");
                let _ = self.client.publish(reply, answer.into()).await;
            }
        }
    }

    async fn stats_loop(self: Arc<Self>) {
        while self.hub().is_some() {
            let sub = self.subscribe_retrying(STATS_SUBJECT).await;
            self.follow_stats(sub).await;
        }
    }

    async fn follow_stats(&self, mut sub: async_nats::Subscriber) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let Some(hub) = self.hub() else { return };
                    let report = PeerStats { node: self.node_id.clone(), sample: (*hub.sample()).clone() };
                    let payload = serde_json::to_vec(&report).expect("stats serialise");
                    let _ = self.client.publish(STATS_SUBJECT, payload.into()).await;
                    let now = Instant::now();
                    self.peers.lock().expect("peers lock").retain(|_, (seen, _)| now.duration_since(*seen) < PEER_STALE * 10);
                }
                msg = sub.next() => {
                    let Some(msg) = msg else { return };
                    match serde_json::from_slice::<PeerStats>(&msg.payload) {
                        Ok(peer) if peer.node != self.node_id => {
                            self.peers.lock().expect("peers lock").insert(peer.node, (Instant::now(), Arc::new(peer.sample)));
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "ignoring malformed statistics from a peer"),
                    }
                }
            }
        }
    }

    /// Other nodes that reported statistics within the last three seconds.
    pub fn peer_nodes(&self) -> Vec<String> {
        self.peer_samples().into_iter().map(|(n, _)| n).collect()
    }

    /// The latest statistics of the other live nodes, by node id.
    pub fn peer_samples(&self) -> Vec<(String, Arc<StatsSample>)> {
        let now = Instant::now();
        let mut out: Vec<_> = self
            .peers
            .lock()
            .expect("peers lock")
            .iter()
            .filter(|(_, (seen, _))| now.duration_since(*seen) < PEER_STALE)
            .map(|(node, (_, sample))| (node.clone(), sample.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Writes presence changes as they happen and rewrites every entry at least once per
    /// heartbeat (the bucket forgets entries after two).
    async fn heartbeat_loop(self: Arc<Self>) {
        loop {
            self.presence.wait(tokio::time::Instant::now() + self.settings.heartbeat / 4).await;
            let Some(hub) = self.hub() else { return };
            if let Err(e) = self.presence.refresh(&hub).await {
                tracing::warn!(error = ?e, "could not refresh presence entries");
            }
        }
    }
}
