//! Webhooks of a tenant: create (signing secret shown once), enable/disable, rotate the secret
//! (the new one shown once), delete; and the delivery log of the selected webhook, refreshed
//! while deliveries are queued, with test events and replays.

use std::time::Duration;

use leptos::prelude::*;
use serde_json::{Value, json};

use crate::api::{self, Delivery, Load, Problem, RotatedSecret, WEBHOOK_EVENTS, Webhook};
use crate::router::{self, Tab};
use crate::ui::{
    ConfirmButton, Field, Paged, SecretOnce, Table, badge, datetime, form_error, load_view, number_input,
    parse_number, text_input, when,
};

/// The fields of the create form, in the order they are shown.
const FIELDS: &[&str] =
    &["url", "events", "include_api_publishes", "description", "batch_max_events", "batch_max_ms"];

/// A signing secret to show once: title, secret, note.
type Shown = (String, String, String);

fn status_tone(status: &str) -> &'static str {
    match status {
        "succeeded" => "green",
        "failed" => "red",
        _ => "amber",
    }
}

/// Replaces the webhook with the same id in `list`.
fn put(list: RwSignal<Load<Vec<Webhook>>>, w: Webhook) {
    list.update(|l| {
        if let Load::Ready(v) = l {
            if let Some(slot) = v.iter_mut().find(|x| x.id == w.id) {
                *slot = w;
            }
        }
    });
}

