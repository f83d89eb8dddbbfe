//! The client-token attack matrix: every refused token closes the socket with its documented
//! code and reason; valid tokens of every algorithm are accepted.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::{Closed, Herald, realtime_tenant};

const RSA_PUBLIC: &str = include_str!("../fixtures/rsa_public.pem");
const RSA_PRIVATE: &str = include_str!("../fixtures/rsa_private.pem");
const EC_PUBLIC: &str = include_str!("../fixtures/ec_public.pem");
const EC_PRIVATE: &str = include_str!("../fixtures/ec_private.pem");
const ED_PUBLIC: &str = include_str!("../fixtures/ed25519_public.pem");
const ED_PRIVATE: &str = include_str!("../fixtures/ed25519_private.pem");

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims(tenant: &str) -> Value {
    json!({"sub": "eve", "tenant": tenant, "iat": now(), "exp": now() + 600, "jti": uuid::Uuid::new_v4().to_string(),
           "capabilities": {"*": ["subscribe"]}})
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn refused(h: &Herald, token: &str) -> Closed {
    h.ws_raw(&format!("?token={token}")).await.closed().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_attack_matrix() {
    let h = Herald::sqlite().await;
    let alpha = realtime_tenant(&h, "alpha").await;
    let beta = realtime_tenant(&h, "beta").await;
    for (alg, kid, pem) in
        [("RS256", "rsa", RSA_PUBLIC), ("ES256", "ec", EC_PUBLIC), ("EdDSA", "ed", ED_PUBLIC)]
    {
        alpha
            .key
            .post(
                "/v1/tenants/alpha/signing-keys",
                json!({"algorithm": alg, "kid": kid, "public_key_pem": pem}),
            )
            .await
            .expect(201);
    }
    let hs = EncodingKey::from_secret(alpha.hs_secret.as_bytes()).unwrap();

    // Valid tokens of every algorithm connect.
    let valid = [
        sign(Algorithm::HS256, "hs", &hs, &claims("alpha")),
        sign(
            Algorithm::RS256,
            "rsa",
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            &claims("alpha"),
        ),
        sign(
            Algorithm::ES256,
            "ec",
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            &claims("alpha"),
        ),
        sign(
            Algorithm::EdDSA,
            "ed",
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
            &claims("alpha"),
        ),
    ];
    for token in &valid {
        let mut ws = h.ws(token).await;
        assert_eq!(ws.call(json!({"type": "ping"})).await["type"], "pong");
    }

    let good = &valid[0];
    let parts: Vec<&str> = good.split('.').collect();
    let mut expired = claims("alpha");
    expired["exp"] = json!(now() - 60);
    let mut future = claims("alpha");
    future["nbf"] = json!(now() + 600);
    let mut tampered_claims = claims("alpha");
    tampered_claims["sub"] = json!("admin");

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "alg none",
            format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims("alpha"))),
            4001,
            "algorithm_not_allowed",
        ),
        (
            "alg HS512",
            format!("{}.{}.{}", b64(&json!({"alg": "HS512", "kid": "hs"})), parts[1], parts[2]),
            4001,
            "algorithm_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key (algorithm confusion)",
            sign(
                Algorithm::HS256,
                "rsa",
                &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
                &claims("alpha"),
            ),
            4001,
            "algorithm_mismatch",
        ),
        ("unknown kid", sign(Algorithm::HS256, "nope", &hs, &claims("alpha")), 4001, "unknown_key"),
        ("expired", sign(Algorithm::HS256, "hs", &hs, &expired), 4002, "token_expired"),
        ("nbf in the future", sign(Algorithm::HS256, "hs", &hs, &future), 4001, "token_not_yet_valid"),
        (
            "another tenant's key, claiming alpha",
            sign(
                Algorithm::HS256,
                "hs",
                &EncodingKey::from_secret(beta.hs_secret.as_bytes()).unwrap(),
                &claims("alpha"),
            ),
            4001,
            "bad_signature",
        ),
        (
            "tampered payload",
            format!("{}.{}.{}", parts[0], b64(&tampered_claims), parts[2]),
            4001,
            "bad_signature",
        ),
        ("unknown tenant", sign(Algorithm::HS256, "hs", &hs, &claims("gamma")), 4001, "unknown_tenant"),
        ("garbage", "not.a.token".to_owned(), 4001, "token_malformed"),
        ("two parts", "abc.def".to_owned(), 4001, "token_malformed"),
    ];
    for (name, token, code, reason) in cases {
        let closed = refused(&h, &token).await;
        assert_eq!(closed, Closed { code, reason: reason.into() }, "{name}");
    }

    // A retired key stops verifying.
    alpha.key.post_empty("/v1/tenants/alpha/signing-keys/ec/retire").await.expect(200);
    assert_eq!(refused(&h, &valid[2]).await.reason, "unknown_key");

    // Missing capability is refused per command, not per connection.
    let mut ws = h
        .ws(&sign(Algorithm::HS256, "hs", &hs, &json!({"sub": "eve", "tenant": "alpha", "exp": now() + 60})))
        .await;
    let denied = ws.call(json!({"type": "subscribe", "channel": "secret"})).await;
    assert_eq!(denied["code"], "permission_denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_are_checked_against_the_tenant() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    h.admin()
        .patch(
            "/v1/tenants/acme",
            json!({"allowed_origins": ["https://app.acme.test", "https://*.acme.dev"]}),
        )
        .await
        .expect(200);
    let token = t.token("u", json!({})).await;
    let connect = |origin: &'static str| {
        let url = h.ws_url(&format!("?token={token}"));
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = url.into_client_request().unwrap();
            req.headers_mut().insert("Origin", origin.parse().unwrap());
            let (stream, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            crate::support::Ws { stream }
        }
    };
    assert_eq!(connect("https://app.acme.test").await.recv().await["type"], "connected");
    assert_eq!(connect("https://eu.acme.dev").await.recv().await["type"], "connected");
    assert_eq!(
        connect("https://evil.test").await.closed().await,
        Closed { code: 4007, reason: "origin_not_allowed".into() }
    );
    assert_eq!(connect("http://app.acme.test").await.closed().await.code, 4007);
}
