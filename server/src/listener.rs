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
//!   An upgraded connection (a WebSocket) keeps its place after hyper hands the socket over:
//!   the request carries an [`AddressHold`] that the upgraded connection's task keeps.
//! - **Accept errors back off**: when the process is out of file descriptors the loop sleeps
//!   (10 ms doubling to 1 s) instead of spinning, so the node stays responsive.
//! - **Graceful shutdown**: on the signal the loop stops accepting, every connection is asked
//!   to finish its request and close, and serving ends once all are gone or the grace period
//!   has passed.
//!
//! With TLS (`tls_cert`/`tls_key`, see `tls.rs`) the same bounds hold, and:
//!
//! - **The handshake is timed** by the header-read timeout: a client that connects and never
//!   completes it is dropped. The write timeout sits under TLS
//!   (`TlsStream<TimedWrites<TcpStream>>`), so it covers handshake and record writes alike.
//! - **HTTP/2 is chosen by ALPN** (`h2`), else HTTP/1.1; nothing is sniffed. Plain TCP is
//!   HTTP/1.1 only. WebSocket stays an HTTP/1.1 upgrade: the extended CONNECT protocol
//!   (RFC 8441) is not offered, so browsers open an HTTP/1.1 connection for `wss:`.
//! - **HTTP/2 connections are bounded** by [`H2_MAX_CONCURRENT_STREAMS`] streams and
//!   [`H2_MAX_HEADER_LIST_BYTES`] of request headers, pinged every [`H2_PING_INTERVAL`] (a peer
//!   that does not answer within [`H2_PING_TIMEOUT`] is dropped), and closed once they have had
//!   no request in progress for the header-read timeout: the HTTP/2 counterpart of the
//!   HTTP/1.1 header timeout, which also ends connections that never send their preface.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, EndpointExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

/// Streams one HTTP/2 connection may have open at once (SSE streams of one page, requests).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// The largest request header block accepted on HTTP/2 (decoded, as HTTP/2 counts it); client
/// tokens travel in the query string, so this leaves room for long URLs.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// How often an HTTP/2 connection is pinged when the peer has sent nothing.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// A ping not answered within this ends the HTTP/2 connection.
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The bounds every connection is served under (from configuration), and its TLS.
#[derive(Clone)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
    /// At most this many open connections per client address; 0: no limit.
    pub max_connections_per_ip: u32,
    /// Addresses exempt from the per-address limit (reverse proxies, load balancers).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TLS on the listening port (`tls_cert`/`tls_key`); `None`: plain TCP, HTTP/1.1 only.
    pub tls: Option<TlsAcceptor>,
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

/// A connection's place in its address's count, in the extensions of each request that asks
/// for an upgrade.
/// Whoever takes over the socket after an upgrade keeps a clone for as long as the socket
/// lives; the place is given back when the last clone goes.
#[derive(Clone)]
pub struct AddressHold(#[allow(dead_code)] Arc<AddressSlot>);

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

/// Binds the listening socket with room for `backlog` connections not yet accepted (the kernel
/// caps it at `net.core.somaxconn`). tokio's own `bind` asks for 1,024, which a burst of
/// reconnecting clients (a node's drain, a load balancer's failover) overflows.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
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
    let tls = limits.tls.clone();
    tracing::info!(addr = %local, tls = tls.is_some(), "listening");
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
        let slot = if limits.max_connections_per_ip == 0
            || limits.trusted_proxies.iter().any(|net| net.contains(&ip))
        {
            None
        } else {
            match addresses.take(ip, limits.max_connections_per_ip) {
                Some(slot) => Some(Arc::new(slot)),
                None => {
                    tracing::debug!(%ip, "refusing a connection over max_connections_per_ip");
                    drop(socket);
                    continue;
                }
            }
        };
        let _ = socket.set_nodelay(true);
        open += 1;
        let (endpoint, limits, tls, stop, done) =
            (endpoint.clone(), limits.clone(), tls.clone(), stop_rx.clone(), done_tx.clone());
        tokio::spawn(async move {
            let hold = slot.map(AddressHold);
            let handler = Handler { endpoint, local, remote, scheme: Scheme::HTTP, activity: None, hold };
            serve_connection(socket, handler, &limits, tls, stop).await;
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
    handler: Handler,
    limits: &ConnectionLimits,
    tls: Option<TlsAcceptor>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let socket = TimedWrites::new(socket, limits.write_timeout);
    match tls {
        None => serve_http1(socket, handler, limits, stop).await,
        // Boxed: a TLS session and the HTTP/2 state are several KiB, which every plain
        // connection's task would otherwise reserve too.
        Some(acceptor) => Box::pin(serve_tls(socket, acceptor, handler, limits, stop)).await,
    }
}

async fn serve_tls(
    socket: TimedWrites,
    acceptor: TlsAcceptor,
    mut handler: Handler,
    limits: &ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let remote = handler.remote;
    // The handshake is bounded like a request head; a shutdown ends it too.
    let stream = tokio::select! {
        accepted = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(socket)) => {
            match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "TLS handshake failed");
                    herald_core::metrics::metrics().tls_handshake_failed("error");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    herald_core::metrics::metrics().tls_handshake_failed("timeout");
                    return;
                }
            }
        }
        _ = stop.wait_for(|stop| *stop) => return,
    };
    handler.scheme = Scheme::HTTPS;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let protocol = if h2 { "h2" } else { "http/1.1" };
    tracing::debug!(%remote, protocol, "TLS connection");
    herald_core::metrics::metrics().tls_connection(protocol);
    if h2 {
        serve_http2(stream, handler, limits, stop).await;
    } else {
        serve_http1(stream, handler, limits, stop).await;
    }
}

