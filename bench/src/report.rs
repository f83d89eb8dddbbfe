//! Results: the figures each scenario measures, the human table, and the JSON document.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus_online: String,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub nofile_limit: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            samples: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        })
    }
}

/// Idle connections: one measurement step.
#[derive(Debug, Clone, Serialize)]
pub struct IdleStep {
    /// Connections asked for at this step (cumulative).
    pub connections: u64,
    /// Connections open and subscribed when measured.
    pub open: u64,
    pub failed: u64,
    pub connect_seconds: f64,
    pub rss_kib: Option<u64>,
    /// RSS growth since before the first connection, per open connection.
    pub kib_per_connection: Option<f64>,
    /// RSS growth since the previous step, per connection added.
    pub marginal_kib_per_connection: Option<f64>,
    /// Server CPU while idle, % of one core.
    pub idle_cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub server: String,
    pub transport: String,
    pub channels: usize,
    pub rss_before_kib: Option<u64>,
    pub steps: Vec<IdleStep>,
    /// Least-squares slope of RSS over open connections (including the zero point).
    pub slope_kib_per_connection: Option<f64>,
    /// RSS before + slope × 100,000, in MiB.
    pub extrapolated_100k_mib: Option<f64>,
    pub first_error: Option<String>,
}

/// Fan-out (`fanout`) and mixed publishing (`channels`).
#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub server: String,
    pub transport: String,
    pub channels: usize,
    pub subscribers_per_channel: u64,
    pub subscribers_open: u64,
    pub connect_failed: u64,
    pub rate_per_s: f64,
    /// Messages published back to back at each tick.
    pub burst: u64,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_first_error: Option<String>,
    /// Publishes that started later than scheduled by more than 10 ms (publisher could not
    /// keep the rate).
    pub publish_late: u64,
    /// HTTP publish round trip.
    pub publish_latency: Option<Latency>,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    /// Deliveries over the time from the first publish until everything arrived (or the
    /// drain timeout).
    pub deliveries_per_s: f64,
    pub drain_seconds: f64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub closed_connections: u64,
    pub unexpected_frames: u64,
    pub first_error: Option<String>,
    /// Publish (timestamp taken before the HTTP request) → frame parsed by the client.
    pub latency: Option<Latency>,
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The same by thread role: `http` (the HTTP runtime), `ws` (WebSocket connections),
    /// `cluster` (the NATS connection, stores and feeds) and `other` (the rest, threads that
    /// exited included). Absent for a server the tool did not start or whose threads it cannot read.
    pub server_cpu_us_per_delivery_by_thread: Option<BTreeMap<String, f64>>,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    /// CPU of the load side (this process and its workers), % of one core.
    pub load_cpu_percent: Option<f64>,
    /// CPU of the kernel's softirq threads meanwhile, % of one core: network work deferred
    /// under load, charged to neither side.
    pub softirq_cpu_percent: Option<f64>,
    /// CPU used by everything else on the machine meanwhile, % of one core (should be near 0).
    pub other_cpu_percent: Option<f64>,
}

/// The cluster scenario: one channel's subscribers spread over the nodes, publishes through
/// node 1.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterResult {
    pub nodes: usize,
    /// Over every subscriber. The `server_*` figures are the nodes' sums; NATS is not in them.
    #[serde(flatten)]
    pub all: FanoutResult,
    /// Subscribers of the node that takes the publishes (node 1).
    pub publishing_node: GroupFigures,
    /// Subscribers of the other nodes: every delivery crossed NATS. Absent with one node.
    pub other_nodes: Option<GroupFigures>,
    pub per_node: Vec<NodeFigures>,
    /// JetStream stores node 1 made over the window (from its metrics): each is one stored
    /// message, its acknowledgement and one republished copy per subscribed node.
    pub stored_messages: Option<u64>,
    pub publications_per_stored_message: Option<f64>,
    /// Mean time from a store's JetStream publish to its acknowledgement.
    pub store_round_trip_mean_ms: Option<f64>,
    pub nats_cpu_seconds: Option<f64>,
    pub nats_cpu_percent: Option<f64>,
    /// NATS CPU over every delivery (all nodes' subscribers).
    pub nats_cpu_us_per_delivery: Option<f64>,
    pub nats_rss_after_kib: Option<u64>,
    /// Nodes and NATS together over every delivery.
    pub nodes_and_nats_cpu_us_per_delivery: Option<f64>,
    /// Each transport's connections and the nodes' RSS they added.
    pub transports: Vec<TransportFigures>,
    pub churn: Option<ChurnFigures>,
}

