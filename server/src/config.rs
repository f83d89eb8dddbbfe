//! Configuration: built-in defaults, then a TOML file, then `HERALD_*` environment variables,
//! then command-line flags; each layer overrides the one before. Every value is validated once,
//! here, and a bad one fails start-up with an error that names its key and where it came from.
//!
//! [`KEYS`] is the single list of settings; the file parser, the environment reader and the
//! docs (`docs/configuration.md`) all follow it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a value came from, so an error can point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Env,
    Flag,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid value for `{key}` (from {origin}): {message}")]
    Invalid { key: &'static str, origin: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every configuration key.
pub const KEYS: &[&str] = &[
    "listen",
    "listen_backlog",
    "data_dir",
    "database_url",
    "admin_token",
    "secret_key",
    "node_id",
    "log_format",
    "log_level",
    "max_body_bytes",
    "admin_session_ttl_seconds",
    "ping_interval_seconds",
    "pong_timeout_seconds",
    "auth_timeout_seconds",
    "client_queue_messages",
    "client_queue_bytes",
    "max_frame_bytes",
    "max_subscriptions_per_connection",
    "idempotency_window_seconds",
    "shutdown_grace_seconds",
    "shutdown_ready_delay_seconds",
    "reconnect_spread_ms",
    "sse_heartbeat_seconds",
    "sse_retry_ms",
    "long_poll_max_timeout_seconds",
    "long_poll_session_idle_seconds",
    "admin_dir",
    "nats_url",
    "cluster_heartbeat_seconds",
    "cluster_history_max_bytes",
    "cluster_replicas",
    "cluster_store_interval_ms",
    "socket_threads_nice",
    "http_header_read_timeout_seconds",
    "http_write_timeout_seconds",
    "max_connections_per_ip",
    "trusted_proxies",
    "tls_cert",
    "tls_key",
    "metrics_tenant_series",
    "history_max_bytes",
    "tenant_history_max_bytes",
    "max_live_channels_per_tenant",
    "admin_login_per_minute",
    "outbound_allowed_networks",
    "webhook_timeout_seconds",
    "webhook_retry_period_seconds",
    "webhook_retry_initial_ms",
    "webhook_retry_max_delay_seconds",
    "webhook_max_queued_per_tenant",
    "webhook_max_in_flight_per_tenant",
    "webhook_max_in_flight",
    "webhook_deliveries_kept",
    "webhook_grace_ms",
    "webhook_breaker_failures",
    "webhook_breaker_seconds",
    "max_webhooks_per_tenant",
];

/// Variables that are not config keys but are read elsewhere.
const OTHER_ENV: &[&str] = &["HERALD_CONFIG"];

fn env_name(key: &str) -> String {
    format!("HERALD_{}", key.to_ascii_uppercase())
}

/// Values as written in one layer, by key.
#[derive(Debug, Default, Clone)]
pub struct Layer {
    values: BTreeMap<&'static str, String>,
}

impl Layer {
    /// Sets `key` (which must be one of [`KEYS`]) if `value` is present.
    pub fn set(&mut self, key: &'static str, value: Option<String>) {
        assert!(KEYS.contains(&key), "unknown config key {key}");
        if let Some(value) = value {
            self.values.insert(key, value);
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::ReadFile { path: path.to_owned(), source })?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut layer = Layer::default();
        for (name, value) in table {
            let Some(key) = KEYS.iter().find(|k| **k == name) else {
                return Err(ConfigError::ParseFile {
                    path: path.to_owned(),
                    message: format!("unknown key `{name}` (known keys: {})", KEYS.join(", ")),
                });
            };
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError::ParseFile {
                        path: path.to_owned(),
                        message: format!("`{name}` must be a string or a number, not {}", other.type_str()),
                    });
                }
            };
            layer.values.insert(key, value);
        }
        Ok(layer)
    }

    /// Reads `HERALD_*` variables. Unknown `HERALD_*` names are returned so the caller can warn
    /// about likely typos.
    pub fn from_env(vars: impl Iterator<Item = (String, String)>) -> (Self, Vec<String>) {
        let mut layer = Layer::default();
        let mut unknown = Vec::new();
        for (name, value) in vars {
            match KEYS.iter().find(|k| env_name(k) == name) {
                Some(key) => {
                    layer.values.insert(key, value);
                }
                None if name.starts_with("HERALD_") && !OTHER_ENV.contains(&name.as_str()) => {
                    unknown.push(name)
                }
                None => {}
            }
        }
        (layer, unknown)
    }
}

