//! Namespaces and channels of a tenant: list with effective options, create, edit, delete.
//! Both share the options editor: every option can be left to the next level ("inherit").

use leptos::prelude::*;
use serde_json::{Map, Value, json};

use crate::api::{self, ChannelLike, ChannelOptions, Load, Problem};
use crate::router::{self, Tab};
use crate::session;
use crate::ui::{
    ConfirmButton, Field, Link, Paged, Table, form_error, load_view, number_input, on_submit, parse_number,
    when,
};

const NUMBERS: [(&str, &str, &str); 4] = [
    ("history_size", "History size", "Messages kept for history and resume, 0-10000 (default 100)"),
    ("history_ttl_seconds", "History TTL (s)", "Seconds a message stays in history (default 600)"),
    ("max_subscribers", "Max subscribers", "Per node; empty = no limit"),
    ("max_message_bytes", "Max message bytes", "1-1048576 (default 65536)"),
];

const FLAGS: [(&str, &str, &str); 5] = [
    ("private", "Private", "Subscribing needs a token capability (default on)"),
    ("presence", "Presence", "Clients may ask who is subscribed"),
    ("join_leave", "Join/leave events", "Pushed to subscribers; needs presence"),
    ("client_publish", "Client publish", "Clients with a publish capability may publish"),
    ("allow_implicit", "Implicit channels", "Channels exist on first use (namespaces only; default on)"),
];

fn number_of(o: &ChannelOptions, key: &str) -> Option<i64> {
    match key {
        "history_size" => o.history_size,
        "history_ttl_seconds" => o.history_ttl_seconds,
        "max_subscribers" => o.max_subscribers,
        "max_message_bytes" => o.max_message_bytes,
        _ => None,
    }
}

fn flag_of(o: &ChannelOptions, key: &str) -> Option<bool> {
    match key {
        "private" => o.private,
        "presence" => o.presence,
        "join_leave" => o.join_leave,
        "client_publish" => o.client_publish,
        "allow_implicit" => o.allow_implicit,
        _ => None,
    }
}

/// The option inputs as text: numbers ("" = inherit), flags ("", "true", "false").
#[derive(Clone, Copy)]
struct OptionFields {
    numbers: [RwSignal<String>; 4],
    flags: [RwSignal<String>; 5],
}

impl OptionFields {
    fn new() -> OptionFields {
        OptionFields {
            numbers: std::array::from_fn(|_| RwSignal::new(String::new())),
            flags: std::array::from_fn(|_| RwSignal::new(String::new())),
        }
    }

    fn set_from(&self, o: &ChannelOptions) {
        for (i, (key, _, _)) in NUMBERS.iter().enumerate() {
            self.numbers[i].set(number_of(o, key).map(|v| v.to_string()).unwrap_or_default());
        }
        for (i, (key, _, _)) in FLAGS.iter().enumerate() {
            self.flags[i].set(flag_of(o, key).map(|v| v.to_string()).unwrap_or_default());
        }
    }

    fn clear(&self) {
        self.set_from(&ChannelOptions::default());
    }

    /// The `options` object: on create only what is set, on update every option (`null` clears).
    fn body(&self, create: bool, namespaces: bool) -> Result<Value, Problem> {
        let mut m = Map::new();
        for (i, (key, _, _)) in NUMBERS.iter().enumerate() {
            match parse_number(&self.numbers[i].get_untracked(), &format!("options.{key}"))? {
                Some(v) => {
                    m.insert((*key).into(), json!(v));
                }
                None if !create => {
                    m.insert((*key).into(), Value::Null);
                }
                None => {}
            }
        }
        for (i, (key, _, _)) in FLAGS.iter().enumerate() {
            if *key == "allow_implicit" && !namespaces {
                continue;
            }
            match self.flags[i].get_untracked().as_str() {
                "true" => {
                    m.insert((*key).into(), json!(true));
                }
                "false" => {
                    m.insert((*key).into(), json!(false));
                }
                _ if !create => {
                    m.insert((*key).into(), Value::Null);
                }
                _ => {}
            }
        }
        Ok(Value::Object(m))
    }
}

