//! Reading the capture's side of the file contract: is the capture final, and which files may
//! be uploaded.
//!
//! - Lock held and no marker newer than the lock: the capture runs. Its `.pcap` files are
//!   complete and may be uploaded; its `.pcap.part` is its own.
//! - Lock held and a marker written after the lock was taken (marker mtime >= lock mtime): the
//!   capture finalized and is exiting. A restarted capture removes the old marker right after
//!   taking the lock, and rewrites the lock file when it takes it, so an old marker is never
//!   newer than the lock of a running capture.
//! - Lock free: nothing will write any more. With a marker the capture stopped (cleanly or
//!   not, the marker says); without one it died (SIGKILL, OOM) or never ran.
//!
//! A `.pcap.part` is touched only when the lock was free *after* the directory was listed: a
//! capture takes the lock before it creates files, so a `.part` seen before a free lock cannot
//! belong to a live capture (a capture starting later creates new names with O_EXCL and never
//! opens old ones). Such a file is repaired like `sidecap repair` does (torn last record cut)
//! and renamed to `.pcap`, which is the name it is uploaded under. When the uploader may not
//! write the file (another user, group read only), the torn tail cannot be cut: the file then
//! keeps its `.part` name, so every listing (this run's or a later one's) finds it again and
//! recomputes the valid length; it is uploaded and recorded under the `.pcap` name, sending only
//! the valid records. A file that cannot be repaired at all is reported as failed.
//!
//! While a capture runs, only its newest `.pcap.part` is its own (it writes one file at a time,
//! and a new file always gets a sequence number above every existing one): an older `.part` was
//! left by an earlier run that died (possibly one kept in place as above). It is uploaded the
//! same read-only way, never truncated or renamed, so nothing changes under a running capture.
//!
//! A name of ours that is not a regular file (a symbolic link, a FIFO) was planted: it is never
//! opened, repaired or uploaded; the listing returns it as `planted` so the run reports it as
//! skipped and says why.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::files::{self, CaptureFile, DoneMarker, Layout};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureState {
    Running,
    /// Finalized: the marker of this run exists.
    Final(Box<DoneMarker>),
    /// The lock is free and there is no marker: the capture died or never started.
    Dead,
}

impl CaptureState {
    pub fn is_final(&self) -> bool {
        !matches!(self, CaptureState::Running)
    }

