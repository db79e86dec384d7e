//! The snapshot manifest: one small JSON document sent after a snapshot's files, saying what
//! the snapshot is (Pod, trigger and reason, window, capture counters) and listing every file
//! that covers the window with its SHA-256, packet count and time range, whether this snapshot
//! sent it or an earlier upload did. It is named `<prefix>-snapshot-<id>.json` and sent like a
//! capture file (same URL, method, headers, token, `--form`), with `Content-Type:
//! application/json`, retried the same way until the snapshot's deadline.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{self, HeaderValue};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::args::Method;
use super::engine::Engine;
use super::report::{FileResult, FileStatus};
use super::retry::{self, RetryAction};
use crate::files::{self, KernelStats};
use crate::snapshot::Ack;

pub const MEDIA_TYPE: &str = "application/json";
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// One attempt to send a few kilobytes: generous, and never past the deadline.
const ATTEMPT_MAX: Duration = Duration::from_secs(30);

/// The Pod, from the Downward API environment variables the manifests set.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Pod {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub node: Option<String>,
}

impl Pod {
    pub fn from_env() -> Pod {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Pod {
            namespace: get("POD_NAMESPACE"),
            name: get("POD_NAME"),
            uid: get("POD_UID"),
            node: get("NODE_NAME"),
        }
    }
}

/// One file of the snapshot, as read from the volume before it was sent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub packets: Option<u64>,
    pub first_packet_at: Option<String>,
    pub last_packet_at: Option<String>,
    /// uploaded / already_uploaded (by `--continuous` or an earlier snapshot) / failed / ...
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Window {
    /// `--last` in seconds (None: everything in the ring).
    pub last_seconds: Option<u64>,
    pub from: Option<String>,
    pub to: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    pub version: u32,
    pub kind: &'static str,
    pub id: String,
    pub sidecap_version: &'static str,
    /// `exec` (`sidecap snapshot`) or `annotation`.
    pub trigger: String,
    pub reason: String,
    pub requested_at: String,
    pub completed_at: String,
    pub pod: Pod,
    pub window: Window,
    /// The first and last packet of all listed files.
    pub first_packet_at: Option<String>,
    pub last_packet_at: Option<String>,
    pub packets: u64,
    /// The capture's answer to the request (live counters), or None with `capture_note` saying
    /// why (not running: its files are all final; no answer: an older capture).
    pub capture: Option<Ack>,
    pub capture_note: String,
    /// Counters of the capture's done marker, when it has stopped.
    pub kernel: Option<KernelStats>,
    pub disk_dropped_packets: Option<u64>,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn file_name(prefix: &str, id: &str) -> String {
        format!("{prefix}-snapshot-{id}.json")
    }

    /// Fills the totals from the file entries.
    pub fn total(&mut self) {
        self.packets = self.files.iter().filter_map(|f| f.packets).sum();
        self.first_packet_at = self.files.iter().find_map(|f| f.first_packet_at.clone());
        self.last_packet_at = self
            .files
            .iter()
            .rev()
            .find_map(|f| f.last_packet_at.clone());
    }
}

fn ts(t: Option<(u32, u32)>, nano: bool) -> Option<String> {
    let (s, frac) = t?;
    let ns = if nano {
        frac
    } else {
        frac.saturating_mul(1000)
    };
    let at = SystemTime::UNIX_EPOCH + Duration::new(s as u64, ns.min(999_999_999));
    Some(files::rfc3339(at))
}

/// Reads a file once: SHA-256 of its bytes (what the receiver got: the same digest the engine
/// sends in `X-Sidecap-Sha256`), its packet count and first/last packet time. Blocking.
pub fn describe(path: &std::path::Path, name: &str, limit: Option<u64>) -> FileEntry {
    let mut e = FileEntry {
        name: name.to_string(),
        ..Default::default()
    };
    let Ok(f) = crate::volume::open(path, crate::volume::Access::Read) else {
        return e;
    };
    if let Ok(scan) = crate::pcapng::scan_any(&f) {
        e.packets = Some(scan.packets);
        e.first_packet_at = ts(scan.first_ts, scan.nano);
        e.last_packet_at = ts(scan.last_ts, scan.nano);
    }
    // A second handle reads from the start whatever offset the scan left on the first.
    let Ok(f2) = crate::volume::open(path, crate::volume::Access::Read) else {
        return e;
    };
    let mut reader = f2.take(limit.unwrap_or(u64::MAX));
    let (mut h, mut n) = (Sha256::new(), 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(_) => return e,
        }
    }
    e.bytes = n;
    e.sha256 = Some(super::body::hex(&h.finalize()));
    e
}

