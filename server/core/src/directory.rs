//! A node's cached view of tenant configuration: the tenant record, namespace options, active
//! signing keys and revocations, loaded together on first use and dropped when the management
//! API changes them (or after a short TTL, so changes made on other nodes arrive too).
//! Publishing and subscribing read only this cache; the database is read when a tenant is
//! (re)loaded and when a channel becomes live on the node (for its explicit options).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_types::model::{
    ApiKey, Channel, ChannelOptions, EffectiveChannelOptions, KeyStatus, Namespace, RevokedToken,
    SigningAlgorithm, SigningKey, Tenant, TenantProxy, UserRevocation,
};
use herald_types::names;

use crate::crypto::MasterKey;
use crate::error::StoreError;

/// Where the directory reads tenant configuration from: the store (`herald-store`), seen by
/// the core only through this trait.
#[async_trait]
pub trait ConfigSource: Send + Sync {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError>;
    /// At most `limit` of the tenant's namespaces.
    async fn namespaces(&self, tenant: &str, limit: u64) -> Result<Vec<Namespace>, StoreError>;
    /// At most `limit` of the tenant's signing keys, active or not.
    async fn signing_keys(&self, tenant: &str, limit: u64) -> Result<Vec<SigningKey>, StoreError>;
    async fn revoked_tokens(&self, tenant: &str, limit: u64) -> Result<Vec<RevokedToken>, StoreError>;
    async fn user_revocations(&self, tenant: &str, limit: u64) -> Result<Vec<UserRevocation>, StoreError>;
    /// An explicitly created channel.
    async fn channel(&self, tenant: &str, name: &str) -> Result<Option<Channel>, StoreError>;
    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError>;
    /// The tenant's proxy endpoints, if it configured any.
    async fn proxy(&self, _tenant: &str) -> Result<Option<TenantProxy>, StoreError> {
        Ok(None)
    }
}

pub struct VerifyKey {
    pub algorithm: SigningAlgorithm,
    pub key: jsonwebtoken::DecodingKey,
}

pub struct TenantSnapshot {
    pub tenant: Tenant,
    pub namespaces: HashMap<String, ChannelOptions>,
    /// Active signing keys by `kid`.
    pub keys: HashMap<String, VerifyKey>,
    pub revoked_jti: HashSet<String>,
    /// User → tokens issued before this Unix time are revoked.
    pub revoked_users: HashMap<String, i64>,
    /// Decisions the tenant delegates to its own endpoints.
    pub proxy: Option<Arc<TenantProxy>>,
    loaded: Instant,
}

impl TenantSnapshot {
    /// Whether clients without a token may be let in by the tenant's connect proxy.
    pub fn has_connect_proxy(&self) -> bool {
        self.proxy.as_ref().is_some_and(|p| p.settings.connect_url.is_some())
    }

    pub fn id(&self) -> &str {
        &self.tenant.id
    }

    /// Whether a token is revoked. `iat` has second precision, so a user revocation also
    /// covers tokens issued within the second it was made (erring on the side of refusing).
    pub fn is_revoked(&self, jti: Option<&str>, sub: &str, iat: i64) -> bool {
        jti.is_some_and(|j| !j.is_empty() && self.revoked_jti.contains(j))
            || self.revoked_users.get(sub).is_some_and(|before| iat <= *before)
    }
}

/// Revocations loaded per tenant at most; more are kept in the store but not enforced live.
const MAX_REVOCATIONS: u64 = 100_000;

/// How long "no such tenant" is remembered, and for how many ids at most.
const MISSING_TTL: Duration = Duration::from_secs(2);
const MAX_MISSING: usize = 10_000;

/// How long a cached API key lookup is trusted.
const API_KEY_TTL: Duration = Duration::from_secs(5);

pub struct CachedKey {
    pub key: ApiKey,
    loaded: Instant,
    /// Unix seconds of the last `last_used_at` write this node made for the key.
    touched: std::sync::atomic::AtomicU64,
}

