//! The delivery contract, in process, against both backends: the single-node default
//! (`herald_core::memory`) and the NATS cluster backend on a real `nats-server` (two nodes on
//! one server where the contract spans nodes). Each test runs once per backend
//! (`contract_test!`); the end-to-end tests through the binary check the same over the wire.
//!
//! What a backend must guarantee: positions increase by one per message in publish order; a
//! resume from a position still in history delivers exactly the missed messages, then live
//! ones, with nothing lost or repeated; a resume that cannot be served says
//! `recovered: false`; an idempotency key publishes once; a subscriber that does not keep up is
//! dropped without hurting the others; history pages read the same messages.

#[allow(dead_code)]
#[path = "../../../tests/support/nats.rs"]
mod nats_support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use herald_core::backend::{Backend, NewMessage};
use herald_core::channel::{StreamPosition, SubscribeOutcome, Subscriber};
use herald_core::crypto::MasterKey;
use herald_core::directory::{ConfigSource, Directory, TenantSnapshot};
use herald_core::memory::Memory;
use herald_core::outbox::{Outbox, OutboxLimits, Outgoing};
use herald_core::{ConnId, Disconnect, Hub, HubSettings, StoreError};
use herald_nats::{Cluster, ClusterSettings};
use herald_types::model::{
    ApiKey, Channel, ChannelOptions, Namespace, RevokedToken, SigningKey, Tenant, TenantLimits, TenantStatus,
    UserRevocation,
};
use serde_json::value::RawValue;

const TENANT: &str = "acme";

/// Tenant configuration for the contract: one tenant whose plain channels exist implicitly
/// (history 100) and whose `small:` namespace keeps 3 messages.
struct Config;

#[async_trait]
impl ConfigSource for Config {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        Ok((id == TENANT).then(|| Tenant {
            id: TENANT.into(),
            name: "Acme".into(),
            status: TenantStatus::Active,
            allowed_origins: vec![],
            limits: TenantLimits::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }))
    }
    async fn namespaces(&self, tenant: &str, _limit: u64) -> Result<Vec<Namespace>, StoreError> {
        Ok(vec![Namespace {
            tenant_id: tenant.into(),
            name: "small".into(),
            options: ChannelOptions { history_size: Some(3), ..Default::default() },
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }])
    }
    async fn signing_keys(&self, _: &str, _: u64) -> Result<Vec<SigningKey>, StoreError> {
        Ok(vec![])
    }
    async fn revoked_tokens(&self, _: &str, _: u64) -> Result<Vec<RevokedToken>, StoreError> {
        Ok(vec![])
    }
    async fn user_revocations(&self, _: &str, _: u64) -> Result<Vec<UserRevocation>, StoreError> {
        Ok(vec![])
    }
    async fn channel(&self, _: &str, _: &str) -> Result<Option<Channel>, StoreError> {
        Ok(None)
    }
    async fn api_key_by_hash(&self, _: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(None)
    }
}

fn settings(node: &str, queue: usize) -> HubSettings {
    HubSettings {
        node_id: node.into(),
        outbox: OutboxLimits { max_messages: queue, max_bytes: 1 << 20 },
        ping_interval: Duration::from_secs(25),
        pong_timeout: Duration::from_secs(10),
        auth_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
        max_inbound_frame_bytes: 1 << 20,
        max_subscriptions_per_connection: 100,
        idempotency_window: Duration::from_secs(300),
        reconnect_spread: Duration::ZERO,
        history_max_bytes: 1 << 30,
        tenant_history_max_bytes: 1 << 28,
        max_live_channels_per_tenant: 10_000,
    }
}

fn node(name: &str, backend: Backend, queue: usize) -> Arc<Hub> {
    let directory = Directory::new(Arc::new(Config), MasterKey::generate(), Duration::from_secs(60));
    Hub::new(settings(name, queue), directory, backend)
}

