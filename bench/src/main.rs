//! `herald-bench`: drives a Herald node over loopback and measures what its users pay for:
//! server memory per idle connection, fan-out throughput, publish→deliver latency and server
//! CPU per delivery, each side by side with a minimal broadcast server on the same stack.
//!
//! # Modes
//!
//! - `idle --connections 1000,5000,10000,18000`: opens subscribed WebSocket connections in
//!   cumulative steps and, at each step, reads the server's RSS (`VmRSS` in
//!   `/proc/PID/status`) and its CPU while idle (`utime + stime` in `/proc/PID/stat`). Reports
//!   KiB per connection, the marginal KiB per connection between steps, and the least-squares
//!   slope, extrapolated to 100k connections.
//! - `fanout --subscribers N --rate R --duration S [--payload BYTES]`: N subscribers on one
//!   channel; publishes R messages/s through the REST API
//!   (`POST /v1/tenants/{t}/channels/{c}/messages`, keep-alive HTTP) with the send time in
//!   each message's data. Reports deliveries/s, publish→deliver latency p50/p99/p99.9/max,
//!   missing/duplicate/out-of-order positions, and the server's CPU time per delivery — the
//!   figure the load client cannot distort.
//! - `channels --channels N --subscribers-per-channel M --rate R --duration S`: the same with
//!   publishes spread over N channels.
//! - `cluster --spawn PATH --nats-server PATH --subscribers N --rate R --duration S`: starts
//!   `nats-server -js` and three Herald nodes in cluster mode (`--nodes`) on one shared
//!   database, spreads N subscribers of one channel evenly over the nodes and publishes through
//!   node 1. Reports the fan-out figures over all subscribers with the nodes' CPU summed, then
//!   latency and losses separately for node 1's subscribers and the other nodes' (every
//!   delivery crossed NATS), each node's CPU, and NATS's CPU.
//! - `baseline <idle|fanout|channels> …`: the same scenario against the tool's own minimal
//!   broadcast server only (see [`baseline`]). `--compare-baseline` on the other modes runs
//!   both in one invocation and prints every figure as a Herald ÷ baseline ratio.
//! - `baseline-server --listen ADDR`: runs that server alone.
//! - `smoke`: tiny numbers against a Herald it starts itself (from `--spawn`, or the `herald`
//!   binary next to this one) and the baseline: idle, fanout and channels in a few seconds.
//!   Fails only when the tool itself does; the figures are not pass/fail.
//!
//! # The server under test
//!
//! Either `--spawn path/to/herald` (a node on a temporary data directory, port 0, with a
//! generated admin token) or `--url http://IP:PORT --admin-token TOKEN [--server-pid PID]` for a
//! running node (without the pid, no RSS or CPU figures). Either way the tool creates its own
//! tenant, an API key with scopes `publish` and `tokens:issue`, an HS256 signing key, and mints
//! one client token through the API that every connection uses.
//!
//! # Scale and pinning
//!
//! The tool raises its soft `RLIMIT_NOFILE` to the hard limit and spreads the client side over
//! worker processes (`--per-worker`, default 15,000 sockets each) and source addresses
//! 127.0.0.2, 127.0.0.3, … (`--per-source`, default 5,000 connections each, on source ports
//! 10000 and up). `--pin` runs the
//! servers it starts on CPU `--server-cpu` (0) with `taskset`, and itself and its workers on
//! `--load-cpu` (1), so client and server do not compete for a core.
//!
//! `--json FILE` writes the same figures as the table, as JSON.

