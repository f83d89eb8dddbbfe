//! Bad input gets a precise problem response, never a 500, and changes nothing.

use serde_json::json;

use crate::support::Herald;

#[tokio::test]
async fn malformed_and_invalid_bodies() {
    let h = Herald::sqlite().await;
    let admin = h.admin();
    admin.post("/v1/tenants", json!({"id": "acme", "name": "Acme"})).await.expect(201);

    let raw = |body: &str| body.as_bytes().to_vec();
    let p = admin
        .post_bytes("/v1/tenants", "application/json", raw("{\"id\": "))
        .await
        .problem(400, "malformed_json");
    assert!(p["detail"].as_str().unwrap().contains("line 1"));
    admin.post_bytes("/v1/tenants", "application/json", vec![]).await.problem(400, "malformed_json");
    admin
        .post_bytes("/v1/tenants", "application/json", vec![0xff, 0xfe, 0x00])
        .await
        .problem(400, "malformed_json");
    admin.post_bytes("/v1/tenants", "text/plain", raw("{}")).await.problem(415, "unsupported_media_type");

    let p = admin
        .post("/v1/tenants", json!({"id": "x", "name": "X", "colour": "red"}))
        .await
        .problem(400, "unknown_field");
    assert_eq!(p["field"], "colour");
    let p = admin
        .post("/v1/tenants", json!({"id": "x", "name": "X", "limits": {"max_conections": 1}}))
        .await
        .problem(400, "unknown_field");
    assert_eq!(p["field"], "limits.max_conections");
    let p = admin.post("/v1/tenants", json!({"name": "X"})).await.problem(400, "missing_field");
    assert_eq!(p["field"], "id");
    let p = admin.post("/v1/tenants", json!({"id": 7, "name": "X"})).await.problem(400, "invalid_type");
    assert_eq!(p["field"], "id");
    let p = admin
        .post("/v1/tenants", json!({"id": "x", "name": "X", "limits": {"max_connections": 1u64 << 40}}))
        .await
        .problem(400, "invalid_type");
    assert_eq!(p["field"], "limits.max_connections");
    admin.post("/v1/tenants", json!([1, 2])).await.problem(400, "invalid_type");

    // Too long, wrong characters, odd Unicode.
    for (id, name) in [
        ("a".repeat(64), "ok".to_owned()),
        ("UPPER".into(), "ok".into()),
        ("-dash".into(), "ok".into()),
        ("emoji-\u{1F600}".into(), "ok".into()),
    ] {
        let p =
            admin.post("/v1/tenants", json!({"id": id, "name": name})).await.problem(422, "invalid_value");
        assert_eq!(p["field"], "id");
    }
    for name in ["x".repeat(201), "a\u{0}b".into(), "  ".into(), "bell\u{7}".into()] {
        let p =
            admin.post("/v1/tenants", json!({"id": "ok", "name": name})).await.problem(422, "invalid_value");
        assert_eq!(p["field"], "name");
    }
    // A lone surrogate escape is not valid Unicode; the error names the field that holds it.
    let p = admin
        .post_bytes("/v1/tenants", "application/json", raw(r#"{"id": "ok", "name": "\ud800"}"#))
        .await
        .problem(400, "invalid_type");
    assert_eq!(p["field"], "name");
    // Deep nesting is refused without exhausting the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    admin.post_bytes("/v1/tenants", "application/json", deep.into_bytes()).await.problem(400, "invalid_type");
    let deep = format!("{{\"id\": \"x\", \"name\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let p = admin
        .post_bytes("/v1/tenants", "application/json", deep.into_bytes())
        .await
        .problem(400, "invalid_type");
    assert_eq!(p["field"], "name");

    for channel in ["has space", "slash/y", "comma,y", "star*", "ünï", &"c".repeat(201), "\u{202e}rtl"] {
        let p = admin
            .post("/v1/tenants/acme/channels", json!({"name": channel}))
            .await
            .problem(422, "invalid_value");
        assert_eq!(p["field"], "name", "{channel}");
    }
    let p = admin
        .post("/v1/tenants/acme/namespaces", json!({"name": "n".repeat(65)}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "name");
    let p = admin
        .post("/v1/tenants", json!({"id": "ok", "name": "OK", "allowed_origins": ["javascript:alert(1)"]}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(p["field"], "allowed_origins[0]");

    // Duplicates.
    admin.post("/v1/tenants", json!({"id": "acme", "name": "Again"})).await.problem(409, "tenant_exists");
    admin.post("/v1/tenants/acme/namespaces", json!({"name": "chat"})).await.expect(201);
    admin.post("/v1/tenants/acme/namespaces", json!({"name": "chat"})).await.problem(409, "namespace_exists");
    admin.post("/v1/tenants/acme/channels", json!({"name": "news"})).await.expect(201);
    admin.post("/v1/tenants/acme/channels", json!({"name": "news"})).await.problem(409, "channel_exists");

    // Nothing that was refused was stored, and what was accepted is intact.
    let tenants = admin.get("/v1/tenants").await.expect(200);
    assert_eq!(tenants["items"].as_array().unwrap().len(), 1);
    assert_eq!(tenants["items"][0]["name"], "Acme");
    assert!(!h.log().contains("internal error"), "no request produced a 500:\n{}", h.log());
}

#[tokio::test]
async fn oversized_bodies_and_odd_paths() {
    let h = Herald::sqlite().await;
    let admin = h.admin();
    let big = json!({"id": "big", "name": "x".repeat(2 * 1024 * 1024)}).to_string().into_bytes();
    let p = admin.post_bytes("/v1/tenants", "application/json", big).await.problem(413, "payload_too_large");
    assert_eq!(p["limit"], 1024 * 1024);

    // Chunked bodies (no Content-Length) are cut off at the same limit.
    let status = chunked_post(&h.base, "/v1/tenants", 40, 64 * 1024).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    admin.get("/v1/nothing-here").await.problem(404, "route_not_found");
    // Path segments that are not UTF-8 are malformed requests.
    admin.get("/v1/tenants/%FF%FE").await.problem(400, "bad_request");
    admin.get("/v1/tenants/..%2F..%2Fetc").await.problem(404, "tenant_not_found");
    admin.get("/v1/tenants?limit=abc").await.problem(400, "invalid_parameter");
    admin.raw(reqwest::Method::PUT, "/v1/tenants", None).await.problem(405, "method_not_allowed");
    assert!(!h.log().contains("internal error"));
}

/// Sends `chunks` chunks of `size` spaces with chunked transfer encoding over a raw socket;
/// returns the status line.
async fn chunked_post(base: &str, path: &str, chunks: usize, size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        crate::support::ADMIN_TOKEN
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; size];
    for _ in 0..chunks {
        // The server may answer and close before every chunk is sent.
        if socket.write_all(format!("{size:x}\r\n").as_bytes()).await.is_err()
            || socket.write_all(&chunk).await.is_err()
            || socket.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_owned()
}