/// Sends the manifest until accepted, refused for good, the deadline or `cancel`.
pub async fn send(
    engine: &Engine,
    name: &str,
    body: Vec<u8>,
    deadline: Instant,
    cancel: &CancellationToken,
) -> FileResult {
    let mut r = FileResult::new(
        name.to_string(),
        body.len() as u64,
        FileStatus::NotAttempted,
    );
    let sha = super::body::hex(&Sha256::digest(&body));
    r.sha256 = Some(sha.clone());
    let key = super::engine::idempotency_key(&engine.config().pod_uid, name, &sha);
    let body = bytes::Bytes::from(body);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining < retry::MIN_ATTEMPT || cancel.is_cancelled() {
            if r.attempts > 0 {
                r.status = FileStatus::Failed;
            }
            r.error.get_or_insert_with(|| "deadline reached".into());
            return r;
        }
        r.attempts += 1;
        let req = request(
            engine,
            name,
            body.clone(),
            &sha,
            &key,
            remaining.min(ATTEMPT_MAX),
        );
        let action = match req {
            Err(e) => {
                r.error = Some(e);
                RetryAction::Retry { retry_after: None }
            }
            Ok(req) => match exchange(req, engine, &mut r, cancel).await {
                Some(a) => a,
                None => continue,
            },
        };
        match action {
            RetryAction::Success => {
                r.status = FileStatus::Uploaded;
                r.error = None;
                return r;
            }
            RetryAction::Permanent => {
                r.status = FileStatus::Rejected;
                return r;
            }
            RetryAction::Retry { retry_after } => {
                let b = retry::backoff(r.attempts - 1, BACKOFF_BASE, BACKOFF_CAP, rand::random());
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(sleep) = retry::next_sleep(b, retry_after, left) else {
                    continue;
                };
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        }
    }
}

/// Sends one request; the retry action its answer calls for, None when `cancel` ended it.
async fn exchange(
    req: reqwest::RequestBuilder,
    engine: &Engine,
    r: &mut FileResult,
    cancel: &CancellationToken,
) -> Option<RetryAction> {
    let sent = tokio::select! {
        s = req.send() => s,
        _ = cancel.cancelled() => return None,
    };
    Some(match sent {
        Ok(resp) => {
            let code = resp.status().as_u16();
            r.http_status = Some(code);
            let after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let a = retry::classify_status(code, after.as_deref(), SystemTime::now());
            if a != RetryAction::Success {
                r.error = Some(format!("HTTP {code}"));
            }
            a
        }
        Err(e) => {
            let (kind, msg) = super::request::classify_reqwest(&e, &engine.config().redactor);
            r.error = Some(msg);
            retry::classify_transport(kind)
        }
    })
}

/// One request carrying the manifest, with the headers every upload carries.
fn request(
    engine: &Engine,
    name: &str,
    body: bytes::Bytes,
    sha: &str,
    key: &str,
    timeout: Duration,
) -> Result<reqwest::RequestBuilder, String> {
    let cfg = engine.config();
    let url = cfg.url_for(name).ok_or("no --url configured")?;
    let method = match cfg.method {
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
    };
    let mut req = engine.client().request(method, &url).timeout(timeout);
    for (n, v) in cfg.headers.iter().chain(&cfg.pod) {
        req = req.header(n, v);
    }
    if let Some(p) = &cfg.bearer_token_file {
        let mut redactor = cfg.redactor.clone();
        let t = super::config::read_token(p, &mut redactor)
            .map_err(|e| crate::exit::with_causes(&e))?;
        let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|e| e.to_string())?;
        v.set_sensitive(true);
        req = req.header(header::AUTHORIZATION, v);
    }
    req = req
        .header("x-sidecap-file", name)
        .header("x-sidecap-sha256", sha)
        .header("idempotency-key", key);
    if let Some(field) = &cfg.form {
        let part = reqwest::multipart::Part::bytes(body.to_vec())
            .file_name(name.to_string())
            .mime_str(MEDIA_TYPE)
            .map_err(|e| e.to_string())?;
        return Ok(req.multipart(reqwest::multipart::Form::new().part(field.clone(), part)));
    }
    Ok(req
        .header(header::CONTENT_TYPE, MEDIA_TYPE)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )
        .body(body))
}
