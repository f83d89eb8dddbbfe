//! A Rust client for Herald with the browser SDK's semantics: one connection over WebSocket,
//! Server-Sent Events or long polling; automatic fallback to the next transport when one
//! cannot connect; reconnects with full-jitter backoff that honour the close-code groups and
//! the server's drain hint, over a list of server URLs; and every subscription resumed from its
//! last position after any reconnect or change of transport, each message handed out once, in
//! order. When the server cannot fill a gap, the subscription says so (`recovered: Some(false)`)
//! and carries on.
//!
//! ```no_run
//! # async fn run() {
//! use herald_client::{Client, Event, Options};
//! let client = Client::connect(Options::new("http://127.0.0.1:8080").token("<client JWT>"));
//! let mut chat = client.subscribe("chat:lobby");
//! while let Some(event) = chat.next().await {
//!     if let Event::Publication(p) = event {
//!         println!("{} {}", p.position, p.data);
//!     }
//! }
//! # }
//! ```
//!
//! One task per client drives the connection; a subscription's events wait in a bounded
//! queue, and a full queue holds the connection back (the server then treats the client as
//! slow, and the client resumes after the reconnect), so nothing is dropped in between.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Events a subscription buffers before the connection waits for the application.
const EVENT_QUEUE: usize = 1024;
/// Channels one SSE stream or poll carries at most (the server's limit).
const MAX_HTTP_CHANNELS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Sse,
    LongPoll,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
        }
    }
}

/// Where a subscription is in its channel's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub position: u64,
    pub epoch: String,
}

/// A message of a channel, as published.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Publication {
    pub channel: String,
    pub position: u64,
    pub epoch: String,
    pub id: String,
    pub ts: i64,
    #[serde(default)]
    pub event: Option<String>,
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Subscribed on the current connection. `recovered`: `Some(true)` when everything since the
    /// last position follows, `Some(false)` when the gap could not be filled (reload your
    /// state), `None` on a first subscribe.
    Subscribed {
        position: Position,
        recovered: Option<bool>,
        transport: Transport,
    },
    Publication(Publication),
    Join {
        client: String,
        user: String,
    },
    Leave {
        client: String,
        user: String,
    },
    /// The server refused the channel (`code` as in the protocol); the subscription has ended.
    Refused {
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Connecting {
        transport: Transport,
        url: String,
    },
    Connected {
        transport: Transport,
        url: String,
    },
    Reconnecting {
        transport: Transport,
        url: String,
        delay: Duration,
        attempt: u32,
        code: u16,
        reason: String,
    },
    Disconnected {
        code: u16,
        reason: String,
    },
}

/// An error answered by Herald (`code` as in the protocol's error table) or by this client
/// (`not_connected`, `not_supported`, `closed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

fn error(code: &str, message: impl Into<String>) -> Error {
    Error { code: code.to_owned(), message: message.into() }
}

pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type TokenFn = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// How the client connects; `Options::new(url)` has the defaults.
#[derive(Clone)]
pub struct Options {
    /// Herald's base URLs (`http(s)://host:port`); the client moves to the next when a node
    /// fails or drains.
    pub urls: Vec<String>,
    static_token: Option<String>,
    token_fn: Option<TokenFn>,
    pub tenant: Option<String>,
    /// The order to try (default WebSocket, SSE, long polling); one element forces it.
    pub transports: Vec<Transport>,
    /// Reconnect delays: uniform between min and min × 2^attempt, capped at max (0.5 s, 20 s).
    pub min_reconnect_delay: Duration,
    pub max_reconnect_delay: Duration,
    /// How long a connection may take to open (10 s).
    pub connect_timeout: Duration,
    /// Failures in a row of a transport before the next one is tried (2).
    pub fallback_after: u32,
    /// With a token function, refresh this long before expiry (30 s).
    pub refresh_before: Duration,
    /// How long a long poll waits on the server (25 s).
    pub poll_timeout: Duration,
    /// An SSE stream silent this long is restarted (45 s).
    pub idle_timeout: Duration,
}

impl Options {
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            urls: vec![url.into()],
            static_token: None,
            token_fn: None,
            tenant: None,
            transports: vec![Transport::WebSocket, Transport::Sse, Transport::LongPoll],
            min_reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            fallback_after: 2,
            refresh_before: Duration::from_secs(30),
            poll_timeout: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(45),
        }
    }

    /// Several nodes of one cluster.
    pub fn urls(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Options {
        self.urls = urls.into_iter().map(Into::into).collect();
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> Options {
        self.static_token = Some(token.into());
        self
    }

    /// A function that fetches a fresh token, called at every connect and before expiry.
    pub fn token_fn<F, Fut>(mut self, f: F) -> Options
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_fn = Some(Arc::new(move || Box::pin(f())));
        self
    }

    pub fn tenant(mut self, tenant: impl Into<String>) -> Options {
        self.tenant = Some(tenant.into());
        self
    }

    pub fn transports(mut self, transports: &[Transport]) -> Options {
        if !transports.is_empty() {
            self.transports = transports.to_vec();
        }
        self
    }

    pub fn reconnect_delays(mut self, min: Duration, max: Duration) -> Options {
        self.min_reconnect_delay = min;
        self.max_reconnect_delay = max.max(min);
        self
    }

    pub fn fallback_after(mut self, failures: u32) -> Options {
        self.fallback_after = failures.max(1);
        self
    }
}

