//! The one error shape of the HTTP API: RFC 9457 problem details (`application/problem+json`)
//! with a stable machine-readable `code`, and the offending `field` or `limit` when there is one.
//! Every error a request can meet — from a handler, from request parsing, from routing — is
//! turned into this shape; `docs/api.md` lists the codes.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// RFC 9457 problem details.
#[derive(Debug, Clone, Object, serde::Serialize)]
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
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub limit: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, code, detail: detail.into(), field: None, limit: None }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// 400: the request cannot be parsed as the operation's input.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 422: well-formed, but a value is not acceptable.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", detail).with_field(field)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )
        .with_limit(limit)
    }

    /// 500. The cause is logged here and not shown to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error")
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:herald:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            field: self.field.clone(),
            limit: self.limit,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::Conflict => ApiError::conflict("conflict", "resource already exists"),
            other => ApiError::internal(other),
        }
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
        problem_response(&self.problem())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(&self.problem())
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
    (503, "Cluster mode: NATS is unreachable (`cluster_unavailable`); nothing was accepted"),
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
        return problem_response(&api.problem());
    }
    let api = if let Some(e) = err.downcast_ref::<ParseParamError>() {
        ApiError::bad_request("invalid_parameter", e.reason.clone()).with_field(e.name)
    } else if let Some(e) = err.downcast_ref::<ParsePathError>() {
        ApiError::bad_request("invalid_parameter", e.reason.clone()).with_field(e.name)
    } else if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        ApiError::bad_request("malformed_body", e.reason.clone())
    } else if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", e.to_string())
            .with_field("Content-Type")
    } else if err.is::<AuthorizationError>() {
        ApiError::unauthorized("missing_credentials", "send `Authorization: Bearer <token>`")
            .with_field("Authorization")
    } else {
        match err.status() {
            StatusCode::NOT_FOUND => ApiError::not_found("route_not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body too large")
            }
            status if status.is_server_error() => ApiError::internal(&err),
            status => ApiError::new(status, "bad_request", err.to_string()),
        }
    };
    api.into_response()
}
