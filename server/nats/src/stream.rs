//! Channel streams in JetStream: one stream, one subject per channel, contiguous positions.
//!
//! Each stored message is the channel's `pub` frame, or a batch of them as a JSON array, with
//! headers carrying its (last) position, its epoch, its acceptance time, a batch's count and
//! frame sizes, and the JetStream sequence of the channel's previous message (so history can be
//! walked backwards without an index). A node that reads a stored message builds its
//! publications from the headers and slices of the payload, without parsing the frames. A
//! publishing node caches the channel's head (sequence, position, epoch) and publishes the next
//! position with `Nats-Expected-Last-Subject-Sequence`; if another node got there first the
//! publish is refused, the node reloads the head and tries again. An empty subject (never used,
//! or every message expired) starts a new epoch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use herald_core::Error;
use herald_core::channel::{Channel, HistorySlice, PublishOutcome, StreamPosition, new_epoch, page_by_bytes};
use herald_core::publication::Publication;
use herald_types::model::{EffectiveChannelOptions, MAX_HISTORY_SIZE};

use crate::{Cluster, ClusterChannel};

/// The newest message of a channel's shared stream, cached by a publishing node: its JetStream
/// sequence (0 when the stream is empty), position and epoch.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamHead {
    pub seq: u64,
    pub position: u64,
    pub epoch: Arc<str>,
    /// The head message's TTL in seconds, and when this node learnt the head: a later message
    /// must not expire before it (see [`next_ttl`]).
    pub ttl_seconds: u64,
    pub seen: Option<std::time::Instant>,
}

/// A publish queued for a channel, stored with the next batch by the channel's drain task.
pub(crate) struct PendingPublish {
    pub data: Box<RawValue>,
    pub event: Option<String>,
    pub done: tokio::sync::oneshot::Sender<Result<PublishOutcome, Error>>,
}

pub(crate) const STREAM: &str = "HERALD";
pub(crate) const HEADER_POSITION: &str = "Herald-Position";
pub(crate) const HEADER_EPOCH: &str = "Herald-Epoch";
/// JetStream sequence of the channel's previous message (0 for the first of an epoch).
pub(crate) const HEADER_PREVIOUS: &str = "Herald-Previous-Seq";
/// Marks a join/leave frame on a feed subject (not stored).
pub(crate) const HEADER_EVENT: &str = "Herald-Event";
/// `node/connection` that caused an event, so its own connection is skipped.
pub(crate) const HEADER_ORIGIN: &str = "Herald-Origin";
/// How many publications a stored batch holds (absent: one); `Herald-Position` is the last's.
pub(crate) const HEADER_COUNT: &str = "Herald-Count";
/// Acceptance time of a stored message's publications, milliseconds since the Unix epoch.
pub(crate) const HEADER_TS: &str = "Herald-Ts";
/// The byte length of each frame of a stored batch, comma-separated, oldest first.
pub(crate) const HEADER_SIZES: &str = "Herald-Sizes";

/// How often a publish retries after losing the race for a position to another node.
const MAX_PUBLISH_ATTEMPTS: usize = 32;

/// A subject token for a name: letters, digits, `_` and `-` stay; every other byte becomes
/// `=XX` (hex), so `.` and `*` never reach a subject and the mapping is reversible.
pub(crate) fn token(name: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "={b:02X}");
        }
    }
    out
}

/// The name a subject token stands for ([`token`] reversed).
pub(crate) fn untoken(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The stored subject of a channel.
pub(crate) fn history_subject(tenant: &str, channel: &str) -> String {
    format!("herald.ch.{}.{}", token(tenant), token(channel))
}

/// The subject a channel's stored messages are republished on, and its events published on.
pub(crate) fn feed_subject(tenant: &str, channel: &str) -> String {
    format!("herald.fo.{}.{}", token(tenant), token(channel))
}

/// Creates the stream, or updates its settings to this version's.
pub(crate) async fn ensure(
    js: &jetstream::Context,
    settings: &crate::ClusterSettings,
) -> Result<jetstream::stream::Stream, async_nats::Error> {
    let config = jetstream::stream::Config {
        name: STREAM.into(),
        description: Some("Herald channel messages".into()),
        subjects: vec!["herald.ch.>".into()],
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        // Per-channel history limits are applied on read; this caps what any channel keeps.
        max_messages_per_subject: i64::from(MAX_HISTORY_SIZE),
        allow_message_ttl: true,
        allow_direct: true,
        duplicate_window: settings.idempotency_window,
        max_bytes: settings.history_max_bytes.min(i64::MAX as u64) as i64,
        num_replicas: settings.replicas,
        republish: Some(jetstream::stream::Republish {
            source: "herald.ch.>".into(),
            destination: "herald.fo.>".into(),
            headers_only: false,
        }),
        ..Default::default()
    };
    js.create_or_update_stream(config).await?;
    Ok(js.get_stream(STREAM).await?)
}

/// A Herald header as a number. (Standard `Nats-*` headers must be looked up by their
/// constants: a name given as `&str` never matches them.)
pub(crate) fn header_u64(headers: Option<&async_nats::HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

pub(crate) fn header_str<'a>(headers: Option<&'a async_nats::HeaderMap>, name: &str) -> Option<&'a str> {
    Some(headers?.get(name)?.as_str())
}

