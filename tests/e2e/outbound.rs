//! Outbound calls (the client webhooks and proxies use) against real local HTTP receivers:
//! private addresses refused unless allowed, redirects not followed, bodies read up to a cap,
//! time bounded.

use std::time::{Duration, Instant};

use herald::outbound::{Outbound, OutboundError, OutboundPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A one-route HTTP receiver: answers every request with `response` (raw bytes), or never
/// answers when it is `None`; records each request it read.
async fn receiver(response: Option<Vec<u8>>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let (response, log) = (response.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock().unwrap().push(String::from_utf8_lossy(&got).into_owned());
                match response {
                    Some(r) => {
                        let _ = s.write_all(&r).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    (format!("http://{addr}/hook"), seen)
}

fn ok_with(body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len())
        .into_bytes();
    r.extend_from_slice(body);
    r
}

fn loopback_allowed() -> OutboundPolicy {
    OutboundPolicy {
        allowed_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_are_refused_unless_the_operator_allows_them() {
    let (url, seen) = receiver(Some(ok_with(b"thanks"))).await;
    let strict = Outbound::new(OutboundPolicy::default());
    assert!(matches!(strict.post(&url, &[], b"{}".to_vec()).await, Err(OutboundError::Forbidden(_))));
    // A name that resolves to loopback is refused by the resolver the connection uses.
    let by_name = url.replace("127.0.0.1", "localhost");
    let refused = strict.post(&by_name, &[], b"{}".to_vec()).await;
    assert!(matches!(refused, Err(OutboundError::Forbidden(_))), "{refused:?}");
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the receiver");
    // Allowed by the operator: delivered, with its headers.
    let open = Outbound::new(loopback_allowed());
    let answer = open.post(&url, &[("webhook-id", "evt_1".into())], br#"{"a":1}"#.to_vec()).await.unwrap();
    assert_eq!((answer.status, answer.excerpt.as_slice()), (200, &b"thanks"[..]));
    let request = seen.lock().unwrap()[0].clone();
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    assert!(request.to_ascii_lowercase().contains("webhook-id: evt_1"), "{request}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_reported_not_followed_and_bodies_are_capped() {
    let (target, target_seen) = receiver(Some(ok_with(b"moved here"))).await;
    let redirect =
        format!("HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let (url, _) = receiver(Some(redirect.into_bytes())).await;
    let out = Outbound::new(loopback_allowed());
    assert_eq!(out.post(&url, &[], b"{}".to_vec()).await.unwrap().status, 302);
    assert!(target_seen.lock().unwrap().is_empty(), "the redirect was followed");
    let (big, _) = receiver(Some(ok_with(&vec![b'x'; 1 << 20]))).await;
    let answer = out.post(&big, &[], b"{}".to_vec()).await.unwrap();
    assert_eq!(answer.excerpt.len(), OutboundPolicy::default().max_response_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_times_out() {
    let (url, _) = receiver(None).await;
    let out = Outbound::new(OutboundPolicy { timeout: Duration::from_secs(1), ..loopback_allowed() });
    let started = Instant::now();
    assert!(matches!(out.post(&url, &[], b"{}".to_vec()).await, Err(OutboundError::Timeout)));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}
