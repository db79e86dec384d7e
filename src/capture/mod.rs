//! `sidecap capture`: the capture agent. [`run`] wires the pieces: validated config, directory
//! lock, admin server, libpcap handle, writer thread, capture thread, and the done marker that
//! is written last on every stop the process survives.

pub mod config;
pub mod format;
pub mod interfaces;
pub mod keylog;
pub mod loopback;
pub mod output;
pub mod report;
pub mod rotate;
pub mod snapshot;
pub mod source;
pub mod stdout;
pub mod writer;

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::admin;
// The file contract is its own top-level module ([`crate::files`]); capture's modules name it
// `super::files` as they did when it lived here.
use crate::cli::{CaptureArgs, LogFormat};
use crate::exit::{self, ExitStatus};
use crate::files;
use crate::metrics::CaptureMetrics;
use crate::process::Shutdown;
use config::CaptureConfig;
use files::{CaptureLock, DoneMarker, Layout, LockError, Ring};
use output::{Dest, Sink};
use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Config(String),
    #[error("unknown interface {name:?}; available interfaces: {available}")]
    UnknownInterface { name: String, available: String },
    #[error("invalid filter {filter:?}")]
    Filter {
        filter: String,
        #[source]
        source: pcap::Error,
    },
    #[error("{0}")]
    Permission(String),
    #[error("cannot open {interface}")]
    Open {
        interface: String,
        #[source]
        source: pcap::Error,
    },
    #[error("{0}")]
    Io(String),
    /// The output directory refused a file operation. Its exit code follows the cause: a
    /// permission or read-only file system is [`exit::PERMISSION`], anything else a runtime
    /// failure.
    #[error("{msg}")]
    Dir {
        msg: String,
        permission: bool,
        #[source]
        source: io::Error,
    },
    /// A thread or server the capture needs could not start.
    #[error("cannot start the {what}")]
    Start {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// libpcap refused a request.
    #[error("{what}")]
    Pcap {
        what: &'static str,
        #[source]
        source: pcap::Error,
    },
    /// The capture ran and stopped on an error; its files are finalized.
    #[error("capture stopped: {0}")]
    Runtime(String),
    #[error(transparent)]
    Stdout(#[from] stdout::StdoutError),
}

impl ExitStatus for CaptureError {
    fn exit_code(&self) -> u8 {
        match self {
            CaptureError::Config(_)
            | CaptureError::UnknownInterface { .. }
            | CaptureError::Filter { .. } => exit::CONFIG,
            CaptureError::Permission(_)
            | CaptureError::Dir {
                permission: true, ..
            } => exit::PERMISSION,
            CaptureError::Open { .. }
            | CaptureError::Io(_)
            | CaptureError::Dir { .. }
            | CaptureError::Start { .. }
            | CaptureError::Pcap { .. }
            | CaptureError::Runtime(_) => exit::RUNTIME,
            CaptureError::Stdout(stdout::StdoutError::Terminal) => exit::CONFIG,
            CaptureError::Stdout(_) => exit::RUNTIME,
        }
    }
}

/// An error creating or removing a file in the output directory, which exists (checked first).
fn dir_error(dir: &std::path::Path, e: io::Error) -> CaptureError {
    let d = dir.display();
    let (permission, msg) = match e.kind() {
        _ if e.raw_os_error() == Some(nix::libc::EROFS) => (true, format!("output directory {d} is on a read-only file system")),
        io::ErrorKind::PermissionDenied => (true, format!(
            "output directory {d} is not writable by uid {} (fix its owner or mode, or set the Pod's securityContext.fsGroup)",
            nix::unistd::geteuid()
        )),
        // The directory exists, yet creating a file in it says "not found": a special file
        // system such as /proc or /sys, which has no place for new files.
        io::ErrorKind::NotFound => (true, format!("output directory {d} exists but files cannot be created in it: it is not a writable file system (/proc, /sys?); mount the volume elsewhere (--dir)")),
        _ => (false, format!("output directory {d}")),
    };
    CaptureError::Dir {
        msg,
        permission,
        source: e,
    }
}

/// Checks `--dir` before anything is created in it.
fn check_dir(dir: &std::path::Path) -> Result<(), CaptureError> {
    let d = dir.display();
    files::check_dir(dir).map_err(|e| match e {
        files::DirCheck::NotADirectory => {
            CaptureError::Config(format!("--dir {d} is not a directory"))
        }
        files::DirCheck::Unreachable(e) if e.kind() == io::ErrorKind::NotFound => {
            CaptureError::Config(format!(
                "output directory {d} does not exist: create it or mount the volume there (--dir)"
            ))
        }
        files::DirCheck::Unreachable(e) => dir_error(dir, e),
    })
}

/// After the pcap handle and the first file are open the agent needs no capability: it drops
/// them all (effective, permitted, inheritable, ambient, and the bounding set when it may), so a
/// later compromise of the process gains nothing. The one exception: root writing into a
/// directory that only CAP_DAC_OVERRIDE lets it write (e.g. `sudo` into a user's 0755 directory)
/// keeps that capability, or the next rotation would fail; it says so.
fn drop_capabilities_after_open(dir: Option<&std::path::Path>) -> Result<(), CaptureError> {
    let Some(dir) = dir else {
        // -w -: no directory to write into.
        return crate::process::drop_thread_capabilities(&[])
            .map_err(CaptureError::Io)
            .map(|()| tracing::info!("Dropped all capabilities after opening the capture."));
    };
    let keep = if dir_writable_without_override(dir) {
        vec![]
    } else {
        tracing::warn!(dir = %dir.display(), "The output directory is writable only with CAP_DAC_OVERRIDE; keeping that capability. Make the directory writable by this user to drop it.");
        vec![caps::Capability::CAP_DAC_OVERRIDE]
    };
    crate::process::drop_thread_capabilities(&keep).map_err(CaptureError::Io)?;
    tracing::info!(kept = ?keep, "Dropped capabilities after opening the capture.");
    Ok(())
}

/// Can we create files in `dir` by its owner, group and mode alone?
fn dir_writable_without_override(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(dir) else {
        return false;
    };
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let in_group = m.gid() == gid
        || nix::unistd::getgroups().is_ok_and(|g| g.iter().any(|g| g.as_raw() == m.gid()));
    let mode = m.mode();
    if m.uid() == uid {
        mode & 0o300 == 0o300
    } else if in_group {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    }
}

/// Checks the output directory, takes its lock and removes an earlier run's done marker.
fn claim_directory(cfg: &CaptureConfig) -> Result<(Layout, CaptureLock), CaptureError> {
    let layout = Layout::new(&cfg.dir, &cfg.prefix);
    let lock = CaptureLock::acquire(&layout).map_err(|e| match e {
        LockError::Busy { .. } => CaptureError::Config(e.to_string()),
        // A planted link or FIFO as the lock: a configuration problem on the volume (exit 3).
        LockError::Io(io) if crate::volume::is_refused(&io) => CaptureError::Config(io.to_string()),
        LockError::Io(io) => dir_error(&cfg.dir, io),
    })?;
    match std::fs::remove_file(layout.marker_path()) {
        Ok(()) => {
            tracing::info!(marker = %layout.marker_path().display(), "Removed the done marker of an earlier run.")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(dir_error(&cfg.dir, e)),
    }
    Ok((layout, lock))
}

/// Secrets repeated at the start of every file: at most 1 MiB, and at most a quarter of a file
/// so that carrying them never turns size rotation into one file per packet.
fn max_carried_secrets(cfg: &CaptureConfig) -> usize {
    const MAX: u64 = 1 << 20;
    cfg.rotate.size.map_or(MAX, |s| (s / 4).min(MAX)) as usize
}

/// The writer thread's sink: the first file (created now, so a read-only directory fails
/// before the capture reports ready) or stdout with the file header already written.
fn open_sink(
    cfg: &CaptureConfig,
    dest: &Dest,
    mut framing: format::Framing,
    metrics: &Arc<CaptureMetrics>,
    shutdown: &Shutdown,
    pins: &Arc<crate::snapshot::PinSet>,
) -> Result<Sink, CaptureError> {
    let Dest::Dir(layout) = dest else {
        let header = framing.header(metrics);
        let s = stdout::StdoutSink::create(&header, metrics.clone(), shutdown.clone())?;
        return Ok(Sink::Stdout(s));
    };
    let ring = Ring::new(cfg.max_files, cfg.max_total_size).with_pins(pins.clone());
    let writer = Writer::create(
        layout.clone(),
        framing,
        ring,
        (cfg.fsync, cfg.direct_io),
        metrics.clone(),
    )
    .map_err(|e| match e {
        writer::WriteError::Create { source, .. }
            if source.kind() == io::ErrorKind::PermissionDenied =>
        {
            dir_error(&cfg.dir, source)
        }
        // WriteError's message has its cause in it already: a source would say it twice.
        e => CaptureError::Io(e.to_string()),
    })?;
    Ok(Sink::Files(Box::new(writer)))
}

/// Runs a capture until a stop condition. Returns Ok for a clean stop (signal, count,
/// duration, the reader of `-w -` gone); Err(Runtime) after finalizing when the capture stopped
/// on an error.
pub fn run(args: &CaptureArgs, shutdown: Shutdown) -> Result<(), CaptureError> {
    let cfg = CaptureConfig::from_args(args).map_err(CaptureError::Config)?;
    if !cfg.stdout {
        check_dir(&cfg.dir)?;
    }
    if shutdown.is_triggered() {
        // Nothing is ours yet (not even the lock): nothing to finalize or mark.
        return Ok(());
    }
    let (dest, _lock) = if cfg.stdout {
        stdout::refuse_terminal()?;
        (Dest::Stdout, None)
    } else {
        let (layout, lock) = claim_directory(&cfg)?;
        (Dest::Dir(layout), Some(lock))
    };

    let metrics = Arc::new(CaptureMetrics::default());
    let started = SystemTime::now();
    metrics.start_time_seconds.store(
        started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        Relaxed,
    );
    serve_admin(&cfg, &metrics)?;

    // Only this thread opens the handle; the capability is dropped again right after.
    crate::process::raise_effective(caps::Capability::CAP_NET_RAW);
    source::wait_for_interface(&cfg, &shutdown);
    let src = match shutdown.is_triggered() {
        true => None,
        false => source::open(&cfg, &shutdown)?,
    };
    let Some(src) = src else {
        // Stopped while waiting for the interface or compiling the filter: a clean stop.
        return stopped_before_capture(&cfg, &dest, started, &shutdown);
    };
    let linktype = src.linktype;
    let (end, summary) = capture(&cfg, src, &dest, &metrics, &shutdown, started)?;
    let error = summary.error.clone().or(end.error.clone());
    let marker = done_marker(&cfg, linktype, started, end, summary, error.as_deref());
    finish(&cfg, &dest, marker, error, &shutdown)
}

/// The admin server (`--listen`), on its own thread.
fn serve_admin(cfg: &CaptureConfig, metrics: &Arc<CaptureMetrics>) -> Result<(), CaptureError> {
    let Some(addr) = cfg.listen else {
        return Ok(());
    };
    let listener = admin::bind(addr).map_err(CaptureError::Config)?;
    let (m, iface) = (metrics.clone(), cfg.interface.clone());
    let ready = metrics.clone();
    let handler = admin::probes(move || ready.ready.load(Relaxed), move || m.render(&iface));
    admin::spawn(listener, handler).map_err(|e| CaptureError::Io(format!("admin server: {e}")))?;
    Ok(())
}

/// The capture proper: the first file, the capabilities dropped, the writer and capture
/// threads, until they end.
fn capture(
    cfg: &CaptureConfig,
    src: source::Source,
    dest: &Dest,
    metrics: &Arc<CaptureMetrics>,
    shutdown: &Shutdown,
    started: SystemTime,
) -> Result<(source::LoopEnd, writer::WriterSummary), CaptureError> {
    let linktype = src.linktype;
    let framing = format::Framing::new(cfg, linktype);
    let overhead = (
        framing.overhead(),
        framing.overhead() - framing.header_len(),
    );
    let pins = Arc::new(crate::snapshot::PinSet::default());
    let writer = open_sink(cfg, dest, framing, metrics, shutdown, &pins)?;
    drop_capabilities_after_open(dest.dir())?;
    let first_path = writer.current_path();
    let first = first_path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "stdout".into());
    metrics.ready.store(true, Relaxed);
    tracing::info!(
        interface = %cfg.interface,
        linktype,
        snaplen = cfg.snaplen,
        filter = cfg.filter.as_deref().unwrap_or(""),
        file = %first,
        "Capture is live."
    );
    if !cfg.stdout && cfg.max_total_size.is_none() && cfg.max_files.is_none() {
        tracing::warn!("No disk bound set (--max-total-size, --max-files): the capture grows until the disk is full.");
    }

    let (tx, rx) = crossbeam_channel::bounded(cfg.queue_buffers);
    let (free_tx, free_rx) = crossbeam_channel::bounded(cfg.queue_buffers + 2);
    let writer_thread = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || writer.run(rx, free_tx))
        .map_err(|source| CaptureError::Start {
            what: "writer thread",
            source,
        })?;
    let capture_thread = spawn_capture(src, cfg, overhead, tx, free_rx, metrics, shutdown)?;
    let status = start_terminal_ui(cfg, metrics, dest, first_path, shutdown);
    let snapshots = snapshot_watcher(cfg, dest, pins, metrics, shutdown, started);
    let end = capture_thread
        .join()
        .map_err(|_| CaptureError::Runtime("the capture thread panicked".into()))??;
    let summary = writer_thread
        .join()
        .map_err(|_| CaptureError::Runtime("the writer thread panicked".into()))?;
    drop(status); // erases the status line; the summary below has the final figures
    drop(snapshots);
    Ok((end, summary))
}

