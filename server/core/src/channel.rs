//! One channel on this node, the same type with every backend: its local subscribers and its
//! recent messages (a contiguous run ending at the newest position delivered here), under one
//! mutex. Messages arrive only through [`Channel::deliver`], in position order, from the
//! channel's broker; a subscribe that resumes from the recent messages runs under the same
//! lock, so the resuming client gets every missed message once, then live ones, with no gap at
//! the hand-over. Fan-out only pushes into bounded outboxes; no socket is written under the
//! lock. What a broker keeps besides (idempotency keys, a feed) lives in its
//! [`ChannelState`], inside the channel but typed by the broker.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use herald_types::model::EffectiveChannelOptions;

pub use crate::backend::SubscribeError;
use crate::backend::{ChannelSeed, ChannelState};
use crate::outbox::{Outbox, Outgoing};
use crate::publication::Publication;
use crate::{ConnId, Counters, Stats};

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
    /// The epoch and newest position delivered here.
    epoch: Arc<str>,
    last_position: u64,
    /// Recent messages: contiguous, ending at `last_position`, at most `history_size`, none
    /// expired past its TTL.
    recent: VecDeque<Arc<Publication>>,
    options: EffectiveChannelOptions,
    subscribers: HashMap<ConnId, Subscriber>,
    /// Set when the hub forgets this channel; whoever still holds it must look it up again.
    retired: bool,
    /// Last publish or subscription, so a broker may keep an idle channel for a while.
    last_active: Instant,
}

/// What the channel's recent messages can say about the messages after a position.
#[derive(Debug)]
pub enum Replay {
    /// Exactly the missed messages (possibly none).
    Covered(Vec<Arc<Publication>>),
    /// The gap cannot be filled by any history: another epoch, ahead of the stream, or further
    /// back than the channel's `history_size`.
    Unrecoverable,
    /// Positions `after + 1 ..= upto` of the current epoch are older than the recent messages
    /// held here: only a broker with a deeper store (the shared stream) can fill them.
    Older { after: u64, upto: u64, epoch: Arc<str> },
}

/// What a broker found in its own store for a [`Replay::Older`] gap, handed to
/// [`Channel::subscribe`].
#[derive(Debug)]
pub enum Backfill {
    /// Nothing was looked up: the channel's recent messages are all there is.
    None,
    /// Exactly the missed messages.
    Filled(Vec<Arc<Publication>>),
    /// The gap could not be filled.
    Missing,
}

/// Builds the frames that confirm a subscription (see [`Channel::subscribe`]).
pub type ReplyBuilder = Box<dyn FnOnce(&SubscribeOutcome) -> Vec<Outgoing> + Send>;

/// The channel was forgotten by the hub between lookup and use; look it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired;

pub struct Channel {
    pub tenant: Arc<str>,
    pub name: Arc<str>,
    /// The tenant's counters on this node (its history budget among them).
    pub counters: Arc<Counters>,
    /// The node's counters: the node-wide history budget.
    node: Arc<Counters>,
    /// The broker's own state for this channel ([`crate::backend::Broker::open_channel`]).
    pub backend: ChannelState,
    inner: Mutex<Inner>,
}

/// A fresh epoch: random, so positions of another stream are never mistaken for this one's.
pub fn new_epoch() -> Arc<str> {
    Arc::from(crate::crypto::random_token("", 6).as_str())
}

/// A forgotten channel gives its recent messages' bytes back to the budgets.
impl Drop for Channel {
    fn drop(&mut self) {
        self.counters.live_channels.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let inner = self.inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in std::mem::take(&mut inner.recent) {
            let n = p.weight() as u64;
            self.counters.history.give(n);
            self.node.history.give(n);
        }
    }
}

