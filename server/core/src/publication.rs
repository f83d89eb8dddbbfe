//! A published message, serialised once per node: every local subscriber is handed the same
//! `Arc<Publication>` and every WebSocket writes the same `frame` bytes.

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
    pub id: String,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub event: Option<String>,
    pub data: Box<RawValue>,
    /// The `pub` push frame, shared by all subscribers.
    pub frame: Utf8Bytes,
    /// When the message leaves history (monotonic clock).
    pub expires_at: Instant,
}

impl Publication {
    pub fn new(
        channel: Arc<str>,
        position: u64,
        epoch: Arc<str>,
        id: String,
        timestamp_ms: i64,
        event: Option<String>,
        data: Box<RawValue>,
        expires_at: Instant,
    ) -> Publication {
        let frame = Utf8Bytes::from(Self::encode(
            &channel,
            position,
            &epoch,
            &id,
            timestamp_ms,
            event.as_deref(),
            &data,
        ));
        Publication { channel, position, epoch, id, timestamp_ms, event, data, frame, expires_at }
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

    /// Rebuilds a publication from its `pub` frame (cluster mode: frames arrive serialised).
    pub fn from_frame(frame: Utf8Bytes, expires_at: Instant) -> Result<Publication, serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Wire {
            channel: String,
            position: u64,
            epoch: String,
            id: String,
            ts: i64,
            #[serde(default)]
            event: Option<String>,
            data: Box<RawValue>,
        }
        let wire: Wire = serde_json::from_str(frame.as_str())?;
        Ok(Publication {
            channel: Arc::from(wire.channel),
            position: wire.position,
            epoch: Arc::from(wire.epoch),
            id: wire.id,
            timestamp_ms: wire.ts,
            event: wire.event,
            data: wire.data,
            frame,
            expires_at,
        })
    }

    /// Size counted against per-connection queue limits.
    pub fn weight(&self) -> usize {
        self.frame.len()
    }
}
