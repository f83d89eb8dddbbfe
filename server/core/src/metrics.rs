//! The process's Prometheus metrics that are recorded where things happen: latency histograms
//! and counters by outcome. Recorded through [`metrics()`]; the server encodes them for
//! `/metrics` together with the gauges and counters it reads from [`crate::stats`] at scrape
//! time. Every label here has a fixed, small set of values (no tenant, channel or user ids):
//! per-tenant series are the server's, under a cap.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::Transport;
use crate::error::Code;

/// Latency buckets in seconds: 0.25 ms doubling to about 8 s.
fn fast_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Buckets for calls to tenants' endpoints: 1 ms doubling to about 33 s.
fn outbound_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportCode {
    pub transport: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Limit {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The OpenAPI operation id, or `other` for requests no operation answered.
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

/// A request method as a label: the common ones by name, any other as `OTHER` (bounded).
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

/// Every family recorded in place. Cloning a family shares it (the registry holds clones).
pub struct Metrics {
    /// From a message's acceptance to its hand-over to this node's subscriber queues.
    pub publish_to_deliver: Histogram,
    /// REST requests by operation, method and status.
    pub http_requests: Histograms<Route>,
    /// Storing one message in JetStream, until its acknowledgement.
    pub jetstream_publish: Histogram,
    /// Webhook requests, until the receiver's answer (or the failure).
    pub webhook_requests: Histogram,
    /// Proxy calls by kind, until the tenant's answer (or the failure).
    pub proxy_requests: Histograms<Kind>,
    /// Connections closed, by transport and close code.
    pub closed: Family<TransportCode, Counter>,
    /// Resumed subscriptions: `recovered` or `not_recovered`.
    pub resumes: Family<Outcome, Counter>,
    /// Requests and commands refused by a quota or limit, by error code.
    pub refused: Family<Limit, Counter>,
    /// TLS connections by negotiated protocol (`h2`, `http/1.1`).
    pub tls_connections: Family<Protocol, Counter>,
    /// TLS handshakes that failed (`error`) or did not finish in time (`timeout`).
    pub tls_handshake_failures: Family<Reason, Counter>,
    /// Certificate reloads: `ok`, or `failed` (the previous certificate stays).
    pub tls_reloads: Family<Outcome, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Protocol {
    pub protocol: &'static str,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    publish_to_deliver: fast_buckets(),
    http_requests: Family::new_with_constructor(fast_buckets),
    jetstream_publish: fast_buckets(),
    webhook_requests: outbound_buckets(),
    proxy_requests: Family::new_with_constructor(outbound_buckets),
    closed: Family::default(),
    resumes: Family::default(),
    refused: Family::default(),
    tls_connections: Family::default(),
    tls_handshake_failures: Family::default(),
    tls_reloads: Family::default(),
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Adds every family to `registry` (whose prefix is `herald`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "publish_to_deliver",
            "Time from a message's acceptance to its hand-over to this node's subscribers (millisecond precision: acceptance is timestamped in ms)",
            Unit::Seconds,
            self.publish_to_deliver.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "REST API requests by operation id, method and status",
            Unit::Seconds,
            self.http_requests.clone(),
        );
        registry.register_with_unit(
            "jetstream_publish_duration",
            "Storing a message in its JetStream stream, until acknowledged (cluster mode)",
            Unit::Seconds,
            self.jetstream_publish.clone(),
        );
        registry.register_with_unit(
            "webhook_request_duration",
            "Webhook requests until the receiver answered or the attempt failed",
            Unit::Seconds,
            self.webhook_requests.clone(),
        );
        registry.register_with_unit(
            "proxy_request_duration",
            "Calls to tenants' proxy endpoints by kind, until answered or failed",
            Unit::Seconds,
            self.proxy_requests.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections closed, by transport and close code",
            self.closed.clone(),
        );
        registry.register(
            "resumes",
            "Subscriptions that asked to resume from a position: recovered (nothing missed) or not_recovered",
            self.resumes.clone(),
        );
        registry.register(
            "limit_refusals",
            "Requests and commands refused by a quota or limit, by error code",
            self.refused.clone(),
        );
        registry.register(
            "tls_connections",
            "TLS connections accepted, by the protocol ALPN chose (h2 or http/1.1)",
            self.tls_connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (error) or did not finish within the header-read timeout (timeout)",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "tls_certificate_reloads",
            "Certificate reloads (SIGHUP or changed files): ok, or failed with the previous certificate kept",
            self.tls_reloads.clone(),
        );
    }

    pub fn tls_connection(&self, protocol: &'static str) {
        self.tls_connections.get_or_create(&Protocol { protocol }).inc();
    }

    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failures.get_or_create(&Reason { reason }).inc();
    }

    pub fn tls_reloaded(&self, ok: bool) {
        self.tls_reloads.get_or_create(&Outcome { outcome: if ok { "ok" } else { "failed" } }).inc();
    }

    pub fn connection_closed(&self, transport: Transport, code: u16) {
        self.closed.get_or_create(&TransportCode { transport: transport.as_str(), code }).inc();
    }

    pub fn resumed(&self, recovered: bool) {
        let outcome = if recovered { "recovered" } else { "not_recovered" };
        self.resumes.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts a refusal when `code` is one of the quota and limit codes.
    pub fn refused(&self, code: Code) {
        if code.is_limit() {
            self.refused.get_or_create(&Limit { code: code.as_str() }).inc();
        }
    }

    pub fn http_request(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&Route { route, method: method_label(method), status })
            .observe(took.as_secs_f64());
    }

    pub fn proxy_request(&self, kind: &'static str, took: Duration) {
        self.proxy_requests.get_or_create(&Kind { kind }).observe(took.as_secs_f64());
    }
}
