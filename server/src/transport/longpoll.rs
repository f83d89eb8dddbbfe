//! HTTP long polling at `GET /v1/poll?channels=a,b&cursor=C&timeout=S`, and the end of a
//! session at `POST /v1/poll/close`.
//!
//! A poll returns at once when messages after the cursor exist, otherwise holds until one
//! arrives or the timeout passes; the body always carries `messages` and the `cursor` to send
//! next. Between polls the client is a *session* (named inside the cursor): it stays subscribed
//! (so it counts as a connection and appears in presence) and its queue collects what arrives,
//! until it has been idle for `long_poll_session_idle_seconds`. Positions in the cursor are
//! authoritative: a retried poll (the previous answer was lost) is served again from history,
//! and a newer poll of the same session makes an older, still-waiting one return at once and
//! empty, so concurrent polls neither lose nor duplicate messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use poem::http::StatusCode;
use poem::web::{Data, Query};
use poem::{Request, Response, handler};
use rand::RngCore;
use serde::Deserialize;
use tokio::time::Instant;

use super::cursor::{Cursor, SESSION_LEN};
use super::http;
use crate::error::{ApiError, Code};
use crate::state::SharedState;
use herald_core::channel::StreamPosition;
use herald_core::outbox::Outgoing;
use herald_core::protocol::{self, ServerFrame};
use herald_core::publication::Publication;
use herald_core::{Disconnect, Session, Transport};
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;
/// Messages read from history per channel when a poll catches up; the queue itself is bounded
/// by the client queue limits.
pub const MAX_MESSAGES: usize = 1000;

type SessionId = [u8; SESSION_LEN];

#[derive(Deserialize)]
pub struct PollQuery {
    channels: Option<String>,
    cursor: Option<String>,
    /// Seconds to hold when nothing is new (default 30, at most `long_poll_max_timeout_seconds`).
    timeout: Option<u64>,
    token: Option<String>,
    tenant: Option<String>,
    /// Per channel, where a new session resumes (see [`http::since`]); a cursor wins.
    since: Option<String>,
}

struct Inner {
    session: Option<Session>,
    /// Per channel: the newest position handed out from this session's queue.
    delivered: Vec<StreamPosition>,
    /// The session's `subscribed` frames, handed out with the next answer.
    confirmations: Vec<Utf8Bytes>,
}

struct LongPollSession {
    id: SessionId,
    tenant: String,
    user: String,
    /// Opened by the tenant's connect proxy (no token): later polls are proved by the cursor,
    /// which names this session, and the refresh proxy extends it at its expiry.
    via_proxy: bool,
    channels: Vec<String>,
    inner: tokio::sync::Mutex<Inner>,
    /// Bumped by every poll; a waiting poll that sees a newer one returns at once.
    generation: AtomicU64,
    superseded: tokio::sync::Notify,
    /// Cleared when the session ends; read without waiting for a poll in progress.
    alive: std::sync::atomic::AtomicBool,
    last_active: Mutex<Instant>,
}

impl LongPollSession {
    /// Makes a poll of the session that is waiting return at once (it holds the session's
    /// lock, which a newer poll or the session's end needs); answers the new generation.
    fn supersede(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.superseded.notify_waiters();
        generation
    }
}

/// Long-poll sessions of this node.
pub struct LongPolls {
    sessions: Mutex<HashMap<SessionId, Arc<LongPollSession>>>,
    idle: Duration,
}

impl LongPolls {
    pub fn new(idle: Duration) -> LongPolls {
        LongPolls { sessions: Mutex::default(), idle }
    }

    /// Ends sessions idle for longer than the idle timeout. Called periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        self.sessions.lock().expect("long-poll lock").retain(|_, s| {
            let idle = now.duration_since(*s.last_active.lock().expect("long-poll lock")) > self.idle;
            if idle && let Ok(mut inner) = s.inner.try_lock() {
                s.alive.store(false, Ordering::SeqCst);
                expired.extend(inner.session.take());
                return false;
            }
            true
        });
        for session in expired {
            session.close();
        }
    }

    /// Ends every session (shutdown).
    pub fn close_all(&self) {
        let sessions: Vec<_> =
            self.sessions.lock().expect("long-poll lock").drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.alive.store(false, Ordering::SeqCst);
            if let Ok(mut inner) = s.inner.try_lock()
                && let Some(session) = inner.session.take()
            {
                session.close();
            }
        }
    }
}

