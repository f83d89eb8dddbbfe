//! Server-Sent Events at `GET /v1/sse?channels=a,b`. Every publication event carries an `id:`
//! that is a cursor over all of the stream's channels, so a browser's own EventSource resumes
//! every channel at once through `Last-Event-ID` after any drop. The body is produced lazily:
//! an idle stream is one small state machine, with no task of its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use poem::http::{StatusCode, header};
use poem::web::{Data, Query};
use poem::{Body, Request, Response, handler};
use serde::Deserialize;
use tokio::time::Instant;

use super::cursor::Cursor;
use super::http;
use crate::error::{ApiError, Code};
use crate::state::SharedState;
use herald_core::channel::StreamPosition;
use herald_core::outbox::{Outbox, Outgoing};
use herald_core::{Disconnect, Session, Transport};

#[derive(Deserialize)]
pub struct SseQuery {
    channels: Option<String>,
    token: Option<String>,
    tenant: Option<String>,
    /// For clients that cannot send the `Last-Event-ID` header.
    last_event_id: Option<String>,
    /// Per channel, where to resume (see [`http::since`]); `Last-Event-ID` wins.
    since: Option<String>,
}

/// Closes the session when the response body is dropped (client gone or stream ended).
struct SessionGuard(Option<Session>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.close();
        }
    }
}

struct Stream {
    guard: SessionGuard,
    outbox: Arc<Outbox>,
    tenant: String,
    channels: Vec<String>,
    positions: Vec<StreamPosition>,
    cursor_key: [u8; 32],
    heartbeat: Duration,
    next_heartbeat: Instant,
    expires_at: i64,
    batch: Vec<Outgoing>,
    prelude: Option<Bytes>,
    done: bool,
}

impl Stream {
    fn cursor(&self) -> String {
        Cursor { session: None, positions: self.positions.clone() }.encode(
            &self.cursor_key,
            &self.tenant,
            &self.channels,
        )
    }

    fn format(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        for item in std::mem::take(&mut self.batch) {
            match item {
                Outgoing::Publication(p) => {
                    if let Some(i) = self.channels.iter().position(|c| **c == *p.channel) {
                        self.positions[i] =
                            StreamPosition { position: p.position, epoch: p.epoch.to_string() };
                    }
                    out.put_slice(b"id: ");
                    out.put_slice(self.cursor().as_bytes());
                    out.put_slice(b"\ndata: ");
                    out.put_slice(p.frame.as_bytes());
                    out.put_slice(b"\n\n");
                }
                Outgoing::Frame(f) => {
                    out.put_slice(b"data: ");
                    out.put_slice(f.as_bytes());
                    out.put_slice(b"\n\n");
                }
            }
        }
        out.freeze()
    }

    fn farewell(&mut self, reason: &Disconnect) -> Bytes {
        self.done = true;
        let mut out = String::new();
        if let Disconnect::ShuttingDown { retry_after_ms } = reason {
            // EventSource waits this long before reconnecting, spreading the reconnects.
            out.push_str(&format!("retry: {retry_after_ms}\n"));
        }
        out.push_str(&format!(
            "data: {{\"type\":\"disconnect\",\"code\":{},\"reason\":\"{}\"}}\n\n",
            reason.code(),
            reason.reason()
        ));
        Bytes::from(out)
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(prelude) = self.prelude.take() {
            return Some(prelude);
        }
        if self.done {
            return None;
        }
        loop {
            let expiry = super::ws::expiry_instant(self.expires_at);
            tokio::select! {
                biased;
                _ = self.outbox.ready() => match self.outbox.drain(&mut self.batch) {
                    Ok(()) => {
                        let chunk = self.format();
                        if !chunk.is_empty() {
                            self.next_heartbeat = Instant::now() + self.heartbeat;
                            return Some(chunk);
                        }
                    }
                    Err(reason) => return Some(self.farewell(&reason)),
                },
                _ = tokio::time::sleep_until(self.next_heartbeat.min(expiry)) => {
                    if super::ws::token_expired(self.expires_at) {
                        // A client the connect proxy let in may be extended by the refresh
                        // proxy (the `refreshed` event follows); otherwise the stream ends.
                        let refreshed = match self.guard.0.as_mut() {
                            Some(s) => Box::pin(s.refresh_via_proxy()).await.then(|| s.expires_at()),
                            None => None,
                        };
                        match refreshed {
                            Some(exp) => {
                                self.expires_at = exp;
                                continue;
                            }
                            None => return Some(self.farewell(&Disconnect::TokenExpired)),
                        }
                    }
                    self.next_heartbeat = Instant::now() + self.heartbeat;
                    return Some(Bytes::from_static(b": heartbeat\n\n"));
                }
            }
        }
    }
}

