//! Capture integration tests (issue 2): the real binary, real libpcap, real traffic on loopback
//! (each test on its own UDP port with a matching BPF filter) or on veths in namespaces the test
//! creates, real PID namespaces, and tshark/capinfos reading what we wrote.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helpers::*;

fn filter(port: u16) -> String {
    format!("udp port {port}")
}

fn marker(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("capture.done")).expect("done marker");
    serde_json::from_str(&text).expect("marker is JSON")
}

/// All sequence numbers in all finished files, in file order.
fn all_seqs(dir: &Path, port: u16) -> Vec<u32> {
    files_with(dir, ".pcap")
        .iter()
        .flat_map(|f| udp_seqs(f, port))
        .collect()
}

fn stop(mut p: Proc) -> (i32, Proc) {
    p.signal(Signal::SIGTERM);
    let st = p.wait_timeout(Duration::from_secs(10));
    (st.code().unwrap_or(-1), p)
}

#[test]
fn sigterm_as_pid1_finalizes_exactly_the_packets_sent() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(bin())
        .args(["--log-format", "json", "capture", "-i", "lo", "-w"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--filter", &filter(port)]);
    let (mut p, addr) = start_capture(&mut cmd);
    assert!(
        p.log_text().contains("Running as PID 1"),
        "sidecap should see itself as PID 1"
    );
    send_udp(port, 500, 100);
    // The kubelet signals the container's PID 1: the child of unshare, not unshare itself.
    let child: i32 = sh("pgrep", &["-P", &p.pid().to_string()])
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGTERM).unwrap();
    let st = p.wait_timeout(Duration::from_secs(10));
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "exit code; log:\n{}", p.log_text());
    assert!(took < Duration::from_secs(2), "graceful stop took {took:?}");
    let files = files_with(dir.path(), ".pcap");
    assert_eq!(files.len(), 1);
    assert!(
        files_with(dir.path(), ".part").is_empty(),
        "no .part left after a clean stop"
    );
    assert_eq!(capinfos_count(&files[0]), 500);
    assert_eq!(udp_seqs(&files[0], port), (0..500).collect::<Vec<_>>());
    let m = marker(dir.path());
    assert_eq!(m["packets_written"], 500);
    assert_eq!(m["reason"], "signal SIGTERM");
    assert_eq!(m["clean"], true);
    assert_eq!(m["linktype"], 1, "lo is Ethernet-framed");
    drop(addr);
}

#[test]
fn pid1_reaps_orphaned_zombies() {
    require_root();
    let dir = tempdir();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(bin())
        .args(["--log-format", "json", "capture", "-i", "lo", "-w"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "udp port 9"]);
    let (mut p, _addr) = start_capture(&mut cmd);
    let pid1: i32 = sh("pgrep", &["-P", &p.pid().to_string()])
        .trim()
        .parse()
        .unwrap();
    // Like an exec probe that forks and exits: nsenter's shell starts a background sleep and
    // exits, so the sleep is re-parented to PID 1 of the namespace (sidecap).
    let st = Command::new("nsenter")
        .args([
            "-t",
            &pid1.to_string(),
            "-p",
            "-m",
            "--",
            "sh",
            "-c",
            "sleep 0.5 & exit 0",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let children = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid1}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).ok())
            .flat_map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .collect()
    };
    // The orphan must have become our child (otherwise this test proves nothing) ...
    let t0 = Instant::now();
    while children().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "orphan was never re-parented to sidecap"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // ... and once it exits, it must be reaped rather than stay a zombie.
    let t0 = Instant::now();
    loop {
        let kids = children();
        if kids.is_empty() {
            break;
        }
        let states: Vec<String> = kids
            .iter()
            .map(|k| std::fs::read_to_string(format!("/proc/{k}/stat")).unwrap_or_default())
            .collect();
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "children not reaped: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid1), Signal::SIGTERM).unwrap();
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn sigkill_leaves_readable_files_with_everything_older_than_the_flush_interval() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args(["--flush-interval", "200ms", "-C", "30kB", &filter(port)]);
    let (mut p, _addr) = start_capture(&mut cmd);
    send_udp(port, 1000, 200);
    // Three flush intervals: everything sent must have been handed to the kernel.
    std::thread::sleep(Duration::from_millis(600));
    p.signal(Signal::SIGKILL);
    p.wait_timeout(Duration::from_secs(5));
    assert!(
        !dir.path().join("capture.done").exists(),
        "SIGKILL leaves no marker"
    );
    let mut seqs = Vec::new();
    for f in files_with(dir.path(), ".pcap")
        .iter()
        .chain(files_with(dir.path(), ".pcap.part").iter())
    {
        let s = scan(f);
        assert!(s.is_clean(), "{}: {:?}", f.display(), s.stopped);
        seqs.extend(udp_seqs(f, port));
    }
    assert_eq!(
        seqs,
        (0..1000).collect::<Vec<_>>(),
        "every packet, once, in order"
    );
    assert_eq!(
        files_with(dir.path(), ".pcap.part").len(),
        1,
        "only the file being written stays .part"
    );
}

