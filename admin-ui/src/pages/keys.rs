//! API keys (create with scopes, secret shown once, revoke) and signing keys (HS256 generated,
//! asymmetric uploaded as PEM, retire).

use leptos::prelude::*;
use serde_json::json;

use crate::api::{self, ApiKey, Load, Page, Problem, SCOPES, SigningKey};
use crate::pages::hs256::Hs256Secret;
use crate::session;
use crate::ui::{
    ConfirmButton, Field, SecretOnce, Table, badge, form_error, load_view, local_input_to_rfc3339,
    text_input, when,
};

/// Loads every page of a list into `list` (lists here are short).
fn load_all<T>(path: String, list: RwSignal<Load<Vec<T>>>)
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    leptos::task::spawn_local(async move {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=200&cursor={}", api::enc(c)),
                None => format!("{path}?limit=200"),
            };
            match api::get::<Page<T>>(&url).await {
                Ok(page) => {
                    items.extend(page.items);
                    match page.next_cursor {
                        Some(c) if items.len() < 2000 => cursor = Some(c),
                        _ => break,
                    }
                }
                Err(p) => return list.set(Load::Failed(p)),
            }
        }
        list.set(Load::Ready(items));
    });
}

/// A section's heading, with the button (`data-action=action`) that opens its form.
fn section_head(
    title: &'static str,
    action: &'static str,
    label: &'static str,
    open: impl Fn() + 'static,
) -> impl IntoView {
    view! {
        <div class="section-head">
            <h2>{title}</h2>
            <div class="page-actions">
                <button type="button" class="btn btn-primary" data-action=action on:click=move |_| open()>
                    {label}
                </button>
            </div>
        </div>
    }
}

