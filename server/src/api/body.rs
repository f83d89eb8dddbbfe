//! `JsonBody<T>`: a JSON request body parsed with serde, so errors name the exact field
//! (`limits.max_connections`, `scopes[2]`) and unknown fields are refused. The OpenAPI schema
//! still comes from `T`'s poem-openapi derive.

use poem::{Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Code};
use crate::state::SharedState;

pub struct JsonBody<T> {
    pub value: T,
    bytes: bytes::Bytes,
}

impl<T> JsonBody<T> {
    /// The body as untyped JSON (for merge patches and audit details); parsed on demand.
    pub fn raw(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes).unwrap_or_default()
    }
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    fn check_content_type(content_type: &str) -> bool {
        matches!(content_type.parse::<mime::Mime>(), Ok(m) if m.type_() == "application"
            && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")))
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// The name inside the first pair of backticks of a serde message (`unknown field `x``).
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// serde_path_to_error already ends the path with an unknown field's name, but not with a
/// missing one's; this yields the full path either way.
fn join_path(path: &str, field: &str) -> String {
    if path == field || path.ends_with(&format!(".{field}")) {
        path.to_owned()
    } else if path.is_empty() || path == "." {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Maps a serde error at `path` to a problem naming the field.
fn body_error(path: String, message: String) -> ApiError {
    if message.starts_with("unknown field") {
        let field = backticked(&message).map(|f| join_path(&path, f)).unwrap_or(path);
        ApiError::new(Code::UnknownField, format!("unknown field `{field}`")).with_field(field)
    } else if message.starts_with("missing field") {
        let field = backticked(&message).map(|f| join_path(&path, f)).unwrap_or(path);
        ApiError::new(Code::MissingField, format!("missing field `{field}`")).with_field(field)
    } else {
        let field = if path == "." { String::new() } else { path };
        let err = ApiError::new(Code::InvalidType, message);
        if field.is_empty() { err } else { err.with_field(field) }
    }
}

/// Parses a request body. Syntax first, so that malformed JSON is told apart from a
/// well-formed body of the wrong shape; then the typed parse, straight from the bytes (raw JSON
/// fields such as message data are borrowed, not re-encoded).
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(Code::MalformedJson, "the request body is empty"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map_err(|e| ApiError::new(Code::MalformedJson, format!("body is not valid JSON: {e}")))?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        body_error(path, e.into_inner().to_string())
    })
}

impl<T: Type + DeserializeOwned + Send> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let limit = request
            .data::<SharedState>()
            .map_or(crate::config::DEFAULT_MAX_BODY_BYTES, |s| s.config.max_body_bytes);
        let bytes = body.take()?.into_bytes_limit(limit).await.map_err(|e| match e {
            poem::error::ReadBodyError::PayloadTooLarge => ApiError::too_large(limit as u64),
            other => ApiError::new(Code::MalformedBody, other.to_string()),
        })?;
        let value = parse_json(&bytes)?;
        Ok(JsonBody { value, bytes })
    }
}

impl<'a, T: Type + DeserializeOwned + Send> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType { content_type: Self::CONTENT_TYPE, schema: Self::schema_ref() }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if Self::check_content_type(ct) => {
                <Self as ParsePayload>::from_request(request, body).await
            }
            Some(ct) => Err(ApiError::new(
                Code::UnsupportedMediaType,
                format!("expected application/json, got `{ct}`"),
            )
            .with_field("Content-Type")
            .into()),
            None => Err(ApiError::new(Code::UnsupportedMediaType, "send `Content-Type: application/json`")
                .with_field("Content-Type")
                .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Option<Inner>,
    }

    fn parse(json: &str) -> ApiError {
        let raw: serde_json::Value = serde_json::from_str(json).unwrap();
        let err = serde_path_to_error::deserialize::<_, Outer>(&raw).unwrap_err();
        body_error(err.path().to_string(), err.into_inner().to_string())
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(r#"{"name": "x", "extra": 1}"#);
        assert_eq!((e.code, e.field.as_deref()), (Code::UnknownField, Some("extra")));
        let e = parse(r#"{"inner": {"n": 1}}"#);
        assert_eq!((e.code, e.field.as_deref()), (Code::MissingField, Some("name")));
        let e = parse(r#"{"name": "x", "inner": {"n": "one"}}"#);
        assert_eq!((e.code, e.field.as_deref()), (Code::InvalidType, Some("inner.n")));
        let e = parse(r#"{"name": "x", "inner": {"n": 1, "m": 2}}"#);
        assert_eq!((e.code, e.field.as_deref()), (Code::UnknownField, Some("inner.m")));
    }

    proptest::proptest! {
        /// Any bytes: a value or a problem with one of the body codes, never a panic.
        #[test]
        fn any_body_is_parsed_or_refused_with_a_body_code(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Err(e) = parse_json::<Outer>(&bytes) {
                proptest::prop_assert!(matches!(
                    e.code,
                    Code::MalformedJson | Code::UnknownField | Code::MissingField | Code::InvalidType
                ), "{:?}", e.code);
            }
        }

        /// Well-formed JSON of the wrong shape names the field at fault.
        #[test]
        fn wrong_shapes_name_their_field(key in "[a-z]{1,8}", n in proptest::prelude::any::<i64>()) {
            let body = format!(r#"{{"name": "x", "inner": {{"n": 1, "{key}x": {n}}}}}"#);
            let e = parse_json::<Outer>(body.as_bytes()).unwrap_err();
            proptest::prop_assert_eq!(e.code, Code::UnknownField);
            proptest::prop_assert_eq!(e.field, Some(format!("inner.{key}x")));
        }
    }
}
