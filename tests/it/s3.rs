//! The S3 destination (issue 15) against a real S3 store: a single-node Garage started per test
//! (tests/it/garage.rs). Objects are read back through the S3 API and compared by SHA-256.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::garage::{Garage, BUCKET};
use crate::helpers::*;
use crate::receiver::sha256_hex;
use crate::upload::{file_status, finished_capture, report, run, upload_cmd, write_pcap};

const KEY_PREFIX: &str = "ns1/pod1";

/// `sidecap upload` of `dir` to `url` on `g` (through `endpoint`, which may be a proxy).
fn s3_upload(g: &Garage, dir: &Path, url: &str, endpoint: &str, grace: &str) -> Command {
    let mut c = upload_cmd(dir, url, grace, "1s");
    g.configure(&mut c, endpoint);
    c.args(["--own-ports", "none"]);
    c
}

fn assert_stored(g: &Garage, dir: &Path, key: &str, name: &str) {
    let data = std::fs::read(dir.join(name)).unwrap();
    let got = g.get(key).unwrap_or_else(|| panic!("no object {key}"));
    assert_eq!(got.len(), data.len(), "{key}: length");
    assert_eq!(sha256_hex(&got), sha256_hex(&data), "{key}: bytes differ");
}

#[test]
fn s3_upload_reads_back_byte_identical_and_a_rerun_sends_nothing() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(3);
    let url = format!("s3://{BUCKET}");
    let (code, _, log) = run(
        &mut s3_upload(&g, dir.path(), &url, &g.endpoint, "20s"),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{log}");
    for n in &names {
        assert_stored(&g, dir.path(), &format!("{KEY_PREFIX}/{n}"), n);
    }
    assert_eq!(g.list().len(), 3, "{:?}", g.list());
    for f in report(dir.path())["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        assert_eq!(f["s3_key"], format!("{KEY_PREFIX}/{name}"), "{f:#}");
    }
    // The same run again: the ledger says every file is there; nothing is sent, no duplicate.
    let (code, _, log) = run(
        &mut s3_upload(&g, dir.path(), &url, &g.endpoint, "20s"),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{log}");
    let rep = report(dir.path());
    for n in &names {
        assert_eq!(file_status(&rep, n), "already_uploaded");
    }
    assert_eq!(rep["totals"]["uploaded"], 0);
    assert_eq!(g.list().len(), 3, "{:?}", g.list());
    assert!(
        rep["url"].as_str().unwrap().starts_with("s3://caps/"),
        "{rep:#}"
    );
}

#[test]
fn s3_multipart_upload_reads_back_byte_identical() {
    require_root();
    let g = Garage::start();
    let dir = tempdir();
    let name = "capture-20261122T154101Z-000001.pcap";
    big_pcap(&dir.path().join(name), 17);
    let mut cmd = s3_upload(&g, dir.path(), "s3://caps/{file}", &g.endpoint, "30s");
    cmd.args(["--s3-part-size", "5MiB"]);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(40));
    assert_eq!(code, 0, "{log}");
    assert_stored(&g, dir.path(), name, name);
    assert_eq!(report(dir.path())["files"][0]["s3_key"], name);
    // 17 MiB at 5 MiB: four parts, and the store says so.
    assert!(g.etag(name).ends_with("-4"), "{}", g.etag(name));
    let rep = report(dir.path());
    // Create, 4 parts, complete.
    assert_eq!(rep["files"][0]["attempts"], 6, "{rep:#}");
    assert!(g.multipart_uploads().is_empty());
}

#[test]
fn s3_key_template_renders_pod_and_date_parts() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(1);
    let url = format!(
        "s3://{BUCKET}/c/{{namespace}}/{{pod}}/{{uid}}/{{yyyy}}-{{mm}}-{{dd}}T{{hh}}/{{file}}"
    );
    let before = sidecap::files::rfc3339(std::time::SystemTime::now());
    let mut cmd = s3_upload(&g, dir.path(), &url, &g.endpoint, "20s");
    let (code, _, log) = run(&mut cmd, Duration::from_secs(30));
    let after = sidecap::files::rfc3339(std::time::SystemTime::now());
    assert_eq!(code, 0, "{log}");
    let keys: Vec<String> = g.list().into_iter().map(|(k, _)| k).collect();
    // The hour may turn during the run: either side of it is right.
    let key_at = |t: &str| format!("c/ns1/pod1/uid-1/{}T{}/{}", &t[..10], &t[11..13], names[0]);
    assert!(
        keys == vec![key_at(&before)] || keys == vec![key_at(&after)],
        "{keys:?}"
    );
}

