//! PID-1 duties and the one shutdown truth.
//!
//! The kernel delivers to PID 1 of a PID namespace only the signals it installed handlers for
//! (pid_namespaces(7)), so every subcommand installs its own: SIGTERM ("Kubernetes sends this to
//! start a graceful shutdown") and SIGINT start one graceful stop, SIGQUIT too; SIGHUP is handed
//! to the subcommand (capture rotates its file), and so is SIGUSR1 (capture prints its
//! statistics, as tcpdump does; without a handler the default action would kill the process
//! with nothing finalized). A second SIGTERM/SIGINT/SIGQUIT exits at once.
//! As PID 1 we also reap orphans that exec probes, exec hooks and `kubectl exec` leave behind.
//!
//! Signal handlers only set flags (signal-hook); everything else runs on a named thread.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use tokio_util::sync::CancellationToken;

/// Why a graceful stop was requested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    Signal(&'static str),
    Other(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Signal(s) => write!(f, "signal {s}"),
            StopReason::Other(s) => f.write_str(s),
        }
    }
}

struct Inner {
    requested: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    /// Write ends of wake-up sockets of threads that block in poll(2).
    wakers: Mutex<Vec<UnixStream>>,
    token: CancellationToken,
    /// Incremented on SIGHUP; a subcommand compares it to the value it last saw.
    hups: AtomicU64,
    hup_wakers: Mutex<Vec<UnixStream>>,
    /// What SIGUSR1 does, once a subcommand has something to report.
    usr1: Mutex<Option<Arc<Usr1Handler>>>,
    /// A SIGUSR1 report is being printed; another SIGUSR1 meanwhile is not queued.
    usr1_busy: Arc<AtomicBool>,
    /// The exit code a finalizing run has committed to (in its done marker), or -1.
    final_code: AtomicI32,
    /// Where the done marker goes, once finalizing: a forced exit reads the code back from it.
    marker: Mutex<Option<std::path::PathBuf>>,
}

/// Runs on the `signals` thread on every SIGUSR1.
pub type Usr1Handler = Box<dyn Fn() + Send + Sync + 'static>;

