//! The log of a whole session, in JSON at debug level: every line about a client connection
//! names its tenant, connection, node and transport, and no secret the run used appears in
//! any line.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Herald, Receiver, Sse, poll, realtime_tenant};

const MASTER_KEY: &str = "bG9nLWh5Z2llbmUtbWFzdGVyLWtleS0zMi1ieXRlcyE=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lines_carry_their_context_and_no_secret_reaches_the_log() {
    let h = Herald::with_env(&[
        ("HERALD_LOG_FORMAT", "json"),
        ("HERALD_LOG_LEVEL", "debug,sqlx=warn,hyper=info,h2=info,reqwest=info"),
        ("HERALD_SECRET_KEY", MASTER_KEY),
        ("HERALD_OUTBOUND_ALLOWED_NETWORKS", "127.0.0.0/8"),
    ])
    .await;
    let t = realtime_tenant(&h, "acme").await;
    let mut secrets: Vec<String> = vec![ADMIN_TOKEN.into(), MASTER_KEY.into(), t.hs_secret.clone()];
    secrets.push(t.key.token.clone().unwrap());
    // A webhook (its signing secret) and a proxy (its secret), both exercised.
    let receiver = Receiver::start().await;
    let hook = t
        .key
        .post("/v1/tenants/acme/webhooks", json!({"url": receiver.url, "events": ["connection.open"]}))
        .await
        .expect(201);
    secrets.push(hook["secret"].as_str().unwrap().to_owned());
    let session = h.anonymous().post("/v1/auth/login", json!({"token": ADMIN_TOKEN})).await.expect(200);
    secrets.push(session["session_token"].as_str().unwrap().to_owned());
    h.client(session["session_token"].as_str().unwrap()).get("/v1/tenants").await.expect(200);

    // One client per transport, each with its own token in the URL (as browsers send it).
    let mut tokens = Vec::new();
    for user in ["ws-user", "sse-user", "poll-user"] {
        tokens.push(t.token(user, json!({"*": ["subscribe", "publish"]})).await);
    }
    let mut ws = h.ws(&tokens[0]).await;
    ws.subscribe("news").await;
    let mut sse = Sse::open(&h.base, &format!("?channels=news&token={}", tokens[1]), None).await.unwrap();
    poll(&h.base, &format!("?channels=news&token={}&timeout=0", tokens[2])).await.expect(200);
    // A refused token: the refusal is logged without it.
    let forged = format!("{}x", tokens[0]);
    let _ = Sse::open(&h.base, &format!("?channels=news&token={forged}"), None).await;
    t.publish("news", json!("hello")).await;
    ws.read_pubs(1).await;
    assert_eq!(sse.next_data().await.json()["type"], "connected");
    receiver.wait_for(3, Duration::from_secs(10), |r| r.json()["type"] == "connection.open").await;
    ws.send(json!({"type": "publish", "channel": "news", "data": 1})).await;
    t.key.post_empty("/v1/tenants/acme/users/ws-user/disconnect").await.expect(200);
    assert_eq!(ws.closed().await.code, 4006);
    drop(sse);
    tokio::time::sleep(Duration::from_millis(500)).await;
    secrets.extend(tokens);
    secrets.push(forged);

    let log = h.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 20, "{log}");
    // Every line about a client connection names all four, itself or through its span.
    let mut seen = BTreeSet::new();
    for line in &lines {
        let fields = &line["fields"];
        let message = fields["message"].as_str().unwrap_or("");
        // (`herald::listener` logs TCP connections, before any client is known: by address.)
        if !message.starts_with("connection ") || line["target"] == "herald::listener" {
            continue;
        }
        let in_span =
            |k: &str| line["span"].get(k).or_else(|| line["spans"].as_array()?.iter().find_map(|s| s.get(k)));
        let get = |k: &str| fields.get(k).or_else(|| in_span(k)).and_then(Value::as_str).map(str::to_owned);
        let context = ["tenant", "conn", "node", "transport"].map(get);
        assert!(context.iter().all(Option::is_some), "a connection line lacks context: {line}");
        assert_eq!(context[0].as_deref(), Some("acme"));
        seen.insert((message.to_owned(), context[3].clone().unwrap()));
    }
    for transport in ["websocket", "sse", "long_poll"] {
        assert!(seen.contains(&("connection opened".into(), transport.into())), "{seen:?}\n{log}");
    }
    assert!(seen.contains(&("connection closed".into(), "websocket".into())), "{seen:?}");
    assert!(seen.contains(&("connection closed".into(), "sse".into())), "{seen:?}");
    // No secret in any line, whole or as its distinctive part.
    for secret in &secrets {
        let tail = &secret[secret.len().saturating_sub(24)..];
        assert!(!log.contains(tail), "a secret reached the log: …{tail}\n{log}");
    }
}
