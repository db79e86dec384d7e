//! `sidecap repair FILE...`: makes a pcap left by a killed capture fully readable.
//!
//! Only a torn tail (an incomplete last record: what a killed writer leaves) is cut without
//! further ado: one ftruncate(2), atomic on its own, then fsync; nothing before the cut is
//! touched. Damage anywhere else (a corrupt record header, a zero-filled hole) is not a reason to
//! throw away what follows it: the walker ([`crate::pcapfile::scan`]) resynchronises on the next
//! plausible record header, the file is rewritten without the damaged spans (a new file beside
//! it, fsynced, renamed over it, so a crash leaves the old or the new file, never a mix), every
//! span is reported with its offset, length and what was wrong, and the exit code is
//! [`exit::DAMAGED`] so a script cannot mistake it for a plain torn tail.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::exit::{self, ExitStatus};
use crate::pcapfile::{Damage, Scan, ScanError};

/// `repair --help`: what is changed in each case, then the exit codes of every subcommand.
fn long_help() -> String {
    format!("{CHANGES}\n\n{}", crate::exit::EXIT_CODES)
}

const CHANGES: &str = "\
What is changed:
  clean file                 nothing (exit 0)
  torn last record or block  cut at the end of the last complete one (exit 0)
  damage before the end      (a corrupt record header, a zero-filled hole) the damaged spans are
                             removed and every complete record before and after them is kept;
                             each span is listed with its offset, length and what was wrong.
                             The file is rewritten beside itself and renamed over (exit 7).
                             A damaged pcapng file is reported and left unchanged (exit 7)
  not a capture file         refused, never changed (exit 3)
  symlink, special file      refused, never followed or changed (exit 3)
  cannot be cut or rewritten exit 1
With --dry-run the same report and exit codes, and nothing is changed.";

#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = long_help())]
pub struct RepairArgs {
    /// Only report what would be removed; change nothing.
    #[arg(long, env = "SIDECAP_REPAIR_DRY_RUN")]
    pub dry_run: bool,

    /// Capture files (.pcap, .pcapng, or their .part) to check and repair.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{0}: {1}")]
    Unreadable(String, ScanError),
    /// The file (or its directory, for a rewrite) cannot be changed. The uploader, which may
    /// only be able to read, falls back to a dry run on this one and sends the clean prefix.
    #[error("{0}: cannot cut the torn tail or rewrite it without the damaged spans: {1}")]
    Truncate(String, std::io::Error),
    #[error("{0} of {1} files could not be repaired")]
    Some(usize, usize),
    #[error("{0} of {1} files had damage before their end: the damaged spans listed above {2}, every complete record around them kept")]
    Damaged(usize, usize, &'static str),
}

impl ExitStatus for RepairError {
    fn exit_code(&self) -> u8 {
        match self {
            RepairError::Unreadable(..) | RepairError::Some(..) => exit::CONFIG,
            RepairError::Truncate(..) => exit::RUNTIME,
            RepairError::Damaged(..) => exit::DAMAGED,
        }
    }
}

/// What repairing one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The file as it is afterwards: after a repair, clean, with every record kept; after a dry
    /// run, the file as found (its `valid_len` is then the clean prefix).
    pub scan: Scan,
    /// Bytes removed (or, in a dry run, that would be): damaged spans plus a torn tail.
    pub removed: u64,
    pub dry_run: bool,
    /// Damage before the end of the file, removed (or to be removed) with the records around it
    /// kept. Empty when at most a torn tail was cut.
    pub damaged: Vec<Damage>,
    /// The torn tail cut (or to be cut).
    pub torn_tail: Option<Damage>,
}