/// The validated configuration a node runs with.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Pending connections the kernel queues before Herald accepts them (capped by
    /// `net.core.somaxconn`).
    pub listen_backlog: u32,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub admin_token: Option<String>,
    pub secret_key: Option<String>,
    pub node_id: String,
    pub log_format: LogFormat,
    pub log_level: String,
    pub max_body_bytes: usize,
    pub admin_session_ttl_seconds: u64,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub auth_timeout: Duration,
    pub client_queue_messages: usize,
    pub client_queue_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_subscriptions_per_connection: u32,
    pub idempotency_window: Duration,
    pub shutdown_grace: Duration,
    /// After the shutdown signal, how long the node still accepts connections while `/readyz`
    /// says it is draining (so a load balancer stops sending it traffic first).
    pub shutdown_ready_delay: Duration,
    pub reconnect_spread: Duration,
    pub sse_heartbeat: Duration,
    pub sse_retry_ms: u64,
    pub long_poll_max_timeout: Duration,
    pub long_poll_session_idle: Duration,
    /// A directory to serve the admin dashboard from instead of the copy built into the
    /// binary (for working on the dashboard: `admin-ui/dist`).
    pub admin_dir: Option<PathBuf>,
    /// NATS server(s) for cluster mode (`nats://host:4222`, comma-separated for several);
    /// `None` runs the node alone with in-process fan-out.
    pub nats_url: Option<String>,
    /// How often a cluster node refreshes its presence entries and publishes its statistics;
    /// entries of a node that stops refreshing expire after two intervals.
    pub cluster_heartbeat: Duration,
    /// The most the shared history stream holds for all channels together (cluster mode).
    pub cluster_history_max_bytes: u64,
    /// JetStream replicas of the history stream and the presence bucket (1 on a single NATS
    /// server; 3 on a NATS cluster so a NATS server can fail without losing history).
    pub cluster_replicas: usize,
    /// The least time between two stores of one channel's publishes by a node; what arrives
    /// meanwhile is stored as one batch (cluster mode).
    pub cluster_store_interval: Duration,
    /// How many nice levels below the node's other threads its WebSocket threads run (Linux),
    /// so that its HTTP and cluster threads get the CPU soon after they wake while a fan-out
    /// keeps it busy; a share, not a strict order.
    pub socket_threads_nice: u8,
    /// A request head must arrive whole within this (also ends idle keep-alive connections).
    pub http_header_read_timeout: Duration,
    /// A write to a client that makes no progress for this long ends the connection.
    pub http_write_timeout: Duration,
    /// Open connections allowed per client address (0: no limit).
    pub max_connections_per_ip: u32,
    /// Reverse proxies and load balancers: exempt from `max_connections_per_ip`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// HTTPS on the listening port with this certificate chain and key (`tls_cert` and
    /// `tls_key`, both PEM); `None` serves plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Tenants with their own `herald_tenant_*` series on `/metrics` (the rest are summed).
    pub metrics_tenant_series: u32,
    /// Bytes of message history one node keeps in memory for all tenants together.
    pub history_max_bytes: u64,
    /// Bytes of message history one node keeps per tenant (unless its limits say otherwise).
    pub tenant_history_max_bytes: u64,
    /// Channels (explicit and implicit) one tenant may have live on one node.
    pub max_live_channels_per_tenant: u64,
    /// Admin login attempts allowed per client address and minute (burst: as many at once).
    pub admin_login_per_minute: std::num::NonZeroU32,
    /// Private ranges webhooks and proxies may call anyway (public addresses always allowed).
    pub outbound_allowed_networks: Vec<ipnet::IpNet>,
    /// The webhook delivery settings.
    pub webhooks: WebhookSettings,
}

