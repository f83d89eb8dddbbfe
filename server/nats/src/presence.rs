//! The cluster presence registry: a NATS KV bucket (`HERALD_PRESENCE`, in memory) whose
//! entries every node rewrites each heartbeat, with a bucket TTL of two heartbeats. A node
//! that dies stops rewriting, so its connections leave the registry within two heartbeats.
//!
//! Entries are per node, so a node only ever writes its own:
//! - `<tenant>.c.<channel>.<node>`: the node's subscribers of a presence-enabled channel
//!   (client, user, token `info`);
//! - `<tenant>.u.<user>.<node>`: the node's connections of a user (client, transport, since);
//! - `<tenant>.o.<node>`: the node's channels with local subscribers and their counts.
//!
//! Changes (connects, subscriptions) are written within ~100 ms, rebuilding only the entries
//! they touched (a user's, a channel's, its tenant's occupancy); every entry is rewritten as
//! last written once per heartbeat to keep it alive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::kv;
use futures_util::StreamExt;

use herald_core::backend::{Node, PresenceChange, PresentClient, UserConnection};
use herald_core::channel::Channel;
use herald_core::{ConnId, Connection, Error};

use crate::stream::token;

const BUCKET: &str = "HERALD_PRESENCE";
/// At most this many channels per tenant and node in an occupancy entry (largest first).
const MAX_OCCUPANCY_CHANNELS: usize = 1000;
/// At most this many clients per channel and node in a presence entry, so an entry stays far
/// below NATS' 1 MiB message limit.
const MAX_PRESENT_PER_ENTRY: usize = 1000;

pub(crate) struct Registry {
    kv: kv::Store,
    node_id: String,
    heartbeat: Duration,
    /// What this node wrote last, by key, and when every entry was last rewritten.
    written: tokio::sync::Mutex<Written>,
    /// What changed since the last write.
    pending: std::sync::Mutex<Pending>,
    /// Set when local presence changed; the writer picks it up within ~100 ms.
    dirty: tokio::sync::Notify,
}

#[derive(Default)]
struct Written {
    entries: HashMap<String, bytes::Bytes>,
    renewed: Option<Instant>,
}

/// (tenant, user) or (tenant, channel).
type Pair = (Arc<str>, Arc<str>);

/// The entries a change touched, so a write rebuilds only those, not the whole node.
#[derive(Default)]
struct Pending {
    /// Rebuild every entry from the node's state: the first write, after a reconnection, after
    /// a failed write, or when more changed than [`MAX_PENDING`].
    all: bool,
    /// (tenant, user) whose connections changed.
    users: HashSet<Pair>,
    /// (tenant, channel) whose subscribers changed; their tenants' occupancy changed too.
    channels: HashSet<Pair>,
}

impl Pending {
    /// Everything, rebuilt from the node's state.
    fn everything() -> Pending {
        Pending { all: true, ..Pending::default() }
    }
}

/// Beyond this many changed users and channels between two writes, rebuild everything instead.
const MAX_PENDING: usize = 20_000;

/// A client id that is unique in the cluster: the node's id and the connection's.
pub(crate) fn cluster_client_id(node: &str, conn: ConnId) -> String {
    format!("{node}/{conn}")
}

impl Registry {
    pub(crate) async fn open(
        js: &jetstream::Context,
        node_id: &str,
        settings: &crate::ClusterSettings,
    ) -> Result<Registry, async_nats::Error> {
        let heartbeat = settings.heartbeat;
        let kv = Self::ensure_bucket(js, settings).await?;
        Ok(Registry {
            kv,
            node_id: node_id.to_owned(),
            heartbeat,
            written: tokio::sync::Mutex::default(),
            pending: std::sync::Mutex::new(Pending::everything()),
            dirty: tokio::sync::Notify::new(),
        })
    }