#[component]
pub fn ApiKeys(tenant: String) -> impl IntoView {
    let base = format!("/v1/tenants/{}/api-keys", api::enc(&tenant));
    let list = RwSignal::new(Load::<Vec<ApiKey>>::Loading);
    load_all(base.clone(), list);
    let show_form = RwSignal::new(false);
    let name = RwSignal::new(String::new());
    let expires = RwSignal::new(String::new());
    let scopes = RwSignal::new(Vec::<String>::new());
    let errors = RwSignal::new(None::<Problem>);
    let row_error = RwSignal::new(None::<Problem>);
    let created = RwSignal::new(None::<ApiKey>);
    let busy = RwSignal::new(false);
    // A key can only grant scopes its creator holds.
    let holder = session::get_untracked();

    let submit = {
        let base = base.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            errors.set(None);
            let mut body = json!({ "name": name.get_untracked(), "scopes": scopes.get_untracked() });
            if let Some(at) = local_input_to_rfc3339(&expires.get_untracked()) {
                body["expires_at"] = json!(at);
            }
            let base = base.clone();
            busy.set(true);
            leptos::task::spawn_local(async move {
                let r = api::post::<ApiKey>(&base, &body).await;
                busy.set(false);
                match r {
                    Ok(key) => {
                        show_form.set(false);
                        name.set(String::new());
                        expires.set(String::new());
                        scopes.set(Vec::new());
                        let mut listed = key.clone();
                        listed.secret = None;
                        list.update(|l| {
                            if let Load::Ready(v) = l {
                                v.push(listed)
                            }
                        });
                        created.set(Some(key));
                    }
                    Err(p) => errors.set(Some(p)),
                }
            });
        }
    };

    let scope_boxes = SCOPES
        .iter()
        .map(|(scope, what)| {
            let s = (*scope).to_owned();
            let s2 = s.clone();
            let held = holder.as_ref().is_none_or(|h| h.is_admin() || h.scopes.iter().any(|x| x == scope));
            view! {
                <label class="check" class:disabled=!held>
                    <input
                        type="checkbox"
                        name="scope"
                        value=*scope
                        disabled=!held
                        prop:checked=move || scopes.with(|v| v.contains(&s))
                        on:change=move |ev| {
                            let on = event_target_checked(&ev);
                            scopes.update(|v| {
                                v.retain(|x| x != &s2);
                                if on {
                                    v.push(s2.clone());
                                }
                            });
                        }
                    />
                    <span class="mono">{*scope}</span>
                    <span class="muted small">{*what}</span>
                </label>
            }
        })
        .collect::<Vec<_>>();

    let form = view! {
        <form class="card form" data-form="create-api-key" on:submit=submit novalidate>
            <h2 class="card-title">"New API key"</h2>
            <div class="grid-2">
                <Field label="Name" field="name" errors=errors hint="What the key is for, e.g. “billing backend”.">
                    {text_input(name, "name", "backend")}
                </Field>
                <Field label="Expires (optional)" field="expires_at" errors=errors hint="Leave empty for a key that does not expire.">
                    <input
                        type="datetime-local"
                        name="expires_at"
                        prop:value=move || expires.get()
                        on:input=move |ev| expires.set(event_target_value(&ev))
                    />
                </Field>
            </div>
            <Field label="Scopes" field="scopes" errors=errors>
                <div class="checks">{scope_boxes}</div>
            </Field>
            {form_error(errors, &["name", "expires_at", "scopes"])}
            <div class="form-actions">
                <button type="submit" class="btn btn-primary" disabled=move || busy.get()>
                    "Create key"
                </button>
                <button type="button" class="btn btn-ghost" on:click=move |_| show_form.set(false)>
                    "Cancel"
                </button>
            </div>
        </form>
    };

    let rows = move || {
        let base = base.clone();
        load_view(list.get(), "API keys", move |items: Vec<ApiKey>| {
            Table::new("api-keys")
                .wide()
                .cols(&["Key", "Status", "Scopes", "Created", "Last used", "Expires", ""])
                .empty(
                    "No API keys yet.",
                    "A tenant's backend uses an API key to publish, manage channels and mint tokens.",
                )
                .rows(items.into_iter().rev(), |k| {
                    let expired =
                        k.expires_at.as_deref().is_some_and(|t| crate::ui::millis(t) < js_sys::Date::now());
                    let status = if k.revoked_at.is_some() {
                        badge("revoked", "red").into_any()
                    } else if expired {
                        badge("expired", "amber").into_any()
                    } else {
                        badge("active", "green").into_any()
                    };
                    let scopes = k
                        .scopes
                        .iter()
                        .map(|s| view! { <span class="chip mono">{s.clone()}</span> })
                        .collect::<Vec<_>>();
                    let path = format!("{base}/{}", api::enc(&k.id));
                    let id = k.id.clone();
                    let revoke = Callback::new(move |_| {
                        let path = path.clone();
                        let id = id.clone();
                        row_error.set(None);
                        leptos::task::spawn_local(async move {
                            match api::delete(&path).await {
                                Ok(()) => list.update(|l| {
                                    if let Load::Ready(v) = l {
                                        if let Some(k) = v.iter_mut().find(|k| k.id == id) {
                                            k.revoked_at.get_or_insert_with(|| {
                                                String::from(js_sys::Date::new_0().to_iso_string())
                                            });
                                        }
                                    }
                                }),
                                Err(p) => row_error.set(Some(p)),
                            }
                        });
                    });
                    let active = k.revoked_at.is_none();
                    view! {
                        <tr data-key=k.id.clone()>
                            <td>
                                <div class="strong">{k.name.clone()}</div>
                                <div class="mono small muted">{k.prefix.clone()} "…"</div>
                            </td>
                            <td>{status}</td>
                            <td class="wrap">{scopes}</td>
                            <td>{when(Some(&k.created_at))}</td>
                            <td>{when(k.last_used_at.as_deref())}</td>
                            <td>{when(k.expires_at.as_deref())}</td>
                            <td class="actions">
                                {active
                                    .then(|| {
                                        view! {
                                            <ConfirmButton
                                                label="Revoke"
                                                confirm="Revoke now"
                                                class="btn btn-small btn-danger-outline"
                                                action=revoke
                                            />
                                        }
                                    })}
                            </td>
                        </tr>
                    }
                })
        })
    };

    view! {
        {section_head("API keys", "new-api-key", "New API key", move || {
            created.set(None);
            errors.set(None);
            show_form.set(true);
        })}
        {move || {
            created
                .get()
                .and_then(|k| k.secret.map(|s| (k.name, s)))
                .map(|(name, secret)| {
                    view! {
                        <SecretOnce
                            title=format!("API key “{name}” created")
                            secret=secret
                            on_done=Callback::new(move |_| created.set(None))
                        />
                    }
                })
        }}
        <div class:hidden=move || !show_form.get()>{form}</div>
        {form_error(row_error, &[])}
        <section class="card card-flush">{rows}</section>
    }
}

