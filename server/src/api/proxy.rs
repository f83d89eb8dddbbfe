//! A tenant's proxy endpoints: decisions Herald delegates to the tenant's functions.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::tenants::Deleted;
use super::{JsonBody, Tag, audit, load_tenant};
use crate::auth::BearerAuth;
use crate::error::{ApiError, ApiResult, Code};
use crate::state::SharedState;
use herald_types::model::{ProxyFailure, ProxySettings, Scope, TenantProxy};

#[derive(Default)]
pub struct ProxyApi;

/// Default time Herald waits for a proxy.
const DEFAULT_TIMEOUT_MS: u32 = 1000;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct PutProxy {
    /// Authenticates clients that connect without a token.
    #[serde(default)]
    connect_url: Option<String>,
    /// Allows or denies each subscription (after the token's capabilities), may set its
    /// presence `info`.
    #[serde(default)]
    subscribe_url: Option<String>,
    /// Allows or denies each client publish, may replace its `data`.
    #[serde(default)]
    publish_url: Option<String>,
    /// Extends connections the connect proxy authenticated, before they expire.
    #[serde(default)]
    refresh_url: Option<String>,
    /// How long Herald waits for an answer, 50-30000 ms (default 1000).
    #[serde(default)]
    timeout_ms: Option<u32>,
    // No doc comment on an enum field (it would become an `allOf`); see the operation.
    #[serde(default)]
    on_failure: Option<ProxyFailure>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ProxyView {
    connect_url: Option<String>,
    subscribe_url: Option<String>,
    publish_url: Option<String>,
    refresh_url: Option<String>,
    timeout_ms: u32,
    on_failure: ProxyFailure,
    updated_at: DateTime<Utc>,
    /// The signing secret: only in the answer that created it or rotated it.
    secret: Option<String>,
}

impl ProxyView {
    fn of(p: TenantProxy, secret: Option<String>) -> ProxyView {
        ProxyView {
            connect_url: p.settings.connect_url,
            subscribe_url: p.settings.subscribe_url,
            publish_url: p.settings.publish_url,
            refresh_url: p.settings.refresh_url,
            timeout_ms: p.settings.timeout_ms,
            on_failure: p.settings.on_failure,
            updated_at: p.updated_at,
            secret,
        }
    }
}

fn not_configured() -> ApiError {
    ApiError::new(Code::RouteNotFound, "the tenant has no proxy configured")
}

fn check_url(state: &SharedState, field: &'static str, url: Option<String>) -> ApiResult<Option<String>> {
    url.filter(|u| !u.is_empty())
        .map(|u| super::outbound_url(state.proxies.outbound(), field, &u))
        .transpose()
}

#[OpenApi(tag = "Tag::Proxy")]
impl ProxyApi {
    /// Set the proxy endpoints
    ///
    /// Scope `keys:write` (a connect proxy authenticates clients, as a signing key does).
    /// Replaces the tenant's proxy configuration; an endpoint left out is not used.
    /// `on_failure`: `deny` (default) or `allow` — what a timeout, error status or unusable
    /// answer means. The first configuration answers the signing `secret` (once); later ones
    /// keep it (rotate it with `rotate-secret`).
    #[oai(path = "/v1/tenants/:tenant/proxy", method = "put", operation_id = "putProxy")]
    async fn put(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<PutProxy>,
    ) -> ApiResult<Json<ProxyView>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let req = body.value;
        let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(50..=crate::proxy::MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(ApiError::invalid("timeout_ms", "must be 50-30000"));
        }
        let settings = ProxySettings {
            connect_url: check_url(&state, "connect_url", req.connect_url)?,
            subscribe_url: check_url(&state, "subscribe_url", req.subscribe_url)?,
            publish_url: check_url(&state, "publish_url", req.publish_url)?,
            refresh_url: check_url(&state, "refresh_url", req.refresh_url)?,
            timeout_ms,
            on_failure: req.on_failure.unwrap_or_default(),
        };
        let existing = state.store.tenant_proxy(&tenant).await?;
        let (secret_sealed, shown) = match existing {
            Some(p) => (p.secret_sealed, None),
            None => {
                let secret = herald_webhooks::Secret::generate();
                (crate::hooks::seal_secret(&state.master, &secret), Some(secret.to_string()))
            }
        };
        let proxy = TenantProxy {
            tenant_id: tenant.0.clone(),
            settings,
            secret_sealed,
            updated_at: herald_store::now(),
        };
        state.store.put_tenant_proxy(&proxy).await?;
        state.hub.tenant_changed(&tenant).await;
        audit(&state, &auth.0, "proxy.put", Some(&tenant), &tenant, serde_json::json!({})).await;
        Ok(Json(ProxyView::of(proxy, shown)))
    }

    /// Get the proxy endpoints
    ///
    /// Scope `keys:write`. 404 `route_not_found` when none is configured.
    #[oai(path = "/v1/tenants/:tenant/proxy", method = "get", operation_id = "getProxy")]
    async fn get(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
    ) -> ApiResult<Json<ProxyView>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let proxy = state.store.tenant_proxy(&tenant).await?.ok_or_else(not_configured)?;
        Ok(Json(ProxyView::of(proxy, None)))
    }

    /// Remove the proxy endpoints
    ///
    /// Scope `keys:write`. Connections the connect proxy authenticated stay until they expire.
    #[oai(path = "/v1/tenants/:tenant/proxy", method = "delete", operation_id = "deleteProxy")]
    async fn delete(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
    ) -> ApiResult<Deleted> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        if !state.store.delete_tenant_proxy(&tenant).await? {
            return Err(not_configured());
        }
        state.hub.tenant_changed(&tenant).await;
        audit(&state, &auth.0, "proxy.delete", Some(&tenant), &tenant, serde_json::json!({})).await;
        Ok(Deleted::Deleted)
    }

    /// Rotate the proxy secret
    ///
    /// Scope `keys:write`. Answers the new secret (once); requests are signed with it from now
    /// on.
    #[oai(
        path = "/v1/tenants/:tenant/proxy/rotate-secret",
        method = "post",
        operation_id = "rotateProxySecret"
    )]
    async fn rotate(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
    ) -> ApiResult<Json<ProxyView>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let mut proxy = state.store.tenant_proxy(&tenant).await?.ok_or_else(not_configured)?;
        let secret = herald_webhooks::Secret::generate();
        proxy.secret_sealed = crate::hooks::seal_secret(&state.master, &secret);
        proxy.updated_at = herald_store::now();
        state.store.put_tenant_proxy(&proxy).await?;
        state.hub.tenant_changed(&tenant).await;
        audit(&state, &auth.0, "proxy.rotate_secret", Some(&tenant), &tenant, serde_json::json!({})).await;
        Ok(Json(ProxyView::of(proxy, Some(secret.to_string()))))
    }
}
