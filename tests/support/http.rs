//! Talking REST to a node: a client bound to one credential, its replies (with problem
//! assertions), and tenant setup (a tenant with an API key; a tenant ready for realtime tests).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::process::Herald;

/// An HTTP client bound to one node and one credential.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

/// A response: status, content type and JSON body (`Value::Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl Reply {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        self.body
    }

    /// Asserts a problem response with this status and code; returns the problem.
    #[track_caller]
    pub fn problem(self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert_eq!(self.content_type, "application/problem+json", "body: {}", self.body);
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert_eq!(self.body["status"], status, "body: {}", self.body);
        assert_eq!(self.body["type"], format!("urn:herald:problem:{code}"));
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        self.body
    }
}

impl Client {
    pub async fn raw(&self, method: Method, path: &str, body: Option<(&str, Vec<u8>)>) -> Reply {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            req = req.header("content-type", content_type).body(bytes);
        }
        let resp = req.timeout(Duration::from_secs(30)).send().await.expect("request sent");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply { status, content_type, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.raw(Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.raw(Method::DELETE, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.raw(Method::POST, path, Some(("application/json", body.to_string().into_bytes()))).await
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        self.raw(Method::POST, path, None).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.raw(Method::PATCH, path, Some(("application/json", body.to_string().into_bytes()))).await
    }

    pub async fn post_bytes(&self, path: &str, content_type: &str, bytes: Vec<u8>) -> Reply {
        self.raw(Method::POST, path, Some((content_type, bytes))).await
    }
}

/// Creates a tenant and an API key with `scopes`; returns the key's secret.
pub async fn tenant_with_key(admin: &Client, tenant: &str, scopes: &[&str]) -> String {
    admin.post("/v1/tenants", serde_json::json!({"id": tenant, "name": tenant})).await.expect(201);
    let key = admin
        .post(
            &format!("/v1/tenants/{tenant}/api-keys"),
            serde_json::json!({"name": "test", "scopes": scopes}),
        )
        .await
        .expect(201);
    key["secret"].as_str().expect("secret").to_owned()
}

/// A tenant ready for realtime tests: an all-scope API key and an HS256 signing key.
pub struct RealtimeTenant {
    pub id: String,
    pub key: Client,
    pub hs_secret: String,
}

pub async fn realtime_tenant(h: &Herald, id: &str) -> RealtimeTenant {
    let admin = h.admin();
    admin.post("/v1/tenants", serde_json::json!({"id": id, "name": id})).await.expect(201);
    let key = admin
        .post(
            &format!("/v1/tenants/{id}/api-keys"),
            serde_json::json!({"name": "all", "scopes": ["publish", "channels:write", "keys:write", "tokens:issue", "history:read", "presence:read", "stats:read", "webhooks:write"]}),
        )
        .await
        .expect(201);
    let hs = admin
        .post(
            &format!("/v1/tenants/{id}/signing-keys"),
            serde_json::json!({"algorithm": "HS256", "kid": "hs"}),
        )
        .await
        .expect(201);
    RealtimeTenant {
        id: id.to_owned(),
        key: h.client(key["secret"].as_str().unwrap()),
        hs_secret: hs["secret"].as_str().unwrap().to_owned(),
    }
}

impl RealtimeTenant {
    /// The client ids present in `channel`, through the REST API.
    pub async fn present(&self, channel: &str) -> Vec<String> {
        let presence =
            self.key.get(&format!("/v1/tenants/{}/channels/{channel}/presence", self.id)).await.expect(200);
        let clients = presence["clients"].as_array().expect("clients");
        clients.iter().map(|c| c["client"].as_str().expect("client id").to_owned()).collect()
    }

    /// Waits up to 3 s for nobody to be present in `channels`; `after` names what should have
    /// ended their sessions.
    pub async fn await_absent(&self, channels: &[&str], after: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        for channel in channels {
            while !self.present(channel).await.is_empty() {
                assert!(std::time::Instant::now() < deadline, "{channel}: the session outlived {after}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Creates namespace `name` with presence on (subscribers are listed, join and leave sent).
    pub async fn presence_namespace(&self, name: &str) {
        self.key
            .post(
                &format!("/v1/tenants/{}/namespaces", self.id),
                serde_json::json!({"name": name, "options": {"presence": true}}),
            )
            .await
            .expect(201);
    }

    /// Mints a client token through the API with these capabilities.
    pub async fn token(&self, sub: &str, caps: Value) -> String {
        self.token_ttl(sub, caps, 3600).await
    }

    pub async fn token_ttl(&self, sub: &str, caps: Value, ttl: u64) -> String {
        let minted = self
            .key
            .post(
                &format!("/v1/tenants/{}/tokens", self.id),
                serde_json::json!({"sub": sub, "capabilities": caps, "ttl_seconds": ttl}),
            )
            .await
            .expect(201);
        minted["token"].as_str().unwrap().to_owned()
    }

    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        self.key
            .post(
                &format!("/v1/tenants/{}/channels/{channel}/messages", self.id),
                serde_json::json!({"data": data}),
            )
            .await
            .expect(200)
    }
}

/// A publisher that keeps going through failures, as a backend would: publishes `{"n": 1}`,
/// `{"n": 2}`, … to `channel` of tenant `acme`, one every `gap`, each retried with its
/// idempotency key through the next of `bases` (which the test may change meanwhile) until a
/// node acknowledges it. Stops after `limit` messages, or once `stop` is set; answers how many
/// were acknowledged.
pub fn publish_continuously(
    bases: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    key: String,
    channel: &str,
    limit: Option<u64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    gap: std::time::Duration,
) -> tokio::task::JoinHandle<u64> {
    use std::sync::atomic::Ordering;
    let channel = channel.to_owned();
    tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build().unwrap();
        let mut acked = 0u64;
        let mut attempt = 0usize;
        while limit.is_none_or(|l| acked < l) && !stop.load(Ordering::Relaxed) {
            let n = acked + 1;
            loop {
                let base = {
                    let b = bases.lock().unwrap();
                    b[attempt % b.len()].clone()
                };
                let sent = http
                    .post(format!("{base}/v1/tenants/acme/channels/{channel}/messages"))
                    .bearer_auth(&key)
                    .json(&serde_json::json!({"data": {"n": n}, "idempotency_key": format!("m{n}")}))
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            acked = n;
            tokio::time::sleep(gap).await;
        }
        acked
    })
}

/// A GET of `url` with one extra request header, answered whatever its status.
pub async fn get_with(url: &str, header: (&str, &str)) -> reqwest::Response {
    reqwest::Client::new().get(url).header(header.0, header.1).send().await.expect("request")
}
