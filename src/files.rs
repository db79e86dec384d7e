//! The file contract on the shared volume: the only interface between the capture (which
//! writes it) and the uploader (which reads it), so it belongs to neither. Users rely on it too:
//!
//! - A file being written is `<prefix>-<UTC YYYYMMDDTHHMMSSZ>-<seq>.pcap.part` (`.pcapng.part`
//!   with `--format pcapng`). When it is complete (rotation or shutdown) it is fsynced and
//!   renamed to `.pcap` (`.pcapng`). Nothing but the ring bound ever deletes a finished file,
//!   and nothing renames one. [`FileFormat::of_name`] is the one place that reads a suffix.
//! - `<seq>` continues across restarts in the same directory (max existing + 1) and files are
//!   created with O_EXCL, so a restarted capture never overwrites or appends to an old file.
//! - `<prefix>.lock` is flock(2)ed by the running capture for its whole life. A free lock with
//!   no marker means the capture died (or never started).
//! - `<prefix>.done` is a small JSON marker written atomically, last, on every stop the process
//!   survives (clean or not): the uploader uses it to know the capture is final.
//! - Snapshot requests, answers and pins (`<prefix>.snapshot-request.<id>`, `.snapshot-ack.<id>`,
//!   `.pin.<id>`) are described in [`crate::snapshot`]; the ring skips pinned files.
//! - Only regular files count: the lock, the marker and capture files are opened without
//!   following symbolic links and never wait on a FIFO ([`crate::volume`]); a name of ours that
//!   is a link or a special file was planted, and is refused with a warning, never followed.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The default of `--prefix`, which `-w -` accepts because it is not a choice the user made.
pub const DEFAULT_PREFIX: &str = "capture";

/// Permissions of everything we create: captured packets are sensitive. Group read lets an
/// uploader sidecar that shares our group (fsGroup) read the files.
pub const FILE_MODE: u32 = 0o640;

/// The two file formats, told apart by their name suffix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// Classic libpcap format: what tcpdump writes and every tool reads.
    #[default]
    Pcap,
    /// pcapng: Pod identity, interface names, statistics and TLS secrets inside the file.
    Pcapng,
}

impl FileFormat {
    /// The suffix of a finished file (a file being written adds `.part`).
    pub fn suffix(self) -> &'static str {
        match self {
            FileFormat::Pcap => ".pcap",
            FileFormat::Pcapng => ".pcapng",
        }
    }

    /// The media type an upload of such a file carries.
    pub fn media_type(self) -> &'static str {
        match self {
            FileFormat::Pcap => "application/vnd.tcpdump.pcap",
            FileFormat::Pcapng => "application/x-pcapng",
        }
    }

    /// Splits a capture file name into (stem, format, finished), for both sides of the
    /// contract: the writer names files, the uploader lists them.
    pub fn of_name(name: &str) -> Option<(&str, FileFormat, bool)> {
        let (rest, finished) = match name.strip_suffix(".part") {
            Some(r) => (r, false),
            None => (name, true),
        };
        [FileFormat::Pcapng, FileFormat::Pcap]
            .into_iter()
            .find_map(|f| {
                rest.strip_suffix(f.suffix())
                    .map(|stem| (stem, f, finished))
            })
    }

    /// The media type for a file name (pcap for names that are not ours).
    pub fn media_type_of(name: &str) -> &'static str {
        Self::of_name(name)
            .map_or(FileFormat::Pcap, |(_, f, _)| f)
            .media_type()
    }
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    pub prefix: String,
}

