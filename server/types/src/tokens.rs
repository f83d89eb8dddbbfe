//! Client JWTs: the claims Herald understands, capability patterns, and minting for tenants that
//! let Herald sign on their behalf.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::NameError;

/// What a capability allows on the channels its pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum Action {
    Subscribe,
    Publish,
    Presence,
    History,
}

/// Channel pattern → allowed actions. A pattern is a channel name in which `*` matches any
/// run of characters (`chat:*`, `*`, `user@*:inbox`).
pub type Capabilities = BTreeMap<String, Vec<Action>>;

/// The claims of a client token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientClaims {
    pub sub: String,
    /// The tenant the token is valid for; a token of another tenant is refused even when
    /// signed with a key that happens to verify.
    pub tenant: String,
    /// Issue time; missing counts as 0, so user-wide revocations always cover it.
    #[serde(default)]
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Token id for revocation; empty when the signer gave none.
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Free-form user info shown in presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

pub const PATTERN_RULE: &str = "1-200 characters: a channel name in which '*' matches any run of characters";
pub const MAX_CAPABILITIES: usize = 64;
pub const MAX_TOKEN_TTL_SECONDS: u32 = 30 * 86_400;
pub const MAX_INFO_BYTES: usize = 1024;

pub fn validate_pattern(pattern: &str) -> Result<(), NameError> {
    let ok = !pattern.is_empty()
        && pattern.len() <= 200
        && pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '=' | '*'));
    if ok { Ok(()) } else { Err(NameError(format!("must be {PATTERN_RULE}"))) }
}

/// Glob match where `*` matches any (possibly empty) run of characters.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    let (p, c) = (pattern.as_bytes(), channel.as_bytes());
    // Iterative wildcard matching with single backtrack point: linear in practice.
    let (mut pi, mut ci) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ci < c.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ci;
            pi += 1;
        } else if pi < p.len() && p[pi] == c[ci] {
            pi += 1;
            ci += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ci = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

impl Action {
    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Capabilities as a connection keeps them for its lifetime: every pattern once, with its
/// actions as bits, in one boxed slice. The map form reserves a B-tree node of eleven entries
/// (over 500 bytes) even for a single pattern, on every connection; checks answer the same as
/// [`allows`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Box<[(Box<str>, u8)]>);

impl From<&Capabilities> for Grants {
    fn from(caps: &Capabilities) -> Grants {
        Grants(
            caps.iter()
                .map(|(pattern, actions)| {
                    (Box::from(pattern.as_str()), actions.iter().fold(0, |bits, a| bits | a.bit()))
                })
                .collect(),
        )
    }
}

impl Grants {
    /// Whether these grants allow `action` on `channel`.
    pub fn allows(&self, channel: &str, action: Action) -> bool {
        self.0.iter().any(|(pattern, bits)| bits & action.bit() != 0 && pattern_matches(pattern, channel))
    }
}

/// Signs `claims` with an HS256 tenant secret under `kid`.
pub fn mint_hs256(
    kid: &str,
    secret: &[u8],
    claims: &ClientClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret)?)
}

pub fn new_claims(
    tenant: &str,
    sub: &str,
    capabilities: Capabilities,
    info: Option<serde_json::Value>,
    now: DateTime<Utc>,
    ttl_seconds: u32,
) -> ClientClaims {
    ClientClaims {
        sub: sub.to_owned(),
        tenant: tenant.to_owned(),
        iat: now.timestamp(),
        exp: now.timestamp() + i64::from(ttl_seconds),
        nbf: None,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        capabilities,
        info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        assert!(pattern_matches("chat:*", "chat:room"));
        assert!(pattern_matches("chat:*", "chat:"));
        assert!(!pattern_matches("chat:*", "chatroom"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("user@*:inbox", "user@42:inbox"));
        assert!(!pattern_matches("user@*:inbox", "user@42:outbox"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("exact", "exactly"));
        assert!(pattern_matches("a*b*c", "a-x-b-y-c"));
        assert!(!pattern_matches("a*b*c", "a-x-c-y-b"));
    }

    #[test]
    fn capabilities_check_action_and_pattern() {
        let caps: Capabilities = [
            ("chat:*".to_string(), vec![Action::Subscribe, Action::Presence]),
            ("news".to_string(), vec![Action::History, Action::Publish]),
            ("none".to_string(), vec![]),
        ]
        .into();
        let grants = Grants::from(&caps);
        let allowed = [
            ("chat:1", Action::Subscribe),
            ("chat:1", Action::Presence),
            ("chat:", Action::Subscribe),
            ("chat:", Action::Presence),
            ("news", Action::History),
            ("news", Action::Publish),
        ];
        let actions = [Action::Subscribe, Action::Publish, Action::Presence, Action::History];
        for channel in ["chat:1", "chat:", "chatroom", "news", "news2", "none", ""] {
            for action in actions {
                assert_eq!(
                    grants.allows(channel, action),
                    allowed.contains(&(channel, action)),
                    "{channel} {action:?}"
                );
            }
        }
        assert!(!Grants::default().allows("chat:1", Action::Subscribe));
    }

    #[test]
    fn minted_tokens_verify_with_the_secret_and_kid() {
        let claims = new_claims("acme", "u1", Capabilities::new(), None, Utc::now(), 60);
        let token = mint_hs256("k1", b"secret", &claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<ClientClaims>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret").unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims, claims);
        assert!(
            jsonwebtoken::decode::<ClientClaims>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(b"other").unwrap(),
                &validation
            )
            .is_err()
        );
    }
}
