//! Soak: a bounded run (40 s) of connection churn on all three transports while messages are
//! published. After warm-up, the node's open file descriptors and memory must stay flat: once
//! the churn stops and its connections are gone, descriptors are back to where they started and
//! memory has grown by no more than a small bound. The figures are printed (`--nocapture`) and
//! recorded in docs/performance.md.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Herald, Sse, Ws, poll, realtime_tenant};

fn open_fds(h: &Herald) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", h.pid())).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_on_every_transport_leaves_descriptors_and_memory_flat() {
    let h = Herald::with_env(&[("HERALD_LONG_POLL_SESSION_IDLE_SECONDS", "2")]).await;
    let t = realtime_tenant(&h, "acme").await;
    let token = t.token("soaker", json!({"*": ["subscribe"]})).await;
    let (fds_start, rss_start) = (open_fds(&h), h.rss_kib());
    let mut ws: VecDeque<Ws> = VecDeque::new();
    let mut sse: VecDeque<Sse> = VecDeque::new();
    let started = Instant::now();
    let (mut warm, mut opened, mut published) = (None, 0usize, 0usize);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while started.elapsed() < Duration::from_secs(40) {
        tick.tick().await;
        for _ in 0..3 {
            let mut c = h.ws(&token).await;
            c.subscribe("soak").await;
            ws.push_back(c);
        }
        for _ in 0..2 {
            sse.push_back(
                Sse::open(&h.base, &format!("?channels=soak&token={token}"), None)
                    .await
                    .expect("stream opens"),
            );
            // A long-poll session that polls once and is then abandoned (it expires).
            poll(&h.base, &format!("?channels=soak&token={token}&timeout=0")).await.expect(200);
        }
        opened += 7;
        for n in 0..5 {
            t.publish("soak", json!({"n": n, "pad": "p".repeat(200)})).await;
        }
        published += 5;
        while ws.len() > 30 {
            ws.pop_front();
        }
        while sse.len() > 20 {
            sse.pop_front();
        }
        if warm.is_none() && started.elapsed() >= Duration::from_secs(10) {
            warm = Some((open_fds(&h), h.rss_kib()));
        }
    }
    let (fds_warm, rss_warm) = warm.expect("warmed up");
    drop(ws);
    drop(sse);
    // Abandoned long-poll sessions expire after 2 s; sockets close at once (on a loaded machine
    // the last closes can take a few seconds more: a leak never comes back down).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let settled = Instant::now() + Duration::from_secs(15);
    while open_fds(&h) > fds_start + 4 && Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (fds_end, rss_end) = (open_fds(&h), h.rss_kib());
    eprintln!(
        "soak: {opened} connections opened, {published} messages published in 40 s; \
         fds start {fds_start}, warm {fds_warm}, end {fds_end}; RSS KiB start {rss_start}, warm {rss_warm}, end {rss_end}"
    );
    assert!(fds_end <= fds_start + 4, "descriptors leaked: {fds_start} at start, {fds_end} after the churn");
    assert!(rss_end <= rss_warm + 16 * 1024, "memory grew after warm-up: {rss_warm} KiB to {rss_end} KiB");
    let online = t.key.get("/v1/tenants/acme/users/soaker").await.expect(200);
    assert_eq!(online["online"], false, "sessions left behind: {online}");
}