fn options_inputs(f: OptionFields, errors: RwSignal<Option<Problem>>, namespaces: bool) -> impl IntoView {
    let numbers = NUMBERS
        .iter()
        .enumerate()
        .map(|(i, (key, label, hint))| {
            let field: &'static str = match *key {
                "history_size" => "options.history_size",
                "history_ttl_seconds" => "options.history_ttl_seconds",
                "max_subscribers" => "options.max_subscribers",
                _ => "options.max_message_bytes",
            };
            view! {
                <Field label=*label field=field errors=errors hint=*hint>
                    {number_input(f.numbers[i], key, "inherit")}
                </Field>
            }
        })
        .collect::<Vec<_>>();
    let flags = FLAGS
        .iter()
        .enumerate()
        .filter(|(_, (key, _, _))| namespaces || *key != "allow_implicit")
        .map(|(i, (key, label, hint))| {
            let field: &'static str = match *key {
                "private" => "options.private",
                "presence" => "options.presence",
                "join_leave" => "options.join_leave",
                "client_publish" => "options.client_publish",
                _ => "options.allow_implicit",
            };
            let v = f.flags[i];
            view! {
                <Field label=*label field=field errors=errors hint=*hint>
                    <select name=*key prop:value=move || v.get() on:change=move |ev| v.set(event_target_value(&ev))>
                        <option value="">"inherit"</option>
                        <option value="true">"on"</option>
                        <option value="false">"off"</option>
                    </select>
                </Field>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <fieldset class="fieldset">
            <legend>"Options"</legend>
            <div class="grid-4">{numbers}</div>
            <div class="grid-4">{flags}</div>
        </fieldset>
    }
}

/// A cell with the effective value; bold when set at this level.
fn option_cell(text: String, set_here: bool) -> impl IntoView {
    let title = if set_here { "set here" } else { "inherited" };
    view! { <td class=if set_here { "opt set" } else { "opt" } title=title>{text}</td> }
}

fn flag_text(v: Option<bool>) -> String {
    match v {
        Some(true) => "on".into(),
        Some(false) => "off".into(),
        None => "—".into(),
    }
}