/// One transport's subscribers in the cluster scenario.
#[derive(Debug, Clone, Serialize)]
pub struct TransportFigures {
    pub transport: String,
    pub connections: u64,
    pub opened: u64,
    pub failed: u64,
    pub connect_seconds: f64,
    /// The nodes' summed RSS growth over the connections opened.
    pub kib_per_connection: Option<f64>,
    pub nodes_rss_after_kib: Option<u64>,
}

/// Idle CPU against CPU while WebSocket connections open, subscribe and close on node 1.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnFigures {
    pub rate_per_s: f64,
    pub seconds: f64,
    pub hold_ms: u64,
    /// Connections that opened, subscribed and closed.
    pub cycles: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Per node, then NATS: % of a core.
    pub idle_cpu_percent: Vec<Option<f64>>,
    pub churn_cpu_percent: Vec<Option<f64>>,
    /// Node 1's CPU above idle per connection cycle (open, subscribe, close).
    pub node1_cpu_us_per_cycle: Option<f64>,
}

/// Deliveries to one group of subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct GroupFigures {
    pub subscribers_open: u64,
    pub deliveries: u64,
    /// Positions not received: gaps, and what open or closed connections never got.
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub closed_connections: u64,
    /// Publish (before the HTTP request to node 1) → frame parsed by the client.
    pub latency: Option<Latency>,
}

impl GroupFigures {
    pub fn of(m: &crate::pool::Merged) -> GroupFigures {
        GroupFigures {
            subscribers_open: m.open,
            deliveries: m.counters.received,
            missing: m.counters.missing(),
            duplicates: m.counters.duplicates,
            out_of_order: m.counters.out_of_order,
            closed_connections: m.counters.closed,
            latency: Latency::of(&m.latency),
        }
    }
}

/// One node's share of a cluster run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFigures {
    pub node: String,
    pub subscribers: u64,
    pub subscribers_open: u64,
    /// Deliveries to this node's subscribers.
    pub deliveries: u64,
    pub cpu_seconds: Option<f64>,
    pub cpu_percent: Option<f64>,
    /// This node's CPU over its own subscribers' deliveries.
    pub cpu_us_per_own_delivery: Option<f64>,
    /// This node's CPU over every delivery of the run (these add up to the nodes' sum).
    pub cpu_us_per_delivery: Option<f64>,
    /// The same by thread role (see [`FanoutResult::server_cpu_us_per_delivery_by_thread`]).
    pub cpu_us_per_delivery_by_thread: Option<BTreeMap<String, f64>>,
    pub rss_after_kib: Option<u64>,
}

/// One scenario's results for Herald and/or the baseline, with Herald ÷ baseline ratios.
#[derive(Debug, Serialize)]
pub struct ScenarioOutput {
    pub scenario: String,
    pub herald: Option<serde_json::Value>,
    pub baseline: Option<serde_json::Value>,
    pub ratios: BTreeMap<String, f64>,
    /// With `--repeat`: every run, Herald's then the baseline's; `herald` and `baseline` above
    /// are the median runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<[Vec<serde_json::Value>; 2]>,
}

#[derive(Debug, Serialize)]
pub struct Output {
    pub tool: &'static str,
    pub version: &'static str,
    pub command: Vec<String>,
    pub machine: Machine,
    pub pinned: Option<Pinning>,
    pub scenarios: Vec<ScenarioOutput>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Pinning {
    pub server_cpu: usize,
    pub load_cpu: usize,
}

impl Output {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")?;
        Ok(())
    }
}

