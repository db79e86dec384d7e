//! Snapshots (issue 12): the real capture on loopback, the real uploader binary, a real HTTP
//! receiver. Each trigger end to end: `sidecap snapshot` (what `kubectl exec` runs) and the
//! annotation read through a Downward API volume laid out and swapped the way the kubelet's
//! AtomicWriter does it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::helpers::*;
use crate::receiver::{sha256_hex, Action, Receiver};
use crate::upload::{names_of, run, upload_cmd};

fn snapshot_cmd(dir: &Path, url: &str) -> Command {
    let mut c = Command::new(bin());
    c.args(["--log-format", "json", "snapshot", "--dir"])
        .arg(dir)
        .args(["--url", url])
        .env("POD_NAME", "web-7d9f")
        .env("POD_NAMESPACE", "shop")
        .env("POD_UID", "0b7e-uid")
        .env("NODE_NAME", "node-3");
    c
}

fn capture(dir: &Path, port: u16, extra: &[&str]) -> (Proc, String) {
    let mut c = capture_cmd(dir, "lo");
    c.args(extra).arg(format!("udp port {port}"));
    start_capture(&mut c)
}

/// The manifests the receiver accepted, parsed.
fn manifests(rx: &Receiver) -> Vec<Value> {
    rx.accepted()
        .iter()
        .filter(|r| r.header("content-type") == Some("application/json"))
        .map(|r| serde_json::from_slice(&r.body).expect("manifest is JSON"))
        .collect()
}

