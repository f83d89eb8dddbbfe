//! Hostile and careless clients, through the real binary: peers that stop reading, connections
//! that dribble or send nothing, a node out of file descriptors, credentials revoked mid-stream,
//! absurd token claims, other users' cursors, foreign origins, secrets in URLs. Every test here
//! failed before its fix.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{ADMIN_TOKEN, Herald, RealtimeTenant, Sse, Start, poll, realtime_tenant};

/// A node with short connection bounds, so a stalled peer is noticed within a test.
async fn strict_node(extra: &[(&str, &str)]) -> Herald {
    let mut env =
        vec![("HERALD_HTTP_WRITE_TIMEOUT_SECONDS", "2"), ("HERALD_HTTP_HEADER_READ_TIMEOUT_SECONDS", "2")];
    env.extend_from_slice(extra);
    Herald::with_env(&env).await
}

fn caps() -> Value {
    json!({"*": ["subscribe", "publish", "history", "presence"]})
}

/// A TCP connection to the node with a tiny receive buffer, so a peer that does not read
/// backs the server's writes up quickly.
async fn tight_socket(h: &Herald) -> TcpStream {
    let addr: std::net::SocketAddr = h.base.trim_start_matches("http://").parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A TCP connection to the node from another loopback address (as another client machine).
async fn connect_from(addr: &str, source: [u8; 4]) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    socket.bind(std::net::SocketAddr::from((source, 0)))?;
    socket.connect(addr.parse().expect("an address")).await
}

/// Reads an HTTP response head; returns it (the body may follow).
async fn read_head(sock: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut byte)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the response head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Whether the user still has a live connection on the node.
async fn online(t: &RealtimeTenant, user: &str) -> bool {
    let v = t.key.get(&format!("/v1/tenants/{}/users/{user}", t.id)).await.expect(200);
    v["online"].as_bool().unwrap()
}

