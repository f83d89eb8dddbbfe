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
            .on_thread_start(move || set_priority(target))
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
}
