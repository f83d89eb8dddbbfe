//! Live tail of a channel, with a publish form and the channel's history.
//!
//! The dashboard mints itself a client token for the channel (`POST …/tokens`) and opens the
//! client SSE endpoint with it, like any EventSource client. Same-origin EventSource requests
//! carry no `Origin` header, so this works whatever the tenant's `allowed_origins` say.

use std::cell::RefCell;

use leptos::prelude::*;
use serde_json::{Value, json};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::Closure;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Event, EventSource, MessageEvent};

use crate::api::{self, ChannelLike, History, Load, Page, Problem, Published, Tenant};
use crate::pages::hs256::NewHs256Key;
use crate::pages::tokens::mint;
use crate::session;
use crate::ui::{Empty, Field, clock_ms, form_error, on_submit, text_input};

/// The subject of the tokens the dashboard mints for itself.
const DASHBOARD_SUB: &str = "herald-dashboard";
const KEEP: usize = 500;
/// Said with the secret of an HS256 key created to start the tail.
const NEW_KEY_NOTE: &str = "The dashboard now mints its tail token with it. Your backend may sign tokens with this secret; it is shown only once.";

#[derive(Clone, Debug, PartialEq)]
enum TailStatus {
    Idle,
    Connecting,
    Live { client: String, node: String },
    Reconnecting,
    Closed(String),
    Failed(Problem),
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    key: u64,
    /// `pub`, `history`, `join`, `leave` or `note`.
    kind: String,
    channel: String,
    position: Option<i64>,
    ts: Option<f64>,
    event: Option<String>,
    text: String,
}

struct Tail {
    source: EventSource,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_error: Closure<dyn FnMut(Event)>,
}

thread_local! {
    static TAIL: RefCell<Option<Tail>> = const { RefCell::new(None) };
}

fn close_tail() {
    TAIL.with(|t| {
        if let Some(tail) = t.borrow_mut().take() {
            tail.source.set_onmessage(None);
            tail.source.set_onerror(None);
            tail.source.close();
        }
    });
}

fn pretty(v: &Value) -> String {
    let compact = v.to_string();
    if compact.len() <= 120 { compact } else { serde_json::to_string_pretty(v).unwrap_or(compact) }
}

/// Why the server refused an SSE request: fetch it again and read the problem (a stream that
/// opens after all is dropped at once).
async fn diagnose(url: &str) -> Option<Problem> {
    let controller = web_sys::AbortController::new().ok()?;
    let init = web_sys::RequestInit::new();
    init.set_signal(Some(&controller.signal()));
    let response: web_sys::Response =
        JsFuture::from(window().fetch_with_str_and_init(url, &init)).await.ok()?.dyn_into().ok()?;
    if response.ok() {
        controller.abort();
        return None;
    }
    let status = response.status();
    let text = JsFuture::from(response.text().ok()?).await.ok()?.as_string().unwrap_or_default();
    let mut p: Problem = serde_json::from_str(&text).unwrap_or_default();
    p.status = status;
    Some(p)
}

