//! Idempotence on the shared volume. Hooks are at-least-once, and `--continuous`, the exec
//! hook and a re-run of it may all see the same file, possibly from different processes.
//!
//! - The ledger `<dir>/<prefix>.upload-ledger.jsonl` has one JSON line per file the receiver
//!   accepted, appended with O_APPEND and fsynced before the file counts as uploaded. A file
//!   named there is never sent again.
//! - Before an uploader reads the ledger for a file it takes an exclusive flock(2) on the
//!   capture file itself (opened read-only, so any reader of the volume can lock it). The lock
//!   is held until the ledger line is written, so two uploaders never send the same file at the
//!   same time and the second one finds the first one's line. The capture never locks data
//!   files, so this cannot disturb it.
//!
//! Each [`Ledger`] reads the file once and then only what other uploaders appended since
//! (see [`Ledger::contains`]), so a long `--continuous` run does not re-read a ledger that grows
//! by a line per file for every file.
//!
//! If the receiver accepted a file but we died before the fsync of the ledger line, the file is
//! sent once more on the next run, with the same `Idempotency-Key`: at-least-once, never lost.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::blocking;
use crate::files::{Layout, FILE_MODE};
use crate::volume;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    pub uploaded_at: String,
    pub http_status: u16,
    pub idempotency_key: String,
}

#[derive(Clone, Debug)]
pub struct Ledger {
    path: PathBuf,
    /// What was read so far, shared by the clones of this ledger (the blocking pool's tasks).
    seen: Arc<Mutex<Seen>>,
}

/// The names read from the ledger file so far, and how far it was read.
#[derive(Debug, Default)]
struct Seen {
    names: HashSet<String>,
    /// Bytes of complete lines read; a torn last line is read again once it is complete.
    read_to: u64,
    /// (device, inode) of the file read: another file in its place is read from its start.
    id: Option<(u64, u64)>,
}

pub fn ledger_path(layout: &Layout) -> PathBuf {
    layout
        .dir
        .join(format!("{}.upload-ledger.jsonl", layout.prefix))
}

impl Ledger {
    pub fn new(layout: &Layout) -> Ledger {
        Ledger {
            path: ledger_path(layout),
            seen: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of every file recorded as uploaded. A torn last line (a crash mid-append) is
    /// ignored: its file was not confirmed, so it is sent again.
    pub fn uploaded(&self) -> io::Result<HashSet<String>> {
        Ok(self.refresh()?.names.clone())
    }

    /// Whether `name` is recorded, reading only what was appended since the last look (by any
    /// uploader: the caller holds the file's lock, so a line another one wrote is there).
    pub fn contains(&self, name: &str) -> io::Result<bool> {
        Ok(self.refresh()?.names.contains(name))
    }

    /// Reads the lines appended since the last call into the set.
    fn refresh(&self) -> io::Result<MutexGuard<'_, Seen>> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = match volume::open(&self.path, volume::Access::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(seen),
            Err(e) => return Err(e),
        };
        let m = f.metadata()?;
        let id = Some((m.dev(), m.ino()));
        if seen.id != id || m.len() < seen.read_to {
            *seen = Seen {
                id,
                ..Seen::default()
            };
        }
        f.seek(SeekFrom::Start(seen.read_to))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in tail[..complete].split(|&b| b == b'\n') {
            if let Ok(e) = serde_json::from_slice::<Entry>(line) {
                seen.names.insert(e.name);
            }
        }
        seen.read_to += complete as u64;
        Ok(seen)
    }

    /// Appends one entry durably.
    pub fn record(&self, e: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        // Never through a planted link: appending would write into its target.
        let mut f = volume::open(&self.path, volume::Access::AppendCreate(FILE_MODE))?;
        // A previous writer killed mid-line left no newline: start on a fresh line so ours
        // parses.
        let len = f.metadata()?.len();
        if len > 0 && !ends_with_newline(&self.path, len)? {
            line.insert(0, b'\n');
        }
        f.write_all(&line)?;
        f.sync_data()?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.names.insert(e.name.clone());
        Ok(())
    }
}

