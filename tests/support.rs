//! Test support: start the real `herald` binary on port 0 with a throw-away data directory and,
//! for PostgreSQL runs, a database of its own; talk to it over real HTTP.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the node keeps its data.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres { url: String },
}

/// A PostgreSQL database created for one test and dropped after it.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &self.admin_url,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A fresh database on the PostgreSQL server named by `HERALD_TEST_POSTGRES_URL`, or `None`
/// (with a one-line notice) when that is unset outside CI. Under `CI=true` a missing PostgreSQL
/// fails the test.
pub fn postgres_database() -> Option<PgDatabase> {
    let Ok(admin_url) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but HERALD_TEST_POSTGRES_URL is unset: run the tests with `cargo xtask test`");
        }
        eprintln!(
            "skipping PostgreSQL test: set HERALD_TEST_POSTGRES_URL or run `cargo xtask test` (needs PostgreSQL installed)"
        );
        return None;
    };
    let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
    let out = std::process::Command::new("psql")
        .args([&admin_url, "-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
    let (base, _) = admin_url.rsplit_once('/').expect("URL has a database part");
    Some(PgDatabase { url: format!("{base}/{name}"), admin_url, name })
}

/// A running node.
pub struct Herald {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub stdout_lines: Vec<String>,
    log_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

/// Options for starting a node.
#[derive(Default, Clone)]
pub struct Start {
    pub database_url: Option<String>,
    pub admin_token: Option<String>,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Herald {
    /// Starts a node on SQLite with the test admin token.
    pub async fn sqlite() -> Herald {
        Herald::start(Start { admin_token: Some(ADMIN_TOKEN.into()), ..Default::default() }).await
    }

    /// Starts a node on `database_url` (SQLite in its data dir when `None`).
    pub async fn with_database(database_url: Option<&str>) -> Herald {
        Herald::start(Start {
            admin_token: Some(ADMIN_TOKEN.into()),
            database_url: database_url.map(str::to_owned),
            ..Default::default()
        })
        .await
    }

    pub async fn start(opts: Start) -> Herald {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        Self::spawn(opts, data_dir, Some(dir)).await
    }

    async fn spawn(opts: Start, data_dir: PathBuf, dir: Option<tempfile::TempDir>) -> Herald {
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(&data_dir);
        if let Some(url) = &opts.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.args(&opts.extra_args);
        // The node must see only what the test gives it.
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        if let Some(token) = &opts.admin_token {
            cmd.env("HERALD_ADMIN_TOKEN", token);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(log).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn herald");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let base = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                seen.push(line.clone());
                if let Some(url) = line.strip_prefix("Herald listening on ") {
                    return Some(url.trim().to_owned());
                }
            }
            None
        })
        .await;
        let base = match base {
            Ok(Some(base)) => base,
            other => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("herald did not start ({other:?}); stdout: {seen:?}\nlog:\n{log}");
            }
        };
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Herald {
            child,
            base,
            data_dir,
            database_url: opts.database_url,
            stdout_lines: seen,
            log_path,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the node (SIGTERM, then kill) and starts it again on the same data.
    pub async fn restart(mut self) -> Herald {
        self.stop().await;
        let dir = self._dir.take();
        let opts = Start {
            database_url: self.database_url.clone(),
            admin_token: Some(ADMIN_TOKEN.into()),
            ..Default::default()
        };
        Self::spawn(opts, self.data_dir.clone(), dir).await
    }

    /// Starts a node on the data of a stopped one, with other options.
    pub async fn restart_as(mut stopped: Herald, mut opts: Start) -> Herald {
        opts.database_url = stopped.database_url.clone();
        let dir = stopped._dir.take();
        Self::spawn(opts, stopped.data_dir.clone(), dir).await
    }

    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// Checks, through `/readyz`, which database the node really uses.
    pub async fn assert_backend(&self, expected: &str) {
        let ready = self.anonymous().get("/readyz").await.expect(200);
        assert_eq!(ready["database"], expected);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn admin(&self) -> Client {
        self.client(ADMIN_TOKEN)
    }

    pub fn client(&self, token: &str) -> Client {
        Client { http: self.http.clone(), base: self.base.clone(), token: Some(token.to_owned()) }
    }

    pub fn anonymous(&self) -> Client {
        Client { http: self.http.clone(), base: self.base.clone(), token: None }
    }
}

/// An HTTP client bound to one node and one credential.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

/// A response: status, content type and JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl Reply {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        self.body
    }

    /// Asserts a problem response with this status and code; returns the problem.
    #[track_caller]
    pub fn problem(self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert_eq!(self.content_type, "application/problem+json", "body: {}", self.body);
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert_eq!(self.body["status"], status, "body: {}", self.body);
        assert_eq!(self.body["type"], format!("urn:herald:problem:{code}"));
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        self.body
    }
}

impl Client {
    pub async fn raw(&self, method: Method, path: &str, body: Option<(&str, Vec<u8>)>) -> Reply {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            req = req.header("content-type", content_type).body(bytes);
        }
        let resp = req.timeout(Duration::from_secs(30)).send().await.expect("request sent");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply { status, content_type, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.raw(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.raw(Method::DELETE, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.raw(Method::POST, path, Some(("application/json", body.to_string().into_bytes()))).await
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        self.raw(Method::POST, path, None).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.raw(Method::PATCH, path, Some(("application/json", body.to_string().into_bytes()))).await
    }

    pub async fn post_bytes(&self, path: &str, content_type: &str, bytes: Vec<u8>) -> Reply {
        self.raw(Method::POST, path, Some((content_type, bytes))).await
    }
}

/// Creates a tenant and an API key with `scopes`; returns the key's secret.
pub async fn tenant_with_key(admin: &Client, tenant: &str, scopes: &[&str]) -> String {
    admin.post("/v1/tenants", serde_json::json!({"id": tenant, "name": tenant})).await.expect(201);
    let key = admin
        .post(
            &format!("/v1/tenants/{tenant}/api-keys"),
            serde_json::json!({"name": "test", "scopes": scopes}),
        )
        .await
        .expect(201);
    key["secret"].as_str().expect("secret").to_owned()
}

/// Declares a test that runs once on SQLite and once on PostgreSQL. The body is an async fn
/// taking the running node.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let node = $crate::support::Herald::sqlite().await;
                    node.assert_backend("sqlite").await;
                    super::$name(node).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let Some(db) = $crate::support::postgres_database() else { return };
                    let node = $crate::support::Herald::with_database(Some(&db.url)).await;
                    node.assert_backend("postgres").await;
                    super::$name(node).await;
                }
            }
        )*
    };
}

