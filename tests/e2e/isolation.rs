//! Tenant isolation and scope enforcement, as matrices over every tenant-scoped operation.

use reqwest::Method;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::{Client, Herald, Reply, tenant_with_key};

const ALL_SCOPES: &[&str] = &[
    "publish",
    "channels:read",
    "channels:write",
    "keys:write",
    "tokens:issue",
    "presence:read",
    "history:read",
    "stats:read",
    "webhooks:write",
];

/// (method, path under /v1/tenants/{t}, body, scope needed). Paths name resources that exist in
/// both tenants, so a refusal can only come from the access check.
fn operations() -> Vec<(Method, &'static str, Option<Value>, Option<&'static str>)> {
    use Method as M;
    vec![
        (M::GET, "", None, None),
        (M::GET, "/namespaces", None, Some("channels:read")),
        (M::POST, "/namespaces", Some(json!({"name": "fresh"})), Some("channels:write")),
        (M::GET, "/namespaces/chat", None, Some("channels:read")),
        (M::PATCH, "/namespaces/chat", Some(json!({})), Some("channels:write")),
        (M::DELETE, "/namespaces/gone", None, Some("channels:write")),
        (M::GET, "/channels", None, Some("channels:read")),
        (M::POST, "/channels", Some(json!({"name": "fresh"})), Some("channels:write")),
        (M::GET, "/channels/news", None, Some("channels:read")),
        (M::PATCH, "/channels/news", Some(json!({})), Some("channels:write")),
        (M::DELETE, "/channels/gone", None, Some("channels:write")),
        (M::GET, "/api-keys", None, Some("keys:write")),
        (M::POST, "/api-keys", Some(json!({"name": "k", "scopes": ["keys:write"]})), Some("keys:write")),
        (M::GET, "/api-keys/none", None, Some("keys:write")),
        (M::DELETE, "/api-keys/none", None, Some("keys:write")),
        (M::GET, "/signing-keys", None, Some("keys:write")),
        (M::POST, "/signing-keys", Some(json!({"algorithm": "HS256"})), Some("keys:write")),
        (M::GET, "/signing-keys/hs", None, Some("keys:write")),
        (M::POST, "/signing-keys/none/retire", None, Some("keys:write")),
        (M::POST, "/tokens", Some(json!({"sub": "u"})), Some("tokens:issue")),
        (M::POST, "/revocations", Some(json!({"jti": "j"})), Some("keys:write")),
        (M::GET, "/revocations/tokens", None, Some("keys:write")),
        (M::GET, "/revocations/users", None, Some("keys:write")),
        (M::GET, "/audit-log", None, Some("keys:write")),
        (M::POST, "/channels/news/messages", Some(json!({"data": 1})), Some("publish")),
        (M::GET, "/channels/news/messages", None, Some("history:read")),
        (M::POST, "/messages", Some(json!({"messages": [{"channel": "news", "data": 1}]})), Some("publish")),
        (M::GET, "/channels/news/presence", None, Some("presence:read")),
        (M::GET, "/occupancy", None, Some("presence:read")),
        (M::GET, "/users/u1", None, Some("presence:read")),
        (M::POST, "/users/u1/messages", Some(json!({"data": 1})), Some("publish")),
        (M::POST, "/users/u1/disconnect", None, Some("keys:write")),
        (M::GET, "/webhooks", None, Some("webhooks:write")),
        (
            M::POST,
            "/webhooks",
            Some(json!({"url": "https://example.com/hook", "events": ["channel.occupied"]})),
            Some("webhooks:write"),
        ),
        (M::GET, "/webhooks/none", None, Some("webhooks:write")),
        (M::PATCH, "/webhooks/none", Some(json!({})), Some("webhooks:write")),
        (M::DELETE, "/webhooks/none", None, Some("webhooks:write")),
        (M::POST, "/webhooks/none/rotate-secret", Some(json!({})), Some("webhooks:write")),
        (M::POST, "/webhooks/none/test", None, Some("webhooks:write")),
        (M::GET, "/webhooks/none/deliveries", None, Some("webhooks:write")),
        (M::POST, "/webhooks/none/deliveries/none/replay", None, Some("webhooks:write")),
        (M::PUT, "/proxy", Some(json!({"timeout_ms": 1000})), Some("keys:write")),
        (M::GET, "/proxy", None, Some("keys:write")),
        (M::POST, "/proxy/rotate-secret", None, Some("keys:write")),
    ]
}

async fn call(client: &Client, method: &Method, tenant: &str, suffix: &str, body: &Option<Value>) -> Reply {
    let path = format!("/v1/tenants/{tenant}{suffix}");
    let body = body.as_ref().map(|b| ("application/json", b.to_string().into_bytes()));
    client.raw(method.clone(), &path, body).await
}

