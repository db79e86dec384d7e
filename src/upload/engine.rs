//! The upload engine: one file, one deadline, retries inside it. Every path (the exec hook,
//! the HTTP hook, `--continuous`) uploads through [`Engine::upload`].
//!
//! Memory stays bounded whatever the file size: a first pass streams the file through SHA-256
//! (and through gzip when `--gzip`, whose output is deterministic, so its digest and length are
//! known before sending), then the body is streamed from the file in 64 KiB chunks with a
//! `Content-Length`, which presigned-URL receivers require. Every attempt reads the file with
//! positional reads (`pread`), so attempts never share a file offset.
//!
//! One attempt cannot eat the whole budget ([`retry::attempt_limits`]): it is capped at what
//! is left, or at half of it when the body would fit at the minimum rate; a watchdog aborts it
//! when the receiver accepts no body bytes for a few seconds (it stopped reading) or sends no
//! response head for a while after the whole body; connects alone are bounded shorter. An
//! aborted attempt is a timeout, retried like any other.

use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{self, HeaderValue};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::args::Method;
use super::config::UploadConfig;
use super::ledger::{self, FileLock, Ledger, LockOutcome};
use super::retry::{self, RetryAction, TransportError};
use super::state::Candidate;
use crate::capture::files::FileFormat;

pub const PCAP_MEDIA_TYPE: &str = "application/vnd.tcpdump.pcap";
const CHUNK: usize = 64 * 1024;
/// A connect that has not succeeded in this long will not: retry on a fresh one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How much of an error response body is kept for the report (scrubbed).
const ERROR_BODY_LIMIT: usize = 512;
/// How often an attempt's watchdog looks at the body's progress.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// A body as a stream of chunks read from the file.
type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Sent now and accepted.
    Uploaded,
    /// In the ledger: sent earlier (by this or another uploader), not sent again.
    AlreadyUploaded,
    /// Refused for good (4xx other than 408/429, 3xx, 501, TLS certificate failure).
    Rejected,
    /// Attempted, but every attempt failed before the deadline (or a stop).
    Failed,
    /// No time (or no lock) was left to try it.
    NotAttempted,
    /// Deleted by the capture's ring bound (`--max-files`, `--max-total-size`) before it could
    /// be sent: lost by configuration, not by the upload.
    Deleted,
    /// Named like a capture file but not one: a symbolic link or other non-regular file (never
    /// followed), or no pcap header (empty, or other content). Not sent, not counted as left:
    /// the capture never writes such a file, so no captured packet is in it.
    Skipped,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Uploaded => "uploaded",
            FileStatus::AlreadyUploaded => "already_uploaded",
            FileStatus::Rejected => "rejected",
            FileStatus::Failed => "failed",
            FileStatus::NotAttempted => "not_attempted",
            FileStatus::Deleted => "deleted",
            FileStatus::Skipped => "skipped",
        }
    }

    pub fn is_done(self) -> bool {
        matches!(self, FileStatus::Uploaded | FileStatus::AlreadyUploaded)
    }
}

/// The outcome for one file, as it appears in the report.
#[derive(Clone, Debug, Serialize)]
pub struct FileResult {
    pub name: String,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub status: FileStatus,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
    pub duration_ms: u64,
    /// Not attempted because another uploader held the file: worth another look later.
    #[serde(skip)]
    pub busy: bool,
}

impl FileResult {
    /// A file nothing has been tried for yet.
    pub fn not_attempted(c: &Candidate) -> FileResult {
        FileResult::new(c.name.clone(), c.size, FileStatus::NotAttempted)
    }

    /// A result with only a name, a size and a status; the rest empty.
    pub fn new(name: String, bytes: u64, status: FileStatus) -> FileResult {
        FileResult {
            name,
            bytes,
            sha256: None,
            status,
            attempts: 0,
            http_status: None,
            error: None,
            repaired: None,
            duration_ms: 0,
            busy: false,
        }
    }
}

/// Counters of the uploader, rendered as Prometheus text.
#[derive(Default)]
pub struct UploadMetrics {
    pub files_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub files_already_uploaded: AtomicU64,
    pub files_rejected: AtomicU64,
    pub files_failed: AtomicU64,
    pub files_deleted: AtomicU64,
    pub files_skipped_not_capture: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    pub last_success_seconds: AtomicU64,
    pub prestop_runs: AtomicU64,
}

