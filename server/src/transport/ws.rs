//! WebSocket at `/v1/ws`. The upgrade is done here rather than through poem's extractor so that
//! frames go out as shared `Utf8Bytes` (one serialisation per publication per node) and so the
//! socket buffers can be sized for many idle connections.
//!
//! One task per connection drives everything: reading commands, writing batches from the
//! outbox (many queued frames, one flush), server pings, and token expiry, with a single timer.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use poem::http::{HeaderValue, StatusCode, header};
use poem::web::{Data, Query};
use poem::{IntoResponse, Request, Response, handler};
use serde::Deserialize;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::error::{ApiError, Code};
use crate::state::SharedState;
use herald_core::outbox::{Outbox, Outgoing};
use herald_core::protocol::{self, Command, ServerFrame};
use herald_core::{CommandOutcome, Disconnect, Hub, Session, Transport};

#[derive(Deserialize)]
pub struct WsQuery {
    /// Client JWT. Without it, the first frame must be `{"type": "connect", "token": …}`.
    token: Option<String>,
    /// When given, the token must be for this tenant.
    tenant: Option<String>,
}

fn socket_config(hub: &Hub) -> WebSocketConfig {
    // Small read buffer: most connections are idle, client frames are small commands, and a
    // large default buffer per socket dominates memory at scale (tungstenite grows it for a
    // larger frame). Writes are batched per wake-up and flushed once.
    WebSocketConfig::default()
        .read_buffer_size(512)
        // Frames fed in one batch are gathered up to 8 KiB before a write, so a burst leaves in
        // few `send` calls instead of one per frame; the explicit flush ends every batch.
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(hub.settings.outbox.max_bytes.saturating_mul(2).max(1 << 20))
        .max_message_size(Some(hub.settings.max_inbound_frame_bytes))
        .max_frame_size(Some(hub.settings.max_inbound_frame_bytes))
}

#[handler]
pub async fn websocket(req: &Request, state: Data<&SharedState>, Query(query): Query<WsQuery>) -> Response {
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let (true, Some(key), true) = (is_upgrade, key, version_ok) else {
        return ApiError::new(
            Code::WebsocketUpgradeRequired,
            "this endpoint speaks WebSocket (version 13) only",
        )
        .into_response();
    };
    let on_upgrade = match req.take_upgrade() {
        Ok(u) => u,
        Err(_) => {
            return ApiError::new(Code::WebsocketUpgradeRequired, "connection cannot be upgraded")
                .into_response();
        }
    };
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned);
    // A client without a token may be authenticated by the tenant's connect proxy.
    let forwarded = (query.token.is_none() && query.tenant.is_some())
        .then(|| super::http::proxy_request(req, Transport::WebSocket));
    let hub = state.hub.clone();
    // The socket outlives the HTTP connection's task from here on: it keeps the connection's
    // place in its client address's count (`max_connections_per_ip`) itself.
    let hold = req.extensions().get::<crate::listener::AddressHold>().cloned();
    // What only authentication needs travels boxed, so the task every open connection keeps
    // holds one pointer for it (see `connection`).
    let handshake = Box::new(Handshake { on_upgrade, query, origin, forwarded });
    // On the socket runtime: a fan-out's writers never stand between this node's HTTP
    // requests and the threads that serve them.
    state.sockets.spawn(connection(hub, handshake, hold));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header"),
        )
        .finish()
}

type Socket = WebSocketStream<poem::Upgraded>;

