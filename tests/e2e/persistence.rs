use serde_json::json;

use crate::on_both_backends;
use crate::support::{ADMIN_TOKEN, Herald, Start};

on_both_backends!(survives_restart);

async fn survives_restart(h: Herald) {
    let admin = h.admin();
    admin
        .post("/v1/tenants", json!({"id": "acme", "name": "Acme", "limits": {"max_channels": 9}}))
        .await
        .expect(201);
    admin
        .post("/v1/tenants/acme/namespaces", json!({"name": "chat", "options": {"presence": true}}))
        .await
        .expect(201);
    admin.post("/v1/tenants/acme/channels", json!({"name": "chat:1"})).await.expect(201);
    let key = admin
        .post("/v1/tenants/acme/api-keys", json!({"name": "k", "scopes": ["tokens:issue"]}))
        .await
        .expect(201);
    admin.post("/v1/tenants/acme/signing-keys", json!({"algorithm": "HS256", "kid": "hs"})).await.expect(201);

    let h = h.restart().await;
    let admin = h.admin();
    assert_eq!(admin.get("/v1/tenants/acme").await.expect(200)["limits"]["max_channels"], 9);
    let ch = admin.get("/v1/tenants/acme/channels/chat:1").await.expect(200);
    assert_eq!(ch["effective"]["presence"], true);
    // The API key still authenticates and the sealed HS256 secret still unseals.
    let minted = h
        .client(key["secret"].as_str().unwrap())
        .post("/v1/tenants/acme/tokens", json!({"sub": "u"}))
        .await
        .expect(201);
    assert_eq!(minted["kid"], "hs");
}

#[tokio::test]
async fn generated_admin_token_is_printed_once_and_persists() {
    let h = Herald::start(Start::default()).await;
    let line = h.stdout_lines.iter().find(|l| l.starts_with("Generated admin token")).expect("token printed");
    let token = line.rsplit(' ').next().unwrap().to_owned();
    assert!(token.starts_with("hadm_"));
    assert!(!h.log().contains(&token), "the token never reaches the log");
    h.client(&token).get("/v1/tenants").await.expect(200);

    // Restart without HERALD_ADMIN_TOKEN: not printed again, still valid.
    let mut h = h;
    h.stop().await;
    let h2 = Herald::restart_as(h, Start::default()).await;
    assert!(h2.stdout_lines.iter().all(|l| !l.starts_with("Generated admin token")));
    h2.client(&token).get("/v1/tenants").await.expect(200);
    h2.client(ADMIN_TOKEN).get("/v1/tenants").await.problem(401, "invalid_credentials");
}

#[tokio::test]
async fn wrong_secret_key_is_refused_at_start() {
    let h = Herald::sqlite().await;
    let url = format!("sqlite://{}?mode=rwc", h.data_dir.join("herald.db").display());
    let other_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url, "--data-dir"])
        .arg(other_dir.path())
        .env_remove("HERALD_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret key does not match"), "{stderr}");
}