fn ends_with_newline(path: &Path, len: u64) -> io::Result<bool> {
    let mut f = volume::open(path, volume::Access::Read)?;
    f.seek(SeekFrom::Start(len - 1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// An exclusive flock on a capture file, released on drop.
pub struct FileLock {
    _lock: nix::fcntl::Flock<File>,
}

pub enum LockOutcome {
    Locked(FileLock),
    /// The file disappeared (the ring bound deleted it).
    Gone,
    /// Someone else held it until the deadline.
    Busy,
}

impl FileLock {
    /// A new handle on the locked file (the lock stays with the original).
    pub fn file(&self) -> io::Result<File> {
        self._lock.try_clone()
    }

    /// Opens without following a link, never waiting on a FIFO: only a regular file is ours.
    fn try_lock(path: &Path) -> io::Result<Option<FileLock>> {
        let f = volume::open(path, volume::Access::Read)?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(FileLock { _lock: l })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(io::Error::from(e)),
        }
    }

    /// Takes the lock, waiting while another uploader holds it, until `until` or `cancel`.
    pub async fn acquire(
        path: &Path,
        until: Instant,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> io::Result<LockOutcome> {
        loop {
            // open(2) on a hung volume blocks: not on the runtime thread.
            let p = path.to_path_buf();
            match blocking::run(move || Self::try_lock(&p)).await {
                Ok(Some(l)) => return Ok(LockOutcome::Locked(l)),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockOutcome::Gone),
                Err(e) => return Err(e),
            }
            if Instant::now() + Duration::from_millis(50) >= until || cancel.is_cancelled() {
                return Ok(LockOutcome::Busy);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(LockOutcome::Busy),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            bytes: 1,
            sha256: "00".into(),
            uploaded_at: "t".into(),
            http_status: 200,
            idempotency_key: "k".into(),
        }
    }

    #[test]
    fn records_survive_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(&Layout::new(dir.path(), "capture"));
        assert!(l.uploaded().unwrap().is_empty());
        l.record(&entry("a")).unwrap();
        // A writer killed mid-line.
        let mut f = OpenOptions::new().append(true).open(l.path()).unwrap();
        f.write_all(b"{\"name\":\"tor").unwrap();
        l.record(&entry("b")).unwrap();
        let got = l.uploaded().unwrap();
        assert!(got.contains("a") && got.contains("b") && got.len() == 2);
    }

    #[test]
    fn sees_what_another_uploader_appended_after_its_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path(), "capture");
        let (ours, theirs) = (Ledger::new(&layout), Ledger::new(&layout));
        assert!(!ours.contains("a").unwrap());
        theirs.record(&entry("a")).unwrap();
        // Half a line of a writer still appending: not an entry yet.
        let mut f = OpenOptions::new().append(true).open(ours.path()).unwrap();
        f.write_all(b"{\"name\":\"b\",").unwrap();
        assert!(ours.contains("a").unwrap());
        assert!(!ours.contains("b").unwrap());
        f.write_all(b"\"bytes\":1,\"sha256\":\"00\",\"uploaded_at\":\"t\",\"http_status\":200,\"idempotency_key\":\"k\"}\n").unwrap();
        assert!(ours.contains("b").unwrap());
        // A ledger replaced by another file is read from its start.
        std::fs::remove_file(ours.path()).unwrap();
        theirs.record(&entry("c")).unwrap();
        assert_eq!(ours.uploaded().unwrap(), HashSet::from(["c".to_string()]));
    }

    #[test]
    fn lock_is_exclusive_between_holders() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let first = FileLock::try_lock(&p).unwrap();
        assert!(first.is_some());
        assert!(FileLock::try_lock(&p).unwrap().is_none());
        drop(first);
        assert!(FileLock::try_lock(&p).unwrap().is_some());
        assert!(FileLock::try_lock(&dir.path().join("gone")).is_err());
    }
}