fn ratio(h: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (h, b) {
        (Some(h), Some(b)) if b.abs() > f64::EPSILON => Some(h / b),
        _ => None,
    }
}

/// A table row: label, Herald's value, the baseline's value, and for numeric figures the
/// ratio key under which it goes into the JSON.
struct Row {
    label: String,
    values: [Option<String>; 2],
    numbers: [Option<f64>; 2],
    ratio_key: Option<&'static str>,
}

struct Table {
    title: String,
    rows: Vec<Row>,
}

impl Table {
    fn new(title: String) -> Table {
        Table { title, rows: Vec::new() }
    }

    fn text(&mut self, label: &str, h: Option<String>, b: Option<String>) {
        self.rows.push(Row { label: label.into(), values: [h, b], numbers: [None, None], ratio_key: None });
    }

    fn num(&mut self, label: &str, key: &'static str, h: Option<f64>, b: Option<f64>, decimals: usize) {
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.decimals$}"));
        self.rows.push(Row {
            label: label.into(),
            values: [fmt(h), fmt(b)],
            numbers: [h, b],
            ratio_key: Some(key),
        });
    }

    fn print(&self, has: [bool; 2]) -> BTreeMap<String, f64> {
        let mut ratios = BTreeMap::new();
        let both = has[0] && has[1];
        println!("\n{}", self.title);
        let width = self.rows.iter().map(|r| r.label.chars().count()).max().unwrap_or(0).max(8);
        let mut header = format!("  {:width$}", "");
        for (i, name) in ["herald", "baseline"].iter().enumerate() {
            if has[i] {
                header.push_str(&format!("  {name:>14}"));
            }
        }
        if both {
            header.push_str(&format!("  {:>15}", "herald/baseline"));
        }
        println!("{header}");
        for row in &self.rows {
            let mut line = format!("  {:width$}", row.label);
            for (present, value) in has.iter().zip(&row.values) {
                if *present {
                    line.push_str(&format!("  {:>14}", value.as_deref().unwrap_or("-")));
                }
            }
            if both && let Some(key) = row.ratio_key {
                if let Some(r) = ratio(row.numbers[0], row.numbers[1]) {
                    line.push_str(&format!("  {r:>15.2}"));
                    ratios.insert(key.to_owned(), r);
                }
            }
            println!("{}", line.trim_end());
        }
        ratios
    }
}

/// Prints the idle scenario and returns its JSON output.
pub fn idle(herald: Option<&IdleResult>, baseline: Option<&IdleResult>) -> ScenarioOutput {
    let first = herald.or(baseline).expect("at least one result");
    for r in [herald, baseline].into_iter().flatten() {
        println!(
            "\nidle {} connections on {} ({} channel(s)), RSS before: {}",
            r.transport,
            r.server,
            r.channels,
            r.rss_before_kib.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        );
        println!(
            "  {:>11}  {:>8}  {:>6}  {:>10}  {:>10}  {:>11}  {:>14}  {:>9}",
            "connections", "open", "failed", "connect s", "RSS MiB", "KiB/conn", "marginal KiB", "idle CPU%"
        );
        for s in &r.steps {
            let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
            println!(
                "  {:>11}  {:>8}  {:>6}  {:>10.1}  {:>10}  {:>11}  {:>14}  {:>9}",
                s.connections,
                s.open,
                s.failed,
                s.connect_seconds,
                f(s.rss_kib.map(|k| k as f64 / 1024.0), 1),
                f(s.kib_per_connection, 2),
                f(s.marginal_kib_per_connection, 2),
                f(s.idle_cpu_percent, 2),
            );
        }
        if let Some(e) = &r.first_error {
            println!("  first error: {e}");
        }
    }
    let mut t =
        Table::new(format!("idle summary ({} connections)", first.steps.last().map_or(0, |s| s.connections)));
    let last = |r: Option<&IdleResult>| r.and_then(|r| r.steps.last().cloned());
    let (hl, bl) = (last(herald), last(baseline));
    t.num(
        "slope, KiB per connection",
        "kib_per_connection_slope",
        herald.and_then(|r| r.slope_kib_per_connection),
        baseline.and_then(|r| r.slope_kib_per_connection),
        2,
    );
    t.num(
        "KiB per connection at the last step",
        "kib_per_connection_last",
        hl.as_ref().and_then(|s| s.kib_per_connection),
        bl.as_ref().and_then(|s| s.kib_per_connection),
        2,
    );
    t.num(
        "idle CPU % at the last step",
        "idle_cpu_percent_last",
        hl.as_ref().and_then(|s| s.idle_cpu_percent),
        bl.as_ref().and_then(|s| s.idle_cpu_percent),
        2,
    );
    t.num(
        "RSS at 100k connections (MiB, extrapolated)",
        "extrapolated_100k_mib",
        herald.and_then(|r| r.extrapolated_100k_mib),
        baseline.and_then(|r| r.extrapolated_100k_mib),
        0,
    );
    let ratios = t.print([herald.is_some(), baseline.is_some()]);
    ScenarioOutput {
        scenario: "idle".into(),
        herald: herald.map(|r| serde_json::to_value(r).expect("serialises")),
        baseline: baseline.map(|r| serde_json::to_value(r).expect("serialises")),
        ratios,
        runs: None,
    }
}