/// Where each frame of a stored message lies in its payload: the whole payload for one frame;
/// for a batch (a JSON array of `count` frames) from its `Herald-Sizes` header, or by parsing
/// the array when a message has none.
fn frame_ranges(sizes: Option<&str>, payload: &[u8], count: u64) -> Option<Vec<std::ops::Range<usize>>> {
    if count <= 1 {
        return Some(std::iter::once(0..payload.len()).collect());
    }
    let count = usize::try_from(count).ok()?;
    let Some(sizes) = sizes else {
        let frames: Vec<&RawValue> = serde_json::from_slice(payload).ok()?;
        if frames.len() != count {
            return None;
        }
        let base = payload.as_ptr() as usize;
        return Some(
            frames
                .iter()
                .map(|f| {
                    let start = f.get().as_ptr() as usize - base;
                    start..start + f.get().len()
                })
                .collect(),
        );
    };
    // `[` frame `,` frame … `]`: each size must land on the next separator, the last on the end.
    let mut ranges = Vec::with_capacity(count.min(MAX_BATCH));
    let mut at: usize = 1;
    if payload.first() != Some(&b'[') {
        return None;
    }
    for size in sizes.split(',') {
        let end = at.checked_add(size.parse::<usize>().ok()?)?;
        let separator = if ranges.len() + 1 == count { b']' } else { b',' };
        if end <= at || payload.get(end) != Some(&separator) {
            return None;
        }
        ranges.push(at..end);
        at = end + 1;
    }
    (ranges.len() == count && at == payload.len()).then_some(ranges)
}

/// A stored message's payload as it is written: one frame as it is, a batch as a JSON array of
/// its frames with their sizes (`Herald-Sizes`), which [`frame_ranges`] reads back.
struct Payload {
    bytes: Vec<u8>,
    sizes: String,
    batch: bool,
    frames: usize,
}

impl Payload {
    /// For `frames` frames of about `capacity` bytes in all.
    fn new(frames: usize, capacity: usize) -> Payload {
        let batch = frames > 1;
        let mut bytes = Vec::with_capacity(capacity + 2);
        if batch {
            bytes.push(b'[');
        }
        Payload { bytes, sizes: String::new(), batch, frames: 0 }
    }

    /// Appends the frame `encode` writes.
    fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.frames > 0 {
            self.bytes.push(b',');
            self.sizes.push(',');
        }
        let start = self.bytes.len();
        encode(&mut self.bytes);
        if self.batch {
            use std::fmt::Write;
            let _ = write!(self.sizes, "{}", self.bytes.len() - start);
        }
        self.frames += 1;
    }

    /// The payload, and a batch's sizes.
    fn finish(mut self) -> (Vec<u8>, Option<String>) {
        if self.batch {
            self.bytes.push(b']');
        }
        (self.bytes, self.batch.then_some(self.sizes))
    }
}

/// What a stored message's headers say about it. Every reader of a stored message's
/// publications (a feed's live message, a walk back through history, the original of a
/// repeated idempotent publish) and a channel's head ([`Cluster::head`]) reads them here,
/// once, so the rule for which positions a message holds is in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored<'h> {
    /// The position of its last publication; 0 for an epoch marker, which holds none.
    pub last: u64,
    /// How many publications it holds: 1, a batch's `Herald-Count`, or 0 for a marker.
    pub count: u64,
    pub epoch: &'h str,
    /// The JetStream sequence of the channel's message before it (0: the first of its epoch).
    pub previous: u64,
    /// Acceptance time of its publications (absent on messages of versions before it).
    timestamp_ms: Option<i64>,
    /// A batch's frame sizes (`Herald-Sizes`).
    sizes: Option<&'h str>,
}

