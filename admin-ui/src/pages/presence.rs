//! Presence: the tenant's live connection figures, its live channels (occupancy), who is
//! subscribed to a channel, and a user's connections (with disconnect and direct messages).
//! Answers come from the node serving the request.

use std::time::Duration;

use leptos::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{self, Problem};
use crate::pages::tenant::TenantLive;
use crate::session;
use crate::ui::{ConfirmButton, Field, Table, badge, form_error, on_submit, text_input, when};

#[derive(Clone, Debug, PartialEq, Deserialize)]
struct Occupancy {
    channels: Vec<ChannelOccupancy>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
struct ChannelOccupancy {
    channel: String,
    subscribers: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
struct PresenceEntry {
    client: String,
    user: String,
    #[serde(default)]
    info: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
struct ChannelPresence {
    channel: String,
    clients: Vec<PresenceEntry>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
struct Connection {
    client: String,
    transport: String,
    node: String,
    connected_at: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
struct UserPresence {
    user: String,
    online: bool,
    connections: Vec<Connection>,
}

fn transport_label(t: &str) -> &'static str {
    match t {
        "websocket" => "WebSocket",
        "sse" => "SSE",
        "long_poll" => "Long poll",
        _ => "other",
    }
}

#[component]
pub fn Presence(tenant: String) -> impl IntoView {
    let base = format!("/v1/tenants/{}", api::enc(&tenant));
    let occupancy = RwSignal::new(None::<Result<Occupancy, Problem>>);
    let channel = RwSignal::new(String::new());
    let channel_errors = RwSignal::new(None::<Problem>);
    let present = RwSignal::new(None::<ChannelPresence>);

    let refresh_occupancy = {
        let path = format!("{base}/occupancy");
        move || {
            let path = path.clone();
            leptos::task::spawn_local(async move {
                occupancy.set(Some(api::get::<Occupancy>(&path).await));
            });
        }
    };
    refresh_occupancy();
    let timer = set_interval_with_handle(refresh_occupancy, Duration::from_secs(3)).ok();
    on_cleanup(move || {
        if let Some(t) = timer {
            t.clear();
        }
    });

    let ask = {
        let base = base.clone();
        move |ch: String| {
            channel_errors.set(None);
            if ch.trim().is_empty() {
                return channel_errors.set(Some(Problem::on_field("channel", "Enter a channel.")));
            }
            channel.set(ch.clone());
            let path = format!("{base}/channels/{}/presence", api::enc(ch.trim()));
            leptos::task::spawn_local(async move {
                match api::get::<ChannelPresence>(&path).await {
                    Ok(p) => present.set(Some(p)),
                    Err(mut p) => {
                        if p.field.is_none() || p.status == 404 {
                            p.field = Some("channel".into());
                        }
                        present.set(None);
                        channel_errors.set(Some(p));
                    }
                }
            });
        }
    };
    let ask = StoredValue::new(ask);

    let occupancy_view = move || match occupancy.get() {
        None => view! { <crate::ui::Loading what="live channels" /> }.into_any(),
        Some(Err(p)) => crate::ui::error_box(&p).into_any(),
        Some(Ok(o)) => Table::new("occupancy")
            .col("Channel")
            .nums(&["Subscribers"])
            .col("")
            .empty(
                "No channel has subscribers on this node.",
                "Channels appear here while clients are subscribed.",
            )
            .rows(o.channels, |c| {
                let name = c.channel.clone();
                view! {
                    <tr data-channel=c.channel.clone()>
                        <td class="mono strong">{c.channel.clone()}</td>
                        <td class="num" data-col="subscribers">{c.subscribers}</td>
                        <td class="actions">
                            <button
                                type="button"
                                class="btn btn-small"
                                on:click=move |_| ask.with_value(|a| a(name.clone()))
                            >
                                "Who is here?"
                            </button>
                        </td>
                    </tr>
                }
            }),
    };

    let presence_view = move || {
        present.get().map(|p| {
            Table::new("presence")
                .cols(&["User", "Connection", "Token info"])
                .empty(format!("Nobody is subscribed to {} on this node.", p.channel), "")
                .before(view! {
                    <h3 class="subtle">
                        "Subscribed to " <span class="mono">{p.channel.clone()}</span>
                    </h3>
                })
                .rows(p.clients, |c| {
                    let info = c.info.as_ref().map(Value::to_string).unwrap_or_else(|| "—".into());
                    view! {
                        <tr>
                            <td class="mono strong">{c.user.clone()}</td>
                            <td class="mono">{c.client.clone()}</td>
                            <td class="mono small">{info}</td>
                        </tr>
                    }
                })
        })
    };

    view! {
        <div class="section-head">
            <h2>"Presence"</h2>
            <span class="muted small">"Answers are for the node serving the dashboard."</span>
        </div>
        <TenantLive tenant=tenant.clone() charts_too=true />
        <div class="grid-2 align-start">
            <section class="card card-flush">
                <h2 class="card-title pad">"Live channels"</h2>
                {occupancy_view}
            </section>
            <section class="card">
                <h2 class="card-title">"Who is in a channel"</h2>
                <form
                    class="inline-form"
                    data-form="presence"
                    novalidate
                    on:submit=on_submit(move || ask.with_value(|a| a(channel.get_untracked())))
                >
                    <Field label="Channel" field="channel" errors=channel_errors>
                        {text_input(channel, "channel", "chat:lobby")}
                    </Field>
                    <button type="submit" class="btn btn-primary">"Who is here?"</button>
                </form>
                {form_error(channel_errors, &["channel"])}
                {presence_view}
            </section>
        </div>
        <UserLookup base=base />
    }
}

#[component]
fn UserLookup(base: String) -> impl IntoView {
    let who = session::get_untracked();
    let can_disconnect = who.as_ref().is_some_and(|s| s.can("keys:write"));
    let can_send = who.as_ref().is_some_and(|s| s.can("publish"));
    let user = RwSignal::new(String::new());
    let errors = RwSignal::new(None::<Problem>);
    let found = RwSignal::new(None::<UserPresence>);
    let note = RwSignal::new(None::<String>);
    let data = RwSignal::new("{\"text\": \"hello\"}".to_owned());
    let send_errors = RwSignal::new(None::<Problem>);
    let base = StoredValue::new(base);

    let lookup = move || {
        errors.set(None);
        let u = user.get_untracked().trim().to_owned();
        if u.is_empty() {
            return errors.set(Some(Problem::on_field("user", "Enter a user id (the sub of their token).")));
        }
        let path = format!("{}/users/{}", base.get_value(), api::enc(&u));
        leptos::task::spawn_local(async move {
            match api::get::<UserPresence>(&path).await {
                Ok(p) => found.set(Some(p)),
                Err(p) => {
                    found.set(None);
                    errors.set(Some(p));
                }
            }
        });
    };

    let result = move || {
        found.get().map(|p| {
            let u = p.user.clone();
            let disconnect = Callback::new(move |_| {
                let path = format!("{}/users/{}/disconnect", base.get_value(), api::enc(&u));
                leptos::task::spawn_local(async move {
                    match api::call("POST", &path, Some(&json!({}))).await {
                        Ok(v) => {
                            note.set(Some(format!("Closed {} connection(s) with 4006 disconnected.", v["disconnected"])));
                            lookup();
                        }
                        Err(p) => errors.set(Some(p)),
                    }
                });
            });
            let u = p.user.clone();
            let send = move |ev: leptos::ev::SubmitEvent| {
                ev.prevent_default();
                send_errors.set(None);
                let parsed: Value = match serde_json::from_str(&data.get_untracked()) {
                    Ok(v) => v,
                    Err(e) => {
                        return send_errors.set(Some(Problem::on_field("data", format!("Not valid JSON: {e}"))));
                    }
                };
                let path = format!("{}/users/{}/messages", base.get_value(), api::enc(&u));
                leptos::task::spawn_local(async move {
                    match api::call("POST", &path, Some(&json!({ "data": parsed }))).await {
                        Ok(v) => note.set(Some(format!("Handed to {} connection(s).", v["delivered"]))),
                        Err(p) => send_errors.set(Some(p)),
                    }
                });
            };
            let connections = Table::new("user-connections")
                .cols(&["Connection", "Transport", "Node", "Connected"])
                .rows(&p.connections, |c| {
                    view! {
                        <tr>
                            <td class="mono">{c.client.clone()}</td>
                            <td>{transport_label(&c.transport)}</td>
                            <td class="mono small">{c.node.clone()}</td>
                            <td>{when(Some(&c.connected_at))}</td>
                        </tr>
                    }
                });
            let online = p.online;
            view! {
                <div class="user-result" data-user=p.user.clone()>
                    <div class="row-between">
                        <h3>
                            <span class="mono">{p.user.clone()}</span>
                            " "
                            {if online { badge("online", "green").into_any() } else { badge("offline", "gray").into_any() }}
                        </h3>
                        {(online && can_disconnect)
                            .then(|| {
                                view! {
                                    <ConfirmButton
                                        label="Disconnect"
                                        confirm="Close all their connections"
                                        class="btn btn-small btn-danger-outline"
                                        action=disconnect
                                    />
                                }
                            })}
                    </div>
                    {online.then_some(connections)}
                    {(online && can_send)
                        .then(|| {
                            view! {
                                <form class="inline-form send-user" on:submit=send novalidate>
                                    <Field label="Send to this user (JSON, not stored)" field="data" errors=send_errors>
                                        <input
                                            type="text"
                                            class="mono"
                                            prop:value=move || data.get()
                                            on:input=move |ev| data.set(event_target_value(&ev))
                                        />
                                    </Field>
                                    <button type="submit" class="btn">"Send"</button>
                                </form>
                                {form_error(send_errors, &["data"])}
                            }
                        })}
                </div>
            }
        })
    };

    view! {
        <section class="card">
            <h2 class="card-title">"Find a user"</h2>
            <form
                class="inline-form"
                data-form="user"
                novalidate
                on:submit=on_submit(move || {
                    note.set(None);
                    lookup();
                })
            >
                <Field label="User (sub)" field="user" errors=errors>
                    {text_input(user, "user", "alice")}
                </Field>
                <button type="submit" class="btn btn-primary">"Look up"</button>
            </form>
            {form_error(errors, &["user"])}
            {move || note.get().map(|n| view! { <p class="ok-text" role="status">{n}</p> })}
            {result}
        </section>
    }
}
