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
    let base = tempdir();
    let mnt = base.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=3m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ],
    );
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _umount = Umount(mnt.clone());
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
    assert!(err.contains("invalid filter \"port notaport\""), "{err}");
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
