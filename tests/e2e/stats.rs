//! Live statistics and the admin dashboard's static files.

use serde_json::json;

use crate::support::{Herald, Sse, realtime_tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_per_node_and_tenant_and_stream_every_second() {
    let h = Herald::sqlite().await;
    let a = realtime_tenant(&h, "alpha").await;
    let b = realtime_tenant(&h, "beta").await;
    let token = a.token("u", json!({"*": ["subscribe"]})).await;
    let mut ws = h.ws(&token).await;
    ws.subscribe("news").await;
    let _sse = Sse::open(&h.base, &format!("?channels=news&token={token}"), None).await.unwrap();
    for _ in 0..5 {
        a.publish("news", json!(1)).await;
    }
    b.publish("other", json!(1)).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    let stats = h.admin().get("/v1/stats").await.expect(200);
    let node = &stats["nodes"][0];
    assert_eq!(node["connections"]["websocket"], 1);
    assert_eq!(node["connections"]["sse"], 1);
    assert_eq!(node["published_total"], 6);
    assert_eq!(node["delivered_total"], 10, "5 messages × 2 subscribers");
    let tenants = stats["tenants"].as_array().unwrap();
    let alpha = tenants.iter().find(|t| t["tenant"] == "alpha").unwrap();
    assert_eq!(alpha["published_total"], 5);
    assert_eq!(alpha["subscriptions"], 2);

    // A tenant key with stats:read sees only its tenant; without it, nothing.
    let own = a.key.get("/v1/stats").await.expect(200);
    assert!(own["nodes"].as_array().unwrap().is_empty());
    assert!(own["tenants"].as_array().unwrap().iter().all(|t| t["tenant"] == "alpha"));
    let limited = h
        .admin()
        .post("/v1/tenants/alpha/api-keys", json!({"name": "p", "scopes": ["publish"]}))
        .await
        .expect(201);
    h.client(limited["secret"].as_str().unwrap()).get("/v1/stats").await.problem(403, "missing_scope");

    // The stream: an event per second, authenticated by ?token= (EventSource cannot set
    // headers), here with an admin session.
    let session =
        h.anonymous().post("/v1/auth/login", json!({"token": crate::support::ADMIN_TOKEN})).await.expect(200);
    let jwt = session["session_token"].as_str().unwrap();
    let resp = reqwest::get(format!("{}/v1/stats/stream?token={jwt}", h.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = Sse::from_response(resp);
    let first = stream.next_data().await.json();
    let second = stream.next_data().await.json();
    assert!(second["ts"].as_i64().unwrap() > first["ts"].as_i64().unwrap());
    assert_eq!(second["nodes"][0]["connections"]["websocket"], 1);
    let unauth = reqwest::get(format!("{}/v1/stats/stream", h.base)).await.unwrap();
    assert_eq!(unauth.status(), 401);
}

#[tokio::test]
async fn admin_path_serves_the_dashboard_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("outside.txt"), "SECRET").unwrap();
    let dist = root.path().join("dist");
    std::fs::create_dir(&dist).unwrap();
    std::fs::write(dist.join("index.html"), "<!doctype html><title>Herald admin</title>").unwrap();
    std::fs::write(dist.join("app.js"), "console.log(1)").unwrap();
    let h = Herald::start(crate::support::Start {
        admin_token: Some(crate::support::ADMIN_TOKEN.into()),
        env: vec![("HERALD_ADMIN_DIR".into(), dist.display().to_string())],
        ..Default::default()
    })
    .await;
    let get = |path: &str| reqwest::get(format!("{}{path}", h.base));
    let index = get("/admin").await.unwrap();
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    assert!(index.text().await.unwrap().contains("Herald admin"));
    let js = get("/admin/app.js").await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    // Client-side routes fall back to index.html; paths cannot leave the directory.
    assert!(get("/admin/tenants/acme").await.unwrap().text().await.unwrap().contains("Herald admin"));
    for path in [
        "/admin/../outside.txt",
        "/admin/%2e%2e/outside.txt",
        "/admin/..%2foutside.txt",
        "/admin/.%2e/outside.txt",
    ] {
        let body = raw_get(&h.base, path).await;
        assert!(!body.contains("SECRET"), "{path} leaked a file outside the dashboard");
    }
}

/// A GET with the path sent exactly as written (HTTP clients normalise `..`).
async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    socket.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
