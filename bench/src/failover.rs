//! `herald-bench failover`: clients of the Rust client crate (`herald-client`, the SDK's
//! semantics) on one channel of a cluster, publishing continuously through another node, while
//! the node most of them are on stops (SIGTERM: it drains, asking each client to come back
//! after its own delay; or SIGKILL). Reports how the reconnects spread over time, how long
//! each client took to be subscribed again, and what was lost or duplicated (nothing, if the
//! resume guarantee holds).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herald_client::{Client, Event, Options, State, Transport};
use serde_json::json;

use crate::target::{Cluster, ClusterProcesses};

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// The cluster (at least 2 nodes).
    #[command(flatten)]
    cluster: ClusterProcesses,
    /// Clients, all starting on node 1 (each knows every node's URL).
    #[arg(long, value_name = "N", default_value_t = 300)]
    clients: usize,
    /// Transports of the clients, taken in turn: ws, sse, long-poll.
    #[arg(long, value_delimiter = ',', default_value = "ws,sse,long-poll")]
    transports: Vec<String>,
    /// Messages per second, published through node 2.
    #[arg(long, value_name = "N", default_value_t = 20.0)]
    rate: f64,
    /// Stop node 1 with SIGKILL instead of SIGTERM (no drain).
    #[arg(long)]
    kill: bool,
    /// Seconds of publishing after node 1 stopped.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    after: f64,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Positions received, in order.
    positions: Vec<u64>,
    /// When it was subscribed (each time), since the start.
    subscribed: Vec<Duration>,
    /// When it lost its connection and the delay it chose.
    reconnecting: Vec<(Duration, Duration)>,
}