/// How webhooks are delivered (`webhook_*` keys).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// One request, from connecting to the end of the answer.
    pub timeout: Duration,
    /// How long a failing delivery is retried before it is recorded as failed.
    pub retry_period: Duration,
    /// The first retry waits up to this; each further one up to twice as long (full jitter).
    pub retry_initial: Duration,
    /// The longest wait between two attempts.
    pub retry_max_delay: Duration,
    /// Deliveries waiting or in flight per tenant; events beyond it are dropped and counted.
    pub max_queued_per_tenant: u64,
    /// Requests in flight per tenant and node.
    pub max_in_flight_per_tenant: usize,
    /// Requests in flight per node.
    pub max_in_flight: usize,
    /// Finished deliveries kept per webhook as its delivery log.
    pub deliveries_kept: u64,
    /// How long a user or channel may be gone before `presence.leave` / `channel.vacated`.
    pub grace: Duration,
    /// Consecutive failures that open a webhook's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker holds deliveries back (doubling while the endpoint fails).
    pub breaker_open: Duration,
    /// Webhooks per tenant.
    pub max_per_tenant: u64,
}

impl std::fmt::Debug for Config {
    // Hand-written so that secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("listen_backlog", &self.listen_backlog)
            .field("data_dir", &self.data_dir)
            .field("database_url", &herald_core::crypto::redact_url(&self.database_url))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<set>"))
            .field("node_id", &self.node_id)
            .field("log_format", &self.log_format)
            .field("log_level", &self.log_level)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("admin_session_ttl_seconds", &self.admin_session_ttl_seconds)
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("auth_timeout", &self.auth_timeout)
            .field("client_queue_messages", &self.client_queue_messages)
            .field("client_queue_bytes", &self.client_queue_bytes)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_subscriptions_per_connection", &self.max_subscriptions_per_connection)
            .field("idempotency_window", &self.idempotency_window)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("shutdown_ready_delay", &self.shutdown_ready_delay)
            .field("reconnect_spread", &self.reconnect_spread)
            .field("sse_heartbeat", &self.sse_heartbeat)
            .field("sse_retry_ms", &self.sse_retry_ms)
            .field("long_poll_max_timeout", &self.long_poll_max_timeout)
            .field("long_poll_session_idle", &self.long_poll_session_idle)
            .field("admin_dir", &self.admin_dir)
            .field("nats_url", &self.nats_url.as_deref().map(herald_core::crypto::redact_url))
            .field("cluster_heartbeat", &self.cluster_heartbeat)
            .field("cluster_history_max_bytes", &self.cluster_history_max_bytes)
            .field("cluster_replicas", &self.cluster_replicas)
            .field("cluster_store_interval", &self.cluster_store_interval)
            .field("socket_threads_nice", &self.socket_threads_nice)
            .field("http_header_read_timeout", &self.http_header_read_timeout)
            .field("http_write_timeout", &self.http_write_timeout)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("tls", &self.tls)
            .field("metrics_tenant_series", &self.metrics_tenant_series)
            .field("history_max_bytes", &self.history_max_bytes)
            .field("tenant_history_max_bytes", &self.tenant_history_max_bytes)
            .field("max_live_channels_per_tenant", &self.max_live_channels_per_tenant)
            .field("admin_login_per_minute", &self.admin_login_per_minute)
            .field("outbound_allowed_networks", &self.outbound_allowed_networks)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Layers, lowest precedence first, and the numeric settings read through them.
struct Layers<'a>([(Source, &'a Layer); 3], std::cell::RefCell<Vec<NumericSetting>>);

/// A numeric key as the validator applies it: its default and its inclusive range, in the
/// key's unit (`_seconds`, `_ms`, `_bytes`, or a count). `docs/configuration.md` is checked
/// against these (`tests/e2e/cli.rs`).
#[derive(Debug, Clone)]
pub struct NumericSetting {
    pub key: &'static str,
    pub default: String,
    pub min: String,
    pub max: String,
}