#[component]
pub fn Webhooks(tenant: String) -> impl IntoView {
    let proxy_tenant = tenant.clone();
    let base = format!("/v1/tenants/{}/webhooks", api::enc(&tenant));
    let page_path = router::tenant_path(&tenant, Tab::Webhooks);
    let paged = Paged::<Webhook>::new({
        let base = base.clone();
        move || format!("{base}?limit=50")
    });
    paged.reload();
    let list = paged.list;
    // The webhook whose deliveries are shown, kept in the URL (`?webhook=wh_…`).
    let selected = RwSignal::new(router::query("webhook").filter(|w| !w.is_empty()));
    let select = Callback::new(move |id: Option<String>| {
        match &id {
            Some(id) => router::replace(&format!("{page_path}?webhook={}", api::enc(id))),
            None => router::replace(&page_path),
        }
        selected.set(id);
    });

    let show_form = RwSignal::new(false);
    let url = RwSignal::new(String::new());
    let events = RwSignal::new(Vec::<String>::new());
    let api_publishes = RwSignal::new(false);
    let description = RwSignal::new(String::new());
    let batch_events = RwSignal::new(String::new());
    let batch_ms = RwSignal::new(String::new());
    let errors = RwSignal::new(None::<Problem>);
    let row_error = RwSignal::new(None::<Problem>);
    let busy = RwSignal::new(false);
    let shown = RwSignal::new(None::<Shown>);

    let submit = {
        let base = base.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            errors.set(None);
            // In the order of WEBHOOK_EVENTS, whatever order they were ticked in.
            let ticked = events.get_untracked();
            let chosen: Vec<&str> = WEBHOOK_EVENTS
                .iter()
                .map(|(e, _)| *e)
                .filter(|e| ticked.iter().any(|t| t.as_str() == *e))
                .collect();
            let mut body = json!({
                "url": url.get_untracked().trim(),
                "events": chosen,
                "include_api_publishes": api_publishes.get_untracked(),
            });
            let text = description.get_untracked();
            if !text.trim().is_empty() {
                body["description"] = json!(text.trim());
            }
            for (field, value) in [("batch_max_events", batch_events), ("batch_max_ms", batch_ms)] {
                match parse_number(&value.get_untracked(), field) {
                    Ok(Some(n)) => body[field] = json!(n),
                    Ok(None) => {}
                    Err(p) => return errors.set(Some(p)),
                }
            }
            let base = base.clone();
            busy.set(true);
            leptos::task::spawn_local(async move {
                let r = api::post::<Webhook>(&base, &body).await;
                busy.set(false);
                match r {
                    Ok(mut w) => {
                        show_form.set(false);
                        url.set(String::new());
                        events.set(Vec::new());
                        api_publishes.set(false);
                        description.set(String::new());
                        batch_events.set(String::new());
                        batch_ms.set(String::new());
                        if let Some(secret) = w.secret.take() {
                            shown.set(Some((
                                format!("Webhook for {} created", w.url),
                                secret,
                                "Your receiver verifies the webhook-signature header with this secret (Standard Webhooks). Copy it now: it is shown only once and cannot be retrieved later.".to_owned(),
                            )));
                        }
                        list.update(|l| {
                            if let Load::Ready(v) = l {
                                v.push(w)
                            }
                        });
                    }
                    Err(p) => errors.set(Some(p)),
                }
            });
        }
    };

    let event_boxes = WEBHOOK_EVENTS
        .iter()
        .map(|(event, what)| {
            let e = (*event).to_owned();
            let e2 = e.clone();
            view! {
                <label class="check">
                    <input
                        type="checkbox"
                        name="event"
                        value=*event
                        prop:checked=move || events.with(|v| v.contains(&e))
                        on:change=move |ev| {
                            let on = event_target_checked(&ev);
                            events.update(|v| {
                                v.retain(|x| x != &e2);
                                if on {
                                    v.push(e2.clone());
                                }
                            });
                        }
                    />
                    <span class="mono">{*event}</span>
                    <span class="muted small">{*what}</span>
                </label>
            }
        })
        .collect::<Vec<_>>();

    let form = view! {
        <form class="card form" data-form="create-webhook" on:submit=submit novalidate>
            <h2 class="card-title">"New webhook"</h2>
            <div class="grid-2">
                <Field
                    label="URL"
                    field="url"
                    errors=errors
                    hint="Herald POSTs signed JSON here. Private addresses only where the operator allows them."
                >
                    {text_input(url, "url", "https://example.com/herald")}
                </Field>
                <Field label="Description (optional)" field="description" errors=errors>
                    {text_input(description, "description", "billing events")}
                </Field>
            </div>
            <Field label="Events" field="events" errors=errors>
                <div class="checks">{event_boxes}</div>
            </Field>
            <Field
                label="REST publishes"
                field="include_api_publishes"
                errors=errors
                hint="message.published is sent for clients' publishes; tick this to get the tenant's own REST publishes too."
            >
                <label class="check">
                    <input
                        type="checkbox"
                        name="include_api_publishes"
                        prop:checked=move || api_publishes.get()
                        on:change=move |ev| api_publishes.set(event_target_checked(&ev))
                    />
                    <span>"Include REST publishes in message.published"</span>
                </label>
            </Field>
            <div class="grid-2">
                <Field
                    label="Batch up to (events)"
                    field="batch_max_events"
                    errors=errors
                    hint="1-100. Empty or 1: one event per request. More: requests carry {\"events\": [...]}."
                >
                    {number_input(batch_events, "batch_max_events", "1")}
                </Field>
                <Field
                    label="Batch wait (ms)"
                    field="batch_max_ms"
                    errors=errors
                    hint="0-60000: how long a batch may wait to fill."
                >
                    {number_input(batch_ms, "batch_max_ms", "0")}
                </Field>
            </div>
            {form_error(errors, FIELDS)}
            <div class="form-actions">
                <button type="submit" class="btn btn-primary" disabled=move || busy.get()>
                    "Create webhook"
                </button>
                <button type="button" class="btn btn-ghost" on:click=move |_| show_form.set(false)>
                    "Cancel"
                </button>
            </div>
        </form>
    };

    let rows = {
        let base = base.clone();
        move || {
            let base = base.clone();
            load_view(list.get(), "webhooks", move |items: Vec<Webhook>| {
                Table::new("webhooks")
                    .wide()
                    .cols(&["Endpoint", "Events", "Status", "Created", ""])
                    .empty(
                        "No webhooks yet.",
                        "A webhook tells your backend about channels, presence, connections and messages as they happen.",
                    )
                    .rows(items, |w| webhook_row(w, &base, list, selected, select, shown, row_error))
            })
        }
    };

    let deliveries = move || {
        selected.get().map(|id| {
            view! {
                <Deliveries
                    base=base.clone()
                    id=id
                    webhooks=paged
                    on_close=Callback::new(move |_| select.run(None))
                />
            }
        })
    };

    view! {
        <div class="section-head">
            <h2>"Webhooks"</h2>
            <div class="page-actions">
                <button
                    type="button"
                    class="btn btn-primary"
                    data-action="new-webhook"
                    on:click=move |_| {
                        shown.set(None);
                        errors.set(None);
                        show_form.set(true);
                    }
                >
                    "New webhook"
                </button>
            </div>
        </div>
        {move || {
            shown
                .get()
                .map(|(title, secret, note)| {
                    view! {
                        <SecretOnce
                            title=title
                            secret=secret
                            note=note
                            on_done=Callback::new(move |_| shown.set(None))
                        />
                    }
                })
        }}
        <div class:hidden=move || !show_form.get()>{form}</div>
        {form_error(row_error, &[])}
        <section class="card card-flush">{rows}</section>
        {paged.more()}
        {deliveries}
        <crate::pages::proxy::ProxyCard tenant=proxy_tenant />
    }
}

