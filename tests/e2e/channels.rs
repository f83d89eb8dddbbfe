use serde_json::json;

use crate::on_both_backends;
use crate::support::Herald;

on_both_backends!(namespace_and_channel_crud, channel_quota_and_namespace_rules);

async fn namespace_and_channel_crud(h: Herald) {
    let admin = h.admin();
    admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.expect(201);

    let ns = admin
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "chat", "options": {"history_size": 50, "presence": true, "join_leave": true}}),
        )
        .await
        .expect(201);
    assert_eq!(ns["options"]["history_size"], 50);
    assert_eq!(ns["effective"]["history_size"], 50);
    assert_eq!(ns["effective"]["private"], true, "channels are private unless configured otherwise");

    let ns = admin
        .patch(
            "/v1/tenants/acme/namespaces/chat",
            json!({"options": {"history_size": null, "client_publish": true}}),
        )
        .await
        .expect(200);
    assert!(ns["options"]["history_size"].is_null());
    assert_eq!(ns["options"]["client_publish"], true);
    assert_eq!(ns["options"]["presence"], true, "untouched options keep their value");
    assert_eq!(admin.get("/v1/tenants/acme/namespaces").await.expect(200)["items"][0]["name"], "chat");

    // A channel in the namespace inherits from it and overrides what it sets itself.
    let ch = admin
        .post(
            "/v1/tenants/acme/channels",
            json!({"name": "chat:lobby", "options": {"history_size": 10, "max_subscribers": 500}}),
        )
        .await
        .expect(201);
    assert_eq!(ch["namespace"], "chat");
    assert_eq!(ch["effective"]["history_size"], 10);
    assert_eq!(ch["effective"]["presence"], true);
    assert_eq!(ch["effective"]["client_publish"], true);
    assert_eq!(ch["effective"]["max_subscribers"], 500);

    admin.post("/v1/tenants/acme/channels", json!({"name": "news"})).await.expect(201);
    admin.post("/v1/tenants/acme/channels", json!({"name": "chat:room_1"})).await.expect(201);
    let all = admin.get("/v1/tenants/acme/channels").await.expect(200);
    let names: Vec<&str> =
        all["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["chat:lobby", "chat:room_1", "news"]);
    let chat = admin.get("/v1/tenants/acme/channels?prefix=chat:").await.expect(200);
    assert_eq!(chat["items"].as_array().unwrap().len(), 2);
    // '_' is a literal in prefixes, not a wildcard.
    let underscore = admin.get("/v1/tenants/acme/channels?prefix=chat:room_").await.expect(200);
    assert_eq!(underscore["items"].as_array().unwrap().len(), 1);

    let ch = admin
        .patch("/v1/tenants/acme/channels/chat:lobby", json!({"options": {"history_size": null}}))
        .await
        .expect(200);
    assert_eq!(ch["effective"]["history_size"], 100, "falls back to the server default once both are unset");
    assert_eq!(
        admin.get("/v1/tenants/acme/channels/chat:lobby").await.expect(200)["options"]["max_subscribers"],
        500
    );

    admin.delete("/v1/tenants/acme/channels/chat:lobby").await.expect(204);
    admin.get("/v1/tenants/acme/channels/chat:lobby").await.problem(404, "channel_not_found");
    admin.delete("/v1/tenants/acme/namespaces/chat").await.expect(204);
    admin.get("/v1/tenants/acme/namespaces/chat").await.problem(404, "namespace_not_found");
}

async fn channel_quota_and_namespace_rules(h: Herald) {
    let admin = h.admin();
    admin
        .post("/v1/tenants", json!({"id": "acme", "name": "Acme", "limits": {"max_channels": 2}}))
        .await
        .expect(201);
    let p = admin
        .post("/v1/tenants/acme/channels", json!({"name": "chat:x"}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "name");
    admin.post("/v1/tenants/acme/channels", json!({"name": "a"})).await.expect(201);
    admin.post("/v1/tenants/acme/channels", json!({"name": "b"})).await.expect(201);
    let p =
        admin.post("/v1/tenants/acme/channels", json!({"name": "c"})).await.problem(403, "quota_exceeded");
    assert_eq!(p["limit"], 2);
    let p = admin
        .post("/v1/tenants/acme/channels", json!({"name": "d", "options": {"allow_implicit": false}}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "options.allow_implicit");
    let p = admin
        .post("/v1/tenants/acme/namespaces", json!({"name": "big", "options": {"history_size": 1000000}}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "options.history_size");
    let p = admin
        .post("/v1/tenants/acme/namespaces", json!({"name": "big", "options": {"history_size": "lots"}}))
        .await
        .problem(400, "invalid_type");
    assert_eq!(p["field"], "options.history_size");
}

on_both_backends!(concurrent_creates_never_pass_the_channel_quota);

async fn concurrent_creates_never_pass_the_channel_quota(h: Herald) {
    let admin = h.admin();
    admin
        .post("/v1/tenants", json!({"id": "race", "name": "Race", "limits": {"max_channels": 5}}))
        .await
        .expect(201);
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..24 {
        let admin = admin.clone();
        creates.spawn(async move {
            admin.post("/v1/tenants/race/channels", json!({"name": format!("c{i}")})).await
        });
    }
    let mut statuses = Vec::new();
    while let Some(reply) = creates.join_next().await {
        let reply = reply.unwrap();
        if reply.status != 201 {
            assert_eq!(
                (reply.status.as_u16(), reply.body["code"].as_str()),
                (403, Some("quota_exceeded")),
                "{}",
                reply.body
            );
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    let listed = admin.get("/v1/tenants/race/channels?limit=100").await.expect(200);
    assert_eq!(listed["items"].as_array().unwrap().len(), 5);
}
