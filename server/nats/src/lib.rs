//! Cluster mode: the NATS backend of the delivery core, enabled by `nats_url`. [`Cluster`]
//! plays the core's three backend roles ([`herald_core::backend`]): broker, presence and
//! control.
//!
//! Architecture invariant: this crate is the only one that imports async-nats, and it reaches
//! the node only through [`herald_core::backend::Node`].
//!
//! - [`stream`]: every channel's messages live in one JetStream stream (`HERALD`), one subject
//!   per channel. Positions are made contiguous per channel by publishing with
//!   `Nats-Expected-Last-Subject-Sequence`; a publish is acknowledged only once stored.
//! - [`feed`]: a node subscribes (core NATS) to the channels its clients are subscribed to and
//!   nowhere else; the stream republishes each stored message there, in order. Gaps (a lost
//!   connection, a late subscriber resuming) are filled from the stream.
//! - [`presence`]: a KV bucket whose entries each node refreshes every heartbeat; a node that
//!   stops refreshing loses its entries after two heartbeats.
//! - [`queue`]: the webhook delivery queue, a JetStream work-queue stream every node pulls
//!   from.
//! - This module: the connection, the control plane (configuration changes, user commands)
//!   and statistics shared between nodes.
//!
//! The NATS connection, the channels' feeds and every store of publishes run on the cluster's
//! own thread ([`ClusterThread`]), not among the node's connection tasks: an acknowledgement or
//! a stored message is read, and handed to the subscribers' queues, as soon as it arrives,
//! instead of waiting behind the socket writes of the message before.

mod feed;
mod hooks;
mod presence;
mod queue;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::backend::{
    Backend, Broker, ChannelSeed, Command, Control, HookView, Join, NewMessage, Node, Presence,
    PresentClient, PublishError, SubscribeError, UserConnection,
};
use herald_core::channel::{Channel, HistorySlice, PublishOutcome, StreamPosition, SubscribeOutcome};
use herald_core::{ConnId, Error, Stats, StatsSample};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use feed::JoinRequest;
use stream::{PendingPublish, StreamHead};

/// Subject of control messages, seen by every node.
const CONTROL_SUBJECT: &str = "herald.ctl";
/// Subject on which every node publishes its statistics each second.
const STATS_SUBJECT: &str = "herald.stats";
/// A peer whose statistics are older than this is left out of cluster views.
const PEER_STALE: Duration = Duration::from_secs(3);
/// How long a cluster-wide command waits for every node's answer.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: String,
    #[serde(flatten)]
    control: Command,
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
    #[error("cannot start the cluster thread: {0}")]
    Thread(String),
}

/// The thread the cluster's latency-critical tasks run on: the NATS connection (reading
/// acknowledgements and stored messages), each channel's feed (delivering to the node's
/// subscriber queues) and every store of publishes (a channel's drain, or a publish with an
/// idempotency key). On the node's runtime they would be woken behind every connection writer
/// already queued, hundreds after a fan-out, so the next message would be stored and delivered
/// only once the previous one was written. Here they wait only for the operating system. The
/// thread ends when the cluster is dropped.
struct ClusterThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ClusterThread {
    fn start() -> Result<ClusterThread, ClusterError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Thread(e.to_string()))?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("herald-cluster".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.await;
                })
            })
            .map_err(|e| ClusterError::Thread(e.to_string()))?;
        Ok(ClusterThread { handle, _stop: stop })
    }

    fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
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
    /// The least time between two stores of one channel's publishes by this node: what is
    /// published meanwhile waits and goes out as one batch (zero: store as soon as the store
    /// before is acknowledged).
    pub store_interval: Duration,
}

/// Messages a channel feed's NATS subscription buffers before NATS drops them (the feed then
/// fills the gap from the stream): bounds memory when a node falls behind.
const FEED_BUFFER: usize = 8192;

