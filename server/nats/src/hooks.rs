//! The webhook detector's lease and its cluster-wide view.
//!
//! One node at a time diffs the cluster's presence into `channel.*` and `presence.*` events:
//! the one holding the key `detector` in the KV bucket `HERALD_HOOKS`, whose entries live one
//! heartbeat. The holder renews it every third of a heartbeat with a compare-and-set on its
//! revision; when it dies, the key expires and the next node to try takes it over. That is
//! shorter than a dead node's presence entries live (two heartbeats), so the new detector
//! still sees the dead node's clients and then their departure.
//!
//! While it holds the lease, the node follows every presence entry with a KV watch and builds
//! the [`View`] from the occupancy (`<tenant>.o.<node>`) and channel presence
//! (`<tenant>.c.<channel>.<node>`) entries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::kv;
use futures_util::StreamExt;
use herald_core::backend::{HookView, PresentClient};
use herald_core::hooks::View;

use crate::stream::untoken;

const BUCKET: &str = "HERALD_HOOKS";
const KEY: &str = "detector";

#[derive(Default)]
struct Lease {
    /// The revision of our lease entry while we hold it.
    revision: Option<u64>,
    renewed: Option<Instant>,
    /// The presence entries as the watch delivered them, while we hold the lease.
    follower: Option<Follower>,
    /// The view was handed out since we took the lease.
    announced: bool,
}

struct Follower {
    /// Occupancy and channel presence entries by key, parsed as they arrive.
    entries: std::sync::Arc<Mutex<HashMap<String, Entry>>>,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) struct Detector {
    kv: kv::Store,
    presence: kv::Store,
    node_id: String,
    heartbeat: Duration,
    lease: tokio::sync::Mutex<Lease>,
}

impl Detector {
    pub(crate) async fn open(
        js: &jetstream::Context,
        node_id: &str,
        settings: &crate::ClusterSettings,
        presence: kv::Store,
    ) -> Result<Detector, async_nats::Error> {
        let kv = Self::ensure_bucket(js, settings).await?;
        Ok(Detector {
            kv,
            presence,
            node_id: node_id.to_owned(),
            heartbeat: settings.heartbeat,
            lease: tokio::sync::Mutex::default(),
        })
    }

