//! A tenant's proxies: the endpoints Herald asks before a token-less connect, a subscription, a
//! client publish or a refresh; their timeout and failure policy; the signing secret (shown
//! once when the proxy is first saved or rotated); removal.

use leptos::prelude::*;
use serde_json::{Value, json};

use crate::api::{self, Load, PROXY_KINDS, Problem, ProxyConfig};
use crate::ui::{
    ConfirmButton, Field, SecretOnce, datetime, form_error, number_input, parse_number, text_input,
};

const FIELDS: &[&str] =
    &["connect_url", "subscribe_url", "publish_url", "refresh_url", "timeout_ms", "on_failure"];

#[component]
pub fn ProxyCard(tenant: String) -> impl IntoView {
    let path = format!("/v1/tenants/{}/proxy", api::enc(&tenant));
    let config = RwSignal::new(Load::<Option<ProxyConfig>>::Loading);
    let urls: [RwSignal<String>; 4] = std::array::from_fn(|_| RwSignal::new(String::new()));
    let timeout = RwSignal::new(String::new());
    let on_failure = RwSignal::new("deny".to_owned());
    let errors = RwSignal::new(None::<Problem>);
    let busy = RwSignal::new(false);
    let secret = RwSignal::new(None::<(String, String)>);

    // The form shows what is stored.
    let fill = move |c: &Option<ProxyConfig>| {
        let stored = |f: fn(&ProxyConfig) -> &Option<String>| {
            c.as_ref().and_then(|c| f(c).clone()).unwrap_or_default()
        };
        urls[0].set(stored(|c| &c.connect_url));
        urls[1].set(stored(|c| &c.subscribe_url));
        urls[2].set(stored(|c| &c.publish_url));
        urls[3].set(stored(|c| &c.refresh_url));
        timeout.set(c.as_ref().map(|c| c.timeout_ms.to_string()).unwrap_or_default());
        on_failure.set(c.as_ref().map(|c| c.on_failure.clone()).unwrap_or_else(|| "deny".into()));
    };
    {
        let path = path.clone();
        leptos::task::spawn_local(async move {
            let loaded = match api::get::<ProxyConfig>(&path).await {
                Ok(c) => Load::Ready(Some(c)),
                Err(p) if p.status == 404 => Load::Ready(None),
                Err(p) => Load::Failed(p),
            };
            if let Load::Ready(c) = &loaded {
                fill(c);
            }
            config.set(loaded);
        });
    }

    let save = {
        let path = path.clone();
        move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            errors.set(None);
            let mut body = json!({"on_failure": on_failure.get_untracked()});
            for (i, (field, _, _)) in PROXY_KINDS.iter().enumerate() {
                let url = urls[i].get_untracked();
                if !url.trim().is_empty() {
                    body[*field] = Value::from(url.trim());
                }
            }
            match parse_number(&timeout.get_untracked(), "timeout_ms") {
                Ok(Some(ms)) => body["timeout_ms"] = json!(ms),
                Ok(None) => {}
                Err(p) => return errors.set(Some(p)),
            }
            let path = path.clone();
            busy.set(true);
            leptos::task::spawn_local(async move {
                let r = api::put::<ProxyConfig>(&path, &body).await;
                busy.set(false);
                match r {
                    Ok(mut c) => {
                        if let Some(s) = c.secret.take() {
                            secret.set(Some(("Proxy saved: its signing secret".into(), s)));
                        }
                        let c = Some(c);
                        fill(&c);
                        config.set(Load::Ready(c));
                    }
                    Err(p) => errors.set(Some(p)),
                }
            });
        }
    };

    let rotate = {
        let path = path.clone();
        Callback::new(move |_| {
            let path = format!("{path}/rotate-secret");
            leptos::task::spawn_local(async move {
                match api::post_empty::<ProxyConfig>(&path).await {
                    Ok(mut c) => {
                        if let Some(s) = c.secret.take() {
                            secret.set(Some(("New proxy signing secret".into(), s)));
                        }
                        config.set(Load::Ready(Some(c)));
                    }
                    Err(p) => errors.set(Some(p)),
                }
            });
        })
    };
    let remove = {
        let path = path.clone();
        Callback::new(move |_| {
            let path = path.clone();
            leptos::task::spawn_local(async move {
                match api::delete(&path).await {
                    Ok(()) => {
                        secret.set(None);
                        fill(&None);
                        config.set(Load::Ready(None));
                    }
                    Err(p) => errors.set(Some(p)),
                }
            });
        })
    };

    let url_fields = PROXY_KINDS
        .iter()
        .enumerate()
        .map(|(i, (field, label, hint))| {
            view! {
                <Field label=format!("{label} URL") field=*field errors=errors hint=*hint>
                    {text_input(urls[i], field, "https://example.com/herald/proxy")}
                </Field>
            }
        })
        .collect::<Vec<_>>();

    let status = move || match config.get() {
        Load::Loading => view! { <span class="muted">"Loading…"</span> }.into_any(),
        Load::Failed(p) => view! { <span class="field-error">{p.message()}</span> }.into_any(),
        Load::Ready(None) => {
            view! { <span class="muted" data-proxy-status="none">"No proxy configured."</span> }.into_any()
        }
        Load::Ready(Some(c)) => view! {
            <span class="muted" data-proxy-status="configured">
                {format!("Configured; changed {}.", datetime(&c.updated_at))}
            </span>
        }
        .into_any(),
    };
    let configured = move || matches!(config.get(), Load::Ready(Some(_)));

    view! {
        <div class="section-head">
            <h2>"Proxies"</h2>
        </div>
        {move || {
            secret
                .get()
                .map(|(title, s)| {
                    view! {
                        <SecretOnce
                            title=title
                            secret=s
                            note="Your proxy endpoint verifies the webhook-signature header with this secret, as a webhook receiver does. Copy it now: it is shown only once."
                            on_done=Callback::new(move |_| secret.set(None))
                        />
                    }
                })
        }}
        <form class="card form" data-form="proxy" on:submit=save novalidate>
            <p class="muted">
                "Herald asks these endpoints (signed POSTs) and waits for "
                <code>"{\"result\": …}"</code>
                " or "
                <code>"{\"deny\": {\"reason\": …}}"</code>
                ". An endpoint left empty is not asked. "
                {status}
            </p>
            <div class="grid-2">{url_fields}</div>
            <div class="grid-2">
                <Field label="Timeout (ms)" field="timeout_ms" errors=errors hint="50-30000; 1000 when empty.">
                    {number_input(timeout, "timeout_ms", "1000")}
                </Field>
                <Field
                    label="When a proxy fails"
                    field="on_failure"
                    errors=errors
                    hint="A timeout, an error status or an unusable answer: refuse (deny) or carry on as if there were no proxy (allow)."
                >
                    <select
                        name="on_failure"
                        prop:value=move || on_failure.get()
                        on:change=move |ev| on_failure.set(event_target_value(&ev))
                    >
                        <option value="deny">"deny"</option>
                        <option value="allow">"allow"</option>
                    </select>
                </Field>
            </div>
            {form_error(errors, FIELDS)}
            <div class="form-actions">
                <button type="submit" class="btn btn-primary" data-action="save-proxy" disabled=move || busy.get()>
                    "Save proxies"
                </button>
                {move || {
                    configured()
                        .then(|| {
                            view! {
                                <ConfirmButton
                                    label="Rotate secret"
                                    confirm="Rotate: requests are signed with the new one at once"
                                    action=rotate
                                />
                                <ConfirmButton
                                    label="Remove"
                                    confirm="Remove every proxy"
                                    class="btn btn-small btn-danger-outline"
                                    action=remove
                                />
                            }
                        })
                }}
            </div>
        </form>
    }
}
