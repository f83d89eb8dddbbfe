//! The browser SDK (`clients/js`) in real headless Chromium against the real binary: fallback
//! from a refused WebSocket to SSE and from refused SSE to long polling (and back up), no loss
//! and no duplicate across a server restart on each transport and when a cluster node is
//! killed, token refresh without a reconnect, jittered bounded reconnect delays, the
//! not-recovered path reaching the app, and long-poll sessions ended as soon as the SDK leaves
//! them.
//!
//! Each test serves a page that runs the SDK's bundle (`clients/js/dist/herald.iife.js`, built
//! by `cargo xtask test`) with the clients the test describes and reports every state change,
//! subscription event and publication; the test drives the server side and checks the reports.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, BrowserPage, CutProxy, Herald, NatsServer, PageServer, Start, publish_continuously,
    realtime_tenant,
};

/// The SDK's browser bundle, or `None` with a notice (a failure under `CI=true`).
fn bundle() -> Option<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js/dist/herald.iife.js");
    match std::fs::read_to_string(&path) {
        Ok(js) => Some(js),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{} is missing: cargo xtask test builds it (npm in clients/js)", path.display())
        }
        Err(_) => {
            eprintln!("skipping SDK test: build clients/js first (cargo xtask test does, with npm)");
            None
        }
    }
}

/// A page running one SDK client per entry of `clients`: `{name, options, channels, tokens?,
/// then?}` (`tokens`: handed out one per call of the token callback, the last one repeatedly;
/// `then`: later steps, a subscription, unsubscribing from all, or `disconnect()`, each after
/// some milliseconds).
struct SdkPage {
    page: BrowserPage,
    _server: PageServer,
    seen: Vec<Value>,
}

const HARNESS: &str = r#"
const report = (o) => window.report(JSON.stringify({ t: Date.now(), ...o }));
window.clients = {};
for (const c of CONFIG.clients) {
  const options = { ...c.options };
  if (c.tokens) {
    let i = 0;
    options.token = () => c.tokens[Math.min(i++, c.tokens.length - 1)];
  }
  const client = new HeraldClient.Herald(options);
  client.on('state', (s) => report({ client: c.name, state: s }));
  client.on('error', (e) => report({ client: c.name, clientError: e.code, message: e.message }));
  for (const channel of c.channels) {
    const sub = client.subscribe(channel);
    sub.on('publication', (p) => report({ client: c.name, pub: { channel: p.channel, position: p.position, epoch: p.epoch, data: p.data } }));
    sub.on('subscribed', (e) => report({ client: c.name, subscribed: channel, event: e }));
    sub.on('error', (e) => report({ client: c.name, subError: channel, code: e.code }));
  }
  window.clients[c.name] = client;
  // Scheduled by the test: `then: [{after: ms, subscribe: channel | unsubscribeAll: true | disconnect: true}]`.
  for (const step of c.then || []) {
    setTimeout(() => {
      if (step.subscribe) {
        const sub = client.subscribe(step.subscribe);
        sub.on('subscribed', (e) => report({ client: c.name, subscribed: step.subscribe, event: e }));
      }
      if (step.unsubscribeAll) {
        for (const s of client.subscriptions()) client.unsubscribe(s.channel);
        report({ client: c.name, unsubscribedAll: true });
      }
      if (step.disconnect) {
        client.disconnect();
        report({ client: c.name, disconnected: true });
      }
    }, step.after);
  }
}
"#;

impl SdkPage {
    /// Opens the page; `None` when the browser or the bundle is not there (skipped).
    async fn open(h: &Herald, tenant: &str, config: Value) -> Option<SdkPage> {
        crate::support::browser_tooling()?;
        let js = bundle()?;
        let html = format!(
            "<!doctype html><meta charset=\"utf-8\"><title>SDK</title><script>{js}</script>\
             <script>const CONFIG = {config};{HARNESS}</script>"
        );
        let server = PageServer::start(html).await;
        h.admin()
            .patch(&format!("/v1/tenants/{tenant}"), json!({"allowed_origins": [server.url]}))
            .await
            .expect(200);
        let page = BrowserPage::open(&server.url, None).await?;
        Some(SdkPage { page, _server: server, seen: Vec::new() })
    }

