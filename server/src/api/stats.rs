use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use poem::Request;
use poem::web::Data;
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::{Object, OpenApi, SecurityScheme};

use super::Tag;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::state::SharedState;
use herald_core::stats::{Rated, StatsSample};
use herald_types::model::Scope;

#[derive(Default)]
pub struct StatsApi;

/// A credential as presented, and what it resolved to. The schemes below never fail on their
/// own, so the handler answers with the credential's real problem (`api_key_revoked`,
/// `session_expired`, …) rather than the generic "no credentials" of a failed scheme, and the
/// stream can check the same credential again while it runs.
pub struct Presented {
    token: String,
    principal: ApiResult<Principal>,
}

async fn present(req: &Request, token: String) -> poem::Result<Presented> {
    let state = req.data::<SharedState>().expect("state is attached to every request");
    let principal = crate::auth::authenticate(state, &token).await;
    Ok(Presented { token, principal })
}

/// `Authorization: Bearer <admin token | admin session JWT | tenant API key>`.
#[derive(SecurityScheme)]
#[oai(rename = "BearerAuth", ty = "bearer", checker = "check_bearer")]
pub struct StatsBearer(Presented);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Presented> {
    present(req, bearer.token).await
}

/// The same credentials as `Authorization: Bearer`, passed as `?token=` for EventSource, which
/// cannot set headers.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_in = "query", key_name = "token", checker = "check_query_token")]
pub struct QueryToken(Presented);

async fn check_query_token(req: &Request, key: ApiKey) -> poem::Result<Presented> {
    present(req, key.key).await
}

#[derive(SecurityScheme)]
pub enum StatsAuth {
    Bearer(StatsBearer),
    Query(QueryToken),
}

impl StatsAuth {
    fn presented(&self) -> &Presented {
        match self {
            StatsAuth::Bearer(b) => &b.0,
            StatsAuth::Query(q) => &q.0,
        }
    }

    /// The caller, allowed to read statistics.
    fn principal(&self) -> ApiResult<Principal> {
        let who = self.presented().principal.clone()?;
        check(&who)?;
        Ok(who)
    }
}

#[derive(Object, Clone)]
#[oai(skip_serializing_if_is_none)]
struct Connections {
    websocket: i64,
    sse: i64,
    long_poll: i64,
}

#[derive(Object, Clone)]
#[oai(skip_serializing_if_is_none)]
struct Figures {
    /// Open connections by transport.
    connections: Connections,
    /// Active channel subscriptions.
    subscriptions: i64,
    /// Messages accepted for publishing, per second over the last sample.
    published_per_second: f64,
    /// Messages handed to subscriber connections, per second over the last sample.
    delivered_per_second: f64,
    published_total: u64,
    delivered_total: u64,
    /// Connections closed as slow consumers since start.
    slow_consumers_total: u64,
}

impl From<&Rated> for Figures {
    fn from(r: &Rated) -> Self {
        let c = &r.counters;
        Figures {
            connections: Connections {
                websocket: c.connections_websocket,
                sse: c.connections_sse,
                long_poll: c.connections_long_poll,
            },
            subscriptions: c.subscriptions,
            published_per_second: r.published_per_second,
            delivered_per_second: r.delivered_per_second,
            published_total: c.published,
            delivered_total: c.delivered,
            slow_consumers_total: c.slow_consumers,
        }
    }
}

#[derive(Object, Clone)]
#[oai(skip_serializing_if_is_none)]
struct NodeStats {
    node: String,
    #[oai(flatten)]
    figures: Figures,
}

#[derive(Object, Clone)]
#[oai(skip_serializing_if_is_none)]
struct TenantStats {
    tenant: String,
    #[oai(flatten)]
    figures: Figures,
}

#[derive(Object, Clone)]
#[oai(skip_serializing_if_is_none)]
struct StatsReport {
    /// Sample time, milliseconds since the Unix epoch.
    ts: i64,
    /// Per node: this one, and in cluster mode every live node (the operator's view; empty for
    /// tenant keys).
    nodes: Vec<NodeStats>,
    /// Per tenant, summed over nodes; a tenant key sees only its own.
    tenants: Vec<TenantStats>,
    /// This node's webhook and proxy figures since it started (the operator's view only).
    hooks: Option<HookFigures>,
}

#[derive(Object, Clone)]
#[oai(skip_serializing_if_is_none)]
struct ProxyFigures {
    /// `connect`, `subscribe`, `publish` or `refresh`.
    kind: String,
    allowed: u64,
    denied: u64,
    failed: u64,
    /// Mean wait for the calls that got an answer (any status).
    mean_latency_ms: Option<f64>,
}

#[derive(Object, Clone)]
#[oai(skip_serializing_if_is_none)]
struct HookFigures {
    webhook_events_queued: u64,
    webhook_events_dropped: u64,
    webhook_attempts: u64,
    webhook_deliveries_succeeded: u64,
    webhook_deliveries_failed: u64,
    webhook_retries: u64,
    proxies: Vec<ProxyFigures>,
}