    /// Creates the bucket, or updates it to this node's heartbeat.
    pub(crate) async fn ensure_bucket(
        js: &jetstream::Context,
        settings: &crate::ClusterSettings,
    ) -> Result<kv::Store, async_nats::Error> {
        let heartbeat = settings.heartbeat;
        Ok(js
            .create_or_update_key_value(kv::Config {
                bucket: BUCKET.into(),
                description: "Herald presence registry".into(),
                history: 1,
                max_age: heartbeat * 2,
                // An entry that expires leaves a marker, so watchers learn a node is gone.
                limit_markers: Some(heartbeat * 2),
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await?)
    }

    /// The bucket, for the webhook detector's watch.
    pub(crate) fn store(&self) -> kv::Store {
        self.kv.clone()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().expect("presence lock")
    }

    /// Local presence changed: write the entries it touched soon.
    pub(crate) fn changed(&self, change: PresenceChange<'_>) {
        {
            let mut p = self.pending();
            if !p.all {
                match change {
                    PresenceChange::Connection { tenant, user } => {
                        p.users.insert((tenant.clone(), user.clone()));
                    }
                    PresenceChange::Subscription { tenant, channel } => {
                        p.channels.insert((tenant.clone(), channel.clone()));
                    }
                }
                if p.users.len() + p.channels.len() > MAX_PENDING {
                    *p = Pending::everything();
                }
            }
        }
        self.dirty.notify_one();
    }

    /// Rebuild and rewrite every entry soon (after a reconnection: the bucket may be new).
    pub(crate) fn rewrite_all(&self) {
        *self.pending() = Pending::everything();
        self.dirty.notify_one();
    }

    /// Waits for a change or the next heartbeat, whichever is first.
    pub(crate) async fn wait(&self, heartbeat_due: tokio::time::Instant) {
        tokio::select! {
            _ = self.dirty.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ = tokio::time::sleep_until(heartbeat_due) => {}
        }
    }

    fn user_key(&self, tenant: &str, user: &str) -> String {
        format!("{}.u.{}.{}", token(tenant), token(user), token(&self.node_id))
    }

    fn channel_key(&self, tenant: &str, channel: &str) -> String {
        format!("{}.c.{}.{}", token(tenant), token(channel), token(&self.node_id))
    }

    fn occupancy_key(&self, tenant: &str) -> String {
        format!("{}.o.{}", token(tenant), token(&self.node_id))
    }

    /// A user's entry: their connections here (the first [`MAX_PRESENT_PER_ENTRY`]).
    fn user_entry(&self, conns: &[Arc<Connection>]) -> Option<bytes::Bytes> {
        let listed: Vec<UserConnection> = conns
            .iter()
            .take(MAX_PRESENT_PER_ENTRY)
            .map(|c| UserConnection {
                client: cluster_client_id(&self.node_id, c.id),
                transport: c.transport.as_str().to_owned(),
                node: self.node_id.clone(),
                connected_at: c.connected_at,
            })
            .collect();
        (!listed.is_empty()).then(|| serde_json::to_vec(&listed).expect("serialises").into())
    }

    /// A presence channel's entry: its subscribers here (the first [`MAX_PRESENT_PER_ENTRY`]).
    fn channel_entry(&self, ch: &Channel) -> Option<bytes::Bytes> {
        if !ch.options().presence {
            return None;
        }
        let present: Vec<PresentClient> = ch
            .subscribers()
            .into_iter()
            .take(MAX_PRESENT_PER_ENTRY)
            .map(|(conn, user, info)| PresentClient {
                client: cluster_client_id(&self.node_id, conn),
                user: user.to_string(),
                info: info.map(|i| (*i).to_owned()),
            })
            .collect();
        (!present.is_empty()).then(|| serde_json::to_vec(&present).expect("serialises").into())
    }

    /// A tenant's occupancy entry: its channels with subscribers here and their counts (the
    /// [`MAX_OCCUPANCY_CHANNELS`] largest).
    fn occupancy_entry(&self, channels: &[Arc<Channel>]) -> Option<bytes::Bytes> {
        let mut counts: Vec<(&str, usize)> =
            channels.iter().map(|ch| (&*ch.name, ch.subscriber_count())).filter(|(_, n)| *n > 0).collect();
        if counts.is_empty() {
            return None;
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        counts.truncate(MAX_OCCUPANCY_CHANNELS);
        let map: HashMap<&str, usize> = counts.into_iter().collect();
        Some(serde_json::to_vec(&map).expect("serialises").into())
    }

    /// Every entry of this node as it is now.
    fn entries(&self, node: &dyn Node) -> HashMap<String, bytes::Bytes> {
        let mut users: HashMap<Pair, Vec<Arc<Connection>>> = HashMap::new();
        for c in node.connections() {
            users.entry((c.tenant.clone(), c.user.clone())).or_default().push(c);
        }
        let mut out = HashMap::new();
        for ((tenant, user), mut conns) in users {
            conns.sort_by_key(|c| c.id);
            if let Some(entry) = self.user_entry(&conns) {
                out.insert(self.user_key(&tenant, &user), entry);
            }
        }
        let mut tenants: HashMap<Arc<str>, Vec<Arc<Channel>>> = HashMap::new();
        for ch in node.channels() {
            if let Some(entry) = self.channel_entry(&ch) {
                out.insert(self.channel_key(&ch.tenant, &ch.name), entry);
            }
            tenants.entry(ch.tenant.clone()).or_default().push(ch);
        }
        for (tenant, channels) in tenants {
            if let Some(entry) = self.occupancy_entry(&channels) {
                out.insert(self.occupancy_key(&tenant), entry);
            }
        }
        out
    }

    /// The entries `pending` touched, as they are now (`None`: no longer exists here).
    fn changed_entries(&self, node: &dyn Node, pending: &Pending) -> Vec<(String, Option<bytes::Bytes>)> {
        let mut out = Vec::with_capacity(pending.users.len() + pending.channels.len());
        for (tenant, user) in &pending.users {
            out.push((self.user_key(tenant, user), self.user_entry(&node.connections_of(tenant, user))));
        }
        let mut tenants: HashSet<&Arc<str>> = HashSet::new();
        for (tenant, channel) in &pending.channels {
            let entry = node.channel(tenant, channel).and_then(|ch| self.channel_entry(&ch));
            out.push((self.channel_key(tenant, channel), entry));
            tenants.insert(tenant);
        }
        for tenant in tenants {
            out.push((self.occupancy_key(tenant), self.occupancy_entry(&node.channels_of(tenant))));
        }
        out
    }

    /// Writes the entries that changed since the last write (rebuilding only those), and every
    /// entry, as last written, when the heartbeat's rewrite is due. An entry that no longer
    /// exists is written empty once.
    pub(crate) async fn refresh(&self, node: &dyn Node) -> Result<(), Error> {
        let mut written = self.written.lock().await;
        let pending = std::mem::take(&mut *self.pending());
        let now = Instant::now();
        let renew = written.renewed.is_none_or(|at| now.duration_since(at) >= self.heartbeat * 3 / 4);
        let updates: Vec<(String, Option<bytes::Bytes>)> = if pending.all {
            let entries = self.entries(node);
            let gone: Vec<String> =
                written.entries.keys().filter(|k| !entries.contains_key(*k)).cloned().collect();
            entries
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .chain(gone.into_iter().map(|k| (k, None)))
                .collect()
        } else {
            self.changed_entries(node, &pending)
        };
        let mut puts: Vec<(String, bytes::Bytes)> = Vec::new();
        for (key, value) in updates {
            match value {
                Some(v) => {
                    if written.entries.get(&key) != Some(&v) {
                        if !renew {
                            puts.push((key.clone(), v.clone()));
                        }
                        written.entries.insert(key, v);
                    }
                }
                // An entry that empties is written empty once and left to expire, never
                // purged: a purge or delete is then always an expiry, which watchers turn into
                // leave events.
                None => {
                    if written.entries.remove(&key).is_some() {
                        let empty = if key.contains(".o.") { "{}" } else { "[]" };
                        puts.push((key, bytes::Bytes::from_static(empty.as_bytes())));
                    }
                }
            }
        }
        if renew {
            puts.extend(written.entries.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let kv = &self.kv;
        let mut results = futures_util::stream::iter(
            puts.into_iter()
                .map(|(k, v)| async move { kv.put(&k, v).await.map(|_| ()).map_err(|e| e.to_string()) }),
        )
        .buffer_unordered(64);
        let mut error = None;
        while let Some(result) = results.next().await {
            if let Err(e) = result {
                error = Some(e);
                break;
            }
        }
        drop(results);
        if let Some(e) = error {
            // Rebuild and write everything next time.
            written.renewed = None;
            *self.pending() = Pending::everything();
            return Err(Error::ClusterUnavailable(e));
        }
        if renew {
            written.renewed = Some(now);
        }
        Ok(())
    }

    /// The current values of every key matching `filter` (KV key syntax, `*` wildcards).
    async fn read(&self, filter: &str) -> Result<Vec<bytes::Bytes>, Error> {
        let unavailable = |e: &dyn std::fmt::Display| Error::ClusterUnavailable(e.to_string());
        let prefix = format!("$KV.{BUCKET}.");
        let mut subjects = self
            .kv
            .stream
            .info_with_subjects(format!("{prefix}{filter}"))
            .await
            .map_err(|e| unavailable(&e))?;
        let mut keys = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| unavailable(&e))?;
            if let Some(key) = subject.strip_prefix(&prefix) {
                keys.push(key.to_owned());
            }
        }
        let kv = &self.kv;
        let values = futures_util::stream::iter(keys.into_iter().map(|k| async move { kv.get(k).await }))
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::new();
        for v in values {
            if let Some(bytes) = v.map_err(|e| unavailable(&e))?
                && !bytes.is_empty()
            {
                out.push(bytes);
            }
        }
        Ok(out)
    }

    /// Follows the presence entries of one channel on every node (current values first).
    pub(crate) async fn watch_channel(&self, tenant: &str, channel: &str) -> Result<kv::Watch, Error> {
        self.kv
            .watch(format!("{}.c.{}.*", token(tenant), token(channel)))
            .await
            .map_err(|e| Error::ClusterUnavailable(e.to_string()))
    }

    /// This node's token in presence keys.
    pub(crate) fn node_token(&self) -> String {
        token(&self.node_id)
    }

    /// Who is subscribed to a channel, on every node.
    pub(crate) async fn channel(&self, tenant: &str, channel: &str) -> Result<Vec<PresentClient>, Error> {
        let mut out: Vec<PresentClient> = Vec::new();
        for value in self.read(&format!("{}.c.{}.*", token(tenant), token(channel))).await? {
            out.extend(serde_json::from_slice::<Vec<PresentClient>>(&value).unwrap_or_default());
        }
        out.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(out)
    }

    /// A user's connections, on every node.
    pub(crate) async fn user(&self, tenant: &str, user: &str) -> Result<Vec<UserConnection>, Error> {
        let mut out: Vec<UserConnection> = Vec::new();
        for value in self.read(&format!("{}.u.{}.*", token(tenant), token(user))).await? {
            out.extend(serde_json::from_slice::<Vec<UserConnection>>(&value).unwrap_or_default());
        }
        out.sort_by(|a, b| a.connected_at.cmp(&b.connected_at).then_with(|| a.client.cmp(&b.client)));
        Ok(out)
    }

    /// Channels of a tenant with subscribers anywhere, and how many, largest first.
    pub(crate) async fn occupancy(&self, tenant: &str) -> Result<Vec<(String, u64)>, Error> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for value in self.read(&format!("{}.o.*", token(tenant))).await? {
            for (name, n) in serde_json::from_slice::<HashMap<String, u64>>(&value).unwrap_or_default() {
                *counts.entry(name).or_default() += n;
            }
        }
        let mut out: Vec<_> = counts.into_iter().collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(out)
    }
}
