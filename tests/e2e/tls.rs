//! HTTPS in the binary (`tls_cert`, `tls_key`): HTTP/2 by ALPN and HTTP/1.1 on request, a
//! bounded handshake, WebSocket over HTTP/1.1, the certificate reloaded on SIGHUP and when its
//! files change (a bad replacement keeps the old one), and 20 browser EventSources over one
//! HTTP/2 connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    ADMIN_TOKEN, BrowserPage, Herald, PageOptions, PageServer, Start, browser_tooling, realtime_tenant,
};

/// A self-signed certificate for 127.0.0.1 and localhost, with its key (PEM).
struct TestCert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn make_cert(name: &str, serial: u64) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let cert = params.self_signed(&key).unwrap();
    TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
}

/// A node serving HTTPS with `cert` (written to files in `dir`), its REST clients trusting it.
struct TlsNode {
    h: Herald,
    cert_path: PathBuf,
    key_path: PathBuf,
    _dir: tempfile::TempDir,
}

async fn tls_node(cert: &TestCert, env: &[(&str, &str)]) -> TlsNode {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let mut all = vec![
        ("HERALD_TLS_CERT".to_owned(), cert_path.display().to_string()),
        ("HERALD_TLS_KEY".to_owned(), key_path.display().to_string()),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let h = Herald::start(Start {
        admin_token: Some(ADMIN_TOKEN.into()),
        env: all,
        trust_pem: Some(cert.cert_pem.clone().into_bytes()),
        ..Default::default()
    })
    .await;
    assert!(h.base.starts_with("https://127.0.0.1:"), "{}", h.base);
    TlsNode { h, cert_path, key_path, _dir: dir }
}

/// A fresh HTTPS client (its own connections) that trusts only `trusted`.
fn client_trusting(trusted: &[&TestCert]) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder().tls_built_in_root_certs(false).tls_info(true);
    for c in trusted {
        b = b.add_root_certificate(reqwest::Certificate::from_der(&c.der).unwrap());
    }
    b
}