fn pcap_requests(rx: &Receiver) -> Vec<crate::receiver::Request> {
    rx.accepted()
        .into_iter()
        .filter(|r| r.header("content-type") != Some("application/json"))
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn exec_snapshot_finishes_the_live_file_uploads_the_ring_and_a_manifest_without_losing_a_packet() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let (mut cap, addr) = capture(dir.path(), port, &[]);
    send_udp(port, 50, 64);
    wait_for("50 packets", Duration::from_secs(10), || {
        metric(&addr, "sidecap_packets_captured_total") >= 50
    });
    let rx = Receiver::start(vec![]);
    let mut cmd = snapshot_cmd(dir.path(), &rx.url("/in"));
    cmd.args(["--reason", "incident 42"]);
    let (code, took, log) = run(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    let summary = log
        .lines()
        .find(|l| l.starts_with("snapshot "))
        .expect("summary line");
    assert!(
        summary.contains("1 uploaded") && summary.contains("50 packet(s)"),
        "{summary}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // The live file was finished (renamed) and sent, byte for byte.
    let sent = pcap_requests(&rx);
    assert_eq!(sent.len(), 1, "{:?}", names_of(&sent));
    let name = sent[0].header("x-sidecap-file").unwrap().to_string();
    let on_disk = std::fs::read(dir.path().join(&name)).expect("finished file on disk");
    assert_eq!(sent[0].sha256, sha256_hex(&on_disk));
    let m = &manifests(&rx)[0];
    assert_eq!(m["trigger"], "exec");
    assert_eq!(m["reason"], "incident 42");
    assert_eq!(m["pod"]["name"], "web-7d9f");
    assert_eq!(m["pod"]["namespace"], "shop");
    assert_eq!(m["pod"]["uid"], "0b7e-uid");
    assert_eq!(m["pod"]["node"], "node-3");
    assert_eq!(m["packets"], 50);
    assert_eq!(m["capture"]["finished"], name.as_str());
    assert!(
        m["capture"]["packets_captured"].as_u64() >= Some(50),
        "{m:#}"
    );
    assert!(m["capture"]["kernel"]["received"].is_u64(), "{m:#}");
    assert_eq!(m["files"][0]["sha256"], sent[0].sha256.as_str());
    assert_eq!(m["files"][0]["status"], "uploaded");
    assert!(m["first_packet_at"].is_string() && m["last_packet_at"].is_string());

    // The capture goes on: the next packets land in the next file, and none is lost.
    send_udp(port, 30, 64);
    wait_for("80 packets", Duration::from_secs(10), || {
        metric(&addr, "sidecap_packets_captured_total") >= 80
    });
    cap.signal(Signal::SIGTERM);
    assert_eq!(cap.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    let total: u64 = files_with(dir.path(), ".pcap")
        .iter()
        .map(|p| scan(p).packets)
        .sum();
    assert_eq!(total, 80);
    // Nothing of the protocol is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.contains(".pin.") || n.contains("snapshot-request") || n.contains("snapshot-ack")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_file_continuous_already_sent_is_listed_in_the_manifest_but_not_sent_again() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let (mut cap, addr) = capture(dir.path(), port, &[]);
    send_udp(port, 10, 64);
    wait_for("10 packets", Duration::from_secs(10), || {
        metric(&addr, "sidecap_packets_captured_total") >= 10
    });
    cap.signal(Signal::SIGHUP);
    wait_for("a finished file", Duration::from_secs(10), || {
        !files_with(dir.path(), ".pcap").is_empty()
    });
    let rx = Receiver::start(vec![]);
    let first = files_with(dir.path(), ".pcap");
    // --continuous is what runs beside a live capture.
    let mut up = Command::new(bin());
    up.args([
        "--log-format",
        "json",
        "uploader",
        "--continuous",
        "--poll-interval",
        "200ms",
    ])
    .args(["--listen", "off", "--dir"])
    .arg(dir.path())
    .args(["--url", &rx.url("/in")]);
    let cont = Proc::spawn(&mut up);
    wait_for("continuous upload", Duration::from_secs(10), || {
        pcap_requests(&rx).len() == 1
    });
    drop(cont);
    send_udp(port, 5, 64);
    wait_for("15 packets", Duration::from_secs(10), || {
        metric(&addr, "sidecap_packets_captured_total") >= 15
    });
    let (code, _, log) = run(
        &mut snapshot_cmd(dir.path(), &rx.url("/in")),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{log}");
    let names = names_of(&pcap_requests(&rx));
    assert_eq!(names.len(), 2, "each file once: {names:?}");
    assert_ne!(names[0], names[1]);
    let m = &manifests(&rx)[0];
    let first_name = first[0].file_name().unwrap().to_str().unwrap();
    let listed: Vec<(&str, &str)> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["status"].as_str().unwrap()))
        .collect();
    assert!(
        listed.contains(&(first_name, "already_uploaded")),
        "{listed:?}"
    );
    assert_eq!(m["packets"], 15, "{m:#}");
    cap.signal(Signal::SIGTERM);
    cap.wait_timeout(Duration::from_secs(10));
}

#[test]
fn a_capture_that_never_answers_gets_exit_8_after_its_finished_files_are_sent() {
    require_root();
    // An older capture: it holds the lock but knows nothing of snapshot requests.
    let (dir, names) = crate::upload::finished_capture(2);
    std::fs::remove_file(dir.path().join("capture.done")).unwrap();
    let lock = dir.path().join("capture.lock");
    std::fs::write(&lock, b"1\n").unwrap();
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock");
    std::thread::sleep(Duration::from_millis(200));
    let rx = Receiver::start(vec![]);
    let mut cmd = snapshot_cmd(dir.path(), &rx.url("/in"));
    cmd.args(["--ack-timeout", "1s"]);
    let (code, took, log) = run(&mut cmd, Duration::from_secs(30));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(code, 8, "{log}");
    assert!(log.contains("did not answer"), "{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let mut sent = names_of(&pcap_requests(&rx));
    sent.sort();
    assert_eq!(sent, names);
    let m = &manifests(&rx)[0];
    assert!(m["capture"].is_null());
    assert!(m["capture_note"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
    assert!(
        !dir.path().join("capture.snapshot-request").exists()
            && std::fs::read_dir(dir.path()).unwrap().all(|e| {
                let n = e.unwrap().file_name().into_string().unwrap();
                !n.contains("snapshot-request") && !n.contains(".pin.")
            }),
        "request and pin removed"
    );
}

#[test]
fn the_ring_keeps_pinned_files_until_a_slow_receiver_has_them() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    // 4 MiB ring of 512 KiB files.
    let (mut cap, addr) = capture(
        dir.path(),
        port,
        &["--max-total-size", "4MiB", "-C", "512KiB"],
    );
    send_udp(port, 6000, 1000);
    wait_for("the ring full", Duration::from_secs(20), || {
        metric(&addr, "sidecap_files_deleted_total") >= 1
    });
    // Everything sent is written (so no rotation of the first burst is still to come).
    let mut last = 0;
    wait_for("the writer idle", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = metric(&addr, "sidecap_packets_written_total");
        std::mem::replace(&mut last, now) == now
    });
    let before: Vec<String> = files_with(dir.path(), ".pcap")
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert!(before.len() >= 5, "{before:?}");
    // Every request takes 600 ms: the snapshot runs for several seconds, while the capture
    // writes much more than the ring holds.
    let rx = Receiver::start(vec![Action::Delay(600, 200); 64]);
    let mut snap = Proc::spawn(&mut snapshot_cmd(dir.path(), &rx.url("/in")));
    wait_for("the first upload", Duration::from_secs(10), || {
        !rx.requests().is_empty()
    });
    let deleted_before = metric(&addr, "sidecap_files_deleted_total");
    for _ in 0..4 {
        send_udp(port, 3000, 1000);
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = snap.wait_timeout(Duration::from_secs(60));
    assert_eq!(st.code(), Some(0), "{}", snap.log_text());
    // The ring went on deleting (newer, unpinned files) while the old ones waited for the
    // receiver: every file the snapshot pinned arrived, none is "deleted".
    assert!(metric(&addr, "sidecap_files_deleted_total") > deleted_before);
    let m = &manifests(&rx)[0];
    let listed: Vec<(&str, &str)> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["status"].as_str().unwrap()))
        .collect();
    assert!(listed.len() >= 5, "{listed:?}");
    assert!(listed.iter().all(|(_, s)| *s == "uploaded"), "{listed:?}");
    // What was on disk when the test looked is there (unless the writer, on a loaded machine,
    // was still busy and the ring took it before the snapshot began: then it is not listed).
    let sent = names_of(&pcap_requests(&rx));
    let oldest_listed = listed[0].0;
    for n in before.iter().filter(|n| n.as_str() >= oldest_listed) {
        assert!(sent.contains(n), "{n} was not sent; sent {sent:?}");
    }
    // With the pin gone the bound holds again.
    send_udp(port, 6000, 1000);
    std::thread::sleep(Duration::from_millis(1500));
    let total: u64 = files_with(dir.path(), ".pcap")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total <= 4 << 20, "{total} bytes of finished files");
    cap.signal(Signal::SIGTERM);
    cap.wait_timeout(Duration::from_secs(10));
}

/// A Downward API volume as the kubelet's AtomicWriter lays it out: the payload in a
/// timestamped directory, `..data` linking to it, `annotations` linking into `..data`.
struct DownwardApi {
    dir: tempfile::TempDir,
    n: u32,
}

impl DownwardApi {
    fn new(annotations: &str) -> DownwardApi {
        let mut d = DownwardApi {
            dir: tempdir(),
            n: 0,
        };
        d.update(annotations);
        std::os::unix::fs::symlink("..data/annotations", d.dir.path().join("annotations")).unwrap();
        d
    }

    /// New timestamped directory, a `..data_tmp` link to it renamed over `..data` (atomic),
    /// the old directory removed: AtomicWriter's steps.
    fn update(&mut self, annotations: &str) {
        self.n += 1;
        let ts = format!("..2026_12_01_10_00_{:02}.{}", self.n, 100 + self.n);
        let new = self.dir.path().join(&ts);
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("annotations"), annotations).unwrap();
        let data = self.dir.path().join("..data");
        let old = std::fs::read_link(&data).ok();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.path().join(old)).unwrap();
        }
    }

    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("annotations")
    }
}