/// The capture thread: the read loop with the record format of `--format`.
fn spawn_capture(
    src: source::Source,
    cfg: &CaptureConfig,
    (overhead, trailer): (u64, u64),
    tx: crossbeam_channel::Sender<writer::Msg>,
    free_rx: crossbeam_channel::Receiver<Vec<u8>>,
    metrics: &Arc<CaptureMetrics>,
    shutdown: &Shutdown,
) -> Result<std::thread::JoinHandle<Result<source::LoopEnd, CaptureError>>, CaptureError> {
    let linktype = src.linktype;
    let (cfg, metrics, shutdown) = (cfg.clone(), metrics.clone(), shutdown.clone());
    std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || match cfg.format {
            files::FileFormat::Pcap => {
                let out = source::Output {
                    records: format::PcapRecords,
                    overhead,
                    trailer,
                    keylog: None,
                };
                source::run_loop(src, &cfg, out, tx, free_rx, metrics, &shutdown)
            }
            files::FileFormat::Pcapng => {
                let out = source::Output {
                    records: format::PcapngRecords::new(&cfg, linktype),
                    overhead,
                    trailer,
                    keylog: cfg
                        .tls_keylog
                        .clone()
                        .map(|p| keylog::Keylog::new(p, max_carried_secrets(&cfg))),
                };
                source::run_loop(src, &cfg, out, tx, free_rx, metrics, &shutdown)
            }
        })
        .map_err(|source| CaptureError::Start {
            what: "capture thread",
            source,
        })
}

