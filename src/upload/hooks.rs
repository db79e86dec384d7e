//! The two ways files leave the volume: the preStop upload (the exec hook `sidecap upload`)
//! and `--continuous`. Both go through the one [`Engine`].
//!
//! preStop, from t0 (all hooks start together; the capture is SIGTERMed only after the app has
//! exited): upload every complete `.pcap` while waiting, newest first by default, one file at a
//! time, listing the directory again after each file so that a file the capture finished in
//! the meantime (its final file above all) goes before the older backlog. While the capture
//! still runs, the backlog may use the budget only up to `deadline - reserve` (the reserve is
//! the estimated upload time of the file being written, see [`retry::wait_reserve`]), and one
//! file gets at most a share of the budget per turn when others wait, so a file the receiver
//! keeps refusing cannot hold the run while the final file waits. If the capture is still
//! running when only the reserve is left, stop waiting and say so.
//!
//! t0 is the start of the first preStop hook of this termination, kept on the volume in
//! `<prefix>.prestop-start`: a hook re-run by the kubelet (at-least-once) counts its deadline
//! from there, not from its own start. A start recorded there belongs to this termination only
//! if it is younger than the budget (an older one's deadline has passed: the kubelet would have
//! killed us already, so it is a leftover) and nothing started after it: not the capture (its
//! lock is rewritten when it starts) and not this container (its PID 1). A container restarted
//! after a liveness failure (preStop runs then too) or a volume kept from an earlier Pod leaves
//! such a file behind; it must not eat this termination's budget.
//!
//! The policy is [`Run::plan`] (and [`Run::note`] for what a result changes): pure functions
//! of what the run knows, unit-tested without a clock, a network or a directory; `go` only
//! lists, asks the plan, and does what it says.
//!
//! Exit 0 means every file that was there was accepted: a run the backstop cut off, or one
//! that never completed a listing, is never a success, whatever its partial results say.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::args::Order;
use super::engine::Engine;
use super::report::{self, FileResult, FileStatus, Report};
use super::state::{self, Candidate, Listing};
use super::{blocking, retry};
use crate::exit;
use crate::files::{self, Layout};

/// How often the preStop path looks at the capture while waiting for it to finalize.
const WAIT_POLL: Duration = Duration::from_millis(100);
/// How long the preStop path waits for another uploader's lock on one file before moving on
/// to the next (it comes back to it).
const LOCK_WAIT: Duration = Duration::from_millis(200);
/// Upload rate assumed before one file has been measured (conservative for a Pod's network).
const DEFAULT_RATE: f64 = 10.0 * 1024.0 * 1024.0;
/// The least time one file gets per turn when other files wait (see [`file_share`]).
const SHARE_MIN: Duration = Duration::from_secs(2);
/// How long a run that never finished a listing waits for a bare directory read at its end.
const LAST_LOOK: Duration = Duration::from_millis(300);
/// A file whose upload failed this fast without a single attempt (it cannot be opened or read)
/// is not tried again in this run: trying again at once would only spin.
const FAST_FAILURE: Duration = Duration::from_secs(1);

fn order(c: &mut [Candidate], o: Order) {
    match o {
        Order::OldestFirst => c.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.name.cmp(&b.name))),
        Order::NewestFirst => c.sort_by(|a, b| b.seq.cmp(&a.seq).then(b.name.cmp(&a.name))),
    }
}

/// The time one file may take per turn while other files wait: a quarter of the budget (at
/// least [`SHARE_MIN`]), or twice its estimated upload time when that is longer, so a large
/// file that is making progress is not cut off, while one the receiver keeps refusing gives
/// way after its share and comes back later.
pub fn file_share(budget: Duration, size: u64, rate: f64) -> Duration {
    let est = if rate > 0.0 {
        Duration::from_secs_f64((size as f64 / rate).min(1e6))
    } else {
        Duration::ZERO
    };
    (budget / 4).max(SHARE_MIN).max(est * 2 + SHARE_MIN)
}

/// `<prefix>.prestop-start`: the wall-clock start (Unix milliseconds) of the first preStop
/// hook of this termination.
pub fn prestop_start_path(layout: &Layout) -> std::path::PathBuf {
    layout.dir.join(format!("{}.prestop-start", layout.prefix))
}

