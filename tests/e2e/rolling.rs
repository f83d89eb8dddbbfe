//! A rolling restart of a 3-node cluster under continuous publishing, with subscribers on
//! every transport (the Rust client, the SDK's semantics): no acknowledged message is lost or
//! duplicated, every resume says `recovered: true`, and the reconnects spread over the drain
//! window. And a node told to stop keeps
//! answering its health check, not ready, for `shutdown_ready_delay_seconds`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_client::{Client, Event, Options, State, Transport};

use crate::support::CutProxy;

/// What a client received, and the `recovered` of each `subscribed` (none on the first).
type Log = (Vec<u64>, Vec<Option<bool>>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_and_repeats_nothing_on_any_transport() {
    let spread_ms = 1500u64;
    let env = [("HERALD_RECONNECT_SPREAD_MS", "1500"), ("HERALD_SHUTDOWN_GRACE_SECONDS", "4")];
    let Some(mut c) = crate::cluster::cluster_with(3, &env).await else { return };
    // Each node behind a stable address, as behind a load balancer: a restarted node listens
    // on a new port and its proxy follows it.
    let mut proxies = Vec::new();
    for node in &c.nodes {
        proxies.push(CutProxy::start(&node.base).await);
    }
    let urls: Vec<String> = proxies.iter().map(CutProxy::url).collect();
    let token = c.token("ann").await;

    // Nine clients, three per transport, starting on different nodes.
    let transports = [Transport::WebSocket, Transport::Sse, Transport::LongPoll];
    let mut clients = Vec::new();
    let mut logs = Vec::new();
    for i in 0..9 {
        let mut order = urls.clone();
        order.rotate_left(i % 3);
        let options = Options::new(&order[0])
            .urls(order)
            .token(&token)
            .transports(&[transports[i / 3]])
            .reconnect_delays(Duration::from_millis(100), Duration::from_secs(2));
        let client = Client::connect(options);
        let mut sub = client.subscribe("feed");
        let log: Arc<std::sync::Mutex<Log>> = Arc::default();
        let l = log.clone();
        tokio::spawn(async move {
            while let Some(event) = sub.next().await {
                let mut g = l.lock().unwrap();
                match event {
                    Event::Publication(p) => g.0.push(p.data["n"].as_u64().unwrap()),
                    Event::Subscribed { recovered, .. } => g.1.push(recovered),
                    _ => {}
                }
            }
        });
        clients.push(client);
        logs.push(log);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while logs.iter().any(|l| l.lock().unwrap().1.is_empty()) {
        assert!(Instant::now() < deadline, "every client subscribes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The reconnect delays the servers' drains asked for.
    let drains: Arc<std::sync::Mutex<Vec<Duration>>> = Arc::default();
    for client in &clients {
        let mut state = client.state();
        let d = drains.clone();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                if let State::Reconnecting { delay, code: 4200, .. } = &*state.borrow() {
                    d.lock().unwrap().push(*delay);
                }
            }
        });
    }

    // A publisher that goes on through whichever node answers.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = crate::support::publish_continuously(
        Arc::new(std::sync::Mutex::new(urls.clone())),
        c.keys[0].token.clone().unwrap(),
        "feed",
        None,
        stop.clone(),
        Duration::from_millis(25),
    );

    // Each node in turn: SIGTERM (it drains), then back on a new port behind its address.
    for (i, proxy) in proxies.iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = c.nodes[i].pid();
        std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
        c.nodes[i].stop().await; // Waits for it to exit.
        c.restart_node(i).await;
        proxy.set_upstream(&c.nodes[i].base);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let total = publisher.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while logs.iter().any(|l| l.lock().unwrap().0.len() < total as usize) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, log) in logs.iter().enumerate() {
        let (got, subscribed) = log.lock().unwrap().clone();
        assert_eq!(
            got,
            (1..=total).collect::<Vec<_>>(),
            "client {i} ({:?}): each message once, in order",
            transports[i / 3]
        );
        // Every node went down once and each client was on one of them: it came back at least
        // once, and every time with what it missed.
        assert!(
            subscribed.len() >= 2 && subscribed[1..].iter().all(|r| *r == Some(true)),
            "client {i} ({:?}): each resume recovered: {subscribed:?}",
            transports[i / 3]
        );
    }
    let mut delays = drains.lock().unwrap().clone();
    delays.sort();
    assert!(!delays.is_empty(), "the drains told clients when to come back");
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(spread_ms)), "{delays:?}");
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    let mut distinct = ms.clone();
    distinct.dedup();
    assert!(distinct.len() > ms.len() / 2, "spread, not all at once: {ms:?}");
    eprintln!(
        "rolling restart: {total} messages, 9 clients; drain reconnect delays (ms, spread {spread_ms}): {ms:?}"
    );
    for client in &clients {
        client.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_answers_not_ready_for_its_ready_delay_then_stops_listening() {
    let mut h = crate::support::Herald::with_env(&[("HERALD_SHUTDOWN_READY_DELAY_SECONDS", "2")]).await;
    let readyz = format!("{}/readyz", h.base);
    let probe =
        reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(1)).build().unwrap();
    assert_eq!(probe.get(&readyz).send().await.unwrap().status(), 200);
    std::process::Command::new("kill").arg("-TERM").arg(h.pid().to_string()).status().unwrap();
    let signalled = Instant::now();
    let (mut not_ready, mut gone) = (None, None);
    while signalled.elapsed() < Duration::from_secs(8) {
        match probe.get(&readyz).send().await {
            Ok(r) if r.status() == 503 => {
                not_ready.get_or_insert(signalled.elapsed());
            }
            Ok(r) => assert!(not_ready.is_none(), "ready again after draining: {}", r.status()),
            Err(_) if not_ready.is_some() => {
                gone = Some(signalled.elapsed());
                break;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let not_ready = not_ready.expect("/readyz answered 503 while the node drained");
    let gone = gone.expect("the node stopped listening");
    assert!(not_ready < Duration::from_millis(500), "not ready at once: {not_ready:?}");
    assert!(gone >= Duration::from_millis(1900), "still listening for the ready delay: {gone:?}");
    h.stop().await;
}

/// The same with clients to drain in a cluster: the node keeps answering 503 for the whole
/// delay while it tells its clients to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_draining_clients_stays_reachable_and_not_ready_for_its_delay() {
    let Some(c) = crate::cluster::cluster_with(2, &[("HERALD_SHUTDOWN_READY_DELAY_SECONDS", "2")]).await
    else {
        return;
    };
    let token = c.token("u").await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut ws = c.nodes[0].ws(&token).await;
        ws.subscribe("news").await;
        clients.push(ws);
    }
    let readyz = format!("{}/readyz", c.nodes[0].base);
    let probe =
        reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(1)).build().unwrap();
    assert_eq!(probe.get(&readyz).send().await.unwrap().status(), 200);
    std::process::Command::new("kill").arg("-TERM").arg(c.nodes[0].pid().to_string()).status().unwrap();
    let signalled = Instant::now();
    let mut answers = Vec::new();
    while signalled.elapsed() < Duration::from_millis(3500) {
        let status = probe.get(&readyz).send().await.map(|r| r.status().as_u16()).ok();
        answers.push((signalled.elapsed(), status));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (at, status) in &answers {
        if *at < Duration::from_millis(1800) {
            assert_eq!(*status, Some(503), "at {at:?}: {answers:?}");
        } else if *at > Duration::from_millis(2600) {
            assert_eq!(*status, None, "still listening at {at:?}: {answers:?}");
        }
    }
    // Every client was told to reconnect elsewhere.
    for ws in &mut clients {
        assert_eq!(ws.closed().await.code, 4200);
    }
}
