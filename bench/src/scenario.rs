//! The scenarios, each run the same way against Herald and against the baseline server.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::pool::{LoadLayout, Merged, Pool};
use crate::report::{
    ChurnFigures, ClusterResult, FanoutResult, GroupFigures, IdleResult, IdleStep, Latency, NodeFigures,
    TransportFigures, slope,
};
use crate::sys::Sample;
use crate::target::{Cluster, Server};
use crate::worker::{Transport, latency_histogram, now_us};

pub struct IdleParams {
    /// Cumulative connection counts to measure at.
    pub steps: Vec<u64>,
    pub channels: usize,
    /// Pause after connecting before measuring RSS.
    pub settle: Duration,
    /// Window over which idle CPU is measured.
    pub idle: Duration,
}

/// Opens idle subscribed connections step by step and measures the server's RSS and CPU.
pub async fn idle(server: &Server, layout: &LoadLayout, p: &IdleParams) -> anyhow::Result<IdleResult> {
    let channels: Vec<String> = (0..p.channels.max(1)).map(|i| format!("idle-{i}")).collect();
    let mut steps = p.steps.clone();
    steps.sort_unstable();
    steps.dedup();
    let max = steps.last().copied().unwrap_or(0);
    let mut pool = Pool::start(layout, max).await?;
    tokio::time::sleep(p.settle).await;
    let before = Sample::take(server.pid);
    let mut points: Vec<(f64, f64)> = before.rss_kib.map(|r| (0.0, r as f64)).into_iter().collect();
    let (mut asked, mut prev_open, mut prev_rss) = (0u64, 0u64, before.rss_kib);
    let mut results = Vec::new();
    for target in steps {
        let reply = pool.connect(&server.ws_url, target - asked, &channels).await?;
        asked = target;
        tokio::time::sleep(p.settle).await;
        let s0 = Sample::take(server.pid);
        tokio::time::sleep(p.idle).await;
        let s1 = Sample::take(server.pid);
        let open = reply.open_now;
        let per = |rss: Option<u64>, base: Option<u64>, n: u64| match (rss, base) {
            (Some(r), Some(b)) if n > 0 => Some((r as f64 - b as f64) / n as f64),
            _ => None,
        };
        if let Some(rss) = s1.rss_kib {
            points.push((open as f64, rss as f64));
        }
        results.push(IdleStep {
            connections: target,
            open,
            failed: pool.failed,
            connect_seconds: reply.seconds,
            rss_kib: s1.rss_kib,
            kib_per_connection: per(s1.rss_kib, before.rss_kib, open),
            marginal_kib_per_connection: per(s1.rss_kib, prev_rss, open.saturating_sub(prev_open)),
            idle_cpu_percent: s0.cpu_percent_until(&s1),
        });
        prev_open = open;
        prev_rss = s1.rss_kib;
    }
    let merged = pool.report(&HashMap::new(), false).await?;
    let first_error = pool.first_connect_error.clone().or(merged.first_error);
    pool.quit().await;
    let slope = slope(&points);
    Ok(IdleResult {
        server: server.kind.name().into(),
        transport: layout.transport.as_str().into(),
        channels: channels.len(),
        rss_before_kib: before.rss_kib,
        steps: results,
        slope_kib_per_connection: slope,
        extrapolated_100k_mib: match (before.rss_kib, slope) {
            (Some(b), Some(s)) => Some((b as f64 + s * 100_000.0) / 1024.0),
            _ => None,
        },
        first_error,
    })
}

#[derive(Debug, Clone, Copy)]
pub struct PublishParams {
    /// Messages per second over all channels.
    pub rate: f64,
    pub duration: Duration,
    /// Size of each message's `data` JSON in bytes (at least the timestamp).
    pub payload: usize,
    /// Publishing before measuring, at the same rate.
    pub warmup: Duration,
    /// How long to wait after the last publish for deliveries to arrive.
    pub drain_timeout: Duration,
    /// Publish requests in flight at most.
    pub max_in_flight: usize,
    /// Messages published back to back at each tick (the tick rate is `rate / burst`).
    pub burst: u64,
}