/// When this preStop run's budget starts: the start recorded on the volume by an earlier hook
/// of this termination (a re-run hook), else now,
/// which is then recorded for later runs. See the module docs for what "of this termination"
/// means. Blocking (file I/O).
pub fn hook_start(layout: &Layout, grace: Duration) -> (Instant, SystemTime) {
    let (now, now_wall) = (Instant::now(), SystemTime::now());
    let path = prestop_start_path(layout);
    let earlier = crate::volume::read_bounded(&path, 64)
        .ok()
        .and_then(|t| String::from_utf8_lossy(&t).trim().parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    if let Some(then) = earlier {
        match earlier_start_of_this_termination(layout, then, now_wall, grace) {
            Ok(age) => {
                if let Some(start) = now.checked_sub(age) {
                    tracing::info!(
                        started_ms_ago = age.as_millis() as u64,
                        "An earlier preStop hook of this termination started before this one: the deadline counts from its start."
                    );
                    return (start, then);
                }
            }
            Err(why) => tracing::info!(
                file = %path.display(),
                why,
                "Ignoring a preStop start left by an earlier termination or Pod start: the deadline counts from now."
            ),
        }
    }
    let ms = now_wall
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    if let Err(e) = crate::files::write_atomic(&path, format!("{ms}\n").as_bytes()) {
        tracing::warn!(file = %path.display(), error = %e, "Cannot record the preStop start: a re-run hook would count its deadline from its own start.");
    }
    (now, now_wall)
}

/// The age of `then` if it is the start of an earlier hook of this termination, else why not.
fn earlier_start_of_this_termination(
    layout: &Layout,
    then: SystemTime,
    now: SystemTime,
    grace: Duration,
) -> Result<Duration, &'static str> {
    let age = now
        .duration_since(then)
        .map_err(|_| "it is in the future")?;
    // Not the budget: a hook the kubelet runs again between t0 + budget and t0 + grace belongs
    // to this termination and must count from t0 (and report the deadline as passed), not
    // start a fresh budget that the kubelet's SIGKILL at t0 + grace would cut short.
    if age >= grace {
        return Err("it is older than the grace period: the kubelet has killed that termination's containers");
    }
    // The capture takes (and rewrites) its lock when it starts; it never starts again once
    // the Pod is terminating.
    let lock = std::fs::symlink_metadata(layout.lock_path()).and_then(|m| m.modified());
    if lock.is_ok_and(|l| l > then) {
        return Err("the capture started after it");
    }
    if container_start().is_some_and(|c| c > then) {
        return Err("this container started after it");
    }
    Ok(age)
}

/// When PID 1 of our PID namespace started: the container's start (the uploader itself, or
/// the process an exec hook runs beside). Outside a container it is the host's init, older
/// than anything on the volume, so the check it feeds never fires there.
fn container_start() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/1/stat").ok()?;
    // Field 22 (starttime, clock ticks after boot); fields after the ")" of the command name.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)? as u64;
    Some(UNIX_EPOCH + Duration::from_secs(btime) + Duration::from_millis(ticks * 1000 / hz))
}

async fn list(engine: &Engine) -> Result<Listing, String> {
    let layout = engine.config().layout.clone();
    blocking::run(move || state::candidates(&layout))
        .await
        .map_err(|e| format!("cannot list {}: {e}", engine.config().layout.dir.display()))
}

/// The state of one preStop run, kept outside its future so that a backstop timeout still
/// leaves the results to report.
#[derive(Default)]
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
    /// The complete files of the last successful listing: what is reported as not attempted
    /// when the run ends early.
    last_ready: Vec<Candidate>,
    /// Names in the first listing; files listed later were finished during the run.
    first_seen: Option<HashSet<String>>,
    /// Upload calls per file that ended without an answer in this run.
    tries: HashMap<String, u32>,
    /// Files found locked by another uploader since the last upload that did something.
    busy_round: HashSet<String>,
    /// Files that failed at once without an attempt: not tried again in this run.
    given_up: HashSet<String>,
    /// Dead `.part` files that could not be repaired.
    unrepairable: HashSet<String>,
    /// The file being uploaded, for the report if the backstop fires.
    in_flight: Option<Candidate>,
    /// The directory could not be listed: the run could not see what to upload.
    listing_failed: bool,
    /// The backstop ended the run (a step blocked past the deadline): never a success.
    cut_off: bool,
    /// Names of ours that are not regular files, already warned about.
    planted: HashSet<String>,
}