/// The nodes a contract test runs on, and what keeps their backend alive.
struct Nodes {
    /// Two nodes sharing one backend: the same node twice on the single-node backend, two
    /// nodes on one NATS server in cluster mode.
    a: Arc<Hub>,
    b: Arc<Hub>,
    _nats: Option<nats_support::NatsServer>,
}

async fn memory(queue: usize) -> Option<Nodes> {
    let hub = node("n1", Memory::backend(Duration::from_secs(300)), queue);
    Some(Nodes { a: hub.clone(), b: hub, _nats: None })
}

async fn nats(queue: usize) -> Option<Nodes> {
    let server = nats_support::NatsServer::start().await?;
    let cluster_settings = ClusterSettings {
        heartbeat: Duration::from_secs(2),
        idempotency_window: Duration::from_secs(300),
        history_max_bytes: 64 << 20,
        replicas: 1,
        store_interval: Duration::from_millis(1),
    };
    let mut hubs = Vec::new();
    for name in ["n1", "n2"] {
        let cluster = Cluster::connect(&server.url, name, cluster_settings).await.expect("connect to NATS");
        hubs.push(node(name, cluster.backend(), queue));
    }
    let b = hubs.pop().expect("two");
    let a = hubs.pop().expect("two");
    Some(Nodes { a, b, _nats: Some(server) })
}

/// Runs a contract test on each backend.
macro_rules! contract_test {
    ($name:ident, $queue:expr, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                if let Some(nodes) = super::memory($queue).await {
                    super::$body(nodes).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                if let Some(nodes) = super::nats($queue).await {
                    super::$body(nodes).await;
                }
            }
        }
    };
}

/// One subscribed connection: its outbox and what arrived in it.
struct Client {
    conn: ConnId,
    outbox: Arc<Outbox>,
    seen: Vec<Outgoing>,
}

async fn tenant(hub: &Hub) -> Arc<TenantSnapshot> {
    hub.directory.tenant(TENANT).await.expect("config").expect("tenant")
}

async fn subscribe(
    hub: &Arc<Hub>,
    channel: &str,
    since: Option<StreamPosition>,
) -> (Client, SubscribeOutcome) {
    let ch = hub.channel(&*tenant(hub).await, channel).await.expect("channel");
    let outbox = Arc::new(Outbox::new(hub.settings.outbox));
    let conn = hub.next_conn_id();
    let subscriber = Subscriber { outbox: outbox.clone(), user: Arc::from("u"), info: None };
    let reply = Box::new(|_: &SubscribeOutcome| vec![Outgoing::Frame("subscribed".into())]);
    let outcome = hub.subscribe(&ch, conn, subscriber, since, reply).await.expect("subscribed");
    (Client { conn, outbox, seen: Vec::new() }, outcome)
}

async fn publish(
    hub: &Hub,
    channel: &str,
    n: u64,
    key: Option<&str>,
) -> herald_core::channel::PublishOutcome {
    let data = RawValue::from_string(format!("{{\"n\":{n}}}")).expect("json");
    let message = NewMessage { data, event: None, idempotency_key: key.map(str::to_owned) };
    hub.publish(&*tenant(hub).await, channel, message, herald_core::hub::Publisher::Api)
        .await
        .expect("published")
}

impl Client {
    /// Positions of the publications received so far (after the `subscribed` reply), waiting
    /// until `count` arrived or two seconds passed.
    async fn positions(&mut self, count: usize) -> Vec<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let _ = self.outbox.drain(&mut self.seen);
            let got = self.pub_positions();
            if got.len() >= count || tokio::time::Instant::now() >= deadline {
                return got;
            }
            let _ = tokio::time::timeout_at(deadline, self.outbox.ready()).await;
        }
    }

    fn pub_positions(&self) -> Vec<u64> {
        self.seen
            .iter()
            .filter_map(|o| match o {
                Outgoing::Publication(p) => Some(p.position),
                Outgoing::Frame(_) => None,
            })
            .collect()
    }
}

