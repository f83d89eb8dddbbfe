//! The baseline: the least a broadcast server on the same stack has to do, so Herald's figures
//! can be read as a ratio of what this machine allows.
//!
//! tokio + tokio-tungstenite (the WebSocket library Herald uses, with the same socket buffer
//! sizes), one task per socket, one `tokio::sync::broadcast` queue per channel holding each
//! message once as a pre-serialised `Utf8Bytes` frame that every socket clones (a reference
//! count, not a copy), and per socket: drain what is queued, write it, flush once. No auth, no
//! history, no per-tenant anything.
//!
//! It speaks the subset of Herald's protocol the scenarios use, so the same clients drive both:
//! - `GET /v1/ws` upgrades to WebSocket and sends `{"type":"connected"}`; the client sends
//!   `{"type":"subscribe","id":…,"channel":…}` (one subscription per socket) and gets
//!   `{"type":"subscribed",…,"position":N}`; messages arrive as Herald-shaped `pub` frames.
//! - `POST /v1/tenants/{t}/channels/{c}/messages` with `{"data": …}` publishes (plain
//!   HTTP/1.1 with keep-alive, any or no `Authorization`) and answers with the position.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The line the server prints on stdout once it listens (followed by `http://ADDR`).
pub const LISTENING: &str = "Baseline listening on ";

/// Messages a channel queue holds; a socket further behind is closed as a slow consumer
/// (Herald's default per-connection queue is the same length).
const QUEUE: usize = 1024;

const EPOCH: &str = "baseline";

/// Which WebSocket library the baseline serves with: the version Herald uses, or the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Library {
    /// tokio-tungstenite 0.27, as Herald.
    #[value(name = "tungstenite-0.27")]
    Tungstenite027,
    /// tokio-tungstenite 0.30, the newest release.
    #[value(name = "tungstenite-0.30")]
    Tungstenite030,
}

impl Library {
    pub fn name(self) -> &'static str {
        match self {
            Library::Tungstenite027 => "tungstenite-0.27",
            Library::Tungstenite030 => "tungstenite-0.30",
        }
    }
}

/// A pre-serialised text frame of one library, and how that library serves a socket.
trait Frame: Clone + Send + Sync + 'static {
    fn from_string(s: String) -> Self;
    fn websocket(
        stream: TcpStream,
        hub: Arc<Hub<Self>>,
        write_buffer: usize,
    ) -> impl std::future::Future<Output = Result<(), BoxError>> + Send;
}

struct Hub<F> {
    channels: Mutex<HashMap<String, Arc<Channel<F>>>>,
    ids: AtomicU64,
}

impl<F> Default for Hub<F> {
    fn default() -> Self {
        Hub { channels: Mutex::default(), ids: AtomicU64::new(0) }
    }
}

struct Channel<F> {
    name: String,
    /// The position and the sender under one lock, so positions reach the queue in order and
    /// a subscriber learns the position its receiver starts after.
    inner: Mutex<(u64, broadcast::Sender<F>)>,
}

/// Herald's `pub` frame, field for field.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    channel: &'a str,
    position: u64,
    epoch: &'a str,
    id: &'a str,
    ts: i64,
    data: &'a RawValue,
}

struct Published {
    position: u64,
    id: String,
    ts: i64,
}

impl<F: Frame> Hub<F> {
    fn channel(&self, name: &str) -> Arc<Channel<F>> {
        let mut channels = self.channels.lock().expect("hub lock");
        channels
            .entry(name.to_owned())
            .or_insert_with(|| {
                let (tx, _) = broadcast::channel(QUEUE);
                Arc::new(Channel { name: name.to_owned(), inner: Mutex::new((0, tx)) })
            })
            .clone()
    }

    fn publish(&self, channel: &str, data: &RawValue) -> Published {
        let channel = self.channel(channel);
        let id = format!("{:032x}", self.ids.fetch_add(1, Ordering::Relaxed) + 1);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut inner = channel.inner.lock().expect("channel lock");
        inner.0 += 1;
        let position = inner.0;
        let wire = Wire { kind: "pub", channel: &channel.name, position, epoch: EPOCH, id: &id, ts, data };
        let frame = F::from_string(serde_json::to_string(&wire).expect("frame serialises"));
        // No receivers is not an error: nobody is subscribed.
        let _ = inner.1.send(frame);
        Published { position, id, ts }
    }
}

