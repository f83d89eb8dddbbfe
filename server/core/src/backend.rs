//! The seam between the delivery core and what carries messages between nodes.
//!
//! A backend plays three narrow roles, after centrifuge's `Broker`, `PresenceManager` and
//! `Controller`:
//!
//! - [`Broker`]: a channel's stream of record: publish (positions, history, idempotency),
//!   subscribe with resume as one operation (no gap or duplicate at the hand-over), history,
//!   join/leave events, health.
//! - [`Presence`]: who is connected and subscribed, cluster-wide.
//! - [`Control`]: a command to every node, and the other nodes' statistics.
//!
//! Whatever the backend, a message reaches local subscribers the same way: the backend hands
//! each stored [`Publication`] to [`Channel::deliver`] in position order. The single-node
//! default ([`crate::memory`]) does so from `publish` itself; the NATS backend from each node's
//! feed. A backend reaches back into the node only through [`Node`], never through the hub's
//! own type.
//!
//! The roles are trait objects, not a closed enum: this crate cannot name the NATS crate (it
//! depends on this one), and one indirect call per publish or subscribe costs nothing next to
//! the work behind it. Which backend runs is decided once, at start-up, by the server.

use std::any::Any;
use std::sync::{Arc, Weak};
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::channel::{
    Channel, HistorySlice, PublishOutcome, ReplyBuilder, StreamPosition, SubscribeOutcome, Subscriber,
};
use crate::error::Error;
use crate::hub::Connection;
use crate::stats::StatsSample;
use crate::{ConnId, Stats};

/// A message to publish, already validated ([`crate::validate::message`]).
pub struct NewMessage {
    pub data: Box<RawValue>,
    pub event: Option<String>,
    pub idempotency_key: Option<String>,
}

/// A subscription request as a broker admits it.
pub struct Join {
    pub conn: ConnId,
    pub subscriber: Subscriber,
    /// Resume after this position, if given.
    pub since: Option<StreamPosition>,
    /// Builds the frames that confirm the subscription; queued before any replayed message.
    pub reply: ReplyBuilder,
}

/// Per-channel state a broker keeps inside each [`Channel`] (see [`Broker::open_channel`]).
pub type ChannelState = Box<dyn Any + Send + Sync>;

/// What a broker gives a channel it has not seen before on this node.
pub struct ChannelSeed {
    /// The broker's own state for the channel.
    pub state: ChannelState,
    /// The epoch the channel starts in: a fresh one for an in-memory stream; empty when the
    /// stream's epoch is learnt later (from the shared stream).
    pub epoch: Arc<str>,
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Called once the node exists; the broker keeps only a weak reference to it.
    fn start(&self, node: Weak<dyn Node>);

    /// State for a channel that becomes live on this node.
    fn open_channel(&self) -> ChannelSeed;

    /// Stores a message as the channel's next position and answers once it is stored; every
    /// subscriber of the channel, on every node, then receives it through
    /// [`Channel::deliver`]. A duplicate idempotency key answers the first result.
    async fn publish(
        &self,
        ch: &Arc<Channel>,
        message: NewMessage,
        stats: &Stats,
    ) -> Result<PublishOutcome, PublishError>;

    /// Adds a subscriber; with `since`, first replays what it missed (or reports
    /// `recovered: false`) with nothing lost or repeated at the hand-over to live messages.
    async fn subscribe(&self, ch: &Arc<Channel>, join: Join) -> Result<SubscribeOutcome, SubscribeError>;

    /// Messages after `since` (or the newest), oldest first, at most `limit`.
    async fn history(
        &self,
        ch: &Arc<Channel>,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistorySlice, Error>;

    /// Sends a join/leave frame to the channel's subscribers on every node except `except`.
    fn broadcast_event(&self, ch: &Arc<Channel>, frame: Utf8Bytes, except: Option<ConnId>);

    /// Called every second for each live channel: whether the node may forget it now.
    /// Retiring happens under the channel's lock ([`Channel::retire_if`]).
    fn sweep(&self, ch: &Channel, now: Instant) -> bool;

    /// Why the broker cannot serve right now, if it cannot.
    fn health(&self) -> Result<(), String>;
}

/// Why a publish was not stored.
pub enum PublishError {
    /// The channel was forgotten between lookup and use: look it up again and retry.
    Retired(NewMessage),
    Failed(Error),
}

impl From<Error> for PublishError {
    fn from(e: Error) -> Self {
        PublishError::Failed(e)
    }
}

/// Why a subscription was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    AlreadySubscribed,
    TooManySubscribers(u32),
    /// The connection's outbox is closed.
    Closed,
    /// The channel was forgotten between lookup and use; look it up again.
    Retired,
    /// The backend could not admit the subscriber (cluster mode: NATS unreachable).
    Unavailable,
}

