//! Least privilege, verified rather than configured (issue 6): the capture drops every
//! capability in every thread once the handle is open, and a non-root user with nothing but the
//! file capability cap_net_raw+ep on the binary can capture.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::helpers::*;

fn caps_of_all_threads(pid: i32) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        out.push((field("Name:"), field("CapEff:"), field("CapPrm:")));
    }
    out
}

#[test]
fn capabilities_are_dropped_in_every_thread_after_open() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = capture_cmd(dir.path(), "lo");
    cmd.args(["-C", "5kB", &format!("udp port {port}")]);
    let (p, addr) = start_capture(&mut cmd);
    let threads = caps_of_all_threads(p.pid());
    assert!(
        threads.len() >= 4,
        "main, signals, admin, capture, writer: {threads:?}"
    );
    for (name, eff, prm) in &threads {
        assert_eq!(
            eff, "0000000000000000",
            "thread {name} keeps effective capabilities"
        );
        assert_eq!(
            prm, "0000000000000000",
            "thread {name} keeps permitted capabilities"
        );
    }
    // Still works without them: rotation creates and renames files, /metrics answers.
    send_udp(port, 200, 100);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(metric(&addr, "sidecap_packets_written_total"), 200);
    p.signal(Signal::SIGTERM);
    let mut p = p;
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    assert!(files_with(dir.path(), ".pcap").len() > 2);
}

/// A copy of the binary in a directory everyone can traverse, optionally with a file capability
/// such as `cap_net_raw+ep` or `cap_net_raw+p`.
fn binary_copy(dir: &Path, file_cap: Option<&str>) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = dir.join("sidecap");
    // Copied by a child process, not by std::fs::copy: a write descriptor open in this process
    // leaks into children that other test threads fork at that moment, and exec of the copy
    // then fails with ETXTBSY ("Text file busy").
    sh("cp", &[bin().to_str().unwrap(), b.to_str().unwrap()]);
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Some(cap) = file_cap {
        sh("setcap", &[cap, b.to_str().unwrap()]);
    }
    b
}

#[test]
fn non_root_with_only_the_file_capability_captures() {
    for file_cap in ["cap_net_raw+ep", "cap_net_raw+p"] {
        captures_as_nobody_with(file_cap);
    }
}

/// `+ep` is what `setcap` users know; `+p` (permitted only) is what the image uses, and the
/// agent raises it to effective itself before opening the handle.
fn captures_as_nobody_with(file_cap: &str) {
    require_root();
    let bindir = tempdir();
    let b = binary_copy(bindir.path(), Some(file_cap));
    let out = tempdir();
    nix::unistd::chown(out.path(), Some(65534.into()), Some(65534.into())).unwrap();
    let port = unique_port();
    let mut cmd = as_nobody(&b, &[]);
    cmd.args(["--log-format", "json", "capture", "-i", "lo", "-w"])
        .arg(out.path())
        .args(["--listen", "127.0.0.1:0", &format!("udp port {port}")]);
    let (mut p, _addr) = start_capture(&mut cmd);
    // setpriv execs the binary, so the pid is the agent itself.
    for (name, eff, _) in caps_of_all_threads(p.pid()) {
        assert_eq!(eff, "0000000000000000", "thread {name} with {file_cap}");
    }
    send_udp(port, 30, 20);
    std::thread::sleep(Duration::from_millis(100));
    p.signal(Signal::SIGTERM);
    assert_eq!(
        p.wait_timeout(Duration::from_secs(10)).code(),
        Some(0),
        "{}",
        p.log_text()
    );
    let f = &files_with(out.path(), ".pcap")[0];
    assert_eq!(capinfos_count(f), 30);
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(f).unwrap();
    assert_eq!(m.uid(), 65534, "files belong to the agent's user");
    assert_eq!(
        m.mode() & 0o777,
        0o640,
        "captured packets are not world-readable"
    );
}