/// HTTP/1.1 straight away: no protocol sniffing, which would wait for a first byte without the
/// header timeout.
async fn serve_http1<I>(
    io: I,
    handler: Handler,
    limits: &ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let remote = handler.remote;
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), handler)
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

/// HTTP/2 (negotiated by ALPN), bounded as the module documentation says.
async fn serve_http2<I>(
    io: I,
    mut handler: Handler,
    limits: &ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let remote = handler.remote;
    let (activity, in_progress) = tokio::sync::watch::channel(0usize);
    handler.activity = Some(Arc::new(activity));
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(io), handler);
    tokio::pin!(conn);
    let idle = idle_for(in_progress, limits.header_read_timeout);
    let linger = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, %remote, "HTTP/2 connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|stop| *stop) => None,
        _ = idle => Some(limits.header_read_timeout),
    };
    // GOAWAY: streams in progress finish, no new ones start.
    conn.as_mut().graceful_shutdown();
    match linger {
        None => {
            let _ = conn.await;
        }
        // An idle connection gets one more header-read period to close (a peer that never sent
        // its preface is never going to).
        Some(limit) => {
            let _ = tokio::time::timeout(limit, conn).await;
        }
    }
}

/// Resolves once no request has been in progress for `limit` (`in_progress` counts requests
/// from their head to the end of their response body).
async fn idle_for(mut in_progress: tokio::sync::watch::Receiver<usize>, limit: Duration) {
    loop {
        if in_progress.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        if tokio::time::timeout(limit, in_progress.wait_for(|n| *n > 0)).await.is_err() {
            return;
        }
    }
}

/// Hands each request of one connection to the endpoint.
#[derive(Clone)]
struct Handler {
    endpoint: Arc<dyn poem::endpoint::DynEndpoint<Output = poem::Response>>,
    local: SocketAddr,
    remote: SocketAddr,
    scheme: Scheme,
    /// HTTP/2: requests in progress, for the idle bound.
    activity: Option<Arc<tokio::sync::watch::Sender<usize>>>,
    /// The connection's place in its address's count (`None`: not counted).
    hold: Option<AddressHold>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Handler {
    type Response = hyper::Response<Tracked>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let in_progress = self.activity.clone().map(InProgress::new);
        let endpoint = self.endpoint.clone();
        let mut req = poem::Request::from((
            req,
            LocalAddr(Addr::SocketAddr(self.local)),
            RemoteAddr(Addr::SocketAddr(self.remote)),
            self.scheme.clone(),
        ));
        // Only an upgrade outlives this connection's task; other requests need no hold (and
        // skip allocating an extension map for it).
        if let Some(hold) = &self.hold
            && req.headers().contains_key(poem::http::header::UPGRADE)
        {
            req.extensions_mut().insert(hold.clone());
        }
        Box::pin(async move {
            let resp: hyper::Response<BoxBody> = endpoint.get_response(req).await.into();
            Ok(resp.map(|body| Tracked { body, _in_progress: in_progress }))
        })
    }
}

/// One request in progress on an HTTP/2 connection, until its response body is gone.
struct InProgress(Arc<tokio::sync::watch::Sender<usize>>);

impl InProgress {
    fn new(count: Arc<tokio::sync::watch::Sender<usize>>) -> InProgress {
        count.send_modify(|n| *n += 1);
        InProgress(count)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A response body that keeps its request counted as in progress while it is being sent.
struct Tracked {
    body: BoxBody,
    _in_progress: Option<InProgress>,
}

impl Body for Tracked {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
