//! Uploader integration tests (issue 3, and the uploader faults of issue 6): the real binary
//! against a real HTTP receiver on 127.0.0.1:0 with fault injection (tests/it/receiver.rs), a
//! real nginx for PUT and TLS (tests/it/nginx.rs), and the real capture on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::helpers::*;
use crate::nginx::{make_pki, Nginx};
use crate::receiver::{sha256_hex, Action, Receiver};

/// `sidecap upload` with JSON logs, not mirrored to the host's PID 1.
/// `sidecap uploader --continuous` polling `dir` every `poll`, admin server on `listen`
/// (`off` or `127.0.0.1:0`); more flags can be appended before spawning.
fn continuous_cmd(dir: &Path, url: &str, poll: &str, listen: &str) -> Command {
    let mut c = Command::new(bin());
    c.args(["--log-format", "json", "uploader", "--continuous", "--dir"])
        .arg(dir)
        .args(["--url", url, "--poll-interval", poll, "--listen", listen])
        .args(["--grace-period", "20s"]);
    c
}

pub(crate) fn upload_cmd(dir: &Path, url: &str, grace: &str, margin: &str) -> Command {
    let mut c = Command::new(bin());
    c.args(["--log-format", "json", "upload", "--dir"])
        .arg(dir)
        .args([
            "--url",
            url,
            "--grace-period",
            grace,
            "--safety-margin",
            margin,
        ])
        .args(["--log-to-pid1", "never"]);
    c
}

/// Runs to completion; returns (exit code, elapsed, log).
pub(crate) fn run(cmd: &mut Command, timeout: Duration) -> (i32, Duration, String) {
    let t0 = Instant::now();
    let mut p = Proc::spawn(cmd);
    let st = p.wait_timeout(timeout);
    (st.code().unwrap_or(-1), t0.elapsed(), p.log_text())
}

pub(crate) fn report(dir: &Path) -> Value {
    let t = std::fs::read_to_string(dir.join("capture.upload-report.json")).expect("report");
    serde_json::from_str(&t).expect("report is JSON")
}

pub(crate) fn file_status(rep: &Value, name: &str) -> String {
    rep["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in report: {rep:#}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A valid pcap file of `n` Ethernet records of `len` bytes.
pub(crate) fn write_pcap(path: &Path, n: u32, len: u32) {
    let mut v = sidecap::pcapfile::file_header(1, 262_144, false).to_vec();
    for i in 0..n {
        let data: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
        sidecap::pcapfile::push_record(&mut v, 1_790_000_000 + i, i, len, len, &data);
    }
    std::fs::write(path, v).unwrap();
}

/// A directory as a capture that stopped cleanly leaves it: `n` finished files and a marker.
pub(crate) fn finished_capture(n: u32) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempdir();
    let mut names = Vec::new();
    for i in 1..=n {
        let name = format!("capture-20261122T1541{i:02}Z-{i:06}.pcap");
        write_pcap(&dir.path().join(&name), 20 + i, 100 + i);
        names.push(name);
    }
    let marker = sidecap::files::DoneMarker {
        reason: "signal SIGTERM".into(),
        clean: true,
        files: names.clone(),
        ..Default::default()
    };
    sidecap::files::write_atomic(
        &dir.path().join("capture.done"),
        &serde_json::to_vec(&marker).unwrap(),
    )
    .unwrap();
    (dir, names)
}

pub(crate) fn names_of(reqs: &[crate::receiver::Request]) -> Vec<String> {
    reqs.iter()
        .map(|r| r.header("x-sidecap-file").unwrap_or("?").to_string())
        .collect()
}

fn assert_matches_disk(dir: &Path, req: &crate::receiver::Request) {
    let name = req.header("x-sidecap-file").unwrap();
    let data = std::fs::read(dir.join(name)).unwrap();
    assert_eq!(req.len, data.len() as u64, "{name}: length");
    // A Content-Length, not chunked: presigned-URL receivers (S3) require it.
    assert_eq!(
        req.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(req.header("transfer-encoding"), None);
    assert_eq!(
        req.sha256,
        sha256_hex(&data),
        "{name}: body differs from disk"
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    assert_eq!(
        req.header("content-digest"),
        Some(format!("sha-256=:{b64}:").as_str())
    );
}

#[test]
fn paired_run_on_loopback_uploads_the_final_file_byte_identical() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let (mut cap, _) = start_capture(
        capture_cmd(dir.path(), "lo").args(["--filter", &format!("udp port {port}")]),
    );
    send_udp(port, 100, 120);
    let rx = Receiver::start(vec![]);
    // t0: every preStop hook starts; the capture is still running.
    let t0 = Instant::now();
    let mut up = Proc::spawn(&mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"));
    std::thread::sleep(Duration::from_millis(800));
    send_udp(port, 100, 120);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        rx.requests().is_empty(),
        "nothing may be sent before the capture is final"
    );
    // The app has exited: the capture gets SIGTERM and finalizes.
    cap.signal(Signal::SIGTERM);
    assert_eq!(cap.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    let st = up.wait_timeout(Duration::from_secs(25));
    let took = t0.elapsed();
    let log = up.log_text();
    assert_eq!(st.code(), Some(0), "log:\n{log}");
    assert!(
        took < Duration::from_secs(18),
        "finished after the deadline: {took:?}"
    );
    assert!(log.contains("Waiting for the capture to finalize"), "{log}");
    assert!(log.contains("Upload summary"), "{log}");

    let files = files_with(dir.path(), ".pcap");
    assert_eq!(files.len(), 1);
    let got = rx.accepted();
    assert_eq!(
        got.len(),
        1,
        "exactly one upload: {:?}",
        names_of(&rx.requests())
    );
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_matches_disk(dir.path(), req);
    assert_eq!(
        req.header("content-type"),
        Some("application/vnd.tcpdump.pcap")
    );
    assert!(req.header("idempotency-key").is_some_and(|k| k.len() == 32));
    // What arrived is a complete capture of every packet sent.
    let recv = dir.path().join("received.cap");
    std::fs::write(&recv, &req.body).unwrap();
    assert_eq!(capinfos_count(&recv), 200);
    assert_eq!(
        udp_seqs(&recv, port),
        (0..100).chain(0..100).collect::<Vec<_>>()
    );
    let rep = report(dir.path());
    assert_eq!(rep["totals"]["uploaded"], 1);
    assert_eq!(rep["deadline_reached"], false);
    assert!(
        rep["capture"].as_str().unwrap().starts_with("final"),
        "{rep:#}"
    );
}

#[test]
fn retries_503_twice_then_succeeds() {
    let (dir, names) = finished_capture(1);
    let rx = Receiver::start(vec![
        Action::Status(503),
        Action::Status(503),
        Action::Status(200),
    ]);
    let (code, took, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"),
        Duration::from_secs(25),
    );
    assert_eq!(code, 0, "{log}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3);
    // Backoff: the attempts are spread out, not hammered.
    assert!(reqs[1].at - reqs[0].at >= Duration::from_millis(100));
    assert!(reqs[2].at - reqs[1].at >= Duration::from_millis(200));
    assert!(took < Duration::from_secs(10));
    let keys: Vec<_> = reqs
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert!(
        keys.iter().all(|k| k == &keys[0]),
        "Idempotency-Key is stable across retries"
    );
    assert_matches_disk(dir.path(), &rx.accepted()[0]);
    assert_eq!(file_status(&report(dir.path()), &names[0]), "uploaded");
    assert_eq!(report(dir.path())["files"][0]["attempts"], 3);
}

#[test]
fn honours_retry_after_on_429() {
    let (dir, _) = finished_capture(1);
    let rx = Receiver::start(vec![Action::RetryAfter(429, "2"), Action::Status(201)]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"),
        Duration::from_secs(25),
    );
    assert_eq!(code, 0, "{log}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1900) && gap < Duration::from_secs(4),
        "{gap:?}"
    );
}

#[test]
fn rejection_400_is_not_retried_and_exits_6() {
    let (dir, names) = finished_capture(2);
    let rx = Receiver::start(vec![Action::Status(400), Action::Status(200)]);
    let (code, took, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"),
        Duration::from_secs(25),
    );
    assert_eq!(code, 6, "{log}");
    assert!(took < Duration::from_secs(5));
    // Newest first: file 2 was rejected, file 1 still went out, nobody retried.
    assert_eq!(
        names_of(&rx.requests()),
        vec![names[1].clone(), names[0].clone()]
    );
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, &names[1]), "rejected");
    assert_eq!(file_status(&rep, &names[0]), "uploaded");
    assert_eq!(rep["files"][0]["http_status"], 400);
    assert_eq!(rep["not_uploaded"], serde_json::json!([names[1]]));
}

#[test]
fn hanging_receiver_exits_5_before_the_deadline() {
    let (dir, names) = finished_capture(1);
    let rx = Receiver::start(vec![Action::Hang, Action::Hang, Action::Hang]);
    let (code, took, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "4s", "1s"),
        Duration::from_secs(10),
    );
    assert_eq!(code, 5, "{log}");
    assert!(took < Duration::from_secs(4), "t0 + grace passed: {took:?}");
    assert!(
        took >= Duration::from_millis(2500),
        "gave up early: {took:?}"
    );
    assert!(log.contains("deadline reached"), "{log}");
    let rep = report(dir.path());
    assert_eq!(rep["deadline_reached"], true);
    assert_eq!(rep["not_uploaded"], serde_json::json!([names[0]]));
    // The wait for a response is bounded (1 s with this budget), so the hang costs one attempt,
    // not the budget: about three attempts fit in 3 s (two at least on a loaded machine).
    let attempts = rep["files"][0]["attempts"].as_u64().unwrap();
    assert!((2..=3).contains(&attempts), "{attempts} attempts: {rep:#}");
    assert_eq!(rx.requests().len() as u64, attempts);
}

#[test]
fn receiver_stalled_mid_body_costs_one_attempt_not_the_budget() {
    let (dir, names) = finished_capture(1);
    // 32 MiB: more than the loopback socket buffers hold, so the stall reaches the sender.
    write_pcap(&dir.path().join(&names[0]), 500, 65_000);
    let rx = Receiver::start(vec![Action::StallMidBody(1 << 20)]);
    let (code, took, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"),
        Duration::from_secs(25),
    );
    assert_eq!(code, 0, "{log}");
    assert!(took < Duration::from_secs(18), "{took:?}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "one stalled attempt, one retry");
    // The stall was noticed after a few seconds without progress, not at the deadline.
    assert!(reqs[1].at - reqs[0].at < Duration::from_secs(9), "{log}");
    assert_matches_disk(dir.path(), &rx.accepted()[0]);
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, &names[0]), "uploaded");
    assert_eq!(rep["files"][0]["attempts"], 2);
    assert!(log.contains("stopped reading"), "{log}");
}

