//! A published message, serialised once per node: every local subscriber is handed the same
//! `Arc<Publication>` and every WebSocket writes the same `frame` bytes.
//!
//! The message's id, event name and data live only in the frame: what a node keeps per message
//! (history, queues) is the frame and the few fields delivery needs, and a node that receives
//! a stored message from the cluster does not parse it ([`Publication::fields`] reads the rest
//! when the REST history asks for it).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::ServerFrame;

#[derive(Debug)]
pub struct Publication {
    pub channel: Arc<str>,
    /// Strictly increasing within the channel's epoch, starting at 1.
    pub position: u64,
    pub epoch: Arc<str>,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The `pub` push frame, shared by all subscribers.
    pub frame: Utf8Bytes,
    /// When the message leaves history (monotonic clock).
    pub expires_at: Instant,
}

/// The parts of a publication that only its frame holds, borrowed from it.
#[derive(Debug, serde::Deserialize)]
pub struct PublicationFields<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

impl Publication {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channel: Arc<str>,
        position: u64,
        epoch: Arc<str>,
        id: &str,
        timestamp_ms: i64,
        event: Option<&str>,
        data: &RawValue,
        expires_at: Instant,
    ) -> Publication {
        let frame = Utf8Bytes::from(Self::encode(&channel, position, &epoch, id, timestamp_ms, event, data));
        Publication { channel, position, epoch, timestamp_ms, frame, expires_at }
    }

    /// The `pub` frame of a publication.
    pub fn encode(
        channel: &str,
        position: u64,
        epoch: &str,
        id: &str,
        timestamp_ms: i64,
        event: Option<&str>,
        data: &RawValue,
    ) -> String {
        let wire = ServerFrame::Pub { channel, position, epoch, id, ts: timestamp_ms, event, data };
        serde_json::to_string(&wire).expect("publication serialises")
    }

    /// [`Self::encode`] appended to `out` (a stored batch is built in one buffer).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_into(
        out: &mut Vec<u8>,
        channel: &str,
        position: u64,
        epoch: &str,
        id: &str,
        timestamp_ms: i64,
        event: Option<&str>,
        data: &RawValue,
    ) {
        let wire = ServerFrame::Pub { channel, position, epoch, id, ts: timestamp_ms, event, data };
        serde_json::to_writer(out, &wire).expect("publication serialises");
    }

    /// Rebuilds a publication of `channel` by parsing its `pub` frame (cluster mode, for a
    /// stored message that does not say where its frames start and what they hold).
    pub fn from_frame(
        channel: Arc<str>,
        frame: Utf8Bytes,
        expires_at: Instant,
    ) -> Result<Publication, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            position: u64,
            #[serde(borrow)]
            epoch: Cow<'a, str>,
            ts: i64,
        }
        let wire: Wire = serde_json::from_str(frame.as_str())?;
        let (position, epoch, timestamp_ms) = (wire.position, Arc::from(&*wire.epoch), wire.ts);
        Ok(Publication { channel, position, epoch, timestamp_ms, frame, expires_at })
    }

    /// The id, event name and data, read from the frame.
    pub fn fields(&self) -> Result<PublicationFields<'_>, serde_json::Error> {
        serde_json::from_str(self.frame.as_str())
    }

    /// Size counted against per-connection queue limits.
    pub fn weight(&self) -> usize {
        self.frame.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_come_back_from_the_frame() {
        let data = RawValue::from_string(r#"{"text": "a \"quoted\" line\n"}"#.into()).unwrap();
        let p = Publication::new(
            "c".into(),
            7,
            "e1".into(),
            "id-1",
            1_700,
            Some("chat\n"),
            &data,
            Instant::now(),
        );
        let fields = p.fields().unwrap();
        assert_eq!(fields.id, "id-1");
        assert_eq!(fields.event.as_deref(), Some("chat\n"));
        assert_eq!(fields.data.get(), data.get());
        let none = Publication::new("c".into(), 8, "e1".into(), "id-2", 1_701, None, &data, Instant::now());
        assert_eq!(none.fields().unwrap().event, None);
        let parsed = Publication::from_frame("c".into(), p.frame.clone(), Instant::now()).unwrap();
        assert_eq!((parsed.position, &*parsed.epoch, parsed.timestamp_ms), (7, "e1", 1_700));
    }
}