impl<'h> Stored<'h> {
    /// `None` when a header is missing or malformed, or when the message would hold a position
    /// below 1 (a count larger than its last position).
    pub(crate) fn read(headers: Option<&'h async_nats::HeaderMap>) -> Option<Stored<'h>> {
        let last = header_u64(headers, HEADER_POSITION)?;
        let count = match (last, header_str(headers, HEADER_COUNT)) {
            (0, _) => 0,
            (_, None) => 1,
            (_, Some(count)) => count.parse().ok().filter(|count| (1..=last).contains(count))?,
        };
        Some(Stored {
            last,
            count,
            epoch: header_str(headers, HEADER_EPOCH)?,
            previous: header_u64(headers, HEADER_PREVIOUS)?,
            timestamp_ms: match header_str(headers, HEADER_TS) {
                Some(ts) => Some(ts.parse().ok()?),
                None => None,
            },
            sizes: header_str(headers, HEADER_SIZES),
        })
    }

    /// An epoch marker: it starts a stream (position 0) and holds no publication.
    pub(crate) fn is_marker(&self) -> bool {
        self.last == 0
    }

    /// The position of its first publication (a marker's last + 1).
    pub(crate) fn first(&self) -> u64 {
        // `read` keeps count ≤ last, so this neither underflows nor overflows.
        self.last - self.count + 1
    }
}

/// The publications of a stored message of `channel`, oldest first: none for an epoch marker,
/// one frame, or a JSON array of `count` frames (a batch), each sharing the payload's bytes;
/// `ttl` is the channel's history lifetime. A message that carries its acceptance time
/// (`Herald-Ts`) is not parsed: positions and epoch come from its headers. One stored without
/// it (by an earlier version) is read from its frames.
pub(crate) fn publications(
    channel: &Arc<str>,
    stored: &Stored<'_>,
    payload: Bytes,
    ttl: Duration,
) -> Option<Vec<Arc<Publication>>> {
    if stored.is_marker() {
        return Some(Vec::new());
    }
    let ranges = frame_ranges(stored.sizes, &payload, stored.count)?;
    let (now, now_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
    // Aged by the time it has already spent in the stream.
    let expires_at =
        |ts: i64| now + ttl.saturating_sub(Duration::from_millis(now_ms.saturating_sub(ts).max(0) as u64));
    let frames = ranges.into_iter().map(|range| Utf8Bytes::try_from(payload.slice(range)).ok());
    match stored.timestamp_ms {
        Some(timestamp_ms) => {
            let epoch: Arc<str> = Arc::from(stored.epoch);
            frames
                .zip(stored.first()..=stored.last)
                .map(|(frame, position)| {
                    Some(Arc::new(Publication {
                        channel: channel.clone(),
                        position,
                        epoch: epoch.clone(),
                        timestamp_ms,
                        frame: frame?,
                        expires_at: expires_at(timestamp_ms),
                    }))
                })
                .collect()
        }
        None => frames
            .map(|frame| {
                let mut p = Publication::from_frame(channel.clone(), frame?, now).ok()?;
                p.expires_at = expires_at(p.timestamp_ms);
                Some(Arc::new(p))
            })
            .collect(),
    }
}

/// The JetStream sequence of a stored message as republished (`Nats-Sequence`).
pub(crate) fn sequence_of(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    headers?.get(async_nats::header::NATS_SEQUENCE)?.as_str().parse().ok()
}

/// At most this many queued publishes, and about this many bytes, go into one stored batch.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Takes the oldest queued publishes for one batch (at least one when any is queued), and
/// whether more are left behind (the batch is full).
fn take_batch(
    pending: &std::sync::Mutex<std::collections::VecDeque<PendingPublish>>,
    max_bytes: usize,
) -> (Vec<PendingPublish>, bool) {
    let max_bytes = max_bytes.min(MAX_BATCH_BYTES);
    let mut pending = pending.lock().expect("pending lock");
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(next) = pending.front() {
        // The frame around the data: channel name, ids, position, epoch, event.
        let size = next.data.get().len() + 512;
        if !batch.is_empty() && (batch.len() >= MAX_BATCH || bytes + size > max_bytes) {
            break;
        }
        bytes += size;
        batch.push(pending.pop_front().expect("front exists"));
    }
    (batch, !pending.is_empty())
}

fn ttl_of(options: &EffectiveChannelOptions) -> Duration {
    Duration::from_secs(u64::from(options.history_ttl_seconds.max(1)))
}

/// A direct get's answer with "no such message" as `None`.
fn found_direct(
    result: Result<StreamMessage, async_nats::jetstream::stream::DirectGetError>,
) -> Result<Option<StreamMessage>, Error> {
    match result {
        Ok(msg) => Ok(Some(msg)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(Cluster::unavailable(e)),
    }
}

/// A leader read's answer with "no such message" as `None`.
fn found_raw(
    result: Result<StreamMessage, async_nats::jetstream::stream::RawMessageError>,
) -> Result<Option<StreamMessage>, Error> {
    match result {
        Ok(msg) => Ok(Some(msg)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(Cluster::unavailable(e)),
    }
}

/// The `Nats-TTL` of a stored message, in seconds.
fn ttl_header(headers: &async_nats::HeaderMap) -> u64 {
    headers
        .get(async_nats::header::NATS_MESSAGE_TTL)
        .and_then(|v| v.as_str().trim_end_matches('s').parse().ok())
        .unwrap_or(0)
}

/// A channel's head from its newest stored message (sequence `seq`), read like every stored
/// message ([`Stored::read`]). One that does not read as Herald's (a malformed or missing
/// position, epoch or previous sequence: written by something else on the subject) cannot say
/// which positions are taken, so the channel starts a new epoch after it: its next message is
/// position 1 of an epoch every node derives alike from the subject and sequence, and a client
/// resuming the old epoch is told `recovered: false`, never handed a position twice.
fn head_of(subject: &str, seq: u64, headers: &async_nats::HeaderMap) -> StreamHead {
    let (position, epoch) = match Stored::read(Some(headers)) {
        Some(stored) => (stored.last, Arc::from(stored.epoch)),
        None => {
            tracing::warn!(
                subject,
                seq,
                "the channel's newest stored message is not Herald's; starting a new epoch after it"
            );
            let digest = herald_core::crypto::sha256_hex(&format!("{subject}#{seq}"));
            (0, Arc::from(&digest[..8]))
        }
    };
    StreamHead { seq, position, epoch, ttl_seconds: ttl_header(headers), seen: Some(Instant::now()) }
}

/// The TTL for the message after `head`: the channel's, but never so short that it would
/// expire before the head. Messages of a subject then expire in sequence order, so an expired
/// message is never followed by a stored one and positions are never handed out twice (which
/// lowering `history_ttl_seconds` would otherwise cause). The head's remaining life is
/// measured from when this node learnt it, which is no earlier than when it was stored.
fn next_ttl(channel_ttl: Duration, head: &StreamHead) -> u64 {
    let channel = channel_ttl.as_secs().max(1);
    let Some(seen) = head.seen else { return channel };
    let remaining = head.ttl_seconds.saturating_sub(seen.elapsed().as_secs());
    // One second of margin for rounding and clock granularity.
    channel.max(remaining + 1)
}

impl Cluster {
    /// A stored message by sequence, `None` if there is none (expired, trimmed). With several
    /// replicas it is read through the stream leader: a lagging follower could miss it.
    async fn message(&self, seq: u64) -> Result<Option<StreamMessage>, Error> {
        if self.settings.replicas == 1 {
            found_direct(self.stream.direct_get(seq).await)
        } else {
            found_raw(self.stream.get_raw_message(seq).await)
        }
    }

    /// The newest stored message of a subject, `None` if it has none (see [`Self::message`]).
    async fn last_message(&self, subject: &str) -> Result<Option<StreamMessage>, Error> {
        if self.settings.replicas == 1 {
            found_direct(self.stream.direct_get_last_for_subject(subject).await)
        } else {
            found_raw(self.stream.get_last_raw_message_by_subject(subject).await)
        }
    }

    /// The newest stored message of a subject, or an empty head.
    pub(crate) async fn head(&self, subject: &str) -> Result<StreamHead, Error> {
        Ok(match self.last_message(subject).await? {
            Some(msg) => head_of(subject, msg.sequence, &msg.headers),
            None => StreamHead::default(),
        })
    }

    /// The head of a channel's stream, starting a new epoch when the stream is empty: a marker
    /// at position 0 (empty payload, never delivered) fixes the epoch, so subscribers learn it
    /// before the first message, as on a single node.
    pub(crate) async fn head_or_start(&self, subject: &str, ttl: Duration) -> Result<StreamHead, Error> {
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            let head = self.head(subject).await?;
            if head.seq != 0 {
                return Ok(head);
            }
            let epoch = new_epoch();
            let marker = jetstream::message::PublishMessage::build()
                .header(HEADER_POSITION, "0")
                .header(HEADER_EPOCH, &*epoch)
                .header(HEADER_PREVIOUS, "0")
                .header("Nats-TTL", format!("{}s", ttl.as_secs()).as_str())
                .expected_last_subject_sequence(0);
            let ack =
                self.js.send_publish(subject.to_owned(), marker).await.map_err(Self::unavailable)?.await;
            match ack {
                Ok(ack) => {
                    return Ok(StreamHead {
                        seq: ack.sequence,
                        position: 0,
                        epoch,
                        ttl_seconds: ttl.as_secs(),
                        seen: Some(Instant::now()),
                    });
                }
                // Another node started it first: read its epoch.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(Self::unavailable(e)),
            }
        }
        Err(Error::ClusterUnavailable("could not start the channel's stream".into()))
    }

    /// Stores a message at the channel's next position; returns once JetStream has it.
    ///
    /// A node stores one channel's messages one JetStream publish at a time (each must name the
    /// sequence of the one before). Publishes that arrive meanwhile wait in the channel's queue
    /// and go out together as one stored batch, so a burst costs one round trip and reaches
    /// subscribers in one wake-up. A publish with an idempotency key is stored on its own (the
    /// key is the stored message's `Nats-Msg-Id`). Every store runs on the cluster thread.
    pub(crate) async fn store_publish(
        self: &Arc<Self>,
        ch: &Arc<Channel>,
        data: Box<RawValue>,
        event: Option<String>,
        idempotency_key: Option<String>,
    ) -> Result<PublishOutcome, Error> {
        // Refuse at once while disconnected: a publish queued now would be sent (and stored)
        // after the reconnection, long after its caller was told it failed.
        self.health().map_err(Error::ClusterUnavailable)?;
        let slot = ch.state::<ClusterChannel>();
        if let Some(key) = idempotency_key {
            // Stored on its own, but like every store on the cluster thread: its acknowledgement
            // is read there, and a caller that goes away cannot cut the store short.
            let (cluster, ch) = (self.clone(), ch.clone());
            let stored = self.thread.spawn(async move {
                let mut head = ch.state::<ClusterChannel>().head.lock().await;
                let max_payload = cluster.max_payload();
                let mut outcomes =
                    cluster.store(&ch, &mut head, vec![(data, event)], Some(&key), max_payload).await?;
                Ok(outcomes.pop().expect("one outcome per message"))
            });
            return stored.await.unwrap_or_else(|_| Err(Self::unavailable("the publish was abandoned")));
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        slot.pending.lock().expect("pending lock").push_back(PendingPublish { data, event, done });
        self.start_drain(ch);
        answer.await.unwrap_or_else(|_| Err(Self::unavailable("the publish was abandoned")))
    }

    /// Makes sure a task is storing the channel's queued publishes. The task runs on its own,
    /// so a caller that goes away mid-publish cannot leave the others of its batch unanswered,
    /// and on the cluster thread, so an acknowledgement is acted on as soon as it arrives.
    fn start_drain(self: &Arc<Self>, ch: &Arc<Channel>) {
        let slot = ch.state::<ClusterChannel>();
        if slot.draining.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return; // The running task will see it.
        }
        let (cluster, ch) = (self.clone(), ch.clone());
        self.thread.spawn(async move {
            let slot = ch.state::<ClusterChannel>();
            loop {
                cluster.drain(&ch).await;
                slot.draining.store(false, std::sync::atomic::Ordering::Release);
                // A publish queued between the last take and the store above found the flag
                // still set: pick it up unless another task already has.
                if slot.pending.lock().expect("pending lock").is_empty()
                    || slot.draining.swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    return;
                }
            }
        });
    }

    /// Stores queued publishes, a batch per JetStream publish, until the queue is empty.
    async fn drain(&self, ch: &Channel) {
        let slot = ch.state::<ClusterChannel>();
        // Whether the last batch left publishes behind (it was full): they go at once.
        let mut backlog = false;
        loop {
            if slot.pending.lock().expect("pending lock").is_empty() {
                return;
            }
            // A channel published to faster than one store per interval is stored once per
            // interval, what arrived meanwhile as one batch: each store costs NATS and every
            // subscribed node a message, whatever it holds. Slower channels never wait, and
            // neither does a backlog of more than a batch.
            let last = *slot.last_store.lock().expect("last store lock");
            if let Some(next) = last.map(|t| t + self.settings.store_interval)
                && !backlog
                && next > Instant::now()
            {
                tokio::time::sleep_until(next.into()).await;
            }
            // The head is taken per batch: a publish with an idempotency key waiting for it
            // gets its turn between batches (tokio's mutex is fair).
            let mut head = slot.head.lock().await;
            let batch;
            // Read once per batch: the server's whole `ServerInfo` is cloned to get it.
            let max_payload = self.max_payload();
            (batch, backlog) = take_batch(&slot.pending, max_payload / 2);
            if batch.is_empty() {
                return;
            }
            let (items, waiters): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| ((p.data, p.event), p.done)).unzip();
            // Checked per batch, like a single publish: nothing is handed to a disconnected
            // client, which would send it (and have it stored) after reconnecting.
            *slot.last_store.lock().expect("last store lock") = Some(Instant::now());
            let stored = match self.health() {
                Ok(()) => self.store(ch, &mut head, items, None, max_payload).await,
                Err(why) => Err(Error::ClusterUnavailable(why)),
            };
            drop(head);
            match stored {
                Ok(outcomes) => {
                    for (waiter, outcome) in waiters.into_iter().zip(outcomes) {
                        let _ = waiter.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    for waiter in waiters {
                        let copy = match &e {
                            Error::MessageTooLarge { limit } => Error::MessageTooLarge { limit: *limit },
                            Error::ClusterUnavailable(why) => Error::ClusterUnavailable(why.clone()),
                            other => Error::ClusterUnavailable(format!("{other:?}")),
                        };
                        let _ = waiter.send(Err(copy));
                    }
                }
            }
        }
    }

    /// The largest message the NATS server accepts (`max_payload`).
    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload.max(64 * 1024)
    }

    /// Stores `items` as one message at the channel's next positions (one JetStream publish
    /// with compare-and-set on the subject's last sequence, retried when another node got
    /// there first); `max_payload` is the NATS server's ([`Self::max_payload`]).
    async fn store(
        &self,
        ch: &Channel,
        head: &mut Option<StreamHead>,
        items: Vec<(Box<RawValue>, Option<String>)>,
        idempotency_key: Option<&str>,
        max_payload: usize,
    ) -> Result<Vec<PublishOutcome>, Error> {
        let subject = history_subject(&ch.tenant, &ch.name);
        let ttl = ttl_of(&ch.options());
        if head.is_none() {
            *head = Some(self.head(&subject).await?);
        }
        let count = items.len() as u64;
        // The frames' size, give or take their positions and ids: one buffer holds the batch.
        let estimate: usize = items.iter().map(|(data, _)| data.get().len() + 192).sum();
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            let current = head.clone().expect("head loaded");
            let message_ttl = next_ttl(ttl, &current);
            let (first, epoch) = if current.seq == 0 {
                (1, new_epoch())
            } else {
                (current.position + 1, current.epoch.clone())
            };
            let last = first + count - 1;
            let timestamp_ms = chrono::Utc::now().timestamp_millis();
            let mut outcomes = Vec::with_capacity(items.len());
            let mut payload = Payload::new(items.len(), estimate);
            for (i, (data, event)) in items.iter().enumerate() {
                let position = first + i as u64;
                let id = uuid::Uuid::now_v7().simple().to_string();
                payload.push(|out| {
                    Publication::encode_into(
                        out,
                        &ch.name,
                        position,
                        &epoch,
                        &id,
                        timestamp_ms,
                        event.as_deref(),
                        data,
                    )
                });
                outcomes.push(PublishOutcome {
                    position,
                    epoch: epoch.clone(),
                    id,
                    timestamp_ms,
                    duplicate: false,
                });
            }
            let (payload, sizes) = payload.finish();
            // NATS closes the whole connection of a client that sends more than its
            // `max_payload`: refuse here instead (headers take well under 1 KiB).
            if payload.len() + 1024 > max_payload {
                return Err(Error::MessageTooLarge { limit: (max_payload - 2048) as u64 });
            }
            let mut message = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .header(HEADER_POSITION, last.to_string().as_str())
                .header(HEADER_EPOCH, &*epoch)
                .header(HEADER_PREVIOUS, current.seq.to_string().as_str())
                .header(HEADER_TS, timestamp_ms.to_string().as_str())
                .header("Nats-TTL", format!("{message_ttl}s").as_str())
                .expected_last_subject_sequence(current.seq);
            if let Some(sizes) = &sizes {
                message = message
                    .header(HEADER_COUNT, count.to_string().as_str())
                    .header(HEADER_SIZES, sizes.as_str());
            }
            if let Some(key) = idempotency_key {
                message = message.message_id(format!("{}/{}/{key}", ch.tenant, ch.name));
            }
            let started = Instant::now();
            let ack = self.js.send_publish(subject.clone(), message).await.map_err(Self::unavailable)?.await;
            herald_core::metrics::metrics().jetstream_publish.observe(started.elapsed().as_secs_f64());
            match ack {
                Ok(ack) if ack.duplicate => {
                    // The first publish with this key is stored: answer with its outcome. If it
                    // has left the stream since (expired, trimmed), only the fact is known.
                    let first = self
                        .message(ack.sequence)
                        .await?
                        .and_then(|m| {
                            let stored = Stored::read(Some(&m.headers))?;
                            publications(&ch.name, &stored, m.payload, ttl)
                        })
                        .and_then(|mut stored| stored.pop())
                        .and_then(|p| Some((p.fields().ok()?.id.into_owned(), p)));
                    return Ok(vec![match first {
                        Some((id, first)) => PublishOutcome {
                            position: first.position,
                            epoch: first.epoch.clone(),
                            id,
                            timestamp_ms: first.timestamp_ms,
                            duplicate: true,
                        },
                        None => PublishOutcome {
                            position: 0,
                            epoch: Arc::from(""),
                            id: String::new(),
                            timestamp_ms: 0,
                            duplicate: true,
                        },
                    }]);
                }
                Ok(ack) => {
                    *head = Some(StreamHead {
                        seq: ack.sequence,
                        position: last,
                        epoch,
                        ttl_seconds: message_ttl,
                        seen: Some(Instant::now()),
                    });
                    return Ok(outcomes);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    *head = Some(self.head(&subject).await?);
                }
                Err(e) => {
                    // Unknown state: reload the head before the next publish.
                    *head = None;
                    return Err(Self::unavailable(e));
                }
            }
        }
        Err(Error::ClusterUnavailable("too many concurrent publishers on this channel; retry".into()))
    }

