//! The two ways files leave the volume: the preStop upload (exec hook `sidecap upload`, or
//! `GET /prestop` on the uploader) and `--continuous`. Both go through the one [`Engine`].
//!
//! preStop, from t0 (all hooks start together; the capture is SIGTERMed only after the app has
//! exited): upload every complete `.pcap` while waiting, newest first by default, then, once
//! the capture is final, list once more and upload what it finished last. If the capture is
//! still running when only the time to upload its last file is left, stop waiting and say so.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::args::Order;
use super::engine::{Engine, FileResult, FileStatus};
use super::report::{self, Report};
use super::retry;
use super::state::{self, Candidate, Listing};
use crate::capture::files;

/// How often the preStop path looks at the capture while waiting for it to finalize.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// How long the preStop path waits for another uploader's lock on one file before moving on
/// to the next (it comes back to it).
const LOCK_WAIT: Duration = Duration::from_millis(200);
/// Upload rate assumed before one file has been measured (conservative for a Pod's network).
const DEFAULT_RATE: f64 = 10.0 * 1024.0 * 1024.0;

fn order(c: &mut [Candidate], o: Order) {
    match o {
        Order::OldestFirst => c.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.name.cmp(&b.name))),
        Order::NewestFirst => c.sort_by(|a, b| b.seq.cmp(&a.seq).then(b.name.cmp(&a.name))),
    }
}

async fn list(engine: &Engine) -> Result<Listing, String> {
    let layout = engine.config().layout.clone();
    match tokio::task::spawn_blocking(move || state::candidates(&layout)).await {
        Ok(Ok(l)) => Ok(l),
        Ok(Err(e)) => Err(format!(
            "cannot list {}: {e}",
            engine.config().layout.dir.display()
        )),
        Err(e) => Err(format!("listing task: {e}")),
    }
}

/// The state of one preStop run, kept outside its future so that a backstop timeout still
/// leaves the results to report.
struct Run {
    results: Vec<FileResult>,
    index: HashMap<String, usize>,
    /// Files with a final answer (uploaded, in the ledger, rejected).
    settled: HashSet<String>,
    capture: String,
    reason: String,
    live_parts: Vec<(String, u64)>,
    bytes: u64,
    secs: f64,
}

impl Run {
    fn put(&mut self, r: FileResult) {
        if matches!(
            r.status,
            FileStatus::Uploaded
                | FileStatus::AlreadyUploaded
                | FileStatus::Rejected
                | FileStatus::Deleted
        ) {
            self.settled.insert(r.name.clone());
        }
        if r.status == FileStatus::Uploaded {
            self.bytes += r.bytes;
            self.secs += r.duration_ms as f64 / 1000.0;
        }
        match self.index.get(&r.name) {
            Some(&i) => self.results[i] = r,
            None => {
                self.index.insert(r.name.clone(), self.results.len());
                self.results.push(r);
            }
        }
    }

    fn rate(&self) -> f64 {
        if self.secs > 0.5 {
            self.bytes as f64 / self.secs
        } else {
            DEFAULT_RATE
        }
    }

    fn not_attempted(&mut self, c: &Candidate, why: &str) {
        if self.settled.contains(&c.name) || self.index.contains_key(&c.name) {
            return;
        }
        self.put(FileResult {
            name: c.name.clone(),
            bytes: c.size,
            sha256: None,
            status: FileStatus::NotAttempted,
            attempts: 0,
            http_status: None,
            error: Some(why.into()),
            repaired: c.repaired.clone(),
            duration_ms: 0,
            busy: false,
        });
    }

