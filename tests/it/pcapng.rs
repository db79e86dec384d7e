//! pcapng output (issue 13): the real binary capturing on loopback with `-i any`, and Wireshark's
//! own tools (tshark, capinfos, editcap) reading back what the blocks say: the Pod identity in
//! the section header, one interface per SLL2 index, per-file statistics, and TLS secrets that
//! decrypt real TLS 1.3 and 1.2 sessions (curl against `openssl s_server`) with no setup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::helpers::*;
use crate::receiver::Receiver;

fn ng_capture(dir: &Path, port: u16) -> Command {
    let mut c = capture_cmd(dir, "any");
    c.args(["--format", "pcapng", "--filter"])
        .arg(format!("port {port}"));
    c
}

fn stop(mut p: Proc) -> Proc {
    p.signal(Signal::SIGTERM);
    let st = p.wait_timeout(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", p.log_text());
    p
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("cut short") && !err.contains("damaged"),
        "{cmd:?}: {err}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fields of the file's own blocks, through Wireshark's pcapng file dissector.
fn block_fields(path: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut c = Command::new("tshark");
    c.arg("-r")
        .arg(path)
        .args(["-X", "read_format:MIME Files Format", "-T", "fields"])
        .args([
            "-E",
            "separator=;",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
        ]);
    for f in fields {
        c.args(["-e", f]);
    }
    run_ok(&mut c)
        .lines()
        .map(|l| l.split(';').map(str::to_string).collect())
        .collect()
}

fn ng_files(dir: &Path) -> Vec<PathBuf> {
    files_with(dir, ".pcapng")
}

#[test]
fn pcapng_carries_pod_identity_interface_names_filter_and_statistics() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = ng_capture(dir.path(), port);
    cmd.args(["--time-precision", "nano"])
        .env("POD_NAME", "web-7d9f")
        .env("POD_NAMESPACE", "shop")
        .env("POD_UID", "0f1e2d3c-42")
        .env("NODE_NAME", "node-3")
        .env("CONTAINER_IMAGE", "registry.example/web:1.2");
    let (p, _addr) = start_capture(&mut cmd);
    send_udp(port, 50, 64);
    std::thread::sleep(Duration::from_millis(300));
    stop(p);
    let files = ng_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let f = &files[0];

    // Section header and interfaces, as capinfos shows them.
    let info = run_ok(Command::new("capinfos").arg("-M").arg(f));
    for want in [
        format!("Capture hardware:    {}", std::env::consts::ARCH),
        "Capture oper-sys:    Linux ".to_string(),
        format!("Capture application: sidecap {}", env!("CARGO_PKG_VERSION")),
        "Capture comment:     kubernetes pod=web-7d9f namespace=shop uid=0f1e2d3c-42 node=node-3 image=registry.example/web:1.2".to_string(),
        "Number of interfaces in file: 2".to_string(),
        "Name = any".to_string(),
        "Name = lo".to_string(),
        // The filter compiled: the user's, with the uploader's ports left out (issue 11).
        format!("Filter string = (port {port}) and not ("),
        "Time precision = nanoseconds (9)".to_string(),
        "Encapsulation = Linux cooked-mode capture v2".to_string(),
        "Number of stat entries = 1".to_string(),
        "Number of packets = 50".to_string(),
    ] {
        assert!(info.contains(&want), "capinfos lacks {want:?}:\n{info}");
    }
    // Every packet is on `lo`, named, not just an SLL2 index.
    let names = tshark_fields(f, None, "frame.interface_name");
    assert_eq!(names.len(), 50);
    assert!(names.iter().all(|n| n == "lo"), "{names:?}");
    assert_eq!(udp_seqs(f, port), (0..50).collect::<Vec<_>>());
    // Timestamps in nanosecond units read back as now, not 1000x off.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for t in tshark_fields(f, None, "frame.time_epoch") {
        let t: f64 = t.parse().unwrap();
        assert!((now - t).abs() < 120.0, "packet time {t}, now {now}");
    }

    // The statistics block: this file's counts.
    let isb = block_fields(
        f,
        &[
            "pcapng.options.option.data.interface.received",
            "pcapng.options.option.data.interface.dropped",
            "pcapng.options.option.data.interface.dropped_by_os",
            "pcapng.options.option.data.interface.delivered_to_user",
            "pcapng.options.option.data.start_time",
            "pcapng.options.option.data.end_time",
        ],
    );
    let isb: Vec<&Vec<String>> = isb.iter().filter(|r| !r[0].is_empty()).collect();
    assert_eq!(isb.len(), 1, "one statistics block: {isb:?}");
    let received: u64 = isb[0][0].parse().unwrap();
    assert!(received >= 50, "isb_ifrecv {received}");
    assert_eq!(isb[0][1], "0", "isb_ifdrop");
    assert_eq!(isb[0][2], "0", "isb_osdrop");
    assert_eq!(isb[0][3], "50", "isb_usrdeliv");
    assert!(
        !isb[0][4].is_empty() && !isb[0][5].is_empty(),
        "start/end time"
    );

    // Our own walker, and editcap rewriting it both as pcapng and as classic pcap.
    let (s, x) = sidecap::pcapng::scan_extra(std::fs::File::open(f).unwrap()).unwrap();
    assert!(s.is_clean(), "{s:?}");
    assert_eq!((s.packets, x.interfaces, x.statistics_blocks), (50, 2, 1));
    for (out, fmt) in [("copy.pcapng", "pcapng"), ("copy.pcap", "pcap")] {
        let out = dir.path().join(out);
        run_ok(Command::new("editcap").args(["-F", fmt]).arg(f).arg(&out));
        assert_eq!(capinfos_count(&out), 50, "editcap -F {fmt}");
    }
}