#[handler]
pub async fn sse(req: &Request, state: Data<&SharedState>, Query(query): Query<SseQuery>) -> Response {
    let origin = http::origin(req);
    let mut origin_checked = false;
    match open(req, &state, query, origin.as_deref(), &mut origin_checked).await {
        Ok(resp) => http::allow_origin(resp, origin.as_deref()),
        // Only an origin the tenant allows is ever echoed, on errors too.
        Err(err) => http::error_response(err, origin.as_deref().filter(|_| origin_checked)),
    }
}

async fn open(
    req: &Request,
    state: &SharedState,
    query: SseQuery,
    origin: Option<&str>,
    origin_checked: &mut bool,
) -> Result<Response, ApiError> {
    let token = http::token(req, query.token);
    let channels = http::channels(query.channels.as_deref())?;
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id)
        .filter(|s| !s.is_empty());
    let mut session = match (token, query.tenant.as_deref()) {
        (Ok(token), tenant) => Session::open(state.hub.clone(), &token, tenant, Transport::Sse, origin)
            .await
            .map_err(http::refused)?,
        // No token: the tenant's connect proxy may authenticate the client.
        (Err(missing), Some(tenant)) => {
            let request = http::proxy_request(req, Transport::Sse);
            match Session::open_via_proxy(state.hub.clone(), tenant, Transport::Sse, origin, request).await {
                Ok(s) => s,
                Err(Disconnect::AuthFailed(Code::MissingCredentials)) => return Err(missing),
                Err(reason) => return Err(http::refused(reason)),
            }
        }
        (Err(missing), None) => return Err(missing),
    };
    *origin_checked = true; // Session::open checked it against the tenant's allowed origins.
    let tenant = session.tenant_id().to_owned();
    let resume = match last_event_id {
        Some(id) => match Cursor::decode(&id, &state.cursor_key, &tenant, &channels) {
            Ok(c) => Some(c),
            Err(_) => {
                session.close();
                return Err(ApiError::new(
                    Code::InvalidCursor,
                    "Last-Event-ID is not a cursor of this stream",
                )
                .with_field("Last-Event-ID"));
            }
        },
        None => None,
    };
    let since = match http::since(query.since.as_deref(), &channels) {
        Ok(since) => since,
        Err(e) => {
            session.close();
            return Err(e);
        }
    };
    let starts: Vec<Option<StreamPosition>> = match (&resume, since) {
        (Some(cursor), _) => cursor.positions.iter().cloned().map(Some).collect(),
        (None, Some(since)) => since,
        (None, None) => vec![None; channels.len()],
    };
    let mut positions = Vec::with_capacity(channels.len());
    for (channel, since) in channels.iter().zip(starts) {
        match session.subscribe(None, channel, since.clone()).await {
            Ok(outcome) => positions.push(match (since, outcome.recovered) {
                // Replayed messages follow and advance the cursor from where the client was.
                (Some(since), Some(true)) => since,
                _ => StreamPosition { position: outcome.position, epoch: outcome.epoch.to_string() },
            }),
            Err(e) => {
                session.close();
                return Err(http::subscribe_refused(channel, e));
            }
        }
    }
    let outbox = session.outbox().clone();
    let expires_at = session.expires_at();
    let mut stream = Stream {
        guard: SessionGuard(None),
        outbox,
        tenant,
        channels,
        positions,
        cursor_key: state.cursor_key,
        heartbeat: state.config.sse_heartbeat,
        next_heartbeat: Instant::now() + state.config.sse_heartbeat,
        expires_at,
        batch: Vec::new(),
        prelude: None,
        done: false,
    };
    // The first event carries a cursor at once, so even a stream that drops before any
    // message resumes from here.
    let hello = format!(
        "retry: {}\nid: {}\ndata: {{\"type\":\"connected\",\"client\":\"{}\",\"user\":{},\"node\":\"{}\"}}\n\n",
        state.config.sse_retry_ms,
        stream.cursor(),
        session.conn.id,
        serde_json::to_string(session.user()).expect("strings serialise"),
        state.hub.settings.node_id,
    );
    stream.prelude = Some(Bytes::from(hello));
    stream.guard = SessionGuard(Some(session));
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(chunk), s))
    })
    .boxed();
    let resp = Response::builder()
        .status(StatusCode::OK)
        .content_type("text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_bytes_stream(body));
    Ok(resp)
}
