use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::raw_json::RawJson;
use super::{JsonBody, Tag};
use crate::auth::{BearerAuth, tenant_not_found};
use crate::error::{ApiError, ApiResult, Code};
use crate::state::SharedState;
use herald_core::backend::NewMessage;
use herald_core::channel::{PublishOutcome, StreamPosition};
use herald_core::directory::TenantSnapshot;
use herald_core::hub::Publisher;
use herald_core::publication::Publication;
use herald_types::model::{Scope, TenantStatus};
use herald_types::names;

#[derive(Default)]
pub struct MessagesApi;

pub const MAX_BATCH: usize = 100;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct PublishRequest {
    /// Any JSON value; delivered to subscribers exactly as sent.
    data: RawJson,
    /// An event name for clients to dispatch on (at most 64 bytes).
    #[serde(default)]
    event: Option<String>,
    /// Publishing again with the same key within `idempotency_window_seconds` returns the first
    /// result and delivers nothing (at most 128 bytes).
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct Published {
    channel: String,
    /// Position in the channel's stream; strictly increasing within an epoch.
    position: u64,
    /// The stream's epoch: positions are comparable only within one epoch.
    epoch: String,
    /// Message id.
    id: String,
    /// Server time of acceptance, milliseconds since the Unix epoch.
    ts: i64,
    /// True when the idempotency key was seen before and this is the first result.
    duplicate: bool,
}

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct BatchItem {
    channel: String,
    data: RawJson,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct BatchRequest {
    /// 1-100 messages, published in order.
    messages: Vec<BatchItem>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct BatchResult {
    /// Set when this message was published.
    published: Option<Published>,
    /// Set when this message was refused; the others are unaffected.
    error: Option<crate::error::Problem>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct BatchResponse {
    /// One result per message, in request order.
    results: Vec<BatchResult>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct PublicationView {
    channel: String,
    position: u64,
    epoch: String,
    id: String,
    ts: i64,
    event: Option<String>,
    data: RawJson,
}

impl TryFrom<&Publication> for PublicationView {
    type Error = ApiError;

    /// The id, event and data are read from the frame (the only place a node keeps them).
    fn try_from(p: &Publication) -> Result<Self, ApiError> {
        let fields = p.fields().map_err(ApiError::internal)?;
        Ok(PublicationView {
            channel: p.channel.to_string(),
            position: p.position,
            epoch: p.epoch.to_string(),
            id: fields.id.into_owned(),
            ts: p.timestamp_ms,
            event: fields.event.map(|e| e.into_owned()),
            data: RawJson(fields.data.to_owned()),
        })
    }
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct HistoryPage {
    channel: String,
    /// The stream's current epoch.
    epoch: String,
    /// The newest position in the stream.
    position: u64,
    /// False when `since` is older than the history kept or from another epoch: messages
    /// are missing and the client should reload its state.
    complete: bool,
    /// Oldest first.
    publications: Vec<PublicationView>,
}

/// The tenant's cached configuration, refusing suspended tenants.
pub(crate) async fn live_tenant(state: &SharedState, tenant: &str) -> ApiResult<Arc<TenantSnapshot>> {
    let snapshot = state.hub.directory.tenant(tenant).await?.ok_or_else(|| tenant_not_found(tenant))?;
    if snapshot.tenant.status == TenantStatus::Suspended {
        return Err(ApiError::new(Code::TenantSuspended, format!("tenant `{tenant}` is suspended")));
    }
    Ok(snapshot)
}

/// A core error about one channel, naming it.
pub(crate) fn channel_error(e: herald_core::Error, channel: &str) -> ApiError {
    let mut err = ApiError::from(e);
    err.detail = format!("`{channel}`: {}", err.detail);
    err
}

fn published(channel: &str, o: PublishOutcome) -> Published {
    Published {
        channel: channel.to_owned(),
        position: o.position,
        epoch: o.epoch.to_string(),
        id: o.id,
        ts: o.timestamp_ms,
        duplicate: o.duplicate,
    }
}

#[OpenApi(tag = "Tag::Messages")]
impl MessagesApi {
    /// Publish a message
    ///
    /// Scope `publish`. Delivers `data` to every subscriber of the channel, on every transport,
    /// and keeps it in the channel's history. Answers with the assigned position.
    #[oai(path = "/v1/tenants/:tenant/channels/:channel/messages", method = "post", operation_id = "publish")]
    async fn publish(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        channel: Path<String>,
        body: JsonBody<PublishRequest>,
    ) -> ApiResult<Json<Published>> {
        auth.0.require(&tenant, Some(Scope::Publish))?;
        let snapshot = live_tenant(&state, &tenant).await?;
        names::channel(&channel).map_err(|e| ApiError::invalid("channel", e.0))?;
        let req = body.value;
        let message = NewMessage { data: req.data.0, event: req.event, idempotency_key: req.idempotency_key };
        let outcome = state
            .hub
            .publish(&snapshot, &channel, message, Publisher::Api)
            .await
            .map_err(|e| channel_error(e, &channel))?;
        Ok(Json(published(&channel, outcome)))
    }

    /// Publish a batch
    ///
    /// Scope `publish`. Up to 100 messages to any channels of the tenant, published in order.
    /// Each message succeeds or fails on its own; see `results`.
    #[oai(path = "/v1/tenants/:tenant/messages", method = "post", operation_id = "publishBatch")]
    async fn publish_batch(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<BatchRequest>,
    ) -> ApiResult<Json<BatchResponse>> {
        auth.0.require(&tenant, Some(Scope::Publish))?;
        let snapshot = live_tenant(&state, &tenant).await?;
        let messages = body.value.messages;
        if messages.is_empty() || messages.len() > MAX_BATCH {
            return Err(ApiError::invalid("messages", format!("send 1-{MAX_BATCH} messages"))
                .with_limit(MAX_BATCH as u64));
        }
        let mut results = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let prefix = format!("messages[{i}].");
            let outcome = async {
                names::channel(&m.channel).map_err(|e| ApiError::invalid(format!("{prefix}channel"), e.0))?;
                let message =
                    NewMessage { data: m.data.0, event: m.event, idempotency_key: m.idempotency_key };
                state.hub.publish(&snapshot, &m.channel, message, Publisher::Api).await.map_err(|e| {
                    let mut err = channel_error(e, &m.channel);
                    err.field = err.field.map(|f| format!("{prefix}{f}"));
                    err
                })
            }
            .await;
            results.push(match outcome {
                Ok(o) => BatchResult { published: Some(published(&m.channel, o)), error: None },
                Err(e) => BatchResult { published: None, error: Some(e.problem()) },
            });
        }
        Ok(Json(BatchResponse { results }))
    }

    /// Read channel history
    ///
    /// Scope `history:read`. Messages after `since` (with its `epoch`), or the newest ones,
    /// oldest first.
    #[oai(path = "/v1/tenants/:tenant/channels/:channel/messages", method = "get", operation_id = "history")]
    async fn history(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        channel: Path<String>,
        /// Return messages after this position (requires `epoch`).
        since: Query<Option<u64>>,
        /// The epoch `since` belongs to.
        epoch: Query<Option<String>>,
        /// At most this many messages, 1-1000 (default 100).
        limit: Query<Option<u32>>,
    ) -> ApiResult<Json<HistoryPage>> {
        auth.0.require(&tenant, Some(Scope::HistoryRead))?;
        let snapshot = live_tenant(&state, &tenant).await?;
        names::channel(&channel).map_err(|e| ApiError::invalid("channel", e.0))?;
        let limit = limit.0.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::new(Code::InvalidParameter, "limit must be 1..=1000").with_field("limit"));
        }
        let since = match (since.0, epoch.0) {
            (Some(position), Some(epoch)) => Some(StreamPosition { position, epoch }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(
                    ApiError::new(Code::InvalidParameter, "`since` needs `epoch`").with_field("epoch")
                );
            }
            (None, Some(_)) => {
                return Err(
                    ApiError::new(Code::InvalidParameter, "`epoch` needs `since`").with_field("since")
                );
            }
        };
        let ch = state.hub.channel(&snapshot, &channel).await.map_err(|e| channel_error(e, &channel))?;
        let slice = state
            .hub
            .history(&ch, since.as_ref(), limit as usize)
            .await
            .map_err(|e| channel_error(e, &channel))?;
        Ok(Json(HistoryPage {
            channel: channel.0,
            epoch: slice.epoch.to_string(),
            position: slice.position,
            complete: slice.complete,
            publications: slice
                .publications
                .iter()
                .map(|p| PublicationView::try_from(&**p))
                .collect::<Result<_, _>>()?,
        }))
    }
}
