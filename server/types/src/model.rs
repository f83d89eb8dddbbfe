//! Domain types shared by the store and the API. Value objects that are stored as JSON
//! (limits, channel options, scopes) derive both serde (storage, request parsing) and
//! poem-openapi (schema, responses) so the two views cannot drift apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "suspended" { TenantStatus::Suspended } else { TenantStatus::Active }
    }
}

/// Per-tenant quotas. `null` means "no tenant-specific limit" (server-wide limits still apply).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", oai(deny_unknown_fields))]
pub struct TenantLimits {
    /// Concurrent client connections across all transports and nodes.
    pub max_connections: Option<u32>,
    /// Messages accepted per second (REST and client publishes together).
    pub max_publishes_per_second: Option<u32>,
    /// Largest message payload in bytes.
    pub max_message_bytes: Option<u32>,
    /// Explicitly created channels.
    pub max_channels: Option<u32>,
    /// Channels one connection may subscribe to.
    pub max_subscriptions_per_connection: Option<u32>,
    /// Bytes of message history a node keeps for the tenant's channels together (null: the
    /// node's `tenant_history_max_bytes`). Over it, a channel drops its own oldest messages.
    pub max_history_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    pub allowed_origins: Vec<String>,
    pub limits: TenantLimits,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Channel behaviour. On a namespace, unset fields fall back to the server defaults; on a
/// channel, unset fields fall back to its namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", oai(deny_unknown_fields))]
pub struct ChannelOptions {
    /// Messages kept for history and resume (0 disables history).
    pub history_size: Option<u32>,
    /// Seconds a message stays in history.
    pub history_ttl_seconds: Option<u32>,
    /// Track who is subscribed.
    pub presence: Option<bool>,
    /// Push join/leave events to subscribers (needs presence).
    pub join_leave: Option<bool>,
    /// Clients may publish with a `publish` capability.
    pub client_publish: Option<bool>,
    /// Subscribing needs a `subscribe` capability that matches the channel.
    pub private: Option<bool>,
    /// Subscribers allowed at once (null: no channel limit).
    pub max_subscribers: Option<u32>,
    /// Largest message payload in bytes.
    pub max_message_bytes: Option<u32>,
    /// Channels of this namespace exist on first use, without being created.
    pub allow_implicit: Option<bool>,
}

/// Options with every field resolved: channel override, then namespace, then server default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
pub struct EffectiveChannelOptions {
    pub history_size: u32,
    pub history_ttl_seconds: u32,
    pub presence: bool,
    pub join_leave: bool,
    pub client_publish: bool,
    pub private: bool,
    pub max_subscribers: Option<u32>,
    pub max_message_bytes: u32,
    pub allow_implicit: bool,
}

/// Hard ceilings; options above them are refused with 422.
pub const MAX_HISTORY_SIZE: u32 = 10_000;
pub const MAX_HISTORY_TTL_SECONDS: u32 = 30 * 86_400;
pub const MAX_MESSAGE_BYTES: u32 = 1024 * 1024;

impl EffectiveChannelOptions {
    pub const DEFAULT: EffectiveChannelOptions = EffectiveChannelOptions {
        history_size: 100,
        history_ttl_seconds: 600,
        presence: false,
        join_leave: false,
        client_publish: false,
        private: true,
        max_subscribers: None,
        max_message_bytes: 64 * 1024,
        allow_implicit: true,
    };