#[component]
pub fn SigningKeys(tenant: String) -> impl IntoView {
    let base = format!("/v1/tenants/{}/signing-keys", api::enc(&tenant));
    let list = RwSignal::new(Load::<Vec<SigningKey>>::Loading);
    load_all(base.clone(), list);
    let show_form = RwSignal::new(false);
    let algorithm = RwSignal::new("HS256".to_owned());
    let kid = RwSignal::new(String::new());
    let pem = RwSignal::new(String::new());
    let errors = RwSignal::new(None::<Problem>);
    let row_error = RwSignal::new(None::<Problem>);
    let created = RwSignal::new(None::<SigningKey>);
    let busy = RwSignal::new(false);

    let submit = {
        let base = base.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            errors.set(None);
            let alg = algorithm.get_untracked();
            let mut body = json!({ "algorithm": alg });
            if !kid.get_untracked().trim().is_empty() {
                body["kid"] = json!(kid.get_untracked().trim());
            }
            if alg != "HS256" {
                body["public_key_pem"] = json!(pem.get_untracked());
            }
            let base = base.clone();
            busy.set(true);
            leptos::task::spawn_local(async move {
                let r = api::post::<SigningKey>(&base, &body).await;
                busy.set(false);
                match r {
                    Ok(key) => {
                        show_form.set(false);
                        kid.set(String::new());
                        pem.set(String::new());
                        let mut listed = key.clone();
                        listed.secret = None;
                        list.update(|l| {
                            if let Load::Ready(v) = l {
                                v.push(listed);
                                v.sort_by(|a, b| a.kid.cmp(&b.kid));
                            }
                        });
                        created.set(Some(key));
                    }
                    Err(p) => errors.set(Some(p)),
                }
            });
        }
    };

    let rows = {
        let base = base.clone();
        move || {
            let base = base.clone();
            load_view(list.get(), "signing keys", move |items: Vec<SigningKey>| {
                Table::new("signing-keys")
                    .wide()
                    .cols(&["Key id (kid)", "Algorithm", "Status", "Created", "Retired", ""])
                    .empty(
                        "No signing keys yet.",
                        "Client tokens are verified with these keys. Add an HS256 key to let Herald mint tokens, or upload a public key to sign your own.",
                    )
                    .rows(items, |k| {
                        let path = format!("{base}/{}/retire", api::enc(&k.kid));
                        let retire = Callback::new(move |_| {
                            let path = path.clone();
                            row_error.set(None);
                            leptos::task::spawn_local(async move {
                                match api::post::<SigningKey>(&path, &json!({})).await {
                                    Ok(k) => list.update(|l| {
                                        if let Load::Ready(v) = l {
                                            if let Some(slot) = v.iter_mut().find(|x| x.kid == k.kid) {
                                                *slot = k;
                                            }
                                        }
                                    }),
                                    Err(p) => row_error.set(Some(p)),
                                }
                            });
                        });
                        let active = k.status == "active";
                        view! {
                            <tr data-kid=k.kid.clone()>
                                <td class="mono strong">{k.kid.clone()}</td>
                                <td>
                                    <span class="chip mono">{k.algorithm.clone()}</span>
                                </td>
                                <td>
                                    {if active {
                                        badge("active", "green").into_any()
                                    } else {
                                        badge("retired", "gray").into_any()
                                    }}
                                </td>
                                <td>{when(Some(&k.created_at))}</td>
                                <td>{when(k.retired_at.as_deref())}</td>
                                <td class="actions">
                                    {active
                                        .then(|| {
                                            view! {
                                                <ConfirmButton
                                                    label="Retire"
                                                    confirm="Retire: tokens signed with it stop verifying"
                                                    class="btn btn-small btn-danger-outline"
                                                    action=retire
                                                />
                                            }
                                        })}
                                </td>
                            </tr>
                        }
                    })
            })
        }
    };

    view! {
        {section_head("Signing keys", "new-signing-key", "New signing key", move || {
            created.set(None);
            errors.set(None);
            show_form.set(true);
        })}
        <Hs256Secret
            key=created
            note="Your backend signs tokens with this secret's UTF-8 bytes. It is shown only once."
        />
        <Show when=move || show_form.get()>
            <form class="card form" data-form="create-signing-key" on:submit=submit.clone() novalidate>
                <h2 class="card-title">"New signing key"</h2>
                <div class="grid-2">
                    <Field label="Algorithm" field="algorithm" errors=errors>
                        <select
                            name="algorithm"
                            prop:value=move || algorithm.get()
                            on:change=move |ev| algorithm.set(event_target_value(&ev))
                        >
                            <option value="HS256">"HS256 — Herald generates a secret"</option>
                            <option value="RS256">"RS256 — upload an RSA public key"</option>
                            <option value="ES256">"ES256 — upload a P-256 public key"</option>
                            <option value="EdDSA">"EdDSA — upload an Ed25519 public key"</option>
                        </select>
                    </Field>
                    <Field label="Key id (optional)" field="kid" errors=errors hint="Generated when empty.">
                        {text_input(kid, "kid", "2025-01")}
                    </Field>
                </div>
                <Show when=move || algorithm.get() != "HS256">
                    <Field label="Public key (PEM)" field="public_key_pem" errors=errors>
                        <textarea
                            name="public_key_pem"
                            rows="6"
                            class="mono"
                            placeholder="-----BEGIN PUBLIC KEY-----"
                            prop:value=move || pem.get()
                            on:input=move |ev| pem.set(event_target_value(&ev))
                        ></textarea>
                    </Field>
                </Show>
                {form_error(errors, &["algorithm", "kid", "public_key_pem"])}
                <div class="form-actions">
                    <button type="submit" class="btn btn-primary" disabled=move || busy.get()>
                        "Add key"
                    </button>
                    <button type="button" class="btn btn-ghost" on:click=move |_| show_form.set(false)>
                        "Cancel"
                    </button>
                </div>
            </form>
        </Show>
        {form_error(row_error, &[])}
        <section class="card card-flush">{rows}</section>
    }
}
