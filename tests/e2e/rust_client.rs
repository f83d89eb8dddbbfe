//! The Rust client (`clients/rust`, crate `herald-client`) against the real binary: resume
//! after a dropped connection on each transport, fallback from a refused WebSocket, commands
//! over the WebSocket, a gap the server cannot fill, a refused channel, and long-poll sessions
//! ended as soon as the client leaves them.

use std::time::Duration;

use herald_client::{Client, Event, Options, State, Subscription, Transport};
use serde_json::json;

use crate::support::{CutProxy, Herald, realtime_tenant};

fn caps() -> serde_json::Value {
    json!({"*": ["subscribe", "publish", "history", "presence"]})
}

fn quick(url: &str, token: &str) -> Options {
    Options::new(url)
        .token(token)
        .reconnect_delays(Duration::from_millis(50), Duration::from_millis(300))
        .fallback_after(1)
}

/// The next event that is not a join/leave, within 10 s.
async fn next(sub: &mut Subscription) -> Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an event in time")
            .expect("open");
        if !matches!(event, Event::Join { .. } | Event::Leave { .. }) {
            return event;
        }
    }
}

async fn publications(sub: &mut Subscription, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Event::Publication(p) = next(sub).await {
            out.push(p.data["n"].as_u64().unwrap());
        }
    }
    out
}

