//! Client tokens: mint a test token (with capabilities), and revoke tokens or users.

use leptos::prelude::*;
use serde_json::{Value, json};

use crate::api::{self, Capabilities, Load, MintedToken, Page, Problem, Revocation};
use crate::pages::hs256::NewHs256Key;
use crate::ui::{CopyButton, Field, Table, form_error, load_view, number_input, on_submit, text_input, when};

pub const ACTIONS: [&str; 4] = ["subscribe", "publish", "presence", "history"];
/// Said with the secret of an HS256 key created to mint a token.
const NEW_KEY_NOTE: &str = "Your backend may sign its own tokens with this secret. It is shown only once.";

/// Mints a token through the API.
pub async fn mint(tenant: &str, body: &Value) -> Result<MintedToken, Problem> {
    api::post::<MintedToken>(&format!("/v1/tenants/{}/tokens", api::enc(tenant)), body).await
}

/// The JSON payload of a JWT, pretty-printed.
fn claims(token: &str) -> String {
    let Some(payload) = token.split('.').nth(1) else { return String::new() };
    let mut b64 = payload.replace('-', "+").replace('_', "/");
    while b64.len() % 4 != 0 {
        b64.push('=');
    }
    let decoded = window().atob(&b64).unwrap_or_default();
    serde_json::from_str::<Value>(&decoded)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(decoded)
}

#[derive(Clone, Copy)]
struct CapRow {
    id: u32,
    pattern: RwSignal<String>,
    actions: RwSignal<Vec<String>>,
}

impl CapRow {
    fn new(id: u32, pattern: &str, actions: &[&str]) -> CapRow {
        CapRow {
            id,
            pattern: RwSignal::new(pattern.to_owned()),
            actions: RwSignal::new(actions.iter().map(|s| (*s).to_owned()).collect()),
        }
    }
}

