//! The snapshot side of the file contract: how an uploader asks a running capture to finish its
//! current file, and how it keeps the ring from deleting files it is still sending. The two
//! containers share nothing but the volume (no PID namespace, no signals), so both are files:
//!
//! - `<prefix>.snapshot-request.<id>`: written atomically by the uploader (JSON [`Request`]).
//!   The capture looks for requests on its own thread every [`WATCH_TICK`] (one `stat` of the
//!   directory; the directory is read only when its mtime changed), finishes the current file
//!   exactly as SIGHUP does, removes the request and writes
//! - `<prefix>.snapshot-ack.<id>`: atomically, JSON [`Ack`]: the name of the file it finished
//!   and its live counters (packets, kernel and disk drops), which a running capture has
//!   nowhere else on the volume. The requester removes it. A capture that predates the protocol
//!   never answers: the requester times out and says so.
//! - `<prefix>.pin.<id>`: JSON [`Pin`], written by the uploader before the request: the
//!   sequence numbers `from_seq..=to_seq` (no `to_seq`: open-ended) must not be deleted by the
//!   ring until `expires_unix_ms`. The uploader advances `from_seq` past each file it has
//!   sent and removes the pin when done; the expiry (renewed on every rewrite) ends a pin whose
//!   uploader crashed. The capture removes expired pins.
//!
//! While files are pinned, the ring bound counts only unpinned files, so the directory can
//! exceed `--max-total-size` by the pinned files, for at most the pin's lifetime. Because a
//! snapshot pins what was on disk when it started and unpins each file as soon as it is sent
//! (oldest first, which is also the order the ring deletes in), the excess is at most what the
//! capture wrote while the snapshot ran.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::files::{KernelStats, Layout};

/// How often the capture looks for requests and pins.
pub const WATCH_TICK: Duration = Duration::from_millis(200);
/// Far above any file of this protocol; a bound on reading one somebody else put there.
const MAX_LEN: u64 = 64 * 1024;

/// An id names files on the volume: short, and only characters that need no quoting.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new id: the UTC time (sorts by age, readable in a listing) and random bits (two
/// requesters in the same second never collide).
pub fn new_id(at: SystemTime) -> String {
    format!(
        "{}-{:08x}",
        crate::files::compact_utc(at),
        rand::random::<u32>()
    )
}

pub fn request_path(l: &Layout, id: &str) -> PathBuf {
    l.dir.join(format!("{}.snapshot-request.{id}", l.prefix))
}

pub fn ack_path(l: &Layout, id: &str) -> PathBuf {
    l.dir.join(format!("{}.snapshot-ack.{id}", l.prefix))
}

pub fn pin_path(l: &Layout, id: &str) -> PathBuf {
    l.dir.join(format!("{}.pin.{id}", l.prefix))
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    pub version: u32,
    pub id: String,
    pub requested_at: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    pub version: u32,
    pub id: String,
    /// The file the rotation finished (None: no file was open, e.g. during a disk-full episode).
    pub finished: Option<String>,
    pub finished_seq: Option<u64>,
    pub acknowledged_at: String,
    pub interface: String,
    pub capture_started_at: String,
    pub packets_captured: u64,
    pub packets_written: u64,
    pub disk_dropped_packets: u64,
    pub kernel: KernelStats,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    pub version: u32,
    pub id: String,
    pub from_seq: u64,
    pub to_seq: Option<u64>,
    pub expires_unix_ms: u64,
}

impl Pin {
    pub fn covers(&self, seq: u64, now_ms: u64) -> bool {
        now_ms < self.expires_unix_ms
            && seq >= self.from_seq
            && self.to_seq.is_none_or(|t| seq <= t)
    }
}

/// The pins in force, shared between the capture's watcher thread (which refreshes them) and
/// the ring (which asks only when it is about to delete something).
#[derive(Debug, Default)]
pub struct PinSet {
    pins: Mutex<Vec<Pin>>,
}

impl PinSet {
    pub fn set(&self, pins: Vec<Pin>) {
        if let Ok(mut g) = self.pins.lock() {
            *g = pins;
        }
    }

    /// Is the file at `path` (one of our capture files) pinned right now?
    pub fn is_pinned(&self, path: &Path) -> bool {
        let Some(seq) = seq_of(path) else {
            return false;
        };
        let now = unix_ms(SystemTime::now());
        self.pins
            .lock()
            .map(|g| g.iter().any(|p| p.covers(seq, now)))
            .unwrap_or(false)
    }

    pub fn is_empty(&self) -> bool {
        self.pins.lock().map(|g| g.is_empty()).unwrap_or(true)
    }
}