/// One webhook's row: endpoint, events, status, and its actions.
fn webhook_row(
    w: Webhook,
    base: &str,
    list: RwSignal<Load<Vec<Webhook>>>,
    selected: RwSignal<Option<String>>,
    select: Callback<Option<String>>,
    shown: RwSignal<Option<Shown>>,
    row_error: RwSignal<Option<Problem>>,
) -> impl IntoView + use<> {
    let path = format!("{base}/{}", api::enc(&w.id));
    let id = w.id.clone();
    let is_selected = {
        let id = id.clone();
        move || selected.with(|s| s.as_deref() == Some(id.as_str()))
    };

    let toggle = {
        let path = path.clone();
        let enable = !w.enabled;
        move |_| {
            let path = path.clone();
            row_error.set(None);
            leptos::task::spawn_local(async move {
                match api::patch::<Webhook>(&path, &json!({ "enabled": enable })).await {
                    Ok(w) => put(list, w),
                    Err(p) => row_error.set(Some(p)),
                }
            });
        }
    };
    let rotate = {
        let path = format!("{path}/rotate-secret");
        let id = id.clone();
        let target = w.url.clone();
        Callback::new(move |_| {
            let path = path.clone();
            let id = id.clone();
            let target = target.clone();
            row_error.set(None);
            leptos::task::spawn_local(async move {
                match api::post::<RotatedSecret>(&path, &json!({})).await {
                    Ok(r) => {
                        let note = match &r.previous_secret_valid_until {
                            Some(until) => format!(
                                "Requests carry a signature with the previous secret too until {}, so the receiver can switch. Copy the new one now: it is shown only once.",
                                datetime(until)
                            ),
                            None => {
                                "Copy it now: it is shown only once and cannot be retrieved later.".to_owned()
                            }
                        };
                        shown.set(Some((format!("New secret for {target}"), r.secret, note)));
                        list.update(|l| {
                            if let Load::Ready(v) = l {
                                if let Some(w) = v.iter_mut().find(|w| w.id == id) {
                                    w.previous_secret_valid_until = r.previous_secret_valid_until.clone();
                                }
                            }
                        });
                        window().scroll_to_with_x_and_y(0.0, 0.0);
                    }
                    Err(p) => row_error.set(Some(p)),
                }
            });
        })
    };
    let remove = {
        let path = path.clone();
        let id = id.clone();
        Callback::new(move |_| {
            let path = path.clone();
            let id = id.clone();
            row_error.set(None);
            leptos::task::spawn_local(async move {
                match api::delete(&path).await {
                    Ok(()) => {
                        list.update(|l| {
                            if let Load::Ready(v) = l {
                                v.retain(|w| w.id != id)
                            }
                        });
                        if selected.get_untracked().as_deref() == Some(id.as_str()) {
                            select.run(None);
                        }
                    }
                    Err(p) => row_error.set(Some(p)),
                }
            });
        })
    };
    let open = {
        let id = id.clone();
        move |_| select.run(Some(id.clone()))
    };

    let chips =
        w.events.iter().map(|e| view! { <span class="chip mono">{e.clone()}</span> }).collect::<Vec<_>>();
    let api_note = (w.include_api_publishes && w.events.iter().any(|e| e == "message.published"))
        .then(|| view! { <div class="muted small">"with REST publishes"</div> });
    let status = if w.enabled {
        badge("enabled", "green").into_any()
    } else if w.disabled_reason.is_some() {
        badge("disabled", "red").into_any()
    } else {
        badge("disabled", "gray").into_any()
    };
    let reason = w
        .disabled_reason
        .clone()
        .map(|r| view! { <div class="small muted" data-disabled-reason="">{r}</div> });
    let rotating = w.previous_secret_valid_until.clone().map(|until| {
        view! { <div class="small muted" data-rotating="">"Previous secret expires " {when(Some(&until))}</div> }
    });
    let batching = (w.batch_max_events > 1).then(|| {
        view! {
            <div class="small muted" data-batching="">
                {format!("Batches of up to {} events, waiting up to {} ms", w.batch_max_events, w.batch_max_ms)}
            </div>
        }
    });
    view! {
        <tr data-webhook=w.id.clone() data-enabled=w.enabled.to_string() class:selected=is_selected>
            <td class="wrap">
                <div class="mono strong" data-col="url">{w.url.clone()}</div>
                {(!w.description.is_empty()).then(|| view! { <div class="muted small">{w.description.clone()}</div> })}
                <div class="mono small muted">{w.id.clone()}</div>
            </td>
            <td class="wrap">{chips} {api_note} {batching}</td>
            <td class="wrap" data-col="status">{status} {reason} {rotating}</td>
            <td>{when(Some(&w.created_at))}</td>
            <td class="actions">
                <button type="button" class="btn btn-small" data-action="deliveries" on:click=open>
                    "Deliveries"
                </button>
                <button type="button" class="btn btn-small" data-action="toggle" on:click=toggle>
                    {if w.enabled { "Disable" } else { "Enable" }}
                </button>
                <ConfirmButton
                    label="Rotate secret"
                    confirm="Rotate: the old secret signs for 24 h more"
                    class="btn btn-small"
                    action=rotate
                />
                <ConfirmButton
                    label="Delete"
                    confirm="Delete with its deliveries"
                    class="btn btn-small btn-danger-outline"
                    action=remove
                />
            </td>
        </tr>
    }
}