    async fn go(
        &mut self,
        engine: &Engine,
        deadline: Instant,
        budget: Duration,
        cancel: &CancellationToken,
    ) {
        let o = engine.config().order;
        let mut seen_final = false;
        let mut said_waiting = false;
        loop {
            let listing = match list(engine).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read the capture directory.");
                    self.reason = e;
                    return;
                }
            };
            self.capture = listing.state.describe();
            self.live_parts = listing.live_parts.clone();
            let is_final = listing.state.is_final();
            // A file we found locked by another uploader and that has since disappeared was
            // deleted by the capture's ring bound.
            let listed: HashSet<&str> = listing.ready.iter().map(|c| c.name.as_str()).collect();
            let mut vanished = Vec::new();
            for r in self.results.iter_mut() {
                if r.busy && !listed.contains(r.name.as_str()) {
                    r.busy = false;
                    r.status = FileStatus::Deleted;
                    r.error = Some(
                        "the file was deleted (capture ring bound) before it could be uploaded"
                            .into(),
                    );
                    vanished.push(r.name.clone());
                }
            }
            self.settled.extend(vanished);
            let mut pending: Vec<Candidate> = listing
                .ready
                .into_iter()
                .filter(|c| !self.settled.contains(&c.name))
                .collect();
            order(&mut pending, o);
            let mut had_busy = false;
            for (i, c) in pending.iter().enumerate() {
                let out_of_time =
                    deadline.saturating_duration_since(Instant::now()) < retry::MIN_ATTEMPT;
                if out_of_time || cancel.is_cancelled() {
                    let why = if cancel.is_cancelled() {
                        "stopped before it was tried"
                    } else {
                        "deadline reached before it was tried"
                    };
                    for rest in &pending[i..] {
                        self.not_attempted(rest, why);
                    }
                    break;
                }
                // A file another uploader holds is looked at again on a later pass instead
                // of blocking the others.
                let lock_until = Instant::now() + LOCK_WAIT;
                let r = engine.upload(c, deadline, lock_until, cancel).await;
                had_busy |= r.busy;
                self.put(r);
            }
            if cancel.is_cancelled() {
                self.reason = "stopped by a signal before everything was uploaded".into();
                return;
            }
            if deadline.saturating_duration_since(Instant::now()) < retry::MIN_ATTEMPT {
                self.reason = "deadline reached".into();
                return;
            }
            if is_final {
                if seen_final && !had_busy {
                    self.reason = format!("capture {}; every file handled", self.capture);
                    return;
                }
                // Files finished between our listing and the state check: list once more
                // (and give files another uploader holds another chance).
                seen_final = true;
                if had_busy {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(WAIT_POLL) => {}
                    }
                }
                continue;
            }
            // The capture is still writing. Wait for it, unless only the time to upload its
            // last file is left.
            let pending_bytes: u64 = self.live_parts.iter().map(|(_, s)| s).sum();
            let reserve = retry::wait_reserve(pending_bytes, self.rate(), budget);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining <= reserve {
                tracing::warn!(
                    live_files = ?self.live_parts.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "The capture has not finalized and waiting longer would miss the deadline: uploaded the complete files only."
                );
                self.reason =
                    "capture still running near the deadline: uploaded the complete files, not the file being written"
                        .into();
                return;
            }
            if !said_waiting {
                said_waiting = true;
                tracing::info!(
                    remaining_ms = remaining.as_millis() as u64,
                    "Waiting for the capture to finalize."
                );
            }
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(WAIT_POLL.min(remaining - reserve)) => {}
            }
        }
    }
}