/// The single shutdown token of a process. Cheap to clone; triggering is idempotent.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            inner: Arc::new(Inner {
                requested: AtomicBool::new(false),
                reason: Mutex::new(None),
                wakers: Mutex::new(Vec::new()),
                token: CancellationToken::new(),
                hups: AtomicU64::new(0),
                hup_wakers: Mutex::new(Vec::new()),
                usr1: Mutex::new(None),
                usr1_busy: Arc::new(AtomicBool::new(false)),
                final_code: AtomicI32::new(-1),
                marker: Mutex::new(None),
            }),
        }
    }

    /// Requests a graceful stop. Returns false if one was already requested.
    pub fn trigger(&self, reason: StopReason) -> bool {
        if self.inner.requested.swap(true, Ordering::SeqCst) {
            return false;
        }
        if let Ok(mut r) = self.inner.reason.lock() {
            *r = Some(reason);
        }
        self.inner.token.cancel();
        wake_all(&self.inner.wakers);
        true
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.inner.reason.lock().ok().and_then(|r| r.clone())
    }

    /// For async code: resolves when a stop is requested.
    pub fn token(&self) -> CancellationToken {
        self.inner.token.clone()
    }

    /// For threads that block in poll(2): a socket that becomes readable when a stop is
    /// requested (and, with `hup`, on every SIGHUP). Add it to the poll set.
    pub fn waker(&self, hup: bool) -> std::io::Result<UnixStream> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        if hup {
            if let Ok(mut w) = self.inner.hup_wakers.lock() {
                w.push(tx.try_clone()?);
            }
        }
        if let Ok(mut w) = self.inner.wakers.lock() {
            w.push(tx);
        }
        // A stop requested before we registered must still wake the poller.
        if self.is_triggered() {
            wake_all(&self.inner.wakers);
        }
        Ok(rx)
    }

    /// Records that the run is finalizing with `code`, the exit code its done marker states. A
    /// second stop signal from then on exits with that code instead of [`crate::exit::FORCED`],
    /// so the exit status and the marker never disagree.
    pub fn finalizing(&self, code: u8) {
        self.inner.final_code.store(code as i32, Ordering::SeqCst);
    }

    /// [`Shutdown::finalizing`] with the done marker's path: a second stop signal that has to
    /// exit before the run ends exits with the code of the marker as it is on disk (1 when it
    /// is not there yet), never with a code the files do not back.
    pub fn finalizing_marker(&self, code: u8, marker: std::path::PathBuf) {
        if let Ok(mut m) = self.inner.marker.lock() {
            *m = Some(marker);
        }
        self.finalizing(code);
    }

    /// The code a forced exit during finalizing uses: the marker's, as written, else the
    /// recorded code when there is no marker to write (`-w -`).
    fn forced_final_code(&self) -> Option<u8> {
        let code = self.final_code()?;
        let marker = self.inner.marker.lock().ok().and_then(|m| m.clone());
        let Some(path) = marker else {
            return Some(code);
        };
        let on_disk = crate::volume::read_bounded(&path, 1 << 20)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("exit_code").and_then(|c| c.as_u64()))
            .and_then(|c| u8::try_from(c).ok());
        Some(on_disk.unwrap_or(crate::exit::RUNTIME))
    }

    /// The code recorded by [`Shutdown::finalizing`], if any.
    pub fn final_code(&self) -> Option<u8> {
        u8::try_from(self.inner.final_code.load(Ordering::SeqCst)).ok()
    }

    /// Starts a new file as SIGHUP does (a snapshot request read off the volume).
    pub fn request_rotation(&self) {
        self.hup();
    }

    /// Number of SIGHUPs received so far.
    pub fn hups(&self) -> u64 {
        self.inner.hups.load(Ordering::SeqCst)
    }

    fn hup(&self) {
        self.inner.hups.fetch_add(1, Ordering::SeqCst);
        wake_all(&self.inner.hup_wakers);
    }

    /// Sets what SIGUSR1 does from now on (capture: print its statistics).
    pub fn on_usr1(&self, handler: Usr1Handler) {
        if let Ok(mut h) = self.inner.usr1.lock() {
            *h = Some(Arc::new(handler));
        }
    }

    /// Runs the SIGUSR1 handler on a thread of its own, never on the signal thread: printing
    /// can block (a paused terminal, a stalled stderr pipe, a hung volume), and the signal
    /// thread must stay free for SIGTERM. False when no handler is set yet.
    fn usr1(&self) -> bool {
        let Some(handler) = self.inner.usr1.lock().ok().and_then(|h| h.clone()) else {
            return false;
        };
        let busy = self.inner.usr1_busy.clone();
        if busy.swap(true, Ordering::SeqCst) {
            return true; // the previous report is still being printed
        }
        let spawned = std::thread::Builder::new()
            .name("usr1".into())
            .spawn(move || {
                handler();
                busy.store(false, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.inner.usr1_busy.store(false, Ordering::SeqCst);
        }
        true
    }
}

fn wake_all(wakers: &Mutex<Vec<UnixStream>>) {
    if let Ok(mut w) = wakers.lock() {
        for s in w.iter_mut() {
            // A full socket buffer already means "wake up"; nothing to do on error.
            let _ = s.write(&[1]);
        }
    }
}

/// Drains a waker socket after poll(2) reported it readable.
pub fn drain_waker(s: &mut UnixStream) {
    use std::io::Read;
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// How long a second stop signal waits for a run that is already finishing (its marker written)
/// to exit by itself: the last steps are a directory fsync and a log line.
const FINISH_GRACE: Duration = Duration::from_secs(2);

/// What the signal thread does on a second stop signal.
pub type ForceExit = Box<dyn Fn() + Send + 'static>;

/// Installs the signal handlers and starts the named `signals` thread that turns them into
/// `shutdown` triggers. `on_force` runs on a second SIGTERM/SIGINT/SIGQUIT and must end the
/// process (it is where a subcommand makes its best-effort flush).
pub fn install_signal_handlers(shutdown: &Shutdown, on_force: ForceExit) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGCHLD])?;
    let shutdown = shutdown.clone();
    let pid1 = std::process::id() == 1;
    if pid1 {
        tracing::info!("Running as PID 1: handling signals and reaping orphaned processes.");
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Handling signals and reaping need no privilege.
            if let Err(e) = drop_thread_capabilities(&[]) {
                tracing::warn!(error = %e, "Signal thread keeps its capabilities.");
            }
            for sig in signals.forever() {
                match sig {
                    SIGCHLD => {
                        if pid1 {
                            reap_zombies();
                        }
                    }
                    SIGHUP => {
                        tracing::info!(signal = "SIGHUP", "Received SIGHUP.");
                        shutdown.hup();
                    }
                    SIGUSR1 => {
                        if !shutdown.usr1() {
                            tracing::info!(signal = "SIGUSR1", "Received SIGUSR1; no statistics to print (only a running capture has them).");
                        }
                    }
                    _ => {
                        let name = signal_name(sig);
                        if shutdown.trigger(StopReason::Signal(name)) {
                            tracing::info!(signal = name, "Received stop signal; stopping gracefully. Send it again to exit at once.");
                        } else if let Some(code) = shutdown.final_code() {
                            // The marker is written (or being written): let the run end by
                            // itself, which takes moments, and exit with the code the marker
                            // on disk states if it does not (1 if it is not there).
                            tracing::warn!(signal = name, exit_code = code, "Received a second stop signal while finishing; exiting with the code the done marker states.");
                            std::thread::sleep(FINISH_GRACE);
                            let code = shutdown.forced_final_code().unwrap_or(code);
                            std::process::exit(code as i32);
                        } else {
                            tracing::warn!(signal = name, "Received a second stop signal; exiting at once.");
                            on_force();
                        }
                    }
                }
            }
        })?;
    if pid1 {
        // Orphans may already be waiting from before the handler existed.
        reap_zombies();
    }
    Ok(())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}