impl UploadMetrics {
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(1024);
        let mut m = |name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        };
        m(
            "sidecap_upload_files_total",
            "counter",
            "Files uploaded and accepted by the receiver.",
            &self.files_uploaded,
        );
        m(
            "sidecap_upload_bytes_total",
            "counter",
            "Bytes of files uploaded (file size, before gzip).",
            &self.bytes_uploaded,
        );
        m(
            "sidecap_upload_files_skipped_total",
            "counter",
            "Files found in the ledger (uploaded earlier) and not sent again.",
            &self.files_already_uploaded,
        );
        m(
            "sidecap_upload_files_rejected_total",
            "counter",
            "Files refused for good by the receiver (or its TLS certificate).",
            &self.files_rejected,
        );
        m(
            "sidecap_upload_files_failed_total",
            "counter",
            "Files whose attempts all failed before their deadline.",
            &self.files_failed,
        );
        m(
            "sidecap_upload_files_deleted_total",
            "counter",
            "Files the capture's ring bound deleted before they could be uploaded.",
            &self.files_deleted,
        );
        m(
            "sidecap_upload_files_not_capture_total",
            "counter",
            "Files named like captures but not sent: a link or special file, or no pcap header.",
            &self.files_skipped_not_capture,
        );
        m(
            "sidecap_upload_attempts_total",
            "counter",
            "HTTP requests sent.",
            &self.attempts,
        );
        m(
            "sidecap_upload_retries_total",
            "counter",
            "Attempts that were retries.",
            &self.retries,
        );
        m(
            "sidecap_upload_in_flight",
            "gauge",
            "Files being uploaded now.",
            &self.in_flight,
        );
        m(
            "sidecap_upload_last_success_time_seconds",
            "gauge",
            "Unix time of the last accepted upload.",
            &self.last_success_seconds,
        );
        m(
            "sidecap_upload_prestop_runs_total",
            "counter",
            "preStop uploads run (exec or HTTP hook).",
            &self.prestop_runs,
        );
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

