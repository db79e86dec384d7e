//! The paired uploader: `sidecap uploader` (the long-running sidecar: idle PID 1, optional
//! `--continuous` upload, `/metrics`) and `sidecap upload` (the exec preStop hook). One engine ([`engine`]) does every upload; [`hooks`] decides what to upload
//! when; [`state`] reads the capture's file contract; [`ledger`] makes uploads idempotent;
//! [`retry`] is the pure retry policy; [`report`] is what people see; [`redact`] keeps secrets
//! out of all of it.
//!
//! Files on the volume written by the uploader: `<prefix>.upload-ledger.jsonl` (what was
//! accepted), `<prefix>.upload-report.json` (the last preStop run) and
//! `<prefix>.prestop-start` (when the first preStop hook of this termination started).
//!
//! `sidecap upload` also arms a watchdog thread: every step is bounded by the deadline, but a
//! blocking call on a hung volume (a lock open, a ledger fsync, the report) is not
//! cancellable, so at `deadline + min(margin / 2, 1 s)` the watchdog ends the process (exit 5,
//! or the exit code already decided) whatever the runtime is doing.

pub mod annotations;
pub mod args;
pub mod blocking;
mod body;
pub mod config;
pub mod engine;
pub mod hooks;
pub mod ledger;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod redact;
pub mod report;
mod request;
pub mod retry;
pub mod s3;
pub mod snapshot;
pub mod state;

use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::admin;
use crate::exit::{self, ExitStatus};
use crate::process::Shutdown;
use config::{ConfigError, UploadConfig};
use engine::Engine;
use metrics::UploadMetrics;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// A configuration mistake found outside the upload options (the uploader's own flags, the
    /// directory).
    #[error("{0}")]
    Invalid(String),
    #[error("capture directory {} (mount the shared volume there, or set --dir)", dir.display())]
    Dir {
        dir: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Start {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Runtime(String),
    #[error("deadline reached with {left} file(s) not uploaded: {files}")]
    Deadline { left: usize, files: String },
    #[error("stopped by a signal with {left} file(s) not uploaded: {files}")]
    Stopped { left: usize, files: String },
    #[error(
        "the receiver rejected {rejected} file(s) for good ({first}); {left} file(s) not uploaded: {files}"
    )]
    Rejected {
        rejected: usize,
        /// The first rejected file and why (an S3 error code and the bucket, an HTTP status).
        first: String,
        left: usize,
        files: String,
    },
    /// `sidecap snapshot` did not finish cleanly: `code` is the exit code it decided.
    #[error("snapshot: {reason}")]
    Snapshot { code: u8, reason: String },
}

impl ExitStatus for UploadError {
    fn exit_code(&self) -> u8 {
        match self {
            UploadError::Config(_)
            | UploadError::Engine(_)
            | UploadError::Invalid(_)
            | UploadError::Dir { .. } => exit::CONFIG,
            UploadError::Start { .. } | UploadError::Runtime(_) => exit::RUNTIME,
            UploadError::Deadline { .. } | UploadError::Stopped { .. } => exit::DEADLINE,
            UploadError::Rejected { .. } => exit::REJECTED,
            UploadError::Snapshot { code, .. } => *code,
        }
    }
}

fn check_dir(cfg: &UploadConfig) -> Result<(), UploadError> {
    let d = &cfg.layout.dir;
    crate::files::check_dir(d).map_err(|e| match e {
        crate::files::DirCheck::NotADirectory => {
            UploadError::Invalid(format!("--dir {} is not a directory", d.display()))
        }
        crate::files::DirCheck::Unreachable(source) => UploadError::Dir {
            dir: d.clone(),
            source,
        },
    })
}

/// Panic messages go through the redactor too: a panic must not print a secret.
fn install_panic_redaction(r: redact::Redactor) {
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("sidecap: panic: {}", r.scrub(&info.to_string()));
    }));
}

fn runtime() -> Result<tokio::runtime::Runtime, UploadError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(|source| UploadError::Start {
            what: "cannot start the async runtime",
            source,
        })
}