/// One of our capture files found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureFile {
    pub path: PathBuf,
    pub name: String,
    pub seq: u64,
    /// `.pcap`/`.pcapng` (complete) rather than `.part`.
    pub finished: bool,
    pub size: u64,
    /// What it is when it is not a regular file (a planted link, a FIFO): never opened, but
    /// its sequence number still counts, so new names never collide with it.
    pub not_regular: Option<&'static str>,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>, prefix: impl Into<String>) -> Self {
        Layout {
            dir: dir.into(),
            prefix: prefix.into(),
        }
    }

    pub fn part_name(&self, at: SystemTime, seq: u64, format: FileFormat) -> String {
        let (prefix, ts, ext) = (&self.prefix, compact_utc(at), format.suffix());
        format!("{prefix}-{ts}-{seq:06}{ext}.part")
    }

    pub fn marker_path(&self) -> PathBuf {
        self.dir.join(format!("{}.done", self.prefix))
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.prefix))
    }

    /// Parses one of our file names: returns (seq, finished).
    pub fn parse_name(&self, name: &str) -> Option<(u64, bool)> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        let (rest, _, finished) = FileFormat::of_name(rest)?;
        let (ts, seq) = rest.split_once('-')?;
        let ts_ok = ts.len() == 16
            && ts.as_bytes()[8] == b'T'
            && ts.as_bytes()[15] == b'Z'
            && ts
                .bytes()
                .enumerate()
                .all(|(i, b)| i == 8 || i == 15 || b.is_ascii_digit());
        if !ts_ok || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((seq.parse().ok()?, finished))
    }

    /// Our files in the directory, oldest (lowest seq) first.
    pub fn list(&self) -> io::Result<Vec<CaptureFile>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = match e.file_name().into_string() {
                Ok(n) => n,
                Err(_) => continue,
            };
            if let Some((seq, finished)) = self.parse_name(&name) {
                // DirEntry::metadata and file_type do not follow links.
                let meta = e.metadata().ok();
                let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                let not_regular = meta
                    .map(|m| m.file_type())
                    .filter(|t| !t.is_file())
                    .map(crate::volume::kind_of);
                out.push(CaptureFile {
                    path: e.path(),
                    name,
                    seq,
                    finished,
                    size,
                    not_regular,
                });
            }
        }
        out.sort_by(|a, b| a.seq.cmp(&b.seq).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Removes temporaries a killed run may have left: `.<prefix>-….tmp` (a file being
    /// created) and `<prefix>.done.tmp.<pid>.<n>` (a marker being written). Only called by the
    /// lock holder.
    pub fn remove_stale_temporaries(&self) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        let hidden = format!(".{}-", self.prefix);
        let marker_tmp = format!("{}.done.tmp.", self.prefix);
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if (name.starts_with(&hidden) && name.ends_with(".tmp"))
                || name.starts_with(&marker_tmp)
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Is a capture process holding the lock right now? A lock that is not a regular file
    /// (a planted link or FIFO) cannot be held by a capture, which refuses to use one.
    pub fn capture_running(&self) -> bool {
        let f = match crate::volume::open(&self.lock_path(), crate::volume::Access::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(e) if crate::volume::is_refused(&e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| tracing::warn!(error = %e, "The capture lock is not a regular file, so no capture holds it: treating the capture as not running."));
                return false;
            }
            // Unknown (EACCES, EIO...): assume it runs, so nobody touches its .part files.
            Err(e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| tracing::warn!(lock = %self.lock_path().display(), error = %e, "Cannot open the capture lock: treating the capture as running."));
                return true;
            }
        };
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock) {
            Ok(_held) => false, // released on drop
            Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
        }
    }

    /// Reads the done marker if there is one (a small regular file: never a link, a FIFO).
    pub fn read_marker(&self) -> Option<DoneMarker> {
        let data = crate::volume::read_bounded(&self.marker_path(), MARKER_MAX).ok()?;
        serde_json::from_slice(&data).ok()
    }
}

/// What is wrong with `--dir`, as both sides check it before they use it.
#[derive(Debug)]
pub enum DirCheck {
    /// It exists and is not a directory.
    NotADirectory,
    /// It cannot be looked at: missing (`NotFound`), or no permission on a parent.
    Unreachable(io::Error),
}

/// Ok when `dir` is a directory (following links: a mounted volume may be one).
pub fn check_dir(dir: &Path) -> Result<(), DirCheck> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DirCheck::NotADirectory),
        Err(e) => Err(DirCheck::Unreachable(e)),
    }
}

