//! Shared state of one node: configuration, the store, the master key and the admin credential.

use std::sync::Arc;

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::config::Config;
use herald_core::crypto::{self, MasterKey};
use herald_core::directory::Directory;
use herald_core::memory::Memory;
use herald_core::outbox::OutboxLimits;
use herald_core::{Hub, HubSettings};
use herald_store::Store;

pub type SharedState = Arc<AppState>;

pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub master: MasterKey,
    /// SHA-256 of the bootstrap admin token.
    pub admin_token_hash: String,
    /// HMAC key for admin session JWTs, derived from the master key so every node shares it.
    pub session_key: [u8; 32],
    /// The node's delivery core.
    pub hub: Arc<Hub>,
    /// Set once shutdown starts; `/readyz` then reports the node as not ready.
    pub draining: AtomicBool,
    /// HMAC key for SSE and long-poll cursors, derived from the master key so that a cursor
    /// from one node is accepted by every node.
    pub cursor_key: [u8; 32],
    /// Admin logins per client address (`admin_login_per_minute`).
    pub login_limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// Long-poll sessions between polls.
    pub long_polls: crate::transport::longpoll::LongPolls,
    /// Webhooks: the event sink of the hub, the queue and the dispatcher.
    pub hooks: Arc<crate::hooks::Hooks>,
    /// Tenants' proxy endpoints, as the hub calls them.
    pub proxies: Arc<crate::proxy::Proxies>,
    /// Where WebSocket connections run (not among the HTTP requests).
    pub sockets: crate::sockets::SocketRuntime,
}

/// How long cached tenant configuration is trusted before it is reloaded, bounding how long a
/// change made on another node takes to apply here.
pub const DIRECTORY_TTL: Duration = Duration::from_secs(5);

fn hub_settings(config: &Config) -> HubSettings {
    HubSettings {
        node_id: config.node_id.clone(),
        outbox: OutboxLimits {
            max_messages: config.client_queue_messages,
            max_bytes: config.client_queue_bytes,
        },
        ping_interval: config.ping_interval,
        pong_timeout: config.pong_timeout,
        auth_timeout: config.auth_timeout,
        write_timeout: config.http_write_timeout,
        max_inbound_frame_bytes: config.max_frame_bytes,
        max_subscriptions_per_connection: config.max_subscriptions_per_connection,
        idempotency_window: config.idempotency_window,
        reconnect_spread: config.reconnect_spread,
        history_max_bytes: config.history_max_bytes,
        tenant_history_max_bytes: config.tenant_history_max_bytes,
        max_live_channels_per_tenant: config.max_live_channels_per_tenant,
    }
}

/// How often the webhook detector looks at the cluster-wide view without a local change.
const HOOK_DETECTOR_TICK: Duration = Duration::from_millis(250);
/// How much longer than a delivery claim's lease the cluster queue waits before it hands a
/// message a node did not finish to another node.
const QUEUE_SLACK: Duration = Duration::from_secs(5);

/// Settings keys in the `settings` table.
pub const ADMIN_TOKEN_HASH: &str = "admin_token_sha256";
pub const MASTER_KEY_CHECK: &str = "master_key_check";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Store(#[from] herald_store::StoreError),
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(
        "the secret key does not match the one this database was set up with; set `secret_key` \
         (HERALD_SECRET_KEY) to the original value"
    )]
    WrongSecretKey,
    #[error("secret key file {path} is invalid: {message}")]
    BadKeyFile { path: String, message: String },
    #[error(transparent)]
    Cluster(#[from] herald_nats::ClusterError),
    #[error("cannot start the WebSocket runtime: {0}")]
    Sockets(std::io::Error),
}

/// What start-up produced that the operator must see once.
pub struct Bootstrap {
    pub state: SharedState,
    /// A generated admin token, to be printed once and never again.
    pub generated_admin_token: Option<String>,
}

/// Loads the master key from config, or from `<data_dir>/secret.key`, creating it on first start.
fn load_master_key(config: &Config) -> Result<MasterKey, BootError> {
    if let Some(encoded) = &config.secret_key {
        return Ok(MasterKey::from_base64(encoded).expect("validated by config"));
    }
    let path = config.data_dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => MasterKey::from_base64(&text)
            .map_err(|e| BootError::BadKeyFile { path: path.display().to_string(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MasterKey::generate();
            write_private_file(&path, &key.to_base64())
                .map_err(|source| BootError::DataDir { path: path.display().to_string(), source })?;
            tracing::info!(path = %path.display(), "generated a new secret key");
            Ok(key)
        }
        Err(source) => Err(BootError::DataDir { path: path.display().to_string(), source }),
    }
}

fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// The directory of a file-backed SQLite URL (`sqlite://path/db?mode=rwc`), so it can be created.
fn sqlite_parent_dir(url: &str) -> Option<std::path::PathBuf> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()).map(|p| p.to_owned())
}

