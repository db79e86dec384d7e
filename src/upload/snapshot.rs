//! Snapshots from the uploader's side: `sidecap snapshot` (run with `kubectl exec` in the
//! uploader container) and the annotation trigger of `sidecap uploader` ([`super::annotations`])
//! both call [`take`]. The protocol with the capture is in [`crate::snapshot`].
//!
//! One snapshot: pin the files that cover the window (so the ring keeps them), ask the running
//! capture to finish its current file and wait for its answer, list again, upload every file of
//! the window oldest first through the one [`Engine`] (the ledger and the per-file locks make
//! it at most once per file with `--continuous`, the preStop hook and other snapshots; a file
//! already sent is listed, not sent again), unpinning each file once it is sent, then send the
//! manifest ([`super::manifest`]) and remove the pin.
//!
//! A preStop upload takes precedence: once one has started (in this process, or recorded in
//! `<prefix>.prestop-start` by another), the snapshot starts no new file; the preStop run
//! uploads everything anyway, within its own deadline.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::args::UploadOpts;
use super::engine::Engine;
use super::manifest::{self, FileEntry, Manifest, Pod, Window};
use super::report::{FileResult, FileStatus};
use super::state::{self, Candidate, CaptureState};
use super::{report, UploadError};
use crate::exit;
use crate::files::{self, KernelStats, Layout};
use crate::process::Shutdown;
use crate::snapshot::{self as contract, Ack, Pin, Request};

/// A pin outlives the snapshot's own deadline by this much, so that it never expires under a
/// snapshot that is still running, yet a crashed uploader's pin ends soon after.
const PIN_SLACK: Duration = Duration::from_secs(60);
/// How often the requester looks for the capture's answer.
const ACK_POLL: Duration = Duration::from_millis(50);

/// `sidecap snapshot`: run in the uploader container (`kubectl exec`).
#[derive(Args, Debug, Clone)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub opts: UploadOpts,

    /// Only the files that cover the last DURATION (e.g. 5m); default: everything in the ring.
    #[arg(long, env = "SIDECAP_SNAPSHOT_LAST", value_name = "DURATION")]
    pub last: Option<String>,

    /// Why the snapshot was taken: goes into the manifest and the log.
    #[arg(long, env = "SIDECAP_SNAPSHOT_REASON", default_value = "")]
    pub reason: String,

    /// How long the whole snapshot may take (the capture's answer, every file, the manifest).
    #[arg(long, env = "SIDECAP_SNAPSHOT_TIMEOUT", default_value = "10m")]
    pub timeout: String,

    /// How long to wait for the running capture to finish its current file. A capture that
    /// does not answer (older than snapshots) gets exit code 8, after its finished files were
    /// uploaded.
    #[arg(long, env = "SIDECAP_SNAPSHOT_ACK_TIMEOUT", default_value = "20s")]
    pub ack_timeout: String,
}

/// What started a snapshot and why.
#[derive(Clone, Debug)]
pub struct Trigger {
    /// `exec` or `annotation`.
    pub kind: &'static str,
    pub reason: String,
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub last: Option<Duration>,
    pub timeout: Duration,
    pub ack_timeout: Duration,
}

/// The result of one snapshot.
#[derive(Debug)]
pub struct Outcome {
    pub manifest: Manifest,
    pub manifest_result: FileResult,
    pub results: Vec<FileResult>,
    pub exit_code: u8,
    /// Why it ended, one sentence.
    pub reason: String,
}

impl Outcome {
    /// The one line `sidecap snapshot` prints.
    pub fn summary(&self) -> String {
        let t = report::totals(&self.results);
        format!(
            "snapshot {}: {} file(s) covering {} packet(s): {} uploaded, {} already uploaded, {} deleted by the ring, {} left; manifest {} {}; {}",
            self.manifest.id,
            t.files,
            self.manifest.packets,
            t.uploaded,
            t.already_uploaded,
            t.deleted,
            t.left,
            self.manifest_result.name,
            self.manifest_result.status.as_str(),
            self.reason
        )
    }
}