impl CachedKey {
    /// Whether `last_used_at` is due to be written again (at most once per `every` seconds).
    pub fn should_touch(&self, every: u64) -> bool {
        use std::sync::atomic::Ordering;
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let stored = self.key.last_used_at.map_or(0, |t| t.timestamp().max(0) as u64);
        let last = self.touched.load(Ordering::Relaxed).max(stored);
        now.saturating_sub(last) >= every
            && self
                .touched
                .compare_exchange(
                    self.touched.load(Ordering::Relaxed),
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

pub struct Directory {
    store: Arc<dyn ConfigSource>,
    master: MasterKey,
    ttl: Duration,
    tenants: Mutex<HashMap<String, Arc<TenantSnapshot>>>,
    api_keys: Mutex<HashMap<String, Arc<CachedKey>>>,
    /// Tenant ids recently looked up and not found, so a flood of tokens naming unknown
    /// tenants does not become a flood of database reads.
    missing: Mutex<HashMap<String, Instant>>,
    /// One load at a time per tenant id (single flight).
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Reads of a channel's stored settings in flight, by tenant and channel: the subscribers
    /// and publishers that reach a channel no node has live at the same moment (an event
    /// starting) share one database read instead of each making their own.
    channel_reads: Mutex<HashMap<(String, String), Arc<ChannelRead>>>,
}

/// One read of a channel's stored settings, its answer shared by everyone who asked meanwhile.
type ChannelRead = tokio::sync::OnceCell<Result<Option<ChannelOptions>, StoreError>>;

/// A caller's share of a single-flight entry (a tenant's load, a channel's read). When the
/// caller is done or gives up, the entry leaves the map if it is `finished` or nobody else
/// holds it, so the map holds only what someone waits for. The caller's reference is released
/// under the map's lock: two callers leaving at once cannot each count the other and both
/// keep the entry.
struct InFlight<'m, K: Eq + std::hash::Hash, V> {
    map: &'m Mutex<HashMap<K, Arc<V>>>,
    key: K,
    entry: Option<Arc<V>>,
    finished: fn(&V) -> bool,
}

impl<'m, K: Eq + std::hash::Hash + Clone, V: Default> InFlight<'m, K, V> {
    /// The entry for `key`, made if there is none.
    fn join(map: &'m Mutex<HashMap<K, Arc<V>>>, key: K, finished: fn(&V) -> bool) -> Self {
        let entry = map.lock().expect("directory lock").entry(key.clone()).or_default().clone();
        InFlight { map, key, entry: Some(entry), finished }
    }

    fn get(&self) -> &V {
        self.entry.as_deref().expect("held until dropped")
    }
}

impl<K: Eq + std::hash::Hash, V> Drop for InFlight<'_, K, V> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(ours) = self.entry.take() else { return };
        let same = map.get(&self.key).is_some_and(|current| Arc::ptr_eq(current, &ours));
        let finished = (self.finished)(&ours);
        drop(ours);
        if same && (finished || map.get(&self.key).is_some_and(|current| Arc::strong_count(current) == 1)) {
            map.remove(&self.key);
        }
    }
}

impl Directory {
    pub fn new(store: Arc<dyn ConfigSource>, master: MasterKey, ttl: Duration) -> Directory {
        Directory {
            store,
            master,
            ttl,
            tenants: Mutex::default(),
            api_keys: Mutex::default(),
            missing: Mutex::default(),
            loading: Mutex::default(),
            channel_reads: Mutex::default(),
        }
    }

    /// What the cache knows of a tenant: `Some(answer)` when it is fresh.
    fn cached(&self, id: &str) -> Option<Option<Arc<TenantSnapshot>>> {
        if self.missing.lock().expect("directory lock").get(id).is_some_and(|at| at.elapsed() < MISSING_TTL) {
            return Some(None);
        }
        let tenants = self.tenants.lock().expect("directory lock");
        tenants.get(id).filter(|s| s.loaded.elapsed() < self.ttl).map(|s| Some(s.clone()))
    }

    /// The tenant's snapshot, loading it if absent or stale; `None` if the tenant does not exist.
    /// Concurrent lookups of one tenant that is not cached wait for a single load.
    pub async fn tenant(&self, id: &str) -> Result<Option<Arc<TenantSnapshot>>, StoreError> {
        if let Some(answer) = self.cached(id) {
            return Ok(answer);
        }
        self.load_once(id, false).await
    }

    /// Reads the tenant again after a change, whatever is cached: a load that was already
    /// running when the change was made may have read the old configuration, so this one waits
    /// for it and then reads afresh.
    pub async fn reload(&self, id: &str) -> Result<Option<Arc<TenantSnapshot>>, StoreError> {
        self.invalidate(id);
        self.load_once(id, true).await
    }

    /// One load at a time per tenant; `fresh` skips the cache another load may just have filled.
    async fn load_once(&self, id: &str, fresh: bool) -> Result<Option<Arc<TenantSnapshot>>, StoreError> {
        // Left when the last one waiting is done (each finds the cache filled by the first).
        let gate = InFlight::join(&self.loading, id.to_owned(), |_| false);
        let _loading = gate.get().lock().await;
        match self.cached(id).filter(|_| !fresh) {
            Some(answer) => Ok(answer),
            None => self.load_and_cache(id).await,
        }
    }

    async fn load_and_cache(&self, id: &str) -> Result<Option<Arc<TenantSnapshot>>, StoreError> {
        let Some(snapshot) = self.load(id).await? else {
            self.tenants.lock().expect("directory lock").remove(id);
            let mut missing = self.missing.lock().expect("directory lock");
            if missing.len() >= MAX_MISSING {
                missing.clear();
            }
            missing.insert(id.to_owned(), Instant::now());
            return Ok(None);
        };
        let snapshot = Arc::new(snapshot);
        self.tenants.lock().expect("directory lock").insert(id.to_owned(), snapshot.clone());
        Ok(Some(snapshot))
    }