/// A channel's state in cluster mode, kept inside the core's [`Channel`].
#[derive(Default)]
pub(crate) struct ClusterChannel {
    /// The stream head as this node last saw it (`None` until read); held across a publish so
    /// one node never races itself for the next position.
    pub head: tokio::sync::Mutex<Option<StreamHead>>,
    /// The running feed (NATS subscription task) while the channel has local subscribers.
    pub feed: Mutex<Option<tokio::sync::mpsc::UnboundedSender<JoinRequest>>>,
    /// Publishes waiting to be stored, a batch at a time, by the channel's drain task.
    pub pending: Mutex<VecDeque<PendingPublish>>,
    /// Whether a drain task is running.
    pub draining: AtomicBool,
    /// When this node last started storing a batch of the channel (paces the drain).
    pub last_store: Mutex<Option<Instant>>,
}

/// How long a cluster channel without local subscribers is kept (its options and stream head
/// cached) after its last use.
const IDLE_KEEP: Duration = Duration::from_secs(30);

/// How long a subscription waits for the channel's feed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Cluster {
    node_id: String,
    this: Weak<Cluster>,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    registry: presence::Registry,
    detector: hooks::Detector,
    settings: ClusterSettings,
    node: OnceLock<Weak<dyn Node>>,
    peers: Mutex<HashMap<String, (Instant, Arc<StatsSample>)>>,
    /// Bumped on every (re)connection to NATS, so feeds check what they missed meanwhile.
    generation: tokio::sync::watch::Sender<u64>,
    /// Where the connection, the feeds and the drains run.
    thread: ClusterThread,
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
        let thread = ClusterThread::start()?;
        let servers: Vec<String> =
            url.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        let name = format!("herald {node_id}");
        // Connected from the cluster thread, so the connection's task runs there.
        let connecting = thread.spawn(async move {
            async_nats::ConnectOptions::new()
                .name(name)
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
                // A comma-separated list names several servers of one NATS cluster.
                .connect(servers)
                .await
        });
        let client = connecting.await.map_err(|e| ClusterError::Thread(e.to_string()))?.map_err(|e| {
            ClusterError::Connect { url: herald_core::crypto::redact_url(url), message: e.to_string() }
        })?;
        let max_payload = client.server_info().max_payload;
        if max_payload < herald_types::model::MAX_MESSAGE_BYTES as usize + 4096 {
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
        let detector = hooks::Detector::open(&js, node_id, &settings, presence.store())
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        Ok(Arc::new_cyclic(|this| Cluster {
            node_id: node_id.to_owned(),
            this: this.clone(),
            client,
            js,
            stream,
            registry: presence,
            detector,
            settings,
            node: OnceLock::new(),
            peers: Mutex::default(),
            generation,
            thread,
        }))
    }

    /// The three backend roles, all played by this cluster connection.
    pub fn backend(self: &Arc<Self>) -> Backend {
        Backend { kind: "nats", broker: self.clone(), presence: self.clone(), control: self.clone() }
    }

    /// The cluster-wide webhook delivery queue; a message a node pulled and did not finish or
    /// postpone within `ack_wait` goes to another node.
    pub async fn hook_queue(
        &self,
        ack_wait: Duration,
    ) -> Result<Arc<dyn herald_core::hooks::WorkQueue>, ClusterError> {
        let queue = queue::HookQueue::open(self.js.clone(), self.settings.replicas, ack_wait)
            .await
            .map_err(|e| ClusterError::JetStream(e.to_string()))?;
        Ok(Arc::new(queue))
    }

    /// Starts the control plane, statistics and presence tasks for `node`.
    fn start_tasks(self: &Arc<Self>, node: Weak<dyn Node>) {
        let _ = self.node.set(node);
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
                    hooks::Detector::ensure_bucket(&self.js, &self.settings).await?;
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
            self.registry.rewrite_all();
            // Configuration changes broadcast while this node was away were missed: re-read
            // every tenant it serves (closing what was revoked or suspended meanwhile).
            if let Some(node) = self.node() {
                for tenant in node.tenants_in_use() {
                    node.apply(Command::TenantChanged { tenant: tenant.to_string() }).await;
                }
            }
        }
    }

    fn node(&self) -> Option<Arc<dyn Node>> {
        self.node.get().and_then(Weak::upgrade)
    }

    /// Why the node cannot serve cluster traffic right now, if it cannot.
    pub fn health(&self) -> Result<(), String> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(format!("NATS connection is {state:?}").to_lowercase()),
        }
    }

    fn unavailable(what: impl std::fmt::Display) -> Error {
        Error::ClusterUnavailable(what.to_string())
    }

    /// Sends a control message to every node without waiting for them (this node has already
    /// applied it).
    ///
    /// Fails at once while NATS is unreachable (a node that misses a change re-reads every
    /// tenant it serves when it reconnects), and never waits more than two seconds.
    async fn send_to_others(&self, control: Command) -> Result<(), Error> {
        self.health().map_err(Error::ClusterUnavailable)?;
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
    async fn send_to_all(&self, control: Command) -> Result<u64, Error> {
        self.health().map_err(Error::ClusterUnavailable)?;
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
        while self.node().is_some() {
            let sub = self.subscribe_retrying(CONTROL_SUBJECT).await;
            self.follow_control(sub).await;
        }
    }

    async fn follow_control(&self, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let Some(node) = self.node() else { return };
            let envelope: Envelope = match serde_json::from_slice(&msg.payload) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a malformed control message");
                    continue;
                }
            };
            let count = match envelope.control {
                // The origin applied the change before broadcasting it.
                Command::TenantChanged { .. } if envelope.origin == self.node_id => 0,
                // Reloading may read the database: not in the way of the next command.
                command @ Command::TenantChanged { .. } => {
                    tokio::spawn(async move { node.apply(command).await });
                    0
                }
                command => node.apply(command).await,
            };
            if let Some(reply) = msg.reply {
                let answer =
                    serde_json::to_vec(&Answer { node: self.node_id.clone(), count }).expect("serialises");
                let _ = self.client.publish(reply, answer.into()).await;
            }
        }
    }

    async fn stats_loop(self: Arc<Self>) {
        while self.node().is_some() {
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
                    let Some(node) = self.node() else { return };
                    let report = PeerStats { node: self.node_id.clone(), sample: (*node.sample()).clone() };
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
        self.peers_now().into_iter().map(|(n, _)| n).collect()
    }

    /// The latest statistics of the other live nodes, by node id.
    fn peers_now(&self) -> Vec<(String, Arc<StatsSample>)> {
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
            self.registry.wait(tokio::time::Instant::now() + self.settings.heartbeat / 4).await;
            let Some(node) = self.node() else { return };
            if let Err(e) = self.registry.refresh(&*node).await {
                tracing::warn!(error = ?e, "could not refresh presence entries");
            }
        }
    }
}

