//! The parent's side of the load workers: starts `herald-bench worker` processes, spreads
//! connections over them and merges what they report.

use std::collections::HashMap;
use std::process::Stdio;

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::worker::{self, ConnectReply, ConnectSpec, Counters, Reply, Transport};

/// How the client side is laid out.
#[derive(Debug, Clone)]
pub struct LoadLayout {
    pub transport: Transport,
    /// Sockets per worker process at most.
    pub per_worker: u64,
    /// Connections per source address.
    pub per_source: u64,
    /// Connection attempts in flight per worker.
    pub concurrency: usize,
    /// Worker processes to start at least.
    pub min_workers: usize,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    pid: u32,
    open: u64,
}

impl Worker {
    async fn call(&mut self, command: &worker::Command) -> anyhow::Result<Reply> {
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.context("worker stdin")?;
        self.stdin.flush().await?;
        let reply = self
            .stdout
            .next_line()
            .await?
            .ok_or_else(|| anyhow!("worker {} exited (see its stderr above)", self.pid))?;
        let reply: Reply = serde_json::from_str(&reply).with_context(|| format!("worker reply `{reply}`"))?;
        if let Reply::Error { message } = &reply {
            bail!("worker {}: {message}", self.pid);
        }
        Ok(reply)
    }
}

/// What the workers saw, merged.
pub struct Merged {
    pub counters: Counters,
    pub latency: Histogram<u64>,
    pub open: u64,
    pub first_error: Option<String>,
}

impl Merged {
    /// Several pools' reports as one.
    pub fn combine<'a>(parts: impl IntoIterator<Item = &'a Merged>) -> Merged {
        let mut all = Merged {
            counters: Counters::default(),
            latency: worker::latency_histogram(),
            open: 0,
            first_error: None,
        };
        for m in parts {
            all.counters.add(&m.counters);
            let _ = all.latency.add(&m.latency);
            all.open += m.open;
            if all.first_error.is_none() {
                all.first_error.clone_from(&m.first_error);
            }
        }
        all
    }
}

pub struct Pool {
    workers: Vec<Worker>,
    layout: LoadLayout,
    next_index: u64,
    /// Client tokens the connections use in turn (empty: the URL's).
    tokens: Vec<String>,
    /// Connections that failed to open, over the pool's life.
    pub failed: u64,
    pub first_connect_error: Option<String>,
}

impl Pool {
    /// Starts enough workers for `max_connections`.
    pub async fn start(layout: &LoadLayout, max_connections: u64) -> anyhow::Result<Pool> {
        let needed = max_connections.div_ceil(layout.per_worker.max(1)) as usize;
        let count = needed.max(layout.min_workers).max(1);
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut workers = Vec::with_capacity(count);
        for _ in 0..count {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker")?;
            let pid = child.id().ok_or_else(|| anyhow!("worker exited at once"))?;
            let stdin = child.stdin.take().expect("piped stdin");
            let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            workers.push(Worker { child, stdin, stdout, pid, open: 0 });
        }
        Ok(Pool {
            workers,
            layout: layout.clone(),
            next_index: 0,
            tokens: Vec::new(),
            failed: 0,
            first_connect_error: None,
        })
    }

    /// Numbers this pool's connections from `first` on (instead of 0), so that several pools of
    /// one run pick distinct source addresses and ports.
    pub fn first_index(mut self, first: u64) -> Pool {
        self.next_index = first;
        self
    }

