//! Herald's admin dashboard: a client-side Leptos app compiled to WebAssembly and served by the
//! server at `/admin`. It talks only to the public REST API (`/v1/...`), watches
//! `/v1/stats/stream` over Server-Sent Events for the live charts, and tails channels through
//! the client SSE endpoint with a token it mints for itself.
//!
//! Layout: `api` (fetch, problems, types), `session` (login state in sessionStorage), `router`
//! (paths under `/admin/`), `stats` (the live stats stream and its history), `chart` (inline
//! SVG), `ui` (shared widgets), `pages/` (one module per page).

mod api;
mod chart;
mod pages;
mod router;
mod session;
mod stats;
mod ui;

use leptos::prelude::*;
use wasm_bindgen::prelude::*;

use crate::router::Route;

/// Entry point, called by the generated JS glue once the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    // The page shows a plain "loading" text until the app replaces it.
    if let Some(el) = document().get_element_by_id("boot") {
        el.remove();
    }
    mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    router::init();
    session::init();
    stats::init();

    let logged_in = Memo::new(move |_| session::get().is_some());
    // Start or stop the live stats stream with the session.
    Effect::new(move |_| {
        if logged_in.get() {
            stats::start();
        } else {
            stats::stop();
        }
    });

    move || {
        if !logged_in.get() {
            return view! { <pages::login::Login /> }.into_any();
        }
        if router::route_untracked() == Route::Login {
            router::replace(&session::home());
        }
        view! { <pages::shell::Shell /> }.into_any()
    }
}