/// Connects, migrates, and settles the secret key and the admin credential. `serving` is false
/// for `herald migrate`, which must not generate an admin token it would not print.
pub async fn bootstrap(config: Config, serving: bool) -> Result<Bootstrap, BootError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| BootError::DataDir { path: config.data_dir.display().to_string(), source })?;
    if let Some(dir) = sqlite_parent_dir(&config.database_url) {
        std::fs::create_dir_all(&dir)
            .map_err(|source| BootError::DataDir { path: dir.display().to_string(), source })?;
    }
    let master = load_master_key(&config)?;
    let store = Store::connect(&config.database_url).await?;
    store.migrate().await?;

    // A sealed marker proves the key is the one earlier secrets were sealed with.
    let check = master.seal(b"herald");
    if !store.set_setting_once(MASTER_KEY_CHECK, &check).await? {
        let stored = store.setting(MASTER_KEY_CHECK).await?.unwrap_or_default();
        if master.unseal(&stored).is_err() {
            return Err(BootError::WrongSecretKey);
        }
    }

    let mut generated_admin_token = None;
    let admin_token_hash = match &config.admin_token {
        Some(token) => {
            let hash = crypto::sha256_hex(token);
            store.set_setting(ADMIN_TOKEN_HASH, &hash).await?;
            hash
        }
        None if !serving => store.setting(ADMIN_TOKEN_HASH).await?.unwrap_or_default(),
        None => {
            let token = crypto::random_token("hadm_", 32);
            let hash = crypto::sha256_hex(&token);
            if store.set_setting_once(ADMIN_TOKEN_HASH, &hash).await? {
                generated_admin_token = Some(token);
                hash
            } else {
                store.setting(ADMIN_TOKEN_HASH).await?.unwrap_or(hash)
            }
        }
    };

    let session_key = master.derive("admin-session");
    // Store and proxy calls a WebSocket session makes run on this (the HTTP) runtime.
    let http = tokio::runtime::Handle::current();
    let config_source =
        crate::sockets::ConfigOffSockets { inner: Arc::new(store.clone()), http: http.clone() };
    let directory = Directory::new(Arc::new(config_source), master.clone(), DIRECTORY_TTL);
    // The one place that decides which backend the node runs on.
    let (backend, queue) = match (&config.nats_url, serving) {
        (Some(url), true) => {
            let cluster = herald_nats::Cluster::connect(
                url,
                &config.node_id,
                herald_nats::ClusterSettings {
                    heartbeat: config.cluster_heartbeat,
                    idempotency_window: config.idempotency_window,
                    history_max_bytes: config.cluster_history_max_bytes,
                    replicas: config.cluster_replicas,
                    store_interval: config.cluster_store_interval,
                },
            )
            .await?;
            // A queued delivery goes to another node once the claim of a node that died with
            // it has run out.
            let queue =
                cluster.hook_queue(crate::hooks::Hooks::lease_for(&config.webhooks) + QUEUE_SLACK).await?;
            (cluster.backend(), Some(queue))
        }
        _ => (Memory::backend(config.idempotency_window), None),
    };
    let hub = Hub::new(hub_settings(&config), directory, backend);
    let hooks = crate::hooks::Hooks::start(
        store.clone(),
        master.clone(),
        config.node_id.clone(),
        config.webhooks.clone(),
        config.outbound_allowed_networks.clone(),
        queue,
        serving,
    );
    if serving {
        hub.set_hooks(hooks.clone(), config.webhooks.grace, HOOK_DETECTOR_TICK);
    }
    let proxies =
        Arc::new(crate::proxy::Proxies::new(master.clone(), config.outbound_allowed_networks.clone()));
    hub.set_proxy(Arc::new(crate::sockets::ProxyOffSockets { inner: proxies.clone(), http }));
    let sockets = if serving {
        crate::sockets::SocketRuntime::start(config.socket_threads_nice).map_err(BootError::Sockets)?
    } else {
        crate::sockets::SocketRuntime::none()
    };
    let state = Arc::new(AppState {
        cursor_key: master.derive("cursor"),
        long_polls: crate::transport::longpoll::LongPolls::new(config.long_poll_session_idle),
        login_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(
            config.admin_login_per_minute,
        )),
        config,
        store,
        master,
        admin_token_hash,
        session_key,
        hub,
        draining: AtomicBool::new(false),
        hooks,
        proxies,
        sockets,
    });
    Ok(Bootstrap { state, generated_admin_token })
}