fn uploader_with_annotations(dir: &Path, url: &str, annotations: &Path) -> Proc {
    let mut c = Command::new(bin());
    c.args([
        "--log-format",
        "json",
        "uploader",
        "--poll-interval",
        "200ms",
        "--listen",
        "off",
        "--dir",
    ])
    .arg(dir)
    .args(["--url", url, "--annotations-file"])
    .arg(annotations);
    let p = Proc::spawn(&mut c);
    p.wait_log("Watching the Pod's annotations", Duration::from_secs(10));
    p
}

#[test]
fn the_annotation_takes_one_snapshot_per_new_value_through_the_kubelets_symlink_swap() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let (mut cap, addr) = capture(dir.path(), port, &[]);
    let seen = "kubernetes.io/config.seen=\"2026-12-01T10:00:00Z\"";
    let mut api = DownwardApi::new(seen);
    let rx = Receiver::start(vec![]);
    let up = uploader_with_annotations(dir.path(), &rx.url("/in"), &api.file());
    send_udp(port, 20, 64);
    wait_for("20 packets", Duration::from_secs(10), || {
        metric(&addr, "sidecap_packets_captured_total") >= 20
    });
    std::thread::sleep(Duration::from_millis(600));
    assert!(rx.requests().is_empty(), "no annotation, no snapshot");

    api.update(&format!(
        "{seen}\nsidecap.io/snapshot=\"checkout \\\"slow\\\" at 03:12\""
    ));
    wait_for("the first snapshot", Duration::from_secs(15), || {
        manifests(&rx).len() == 1
    });
    let m = &manifests(&rx)[0];
    assert_eq!(m["trigger"], "annotation");
    assert_eq!(m["reason"], "checkout \"slow\" at 03:12");
    assert_eq!(m["packets"], 20);
    assert_eq!(pcap_requests(&rx).len(), 1);

    // A restarted uploader sees the same value: nothing again.
    drop(up);
    let up = uploader_with_annotations(dir.path(), &rx.url("/in"), &api.file());
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(manifests(&rx).len(), 1, "{}", up.log_text());

    // A new value (and a window): a second snapshot with the new packets only.
    send_udp(port, 7, 64);
    wait_for("27 packets", Duration::from_secs(10), || {
        metric(&addr, "sidecap_packets_captured_total") >= 27
    });
    api.update(&format!(
        "{seen}\nsidecap.io/snapshot=\"second\"\nsidecap.io/snapshot-last=\"1h\""
    ));
    wait_for("the second snapshot", Duration::from_secs(15), || {
        manifests(&rx).len() == 2
    });
    let m2 = manifests(&rx)
        .into_iter()
        .find(|m| m["reason"] == "second")
        .unwrap();
    assert_eq!(m2["window"]["last_seconds"], 3600);
    assert_eq!(
        m2["packets"], 27,
        "the first file is listed again, not sent again: {m2:#}"
    );
    let names = names_of(&pcap_requests(&rx));
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(unique.len(), 2, "{names:?}");
    drop(up);
    cap.signal(Signal::SIGTERM);
    cap.wait_timeout(Duration::from_secs(10));
}

