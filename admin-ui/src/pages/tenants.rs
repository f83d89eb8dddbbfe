//! Tenants: the list (with live connection counts), creating one, suspending and resuming.

use leptos::prelude::*;
use serde_json::{Map, Value, json};

use crate::api::{self, LIMITS, Load, Problem, Tenant};
use crate::router::{self, Tab};
use crate::stats::{self, Scope};
use crate::ui::{ConfirmButton, Field, Link, Paged, Table, badge, form_error, load_view, number_input, when};

/// The editable fields of a tenant, as text.
#[derive(Clone, Copy)]
pub struct TenantFields {
    pub id: RwSignal<String>,
    pub name: RwSignal<String>,
    pub origins: RwSignal<String>,
    pub limits: [RwSignal<String>; LIMITS.len()],
}

impl TenantFields {
    pub fn new() -> TenantFields {
        TenantFields {
            id: RwSignal::new(String::new()),
            name: RwSignal::new(String::new()),
            origins: RwSignal::new(String::new()),
            limits: std::array::from_fn(|_| RwSignal::new(String::new())),
        }
    }

    pub fn set_from(&self, t: &Tenant) {
        self.id.set(t.id.clone());
        self.name.set(t.name.clone());
        self.origins.set(t.allowed_origins.join("\n"));
        for (i, (key, _, _)) in LIMITS.iter().enumerate() {
            self.limits[i].set(t.limits.get(key).map(|v| v.to_string()).unwrap_or_default());
        }
    }

    /// The request body: for `create` only the limits that are set; for an update every limit
    /// (`null` clears it).
    pub fn body(&self, create: bool) -> Result<Value, Problem> {
        let origins: Vec<String> = self
            .origins
            .get_untracked()
            .split(['\n', ',', ' '])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut limits = Map::new();
        for (i, (key, _, _)) in LIMITS.iter().enumerate() {
            match crate::ui::parse_number(&self.limits[i].get_untracked(), &format!("limits.{key}"))? {
                Some(v) => {
                    limits.insert((*key).to_owned(), json!(v));
                }
                None if !create => {
                    limits.insert((*key).to_owned(), Value::Null);
                }
                None => {}
            }
        }
        let mut body = json!({
            "name": self.name.get_untracked(),
            "allowed_origins": origins,
            "limits": limits,
        });
        if create {
            body["id"] = json!(self.id.get_untracked().trim());
        }
        Ok(body)
    }
}

pub const TENANT_FIELDS: &[&str] = &["id", "name", "allowed_origins", "limits"];