// ---- realtime helpers ---------------------------------------------------------------------

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

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

    /// The node's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Kills the node with SIGKILL (no shutdown at all) and waits for it to exit.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
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

/// A tenant ready for realtime tests: an all-scope API key and an HS256 signing key.
pub struct RealtimeTenant {
    pub id: String,
    pub key: Client,
    pub hs_secret: String,
}

pub async fn realtime_tenant(h: &Herald, id: &str) -> RealtimeTenant {
    let admin = h.admin();
    admin.post("/v1/tenants", serde_json::json!({"id": id, "name": id})).await.expect(201);
    let key = admin
        .post(
            &format!("/v1/tenants/{id}/api-keys"),
            serde_json::json!({"name": "all", "scopes": ["publish", "channels:write", "keys:write", "tokens:issue", "history:read", "presence:read", "stats:read"]}),
        )
        .await
        .expect(201);
    let hs = admin
        .post(
            &format!("/v1/tenants/{id}/signing-keys"),
            serde_json::json!({"algorithm": "HS256", "kid": "hs"}),
        )
        .await
        .expect(201);
    RealtimeTenant {
        id: id.to_owned(),
        key: h.client(key["secret"].as_str().unwrap()),
        hs_secret: hs["secret"].as_str().unwrap().to_owned(),
    }
}

impl RealtimeTenant {
    /// Mints a client token through the API with these capabilities.
    pub async fn token(&self, sub: &str, caps: Value) -> String {
        self.token_ttl(sub, caps, 3600).await
    }

    pub async fn token_ttl(&self, sub: &str, caps: Value, ttl: u64) -> String {
        let minted = self
            .key
            .post(
                &format!("/v1/tenants/{}/tokens", self.id),
                serde_json::json!({"sub": sub, "capabilities": caps, "ttl_seconds": ttl}),
            )
            .await
            .expect(201);
        minted["token"].as_str().unwrap().to_owned()
    }

    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        self.key
            .post(
                &format!("/v1/tenants/{}/channels/{channel}/messages", self.id),
                serde_json::json!({"data": data}),
            )
            .await
            .expect(200)
    }
}

// ---- SSE and long-poll helpers -------------------------------------------------------------

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
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/poll{query}"))
        .timeout(Duration::from_secs(70))
        .send()
        .await
        .expect("poll sent");
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

// ---- network faults and browsers -----------------------------------------------------------

/// A TCP proxy in front of a node whose live connections can be cut, as a network drop would.
/// It records the request head of every connection it carries.
pub struct CutProxy {
    pub addr: std::net::SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: &str) -> CutProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let heads: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let (c, hd) = (conns.clone(), heads.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                let upstream = upstream.clone();
                let heads = hd.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let mut first = vec![0u8; 8192];
                    let Ok(n) = client.read(&mut first).await else { return };
                    heads.lock().unwrap().push(String::from_utf8_lossy(&first[..n]).into_owned());
                    if server.write_all(&first[..n]).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        CutProxy { addr, conns, heads, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every connection the proxy carries now; new ones are still accepted.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Serves one HTML page on its own origin (`http://127.0.0.1:PORT`).
pub struct PageServer {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    pub async fn start(html: String) -> PageServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let html = html.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        PageServer { url, task }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A page open in headless Chromium (driven by tests/browser/run_page.mjs), reporting JSON lines.
pub struct BrowserPage {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

/// Where the browser tooling is, from `cargo xtask test`; `None` (with a notice) outside CI.
pub fn browser_tooling() -> Option<(String, PathBuf)> {
    let chromium = std::env::var("HERALD_TEST_CHROMIUM").ok();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    match chromium {
        Some(c) if dir.join("node_modules/playwright-core").exists() => Some((c, dir)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but the browser tooling is missing: run the tests with `cargo xtask test`")
        }
        _ => {
            eprintln!(
                "skipping browser test: run `cargo xtask test` (needs Chromium: apt-get install chromium; and npm)"
            );
            None
        }
    }
}

impl BrowserPage {
    pub async fn open(url: &str, screenshot: Option<&std::path::Path>) -> Option<BrowserPage> {
        let (chromium, dir) = browser_tooling()?;
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("run_page.mjs")).arg(url);
        if let Some(path) = screenshot {
            cmd.arg(path);
        }
        let mut child = cmd
            .env("HERALD_TEST_CHROMIUM", chromium)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut page = BrowserPage { child, lines };
        let loaded = page.next().await;
        assert_eq!(loaded["loaded"], true, "{loaded}");
        Some(page)
    }

    /// The next line the page reported.
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .expect("the page reports in time")
            .expect("read")
            .expect("browser still running");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("JSON from the page: {line}"))
    }

    pub async fn close(mut self) {
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"quit\n").await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}