/// Runs a blocking step off the runtime thread (the volume can be slow); None if it panicked.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    super::blocking::value(f).await.ok()
}

/// Takes one snapshot.
pub async fn take(
    engine: &Engine,
    trigger: Trigger,
    opts: Options,
    cancel: &CancellationToken,
) -> Outcome {
    let (started, started_wall) = (Instant::now(), SystemTime::now());
    let deadline = started + opts.timeout;
    let layout = engine.config().layout.clone();
    let id = contract::new_id(started_wall);
    tracing::info!(snapshot = %id, trigger = trigger.kind, reason = %trigger.reason, last_s = opts.last.map(|l| l.as_secs()), "Snapshot started.");
    let mut manifest = new_manifest(&id, &trigger, opts.last, started_wall);
    let manifest_name = Manifest::file_name(&layout.prefix, &id);
    let mut pin = Pin {
        version: 1,
        id: id.clone(),
        ..Default::default()
    };
    let sel = select(engine, &mut pin, &trigger, opts, deadline, cancel).await;
    let Some(sel) = sel else {
        remove_quietly(contract::pin_path(&layout, &id)).await;
        manifest.completed_at = files::rfc3339(SystemTime::now());
        return Outcome {
            manifest,
            manifest_result: FileResult::new(manifest_name, 0, FileStatus::NotAttempted),
            results: vec![],
            exit_code: exit::RUNTIME,
            reason: "cannot list the capture directory".into(),
        };
    };
    manifest.capture_note = sel.asked.note;
    manifest.capture = sel.asked.ack;
    (manifest.kernel, manifest.disk_dropped_packets) = sel.marker_counts;
    let mut run = Sending {
        engine,
        layout: &layout,
        pin,
        deadline,
        since: started_wall,
        cancel,
    };
    let (results, stopped) = run.all(sel.todo, &mut manifest.files).await;
    manifest.total();
    manifest.completed_at = files::rfc3339(SystemTime::now());
    let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    let manifest_result = manifest::send(engine, &manifest_name, body, deadline, cancel).await;
    remove_quietly(contract::pin_path(&layout, &id)).await;
    let (exit_code, reason) = verdict(&results, &manifest_result, sel.asked.unanswered, stopped);
    let o = Outcome {
        manifest,
        manifest_result,
        results,
        exit_code,
        reason,
    };
    tracing::info!(snapshot = %o.manifest.id, exit_code, "{}", o.summary());
    o
}

fn new_manifest(id: &str, trigger: &Trigger, last: Option<Duration>, at: SystemTime) -> Manifest {
    let from = last.and_then(|l| at.checked_sub(l));
    Manifest {
        version: 1,
        kind: "sidecap-snapshot",
        id: id.to_string(),
        sidecap_version: env!("CARGO_PKG_VERSION"),
        trigger: trigger.kind.into(),
        reason: trigger.reason.clone(),
        requested_at: files::rfc3339(at),
        completed_at: String::new(),
        pod: Pod::from_env(),
        window: Window {
            last_seconds: last.map(|l| l.as_secs()),
            from: from.map(files::rfc3339),
            to: files::rfc3339(at),
        },
        first_packet_at: None,
        last_packet_at: None,
        packets: 0,
        capture: None,
        capture_note: String::new(),
        kernel: None,
        disk_dropped_packets: None,
        files: vec![],
    }
}

/// The files of a snapshot, decided.
struct Selection {
    /// Oldest first.
    todo: Vec<Candidate>,
    asked: Asked,
    /// The done marker's kernel and disk drops, when the capture has stopped.
    marker_counts: (Option<KernelStats>, Option<u64>),
}