pub struct Engine {
    client: reqwest::Client,
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

/// Digests from the first pass.
struct Prepared {
    /// SHA-256 of the file bytes we send (hex).
    file_sha: String,
    /// SHA-256 of the body on the wire (base64), and its length.
    body_sha_b64: String,
    body_len: u64,
    file_len: u64,
}

/// How one attempt ended.
enum Attempt {
    Status {
        code: u16,
        retry_after: Option<String>,
        body: String,
    },
    Transport(TransportError, String),
}

impl Engine {
    pub fn new(cfg: Arc<UploadConfig>, metrics: Arc<UploadMetrics>) -> Result<Engine, EngineError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(CONNECT_TIMEOUT)
            // Not followed: a streamed body cannot be replayed, and credentials must not
            // travel to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sidecap/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| EngineError::Client(format!("--ca-file: {e}")))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| EngineError::Client(e.to_string()))?;
        Ok(Engine {
            client,
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
        let counter = match r.status {
            FileStatus::Uploaded => {
                self.metrics.bytes_uploaded.fetch_add(r.bytes, Relaxed);
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.metrics.last_success_seconds.store(now, Relaxed);
                &self.metrics.files_uploaded
            }
            FileStatus::AlreadyUploaded => &self.metrics.files_already_uploaded,
            FileStatus::Rejected => &self.metrics.files_rejected,
            FileStatus::Failed | FileStatus::NotAttempted => &self.metrics.files_failed,
            FileStatus::Deleted => &self.metrics.files_deleted,
            FileStatus::Skipped => &self.metrics.files_skipped_not_capture,
        };
        counter.fetch_add(1, Relaxed);
        log_result(&r);
        r
    }

    async fn upload_inner(
        &self,
        c: &Candidate,
        t: Times,
        cancel: &CancellationToken,
    ) -> FileResult {
        let Times {
            deadline,
            lock_until,
            horizon,
        } = t;
        let mut r = FileResult::not_attempted(c);
        let fail = |mut r: FileResult, status: FileStatus, e: String| {
            r.status = status;
            r.error = Some(e);
            r
        };
        if self.cfg.url.is_none() {
            return fail(r, FileStatus::NotAttempted, "no --url configured".into());
        }
        let lock = match FileLock::acquire(&c.path, lock_until, cancel).await {
            Ok(LockOutcome::Locked(l)) => l,
            Ok(LockOutcome::Gone) => {
                return fail(
                    r,
                    FileStatus::Deleted,
                    "the file was deleted (capture ring bound) before it could be uploaded".into(),
                )
            }
            Ok(LockOutcome::Busy) => {
                if cancel.is_cancelled() {
                    return fail(
                        r,
                        FileStatus::NotAttempted,
                        "stopped before the upload started".into(),
                    );
                }
                r.busy = true;
                return fail(
                    r,
                    FileStatus::NotAttempted,
                    "another uploader is sending this file".into(),
                );
            }
            // volume::open refused a link, FIFO or device: planted, never followed.
            Err(e) if crate::volume::is_refused(&e) => {
                return fail(r, FileStatus::Skipped, format!("not uploaded: {e}"))
            }
            Err(e) => return fail(r, FileStatus::NotAttempted, format!("cannot open: {e}")),
        };
        let in_ledger = {
            let (ledger, name) = (self.ledger.clone(), c.name.clone());
            tokio::task::spawn_blocking(move || ledger.contains(&name))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        match in_ledger {
            Ok(true) => {
                r.status = FileStatus::AlreadyUploaded;
                return r;
            }
            Ok(false) => {}
            Err(e) => {
                // Without the ledger we cannot promise "never twice"; the receiver still gets an
                // Idempotency-Key. Losing the file would be worse than a duplicate.
                tracing::warn!(file = %c.name, ledger = %self.ledger.path().display(), error = %e, "Cannot read the upload ledger; uploading anyway.");
            }
        }
        let file = match lock.file() {
            Ok(f) => Arc::new(f),
            Err(e) => return fail(r, FileStatus::NotAttempted, format!("cannot open: {e}")),
        };
        let prep = {
            let (f, gzip, cancel) = (file.clone(), self.cfg.gzip, cancel.clone());
            let limit = c.limit;
            let prepared = tokio::task::spawn_blocking(move || {
                check_pcap_header(&f)?;
                Ok(prepare(f, limit, gzip, deadline, &cancel))
            })
            .await;
            match prepared {
                Ok(Err(not_pcap)) => return fail(r, FileStatus::Skipped, not_pcap),
                Ok(Ok(Ok(p))) => p,
                Ok(Ok(Err(e))) => return fail(r, FileStatus::NotAttempted, e),
                Err(e) => return fail(r, FileStatus::NotAttempted, format!("digest task: {e}")),
            }
        };
        r.bytes = prep.file_len;
        r.sha256 = Some(prep.file_sha.clone());
        let key = idempotency_key(&self.cfg.pod_uid, &c.name, &prep.file_sha);
        let mut last_error = String::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < retry::MIN_ATTEMPT || cancel.is_cancelled() {
                let why = if cancel.is_cancelled() {
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
                return fail(r, status, msg);
            }
            r.attempts += 1;
            self.metrics.attempts.fetch_add(1, Relaxed);
            if r.attempts > 1 {
                self.metrics.retries.fetch_add(1, Relaxed);
            }
            let attempt = tokio::select! {
                a = self.send_once(c, &file, &prep, &key, remaining, horizon, r.attempts) => a,
                _ = cancel.cancelled() => Attempt::Transport(TransportError::Other, "stopped during the upload".into()),
            };
            let action = match &attempt {
                Attempt::Status {
                    code,
                    retry_after,
                    body,
                } => {
                    r.http_status = Some(*code);
                    let a =
                        retry::classify_status(*code, retry_after.as_deref(), SystemTime::now());
                    if a != RetryAction::Success {
                        last_error = format!(
                            "HTTP {code}{}",
                            if body.is_empty() {
                                String::new()
                            } else {
                                format!(": {body}")
                            }
                        );
                        if (300..400).contains(code) {
                            last_error.push_str(
                                " (redirects are not followed: set --url to the final location)",
                            );
                        }
                    }
                    a
                }
                Attempt::Transport(kind, msg) => {
                    last_error = msg.clone();
                    retry::classify_transport(*kind)
                }
            };
            match action {
                RetryAction::Success => {
                    r.status = FileStatus::Uploaded;
                    r.error = None;
                    let entry = ledger::Entry {
                        name: c.name.clone(),
                        bytes: prep.file_len,
                        sha256: prep.file_sha.clone(),
                        uploaded_at: crate::capture::files::rfc3339(SystemTime::now()),
                        http_status: r.http_status.unwrap_or(0),
                        idempotency_key: key.clone(),
                    };
                    // fsync can stall on a busy volume: not on the runtime thread.
                    let ledger = self.ledger.clone();
                    let recorded = tokio::task::spawn_blocking(move || ledger.record(&entry))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)));
                    if let Err(e) = recorded {
                        tracing::warn!(file = %c.name, error = %e, "Uploaded, but cannot record it in the ledger: a later run may send it again (with the same Idempotency-Key).");
                    }
                    drop(lock);
                    return r;
                }
                RetryAction::Permanent => return fail(r, FileStatus::Rejected, last_error),
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
                        file = %c.name,
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

    #[allow(clippy::too_many_arguments)]
    async fn send_once(
        &self,
        c: &Candidate,
        file: &Arc<std::fs::File>,
        prep: &Prepared,
        key: &str,
        remaining: Duration,
        horizon: Instant,
        attempt: u32,
    ) -> Attempt {
        let cfg = &self.cfg;
        let redact = |e: &reqwest::Error| classify_reqwest(e, &cfg.redactor);
        let url = match cfg.url_for(&c.name) {
            Some(u) => u,
            None => return Attempt::Transport(TransportError::Other, "no --url".into()),
        };
        let method = match cfg.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
        };
        let run_left = horizon.saturating_duration_since(Instant::now());
        let limits = retry::attempt_limits(remaining, run_left, prep.body_len);
        let progress = Arc::new(Progress::default());
        let body = match body_stream(file.clone(), prep.file_len, cfg.gzip) {
            Ok(b) => tracked(b, prep.body_len, progress.clone()),
            Err(e) => {
                return Attempt::Transport(
                    TransportError::Other,
                    format!("cannot read the file: {e}"),
                )
            }
        };
        let mut req = self.client.request(method, &url).timeout(limits.total);
        for (n, v) in &cfg.headers {
            req = req.header(n, v);
        }
        for (n, v) in &cfg.pod {
            req = req.header(n, v);
        }
        if let Some(p) = &cfg.bearer_token_file {
            let mut redactor = cfg.redactor.clone();
            match super::config::read_token(p, &mut redactor) {
                Ok(t) => {
                    if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                        v.set_sensitive(true);
                        req = req.header(header::AUTHORIZATION, v);
                    }
                }
                // Worth a retry: a Secret being updated is briefly absent.
                Err(e) => return Attempt::Transport(TransportError::Other, e),
            }
        }
        req = req
            .header("x-sidecap-file", &c.name)
            .header("x-sidecap-sha256", &prep.file_sha)
            .header("x-sidecap-attempt", attempt.to_string())
            .header("idempotency-key", key);
        if let Some(field) = &cfg.form {
            let (fname, mime) = if cfg.gzip {
                (format!("{}.gz", c.name), "application/gzip")
            } else {
                (c.name.clone(), FileFormat::media_type_of(&c.name))
            };
            let part =
                reqwest::multipart::Part::stream_with_length(body, prep.body_len).file_name(fname);
            let part = match part.mime_str(mime) {
                Ok(p) => p,
                Err(e) => return Attempt::Transport(TransportError::Other, e.to_string()),
            };
            req = req.multipart(reqwest::multipart::Form::new().part(field.clone(), part));
        } else {
            req = req
                .header(header::CONTENT_TYPE, FileFormat::media_type_of(&c.name))
                .header(header::CONTENT_LENGTH, prep.body_len)
                .header(
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", c.name),
                )
                .header("content-digest", format!("sha-256=:{}:", prep.body_sha_b64))
                .body(body);
            if cfg.gzip {
                req = req.header(header::CONTENT_ENCODING, "gzip");
            }
        }
        let exchange = async {
            let mut resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let (k, m) = redact(&e);
                    return Attempt::Transport(k, m);
                }
            };
            let code = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            // Read (a bounded part of) the response so the connection can be reused and an
            // error says what the receiver said.
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(ch)) => {
                        if body.len() < ERROR_BODY_LIMIT {
                            body.extend_from_slice(
                                &ch[..ch.len().min(ERROR_BODY_LIMIT - body.len())],
                            );
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if (200..300).contains(&code) {
                            // The status is what counts; a body cut short after it changes
                            // nothing.
                            break;
                        }
                        let (k, m) = redact(&e);
                        return Attempt::Transport(k, m);
                    }
                }
            }
            let text = if (200..300).contains(&code) {
                String::new()
            } else {
                let t = String::from_utf8_lossy(&body);
                let t: String = t
                    .chars()
                    .map(|ch| if ch.is_control() { ' ' } else { ch })
                    .collect();
                cfg.redactor.scrub(t.trim())
            };
            Attempt::Status {
                code,
                retry_after,
                body: text,
            }
        };
        tokio::select! {
            a = exchange => a,
            why = watch(&progress, limits) => Attempt::Transport(TransportError::Timeout, why),
        }
    }
}