/// Reaps every exited child. Only called when we are PID 1 and spawn no children of our own,
/// so there is no exit status anyone else waits for.
fn reap_zombies() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(status) => tracing::debug!(?status, "Reaped an orphaned process."),
        }
    }
}

/// Drops the calling thread's capabilities except `keep`, and sets no_new_privs.
///
/// Linux capabilities are per thread: every long-lived thread calls this for itself, and threads
/// started afterwards inherit the reduced sets. The bounding set can only shrink with
/// CAP_SETPCAP (root); a non-root agent with a file capability clears what it can, and since
/// it never execs and has no_new_privs, that is all that matters.
pub fn drop_thread_capabilities(keep: &[caps::Capability]) -> Result<(), String> {
    use caps::{CapSet, Capability, CapsHashSet};
    let err =
        |what: &str, e: caps::errors::CapsError| format!("cannot drop capabilities ({what}): {e}");
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("read", e))?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::read(None, CapSet::Bounding).map_err(|e| err("bounding", e))? {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c).map_err(|e| err("bounding", e))?;
            }
        }
    }
    // Ambient is absent on old kernels; nothing to drop there.
    let _ = caps::clear(None, CapSet::Ambient);
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("inheritable", e))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| err("effective", e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| err("permitted", e))?;
    Ok(())
}