#[test]
fn pcapng_rotation_and_ring_bound_keep_every_file_self_describing() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = ng_capture(dir.path(), port);
    cmd.args(["-C", "30KB", "-W", "4"]);
    let (p, _addr) = start_capture(&mut cmd);
    send_udp(port, 3000, 100);
    std::thread::sleep(Duration::from_millis(500));
    let p = stop(p);
    let files = ng_files(dir.path());
    assert_eq!(files.len(), 4, "the ring keeps 4 files: {files:?}");
    let mut seqs = Vec::new();
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= 30_000, "{} is {size} bytes", f.display());
        let names = tshark_fields(f, None, "frame.interface_name");
        assert!(
            !names.is_empty() && names.iter().all(|n| n == "lo"),
            "{}: every file describes its own interfaces: {names:?}",
            f.display()
        );
        let blocks = block_fields(f, &["pcapng.block.type"]);
        // The whole file is one record of this dissector: types come comma-separated.
        let isbs = blocks
            .iter()
            .flat_map(|r| r[0].split(','))
            .filter(|t| *t == "0x00000005")
            .count();
        assert_eq!(isbs, 1, "{}: one statistics block", f.display());
        seqs.extend(udp_seqs(f, port));
    }
    // The newest files hold the newest packets, none missing between them.
    let last = *seqs.last().unwrap();
    assert_eq!(last, 2999);
    let first = seqs[0];
    assert_eq!(seqs, (first..=last).collect::<Vec<_>>());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("capture.done")).unwrap())
            .unwrap();
    assert_eq!(m["packets_written"], 3000, "{m:#}");
    assert!(m["files_deleted"].as_u64().unwrap() >= 8, "{m:#}");
    assert!(m["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n.as_str().unwrap().ends_with(".pcapng")));
    drop(p);
}

/// A self-signed certificate and `openssl s_server -www` on 127.0.0.1:`port`.
fn tls_server(dir: &Path, port: u16) -> Proc {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let mut c = Command::new("openssl");
    c.args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key);
    let p = Proc::spawn(&mut c);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return p;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("s_server did not listen: {}", p.log_text());
}

