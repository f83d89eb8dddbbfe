//! The REST API under `/v1`, described by poem-openapi. One `#[OpenApi]` struct per area, each
//! with its own tag; [`service`] combines them. Handlers check the caller, validate input, call
//! the store and write the audit log; they hold no state of their own.

mod audit;
mod body;
mod channels;
mod keys;
mod messages;
mod page;
mod proxy;
mod raw_json;
mod sessions;
mod stats;
mod tenants;
mod tokens;
mod users;
mod webhooks;

use poem_openapi::{OpenApiService, Tags};

pub use body::JsonBody;
pub(crate) use messages::channel_error;
pub use page::{Cursor, PageParams};

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::state::AppState;

#[derive(Tags)]
pub enum Tag {
    /// Exchange the admin credential for a short-lived session.
    Auth,
    /// Tenants: isolated namespaces of channels, keys, users and limits.
    Tenants,
    /// Namespaces: channel options shared by every channel whose name starts with `<namespace>:`.
    Namespaces,
    /// Channels created explicitly, with per-channel option overrides.
    Channels,
    /// Tenant API keys for server-side callers.
    ApiKeys,
    /// Keys that verify client JWTs (HS256 secrets or public keys).
    SigningKeys,
    /// Client tokens: minting and revocation.
    Tokens,
    /// Publishing messages and reading channel history.
    Messages,
    /// The audit log of management actions.
    Audit,
    /// Live statistics of the delivery core.
    Stats,
    /// Users and presence: who is online, user-targeted messages, disconnects.
    Users,
    /// Webhooks: the tenant's endpoints for events, their secrets and delivery logs.
    Webhooks,
    /// Proxies: connect, subscribe, publish and refresh decisions delegated to the tenant's
    /// endpoints.
    Proxy,
}

pub type Api = (
    sessions::SessionsApi,
    tenants::TenantsApi,
    channels::NamespacesApi,
    channels::ChannelsApi,
    keys::ApiKeysApi,
    keys::SigningKeysApi,
    tokens::TokensApi,
    messages::MessagesApi,
    audit::AuditApi,
    stats::StatsApi,
    users::UsersApi,
    // Nested: tuples of more than 12 have no `Default`.
    (webhooks::WebhooksApi, proxy::ProxyApi),
);

/// The API description without server URLs, so the committed spec does not depend on where a
/// node listens.
pub fn service() -> OpenApiService<Api, ()> {
    OpenApiService::new(Api::default(), "Herald", env!("CARGO_PKG_VERSION")).description(
        "Management and publish API of Herald, a self-hosted multi-tenant real-time push server. \
         Authenticate with `Authorization: Bearer <token>`: the admin token, an admin session \
         from `POST /v1/auth/login`, or a tenant API key (`hk_…`) with the scopes an operation \
         names. Errors are RFC 9457 problem details with a stable `code`.",
    )
}

/// Records a management action. Failures are logged, not returned: the action itself succeeded.
pub(crate) async fn audit(
    state: &AppState,
    who: &Principal,
    action: &str,
    tenant: Option<&str>,
    target: &str,
    details: serde_json::Value,
) {
    if let Err(e) = state.store.append_audit(&who.actor(), action, tenant, target, &details).await {
        tracing::error!(error = %e, action, "could not write audit log entry");
    }
}

/// Longest webhook or proxy URL accepted.
const MAX_URL_BYTES: usize = 2048;

/// Checks a URL a tenant gives for Herald to call (a webhook or a proxy), with the rules the
/// outbound client applies again at each call; refusals name `field`.
pub(crate) fn outbound_url(
    outbound: &crate::outbound::Outbound,
    field: &'static str,
    url: &str,
) -> ApiResult<String> {
    use crate::error::{ApiError, Code};
    if url.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid(field, format!("at most {MAX_URL_BYTES} bytes")));
    }
    match outbound.check_url(url) {
        Ok(u) => Ok(u.to_string()),
        Err(crate::outbound::OutboundError::Forbidden(what)) => Err(ApiError::new(
            Code::UrlNotAllowed,
            format!(
                "{what} is not a public address; ask the operator to allow it (outbound_allowed_networks)"
            ),
        )
        .with_field(field)),
        Err(e) => Err(ApiError::new(Code::UrlNotAllowed, e.to_string()).with_field(field)),
    }
}

/// Loads the tenant or answers 404.
pub(crate) async fn load_tenant(state: &AppState, id: &str) -> ApiResult<herald_types::model::Tenant> {
    state.store.tenant(id).await?.ok_or_else(|| crate::auth::tenant_not_found(id))
}
