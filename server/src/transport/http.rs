//! What the HTTP transports (SSE, long polling) share: reading the token, the channel list and
//! the origin from a request, CORS, and turning refusals into problem responses.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Request, Response};

use crate::error::{ApiError, Code};
use herald_core::Disconnect;
use herald_core::channel::StreamPosition;

/// Channels one SSE stream or poll may name at most (the connection's subscription limit
/// applies too).
pub const MAX_CHANNELS: usize = 64;

/// The client token from `?token=` or `Authorization: Bearer`.
pub fn token(req: &Request, query_token: Option<String>) -> Result<String, ApiError> {
    if let Some(t) = query_token.filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                Code::MissingCredentials,
                "pass the client token as `token` or `Authorization: Bearer`",
            )
            .with_field("token")
        })
}

/// Headers a connect proxy receives from the client's request (to find a session cookie or
/// the client's own credential), each at most 8 KiB.
const FORWARDED_HEADERS: [&str; 5] = ["cookie", "authorization", "origin", "user-agent", "x-forwarded-for"];

/// What a connect proxy is told about a client without a token.
pub fn proxy_request(req: &Request, transport: herald_core::Transport) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for name in FORWARDED_HEADERS {
        if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()).filter(|v| v.len() <= 8192) {
            headers.insert(name.to_owned(), v.into());
        }
    }
    let remote = req.remote_addr().as_socket_addr().map(|a| a.ip().to_string());
    serde_json::json!({"transport": transport.as_str(), "headers": headers, "remote_addr": remote})
}

/// `a,b,c` → the channel names, validated, without duplicates.
pub fn channels(raw: Option<&str>) -> Result<Vec<String>, ApiError> {
    let raw = raw.unwrap_or_default();
    let names: Vec<String> =
        raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if names.is_empty() {
        return Err(ApiError::new(Code::InvalidParameter, "name at least one channel: channels=a,b")
            .with_field("channels"));
    }
    if names.len() > MAX_CHANNELS {
        return Err(ApiError::new(Code::InvalidParameter, format!("at most {MAX_CHANNELS} channels"))
            .with_field("channels")
            .with_limit(MAX_CHANNELS as u64));
    }
    for (i, name) in names.iter().enumerate() {
        herald_types::names::channel(name).map_err(|e| {
            ApiError::invalid("channels", format!("`{name}`: {}", e.0)).with_channel(name.as_str())
        })?;
        if names[..i].contains(name) {
            return Err(ApiError::invalid("channels", format!("`{name}` is named twice")));
        }
    }
    Ok(names)
}

pub fn origin(req: &Request) -> Option<String> {
    req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned)
}

/// A refused connection as an HTTP problem.
pub fn refused(reason: Disconnect) -> ApiError {
    match reason {
        Disconnect::AuthFailed(code) => ApiError::new(
            code,
            match code {
                Code::ProxyUnavailable => "the tenant's connect proxy failed or did not answer in time",
                Code::ProxyDenied => "the tenant's connect proxy refused the connection",
                _ => "the client token was refused",
            },
        ),
        Disconnect::TokenExpired => ApiError::new(Code::TokenExpired, "the client token has expired"),
        Disconnect::TokenRevoked => ApiError::new(Code::TokenRevoked, "the client token has been revoked"),
        Disconnect::TenantSuspended => ApiError::new(Code::TenantSuspended, "the tenant is suspended"),
        Disconnect::OriginNotAllowed => {
            ApiError::new(Code::OriginNotAllowed, "this origin is not in the tenant's allowed origins")
                .with_field("Origin")
        }
        Disconnect::ConnectionLimit => {
            ApiError::new(Code::ConnectionLimit, "the tenant has reached its connection limit")
        }
        Disconnect::Kicked => ApiError::new(Code::Disconnected, "the user was disconnected through the API"),
        _ => ApiError::new(Code::Unavailable, "try again shortly"),
    }
}

/// A refused subscription as an HTTP problem: the core error's own code and status, naming
/// the channel.
pub fn subscribe_refused(channel: &str, e: herald_core::Error) -> ApiError {
    crate::api::channel_error(e, channel).with_field("channels").with_channel(channel)
}

/// The `since` parameter of SSE and long polling: per channel of `channels`, in the same order
/// and comma-separated, `<position>:<epoch>` to resume after, or nothing to start now
/// (`since=41:I1qUkL0H,,7:wKQEuiOR`). Clients that know their positions (after a change of
/// transport, or of the channel list) resume with it; a cursor, when also given, wins.
pub fn since(
    text: Option<&str>,
    channels: &[String],
) -> Result<Option<Vec<Option<StreamPosition>>>, ApiError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(None) };
    let bad = |why: &str| ApiError::new(Code::InvalidParameter, format!("since: {why}")).with_field("since");
    let parts: Vec<&str> = text.split(',').collect();
    if parts.len() != channels.len() {
        return Err(bad("needs one entry per channel, in the order of `channels`"));
    }
    parts
        .into_iter()
        .map(|part| {
            if part.is_empty() {
                return Ok(None);
            }
            let (position, epoch) =
                part.split_once(':').ok_or_else(|| bad("an entry is `<position>:<epoch>`"))?;
            let position: u64 = position.parse().map_err(|_| bad("a position is a non-negative integer"))?;
            if epoch.len() > 64 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(bad("an epoch is at most 64 letters, digits, `_` or `-`"));
            }
            Ok(Some(StreamPosition { position, epoch: epoch.to_owned() }))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Adds CORS headers for a browser request from `origin` (already checked against the tenant).
pub fn allow_origin(mut resp: Response, origin: Option<&str>) -> Response {
    if let Some(origin) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        let headers = resp.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// Errors of these endpoints carry CORS headers for an origin the tenant allows, so browser
/// code can read them; `origin` must be `None` unless it was checked.
pub fn error_response(err: ApiError, origin: Option<&str>) -> Response {
    allow_origin(err.into_response(), origin)
}

/// Answers a CORS preflight. The tenant is not known before the real request (which carries
/// the token), so the preflight allows any origin; the real request is checked.
#[poem::handler]
pub fn preflight(req: &Request) -> Response {
    preflight_for(req, "GET, OPTIONS")
}

/// [`preflight`] for an endpoint that takes `POST` (the end of a long-poll session).
#[poem::handler]
pub fn preflight_post(req: &Request) -> Response {
    preflight_for(req, "POST, OPTIONS")
}

fn preflight_for(req: &Request, methods: &'static str) -> Response {
    let mut resp = Response::builder().status(StatusCode::NO_CONTENT).finish();
    if let Some(origin) = origin(req).and_then(|o| HeaderValue::from_str(&o).ok()) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Last-Event-ID"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}
