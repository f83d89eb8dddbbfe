//! The one error shape of the HTTP API: RFC 9457 problem details (`application/problem+json`)
//! with a stable machine-readable `code`, and the offending `field` or `limit` when there is one.
//! Every error a request can meet — from a handler, from request parsing, from routing — is
//! turned into this shape. Codes and their statuses come from the core's one table
//! ([`herald_core::error::Code`]); a core [`herald_core::Error`] converts here, once, so REST,
//! SSE and long polling answer a condition exactly as a WebSocket `error` frame names it.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

pub use herald_core::error::Code;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// RFC 9457 problem details.
#[derive(Debug, Clone, Object, serde::Serialize)]
#[oai(skip_serializing_if_is_none)]
pub struct Problem {
    /// `urn:herald:problem:<code>`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the status.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// Stable machine-readable error code.
    pub code: String,
    /// The request field, parameter or header at fault.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The limit that was exceeded, when one was.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The channel refused, when an SSE stream or a long poll was refused for one of its
    /// channels (the others could be used).
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub detail: String,
    pub field: Option<String>,
    pub limit: Option<u64>,
    pub channel: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with its code's status.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code, detail: detail.into(), field: None, limit: None, channel: None }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// 422: well-formed, but a value is not acceptable.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(Code::InvalidValue, detail).with_field(field)
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(Code::PayloadTooLarge, format!("request body exceeds {limit} bytes")).with_limit(limit)
    }

    /// 500. The cause is logged here and not shown to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(Code::Internal, "internal server error")
    }

    /// The answer every surface sends for this error; a refusal by a limit is counted.
    fn response(&self) -> Response {
        herald_core::metrics::metrics().refused(self.code);
        problem_response(&self.problem())
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:herald:problem:{}", self.code.as_str()),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_owned(),
            field: self.field.clone(),
            limit: self.limit,
            channel: self.channel.clone(),
        }
    }
}

impl From<herald_store::StoreError> for ApiError {
    fn from(err: herald_store::StoreError) -> Self {
        match err {
            herald_store::StoreError::Conflict => ApiError::new(Code::Conflict, "resource already exists"),
            other => ApiError::internal(other),
        }
    }
}

impl From<herald_core::StoreError> for ApiError {
    fn from(err: herald_core::StoreError) -> Self {
        match err {
            herald_core::StoreError::Conflict => ApiError::new(Code::Conflict, "resource already exists"),
            other => ApiError::internal(other),
        }
    }
}

/// The one conversion from a core error: code, status, field and limit from the table.
impl From<herald_core::Error> for ApiError {
    fn from(err: herald_core::Error) -> Self {
        if let herald_core::Error::Store(cause) = &err {
            return ApiError::internal(cause);
        }
        let mut api = ApiError::new(err.code(), err.detail());
        api.field = err.field().map(str::to_owned);
        api.limit = err.limit();
        api
    }
}

fn problem_response(problem: &Problem) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type(PROBLEM_CONTENT_TYPE)
        .body(serde_json::to_vec(problem).expect("problem serialises"))
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        self.response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.response()
    }
}

/// The statuses every operation may answer with; documented once for all of them.
const DOCUMENTED: &[(u16, &str)] = &[
    (400, "Malformed request: unparsable JSON, unknown field, wrong type, bad parameter"),
    (401, "Missing or invalid credentials"),
    (403, "Credentials valid but not allowed: missing scope, admin only, tenant suspended"),
    (404, "No such resource (or it belongs to another tenant)"),
    (409, "Conflict with the current state, e.g. a duplicate"),
    (413, "Request body or message too large; `limit` holds the limit"),
    (422, "A value is not acceptable; `field` names it"),
    (429, "Rate limit reached; `limit` holds the limit"),
    (500, "Internal error"),
    (
        503,
        "Unavailable: cluster mode with NATS unreachable (`cluster_unavailable`; nothing was accepted), or tokens cannot be checked",
    ),
];

impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: DOCUMENTED
                .iter()
                .map(|(status, description)| MetaResponse {
                    description,
                    status: Some(*status),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_CONTENT_TYPE,
                        schema: <Problem as Type>::schema_ref(),
                    }],
                    headers: vec![],
                })
                .collect(),
        }
    }

    fn register(registry: &mut Registry) {
        <Problem as Type>::register(registry);
    }
}

/// Turns any error that escaped a handler (routing, parameter parsing, authentication, body
/// limits) into a problem response, so clients see one shape everywhere.
pub async fn any_error_to_problem(err: poem::Error) -> Response {
    use poem_openapi::error::{
        AuthorizationError, ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
    };
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return api.response();
    }
    let api = if let Some(e) = err.downcast_ref::<ParseParamError>() {
        ApiError::new(Code::InvalidParameter, e.reason.clone()).with_field(e.name)
    } else if let Some(e) = err.downcast_ref::<ParsePathError>() {
        ApiError::new(Code::InvalidParameter, e.reason.clone()).with_field(e.name)
    } else if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        ApiError::new(Code::MalformedBody, e.reason.clone())
    } else if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        ApiError::new(Code::UnsupportedMediaType, e.to_string()).with_field("Content-Type")
    } else if err.is::<AuthorizationError>() {
        ApiError::new(Code::MissingCredentials, "send `Authorization: Bearer <token>`")
            .with_field("Authorization")
    } else {
        match err.status() {
            StatusCode::NOT_FOUND => ApiError::new(Code::RouteNotFound, "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ApiError::new(Code::MethodNotAllowed, "method not allowed here")
            }
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(Code::PayloadTooLarge, "request body too large"),
            status if status.is_server_error() => ApiError::internal(&err),
            status => ApiError { status, ..ApiError::new(Code::BadRequest, err.to_string()) },
        }
    };
    api.into_response()
}
