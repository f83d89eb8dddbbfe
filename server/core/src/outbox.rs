//! The bounded queue between the delivery core and one connection's writer. Publishers push
//! without waiting; a connection whose queue passes its limits is closed as a slow consumer
//! instead of growing memory. An idle outbox holds no allocation beyond the struct itself: a
//! drain hands the queue's buffer to the writer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::disconnect::Disconnect;
use crate::publication::Publication;

#[derive(Debug, Clone)]
pub enum Outgoing {
    Publication(Arc<Publication>),
    /// A reply or event frame, already serialised.
    Frame(Utf8Bytes),
}

impl Outgoing {
    fn weight(&self) -> usize {
        match self {
            Outgoing::Publication(p) => p.weight(),
            Outgoing::Frame(f) => f.len(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    closed: Option<Disconnect>,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limits: OutboxLimits,
}

/// The queue was full (the outbox is now closed as a slow consumer) or already closed.
#[derive(Debug)]
pub struct Rejected;

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Outbox {
        Outbox { state: Mutex::new(State::default()), notify: Notify::new(), limits }
    }

    pub fn push(&self, item: Outgoing) -> Result<(), Rejected> {
        let mut state = self.state.lock().expect("outbox lock");
        if state.closed.is_some() {
            return Err(Rejected);
        }
        let weight = item.weight();
        if state.queue.len() >= self.limits.max_messages || state.bytes + weight > self.limits.max_bytes {
            state.closed = Some(Disconnect::SlowConsumer);
            state.queue = VecDeque::new();
            state.bytes = 0;
            drop(state);
            self.notify.notify_one();
            return Err(Rejected);
        }
        state.bytes += weight;
        state.queue.push_back(item);
        let first = state.queue.len() == 1;
        drop(state);
        // One wake-up per batch: later pushes find the writer already scheduled.
        if first {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Pushes several items atomically with respect to other pushers.
    pub fn push_all(&self, items: impl IntoIterator<Item = Outgoing>) -> Result<(), Rejected> {
        for item in items {
            self.push(item)?;
        }
        Ok(())
    }

    /// Closes the outbox; the writer sees `reason` next. The first reason wins.
    pub fn close(&self, reason: Disconnect) {
        let mut state = self.state.lock().expect("outbox lock");
        if state.closed.is_none() {
            state.closed = Some(reason);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Why the outbox was closed, if it was.
    pub fn close_reason(&self) -> Option<Disconnect> {
        self.state.lock().expect("outbox lock").closed.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().expect("outbox lock").closed.is_some()
    }

    /// Moves everything queued into `batch`; returns `Err` once the outbox is closed. A close
    /// for shutdown still delivers what was queued before it.
    ///
    /// The queue's buffer goes with its items: an empty `batch` is replaced by it (never
    /// reallocated; a queue that wrapped is moved within its buffer), so the outbox keeps no
    /// allocation once drained and the writer holds one only until it drops the batch.
    pub fn drain(&self, batch: &mut Vec<Outgoing>) -> Result<(), Disconnect> {
        let mut state = self.state.lock().expect("outbox lock");
        if let Some(reason) = state.closed.clone() {
            if reason.flushes_queue() && !state.queue.is_empty() {
                Self::hand_over(&mut state, batch);
                return Ok(());
            }
            return Err(reason);
        }
        Self::hand_over(&mut state, batch);
        Ok(())
    }

    fn hand_over(state: &mut State, batch: &mut Vec<Outgoing>) {
        let queue = std::mem::take(&mut state.queue);
        state.bytes = 0;
        if batch.is_empty() {
            *batch = Vec::from(queue);
        } else {
            batch.extend(queue);
        }
    }

    /// Waits until something is queued or the outbox is closed.
    pub async fn ready(&self) {
        loop {
            {
                let state = self.state.lock().expect("outbox lock");
                if !state.queue.is_empty() || state.closed.is_some() {
                    return;
                }
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Outgoing {
        Outgoing::Frame(Utf8Bytes::from(s.to_owned()))
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_frees_the_queue() {
        let outbox = Outbox::new(OutboxLimits { max_messages: 2, max_bytes: 1000 });
        outbox.push(frame("a")).unwrap();
        outbox.push(frame("b")).unwrap();
        assert!(outbox.push(frame("c")).is_err());
        let mut batch = Vec::new();
        assert_eq!(outbox.drain(&mut batch).unwrap_err(), Disconnect::SlowConsumer);
        assert!(batch.is_empty());
        assert!(outbox.push(frame("d")).is_err());
    }

    #[test]
    fn a_drained_outbox_keeps_no_buffer() {
        let outbox = Outbox::new(OutboxLimits { max_messages: 100, max_bytes: 1000 });
        outbox.push(frame("a")).unwrap();
        outbox.push(frame("b")).unwrap();
        let mut batch = Vec::new();
        outbox.drain(&mut batch).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(outbox.state.lock().unwrap().queue.capacity(), 0);
        // Items already in the batch stay ahead of the ones drained after them.
        outbox.push(frame("c")).unwrap();
        outbox.drain(&mut batch).unwrap();
        let texts: Vec<String> = batch
            .iter()
            .map(|o| match o {
                Outgoing::Frame(f) => f.as_str().to_owned(),
                Outgoing::Publication(_) => unreachable!(),
            })
            .collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert_eq!(outbox.state.lock().unwrap().queue.capacity(), 0);
    }

    #[test]
    fn byte_limit_counts_queued_bytes() {
        let outbox = Outbox::new(OutboxLimits { max_messages: 100, max_bytes: 5 });
        outbox.push(frame("abc")).unwrap();
        assert!(outbox.push(frame("abc")).is_err());
    }

    #[test]
    fn shutdown_delivers_what_was_queued_first() {
        let outbox = Outbox::new(OutboxLimits { max_messages: 10, max_bytes: 1000 });
        outbox.push(frame("a")).unwrap();
        outbox.close(Disconnect::ShuttingDown { retry_after_ms: 10 });
        let mut batch = Vec::new();
        outbox.drain(&mut batch).unwrap();
        assert_eq!(batch.len(), 1);
        assert!(matches!(outbox.drain(&mut batch), Err(Disconnect::ShuttingDown { .. })));
    }
}
