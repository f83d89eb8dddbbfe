//! Property tests of the parsers a client reaches first (proptest; a bounded run in
//! `cargo xtask test`, `PROPTEST_CASES=100000 cargo test -p herald-core --test properties` for a
//! longer one): the client-frame parser and the JSON depth scan never panic on any input, keep
//! what they must keep, and agree with serde_json.

use herald_core::protocol::{self, Command};
use herald_core::validate::{self, MAX_DATA_DEPTH};
use proptest::prelude::*;

/// JSON-ish text: brackets, quotes, escapes and commas, where parsers' edge cases live.
fn jsonish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just("\"type\"".to_owned()),
            Just("\"subscribe\"".to_owned()),
            Just("\"channel\"".to_owned()),
            Just("\"id\"".to_owned()),
            Just("\"since\"".to_owned()),
            Just("null".to_owned()),
            Just("1e999".to_owned()),
            Just("-0".to_owned()),
            any::<char>().prop_map(String::from),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// The depth of a parsed JSON value.
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn nested() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        "[\\[\\]{}\"\\\\a-z]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(8, 64, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z\\[{\"]{0,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_text_is_parsed_or_refused_without_panicking(text in any::<String>()) {
        let _ = protocol::parse(&text);
    }

    #[test]
    fn jsonish_text_is_parsed_or_refused_without_panicking(text in jsonish()) {
        if let Ok(request) = protocol::parse(&text) {
            // Whatever was accepted is a JSON object.
            prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.is_object()), "{}", text);
            if let Some(id) = request.id {
                prop_assert!(id.get().starts_with(|c: char| c == '"' || c == '-' || c.is_ascii_digit()));
            }
        }
    }

    #[test]
    fn publish_data_is_kept_byte_for_byte(data in nested(), channel in "[a-z:]{1,20}") {
        let text = serde_json::to_string(&data).unwrap();
        let frame = format!(r#"{{"type":"publish","id":1,"channel":"{channel}","data":{text}}}"#);
        match protocol::parse(&frame).expect("a valid publish parses").command {
            Command::Publish { data: parsed, channel: c, .. } => {
                prop_assert_eq!(parsed.get(), text.as_str());
                prop_assert_eq!(c, channel);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn the_depth_scan_agrees_with_serde(data in nested()) {
        let text = serde_json::to_string(&data).unwrap();
        prop_assert_eq!(validate::json_depth(&text), depth(&data));
        let raw = serde_json::value::RawValue::from_string(text).unwrap();
        prop_assert_eq!(validate::data(&raw, u32::MAX).is_ok(), depth(&data) <= MAX_DATA_DEPTH);
    }

    #[test]
    fn the_depth_scan_never_panics(text in any::<String>()) {
        let _ = validate::json_depth(&text);
    }
}