/// Pins the window, asks the capture to finish its file, lists what covers the window and
/// narrows the pin to it. None: the directory cannot be listed.
async fn select(
    engine: &Engine,
    pin: &mut Pin,
    trigger: &Trigger,
    opts: Options,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Option<Selection> {
    let layout = engine.config().layout.clone();
    let window_from = opts.last.and_then(|l| SystemTime::now().checked_sub(l));
    let l = layout.clone();
    pin.from_seq = blocking(move || first_seq_in_window(&l, window_from))
        .await?
        .ok()?;
    renew(&layout, pin, deadline).await;
    let asked = ask_capture(&layout, &pin.id, &trigger.reason, opts.ack_timeout, cancel).await;
    let l = layout.clone();
    let listing = blocking(move || state::candidates(&l)).await?.ok()?;
    let marker_counts = match &listing.state {
        CaptureState::Final(m) => (Some(m.kernel.clone()), Some(m.disk_dropped_packets)),
        _ => (None, None),
    };
    let (from, to) = (
        pin.from_seq,
        asked.ack.as_ref().and_then(|a| a.finished_seq),
    );
    let mut todo: Vec<Candidate> = listing
        .ready
        .into_iter()
        .filter(|c| c.seq >= from && to.is_none_or(|t| c.seq <= t))
        .collect();
    todo.sort_by_key(|c| c.seq);
    pin.to_seq = Some(to.or(todo.last().map(|c| c.seq)).unwrap_or(from));
    renew(&layout, pin, deadline).await;
    Some(Selection {
        todo,
        asked,
        marker_counts,
    })
}

/// Uploading a snapshot's files, oldest first, unpinning each once it is sent.
struct Sending<'a> {
    engine: &'a Engine,
    layout: &'a Layout,
    pin: Pin,
    deadline: Instant,
    since: SystemTime,
    cancel: &'a CancellationToken,
}

impl Sending<'_> {
    /// Returns the results and, if it stopped early, why.
    async fn all(
        &mut self,
        todo: Vec<Candidate>,
        entries: &mut Vec<FileEntry>,
    ) -> (Vec<FileResult>, Option<String>) {
        let mut results = Vec::new();
        let mut stopped = None;
        for c in todo {
            if stopped.is_none() {
                stopped = why_stop(self.layout, self.since, self.cancel).await;
            }
            if let Some(why) = &stopped {
                let mut r = FileResult::not_attempted(&c);
                r.error = Some(why.clone());
                entries.push(entry_of(FileEntry::default(), &r));
                results.push(r);
                continue;
            }
            // Read before the upload, while the file is surely pinned.
            let (p, n, lim) = (c.path.clone(), c.name.clone(), c.limit);
            let described = blocking(move || manifest::describe(&p, &n, lim))
                .await
                .unwrap_or_default();
            let d = self.deadline;
            let r = self.engine.upload(&c, d, d, d, self.cancel).await;
            entries.push(entry_of(described, &r));
            results.push(r);
            self.pin.from_seq = c.seq + 1;
            renew(self.layout, &mut self.pin, d).await;
        }
        (results, stopped)
    }
}

fn entry_of(mut e: FileEntry, r: &FileResult) -> FileEntry {
    e.name = r.name.clone();
    if e.bytes == 0 {
        e.bytes = r.bytes;
    }
    if r.sha256.is_some() {
        e.sha256 = r.sha256.clone();
    }
    e.status = r.status.as_str().into();
    e.error = r.error.clone();
    e
}

fn verdict(
    results: &[FileResult],
    manifest: &FileResult,
    unanswered: bool,
    stopped: Option<String>,
) -> (u8, String) {
    let t = report::totals(std::slice::from_ref(manifest));
    let mut all = report::totals(results);
    all.rejected += t.rejected;
    all.left += t.left;
    let code = report::exit_code(&all);
    if code != exit::OK {
        let why = stopped.unwrap_or_else(|| match code {
            exit::REJECTED => "the receiver rejected a file for good".into(),
            _ => "deadline reached with files left".into(),
        });
        return (code, why);
    }
    if unanswered {
        let why = "the capture did not answer: its current file is not in the snapshot".into();
        return (exit::SNAPSHOT_UNANSWERED, why);
    }
    (exit::OK, "done".into())
}

