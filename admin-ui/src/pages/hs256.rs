//! HS256 signing keys created where a page needs one: the notice that the tenant has none, with
//! a button that adds one, and the new key's secret, shown once.

use leptos::prelude::*;
use serde_json::json;

use crate::api::{self, Problem, SigningKey};
use crate::ui::{SecretOnce, form_error};

/// Creates an HS256 signing key so that Herald can mint tokens for the tenant.
async fn create_hs256(tenant: &str) -> Result<SigningKey, Problem> {
    api::post::<SigningKey>(
        &format!("/v1/tenants/{}/signing-keys", api::enc(tenant)),
        &json!({"algorithm": "HS256"}),
    )
    .await
}

/// The secret of the HS256 key in `key`, shown once with `note` (nothing for a key without a
/// secret); "I have copied it" clears `key`.
#[component]
pub fn Hs256Secret(key: RwSignal<Option<SigningKey>>, note: &'static str) -> impl IntoView {
    move || {
        key.get().and_then(|k| k.secret.map(|s| (k.kid, s))).map(|(kid, secret)| {
            view! {
                <SecretOnce
                    title=format!("HS256 key “{kid}” created")
                    secret=secret
                    note=note
                    on_done=Callback::new(move |_| key.set(None))
                />
            }
        })
    }
}

/// While `missing`, the notice that the tenant has no HS256 key to mint with, and a button that
/// adds one: the new key's secret is then shown once (with `note`), `missing` is cleared and
/// `on_created` runs (to try again what needed the key).
#[component]
pub fn NewHs256Key(
    tenant: String,
    missing: RwSignal<bool>,
    note: &'static str,
    on_created: impl Fn() + Send + Sync + 'static,
) -> impl IntoView {
    let on_created = Callback::new(move |()| on_created());
    let key = RwSignal::new(None::<SigningKey>);
    let tenant = StoredValue::new(tenant);
    view! {
        <Hs256Secret key=key note=note />
        <Show when=move || missing.get()>
            <NoSigningKey
                tenant=tenant.get_value()
                on_created=Callback::new(move |k: SigningKey| {
                    key.set(Some(k));
                    missing.set(false);
                    on_created.run(());
                })
            />
        </Show>
    }
}

/// The notice shown when the tenant has no HS256 key to mint with, with a button that adds one.
#[component]
fn NoSigningKey(tenant: String, on_created: Callback<SigningKey>) -> impl IntoView {
    let errors = RwSignal::new(None::<Problem>);
    let busy = RwSignal::new(false);
    let create = move |_| {
        let tenant = tenant.clone();
        busy.set(true);
        leptos::task::spawn_local(async move {
            let r = create_hs256(&tenant).await;
            busy.set(false);
            match r {
                Ok(k) => on_created.run(k),
                Err(p) => errors.set(Some(p)),
            }
        });
    };
    view! {
        <div class="alert alert-warn" role="alert" data-notice="no-signing-key">
            <div>
                <strong>"This tenant has no active HS256 signing key, so Herald cannot mint tokens for it."</strong>
                <p class="muted">
                    "Add one here (its secret is shown once), or on the Signing keys page."
                </p>
            </div>
            <button
                type="button"
                class="btn btn-primary"
                data-action="create-hs256"
                disabled=move || busy.get()
                on:click=create
            >
                "Create an HS256 signing key"
            </button>
            {form_error(errors, &[])}
        </div>
    }
}