async fn close(ws: &mut Socket, reason: &Disconnect) {
    let frame = CloseFrame { code: CloseCode::from(reason.code()), reason: Utf8Bytes::from(reason.reason()) };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.send(Message::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
}

/// Waits for the `connect` frame of a connection that did not pass its token in the URL.
async fn await_connect(
    ws: &mut Socket,
    hub: &Hub,
) -> Result<(String, Option<Box<serde_json::value::RawValue>>), Disconnect> {
    let deadline = Instant::now() + hub.settings.auth_timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.map_err(|_| Disconnect::AuthTimeout)?;
        match msg {
            Some(Ok(Message::Text(text))) => {
                return match protocol::parse(text.as_str()) {
                    Ok(protocol::Request { id, command: Command::Connect { token } }) => Ok((token, id)),
                    _ => Err(Disconnect::BadRequest),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(WsError::Capacity(_))) => return Err(Disconnect::MessageTooBig),
            _ => return Err(Disconnect::BadRequest),
        }
    }
}

/// The inputs of a connection's authentication, taken from the upgrade request.
struct Handshake {
    on_upgrade: poem::OnUpgrade,
    query: WsQuery,
    origin: Option<String>,
    forwarded: Option<serde_json::Value>,
}

/// One WebSocket connection, from the upgrade to the close. Every idle connection keeps this
/// future alive, so it is kept to the event loop's state: the upgrade and authentication run
/// in a boxed future that is gone once the session is open, and the command and timer paths
/// inside [`drive`] are boxed too (`tests`: `the_connection_task_stays_small`).
async fn connection(hub: Arc<Hub>, handshake: Box<Handshake>, hold: Option<crate::listener::AddressHold>) {
    let _hold = hold;
    let Some((mut ws, session, connect_id)) = Box::pin(open(hub.clone(), handshake)).await else {
        return;
    };
    let _ = session.outbox().push(session.connected_frame(connect_id.as_deref()));
    drop(connect_id);
    let span = tracing::debug_span!(
        "connection",
        tenant = %session.tenant_id(),
        conn = %hub.client_id(session.conn.id),
        node = %hub.settings.node_id,
        transport = "websocket",
    );
    let reason = tracing::Instrument::instrument(drive(&mut ws, &hub, session), span).await;
    if let Some(reason) = reason {
        Box::pin(close(&mut ws, &reason)).await;
    }
}

type Opened = (Socket, Session, Option<Box<serde_json::value::RawValue>>);

/// Completes the upgrade and authenticates: by the token in the URL, the `connect` frame, or
/// the tenant's connect proxy. `None` once the connection has been closed instead.
async fn open(hub: Arc<Hub>, handshake: Box<Handshake>) -> Option<Opened> {
    let Handshake { on_upgrade, query, origin, forwarded } = *handshake;
    let upgraded = on_upgrade.await.ok()?;
    let config = socket_config(&hub);
    let mut ws = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(config)).await;
    if let (Some(request), Some(tenant)) = (forwarded, query.tenant.as_deref()) {
        let opened = Box::pin(Session::open_via_proxy(
            hub.clone(),
            tenant,
            Transport::WebSocket,
            origin.as_deref(),
            request,
        ))
        .await;
        match opened {
            Ok(session) => return Some((ws, session, None)),
            // No connect proxy: the client authenticates with a `connect` frame as usual.
            Err(Disconnect::AuthFailed(Code::MissingCredentials)) => {}
            Err(reason) => {
                close(&mut ws, &reason).await;
                return None;
            }
        }
    }
    let (token, connect_id) = match query.token {
        Some(token) => (token, None),
        None => match await_connect(&mut ws, &hub).await {
            Ok(pair) => pair,
            Err(reason) => {
                close(&mut ws, &reason).await;
                return None;
            }
        },
    };
    match Session::open(hub.clone(), &token, query.tenant.as_deref(), Transport::WebSocket, origin.as_deref())
        .await
    {
        Ok(session) => Some((ws, session, connect_id)),
        Err(reason) => {
            // Counted like the same refusal over HTTP (`herald_limit_refusals_total`).
            herald_core::metrics::metrics().refused(super::http::refused(reason.clone()).code);
            close(&mut ws, &reason).await;
            None
        }
    }
}

/// Writes what the outbox holds, within the write bound. `Err` ends the connection with the
/// close to send, if one can still be sent.
async fn write_queued(
    ws: &mut Socket,
    outbox: &Outbox,
    batch: &mut Vec<Outgoing>,
    write_timeout: Duration,
) -> Result<(), Option<Disconnect>> {
    outbox.drain(batch).map_err(Some)?;
    let written = tokio::time::timeout(write_timeout, write_batch(ws, batch)).await;
    // The buffer came from the outbox (`Outbox::drain`); an idle connection keeps none.
    *batch = Vec::new();
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(Disconnect::SlowConsumer)),
    }
}

/// Runs `work` to its end while the outbox keeps being written (no new command is read
/// meanwhile).
async fn write_while<T>(
    ws: &mut Socket,
    outbox: &Outbox,
    batch: &mut Vec<Outgoing>,
    write_timeout: Duration,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Option<Disconnect>> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            done = &mut work => return Ok(done),
            _ = outbox.ready() => write_queued(ws, outbox, batch, write_timeout).await?,
        }
    }
}