/// What one publishing run did.
struct PublishRun {
    ok: u64,
    errors: u64,
    late: u64,
    first_error: Option<String>,
    /// Channel → highest position the server answered.
    finals: HashMap<String, u64>,
    http_latency: Histogram<u64>,
}

#[derive(Deserialize)]
struct PublishReply {
    position: u64,
}

/// Publishes through the REST API over keep-alive HTTP connections.
struct Publisher {
    http: reqwest::Client,
    auth: Option<String>,
    urls: Vec<String>,
    channels: Vec<String>,
}

impl Publisher {
    fn new(server: &Server, channels: &[String], max_in_flight: usize) -> anyhow::Result<Publisher> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(max_in_flight)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Publisher {
            http,
            auth: server.publish_auth.clone(),
            urls: channels.iter().map(|c| server.publish_url(c)).collect(),
            channels: channels.to_vec(),
        })
    }

    /// Publishes `rate × duration` messages on schedule (`burst` at a time), spread
    /// pseudo-randomly over the channels; each message's `data` carries its send time in µs
    /// (`t`) and padding (`p`).
    async fn run(&self, p: &PublishParams, duration: Duration) -> PublishRun {
        let (rate, payload, max_in_flight, burst) = (p.rate, p.payload, p.max_in_flight, p.burst.max(1));
        let total = (rate * duration.as_secs_f64()).round() as u64;
        // `{"t":1700000000000000,"p":""}` is 29 bytes.
        let pad: Arc<str> = Arc::from("x".repeat(payload.saturating_sub(29)));
        let gate = Arc::new(Semaphore::new(max_in_flight.max(1)));
        let run = Arc::new(Mutex::new(PublishRun {
            ok: 0,
            errors: 0,
            late: 0,
            first_error: None,
            finals: HashMap::new(),
            http_latency: latency_histogram(),
        }));
        let start = Instant::now();
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..total {
            let due = start + Duration::from_secs_f64((i / burst * burst) as f64 / rate);
            tokio::time::sleep_until(due).await;
            let permit = gate.clone().acquire_owned().await.expect("semaphore open");
            if Instant::now() > due + Duration::from_millis(10) {
                run.lock().expect("publish lock").late += 1;
            }
            let index = if self.channels.len() == 1 {
                0
            } else {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % self.channels.len() as u64) as usize
            };
            let mut req = self.http.post(&self.urls[index]).header("content-type", "application/json");
            if let Some(auth) = &self.auth {
                req = req.bearer_auth(auth);
            }
            let (pad, run, channel) = (pad.clone(), run.clone(), self.channels[index].clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                let body = format!(r#"{{"data":{{"t":{},"p":"{pad}"}}}}"#, now_us());
                let result = async {
                    let resp = req.body(body).send().await.map_err(|e| e.to_string())?;
                    let status = resp.status();
                    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
                    if !status.is_success() {
                        return Err(format!("{status} {}", String::from_utf8_lossy(&bytes)));
                    }
                    serde_json::from_slice::<PublishReply>(&bytes).map_err(|e| e.to_string())
                }
                .await;
                let elapsed = sent.elapsed().as_micros() as u64;
                let mut run = run.lock().expect("publish lock");
                match result {
                    Ok(reply) => {
                        run.ok += 1;
                        let _ = run.http_latency.record(elapsed.max(1));
                        let last = run.finals.entry(channel).or_insert(0);
                        *last = (*last).max(reply.position);
                    }
                    Err(e) => {
                        run.errors += 1;
                        if run.first_error.is_none() {
                            run.first_error = Some(e);
                        }
                    }
                }
                drop(permit);
            });
        }
        let _all = gate.acquire_many(max_in_flight.max(1) as u32).await.expect("semaphore open");
        let mut run = run.lock().expect("publish lock");
        std::mem::replace(
            &mut *run,
            PublishRun {
                ok: 0,
                errors: 0,
                late: 0,
                first_error: None,
                finals: HashMap::new(),
                http_latency: latency_histogram(),
            },
        )
    }
}