    pub fn describe(&self) -> String {
        match self {
            CaptureState::Running => "running".into(),
            CaptureState::Final(m) => format!("final ({})", m.reason),
            CaptureState::Dead => "dead (no done marker and no capture holds the lock)".into(),
        }
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

pub fn capture_state(layout: &Layout) -> CaptureState {
    let running = layout.capture_running();
    // lstat: a planted link is not our marker (read_marker refuses it too).
    let marker_meta = std::fs::symlink_metadata(layout.marker_path())
        .ok()
        .filter(|m| m.is_file());
    // The marker's existence is the signal (it is written atomically, last); its content is
    // detail. One we cannot parse (another sidecap version) still means "final".
    let marker = marker_meta.as_ref().map(|_| {
        layout.read_marker().unwrap_or_else(|| DoneMarker {
            reason: "done marker present but not readable by this version".into(),
            ..Default::default()
        })
    });
    if running {
        let lock_meta = std::fs::symlink_metadata(layout.lock_path()).ok();
        return match (marker, marker_meta, lock_meta) {
            (Some(m), Some(mm), Some(lm)) if mtime_ns(&mm) >= mtime_ns(&lm) => {
                CaptureState::Final(Box::new(m))
            }
            _ => CaptureState::Running,
        };
    }
    match marker {
        Some(m) => CaptureState::Final(Box::new(m)),
        None => CaptureState::Dead,
    }
}

/// A file ready to upload.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub path: PathBuf,
    /// The name it is uploaded and recorded under (always a `.pcap` name).
    pub name: String,
    pub seq: u64,
    pub size: u64,
    /// Upload only this many bytes (a dead capture's file we could not truncate).
    pub limit: Option<u64>,
    /// Set when it was a dead capture's `.pcap.part` that we repaired: what happened.
    pub repaired: Option<String>,
}

/// What [`candidates`] found.
#[derive(Debug)]
pub struct Listing {
    /// Complete files, oldest first.
    pub ready: Vec<Candidate>,
    pub state: CaptureState,
    /// `.pcap.part` files a running capture is writing: (name, size).
    pub live_parts: Vec<(String, u64)>,
    /// Dead `.pcap.part` files that could not be repaired: (name, size, why).
    pub unrepairable: Vec<(String, u64, String)>,
    /// Names of ours that are not regular files (planted links, FIFOs): (name, what it is).
    pub planted: Vec<(String, &'static str)>,
}

/// Lists the files that may be uploaded now, and the capture state seen after listing.
/// Dead `.part` files are repaired and renamed first (see the module docs).
pub fn candidates(layout: &Layout) -> io::Result<Listing> {
    let listed: Vec<CaptureFile> = layout.list()?;
    let state = capture_state(layout);
    let mut out = Vec::new();
    let mut live_parts = Vec::new();
    let mut unrepairable = Vec::new();
    let mut planted = Vec::new();
    let newest_part = listed
        .iter()
        .filter(|f| !f.finished && f.not_regular.is_none())
        .map(|f| f.seq)
        .max();
    let running = matches!(state, CaptureState::Running);
    for f in listed {
        if let Some(what) = f.not_regular {
            planted.push((f.name, what));
        } else if f.finished {
            out.push(Candidate {
                path: f.path,
                name: f.name,
                seq: f.seq,
                size: f.size,
                limit: None,
                repaired: None,
            });
        } else if running && Some(f.seq) == newest_part {
            live_parts.push((f.name, f.size));
        } else {
            match repair_dead_part(&f, !running) {
                Ok(c) => out.push(c),
                Err(e) => {
                    tracing::warn!(file = %f.name, error = %e, "Cannot repair a file left by a capture that died; it is not uploaded.");
                    unrepairable.push((f.name, f.size, e));
                }
            }
        }
    }
    Ok(Listing {
        ready: out,
        state,
        live_parts,
        unrepairable,
        planted,
    })
}

/// Scans of dead `.part` files we could not truncate, by (path, size, mtime): a file left in
/// place is listed again and again, and scanning it is a full read.
type ScanKey = (PathBuf, u64, i128);
/// (packets, valid length, bytes of the torn tail).
type ScanCache = Mutex<HashMap<ScanKey, (u64, u64, u64)>>;
fn scan_cache() -> &'static ScanCache {
    static CACHE: OnceLock<ScanCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `may_modify`: truncate the torn tail and rename when the file is writable; false while a
/// capture runs (read in place, as when the file is not writable).
fn repair_dead_part(f: &CaptureFile, may_modify: bool) -> Result<Candidate, String> {
    let done_name = f.name.trim_end_matches(".part").to_string();
    let done_path = f.path.with_file_name(&done_name);
    // A .pcap of that name cannot exist (names are unique per sequence number); never
    // overwrite one, or upload two files under one name, if it somehow does.
    if done_path.symlink_metadata().is_ok() {
        return Err(format!("{done_name} already exists next to {}", f.name));
    }
    // Looked at again (lstat) just before the repair opens it by name: the listing saw a
    // regular file, and a link swapped in since must not be truncated through.
    let meta = std::fs::symlink_metadata(&f.path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!(
            "{} is {}, not a regular file: not followed",
            f.name,
            crate::volume::kind_of(meta.file_type())
        ));
    }
    let key = (f.path.clone(), meta.len(), mtime_ns(&meta));
    let cached = scan_cache().lock().ok().and_then(|c| c.get(&key).copied());
    // The uploader may run as another user that can read the capture's files (group) but not
    // write them: then the torn tail stays on disk and only the valid part is uploaded.
    let (packets, valid, removed, limit) = match cached {
        Some((packets, valid, removed)) => (packets, valid, removed, Some(valid)),
        None => scan_or_repair(&f.path, key, may_modify)?,
    };
    let what = repair_note(removed, packets, limit.is_some());
    if limit.is_some() {
        // Not renamed: a .pcap name would lose the limit, and a later run would send the torn
        // tail. The .part is read in place and uploaded under the .pcap name.
        if cached.is_none() {
            tracing::info!(file = %done_name, from = %f.name, detail = %what, "A file left by a capture that died cannot be truncated: its valid records are uploaded, the file is left as it is.");
        }
        return Ok(Candidate {
            path: f.path.clone(),
            name: done_name,
            seq: f.seq,
            size: valid,
            limit,
            repaired: Some(what),
        });
    }
    std::fs::rename(&f.path, &done_path).map_err(|e| format!("rename to {done_name}: {e}"))?;
    if let Some(dir) = done_path.parent() {
        let _ = files::sync_dir(dir);
    }
    tracing::info!(file = %done_name, from = %f.name, detail = %what, "Repaired a file left by a capture that died.");
    Ok(Candidate {
        path: done_path,
        name: done_name,
        seq: f.seq,
        size: valid,
        limit,
        repaired: Some(what),
    })
}

/// A dead `.part` file scanned, and repaired in place when `may_modify` and the file lets
/// us: (packets, valid length, torn bytes, upload limit). The limit is set when the file was
/// left as it is: only its first `valid` bytes are sent.
fn scan_or_repair(
    path: &Path,
    key: ScanKey,
    may_modify: bool,
) -> Result<(u64, u64, u64, Option<u64>), String> {
    let cache = |v: (u64, u64, u64)| {
        if let Ok(mut c) = scan_cache().lock() {
            c.insert(key, v);
        }
        (v.0, v.1, v.2, Some(v.1))
    };
    let cut = may_modify.then(|| crate::repair::repair_file(path, false));
    match cut {
        // Changed in place: what is on disk now is the repaired file.
        Some(Ok(r)) if !r.dry_run => Ok((r.scan.packets, r.scan.valid_len, r.removed, None)),
        // Damage repair would not cut out (pcapng has no resynchronisation): the file
        // is left as it is, and only its clean prefix is sent.
        Some(Ok(r)) => Ok(cache((r.scan.packets, r.scan.valid_len, r.removed))),
        Some(Err(crate::repair::RepairError::Truncate(..))) | None => {
            let r = crate::repair::repair_file(path, true).map_err(|e| e.to_string())?;
            Ok(cache((r.scan.packets, r.scan.valid_len, r.removed)))
        }
        Some(Err(e)) => Err(e.to_string()),
    }
}

/// What the report says about a repaired file.
fn repair_note(removed: u64, packets: u64, left_as_is: bool) -> String {
    if removed > 0 {
        format!(
            "left by a capture that died: {} {} bytes of a torn last record, kept {} packets",
            if left_as_is {
                "file left as it is (not writable, or a capture is running), upload stops before"
            } else {
                "removed"
            },
            removed,
            packets
        )
    } else {
        format!("left by a capture that died: intact, {packets} packets")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_without_lock_follows_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path(), "capture");
        assert_eq!(capture_state(&l), CaptureState::Dead);
        let m = DoneMarker {
            reason: "signal SIGTERM".into(),
            ..Default::default()
        };
        files::write_atomic(&l.marker_path(), &serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(matches!(capture_state(&l), CaptureState::Final(_)));
    }

    #[test]
    fn an_unreadable_marker_still_means_final() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path(), "capture");
        std::fs::write(l.marker_path(), b"{\"future\": true}").unwrap();
        match capture_state(&l) {
            CaptureState::Final(m) => assert!(m.reason.contains("not readable")),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn a_running_capture_owns_only_its_newest_part() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path(), "capture");
        let mut v = crate::pcapfile::file_header(1, 65535, false).to_vec();
        crate::pcapfile::push_record(&mut v, 1, 0, 60, 60, &[7; 60]);
        let valid = v.len() as u64;
        v.extend_from_slice(&[1, 2, 3]); // a torn last record
        let old = dir.path().join("capture-20261122T154101Z-000001.pcap.part");
        std::fs::write(&old, &v).unwrap();
        let live = dir.path().join("capture-20261122T154102Z-000002.pcap.part");
        std::fs::write(&live, &v).unwrap();
        let _lock = files::CaptureLock::acquire(&l).unwrap();
        let got = candidates(&l).unwrap();
        assert_eq!(got.state, CaptureState::Running);
        assert_eq!(
            got.live_parts,
            vec![(
                "capture-20261122T154102Z-000002.pcap.part".to_string(),
                v.len() as u64
            )]
        );
        assert_eq!(got.ready.len(), 1);
        let c = &got.ready[0];
        assert_eq!(c.name, "capture-20261122T154101Z-000001.pcap");
        assert_eq!((c.path.clone(), c.limit), (old.clone(), Some(valid)));
        // Read in place: not truncated, not renamed, under a running capture.
        assert_eq!(std::fs::metadata(&old).unwrap().len(), v.len() as u64);
    }

    #[test]
    fn an_old_marker_does_not_make_a_running_capture_final() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path(), "capture");
        let m = DoneMarker::default();
        files::write_atomic(&l.marker_path(), &serde_json::to_vec(&m).unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // A capture starts: takes (and rewrites) the lock.
        let lock = files::CaptureLock::acquire(&l).unwrap();
        assert_eq!(capture_state(&l), CaptureState::Running);
        // It finalizes: a new marker, written after the lock.
        std::thread::sleep(std::time::Duration::from_millis(20));
        files::write_atomic(&l.marker_path(), &serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(matches!(capture_state(&l), CaptureState::Final(_)));
        drop(lock);
        assert!(matches!(capture_state(&l), CaptureState::Final(_)));
    }
}