fn engine(cfg: Arc<UploadConfig>, metrics: Arc<UploadMetrics>) -> Result<Engine, UploadError> {
    Ok(Engine::new(cfg, metrics)?)
}

/// Exit code not decided yet (the watchdog then exits with [`exit::DEADLINE`]).
const UNDECIDED: u8 = u8::MAX;

/// Ends the process at a hard deadline, from its own thread, whatever the rest is blocked on.
struct Watchdog {
    fire_at: Arc<Mutex<Instant>>,
    code: Arc<AtomicU8>,
}

impl Watchdog {
    fn arm(at: Instant) -> Watchdog {
        let w = Watchdog {
            fire_at: Arc::new(Mutex::new(at)),
            code: Arc::new(AtomicU8::new(UNDECIDED)),
        };
        let (fire_at, code) = (w.fire_at.clone(), w.code.clone());
        let spawned = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                let at = fire_at
                    .lock()
                    .map(|g| *g)
                    .unwrap_or_else(|e| *e.into_inner());
                let now = Instant::now();
                if now >= at {
                    watchdog_exit(code.load(Ordering::SeqCst));
                }
                std::thread::sleep((at - now).min(Duration::from_millis(100)));
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "Cannot start the deadline watchdog.");
        }
        w
    }

    /// Moves the firing time earlier (never later).
    fn not_after(&self, at: Instant) {
        if let Ok(mut g) = self.fire_at.lock() {
            *g = (*g).min(at);
        }
    }

    fn decided(&self, code: u8) {
        self.code.store(code, Ordering::SeqCst);
    }
}

fn watchdog_exit(code: u8) -> ! {
    let code = if code == UNDECIDED {
        exit::DEADLINE
    } else {
        code
    };
    let what = if code == exit::OK {
        "every file was uploaded, but a blocking step after that (the report, the log) did not return in time"
    } else {
        "deadline reached: a blocking step did not return in time"
    };
    // Written from another thread: a stderr that blocks (a full pipe, a writer holding its
    // lock) must not keep the process alive.
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("watchdog-log".into())
        .spawn(move || {
            let _ = writeln!(
                std::io::stderr(),
                "sidecap: watchdog exit (code {code}): {what}"
            );
            let _ = tx.send(());
        });
    let _ = rx.recv_timeout(Duration::from_millis(100));
    std::process::exit(code as i32)
}

/// When the watchdog ends `sidecap upload`: a little after the deadline, inside the margin.
fn watchdog_at(start: Instant, (grace, margin): (Duration, Duration)) -> Instant {
    start + grace.saturating_sub(margin) + (margin / 2).min(Duration::from_secs(1))
}

/// `sidecap upload`: the preStop path (exec hook).
pub fn run_upload(args: &args::UploadArgs, shutdown: Shutdown) -> Result<(), UploadError> {
    // The hook started a moment ago; the budget counts from here (or from an earlier hook of
    // this termination, see hooks::hook_start).
    let started = Instant::now();
    // Armed before any file is read: a token or CA file on a hung volume blocks too.
    let timing = config::timing(&args.opts)?;
    let watchdog = Watchdog::arm(watchdog_at(started, timing));
    let cfg = Arc::new(config::from_opts(&args.opts, true)?);
    install_panic_redaction(cfg.redactor.clone());
    check_dir(&cfg)?;
    let (start, start_wall) = hooks::hook_start(&cfg.layout, cfg.grace);
    // A re-run hook whose deadline has already passed still gets a moment to list the files and
    // write the report that names them, as long as that ends before the kubelet's kill.
    let (grace, _) = timing;
    let report_time = Duration::from_millis(300)
        .min((start + grace).saturating_duration_since(Instant::now()) / 2);
    watchdog.not_after(watchdog_at(start, timing).max(Instant::now() + report_time));
    let rt = runtime()?;
    let engine = {
        let _guard = rt.enter();
        engine(cfg.clone(), Arc::new(UploadMetrics::default()))?
    };
    let report = rt.block_on(hooks::prestop(
        &engine,
        start,
        start_wall,
        &shutdown.token(),
    ));
    watchdog.decided(report.exit_code);
    report.publish(&cfg.layout);
    // Blocking work (a digest pass, a DNS lookup) may still run: do not wait for it.
    rt.shutdown_background();
    result_of(&report, shutdown.is_triggered())
}

