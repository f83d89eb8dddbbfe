//! Network faults: a TCP proxy in front of a node whose live connections can be cut.

/// A TCP proxy in front of a node whose live connections can be cut, as a network drop would.
/// It records the request head of every connection it carries. It can also refuse requests
/// by path (answering 503, as a proxy that does not pass WebSocket upgrades or event streams
/// would) and move to another upstream (a node restarted on a new port).
pub struct CutProxy {
    pub addr: std::net::SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    upstream: std::sync::Arc<std::sync::Mutex<String>>,
    refused: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: &str) -> CutProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream =
            std::sync::Arc::new(std::sync::Mutex::new(upstream.trim_start_matches("http://").to_owned()));
        let refused: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let heads: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let (c, hd, up, rf) = (conns.clone(), heads.clone(), upstream.clone(), refused.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                let (heads, up, rf) = (hd.clone(), up.clone(), rf.clone());
                let task = tokio::spawn(async move {
                    let mut first = vec![0u8; 8192];
                    let Ok(n) = client.read(&mut first).await else { return };
                    let head = String::from_utf8_lossy(&first[..n]).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    heads.lock().unwrap().push(head);
                    if rf.lock().unwrap().iter().any(|p| path.starts_with(p.as_str())) {
                        let _ = client
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    let target = up.lock().unwrap().clone();
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                    if server.write_all(&first[..n]).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        CutProxy { addr, conns, heads, upstream, refused, accept }
    }

    /// Sends new connections to `upstream` from now on.
    pub fn set_upstream(&self, upstream: &str) {
        *self.upstream.lock().unwrap() = upstream.trim_start_matches("http://").to_owned();
    }

    /// Answers 503 to requests whose path starts with one of `prefixes` (`"/"`: every request),
    /// from now on; an empty list passes everything again.
    pub fn refuse(&self, prefixes: &[&str]) {
        *self.refused.lock().unwrap() = prefixes.iter().map(|p| (*p).to_owned()).collect();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every connection the proxy carries now; new ones are still accepted.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