async fn seed(admin: &Client, tenant: &str) -> String {
    let secret = tenant_with_key(admin, tenant, ALL_SCOPES).await;
    admin.post(&format!("/v1/tenants/{tenant}/namespaces"), json!({"name": "chat"})).await.expect(201);
    admin.post(&format!("/v1/tenants/{tenant}/channels"), json!({"name": "news"})).await.expect(201);
    admin
        .post(&format!("/v1/tenants/{tenant}/signing-keys"), json!({"algorithm": "HS256", "kid": "hs"}))
        .await
        .expect(201);
    secret
}

on_both_backends!(tenant_isolation_matrix, scope_matrix);

async fn tenant_isolation_matrix(h: Herald) {
    let admin = h.admin();
    let key_a = h.client(&seed(&admin, "alpha").await);
    let key_b = h.client(&seed(&admin, "beta").await);

    for (method, suffix, body, _) in operations() {
        for (key, other) in [(&key_a, "beta"), (&key_b, "alpha")] {
            let reply = call(key, &method, other, suffix, &body).await;
            assert_eq!(reply.status.as_u16(), 404, "{method} {other}{suffix}: {}", reply.body);
            assert_eq!(reply.body["code"], "tenant_not_found", "{method} {other}{suffix}");
        }
        // The same call on the key's own tenant is not refused by the access check.
        let own = call(&key_a, &method, "alpha", suffix, &body).await;
        assert!(
            own.body["code"] != "tenant_not_found" && own.status.as_u16() != 403,
            "{method} alpha{suffix}: {}",
            own.body
        );
    }

    // Same channel name in both tenants: separate resources.
    key_b.delete("/v1/tenants/beta/channels/news").await.expect(204);
    key_a.get("/v1/tenants/alpha/channels/news").await.expect(200);
    key_b.get("/v1/tenants/beta/channels/news").await.problem(404, "channel_not_found");

    // Keys never reach operator endpoints, whatever their scopes.
    key_a.get("/v1/tenants").await.problem(403, "admin_required");
    key_a.post("/v1/tenants", json!({"id": "gamma", "name": "G"})).await.problem(403, "admin_required");
    key_a.patch("/v1/tenants/alpha", json!({"status": "active"})).await.problem(403, "admin_required");
    key_a.delete("/v1/tenants/alpha").await.problem(403, "admin_required");
    key_a.get("/v1/audit-log").await.problem(403, "admin_required");

    // A tenant's audit log holds only its own entries.
    let log = key_a.get("/v1/tenants/alpha/audit-log?limit=200").await.expect(200);
    assert!(log["items"].as_array().unwrap().iter().all(|e| e["tenant"] == "alpha"));

    // A suspended tenant's keys are refused; the other tenant is unaffected.
    admin.patch("/v1/tenants/alpha", json!({"status": "suspended"})).await.expect(200);
    key_a.get("/v1/tenants/alpha").await.problem(403, "tenant_suspended");
    key_b.get("/v1/tenants/beta").await.expect(200);
}

async fn scope_matrix(h: Herald) {
    let admin = h.admin();
    seed(&admin, "acme").await;
    let mut keys = Vec::new();
    for scope in ALL_SCOPES {
        let k = admin
            .post("/v1/tenants/acme/api-keys", json!({"name": scope, "scopes": [scope]}))
            .await
            .expect(201);
        keys.push((*scope, h.client(k["secret"].as_str().unwrap())));
    }
    for (method, suffix, body, needed) in operations() {
        for (scope, key) in &keys {
            let reply = call(key, &method, "acme", suffix, &body).await;
            let granted = match needed {
                None => true,
                Some(n) => *scope == n || (*scope == "channels:write" && n == "channels:read"),
            };
            if granted {
                assert!(
                    reply.status.as_u16() != 403,
                    "{scope} should reach {method} {suffix}: {}",
                    reply.body
                );
            } else {
                assert_eq!(
                    reply.status.as_u16(),
                    403,
                    "{scope} must not reach {method} {suffix}: {}",
                    reply.body
                );
                assert_eq!(reply.body["code"], "missing_scope");
            }
        }
    }

    // A key cannot mint a key with more scopes than it has.
    let keys_only = admin
        .post("/v1/tenants/acme/api-keys", json!({"name": "km", "scopes": ["keys:write"]}))
        .await
        .expect(201);
    let km = h.client(keys_only["secret"].as_str().unwrap());
    let p = km
        .post("/v1/tenants/acme/api-keys", json!({"name": "x", "scopes": ["keys:write", "publish"]}))
        .await
        .problem(403, "scope_escalation");
    assert_eq!(p["field"], "scopes[1]");
    km.post("/v1/tenants/acme/api-keys", json!({"name": "x", "scopes": ["keys:write"]})).await.expect(201);
}