/// Waits until every open connection of every pool has every published message, or the
/// timeout; returns each pool's report (with latencies) and when the wait ended.
async fn drain(
    pools: &mut [Pool],
    finals: &HashMap<String, u64>,
    timeout: Duration,
) -> anyhow::Result<(Vec<Merged>, Instant)> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = 0;
        for pool in pools.iter_mut() {
            pending += pool.report(finals, false).await?.counters.pending;
        }
        let now = Instant::now();
        if pending == 0 || now >= deadline {
            let mut reports = Vec::with_capacity(pools.len());
            for pool in pools.iter_mut() {
                reports.push(pool.report(finals, true).await?);
            }
            return Ok((reports, now));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn load_cpu(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| crate::sys::cpu_seconds(*p)).sum()
}

/// A group of subscribers on one server: `per_channel` connections on each channel.
pub struct Subscribers<'a> {
    pub ws_url: &'a str,
    pub per_channel: u64,
}

/// One measured publishing window: what the publisher did, what each group of subscribers saw,
/// and the measured processes' CPU and RSS before and after.
pub struct Window {
    run: PublishRun,
    connect_failed: u64,
    first_connect_error: Option<String>,
    /// Each group's report, in the order the groups were given.
    pub groups: Vec<Merged>,
    /// Every group's report combined.
    pub all: Merged,
    /// Each measured process (in the order of the pids given) before and after.
    pub samples: Vec<(Sample, Sample)>,
    /// Each measured process's CPU by thread role over the window (`sys::thread_cpu_seconds`).
    threads: Vec<Option<BTreeMap<String, f64>>>,
    /// From the first measured publish until everything arrived (or the drain timeout), s.
    pub elapsed: f64,
    load_seconds: Option<f64>,
    softirq_seconds: Option<f64>,
    busy: (Option<f64>, Option<f64>),
    /// JetStream stores by the node published to over the window, and their summed round trip
    /// (s); 0 on a single node, `None` when its metrics could not be read.
    pub stores: Option<(u64, f64)>,
}