/// The delivery log of one webhook, newest first, with test events and replays. It refreshes
/// itself, quickly while deliveries are queued; once they are done the webhook list is read
/// again too (an endpoint that answered 410 Gone disables its webhook).
#[component]
fn Deliveries(base: String, id: String, webhooks: Paged<Webhook>, on_close: Callback<()>) -> impl IntoView {
    let path = format!("{base}/{}", api::enc(&id));
    let paged = Paged::<Delivery>::new({
        let path = path.clone();
        move || format!("{path}/deliveries?limit=50")
    });
    paged.reload();
    let list = paged.list;
    let errors = RwSignal::new(None::<Problem>);
    let busy = RwSignal::new(false);

    // Every second while deliveries are queued (else every fifth), the log is read again; for
    // a few seconds after the queue drained, the webhook list too.
    let queued =
        move || list.with_untracked(|l| matches!(l, Load::Ready(v) if v.iter().any(|d| !d.finished())));
    let ticks = StoredValue::new(0u32);
    let settle = StoredValue::new(0u32);
    let timer = set_interval_with_handle(
        move || {
            ticks.update_value(|t| *t = t.wrapping_add(1));
            if queued() {
                settle.set_value(3);
                paged.refresh();
            } else {
                if ticks.get_value() % 5 == 0 {
                    paged.refresh();
                }
                if settle.get_value() > 0 {
                    settle.update_value(|s| *s -= 1);
                    webhooks.refresh();
                }
            }
        },
        Duration::from_secs(1),
    )
    .ok();
    on_cleanup(move || {
        if let Some(t) = timer {
            t.clear();
        }
    });

    let send_test = {
        let path = format!("{path}/test");
        move |_| {
            let path = path.clone();
            errors.set(None);
            busy.set(true);
            leptos::task::spawn_local(async move {
                let r = api::post_empty::<Delivery>(&path).await;
                busy.set(false);
                match r {
                    Ok(d) => list.update(|l| match l {
                        Load::Ready(v) => {
                            v.retain(|x| x.id != d.id);
                            v.insert(0, d);
                        }
                        other => *other = Load::Ready(vec![d]),
                    }),
                    Err(p) => errors.set(Some(p)),
                }
            });
        }
    };
    let refresh = move |_| {
        errors.set(None);
        paged.refresh();
        webhooks.refresh();
    };

    let head = {
        let id = id.clone();
        move || {
            let target = webhooks
                .list
                .with(|l| match l {
                    Load::Ready(v) => v.iter().find(|w| w.id == id).map(|w| w.url.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| id.clone());
            view! {
                <h2 class="card-title">
                    "Deliveries to " <span class="mono">{target}</span>
                </h2>
            }
        }
    };

    let rows = move || {
        let path = path.clone();
        load_view(list.get(), "deliveries", move |items: Vec<Delivery>| {
            Table::new("deliveries")
                .wide()
                .cols(&["Event", "Status"])
                .nums(&["Attempts", "Response", "Latency"])
                .cols(&["Last attempt", "Next retry", "Outcome", ""])
                .empty(
                    "No deliveries yet.",
                    "Events this webhook subscribes to are listed here as they are sent. “Send test event” sends one now.",
                )
                .rows(items, |d| delivery_row(d, &path, list, errors))
        })
    };

    view! {
        <section class="card card-flush" data-deliveries=id.clone()>
            <div class="row-between deliveries-head">
                {head}
                <div class="page-actions">
                    <button
                        type="button"
                        class="btn btn-primary"
                        data-action="send-test"
                        disabled=move || busy.get()
                        on:click=send_test
                    >
                        "Send test event"
                    </button>
                    <button type="button" class="btn" data-action="refresh-deliveries" on:click=refresh>
                        "Refresh"
                    </button>
                    <button type="button" class="btn btn-ghost" on:click=move |_| on_close.run(())>
                        "Close"
                    </button>
                </div>
            </div>
            <div class="deliveries-error">{form_error(errors, &[])}</div>
            {rows}
        </section>
        {paged.more()}
    }
}

/// One delivery: its event, the outcome of the latest attempt, and Replay once it is finished.
fn delivery_row(
    d: Delivery,
    path: &str,
    list: RwSignal<Load<Vec<Delivery>>>,
    errors: RwSignal<Option<Problem>>,
) -> impl IntoView + use<> {
    let replay = {
        let path = format!("{path}/deliveries/{}/replay", api::enc(&d.id));
        move |_| {
            let path = path.clone();
            errors.set(None);
            leptos::task::spawn_local(async move {
                match api::post_empty::<Delivery>(&path).await {
                    Ok(d) => list.update(|l| {
                        if let Load::Ready(v) = l {
                            if let Some(slot) = v.iter_mut().find(|x| x.id == d.id) {
                                *slot = d;
                            }
                        }
                    }),
                    Err(p) => errors.set(Some(p)),
                }
            });
        }
    };
    let outcome = match (&d.error, &d.response_excerpt) {
        (Some(e), _) => view! { <span class="error-text">{e.clone()}</span> }.into_any(),
        (None, Some(x)) if !x.is_empty() => view! { <span class="mono small">{x.clone()}</span> }.into_any(),
        _ => view! { <span class="muted">"—"</span> }.into_any(),
    };
    let body = serde_json::from_str::<Value>(&d.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| d.body.clone());
    let next = if d.status == "pending" { when(d.next_attempt_at.as_deref()) } else { when(None) };
    let dash = || view! { <span class="muted">"—"</span> }.into_any();
    view! {
        <tr data-delivery=d.id.clone() data-status=d.status.clone() data-event=d.event_type.clone()>
            <td>
                <div class="mono strong">{d.event_type.clone()}</div>
                <div class="mono small muted" title="webhook-id, the same on every attempt and replay">
                    {d.event_id.clone()}
                </div>
            </td>
            <td data-col="status">
                <span class=format!("badge badge-{}", status_tone(&d.status))>{d.status.clone()}</span>
            </td>
            <td class="num" data-col="attempts">{d.attempts}</td>
            <td class="num" data-col="response">
                {d.response_status.map(|s| s.to_string().into_any()).unwrap_or_else(dash)}
            </td>
            <td class="num" data-col="latency">
                {d.latency_ms.map(|ms| format!("{ms} ms").into_any()).unwrap_or_else(dash)}
            </td>
            <td>{when(d.last_attempt_at.as_deref())}</td>
            <td data-col="next" title=format!("Retries stop {}", datetime(&d.give_up_at))>{next}</td>
            <td class="details" data-col="outcome">
                {outcome}
                <details>
                    <summary class="small muted">"Request body"</summary>
                    <pre class="code">{body}</pre>
                </details>
            </td>
            <td class="actions">
                {d
                    .finished()
                    .then(|| {
                        view! {
                            <button type="button" class="btn btn-small" data-action="replay" on:click=replay>
                                "Replay"
                            </button>
                        }
                    })}
            </td>
        </tr>
    }
}
