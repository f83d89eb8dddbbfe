//! The servers under test: a Herald node (started by the tool or already running) and the
//! tool's own baseline server, each seen as a pid to measure, a WebSocket URL to connect to
//! and a publish endpoint.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
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
        if !path.exists() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p herald-server`",
                path.display()
            );
        }
        let dir = tempfile::tempdir().context("temp dir")?;
        let log_path = dir.path().join("herald.log");
        let log = std::fs::File::create(&log_path)?;
        let admin_token = format!("bench-admin-{}", unique());
        let mut cmd = command(path, cpu);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--log-level")
            .arg("warn");
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HERALD_ADMIN_TOKEN", &admin_token);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(log).stdin(Stdio::null()).kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", path.display()))?;
        let pid = child.id();
        let base = await_line(&mut child, "Herald listening on ", Some(&log_path)).await?;
        let mut server = Server {
            kind: Kind::Herald,
            base,
            pid,
            tenant: String::new(),
            ws_url: String::new(),
            publish_auth: None,
            child: Some(child),
            log_path: Some(log_path),
            _dir: Some(dir),
        };
        server.prepare_herald(&admin_token).await?;
        Ok(server)
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

    /// Starts `herald-bench baseline-server` (this same binary) on port 0.
    pub async fn spawn_baseline(cpu: Option<usize>, write_buffer: usize) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut cmd = command(&exe, cpu);
        cmd.arg("baseline-server")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--write-buffer")
            .arg(write_buffer.to_string());
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
