//! The paired uploader: `sidecap uploader` (the long-running sidecar: idle PID 1, optional
//! `--continuous` upload, the HTTP preStop hook `GET /prestop`) and `sidecap upload` (the exec
//! preStop hook). One engine ([`engine`]) does every upload; [`hooks`] decides what to upload
//! when; [`state`] reads the capture's file contract; [`ledger`] makes uploads idempotent;
//! [`retry`] is the pure retry policy; [`report`] is what people see; [`redact`] keeps secrets
//! out of all of it.
//!
//! Files on the volume written by the uploader: `<prefix>.upload-ledger.jsonl` (what was
//! accepted) and `<prefix>.upload-report.json` (the last preStop run).

pub mod args;
pub mod config;
pub mod engine;
pub mod hooks;
pub mod ledger;
pub mod logging;
pub mod redact;
pub mod report;
pub mod retry;
pub mod state;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hyper::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::exit::{self, ExitStatus};
use crate::process::Shutdown;
use config::{ConfigError, UploadConfig};
use engine::{Engine, UploadMetrics};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
    #[error("deadline reached with {left} file(s) not uploaded: {files}")]
    Deadline { left: usize, files: String },
    #[error(
        "the receiver rejected {rejected} file(s) for good; {left} file(s) not uploaded: {files}"
    )]
    Rejected {
        rejected: usize,
        left: usize,
        files: String,
    },
}

impl ExitStatus for UploadError {
    fn exit_code(&self) -> u8 {
        match self {
            UploadError::Usage(_) => exit::USAGE,
            UploadError::Config(_) => exit::CONFIG,
            UploadError::Runtime(_) => exit::RUNTIME,
            UploadError::Deadline { .. } => exit::DEADLINE,
            UploadError::Rejected { .. } => exit::REJECTED,
        }
    }
}

impl From<ConfigError> for UploadError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Usage(m) => UploadError::Usage(m),
            ConfigError::File(m) => UploadError::Config(m),
        }
    }
}

fn check_dir(cfg: &UploadConfig) -> Result<(), UploadError> {
    let d = &cfg.layout.dir;
    match std::fs::metadata(d) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(UploadError::Config(format!(
            "--dir {} is not a directory",
            d.display()
        ))),
        Err(e) => Err(UploadError::Config(format!(
            "capture directory {}: {e} (mount the shared volume there, or set --dir)",
            d.display()
        ))),
    }
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
        .map_err(|e| UploadError::Runtime(format!("cannot start the async runtime: {e}")))
}

fn engine(cfg: Arc<UploadConfig>, metrics: Arc<UploadMetrics>) -> Result<Engine, UploadError> {
    Engine::new(cfg, metrics).map_err(|e| UploadError::Config(e.to_string()))
}

/// `sidecap upload`: the preStop path (exec hook).
pub fn run_upload(args: &args::UploadArgs, shutdown: Shutdown) -> Result<(), UploadError> {
    // The hook started a moment ago; the budget counts from here.
    let (start, start_wall) = (Instant::now(), SystemTime::now());
    let cfg = Arc::new(config::from_opts(&args.opts, true)?);
    install_panic_redaction(cfg.redactor.clone());
    check_dir(&cfg)?;
    let rt = runtime()?;
    let engine = {
        let _guard = rt.enter();
        engine(cfg.clone(), Arc::new(UploadMetrics::default()))?
    };
    let report = rt.block_on(hooks::prestop(
        &engine,
        start,
        start_wall,
        "exec",
        &shutdown.token(),
    ));
    report.publish(&cfg.layout);
    // Blocking work (a digest pass, a DNS lookup) may still run: do not wait for it.
    rt.shutdown_background();
    result_of(&report)
}

fn result_of(report: &report::Report) -> Result<(), UploadError> {
    let t = &report.totals;
    let files = report.not_uploaded.join(", ");
    match report.exit_code {
        exit::OK => Ok(()),
        exit::REJECTED => Err(UploadError::Rejected {
            rejected: t.rejected,
            left: t.left,
            files,
        }),
        _ => Err(UploadError::Deadline {
            left: t.left,
            files,
        }),
    }
}

/// Lets a preStop upload in this process take precedence over `--continuous`: while one runs,
/// the continuous loop stands aside and its in-flight file is handed over.
#[derive(Default)]
pub struct Pause {
    active: AtomicUsize,
    current: Mutex<CancellationToken>,
}