#[test]
fn connection_reset_or_closed_mid_upload_repeatedly_is_retried() {
    let (dir, names) = finished_capture(1);
    // A body big enough to be mid-flight when the receiver drops the connection.
    let big = dir.path().join(&names[0]);
    write_pcap(&big, 2000, 1400);
    let rx = Receiver::start(vec![
        Action::Reset,
        Action::Close,
        Action::Reset,
        Action::Reset,
    ]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "25s", "2s"),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(rx.requests().len(), 5);
    let ok = rx.accepted();
    assert_eq!(ok.len(), 1);
    assert_matches_disk(dir.path(), &ok[0]);
    assert!(log.contains("retrying"), "{log}");
}

#[test]
fn dns_failure_is_a_clear_error_within_the_deadline() {
    let (dir, names) = finished_capture(1);
    let (code, took, log) = run(
        &mut upload_cmd(
            dir.path(),
            "http://sidecap-upload-test.invalid/in",
            "4s",
            "1s",
        ),
        Duration::from_secs(10),
    );
    assert_eq!(code, 5, "{log}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let rep = report(dir.path());
    let err = rep["files"][0]["error"].as_str().unwrap();
    assert!(err.contains("cannot resolve"), "{err}");
    assert_eq!(rep["not_uploaded"], serde_json::json!([names[0]]));
}

#[test]
fn deadline_report_lists_exactly_the_files_not_uploaded() {
    let (dir, names) = finished_capture(3);
    // The first file goes through; the second hangs the receiver (each attempt, as the wait
    // for a response is bounded); the third never gets a turn.
    let rx = Receiver::start(vec![
        Action::Status(200),
        Action::Hang,
        Action::Hang,
        Action::Hang,
        Action::Hang,
    ]);
    let mut cmd = upload_cmd(dir.path(), &rx.url("/in"), "4s", "1s");
    cmd.args(["--order", "oldest-first"]);
    let (code, took, log) = run(&mut cmd, Duration::from_secs(10));
    assert_eq!(code, 5, "{log}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, &names[0]), "uploaded");
    assert_eq!(file_status(&rep, &names[1]), "failed");
    // The hanging file gets a bounded share while another waits, so the third may get a turn
    // (and hang too) before the deadline.
    let third = file_status(&rep, &names[2]);
    assert!(third == "not_attempted" || third == "failed", "{rep:#}");
    assert_eq!(rep["not_uploaded"], serde_json::json!([names[1], names[2]]));
    assert_eq!(rep["totals"]["left"], 2);
    assert_eq!(rep["deadline_reached"], true);
    let summary = log
        .lines()
        .find(|l| l.contains("Upload summary"))
        .expect("summary");
    let s: Value = serde_json::from_str(summary).unwrap();
    assert_eq!(
        (s["uploaded"].as_u64(), s["left"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(s["deadline_reached"], true);
}

#[test]
fn uploading_twice_sends_each_file_once() {
    let (dir, names) = finished_capture(3);
    let rx = Receiver::start(vec![]);
    for round in 0..2 {
        let (code, _, log) = run(
            &mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"),
            Duration::from_secs(25),
        );
        assert_eq!(code, 0, "round {round}: {log}");
    }
    // Default order newest-first; the second run sent nothing.
    let mut want = names.clone();
    want.reverse();
    assert_eq!(names_of(&rx.requests()), want);
    let rep = report(dir.path());
    assert_eq!(rep["totals"]["already_uploaded"], 3);
    assert_eq!(rep["totals"]["uploaded"], 0);
    let ledger = std::fs::read_to_string(dir.path().join("capture.upload-ledger.jsonl")).unwrap();
    assert_eq!(ledger.lines().count(), 3);
}

#[test]
fn continuous_and_the_prestop_hook_never_double_send() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let rx = Receiver::start(vec![]);
    let (mut cap, _) = start_capture(capture_cmd(dir.path(), "lo").args([
        "-G",
        "1",
        "--filter",
        &format!("udp port {port}"),
    ]));
    let mut uploader = Proc::spawn(&mut continuous_cmd(
        dir.path(),
        &rx.url("/in"),
        "100ms",
        "off",
    ));
    // Traffic for ~3 s, so several files rotate and the continuous loop uploads them.
    for _ in 0..30 {
        send_udp(port, 10, 100);
        std::thread::sleep(Duration::from_millis(100));
    }
    // t0: the preStop hook starts, racing the continuous loop.
    let t0 = Instant::now();
    assert!(
        rx.accepted().iter().any(|r| r.at < t0),
        "--continuous uploaded rotated files before t0: {}",
        uploader.log_text()
    );
    let mut exec = Proc::spawn(&mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"));
    std::thread::sleep(Duration::from_millis(700));
    send_udp(port, 10, 100);
    cap.signal(Signal::SIGTERM);
    assert_eq!(cap.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    let st = exec.wait_timeout(Duration::from_secs(25));
    assert_eq!(st.code(), Some(0), "{}", exec.log_text());
    uploader.signal(Signal::SIGTERM);
    assert_eq!(
        uploader.wait_timeout(Duration::from_secs(5)).code(),
        Some(0)
    );

    let on_disk: Vec<String> = files_with(dir.path(), ".pcap")
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(on_disk.len() >= 3, "rotation produced {on_disk:?}");
    let mut sent = names_of(&rx.requests());
    sent.sort();
    assert_eq!(sent, on_disk, "each file sent exactly once");
    for r in rx.accepted() {
        assert_matches_disk(dir.path(), &r);
    }
    let total: u64 = files_with(dir.path(), ".pcap")
        .iter()
        .map(|f| capinfos_count(f))
        .sum();
    assert_eq!(total, 310);
}

#[test]
fn gigabyte_file_uploads_with_bounded_memory() {
    let (dir, names) = finished_capture(1);
    let path = dir.path().join(&names[0]);
    {
        // 1 GiB of valid records, written fast: one 4 MiB block of records repeated.
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        f.write_all(&sidecap::pcapfile::file_header(1, 262_144, false))
            .unwrap();
        let mut block = Vec::with_capacity(4 << 20);
        let rec = vec![0xabu8; 65_520];
        while block.len() + 16 + rec.len() <= 4 << 20 {
            sidecap::pcapfile::push_record(&mut block, 1_790_000_000, 0, 65_520, 65_520, &rec);
        }
        for _ in 0..256 {
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 1000 << 20);
    let rx = Receiver::start(vec![]);
    let mut p = Proc::spawn(&mut upload_cmd(dir.path(), &rx.url("/in"), "120s", "2s"));
    let mut peak_kib = 0u64;
    let t0 = Instant::now();
    let st = loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", p.pid())) {
            if let Some(v) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(v);
            }
        }
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "upload took too long"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(0), "{}", p.log_text());
    assert!(
        peak_kib > 0 && peak_kib < 50 * 1024,
        "peak RSS {peak_kib} KiB"
    );
    let got = rx.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len, size);
    let rep = report(dir.path());
    assert_eq!(
        rep["files"][0]["sha256"].as_str(),
        Some(got[0].sha256.as_str())
    );
    println!("1 GiB upload: peak RSS {peak_kib} KiB, {:?}", t0.elapsed());
    drop(std::fs::remove_file(&path));
}

#[test]
fn secrets_never_appear_in_logs_or_report() {
    let (dir, _) = finished_capture(2);
    let secrets = tempdir();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "TOKENSECRET789\n").unwrap();
    let rx = Receiver::start(vec![
        Action::Status(503),
        Action::Reset,
        Action::Status(401),
    ]);
    let url = rx.url("/in/{file}?sig=QUERYSECRET123&X-Amz-Credential=CREDSECRET42");
    let mut cmd = upload_cmd(dir.path(), &url, "10s", "1s");
    cmd.arg("--bearer-token-file").arg(&token_file).args([
        "--header",
        "X-Api-Key: HEADERSECRET456",
        "--log-level",
        "debug",
    ]);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(15));
    assert_eq!(code, 6, "{log}");
    let rep = std::fs::read_to_string(dir.path().join("capture.upload-report.json")).unwrap();
    for s in [
        "TOKENSECRET789",
        "QUERYSECRET123",
        "CREDSECRET42",
        "HEADERSECRET456",
    ] {
        assert!(!log.contains(s), "{s} in the log:\n{log}");
        assert!(!rep.contains(s), "{s} in the report:\n{rep}");
    }
    assert!(rep.contains("?[REDACTED]"), "{rep}");
    // ... and they were used.
    let r = &rx.requests()[0];
    assert_eq!(r.header("authorization"), Some("Bearer TOKENSECRET789"));
    assert_eq!(r.header("x-api-key"), Some("HEADERSECRET456"));
    assert!(r.path.contains("sig=QUERYSECRET123"));
    assert!(
        r.path.starts_with("/in/capture-"),
        "{{file}} replaced: {}",
        r.path
    );
}

#[test]
fn uploader_as_pid1_exits_0_on_sigterm_within_1s() {
    require_root();
    let dir = tempdir();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(bin())
        .args(["--log-format", "json", "uploader", "--dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"]);
    let mut p = Proc::spawn(&mut cmd);
    p.wait_log("Uploader ready", Duration::from_secs(10));
    assert!(p.log_text().contains("Running as PID 1"));
    let child: i32 = sh("pgrep", &["-P", &p.pid().to_string()])
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGTERM).unwrap();
    let st = p.wait_timeout(Duration::from_secs(5));
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "{}", p.log_text());
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn repairs_and_uploads_a_part_left_by_a_sigkilled_capture() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let (mut cap, _) = start_capture(capture_cmd(dir.path(), "lo").args([
        "--flush-interval",
        "100ms",
        "--filter",
        &format!("udp port {port}"),
    ]));
    send_udp(port, 50, 100);
    std::thread::sleep(Duration::from_millis(800));
    cap.signal(Signal::SIGKILL);
    cap.wait_timeout(Duration::from_secs(5));
    let parts = files_with(dir.path(), ".pcap.part");
    assert_eq!(parts.len(), 1);
    // A torn last record, as a kill mid-write leaves it.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&parts[0])
            .unwrap();
        f.write_all(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]).unwrap();
    }
    let rx = Receiver::start(vec![]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "10s", "1s"),
        Duration::from_secs(15),
    );
    assert_eq!(code, 0, "{log}");
    let done: PathBuf = PathBuf::from(parts[0].to_string_lossy().trim_end_matches(".part"));
    assert!(done.exists() && !parts[0].exists(), "renamed to .pcap");
    let got = rx.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("x-sidecap-file"),
        done.file_name().unwrap().to_str()
    );
    assert_matches_disk(dir.path(), &got[0]);
    let recv = dir.path().join("received.cap");
    std::fs::write(&recv, &got[0].body).unwrap();
    assert_eq!(capinfos_count(&recv), 50);
    assert_eq!(udp_seqs(&recv, port), (0..50).collect::<Vec<_>>());
    let rep = report(dir.path());
    assert!(
        rep["files"][0]["repaired"]
            .as_str()
            .unwrap()
            .contains("removed 10 bytes"),
        "{rep:#}"
    );
    assert!(rep["capture"].as_str().unwrap().starts_with("dead"));
}