/// Connects every group of subscribers (one pool of workers per group), publishes through
/// `publish_to` (a warm-up, then the measured window) and waits for the deliveries; samples the
/// processes `pids` around the measured window.
async fn measure(
    publish_to: &Server,
    groups: &[Subscribers<'_>],
    layout: &LoadLayout,
    channels: &[String],
    p: &PublishParams,
    pids: &[Option<u32>],
) -> anyhow::Result<Window> {
    let mut pools = Vec::with_capacity(groups.len());
    let (mut connect_failed, mut first_connect_error, mut first_index) = (0, None, 0);
    for group in groups {
        let count = channels.len() as u64 * group.per_channel;
        let mut pool = Pool::start(layout, count).await?.first_index(first_index);
        first_index += count;
        let connected = pool.connect(group.ws_url, count, channels).await?;
        connect_failed += connected.failed;
        first_connect_error = first_connect_error.or(connected.first_error);
        pools.push(pool);
    }
    publish_window(publish_to, pools, (connect_failed, first_connect_error), channels, p, pids).await
}

/// Publishes through `publish_to` to the subscribers `pools` hold (one group per pool): a
/// warm-up, then the measured window; waits for the deliveries, samples the processes `pids`
/// around the measured window and quits the pools.
async fn publish_window(
    publish_to: &Server,
    mut pools: Vec<Pool>,
    (connect_failed, first_connect_error): (u64, Option<String>),
    channels: &[String],
    p: &PublishParams,
    pids: &[Option<u32>],
) -> anyhow::Result<Window> {
    let publisher = Publisher::new(publish_to, channels, p.max_in_flight)?;
    let mut finals: HashMap<String, u64> = HashMap::new();
    let merge = |finals: &mut HashMap<String, u64>, run: &PublishRun| {
        for (c, pos) in &run.finals {
            let e = finals.entry(c.clone()).or_insert(0);
            *e = (*e).max(*pos);
        }
    };
    if !p.warmup.is_zero() {
        let warm = publisher.run(p, p.warmup).await;
        merge(&mut finals, &warm);
        drain(&mut pools, &finals, p.drain_timeout).await?;
    }
    for pool in &mut pools {
        pool.reset().await?;
    }
    let mut load_pids = vec![std::process::id()];
    load_pids.extend(pools.iter().flat_map(Pool::pids));
    // Read before the CPU samples, and after them below, so the requests are not measured.
    let stores_before = stores(&publisher.http, publish_to).await;
    let threads_before: Vec<_> =
        pids.iter().map(|pid| pid.and_then(crate::sys::thread_cpu_seconds)).collect();
    let before: Vec<Sample> = pids.iter().map(|pid| Sample::take(*pid)).collect();
    let load_before = load_cpu(&load_pids);
    let softirq_pids = crate::sys::ksoftirqd_pids();
    let softirq_before = load_cpu(&softirq_pids);
    let other_before = crate::sys::system_busy_seconds();
    let run = publisher.run(p, p.duration).await;
    merge(&mut finals, &run);
    let (groups, drained_at) = drain(&mut pools, &finals, p.drain_timeout).await?;
    let after: Vec<Sample> = pids.iter().map(|pid| Sample::take(*pid)).collect();
    let threads = threads_before
        .iter()
        .zip(pids)
        .map(|(before, pid)| {
            Some(crate::sys::thread_cpu_between(before.as_ref()?, &crate::sys::thread_cpu_seconds((*pid)?)?))
        })
        .collect();
    let load_after = load_cpu(&load_pids);
    let other_after = crate::sys::system_busy_seconds();
    let softirq_after = load_cpu(&softirq_pids);
    let stores_after = stores(&publisher.http, publish_to).await;
    for pool in pools {
        pool.quit().await;
    }
    let started = before.first().map_or(drained_at, |s| s.at.into());
    Ok(Window {
        run,
        connect_failed,
        first_connect_error,
        all: Merged::combine(&groups),
        groups,
        samples: before.into_iter().zip(after).collect(),
        threads,
        elapsed: drained_at.duration_since(started).as_secs_f64(),
        load_seconds: load_before.zip(load_after).map(|(b, a)| a - b),
        softirq_seconds: softirq_before.zip(softirq_after).map(|(b, a)| a - b),
        busy: (other_before, other_after),
        stores: stores_before
            .zip(stores_after)
            .map(|((n0, s0), (n1, s1))| (n1.saturating_sub(n0), (s1 - s0).max(0.0))),
    })
}

/// How many JetStream stores a Herald node has made, and their summed round trip in seconds
/// (`herald_jetstream_publish_duration_seconds` from its `/metrics`); `None` when they cannot
/// be read (the counts stay 0 on a single node).
async fn stores(http: &reqwest::Client, server: &Server) -> Option<(u64, f64)> {
    let text = http.get(format!("{}/metrics", server.base)).send().await.ok()?.text().await.ok()?;
    parse_stores(&text)
}

fn parse_stores(metrics: &str) -> Option<(u64, f64)> {
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    let count = value("herald_jetstream_publish_duration_seconds_count")?;
    let sum = value("herald_jetstream_publish_duration_seconds_sum")?;
    Some((count as u64, sum))
}

/// CPU seconds by thread role as µs per delivery (`None` without deliveries).
fn per_delivery_by_role(roles: BTreeMap<String, f64>, deliveries: u64) -> Option<BTreeMap<String, f64>> {
    (deliveries > 0).then(|| roles.into_iter().map(|(role, s)| (role, s * 1e6 / deliveries as f64)).collect())
}

impl Window {
    /// CPU seconds the measured processes `which` (indices into the pids given) used.
    pub fn cpu_seconds(&self, which: Range<usize>) -> Option<f64> {
        self.samples[which].iter().map(|(b, a)| b.cpu_until(a)).sum()
    }

    /// CPU seconds of the measured processes `which`, summed by thread role (`http`, `ws`,
    /// `cluster`); `other` is the rest of their CPU, threads that exited included, so the roles
    /// add up to [`Window::cpu_seconds`].
    pub fn thread_cpu_seconds(&self, which: Range<usize>) -> Option<BTreeMap<String, f64>> {
        let mut sum = BTreeMap::new();
        for roles in &self.threads[which.clone()] {
            for (role, seconds) in roles.as_ref()? {
                if role != "other" {
                    *sum.entry(role.clone()).or_insert(0.0) += seconds;
                }
            }
        }
        let named: f64 = sum.values().sum();
        sum.insert("other".to_owned(), (self.cpu_seconds(which)? - named).max(0.0));
        Some(sum)
    }

    /// Summed RSS of the measured processes `which`, before and after.
    pub fn rss_kib(&self, which: Range<usize>) -> (Option<u64>, Option<u64>) {
        let samples = &self.samples[which];
        (samples.iter().map(|(b, _)| b.rss_kib).sum(), samples.iter().map(|(_, a)| a.rss_kib).sum())
    }

    /// `seconds` of CPU over the measured window, % of one core.
    pub fn percent(&self, seconds: Option<f64>) -> Option<f64> {
        let wall = self.samples.first().map(|(b, a)| a.at.duration_since(b.at).as_secs_f64())?;
        (wall > 0.0).then_some(100.0 * seconds? / wall)
    }

    /// The run's figures over all groups, with the processes `server` (indices into the pids
    /// given) as the server; `extra_cpu` is CPU of further processes under test (NATS) that
    /// must not count as other processes' CPU.
    pub fn result(
        &self,
        name: &str,
        transport: Transport,
        channels: usize,
        subscribers_per_channel: u64,
        p: &PublishParams,
        server: Range<usize>,
        extra_cpu: Option<f64>,
    ) -> FanoutResult {
        let (run, c, elapsed) = (&self.run, self.all.counters, self.elapsed);
        let server_cpu = self.cpu_seconds(server.clone());
        // Herald names its threads; the baseline's are tokio's defaults and say nothing.
        let by_thread = self.thread_cpu_seconds(server.clone()).filter(|_| name.starts_with("herald"));
        let (rss_before, rss_after) = self.rss_kib(server);
        FanoutResult {
            server: name.into(),
            transport: transport.as_str().into(),
            channels,
            subscribers_per_channel,
            subscribers_open: self.all.open,
            connect_failed: self.connect_failed,
            rate_per_s: p.rate,
            burst: p.burst.max(1),
            duration_s: p.duration.as_secs_f64(),
            payload_bytes: p.payload.max(29),
            published: run.ok,
            publish_errors: run.errors,
            publish_first_error: run.first_error.clone(),
            publish_late: run.late,
            publish_latency: Latency::of(&run.http_latency),
            expected_deliveries: run.ok * subscribers_per_channel,
            deliveries: c.received,
            deliveries_per_s: if elapsed > 0.0 { c.received as f64 / elapsed } else { 0.0 },
            drain_seconds: (elapsed - p.duration.as_secs_f64()).max(0.0),
            missing: c.missing(),
            duplicates: c.duplicates,
            out_of_order: c.out_of_order,
            closed_connections: c.closed,
            unexpected_frames: c.unexpected,
            first_error: self.first_connect_error.clone().or_else(|| self.all.first_error.clone()),
            latency: Latency::of(&self.all.latency),
            server_cpu_seconds: server_cpu,
            server_cpu_percent: self.percent(server_cpu),
            server_cpu_us_per_delivery: server_cpu
                .and_then(|s| (c.received > 0).then(|| s * 1e6 / c.received as f64)),
            server_cpu_us_per_delivery_by_thread: by_thread
                .and_then(|roles| per_delivery_by_role(roles, c.received)),
            server_rss_before_kib: rss_before,
            server_rss_after_kib: rss_after,
            load_cpu_percent: self.load_seconds.filter(|_| elapsed > 0.0).map(|s| 100.0 * s / elapsed),
            softirq_cpu_percent: self.softirq_seconds.filter(|_| elapsed > 0.0).map(|s| 100.0 * s / elapsed),
            other_cpu_percent: other_cpu_percent(
                self.busy,
                server_cpu.unwrap_or(0.0) + extra_cpu.unwrap_or(0.0) + self.softirq_seconds.unwrap_or(0.0),
                self.load_seconds,
                elapsed,
            ),
        }
    }
}

/// `subscribers_per_channel` subscribers on each of `channels`; publishes at `rate` through
/// the REST API; measures deliveries, latency, ordering and the server's CPU per delivery.
pub async fn fanout(
    server: &Server,
    layout: &LoadLayout,
    channels: &[String],
    subscribers_per_channel: u64,
    p: &PublishParams,
) -> anyhow::Result<FanoutResult> {
    let group = Subscribers { ws_url: &server.ws_url, per_channel: subscribers_per_channel };
    let window = measure(server, &[group], layout, channels, p, &[server.pid]).await?;
    Ok(window.result(
        server.kind.name(),
        layout.transport,
        channels.len(),
        subscribers_per_channel,
        p,
        0..1,
        None,
    ))
}

/// What the `cluster` scenario runs on the cluster.
pub struct ClusterPlan<'a> {
    /// Subscribers over all nodes and channels.
    pub subscribers: u64,
    /// Transports and their shares of the subscribers (summing to 1), connected in this order,
    /// each spread evenly over the nodes.
    pub mix: &'a [(Transport, f64)],
    pub channels: &'a [String],
    /// Client tokens of distinct users, used in turn (empty: every connection is the same user).
    pub tokens: &'a [String],
    /// Pause after connecting each transport before reading RSS.
    pub settle: Duration,
    /// Before publishing: an idle window, then a window of churn on node 1, each this long.
    pub churn: Option<ChurnParams>,
}

