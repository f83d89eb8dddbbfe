//! The audit log: every management change, newest first, for one tenant or (admin) all.

use leptos::prelude::*;

use crate::api::{self, AuditEntry};
use crate::router::{self, Tab};
use crate::ui::{Link, Paged, Table, load_view, on_submit, when};

fn action_tone(action: &str) -> &'static str {
    if action.ends_with(".delete") || action.ends_with(".revoke") || action.ends_with(".suspend") {
        "red"
    } else if action.ends_with(".create") || action.ends_with(".resume") {
        "green"
    } else if action.ends_with(".retire") {
        "amber"
    } else {
        "gray"
    }
}

#[component]
fn AuditTable(
    base: String,
    show_tenant: bool,
    #[prop(optional)] filter: Option<RwSignal<String>>,
) -> impl IntoView {
    let paged = Paged::<AuditEntry>::new(move || {
        let sep = if base.contains('?') { '&' } else { '?' };
        let mut path = format!("{base}{sep}limit=50");
        if let Some(t) = filter.map(|f| f.get_untracked()).filter(|t| !t.trim().is_empty()) {
            path.push_str(&format!("&tenant={}", api::enc(t.trim())));
        }
        path
    });
    paged.reload();
    if let Some(f) = filter {
        // Reload when the tenant filter is applied (the page sets it on submit).
        Effect::new(move |prev: Option<String>| {
            let v = f.get();
            if prev.is_some() {
                paged.reload();
            }
            v
        });
    }

    let rows = move || {
        load_view(paged.list.get(), "audit log", move |items: Vec<AuditEntry>| {
            Table::new("audit")
                .wide()
                .cols(&["When", "Action"])
                .col_if(show_tenant, "Tenant")
                .cols(&["Target", "Actor", "Details"])
                .empty("Nothing recorded yet.", "Every management change is recorded here.")
                .rows(items, |e| {
                    let details = if e.details.is_null() { String::new() } else { e.details.to_string() };
                    let short = if details.chars().count() > 80 {
                        format!("{}…", details.chars().take(80).collect::<String>())
                    } else {
                        details.clone()
                    };
                    let long = details.chars().count() > 80;
                    let tenant_cell = show_tenant.then(|| {
                        let cell = match e.tenant.clone() {
                            Some(t) => view! {
                                <Link href=router::tenant_path(&t, Tab::Settings) class="mono">
                                    {t}
                                </Link>
                            }
                            .into_any(),
                            None => view! { <span class="muted">"—"</span> }.into_any(),
                        };
                        view! { <td>{cell}</td> }
                    });
                    view! {
                        <tr data-action=e.action.clone()>
                            <td>{when(Some(&e.at))}</td>
                            <td>
                                <span class=format!("badge badge-{}", action_tone(&e.action))>{e.action.clone()}</span>
                            </td>
                            {tenant_cell}
                            <td class="mono small">{e.target.clone()}</td>
                            <td class="mono small muted">{e.actor.clone()}</td>
                            <td class="details">
                                {if long {
                                    view! {
                                        <details>
                                            <summary class="mono small">{short}</summary>
                                            <pre class="code">
                                                {serde_json::to_string_pretty(&e.details).unwrap_or(details)}
                                            </pre>
                                        </details>
                                    }
                                        .into_any()
                                } else {
                                    view! { <span class="mono small">{short}</span> }.into_any()
                                }}
                            </td>
                        </tr>
                    }
                })
        })
    };

    view! {
        <section class="card card-flush">{rows}</section>
        {paged.more()}
    }
}

#[component]
pub fn TenantAudit(tenant: String) -> impl IntoView {
    view! {
        <div class="section-head">
            <h2>"Audit log"</h2>
        </div>
        <AuditTable base=format!("/v1/tenants/{}/audit-log", api::enc(&tenant)) show_tenant=false />
    }
}

#[component]
pub fn GlobalAudit() -> impl IntoView {
    let input = RwSignal::new(String::new());
    let applied = RwSignal::new(String::new());
    view! {
        <div class="page-head">
            <div>
                <h1>"Audit log"</h1>
                <p class="muted">"Every management change across tenants, newest first. Entries outlive deleted tenants."</p>
            </div>
            <form
                class="page-actions inline-form"
                on:submit=on_submit(move || applied.set(input.get_untracked()))
            >
                <input
                    type="search"
                    placeholder="Tenant id"
                    prop:value=move || input.get()
                    on:input=move |ev| input.set(event_target_value(&ev))
                />
                <button type="submit" class="btn">"Filter"</button>
            </form>
        </div>
        <AuditTable base="/v1/audit-log".to_owned() show_tenant=true filter=applied />
    }
}
