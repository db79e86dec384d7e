//! Fault injection on the capture (issue 6): SIGKILL storms under traffic. Bounded by default
//! (100 trials, well under a minute); `SIDECAP_KILL_TRIALS=1000` runs a longer storm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helpers::*;

/// Identity of a file's content without reading it: size, modification time, inode. Any write
/// or replacement changes one of them.
fn digest(p: &Path) -> (u64, i64, i64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.len(), m.mtime(), m.mtime_nsec(), m.ino())
}

/// Every pcap-ish file in the directory with its size and digest.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, i64, i64, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        // Only names of the file contract: hidden temporaries are not capture files.
        .filter(|p| {
            let layout = sidecap::files::Layout::new(p.parent().unwrap(), "capture");
            layout
                .parse_name(&p.file_name().unwrap().to_string_lossy())
                .is_some()
        })
        .map(|p| {
            let d = digest(&p);
            (p, d)
        })
        .collect()
}

#[test]
fn kill_storm_never_loses_or_corrupts_what_was_written() {
    require_root();
    let trials: u32 = std::env::var("SIDECAP_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempdir();
    let port = unique_port();
    // Steady traffic for the whole storm, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let t0 = Instant::now();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(600) {
                let mut b = i.to_be_bytes().to_vec();
                b.resize(300, 7);
                let _ = s.send_to(&b, ("127.0.0.1", port));
                i += 1;
                if i.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            i
        })
    };
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut before: BTreeMap<PathBuf, (u64, i64, i64, u64)> = BTreeMap::new();
    let (mut torn, mut killed_before_ready) = (0, 0);
    for trial in 0..trials {
        let mut cmd = capture_cmd(dir.path(), "lo");
        cmd.args([
            "--flush-interval",
            "50ms",
            "-C",
            "1MB",
            &format!("udp port {port}"),
        ]);
        let mut p = Proc::spawn(&mut cmd);
        // A random moment: during start-up, or at any time in the first 400 ms of capturing.
        let delay = Duration::from_millis(next() % 400);
        std::thread::sleep(delay);
        if !p.log_text().contains("Capture is live") {
            killed_before_ready += 1;
        }
        p.signal(Signal::SIGKILL);
        p.wait_timeout(Duration::from_secs(5));
        let now = snapshot(dir.path());
        // Nothing an earlier run left is ever changed or removed by a later run.
        for (path, d) in &before {
            assert_eq!(
                now.get(path),
                Some(d),
                "trial {trial}: {} was modified or removed",
                path.display()
            );
        }
        // Every file left behind is a pcap whose complete records all read back.
        for path in now.keys().filter(|p| !before.contains_key(*p)) {
            let s = scan(path);
            if !s.is_clean() {
                torn += 1;
                // What repair would keep must be readable by tshark.
                let copy = dir.path().join("repaired.tmpcheck");
                std::fs::write(&copy, &std::fs::read(path).unwrap()[..s.valid_len as usize])
                    .unwrap();
                tshark_fields(&copy, None, "frame.number");
                std::fs::remove_file(&copy).unwrap();
            }
        }
        before = now;
        let stray: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(
            stray.len() <= 1,
            "at most one temporary from the last kill: {stray:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    // Every file of the storm, readable by capinfos (a sample: every tenth, to bound the time).
    let all: Vec<_> = before.keys().cloned().collect();
    let mut packets = 0;
    for (i, f) in all.iter().enumerate() {
        let s = scan(f);
        packets += s.packets;
        if i % 10 == 0 && s.is_clean() {
            assert_eq!(capinfos_count(f), s.packets);
        }
    }
    eprintln!(
        "kill storm: {trials} SIGKILLs ({killed_before_ready} before ready), {} files, {packets} packets kept of {sent} sent, {torn} torn tails (all repairable), 0 files lost or modified",
        all.len()
    );
    assert!(packets > 0);
    // Numbering continued across every restart: no sequence number used twice.
    let layout = sidecap::files::Layout::new(dir.path(), "capture");
    let seqs: Vec<u64> = layout.list().unwrap().iter().map(|f| f.seq).collect();
    let mut dedup = seqs.clone();
    dedup.dedup();
    assert_eq!(seqs, dedup);
}

#[test]
fn repair_cli_makes_a_torn_capture_readable_by_tshark() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.arg(format!("udp port {port}"));
    let (p, _addr) = start_capture(&mut cmd);
    send_udp(port, 100, 60);
    std::thread::sleep(Duration::from_millis(100));
    let mut p = p;
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    let f = files_with(dir.path(), ".pcap").remove(0);
    // Tear the last record the way a crash mid-write would.
    let data = std::fs::read(&f).unwrap();
    let torn = dir.path().join("torn.pcap.part");
    std::fs::write(&torn, &data[..data.len() - 20]).unwrap();
    let o = std::process::Command::new(bin())
        .args(["repair", "--dry-run"])
        .arg(&torn)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("would remove"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        std::fs::metadata(&torn).unwrap().len() as usize,
        data.len() - 20,
        "dry run changes nothing"
    );
    let o = std::process::Command::new(bin())
        .arg("repair")
        .arg(&torn)
        .arg(&f)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("removed") && out.contains("kept 99 packets"),
        "{out}"
    );
    assert!(out.contains("ok, 100 packets, nothing to remove"), "{out}");
    assert_eq!(tshark_fields(&torn, None, "frame.number").len(), 99);
    assert_eq!(capinfos_count(&torn), 99);
    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"nope").unwrap();
    let o = std::process::Command::new(bin())
        .arg("repair")
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a pcap file"));
}

fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Soak: steady load with rotation and the ring bound deleting files; RSS and the number of
/// open fds must stay flat. 20 s by default; `SIDECAP_SOAK_SECS=600` for a long run.
#[test]
fn soak_capture_rss_and_fds_stay_flat() {
    require_root();
    let secs: u64 = std::env::var("SIDECAP_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args([
        "-C",
        "2MB",
        "--max-total-size",
        "16MiB",
        &format!("udp port {port}"),
    ]);
    let (p, addr) = start_capture(&mut cmd);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let buf = [0x42u8; 500];
            let t0 = Instant::now();
            let mut n = 0u64;
            // About 20k packets/s (10 MB/s), bounded by the soak time plus a margin.
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(secs + 30) {
                for _ in 0..20 {
                    let _ = s.send_to(&buf, ("127.0.0.1", port));
                }
                n += 20;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        })
    };
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push((rss_kib(p.pid()), fd_count(p.pid())));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.join().unwrap();
    let deleted = metric(&addr, "sidecap_files_deleted_total");
    let mut p = p;
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    let warm = samples[samples.len() / 4];
    let peak_rss = samples.iter().map(|s| s.0).max().unwrap();
    let fds: Vec<usize> = samples.iter().map(|s| s.1).collect();
    eprintln!(
        "soak: {secs} s, {sent} packets sent, {deleted} files deleted by the ring, RSS KiB after warm-up {} -> peak {peak_rss} -> end {}, fds {:?}",
        warm.0,
        samples.last().unwrap().0,
        (fds.iter().min().unwrap(), fds.iter().max().unwrap())
    );
    assert!(deleted > 0, "the ring bound must have been exercised");
    assert!(
        peak_rss <= warm.0 + 8 * 1024,
        "RSS grew from {} KiB to {peak_rss} KiB",
        warm.0
    );
    assert!(
        fds[samples.len() / 4..].iter().all(|&f| f == warm.1),
        "fd count changed: {fds:?}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("capture.done")).unwrap())
            .unwrap();
    assert_eq!(m["disk_dropped_packets"], 0);
}

/// Walks the records of a classic pcap file in native byte order, independently of our own
/// walker (which must accept zero-length records: libpcap can write them). Returns each record's
/// (seconds, caplen); panics on a record that runs past the end.
fn record_walk(path: &Path) -> Vec<(u32, u32)> {
    let data = std::fs::read(path).unwrap();
    let u32_at = |o: usize| u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut off = 24;
    while off < data.len() {
        assert!(
            off + 16 <= data.len(),
            "{}: torn header at {off}",
            path.display()
        );
        let (sec, caplen) = (u32_at(off), u32_at(off + 8));
        off += 16 + caplen as usize;
        assert!(off <= data.len(), "{}: torn body", path.display());
        out.push((sec, caplen));
    }
    out
}