#[test]
fn s3_wrong_credentials_are_rejected_once_with_the_s3_error_code() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(2);
    for (id, secret, code_name) in [
        (g.key_id.as_str(), "0".repeat(64), "SignatureDoesNotMatch"),
        (
            "GK00000000000000000000000",
            g.secret.clone(),
            "InvalidAccessKeyId",
        ),
    ] {
        let mut cmd = s3_upload(
            &g,
            dir.path(),
            &format!("s3://{BUCKET}"),
            &g.endpoint,
            "20s",
        );
        cmd.env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", &secret);
        let (code, took, log) = run(&mut cmd, Duration::from_secs(30));
        assert_eq!(code, 6, "{log}");
        // Refused for good: one request per file, no retry until the deadline.
        assert!(took < Duration::from_secs(10), "{took:?}");
        let rep = report(dir.path());
        for n in &names {
            assert_eq!(file_status(&rep, n), "rejected");
        }
        let f = &rep["files"][0];
        assert_eq!(f["attempts"], 1, "{f:#}");
        let err = f["error"].as_str().unwrap();
        // Garage names a wrong secret as Forbidden/AccessDenied with the reason in the message.
        assert!(
            err.contains(code_name) || err.contains("AccessDenied") || err.contains("Forbidden"),
            "{err}"
        );
        assert!(
            err.contains("HTTP 403") || err.contains("HTTP 400"),
            "{err}"
        );
        assert!(err.contains("bucket caps"), "{err}");
        // The one-line error of the run says it too.
        assert!(
            log.lines()
                .any(|l| l.contains("rejected 2 file(s) for good") && l.contains("bucket caps at")),
            "{log}"
        );
        assert!(
            !log.contains(&secret) && !err.contains(&secret),
            "secret in the log"
        );
        assert!(g.list().is_empty());
    }
}

#[test]
fn s3_missing_bucket_is_a_rejection_naming_no_such_bucket() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(1);
    let mut cmd = s3_upload(&g, dir.path(), "s3://nope/{file}", &g.endpoint, "20s");
    let (code, took, log) = run(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, 6, "{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, &names[0]), "rejected");
    let err = rep["files"][0]["error"].as_str().unwrap();
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(
        err.contains("bucket nope") && err.contains(&g.endpoint),
        "{err}"
    );
    assert!(log.contains("NoSuchBucket"), "{log}");
}

#[test]
fn s3_credentials_from_a_secret_directory() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(1);
    let secret_dir = tempdir();
    std::fs::write(
        secret_dir.path().join("AWS_ACCESS_KEY_ID"),
        format!("{}\n", g.key_id),
    )
    .unwrap();
    std::fs::write(
        secret_dir.path().join("AWS_SECRET_ACCESS_KEY"),
        format!("{}\n", g.secret),
    )
    .unwrap();
    let mut cmd = s3_upload(&g, dir.path(), "s3://caps/d/{file}", &g.endpoint, "20s");
    // Wrong ones in the environment: the directory wins.
    cmd.env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .arg("--s3-credentials-dir")
        .arg(secret_dir.path());
    let (code, _, log) = run(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert_stored(&g, dir.path(), &format!("d/{}", names[0]), &names[0]);
    assert!(!log.contains(&g.secret));
}