#[async_trait]
impl Broker for Cluster {
    fn start(&self, node: Weak<dyn Node>) {
        if let Some(this) = self.this.upgrade() {
            this.start_tasks(node);
        }
    }

    fn open_channel(&self) -> ChannelSeed {
        // The epoch is the shared stream's, learnt when the channel's feed starts.
        ChannelSeed { state: Box::new(ClusterChannel::default()), epoch: Arc::from("") }
    }

    async fn publish(
        &self,
        ch: &Arc<Channel>,
        message: NewMessage,
        stats: &Stats,
    ) -> Result<PublishOutcome, PublishError> {
        let this = self.this.upgrade().ok_or_else(|| Self::unavailable("shutting down"))?;
        // Kept cached for a while after its last use (see `sweep`).
        ch.touch();
        let outcome = this.store_publish(ch, message.data, message.event, message.idempotency_key).await?;
        if !outcome.duplicate {
            stats.record_published(&ch.counters);
        }
        Ok(outcome)
    }

    /// The channel's feed admits the subscriber, filling a resume gap from the shared stream
    /// first.
    async fn subscribe(&self, ch: &Arc<Channel>, join: Join) -> Result<SubscribeOutcome, SubscribeError> {
        let (Some(this), Some(node)) = (self.this.upgrade(), self.node()) else {
            return Err(SubscribeError::Unavailable);
        };
        let slot = ch.state::<ClusterChannel>();
        if self.health().is_err() && slot.feed.lock().expect("feed lock").is_none() {
            // A new feed could not subscribe before NATS is back; say so at once.
            return Err(SubscribeError::Unavailable);
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let join = JoinRequest {
            conn: join.conn,
            subscriber: join.subscriber,
            since: join.since,
            reply: join.reply,
            done,
        };
        {
            // Sent under the feed lock: a feed only stops while holding it, after checking
            // that no join is pending.
            let mut feed = slot.feed.lock().expect("feed lock");
            let sender = feed.get_or_insert_with(|| feed::start(this.clone(), node.clone(), ch.clone()));
            if let Err(returned) = sender.send(join) {
                let sender = feed.insert(feed::start(this.clone(), node.clone(), ch.clone()));
                sender.send(returned.0).map_err(|_| SubscribeError::Unavailable)?;
            }
        }
        match tokio::time::timeout(JOIN_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            _ => Err(SubscribeError::Unavailable),
        }
    }

    async fn history(
        &self,
        ch: &Arc<Channel>,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistorySlice, Error> {
        self.stream_history(ch, since, limit).await
    }

    fn broadcast_event(&self, ch: &Arc<Channel>, frame: Utf8Bytes, except: Option<ConnId>) {
        let Some(this) = self.this.upgrade() else { return };
        let ch = ch.clone();
        tokio::spawn(async move {
            if let Err(e) = this.publish_event(&ch, frame, except).await {
                tracing::warn!(error = ?e, channel = %ch.name, "could not send a join/leave event");
            }
        });
    }

    fn sweep(&self, ch: &Channel, now: Instant) -> bool {
        // The feed lock before the channel lock, in the same order as the feed takes them.
        let has_feed = ch.state::<ClusterChannel>().feed.lock().expect("feed lock").is_some();
        // The shared stream keeps history and idempotency keys; keep the channel while it has
        // a feed or was used recently.
        ch.retire_if(now, |usage| usage.subscribers == 0 && !has_feed && usage.idle_for > IDLE_KEEP)
    }

    fn health(&self) -> Result<(), String> {
        Cluster::health(self)
    }
}

#[async_trait]
impl Presence for Cluster {
    fn changed(&self, change: herald_core::backend::PresenceChange<'_>) {
        self.registry.changed(change);
    }

    fn client_id(&self, conn: ConnId) -> String {
        presence::cluster_client_id(&self.node_id, conn)
    }

    async fn channel(&self, tenant: &str, channel: &str) -> Result<Vec<PresentClient>, Error> {
        self.registry.channel(tenant, channel).await
    }

    async fn user(&self, tenant: &str, user: &str) -> Result<Vec<UserConnection>, Error> {
        self.registry.user(tenant, user).await
    }

    async fn occupancy(&self, tenant: &str) -> Result<Vec<(String, u64)>, Error> {
        self.registry.occupancy(tenant).await
    }

    async fn hook_view(&self, wanted: &(dyn for<'t> Fn(&'t str) -> bool + Sync)) -> Option<HookView> {
        self.detector.view(wanted).await
    }
}

#[async_trait]
impl Control for Cluster {
    async fn broadcast(&self, command: Command) -> Result<(), Error> {
        self.send_to_others(command).await
    }

    async fn gather(&self, command: Command) -> Result<u64, Error> {
        self.send_to_all(command).await
    }

    fn peer_samples(&self) -> Vec<(String, Arc<StatsSample>)> {
        self.peers_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What runs on the cluster thread runs while the node's runtime is busy: here the test's
    /// only runtime thread blocks until the task answered, which it could not do on that
    /// runtime.
    #[tokio::test(flavor = "current_thread")]
    async fn the_cluster_thread_runs_while_the_node_runtime_is_busy() {
        let thread = ClusterThread::start().expect("cluster thread");
        let (ran, answer) = std::sync::mpsc::channel();
        thread.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = ran.send(std::thread::current().name().map(str::to_owned));
        });
        let name = answer.recv_timeout(Duration::from_secs(5)).expect("the task ran meanwhile");
        assert_eq!(name.as_deref(), Some("herald-cluster"));
    }
}
