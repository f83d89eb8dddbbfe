//! The dashboard travels inside the binary, pre-compressed, and JSON answers are compressed
//! when the client accepts it; event streams never are.

use std::io::Read;

use serde_json::{Value, json};

use crate::support::{Herald, Sse, realtime_tenant};

fn dist() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../admin-ui/dist")
}

async fn get(url: &str, accept_encoding: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(e) = accept_encoding {
        request = request.header("accept-encoding", e);
    }
    request.send().await.unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_its_own_dashboard_compressed_from_any_directory() {
    // The node runs in a temporary directory of its own: nothing of the repository around it.
    let h = Herald::sqlite().await;
    let wasm = dist().join("pkg/admin_ui_bg.wasm");
    if !dist().join("index.html").is_file() {
        let page = get(&format!("{}/admin/", h.base), None).await;
        assert_eq!(page.status(), 503);
        assert!(page.text().await.unwrap().contains("left out of this build"));
        eprintln!("the dashboard was not built: only the page saying so is checked");
        return;
    }
    let page = get(&format!("{}/admin/tenants/acme", h.base), None).await;
    assert_eq!(page.status(), 200, "client routes get index.html");
    assert!(page.text().await.unwrap().contains("<title>"), "the dashboard's page");

    let raw = std::fs::read(&wasm).unwrap();
    let url = format!("{}/admin/pkg/admin_ui_bg.wasm", h.base);
    let plain = get(&url, None).await;
    assert_eq!(plain.headers().get("content-type").unwrap(), "application/wasm");
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.bytes().await.unwrap().len(), raw.len());

    let br = get(&url, Some("gzip, deflate, br")).await;
    assert_eq!(br.headers().get("content-encoding").unwrap(), "br");
    assert_eq!(br.headers().get("vary").unwrap(), "accept-encoding");
    let br = br.bytes().await.unwrap();
    assert_eq!(unbrotli(&br), raw, "brotli gives the file back");

    let gz = get(&url, Some("gzip")).await;
    assert_eq!(gz.headers().get("content-encoding").unwrap(), "gzip");
    let gz = gz.bytes().await.unwrap();
    assert_eq!(gunzip(&gz), raw, "gzip gives the file back");
    // A refused coding is not used.
    let no_br = get(&url, Some("br;q=0, gzip")).await;
    assert_eq!(no_br.headers().get("content-encoding").unwrap(), "gzip");
    assert!(
        br.len() < gz.len() && gz.len() < raw.len() / 2,
        "br {} < gzip {} < raw {}",
        br.len(),
        gz.len(),
        raw.len()
    );
    eprintln!("admin_ui_bg.wasm: {} bytes, gzip {}, brotli {}", raw.len(), gz.len(), br.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_answers_are_compressed_when_accepted_and_streams_never_are() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    for i in 0..30 {
        h.admin()
            .post(
                "/v1/tenants",
                json!({"id": format!("tenant-{i:02}"), "name": format!("Tenant number {i}")}),
            )
            .await
            .expect(201);
    }
    let url = format!("{}/v1/tenants?limit=100", h.base);
    let admin = |accept: Option<&str>| {
        let mut r = reqwest::Client::new().get(&url).bearer_auth(crate::support::ADMIN_TOKEN);
        if let Some(a) = accept {
            r = r.header("accept-encoding", a);
        }
        r.send()
    };
    let plain = admin(None).await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    assert!(plain.len() > 1024, "a list worth compressing: {} bytes", plain.len());

    let gz = admin(Some("gzip")).await.unwrap();
    assert_eq!(gz.headers().get("content-encoding").unwrap(), "gzip");
    assert!(gz.headers().get("content-type").unwrap().to_str().unwrap().starts_with("application/json"));
    let gz = gz.bytes().await.unwrap();
    let unpacked: Value = serde_json::from_slice(&gunzip(&gz)).unwrap();
    assert_eq!(unpacked, serde_json::from_slice::<Value>(&plain).unwrap());
    let br = admin(Some("br")).await.unwrap();
    assert_eq!(br.headers().get("content-encoding").unwrap(), "br");
    let br = br.bytes().await.unwrap();
    assert_eq!(unbrotli(&br), plain.to_vec());
    eprintln!(
        "GET /v1/tenants ({} tenants): {} bytes, gzip {}, brotli {}",
        31,
        plain.len(),
        gz.len(),
        br.len()
    );

    // A small answer is sent as it is.
    let small = reqwest::Client::new()
        .get(format!("{}/v1/tenants/acme", h.base))
        .bearer_auth(crate::support::ADMIN_TOKEN)
        .header("accept-encoding", "br, gzip")
        .send()
        .await
        .unwrap();
    assert!(small.headers().get("content-encoding").is_none());

    // An event stream stays as it is, whatever the client accepts.
    let token = t.token("u", json!({"*": ["subscribe"]})).await;
    let stream = crate::support::get_with(
        &format!("{}/v1/sse?channels=a&token={token}", h.base),
        ("accept-encoding", "br, gzip"),
    )
    .await;
    assert!(stream.headers().get("content-encoding").is_none());
    let mut sse = Sse::from_response(stream);
    assert_eq!(sse.next_data().await.json()["type"], "connected");
}