#[component]
pub fn ChannelsPage(tenant: String, namespaces: bool) -> impl IntoView {
    let (kind, kinds, api_kind) = if namespaces {
        ("namespace", "namespaces", "namespaces")
    } else {
        ("channel", "channels", "channels")
    };
    let base = format!("/v1/tenants/{}/{}", api::enc(&tenant), api_kind);
    let can_write = session::get_untracked().is_some_and(|s| s.can("channels:write"));
    let prefix = RwSignal::new(String::new());
    let show_form = RwSignal::new(false);
    let editing = RwSignal::new(None::<String>);
    let name = RwSignal::new(String::new());
    let opts = OptionFields::new();
    let errors = RwSignal::new(None::<Problem>);
    let row_error = RwSignal::new(None::<Problem>);
    let busy = RwSignal::new(false);

    let paged = Paged::<ChannelLike>::new({
        let base = base.clone();
        move || {
            let mut path = format!("{base}?limit=100");
            let p = prefix.get_untracked();
            if !namespaces && !p.trim().is_empty() {
                path.push_str(&format!("&prefix={}", api::enc(p.trim())));
            }
            path
        }
    })
    .catch(move |p| {
        // A bad prefix is shown with the row errors, as the filter's problem.
        if p.is_about("prefix") {
            row_error.set(Some(p));
            None
        } else {
            Some(p)
        }
    });
    paged.reload();
    let list = paged.list;

    let open_create = move || {
        editing.set(None);
        name.set(String::new());
        opts.clear();
        errors.set(None);
        show_form.set(true);
    };

    let submit = {
        let base = base.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            errors.set(None);
            let edit = editing.get_untracked();
            let options = match opts.body(edit.is_none(), namespaces) {
                Ok(o) => o,
                Err(p) => return errors.set(Some(p)),
            };
            let (method, path, body) = match &edit {
                Some(n) => ("PATCH", format!("{base}/{}", api::enc(n)), json!({ "options": options })),
                None => {
                    ("POST", base.clone(), json!({ "name": name.get_untracked().trim(), "options": options }))
                }
            };
            busy.set(true);
            leptos::task::spawn_local(async move {
                let r = api::call(method, &path, Some(&body)).await;
                busy.set(false);
                match r.and_then(|v| {
                    serde_json::from_value::<ChannelLike>(v)
                        .map_err(|e| Problem::local("bad_response", e.to_string()))
                }) {
                    Ok(item) => {
                        show_form.set(false);
                        editing.set(None);
                        list.update(|l| {
                            if let Load::Ready(v) = l {
                                match v.iter_mut().find(|x| x.name == item.name) {
                                    Some(slot) => *slot = item,
                                    None => {
                                        v.push(item);
                                        v.sort_by(|a, b| a.name.cmp(&b.name));
                                    }
                                }
                            }
                        });
                    }
                    Err(p) => errors.set(Some(p)),
                }
            });
        }
    };

    let form = move || {
        show_form.get().then(|| {
            let edit = editing.get();
            let title = match &edit {
                Some(n) => format!("Edit {kind} {n}"),
                None => format!("New {kind}"),
            };
            let name_hint = if namespaces {
                "The part of channel names before the first “:” (chat → chat:lobby)."
            } else {
                "ns:name puts the channel in namespace ns (which must exist); a name without “:” has none."
            };
            view! {
                <form class="card form" data-form=format!("{kind}-form") on:submit=submit.clone() novalidate>
                    <h2 class="card-title">{title}</h2>
                    {edit
                        .is_none()
                        .then(|| {
                            view! {
                                <div class="grid-2">
                                    <Field label="Name" field="name" errors=errors hint=name_hint>
                                        {crate::ui::text_input(
                                            name,
                                            "name",
                                            if namespaces { "chat" } else { "chat:lobby" },
                                        )}
                                    </Field>
                                </div>
                            }
                        })}
                    {options_inputs(opts, errors, namespaces)}
                    {form_error(errors, &["name", "options"])}
                    <div class="form-actions">
                        <button type="submit" class="btn btn-primary" disabled=move || busy.get()>
                            {if editing.get_untracked().is_some() { "Save options".to_owned() } else { format!("Create {kind}") }}
                        </button>
                        <button type="button" class="btn btn-ghost" on:click=move |_| show_form.set(false)>
                            "Cancel"
                        </button>
                    </div>
                </form>
            }
        })
    };

    let tenant_for_rows = tenant.clone();
    let base_for_rows = base.clone();
    let rows = move || {
        let tenant = tenant_for_rows.clone();
        let base = base_for_rows.clone();
        load_view(list.get(), kinds, move |items: Vec<ChannelLike>| {
            let hint = if namespaces {
                "A namespace holds options shared by all channels whose name starts with it and “:”."
            } else {
                "Channels need not be created to be used: create one to give it its own options, or for a namespace without implicit channels."
            };
            let legend = if namespaces {
                "Values are effective; bold ones are set on the namespace, the others are the server defaults."
            } else {
                "Values are effective; bold ones are set on the channel, the others come from its namespace or the server defaults."
            };
            Table::new(kinds)
                .wide()
                .col("Name")
                .col_if(!namespaces, "Namespace")
                .cols(&["History", "Private", "Presence", "Join/leave", "Client pub", "Max subs", "Max bytes"])
                .col_if(namespaces, "Implicit")
                .cols(&["Updated", ""])
                .empty(format!("No {kinds} yet."), hint)
                .after(view! { <p class="muted small legend-note">{legend}</p> })
                .rows(items, |c| {
                    let o = &c.options;
                    let e = &c.effective;
                    let history = format!(
                        "{} msgs · {} s",
                        e.history_size.map(|v| v.to_string()).unwrap_or_default(),
                        e.history_ttl_seconds.map(|v| v.to_string()).unwrap_or_default()
                    );
                    let history_set = o.history_size.is_some() || o.history_ttl_seconds.is_some();
                    let item = c.clone();
                    let edit = move |_| {
                        opts.set_from(&item.options);
                        editing.set(Some(item.name.clone()));
                        errors.set(None);
                        show_form.set(true);
                        window().scroll_to_with_x_and_y(0.0, 0.0);
                    };
                    let path = format!("{base}/{}", api::enc(&c.name));
                    let gone = c.name.clone();
                    let remove = Callback::new(move |_| {
                        let path = path.clone();
                        let gone = gone.clone();
                        row_error.set(None);
                        leptos::task::spawn_local(async move {
                            match api::delete(&path).await {
                                Ok(()) => list.update(|l| {
                                    if let Load::Ready(v) = l {
                                        v.retain(|x| x.name != gone)
                                    }
                                }),
                                Err(p) => row_error.set(Some(p)),
                            }
                        });
                    });
                    let tail = (!namespaces).then(|| {
                        let href = format!("{}?channel={}", router::tenant_path(&tenant, Tab::Live), api::enc(&c.name));
                        view! {
                            <Link href=href class="btn btn-small btn-ghost">
                                "Tail"
                            </Link>
                        }
                    });
                    view! {
                        <tr data-name=c.name.clone()>
                            <td class="mono strong">{c.name.clone()}</td>
                            {(!namespaces)
                                .then(|| {
                                    view! {
                                        <td class="mono muted">{c.namespace.clone().unwrap_or_else(|| "—".into())}</td>
                                    }
                                })}
                            {option_cell(history, history_set)}
                            {option_cell(flag_text(e.private), o.private.is_some())}
                            {option_cell(flag_text(e.presence), o.presence.is_some())}
                            {option_cell(flag_text(e.join_leave), o.join_leave.is_some())}
                            {option_cell(flag_text(e.client_publish), o.client_publish.is_some())}
                            {option_cell(
                                e.max_subscribers.map(|v| v.to_string()).unwrap_or_else(|| "∞".into()),
                                o.max_subscribers.is_some(),
                            )}
                            {option_cell(
                                e.max_message_bytes.map(|v| v.to_string()).unwrap_or_default(),
                                o.max_message_bytes.is_some(),
                            )}
                            {namespaces.then(|| option_cell(flag_text(e.allow_implicit), o.allow_implicit.is_some()))}
                            <td>{when(Some(&c.updated_at))}</td>
                            <td class="actions">
                                {tail}
                                {can_write
                                    .then(|| {
                                        view! {
                                            <button type="button" class="btn btn-small" on:click=edit>
                                                "Edit"
                                            </button>
                                            <ConfirmButton
                                                label="Delete"
                                                confirm="Delete"
                                                class="btn btn-small btn-danger-outline"
                                                action=remove
                                            />
                                        }
                                    })}
                            </td>
                        </tr>
                    }
                })
        })
    };

    let filter = (!namespaces).then(|| {
        view! {
            <form
                class="inline-form"
                on:submit=on_submit(move || {
                    row_error.set(None);
                    paged.reload();
                })
            >
                <input
                    type="search"
                    placeholder="Filter by prefix (chat:)"
                    prop:value=move || prefix.get()
                    on:input=move |ev| prefix.set(event_target_value(&ev))
                />
                <button type="submit" class="btn">"Filter"</button>
            </form>
        }
    });

    view! {
        <div class="section-head">
            <h2>{if namespaces { "Namespaces" } else { "Channels" }}</h2>
            <div class="page-actions">
                {filter}
                {can_write
                    .then(|| {
                        view! {
                            <button
                                type="button"
                                class="btn btn-primary"
                                data-action=format!("new-{kind}")
                                on:click=move |_| open_create()
                            >
                                {format!("New {kind}")}
                            </button>
                        }
                    })}
            </div>
        </div>
        {form}
        {form_error(row_error, &[])}
        <section class="card card-flush">{rows}</section>
        {paged.more()}
    }
}
