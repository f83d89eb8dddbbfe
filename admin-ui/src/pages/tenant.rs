//! One tenant: its header (name, status, live figures) and the page of the selected tab. The
//! settings tab edits name, origins and limits, suspends/resumes and deletes.

use leptos::prelude::*;

use crate::api::{self, LIMITS, Load, Problem, Tenant};
use crate::pages::overview::{charts, kpis};
use crate::pages::tenants::{TENANT_FIELDS, TenantFields, set_status, tenant_inputs};
use crate::router::{self, Tab};
use crate::session;
use crate::stats::{self, Scope, Status};
use crate::ui::{ConfirmButton, Empty, Field, badge, error_box, form_error, load_view, text_input, when};

#[component]
pub fn TenantPage(tenant: String, tab: Tab) -> impl IntoView {
    let record = RwSignal::new(Load::<Tenant>::Loading);
    {
        let tenant = tenant.clone();
        leptos::task::spawn_local(async move {
            match api::get::<Tenant>(&format!("/v1/tenants/{}", api::enc(&tenant))).await {
                Ok(t) => record.set(Load::Ready(t)),
                Err(p) => record.set(Load::Failed(p)),
            }
        });
    }
    let who = session::get_untracked();
    let is_admin = who.as_ref().is_some_and(|s| s.is_admin());
    let allowed = match (tab.scope(), &who) {
        (Some(scope), Some(s)) => s.can(scope).then_some(()).ok_or(scope),
        _ => Ok(()),
    };

    // "3 live connections", from the stats stream (its own reactive cell).
    let live_chip = {
        let scope = Scope::Tenant(tenant.clone());
        move || {
            stats::live().with(|l| {
                l.latest().map(|r| {
                    let n = r.figures(&scope).connections.total();
                    let dot = if n > 0 { "live-dot live" } else { "live-dot off" };
                    let text =
                        if n == 1 { "1 live connection".to_owned() } else { format!("{n} live connections") };
                    view! {
                        <span class="live-chip" data-live-connections=n>
                            <span class=dot></span>
                            {text}
                        </span>
                    }
                })
            })
        }
    };
    let head = {
        let tenant = tenant.clone();
        move || {
            let (name, status) = record.with(|r| match r {
                Load::Ready(t) => (t.name.clone(), Some(t.status.clone())),
                _ => (tenant.clone(), None),
            });
            let status = status.map(|s| {
                if s == "suspended" {
                    badge("suspended", "red").into_any()
                } else {
                    badge("active", "green").into_any()
                }
            });
            view! {
                <div class="page-head">
                    <div>
                        <div class="crumbs muted small">
                            {is_admin
                                .then(|| {
                                    view! {
                                        <crate::ui::Link href="/admin/tenants">"Tenants"</crate::ui::Link>
                                        " / "
                                    }
                                })}
                            <span class="mono">{tenant.clone()}</span>
                        </div>
                        <h1>
                            {name} " " <span data-tenant-status="">{status}</span>
                        </h1>
                    </div>
                    <div class="page-actions">{live_chip.clone()}</div>
                </div>
            }
        }
    };

    let body = match allowed {
        Err(scope) => view! {
            <Empty
                title=format!("This API key lacks the {scope} scope this page needs.")
                hint="Log in with the admin token or a key that has it."
            />
        }
        .into_any(),
        Ok(()) => match tab {
            Tab::Settings => view! { <Settings tenant=tenant.clone() record=record /> }.into_any(),
            Tab::Channels => {
                view! { <crate::pages::channels::ChannelsPage tenant=tenant.clone() namespaces=false /> }
                    .into_any()
            }
            Tab::Namespaces => {
                view! { <crate::pages::channels::ChannelsPage tenant=tenant.clone() namespaces=true /> }
                    .into_any()
            }
            Tab::ApiKeys => view! { <crate::pages::keys::ApiKeys tenant=tenant.clone() /> }.into_any(),
            Tab::SigningKeys => {
                view! { <crate::pages::keys::SigningKeys tenant=tenant.clone() /> }.into_any()
            }
            Tab::Tokens => view! { <crate::pages::tokens::Tokens tenant=tenant.clone() /> }.into_any(),
            Tab::Live => {
                view! { <crate::pages::live::LiveTail tenant=tenant.clone() record=record /> }.into_any()
            }
            Tab::Presence => view! { <crate::pages::presence::Presence tenant=tenant.clone() /> }.into_any(),
            Tab::Webhooks => view! { <crate::pages::webhooks::Webhooks tenant=tenant.clone() /> }.into_any(),
            Tab::Audit => view! { <crate::pages::audit::TenantAudit tenant=tenant.clone() /> }.into_any(),
        },
    };

    view! {
        {head}
        {move || record.with(|r| match r {
            Load::Failed(p) if p.status == 404 => Some(error_box(p).into_any()),
            _ => None,
        })}
        {body}
    }
}