    async fn load(&self, id: &str) -> Result<Option<TenantSnapshot>, StoreError> {
        let Some(tenant) = self.store.tenant(id).await? else { return Ok(None) };
        let namespaces =
            self.store.namespaces(id, 100_000).await?.into_iter().map(|n| (n.name, n.options)).collect();
        let mut keys = HashMap::new();
        for k in self.store.signing_keys(id, 10_000).await? {
            if k.status != KeyStatus::Active {
                continue;
            }
            let decoded = match (k.algorithm, &k.sealed_secret, &k.public_key_pem) {
                (SigningAlgorithm::HS256, Some(sealed), _) => self
                    .master
                    .unseal(sealed)
                    .ok()
                    .and_then(|secret| jsonwebtoken::DecodingKey::from_secret(&secret).ok()),
                (SigningAlgorithm::RS256, _, Some(pem)) => {
                    jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).ok()
                }
                (SigningAlgorithm::ES256, _, Some(pem)) => {
                    jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()).ok()
                }
                (SigningAlgorithm::EdDSA, _, Some(pem)) => {
                    jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()).ok()
                }
                _ => None,
            };
            match decoded {
                Some(key) => {
                    keys.insert(k.kid, VerifyKey { algorithm: k.algorithm, key });
                }
                None => {
                    tracing::error!(tenant = id, kid = %k.kid, "signing key cannot be loaded; ignoring it")
                }
            }
        }
        let revoked_jti =
            self.store.revoked_tokens(id, MAX_REVOCATIONS).await?.into_iter().map(|r| r.jti).collect();
        let revoked_users = self
            .store
            .user_revocations(id, MAX_REVOCATIONS)
            .await?
            .into_iter()
            .map(|r| (r.user_id, r.revoked_before.timestamp()))
            .collect();
        Ok(Some(TenantSnapshot {
            tenant,
            namespaces,
            keys,
            revoked_jti,
            revoked_users,
            proxy: self.store.proxy(id).await?.map(Arc::new),
            loaded: Instant::now(),
        }))
    }

    /// Forgets what is cached about the tenant, so the next use reloads it.
    pub fn invalidate(&self, id: &str) {
        self.tenants.lock().expect("directory lock").remove(id);
        self.missing.lock().expect("directory lock").remove(id);
        self.api_keys.lock().expect("directory lock").retain(|_, k| k.key.tenant_id != id);
        // A read of a channel's settings that began before the change does not answer those
        // who ask after it.
        self.channel_reads.lock().expect("directory lock").retain(|(tenant, _), _| tenant != id);
    }

    /// Options of a channel, or `None` if it neither exists nor may exist implicitly.
    pub async fn resolve_channel(
        &self,
        tenant: &TenantSnapshot,
        name: &str,
    ) -> Result<Option<EffectiveChannelOptions>, StoreError> {
        let explicit = self.stored_channel(tenant.id(), name).await?;
        let namespace = match names::namespace_of(name) {
            Some(ns) => match tenant.namespaces.get(ns) {
                Some(options) => Some(options),
                // A namespaced name needs its namespace, unless the channel was created
                // explicitly (its namespace may have been deleted since).
                None if explicit.is_none() => return Ok(None),
                None => None,
            },
            None => None,
        };
        let empty = ChannelOptions::default();
        let options = EffectiveChannelOptions::resolve(&[
            explicit.as_ref().unwrap_or(&empty),
            namespace.unwrap_or(&empty),
        ]);
        if explicit.is_none() && !options.allow_implicit {
            return Ok(None);
        }
        Ok(Some(options))
    }

    /// A channel's stored settings, read once for all who ask while the read runs (a caller
    /// that goes away mid-read hands it to the next). Nothing is kept after it: the next read
    /// after the answer goes to the database again.
    async fn stored_channel(&self, tenant: &str, name: &str) -> Result<Option<ChannelOptions>, StoreError> {
        // Left once it has answered (the next read goes to the database again), or when its
        // last caller gave up before it did.
        let read =
            InFlight::join(&self.channel_reads, (tenant.to_owned(), name.to_owned()), |r| r.initialized());
        read.get()
            .get_or_init(|| async { Ok(self.store.channel(tenant, name).await?.map(|c| c.options)) })
            .await
            .clone()
    }

    /// How many channel reads are in flight (each shared by everyone waiting for it).
    pub fn channel_reads_in_flight(&self) -> usize {
        self.channel_reads.lock().expect("directory lock").len()
    }

    /// Looks an API key up by the hash of its secret, through a short-lived cache.
    pub async fn api_key(&self, secret_hash: &str) -> Result<Option<Arc<CachedKey>>, StoreError> {
        if let Some(k) = self.api_keys.lock().expect("directory lock").get(secret_hash)
            && k.loaded.elapsed() < API_KEY_TTL
        {
            return Ok(Some(k.clone()));
        }
        let Some(key) = self.store.api_key_by_hash(secret_hash).await? else { return Ok(None) };
        let cached = Arc::new(CachedKey { key, loaded: Instant::now(), touched: Default::default() });
        let mut cache = self.api_keys.lock().expect("directory lock");
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(secret_hash.to_owned(), cached.clone());
        Ok(Some(cached))
    }
}