/// Prints a fan-out or channels scenario and returns its JSON output.
pub fn fanout(
    scenario: &str,
    herald: Option<&FanoutResult>,
    baseline: Option<&FanoutResult>,
) -> ScenarioOutput {
    let first = herald.or(baseline).expect("at least one result");
    let burst = if first.burst > 1 { format!(" in bursts of {}", first.burst) } else { String::new() };
    let title = format!(
        "{scenario}: {} channel(s) × {} subscribers, {} msg/s{burst} for {} s, {}-byte data ({})",
        first.channels,
        first.subscribers_per_channel,
        first.rate_per_s,
        first.duration_s,
        first.payload_bytes,
        first.transport,
    );
    let mut t = Table::new(title);
    let get = |f: &dyn Fn(&FanoutResult) -> Option<f64>| [herald.and_then(f), baseline.and_then(f)];
    let s = |f: &dyn Fn(&FanoutResult) -> String| [herald.map(f), baseline.map(f)];
    let [h, b] = s(&|r| format!("{}/{}", r.subscribers_open, r.channels as u64 * r.subscribers_per_channel));
    t.text("subscribers open", h, b);
    let [h, b] = s(&|r| format!("{}/{}/{}", r.published, r.publish_errors, r.publish_late));
    t.text("published ok/errors/late", h, b);
    let [h, b] = get(&|r| r.publish_latency.as_ref().map(|l| l.p99_us as f64 / 1000.0));
    t.num("publish HTTP p99 (ms)", "publish_http_p99", h, b, 2);
    let [h, b] = s(&|r| format!("{}/{}", r.deliveries, r.expected_deliveries));
    t.text("deliveries/expected", h, b);
    let [h, b] = get(&|r| Some(r.deliveries_per_s));
    t.num("deliveries/s", "deliveries_per_s", h, b, 0);
    let [h, b] =
        s(&|r| format!("{}/{}/{}/{}", r.missing, r.duplicates, r.out_of_order, r.closed_connections));
    t.text("missing/dup/out-of-order/closed", h, b);
    for (label, key, q) in [
        ("latency p50 (ms)", "latency_p50", 0),
        ("latency p99 (ms)", "latency_p99", 1),
        ("latency p99.9 (ms)", "latency_p999", 2),
        ("latency max (ms)", "latency_max", 3),
    ] {
        let [h, b] = get(&|r| {
            r.latency.as_ref().map(|l| [l.p50_us, l.p99_us, l.p999_us, l.max_us][q] as f64 / 1000.0)
        });
        t.num(label, key, h, b, 2);
    }
    let [h, b] = get(&|r| r.server_cpu_percent);
    t.num("server CPU (% of a core)", "server_cpu_percent", h, b, 1);
    let [h, b] = get(&|r| r.server_cpu_us_per_delivery);
    t.num("server CPU per delivery (µs)", "server_cpu_per_delivery", h, b, 2);
    for (label, role) in [
        ("… HTTP threads (µs)", "http"),
        ("… WebSocket threads (µs)", "ws"),
        ("… cluster thread (µs)", "cluster"),
        ("… other threads (µs)", "other"),
    ] {
        let [h, b] = get(&|r| r.server_cpu_us_per_delivery_by_thread.as_ref()?.get(role).copied());
        if h.is_some() || b.is_some() {
            t.text(label, h.map(|v| format!("{v:.2}")), b.map(|v| format!("{v:.2}")));
        }
    }
    let [h, b] = get(&|r| r.server_cpu_us_per_delivery.map(|us| 1e6 / us));
    t.num("→ deliveries/s one core could do", "deliveries_per_core_second", h, b, 0);
    let [h, b] = get(&|r| Some(r.server_rss_after_kib? as f64 / 1024.0));
    t.num("server RSS after (MiB)", "server_rss_after", h, b, 1);
    let [h, b] = get(&|r| r.load_cpu_percent);
    t.num("load CPU (% of a core)", "load_cpu_percent", h, b, 1);
    let [h, b] = get(&|r| r.softirq_cpu_percent);
    t.text("kernel softirq threads CPU (%)", h.map(|v| format!("{v:.1}")), b.map(|v| format!("{v:.1}")));
    let [h, b] = get(&|r| r.other_cpu_percent);
    t.text("other CPU on the machine (%)", h.map(|v| format!("{v:.1}")), b.map(|v| format!("{v:.1}")));
    let ratios = t.print([herald.is_some(), baseline.is_some()]);
    for r in [herald, baseline].into_iter().flatten() {
        if let Some(e) = r.first_error.as_ref().or(r.publish_first_error.as_ref()) {
            println!("  {} first error: {e}", r.server);
        }
    }
    ScenarioOutput {
        scenario: scenario.into(),
        herald: herald.map(|r| serde_json::to_value(r).expect("serialises")),
        baseline: baseline.map(|r| serde_json::to_value(r).expect("serialises")),
        ratios,
        runs: None,
    }
}

