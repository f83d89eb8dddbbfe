//! The servers under test: a Herald node (started by the tool or already running), a Herald
//! cluster the tool starts (NATS and several nodes), and the tool's own baseline server, each
//! node seen as a pid to measure, a WebSocket URL to connect to and a publish endpoint.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Herald,
    Baseline,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Herald => "herald",
            Kind::Baseline => "baseline",
        }
    }
}

/// A server the scenarios run against.
pub struct Server {
    pub kind: Kind,
    /// `http://IP:PORT`.
    pub base: String,
    /// Process to measure (RSS, CPU); unknown when attached without `--server-pid`.
    pub pid: Option<u32>,
    /// Tenant the bench created (Herald) or a fixed name (baseline).
    pub tenant: String,
    /// WebSocket URL including the client token.
    pub ws_url: String,
    /// Bearer credential for publishing (Herald's API key).
    pub publish_auth: Option<String>,
    child: Option<Child>,
    /// Where a spawned server's stderr goes.
    log_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

/// How to start one `herald serve` (see [`Server::start_herald`]).
struct HeraldNode<'a> {
    /// Holds the node's data directory and log.
    dir: &'a Path,
    /// `herald` for a single node, `nodeN` in a cluster: the data directory (`<dir>/<name>`) and
    /// the log (`<dir>/<name>.log`).
    name: &'a str,
    admin_token: &'a str,
    args: &'a [OsString],
    env: &'a [(String, String)],
}

/// A value unlikely to repeat across runs, for ids and the admin token.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// `taskset -c CPU PROGRAM` when pinning, else `PROGRAM`.
fn command(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpu.to_string()).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Reads the child's stdout until a line starting with `prefix`; returns the rest of it.
/// Keeps draining stdout afterwards so the child never blocks on a full pipe.
async fn await_line(child: &mut Child, prefix: &str, log: Option<&Path>) -> anyhow::Result<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok::<_, std::io::Error>(Some(rest.trim().to_owned()));
            }
            seen.push(line);
        }
        Ok(None)
    })
    .await;
    match found {
        Ok(Ok(Some(rest))) => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(rest)
        }
        other => {
            let log = log.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
            bail!("server did not start ({other:?}); stdout: {seen:?}\nstderr:\n{log}")
        }
    }
}

