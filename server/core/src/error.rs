//! The one table of error codes, and the core's error type.
//!
//! Every refusal Herald answers with has one row in [`Code`]: its stable machine-readable code
//! (the `code` of a problem document and of a WebSocket `error` frame), its HTTP status, and
//! what it means. REST, WebSocket, SSE and long polling all take the code and the status from
//! here, so the same condition gets the same answer on every surface. Conditions that end a
//! connection instead of refusing one command have a close code in [`crate::Disconnect`].
//!
//! [`Error`] is what the delivery core returns; each variant names its row once, in
//! [`Error::code`].

use std::fmt;

macro_rules! codes {
    ($($variant:ident = $code:literal, $status:literal, $meaning:literal;)*) => {
        /// A stable error code with its HTTP status. `docs/api.md` and `docs/protocol.md` list
        /// them (a test checks every code is documented).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $meaning] $variant,)*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as clients see it.
            pub const fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// The HTTP status that carries it.
            pub const fn status(self) -> u16 {
                match self { $(Code::$variant => $status,)* }
            }

            /// What it means, for people.
            pub const fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning,)* }
            }

            /// The code for a string, if there is one.
            pub fn parse(code: &str) -> Option<Code> {
                match code { $($code => Some(Code::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    // Requests that cannot be read.
    BadRequest = "bad_request", 400, "The request or frame cannot be read as the operation's input.";
    MalformedBody = "malformed_body", 400, "The body cannot be parsed.";
    MalformedJson = "malformed_json", 400, "The body is not valid JSON.";
    UnknownField = "unknown_field", 400, "The body has a field the operation does not know.";
    MissingField = "missing_field", 400, "A required field is missing.";
    InvalidType = "invalid_type", 400, "A field has the wrong JSON type.";
    InvalidParameter = "invalid_parameter", 400, "A path or query parameter is not acceptable.";
    InvalidCursor = "invalid_cursor", 400, "A resume cursor was forged, is for other channels or is damaged.";
    InvalidChannel = "invalid_channel", 422, "A channel name breaks the naming rule.";
    WebsocketUpgradeRequired = "websocket_upgrade_required", 426, "The WebSocket endpoint was called without an upgrade.";
    // Who is calling.
    MissingCredentials = "missing_credentials", 401, "No credential was sent.";
    InvalidCredentials = "invalid_credentials", 401, "The credential is not known.";
    SessionExpired = "session_expired", 401, "The admin session expired.";
    ApiKeyRevoked = "api_key_revoked", 401, "The API key was revoked.";
    ApiKeyExpired = "api_key_expired", 401, "The API key expired.";
    InvalidToken = "invalid_token", 401, "The client token was refused.";
    TokenMalformed = "token_malformed", 401, "The client token cannot be decoded.";
    AlgorithmNotAllowed = "algorithm_not_allowed", 401, "The client token's algorithm is not accepted.";
    UnknownTenant = "unknown_tenant", 401, "The client token names no known tenant.";
    WrongTenant = "wrong_tenant", 401, "The client token is for another tenant.";
    UnknownKey = "unknown_key", 401, "The client token's key id is not an active signing key.";
    AlgorithmMismatch = "algorithm_mismatch", 401, "The client token's algorithm is not its key's.";
    BadSignature = "bad_signature", 401, "The client token's signature does not verify.";
    TokenExpired = "token_expired", 401, "The token expired.";
    TokenNotYetValid = "token_not_yet_valid", 401, "The token is not valid yet (`nbf`).";
    TokenRevoked = "token_revoked", 401, "The token was revoked.";
    // Allowed or not.
    AdminRequired = "admin_required", 403, "Only the operator may do this.";
    MissingScope = "missing_scope", 403, "The API key lacks the scope this needs.";
    ScopeEscalation = "scope_escalation", 403, "A key may not grant scopes it does not have.";
    TenantSuspended = "tenant_suspended", 403, "The tenant is suspended.";
    OriginNotAllowed = "origin_not_allowed", 403, "The page's Origin is not in the tenant's allowed origins.";
    PermissionDenied = "permission_denied", 403, "The token has no capability for this action on this channel.";
    PublishNotAllowed = "publish_not_allowed", 403, "The channel's `client_publish` option is off.";
    Disconnected = "disconnected", 403, "The user was disconnected through the API (close code 4006); do not reconnect.";
    PresenceDisabled = "presence_disabled", 403, "The channel's `presence` option is off.";
    TokenMismatch = "token_mismatch", 403, "A refreshed token is for another user.";
    ProxyDenied = "proxy_denied", 403, "The tenant's proxy endpoint refused this; the message holds its reason.";
    // Not there.
    RouteNotFound = "route_not_found", 404, "No such route.";
    TenantNotFound = "tenant_not_found", 404, "No such tenant (or it belongs to another).";
    NamespaceNotFound = "namespace_not_found", 404, "No such namespace.";
    ChannelNotFound = "channel_not_found", 404, "The channel was not created and may not exist implicitly.";
    ApiKeyNotFound = "api_key_not_found", 404, "No such API key.";
    SigningKeyNotFound = "signing_key_not_found", 404, "No such signing key.";
    WebhookNotFound = "webhook_not_found", 404, "No such webhook.";
    DeliveryNotFound = "delivery_not_found", 404, "No such delivery of this webhook (or it was pruned from the log).";
    NotSubscribed = "not_subscribed", 404, "The connection is not subscribed to the channel.";
    MethodNotAllowed = "method_not_allowed", 405, "The route does not take this method.";
    // Conflicts with the current state.
    Conflict = "conflict", 409, "The resource already exists.";
    TenantExists = "tenant_exists", 409, "A tenant with this id exists.";
    NamespaceExists = "namespace_exists", 409, "A namespace with this name exists.";
    ChannelExists = "channel_exists", 409, "A channel with this name exists.";
    SigningKeyExists = "signing_key_exists", 409, "A signing key with this kid exists.";
    NoSigningKey = "no_signing_key", 409, "The tenant has no active HS256 key to mint with.";
    AlreadyConnected = "already_connected", 409, "The connection is already authenticated.";
    AlreadySubscribed = "already_subscribed", 409, "The connection is already subscribed to the channel.";
    Closed = "closed", 409, "The connection is closing.";
    DeliveryQueued = "delivery_queued", 409, "The delivery is still queued or being sent; only a finished one can be replayed.";
    // Too much.
    PayloadTooLarge = "payload_too_large", 413, "The request body is too large; `limit` holds the limit.";
    MessageTooLarge = "message_too_large", 413, "Message data is larger than the channel's or tenant's `max_message_bytes`; `limit` holds it.";
    UnsupportedMediaType = "unsupported_media_type", 415, "The body is not `application/json`.";
    InvalidValue = "invalid_value", 422, "A value is not acceptable; `field` names it.";
    UrlNotAllowed = "url_not_allowed", 422, "Herald may not call this URL: not http(s), credentials in it, or a private address the operator did not allow; `field` names it.";
    QuotaExceeded = "quota_exceeded", 403, "A tenant quota would be exceeded; `limit` holds it.";
    TooManySubscriptions = "too_many_subscriptions", 422, "The connection has as many subscriptions as allowed; `limit` holds it.";
    TooManySubscribers = "too_many_subscribers", 422, "The channel has `max_subscribers` subscribers; `limit` holds it.";
    ConnectionLimit = "connection_limit", 429, "The tenant has reached its connection limit.";
    RateLimited = "rate_limited", 429, "The tenant's `max_publishes_per_second` is used up; `limit` holds it.";
    // Herald's side.
    Internal = "internal", 500, "Internal error (logged, not shown).";
    AuthUnavailable = "auth_unavailable", 503, "Tokens cannot be checked right now; retry.";
    ClusterUnavailable = "cluster_unavailable", 503, "Cluster mode: NATS is unreachable; nothing was accepted, retry shortly.";
    ProxyUnavailable = "proxy_unavailable", 503, "The tenant's proxy endpoint failed or did not answer in time, and its failure policy is to deny.";
    Unavailable = "unavailable", 503, "The session or node cannot serve this right now; retry.";
    NotReady = "not_ready", 503, "The node is not ready.";
}

impl Code {
    /// A quota or limit refused it (counted in `herald_limit_refusals_total`).
    pub const fn is_limit(self) -> bool {
        matches!(
            self,
            Code::PayloadTooLarge
                | Code::MessageTooLarge
                | Code::QuotaExceeded
                | Code::TooManySubscriptions
                | Code::TooManySubscribers
                | Code::ConnectionLimit
                | Code::RateLimited
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the database behind the store answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("database error: {0}")]
    Db(String),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

/// An error of the delivery core: a refused publish, subscribe, history or presence request,
/// or a backend that cannot serve it. Each variant has one row in [`Code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such channel")]
    ChannelNotFound,
    #[error("{0}")]
    InvalidChannel(String),
    /// A value of a request is not acceptable (the [`crate::validate`] rules).
    #[error("`{field}` {reason}")]
    InvalidValue { field: &'static str, reason: String },
    #[error("data exceeds {limit} bytes")]
    MessageTooLarge { limit: u64 },
    #[error("the tenant may publish {limit} messages per second")]
    RateLimited { limit: u64 },
    #[error("the token has no {action} capability for this channel")]
    PermissionDenied { action: &'static str },
    #[error("clients may not publish to this channel")]
    PublishNotAllowed,
    #[error("presence is not enabled on this channel")]
    PresenceDisabled,
    #[error("at most {limit} subscriptions per connection")]
    TooManySubscriptions { limit: u64 },
    #[error("the channel allows {limit} subscribers")]
    TooManySubscribers { limit: u64 },
    #[error("already subscribed to this channel")]
    AlreadySubscribed,
    #[error("not subscribed to this channel")]
    NotSubscribed,
    #[error("the tenant no longer exists")]
    TenantNotFound,
    /// A tenant quota of this node (live channels) is used up.
    #[error("the tenant may have at most {limit} {what} live on a node")]
    QuotaExceeded { what: &'static str, limit: u64 },
    #[error("the connection is closing")]
    Closed,
    /// Cluster mode: NATS cannot be reached (or did not acknowledge); nothing was accepted.
    #[error("the cluster backend is unreachable; nothing was accepted, retry shortly")]
    ClusterUnavailable(String),
    /// The tenant's proxy answered deny, with this reason.
    #[error("refused by the tenant's proxy: {0}")]
    ProxyDenied(String),
    /// The tenant's proxy failed (and its policy denies).
    #[error("the tenant's proxy did not answer usably; retry")]
    ProxyUnavailable(String),
    #[error("temporarily unavailable")]
    Store(#[from] StoreError),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::ChannelNotFound => Code::ChannelNotFound,
            Error::InvalidChannel(_) => Code::InvalidChannel,
            Error::InvalidValue { .. } => Code::InvalidValue,
            Error::MessageTooLarge { .. } => Code::MessageTooLarge,
            Error::RateLimited { .. } => Code::RateLimited,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::PublishNotAllowed => Code::PublishNotAllowed,
            Error::PresenceDisabled => Code::PresenceDisabled,
            Error::TooManySubscriptions { .. } => Code::TooManySubscriptions,
            Error::TooManySubscribers { .. } => Code::TooManySubscribers,
            Error::AlreadySubscribed => Code::AlreadySubscribed,
            Error::NotSubscribed => Code::NotSubscribed,
            Error::TenantNotFound => Code::TenantNotFound,
            Error::QuotaExceeded { .. } => Code::QuotaExceeded,
            Error::Closed => Code::Closed,
            Error::ClusterUnavailable(_) => Code::ClusterUnavailable,
            Error::ProxyDenied(_) => Code::ProxyDenied,
            Error::ProxyUnavailable(_) => Code::ProxyUnavailable,
            Error::Store(_) => Code::Internal,
        }
    }

    /// The limit that was hit, when one was.
    pub fn limit(&self) -> Option<u64> {
        match self {
            Error::MessageTooLarge { limit }
            | Error::RateLimited { limit }
            | Error::TooManySubscriptions { limit }
            | Error::TooManySubscribers { limit }
            | Error::QuotaExceeded { limit, .. } => Some(*limit),
            _ => None,
        }
    }

    /// The request field at fault, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Error::InvalidValue { field, .. } => Some(field),
            Error::MessageTooLarge { .. } => Some("data"),
            _ => None,
        }
    }

    /// What clients are told. Causes that are Herald's own (database, NATS) are logged here
    /// and replaced by a generic sentence.
    pub fn detail(&self) -> String {
        match self {
            Error::Store(e) => {
                tracing::error!(error = %e, "store error");
                self.to_string()
            }
            Error::ClusterUnavailable(why) => {
                tracing::warn!(error = %why, "cluster backend unavailable");
                self.to_string()
            }
            Error::ProxyUnavailable(why) => {
                tracing::info!(error = %why, "tenant proxy failed");
                self.to_string()
            }
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn every_code_is_unique_and_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert_eq!(Code::parse(code.as_str()), Some(*code));
            assert!((400..600).contains(&code.status()));
        }
    }
}
