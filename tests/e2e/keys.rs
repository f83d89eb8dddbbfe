use serde_json::json;

use crate::on_both_backends;
use crate::support::Herald;

const RSA_PUBLIC: &str = include_str!("../fixtures/rsa_public.pem");
const EC_PUBLIC: &str = include_str!("../fixtures/ec_public.pem");
const ED_PUBLIC: &str = include_str!("../fixtures/ed25519_public.pem");
const RSA_PRIVATE: &str = include_str!("../fixtures/rsa_private.pem");

on_both_backends!(api_key_lifecycle, signing_key_lifecycle);

async fn api_key_lifecycle(h: Herald) {
    let admin = h.admin();
    admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.expect(201);
    let created = admin
        .post(
            "/v1/tenants/acme/api-keys",
            json!({"name": "backend", "scopes": ["publish", "channels:write", "publish"]}),
        )
        .await
        .expect(201);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("hk_") && secret.len() > 40, "{secret}");
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["scopes"], json!(["publish", "channels:write"]), "deduplicated");
    let id = created["id"].as_str().unwrap().to_owned();

    // The secret is never shown again.
    let listed = admin.get("/v1/tenants/acme/api-keys").await.expect(200);
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert!(listed["items"][0].get("secret").is_none());
    assert!(!listed.to_string().contains(&secret));
    let one = admin.get(&format!("/v1/tenants/acme/api-keys/{id}")).await.expect(200);
    assert!(one.get("secret").is_none());

    // The key works, and its use is recorded.
    let key = h.client(&secret);
    key.post("/v1/tenants/acme/channels", json!({"name": "news"})).await.expect(201);
    let whoami = key.get("/v1/auth/whoami").await.expect(200);
    assert_eq!(whoami["kind"], "api_key");
    assert_eq!(whoami["tenant"], "acme");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        admin.get(&format!("/v1/tenants/acme/api-keys/{id}")).await.expect(200)["last_used_at"].is_string()
    );

    // Revoked: refused at once, still listed.
    admin.delete(&format!("/v1/tenants/acme/api-keys/{id}")).await.expect(204);
    key.get("/v1/tenants/acme/channels").await.problem(401, "api_key_revoked");
    assert!(
        admin.get(&format!("/v1/tenants/acme/api-keys/{id}")).await.expect(200)["revoked_at"].is_string()
    );
    admin.delete("/v1/tenants/acme/api-keys/nope").await.problem(404, "api_key_not_found");

    // Expiry in the past is refused; an unknown key is refused.
    let p = admin
        .post(
            "/v1/tenants/acme/api-keys",
            json!({"name": "old", "scopes": ["publish"], "expires_at": "2000-01-01T00:00:00Z"}),
        )
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "expires_at");
    let p = admin
        .post("/v1/tenants/acme/api-keys", json!({"name": "none", "scopes": []}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "scopes");
    let p = admin
        .post("/v1/tenants/acme/api-keys", json!({"name": "bad", "scopes": ["publish", "root"]}))
        .await
        .problem(400, "invalid_type");
    assert_eq!(p["field"], "scopes[1]");
    h.client("hk_not-a-real-key").get("/v1/tenants/acme").await.problem(401, "invalid_credentials");

    // A key expiring soon works until it expires.
    let soon = (chrono_like_now_plus(2)).to_string();
    let short = admin
        .post(
            "/v1/tenants/acme/api-keys",
            json!({"name": "short", "scopes": ["channels:read"], "expires_at": soon}),
        )
        .await
        .expect(201);
    let short = h.client(short["secret"].as_str().unwrap());
    short.get("/v1/tenants/acme/channels").await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    short.get("/v1/tenants/acme/channels").await.problem(401, "api_key_expired");
}

/// RFC 3339 time `secs` seconds from now, without a date library.
fn chrono_like_now_plus(secs: u64) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + secs;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn signing_key_lifecycle(h: Herald) {
    let admin = h.admin();
    admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.expect(201);
    let base = "/v1/tenants/acme/signing-keys";

    let hs = admin.post(base, json!({"algorithm": "HS256", "kid": "hs-1"})).await.expect(201);
    assert_eq!(hs["kid"], "hs-1");
    assert_eq!(hs["status"], "active");
    let secret = hs["secret"].as_str().unwrap();
    assert!(secret.len() >= 43);
    let listed = admin.get(base).await.expect(200);
    assert!(!listed.to_string().contains(secret), "HS secrets are never returned after creation");

    for (alg, pem) in [("RS256", RSA_PUBLIC), ("ES256", EC_PUBLIC), ("EdDSA", ED_PUBLIC)] {
        let k = admin.post(base, json!({"algorithm": alg, "public_key_pem": pem})).await.expect(201);
        assert_eq!(k["algorithm"], alg);
        assert!(k["kid"].as_str().unwrap().starts_with("k_"));
        assert!(k["secret"].is_null());
        assert!(k["public_key_pem"].as_str().unwrap().contains("BEGIN PUBLIC KEY"));
    }
    assert_eq!(admin.get(base).await.expect(200)["items"].as_array().unwrap().len(), 4);

    // Wrong key material is refused with the field named.
    let cases = [
        json!({"algorithm": "HS256", "public_key_pem": RSA_PUBLIC}),
        json!({"algorithm": "RS256"}),
        json!({"algorithm": "RS256", "public_key_pem": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"}),
        json!({"algorithm": "ES256", "public_key_pem": RSA_PUBLIC}),
        json!({"algorithm": "RS256", "public_key_pem": RSA_PRIVATE}),
    ];
    for case in cases {
        let p = admin.post(base, case.clone()).await.problem(422, "invalid_value");
        assert_eq!(p["field"], "public_key_pem", "{case}");
    }
    let p = admin.post(base, json!({"algorithm": "none"})).await.problem(400, "invalid_type");
    assert_eq!(p["field"], "algorithm");
    let p =
        admin.post(base, json!({"algorithm": "HS256", "kid": "bad kid"})).await.problem(422, "invalid_value");
    assert_eq!(p["field"], "kid");
    admin.post(base, json!({"algorithm": "HS256", "kid": "hs-1"})).await.problem(409, "signing_key_exists");

    let retired = admin.post_empty(&format!("{base}/hs-1/retire")).await.expect(200);
    assert_eq!(retired["status"], "retired");
    assert!(retired["retired_at"].is_string());
    assert_eq!(admin.get(&format!("{base}/hs-1")).await.expect(200)["status"], "retired");
    admin.post_empty(&format!("{base}/missing/retire")).await.problem(404, "signing_key_not_found");
}