#[test]
fn non_root_without_the_capability_is_told_what_to_grant() {
    require_root();
    let bindir = tempdir();
    let b = binary_copy(bindir.path(), None);
    let out = tempdir();
    nix::unistd::chown(out.path(), Some(65534.into()), Some(65534.into())).unwrap();
    let o = as_nobody(&b, &[])
        .args(["capture", "-i", "lo", "-w"])
        .arg(out.path())
        .args(["--listen", "off"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("setcap cap_net_raw+ep") && err.contains("NET_RAW"),
        "{err}"
    );
    assert!(
        files_with(out.path(), ".pcap").is_empty() && files_with(out.path(), ".part").is_empty()
    );
}

/// Why the image sets `cap_net_raw+p` and not `+ep`: the kernel refuses to exec a binary whose
/// file capabilities carry the effective bit when the bounding set lacks one of them, and the
/// uploader container runs the same binary with `capabilities.drop: [ALL]` and no NET_RAW.
#[test]
fn permitted_only_file_capability_runs_without_net_raw_in_the_bounding_set() {
    require_root();
    let bindir = tempdir();
    for (file_cap, runs) in [("cap_net_raw+p", true), ("cap_net_raw+ep", false)] {
        let b = binary_copy(bindir.path(), Some(file_cap));
        let o = as_nobody(&b, &["--bounding-set=-all"])
            .arg("--version")
            .output()
            .unwrap();
        assert_eq!(
            o.status.success(),
            runs,
            "{file_cap}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

// Planted links and special files on the shared volume (issue 10): never followed.

/// A file outside the capture directory that a planted link points at.
fn outside(dir: &Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn planted_links_on_the_volume_are_never_followed_by_the_uploader() {
    use crate::receiver::Receiver;
    use crate::upload::{file_status, finished_capture, names_of, report, run, upload_cmd};
    let (dir, names) = finished_capture(1);
    let out = tempdir();
    // A 0600 secret that even looks like a capture (a pcap header), so only the link check
    // can keep it back.
    let mut secret = sidecap::pcapfile::file_header(1, 65535, false).to_vec();
    secret.extend_from_slice(b"TOP-SECRET-KEY-MATERIAL");
    let secret_path = outside(out.path(), "secret", &secret, 0o600);
    let victim = outside(out.path(), "victim", b"precious\n", 0o644);
    let mut torn = sidecap::pcapfile::file_header(1, 65535, false).to_vec();
    sidecap::pcapfile::push_record(&mut torn, 1, 0, 60, 60, &[7; 60]);
    torn.extend_from_slice(&[1, 2, 3]);
    let torn_path = outside(out.path(), "torn", &torn, 0o644);
    let link = |name: &str, target: &Path| {
        std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap();
    };
    let planted_pcap = "capture-20261122T154197Z-000097.pcap";
    let planted_part = "capture-20261122T154198Z-000098.pcap.part";
    link(planted_pcap, &secret_path);
    link(planted_part, &torn_path);
    link("capture.upload-ledger.jsonl", &victim);
    link("capture.lock", &out.path().join("created-by-the-lock"));
    let rx = Receiver::start(vec![]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "5s", "1s"),
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(names_of(&rx.requests()), vec![names[0].clone()], "{log}");
    assert!(
        rx.requests()
            .iter()
            .all(|r| !r.body.windows(10).any(|w| w == b"TOP-SECRET")),
        "the secret reached the receiver"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious\n",
        "ledger link followed"
    );
    assert_eq!(
        std::fs::read(&torn_path).unwrap(),
        torn,
        "dead .part link followed"
    );
    assert!(!out.path().join("created-by-the-lock").exists());
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, planted_pcap), "skipped");
    assert_eq!(file_status(&rep, planted_part), "skipped");
    assert_eq!(file_status(&rep, &names[0]), "uploaded");
    assert!(log.contains("symbolic link"), "{log}");
    // The links are still links, pointing where they pointed.
    assert!(
        std::fs::symlink_metadata(dir.path().join("capture.upload-ledger.jsonl"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn capture_refuses_a_planted_lock_and_leaves_its_target_alone() {
    require_root();
    let out = tempdir();
    let victim = outside(out.path(), "victim", b"keep me\n", 0o644);
    let start = |dir: &Path| {
        let mut p = Proc::spawn(&mut capture_cmd(dir, "lo"));
        let code = p.wait_timeout(Duration::from_secs(10)).code();
        (code, p.log_text())
    };
    // A link to a file: it would be truncated and get our pid.
    let dir = tempdir();
    std::os::unix::fs::symlink(&victim, dir.path().join("capture.lock")).unwrap();
    let (code, log) = start(dir.path());
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("symbolic link"), "{log}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me\n");
    // A dangling link: nothing is created at its target.
    let dir = tempdir();
    let nowhere = out.path().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, dir.path().join("capture.lock")).unwrap();
    let (code, log) = start(dir.path());
    assert_ne!(code, Some(0), "{log}");
    assert!(!nowhere.exists(), "{log}");
    // A FIFO: a clear message, not "Invalid argument".
    let dir = tempdir();
    nix::unistd::mkfifo(
        &dir.path().join("capture.lock"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let (code, log) = start(dir.path());
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("a FIFO"), "{log}");
    assert!(!log.contains("Invalid argument"), "{log}");
}
