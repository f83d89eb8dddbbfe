//! Webhooks through the real binary, against real local HTTP receivers: configuration and
//! secrets, SSRF refusals, the events a client's life produces (signed, numbered per channel),
//! retries with jittered backoff, durability across a restart, 410 Gone, the breaker, the
//! grace window, the offline fallback, replays.

use std::time::{Duration, Instant};

use herald_webhooks::{DEFAULT_TOLERANCE_SECONDS, Secret, verify};
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, Answer, Herald, RealtimeTenant, Received, Receiver, Start, realtime_tenant,
};

const LOOPBACK: (&str, &str) = ("HERALD_OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8");

fn start_with(env: &[(&str, &str)], database_url: Option<&str>) -> Start {
    let mut all: Vec<(String, String)> = vec![(LOOPBACK.0.into(), LOOPBACK.1.into())];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Start {
        admin_token: Some(ADMIN_TOKEN.into()),
        database_url: database_url.map(str::to_owned),
        env: all,
        ..Default::default()
    }
}

async fn node(env: &[(&str, &str)]) -> Herald {
    Herald::start(start_with(env, None)).await
}

/// Creates a webhook; answers (id, secret).
async fn webhook(t: &RealtimeTenant, url: &str, events: &[&str]) -> (String, String) {
    let created = t
        .key
        .post(&format!("/v1/tenants/{}/webhooks", t.id), json!({"url": url, "events": events}))
        .await
        .expect(201);
    (created["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned())
}

fn verifies(r: &Received, secrets: &[&str]) -> bool {
    let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::parse(s).unwrap()).collect();
    let now = chrono::Utc::now().timestamp();
    verify(&secrets, |name| r.header(name), &r.body, now, DEFAULT_TOLERANCE_SECONDS).is_ok()
}

async fn deliveries(t: &RealtimeTenant, id: &str) -> Vec<Value> {
    let page =
        t.key.get(&format!("/v1/tenants/{}/webhooks/{id}/deliveries?limit=200", t.id)).await.expect(200);
    page["items"].as_array().unwrap().clone()
}

async fn test_event(t: &RealtimeTenant, id: &str) -> Value {
    t.key.post_empty(&format!("/v1/tenants/{}/webhooks/{id}/test", t.id)).await.expect(202)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_are_checked_and_the_secret_is_shown_once() {
    // Without the operator's permission a loopback receiver is refused, by literal and by name.
    let strict = Herald::sqlite().await;
    let t = realtime_tenant(&strict, "acme").await;
    for url in
        ["http://127.0.0.1:9/hook", "http://[::1]:9/hook", "http://10.1.2.3/x", "http://169.254.169.254/"]
    {
        let p = t
            .key
            .post("/v1/tenants/acme/webhooks", json!({"url": url, "events": ["channel.occupied"]}))
            .await;
        let p = p.problem(422, "url_not_allowed");
        assert_eq!(p["field"], "url", "{p}");
    }
    for url in ["ftp://example.com/", "http://user:pw@example.com/", "not a url"] {
        let p = t
            .key
            .post("/v1/tenants/acme/webhooks", json!({"url": url, "events": ["channel.occupied"]}))
            .await;
        assert_eq!(p.problem(422, "url_not_allowed")["field"], "url");
    }
    let p =
        t.key.post("/v1/tenants/acme/webhooks", json!({"url": "https://example.com/", "events": []})).await;
    assert_eq!(p.problem(422, "invalid_value")["field"], "events");
    let p = t
        .key
        .post("/v1/tenants/acme/webhooks", json!({"url": "https://example.com/", "events": ["nope"]}))
        .await;
    assert_eq!(p.status, 400, "{:?}", p.body);

    // A name resolving to loopback is accepted at creation (names are checked per call) and
    // refused when called: the delivery fails without retrying and nothing is reached.
    let receiver = Receiver::start().await;
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (id, _) = webhook(&t, &by_name, &["channel.occupied"]).await;
    test_event(&t, &id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deliveries(&t, &id).await;
        if d[0]["status"] == "failed" {
            assert!(d[0]["error"].as_str().unwrap().contains("not a public address"), "{}", d[0]);
            break;
        }
        assert!(Instant::now() < deadline, "{d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(receiver.received().is_empty());

    // Allowed: created with a secret that is never shown again.
    let open = node(&[]).await;
    let t = realtime_tenant(&open, "acme").await;
    let (id, secret) = webhook(&t, &receiver.url, &["channel.occupied", "presence.join"]).await;
    assert!(secret.starts_with("whsec_"));
    let got = t.key.get(&format!("/v1/tenants/acme/webhooks/{id}")).await.expect(200);
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["events"], json!(["channel.occupied", "presence.join"]));
    let list = t.key.get("/v1/tenants/acme/webhooks").await.expect(200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("whsec_"));
    let changed =
        t.key.patch(&format!("/v1/tenants/acme/webhooks/{id}"), json!({"enabled": false})).await.expect(200);
    assert_eq!(changed["enabled"], false);
    // Another tenant cannot see it; a key without the scope cannot manage webhooks.
    let other = realtime_tenant(&open, "other").await;
    other.key.get(&format!("/v1/tenants/acme/webhooks/{id}")).await.problem(404, "tenant_not_found");
    other.key.get(&format!("/v1/tenants/other/webhooks/{id}")).await.problem(404, "webhook_not_found");
    t.key.delete(&format!("/v1/tenants/acme/webhooks/{id}")).await.expect(204);
    t.key.get(&format!("/v1/tenants/acme/webhooks/{id}")).await.problem(404, "webhook_not_found");
}

/// Events of a client's life, signed and numbered per channel, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_life_fires_each_event_once_signed_and_numbered() {
    let h = node(&[("HERALD_WEBHOOK_GRACE_MS", "300")]).await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "room", "options": {"presence": true, "client_publish": true}}),
        )
        .await
        .expect(201);
    let receiver = Receiver::start().await;
    let all = [
        "channel.occupied",
        "channel.vacated",
        "presence.join",
        "presence.leave",
        "connection.open",
        "connection.close",
        "message.published",
    ];
    let (_, secret) = webhook(&t, &receiver.url, &all).await;

    let token = t.token("ann", json!({"*": ["subscribe", "publish"]})).await;
    let mut ws = h.ws(&token).await;
    assert_eq!(ws.call(json!({"type": "subscribe", "channel": "room:1"})).await["type"], "subscribed");
    let ack = ws.call(json!({"type": "publish", "channel": "room:1", "data": {"text": "hi"}})).await;
    assert_eq!(ack["type"], "published", "{ack}");
    // The tenant's own REST publish is not reported (include_api_publishes is off).
    t.publish("room:1", json!({"from": "api"})).await;
    receiver.wait_for(4, Duration::from_secs(10), |_| true).await;
    drop(ws);
    receiver.wait_for(7, Duration::from_secs(10), |_| true).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let got = receiver.received();
    let kinds: Vec<String> = got.iter().map(|r| r.json()["type"].as_str().unwrap().to_owned()).collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    let mut expected: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(sorted, expected, "each event exactly once: {kinds:?}");
    for r in &got {
        assert!(verifies(r, &[&secret]), "signature: {:?}", r.headers);
        assert!(!verifies(r, &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]), "another secret must not verify");
        let body = r.json();
        assert_eq!(body["tenant"], "acme");
        assert_eq!(r.header("webhook-id"), body["id"].as_str());
        assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    }
    let by_type = |k: &str| got.iter().map(Received::json).find(|b| b["type"] == k).unwrap();
    let published = by_type("message.published");
    assert_eq!(published["data"]["data"], json!({"text": "hi"}), "{published}");
    assert_eq!(published["data"]["user"], "ann");
    assert_eq!(published["data"]["channel"], "room:1");
    let close = by_type("connection.close");
    assert_eq!(close["data"]["user"], "ann");
    assert!(close["data"]["code"].as_u64().is_some(), "{close}");
    assert_eq!(by_type("connection.open")["data"]["transport"], "websocket");
    assert!(
        by_type("connection.open").get("sequence").is_none(),
        "connection events have no channel sequence"
    );
    // Channel events carry a per-channel sequence: distinct and consecutive, in the order Herald
    // recorded them; the channel's life is in order (occupied, join, leave, vacated). (The
    // client's publish may be recorded before the occupancy it happened in: the detector runs
    // a moment after a subscription; `position` orders messages.)
    let mut seqs: Vec<(u64, String)> = got
        .iter()
        .map(Received::json)
        .filter(|b| b["data"]["channel"] == "room:1")
        .map(|b| (b["sequence"].as_u64().unwrap(), b["type"].as_str().unwrap().to_owned()))
        .collect();
    seqs.sort();
    let numbers: Vec<u64> = seqs.iter().map(|s| s.0).collect();
    assert_eq!(numbers, (numbers[0]..numbers[0] + 5).collect::<Vec<_>>(), "{seqs:?}");
    let life: Vec<&str> = seqs.iter().map(|s| s.1.as_str()).filter(|k| *k != "message.published").collect();
    assert_eq!(life, ["channel.occupied", "presence.join", "presence.leave", "channel.vacated"], "{seqs:?}");
}

