use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::tenants::{Created, Deleted};
use super::{JsonBody, PageParams, Tag, audit, load_tenant};
use crate::auth::{API_KEY_PREFIX, BearerAuth, Principal};
use crate::error::{ApiError, ApiResult, Code};
use crate::state::SharedState;
use herald_core::crypto;
use herald_store::{StoreError, now};
use herald_types::model::{ApiKey, KeyStatus, Scope, SigningAlgorithm, SigningKey};
use herald_types::names;

#[derive(Default)]
pub struct ApiKeysApi;
#[derive(Default)]
pub struct SigningKeysApi;

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct CreateApiKey {
    /// What the key is for, e.g. "billing backend".
    name: String,
    /// At least one scope.
    scopes: Vec<Scope>,
    /// When the key stops working; never, if absent.
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ApiKeyView {
    id: String,
    name: String,
    /// The first characters of the secret, to recognise it.
    prefix: String,
    scopes: Vec<Scope>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        ApiKeyView {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            scopes: k.scopes,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
            created_at: k.created_at,
        }
    }
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct CreatedApiKey {
    #[oai(flatten)]
    key: ApiKeyView,
    /// The secret. It is shown only in this response; Herald stores a hash.
    secret: String,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct ApiKeyPage {
    items: Vec<ApiKeyView>,
    next_cursor: Option<String>,
}

#[derive(Object, Deserialize)]
#[oai(skip_serializing_if_is_none)]
#[serde(deny_unknown_fields)]
#[oai(deny_unknown_fields)]
struct CreateSigningKey {
    algorithm: SigningAlgorithm,
    /// Key id, carried in the JWT header `kid`. Generated if absent.
    #[serde(default)]
    kid: Option<String>,
    /// PEM public key (SPKI `-----BEGIN PUBLIC KEY-----`; PKCS#1 RSA also accepted) for
    /// RS256, ES256 and EdDSA. Must be absent for HS256, whose secret Herald generates.
    #[serde(default)]
    public_key_pem: Option<String>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct SigningKeyView {
    kid: String,
    algorithm: SigningAlgorithm,
    status: KeyStatus,
    /// The public key, for asymmetric algorithms.
    public_key_pem: Option<String>,
    created_at: DateTime<Utc>,
    retired_at: Option<DateTime<Utc>>,
}

impl From<SigningKey> for SigningKeyView {
    fn from(k: SigningKey) -> Self {
        SigningKeyView {
            kid: k.kid,
            algorithm: k.algorithm,
            status: k.status,
            public_key_pem: k.public_key_pem,
            created_at: k.created_at,
            retired_at: k.retired_at,
        }
    }
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct CreatedSigningKey {
    #[oai(flatten)]
    key: SigningKeyView,
    /// HS256 only: the shared secret to sign client tokens with (use its UTF-8 bytes as the
    /// HMAC key). Shown only in this response; Herald stores it encrypted.
    secret: Option<String>,
}

#[derive(Object)]
#[oai(skip_serializing_if_is_none)]
struct SigningKeyPage {
    items: Vec<SigningKeyView>,
    next_cursor: Option<String>,
}

pub const MAX_PEM_BYTES: usize = 16 * 1024;

/// Checks that `pem` is a public key usable with `algorithm`.
fn check_public_key(algorithm: SigningAlgorithm, pem: &str) -> Result<(), String> {
    use jsonwebtoken::DecodingKey;
    if pem.contains("PRIVATE KEY") {
        return Err("this is a private key; upload only the public key".into());
    }
    let parsed = match algorithm {
        SigningAlgorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()).map(|_| ()),
        SigningAlgorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()).map(|_| ()),
        SigningAlgorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()).map(|_| ()),
        SigningAlgorithm::HS256 => unreachable!("HS256 keys have no PEM"),
    };
    parsed.map_err(|e| format!("not a valid {} public key: {e}", algorithm.as_str()))
}

#[OpenApi(tag = "Tag::ApiKeys")]
impl ApiKeysApi {
    /// Create an API key
    ///
    /// Scope `keys:write`. A key can only grant scopes that its creator holds. The secret is in
    /// the response and never again.
    #[oai(path = "/v1/tenants/:tenant/api-keys", method = "post", operation_id = "createApiKey")]
    async fn create(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<CreateApiKey>,
    ) -> ApiResult<Created<CreatedApiKey>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let req = body.value;
        names::display_name(&req.name).map_err(|e| ApiError::invalid("name", e.0))?;
        if req.scopes.is_empty() {
            return Err(ApiError::invalid("scopes", "give at least one scope"));
        }
        if let Principal::TenantKey { scopes: own, .. } = &auth.0
            && let Some((i, s)) =
                req.scopes.iter().enumerate().find(|(_, s)| !own.iter().any(|o| o.grants(**s)))
        {
            return Err(ApiError::new(
                Code::ScopeEscalation,
                format!("cannot grant `{}`, which this key lacks", s.as_str()),
            )
            .with_field(format!("scopes[{i}]")));
        }
        let at = now();
        if req.expires_at.is_some_and(|e| e <= at) {
            return Err(ApiError::invalid("expires_at", "must be in the future"));
        }
        let mut scopes = req.scopes;
        scopes.sort();
        scopes.dedup();
        let secret = crypto::random_token(API_KEY_PREFIX, 32);
        let key = ApiKey {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant.0.clone(),
            name: req.name.trim().to_owned(),
            prefix: secret.chars().take(API_KEY_PREFIX.len() + 6).collect(),
            scopes,
            expires_at: req.expires_at,
            last_used_at: None,
            revoked_at: None,
            created_at: at,
        };
        state.store.create_api_key(&key, &crypto::sha256_hex(&secret)).await?;
        audit(
            &state,
            &auth.0,
            "api_key.create",
            Some(&tenant),
            &key.id,
            serde_json::json!({"name": key.name, "scopes": key.scopes}),
        )
        .await;
        Ok(Created::Created(Json(CreatedApiKey { key: key.into(), secret })))
    }

    /// List API keys
    ///
    /// Scope `keys:write`. Secrets are never returned. Ordered by creation.
    #[oai(path = "/v1/tenants/:tenant/api-keys", method = "get", operation_id = "listApiKeys")]
    async fn list(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<ApiKeyPage>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let page = PageParams::new(limit.0, cursor.0)?;
        let mut items = state.store.list_api_keys(&tenant, page.after.as_deref(), page.fetch()).await?;
        let next_cursor = page.finish(&mut items, |k| k.id.clone());
        Ok(Json(ApiKeyPage { items: items.into_iter().map(Into::into).collect(), next_cursor }))
    }

    /// Get an API key
    ///
    /// Scope `keys:write`.
    #[oai(path = "/v1/tenants/:tenant/api-keys/:id", method = "get", operation_id = "getApiKey")]
    async fn get(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
    ) -> ApiResult<Json<ApiKeyView>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let key = state.store.api_key(&tenant, &id).await?.ok_or_else(|| key_not_found(&id))?;
        Ok(Json(key.into()))
    }

    /// Revoke an API key
    ///
    /// Scope `keys:write`. The key stops working at once; it stays listed with `revoked_at`.
    #[oai(path = "/v1/tenants/:tenant/api-keys/:id", method = "delete", operation_id = "revokeApiKey")]
    async fn revoke(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        id: Path<String>,
    ) -> ApiResult<Deleted> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        if !state.store.revoke_api_key(&tenant, &id, now()).await? {
            return Err(key_not_found(&id));
        }
        audit(&state, &auth.0, "api_key.revoke", Some(&tenant), &id, serde_json::json!({})).await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Deleted::Deleted)
    }
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::new(Code::ApiKeyNotFound, format!("API key `{id}` does not exist"))
}

