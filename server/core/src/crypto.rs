//! Secrets: generation, one-way hashing for credentials, and authenticated encryption for the
//! few secrets Herald must be able to read back (tenant HS256 signing secrets).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// `prefix` followed by `bytes` random bytes, base64url-encoded.
pub fn random_token(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(buf))
}

/// Hex SHA-256. Credentials Herald issues carry 256 bits of entropy, so a fast hash is enough
/// to make the stored value useless to someone who reads the database.
pub fn sha256_hex(input: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("must be 32 bytes encoded as base64 (44 characters)")]
    BadEncoding,
    #[error("ciphertext is malformed or was sealed with another secret key")]
    Unseal,
}

/// The node's secret key: seals secrets at rest and signs admin sessions. Every node of a
/// cluster must use the same one.
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

const SEALED_PREFIX: &str = "v1:";

impl MasterKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    pub fn from_base64(encoded: &str) -> Result<Self, KeyError> {
        let raw = STANDARD.decode(encoded.trim()).map_err(|_| KeyError::BadEncoding)?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| KeyError::BadEncoding)?;
        Ok(Self { bytes })
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// A key for one purpose, derived so that a leak of one use does not expose another.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes).expect("any key size");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn seal(&self, plaintext: &[u8]) -> String {
        let cipher = XChaCha20Poly1305::new(&self.derive("seal").into());
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .expect("encryption cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    pub fn unseal(&self, sealed: &str) -> Result<Vec<u8>, KeyError> {
        let encoded = sealed.strip_prefix(SEALED_PREFIX).ok_or(KeyError::Unseal)?;
        let raw = STANDARD.decode(encoded).map_err(|_| KeyError::Unseal)?;
        if raw.len() < 24 {
            return Err(KeyError::Unseal);
        }
        let (nonce, ciphertext) = raw.split_at(24);
        let cipher = XChaCha20Poly1305::new(&self.derive("seal").into());
        cipher.decrypt(XNonce::from_slice(nonce), ciphertext).map_err(|_| KeyError::Unseal)
    }
}

/// A URL, or a comma-separated list of them, fit for a log line: passwords in the userinfo
/// and secret-looking query parameters (`password`, `token`, `secret`, `key`, …) become `***`.
/// Parsed with a real URL parser, so `@` or `:` inside a password, several servers and query
/// strings are all handled; text that is not a URL is replaced whole when it could hold one.
pub fn redact_url(text: &str) -> String {
    text.split(',').map(|part| redact_one(part.trim())).collect::<Vec<_>>().join(",")
}

fn redact_one(part: &str) -> String {
    const SECRET_PARAMS: &[&str] =
        &["password", "pass", "pwd", "token", "secret", "key", "auth", "sslpassword"];
    let Ok(mut url) = url::Url::parse(part) else {
        return if part.contains('@') || part.contains('?') {
            "<unparsable url>".into()
        } else {
            part.to_owned()
        };
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = SECRET_PARAMS.iter().any(|s| k.to_ascii_lowercase().contains(s));
                (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("postgres://u:p@ss@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(
            redact_url("nats://a:one@n1:4222, nats://b:two@n2:4222"),
            "nats://a:***@n1:4222,nats://b:***@n2:4222"
        );
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=hunter2&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact_url("sqlite://./data/herald.db?mode=rwc"), "sqlite://./data/herald.db?mode=rwc");
        for secret in ["hunter2", "one", "two", "p@ss"] {
            assert!(
                !redact_url("postgres://u:p@ss@h/db?password=hunter2,nats://a:one@n,nats://b:two@n")
                    .contains(secret)
            );
        }
    }

    #[test]
    fn seal_round_trips_and_rejects_other_keys() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"tenant secret");
        assert_eq!(key.unseal(&sealed).unwrap(), b"tenant secret");
        assert!(MasterKey::generate().unseal(&sealed).is_err());
        assert!(key.unseal("v1:AAAA").is_err());
        assert!(key.unseal("garbage").is_err());
    }

    #[test]
    fn master_key_parses_only_32_bytes() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::from_base64(&key.to_base64()).unwrap().bytes, key.bytes);
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn hashes_are_stable_hex() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(constant_time_eq("same", "same"));
        assert!(!constant_time_eq("same", "sane"));
        assert!(!constant_time_eq("same", "same+"));
    }
}