/// Waits until the user has no connection left, at most `limit`.
async fn gone_within(t: &RealtimeTenant, user: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while online(t, user).await {
        assert!(Instant::now() < deadline, "`{user}` is still connected after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Blocks until the peer closes the connection (read returns 0 or fails); returns how long.
async fn closed_after(sock: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_pings_but_never_reads_is_closed_and_unregistered() {
    let h = strict_node(&[]).await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("stalled", caps()).await;
    let mut sock = tight_socket(&h).await;
    let request = format!(
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    sock.write_all(request.as_bytes()).await.unwrap();
    assert!(read_head(&mut sock).await.starts_with("HTTP/1.1 101"));
    // Masked ping frames with a 125-byte payload, sent until the server stops taking them:
    // its pongs pile up unread.
    let mut ping = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    ping.extend((0..125u8).map(|i| i ^ [1, 2, 3, 4][usize::from(i) % 4]));
    let pings = ping.repeat(64);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(tokio::time::timeout(Duration::from_secs(1), sock.write_all(&pings)).await, Ok(Ok(()))) {
            break;
        }
    }
    // The node is not stuck on this connection: a disconnect reaches it and it leaves.
    let n = t.key.post("/v1/tenants/acme/users/stalled/disconnect", json!({})).await.expect(200);
    assert!(n["disconnected"].as_u64().unwrap() <= 1);
    gone_within(&t, "stalled", Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_reader_that_stops_reading_is_dropped_within_the_write_timeout() {
    let h = strict_node(&[]).await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("sleepy", caps()).await;
    let mut sock = tight_socket(&h).await;
    sock.write_all(format!("GET /v1/sse?channels=feed&token={token} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut sock).await.starts_with("HTTP/1.1 200"));
    assert!(online(&t, "sleepy").await);
    // 200 × 60 KB: far more than the socket buffers hold; the reader reads none of it.
    let data = "x".repeat(60_000);
    for _ in 0..200 {
        t.publish("feed", json!(data)).await;
    }
    gone_within(&t, "sleepy", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_closed_by_the_header_timeout() {
    let h = strict_node(&[]).await;
    let addr = h.base.trim_start_matches("http://").to_owned();
    // Nothing at all.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // One byte of a request head every 300 ms (slowloris).
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    let dribble = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n" {
            if slow.write_all(&[*b]).await.is_err() {
                return (slow, true);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (slow, false)
    });
    let silent_for = closed_after(&mut silent, Duration::from_secs(6)).await;
    assert!(silent_for >= Duration::from_millis(1500), "closed too early: {silent_for:?}");
    let (mut slow, cut_short) = dribble.await.unwrap();
    if !cut_short {
        closed_after(&mut slow, Duration::from_secs(3)).await;
    }
    // Keep-alive connections do not idle forever either.
    let mut keep = TcpStream::connect(&addr).await.unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_head(&mut keep).await.starts_with("HTTP/1.1 200"));
    closed_after(&mut keep, Duration::from_secs(6)).await;
    // A normal request still works.
    h.anonymous().get("/healthz").await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_file_descriptors_backs_off_and_recovers() {
    let h = Herald::start(Start {
        admin_token: Some(ADMIN_TOKEN.into()),
        env: vec![("HERALD_HTTP_HEADER_READ_TIMEOUT_SECONDS".into(), "3".into())],
        fd_limit: Some(96),
        ..Default::default()
    })
    .await;
    let addr = h.base.trim_start_matches("http://").to_owned();
    // More silent connections than the node has descriptors for.
    let mut hogs = Vec::new();
    for _ in 0..160 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(&addr)).await {
            hogs.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While accept fails with EMFILE the node must not spin.
    let before = h.cpu_seconds();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = h.cpu_seconds() - before;
    assert!(used < 0.5, "the node burnt {used:.2} s of CPU in 1.5 s while out of descriptors");
    // The silent connections time out, and the node answers again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = tokio::time::timeout(Duration::from_secs(2), h.anonymous().get("/healthz")).await;
        if matches!(ok, Ok(reply) if reply.status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not recover");
    }
    drop(hogs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_connection_limit() {
    let h = strict_node(&[("HERALD_MAX_CONNECTIONS_PER_IP", "5")]).await;
    let addr = h.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The sixth from the same address is closed at once.
    let mut sixth = TcpStream::connect(&addr).await.unwrap();
    let _ = sixth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    closed_after(&mut sixth, Duration::from_secs(2)).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.anonymous().get("/healthz").await.expect(200);
    // Upgraded connections keep their place once hyper has handed the socket over: five
    // WebSockets (waiting for their `connect` frame) fill an address too. (Another address than
    // the test client's, whose pooled connection counts on 127.0.0.1.)
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from(&addr, [127, 0, 0, 9]).await.unwrap();
        s.write_all(
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(read_head(&mut s).await.starts_with("HTTP/1.1 101"));
        sockets.push(s);
    }
    // The sixth is closed unanswered.
    let mut sixth = connect_from(&addr, [127, 0, 0, 9]).await.unwrap();
    let _ = sixth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), sixth.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the sixth connection was kept open");
    assert!(answer.is_empty(), "the sixth connection was served: {}", String::from_utf8_lossy(&answer));
    // Their places come back when they close.
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from(&addr, [127, 0, 0, 9]).await.unwrap();
    again.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_head(&mut again).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_stream_ends_when_its_credential_is_revoked_or_expires() {
    let h = Herald::with_env(&[("HERALD_ADMIN_SESSION_TTL_SECONDS", "3")]).await;
    let t = realtime_tenant(&h, "acme").await;
    let admin = h.admin();
    let key = admin
        .post("/v1/tenants/acme/api-keys", json!({"name": "stats", "scopes": ["stats:read"]}))
        .await
        .expect(201);
    let secret = key["secret"].as_str().unwrap();
    let mut stats = Sse::from_response(
        reqwest::Client::new()
            .get(format!("{}/v1/stats/stream?token={secret}", h.base))
            .send()
            .await
            .unwrap(),
    );
    assert!(stats.next_data().await.json()["tenants"].is_array());
    admin.delete(&format!("/v1/tenants/acme/api-keys/{}", key["id"].as_str().unwrap())).await.expect(204);
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        while let Some(event) = stats.next().await {
            let _ = event;
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream kept going after its key was revoked");
    // A revoked key is named as such, on both ways of passing it.
    h.client(secret).get("/v1/stats").await.problem(401, "api_key_revoked");
    h.anonymous().get(&format!("/v1/stats?token={secret}")).await.problem(401, "api_key_revoked");
    // An admin session that expires ends its stream too.
    let login = h.anonymous().post("/v1/auth/login", json!({"token": ADMIN_TOKEN})).await.expect(200);
    let session = login["session_token"].as_str().unwrap();
    let mut stats = Sse::from_response(
        reqwest::Client::new()
            .get(format!("{}/v1/stats/stream?token={session}", h.base))
            .send()
            .await
            .unwrap(),
    );
    assert!(stats.next_data().await.json()["nodes"].is_array());
    let ended =
        tokio::time::timeout(Duration::from_secs(8), async { while stats.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the stream outlived its admin session");
    h.anonymous().get(&format!("/v1/stats?token={session}")).await.problem(401, "session_expired");
    drop(t);
}

fn sign(secret: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hs".into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_never_expires_is_served_without_panics_or_ghosts() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let now = chrono::Utc::now().timestamp();
    let far = json!({"sub": "forever", "tenant": "acme", "iat": now, "exp": i64::MAX, "jti": "j-far",
                     "capabilities": {"*": ["subscribe"]}});
    let token = sign(&t.hs_secret, &far);
    let mut ws = h.ws(&token).await;
    ws.subscribe("feed").await;
    // A refresh to another such token, and SSE with one, work too.
    let mut again = far.clone();
    again["jti"] = json!("j-far-2");
    let refreshed = ws.call(json!({"type": "refresh", "token": sign(&t.hs_secret, &again)})).await;
    assert_eq!(refreshed["type"], "refreshed", "{refreshed}");
    let mut sse =
        Sse::open(&h.base, &format!("?channels=feed&token={token}"), None).await.expect("stream opens");
    t.publish("feed", json!(1)).await;
    assert_eq!(ws.read_pubs(1).await[0]["position"], 1);
    let event = loop {
        let e = sse.next_data().await.json();
        if e["type"] == "pub" {
            break e;
        }
    };
    assert_eq!(event["position"], 1);
    // Both connections are real: a disconnect closes them and they leave.
    let n = t.key.post("/v1/tenants/acme/users/forever/disconnect", json!({})).await.expect(200);
    assert_eq!(n["disconnected"], 2);
    assert_eq!(ws.closed().await.code, 4006);
    gone_within(&t, "forever", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_cursor_cannot_take_over_a_long_poll_session() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let alice = t.token("alice", caps()).await;
    let mallory = t.token("mallory", caps()).await;
    let first = poll(&h.base, &format!("?channels=feed&token={alice}&timeout=1")).await.expect(200);
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    // Alice waits for the next message.
    let base = h.base.clone();
    let waiting = {
        let q = format!("?channels=feed&token={alice}&cursor={cursor}&timeout=10");
        tokio::spawn(async move { poll(&base, &q).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Mallory polls with Alice's cursor: she gets a session of her own.
    let theirs =
        poll(&h.base, &format!("?channels=feed&token={mallory}&cursor={cursor}&timeout=1")).await.expect(200);
    assert_ne!(theirs["cursor"], first["cursor"]);
    t.publish("feed", json!("for alice")).await;
    let got = waiting.await.unwrap().expect(200);
    assert_eq!(got["messages"][0]["data"], "for alice", "alice's session survived: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_name_only_allowed_origins_even_on_errors() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    h.admin()
        .patch("/v1/tenants/acme", json!({"allowed_origins": ["https://app.acme.test"]}))
        .await
        .expect(200);
    let token = t.token("u", json!({"open:*": ["subscribe"]})).await;
    let client = reqwest::Client::new();
    for path in ["/v1/sse", "/v1/poll"] {
        let get = |query: String, origin: &'static str| {
            client.get(format!("{}{path}{query}", h.base)).header("Origin", origin).send()
        };
        // A foreign origin with a valid token, a bad token, and no token: never echoed.
        for query in
            [format!("?channels=x&token={token}"), "?channels=x&token=nope".into(), "?channels=x".into()]
        {
            let resp = get(query.clone(), "https://evil.test").await.unwrap();
            assert!(resp.status().is_client_error(), "{path}{query}: {}", resp.status());
            assert!(
                resp.headers().get("access-control-allow-origin").is_none(),
                "{path}{query} echoed evil.test"
            );
        }
        // An allowed origin gets it on errors after its check (here: no capability).
        let resp =
            get(format!("?channels=secret&token={token}&timeout=1"), "https://app.acme.test").await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.acme.test");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_refresh_behave_as_documented() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    // A disconnected long-poll user is told so (403 disconnected), not "unavailable".
    let token = t.token("kicked", caps()).await;
    let first = poll(&h.base, &format!("?channels=feed&token={token}&timeout=1")).await.expect(200);
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    t.key.post("/v1/tenants/acme/users/kicked/disconnect", json!({})).await.expect(200);
    poll(&h.base, &format!("?channels=feed&token={token}&cursor={cursor}&timeout=1"))
        .await
        .problem(403, "disconnected");
    // After a refresh a connection is matched by its new token: revoking the old one leaves
    // it open, revoking the new one closes it with 4004.
    let old = t.token("fresh", caps()).await;
    let new = t.token("fresh", caps()).await;
    let jti = |tok: &str| -> String {
        use base64::Engine;
        let payload = tok.split('.').nth(1).unwrap();
        let v: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
        )
        .unwrap();
        v["jti"].as_str().unwrap().to_owned()
    };
    let mut ws = h.ws(&old).await;
    assert_eq!(ws.call(json!({"type": "refresh", "token": new})).await["type"], "refreshed");
    t.key
        .post("/v1/tenants/acme/revocations", json!({"jti": jti(&old), "expires_at": "2099-01-01T00:00:00Z"}))
        .await
        .expect(201);
    assert_eq!(
        ws.call(json!({"type": "ping"})).await["type"],
        "pong",
        "revoking the replaced token leaves it open"
    );
    t.key
        .post("/v1/tenants/acme/revocations", json!({"jti": jti(&new), "expires_at": "2099-01-01T00:00:00Z"}))
        .await
        .expect(201);
    assert_eq!(ws.closed().await.code, 4004);
    // `"id": true` is refused like an object.
    let mut ws = h.ws(&t.token("ids", caps()).await).await;
    ws.send(json!({"type": "ping", "id": true})).await;
    let e = ws.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e.get("id")),
        (Some("error"), Some("bad_request"), None),
        "{e}"
    );
}

/// Runs `herald serve` until it gives up; returns its exit status and everything it printed.
async fn failed_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_urls_never_reach_the_log_and_server_lists_parse() {
    // NATS servers that are not there: start-up fails, naming them without their passwords.
    let text =
        failed_start(&["--nats-url", "nats://ann:s3cret-one@127.0.0.1:1, nats://bob:p@ss:w0rd@127.0.0.1:2"])
            .await;
    for secret in ["s3cret-one", "p@ss:w0rd", "w0rd"] {
        assert!(!text.contains(secret), "`{secret}` reached the output:\n{text}");
    }
    assert!(!text.contains("invalid port"), "a server list is not one URL:\n{text}");
    assert!(text.contains("cannot connect to NATS"), "{text}");
    // A database that is not there, with a password in the userinfo and in the query.
    let text =
        failed_start(&["--database-url", "postgres://herald:hunter22@127.0.0.1:1/herald?password=hunter23"])
            .await;
    for secret in ["hunter22", "hunter23"] {
        assert!(!text.contains(secret), "`{secret}` reached the output:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_hold_more_history_or_live_channels_than_its_budget() {
    let h = Herald::with_env(&[
        ("HERALD_TENANT_HISTORY_MAX_BYTES", "1048576"),
        ("HERALD_MAX_LIVE_CHANNELS_PER_TENANT", "5"),
    ])
    .await;
    let greedy = realtime_tenant(&h, "greedy").await;
    let modest = realtime_tenant(&h, "modest").await;
    let data = "x".repeat(60_000);
    for _ in 0..40 {
        greedy.publish("big", json!(data)).await;
    }
    modest.publish("small", json!("kept")).await;
    // The greedy tenant keeps at most its 1 MiB: the newest messages, contiguous.
    let page = greedy.key.get("/v1/tenants/greedy/channels/big/messages?limit=1000").await.expect(200);
    let kept: Vec<u64> =
        page["publications"].as_array().unwrap().iter().map(|p| p["position"].as_u64().unwrap()).collect();
    assert!(!kept.is_empty() && kept.len() < 40, "kept {} of 40", kept.len());
    assert_eq!(*kept.last().unwrap(), 40);
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
    let bytes: usize = page["publications"].as_array().unwrap().iter().map(|p| p.to_string().len()).sum();
    assert!(bytes <= 1 << 20, "{bytes} bytes kept");
    // A resume from before what is kept says so.
    let epoch = page["epoch"].as_str().unwrap();
    let old = greedy
        .key
        .get(&format!("/v1/tenants/greedy/channels/big/messages?since=1&epoch={epoch}"))
        .await
        .expect(200);
    assert_eq!(old["complete"], false);
    // The other tenant is untouched.
    let small = modest.key.get("/v1/tenants/modest/channels/small/messages").await.expect(200);
    assert_eq!(small["publications"][0]["data"], "kept");
    // Live channels, implicit ones included, are capped per tenant: `big` is one of five.
    let token = greedy.token("u", caps()).await;
    let mut ws = h.ws(&token).await;
    for i in 0..4 {
        ws.subscribe(&format!("c{i}")).await;
    }
    let refused = ws.call(json!({"type": "subscribe", "channel": "c4"})).await;
    assert_eq!(
        (refused["code"].as_str(), refused["limit"].as_u64()),
        (Some("quota_exceeded"), Some(5)),
        "{refused}"
    );
    greedy
        .key
        .post("/v1/tenants/greedy/channels/c9/messages", json!({"data": 1}))
        .await
        .problem(403, "quota_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_are_paged_by_bytes() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let data = "y".repeat(60_000);
    for _ in 0..100 {
        t.publish("log", json!(data)).await;
    }
    let page = t.key.get("/v1/tenants/acme/channels/log/messages?limit=1000").await.expect(200);
    let n = page["publications"].as_array().unwrap().len();
    assert!(n < 100 && n > 10, "{n} messages in one page");
    assert_eq!(page["publications"][n - 1]["position"], 100, "the newest page ends at the head");
    let epoch = page["epoch"].as_str().unwrap();
    let forward = t
        .key
        .get(&format!("/v1/tenants/acme/channels/log/messages?since=0&epoch={epoch}&limit=1000"))
        .await
        .expect(200);
    let first = &forward["publications"];
    assert_eq!(first[0]["position"], 1);
    assert!(first.as_array().unwrap().len() < 100, "forward pages are cut too");
}

/// Publish→deliver latencies (ms) of `n` messages from a well-behaved tenant: REST publish,
/// WebSocket receive.
async fn victim_latencies(t: &RealtimeTenant, ws: &mut crate::support::Ws, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        t.publish("calm", json!(i)).await;
        let got = ws.next_of_type("pub").await;
        assert_eq!(got["data"], i, "{got}");
        out.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

/// While one tenant (and its clients) abuse the node in every way the node bounds, another
/// tenant's publish→deliver latency stays within a stated bound: p99 under 250 ms on this
/// 2-core machine (about 3 ms unloaded), and every abuse is refused with its documented answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_by_one_tenant_leaves_another_tenant_served() {
    let h = strict_node(&[
        ("HERALD_MAX_CONNECTIONS_PER_IP", "100"),
        ("HERALD_TENANT_HISTORY_MAX_BYTES", &(4u64 << 20).to_string()),
    ])
    .await;
    let attacker = realtime_tenant(&h, "attacker").await;
    let victim = realtime_tenant(&h, "victim").await;
    h.admin()
        .patch("/v1/tenants/attacker", json!({"limits": {"max_publishes_per_second": 50}}))
        .await
        .expect(200);
    let mut calm = h.ws(&victim.token("calm", caps()).await).await;
    calm.subscribe("calm").await;
    let quiet = victim_latencies(&victim, &mut calm, 20).await;

    let addr = h.base.trim_start_matches("http://").to_owned();
    let token = attacker.token("bad", caps()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut abuse = tokio::task::JoinSet::new();
    // A connection flood from one address, held open: refused past max_connections_per_ip.
    let flood_addr = addr.clone();
    abuse.spawn(async move {
        let mut held = Vec::new();
        for _ in 0..150 {
            if let Ok(s) = connect_from(&flood_addr, [127, 0, 0, 2]).await {
                held.push(s);
            }
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        format!("flood: {} connects", held.len())
    });
    // Slowloris on HTTP and on the SSE endpoint.
    for path in ["/healthz", "/v1/sse?channels=x"] {
        for _ in 0..20 {
            let (addr, stop) = (addr.clone(), stop.clone());
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
            abuse.spawn(async move {
                let Ok(mut s) = connect_from(&addr, [127, 0, 0, 3]).await else {
                    return "slowloris: no connect".into();
                };
                for b in head.bytes() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                "slowloris".into()
            });
        }
    }
    // Stalled readers on every transport.
    for i in 0..5 {
        let mut ws = connect_from(&addr, [127, 0, 0, 4]).await.unwrap();
        let request = format!(
            "GET /v1/ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        ws.write_all(request.as_bytes()).await.unwrap();
        let mut sse = connect_from(&addr, [127, 0, 0, 4]).await.unwrap();
        sse.write_all(
            format!("GET /v1/sse?channels=hog{i}&token={token} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        abuse.spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop((ws, sse));
            "stalled readers".into()
        });
    }
    // Oversized and malformed frames.
    let mut rude = h.ws(&token).await;
    rude.send_text("{not json".into()).await;
    assert_eq!(rude.recv().await["code"], "bad_request");
    let huge = format!(r#"{{"type":"publish","channel":"x","data":"{}"}}"#, "z".repeat(2 << 20));
    // The node may close (1009) while the frame is still being sent.
    let _ = futures_util::SinkExt::send(
        &mut rude.stream,
        tokio_tungstenite::tungstenite::Message::Text(huge.into()),
    )
    .await;
    let closed = rude.closed().await;
    assert!([1009, 1006].contains(&closed.code), "an oversized frame ends the connection: {closed:?}");
    // A publish flood over the tenant's rate, filling its history budget.
    let flooder = attacker.key.clone();
    abuse.spawn(async move {
        let data = "h".repeat(60_000);
        let (mut ok, mut limited) = (0, 0);
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let r = flooder.post("/v1/tenants/attacker/channels/hog/messages", json!({"data": data})).await;
            match r.status.as_u16() {
                200 => ok += 1,
                429 => {
                    assert_eq!(r.body["code"], "rate_limited");
                    limited += 1
                }
                other => panic!("unexpected {other}: {}", r.body),
            }
        }
        assert!(limited > 0, "the flood was never rate limited");
        format!("publish flood: {ok} accepted, {limited} refused")
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = victim_latencies(&victim, &mut calm, 40).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut report = Vec::new();
    while let Some(done) = abuse.join_next().await {
        report.push(done.expect("abuse task"));
    }
    let p99 = |v: &[f64]| v[((v.len() as f64 * 0.99).ceil() as usize).min(v.len()) - 1];
    eprintln!("victim p99 quiet {:.1} ms, under abuse {:.1} ms; {report:?}", p99(&quiet), p99(&loaded));
    assert!(p99(&loaded) < 250.0, "victim p99 {:.1} ms under abuse ({report:?})", p99(&loaded));
    // The attacker's history stays within its budget.
    let page = attacker.key.get("/v1/tenants/attacker/channels/hog/messages?limit=1000").await.expect(200);
    let bytes: usize = page["publications"].as_array().unwrap().iter().map(|p| p.to_string().len()).sum();
    assert!(bytes <= 4 << 20, "{bytes} bytes of history kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_login_is_throttled_per_address() {
    let h = Herald::with_env(&[("HERALD_ADMIN_LOGIN_PER_MINUTE", "3")]).await;
    let anon = h.anonymous();
    for _ in 0..3 {
        anon.post("/v1/auth/login", json!({"token": "wrong-guess-wrong-guess"}))
            .await
            .problem(401, "invalid_credentials");
    }
    // The limit holds for a right guess too, so guessing cannot be confirmed by it.
    let refused =
        anon.post("/v1/auth/login", json!({"token": ADMIN_TOKEN})).await.problem(429, "rate_limited");
    assert_eq!(refused["limit"], 3);
    // Other endpoints are not affected.
    h.admin().get("/v1/tenants").await.expect(200);
}

/// The listening socket's backlog, as the kernel reports it (`ss`: `Send-Q` of a LISTEN socket).
fn listen_backlog(h: &Herald) -> Option<u32> {
    let port = h.base.rsplit(':').next().unwrap();
    let out = std::process::Command::new("ss").args(["-Hltn", &format!("sport = :{port}")]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.split_whitespace().nth(2)?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_configurable_and_larger_than_tokios_default() {
    let configured = Herald::with_env(&[("HERALD_LISTEN_BACKLOG", "2000")]).await;
    let Some(backlog) = listen_backlog(&configured) else {
        eprintln!("skipping: `ss` (iproute2) is not installed");
        return;
    };
    assert_eq!(backlog, 2000);
    let somaxconn: u32 =
        std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    let default = Herald::sqlite().await;
    assert_eq!(listen_backlog(&default), Some(somaxconn.min(4096)), "the default, capped by somaxconn");
    assert!(somaxconn <= 1024 || listen_backlog(&default).unwrap() > 1024);
}
