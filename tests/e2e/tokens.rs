use base64::Engine;
use serde_json::{Value, json};

use crate::on_both_backends;
use crate::support::Herald;

on_both_backends!(mint_client_tokens, token_revocations);

/// The header and claims of a JWT (signature checked by the server tests, not here).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    (part(), part())
}

async fn mint_client_tokens(h: Herald) {
    let admin = h.admin();
    admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.expect(201);
    let mint = json!({"sub": "user-1", "capabilities": {"chat:*": ["subscribe", "publish"], "news": ["history"]}, "ttl_seconds": 600});
    admin.post("/v1/tenants/acme/tokens", mint.clone()).await.problem(409, "no_signing_key");

    admin
        .post("/v1/tenants/acme/signing-keys", json!({"algorithm": "HS256", "kid": "old"}))
        .await
        .expect(201);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    admin
        .post("/v1/tenants/acme/signing-keys", json!({"algorithm": "HS256", "kid": "new"}))
        .await
        .expect(201);
    let minted = admin.post("/v1/tenants/acme/tokens", mint.clone()).await.expect(201);
    assert_eq!(minted["kid"], "new", "the newest active key signs");
    let (header, claims) = decode_jwt(minted["token"].as_str().unwrap());
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["kid"], "new");
    assert_eq!(claims["sub"], "user-1");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["jti"], minted["jti"]);
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 600);
    assert_eq!(claims["capabilities"]["chat:*"], json!(["subscribe", "publish"]));

    admin.post_empty("/v1/tenants/acme/signing-keys/new/retire").await.expect(200);
    let minted = admin.post("/v1/tenants/acme/tokens", mint.clone()).await.expect(201);
    assert_eq!(minted["kid"], "old", "retired keys are not used");

    // A tenant key needs tokens:issue.
    let key = admin
        .post("/v1/tenants/acme/api-keys", json!({"name": "issuer", "scopes": ["tokens:issue"]}))
        .await
        .expect(201);
    h.client(key["secret"].as_str().unwrap())
        .post("/v1/tenants/acme/tokens", json!({"sub": "u2"}))
        .await
        .expect(201);

    // Bad input names its field.
    let cases = [
        (json!({"sub": ""}), "sub"),
        (json!({"sub": "u", "ttl_seconds": 0}), "ttl_seconds"),
        (json!({"sub": "u", "ttl_seconds": 99999999}), "ttl_seconds"),
        (json!({"sub": "u", "capabilities": {"bad pattern": ["subscribe"]}}), "capabilities.bad pattern"),
        (json!({"sub": "u", "capabilities": {"chat:*": []}}), "capabilities.chat:*"),
        (json!({"sub": "u", "info": {"blob": "x".repeat(2000)}}), "info"),
    ];
    for (body, field) in cases {
        let p = admin.post("/v1/tenants/acme/tokens", body.clone()).await.problem(422, "invalid_value");
        assert_eq!(p["field"], field, "{body}");
    }
    let p = admin
        .post("/v1/tenants/acme/tokens", json!({"sub": "u", "capabilities": {"chat:*": ["fly"]}}))
        .await
        .problem(400, "invalid_type");
    assert_eq!(p["field"], "capabilities.chat:*[0]");

    // Suspended tenants get no new tokens.
    admin.patch("/v1/tenants/acme", json!({"status": "suspended"})).await.expect(200);
    admin.post("/v1/tenants/acme/tokens", mint).await.problem(403, "tenant_suspended");
}

async fn token_revocations(h: Herald) {
    let admin = h.admin();
    admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.expect(201);
    let base = "/v1/tenants/acme/revocations";
    let r = admin.post(base, json!({"jti": "abc", "expires_at": "2030-01-01T00:00:00Z"})).await.expect(201);
    assert_eq!(r["jti"], "abc");
    admin.post(base, json!({"jti": "abc"})).await.expect(201);
    let r = admin.post(base, json!({"sub": "user-1"})).await.expect(201);
    assert!(r["issued_before"].is_string());
    admin.post(base, json!({"sub": "user-1", "issued_before": "2031-01-01T00:00:00Z"})).await.expect(201);

    let tokens = admin.get(&format!("{base}/tokens")).await.expect(200);
    assert_eq!(tokens["items"].as_array().unwrap().len(), 1);
    let users = admin.get(&format!("{base}/users")).await.expect(200);
    assert_eq!(users["items"][0]["sub"], "user-1");
    assert!(users["items"][0]["issued_before"].as_str().unwrap().starts_with("2031-01-01"));

    admin.post(base, json!({})).await.problem(422, "invalid_value");
    admin.post(base, json!({"jti": "a", "sub": "b"})).await.problem(422, "invalid_value");
    let p = admin
        .post(base, json!({"jti": "a", "issued_before": "2031-01-01T00:00:00Z"}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "issued_before");
    let p = admin.post(base, json!({"jti": "a\u{0}b"})).await.problem(422, "invalid_value");
    assert_eq!(p["field"], "jti");
}