/// Other processes' CPU (% of a core) above which a run counts as disturbed.
pub const DISTURBED_PERCENT: f64 = 10.0;

/// The run with the median server CPU per delivery (the lower middle one for an even count),
/// among the undisturbed runs when there is any.
pub fn median_run(runs: Vec<FanoutResult>) -> Option<FanoutResult> {
    median_by(runs, |r| r)
}

/// [`median_run`] of runs that hold a [`FanoutResult`] (`figures` picks it).
pub fn median_by<T>(runs: Vec<T>, figures: impl Fn(&T) -> &FanoutResult) -> Option<T> {
    let (clean, disturbed): (Vec<_>, Vec<_>) =
        runs.into_iter().partition(|r| figures(r).other_cpu_percent.is_none_or(|p| p < DISTURBED_PERCENT));
    let mut runs = if clean.is_empty() { disturbed } else { clean };
    runs.sort_by(|a, b| {
        let key = |r: &T| figures(r).server_cpu_us_per_delivery.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    let middle = runs.len().saturating_sub(1) / 2;
    (!runs.is_empty()).then(|| runs.swap_remove(middle))
}

/// One line per run: the figures that vary most between runs.
pub fn print_runs(runs: &[Vec<FanoutResult>; 2]) {
    println!(
        "\n  every run (server CPU µs/delivery, latency p50/p99 ms, other CPU %; runs with other CPU \
         ≥ {DISTURBED_PERCENT}% are left out of the median when others are not):"
    );
    for list in runs {
        for (i, r) in list.iter().enumerate() {
            let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let lat = |q: fn(&Latency) -> u64| r.latency.as_ref().map(|l| q(l) as f64 / 1000.0);
            println!(
                "  {:>9} #{}  {:>6}  {:>7} / {:>7}  {:>5}",
                r.server,
                i + 1,
                f(r.server_cpu_us_per_delivery),
                f(lat(|l| l.p50_us)),
                f(lat(|l| l.p99_us)),
                r.other_cpu_percent.map_or("-".to_owned(), |v| format!("{v:.0}")),
            );
        }
    }
}

/// Prints the cluster scenario (the fan-out table over every subscriber, then the figures per
/// group of subscribers, per node and of NATS) and returns its JSON output.
pub fn cluster(r: &ClusterResult) -> ScenarioOutput {
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    if !r.transports.is_empty() {
        let headers: Vec<String> = r.transports.iter().map(|t| t.transport.clone()).collect();
        let col = |g: &dyn Fn(&TransportFigures) -> String| r.transports.iter().map(g).collect::<Vec<_>>();
        let rows = vec![
            ("connections", col(&|t| t.connections.to_string())),
            ("opened / failed", col(&|t| format!("{} / {}", t.opened, t.failed))),
            ("connect time (s)", col(&|t| format!("{:.1}", t.connect_seconds))),
            ("nodes' RSS per connection (KiB)", col(&|t| f(t.kib_per_connection, 2))),
            ("nodes' RSS after (MiB)", col(&|t| f(t.nodes_rss_after_kib.map(|k| k as f64 / 1024.0), 1))),
        ];
        print_grid("cluster: connections by transport (in the order opened)", &headers, &rows);
    }
    if let Some(c) = &r.churn {
        let mut headers: Vec<String> = (1..=r.nodes).map(|i| format!("node{i}")).collect();
        headers.push("nats-server".into());
        let rows = vec![
            ("CPU idle (% of a core)", c.idle_cpu_percent.iter().map(|v| f(*v, 1)).collect()),
            ("CPU with churn on node1 (% of a core)", c.churn_cpu_percent.iter().map(|v| f(*v, 1)).collect()),
        ];
        print_grid(
            &format!(
                "cluster: churn, {:.0} WebSocket connections/s opening on node1 for {:.0} s, each subscribed for {} ms: {} cycles, {} failed; node1 above idle: {} µs per cycle",
                c.rate_per_s,
                c.seconds,
                c.hold_ms,
                c.cycles,
                c.failed,
                f(c.node1_cpu_us_per_cycle, 0)
            ),
            &headers,
            &rows,
        );
        if let Some(e) = &c.first_error {
            println!("  first churn error: {e}");
        }
    }
    let mut out = fanout("cluster", Some(&r.all), None);
    println!("  (server = the {} nodes summed; NATS below)", r.nodes);
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    let mut groups = vec![("node1 (publishes)".to_owned(), &r.publishing_node)];
    if let Some(other) = &r.other_nodes {
        groups.push((if r.nodes == 2 { "node2".to_owned() } else { format!("node2-{}", r.nodes) }, other));
    }
    let mut rows: Vec<(&str, Vec<String>)> = vec![
        ("subscribers open", groups.iter().map(|(_, g)| g.subscribers_open.to_string()).collect()),
        ("deliveries", groups.iter().map(|(_, g)| g.deliveries.to_string()).collect()),
        (
            "lost/dup/out-of-order/closed",
            groups
                .iter()
                .map(|(_, g)| {
                    format!("{}/{}/{}/{}", g.missing, g.duplicates, g.out_of_order, g.closed_connections)
                })
                .collect(),
        ),
    ];
    for (label, q) in
        [("latency p50 (ms)", 0), ("latency p99 (ms)", 1), ("latency p99.9 (ms)", 2), ("latency max (ms)", 3)]
    {
        let values = groups
            .iter()
            .map(|(_, g)| {
                g.latency.as_ref().map_or("-".into(), |l| ms([l.p50_us, l.p99_us, l.p999_us, l.max_us][q]))
            })
            .collect();
        rows.push((label, values));
    }
    let headers: Vec<String> = groups.iter().map(|(name, _)| name.clone()).collect();
    print_grid("cluster: deliveries by where the subscriber is", &headers, &rows);

    let mut headers: Vec<String> = r.per_node.iter().map(|n| n.node.clone()).collect();
    headers.extend(["nodes".to_owned(), "nats-server".to_owned(), "nodes+nats".to_owned()]);
    let with_nats = r.all.server_cpu_percent.zip(r.nats_cpu_percent).map(|(a, b)| a + b);
    let mut cpu_percent: Vec<String> = r.per_node.iter().map(|n| f(n.cpu_percent, 1)).collect();
    cpu_percent.extend([f(r.all.server_cpu_percent, 1), f(r.nats_cpu_percent, 1), f(with_nats, 1)]);
    let mut per_delivery: Vec<String> = r.per_node.iter().map(|n| f(n.cpu_us_per_delivery, 2)).collect();
    per_delivery.extend([
        f(r.all.server_cpu_us_per_delivery, 2),
        f(r.nats_cpu_us_per_delivery, 2),
        f(r.nodes_and_nats_cpu_us_per_delivery, 2),
    ]);
    let by_thread = |role: &str| -> Vec<String> {
        let mut cells: Vec<String> = r
            .per_node
            .iter()
            .map(|n| f(n.cpu_us_per_delivery_by_thread.as_ref().and_then(|t| t.get(role).copied()), 2))
            .collect();
        let all = r.all.server_cpu_us_per_delivery_by_thread.as_ref().and_then(|t| t.get(role).copied());
        cells.extend([f(all, 2), String::new(), String::new()]);
        cells
    };
    let mut own: Vec<String> = r.per_node.iter().map(|n| f(n.cpu_us_per_own_delivery, 2)).collect();
    own.extend(["".into(), "".into(), "".into()]);
    let mib = |k: Option<u64>| f(k.map(|k| k as f64 / 1024.0), 1);
    let mut rss: Vec<String> = r.per_node.iter().map(|n| mib(n.rss_after_kib)).collect();
    rss.extend([mib(r.all.server_rss_after_kib), mib(r.nats_rss_after_kib), String::new()]);
    let rows = vec![
        ("CPU (% of a core)", cpu_percent),
        ("CPU per delivery, all deliveries (µs)", per_delivery),
        ("… HTTP threads", by_thread("http")),
        ("… WebSocket threads", by_thread("ws")),
        ("… cluster thread", by_thread("cluster")),
        ("… other threads", by_thread("other")),
        ("CPU per delivery to its own subscribers (µs)", own),
        ("RSS after (MiB)", rss),
    ];
    print_grid("cluster: CPU by process", &headers, &rows);
    if let Some(stored) = r.stored_messages {
        println!(
            "  node1 stored {stored} messages ({} publications each), round trip to acknowledged {} ms on average",
            f(r.publications_per_stored_message, 1),
            f(r.store_round_trip_mean_ms, 2)
        );
    }
    out.herald = Some(serde_json::to_value(r).expect("serialises"));
    out
}

/// A plain table: a title, column headers and labelled rows.
fn print_grid(title: &str, headers: &[String], rows: &[(&str, Vec<String>)]) {
    println!("\n{title}");
    let width = rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
    let cols: Vec<usize> = (0..headers.len())
        .map(|i| {
            let cells = rows.iter().filter_map(|(_, v)| v.get(i)).map(|v| v.chars().count());
            cells.chain([headers[i].chars().count()]).max().unwrap_or(0).max(8)
        })
        .collect();
    let line = |label: &str, cells: &[String]| {
        let mut line = format!("  {label:width$}");
        for (cell, w) in cells.iter().zip(&cols) {
            line.push_str(&format!("  {cell:>w$}"));
        }
        println!("{}", line.trim_end());
    };
    line("", headers);
    for (label, values) in rows {
        line(label, values);
    }
}

/// Least-squares slope of y over x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The cluster against one node of the same binary, run round by round in alternating order
/// (`cluster --against-single`): each round's CPU per delivery (the nodes and NATS against the
/// node) and latency. Returns the medians over the rounds neither of whose runs was disturbed
/// (other CPU on the machine ≥ [`DISTURBED_PERCENT`]), or over all when every round was.
pub fn against_single(pairs: &[(FanoutResult, ClusterResult)]) -> BTreeMap<String, f64> {
    let ms = |l: &Option<Latency>, q: fn(&Latency) -> u64| l.as_ref().map(|l| q(l) as f64 / 1000.0);
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    let disturbed = |r: &FanoutResult| r.other_cpu_percent.is_some_and(|p| p >= DISTURBED_PERCENT);
    println!(
        "\ncluster against one node of the same binary (same plan, a fresh node or cluster per run, alternating order)"
    );
    println!(
        "  round  CPU µs/delivery: node / cluster+NATS = ratio   p50 ms: node / cluster   p99 ms: node / cluster (gap) / other nodes' (gap)   other CPU %"
    );
    // Each round's ratio, p99 gaps (all the cluster's subscribers; only those of the nodes that
    // do not take the publishes, whose every delivery crossed NATS) and whether nobody else
    // disturbed it.
    let mut rounds = Vec::new();
    for (i, (single, cluster)) in pairs.iter().enumerate() {
        let ratio = single
            .server_cpu_us_per_delivery
            .zip(cluster.nodes_and_nats_cpu_us_per_delivery)
            .filter(|(s, _)| *s > 0.0)
            .map(|(s, c)| c / s);
        let (p99_single, p99_cluster) =
            (ms(&single.latency, |l| l.p99_us), ms(&cluster.all.latency, |l| l.p99_us));
        let gap = p99_single.zip(p99_cluster).map(|(s, c)| c - s);
        let p99_other = cluster.other_nodes.as_ref().and_then(|g| ms(&g.latency, |l| l.p99_us));
        let gap_other = p99_single.zip(p99_other).map(|(s, o)| o - s);
        let clean = !disturbed(single) && !disturbed(&cluster.all);
        println!(
            "  {:>5}  {:>6} / {:>6} = {:>5}   {:>6} / {:>6}   {:>6} / {:>6} ({:>6}) / {:>6} ({:>6})   {:>4} / {:>4}{}",
            i + 1,
            f(single.server_cpu_us_per_delivery),
            f(cluster.nodes_and_nats_cpu_us_per_delivery),
            f(ratio),
            f(ms(&single.latency, |l| l.p50_us)),
            f(ms(&cluster.all.latency, |l| l.p50_us)),
            f(p99_single),
            f(p99_cluster),
            f(gap),
            f(p99_other),
            f(gap_other),
            single.other_cpu_percent.map_or("-".into(), |p| format!("{p:.0}")),
            cluster.all.other_cpu_percent.map_or("-".into(), |p| format!("{p:.0}")),
            if clean { "" } else { "  (disturbed)" }
        );
        rounds.push((clean, ratio, gap, gap_other));
    }
    let any_clean = rounds.iter().any(|r| r.0);
    let counted = || rounds.iter().filter(|r| r.0 || !any_clean);
    let ratios: Vec<f64> = counted().filter_map(|r| r.1).collect();
    let gaps: Vec<f64> = counted().filter_map(|r| r.2).collect();
    let gaps_other: Vec<f64> = counted().filter_map(|r| r.3).collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| {
            if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 }
        })
    };
    let mut out = BTreeMap::new();
    let (ratio, gap, gap_other) = (median(ratios), median(gaps), median(gaps_other));
    println!(
        "  median: CPU per delivery {}× the node's, p99 {} ms over the node's ({} ms for the other nodes' subscribers)",
        f(ratio),
        f(gap),
        f(gap_other)
    );
    if let Some(r) = ratio {
        out.insert("cluster_cpu_per_delivery_to_single_node".to_owned(), r);
    }
    if let Some(g) = gap {
        out.insert("cluster_p99_minus_single_node_ms".to_owned(), g);
    }
    if let Some(g) = gap_other {
        out.insert("cluster_other_nodes_p99_minus_single_node_ms".to_owned(), g);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let s = slope(&[(0.0, 10.0), (1000.0, 5010.0), (2000.0, 10010.0)]).unwrap();
        assert!((s - 5.0).abs() < 1e-9);
        assert!(slope(&[(1.0, 1.0)]).is_none());
    }
}
