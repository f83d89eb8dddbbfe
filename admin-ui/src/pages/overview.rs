//! The overview: live charts of the stats stream for the cluster, one node or one tenant, and
//! per-node and per-tenant tables.

use leptos::prelude::*;

use crate::chart::{Line, chart, format_value, sparkline};
use crate::router::{self, Tab};
use crate::stats::{self, Figures, HookFigures, Live, Scope, Status};
use crate::ui::{Empty, Link, Loading, Table};

pub const C_WS: &str = "#4f46e5";
pub const C_SSE: &str = "#0891b2";
pub const C_POLL: &str = "#d97706";
pub const C_PUB: &str = "#16a34a";
pub const C_DEL: &str = "#7c3aed";
pub const C_SUBS: &str = "#0f766e";
pub const C_DROP: &str = "#dc2626";

/// A series of one figure over the samples.
pub fn series(live: &Live, scope: &Scope, f: impl Fn(&Figures) -> f64) -> Vec<(i64, f64)> {
    live.samples.iter().map(|r| (r.ts, f(&r.figures(scope)))).collect()
}

/// Slow-consumer disconnections per second, from the differences of the running total.
pub fn drops(live: &Live, scope: &Scope) -> Vec<(i64, f64)> {
    let totals = series(live, scope, |f| f.slow_consumers_total as f64);
    totals.windows(2).map(|w| (w[1].0, (w[1].1 - w[0].1).max(0.0))).collect()
}

/// The four live charts for `scope`.
pub fn charts(live: &Live, scope: &Scope) -> impl IntoView + use<> {
    let end = live.latest().map(|r| r.ts).unwrap_or_else(|| js_sys::Date::now() as i64);
    let connections = vec![
        Line {
            name: "WebSocket",
            color: C_WS,
            points: series(live, scope, |f| f.connections.websocket as f64),
        },
        Line { name: "SSE", color: C_SSE, points: series(live, scope, |f| f.connections.sse as f64) },
        Line {
            name: "Long poll",
            color: C_POLL,
            points: series(live, scope, |f| f.connections.long_poll as f64),
        },
    ];
    let messages = vec![
        Line { name: "Published / s", color: C_PUB, points: series(live, scope, |f| f.published_per_second) },
        Line { name: "Delivered / s", color: C_DEL, points: series(live, scope, |f| f.delivered_per_second) },
    ];
    let subscriptions = vec![Line {
        name: "Subscriptions",
        color: C_SUBS,
        points: series(live, scope, |f| f.subscriptions as f64),
    }];
    let dropped = vec![Line { name: "Drops / s", color: C_DROP, points: drops(live, scope) }];
    view! {
        <div class="chart-grid">
            {chart("Connections by transport", connections, end)}
            {chart("Messages per second", messages, end)}
            {chart("Subscriptions", subscriptions, end)}
            {chart("Slow-consumer drops", dropped, end)}
        </div>
    }
}

fn kpi(label: &'static str, value: String, sub: String) -> impl IntoView {
    view! {
        <div class="kpi card" data-kpi=label>
            <div class="kpi-label">{label}</div>
            <div class="kpi-value">{value}</div>
            <div class="kpi-sub muted">{sub}</div>
        </div>
    }
}

/// Headline figures for `scope` at the latest sample.
pub fn kpis(live: &Live, scope: &Scope) -> impl IntoView + use<> {
    let f = live.latest().map(|r| r.figures(scope)).unwrap_or_default();
    let c = &f.connections;
    view! {
        <div class="kpi-grid">
            {kpi(
                "Connections",
                c.total().to_string(),
                format!("{} WebSocket · {} SSE · {} poll", c.websocket, c.sse, c.long_poll),
            )}
            {kpi("Subscriptions", f.subscriptions.to_string(), "active channel subscriptions".into())}
            {kpi(
                "Published / s",
                format_value(f.published_per_second),
                format!("{} since start", f.published_total),
            )}
            {kpi(
                "Delivered / s",
                format_value(f.delivered_per_second),
                format!("{} since start", f.delivered_total),
            )}
            {kpi("Slow consumers", f.slow_consumers_total.to_string(), "disconnected since start".into())}
        </div>
    }
}

