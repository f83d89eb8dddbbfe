//! The login page: the admin token (exchanged for a short-lived session) or a tenant API key.

use leptos::prelude::*;

use crate::api::Problem;
use crate::ui::{Field, form_error};
use crate::{router, session};

#[component]
pub fn Login() -> impl IntoView {
    let secret = RwSignal::new(String::new());
    let errors = RwSignal::new(None::<Problem>);
    let busy = RwSignal::new(false);
    let flash = session::flash();

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if busy.get_untracked() {
            return;
        }
        busy.set(true);
        errors.set(None);
        let value = secret.get_untracked();
        // Back to the page that asked for a login: `?next=`, or the page this form stands in for.
        let here = router::path_untracked();
        let next =
            router::query("next").or_else(|| (!here.starts_with("/admin/login")).then_some(here)).filter(
                |n| n.starts_with("/admin/") && n.len() > "/admin/".len() && !n.starts_with("/admin/login"),
            );
        leptos::task::spawn_local(async move {
            let result = session::login(&value).await;
            busy.set(false);
            match result {
                Ok(()) => router::replace(&next.unwrap_or_else(session::home)),
                Err(p) => errors.set(Some(p)),
            }
        });
    };

    view! {
        <main class="login-page">
            <form class="login-card card" on:submit=submit novalidate>
                <div class="brand brand-large">
                    <Logo />
                    <span>"Herald"</span>
                </div>
                <h1>"Sign in to the dashboard"</h1>
                {move || flash.get().map(|m| view! { <div class="alert alert-info" role="status">{m}</div> })}
                <Field
                    label="Admin token or tenant API key"
                    field="token"
                    errors=errors
                    hint="The admin token is printed once at first start (or set with HERALD_ADMIN_TOKEN). A tenant API key (hk_…) opens that tenant's pages only."
                >
                    <input
                        type="password"
                        name="token"
                        autocomplete="current-password"
                        autofocus
                        prop:value=move || secret.get()
                        on:input=move |ev| secret.set(event_target_value(&ev))
                    />
                </Field>
                {form_error(errors, &["token"])}
                <button type="submit" class="btn btn-primary btn-block" disabled=move || busy.get()>
                    {move || if busy.get() { "Signing in…" } else { "Sign in" }}
                </button>
                <p class="muted small">
                    "Admin sessions last 15 minutes by default; the token itself is never stored by the browser."
                </p>
            </form>
        </main>
    }
}

/// Herald's mark.
#[component]
pub fn Logo() -> impl IntoView {
    view! {
        <span
            class="logo"
            inner_html=r##"<svg viewBox="0 0 32 32" width="28" height="28" aria-hidden="true"><rect width="32" height="32" rx="8" fill="#4f46e5"/><path d="M9 23V9m14 14V9M9 16h14" stroke="#fff" stroke-width="3" stroke-linecap="round"/><circle cx="25.5" cy="6.5" r="3.5" fill="#22d3ee"/></svg>"##
        ></span>
    }
}