/// When the body of one attempt last moved: the instants the HTTP stack took a chunk and took
/// the end of the body.
struct Progress {
    started: Instant,
    last_chunk: Mutex<Option<Instant>>,
    body_done: Mutex<Option<Instant>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            last_chunk: Mutex::new(None),
            body_done: Mutex::new(None),
        }
    }
}

impl Progress {
    fn set(m: &Mutex<Option<Instant>>) {
        if let Ok(mut g) = m.lock() {
            *g = Some(Instant::now());
        }
    }

    fn get(m: &Mutex<Option<Instant>>) -> Option<Instant> {
        m.lock().ok().and_then(|g| *g)
    }
}

/// Counts the chunks the HTTP stack takes: it takes the next one only when the previous one is
/// on its way, so a receiver that stops reading stops the count. The body is done when its
/// last byte was taken: with a `Content-Length` the HTTP stack stops polling the stream after
/// `len` bytes and never sees its end, so waiting for the end would leave the response wait to
/// the stall timer (5 s, whatever the budget: the bug of issue 10).
fn tracked(s: ByteStream, len: u64, p: Arc<Progress>) -> reqwest::Body {
    let p2 = p.clone();
    let mut taken = 0u64;
    let s = s
        .map(move |item| {
            Progress::set(&p.last_chunk);
            if let Ok(b) = &item {
                taken += b.len() as u64;
                if taken >= len {
                    Progress::set(&p.body_done);
                }
            }
            item
        })
        .chain(futures_util::stream::poll_fn(move |_| {
            Progress::set(&p2.body_done);
            Poll::Ready(None)
        }));
    reqwest::Body::wrap_stream(s)
}