/// Full jitter: uniform between `min` and `min × 2^attempt`, capped at `max` (`attempt` counts
/// the failures in a row, from 1).
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let cap = min.saturating_mul(1u32 << attempt.min(20)).min(max).max(min);
    let spread = (cap - min).as_millis() as u64;
    min + Duration::from_millis(if spread == 0 { 0 } else { rand::random::<u64>() % (spread + 1) })
}

enum Cmd {
    Subscribe(String, u64, mpsc::Sender<Event>, Option<Position>),
    Unsubscribe(String, u64),
    Call(serde_json::Map<String, Value>, oneshot::Sender<Result<Value, Error>>),
    Close,
}

/// A connection to Herald, driven by its own task until [`Client::close`] or drop.
pub struct Client {
    cmds: mpsc::UnboundedSender<Cmd>,
    state: watch::Receiver<State>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One channel's subscription; it lasts across reconnects and transport changes. Dropping it
/// unsubscribes.
pub struct Subscription {
    pub channel: String,
    id: u64,
    events: mpsc::Receiver<Event>,
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl Subscription {
    /// The next event; `None` once the subscription ended (refused, or the client closed).
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Unsubscribe(self.channel.clone(), self.id));
    }
}

impl Client {
    /// Starts connecting (on the current tokio runtime).
    ///
    /// Panics when `opts` has no URL, no transport, or a URL that does not parse.
    pub fn connect(opts: Options) -> Client {
        assert!(
            !opts.urls.is_empty() && !opts.transports.is_empty(),
            "herald-client: no URL or no transport"
        );
        for url in &opts.urls {
            assert!(reqwest::Url::parse(url).is_ok(), "herald-client: `{url}` is not a URL");
        }
        let (cmds, rx) = mpsc::unbounded_channel();
        let first = State::Connecting {
            transport: opts.transports[0],
            url: opts.urls.first().cloned().unwrap_or_default(),
        };
        let (state_tx, state) = watch::channel(first);
        let driver = Driver {
            http: reqwest::Client::new(),
            opts,
            subs: BTreeMap::new(),
            cmds: rx,
            state: state_tx,
            kind: 0,
            url: 0,
            failures: 0,
            attempt: 0,
            token: None,
            token_at: 0,
            expires: None,
            closed: false,
            queued: Vec::new(),
        };
        tokio::spawn(driver.run());
        Client { cmds, state, next_id: std::sync::atomic::AtomicU64::new(1) }
    }

    /// Subscribes to `channel`; events arrive on the returned subscription. A second
    /// subscription to the same channel takes it over (the first one ends).
    pub fn subscribe(&self, channel: impl Into<String>) -> Subscription {
        self.subscribe_at(channel.into(), None)
    }

    /// Subscribes and resumes after a position kept from before (e.g. across a restart).
    pub fn subscribe_from(&self, channel: impl Into<String>, since: Position) -> Subscription {
        self.subscribe_at(channel.into(), Some(since))
    }

    fn subscribe_at(&self, channel: String, since: Option<Position>) -> Subscription {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let _ = self.cmds.send(Cmd::Subscribe(channel.clone(), id, tx, since));
        Subscription { channel, id, events, cmds: self.cmds.clone() }
    }

    /// The connection's state, as it changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Waits until the client is connected (or `within` passes).
    pub async fn connected(&self, within: Duration) -> Result<State, Error> {
        let mut state = self.state.clone();
        let wait = state.wait_for(|s| matches!(s, State::Connected { .. } | State::Disconnected { .. }));
        match tokio::time::timeout(within, wait).await {
            Ok(Ok(s)) if matches!(*s, State::Connected { .. }) => Ok(s.clone()),
            Ok(Ok(s)) => Err(error("disconnected", format!("{:?}", *s))),
            _ => Err(error("not_connected", "not connected in time")),
        }
    }

