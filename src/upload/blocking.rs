//! The one way the uploader makes a blocking call: on tokio's blocking pool, never on its
//! single runtime thread, which also serves the HTTP client and the timers of every deadline.
//! A volume that hangs (an NFS server gone, a full disk's fsync) then stalls one pool thread,
//! not the deadline that must still end the run.

use std::io;

/// Runs `f` on the blocking pool. A panic in `f` comes back as an error (the panic hook has
/// already printed it, redacted), not as a second panic on the runtime thread.
pub async fn run<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// [`run`] for a call that cannot fail.
pub async fn value<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    run(move || Ok(f())).await
}