#[test]
fn restart_in_the_same_directory_continues_in_new_files() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut first_names = Vec::new();
    for round in 0..2u32 {
        let mut cmd = capture_cmd(dir.path(), "lo");
        cmd.arg(filter(port));
        let (p, _addr) = start_capture(&mut cmd);
        send_udp(port, 10, 50);
        std::thread::sleep(Duration::from_millis(50));
        let (code, p) = stop(p);
        assert_eq!(code, 0, "{}", p.log_text());
        if round == 0 {
            first_names = files_with(dir.path(), ".pcap");
            assert!(!marker(dir.path()).is_null());
        } else {
            assert!(
                p.log_text().contains("earlier run"),
                "restart should notice the old files"
            );
        }
    }
    let all = files_with(dir.path(), ".pcap");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], first_names[0], "the first run's file is untouched");
    assert_eq!(capinfos_count(&all[0]), 10);
    assert_eq!(capinfos_count(&all[1]), 10);
    assert!(
        all[1].to_string_lossy().contains("-000002.pcap"),
        "numbering continues: {all:?}"
    );
    assert_eq!(
        marker(dir.path())["files"].as_array().unwrap().len(),
        1,
        "marker lists this run's files only"
    );
}

#[test]
fn rotation_by_size_puts_every_packet_in_exactly_one_file() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args(["-C", "20kB", &filter(port)]);
    let (p, addr) = start_capture(&mut cmd);
    send_udp(port, 2000, 100);
    std::thread::sleep(Duration::from_millis(1500));
    let written = metric(&addr, "sidecap_packets_written_total");
    let (code, p) = stop(p);
    assert_eq!(code, 0, "{}", p.log_text());
    let files = files_with(dir.path(), ".pcap");
    assert!(
        files.len() >= 10,
        "expected about 16 files, got {}",
        files.len()
    );
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= 20_000, "{} is {len} bytes", f.display());
        assert!(scan(f).is_clean());
    }
    assert_eq!(all_seqs(dir.path(), port), (0..2000).collect::<Vec<_>>());
    assert_eq!(written, 2000, "/metrics agrees with the files once flushed");
    assert_eq!(
        marker(dir.path())["files"].as_array().unwrap().len(),
        files.len()
    );
}

#[test]
fn rotation_by_time_and_sighup() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args(["-G", "1", &filter(port)]);
    let (p, _addr) = start_capture(&mut cmd);
    for i in 0..25u32 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&i.to_be_bytes(), ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let before_hup = files_with(dir.path(), ".pcap").len();
    assert!(
        before_hup >= 2,
        "2.5 s with -G 1 should have finished at least 2 files"
    );
    p.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        files_with(dir.path(), ".pcap").len() > before_hup,
        "SIGHUP rotates"
    );
    let (code, p) = stop(p);
    assert_eq!(code, 0, "{}", p.log_text());
    assert_eq!(all_seqs(dir.path(), port), (0..25).collect::<Vec<_>>());
}

#[test]
fn ring_bound_by_count_keeps_the_newest_files() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args(["-C", "10kB", "-W", "3", &filter(port)]);
    let (p, addr) = start_capture(&mut cmd);
    send_udp(port, 1000, 100);
    std::thread::sleep(Duration::from_millis(1200));
    let deleted = metric(&addr, "sidecap_files_deleted_total");
    let (code, p) = stop(p);
    assert_eq!(code, 0);
    let files = files_with(dir.path(), ".pcap");
    assert_eq!(files.len(), 3, "-W 3 keeps three files: {files:?}");
    let seqs = all_seqs(dir.path(), port);
    // What is left is the newest packets, contiguous, ending with the last one sent.
    assert_eq!(*seqs.last().unwrap(), 999);
    assert_eq!(seqs, (1000 - seqs.len() as u32..1000).collect::<Vec<_>>());
    assert!(deleted >= 5, "deletions are counted ({deleted})");
    assert!(p.log_text().matches("Deleted the oldest file").count() as u64 >= deleted);
}

#[test]
fn ring_bound_by_total_size_holds_under_load() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args(["--max-total-size", "4MiB", &filter(port)]);
    let (p, addr) = start_capture(&mut cmd);
    let mut max_seen = 0;
    for _ in 0..12 {
        send_udp(port, 1000, 1400); // ~1.45 MB per round
        let total: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".pcap"))
            // A file can be renamed (.part -> .pcap) or deleted by the ring between readdir and
            // stat: it is then counted under its new name or not at all, as the agent sees it.
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        max_seen = max_seen.max(total);
    }
    std::thread::sleep(Duration::from_millis(1200));
    let deleted = metric(&addr, "sidecap_bytes_deleted_total");
    let (code, p) = stop(p);
    assert_eq!(code, 0, "{}", p.log_text());
    assert!(max_seen <= 4 << 20, "directory reached {max_seen} bytes");
    assert!(
        deleted > 8 << 20,
        "most of ~17 MB was rotated away ({deleted} bytes deleted)"
    );
    let seqs = all_seqs(dir.path(), port);
    assert_eq!(*seqs.last().unwrap(), 999, "the newest packets are kept");
    for f in files_with(dir.path(), ".pcap") {
        assert!(scan(&f).is_clean());
    }
}

