//! Wires the HTTP surface together and runs it on a bound listener until shutdown.

use std::sync::Arc;
use std::time::Duration;

use poem::endpoint::make_sync;
use poem::middleware::AddData;
use poem::web::Json;
use poem::{Endpoint, EndpointExt, IntoResponse, Route, get, handler, post};

use crate::error::{ApiError, Code, any_error_to_problem};
use crate::state::SharedState;

/// `/healthz`: the process is up and serving.
#[handler]
fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `/readyz`: the node can serve traffic (its database answers).
#[handler]
async fn readyz(state: poem::web::Data<&SharedState>) -> poem::Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return not_ready("shutting down".into());
    }
    if let Err(why) = state.hub.health() {
        return not_ready(format!("cluster backend unavailable: {why}"));
    }
    let cluster = match state.hub.backend().kind {
        "memory" => "none",
        kind => kind,
    };
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Json(serde_json::json!({
            "status": "ready",
            "database": state.store.backend_name(),
            "cluster": cluster,
            "node": state.hub.settings.node_id,
        }))
        .into_response(),
        Ok(Err(e)) => not_ready(format!("database unreachable: {e}")),
        Err(_) => not_ready("database did not answer within 2s".into()),
    }
}

/// `/metrics`: Prometheus text format, or OpenMetrics when the scraper asks for it.
#[handler]
async fn metrics(state: poem::web::Data<&SharedState>, req: &poem::Request) -> poem::Response {
    let openmetrics = req
        .headers()
        .get(poem::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = crate::metrics::render(&state, openmetrics).await;
    poem::Response::builder().content_type(content_type).body(body)
}

fn not_ready(why: String) -> poem::Response {
    tracing::warn!(reason = %why, "not ready");
    ApiError::new(Code::NotReady, why).into_response()
}

/// The complete application: REST API, its spec and docs, health endpoints.
pub fn app(state: SharedState) -> impl Endpoint {
    let api = crate::api::service();
    let spec = api.spec();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api.around(crate::compress::compress).around(crate::metrics::track_request))
        .at(
            "/v1/openapi.json",
            make_sync(move |_| poem::Response::builder().content_type("application/json").body(spec.clone())),
        )
        .nest("/docs", docs)
        .at("/v1/ws", get(crate::transport::ws::websocket))
        .at("/v1/sse", get(crate::transport::sse::sse).options(crate::transport::http::preflight))
        .at("/v1/poll", get(crate::transport::longpoll::poll).options(crate::transport::http::preflight))
        .at(
            "/v1/poll/close",
            post(crate::transport::longpoll::close).options(crate::transport::http::preflight_post),
        )
        .at("/admin", get(crate::dashboard::admin))
        .at("/admin/*path", get(crate::dashboard::admin))
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .with(AddData::new(state))
        .catch_all_error(any_error_to_problem)
        .around(log_request)
}

/// Logs each request without its query string, which may hold a client token.
async fn log_request<E: Endpoint>(next: Arc<E>, req: poem::Request) -> poem::Result<poem::Response> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let resp = next.get_response(req).await;
    let status = resp.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(%method, %path, status, elapsed_ms, "request failed");
    } else {
        tracing::debug!(%method, %path, status, elapsed_ms, "request");
    }
    Ok(resp)
}

/// Serves `state` on `listener` until `shutdown` resolves. Then the node reports not ready,
/// stops accepting, tells every realtime client to reconnect elsewhere (each after its own
/// delay, see `reconnect_spread_ms`), and waits up to `shutdown_grace_seconds` for requests
/// and connections to finish.
pub async fn serve(
    state: SharedState,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.config.shutdown_grace;
    let ready_delay = state.config.shutdown_ready_delay.min(grace);
    let (signalled_tx, mut signalled_rx) = tokio::sync::watch::channel(false);
    let signalled_at = Arc::new(std::sync::Mutex::new(None));
    let mark = signalled_at.clone();
    // At the signal the node drains (not ready, real-time clients told to go); it still accepts
    // connections for `shutdown_ready_delay`, so health checks see it draining, then stops.
    let signal = async move {
        shutdown.await;
        *mark.lock().expect("shutdown lock") = Some(tokio::time::Instant::now());
        let _ = signalled_tx.send(true);
        tokio::time::sleep(ready_delay).await;
    };
    let sweeper = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        loop {
            tick.tick().await;
            let Some(state) = sweeper.upgrade() else { return };
            state.long_polls.sweep();
            ticks += 1;
            if ticks % 60 == 0 {
                state.login_limiter.retain_recent();
            }
            // Revocations of tokens that have expired anyway are dropped once a minute.
            if ticks % 60 == 0
                && let Err(e) = state.store.prune_revoked_tokens(herald_store::now()).await
            {
                tracing::warn!(error = %e, "could not prune expired token revocations");
            }
        }
    });
    let hub_state = state.clone();
    tokio::spawn(async move {
        if signalled_rx.changed().await.is_ok() {
            hub_state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
            hub_state.hub.shutdown();
        }
    });
    let hub = state.hub.clone();
    // Kept until the wait below: the state owns the runtime the WebSocket connections run on,
    // and dropping it would cut them off before they have closed.
    let connections = state.clone();
    let limits = crate::listener::ConnectionLimits {
        header_read_timeout: state.config.http_header_read_timeout,
        write_timeout: state.config.http_write_timeout,
        max_connections_per_ip: state.config.max_connections_per_ip,
        trusted_proxies: state.config.trusted_proxies.clone(),
        tls,
    };
    crate::listener::serve(listener, app(state), limits, signal, grace).await?;
    // No more polls can come: the long-poll sessions end here (their clients resume from
    // their cursors on another node), and only real-time connections are waited for.
    connections.long_polls.close_all();
    // One grace period in all, counted from the signal.
    let started = signalled_at.lock().expect("shutdown lock").unwrap_or_else(tokio::time::Instant::now);
    let deadline = started + grace;
    while hub.live_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(connections);
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
