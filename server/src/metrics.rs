//! `/metrics`: the node's figures in the Prometheus text format (or OpenMetrics, when the
//! scraper asks for it), encoded by `prometheus-client`.
//!
//! Two sources: the histograms and outcome counters the code records in place
//! ([`herald_core::metrics`]), and the gauges and counters read at scrape time from the
//! statistics the stats API and dashboard show ([`Scrape`]). Labels are bounded: transports,
//! close codes, error codes, operation ids, proxy kinds; tenant ids only on the `herald_tenant_*`
//! series, for at most `metrics_tenant_series` tenants (the rest summed under `tenant="_other"`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald_core::StatsSnapshot;
use poem::{Endpoint, IntoResponse, Request, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::state::SharedState;

/// The label value that sums the tenants past the cap.
pub const OTHER_TENANTS: &str = "_other";

/// Renders every metric; `openmetrics` picks that format over Prometheus text 0.0.4.
pub async fn render(state: &SharedState, openmetrics: bool) -> (&'static str, String) {
    let database_up =
        matches!(tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await, Ok(Ok(())));
    let cluster = state.hub.backend().kind != "memory";
    let scrape = Scrape {
        node: state.hub.stats.snapshot(),
        tenants: capped_tenants(state.hub.stats.tenant_snapshots(), state.config.metrics_tenant_series),
        database_up,
        nats_up: cluster.then(|| state.hub.health().is_ok()),
        draining: state.draining.load(Ordering::Relaxed),
        hooks: {
            let h = &state.hooks.counters;
            let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            [
                ("webhook_events_queued", "Webhook deliveries stored in the queue.", n(&h.events_queued)),
                (
                    "webhook_events_dropped",
                    "Webhook events dropped: the tenant's queue or the node's buffer was full.",
                    n(&h.events_dropped),
                ),
                ("webhook_attempts", "Webhook requests sent.", n(&h.attempts)),
                ("webhook_deliveries_succeeded", "Webhook deliveries answered 2xx.", n(&h.succeeded)),
                ("webhook_deliveries_failed", "Webhook deliveries given up.", n(&h.failed)),
                ("webhook_retries", "Webhook attempts that failed and were scheduled again.", n(&h.retried)),
                ("webhook_breaker_opened", "Times a webhook's circuit breaker opened.", n(&h.breaker_opened)),
            ]
        },
        proxies: herald_types::model::ProxyKind::ALL
            .iter()
            .flat_map(|kind| {
                let c = state.proxies.counters(*kind);
                [("allowed", &c.allowed), ("denied", &c.denied), ("failed", &c.failed)]
                    .map(|(outcome, n)| (kind.as_str(), outcome, n.load(Ordering::Relaxed)))
            })
            .collect(),
    };
    let mut registry = Registry::with_prefix("herald");
    herald_core::metrics::metrics().register(&mut registry);
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(16 * 1024);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", out)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String");
        ("text/plain; version=0.0.4; charset=utf-8", out)
    }
}

/// The first `cap` tenants by id, then the sum of the others under [`OTHER_TENANTS`]. Ordering
/// by id (not by size) keeps a tenant's series stable from scrape to scrape.
/// `all` comes sorted by id ([`herald_core::Stats::tenant_snapshots`]).
fn capped_tenants(mut all: Vec<(Arc<str>, StatsSnapshot)>, cap: u32) -> Vec<(Arc<str>, StatsSnapshot)> {
    let cap = cap as usize;
    if all.len() <= cap {
        return all;
    }
    let rest = all.split_off(cap);
    let mut other = StatsSnapshot::default();
    for (_, s) in rest {
        other.connections_websocket += s.connections_websocket;
        other.connections_sse += s.connections_sse;
        other.connections_long_poll += s.connections_long_poll;
        other.subscriptions += s.subscriptions;
        other.published += s.published;
        other.delivered += s.delivered;
        other.slow_consumers += s.slow_consumers;
    }
    all.push((Arc::from(OTHER_TENANTS), other));
    all
}