/// Makes `cap` effective in the calling thread if it is permitted but not effective.
///
/// The image gives the binary `cap_net_raw+p` (permitted, without the effective bit) rather
/// than `+ep`: the kernel refuses to exec a binary whose file capabilities have the effective
/// bit set when the bounding set lacks one of them, and the uploader container, which runs the
/// same binary, must not need NET_RAW. A capability-aware program raises what it needs itself.
/// Returns whether `cap` is effective afterwards.
pub fn raise_effective(cap: caps::Capability) -> bool {
    use caps::CapSet;
    if caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false) {
        return true;
    }
    if !caps::has_cap(None, CapSet::Permitted, cap).unwrap_or(false) {
        return false;
    }
    match caps::raise(None, CapSet::Effective, cap) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, capability = %cap, "Could not raise a permitted capability.");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn trigger_is_idempotent_and_keeps_the_first_reason() {
        let s = Shutdown::new();
        assert!(!s.is_triggered());
        assert!(s.trigger(StopReason::Signal("SIGTERM")));
        assert!(!s.trigger(StopReason::Other("later".into())));
        assert_eq!(s.reason(), Some(StopReason::Signal("SIGTERM")));
        assert!(s.token().is_cancelled());
    }

    #[test]
    fn finalizing_records_the_markers_exit_code() {
        let s = Shutdown::new();
        assert_eq!(s.final_code(), None);
        s.finalizing(0);
        assert_eq!(s.final_code(), Some(0));
        s.finalizing(1);
        assert_eq!(s.final_code(), Some(1));
    }

    #[test]
    fn a_forced_exit_while_finalizing_uses_the_code_the_marker_on_disk_states() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("capture.done");
        let s = Shutdown::new();
        s.finalizing_marker(0, marker.clone());
        assert_eq!(
            s.forced_final_code(),
            Some(1),
            "no marker on disk yet: not 0"
        );
        std::fs::write(&marker, br#"{"exit_code": 0}"#).unwrap();
        assert_eq!(s.forced_final_code(), Some(0));
        let stdout = Shutdown::new();
        stdout.finalizing(0);
        assert_eq!(
            stdout.forced_final_code(),
            Some(0),
            "-w -: no marker to write"
        );
    }

    #[test]
    fn waker_registered_after_trigger_is_readable() {
        let s = Shutdown::new();
        s.trigger(StopReason::Other("test".into()));
        let mut w = s.waker(false).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(w.read(&mut b).unwrap(), 1);
    }

    #[test]
    fn hup_wakes_only_hup_wakers() {
        let s = Shutdown::new();
        let mut plain = s.waker(false).unwrap();
        let mut hup = s.waker(true).unwrap();
        s.hup();
        let mut b = [0u8; 1];
        assert_eq!(hup.read(&mut b).unwrap(), 1);
        assert!(plain.read(&mut b).is_err(), "non-HUP waker must stay quiet");
        assert_eq!(s.hups(), 1);
    }

    #[test]
    fn usr1_runs_the_handler_once_set() {
        use std::sync::atomic::AtomicUsize;
        let s = Shutdown::new();
        assert!(!s.usr1(), "no handler yet");
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        s.on_usr1(Box::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        }));
        let ran = |want: usize| {
            let t0 = std::time::Instant::now();
            while n.load(Ordering::SeqCst) < want && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            n.load(Ordering::SeqCst)
        };
        assert!(s.usr1());
        assert_eq!(ran(1), 1);
        // The previous report has finished (its busy flag is cleared after the handler).
        while s.inner.usr1_busy.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(s.usr1());
        assert_eq!(ran(2), 2);
        assert!(!s.is_triggered(), "SIGUSR1 is not a stop");
    }

    #[test]
    fn a_blocked_usr1_report_never_blocks_the_caller() {
        let s = Shutdown::new();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        // Blocks until the test releases it, like a paused terminal.
        s.on_usr1(Box::new(move || {
            let _ = rx.lock().map(|r| r.recv());
        }));
        let t0 = std::time::Instant::now();
        assert!(s.usr1());
        assert!(
            s.usr1(),
            "a second one while the first blocks is dropped, not queued"
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
        let _ = tx.send(());
    }
}