    /// Reads reports until `done` holds for what was seen so far, for at most `within`.
    async fn until(&mut self, within: Duration, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + within;
        while !done(&self.seen) {
            let left = deadline.checked_duration_since(Instant::now()).unwrap_or_default();
            match tokio::time::timeout(left, self.page.next()).await {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!("timed out waiting for {what}; seen: {:#?}", self.tail()),
            }
        }
    }

    fn tail(&self) -> &[Value] {
        &self.seen[self.seen.len().saturating_sub(40)..]
    }

    /// The `data.n` of the publications client `name` got on `channel`, in order.
    fn received(&self, name: &str, channel: &str) -> Vec<u64> {
        self.seen
            .iter()
            .filter(|v| v["client"] == name && v["pub"]["channel"] == channel)
            .map(|v| v["pub"]["data"]["n"].as_u64().unwrap())
            .collect()
    }

    fn states<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.seen.iter().filter(move |v| v["client"] == name && v.get("state").is_some()).map(|v| &v["state"])
    }
}

fn connected_on(seen: &[Value], name: &str, transport: &str) -> bool {
    seen.iter().any(|v| {
        v["client"] == name && v["state"]["state"] == "connected" && v["state"]["transport"] == transport
    })
}

fn got(seen: &[Value], name: &str, n: u64) -> bool {
    seen.iter().any(|v| v["client"] == name && v["pub"]["data"]["n"] == n)
}

fn caps() -> Value {
    json!({"*": ["subscribe", "publish", "history", "presence"]})
}

