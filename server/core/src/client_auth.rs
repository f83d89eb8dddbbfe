//! Verification of client JWTs. The token names its tenant; the tenant's active keys are looked
//! up by `kid`, and each key accepts only the algorithm it was registered with, so `alg: none`
//! and HS/RS confusion (a public key used as an HMAC secret) are refused before any signature
//! check.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use herald_types::model::{SigningAlgorithm, TenantStatus};
use herald_types::tokens::ClientClaims;

use crate::directory::{Directory, TenantSnapshot};
use crate::error::Code;

/// Why a token was refused. `code()` is the stable word sent to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    AlgorithmNotAllowed,
    UnknownTenant,
    WrongTenant,
    UnknownKey,
    AlgorithmMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    Revoked,
    TenantSuspended,
    Unavailable,
}

impl TokenError {
    pub fn code(self) -> Code {
        match self {
            TokenError::Malformed => Code::TokenMalformed,
            TokenError::AlgorithmNotAllowed => Code::AlgorithmNotAllowed,
            TokenError::UnknownTenant => Code::UnknownTenant,
            TokenError::WrongTenant => Code::WrongTenant,
            TokenError::UnknownKey => Code::UnknownKey,
            TokenError::AlgorithmMismatch => Code::AlgorithmMismatch,
            TokenError::BadSignature => Code::BadSignature,
            TokenError::Expired => Code::TokenExpired,
            TokenError::NotYetValid => Code::TokenNotYetValid,
            TokenError::Revoked => Code::TokenRevoked,
            TokenError::TenantSuspended => Code::TenantSuspended,
            TokenError::Unavailable => Code::AuthUnavailable,
        }
    }

    pub fn disconnect(self) -> crate::Disconnect {
        use crate::Disconnect;
        match self {
            TokenError::Expired => Disconnect::TokenExpired,
            TokenError::Revoked => Disconnect::TokenRevoked,
            TokenError::TenantSuspended => Disconnect::TenantSuspended,
            TokenError::Unavailable => Disconnect::Internal,
            other => Disconnect::AuthFailed(other.code()),
        }
    }
}

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 5;

fn decode_part(part: &str) -> Result<serde_json::Value, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

pub struct Verified {
    pub tenant: Arc<TenantSnapshot>,
    pub claims: ClientClaims,
}

pub async fn verify(
    directory: &Directory,
    token: &str,
    expected_tenant: Option<&str>,
) -> Result<Verified, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = decode_part(header)?;
    let payload = decode_part(payload)?;
    let alg = header.get("alg").and_then(|a| a.as_str()).ok_or(TokenError::Malformed)?;
    let alg = SigningAlgorithm::parse(alg).ok_or(TokenError::AlgorithmNotAllowed)?;
    let tenant_id = payload.get("tenant").and_then(|t| t.as_str()).ok_or(TokenError::Malformed)?;
    if expected_tenant.is_some_and(|t| t != tenant_id) {
        return Err(TokenError::WrongTenant);
    }
    let tenant = directory
        .tenant(tenant_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "tenant lookup failed during token verification");
            TokenError::Unavailable
        })?
        .ok_or(TokenError::UnknownTenant)?;
    let key = match header.get("kid").and_then(|k| k.as_str()) {
        Some(kid) => tenant.keys.get(kid).ok_or(TokenError::UnknownKey)?,
        // Without a kid, only an unambiguous single key will do.
        None if tenant.keys.len() == 1 => tenant.keys.values().next().expect("one key"),
        None => return Err(TokenError::UnknownKey),
    };
    if key.algorithm != alg {
        return Err(TokenError::AlgorithmMismatch);
    }
    let mut validation = jsonwebtoken::Validation::new(alg.jwt());
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<ClientClaims>(token, &key.key, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidSignature => TokenError::BadSignature,
                K::InvalidAlgorithm => TokenError::AlgorithmMismatch,
                _ => TokenError::Malformed,
            }
        })?
        .claims;
    if claims.tenant != tenant.tenant.id {
        return Err(TokenError::WrongTenant);
    }
    if claims.sub.is_empty() || claims.sub.len() > 256 || claims.sub.chars().any(char::is_control) {
        return Err(TokenError::Malformed);
    }
    if tenant.tenant.status == TenantStatus::Suspended {
        return Err(TokenError::TenantSuspended);
    }
    if tenant.is_revoked(Some(&claims.jti), &claims.sub, claims.iat) {
        return Err(TokenError::Revoked);
    }
    Ok(Verified { tenant, claims })
}