#[derive(Debug, Clone, Copy)]
pub struct ChurnParams {
    /// WebSocket connections opened (subscribed, then closed) per second.
    pub rate: f64,
    pub seconds: f64,
    /// How long each stays open.
    pub hold_ms: u64,
}

/// Each count of `total` split over `n` parts as evenly as possible (the first get the
/// remainder).
fn share(total: u64, n: usize, i: usize) -> u64 {
    total / n as u64 + u64::from((i as u64) < total % n as u64)
}

/// `subscribers` on `channels`, each transport's share spread evenly over the cluster's nodes
/// (node 1 gets the remainder first); the nodes' RSS is read after each transport, so each has
/// its own KiB per connection. Optionally measures idle and churning CPU, then publishes
/// through node 1. The figures over all subscribers count the nodes' CPU as the server's;
/// NATS's CPU, each node's and each group's figures come apart.
pub async fn cluster(
    cluster: &Cluster,
    layout: &LoadLayout,
    plan: &ClusterPlan<'_>,
    p: &PublishParams,
) -> anyhow::Result<ClusterResult> {
    let nodes = cluster.nodes.len();
    let channels = plan.channels;
    let mut counts: Vec<(Transport, u64)> = Vec::new();
    let mut left = plan.subscribers;
    for (k, (transport, fraction)) in plan.mix.iter().enumerate() {
        let n = if k + 1 == plan.mix.len() {
            left
        } else {
            ((plan.subscribers as f64 * fraction).round() as u64).min(left)
        };
        left -= n;
        counts.push((*transport, n));
    }
    let per_node = |i: usize| counts.iter().map(|(_, n)| share(*n, nodes, i)).sum::<u64>();
    let mut pools = Vec::with_capacity(nodes);
    let mut first_index = 0;
    for i in 0..nodes {
        pools.push(Pool::start(layout, per_node(i)).await?.first_index(first_index).tokens(plan.tokens));
        first_index += per_node(i);
    }
    let mut pids: Vec<Option<u32>> = cluster.nodes.iter().map(|n| n.pid).collect();
    pids.push(cluster.nats_pid);
    let nodes_rss = || -> Option<u64> { cluster.nodes.iter().map(|n| Sample::take(n.pid).rss_kib).sum() };
    tokio::time::sleep(plan.settle).await;
    let mut rss_before = nodes_rss();
    let (mut connect_failed, mut first_connect_error) = (0, None);
    let mut transports = Vec::new();
    for (transport, count) in counts.iter().copied().filter(|(_, n)| *n > 0) {
        let started = Instant::now();
        let calls = pools.iter_mut().zip(&cluster.nodes).enumerate().map(|(i, (pool, node))| {
            pool.connect_as(transport, &node.ws_url, share(count, nodes, i), channels)
        });
        let (mut opened, mut failed) = (0, 0);
        for reply in futures_util::future::join_all(calls).await {
            let reply = reply?;
            opened += reply.opened;
            failed += reply.failed;
            first_connect_error = first_connect_error.or(reply.first_error);
        }
        let connect_seconds = started.elapsed().as_secs_f64();
        connect_failed += failed;
        tokio::time::sleep(plan.settle).await;
        let rss = nodes_rss();
        transports.push(TransportFigures {
            transport: transport.as_str().into(),
            connections: count,
            opened,
            failed,
            connect_seconds,
            kib_per_connection: rss
                .zip(rss_before)
                .filter(|_| opened > 0)
                .map(|(a, b)| (a as f64 - b as f64) / opened as f64),
            nodes_rss_after_kib: rss,
        });
        rss_before = rss;
    }
    let churn = match plan.churn {
        Some(c) => Some(churn_windows(cluster, &mut pools, plan, c, &pids, first_index).await?),
        None => None,
    };
    let window =
        publish_window(&cluster.nodes[0], pools, (connect_failed, first_connect_error), channels, p, &pids)
            .await?;
    let nats_cpu = window.cpu_seconds(nodes..nodes + 1);
    let per_channel = plan.subscribers / channels.len().max(1) as u64;
    let all =
        window.result("herald-cluster", layout.transport, channels.len(), per_channel, p, 0..nodes, nats_cpu);
    let per_delivery = |cpu: Option<f64>, deliveries: u64| {
        cpu.filter(|_| deliveries > 0).map(|s| s * 1e6 / deliveries as f64)
    };
    let per_node = (0..nodes)
        .map(|i| {
            let (cpu, delivered) = (window.cpu_seconds(i..i + 1), window.groups[i].counters.received);
            NodeFigures {
                node: format!("node{}", i + 1),
                subscribers: per_node(i),
                subscribers_open: window.groups[i].open,
                deliveries: delivered,
                cpu_seconds: cpu,
                cpu_percent: window.percent(cpu),
                cpu_us_per_own_delivery: per_delivery(cpu, delivered),
                cpu_us_per_delivery: per_delivery(cpu, all.deliveries),
                cpu_us_per_delivery_by_thread: window
                    .thread_cpu_seconds(i..i + 1)
                    .and_then(|roles| per_delivery_by_role(roles, all.deliveries)),
                rss_after_kib: window.rss_kib(i..i + 1).1,
            }
        })
        .collect();
    let nodes_and_nats = all.server_cpu_seconds.zip(nats_cpu).map(|(a, b)| a + b);
    let (stored_messages, store_round_trip_mean_ms) = match window.stores {
        Some((n, seconds)) if n > 0 => (Some(n), Some(seconds * 1000.0 / n as f64)),
        _ => (None, None),
    };
    Ok(ClusterResult {
        nodes,
        stored_messages,
        publications_per_stored_message: stored_messages.map(|n| all.published as f64 / n as f64),
        store_round_trip_mean_ms,
        nats_cpu_seconds: nats_cpu,
        nats_cpu_percent: window.percent(nats_cpu),
        nats_cpu_us_per_delivery: per_delivery(nats_cpu, all.deliveries),
        nats_rss_after_kib: window.rss_kib(nodes..nodes + 1).1,
        nodes_and_nats_cpu_us_per_delivery: per_delivery(nodes_and_nats, all.deliveries),
        publishing_node: GroupFigures::of(&window.groups[0]),
        other_nodes: (nodes > 1).then(|| GroupFigures::of(&Merged::combine(&window.groups[1..]))),
        per_node,
        transports,
        churn,
        all,
    })
}