fn figures_cells(f: &Figures) -> impl IntoView + use<> {
    let c = &f.connections;
    view! {
        <td class="num" data-col="websocket">{c.websocket}</td>
        <td class="num" data-col="sse">{c.sse}</td>
        <td class="num" data-col="long_poll">{c.long_poll}</td>
        <td class="num" data-col="subscriptions">{f.subscriptions}</td>
        <td class="num">{format_value(f.published_per_second)}</td>
        <td class="num">{format_value(f.delivered_per_second)}</td>
        <td class="num">{f.published_total}</td>
        <td class="num">{f.delivered_total}</td>
        <td class="num">{f.slow_consumers_total}</td>
    }
}

/// A table of figures per `first` (node or tenant), with a sparkline of its connections.
/// This node's webhook and proxy figures since it started (the operator's view).
fn hook_card(h: HookFigures) -> impl IntoView {
    let webhooks = Table::new("webhook-figures")
        .nums(&["Events queued", "Events dropped", "Attempts", "Succeeded", "Failed", "Retries"])
        .rows([h.clone()], |h| {
            view! {
                <tr data-hooks="">
                    <td class="num" data-col="queued">{h.webhook_events_queued}</td>
                    <td class="num" data-col="dropped">{h.webhook_events_dropped}</td>
                    <td class="num" data-col="attempts">{h.webhook_attempts}</td>
                    <td class="num" data-col="succeeded">{h.webhook_deliveries_succeeded}</td>
                    <td class="num" data-col="failed">{h.webhook_deliveries_failed}</td>
                    <td class="num" data-col="retries">{h.webhook_retries}</td>
                </tr>
            }
        });
    let proxies = Table::new("proxy-figures")
        .col("Proxy")
        .nums(&["Allowed", "Denied", "Failed", "Mean latency"])
        .rows(h.proxies, |p| {
            let latency = p.mean_latency_ms.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.1} ms"));
            view! {
                <tr data-proxy=p.kind.clone()>
                    <td class="mono">{p.kind.clone()}</td>
                    <td class="num" data-col="allowed">{p.allowed}</td>
                    <td class="num" data-col="denied">{p.denied}</td>
                    <td class="num" data-col="failed">{p.failed}</td>
                    <td class="num" data-col="latency">{latency}</td>
                </tr>
            }
        });
    view! {
        <section class="card" data-card="hooks">
            <h2 class="card-title">"Webhooks and proxies on this node"</h2>
            <p class="muted small">"Since the node started. Per-webhook delivery logs are on each tenant's Webhooks page."</p>
            {webhooks}
            {proxies}
        </section>
    }
}

fn figures_table(name: &'static str, first: &'static str) -> Table {
    Table::new(name)
        .wide()
        .col(first)
        .nums(&["WS", "SSE", "Poll", "Subs", "Pub/s", "Del/s", "Published", "Delivered", "Drops"])
        .col("Connections")
}