/// The sequence number in a capture file name (`<prefix>-<ts>-<seq>.pcap[ng][.part]`): the
/// digits after the last `-`, up to the first `.` after them.
pub fn seq_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let tail = name.rsplit_once('-')?.1;
    let digits = tail.split('.').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads one of this protocol's small JSON files (never through a link, never a FIFO).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let data = crate::volume::read_bounded(path, MAX_LEN).ok()?;
    serde_json::from_slice(&data).ok()
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?;
    crate::files::write_atomic(path, &data)
}

/// What one look at the directory found.
#[derive(Debug, Default)]
pub struct Found {
    /// Pending requests: (id, path).
    pub requests: Vec<(String, PathBuf)>,
    /// Pins, expired or not: (pin, path).
    pub pins: Vec<(Pin, PathBuf)>,
    /// Acks nobody collected (their requester died), with their age.
    pub acks: Vec<(PathBuf, Duration)>,
}

/// Lists the protocol's files in the directory. Temporaries of `write_atomic`
/// (`<name>.tmp.<pid>.<n>`) have an id with dots in it and are not valid ids: skipped.
pub fn scan(l: &Layout) -> std::io::Result<Found> {
    let mut found = Found::default();
    let (req, ack, pin) = (
        format!("{}.snapshot-request.", l.prefix),
        format!("{}.snapshot-ack.", l.prefix),
        format!("{}.pin.", l.prefix),
    );
    for e in std::fs::read_dir(&l.dir)? {
        let Ok(e) = e else { continue };
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if let Some(id) = name.strip_prefix(&req).filter(|i| valid_id(i)) {
            found.requests.push((id.to_string(), e.path()));
        } else if let Some(id) = name.strip_prefix(&pin).filter(|i| valid_id(i)) {
            // An unreadable pin (being replaced this instant, or not ours) counts as absent.
            if let Some(p) = read_json::<Pin>(&e.path()).filter(|p| p.id == id) {
                found.pins.push((p, e.path()));
            }
        } else if name.strip_prefix(&ack).is_some_and(valid_id) {
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            found.acks.push((e.path(), age));
        }
    }
    found.requests.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_read_from_every_kind_of_capture_name() {
        for (name, seq) in [
            ("capture-20261122T154123Z-000007.pcap", Some(7)),
            ("my-cap-20261122T154123Z-000123.pcapng", Some(123)),
            ("capture-20261122T154123Z-000008.pcap.part", Some(8)),
            ("capture.done", None),
            ("capture-20261122T154123Z-.pcap", None),
        ] {
            assert_eq!(seq_of(Path::new(name)), seq, "{name}");
        }
    }

    #[test]
    fn a_pin_covers_its_range_until_it_expires() {
        let p = Pin {
            version: 1,
            id: "a".into(),
            from_seq: 3,
            to_seq: Some(5),
            expires_unix_ms: 1000,
        };
        assert!(!p.covers(2, 0) && p.covers(3, 0) && p.covers(5, 999) && !p.covers(6, 0));
        assert!(!p.covers(4, 1000), "expired");
        let open = Pin { to_seq: None, ..p };
        assert!(open.covers(u64::MAX, 0));
    }

    #[test]
    fn ids_are_plain_names() {
        assert!(valid_id(&new_id(SystemTime::now())));
        for bad in ["", "a.b", "../x", "a/b", "x.tmp.12.0", &"a".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod ring_tests {
    use std::sync::Arc;

    use super::*;
    use crate::files::Ring;

    fn name(seq: u64) -> PathBuf {
        PathBuf::from(format!("capture-20261122T154123Z-{seq:06}.pcap"))
    }

    #[test]
    fn the_ring_skips_pinned_files_and_counts_only_the_others() {
        let pins = Arc::new(PinSet::default());
        let mut r = Ring::new(Some(3), Some(100)).with_pins(pins.clone());
        for i in 1..=3 {
            r.push(name(i), 30);
        }
        pins.set(vec![Pin {
            version: 1,
            id: "s".into(),
            from_seq: 1,
            to_seq: Some(2),
            expires_unix_ms: unix_ms(SystemTime::now()) + 60_000,
        }]);
        // A fourth file fits: the pinned files do not count against the bound.
        assert!(r.evict(1, 24).is_empty());
        assert_eq!(r.finished_bytes(), 30, "pinned files are not counted");
        // More than fits: the oldest unpinned file (3) goes, the older pinned ones stay.
        assert_eq!(r.evict(1, 80), vec![(name(3), 30)]);
        assert_eq!(r.finished_bytes(), 0);
        r.push(name(4), 30);
        // The pin is gone (uploaded, or expired): the ring deletes the oldest again.
        pins.set(vec![]);
        assert_eq!(r.evict(1, 40), vec![(name(1), 30)]);
        assert_eq!(r.finished_bytes(), 60);
    }
}