/// The processes' CPU (% of a core) over `seconds` of `work`.
async fn cpu_during<T>(
    pids: &[Option<u32>],
    work: impl std::future::Future<Output = T>,
) -> (Vec<Option<f64>>, T) {
    let before: Vec<Sample> = pids.iter().map(|p| Sample::take(*p)).collect();
    let out = work.await;
    let after: Vec<Sample> = pids.iter().map(|p| Sample::take(*p)).collect();
    (before.iter().zip(&after).map(|(b, a)| b.cpu_percent_until(a)).collect(), out)
}

/// An idle window, then one with `c.rate` WebSocket connections per second opening on node 1,
/// subscribing and closing: what following connects and disconnects costs the nodes and NATS.
async fn churn_windows(
    cluster: &Cluster,
    pools: &mut [Pool],
    plan: &ClusterPlan<'_>,
    c: ChurnParams,
    pids: &[Option<u32>],
    first_index: u64,
) -> anyhow::Result<ChurnFigures> {
    let (idle, ()) = cpu_during(pids, tokio::time::sleep(Duration::from_secs_f64(c.seconds))).await;
    let spec = crate::worker::ChurnSpec {
        url: cluster.nodes[0].ws_url.clone(),
        channels: plan.channels.to_vec(),
        tokens: plan.tokens.to_vec(),
        rate: c.rate,
        seconds: c.seconds,
        hold_ms: c.hold_ms,
        // Source addresses past every subscriber's.
        first_index: first_index + 100_000,
        per_source: 20_000,
    };
    let started = Instant::now();
    let (churning, reply) = cpu_during(pids, pools[0].churn(spec)).await;
    let reply = reply?;
    let wall = started.elapsed().as_secs_f64();
    let node1_us_per_cycle = match (idle[0], churning[0]) {
        (Some(i), Some(ch)) if reply.cycles > 0 => Some((ch - i) / 100.0 * wall * 1e6 / reply.cycles as f64),
        _ => None,
    };
    Ok(ChurnFigures {
        rate_per_s: c.rate,
        seconds: c.seconds,
        hold_ms: c.hold_ms,
        cycles: reply.cycles,
        failed: reply.failed,
        first_error: reply.first_error,
        idle_cpu_percent: idle,
        churn_cpu_percent: churning,
        node1_cpu_us_per_cycle: node1_us_per_cycle,
    })
}