/// Resolves when the attempt should be abandoned: no body progress for `limits.stall` (the
/// receiver stopped reading), or no response for `limits.response` after the whole body went
/// out. Before the first chunk the connect timeout applies. Returns why.
async fn watch(p: &Progress, limits: retry::AttemptLimits) -> String {
    loop {
        tokio::time::sleep(WATCH_TICK).await;
        let now = Instant::now();
        if let Some(done) = Progress::get(&p.body_done) {
            if now.duration_since(done) >= limits.response {
                return format!(
                    "timed out: no response within {} ms after the whole body was sent",
                    limits.response.as_millis()
                );
            }
            continue;
        }
        let (since, allowed) = match Progress::get(&p.last_chunk) {
            Some(t) => (t, limits.stall),
            None => (p.started, CONNECT_TIMEOUT + limits.stall),
        };
        if now.duration_since(since) >= allowed {
            return format!(
                "timed out: the receiver accepted no data for {} ms (it stopped reading the body)",
                allowed.as_millis()
            );
        }
    }
}

impl FileLock {
    /// A new handle on the locked file (the lock stays with the original).
    pub fn file(&self) -> io::Result<std::fs::File> {
        self.handle().try_clone()
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
    hex(&h.finalize()[..16])
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A writer that only hashes and counts what is written to it.
struct HashWriter {
    h: Sha256,
    n: u64,
}

impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.h.update(b);
        self.n += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a shared file from `pos` on with positional reads: readers never share an offset.
struct PosReader {
    f: Arc<std::fs::File>,
    pos: u64,
}

impl Read for PosReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A capture file starts with a pcap file header or a pcapng Section Header Block (both at
/// least 24 bytes): one that does not (empty, or anything else named like a capture) is not
/// ours and is not sent. Err says what it is instead.
fn check_pcap_header(f: &std::fs::File) -> Result<(), String> {
    use crate::pcapfile::{FILE_HEADER_LEN, MAGIC_MICRO, MAGIC_NANO};
    let mut h = [0u8; FILE_HEADER_LEN];
    let mut got = 0;
    while got < h.len() {
        match f.read_at(&mut h[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read error is not "not a pcap": the upload's own read reports it.
            Err(_) => return Ok(()),
        }
    }
    if got == 0 {
        return Err("not uploaded: the file is empty (no pcap header): not a capture file".into());
    }
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let pcap = [MAGIC_MICRO, MAGIC_NANO]
        .iter()
        .any(|&m| magic == m || magic.swap_bytes() == m);
    // pcapng: a Section Header Block (its type reads the same in both byte orders) with the
    // byte-order magic after the block length.
    let bom = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let pcapng = magic == crate::pcapng::SHB_TYPE
        && [bom, bom.swap_bytes()].contains(&crate::pcapng::BYTE_ORDER_MAGIC);
    if got < FILE_HEADER_LEN || !(pcap || pcapng) {
        return Err(format!(
            "not uploaded: no pcap or pcapng file header ({got} bytes, starts with {}): not a capture file",
            hex(&h[..got.min(4)])
        ));
    }
    Ok(())
}

/// The first pass: digests of the file and of the body as sent. Stops at the deadline.
fn prepare(
    f: Arc<std::fs::File>,
    limit: Option<u64>,
    gzip: bool,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Prepared, String> {
    let len = f
        .metadata()
        .map_err(|e| format!("cannot stat: {e}"))?
        .len()
        .min(limit.unwrap_or(u64::MAX));
    let mut f = PosReader { f, pos: 0 };
    let mut file_h = Sha256::new();
    let mut gz = gzip.then(|| {
        flate2::write::GzEncoder::new(
            HashWriter {
                h: Sha256::new(),
                n: 0,
            },
            flate2::Compression::fast(),
        )
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        if Instant::now() >= deadline {
            return Err("deadline reached while computing the digest".into());
        }
        if cancel.is_cancelled() {
            return Err("stopped while computing the digest".into());
        }
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want]).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the file shrank while being read".into());
        }
        file_h.update(&buf[..n]);
        if let Some(g) = gz.as_mut() {
            g.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
        left -= n as u64;
    }
    let file_digest = file_h.finalize();
    let b64 = base64::engine::general_purpose::STANDARD;
    let (body_sha_b64, body_len) = match gz {
        Some(g) => {
            let w = g.finish().map_err(|e| e.to_string())?;
            (b64.encode(w.h.finalize()), w.n)
        }
        None => (b64.encode(file_digest), len),
    };
    Ok(Prepared {
        file_sha: hex(&file_digest),
        body_sha_b64,
        body_len,
        file_len: len,
    })
}

/// The body of one attempt: the first `len` bytes of the file, raw or gzipped, as a stream.
/// Each call reads from offset 0 with its own positional reader.
fn body_stream(file: Arc<std::fs::File>, len: u64, gzip: bool) -> io::Result<ByteStream> {
    if !gzip {
        // One blocking read per chunk, off the runtime thread (what tokio::fs does too).
        let s = futures_util::stream::unfold((file, 0u64), move |(f, pos)| async move {
            if pos >= len {
                return None;
            }
            let want = CHUNK.min((len - pos) as usize);
            let f2 = f.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let n = f2.read_at(&mut buf, pos)?;
                buf.truncate(n);
                Ok::<_, io::Error>(buf)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            match read {
                Ok(buf) if buf.is_empty() => Some((
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while being sent",
                    )),
                    (f, len),
                )),
                Ok(buf) => {
                    let next = pos + buf.len() as u64;
                    Some((Ok(Bytes::from(buf)), (f, next)))
                }
                Err(e) => Some((Err(e), (f, len))),
            }
        });
        return Ok(Box::pin(s));
    }
    // gzip runs on its own thread and hands chunks over a small bounded channel, so memory
    // stays at a few chunks however large the file is.
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    std::thread::Builder::new()
        .name("gzip".into())
        .spawn(move || {
            struct ChanWriter(tokio::sync::mpsc::Sender<io::Result<Bytes>>);
            impl Write for ChanWriter {
                fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                    self.0
                        .blocking_send(Ok(Bytes::copy_from_slice(b)))
                        .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
                    Ok(b.len())
                }
                fn flush(&mut self) -> io::Result<()> {
                    Ok(())
                }
            }
            let w = io::BufWriter::with_capacity(CHUNK, ChanWriter(tx.clone()));
            let mut g = flate2::write::GzEncoder::new(w, flate2::Compression::fast());
            let mut r = PosReader { f: file, pos: 0 }.take(len);
            let res = io::copy(&mut r, &mut g)
                .and_then(|_| g.finish())
                .and_then(|mut w| w.flush());
            if let Err(e) = res {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    let _ = tx.blocking_send(Err(e));
                }
            }
        })?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Box::pin(stream))
}