/// Failing deliveries are retried with exponential backoff and full jitter, on 500, on
/// timeouts and on refused connections, and finally succeed; the log shows every attempt.
async fn retries(database_url: Option<&str>) {
    let h = Herald::start(start_with(
        &[
            ("HERALD_WEBHOOK_RETRY_INITIAL_MS", "1500"),
            ("HERALD_WEBHOOK_RETRY_MAX_DELAY_SECONDS", "3"),
            ("HERALD_WEBHOOK_TIMEOUT_SECONDS", "1"),
            ("HERALD_WEBHOOK_BREAKER_FAILURES", "1000"),
            // All first attempts at once: the waits measure the backoff, not the per-tenant cap.
            ("HERALD_WEBHOOK_MAX_IN_FLIGHT_PER_TENANT", "64"),
        ],
        database_url,
    ))
    .await;
    let t = realtime_tenant(&h, "acme").await;
    let receiver = Receiver::start().await;
    let (id, _) = webhook(&t, &receiver.url, &["channel.occupied"]).await;
    // 12 events that each fail twice (500, then a timeout), then succeed: the answer depends
    // on how often that event id came.
    let n = 12;
    let seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> = Default::default();
    receiver.respond(move |r| {
        let mut seen = seen.lock().unwrap();
        let count = seen.entry(r.header("webhook-id").unwrap_or_default().to_owned()).or_default();
        *count += 1;
        match *count {
            1 => Answer::Status(500),
            2 => Answer::Hang,
            _ => Answer::Status(200),
        }
    });
    for _ in 0..n {
        test_event(&t, &id).await;
    }
    let all = receiver.wait_for(3 * n, Duration::from_secs(30), |_| true).await;
    // Per event (by webhook-id): three attempts, the same id and body each time.
    let mut by_event: std::collections::BTreeMap<String, Vec<Instant>> = Default::default();
    for r in &all {
        by_event.entry(r.header("webhook-id").unwrap().to_owned()).or_default().push(r.at);
    }
    assert_eq!(by_event.len(), n);
    let mut first_waits = Vec::new();
    for times in by_event.values() {
        assert_eq!(times.len(), 3, "{times:?}");
        let wait = times[1] - times[0];
        // Full jitter: somewhere in [0, 1.5 s] (plus the dispatcher's 250 ms tick).
        assert!(wait <= Duration::from_millis(1500 + 600), "first retry after {wait:?}");
        first_waits.push(wait.as_millis() as i64);
        // The second wait includes the 1 s timeout and is at most 3 s (the cap) after it.
        let second = times[2] - times[1];
        assert!(
            second >= Duration::from_millis(900) && second <= Duration::from_millis(1000 + 3000 + 600),
            "{second:?}"
        );
    }
    let spread = first_waits.iter().max().unwrap() - first_waits.iter().min().unwrap();
    assert!(spread >= 300, "retries are jittered, not in lock-step: {first_waits:?}");
    // The log: succeeded after three attempts, with the answer's status and an excerpt.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deliveries(&t, &id).await;
        if d.iter().all(|d| d["status"] == "succeeded") {
            assert!(d.iter().all(|d| d["attempts"] == 3 && d["response_status"] == 200), "{d:?}");
            assert_eq!(d[0]["response_excerpt"], "answered");
            break;
        }
        assert!(Instant::now() < deadline, "{d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Connection refused: recorded and retried, then delivered once the endpoint is back.
    let port = receiver.port;
    receiver.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = test_event(&t, &id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deliveries(&t, &id).await;
        let mine = d.iter().find(|x| x["id"] == queued["id"]).unwrap().clone();
        if mine["attempts"].as_u64().unwrap() >= 1 {
            assert_eq!(mine["status"], "pending", "{mine}");
            assert!(mine["error"].as_str().unwrap().contains("cannot reach"), "{mine}");
            assert!(mine["next_attempt_at"].is_string());
            break;
        }
        assert!(Instant::now() < deadline, "{mine}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = Receiver::on(port).await;
    back.wait_for(1, Duration::from_secs(15), |r| r.json()["id"] == queued["event_id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_sqlite() {
    retries(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_postgres() {
    let Some(db) = crate::support::postgres_database() else { return };
    retries(Some(&db.url)).await;
}

/// An event accepted while the endpoint is down survives a restart of Herald (even a crash)
/// and arrives once the endpoint is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_event_survives_a_crash_and_arrives_after_the_restart() {
    let env = [("HERALD_WEBHOOK_RETRY_INITIAL_MS", "200"), ("HERALD_WEBHOOK_RETRY_MAX_DELAY_SECONDS", "1")];
    let mut h = node(&env).await;
    let t = realtime_tenant(&h, "acme").await;
    let down = Receiver::start().await;
    let port = down.port;
    down.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (id, secret) = webhook(&t, &format!("http://127.0.0.1:{port}/hook"), &["connection.open"]).await;
    let token = t.token("ann", json!({"*": ["subscribe"]})).await;
    drop(h.ws(&token).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries(&t, &id).await.first().is_none_or(|d| d["attempts"] == 0) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.kill9().await;
    let receiver = Receiver::on(port).await;
    let h = Herald::restart_as(h, start_with(&env, None)).await;
    let got = receiver.wait_for(1, Duration::from_secs(15), |r| r.json()["type"] == "connection.open").await;
    assert!(verifies(&got[0], &[&secret]));
    assert_eq!(got[0].json()["data"]["user"], "ann");
    drop(h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_webhook_and_a_breaker_stops_hammering_a_failing_one() {
    let h = node(&[
        ("HERALD_WEBHOOK_RETRY_INITIAL_MS", "50"),
        ("HERALD_WEBHOOK_RETRY_MAX_DELAY_SECONDS", "1"),
        ("HERALD_WEBHOOK_BREAKER_FAILURES", "3"),
        ("HERALD_WEBHOOK_BREAKER_SECONDS", "3"),
    ])
    .await;
    let t = realtime_tenant(&h, "acme").await;
    let gone = Receiver::start().await;
    gone.script(&[Answer::Status(410)]);
    let (id, _) = webhook(&t, &gone.url, &["channel.occupied"]).await;
    test_event(&t, &id).await;
    gone.wait_for(1, Duration::from_secs(5), |_| true).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let w = t.key.get(&format!("/v1/tenants/acme/webhooks/{id}")).await.expect(200);
        if w["enabled"] == false {
            assert!(w["disabled_reason"].as_str().unwrap().contains("410"), "{w}");
            break;
        }
        assert!(Instant::now() < deadline, "{w}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deliveries(&t, &id).await[0]["status"], "failed");
    // Nothing more is sent to it.
    test_event(&t, &id).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(gone.received().len(), 1);

    // A failing endpoint: after 3 consecutive failures the breaker holds its deliveries back.
    let failing = Receiver::start().await;
    failing.script(&vec![Answer::Status(503); 1000]);
    let (id, _) = webhook(&t, &failing.url, &["channel.occupied"]).await;
    for _ in 0..5 {
        test_event(&t, &id).await;
    }
    failing.wait_for(3, Duration::from_secs(5), |_| true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_open = failing.received().len();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(failing.received().len(), at_open, "no requests while the breaker is open");
    let d = deliveries(&t, &id).await;
    assert!(d.iter().any(|d| d["error"].as_str().is_some_and(|e| e.contains("circuit breaker"))), "{d:?}");
    // After the open period, it tries again.
    failing.wait_for(at_open + 1, Duration::from_secs(5), |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_flaps_inside_the_grace_window_fires_nothing() {
    let h = node(&[("HERALD_WEBHOOK_GRACE_MS", "2000")]).await;
    let t = realtime_tenant(&h, "acme").await;
    t.presence_namespace("room").await;
    let receiver = Receiver::start().await;
    webhook(&t, &receiver.url, &["channel.occupied", "channel.vacated", "presence.join", "presence.leave"])
        .await;
    let token = t.token("ann", json!({"*": ["subscribe"]})).await;
    let mut ws = h.ws(&token).await;
    ws.call(json!({"type": "subscribe", "channel": "room:1"})).await;
    receiver.wait_for(2, Duration::from_secs(5), |_| true).await;
    // Drop and come back three times within the window.
    for _ in 0..3 {
        drop(ws);
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws = h.ws(&token).await;
        ws.call(json!({"type": "subscribe", "channel": "room:1"})).await;
    }
    tokio::time::sleep(Duration::from_millis(2800)).await;
    assert_eq!(
        receiver.received().len(),
        2,
        "no leave/join pair: {:?}",
        receiver.received().iter().map(|r| r.json()).collect::<Vec<_>>()
    );
    drop(ws);
    receiver.wait_for(4, Duration::from_secs(6), |_| true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.of_type("presence.leave").len(), 1);
    assert_eq!(receiver.of_type("channel.vacated").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_user_message_fires_the_webhook_and_a_delivered_one_does_not() {
    let h = node(&[]).await;
    let t = realtime_tenant(&h, "acme").await;
    let receiver = Receiver::start().await;
    webhook(&t, &receiver.url, &["user.offline_message"]).await;
    let sent = t
        .key
        .post("/v1/tenants/acme/users/bob/messages", json!({"data": {"n": 1}, "if_offline": "webhook"}))
        .await
        .expect(200);
    assert_eq!((sent["delivered"].as_u64(), sent["outcome"].as_str()), (Some(0), Some("webhook")));
    let got = receiver.wait_for(1, Duration::from_secs(5), |_| true).await;
    let body = got[0].json();
    assert_eq!(body["type"], "user.offline_message");
    assert_eq!(body["data"]["user"], "bob");
    assert_eq!(body["data"]["data"], json!({"n": 1}));
    assert_eq!(body["data"]["id"], sent["id"]);
    // A tenant without such a webhook: dropped, even when asked.
    let other = realtime_tenant(&h, "other").await;
    let unheard = other
        .key
        .post("/v1/tenants/other/users/bob/messages", json!({"data": 1, "if_offline": "webhook"}))
        .await
        .expect(200);
    assert_eq!(unheard["outcome"], "dropped", "{unheard}");
    // Without the option: dropped. With the user online: delivered, no webhook.
    let dropped = t.key.post("/v1/tenants/acme/users/bob/messages", json!({"data": 2})).await.expect(200);
    assert_eq!(dropped["outcome"], "dropped");
    let token = t.token("bob", json!({})).await;
    let mut ws = h.ws(&token).await;
    let online = t
        .key
        .post("/v1/tenants/acme/users/bob/messages", json!({"data": 3, "if_offline": "webhook"}))
        .await
        .expect(200);
    assert_eq!(online["outcome"], "delivered");
    assert_eq!(ws.recv().await["data"], 3);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_repeat_the_event_id_and_rotation_signs_with_both_secrets() {
    let h = node(&[]).await;
    let t = realtime_tenant(&h, "acme").await;
    let receiver = Receiver::start().await;
    let (id, old) = webhook(&t, &receiver.url, &["channel.occupied"]).await;
    let first = test_event(&t, &id).await;
    receiver.wait_for(1, Duration::from_secs(5), |_| true).await;
    // Queued or sending: cannot be replayed; once done it can.
    let deadline = Instant::now() + Duration::from_secs(5);
    while deliveries(&t, &id).await[0]["status"] != "succeeded" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay =
        format!("/v1/tenants/acme/webhooks/{id}/deliveries/{}/replay", first["id"].as_str().unwrap());
    t.key.post_empty(&replay).await.expect(202);
    let got = receiver.wait_for(2, Duration::from_secs(5), |_| true).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[0].body, got[1].body);
    t.key
        .post_empty(&format!("/v1/tenants/acme/webhooks/{id}/deliveries/dlv_nope/replay"))
        .await
        .problem(404, "delivery_not_found");

    // Rotation: during the overlap both secrets verify; without overlap only the new one.
    let rotated =
        t.key.post(&format!("/v1/tenants/acme/webhooks/{id}/rotate-secret"), json!({})).await.expect(200);
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(rotated["previous_secret_valid_until"].is_string());
    test_event(&t, &id).await;
    let got = receiver.wait_for(3, Duration::from_secs(5), |_| true).await;
    let r = &got[2];
    assert_eq!(r.header("webhook-signature").unwrap().split(' ').count(), 2);
    assert!(verifies(r, &[&old]) && verifies(r, &[&new]));
    let again = t
        .key
        .post(&format!("/v1/tenants/acme/webhooks/{id}/rotate-secret"), json!({"previous_valid_seconds": 0}))
        .await
        .expect(200);
    let newest = again["secret"].as_str().unwrap().to_owned();
    test_event(&t, &id).await;
    let got = receiver.wait_for(4, Duration::from_secs(5), |_| true).await;
    assert!(verifies(&got[3], &[&newest]) && !verifies(&got[3], &[&new]) && !verifies(&got[3], &[&old]));
}

/// A batching webhook gets up to `batch_max_events` events per request, gathered for up to
/// `batch_max_ms`; each event keeps its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_webhook_gets_several_events_per_request() {
    let h = node(&[]).await;
    let t = realtime_tenant(&h, "acme").await;
    let receiver = Receiver::start().await;
    let created = t
        .key
        .post(
            "/v1/tenants/acme/webhooks",
            json!({"url": receiver.url, "events": ["connection.open"], "batch_max_events": 5, "batch_max_ms": 800}),
        )
        .await
        .expect(201);
    assert_eq!(
        (created["batch_max_events"].as_u64(), created["batch_max_ms"].as_u64()),
        (Some(5), Some(800))
    );
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap();
    let p = t.key.patch(&format!("/v1/tenants/acme/webhooks/{id}"), json!({"batch_max_events": 101})).await;
    assert_eq!(p.problem(422, "invalid_value")["field"], "batch_max_events");
    let token = t.token("ann", json!({})).await;
    let started = Instant::now();
    for _ in 0..7 {
        drop(h.ws(&token).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ids = Vec::new();
    while ids.len() < 7 {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            receiver.received().iter().map(Received::json).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        ids = receiver
            .received()
            .iter()
            .flat_map(|r| r.json()["events"].as_array().unwrap().clone())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
    }
    let requests = receiver.received();
    assert!(
        requests.len() <= 3 && requests.len() >= 2,
        "7 events in batches of 5 at most: {}",
        requests.len()
    );
    for r in &requests {
        let events = r.json()["events"].as_array().unwrap().clone();
        assert!(!events.is_empty() && events.len() <= 5, "{}", events.len());
        assert!(events.iter().all(|e| e["type"] == "connection.open"));
        assert_eq!(r.header("webhook-id"), events[0]["id"].as_str());
        assert!(verifies(r, &[&secret]));
    }
    assert!(requests[0].at - started >= Duration::from_millis(700), "the first event waited for company");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7, "every event once");
}

/// A node that dies in the middle of a request leaves its claim behind; once the claim's lease
/// (twice the request timeout plus 5 s) runs out, the delivery is taken over — by a peer in a
/// cluster, here by the restarted node — and arrives with the same event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_claimed_by_a_node_that_died_mid_request_is_taken_over() {
    let env = [("HERALD_WEBHOOK_TIMEOUT_SECONDS", "2")];
    let mut h = node(&env).await;
    let t = realtime_tenant(&h, "acme").await;
    let receiver = Receiver::start().await;
    receiver.script(&[Answer::Hang]);
    let (id, _) = webhook(&t, &receiver.url, &["channel.occupied"]).await;
    let queued = test_event(&t, &id).await;
    receiver.wait_for(1, Duration::from_secs(5), |_| true).await;
    h.kill9().await;
    let killed = Instant::now();
    let h = Herald::restart_as(h, start_with(&env, None)).await;
    let got = receiver.wait_for(2, Duration::from_secs(20), |_| true).await;
    assert_eq!(got[1].header("webhook-id"), queued["event_id"].as_str());
    let waited = got[1].at - killed;
    assert!(waited >= Duration::from_secs(5), "not before the lease ran out: {waited:?}");
    assert!(waited <= Duration::from_secs(12), "soon after it: {waited:?}");
    drop(h);
}
