//! The publish and history REST API.

use serde_json::json;

use crate::support::{Herald, realtime_tenant};

async fn publish_history_and_batch(h: Herald) {
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post("/v1/tenants/acme/namespaces", json!({"name": "closed", "options": {"allow_implicit": false}}))
        .await
        .expect(201);
    let base = "/v1/tenants/acme/channels";

    let first = t
        .key
        .post(&format!("{base}/news/messages"), json!({"data": {"headline": "one"}, "event": "story"}))
        .await
        .expect(200);
    assert_eq!(first["position"], 1);
    assert_eq!(first["channel"], "news");
    assert_eq!(first["duplicate"], false);
    for i in 2..=5 {
        t.publish("news", json!(i)).await;
    }
    let history = t.key.get(&format!("{base}/news/messages")).await.expect(200);
    assert_eq!(history["position"], 5);
    assert_eq!(history["publications"].as_array().unwrap().len(), 5);
    assert_eq!(history["publications"][0]["data"], json!({"headline": "one"}));
    assert_eq!(history["publications"][0]["event"], "story");
    let epoch = history["epoch"].as_str().unwrap();
    let since = t.key.get(&format!("{base}/news/messages?since=3&epoch={epoch}&limit=1")).await.expect(200);
    assert_eq!(since["publications"].as_array().unwrap().len(), 1);
    assert_eq!(since["publications"][0]["position"], 4);
    assert_eq!(since["complete"], true);
    let stale = t.key.get(&format!("{base}/news/messages?since=3&epoch=old")).await.expect(200);
    assert_eq!(stale["complete"], false);
    t.key.get(&format!("{base}/news/messages?since=3")).await.problem(400, "invalid_parameter");

    // Channels that cannot exist.
    t.key
        .post(&format!("{base}/closed:x/messages"), json!({"data": 1}))
        .await
        .problem(404, "channel_not_found");
    t.key
        .post(&format!("{base}/nons:x/messages"), json!({"data": 1}))
        .await
        .problem(404, "channel_not_found");
    // …unless created explicitly.
    t.key.post(base, json!({"name": "closed:x"})).await.expect(201);
    t.key.post(&format!("{base}/closed:x/messages"), json!({"data": 1})).await.expect(200);

    // Bad input.
    let p = t
        .key
        .post(&format!("{base}/news/messages"), json!({"event": "x"}))
        .await
        .problem(400, "missing_field");
    assert_eq!(p["field"], "data");
    let p = t
        .key
        .post(&format!("{base}/news/messages"), json!({"data": 1, "event": ""}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "event");
    let p = t
        .key
        .post(&format!("{base}/news/messages"), json!({"data": "x".repeat(70_000)}))
        .await
        .problem(413, "message_too_large");
    assert_eq!(p["limit"], 65536);

    // Batch: per-message results, the good ones published in order.
    let batch = t
        .key
        .post(
            "/v1/tenants/acme/messages",
            json!({"messages": [
                {"channel": "news", "data": "a"},
                {"channel": "bad channel", "data": "b"},
                {"channel": "other", "data": "c"},
                {"channel": "news", "data": "d"},
            ]}),
        )
        .await
        .expect(200);
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results[0]["published"]["position"], 6);
    assert_eq!(results[1]["error"]["code"], "invalid_value");
    assert_eq!(results[1]["error"]["field"], "messages[1].channel");
    assert_eq!(results[2]["published"]["position"], 1);
    assert_eq!(results[3]["published"]["position"], 7);
    t.key.post("/v1/tenants/acme/messages", json!({"messages": []})).await.problem(422, "invalid_value");

    // Scopes: publish and history:read.
    let reader = h
        .admin()
        .post("/v1/tenants/acme/api-keys", json!({"name": "r", "scopes": ["history:read"]}))
        .await
        .expect(201);
    let reader = h.client(reader["secret"].as_str().unwrap());
    reader.get(&format!("{base}/news/messages")).await.expect(200);
    reader.post(&format!("{base}/news/messages"), json!({"data": 1})).await.problem(403, "missing_scope");
}

crate::on_both_fanouts!(publish_history_and_batch,);