#[handler]
pub async fn poll(req: &Request, state: Data<&SharedState>, Query(query): Query<PollQuery>) -> Response {
    let origin = http::origin(req);
    let mut origin_checked = false;
    let result = run(req, &state, query, origin.as_deref(), &mut origin_checked).await;
    respond(result, origin.as_deref(), origin_checked)
}

/// A long-poll endpoint's answer with its CORS headers. Only an origin the tenant allows is
/// ever echoed (`origin_checked`), on errors too.
fn respond(result: Result<Response, ApiError>, origin: Option<&str>, origin_checked: bool) -> Response {
    match result {
        Ok(resp) => http::allow_origin(resp, origin),
        Err(err) => http::error_response(err, origin.filter(|_| origin_checked)),
    }
}

/// `POST /v1/poll/close?channels=a,b&cursor=C[&token=JWT][&tenant=ID]`: ends the session the
/// cursor names at once (its presence entries leave, its connection is released, a poll of it
/// still waiting returns empty), instead of after `long_poll_session_idle_seconds`. Answers
/// `204` whether or not this node still had the session: ending one is idempotent. A simple
/// request (no body, no custom header), so a page can send it with `navigator.sendBeacon` or a
/// `keepalive` fetch as it goes away.
#[handler]
pub async fn close(req: &Request, state: Data<&SharedState>, Query(query): Query<PollQuery>) -> Response {
    let origin = http::origin(req);
    let mut origin_checked = false;
    let result = end_session(req, &state, query, origin.as_deref(), &mut origin_checked).await;
    respond(result, origin.as_deref(), origin_checked)
}

async fn end_session(
    req: &Request,
    state: &SharedState,
    query: PollQuery,
    origin: Option<&str>,
    origin_checked: &mut bool,
) -> Result<Response, ApiError> {
    let token = http::token(req, query.token);
    let channels = http::channels(query.channels.as_deref())?;
    let auth = authenticate(req, state, token, query.tenant.as_deref(), origin).await?;
    *origin_checked = true;
    let Some(text) = query.cursor.as_deref().filter(|c| !c.is_empty()) else {
        return Err(ApiError::new(Code::InvalidParameter, "cursor is required: it names the session to end")
            .with_field("cursor"));
    };
    let cursor =
        Cursor::decode(text, &state.cursor_key, auth.tenant(), &channels).map_err(|_| invalid_cursor())?;
    let Some(id) = cursor.session else { return Err(invalid_cursor()) };
    let found = state.long_polls.sessions.lock().expect("long-poll lock").get(&id).cloned();
    // Another user's session (a cursor that leaked) is left alone, and said nothing about.
    if let Some(lp) = found.filter(|lp| auth.owns(lp) && lp.channels == channels) {
        // Marked ended first, so a poll that takes the lock ahead of this one does not wait.
        lp.alive.store(false, Ordering::SeqCst);
        lp.supersede();
        let mut inner = lp.inner.lock().await;
        drop_session(state, &lp, &mut inner);
    }
    Ok(Response::builder().status(StatusCode::NO_CONTENT).header("cache-control", "no-store").finish())
}

fn invalid_cursor() -> ApiError {
    ApiError::new(Code::InvalidCursor, "cursor is not one this endpoint issued for these channels")
        .with_field("cursor")
}

