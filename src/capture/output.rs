//! Where a capture's packets go: files in a directory (the shared volume: lock, rotation, ring,
//! done marker) or, with `-w -`, one pcap stream on stdout. The capture thread hands complete
//! buffers to a [`Sink`] and does not know which one it is.

use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender};

use super::stdout::StdoutSink;
use super::writer::{Msg, Writer, WriterSummary};
use crate::files::Layout;

/// The destination, as the summary and the status line name it.
#[derive(Clone, Debug)]
pub enum Dest {
    Stdout,
    Dir(Layout),
}

impl Dest {
    /// The output directory, if there is one.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Dest::Stdout => None,
            Dest::Dir(l) => Some(&l.dir),
        }
    }
}

/// The writer thread's work: one of two loops, chosen once at start.
pub enum Sink {
    Files(Box<Writer>),
    Stdout(StdoutSink),
}

impl Sink {
    /// The file being written (None for stdout).
    pub fn current_path(&self) -> Option<PathBuf> {
        match self {
            Sink::Files(w) => w.current_path().cloned(),
            Sink::Stdout(_) => None,
        }
    }

    /// Runs until the capture thread drops its sender, then finalizes.
    pub fn run(self, rx: Receiver<Msg>, free: Sender<Vec<u8>>) -> WriterSummary {
        match self {
            Sink::Files(w) => w.run(rx, free),
            Sink::Stdout(s) => s.run(rx, free),
        }
    }
}