/// The live figures of one tenant: headline numbers and charts.
#[component]
pub fn TenantLive(tenant: String, #[prop(optional)] charts_too: bool) -> impl IntoView {
    let scope = Scope::Tenant(tenant);
    move || {
        let live = stats::live();
        if let Status::Unavailable(why) = live.with(|l| l.status.clone()) {
            return view! { <Empty title="Live statistics are not available to this session." hint=why /> }
                .into_any();
        }
        live.with(|l| {
            view! {
                {kpis(l, &scope)}
                {charts_too.then(|| charts(l, &scope))}
            }
            .into_any()
        })
    }
}

#[component]
fn Settings(tenant: String, record: RwSignal<Load<Tenant>>) -> impl IntoView {
    let is_admin = session::get_untracked().is_some_and(|s| s.is_admin());
    let f = TenantFields::new();
    let errors = RwSignal::new(None::<Problem>);
    let saved = RwSignal::new(false);
    let busy = RwSignal::new(false);
    let status_error = RwSignal::new(None::<Problem>);
    // Fill the form once the tenant is loaded.
    Effect::new(move |done: Option<bool>| {
        if done == Some(true) {
            return true;
        }
        record.with(|r| match r {
            Load::Ready(t) => {
                f.set_from(t);
                true
            }
            _ => false,
        })
    });
    let path = format!("/v1/tenants/{}", api::enc(&tenant));

    let save = {
        let path = path.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            errors.set(None);
            saved.set(false);
            let body = match f.body(false) {
                Ok(b) => b,
                Err(p) => return errors.set(Some(p)),
            };
            let path = path.clone();
            busy.set(true);
            leptos::task::spawn_local(async move {
                let r = api::patch::<Tenant>(&path, &body).await;
                busy.set(false);
                match r {
                    Ok(t) => {
                        f.set_from(&t);
                        record.set(Load::Ready(t));
                        saved.set(true);
                    }
                    Err(p) => errors.set(Some(p)),
                }
            });
        }
    };

    let status_card = {
        let tenant = tenant.clone();
        move || {
            record.with(|r| {
                let Load::Ready(t) = r else { return None };
                let suspended = t.status == "suspended";
                let tenant = tenant.clone();
                let toggle = Callback::new(move |_| {
                    status_error.set(None);
                    let status = if suspended { "active" } else { "suspended" };
                    set_status(tenant.clone(), status, move |r| match r {
                        Ok(t) => record.set(Load::Ready(t)),
                        Err(p) => status_error.set(Some(p)),
                    });
                });
                Some(view! {
                    <section class="card">
                        <h2 class="card-title">"Status"</h2>
                        <div class="row-between">
                            <p>
                                {if suspended {
                                    "Suspended: real-time connections are refused, API keys fail with 403, publishing and history are blocked."
                                } else {
                                    "Active: clients connect, keys work, messages flow."
                                }}
                            </p>
                            {is_admin
                                .then(|| {
                                    if suspended {
                                        view! {
                                            <ConfirmButton
                                                label="Resume tenant"
                                                confirm="Yes, resume"
                                                class="btn"
                                                action=toggle
                                            />
                                        }
                                            .into_any()
                                    } else {
                                        view! {
                                            <ConfirmButton
                                                label="Suspend tenant"
                                                confirm="Yes, suspend and close its connections"
                                                class="btn btn-danger-outline"
                                                action=toggle
                                            />
                                        }
                                            .into_any()
                                    }
                                })}
                        </div>
                        {form_error(status_error, &[])}
                    </section>
                })
            })
        }
    };

    let details = move || {
        load_view(record.get(), "tenant", move |t: Tenant| {
            let limits = LIMITS
                .iter()
                .map(|(key, label, _)| {
                    let v = t.limits.get(key).map(|v| v.to_string()).unwrap_or_else(|| "no limit".into());
                    view! {
                        <dt>{*label}</dt>
                        <dd>{v}</dd>
                    }
                })
                .collect::<Vec<_>>();
            view! {
                <section class="card">
                    <h2 class="card-title">"Details"</h2>
                    <dl class="dl">
                        <dt>"Id"</dt>
                        <dd class="mono">{t.id.clone()}</dd>
                        <dt>"Allowed origins"</dt>
                        <dd class="mono">
                            {if t.allowed_origins.is_empty() { "none".into() } else { t.allowed_origins.join(", ") }}
                        </dd>
                        {limits}
                        <dt>"Created"</dt>
                        <dd>{when(Some(&t.created_at))}</dd>
                        <dt>"Updated"</dt>
                        <dd>{when(Some(&t.updated_at))}</dd>
                    </dl>
                </section>
            }
        })
    };

    let edit = is_admin.then(|| {
        view! {
            <form class="card form" data-form="edit-tenant" on:submit=save novalidate>
                <h2 class="card-title">"Settings"</h2>
                {tenant_inputs(f, errors)}
                {form_error(errors, TENANT_FIELDS)}
                <div class="form-actions">
                    <button type="submit" class="btn btn-primary" disabled=move || busy.get()>
                        "Save changes"
                    </button>
                    {move || saved.get().then(|| view! { <span class="ok-text" role="status">"Saved."</span> })}
                </div>
            </form>
            <DangerZone tenant=tenant.clone() />
        }
    });

    view! {
        <TenantLive tenant=tenant.clone() />
        {status_card}
        {if is_admin { None } else { Some(details) }}
        {edit}
    }
}

#[component]
fn DangerZone(tenant: String) -> impl IntoView {
    let typed = RwSignal::new(String::new());
    let errors = RwSignal::new(None::<Problem>);
    let expected = tenant.clone();
    let delete = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if typed.get_untracked().trim() != expected {
            errors.set(Some(Problem::on_field("confirm", "Type the tenant id to confirm.")));
            return;
        }
        let path = format!("/v1/tenants/{}", api::enc(&expected));
        leptos::task::spawn_local(async move {
            match api::delete(&path).await {
                Ok(()) => router::navigate("/admin/tenants"),
                Err(p) => errors.set(Some(p)),
            }
        });
    };
    view! {
        <form class="card form danger-zone" on:submit=delete novalidate>
            <h2 class="card-title">"Delete tenant"</h2>
            <p class="muted">
                "Removes the tenant with its namespaces, channels, keys and revocations, and closes its connections. The audit log is kept."
            </p>
            <div class="inline-form">
                <Field label=format!("Type “{tenant}” to confirm") field="confirm" errors=errors>
                    {text_input(typed, "confirm", "")}
                </Field>
                <button type="submit" class="btn btn-danger">"Delete tenant"</button>
            </div>
            {form_error(errors, &["confirm"])}
        </form>
    }
}
