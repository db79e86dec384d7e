//! The upload engine: one file, one deadline, retries inside it. Every path (the exec hook,
//! `--continuous`) uploads through [`Engine::upload`]. This module is the attempt loop; the
//! jobs around it have their own modules: [`body`] (the digest pass, the body stream, the
//! stall watchdog), [`request`] (one HTTP attempt), [`ledger`] (the per-file lock and what was
//! uploaded), [`metrics`](super::metrics) (the counters).
//!
//! One attempt cannot eat the whole budget ([`retry::attempt_limits`]): it is capped at what
//! is left, or at half of it when the body would fit at the minimum rate; a watchdog aborts it
//! when the receiver accepts no body bytes for a few seconds (it stopped reading) or sends no
//! response head for a while after the whole body; connects alone are bounded shorter. An
//! aborted attempt is a timeout, retried like any other.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::blocking;
use super::body::{self, Prepared};
use super::config::UploadConfig;
use super::ledger::{self, FileLock, Ledger, LockOutcome};
use super::metrics::UploadMetrics;
use super::report::{FileResult, FileStatus};
use super::request::{self, Attempt, Upload};
use super::retry::{self, RetryAction, TransportError};
use super::state::Candidate;

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("--ca-file")]
    Ca(#[source] reqwest::Error),
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    OwnPorts(#[from] crate::ownports::forward::ConnectError),
}

pub struct Engine {
    client: reqwest::Client,
    /// The forwarder every connection goes through with `--own-ports` (issue 11).
    own: Option<crate::ownports::forward::OwnPorts>,
    cfg: Arc<UploadConfig>,
    ledger: Ledger,
    pub metrics: Arc<UploadMetrics>,
}

/// The instants one upload works to (see [`Engine::upload`]).
#[derive(Clone, Copy)]
struct Times {
    deadline: Instant,
    lock_until: Instant,
    horizon: Instant,
}

/// `r` with a final status and why.
fn ended(mut r: FileResult, status: FileStatus, why: impl Into<String>) -> FileResult {
    r.status = status;
    r.error = Some(why.into());
    r
}

impl Engine {
    pub fn new(cfg: Arc<UploadConfig>, metrics: Arc<UploadMetrics>) -> Result<Engine, EngineError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(retry::CONNECT_TIMEOUT)
            // Not followed: a streamed body cannot be replayed, and credentials must not
            // travel to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sidecap/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(EngineError::Ca)?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let own = own_ports(&cfg)?;
        if let Some(o) = &own {
            b = b.unix_socket(o.path());
        }
        let client = b.build().map_err(EngineError::Client)?;
        Ok(Engine {
            client,
            own,
            ledger: Ledger::new(&cfg.layout),
            cfg,
            metrics,
        })
    }

    pub fn config(&self) -> &UploadConfig {
        &self.cfg
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The HTTP client, for the snapshot manifest (a small JSON document, not a capture file).
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The forwarder the client's connections go through (`--own-ports`), if any.
    pub(super) fn own(&self) -> Option<&crate::ownports::forward::OwnPorts> {
        self.own.as_ref()
    }

    /// Uploads one file before `deadline`, unless it is in the ledger. Waits for another
    /// uploader's lock on the file until `lock_until` at most (then the result is `busy`).
    /// `horizon` is the end of the whole run (`deadline` may be a file's share of it): the
    /// response wait follows it (see [`retry::attempt_limits`]).
    /// Never panics, never returns after the deadline by more than the time it takes to notice.
    pub async fn upload(
        &self,
        c: &Candidate,
        deadline: Instant,
        lock_until: Instant,
        horizon: Instant,
        cancel: &CancellationToken,
    ) -> FileResult {
        let started = Instant::now();
        self.metrics.in_flight.fetch_add(1, Relaxed);
        let times = Times {
            deadline,
            lock_until: lock_until.min(deadline),
            horizon: horizon.max(deadline),
        };
        let mut r = self.upload_inner(c, times, cancel).await;
        self.metrics.in_flight.fetch_sub(1, Relaxed);
        r.duration_ms = started.elapsed().as_millis() as u64;
        r.repaired = c.repaired.clone();
        if r.busy {
            tracing::debug!(file = %r.name, "Another uploader is sending this file; looking again later.");
            return r;
        }
        self.metrics.count(&r);
        log_result(&r);
        r
    }

    /// Lock, ledger, digest, then the attempts; each step can end the upload.
    async fn upload_inner(
        &self,
        c: &Candidate,
        t: Times,
        cancel: &CancellationToken,
    ) -> FileResult {
        let r = FileResult::not_attempted(c);
        if self.cfg.url.is_none() {
            return ended(r, FileStatus::NotAttempted, "no --url configured");
        }
        let lock = match self.lock(c, t.lock_until, cancel).await {
            Ok(lock) => lock,
            Err(r) => return r,
        };
        if self.in_ledger(c).await {
            return FileResult {
                status: FileStatus::AlreadyUploaded,
                ..r
            };
        }
        let (file, prep) = match self.digest(&lock, c, t.deadline, cancel).await {
            Ok(d) => d,
            Err((status, why)) => return ended(r, status, why),
        };
        let key = idempotency_key(&self.cfg.pod_uid, &c.name, &prep.file_sha);
        let u = Upload {
            c,
            file: &file,
            prep: &prep,
            key: &key,
            started: SystemTime::now(),
        };
        let r = FileResult {
            bytes: prep.file_len,
            sha256: Some(prep.file_sha.clone()),
            ..r
        };
        let r = self.attempts(&u, r, t, cancel).await;
        // Held until the ledger line is written: a second uploader then finds it there.
        drop(lock);
        r
    }

    /// The file's lock, or the result that ends the upload without it.
    async fn lock(
        &self,
        c: &Candidate,
        until: Instant,
        cancel: &CancellationToken,
    ) -> Result<FileLock, FileResult> {
        let r = FileResult::not_attempted(c);
        match FileLock::acquire(&c.path, until, cancel).await {
            Ok(LockOutcome::Locked(l)) => Ok(l),
            Ok(LockOutcome::Gone) => Err(ended(
                r,
                FileStatus::Deleted,
                "the file was deleted (capture ring bound) before it could be uploaded",
            )),
            Ok(LockOutcome::Busy) if cancel.is_cancelled() => Err(ended(
                r,
                FileStatus::NotAttempted,
                "stopped before the upload started",
            )),
            Ok(LockOutcome::Busy) => Err(ended(
                FileResult { busy: true, ..r },
                FileStatus::NotAttempted,
                "another uploader is sending this file",
            )),
            // volume::open refused a link, FIFO or device: planted, never followed.
            Err(e) if crate::volume::is_refused(&e) => {
                Err(ended(r, FileStatus::Skipped, format!("not uploaded: {e}")))
            }
            Err(e) => Err(ended(
                r,
                FileStatus::NotAttempted,
                format!("cannot open: {e}"),
            )),
        }
    }

    /// Whether the ledger says the file was sent. Without the ledger we cannot promise "never
    /// twice"; the receiver still gets an Idempotency-Key. Losing the file would be worse than
    /// a duplicate, so an unreadable ledger means "not in it".
    async fn in_ledger(&self, c: &Candidate) -> bool {
        let (ledger, name) = (self.ledger.clone(), c.name.clone());
        match blocking::run(move || ledger.contains(&name)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(file = %c.name, ledger = %self.ledger.path().display(), error = %e, "Cannot read the upload ledger; uploading anyway.");
                false
            }
        }
    }

    /// The first pass over the locked file (see [`body::prepare`]), or the status that ends
    /// the upload and why.
    async fn digest(
        &self,
        lock: &FileLock,
        c: &Candidate,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(Arc<std::fs::File>, Prepared), (FileStatus, String)> {
        let not_attempted = |e: String| (FileStatus::NotAttempted, e);
        let file = Arc::new(
            lock.file()
                .map_err(|e| not_attempted(format!("cannot open: {e}")))?,
        );
        let (f, gzip, cancel, limit) = (file.clone(), self.cfg.gzip, cancel.clone(), c.limit);
        let s3 = self.cfg.s3.clone();
        let part_of = move |len: u64| {
            s3.as_ref()
                .filter(|s3| s3.multipart(len))
                .map(|s3| s3.part_size_for(len))
        };
        let prepared = blocking::value(move || {
            body::check_pcap_header(&f)?;
            Ok(body::prepare(f, limit, gzip, &part_of, deadline, &cancel))
        })
        .await
        .map_err(|e| not_attempted(format!("digest task: {e}")))?;
        match prepared {
            Err(not_pcap) => Err((FileStatus::Skipped, not_pcap)),
            Ok(p) => Ok((file, p.map_err(not_attempted)?)),
        }
    }

    /// Attempts until one is accepted, the receiver refuses for good, the deadline, or a stop;
    /// an S3 file over the part size goes up in parts ([`super::s3::multipart`]).
    async fn attempts(
        &self,
        u: &Upload<'_>,
        mut r: FileResult,
        t: Times,
        cancel: &CancellationToken,
    ) -> FileResult {
        let ended_as = if let (Some(s3), true) = (&self.cfg.s3, u.prep.part_len > 0) {
            super::s3::multipart::upload(self, s3, u, &mut r, (t.deadline, t.horizon), cancel).await
        } else {
            let send = |n: u32, remaining: Duration| {
                request::send_once(
                    &self.client,
                    self.own.as_ref(),
                    &self.cfg,
                    u,
                    remaining,
                    t.horizon,
                    n,
                )
            };
            self.retrying(&u.c.name, &mut r, t.deadline, cancel, send)
                .await
                .map(|_| ())
        };
        match ended_as {
            Ok(()) => {
                r.status = FileStatus::Uploaded;
                r.error = None;
                self.record(u, &r).await;
                r
            }
            Err((status, why)) => ended(r, status, self.in_context(status, why)),
        }
    }

    /// A rejection by an S3 store names the bucket and the endpoint (a wrong bucket or
    /// endpoint is the usual cause).
    fn in_context(&self, status: FileStatus, why: String) -> String {
        match &self.cfg.s3 {
            Some(s3) if status == FileStatus::Rejected => format!(
                "{why} (bucket {} at {})",
                s3.bucket_name,
                s3.endpoint.as_str().trim_end_matches('/')
            ),
            _ => why,
        }
    }

    /// One request (`send(attempt, time left)`) tried until it is accepted (its answer), the
    /// receiver refuses for good, the deadline, or a stop (the status and why). Counts the
    /// attempts in `r` and in the metrics.
    pub(super) async fn retrying<F, Fut>(
        &self,
        name: &str,
        r: &mut FileResult,
        deadline: Instant,
        cancel: &CancellationToken,
        mut send: F,
    ) -> Result<Attempt, (FileStatus, String)>
    where
        F: FnMut(u32, Duration) -> Fut,
        Fut: std::future::Future<Output = Attempt>,
    {
        let mut last_error = String::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < retry::MIN_ATTEMPT || cancel.is_cancelled() {
                return Err(stopped(r, cancel.is_cancelled(), &last_error));
            }
            r.attempts += 1;
            self.metrics.attempts.fetch_add(1, Relaxed);
            if r.attempts > 1 {
                self.metrics.retries.fetch_add(1, Relaxed);
            }
            let attempt = tokio::select! {
                a = send(r.attempts, remaining) => a,
                _ = cancel.cancelled() => Attempt::Transport(TransportError::Other, "stopped during the upload".into()),
            };
            match classify(&attempt, r, &mut last_error) {
                RetryAction::Success => return Ok(attempt),
                RetryAction::Permanent => return Err((FileStatus::Rejected, last_error)),
                RetryAction::Retry { retry_after } => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let b = retry::backoff(
                        r.attempts - 1,
                        BACKOFF_BASE,
                        BACKOFF_CAP,
                        rand::random::<f64>(),
                    );
                    let Some(sleep) = retry::next_sleep(b, retry_after, remaining) else {
                        continue; // the top of the loop reports the deadline
                    };
                    tracing::warn!(
                        file = %name,
                        attempt = r.attempts,
                        error = %last_error,
                        retry_in_ms = sleep.as_millis() as u64,
                        "Upload attempt failed; retrying."
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(sleep) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Writes the ledger line of an accepted file (fsynced, on the blocking pool).
    async fn record(&self, u: &Upload<'_>, r: &FileResult) {
        let entry = ledger::Entry {
            name: u.c.name.clone(),
            bytes: u.prep.file_len,
            sha256: u.prep.file_sha.clone(),
            uploaded_at: crate::files::rfc3339(SystemTime::now()),
            http_status: r.http_status.unwrap_or(0),
            idempotency_key: u.key.to_string(),
        };
        let ledger = self.ledger.clone();
        if let Err(e) = blocking::run(move || ledger.record(&entry)).await {
            tracing::warn!(file = %u.c.name, error = %e, "Uploaded, but cannot record it in the ledger: a later run may send it again (with the same Idempotency-Key).");
        }
    }
}

/// The status and why of attempts ended by the deadline or a stop.
fn stopped(r: &FileResult, cancelled: bool, last_error: &str) -> (FileStatus, String) {
    let why = if cancelled {
        "stopped"
    } else {
        "deadline reached"
    };
    let status = if r.attempts == 0 {
        FileStatus::NotAttempted
    } else {
        FileStatus::Failed
    };
    let msg = if last_error.is_empty() {
        why.to_string()
    } else {
        format!("{why}; last error: {last_error}")
    };
    (status, msg)
}

/// What to do after `a`; notes its HTTP status in `r` and its error in `last_error`.
pub(super) fn classify(a: &Attempt, r: &mut FileResult, last_error: &mut String) -> RetryAction {
    match a {
        Attempt::Status {
            code,
            retry_after,
            body,
            ..
        } => {
            r.http_status = Some(*code);
            let s3_error = super::s3::error_of(body);
            let action = match s3_error.as_deref() {
                Some(e) if super::s3::is_transient(e) => RetryAction::Retry { retry_after: None },
                _ => retry::classify_status(*code, retry_after.as_deref(), SystemTime::now()),
            };
            if action != RetryAction::Success {
                *last_error = match s3_error {
                    Some(e) => format!("S3 error {e} (HTTP {code})"),
                    None if body.is_empty() => format!("HTTP {code}"),
                    None => format!("HTTP {code}: {body}"),
                };
                if (300..400).contains(code) {
                    last_error
                        .push_str(" (redirects are not followed: set --url to the final location)");
                }
            }
            action
        }
        Attempt::Transport(kind, msg) => {
            last_error.clone_from(msg);
            retry::classify_transport(*kind)
        }
        Attempt::Local(msg) => {
            last_error.clone_from(msg);
            RetryAction::Permanent
        }
    }
}

/// Stable across retries and re-runs of any uploader of this Pod: the same file content under
/// the same name from the same Pod always has the same key.
pub fn idempotency_key(pod_uid: &str, name: &str, sha256_hex: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"sidecap-upload-v1\n");
    h.update(pod_uid.as_bytes());
    h.update(b"\n");
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(sha256_hex.as_bytes());
    body::hex(&h.finalize()[..16])
}

fn log_result(r: &FileResult) {
    match r.status {
        FileStatus::Uploaded => tracing::info!(
            file = %r.name,
            bytes = r.bytes,
            status = "uploaded",
            http_status = r.http_status.unwrap_or(0),
            attempts = r.attempts,
            duration_ms = r.duration_ms,
            "Uploaded."
        ),
        FileStatus::AlreadyUploaded => tracing::info!(
            file = %r.name,
            status = "already_uploaded",
            "Already uploaded (ledger); not sent again."
        ),
        FileStatus::Deleted => tracing::warn!(
            file = %r.name,
            status = "deleted",
            "Deleted by the capture's ring bound before it could be uploaded (raise --max-total-size or upload continuously)."
        ),
        FileStatus::Skipped => tracing::warn!(
            file = %r.name,
            status = "skipped",
            reason = r.error.as_deref().unwrap_or(""),
            "Named like a capture file but not one: not uploaded."
        ),
        _ => tracing::error!(
            file = %r.name,
            bytes = r.bytes,
            status = r.status.as_str(),
            http_status = r.http_status.unwrap_or(0),
            attempts = r.attempts,
            error = r.error.as_deref().unwrap_or(""),
            "File not uploaded."
        ),
    }
}

/// The forwarder that makes every connection leave from `--own-ports`, if set. Its private
/// socket goes beside the ledger, or in the temporary directory (a read-only volume).
fn own_ports(
    cfg: &UploadConfig,
) -> Result<Option<crate::ownports::forward::OwnPorts>, EngineError> {
    let (Some(range), Some(url)) = (cfg.own_ports, cfg.connect_url()) else {
        return Ok(None);
    };
    let tmp = std::env::temp_dir();
    crate::ownports::forward::OwnPorts::start(
        &url,
        super::redact::FILE_PLACEHOLDER,
        range,
        &[cfg.layout.dir.as_path(), tmp.as_path()],
    )
    .map(Some)
    .map_err(EngineError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_is_stable_and_distinct() {
        let a = idempotency_key("uid-1", "capture-1.pcap", "ab");
        assert_eq!(a, idempotency_key("uid-1", "capture-1.pcap", "ab"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, idempotency_key("uid-2", "capture-1.pcap", "ab"));
        assert_ne!(a, idempotency_key("uid-1", "capture-2.pcap", "ab"));
        assert_ne!(a, idempotency_key("uid-1", "capture-1.pcap", "ac"));
    }
}
