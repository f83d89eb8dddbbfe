//! Wires the HTTP surface together and runs it on a bound listener until shutdown.

use std::time::Duration;

use poem::endpoint::make_sync;
use poem::listener::TcpAcceptor;
use poem::middleware::{AddData, Tracing};
use poem::web::Json;
use poem::{Endpoint, EndpointExt, IntoResponse, Route, get, handler};

use crate::error::{ApiError, any_error_to_problem};
use crate::state::SharedState;

/// `/healthz`: the process is up and serving.
#[handler]
fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `/readyz`: the node can serve traffic (its database answers).
#[handler]
async fn readyz(state: poem::web::Data<&SharedState>) -> poem::Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Json(serde_json::json!({"status": "ready", "database": state.store.backend_name()}))
            .into_response(),
        Ok(Err(e)) => not_ready(format!("database unreachable: {e}")),
        Err(_) => not_ready("database did not answer within 2s".into()),
    }
}

fn not_ready(why: String) -> poem::Response {
    tracing::warn!(reason = %why, "not ready");
    ApiError::new(poem::http::StatusCode::SERVICE_UNAVAILABLE, "not_ready", why).into_response()
}

/// The complete application: REST API, its spec and docs, health endpoints.
pub fn app(state: SharedState) -> impl Endpoint {
    let api = crate::api::service();
    let spec = api.spec();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at(
            "/v1/openapi.json",
            make_sync(move |_| poem::Response::builder().content_type("application/json").body(spec.clone())),
        )
        .nest("/docs", docs)
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .with(AddData::new(state))
        .with(Tracing)
        .catch_all_error(any_error_to_problem)
}

/// Serves `state` on `listener` until `shutdown` resolves, then drains in-flight requests for
/// up to `drain`.
pub async fn run(
    state: SharedState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
    drain: Duration,
) -> std::io::Result<()> {
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(state), shutdown, Some(drain))
        .await
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