#[test]
fn s3_refuses_webhook_flags_and_a_template_without_file() {
    let dir = tempdir();
    for (extra, url, needle) in [
        (vec!["--method", "PUT"], "s3://caps", "--method"),
        (vec!["--header", "X-A: b"], "s3://caps", "--header"),
        (vec!["--form", "f"], "s3://caps", "--form"),
        (vec![], "s3://caps/{pod}", "{file}"),
        (
            vec!["--s3-part-size", "1MiB"],
            "s3://caps",
            "--s3-part-size",
        ),
    ] {
        let mut c = upload_cmd(dir.path(), url, "10s", "1s");
        c.args(&extra)
            .env("AWS_ACCESS_KEY_ID", "k1234")
            .env("AWS_SECRET_ACCESS_KEY", "s1234");
        let (code, _, log) = run(&mut c, Duration::from_secs(10));
        assert_eq!(code, 3, "{extra:?} {url}: {log}");
        assert!(log.contains(needle), "{extra:?} {url}: {log}");
    }
}

/// A pcap of about `mib` MiB.
pub(crate) fn big_pcap(path: &Path, mib: u32) {
    write_pcap(path, mib * 1024, 1008);
}

/// A TCP proxy on 127.0.0.1 in front of the store: counts the bytes the uploader sends through
/// it, can reset one connection once `reset_after` bytes went through (it closes the socket
/// with data unread, so the kernel sends RST), can hold the upload to `rate` bytes/s, flip a
/// byte, or swallow the answer to a CompleteMultipartUpload (see [`ProxyCfg`]).
struct Proxy {
    addr: String,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// The uploader's local port of every connection.
    ports: Arc<std::sync::Mutex<Vec<u16>>>,
}

#[derive(Default)]
struct ProxyCfg {
    target: u16,
    reset_after: Option<u64>,
    rate: Option<u64>,
    /// Flip the byte at this offset of everything sent (once).
    corrupt_at: Option<u64>,
    /// Forward the first CompleteMultipartUpload (`POST …?uploadId=…`) to the store, wait for
    /// its answer, then close the connection without relaying it (once): the answer is lost
    /// after the store completed the upload.
    lose_complete_answer: bool,
    /// Set once that answer was swallowed (the test can act before the retry).
    answer_lost: Arc<AtomicBool>,
}