/// The done marker of a capture that ran: what the threads report.
fn done_marker(
    cfg: &CaptureConfig,
    linktype: u32,
    started: SystemTime,
    end: source::LoopEnd,
    summary: writer::WriterSummary,
    error: Option<&str>,
) -> DoneMarker {
    let exit_code = if error.is_some() {
        exit::RUNTIME
    } else {
        exit::OK
    };
    DoneMarker {
        version: 1,
        sidecap_version: env!("CARGO_PKG_VERSION").into(),
        interface: cfg.interface.clone(),
        linktype,
        snaplen: cfg.snaplen,
        started_at: files::rfc3339(started),
        ended_at: files::rfc3339(SystemTime::now()),
        reason: match error {
            Some(e) => format!("{}: {e}", end.reason),
            None => end.reason,
        },
        clean: error.is_none() && summary.disk_dropped_packets == 0,
        exit_code,
        packets_captured: end.packets_captured,
        packets_written: summary.packets_written,
        bytes_written: summary.bytes_written,
        disk_dropped_packets: summary.disk_dropped_packets,
        kernel: end.kernel,
        files: summary.files,
        files_deleted: summary.files_deleted,
    }
}

/// Writes the marker, logs and prints the summary, and says how the capture ended.
fn finish(
    cfg: &CaptureConfig,
    dest: &Dest,
    marker: DoneMarker,
    error: Option<String>,
    shutdown: &Shutdown,
) -> Result<(), CaptureError> {
    let marker_written = write_marker(dest, &marker, shutdown);
    tracing::info!(
        reason = %marker.reason,
        packets_captured = marker.packets_captured,
        packets_written = marker.packets_written,
        kernel_received = marker.kernel.received,
        kernel_dropped = marker.kernel.dropped,
        disk_dropped = marker.disk_dropped_packets,
        files = marker.files.len(),
        "Capture finished."
    );
    if !cfg.quiet && cfg.log_format == LogFormat::Text {
        crate::term::print_block(&report::exit_summary(&marker, dest));
    }
    let marker_note = |written: bool| match dest {
        Dest::Dir(layout) if written => {
            format!("marker {} written", layout.marker_path().display())
        }
        Dest::Dir(layout) => format!(
            "the marker {} could not be written",
            layout.marker_path().display()
        ),
        Dest::Stdout => "no marker with -w -".into(),
    };
    match (error, marker_written) {
        (Some(e), w) => Err(CaptureError::Runtime(format!(
            "{e} (files finalized; {})",
            marker_note(w)
        ))),
        (None, true) => Ok(()),
        (None, false) => Err(CaptureError::Runtime(format!(
            "files finalized, but {}",
            marker_note(false)
        ))),
    }
}