#[test]
fn put_to_nginx_webdav_with_file_placeholder() {
    let (dir, names) = finished_capture(2);
    let ngx = Nginx::start(&[]);
    let url = format!("http://127.0.0.1:{}/dav/{{file}}", ngx.port);
    let mut cmd = upload_cmd(dir.path(), &url, "20s", "2s");
    cmd.args(["--method", "PUT"]);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(25));
    assert_eq!(code, 0, "{log}\n{}", ngx.error_log());
    for n in &names {
        assert_eq!(
            std::fs::read(ngx.root.join("dav").join(n)).unwrap(),
            std::fs::read(dir.path().join(n)).unwrap()
        );
    }
    let rep = report(dir.path());
    assert_eq!(rep["files"][0]["http_status"], 201);
}

#[test]
fn tls_verified_with_ca_file_and_untrusted_certificates_rejected() {
    let pki = make_pki();
    let ngx = Nginx::start(&[pki.server.clone(), pki.self_signed.clone()]);
    let (ca_port, self_port) = (ngx.tls_ports[0], ngx.tls_ports[1]);
    let (dir, names) = finished_capture(1);
    let put = |port: u16, ca: bool| {
        let url = format!("https://127.0.0.1:{port}/dav/{{file}}");
        let mut cmd = upload_cmd(dir.path(), &url, "10s", "1s");
        cmd.args(["--method", "PUT"]);
        if ca {
            cmd.arg("--ca-file").arg(&pki.ca);
        }
        run(&mut cmd, Duration::from_secs(15))
    };
    // Not trusted without the CA: rejected at once (not retried until the deadline).
    let (code, took, log) = put(ca_port, false);
    assert_eq!(code, 6, "{log}");
    assert!(took < Duration::from_secs(3));
    let err = report(dir.path())["files"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    // A self-signed certificate is not trusted through our CA either.
    let (code, _, log) = put(self_port, true);
    assert_eq!(code, 6, "{log}");
    assert!(!ngx.root.join("dav").join(&names[0]).exists());
    // With the CA it verifies.
    let (code, _, log) = put(ca_port, true);
    assert_eq!(code, 0, "{log}\n{}", ngx.error_log());
    assert_eq!(
        std::fs::read(ngx.root.join("dav").join(&names[0])).unwrap(),
        std::fs::read(dir.path().join(&names[0])).unwrap()
    );
}

#[test]
fn gzip_and_multipart_bodies() {
    let (dir, names) = finished_capture(1);
    let rx = Receiver::start(vec![]);
    let mut cmd = upload_cmd(dir.path(), &rx.url("/gz"), "20s", "2s");
    cmd.arg("--gzip");
    let (code, _, log) = run(&mut cmd, Duration::from_secs(25));
    assert_eq!(code, 0, "{log}");
    let r = &rx.accepted()[0];
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut plain).unwrap();
    let disk = std::fs::read(dir.path().join(&names[0])).unwrap();
    assert_eq!(plain, disk);
    assert_eq!(
        r.header("x-sidecap-sha256"),
        Some(sha256_hex(&disk).as_str())
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(&r.body));
    assert_eq!(
        r.header("content-digest"),
        Some(format!("sha-256=:{b64}:").as_str())
    );

    let (dir, names) = finished_capture(1);
    let rx = Receiver::start(vec![]);
    let mut cmd = upload_cmd(dir.path(), &rx.url("/form"), "20s", "2s");
    cmd.args(["--form", "capture"]);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(25));
    assert_eq!(code, 0, "{log}");
    let r = &rx.accepted()[0];
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data"));
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains(&format!("name=\"capture\"; filename=\"{}\"", names[0])),
        "{body}"
    );
    let disk = std::fs::read(dir.path().join(&names[0])).unwrap();
    assert!(r.body.windows(disk.len()).any(|w| w == &disk[..]));
}

