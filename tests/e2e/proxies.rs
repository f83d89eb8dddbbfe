//! Proxies through the real binary against real local HTTP endpoints: a token-less connect
//! authenticated from the client's cookie, subscribe and publish decisions (allow, deny,
//! enrich, replace), timeouts under each failure policy, refresh, signatures, SSRF refusals.

use std::time::{Duration, Instant};

use herald_webhooks::{DEFAULT_TOLERANCE_SECONDS, Secret, verify};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{ADMIN_TOKEN, Answer, Herald, Received, Receiver, Start, Ws, realtime_tenant};

async fn node() -> Herald {
    Herald::start(Start {
        admin_token: Some(ADMIN_TOKEN.into()),
        env: vec![("HERALD_OUTBOUND_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into())],
        ..Default::default()
    })
    .await
}

fn ok(result: Value) -> Answer {
    Answer::Json(200, json!({"result": result}).to_string())
}

fn deny(reason: &str) -> Answer {
    Answer::Json(200, json!({"deny": {"reason": reason}}).to_string())
}

/// A WebSocket to `/v1/ws?tenant=…` without a token, with a cookie.
async fn ws_with_cookie(h: &Herald, tenant: &str, cookie: Option<&str>) -> Ws {
    let mut request = h.ws_url(&format!("?tenant={tenant}")).into_client_request().unwrap();
    if let Some(c) = cookie {
        request.headers_mut().insert("cookie", c.parse().unwrap());
    }
    let (stream, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
    Ws { stream }
}

fn verifies(r: &Received, secret: &str) -> bool {
    let secrets = [Secret::parse(secret).unwrap()];
    verify(&secrets, |n| r.header(n), &r.body, chrono::Utc::now().timestamp(), DEFAULT_TOLERANCE_SECONDS)
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_proxy_authenticates_a_tokenless_client_from_its_cookie() {
    let h = node().await;
    let t = realtime_tenant(&h, "acme").await;
    t.presence_namespace("room").await;
    let proxy = Receiver::start().await;
    proxy.respond(|r| {
        let body = r.json();
        let cookie = body["headers"]["cookie"].as_str().unwrap_or("");
        if cookie.contains("session=alice") {
            ok(json!({"user": "alice", "capabilities": {"room:*": ["subscribe", "presence"]}, "info": {"name": "Alice"}}))
        } else {
            deny("no session")
        }
    });
    let put = t
        .key
        .raw(
            reqwest::Method::PUT,
            "/v1/tenants/acme/proxy",
            Some(("application/json", json!({"connect_url": proxy.url}).to_string().into_bytes())),
        )
        .await
        .expect(200);
    let secret = put["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let got = t.key.get("/v1/tenants/acme/proxy").await.expect(200);
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["on_failure"], "deny");

    let mut ws = ws_with_cookie(&h, "acme", Some("session=alice; theme=dark")).await;
    let hello = ws.recv().await;
    assert_eq!(
        (hello["type"].as_str(), hello["user"].as_str()),
        (Some("connected"), Some("alice")),
        "{hello}"
    );
    let sub = ws.call(json!({"type": "subscribe", "channel": "room:1"})).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    // Capabilities come from the proxy: nothing outside room:*.
    let other = ws.call(json!({"type": "subscribe", "channel": "elsewhere"})).await;
    assert_eq!(other["code"], "permission_denied", "{other}");
    let presence = t.key.get("/v1/tenants/acme/channels/room:1/presence").await.expect(200);
    assert_eq!(presence["clients"][0]["info"], json!({"name": "Alice"}), "{presence}");
    // The request the proxy got: signed, with the forwarded headers.
    let request = &proxy.received()[0];
    assert!(verifies(request, &secret), "{:?}", request.headers);
    let body = request.json();
    assert_eq!((body["kind"].as_str(), body["tenant"].as_str()), (Some("connect"), Some("acme")));
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["headers"]["cookie"], "session=alice; theme=dark");

    // Refused: closed with 4001 and the reason code.
    let mut refused = ws_with_cookie(&h, "acme", None).await;
    let closed = refused.closed().await;
    assert_eq!((closed.code, closed.reason.as_str()), (4001, "proxy_denied"));

    // SSE without a token is authenticated the same way.
    let sse = crate::support::get_with(
        &format!("{}/v1/sse?tenant=acme&channels=room:2", h.base),
        ("cookie", "session=alice"),
    )
    .await;
    assert_eq!(sse.status(), 200);
    let denied = reqwest::Client::new()
        .get(format!("{}/v1/sse?tenant=acme&channels=room:2", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let problem: Value = denied.json().await.unwrap();
    assert_eq!(problem["code"], "proxy_denied");
    assert_eq!(problem["detail"], "the tenant's connect proxy refused the connection", "{problem}");
    // A tenant without a connect proxy still needs a token.
    let other = realtime_tenant(&h, "other").await;
    drop(other);
    let missing = reqwest::Client::new()
        .get(format!("{}/v1/sse?tenant=other&channels=a", h.base))
        .send()
        .await
        .unwrap();
    let problem: Value = missing.json().await.unwrap();
    assert_eq!(problem["code"], "missing_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_publish_proxies_allow_deny_enrich_and_replace() {
    let h = node().await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "room", "options": {"presence": true, "client_publish": true}}),
        )
        .await
        .expect(201);
    let proxy = Receiver::start().await;
    proxy.respond(|r| {
        let b = r.json();
        match (b["kind"].as_str().unwrap(), b["channel"].as_str().unwrap_or("")) {
            ("subscribe", "room:secret") => deny("members only"),
            ("subscribe", _) => ok(json!({"info": {"role": "moderator"}})),
            ("publish", _) if b["data"]["text"] == "spam" => deny("looks like spam"),
            ("publish", _) => {
                ok(json!({"data": {"text": b["data"]["text"].as_str().unwrap().to_uppercase()}}))
            }
            _ => Answer::Status(500),
        }
    });
    t.key
        .raw(
            reqwest::Method::PUT,
            "/v1/tenants/acme/proxy",
            Some((
                "application/json",
                json!({"subscribe_url": proxy.url, "publish_url": proxy.url}).to_string().into_bytes(),
            )),
        )
        .await
        .expect(200);
    let token = t.token("ann", json!({"room:*": ["subscribe", "publish"]})).await;
    let mut ws = h.ws(&token).await;
    let refused = ws.call(json!({"type": "subscribe", "channel": "room:secret"})).await;
    assert_eq!(refused["code"], "proxy_denied", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("members only"), "{refused}");
    assert_eq!(ws.call(json!({"type": "subscribe", "channel": "room:1"})).await["type"], "subscribed");
    let presence = t.key.get("/v1/tenants/acme/channels/room:1/presence").await.expect(200);
    assert_eq!(presence["clients"][0]["info"], json!({"role": "moderator"}), "{presence}");
    // A second client listens (replies to `call` skip the publisher's own copies).
    let mut listener = h.ws(&token).await;
    assert_eq!(listener.call(json!({"type": "subscribe", "channel": "room:1"})).await["type"], "subscribed");
    let ack = ws.call(json!({"type": "publish", "channel": "room:1", "data": {"text": "hello"}})).await;
    assert_eq!(ack["type"], "published", "{ack}");
    let delivered = listener.read_pubs(1).await;
    assert_eq!(delivered[0]["data"], json!({"text": "HELLO"}), "the proxy's replacement is published");
    let spam = ws.call(json!({"type": "publish", "channel": "room:1", "data": {"text": "spam"}})).await;
    assert_eq!(spam["code"], "proxy_denied", "{spam}");
    // The tenant's own REST publishes do not go through the publish proxy.
    t.publish("room:1", json!({"text": "from api"})).await;
    assert_eq!(listener.read_pubs(1).await[0]["data"], json!({"text": "from api"}));

    let text = reqwest::get(format!("{}/metrics", h.base)).await.unwrap().text().await.unwrap();
    assert!(text.contains("herald_proxy_requests_total{kind=\"subscribe\",outcome=\"denied\"} 1"), "{text}");
    assert!(text.contains("herald_proxy_requests_total{kind=\"publish\",outcome=\"allowed\"} 1"), "{text}");
    // The same figures in the operator's statistics.
    let stats = h.admin().get("/v1/stats").await.expect(200);
    let by_kind = |k: &str| {
        stats["hooks"]["proxies"].as_array().unwrap().iter().find(|p| p["kind"] == k).unwrap().clone()
    };
    assert_eq!(by_kind("subscribe")["denied"], 1, "{stats}");
    assert_eq!(by_kind("publish")["allowed"], 1, "{stats}");
    assert!(by_kind("publish")["mean_latency_ms"].as_f64().is_some(), "{stats}");
    let tenant_view = t.key.get("/v1/stats").await.expect(200);
    assert!(tenant_view.get("hooks").is_none(), "a tenant key does not see node figures: {tenant_view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_proxy_times_out_under_each_failure_policy_and_blocks_nobody_else() {
    let h = node().await;
    let t = realtime_tenant(&h, "acme").await;
    let other = realtime_tenant(&h, "other").await;
    let proxy = Receiver::start().await;
    proxy.respond(|_| Answer::Hang);
    let put = |policy: &str| {
        json!({"subscribe_url": proxy.url, "timeout_ms": 1500, "on_failure": policy}).to_string().into_bytes()
    };
    t.key
        .raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", put("deny"))))
        .await
        .expect(200);
    let token = t.token("ann", json!({"*": ["subscribe"]})).await;
    let mut ws = h.ws(&token).await;
    let other_token = other.token("bob", json!({"*": ["subscribe"]})).await;
    let mut bob = h.ws(&other_token).await;
    let started = Instant::now();
    ws.send(json!({"type": "subscribe", "id": 1, "channel": "a"})).await;
    // Meanwhile another tenant's client is served at once.
    let quick = bob.call(json!({"type": "subscribe", "channel": "b"})).await;
    assert_eq!(quick["type"], "subscribed");
    assert!(started.elapsed() < Duration::from_millis(700), "{:?}", started.elapsed());
    let reply = ws.recv().await;
    let waited = started.elapsed();
    assert_eq!(reply["code"], "proxy_unavailable", "{reply}");
    assert!(waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4), "{waited:?}");
    // Policy allow: the same timeout lets the subscription through.
    t.key
        .raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", put("allow"))))
        .await
        .expect(200);
    let reply = ws.call(json!({"type": "subscribe", "channel": "c"})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // An error status is a failure too.
    proxy.respond(|_| Answer::Status(502));
    t.key
        .raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", put("deny"))))
        .await
        .expect(200);
    let reply = ws.call(json!({"type": "subscribe", "channel": "d"})).await;
    assert_eq!(reply["code"], "proxy_unavailable", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_proxy_extends_a_proxied_connection() {
    let h = node().await;
    let t = realtime_tenant(&h, "acme").await;
    let proxy = refreshing_proxy(&t, 2).await;
    let mut ws = ws_with_cookie(&h, "acme", None).await;
    let hello = ws.recv().await;
    assert_eq!(hello["user"], "ann", "{hello}");
    let refreshed = ws.recv().await;
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    assert!(refreshed["expires_at"].as_i64().unwrap() > chrono::Utc::now().timestamp() + 3000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pong = ws.call(json!({"type": "subscribe", "channel": "a"})).await;
    assert_eq!(pong["type"], "subscribed", "still connected after the first expiry: {pong}");
    assert_eq!(proxy.received().iter().filter(|r| r.json()["kind"] == "refresh").count(), 1);

    // Without a refresh proxy the connection ends at its expiry with 4002.
    let body = json!({"connect_url": proxy.url}).to_string().into_bytes();
    t.key
        .raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", body)))
        .await
        .expect(200);
    let mut short = ws_with_cookie(&h, "acme", None).await;
    assert_eq!(short.recv().await["type"], "connected");
    assert_eq!(short.closed().await.code, 4002);
}

/// The next SSE event that is not a subscription's confirmation.
async fn next_not_subscribed(sse: &mut crate::support::Sse) -> Value {
    loop {
        let event = sse.next_data().await.json();
        if event["type"] != "subscribed" {
            return event;
        }
    }
}

/// A connect and refresh proxy for tenant `acme`: connect lets `ann` in for `first_life`
/// seconds, refresh extends by an hour.
async fn refreshing_proxy(t: &crate::support::RealtimeTenant, first_life: i64) -> Receiver {
    let proxy = Receiver::start().await;
    proxy.respond(move |r| {
        let now = chrono::Utc::now().timestamp();
        match r.json()["kind"].as_str().unwrap() {
            "connect" => ok(
                json!({"user": "ann", "expires_at": now + first_life, "capabilities": {"*": ["subscribe"]}}),
            ),
            "refresh" => ok(json!({"expires_at": now + 3600})),
            _ => Answer::Status(500),
        }
    });
    let body = json!({"connect_url": proxy.url, "refresh_url": proxy.url}).to_string().into_bytes();
    t.key
        .raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", body)))
        .await
        .expect(200);
    proxy
}

/// A long poll with the client's cookie and no token.
async fn poll_with_cookie(h: &Herald, query: &str, cookie: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("{}/v1/poll{query}", h.base));
    if let Some(c) = cookie {
        request = request.header("cookie", c);
    }
    let answer = request.timeout(Duration::from_secs(30)).send().await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_without_a_token_goes_through_the_connect_proxy_once_per_session() {
    let h = node().await;
    let t = realtime_tenant(&h, "acme").await;
    let proxy = Receiver::start().await;
    proxy.respond(|r| {
        let cookie = r.json()["headers"]["cookie"].as_str().unwrap_or("").to_owned();
        if cookie.contains("session=alice") {
            ok(json!({"user": "alice", "capabilities": {"room:*": ["subscribe"]}}))
        } else {
            deny("no session")
        }
    });
    t.presence_namespace("room").await;
    let body = json!({"connect_url": proxy.url}).to_string().into_bytes();
    t.key
        .raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", body)))
        .await
        .expect(200);

    let (status, first) =
        poll_with_cookie(&h, "?tenant=acme&channels=room:1&timeout=0", Some("session=alice")).await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let connects = || proxy.received().iter().filter(|r| r.json()["kind"] == "connect").count();
    assert_eq!(connects(), 1);
    assert_eq!(proxy.received()[0].json()["transport"], "long_poll");
    let presence = t.key.get("/v1/tenants/acme/channels/room:1/presence").await.expect(200);
    assert_eq!(presence["clients"][0]["user"], "alice", "{presence}");

    // Later polls of the session are proved by its cursor: no new connect call.
    t.publish("room:1", json!({"n": 1})).await;
    let (status, second) =
        poll_with_cookie(&h, &format!("?tenant=acme&channels=room:1&timeout=5&cursor={cursor}"), None).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["messages"][0]["data"], json!({"n": 1}), "{second}");
    assert_eq!(connects(), 1, "one connect per session");
    // Its cursor is also the proof that ends it: gone from presence at once.
    let cursor = second["cursor"].as_str().unwrap().to_owned();
    let close = reqwest::Client::new()
        .post(format!("{}/v1/poll/close?tenant=acme&channels=room:1&cursor={cursor}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    assert_eq!(t.present("room:1").await, Vec::<String>::new());
    // Capabilities come from the proxy.
    let (status, outside) =
        poll_with_cookie(&h, "?tenant=acme&channels=elsewhere&timeout=0", Some("session=alice")).await;
    assert_eq!((status, outside["code"].as_str()), (403, Some("permission_denied")), "{outside}");

    // Refused by the proxy: 403 with its code; a cursor of another tenant's session is no proof.
    let (status, denied) = poll_with_cookie(&h, "?tenant=acme&channels=room:1&timeout=0", None).await;
    assert_eq!((status, denied["code"].as_str()), (403, Some("proxy_denied")), "{denied}");
    let (status, missing) = poll_with_cookie(&h, "?channels=room:1&timeout=0", None).await;
    assert_eq!((status, missing["code"].as_str()), (401, Some("missing_credentials")), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_proxy_extends_sse_and_long_poll_sessions_too() {
    let h = node().await;
    let t = realtime_tenant(&h, "acme").await;
    let proxy = refreshing_proxy(&t, 1).await;
    let refreshes = || proxy.received().iter().filter(|r| r.json()["kind"] == "refresh").count();

    // SSE: past its expiry the stream says `refreshed` and goes on delivering.
    let mut sse = crate::support::Sse::open(&h.base, "?tenant=acme&channels=a", None).await.unwrap();
    assert_eq!(sse.next_data().await.json()["type"], "connected");
    let refreshed = next_not_subscribed(&mut sse).await;
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    assert_eq!(refreshes(), 1);
    t.publish("a", json!({"after": "refresh"})).await;
    let message = sse.next_data().await.json();
    assert_eq!(message["data"], json!({"after": "refresh"}), "{message}");

    // Long polling: a poll past the expiry consults the refresh proxy and is served.
    let (status, first) = poll_with_cookie(&h, "?tenant=acme&channels=b&timeout=0", None).await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(7)).await;
    t.publish("b", json!({"late": true})).await;
    let (status, late) =
        poll_with_cookie(&h, &format!("?tenant=acme&channels=b&timeout=5&cursor={cursor}"), None).await;
    assert_eq!(status, 200, "{late}");
    assert_eq!(late["messages"][0]["data"], json!({"late": true}), "{late}");
    assert_eq!(refreshes(), 2);

    // Without a refresh proxy both end at the expiry (4002 / token_expired).
    let without = json!({"connect_url": proxy.url}).to_string().into_bytes();
    t.key
        .raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", without)))
        .await
        .expect(200);
    let mut sse = crate::support::Sse::open(&h.base, "?tenant=acme&channels=a", None).await.unwrap();
    assert_eq!(sse.next_data().await.json()["type"], "connected");
    let ended = next_not_subscribed(&mut sse).await;
    assert_eq!((ended["type"].as_str(), ended["code"].as_i64()), (Some("disconnect"), Some(4002)), "{ended}");
    let (status, first) = poll_with_cookie(&h, "?tenant=acme&channels=b&timeout=0", None).await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (status, expired) =
        poll_with_cookie(&h, &format!("?tenant=acme&channels=b&timeout=0&cursor={cursor}"), None).await;
    assert_eq!((status, expired["code"].as_str()), (401, Some("token_expired")), "{expired}");
    assert_eq!(refreshes(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_urls_are_checked() {
    let strict = Herald::sqlite().await;
    let t = realtime_tenant(&strict, "acme").await;
    let body = json!({"publish_url": "http://127.0.0.1:9/p"}).to_string().into_bytes();
    let p = t.key.raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", body))).await;
    assert_eq!(p.problem(422, "url_not_allowed")["field"], "publish_url");
    let body = json!({"timeout_ms": 10}).to_string().into_bytes();
    let p = t.key.raw(reqwest::Method::PUT, "/v1/tenants/acme/proxy", Some(("application/json", body))).await;
    assert_eq!(p.problem(422, "invalid_value")["field"], "timeout_ms");
    t.key.get("/v1/tenants/acme/proxy").await.problem(404, "route_not_found");
}

/// While a WebSocket command waits for the tenant's proxy, the connection's other channels
/// keep being delivered: the queue (16 messages here) is written meanwhile, not left to fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_keep_flowing_while_a_command_waits_for_the_proxy() {
    let h = Herald::start(Start {
        admin_token: Some(ADMIN_TOKEN.into()),
        env: vec![
            ("HERALD_OUTBOUND_ALLOWED_NETWORKS".into(), "127.0.0.0/8".into()),
            ("HERALD_CLIENT_QUEUE_MESSAGES".into(), "16".into()),
        ],
        ..Default::default()
    })
    .await;
    let t = realtime_tenant(&h, "acme").await;
    let proxy = Receiver::start().await;
    proxy.respond(|r| if r.json()["channel"] == "slow" { Answer::Hang } else { ok(json!({})) });
    let settings = json!({"subscribe_url": proxy.url, "timeout_ms": 2000, "on_failure": "allow"});
    t.key
        .raw(
            reqwest::Method::PUT,
            "/v1/tenants/acme/proxy",
            Some(("application/json", settings.to_string().into_bytes())),
        )
        .await
        .expect(200);
    let token = t.token("ann", json!({"*": ["subscribe"]})).await;
    let mut ws = h.ws(&token).await;
    ws.subscribe("live").await;
    ws.send(json!({"type": "subscribe", "id": 9, "channel": "slow"})).await;
    for i in 0..40 {
        t.publish("live", json!(i)).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Everything arrives, most of it before the proxy's timeout lets the slow subscription in.
    let mut order = Vec::new();
    while order.iter().filter(|f: &&Value| f["type"] == "pub").count() < 40
        || !order.iter().any(|f| f["id"] == 9)
    {
        let frame =
            ws.next_event().await.unwrap_or_else(|closed| panic!("closed: {closed:?} after {order:?}"));
        order.push(frame);
    }
    let reply = order.iter().position(|f| f["id"] == 9).unwrap();
    assert_eq!(order[reply]["type"], "subscribed", "{:?}", order[reply]);
    let before = order[..reply].iter().filter(|f| f["type"] == "pub").count();
    assert!(before >= 30, "only {before} of 40 messages arrived while the proxy was waited for");
    let data: Vec<Value> = order.iter().filter(|f| f["type"] == "pub").map(|f| f["data"].clone()).collect();
    assert_eq!(data, (0..40).map(|i| json!(i)).collect::<Vec<_>>());
}
