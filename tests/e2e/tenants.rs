use serde_json::json;

use crate::on_both_backends;
use crate::support::Herald;

on_both_backends!(tenant_crud, tenant_pagination);

async fn tenant_crud(h: Herald) {
    let admin = h.admin();
    let created = admin
        .post(
            "/v1/tenants",
            json!({"id": "acme", "name": "Acme", "allowed_origins": ["https://App.acme.test"], "limits": {"max_connections": 100}}),
        )
        .await
        .expect(201);
    assert_eq!(created["id"], "acme");
    assert_eq!(created["status"], "active");
    assert_eq!(created["allowed_origins"], json!(["https://app.acme.test"]));
    assert_eq!(created["limits"]["max_connections"], 100);

    let got = admin.get("/v1/tenants/acme").await.expect(200);
    assert_eq!(got["name"], "Acme");
    assert_eq!(got["created_at"], created["created_at"]);

    // Merge patch: rename, suspend, change one limit and clear another.
    let patched = admin
        .patch(
            "/v1/tenants/acme",
            json!({"name": "Acme Inc", "status": "suspended", "limits": {"max_channels": 5, "max_connections": null}}),
        )
        .await
        .expect(200);
    assert_eq!(patched["name"], "Acme Inc");
    assert_eq!(patched["status"], "suspended");
    assert_eq!(patched["limits"]["max_channels"], 5);
    assert_eq!(patched["limits"]["max_connections"], serde_json::Value::Null);
    let resumed = admin.patch("/v1/tenants/acme", json!({"status": "active"})).await.expect(200);
    assert_eq!(resumed["status"], "active");
    assert_eq!(resumed["name"], "Acme Inc");

    let list = admin.get("/v1/tenants").await.expect(200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_null());

    admin.delete("/v1/tenants/acme").await.expect(204);
    admin.get("/v1/tenants/acme").await.problem(404, "tenant_not_found");
    admin.delete("/v1/tenants/acme").await.problem(404, "tenant_not_found");
    admin.patch("/v1/tenants/acme", json!({"name": "x"})).await.problem(404, "tenant_not_found");

    // The audit log recorded each action, newest first.
    let audit = admin.get("/v1/audit-log?tenant=acme").await.expect(200);
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["tenant.delete", "tenant.resume", "tenant.suspend", "tenant.create"]);
    assert_eq!(audit["items"][0]["actor"], "admin");
}

async fn tenant_pagination(h: Herald) {
    let admin = h.admin();
    for i in 0..7 {
        admin.post("/v1/tenants", json!({"id": format!("t{i}"), "name": format!("T{i}")})).await.expect(201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants?limit=3&cursor={c}"),
            None => "/v1/tenants?limit=3".to_owned(),
        };
        let page = admin.get(&path).await.expect(200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("t{i}")).collect::<Vec<_>>());
    admin.get("/v1/tenants?limit=0").await.problem(400, "invalid_parameter");
    admin.get("/v1/tenants?limit=201").await.problem(400, "invalid_parameter");
    let p = admin.get("/v1/tenants?cursor=!!!").await.problem(400, "invalid_cursor");
    assert_eq!(p["field"], "cursor");
}
