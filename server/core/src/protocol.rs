//! The client protocol's JSON frames (`docs/protocol.md`). Commands are parsed with borrowed,
//! all-optional fields and checked per command, so errors name the missing or wrong field and
//! `data` stays raw JSON that is never re-encoded.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::channel::StreamPosition;

/// A resume point sent by a client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub position: u64,
    pub epoch: String,
}

impl From<Since> for StreamPosition {
    fn from(s: Since) -> Self {
        StreamPosition { position: s.position, epoch: s.epoch }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    token: Option<String>,
    channel: Option<String>,
    since: Option<Since>,
    /// `null` is data like any other JSON value; only a missing field is missing.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    event: Option<String>,
    idempotency_key: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug)]
pub enum Command {
    Connect { token: String },
    Subscribe { channel: String, since: Option<Since> },
    Unsubscribe { channel: String },
    Publish { channel: String, data: Box<RawValue>, event: Option<String>, idempotency_key: Option<String> },
    History { channel: String, since: Option<Since>, limit: Option<u32> },
    Presence { channel: String },
    Refresh { token: String },
    Ping,
}

/// A parsed frame: the client's correlation id (any JSON scalar, echoed verbatim) and the
/// command.
#[derive(Debug)]
pub struct Request {
    pub id: Option<Box<RawValue>>,
    pub command: Command,
}

/// A frame that could not be parsed; `id` is kept when it could be read.
#[derive(Debug)]
pub struct BadFrame {
    pub id: Option<Box<RawValue>>,
    pub message: String,
}

/// A field that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn need<T>(value: Option<T>, field: &str, kind: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("`{kind}` needs field `{field}`"))
}

pub fn parse(text: &str) -> Result<Request, BadFrame> {
    let raw: RawCommand =
        serde_json::from_str(text).map_err(|e| BadFrame { id: None, message: e.to_string() })?;
    let id = match raw.id {
        Some(id) if !id.get().starts_with(|c: char| c == '"' || c == '-' || c.is_ascii_digit()) => {
            return Err(BadFrame { id: None, message: "`id` must be a string or a number".into() });
        }
        other => other.map(|v| v.to_owned()),
    };
    let kind = raw.kind;
    let command = (|| -> Result<Command, String> {
        Ok(match kind {
            "connect" => Command::Connect { token: need(raw.token, "token", kind)? },
            "subscribe" => {
                Command::Subscribe { channel: need(raw.channel, "channel", kind)?, since: raw.since }
            }
            "unsubscribe" => Command::Unsubscribe { channel: need(raw.channel, "channel", kind)? },
            "publish" => Command::Publish {
                channel: need(raw.channel, "channel", kind)?,
                data: need(raw.data, "data", kind)?.to_owned(),
                event: raw.event,
                idempotency_key: raw.idempotency_key,
            },
            "history" => Command::History {
                channel: need(raw.channel, "channel", kind)?,
                since: raw.since,
                limit: raw.limit,
            },
            "presence" => Command::Presence { channel: need(raw.channel, "channel", kind)? },
            "refresh" => Command::Refresh { token: need(raw.token, "token", kind)? },
            "ping" => Command::Ping,
            other => return Err(format!("unknown command type `{other}`")),
        })
    })();
    match command {
        Ok(command) => Ok(Request { id, command }),
        Err(message) => Err(BadFrame { id, message }),
    }
}

/// Serialises a server frame.
pub fn frame(value: &ServerFrame<'_>) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(value).expect("frames serialise"))
}

