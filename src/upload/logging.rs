//! Logging for `sidecap upload`: like every subcommand (stderr, text or JSON), and, when it
//! runs as an exec hook, the same lines also to `/proc/1/fd/1`, the container's main process'
//! stdout. kubelet discards a hook's own output, so without this a preStop upload leaves no
//! trace in `kubectl logs`.
//!
//! Never coloured: both destinations are pipes read by the kubelet or a log collector.
//!
//! PID 1's stdout is opened non-blocking (a new open file description, so PID 1's own stays
//! as it is): when that pipe is full, the line is dropped there instead of stalling the hook.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::Arc;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;

use super::args::LogToPid1;
use crate::logging::LogFormat;

const PID1_STDOUT: &str = "/proc/1/fd/1";

/// Opens PID 1's stdout when `mode` asks for it. `auto`: only when we are not PID 1 ourselves
/// (an exec hook is never PID 1) and the file is writable; and never when our stderr already is
/// that file (every line would appear twice).
pub fn pid1_stdout(mode: LogToPid1) -> Option<File> {
    if mode == LogToPid1::Never || (mode == LogToPid1::Auto && std::process::id() == 1) {
        return None;
    }
    let f = OpenOptions::new()
        .append(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(PID1_STDOUT)
        .ok()?;
    let same_as_stderr = match (f.metadata(), std::fs::metadata("/proc/self/fd/2")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same_as_stderr && mode == LogToPid1::Auto {
        return None;
    }
    Some(f)
}

#[derive(Clone)]
struct Tee {
    pid1: Option<Arc<File>>,
}

struct TeeWriter {
    pid1: Option<Arc<File>>,
}

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing-subscriber formats a whole event and writes it in one call, so each line
        // reaches PID 1's stdout in one write(2) and does not interleave with its own output.
        if let Some(f) = &self.pid1 {
            // A closed or full pipe there must never fail or stall the upload: on EAGAIN
            // the line is dropped (a line under PIPE_BUF is written whole or not at all).
            let _ = (&**f).write_all(buf);
        }
        io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter {
            pid1: self.pid1.clone(),
        }
    }
}

pub fn init(format: LogFormat, filter: Targets, mode: LogToPid1) {
    let tee = Tee {
        pid1: pid1_stdout(mode).map(Arc::new),
    };
    // Never colour: the hook's lines also go to the container log (PID 1's stdout).
    crate::logging::install(format, filter, tee, false);
}