contract_test!(positions_follow_publish_order_across_nodes, 1000, positions_follow_publish_order);
async fn positions_follow_publish_order(nodes: Nodes) {
    let (mut on_a, _) = subscribe(&nodes.a, "orders", None).await;
    let (mut on_b, _) = subscribe(&nodes.b, "orders", None).await;
    let mut assigned = Vec::new();
    for n in 1..=100 {
        let hub = if n % 2 == 0 { &nodes.a } else { &nodes.b };
        assigned.push(publish(hub, "orders", n, None).await.position);
    }
    assert_eq!(assigned, (1..=100).collect::<Vec<u64>>(), "positions are contiguous in publish order");
    assert_eq!(on_a.positions(100).await, assigned);
    assert_eq!(on_b.positions(100).await, assigned);
    assert!(
        matches!(&on_a.seen[0], Outgoing::Frame(f) if f.as_str() == "subscribed"),
        "the reply comes first"
    );
}

contract_test!(a_resume_replays_exactly_what_was_missed, 1000, resume_replays_missed);
async fn resume_replays_missed(nodes: Nodes) {
    let (mut first, start) = subscribe(&nodes.a, "feed", None).await;
    for n in 1..=5 {
        publish(&nodes.a, "feed", n, None).await;
    }
    assert_eq!(first.positions(5).await, vec![1, 2, 3, 4, 5]);
    let ch = nodes.a.channel(&*tenant(&nodes.a).await, "feed").await.expect("channel");
    nodes.a.unsubscribe(&ch, first.conn);
    for n in 6..=8 {
        publish(&nodes.a, "feed", n, None).await;
    }
    // Back on the other node, from the last position seen.
    let since = StreamPosition { position: 5, epoch: start.epoch.to_string() };
    let (mut again, outcome) = subscribe(&nodes.b, "feed", Some(since)).await;
    assert_eq!(outcome.recovered, Some(true));
    publish(&nodes.a, "feed", 9, None).await;
    assert_eq!(again.positions(4).await, vec![6, 7, 8, 9], "missed ones once, then live, in order");
}

contract_test!(an_unservable_resume_says_not_recovered, 1000, unservable_resume);
async fn unservable_resume(nodes: Nodes) {
    let (_keep, start) = subscribe(&nodes.a, "small:x", None).await;
    for n in 1..=6 {
        publish(&nodes.a, "small:x", n, None).await;
    }
    // Another epoch.
    let (mut other, outcome) =
        subscribe(&nodes.b, "small:x", Some(StreamPosition { position: 2, epoch: "elsewhere".into() })).await;
    assert_eq!(outcome.recovered, Some(false));
    // Further back than the 3 messages kept.
    let since = StreamPosition { position: 1, epoch: start.epoch.to_string() };
    let (mut old, outcome) = subscribe(&nodes.b, "small:x", Some(since)).await;
    assert_eq!(outcome.recovered, Some(false));
    // Ahead of the stream.
    let since = StreamPosition { position: 99, epoch: start.epoch.to_string() };
    let (_ahead, outcome) = subscribe(&nodes.b, "small:x", Some(since)).await;
    assert_eq!(outcome.recovered, Some(false));
    // Within the 3 kept: served.
    let since = StreamPosition { position: 3, epoch: start.epoch.to_string() };
    let (mut near, outcome) = subscribe(&nodes.b, "small:x", Some(since)).await;
    assert_eq!(outcome.recovered, Some(true));
    assert_eq!(near.positions(3).await, vec![4, 5, 6]);
    // Not recovered: nothing replayed, live messages from here on.
    publish(&nodes.a, "small:x", 7, None).await;
    assert_eq!(other.positions(1).await, vec![7]);
    assert_eq!(old.positions(1).await, vec![7]);
}

