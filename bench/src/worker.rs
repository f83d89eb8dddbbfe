//! Load workers. A process may hold at most a few tens of thousands of file descriptors, so
//! the client side of a large run is spread over several processes: the tool re-executes
//! itself as `herald-bench worker`, and each worker holds up to `--per-worker` sockets.
//!
//! The parent drives a worker with one JSON command per line on its stdin and reads one JSON
//! reply per line from its stdout (logs go to stderr). A worker exits when its stdin closes.
//!
//! Every connection binds its socket to a source address in 127.0.0.0/8 and a source port,
//! both chosen from its global index (`--per-source` connections per address, ports from
//! 10000 up), so runs are not capped by the ~28k ephemeral ports of one address, and the
//! kernel does not have to search for a free port past the TIME_WAIT sockets of earlier runs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How clients connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// WebSocket at `/v1/ws`.
    Ws,
    /// Server-Sent Events at `/v1/sse` (one stream per client, kept open).
    Sse,
    /// Long polling at `/v1/poll`: each client polls in a loop on a keep-alive connection,
    /// holding each poll up to 30 s, always with the cursor of the previous answer.
    LongPoll,
    /// One long poll per client (`timeout=0`), then the socket is closed: what stays on the
    /// server is the session between polls (for `idle`).
    LongPollSession,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::LongPoll => "long_poll",
            Transport::LongPollSession => "long_poll_session",
        }
    }
}

/// Opens `count` connections with global indices `first_index..first_index + count`;
/// connection `k` subscribes to `channels[k % channels.len()]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectSpec {
    /// Full WebSocket URL, including the token for Herald.
    pub url: String,
    pub transport: Transport,
    pub first_index: u64,
    pub count: u64,
    pub channels: Vec<String>,
    /// Connections per source address.
    pub per_source: u64,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// Client tokens to use in turn instead of the URL's (one user each).
    #[serde(default)]
    pub tokens: Vec<String>,
}

/// `url` with its `token=` (the last query parameter) set to `tokens[index % len]`, or `url`
/// when there are no tokens.
pub fn url_with_token(url: &str, tokens: &[String], index: u64) -> String {
    match (tokens.is_empty(), url.rsplit_once("token=")) {
        (false, Some((base, _))) => format!("{base}token={}", tokens[(index % tokens.len() as u64) as usize]),
        _ => url.to_owned(),
    }
}

/// Churn: opens WebSocket connections at `rate` per second for `seconds`, each subscribing to
/// one of `channels` and closing again after `hold_ms` (connect, subscribe, close: what a
/// node's presence registry has to follow). Sources from `first_index` on, kernel-chosen ports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnSpec {
    pub url: String,
    pub channels: Vec<String>,
    pub rate: f64,
    pub seconds: f64,
    pub hold_ms: u64,
    pub first_index: u64,
    pub per_source: u64,
    #[serde(default)]
    pub tokens: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ChurnReply {
    /// Connections that opened, subscribed and closed.
    pub cycles: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Connect(ConnectSpec),
    Churn(ChurnSpec),
    /// Clears counters and the latency histogram (positions are kept).
    Reset,
    /// Counters so far, and the latencies when `latency` is set; `final_positions` (channel →
    /// newest published position) lets the worker count messages that have not arrived.
    Report {
        final_positions: HashMap<String, u64>,
        #[serde(default)]
        latency: bool,
    },
    Quit,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ConnectReply {
    pub opened: u64,
    pub failed: u64,
    pub open_now: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
}

/// Delivery counters of one worker (or, merged, of all of them).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Counters {
    /// `pub` frames received.
    pub received: u64,
    /// Positions skipped inside a stream (a later position arrived first).
    pub gaps: u64,
    /// A position received twice in a row.
    pub duplicates: u64,
    /// A position lower than one already received.
    pub out_of_order: u64,
    /// Positions published but not (yet) received by a connection that is still open.
    pub pending: u64,
    /// Positions published but never received by a connection that has closed.
    pub lost_on_close: u64,
    /// Connections that closed after subscribing.
    pub closed: u64,
    /// Frames that are neither `pub` nor understood, or `pub` frames without a timestamp.
    pub unexpected: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.received += o.received;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.pending += o.pending;
        self.lost_on_close += o.lost_on_close;
        self.closed += o.closed;
        self.unexpected += o.unexpected;
    }

    /// Messages that did not arrive: gaps plus what is still pending or lost.
    pub fn missing(&self) -> u64 {
        self.gaps + self.pending + self.lost_on_close
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    pub counters: Counters,
    /// Publish→deliver latency in µs as (value, count) pairs of a histogram.
    pub latency_us: Vec<(u64, u64)>,
    pub open: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Connected(ConnectReply),
    Churned(ChurnReply),
    Report(WorkerReport),
    Ok,
    Error { message: String },
}

