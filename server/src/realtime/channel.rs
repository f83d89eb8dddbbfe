//! One channel's stream on this node: its position counter and epoch, bounded history, the
//! idempotency window, and its local subscribers. One mutex guards all of it, so a subscribe
//! that resumes from history and the publishes around it are totally ordered: the resuming
//! client gets every missed message once, then live ones, with no gap at the hand-over.
//! Fan-out only pushes into bounded outboxes; no socket is written under the lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::outbox::{Outbox, Outgoing};
use super::publication::Publication;
use super::{ConnId, Counters, Stats};
use crate::model::EffectiveChannelOptions;

/// A position inside one epoch of a channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub position: u64,
    pub epoch: String,
}

impl StreamPosition {
    /// How many messages a stream at `epoch`/`last` that keeps `history_size` of them holds
    /// after this position, or `None` when a resume from here cannot be served (another epoch,
    /// ahead of the stream, or further back than history reaches). An empty epoch with
    /// position 0 means "from the start of the current epoch" (a cluster channel that nobody
    /// had used yet when its history was read). The one rule for local and shared streams.
    pub fn missed_in(&self, epoch: &str, last: u64, history_size: u32) -> Option<u64> {
        let same_epoch = self.epoch == epoch || (self.epoch.is_empty() && self.position == 0);
        let missed = last.checked_sub(self.position).filter(|_| same_epoch)?;
        (missed <= u64::from(history_size)).then_some(missed)
    }
}