/// Entry point of `herald-bench baseline-server`. `write_buffer` is tungstenite's
/// `write_buffer_size`: 0 (Herald's setting) writes every frame with its own `send`; more lets
/// the frames drained at one wake-up leave in one `send`.
pub fn main(listen: SocketAddr, write_buffer: usize, library: Library) -> ExitCode {
    crate::sys::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let served = match library {
        Library::Tungstenite027 => runtime.block_on(serve::<Utf8Bytes>(listen, write_buffer)),
        Library::Tungstenite030 => runtime.block_on(serve::<next::Utf8Bytes>(listen, write_buffer)),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench baseline-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve<F: Frame>(listen: SocketAddr, write_buffer: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        writeln!(out, "{LISTENING}http://{}", listener.local_addr()?)?;
        out.flush()?;
    }
    let hub = Arc::new(Hub::<F>::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("baseline: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let _ = handle(stream, hub, write_buffer).await;
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn handle<F: Frame>(stream: TcpStream, hub: Arc<Hub<F>>, write_buffer: usize) -> Result<(), BoxError> {
    stream.set_nodelay(true)?;
    let mut head = [0u8; 4];
    loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Ok(());
        }
        if n == head.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if &head == b"GET " { F::websocket(stream, hub, write_buffer).await } else { http(stream, hub).await }
}

#[derive(Deserialize)]
struct ClientCommand<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    channel: Option<String>,
}

async fn recv<F: Clone>(rx: &mut Option<broadcast::Receiver<F>>) -> Result<F, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One socket's loop, written once for both libraries (their APIs are the same here).
macro_rules! library {
    ($module:ident, $tt:ident) => {
        mod $module {
            use super::*;
            use $tt::tungstenite::protocol::frame::coding::CloseCode;
            use $tt::tungstenite::protocol::{CloseFrame, WebSocketConfig};
            pub use $tt::tungstenite::Utf8Bytes;
            use $tt::tungstenite::Message;

            fn socket_config(write_buffer: usize) -> WebSocketConfig {
    // By default the same sizes Herald uses for its sockets.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(write_buffer + (8 << 20))
}

            impl Frame for Utf8Bytes {
                fn from_string(s: String) -> Self {
                    Utf8Bytes::from(s)
                }

                fn websocket(
                    stream: TcpStream,
                    hub: Arc<Hub<Self>>,
                    write_buffer: usize,
                ) -> impl std::future::Future<Output = Result<(), BoxError>> + Send {
                    websocket(stream, hub, write_buffer)
                }
            }

            async fn websocket(stream: TcpStream, hub: Arc<Hub<Utf8Bytes>>, write_buffer: usize) -> Result<(), BoxError> {
    let mut ws =
        $tt::accept_async_with_config(stream, Some(socket_config(write_buffer))).await?;
    ws.send(Message::text(r#"{"type":"connected"}"#)).await?;
    let mut rx: Option<broadcast::Receiver<Utf8Bytes>> = None;
    loop {
        tokio::select! {
            frame = recv(&mut rx) => match frame {
                Ok(frame) => {
                    ws.feed(Message::Text(frame)).await?;
                    // Everything else already queued goes out with it, then one flush.
                    while let Some(Ok(frame)) = rx.as_mut().map(|r| r.try_recv()) {
                        ws.feed(Message::Text(frame)).await?;
                    }
                    ws.flush().await?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let close = CloseFrame { code: CloseCode::Again, reason: "slow consumer".into() };
                    let _ = ws.send(Message::Close(Some(close))).await;
                    return Ok(());
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let reply = command(&hub, text.as_str(), &mut rx);
                    ws.send(Message::Text(reply.into())).await?;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(()),
                // Pongs to pings are queued by the library: send them.
                Some(Ok(_)) => ws.flush().await?,
            },
        }
    }
}
        }
    };
}

library!(current, tokio_tungstenite);
library!(next, tokio_tungstenite_next);

fn command<F: Frame>(hub: &Hub<F>, text: &str, rx: &mut Option<broadcast::Receiver<F>>) -> String {
    let error = |id: Option<&RawValue>, code: &str| {
        serde_json::json!({"type": "error", "id": id, "code": code, "message": code}).to_string()
    };
    let Ok(cmd) = serde_json::from_str::<ClientCommand>(text) else { return error(None, "bad_request") };
    match (cmd.kind.as_str(), cmd.channel) {
        ("subscribe", Some(name)) if rx.is_none() => {
            let channel = hub.channel(&name);
            let inner = channel.inner.lock().expect("channel lock");
            *rx = Some(inner.1.subscribe());
            serde_json::json!({"type": "subscribed", "id": cmd.id, "channel": name, "epoch": EPOCH, "position": inner.0})
                .to_string()
        }
        ("subscribe", Some(_)) => error(cmd.id, "already_subscribed"),
        ("ping", _) => serde_json::json!({"type": "pong", "id": cmd.id}).to_string(),
        _ => error(cmd.id, "bad_request"),
    }
}

const MAX_BODY: usize = 1 << 20;

/// A minimal HTTP/1.1 server for the publish endpoint (keep-alive, `Content-Length` bodies).
async fn http<F: Frame>(stream: TcpStream, hub: Arc<Hub<F>>) -> Result<(), BoxError> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let mut length = 0usize;
        let mut close = false;
        for _ in 0..100 {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        if length > MAX_BODY {
            write
                .write_all(
                    b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
            return Ok(());
        }
        let mut body = vec![0u8; length];
        read.read_exact(&mut body).await?;
        let (status, reply) = route(&hub, &method, &path, &body);
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        write.write_all(head.as_bytes()).await?;
        write.write_all(reply.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

fn route<F: Frame>(hub: &Hub<F>, method: &str, path: &str, body: &[u8]) -> (&'static str, String) {
    let segments: Vec<&str> = path.split('?').next().unwrap_or("").split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["", "v1", "tenants", _, "channels", channel, "messages"]) => {
            match serde_json::from_slice::<PublishBody>(body) {
                Ok(p) => {
                    let published = hub.publish(channel, p.data);
                    let reply = serde_json::json!({
                        "channel": channel,
                        "position": published.position,
                        "epoch": EPOCH,
                        "id": published.id,
                        "ts": published.ts,
                        "duplicate": false,
                    });
                    ("200 OK", reply.to_string())
                }
                Err(e) => (
                    "400 Bad Request",
                    serde_json::json!({"code": "malformed_json", "detail": e.to_string()}).to_string(),
                ),
            }
        }
        ("GET", ["", "healthz"]) => ("200 OK", r#"{"status":"ok"}"#.into()),
        _ => ("404 Not Found", r#"{"code":"route_not_found"}"#.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_builds_herald_shaped_frames_in_order() {
        let hub = Hub::<Utf8Bytes>::default();
        let mut rx = hub.channel("c").inner.lock().unwrap().1.subscribe();
        let data = RawValue::from_string(r#"{"t":1}"#.into()).unwrap();
        assert_eq!(hub.publish("c", &data).position, 1);
        assert_eq!(hub.publish("c", &data).position, 2);
        let first: serde_json::Value = serde_json::from_str(rx.try_recv().unwrap().as_str()).unwrap();
        assert_eq!(first["type"], "pub");
        assert_eq!(first["position"], 1);
        assert_eq!(first["data"]["t"], 1);
    }

    #[test]
    fn routes_publish_only() {
        let hub = Hub::<Utf8Bytes>::default();
        let (status, body) = route(&hub, "POST", "/v1/tenants/t/channels/c/messages", br#"{"data":5}"#);
        assert_eq!(status, "200 OK", "{body}");
        assert_eq!(route(&hub, "GET", "/nope", b"").0, "404 Not Found");
    }
}