fn curl_tls(keylog: &Path, port: u16, version: &[&str], path: &str) {
    let out = run_ok(
        Command::new("curl")
            .env("SSLKEYLOGFILE", keylog)
            .args([
                "-sSk",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(version)
            .arg(format!("https://127.0.0.1:{port}{path}")),
    );
    assert_eq!(out, "200");
}

fn decrypted_requests(f: &Path) -> Vec<String> {
    let mut c = Command::new("tshark");
    c.arg("-r")
        .arg(f)
        .args(["-Y", "http.request", "-T", "fields"])
        .args(["-e", "http.request.method", "-e", "http.request.uri"]);
    run_ok(&mut c).lines().map(str::to_string).collect()
}

#[test]
fn tls_keylog_secrets_decrypt_tls13_and_tls12_in_every_file_with_no_setup() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let server = tls_server(dir.path(), port);
    // The app creates its key log only with its first TLS connection, after the capture starts.
    let keylog = dir.path().join("tls-keys.log");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut cmd = ng_capture(&out, port);
    cmd.arg("--tls-keylog").arg(&keylog);
    let (p, _addr) = start_capture(&mut cmd);
    curl_tls(&keylog, port, &["--tlsv1.3"], "/first-tls13");
    std::thread::sleep(Duration::from_millis(300));
    p.signal(Signal::SIGHUP);
    p.wait_log("Rotating on SIGHUP", Duration::from_secs(5));
    curl_tls(
        &keylog,
        port,
        &["--tlsv1.2", "--tls-max", "1.2"],
        "/second-tls12",
    );
    std::thread::sleep(Duration::from_millis(300));
    let p = stop(p);
    drop(server);

    let files = ng_files(&out);
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(
        decrypted_requests(&files[0]),
        vec!["GET\t/first-tls13".to_string()]
    );
    assert_eq!(
        decrypted_requests(&files[1]),
        vec!["GET\t/second-tls12".to_string()]
    );
    // The second file carries the first connection's secrets too: each file decrypts alone.
    let keys = std::fs::read_to_string(&keylog).unwrap();
    let tls13_line = keys
        .lines()
        .find(|l| l.starts_with("CLIENT_TRAFFIC_SECRET_0 "))
        .expect("a TLS 1.3 secret");
    let second = std::fs::read(&files[1]).unwrap();
    assert!(
        second
            .windows(tls13_line.len())
            .any(|w| w == tls13_line.as_bytes()),
        "the second file repeats earlier secrets"
    );
    // Secrets never reach the log, and the files stay 0640.
    let log = p.log_text();
    for line in keys.lines() {
        let secret = line.rsplit(' ').next().unwrap();
        assert!(!log.contains(secret), "a secret is in the log");
    }
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", f.display());
    }
}

#[test]
fn tls_keylog_with_classic_pcap_is_refused_with_a_clear_message() {
    let dir = tempdir();
    let out = Command::new(bin())
        .args([
            "capture",
            "-i",
            "lo",
            "--listen",
            "off",
            "--tls-keylog",
            "/x/keys",
            "-w",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-keylog needs --format pcapng"), "{err}");
}

/// A finished pcapng capture of `n` UDP packets (a done marker, no lock held).
fn finished_pcapng(n: u32) -> (tempfile::TempDir, PathBuf, u16) {
    let dir = tempdir();
    let port = unique_port();
    let mut cmd = ng_capture(dir.path(), port);
    cmd.args(["-c", &n.to_string()]);
    let mut p = Proc::spawn(&mut cmd);
    p.wait_log("Capture is live", Duration::from_secs(10));
    send_udp(port, n, 80);
    assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
    let files = ng_files(dir.path());
    assert_eq!(files.len(), 1);
    let f = files[0].clone();
    (dir, f, port)
}

#[test]
fn repair_cuts_a_torn_pcapng_block_and_keeps_every_complete_one() {
    require_root();
    let (_dir, f, port) = finished_pcapng(20);
    let good = std::fs::read(&f).unwrap();
    // A killed capture: the first 40 bytes of a 100-byte packet's block after the last
    // complete block.
    let torn = f.with_extension("pcapng.part");
    let mut block = Vec::new();
    sidecap::pcapng::push_epb(&mut block, 1, 0, 100, &[0x5a; 100]);
    let mut bytes = good.clone();
    bytes.extend_from_slice(&block[..40]);
    std::fs::write(&torn, &bytes).unwrap();
    let out = Command::new(bin())
        .args(["repair"])
        .arg(&torn)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("removed 40 bytes"), "{text}");
    assert!(text.contains("kept 20 packets"), "{text}");
    assert_eq!(std::fs::read(&torn).unwrap(), good);
    assert_eq!(udp_seqs(&torn, port), (0..20).collect::<Vec<_>>());
}

#[test]
fn repair_reports_a_corrupt_pcapng_length_in_the_middle_and_changes_nothing() {
    require_root();
    let (_dir, f, _port) = finished_pcapng(20);
    let mut bytes = std::fs::read(&f).unwrap();
    // The third packet block's length says 1 MiB: longer than the rest of the file, so a walker
    // stops there as if the block were torn, with 17 complete packets after it.
    let (mut at, mut epbs) = (0usize, 0);
    loop {
        let ty = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = u32::from_ne_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if ty == 6 {
            epbs += 1;
            if epbs == 3 {
                bytes[at + 4..at + 8].copy_from_slice(&(1u32 << 20).to_ne_bytes());
                break;
            }
        }
        at += len;
    }
    let part = f.with_extension("pcapng.part");
    std::fs::write(&part, &bytes).unwrap();
    let out = Command::new(bin())
        .arg("repair")
        .arg(&part)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(
        text.contains("DAMAGED") && text.contains(&format!("offset {at}")),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&part).unwrap(),
        bytes,
        "the file must be left as it is"
    );
}