/// Maps a reqwest error to a transport class and a message with no URL and no secret in it.
pub(crate) fn classify_reqwest(
    e: &reqwest::Error,
    r: &super::redact::Redactor,
) -> (TransportError, String) {
    let mut chain = Vec::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push(s.to_string());
        src = s.source();
    }
    let detail = chain.join(": ");
    let lower = detail.to_ascii_lowercase();
    let kind = if e.is_timeout() {
        TransportError::Timeout
    } else if lower.contains("certificate") || lower.contains("invalidcertificate") {
        TransportError::Certificate
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        TransportError::Dns
    } else if e.is_connect() {
        TransportError::Connect
    } else if e.is_request() || e.is_body() {
        TransportError::Broken
    } else {
        TransportError::Other
    };
    let what = match kind {
        TransportError::Timeout => "timed out (the attempt's budget ran out)",
        TransportError::Certificate => "TLS certificate rejected (use --ca-file for a private CA)",
        TransportError::Dns => "cannot resolve the receiver's host name",
        TransportError::Connect => "cannot connect to the receiver",
        TransportError::Broken => "connection broken during the request",
        TransportError::Other => "request failed",
    };
    let msg = if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    };
    (kind, r.scrub(&msg))
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

    #[test]
    fn gzip_digest_matches_what_is_streamed() {
        // The first pass and the body must produce the same bytes, or Content-Digest lies.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = Arc::new(std::fs::File::open(&p).unwrap());
        let prep = prepare(
            f.clone(),
            None,
            true,
            Instant::now() + Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sent = rt.block_on(async {
            let mut s = body_stream(f.clone(), prep.file_len, true).unwrap();
            let mut out = Vec::new();
            while let Some(ch) = s.next().await {
                out.extend_from_slice(&ch.unwrap());
            }
            out
        });
        assert_eq!(sent.len() as u64, prep.body_len);
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.encode(Sha256::digest(&sent)), prep.body_sha_b64);
        let mut dec = Vec::new();
        flate2::read::GzDecoder::new(&sent[..])
            .read_to_end(&mut dec)
            .unwrap();
        assert_eq!(dec, data);
        assert_eq!(prep.file_sha, hex(&Sha256::digest(&data)));
    }

    #[test]
    fn body_streams_of_two_attempts_do_not_share_a_file_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = Arc::new(std::fs::File::open(&p).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (a, b) = rt.block_on(async {
            // An abandoned attempt read part of the file; the retry must still start at 0.
            let mut first = body_stream(f.clone(), data.len() as u64, false).unwrap();
            let mut a = first.next().await.unwrap().unwrap().to_vec();
            let mut second = body_stream(f.clone(), data.len() as u64, false).unwrap();
            let mut b = Vec::new();
            while let Some(ch) = second.next().await {
                b.extend_from_slice(&ch.unwrap());
            }
            while let Some(ch) = first.next().await {
                a.extend_from_slice(&ch.unwrap());
            }
            (a, b)
        });
        assert_eq!(a, data);
        assert_eq!(b, data);
    }
}