/// One preStop upload: waits for the capture to be final, uploads everything, reports.
/// `start` is when the hook started (t0 as far as we can know it).
pub async fn prestop(
    engine: &Engine,
    start: Instant,
    start_wall: SystemTime,
    hook: &'static str,
    cancel: &CancellationToken,
) -> Report {
    let cfg = engine.config();
    let budget = cfg.budget();
    let deadline = start + budget;
    engine
        .metrics
        .prestop_runs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        hook,
        dir = %cfg.layout.dir.display(),
        url = %cfg.url_display,
        grace_period_ms = cfg.grace.as_millis() as u64,
        budget_ms = budget.as_millis() as u64,
        "preStop upload started."
    );
    let mut run = Run {
        results: Vec::new(),
        index: HashMap::new(),
        settled: HashSet::new(),
        capture: "unknown".into(),
        reason: String::new(),
        live_parts: Vec::new(),
        bytes: 0,
        secs: 0.0,
    };
    // Backstop: every step is bounded by the deadline already; this makes sure of it.
    let backstop = tokio::time::Instant::from_std(deadline + Duration::from_millis(200));
    if tokio::time::timeout_at(backstop, run.go(engine, deadline, budget, cancel))
        .await
        .is_err()
    {
        run.reason = "deadline reached".into();
    }
    for (name, size) in run.live_parts.clone() {
        if !run.index.contains_key(&name) {
            run.put(FileResult {
                name,
                bytes: size,
                sha256: None,
                status: FileStatus::NotAttempted,
                attempts: 0,
                http_status: None,
                error: Some("still being written by the capture".into()),
                repaired: None,
                duration_ms: 0,
                busy: false,
            });
        }
    }
    let totals = report::totals(&run.results);
    let exit_code = report::exit_code(&totals);
    let deadline_reached = totals.left > totals.rejected && !cancel.is_cancelled();
    if run.reason.is_empty() {
        run.reason = "done".into();
    }
    if deadline_reached && !run.reason.contains("deadline") {
        run.reason = format!("deadline reached: {}", run.reason);
    }
    Report {
        version: 1,
        sidecap_version: env!("CARGO_PKG_VERSION"),
        hook,
        started_at: files::rfc3339(start_wall),
        finished_at: files::rfc3339(SystemTime::now()),
        deadline: files::rfc3339(start_wall + budget),
        grace_period_ms: cfg.grace.as_millis() as u64,
        safety_margin_ms: cfg.margin.as_millis() as u64,
        deadline_reached,
        url: cfg.url_display.clone(),
        capture: run.capture,
        reason: run.reason,
        exit_code,
        not_uploaded: run
            .results
            .iter()
            .filter(|r| !r.status.is_done())
            .map(|r| r.name.clone())
            .collect(),
        totals,
        files: run.results,
    }
}

/// `--continuous`: uploads each finished file as it appears, until `cancel`. Stands aside
/// while a preStop upload runs in this process (`paused`), and shares the ledger and the
/// per-file locks with any other uploader.
pub async fn continuous(
    engine: Arc<Engine>,
    poll: Duration,
    file_timeout: Duration,
    cancel: CancellationToken,
    pause: Arc<super::Pause>,
) {
    let mut settled: HashSet<String> = engine.ledger().uploaded().unwrap_or_default();
    tracing::info!(
        poll_ms = poll.as_millis() as u64,
        already_uploaded = settled.len(),
        "Continuous upload started."
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
        if pause.active() {
            continue;
        }
        let listing = match list(&engine).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot list the capture directory.");
                continue;
            }
        };
        let mut ready: Vec<Candidate> = listing
            .ready
            .into_iter()
            .filter(|c| !settled.contains(&c.name))
            .collect();
        if ready.is_empty() {
            continue;
        }
        if let Ok(done) = engine.ledger().uploaded() {
            settled.extend(done);
            ready.retain(|c| !settled.contains(&c.name));
        }
        order(&mut ready, engine.config().order);
        for c in ready {
            if cancel.is_cancelled() || pause.active() {
                break;
            }
            let token = pause.file_token(&cancel);
            let now = Instant::now();
            // Another uploader holds it: skip it, the next poll looks again.
            let r = engine.upload(&c, now + file_timeout, now, &token).await;
            if matches!(
                r.status,
                FileStatus::Uploaded | FileStatus::AlreadyUploaded | FileStatus::Rejected
            ) && !r.busy
            {
                // A rejected file is not retried every poll; the preStop path tries it once more.
                settled.insert(r.name);
            }
        }
    }
}