#[test]
fn count_and_duration_stop_conditions() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args(["-c", "50", &filter(port)]);
    let (mut p, _addr) = start_capture(&mut cmd);
    send_udp(port, 80, 10);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(marker(dir.path())["reason"], "count reached");
    assert_eq!(
        all_seqs(dir.path(), port),
        (0..50).collect::<Vec<_>>(),
        "exactly -c packets"
    );

    let dir = tempdir();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args(["--duration", "1s", &filter(port)]);
    let t0 = Instant::now();
    let (mut p, _addr) = start_capture(&mut cmd);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert_eq!(marker(dir.path())["reason"], "duration reached");
}

/// Issue 17: a stop waited for the 100 ms block retire timeout plus a 250 ms quiet window
/// (~300 ms idle, 300-380 ms right after a burst). It must be prompt in both cases and still keep
/// every packet sent before the signal, including those the kernel had not handed over yet; the
/// latency is measured by bench/ (`sidecap-bench ci` and the stop table of `bench/run.sh`).
#[test]
fn stop_is_prompt_idle_and_right_after_a_burst_and_keeps_every_packet() {
    require_root();
    for burst in [false, true] {
        let mut took = Vec::new();
        for _ in 0..3 {
            let dir = tempdir();
            let port = unique_port();
            let mut cmd = capture_cmd(dir.path(), "lo");
            cmd.arg(filter(port));
            let (mut p, _addr) = start_capture(&mut cmd);
            if burst {
                send_udp(port, 2000, 64);
            } else {
                // Idle for longer than the retire timeout: nothing is pending in the kernel.
                std::thread::sleep(Duration::from_millis(300));
            }
            let t0 = Instant::now();
            p.signal(Signal::SIGTERM);
            let st = p.wait_timeout(Duration::from_secs(10));
            took.push(t0.elapsed());
            assert_eq!(st.code(), Some(0), "log:\n{}", p.log_text());
            let want: Vec<u32> = if burst { (0..2000).collect() } else { vec![] };
            assert_eq!(all_seqs(dir.path(), port), want, "burst={burst}");
        }
        // How long it took is bench/'s to measure and gate (a timed test fails on a loaded
        // machine, not on a slow stop): printed for the log only.
        eprintln!("burst={burst}: stop took {took:?}");
    }
}

fn thread_names(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// Issue 17: every flush tick ran fdatasync (~10% CPU at 1400 B) although it buys nothing
/// against SIGKILL. By default nothing is fsynced; `--fsync interval` brings the flush-tick
/// fdatasync (and its thread) back.
#[test]
fn flush_ticks_fdatasync_only_with_fsync_interval() {
    require_root();
    for (args, want) in [
        (&[][..], false),
        (&["--fsync", "rotate"][..], false),
        (&["--fsync", "interval"][..], true),
    ] {
        let dir = tempdir();
        let port = unique_port();
        let mut cmd = capture_cmd(dir.path(), "lo");
        cmd.args(args)
            .args(["--flush-interval", "50ms", &filter(port)]);
        let (p, _addr) = start_capture(&mut cmd);
        send_udp(port, 100, 100);
        std::thread::sleep(Duration::from_millis(200));
        let names = thread_names(p.pid());
        assert_eq!(
            names.iter().any(|n| n == "fsync"),
            want,
            "{args:?}: {names:?}"
        );
        let (code, _) = stop(p);
        assert_eq!(code, 0);
        assert_eq!(all_seqs(dir.path(), port), (0..100).collect::<Vec<_>>());
    }
}

#[test]
fn second_sigterm_exits_at_once_with_130() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.arg(filter(port));
    let (mut p, _addr) = start_capture(&mut cmd);
    p.signal(Signal::SIGTERM);
    p.signal(Signal::SIGTERM);
    let code = p.wait_timeout(Duration::from_secs(5)).code();
    // Either the graceful stop already won (0) or the second signal forced 130.
    assert!(matches!(code, Some(0) | Some(130)), "got {code:?}");
    for f in files_with(dir.path(), ".pcap")
        .iter()
        .chain(files_with(dir.path(), ".part").iter())
    {
        assert!(scan(f).valid_len >= 24);
    }
}