fn result_of(report: &report::Report, stopped: bool) -> Result<(), UploadError> {
    let t = &report.totals;
    let files = report.not_uploaded.join(", ");
    match report.exit_code {
        exit::OK => Ok(()),
        exit::RUNTIME => Err(UploadError::Runtime(report.reason.clone())),
        exit::REJECTED => Err(UploadError::Rejected {
            rejected: t.rejected,
            first: report
                .files
                .iter()
                .find(|f| f.status == report::FileStatus::Rejected)
                .map(|f| format!("{}: {}", f.name, f.error.as_deref().unwrap_or("")))
                .unwrap_or_default(),
            left: t.left,
            files,
        }),
        _ if stopped && !report.deadline_reached => Err(UploadError::Stopped {
            left: t.left,
            files,
        }),
        _ => Err(UploadError::Deadline {
            left: t.left,
            files,
        }),
    }
}

/// `sidecap uploader`: the long-running sidecar.
pub fn run_uploader(args: &args::UploaderArgs, shutdown: Shutdown) -> Result<(), UploadError> {
    let cfg = Arc::new(config::from_opts(&args.opts, args.continuous)?);
    install_panic_redaction(cfg.redactor.clone());
    check_dir(&cfg)?;
    let poll = crate::config::parse_duration(&args.poll_interval)
        .map_err(|e| UploadError::Invalid(format!("--poll-interval: {e}")))?;
    let file_timeout = crate::config::parse_duration(&args.file_timeout)
        .map_err(|e| UploadError::Invalid(format!("--file-timeout: {e}")))?;
    if poll.is_zero() || file_timeout.is_zero() {
        return Err(UploadError::Invalid(
            "--poll-interval and --file-timeout must be positive".into(),
        ));
    }
    let listen = admin::parse_listen(&args.listen).map_err(UploadError::Invalid)?;
    let listener = match listen {
        Some(a) => Some(admin::bind(a).map_err(UploadError::Invalid)?),
        None => None,
    };
    let rt = runtime()?;
    let metrics = Arc::new(UploadMetrics::default());
    let engine = Arc::new({
        let _guard = rt.enter();
        engine(cfg.clone(), metrics.clone())?
    });
    let token = shutdown.token();
    if let Some(listener) = listener {
        let metrics = metrics.clone();
        admin::spawn(listener, admin::probes(|| true, move || metrics.render())).map_err(
            |source| UploadError::Start {
                what: "cannot start the admin server",
                source,
            },
        )?;
    }
    tracing::info!(
        dir = %cfg.layout.dir.display(),
        prefix = %cfg.layout.prefix,
        url = %cfg.url_display,
        continuous = args.continuous,
        "Uploader ready."
    );
    let watch = annotations_watch(args, poll)?;
    rt.block_on(async {
        if let Some(w) = watch {
            tokio::spawn(annotations::watch(engine.clone(), w, token.clone()));
        }
        if args.continuous {
            hooks::continuous(&engine, poll, file_timeout, token.clone()).await;
        } else {
            token.cancelled().await;
        }
    });
    tracing::info!(
        reason = %shutdown.reason().map(|r| r.to_string()).unwrap_or_default(),
        "Uploader stopped."
    );
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// The annotation trigger's settings, when `--annotations-file` is set.
fn annotations_watch(
    args: &args::UploaderArgs,
    poll: Duration,
) -> Result<Option<annotations::Watch>, UploadError> {
    let a = &args.annotations;
    let Some(file) = a.annotations_file.clone() else {
        return Ok(None);
    };
    let timeout = crate::config::parse_duration(&a.snapshot_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            UploadError::Invalid("--snapshot-timeout must be a positive duration".into())
        })?;
    Ok(Some(annotations::Watch {
        file,
        key: a.snapshot_annotation.clone(),
        timeout,
        poll,
    }))
}