/// Why the snapshot should start no further file, if it should stop.
async fn why_stop(
    layout: &Layout,
    since: SystemTime,
    cancel: &CancellationToken,
) -> Option<String> {
    if cancel.is_cancelled() {
        return Some("stopped by a signal".into());
    }
    let p = super::hooks::prestop_start_path(layout);
    let began = blocking(move || std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .await
        .flatten()
        .is_some_and(|t| t >= since);
    began.then(|| "a preStop upload started: it uploads every file itself".to_string())
}

/// The lowest sequence number of a file that covers the window (last written at or after its
/// start); when none does, the next number the capture will use.
fn first_seq_in_window(l: &Layout, from: Option<SystemTime>) -> std::io::Result<u64> {
    let listed = l.list()?;
    let next = listed.iter().map(|f| f.seq + 1).max().unwrap_or(0);
    let covers = |f: &files::CaptureFile| match from {
        None => true,
        Some(t) => std::fs::symlink_metadata(&f.path)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= t),
    };
    Ok(listed
        .iter()
        .filter(|f| f.not_regular.is_none() && covers(f))
        .map(|f| f.seq)
        .min()
        .unwrap_or(next))
}

/// Writes the pin with a fresh expiry. A pin that cannot be written only weakens the
/// guarantee (the ring may delete a file first; it is then reported as deleted).
async fn renew(layout: &Layout, pin: &mut Pin, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    pin.expires_unix_ms = contract::unix_ms(SystemTime::now() + left + PIN_SLACK);
    let (path, p) = (contract::pin_path(layout, &pin.id), pin.clone());
    match blocking(move || contract::write_json(&path, &p)).await {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            tracing::warn!(pin = %pin.id, error = %e, "Cannot write the snapshot pin: the ring may delete a file of the snapshot before it is sent.")
        }
        None => {}
    }
}

async fn remove_quietly(p: PathBuf) {
    let _ = blocking(move || std::fs::remove_file(p)).await;
}

/// What the capture said.
struct Asked {
    ack: Option<Ack>,
    note: String,
    /// It runs but did not answer in time.
    unanswered: bool,
}

