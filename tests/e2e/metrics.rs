//! `/metrics`: scraped and read with a Prometheus text-format parser (`prometheus-parse`), so
//! a malformed exposition fails here, not in a team's Prometheus.

use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::json;

use crate::support::{Herald, realtime_tenant};

async fn scrape(base: &str) -> Scrape {
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8",
        "Prometheus text format by default"
    );
    let text = resp.text().await.unwrap();
    // Every line is a comment or a sample the parser understood: none silently skipped (a
    // histogram's buckets make one sample, its `_sum` and `_count` one each).
    let samples = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !l.contains("_bucket{") || l.contains("le=\"+Inf\""))
        .count();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a valid exposition");
    assert_eq!(scrape.samples.len(), samples, "{text}");
    for (name, doc) in &scrape.docs {
        assert!(name.starts_with("herald_"), "{name} lacks the prefix");
        assert!(!doc.is_empty(), "{name} has no help");
    }
    scrape
}

fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples.iter().find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
}

/// A counter's or gauge's value (0 when the series is absent).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(s, name, labels).map(|x| &x.value) {
        Some(Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v)) => *v,
        Some(other) => panic!("{name} is not a counter or gauge: {other:?}"),
        None => 0.0,
    }
}

/// How many observations a histogram series holds, across all series matching `labels`.
fn observations(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Metric::Histogram(buckets) => {
                // Cumulative buckets, ending with +Inf holding the count.
                assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "{name} is not cumulative");
                let inf = buckets.last().expect("buckets");
                assert!(inf.less_than.is_infinite(), "{name} lacks +Inf");
                inf.count as u64
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_happened() {
    let h = Herald::with_env(&[("HERALD_METRICS_TENANT_SERIES", "2")]).await;
    let t = realtime_tenant(&h, "acme").await;
    for id in ["bravo", "charlie", "delta"] {
        realtime_tenant(&h, id).await.publish("x", json!(1)).await;
    }
    let token = t.token("ann", json!({"*": ["subscribe", "publish"]})).await;
    let mut ws = h.ws(&token).await;
    ws.subscribe("news").await;
    let mut last = json!(null);
    for i in 0..3 {
        last = t.publish("news", json!(i)).await;
    }
    ws.read_pubs(3).await;
    // A resume that recovers, and one that cannot (another epoch).
    let mut resumer = h.ws(&token).await;
    let ok = resumer
        .call(
            json!({"type": "subscribe", "channel": "news", "since": {"position": 1, "epoch": last["epoch"]}}),
        )
        .await;
    assert_eq!(ok["recovered"], true, "{ok}");
    let lost = resumer
        .call(json!({"type": "subscribe", "channel": "old", "since": {"position": 5, "epoch": "gone"}}))
        .await;
    assert_eq!(lost["recovered"], false, "{lost}");
    // A refusal by a limit, over REST.
    h.admin().patch("/v1/tenants/acme", json!({"limits": {"max_message_bytes": 100}})).await.expect(200);
    t.key
        .post("/v1/tenants/acme/channels/news/messages", json!({"data": "x".repeat(200)}))
        .await
        .problem(413, "message_too_large");
    // Ann is disconnected by the backend: close code 4006 on both sockets.
    t.key.post_empty("/v1/tenants/acme/users/ann/disconnect").await.expect(200);
    assert_eq!(ws.closed().await.code, 4006);
    assert_eq!(resumer.closed().await.code, 4006);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let s = scrape(&h.base).await;
    assert_eq!(value(&s, "herald_messages_published_total", &[]), 6.0);
    assert_eq!(value(&s, "herald_messages_delivered_total", &[]), 3.0);
    assert_eq!(value(&s, "herald_connections", &[("transport", "websocket")]), 0.0);
    assert_eq!(
        value(&s, "herald_connections_closed_total", &[("transport", "websocket"), ("code", "4006")]),
        2.0
    );
    assert_eq!(value(&s, "herald_resumes_total", &[("outcome", "recovered")]), 1.0);
    assert_eq!(value(&s, "herald_resumes_total", &[("outcome", "not_recovered")]), 1.0);
    assert_eq!(value(&s, "herald_limit_refusals_total", &[("code", "message_too_large")]), 1.0);
    assert_eq!(
        observations(&s, "herald_publish_to_deliver_seconds", &[]),
        3,
        "one per message delivered here"
    );
    assert_eq!(
        observations(&s, "herald_http_request_duration_seconds", &[("route", "publish"), ("status", "200")]),
        6
    );
    assert_eq!(
        observations(&s, "herald_http_request_duration_seconds", &[("route", "publish"), ("status", "413")]),
        1
    );
    assert!(observations(&s, "herald_http_request_duration_seconds", &[("route", "createTenant")]) >= 4);
    assert_eq!(value(&s, "herald_database_up", &[]), 1.0);
    assert!(find(&s, "herald_nats_up", &[]).is_none(), "a single node has no NATS");
    assert_eq!(value(&s, "herald_draining", &[]), 0.0);

    // Tenant series: the first two tenants by id, the other two summed.
    let tenants: std::collections::BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| x.metric == "herald_tenant_messages_published_total")
        .map(|x| x.labels.get("tenant").unwrap())
        .collect();
    assert_eq!(tenants.into_iter().collect::<Vec<_>>(), ["_other", "acme", "bravo"]);
    assert_eq!(value(&s, "herald_tenant_messages_published_total", &[("tenant", "acme")]), 3.0);
    assert_eq!(value(&s, "herald_tenant_messages_published_total", &[("tenant", "_other")]), 2.0);

    // OpenMetrics for scrapers that ask for it.
    let om = crate::support::get_with(
        &format!("{}/metrics", h.base),
        ("accept", "application/openmetrics-text; version=1.0.0"),
    )
    .await;
    assert_eq!(om.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    let body = om.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# UNIT herald_publish_to_deliver_seconds seconds"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metrics_report_nats_and_jetstream_publishes() {
    let Some(mut c) = crate::cluster::cluster_with(2, &[]).await else { return };
    for i in 0..3 {
        c.keys[0].post("/v1/tenants/acme/channels/news/messages", json!({"data": i})).await.expect(200);
    }
    let s = scrape(&c.nodes[0].base).await;
    assert_eq!(value(&s, "herald_nats_up", &[]), 1.0);
    assert_eq!(observations(&s, "herald_jetstream_publish_duration_seconds", &[]), 3);
    // The other node stored nothing itself.
    let other = scrape(&c.nodes[1].base).await;
    assert_eq!(observations(&other, "herald_jetstream_publish_duration_seconds", &[]), 0);
    assert_eq!(value(&other, "herald_nats_up", &[]), 1.0);
    // NATS gone: the gauge says so.
    c.nats.kill().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while value(&scrape(&c.nodes[1].base).await, "herald_nats_up", &[]) != 0.0 {
        assert!(std::time::Instant::now() < deadline, "herald_nats_up stayed 1 with NATS stopped");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