mod baseline;
mod failover;
mod pool;
mod report;
mod scenario;
mod sys;
mod target;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use pool::LoadLayout;
use report::{Output, Pinning, ScenarioOutput};
use scenario::{IdleParams, PublishParams};
use target::{Cluster, Server};
use worker::Transport;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    version,
    about = "Benchmarks a Herald node: memory per idle connection, fan-out throughput, latency and CPU per delivery, next to a minimal broadcast server"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Idle subscribed connections: server RSS per connection and CPU while idle.
    Idle {
        #[command(flatten)]
        server: HeraldArgs,
        #[command(flatten)]
        idle: IdleArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// N subscribers on one channel, publishing at a fixed rate through the REST API.
    Fanout {
        #[command(flatten)]
        server: HeraldArgs,
        #[command(flatten)]
        fanout: FanoutArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// N channels × M subscribers, publishes spread over the channels.
    Channels {
        #[command(flatten)]
        server: HeraldArgs,
        #[command(flatten)]
        channels: ChannelsArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// N subscribers on one channel spread over a cluster of nodes it starts with a NATS server;
    /// publishes through node 1 and tells deliveries across NATS apart.
    Cluster {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Clients of the Rust client crate on one channel of a cluster while the node they are on
    /// stops (SIGTERM, draining; or SIGKILL): how reconnects spread, how long until each is
    /// subscribed again, and that nothing was lost or duplicated.
    Failover {
        #[command(flatten)]
        failover: failover::FailoverArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Runs a scenario against the minimal broadcast server only.
    Baseline {
        #[command(subcommand)]
        scenario: BaselineScenario,
    },
    /// Tiny idle + fanout + channels runs against Herald and the baseline (a few seconds).
    Smoke {
        /// The herald binary [default: `herald` next to this binary].
        #[arg(long, value_name = "PATH")]
        spawn: Option<PathBuf>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Runs the minimal broadcast server (what `baseline` measures) in the foreground.
    BaselineServer {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// tungstenite write_buffer_size: 0 (as Herald) sends each frame on its own.
        #[arg(long, value_name = "BYTES", default_value_t = 0)]
        write_buffer: usize,
        /// The WebSocket library to serve with.
        #[arg(long, value_enum, default_value = "tungstenite-0.27")]
        library: baseline::Library,
    },
    /// Internal: a load worker driven over stdin/stdout by the main process.
    #[command(hide = true)]
    Worker,
}

#[derive(Subcommand)]
enum BaselineScenario {
    Idle {
        #[command(flatten)]
        idle: IdleArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    Fanout {
        #[command(flatten)]
        fanout: FanoutArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    Channels {
        #[command(flatten)]
        channels: ChannelsArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Which Herald to measure.
#[derive(Args, Clone)]
struct HeraldArgs {
    /// Start this herald binary on a temporary data directory and port 0.
    #[arg(long, value_name = "PATH", required_unless_present = "url", conflicts_with = "url")]
    spawn: Option<PathBuf>,
    /// Use a running node at this base URL (http://IP:PORT).
    #[arg(long, value_name = "URL", requires = "admin_token")]
    url: Option<String>,
    /// Admin token of the running node (to create the bench's tenant).
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    admin_token: Option<String>,
    /// Pid of the running node, for its RSS and CPU figures.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Extra environment for a spawned node, e.g. HERALD_CLIENT_QUEUE_MESSAGES=4096 (repeatable).
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    server_env: Vec<String>,
    /// Also run the scenario against the baseline server and print Herald ÷ baseline ratios.
    #[arg(long)]
    compare_baseline: bool,
}

/// Options every scenario shares.
#[derive(Args, Clone)]
struct CommonArgs {
    /// Client transport: ws, sse, long-poll (a polling loop) or long-poll-session (one poll,
    /// then only the server-side session stays; for idle).
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Pin spawned servers to --server-cpu (taskset) and this tool and its workers to --load-cpu
    /// (sched_setaffinity, inherited by the workers).
    #[arg(long)]
    pin: bool,
    #[arg(long, value_name = "CPU", default_value_t = 0)]
    server_cpu: usize,
    #[arg(long, value_name = "CPU", default_value_t = 1)]
    load_cpu: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Sockets per worker process at most (a process may hold only so many descriptors).
    #[arg(long, value_name = "N", default_value_t = 15_000)]
    per_worker: u64,
    /// Worker processes to start at least.
    #[arg(long, value_name = "N", default_value_t = 1)]
    workers: usize,
    /// Connections per source address (127.0.0.2, 127.0.0.3, …).
    #[arg(long, value_name = "N", default_value_t = 5_000)]
    per_source: u64,
    /// Connection attempts in flight per worker.
    #[arg(long, value_name = "N", default_value_t = 200)]
    connect_concurrency: usize,
    /// The baseline server's WebSocket write buffer: 0 (Herald's setting) sends each frame
    /// with its own `send`; e.g. 65536 lets queued frames leave in one `send`.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    baseline_write_buffer: usize,
    /// The baseline's WebSocket library: Herald's (tokio-tungstenite 0.27) or the newest (0.30),
    /// to tell the library's share of a difference from Herald's own.
    #[arg(long, value_enum, default_value = "tungstenite-0.27")]
    baseline_library: baseline::Library,
}

impl CommonArgs {
    fn layout(&self) -> LoadLayout {
        LoadLayout {
            transport: self.transport,
            per_worker: self.per_worker,
            per_source: self.per_source,
            concurrency: self.connect_concurrency,
            min_workers: self.workers,
        }
    }

    fn server_cpu(&self) -> Option<usize> {
        self.pin.then_some(self.server_cpu)
    }
}

#[derive(Args, Clone)]
struct IdleArgs {
    /// Connection counts to measure at, cumulative, e.g. 1000,5000,10000,18000.
    #[arg(long, value_name = "N,…", value_delimiter = ',', required = true)]
    connections: Vec<u64>,
    /// Spread the connections over this many channels (one subscription each).
    #[arg(long, value_name = "N", default_value_t = 1)]
    channels: usize,
    /// Seconds to wait after connecting before reading RSS.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    settle: f64,
    /// Seconds over which idle CPU is measured at each step.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    idle_seconds: f64,
}

#[derive(Args, Clone)]
struct PublishArgs {
    /// Messages per second (over all channels).
    #[arg(long, value_name = "R", default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing that are measured.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,
    /// Bytes of each message's data (a timestamp plus padding; at least 29).
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    payload: usize,
    /// Seconds of publishing before measuring.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait for late deliveries after the last publish.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    drain_timeout: f64,
    /// Publish requests in flight at most.
    #[arg(long, value_name = "N", default_value_t = 32)]
    max_in_flight: usize,
    /// Publish this many messages back to back at each tick (rate / burst ticks per second).
    #[arg(long, value_name = "K", default_value_t = 1)]
    burst: u64,
    /// Run the scenario this many times (alternating Herald and the baseline) and report each
    /// one's median run by server CPU per delivery; every run goes into the JSON.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: usize,
}

impl PublishArgs {
    fn params(&self) -> PublishParams {
        PublishParams {
            rate: self.rate,
            duration: Duration::from_secs_f64(self.duration),
            payload: self.payload,
            warmup: Duration::from_secs_f64(self.warmup),
            drain_timeout: Duration::from_secs_f64(self.drain_timeout),
            max_in_flight: self.max_in_flight,
            burst: self.burst,
        }
    }
}

#[derive(Args, Clone)]
struct FanoutArgs {
    /// Subscribers on the one channel.
    #[arg(long, value_name = "N")]
    subscribers: u64,
    #[command(flatten)]
    publish: PublishArgs,
}

#[derive(Args, Clone)]
struct ChannelsArgs {
    /// Number of channels.
    #[arg(long, value_name = "N")]
    channels: usize,
    /// Subscribers on each channel.
    #[arg(long, value_name = "M")]
    subscribers_per_channel: u64,
    #[command(flatten)]
    publish: PublishArgs,
}

/// The cluster to start and what to run on it.
#[derive(Args, Clone)]
struct ClusterArgs {
    #[command(flatten)]
    cluster: target::ClusterProcesses,
    /// Database the nodes share [default: a SQLite file in the tool's temporary directory].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Extra environment for every node, e.g. HERALD_CLIENT_QUEUE_MESSAGES=4096 (repeatable).
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    server_env: Vec<String>,
    /// Subscribers, spread evenly over the nodes (and the channels).
    #[arg(long, value_name = "N")]
    subscribers: u64,
    /// Spread the subscribers over this many channels (publishes go to them pseudo-randomly).
    #[arg(long, value_name = "N", default_value_t = 1)]
    channels: usize,
    /// Connect as this many distinct users (a client token each, used in turn) instead of one.
    #[arg(long, value_name = "N", default_value_t = 1)]
    users: usize,
    /// Subscribe to channels of the `presence` namespace (presence option on), so the nodes
    /// register every subscriber in the presence registry.
    #[arg(long)]
    presence: bool,
    /// Mixed transports instead of --transport, by share, e.g. ws=80,sse=15,long-poll=5;
    /// connected in this order, each spread over the nodes, with the nodes' RSS read after each.
    #[arg(long, value_name = "T=SHARE,…", value_delimiter = ',', value_parser = parse_mix_part)]
    mix: Vec<(Transport, f64)>,
    /// Seconds to wait after connecting each transport before reading RSS.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    settle: f64,
    /// Before publishing: measure the processes' CPU idle, then while this many WebSocket
    /// connections per second open on node 1, subscribe and close again (presence churn).
    #[arg(long, value_name = "PER_SECOND")]
    churn: Option<f64>,
    /// Length of the idle and the churn window.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    churn_seconds: f64,
    /// How long each churning connection stays subscribed.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    churn_hold_ms: u64,
    /// Also run the same plan against one node of the same binary (no NATS) and report the
    /// cluster's CPU per delivery as a ratio to it and its p99 as a gap, round by round: each
    /// round starts a fresh node and a fresh cluster, one after the other (the order alternates),
    /// so neither runs while the other is measured. One transport only; not with --mix, --churn,
    /// --presence or --users; --subscribers a multiple of --channels. A failed run ends the
    /// invocation without figures.
    #[arg(long)]
    against_single: bool,
    #[command(flatten)]
    publish: PublishArgs,
}

/// One `TRANSPORT=SHARE` of `--mix`.
fn parse_mix_part(s: &str) -> Result<(Transport, f64), String> {
    use clap::ValueEnum;
    let (t, share) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected TRANSPORT=SHARE"))?;
    let transport = Transport::from_str(t, true)?;
    let share: f64 = share.parse().map_err(|_| format!("`{s}`: the share must be a number"))?;
    if !(share.is_finite() && share > 0.0) {
        return Err(format!("`{s}`: the share must be above 0"));
    }
    Ok((transport, share))
}

/// A scenario with its parameters.
enum Plan {
    Idle(IdleParams),
    Fanout { subscribers: u64, publish: PublishParams, repeat: usize },
    Channels { channels: usize, per_channel: u64, publish: PublishParams, repeat: usize },
}

impl Plan {
    fn idle(a: &IdleArgs) -> Plan {
        Plan::Idle(IdleParams {
            steps: a.connections.clone(),
            channels: a.channels,
            settle: Duration::from_secs_f64(a.settle),
            idle: Duration::from_secs_f64(a.idle_seconds),
        })
    }

    fn fanout(a: &FanoutArgs) -> Plan {
        Plan::Fanout { subscribers: a.subscribers, publish: a.publish.params(), repeat: a.publish.repeat }
    }

    fn channels(a: &ChannelsArgs) -> Plan {
        Plan::Channels {
            channels: a.channels,
            per_channel: a.subscribers_per_channel,
            publish: a.publish.params(),
            repeat: a.publish.repeat,
        }
    }
}

/// Runs `plan` against each server given and prints the comparison.
async fn execute(
    plan: &Plan,
    herald: Option<&Server>,
    baseline: Option<&Server>,
    layout: &LoadLayout,
) -> anyhow::Result<ScenarioOutput> {
    let servers = [herald, baseline];
    match plan {
        Plan::Idle(p) => {
            let mut results = [None, None];
            for (i, server) in servers.iter().enumerate() {
                if let Some(server) = server {
                    eprintln!("idle: {} …", server.kind.name());
                    results[i] = Some(scenario::idle(server, layout, p).await?);
                }
            }
            Ok(report::idle(results[0].as_ref(), results[1].as_ref()))
        }
        Plan::Fanout { subscribers, publish, repeat } => {
            let channels = vec!["fanout".to_owned()];
            publishing("fanout", servers, layout, &channels, *subscribers, publish, *repeat).await
        }
        Plan::Channels { channels, per_channel, publish, repeat } => {
            let names: Vec<String> = (0..*channels).map(|i| format!("ch-{i:05}")).collect();
            publishing("channels", servers, layout, &names, *per_channel, publish, *repeat).await
        }
    }
}

/// Runs a publishing scenario `repeat` times, alternating the servers so that a disturbance
/// hits both alike, and reports each server's median run (by CPU per delivery).
async fn publishing(
    scenario: &str,
    servers: [Option<&Server>; 2],
    layout: &LoadLayout,
    channels: &[String],
    per_channel: u64,
    publish: &PublishParams,
    repeat: usize,
) -> anyhow::Result<ScenarioOutput> {
    let mut runs: [Vec<report::FanoutResult>; 2] = [Vec::new(), Vec::new()];
    for round in 0..repeat.max(1) {
        for (i, server) in servers.iter().enumerate() {
            if let Some(server) = server {
                eprintln!("{scenario}: {} (run {} of {}) …", server.kind.name(), round + 1, repeat.max(1));
                runs[i].push(scenario::fanout(server, layout, channels, per_channel, publish).await?);
            }
        }
    }
    let [h, b] = runs.clone().map(report::median_run);
    let mut out = report::fanout(scenario, h.as_ref(), b.as_ref());
    if repeat > 1 {
        report::print_runs(&runs);
        out.runs =
            Some(runs.map(|r| r.iter().map(|x| serde_json::to_value(x).expect("serialises")).collect()));
    }
    Ok(out)
}

fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--server-env `{p}`: expected KEY=VALUE"))
        })
        .collect()
}

async fn open_herald(a: &HeraldArgs, cpu: Option<usize>) -> anyhow::Result<Server> {
    match (&a.spawn, &a.url) {
        (Some(path), _) => Server::spawn_herald(path, cpu, &parse_env(&a.server_env)?).await,
        (None, Some(url)) => {
            let token = a.admin_token.as_deref().context("--url needs --admin-token")?;
            if a.server_pid.is_none() {
                eprintln!("note: no --server-pid: server RSS and CPU figures are not measured");
            }
            Server::attach_herald(url, token, a.server_pid).await
        }
        (None, None) => bail!("give --spawn PATH or --url URL"),
    }
}

fn output(common: &CommonArgs, scenarios: Vec<ScenarioOutput>) -> anyhow::Result<()> {
    if let Some(path) = &common.json {
        let out = Output {
            tool: "herald-bench",
            version: env!("CARGO_PKG_VERSION"),
            command: std::env::args().collect(),
            machine: sys::machine(),
            pinned: common
                .pin
                .then_some(Pinning { server_cpu: common.server_cpu, load_cpu: common.load_cpu }),
            scenarios,
        };
        out.write_json(path).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// Warns when other processes keep the machine busy: the figures would be disturbed.
async fn warn_if_busy() {
    let before = sys::system_busy_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let (Some(b), Some(a)) = (before, sys::system_busy_seconds())
        && a - b > 0.2
    {
        eprintln!(
            "warning: other processes used {:.0}% of a core during the last second; the figures may be disturbed",
            100.0 * (a - b)
        );
    }
}

/// A Herald scenario, optionally with the baseline.
async fn herald_mode(server: &HeraldArgs, common: &CommonArgs, plan: Plan) -> anyhow::Result<()> {
    warn_if_busy().await;
    let cpu = common.server_cpu();
    let herald = open_herald(server, cpu).await?;
    let baseline = match server.compare_baseline {
        true => {
            Some(Server::spawn_baseline(cpu, common.baseline_write_buffer, common.baseline_library).await?)
        }
        false => None,
    };
    let result = execute(&plan, Some(&herald), baseline.as_ref(), &common.layout()).await;
    let result = result.map_err(|e| match herald.log_tail() {
        tail if tail.is_empty() => e,
        tail => e.context(format!("herald's last log lines:\n{tail}")),
    });
    herald.stop().await;
    if let Some(b) = baseline {
        b.stop().await;
    }
    output(common, vec![result?])
}

/// Starts NATS and the nodes, runs the cluster scenario `--repeat` times and reports the
/// median run (by the nodes' CPU per delivery); stops every process it started.
async fn cluster_mode(a: &ClusterArgs, common: &CommonArgs) -> anyhow::Result<()> {
    warn_if_busy().await;
    if a.against_single {
        anyhow::ensure!(
            a.mix.is_empty() && a.churn.is_none() && !a.presence && a.users <= 1,
            "--against-single runs one transport for one user: not with --mix, --churn, --presence or --users"
        );
        anyhow::ensure!(
            a.subscribers % a.channels.max(1) as u64 == 0,
            "--against-single needs --subscribers to be a multiple of --channels (both setups get the same subscribers)"
        );
    }
    let env = parse_env(&a.server_env)?;
    let spec = a.cluster.spec(a.database_url.as_deref(), &env, common.server_cpu());
    // With --against-single every run gets a fresh cluster (none idles beside the single node).
    let mut cluster = match a.against_single {
        true => None,
        false => Some(Cluster::spawn(&spec).await?),
    };
    let tokens = match (&cluster, a.users) {
        (Some(cluster), n) if n > 1 => cluster.nodes[0].mint_tokens(n).await?,
        _ => Vec::new(),
    };
    let (layout, publish, repeat) = (common.layout(), a.publish.params(), a.publish.repeat.max(1));
    let mix: Vec<(Transport, f64)> = match a.mix.is_empty() {
        true => vec![(common.transport, 1.0)],
        false => {
            let total: f64 = a.mix.iter().map(|(_, s)| s).sum();
            a.mix.iter().map(|(t, s)| (*t, s / total)).collect()
        }
    };
    let prefix = if a.presence { "presence:" } else { "" };
    let channels: Vec<String> = match a.channels {
        0 | 1 => vec![format!("{prefix}fanout")],
        n => (0..n).map(|i| format!("{prefix}ch-{i:05}")).collect(),
    };
    let plan = scenario::ClusterPlan {
        subscribers: a.subscribers,
        mix: &mix,
        channels: &channels,
        tokens: &tokens,
        settle: Duration::from_secs_f64(a.settle),
        churn: a.churn.map(|rate| scenario::ChurnParams {
            rate,
            seconds: a.churn_seconds,
            hold_ms: a.churn_hold_ms,
        }),
    };
    let per_channel = a.subscribers / channels.len() as u64;
    let mut runs = Vec::new();
    let mut singles = Vec::new();
    let mut failure = None;
    'rounds: for round in 0..repeat {
        // With --against-single the single node runs first in rounds 1, 3, 5 …, last in the others.
        let single_steps: &[bool] = match (a.against_single, round % 2 == 0) {
            (false, _) => &[false],
            (true, true) => &[true, false],
            (true, false) => &[false, true],
        };
        for &single in single_steps {
            let done = match single {
                true => single_run(a, common, &env, &layout, &channels, per_channel, &publish, round, repeat)
                    .await
                    .map(|r| singles.push(r)),
                false => cluster_run(a, &spec, &mut cluster, &layout, &plan, &publish, round, repeat)
                    .await
                    .map(|r| runs.push(r)),
            };
            if let Err(e) = done {
                failure = Some(e);
                break 'rounds;
            }
        }
    }
    if let Some(c) = cluster {
        c.stop().await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let median = report::median_by(runs.clone(), |r| &r.all).context("no run")?;
    let mut out = report::cluster(&median);
    if a.against_single {
        let pairs: Vec<_> = singles.iter().cloned().zip(runs.iter().cloned()).collect();
        out.ratios = report::against_single(&pairs);
        out.baseline =
            report::median_run(singles.clone()).map(|r| serde_json::to_value(r).expect("serialises"));
    }
    if repeat > 1 || a.against_single {
        if repeat > 1 {
            report::print_runs(&[runs.iter().map(|r| r.all.clone()).collect(), singles.clone()]);
        }
        let cluster_runs = runs.iter().map(|r| serde_json::to_value(r).expect("serialises")).collect();
        let single_runs = singles.iter().map(|r| serde_json::to_value(r).expect("serialises")).collect();
        out.runs = Some([cluster_runs, single_runs]);
    }
    output(common, vec![out])
}

/// One run of the cluster scenario on `kept` (spawned first if `None`); with --against-single
/// on a fresh cluster, stopped afterwards, else `kept` stays up for the next round.
#[allow(clippy::too_many_arguments)]
async fn cluster_run(
    a: &ClusterArgs,
    spec: &target::ClusterSpec<'_>,
    kept: &mut Option<Cluster>,
    layout: &LoadLayout,
    plan: &scenario::ClusterPlan<'_>,
    publish: &PublishParams,
    round: usize,
    repeat: usize,
) -> anyhow::Result<report::ClusterResult> {
    eprintln!("cluster: {} nodes (run {} of {repeat}) …", a.cluster.nodes, round + 1);
    let cluster = match kept.take() {
        Some(c) => c,
        None => Cluster::spawn(spec).await?,
    };
    let outcome = scenario::cluster(&cluster, layout, plan, publish).await;
    let tail = cluster.log_tail();
    if outcome.is_ok() && !tail.is_empty() && (a.against_single || round + 1 == repeat) {
        eprintln!("note: the nodes or NATS logged warnings or errors; the last lines:\n{tail}");
    }
    match a.against_single {
        true => cluster.stop().await,
        false => *kept = Some(cluster),
    }
    outcome.map_err(|e| e.context(format!("last log lines:\n{tail}")))
}

/// One run of the cluster scenario's plan against a fresh single node of the same binary.
#[allow(clippy::too_many_arguments)]
async fn single_run(
    a: &ClusterArgs,
    common: &CommonArgs,
    env: &[(String, String)],
    layout: &LoadLayout,
    channels: &[String],
    per_channel: u64,
    publish: &PublishParams,
    round: usize,
    repeat: usize,
) -> anyhow::Result<report::FanoutResult> {
    eprintln!("single node (run {} of {repeat}) …", round + 1);
    let herald = Server::spawn_herald(&a.cluster.spawn, common.server_cpu(), env).await?;
    let run = scenario::fanout(&herald, layout, channels, per_channel, publish).await;
    herald.stop().await;
    run
}

async fn baseline_mode(common: &CommonArgs, plan: Plan) -> anyhow::Result<()> {
    warn_if_busy().await;
    let baseline =
        Server::spawn_baseline(common.server_cpu(), common.baseline_write_buffer, common.baseline_library)
            .await?;
    let result = execute(&plan, None, Some(&baseline), &common.layout()).await;
    baseline.stop().await;
    output(common, vec![result?])
}

/// Tiny runs of every scenario; fails only if the tool does not work.
async fn smoke(spawn: Option<PathBuf>, common: &CommonArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let path = match spawn {
        Some(p) => p,
        None => std::env::current_exe()?.parent().context("binary directory")?.join("herald"),
    };
    let cpu = common.server_cpu();
    let herald = Server::spawn_herald(&path, cpu, &[]).await?;
    let baseline = Server::spawn_baseline(cpu, common.baseline_write_buffer, common.baseline_library).await?;
    let layout = common.layout();
    let publish = PublishParams {
        rate: 50.0,
        duration: Duration::from_secs(1),
        payload: 64,
        warmup: Duration::from_millis(200),
        drain_timeout: Duration::from_secs(5),
        max_in_flight: 8,
        burst: 1,
    };
    let plans = [
        Plan::Idle(IdleParams {
            steps: vec![10, 20],
            channels: 2,
            settle: Duration::from_millis(300),
            idle: Duration::from_millis(500),
        }),
        Plan::Fanout { subscribers: 20, publish, repeat: 1 },
        Plan::Channels {
            channels: 4,
            per_channel: 5,
            publish: PublishParams { warmup: Duration::ZERO, ..publish },
            repeat: 1,
        },
    ];
    let mut outputs = Vec::new();
    let mut failure = None;
    for plan in &plans {
        match execute(plan, Some(&herald), Some(&baseline), &layout).await {
            Ok(out) => {
                if let Err(e) = check_smoke(&out) {
                    failure.get_or_insert(e);
                }
                outputs.push(out);
            }
            Err(e) => {
                failure.get_or_insert(e);
                break;
            }
        }
    }
    herald.stop().await;
    baseline.stop().await;
    output(common, outputs)?;
    if let Some(e) = failure {
        return Err(e);
    }
    println!("\nsmoke finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The tool worked: every connection opened and messages arrived. (Not a performance check.)
fn check_smoke(out: &ScenarioOutput) -> anyhow::Result<()> {
    for (name, value) in [("herald", &out.herald), ("baseline", &out.baseline)] {
        let Some(v) = value else { bail!("{}: no {name} result", out.scenario) };
        if out.scenario == "idle" {
            let last = &v["steps"][v["steps"].as_array().map_or(0, |s| s.len()).saturating_sub(1)];
            if last["open"] != last["connections"] {
                bail!(
                    "idle on {name}: {} of {} connections open: {}",
                    last["open"],
                    last["connections"],
                    v["first_error"]
                );
            }
        } else {
            let expected =
                v["channels"].as_u64().unwrap_or(0) * v["subscribers_per_channel"].as_u64().unwrap_or(0);
            if v["subscribers_open"].as_u64() != Some(expected) || v["deliveries"].as_u64().unwrap_or(0) == 0
            {
                bail!(
                    "{} on {name}: {} of {expected} subscribers open, {} deliveries: {} {}",
                    out.scenario,
                    v["subscribers_open"],
                    v["deliveries"],
                    v["first_error"],
                    v["publish_first_error"]
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.command {
        Cmd::Worker => return worker::main(),
        Cmd::BaselineServer { listen, write_buffer, library } => {
            return baseline::main(*listen, *write_buffer, *library);
        }
        Cmd::Idle { common, .. }
        | Cmd::Fanout { common, .. }
        | Cmd::Channels { common, .. }
        | Cmd::Cluster { common, .. }
        | Cmd::Failover { common, .. }
        | Cmd::Smoke { common, .. }
        | Cmd::Baseline {
            scenario:
                BaselineScenario::Idle { common, .. }
                | BaselineScenario::Fanout { common, .. }
                | BaselineScenario::Channels { common, .. },
        } => common.clone(),
    };
    if common.pin {
        // Before the runtime starts: every thread and worker process inherits the affinity.
        if let Err(e) = sys::pin_current_thread(common.load_cpu) {
            eprintln!("herald-bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (soft, hard) = sys::raise_nofile_limit();
    if soft < 1024 {
        eprintln!("note: the open-file limit is {soft} (hard {hard})");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(sys::available_cpus())
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Idle { server, idle, common } => herald_mode(&server, &common, Plan::idle(&idle)).await,
            Cmd::Fanout { server, fanout, common } => {
                herald_mode(&server, &common, Plan::fanout(&fanout)).await
            }
            Cmd::Channels { server, channels, common } => {
                herald_mode(&server, &common, Plan::channels(&channels)).await
            }
            Cmd::Cluster { cluster, common } => cluster_mode(&cluster, &common).await,
            Cmd::Failover { failover, .. } => failover::run(&failover).await,
            Cmd::Baseline { scenario } => match scenario {
                BaselineScenario::Idle { idle, common } => baseline_mode(&common, Plan::idle(&idle)).await,
                BaselineScenario::Fanout { fanout, common } => {
                    baseline_mode(&common, Plan::fanout(&fanout)).await
                }
                BaselineScenario::Channels { channels, common } => {
                    baseline_mode(&common, Plan::channels(&channels)).await
                }
            },
            Cmd::Smoke { spawn, common } => smoke(spawn, &common).await,
            Cmd::Worker | Cmd::BaselineServer { .. } => unreachable!("handled before the runtime"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