/// CPU the rest of the machine used meanwhile (all CPU time minus the server's, the load
/// side's and the kernel softirq threads'), % of one core: a check that nothing else
/// disturbed the run.
fn other_cpu_percent(
    system: (Option<f64>, Option<f64>),
    ours: f64,
    load: Option<f64>,
    elapsed: f64,
) -> Option<f64> {
    let busy = system.1? - system.0?;
    (elapsed > 0.0).then(|| (100.0 * (busy - ours - load.unwrap_or(0.0)) / elapsed).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::parse_stores;

    #[test]
    fn stores_are_read_from_the_metrics() {
        let metrics = "# HELP herald_jetstream_publish_duration_seconds Storing …\n\
            herald_jetstream_publish_duration_seconds_sum 1.5\n\
            herald_jetstream_publish_duration_seconds_count 600\n\
            herald_jetstream_publish_duration_seconds_bucket{le=\"0.001\"} 10\n";
        assert_eq!(parse_stores(metrics), Some((600, 1.5)));
        let never = "herald_jetstream_publish_duration_seconds_sum 0.0\n\
            herald_jetstream_publish_duration_seconds_count 0\n";
        assert_eq!(parse_stores(never), Some((0, 0.0)));
        assert_eq!(parse_stores("herald_up 1\n"), None);
    }
}