async fn run(
    req: &Request,
    state: &SharedState,
    query: PollQuery,
    origin: Option<&str>,
    origin_checked: &mut bool,
) -> Result<Response, ApiError> {
    let token = http::token(req, query.token);
    let channels = http::channels(query.channels.as_deref())?;
    let max = state.config.long_poll_max_timeout.as_secs();
    let timeout = query.timeout.unwrap_or(DEFAULT_TIMEOUT_SECONDS.min(max));
    if timeout > max {
        return Err(ApiError::new(Code::InvalidParameter, format!("timeout must be 0..={max} seconds"))
            .with_field("timeout")
            .with_limit(max));
    }
    let auth = authenticate(req, state, token, query.tenant.as_deref(), origin).await?;
    *origin_checked = true;
    let tenant = auth.tenant().to_owned();
    let cursor = match &query.cursor {
        Some(text) if !text.is_empty() => {
            let c =
                Cursor::decode(text, &state.cursor_key, &tenant, &channels).map_err(|_| invalid_cursor())?;
            if c.session.is_none() {
                return Err(invalid_cursor());
            }
            Some(c)
        }
        _ => None,
    };

    let since = if cursor.is_some() { None } else { http::since(query.since.as_deref(), &channels)? };
    let lp = session_for(state, &auth, &channels, cursor.as_ref(), since, origin, &query.tenant).await?;
    let generation = lp.supersede();
    let mut inner = lp.inner.lock().await;
    *lp.last_active.lock().expect("long-poll lock") = Instant::now();
    // A session the connect proxy opened lives until its expiry, unless the refresh proxy
    // extends it.
    if lp.via_proxy
        && let Some(session) = inner.session.as_mut()
        && super::ws::token_expired(session.expires_at())
        && !Box::pin(session.refresh_via_proxy()).await
    {
        drop_session(state, &lp, &mut inner);
        return Err(http::refused(Disconnect::TokenExpired));
    }

    let mut unrecovered: Vec<&str> = Vec::new();
    let mut messages: Vec<Arc<Publication>> = Vec::new();
    let mut retry_after_ms = None;
    let confirmations = std::mem::take(&mut inner.confirmations);

    // A retried or concurrent poll asks from an older position than this session handed out:
    // serve that stretch from history.
    if let Some(cursor) = &cursor {
        for (i, asked) in cursor.positions.iter().enumerate() {
            let delivered = &inner.delivered[i];
            if asked.epoch == delivered.epoch && asked.position >= delivered.position {
                continue;
            }
            let Some(channel) =
                inner.session.as_ref().and_then(|s| s.subscribed_channel(&channels[i]).cloned())
            else {
                continue;
            };
            // From the channel's broker: the shared stream in cluster mode, which reaches
            // further back than this node's recent messages.
            let slice = match state.hub.history(&channel, Some(asked), MAX_MESSAGES).await {
                Ok(slice) => slice,
                Err(e) => return Err(crate::api::channel_error(e, &channels[i])),
            };
            if !slice.complete {
                unrecovered.push(&channels[i]);
                continue;
            }
            messages.extend(slice.publications.into_iter().filter(|p| p.position <= delivered.position));
        }
    }

    let deadline = Instant::now() + Duration::from_secs(timeout);
    // The idle sweep or a concurrent poll may have ended the session between the lookup and
    // the lock: the client polls again with the same cursor and gets a new one.
    let Some(outbox) = inner.session.as_ref().map(|s| s.outbox().clone()) else {
        return Err(ApiError::new(
            Code::Unavailable,
            "the long-poll session ended; poll again with the same cursor",
        ));
    };
    let mut batch = Vec::new();
    loop {
        match outbox.drain(&mut batch) {
            Ok(()) => {}
            Err(reason) => {
                // The queue overflowed while the client was away, or the session was ended.
                if let Disconnect::ShuttingDown { retry_after_ms: ms } = reason {
                    retry_after_ms = Some(ms);
                } else if matches!(reason, Disconnect::SlowConsumer) {
                    // Nothing is lost: the next poll restarts the session from the cursor.
                    drop_session(state, &lp, &mut inner);
                    break;
                } else {
                    drop_session(state, &lp, &mut inner);
                    return Err(http::refused(reason));
                }
            }
        }
        for item in batch.drain(..) {
            if let Outgoing::Publication(p) = item
                && let Some(i) = channels.iter().position(|c| **c == *p.channel)
            {
                inner.delivered[i] = StreamPosition { position: p.position, epoch: p.epoch.to_string() };
                messages.push(p);
            }
        }
        if !messages.is_empty()
            || !unrecovered.is_empty()
            || retry_after_ms.is_some()
            || Instant::now() >= deadline
        {
            break;
        }
        // Registered before the check, so a newer poll (or the session's end) that bumps the
        // generation right after it still wakes this one.
        let superseded = lp.superseded.notified();
        tokio::pin!(superseded);
        superseded.as_mut().enable();
        if lp.generation.load(Ordering::SeqCst) != generation || !lp.alive.load(Ordering::SeqCst) {
            break;
        }
        tokio::select! {
            _ = outbox.ready() => {}
            _ = superseded => break,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }

    // The cursor to send next: where this answer ends on every channel.
    let mut positions = inner.delivered.clone();
    if let Some(cursor) = &cursor {
        for (i, asked) in cursor.positions.iter().enumerate() {
            if unrecovered.contains(&channels[i].as_str()) {
                continue;
            }
            let last_here = messages.iter().filter(|p| *p.channel == *channels[i]).map(|p| p.position).max();
            positions[i] = match last_here {
                Some(position) => StreamPosition { position, epoch: inner.delivered[i].epoch.clone() },
                None if asked.epoch == inner.delivered[i].epoch
                    && asked.position < inner.delivered[i].position =>
                {
                    asked.clone()
                }
                None => inner.delivered[i].clone(),
            };
        }
    }
    let next = Cursor { session: Some(lp.id), positions }.encode(&state.cursor_key, &tenant, &channels);
    *lp.last_active.lock().expect("long-poll lock") = Instant::now();
    drop(inner);

    let mut body = BytesMut::with_capacity(64 + messages.iter().map(|p| p.frame.len() + 1).sum::<usize>());
    body.put_slice(b"{\"messages\":[");
    for (i, p) in messages.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(p.frame.as_bytes());
    }
    body.put_slice(b"],");
    if !confirmations.is_empty() {
        body.put_slice(b"\"subscribed\":[");
        for (i, f) in confirmations.iter().enumerate() {
            if i > 0 {
                body.put_u8(b',');
            }
            body.put_slice(f.as_bytes());
        }
        body.put_slice(b"],");
    }
    body.put_slice(b"\"cursor\":\"");
    body.put_slice(next.as_bytes());
    body.put_slice(b"\"");
    if !unrecovered.is_empty() {
        body.put_slice(b",\"unrecovered\":");
        body.put_slice(serde_json::to_string(&unrecovered).expect("strings serialise").as_bytes());
    }
    if let Some(ms) = retry_after_ms {
        body.put_slice(format!(",\"retry_after_ms\":{ms}").as_bytes());
    }
    body.put_u8(b'}');
    Ok(Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .header("cache-control", "no-store")
        .body(body.freeze()))
}