/// `2026-11-22T15:41:23Z` -> `20261122T154123Z`.
pub fn compact_utc(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Far above any marker we write (its file list grows by ~40 bytes a file); a bound on reading
/// one somebody else put there.
const MARKER_MAX: u64 = 16 << 20;

/// The exclusive lock a running capture holds on `<prefix>.lock`.
pub struct CaptureLock {
    _lock: nix::fcntl::Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another sidecap capture (pid {pid}) is writing to {dir} with prefix {prefix:?}; use another --prefix or directory")]
    Busy {
        pid: String,
        dir: String,
        prefix: String,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl CaptureLock {
    pub fn acquire(layout: &Layout) -> Result<CaptureLock, LockError> {
        let path = layout.lock_path();
        // Never through a planted link (it would truncate the target below), never a FIFO.
        let f = crate::volume::open(&path, crate::volume::Access::ReadWriteCreate(FILE_MODE))?;
        // An uploader checking whether a capture runs holds a shared lock for a few
        // microseconds; retry briefly so that probe never makes a starting capture fail.
        let mut f = f;
        let mut tries = 0;
        let lock = loop {
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Err((back, errno)) if errno == nix::errno::Errno::EWOULDBLOCK && tries < 20 => {
                    tries += 1;
                    f = back;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other,
            }
        };
        let mut lock = match lock {
            Ok(l) => l,
            Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                let pid = crate::volume::read_bounded(&path, 64)
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                return Err(LockError::Busy {
                    pid,
                    dir: layout.dir.display().to_string(),
                    prefix: layout.prefix.clone(),
                });
            }
            Err((_, errno)) => return Err(io::Error::from(errno).into()),
        };
        lock.set_len(0)?;
        writeln!(&mut *lock, "{}", std::process::id())?;
        Ok(CaptureLock { _lock: lock })
    }
}

/// Kernel statistics as libpcap reports them, with what they mean.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelStats {
    pub received: u64,
    pub dropped: u64,
    pub interface_dropped: u64,
    pub note: String,
}

/// The clean-shutdown marker, `<prefix>.done`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DoneMarker {
    pub version: u32,
    pub sidecap_version: String,
    pub interface: String,
    pub linktype: u32,
    pub snaplen: u32,
    pub started_at: String,
    pub ended_at: String,
    /// Why it stopped: "signal SIGTERM", "count reached", "duration reached", or the error.
    pub reason: String,
    /// True when everything captured was written and finalized.
    pub clean: bool,
    pub exit_code: u8,
    pub packets_captured: u64,
    pub packets_written: u64,
    pub bytes_written: u64,
    /// Packets captured but not written (disk full, size bound).
    pub disk_dropped_packets: u64,
    pub kernel: KernelStats,
    /// Files finished by this run, oldest first (names in the same directory).
    pub files: Vec<String>,
    pub files_deleted: u64,
}

/// Writes `data` to `path` atomically: temp file, fsync, rename, fsync the directory.
/// Writes `data` to `path` atomically: a temporary beside it (unique per call, so concurrent
/// writers in one process or several never share one), fsync, rename, fsync of the directory.
/// The temporary is `<file name>.tmp.<pid>.<n>`, removed again if any step fails.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The ring bound: which finished files to delete so that a count and a total size hold.
/// Pure bookkeeping; the writer does the deleting. Files a snapshot pins
/// ([`crate::snapshot`]) are never deleted and do not count against the bound while pinned.
#[derive(Debug, Default)]
pub struct Ring {
    pub max_files: Option<u64>,
    pub max_total: Option<u64>,
    finished: VecDeque<(PathBuf, u64)>,
    finished_bytes: u64,
    pins: Option<std::sync::Arc<crate::snapshot::PinSet>>,
    /// Bytes of pinned files as the last eviction that had to look found them.
    pinned_bytes: u64,
}

impl Ring {
    pub fn new(max_files: Option<u64>, max_total: Option<u64>) -> Self {
        Ring {
            max_files,
            max_total,
            ..Default::default()
        }
    }

    /// Records a finished file (oldest first).
    pub fn push(&mut self, path: PathBuf, size: u64) {
        self.finished_bytes += size;
        self.finished.push_back((path, size));
    }

    /// Skips the files `pins` names when evicting (see [`crate::snapshot`]).
    pub fn with_pins(mut self, pins: std::sync::Arc<crate::snapshot::PinSet>) -> Self {
        self.pins = Some(pins);
        self
    }

    /// Bytes of every finished file the ring holds, pinned or not: what is on the volume
    /// (`sidecap_dir_bytes`).
    pub fn on_disk_bytes(&self) -> u64 {
        self.finished_bytes
    }

    /// Bytes of finished files counted against the bound: pinned files are not.
    pub fn finished_bytes(&self) -> u64 {
        self.finished_bytes.saturating_sub(self.pinned_bytes)
    }

    pub fn len(&self) -> usize {
        self.finished.len()
    }

    pub fn is_empty(&self) -> bool {
        self.finished.is_empty()
    }