fn hook_figures(state: &SharedState) -> HookFigures {
    use std::sync::atomic::Ordering::Relaxed;
    let h = &state.hooks.counters;
    let proxies = herald_types::model::ProxyKind::ALL
        .into_iter()
        .map(|kind| {
            let c = state.proxies.counters(kind);
            let (allowed, denied, failed) =
                (c.allowed.load(Relaxed), c.denied.load(Relaxed), c.failed.load(Relaxed));
            let answered = c.answered.load(Relaxed);
            let mean_latency_ms =
                (answered > 0).then(|| c.latency_us.load(Relaxed) as f64 / answered as f64 / 1000.0);
            ProxyFigures { kind: kind.as_str().into(), allowed, denied, failed, mean_latency_ms }
        })
        .collect();
    HookFigures {
        webhook_events_queued: h.events_queued.load(Relaxed),
        webhook_events_dropped: h.events_dropped.load(Relaxed),
        webhook_attempts: h.attempts.load(Relaxed),
        webhook_deliveries_succeeded: h.succeeded.load(Relaxed),
        webhook_deliveries_failed: h.failed.load(Relaxed),
        webhook_retries: h.retried.load(Relaxed),
        proxies,
    }
}

/// Adds one node's figures to a cluster total (rates add up too).
fn add(total: &mut Rated, r: &Rated) {
    let (t, c) = (&mut total.counters, &r.counters);
    t.connections_websocket += c.connections_websocket;
    t.connections_sse += c.connections_sse;
    t.connections_long_poll += c.connections_long_poll;
    t.subscriptions += c.subscriptions;
    t.published += c.published;
    t.delivered += c.delivered;
    t.slow_consumers += c.slow_consumers;
    total.published_per_second += r.published_per_second;
    total.delivered_per_second += r.delivered_per_second;
}

/// What `who` may see of the cluster's latest samples: this node's, and in cluster mode
/// every live peer's, with tenant figures summed over nodes.
fn report(state: &SharedState, sample: &StatsSample, who: &Principal) -> StatsReport {
    let mut samples = vec![(state.hub.settings.node_id.clone(), std::sync::Arc::new(sample.clone()))];
    samples.extend(state.hub.backend().control.peer_samples());
    let mut tenants: std::collections::BTreeMap<String, Rated> = std::collections::BTreeMap::new();
    for (_, s) in &samples {
        for (id, r) in &s.tenants {
            let visible = match who {
                Principal::Admin { .. } => true,
                Principal::TenantKey { tenant, .. } => **id == **tenant,
            };
            if visible {
                add(tenants.entry(id.to_string()).or_default(), r);
            }
        }
    }
    let tenants =
        tenants.into_iter().map(|(tenant, r)| TenantStats { tenant, figures: (&r).into() }).collect();
    let nodes = if who.is_admin() {
        samples.iter().map(|(node, s)| NodeStats { node: node.clone(), figures: (&s.node).into() }).collect()
    } else {
        Vec::new()
    };
    let hooks = who.is_admin().then(|| hook_figures(state));
    StatsReport { ts: sample.ts, nodes, tenants, hooks }
}

fn check(who: &Principal) -> ApiResult<()> {
    match who {
        Principal::Admin { .. } => Ok(()),
        Principal::TenantKey { tenant, .. } => who.require(tenant, Some(Scope::StatsRead)),
    }
}

#[OpenApi(tag = "Tag::Stats")]
impl StatsApi {
    /// Current statistics
    ///
    /// The admin sees every node and tenant; a tenant key with `stats:read` sees its tenant.
    /// Rates are over the last second.
    #[oai(path = "/v1/stats", method = "get", operation_id = "stats")]
    async fn stats(&self, state: Data<&SharedState>, auth: StatsAuth) -> ApiResult<Json<StatsReport>> {
        let who = auth.principal()?;
        Ok(Json(report(&state, &state.hub.sample(), &who)))
    }

    /// Live statistics
    ///
    /// Server-Sent Events: one `StatsReport` per second. EventSource clients pass the admin
    /// session token (or a `stats:read` key) as `?token=`. The credential is checked again
    /// before every report: the stream ends once it is revoked, expires or loses its scope.
    #[oai(path = "/v1/stats/stream", method = "get", operation_id = "statsStream")]
    async fn stream(
        &self,
        state: Data<&SharedState>,
        auth: StatsAuth,
    ) -> ApiResult<EventStream<BoxStream<'static, StatsReport>>> {
        auth.principal()?;
        let token = auth.presented().token.clone();
        let state = (*state).clone();
        let ticks = tokio_stream_interval(Duration::from_secs(1));
        let stream = ticks
            .then(move |_| {
                let (state, token) = (state.clone(), token.clone());
                async move {
                    let who = crate::auth::authenticate(&state, &token).await.ok()?;
                    check(&who).ok()?;
                    Some(report(&state, &state.hub.sample(), &who))
                }
            })
            .take_while(|report| std::future::ready(report.is_some()))
            .filter_map(std::future::ready)
            .boxed();
        Ok(EventStream::new(stream).keep_alive(Duration::from_secs(15)))
    }
}

/// A stream that yields once right away and then every `period`.
fn tokio_stream_interval(period: Duration) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold(None::<tokio::time::Interval>, move |interval| async move {
        let mut interval = interval.unwrap_or_else(|| {
            let mut i = tokio::time::interval(period);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        interval.tick().await;
        Some(((), Some(interval)))
    })
}