/// Name, origins and limits inputs (the id input is the caller's).
pub fn tenant_inputs(f: TenantFields, errors: RwSignal<Option<Problem>>) -> impl IntoView {
    let limits = LIMITS
        .iter()
        .enumerate()
        .map(|(i, (key, label, hint))| {
            let field: &'static str = match *key {
                "max_connections" => "limits.max_connections",
                "max_publishes_per_second" => "limits.max_publishes_per_second",
                "max_message_bytes" => "limits.max_message_bytes",
                "max_channels" => "limits.max_channels",
                _ => "limits.max_subscriptions_per_connection",
            };
            view! {
                <Field label=*label field=field errors=errors hint=*hint>
                    {number_input(f.limits[i], key, "No limit")}
                </Field>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <Field label="Display name" field="name" errors=errors>
            {crate::ui::text_input(f.name, "name", "Acme Inc.")}
        </Field>
        <Field
            label="Allowed origins"
            field="allowed_origins"
            errors=errors
            hint="One per line: the web origins whose pages may open real-time connections (https://app.example.com, https://*.example.com or *). Empty refuses every browser."
        >
            <textarea
                name="allowed_origins"
                rows="3"
                placeholder="https://app.example.com"
                prop:value=move || f.origins.get()
                on:input=move |ev| f.origins.set(event_target_value(&ev))
            ></textarea>
        </Field>
        <fieldset class="fieldset">
            <legend>"Limits"</legend>
            <div class="grid-3">{limits}</div>
        </fieldset>
    }
}

fn limits_summary(t: &Tenant) -> String {
    let parts: Vec<String> = LIMITS
        .iter()
        .filter_map(|(key, label, _)| t.limits.get(key).map(|v| format!("{label}: {v}")))
        .collect();
    if parts.is_empty() { "No limits".into() } else { parts.join(" · ") }
}

/// Suspends or resumes a tenant; `done` gets the updated tenant or the problem.
pub fn set_status(
    tenant: String,
    status: &'static str,
    done: impl FnOnce(Result<Tenant, Problem>) + 'static,
) {
    leptos::task::spawn_local(async move {
        let r =
            api::patch::<Tenant>(&format!("/v1/tenants/{}", api::enc(&tenant)), &json!({ "status": status }))
                .await;
        done(r);
    });
}

#[component]
pub fn Tenants() -> impl IntoView {
    let paged = Paged::<Tenant>::new(|| "/v1/tenants?limit=100".to_owned());
    paged.reload();
    let list = paged.list;
    let show_form = RwSignal::new(false);
    let row_error = RwSignal::new(None::<Problem>);

    let replace = move |t: Tenant| {
        list.update(|l| {
            if let Load::Ready(v) = l {
                if let Some(slot) = v.iter_mut().find(|x| x.id == t.id) {
                    *slot = t;
                }
            }
        })
    };

    let rows = move || {
        load_view(list.get(), "tenants", move |items: Vec<Tenant>| {
            Table::new("tenants")
                .wide()
                .cols(&["Tenant", "Status"])
                .nums(&["Live conns"])
                .cols(&["Allowed origins", "Limits", "Created", ""])
                .empty(
                    "No tenants yet.",
                    "Create the first one: each tenant has its own channels, keys, limits and statistics.",
                )
                .rows(items, |t| {
                    // Its own reactive cell: the row (and its confirm buttons) stays put.
                    let scope = Scope::Tenant(t.id.clone());
                    let live = move || {
                        stats::live()
                            .with(|l| l.latest().map(|r| r.figures(&scope).connections.total()).unwrap_or(0))
                    };
                    let suspended = t.status == "suspended";
                    let id = t.id.clone();
                    let toggle = Callback::new(move |_| {
                        let status = if suspended { "active" } else { "suspended" };
                        row_error.set(None);
                        set_status(id.clone(), status, move |r| match r {
                            Ok(t) => replace(t),
                            Err(p) => row_error.set(Some(p)),
                        });
                    });
                    let origins = if t.allowed_origins.is_empty() {
                        view! { <span class="muted">"none"</span> }.into_any()
                    } else {
                        view! { <span class="mono small">{t.allowed_origins.join(", ")}</span> }.into_any()
                    };
                    let (attr, name, limits) = (t.id.clone(), t.name.clone(), limits_summary(&t));
                    view! {
                        <tr data-tenant=attr>
                            <td>
                                <Link href=router::tenant_path(&t.id, Tab::Settings) class="strong">
                                    {name}
                                </Link>
                                <div class="mono small muted">{t.id.clone()}</div>
                            </td>
                            <td data-col="status">
                                {if suspended { badge("suspended", "red").into_any() } else { badge("active", "green").into_any() }}
                            </td>
                            <td class="num" data-col="connections">{live}</td>
                            <td class="wrap">{origins}</td>
                            <td class="small wrap">{limits}</td>
                            <td>{when(Some(&t.created_at))}</td>
                            <td class="actions">
                                {if suspended {
                                    view! {
                                        <ConfirmButton
                                            label="Resume"
                                            confirm="Resume now"
                                            action=toggle
                                        />
                                    }
                                        .into_any()
                                } else {
                                    view! {
                                        <ConfirmButton
                                            label="Suspend"
                                            confirm="Suspend: closes its connections"
                                            class="btn btn-small btn-danger-outline"
                                            action=toggle
                                        />
                                    }
                                        .into_any()
                                }}
                            </td>
                        </tr>
                    }
                })
        })
    };

    view! {
        <div class="page-head">
            <div>
                <h1>"Tenants"</h1>
                <p class="muted">"Each tenant is isolated: its own channels, keys, limits and statistics."</p>
            </div>
            <div class="page-actions">
                <button
                    type="button"
                    class="btn btn-primary"
                    data-action="new-tenant"
                    on:click=move |_| show_form.update(|s| *s = !*s)
                >
                    {move || if show_form.get() { "Close" } else { "New tenant" }}
                </button>
            </div>
        </div>
        <Show when=move || show_form.get()>
            <CreateTenant on_created=Callback::new(move |t: Tenant| {
                show_form.set(false);
                list.update(|l| {
                    if let Load::Ready(v) = l {
                        v.push(t);
                        v.sort_by(|a, b| a.id.cmp(&b.id));
                    }
                });
            }) />
        </Show>
        {form_error(row_error, &[])}
        <section class="card card-flush">{rows}</section>
        {paged.more()}
    }
}

#[component]
fn CreateTenant(on_created: Callback<Tenant>) -> impl IntoView {
    let f = TenantFields::new();
    let errors = RwSignal::new(None::<Problem>);
    let busy = RwSignal::new(false);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        errors.set(None);
        let body = match f.body(true) {
            Ok(b) => b,
            Err(p) => return errors.set(Some(p)),
        };
        busy.set(true);
        leptos::task::spawn_local(async move {
            let r = api::post::<Tenant>("/v1/tenants", &body).await;
            busy.set(false);
            match r {
                Ok(t) => on_created.run(t),
                Err(p) => errors.set(Some(p)),
            }
        });
    };
    view! {
        <form class="card form" data-form="create-tenant" on:submit=submit novalidate>
            <h2 class="card-title">"New tenant"</h2>
            <div class="grid-2">
                <Field
                    label="Tenant id"
                    field="id"
                    errors=errors
                    hint="Fixed at creation; used in URLs and tokens (letters, digits, - and _)."
                >
                    {crate::ui::text_input(f.id, "id", "acme")}
                </Field>
                <div></div>
            </div>
            {tenant_inputs(f, errors)}
            {form_error(errors, TENANT_FIELDS)}
            <div class="form-actions">
                <button type="submit" class="btn btn-primary" disabled=move || busy.get()>
                    "Create tenant"
                </button>
            </div>
        </form>
    }
}
