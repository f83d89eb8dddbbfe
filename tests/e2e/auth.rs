use serde_json::json;

use crate::support::{ADMIN_TOKEN, Herald};

#[tokio::test]
async fn admin_session_login() {
    let h = Herald::with_env(&[("HERALD_ADMIN_SESSION_TTL_SECONDS", "2")]).await;
    let anon = h.anonymous();
    let p = anon
        .post("/v1/auth/login", json!({"token": "wrong-token-wrong-token"}))
        .await
        .problem(401, "invalid_credentials");
    assert_eq!(p["field"], "token");
    let session = anon.post("/v1/auth/login", json!({"token": ADMIN_TOKEN})).await.expect(200);
    let jwt = session["session_token"].as_str().unwrap();
    assert!(session["expires_at"].is_string());

    let s = h.client(jwt);
    assert_eq!(s.get("/v1/auth/whoami").await.expect(200)["kind"], "admin_session");
    s.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.expect(201);
    let audit = h.admin().get("/v1/audit-log").await.expect(200);
    assert_eq!(audit["items"][0]["actor"], "admin-session");
    assert_eq!(audit["items"][1]["action"], "auth.login");

    // Tampering breaks the signature.
    let mut tampered = jwt.to_owned();
    tampered.replace_range(tampered.len() - 3.., "AAA");
    h.client(&tampered).get("/v1/tenants").await.problem(401, "invalid_credentials");

    // Sessions are short-lived.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    s.get("/v1/tenants").await.problem(401, "session_expired");

    // Missing and garbage credentials.
    anon.get("/v1/tenants").await.problem(401, "missing_credentials");
    h.client("garbage").get("/v1/tenants").await.problem(401, "invalid_credentials");
}

#[tokio::test]
async fn sessions_do_not_cross_nodes_with_different_secret_keys() {
    let a = Herald::sqlite().await;
    let b = Herald::sqlite().await;
    let session = a.anonymous().post("/v1/auth/login", json!({"token": ADMIN_TOKEN})).await.expect(200);
    let jwt = session["session_token"].as_str().unwrap();
    a.client(jwt).get("/v1/tenants").await.expect(200);
    b.client(jwt).get("/v1/tenants").await.problem(401, "invalid_credentials");
}
