//! Who is logged in. The session lives in `sessionStorage` (gone when the tab closes) and in a
//! signal the whole app reads.
//!
//! - The admin token is exchanged for a short-lived admin session JWT (`POST /v1/auth/login`);
//!   the admin token itself is never stored.
//! - A tenant API key (`hk_…`) is used as it is and opens that tenant's pages only.

use std::cell::Cell;
use std::time::Duration;

use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{self, Caller, Problem, SessionToken};
use crate::router;

const STORAGE_KEY: &str = "herald.session";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Bearer token for every request: an admin session JWT or an API key.
    pub token: String,
    /// `admin_session` or `api_key`.
    pub kind: String,
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub scopes: Vec<String>,
    /// When an admin session ends (RFC 3339).
    pub expires_at: Option<String>,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.kind != "api_key"
    }

    /// Whether this session may do what `scope` grants (admins may do everything).
    pub fn can(&self, scope: &str) -> bool {
        self.is_admin()
            || self.scopes.iter().any(|s| s == scope)
            || (scope == "channels:read" && self.scopes.iter().any(|s| s == "channels:write"))
    }
}

thread_local! {
    static SESSION: Cell<Option<RwSignal<Option<Session>>>> = const { Cell::new(None) };
    static FLASH: Cell<Option<RwSignal<Option<String>>>> = const { Cell::new(None) };
}

fn signal() -> RwSignal<Option<Session>> {
    SESSION.with(|s| s.get()).expect("session::init ran")
}

/// A message for the login page ("your session expired").
pub fn flash() -> RwSignal<Option<String>> {
    FLASH.with(|s| s.get()).expect("session::init ran")
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok()?
}

pub fn init() {
    let stored = storage()
        .and_then(|s| s.get_item(STORAGE_KEY).ok().flatten())
        .and_then(|json| serde_json::from_str::<Session>(&json).ok())
        .filter(|s| !expired(s));
    SESSION.with(|s| s.set(Some(RwSignal::new(stored))));
    FLASH.with(|s| s.set(Some(RwSignal::new(None))));
    // Admin sessions end at `expires_at`; notice it even when the page sits idle.
    set_interval(
        move || {
            if let Some(s) = get_untracked() {
                if expired(&s) {
                    logout(Some("Your session expired. Log in again."));
                }
            }
        },
        Duration::from_secs(5),
    );
}

fn expired(s: &Session) -> bool {
    s.expires_at.as_deref().is_some_and(|at| crate::ui::millis(at) <= js_sys::Date::now())
}

/// The session, tracked.
pub fn get() -> Option<Session> {
    signal().get()
}

pub fn get_untracked() -> Option<Session> {
    signal().get_untracked()
}

pub fn token() -> Option<String> {
    get_untracked().map(|s| s.token)
}

/// The first page after login.
pub fn home() -> String {
    match get_untracked() {
        Some(s) if !s.is_admin() => match &s.tenant {
            Some(t) if !s.can("stats:read") => format!("/admin/tenants/{}", api::enc(t)),
            _ => "/admin/".into(),
        },
        _ => "/admin/".into(),
    }
}

/// Logs in with the admin token or an API key. Errors concern the `token` field.
pub async fn login(secret: &str) -> Result<(), Problem> {
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(Problem::on_field("token", "Enter the admin token or an API key."));
    }
    let on_token = |mut p: Problem| {
        if p.status == 401 || p.status == 400 {
            p.field = Some("token".into());
        }
        p
    };
    let session = if secret.starts_with("hk_") {
        let (_, who) = api::raw("GET", "/v1/auth/whoami", None, Some(secret)).await.map_err(on_token)?;
        let who: Caller =
            serde_json::from_value(who).map_err(|e| Problem::local("bad_response", e.to_string()))?;
        Session {
            token: secret.to_owned(),
            kind: who.kind,
            tenant: who.tenant,
            key_id: who.key_id,
            scopes: who.scopes,
            expires_at: None,
        }
    } else {
        let (_, s) = api::raw("POST", "/v1/auth/login", Some(&json!({ "token": secret })), None)
            .await
            .map_err(on_token)?;
        let s: SessionToken =
            serde_json::from_value(s).map_err(|e| Problem::local("bad_response", e.to_string()))?;
        Session {
            token: s.session_token,
            kind: "admin_session".into(),
            tenant: None,
            key_id: None,
            scopes: Vec::new(),
            expires_at: Some(s.expires_at),
        }
    };
    if let Some(st) = storage() {
        let _ = st.set_item(STORAGE_KEY, &serde_json::to_string(&session).unwrap_or_default());
    }
    flash().set(None);
    signal().set(Some(session));
    Ok(())
}

/// Ends the session and shows the login page, with `message` when given.
pub fn logout(message: Option<&str>) {
    if let Some(st) = storage() {
        let _ = st.remove_item(STORAGE_KEY);
    }
    flash().set(message.map(str::to_owned));
    if signal().get_untracked().is_some() {
        signal().set(None);
    }
    let path = router::path_untracked();
    if !path.starts_with("/admin/login") {
        let next =
            if path.len() > "/admin/".len() { format!("?next={}", api::enc(&path)) } else { String::new() };
        router::replace(&format!("/admin/login{next}"));
    }
}

/// The server refused the session: back to login with the reason.
pub fn expire(p: &Problem) {
    let message = match p.code.as_str() {
        "session_expired" => "Your session expired. Log in again.".to_owned(),
        "api_key_revoked" => "This API key has been revoked.".to_owned(),
        "api_key_expired" => "This API key has expired.".to_owned(),
        _ => format!("{} Log in again.", p.message()),
    };
    logout(Some(&message));
}