/// What the run knows at one decision (see [`Run::plan`]).
#[derive(Clone, Copy, Debug)]
struct Now {
    /// Time left to the deadline.
    remaining: Duration,
    /// The whole preStop budget (grace period - margin).
    budget: Duration,
    /// The capture was final (stopped, or dead) at this listing.
    is_final: bool,
    /// An earlier listing saw it final already: this listing is complete.
    seen_final: bool,
    cancelled: bool,
}

/// The next step of a preStop run.
#[derive(Debug)]
enum Step {
    /// The run is over, for this reason.
    Stop(String),
    /// Upload `file` for at most `turn`; its response wait may use `usable`.
    Upload {
        file: Candidate,
        turn: Duration,
        usable: Duration,
    },
    /// The capture has just been seen final: list once more.
    ListAgain,
    /// Every file left is held by another uploader.
    AllBusy,
    /// The capture is still writing: look again after this long.
    Wait(Duration),
    /// The capture is still writing and only the reserve for its last file is left.
    GiveUpWaiting,
}

impl Run {
    fn put(&mut self, r: FileResult) {
        if matches!(
            r.status,
            FileStatus::Uploaded
                | FileStatus::AlreadyUploaded
                | FileStatus::Rejected
                | FileStatus::Deleted
                | FileStatus::Skipped
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
            error: Some(why.into()),
            repaired: c.repaired.clone(),
            ..FileResult::not_attempted(c)
        });
    }

    /// Which file goes next: never-busy before busy, fewer failed turns first, files the
    /// capture finished during the run before the backlog, then `--order`.
    fn sort_pending(&self, pending: &mut [Candidate], o: Order) {
        order(pending, o);
        let first = self.first_seen.as_ref();
        pending.sort_by_key(|c| {
            (
                self.busy_round.contains(&c.name),
                self.tries.get(&c.name).copied().unwrap_or(0),
                first.is_some_and(|f| f.contains(&c.name)),
            )
        });
    }

    fn take_listing(&mut self, listing: Listing) -> (Vec<Candidate>, bool) {
        self.capture = listing.state.describe();
        self.live_parts = listing.live_parts;
        let is_final = listing.state.is_final();
        for (name, what) in listing.planted {
            if self.planted.insert(name.clone()) {
                let why = format!("not uploaded: {name} is {what}, not a regular file: sidecap does not follow links or open special files on the shared volume");
                tracing::warn!(file = %name, what, "A name of the capture's on the shared volume is not a regular file: not followed, not uploaded (was it planted?).");
                self.put(FileResult {
                    error: Some(why),
                    ..FileResult::new(name, 0, FileStatus::Skipped)
                });
            }
        }
        for (name, size, why) in listing.unrepairable {
            self.unrepairable.insert(name.clone());
            self.put(FileResult {
                error: Some(format!(
                    "left by a capture that died and cannot be repaired: {why}"
                )),
                ..FileResult::new(name, size, FileStatus::Failed)
            });
        }
        // A file we found locked by another uploader and that has since disappeared was
        // deleted by the capture's ring bound.
        let listed: HashSet<&str> = listing.ready.iter().map(|c| c.name.as_str()).collect();
        let mut vanished = Vec::new();
        for r in self.results.iter_mut() {
            if r.busy && !listed.contains(r.name.as_str()) {
                r.busy = false;
                r.status = FileStatus::Deleted;
                r.error = Some(
                    "the file was deleted (capture ring bound) before it could be uploaded".into(),
                );
                vanished.push(r.name.clone());
            }
        }
        self.settled.extend(vanished);
        if self.first_seen.is_none() {
            self.first_seen = Some(listing.ready.iter().map(|c| c.name.clone()).collect());
        }
        let pending = listing
            .ready
            .iter()
            .filter(|c| !self.settled.contains(&c.name) && !self.given_up.contains(&c.name))
            .cloned()
            .collect();
        self.last_ready = listing.ready;
        (pending, is_final)
    }

    /// What the run does after a listing, from what it knows: `pending` (the files left, in
    /// the listing's order), whether the capture was final at the listing and at an earlier
    /// one, the time left. Pure: no clock, no I/O, so the policy is tested on its own.
    fn plan(&self, mut pending: Vec<Candidate>, now: Now, order: Order) -> Step {
        if now.cancelled {
            return Step::Stop("stopped by a signal before everything was uploaded".into());
        }
        if now.remaining < retry::MIN_ATTEMPT {
            return Step::Stop("deadline reached".into());
        }
        let reserve = if now.is_final {
            Duration::ZERO
        } else {
            let pending_bytes: u64 = self.live_parts.iter().map(|(_, s)| s).sum();
            retry::wait_reserve(pending_bytes, self.rate(), now.budget)
        };
        let usable = now.remaining.saturating_sub(reserve);
        if !pending.is_empty() && usable >= retry::MIN_ATTEMPT {
            self.sort_pending(&mut pending, order);
            if pending.iter().all(|c| self.busy_round.contains(&c.name)) {
                return Step::AllBusy;
            }
            // Others wait (the final file to come, or other files): a turn, not everything.
            let others_wait = !now.is_final || pending.len() > 1;
            let file = pending.swap_remove(0);
            let turn = if others_wait {
                usable.min(file_share(now.budget, file.size, self.rate()))
            } else {
                usable
            };
            return Step::Upload { file, turn, usable };
        }
        if now.is_final {
            if now.seen_final && pending.is_empty() {
                return Step::Stop(format!("capture {}; every file handled", self.capture));
            }
            // Files finished between our listing and the state check: list once more.
            return Step::ListAgain;
        }
        // The capture is still writing. Wait for it, unless only the time to upload its last
        // file is left.
        if now.remaining <= reserve {
            return Step::GiveUpWaiting;
        }
        Step::Wait(WAIT_POLL.min(now.remaining - reserve))
    }

    async fn go(
        &mut self,
        engine: &Engine,
        deadline: Instant,
        budget: Duration,
        cancel: &CancellationToken,
    ) {
        // Set once a listing has seen the capture final: every listing after it is complete.
        let mut seen_final = false;
        let mut said_waiting = false;
        loop {
            let listing = match list(engine).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read the capture directory.");
                    self.listing_failed = true;
                    self.reason = e;
                    return;
                }
            };
            let (pending, is_final) = self.take_listing(listing);
            let now = Now {
                remaining: deadline.saturating_duration_since(Instant::now()),
                budget,
                is_final,
                seen_final,
                cancelled: cancel.is_cancelled(),
            };
            let pause = match self.plan(pending, now, engine.config().order) {
                Step::Stop(reason) => {
                    self.reason = reason;
                    return;
                }
                Step::GiveUpWaiting => return self.give_up_waiting(),
                Step::Upload { file, turn, usable } => {
                    self.upload_one(engine, file, turn, usable, cancel).await;
                    seen_final |= is_final;
                    continue;
                }
                Step::ListAgain => {
                    seen_final = true;
                    continue;
                }
                Step::AllBusy => {
                    // Every file left is being sent by another uploader: look again shortly.
                    self.busy_round.clear();
                    WAIT_POLL
                }
                Step::Wait(d) => {
                    if !std::mem::replace(&mut said_waiting, true) {
                        tracing::info!(
                            remaining_ms = now.remaining.as_millis() as u64,
                            "Waiting for the capture to finalize."
                        );
                    }
                    d
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The capture has not finalized and only the reserve for its last file is left.
    fn give_up_waiting(&mut self) {
        tracing::warn!(
            live_files = ?self.live_parts.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "The capture has not finalized and waiting longer would miss the deadline: uploaded the complete files only."
        );
        self.reason =
            "capture still running near the deadline: uploaded the complete files, not the file being written"
                .into();
    }

    /// Uploads `c` within `turn` (the response wait may use `usable`), and notes how it went.
    async fn upload_one(
        &mut self,
        engine: &Engine,
        c: Candidate,
        turn: Duration,
        usable: Duration,
        cancel: &CancellationToken,
    ) {
        let now = Instant::now();
        let file_deadline = now + turn;
        self.in_flight = Some(c.clone());
        let r = engine
            .upload(&c, file_deadline, now + LOCK_WAIT, now + usable, cancel)
            .await;
        self.in_flight = None;
        let turn_left = file_deadline.saturating_duration_since(Instant::now());
        self.note(r, now.elapsed(), turn_left, cancel.is_cancelled());
    }

    /// Takes one upload's result: a busy file goes to the back, a failed one counts a turn,
    /// and one that failed at once without an attempt (it cannot be opened or read) while its
    /// turn had time left is not tried again in this run (trying again would only spin).
    fn note(&mut self, r: FileResult, took: Duration, turn_left: Duration, cancelled: bool) {
        if r.busy {
            self.busy_round.insert(r.name.clone());
        } else {
            self.busy_round.clear();
            if matches!(r.status, FileStatus::Failed | FileStatus::NotAttempted) {
                *self.tries.entry(r.name.clone()).or_default() += 1;
                if r.attempts == 0 && !cancelled && took < FAST_FAILURE && turn_left > FAST_FAILURE
                {
                    self.given_up.insert(r.name.clone());
                }
            }
        }
        self.put(r);
    }

    /// After a run in which no listing finished: a bare directory read (no repair, no state),
    /// bounded, so the report names the files that are there.
    async fn list_what_is_there(&mut self, engine: &Engine) {
        let layout = engine.config().layout.clone();
        let read = blocking::run(move || layout.list());
        let wait = LAST_LOOK.min(engine.config().margin / 4);
        match tokio::time::timeout(wait, read).await {
            Ok(Ok(files)) => {
                for f in files.into_iter().filter(|f| f.not_regular.is_none()) {
                    let name = f.name.trim_end_matches(".part").to_string();
                    if !self.index.contains_key(&name) {
                        self.put(FileResult {
                            error: Some("deadline reached before the run could look at it".into()),
                            ..FileResult::new(name, f.size, FileStatus::NotAttempted)
                        });
                    }
                }
            }
            _ => {
                self.reason = format!(
                    "{}; the capture directory could not be read in time either, so the files left are unknown",
                    self.reason
                );
            }
        }
    }

    /// The exit code, and whether the deadline is what left files behind.
    fn verdict(&self, totals: &report::Totals, cancelled: bool) -> (u8, bool) {
        let exit_code = if self.listing_failed {
            exit::RUNTIME
        } else if self.cut_off || self.first_seen.is_none() {
            // Whatever the partial results say, this run cannot know that every file is out.
            report::exit_code(totals).max(exit::DEADLINE)
        } else {
            report::exit_code(totals)
        };
        let unrepairable_left = self
            .results
            .iter()
            .filter(|r| self.unrepairable.contains(&r.name) && !r.status.is_done())
            .count();
        let deadline_reached = !self.listing_failed
            && (totals.left.saturating_sub(unrepairable_left) > totals.rejected || self.cut_off)
            && !cancelled;
        (exit_code, deadline_reached)
    }

    /// After the run, however it ended: every file it knew of gets an entry.
    fn settle_the_rest(&mut self, cancelled: bool) {
        if let Some(c) = self.in_flight.take() {
            if !self.settled.contains(&c.name) {
                let prev = self.index.get(&c.name).map(|&i| self.results[i].clone());
                let attempts = prev.as_ref().map_or(0, |p| p.attempts);
                let last = prev.and_then(|p| p.error);
                self.put(FileResult {
                    attempts,
                    error: Some(match last {
                        Some(l) => format!("deadline reached during the upload; earlier: {l}"),
                        None => "deadline reached during the upload".into(),
                    }),
                    repaired: c.repaired.clone(),
                    ..FileResult::new(c.name.clone(), c.size, FileStatus::Failed)
                });
            }
        }
        let why = if self.listing_failed {
            "not attempted: the capture directory could not be listed"
        } else if cancelled {
            "stopped before it was tried"
        } else {
            "deadline reached before it was tried"
        };
        for c in std::mem::take(&mut self.last_ready) {
            self.not_attempted(&c, why);
        }
        for (name, size) in self.live_parts.clone() {
            if !self.index.contains_key(&name) {
                self.put(FileResult {
                    error: Some("still being written by the capture".into()),
                    ..FileResult::new(name, size, FileStatus::NotAttempted)
                });
            }
        }
    }
}

/// One preStop upload: waits for the capture to be final, uploads everything, reports.
/// `start` is when the hook started (t0 as far as we can know it, see [`hook_start`]).
pub async fn prestop(
    engine: &Engine,
    start: Instant,
    start_wall: SystemTime,
    cancel: &CancellationToken,
) -> Report {
    let cfg = engine.config();
    let budget = cfg.budget();
    let deadline = start + budget;
    tracing::info!(
        dir = %cfg.layout.dir.display(),
        url = %cfg.url_display,
        grace_period_ms = cfg.grace.as_millis() as u64,
        budget_ms = budget.as_millis() as u64,
        remaining_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
        "preStop upload started."
    );
    let mut run = Run {
        capture: "unknown".into(),
        ..Default::default()
    };
    // Backstop: every step is bounded by the deadline already; this makes sure of it.
    let backstop = tokio::time::Instant::from_std(deadline + Duration::from_millis(200));
    if deadline <= Instant::now() {
        // A re-run hook of this termination whose deadline had passed before it began.
        run.cut_off = true;
        run.reason = "deadline reached before this run started (it counts from an earlier preStop hook of this termination)".into();
    } else if tokio::time::timeout_at(backstop, run.go(engine, deadline, budget, cancel))
        .await
        .is_err()
    {
        run.cut_off = true;
        run.reason = "deadline reached: a step did not return in time (a blocked volume?)".into();
    }
    if run.first_seen.is_none() && !run.listing_failed {
        // No listing finished: name the files from a bare directory read, if one returns now.
        run.list_what_is_there(engine).await;
    }
    run.settle_the_rest(cancel.is_cancelled());
    let totals = report::totals(&run.results);
    let (exit_code, deadline_reached) = run.verdict(&totals, cancel.is_cancelled());
    if run.reason.is_empty() {
        run.reason = "done".into();
    }
    if deadline_reached && !run.reason.contains("deadline") {
        run.reason = format!("deadline reached: {}", run.reason);
    }
    Report {
        version: 1,
        sidecap_version: env!("CARGO_PKG_VERSION"),
        hook: "exec",
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
            .filter(|r| !r.status.is_done() && r.status != FileStatus::Skipped)
            .map(|r| r.name.clone())
            .collect(),
        totals,
        files: run.results,
    }
}

/// `--continuous`: uploads each finished file as it appears, until `cancel`. Shares the
/// ledger and the per-file locks with any other uploader (the preStop hook above all).
pub async fn continuous(
    engine: &Engine,
    poll: Duration,
    file_timeout: Duration,
    cancel: CancellationToken,
) {
    let ledger = engine.ledger().clone();
    let mut settled: HashSet<String> = blocking::run(move || ledger.uploaded())
        .await
        .unwrap_or_default();
    // Planted names (links, FIFOs) are warned about once, not every poll.
    let mut planted: HashSet<String> = HashSet::new();
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
        let listing = match list(engine).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot list the capture directory.");
                continue;
            }
        };
        for (name, what) in listing.planted {
            if planted.insert(name.clone()) {
                tracing::warn!(file = %name, what, "A name of the capture's on the shared volume is not a regular file: not followed, not uploaded (was it planted?).");
            }
        }
        let mut ready: Vec<Candidate> = listing
            .ready
            .into_iter()
            .filter(|c| !settled.contains(&c.name))
            .collect();
        if ready.is_empty() {
            continue;
        }
        let ledger = engine.ledger().clone();
        if let Ok(done) = blocking::run(move || ledger.uploaded()).await {
            settled.extend(done);
            ready.retain(|c| !settled.contains(&c.name));
        }
        order(&mut ready, engine.config().order);
        for c in ready {
            if cancel.is_cancelled() {
                break;
            }
            let now = Instant::now();
            // Another uploader holds it: skip it, the next poll looks again. A preStop run
            // starting meanwhile does not cancel this file: it moves past it (locked) and
            // comes back once it is done.
            let end = now + file_timeout;
            let r = engine.upload(&c, end, now, end, &cancel).await;
            if matches!(
                r.status,
                FileStatus::Uploaded
                    | FileStatus::AlreadyUploaded
                    | FileStatus::Rejected
                    | FileStatus::Skipped
            ) && !r.busy
            {
                // A rejected file is not retried every poll; the preStop path tries it once more.
                // A skipped one (not a capture file) is warned about once.
                settled.insert(r.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::args::UploadOpts;

    fn engine_for(dir: &std::path::Path) -> Engine {
        let opts = UploadOpts {
            dir: dir.into(),
            grace_period: "10s".into(),
            ..UploadOpts::for_test("http://127.0.0.1:9/in")
        };
        let cfg = std::sync::Arc::new(crate::upload::config::from_opts(&opts, true).unwrap());
        Engine::new(cfg, Default::default()).unwrap()
    }

    fn file(seq: u64, size: u64) -> Candidate {
        let name = format!("capture-20261122T1541{seq:02}Z-{seq:06}.pcap");
        Candidate {
            path: name.clone().into(),
            name,
            seq,
            size,
            limit: None,
            repaired: None,
        }
    }

    fn now(remaining_s: f64, is_final: bool) -> Now {
        Now {
            remaining: Duration::from_secs_f64(remaining_s),
            budget: Duration::from_secs(28),
            is_final,
            seen_final: false,
            cancelled: false,
        }
    }

    fn upload_of(step: Step) -> (String, Duration, Duration) {
        match step {
            Step::Upload { file, turn, usable } => (file.name, turn, usable),
            other => panic!("expected an upload, got {other:?}"),
        }
    }

    #[test]
    fn while_the_capture_runs_the_backlog_leaves_the_reserve_for_its_last_file() {
        let run = Run {
            live_parts: vec![("live.pcap.part".into(), 0)],
            ..Default::default()
        };
        // The reserve for an empty live file at the default rate is the fixed 1.5 s.
        let reserve = retry::wait_reserve(0, DEFAULT_RATE, Duration::from_secs(28));
        assert_eq!(reserve, Duration::from_millis(1500));
        let (_, turn, usable) =
            upload_of(run.plan(vec![file(1, 100)], now(10.0, false), Order::NewestFirst));
        assert_eq!(usable, Duration::from_millis(8500));
        // Others wait (the final file to come): a share, not everything.
        assert_eq!(turn, Duration::from_secs(7));
        // Once only the reserve (plus less than one attempt) is left, the backlog waits.
        match run.plan(vec![file(1, 100)], now(1.6, false), Order::NewestFirst) {
            Step::Wait(d) => assert_eq!(d, Duration::from_millis(100)),
            other => panic!("{other:?}"),
        }
        // And with no more than the reserve left, the run stops waiting for the capture.
        assert!(matches!(
            run.plan(vec![], now(1.5, false), Order::NewestFirst),
            Step::GiveUpWaiting
        ));
    }

    #[test]
    fn a_file_gets_a_share_when_others_wait_and_all_the_time_when_alone() {
        let run = Run::default();
        let two = vec![file(1, 100), file(2, 100)];
        let (name, turn, usable) = upload_of(run.plan(two, now(20.0, true), Order::NewestFirst));
        assert_eq!(name, file(2, 100).name, "newest first");
        assert_eq!(
            (turn, usable),
            (Duration::from_secs(7), Duration::from_secs(20))
        );
        let (_, turn, _) =
            upload_of(run.plan(vec![file(1, 100)], now(20.0, true), Order::NewestFirst));
        assert_eq!(turn, Duration::from_secs(20));
        // A large file making progress is not cut off at a quarter: twice its estimate.
        let big = file(3, 100 << 20);
        assert_eq!(
            file_share(Duration::from_secs(28), big.size, DEFAULT_RATE),
            Duration::from_secs(22)
        );
        let (_, turn, _) =
            upload_of(run.plan(vec![file(1, 1), big], now(20.0, true), Order::NewestFirst));
        assert_eq!(turn, Duration::from_secs(20));
    }

    #[test]
    fn files_finished_during_the_run_go_before_the_backlog_and_busy_ones_last() {
        let mut run = Run {
            first_seen: Some([file(1, 1).name, file(2, 1).name].into_iter().collect()),
            ..Default::default()
        };
        let all = || vec![file(1, 1), file(2, 1), file(3, 1)];
        // The capture's final file (3, not in the first listing) first, even oldest-first.
        let (name, _, _) = upload_of(run.plan(all(), now(20.0, true), Order::OldestFirst));
        assert_eq!(name, file(3, 1).name);
        // A file another uploader holds goes to the back; one that failed a turn after those
        // that did not.
        run.busy_round.insert(file(3, 1).name);
        run.tries.insert(file(1, 1).name, 1);
        let (name, _, _) = upload_of(run.plan(all(), now(20.0, true), Order::OldestFirst));
        assert_eq!(name, file(2, 1).name);
        // All held by others: wait for them rather than spin.
        run.busy_round.extend(all().into_iter().map(|c| c.name));
        assert!(matches!(
            run.plan(all(), now(20.0, true), Order::OldestFirst),
            Step::AllBusy
        ));
    }

    #[test]
    fn a_final_capture_is_listed_once_more_before_the_run_ends() {
        let run = Run {
            capture: "final (signal SIGTERM)".into(),
            ..Default::default()
        };
        assert!(matches!(
            run.plan(vec![], now(20.0, true), Order::NewestFirst),
            Step::ListAgain
        ));
        let seen = Now {
            seen_final: true,
            ..now(20.0, true)
        };
        match run.plan(vec![], seen, Order::NewestFirst) {
            Step::Stop(r) => assert_eq!(r, "capture final (signal SIGTERM); every file handled"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stop_or_the_deadline_ends_the_run_before_any_upload() {
        let run = Run::default();
        let stopped = Now {
            cancelled: true,
            ..now(20.0, true)
        };
        assert!(
            matches!(run.plan(vec![file(1, 1)], stopped, Order::NewestFirst), Step::Stop(r) if r.starts_with("stopped by a signal"))
        );
        assert!(
            matches!(run.plan(vec![file(1, 1)], now(0.2, true), Order::NewestFirst), Step::Stop(r) if r == "deadline reached")
        );
    }

    #[test]
    fn a_file_that_fails_at_once_without_an_attempt_is_given_up_for_the_run() {
        let mut run = Run::default();
        let failed = |attempts| FileResult {
            attempts,
            ..FileResult::new(file(1, 1).name, 1, FileStatus::NotAttempted)
        };
        let (fast, slow, s) = (
            Duration::from_millis(10),
            Duration::from_secs(2),
            Duration::from_secs,
        );
        run.note(failed(1), fast, s(10), false);
        assert!(run.given_up.is_empty(), "it was attempted");
        run.note(failed(0), slow, s(10), false);
        assert!(run.given_up.is_empty(), "it took its time");
        run.note(failed(0), fast, Duration::from_millis(500), false);
        assert!(run.given_up.is_empty(), "its turn was over anyway");
        run.note(failed(0), fast, s(10), true);
        assert!(run.given_up.is_empty(), "a stop, not a failure");
        assert_eq!(run.tries[&file(1, 1).name], 4);
        run.note(failed(0), fast, s(10), false);
        assert!(run.given_up.contains(&file(1, 1).name));
        // Busy is not a failure: the file goes to the back of the round.
        let busy = FileResult {
            busy: true,
            ..FileResult::new(file(2, 1).name, 1, FileStatus::NotAttempted)
        };
        run.note(busy, fast, s(10), false);
        assert!(
            run.busy_round.contains(&file(2, 1).name) && !run.tries.contains_key(&file(2, 1).name)
        );
    }

    #[test]
    fn a_run_cut_off_before_it_could_look_is_not_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let name = "capture-20261122T154101Z-000001.pcap";
        std::fs::write(
            dir.path().join(name),
            crate::pcapfile::file_header(1, 65535, false),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let engine = {
            let _g = rt.enter();
            engine_for(dir.path())
        };
        // The budget ran out before the run began (a blocked step, a hook started late): the
        // backstop cuts the run off before any listing finishes.
        let start = Instant::now() - Duration::from_secs(9);
        let report = rt.block_on(prestop(
            &engine,
            start,
            SystemTime::now(),
            &CancellationToken::new(),
        ));
        assert_eq!(report.exit_code, exit::DEADLINE, "{report:#?}");
        assert!(report.deadline_reached);
        assert_eq!(report.not_uploaded, vec![name.to_string()], "{report:#?}");
    }

    #[test]
    fn a_leftover_start_is_told_from_a_rerun_hook_of_this_termination() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path(), "capture");
        let now = SystemTime::now();
        let grace = Duration::from_secs(30);
        let s = Duration::from_secs;
        // A re-run hook: 5 s ago, nothing started since.
        assert_eq!(
            earlier_start_of_this_termination(&l, now - s(5), now, grace),
            Ok(s(5))
        );
        // Past the budget (28 s) but inside the grace period: still this termination's, so
        // the re-run counts from it and finds its deadline passed.
        assert_eq!(
            earlier_start_of_this_termination(&l, now - s(29), now, grace),
            Ok(s(29))
        );
        // Older than the grace period, or in the future: a leftover.
        assert!(earlier_start_of_this_termination(&l, now - s(31), now, grace).is_err());
        assert!(earlier_start_of_this_termination(&l, now + s(5), now, grace).is_err());
        // The capture (re)started after it: a leftover of an earlier Pod start.
        std::fs::write(l.lock_path(), b"1\n").unwrap();
        let then = SystemTime::now() - s(5);
        assert_eq!(
            earlier_start_of_this_termination(&l, then, SystemTime::now(), grace),
            Err("the capture started after it")
        );
    }
}