/// Asks a running capture to finish its current file; returns its answer.
async fn ask_capture(
    layout: &Layout,
    id: &str,
    reason: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Asked {
    let note = |s: String, unanswered| Asked {
        ack: None,
        note: s,
        unanswered,
    };
    let l = layout.clone();
    let st = blocking(move || state::capture_state(&l))
        .await
        .unwrap_or(CaptureState::Dead);
    if st.is_final() {
        let s = format!(
            "capture {}: every file is final, none to finish",
            st.describe()
        );
        return note(s, false);
    }
    let req = Request {
        version: 1,
        id: id.into(),
        requested_at: files::rfc3339(SystemTime::now()),
        reason: reason.into(),
    };
    let (req_path, ack_path) = (
        contract::request_path(layout, id),
        contract::ack_path(layout, id),
    );
    let rp = req_path.clone();
    if let Some(Err(e)) = blocking(move || contract::write_json(&rp, &req)).await {
        return note(format!("cannot write the snapshot request: {e}"), true);
    }
    if let Some(a) = await_ack(layout, id, &req_path, ack_path, timeout, cancel).await {
        return a;
    }
    remove_quietly(req_path).await;
    let s = format!(
        "the capture did not answer the snapshot request within {} s: it runs a sidecap without snapshots (older than this uploader) or is stuck; its finished files are uploaded, the file it is writing is not",
        timeout.as_secs()
    );
    tracing::error!(snapshot = %id, "{s}");
    note(s, true)
}

/// Polls for the capture's answer until `timeout`: Some when it answered or became final.
async fn await_ack(
    layout: &Layout,
    id: &str,
    req_path: &std::path::Path,
    ack_path: std::path::PathBuf,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Option<Asked> {
    let t0 = Instant::now();
    let mut looks = 0u32;
    while t0.elapsed() < timeout && !cancel.is_cancelled() {
        let ap = ack_path.clone();
        let ack = blocking(move || contract::read_json::<Ack>(&ap))
            .await
            .flatten();
        if let Some(a) = ack.filter(|a| a.id == id) {
            remove_quietly(ack_path).await;
            let s = format!(
                "capture finished {} for the snapshot",
                a.finished.as_deref().unwrap_or("no file (none was open)")
            );
            return Some(Asked {
                ack: Some(a),
                note: s,
                unanswered: false,
            });
        }
        looks += 1;
        if looks.is_multiple_of(10) {
            let l = layout.clone();
            let st = blocking(move || state::capture_state(&l)).await;
            if let Some(st) = st.filter(|s| s.is_final()) {
                remove_quietly(req_path.to_path_buf()).await;
                return Some(Asked {
                    ack: None,
                    note: format!(
                        "capture {} before it answered: every file is final",
                        st.describe()
                    ),
                    unanswered: false,
                });
            }
        }
        tokio::time::sleep(ACK_POLL).await;
    }
    None
}

fn duration(flag: &str, v: &str) -> Result<Duration, UploadError> {
    let d = crate::config::parse_duration(v)
        .map_err(|e| UploadError::Invalid(format!("{flag}: {e}")))?;
    if d.is_zero() {
        return Err(UploadError::Invalid(format!("{flag} must be positive")));
    }
    Ok(d)
}

impl SnapshotArgs {
    pub fn options(&self) -> Result<Options, UploadError> {
        Ok(Options {
            last: self
                .last
                .as_deref()
                .map(|v| duration("--last", v))
                .transpose()?,
            timeout: duration("--timeout", &self.timeout)?,
            ack_timeout: duration("--ack-timeout", &self.ack_timeout)?,
        })
    }
}

/// `sidecap snapshot`: one snapshot, a one-line summary on stdout, the uploader's exit codes.
pub fn run(args: &SnapshotArgs, shutdown: Shutdown) -> Result<(), UploadError> {
    let opts = args.options()?;
    let cfg = std::sync::Arc::new(super::config::from_opts(&args.opts, true)?);
    super::check_dir(&cfg)?;
    let rt = super::runtime()?;
    let engine = {
        let _guard = rt.enter();
        super::engine(cfg, Default::default())?
    };
    let trigger = Trigger {
        kind: "exec",
        reason: args.reason.clone(),
    };
    let token = shutdown.token();
    let o = rt.block_on(take(&engine, trigger, opts, &token));
    rt.shutdown_background();
    println!("{}", o.summary());
    match o.exit_code {
        exit::OK => Ok(()),
        code => Err(UploadError::Snapshot {
            code,
            reason: o.reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_starts_at_the_oldest_file_written_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path(), "capture");
        let now = SystemTime::now();
        for (seq, age_s, part) in [
            (1u64, 600u64, false),
            (2, 200, false),
            (3, 100, false),
            (4, 0, true),
        ] {
            let name = format!(
                "capture-20261201T100000Z-{seq:06}.pcap{}",
                if part { ".part" } else { "" }
            );
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_modified(now - Duration::from_secs(age_s)).unwrap();
        }
        let at = |s: u64| first_seq_in_window(&l, Some(now - Duration::from_secs(s))).unwrap();
        assert_eq!(
            first_seq_in_window(&l, None).unwrap(),
            1,
            "no window: the whole ring"
        );
        assert_eq!(at(300), 2, "file 1 ended before the window");
        assert_eq!(at(150), 3);
        assert_eq!(at(10), 4, "only the live file");
        std::fs::remove_file(dir.path().join("capture-20261201T100000Z-000004.pcap.part")).unwrap();
        assert_eq!(at(10), 4, "nothing in the window: the next file");
    }
}
