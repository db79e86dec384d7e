//! The snapshot manifest: one small JSON document sent after a snapshot's files, saying what
//! the snapshot is (Pod, trigger and reason, window, capture counters) and listing every file
//! that covers the window with its SHA-256, packet count and time range, whether this snapshot
//! sent it or an earlier upload did. It is named `<prefix>-snapshot-<id>.json` and sent like a
//! capture file (same URL, method, headers, token, `--form`), with `Content-Type:
//! application/json`, retried the same way until the snapshot's deadline.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::engine::Engine;
use super::report::{FileResult, FileStatus};
use super::request;
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

/// Sends the manifest until accepted, refused for good, the deadline or `cancel`: one request
/// per attempt through the engine's client, built and read as a capture file's are
/// ([`request`]), retried by the same rules.
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
    let body_sha_b64 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
    r.sha256 = Some(sha.clone());
    let key = super::engine::idempotency_key(&engine.config().pod_uid, name, &sha);
    let p = request::Payload {
        name,
        sha256: &sha,
        key: &key,
        len: body.len() as u64,
        body_sha_b64: &body_sha_b64,
        media_type: MEDIA_TYPE,
        gzip: false,
        started: SystemTime::now(),
    };
    let body = bytes::Bytes::from(body);
    let mut last_error = String::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining < retry::MIN_ATTEMPT || cancel.is_cancelled() {
            if r.attempts > 0 {
                r.status = FileStatus::Failed;
            }
            let why = if last_error.is_empty() {
                "deadline reached".into()
            } else {
                last_error
            };
            r.error.get_or_insert(why);
            return r;
        }
        r.attempts += 1;
        let (client, cfg) = (engine.client(), engine.config());
        let timeout = remaining.min(ATTEMPT_MAX);
        let attempt = tokio::select! {
            a = request::send_bytes(client, engine.own(), cfg, &p, body.clone(), r.attempts, timeout) => a,
            _ = cancel.cancelled() => continue,
        };
        match super::engine::classify(&attempt, &mut r, &mut last_error) {
            RetryAction::Success => {
                r.status = FileStatus::Uploaded;
                r.error = None;
                return r;
            }
            RetryAction::Permanent => {
                r.status = FileStatus::Rejected;
                r.error = Some(last_error);
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