fn drop_session(state: &SharedState, lp: &Arc<LongPollSession>, inner: &mut Inner) {
    lp.alive.store(false, Ordering::SeqCst);
    if let Some(session) = inner.session.take() {
        session.close();
    }
    state.long_polls.sessions.lock().expect("long-poll lock").retain(|_, s| !Arc::ptr_eq(s, lp));
}

/// Who a poll, or the end of a session, is from: the token's user (verified again each time,
/// so expiry and revocation apply between polls too), or, without a token, a tenant whose
/// connect proxy lets clients in; either way from an origin the tenant allows.
async fn authenticate(
    req: &Request,
    state: &SharedState,
    token: Result<String, ApiError>,
    tenant_param: Option<&str>,
    origin: Option<&str>,
) -> Result<Auth, ApiError> {
    Ok(match token {
        // Every poll proves its token again, so expiry and revocation apply between polls too.
        Ok(token) => {
            let verified = herald_core::client_auth::verify(&state.hub.directory, &token, tenant_param)
                .await
                .map_err(|e| http::refused(e.disconnect()))?;
            if !herald_core::origin_allowed(&verified.tenant, origin) {
                return Err(http::refused(Disconnect::OriginNotAllowed));
            }
            Auth::Token { token, tenant: verified.tenant.id().to_owned(), user: verified.claims.sub }
        }
        // No token: the tenant's connect proxy may let the client in.
        Err(missing) => {
            let Some(tenant) = tenant_param else { return Err(missing) };
            let snapshot = match state.hub.directory.tenant(tenant).await {
                Ok(Some(t)) => t,
                Ok(None) => return Err(http::refused(Disconnect::AuthFailed(Code::UnknownTenant))),
                Err(_) => return Err(http::refused(Disconnect::AuthFailed(Code::AuthUnavailable))),
            };
            if !snapshot.has_connect_proxy() {
                return Err(missing);
            }
            if !herald_core::origin_allowed(&snapshot, origin) {
                return Err(http::refused(Disconnect::OriginNotAllowed));
            }
            Auth::Proxy { tenant: tenant.to_owned(), request: http::proxy_request(req, Transport::LongPoll) }
        }
    })
}

/// How a poll proved who it is.
enum Auth {
    Token {
        token: String,
        tenant: String,
        user: String,
    },
    /// No token; the tenant has a connect proxy, which gets this request when a session opens.
    Proxy {
        tenant: String,
        request: serde_json::Value,
    },
}

impl Auth {
    fn tenant(&self) -> &str {
        match self {
            Auth::Token { tenant, .. } | Auth::Proxy { tenant, .. } => tenant,
        }
    }