impl Proxy {
    fn start(cfg: ProxyCfg) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (sent, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, st) = (sent.clone(), stop.clone());
        let cfg = Arc::new(cfg);
        let did_reset = Arc::new(AtomicBool::new(false));
        let ports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let pp = ports.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(c) = c else { continue };
                if let Ok(peer) = c.peer_addr() {
                    pp.lock().unwrap().push(peer.port());
                }
                let (s, cfg, r) = (s.clone(), cfg.clone(), did_reset.clone());
                std::thread::spawn(move || relay(c, &cfg, &s, &r));
            }
        });
        Proxy {
            addr,
            sent,
            stop,
            ports,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn relay(mut client: TcpStream, cfg: &ProxyCfg, sent: &AtomicU64, did_reset: &AtomicBool) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", cfg.target)) else {
        return;
    };
    let (s2, c2) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    // Set before a CompleteMultipartUpload is forwarded: its answer is not relayed.
    let swallow = Arc::new(AtomicBool::new(false));
    let (sw, lost) = (swallow.clone(), cfg.answer_lost.clone());
    std::thread::spawn(move || answers(s2, c2, &sw, &lost));
    let mut buf = vec![0u8; 64 * 1024];
    let t0 = Instant::now();
    let mut mine = 0u64;
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = server.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if cfg.lose_complete_answer
            && is_complete_request(&buf[..n])
            && !did_reset.swap(true, Ordering::SeqCst)
        {
            swallow.store(true, Ordering::SeqCst);
        }
        if cfg.reset_after.is_some_and(|a| total >= a) && !did_reset.swap(true, Ordering::SeqCst) {
            let _ = server.shutdown(Shutdown::Both);
            // More of the body arrives unread: closing now sends RST.
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
        if let Some(at) = cfg.corrupt_at {
            let before = total - n as u64;
            if (before..total).contains(&at) && !did_reset.swap(true, Ordering::SeqCst) {
                buf[(at - before) as usize] ^= 0xff;
            }
        }
        if server.write_all(&buf[..n]).is_err() {
            return;
        }
        mine += n as u64;
        if let Some(rate) = cfg.rate {
            let due = Duration::from_secs_f64(mine as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// Relays the store's answers to the client; once `swallow` is set, the next answer is read
/// from the store (so the store has done the work) and the client's connection is closed
/// instead, and `lost` is set.
fn answers(mut server: TcpStream, mut client: TcpStream, swallow: &AtomicBool, lost: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if swallow.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            lost.store(true, Ordering::SeqCst);
            return;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

/// Whether `chunk` holds the head of a CompleteMultipartUpload: a request line `POST …` with
/// `uploadId=` in it (CreateMultipartUpload is `POST …?uploads`, the parts are PUTs).
fn is_complete_request(chunk: &[u8]) -> bool {
    chunk.windows(5).enumerate().any(|(i, w)| {
        w == b"POST "
            && (i == 0 || chunk[i - 1] == b'\n')
            && chunk[i..]
                .split(|&b| b == b'\n')
                .next()
                .is_some_and(|line| line.windows(9).any(|x| x == b"uploadId="))
    })
}

#[test]
fn s3_reset_mid_part_resends_only_that_part() {
    require_root();
    let g = Garage::start();
    let dir = tempdir();
    let name = "capture-20261122T154101Z-000001.pcap";
    big_pcap(&dir.path().join(name), 17);
    let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
    // Reset in the middle of part 2 (5 MiB parts: 0-5, 5-10, 10-15, 15-17 MiB).
    let p = Proxy::start(ProxyCfg {
        target: g.port(),
        reset_after: Some(7 << 20),
        ..ProxyCfg::default()
    });
    let mut cmd = s3_upload(&g, dir.path(), "s3://caps/{file}", &p.endpoint(), "60s");
    cmd.args(["--s3-part-size", "5MiB"]);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(70));
    assert_eq!(code, 0, "{log}");
    assert_stored(&g, dir.path(), name, name);
    assert!(
        log.contains("retrying"),
        "no retry: the reset did not happen? {log}"
    );
    let sent = p.sent.load(Ordering::SeqCst);
    // The file, the ~2 MiB of part 2 sent before the reset, and request heads; re-sending the
    // whole file would be 7 MiB more than the file.
    assert!(
        sent > len + (3 << 19),
        "sent {sent} for {len}: no reset mid-part?"
    );
    assert!(
        sent < len + (5 << 20),
        "sent {sent} for {len}: more than one part again"
    );
    // Create, 4 parts, one of them twice, complete.
    let rep = report(dir.path());
    assert_eq!(rep["files"][0]["attempts"], 7, "{rep:#}");
    assert!(g.multipart_uploads().is_empty());
}

/// An 11 MiB file `name` in `dir`, uploaded in 5 MiB parts through a proxy that forwards the
/// CompleteMultipartUpload and drops the store's answer (setting `lost` when it has): the
/// store completes the upload, and the uploader's retry of the Complete finds it gone
/// (NoSuchUpload). The proxy, and the upload command to run.
fn lost_complete_upload(
    g: &Garage,
    dir: &Path,
    name: &str,
    lost: Arc<AtomicBool>,
) -> (Proxy, Command) {
    big_pcap(&dir.join(name), 11);
    let p = Proxy::start(ProxyCfg {
        target: g.port(),
        lose_complete_answer: true,
        answer_lost: lost,
        ..ProxyCfg::default()
    });
    let mut cmd = s3_upload(g, dir, "s3://caps/{file}", &p.endpoint(), "30s");
    cmd.args(["--s3-part-size", "5MiB"]);
    (p, cmd)
}

#[test]
fn s3_lost_complete_answer_is_confirmed_by_head_object_not_rejected() {
    require_root();
    let g = Garage::start();
    let dir = tempdir();
    let name = "capture-20261122T154101Z-000001.pcap";
    let (_p, mut cmd) = lost_complete_upload(&g, dir.path(), name, Arc::default());
    let (code, _, log) = run(&mut cmd, Duration::from_secs(40));
    assert!(
        log.contains("retrying"),
        "the Complete's answer was not lost? {log}"
    );
    assert_eq!(code, 0, "{log}");
    let rep = report(dir.path());
    let f = &rep["files"][0];
    assert_eq!(f["status"], "uploaded", "{f:#}");
    assert!(
        f["confirmed_by"]
            .as_str()
            .is_some_and(|c| c.contains("HeadObject")),
        "{f:#}"
    );
    // Create, 3 parts, the Complete twice, the HeadObject.
    assert_eq!(f["attempts"], 7, "{f:#}");
    assert!(log.contains("confirmed by HeadObject"), "{log}");
    assert_stored(&g, dir.path(), name, name);
    assert!(g.etag(name).ends_with("-3"), "{}", g.etag(name));
    assert!(
        g.multipart_uploads().is_empty(),
        "{:?}",
        g.multipart_uploads()
    );
    // In the ledger: a re-run sends nothing.
    let mut cmd = s3_upload(&g, dir.path(), "s3://caps/{file}", &g.endpoint, "20s");
    cmd.args(["--s3-part-size", "5MiB"]);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, name), "already_uploaded", "{rep:#}");
    assert_eq!(rep["totals"]["uploaded"], 0);
    assert_eq!(g.list().len(), 1, "{:?}", g.list());
}

#[test]
fn s3_lost_complete_answer_then_object_deleted_stays_rejected() {
    require_root();
    let g = Garage::start();
    let dir = tempdir();
    let name = "capture-20261122T154101Z-000001.pcap";
    let lost = Arc::new(AtomicBool::new(false));
    let (_p, mut cmd) = lost_complete_upload(&g, dir.path(), name, lost.clone());
    let mut up = Proc::spawn(&mut cmd);
    // Between the lost answer and the retry (a backoff of 1.6 s or more after 5 attempts),
    // the completed object is deleted: the retry's NoSuchUpload is then no success.
    let t0 = Instant::now();
    while !lost.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(lost.load(Ordering::SeqCst), "{}", up.log_text());
    g.delete(name);
    let st = up.wait_timeout(Duration::from_secs(40));
    let log = up.log_text();
    assert_eq!(st.code(), Some(6), "{log}");
    let rep = report(dir.path());
    let f = &rep["files"][0];
    assert_eq!(f["status"], "rejected", "{f:#}");
    assert!(f.get("confirmed_by").is_none(), "{f:#}");
    let err = f["error"].as_str().unwrap();
    assert!(
        err.contains("NoSuchUpload") && err.contains("the object at the key is absent"),
        "{err}"
    );
    assert!(g.list().is_empty(), "{:?}", g.list());
    assert!(g.multipart_uploads().is_empty());
}

#[test]
fn s3_deadline_aborts_the_multipart_upload_and_leaves_no_parts() {
    require_root();
    let g = Garage::start();
    let dir = tempdir();
    let name = "capture-20261122T154101Z-000001.pcap";
    big_pcap(&dir.path().join(name), 17);
    // 2 MiB/s: 17 MiB cannot go up in the 6 s budget.
    let p = Proxy::start(ProxyCfg {
        target: g.port(),
        rate: Some(2 << 20),
        ..ProxyCfg::default()
    });
    let mut cmd = upload_cmd(dir.path(), "s3://caps/{file}", "8s", "2s");
    g.configure(&mut cmd, &p.endpoint());
    cmd.args(["--own-ports", "none", "--s3-part-size", "5MiB"]);
    let (code, took, log) = run(&mut cmd, Duration::from_secs(20));
    assert_eq!(code, 5, "{log}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let rep = report(dir.path());
    let f = &rep["files"][0];
    assert_eq!(f["status"], "failed", "{f:#}");
    let err = f["error"].as_str().unwrap();
    assert!(err.contains("deadline reached"), "{err}");
    assert!(
        err.contains("multipart upload aborted: no parts left"),
        "{err}"
    );
    // At least the first part went up before the deadline: there was something to abort.
    assert!(p.sent.load(Ordering::SeqCst) > 5 << 20);
    assert!(
        g.multipart_uploads().is_empty(),
        "{:?}",
        g.multipart_uploads()
    );
    assert!(g.list().is_empty(), "{:?}", g.list());
}

#[test]
fn s3_continuous_uploads_each_file_once_and_the_prestop_run_sends_nothing_again() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(2);
    let mut cmd = Command::new(bin());
    cmd.args(["--log-format", "json", "uploader", "--continuous", "--dir"])
        .arg(dir.path())
        .args([
            "--url",
            "s3://caps/{pod}/{file}",
            "--poll-interval",
            "100ms",
        ])
        .args(["--listen", "off", "--own-ports", "none"]);
    g.configure(&mut cmd, &g.endpoint);
    let mut up = Proc::spawn(&mut cmd);
    let t0 = Instant::now();
    while g.list().len() < 2 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    up.signal(nix::sys::signal::Signal::SIGTERM);
    let st = up.wait_timeout(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", up.log_text());
    for n in &names {
        assert_stored(&g, dir.path(), &format!("pod1/{n}"), n);
    }
    let (code, _, log) = run(
        &mut s3_upload(&g, dir.path(), "s3://caps/{pod}/{file}", &g.endpoint, "20s"),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{log}");
    let rep = report(dir.path());
    for n in &names {
        assert_eq!(file_status(&rep, n), "already_uploaded");
    }
    assert_eq!(g.list().len(), 2, "{:?}", g.list());
}

#[test]
fn s3_snapshot_sends_its_files_and_the_manifest_under_the_template() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(2);
    let mut cmd = Command::new(bin());
    cmd.args(["--log-format", "json", "snapshot", "--dir"])
        .arg(dir.path())
        .args([
            "--url",
            "s3://caps/snap/{pod}/{file}",
            "--own-ports",
            "none",
        ])
        .args(["--reason", "test", "--timeout", "30s"]);
    g.configure(&mut cmd, &g.endpoint);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(40));
    assert_eq!(code, 0, "{log}");
    for n in &names {
        assert_stored(&g, dir.path(), &format!("snap/pod1/{n}"), n);
    }
    let manifests: Vec<String> = g
        .list()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("snap/pod1/capture-snapshot-") && k.ends_with(".json"))
        .collect();
    assert_eq!(manifests.len(), 1, "{:?}", g.list());
    let m: serde_json::Value = serde_json::from_slice(&g.get(&manifests[0]).unwrap()).unwrap();
    assert_eq!(m["files"].as_array().unwrap().len(), 2, "{m:#}");
    assert_eq!(m["reason"], "test");
}

