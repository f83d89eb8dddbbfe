//! A real HTTP receiver for webhooks: it reads whole requests (head and body), records them
//! with their arrival time, and answers with scripted statuses (200 once the script is used
//! up), or holds the request open without answering.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    /// Lower-case header names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What the receiver answers next.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// A status with a JSON body.
    Json(u16, String),
    /// Read the request and never answer.
    Hang,
}

/// Answers computed from each request, when no scripted answer is left.
pub type Responder = Arc<dyn Fn(&Received) -> Answer + Send + Sync>;

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub port: u16,
    seen: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    responder: Arc<Mutex<Option<Responder>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Receiver {
    /// Listens on a free loopback port.
    pub async fn start() -> Receiver {
        Self::on(0).await
    }

    /// Listens on `port` (0: a free one).
    pub async fn on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let responder: Arc<Mutex<Option<Responder>>> = Arc::default();
        let (log, answers, respond) = (seen.clone(), script.clone(), responder.clone());
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let open = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let (log, answers, respond) = (log.clone(), answers.clone(), respond.clone());
                let connection = tokio::spawn(async move {
                    while let Some(request) = read_request(&mut s).await {
                        let scripted = answers.lock().unwrap().pop_front();
                        let computed = respond.lock().unwrap().clone().map(|f| f(&request));
                        log.lock().unwrap().push(request);
                        let answer = scripted.or(computed).unwrap_or(Answer::Status(200));
                        match answer {
                            Answer::Status(_) | Answer::Json(..) => {
                                let (code, kind, body) = match answer {
                                    Answer::Json(code, body) => (code, "application/json", body),
                                    Answer::Status(code) => (code, "text/plain", "answered".to_owned()),
                                    Answer::Hang => unreachable!(),
                                };
                                let reply = format!(
                                    "HTTP/1.1 {code} Scripted\r\ncontent-length: {}\r\ncontent-type: {kind}\r\n\r\n{body}",
                                    body.len()
                                );
                                if s.write_all(reply.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            Answer::Hang => {
                                tokio::time::sleep(Duration::from_secs(120)).await;
                                return;
                            }
                        }
                    }
                });
                open.lock().unwrap().push(connection.abort_handle());
            }
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            seen,
            script,
            responder,
            task: Arc::new(task),
            connections,
        }
    }

    /// Answers the next requests with these, in order.
    pub fn script(&self, answers: &[Answer]) {
        self.script.lock().unwrap().extend(answers.iter().cloned());
    }

    /// Answers every unscripted request with what `f` computes from it.
    pub fn respond(&self, f: impl Fn(&Received) -> Answer + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Some(Arc::new(f));
    }

    /// Stops listening and closes open connections (connections refused from now on).
    pub fn stop(&self) {
        self.task.abort();
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `count` requests satisfy `matches`; answers them.
    pub async fn wait_for(
        &self,
        count: usize,
        within: Duration,
        matches: impl Fn(&Received) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let found: Vec<Received> = self.received().into_iter().filter(|r| matches(r)).collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} matching requests within {within:?}, got {}: {:?}",
                found.len(),
                self.received()
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests whose JSON body has `type` = `kind`.
    pub fn of_type(&self, kind: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.json()["type"] == kind).collect()
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let at = Instant::now();
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = got[head_end..].to_vec();
    while body.len() < length {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body.truncate(length);
    Some(Received { at, path, headers, body })
}
