//! The live statistics stream (`GET /v1/stats/stream`, one report per second) and the last few
//! minutes of it, shared by every page (the overview charts, a tenant's live figures, the
//! presence page). One EventSource for the whole app, opened at login and closed at logout.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Duration;

use leptos::prelude::*;
use serde::Deserialize;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::Closure;
use web_sys::{Event, EventSource, MessageEvent};

use crate::{api, session};

/// How much history the charts keep: 5 minutes of one-second samples.
pub const WINDOW_MS: i64 = 5 * 60 * 1000;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Connections {
    pub websocket: i64,
    pub sse: i64,
    pub long_poll: i64,
}

impl Connections {
    pub fn total(&self) -> i64 {
        self.websocket + self.sse + self.long_poll
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Figures {
    pub connections: Connections,
    pub subscriptions: i64,
    pub published_per_second: f64,
    pub delivered_per_second: f64,
    pub published_total: u64,
    pub delivered_total: u64,
    pub slow_consumers_total: u64,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.connections.websocket += o.connections.websocket;
        self.connections.sse += o.connections.sse;
        self.connections.long_poll += o.connections.long_poll;
        self.subscriptions += o.subscriptions;
        self.published_per_second += o.published_per_second;
        self.delivered_per_second += o.delivered_per_second;
        self.published_total += o.published_total;
        self.delivered_total += o.delivered_total;
        self.slow_consumers_total += o.slow_consumers_total;
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct NodeStats {
    pub node: String,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TenantStats {
    pub tenant: String,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Report {
    pub ts: i64,
    #[serde(default)]
    pub nodes: Vec<NodeStats>,
    #[serde(default)]
    pub tenants: Vec<TenantStats>,
    /// This node's webhook and proxy figures (the operator's view only).
    #[serde(default)]
    pub hooks: Option<HookFigures>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HookFigures {
    pub webhook_events_queued: u64,
    pub webhook_events_dropped: u64,
    pub webhook_attempts: u64,
    pub webhook_deliveries_succeeded: u64,
    pub webhook_deliveries_failed: u64,
    pub webhook_retries: u64,
    pub proxies: Vec<ProxyFigures>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ProxyFigures {
    pub kind: String,
    pub allowed: u64,
    pub denied: u64,
    pub failed: u64,
    pub mean_latency_ms: Option<f64>,
}

/// What a chart shows: the whole cluster, one node or one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Node(String),
    Tenant(String),
}

impl Report {
    pub fn figures(&self, scope: &Scope) -> Figures {
        let mut f = Figures::default();
        match scope {
            // Tenant keys get no node rows: their cluster is their tenant.
            Scope::Cluster if self.nodes.is_empty() => self.tenants.iter().for_each(|t| f.add(&t.figures)),
            Scope::Cluster => self.nodes.iter().for_each(|n| f.add(&n.figures)),
            Scope::Node(id) => self.nodes.iter().filter(|n| &n.node == id).for_each(|n| f.add(&n.figures)),
            Scope::Tenant(id) => {
                self.tenants.iter().filter(|t| &t.tenant == id).for_each(|t| f.add(&t.figures))
            }
        }
        f
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Off,
    Connecting,
    Live,
    /// Reconnecting after an error (the message says why, when known).
    Retrying(String),
    /// Not available to this session (an API key without `stats:read`).
    Unavailable(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Live {
    pub status: Status,
    pub samples: VecDeque<Report>,
}

impl Live {
    pub fn latest(&self) -> Option<&Report> {
        self.samples.back()
    }
}

struct Stream {
    source: EventSource,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_error: Closure<dyn FnMut(Event)>,
}

thread_local! {
    static LIVE: Cell<Option<RwSignal<Live>>> = const { Cell::new(None) };
    static STREAM: RefCell<Option<Stream>> = const { RefCell::new(None) };
    static GENERATION: Cell<u64> = const { Cell::new(0) };
}

pub fn init() {
    LIVE.with(|l| l.set(Some(RwSignal::new(Live { status: Status::Off, samples: VecDeque::new() }))));
}

/// The live statistics, tracked.
pub fn live() -> RwSignal<Live> {
    LIVE.with(|l| l.get()).expect("stats::init ran")
}

fn close_stream() {
    STREAM.with(|s| {
        if let Some(stream) = s.borrow_mut().take() {
            stream.source.set_onmessage(None);
            stream.source.set_onopen(None);
            stream.source.set_onerror(None);
            stream.source.close();
        }
    });
}

/// Opens the stream for the current session (no-op when it is open).
pub fn start() {
    if STREAM.with(|s| s.borrow().is_some()) {
        return;
    }
    let Some(s) = session::get_untracked() else { return };
    if !s.can("stats:read") {
        live().update(|l| {
            l.status = Status::Unavailable("This API key has no stats:read scope.".into());
        });
        return;
    }
    let generation = GENERATION.with(|g| g.get());
    let url = format!("/v1/stats/stream?token={}", api::enc(&s.token));
    let Ok(source) = EventSource::new(&url) else {
        live().update(|l| l.status = Status::Retrying("The browser refused to open the stream.".into()));
        return;
    };
    live().update(|l| {
        if !matches!(l.status, Status::Retrying(_)) {
            l.status = Status::Connecting;
        }
    });
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        let Some(text) = e.data().as_string() else { return };
        let Ok(report) = serde_json::from_str::<Report>(&text) else { return };
        live().update(|l| {
            l.status = Status::Live;
            let cutoff = report.ts - WINDOW_MS - 2000;
            l.samples.push_back(report);
            while l.samples.front().is_some_and(|r| r.ts < cutoff) {
                l.samples.pop_front();
            }
        });
    });
    let on_open = Closure::<dyn FnMut(Event)>::new(move |_| live().update(|l| l.status = Status::Live));
    let on_error = Closure::<dyn FnMut(Event)>::new(move |e: Event| {
        let closed = e
            .target()
            .and_then(|t| t.dyn_into::<EventSource>().ok())
            .is_some_and(|s| s.ready_state() == EventSource::CLOSED);
        if !closed {
            // The browser reconnects by itself.
            live().update(|l| l.status = Status::Retrying("Connection lost; reconnecting…".into()));
            return;
        }
        // The server refused the stream: find out why (an expired session logs out).
        live().update(|l| l.status = Status::Retrying("The stream was refused; retrying…".into()));
        // (Spawned: runs after this handler returns, so the handler may be dropped.)
        leptos::task::spawn_local(async move {
            if GENERATION.with(|g| g.get()) != generation {
                return;
            }
            close_stream();
            let who = api::call("GET", "/v1/auth/whoami", None).await;
            if let Err(p) = who {
                if api::ends_session(&p) {
                    return;
                }
            }
            set_timeout(
                move || {
                    if GENERATION.with(|g| g.get()) == generation && session::get_untracked().is_some() {
                        start();
                    }
                },
                Duration::from_secs(3),
            );
        });
    });
    source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    STREAM.with(|s| {
        *s.borrow_mut() =
            Some(Stream { source, _on_message: on_message, _on_open: on_open, _on_error: on_error })
    });
}

/// Closes the stream and forgets its history.
pub fn stop() {
    GENERATION.with(|g| g.set(g.get() + 1));
    close_stream();
    live().set(Live { status: Status::Off, samples: VecDeque::new() });
}
