//! `sidecap repair FILE...`: makes a pcap left by a killed capture fully readable by cutting a
//! torn or corrupt tail back to the end of the last complete record. The cut is one
//! ftruncate(2), atomic on its own, followed by fsync; nothing before the cut is touched. The
//! walker ([`crate::pcapfile::scan`]) treats the file as untrusted input.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use crate::exit::{self, ExitStatus};
use crate::pcapfile::{Scan, ScanError};
use crate::pcapng::scan_any_file as scan_file;

#[derive(clap::Args, Debug, Clone)]
pub struct RepairArgs {
    /// Only report what would be removed; change nothing.
    #[arg(long, env = "SIDECAP_REPAIR_DRY_RUN")]
    pub dry_run: bool,

    /// pcap files (.pcap or .pcap.part) to check and repair.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{0}: {1}")]
    Unreadable(String, ScanError),
    #[error("{0}: cannot truncate: {1}")]
    Truncate(String, std::io::Error),
    #[error("{0} of {1} files could not be repaired")]
    Some(usize, usize),
}

impl ExitStatus for RepairError {
    fn exit_code(&self) -> u8 {
        match self {
            RepairError::Unreadable(..) | RepairError::Some(..) => exit::CONFIG,
            RepairError::Truncate(..) => exit::RUNTIME,
        }
    }
}

/// What repairing one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub scan: Scan,
    /// Bytes cut from the end (0 when the file was already clean).
    pub removed: u64,
    pub dry_run: bool,
}

/// Checks one file and, unless `dry_run`, truncates it to its last complete record.
pub fn repair_file(path: &Path, dry_run: bool) -> Result<Repaired, RepairError> {
    let name = path.display().to_string();
    let scan = scan_file(path).map_err(|e| RepairError::Unreadable(name.clone(), e))?;
    let removed = scan.total_len - scan.valid_len;
    if removed > 0 && !dry_run {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| RepairError::Truncate(name.clone(), e))?;
        f.set_len(scan.valid_len)
            .and_then(|_| f.sync_all())
            .map_err(|e| RepairError::Truncate(name, e))?;
    }
    Ok(Repaired {
        scan,
        removed,
        dry_run,
    })
}

pub fn run(args: &RepairArgs) -> Result<(), RepairError> {
    let mut failed = 0;
    for path in &args.files {
        match repair_file(path, args.dry_run) {
            Ok(r) if r.removed == 0 => println!(
                "{}: ok, {} packets, nothing to remove",
                path.display(),
                r.scan.packets
            ),
            Ok(r) => println!(
                "{}: {} {} bytes after the last complete record ({}), kept {} packets in {} bytes",
                path.display(),
                if r.dry_run { "would remove" } else { "removed" },
                r.removed,
                r.scan.stopped.as_deref().unwrap_or("trailing bytes"),
                r.scan.packets,
                r.scan.valid_len
            ),
            Err(e) => {
                eprintln!("sidecap: error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        Err(RepairError::Some(failed, args.files.len()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcapfile::{file_header, push_record, scan};

    fn sample() -> Vec<u8> {
        let mut v = file_header(1, 262_144, true).to_vec();
        for i in 0..20u32 {
            push_record(
                &mut v,
                1_700_000_000 + i,
                i * 1000,
                40 + i,
                40 + i,
                &vec![i as u8; 40 + i as usize],
            );
        }
        v
    }

    #[test]
    fn repair_cuts_exactly_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let full = sample();
        for cut in [full.len(), full.len() - 1, full.len() - 30, 24 + 16 + 5, 24] {
            let p = dir.path().join(format!("c{cut}.pcap"));
            std::fs::write(&p, &full[..cut]).unwrap();
            let r = repair_file(&p, false).unwrap();
            let after = std::fs::read(&p).unwrap();
            assert_eq!(after.len() as u64, r.scan.valid_len);
            assert_eq!(
                &after[..],
                &full[..after.len()],
                "nothing before the cut changes"
            );
            assert!(scan(&after[..]).unwrap().is_clean());
            assert_eq!(r.removed, (cut - after.len()) as u64);
        }
    }

    #[test]
    fn dry_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pcap.part");
        let full = sample();
        std::fs::write(&p, &full[..full.len() - 3]).unwrap();
        let r = repair_file(&p, true).unwrap();
        assert!(r.removed > 0);
        assert_eq!(std::fs::read(&p).unwrap().len(), full.len() - 3);
    }

    #[test]
    fn garbage_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        std::fs::write(&p, b"definitely not a pcap file at all").unwrap();
        assert!(matches!(
            repair_file(&p, false),
            Err(RepairError::Unreadable(..))
        ));
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"definitely not a pcap file at all"
        );
    }

    #[test]
    fn walker_survives_random_corruption() {
        // Deterministic mutation fuzzing beside the cargo-fuzz target: flip, truncate and splice
        // bytes of a valid file; the walker must never panic and its accounting must hold.
        let base = sample();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut v = base.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() as usize) % v.len();
                match rnd() % 3 {
                    0 => v[i] ^= 1 << (rnd() % 8),
                    1 => v.truncate(i.max(1)),
                    _ => v
                        .splice(i..i, (0..rnd() % 20).map(|_| rnd() as u8))
                        .for_each(drop),
                }
            }
            if let Ok(s) = scan(&v[..]) {
                assert!(s.valid_len <= s.total_len);
                assert_eq!(s.total_len, v.len() as u64);
                assert!(s.valid_len >= 24);
                // Re-scanning the valid prefix is clean and finds the same packets.
                let again = scan(&v[..s.valid_len as usize]).unwrap();
                assert!(again.is_clean());
                assert_eq!(again.packets, s.packets);
            }
        }
    }
}