#[component]
pub fn Overview() -> impl IntoView {
    let scope = RwSignal::new(Scope::Cluster);
    let live = stats::live();

    // Only the names: the picker is redrawn when a node or tenant appears, not every second.
    let names = Memo::new(move |_| {
        live.with(|l| {
            l.latest()
                .map(|r| {
                    (
                        r.nodes.iter().map(|n| n.node.clone()).collect::<Vec<_>>(),
                        r.tenants.iter().map(|t| t.tenant.clone()).collect::<Vec<_>>(),
                    )
                })
                .unwrap_or_default()
        })
    });
    let scope_picker = move || {
        let (nodes, tenants) = names.get();
        let button = move |label: String, s: Scope| {
            let s2 = s.clone();
            view! {
                <button
                    type="button"
                    class="seg"
                    class:active=move || scope.get() == s2
                    on:click=move |_| scope.set(s.clone())
                >
                    {label}
                </button>
            }
        };
        let mut buttons = vec![button("Whole cluster".into(), Scope::Cluster).into_any()];
        for n in nodes {
            buttons.push(button(format!("Node {n}"), Scope::Node(n)).into_any());
        }
        let options = tenants
            .into_iter()
            .map(|t| {
                let selected = scope.get_untracked() == Scope::Tenant(t.clone());
                view! {
                    <option value=t.clone() selected=selected>
                        {t.clone()}
                    </option>
                }
            })
            .collect::<Vec<_>>();
        view! {
            <div class="segmented">{buttons}</div>
            <select
                class="select-inline"
                aria-label="Tenant"
                on:change=move |ev| {
                    let v = event_target_value(&ev);
                    scope.set(if v.is_empty() { Scope::Cluster } else { Scope::Tenant(v) });
                }
            >
                <option value="" selected=move || !matches!(scope.get(), Scope::Tenant(_))>
                    "Chart one tenant…"
                </option>
                {options}
            </select>
        }
    };

    let body = move || {
        let status = live.with(|l| l.status.clone());
        if let Status::Unavailable(why) = status {
            return view! {
                <Empty title="Live statistics are not available to this session." hint=why />
            }
            .into_any();
        }
        if live.with(|l| l.samples.is_empty()) {
            return view! { <Loading what="live statistics" /> }.into_any();
        }
        let s = scope.get();
        live.with(|l| {
            let end = l.latest().map(|r| r.ts).unwrap_or_default();
            let report = l.latest().cloned();
            let nodes = report.as_ref().map(|r| r.nodes.clone()).unwrap_or_default();
            let has_nodes = !nodes.is_empty();
            let nodes = figures_table("nodes", "Node").rows(nodes, |n| {
                let spark = series(l, &Scope::Node(n.node.clone()), |f| f.connections.total() as f64);
                view! {
                    <tr data-node=n.node.clone()>
                        <td class="mono">{n.node.clone()}</td>
                        {figures_cells(&n.figures)}
                        <td>{sparkline(&spark, end, C_WS)}</td>
                    </tr>
                }
            });
            let hooks = report.as_ref().and_then(|r| r.hooks.clone());
            let tenants = report.as_ref().map(|r| r.tenants.clone()).unwrap_or_default();
            let tenants = figures_table("tenants", "Tenant")
                .empty(
                    "No tenant has had activity on this node yet.",
                    "Tenants appear here once clients connect or messages are published.",
                )
                .rows(tenants, |t| {
                    let spark = series(l, &Scope::Tenant(t.tenant.clone()), |f| f.connections.total() as f64);
                    let (attr, label) = (t.tenant.clone(), t.tenant.clone());
                    view! {
                        <tr data-tenant=attr>
                            <td>
                                <Link href=router::tenant_path(&t.tenant, Tab::Settings) class="mono">
                                    {label}
                                </Link>
                            </td>
                            {figures_cells(&t.figures)}
                            <td>{sparkline(&spark, end, C_WS)}</td>
                        </tr>
                    }
                });
            view! {
                {kpis(l, &s)}
                {charts(l, &s)}
                {has_nodes
                    .then(|| {
                        view! {
                            <section class="card">
                                <h2 class="card-title">"Nodes"</h2>
                                {nodes}
                            </section>
                        }
                    })}
                <section class="card">
                    <h2 class="card-title">"Tenants"</h2>
                    {tenants}
                </section>
                {hooks.map(hook_card)}
            }
            .into_any()
        })
    };

    view! {
        <div class="page-head">
            <div>
                <h1>"Overview"</h1>
                <p class="muted">"Live from the delivery core, one sample per second, last five minutes."</p>
            </div>
            <div class="page-actions">{scope_picker}</div>
        </div>
        {body}
    }
}