#[component]
pub fn Tokens(tenant: String) -> impl IntoView {
    let sub = RwSignal::new("dashboard-test".to_owned());
    let ttl = RwSignal::new("3600".to_owned());
    let info = RwSignal::new(String::new());
    let rows = RwSignal::new(vec![CapRow::new(0, "*", &["subscribe", "history", "presence"])]);
    let next_id = RwSignal::new(1u32);
    let errors = RwSignal::new(None::<Problem>);
    let minted = RwSignal::new(None::<MintedToken>);
    let no_key = RwSignal::new(false);
    let busy = RwSignal::new(false);
    let revoked_note = RwSignal::new(None::<String>);

    let body = move || -> Result<Value, Problem> {
        let mut caps = Capabilities::new();
        for r in rows.get_untracked() {
            let p = r.pattern.get_untracked().trim().to_owned();
            if p.is_empty() {
                continue;
            }
            caps.insert(p, r.actions.get_untracked());
        }
        let mut b = json!({ "sub": sub.get_untracked(), "capabilities": caps });
        if let Some(t) = crate::ui::parse_number(&ttl.get_untracked(), "ttl_seconds")? {
            b["ttl_seconds"] = json!(t);
        }
        let i = info.get_untracked();
        if !i.trim().is_empty() {
            let v: Value = serde_json::from_str(&i)
                .map_err(|e| Problem::on_field("info", format!("Not valid JSON: {e}")))?;
            b["info"] = v;
        }
        Ok(b)
    };

    let tenant_s = StoredValue::new(tenant.clone());
    let run_mint = move || {
        errors.set(None);
        minted.set(None);
        revoked_note.set(None);
        let b = match body() {
            Ok(b) => b,
            Err(p) => return errors.set(Some(p)),
        };
        busy.set(true);
        let tenant = tenant_s.get_value();
        leptos::task::spawn_local(async move {
            let r = mint(&tenant, &b).await;
            busy.set(false);
            match r {
                Ok(t) => {
                    no_key.set(false);
                    minted.set(Some(t));
                }
                Err(p) if p.code == "no_signing_key" => no_key.set(true),
                Err(p) => errors.set(Some(p)),
            }
        });
    };

    let cap_rows = move || {
        rows.get()
            .into_iter()
            .map(|r| {
                let boxes = ACTIONS
                    .iter()
                    .map(|a| {
                        let a = (*a).to_owned();
                        let a2 = a.clone();
                        let label = a.clone();
                        view! {
                            <label class="check check-inline">
                                <input
                                    type="checkbox"
                                    prop:checked=move || r.actions.with(|v| v.contains(&a))
                                    on:change=move |ev| {
                                        let on = event_target_checked(&ev);
                                        r.actions.update(|v| {
                                            v.retain(|x| x != &a2);
                                            if on {
                                                v.push(a2.clone());
                                            }
                                        });
                                    }
                                />
                                {label}
                            </label>
                        }
                    })
                    .collect::<Vec<_>>();
                view! {
                    <div class="cap-row">
                        <input
                            type="text"
                            class="mono"
                            placeholder="chat:*"
                            aria-label="Channel pattern"
                            prop:value=move || r.pattern.get()
                            on:input=move |ev| r.pattern.set(event_target_value(&ev))
                        />
                        <div class="cap-actions">{boxes}</div>
                        <button
                            type="button"
                            class="btn btn-small btn-ghost"
                            aria-label="Remove"
                            on:click=move |_| rows.update(|v| v.retain(|x| x.id != r.id))
                        >
                            "✕"
                        </button>
                    </div>
                }
            })
            .collect::<Vec<_>>()
    };

    let result = move || {
        minted.get().map(|t| {
            let jti = t.jti.clone();
            let exp = t.expires_at.clone();
            let revoke = move |_| {
                let body = json!({ "jti": jti, "expires_at": exp });
                let tenant = tenant_s.get_value();
                leptos::task::spawn_local(async move {
                    let path = format!("/v1/tenants/{}/revocations", api::enc(&tenant));
                    match api::call("POST", &path, Some(&body)).await {
                        Ok(_) => {
                            revoked_note.set(Some("Revoked: connections using this token are closed.".into()))
                        }
                        Err(p) => revoked_note.set(Some(p.message())),
                    }
                });
            };
            view! {
                <section class="card" data-minted="">
                    <h2 class="card-title">"Token"</h2>
                    <div class="secret-row">
                        <code class="secret token-text">{t.token.clone()}</code>
                        <CopyButton text=t.token.clone() />
                    </div>
                    <dl class="dl">
                        <dt>"Key id"</dt>
                        <dd class="mono">{t.kid.clone()}</dd>
                        <dt>"Token id (jti)"</dt>
                        <dd class="mono">{t.jti.clone()}</dd>
                        <dt>"Expires"</dt>
                        <dd>{when(Some(&t.expires_at))}</dd>
                    </dl>
                    <h3 class="subtle">"Claims"</h3>
                    <pre class="code">{claims(&t.token)}</pre>
                    <div class="form-actions">
                        <button type="button" class="btn btn-danger-outline btn-small" on:click=revoke>
                            "Revoke this token"
                        </button>
                        {move || revoked_note.get().map(|n| view! { <span class="muted">{n}</span> })}
                    </div>
                </section>
            }
        })
    };

    view! {
        <div class="section-head">
            <h2>"Mint a test token"</h2>
        </div>
        <p class="muted">
            "Herald signs client tokens with the tenant's newest active HS256 key. Use one to try a client, or copy the claims your backend should put in its own tokens."
        </p>
        <NewHs256Key tenant=tenant_s.get_value() missing=no_key note=NEW_KEY_NOTE on_created=run_mint />
        <form class="card form" data-form="mint-token" novalidate on:submit=on_submit(run_mint)>
            <div class="grid-3">
                <Field label="User (sub)" field="sub" errors=errors>
                    {text_input(sub, "sub", "user-42")}
                </Field>
                <Field label="Lifetime (seconds)" field="ttl_seconds" errors=errors hint="1 to 2592000 (30 days)">
                    {number_input(ttl, "ttl_seconds", "3600")}
                </Field>
                <Field label="Info (JSON, optional)" field="info" errors=errors>
                    {text_input(info, "info", "{\"name\": \"Alice\"}")}
                </Field>
            </div>
            <Field
                label="Capabilities"
                field="capabilities"
                errors=errors
                hint="Channel patterns (* matches any run of characters) and what they allow."
            >
                <div class="caps">{cap_rows}</div>
                <button
                    type="button"
                    class="btn btn-small btn-ghost"
                    on:click=move |_| {
                        let id = next_id.get_untracked();
                        next_id.set(id + 1);
                        rows.update(|v| v.push(CapRow::new(id, "", &["subscribe"])));
                    }
                >
                    "+ Add pattern"
                </button>
            </Field>
            {form_error(errors, &["sub", "ttl_seconds", "info", "capabilities"])}
            <div class="form-actions">
                <button type="submit" class="btn btn-primary" disabled=move || busy.get()>
                    "Mint token"
                </button>
            </div>
        </form>
        {result}
        <Revocations tenant=tenant />
    }
}

