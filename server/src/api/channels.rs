use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::tenants::{Created, Deleted, merge_patch};
use super::{JsonBody, PageParams, Tag, audit, load_tenant};
use crate::auth::BearerAuth;
use crate::error::{ApiError, ApiResult, Code};
use crate::state::{AppState, SharedState};
use herald_store::{StoreError, now};
use herald_types::model::{Channel, ChannelOptions, EffectiveChannelOptions, Namespace, Scope};
use herald_types::names;

#[derive(Default)]
pub struct NamespacesApi;
#[derive(Default)]
pub struct ChannelsApi;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct CreateNamespace {
    /// Channels named `<name>:…` belong to this namespace.
    name: String,
    #[serde(default)]
    options: Option<ChannelOptions>,
}

/// A JSON merge patch of the options: fields left out keep their value, `null` resets one, and
/// `"options": null` resets them all.
#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct UpdateOptions {
    options: Option<ChannelOptions>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct NamespaceView {
    name: String,
    /// Options as set on the namespace.
    options: ChannelOptions,
    /// Options with server defaults filled in.
    effective: EffectiveChannelOptions,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Namespace> for NamespaceView {
    fn from(n: Namespace) -> Self {
        NamespaceView {
            effective: EffectiveChannelOptions::resolve(&[&n.options]),
            name: n.name,
            options: n.options,
            created_at: n.created_at,
            updated_at: n.updated_at,
        }
    }
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct NamespacePage {
    items: Vec<NamespaceView>,
    next_cursor: Option<String>,
}

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct CreateChannel {
    /// Channel name; the part before the first ':' names its namespace, which must exist.
    name: String,
    /// Overrides of the namespace's options.
    #[serde(default)]
    options: Option<ChannelOptions>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ChannelView {
    name: String,
    /// The namespace whose options apply, if the name has one.
    namespace: Option<String>,
    /// Overrides set on this channel.
    options: ChannelOptions,
    /// Options after applying channel overrides, namespace options and server defaults.
    effective: EffectiveChannelOptions,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ChannelPage {
    items: Vec<ChannelView>,
    next_cursor: Option<String>,
}

fn check_options(options: &ChannelOptions) -> ApiResult<()> {
    options.validate().map_err(|(field, why)| ApiError::invalid(format!("options.{field}"), why))
}

fn namespace_not_found(name: &str) -> ApiError {
    ApiError::new(Code::NamespaceNotFound, format!("namespace `{name}` does not exist"))
}

fn channel_not_found(name: &str) -> ApiError {
    ApiError::new(Code::ChannelNotFound, format!("channel `{name}` does not exist"))
}

async fn channel_view(state: &AppState, channel: Channel) -> ApiResult<ChannelView> {
    let namespace = names::namespace_of(&channel.name).map(str::to_owned);
    let ns_options = match &namespace {
        Some(ns) => state.store.namespace(&channel.tenant_id, ns).await?.map(|n| n.options),
        None => None,
    }
    .unwrap_or_default();
    Ok(ChannelView {
        effective: EffectiveChannelOptions::resolve(&[&channel.options, &ns_options]),
        namespace,
        name: channel.name,
        options: channel.options,
        created_at: channel.created_at,
        updated_at: channel.updated_at,
    })
}

#[OpenApi(tag = "Tag::Namespaces")]
impl NamespacesApi {
    /// Create a namespace
    ///
    /// Scope `channels:write`.
    #[oai(path = "/v1/tenants/:tenant/namespaces", method = "post", operation_id = "createNamespace")]
    async fn create(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<CreateNamespace>,
    ) -> ApiResult<Created<NamespaceView>> {
        auth.0.require(&tenant, Some(Scope::ChannelsWrite))?;
        load_tenant(&state, &tenant).await?;
        let raw = body.raw();
        let req = body.value;
        names::namespace(&req.name).map_err(|e| ApiError::invalid("name", e.0))?;
        let options = req.options.unwrap_or_default();
        check_options(&options)?;
        let at = now();
        let namespace = Namespace {
            tenant_id: tenant.0.clone(),
            name: req.name,
            options,
            created_at: at,
            updated_at: at,
        };
        state.store.create_namespace(&namespace).await.map_err(|e| match e {
            StoreError::Conflict => {
                ApiError::new(Code::NamespaceExists, format!("namespace `{}` already exists", namespace.name))
                    .with_field("name")
            }
            other => other.into(),
        })?;
        audit(&state, &auth.0, "namespace.create", Some(&tenant), &namespace.name, raw).await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Created::Created(Json(namespace.into())))
    }

    /// List namespaces
    ///
    /// Scope `channels:read`. Ordered by name.
    #[oai(path = "/v1/tenants/:tenant/namespaces", method = "get", operation_id = "listNamespaces")]
    async fn list(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<NamespacePage>> {
        auth.0.require(&tenant, Some(Scope::ChannelsRead))?;
        load_tenant(&state, &tenant).await?;
        let page = PageParams::new(limit.0, cursor.0)?;
        let mut items = state.store.list_namespaces(&tenant, page.after.as_deref(), page.fetch()).await?;
        let next_cursor = page.finish(&mut items, |n| n.name.clone());
        Ok(Json(NamespacePage { items: items.into_iter().map(Into::into).collect(), next_cursor }))
    }

    /// Get a namespace
    ///
    /// Scope `channels:read`.
    #[oai(path = "/v1/tenants/:tenant/namespaces/:name", method = "get", operation_id = "getNamespace")]
    async fn get(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        name: Path<String>,
    ) -> ApiResult<Json<NamespaceView>> {
        auth.0.require(&tenant, Some(Scope::ChannelsRead))?;
        load_tenant(&state, &tenant).await?;
        let ns = state.store.namespace(&tenant, &name).await?.ok_or_else(|| namespace_not_found(&name))?;
        Ok(Json(ns.into()))
    }

    /// Update a namespace
    ///
    /// Scope `channels:write`. `options` is applied as a JSON merge patch.
    #[oai(path = "/v1/tenants/:tenant/namespaces/:name", method = "patch", operation_id = "updateNamespace")]
    async fn update(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        name: Path<String>,
        body: JsonBody<UpdateOptions>,
    ) -> ApiResult<Json<NamespaceView>> {
        auth.0.require(&tenant, Some(Scope::ChannelsWrite))?;
        load_tenant(&state, &tenant).await?;
        let mut ns =
            state.store.namespace(&tenant, &name).await?.ok_or_else(|| namespace_not_found(&name))?;
        let raw = body.raw();
        if let Some(patch) = raw.get("options") {
            ns.options = merge_patch(&ns.options, patch, "options")?;
            check_options(&ns.options)?;
        }
        ns.updated_at = now();
        state.store.update_namespace(&ns).await?;
        audit(&state, &auth.0, "namespace.update", Some(&tenant), &ns.name, raw).await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Json(ns.into()))
    }

    /// Delete a namespace
    ///
    /// Scope `channels:write`. Channels in it fall back to server defaults.
    #[oai(path = "/v1/tenants/:tenant/namespaces/:name", method = "delete", operation_id = "deleteNamespace")]
    async fn delete(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        name: Path<String>,
    ) -> ApiResult<Deleted> {
        auth.0.require(&tenant, Some(Scope::ChannelsWrite))?;
        load_tenant(&state, &tenant).await?;
        if !state.store.delete_namespace(&tenant, &name).await? {
            return Err(namespace_not_found(&name));
        }
        audit(&state, &auth.0, "namespace.delete", Some(&tenant), &name, serde_json::json!({})).await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Deleted::Deleted)
    }
}

#[OpenApi(tag = "Tag::Channels")]
impl ChannelsApi {
    /// Create a channel
    ///
    /// Scope `channels:write`. Counts against the tenant's `max_channels`.
    #[oai(path = "/v1/tenants/:tenant/channels", method = "post", operation_id = "createChannel")]
    async fn create(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<CreateChannel>,
    ) -> ApiResult<Created<ChannelView>> {
        auth.0.require(&tenant, Some(Scope::ChannelsWrite))?;
        let t = load_tenant(&state, &tenant).await?;
        let raw = body.raw();
        let req = body.value;
        names::channel(&req.name).map_err(|e| ApiError::invalid("name", e.0))?;
        if let Some(ns) = names::namespace_of(&req.name)
            && state.store.namespace(&tenant, ns).await?.is_none()
        {
            return Err(ApiError::invalid(
                "name",
                format!("namespace `{ns}` does not exist; create it first"),
            ));
        }
        let options = req.options.unwrap_or_default();
        check_options(&options)?;
        if options.allow_implicit.is_some() {
            return Err(ApiError::invalid(
                "options.allow_implicit",
                "is a namespace option, not a channel option",
            ));
        }
        let at = now();
        let channel =
            Channel { tenant_id: tenant.0.clone(), name: req.name, options, created_at: at, updated_at: at };
        let max = t.limits.max_channels;
        let created = state.store.create_channel_within(&channel, max).await.map_err(|e| match e {
            StoreError::Conflict => {
                ApiError::new(Code::ChannelExists, format!("channel `{}` already exists", channel.name))
                    .with_field("name")
            }
            other => other.into(),
        })?;
        if !created {
            let max = max.unwrap_or_default();
            return Err(ApiError::new(
                Code::QuotaExceeded,
                format!("tenant may have at most {max} channels"),
            )
            .with_limit(u64::from(max)));
        }
        audit(&state, &auth.0, "channel.create", Some(&tenant), &channel.name, raw).await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Created::Created(Json(channel_view(&state, channel).await?)))
    }

    /// List channels
    ///
    /// Scope `channels:read`. Explicitly created channels, ordered by name.
    #[oai(path = "/v1/tenants/:tenant/channels", method = "get", operation_id = "listChannels")]
    async fn list(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        /// Only channels whose name starts with this.
        prefix: Query<Option<String>>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<ChannelPage>> {
        auth.0.require(&tenant, Some(Scope::ChannelsRead))?;
        load_tenant(&state, &tenant).await?;
        if let Some(p) = prefix.0.as_deref().filter(|p| !p.is_empty()) {
            names::channel(p).map_err(|e| ApiError::new(Code::InvalidParameter, e.0).with_field("prefix"))?;
        }
        let page = PageParams::new(limit.0, cursor.0)?;
        let prefix = prefix.0.filter(|p| !p.is_empty());
        let mut items = state
            .store
            .list_channels(&tenant, prefix.as_deref(), page.after.as_deref(), page.fetch())
            .await?;
        let next_cursor = page.finish(&mut items, |c| c.name.clone());
        let mut views = Vec::with_capacity(items.len());
        for channel in items {
            views.push(channel_view(&state, channel).await?);
        }
        Ok(Json(ChannelPage { items: views, next_cursor }))
    }

    /// Get a channel
    ///
    /// Scope `channels:read`.
    #[oai(path = "/v1/tenants/:tenant/channels/:channel", method = "get", operation_id = "getChannel")]
    async fn get(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        channel: Path<String>,
    ) -> ApiResult<Json<ChannelView>> {
        auth.0.require(&tenant, Some(Scope::ChannelsRead))?;
        load_tenant(&state, &tenant).await?;
        let c = state.store.channel(&tenant, &channel).await?.ok_or_else(|| channel_not_found(&channel))?;
        Ok(Json(channel_view(&state, c).await?))
    }

    /// Update a channel
    ///
    /// Scope `channels:write`. `options` is applied as a JSON merge patch.
    #[oai(path = "/v1/tenants/:tenant/channels/:channel", method = "patch", operation_id = "updateChannel")]
    async fn update(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        channel: Path<String>,
        body: JsonBody<UpdateOptions>,
    ) -> ApiResult<Json<ChannelView>> {
        auth.0.require(&tenant, Some(Scope::ChannelsWrite))?;
        load_tenant(&state, &tenant).await?;
        let mut c =
            state.store.channel(&tenant, &channel).await?.ok_or_else(|| channel_not_found(&channel))?;
        let raw = body.raw();
        if let Some(patch) = raw.get("options") {
            c.options = merge_patch(&c.options, patch, "options")?;
            check_options(&c.options)?;
            if c.options.allow_implicit.is_some() {
                return Err(ApiError::invalid(
                    "options.allow_implicit",
                    "is a namespace option, not a channel option",
                ));
            }
        }
        c.updated_at = now();
        state.store.update_channel(&c).await?;
        audit(&state, &auth.0, "channel.update", Some(&tenant), &c.name, raw).await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Json(channel_view(&state, c).await?))
    }

    /// Delete a channel
    ///
    /// Scope `channels:write`.
    #[oai(path = "/v1/tenants/:tenant/channels/:channel", method = "delete", operation_id = "deleteChannel")]
    async fn delete(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        channel: Path<String>,
    ) -> ApiResult<Deleted> {
        auth.0.require(&tenant, Some(Scope::ChannelsWrite))?;
        load_tenant(&state, &tenant).await?;
        if !state.store.delete_channel(&tenant, &channel).await? {
            return Err(channel_not_found(&channel));
        }
        audit(&state, &auth.0, "channel.delete", Some(&tenant), &channel, serde_json::json!({})).await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Deleted::Deleted)
    }
}