/// Answers snapshot requests and reads pins on its own thread (files only: `-w -` has no ring).
fn snapshot_watcher(
    cfg: &CaptureConfig,
    dest: &Dest,
    pins: Arc<crate::snapshot::PinSet>,
    metrics: &Arc<CaptureMetrics>,
    shutdown: &Shutdown,
    started: SystemTime,
) -> Option<snapshot::Watcher> {
    let Dest::Dir(layout) = dest else {
        return None;
    };
    let kernel_note = match cfg.interface.as_str() {
        "any" => "libpcap ps_recv/ps_drop; on any the kernel counts each loopback packet twice",
        _ => "libpcap ps_recv/ps_drop/ps_ifdrop",
    };
    let cx = snapshot::Context {
        layout: layout.clone(),
        pins,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        interface: cfg.interface.clone(),
        kernel_note: kernel_note.into(),
        started,
    };
    snapshot::spawn(cx)
        .inspect_err(|e| tracing::warn!(error = %e, "Cannot start the snapshot thread: snapshot requests will time out."))
        .ok()
}

/// Writes the done marker (one retry: a momentary EMFILE or ENOSPC often passes) and tells the
/// signal thread its exit code, so a stop signal from here on exits with the code the marker
/// states. Returns whether the marker is on disk; the log says which, never both.
fn write_marker(dest: &Dest, marker: &DoneMarker, shutdown: &Shutdown) -> bool {
    // `-w -` has no directory and no marker: nothing to write, nothing claimed.
    let Dest::Dir(layout) = dest else {
        shutdown.finalizing(marker.exit_code);
        return true;
    };
    shutdown.finalizing_marker(marker.exit_code, layout.marker_path());
    let json = serde_json::to_vec_pretty(marker).unwrap_or_default();
    let mut result = files::write_atomic(&layout.marker_path(), &json);
    if let Err(e) = &result {
        tracing::warn!(error = %e, "Could not write the done marker; retrying once.");
        std::thread::sleep(std::time::Duration::from_millis(200));
        result = files::write_atomic(&layout.marker_path(), &json);
    }
    match result {
        Ok(()) => true,
        Err(e) => {
            // Without a marker the capture must not claim exit 0 to a second signal either.
            shutdown.finalizing(exit::RUNTIME);
            tracing::error!(marker = %layout.marker_path().display(), error = %e, "Could not write the done marker; the uploader will treat the capture as dead and upload what is complete.");
            false
        }
    }
}

