//! Webhooks of a tenant: endpoints, their signing secrets, and their delivery log.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::tenants::{Created, Deleted};
use super::{JsonBody, PageParams, Tag, audit, load_tenant};
use crate::auth::BearerAuth;
use crate::error::{ApiError, ApiResult, Code};
use crate::state::SharedState;
use herald_types::model::{Delivery, DeliveryStatus, Scope, Webhook, WebhookEvent};

#[derive(Default)]
pub struct WebhooksApi;

/// Longest description accepted.
const MAX_DESCRIPTION_BYTES: usize = 512;
/// How long the previous secret keeps signing after a rotation, unless the request says.
const DEFAULT_ROTATION_SECONDS: u64 = 86_400;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct CreateWebhook {
    /// Where Herald POSTs events: `https://` (or `http://`); private addresses only if the
    /// operator allows them (`outbound_allowed_networks`).
    url: String,
    /// The event types to send (`webhook.test` is always sent when asked for).
    events: Vec<WebhookEvent>,
    #[serde(default)]
    description: Option<String>,
    /// Default true.
    #[serde(default)]
    enabled: Option<bool>,
    /// Also send `message.published` for the tenant's own REST publishes (default false:
    /// only clients' publishes).
    #[serde(default)]
    include_api_publishes: Option<bool>,
    /// Events per request, 1-100 (default 1: one event per request). Above 1 every request
    /// is a batch: `{"events": [...]}`.
    #[serde(default)]
    batch_max_events: Option<u32>,
    /// How long an event waits for others to share its request, 0-60000 ms (default 0).
    #[serde(default)]
    batch_max_ms: Option<u32>,
}

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct UpdateWebhook {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    events: Option<Vec<WebhookEvent>>,
    #[serde(default)]
    description: Option<String>,
    /// Enabling again clears `disabled_reason`.
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    include_api_publishes: Option<bool>,
    #[serde(default)]
    batch_max_events: Option<u32>,
    #[serde(default)]
    batch_max_ms: Option<u32>,
}

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct RotateSecret {
    /// How long the previous secret keeps signing too (0-604800 s, default 86400), so
    /// receivers can switch without refusing requests.
    #[serde(default)]
    previous_valid_seconds: Option<u64>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct WebhookView {
    id: String,
    url: String,
    description: String,
    events: Vec<WebhookEvent>,
    enabled: bool,
    include_api_publishes: bool,
    batch_max_events: u32,
    batch_max_ms: u32,
    /// Why Herald disabled it (e.g. 410 Gone); cleared by enabling it again.
    disabled_reason: Option<String>,
    /// While a rotation is in progress: until when the previous secret signs too.
    previous_secret_valid_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        let rotating = w.previous_until.filter(|u| *u > Utc::now());
        WebhookView {
            id: w.id,
            url: w.url,
            description: w.description,
            events: w.events,
            enabled: w.enabled,
            include_api_publishes: w.include_api_publishes,
            batch_max_events: w.batch_max_events,
            batch_max_ms: w.batch_max_ms,
            disabled_reason: w.disabled_reason,
            previous_secret_valid_until: rotating,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct CreatedWebhook {
    #[oai(flatten)]
    webhook: WebhookView,
    /// The signing secret (`whsec_…`). Shown only in this response; Herald stores it sealed.
    secret: String,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct RotatedSecret {
    /// The new signing secret, shown only here.
    secret: String,
    /// Until when the previous secret still signs as well.
    previous_secret_valid_until: Option<DateTime<Utc>>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct WebhookPage {
    items: Vec<WebhookView>,
    next_cursor: Option<String>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct DeliveryView {
    id: String,
    /// The event's id: the `webhook-id` header, the same on every attempt and replay.
    event_id: String,
    event_type: WebhookEvent,
    status: DeliveryStatus,
    attempts: u32,
    created_at: DateTime<Utc>,
    last_attempt_at: Option<DateTime<Utc>>,
    /// When the next attempt is due (pending deliveries).
    next_attempt_at: Option<DateTime<Utc>>,
    /// When retrying stops.
    give_up_at: DateTime<Utc>,
    /// The HTTP status of the latest answer.
    response_status: Option<u16>,
    latency_ms: Option<u32>,
    /// The first KiB of the latest answer.
    response_excerpt: Option<String>,
    /// Why the latest attempt failed (or why the delivery waits).
    error: Option<String>,
    /// The request body as sent.
    body: String,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            created_at: d.created_at,
            last_attempt_at: d.last_attempt_at,
            next_attempt_at: d.next_attempt_at,
            give_up_at: d.give_up_at,
            response_status: d.response_status,
            latency_ms: d.latency_ms,
            response_excerpt: d.response_excerpt,
            error: d.error,
            body: d.body,
        }
    }
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct DeliveryPage {
    items: Vec<DeliveryView>,
    next_cursor: Option<String>,
}

#[derive(ApiResponse)]
enum Accepted {
    /// Queued for delivery.
    #[oai(status = 202)]
    Accepted(Json<DeliveryView>),
}

fn webhook_not_found(id: &str) -> ApiError {
    ApiError::new(Code::WebhookNotFound, format!("webhook `{id}` does not exist"))
}

fn check_url(state: &SharedState, url: &str) -> ApiResult<String> {
    super::outbound_url(state.hooks.outbound(), "url", url)
}

fn check_batch(events: Option<u32>, ms: Option<u32>) -> ApiResult<()> {
    if events.is_some_and(|n| !(1..=100).contains(&n)) {
        return Err(ApiError::invalid("batch_max_events", "must be 1-100"));
    }
    if ms.is_some_and(|n| n > 60_000) {
        return Err(ApiError::invalid("batch_max_ms", "must be 0-60000"));
    }
    Ok(())
}

fn check_events(events: &[WebhookEvent]) -> ApiResult<Vec<WebhookEvent>> {
    if events.is_empty() {
        return Err(ApiError::invalid("events", "give at least one event type"));
    }
    let mut events = events.to_vec();
    events.sort();
    events.dedup();
    Ok(events)
}

fn check_description(text: Option<String>) -> ApiResult<Option<String>> {
    match text {
        Some(t) if t.len() > MAX_DESCRIPTION_BYTES || t.chars().any(char::is_control) => {
            Err(ApiError::invalid(
                "description",
                format!("at most {MAX_DESCRIPTION_BYTES} bytes without control characters"),
            ))
        }
        other => Ok(other),
    }
}

async fn load_webhook(state: &SharedState, tenant: &str, id: &str) -> ApiResult<Webhook> {
    state.store.webhook(tenant, id).await?.ok_or_else(|| webhook_not_found(id))
}

/// A webhook changed: every node forgets its cached list.
async fn changed(state: &SharedState, tenant: &str) {
    state.hub.tenant_changed(tenant).await;
}

#[OpenApi(tag = "Tag::Webhooks")]
impl WebhooksApi {
    /// Create a webhook
    ///
    /// Scope `webhooks:write`. The signing secret is in the response and never again; requests
    /// are signed with it as Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), see docs/hooks.md.
    #[oai(path = "/v1/tenants/:tenant/webhooks", method = "post", operation_id = "createWebhook")]
    async fn create(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<CreateWebhook>,
    ) -> ApiResult<Created<CreatedWebhook>> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        let req = body.value;
        let url = check_url(&state, &req.url)?;
        let events = check_events(&req.events)?;
        let description = check_description(req.description)?.unwrap_or_default();
        check_batch(req.batch_max_events, req.batch_max_ms)?;
        let max = state.hooks.settings.max_per_tenant;
        if state.store.count_webhooks(&tenant).await? >= max {
            return Err(ApiError::new(Code::QuotaExceeded, format!("a tenant may have {max} webhooks"))
                .with_limit(max));
        }
        let secret = herald_webhooks::Secret::generate();
        let at = herald_store::now();
        let webhook = Webhook {
            id: format!("wh_{}", uuid::Uuid::now_v7().simple()),
            tenant_id: tenant.0.clone(),
            url,
            description,
            events,
            enabled: req.enabled.unwrap_or(true),
            include_api_publishes: req.include_api_publishes.unwrap_or(false),
            batch_max_events: req.batch_max_events.unwrap_or(1),
            batch_max_ms: req.batch_max_ms.unwrap_or(0),
            disabled_reason: None,
            secret_sealed: crate::hooks::seal_secret(&state.master, &secret),
            previous_secret_sealed: None,
            previous_until: None,
            created_at: at,
            updated_at: at,
        };
        state.store.create_webhook(&webhook).await?;
        changed(&state, &tenant).await;
        audit(
            &state,
            &auth.0,
            "webhook.create",
            Some(&tenant),
            &webhook.id,
            serde_json::json!({"url": herald_core::crypto::redact_url(&webhook.url), "events": webhook.events}),
        )
        .await;
        Ok(Created::Created(Json(CreatedWebhook { webhook: webhook.into(), secret: secret.to_string() })))
    }

    /// List webhooks
    ///
    /// Scope `webhooks:write`. Ordered by creation; secrets are never returned.
    #[oai(path = "/v1/tenants/:tenant/webhooks", method = "get", operation_id = "listWebhooks")]
    async fn list(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<WebhookPage>> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        let page = PageParams::new(limit.0, cursor.0)?;
        let mut items = state.store.list_webhooks(&tenant, page.after.as_deref(), page.fetch()).await?;
        let next_cursor = page.finish(&mut items, |w| w.id.clone());
        Ok(Json(WebhookPage { items: items.into_iter().map(Into::into).collect(), next_cursor }))
    }

    /// Get a webhook
    ///
    /// Scope `webhooks:write`.
    #[oai(path = "/v1/tenants/:tenant/webhooks/:id", method = "get", operation_id = "getWebhook")]
    async fn get(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
    ) -> ApiResult<Json<WebhookView>> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        Ok(Json(load_webhook(&state, &tenant, &id).await?.into()))
    }

    /// Change a webhook
    ///
    /// Scope `webhooks:write`. Fields left out stay as they are.
    #[oai(path = "/v1/tenants/:tenant/webhooks/:id", method = "patch", operation_id = "updateWebhook")]
    async fn update(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
        body: JsonBody<UpdateWebhook>,
    ) -> ApiResult<Json<WebhookView>> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        let mut w = load_webhook(&state, &tenant, &id).await?;
        let req = body.value;
        if let Some(url) = req.url {
            w.url = check_url(&state, &url)?;
        }
        if let Some(events) = req.events {
            w.events = check_events(&events)?;
        }
        if let Some(d) = check_description(req.description)? {
            w.description = d;
        }
        if let Some(enabled) = req.enabled {
            w.enabled = enabled;
            if enabled {
                w.disabled_reason = None;
            }
        }
        if let Some(api) = req.include_api_publishes {
            w.include_api_publishes = api;
        }
        check_batch(req.batch_max_events, req.batch_max_ms)?;
        if let Some(n) = req.batch_max_events {
            w.batch_max_events = n;
        }
        if let Some(ms) = req.batch_max_ms {
            w.batch_max_ms = ms;
        }
        w.updated_at = herald_store::now();
        state.store.update_webhook(&w).await?;
        changed(&state, &tenant).await;
        audit(&state, &auth.0, "webhook.update", Some(&tenant), &w.id, serde_json::json!({})).await;
        Ok(Json(w.into()))
    }

    /// Delete a webhook
    ///
    /// Scope `webhooks:write`. Its queued deliveries are dropped with it.
    #[oai(path = "/v1/tenants/:tenant/webhooks/:id", method = "delete", operation_id = "deleteWebhook")]
    async fn delete(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
    ) -> ApiResult<Deleted> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        if !state.store.delete_webhook(&tenant, &id).await? {
            return Err(webhook_not_found(&id));
        }
        changed(&state, &tenant).await;
        audit(&state, &auth.0, "webhook.delete", Some(&tenant), &id, serde_json::json!({})).await;
        Ok(Deleted::Deleted)
    }

    /// Rotate a webhook's secret
    ///
    /// Scope `webhooks:write`. Answers the new secret (once). Until `previous_secret_valid_until`
    /// requests carry two signatures, one per secret, so a receiver that still has the old one
    /// keeps accepting them.
    #[oai(
        path = "/v1/tenants/:tenant/webhooks/:id/rotate-secret",
        method = "post",
        operation_id = "rotateWebhookSecret"
    )]
    async fn rotate(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
        body: JsonBody<RotateSecret>,
    ) -> ApiResult<Json<RotatedSecret>> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        let seconds = body.value.previous_valid_seconds.unwrap_or(DEFAULT_ROTATION_SECONDS);
        if seconds > 7 * 86_400 {
            return Err(ApiError::invalid("previous_valid_seconds", "at most 604800 (7 days)"));
        }
        let mut w = load_webhook(&state, &tenant, &id).await?;
        let secret = herald_webhooks::Secret::generate();
        let at = herald_store::now();
        let until = (seconds > 0).then(|| at + chrono::Duration::seconds(seconds as i64));
        w.previous_secret_sealed = until.map(|_| w.secret_sealed.clone());
        w.previous_until = until;
        w.secret_sealed = crate::hooks::seal_secret(&state.master, &secret);
        w.updated_at = at;
        state.store.update_webhook(&w).await?;
        changed(&state, &tenant).await;
        audit(&state, &auth.0, "webhook.rotate_secret", Some(&tenant), &w.id, serde_json::json!({})).await;
        Ok(Json(RotatedSecret { secret: secret.to_string(), previous_secret_valid_until: until }))
    }

    /// Send a test event
    ///
    /// Scope `webhooks:write`. Queues a `webhook.test` event for this webhook (whatever its
    /// event types, even when disabled: then it is recorded as failed); follow it in the
    /// delivery log.
    #[oai(path = "/v1/tenants/:tenant/webhooks/:id/test", method = "post", operation_id = "testWebhook")]
    async fn test(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
    ) -> ApiResult<Accepted> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        let w = load_webhook(&state, &tenant, &id).await?;
        let d = state.hooks.send_test(&w).await?;
        Ok(Accepted::Accepted(Json(d.into())))
    }

    /// List deliveries
    ///
    /// Scope `webhooks:write`. The webhook's deliveries, newest first: queued ones and the
    /// last `webhook_deliveries_kept` finished ones, with the outcome of their latest attempt.
    #[oai(
        path = "/v1/tenants/:tenant/webhooks/:id/deliveries",
        method = "get",
        operation_id = "listWebhookDeliveries"
    )]
    async fn deliveries(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<DeliveryPage>> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        load_webhook(&state, &tenant, &id).await?;
        let page = PageParams::new(limit.0, cursor.0)?;
        let mut items =
            state.store.list_deliveries(&tenant, &id, page.after.as_deref(), page.fetch()).await?;
        let next_cursor = page.finish(&mut items, |d| d.id.clone());
        Ok(Json(DeliveryPage { items: items.into_iter().map(Into::into).collect(), next_cursor }))
    }

    /// Replay a delivery
    ///
    /// Scope `webhooks:write`. Sends a finished delivery again with the same event id and body
    /// (receivers that de-duplicate by `webhook-id` see it as a repeat), retrying for the retry
    /// period as a new event would.
    #[oai(
        path = "/v1/tenants/:tenant/webhooks/:id/deliveries/:delivery/replay",
        method = "post",
        operation_id = "replayWebhookDelivery"
    )]
    async fn replay(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
        delivery: Path<String>,
    ) -> ApiResult<Accepted> {
        auth.0.require(&tenant, Some(Scope::WebhooksWrite))?;
        load_tenant(&state, &tenant).await?;
        load_webhook(&state, &tenant, &id).await?;
        let not_found =
            || ApiError::new(Code::DeliveryNotFound, format!("delivery `{}` does not exist", *delivery));
        state.store.delivery(&tenant, &id, &delivery).await?.ok_or_else(not_found)?;
        let now = herald_store::now();
        let give_up_at =
            now + chrono::Duration::from_std(state.hooks.settings.retry_period).unwrap_or_default();
        if !state.store.replay_delivery(&tenant, &delivery, now, give_up_at).await? {
            return Err(ApiError::new(Code::DeliveryQueued, "the delivery is still queued or being sent"));
        }
        state.hooks.queued(vec![(*delivery).clone()]).await;
        audit(
            &state,
            &auth.0,
            "webhook.replay",
            Some(&tenant),
            &delivery,
            serde_json::json!({"webhook": *id}),
        )
        .await;
        let d = state.store.delivery(&tenant, &id, &delivery).await?.ok_or_else(not_found)?;
        Ok(Accepted::Accepted(Json(d.into())))
    }
}
