//! Server-Sent Events and long-poll clients.

use std::time::Duration;

use serde_json::Value;

use super::http::Reply;
use super::ws::RECV_TIMEOUT;

/// One parsed Server-Sent Event (or a comment line block).
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: bool,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("event has data")).expect("JSON data")
    }
}

/// A raw SSE reader over a streaming HTTP response.
pub struct Sse {
    pub response: reqwest::Response,
    buf: String,
}

impl Sse {
    /// Reads an already-open event-stream response.
    pub fn from_response(response: reqwest::Response) -> Sse {
        Sse { response, buf: String::new() }
    }

    pub async fn open(base: &str, query: &str, last_event_id: Option<&str>) -> Result<Sse, Reply> {
        let mut req = reqwest::Client::new().get(format!("{base}/v1/sse{query}"));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let response = req.send().await.expect("request sent");
        if response.status() != 200 {
            let status = response.status();
            let content_type =
                response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            return Err(Reply { status, content_type, body });
        }
        Ok(Sse { response, buf: String::new() })
    }

    /// The next event (comments included), or None when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        let _ = c;
                        event.comment = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        event.retry = v.parse().ok();
                    }
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout(RECV_TIMEOUT, self.response.chunk())
                .await
                .expect("SSE data in time")
                .ok()??;
            self.buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The next event with data (comments skipped).
    pub async fn next_data(&mut self) -> SseEvent {
        loop {
            let e = self.next().await.expect("stream still open");
            if e.data.is_some() {
                return e;
            }
        }
    }
}

/// One long poll; returns the reply.
pub async fn poll(base: &str, query: &str) -> Reply {
    reply(reqwest::Client::new().get(format!("{base}/v1/poll{query}"))).await
}

/// Ends a long-poll session (`POST /v1/poll/close`); returns the reply.
pub async fn close_poll(base: &str, query: &str) -> Reply {
    reply(reqwest::Client::new().post(format!("{base}/v1/poll/close{query}"))).await
}

async fn reply(request: reqwest::RequestBuilder) -> Reply {
    let resp = request.timeout(Duration::from_secs(70)).send().await.expect("request sent");
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_owned();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Reply { status, content_type, body }
}