impl Channel {
    pub fn new(
        tenant: Arc<str>,
        name: Arc<str>,
        options: EffectiveChannelOptions,
        counters: Arc<Counters>,
        node: Arc<Counters>,
        seed: ChannelSeed,
    ) -> Channel {
        counters.live_channels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Channel {
            tenant,
            name,
            counters,
            node,
            backend: seed.state,
            inner: Mutex::new(Inner {
                epoch: seed.epoch,
                last_position: 0,
                recent: VecDeque::new(),
                options,
                subscribers: HashMap::new(),
                retired: false,
                last_active: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("channel lock")
    }

    /// Gives the bytes of a dropped recent message back to the tenant's and node's budgets.
    fn release(&self, p: &Publication) {
        let n = p.weight() as u64;
        self.counters.history.give(n);
        self.node.history.give(n);
    }

    fn pop_oldest(&self, inner: &mut Inner) -> bool {
        match inner.recent.pop_front() {
            Some(p) => {
                self.release(&p);
                true
            }
            None => false,
        }
    }

    fn clear_recent(&self, inner: &mut Inner) {
        while self.pop_oldest(inner) {}
    }

    /// Keeps a delivered message among the recent ones, within the channel's `history_size` and
    /// the tenant's and node's history budgets. Over a budget the channel first drops its own
    /// oldest messages; when that is not enough, it keeps nothing (the recent messages must stay
    /// contiguous), so a later resume from before says `recovered: false`.
    fn retain(&self, inner: &mut Inner, publication: &Arc<Publication>) {
        debug_assert!(inner.recent.back().is_none_or(|p| p.position + 1 == publication.position));
        let history_size = inner.options.history_size as usize;
        if history_size == 0 {
            return;
        }
        while inner.recent.len() >= history_size {
            self.pop_oldest(inner);
        }
        let n = publication.weight() as u64;
        loop {
            if self.counters.history.try_take(n) {
                if self.node.history.try_take(n) {
                    inner.recent.push_back(publication.clone());
                    return;
                }
                self.counters.history.give(n);
            }
            if !self.pop_oldest(inner) {
                return; // Nothing of its own left to give up: this one is not kept.
            }
        }
    }

    /// The broker's state for this channel, as the type the broker put there.
    pub fn state<T: 'static>(&self) -> &T {
        self.backend.downcast_ref().expect("a channel's state is its own broker's")
    }

    pub fn options(&self) -> EffectiveChannelOptions {
        self.lock().options.clone()
    }

    pub fn set_options(&self, options: EffectiveChannelOptions) {
        let mut inner = self.lock();
        inner.options = options;
        let size = inner.options.history_size as usize;
        while inner.recent.len() > size {
            self.pop_oldest(&mut inner);
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// Users subscribed here, one entry per connection, with their token's `info`.
    pub fn subscribers(&self) -> Vec<Present> {
        self.lock().subscribers.iter().map(|(id, s)| (*id, s.user.clone(), s.info.clone())).collect()
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

    /// The epoch and newest position delivered here.
    pub fn delivered_head(&self) -> (Arc<str>, u64) {
        let inner = self.lock();
        (inner.epoch.clone(), inner.last_position)
    }

    /// The broker starts delivering after `epoch`/`position` (the shared stream's head when a
    /// node's feed starts); the recent messages start empty.
    pub fn follow_from(&self, epoch: Arc<str>, position: u64) {
        let mut inner = self.lock();
        inner.epoch = epoch;
        inner.last_position = position;
        self.clear_recent(&mut inner);
    }

    /// The one way a message reaches this node's subscribers: the broker hands over each
    /// stored publication, in position order. A new epoch, or a gap the broker could not
    /// fill, restarts the recent messages here (older ones stay in the broker's store).
    /// Refused once the channel retired (the caller looks the channel up again).
    pub fn deliver(&self, publication: Arc<Publication>, stats: &Stats) -> Result<(), Retired> {
        let mut inner = self.lock();
        if inner.retired {
            return Err(Retired);
        }
        if publication.epoch != inner.epoch
            || Some(publication.position) != inner.last_position.checked_add(1)
        {
            inner.epoch = publication.epoch.clone();
            self.clear_recent(&mut inner);
        }
        inner.last_position = publication.position;
        inner.last_active = Instant::now();
        // When it is not kept, `retain` has given up every older one too: the recent messages
        // stay a contiguous run ending at the newest position.
        self.retain(&mut inner, &publication);
        let (delivered, overflowed) = Self::fan_out(&mut inner, &publication);
        drop(inner);
        stats.record_delivery(&self.counters, delivered, overflowed);
        if delivered > 0 {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let took = now_ms.saturating_sub(publication.timestamp_ms).max(0) as f64 / 1000.0;
            crate::metrics::metrics().publish_to_deliver.observe(took);
        }
        Ok(())
    }

    /// What a broker storing the next message in process needs, read under one lock: the
    /// epoch, the newest position and the history TTL; `None` once the channel retired.
    pub fn next_slot(&self) -> Option<(Arc<str>, u64, u32)> {
        let inner = self.lock();
        (!inner.retired)
            .then(|| (inner.epoch.clone(), inner.last_position, inner.options.history_ttl_seconds))
    }

    /// Marks a use of the channel.
    pub fn touch(&self) {
        self.lock().last_active = Instant::now();
    }

    fn drop_expired(&self, inner: &mut Inner, now: Instant) {
        while inner.recent.front().is_some_and(|p| p.expires_at <= now) {
            self.pop_oldest(inner);
        }
    }

    /// What the recent messages can say about the messages after `since`. An empty epoch with
    /// position 0 (a cluster channel that had no messages yet when the client subscribed)
    /// means "from the start of the current epoch".
    fn replay(&self, inner: &mut Inner, since: &StreamPosition) -> Replay {
        self.drop_expired(inner, Instant::now());
        match since.missed_in(&inner.epoch, inner.last_position, inner.options.history_size) {
            None => return Replay::Unrecoverable,
            Some(0) => return Replay::Covered(Vec::new()),
            Some(_) => {}
        }
        match inner.recent.front() {
            Some(first) if first.position <= since.position + 1 => {
                let skip = (since.position + 1 - first.position) as usize;
                Replay::Covered(inner.recent.iter().skip(skip).cloned().collect())
            }
            _ => {
                Replay::Older { after: since.position, upto: inner.last_position, epoch: inner.epoch.clone() }
            }
        }
    }

    /// What a subscription resuming from `since` would need from a deeper store, if anything.
    pub fn needs_backfill(&self, since: Option<&StreamPosition>) -> Option<Replay> {
        let since = since?;
        match self.replay(&mut self.lock(), since) {
            older @ Replay::Older { .. } => Some(older),
            _ => None,
        }
    }

    /// Adds a subscriber. `reply` builds the frames that confirm the subscription; they are
    /// queued before any replayed message, and replayed messages before any live one.
    /// `backfill` is what the broker's own store returned for a [`Replay::Older`] gap.
    pub fn subscribe(
        &self,
        conn: ConnId,
        subscriber: Subscriber,
        since: Option<&StreamPosition>,
        backfill: Backfill,
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
        let (recovered, missed) = match since {
            Some(since) => match (self.replay(&mut inner, since), backfill) {
                (Replay::Covered(missed), _) => (Some(true), missed),
                (Replay::Older { .. }, Backfill::Filled(missed)) => (Some(true), missed),
                _ => (Some(false), Vec::new()),
            },
            None => (None, Vec::new()),
        };
        if let Some(recovered) = recovered {
            crate::metrics::metrics().resumed(recovered);
        }
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

    /// Messages after `since` (or the newest ones) among the recent messages, oldest first, at
    /// most `limit`. `complete` is false when `since` reaches further back than they do.
    pub fn history(&self, since: Option<&StreamPosition>, limit: usize) -> HistorySlice {
        let mut inner = self.lock();
        self.drop_expired(&mut inner, Instant::now());
        let (complete, publications) = match since {
            Some(since) => match self.replay(&mut inner, since) {
                Replay::Covered(mut missed) => {
                    missed.truncate(limit);
                    (true, missed)
                }
                _ => (false, Vec::new()),
            },
            None => {
                let skip = inner.recent.len().saturating_sub(limit);
                (true, inner.recent.iter().skip(skip).cloned().collect())
            }
        };
        let publications = page_by_bytes(publications, since.is_some());
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

    /// Drops expired messages and closed subscribers, then retires the channel when `idle`
    /// says so, all under the channel's lock. A retired channel takes no more deliveries or
    /// subscribers; the hub forgets it. Returns whether it is retired.
    pub fn retire_if(&self, now: Instant, idle: impl FnOnce(&ChannelUse) -> bool) -> bool {
        let mut inner = self.lock();
        self.drop_expired(&mut inner, now);
        inner.subscribers.retain(|_, s| !s.outbox.is_closed());
        let usage = ChannelUse {
            subscribers: inner.subscribers.len(),
            recent: inner.recent.len(),
            idle_for: now.saturating_duration_since(inner.last_active),
        };
        if !inner.retired && idle(&usage) {
            inner.retired = true;
        }
        inner.retired
    }
}

/// The most message bytes one history read returns (besides its count limit); a longer
/// stretch is read in pages.
pub const MAX_HISTORY_PAGE_BYTES: usize = 4 << 20;

/// Cuts a history read to [`MAX_HISTORY_PAGE_BYTES`], always keeping one message: from the
/// oldest when reading forward from a position (the next page continues after the last one),
/// from the newest when reading the latest messages.
pub fn page_by_bytes(mut publications: Vec<Arc<Publication>>, forward: bool) -> Vec<Arc<Publication>> {
    let total: usize = publications.iter().map(|p| p.weight()).sum();
    if total <= MAX_HISTORY_PAGE_BYTES {
        return publications;
    }
    let mut bytes = 0;
    let fits = |p: &Arc<Publication>, bytes: &mut usize| {
        *bytes += p.weight();
        *bytes <= MAX_HISTORY_PAGE_BYTES
    };
    if forward {
        let keep = publications.iter().take_while(|p| fits(p, &mut bytes)).count().max(1);
        publications.truncate(keep);
    } else {
        let keep = publications.iter().rev().take_while(|p| fits(p, &mut bytes)).count().max(1);
        publications.drain(..publications.len() - keep);
    }
    publications
}

/// How a channel is used, as [`Channel::retire_if`] shows it to a broker.
pub struct ChannelUse {
    pub subscribers: usize,
    pub recent: usize,
    pub idle_for: Duration,
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
