use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use serde::Deserialize;

use super::{JsonBody, Tag};
use crate::auth::{self, BearerAuth, Principal};
use crate::error::{ApiError, ApiResult, Code};
use crate::state::SharedState;
use herald_types::model::Scope;

#[derive(Default)]
pub struct SessionsApi;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct LoginRequest {
    /// The bootstrap admin token.
    token: String,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct Session {
    /// Send as `Authorization: Bearer <session_token>` until it expires.
    session_token: String,
    expires_at: DateTime<Utc>,
}

#[derive(Enum)]
#[oai(rename_all = "snake_case")]
enum CallerKind {
    Admin,
    AdminSession,
    ApiKey,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct Caller {
    kind: CallerKind,
    /// For API keys: the tenant the key belongs to.
    tenant: Option<String>,
    /// For API keys: the key's id.
    key_id: Option<String>,
    /// For API keys: its scopes.
    scopes: Vec<Scope>,
}

#[OpenApi(tag = "Tag::Auth")]
impl SessionsApi {
    /// Log in
    ///
    /// Exchanges the admin token for a short-lived admin session JWT (see
    /// `admin_session_ttl_seconds`), as used by the dashboard. Attempts are limited per client
    /// address (`admin_login_per_minute`, default 10): beyond it, 429 `rate_limited`.
    #[oai(path = "/v1/auth/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        req: &poem::Request,
        state: Data<&SharedState>,
        body: JsonBody<LoginRequest>,
    ) -> ApiResult<Json<Session>> {
        // Guessing the admin token is throttled per client address (right or wrong guesses).
        if let Some(ip) = req.remote_addr().as_socket_addr().map(|a| a.ip().to_canonical())
            && state.login_limiter.check_key(&ip).is_err()
        {
            let per_minute = u64::from(state.config.admin_login_per_minute.get());
            return Err(ApiError::new(
                Code::RateLimited,
                format!("at most {per_minute} login attempts per minute from one address"),
            )
            .with_limit(per_minute));
        }
        if !auth::is_admin_token(&state, &body.value.token) {
            return Err(
                ApiError::new(Code::InvalidCredentials, "the admin token is not valid").with_field("token")
            );
        }
        let (session_token, expires_at) = auth::issue_admin_session(&state);
        let who = Principal::Admin { session: false };
        super::audit(&state, &who, "auth.login", None, "admin", serde_json::json!({})).await;
        Ok(Json(Session { session_token, expires_at }))
    }

    /// Who am I
    ///
    /// Describes the credential that authenticated this request.
    #[oai(path = "/v1/auth/whoami", method = "get", operation_id = "whoami")]
    async fn whoami(&self, auth: BearerAuth) -> ApiResult<Json<Caller>> {
        Ok(Json(match auth.0 {
            Principal::Admin { session } => Caller {
                kind: if session { CallerKind::AdminSession } else { CallerKind::Admin },
                tenant: None,
                key_id: None,
                scopes: vec![],
            },
            Principal::TenantKey { tenant, key_id, scopes } => {
                Caller { kind: CallerKind::ApiKey, tenant: Some(tenant), key_id: Some(key_id), scopes }
            }
        }))
    }
}