#[test]
fn readyz_is_503_until_capture_is_live_then_metrics_match_the_file() {
    require_root();
    let ns = Netns::new("rdy");
    let dir = tempdir();
    let late = format!("{}x", ns.a); // does not exist yet
    let mut cmd = ns.command(&bin());
    cmd.args(["--log-format", "json", "capture", "-i", &late, "-w"])
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--wait-for-interface",
            "20s",
            "udp",
        ]);
    let mut p = Proc::spawn(&mut cmd);
    let addr = p.admin_addr();
    p.wait_log("Waiting for the interface", Duration::from_secs(5));
    assert_eq!(http_get_in(&ns, &addr, "/readyz").map(|r| r.0), Some(503));
    assert_eq!(http_get_in(&ns, &addr, "/livez").map(|r| r.0), Some(200));
    assert!(
        files_with(dir.path(), ".part").is_empty(),
        "no file before the handle is active"
    );
    ns.exec_ok(&[
        "ip",
        "link",
        "add",
        &late,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{late}p"),
    ]);
    ns.exec_ok(&["ip", "addr", "add", "10.232.0.1/24", "dev", &late]);
    // It exists but is down for a while, as while a CNI plugin configures it: the wait goes on
    // until it is up (opening a down interface fails: "That device is not up").
    std::thread::sleep(Duration::from_millis(400));
    ns.exec_ok(&["ip", "link", "set", &late, "up"]);
    ns.exec_ok(&["ip", "link", "set", &format!("{late}p"), "up"]);
    // A static neighbour: datagrams leave at once instead of waiting for ARP.
    ns.exec_ok(&[
        "ip",
        "neigh",
        "add",
        "10.232.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        &late,
    ]);
    let t0 = Instant::now();
    while http_get_in(&ns, &addr, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never became ready:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        files_with(dir.path(), ".part").len(),
        1,
        "ready means the first file is on disk"
    );
    // 40 datagrams out of the veth (to a neighbour address that exists only in this namespace).
    ns.enter(|| {
        let s = std::net::UdpSocket::bind("10.232.0.1:0").unwrap();
        for i in 0..40u32 {
            let _ = s.send_to(&i.to_be_bytes(), "10.232.0.2:9");
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (_, body) = http_get_in(&ns, &addr, "/metrics").unwrap();
    let written: u64 = body
        .lines()
        .find(|l| l.starts_with("sidecap_packets_written_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    let f = &files_with(dir.path(), ".pcap")[0];
    let in_file = capinfos_count(f);
    assert_eq!(in_file, 40);
    assert_eq!(
        written, in_file,
        "/metrics packets_written == packets in the file"
    );
    assert_eq!(marker(dir.path())["packets_written"], in_file);
}

#[test]
fn interface_removed_mid_capture_finalizes_and_exits_1() {
    require_root();
    let ns = Netns::new("gone");
    let dir = tempdir();
    let mut cmd = ns.command(&bin());
    cmd.args(["--log-format", "json", "capture", "-i", &ns.a, "-w"])
        .arg(dir.path())
        .args(["--listen", "off"]);
    let mut p = Proc::spawn(&mut cmd);
    p.wait_log("Capture is live", Duration::from_secs(10));
    let (a_ip, b_ip) = (ns.a_ip.clone(), ns.b_ip.clone());
    ns.enter(|| {
        let s = std::net::UdpSocket::bind(format!("{a_ip}:0")).unwrap();
        for i in 0..20u32 {
            s.send_to(&i.to_be_bytes(), format!("{b_ip}:9")).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    ns.exec_ok(&["ip", "link", "del", &ns.a]);
    let code = p.wait_timeout(Duration::from_secs(10)).code();
    assert_eq!(
        code,
        Some(1),
        "interface gone is a runtime failure; log:\n{}",
        p.log_text()
    );
    let m = marker(dir.path());
    assert_eq!(m["clean"], false);
    assert!(
        m["reason"].as_str().unwrap().contains("capture error"),
        "{m}"
    );
    let files = files_with(dir.path(), ".pcap");
    assert_eq!(files.len(), 1);
    assert!(scan(&files[0]).is_clean());
    assert!(capinfos_count(&files[0]) >= 20);
    assert!(p.log_text().contains("files finalized"));
}

#[test]
fn disk_full_keeps_files_valid_counts_drops_and_recovers() {
    require_root();
    let small = SmallFs::new("3m");
    let mnt = small.mnt.clone();
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 2 << 20]).unwrap();
    let port = unique_port();
    let mut cmd = capture_cmd(&mnt, "lo");
    cmd.args(["--flush-interval", "100ms", &filter(port)]);
    let (p, addr) = start_capture(&mut cmd);
    // ~2.9 MB of traffic into ~1 MB of free space.
    for _ in 0..4 {
        send_udp(port, 500, 1400);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let dropped = metric(&addr, "sidecap_disk_dropped_packets_total");
    assert!(dropped > 0, "drops must be counted:\n{}", p.log_text());
    assert_eq!(
        p.log_text()
            .matches("dropping them until space returns")
            .count(),
        1,
        "one warning per episode"
    );
    std::fs::remove_file(&filler).unwrap();
    // A second batch with distinct sequence numbers must land after space returns.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50u32 {
        let mut b = (1_000_000 + i).to_be_bytes().to_vec();
        b.resize(200, 0);
        s.send_to(&b, ("127.0.0.1", port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let (code, p) = stop(p);
    assert_eq!(code, 0, "disk full is survivable; log:\n{}", p.log_text());
    assert!(p.log_text().contains("resumed"));
    let f = &files_with(&mnt, ".pcap")[0];
    assert!(
        scan(f).is_clean(),
        "the file stays valid through the episode"
    );
    let seqs = udp_seqs(f, port);
    assert!(
        seqs.ends_with(&(1_000_000..1_000_050).collect::<Vec<_>>()),
        "capture resumed after space returned"
    );
    let m = marker(&mnt);
    assert_eq!(m["disk_dropped_packets"], dropped);
    assert_eq!(m["clean"], false, "dropped packets make the run not clean");
    assert_eq!(m["packets_written"].as_u64().unwrap(), seqs.len() as u64);
}

// ---- Bad input: each with its message and documented exit code. ----

fn run_fail(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_interface_lists_the_available_ones() {
    require_root();
    let dir = tempdir();
    let (code, err) = run_fail(&[
        "capture",
        "-i",
        "nosuch0",
        "-w",
        dir.path().to_str().unwrap(),
        "--listen",
        "off",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("unknown interface \"nosuch0\"") && err.contains("lo"),
        "{err}"
    );
}

#[test]
fn invalid_filter_reports_libpcaps_message() {
    require_root();
    let dir = tempdir();
    let (code, err) = run_fail(&[
        "capture",
        "-i",
        "lo",
        "-w",
        dir.path().to_str().unwrap(),
        "--listen",
        "off",
        "port",
        "notaport",
    ]);
    assert_eq!(code, 3, "{err}");
    // The filter compiled is the user's with the uploader's ports left out (issue 11).
    assert!(
        err.contains("invalid filter \"(port notaport) and not ("),
        "{err}"
    );
    assert!(
        err.contains("unknown port") || err.contains("syntax error"),
        "libpcap's own words: {err}"
    );
}

#[test]
fn filter_words_are_never_given_to_a_shell() {
    require_root();
    let dir = tempdir();
    let canary = dir.path().join("pwned");
    let evil = format!(
        "-z /bin/touch {}; touch {}",
        canary.display(),
        canary.display()
    );
    let (code, err) = run_fail(&[
        "capture",
        "-i",
        "lo",
        "-w",
        dir.path().to_str().unwrap(),
        "--listen",
        "off",
        &format!("--filter={evil}"),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(!canary.exists());
}

#[test]
fn missing_cap_net_raw_says_how_to_grant_it() {
    require_root();
    let dir = tempdir();
    // Root without CAP_NET_RAW in its bounding set (so it cannot be regained at exec).
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-net_raw", "--inh-caps", "-net_raw", "--"])
        .arg(bin())
        .args([
            "capture",
            "-i",
            "lo",
            "-w",
            dir.path().to_str().unwrap(),
            "--listen",
            "off",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("CAP_NET_RAW") && err.contains("capabilities.add"),
        "{err}"
    );
}

#[test]
fn output_directory_missing_or_not_writable() {
    require_root();
    let dir = tempdir();
    let missing = dir.path().join("nope");
    let (code, err) = run_fail(&[
        "capture",
        "-i",
        "lo",
        "-w",
        missing.to_str().unwrap(),
        "--listen",
        "off",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    // Owned by root, 0755: not writable for nobody.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = as_nobody(&bin(), &[])
        .args([
            "capture",
            "-i",
            "lo",
            "-w",
            dir.path().to_str().unwrap(),
            "--listen",
            "off",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("not writable by uid 65534"), "{err}");
}

#[test]
fn impossible_combinations_and_usage_errors() {
    let (code, err) = run_fail(&["capture", "-W", "3", "--listen", "off"]);
    assert_eq!(code, 3);
    assert!(err.contains("--max-files needs"), "{err}");
    let (code, err) = run_fail(&[
        "capture",
        "--max-total-size",
        "10MiB",
        "-C",
        "8MiB",
        "--listen",
        "off",
    ]);
    assert_eq!(code, 3);
    assert!(err.contains("at most half"), "{err}");
    let (code, err) = run_fail(&["capture", "--rotate-size", "lots"]);
    assert_eq!(code, 3);
    assert!(err.contains("--rotate-size"), "{err}");
    let (code, _) = run_fail(&["capture", "--no-such-flag"]);
    assert_eq!(code, 2, "usage errors are 2");
}

#[test]
fn two_captures_cannot_share_a_prefix() {
    require_root();
    let dir = tempdir();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.arg("udp port 9");
    let (p, _addr) = start_capture(&mut cmd);
    let (code, err) = run_fail(&[
        "capture",
        "-i",
        "lo",
        "-w",
        dir.path().to_str().unwrap(),
        "--listen",
        "off",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("another sidecap capture"), "{err}");
    let (code, _) = stop(p);
    assert_eq!(code, 0);
}

#[test]
fn help_and_version() {
    let out = Command::new(bin())
        .args(["capture", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "SIDECAP_INTERFACE",
        "[default: any]",
        "--max-total-size",
        "Exit codes",
        "/readyz",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sidecap "));
}

#[test]
fn any_interface_writes_linux_sll2_like_tcpdump() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "any");
    cmd.arg(filter(port));
    let (p, _addr) = start_capture(&mut cmd);
    send_udp(port, 5, 10);
    std::thread::sleep(Duration::from_millis(100));
    let (code, _p) = stop(p);
    assert_eq!(code, 0);
    assert_eq!(
        marker(dir.path())["linktype"],
        276,
        "LINUX_SLL2, not libpcap's default SLL v1"
    );
    let f = &files_with(dir.path(), ".pcap")[0];
    let ifindex = tshark_fields(f, Some("udp"), "sll.ifindex");
    // libpcap drops the outgoing copy of loopback packets on `any`: each datagram once.
    assert_eq!(ifindex.len(), 5, "{ifindex:?}");
    assert!(
        ifindex.iter().all(|i| i == "1"),
        "lo's ifindex recorded: {ifindex:?}"
    );
}

/// Regression (issue 10, class 8): `capture` and `uploader` wrote ANSI colour codes into a pipe,
/// so `kubectl logs` was full of escape sequences. Colour only on a terminal, never with
/// NO_COLOR set; on a terminal without NO_COLOR colour stays (so this test can tell).
#[test]
fn logs_carry_no_colour_codes_off_a_terminal_or_with_no_color() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let missing = format!("{d}/missing");
    let runs: [Vec<&str>; 2] = [
        vec!["capture", "-i", "nosuch0", "-w", &d, "--listen", "off"],
        vec!["uploader", "-w", &missing, "--listen", "off"],
    ];
    for args in &runs {
        let out = Command::new(bin())
            .args(args)
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        let err = &out.stderr;
        assert!(
            err.windows(5).any(|w| w == b"ERROR"),
            "{args:?} logs its error"
        );
        assert!(
            !err.contains(&0x1b),
            "{args:?}: escape codes in a pipe: {}",
            String::from_utf8_lossy(err)
        );
    }
    // On a pseudo-terminal (script(1) gives the child one).
    let on_pty = |no_color: Option<&str>, args: &[&str]| {
        let line = std::iter::once(bin().display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"]).env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        c.output().unwrap().stdout
    };
    for args in &runs {
        let plain = on_pty(Some("1"), args);
        assert!(
            plain.windows(5).any(|w| w == b"ERROR"),
            "{}",
            String::from_utf8_lossy(&plain)
        );
        assert!(
            !plain.contains(&0x1b),
            "NO_COLOR=1 on a terminal: {}",
            String::from_utf8_lossy(&plain)
        );
        assert!(
            on_pty(None, args).contains(&0x1b),
            "a terminal without NO_COLOR keeps colour"
        );
    }
}

// ---- Issue 10: hostile inputs and stop signals at every stage of start-up. ----

/// Regression: SIGTERM while waiting for the interface exited 3 with no marker, so an uploader
/// waited for a capture that would never come. It is a clean stop that says nothing was captured.
#[test]
fn sigterm_while_waiting_for_the_interface_is_a_clean_stop_with_a_marker() {
    require_root();
    let dir = tempdir();
    let mut cmd = capture_cmd(dir.path(), "nosuch9");
    cmd.args(["--wait-for-interface", "60s"]);
    let p = Proc::spawn(&mut cmd);
    p.wait_log("Waiting for the interface", Duration::from_secs(10));
    let t0 = Instant::now();
    let (code, p) = stop(p);
    assert_eq!(code, 0, "log:\n{}", p.log_text());
    assert!(t0.elapsed() < Duration::from_secs(3));
    let m = marker(dir.path());
    assert!(
        m["reason"]
            .as_str()
            .unwrap()
            .contains("SIGTERM before the capture started; nothing captured"),
        "{m}"
    );
    assert_eq!(m["exit_code"], 0);
    assert_eq!(m["clean"], true);
    assert_eq!(m["files"].as_array().unwrap().len(), 0);
    assert!(files_with(dir.path(), ".pcap").is_empty());
}

/// A filter of `n` bytes or a little less: many `port` terms, what makes libpcap's optimizer slow.
fn port_filter(n: usize) -> String {
    let mut s = String::from("port 1");
    let mut i = 2;
    loop {
        let next = format!(" or port {i}");
        if s.len() + next.len() > n {
            return s;
        }
        s.push_str(&next);
        i += 1;
    }
}

/// Regression: a 100 KB filter kept libpcap's optimizer busy for 15 minutes (23 GB) and SIGTERM
/// was ignored meanwhile. Filters over 4 KiB are refused; a long one still being compiled does
/// not hold up a stop.
#[test]
fn long_filters_are_refused_and_a_stop_works_while_compiling() {
    require_root();
    let dir = tempdir();
    let d = dir.path().to_str().unwrap();
    let t0 = Instant::now();
    let (code, err) = run_fail(&[
        "capture",
        "-i",
        "lo",
        "-w",
        d,
        "--listen",
        "off",
        &port_filter(100_000),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("longer than the 4096 accepted"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.arg(port_filter(4096));
    let p = Proc::spawn(&mut cmd);
    p.wait_log(
        "Compiling the filter is taking a while",
        Duration::from_secs(10),
    );
    let t0 = Instant::now();
    let (code, p) = stop(p);
    assert_eq!(code, 0, "log:\n{}", p.log_text());
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stopped after {:?}",
        t0.elapsed()
    );
    assert!(marker(dir.path())["reason"]
        .as_str()
        .unwrap()
        .contains("nothing captured"));
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Regression: the admin server had no header-read timeout and no connection cap; idle
/// connections held descriptors until a rotation failed with EMFILE and the capture exited 1
/// without a marker (its last line claiming one). Under a 128-descriptor limit, 200 idle
/// connections and a rotation every second must leave the capture running and its probes
/// answered; a connection that never finishes its headers is closed; wrong methods get 405.
#[test]
fn admin_server_bounds_idle_connections_and_slow_headers() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=128:128", "--"])
        .arg(bin())
        .args(["--log-format", "json", "capture", "-i", "lo", "-w"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "-G", "1", &filter(port)]);
    let (p, addr) = start_capture(&mut cmd);
    let base = fd_count(p.pid());
    let idle: Vec<_> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The fewest over a few looks: the capture also opens descriptors for a moment (libpcap's
    // statistics read two sysfs files, the snapshot watcher lists the directory).
    let held = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(30));
            fd_count(p.pid())
        })
        .min()
        .unwrap_or(usize::MAX);
    assert!(
        held <= base + 64 + 2,
        "fds {base} -> {held} with {} idle connections",
        idle.len()
    );
    assert_eq!(
        http_get(&addr, "/livez").map(|r| r.0),
        Some(200),
        "probes answered at the cap"
    );
    // Rotations go on (each needs a descriptor).
    send_udp(port, 10, 50);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        files_with(dir.path(), ".pcap").len() >= 2,
        "log:\n{}",
        p.log_text()
    );
    drop(idle);
    // A client that never finishes its request headers is closed.
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).unwrap_or(0);
    let closed_after = t0.elapsed();
    assert!(
        closed_after < Duration::from_secs(9),
        "slow client held for {closed_after:?} (read {n} bytes)"
    );
    // Wrong method: 405 with Allow.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("allow: get, head"),
        "{out}"
    );
    let (code, p) = stop(p);
    assert_eq!(code, 0, "log:\n{}", p.log_text());
    let m = marker(dir.path());
    assert_eq!(m["exit_code"], 0);
    assert_eq!(m["clean"], true);
}

/// Regression: `--duration 18446744073709551615s` (or `-G` as many seconds) panicked in the
/// capture thread; any duration or size that overflows is a configuration error, exit 3.
#[test]
fn overflowing_durations_and_sizes_are_config_errors() {
    for flag in [
        ["--duration", "18446744073709551615s"],
        ["--rotate-interval", "18446744073709551615"],
        ["--wait-for-interface", "600000000000s"],
        ["--max-total-size", "18446744073709551615"],
    ] {
        // -w to a temp dir: were the value accepted, a capture would start there.
        let dir = tempdir();
        let d = dir.path().to_str().unwrap();
        let (code, err) = run_fail(&["capture", "-w", d, "--listen", "off", flag[0], flag[1]]);
        assert_eq!(code, 3, "{flag:?}: {err}");
        assert!(
            err.contains(flag[0]) && err.contains("out of range"),
            "{flag:?}: {err}"
        );
    }
}

/// Regression: `-w /proc` said the directory "does not exist".
#[test]
fn a_directory_that_takes_no_files_says_so() {
    require_root();
    let (code, err) = run_fail(&["capture", "-i", "lo", "-w", "/proc", "--listen", "off"]);
    assert_eq!(code, 4, "{err}");
    assert!(!err.contains("does not exist"), "{err}");
    assert!(
        err.contains("exists but files cannot be created in it"),
        "{err}"
    );
    let (code, err) = run_fail(&[
        "capture",
        "-i",
        "lo",
        "-w",
        "/etc/hostname",
        "--listen",
        "off",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is not a directory"), "{err}");
}

/// Regression: a second SIGTERM after the marker was written exited 130 while the marker said 0.
/// The second signal is sent at moments spread over the stop; whenever a marker exists, the
/// exit code is the one it states, and without one it is 130.
#[test]
fn a_second_sigterm_never_contradicts_the_marker() {
    require_root();
    let mut agreed = (0, 0);
    for trial in 0..12u64 {
        let dir = tempdir();
        let port = unique_port();
        let mut cmd = capture_cmd(dir.path(), "lo");
        cmd.arg(filter(port));
        let (mut p, _addr) = start_capture(&mut cmd);
        p.signal(Signal::SIGTERM);
        // The graceful stop drains for ~250 ms, then finalizes: aim around that.
        std::thread::sleep(Duration::from_millis(200 + trial * 10));
        p.signal(Signal::SIGTERM);
        let code = p.wait_timeout(Duration::from_secs(10)).code();
        match std::fs::read_to_string(dir.path().join("capture.done")) {
            Ok(text) => {
                let m: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    code,
                    Some(m["exit_code"].as_u64().unwrap() as i32),
                    "trial {trial}"
                );
                agreed.0 += 1;
            }
            Err(_) => {
                assert_eq!(code, Some(130), "trial {trial}: no marker");
                agreed.1 += 1;
            }
        }
    }
    eprintln!(
        "second SIGTERM: {} runs with a marker, {} forced before it",
        agreed.0, agreed.1
    );
}

/// Regression: when the done marker could not be written the capture still said it was (and
/// exited as if all was well). A directory where the marker goes makes its rename fail: the run
/// must exit 1 and say the marker is missing, never that it was written, also when a second
/// SIGTERM arrives meanwhile.
#[test]
fn a_marker_that_cannot_be_written_is_never_claimed() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.arg(filter(port));
    let (p, _addr) = start_capture(&mut cmd);
    let blocker = dir.path().join("capture.done");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("keep"), b"x").unwrap();
    send_udp(port, 20, 60);
    std::thread::sleep(Duration::from_millis(100));
    p.signal(Signal::SIGTERM);
    // A second SIGTERM while the marker is being written: the exit code stays the run's own
    // (1 here, as no marker could be written), not the forced 130.
    p.wait_log("retrying once", Duration::from_secs(10));
    p.signal(Signal::SIGTERM);
    let mut p = p;
    let code = p.wait_timeout(Duration::from_secs(10)).code().unwrap_or(-1);
    let log = p.log_text();
    assert_eq!(code, 1, "log:\n{log}");
    assert!(log.contains("could not be written"), "{log}");
    assert!(
        !log.contains("marker written") && !log.contains(".done written"),
        "{log}"
    );
    // The files themselves are finalized.
    let f = files_with(dir.path(), ".pcap");
    assert_eq!(f.len(), 1);
    assert_eq!(capinfos_count(&f[0]), 20);
}

/// Issue 17: the writer's buffered 1 MiB writes copy every byte into the page cache, and that
/// copy costs 2-8x more whenever the page cache grows into memory the VM has handed back to the
/// host. With O_DIRECT (`--direct-io always`; `auto` too while the disk keeps up) the aligned
/// middle of every buffer goes to the device straight from the capture's buffer: the finished
/// file is complete, yet only a few of its blocks sit in the page cache (fincore). In both
/// formats: pcapng's statistics block at the end of the file once put the capture's idea of the
/// file offset off by its length, and every pcapng write silently went through the page cache.
#[test]
fn direct_io_writes_bypass_the_page_cache() {
    require_root();
    for format in ["pcap", "pcapng"] {
        let dir = tempdir();
        let port = unique_port();
        let mut cmd = capture_cmd(dir.path(), "lo");
        cmd.args(["--format", format, "--direct-io", "always", &filter(port)]);
        let (p, _addr) = start_capture(&mut cmd);
        // ~6 MB of records: six full write buffers and a partial one.
        send_udp(port, 4000, 1400);
        std::thread::sleep(Duration::from_millis(300));
        let (code, p) = stop(p);
        assert_eq!(code, 0, "log:\n{}", p.log_text());
        let files = files_with(dir.path(), &format!(".{format}"));
        assert_eq!(files.len(), 1);
        // Before anything reads the file (a reader brings it into the page cache).
        let size = std::fs::metadata(&files[0]).unwrap().len();
        let out = Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(&files[0])
            .output()
            .unwrap();
        assert!(out.status.success(), "fincore: {out:?}");
        let resident: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(
            resident <= 64 << 10,
            "{format}: {resident} of {size} bytes of the file are in the page cache"
        );
        assert_eq!(udp_seqs(&files[0], port), (0..4000).collect::<Vec<_>>());
    }
}