#[component]
pub fn LiveTail(tenant: String, record: RwSignal<Load<Tenant>>) -> impl IntoView {
    let who = session::get_untracked();
    let can_publish = who.as_ref().is_some_and(|s| s.can("publish"));
    let can_history = who.as_ref().is_some_and(|s| s.can("history:read"));
    let channel = RwSignal::new(crate::router::query("channel").unwrap_or_default());
    let status = RwSignal::new(TailStatus::Idle);
    let entries = RwSignal::new(Vec::<Entry>::new());
    let next_key = StoredValue::new(0u64);
    let errors = RwSignal::new(None::<Problem>);
    let no_key = RwSignal::new(false);
    let tailing = RwSignal::new(String::new());
    let known = RwSignal::new(Vec::<String>::new());
    let tenant_s = StoredValue::new(tenant.clone());

    on_cleanup(close_tail);

    // Channel names for the input's suggestions.
    if who.as_ref().is_some_and(|s| s.can("channels:read")) {
        let path = format!("/v1/tenants/{}/channels?limit=200", api::enc(&tenant));
        leptos::task::spawn_local(async move {
            if let Ok(page) = api::get::<Page<ChannelLike>>(&path).await {
                known.set(page.items.into_iter().map(|c| c.name).collect());
            }
        });
    }

    let push = move |mut e: Entry| {
        e.key = next_key.get_value();
        next_key.set_value(e.key + 1);
        entries.update(|v| {
            v.insert(0, e);
            v.truncate(KEEP);
        });
    };
    let note = move |channel: &str, text: String| {
        push(Entry {
            key: 0,
            kind: "note".into(),
            channel: channel.to_owned(),
            position: None,
            ts: Some(js_sys::Date::now()),
            event: None,
            text,
        })
    };

    let open = move |token: String, ch: String| {
        close_tail();
        let url = format!("/v1/sse?channels={}&token={}", api::enc(&ch), api::enc(&token));
        let source = match EventSource::new(&url) {
            Ok(s) => s,
            Err(_) => {
                status.set(TailStatus::Failed(Problem::local(
                    "browser",
                    "The browser refused to open the stream.",
                )));
                return;
            }
        };
        let ch2 = ch.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let Some(text) = e.data().as_string() else { return };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else { return };
            let kind = frame["type"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "connected" => status.set(TailStatus::Live {
                    client: frame["client"].as_str().unwrap_or_default().into(),
                    node: frame["node"].as_str().unwrap_or_default().into(),
                }),
                "subscribed" => {
                    let recovered = match frame["recovered"].as_bool() {
                        Some(true) => " (resumed, nothing missed)",
                        Some(false) => " (resumed, but the gap could not be filled)",
                        None => "",
                    };
                    note(
                        &ch2,
                        format!(
                            "Subscribed at position {} of epoch {}{recovered}",
                            frame["position"],
                            frame["epoch"].as_str().unwrap_or_default()
                        ),
                    );
                    if matches!(status.get_untracked(), TailStatus::Reconnecting) {
                        status.set(TailStatus::Live { client: String::new(), node: String::new() });
                    }
                }
                "pub" => push(Entry {
                    key: 0,
                    kind: "pub".into(),
                    channel: frame["channel"].as_str().unwrap_or_default().into(),
                    position: frame["position"].as_i64(),
                    ts: frame["ts"].as_f64(),
                    event: frame["event"].as_str().map(str::to_owned),
                    text: pretty(&frame["data"]),
                }),
                "join" | "leave" => push(Entry {
                    key: 0,
                    kind,
                    channel: frame["channel"].as_str().unwrap_or_default().into(),
                    position: None,
                    ts: Some(js_sys::Date::now()),
                    event: None,
                    text: format!(
                        "user {} (connection {})",
                        frame["user"].as_str().unwrap_or_default(),
                        frame["client"].as_str().unwrap_or_default()
                    ),
                }),
                "disconnect" => {
                    let reason = format!(
                        "The server ended the stream: {} {}",
                        frame["code"],
                        frame["reason"].as_str().unwrap_or_default()
                    );
                    status.set(TailStatus::Closed(reason));
                    leptos::task::spawn_local(async { close_tail() });
                }
                _ => {}
            }
        });
        let probe = url.clone();
        let on_error = Closure::<dyn FnMut(Event)>::new(move |e: Event| {
            let closed = e
                .target()
                .and_then(|t| t.dyn_into::<EventSource>().ok())
                .is_some_and(|s| s.ready_state() == EventSource::CLOSED);
            if matches!(status.get_untracked(), TailStatus::Closed(_)) {
                return;
            }
            if !closed {
                status.set(TailStatus::Reconnecting);
                return;
            }
            let probe = probe.clone();
            leptos::task::spawn_local(async move {
                close_tail();
                let p = diagnose(&probe).await.unwrap_or_else(|| {
                    Problem::local("stream_closed", "The stream closed. Start the tail again.")
                });
                status.set(TailStatus::Failed(p));
            });
        });
        source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        TAIL.with(|t| *t.borrow_mut() = Some(Tail { source, _on_message: on_message, _on_error: on_error }));
    };

    let start = move || {
        errors.set(None);
        let ch = channel.get_untracked().trim().to_owned();
        if ch.is_empty() {
            errors.set(Some(Problem::on_field("channel", "Enter the channel to tail.")));
            return;
        }
        close_tail();
        status.set(TailStatus::Connecting);
        tailing.set(ch.clone());
        let tenant = tenant_s.get_value();
        leptos::task::spawn_local(async move {
            let body = json!({
                "sub": DASHBOARD_SUB,
                "capabilities": { ch.clone(): ["subscribe", "history", "presence"] },
                "ttl_seconds": 3600,
            });
            match mint(&tenant, &body).await {
                Ok(t) => {
                    no_key.set(false);
                    open(t.token, ch);
                }
                Err(p) => {
                    status.set(TailStatus::Idle);
                    if p.code == "no_signing_key" {
                        no_key.set(true);
                    } else {
                        let mut p = p;
                        if p.field.as_deref().is_some_and(|f| f.starts_with("capabilities")) {
                            p.field = Some("channel".into());
                        }
                        errors.set(Some(p));
                    }
                }
            }
        });
    };

    let stop = move || {
        close_tail();
        status.set(TailStatus::Closed("Stopped.".into()));
    };

    let load_history = move |_| {
        let ch = channel.get_untracked().trim().to_owned();
        if ch.is_empty() {
            errors.set(Some(Problem::on_field("channel", "Enter the channel first.")));
            return;
        }
        let path = format!(
            "/v1/tenants/{}/channels/{}/messages?limit=50",
            api::enc(&tenant_s.get_value()),
            api::enc(&ch)
        );
        leptos::task::spawn_local(async move {
            match api::get::<History>(&path).await {
                Ok(h) => {
                    if h.publications.is_empty() {
                        note(&h.channel, "History is empty.".into());
                    }
                    for p in h.publications {
                        push(Entry {
                            key: 0,
                            kind: "history".into(),
                            channel: h.channel.clone(),
                            position: p["position"].as_i64(),
                            ts: p["ts"].as_f64(),
                            event: p["event"].as_str().map(str::to_owned),
                            text: pretty(&p["data"]),
                        });
                    }
                }
                Err(p) => errors.set(Some(p)),
            }
        });
    };

    let status_view = move || {
        let (class, text) = match status.get() {
            TailStatus::Idle => ("tail-status idle", "Not tailing.".to_owned()),
            TailStatus::Connecting => ("tail-status connecting", "Connecting…".to_owned()),
            TailStatus::Live { client, node } => (
                "tail-status live",
                if client.is_empty() {
                    format!("Live on {}", tailing.get())
                } else {
                    format!("Live on {} · connection {client} on {node}", tailing.get())
                },
            ),
            TailStatus::Reconnecting => {
                ("tail-status connecting", "Connection lost; reconnecting…".to_owned())
            }
            TailStatus::Closed(why) => ("tail-status idle", why),
            TailStatus::Failed(p) => ("tail-status failed", format!("{} ({})", p.message(), p.code)),
        };
        let attr = text.clone();
        view! {
            <div class=class data-tail-status=attr role="status">
                <span class="live-dot"></span>
                {text}
            </div>
        }
    };

    let suspended = move || {
        record.with(|r| match r {
            Load::Ready(t) if t.status == "suspended" => Some(view! {
                <div class="alert alert-warn">
                    "The tenant is suspended: clients cannot connect and nothing can be published until it is resumed."
                </div>
            }),
            _ => None,
        })
    };

    let list = move || {
        let items = entries.get();
        if items.is_empty() {
            return view! {
                <Empty
                    title="No messages yet."
                    hint="Start the tail, then publish below or from your backend: messages appear here as they are delivered."
                />
            }
            .into_any();
        }
        let rows = items
            .into_iter()
            .map(|e| {
                let kind_class = format!("tail-row tail-{}", e.kind);
                let pos = e.position.map(|p| format!("#{p}")).unwrap_or_default();
                let time = e.ts.map(clock_ms).unwrap_or_default();
                let label = match e.kind.as_str() {
                    "history" => "history",
                    "pub" => "message",
                    "join" => "join",
                    "leave" => "leave",
                    _ => "info",
                };
                view! {
                    <div class=kind_class data-kind=e.kind.clone()>
                        <span class="tail-time mono">{time}</span>
                        <span class="tail-kind">{label}</span>
                        <span class="tail-pos mono">{pos}</span>
                        <span class="tail-channel mono">{e.channel.clone()}</span>
                        {e.event.clone().map(|ev| view! { <span class="chip mono">{ev}</span> })}
                        <pre class="tail-data">{e.text.clone()}</pre>
                    </div>
                }
            })
            .collect::<Vec<_>>();
        view! { <div class="tail-list" data-tail="">{rows}</div> }.into_any()
    };

    let suggestions = move || {
        known.get().into_iter().map(|c| view! { <option value=c.clone()></option> }).collect::<Vec<_>>()
    };

    view! {
        <div class="section-head">
            <h2>"Live tail"</h2>
        </div>
        {suspended}
        <NewHs256Key tenant=tenant_s.get_value() missing=no_key note=NEW_KEY_NOTE on_created=start />
        <form class="card form" data-form="tail" novalidate on:submit=on_submit(start)>
            <div class="inline-form">
                <Field label="Channel" field="channel" errors=errors>
                    <input
                        type="text"
                        name="channel"
                        class="mono"
                        list="known-channels"
                        placeholder="chat:lobby"
                        autocomplete="off"
                        prop:value=move || channel.get()
                        on:input=move |ev| channel.set(event_target_value(&ev))
                    />
                    <datalist id="known-channels">{suggestions}</datalist>
                </Field>
                <button type="submit" class="btn btn-primary" data-action="start-tail">
                    "Start tail"
                </button>
                <button type="button" class="btn" on:click=move |_| stop()>
                    "Stop"
                </button>
                {can_history
                    .then(|| {
                        view! {
                            <button type="button" class="btn btn-ghost" on:click=load_history>
                                "Load history"
                            </button>
                        }
                    })}
                <button type="button" class="btn btn-ghost" on:click=move |_| entries.set(Vec::new())>
                    "Clear"
                </button>
            </div>
            {status_view}
            {form_error(errors, &["channel"])}
            <p class="muted small">
                "The dashboard connects as user “" {DASHBOARD_SUB}
                "” with a token it mints for this channel; the connection counts in the tenant's statistics."
            </p>
        </form>
        <div class="tail-layout">
            <section class="card card-flush tail-card">{list}</section>
            {can_publish.then(|| view! { <PublishForm tenant=tenant.clone() channel=channel /> })}
        </div>
    }
}