impl Server {
    /// Starts `herald serve` on port 0 with a throw-away data directory and sets up a tenant.
    pub async fn spawn_herald(
        path: &Path,
        cpu: Option<usize>,
        env: &[(String, String)],
    ) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let admin_token = format!("bench-admin-{}", unique());
        let node = HeraldNode { dir: dir.path(), name: "herald", admin_token: &admin_token, args: &[], env };
        let mut server = Server::start_herald(path, cpu, &node).await?;
        server._dir = Some(dir);
        server.prepare_herald(&admin_token).await?;
        Ok(server)
    }

    /// Starts one `herald serve` on port 0 (data directory `<dir>/<name>`, log `<dir>/<name>.log`)
    /// and waits until it listens; sets up nothing.
    async fn start_herald(path: &Path, cpu: Option<usize>, node: &HeraldNode<'_>) -> anyhow::Result<Server> {
        if !path.exists() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p herald-server`",
                path.display()
            );
        }
        let log_path = node.dir.join(format!("{}.log", node.name));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = command(path, cpu);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(node.dir.join(node.name))
            .arg("--log-level")
            .arg("warn")
            .args(node.args);
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HERALD_ADMIN_TOKEN", node.admin_token);
        // Load comes from a few source addresses, thousands of connections each.
        cmd.env("HERALD_MAX_CONNECTIONS_PER_IP", "0");
        for (k, v) in node.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(log).stdin(Stdio::null()).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", path.display()))?;
        let pid = child.id();
        let base = await_line(&mut child, "Herald listening on ", Some(&log_path)).await?;
        Ok(Server {
            kind: Kind::Herald,
            base,
            pid,
            tenant: String::new(),
            ws_url: String::new(),
            publish_auth: None,
            child: Some(child),
            log_path: Some(log_path),
            _dir: None,
        })
    }

    /// Waits until `/readyz` answers 200 (in cluster mode: the database and NATS are reachable).
    async fn await_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = &mut self.child
                && let Some(exit) = child.try_wait()?
            {
                bail!("{} exited ({exit}):\n{}", self.base, self.log_tail());
            }
            let answer =
                http.get(format!("{}/readyz", self.base)).timeout(Duration::from_secs(5)).send().await;
            match answer {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                other if tokio::time::Instant::now() >= deadline => {
                    bail!("{} not ready within 60 s ({other:?}):\n{}", self.base, self.log_tail())
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Uses the tenant, API key and client token that `other` (a node of the same cluster) set
    /// up: every node reads them from the shared database.
    fn share_tenant(&mut self, other: &Server) {
        self.tenant.clone_from(&other.tenant);
        self.publish_auth.clone_from(&other.publish_auth);
        let query = other.ws_url.split_once('?').map_or("", |(_, q)| q);
        self.ws_url = format!("{}/v1/ws?{query}", self.base.replacen("http://", "ws://", 1));
    }

    /// Uses a running Herald node; creates a tenant on it with the admin token.
    pub async fn attach_herald(url: &str, admin_token: &str, pid: Option<u32>) -> anyhow::Result<Server> {
        let mut server = Server {
            kind: Kind::Herald,
            base: url.trim_end_matches('/').to_owned(),
            pid,
            tenant: String::new(),
            ws_url: String::new(),
            publish_auth: None,
            child: None,
            log_path: None,
            _dir: None,
        };
        server.prepare_herald(admin_token).await?;
        Ok(server)
    }

    /// Creates the bench's tenant, an API key (publish, tokens:issue), an HS256 signing key,
    /// and mints the client token every connection uses.
    async fn prepare_herald(&mut self, admin_token: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let tenant = format!("bench-{}", unique());
        let post = |path: String, token: String, body: Value| {
            let req = http.post(format!("{}{path}", self.base)).bearer_auth(token).json(&body);
            async move {
                let resp = req.timeout(Duration::from_secs(30)).send().await.context("request")?;
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    bail!("POST {path}: {status} {body}");
                }
                Ok(body)
            }
        };
        let admin = admin_token.to_owned();
        post("/v1/tenants".into(), admin.clone(), json!({"id": tenant, "name": "herald-bench"})).await?;
        let key = post(
            format!("/v1/tenants/{tenant}/api-keys"),
            admin.clone(),
            json!({"name": "herald-bench", "scopes": ["publish", "tokens:issue"]}),
        )
        .await?;
        let key = key["secret"].as_str().ok_or_else(|| anyhow!("no API key secret"))?.to_owned();
        post(
            format!("/v1/tenants/{tenant}/signing-keys"),
            admin,
            json!({"algorithm": "HS256", "kid": "bench"}),
        )
        .await?;
        // Channels `presence:…` are registered in presence (the cluster scenario's --presence).
        post(
            format!("/v1/tenants/{tenant}/namespaces"),
            admin_token.to_owned(),
            json!({"name": "presence", "options": {"presence": true}}),
        )
        .await?;
        let minted = post(
            format!("/v1/tenants/{tenant}/tokens"),
            key.clone(),
            json!({"sub": "bench", "capabilities": {"*": ["subscribe"]}, "ttl_seconds": 86_400}),
        )
        .await?;
        let token = minted["token"].as_str().ok_or_else(|| anyhow!("no token minted"))?;
        self.ws_url = format!("{}/v1/ws?token={token}", self.base.replacen("http://", "ws://", 1));
        self.tenant = tenant;
        self.publish_auth = Some(key);
        Ok(())
    }

    /// Client tokens (subscribe to everything) of `n` distinct users, `bench-0` …, minted
    /// through the API.
    pub async fn mint_tokens(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let http = reqwest::Client::new();
        let key = self.publish_auth.clone().context("no API key")?;
        let url = format!("{}/v1/tenants/{}/tokens", self.base, self.tenant);
        let mint = |i: usize| {
            let req = http.post(&url).bearer_auth(&key).json(&json!({
                "sub": format!("bench-{i}"),
                "capabilities": {"*": ["subscribe"]},
                "ttl_seconds": 86_400,
            }));
            async move {
                let resp = req.timeout(Duration::from_secs(30)).send().await.context("minting a token")?;
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                anyhow::ensure!(status.is_success(), "minting a token: {status} {body}");
                body["token"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no token minted"))
            }
        };
        let minted: Vec<anyhow::Result<String>> =
            futures_util::stream::iter((0..n).map(mint)).buffered(16).collect().await;
        minted.into_iter().collect()
    }

    /// Starts `herald-bench baseline-server` (this same binary) on port 0.
    pub async fn spawn_baseline(
        cpu: Option<usize>,
        write_buffer: usize,
        library: crate::baseline::Library,
    ) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut cmd = command(&exe, cpu);
        cmd.arg("baseline-server")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--write-buffer")
            .arg(write_buffer.to_string())
            .arg("--library")
            .arg(library.name());
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null()).kill_on_drop(true);
        let mut child = cmd.spawn().context("starting the baseline server")?;
        let pid = child.id();
        let base = await_line(&mut child, crate::baseline::LISTENING, None).await?;
        Ok(Server {
            kind: Kind::Baseline,
            ws_url: format!("{}/v1/ws", base.replacen("http://", "ws://", 1)),
            base,
            pid,
            tenant: "bench".into(),
            publish_auth: None,
            child: Some(child),
            log_path: None,
            _dir: None,
        })
    }

    pub fn publish_url(&self, channel: &str) -> String {
        format!("{}/v1/tenants/{}/channels/{channel}/messages", self.base, self.tenant)
    }

    /// The last lines a spawned server logged, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log_path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops a server the tool started.
    pub async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}

/// What [`Cluster::spawn`] starts.
/// The programs and size of a cluster, as the `cluster` and `failover` commands take them.
#[derive(clap::Args, Clone)]
pub struct ClusterProcesses {
    /// The herald binary every node runs.
    #[arg(long, value_name = "PATH")]
    pub spawn: PathBuf,
    /// The nats-server binary, 2.11 or later (`cargo xtask nats` installs one and prints its path
    /// last).
    #[arg(long, value_name = "PATH", env = "HERALD_NATS_SERVER")]
    pub nats_server: PathBuf,
    /// Herald nodes.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub nodes: usize,
}

impl ClusterProcesses {
    pub fn spec<'a>(
        &'a self,
        database_url: Option<&'a str>,
        env: &'a [(String, String)],
        cpu: Option<usize>,
    ) -> ClusterSpec<'a> {
        ClusterSpec {
            herald: &self.spawn,
            nats_server: &self.nats_server,
            nodes: self.nodes,
            database_url,
            env,
            cpu,
        }
    }
}

pub struct ClusterSpec<'a> {
    pub herald: &'a Path,
    /// `nats-server` 2.11 or later (Herald needs per-message TTLs).
    pub nats_server: &'a Path,
    pub nodes: usize,
    /// Shared database [`sqlite://<temp dir>/herald.db?mode=rwc`].
    pub database_url: Option<&'a str>,
    /// Extra environment for every node.
    pub env: &'a [(String, String)],
    /// CPU to pin NATS and every node to.
    pub cpu: Option<usize>,
}