#[component]
fn Revocations(tenant: String) -> impl IntoView {
    let base = format!("/v1/tenants/{}/revocations", api::enc(&tenant));
    let tokens = RwSignal::new(Load::<Vec<Revocation>>::Loading);
    let users = RwSignal::new(Load::<Vec<Revocation>>::Loading);
    let target = RwSignal::new(String::new());
    let by_user = RwSignal::new(true);
    let errors = RwSignal::new(None::<Problem>);
    let reload = {
        let base = base.clone();
        move || {
            for (kind, list) in [("tokens", tokens), ("users", users)] {
                let path = format!("{base}/{kind}?limit=100");
                leptos::task::spawn_local(async move {
                    match api::get::<Page<Revocation>>(&path).await {
                        Ok(p) => list.set(Load::Ready(p.items)),
                        Err(p) => list.set(Load::Failed(p)),
                    }
                });
            }
        }
    };
    reload();
    let reload = StoredValue::new(reload);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        errors.set(None);
        let v = target.get_untracked().trim().to_owned();
        let body = if by_user.get_untracked() { json!({ "sub": v }) } else { json!({ "jti": v }) };
        let base = base.clone();
        leptos::task::spawn_local(async move {
            match api::call("POST", &base, Some(&body)).await {
                Ok(_) => {
                    target.set(String::new());
                    reload.with_value(|r| r());
                }
                Err(p) => errors.set(Some(p)),
            }
        });
    };
    let table = |list: RwSignal<Load<Vec<Revocation>>>, users: bool| {
        move || {
            load_view(list.get(), "revocations", move |items: Vec<Revocation>| {
                let (id_col, time_col) = if users {
                    ("User (sub)", "Tokens issued before")
                } else {
                    ("Token (jti)", "Token expires")
                };
                Table::unnamed()
                    .cols(&[id_col, time_col, "Revoked"])
                    .empty(if users { "No user revocations." } else { "No revoked tokens." }, "")
                    .rows(items, |r| {
                        let id = if users { r.sub.clone() } else { r.jti.clone() }.unwrap_or_default();
                        let extra = if users { r.issued_before.clone() } else { r.expires_at.clone() };
                        view! {
                            <tr>
                                <td class="mono">{id}</td>
                                <td>{when(extra.as_deref())}</td>
                                <td>{when(r.revoked_at.as_deref())}</td>
                            </tr>
                        }
                    })
            })
        }
    };
    view! {
        <div class="section-head">
            <h2>"Revocations"</h2>
        </div>
        <form class="card form" data-form="revoke" on:submit=submit novalidate>
            <div class="inline-form">
                <select
                    aria-label="Revoke by"
                    on:change=move |ev| by_user.set(event_target_value(&ev) == "sub")
                >
                    <option value="sub">"Every token of user (sub)"</option>
                    <option value="jti">"One token (jti)"</option>
                </select>
                <input
                    type="text"
                    class="mono"
                    placeholder="user-42 or a jti"
                    prop:value=move || target.get()
                    on:input=move |ev| target.set(event_target_value(&ev))
                />
                <button type="submit" class="btn btn-danger-outline">"Revoke"</button>
            </div>
            {crate::ui::field_error(errors, "sub")}
            {crate::ui::field_error(errors, "jti")}
            {form_error(errors, &["sub", "jti"])}
            <p class="muted small">"Open connections that use a revoked token are closed at once (4004 token_revoked)."</p>
        </form>
        <div class="grid-2">
            <section class="card card-flush">{table(users, true)}</section>
            <section class="card card-flush">{table(tokens, false)}</section>
        </div>
    }
}