/// Fast reconnects for tests.
fn quick(url: Value, extra: Value) -> Value {
    let mut o = json!({"url": url, "minReconnectDelay": 50, "maxReconnectDelay": 300, "fallbackAfter": 1, "upgradeAfter": 0});
    for (k, v) in extra.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_falls_back_from_websocket_to_sse_to_long_polling_and_moves_back_up() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("ann", caps()).await;
    let proxy = CutProxy::start(&h.base).await;
    proxy.refuse(&["/v1/ws"]);
    let config = json!({"clients": [{
        "name": "a", "channels": ["feed"], "tokens": [token],
        "options": quick(json!(proxy.url()), json!({"upgradeAfter": 2500})),
    }]});
    let Some(mut page) = SdkPage::open(&h, "acme", config).await else { return };

    // The WebSocket upgrade is refused: the SDK lands on SSE.
    page.until(Duration::from_secs(20), "SSE", |s| connected_on(s, "a", "sse")).await;
    page.until(Duration::from_secs(10), "subscribed", |s| s.iter().any(|v| v["subscribed"] == "feed")).await;
    for n in 1..=3 {
        t.publish("feed", json!({"n": n})).await;
    }
    page.until(Duration::from_secs(10), "1-3 over SSE", |s| got(s, "a", 3)).await;

    // Event streams are refused too, and the stream drops: long polling.
    proxy.refuse(&["/v1/ws", "/v1/sse"]);
    proxy.cut();
    for n in 4..=6 {
        t.publish("feed", json!({"n": n})).await;
    }
    page.until(Duration::from_secs(20), "long polling", |s| connected_on(s, "a", "longpoll")).await;
    page.until(Duration::from_secs(10), "4-6 over long polling", |s| got(s, "a", 6)).await;

    // Everything passes again: the SDK moves back up to the WebSocket by itself.
    proxy.refuse(&[]);
    page.until(Duration::from_secs(20), "back on the WebSocket", |s| {
        s.iter()
            .rev()
            .find(|v| v["client"] == "a" && v["state"]["state"] == "connected")
            .is_some_and(|v| v["state"]["transport"] == "websocket")
            && connected_on(s, "a", "longpoll")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 7..=9 {
        t.publish("feed", json!({"n": n})).await;
    }
    page.until(Duration::from_secs(10), "7-9 over the WebSocket", |s| got(s, "a", 9)).await;
    assert_eq!(page.received("a", "feed"), (1..=9).collect::<Vec<_>>(), "each message once, in order");
    let transports: Vec<&str> = page
        .states("a")
        .filter(|s| s["state"] == "connected")
        .map(|s| s["transport"].as_str().unwrap())
        .collect();
    assert_eq!(transports.first(), Some(&"sse"), "{transports:?}");
    assert!(!page.seen.iter().any(|v| v.get("subError").is_some()), "{:#?}", page.tail());
    page.page.close().await;
}

/// Three clients, one per transport, on one channel while a publisher sends continuously.
fn per_transport(url: Value, tokens: Value) -> Value {
    let client = |name: &str, transport: &str| json!({"name": name, "channels": ["feed"], "tokens": tokens, "options": quick(url.clone(), json!({"transports": [transport]}))});
    json!({"clients": [client("ws", "websocket"), client("sse", "sse"), client("poll", "longpoll")]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_during_a_continuous_publish_loses_and_repeats_nothing_on_any_transport() {
    let Some(nats) = NatsServer::start().await else { return };
    let start = Start {
        admin_token: Some(ADMIN_TOKEN.into()),
        extra_args: vec!["--nats-url".into(), nats.url.clone()],
        env: vec![("HERALD_RECONNECT_SPREAD_MS".into(), "300".into())],
        ..Default::default()
    };
    let mut h = Herald::start(start.clone()).await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("ann", caps()).await;
    let proxy = CutProxy::start(&h.base).await;
    let Some(mut page) = SdkPage::open(&h, "acme", per_transport(json!(proxy.url()), json!([token]))).await
    else {
        return;
    };
    let names = ["ws", "sse", "poll"];
    page.until(Duration::from_secs(20), "three subscriptions", |s| {
        names.iter().all(|n| s.iter().any(|v| v["client"] == *n && v["subscribed"] == "feed"))
    })
    .await;

    let bases = std::sync::Arc::new(std::sync::Mutex::new(vec![h.base.clone()]));
    let total = 60;
    let sending = publish_continuously(
        bases.clone(),
        t.key.token.clone().unwrap(),
        "feed",
        Some(total),
        Default::default(),
        Duration::from_millis(40),
    );
    page.until(Duration::from_secs(20), "the first messages", |s| names.iter().all(|n| got(s, n, 10))).await;
    // The node restarts (SIGTERM: it drains), on a new port behind the same address.
    h.stop().await;
    let h = Herald::restart_as(h, start).await;
    proxy.set_upstream(&h.base);
    *bases.lock().unwrap() = vec![h.base.clone()];
    sending.await.unwrap();
    page.until(Duration::from_secs(40), "every message on every transport", |s| {
        names.iter().all(|n| got(s, n, total))
    })
    .await;
    for name in names {
        assert_eq!(
            page.received(name, "feed"),
            (1..=total).collect::<Vec<_>>(),
            "{name}: each message once, in order"
        );
        let reconnected = page.states(name).filter(|s| s["state"] == "connected").count();
        assert!(reconnected >= 2, "{name} reconnected: {:#?}", page.states(name).collect::<Vec<_>>());
    }
    page.page.close().await;
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_cluster_node_moves_the_sdk_to_another_url_with_nothing_lost() {
    let Some(mut c) = crate::cluster::cluster_with(3, &[]).await else { return };
    let token = c.token("ann").await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.base.clone()).collect();
    let Some(mut page) = SdkPage::open(&c.nodes[0], "acme", per_transport(json!(urls), json!([token]))).await
    else {
        return;
    };
    let names = ["ws", "sse", "poll"];
    page.until(Duration::from_secs(20), "three subscriptions", |s| {
        names.iter().all(|n| s.iter().any(|v| v["client"] == *n && v["subscribed"] == "feed"))
    })
    .await;
    // Every client is on node 1, the first URL.
    for name in names {
        let first = page.states(name).find(|s| s["state"] == "connected").unwrap().clone();
        assert_eq!(first["url"], urls[0], "{name}: {first}");
    }
    let bases = std::sync::Arc::new(std::sync::Mutex::new(vec![urls[1].clone(), urls[2].clone()]));
    let total = 60;
    let sending = publish_continuously(
        bases,
        c.keys[1].token.clone().unwrap(),
        "feed",
        Some(total),
        Default::default(),
        Duration::from_millis(40),
    );
    page.until(Duration::from_secs(20), "the first messages", |s| names.iter().all(|n| got(s, n, 10))).await;
    c.nodes[0].kill9().await;
    sending.await.unwrap();
    page.until(Duration::from_secs(40), "every message on every transport", |s| {
        names.iter().all(|n| got(s, n, total))
    })
    .await;
    for name in names {
        assert_eq!(
            page.received(name, "feed"),
            (1..=total).collect::<Vec<_>>(),
            "{name}: each message once, in order"
        );
        let last = page.states(name).filter(|s| s["state"] == "connected").last().unwrap().clone();
        assert_ne!(last["url"], urls[0], "{name} moved to another node: {last}");
    }
    page.page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_keeps_the_connection_and_its_subscriptions() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    // The first token lives 6 s (5 s of leeway on top); the SDK refreshes 4 s before expiry.
    let short = t.token_ttl("ann", caps(), 6).await;
    let long = t.token("ann", caps()).await;
    let mut config = per_transport(json!(h.base), json!([short, long]));
    for c in config["clients"].as_array_mut().unwrap() {
        c["options"]["refreshBefore"] = json!(4000);
    }
    let Some(mut page) = SdkPage::open(&h, "acme", config).await else { return };
    let names = ["ws", "sse", "poll"];
    page.until(Duration::from_secs(20), "three subscriptions", |s| {
        names.iter().all(|n| s.iter().any(|v| v["client"] == *n && v["subscribed"] == "feed"))
    })
    .await;
    t.publish("feed", json!({"n": 1})).await;
    page.until(Duration::from_secs(10), "1", |s| names.iter().all(|n| got(s, n, 1))).await;
    // Past the first token's expiry and leeway.
    tokio::time::sleep(Duration::from_secs(13)).await;
    t.publish("feed", json!({"n": 2})).await;
    page.until(Duration::from_secs(10), "2 after the expiry", |s| names.iter().all(|n| got(s, n, 2))).await;
    for name in names {
        assert_eq!(page.received(name, "feed"), vec![1, 2], "{name}");
        let states: Vec<&Value> = page.states(name).collect();
        assert_eq!(
            states.iter().filter(|s| s["state"] == "connected").count(),
            1,
            "{name} never reconnected: {states:#?}"
        );
        assert!(!states.iter().any(|s| s["state"] == "reconnecting"), "{name}: {states:#?}");
    }
    page.page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_delays_are_jittered_and_stay_inside_their_bounds() {
    let h = Herald::sqlite().await;
    let _t = realtime_tenant(&h, "acme").await;
    // Nothing listens here: every attempt fails at once. (Long polling: Chromium itself holds
    // back repeated failing WebSocket handshakes to one host, which would hide the SDK's delays;
    // the backoff is the same for every transport.)
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let options = json!({"url": dead, "transports": ["longpoll"], "minReconnectDelay": 100, "maxReconnectDelay": 800, "token": "t"});
    let config = json!({"clients": [{"name": "r", "channels": ["feed"], "options": options}]});
    let Some(mut page) = SdkPage::open(&h, "acme", config).await else { return };
    let attempts = 30;
    page.until(Duration::from_secs(60), "30 reconnects", |s| {
        s.iter().filter(|v| v["state"]["state"] == "reconnecting").count() >= attempts
    })
    .await;
    let states: Vec<&Value> = page.seen.iter().filter(|v| v.get("state").is_some()).collect();
    let mut delays = Vec::new();
    for (i, v) in states.iter().enumerate() {
        let s = &v["state"];
        if s["state"] != "reconnecting" {
            continue;
        }
        let delay = s["delay"].as_u64().unwrap();
        let attempt = s["attempt"].as_u64().unwrap();
        let cap = 800.min(100 * 2u64.pow(attempt as u32));
        assert!((100..=cap).contains(&delay), "attempt {attempt}: {delay} ms outside 100..={cap}");
        // The next attempt really waited that long.
        if let Some(next) = states[i + 1..].iter().find(|n| n["state"]["state"] == "connecting") {
            let waited = next["t"].as_u64().unwrap() - v["t"].as_u64().unwrap();
            assert!(
                waited + 5 >= delay && waited <= delay + 150,
                "attempt {attempt}: waited {waited} ms for {delay}"
            );
        }
        delays.push(delay);
    }
    let mut distinct = delays.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= delays.len() / 2, "jittered: {delays:?}");
    let late: Vec<u64> = delays[5..].to_vec();
    let mean = late.iter().sum::<u64>() as f64 / late.len() as f64;
    assert!((250.0..=650.0).contains(&mean), "uniform over 100..800 once capped: mean {mean} of {late:?}");
    eprintln!("reconnect delays (ms), min 100, max 800: {delays:?}");
    page.page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_server_cannot_fill_reaches_the_app_as_not_recovered() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post("/v1/tenants/acme/namespaces", json!({"name": "short", "options": {"history_size": 2}}))
        .await
        .expect(201);
    let token = t.token("ann", caps()).await;
    let proxy = CutProxy::start(&h.base).await;
    let config = json!({"clients": [{"name": "a", "channels": ["short:feed"], "tokens": [token], "options": quick(json!(proxy.url()), json!({}))}]});
    let Some(mut page) = SdkPage::open(&h, "acme", config).await else { return };
    page.until(Duration::from_secs(20), "subscribed", |s| s.iter().any(|v| v["subscribed"] == "short:feed"))
        .await;
    t.publish("short:feed", json!({"n": 1})).await;
    page.until(Duration::from_secs(10), "1", |s| got(s, "a", 1)).await;
    // The client is away while more is published than the channel keeps.
    proxy.refuse(&["/"]);
    proxy.cut();
    page.until(Duration::from_secs(10), "the drop", |s| {
        s.iter().any(|v| v["state"]["state"] == "reconnecting")
    })
    .await;
    for n in 2..=6 {
        t.publish("short:feed", json!({"n": n})).await;
    }
    proxy.refuse(&[]);
    page.until(Duration::from_secs(20), "not recovered", |s| {
        s.iter().any(|v| v["subscribed"] == "short:feed" && v["event"]["recovered"] == false)
    })
    .await;
    t.publish("short:feed", json!({"n": 7})).await;
    page.until(Duration::from_secs(10), "7 after the gap", |s| got(s, "a", 7)).await;
    assert_eq!(page.received("a", "short:feed"), vec![1, 7], "nothing of the gap, then live again");
    page.page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_ends_its_long_poll_session_when_its_channels_change_or_empty_and_when_it_disconnects() {
    // Sessions otherwise end only after 60 s without a poll (the default).
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.presence_namespace("p").await;
    let token = t.token("ann", caps()).await;
    let config = json!({"clients": [{
        "name": "poll",
        "channels": ["p:a"],
        "tokens": [token],
        "options": quick(json!(h.base), json!({"transports": ["longpoll"]})),
        "then": [
            {"after": 1500, "subscribe": "p:b"},
            {"after": 7000, "unsubscribeAll": true},
            {"after": 14000, "subscribe": "p:c"},
            {"after": 20000, "disconnect": true},
        ],
    }]});
    let Some(mut page) = SdkPage::open(&h, "acme", config).await else { return };
    page.until(Duration::from_secs(10), "p:a", |s| s.iter().any(|v| v["subscribed"] == "p:a")).await;
    assert_eq!(t.present("p:a").await.len(), 1);
    // A new channel: the SDK polls with a new list, a new session; the old one ends.
    page.until(Duration::from_secs(10), "p:b", |s| s.iter().any(|v| v["subscribed"] == "p:b")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_a = t.present("p:a").await;
    assert_eq!(on_a.len(), 1, "the old session left p:a, the new one is there: {on_a:?}");
    assert_eq!(t.present("p:b").await, on_a, "one session holds both channels");
    // No channel left: the session ends now, not when a channel comes back.
    page.until(Duration::from_secs(10), "unsubscribing", |s| s.iter().any(|v| v["unsubscribedAll"] == true))
        .await;
    t.await_absent(&["p:a", "p:b"], "the last unsubscribe").await;
    // Another channel, then the app disconnects the client: that session ends now too.
    page.until(Duration::from_secs(10), "p:c", |s| s.iter().any(|v| v["subscribed"] == "p:c")).await;
    assert_eq!(t.present("p:c").await.len(), 1);
    page.until(Duration::from_secs(10), "the disconnect", |s| s.iter().any(|v| v["disconnected"] == true))
        .await;
    t.await_absent(&["p:c"], "the disconnect").await;
    page.page.close().await;
}