    /// Connects with these client tokens in turn (one user each) instead of the URL's.
    pub fn tokens(mut self, tokens: &[String]) -> Pool {
        self.tokens = tokens.to_vec();
        self
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// Opens `count` more connections, spread evenly over the workers; connection `k` (global
    /// index) subscribes to `channels[k % channels.len()]`.
    pub async fn connect(
        &mut self,
        url: &str,
        count: u64,
        channels: &[String],
    ) -> anyhow::Result<ConnectReply> {
        self.connect_as(self.layout.transport, url, count, channels).await
    }

    /// [`Pool::connect`] over `transport` instead of the layout's (a pool may hold several).
    pub async fn connect_as(
        &mut self,
        transport: Transport,
        url: &str,
        count: u64,
        channels: &[String],
    ) -> anyhow::Result<ConnectReply> {
        let n = self.workers.len() as u64;
        let mut specs = Vec::with_capacity(self.workers.len());
        for (i, w) in self.workers.iter().enumerate() {
            let share = count / n + u64::from((i as u64) < count % n);
            if w.open + share > self.layout.per_worker {
                bail!(
                    "worker {} would hold {} sockets, over --per-worker {}",
                    w.pid,
                    w.open + share,
                    self.layout.per_worker
                );
            }
            specs.push(ConnectSpec {
                url: url.to_owned(),
                transport,
                first_index: self.next_index,
                count: share,
                channels: channels.to_vec(),
                per_source: self.layout.per_source,
                concurrency: self.layout.concurrency,
                tokens: self.tokens.clone(),
            });
            self.next_index += share;
        }
        let calls = self.workers.iter_mut().zip(specs).map(|(w, spec)| async move {
            let reply = w.call(&worker::Command::Connect(spec)).await?;
            match reply {
                Reply::Connected(r) => {
                    w.open = r.open_now;
                    Ok(r)
                }
                other => Err(anyhow!("unexpected worker reply {other:?}")),
            }
        });
        let replies = futures_util::future::join_all(calls).await;
        let mut total = ConnectReply::default();
        for r in replies {
            let r = r?;
            total.opened += r.opened;
            total.failed += r.failed;
            total.open_now += r.open_now;
            total.seconds = total.seconds.max(r.seconds);
            if total.first_error.is_none() {
                total.first_error = r.first_error;
            }
        }
        self.failed += total.failed;
        if self.first_connect_error.is_none() {
            self.first_connect_error.clone_from(&total.first_error);
        }
        Ok(total)
    }

    /// Runs a churn (see [`worker::ChurnSpec`]) on the first worker.
    pub async fn churn(&mut self, spec: worker::ChurnSpec) -> anyhow::Result<worker::ChurnReply> {
        let w = self.workers.first_mut().ok_or_else(|| anyhow!("no worker"))?;
        match w.call(&worker::Command::Churn(spec)).await? {
            Reply::Churned(r) => Ok(r),
            other => Err(anyhow!("unexpected worker reply {other:?}")),
        }
    }

    /// Clears the workers' counters and histograms.
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        let calls = self.workers.iter_mut().map(|w| w.call(&worker::Command::Reset));
        for r in futures_util::future::join_all(calls).await {
            r?;
        }
        Ok(())
    }

    /// Merged counters (and latencies when `latency` is set) of all workers.
    pub async fn report(
        &mut self,
        final_positions: &HashMap<String, u64>,
        latency: bool,
    ) -> anyhow::Result<Merged> {
        let command = worker::Command::Report { final_positions: final_positions.clone(), latency };
        let calls = self.workers.iter_mut().map(|w| w.call(&command));
        let mut merged = Merged {
            counters: Counters::default(),
            latency: worker::latency_histogram(),
            open: 0,
            first_error: None,
        };
        for r in futures_util::future::join_all(calls).await {
            let Reply::Report(r) = r? else { bail!("unexpected worker reply") };
            merged.counters.add(&r.counters);
            for (value, count) in r.latency_us {
                let _ = merged.latency.record_n(value, count);
            }
            merged.open += r.open;
            if merged.first_error.is_none() {
                merged.first_error = r.first_error;
            }
        }
        Ok(merged)
    }

    /// Tells every worker to quit (closing its sockets) and waits for them.
    pub async fn quit(mut self) {
        for w in &mut self.workers {
            let _ = w.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
            let _ = w.stdin.flush().await;
        }
        for w in &mut self.workers {
            if tokio::time::timeout(std::time::Duration::from_secs(10), w.child.wait()).await.is_err() {
                let _ = w.child.kill().await;
            }
        }
    }
}