async fn subscribed(sub: &mut Subscription) -> Option<bool> {
    loop {
        if let Event::Subscribed { recovered, .. } = next(sub).await {
            return recovered;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_resumes_on_every_transport_after_a_dropped_connection() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("ann", caps()).await;
    let mut n = 0;
    for transport in [Transport::WebSocket, Transport::Sse, Transport::LongPoll] {
        let proxy = CutProxy::start(&h.base).await;
        let client = Client::connect(quick(&proxy.url(), &token).transports(&[transport]));
        let channel = format!("feed-{}", transport.as_str());
        let mut sub = client.subscribe(&channel);
        assert_eq!(subscribed(&mut sub).await, None, "{transport:?}: a first subscribe");
        let state = client.connected(Duration::from_secs(10)).await.unwrap();
        assert!(matches!(state, State::Connected { transport: t, .. } if t == transport), "{state:?}");
        for _ in 0..3 {
            n += 1;
            t.publish(&channel, json!({"n": n})).await;
        }
        assert_eq!(publications(&mut sub, 3).await, vec![n - 2, n - 1, n], "{transport:?}");
        // The network drops; messages go on meanwhile. (Long polling: once the next poll is
        // out and waiting; a drop between two polls would go unnoticed, the next poll simply
        // opening a new connection, and no reconnect would follow.)
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
        for _ in 0..3 {
            n += 1;
            t.publish(&channel, json!({"n": n})).await;
        }
        assert_eq!(subscribed(&mut sub).await, Some(true), "{transport:?}: resumed");
        assert_eq!(
            publications(&mut sub, 3).await,
            vec![n - 2, n - 1, n],
            "{transport:?}: exactly the missed ones"
        );
        n += 1;
        t.publish(&channel, json!({"n": n})).await;
        assert_eq!(publications(&mut sub, 1).await, vec![n], "{transport:?}: live again, nothing twice");
        client.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_falls_back_from_a_refused_websocket_and_commands_need_one() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post(
            "/v1/tenants/acme/namespaces",
            json!({"name": "room", "options": {"presence": true, "client_publish": true}}),
        )
        .await
        .expect(201);
    let token = t.token("ann", caps()).await;
    let proxy = CutProxy::start(&h.base).await;
    proxy.refuse(&["/v1/ws"]);
    let client = Client::connect(quick(&proxy.url(), &token));
    let mut sub = client.subscribe("room:1");
    subscribed(&mut sub).await;
    let state = client.connected(Duration::from_secs(10)).await.unwrap();
    assert!(matches!(state, State::Connected { transport: Transport::Sse, .. }), "{state:?}");
    t.publish("room:1", json!({"n": 1})).await;
    assert_eq!(publications(&mut sub, 1).await, vec![1]);
    let refused = client.publish("room:1", json!({"n": 2})).await.unwrap_err();
    assert_eq!(refused.code, "not_supported");
    client.close();

    // Over the WebSocket the commands work.
    let ws = Client::connect(quick(&h.base, &token).transports(&[Transport::WebSocket]));
    let mut sub = ws.subscribe("room:1");
    subscribed(&mut sub).await;
    let published = ws.publish("room:1", json!({"n": 2})).await.unwrap();
    assert_eq!(published["type"], "published");
    assert_eq!(publications(&mut sub, 1).await, vec![2]);
    let history = ws.history("room:1", None, 10).await.unwrap();
    assert_eq!(history["publications"].as_array().unwrap().len(), 2, "{history}");
    let presence = ws.presence("room:1").await.unwrap();
    assert_eq!(presence["clients"][0]["user"], "ann", "{presence}");
    let denied = ws.publish("elsewhere:x", json!(1)).await.unwrap_err();
    assert_eq!(denied.code, "channel_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_says_when_a_gap_cannot_be_filled_and_when_a_channel_is_refused() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post("/v1/tenants/acme/namespaces", json!({"name": "short", "options": {"history_size": 2}}))
        .await
        .expect(201);
    t.key
        .post("/v1/tenants/acme/channels", json!({"name": "secret", "options": {"private": true}}))
        .await
        .expect(201);
    let token = t.token("ann", json!({"short:*": ["subscribe"]})).await;
    for transport in [Transport::WebSocket, Transport::Sse, Transport::LongPoll] {
        let proxy = CutProxy::start(&h.base).await;
        let client = Client::connect(quick(&proxy.url(), &token).transports(&[transport]));
        let channel = format!("short:{}", transport.as_str());
        let mut sub = client.subscribe(&channel);
        subscribed(&mut sub).await;
        t.publish(&channel, json!({"n": 1})).await;
        assert_eq!(publications(&mut sub, 1).await, vec![1]);
        proxy.refuse(&["/"]);
        proxy.cut();
        let mut state = client.state();
        state.wait_for(|s| matches!(s, State::Reconnecting { .. })).await.unwrap();
        for n in 2..=6 {
            t.publish(&channel, json!({"n": n})).await;
        }
        proxy.refuse(&[]);
        assert_eq!(subscribed(&mut sub).await, Some(false), "{transport:?}: the gap is reported");
        t.publish(&channel, json!({"n": 7})).await;
        assert_eq!(publications(&mut sub, 1).await, vec![7], "{transport:?}: carries on");

        // A channel the token may not read ends its subscription; the others go on.
        let mut secret = client.subscribe("secret");
        match next(&mut secret).await {
            Event::Refused { code, .. } => assert_eq!(code, "permission_denied", "{transport:?}"),
            other => panic!("{transport:?}: {other:?}"),
        }
        t.publish(&channel, json!({"n": 8})).await;
        assert_eq!(publications(&mut sub, 1).await, vec![8], "{transport:?}");
        client.close();
    }
}

/// An application that stops reading for a while loses nothing and blocks nothing: when a
/// subscription's queue is full the client lets the connection go and resumes after what it
/// handed over; a command meanwhile still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_application_loses_nothing_and_blocks_no_command() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.key
        .post("/v1/tenants/acme/namespaces", json!({"name": "big", "options": {"history_size": 5000}}))
        .await
        .expect(201);
    let token = t.token("ann", caps()).await;
    let client = Client::connect(quick(&h.base, &token).transports(&[Transport::WebSocket]));
    let mut sub = client.subscribe("big:feed");
    subscribed(&mut sub).await;
    let total = 1500u64;
    for n in 1..=total {
        t.publish("big:feed", json!({"n": n})).await;
    }
    // Not a single event was read yet; a command still goes through.
    let history = tokio::time::timeout(Duration::from_secs(15), client.history("big:feed", None, 1)).await;
    assert!(history.expect("answered in time").is_ok());
    let got = publications(&mut sub, total as usize).await;
    assert_eq!(got, (1..=total).collect::<Vec<_>>(), "each message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_ends_its_long_poll_session_when_it_changes_channels_and_when_it_closes() {
    // Sessions otherwise end only after 60 s without a poll (the default).
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.presence_namespace("p").await;
    let token = t.token("ann", caps()).await;
    let client = Client::connect(quick(&h.base, &token).transports(&[Transport::LongPoll]));
    let mut a = client.subscribe("p:a");
    subscribed(&mut a).await;
    assert_eq!(t.present("p:a").await.len(), 1);
    // A new channel: a new session for both channels; the old one ends.
    let mut b = client.subscribe("p:b");
    subscribed(&mut b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.present("p:a").await.len(), 1, "the old session left p:a, the new one is there");
    assert_eq!(t.present("p:b").await.len(), 1);
    // Closed: its session ends now, not a minute later.
    client.close();
    t.await_absent(&["p:a", "p:b"], "the client's close").await;
}
