//! A node's feed of one cluster channel: the task that owns the channel's NATS subscription
//! while the channel has local subscribers, and the only thing that delivers to them.
//!
//! Because one task delivers in stream order and also admits new subscribers, a subscriber
//! that resumes gets the missed messages (from the local cache or the stream) and then every
//! live one, with nothing lost or repeated at the hand-over. A gap in the live feed (NATS
//! dropped messages, the connection was lost) is filled from the stream before going on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use herald_core::ConnId;
use herald_core::backend::{Node, PresentClient, SubscribeError};
use herald_core::channel::{
    Backfill, Channel, Replay, ReplyBuilder, StreamPosition, SubscribeOutcome, Subscriber,
};
use herald_core::outbox::Outgoing;
use herald_core::protocol::{self, ServerFrame};

use crate::stream::{self, HEADER_EVENT, HEADER_ORIGIN, Stored, header_str};
use crate::{Cluster, ClusterChannel};

/// A request to the node's feed of a channel: admit a subscriber.
pub(crate) struct JoinRequest {
    pub conn: ConnId,
    pub subscriber: Subscriber,
    pub since: Option<StreamPosition>,
    pub reply: ReplyBuilder,
    pub done: tokio::sync::oneshot::Sender<Result<SubscribeOutcome, SubscribeError>>,
}

/// How often an idle feed checks whether its channel still has local subscribers.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// Starts the feed of `ch` on the cluster thread; joins are sent through the returned sender.
pub(crate) fn start(
    cluster: Arc<Cluster>,
    node: Arc<dyn Node>,
    ch: Arc<Channel>,
) -> mpsc::UnboundedSender<JoinRequest> {
    let (tx, rx) = mpsc::unbounded_channel();
    let thread = cluster.clone();
    thread.thread.spawn(async move {
        let history = stream::history_subject(&ch.tenant, &ch.name);
        let mut feed = Feed { cluster, node, ch, history, last_seq: 0 };
        feed.run(rx).await;
    });
    tx
}

struct Feed {
    cluster: Arc<Cluster>,
    node: Arc<dyn Node>,
    ch: Arc<Channel>,
    /// The channel's stored subject.
    history: String,
    /// JetStream sequence of the newest delivered message.
    last_seq: u64,
}

/// How often reading a gap from the stream is tried before the feed gives up on it (about
/// 25 s with the back-off below); live delivery waits meanwhile.
const FILL_ATTEMPTS: u32 = 50;
const FILL_BACKOFF: Duration = Duration::from_millis(500);

/// The next presence change, or never when the channel is not watched.
async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