/// The certificate a new connection to the node is served (the client trusts all of `known`).
async fn served_cert(h: &Herald, known: &[&TestCert]) -> Vec<u8> {
    let resp =
        client_trusting(known).build().unwrap().get(format!("{}/healthz", h.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    info.peer_certificate().expect("a peer certificate").to_vec()
}

/// Waits (up to 10 s) until new connections are served `expected`.
async fn wait_for_cert(h: &Herald, known: &[&TestCert], expected: &TestCert) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if served_cert(h, known).await == expected.der {
            return;
        }
        assert!(Instant::now() < deadline, "the new certificate was not picked up; log:\n{}", h.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Replaces both files atomically (rename) while keeping their modification times, so only a
/// signal can make the node notice.
fn replace_keeping_mtime(node: &TlsNode, cert_pem: &str, key_pem: &str) {
    for (path, text) in [(&node.cert_path, cert_pem), (&node.key_path, key_pem)] {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(mtime).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

/// Rewrites both files in place (new modification times), the way an ACME client renews.
fn rewrite(node: &TlsNode, cert_pem: &str, key_pem: &str) {
    // Modification times have a granularity; make sure they move.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&node.cert_path, cert_pem).unwrap();
    std::fs::write(&node.key_path, key_pem).unwrap();
}

fn sighup(h: &Herald) {
    let ok = std::process::Command::new("kill").arg("-HUP").arg(h.pid().to_string()).status().unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_negotiates_http2_by_alpn_and_http1_when_asked() {
    let cert = make_cert("herald-a", 1);
    let node = tls_node(&cert, &[]).await;
    let url = format!("{}/healthz", node.h.base);

    let h2 = client_trusting(&[&cert]).build().unwrap().get(&url).send().await.unwrap();
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2, "ALPN h2 is offered and chosen");

    let h1 = client_trusting(&[&cert]).http1_only().build().unwrap().get(&url).send().await.unwrap();
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);

    // The REST API works over HTTP/2 end to end (the helpers' client negotiates h2).
    node.h.admin().post("/v1/tenants", json!({"id": "acme", "name": "acme"})).await.expect(201);
    node.h.admin().get("/v1/tenants/acme").await.expect(200);

    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(url.replacen("https://", "http://", 1))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_over_tls_on_http1() {
    let cert = make_cert("herald-a", 1);
    let node = tls_node(&cert, &[]).await;
    let t = realtime_tenant(&node.h, "acme").await;
    let token = t.token("ann", json!({"*": ["subscribe"]})).await;
    let addr = node.h.base.trim_start_matches("https://").to_owned();
    let tls = tls_connect(&addr, &cert, &[b"h2", b"http/1.1"]).await.expect("TLS handshake");
    // A client offering both may get h2, where no WebSocket is offered (no extended CONNECT):
    // browsers then open an HTTP/1.1 connection for wss:, as this client does next.
    drop(tls);
    let tls = tls_connect(&addr, &cert, &[b"http/1.1"]).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/v1/ws?token={token}"), tls)
        .await
        .expect("WebSocket upgrade over TLS");
    use futures_util::StreamExt;
    let hello = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    let hello: serde_json::Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert_eq!(hello["type"], "connected", "{hello}");
}

/// A TLS connection to `addr` trusting `cert`, offering `alpn`.
async fn tls_connect(
    addr: &str,
    cert: &TestCert,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(cert.der.clone())).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1".to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// How long until the server closes `stream` (reads until EOF or an error), at most `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(mut stream: S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let result = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    result.ok().map(|()| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_completes_the_handshake_is_dropped() {
    let cert = make_cert("herald-a", 1);
    let node = tls_node(&cert, &[("HERALD_HTTP_HEADER_READ_TIMEOUT_SECONDS", "1")]).await;
    let addr = node.h.base.trim_start_matches("https://").to_owned();
    let limit = Duration::from_secs(5);

    // Connects and sends nothing.
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Starts a ClientHello (a record header announcing 512 bytes) and stalls.
    let mut partial = tokio::net::TcpStream::connect(&addr).await.unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    // Speaks plain HTTP to the TLS port.
    let mut garbage = tokio::net::TcpStream::connect(&addr).await.unwrap();
    garbage.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    // Completes TLS with h2 but never sends the HTTP/2 preface.
    let no_preface = tls_connect(&addr, &cert, &[b"h2"]).await.unwrap();
    assert_eq!(no_preface.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Completes TLS with HTTP/1.1 and never sends a request head.
    let no_head = tls_connect(&addr, &cert, &[b"http/1.1"]).await.unwrap();

    let (silent, partial, garbage, no_preface, no_head) = tokio::join!(
        closed_within(silent, limit),
        closed_within(partial, limit),
        closed_within(garbage, limit),
        closed_within(no_preface, limit),
        closed_within(no_head, limit),
    );
    let silent = silent.expect("a silent client is dropped after the handshake timeout");
    assert!(silent >= Duration::from_millis(900), "not before the timeout: {silent:?}");
    partial.expect("a stalled ClientHello is dropped after the handshake timeout");
    let garbage = garbage.expect("plain HTTP on the TLS port is dropped");
    assert!(garbage < Duration::from_millis(900), "at once: {garbage:?}");
    no_preface.expect("an HTTP/2 connection that never sends its preface is dropped");
    no_head.expect("an HTTP/1.1 connection over TLS that never sends a request is dropped");

    // The node still serves.
    let ok = client_trusting(&[&cert]).build().unwrap().get(format!("{}/healthz", node.h.base)).send().await;
    assert_eq!(ok.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_header_timeout() {
    let cert = make_cert("herald-a", 1);
    let node = tls_node(&cert, &[("HERALD_HTTP_HEADER_READ_TIMEOUT_SECONDS", "1")]).await;
    let addr = node.h.base.trim_start_matches("https://").to_owned();
    let tls = tls_connect(&addr, &cert, &[b"h2"]).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(format!("{}/healthz", node.h.base))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    // No request in progress: the server says GOAWAY and closes within about a second.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "the idle connection was not closed");
    assert!(started.elapsed() >= Duration::from_millis(800), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_reloaded_on_sighup_and_when_its_files_change() {
    let a = make_cert("herald-a", 1);
    let b = make_cert("herald-b", 2);
    let c = make_cert("herald-c", 3);
    let d = make_cert("herald-d", 4);
    let known = [&a, &b, &c, &d];
    // A long header timeout so that the first client's connection outlives the reloads.
    let node = tls_node(&a, &[("HERALD_HTTP_HEADER_READ_TIMEOUT_SECONDS", "120")]).await;
    let h = &node.h;
    assert_eq!(served_cert(h, &known).await, a.der);
    // A client trusting only A, with its connection open.
    let old = client_trusting(&[&a]).build().unwrap();
    let url = format!("{}/healthz", h.base);
    assert_eq!(old.get(&url).send().await.unwrap().status(), 200);

    // SIGHUP: the files are replaced with their modification times kept, so only the signal
    // can make the node read them.
    replace_keeping_mtime(&node, &b.cert_pem, &b.key_pem);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served_cert(h, &known).await, a.der, "no reload without a signal or a change");
    sighup(h);
    wait_for_cert(h, &known, &b).await;
    assert!(h.log().contains("reason=\"SIGHUP\""), "{}", h.log());
    // The open connection goes on with A (a new one would fail: the client trusts only A).
    let again = old.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    let info = again.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    assert_eq!(info.peer_certificate().unwrap(), &a.der[..]);
    // A client trusting only B connects.
    let fresh = client_trusting(&[&b]).build().unwrap().get(&url).send().await.unwrap();
    assert_eq!(fresh.status(), 200);

    // Files rewritten, no signal: the change is noticed by itself.
    rewrite(&node, &c.cert_pem, &c.key_pem);
    wait_for_cert(h, &known, &c).await;

    // A bad replacement keeps C: garbage, then a certificate with another's key; each noticed
    // both by the change of the files and by SIGHUP.
    rewrite(&node, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", &c.key_pem);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sighup(h);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_cert(h, &known).await, c.der, "a bad certificate file keeps the previous one");
    rewrite(&node, &d.cert_pem, &c.key_pem);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sighup(h);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_cert(h, &known).await, c.der, "a key that does not match keeps the previous pair");
    let log = h.log();
    assert!(log.matches("TLS certificate not reloaded").count() >= 4, "{log}");
    assert!(log.contains("does not match the certificate"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "no key material in the log");

    // Fixed: the matching key arrives, and D is served.
    rewrite(&node, &d.cert_pem, &d.key_pem);
    wait_for_cert(h, &known, &d).await;

    // A new client trusting only A gives up the handshake now.
    assert!(client_trusting(&[&a]).build().unwrap().get(&url).send().await.is_err());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The reloads and the handshakes, as /metrics counts them.
    let metrics =
        client_trusting(&[&d]).build().unwrap().get(format!("{}/metrics", h.base)).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    let count = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(count("herald_tls_certificate_reloads_total{outcome=\"ok\"}"), 3, "B, C and D");
    assert!(count("herald_tls_certificate_reloads_total{outcome=\"failed\"}") >= 4);
    assert!(count("herald_tls_connections_total{protocol=\"h2\"}") >= 4);
    assert!(count("herald_tls_handshake_failures_total{reason=\"error\"}") >= 1);
}

#[tokio::test]
async fn the_tls_files_are_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert("herald-a", 1);
    let b = make_cert("herald-b", 2);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (cert, key, other_key) =
        (write("cert.pem", &a.cert_pem), write("key.pem", &a.key_pem), write("b.pem", &b.key_pem));
    let garbage = write("garbage.pem", "hello\n");
    let fails = |args: Vec<String>, env: Vec<(&str, String)>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve").arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(dir.path().join("data"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")) {
            cmd.env_remove(k);
        }
        cmd.args(args).envs(env).kill_on_drop(true);
        async move {
            let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
                .await
                .expect("the node refuses to start instead of running")
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{out:?}");
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let err = fails(vec!["--tls-cert".into(), cert.clone()], vec![]).await;
    assert!(err.contains("`tls_cert`") && err.contains("--tls-cert") && err.contains("tls_key"), "{err}");
    let err = fails(vec![], vec![("HERALD_TLS_KEY", key.clone())]).await;
    assert!(err.contains("`tls_key`") && err.contains("HERALD_TLS_KEY"), "{err}");
    let err =
        fails(vec!["--tls-cert".into(), garbage.clone(), "--tls-key".into(), key.clone()], vec![]).await;
    assert!(err.contains("`tls_cert`") && err.contains("no PEM certificate"), "{err}");
    let err = fails(vec!["--tls-cert".into(), cert.clone(), "--tls-key".into(), garbage], vec![]).await;
    assert!(err.contains("`tls_key`") && err.contains("no PEM private key"), "{err}");
    let err = fails(vec!["--tls-cert".into(), cert.clone(), "--tls-key".into(), other_key], vec![]).await;
    assert!(err.contains("`tls_key`") && err.contains("does not match"), "{err}");
    let err =
        fails(vec!["--tls-cert".into(), "/nonexistent/cert.pem".into(), "--tls-key".into(), key], vec![])
            .await;
    assert!(err.contains("`tls_cert`") && err.contains("cannot read /nonexistent/cert.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_browser_event_sources_share_one_http2_connection() {
    if browser_tooling().is_none() {
        return;
    }
    const STREAMS: usize = 20;
    let cert = make_cert("herald-a", 1);
    // A long header timeout: the test's REST connection stays open and is reused throughout.
    let node = tls_node(
        &cert,
        &[
            ("HERALD_LOG_LEVEL", "info,herald::listener=debug"),
            ("HERALD_HTTP_HEADER_READ_TIMEOUT_SECONDS", "120"),
        ],
    )
    .await;
    let h = &node.h;
    let t = realtime_tenant(h, "acme").await;
    let token = t.token("browser", json!({"*": ["subscribe"]})).await;
    let stream_url = format!("{}/v1/sse?channels=alpha&token={token}", h.base);
    // The page is served over plain HTTP from its own origin; its EventSources go to Herald
    // over HTTPS. Over HTTP/1.1 Chromium would open at most 6 connections to Herald and the
    // 7th stream on would never open: all 20 receiving is possible only multiplexed. The first
    // stream opens alone (20 at once make Chromium race up to 6 connections before it learns
    // the protocol), the other 19 once it is subscribed.
    let html = format!(
        r#"<!doctype html><meta charset="utf-8"><title>20 EventSources</title><script>
        const open = (i) => {{
          const source = new EventSource({url});
          source.onmessage = (e) => {{
            const frame = JSON.parse(e.data);
            window.report(JSON.stringify({{stream: i, type: frame.type, data: frame.data}}));
            // The first stream's connection is up: the others join it.
            if (i === 0 && frame.type === 'subscribed') {{
              for (let j = 1; j < {STREAMS}; j++) open(j);
            }}
          }};
          source.onerror = () => window.report(JSON.stringify({{stream: i, error: source.readyState}}));
        }};
        open(0);
        </script>"#,
        url = serde_json::to_string(&stream_url).unwrap(),
    );
    let page = PageServer::start(html).await;
    h.admin().patch("/v1/tenants/acme", json!({"allowed_origins": [page.url]})).await.expect(200);
    let connections = |log: &str, protocol: &str| {
        log.lines()
            .filter(|l| l.contains("TLS connection") && l.contains(&format!("protocol=\"{protocol}\"")))
            .count()
    };
    let before = h.log();
    let (h2_before, h1_before) = (connections(&before, "h2"), connections(&before, "http/1.1"));
    let Some(mut browser) =
        BrowserPage::open_with(&page.url, None, PageOptions { ignore_https_errors: true }).await
    else {
        return;
    };

    let mut subscribed = std::collections::BTreeSet::new();
    while subscribed.len() < STREAMS {
        let v = browser.next().await;
        assert!(v["error"].is_null(), "{v}");
        if v["type"] == "subscribed" {
            subscribed.insert(v["stream"].as_u64().unwrap());
        }
    }
    t.publish("alpha", json!({"hello": "all"})).await;
    let mut received = std::collections::BTreeSet::new();
    while received.len() < STREAMS {
        let v = browser.next().await;
        if v["type"] == "pub" {
            assert_eq!(v["data"], json!({"hello": "all"}), "{v}");
            received.insert(v["stream"].as_u64().unwrap());
        }
    }

    let log = h.log();
    let (h2, h1) = (connections(&log, "h2") - h2_before, connections(&log, "http/1.1") - h1_before);
    eprintln!("connections while the page ran: {h2} over h2, {h1} over http/1.1");
    assert_eq!(h1, 0, "no HTTP/1.1 connection: {log}");
    // The test's REST client reuses the connection it had: this one is the page's.
    assert_eq!(h2, 1, "{STREAMS} streams over one HTTP/2 connection: {log}");
    browser.close().await;
}
