//! Cluster mode: three real nodes on one database and one real `nats-server` (JetStream on).
//! Every test starts its own NATS on a free port, so it can kill and restart it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Client, Herald, NatsServer, PgDatabase, Sse, Start, poll, postgres_database};

/// Presence heartbeat of the test nodes; entries expire after two.
const HEARTBEAT_SECONDS: u64 = 1;

pub(crate) struct Cluster {
    pub(crate) nats: NatsServer,
    pub(crate) nodes: Vec<Herald>,
    /// How each node was started, to restart it the same way.
    starts: Vec<Start>,
    /// The tenant's all-scope API key, one client per node.
    pub(crate) keys: Vec<Client>,
    _db: Option<PgDatabase>,
    _sqlite_dir: Option<tempfile::TempDir>,
}

impl Drop for Cluster {
    /// A failed test shows what every node and NATS logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, node) in self.nodes.iter().enumerate() {
                eprintln!("---- node{} log ----\n{}", i + 1, node.log());
            }
            eprintln!("---- nats log ----\n{}", self.nats.log());
        }
    }
}

fn secret_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2))
}

/// NATS plus `n` nodes sharing a database (PostgreSQL when available, else one SQLite file)
/// and a secret key, with tenant `acme` set up; `None` when nats-server is not installed.
async fn cluster(n: usize) -> Option<Cluster> {
    cluster_with(n, &[]).await
}