/// Checks one file and, unless `dry_run`, cuts a torn tail and removes damaged spans.
pub fn repair_file(path: &Path, dry_run: bool) -> Result<Repaired, RepairError> {
    let name = path.display().to_string();
    let unreadable = |e: ScanError| RepairError::Unreadable(name.clone(), e);
    // Never through a symlink, and only a regular file: the uploader repairs files on a shared
    // volume where anyone with write access could plant a link to something else.
    // O_NONBLOCK: a FIFO planted under the name opens at once (and is refused below) instead
    // of blocking until a writer comes.
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| unreadable(e.into()))?;
    if !src.metadata().map_err(|e| unreadable(e.into()))?.is_file() {
        return Err(unreadable(ScanError::NotPcap("not a regular file".into())));
    }
    let mut scan = crate::pcapng::scan_any(&src).map_err(unreadable)?;
    let pcapng = recheck_pcapng_tail(&src, &mut scan).map_err(unreadable)?;
    // The pcapng walker does not resynchronise after damage: such a file is reported (exit 7)
    // and left exactly as it is, never cut back to the damage.
    let dry_run = dry_run || (pcapng && !scan.damaged.is_empty());
    let kept: u64 = scan.kept_spans().iter().map(|(a, b)| b - a).sum();
    let removed = scan.total_len - kept;
    let (damaged, torn_tail) = (scan.damaged.clone(), scan.torn_tail.clone());
    if removed == 0 || dry_run {
        return Ok(Repaired {
            scan,
            removed,
            dry_run,
            damaged,
            torn_tail,
        });
    }
    if damaged.is_empty() {
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .and_then(|f| same_file(&src, f))
            .map_err(|e| RepairError::Truncate(name.clone(), e))?;
        f.set_len(scan.valid_len)
            .and_then(|_| f.sync_all())
            .map_err(|e| RepairError::Truncate(name, e))?;
    } else {
        rewrite_without(path, &src, &scan.kept_spans())
            .map_err(|e| RepairError::Truncate(name, e))?;
    }
    let after = Scan {
        packets: scan.all_packets(),
        valid_len: kept,
        total_len: kept,
        stopped: None,
        damaged: Vec::new(),
        packets_after_damage: 0,
        torn_tail: None,
        ..scan
    };
    Ok(Repaired {
        scan: after,
        removed,
        dry_run,
        damaged,
        torn_tail,
    })
}

/// Whether `src` is pcapng. In one, a "torn last block" with a complete block after its start
/// is a corrupt length in the middle, not a torn tail: made damage, never cut silently.
fn recheck_pcapng_tail(src: &std::fs::File, scan: &mut Scan) -> Result<bool, ScanError> {
    let mut magic = [0u8; 4];
    if src.read_exact_at(&mut magic, 0).is_err() || !crate::pcapng::is_pcapng(&magic) {
        return Ok(false);
    }
    if let Some(t) = scan.torn_tail.clone() {
        if crate::pcapng::complete_block_after(src, t.offset, scan.swapped)? {
            scan.torn_tail = None;
            scan.damaged.push(Damage {
                what: format!("{} (complete blocks follow: not a torn tail)", t.what),
                ..t
            });
        }
    }
    Ok(true)
}

/// `f` if it is the file `scanned` was opened on: the name may have been replaced (by a link,
/// which O_NOFOLLOW refuses, or by another file) between the scan and this second open, and a
/// cut must never land on a file that was not scanned.
fn same_file(scanned: &std::fs::File, f: std::fs::File) -> io::Result<std::fs::File> {
    let (a, b) = (scanned.metadata()?, f.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(io::Error::other(
            "the file was replaced while it was being checked; nothing changed",
        ));
    }
    Ok(f)
}

/// Writes the `kept` byte ranges of `path` to a temporary beside it (same mode and, when we may,
/// same owner), fsyncs it, renames it over `path` and fsyncs the directory.
fn rewrite_without(path: &Path, src: &std::fs::File, kept: &[(u64, u64)]) -> io::Result<()> {
    let meta = src.metadata()?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".repair.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let res = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(meta.mode() & 0o7777)
            .open(&tmp)?;
        // Keep the owner, so an uploader running as the capture's group can still read it.
        let _ = std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()));
        let mut buf = vec![0u8; 1 << 20];
        for &(start, end) in kept {
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                src.read_exact_at(&mut buf[..n], at)?;
                out.write_all(&buf[..n])?;
                at += n as u64;
            }
        }
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;
    crate::files::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn report_one(path: &Path, r: &Repaired) {
    let p = path.display();
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let kept_packets = r.scan.all_packets();
    if r.removed == 0 {
        println!("{p}: ok, {kept_packets} packets, nothing to remove");
        return;
    }
    if r.damaged.is_empty() {
        let what = r
            .torn_tail
            .as_ref()
            .map_or("trailing bytes", |t| t.what.as_str());
        println!(
            "{p}: {verb} {} bytes after the last complete record ({what}), kept {} packets in {} bytes",
            r.removed, r.scan.packets, r.scan.valid_len
        );
        return;
    }
    let kept_packets = if r.dry_run {
        kept_packets
    } else {
        r.scan.packets
    };
    println!(
        "{p}: DAMAGED: {verb} {} damaged span(s){}, {} bytes in all; kept every complete record around them: {kept_packets} packets",
        r.damaged.len(),
        if r.torn_tail.is_some() { " and a torn tail" } else { "" },
        r.removed
    );
    for d in r.damaged.iter().chain(r.torn_tail.iter()) {
        println!("{p}:   offset {}, {} bytes: {}", d.offset, d.len, d.what);
    }
}

