//! Validation of the names users choose: tenant ids, namespace names, channel names, key ids.
//! Each rule is stated once here and quoted verbatim in error messages and the docs.

/// Why a name was refused; the message is shown to API users as the problem `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError(pub String);

pub const TENANT_ID_RULE: &str =
    "1-63 characters: lowercase letters, digits and '-', starting with a letter or digit";
pub const NAMESPACE_RULE: &str = "1-64 characters: letters, digits, '_' and '-'";
pub const CHANNEL_RULE: &str =
    "1-200 characters: letters, digits and _ - . : @ = (the part before the first ':' names its namespace)";
pub const KID_RULE: &str = "1-128 characters: letters, digits, '_', '-' and '.'";

fn check(value: &str, max: usize, allowed: impl Fn(char) -> bool, rule: &str) -> Result<(), NameError> {
    if value.is_empty() || value.len() > max || !value.chars().all(allowed) {
        return Err(NameError(format!("must be {rule}")));
    }
    Ok(())
}

pub fn tenant_id(value: &str) -> Result<(), NameError> {
    check(value, 63, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-', TENANT_ID_RULE)?;
    if value.starts_with('-') {
        return Err(NameError(format!("must be {TENANT_ID_RULE}")));
    }
    Ok(())
}

pub fn namespace(value: &str) -> Result<(), NameError> {
    check(value, 64, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-', NAMESPACE_RULE)
}

pub fn channel(value: &str) -> Result<(), NameError> {
    check(
        value,
        200,
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '='),
        CHANNEL_RULE,
    )
}

pub fn kid(value: &str) -> Result<(), NameError> {
    check(value, 128, |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'), KID_RULE)
}

/// The namespace a channel belongs to: the part before the first ':', if any.
pub fn namespace_of(channel: &str) -> Option<&str> {
    channel.split_once(':').map(|(ns, _)| ns)
}

/// A display name: 1-200 characters after trimming, no control characters.
pub fn display_name(value: &str) -> Result<(), NameError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 200 || trimmed.chars().any(char::is_control) {
        return Err(NameError("must be 1-200 characters without control characters".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["acme", "a", "acme-2", "0day"] {
            assert!(tenant_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-acme", "Acme", "ac me", "acmé", &"a".repeat(64), "a_b"] {
            assert!(tenant_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channels() {
        for ok in ["chat:room-1", "news", "user@42", "a.b=c", &"x".repeat(200)] {
            assert!(channel(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a,b", "a/b", "a*", "ñ", "\u{202e}evil", &"x".repeat(201)] {
            assert!(channel(bad).is_err(), "{bad}");
        }
        assert_eq!(namespace_of("chat:room:1"), Some("chat"));
        assert_eq!(namespace_of("news"), None);
    }

    #[test]
    fn display_names() {
        assert!(display_name("Acme Inc.").is_ok());
        assert!(display_name("  ").is_err());
        assert!(display_name("a\u{0}b").is_err());
        assert!(display_name(&"é".repeat(200)).is_ok());
        assert!(display_name(&"é".repeat(201)).is_err());
    }
}
