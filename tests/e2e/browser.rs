//! A real browser's own EventSource: it receives, loses its connection, reconnects by itself
//! with `Last-Event-ID`, and gets exactly what it missed.

use serde_json::{Value, json};

use crate::support::{BrowserPage, CutProxy, Herald, PageServer, realtime_tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_event_source_resumes_after_a_dropped_connection() {
    if crate::support::browser_tooling().is_none() {
        return;
    }
    let h = Herald::with_env(&[("HERALD_SSE_RETRY_MS", "1500")]).await;
    let t = realtime_tenant(&h, "acme").await;
    let proxy = CutProxy::start(&h.base).await;
    let token = t.token("browser", json!({"*": ["subscribe"]})).await;
    let stream_url = format!("{}/v1/sse?channels=alpha,beta&token={token}", proxy.url());
    let html = format!(
        r#"<!doctype html><meta charset="utf-8"><title>EventSource</title><script>
        const source = new EventSource({url});
        source.onopen = () => window.report(JSON.stringify({{open: true}}));
        source.onmessage = (e) => window.report(JSON.stringify({{id: e.lastEventId, data: JSON.parse(e.data)}}));
        source.onerror = () => window.report(JSON.stringify({{error: source.readyState}}));
        </script>"#,
        url = serde_json::to_string(&stream_url).unwrap()
    );
    let page = PageServer::start(html).await;
    h.admin().patch("/v1/tenants/acme", json!({"allowed_origins": [page.url]})).await.expect(200);
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let Some(mut browser) = BrowserPage::open(&page.url, Some(&shots.join("eventsource.png"))).await else {
        return;
    };

    // Reads page reports until `n` publications arrived; returns them and everything seen.
    async fn pubs(browser: &mut BrowserPage, n: usize) -> (Vec<Value>, Vec<Value>) {
        let (mut got, mut all) = (Vec::new(), Vec::new());
        while got.len() < n {
            let v = browser.next().await;
            all.push(v.clone());
            if v["data"]["type"] == "pub" {
                got.push(v);
            }
        }
        (got, all)
    }

    // Wait until both subscriptions are confirmed, then publish.
    let mut confirmed = 0;
    while confirmed < 2 {
        let v = browser.next().await;
        if v["data"]["type"] == "subscribed" {
            confirmed += 1;
        }
    }
    for i in 1..=3 {
        t.publish(if i % 2 == 0 { "beta" } else { "alpha" }, json!({"n": i})).await;
    }
    let (before, _) = pubs(&mut browser, 3).await;
    assert!(before.iter().all(|e| !e["id"].as_str().unwrap().is_empty()), "every publication has an id");

    // The network drops; messages keep coming while the browser is away.
    proxy.cut();
    for i in 4..=7 {
        t.publish(if i % 2 == 0 { "beta" } else { "alpha" }, json!({"n": i})).await;
    }
    // The browser reconnects by itself (after `retry:`), sending Last-Event-ID.
    let (missed, seen) = pubs(&mut browser, 4).await;
    assert!(seen.iter().any(|v| v["error"].is_number()), "the page saw the drop: {seen:?}");
    let recovered: Vec<&Value> = seen.iter().filter(|v| v["data"]["type"] == "subscribed").collect();
    assert_eq!(recovered.len(), 2, "{seen:?}");
    assert!(recovered.iter().all(|v| v["data"]["recovered"] == true), "{recovered:?}");
    // Exactly the missed messages, in order within each channel (replay goes channel by channel).
    let of = |channel: &str| -> Vec<u64> {
        missed
            .iter()
            .filter(|e| e["data"]["channel"] == channel)
            .map(|e| e["data"]["data"]["n"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(of("alpha"), vec![5, 7]);
    assert_eq!(of("beta"), vec![4, 6]);
    let last_before = before.last().unwrap()["id"].as_str().unwrap();
    let heads = proxy.heads.lock().unwrap().clone();
    assert!(
        heads.iter().any(|h| h
            .to_ascii_lowercase()
            .contains(&format!("last-event-id: {}", last_before.to_ascii_lowercase()))),
        "the reconnect carried Last-Event-ID of the last event received"
    );

    // And live delivery continues with no duplicate.
    t.publish("alpha", json!({"n": 8})).await;
    let (live, _) = pubs(&mut browser, 1).await;
    assert_eq!(live[0]["data"]["data"]["n"], 8);
    browser.close().await;
}
