//! Property tests (proptest, a bounded run in `cargo xtask test`; `PROPTEST_CASES=100000` for a
//! longer one) of the name rules and capability patterns: arbitrary input never panics, and the
//! glob matcher agrees with a plain recursive reference.

use herald_types::{names, tokens};
use proptest::prelude::*;

/// The obviously correct (exponential) glob: `*` matches any run of bytes.
fn reference(p: &[u8], c: &[u8]) -> bool {
    match p.split_first() {
        None => c.is_empty(),
        Some((b'*', rest)) => (0..=c.len()).any(|i| reference(rest, &c[i..])),
        Some((x, rest)) => c.split_first().is_some_and(|(y, tail)| x == y && reference(rest, tail)),
    }
}

proptest! {
    #[test]
    fn glob_matches_like_the_reference(pattern in "[ab:*]{0,12}", channel in "[ab:]{0,12}") {
        prop_assert_eq!(tokens::pattern_matches(&pattern, &channel), reference(pattern.as_bytes(), channel.as_bytes()));
    }

    #[test]
    fn name_rules_never_panic_and_accept_only_their_alphabet(value in any::<String>()) {
        if names::channel(&value).is_ok() {
            prop_assert!(!value.is_empty() && value.len() <= 200);
            prop_assert!(value.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:@=".contains(c)));
        }
        let _ = names::tenant_id(&value);
        let _ = names::namespace(&value);
        let _ = names::kid(&value);
        let _ = names::display_name(&value);
        let _ = names::namespace_of(&value);
        if tokens::validate_pattern(&value).is_ok() {
            prop_assert!(value.len() <= 200);
        }
    }

    #[test]
    fn a_pattern_without_stars_matches_only_itself(channel in "[a-z0-9:._-]{1,40}", other in "[a-z0-9:._-]{1,40}") {
        prop_assert!(tokens::pattern_matches(&channel, &channel));
        prop_assert_eq!(tokens::pattern_matches(&channel, &other), channel == other);
    }
}