/// Every numeric setting, with its default and range.
pub fn numeric_settings() -> Vec<NumericSetting> {
    let empty = Layer::default();
    let l =
        Layers([(Source::File, &empty), (Source::Env, &empty), (Source::Flag, &empty)], Default::default());
    let _ = Config::resolve_with(&l);
    l.1.into_inner()
}

impl Layers<'_> {
    /// The value of the highest layer that sets `key`, with where it came from.
    fn get(&self, key: &'static str) -> Option<(&str, Source)> {
        self.0.iter().rev().find_map(|(src, layer)| layer.get(key).map(|v| (v, *src)))
    }

    fn invalid(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        let origin = match self.get(key).map(|(_, s)| s) {
            Some(Source::File) => "the config file".to_owned(),
            Some(Source::Env) => env_name(key),
            Some(Source::Flag) => format!("--{}", key.replace('_', "-")),
            None => "the default".to_owned(),
        };
        ConfigError::Invalid { key, origin, message: message.into() }
    }

    fn number<T>(
        &self,
        key: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        self.1.borrow_mut().push(NumericSetting {
            key,
            default: default.to_string(),
            min: range.start().to_string(),
            max: range.end().to_string(),
        });
        let Some((raw, _)) = self.get(key) else { return Ok(default) };
        let parsed: T =
            raw.trim().parse().map_err(|_| self.invalid(key, format!("`{raw}` is not a whole number")))?;
        if !range.contains(&parsed) {
            return Err(self.invalid(key, format!("{parsed} is outside {}..={}", range.start(), range.end())));
        }
        Ok(parsed)
    }

    fn seconds(
        &self,
        key: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.number(key, default, range).map(Duration::from_secs)
    }
}

impl Config {
    /// Merges layers (lowest precedence first) and validates the result.
    pub fn resolve(file: &Layer, env: &Layer, flags: &Layer) -> Result<Config, ConfigError> {
        Self::resolve_with(&Layers(
            [(Source::File, file), (Source::Env, env), (Source::Flag, flags)],
            Default::default(),
        ))
    }

    fn resolve_with(l: &Layers) -> Result<Config, ConfigError> {
        let listen = match l.get("listen") {
            Some((raw, _)) => raw
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| l.invalid("listen", format!("`{raw}` is not an address like 127.0.0.1:8080")))?,
            None => DEFAULT_LISTEN.parse().expect("valid default"),
        };

        let data_dir = PathBuf::from(l.get("data_dir").map_or(DEFAULT_DATA_DIR, |(d, _)| d));
        if data_dir.as_os_str().is_empty() {
            return Err(l.invalid("data_dir", "must not be empty"));
        }

        let database_url = match l.get("database_url") {
            Some((url, _)) => {
                let url = url.trim().to_owned();
                if !["sqlite:", "postgres://", "postgresql://"].iter().any(|p| url.starts_with(p)) {
                    return Err(l.invalid(
                        "database_url",
                        format!(
                            "`{}` must start with sqlite:, postgres:// or postgresql://",
                            herald_core::crypto::redact_url(&url)
                        ),
                    ));
                }
                url
            }
            None => format!("sqlite://{}?mode=rwc", data_dir.join("herald.db").display()),
        };