#[test]
fn a_prestop_during_a_snapshot_ends_within_its_grace_period_and_no_file_goes_twice() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let (mut cap, addr) = capture(dir.path(), port, &["-C", "256KiB"]);
    send_udp(port, 3000, 1000);
    wait_for("files", Duration::from_secs(20), || {
        metric(&addr, "sidecap_files_finished_total") >= 8
    });
    // Slow receiver: the snapshot is still sending when the preStop hook starts, and the
    // ~12 files at 0.3 s each fit the hook's 10 s budget even on a loaded machine.
    let rx = Receiver::start(vec![Action::Delay(300, 200); 64]);
    let mut snap = Proc::spawn(&mut snapshot_cmd(dir.path(), &rx.url("/in")));
    wait_for("the first upload", Duration::from_secs(10), || {
        !rx.requests().is_empty()
    });
    // Termination: the preStop hook starts, the capture gets SIGTERM a moment later.
    let t0 = Instant::now();
    let mut hook = Proc::spawn(&mut upload_cmd(dir.path(), &rx.url("/in"), "12s", "2s"));
    std::thread::sleep(Duration::from_millis(300));
    cap.signal(Signal::SIGTERM);
    assert_eq!(cap.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    let st = hook.wait_timeout(Duration::from_secs(20));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(12), "preStop took {took:?}");
    let code = st.code();
    let snap_st = snap.wait_timeout(Duration::from_secs(30));
    let names = names_of(&pcap_requests(&rx));
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(names.len(), unique.len(), "a file went twice: {names:?}");
    // Between them every file arrived.
    let on_disk = files_with(dir.path(), ".pcap").len();
    assert_eq!(code, Some(0), "{}", hook.log_text());
    assert_eq!(unique.len(), on_disk, "{names:?}");
    assert!(
        snap.log_text().contains("preStop upload started") || snap_st.code() == Some(0),
        "{}",
        snap.log_text()
    );
}