    /// Whether the session is this caller's. A token names its user; without one, holding the
    /// cursor of a session the connect proxy opened is the proof (it names 16 random bytes,
    /// under a MAC).
    fn owns(&self, lp: &LongPollSession) -> bool {
        match self {
            Auth::Token { tenant, user, .. } => !lp.via_proxy && lp.tenant == *tenant && lp.user == *user,
            Auth::Proxy { tenant, .. } => lp.via_proxy && lp.tenant == *tenant,
        }
    }
}

/// The session named by the cursor, or a new one subscribed from the cursor's positions.
async fn session_for(
    state: &SharedState,
    auth: &Auth,
    channels: &[String],
    cursor: Option<&Cursor>,
    since: Option<Vec<Option<StreamPosition>>>,
    origin: Option<&str>,
    tenant_param: &Option<String>,
) -> Result<Arc<LongPollSession>, ApiError> {
    // Whether the cursor's session id may be taken over: only by its own user (a session of
    // another user, or another tenant, is never replaced; this poll gets a session of its own).
    let mut reuse_id = true;
    if let Some(id) = cursor.and_then(|c| c.session) {
        let existing = state.long_polls.sessions.lock().expect("long-poll lock").get(&id).cloned();
        if let Some(lp) = existing {
            // Not `inner.lock()`: a poll in progress holds it, and this poll must get past
            // here to supersede that one.
            let alive = lp.alive.load(Ordering::SeqCst);
            let owner = auth.owns(&lp);
            if alive && owner && lp.channels == channels {
                return Ok(lp);
            }
            reuse_id = owner || !alive;
        }
    }
    let mut session = match auth {
        Auth::Token { token, .. } => {
            Session::open(state.hub.clone(), token, tenant_param.as_deref(), Transport::LongPoll, origin)
                .await
        }
        Auth::Proxy { tenant, request } => {
            Session::open_via_proxy(state.hub.clone(), tenant, Transport::LongPoll, origin, request.clone())
                .await
        }
    }
    .map_err(http::refused)?;
    let mut delivered = Vec::with_capacity(channels.len());
    let mut confirmations = Vec::with_capacity(channels.len());
    for (i, channel) in channels.iter().enumerate() {
        let since = match (cursor, &since) {
            (Some(c), _) => Some(c.positions[i].clone()),
            (None, Some(since)) => since[i].clone(),
            (None, None) => None,
        };
        match session.subscribe(None, channel, since.clone()).await {
            // Replayed messages land in the queue and advance `delivered` as they are handed out.
            Ok(outcome) => {
                confirmations.push(protocol::frame(&ServerFrame::Subscribed {
                    id: None,
                    channel,
                    epoch: &outcome.epoch,
                    position: outcome.position,
                    recovered: outcome.recovered,
                }));
                delivered.push(match (since, outcome.recovered) {
                    (Some(since), Some(true)) => since,
                    _ => StreamPosition { position: outcome.position, epoch: outcome.epoch.to_string() },
                });
            }
            Err(e) => {
                session.close();
                return Err(http::subscribe_refused(channel, e));
            }
        }
    }
    // The confirmations go out as the next answer's `subscribed` (built above), not as messages.
    let mut queued = Vec::new();
    let _ = session.outbox().drain(&mut queued);
    let replayed: Vec<Outgoing> =
        queued.into_iter().filter(|o| matches!(o, Outgoing::Publication(_))).collect();
    let _ = session.outbox().push_all(replayed);
    let mut id = [0u8; SESSION_LEN];
    match cursor.and_then(|c| c.session).filter(|_| reuse_id) {
        Some(existing) => id = existing,
        None => rand::rngs::OsRng.fill_bytes(&mut id),
    }
    let lp = Arc::new(LongPollSession {
        id,
        tenant: auth.tenant().to_owned(),
        user: session.user().to_owned(),
        via_proxy: matches!(auth, Auth::Proxy { .. }),
        channels: channels.to_vec(),
        inner: tokio::sync::Mutex::new(Inner { session: Some(session), delivered, confirmations }),
        generation: AtomicU64::new(0),
        superseded: tokio::sync::Notify::new(),
        alive: std::sync::atomic::AtomicBool::new(true),
        last_active: Mutex::new(Instant::now()),
    });
    let replaced = state.long_polls.sessions.lock().expect("long-poll lock").insert(id, lp.clone());
    if let Some(old) = &replaced {
        old.alive.store(false, Ordering::SeqCst);
    }
    if let Some(old) = replaced
        && let Ok(mut inner) = old.inner.try_lock()
        && let Some(s) = inner.session.take()
    {
        s.close();
    }
    Ok(lp)
}
