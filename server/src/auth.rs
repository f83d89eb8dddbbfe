//! Who is calling the REST API: the operator (bootstrap admin token or an admin session JWT) or
//! a tenant API key with scopes.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult, Code};
use crate::state::{AppState, SharedState};
use herald_core::crypto;
use herald_store::now;
use herald_types::model::{Scope, TenantStatus};

/// Prefix of tenant API key secrets, so a key is recognisable in logs and secret scanners.
pub const API_KEY_PREFIX: &str = "hk_";
const SESSION_AUDIENCE: &str = "herald-admin";
/// `last_used_at` is written at most this often per key, to keep reads from turning into writes.
const LAST_USED_GRANULARITY_SECONDS: u64 = 60;

#[derive(Debug, Clone)]
pub enum Principal {
    Admin { session: bool },
    TenantKey { tenant: String, key_id: String, scopes: Vec<Scope> },
}

impl Principal {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin { session: false } => "admin".into(),
            Principal::Admin { session: true } => "admin-session".into(),
            Principal::TenantKey { key_id, .. } => format!("api-key:{key_id}"),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin { .. })
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(Code::AdminRequired, "this operation needs the admin credential"))
        }
    }

    /// Checks access to `tenant` with `scope`. A key of another tenant gets the same 404 as a
    /// tenant that does not exist, so keys cannot probe for other tenants.
    pub fn require(&self, tenant: &str, scope: Option<Scope>) -> ApiResult<()> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::TenantKey { tenant: own, scopes, .. } => {
                if own != tenant {
                    return Err(tenant_not_found(tenant));
                }
                match scope {
                    Some(needed) if !scopes.iter().any(|s| s.grants(needed)) => Err(ApiError::new(
                        Code::MissingScope,
                        format!("this API key lacks the `{}` scope", needed.as_str()),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

pub fn tenant_not_found(tenant: &str) -> ApiError {
    ApiError::new(Code::TenantNotFound, format!("tenant `{tenant}` does not exist"))
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    sub: String,
    aud: String,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Issues a short-lived admin session JWT.
pub fn issue_admin_session(state: &AppState) -> (String, DateTime<Utc>) {
    let issued = now();
    let expires = issued + chrono::Duration::seconds(state.config.admin_session_ttl_seconds as i64);
    let claims = SessionClaims {
        sub: "admin".into(),
        aud: SESSION_AUDIENCE.into(),
        iat: issued.timestamp(),
        exp: expires.timestamp(),
        jti: uuid::Uuid::new_v4().simple().to_string(),
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&state.session_key).expect("a 32-byte HMAC key is valid"),
    )
    .expect("HS256 encoding of plain claims cannot fail");
    (token, expires)
}

fn verify_admin_session(state: &AppState, token: &str) -> Result<(), jsonwebtoken::errors::Error> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&[SESSION_AUDIENCE]);
    // Herald issues and checks these itself, so no clock-skew allowance is needed.
    validation.leeway = 0;
    let key = jsonwebtoken::DecodingKey::from_secret(&state.session_key)?;
    jsonwebtoken::decode::<SessionClaims>(token, &key, &validation).map(|_| ())
}

pub fn is_admin_token(state: &AppState, token: &str) -> bool {
    crypto::constant_time_eq(&crypto::sha256_hex(token), &state.admin_token_hash)
}

/// Resolves a bearer token to a principal.
pub async fn authenticate(state: &SharedState, token: &str) -> ApiResult<Principal> {
    if token.starts_with(API_KEY_PREFIX) {
        let hash = crypto::sha256_hex(token);
        let cached = state
            .hub
            .directory
            .api_key(&hash)
            .await?
            .ok_or_else(|| ApiError::new(Code::InvalidCredentials, "unknown API key"))?;
        let key = &cached.key;
        let now = now();
        if key.revoked_at.is_some() {
            return Err(ApiError::new(Code::ApiKeyRevoked, "this API key has been revoked"));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::new(Code::ApiKeyExpired, "this API key has expired"));
        }
        let tenant = state
            .hub
            .directory
            .tenant(&key.tenant_id)
            .await?
            .ok_or_else(|| tenant_not_found(&key.tenant_id))?;
        if tenant.tenant.status == TenantStatus::Suspended {
            return Err(ApiError::new(
                Code::TenantSuspended,
                format!("tenant `{}` is suspended", tenant.id()),
            ));
        }
        if cached.should_touch(LAST_USED_GRANULARITY_SECONDS) {
            let store = state.store.clone();
            let id = key.id.clone();
            tokio::spawn(async move {
                if let Err(e) = store.touch_api_key(&id, now).await {
                    tracing::warn!(error = %e, "could not record API key use");
                }
            });
        }
        return Ok(Principal::TenantKey {
            tenant: key.tenant_id.clone(),
            key_id: key.id.clone(),
            scopes: key.scopes.clone(),
        });
    }
    if is_admin_token(state, token) {
        return Ok(Principal::Admin { session: false });
    }
    match verify_admin_session(state, token) {
        Ok(()) => Ok(Principal::Admin { session: true }),
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            Err(ApiError::new(Code::SessionExpired, "the admin session has expired; log in again"))
        }
        Err(_) => Err(ApiError::new(Code::InvalidCredentials, "the bearer token is not valid")),
    }
}

/// `Authorization: Bearer <admin token | admin session JWT | tenant API key>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_bearer")]
pub struct BearerAuth(pub Principal);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    let state = req.data::<SharedState>().expect("state is attached to every request");
    authenticate(state, &bearer.token).await.map_err(Into::into)
}