#[test]
fn pcapng_uploads_as_application_x_pcapng() {
    require_root();
    let (dir, f, _port) = finished_pcapng(10);
    let rx = Receiver::start(vec![]);
    let mut p = Proc::spawn(
        Command::new(bin())
            .args(["--log-format", "json", "upload", "--dir"])
            .arg(dir.path())
            .args(["--url", &rx.url("/in"), "--grace-period", "20s"])
            .args(["--safety-margin", "2s", "--log-to-pid1", "never"]),
    );
    assert_eq!(
        p.wait_timeout(Duration::from_secs(25)).code(),
        Some(0),
        "{}",
        p.log_text()
    );
    let got = rx.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("content-type"), Some("application/x-pcapng"));
    let name = f.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(got[0].header("x-sidecap-file"), Some(name.as_str()));
    assert_eq!(got[0].body, std::fs::read(&f).unwrap());
}

// A buffer dropped on a full disk may hold the interface block of the packets after it: the
// writer keeps those blocks and writes them before the next data (and writes at the end of the
// last complete block, so no hole is left). Without the kept block tshark fails with
// "interface index 1 is not less than section interface count 1".
#[test]
fn disk_full_at_a_files_first_packets_keeps_their_interface_for_the_packets_after() {
    require_root();
    let small = SmallFs::new("2m");
    let mnt = small.mnt.clone();
    let port = unique_port();
    let mut cmd = ng_capture(&mnt, port);
    cmd.args(["--flush-interval", "100ms"]);
    let (p, addr) = start_capture(&mut cmd);
    // Fill the disk before the first packet: the buffer that describes `lo` is dropped.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    send_udp(port, 100, 1000);
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        metric(&addr, "sidecap_disk_dropped_packets_total") > 0,
        "the first packets are dropped:\n{}",
        p.log_text()
    );
    std::fs::remove_file(&filler).unwrap();
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..50u32 {
        let mut b = (1_000_000 + i).to_be_bytes().to_vec();
        b.resize(200, 0);
        s.send_to(&b, ("127.0.0.1", port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    stop(p);
    let f = &ng_files(&mnt)[0];
    // Without the kept interface block, tshark stops at the first packet after the episode
    // ("interface ID ... out of range" / damaged file) and our walker too.
    let names = tshark_fields(f, None, "frame.interface_name");
    assert!(
        !names.is_empty() && names.iter().all(|n| n == "lo"),
        "{names:?}"
    );
    let (sc, _) = sidecap::pcapng::scan_extra(std::fs::File::open(f).unwrap()).unwrap();
    assert!(sc.is_clean(), "{sc:?}");
    assert!(udp_seqs(f, port).ends_with(&(1_000_000..1_000_050).collect::<Vec<_>>()));
}