    pub(crate) async fn ensure_bucket(
        js: &jetstream::Context,
        settings: &crate::ClusterSettings,
    ) -> Result<kv::Store, async_nats::Error> {
        Ok(js
            .create_or_update_key_value(kv::Config {
                bucket: BUCKET.into(),
                description: "Herald webhook detector lease".into(),
                history: 1,
                max_age: settings.heartbeat,
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await?)
    }

    /// Renews or tries to take the lease; answers the view of the tenants `wanted` accepts
    /// while we hold it.
    pub(crate) async fn view(&self, wanted: &(dyn for<'t> Fn(&'t str) -> bool + Sync)) -> Option<HookView> {
        let mut lease = self.lease.lock().await;
        let due = lease.renewed.is_none_or(|at| at.elapsed() >= self.heartbeat / 3);
        if due {
            let value = bytes::Bytes::from(self.node_id.clone());
            let result = match lease.revision {
                Some(revision) => self.kv.update(KEY, value, revision).await.map_err(|e| e.to_string()),
                None => self.kv.create(KEY, value).await.map_err(|e| e.to_string()),
            };
            match result {
                Ok(revision) => {
                    if lease.revision.is_none() {
                        tracing::info!("this node now detects webhook channel and presence events");
                        lease.follower = Some(self.follow());
                        lease.announced = false;
                    }
                    lease.revision = Some(revision);
                    lease.renewed = Some(Instant::now());
                }
                Err(e) => {
                    if lease.revision.is_some() {
                        tracing::warn!(error = %e, "lost the webhook detector lease");
                    }
                    *lease = Lease::default();
                    return None;
                }
            }
        }
        let follower = lease.follower.as_ref()?;
        if !follower.ready.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let view = build_view(&follower.entries.lock().expect("entries lock"), wanted);
        let took_over = !lease.announced;
        lease.announced = true;
        Some(HookView { view, took_over })
    }

    /// Follows every presence entry (current values first).
    fn follow(&self) -> Follower {
        let entries = std::sync::Arc::new(Mutex::new(HashMap::new()));
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let presence = self.presence.clone();
        let (e, r) = (entries.clone(), ready.clone());
        let task = tokio::spawn(async move {
            loop {
                e.lock().expect("entries lock").clear();
                r.store(false, std::sync::atomic::Ordering::Release);
                match presence.watch_with_history(">").await {
                    Ok(mut watch) => {
                        // An empty bucket sends nothing: ready after a moment then.
                        let mut settle = Box::pin(tokio::time::sleep(Duration::from_millis(500)));
                        // A finished sleep stays ready: poll it only until it fired once.
                        let mut settled = false;
                        loop {
                            tokio::select! {
                                entry = watch.next() => {
                                    let Some(Ok(entry)) = entry else { break };
                                    // Parsed once here, not at every view.
                                    let parsed = match entry.operation {
                                        kv::Operation::Put => parse_entry(&entry.key, &entry.value),
                                        kv::Operation::Delete | kv::Operation::Purge => None,
                                    };
                                    let mut map = e.lock().expect("entries lock");
                                    match parsed {
                                        Some(parsed) => { map.insert(entry.key.clone(), parsed); }
                                        None => { map.remove(&entry.key); }
                                    }
                                    if entry.delta == 0 || entry.seen_current {
                                        r.store(true, std::sync::atomic::Ordering::Release);
                                    }
                                }
                                _ = &mut settle, if !settled => {
                                    settled = true;
                                    r.store(true, std::sync::atomic::Ordering::Release);
                                }
                            }
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot watch presence for webhook events"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Follower { entries, ready, task }
    }
}

/// A presence entry the view is built from.
enum Entry {
    /// `<tenant>.o.<node>`: a node's channels with subscribers and their counts.
    Occupancy { tenant: String, counts: Vec<(String, u64)> },
    /// `<tenant>.c.<channel>.<node>`: the users of a node's subscribers of a presence channel.
    Channel { tenant: String, channel: String, users: BTreeSet<String> },
}

/// The entry a key and value describe, if the view uses it (`None` for user entries, empty
/// lists and what does not parse).
fn parse_entry(key: &str, value: &[u8]) -> Option<Entry> {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        [tenant, "o", _node] => {
            let counts = serde_json::from_slice::<HashMap<String, u64>>(value).ok()?;
            if counts.is_empty() {
                return None;
            }
            Some(Entry::Occupancy { tenant: untoken(tenant)?, counts: counts.into_iter().collect() })
        }
        [tenant, "c", channel, _node] => {
            let present = serde_json::from_slice::<Vec<PresentClient>>(value).ok()?;
            let users: BTreeSet<String> = present.into_iter().map(|p| p.user).collect();
            if users.is_empty() {
                return None;
            }
            Some(Entry::Channel { tenant: untoken(tenant)?, channel: untoken(channel)?, users })
        }
        _ => None,
    }
}

/// The cluster-wide view of the tenants `wanted` accepts, from the presence entries.
fn build_view(entries: &HashMap<String, Entry>, wanted: &(dyn for<'t> Fn(&'t str) -> bool + Sync)) -> View {
    let mut view = View::new();
    for entry in entries.values() {
        match entry {
            Entry::Occupancy { tenant, counts } if wanted(tenant) => {
                for (channel, n) in counts {
                    view.entry((tenant.clone(), channel.clone())).or_default().subscribers += n;
                }
            }
            Entry::Channel { tenant, channel, users } if wanted(tenant) => {
                view.entry((tenant.clone(), channel.clone()))
                    .or_default()
                    .users
                    .extend(users.iter().cloned());
            }
            _ => {}
        }
    }
    view
}