/// Source address of the connection with global index `index`: 127.0.0.2 upwards.
pub fn source_addr(index: u64, per_source: u64) -> Ipv4Addr {
    let n = 2 + index / per_source.max(1);
    Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// Lowest source port the tool picks itself; ports up to `FIRST_PORT + per_source` stay below
/// Linux's default ephemeral range (32768…).
const FIRST_PORT: u64 = 10_000;

/// Source port of the connection with global index `index`, chosen by the tool rather than
/// the kernel: a `bind` to port 0 searches the ephemeral range for a port that is free for
/// *any* destination, which gets slow (CPU-bound in the kernel) once earlier runs have left
/// thousands of sockets in TIME_WAIT on that address. An explicit port with `SO_REUSEADDR`
/// only has to be unique per (source, destination) pair. `None` when `per_source` is too large
/// for the range below the ephemeral ports.
pub fn source_port(index: u64, per_source: u64) -> Option<u16> {
    (per_source <= 32_768 - FIRST_PORT).then(|| (FIRST_PORT + index % per_source.max(1)) as u16)
}

/// A new latency histogram: 1 µs to 10 min, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Microseconds since the Unix epoch (the clock publishers stamp messages with).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Small socket buffers on the client as well: tens of thousands of idle sockets.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

struct Conn {
    channel: u32,
    last: u64,
    subscribed: bool,
    open: bool,
}

struct State {
    conns: Vec<Conn>,
    channel_ids: HashMap<String, u32>,
    channel_names: Vec<String>,
    counters: Counters,
    latency: Histogram<u64>,
    first_error: Option<String>,
}

impl State {
    fn channel_id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.channel_ids.get(name) {
            return *id;
        }
        let id = self.channel_names.len() as u32;
        self.channel_names.push(name.to_owned());
        self.channel_ids.insert(name.to_owned(), id);
        id
    }

    fn on_pub(&mut self, slot: usize, position: Option<u64>, sent_us: Option<u64>, now: u64) {
        self.counters.received += 1;
        match sent_us {
            Some(sent) => {
                let _ = self.latency.record(now.saturating_sub(sent).max(1));
            }
            None => self.counters.unexpected += 1,
        }
        let Some(position) = position else {
            self.counters.unexpected += 1;
            return;
        };
        let conn = &mut self.conns[slot];
        if position == conn.last + 1 {
            conn.last = position;
        } else if position > conn.last {
            self.counters.gaps += position - conn.last - 1;
            conn.last = position;
        } else if position == conn.last {
            self.counters.duplicates += 1;
        } else {
            self.counters.out_of_order += 1;
        }
    }

    fn report(&self, final_positions: &HashMap<String, u64>, with_latency: bool) -> WorkerReport {
        let mut counters = self.counters;
        for conn in self.conns.iter().filter(|c| c.subscribed) {
            let name = &self.channel_names[conn.channel as usize];
            let behind = final_positions.get(name).map_or(0, |f| f.saturating_sub(conn.last));
            if conn.open {
                counters.pending += behind;
            } else {
                counters.lost_on_close += behind;
            }
        }
        WorkerReport {
            counters,
            latency_us: if with_latency {
                self.latency.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
            } else {
                Vec::new()
            },
            open: self.conns.iter().filter(|c| c.open).count() as u64,
            first_error: self.first_error.clone(),
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().expect("worker state lock")
}

/// Entry point of `herald-bench worker`.
pub fn main() -> ExitCode {
    crate::sys::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let state: Shared = Arc::new(Mutex::new(State {
        conns: Vec::new(),
        channel_ids: HashMap::new(),
        channel_names: Vec::new(),
        counters: Counters::default(),
        latency: latency_histogram(),
        first_error: None,
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Command>(&line) {
            Err(e) => Reply::Error { message: format!("bad command: {e}") },
            Ok(Command::Quit) => break,
            Ok(Command::Connect(spec)) => match connect_all(&state, spec).await {
                Ok(r) => Reply::Connected(r),
                Err(e) => Reply::Error { message: e.to_string() },
            },
            Ok(Command::Churn(spec)) => match churn(spec).await {
                Ok(r) => Reply::Churned(r),
                Err(e) => Reply::Error { message: e.to_string() },
            },
            Ok(Command::Reset) => {
                let mut s = lock(&state);
                s.counters = Counters::default();
                s.latency.reset();
                Reply::Ok
            }
            Ok(Command::Report { final_positions, latency }) => {
                Reply::Report(lock(&state).report(&final_positions, latency))
            }
        };
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

/// The `host:port` of a `ws://IP:PORT/…` URL (IP literals only: this is a loopback tool).
pub fn server_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| anyhow::anyhow!("`{url}`: only ws:// and http:// URLs are supported"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.parse().map_err(|_| anyhow::anyhow!("`{url}`: the host must be an IP address and a port"))
}

async fn connect_all(state: &Shared, spec: ConnectSpec) -> anyhow::Result<ConnectReply> {
    anyhow::ensure!(!spec.channels.is_empty(), "no channels given");
    let started = Instant::now();
    let server = server_addr(&spec.url)?;
    let spec = Arc::new(spec);
    let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    for k in 0..spec.count {
        let index = spec.first_index + k;
        let name = &spec.channels[(index % spec.channels.len() as u64) as usize];
        let slot = {
            let mut s = lock(state);
            let channel = s.channel_id(name);
            s.conns.push(Conn { channel, last: 0, subscribed: false, open: false });
            s.conns.len() - 1
        };
        let (spec, gate, done, state) = (spec.clone(), gate.clone(), done_tx.clone(), state.clone());
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let channel = spec.channels[(index % spec.channels.len() as u64) as usize].clone();
            let url = url_with_token(&spec.url, &spec.tokens, index);
            let (source, port) = (source_addr(index, spec.per_source), source_port(index, spec.per_source));
            if spec.transport != Transport::Ws {
                let opened = tokio::time::timeout(
                    Duration::from_secs(60),
                    open_http(spec.transport, &url, server, source, port, &channel),
                )
                .await
                .unwrap_or_else(|_| Err("timed out connecting and subscribing".into()));
                drop(permit);
                match opened {
                    Ok((stream, rest, position)) => {
                        {
                            let mut s = lock(&state);
                            let conn = &mut s.conns[slot];
                            conn.last = position;
                            conn.subscribed = true;
                            conn.open = true;
                        }
                        let _ = done.send(Ok(()));
                        drop(done);
                        match (spec.transport, stream) {
                            (Transport::Sse, Some(stream)) => read_loop_sse(stream, rest, &state, slot).await,
                            (Transport::LongPoll, Some(stream)) => {
                                let cursor = String::from_utf8_lossy(&rest).into_owned();
                                poll_loop(stream, &url, &channel, cursor, &state, slot).await
                            }
                            _ => {}
                        }
                    }
                    Err(e) => {
                        let _ = done.send(Err(e));
                    }
                }
                return;
            }
            let opened =
                tokio::time::timeout(Duration::from_secs(60), open(&url, server, source, port, &channel))
                    .await
                    .unwrap_or_else(|_| Err("timed out connecting and subscribing".into()));
            drop(permit);
            match opened {
                Ok((ws, position)) => {
                    {
                        let mut s = lock(&state);
                        let conn = &mut s.conns[slot];
                        conn.last = position;
                        conn.subscribed = true;
                        conn.open = true;
                    }
                    let _ = done.send(Ok(()));
                    drop(done);
                    read_loop(ws, &state, slot).await;
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            }
        });
    }
    drop(done_tx);
    let mut reply = ConnectReply::default();
    for _ in 0..spec.count {
        let Some(result) = done_rx.recv().await else { break };
        match result {
            Ok(()) => reply.opened += 1,
            Err(e) => {
                reply.failed += 1;
                if reply.first_error.is_none() {
                    reply.first_error = Some(e);
                }
            }
        }
    }
    reply.open_now = lock(state).conns.iter().filter(|c| c.open).count() as u64;
    reply.seconds = started.elapsed().as_secs_f64();
    Ok(reply)
}

async fn churn(spec: ChurnSpec) -> anyhow::Result<ChurnReply> {
    anyhow::ensure!(!spec.channels.is_empty() && spec.rate > 0.0, "churn needs channels and a rate");
    let server = server_addr(&spec.url)?;
    let spec = Arc::new(spec);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + Duration::from_secs_f64(spec.seconds);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut started = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        let index = spec.first_index + started;
        let channel = spec.channels[(started % spec.channels.len() as u64) as usize].clone();
        let (spec, done) = (spec.clone(), done_tx.clone());
        tokio::spawn(async move {
            let source = source_addr(index, spec.per_source);
            let cycle = async {
                let url = url_with_token(&spec.url, &spec.tokens, index);
                let (mut ws, _) = open(&url, server, source, None, &channel).await?;
                tokio::time::sleep(Duration::from_millis(spec.hold_ms)).await;
                ws.close(None).await.map_err(|e| format!("close: {e}"))?;
                // Wait for the server's close frame (or the end of the stream).
                while let Some(Ok(_)) = ws.next().await {}
                Ok(())
            };
            let result = tokio::time::timeout(Duration::from_secs(30), cycle)
                .await
                .unwrap_or_else(|_| Err("timed out".into()));
            let _ = done.send(result);
        });
        started += 1;
    }
    drop(done_tx);
    let mut reply = ChurnReply::default();
    while let Some(result) = done_rx.recv().await {
        match result {
            Ok(()) => reply.cycles += 1,
            Err(e) => {
                reply.failed += 1;
                reply.first_error.get_or_insert(e);
            }
        }
    }
    Ok(reply)
}

type Ws = WebSocketStream<TcpStream>;

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    position: Option<u64>,
    data: Option<Stamp>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

/// The publisher's timestamp inside `data`; other fields (the padding) are skipped.
#[derive(Deserialize)]
struct Stamp {
    t: Option<u64>,
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(f) => format!("closed by the server: {} {}", u16::from(f.code), f.reason),
                    None => "closed by the server".into(),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection ended".into()),
        }
    }
}

/// Connects from `source`, waits for `connected`, subscribes; returns the socket and the
/// channel's position at subscription.
async fn open(
    url: &str,
    server: SocketAddr,
    source: Ipv4Addr,
    port: Option<u16>,
    channel: &str,
) -> Result<(Ws, u64), String> {
    let bound = |port: u16| -> std::io::Result<TcpSocket> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source.into(), port))?;
        Ok(socket)
    };
    // Another program may hold the chosen port: then let the kernel pick one.
    let socket = match port.map(bound) {
        Some(Ok(socket)) => socket,
        _ => bound(0).map_err(|e| format!("bind {source}: {e}"))?,
    };
    let stream = socket.connect(server).await.map_err(|e| format!("connect from {source}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let hello = next_text(&mut ws).await?;
    let hello: Incoming = serde_json::from_str(&hello).map_err(|e| format!("bad first frame: {e}"))?;
    if hello.kind != "connected" {
        return Err(format!(
            "expected `connected`, got `{}` {} {}",
            hello.kind,
            hello.code.unwrap_or_default(),
            hello.message.unwrap_or_default()
        ));
    }
    let subscribe = serde_json::json!({"type": "subscribe", "id": 1, "channel": channel}).to_string();
    ws.send(Message::Text(subscribe.into())).await.map_err(|e| format!("send subscribe: {e}"))?;
    loop {
        let text = next_text(&mut ws).await?;
        let frame: Incoming = serde_json::from_str(&text).map_err(|e| format!("bad frame: {e}"))?;
        match frame.kind.as_ref() {
            "subscribed" => return Ok((ws, frame.position.unwrap_or(0))),
            "error" => {
                return Err(format!(
                    "subscribe refused: {} {}",
                    frame.code.unwrap_or_default(),
                    frame.message.unwrap_or_default()
                ));
            }
            _ => continue,
        }
    }
}

/// The `token` query parameter of the WebSocket URL the tool was given.
fn token_of(url: &str) -> Result<String, String> {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_owned)
        .ok_or_else(|| "the connection URL has no token".to_owned())
}