impl Feed {
    fn ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.ch.options().history_ttl_seconds.max(1)))
    }

    async fn run(&mut self, mut joins: mpsc::UnboundedReceiver<JoinRequest>) {
        let subject = stream::feed_subject(&self.ch.tenant, &self.ch.name);
        let history = self.history.clone();
        // Subscribe first, then read the head: whatever is stored after the head is read
        // arrives on the subscription.
        let mut sub = loop {
            let subscribed = self.cluster.client.subscribe(subject.clone()).await;
            match subscribed {
                Ok(sub) if self.cluster.client.flush().await.is_ok() => break sub,
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        let head = loop {
            match self.cluster.head_or_start(&history, self.ttl()).await {
                Ok(head) => break head,
                Err(e) => {
                    tracing::warn!(error = ?e, channel = %self.ch.name, "cannot read the channel head; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        self.last_seq = head.seq;
        self.ch.follow_from(head.epoch, head.position);
        // Channels with join/leave events follow the presence registry, to announce the
        // leave of clients whose node died (their entries expire).
        let options = self.ch.options();
        let mut presence = if options.presence && options.join_leave {
            self.cluster.registry.watch_channel(&self.ch.tenant, &self.ch.name).await.ok()
        } else {
            None
        };
        let mut present: HashMap<String, Vec<PresentClient>> = HashMap::new();
        let mut generation = self.cluster.generation.subscribe();
        generation.mark_unchanged();
        let mut idle = tokio::time::interval(IDLE_CHECK);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = sub.next() => match msg {
                    Some(msg) => self.on_message(msg).await,
                    None => break,
                },
                join = joins.recv() => match join {
                    Some(join) => self.on_join(join).await,
                    None => break,
                },
                changed = generation.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Reconnected, or NATS dropped messages: catch up with what was stored.
                    self.catch_up().await;
                }
                entry = next_entry(&mut presence) => match entry {
                    Some(Ok(entry)) => self.on_presence(entry, &mut present),
                    Some(Err(e)) => tracing::debug!(error = %e, "presence watch"),
                    None => presence = None,
                },
                _ = idle.tick() => {
                    if self.stop_if_idle(&joins) {
                        return;
                    }
                }
            }
        }
        // The subscription or the channel of joins ended: let the next subscriber start over.
        if self.ch.subscriber_count() > 0 {
            tracing::error!(channel = %self.ch.name, "a channel feed ended while it had subscribers");
        }
        *self.ch.state::<ClusterChannel>().feed.lock().expect("feed lock") = None;
    }

    /// A presence entry of this channel changed on some node. An entry that expired (its node
    /// stopped refreshing it) turns into leave events for its clients, on this node.
    fn on_presence(&self, entry: kv::Entry, present: &mut HashMap<String, Vec<PresentClient>>) {
        if entry.key.rsplit('.').next() == Some(self.cluster.registry.node_token().as_str()) {
            return;
        }
        match entry.operation {
            kv::Operation::Put => {
                let clients = serde_json::from_slice(&entry.value).unwrap_or_default();
                present.insert(entry.key, clients);
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                for client in present.remove(&entry.key).unwrap_or_default() {
                    let leave = protocol::frame(&ServerFrame::Leave {
                        channel: &self.ch.name,
                        client: client.client.clone(),
                        user: &client.user,
                    });
                    self.ch.broadcast(Outgoing::Frame(leave), None);
                }
            }
        }
    }

    /// Ends the feed when nobody here is subscribed and no join is pending. Joins are sent
    /// under the feed lock, so none can slip in between the check and the exit.
    fn stop_if_idle(&self, joins: &mpsc::UnboundedReceiver<JoinRequest>) -> bool {
        let mut feed = self.ch.state::<ClusterChannel>().feed.lock().expect("feed lock");
        if self.ch.subscriber_count() == 0 && joins.is_empty() {
            *feed = None;
            return true;
        }
        false
    }

    async fn on_message(&mut self, msg: async_nats::Message) {
        let headers = msg.headers.as_ref();
        if header_str(headers, HEADER_EVENT).is_some() {
            let except = header_str(headers, HEADER_ORIGIN)
                .and_then(|o| o.split_once('/'))
                .filter(|(node, _)| *node == self.cluster.node_id)
                .and_then(|(_, conn)| conn.parse().ok())
                .map(ConnId);
            if let Ok(frame) = Utf8Bytes::try_from(msg.payload) {
                self.ch.broadcast(Outgoing::Frame(frame), except);
            }
            return;
        }
        let (Some(stored), Some(seq)) = (Stored::read(headers), stream::sequence_of(headers)) else {
            tracing::warn!(subject = %msg.subject, headers = ?msg.headers, "ignoring a feed message without valid Herald headers");
            return;
        };
        let (current_epoch, last) = self.ch.delivered_head();
        if stored.is_marker() {
            // An epoch marker (see `Cluster::head_or_start`): a new stream starts here.
            if *current_epoch != *stored.epoch {
                self.ch.follow_from(Arc::from(stored.epoch), 0);
                self.last_seq = seq;
            }
            return;
        }
        // A stored message holds positions `first ..= last` (one, or a batch).
        let after = if *current_epoch == *stored.epoch {
            if stored.last <= last {
                return; // Already delivered (read from the stream before it arrived live).
            }
            last
        } else {
            0
        };
        if stored.first() > after + 1 {
            self.fill(stored.previous, stored.epoch, after, stored.first() - 1).await;
            self.last_seq = stored.previous;
        }
        let Some(found) = stream::publications(&self.ch.name, &stored, msg.payload, self.ttl()) else {
            tracing::warn!(subject = %msg.subject, "ignoring an unreadable stored message");
            return;
        };
        let (delivered_epoch, delivered) = self.ch.delivered_head();
        for p in found {
            if *delivered_epoch == *p.epoch && p.position <= delivered {
                continue;
            }
            let _ = self.ch.deliver(p, self.node.stats());
        }
        self.last_seq = seq;
    }

    /// Delivers positions `after + 1 ..= upto` of `epoch` from the stream, walking back from
    /// sequence `from_seq`. While the stream cannot be read, it retries (live delivery waits);
    /// what is no longer stored is skipped with a warning, and the channel's local cache then
    /// restarts after the gap.
    async fn fill(&mut self, from_seq: u64, epoch: &str, after: u64, upto: u64) {
        for attempt in 1..=FILL_ATTEMPTS {
            match self
                .cluster
                .read_back(&self.ch.name, &self.history, from_seq, epoch, after, upto, self.ttl())
                .await
            {
                Ok((missed, complete)) => {
                    if !complete {
                        tracing::warn!(
                            channel = %self.ch.name,
                            after,
                            upto,
                            "messages missed by this node are no longer stored; subscribers see a gap in positions"
                        );
                    }
                    for p in missed {
                        let _ = self.ch.deliver(p, self.node.stats());
                    }
                    return;
                }
                Err(e) if attempt == FILL_ATTEMPTS => {
                    tracing::error!(error = ?e, channel = %self.ch.name, after, upto, "giving up filling a gap in the feed");
                }
                Err(_) => tokio::time::sleep(FILL_BACKOFF).await,
            }
        }
    }

    /// Delivers whatever was stored after the last delivered message (after a reconnection,
    /// when NATS dropped messages, or before admitting a subscriber that is ahead of this node).
    async fn catch_up(&mut self) {
        let mut head = None;
        for _ in 0..FILL_ATTEMPTS {
            match self.cluster.head(&self.history).await {
                Ok(h) => {
                    head = Some(h);
                    break;
                }
                Err(_) => tokio::time::sleep(FILL_BACKOFF).await,
            }
        }
        let Some(head) = head else {
            tracing::error!(channel = %self.ch.name, "cannot read the channel head to catch up");
            return;
        };
        let (epoch, last) = self.ch.delivered_head();
        if head.seq == 0 || (head.epoch == epoch && head.position <= last) {
            return;
        }
        if head.position == 0 {
            // Only an epoch marker: a new, still empty stream.
            self.ch.follow_from(head.epoch.clone(), 0);
        } else {
            let after = if head.epoch == epoch { last } else { 0 };
            self.fill(head.seq, &head.epoch.clone(), after, head.position).await;
        }
        self.last_seq = head.seq;
    }

    async fn on_join(&mut self, join: JoinRequest) {
        if join.done.is_closed() {
            return; // The session gave up waiting.
        }
        // A client that saw more than this node has delivered (it was on a node that is
        // ahead): catch up first, so its resume point is known here.
        if let Some(since) = &join.since {
            let (epoch, last) = self.ch.delivered_head();
            let known_epoch = since.epoch.is_empty() || *since.epoch == *epoch;
            if !known_epoch || since.position > last {
                self.catch_up().await;
            }
        }
        let backfill = match self.ch.needs_backfill(join.since.as_ref()) {
            Some(Replay::Older { after, upto, epoch }) => {
                match self
                    .cluster
                    .read_back(&self.ch.name, &self.history, self.last_seq, &epoch, after, upto, self.ttl())
                    .await
                {
                    Ok((missed, true)) => Backfill::Filled(missed),
                    Ok((_, false)) => Backfill::Missing,
                    Err(_) => {
                        let _ = join.done.send(Err(SubscribeError::Unavailable));
                        return;
                    }
                }
            }
            _ => Backfill::None,
        };
        if join.done.is_closed() {
            return; // Gave up while the history was read.
        }
        let conn = join.conn;
        let result = self.ch.subscribe(conn, join.subscriber, join.since.as_ref(), backfill, join.reply);
        let subscribed = result.is_ok();
        if join.done.send(result).is_err() && subscribed {
            self.ch.unsubscribe(conn);
        }
    }
}
