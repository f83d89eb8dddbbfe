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
//! Changes (connects, subscriptions) are written within ~100 ms; unchanged entries are
//! rewritten once per heartbeat to keep them alive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::kv;
use futures_util::StreamExt;

use herald_core::backend::{Node, PresentClient, UserConnection};
use herald_core::{ConnId, Error};

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
    /// What this node wrote last, by key, and when the full set was last rewritten.
    written: tokio::sync::Mutex<(HashMap<String, bytes::Bytes>, Option<Instant>)>,
    /// Set when local presence changed; the writer picks it up within ~100 ms.
    dirty: tokio::sync::Notify,
}

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

    /// Local presence changed: write it out soon.
    pub(crate) fn changed(&self) {
        self.dirty.notify_one();
    }

    /// Waits for a change or the next heartbeat, whichever is first.
    pub(crate) async fn wait(&self, heartbeat_due: tokio::time::Instant) {
        tokio::select! {
            _ = self.dirty.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ = tokio::time::sleep_until(heartbeat_due) => {}
        }
    }

    /// This node's entries as they are now.
    fn entries(&self, node: &dyn Node) -> HashMap<String, bytes::Bytes> {
        let mut users: HashMap<(Arc<str>, Arc<str>), Vec<UserConnection>> = HashMap::new();
        for c in node.connections() {
            users.entry((c.tenant.clone(), c.user.clone())).or_default().push(UserConnection {
                client: cluster_client_id(&self.node_id, c.id),
                transport: c.transport.as_str().to_owned(),
                node: self.node_id.clone(),
                connected_at: c.connected_at,
            });
        }
        let mut out = HashMap::new();
        let me = token(&self.node_id);
        for ((tenant, user), conns) in users {
            let key = format!("{}.u.{}.{me}", token(&tenant), token(&user));
            out.insert(key, serde_json::to_vec(&conns).expect("serialises").into());
        }
        let mut occupancy: HashMap<Arc<str>, Vec<(Arc<str>, usize)>> = HashMap::new();
        for ch in node.channels() {
            let subscribers = ch.subscribers();
            if subscribers.is_empty() {
                continue;
            }
            occupancy.entry(ch.tenant.clone()).or_default().push((ch.name.clone(), subscribers.len()));
            if !ch.options().presence {
                continue;
            }
            let present: Vec<PresentClient> = subscribers
                .into_iter()
                .take(MAX_PRESENT_PER_ENTRY)
                .map(|(conn, user, info)| PresentClient {
                    client: cluster_client_id(&self.node_id, conn),
                    user: user.to_string(),
                    info: info.map(|i| (*i).to_owned()),
                })
                .collect();
            let key = format!("{}.c.{}.{me}", token(&ch.tenant), token(&ch.name));
            out.insert(key, serde_json::to_vec(&present).expect("serialises").into());
        }
        for (tenant, mut channels) in occupancy {
            channels.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            channels.truncate(MAX_OCCUPANCY_CHANNELS);
            let map: HashMap<&str, usize> = channels.iter().map(|(n, c)| (&**n, *c)).collect();
            out.insert(
                format!("{}.o.{me}", token(&tenant)),
                serde_json::to_vec(&map).expect("serialises").into(),
            );
        }
        out
    }

    /// Writes changed entries (all of them when a heartbeat is due) and deletes those that no
    /// longer exist.
    pub(crate) async fn refresh(&self, node: &dyn Node) -> Result<(), Error> {
        let entries = self.entries(node);
        let mut written = self.written.lock().await;
        let now = Instant::now();
        let all = written.1.is_none_or(|at| now.duration_since(at) >= self.heartbeat * 3 / 4);
        let puts: Vec<(String, bytes::Bytes)> = entries
            .iter()
            .filter(|(k, v)| all || written.0.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let gone: Vec<String> = written.0.keys().filter(|k| !entries.contains_key(*k)).cloned().collect();
        let kv = &self.kv;
        let mut results = futures_util::stream::iter(
            puts.into_iter()
                .map(|(k, v)| async move { kv.put(&k, v).await.map(|_| ()).map_err(|e| e.to_string()) }),
        )
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
        // An entry that empties is written empty once and left to expire, never purged: a
        // purge or delete is then always an expiry, which watchers turn into leave events.
        results.extend(
            futures_util::stream::iter(gone.into_iter().map(|k| async move {
                let empty = if k.contains(".o.") { "{}" } else { "[]" };
                kv.put(&k, bytes::Bytes::from_static(empty.as_bytes()))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }))
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await,
        );
        let error = results.into_iter().find_map(Result::err);
        if let Some(e) = error {
            // Write everything again next time.
            written.1 = None;
            return Err(Error::ClusterUnavailable(e));
        }
        written.0 = entries;
        if all {
            written.1 = Some(now);
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