    async fn call(&self, frame: Value) -> Result<Value, Error> {
        let Value::Object(frame) = frame else { unreachable!("commands are objects") };
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Call(frame, tx)).map_err(|_| error("closed", "the client is closed"))?;
        rx.await.map_err(|_| error("disconnected", "the connection closed"))?
    }

    /// Publishes through the connection (WebSocket only); answers the `published` frame.
    /// Commands sent while connecting wait for the connection (up to `connect_timeout`).
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Value, Error> {
        self.publish_with(channel, data, None, None).await
    }

    /// Publishes with an event name and an idempotency key (a retry with the same key, e.g.
    /// after `cluster_unavailable`, publishes once).
    pub async fn publish_with(
        &self,
        channel: &str,
        data: Value,
        event: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Value, Error> {
        let mut f = json!({"type": "publish", "channel": channel, "data": data});
        if let Some(e) = event {
            f["event"] = json!(e);
        }
        if let Some(k) = idempotency_key {
            f["idempotency_key"] = json!(k);
        }
        self.call(f).await
    }

    pub async fn history(&self, channel: &str, since: Option<&Position>, limit: u32) -> Result<Value, Error> {
        let mut f = json!({"type": "history", "channel": channel, "limit": limit});
        if let Some(since) = since {
            f["since"] = json!(since);
        }
        self.call(f).await
    }

    pub async fn presence(&self, channel: &str) -> Result<Value, Error> {
        self.call(json!({"type": "presence", "channel": channel})).await
    }

    /// Closes the connection; subscriptions end.
    pub fn close(&self) {
        let _ = self.cmds.send(Cmd::Close);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

// ---- the driver ---------------------------------------------------------------------------------

struct Sub {
    id: u64,
    tx: mpsc::Sender<Event>,
    position: Option<Position>,
    active: bool,
}

/// How a connection ended.
struct End {
    code: u16,
    reason: String,
    /// It had opened (and when), or failed before.
    opened: Option<Instant>,
    /// Whether it may count against the transport (a token callback that failed does not).
    transport_fault: bool,
}

impl End {
    fn new(code: u16, reason: impl Into<String>, opened: Option<Instant>) -> End {
        End { code, reason: reason.into(), opened, transport_fault: true }
    }
}

/// Codes in a problem document (SSE and long-poll refusals) as close codes.
fn problem_close(status: u16, code: &str) -> u16 {
    match code {
        "token_expired" => 4002,
        "tenant_suspended" => 4003,
        "token_revoked" => 4004,
        "disconnected" => 4006,
        "origin_not_allowed" => 4007,
        "connection_limit" => 4101,
        _ if status == 401 || status == 403 => 4001,
        _ if status == 400 || status == 404 => 4000,
        _ => 1011,
    }
}

fn token_expiry(token: &str) -> Option<i64> {
    use base64_lite::decode;
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&decode(payload)?).ok()?;
    claims["exp"].as_i64()
}

/// Just enough base64url decoding for a JWT payload (no dependency for it).
mod base64_lite {
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' | b'+' => 62,
                b'_' | b'/' => 63,
                b'=' => continue,
                _ => return None,
            };
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        Some(out)
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

struct Driver {
    http: reqwest::Client,
    opts: Options,
    subs: BTreeMap<String, Sub>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    state: watch::Sender<State>,
    kind: usize,
    url: usize,
    failures: u32,
    attempt: u32,
    token: Option<String>,
    /// When the token was fetched (Unix seconds).
    token_at: i64,
    expires: Option<i64>,
    closed: bool,
    /// Commands waiting for a connection, with their deadline.
    queued: Vec<Queued>,
}

/// A command waiting for a connection: the frame, where its answer goes, its deadline.
type Queued = (serde_json::Map<String, Value>, oneshot::Sender<Result<Value, Error>>, Instant);

/// Channel errors worth trying again later (the subscription stays).
const RETRYABLE: &[&str] = &[
    "closed",
    "internal",
    "cluster_unavailable",
    "proxy_unavailable",
    "quota_exceeded",
    "auth_unavailable",
    "unavailable",
];

/// What a command did to the subscription set.
enum Applied {
    Nothing,
    Changed,
    Call(serde_json::Map<String, Value>, oneshot::Sender<Result<Value, Error>>),
}

impl Driver {
    fn transport(&self) -> Transport {
        self.opts.transports[self.kind % self.opts.transports.len()]
    }

    fn base(&self) -> String {
        self.opts.urls[self.url % self.opts.urls.len()].trim_end_matches('/').to_owned()
    }

    fn set(&self, s: State) {
        let _ = self.state.send(s);
    }

    async fn run(mut self) {
        while !self.closed {
            let (transport, url) = (self.transport(), self.base());
            self.set(State::Connecting { transport, url: url.clone() });
            let end = match self.fetch_token().await {
                Err(e) => End {
                    transport_fault: false,
                    ..End::new(1011, format!("the token callback failed: {e}"), None)
                },
                Ok(()) => match transport {
                    Transport::WebSocket => self.websocket(&url).await,
                    Transport::Sse => self.sse(&url).await,
                    Transport::LongPoll => self.poll(&url).await,
                },
            };
            for s in self.subs.values_mut() {
                s.active = false;
            }
            if self.closed {
                break;
            }
            let Some(delay) = self.after(&end) else { return };
            let (transport, url) = (self.transport(), self.base());
            self.set(State::Reconnecting {
                transport,
                url,
                delay,
                attempt: self.attempt,
                code: end.code,
                reason: end.reason,
            });
            let wake = tokio::time::sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    cmd = self.cmds.recv() => match self.apply(cmd) {
                        Applied::Call(frame, reply) => self.queue(frame, reply),
                        _ if self.closed => break,
                        _ => {}
                    },
                }
            }
        }
        for (_, reply, _) in self.queued.drain(..) {
            let _ = reply.send(Err(error("closed", "the client is closed")));
        }
        self.subs.clear();
        self.set(State::Disconnected { code: 1000, reason: "closed by the client".into() });
    }

    /// The delay before the next attempt, or `None` to stop (the close code says not to retry).
    fn after(&mut self, end: &End) -> Option<Duration> {
        let refreshable = self.opts.token_fn.is_some();
        if (4000..4100).contains(&end.code) && !(end.code == 4002 && refreshable) {
            self.set(State::Disconnected { code: end.code, reason: end.reason.clone() });
            return None;
        }
        // Only a connection that lasted counts as a success: a flapping one keeps backing off.
        if end.opened.is_some_and(|at| at.elapsed() >= Duration::from_secs(10)) {
            self.attempt = 0;
        }
        // A transport that cannot connect, or drops at once at the network level, gives way to
        // the next one (the server's own close codes say nothing against the transport).
        let quick_drop = end.opened.is_none_or(|at| at.elapsed() < Duration::from_secs(5));
        if quick_drop && end.transport_fault && end.code < 4000 {
            self.failures += 1;
            if self.failures >= self.opts.fallback_after && self.opts.transports.len() > 1 {
                self.failures = 0;
                self.kind = (self.kind + 1) % self.opts.transports.len();
            }
        }
        let drain = end
            .reason
            .split("retry_after_ms=")
            .nth(1)
            .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok());
        let delay = if end.code == 4002 && self.attempt == 0 {
            self.attempt += 1;
            Duration::ZERO
        } else if (4200..4300).contains(&end.code) {
            Duration::from_millis(drain.unwrap_or(0)).min(self.opts.max_reconnect_delay)
        } else {
            self.attempt += 1;
            backoff(self.opts.min_reconnect_delay, self.opts.max_reconnect_delay, self.attempt)
        };
        if end.code >= 4200 || end.opened.is_none() || end.code == 1006 {
            self.url += 1; // Another node.
        }
        Some(delay)
    }

    async fn fetch_token(&mut self) -> Result<(), String> {
        self.token = match &self.opts.token_fn {
            Some(f) => Some(f().await?),
            None => self.opts.static_token.clone(),
        };
        self.token_at = now_unix();
        self.expires = self.token.as_deref().and_then(token_expiry);
        Ok(())
    }

    /// Holds a command until the connection opens (up to `connect_timeout`).
    fn queue(&mut self, frame: serde_json::Map<String, Value>, reply: oneshot::Sender<Result<Value, Error>>) {
        self.expire_queued();
        self.queued.push((frame, reply, Instant::now() + self.opts.connect_timeout));
    }

    fn expire_queued(&mut self) {
        let now = Instant::now();
        let (late, waiting): (Vec<_>, Vec<_>) =
            self.queued.drain(..).partition(|(_, _, deadline)| *deadline <= now);
        self.queued = waiting;
        for (_, reply, _) in late {
            let _ = reply.send(Err(error("not_connected", "not connected in time")));
        }
    }

    /// When the token should be refreshed (with a token function).
    fn refresh_at(&self) -> Option<tokio::time::Instant> {
        self.opts.token_fn.as_ref()?;
        let exp = self.expires?;
        let left = Duration::from_secs(u64::try_from(exp - now_unix()).unwrap_or(0));
        // Ahead by `refresh_before`, or by half the token's life if it is short.
        let life = Duration::from_secs(u64::try_from(exp - self.token_at).unwrap_or(0));
        let wait = left.saturating_sub(self.opts.refresh_before.min(life / 2)).max(Duration::from_secs(1));
        Some(tokio::time::Instant::now() + wait.min(Duration::from_secs(86_400)))
    }

    fn apply(&mut self, cmd: Option<Cmd>) -> Applied {
        match cmd {
            None | Some(Cmd::Close) => {
                self.closed = true;
                Applied::Nothing
            }
            Some(Cmd::Subscribe(channel, id, tx, since)) => {
                // Taking over a channel keeps its position.
                let position = since.or_else(|| self.subs.get(&channel).and_then(|s| s.position.clone()));
                self.subs.insert(channel, Sub { id, tx, position, active: false });
                Applied::Changed
            }
            Some(Cmd::Unsubscribe(channel, id)) => {
                if self.subs.get(&channel).is_some_and(|s| s.id == id) {
                    self.subs.remove(&channel);
                    Applied::Changed
                } else {
                    Applied::Nothing
                }
            }
            Some(Cmd::Call(frame, reply)) => Applied::Call(frame, reply),
        }
    }

    /// Hands a frame to its subscription: publications once each, in position order. Answers
    /// false when the application's queue is full: the connection then restarts, resuming
    /// after what was handed over (the driver never waits on the application, so commands and
    /// other channels go on).
    #[must_use]
    fn frame(&mut self, f: &Value) -> bool {
        let Some(channel) = f["channel"].as_str() else { return true };
        let transport = self.transport();
        let Some(sub) = self.subs.get_mut(channel) else { return true };
        let mut advance = None;
        let event = match f["type"].as_str() {
            Some("pub") => {
                let Ok(p) = serde_json::from_value::<Publication>(f.clone()) else { return true };
                if let Some(at) = &sub.position
                    && at.epoch == p.epoch
                    && p.position <= at.position
                {
                    return true;
                }
                advance = Some(Position { position: p.position, epoch: p.epoch.clone() });
                Event::Publication(p)
            }
            Some("subscribed") => {
                let position = Position {
                    position: f["position"].as_u64().unwrap_or(0),
                    epoch: f["epoch"].as_str().unwrap_or("").to_owned(),
                };
                let recovered = f["recovered"].as_bool();
                sub.active = true;
                // Replayed messages follow a recovered subscribe and advance the position.
                if recovered != Some(true) {
                    advance = Some(position.clone());
                }
                Event::Subscribed { position, recovered, transport }
            }
            Some(kind @ ("join" | "leave")) => {
                let client = f["client"].as_str().unwrap_or("").to_owned();
                let user = f["user"].as_str().unwrap_or("").to_owned();
                if kind == "join" { Event::Join { client, user } } else { Event::Leave { client, user } }
            }
            _ => return true,
        };
        match sub.tx.try_send(event) {
            Ok(()) => {
                if let Some(at) = advance {
                    sub.position = Some(at);
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.subs.remove(channel);
                true
            }
        }
    }

    /// The server refused a channel: its subscription ends with the reason.
    fn refused(&mut self, channel: &str, code: &str, message: &str) {
        if let Some(sub) = self.subs.remove(channel) {
            let _ = sub.tx.try_send(Event::Refused { code: code.to_owned(), message: message.to_owned() });
        }
    }

    fn opened(&mut self, url: &str) -> Instant {
        self.failures = 0;
        self.set(State::Connected { transport: self.transport(), url: url.to_owned() });
        Instant::now()
    }

    /// The channels one SSE stream or poll carries; past the server's 64, subscriptions are refused.
    fn http_channels(&mut self) -> Vec<String> {
        let extra: Vec<String> = self.subs.keys().skip(MAX_HTTP_CHANNELS).cloned().collect();
        for channel in extra {
            self.refused(
                &channel,
                "too_many_subscriptions",
                "SSE and long polling carry at most 64 channels",
            );
        }
        self.subs.keys().cloned().collect()
    }

    fn since(&self, channels: &[String]) -> String {
        channels
            .iter()
            .map(|c| match self.subs.get(c).and_then(|s| s.position.as_ref()) {
                Some(p) => format!("{}:{}", p.position, p.epoch),
                None => String::new(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn http_url(&self, base: &str, path: &str, channels: &[String], extra: &[(&str, String)]) -> String {
        let mut url = reqwest::Url::parse(&format!("{base}{path}")).expect("a base URL");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("channels", &channels.join(","));
            if let Some(t) = &self.opts.tenant {
                q.append_pair("tenant", t);
            }
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        url.to_string()
    }

    /// A GET to an HTTP transport, the token in `Authorization` (out of URLs and their logs).
    fn get(&self, url: String) -> reqwest::RequestBuilder {
        self.authorized(self.http.get(url))
    }

    /// `request` with the token in `Authorization`, when there is one.
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    /// Ends the long-poll session `cursor` names (`POST /v1/poll/close`), so it leaves presence
    /// at once instead of when it would have gone idle. Best effort, at most 5 s: a failure
    /// leaves the session to its idle end.
    fn end_poll_session(
        &self,
        base: &str,
        channels: &[String],
        cursor: String,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let url = self.http_url(base, "/v1/poll/close", channels, &[("cursor", cursor)]);
        let request = self.authorized(self.http.post(url).timeout(Duration::from_secs(5)));
        async move {
            let _ = request.send().await;
        }
    }

    /// A refused HTTP request: a channel to drop (`Ok`), or how the connection ended.
    async fn http_refusal(
        &mut self,
        response: reqwest::Response,
        opened: Option<Instant>,
    ) -> Result<(), End> {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["code"].as_str().unwrap_or("").to_owned();
        if body["field"] == "channels"
            && let Some(channel) = body["channel"].as_str()
            && !RETRYABLE.contains(&code.as_str())
        {
            self.refused(channel, &code, body["detail"].as_str().unwrap_or(""));
            return Ok(());
        }
        Err(End::new(problem_close(status, &code), code, opened))
    }

    // ---- WebSocket ----

    async fn websocket(&mut self, base: &str) -> End {
        let mut url = reqwest::Url::parse(&format!("{base}/v1/ws")).expect("a base URL");
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        let _ = url.set_scheme(scheme);
        if let Some(t) = &self.opts.tenant {
            url.query_pairs_mut().append_pair("tenant", t);
        }
        let connecting = tokio_tungstenite::connect_async(url.as_str());
        let ws = match tokio::time::timeout(self.opts.connect_timeout, connecting).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return End::new(1006, e.to_string(), None),
            Err(_) => return End::new(1006, "connect timeout", None),
        };
        let (mut sink, mut stream) = ws.split();
        let mut opened: Option<Instant> = None;
        macro_rules! send {
            ($frame:expr) => {
                if sink.send(Message::text($frame.to_string())).await.is_err() {
                    return End::new(1006, "write failed", opened);
                }
            };
        }
        if let Some(token) = &self.token {
            send!(json!({"type": "connect", "id": 0, "token": token}));
        }
        enum Pending {
            Reply(oneshot::Sender<Result<Value, Error>>),
            Subscribe(String),
            Refresh,
        }
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut subscribed: HashSet<String> = HashSet::new();
        let mut seq = 0u64;
        let deadline = tokio::time::sleep(self.opts.connect_timeout);
        tokio::pin!(deadline);
        let mut ping = tokio::time::interval(Duration::from_secs(25));
        let mut last_seen = Instant::now();
        let mut ping_every = Duration::from_secs(25);
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let refresh = tokio::time::sleep_until(far());
        tokio::pin!(refresh);
        // Channels refused for a passing reason, subscribed again after a moment.
        let mut held: HashMap<String, tokio::time::Instant> = HashMap::new();
        let retry = tokio::time::sleep_until(far());
        tokio::pin!(retry);
        loop {
            // Subscribe what is new, unsubscribe what went.
            if opened.is_some() {
                let now = tokio::time::Instant::now();
                held.retain(|_, at| *at > now);
                retry.as_mut().reset(held.values().min().copied().unwrap_or_else(far));
                let wanted: Vec<String> = self
                    .subs
                    .keys()
                    .filter(|c| !subscribed.contains(*c) && !held.contains_key(*c))
                    .cloned()
                    .collect();
                for channel in wanted {
                    seq += 1;
                    let mut f = json!({"type": "subscribe", "id": seq, "channel": channel});
                    if let Some(p) = self.subs.get(&channel).and_then(|s| s.position.clone()) {
                        f["since"] = json!(p);
                    }
                    pending.insert(seq, Pending::Subscribe(channel.clone()));
                    subscribed.insert(channel);
                    send!(f);
                }
                let gone: Vec<String> =
                    subscribed.iter().filter(|c| !self.subs.contains_key(*c)).cloned().collect();
                for channel in gone {
                    subscribed.remove(&channel);
                    seq += 1;
                    send!(json!({"type": "unsubscribe", "id": seq, "channel": channel}));
                }
            }
            tokio::select! {
                msg = stream.next() => {
                    last_seen = Instant::now();
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame.map_or((1005, String::new()), |CloseFrame { code, reason }| (u16::from(code), reason.to_string()));
                            return End::new(code, reason, opened);
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return End::new(1006, e.to_string(), opened),
                        None => return End::new(1006, "connection lost", opened),
                    };
                    let Ok(f) = serde_json::from_str::<Value>(&text) else { continue };
                    if f["type"] == "connected" {
                        opened = Some(self.opened(base));
                        ping_every = Duration::from_millis(f["ping_interval_ms"].as_u64().unwrap_or(25_000).max(1000));
                        ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
                        self.expires = f["expires_at"].as_i64().or(self.expires);
                        refresh.as_mut().reset(self.refresh_at().unwrap_or_else(far));
                        // Commands sent while connecting go out now.
                        self.expire_queued();
                        for (mut frame, reply, _) in std::mem::take(&mut self.queued) {
                            seq += 1;
                            frame.insert("id".into(), json!(seq));
                            pending.insert(seq, Pending::Reply(reply));
                            send!(Value::Object(frame));
                        }
                        continue;
                    }
                    let id = f["id"].as_u64();
                    match id.and_then(|id| pending.remove(&id)) {
                        Some(Pending::Reply(reply)) => {
                            let answer = if f["type"] == "error" {
                                Err(error(f["code"].as_str().unwrap_or("error"), f["message"].as_str().unwrap_or("")))
                            } else {
                                Ok(f)
                            };
                            let _ = reply.send(answer);
                        }
                        Some(Pending::Subscribe(channel)) if f["type"] == "error" => {
                            subscribed.remove(&channel);
                            let (code, message) = (f["code"].as_str().unwrap_or("error"), f["message"].as_str().unwrap_or(""));
                            if RETRYABLE.contains(&code) {
                                let wait = Duration::from_millis(1000 + rand::random::<u64>() % 1000);
                                held.insert(channel, tokio::time::Instant::now() + wait);
                            } else {
                                self.refused(&channel, code, message);
                            }
                        }
                        Some(Pending::Refresh) => {
                            if let Some(exp) = f["expires_at"].as_i64() {
                                self.expires = Some(exp);
                            }
                            refresh.as_mut().reset(if f["type"] == "error" { tokio::time::Instant::now() + Duration::from_secs(5) } else { self.refresh_at().unwrap_or_else(far) });
                        }
                        _ if !self.frame(&f) => return End::new(4100, "the application does not keep up", opened),
                        _ => {}
                    }
                }
                cmd = self.cmds.recv() => match self.apply(cmd) {
                    Applied::Call(mut frame, reply) => {
                        if opened.is_none() {
                            self.queue(frame, reply);
                            continue;
                        }
                        seq += 1;
                        frame.insert("id".into(), json!(seq));
                        pending.insert(seq, Pending::Reply(reply));
                        send!(Value::Object(frame));
                    }
                    _ if self.closed => {
                        let normal = CloseFrame { code: 1000.into(), reason: "closed by the client".into() };
                        let _ = sink.send(Message::Close(Some(normal))).await;
                        return End::new(1000, "closed by the client", opened);
                    }
                    _ => {}
                },
                _ = ping.tick(), if opened.is_some() => {
                    // Scripts cannot see WebSocket pings: a `ping` command proves the connection.
                    if last_seen.elapsed() > ping_every + Duration::from_secs(10) {
                        return End::new(4102, "ping_timeout", opened);
                    }
                    seq += 1;
                    send!(json!({"type": "ping", "id": seq}));
                }
                _ = &mut refresh => {
                    match self.fetch_token().await {
                        Ok(()) => {
                            seq += 1;
                            pending.insert(seq, Pending::Refresh);
                            let token = self.token.clone().unwrap_or_default();
                            send!(json!({"type": "refresh", "id": seq, "token": token}));
                            refresh.as_mut().reset(far());
                        }
                        Err(_) => refresh.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5)),
                    }
                }
                _ = &mut retry => {}
                _ = &mut deadline, if opened.is_none() => return End::new(1006, "connect timeout", None),
            }
        }
    }

    // ---- Server-Sent Events ----

    async fn sse(&mut self, base: &str) -> End {
        let mut opened: Option<Instant> = None;
        'stream: loop {
            let channels = self.http_channels();
            if channels.is_empty() {
                // Nothing to listen to: wait for a subscription.
                let cmd = self.cmds.recv().await;
                match self.apply(cmd) {
                    Applied::Call(_, reply) => {
                        let _ = reply.send(Err(error(
                            "not_supported",
                            "SSE only receives; commands need the WebSocket",
                        )));
                    }
                    _ if self.closed => return End::new(1000, "closed by the client", opened),
                    _ => {}
                }
                continue;
            }
            let url = self.http_url(base, "/v1/sse", &channels, &[("since", self.since(&channels))]);
            let request = self.get(url).header("accept", "text/event-stream").send();
            let mut response = match tokio::time::timeout(self.opts.connect_timeout, request).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return End::new(1006, e.to_string(), opened),
                Err(_) => return End::new(1006, "connect timeout", opened),
            };
            if !response.status().is_success() {
                match self.http_refusal(response, opened).await {
                    Ok(()) => continue,
                    Err(end) => return end,
                }
            }
            let refresh = tokio::time::sleep_until(
                self.refresh_at()
                    .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)),
            );
            tokio::pin!(refresh);
            // Bytes until a whole event is in: a character may be split between chunks.
            let mut buf: Vec<u8> = Vec::new();
            loop {
                tokio::select! {
                    chunk = tokio::time::timeout(self.opts.idle_timeout, response.chunk()) => {
                        let bytes = match chunk {
                            Err(_) => return End::new(4102, "ping_timeout", opened),
                            Ok(Err(e)) => return End::new(1006, e.to_string(), opened),
                            Ok(Ok(None)) => return End::new(1006, "stream ended", opened),
                            Ok(Ok(Some(b))) => b,
                        };
                        buf.extend_from_slice(&bytes);
                        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                            let raw: Vec<u8> = buf.drain(..end + 2).collect();
                            let block = String::from_utf8_lossy(&raw);
                            let data: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("data:")).map(|l| l.strip_prefix(' ').unwrap_or(l)).collect();
                            if data.is_empty() {
                                continue;
                            }
                            let Ok(f) = serde_json::from_str::<Value>(&data.join("\n")) else { continue };
                            match f["type"].as_str() {
                                Some("connected") if opened.is_none() => opened = Some(self.opened(base)),
                                Some("connected") => {}
                                Some("disconnect") => {
                                    let code = f["code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(1006);
                                    return End::new(code, f["reason"].as_str().unwrap_or(""), opened);
                                }
                                _ if !self.frame(&f) => return End::new(4100, "the application does not keep up", opened),
                                _ => {}
                            }
                        }
                    }
                    cmd = self.cmds.recv() => match self.apply(cmd) {
                        Applied::Call(_, reply) => {
                            let _ = reply.send(Err(error("not_supported", "SSE only receives; commands need the WebSocket")));
                        }
                        _ if self.closed => return End::new(1000, "closed by the client", opened),
                        // A new channel list: a new stream, resuming every channel.
                        Applied::Changed => continue 'stream,
                        Applied::Nothing => {}
                    },
                    // The token is in the URL: reopen with a fresh one, resuming.
                    _ = &mut refresh => {
                        if self.fetch_token().await.is_ok() {
                            continue 'stream;
                        }
                        refresh.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
                    }
                }
            }
        }
    }

    // ---- long polling ----

    async fn poll(&mut self, base: &str) -> End {
        let mut opened: Option<Instant> = None;
        let mut cursor: Option<String> = None;
        let mut last_channels: Vec<String> = Vec::new();
        loop {
            let channels = self.http_channels();
            if channels != last_channels {
                // A cursor names its channel list: the old list's session ends now.
                if let Some(old) = cursor.take() {
                    tokio::spawn(self.end_poll_session(base, &last_channels, old));
                }
                last_channels = channels.clone();
            }
            if channels.is_empty() {
                let cmd = self.cmds.recv().await;
                match self.apply(cmd) {
                    Applied::Call(_, reply) => {
                        let _ = reply.send(Err(error("not_supported", "long polling only receives")));
                    }
                    _ if self.closed => return End::new(1000, "closed by the client", opened),
                    _ => {}
                }
                continue;
            }
            if self.refresh_at().is_some_and(|at| at <= tokio::time::Instant::now()) {
                let _ = self.fetch_token().await;
            }
            // A new session answers at once with its confirmations; later polls wait.
            let wait = if cursor.is_some() { self.opts.poll_timeout.as_secs() } else { 0 };
            let mut extra = vec![("timeout", wait.to_string())];
            match &cursor {
                Some(c) => extra.push(("cursor", c.clone())),
                None => extra.push(("since", self.since(&channels))),
            }
            let url = self.http_url(base, "/v1/poll", &channels, &extra);
            let request = self.get(url).timeout(self.opts.poll_timeout + Duration::from_secs(15)).send();
            tokio::pin!(request);
            let response = loop {
                tokio::select! {
                    r = &mut request => break Some(r),
                    cmd = self.cmds.recv() => match self.apply(cmd) {
                        Applied::Call(_, reply) => {
                            let _ = reply.send(Err(error("not_supported", "long polling only receives")));
                        }
                        _ if self.closed => {
                            if let Some(cursor) = cursor.take() {
                                self.end_poll_session(base, &last_channels, cursor).await;
                            }
                            return End::new(1000, "closed by the client", opened);
                        }
                        // A new channel list: poll again at once, from the positions.
                        Applied::Changed => break None,
                        Applied::Nothing => {}
                    },
                }
            };
            let Some(response) = response else { continue };
            let response = match response {
                Ok(r) => r,
                Err(e) => return End::new(1006, e.to_string(), opened),
            };
            if !response.status().is_success() {
                match self.http_refusal(response, opened).await {
                    Ok(()) => continue,
                    Err(end) => return end,
                }
            }
            let Ok(body) = response.json::<Value>().await else {
                return End::new(1006, "unreadable answer", opened);
            };
            if opened.is_none() {
                opened = Some(self.opened(base));
            }
            for f in body["subscribed"].as_array().into_iter().flatten() {
                if !self.frame(f) {
                    return End::new(4100, "the application does not keep up", opened);
                }
            }
            for channel in body["unrecovered"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let confirmed =
                    body["subscribed"].as_array().is_some_and(|s| s.iter().any(|f| f["channel"] == channel));
                if !confirmed {
                    let f = json!({"type": "subscribed", "channel": channel, "position": 0, "epoch": "", "recovered": false});
                    if !self.frame(&f) {
                        return End::new(4100, "the application does not keep up", opened);
                    }
                    if let Some(s) = self.subs.get_mut(channel) {
                        s.position = None;
                    }
                }
            }
            for m in body["messages"].as_array().into_iter().flatten() {
                if !self.frame(m) {
                    return End::new(4100, "the application does not keep up", opened);
                }
            }
            cursor = body["cursor"].as_str().map(str::to_owned);
            if let Some(ms) = body["retry_after_ms"].as_u64() {
                return End::new(4200, format!("shutting_down retry_after_ms={ms}"), opened);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_inside_its_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(800));
        let mut seen = HashSet::new();
        for attempt in 0..12u32 {
            for _ in 0..200 {
                let d = backoff(min, max, attempt);
                let cap = (min * 2u32.pow(attempt)).min(max);
                assert!(d >= min && d <= cap, "attempt {attempt}: {d:?} outside {min:?}..={cap:?}");
                seen.insert(d.as_millis());
            }
        }
        assert!(seen.len() > 300, "jittered: {} distinct delays", seen.len());
    }

    #[test]
    fn token_expiry_is_read_from_the_payload() {
        // {"alg":"HS256"}.{"sub":"a","exp":1767225600}.sig
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIiwiZXhwIjoxNzY3MjI1NjAwfQ.c2ln";
        assert_eq!(token_expiry(token), Some(1_767_225_600));
        assert_eq!(token_expiry("not a token"), None);
    }

    #[test]
    fn close_codes_of_problems() {
        assert_eq!(problem_close(401, "token_expired"), 4002);
        assert_eq!(problem_close(401, "bad_signature"), 4001);
        assert_eq!(problem_close(503, "unavailable"), 1011);
        assert_eq!(problem_close(403, "disconnected"), 4006);
    }
}