    /// Resolves `layers` from most to least specific on top of the defaults.
    pub fn resolve(layers: &[&ChannelOptions]) -> Self {
        let d = Self::DEFAULT;
        macro_rules! first {
            ($field:ident, $default:expr) => {
                layers.iter().find_map(|o| o.$field).unwrap_or($default)
            };
        }
        EffectiveChannelOptions {
            history_size: first!(history_size, d.history_size),
            history_ttl_seconds: first!(history_ttl_seconds, d.history_ttl_seconds),
            presence: first!(presence, d.presence),
            join_leave: first!(join_leave, d.join_leave),
            client_publish: first!(client_publish, d.client_publish),
            private: first!(private, d.private),
            max_subscribers: layers.iter().find_map(|o| o.max_subscribers),
            max_message_bytes: first!(max_message_bytes, d.max_message_bytes),
            allow_implicit: first!(allow_implicit, d.allow_implicit),
        }
    }
}

impl ChannelOptions {
    /// Checks ceilings; returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(v) = self.history_size
            && v > MAX_HISTORY_SIZE
        {
            return Err(("history_size", format!("must be at most {MAX_HISTORY_SIZE}")));
        }
        if let Some(v) = self.history_ttl_seconds
            && !(1..=MAX_HISTORY_TTL_SECONDS).contains(&v)
        {
            return Err(("history_ttl_seconds", format!("must be 1..={MAX_HISTORY_TTL_SECONDS}")));
        }
        if let Some(v) = self.max_message_bytes
            && !(1..=MAX_MESSAGE_BYTES).contains(&v)
        {
            return Err(("max_message_bytes", format!("must be 1..={MAX_MESSAGE_BYTES}")));
        }
        if let Some(0) = self.max_subscribers {
            return Err(("max_subscribers", "must be at least 1 (null means no limit)".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Namespace {
    pub tenant_id: String,
    pub name: String,
    pub options: ChannelOptions,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub tenant_id: String,
    pub name: String,
    pub options: ChannelOptions,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a tenant API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
pub enum Scope {
    /// Publish messages through the REST API.
    #[serde(rename = "publish")]
    #[cfg_attr(feature = "openapi", oai(rename = "publish"))]
    Publish,
    /// Read namespaces and channels.
    #[serde(rename = "channels:read")]
    #[cfg_attr(feature = "openapi", oai(rename = "channels:read"))]
    ChannelsRead,
    /// Create, change and delete namespaces and channels (implies channels:read).
    #[serde(rename = "channels:write")]
    #[cfg_attr(feature = "openapi", oai(rename = "channels:write"))]
    ChannelsWrite,
    /// Manage API keys, signing keys and token revocations; read the tenant's audit log.
    #[serde(rename = "keys:write")]
    #[cfg_attr(feature = "openapi", oai(rename = "keys:write"))]
    KeysWrite,
    /// Mint client tokens.
    #[serde(rename = "tokens:issue")]
    #[cfg_attr(feature = "openapi", oai(rename = "tokens:issue"))]
    TokensIssue,
    /// Read presence.
    #[serde(rename = "presence:read")]
    #[cfg_attr(feature = "openapi", oai(rename = "presence:read"))]
    PresenceRead,
    /// Read channel history.
    #[serde(rename = "history:read")]
    #[cfg_attr(feature = "openapi", oai(rename = "history:read"))]
    HistoryRead,
    /// Read statistics.
    #[serde(rename = "stats:read")]
    #[cfg_attr(feature = "openapi", oai(rename = "stats:read"))]
    StatsRead,
    /// Manage webhooks: create, change, rotate secrets, read and replay deliveries.
    #[serde(rename = "webhooks:write")]
    #[cfg_attr(feature = "openapi", oai(rename = "webhooks:write"))]
    WebhooksWrite,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::ChannelsRead => "channels:read",
            Scope::ChannelsWrite => "channels:write",
            Scope::KeysWrite => "keys:write",
            Scope::TokensIssue => "tokens:issue",
            Scope::PresenceRead => "presence:read",
            Scope::HistoryRead => "history:read",
            Scope::StatsRead => "stats:read",
            Scope::WebhooksWrite => "webhooks:write",
        }
    }

    /// Whether holding `self` grants `needed`.
    pub fn grants(self, needed: Scope) -> bool {
        self == needed || (self == Scope::ChannelsWrite && needed == Scope::ChannelsRead)
    }
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl ApiKey {
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// JWT algorithms a tenant may register keys for. One key, one algorithm: a token whose header
/// names another algorithm is refused, which closes algorithm-confusion attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
pub enum SigningAlgorithm {
    HS256,
    RS256,
    ES256,
    EdDSA,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::HS256 => "HS256",
            SigningAlgorithm::RS256 => "RS256",
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::HS256, Self::RS256, Self::ES256, Self::EdDSA].into_iter().find(|a| a.as_str() == s)
    }

    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            SigningAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            SigningAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            SigningAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum KeyStatus {
    Active,
    Retired,
}

#[derive(Debug, Clone)]
pub struct SigningKey {
    pub tenant_id: String,
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    /// HS256 only: the secret sealed with the node's master key.
    pub sealed_secret: Option<String>,
    /// Asymmetric algorithms only.
    pub public_key_pem: Option<String>,
    pub status: KeyStatus,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct RevokedToken {
    pub tenant_id: String,
    pub jti: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct UserRevocation {
    pub tenant_id: String,
    pub user_id: String,
    pub revoked_before: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub tenant_id: Option<String>,
    pub target: String,
    pub details: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_resolve_most_specific_first() {
        let channel = ChannelOptions { history_size: Some(5), ..Default::default() };
        let namespace = ChannelOptions { history_size: Some(50), presence: Some(true), ..Default::default() };
        let eff = EffectiveChannelOptions::resolve(&[&channel, &namespace]);
        assert_eq!(eff.history_size, 5);
        assert!(eff.presence);
        assert_eq!(eff.history_ttl_seconds, EffectiveChannelOptions::DEFAULT.history_ttl_seconds);
    }

    #[test]
    fn options_enforce_ceilings() {
        let bad = ChannelOptions { history_size: Some(MAX_HISTORY_SIZE + 1), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "history_size");
        let bad = ChannelOptions { max_subscribers: Some(0), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "max_subscribers");
        assert!(ChannelOptions::default().validate().is_ok());
    }

    #[test]
    fn scopes_serialise_as_documented() {
        assert_eq!(serde_json::to_string(&Scope::ChannelsWrite).unwrap(), "\"channels:write\"");
        assert!(Scope::ChannelsWrite.grants(Scope::ChannelsRead));
        assert!(!Scope::ChannelsRead.grants(Scope::ChannelsWrite));
    }
}

/// What a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
pub enum WebhookEvent {
    /// A channel got its first subscriber (anywhere in the cluster).
    #[serde(rename = "channel.occupied")]
    #[cfg_attr(feature = "openapi", oai(rename = "channel.occupied"))]
    ChannelOccupied,
    /// A channel's last subscriber left (after the grace window).
    #[serde(rename = "channel.vacated")]
    #[cfg_attr(feature = "openapi", oai(rename = "channel.vacated"))]
    ChannelVacated,
    /// A user's first connection subscribed to a presence channel.
    #[serde(rename = "presence.join")]
    #[cfg_attr(feature = "openapi", oai(rename = "presence.join"))]
    PresenceJoin,
    /// A user's last connection left a presence channel (after the grace window).
    #[serde(rename = "presence.leave")]
    #[cfg_attr(feature = "openapi", oai(rename = "presence.leave"))]
    PresenceLeave,
    /// A client connection was authenticated.
    #[serde(rename = "connection.open")]
    #[cfg_attr(feature = "openapi", oai(rename = "connection.open"))]
    ConnectionOpen,
    /// A client connection ended, with its close code.
    #[serde(rename = "connection.close")]
    #[cfg_attr(feature = "openapi", oai(rename = "connection.close"))]
    ConnectionClose,
    /// A client published to a channel (REST publishes only with `include_api_publishes`).
    #[serde(rename = "message.published")]
    #[cfg_attr(feature = "openapi", oai(rename = "message.published"))]
    MessagePublished,
    /// A user-targeted message with `if_offline: "webhook"` found the user offline.
    #[serde(rename = "user.offline_message")]
    #[cfg_attr(feature = "openapi", oai(rename = "user.offline_message"))]
    UserOfflineMessage,
    /// Sent by "send test event"; every webhook receives it whatever its event types.
    #[serde(rename = "webhook.test")]
    #[cfg_attr(feature = "openapi", oai(rename = "webhook.test"))]
    WebhookTest,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 9] = [
        WebhookEvent::ChannelOccupied,
        WebhookEvent::ChannelVacated,
        WebhookEvent::PresenceJoin,
        WebhookEvent::PresenceLeave,
        WebhookEvent::ConnectionOpen,
        WebhookEvent::ConnectionClose,
        WebhookEvent::MessagePublished,
        WebhookEvent::UserOfflineMessage,
        WebhookEvent::WebhookTest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::ChannelOccupied => "channel.occupied",
            WebhookEvent::ChannelVacated => "channel.vacated",
            WebhookEvent::PresenceJoin => "presence.join",
            WebhookEvent::PresenceLeave => "presence.leave",
            WebhookEvent::ConnectionOpen => "connection.open",
            WebhookEvent::ConnectionClose => "connection.close",
            WebhookEvent::MessagePublished => "message.published",
            WebhookEvent::UserOfflineMessage => "user.offline_message",
            WebhookEvent::WebhookTest => "webhook.test",
        }
    }

    /// A bit of [`WebhookEvent::mask`].
    pub const fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The bits of a set of event types.
    pub fn mask(events: &[WebhookEvent]) -> u16 {
        events.iter().fold(0, |m, e| m | e.bit())
    }
}

/// A tenant's webhook endpoint.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    pub description: String,
    pub events: Vec<WebhookEvent>,
    pub enabled: bool,
    /// `message.published` also for the tenant's REST publishes, not only clients'.
    pub include_api_publishes: bool,
    /// Events per request at most (1: one event per request, no batch form).
    pub batch_max_events: u32,
    /// How long an event may wait for others to share its request.
    pub batch_max_ms: u32,
    /// Why Herald disabled it (e.g. the endpoint answered 410 Gone).
    pub disabled_reason: Option<String>,
    /// The signing secret, sealed with the master key.
    pub secret_sealed: String,
    /// The secret before the last rotation, sealed, still signing until `previous_until`.
    pub previous_secret_sealed: Option<String>,
    pub previous_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or its next retry.
    Pending,
    /// A node is sending it now.
    Sending,
    /// The endpoint answered 2xx.
    Succeeded,
    /// Given up: retry period over, 410 Gone, the webhook disabled or deleted.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        [DeliveryStatus::Pending, DeliveryStatus::Sending, DeliveryStatus::Succeeded, DeliveryStatus::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One event on its way to one webhook, with the outcome of its latest attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub tenant_id: String,
    pub webhook_id: String,
    /// The event's id (`webhook-id` header), the same on every attempt and replay.
    pub event_id: String,
    pub event_type: WebhookEvent,
    /// The request body as sent.
    pub body: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    /// When retrying stops.
    pub give_up_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub response_status: Option<u16>,
    pub latency_ms: Option<u32>,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
}

/// What a proxy failure (timeout, error, an answer that is neither allow nor deny) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum ProxyFailure {
    /// Refuse the operation (the default).
    #[default]
    Deny,
    /// Carry on as if no proxy were configured (a connect without a token is still refused).
    Allow,
}

/// Which decision a proxy takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    Connect,
    Subscribe,
    Publish,
    Refresh,
}

impl ProxyKind {
    pub const ALL: [ProxyKind; 4] =
        [ProxyKind::Connect, ProxyKind::Subscribe, ProxyKind::Publish, ProxyKind::Refresh];

    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Connect => "connect",
            ProxyKind::Subscribe => "subscribe",
            ProxyKind::Publish => "publish",
            ProxyKind::Refresh => "refresh",
        }
    }
}

/// A tenant's proxy endpoints: decisions Herald delegates to the tenant's functions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProxySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_url: Option<String>,
    /// How long Herald waits for an answer.
    pub timeout_ms: u32,
    pub on_failure: ProxyFailure,
}

impl ProxySettings {
    pub fn url(&self, kind: ProxyKind) -> Option<&str> {
        match kind {
            ProxyKind::Connect => self.connect_url.as_deref(),
            ProxyKind::Subscribe => self.subscribe_url.as_deref(),
            ProxyKind::Publish => self.publish_url.as_deref(),
            ProxyKind::Refresh => self.refresh_url.as_deref(),
        }
    }
}

/// A tenant's proxy configuration as stored.
#[derive(Debug, Clone)]
pub struct TenantProxy {
    pub tenant_id: String,
    pub settings: ProxySettings,
    /// The signing secret, sealed with the master key.
    pub secret_sealed: String,
    pub updated_at: DateTime<Utc>,
}