contract_test!(an_idempotency_key_publishes_once, 1000, idempotency_key_publishes_once);
async fn idempotency_key_publishes_once(nodes: Nodes) {
    let (mut sub, _) = subscribe(&nodes.a, "pay", None).await;
    let first = publish(&nodes.a, "pay", 1, Some("k-1")).await;
    let again = publish(&nodes.b, "pay", 1, Some("k-1")).await;
    let other = publish(&nodes.a, "pay", 2, Some("k-2")).await;
    assert!(!first.duplicate && again.duplicate && !other.duplicate);
    assert_eq!((again.position, again.id.clone()), (first.position, first.id.clone()));
    assert_eq!(sub.positions(3).await, vec![first.position, other.position], "delivered once each");
}

contract_test!(a_slow_consumer_is_dropped_alone, 8, slow_consumer_dropped_alone);
async fn slow_consumer_dropped_alone(nodes: Nodes) {
    let (stalled, _) = subscribe(&nodes.a, "fast", None).await;
    let (mut reader, _) = subscribe(&nodes.a, "fast", None).await;
    for n in 1..=30 {
        publish(&nodes.a, "fast", n, None).await;
        // Keeps up: takes each message before the next is published.
        assert_eq!(reader.positions(n as usize).await.len(), n as usize);
    }
    assert_eq!(
        reader.positions(30).await,
        (1..=30).collect::<Vec<u64>>(),
        "the reader that keeps up gets all"
    );
    let mut rest = Vec::new();
    assert_eq!(stalled.outbox.drain(&mut rest), Err(Disconnect::SlowConsumer), "the stalled one is closed");
}

contract_test!(history_pages_read_the_stream, 1000, history_reads_the_stream);
async fn history_reads_the_stream(nodes: Nodes) {
    let (_keep, start) = subscribe(&nodes.a, "log", None).await;
    for n in 1..=10 {
        publish(&nodes.a, "log", n, None).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ch = nodes.b.channel(&*tenant(&nodes.b).await, "log").await.expect("channel");
    let newest = nodes.b.history(&ch, None, 4).await.expect("history");
    assert_eq!(newest.publications.iter().map(|p| p.position).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
    assert_eq!(newest.position, 10);
    let since = StreamPosition { position: 2, epoch: start.epoch.to_string() };
    let page = nodes.b.history(&ch, Some(&since), 3).await.expect("history");
    assert!(page.complete);
    assert_eq!(page.publications.iter().map(|p| p.position).collect::<Vec<_>>(), vec![3, 4, 5]);
    let foreign = StreamPosition { position: 2, epoch: "nope".into() };
    assert!(!nodes.b.history(&ch, Some(&foreign), 3).await.expect("history").complete);
}

/// A message on a channel's stored subject that is not Herald's (here: a position that is not a
/// number, under the channel's own epoch) cannot say which positions are taken: the channel
/// goes on in a new epoch after it, on every node, and never hands out a position twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_head_starts_a_new_epoch() {
    let Some(nodes) = nats(1000).await else { return };
    let before = publish(&nodes.a, "intruded", 1, None).await;
    assert_eq!(before.position, 1);
    let url = &nodes._nats.as_ref().expect("nats").url;
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.expect("connect"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Herald-Position", "not-a-number");
    headers.insert("Herald-Epoch", &*before.epoch);
    headers.insert("Herald-Previous-Seq", "1");
    js.publish_with_headers(format!("herald.ch.{TENANT}.intruded"), headers, "{}".into())
        .await
        .expect("sent")
        .await
        .expect("stored");
    // Node b has not seen the channel's head yet; node a's cached head is now stale.
    let on_b = publish(&nodes.b, "intruded", 2, None).await;
    let on_a = publish(&nodes.a, "intruded", 3, None).await;
    assert_ne!(on_b.epoch, before.epoch, "position 1 of the old epoch is taken: a new epoch starts");
    assert_eq!((on_b.position, on_a.position), (1, 2));
    assert_eq!(on_a.epoch, on_b.epoch, "both nodes go on in the same epoch");
}
