use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::raw_json::RawJson;
use super::{JsonBody, Tag, audit};
use crate::auth::BearerAuth;
use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;
use herald_types::model::Scope;

#[derive(Default)]
pub struct UsersApi;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct UserMessageRequest {
    /// Any JSON value.
    data: RawJson,
    #[serde(default)]
    event: Option<String>,
    // No doc comment on enum fields: it would turn the schema into an `allOf`, which some
    // generators refuse. The operation's description explains `if_offline`.
    #[serde(default)]
    if_offline: Option<IfOffline>,
}

#[derive(poem_openapi::Enum, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[oai(rename_all = "lowercase")]
enum IfOffline {
    Drop,
    Webhook,
}

#[derive(poem_openapi::Enum, Clone, Copy)]
#[oai(rename_all = "lowercase")]
enum UserMessageOutcome {
    /// Handed to at least one live connection.
    Delivered,
    /// The user was offline; `user.offline_message` was queued for the tenant's webhooks.
    Webhook,
    /// The user was offline and no webhook takes `user.offline_message` (or it was not asked).
    Dropped,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct UserMessageResult {
    /// Message id.
    id: String,
    /// Connections the message was handed to.
    delivered: u64,
    outcome: UserMessageOutcome,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ConnectionView {
    client: String,
    /// `websocket`, `sse` or `long_poll`.
    transport: String,
    node: String,
    connected_at: DateTime<Utc>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct UserPresence {
    user: String,
    online: bool,
    connections: Vec<ConnectionView>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct Disconnected {
    /// Connections closed (with code 4006).
    disconnected: u64,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct PresenceEntry {
    client: String,
    user: String,
    /// The `info` claim of the client's token.
    info: Option<RawJson>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ChannelPresence {
    channel: String,
    clients: Vec<PresenceEntry>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ChannelOccupancy {
    channel: String,
    subscribers: u64,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct Occupancy {
    /// Live channels, busiest first (at most 1000).
    channels: Vec<ChannelOccupancy>,
}

fn check_user(user: &str) -> ApiResult<()> {
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return Err(ApiError::invalid("user", "must be 1-256 bytes without control characters"));
    }
    Ok(())
}

#[OpenApi(tag = "Tag::Users")]
impl UsersApi {
    /// Send to a user
    ///
    /// Scope `publish`. Hands a `message` frame to every live connection of the user on every
    /// transport and, in cluster mode, every node; `delivered` counts them. Not stored: a user
    /// who is offline does not receive it later; with `if_offline: "webhook"` (and the user
    /// absent from the cluster's presence registry) `user.offline_message` is fired instead.
    /// `if_offline`: `drop` (default) or `webhook`. `outcome`: `delivered` (at least one
    /// connection took it), `webhook` (offline; the event went to the tenant's webhooks that
    /// take `user.offline_message`) or `dropped` (offline, and no such webhook or no option).
    #[oai(path = "/v1/tenants/:tenant/users/:user/messages", method = "post", operation_id = "sendToUser")]
    async fn send(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        user: Path<String>,
        body: JsonBody<UserMessageRequest>,
    ) -> ApiResult<Json<UserMessageResult>> {
        auth.0.require(&tenant, Some(Scope::Publish))?;
        let snapshot = super::messages::live_tenant(&state, &tenant).await?;
        check_user(&user)?;
        let req = body.value;
        let fallback = req.if_offline == Some(IfOffline::Webhook);
        let copy = fallback.then(|| (req.data.0.clone(), req.event.clone()));
        let (id, delivered) = state.hub.send_to_user(&snapshot, &user, req.data.0, req.event).await?;
        let mut outcome =
            if delivered > 0 { UserMessageOutcome::Delivered } else { UserMessageOutcome::Dropped };
        let kind = herald_types::model::WebhookEvent::UserOfflineMessage;
        if let Some((data, event)) = copy
            && delivered == 0
            && state.hooks.takes(&tenant, kind).await
            && state.hub.backend().presence.user(&tenant, &user).await?.is_empty()
        {
            use herald_core::hooks::{HookEvent, HookSink};
            let data: serde_json::Value = serde_json::from_str(data.get()).unwrap_or_default();
            state.hooks.emit(HookEvent::new(
                &tenant,
                kind,
                None,
                serde_json::json!({"user": *user, "id": id, "event": event, "data": data}),
            ));
            outcome = UserMessageOutcome::Webhook;
        }
        Ok(Json(UserMessageResult { id, delivered, outcome }))
    }

    /// Is a user online
    ///
    /// Scope `presence:read`. The user's live connections: on this node, or in cluster mode on
    /// every node (from the presence registry).
    #[oai(path = "/v1/tenants/:tenant/users/:user", method = "get", operation_id = "getUserPresence")]
    async fn presence(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        user: Path<String>,
    ) -> ApiResult<Json<UserPresence>> {
        auth.0.require(&tenant, Some(Scope::PresenceRead))?;
        super::load_tenant(&state, &tenant).await?;
        check_user(&user)?;
        let connections: Vec<ConnectionView> = state
            .hub
            .backend()
            .presence
            .user(&tenant, &user)
            .await?
            .into_iter()
            .map(|c| ConnectionView {
                client: c.client,
                transport: c.transport,
                node: c.node,
                connected_at: c.connected_at,
            })
            .collect();
        Ok(Json(UserPresence { user: user.0, online: !connections.is_empty(), connections }))
    }

    /// Disconnect a user
    ///
    /// Scope `keys:write`. Closes every connection of the user (in cluster mode on every node)
    /// with code 4006 (do not reconnect). Their tokens stay valid; revoke them to keep the user
    /// out.
    #[oai(
        path = "/v1/tenants/:tenant/users/:user/disconnect",
        method = "post",
        operation_id = "disconnectUser"
    )]
    async fn disconnect(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        user: Path<String>,
    ) -> ApiResult<Json<Disconnected>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        super::load_tenant(&state, &tenant).await?;
        check_user(&user)?;
        let n = state.hub.disconnect_user(&tenant, &user).await?;
        audit(
            &state,
            &auth.0,
            "user.disconnect",
            Some(&tenant),
            &user,
            serde_json::json!({"connections": n}),
        )
        .await;
        Ok(Json(Disconnected { disconnected: n }))
    }

    /// Channel presence
    ///
    /// Scope `presence:read`. Who is subscribed to the channel: on this node, or in cluster
    /// mode on every node (channels with the `presence` option; client ids `<node>/<client>`).
    #[oai(
        path = "/v1/tenants/:tenant/channels/:channel/presence",
        method = "get",
        operation_id = "getChannelPresence"
    )]
    async fn channel_presence(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        channel: Path<String>,
    ) -> ApiResult<Json<ChannelPresence>> {
        auth.0.require(&tenant, Some(Scope::PresenceRead))?;
        super::load_tenant(&state, &tenant).await?;
        herald_types::names::channel(&channel).map_err(|e| ApiError::invalid("channel", e.0))?;
        let clients = state
            .hub
            .backend()
            .presence
            .channel(&tenant, &channel)
            .await?
            .into_iter()
            .map(|p| PresenceEntry { client: p.client, user: p.user, info: p.info.map(RawJson) })
            .collect();
        Ok(Json(ChannelPresence { channel: channel.0, clients }))
    }

    /// Channel occupancy
    ///
    /// Scope `presence:read`. Channels of the tenant with subscribers and how many, busiest
    /// first: on this node, or in cluster mode summed over every node.
    #[oai(path = "/v1/tenants/:tenant/occupancy", method = "get", operation_id = "getOccupancy")]
    async fn occupancy(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
    ) -> ApiResult<Json<Occupancy>> {
        auth.0.require(&tenant, Some(Scope::PresenceRead))?;
        super::load_tenant(&state, &tenant).await?;
        let counts = state.hub.backend().presence.occupancy(&tenant).await?;
        let channels = counts
            .into_iter()
            .take(1000)
            .map(|(channel, subscribers)| ChannelOccupancy { channel, subscribers })
            .collect();
        Ok(Json(Occupancy { channels }))
    }
}