impl SubscribeError {
    /// The core error for every case but [`SubscribeError::Retired`] (which callers retry).
    pub fn into_error(self) -> Error {
        match self {
            SubscribeError::AlreadySubscribed => Error::AlreadySubscribed,
            SubscribeError::TooManySubscribers(max) => Error::TooManySubscribers { limit: u64::from(max) },
            SubscribeError::Closed | SubscribeError::Retired => Error::Closed,
            SubscribeError::Unavailable => {
                Error::ClusterUnavailable("the channel's feed could not start".into())
            }
        }
    }
}

/// A subscribed connection as presence lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresentClient {
    /// Unique in the cluster.
    pub client: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<RawValue>>,
}

/// A live connection of a user as presence lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserConnection {
    pub client: String,
    pub node: String,
    pub transport: String,
    pub connected_at: chrono::DateTime<chrono::Utc>,
}

/// What changed on this node, so a cluster's presence registry rewrites only the entries it
/// touches.
#[derive(Debug, Clone, Copy)]
pub enum PresenceChange<'a> {
    /// A connection of `user` opened or closed.
    Connection { tenant: &'a Arc<str>, user: &'a Arc<str> },
    /// A subscription to `channel` began or ended.
    Subscription { tenant: &'a Arc<str>, channel: &'a Arc<str> },
}

#[async_trait]
pub trait Presence: Send + Sync {
    /// Something changed on this node (a connection or subscription came or went).
    fn changed(&self, change: PresenceChange<'_>);
    /// The id other clients see for a connection of this node.
    fn client_id(&self, conn: ConnId) -> String;
    /// Who is subscribed to a channel.
    async fn channel(&self, tenant: &str, channel: &str) -> Result<Vec<PresentClient>, Error>;
    /// A user's live connections.
    async fn user(&self, tenant: &str, user: &str) -> Result<Vec<UserConnection>, Error>;
    /// The tenant's channels that have subscribers, with their counts.
    async fn occupancy(&self, tenant: &str) -> Result<Vec<(String, u64)>, Error>;
    /// The cluster-wide view the webhook detector diffs ([`crate::hooks::Detector`]), if this
    /// node is the one detecting now (one node at a time in a cluster), with the channels of
    /// the tenants `wanted` accepts.
    async fn hook_view(&self, wanted: &(dyn for<'t> Fn(&'t str) -> bool + Sync)) -> Option<HookView>;
}

/// What [`Presence::hook_view`] answers.
pub struct HookView {
    pub view: crate::hooks::View,
    /// This node just became the detector: take the view as already announced.
    pub took_over: bool,
}

/// A command every node applies to its own connections ([`Node::apply`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// Tenant configuration changed (options, keys, revocations, suspension): reload it.
    TenantChanged { tenant: String },
    /// Close every connection of a user (code 4006).
    DisconnectUser { tenant: String, user: String },
    /// Deliver a serialised `message` frame to every connection of a user.
    UserMessage { tenant: String, user: String, frame: String },
}

#[async_trait]
pub trait Control: Send + Sync {
    /// Applies `command` on every other node, without waiting for them.
    async fn broadcast(&self, command: Command) -> Result<(), Error>;
    /// Applies `command` on every node, this one included; answers the sum of their counts.
    async fn gather(&self, command: Command) -> Result<u64, Error>;
    /// The latest statistics of the other live nodes.
    fn peer_samples(&self) -> Vec<(String, Arc<StatsSample>)>;
}

/// The three roles of one backend, chosen at start-up.
#[derive(Clone)]
pub struct Backend {
    /// `"memory"` or `"nats"`, as `/readyz` reports it.
    pub kind: &'static str,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub control: Arc<dyn Control>,
}

/// The node as its backend sees it.
#[async_trait]
pub trait Node: Send + Sync {
    fn node_id(&self) -> &str;
    fn stats(&self) -> &Stats;
    /// Every live connection on this node.
    fn connections(&self) -> Vec<Arc<Connection>>;
    /// Every live channel on this node.
    fn channels(&self) -> Vec<Arc<Channel>>;
    /// The live connections of one user of a tenant on this node (from an index: no scan).
    fn connections_of(&self, tenant: &str, user: &str) -> Vec<Arc<Connection>>;
    /// The live channels of one tenant on this node.
    fn channels_of(&self, tenant: &str) -> Vec<Arc<Channel>>;
    /// A live channel of this node, if it is live here.
    fn channel(&self, tenant: &str, channel: &str) -> Option<Arc<Channel>>;
    /// Tenants with connections or channels on this node.
    fn tenants_in_use(&self) -> Vec<Arc<str>>;
    /// The latest statistics sample of this node.
    fn sample(&self) -> Arc<StatsSample>;
    /// Applies a command to this node's connections; answers how many it affected.
    async fn apply(&self, command: Command) -> u64;
}