fn transport(name: &str) -> anyhow::Result<Transport> {
    Ok(match name {
        "ws" | "websocket" => Transport::WebSocket,
        "sse" => Transport::Sse,
        "long-poll" | "longpoll" => Transport::LongPoll,
        other => bail!("unknown transport `{other}` (ws, sse, long-poll)"),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(args: &FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.cluster.nodes >= 2, "failover needs at least 2 nodes");
    let transports: Vec<Transport> =
        args.transports.iter().map(|t| transport(t)).collect::<Result<_, _>>()?;
    let env = [("HERALD_RECONNECT_SPREAD_MS".to_owned(), "5000".to_owned())];
    let spec = args.cluster.spec(None, &env, None);
    let mut cluster = Cluster::spawn(&spec).await?;
    let outcome = measure(args, &transports, &mut cluster).await;
    cluster.stop().await;
    outcome
}

async fn measure(args: &FailoverArgs, transports: &[Transport], cluster: &mut Cluster) -> anyhow::Result<()> {
    let token =
        cluster.nodes[0].ws_url.split("token=").nth(1).context("the bench's client token")?.to_owned();
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.base.clone()).collect();
    let channel = "failover";
    let start = Instant::now();
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for i in 0..args.clients {
        let options = Options::new(&urls[0])
            .urls(urls.clone())
            .token(&token)
            .transports(&[transports[i % transports.len()]])
            .reconnect_delays(Duration::from_millis(200), Duration::from_secs(5));
        let client = Client::connect(options);
        let log = Arc::new(std::sync::Mutex::new(Seen::default()));
        let mut sub = client.subscribe(channel);
        let l = log.clone();
        tokio::spawn(async move {
            while let Some(event) = sub.next().await {
                let mut s = l.lock().unwrap();
                match event {
                    Event::Publication(p) => s.positions.push(p.position),
                    Event::Subscribed { .. } => s.subscribed.push(start.elapsed()),
                    _ => {}
                }
            }
        });
        let mut state = client.state();
        let l = log.clone();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                if let State::Reconnecting { delay, .. } = &*state.borrow() {
                    l.lock().unwrap().reconnecting.push((start.elapsed(), *delay));
                }
            }
        });
        clients.push(client);
        seen.push(log);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.iter().any(|s| s.lock().unwrap().subscribed.is_empty()) {
        anyhow::ensure!(Instant::now() < deadline, "not every client subscribed within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{} clients subscribed on node 1 in {:.1} s", args.clients, start.elapsed().as_secs_f64());

    // Publish through node 2, continuously, each message retried until acknowledged.
    let node2 = cluster.nodes[1].publish_url(channel);
    let key = cluster.nodes[1].publish_auth.clone().context("API key")?;
    let acked = Arc::new(AtomicU64::new(0));
    let stop_publishing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, stop) = (acked.clone(), stop_publishing.clone());
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let publisher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            loop {
                let sent = http
                    .post(&node2)
                    .bearer_auth(&key)
                    .json(&json!({"data": {"n": n}, "idempotency_key": format!("f{n}")}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            a.store(n, Ordering::Relaxed);
            tokio::time::sleep(gap).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;

    let stopped_at = start.elapsed();
    let node1 = cluster.nodes[0].pid.context("node 1's pid")?;
    let signal = if args.kill { "-KILL" } else { "-TERM" };
    std::process::Command::new("kill").arg(signal).arg(node1.to_string()).status().context("kill")?;
    println!(
        "node 1 stopped ({}) at {:.1} s; publishing goes on through node 2",
        if args.kill { "SIGKILL" } else { "SIGTERM, draining" },
        stopped_at.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs_f64(args.after)).await;
    stop_publishing.store(true, Ordering::Relaxed);
    publisher.await?;
    let total = acked.load(Ordering::Relaxed);
    // Late deliveries.
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.iter().any(|s| s.lock().unwrap().positions.len() < total as usize) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (mut lost, mut duplicated, mut moved) = (0u64, 0u64, 0usize);
    let mut resumed = Vec::new();
    let mut reconnects = Vec::new();
    let mut delays = Vec::new();
    for s in &seen {
        let s = s.lock().unwrap();
        let mut sorted = s.positions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        duplicated += (s.positions.len() - sorted.len()) as u64;
        lost += total.saturating_sub(sorted.iter().filter(|p| **p <= total).count() as u64);
        if let Some(&(at, delay)) = s.reconnecting.iter().find(|(at, _)| *at >= stopped_at) {
            moved += 1;
            reconnects.push(at - stopped_at);
            delays.push(delay);
            if let Some(again) = s.subscribed.iter().find(|t| **t > at) {
                resumed.push(*again - stopped_at);
            }
        }
    }
    resumed.sort_unstable();
    delays.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "messages acknowledged: {total}; per client lost: {lost} in all, duplicated: {duplicated} in all"
    );
    println!("clients that moved: {moved} of {}; subscribed again: {}", args.clients, resumed.len());
    println!(
        "time from the stop to subscribed again: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(percentile(&resumed, 0.5)),
        ms(percentile(&resumed, 0.9)),
        ms(percentile(&resumed, 0.99)),
        ms(percentile(&resumed, 1.0))
    );
    println!(
        "reconnect delay chosen: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        ms(percentile(&delays, 0.5)),
        ms(percentile(&delays, 0.9)),
        ms(percentile(&delays, 1.0))
    );
    // Reconnects per half second after the stop: how the drain spreads them.
    let mut buckets = vec![0usize; 1 + (args.after * 2.0) as usize];
    for r in &resumed {
        let b = ((r.as_secs_f64() * 2.0) as usize).min(buckets.len() - 1);
        buckets[b] += 1;
    }
    println!("subscribed again, per 0.5 s after the stop:");
    for (i, n) in buckets.iter().enumerate().filter(|(_, n)| **n > 0) {
        println!(
            "  {:>4.1}-{:>4.1} s  {:>5}  {}",
            i as f64 / 2.0,
            (i + 1) as f64 / 2.0,
            n,
            "#".repeat((n * 60).div_ceil(args.clients.max(1)))
        );
    }
    for c in &clients {
        c.close();
    }
    if lost > 0 || duplicated > 0 {
        bail!("the resume guarantee did not hold: {lost} lost, {duplicated} duplicated");
    }
    Ok(())
}
