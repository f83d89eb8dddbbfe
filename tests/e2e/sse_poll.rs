//! SSE and long polling on the same delivery core as WebSocket.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Herald, Sse, close_poll, poll, realtime_tenant};

fn caps() -> Value {
    json!({"*": ["subscribe", "publish", "history", "presence"]})
}

/// Reads data events until `n` publications have arrived; returns them with their event ids.
async fn pubs(sse: &mut Sse, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = sse.next_data().await;
        let v = e.json();
        if v["type"] == "pub" {
            out.push((e.id.clone().expect("publication events carry an id"), v));
        }
    }
    out
}

async fn sse_stream_resumes_every_channel_from_last_event_id(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", caps()).await;
    let q = format!("?channels=a,b&token={token}");
    let mut sse = Sse::open(&h.base, &q, None).await.unwrap();
    let headers = sse.response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");

    let hello = sse.next().await.unwrap();
    assert_eq!(hello.retry, Some(2000));
    assert!(hello.id.is_some(), "the first event already carries a cursor");
    assert_eq!(hello.json()["type"], "connected");
    for channel in ["a", "b"] {
        let sub = sse.next_data().await.json();
        assert_eq!((sub["type"].as_str(), sub["channel"].as_str()), (Some("subscribed"), Some(channel)));
    }
    for i in 1..=3 {
        t.publish("a", json!({"a": i})).await;
        t.publish("b", json!({"b": i})).await;
    }
    let got = pubs(&mut sse, 6).await;
    let last_id = got.last().unwrap().0.clone();
    drop(sse);

    for i in 4..=6 {
        t.publish("a", json!({"a": i})).await;
        t.publish("b", json!({"b": i})).await;
    }
    let mut resumed = Sse::open(&h.base, &q, Some(&last_id)).await.unwrap();
    assert_eq!(resumed.next().await.unwrap().json()["type"], "connected");
    // Per channel: its `subscribed` event (recovered), then what it missed.
    let mut missed = Vec::new();
    let mut subscribed = 0;
    while missed.len() < 6 {
        let e = resumed.next_data().await;
        let v = e.json();
        match v["type"].as_str() {
            Some("subscribed") => {
                assert_eq!(v["recovered"], true, "{v}");
                subscribed += 1;
            }
            Some("pub") => missed.push((e.id.unwrap(), v)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(subscribed, 2);
    let a: Vec<Value> =
        missed.iter().filter(|(_, p)| p["channel"] == "a").map(|(_, p)| p["data"]["a"].clone()).collect();
    let b: Vec<Value> =
        missed.iter().filter(|(_, p)| p["channel"] == "b").map(|(_, p)| p["data"]["b"].clone()).collect();
    assert_eq!(a, vec![json!(4), json!(5), json!(6)]);
    assert_eq!(b, vec![json!(4), json!(5), json!(6)]);
    // Live messages follow, nothing twice.
    t.publish("b", json!({"b": 7})).await;
    assert_eq!(pubs(&mut resumed, 1).await[0].1["data"]["b"], 7);

    // The cursor can also come as a query parameter (for clients that cannot set headers).
    let via_query = format!("{q}&last_event_id={}", missed[2].0);
    let mut s = Sse::open(&h.base, &via_query, None).await.unwrap();
    let replayed: Vec<Value> = pubs(&mut s, 4).await.into_iter().map(|(_, v)| v).collect();
    assert_eq!(replayed.len(), 4, "the three after the cursor, then the live one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_refusals_and_heartbeats() {
    let h = Herald::with_env(&[("HERALD_SSE_HEARTBEAT_SECONDS", "1")]).await;
    let t = realtime_tenant(&h, "acme").await;
    let other = realtime_tenant(&h, "other").await;
    let token = t.token("u", json!({"mine": ["subscribe"]})).await;

    let err = Sse::open(&h.base, "?channels=mine", None).await.err().unwrap();
    assert_eq!((err.status.as_u16(), err.body["code"].as_str()), (401, Some("missing_credentials")));
    let err = Sse::open(&h.base, &format!("?channels=&token={token}"), None).await.err().unwrap();
    assert_eq!(err.body["code"], "invalid_parameter");
    let err = Sse::open(&h.base, "?channels=mine&token=nope", None).await.err().unwrap();
    assert_eq!((err.status.as_u16(), err.body["code"].as_str()), (401, Some("token_malformed")));
    let err = Sse::open(&h.base, &format!("?channels=secret&token={token}"), None).await.err().unwrap();
    assert_eq!((err.status.as_u16(), err.body["code"].as_str()), (403, Some("permission_denied")));
    let err =
        Sse::open(&h.base, &format!("?channels=mine&token={token}"), Some("forged")).await.err().unwrap();
    assert_eq!((err.status.as_u16(), err.body["code"].as_str()), (400, Some("invalid_cursor")));
    // A cursor of another tenant's stream (same channel names) is refused, not trusted.
    let other_token = other.token("u", json!({"mine": ["subscribe"]})).await;
    let mut foreign = Sse::open(&h.base, &format!("?channels=mine&token={other_token}"), None).await.unwrap();
    let foreign_id = foreign.next().await.unwrap().id.unwrap();
    let err =
        Sse::open(&h.base, &format!("?channels=mine&token={token}"), Some(&foreign_id)).await.err().unwrap();
    assert_eq!(err.body["code"], "invalid_cursor");

    // Authorization header instead of the token parameter; heartbeats as comments.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/sse?channels=mine", h.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut sse = Sse::from_response(resp);
    let mut comments = 0;
    let started = std::time::Instant::now();
    while comments < 2 {
        if sse.next().await.unwrap().comment {
            comments += 1;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_answers_cors_for_allowed_origins() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    h.admin()
        .patch("/v1/tenants/acme", json!({"allowed_origins": ["https://app.acme.test"]}))
        .await
        .expect(200);
    let token = t.token("u", caps()).await;
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("{}/v1/sse?channels=x&token={token}", h.base))
        .header("Origin", "https://app.acme.test")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.acme.test");
    let denied = client
        .get(format!("{}/v1/sse?channels=x&token={token}", h.base))
        .header("Origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.json::<Value>().await.unwrap()["code"], "origin_not_allowed");
    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("{}/v1/poll", h.base))
        .header("Origin", "https://app.acme.test")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(preflight.headers()["access-control-allow-headers"].to_str().unwrap().contains("Authorization"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_at_once_holds_and_times_out() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", caps()).await;
    let base = format!("?channels=news,sports&token={token}");

    // First poll: starts at "now" and times out empty, with a cursor.
    let started = std::time::Instant::now();
    let first = poll(&h.base, &format!("{base}&timeout=1")).await.expect(200);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(first["messages"], json!([]));
    let cursor = first["cursor"].as_str().unwrap().to_owned();

    // Published while no poll is open: the next poll returns at once with it.
    t.publish("news", json!(1)).await;
    let started = std::time::Instant::now();
    let second = poll(&h.base, &format!("{base}&cursor={cursor}&timeout=20")).await.expect(200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(second["messages"][0]["data"], 1);
    assert_eq!(second["messages"][0]["type"], "pub");
    let cursor = second["cursor"].as_str().unwrap().to_owned();

    // Nothing new: holds until a message arrives.
    let waiting = tokio::spawn({
        let (base_url, q) = (h.base.clone(), format!("{base}&cursor={cursor}&timeout=20"));
        async move { poll(&base_url, &q).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the poll is held");
    let started = std::time::Instant::now();
    t.publish("sports", json!(2)).await;
    let third = waiting.await.unwrap().expect(200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(third["messages"][0]["channel"], "sports");

    // The timeout is capped by configuration; a bad cursor is a 400, never a 500.
    poll(&h.base, &format!("{base}&timeout=3600")).await.problem(400, "invalid_parameter");
    poll(&h.base, &format!("{base}&cursor=garbage")).await.problem(400, "invalid_cursor");
    let other = realtime_tenant(&h, "other").await;
    let other_token = other.token("u", caps()).await;
    let foreign =
        poll(&h.base, &format!("?channels=news,sports&token={other_token}&timeout=0")).await.expect(200);
    poll(&h.base, &format!("{base}&cursor={}", foreign["cursor"].as_str().unwrap()))
        .await
        .problem(400, "invalid_cursor");
    poll(
        &h.base,
        &format!("?channels=news,sports&token={token}&cursor={cursor}&timeout=0")
            .replace("news,sports", "sports,news"),
    )
    .await
    .problem(400, "invalid_cursor");
}

async fn long_polling_loses_nothing_while_a_publisher_sends_continuously(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", caps()).await;
    let base = format!("?channels=feed&token={token}");
    let first = poll(&h.base, &format!("{base}&timeout=0")).await.expect(200);
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    let publisher = {
        let key = t.key.clone();
        tokio::spawn(async move {
            for i in 1..=300 {
                key.post("/v1/tenants/acme/channels/feed/messages", json!({"data": i})).await.expect(200);
                if i % 7 == 0 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        })
    };
    let mut seen = Vec::new();
    let mut polls = 0;
    while seen.len() < 300 {
        let r = poll(&h.base, &format!("{base}&cursor={cursor}&timeout=5")).await.expect(200);
        polls += 1;
        for m in r["messages"].as_array().unwrap() {
            seen.push(m["position"].as_u64().unwrap());
        }
        cursor = r["cursor"].as_str().unwrap().to_owned();
        assert!(polls < 1000);
    }
    publisher.await.unwrap();
    assert_eq!(seen, (1..=300).collect::<Vec<_>>(), "every message once, in order");

    // A retried poll (its answer was lost) is served again from history; nothing is skipped.
    let lost_cursor = cursor.clone();
    t.publish("feed", json!(301)).await;
    let answer = poll(&h.base, &format!("{base}&cursor={lost_cursor}&timeout=5")).await.expect(200);
    assert_eq!(answer["messages"][0]["position"], 301);
    let retried = poll(&h.base, &format!("{base}&cursor={lost_cursor}&timeout=5")).await.expect(200);
    assert_eq!(retried["messages"][0]["position"], 301, "served again to the client that lost it");
    assert_eq!(retried["cursor"], answer["cursor"]);
}

async fn concurrent_polls_neither_lose_nor_duplicate(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", caps()).await;
    let base = format!("?channels=c&token={token}");
    let cursor =
        poll(&h.base, &format!("{base}&timeout=0")).await.expect(200)["cursor"].as_str().unwrap().to_owned();
    let q = format!("{base}&cursor={cursor}&timeout=10");
    let a = tokio::spawn({
        let (b, q) = (h.base.clone(), q.clone());
        async move { poll(&b, &q).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = tokio::spawn({
        let (b, q) = (h.base.clone(), q.clone());
        async move { poll(&b, &q).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=5 {
        t.publish("c", json!(i)).await;
    }
    let (a, b) = (a.await.unwrap().expect(200), b.await.unwrap().expect(200));
    let mut all: Vec<u64> = a["messages"]
        .as_array()
        .unwrap()
        .iter()
        .chain(b["messages"].as_array().unwrap())
        .map(|m| m["position"].as_u64().unwrap())
        .collect();
    assert!(a["messages"].as_array().unwrap().is_empty(), "the superseded poll returns empty");
    all.sort();
    assert_eq!(all.first(), Some(&1));
    all.dedup();
    let total = a["messages"].as_array().unwrap().len() + b["messages"].as_array().unwrap().len();
    assert_eq!(total, all.len(), "no message in both answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_sessions_count_as_connections_until_idle() {
    let h = Herald::with_env(&[("HERALD_LONG_POLL_SESSION_IDLE_SECONDS", "1")]).await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", caps()).await;
    poll(&h.base, &format!("?channels=x&token={token}&timeout=0")).await.expect(200);
    let gauge = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("herald_connections{transport=\"long_poll\"}"))
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    let metrics = reqwest::get(format!("{}/metrics", h.base)).await.unwrap().text().await.unwrap();
    assert_eq!(gauge(&metrics), 1, "the session lives between polls");
    // A presence query over WebSocket sees the long-poll client.
    t.presence_namespace("p").await;
    poll(&h.base, &format!("?channels=p:room&token={token}&timeout=0")).await.expect(200);
    let mut ws = h.ws(&token).await;
    let presence = ws.call(json!({"type": "presence", "channel": "p:room"})).await;
    assert_eq!(presence["clients"].as_array().unwrap().len(), 1, "{presence}");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let metrics = reqwest::get(format!("{}/metrics", h.base)).await.unwrap().text().await.unwrap();
    assert_eq!(gauge(&metrics), 0, "idle sessions expire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_long_poll_session_ends_it_at_once() {
    // The default idle timeout (60 s): only the close can end the session within the test.
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.presence_namespace("p").await;
    let token = t.token("u", caps()).await;
    let q = format!("?channels=p:room&token={token}");
    let first = poll(&h.base, &format!("{q}&timeout=0")).await.expect(200);
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let mut watcher = h.ws(&t.token("w", caps()).await).await;
    let present = |p: &Value| p["clients"].as_array().unwrap().len();
    let presence = watcher.call(json!({"type": "presence", "channel": "p:room"})).await;
    assert_eq!(present(&presence), 1, "{presence}");

    // Errors first; none of them ends the session.
    close_poll(&h.base, "?channels=p:room").await.problem(401, "missing_credentials");
    close_poll(&h.base, &q).await.problem(400, "invalid_parameter");
    close_poll(&h.base, &format!("{q}&cursor=garbage")).await.problem(400, "invalid_cursor");
    let other_channels = format!("?channels=p:other&token={token}&cursor={cursor}");
    close_poll(&h.base, &other_channels).await.problem(400, "invalid_cursor");
    // Another user of the tenant holding the cursor: answered alike, the session stays.
    let stranger = t.token("v", caps()).await;
    close_poll(&h.base, &format!("?channels=p:room&token={stranger}&cursor={cursor}")).await.expect(204);
    let presence = watcher.call(json!({"type": "presence", "channel": "p:room"})).await;
    assert_eq!(present(&presence), 1, "another user cannot end it: {presence}");

    // A poll of the session is waiting; the close makes it return at once, empty.
    let waiting = tokio::spawn({
        let (base, query) = (h.base.clone(), format!("{q}&cursor={cursor}&timeout=20"));
        async move { poll(&base, &query).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the poll is held");
    let started = std::time::Instant::now();
    close_poll(&h.base, &format!("{q}&cursor={cursor}")).await.expect(204);
    assert!(started.elapsed() < Duration::from_secs(2), "the close does not wait for the poll's timeout");
    let answer = tokio::time::timeout(Duration::from_secs(2), waiting).await.expect("returned").unwrap();
    assert_eq!(answer.expect(200)["messages"], json!([]));
    let presence = watcher.call(json!({"type": "presence", "channel": "p:room"})).await;
    assert_eq!(present(&presence), 0, "gone from presence at once: {presence}");
    let metrics = reqwest::get(format!("{}/metrics", h.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "herald_connections{transport=\"long_poll\"} 0"), "{metrics}");
    // Ending it again is not an error.
    close_poll(&h.base, &format!("{q}&cursor={cursor}")).await.expect(204);
}

async fn websocket_sse_and_long_poll_receive_identical_sequences(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", caps()).await;
    let mut ws = h.ws(&token).await;
    ws.subscribe("same").await;
    let mut sse = Sse::open(&h.base, &format!("?channels=same&token={token}"), None).await.unwrap();
    sse.next().await;
    sse.next_data().await;
    let base = format!("?channels=same&token={token}");
    let mut cursor =
        poll(&h.base, &format!("{base}&timeout=0")).await.expect(200)["cursor"].as_str().unwrap().to_owned();
    for i in 0..50 {
        t.key
            .post(
                "/v1/tenants/acme/channels/same/messages",
                json!({"data": {"i": i}, "event": if i % 2 == 0 { "even" } else { "odd" }}),
            )
            .await
            .expect(200);
    }
    let mut from_ws = Vec::new();
    while from_ws.len() < 50 {
        from_ws.push(ws.recv().await);
    }
    let from_sse: Vec<Value> = pubs(&mut sse, 50).await.into_iter().map(|(_, v)| v).collect();
    let mut from_poll = Vec::new();
    while from_poll.len() < 50 {
        let r = poll(&h.base, &format!("{base}&cursor={cursor}&timeout=5")).await.expect(200);
        from_poll.extend(r["messages"].as_array().unwrap().iter().cloned());
        cursor = r["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(from_ws, from_sse, "identical frames over WebSocket and SSE");
    assert_eq!(from_ws, from_poll, "identical frames over WebSocket and long polling");
}

crate::on_both_fanouts!(
    sse_stream_resumes_every_channel_from_last_event_id,
    long_polling_loses_nothing_while_a_publisher_sends_continuously,
    concurrent_polls_neither_lose_nor_duplicate,
    websocket_sse_and_long_poll_receive_identical_sequences,
);

/// A client that knows its positions (it changed transport or channel list) resumes SSE and
/// long polling with `since`; a long poll's new session hands out its `subscribed` frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_long_polling_resume_from_explicit_positions() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u", caps()).await;
    let first = t.publish("a", json!({"n": 1})).await;
    t.publish("a", json!({"n": 2})).await;
    t.publish("a", json!({"n": 3})).await;
    let epoch = first["epoch"].as_str().unwrap();
    let since = format!("{}:{epoch},", first["position"]);

    // SSE: `a` resumes after its first message; `b` starts now.
    let q = format!("?channels=a,b&token={token}&since={since}");
    let mut sse = Sse::open(&h.base, &q, None).await.unwrap();
    assert_eq!(sse.next_data().await.json()["type"], "connected");
    let a = sse.next_data().await.json();
    assert_eq!((a["channel"].as_str(), a["recovered"].as_bool()), (Some("a"), Some(true)), "{a}");
    let replayed = pubs(&mut sse, 2).await;
    let ns: Vec<u64> = replayed.iter().map(|(_, v)| v["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, vec![2, 3]);
    // A Last-Event-ID cursor wins over `since`.
    let cursor = replayed[1].0.clone();
    let mut again = Sse::open(&h.base, &q, Some(&cursor)).await.unwrap();
    assert_eq!(again.next_data().await.json()["type"], "connected");
    let resumed = again.next_data().await.json();
    assert_eq!(
        (resumed["channel"].as_str(), resumed["position"].as_u64()),
        (Some("a"), Some(3)),
        "{resumed}"
    );
    t.publish("a", json!({"n": 4})).await;
    assert_eq!(pubs(&mut again, 1).await[0].1["data"]["n"], 4, "nothing replayed twice");

    // Long polling: the first answer of the session has the confirmations and the replay.
    let answer =
        poll(&h.base, &format!("?channels=a,b&timeout=0&token={token}&since={since}")).await.expect(200);
    let subscribed = answer["subscribed"].as_array().expect("the new session's confirmations");
    assert_eq!(subscribed.len(), 2, "{answer}");
    assert_eq!(
        (subscribed[0]["channel"].as_str(), subscribed[0]["recovered"].as_bool()),
        (Some("a"), Some(true))
    );
    assert!(subscribed[1].get("recovered").is_none(), "b started now: {answer}");
    let ns: Vec<u64> =
        answer["messages"].as_array().unwrap().iter().map(|m| m["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, vec![2, 3, 4]);
    let cursor = answer["cursor"].as_str().unwrap();
    let next =
        poll(&h.base, &format!("?channels=a,b&timeout=0&token={token}&cursor={cursor}")).await.expect(200);
    assert!(next.get("subscribed").is_none(), "confirmations come once: {next}");
    // A position from another epoch cannot be recovered, and says so.
    let lost =
        poll(&h.base, &format!("?channels=a&timeout=0&token={token}&since=1:zzzzzzzz")).await.expect(200);
    assert_eq!(lost["subscribed"][0]["recovered"], false, "{lost}");

    // Bad `since`, and a refused channel named in the problem.
    for bad in ["1:x", "x:abc,", "1:a.b,", "-1:abc,"] {
        let refused = poll(&h.base, &format!("?channels=a,b&timeout=0&token={token}&since={bad}")).await;
        let body = refused.expect(400);
        assert_eq!(
            (body["code"].as_str(), body["field"].as_str()),
            (Some("invalid_parameter"), Some("since")),
            "{bad}: {body}"
        );
    }
    let narrow = t.token("n", json!({"a": ["subscribe"]})).await;
    t.key
        .post("/v1/tenants/acme/channels", json!({"name": "secret", "options": {"private": true}}))
        .await
        .expect(201);
    let refused =
        Sse::open(&h.base, &format!("?channels=a,secret&token={narrow}"), None).await.err().unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(
        (refused.body["code"].as_str(), refused.body["channel"].as_str()),
        (Some("permission_denied"), Some("secret")),
        "{}",
        refused.body
    );
    let bad_name = poll(&h.base, &format!("?channels=a,b%20c&timeout=0&token={token}")).await.expect(422);
    assert_eq!(
        (bad_name["field"].as_str(), bad_name["channel"].as_str()),
        (Some("channels"), Some("b c")),
        "{bad_name}"
    );
}
