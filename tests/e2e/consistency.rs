//! One condition, one answer: the same refusal carries the same code (and status, `limit` and
//! `field`) on REST, WebSocket, SSE and long polling, because every surface takes it from the
//! core's one table of error codes. And one validator: the same bad publish values are refused
//! alike by REST and by the WebSocket `publish` command.

use serde_json::{Value, json};

use crate::support::{Herald, NatsServer, Sse, Ws, clustered_node, poll, realtime_tenant};

/// A WebSocket command's error frame, checked against the REST problem for the same input.
fn same_answer(frame: &Value, problem: &Value) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], problem["code"], "frame {frame} vs problem {problem}");
    assert_eq!(frame["limit"], problem["limit"], "frame {frame} vs problem {problem}");
    assert_eq!(frame["field"], problem["field"], "frame {frame} vs problem {problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refusals_are_the_same_on_rest_and_websocket() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "chat", "options": {"client_publish": true, "max_message_bytes": 200}}),
        )
        .await
        .expect(201);
    let token = t.token("u1", json!({"chat:*": ["subscribe", "publish"]})).await;
    let mut ws = h.ws(&token).await;
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"data": 1, "event": ""}), 422, "invalid_value", "event"),
        (json!({"data": 1, "event": "a\u{7}b"}), 422, "invalid_value", "event"),
        (json!({"data": 1, "event": "e".repeat(65)}), 422, "invalid_value", "event"),
        (json!({"data": 1, "idempotency_key": ""}), 422, "invalid_value", "idempotency_key"),
        (json!({"data": 1, "idempotency_key": "k\nk"}), 422, "invalid_value", "idempotency_key"),
        (json!({"data": 1, "idempotency_key": "k".repeat(129)}), 422, "invalid_value", "idempotency_key"),
        (json!({"data": serde_json::from_str::<Value>(&deep).unwrap()}), 422, "invalid_value", "data"),
        (json!({"data": "x".repeat(300)}), 413, "message_too_large", "data"),
    ];
    for (body, status, code, field) in cases {
        let problem = t
            .key
            .post("/v1/tenants/acme/channels/chat:room/messages", body.clone())
            .await
            .problem(status, code);
        assert_eq!(problem["field"], field, "{problem}");
        let mut frame = body.clone();
        frame["type"] = json!("publish");
        frame["channel"] = json!("chat:room");
        same_answer(&ws.call(frame).await, &problem);
    }
    // `null` is data on both.
    t.key.post("/v1/tenants/acme/channels/chat:nulls/messages", json!({"data": null})).await.expect(200);
    let frame = ws.call(json!({"type": "publish", "channel": "chat:nulls", "data": null})).await;
    assert_eq!(frame["type"], "published", "{frame}");
    // Nothing refused was published.
    let history = t.key.get("/v1/tenants/acme/channels/chat:room/messages").await.expect(200);
    assert_eq!(history["publications"], json!([]), "{history}");
    // Message size: the limit is named too.
    let problem = t
        .key
        .post("/v1/tenants/acme/channels/chat:room/messages", json!({"data": "x".repeat(300)}))
        .await
        .problem(413, "message_too_large");
    assert_eq!(problem["limit"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_capabilities_answer_alike_everywhere() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let admin = h.admin();
    admin.patch("/v1/tenants/acme", json!({"limits": {"max_publishes_per_second": 1}})).await.expect(200);
    t.key
        .post("/v1/tenants/acme/namespaces", json!({"name": "chat", "options": {"client_publish": true}}))
        .await
        .expect(201);
    let token = t.token("u1", json!({"chat:*": ["subscribe", "publish"]})).await;
    let mut ws = h.ws(&token).await;
    // Use the tenant's one publish of this second, then one more on each surface.
    let mut problem = None;
    for _ in 0..3 {
        let reply = t.key.post("/v1/tenants/acme/channels/chat:a/messages", json!({"data": 1})).await;
        if reply.status == 429 {
            problem = Some(reply.problem(429, "rate_limited"));
        }
    }
    let problem = problem.expect("the third REST publish within a second is refused");
    assert_eq!(problem["limit"], 1);
    let frame = ws.call(json!({"type": "publish", "channel": "chat:a", "data": 1})).await;
    same_answer(&frame, &problem);
    // User-targeted messages count toward the same limit.
    t.key.post("/v1/tenants/acme/users/u1/messages", json!({"data": 1})).await.problem(429, "rate_limited");

    // No capability for a private channel: permission_denied on every transport.
    let frame = ws.call(json!({"type": "subscribe", "channel": "secret"})).await;
    assert_eq!(frame["code"], "permission_denied", "{frame}");
    let sse =
        Sse::open(&h.base, &format!("?channels=secret&token={token}"), None).await.err().expect("refused");
    assert_eq!(
        (sse.status.as_u16(), sse.body["code"].clone()),
        (403, json!("permission_denied")),
        "{:?}",
        sse.body
    );
    poll(&h.base, &format!("?channels=secret&token={token}&timeout=1"))
        .await
        .problem(403, "permission_denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_backend_is_503_cluster_unavailable_on_every_surface() {
    let Some(mut nats) = NatsServer::start().await else { return };
    let h = clustered_node(&nats).await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("u1", json!({"*": ["subscribe", "publish"]})).await;
    t.key
        .post("/v1/tenants/acme/channels", json!({"name": "up", "options": {"client_publish": true}}))
        .await
        .expect(201);
    let mut ws: Ws = h.ws(&token).await;
    nats.kill().await;
    // Wait until the node noticed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while h.anonymous().get("/readyz").await.status != 503 {
        assert!(std::time::Instant::now() < deadline, "the node did not notice NATS went away");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let problem = t
        .key
        .post("/v1/tenants/acme/channels/up/messages", json!({"data": 1}))
        .await
        .problem(503, "cluster_unavailable");
    let frame = ws.call(json!({"type": "publish", "channel": "up", "data": 1})).await;
    same_answer(&frame, &problem);
    let frame = ws.call(json!({"type": "subscribe", "channel": "fresh"})).await;
    assert_eq!(frame["code"], "cluster_unavailable", "{frame}");
    let sse =
        Sse::open(&h.base, &format!("?channels=fresh2&token={token}"), None).await.err().expect("refused");
    assert_eq!(
        (sse.status.as_u16(), sse.body["code"].clone()),
        (503, json!("cluster_unavailable")),
        "{:?}",
        sse.body
    );
    poll(&h.base, &format!("?channels=fresh3&token={token}&timeout=1"))
        .await
        .problem(503, "cluster_unavailable");
}
