//! The one validator of a message to publish, used by every way in (REST, batch, WebSocket,
//! user-targeted messages): its data (size, nesting), event name and idempotency key. The
//! rules are documented in `docs/api.md` ("Publishing") and `docs/protocol.md` (`publish`).

use serde_json::value::RawValue;

use crate::error::Error;

/// Deepest nesting of arrays and objects accepted in message data. Herald itself never parses
/// the data into a tree, but clients do, and many parsers recurse.
pub const MAX_DATA_DEPTH: usize = 64;
/// Longest event name, in bytes.
pub const MAX_EVENT_BYTES: usize = 64;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Nesting depth of a JSON text, found by a linear scan that skips strings.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn short_text(field: &'static str, value: Option<&str>, max: usize) -> Result<(), Error> {
    match value {
        Some(v) if v.is_empty() || v.len() > max || v.chars().any(char::is_control) => {
            Err(Error::InvalidValue {
                field,
                reason: format!("must be 1-{max} bytes without control characters"),
            })
        }
        _ => Ok(()),
    }
}

/// The optional fields of a publish: `event` and `idempotency_key`.
pub fn fields(event: Option<&str>, idempotency_key: Option<&str>) -> Result<(), Error> {
    short_text("event", event, MAX_EVENT_BYTES)?;
    short_text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY_BYTES)
}

/// Message data: at most `max_bytes` of JSON text, nested at most [`MAX_DATA_DEPTH`] deep.
pub fn data(data: &RawValue, max_bytes: u32) -> Result<(), Error> {
    if data.get().len() > max_bytes as usize {
        return Err(Error::MessageTooLarge { limit: u64::from(max_bytes) });
    }
    if json_depth(data.get()) > MAX_DATA_DEPTH {
        return Err(Error::InvalidValue {
            field: "data",
            reason: format!("is nested deeper than {MAX_DATA_DEPTH} levels"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(json_depth(r#"["[[[[", "\\\"[["]"#), 1);
        assert_eq!(json_depth(&format!("{}{}", "[".repeat(100), "]".repeat(100))), 100);
    }

    #[test]
    fn fields_name_what_is_wrong() {
        assert!(fields(Some("e"), Some("k")).is_ok());
        assert!(fields(None, None).is_ok());
        for (event, key, field) in [
            (Some(""), None, "event"),
            (Some("a\u{7}"), None, "event"),
            (Some(&*"x".repeat(65)), None, "event"),
            (None, Some(""), "idempotency_key"),
            (None, Some("a\nb"), "idempotency_key"),
            (None, Some(&*"x".repeat(129)), "idempotency_key"),
        ] {
            let err = fields(event, key).unwrap_err();
            assert_eq!(err.field(), Some(field), "{event:?} {key:?}");
        }
    }
}
