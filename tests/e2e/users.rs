//! Users and presence: user-targeted delivery, online checks, disconnects, channel presence.

use serde_json::json;

use crate::support::{Closed, Herald, Sse, realtime_tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_delivery_presence_and_disconnect_span_transports() {
    let h = Herald::sqlite().await;
    let t = realtime_tenant(&h, "acme").await;
    t.presence_namespace("room").await;
    let minted = t
        .key
        .post(
            "/v1/tenants/acme/tokens",
            json!({"sub": "ann", "capabilities": {"*": ["subscribe"]}, "info": {"name": "Ann"}}),
        )
        .await
        .expect(201);
    let ann = minted["token"].as_str().unwrap().to_owned();
    let bob = t.token("bob", json!({"*": ["subscribe"]})).await;
    let mut ann_ws1 = h.ws(&ann).await;
    let mut ann_ws2 = h.ws(&ann).await;
    let mut ann_sse = Sse::open(&h.base, &format!("?channels=room:1&token={ann}"), None).await.unwrap();
    ann_sse.next().await;
    ann_sse.next_data().await;
    let mut bob_ws = h.ws(&bob).await;
    ann_ws1.subscribe("room:1").await;
    bob_ws.subscribe("room:1").await;

    let online = t.key.get("/v1/tenants/acme/users/ann").await.expect(200);
    assert_eq!(online["online"], true);
    let mut transports: Vec<&str> =
        online["connections"].as_array().unwrap().iter().map(|c| c["transport"].as_str().unwrap()).collect();
    transports.sort();
    assert_eq!(transports, ["sse", "websocket", "websocket"]);
    assert_eq!(t.key.get("/v1/tenants/acme/users/nobody").await.expect(200)["online"], false);

    let presence = t.key.get("/v1/tenants/acme/channels/room:1/presence").await.expect(200);
    let clients = presence["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 3, "{presence}");
    assert!(clients.iter().any(|c| c["user"] == "ann" && c["info"] == json!({"name": "Ann"})));
    let occupancy = t.key.get("/v1/tenants/acme/occupancy").await.expect(200);
    assert_eq!(occupancy["channels"][0], json!({"channel": "room:1", "subscribers": 3}));

    // A message for ann reaches all three of her connections and nobody else.
    let sent = t
        .key
        .post("/v1/tenants/acme/users/ann/messages", json!({"data": {"hi": "ann"}, "event": "dm"}))
        .await
        .expect(200);
    assert_eq!(sent["delivered"], 3);
    for ws in [&mut ann_ws1, &mut ann_ws2] {
        let m = ws.recv().await;
        assert_eq!((m["type"].as_str(), m["event"].as_str()), (Some("message"), Some("dm")));
        assert_eq!(m["data"], json!({"hi": "ann"}));
        assert_eq!(m["id"], sent["id"]);
    }
    assert_eq!(ann_sse.next_data().await.json()["data"], json!({"hi": "ann"}));
    assert_eq!(bob_ws.call(json!({"type": "ping"})).await["type"], "pong", "bob got nothing");

    // Disconnect ann everywhere: 4006 on WebSocket, a disconnect event on SSE.
    let d = t.key.post_empty("/v1/tenants/acme/users/ann/disconnect").await.expect(200);
    assert_eq!(d["disconnected"], 3);
    assert_eq!(ann_ws1.closed().await, Closed { code: 4006, reason: "disconnected".into() });
    assert_eq!(ann_ws2.closed().await.code, 4006);
    let last = ann_sse.next_data().await.json();
    assert_eq!((last["type"].as_str(), last["code"].as_u64()), (Some("disconnect"), Some(4006)));
    assert!(ann_sse.next().await.is_none(), "the stream ends");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(t.key.get("/v1/tenants/acme/users/ann").await.expect(200)["online"], false);
    assert_eq!(
        t.key.get("/v1/tenants/acme/channels/room:1/presence").await.expect(200)["clients"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(bob_ws.call(json!({"type": "ping"})).await["type"], "pong", "bob stays");
}