    /// Sends a join/leave frame to the channel's subscribers on every node (not stored).
    pub(crate) async fn publish_event(
        &self,
        ch: &Channel,
        frame: Utf8Bytes,
        except: Option<herald_core::ConnId>,
    ) -> Result<(), Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_EVENT, "1");
        if let Some(conn) = except {
            headers.insert(HEADER_ORIGIN, format!("{}/{}", self.node_id, conn.0).as_str());
        }
        self.client
            .publish_with_headers(feed_subject(&ch.tenant, &ch.name), headers, Bytes::from(frame))
            .await
            .map_err(Self::unavailable)
    }

    /// Walks a channel's stored messages backwards from sequence `from_seq` and collects
    /// positions `after + 1 ..= upto` of `epoch`, oldest first. Returns them with whether the
    /// run is complete; when some expired or were trimmed, the newest part that is still
    /// stored comes back with `false`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn read_back(
        &self,
        channel: &Arc<str>,
        subject: &str,
        from_seq: u64,
        epoch: &str,
        after: u64,
        upto: u64,
        ttl: Duration,
    ) -> Result<(Vec<Arc<Publication>>, bool), Error> {
        let mut out = Vec::with_capacity(upto.saturating_sub(after).min(1024) as usize);
        let mut seq = from_seq;
        let complete = loop {
            if seq == 0 {
                break false;
            }
            let Some(msg) = self.message(seq).await? else { break false };
            // After the stream was re-created a stale sequence may name another subject.
            if msg.subject.as_str() != subject {
                break false;
            }
            let Some(stored) = Stored::read(Some(&msg.headers)) else { break false };
            if stored.epoch != epoch || stored.last <= after {
                break false;
            }
            if stored.first() <= upto {
                let Some(found) = publications(channel, &stored, msg.payload, ttl) else { break false };
                out.extend(found.into_iter().rev().filter(|p| p.position > after && p.position <= upto));
            }
            if stored.first() <= after + 1 {
                break true;
            }
            seq = stored.previous;
        };
        out.reverse();
        Ok((out, complete))
    }

    /// History of a channel from the stream (the REST API and the `history` command).
    pub(crate) async fn stream_history(
        &self,
        ch: &Channel,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<HistorySlice, Error> {
        let options = ch.options();
        let ttl = ttl_of(&options);
        let subject = history_subject(&ch.tenant, &ch.name);
        let head = self.head(&subject).await?;
        let size = u64::from(options.history_size);
        let slice = |publications, complete| HistorySlice {
            publications,
            epoch: head.epoch.clone(),
            position: head.position,
            complete,
        };
        match since {
            Some(since) => {
                match since.missed_in(&head.epoch, head.position, options.history_size) {
                    None => return Ok(slice(Vec::new(), false)),
                    Some(0) => return Ok(slice(Vec::new(), true)),
                    Some(_) => {}
                }
                let upto = head.position.min(since.position + limit as u64);
                match self
                    .read_back(&ch.name, &subject, head.seq, &head.epoch, since.position, upto, ttl)
                    .await?
                {
                    (found, true) => Ok(slice(page_by_bytes(found, true), true)),
                    (_, false) => Ok(slice(Vec::new(), false)),
                }
            }
            None => {
                // The newest messages still stored, oldest first.
                let n = size.min(limit as u64).min(head.position);
                let (found, _) = self
                    .read_back(
                        &ch.name,
                        &subject,
                        head.seq,
                        &head.epoch,
                        head.position - n,
                        head.position,
                        ttl,
                    )
                    .await?;
                Ok(slice(page_by_bytes(found, false), true))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, *value);
        }
        if !pairs.iter().any(|(name, _)| *name == HEADER_PREVIOUS) {
            headers.insert(HEADER_PREVIOUS, "4");
        }
        headers
    }

    /// What a reader makes of a stored message.
    fn read(
        channel: &Arc<str>,
        headers: &async_nats::HeaderMap,
        payload: Bytes,
        ttl: Duration,
    ) -> Option<Vec<Arc<Publication>>> {
        publications(channel, &Stored::read(Some(headers))?, payload, ttl)
    }

    #[test]
    fn which_positions_a_stored_message_holds_is_read_from_its_headers() {
        // Last, count, first, epoch, previous sequence and whether it is a marker.
        let read = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            Stored::read(Some(&h))
                .map(|s| (s.last, s.count, s.first(), s.epoch.to_owned(), s.previous, s.is_marker()))
        };
        let e1 = || "e1".to_owned();
        let marker = [(HEADER_POSITION, "0"), (HEADER_EPOCH, "e1"), (HEADER_PREVIOUS, "0")];
        assert_eq!(read(&marker), Some((0, 0, 1, e1(), 0, true)));
        let h = headers(&marker);
        let stored = Stored::read(Some(&h)).unwrap();
        let channel: Arc<str> = Arc::from("room");
        assert_eq!(
            publications(&channel, &stored, Bytes::new(), Duration::from_secs(1)).map(|p| p.len()),
            Some(0)
        );
        assert_eq!(read(&[(HEADER_POSITION, "9"), (HEADER_EPOCH, "e1")]), Some((9, 1, 9, e1(), 4, false)));
        assert_eq!(
            read(&[(HEADER_POSITION, "7"), (HEADER_EPOCH, "e1"), (HEADER_COUNT, "3")]),
            Some((7, 3, 5, e1(), 4, false))
        );
        assert_eq!(
            read(&[(HEADER_POSITION, "7"), (HEADER_EPOCH, "e1"), (HEADER_COUNT, "7")]),
            Some((7, 7, 1, e1(), 4, false))
        );
        // A count that would start before position 1, or that is no count, is refused, as is a
        // message without its epoch or a readable time.
        for bad in [
            vec![(HEADER_POSITION, "7"), (HEADER_EPOCH, "e1"), (HEADER_COUNT, "8")],
            vec![(HEADER_POSITION, "7"), (HEADER_EPOCH, "e1"), (HEADER_COUNT, "0")],
            vec![(HEADER_POSITION, "7"), (HEADER_EPOCH, "e1"), (HEADER_COUNT, "x")],
            vec![(HEADER_POSITION, "x"), (HEADER_EPOCH, "e1")],
            vec![(HEADER_POSITION, "7")],
            vec![(HEADER_POSITION, "7"), (HEADER_EPOCH, "e1"), (HEADER_TS, "soon")],
        ] {
            assert_eq!(read(&bad), None, "{bad:?}");
        }
        // Nor without the sequence of the message before it.
        let mut no_previous = async_nats::HeaderMap::new();
        no_previous.insert(HEADER_POSITION, "7");
        no_previous.insert(HEADER_EPOCH, "e1");
        assert_eq!(Stored::read(Some(&no_previous)), None);
    }

    fn frame(position: u64, data: &str) -> String {
        let data = RawValue::from_string(data.into()).unwrap();
        Publication::encode("room", position, "e1", &format!("id{position}"), 1_000, Some("ev"), &data)
    }

    /// What a reader sees of each publication.
    fn seen(stored: &[Arc<Publication>]) -> Vec<(u64, String, i64, String)> {
        stored
            .iter()
            .map(|p| (p.position, p.epoch.to_string(), p.timestamp_ms, p.frame.to_string()))
            .collect()
    }

    #[test]
    fn a_batch_is_read_from_its_headers_as_it_would_be_parsed() {
        // Data with the characters that end a frame, inside strings and as whitespace.
        let frames = [frame(5, r#"{"a": "],[\"x\"]"}"#), frame(6, "[1,\n 2]"), frame(7, r#""é""#)];
        // Written as a store writes it.
        let mut written = Payload::new(frames.len(), 0);
        for f in &frames {
            written.push(|out| out.extend_from_slice(f.as_bytes()));
        }
        let (payload, sizes) = written.finish();
        let (payload, sizes) = (Bytes::from(payload), sizes.expect("a batch has sizes"));
        assert_eq!(payload, format!("[{}]", frames.join(",")).as_bytes(), "a JSON array of the frames");
        let channel: Arc<str> = Arc::from("room");
        let ttl = Duration::from_secs(60);
        let old = headers(&[(HEADER_POSITION, "7"), (HEADER_EPOCH, "e1"), (HEADER_COUNT, "3")]);
        let new = headers(&[
            (HEADER_POSITION, "7"),
            (HEADER_EPOCH, "e1"),
            (HEADER_COUNT, "3"),
            (HEADER_TS, "1000"),
            (HEADER_SIZES, &sizes),
        ]);
        let parsed = read(&channel, &old, payload.clone(), ttl).expect("parsed");
        let sliced = read(&channel, &new, payload, ttl).expect("sliced");
        assert_eq!(seen(&sliced), seen(&parsed));
        assert_eq!(seen(&sliced).iter().map(|s| s.0).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert_eq!(sliced[1].frame.as_str(), frames[1]);
        assert_eq!(sliced[0].fields().unwrap().data.get(), r#"{"a": "],[\"x\"]"}"#);
    }

    #[test]
    fn a_single_frame_is_read_from_its_headers_as_it_would_be_parsed() {
        let mut written = Payload::new(1, 0);
        written.push(|out| out.extend_from_slice(frame(9, "{}").as_bytes()));
        let (payload, sizes) = written.finish();
        assert_eq!(sizes, None, "one frame carries no sizes");
        let payload = Bytes::from(payload);
        assert_eq!(payload, frame(9, "{}").as_bytes(), "one frame is stored as it is");
        let channel: Arc<str> = Arc::from("room");
        let ttl = Duration::from_secs(60);
        let old = headers(&[(HEADER_POSITION, "9"), (HEADER_EPOCH, "e1")]);
        let new = headers(&[(HEADER_POSITION, "9"), (HEADER_EPOCH, "e1"), (HEADER_TS, "1000")]);
        let parsed = read(&channel, &old, payload.clone(), ttl).expect("parsed");
        let sliced = read(&channel, &new, payload, ttl).expect("sliced");
        assert_eq!(seen(&sliced), seen(&parsed));
        assert_eq!(sliced.len(), 1);
    }

    #[test]
    fn sizes_that_do_not_match_the_payload_are_refused() {
        let frames = [frame(1, "1"), frame(2, "2")];
        let payload = Bytes::from(format!("[{}]", frames.join(",")));
        let (a, b) = (frames[0].len(), frames[1].len());
        let channel: Arc<str> = Arc::from("room");
        for sizes in [
            format!("{},{}", a - 1, b + 1),
            format!("{a}"),
            format!("{a},{b},0"),
            format!("{a},{}", b - 1),
            format!("{a},{}", usize::MAX),
            format!("{a},x"),
            format!("0,{}", a + b + 1),
        ] {
            let h = headers(&[
                (HEADER_POSITION, "2"),
                (HEADER_EPOCH, "e1"),
                (HEADER_COUNT, "2"),
                (HEADER_TS, "1000"),
                (HEADER_SIZES, &sizes),
            ]);
            assert!(read(&channel, &h, payload.clone(), Duration::from_secs(60)).is_none(), "{sizes}");
        }
        // A count larger than the position would start before position 1.
        let h =
            headers(&[(HEADER_POSITION, "1"), (HEADER_EPOCH, "e1"), (HEADER_COUNT, "2"), (HEADER_TS, "1")]);
        assert!(read(&channel, &h, payload, Duration::from_secs(60)).is_none());
    }

    #[test]
    fn names_become_subject_tokens_and_back() {
        let name = "chat:room.1*x é_-";
        assert_eq!(token(name), "chat=3Aroom=2E1=2Ax=20=C3=A9_-");
        assert_eq!(untoken(&token(name)).as_deref(), Some(name));
    }

    #[test]
    fn a_stored_message_is_aged_by_its_time_in_the_stream() {
        let channel: Arc<str> = Arc::from("room");
        let ts = (chrono::Utc::now().timestamp_millis() - 40_000).to_string();
        let h = headers(&[(HEADER_POSITION, "1"), (HEADER_EPOCH, "e1"), (HEADER_TS, &ts)]);
        let stored = read(&channel, &h, Bytes::from(frame(1, "{}")), Duration::from_secs(60)).unwrap();
        let left = stored[0].expires_at.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_secs(15) && left <= Duration::from_secs(20), "{left:?}");
    }
}
