//! Signing and verifying Herald's webhook requests, in the open **Standard Webhooks** scheme,
//! so a receiver can check them with a maintained library in any language (PyPI and npm
//! `standardwebhooks`) or with this crate in Rust.
//!
//! A request carries three headers:
//!
//! - `webhook-id`: the event's unique id (the same on every retry, so a receiver can drop
//!   repeats);
//! - `webhook-timestamp`: Unix seconds when this attempt was signed;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per
//!   active secret, separated by spaces (two while a secret is being rotated).
//!
//! Secrets are shown as `whsec_` followed by the base64 of their bytes. A receiver refuses a
//! request whose timestamp is further than the tolerance (5 minutes by default) from its clock,
//! so a captured request cannot be replayed later, and one whose body or id was altered.
//!
//! ```
//! use herald_webhooks::{Secret, sign_headers, verify, DEFAULT_TOLERANCE_SECONDS};
//!
//! let secret = Secret::generate();
//! let text = secret.to_string(); // "whsec_…", what the tenant stores
//! let body = br#"{"type":"channel.occupied"}"#;
//! let headers = sign_headers(&[secret], "evt_1", 1_700_000_000, body);
//! let receiver = [Secret::parse(&text).unwrap()];
//! let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str());
//! assert!(verify(&receiver, get, body, 1_700_000_030, DEFAULT_TOLERANCE_SECONDS).is_ok());
//! assert!(verify(&receiver, get, b"{}", 1_700_000_030, DEFAULT_TOLERANCE_SECONDS).is_err());
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far a request's timestamp may be from the receiver's clock, as the Standard Webhooks
/// libraries check it.
pub const DEFAULT_TOLERANCE_SECONDS: u64 = 5 * 60;
const PREFIX: &str = "whsec_";
/// Bytes of a generated secret.
const SECRET_BYTES: usize = 32;

/// A signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)") // Never printed.
    }
}

/// Its text form: `whsec_` and the base64 of the bytes.
impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", STANDARD.encode(&self.0))
    }
}

/// Why a secret or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The secret is not `whsec_` and base64 (or is empty).
    BadSecret,
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    BadTimestamp,
    /// The timestamp is older than the tolerance allows: possibly a replay.
    TooOld,
    /// The timestamp is further in the future than the tolerance allows.
    TooNew,
    /// No `v1` signature matches the body with any of the secrets.
    NoMatch,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadSecret => f.write_str("the secret is not whsec_ and base64"),
            Error::MissingHeader(h) => write!(f, "missing header {h}"),
            Error::BadTimestamp => f.write_str("webhook-timestamp is not Unix seconds"),
            Error::TooOld => f.write_str("the request is older than the tolerance (replayed?)"),
            Error::TooNew => f.write_str("the request's timestamp is in the future"),
            Error::NoMatch => f.write_str("no signature matches"),
        }
    }
}

impl std::error::Error for Error {}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Secret {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Secret(bytes)
    }

    /// Reads `whsec_<base64>` (the prefix may be left out, as the other libraries allow).
    pub fn parse(text: &str) -> Result<Secret, Error> {
        let b64 = text.trim().strip_prefix(PREFIX).unwrap_or(text.trim());
        let bytes = STANDARD.decode(b64).map_err(|_| Error::BadSecret)?;
        if bytes.is_empty() {
            return Err(Error::BadSecret);
        }
        Ok(Secret(bytes))
    }

    /// The raw bytes, for sealing at rest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Secret, Error> {
        if bytes.is_empty() { Err(Error::BadSecret) } else { Ok(Secret(bytes)) }
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64 signature>` of one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!("v1,{}", STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes()))
    }
}

/// The three headers of a request signed with every secret in `secrets`.
pub fn sign_headers(
    secrets: &[Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let signatures: Vec<String> = secrets.iter().map(|s| s.sign(id, timestamp, body)).collect();
    [
        (HEADER_ID, id.to_owned()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_SIGNATURE, signatures.join(" ")),
    ]
}

/// Checks a request: `header` looks a header up by its lower-case name, `now` is the receiver's
/// clock in Unix seconds. Any of `secrets` may match (rotation).
pub fn verify<'a>(
    secrets: &[Secret],
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    now: i64,
    tolerance_seconds: u64,
) -> Result<(), Error> {
    let id = header(HEADER_ID).ok_or(Error::MissingHeader(HEADER_ID))?;
    let timestamp = header(HEADER_TIMESTAMP).ok_or(Error::MissingHeader(HEADER_TIMESTAMP))?;
    let signatures = header(HEADER_SIGNATURE).ok_or(Error::MissingHeader(HEADER_SIGNATURE))?;
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| Error::BadTimestamp)?;
    let tolerance = i64::try_from(tolerance_seconds).unwrap_or(i64::MAX);
    if timestamp < now.saturating_sub(tolerance) {
        return Err(Error::TooOld);
    }
    if timestamp > now.saturating_add(tolerance) {
        return Err(Error::TooNew);
    }
    for given in signatures.split(' ') {
        let Some(("v1", b64)) = given.split_once(',') else { continue };
        let Ok(given) = STANDARD.decode(b64) else { continue };
        if secrets.iter().any(|s| s.mac(id, timestamp, body).verify_slice(&given).is_ok()) {
            return Ok(());
        }
    }
    Err(Error::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(headers: &'a [(&'static str, String); 3]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        |name| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_known_vector_of_the_scheme() {
        // The example of the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn altered_replayed_or_foreign_requests_are_refused() {
        let (old, new) = (Secret::generate(), Secret::generate());
        let body = br#"{"events":[]}"#;
        let headers = sign_headers(&[old.clone(), new.clone()], "evt_1", 1000, body);
        // Either secret of a rotation verifies.
        assert_eq!(verify(std::slice::from_ref(&old), lookup(&headers), body, 1000, 300), Ok(()));
        assert_eq!(verify(std::slice::from_ref(&new), lookup(&headers), body, 1000, 300), Ok(()));
        assert_eq!(verify(&[Secret::generate()], lookup(&headers), body, 1000, 300), Err(Error::NoMatch));
        assert_eq!(
            verify(std::slice::from_ref(&old), lookup(&headers), b"{\"events\":[1]}", 1000, 300),
            Err(Error::NoMatch)
        );
        assert_eq!(
            verify(std::slice::from_ref(&old), lookup(&headers), body, 1000 + 301, 300),
            Err(Error::TooOld)
        );
        assert_eq!(
            verify(std::slice::from_ref(&old), lookup(&headers), body, 1000 - 301, 300),
            Err(Error::TooNew)
        );
        let mut other_id = headers.clone();
        other_id[0].1 = "evt_2".into();
        assert_eq!(
            verify(std::slice::from_ref(&old), lookup(&other_id), body, 1000, 300),
            Err(Error::NoMatch)
        );
        let none = |_: &str| None;
        assert_eq!(verify(&[old], none, body, 1000, 300), Err(Error::MissingHeader(HEADER_ID)));
    }

    #[test]
    fn secrets_round_trip_and_never_print() {
        let s = Secret::generate();
        assert_eq!(Secret::parse(&s.to_string()).unwrap(), s);
        assert!(s.to_string().starts_with("whsec_"));
        assert_eq!(format!("{s:?}"), "Secret(…)");
        assert_eq!(Secret::parse("whsec_"), Err(Error::BadSecret));
        assert_eq!(Secret::parse("whsec_%%%"), Err(Error::BadSecret));
    }
}