    /// Files to delete, oldest first, so that `open_files` more files fit under the count and
    /// `open_bytes` more bytes fit under the total. Returns them removed from the ring. Pinned
    /// files are skipped and not counted; the pins are consulted only when the bound is
    /// reached, so the writer's hot path never takes their lock.
    pub fn evict(&mut self, open_files: u64, open_bytes: u64) -> Vec<(PathBuf, u64)> {
        let over = |files: u64, bytes: u64| {
            self.max_files.is_some_and(|m| files + open_files > m)
                || self.max_total.is_some_and(|m| bytes + open_bytes > m)
        };
        let mut out = Vec::new();
        if !over(self.finished.len() as u64, self.finished_bytes) {
            self.pinned_bytes = 0;
            return out;
        }
        let pinned: Vec<bool> = match self.pins.as_ref().filter(|p| !p.is_empty()) {
            Some(p) => self.finished.iter().map(|(f, _)| p.is_pinned(f)).collect(),
            None => vec![false; self.finished.len()],
        };
        let (mut files, mut bytes) = (0u64, 0u64);
        self.pinned_bytes = 0;
        for ((_, s), p) in self.finished.iter().zip(&pinned) {
            if *p {
                self.pinned_bytes += s;
            } else {
                files += 1;
                bytes += s;
            }
        }
        let mut keep = VecDeque::with_capacity(self.finished.len());
        for ((path, size), p) in std::mem::take(&mut self.finished).into_iter().zip(pinned) {
            if !p && over(files, bytes) {
                files -= 1;
                bytes -= size;
                self.finished_bytes -= size;
                out.push((path, size));
            } else {
                keep.push_back((path, size));
            }
        }
        self.finished = keep;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn names_round_trip() {
        let l = Layout::new("/x", "my-cap");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_362_083);
        let n = l.part_name(t, 7, FileFormat::Pcap);
        assert_eq!(n, "my-cap-20261122T154123Z-000007.pcap.part");
        let ng = l.part_name(t, 8, FileFormat::Pcapng);
        assert_eq!(ng, "my-cap-20261122T154123Z-000008.pcapng.part");
        assert_eq!(l.parse_name(&ng), Some((8, false)));
        assert_eq!(l.parse_name(ng.trim_end_matches(".part")), Some((8, true)));
        assert_eq!(l.parse_name("my-cap-20261122T154123Z-000008.pcapngx"), None);
        assert_eq!(FileFormat::media_type_of(&ng), "application/x-pcapng");
        assert_eq!(
            FileFormat::media_type_of("my-cap-20261122T154123Z-000007.pcap"),
            "application/vnd.tcpdump.pcap"
        );
        assert_eq!(l.parse_name(&n), Some((7, false)));
        assert_eq!(l.parse_name(n.trim_end_matches(".part")), Some((7, true)));
        assert_eq!(l.parse_name("my-cap.done"), None);
        assert_eq!(l.parse_name("my-cap-2026-000001.pcap"), None);
        assert_eq!(l.parse_name("other-20261122T154123Z-000001.pcap"), None);
        // A prefix that is itself a prefix of another capture's must not claim its files.
        assert_eq!(Layout::new("/x", "my").parse_name(&n), None);
    }

    #[test]
    fn ring_evicts_oldest_by_count_and_size() {
        let mut r = Ring::new(Some(3), Some(100));
        for i in 0..3 {
            r.push(PathBuf::from(format!("f{i}")), 30);
        }
        // Opening a fourth file: count 3+1 > 3 -> delete f0.
        let d = r.evict(1, 24);
        assert_eq!(d, vec![(PathBuf::from("f0"), 30)]);
        // 60 finished + 50 incoming > 100 -> delete f1.
        let d = r.evict(1, 50);
        assert_eq!(d, vec![(PathBuf::from("f1"), 30)]);
        assert_eq!(r.finished_bytes(), 30);
        // Nothing left to delete still terminates.
        let d = r.evict(1, 1000);
        assert_eq!(d.len(), 1);
        assert!(r.is_empty());
        assert!(r.evict(1, 1000).is_empty());
    }

    #[test]
    fn ring_invariant_holds_for_any_sequence() {
        // Property: after evict(open, incoming), finished+incoming <= max_total whenever
        // anything remains, and the count bound holds.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let max_total = 1000 + next() % 10_000;
            let max_files = 2 + next() % 10;
            let mut r = Ring::new(Some(max_files), Some(max_total));
            for i in 0..100 {
                let incoming = 1 + next() % (max_total / 2);
                r.evict(1, incoming);
                assert!((r.len() as u64) < max_files);
                assert!(r.is_empty() || r.finished_bytes() + incoming <= max_total);
                r.push(PathBuf::from(i.to_string()), incoming);
            }
        }
    }
}