#[test]
fn exec_hook_logs_reach_the_containers_pid1_stdout() {
    require_root();
    let (dir, _) = finished_capture(1);
    let rx = Receiver::start(vec![]);
    // PID 1 of a new PID namespace stands in for the container's main process.
    let mut pid1 = Proc::spawn(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(bin())
            .args([
                "--log-format",
                "json",
                "uploader",
                "--listen",
                "off",
                "--dir",
            ])
            .arg(dir.path()),
    );
    pid1.wait_log("Uploader ready", Duration::from_secs(10));
    let child = sh("pgrep", &["-P", &pid1.pid().to_string()])
        .trim()
        .to_string();
    // The hook: exec'd into the container's namespaces, its own output discarded.
    let out = Command::new("nsenter")
        .args(["-t", &child, "-p", "-m", "--"])
        .arg(bin())
        .args(["--log-format", "json", "upload", "--dir"])
        .arg(dir.path())
        .args(["--url", &rx.url("/in"), "--grace-period", "10s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pid1.wait_log("Upload summary", Duration::from_secs(5));
    assert!(
        pid1.log_text().contains("\"status\":\"uploaded\""),
        "{}",
        pid1.log_text()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.parse().unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(pid1.wait_timeout(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn prestop_moves_past_a_file_another_uploader_holds_and_comes_back() {
    let (dir, names) = finished_capture(2);
    let rx = Receiver::start(vec![]);
    // Another uploader (say --continuous in another container) is sending the newest file.
    let held = std::fs::File::open(dir.path().join(&names[1])).unwrap();
    let lock = nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let mut p = Proc::spawn(&mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"));
    std::thread::sleep(Duration::from_millis(1500));
    // The older file did not wait behind the held one.
    assert_eq!(names_of(&rx.requests()), vec![names[0].clone()]);
    let released = Instant::now();
    drop(lock);
    assert_eq!(
        p.wait_timeout(Duration::from_secs(20)).code(),
        Some(0),
        "{}",
        p.log_text()
    );
    let reqs = rx.requests();
    assert_eq!(names_of(&reqs), vec![names[0].clone(), names[1].clone()]);
    assert!(reqs[1].at >= released);
}

#[test]
fn continuous_uploads_new_files_with_a_rotated_token() {
    let dir = tempdir();
    let secrets = tempdir();
    let token = secrets.path().join("token");
    std::fs::write(&token, "FIRSTTOKEN111").unwrap();
    let first = "capture-20261122T154101Z-000001.pcap";
    write_pcap(&dir.path().join(first), 5, 80);
    let rx = Receiver::start(vec![]);
    let mut up = Proc::spawn(
        continuous_cmd(dir.path(), &rx.url("/in"), "100ms", "off")
            .arg("--bearer-token-file")
            .arg(&token),
    );
    let wait_for = |n: usize| {
        let t0 = Instant::now();
        while rx.accepted().len() < n {
            assert!(t0.elapsed() < Duration::from_secs(10), "{}", up.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(1);
    // The Secret is updated (projected tokens rotate hourly) and the capture finishes a file.
    std::fs::write(&token, "SECONDTOKEN222").unwrap();
    let second = "capture-20261122T154102Z-000002.pcap";
    write_pcap(&dir.path().join(second), 5, 80);
    wait_for(2);
    up.signal(Signal::SIGTERM);
    assert_eq!(up.wait_timeout(Duration::from_secs(5)).code(), Some(0));
    let got = rx.accepted();
    assert_eq!(names_of(&got), vec![first.to_string(), second.to_string()]);
    assert_eq!(got[0].header("authorization"), Some("Bearer FIRSTTOKEN111"));
    assert_eq!(
        got[1].header("authorization"),
        Some("Bearer SECONDTOKEN222")
    );
    let log = up.log_text();
    assert!(!log.contains("FIRSTTOKEN111") && !log.contains("SECONDTOKEN222"));
    assert_eq!(rx.requests().len(), 2, "nothing sent twice");
}

#[test]
fn capture_that_never_finalizes_gets_its_complete_files_out_and_says_so() {
    let (dir, names) = finished_capture(2);
    std::fs::remove_file(dir.path().join("capture.done")).unwrap();
    // A capture that runs past the deadline: it holds the lock and writes a .part.
    let layout = sidecap::files::Layout::new(dir.path(), "capture");
    let _lock = sidecap::files::CaptureLock::acquire(&layout).unwrap();
    let live = "capture-20261122T154103Z-000003.pcap.part";
    write_pcap(&dir.path().join(live), 3, 60);
    let rx = Receiver::start(vec![]);
    let (code, took, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "5s", "1s"),
        Duration::from_secs(10),
    );
    assert_eq!(code, 5, "{log}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // It did not sit idle until the end: the complete files went out at once ...
    let reqs = rx.accepted();
    assert_eq!(names_of(&reqs), vec![names[1].clone(), names[0].clone()]);
    // ... and it stopped waiting early enough to have uploaded a last file.
    assert!(took < Duration::from_millis(3500), "{took:?}");
    assert!(log.contains("has not finalized"), "{log}");
    let rep = report(dir.path());
    assert!(
        rep["reason"]
            .as_str()
            .unwrap()
            .contains("capture still running"),
        "{rep:#}"
    );
    assert_eq!(rep["not_uploaded"], serde_json::json!([live]));
    assert!(
        dir.path().join(live).exists(),
        "a live capture's file is never touched"
    );
}

#[test]
fn uploader_as_another_user_reads_through_the_group_and_uploads_a_dead_part_it_cannot_repair() {
    require_root();
    // The capture ran as root and died: its files are root-owned, mode 0640, in a directory the
    // uploader's group may write (an emptyDir with fsGroup). The uploader runs as nobody with
    // only that group.
    let dir = tempdir();
    let part = dir.path().join("capture-20261122T154101Z-000001.pcap.part");
    write_pcap(&part, 30, 90);
    let full = std::fs::read(&part).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .unwrap();
        f.write_all(&[9; 7]).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    let gid = nix::unistd::Gid::from_raw(65534);
    nix::unistd::chown(dir.path(), None, Some(gid)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o2770)).unwrap();
    nix::unistd::chown(&part, None, Some(gid)).unwrap();
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o640)).unwrap();
    let rx = Receiver::start(vec![Action::Status(503); 20]);
    let as_nobody = |grace: &str| {
        let mut cmd = as_nobody(&bin(), &["--inh-caps=-all"]);
        cmd.args(["--log-format", "json", "upload", "--dir"])
            .arg(dir.path())
            .args([
                "--url",
                &rx.url("/in"),
                "--grace-period",
                grace,
                "--safety-margin",
                "1s",
                "--log-to-pid1",
                "never",
            ]);
        cmd
    };
    // The first run only meets 503s: nothing is uploaded.
    let (code, _, log) = run(&mut as_nobody("3s"), Duration::from_secs(10));
    assert_eq!(code, 5, "{log}");
    let first = rx.requests();
    assert!(!first.is_empty() && rx.accepted().is_empty());
    assert!(
        first.iter().all(|r| r.len == full.len() as u64),
        "only the valid records were sent"
    );
    let done = dir.path().join("capture-20261122T154101Z-000001.pcap");
    assert!(
        part.exists() && !done.exists(),
        "not renamed: a .pcap name would lose the valid length"
    );
    // A later run (the hook re-run, or the next one) still sends only the valid prefix.
    rx.status_for_path("/in", 200);
    let (code, _, log) = run(&mut as_nobody("10s"), Duration::from_secs(15));
    assert_eq!(code, 0, "{log}");
    let got = rx.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("x-sidecap-file"),
        done.file_name().unwrap().to_str()
    );
    assert_eq!(
        got[0].len,
        full.len() as u64,
        "only the valid records were sent"
    );
    assert_eq!(got[0].sha256, sha256_hex(&full));
    assert_eq!(
        got[0].header("x-sidecap-sha256"),
        first[0].header("x-sidecap-sha256")
    );
    assert_eq!(
        std::fs::metadata(&part).unwrap().len(),
        full.len() as u64 + 7,
        "not truncated"
    );
    let rep = report(dir.path());
    assert!(
        rep["files"][0]["repaired"]
            .as_str()
            .unwrap()
            .contains("not writable"),
        "{rep:#}"
    );
    // Recorded under the .pcap name: a third run sends nothing.
    let (code, _, log) = run(&mut as_nobody("10s"), Duration::from_secs(15));
    assert_eq!(code, 0, "{log}");
    assert_eq!(rx.accepted().len(), 1);
    assert_eq!(report(dir.path())["totals"]["already_uploaded"], 1);
    // The ledger and report the uploader created are its own, group-readable.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(dir.path().join("capture.upload-ledger.jsonl"))
            .unwrap()
            .uid(),
        65534
    );
}

fn proc_status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Soak (issue 6): capture with rotation under steady load while `uploader --continuous` ships
/// every file; the uploader's RSS and open fds stay flat and no file is sent twice. 15 s by
/// default; `SIDECAP_SOAK_SECS=600` for a long run.
#[test]
fn soak_continuous_upload_rss_and_fds_stay_flat() {
    require_root();
    let secs: u64 = std::env::var("SIDECAP_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let dir = tempdir();
    let port = unique_port();
    let rx = Receiver::start(vec![]);
    let (mut cap, _) = start_capture(capture_cmd(dir.path(), "lo").args([
        "-C",
        "512kB",
        "--filter",
        &format!("udp port {port}"),
    ]));
    let mut up = Proc::spawn(&mut continuous_cmd(
        dir.path(),
        &rx.url("/in"),
        "200ms",
        "off",
    ));
    up.wait_log("Continuous upload started", Duration::from_secs(10));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let buf = [0x17u8; 500];
            let t0 = Instant::now();
            // About 2 MB/s: a new file every quarter second.
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && t0.elapsed() < Duration::from_secs(secs + 30)
            {
                for _ in 0..4 {
                    let _ = s.send_to(&buf, ("127.0.0.1", port));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        let fds = std::fs::read_dir(format!("/proc/{}/fd", up.pid()))
            .unwrap()
            .count();
        samples.push((proc_status_kib(up.pid(), "VmRSS:"), fds));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    cap.signal(Signal::SIGTERM);
    assert_eq!(cap.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    // The preStop run ships the last file; everything else went continuously.
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"),
        Duration::from_secs(25),
    );
    assert_eq!(code, 0, "{log}");
    up.signal(Signal::SIGTERM);
    assert_eq!(up.wait_timeout(Duration::from_secs(5)).code(), Some(0));

    let on_disk = files_with(dir.path(), ".pcap");
    let mut sent = names_of(&rx.requests());
    let n_sent = sent.len();
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), n_sent, "a file was sent twice");
    assert_eq!(sent.len(), on_disk.len(), "every file sent");
    assert!(
        on_disk.len() >= (secs as usize) * 2,
        "rotation too slow: {}",
        on_disk.len()
    );
    let warm = samples.len() / 4;
    let (first, second) = samples[warm..].split_at((samples.len() - warm) / 2);
    let max = |s: &[(u64, usize)], f: fn(&(u64, usize)) -> u64| s.iter().map(f).max().unwrap();
    let (rss1, rss2) = (max(first, |s| s.0), max(second, |s| s.0));
    let (fd1, fd2) = (max(first, |s| s.1 as u64), max(second, |s| s.1 as u64));
    eprintln!(
        "upload soak: {secs} s, {} files uploaded continuously, RSS max KiB {rss1} -> {rss2}, fds max {fd1} -> {fd2}",
        on_disk.len()
    );
    assert!(rss2 <= rss1 + 4 * 1024, "uploader RSS grew: {samples:?}");
    // A sample can land while a file is in flight (its fd, its lock, a socket): the in-flight
    // count varies by a few, a leak of one fd per file (dozens of files here) does not hide.
    let min = |s: &[(u64, usize)]| s.iter().map(|s| s.1).min().unwrap();
    assert!(min(second) <= min(first), "uploader fds grew: {samples:?}");
    assert!(fd2 <= fd1 + 3, "uploader fds grew: {samples:?}");
}

#[test]
fn a_file_deleted_by_the_ring_bound_before_its_turn_is_reported_as_deleted() {
    let (dir, names) = finished_capture(2);
    let rx = Receiver::start(vec![]);
    // Held by another uploader, then deleted by the capture's ring bound.
    let path = dir.path().join(&names[1]);
    let lock = nix::fcntl::Flock::lock(
        std::fs::File::open(&path).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    let mut p = Proc::spawn(&mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"));
    std::thread::sleep(Duration::from_millis(700));
    std::fs::remove_file(&path).unwrap();
    drop(lock);
    let st = p.wait_timeout(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", p.log_text());
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, &names[0]), "uploaded");
    assert_eq!(file_status(&rep, &names[1]), "deleted");
    assert_eq!(
        (
            rep["totals"]["deleted"].as_u64(),
            rep["totals"]["left"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(rep["not_uploaded"], serde_json::json!([names[1]]));
}

#[test]
fn a_rejection_in_continuous_mode_is_counted_and_metrics_hold_no_secret() {
    let (dir, names) = finished_capture(1);
    let rx = Receiver::start(vec![Action::Status(403)]);
    let url = rx.url("/in?token=QUERYSECRET999");
    let mut up = Proc::spawn(&mut continuous_cmd(
        dir.path(),
        &url,
        "100ms",
        "127.0.0.1:0",
    ));
    let admin = up.admin_addr();
    let t0 = Instant::now();
    let metrics = loop {
        let (_, m) = http_get(&admin, "/metrics").unwrap();
        if m.contains("sidecap_upload_files_rejected_total 1") {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{m}\n{}",
            up.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(names_of(&rx.requests()), vec![names[0].clone()]);
    assert_eq!(http_get(&admin, "/livez").unwrap().0, 200);
    // The preStop path is gone from the admin server: only the probes and /metrics answer.
    assert_eq!(http_get(&admin, "/prestop").unwrap().0, 404);
    up.signal(Signal::SIGTERM);
    assert_eq!(up.wait_timeout(Duration::from_secs(5)).code(), Some(0));
    for text in [metrics, up.log_text()] {
        assert!(!text.contains("QUERYSECRET999"), "{text}");
    }
}

#[test]
fn a_refused_old_file_cannot_starve_the_final_file() {
    // The capture is still running (it holds the lock) and writing its last file; an older
    // finished file is refused with 503 on every attempt.
    let dir = tempdir();
    let old = "capture-20261122T154101Z-000001.pcap";
    write_pcap(&dir.path().join(old), 20, 100);
    let layout = sidecap::files::Layout::new(dir.path(), "capture");
    let lock = sidecap::files::CaptureLock::acquire(&layout).unwrap();
    let live = dir.path().join("capture-20261122T154102Z-000002.pcap.part");
    write_pcap(&live, 30, 100);
    let rx = Receiver::start(vec![]);
    rx.status_for_path("000001", 503);
    let t0 = Instant::now();
    let mut p = Proc::spawn(&mut upload_cmd(
        dir.path(),
        &rx.url("/in/{file}"),
        "12s",
        "1s",
    ));
    std::thread::sleep(Duration::from_secs(4));
    // The app is gone: the capture finalizes its last file and exits.
    let fin = dir.path().join("capture-20261122T154102Z-000002.pcap");
    std::fs::rename(&live, &fin).unwrap();
    let marker = sidecap::files::DoneMarker {
        reason: "signal SIGTERM".into(),
        clean: true,
        ..Default::default()
    };
    sidecap::files::write_atomic(
        &dir.path().join("capture.done"),
        &serde_json::to_vec(&marker).unwrap(),
    )
    .unwrap();
    drop(lock);
    let finalized = Instant::now();
    let st = p.wait_timeout(Duration::from_secs(15));
    let took = t0.elapsed();
    let log = p.log_text();
    assert_eq!(st.code(), Some(5), "the old file is left: {log}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    let got = rx.accepted();
    assert_eq!(
        names_of(&got),
        vec![fin.file_name().unwrap().to_str().unwrap()]
    );
    // It went out soon after the capture finalized, not in the last moment.
    assert!(
        got[0].at - finalized < Duration::from_secs(5),
        "final file waited {:?} behind the refused one",
        got[0].at - finalized
    );
    assert_matches_disk(dir.path(), &got[0]);
    let rep = report(dir.path());
    assert_eq!(
        file_status(&rep, fin.file_name().unwrap().to_str().unwrap()),
        "uploaded"
    );
    assert_eq!(file_status(&rep, old), "failed");
    assert_eq!(rep["not_uploaded"], serde_json::json!([old]));
    // The refused file was tried again after the final file was out.
    assert!(rx
        .requests()
        .iter()
        .any(|r| r.path.contains("000001") && r.at > got[0].at));
}

#[test]
fn an_unreadable_capture_directory_is_a_failure_not_a_success() {
    require_root();
    let dir = tempdir();
    write_pcap(
        &dir.path().join("capture-20261122T154101Z-000001.pcap"),
        5,
        80,
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let rx = Receiver::start(vec![]);
    let nobody = |args: &[&str]| {
        let mut cmd = as_nobody(&bin(), &[]);
        cmd.arg("--log-format")
            .arg("json")
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .args(["--url", &rx.url("/in"), "--grace-period", "5s"]);
        cmd
    };
    // The exec hook: read_dir fails with EACCES.
    let (code, took, log) = run(
        &mut nobody(&["upload", "--log-to-pid1", "never"]),
        Duration::from_secs(10),
    );
    assert_eq!(code, 1, "{log}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(log.contains("cannot list"), "{log}");
    assert!(rx.requests().is_empty());
}

#[test]
fn a_rerun_hook_counts_its_deadline_from_the_first_hooks_start() {
    let (dir, _) = finished_capture(1);
    let rx = Receiver::start(vec![]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "10s", "1s"),
        Duration::from_secs(15),
    );
    assert_eq!(code, 0, "{log}");
    let start_file = dir.path().join("capture.prestop-start");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&start_file).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // The first hook of this termination started 8 s ago; the kubelet runs the hook again.
    let (dir, names) = finished_capture(1);
    let eight_s_ago = std::time::SystemTime::now() - Duration::from_secs(8);
    let ms = eight_s_ago
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::fs::write(dir.path().join("capture.prestop-start"), format!("{ms}\n")).unwrap();
    let rx = Receiver::start(vec![Action::Hang; 10]);
    let (code, took, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "10s", "1s"),
        Duration::from_secs(15),
    );
    assert_eq!(code, 5, "{log}");
    // 10 s - 1 s - 8 s: about 1 s was left, not 9.
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let rep = report(dir.path());
    assert_eq!(rep["not_uploaded"], serde_json::json!([names[0]]));
    // A start older than the grace period belongs to another termination: ignored.
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    let ms = old
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    std::fs::write(dir.path().join("capture.prestop-start"), format!("{ms}\n")).unwrap();
    let rx = Receiver::start(vec![]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "10s", "1s"),
        Duration::from_secs(15),
    );
    assert_eq!(code, 0, "{log}");
}

#[test]
fn prestop_lets_the_in_flight_continuous_file_finish() {
    let (dir, names) = finished_capture(1);
    // The continuous upload of the file takes 2 s at the receiver.
    let rx = Receiver::start(vec![Action::Delay(2000, 200)]);
    let mut up = Proc::spawn(&mut continuous_cmd(
        dir.path(),
        &rx.url("/in"),
        "100ms",
        "off",
    ));
    // The continuous loop (polling every 100 ms) is sending the file by now.
    std::thread::sleep(Duration::from_millis(700));
    assert!(rx.requests().is_empty(), "still in flight at the receiver");
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"),
        Duration::from_secs(25),
    );
    assert_eq!(code, 0, "{log}\n{}", up.log_text());
    assert_eq!(report(dir.path())["totals"]["already_uploaded"], 1);
    // Sent once, by the continuous loop, not cancelled and sent again.
    assert_eq!(names_of(&rx.requests()), vec![names[0].clone()]);
    up.signal(Signal::SIGTERM);
    assert_eq!(up.wait_timeout(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn watchdog_ends_a_hook_blocked_on_its_log_pipe_at_the_deadline() {
    use std::os::fd::AsRawFd;
    let (dir, _) = finished_capture(1);
    let rx = Receiver::start(vec![]);
    // stderr is a pipe that is already full and never read: the first log line blocks.
    let (r, w) = nix::unistd::pipe().unwrap();
    let fl = nix::fcntl::OFlag::from_bits_truncate(
        nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap(),
    );
    nix::fcntl::fcntl(
        w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(fl | nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    while nix::unistd::write(&w, &[b'x'; 4096]).is_ok() {}
    nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl)).unwrap();
    let t0 = Instant::now();
    let mut child = upload_cmd(dir.path(), &rx.url("/in"), "3s", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(w))
        .spawn()
        .unwrap();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running after 10 s: the watchdog did not fire");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    drop(r);
    assert_eq!(st.code(), Some(5));
    // Deadline 2 s, watchdog at 2 s + min(1 s / 2, 1 s); before t0 + grace (3 s).
    assert!(
        took >= Duration::from_millis(2300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

// Hostile and broken inputs (issue 10): no false success, bounded inputs, honest messages.

/// Milliseconds since the epoch `ago` before now, as `<prefix>.prestop-start` holds them.
fn epoch_ms_ago(ago: Duration) -> String {
    let t = std::time::SystemTime::now() - ago;
    let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!("{ms}\n")
}

#[test]
fn a_stale_prestop_start_does_not_eat_the_budget_or_end_in_false_success() {
    // Left 10.5 s ago, older than the grace period (10 s): the kubelet has killed whatever
    // termination wrote it, so it cannot be this one's.
    let (dir, names) = finished_capture(2);
    std::fs::write(
        dir.path().join("capture.prestop-start"),
        epoch_ms_ago(Duration::from_millis(10_500)),
    )
    .unwrap();
    let rx = Receiver::start(vec![]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "10s", "1s"),
        Duration::from_secs(15),
    );
    assert_eq!(code, 0, "{log}");
    let mut got = names_of(&rx.accepted());
    got.sort();
    assert_eq!(
        got, names,
        "exit 0 must mean every file was accepted: {log}"
    );
    assert!(log.contains("Ignoring a preStop start"), "{log}");
    let rep = report(dir.path());
    assert_eq!(rep["totals"]["uploaded"], 2, "{rep:#}");
    // 9.5 s ago, past the budget (9 s) but inside the grace period, and nothing started
    // since: a re-run hook of this termination, whose deadline has passed. It must say so and
    // exit 5, never 0 with the files still on the volume.
    let (dir, names) = finished_capture(2);
    std::fs::write(
        dir.path().join("capture.prestop-start"),
        epoch_ms_ago(Duration::from_millis(9500)),
    )
    .unwrap();
    let rx = Receiver::start(vec![]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "10s", "1s"),
        Duration::from_secs(15),
    );
    assert_eq!(code, 5, "{log}");
    let rep = report(dir.path());
    let mut left: Vec<String> = rep["not_uploaded"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    left.sort();
    assert_eq!(left, names, "{rep:#}");
    assert!(
        rep["reason"]
            .as_str()
            .is_some_and(|r| r.contains("before this run started")),
        "{rep:#}"
    );
    // Younger than the budget, but the capture started after it (its lock is newer): it was
    // left by an earlier start of the Pod's containers, not by this termination.
    let (dir, _) = finished_capture(1);
    std::fs::write(
        dir.path().join("capture.prestop-start"),
        epoch_ms_ago(Duration::from_secs(5)),
    )
    .unwrap();
    std::fs::write(dir.path().join("capture.lock"), b"4242\n").unwrap();
    let rx = Receiver::start(vec![]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "10s", "1s"),
        Duration::from_secs(15),
    );
    assert_eq!(code, 0, "{log}");
    let rep = report(dir.path());
    let started = humantime::parse_rfc3339(rep["started_at"].as_str().unwrap()).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(3),
        "budget counted from the leftover: {age:?}"
    );
}

#[test]
fn a_fifo_lock_neither_hangs_the_run_nor_ends_in_false_success() {
    let (dir, names) = finished_capture(2);
    nix::unistd::mkfifo(
        &dir.path().join("capture.lock"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let rx = Receiver::start(vec![]);
    let (code, took, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "4s", "1s"),
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{log}");
    assert!(
        took < Duration::from_secs(3),
        "waited for the deadline: {took:?}"
    );
    let mut got = names_of(&rx.accepted());
    got.sort();
    assert_eq!(got, names, "{log}");
    assert!(log.contains("not a regular file"), "{log}");
}

#[test]
fn a_receiver_answering_5_5_s_after_the_body_is_waited_for() {
    // Object stores and webhooks that verify a body answer late; with a 30 s grace period the
    // response wait is min(left / 3, 10 s), about 9 s: one attempt, accepted.
    let (dir, names) = finished_capture(1);
    let rx = Receiver::start(vec![Action::Delay(5500, 200)]);
    let (code, took, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "30s", "2s"),
        Duration::from_secs(40),
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(names_of(&rx.requests()), vec![names[0].clone()], "{log}");
    assert!(took < Duration::from_secs(9), "{took:?}");
    let rep = report(dir.path());
    assert_eq!(rep["files"][0]["attempts"], 1, "{rep:#}");
}

#[test]
fn secret_files_are_bounded_regular_files_read_without_waiting() {
    let (dir, _) = finished_capture(1);
    let rx = Receiver::start(vec![]);
    let fifo = dir.path().join("token-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = dir.path().join("token-big");
    std::fs::write(&big, vec![b'a'; 200 * 1024]).unwrap();
    let bad_ca = dir.path().join("bad-ca.pem");
    std::fs::write(
        &bad_ca,
        "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "--bearer-token-file",
            PathBuf::from("/dev/zero"),
            "a device",
        ),
        ("--bearer-token-file", fifo.clone(), "a FIFO"),
        ("--bearer-token-file", big.clone(), "larger than"),
        ("--ca-file", PathBuf::from("/dev/zero"), "a device"),
        ("--ca-file", fifo.clone(), "a FIFO"),
        ("--ca-file", bad_ca.clone(), "certificate 1 of the file"),
    ];
    for (flag, path, why) in cases {
        let mut up = upload_cmd(dir.path(), &rx.url("/in"), "5s", "1s");
        up.arg(flag).arg(&path);
        // Bounded address space: before the fix /dev/zero was read until the OOM killer came.
        let mut cmd = Command::new("prlimit");
        cmd.arg("--as=2000000000")
            .arg("--")
            .arg(up.get_program())
            .args(up.get_args());
        let (code, took, log) = run(&mut cmd, Duration::from_secs(10));
        assert_eq!(code, 3, "{flag} {}: {log}", path.display());
        assert!(
            took < Duration::from_secs(4),
            "{flag} {}: waited for the deadline: {took:?}",
            path.display()
        );
        assert!(
            log.contains(&path.display().to_string()) && log.contains(why),
            "{flag} {}: the message names the file and says why ({why}): {log}",
            path.display()
        );
        assert!(!log.contains("builder error"), "{log}");
    }
    assert!(rx.requests().is_empty());
}

#[test]
fn a_header_with_a_line_break_or_one_sidecap_sets_is_invalid_configuration() {
    let (dir, names) = finished_capture(1);
    let rx = Receiver::start(vec![]);
    for h in [
        "X-Team: net\r\nX-Injected: 1",
        "X-Team: net\nX-Injected: 1",
        "Content-Length: 5",
        "Transfer-Encoding: chunked",
    ] {
        let (code, _, log) = run(
            upload_cmd(dir.path(), &rx.url("/in"), "5s", "1s").args(["--header", h]),
            Duration::from_secs(10),
        );
        assert_eq!(code, 3, "{h:?}: {log}");
        assert!(log.contains("invalid --header"), "{h:?}: {log}");
    }
    // '=' for ':' puts the secret into the name: the error must not echo it.
    let (code, _, log) = run(
        upload_cmd(dir.path(), &rx.url("/in"), "5s", "1s")
            .args(["--header", "Authorization=Bearer s3cretTOKENvalue:x"]),
        Duration::from_secs(10),
    );
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("invalid --header name"), "{log}");
    assert!(
        !log.contains("s3cretTOKENvalue"),
        "the secret leaked: {log}"
    );
    assert!(
        rx.requests().is_empty(),
        "nothing is sent with a bad header"
    );
    // SIDECAP_HEADER holds one header per line (CRLF tolerated): both arrive, and the body
    // keeps its real Content-Length.
    let (code, _, log) = run(
        upload_cmd(dir.path(), &rx.url("/in"), "5s", "1s")
            .env("SIDECAP_HEADER", "X-One: 1\r\nX-Two: 2"),
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{log}");
    let reqs = rx.accepted();
    assert_eq!(names_of(&reqs), vec![names[0].clone()]);
    assert_eq!(reqs[0].header("x-one"), Some("1"));
    assert_eq!(reqs[0].header("x-two"), Some("2"));
    assert_matches_disk(dir.path(), &reqs[0]);
}

#[test]
fn files_named_like_captures_without_a_pcap_header_are_skipped_and_reported() {
    let (dir, names) = finished_capture(1);
    let empty = "capture-20261122T154102Z-000002.pcap";
    let text = "capture-20261122T154103Z-000003.pcap";
    std::fs::write(dir.path().join(empty), b"").unwrap();
    std::fs::write(dir.path().join(text), b"not a capture at all, just text\n").unwrap();
    let rx = Receiver::start(vec![]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "5s", "1s"),
        Duration::from_secs(10),
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(names_of(&rx.requests()), vec![names[0].clone()], "{log}");
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, empty), "skipped");
    assert_eq!(file_status(&rep, text), "skipped");
    assert_eq!(file_status(&rep, &names[0]), "uploaded");
    assert_eq!(rep["totals"]["skipped"], 2, "{rep:#}");
    assert_eq!(rep["totals"]["uploaded"], 1, "{rep:#}");
    assert_eq!(rep["totals"]["left"], 0, "{rep:#}");
    assert_eq!(rep["not_uploaded"], serde_json::json!([]), "{rep:#}");
    assert!(log.contains("no pcap header"), "{log}");
}

#[test]
fn a_run_stopped_by_a_signal_says_so_and_not_deadline_reached() {
    let (dir, names) = finished_capture(1);
    let rx = Receiver::start(vec![Action::Hang; 5]);
    let mut p = Proc::spawn(&mut upload_cmd(dir.path(), &rx.url("/in"), "20s", "2s"));
    std::thread::sleep(Duration::from_millis(1500));
    p.signal(Signal::SIGTERM);
    let code = p.wait_timeout(Duration::from_secs(5)).code();
    let log = p.log_text();
    assert_eq!(code, Some(5), "{log}");
    assert!(log.contains("stopped by a signal"), "{log}");
    assert!(!log.contains("deadline reached"), "{log}");
    let rep = report(dir.path());
    assert_eq!(rep["deadline_reached"], false);
    assert_eq!(rep["not_uploaded"], serde_json::json!([names[0]]));
}

#[test]
fn a_receiver_answering_4_s_after_each_body_gets_a_backlog_of_three() {
    // 3 x ~4 s fits in a 28 s budget with seconds to spare (the third body goes out at about
    // 8 s, its response wait is then (28 - 8) / 3 = 6.7 s); before the fix the wait was a
    // third of a file's turn, 2.3 s, and every body was sent again.
    let (dir, names) = finished_capture(3);
    let rx = Receiver::start(vec![Action::Delay(4000, 200); 12]);
    let (code, _, log) = run(
        &mut upload_cmd(dir.path(), &rx.url("/in"), "30s", "2s"),
        Duration::from_secs(40),
    );
    let mut got = names_of(&rx.accepted());
    got.sort();
    assert_eq!(got, names, "{log}");
    assert_eq!(code, 0, "{log}");
    assert_eq!(rx.requests().len(), 3, "one attempt each: {log}");
}