pub fn run(args: &RepairArgs) -> Result<(), RepairError> {
    let (mut failed, mut damaged, mut left_as_is) = (0, 0, 0);
    for path in &args.files {
        match repair_file(path, args.dry_run) {
            Ok(r) => {
                report_one(path, &r);
                damaged += !r.damaged.is_empty() as usize;
                left_as_is += (!r.damaged.is_empty() && r.dry_run) as usize;
            }
            Err(e) => {
                eprintln!("sidecap: error: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        Err(RepairError::Some(failed, args.files.len()))
    } else if damaged > 0 {
        let verb = if args.dry_run {
            "would be removed (dry run: nothing changed)"
        } else if left_as_is == damaged {
            "were left in place (pcapng: nothing changed)"
        } else if left_as_is > 0 {
            "were removed (pcapng files left unchanged)"
        } else {
            "were removed"
        };
        Err(RepairError::Damaged(damaged, args.files.len(), verb))
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
    fn a_file_replaced_after_the_scan_is_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pcap"), dir.path().join("b"));
        std::fs::write(&a, b"scanned").unwrap();
        std::fs::write(&b, b"victim").unwrap();
        let scanned = std::fs::File::open(&a).unwrap();
        assert!(same_file(&scanned, std::fs::File::open(&a).unwrap()).is_ok());
        std::fs::rename(&b, &a).unwrap();
        let e = same_file(&scanned, std::fs::File::open(&a).unwrap()).unwrap_err();
        assert!(e.to_string().contains("replaced"), "{e}");
        assert_eq!(std::fs::read(&a).unwrap(), b"victim");
    }

    #[test]
    fn symlinks_and_special_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret");
        let full = sample();
        std::fs::write(&target, &full[..full.len() - 5]).unwrap();
        let link = dir.path().join("x.pcap.part");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            repair_file(&link, false),
            Err(RepairError::Unreadable(..))
        ));
        assert_eq!(
            std::fs::metadata(&target).unwrap().len() as usize,
            full.len() - 5
        );
        assert!(matches!(
            repair_file(dir.path(), false),
            Err(RepairError::Unreadable(..))
        ));
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

    #[test]
    fn damage_in_the_middle_is_cut_out_and_everything_around_it_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let full = sample();
        // A zero-filled hole after record 5, then a torn tail.
        let rec = |i: usize| 24 + (0..i).map(|k| 16 + 40 + k).sum::<usize>();
        let mut d = full[..rec(5)].to_vec();
        d.extend_from_slice(&[0u8; 5000]);
        d.extend_from_slice(&full[rec(5)..full.len() - 10]);
        let p = dir.path().join("d.pcap.part");
        std::fs::write(&p, &d).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let dry = repair_file(&p, true).unwrap();
        assert_eq!(dry.damaged.len(), 1);
        assert_eq!(dry.damaged[0].offset, rec(5) as u64);
        assert_eq!(dry.removed, 5000 + (full.len() - 10 - rec(19)) as u64);
        assert_eq!(std::fs::read(&p).unwrap(), d, "a dry run changes nothing");
        let r = repair_file(&p, false).unwrap();
        assert_eq!(r.scan.packets, 19, "every complete record kept");
        let after = std::fs::read(&p).unwrap();
        assert_eq!(
            after,
            full[..rec(19)],
            "exactly the file without the hole and the torn tail"
        );
        assert_eq!(r.scan.valid_len, after.len() as u64);
        assert!(scan(&after[..]).unwrap().is_clean());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary left behind");
    }
}