#[derive(Debug, Clone)]
pub struct PublishOutcome {
    pub position: u64,
    pub epoch: Arc<str>,
    pub id: String,
    pub timestamp_ms: i64,
    /// The idempotency key was seen before: this is the first publish's result and nothing
    /// was delivered again.
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub struct SubscribeOutcome {
    pub epoch: Arc<str>,
    /// The newest position when the subscription started (after any replayed messages).
    pub position: u64,
    /// `Some(true)`: every missed message follows; `Some(false)`: the gap could not be filled
    /// (history expired or epoch changed), reload state; `None`: no resume was asked for.
    pub recovered: Option<bool>,
    pub replayed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    AlreadySubscribed,
    TooManySubscribers(u32),
    /// The connection's outbox is closed.
    Closed,
    Retired,
    /// Cluster mode: the channel's feed could not admit the subscriber (NATS unreachable).
    Unavailable,
}

pub struct HistorySlice {
    pub publications: Vec<Arc<Publication>>,
    pub epoch: Arc<str>,
    pub position: u64,
    /// Whether the slice starts right after the requested position (no gap).
    pub complete: bool,
}

/// A subscribed connection as presence shows it: connection, user, token `info`.
pub type Present = (ConnId, Arc<str>, Option<Arc<RawValue>>);

pub struct Subscriber {
    pub outbox: Arc<Outbox>,
    pub user: Arc<str>,
    pub info: Option<Arc<RawValue>>,
}

struct Inner {
    epoch: Arc<str>,
    last_position: u64,
    history: VecDeque<Arc<Publication>>,
    options: EffectiveChannelOptions,
    subscribers: HashMap<ConnId, Subscriber>,
    idempotency: HashMap<String, (PublishOutcome, Instant)>,
    idempotency_order: VecDeque<(String, Instant)>,
    /// Set when the hub forgets this channel; whoever still holds it must look it up again.
    retired: bool,
    /// Cluster mode: `history` is a cache of the stream in JetStream, complete only after this
    /// position; older messages are fetched from JetStream. `None` on a single node, where
    /// `history` is the whole truth.
    ring_from: Option<u64>,
    /// Last publish or subscription, so a cluster channel is kept for a while between uses.
    last_active: Instant,
}

/// What the channel's own history can say about the messages after a position.
#[derive(Debug)]
pub enum Replay {
    /// Exactly the missed messages (possibly none).
    Covered(Vec<Arc<Publication>>),
    /// The gap cannot be filled: expired, trimmed, or another epoch.
    Unrecoverable,
    /// Cluster mode: positions `after + 1 ..= upto` of the current epoch must come from the
    /// shared history.
    Remote { after: u64, upto: u64, epoch: Arc<str> },
}

/// The newest message of a channel's shared stream, cached by a publishing node: its JetStream
/// sequence (0 when the stream is empty), position and epoch.
#[derive(Debug, Clone, Default)]
pub struct StreamHead {
    pub seq: u64,
    pub position: u64,
    pub epoch: Arc<str>,
    /// The head message's TTL in seconds, and when this node learnt the head: a later message
    /// must not expire before it (see `cluster::stream`).
    pub ttl_seconds: u64,
    pub seen: Option<std::time::Instant>,
}

/// Builds the frames that confirm a subscription (see [`Channel::subscribe`]).
pub type ReplyBuilder = Box<dyn FnOnce(&SubscribeOutcome) -> Vec<Outgoing> + Send>;

/// A request to the node's feed of a cluster channel (see `cluster::feed`).
pub struct JoinRequest {
    pub conn: ConnId,
    pub subscriber: Subscriber,
    pub since: Option<StreamPosition>,
    pub reply: ReplyBuilder,
    pub done: tokio::sync::oneshot::Sender<Result<SubscribeOutcome, SubscribeError>>,
}

/// Cluster-mode state of a channel on this node.
#[derive(Default)]
pub struct ClusterSlot {
    /// The stream head as this node last saw it; held across a publish so one node never
    /// races itself for the next position.
    pub head: tokio::sync::Mutex<Option<StreamHead>>,
    /// The running feed (NATS subscription task) while the channel has local subscribers.
    pub feed: Mutex<Option<tokio::sync::mpsc::UnboundedSender<JoinRequest>>>,
    /// Publishes waiting to be stored, a batch at a time, by the channel's drain task.
    pub pending: Mutex<VecDeque<PendingPublish>>,
    /// Whether a drain task is running.
    pub draining: std::sync::atomic::AtomicBool,
}

/// A publish queued for a cluster channel (see `cluster::stream`).
pub struct PendingPublish {
    pub data: Box<RawValue>,
    pub event: Option<String>,
    pub done: tokio::sync::oneshot::Sender<Result<PublishOutcome, super::hub::HubError>>,
}

/// The channel was forgotten by the hub between lookup and use; look it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired;

pub struct Channel {
    pub tenant: Arc<str>,
    pub name: Arc<str>,
    /// The tenant's counters on this node.
    pub counters: Arc<Counters>,
    /// `Some` in cluster mode.
    pub cluster: Option<ClusterSlot>,
    inner: Mutex<Inner>,
}

/// A fresh epoch: random, so positions of another stream are never mistaken for this one's.
pub fn new_epoch() -> Arc<str> {
    Arc::from(crate::crypto::random_token("", 6).as_str())
}

/// How long a cluster channel without local subscribers is kept (its options and stream head
/// cached) after its last use.
const CLUSTER_IDLE_KEEP: Duration = Duration::from_secs(30);

/// Idempotency keys remembered per channel at most; the oldest are forgotten first.
pub const MAX_IDEMPOTENCY_KEYS: usize = 10_000;

impl Channel {
    pub fn new(
        tenant: Arc<str>,
        name: Arc<str>,
        options: EffectiveChannelOptions,
        counters: Arc<Counters>,
        clustered: bool,
    ) -> Channel {
        Channel {
            tenant,
            name,
            counters,
            cluster: clustered.then(ClusterSlot::default),
            inner: Mutex::new(Inner {
                // A fresh epoch per in-memory stream: positions from a previous process or an
                // expired stream can never be mistaken for this one's. In cluster mode the
                // epoch is the shared stream's, learnt when the feed starts.
                epoch: if clustered { Arc::from("") } else { new_epoch() },
                last_position: 0,
                history: VecDeque::new(),
                options,
                subscribers: HashMap::new(),
                idempotency: HashMap::new(),
                idempotency_order: VecDeque::new(),
                retired: false,
                ring_from: clustered.then_some(0),
                last_active: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("channel lock")
    }

    pub fn options(&self) -> EffectiveChannelOptions {
        self.lock().options.clone()
    }

    pub fn set_options(&self, options: EffectiveChannelOptions) {
        let mut inner = self.lock();
        inner.options = options;
        let size = inner.options.history_size as usize;
        while inner.history.len() > size {
            inner.history.pop_front();
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// Users subscribed here, one entry per connection, with their token's `info`.
    pub fn subscribers(&self) -> Vec<Present> {
        self.lock().subscribers.iter().map(|(id, s)| (*id, s.user.clone(), s.info.clone())).collect()
    }

    /// Appends a message and hands it to every local subscriber.
    pub fn publish(
        &self,
        data: Box<RawValue>,
        event: Option<String>,
        idempotency_key: Option<String>,
        idempotency_window: Duration,
        stats: &Stats,
    ) -> Result<PublishOutcome, (Retired, Box<RawValue>)> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.retired {
            return Err((Retired, data));
        }
        if let Some(key) = &idempotency_key {
            Self::expire_idempotency(&mut inner, now);
            if let Some((outcome, _)) = inner.idempotency.get(key) {
                return Ok(PublishOutcome { duplicate: true, ..outcome.clone() });
            }
        }
        inner.last_position += 1;
        let position = inner.last_position;
        let timestamp_ms = chrono::Utc::now().timestamp_millis();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let ttl = Duration::from_secs(u64::from(inner.options.history_ttl_seconds));
        let publication = Arc::new(Publication::new(
            self.name.clone(),
            position,
            inner.epoch.clone(),
            id.clone(),
            timestamp_ms,
            event,
            data,
            now + ttl,
        ));
        let history_size = inner.options.history_size as usize;
        if history_size > 0 {
            inner.history.push_back(publication.clone());
            while inner.history.len() > history_size {
                inner.history.pop_front();
            }
        }
        let outcome =
            PublishOutcome { position, epoch: inner.epoch.clone(), id, timestamp_ms, duplicate: false };
        if let Some(key) = idempotency_key {
            inner.idempotency.insert(key.clone(), (outcome.clone(), now + idempotency_window));
            inner.idempotency_order.push_back((key, now + idempotency_window));
            while inner.idempotency_order.len() > MAX_IDEMPOTENCY_KEYS {
                if let Some((old, _)) = inner.idempotency_order.pop_front() {
                    inner.idempotency.remove(&old);
                }
            }
        }
        let (delivered, overflowed) = Self::fan_out(&mut inner, &publication);
        stats.record_publish(&self.counters, delivered, overflowed);
        Ok(outcome)
    }

    /// Hands a publication to every subscriber; drops those whose queue overflowed. Returns
    /// (delivered, overflowed).
    fn fan_out(inner: &mut Inner, publication: &Arc<Publication>) -> (u64, u64) {
        let mut delivered = 0u64;
        let mut overflowed = Vec::new();
        for (id, sub) in &inner.subscribers {
            match sub.outbox.push(Outgoing::Publication(publication.clone())) {
                Ok(()) => delivered += 1,
                Err(_) => overflowed.push(*id),
            }
        }
        for id in &overflowed {
            inner.subscribers.remove(id);
        }
        (delivered, overflowed.len() as u64)
    }

    /// Cluster mode: the newest position this node's feed has delivered, and its epoch.
    pub fn delivered_head(&self) -> (Arc<str>, u64) {
        let inner = self.lock();
        (inner.epoch.clone(), inner.last_position)
    }

    /// Cluster mode: the feed starts following the shared stream at `epoch`/`position`; the
    /// local history cache starts empty.
    pub fn follow_from(&self, epoch: Arc<str>, position: u64) {
        let mut inner = self.lock();
        inner.epoch = epoch;
        inner.last_position = position;
        inner.history.clear();
        inner.ring_from = Some(position);
    }

    /// Cluster mode: a stored publication arrives from the shared stream, in order. A new
    /// epoch (the stream expired and started again) resets the local history cache.
    pub fn deliver(&self, publication: Arc<Publication>, stats: &Stats) {
        let mut inner = self.lock();
        // A new epoch, or a gap the feed could not fill: the local cache no longer holds a
        // contiguous run, so it starts again here (older positions come from the stream).
        if publication.epoch != inner.epoch || publication.position != inner.last_position + 1 {
            inner.epoch = publication.epoch.clone();
            inner.history.clear();
            inner.ring_from = Some(publication.position.saturating_sub(1));
        }
        inner.last_position = publication.position;
        let history_size = inner.options.history_size as usize;
        if history_size > 0 {
            inner.history.push_back(publication.clone());
            while inner.history.len() > history_size {
                inner.history.pop_front();
            }
        }
        let (delivered, overflowed) = Self::fan_out(&mut inner, &publication);
        stats.record_delivery(&self.counters, delivered, overflowed);
    }

    /// Marks a use of the channel (keeps an idle cluster channel cached).
    pub fn touch(&self) {
        self.lock().last_active = Instant::now();
    }

    fn expire_idempotency(inner: &mut Inner, now: Instant) {
        while let Some((_, expires)) = inner.idempotency_order.front() {
            if *expires > now {
                break;
            }
            let (key, _) = inner.idempotency_order.pop_front().expect("front exists");
            if inner.idempotency.get(&key).is_some_and(|(_, e)| *e <= now) {
                inner.idempotency.remove(&key);
            }
        }
    }

    fn drop_expired_history(inner: &mut Inner, now: Instant) {
        while inner.history.front().is_some_and(|p| p.expires_at <= now) {
            inner.history.pop_front();
        }
    }

    /// What history can say about the messages after `since`. An empty epoch with position 0
    /// (a cluster channel that had no messages yet when the client subscribed) means "from the
    /// start of the current epoch".
    fn replay(inner: &mut Inner, since: &StreamPosition) -> Replay {
        Self::drop_expired_history(inner, Instant::now());
        match since.missed_in(&inner.epoch, inner.last_position, inner.options.history_size) {
            None => return Replay::Unrecoverable,
            Some(0) => return Replay::Covered(Vec::new()),
            Some(_) => {}
        }
        match (inner.history.front(), inner.ring_from) {
            (Some(first), _) if first.position <= since.position + 1 => {
                let skip = (since.position + 1 - first.position) as usize;
                Replay::Covered(inner.history.iter().skip(skip).cloned().collect())
            }
            (_, Some(_)) => Replay::Remote {
                after: since.position,
                upto: inner.last_position,
                epoch: inner.epoch.clone(),
            },
            (_, None) => Replay::Unrecoverable,
        }
    }

    /// What a subscription resuming from `since` needs from the shared history first, if
    /// anything (cluster mode).
    pub fn needs_history(&self, since: Option<&StreamPosition>) -> Option<Replay> {
        let since = since?;
        match Self::replay(&mut self.lock(), since) {
            remote @ Replay::Remote { .. } => Some(remote),
            _ => None,
        }
    }

    /// Adds a subscriber. `reply` builds the frames that confirm the subscription; they are
    /// queued before any replayed message, and replayed messages before any live one.
    ///
    /// `fetched` is what the shared history returned for a [`Replay::Remote`] gap (cluster
    /// mode; `Some(None)` when it could not fill it).
    pub fn subscribe(
        &self,
        conn: ConnId,
        subscriber: Subscriber,
        since: Option<&StreamPosition>,
        fetched: Option<Option<Vec<Arc<Publication>>>>,
        reply: impl FnOnce(&SubscribeOutcome) -> Vec<Outgoing>,
    ) -> Result<SubscribeOutcome, SubscribeError> {
        let mut inner = self.lock();
        if inner.retired {
            return Err(SubscribeError::Retired);
        }
        if inner.subscribers.contains_key(&conn) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        if let Some(max) = inner.options.max_subscribers
            && inner.subscribers.len() >= max as usize
        {
            return Err(SubscribeError::TooManySubscribers(max));
        }
        inner.last_active = Instant::now();
        let (recovered, missed) = match (since, fetched) {
            (Some(since), fetched) => match (Self::replay(&mut inner, since), fetched) {
                (Replay::Covered(missed), _) => (Some(true), missed),
                (Replay::Remote { .. }, Some(Some(missed))) => (Some(true), missed),
                _ => (Some(false), Vec::new()),
            },
            (None, _) => (None, Vec::new()),
        };
        let outcome = SubscribeOutcome {
            epoch: inner.epoch.clone(),
            position: inner.last_position,
            recovered,
            replayed: missed.len(),
        };
        let frames = reply(&outcome).into_iter().chain(missed.into_iter().map(Outgoing::Publication));
        subscriber.outbox.push_all(frames).map_err(|_| SubscribeError::Closed)?;
        inner.subscribers.insert(conn, subscriber);
        Ok(outcome)
    }

    /// Returns whether the connection was subscribed.
    pub fn unsubscribe(&self, conn: ConnId) -> bool {
        self.lock().subscribers.remove(&conn).is_some()
    }

    /// Messages after `since` (or the newest ones), oldest first, at most `limit`.
    pub fn history(&self, since: Option<&StreamPosition>, limit: usize) -> HistorySlice {
        let mut inner = self.lock();
        Self::drop_expired_history(&mut inner, Instant::now());
        let (complete, publications) = match since {
            Some(since) => match Self::replay(&mut inner, since) {
                Replay::Covered(mut missed) => {
                    missed.truncate(limit);
                    (true, missed)
                }
                _ => (false, Vec::new()),
            },
            None => {
                let skip = inner.history.len().saturating_sub(limit);
                (true, inner.history.iter().skip(skip).cloned().collect())
            }
        };
        HistorySlice { publications, epoch: inner.epoch.clone(), position: inner.last_position, complete }
    }

    /// Sends a frame to every subscriber (join/leave events).
    pub fn broadcast(&self, frame: Outgoing, except: Option<ConnId>) {
        let inner = self.lock();
        for (id, sub) in &inner.subscribers {
            if Some(*id) != except {
                let _ = sub.outbox.push(frame.clone());
            }
        }
    }

    /// Drops expired history and idempotency entries. When nothing worth keeping is left (no
    /// subscribers, history or idempotency keys) the channel retires and returns true: the hub
    /// forgets it, and a later use starts a new epoch.
    pub fn sweep(&self, now: Instant) -> bool {
        // The feed lock is taken before the channel lock, in the same order as the feed does.
        let has_feed = self.cluster.as_ref().is_some_and(|s| s.feed.lock().expect("feed lock").is_some());
        let mut inner = self.lock();
        Self::drop_expired_history(&mut inner, now);
        Self::expire_idempotency(&mut inner, now);
        inner.subscribers.retain(|_, s| !s.outbox.is_closed());
        let idle = match &self.cluster {
            // The shared stream keeps history and idempotency keys; keep the channel while it
            // has a feed or was used recently.
            Some(_) => {
                inner.subscribers.is_empty()
                    && !has_feed
                    && now.duration_since(inner.last_active) > CLUSTER_IDLE_KEEP
            }
            None => inner.subscribers.is_empty() && inner.history.is_empty() && inner.idempotency.is_empty(),
        };
        if idle {
            inner.retired = true;
        }
        inner.retired
    }
}

#[cfg(test)]
mod tests {
    use super::StreamPosition;

    fn at(position: u64, epoch: &str) -> StreamPosition {
        StreamPosition { position, epoch: epoch.into() }
    }

    #[test]
    fn a_resume_is_served_only_within_the_epoch_and_history() {
        assert_eq!(at(5, "e").missed_in("e", 5, 100), Some(0));
        assert_eq!(at(5, "e").missed_in("e", 8, 100), Some(3));
        assert_eq!(at(5, "e").missed_in("e", 8, 3), Some(3));
        assert_eq!(at(5, "e").missed_in("e", 9, 3), None, "further back than history");
        assert_eq!(at(9, "e").missed_in("e", 8, 100), None, "ahead of the stream");
        assert_eq!(at(5, "other").missed_in("e", 8, 100), None, "another epoch");
        assert_eq!(at(0, "").missed_in("e", 8, 100), Some(8), "from the start of the current epoch");
        assert_eq!(at(3, "").missed_in("e", 8, 100), None);
    }
}
