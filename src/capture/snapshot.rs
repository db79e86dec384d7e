//! The capture's side of a snapshot ([`crate::snapshot`] has the protocol): a small thread
//! that, every [`WATCH_TICK`], stats the directory and, when it changed, reads the pins into
//! the ring's [`PinSet`] and answers snapshot requests.
//!
//! It never touches the data path: a request is answered by the same rotation SIGHUP causes
//! (the capture loop already compares a counter on every iteration and wakes on it), so the
//! capture thread does no new work per packet and no file I/O. Which file the rotation
//! finished is read off the volume: the `.part` that was live before the rotation has its
//! finished name once the writer is done with it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::files::{self, KernelStats, Layout};
use crate::metrics::CaptureMetrics;
use crate::process::Shutdown;
use crate::snapshot::{self, Ack, PinSet, WATCH_TICK};

/// How long the writer may take to finish a file after the rotation was asked for (an fsync of
/// a large file on a slow disk) before the ack goes out without its name.
const FINISH_WAIT: Duration = Duration::from_secs(10);
/// An ack nobody collected in this long lost its requester.
const STALE_ACK: Duration = Duration::from_secs(3600);

/// What the watcher needs to know about the capture it belongs to.
pub struct Context {
    pub layout: Layout,
    pub pins: Arc<PinSet>,
    pub metrics: Arc<CaptureMetrics>,
    pub shutdown: Shutdown,
    pub interface: String,
    pub kernel_note: String,
    pub started: SystemTime,
}

