//! The runtime WebSocket connections run on, apart from the runtime that serves HTTP.
//!
//! A publish wakes the writer of every subscribed connection, and tokio runs woken tasks in
//! the order they were woken. With every task on one runtime, an HTTP request that arrives
//! during a fan-out (the next publish, a subscribe over SSE, a health check) is read only
//! after every writer the fan-out woke has written. With the connections here, the HTTP
//! runtime's threads are idle when a request arrives, and the operating system runs them at
//! once, between the writers' turns.
//!
//! The sockets stay registered with the HTTP runtime's I/O driver (they were accepted there):
//! a connection task here writes without it, and only a read, or a write the socket's buffer
//! cannot take, waits for that runtime to poll its driver (at least every 61 tasks it runs,
//! and whenever it is idle).

use std::future::Future;

use herald_core::StoreError;
use herald_core::directory::ConfigSource;
use herald_core::proxy::{ProxyClient, Verdict};
use herald_types::model::{
    ApiKey, Channel, Namespace, ProxyKind, RevokedToken, SigningKey, Tenant, TenantProxy, UserRevocation,
};

/// A multi-threaded runtime (threads named `herald-ws`, one per core) for WebSocket
/// connections; it stops, without waiting for its tasks, when dropped.
pub struct SocketRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl SocketRuntime {
    /// Starts the runtime; its threads run `nice` levels (`socket_threads_nice`) below the
    /// thread that starts it, so that, when a fan-out keeps the CPU busy, the node's HTTP and
    /// cluster threads get the CPU soon after they wake instead of after the writers' turn.
    /// A nice value is a share, not a strict order: at 10 the writers still get about a tenth
    /// of a core that those threads would otherwise fill. Only Linux sets a thread's own nice
    /// value; elsewhere it is ignored.
    pub fn start(nice: u8) -> std::io::Result<SocketRuntime> {
        // The value is worked out once, from the thread that starts the runtime: a thread one
        // of these threads starts later (the runtime's blocking pool grows from inside it)
        // inherits their value and must not be lowered again.
        let target = writers_priority(nice);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("herald-ws")
            .on_thread_start(move || {
                SOCKET_THREAD.set(true);
                set_priority(target);
            })
            .enable_all()
            .build()?;
        Ok(SocketRuntime { runtime: Some(runtime) })
    }

    /// No runtime, for a process that serves no connections (`herald migrate`).
    pub fn none() -> SocketRuntime {
        SocketRuntime { runtime: None }
    }

    /// Runs a connection's task on this runtime.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(task);
        }
    }
}

