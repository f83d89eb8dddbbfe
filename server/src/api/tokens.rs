use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::tenants::Created;
use super::{JsonBody, PageParams, Tag, audit, load_tenant};
use crate::auth::BearerAuth;
use crate::error::{ApiError, ApiResult, Code};
use crate::state::SharedState;
use herald_store::now;
use herald_types::model::{RevokedToken, Scope, TenantStatus, UserRevocation};
use herald_types::tokens::{self, Capabilities, MAX_CAPABILITIES, MAX_INFO_BYTES, MAX_TOKEN_TTL_SECONDS};

#[derive(Default)]
pub struct TokensApi;

pub const DEFAULT_TOKEN_TTL_SECONDS: u32 = 3600;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct MintToken {
    /// The user the token identifies (JWT `sub`).
    sub: String,
    /// Channel pattern → allowed actions, e.g. `{"chat:*": ["subscribe", "publish"]}`.
    #[serde(default)]
    capabilities: Option<Capabilities>,
    /// Lifetime in seconds (default 3600, at most 30 days).
    #[serde(default)]
    ttl_seconds: Option<u32>,
    /// User info shown to others in presence (JSON, at most 1 KiB).
    #[serde(default)]
    info: Option<serde_json::Value>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct MintedToken {
    token: String,
    expires_at: DateTime<Utc>,
    /// The signing key used.
    kid: String,
    /// The token id, for revocation.
    jti: String,
}

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct Revoke {
    /// Revoke one token by its `jti`.
    #[serde(default)]
    jti: Option<String>,
    /// Revoke every token of this user issued before `issued_before`.
    #[serde(default)]
    sub: Option<String>,
    /// With `sub`: the cut-off (default: now).
    #[serde(default)]
    issued_before: Option<DateTime<Utc>>,
    /// With `jti`: when the token expires anyway, so the entry can be dropped after.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct Revocation {
    jti: Option<String>,
    sub: Option<String>,
    issued_before: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct RevocationPage {
    items: Vec<Revocation>,
    next_cursor: Option<String>,
}

/// Identifiers inside tokens: printable, no control characters, bounded.
fn check_identifier(field: &str, value: &str) -> ApiResult<()> {
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(field, "must be 1-256 bytes without control characters"));
    }
    Ok(())
}

fn check_capabilities(caps: &Capabilities) -> ApiResult<()> {
    if caps.len() > MAX_CAPABILITIES {
        return Err(ApiError::invalid("capabilities", format!("at most {MAX_CAPABILITIES} patterns"))
            .with_limit(MAX_CAPABILITIES as u64));
    }
    for (pattern, actions) in caps {
        tokens::validate_pattern(pattern)
            .map_err(|e| ApiError::invalid(format!("capabilities.{pattern}"), e.0))?;
        if actions.is_empty() {
            return Err(ApiError::invalid(format!("capabilities.{pattern}"), "give at least one action"));
        }
    }
    Ok(())
}

