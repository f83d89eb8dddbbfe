//! The webhook delivery queue in cluster mode: a JetStream work-queue stream
//! (`HERALD_HOOK_QUEUE`) with one durable pull consumer (`dispatch`) that every node pulls
//! from, so each message goes to one node at a time.
//!
//! A message is the id of a delivery already stored in the database. The node that pulls it
//! claims the delivery there, sends it, and then acknowledges the message (done) or NAKs it with
//! the delay until the next attempt (a retry, a breaker or a cap holding it back). A node that
//! dies holding a message neither acknowledges nor NAKs it: JetStream hands it to another node
//! once `ack_wait` (longer than the database claim's lease) runs out.
//!
//! The stream holds at most [`MAX_QUEUED`] messages and refuses more (a push that fails leaves
//! the delivery in the database, where the node's overdue sweep finds it).

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::pull;
use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::hooks::{Job, Ticket, WorkQueue};

const STREAM: &str = "HERALD_HOOK_QUEUE";
const SUBJECT: &str = "herald.hookq";
const CONSUMER: &str = "dispatch";
/// The most messages the queue holds (the per-tenant caps on queued deliveries bound it far
/// below this in practice; messages NAKed for a later retry count too).
pub const MAX_QUEUED: i64 = 1_000_000;

pub(crate) struct HookQueue {
    js: jetstream::Context,
    replicas: usize,
    ack_wait: Duration,
    consumer: tokio::sync::Mutex<Option<pull::Stream>>,
}

impl HookQueue {
    pub(crate) async fn open(
        js: jetstream::Context,
        replicas: usize,
        ack_wait: Duration,
    ) -> Result<HookQueue, async_nats::Error> {
        let queue = HookQueue { js, replicas, ack_wait, consumer: tokio::sync::Mutex::new(None) };
        queue.ensure().await?;
        Ok(queue)
    }

    /// Creates (or updates) the stream and the consumer.
    async fn ensure(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
        self.js
            .create_or_update_stream(jetstream::stream::Config {
                name: STREAM.into(),
                description: Some(
                    "Herald webhook deliveries to attempt (ids; bodies are in the database)".into(),
                ),
                subjects: vec![SUBJECT.into()],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                discard: jetstream::stream::DiscardPolicy::New,
                max_messages: MAX_QUEUED,
                max_message_size: 256,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await?;
        Ok(self
            .js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    description: Some("every Herald node pulls webhook deliveries here".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: -1,
                    // Messages NAKed for a later retry stay pending: the stream's size bounds them.
                    max_ack_pending: -1,
                    ..Default::default()
                },
                STREAM,
            )
            .await?)
    }
}

struct Message(jetstream::Message);

#[async_trait]
impl Ticket for Message {
    async fn done(self: Box<Self>) {
        if let Err(e) = self.0.ack().await {
            tracing::debug!(error = %e, "cannot acknowledge a webhook queue message");
        }
    }

    async fn later(self: Box<Self>, delay: Duration) {
        if let Err(e) = self.0.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::debug!(error = %e, "cannot postpone a webhook queue message");
        }
    }
}

#[async_trait]
impl WorkQueue for HookQueue {
    async fn push(&self, ids: &[String]) -> Result<(), String> {
        let mut acks = Vec::with_capacity(ids.len());
        for id in ids {
            let ack =
                self.js.publish(SUBJECT, bytes::Bytes::from(id.clone())).await.map_err(|e| e.to_string())?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Job>, String> {
        let mut slot = self.consumer.lock().await;
        if slot.is_none() {
            let consumer = self.ensure().await.map_err(|e| e.to_string())?;
            // A continuous pull: the client keeps requests outstanding, so a pushed id reaches
            // an idle node at once.
            let messages = consumer
                .stream()
                .max_messages_per_batch(64)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            *slot = Some(messages);
        }
        let messages = slot.as_mut().expect("set above");
        let mut jobs = Vec::new();
        let first = tokio::time::timeout(wait, messages.next()).await;
        let mut next = match first {
            Err(_) => return Ok(jobs),
            Ok(next) => next,
        };
        loop {
            match next {
                Some(Ok(message)) => {
                    let delivery = String::from_utf8_lossy(&message.payload).into_owned();
                    jobs.push(Job { delivery, ticket: Box::new(Message(message)) });
                }
                Some(Err(e)) => {
                    // The consumer or stream went away (a NATS server that lost its storage):
                    // set it up again on the next pull.
                    *slot = None;
                    if jobs.is_empty() {
                        return Err(e.to_string());
                    }
                    return Ok(jobs);
                }
                None => {
                    *slot = None;
                    return Ok(jobs);
                }
            }
            if jobs.len() >= max {
                return Ok(jobs);
            }
            // Whatever else is already here, without waiting.
            match tokio::time::timeout(Duration::ZERO, messages.next()).await {
                Ok(more) => next = more,
                Err(_) => return Ok(jobs),
            }
        }
    }
}