/// Runs the connection until it ends; returns the close to send, if one can still be sent.
async fn drive(ws: &mut Socket, hub: &Hub, mut session: Session) -> Option<Disconnect> {
    let ping_interval = hub.settings.ping_interval;
    // How long a write may block on a peer that does not read before it counts as gone.
    let write_timeout = hub.settings.write_timeout;
    let pong_timeout = hub.settings.pong_timeout;
    let outbox = session.outbox().clone();
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut last_heard = Instant::now();
    let mut next_ping = Instant::now() + ping_interval;
    // One timer per connection, moved only when the next ping or the token expiry changes.
    let mut token_exp = session.expires_at();
    let mut expires = expiry_instant(token_exp);
    let timer = tokio::time::sleep_until(next_ping.min(expires));
    tokio::pin!(timer);
    let reason = loop {
        if session.expires_at() != token_exp {
            token_exp = session.expires_at();
            expires = expiry_instant(token_exp);
        }
        let wake = next_ping.min(expires);
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            biased;
            _ = outbox.ready() => {
                if let Err(reason) = write_queued(ws, &outbox, &mut batch, write_timeout).await {
                    break reason;
                }
            }
            msg = ws.next() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        let handled =
                            Box::pin(command(ws, &outbox, &mut batch, write_timeout, &mut session, text)).await;
                        if let Err(reason) = handled {
                            break reason;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let frame = protocol::frame(&ServerFrame::error(
                            None,
                            None,
                            Code::BadRequest.as_str(),
                            "binary frames are not supported; send JSON text frames",
                        ));
                        let _ = outbox.push(Outgoing::Frame(frame));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        // tungstenite queues the pong; make sure it goes out, within the write
                        // bound: a peer that pings but never reads must not stall the loop.
                        match tokio::time::timeout(write_timeout, ws.flush()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => break None,
                            Err(_) => break Some(Disconnect::SlowConsumer),
                        }
                    }
                    Some(Ok(Message::Close(_))) => break Some(Disconnect::Normal),
                    Some(Err(WsError::Capacity(_))) => break Some(Disconnect::MessageTooBig),
                    Some(Err(_)) | None => break None,
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                if token_expired(session.expires_at()) {
                    let refreshing = session.refresh_via_proxy();
                    match Box::pin(write_while(ws, &outbox, &mut batch, write_timeout, refreshing)).await {
                        Ok(true) => {}
                        Ok(false) => break Some(Disconnect::TokenExpired),
                        Err(reason) => break reason,
                    }
                }
                // Never leave an elapsed deadline in place (it would fire again at once).
                expires = expiry_instant(token_exp).max(now + Duration::from_millis(100));
                if now >= next_ping {
                    if now.duration_since(last_heard) > ping_interval + pong_timeout {
                        break Some(Disconnect::PingTimeout);
                    }
                    let ping = tokio::time::timeout(write_timeout, ws.send(Message::Ping(Default::default()))).await;
                    if !matches!(ping, Ok(Ok(()))) {
                        break None;
                    }
                    next_ping = now + ping_interval;
                }
            }
        }
    };
    session.close();
    reason
}

/// Handles one text frame from the client. A command may wait (a tenant's proxy, up to its
/// timeout): the queue keeps going out meanwhile, so live messages neither stall nor overflow
/// it. `Err` ends the connection, as [`write_queued`].
async fn command(
    ws: &mut Socket,
    outbox: &Outbox,
    batch: &mut Vec<Outgoing>,
    write_timeout: Duration,
    session: &mut Session,
    text: Utf8Bytes,
) -> Result<(), Option<Disconnect>> {
    match protocol::parse(text.as_str()) {
        Ok(request) => match write_while(ws, outbox, batch, write_timeout, session.handle(request)).await? {
            CommandOutcome::Close(reason) => Err(Some(reason)),
            _ => Ok(()),
        },
        Err(bad) => {
            let frame = protocol::frame(&ServerFrame::error(
                bad.id.as_deref(),
                None,
                Code::BadRequest.as_str(),
                &bad.message,
            ));
            let _ = outbox.push(Outgoing::Frame(frame));
            Ok(())
        }
    }
}

/// Writes every queued frame, then flushes once.
async fn write_batch(ws: &mut Socket, batch: &mut Vec<Outgoing>) -> Result<(), WsError> {
    for item in batch.drain(..) {
        let text = match item {
            Outgoing::Publication(p) => p.frame.clone(),
            Outgoing::Frame(f) => f,
        };
        ws.feed(Message::Text(text)).await?;
    }
    ws.flush().await
}

pub(crate) fn token_expired(exp: i64) -> bool {
    chrono::Utc::now().timestamp() >= exp.saturating_add(herald_core::client_auth::LEEWAY_SECONDS as i64)
}

/// The monotonic instant at which a Unix expiry time is reached (plus the verification leeway).
pub(crate) fn expiry_instant(exp: i64) -> Instant {
    let now_unix = chrono::Utc::now().timestamp();
    let remaining =
        exp.saturating_add(herald_core::client_auth::LEEWAY_SECONDS as i64).saturating_sub(now_unix).max(0)
            as u64;
    Instant::now() + Duration::from_secs(remaining.min(365 * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns.
    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection keeps its task's future: authentication, commands and token
    /// refreshes must stay boxed out of it. (1,712 bytes, of which the socket is 328; it was 3,736
    /// with authentication inline.)
    #[test]
    fn the_connection_task_stays_small() {
        let task = future_size(connection);
        let event_loop = future_size::<&'static mut Socket, &'static Hub, Session, _>(drive);
        assert!(task <= 2048, "the connection future is {task} bytes (event loop {event_loop})");
    }
}
