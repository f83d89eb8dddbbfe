//! The single-node backend, the default: each channel's stream lives in this process.
//!
//! A publish takes the channel's stream lock, de-duplicates its idempotency key, and hands the
//! message with the next position to [`Channel::deliver`] — the same path the NATS backend's
//! feeds use — so the recent messages a channel keeps are its whole history here. Presence is
//! read from this node's channels and connections; a command to "every node" is applied here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::backend::{
    Backend, Broker, ChannelSeed, Command, Control, HookView, Join, NewMessage, Node, Presence,
    PresentClient, PublishError, SubscribeError, UserConnection,
};
use crate::channel::{
    Backfill, Channel, HistorySlice, PublishOutcome, StreamPosition, SubscribeOutcome, new_epoch,
};
use crate::error::Error;
use crate::outbox::Outgoing;
use crate::publication::Publication;
use crate::stats::StatsSample;
use crate::{ConnId, Stats};

/// Idempotency keys remembered per channel at most; the oldest are forgotten first.
pub const MAX_IDEMPOTENCY_KEYS: usize = 10_000;

/// The in-process backend of one node.
pub struct Memory {
    idempotency_window: Duration,
    node: OnceLock<Weak<dyn Node>>,
}

impl Memory {
    /// The backend with its three roles, all played by one `Memory`.
    pub fn backend(idempotency_window: Duration) -> Backend {
        let memory = Arc::new(Memory { idempotency_window, node: OnceLock::new() });
        Backend { kind: "memory", broker: memory.clone(), presence: memory.clone(), control: memory }
    }

    fn node(&self) -> Option<Arc<dyn Node>> {
        self.node.get().and_then(Weak::upgrade)
    }
}

/// A channel's stream on this node: its idempotency window. Held while a message is given its
/// position and delivered, so publishes to one channel are totally ordered.
#[derive(Default)]
struct Stream {
    keys: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    outcomes: HashMap<String, (PublishOutcome, Instant)>,
    order: VecDeque<(String, Instant)>,
}

impl Keys {
    fn expire(&mut self, now: Instant) {
        while let Some((_, expires)) = self.order.front() {
            if *expires > now {
                break;
            }
            let (key, _) = self.order.pop_front().expect("front exists");
            if self.outcomes.get(&key).is_some_and(|(_, e)| *e <= now) {
                self.outcomes.remove(&key);
            }
        }
    }

    fn remember(&mut self, key: String, outcome: PublishOutcome, expires: Instant) {
        self.outcomes.insert(key.clone(), (outcome, expires));
        self.order.push_back((key, expires));
        while self.order.len() > MAX_IDEMPOTENCY_KEYS {
            if let Some((old, _)) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
    }
}

#[async_trait]
impl Broker for Memory {
    fn start(&self, node: Weak<dyn Node>) {
        let _ = self.node.set(node);
    }

    fn open_channel(&self) -> ChannelSeed {
        // A fresh epoch per in-memory stream: positions from a previous process or an expired
        // stream can never be mistaken for this one's.
        ChannelSeed { state: Box::new(Stream::default()), epoch: new_epoch() }
    }

    async fn publish(
        &self,
        ch: &Arc<Channel>,
        message: NewMessage,
        stats: &Stats,
    ) -> Result<PublishOutcome, PublishError> {
        let now = Instant::now();
        let mut keys = ch.state::<Stream>().keys.lock().expect("stream lock");
        // Channels retire only under this lock (`sweep`): once held, it stays live.
        let Some((epoch, last, ttl_seconds)) = ch.next_slot() else {
            return Err(PublishError::Retired(message));
        };
        if let Some(key) = &message.idempotency_key {
            keys.expire(now);
            if let Some((outcome, _)) = keys.outcomes.get(key) {
                return Ok(PublishOutcome { duplicate: true, ..outcome.clone() });
            }
        }
        let position = last + 1;
        let timestamp_ms = chrono::Utc::now().timestamp_millis();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let ttl = Duration::from_secs(u64::from(ttl_seconds));
        let publication = Arc::new(Publication::new(
            ch.name.clone(),
            position,
            epoch.clone(),
            &id,
            timestamp_ms,
            message.event.as_deref(),
            &message.data,
            now + ttl,
        ));
        ch.deliver(publication, stats).map_err(|_| Error::Closed)?; // Not retired: see above.
        stats.record_published(&ch.counters);
        let outcome = PublishOutcome { position, epoch, id, timestamp_ms, duplicate: false };
        if let Some(key) = message.idempotency_key {
            keys.remember(key, outcome.clone(), now + self.idempotency_window);
        }
        Ok(outcome)
    }