/// A Herald cluster the tool starts: one `nats-server -js` and `nodes` Herald nodes (`node1`,
/// `node2`, …) sharing one database, one secret key and one admin token, as
/// `deploy/cluster.sh` starts them. Every node serves the bench's tenant.
pub struct Cluster {
    /// `node1` first.
    pub nodes: Vec<Server>,
    pub nats_pid: Option<u32>,
    nats: Option<Child>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts NATS, then node 1 (which runs the migrations) until it is ready, then the other
    /// nodes; creates the bench's tenant through node 1. Stops what it started on failure.
    pub async fn spawn(spec: &ClusterSpec<'_>) -> anyhow::Result<Cluster> {
        anyhow::ensure!(spec.nodes >= 1, "a cluster needs at least one node");
        let dir = tempfile::tempdir().context("temp dir")?;
        let (nats, nats_url) = spawn_nats(spec.nats_server, spec.cpu, dir.path()).await?;
        let mut cluster = Cluster { nodes: Vec::new(), nats_pid: nats.id(), nats: Some(nats), dir };
        match cluster.start_nodes(spec, &nats_url).await {
            Ok(()) => Ok(cluster),
            Err(e) => {
                let tail = cluster.log_tail();
                cluster.stop().await;
                Err(e.context(format!("last log lines:\n{tail}")))
            }
        }
    }

