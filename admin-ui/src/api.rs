//! The REST API: a small fetch wrapper that sends the session's bearer token, turns every error
//! into a [`Problem`], and sends the user back to the login page when the server says the
//! session is over.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Headers, Request, RequestInit, Response};

use crate::session;

/// An RFC 9457 problem document as Herald sends it (`code` and `field` are what the UI uses).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub limit: Option<i64>,
}

impl Problem {
    pub fn local(code: &str, detail: impl Into<String>) -> Problem {
        Problem { status: 0, code: code.into(), detail: detail.into(), field: None, limit: None }
    }

    pub fn on_field(field: &str, detail: impl Into<String>) -> Problem {
        Problem { field: Some(field.into()), ..Problem::local("invalid_value", detail) }
    }

    /// Whether this problem concerns the form field `key` (`limits` matches `limits.x` and
    /// `scopes` matches `scopes[2]`).
    pub fn is_about(&self, key: &str) -> bool {
        match &self.field {
            Some(f) => {
                f == key || (f.starts_with(key) && matches!(f.as_bytes().get(key.len()), Some(b'.' | b'[')))
            }
            None => false,
        }
    }

    /// The message shown to people: the detail, plus the limit when there is one.
    pub fn message(&self) -> String {
        let mut m = if self.detail.is_empty() { self.code.replace('_', " ") } else { self.detail.clone() };
        if let Some(limit) = self.limit {
            if !m.contains(&limit.to_string()) {
                m.push_str(&format!(" (limit {limit})"));
            }
        }
        if let Some(c) = m.get(..1) {
            m = c.to_uppercase() + &m[1..];
        }
        m
    }
}

/// Loading state of something fetched.
#[derive(Clone, Debug, PartialEq)]
pub enum Load<T> {
    Loading,
    Ready(T),
    Failed(Problem),
}

fn js_err(e: JsValue) -> Problem {
    let text = e.as_string().or_else(|| js_sys::JSON::stringify(&e).ok().and_then(|s| s.as_string()));
    Problem::local("network", format!("The server could not be reached ({}).", text.unwrap_or_default()))
}