impl Pause {
    pub fn active(&self) -> bool {
        self.active.load(Ordering::SeqCst) > 0
    }

    /// A token for one continuous upload, cancelled by `parent` or by a preStop starting.
    pub fn file_token(&self, parent: &CancellationToken) -> CancellationToken {
        let t = parent.child_token();
        if let Ok(mut c) = self.current.lock() {
            *c = t.clone();
        }
        if self.active() {
            t.cancel();
        }
        t
    }

    fn begin(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = self.current.lock() {
            c.cancel();
        }
    }

    fn end(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `sidecap uploader`: the long-running sidecar.
pub fn run_uploader(args: &args::UploaderArgs, shutdown: Shutdown) -> Result<(), UploadError> {
    let cfg = Arc::new(config::from_opts(&args.opts, args.continuous)?);
    install_panic_redaction(cfg.redactor.clone());
    check_dir(&cfg)?;
    let poll = crate::config::parse_duration(&args.poll_interval)
        .map_err(|e| UploadError::Usage(format!("--poll-interval: {e}")))?;
    let file_timeout = crate::config::parse_duration(&args.file_timeout)
        .map_err(|e| UploadError::Usage(format!("--file-timeout: {e}")))?;
    if poll.is_zero() || file_timeout.is_zero() {
        return Err(UploadError::Usage(
            "--poll-interval and --file-timeout must be positive".into(),
        ));
    }
    let listen = admin::parse_listen(&args.listen).map_err(UploadError::Usage)?;
    let listener = match listen {
        Some(a) => Some(admin::bind(a).map_err(UploadError::Config)?),
        None => None,
    };
    let rt = runtime()?;
    let metrics = Arc::new(UploadMetrics::default());
    let engine = Arc::new({
        let _guard = rt.enter();
        engine(cfg.clone(), metrics.clone())?
    });
    let pause = Arc::new(Pause::default());
    let token = shutdown.token();
    if let Some(listener) = listener {
        let handle = rt.handle().clone();
        let (engine, pause, token) = (engine.clone(), pause.clone(), token.clone());
        let handler: admin::Handler = Arc::new(move |method: Method, path: String| {
            let (engine, pause, token, handle) =
                (engine.clone(), pause.clone(), token.clone(), handle.clone());
            Box::pin(async move {
                if path == "/prestop" && (method == Method::GET || method == Method::POST) {
                    // Runs on the uploader's runtime (where the HTTP client lives); the admin
                    // thread only waits for it.
                    let job = handle.spawn(http_prestop(engine, pause, token));
                    return match job.await {
                        Ok(r) => r,
                        Err(e) => admin::Reply::text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("preStop upload failed: {e}\n"),
                        ),
                    };
                }
                admin::common_route(&method, &path, true, || engine.metrics.render())
                    .unwrap_or_else(|| {
                        admin::Reply::text(
                            StatusCode::NOT_FOUND,
                            "not found: try /livez, /readyz, /metrics, /prestop\n",
                        )
                    })
            })
        });
        admin::spawn(listener, handler)
            .map_err(|e| UploadError::Runtime(format!("admin server: {e}")))?;
    }
    tracing::info!(
        dir = %cfg.layout.dir.display(),
        prefix = %cfg.layout.prefix,
        url = %cfg.url_display,
        continuous = args.continuous,
        "Uploader ready."
    );
    rt.block_on(async {
        if args.continuous {
            hooks::continuous(engine.clone(), poll, file_timeout, token.clone(), pause).await;
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

async fn http_prestop(
    engine: Arc<Engine>,
    pause: Arc<Pause>,
    token: CancellationToken,
) -> admin::Reply {
    let (start, start_wall) = (Instant::now(), SystemTime::now());
    if engine.config().url.is_none() {
        return admin::Reply::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no --url configured: nothing can be uploaded\n",
        );
    }
    pause.begin();
    let report = hooks::prestop(&engine, start, start_wall, "http", &token).await;
    pause.end();
    report.publish(&engine.config().layout);
    let t = &report.totals;
    let body = format!(
        "uploaded={} already_uploaded={} failed={} left={} deadline_reached={} exit_code={}\n{}\n",
        t.uploaded,
        t.already_uploaded,
        t.failed,
        t.left,
        report.deadline_reached,
        report.exit_code,
        report.reason
    );
    let status = if report.exit_code == exit::OK {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    admin::Reply::text(status, body)
}