#[OpenApi(tag = "Tag::Tokens")]
impl TokensApi {
    /// Mint a client token
    ///
    /// Scope `tokens:issue`. Signs an HS256 JWT with the tenant's newest active HS256 signing
    /// key, for tenants that prefer not to sign their own.
    #[oai(path = "/v1/tenants/:tenant/tokens", method = "post", operation_id = "mintToken")]
    async fn mint(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<MintToken>,
    ) -> ApiResult<Created<MintedToken>> {
        auth.0.require(&tenant, Some(Scope::TokensIssue))?;
        let t = load_tenant(&state, &tenant).await?;
        if t.status == TenantStatus::Suspended {
            return Err(ApiError::new(Code::TenantSuspended, format!("tenant `{}` is suspended", t.id)));
        }
        let req = body.value;
        check_identifier("sub", &req.sub)?;
        let capabilities = req.capabilities.unwrap_or_default();
        check_capabilities(&capabilities)?;
        let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECONDS);
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl) {
            return Err(ApiError::invalid("ttl_seconds", format!("must be 1..={MAX_TOKEN_TTL_SECONDS}")));
        }
        if let Some(info) = &req.info
            && info.to_string().len() > MAX_INFO_BYTES
        {
            return Err(ApiError::invalid("info", format!("at most {MAX_INFO_BYTES} bytes of JSON"))
                .with_limit(MAX_INFO_BYTES as u64));
        }
        let key = state.store.newest_active_hs256_key(&tenant).await?.ok_or_else(|| {
            ApiError::new(Code::NoSigningKey, "the tenant has no active HS256 signing key; create one first")
        })?;
        let secret = key
            .sealed_secret
            .as_deref()
            .ok_or_else(|| ApiError::internal("HS256 key without secret"))
            .and_then(|s| state.master.unseal(s).map_err(ApiError::internal))?;
        let claims = tokens::new_claims(&tenant, &req.sub, capabilities, req.info, now(), ttl);
        let token = tokens::mint_hs256(&key.kid, &secret, &claims).map_err(ApiError::internal)?;
        let expires_at = DateTime::from_timestamp(claims.exp, 0).unwrap_or_default();
        audit(
            &state,
            &auth.0,
            "token.mint",
            Some(&tenant),
            &claims.jti,
            serde_json::json!({"sub": claims.sub, "kid": key.kid}),
        )
        .await;
        Ok(Created::Created(Json(MintedToken { token, expires_at, kid: key.kid, jti: claims.jti })))
    }

    /// Revoke client tokens
    ///
    /// Scope `keys:write`. Either one token (`jti`) or all of a user's tokens issued before a
    /// time (`sub`, `issued_before`).
    #[oai(path = "/v1/tenants/:tenant/revocations", method = "post", operation_id = "revokeTokens")]
    async fn revoke(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<Revoke>,
    ) -> ApiResult<Created<Revocation>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let raw = body.raw();
        let req = body.value;
        let at = now();
        let revocation = match (req.jti, req.sub) {
            (Some(jti), None) => {
                check_identifier("jti", &jti)?;
                if req.issued_before.is_some() {
                    return Err(ApiError::invalid("issued_before", "goes with `sub`, not `jti`"));
                }
                let r = RevokedToken {
                    tenant_id: tenant.0.clone(),
                    jti,
                    expires_at: req.expires_at,
                    revoked_at: at,
                };
                state.store.revoke_token(&r).await?;
                Revocation {
                    jti: Some(r.jti),
                    sub: None,
                    issued_before: None,
                    expires_at: r.expires_at,
                    revoked_at: Some(at),
                }
            }
            (None, Some(sub)) => {
                check_identifier("sub", &sub)?;
                if req.expires_at.is_some() {
                    return Err(ApiError::invalid("expires_at", "goes with `jti`, not `sub`"));
                }
                let r = UserRevocation {
                    tenant_id: tenant.0.clone(),
                    user_id: sub,
                    revoked_before: req.issued_before.unwrap_or(at),
                };
                state.store.revoke_user(&r).await?;
                Revocation {
                    jti: None,
                    sub: Some(r.user_id),
                    issued_before: Some(r.revoked_before),
                    expires_at: None,
                    revoked_at: None,
                }
            }
            _ => return Err(ApiError::invalid("jti", "give exactly one of `jti` and `sub`")),
        };
        audit(
            &state,
            &auth.0,
            "token.revoke",
            Some(&tenant),
            revocation.jti.as_deref().or(revocation.sub.as_deref()).unwrap_or_default(),
            raw,
        )
        .await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Created::Created(Json(revocation)))
    }

    /// List revoked tokens
    ///
    /// Scope `keys:write`. Revocations by `jti`, ordered by `jti`.
    #[oai(
        path = "/v1/tenants/:tenant/revocations/tokens",
        method = "get",
        operation_id = "listRevokedTokens"
    )]
    async fn list_tokens(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<RevocationPage>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let page = PageParams::new(limit.0, cursor.0)?;
        let mut items = state.store.list_revoked_tokens(&tenant, page.after.as_deref(), page.fetch()).await?;
        let next_cursor = page.finish(&mut items, |r| r.jti.clone());
        let items = items
            .into_iter()
            .map(|r| Revocation {
                jti: Some(r.jti),
                sub: None,
                issued_before: None,
                expires_at: r.expires_at,
                revoked_at: Some(r.revoked_at),
            })
            .collect();
        Ok(Json(RevocationPage { items, next_cursor }))
    }

    /// List user revocations
    ///
    /// Scope `keys:write`. Revocations by user, ordered by `sub`.
    #[oai(
        path = "/v1/tenants/:tenant/revocations/users",
        method = "get",
        operation_id = "listUserRevocations"
    )]
    async fn list_users(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<RevocationPage>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let page = PageParams::new(limit.0, cursor.0)?;
        let mut items =
            state.store.list_user_revocations(&tenant, page.after.as_deref(), page.fetch()).await?;
        let next_cursor = page.finish(&mut items, |r| r.user_id.clone());
        let items = items
            .into_iter()
            .map(|r| Revocation {
                jti: None,
                sub: Some(r.user_id),
                issued_before: Some(r.revoked_before),
                expires_at: None,
                revoked_at: None,
            })
            .collect();
        Ok(Json(RevocationPage { items, next_cursor }))
    }
}
