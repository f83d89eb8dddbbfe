//! The HTTP connection layer: Herald's own accept loop and hyper connection setup, so every
//! connection is bounded however its client behaves.
//!
//! - **Header reads are timed** (`http_header_read_timeout_seconds`): a request head must
//!   arrive whole within the limit, which also closes idle keep-alive connections and
//!   connections that never send anything (slowloris).
//! - **Writes are timed** (`http_write_timeout_seconds`): a write that makes no progress for the
//!   limit fails the connection — a reader that stopped reading an SSE stream, a long-poll answer
//!   or a WebSocket cannot hold its connection, session and buffers. The bound sits on the
//!   socket, under hyper, so it covers every response and upgraded connection alike.
//! - **Connections per client address are capped** (`max_connections_per_ip`, 0 for none);
//!   addresses in `trusted_proxies` are exempt (the proxy in front enforces per-client limits).
//! - **Accept errors back off**: when the process is out of file descriptors the loop sleeps
//!   (10 ms doubling to 1 s) instead of spinning, so the node stays responsive.
//! - **Graceful shutdown**: on the signal the loop stops accepting, every connection is asked
//!   to finish its request and close, and serving ends once all are gone or the grace period
//!   has passed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, EndpointExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// The bounds every connection is served under (from configuration).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
    /// At most this many open connections per client address; 0: no limit.
    pub max_connections_per_ip: u32,
    /// Addresses exempt from the per-address limit (reverse proxies, load balancers).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, io::Error>;

/// Open connections per client address.
#[derive(Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// Counts one connection of an address while it lives.
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<AddressSlot> {
        let mut open = self.open.lock().expect("address table lock");
        let n = open.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { table: self.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().expect("address table lock");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `endpoint` on `listener` until `shutdown` resolves, then drains for up to `grace`.
pub async fn serve<E>(
    listener: TcpListener,
    endpoint: E,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()>
where
    E: Endpoint + 'static,
{
    let endpoint: Arc<dyn poem::endpoint::DynEndpoint<Output = poem::Response>> =
        Arc::new(poem::endpoint::ToDynEndpoint(endpoint.map_to_response()));
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "listening");
    let limits = Arc::new(limits);
    let addresses = Arc::new(PerAddress::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut open = 0usize;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = done_rx.recv() => { open -= 1; continue; }
            accepted = listener.accept() => accepted,
        };
        let (socket, remote) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: wait for descriptors to come back instead of
                // spinning on the error.
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot accept a connection");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ip = remote.ip().to_canonical();
        let slot = if limits.trusted_proxies.iter().any(|net| net.contains(&ip)) {
            None
        } else {
            match addresses.take(ip, limits.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%ip, "refusing a connection over max_connections_per_ip");
                    drop(socket);
                    continue;
                }
            }
        };
        let _ = socket.set_nodelay(true);
        open += 1;
        let (endpoint, limits, stop, done) =
            (endpoint.clone(), limits.clone(), stop_rx.clone(), done_tx.clone());
        tokio::spawn(async move {
            serve_connection(socket, local, remote, endpoint, &limits, stop).await;
            drop(slot);
            let _ = done.send(());
        });
    }
    // Draining: ask every connection to finish, then wait for them within the grace period.
    let _ = stop_tx.send(true);
    drop(listener);
    let deadline = Instant::now() + grace;
    while open > 0 {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(())) => open -= 1,
            Ok(None) | Err(_) => break,
        }
    }
    if open > 0 {
        tracing::warn!(open, "grace period over; closing the remaining connections");
    }
    Ok(())
}

async fn serve_connection(
    socket: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    endpoint: Arc<dyn poem::endpoint::DynEndpoint<Output = poem::Response>>,
    limits: &ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let endpoint = endpoint.clone();
        async move {
            let req = poem::Request::from((
                req,
                LocalAddr(Addr::SocketAddr(local)),
                RemoteAddr(Addr::SocketAddr(remote)),
                Scheme::HTTP,
            ));
            let resp: hyper::Response<BoxBody> = endpoint.get_response(req).await.into();
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(TimedWrites::new(socket, limits.write_timeout));
    // HTTP/1.1 straight away: no protocol sniffing, which would wait for a first byte without
    // the header timeout.
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A socket whose writes fail once they have made no progress for `limit`: a peer that stops
/// reading cannot stall a response (or an upgraded WebSocket) forever.
struct TimedWrites {
    inner: TcpStream,
    limit: Duration,
    /// Armed while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl TimedWrites {
    fn new(inner: TcpStream, limit: Duration) -> TimedWrites {
        TimedWrites { inner, limit, stalled: None }
    }

    /// Turns a pending write into a timeout error once it has been pending for the limit.
    fn check<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(timer.as_mut().poll(cx));
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading")))
            }
        }
    }
}

impl AsyncRead for TimedWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TimedWrites {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, result)
    }
}