#[test]
fn s3_a_body_corrupted_on_the_way_is_refused_by_the_store_and_sent_again() {
    require_root();
    let g = Garage::start();
    let dir = tempdir();
    let name = "capture-20261122T154101Z-000001.pcap";
    write_pcap(&dir.path().join(name), 200, 1000);
    // One byte flipped 100 KB into the request (the head is well under 2 KB): in the body.
    let p = Proxy::start(ProxyCfg {
        target: g.port(),
        corrupt_at: Some(100_000),
        ..ProxyCfg::default()
    });
    let mut cmd = s3_upload(&g, dir.path(), "s3://caps/{file}", &p.endpoint(), "30s");
    let (code, _, log) = run(&mut cmd, Duration::from_secs(40));
    assert_eq!(code, 0, "{log}");
    // The store computed the body's SHA-256, found it differs from x-amz-checksum-sha256, and
    // stored nothing; the second attempt's body was intact.
    assert!(log.contains("InvalidDigest"), "{log}");
    assert_eq!(report(dir.path())["files"][0]["attempts"], 2);
    assert_stored(&g, dir.path(), name, name);
}

#[test]
fn s3_requests_leave_from_the_uploaders_own_ports() {
    require_root();
    let g = Garage::start();
    let dir = tempdir();
    let name = "capture-20261122T154101Z-000001.pcap";
    big_pcap(&dir.path().join(name), 11);
    let p = Proxy::start(ProxyCfg {
        target: g.port(),
        ..ProxyCfg::default()
    });
    // The default --own-ports, single and multipart requests alike.
    let mut cmd = upload_cmd(dir.path(), "s3://caps/{file}", "30s", "1s");
    g.configure(&mut cmd, &p.endpoint());
    cmd.args(["--s3-part-size", "5MiB"]);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(40));
    assert_eq!(code, 0, "{log}");
    assert_stored(&g, dir.path(), name, name);
    let ports = p.ports.lock().unwrap().clone();
    assert!(!ports.is_empty());
    assert!(
        ports.iter().all(|p| (61000..=61031).contains(p)),
        "connections from {ports:?}"
    );
}