        let admin_token = match l.get("admin_token") {
            Some((token, _)) => {
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(l.invalid("admin_token", "must be at least 16 characters with no whitespace"));
                }
                Some(token.to_owned())
            }
            None => None,
        };

        let secret_key = match l.get("secret_key") {
            Some((key, _)) => {
                herald_core::crypto::MasterKey::from_base64(key)
                    .map_err(|e| l.invalid("secret_key", e.to_string()))?;
                Some(key.to_owned())
            }
            None => None,
        };

        let node_id = match l.get("node_id") {
            Some((id, _)) => {
                herald_types::names::kid(id).map_err(|e| l.invalid("node_id", e.0))?;
                id.to_owned()
            }
            None => herald_core::crypto::random_token("node-", 6),
        };

        let log_format = match l.get("log_format") {
            Some((raw, _)) => match raw.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(l.invalid("log_format", format!("`{raw}` is not one of text, json"))),
            },
            None => LogFormat::Text,
        };

        let log_level = match l.get("log_level") {
            Some((raw, _)) => {
                tracing_subscriber::EnvFilter::try_new(raw)
                    .map_err(|e| l.invalid("log_level", format!("`{raw}`: {e}")))?;
                raw.to_owned()
            }
            None => "info".into(),
        };

        let nats_url = match l.get("nats_url") {
            Some((raw, _)) => {
                let ok = raw.split(',').all(|u| {
                    let u = u.trim();
                    ["nats://", "tls://"]
                        .iter()
                        .any(|s| u.strip_prefix(s).is_some_and(|rest| !rest.is_empty()))
                });
                if !ok {
                    return Err(
                        l.invalid("nats_url", "must be nats://HOST:PORT (comma-separated for several)")
                    );
                }
                Some(raw.to_owned())
            }
            None => None,
        };

        let networks = |key: &'static str| match l.get(key) {
            Some((raw, _)) => raw
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.parse::<ipnet::IpNet>()
                        .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| l.invalid(key, format!("`{p}` is not an IP address or CIDR range")))
                })
                .collect::<Result<Vec<_>, _>>(),
            None => Ok(Vec::new()),
        };
        let trusted_proxies = networks("trusted_proxies")?;

        // Both TLS files or neither; the pair is loaded once here so that a bad file fails
        // start-up naming its key (reloads later only warn and keep the previous pair).
        let path = |key: &'static str| match l.get(key) {
            Some((raw, _)) if raw.trim().is_empty() => Err(l.invalid(key, "must not be empty")),
            Some((raw, _)) => Ok(Some(PathBuf::from(raw))),
            None => Ok(None),
        };
        let tls = match (path("tls_cert")?, path("tls_key")?) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(l.invalid("tls_cert", "is set but `tls_key` is not: set both or neither"));
            }
            (None, Some(_)) => {
                return Err(l.invalid("tls_key", "is set but `tls_cert` is not: set both or neither"));
            }
            (Some(cert), Some(key)) => {
                let files = crate::tls::TlsFiles { cert, key };
                crate::tls::load(&files).map_err(|e| l.invalid(e.file.key(), e.message))?;
                Some(files)
            }
        };
        let outbound_allowed_networks = networks("outbound_allowed_networks")?;
        let webhooks = WebhookSettings {
            timeout: l.seconds("webhook_timeout_seconds", 10, 1..=120)?,
            retry_period: l.seconds("webhook_retry_period_seconds", 86_400, 0..=30 * 86_400)?,
            retry_initial: Duration::from_millis(l.number(
                "webhook_retry_initial_ms",
                1000,
                1..=3_600_000,
            )?),
            retry_max_delay: l.seconds("webhook_retry_max_delay_seconds", 3600, 1..=86_400)?,
            max_queued_per_tenant: l.number("webhook_max_queued_per_tenant", 10_000, 1..=10_000_000)?,
            max_in_flight_per_tenant: l.number("webhook_max_in_flight_per_tenant", 4, 1..=1000)?,
            max_in_flight: l.number("webhook_max_in_flight", 64, 1..=10_000)?,
            deliveries_kept: l.number("webhook_deliveries_kept", 100, 1..=100_000)?,
            grace: Duration::from_millis(l.number("webhook_grace_ms", 5000, 0..=3_600_000)?),
            breaker_failures: l.number("webhook_breaker_failures", 5, 1..=1000)?,
            breaker_open: l.seconds("webhook_breaker_seconds", 30, 1..=3600)?,
            max_per_tenant: l.number("max_webhooks_per_tenant", 20, 1..=1000)?,
        };

        let config = Config {
            listen,
            listen_backlog: l.number("listen_backlog", 4096, 1..=65535)?,
            data_dir,
            database_url,
            admin_token,
            secret_key,
            node_id,
            log_format,
            log_level,
            max_body_bytes: l.number("max_body_bytes", DEFAULT_MAX_BODY_BYTES, 1024..=64 * 1024 * 1024)?,
            admin_session_ttl_seconds: l.number("admin_session_ttl_seconds", 900, 1..=86_400)?,
            ping_interval: l.seconds("ping_interval_seconds", 25, 1..=3600)?,
            pong_timeout: l.seconds("pong_timeout_seconds", 10, 1..=3600)?,
            auth_timeout: l.seconds("auth_timeout_seconds", 10, 1..=300)?,
            client_queue_messages: l.number("client_queue_messages", 1024, 1..=1_000_000)?,
            client_queue_bytes: l.number("client_queue_bytes", 4 * 1024 * 1024, 1024..=1024 * 1024 * 1024)?,
            max_frame_bytes: l.number("max_frame_bytes", 1024 * 1024 + 64 * 1024, 1024..=16 * 1024 * 1024)?,
            max_subscriptions_per_connection: l.number(
                "max_subscriptions_per_connection",
                256,
                1..=100_000,
            )?,
            idempotency_window: l.seconds("idempotency_window_seconds", 300, 1..=86_400)?,
            shutdown_grace: l.seconds("shutdown_grace_seconds", 10, 0..=3600)?,
            shutdown_ready_delay: l.seconds("shutdown_ready_delay_seconds", 0, 0..=300)?,
            reconnect_spread: Duration::from_millis(l.number("reconnect_spread_ms", 5000, 0..=600_000)?),
            sse_heartbeat: l.seconds("sse_heartbeat_seconds", 15, 1..=3600)?,
            sse_retry_ms: l.number("sse_retry_ms", 2000, 0..=600_000)?,
            long_poll_max_timeout: l.seconds("long_poll_max_timeout_seconds", 60, 1..=3600)?,
            long_poll_session_idle: l.seconds("long_poll_session_idle_seconds", 60, 1..=86_400)?,
            admin_dir: l
                .get("admin_dir")
                .map(|(d, _)| PathBuf::from(d))
                .filter(|d| !d.as_os_str().is_empty()),
            nats_url,
            cluster_heartbeat: l.seconds("cluster_heartbeat_seconds", 5, 1..=60)?,
            cluster_history_max_bytes: l.number(
                "cluster_history_max_bytes",
                1 << 30,
                (1 << 20)..=(1 << 40),
            )?,
            cluster_replicas: l.number("cluster_replicas", 1, 1..=5)?,
            cluster_store_interval: Duration::from_millis(l.number(
                "cluster_store_interval_ms",
                3,
                0..=1000,
            )?),
            socket_threads_nice: l.number("socket_threads_nice", 10, 0..=19)?,
            http_header_read_timeout: l.seconds("http_header_read_timeout_seconds", 10, 1..=300)?,
            http_write_timeout: l.seconds("http_write_timeout_seconds", 30, 1..=3600)?,
            max_connections_per_ip: l.number("max_connections_per_ip", 4096, 0..=10_000_000)?,
            trusted_proxies,
            tls,
            metrics_tenant_series: l.number("metrics_tenant_series", 50, 0..=1000)?,
            history_max_bytes: l.number("history_max_bytes", 1 << 30, (1 << 20)..=(1 << 40))?,
            tenant_history_max_bytes: l.number(
                "tenant_history_max_bytes",
                128 << 20,
                (1 << 16)..=(1 << 40),
            )?,
            max_live_channels_per_tenant: l.number(
                "max_live_channels_per_tenant",
                100_000,
                1..=100_000_000,
            )?,
            admin_login_per_minute: std::num::NonZeroU32::new(l.number(
                "admin_login_per_minute",
                10,
                1..=100_000,
            )?)
            .expect("the range starts at 1"),
            outbound_allowed_networks,
            webhooks,
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(pairs: &[(&'static str, &str)]) -> Layer {
        let mut l = Layer::default();
        for (k, v) in pairs {
            l.set(k, Some(v.to_string()));
        }
        l
    }

    fn env(pairs: &[(&str, &str)]) -> Layer {
        Layer::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).0
    }

    #[test]
    fn later_layers_win() {
        let file = layer(&[("listen", "0.0.0.0:1"), ("log_level", "debug")]);
        let env = env(&[("HERALD_LISTEN", "0.0.0.0:2")]);
        let flags = layer(&[("listen", "0.0.0.0:3")]);
        let config = Config::resolve(&file, &env, &flags).unwrap();
        assert_eq!(config.listen.port(), 3);
        assert_eq!(config.log_level, "debug");
        let config = Config::resolve(&file, &env, &Layer::default()).unwrap();
        assert_eq!(config.listen.port(), 2);
    }

    #[test]
    fn errors_name_key_and_origin() {
        let err = Config::resolve(&Layer::default(), &env(&[("HERALD_LISTEN", "nope")]), &Layer::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`listen`") && err.contains("HERALD_LISTEN"), "{err}");

        let flags = layer(&[("max_body_bytes", "12")]);
        let err = Config::resolve(&Layer::default(), &Layer::default(), &flags).unwrap_err().to_string();
        assert!(err.contains("`max_body_bytes`") && err.contains("--max-body-bytes"), "{err}");

        let file = layer(&[("database_url", "mysql://x")]);
        let err = Config::resolve(&file, &Layer::default(), &Layer::default()).unwrap_err().to_string();
        assert!(err.contains("`database_url`") && err.contains("config file"), "{err}");

        let err = Config::resolve(
            &Layer::default(),
            &env(&[("HERALD_PING_INTERVAL_SECONDS", "0")]),
            &Layer::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`ping_interval_seconds`"), "{err}");
    }

    #[test]
    fn unknown_env_is_reported() {
        let (_, unknown) = Layer::from_env(
            [("HERALD_LISTN".to_string(), "x".to_string()), ("HERALD_CONFIG".into(), "f".into())].into_iter(),
        );
        assert_eq!(unknown, vec!["HERALD_LISTN".to_string()]);
    }

    #[test]
    fn file_rejects_unknown_keys_and_accepts_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9\"\nmax_body_bytes = 4096\n").unwrap();
        let layer = Layer::from_file(&path).unwrap();
        assert_eq!(layer.get("max_body_bytes"), Some("4096"));
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        let err = Layer::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        std::fs::write(&path, "listen = [1]\n").unwrap();
        assert!(Layer::from_file(&path).unwrap_err().to_string().contains("`listen`"));
    }

    #[test]
    fn tls_needs_both_files_and_names_the_one_at_fault() {
        let none = Layer::default();
        let err = Config::resolve(&none, &env(&[("HERALD_TLS_CERT", "/x/cert.pem")]), &none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`tls_cert`") && err.contains("HERALD_TLS_CERT") && err.contains("`tls_key`"),
            "{err}"
        );
        let err =
            Config::resolve(&none, &none, &layer(&[("tls_key", "/x/key.pem")])).unwrap_err().to_string();
        assert!(err.contains("`tls_key`") && err.contains("--tls-key"), "{err}");
        let file = layer(&[("tls_cert", "/nonexistent/cert.pem"), ("tls_key", "/nonexistent/key.pem")]);
        let err = Config::resolve(&file, &none, &none).unwrap_err().to_string();
        assert!(
            err.contains("`tls_cert`") && err.contains("config file") && err.contains("cannot read"),
            "{err}"
        );
        let err = Config::resolve(&none, &env(&[("HERALD_TLS_KEY", "")]), &none).unwrap_err().to_string();
        assert!(err.contains("`tls_key`") && err.contains("must not be empty"), "{err}");
        assert!(Config::resolve(&none, &none, &none).unwrap().tls.is_none());
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(herald_core::crypto::redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        let flags = layer(&[("admin_token", "a-very-secret-token")]);
        let config = Config::resolve(&Layer::default(), &Layer::default(), &flags).unwrap();
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