/// Opens an SSE stream (kept, with what was read past the `subscribed` event) or makes one
/// long poll (nothing kept); returns the channel position at subscription.
async fn open_http(
    transport: Transport,
    url: &str,
    server: SocketAddr,
    source: Ipv4Addr,
    port: Option<u16>,
    channel: &str,
) -> Result<(Option<TcpStream>, Vec<u8>, u64), String> {
    use tokio::io::AsyncReadExt;
    let bound = |port: u16| -> std::io::Result<TcpSocket> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source.into(), port))?;
        Ok(socket)
    };
    let socket = match port.map(bound) {
        Some(Ok(socket)) => socket,
        _ => bound(0).map_err(|e| format!("bind {source}: {e}"))?,
    };
    let mut stream = socket.connect(server).await.map_err(|e| format!("connect from {source}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let token = token_of(url)?;
    let path = match transport {
        Transport::Sse => format!("/v1/sse?channels={channel}&token={token}"),
        _ => format!("/v1/poll?channels={channel}&token={token}&timeout=0"),
    };
    if transport == Transport::LongPoll {
        let (cursor, _) = poll_once(&mut stream, &path, server).await?;
        return Ok((Some(stream), cursor.into_bytes(), 0));
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send request: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            if transport == Transport::LongPollSession && buf.starts_with(b"HTTP/1.1 200") {
                return Ok((None, Vec::new(), 0));
            }
            return Err(format!("connection ended: {}", String::from_utf8_lossy(&buf[..buf.len().min(200)])));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !buf.starts_with(b"HTTP/1.1 200") && buf.len() >= 12 {
            return Err(format!("refused: {}", String::from_utf8_lossy(&buf[..buf.len().min(300)])));
        }
        if transport == Transport::Sse {
            let text = String::from_utf8_lossy(&buf);
            if let Some(at) = text.find("\"type\":\"subscribed\"") {
                let end = text[at..].find("\n\n").map(|e| at + e + 2);
                if let Some(end) = end {
                    let position = text[at..end]
                        .split("\"position\":")
                        .nth(1)
                        .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                    let rest = buf[end..].to_vec();
                    return Ok((Some(stream), rest, position));
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct PollAnswer<'a> {
    #[serde(borrow)]
    messages: Vec<Incoming<'a>>,
    cursor: String,
}

/// One poll on a keep-alive connection; returns the next cursor and the raw body.
async fn poll_once(
    stream: &mut TcpStream,
    path: &str,
    server: SocketAddr,
) -> Result<(String, Vec<u8>), String> {
    use tokio::io::AsyncReadExt;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send poll: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(format!("poll refused: {}", String::from_utf8_lossy(&buf[..buf.len().min(300)])));
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("poll answer without content-length")?;
            break (end + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    let answer: PollAnswer = serde_json::from_slice(&body).map_err(|e| format!("bad poll answer: {e}"))?;
    Ok((answer.cursor, body))
}

/// Polls until the connection fails, recording every message, always from the last cursor.
async fn poll_loop(
    mut stream: TcpStream,
    url: &str,
    channel: &str,
    mut cursor: String,
    state: &Shared,
    slot: usize,
) {
    let end = loop {
        let Ok(token) = token_of(url) else { break "no token".to_owned() };
        let server = match stream.peer_addr() {
            Ok(a) => a,
            Err(e) => break e.to_string(),
        };
        let path = format!("/v1/poll?channels={channel}&token={token}&cursor={cursor}&timeout=30");
        match poll_once(&mut stream, &path, server).await {
            Ok((next, body)) => {
                let now = now_us();
                if let Ok(answer) = serde_json::from_slice::<PollAnswer>(&body) {
                    let mut s = lock(state);
                    for frame in answer.messages {
                        let sent = frame.data.and_then(|d| d.t);
                        s.on_pub(slot, frame.position, sent, now);
                    }
                }
                cursor = next;
            }
            Err(e) => break e,
        }
    };
    let mut s = lock(state);
    s.conns[slot].open = false;
    s.counters.closed += 1;
    if s.first_error.is_none() {
        s.first_error = Some(end);
    }
}

/// Reads an SSE stream until it ends, recording every `pub` event.
async fn read_loop_sse(mut stream: TcpStream, mut buf: Vec<u8>, state: &Shared, slot: usize) {
    use tokio::io::AsyncReadExt;
    let mut chunk = vec![0u8; 16 * 1024];
    let end = loop {
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let now = now_us();
            for line in event.split(|b| *b == b'\n') {
                if let Some(data) = line.strip_prefix(b"data: ") {
                    match serde_json::from_slice::<Incoming>(data) {
                        Ok(frame) if frame.kind == "pub" => {
                            let sent = frame.data.and_then(|d| d.t);
                            lock(state).on_pub(slot, frame.position, sent, now);
                        }
                        Ok(_) => {}
                        Err(_) => lock(state).counters.unexpected += 1,
                    }
                }
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) => break "connection ended".to_owned(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break e.to_string(),
        }
    };
    let mut s = lock(state);
    s.conns[slot].open = false;
    s.counters.closed += 1;
    if s.first_error.is_none() {
        s.first_error = Some(end);
    }
}

/// Reads until the connection ends, recording every `pub` frame. Pings are answered by the
/// library while reading.
async fn read_loop(mut ws: Ws, state: &Shared, slot: usize) {
    let end = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let now = now_us();
                match serde_json::from_str::<Incoming>(text.as_str()) {
                    Ok(frame) if frame.kind == "pub" => {
                        let sent = frame.data.and_then(|d| d.t);
                        lock(state).on_pub(slot, frame.position, sent, now);
                    }
                    _ => lock(state).counters.unexpected += 1,
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break frame.map_or_else(
                    || "closed by the server".to_owned(),
                    |f| format!("closed by the server: {} {}", u16::from(f.code), f.reason),
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.to_string(),
            None => break "connection ended".to_owned(),
        }
    };
    let mut s = lock(state);
    s.conns[slot].open = false;
    s.counters.closed += 1;
    if s.first_error.is_none() {
        s.first_error = Some(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_skip_127_0_0_1_and_spread() {
        assert_eq!(source_addr(0, 5000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(4999, 5000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(5000, 5000), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_addr(254 * 10, 10), Ipv4Addr::new(127, 0, 1, 0));
    }

    #[test]
    fn source_ports_are_unique_per_address_and_below_the_ephemeral_range() {
        assert_eq!(source_port(0, 5000), Some(10_000));
        assert_eq!(source_port(4999, 5000), Some(14_999));
        assert_eq!(source_port(5000, 5000), Some(10_000));
        assert_eq!(source_port(7, 40_000), None);
    }

    #[test]
    fn order_checks() {
        let mut s = State {
            conns: vec![Conn { channel: 0, last: 3, subscribed: true, open: true }],
            channel_ids: HashMap::new(),
            channel_names: vec!["c".into()],
            counters: Counters::default(),
            latency: latency_histogram(),
            first_error: None,
        };
        for p in [4, 6, 6, 5] {
            s.on_pub(0, Some(p), Some(1), 2);
        }
        let r = s.report(&HashMap::from([("c".to_owned(), 9)]), true);
        assert_eq!(r.counters.received, 4);
        assert_eq!(r.counters.gaps, 1);
        assert_eq!(r.counters.duplicates, 1);
        assert_eq!(r.counters.out_of_order, 1);
        assert_eq!(r.counters.pending, 3);
        assert_eq!(r.counters.missing(), 4);
    }

    #[test]
    fn parses_urls() {
        assert_eq!(server_addr("ws://127.0.0.1:80/v1/ws?token=x").unwrap().port(), 80);
        assert!(server_addr("ws://localhost:80/").is_err());
    }
}