/// Sends one request. `auth` adds the session's token; a 401 then ends the session.
pub async fn raw(
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<(u16, Value), Problem> {
    let init = RequestInit::new();
    init.set_method(method);
    let headers = Headers::new().map_err(js_err)?;
    headers.set("Accept", "application/json").map_err(js_err)?;
    if let Some(body) = body {
        headers.set("Content-Type", "application/json").map_err(js_err)?;
        init.set_body(&JsValue::from_str(&body.to_string()));
    }
    if let Some(token) = token {
        headers.set("Authorization", &format!("Bearer {token}")).map_err(js_err)?;
    }
    init.set_headers(&headers);
    let request = Request::new_with_str_and_init(path, &init).map_err(js_err)?;
    let window = web_sys::window().expect("a window");
    let response: Response =
        JsFuture::from(window.fetch_with_request(&request)).await.map_err(js_err)?.unchecked_into();
    let status = response.status();
    let text = JsFuture::from(response.text().map_err(js_err)?)
        .await
        .map_err(js_err)?
        .as_string()
        .unwrap_or_default();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if (200..300).contains(&status) {
        return Ok((status, value));
    }
    let mut problem: Problem = serde_json::from_value(value.clone()).unwrap_or_default();
    problem.status = status;
    if problem.code.is_empty() {
        problem.code = format!("http_{status}");
        problem.detail = format!("The server answered {status}.");
    }
    Err(problem)
}

/// Codes after which the stored credential is useless.
pub fn ends_session(p: &Problem) -> bool {
    p.status == 401
        && matches!(
            p.code.as_str(),
            "session_expired"
                | "invalid_credentials"
                | "api_key_revoked"
                | "api_key_expired"
                | "missing_credentials"
        )
}

/// A request with the session's token; a 401 that ends the session goes back to login.
pub async fn call(method: &str, path: &str, body: Option<&Value>) -> Result<Value, Problem> {
    let token = session::token();
    match raw(method, path, body, token.as_deref()).await {
        Ok((_, v)) => Ok(v),
        Err(p) => {
            if token.is_some() && ends_session(&p) {
                session::expire(&p);
            }
            Err(p)
        }
    }
}

fn decode<T: DeserializeOwned>(v: Value) -> Result<T, Problem> {
    serde_json::from_value(v).map_err(|e| Problem::local("bad_response", format!("Unexpected response: {e}")))
}

pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, Problem> {
    decode(call("GET", path, None).await?)
}

pub async fn post<T: DeserializeOwned>(path: &str, body: &Value) -> Result<T, Problem> {
    decode(call("POST", path, Some(body)).await?)
}

/// A POST without a body (actions such as "send a test event").
pub async fn post_empty<T: DeserializeOwned>(path: &str) -> Result<T, Problem> {
    decode(call("POST", path, None).await?)
}

pub async fn patch<T: DeserializeOwned>(path: &str, body: &Value) -> Result<T, Problem> {
    decode(call("PATCH", path, Some(body)).await?)
}

pub async fn put<T: DeserializeOwned>(path: &str, body: &Value) -> Result<T, Problem> {
    decode(call("PUT", path, Some(body)).await?)
}

pub async fn delete(path: &str) -> Result<(), Problem> {
    call("DELETE", path, None).await.map(|_| ())
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    String::from(js_sys::encode_uri_component(s))
}

// ---- types ------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Caller {
    pub kind: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SessionToken {
    pub session_token: String,
    pub expires_at: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_connections: Option<i64>,
    pub max_publishes_per_second: Option<i64>,
    pub max_message_bytes: Option<i64>,
    pub max_channels: Option<i64>,
    pub max_subscriptions_per_connection: Option<i64>,
    pub max_history_bytes: Option<i64>,
}

pub const LIMITS: [(&str, &str, &str); 6] = [
    ("max_connections", "Connections", "Real-time connections per node"),
    ("max_publishes_per_second", "Publishes / s", "REST and client publishes per node"),
    ("max_message_bytes", "Message bytes", "At most 1048576"),
    ("max_channels", "Channels", "Explicitly created channels"),
    ("max_subscriptions_per_connection", "Subscriptions / connection", "Replaces the server default"),
    ("max_history_bytes", "History bytes", "History kept per node; replaces the server default"),
];

impl Limits {
    pub fn get(&self, key: &str) -> Option<i64> {
        match key {
            "max_connections" => self.max_connections,
            "max_publishes_per_second" => self.max_publishes_per_second,
            "max_message_bytes" => self.max_message_bytes,
            "max_channels" => self.max_channels,
            "max_subscriptions_per_connection" => self.max_subscriptions_per_connection,
            "max_history_bytes" => self.max_history_bytes,
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    pub created_at: String,
    pub updated_at: String,
}

/// Channel options as set at one level (`None` = not set here) or resolved (`effective`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelOptions {
    pub history_size: Option<i64>,
    pub history_ttl_seconds: Option<i64>,
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub client_publish: Option<bool>,
    pub private: Option<bool>,
    pub max_subscribers: Option<i64>,
    pub max_message_bytes: Option<i64>,
    pub allow_implicit: Option<bool>,
}

/// A namespace or a channel: both have a name, options and effective options.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ChannelLike {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub options: ChannelOptions,
    #[serde(default)]
    pub effective: ChannelOptions,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub last_used_at: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub secret: Option<String>,
}

pub const SCOPES: [(&str, &str); 9] = [
    ("publish", "Publish messages"),
    ("channels:read", "List namespaces and channels"),
    ("channels:write", "Manage namespaces and channels"),
    ("keys:write", "Manage API and signing keys, revocations, audit log"),
    ("tokens:issue", "Mint client tokens"),
    ("history:read", "Read channel history"),
    ("presence:read", "Read presence"),
    ("stats:read", "Watch live statistics"),
    ("webhooks:write", "Manage webhooks and their deliveries"),
];

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    pub algorithm: String,
    pub status: String,
    #[serde(default)]
    pub public_key_pem: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub retired_at: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct MintedToken {
    pub token: String,
    pub expires_at: String,
    pub kid: String,
    pub jti: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Revocation {
    #[serde(default)]
    pub jti: Option<String>,
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub issued_before: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    #[serde(default)]
    pub tenant: Option<String>,
    pub target: String,
    #[serde(default)]
    pub details: Value,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Published {
    pub channel: String,
    pub position: i64,
    pub epoch: String,
    pub id: String,
    pub ts: i64,
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct History {
    pub channel: String,
    pub epoch: String,
    pub position: i64,
    pub complete: bool,
    pub publications: Vec<Value>,
}

/// Capabilities of a token to mint: pattern → actions.
pub type Capabilities = BTreeMap<String, Vec<String>>;

/// The event types a webhook can subscribe to (`webhook.test` is sent only when asked for).
pub const WEBHOOK_EVENTS: [(&str, &str); 8] = [
    ("channel.occupied", "A channel got its first subscriber"),
    ("channel.vacated", "A channel's last subscriber left"),
    ("presence.join", "A user joined a presence channel"),
    ("presence.leave", "A user left a presence channel"),
    ("connection.open", "A client connection was authenticated"),
    ("connection.close", "A client connection ended"),
    ("message.published", "A client published to a channel"),
    ("user.offline_message", "A user-targeted message found the user offline"),
];

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub batch_max_events: u32,
    #[serde(default)]
    pub batch_max_ms: u32,
    #[serde(default)]
    pub description: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub include_api_publishes: bool,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    #[serde(default)]
    pub previous_secret_valid_until: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Only in the answer to the creation.
    #[serde(default)]
    pub secret: Option<String>,
}

/// A tenant's proxy endpoints (`/v1/tenants/{t}/proxy`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ProxyConfig {
    #[serde(default)]
    pub connect_url: Option<String>,
    #[serde(default)]
    pub subscribe_url: Option<String>,
    #[serde(default)]
    pub publish_url: Option<String>,
    #[serde(default)]
    pub refresh_url: Option<String>,
    pub timeout_ms: u32,
    pub on_failure: String,
    pub updated_at: String,
    /// Only in the answer that created or rotated it.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The proxy kinds with what each decides.
pub const PROXY_KINDS: [(&str, &str, &str); 4] = [
    (
        "connect_url",
        "Connect",
        "Authenticates clients that connect without a token (from their cookie, say).",
    ),
    ("subscribe_url", "Subscribe", "Allows or denies each subscription; may set its presence info."),
    ("publish_url", "Publish", "Allows or denies each client publish; may replace its data."),
    ("refresh_url", "Refresh", "Extends connections the connect proxy let in, at their expiry."),
];

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RotatedSecret {
    pub secret: String,
    #[serde(default)]
    pub previous_secret_valid_until: Option<String>,
}

/// One event on its way to a webhook, with the outcome of its latest attempt.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `sending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub created_at: String,
    #[serde(default)]
    pub last_attempt_at: Option<String>,
    #[serde(default)]
    pub next_attempt_at: Option<String>,
    pub give_up_at: String,
    #[serde(default)]
    pub response_status: Option<u16>,
    #[serde(default)]
    pub latency_ms: Option<u32>,
    #[serde(default)]
    pub response_excerpt: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub body: String,
}

impl Delivery {
    /// Whether it is done (succeeded or given up), so that it may be replayed.
    pub fn finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed")
    }
}