thread_local! {
    static SOCKET_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is one of a socket runtime's.
pub fn on_socket_thread() -> bool {
    SOCKET_THREAD.get()
}

/// Runs `work` on the HTTP runtime (`http`) when called from a socket thread, in place
/// otherwise; `None` when the HTTP runtime is shutting down. What a call opens is tied to where
/// it is opened for as long as it lives: a PostgreSQL or HTTP connection is registered with
/// the runtime it was opened on, which then polls it for whoever uses it next, and a SQLite
/// connection's worker thread takes the priority of the thread that started it. Opened from a
/// socket thread, either would be served at the writers' lower priority.
pub async fn off_socket_threads<F>(http: &tokio::runtime::Handle, work: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if !on_socket_thread() {
        return Some(work.await);
    }
    match http.spawn(work).await {
        Ok(out) => Some(out),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// The store as the directory reads it, each call made off the socket threads
/// ([`off_socket_threads`]): a WebSocket session that misses the directory's cache (a tenant, a
/// channel it names) reads through here.
pub struct ConfigOffSockets {
    pub inner: std::sync::Arc<dyn ConfigSource>,
    pub http: tokio::runtime::Handle,
}

impl ConfigOffSockets {
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        off_socket_threads(&self.http, work)
            .await
            .unwrap_or_else(|| Err(StoreError::Db("the node is stopping".into())))
    }
}

#[async_trait::async_trait]
impl ConfigSource for ConfigOffSockets {
    async fn tenant(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        let (inner, id) = (self.inner.clone(), id.to_owned());
        self.run(async move { inner.tenant(&id).await }).await
    }
    async fn channel(&self, tenant: &str, name: &str) -> Result<Option<Channel>, StoreError> {
        let (inner, tenant, name) = (self.inner.clone(), tenant.to_owned(), name.to_owned());
        self.run(async move { inner.channel(&tenant, &name).await }).await
    }
    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let (inner, secret_hash) = (self.inner.clone(), secret_hash.to_owned());
        self.run(async move { inner.api_key_by_hash(&secret_hash).await }).await
    }
    async fn proxy(&self, tenant: &str) -> Result<Option<TenantProxy>, StoreError> {
        let (inner, tenant) = (self.inner.clone(), tenant.to_owned());
        self.run(async move { inner.proxy(&tenant).await }).await
    }
    async fn namespaces(&self, tenant: &str, limit: u64) -> Result<Vec<Namespace>, StoreError> {
        let (inner, tenant) = (self.inner.clone(), tenant.to_owned());
        self.run(async move { inner.namespaces(&tenant, limit).await }).await
    }
    async fn signing_keys(&self, tenant: &str, limit: u64) -> Result<Vec<SigningKey>, StoreError> {
        let (inner, tenant) = (self.inner.clone(), tenant.to_owned());
        self.run(async move { inner.signing_keys(&tenant, limit).await }).await
    }
    async fn revoked_tokens(&self, tenant: &str, limit: u64) -> Result<Vec<RevokedToken>, StoreError> {
        let (inner, tenant) = (self.inner.clone(), tenant.to_owned());
        self.run(async move { inner.revoked_tokens(&tenant, limit).await }).await
    }
    async fn user_revocations(&self, tenant: &str, limit: u64) -> Result<Vec<UserRevocation>, StoreError> {
        let (inner, tenant) = (self.inner.clone(), tenant.to_owned());
        self.run(async move { inner.user_revocations(&tenant, limit).await }).await
    }
}

/// Calls to tenants' proxy endpoints, each made off the socket threads ([`off_socket_threads`]):
/// a WebSocket session's connect, subscribe, publish and refresh proxies call through here, so
/// the pooled HTTP connections they open belong to the HTTP runtime.
pub struct ProxyOffSockets {
    pub inner: std::sync::Arc<dyn ProxyClient>,
    pub http: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl ProxyClient for ProxyOffSockets {
    async fn call(
        &self,
        proxy: &TenantProxy,
        kind: ProxyKind,
        body: serde_json::Value,
    ) -> Result<Verdict, String> {
        let (inner, proxy) = (self.inner.clone(), proxy.clone());
        off_socket_threads(&self.http, async move { inner.call(&proxy, kind, body).await })
            .await
            .unwrap_or_else(|| Err("the node is stopping".into()))
    }
}

/// The nice value for the socket threads: the calling thread's plus `nice`, at most 19, or
/// `None` when nothing is to change (`nice` 0, or not Linux, where a nice value is per process).
fn writers_priority(nice: u8) -> Option<i32> {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        match rustix::process::getpriority_process(Some(rustix::thread::gettid())) {
            Ok(now) => return Some((now + i32::from(nice)).min(19)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the thread priority; the socket threads run at the process's")
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    None
}

/// Sets the calling thread's nice value (Linux: `setpriority` on the thread's id).
fn set_priority(target: Option<i32>) {
    #[cfg(target_os = "linux")]
    if let Some(value) = target
        && let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), value)
    {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(error = %e, value, "cannot lower the priority of the socket threads; they run at the process's")
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = target;
}

impl Drop for SocketRuntime {
    /// Dropped from inside the HTTP runtime at the end of a run, where blocking to join the
    /// threads is not allowed; the node has waited for its connections by then (`server::serve`
    /// holds the state until its shutdown grace is over).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection task runs on the socket runtime's threads, also while the runtime that
    /// spawned it is busy (the test's only thread blocks until the task answered).
    #[tokio::test(flavor = "current_thread")]
    async fn connections_run_on_their_own_threads() {
        let sockets = SocketRuntime::start(0).expect("socket runtime");
        let (ran, answer) = std::sync::mpsc::channel();
        sockets.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let _ = ran.send(std::thread::current().name().map(str::to_owned));
        });
        let name = answer.recv_timeout(std::time::Duration::from_secs(5)).expect("the task ran meanwhile");
        assert_eq!(name.as_deref(), Some("herald-ws"));
    }

    /// A store that answers with the name of the thread each call ran on.
    struct WhereCalled;

    #[async_trait::async_trait]
    impl ConfigSource for WhereCalled {
        async fn tenant(&self, _: &str) -> Result<Option<Tenant>, StoreError> {
            Err(StoreError::Db(std::thread::current().name().unwrap_or("").to_owned()))
        }
        async fn namespaces(&self, _: &str, _: u64) -> Result<Vec<Namespace>, StoreError> {
            Ok(vec![])
        }
        async fn signing_keys(&self, _: &str, _: u64) -> Result<Vec<SigningKey>, StoreError> {
            Ok(vec![])
        }
        async fn revoked_tokens(&self, _: &str, _: u64) -> Result<Vec<RevokedToken>, StoreError> {
            Ok(vec![])
        }
        async fn user_revocations(&self, _: &str, _: u64) -> Result<Vec<UserRevocation>, StoreError> {
            Ok(vec![])
        }
        async fn channel(&self, _: &str, _: &str) -> Result<Option<Channel>, StoreError> {
            Ok(None)
        }
        async fn api_key_by_hash(&self, _: &str) -> Result<Option<ApiKey>, StoreError> {
            Ok(None)
        }
    }

    /// Where a store call made from a socket thread (through the wrapper or not) ran.
    fn called_from_a_socket_thread(store: std::sync::Arc<dyn ConfigSource>) -> String {
        let sockets = SocketRuntime::start(0).expect("socket runtime");
        let (ran, answer) = std::sync::mpsc::channel();
        sockets.spawn(async move {
            let called = match store.tenant("t").await {
                Err(StoreError::Db(thread)) => thread,
                other => format!("{other:?}"),
            };
            let _ = ran.send(called);
        });
        answer.recv_timeout(std::time::Duration::from_secs(5)).expect("the call returned")
    }

    #[test]
    fn store_calls_from_socket_threads_run_on_the_http_runtime() {
        let http = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("http-test")
            .enable_all()
            .build()
            .unwrap();
        let wrapped =
            ConfigOffSockets { inner: std::sync::Arc::new(WhereCalled), http: http.handle().clone() };
        assert_eq!(called_from_a_socket_thread(std::sync::Arc::new(wrapped)), "http-test");
        // Unwrapped, the call runs where it was made; from another thread, the wrapper too.
        assert_eq!(called_from_a_socket_thread(std::sync::Arc::new(WhereCalled)), "herald-ws");
        let wrapped =
            ConfigOffSockets { inner: std::sync::Arc::new(WhereCalled), http: http.handle().clone() };
        let here = std::thread::current().name().unwrap_or("").to_owned();
        let called = http.block_on(async move { wrapped.tenant("t").await });
        assert!(matches!(called, Err(StoreError::Db(thread)) if thread == here));
    }
}
