//! `-w -`: one pcap stream on stdout, for `sidecap capture -w - | tshark -r -` and
//! `| wireshark -k -i -`. It takes the same buffers of complete records from the capture thread
//! as the file writer, so the capture thread does not know where its packets go, and the file
//! writer's loop stays as it is (no per-buffer branch for a destination it never has).
//!
//! A reader that goes away (Wireshark closed, `tshark -c N` done, `head`) is a normal end, not
//! an error: the first EPIPE requests a graceful stop, the rest of the stream is discarded, and
//! the capture exits 0. Any other write error stops the capture with exit 1, like a disk error.
//! There is no directory, so no lock, no files, no done marker and nothing to fsync; rotation and
//! ring options are refused by the configuration.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::writer::{Msg, WriterSummary};
use crate::metrics::CaptureMetrics;
use crate::process::{Shutdown, StopReason};

/// Why the stream to stdout cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StdoutError {
    #[error("-w -: stdout is a terminal; pipe it into a reader (sidecap capture -w - | tshark -r -) or redirect it to a file")]
    Terminal,
    #[error("-w -: cannot use stdout")]
    Dup(#[source] io::Error),
    #[error("-w -: cannot write the file header to stdout")]
    Header(#[source] io::Error),
}

/// The stop reason when the reader closes the pipe.
pub const READER_GONE: &str = "the reader of stdout closed the pipe";

/// Binary pcap would garble a terminal: checked before the capture opens, and again at create.
pub fn refuse_terminal() -> Result<(), StdoutError> {
    if io::stdout().is_terminal() {
        return Err(StdoutError::Terminal);
    }
    Ok(())
}

pub struct StdoutSink {
    /// A duplicate of fd 1: unbuffered writes of whole buffers, not std's line-buffered Stdout.
    out: File,
    metrics: Arc<CaptureMetrics>,
    shutdown: Shutdown,
    summary: WriterSummary,
    /// The reader went away: everything from now on is discarded.
    closed: bool,
}

impl StdoutSink {
    /// Refuses a terminal (binary pcap would garble it) and writes the file header at once, so
    /// a reader such as `wireshark -k -i -` can start before the first packet. A reader already
    /// gone at this point is the same normal end as later.
    pub fn create(
        header: &[u8],
        metrics: Arc<CaptureMetrics>,
        shutdown: Shutdown,
    ) -> Result<StdoutSink, StdoutError> {
        refuse_terminal()?;
        let out = File::from(
            io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(StdoutError::Dup)?,
        );
        let mut sink = StdoutSink {
            out,
            metrics,
            shutdown,
            summary: WriterSummary::default(),
            closed: false,
        };
        match sink.out.write_all(header) {
            Ok(()) => {
                sink.summary.bytes_written = header.len() as u64;
                sink.metrics
                    .bytes_written
                    .fetch_add(header.len() as u64, Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => sink.reader_gone(),
            Err(e) => return Err(StdoutError::Header(e)),
        }
        Ok(sink)
    }

    fn reader_gone(&mut self) {
        if !self.closed {
            self.closed = true;
            tracing::info!("The reader of stdout closed the pipe; stopping the capture.");
            self.shutdown.trigger(StopReason::Other(READER_GONE.into()));
        }
    }

    /// Writes buffers until the capture thread drops its sender.
    pub fn run(mut self, rx: Receiver<Msg>, free: Sender<Vec<u8>>) -> WriterSummary {
        for msg in rx.iter() {
            // Sync (flush tick) means nothing for a pipe: every buffer is written when it
            // arrives, and there is no file to fsync.
            let (mut buf, packets, head) = match msg {
                Msg::Data { buf, packets, head } => (buf, packets, head),
                // The capture thread never rotates a stdout stream (SIGHUP is logged there).
                Msg::Rotate => continue,
                Msg::Sync => continue,
            };
            self.metrics
                .queue_bytes
                .fetch_sub((buf.len() - head) as u64, Relaxed);
            if !self.closed {
                if let Err(e) = self.write(&buf[head..], packets) {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        self.reader_gone();
                    } else {
                        tracing::error!(error = %e, "Cannot write to stdout; stopping the capture.");
                        self.summary.error = Some(format!("cannot write to stdout: {e}"));
                        // Dropping the receiver tells the capture thread the writer is gone.
                        return self.summary;
                    }
                }
            }
            buf.clear();
            let _ = free.try_send(buf);
        }
        self.summary
    }

    fn write(&mut self, buf: &[u8], packets: u64) -> io::Result<()> {
        self.out.write_all(buf)?;
        let n = buf.len() as u64;
        self.summary.packets_written += packets;
        self.summary.bytes_written += n;
        self.metrics.packets_written.fetch_add(packets, Relaxed);
        self.metrics.bytes_written.fetch_add(n, Relaxed);
        Ok(())
    }
}
