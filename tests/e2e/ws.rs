//! The WebSocket transport over the delivery core: protocol, fan-out, resume, limits, closes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Herald, realtime_tenant};

fn all_caps() -> Value {
    json!({"*": ["subscribe", "publish", "presence", "history"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_basics() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.key.post("/v1/tenants/acme/namespaces", json!({"name": "chat", "options": {"client_publish": true, "presence": true, "join_leave": true}})).await.expect(201);
    let token = t.token("alice", all_caps()).await;

    // Auth by first frame instead of the URL.
    let mut ws = h.ws_raw("").await;
    ws.send(json!({"type": "connect", "id": 1, "token": token})).await;
    let hello = ws.recv().await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["id"], 1);
    assert_eq!(hello["user"], "alice");
    assert!(hello["client"].as_str().unwrap().starts_with('c'));
    assert_eq!(hello["ping_interval_ms"], 25_000);

    assert_eq!(ws.call(json!({"type": "ping"})).await["type"], "pong");
    let sub = ws.subscribe("chat:room").await;
    assert_eq!(sub["position"], 0);
    assert!(sub["epoch"].as_str().unwrap().len() >= 6);
    assert!(sub.get("recovered").is_none());
    let again = ws.call(json!({"type": "subscribe", "channel": "chat:room"})).await;
    assert_eq!((again["type"].as_str(), again["code"].as_str()), (Some("error"), Some("already_subscribed")));

    // A second user joins: the first sees the join event; presence lists both.
    let bob_token = t.token("bob", all_caps()).await;
    let mut bob = h.ws(&bob_token).await;
    bob.subscribe("chat:room").await;
    let join = ws.recv().await;
    assert_eq!((join["type"].as_str(), join["user"].as_str()), (Some("join"), Some("bob")));
    let presence = ws.call(json!({"type": "presence", "channel": "chat:room"})).await;
    let mut users: Vec<&str> =
        presence["clients"].as_array().unwrap().iter().map(|c| c["user"].as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);

    // Client publish reaches both, with the documented fields.
    ws.send(json!({"type": "publish", "id": "p1", "channel": "chat:room", "data": {"text": "hi"}, "event": "msg"})).await;
    // The publisher is a subscriber too: its copy and the reply may come in either order.
    let (a, b) = (ws.recv().await, ws.recv().await);
    let (published, own_copy) = if a["type"] == "published" { (a, b) } else { (b, a) };
    assert_eq!(published["id"], "p1", "{published}");
    assert_eq!(published["position"], 1);
    let bob_copy = bob.recv().await;
    for p in [own_copy, bob_copy] {
        assert_eq!(p["type"], "pub");
        assert_eq!(p["channel"], "chat:room");
        assert_eq!(p["position"], 1);
        assert_eq!(p["epoch"], sub["epoch"]);
        assert_eq!(p["event"], "msg");
        assert_eq!(p["data"], json!({"text": "hi"}));
        assert_eq!(p["id"], published["message_id"]);
        assert!(p["ts"].as_i64().unwrap() > 1_700_000_000_000);
    }

    // History over the socket.
    let history = ws.call(json!({"type": "history", "channel": "chat:room"})).await;
    assert_eq!(history["publications"][0]["data"], json!({"text": "hi"}));
    assert_eq!(history["complete"], true);

    // Bad frames get an error reply and the connection stays.
    ws.send_text("{not json".into()).await;
    assert_eq!(ws.recv().await["code"], "bad_request");
    let unknown = ws.call(json!({"type": "teleport"})).await;
    assert_eq!(unknown["code"], "bad_request");
    assert!(unknown["message"].as_str().unwrap().contains("teleport"));
    let missing = ws.call(json!({"type": "subscribe"})).await;
    assert!(missing["message"].as_str().unwrap().contains("channel"));
    let invalid = ws.call(json!({"type": "subscribe", "channel": "bad channel"})).await;
    assert_eq!(invalid["code"], "invalid_channel");
    let missing_ns = ws.call(json!({"type": "subscribe", "channel": "nons:x"})).await;
    assert_eq!(missing_ns["code"], "channel_not_found");
    // Publishing where clients may not.
    let denied = ws.call(json!({"type": "publish", "channel": "news", "data": 1})).await;
    assert_eq!(denied["code"], "publish_not_allowed");

    // Unsubscribe: bob leaves, alice sees it, and bob no longer receives.
    assert_eq!(
        bob.call(json!({"type": "unsubscribe", "channel": "chat:room"})).await["type"],
        "unsubscribed"
    );
    let leave = ws.recv().await;
    assert_eq!((leave["type"].as_str(), leave["user"].as_str()), (Some("leave"), Some("bob")));
    t.publish("chat:room", json!(2)).await;
    assert_eq!(ws.recv().await["position"], 2);
    assert_eq!(bob.call(json!({"type": "ping"})).await["type"], "pong", "bob got nothing in between");
    assert_eq!(
        bob.call(json!({"type": "unsubscribe", "channel": "chat:room"})).await["code"],
        "not_subscribed"
    );
}

async fn five_hundred_clients_receive_two_hundred_messages_in_order(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("fan", json!({"fanout": ["subscribe"]})).await;
    let mut clients = Vec::new();
    for _ in 0..500 {
        let mut ws = h.ws(&token).await;
        ws.subscribe("fanout").await;
        clients.push(ws);
    }
    let readers: Vec<_> =
        clients.into_iter().map(|mut ws| tokio::spawn(async move { ws.read_pubs(200).await })).collect();
    for batch in 0..4 {
        let messages: Vec<Value> =
            (0..50).map(|i| json!({"channel": "fanout", "data": {"n": batch * 50 + i}})).collect();
        let r = t.key.post("/v1/tenants/acme/messages", json!({"messages": messages})).await.expect(200);
        assert!(r["results"].as_array().unwrap().iter().all(|x| x["error"].is_null()));
    }
    for reader in readers {
        let pubs = reader.await.unwrap();
        for (i, p) in pubs.iter().enumerate() {
            assert_eq!(p["position"], i as u64 + 1, "no gap, no duplicate");
            assert_eq!(p["data"]["n"], i as u64);
        }
    }
}

async fn resume_after_a_dropped_connection_delivers_exactly_the_missed_messages(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", all_caps()).await;
    let mut ws = h.ws(&token).await;
    let sub = ws.subscribe("news").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        t.publish("news", json!(i)).await;
    }
    let seen = ws.read_pubs(5).await;
    let last = seen.last().unwrap()["position"].as_u64().unwrap();
    drop(ws);

    for i in 6..=15 {
        t.publish("news", json!(i)).await;
    }
    let mut ws = h.ws(&token).await;
    // A publisher keeps going while the client resumes: nothing may fall in the gap.
    let publisher = {
        let key = t.key.clone();
        tokio::spawn(async move {
            for i in 16..=40 {
                key.post("/v1/tenants/acme/channels/news/messages", json!({"data": i})).await.expect(200);
            }
        })
    };
    ws.send(json!({"type": "subscribe", "id": "r", "channel": "news", "since": {"position": last, "epoch": epoch}})).await;
    let reply = ws.recv().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["recovered"], true);
    publisher.await.unwrap();
    let rest = ws.read_pubs(35).await;
    let positions: Vec<u64> = rest.iter().map(|p| p["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (6..=40).collect::<Vec<_>>());
    let data: Vec<u64> = rest.iter().map(|p| p["data"].as_u64().unwrap()).collect();
    assert_eq!(data, (6..=40).collect::<Vec<_>>());
}

async fn resume_beyond_history_says_not_recovered(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post("/v1/tenants/acme/namespaces", json!({"name": "short", "options": {"history_size": 5}}))
        .await
        .expect(201);
    let token = t.token("u", all_caps()).await;
    let mut ws = h.ws(&token).await;
    let sub = ws.subscribe("short:x").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    t.publish("short:x", json!(1)).await;
    ws.read_pubs(1).await;
    drop(ws);
    for i in 2..=20 {
        t.publish("short:x", json!(i)).await;
    }
    let mut ws = h.ws(&token).await;
    let reply = ws
        .call(json!({"type": "subscribe", "channel": "short:x", "since": {"position": 1, "epoch": epoch}}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["position"], 20, "the client learns where the stream is now");
    // Nothing is replayed; the next message is live.
    t.publish("short:x", json!(21)).await;
    assert_eq!(ws.recv().await["position"], 21);

    // A wrong epoch (e.g. after a restart of in-memory history) is also not recovered.
    let mut ws2 = h.ws(&token).await;
    let reply = ws2
        .call(json!({"type": "subscribe", "channel": "short:x", "since": {"position": 20, "epoch": "other"}}))
        .await;
    assert_eq!(reply["recovered"], false);
    // The latest position with the right epoch is recovered with nothing to replay.
    let mut ws3 = h.ws(&token).await;
    let reply = ws3
        .call(json!({"type": "subscribe", "channel": "short:x", "since": {"position": 21, "epoch": epoch}}))
        .await;
    assert_eq!(reply["recovered"], true);
}

async fn idempotent_publish_delivers_once(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    let mut ws = h.ws(&t.token("u", all_caps()).await).await;
    ws.subscribe("orders").await;
    let path = "/v1/tenants/acme/channels/orders/messages";
    let first =
        t.key.post(path, json!({"data": {"order": 1}, "idempotency_key": "order-1"})).await.expect(200);
    let second =
        t.key.post(path, json!({"data": {"order": 1}, "idempotency_key": "order-1"})).await.expect(200);
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["position"], second["position"]);
    assert_eq!(first["id"], second["id"]);
    t.key.post(path, json!({"data": "marker"})).await.expect(200);
    let got = ws.read_pubs(2).await;
    assert_eq!(got[0]["data"], json!({"order": 1}));
    assert_eq!(got[1]["data"], "marker", "the repeated publish was not delivered");
}

async fn tenants_are_isolated_on_the_same_channel_name(h: Herald) {
    let a = realtime_tenant(&h, "alpha").await;
    let b = realtime_tenant(&h, "beta").await;
    let mut wa = h.ws(&a.token("u", all_caps()).await).await;
    let mut wb = h.ws(&b.token("u", all_caps()).await).await;
    wa.subscribe("news").await;
    wb.subscribe("news").await;
    a.publish("news", json!("for alpha")).await;
    b.publish("news", json!("for beta")).await;
    assert_eq!(wa.recv().await["data"], "for alpha");
    assert_eq!(wb.recv().await["data"], "for beta");
    assert_eq!(wa.call(json!({"type": "ping"})).await["type"], "pong", "nothing from beta reached alpha");
    assert_eq!(wb.call(json!({"type": "ping"})).await["type"], "pong");
    // A key of one tenant cannot publish to the other.
    a.key
        .post("/v1/tenants/beta/channels/news/messages", json!({"data": 1}))
        .await
        .problem(404, "tenant_not_found");
    // A token bound to alpha cannot be used for beta.
    let mut w = h.ws_raw(&format!("?tenant=beta&token={}", a.token("u", all_caps()).await)).await;
    assert_eq!(w.closed().await, crate::support::Closed { code: 4001, reason: "wrong_tenant".into() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_are_enforced_per_action() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "pub", "options": {"private": false, "client_publish": true, "presence": true}}),
        )
        .await
        .expect(201);
    t.key
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "priv", "options": {"client_publish": true, "presence": true}}),
        )
        .await
        .expect(201);
    let mut ws = h.ws(&t.token("u", json!({"priv:mine": ["subscribe"]})).await).await;
    assert_eq!(
        ws.call(json!({"type": "subscribe", "channel": "priv:other"})).await["code"],
        "permission_denied"
    );
    ws.subscribe("priv:mine").await;
    ws.subscribe("pub:open").await;
    assert_eq!(
        ws.call(json!({"type": "publish", "channel": "priv:mine", "data": 1})).await["code"],
        "permission_denied"
    );
    assert_eq!(
        ws.call(json!({"type": "publish", "channel": "pub:open", "data": 1})).await["code"],
        "permission_denied"
    );
    assert_eq!(
        ws.call(json!({"type": "history", "channel": "priv:mine"})).await["code"],
        "permission_denied"
    );
    assert_eq!(
        ws.call(json!({"type": "presence", "channel": "priv:mine"})).await["code"],
        "permission_denied"
    );
    assert_eq!(ws.call(json!({"type": "history", "channel": "pub:open"})).await["type"], "history");
    assert_eq!(ws.call(json!({"type": "presence", "channel": "pub:open"})).await["type"], "presence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_with_their_codes() {
    let h = Herald::with_env(&[("HERALD_MAX_FRAME_BYTES", "65536")]).await;
    let t = realtime_tenant(&h, "acme").await;
    h.admin()
        .patch(
            "/v1/tenants/acme",
            json!({"limits": {"max_connections": 3, "max_subscriptions_per_connection": 2, "max_message_bytes": 100, "max_publishes_per_second": 5}}),
        )
        .await
        .expect(200);
    let token = t.token("u", all_caps()).await;

    let mut ws = h.ws(&token).await;
    ws.subscribe("a").await;
    ws.subscribe("b").await;
    let too_many = ws.call(json!({"type": "subscribe", "channel": "c"})).await;
    assert_eq!(
        (too_many["code"].as_str(), too_many["limit"].as_u64()),
        (Some("too_many_subscriptions"), Some(2))
    );

    let big = t
        .key
        .post("/v1/tenants/acme/channels/a/messages", json!({"data": "x".repeat(200)}))
        .await
        .problem(413, "message_too_large");
    assert_eq!(big["limit"], 100);
    let mut limited = 0;
    for _ in 0..10 {
        let r = t.key.post("/v1/tenants/acme/channels/a/messages", json!({"data": 1})).await;
        if r.status == 429 {
            assert_eq!(r.body["code"], "rate_limited");
            assert_eq!(r.body["limit"], 5);
            limited += 1;
        }
    }
    assert!(limited >= 4, "a burst of 10 against 5/s is throttled ({limited} refused)");

    let _w2 = h.ws(&token).await;
    let _w3 = h.ws(&token).await;
    let mut w4 = h.ws_raw(&format!("?token={token}")).await;
    assert_eq!(w4.closed().await.code, 4101, "connection limit");
    let metrics = reqwest::get(format!("{}/metrics", h.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("herald_limit_refusals_total{code=\"connection_limit\"} 1\n"), "{metrics}");

    // An inbound frame over max_frame_bytes closes with 1009.
    ws.send_text(format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(70_000))).await;
    assert_eq!(ws.closed().await.code, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_with_bounded_memory() {
    let h = Herald::with_env(&[("HERALD_CLIENT_QUEUE_BYTES", "1048576")]).await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post("/v1/tenants/acme/namespaces", json!({"name": "bulk", "options": {"history_size": 0}}))
        .await
        .expect(201);
    let token = t.token("u", all_caps()).await;
    // Subscribe, then stop reading.
    let mut slow = h.ws(&token).await;
    slow.subscribe("bulk:x").await;
    let mut fast = h.ws(&token).await;
    fast.subscribe("bulk:x").await;
    let before = h.rss_kib();
    let payload = "y".repeat(32 * 1024);
    let mut fast_seen = 0;
    for _ in 0..50 {
        let messages: Vec<Value> = (0..10).map(|_| json!({"channel": "bulk:x", "data": payload})).collect();
        t.key.post("/v1/tenants/acme/messages", json!({"messages": messages})).await.expect(200);
        fast_seen += fast.read_pubs(10).await.len();
    }
    assert_eq!(fast_seen, 500, "a reader that keeps up loses nothing");
    let growth_kib = h.rss_kib().saturating_sub(before);
    // 500 × 32 KiB = 16 MiB went through; the slow reader may hold at most its queue.
    assert!(growth_kib < 12 * 1024, "server memory grew by {growth_kib} KiB");
    let closed = slow.closed().await;
    assert_eq!(closed, crate::support::Closed { code: 4100, reason: "slow_consumer".into() });
    let metrics = reqwest::get(format!("{}/metrics", h.base)).await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_slow_consumer_disconnects_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

async fn revocation_and_suspension_close_live_connections(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    let minted = t
        .key
        .post("/v1/tenants/acme/tokens", json!({"sub": "mallory", "capabilities": all_caps()}))
        .await
        .expect(201);
    let (token, jti) =
        (minted["token"].as_str().unwrap().to_owned(), minted["jti"].as_str().unwrap().to_owned());
    let mut ws = h.ws(&token).await;
    let other = t.token("alice", all_caps()).await;
    let mut alice = h.ws(&other).await;

    t.key.post("/v1/tenants/acme/revocations", json!({"jti": jti})).await.expect(201);
    let started = std::time::Instant::now();
    assert_eq!(ws.closed().await, crate::support::Closed { code: 4004, reason: "token_revoked".into() });
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(h.ws_raw(&format!("?token={token}")).await.closed().await.code, 4004, "cannot reconnect");
    assert_eq!(alice.call(json!({"type": "ping"})).await["type"], "pong", "other users stay");

    // All of a user's tokens issued before now.
    t.key.post("/v1/tenants/acme/revocations", json!({"sub": "alice"})).await.expect(201);
    assert_eq!(alice.closed().await.code, 4004);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = t.token("alice", all_caps()).await;
    let mut alice = h.ws(&fresh).await;

    h.admin().patch("/v1/tenants/acme", json!({"status": "suspended"})).await.expect(200);
    assert_eq!(
        alice.closed().await,
        crate::support::Closed { code: 4003, reason: "tenant_suspended".into() }
    );
    assert_eq!(h.ws_raw(&format!("?token={fresh}")).await.closed().await.code, 4003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_auth_timeout_and_token_expiry() {
    let h = Herald::with_env(&[
        ("HERALD_PING_INTERVAL_SECONDS", "1"),
        ("HERALD_PONG_TIMEOUT_SECONDS", "1"),
        ("HERALD_AUTH_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    let t = realtime_tenant(&h, "acme").await;

    // No connect frame: closed for auth timeout.
    let mut silent = h.ws_raw("").await;
    assert_eq!(silent.closed().await.code, 4005);

    // A peer that never answers pings is closed for ping timeout.
    let token = t.token("u", all_caps()).await;
    let (code, saw_ping) = raw_peer_that_ignores_pings(&h, &token).await;
    assert!(saw_ping, "the server pings");
    assert_eq!(code, 4102);

    // A live client (the library answers pings) stays connected past several intervals, and a
    // token that expires without refresh closes the connection with 4002.
    let short = t.token_ttl("u", all_caps(), 1).await;
    let mut expiring = h.ws(&short).await;
    let mut refreshed = h.ws(&t.token_ttl("v", all_caps(), 1).await).await;
    let reply = refreshed.call(json!({"type": "refresh", "token": t.token("v", all_caps()).await})).await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    let mismatch =
        refreshed.call(json!({"type": "refresh", "token": t.token("someone-else", all_caps()).await})).await;
    assert_eq!(mismatch["code"], "token_mismatch");
    // Keep reading on the refreshed connection (so its pings are answered) while the other one
    // expires.
    let keep_alive = async {
        let until = tokio::time::Instant::now() + Duration::from_secs(8);
        while tokio::time::Instant::now() < until {
            assert_eq!(
                refreshed.call(json!({"type": "ping"})).await["type"],
                "pong",
                "the refreshed connection lives on"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (closed, ()) = tokio::join!(expiring.closed(), keep_alive);
    assert_eq!(closed.code, 4002);
}

/// Completes a WebSocket handshake over a raw socket, then only reads; returns the close code
/// the server sent and whether a ping arrived first.
async fn raw_peer_that_ignores_pings(h: &Herald, token: &str) -> (u16, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = h.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut saw_ping = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let n = tokio::time::timeout_at(deadline, socket.read(&mut chunk))
            .await
            .expect("server acts in time")
            .unwrap();
        if n == 0 {
            panic!("closed without a close frame");
        }
        buf.extend_from_slice(&chunk[..n]);
        // Skip the HTTP response head.
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let mut frames = &buf[head_end + 4..];
        // Server frames are unmasked: [opcode byte, length (7 bits, or 126 + 16 bits), payload].
        loop {
            if frames.len() < 2 {
                break;
            }
            let (opcode, short) = (frames[0] & 0x0f, (frames[1] & 0x7f) as usize);
            let (len, start) = match short {
                126 if frames.len() >= 4 => (u16::from_be_bytes([frames[2], frames[3]]) as usize, 4),
                126 => break,
                127 => panic!("unexpectedly large frame"),
                n => (n, 2),
            };
            if frames.len() < start + len {
                break;
            }
            let payload = &frames[start..start + len];
            match opcode {
                0x9 => saw_ping = true,
                0x8 => return (u16::from_be_bytes([payload[0], payload[1]]), saw_ping),
                _ => {}
            }
            frames = &frames[start + len..];
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_when_to_reconnect() {
    let mut h = Herald::with_env(&[("HERALD_RECONNECT_SPREAD_MS", "3000")]).await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", all_caps()).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut ws = h.ws(&token).await;
        ws.subscribe("news").await;
        clients.push(ws);
    }
    t.publish("news", json!("before shutdown")).await;
    let _ = std::process::Command::new("kill").args(["-TERM", &h.pid().to_string()]).status();
    let mut delays = Vec::new();
    for ws in &mut clients {
        // Messages queued before the shutdown are still delivered, then the close.
        assert_eq!(ws.recv().await["data"], "before shutdown");
        let closed = ws.closed().await;
        assert_eq!(closed.code, 4200, "{closed:?}");
        let delay: u64 = closed
            .reason
            .strip_prefix("shutting_down retry_after_ms=")
            .expect("reason names the delay")
            .parse()
            .unwrap();
        assert!(delay <= 3000);
        delays.push(delay);
    }
    delays.sort();
    delays.dedup();
    assert!(delays.len() > 1, "reconnects are spread, not simultaneous: {delays:?}");
    let started = std::time::Instant::now();
    h.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10), "the node exits once its clients are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_data_is_refused() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
    let body = format!("{{\"data\": {deep}}}");
    let p = t
        .key
        .post_bytes("/v1/tenants/acme/channels/news/messages", "application/json", body.into_bytes())
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "data");
    let ok = format!("{{\"data\": {}1{}}}", "[".repeat(64), "]".repeat(64));
    t.key
        .post_bytes("/v1/tenants/acme/channels/news/messages", "application/json", ok.into_bytes())
        .await
        .expect(200);
}

crate::on_both_fanouts!(
    five_hundred_clients_receive_two_hundred_messages_in_order,
    resume_after_a_dropped_connection_delivers_exactly_the_missed_messages,
    resume_beyond_history_says_not_recovered,
    idempotent_publish_delivers_once,
    tenants_are_isolated_on_the_same_channel_name,
    revocation_and_suspension_close_live_connections,
);

/// Each thread of `pid`: its name and the numeric fields of `/proc/PID/task/TID/stat` from
/// field 4 on (after the name and the state), so field N is at index N - 4.
fn threads(pid: u32) -> Vec<(String, Vec<i64>)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_owned();
        threads.push((name, rest.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect()));
    }
    threads
}

/// CPU ticks (user + system) of the node's threads, summed by thread name.
fn thread_ticks(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut ticks = std::collections::HashMap::new();
    for (name, fields) in threads(pid) {
        // utime and stime: fields 14 and 15.
        *ticks.entry(name).or_default() += (fields[10] + fields[11]) as u64;
    }
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_writers_run_apart_from_the_http_requests() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", all_caps()).await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        let mut ws = h.ws(&token).await;
        ws.subscribe("wide").await;
        clients.push(ws);
    }
    let before = thread_ticks(h.pid());
    let padding = "x".repeat(1000);
    for n in 0..400 {
        t.publish("wide", json!({"n": n, "padding": padding})).await;
    }
    for ws in clients.iter_mut().step_by(50) {
        assert_eq!(ws.read_pubs(400).await.len(), 400);
    }
    let after = thread_ticks(h.pid());
    let used = |ws: bool| -> u64 {
        after
            .iter()
            .filter(|(name, _)| (name.as_str() == "herald-ws") == ws)
            .map(|(name, t)| t.saturating_sub(before.get(name).copied().unwrap_or(0)))
            .sum()
    };
    let (writers, rest) = (used(true), used(false));
    // 120,000 deliveries of 1 KB against 400 publish requests: the writes are a large share of
    // the work (more than half in a debug build), and they happen on the socket runtime's
    // threads, not among the HTTP requests (where the socket runtime would use nothing).
    assert!(
        writers >= 5 && writers * 3 >= rest,
        "herald-ws threads used {writers} ticks, the others {rest}: {after:?}"
    );
}

/// Each thread of `pid` by name, with its nice value (field 19).
fn thread_nice(pid: u32) -> Vec<(String, i64)> {
    threads(pid).into_iter().map(|(name, fields)| (name, fields[15])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_writers_run_below_the_other_threads() {
    for (setting, lower) in [(None, 10), (Some("3"), 3), (Some("0"), 0)] {
        let h = match setting {
            None => Herald::sqlite().await,
            Some(nice) => Herald::with_env(&[("HERALD_SOCKET_THREADS_NICE", nice)]).await,
        };
        // The writers are `lower` below the rest; every other thread keeps the process's value
        // (read again for a while: a thread sets its value as it starts).
        let (mut threads, mut as_set) = (Vec::new(), false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !as_set && std::time::Instant::now() < deadline {
            threads = thread_nice(h.pid());
            let main = threads.iter().find(|(name, _)| name != "herald-ws").expect("the main thread").1;
            let (writers, others): (Vec<_>, Vec<_>) =
                threads.iter().partition(|(name, _)| name == "herald-ws");
            as_set = !writers.is_empty()
                && writers.iter().all(|(_, nice)| *nice == (main + lower).min(19))
                && others.iter().all(|(_, nice)| *nice == main);
            if !as_set {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(as_set, "{setting:?}: {threads:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_writing_to_a_slow_reader_within_the_grace() {
    let mut h = Herald::with_env(&[("HERALD_CLIENT_QUEUE_BYTES", "67108864")]).await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", all_caps()).await;
    let mut ws = h.ws(&token).await;
    ws.subscribe("bulk").await;
    // 20 MB the client does not read yet: more than the sockets' buffers hold, so the node is
    // still writing to it when the signal comes.
    let padding = "x".repeat(50_000);
    for n in 0..400 {
        t.publish("bulk", json!({"n": n, "padding": padding})).await;
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &h.pid().to_string()]).status();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pubs = ws.read_pubs(400).await;
    assert_eq!(pubs[399]["data"]["n"], 399);
    let closed = ws.closed().await;
    assert_eq!(closed.code, 4200, "{closed:?}");
    h.stop().await;
}
