//! Client-side routes under `/admin/`, kept in the browser's history (the server answers every
//! `/admin/*` path that is not a file with `index.html`).

use std::cell::Cell;

use leptos::prelude::*;
use wasm_bindgen::JsValue;

/// The pages of one tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Settings,
    Channels,
    Namespaces,
    ApiKeys,
    SigningKeys,
    Tokens,
    Live,
    Presence,
    Webhooks,
    Audit,
}

impl Tab {
    pub const ALL: [Tab; 10] = [
        Tab::Settings,
        Tab::Channels,
        Tab::Namespaces,
        Tab::ApiKeys,
        Tab::SigningKeys,
        Tab::Tokens,
        Tab::Live,
        Tab::Presence,
        Tab::Webhooks,
        Tab::Audit,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            Tab::Settings => "",
            Tab::Channels => "channels",
            Tab::Namespaces => "namespaces",
            Tab::ApiKeys => "api-keys",
            Tab::SigningKeys => "signing-keys",
            Tab::Tokens => "tokens",
            Tab::Live => "live",
            Tab::Presence => "presence",
            Tab::Webhooks => "webhooks",
            Tab::Audit => "audit",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Tab::Settings => "Settings",
            Tab::Channels => "Channels",
            Tab::Namespaces => "Namespaces",
            Tab::ApiKeys => "API keys",
            Tab::SigningKeys => "Signing keys",
            Tab::Tokens => "Tokens",
            Tab::Live => "Live tail",
            Tab::Presence => "Presence",
            Tab::Webhooks => "Webhooks",
            Tab::Audit => "Audit log",
        }
    }

    /// The scope an API key needs for this page.
    pub fn scope(self) -> Option<&'static str> {
        match self {
            Tab::Settings => None,
            Tab::Channels | Tab::Namespaces => Some("channels:read"),
            Tab::ApiKeys | Tab::SigningKeys | Tab::Audit => Some("keys:write"),
            Tab::Tokens | Tab::Live => Some("tokens:issue"),
            Tab::Presence => Some("presence:read"),
            Tab::Webhooks => Some("webhooks:write"),
        }
    }

    fn from_slug(s: &str) -> Option<Tab> {
        Tab::ALL.into_iter().find(|t| t.slug() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Login,
    Overview,
    Tenants,
    Audit,
    Tenant(String, Tab),
    NotFound,
}

pub fn tenant_path(tenant: &str, tab: Tab) -> String {
    let base = format!("/admin/tenants/{}", crate::api::enc(tenant));
    if tab.slug().is_empty() { base } else { format!("{base}/{}", tab.slug()) }
}

fn parse(path: &str) -> Route {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let rest = path.strip_prefix("/admin").unwrap_or(path).trim_matches('/');
    let parts: Vec<String> = rest
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| js_sys::decode_uri_component(p).map(String::from).unwrap_or_else(|_| p.to_owned()))
        .collect();
    match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => Route::Overview,
        ["login"] => Route::Login,
        ["tenants"] => Route::Tenants,
        ["audit"] => Route::Audit,
        ["tenants", t] => Route::Tenant((*t).to_owned(), Tab::Settings),
        ["tenants", t, tab] => match Tab::from_slug(tab) {
            Some(tab) => Route::Tenant((*t).to_owned(), tab),
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

thread_local! {
    static PATH: Cell<Option<RwSignal<String>>> = const { Cell::new(None) };
    static ROUTE: Cell<Option<Memo<Route>>> = const { Cell::new(None) };
}

fn current_location() -> String {
    let loc = window().location();
    format!("{}{}", loc.pathname().unwrap_or_default(), loc.search().unwrap_or_default())
}

fn path_signal() -> RwSignal<String> {
    PATH.with(|p| p.get()).expect("router::init ran")
}

pub fn init() {
    let path = RwSignal::new(current_location());
    PATH.with(|p| p.set(Some(path)));
    ROUTE.with(|r| r.set(Some(Memo::new(move |_| parse(&path.get())))));
    let handle = window_event_listener(leptos::ev::popstate, move |_| path.set(current_location()));
    // The listener lives as long as the page.
    std::mem::forget(handle);
}

/// The current route, tracked.
pub fn route() -> Route {
    ROUTE.with(|r| r.get()).expect("router::init ran").get()
}

pub fn route_untracked() -> Route {
    ROUTE.with(|r| r.get()).expect("router::init ran").get_untracked()
}

pub fn path_untracked() -> String {
    path_signal().get_untracked()
}

/// A query parameter of the current URL.
pub fn query(name: &str) -> Option<String> {
    let path = path_signal().get_untracked();
    let (_, q) = path.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| {
            js_sys::decode_uri_component(&v.replace('+', " "))
                .map(String::from)
                .unwrap_or_else(|_| v.to_owned())
        })
    })
}

/// Goes to `path` (a new history entry).
pub fn navigate(path: &str) {
    if path_signal().get_untracked() == path {
        return;
    }
    let _ = window().history().and_then(|h| h.push_state_with_url(&JsValue::NULL, "", Some(path)));
    path_signal().set(path.to_owned());
    window().scroll_to_with_x_and_y(0.0, 0.0);
}

/// Replaces the current history entry with `path`.
pub fn replace(path: &str) {
    let _ = window().history().and_then(|h| h.replace_state_with_url(&JsValue::NULL, "", Some(path)));
    path_signal().set(path.to_owned());
}
