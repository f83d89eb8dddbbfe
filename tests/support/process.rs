//! The node under test: start the real `herald` binary on port 0 with a throw-away data
//! directory and, for PostgreSQL runs, a database of its own; stop, restart or kill it; run a
//! test on both storage backends (`on_both_backends!`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::http::Client;

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
    /// Run the node with at most this many open file descriptors (`prlimit --nofile`).
    pub fd_limit: Option<u64>,
    /// A PEM certificate the node's REST clients trust (a node serving HTTPS with it).
    pub trust_pem: Option<Vec<u8>>,
}

impl Herald {
    /// Starts a node on SQLite with the test admin token.
    pub async fn sqlite() -> Herald {
        Herald::start(Start { admin_token: Some(ADMIN_TOKEN.into()), ..Default::default() }).await
    }

    /// Starts a node on SQLite with the test admin token and these `HERALD_*` settings.
    pub async fn with_env(env: &[(&str, &str)]) -> Herald {
        Herald::start(Start {
            admin_token: Some(ADMIN_TOKEN.into()),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        })
        .await
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
        let mut cmd = match opts.fd_limit {
            Some(n) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={n}:{n}")).arg(env!("CARGO_BIN_EXE_herald"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_herald")),
        };
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
            http: match &opts.trust_pem {
                Some(pem) => reqwest::Client::builder()
                    .add_root_certificate(reqwest::Certificate::from_pem(pem).expect("a PEM certificate"))
                    .build()
                    .expect("an HTTPS client"),
                None => reqwest::Client::new(),
            },
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

    /// CPU time the node has used so far (user + system), from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which is in parentheses and may hold spaces).
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
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

/// A single node in cluster mode on `nats` (SQLite in its own data dir, test admin token).
pub async fn clustered_node(nats: &super::NatsServer) -> Herald {
    Herald::start(Start {
        admin_token: Some(ADMIN_TOKEN.into()),
        extra_args: vec!["--nats-url".into(), nats.url.clone()],
        ..Default::default()
    })
    .await
}

/// Declares a test that runs once on a node with in-process fan-out and once on a node in
/// cluster mode (its own NATS server): behaviour that must not depend on the backend. The body
/// is an async fn taking the running node.
#[macro_export]
macro_rules! on_both_fanouts {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn in_process() {
                    let node = $crate::support::Herald::sqlite().await;
                    super::$name(node).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn nats() {
                    let Some(nats) = $crate::support::NatsServer::start().await else { return };
                    let node = $crate::support::clustered_node(&nats).await;
                    super::$name(node).await;
                    drop(nats);
                }
            }
        )*
    };
}

/// A test tool installed by `cargo xtask test`, named by the environment variable `var`; `None`
/// with a one-line notice when it is unset outside CI, a failure under `CI=true`.
pub fn tool_from_env(var: &str, what: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(p.into()),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but {var} is unset: run the tests with `cargo xtask test`")
        }
        None => {
            eprintln!("skipping {what}: run `cargo xtask test`, which installs it");
            None
        }
    }
}
