//! Resume cursors for SSE (`id:` / `Last-Event-ID`) and long polling (`cursor`).
//!
//! A cursor holds, for each channel of the request in order, the epoch and position the client
//! has reached, plus (for long polling) the session it belongs to. It is opaque to clients and
//! compact: binary, base64url, with no channel names (the request names them). An HMAC over
//! the tenant, the channel list and the payload makes it tamper-evident: a forged, truncated or
//! other tenant's cursor is refused with 400, never trusted.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use herald_core::channel::StreamPosition;

const VERSION: u8 = 1;
const MAC_LEN: usize = 12;
pub const SESSION_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Long-poll session id; absent for SSE.
    pub session: Option<[u8; SESSION_LEN]>,
    /// One entry per requested channel, in request order.
    pub positions: Vec<StreamPosition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidCursor;

fn mac(key: &[u8; 32], tenant: &str, channels: &[String], payload: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key size");
    m.update(tenant.as_bytes());
    m.update(&[0]);
    for c in channels {
        m.update(c.as_bytes());
        m.update(&[0]);
    }
    m.update(payload);
    let full = m.finalize().into_bytes();
    full[..MAC_LEN].try_into().expect("slice of the right length")
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl Cursor {
    pub fn encode(&self, key: &[u8; 32], tenant: &str, channels: &[String]) -> String {
        let mut payload = Vec::with_capacity(2 + SESSION_LEN + self.positions.len() * 12);
        payload.push(VERSION);
        match &self.session {
            Some(id) => {
                payload.push(SESSION_LEN as u8);
                payload.extend_from_slice(id);
            }
            None => payload.push(0),
        }
        for p in &self.positions {
            let epoch = p.epoch.as_bytes();
            payload.push(epoch.len().min(255) as u8);
            payload.extend_from_slice(&epoch[..epoch.len().min(255)]);
            put_varint(&mut payload, p.position);
        }
        let tag = mac(key, tenant, channels, &payload);
        payload.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(payload)
    }

    pub fn decode(
        text: &str,
        key: &[u8; 32],
        tenant: &str,
        channels: &[String],
    ) -> Result<Cursor, InvalidCursor> {
        if text.len() > 4096 {
            return Err(InvalidCursor);
        }
        let raw = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| InvalidCursor)?;
        if raw.len() < 2 + MAC_LEN {
            return Err(InvalidCursor);
        }
        let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
        let expected = mac(key, tenant, channels, payload);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], tag)) {
            return Err(InvalidCursor);
        }
        let mut input = payload;
        let take = |input: &mut &[u8], n: usize| -> Result<Vec<u8>, InvalidCursor> {
            if input.len() < n {
                return Err(InvalidCursor);
            }
            let (head, rest) = input.split_at(n);
            *input = rest;
            Ok(head.to_vec())
        };
        if take(&mut input, 1)?[0] != VERSION {
            return Err(InvalidCursor);
        }
        let session = match take(&mut input, 1)?[0] as usize {
            0 => None,
            SESSION_LEN => Some(take(&mut input, SESSION_LEN)?.try_into().map_err(|_| InvalidCursor)?),
            _ => return Err(InvalidCursor),
        };
        let mut positions = Vec::with_capacity(channels.len());
        for _ in channels {
            let len = take(&mut input, 1)?[0] as usize;
            let epoch = String::from_utf8(take(&mut input, len)?).map_err(|_| InvalidCursor)?;
            let position = get_varint(&mut input).ok_or(InvalidCursor)?;
            positions.push(StreamPosition { position, epoch });
        }
        if !input.is_empty() {
            return Err(InvalidCursor);
        }
        Ok(Cursor { session, positions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chans(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn sample() -> Cursor {
        Cursor {
            session: Some([7; SESSION_LEN]),
            positions: vec![
                StreamPosition { position: 0, epoch: "abcdefgh".into() },
                StreamPosition { position: 1_000_000_007, epoch: "zyxwvuts".into() },
            ],
        }
    }

    #[test]
    fn round_trips_and_is_compact() {
        let key = [1; 32];
        let channels = chans(&["chat:a", "news"]);
        let text = sample().encode(&key, "acme", &channels);
        assert!(text.len() < 80, "{text}");
        assert_eq!(Cursor::decode(&text, &key, "acme", &channels).unwrap(), sample());
        let sse = Cursor { session: None, positions: sample().positions };
        assert_eq!(
            Cursor::decode(&sse.encode(&key, "acme", &channels), &key, "acme", &channels).unwrap(),
            sse
        );
    }

    #[test]
    fn refuses_tampering_and_reuse_elsewhere() {
        let key = [1; 32];
        let channels = chans(&["chat:a", "news"]);
        let text = sample().encode(&key, "acme", &channels);
        assert!(Cursor::decode(&text, &key, "other", &channels).is_err(), "another tenant");
        assert!(Cursor::decode(&text, &key, "acme", &chans(&["news", "chat:a"])).is_err(), "other channels");
        assert!(Cursor::decode(&text, &[2; 32], "acme", &channels).is_err(), "another node key");
        let mut raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        raw[5] ^= 1;
        assert!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw), &key, "acme", &channels).is_err(),
            "flipped bit"
        );
        for bad in ["", "!!!", "AAAA", &text[..text.len() - 2], &"A".repeat(5000)] {
            assert!(Cursor::decode(bad, &key, "acme", &channels).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_refused_without_panicking(text in proptest::prelude::any::<String>()) {
            let channels = chans(&["a", "b"]);
            proptest::prop_assert!(Cursor::decode(&text, &[3; 32], "acme", &channels).is_err());
        }

        #[test]
        fn cursors_round_trip_and_any_change_is_refused(
            positions in proptest::collection::vec((proptest::prelude::any::<u64>(), "[A-Za-z0-9_-]{0,20}"), 1..8),
            session in proptest::option::of(proptest::prelude::any::<[u8; SESSION_LEN]>()),
            flip in proptest::prelude::any::<usize>(),
        ) {
            let key = [9; 32];
            let channels: Vec<String> = (0..positions.len()).map(|i| format!("c{i}")).collect();
            let cursor = Cursor {
                session,
                positions: positions.into_iter().map(|(position, epoch)| StreamPosition { position, epoch }).collect(),
            };
            let text = cursor.encode(&key, "acme", &channels);
            proptest::prop_assert_eq!(Cursor::decode(&text, &key, "acme", &channels).unwrap(), cursor);
            // Any single changed character is refused (or decodes to the very same bytes).
            let mut bytes = text.clone().into_bytes();
            let i = flip % bytes.len();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != text {
                proptest::prop_assert!(Cursor::decode(&changed, &key, "acme", &channels).is_err());
            }
        }
    }
}
