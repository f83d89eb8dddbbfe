//! Why a connection ends, and the WebSocket close code that says so. Codes follow the grouping
//! client libraries understand: 4000-4099 do not reconnect, 4100-4199 reconnect with backoff,
//! 4200-4299 reconnect at once (after the delay the reason names); plus 1000/1009/1011.
//! `docs/protocol.md` lists them.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The client closed, or the server ended a one-shot session.
    Normal,
    /// A frame that is not valid protocol JSON.
    BadRequest,
    /// The token was refused; the reason names why (e.g. `bad_signature`).
    AuthFailed(crate::error::Code),
    /// The token expired and was not refreshed in time.
    TokenExpired,
    TenantSuspended,
    TokenRevoked,
    /// No `connect` frame within the auth timeout.
    AuthTimeout,
    /// Disconnected through the API.
    Kicked,
    OriginNotAllowed,
    SlowConsumer,
    ConnectionLimit,
    PingTimeout,
    /// The node is shutting down: reconnect (to another node) after the delay.
    ShuttingDown {
        retry_after_ms: u64,
    },
    /// An inbound frame over the size limit.
    MessageTooBig,
    Internal,
}

impl Disconnect {
    pub fn code(&self) -> u16 {
        match self {
            Disconnect::Normal => 1000,
            Disconnect::MessageTooBig => 1009,
            Disconnect::Internal => 1011,
            Disconnect::BadRequest => 4000,
            Disconnect::AuthFailed(_) => 4001,
            Disconnect::TokenExpired => 4002,
            Disconnect::TenantSuspended => 4003,
            Disconnect::TokenRevoked => 4004,
            Disconnect::AuthTimeout => 4005,
            Disconnect::Kicked => 4006,
            Disconnect::OriginNotAllowed => 4007,
            Disconnect::SlowConsumer => 4100,
            Disconnect::ConnectionLimit => 4101,
            Disconnect::PingTimeout => 4102,
            Disconnect::ShuttingDown { .. } => 4200,
        }
    }

    /// The close reason: a stable word, and for shutdowns the delay before reconnecting.
    pub fn reason(&self) -> String {
        match self {
            Disconnect::Normal => "normal".into(),
            Disconnect::BadRequest => "bad_request".into(),
            Disconnect::AuthFailed(why) => why.as_str().into(),
            Disconnect::TokenExpired => "token_expired".into(),
            Disconnect::TenantSuspended => "tenant_suspended".into(),
            Disconnect::TokenRevoked => "token_revoked".into(),
            Disconnect::AuthTimeout => "auth_timeout".into(),
            Disconnect::Kicked => "disconnected".into(),
            Disconnect::OriginNotAllowed => "origin_not_allowed".into(),
            Disconnect::SlowConsumer => "slow_consumer".into(),
            Disconnect::ConnectionLimit => "connection_limit".into(),
            Disconnect::PingTimeout => "ping_timeout".into(),
            Disconnect::ShuttingDown { retry_after_ms } => {
                format!("shutting_down retry_after_ms={retry_after_ms}")
            }
            Disconnect::MessageTooBig => "message_too_big".into(),
            Disconnect::Internal => "internal".into(),
        }
    }

    /// Whether frames queued before the close are still written.
    pub fn flushes_queue(&self) -> bool {
        matches!(self, Disconnect::ShuttingDown { .. } | Disconnect::Normal | Disconnect::Kicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_by_reconnect_advice() {
        let no_reconnect = [
            Disconnect::BadRequest,
            Disconnect::AuthFailed(crate::error::Code::BadSignature),
            Disconnect::TokenExpired,
            Disconnect::TenantSuspended,
            Disconnect::TokenRevoked,
            Disconnect::AuthTimeout,
            Disconnect::Kicked,
            Disconnect::OriginNotAllowed,
        ];
        assert!(no_reconnect.iter().all(|d| (4000..4100).contains(&d.code())));
        let backoff = [Disconnect::SlowConsumer, Disconnect::ConnectionLimit, Disconnect::PingTimeout];
        assert!(backoff.iter().all(|d| (4100..4200).contains(&d.code())));
        assert_eq!(Disconnect::ShuttingDown { retry_after_ms: 5 }.code(), 4200);
        assert!(Disconnect::ShuttingDown { retry_after_ms: 1234 }.reason().ends_with("=1234"));
        // Close reasons must fit in a close frame (123 bytes).
        assert!(Disconnect::ShuttingDown { retry_after_ms: u64::MAX }.reason().len() <= 123);
    }
}