/// Figures read once per scrape.
#[derive(Debug)]
struct Scrape {
    node: StatsSnapshot,
    tenants: Vec<(Arc<str>, StatsSnapshot)>,
    database_up: bool,
    /// `None` on a single node (no NATS).
    nats_up: Option<bool>,
    draining: bool,
    hooks: [(&'static str, &'static str, u64); 7],
    proxies: Vec<(&'static str, &'static str, u64)>,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.node;
        {
            let mut m = e.encode_descriptor(
                "connections",
                "Open client connections by transport.",
                None,
                MetricType::Gauge,
            )?;
            for (transport, n) in [
                ("websocket", s.connections_websocket),
                ("sse", s.connections_sse),
                ("long_poll", s.connections_long_poll),
            ] {
                ConstGauge::new(n).encode(m.encode_family(&[("transport", transport)])?)?;
            }
        }
        gauge(&mut e, "subscriptions", "Active channel subscriptions.", s.subscriptions)?;
        counter(&mut e, "messages_published", "Messages accepted for publishing.", s.published)?;
        counter(&mut e, "messages_delivered", "Messages handed to subscriber connections.", s.delivered)?;
        counter(
            &mut e,
            "slow_consumer_disconnects",
            "Connections closed because they could not keep up.",
            s.slow_consumers,
        )?;
        for (name, help, value) in self.hooks {
            counter(&mut e, name, help, value)?;
        }
        {
            let mut m = e.encode_descriptor(
                "proxy_requests",
                "Calls to tenants' proxy endpoints by kind and outcome.",
                None,
                MetricType::Counter,
            )?;
            for (kind, outcome, n) in &self.proxies {
                ConstCounter::new(*n).encode(m.encode_family(&[("kind", *kind), ("outcome", *outcome)])?)?;
            }
        }
        gauge(
            &mut e,
            "database_up",
            "1 when the database answered a ping within 2 s.",
            self.database_up.into(),
        )?;
        if let Some(up) = self.nats_up {
            gauge(&mut e, "nats_up", "1 when the NATS connection is up (cluster mode only).", up.into())?;
        }
        gauge(&mut e, "draining", "1 while the node is shutting down.", self.draining.into())?;
        {
            let mut m =
                e.encode_descriptor("build_info", "The running version (value 1).", None, MetricType::Gauge)?;
            ConstGauge::new(1).encode(m.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        }
        type Pick = fn(&StatsSnapshot) -> i64;
        let per_tenant: [(&str, &str, MetricType, Pick); 4] = [
            ("tenant_connections", "Open connections of a tenant on this node.", MetricType::Gauge, |s| {
                s.connections_websocket + s.connections_sse + s.connections_long_poll
            }),
            (
                "tenant_subscriptions",
                "Active subscriptions of a tenant on this node.",
                MetricType::Gauge,
                |s| s.subscriptions,
            ),
            (
                "tenant_messages_published",
                "Messages a tenant published through this node.",
                MetricType::Counter,
                |s| s.published as i64,
            ),
            (
                "tenant_messages_delivered",
                "Messages this node delivered to a tenant's subscribers.",
                MetricType::Counter,
                |s| s.delivered as i64,
            ),
        ];
        for (name, help, kind, pick) in per_tenant {
            if self.tenants.is_empty() {
                break;
            }
            let mut m = e.encode_descriptor(name, help, None, kind)?;
            for (tenant, s) in &self.tenants {
                let labels = [("tenant", &**tenant)];
                let value = pick(s);
                match kind {
                    MetricType::Counter => {
                        ConstCounter::new(value.max(0) as u64).encode(m.encode_family(&labels)?)?
                    }
                    _ => ConstGauge::new(value).encode(m.encode_family(&labels)?)?,
                }
            }
        }
        Ok(())
    }
}

/// Times a REST request into `herald_http_request_duration_seconds{route,method,status}`;
/// `route` is the OpenAPI operation id (`other` when no operation answered). Used with
/// [`poem::EndpointExt::around`].
pub async fn track_request<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let method = req.method().clone();
    let result = ep.call(req).await.map(IntoResponse::into_response);
    let (route, status) = match &result {
        Ok(resp) => (resp.data::<poem_openapi::OperationId>().map(|o| o.0), resp.status()),
        Err(err) => (err.data::<poem_openapi::OperationId>().map(|o| o.0), err.status()),
    };
    herald_core::metrics::metrics().http_request(
        route.unwrap_or("other"),
        method.as_str(),
        status.as_u16(),
        started.elapsed(),
    );
    result
}