    async fn subscribe(&self, ch: &Arc<Channel>, join: Join) -> Result<SubscribeOutcome, SubscribeError> {
        ch.subscribe(join.conn, join.subscriber, join.since.as_ref(), Backfill::None, join.reply)
    }

    async fn history(
        &self,
        ch: &Arc<Channel>,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistorySlice, Error> {
        Ok(ch.history(since, limit))
    }

    fn broadcast_event(&self, ch: &Arc<Channel>, frame: Utf8Bytes, except: Option<ConnId>) {
        ch.broadcast(Outgoing::Frame(frame), except);
    }

    fn sweep(&self, ch: &Channel, now: Instant) -> bool {
        // The stream lock before the channel lock, as in `publish`.
        let mut keys = ch.state::<Stream>().keys.lock().expect("stream lock");
        keys.expire(now);
        let no_keys = keys.outcomes.is_empty();
        // Nothing worth keeping: a later use starts a new epoch.
        ch.retire_if(now, |usage| usage.subscribers == 0 && usage.recent == 0 && no_keys)
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

#[async_trait]
impl Presence for Memory {
    fn changed(&self, _: crate::backend::PresenceChange<'_>) {}

    fn client_id(&self, conn: ConnId) -> String {
        conn.to_string()
    }

    async fn channel(&self, tenant: &str, channel: &str) -> Result<Vec<PresentClient>, Error> {
        let Some(ch) = self.node().and_then(|n| n.channel(tenant, channel)) else { return Ok(Vec::new()) };
        let mut clients: Vec<PresentClient> = ch
            .subscribers()
            .into_iter()
            .map(|(conn, user, info)| PresentClient {
                client: conn.to_string(),
                user: user.to_string(),
                info: info.map(|i| (*i).to_owned()),
            })
            .collect();
        clients.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(clients)
    }

    async fn user(&self, tenant: &str, user: &str) -> Result<Vec<UserConnection>, Error> {
        let Some(node) = self.node() else { return Ok(Vec::new()) };
        let mut conns: Vec<_> =
            node.connections().into_iter().filter(|c| &*c.tenant == tenant && &*c.user == user).collect();
        conns.sort_by_key(|c| c.id);
        Ok(conns
            .into_iter()
            .map(|c| UserConnection {
                client: c.id.to_string(),
                node: node.node_id().to_owned(),
                transport: c.transport.as_str().to_owned(),
                connected_at: c.connected_at,
            })
            .collect())
    }

    async fn occupancy(&self, tenant: &str) -> Result<Vec<(String, u64)>, Error> {
        let Some(node) = self.node() else { return Ok(Vec::new()) };
        let mut out: Vec<(String, u64)> = node
            .channels()
            .into_iter()
            .filter(|c| &*c.tenant == tenant)
            .map(|c| (c.name.to_string(), c.subscriber_count() as u64))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }

    async fn hook_view(&self, wanted: &(dyn for<'t> Fn(&'t str) -> bool + Sync)) -> Option<HookView> {
        let node = self.node()?;
        let mut view = crate::hooks::View::new();
        for ch in node.channels() {
            if !wanted(&ch.tenant) {
                continue;
            }
            let count = ch.subscriber_count() as u64;
            if count == 0 {
                continue;
            }
            let users = if ch.options().presence {
                ch.subscribers().iter().map(|(_, user, _)| user.to_string()).collect()
            } else {
                Default::default()
            };
            view.insert(
                (ch.tenant.to_string(), ch.name.to_string()),
                crate::hooks::ChannelView { subscribers: count, users },
            );
        }
        Some(HookView { view, took_over: false })
    }
}

#[async_trait]
impl Control for Memory {
    async fn broadcast(&self, _command: Command) -> Result<(), Error> {
        Ok(()) // There is no other node.
    }

    async fn gather(&self, command: Command) -> Result<u64, Error> {
        match self.node() {
            Some(node) => Ok(node.apply(command).await),
            None => Ok(0),
        }
    }

    fn peer_samples(&self) -> Vec<(String, Arc<StatsSample>)> {
        Vec::new()
    }
}