/// [`cluster`] with more `HERALD_*` settings on every node.
pub(crate) async fn cluster_with(n: usize, extra_env: &[(&str, &str)]) -> Option<Cluster> {
    let nats = NatsServer::start().await?;
    let db = postgres_database();
    let sqlite_dir = db.is_none().then(|| tempfile::tempdir().unwrap());
    let database_url = match (&db, &sqlite_dir) {
        (Some(db), _) => db.url.clone(),
        (None, Some(dir)) => format!("sqlite://{}?mode=rwc", dir.path().join("herald.db").display()),
        _ => unreachable!(),
    };
    let key = secret_key();
    let mut nodes = Vec::new();
    let mut starts = Vec::new();
    for i in 1..=n {
        let start = Start {
            database_url: Some(database_url.clone()),
            admin_token: Some(crate::support::ADMIN_TOKEN.into()),
            extra_args: vec!["--nats-url".into(), nats.url.clone(), "--node-id".into(), format!("node{i}")],
            env: [
                ("HERALD_SECRET_KEY".to_owned(), key.clone()),
                ("HERALD_CLUSTER_HEARTBEAT_SECONDS".to_owned(), HEARTBEAT_SECONDS.to_string()),
            ]
            .into_iter()
            .chain(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect(),
            ..Default::default()
        };
        nodes.push(Herald::start(start.clone()).await);
        starts.push(start);
    }
    let admin = nodes[0].admin();
    admin.post("/v1/tenants", json!({"id": "acme", "name": "acme"})).await.expect(201);
    let created = admin
        .post(
            "/v1/tenants/acme/api-keys",
            json!({"name": "all", "scopes": ["publish", "channels:write", "keys:write", "tokens:issue", "history:read", "presence:read", "stats:read", "webhooks:write"]}),
        )
        .await
        .expect(201);
    let secret = created["secret"].as_str().unwrap();
    admin.post("/v1/tenants/acme/signing-keys", json!({"algorithm": "HS256", "kid": "hs"})).await.expect(201);
    let keys = nodes.iter().map(|n| n.client(secret)).collect();
    for node in &nodes {
        let ready = node.anonymous().get("/readyz").await.expect(200);
        assert_eq!(ready["cluster"], "nats", "{ready}");
    }
    Some(Cluster { nats, nodes, starts, keys, _db: db, _sqlite_dir: sqlite_dir })
}

fn caps() -> Value {
    json!({"*": ["subscribe", "publish", "history", "presence"]})
}

impl Cluster {
    /// Waits until every node can serve `channel` (use a channel of its own, e.g.
    /// `ns:probe`): configuration made through one node (a new namespace) reaches the others
    /// through the control plane, within moments. The probe's connections are closed after.
    pub(crate) async fn usable_everywhere(&self, channel: &str) {
        let token = self.token("settle").await;
        for node in &self.nodes {
            let mut ws = node.ws(&token).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let reply = ws.call(json!({"type": "subscribe", "channel": channel})).await;
                if reply["type"] == "subscribed" {
                    break;
                }
                assert_eq!(reply["code"], "channel_not_found", "{reply}");
                assert!(Instant::now() < deadline, "{} never learnt of {channel}", node.base);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Starts node `i` again (it must have stopped or been killed) on its data, as it was
    /// started; it listens on a new port.
    pub(crate) async fn restart_node(&mut self, i: usize) {
        let placeholder = self.nodes.remove(i);
        let node = Herald::restart_as(placeholder, self.starts[i].clone()).await;
        self.nodes.insert(i, node);
        self.keys[i] = self.nodes[i].client(self.keys[0].token.as_deref().unwrap());
    }

    pub(crate) async fn token(&self, sub: &str) -> String {
        let minted = self.keys[0]
            .post("/v1/tenants/acme/tokens", json!({"sub": sub, "capabilities": caps()}))
            .await
            .expect(201);
        minted["token"].as_str().unwrap().to_owned()
    }

    /// Publishes through node `i`; returns the acknowledgement.
    async fn publish(&self, i: usize, channel: &str, data: Value) -> Value {
        self.keys[i]
            .post(&format!("/v1/tenants/acme/channels/{channel}/messages"), json!({"data": data}))
            .await
            .expect(200)
    }
}

fn positions(pubs: &[Value]) -> Vec<u64> {
    pubs.iter().map(|p| p["position"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_any_node_reach_every_node_in_order_over_all_transports() {
    let Some(c) = cluster(3).await else { return };
    let token = c.token("u").await;
    let mut ws = c.nodes[0].ws(&token).await;
    ws.subscribe("feed").await;
    let mut sse = Sse::open(&c.nodes[1].base, &format!("?channels=feed&token={token}"), None).await.unwrap();
    assert_eq!(sse.next_data().await.json()["type"], "connected");
    assert_eq!(sse.next_data().await.json()["type"], "subscribed");
    let poll_base = format!("?channels=feed&token={token}");
    let first = poll(&c.nodes[2].base, &format!("{poll_base}&timeout=1")).await.expect(200);
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();

    // Publishers on all three nodes at once, each in its own order.
    const PER_NODE: usize = 40;
    let mut publishers = Vec::new();
    for i in 0..3 {
        let key = Client {
            http: reqwest::Client::new(),
            base: c.keys[i].base.clone(),
            token: c.keys[i].token.clone(),
        };
        publishers.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for n in 0..PER_NODE {
                let ack = key
                    .post("/v1/tenants/acme/channels/feed/messages", json!({"data": {"node": i, "n": n}}))
                    .await
                    .expect(200);
                acks.push(ack);
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for p in publishers {
        acks.extend(p.await.unwrap());
    }
    let total = 3 * PER_NODE;
    let mut acked: Vec<u64> = acks.iter().map(|a| a["position"].as_u64().unwrap()).collect();
    acked.sort();
    assert_eq!(acked, (1..=total as u64).collect::<Vec<_>>(), "positions are contiguous across nodes");

    let over_ws = ws.read_pubs(total).await;
    assert_eq!(positions(&over_ws), (1..=total as u64).collect::<Vec<_>>());
    // Each node's messages keep their order.
    for i in 0..3 {
        let ns: Vec<u64> = over_ws
            .iter()
            .filter(|p| p["data"]["node"] == i)
            .map(|p| p["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, (0..PER_NODE as u64).collect::<Vec<_>>());
    }
    let mut over_sse = Vec::new();
    let mut last_sse_id = String::new();
    while over_sse.len() < total {
        let event = sse.next_data().await;
        let v = event.json();
        if v["type"] == "pub" {
            over_sse.push(v);
            last_sse_id = event.id.expect("publications carry a cursor");
        }
    }
    assert_eq!(over_sse, over_ws, "SSE on node 2 sees the same frames");
    let mut over_poll: Vec<Value> = Vec::new();
    while over_poll.len() < total {
        let got = poll(&c.nodes[2].base, &format!("{poll_base}&cursor={cursor}&timeout=5")).await.expect(200);
        cursor = got["cursor"].as_str().unwrap().to_owned();
        over_poll.extend(got["messages"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(over_poll, over_ws, "long polling on node 3 sees the same frames");

    // Cursors work on any node: SSE resumes on node 1 with node 2's last event id, and long
    // polling continues on node 1 with node 3's cursor; both get exactly what came after.
    drop(sse);
    for n in 0..2 {
        c.publish(1, "feed", json!({"after": n})).await;
    }
    let mut resumed =
        Sse::open(&c.nodes[0].base, &format!("?channels=feed&token={token}"), Some(&last_sse_id))
            .await
            .unwrap();
    let mut after_sse = Vec::new();
    while after_sse.len() < 2 {
        let v = resumed.next_data().await.json();
        if v["type"] == "pub" {
            after_sse.push(v);
        }
    }
    assert_eq!(positions(&after_sse), [total as u64 + 1, total as u64 + 2]);
    let got = poll(&c.nodes[0].base, &format!("{poll_base}&cursor={cursor}&timeout=5")).await.expect(200);
    assert_eq!(positions(got["messages"].as_array().unwrap()), [total as u64 + 1, total as u64 + 2]);
    let total = total + 2;

    // History (the newest 100, the default history size) is the same from every node.
    for key in &c.keys {
        let page = key.get("/v1/tenants/acme/channels/feed/messages?limit=1000").await.expect(200);
        assert_eq!(page["position"], total);
        let ids: Vec<&Value> = page["publications"].as_array().unwrap().iter().map(|p| &p["id"]).collect();
        assert_eq!(ids[..98], over_ws[total - 100..].iter().map(|p| &p["id"]).collect::<Vec<_>>()[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_node_resumes_on_another_without_loss_or_duplicates() {
    let Some(mut c) = cluster(3).await else { return };
    let token = c.token("u").await;
    let mut ws = c.nodes[0].ws(&token).await;
    let sub = ws.subscribe("orders").await;
    assert_eq!(sub["position"], 0);
    for n in 0..5 {
        c.publish(1, "orders", json!(n)).await;
    }
    let seen = ws.read_pubs(5).await;
    let last = seen.last().unwrap().clone();

    c.nodes[0].kill9().await;
    let mut acks = Vec::new();
    for n in 5..12 {
        acks.push(c.publish(1 + n % 2, "orders", json!(n)).await);
    }
    // Reconnect to node 3 and resume from the last message seen.
    let mut ws = c.nodes[2].ws(&token).await;
    let reply = ws
        .call(json!({"type": "subscribe", "channel": "orders", "since": {"position": last["position"], "epoch": last["epoch"]}}))
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["recovered"].as_bool()),
        (Some("subscribed"), Some(true)),
        "{reply}"
    );
    let missed = ws.read_pubs(7).await;
    assert_eq!(positions(&missed), (6..=12).collect::<Vec<u64>>());
    assert_eq!(
        missed.iter().map(|p| &p["id"]).collect::<Vec<_>>(),
        acks.iter().map(|a| &a["id"]).collect::<Vec<_>>()
    );
    // Then live messages, with nothing repeated.
    c.publish(1, "orders", json!("live")).await;
    let live = ws.read_pubs(1).await;
    assert_eq!((live[0]["position"].as_u64(), &live[0]["data"]), (Some(13), &json!("live")));

    // A resume beyond history is reported, not papered over.
    let mut other = c.nodes[1].ws(&token).await;
    let reply = other
        .call(json!({"type": "subscribe", "channel": "orders", "since": {"position": 3, "epoch": "another-epoch"}}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    // Idempotency keys hold across nodes.
    let body = json!({"data": "once", "idempotency_key": "k-1"});
    let first = c.keys[1].post("/v1/tenants/acme/channels/orders/messages", body.clone()).await.expect(200);
    let again = c.keys[2].post("/v1/tenants/acme/channels/orders/messages", body).await.expect(200);
    assert_eq!(
        (again["position"].clone(), again["duplicate"].clone()),
        (first["position"].clone(), json!(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_a_killed_node_leaves_it_within_two_heartbeats() {
    let Some(mut c) = cluster(3).await else { return };
    c.keys[0]
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "room", "options": {"presence": true, "join_leave": true}}),
        )
        .await
        .expect(201);
    c.usable_everywhere("room:probe").await;
    let alice = c.token("alice").await;
    let bob = c.token("bob").await;
    let mut on_node1 = c.nodes[0].ws(&alice).await;
    on_node1.subscribe("room:1").await;
    let mut on_node2 = c.nodes[1].ws(&bob).await;
    on_node2.subscribe("room:1").await;
    // Alice on node 1 sees Bob join from node 2.
    let join = on_node1.next_of_type("join").await;
    assert_eq!(join["user"], "bob");
    assert!(join["client"].as_str().unwrap().starts_with("node2/"), "{join}");

    let presence = |i: usize| {
        let key = &c.keys[i];
        async move { key.get("/v1/tenants/acme/channels/room:1/presence").await.expect(200) }
    };
    let users = |p: &Value| -> Vec<String> {
        let mut u: Vec<String> =
            p["clients"].as_array().unwrap().iter().map(|c| c["user"].as_str().unwrap().to_owned()).collect();
        u.sort();
        u
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while users(&presence(2).await) != ["alice", "bob"] {
        assert!(Instant::now() < deadline, "presence never showed both users");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bob_presence = c.keys[2].get("/v1/tenants/acme/users/bob").await.expect(200);
    assert_eq!(bob_presence["online"], true);
    assert_eq!(bob_presence["connections"][0]["node"], "node2");
    let occupancy = c.keys[0].get("/v1/tenants/acme/occupancy").await.expect(200);
    assert_eq!(occupancy["channels"][0], json!({"channel": "room:1", "subscribers": 2}));

    // Node 2 dies without a word: its entries expire within two heartbeats.
    c.nodes[1].kill9().await;
    let killed = Instant::now();
    while users(&presence(0).await) != ["alice"] {
        assert!(killed.elapsed() < Duration::from_secs(2 * HEARTBEAT_SECONDS + 2), "bob stayed present");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = killed.elapsed();
    assert!(gone_after <= Duration::from_secs(2 * HEARTBEAT_SECONDS + 1), "took {gone_after:?}");
    // Alice is told Bob left, though his node never said so.
    let leave = on_node1.next_of_type("leave").await;
    assert_eq!(leave["user"], "bob");
    assert!(killed.elapsed() < Duration::from_secs(2 * HEARTBEAT_SECONDS + 2), "{:?}", killed.elapsed());
    let bob_presence = c.keys[2].get("/v1/tenants/acme/users/bob").await.expect(200);
    assert_eq!(bob_presence["online"], false);
    drop(on_node2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_loses_no_acknowledged_message_and_publishes_fail_while_it_is_down() {
    let Some(mut c) = cluster(2).await else { return };
    let token = c.token("u").await;
    let mut ws = c.nodes[0].ws(&token).await;
    ws.subscribe("ticks").await;
    c.publish(1, "ticks", json!("before")).await;
    assert_eq!(ws.read_pubs(1).await[0]["data"], "before");

    c.nats.kill().await;
    // Publishes fail loudly while NATS is away, and /readyz says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply =
            c.keys[1].post("/v1/tenants/acme/channels/ticks/messages", json!({"data": "during"})).await;
        if reply.status.as_u16() == 503 {
            reply.problem(503, "cluster_unavailable");
            break;
        }
        assert!(Instant::now() < deadline, "publishes kept succeeding with NATS down: {:?}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = c.nodes[1].anonymous().get("/readyz").await;
    assert_eq!(ready.status.as_u16(), 503, "{}", ready.body);
    assert!(ready.body.to_string().contains("cluster backend unavailable"), "{}", ready.body);

    c.nats.restart().await;
    // Fan-out resumes by itself; every acknowledged message arrives, in order.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut acked = vec!["before".to_owned()];
    let mut n = 0;
    while acked.len() < 11 {
        assert!(Instant::now() < deadline, "publishing never recovered");
        let reply = c.keys[1]
            .post("/v1/tenants/acme/channels/ticks/messages", json!({"data": format!("after-{n}")}))
            .await;
        if reply.status.as_u16() == 200 {
            acked.push(format!("after-{n}"));
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        n += 1;
    }
    // A publish that timed out while NATS went away may still have been stored (its outcome
    // was unknown, hence the 503); everything acknowledged must arrive, in order.
    let mut got = Vec::new();
    while got.last().and_then(|p: &Value| p["data"].as_str()) != acked.last().map(String::as_str) {
        got.extend(ws.read_pubs(1).await);
    }
    let data: Vec<&str> = got.iter().map(|p| p["data"].as_str().unwrap()).collect();
    assert!(data.iter().all(|d| *d == "during" || d.starts_with("after-")), "{data:?}");
    let delivered_acked: Vec<&str> = data.iter().copied().filter(|d| *d != "during").collect();
    assert_eq!(delivered_acked, acked[1..].iter().map(String::as_str).collect::<Vec<_>>());
    let expected: Vec<u64> = (2..2 + got.len() as u64).collect();
    assert_eq!(positions(&got), expected, "positions stay contiguous");
    c.nodes[1].anonymous().get("/readyz").await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_suspensions_and_user_commands_reach_every_node() {
    let Some(c) = cluster(3).await else { return };
    // A user connected to two other nodes gets a user message and is disconnected from node 1.
    let carol = c.token("carol").await;
    let mut carol2 = c.nodes[1].ws(&carol).await;
    let mut carol3 = c.nodes[2].ws(&carol).await;
    let sent =
        c.keys[0].post("/v1/tenants/acme/users/carol/messages", json!({"data": {"hi": 1}})).await.expect(200);
    assert_eq!(sent["delivered"], 2, "{sent}");
    for ws in [&mut carol2, &mut carol3] {
        let m = ws.recv().await;
        assert_eq!((m["type"].as_str(), &m["data"]), (Some("message"), &json!({"hi": 1})));
    }
    let presence = c.keys[0].get("/v1/tenants/acme/users/carol").await.expect(200);
    let mut nodes: Vec<&str> =
        presence["connections"].as_array().unwrap().iter().map(|c| c["node"].as_str().unwrap()).collect();
    nodes.sort();
    // The registry is written within ~100 ms of a change.
    if nodes.len() < 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let presence = c.keys[0].get("/v1/tenants/acme/users/carol").await.expect(200);
        nodes =
            presence["connections"].as_array().unwrap().iter().map(|c| c["node"].as_str().unwrap()).collect();
        nodes.sort();
        assert_eq!(nodes, ["node2", "node3"]);
    } else {
        assert_eq!(nodes, ["node2", "node3"]);
    }
    let kicked = c.keys[0].post_empty("/v1/tenants/acme/users/carol/disconnect").await.expect(200);
    assert_eq!(kicked["disconnected"], 2);
    assert_eq!(carol2.closed().await.code, 4006);
    assert_eq!(carol3.closed().await.code, 4006);

    // A token revoked on node 1 closes its connection on node 2 within a second or two.
    let minted = c.keys[0]
        .post("/v1/tenants/acme/tokens", json!({"sub": "mallory", "capabilities": caps()}))
        .await
        .expect(201);
    let (token, jti) = (minted["token"].as_str().unwrap(), minted["jti"].as_str().unwrap());
    let mut mallory = c.nodes[1].ws(token).await;
    let dave = c.token("dave").await;
    let mut dave3 = c.nodes[2].ws(&dave).await;
    let started = Instant::now();
    c.keys[0].post("/v1/tenants/acme/revocations", json!({"jti": jti})).await.expect(201);
    assert_eq!(mallory.closed().await.code, 4004);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(dave3.call(json!({"type": "ping"})).await["type"], "pong", "others stay");

    // Suspending the tenant on node 1 closes its connections on node 3.
    let started = Instant::now();
    c.nodes[0].admin().patch("/v1/tenants/acme", json!({"status": "suspended"})).await.expect(200);
    assert_eq!(dave3.closed().await.code, 4003);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    // Each node reports for the whole cluster (nodes publish their figures every second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = c.nodes[2].admin().get("/v1/stats").await.expect(200);
        let mut nodes: Vec<String> = stats["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap().to_owned())
            .collect();
        nodes.sort();
        // Samples are taken each second: wait for ones taken after the traffic above.
        let acme = &stats["tenants"][0];
        if nodes == ["node1", "node2", "node3"]
            && acme["tenant"] == "acme"
            && acme["published_total"].as_u64().is_some_and(|n| n >= 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortening_history_ttl_never_hands_out_a_position_twice() {
    let Some(c) = cluster(2).await else { return };
    c.keys[0]
        .post("/v1/tenants/acme/namespaces", json!({"name": "t", "options": {"history_ttl_seconds": 600}}))
        .await
        .expect(201);
    let token = c.token("u").await;
    let mut ws = c.nodes[1].ws(&token).await;
    c.usable_everywhere("t:probe").await;
    ws.subscribe("t:x").await;
    for n in 1..=3 {
        c.publish(0, "t:x", json!(n)).await;
    }
    c.keys[0]
        .patch("/v1/tenants/acme/namespaces/t", json!({"options": {"history_ttl_seconds": 1}}))
        .await
        .expect(200);
    // Published with the new 1 s lifetime, but it must not expire before the older messages:
    // otherwise the next publish would take position 4 again.
    assert_eq!(c.publish(0, "t:x", json!(4)).await["position"], 4);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.publish(1, "t:x", json!(5)).await["position"], 5);
    let got = ws.read_pubs(5).await;
    assert_eq!(positions(&got), [1, 2, 3, 4, 5]);

    // An idempotent repeat whose original already left the stream is still a duplicate.
    c.keys[0]
        .post("/v1/tenants/acme/namespaces", json!({"name": "brief", "options": {"history_ttl_seconds": 1}}))
        .await
        .expect(201);
    c.usable_everywhere("brief:probe").await;
    let body = json!({"data": "once", "idempotency_key": "k"});
    let first = c.keys[0].post("/v1/tenants/acme/channels/brief:y/messages", body.clone()).await.expect(200);
    assert_eq!(first["duplicate"], false);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = c.keys[1].post("/v1/tenants/acme/channels/brief:y/messages", body).await.expect(200);
    assert_eq!(again["duplicate"], true, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_stored_in_batches_and_read_back_exactly() {
    let Some(c) = cluster(3).await else { return };
    c.keys[0]
        .post("/v1/tenants/acme/namespaces", json!({"name": "b", "options": {"history_size": 1000}}))
        .await
        .expect(201);
    c.usable_everywhere("b:probe").await;
    let token = c.token("u").await;
    let mut ws = c.nodes[0].ws(&token).await;
    ws.subscribe("b:burst").await;

    // 300 publishes at once through two nodes: a node queues what arrives while a store is in
    // flight and stores it as one batch.
    let mut tasks = Vec::new();
    for n in 0..300u64 {
        let key = &c.keys[(n % 2) as usize];
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            key.post("/v1/tenants/acme/channels/b:burst/messages", json!({"data": n})).await.expect(200)
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    let mut acked: Vec<u64> = acks.iter().map(|a| a["position"].as_u64().unwrap()).collect();
    acked.sort();
    assert_eq!(acked, (1..=300).collect::<Vec<_>>(), "every publish got its own position");

    let live = ws.read_pubs(300).await;
    assert_eq!(positions(&live), (1..=300).collect::<Vec<_>>());
    for p in &live {
        let ack = acks.iter().find(|a| a["position"] == p["position"]).unwrap();
        assert_eq!((&ack["id"], &ack["ts"]), (&p["id"], &p["ts"]), "the frame is the acknowledged one");
    }

    // Reads that start and end inside stored batches: history pages and a resume on a node
    // whose feed starts after the fact (so it reads the stream).
    for since in [0u64, 1, 37, 150, 299] {
        let page = c.keys[2]
            .get(&format!(
                "/v1/tenants/acme/channels/b:burst/messages?since={since}&epoch={}&limit=40",
                live[0]["epoch"].as_str().unwrap()
            ))
            .await
            .expect(200);
        assert_eq!(page["complete"], true, "{page}");
        let got: Vec<u64> = page["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["position"].as_u64().unwrap())
            .collect();
        assert_eq!(got, (since + 1..=(since + 40).min(300)).collect::<Vec<_>>());
    }
    let mut late = c.nodes[2].ws(&token).await;
    let reply = late
        .call(json!({"type": "subscribe", "channel": "b:burst", "since": {"position": 123, "epoch": live[0]["epoch"]}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let replayed = late.read_pubs(177).await;
    assert_eq!(replayed, live[123..], "the same frames, byte for byte in JSON");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_nats_takes_is_refused_without_harm() {
    let Some(nats) = NatsServer::start().await else { return };
    let node = Herald::start(Start {
        admin_token: Some(crate::support::ADMIN_TOKEN.into()),
        extra_args: vec!["--nats-url".into(), nats.url.clone(), "--max-body-bytes".into(), "2097152".into()],
        ..Default::default()
    })
    .await;
    let t = crate::support::realtime_tenant(&node, "acme").await;
    t.key
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "big", "options": {"max_message_bytes": 1048576}}),
        )
        .await
        .expect(201);
    let token = t.token("u", caps()).await;
    let mut ws = node.ws(&token).await;
    ws.subscribe("big:x").await;
    // Allowed by the channel, but its frame would exceed NATS' 1 MiB max_payload.
    let huge = "x".repeat(1_048_570);
    let refused = t.key.post("/v1/tenants/acme/channels/big:x/messages", json!({"data": huge})).await;
    let problem = refused.problem(413, "message_too_large");
    assert!(problem["limit"].as_u64().unwrap() < 1_048_576, "{problem}");
    // The node's NATS connection is intact: the next publish goes through and is delivered.
    let ok = t.publish("big:x", json!("small")).await;
    assert_eq!(ok["position"], 1);
    assert_eq!(ws.read_pubs(1).await[0]["data"], "small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_long_poll_on_another_node_is_served_from_the_shared_stream() {
    let Some(c) = cluster(2).await else { return };
    let token = c.token("poller").await;
    let base = format!("?channels=feed&token={token}");
    // A session on node 1 that has seen positions 1-2.
    let first = poll(&c.nodes[0].base, &format!("{base}&timeout=1")).await.expect(200);
    c.publish(0, "feed", json!(1)).await;
    c.publish(0, "feed", json!(2)).await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let seen = poll(&c.nodes[0].base, &format!("{base}&cursor={cursor}&timeout=5")).await.expect(200);
    assert_eq!(positions(seen["messages"].as_array().unwrap()), vec![1, 2]);
    let at_two = seen["cursor"].as_str().unwrap().to_owned();
    for n in 3..=5 {
        c.publish(0, "feed", json!(n)).await;
    }
    // The client moves to node 2 with that cursor: the session is rebuilt there, 3-5 come from
    // the stream (node 2's channel started after they were stored).
    let moved = poll(&c.nodes[1].base, &format!("{base}&cursor={at_two}&timeout=5")).await.expect(200);
    assert_eq!(positions(moved["messages"].as_array().unwrap()), vec![3, 4, 5], "{moved}");
    // The answer was lost and the client retries with the same cursor: node 2 serves 3-5 again
    // from the shared stream, not a gap.
    let retried = poll(&c.nodes[1].base, &format!("{base}&cursor={at_two}&timeout=5")).await.expect(200);
    assert!(retried.get("unrecovered").is_none(), "the stream still holds 3-5: {retried}");
    assert_eq!(positions(retried["messages"].as_array().unwrap()), vec![3, 4, 5], "{retried}");
}

/// Chaos: continuous publishing with idempotency keys through three nodes while a node is
/// killed (SIGKILL) and restarted, NATS is killed and restarted, and another node is killed and
/// restarted. Afterwards every acknowledged message is in the stream exactly once and in order;
/// a WebSocket subscriber on the node that stays up saw every one exactly once, in order; and
/// long-poll subscribers that follow whichever node is up saw every one exactly once, in order,
/// or were told which stretch could not be recovered. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_nodes_and_nats_without_losing_or_repeating_acknowledged_messages() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    let Some(mut c) = cluster(3).await else { return };
    c.keys[0]
        .post("/v1/tenants/acme/namespaces", json!({"name": "chaos", "options": {"history_size": 10000}}))
        .await
        .expect(201);
    c.usable_everywhere("chaos:probe").await;
    let secret = c.keys[0].token.clone().unwrap();
    let token = c.token("watcher").await;
    let bases: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(c.nodes.iter().map(|n| n.base.clone()).collect()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // A WebSocket subscriber on node 1, which stays up.
    let mut steady = c.nodes[0].ws(&token).await;
    steady.subscribe("chaos:feed").await;

    // Long-poll subscribers that move to the next node whenever theirs fails; each subscribes
    // (its first poll) before anything is published.
    let mut pollers = Vec::new();
    for start in 0..3usize {
        let (bases, done, token) = (bases.clone(), done.clone(), token.clone());
        let first = poll(&c.nodes[start].base, &format!("?channels=chaos:feed&token={token}&timeout=0"))
            .await
            .expect(200);
        let first_cursor = first["cursor"].as_str().map(str::to_owned);
        pollers.push(tokio::spawn(async move {
            let mut got: Vec<Value> = Vec::new();
            let mut told_gap = false;
            let mut cursor: Option<String> = first_cursor;
            let mut node = start;
            let mut quiet_polls = 0;
            loop {
                let base = bases.lock().unwrap()[node % 3].clone();
                let query = match &cursor {
                    Some(c) => format!("?channels=chaos:feed&token={token}&cursor={c}&timeout=1"),
                    None => format!("?channels=chaos:feed&token={token}&timeout=1"),
                };
                let reply = tokio::time::timeout(Duration::from_secs(5), async {
                    reqwest::Client::new().get(format!("{base}/v1/poll{query}")).send().await
                })
                .await;
                let body: Option<Value> = match reply {
                    Ok(Ok(r)) if r.status() == 200 => r.json().await.ok(),
                    _ => None,
                };
                let Some(body) = body else {
                    node += 1; // That node is down or cannot serve: try the next one.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                if body.get("unrecovered").is_some() {
                    told_gap = true;
                }
                let messages = body["messages"].as_array().cloned().unwrap_or_default();
                quiet_polls = if messages.is_empty() { quiet_polls + 1 } else { 0 };
                got.extend(messages);
                cursor = body["cursor"].as_str().map(str::to_owned);
                if done.load(std::sync::atomic::Ordering::SeqCst) && quiet_polls >= 2 {
                    return (got, told_gap);
                }
            }
        }));
    }

    // The publisher: each message has its own idempotency key and is retried, on any node,
    // until one acknowledges it.
    let publisher = {
        let (bases, secret) = (bases.clone(), secret.clone());
        tokio::spawn(async move {
            let mut acked: BTreeMap<u64, Value> = BTreeMap::new();
            let until = Instant::now() + Duration::from_secs(16);
            let mut n = 0u64;
            while Instant::now() < until {
                let body = json!({"data": n, "idempotency_key": format!("k-{n}")});
                let deadline = Instant::now() + Duration::from_secs(30);
                for attempt in 0.. {
                    let base = bases.lock().unwrap()[(n as usize + attempt) % 3].clone();
                    let sent = reqwest::Client::new()
                        .post(format!("{base}/v1/tenants/acme/channels/chaos:feed/messages"))
                        .bearer_auth(&secret)
                        .json(&body)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    if let Ok(r) = sent
                        && r.status() == 200
                    {
                        acked.insert(n, r.json().await.unwrap());
                        break;
                    }
                    assert!(Instant::now() < deadline, "message {n} was never acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            acked
        })
    };

    // The schedule: kill and restart node 2, then NATS, then node 3.
    for (victim, down) in [(1usize, 3u64), (usize::MAX, 3), (2, 3)] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if victim == usize::MAX {
            c.nats.kill().await;
            tokio::time::sleep(Duration::from_secs(down)).await;
            c.nats.restart().await;
        } else {
            c.nodes[victim].kill9().await;
            tokio::time::sleep(Duration::from_secs(down)).await;
            c.restart_node(victim).await;
            bases.lock().unwrap()[victim] = c.nodes[victim].base.clone();
        }
    }
    let acked = publisher.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(acked.len() > 100, "only {} messages were acknowledged", acked.len());

    // Acknowledged messages are stored exactly once, at contiguous positions, in order.
    let positions: Vec<u64> = acked.values().map(|a| a["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[1] > w[0]), "acknowledged out of order: {positions:?}");
    let epochs: std::collections::BTreeSet<&str> =
        acked.values().map(|a| a["epoch"].as_str().unwrap()).collect();
    assert_eq!(epochs.len(), 1, "one epoch for the whole run: {epochs:?}");
    let history = c.keys[0].get("/v1/tenants/acme/channels/chaos:feed/messages?limit=1000").await.expect(200);
    let stored: Vec<u64> =
        history["publications"].as_array().unwrap().iter().map(|p| p["position"].as_u64().unwrap()).collect();
    assert_eq!(
        stored,
        (1..=*positions.last().unwrap()).collect::<Vec<_>>(),
        "the stream has no gap or repeat"
    );
    for (n, ack) in &acked {
        let p = ack["position"].as_u64().unwrap() as usize;
        assert_eq!(history["publications"][p - 1]["data"], *n, "message {n} is stored at its position");
    }

    // The steady WebSocket subscriber saw every stored message once, in order.
    let seen = steady.read_pubs(stored.len()).await;
    assert_eq!(positions_of(&seen), stored, "the subscriber on the node that stayed up");

    // Long-poll subscribers: every message once and in order, or told of the gap.
    for poller in pollers {
        let (got, told_gap) =
            tokio::time::timeout(Duration::from_secs(60), poller).await.expect("pollers finish").unwrap();
        let got = positions_of(&got);
        assert!(got.windows(2).all(|w| w[1] > w[0]), "a poller saw a repeat or disorder: {got:?}");
        if !told_gap {
            assert_eq!(got, stored, "a poller missed messages without being told");
        }
    }
}

fn positions_of(pubs: &[Value]) -> Vec<u64> {
    pubs.iter().map(|p| p["position"].as_u64().unwrap()).collect()
}

/// Webhooks in a cluster: every node delivers from the shared queue, one node at a time
/// detects channel and presence events from the cluster-wide registry, so each event is sent
/// once per cluster; a node killed with SIGKILL produces its clients' `leave` within the
/// presence bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_fire_once_per_cluster_also_when_a_node_is_killed() {
    let env = [("HERALD_OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8"), ("HERALD_WEBHOOK_GRACE_MS", "500")];
    let Some(mut c) = cluster_with(3, &env).await else { return };
    c.keys[0]
        .post("/v1/tenants/acme/namespaces", json!({"name": "room", "options": {"presence": true}}))
        .await
        .expect(201);
    c.usable_everywhere("room:probe").await;
    let receiver = crate::support::Receiver::start().await;
    let kinds = ["channel.occupied", "channel.vacated", "presence.join", "presence.leave"];
    c.keys[1]
        .post("/v1/tenants/acme/webhooks", json!({"url": receiver.url, "events": kinds}))
        .await
        .expect(201);
    // The probe's own life on room:probe may still be reported; only room:1 counts below.
    let room = |r: &crate::support::Received| r.json()["data"]["channel"] == "room:1";
    let count =
        |kind: &str| receiver.received().iter().filter(|r| room(r) && r.json()["type"] == kind).count();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // ann on node 1 and node 2 (one join), bob on node 3.
    let ann = c.token("ann").await;
    let bob = c.token("bob").await;
    let mut a1 = c.nodes[0].ws(&ann).await;
    a1.call(json!({"type": "subscribe", "channel": "room:1"})).await;
    let mut a2 = c.nodes[1].ws(&ann).await;
    a2.call(json!({"type": "subscribe", "channel": "room:1"})).await;
    let mut b3 = c.nodes[2].ws(&bob).await;
    b3.call(json!({"type": "subscribe", "channel": "room:1"})).await;
    receiver.wait_for(3, Duration::from_secs(10), room).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bodies = || receiver.received().iter().map(|r| r.json()).collect::<Vec<_>>();
    assert_eq!((count("channel.occupied"), count("presence.join")), (1, 2), "{:?}", bodies());

    // Node 1 dies: ann is still on node 2, so nothing; then ann leaves node 2 too.
    c.nodes[0].kill9().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(count("presence.leave"), 0, "ann is still connected through node 2");
    drop(a2);
    let started = Instant::now();
    receiver.wait_for(1, Duration::from_secs(10), |r| room(r) && r.json()["type"] == "presence.leave").await;
    // bob's node dies: his leave and the channel's vacated come from the registry's expiry.
    c.nodes[2].kill9().await;
    receiver.wait_for(1, Duration::from_secs(15), |r| room(r) && r.json()["type"] == "channel.vacated").await;
    let bound = Duration::from_secs(2 * HEARTBEAT_SECONDS) + Duration::from_millis(500 + 3000);
    assert!(
        started.elapsed() < bound + Duration::from_secs(2),
        "within the presence bound: {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        (
            count("channel.occupied"),
            count("presence.join"),
            count("presence.leave"),
            count("channel.vacated")
        ),
        (1, 2, 2, 1),
        "{:?}",
        bodies()
    );
    // Each delivery went out once: no two requests share an event id.
    let mut ids: Vec<String> =
        receiver.received().iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "an event was sent twice");
    drop((a1, b3));
    c.restart_node(0).await;
}

/// In cluster mode deliveries go through the JetStream work queue: one node takes each, and
/// when the node sending one dies, JetStream hands it to another node once the claim runs out
/// (long before the database sweep, a minute past due, would find it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivery_moves_to_another_node_through_the_jetstream_queue() {
    use crate::support::{Answer, Receiver};
    let env = [("HERALD_OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8"), ("HERALD_WEBHOOK_TIMEOUT_SECONDS", "2")];
    let Some(mut c) = cluster_with(3, &env).await else { return };
    let receiver = Receiver::start().await;
    receiver.script(&[Answer::Hang]);
    let created = c.keys[0]
        .post("/v1/tenants/acme/webhooks", json!({"url": receiver.url, "events": ["message.published"]}))
        .await
        .expect(201);
    let id = created["id"].as_str().unwrap();
    let queued = c.keys[1].post_empty(&format!("/v1/tenants/acme/webhooks/{id}/test")).await.expect(202);
    receiver.wait_for(1, Duration::from_secs(5), |_| true).await;

    // The node holding the request is the one that counted an attempt.
    let mut holder = None;
    for (i, node) in c.nodes.iter().enumerate() {
        let report = node.admin().get("/v1/stats").await.expect(200);
        if report["hooks"]["webhook_attempts"] == 1 {
            assert!(holder.replace(i).is_none(), "two nodes attempted it");
        }
    }
    let holder = holder.expect("one node attempted the delivery");
    c.nodes[holder].kill9().await;
    let killed = Instant::now();
    let got = receiver.wait_for(2, Duration::from_secs(30), |_| true).await;
    let waited = got[1].at - killed;
    assert_eq!(got[1].header("webhook-id"), queued["event_id"].as_str());
    assert!(waited >= Duration::from_secs(5), "not before the claim ran out: {waited:?}");
    assert!(waited <= Duration::from_secs(25), "handed over by the queue, not the sweep: {waited:?}");

    // JetStream redelivered it, and forgot it once it succeeded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = c.nats.stream_report("HERALD_HOOK_QUEUE").await.expect("the queue stream exists");
        let consumer = &stream["consumer_detail"][0];
        assert_eq!(consumer["name"], "dispatch", "{stream}");
        if stream["state"]["messages"] == 0 {
            // One message, handed out twice: to the node that died and to the one that sent it.
            assert_eq!(consumer["delivered"]["stream_seq"], 1, "{consumer}");
            assert_eq!(consumer["delivered"]["consumer_seq"], 2, "{consumer}");
            break;
        }
        assert!(Instant::now() < deadline, "the message was never acknowledged: {stream}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = c.keys[2].get(&format!("/v1/tenants/acme/webhooks/{id}/deliveries")).await.expect(200);
    assert_eq!(log["items"][0]["status"], "succeeded", "{log}");
    assert_eq!(log["items"].as_array().unwrap().len(), 1, "{log}");
    c.restart_node(holder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cluster_nodes_use_almost_no_cpu() {
    let Some(c) = cluster(2).await else { return };
    // One node holds the webhook detector's lease and follows every presence entry; a
    // presence entry or two to follow, then nothing happens.
    let token = c.token("idle").await;
    let mut ws = c.nodes[1].ws(&token).await;
    ws.subscribe("quiet").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<f64> = c.nodes.iter().map(Herald::cpu_seconds).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, (node, before)) in c.nodes.iter().zip(before).enumerate() {
        let used = node.cpu_seconds() - before;
        // An idle node ticks its statistics and heartbeats: a few percent of a core at most,
        // in a debug build too. A task that spins takes a whole core.
        assert!(used < 0.6, "node{} used {used:.2} s of CPU in 3 idle seconds", i + 1);
    }
}

/// Publishes every one of `bodies` to `channel` through node 1 at once; returns the
/// acknowledgements with when each arrived, the positions they were given (sorted), and the
/// first and last arrival.
async fn publish_at_once(c: &Cluster, channel: &str, bodies: Vec<Value>) -> Acks {
    let mut tasks = Vec::new();
    for body in bodies {
        let (key, path) = (c.keys[0].clone(), format!("/v1/tenants/acme/channels/{channel}/messages"));
        tasks.push(tokio::spawn(async move {
            let ack = key.post(&path, body).await.expect(200);
            (ack, Instant::now())
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    let mut positions: Vec<u64> = acks.iter().map(|(a, _)| a["position"].as_u64().unwrap()).collect();
    positions.sort();
    let earliest = acks.iter().map(|(_, at)| *at).min().unwrap();
    let latest = acks.iter().map(|(_, at)| *at).max().unwrap();
    Acks { positions, earliest, latest }
}

struct Acks {
    positions: Vec<u64>,
    earliest: Instant,
    latest: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_channel_is_stored_once_per_interval_and_a_quiet_one_at_once() {
    // A long interval, so waiting for it cannot be mistaken for a slow round trip.
    let Some(c) = cluster_with(1, &[("HERALD_CLUSTER_STORE_INTERVAL_MS", "1000")]).await else { return };
    let token = c.token("u").await;
    let mut ws = c.nodes[0].ws(&token).await;
    ws.subscribe("busy").await;

    let first = c.publish(0, "busy", json!(0)).await;
    // Published right after the first store: they wait for the interval and are stored
    // together, so they are acknowledged together.
    let sent = Instant::now();
    let acks = publish_at_once(&c, "busy", (1..=5u64).map(|n| json!({"data": n})).collect()).await;
    assert!(
        acks.earliest - sent >= Duration::from_millis(700),
        "stored {:?} after the store before, within the interval",
        acks.earliest - sent
    );
    assert!(
        acks.latest - acks.earliest < Duration::from_millis(500),
        "not one batch: {:?} apart",
        acks.latest - acks.earliest
    );
    assert_eq!(acks.positions, (2..=6).collect::<Vec<_>>(), "{first}");
    assert_eq!(positions(&ws.read_pubs(6).await), (1..=6).collect::<Vec<_>>());

    // A channel published to less often than the interval never waits.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sent = Instant::now();
    let ack = c.publish(0, "busy", json!(7)).await;
    assert_eq!(ack["position"], 7);
    assert!(sent.elapsed() < Duration::from_millis(500), "a quiet channel waited {:?}", sent.elapsed());
    assert_eq!(positions(&ws.read_pubs(1).await), vec![7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_more_than_a_batch_does_not_wait_an_interval_per_batch() {
    let Some(c) = cluster_with(1, &[("HERALD_CLUSTER_STORE_INTERVAL_MS", "1000")]).await else { return };
    c.publish(0, "backlog", json!(0)).await;
    // 20 publishes of 50 KB, queued within the interval: a batch holds about 256 KiB, so
    // about four batches, the first when the interval is over and the others right after it.
    let padding = "x".repeat(50_000);
    let bodies = (1..=20u64).map(|n| json!({"data": {"n": n, "padding": padding}})).collect();
    let acks = publish_at_once(&c, "backlog", bodies).await;
    assert!(
        acks.latest - acks.earliest < Duration::from_millis(900),
        "a later batch waited another interval: acknowledged {:?} after the first",
        acks.latest - acks.earliest
    );
    assert_eq!(acks.positions, (2..=21).collect::<Vec<_>>());
}
