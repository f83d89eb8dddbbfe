//! WebSocket clients speaking Herald's JSON protocol: connect (with or without a token), send
//! commands and read replies, publications (`read_pubs`, `next_of_type`) and close codes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::process::Herald;

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking Herald's JSON protocol.
pub struct Ws {
    pub stream: WsStream,
}

/// How a connection ended: close code and reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl Herald {
    pub fn ws_url(&self, query: &str) -> String {
        format!("{}/v1/ws{}", self.base.replacen("http://", "ws://", 1), query)
    }

    /// Opens a WebSocket with the token in the URL and waits for `connected`.
    pub async fn ws(&self, token: &str) -> Ws {
        let mut ws = self.ws_raw(&format!("?token={token}")).await;
        let hello = ws.recv().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        ws
    }

    /// Opens a WebSocket without authenticating.
    pub async fn ws_raw(&self, query: &str) -> Ws {
        let (stream, _) =
            tokio_tungstenite::connect_async(self.ws_url(query)).await.expect("websocket connects");
        Ws { stream }
    }
}

pub const RECV_TIMEOUT: Duration = Duration::from_secs(15);

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.stream.send(Message::Text(frame.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, text: String) {
        self.stream.send(Message::Text(text.into())).await.expect("send");
    }

    /// The next JSON frame (pings are answered by the library and skipped).
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Ok(v) => v,
            Err(closed) => panic!("connection closed while waiting for a frame: {closed:?}"),
        }
    }

    /// The next frame, or how the connection closed.
    pub async fn next_event(&mut self) -> Result<Value, Closed> {
        loop {
            let msg = tokio::time::timeout(RECV_TIMEOUT, self.stream.next())
                .await
                .expect("a frame within the timeout");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("JSON frame"));
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Err(Closed { code: frame.code.into(), reason: frame.reason.to_string() });
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Err(Closed { code: 1005, reason: String::new() });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(Closed { code: 1006, reason: e.to_string() }),
            }
        }
    }

    /// Reads until the connection closes; returns the close code and reason.
    pub async fn closed(&mut self) -> Closed {
        let wait = async {
            loop {
                if let Err(closed) = self.next_event().await {
                    return closed;
                }
            }
        };
        tokio::time::timeout(RECV_TIMEOUT, wait).await.expect("the connection closes within the timeout")
    }

    /// Sends a command and returns the reply with the same id (pushes in between are kept in
    /// order in `skipped`).
    pub async fn call(&mut self, mut frame: Value) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        frame["id"] = Value::String(id.clone());
        self.send(frame).await;
        loop {
            let v = self.recv().await;
            if v["id"] == id.as_str() {
                return v;
            }
        }
    }

    /// Reads `pub` frames until `count` have arrived; other frames must not appear.
    pub async fn read_pubs(&mut self, count: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let v = self.recv().await;
            assert_eq!(v["type"], "pub", "unexpected frame {v}");
            out.push(v);
        }
        out
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self.call(serde_json::json!({"type": "subscribe", "channel": channel})).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }
}