/// A stop signal arrived before the capture opened (waiting for the interface, compiling the
/// filter): nothing was captured and no file was created. That is a clean stop (exit 0), and
/// the marker says so, so the uploader does not wait for a capture that will never come.
fn stopped_before_capture(
    cfg: &CaptureConfig,
    dest: &Dest,
    started: SystemTime,
    shutdown: &Shutdown,
) -> Result<(), CaptureError> {
    let reason = shutdown
        .reason()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "stop requested".into());
    let marker = DoneMarker {
        version: 1,
        sidecap_version: env!("CARGO_PKG_VERSION").into(),
        interface: cfg.interface.clone(),
        snaplen: cfg.snaplen,
        started_at: files::rfc3339(started),
        ended_at: files::rfc3339(SystemTime::now()),
        reason: format!("{reason} before the capture started; nothing captured"),
        clean: true,
        exit_code: exit::OK,
        ..Default::default()
    };
    tracing::info!(reason = %marker.reason, "Stopped before capturing.");
    if write_marker(dest, &marker, shutdown) {
        Ok(())
    } else {
        Err(CaptureError::Runtime(
            "stopped before capturing, but the done marker could not be written".into(),
        ))
    }
}

/// The terminal side of a running capture: SIGUSR1 prints the statistics from now on, and a
/// status line is drawn while stderr is a terminal (and not `--quiet`). Called after the
/// capabilities are dropped, so the status thread starts without any.
fn start_terminal_ui(
    cfg: &CaptureConfig,
    metrics: &Arc<CaptureMetrics>,
    dest: &Dest,
    first_file: Option<std::path::PathBuf>,
    shutdown: &Shutdown,
) -> Option<crate::term::StatusLine> {
    let (iface, m, d, format) = (
        cfg.interface.clone(),
        metrics.clone(),
        dest.clone(),
        cfg.log_format,
    );
    shutdown.on_usr1(Box::new(move || {
        report::print_statistics(&iface, &m, &d, format)
    }));
    if cfg.quiet || !crate::term::stderr_is_terminal() {
        return None;
    }
    let render = report::status_renderer(metrics.clone(), dest.clone(), first_file);
    match crate::term::StatusLine::start(render) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot start the status line; capturing without it.");
            None
        }
    }
}