/// The running watcher; dropping it stops the thread at once (it sleeps on the channel, so a
/// stop never waits out a tick: the capture's stop latency is bench/'s to hold).
pub struct Watcher {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take()); // disconnects: the watcher's wait returns now
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn spawn(cx: Context) -> std::io::Result<Watcher> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || run(&cx, &stopped))?;
    Ok(Watcher {
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn run(cx: &Context, stopped: &crossbeam_channel::Receiver<()>) {
    let mut last_mtime = None;
    let mut last_look = Instant::now();
    let mut last_look_wall = SystemTime::UNIX_EPOCH;
    while !cx.shutdown.is_triggered() {
        if stopped.recv_timeout(WATCH_TICK) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
            return;
        }
        let mtime = std::fs::metadata(&cx.layout.dir)
            .and_then(|m| m.modified())
            .ok();
        if !needs_look(mtime, last_mtime, last_look_wall, last_look.elapsed()) {
            continue;
        }
        last_mtime = mtime;
        last_look = Instant::now();
        last_look_wall = SystemTime::now();
        match snapshot::scan(&cx.layout) {
            Ok(found) => look(cx, found),
            Err(e) => {
                tracing::debug!(error = %e, "Cannot read the directory for snapshot requests.")
            }
        }
    }
}

/// Whether the directory must be read again. The kernel stamps mtimes from a coarse clock: a
/// request renamed into place in the same tick as the change we last read leaves the mtime as
/// it was, so an mtime within a second of our last look is not trusted (git's "racily clean"
/// rule). And a look at least every minute even when nothing changed: pins expire by the clock.
fn needs_look(
    mtime: Option<SystemTime>,
    last_mtime: Option<SystemTime>,
    last_look_wall: SystemTime,
    since_last_look: Duration,
) -> bool {
    let settled = mtime.is_some_and(|m| m + Duration::from_secs(1) < last_look_wall);
    mtime != last_mtime || !settled || since_last_look >= Duration::from_secs(60)
}

fn look(cx: &Context, found: snapshot::Found) {
    let now = snapshot::unix_ms(SystemTime::now());
    let mut live = Vec::new();
    for (pin, path) in found.pins {
        if pin.expires_unix_ms > now {
            live.push(pin);
        } else {
            tracing::warn!(pin = %pin.id, "A snapshot pin expired (its uploader stopped or is too slow): its files may be deleted by the ring again.");
            let _ = std::fs::remove_file(path);
        }
    }
    cx.pins.set(live);
    for (path, age) in found.acks {
        if age > STALE_ACK {
            let _ = std::fs::remove_file(path);
        }
    }
    if found.requests.is_empty() {
        return;
    }
    let ids: Vec<String> = found.requests.iter().map(|(id, _)| id.clone()).collect();
    tracing::info!(requests = ?ids, "Snapshot requested: finishing the current file.");
    let finished = rotate_and_wait(cx);
    let mut seen = HashSet::new();
    for (id, path) in found.requests {
        if !seen.insert(id.clone()) {
            continue;
        }
        let ack = ack_for(cx, &id, finished.clone());
        match snapshot::write_json(&snapshot::ack_path(&cx.layout, &id), &ack) {
            Ok(()) => {
                tracing::info!(request = %id, finished = ack.finished.as_deref().unwrap_or(""), "Snapshot request answered.")
            }
            Err(e) => {
                tracing::warn!(request = %id, error = %e, "Cannot write the snapshot answer.")
            }
        }
        let _ = std::fs::remove_file(path);
    }
}

/// Asks the capture loop for a rotation and waits until the file that was live has its
/// finished name. Returns (name, seq) of that file.
fn rotate_and_wait(cx: &Context) -> Option<(String, u64)> {
    let live = live_part(&cx.layout);
    cx.shutdown.request_rotation();
    let (part, seq) = live?;
    let done = part.with_extension(""); // strips ".part"
    let t0 = Instant::now();
    while t0.elapsed() < FINISH_WAIT {
        if done.exists() {
            let name = done.file_name()?.to_string_lossy().into_owned();
            return Some((name, seq));
        }
        if !part.exists() && !done.exists() {
            break; // deleted (cannot happen to a live file), or the capture stopped oddly
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(file = %part.display(), "The file being written was not finished in time for the snapshot answer.");
    None
}

/// The `.part` the capture is writing: the newest one.
fn live_part(l: &Layout) -> Option<(PathBuf, u64)> {
    l.list()
        .ok()?
        .into_iter()
        .filter(|f| !f.finished && f.not_regular.is_none())
        .max_by_key(|f| f.seq)
        .map(|f| (f.path, f.seq))
}

fn ack_for(cx: &Context, id: &str, finished: Option<(String, u64)>) -> Ack {
    let m = &cx.metrics;
    let g = |v: &std::sync::atomic::AtomicU64| v.load(Relaxed);
    Ack {
        version: 1,
        id: id.to_string(),
        finished_seq: finished.as_ref().map(|f| f.1),
        finished: finished.map(|f| f.0),
        acknowledged_at: files::rfc3339(SystemTime::now()),
        interface: cx.interface.clone(),
        capture_started_at: files::rfc3339(cx.started),
        packets_captured: g(&m.packets_captured),
        packets_written: g(&m.packets_written),
        disk_dropped_packets: g(&m.disk_dropped_packets),
        kernel: KernelStats {
            received: g(&m.kernel_received),
            dropped: g(&m.kernel_dropped),
            interface_dropped: g(&m.interface_dropped),
            note: cx.kernel_note.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_mtime_is_trusted_only_once_it_is_older_than_the_last_look() {
        let t = SystemTime::now();
        let s = Duration::from_secs;
        // Changed: look.
        assert!(needs_look(Some(t), Some(t - s(5)), t + s(5), s(1)));
        // Unchanged, but stamped in the tick of our last look: a request may hide behind it.
        assert!(needs_look(Some(t), Some(t), t, s(1)));
        assert!(needs_look(
            Some(t),
            Some(t),
            t + Duration::from_millis(500),
            s(1)
        ));
        // Unchanged and older than our last look by more than a second: skip.
        assert!(!needs_look(Some(t), Some(t), t + s(2), s(1)));
        // ...except once a minute, for pin expiry.
        assert!(needs_look(Some(t), Some(t), t + s(2), s(60)));
    }
}