/// Regression (issue 10, class 1): after a disk-full episode the writer truncated the file back
/// to its last complete record but kept writing at the old file offset, so every later record
/// came after a zero-filled hole: tshark called the file damaged, and a walker saw thousands of
/// zero-length records stamped 1970. Several episodes of bursts of large packets on a small
/// tmpfs; every file must read end to end, with only the dropped packets missing.
#[test]
fn disk_full_episodes_leave_no_hole_in_the_file() {
    require_root();
    let fs = SmallFs::new("4m");
    let port = unique_port();
    let mut cmd = capture_cmd(&fs.mnt, "lo");
    cmd.args(["--flush-interval", "50ms", &format!("udp port {port}")]);
    let (p, addr) = start_capture(&mut cmd);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |first: u32, n: u32, len: usize| {
        let mut b = vec![0x33u8; len];
        for i in first..first + n {
            b[..4].copy_from_slice(&i.to_be_bytes());
            sock.send_to(&b, ("127.0.0.1", port)).unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    let mut marks = Vec::new();
    for episode in 0..3u32 {
        // Leave under 1 MB free, then bursts of large packets (several MB) overflow it.
        let filler = fs.mnt.join("filler");
        let free = nix::sys::statvfs::statvfs(&fs.mnt).unwrap();
        let avail = free.blocks_available() * free.fragment_size();
        std::fs::write(&filler, vec![0u8; avail.saturating_sub(700 << 10) as usize]).unwrap();
        for burst in 0..3 {
            send(episode * 100_000 + burst * 1000, 400, 8000);
            std::thread::sleep(Duration::from_millis(150));
        }
        std::fs::remove_file(&filler).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // Small marked packets after space returned must all be readable.
        let first = 1_000_000 + episode * 1000;
        send(first, 20, 100);
        marks.extend(first..first + 20);
        std::thread::sleep(Duration::from_millis(300));
    }
    let dropped = metric(&addr, "sidecap_disk_dropped_packets_total");
    let mut p = p;
    p.signal(Signal::SIGTERM);
    let code = p.wait_timeout(Duration::from_secs(10)).code();
    assert_eq!(code, Some(0), "log:\n{}", p.log_text());
    assert!(dropped > 0, "the episodes must drop packets");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fs.mnt.join("capture.done")).unwrap())
            .unwrap();
    let files = files_with(&fs.mnt, ".pcap");
    assert!(!files.is_empty());
    let mut seqs = Vec::new();
    let mut records = 0u64;
    for f in &files {
        for (sec, caplen) in record_walk(f) {
            assert!(
                caplen > 0 && sec > 1_500_000_000,
                "{}: bogus record (sec {sec}, caplen {caplen}): a hole in the file",
                f.display()
            );
            records += 1;
        }
        assert!(scan(f).is_clean(), "{}", f.display());
        // tshark reads it to the end (tshark_fields asserts it reports no damage).
        assert_eq!(capinfos_count(f), scan(f).packets);
        seqs.extend(udp_seqs(f, port));
    }
    assert_eq!(records, m["packets_written"].as_u64().unwrap());
    assert_eq!(m["disk_dropped_packets"].as_u64().unwrap(), dropped);
    for mark in marks {
        assert!(
            seqs.contains(&mark),
            "packet {mark} sent after space returned is missing"
        );
    }
}

/// A pcap of `n` records with distinct, non-header-like payloads; returns it with each record's
/// offset.
fn synthetic_pcap(n: u32) -> (Vec<u8>, Vec<usize>) {
    let mut v = sidecap::pcapfile::file_header(1, 65535, false).to_vec();
    let mut offsets = Vec::new();
    for i in 0..n {
        offsets.push(v.len());
        let len = 60 + (i * 37) % 1400;
        let mut data = vec![0x90u8; len as usize];
        data[..4].copy_from_slice(&i.to_be_bytes());
        sidecap::pcapfile::push_record(
            &mut v,
            1_790_000_000 + i / 100,
            (i % 100) * 10_000,
            len,
            len,
            &data,
        );
    }
    (v, offsets)
}

/// Regression (issue 10, class 2): one corrupt length field early in a big file made `repair`
/// cut 94% of it and exit 0, and a zero-filled hole passed as records. Damage before the end is
/// now reported (offset, what), cut out with every record around it kept, and exits 7.
#[test]
fn repair_keeps_every_record_around_damage_and_says_where_it_was() {
    let dir = tempdir();
    let (v, offsets) = synthetic_pcap(5000);
    let mut bad_len = v.clone();
    let at = offsets[100] + 8;
    bad_len[at..at + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
    let f1 = dir.path().join("badlen.pcap");
    std::fs::write(&f1, &bad_len).unwrap();
    let mut holed = v[..offsets[3000]].to_vec();
    holed.extend(std::iter::repeat_n(0u8, 1 << 20));
    holed.extend_from_slice(&v[offsets[3000]..]);
    let f2 = dir.path().join("hole.pcap.part");
    std::fs::write(&f2, &holed).unwrap();
    let run = |extra: &[&str]| {
        let o = std::process::Command::new(bin())
            .arg("repair")
            .args(extra)
            .arg(&f1)
            .arg(&f2)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let (code, out) = run(&["--dry-run"]);
    assert_eq!(code, Some(7), "{out}");
    assert!(out.contains(&format!("offset {}", offsets[100])), "{out}");
    assert!(
        out.contains(&format!("offset {}, {} bytes", offsets[3000], 1 << 20)),
        "{out}"
    );
    assert!(out.contains("len 0"), "the hole is named: {out}");
    assert_eq!(
        std::fs::read(&f1).unwrap(),
        bad_len,
        "a dry run changes nothing"
    );
    let (code, out) = run(&[]);
    assert_eq!(code, Some(7), "{out}");
    assert!(out.contains("kept every complete record"), "{out}");
    assert_eq!(
        capinfos_count(&f1),
        4999,
        "only the record with the corrupt length is gone"
    );
    assert_eq!(tshark_fields(&f1, None, "frame.number").len(), 4999);
    assert_eq!(capinfos_count(&f2), 5000);
    assert_eq!(
        std::fs::read(&f2).unwrap(),
        v,
        "the hole is cut out exactly"
    );
    // Repaired files are clean: a second run has nothing to do.
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok, 4999 packets") && out.contains("ok, 5000 packets"),
        "{out}"
    );
    let help = std::process::Command::new(bin())
        .args(["repair", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("damage before the end") && help.contains("(exit 7)"),
        "{help}"
    );
}