    async fn start_nodes(&mut self, spec: &ClusterSpec<'_>, nats_url: &str) -> anyhow::Result<()> {
        let admin_token = format!("bench-admin-{}", unique());
        let database_url = match spec.database_url {
            Some(url) => url.to_owned(),
            None => format!("sqlite://{}?mode=rwc", self.dir.path().join("herald.db").display()),
        };
        let mut env = vec![("HERALD_SECRET_KEY".to_owned(), secret_key()?)];
        env.extend(spec.env.iter().cloned());
        for i in 1..=spec.nodes {
            let name = format!("node{i}");
            let args: Vec<OsString> =
                ["--nats-url", nats_url, "--node-id", &name, "--database-url", &database_url]
                    .into_iter()
                    .map(OsString::from)
                    .collect();
            let node = HeraldNode {
                dir: self.dir.path(),
                name: &name,
                admin_token: &admin_token,
                args: &args,
                env: &env,
            };
            let server = Server::start_herald(spec.herald, spec.cpu, &node).await?;
            self.nodes.push(server);
            if i == 1 {
                // Alone first, so that the migrations run once.
                self.nodes[0].await_ready().await?;
            }
        }
        for node in &mut self.nodes[1..] {
            node.await_ready().await?;
        }
        let (first, others) = self.nodes.split_first_mut().expect("at least one node");
        first.prepare_herald(&admin_token).await?;
        for node in others {
            node.share_tenant(first);
        }
        Ok(())
    }

    /// The last lines every node and NATS logged, for error messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            match node.log_tail() {
                tail if tail.is_empty() => {}
                tail => out.push_str(&format!("---- node{} ----\n{tail}\n", i + 1)),
            }
        }
        let nats = std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default();
        let lines: Vec<&str> = nats.lines().filter(|l| !l.contains("[INF]")).collect();
        if !lines.is_empty() {
            out.push_str(&format!(
                "---- nats-server ----\n{}\n",
                lines[lines.len().saturating_sub(20)..].join("\n")
            ));
        }
        out
    }

    /// Kills the nodes, then NATS, and waits for every one of them.
    pub async fn stop(mut self) {
        for node in self.nodes.drain(..) {
            node.stop().await;
        }
        if let Some(mut nats) = self.nats.take() {
            let _ = nats.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), nats.wait()).await;
        }
    }
}

/// 32 random bytes in standard base64, the form `HERALD_SECRET_KEY` takes.
fn secret_key() -> anyhow::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
        .context("reading /dev/urandom")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Starts `nats-server -js` on a port of its choosing (`-p -1`) with its store and log in
/// `dir`; returns it and its `nats://` URL once it has logged `Server is ready`.
async fn spawn_nats(binary: &Path, cpu: Option<usize>, dir: &Path) -> anyhow::Result<(Child, String)> {
    let store = dir.join("nats");
    std::fs::create_dir_all(&store)?;
    let log_path = dir.join("nats.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = command(binary, cpu);
    cmd.arg("-js").arg("-sd").arg(&store).args(["-a", "127.0.0.1", "-p", "-1"]);
    cmd.stdout(log.try_clone()?).stderr(log).stdin(Stdio::null()).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {}", binary.display()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let addr =
            text.lines().find_map(|l| l.split_once("Listening for client connections on ").map(|(_, a)| a));
        if let (Some(addr), true) = (addr, text.contains("Server is ready")) {
            return Ok((child, format!("nats://{}", addr.trim())));
        }
        if let Some(exit) = child.try_wait()? {
            bail!("{} exited ({exit}):\n{text}", binary.display());
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill().await;
            bail!("{} was not ready within 10 s:\n{text}", binary.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