fn signing_key_not_found(kid: &str) -> ApiError {
    ApiError::new(Code::SigningKeyNotFound, format!("signing key `{kid}` does not exist"))
}

#[OpenApi(tag = "Tag::SigningKeys")]
impl SigningKeysApi {
    /// Add a signing key
    ///
    /// Scope `keys:write`. For HS256 Herald generates the secret and returns it once; for
    /// RS256, ES256 and EdDSA upload the public key. Tokens select a key by `kid`, and each key
    /// accepts only its own algorithm.
    #[oai(path = "/v1/tenants/:tenant/signing-keys", method = "post", operation_id = "createSigningKey")]
    async fn create(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        body: JsonBody<CreateSigningKey>,
    ) -> ApiResult<Created<CreatedSigningKey>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let req = body.value;
        let kid = match req.kid {
            Some(kid) => {
                names::kid(&kid).map_err(|e| ApiError::invalid("kid", e.0))?;
                kid
            }
            None => crypto::random_token("k_", 9),
        };
        let (sealed_secret, public_key_pem, secret) = match (req.algorithm, req.public_key_pem) {
            (SigningAlgorithm::HS256, Some(_)) => {
                return Err(ApiError::invalid(
                    "public_key_pem",
                    "HS256 keys have no public key; Herald generates the secret",
                ));
            }
            (SigningAlgorithm::HS256, None) => {
                let secret = crypto::random_token("", 32);
                (Some(state.master.seal(secret.as_bytes())), None, Some(secret))
            }
            (alg, Some(pem)) => {
                if pem.len() > MAX_PEM_BYTES {
                    return Err(ApiError::invalid(
                        "public_key_pem",
                        format!("at most {MAX_PEM_BYTES} bytes"),
                    )
                    .with_limit(MAX_PEM_BYTES as u64));
                }
                check_public_key(alg, &pem).map_err(|e| ApiError::invalid("public_key_pem", e))?;
                (None, Some(pem.trim().to_owned() + "\n"), None)
            }
            (alg, None) => {
                return Err(ApiError::invalid(
                    "public_key_pem",
                    format!("{} keys need a PEM public key", alg.as_str()),
                ));
            }
        };
        let key = SigningKey {
            tenant_id: tenant.0.clone(),
            kid,
            algorithm: req.algorithm,
            sealed_secret,
            public_key_pem,
            status: KeyStatus::Active,
            created_at: now(),
            retired_at: None,
        };
        state.store.create_signing_key(&key).await.map_err(|e| match e {
            StoreError::Conflict => {
                ApiError::new(Code::SigningKeyExists, format!("signing key `{}` already exists", key.kid))
                    .with_field("kid")
            }
            other => other.into(),
        })?;
        audit(
            &state,
            &auth.0,
            "signing_key.create",
            Some(&tenant),
            &key.kid,
            serde_json::json!({"algorithm": key.algorithm.as_str()}),
        )
        .await;
        state.hub.tenant_changed(&tenant).await;
        Ok(Created::Created(Json(CreatedSigningKey { key: key.into(), secret })))
    }

    /// List signing keys
    ///
    /// Scope `keys:write`. Ordered by `kid`.
    #[oai(path = "/v1/tenants/:tenant/signing-keys", method = "get", operation_id = "listSigningKeys")]
    async fn list(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        /// Page size, 1-200 (default 50).
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<SigningKeyPage>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let page = PageParams::new(limit.0, cursor.0)?;
        let mut items = state.store.list_signing_keys(&tenant, page.after.as_deref(), page.fetch()).await?;
        let next_cursor = page.finish(&mut items, |k| k.kid.clone());
        Ok(Json(SigningKeyPage { items: items.into_iter().map(Into::into).collect(), next_cursor }))
    }

    /// Get a signing key
    ///
    /// Scope `keys:write`.
    #[oai(path = "/v1/tenants/:tenant/signing-keys/:kid", method = "get", operation_id = "getSigningKey")]
    async fn get(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        kid: Path<String>,
    ) -> ApiResult<Json<SigningKeyView>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        let key = state.store.signing_key(&tenant, &kid).await?.ok_or_else(|| signing_key_not_found(&kid))?;
        Ok(Json(key.into()))
    }

    /// Retire a signing key
    ///
    /// Scope `keys:write`. Tokens signed with it stop verifying; the key stays listed.
    #[oai(
        path = "/v1/tenants/:tenant/signing-keys/:kid/retire",
        method = "post",
        operation_id = "retireSigningKey"
    )]
    async fn retire(
        &self,
        state: Data<&SharedState>,
        auth: BearerAuth,
        tenant: Path<String>,
        kid: Path<String>,
    ) -> ApiResult<Json<SigningKeyView>> {
        auth.0.require(&tenant, Some(Scope::KeysWrite))?;
        load_tenant(&state, &tenant).await?;
        if !state.store.retire_signing_key(&tenant, &kid, now()).await? {
            return Err(signing_key_not_found(&kid));
        }
        audit(&state, &auth.0, "signing_key.retire", Some(&tenant), &kid, serde_json::json!({})).await;
        state.hub.tenant_changed(&tenant).await;
        let key = state.store.signing_key(&tenant, &kid).await?.ok_or_else(|| signing_key_not_found(&kid))?;
        Ok(Json(key.into()))
    }
}