#[component]
fn PublishForm(tenant: String, channel: RwSignal<String>) -> impl IntoView {
    let data = RwSignal::new("{\"text\": \"hello\"}".to_owned());
    let event = RwSignal::new(String::new());
    let idem = RwSignal::new(String::new());
    let errors = RwSignal::new(None::<Problem>);
    let result = RwSignal::new(None::<Published>);
    let busy = RwSignal::new(false);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        errors.set(None);
        result.set(None);
        let ch = channel.get_untracked().trim().to_owned();
        if ch.is_empty() {
            return errors.set(Some(Problem::on_field("channel", "Enter the channel above.")));
        }
        let parsed: Value = match serde_json::from_str(&data.get_untracked()) {
            Ok(v) => v,
            Err(e) => return errors.set(Some(Problem::on_field("data", format!("Not valid JSON: {e}")))),
        };
        let mut body = json!({ "data": parsed });
        if !event.get_untracked().trim().is_empty() {
            body["event"] = json!(event.get_untracked().trim());
        }
        if !idem.get_untracked().trim().is_empty() {
            body["idempotency_key"] = json!(idem.get_untracked().trim());
        }
        let path = format!("/v1/tenants/{}/channels/{}/messages", api::enc(&tenant), api::enc(&ch));
        busy.set(true);
        leptos::task::spawn_local(async move {
            let r = api::post::<Published>(&path, &body).await;
            busy.set(false);
            match r {
                Ok(p) => result.set(Some(p)),
                Err(p) => errors.set(Some(p)),
            }
        });
    };
    view! {
        <form class="card form publish-card" data-form="publish" on:submit=submit novalidate>
            <h2 class="card-title">"Publish"</h2>
            <p class="muted small">"To the channel above, through the REST API."</p>
            <Field label="Data (JSON)" field="data" errors=errors>
                <textarea
                    name="data"
                    rows="5"
                    class="mono"
                    prop:value=move || data.get()
                    on:input=move |ev| data.set(event_target_value(&ev))
                ></textarea>
            </Field>
            <Field label="Event (optional)" field="event" errors=errors>
                {text_input(event, "event", "message")}
            </Field>
            <Field label="Idempotency key (optional)" field="idempotency_key" errors=errors>
                {text_input(idem, "idempotency_key", "order-1812")}
            </Field>
            {crate::ui::field_error(errors, "channel")}
            {form_error(errors, &["data", "event", "idempotency_key", "channel"])}
            <div class="form-actions">
                <button type="submit" class="btn btn-primary" data-action="publish" disabled=move || busy.get()>
                    "Publish"
                </button>
                {move || {
                    result
                        .get()
                        .map(|p| {
                            let text = if p.duplicate {
                                format!("Duplicate of position {} (idempotency key seen before).", p.position)
                            } else {
                                format!("Published at position {}.", p.position)
                            };
                            view! { <span class="ok-text" role="status">{text}</span> }
                        })
                }}
            </div>
        </form>
    }
}