/// Every frame the server sends, tagged by `type` as `docs/protocol.md` lists them. `id` is the
/// command's correlation id, echoed verbatim when it had one.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// A channel message (see [`crate::publication::Publication`], which encodes it once).
    Pub {
        channel: &'a str,
        position: u64,
        epoch: &'a str,
        id: &'a str,
        ts: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
        data: &'a RawValue,
    },
    Connected {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        client: String,
        user: &'a str,
        node: &'a str,
        ping_interval_ms: u64,
        expires_at: i64,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        channel: &'a str,
        epoch: &'a str,
        position: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        channel: &'a str,
    },
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        channel: &'a str,
        position: u64,
        epoch: &'a str,
        message_id: &'a str,
        ts: i64,
        duplicate: bool,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        channel: &'a str,
        epoch: &'a str,
        position: u64,
        /// False when the requested position is older than the history kept (or of another
        /// epoch).
        complete: bool,
        /// Each exactly a `pub` frame.
        publications: Vec<&'a RawValue>,
    },
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        channel: &'a str,
        clients: Vec<PresenceEntry<'a>>,
    },
    /// A message sent to every connection of one user (not through a channel, not in history).
    Message {
        id: &'a str,
        ts: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
        data: &'a RawValue,
    },
    Join {
        channel: &'a str,
        client: String,
        user: &'a str,
    },
    Leave {
        channel: &'a str,
        client: String,
        user: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        expires_at: i64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        /// The request field at fault, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
}

impl ServerFrame<'_> {
    /// An `error` frame for a refused command.
    pub fn error<'a>(
        id: Option<&'a RawValue>,
        channel: Option<&'a str>,
        code: &'a str,
        message: &'a str,
    ) -> ServerFrame<'a> {
        ServerFrame::Error { id, code, message, channel, field: None, limit: None }
    }
}

#[derive(Serialize)]
pub struct PresenceEntry<'a> {
    pub client: &'a str,
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_by_type() {
        let id = RawValue::from_string("7".into()).unwrap();
        let f = frame(&ServerFrame::Pong { id: Some(&id) });
        assert_eq!(f.as_str(), r#"{"type":"pong","id":7}"#);
        let f = frame(&ServerFrame::Refreshed { id: None, expires_at: 5 });
        assert_eq!(f.as_str(), r#"{"type":"refreshed","expires_at":5}"#);
        let f = frame(&ServerFrame::Leave { channel: "c", client: "c1".into(), user: "u" });
        assert_eq!(f.as_str(), r#"{"type":"leave","channel":"c","client":"c1","user":"u"}"#);
    }

    #[test]
    fn parses_commands_and_keeps_data_raw() {
        let r = parse(r#"{"type":"publish","id":7,"channel":"c","data":{"a": [1, 2]}}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "7");
        match r.command {
            Command::Publish { channel, data, .. } => {
                assert_eq!(channel, "c");
                assert_eq!(data.get(), r#"{"a": [1, 2]}"#);
            }
            other => panic!("{other:?}"),
        }
        let r = parse(r#"{"type":"subscribe","id":"s1","channel":"c","since":{"position":3,"epoch":"e"}}"#)
            .unwrap();
        assert!(matches!(r.command, Command::Subscribe { since: Some(Since { position: 3, .. }), .. }));
        // `null` is data; a missing `data` is not.
        let r = parse(r#"{"type":"publish","channel":"c","data":null}"#).unwrap();
        assert!(matches!(r.command, Command::Publish { data, .. } if data.get() == "null"));
        assert!(parse(r#"{"type":"publish","channel":"c"}"#).unwrap_err().message.contains("data"));
    }

    #[test]
    fn bad_frames_say_why_and_keep_the_id() {
        assert!(parse(r#"{"type":"ping","id":true}"#).is_err());
        let e = parse(r#"{"type":"subscribe","id":1}"#).unwrap_err();
        assert_eq!(e.id.unwrap().get(), "1");
        assert!(e.message.contains("channel"), "{}", e.message);
        assert!(parse(r#"{"type":"fly"}"#).unwrap_err().message.contains("fly"));
        assert!(parse(r#"{"type":"ping","extra":1}"#).unwrap_err().message.contains("extra"));
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"type":"ping","id":{"x":1}}"#).is_err());
    }
}
