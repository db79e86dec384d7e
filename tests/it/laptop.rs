//! Laptop use (issue 14, and SIGUSR1 from issue 10): what a tcpdump user expects at a terminal.
//! The status line and the summary are checked on a real terminal (`script` gives the capture a
//! pty), `-w -` through a real `tshark -r -` reading the pipe, and SIGUSR1 on a running capture.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helpers::*;

/// A text-log capture on lo, filtered to `port`, with an admin server on a free port.
fn text_capture(dir: &Path, port: u16) -> Command {
    let mut c = Command::new(bin());
    c.args(["capture", "-i", "lo", "-w"]).arg(dir).args([
        "--listen",
        "127.0.0.1:0",
        "--filter",
        &format!("udp port {port}"),
    ]);
    c
}

/// The admin address from a text log line (`... addr=127.0.0.1:PORT`).
fn text_admin_addr(p: &Proc) -> String {
    let line = p.wait_log("Admin server listening", Duration::from_secs(10));
    let at = line.find("127.0.0.1:").expect("address in the line");
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect()
}

fn wait_metric(addr: &str, name: &str, want: u64) {
    let t0 = Instant::now();
    loop {
        let v = metric(addr, name);
        if v >= want {
            assert_eq!(v, want, "{name}");
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{name} stuck at {v}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigusr1_prints_statistics_and_the_capture_goes_on() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    let mut p = Proc::spawn(&mut text_capture(dir.path(), port));
    let addr = text_admin_addr(&p);
    wait_ready(&addr, Duration::from_secs(10));
    send_udp(port, 10, 40);
    wait_metric(&addr, "sidecap_packets_captured_total", 10);
    p.signal(Signal::SIGUSR1);
    p.wait_log("10 packets captured", Duration::from_secs(5));
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "SIGUSR1 must not end the capture; log:\n{}",
        p.log_text()
    );
    send_udp(port, 10, 40);
    wait_metric(&addr, "sidecap_packets_captured_total", 20);
    p.signal(Signal::SIGTERM);
    let st = p.wait_timeout(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "log:\n{}", p.log_text());
    let files = files_with(dir.path(), ".pcap");
    assert_eq!(files.len(), 1);
    let want: Vec<u32> = (0..10).chain(0..10).collect();
    assert_eq!(udp_seqs(&files[0], port), want);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("capture.done")).unwrap())
            .unwrap();
    assert_eq!(m["clean"], true);
    assert_eq!(m["packets_written"], 20);
    // The exit summary follows the statistics printed on SIGUSR1.
    p.wait_log("20 packets captured", Duration::from_secs(1));
}

/// Erase-line as the status line uses it: carriage return, erase the whole row.
const ERASE: &str = "\r\x1b[2K";
/// Text only the status line contains.
const STATUS: &str = "kernel drops ";

/// A child whose output (stdout, and stderr when piped) is collected as raw bytes, so that
/// redraws without a newline are seen as they happen.
struct Raw {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Raw {
    fn spawn(cmd: &mut Command) -> Raw {
        use std::io::Read;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut stream = child.stdout.take().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Raw { child, out }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, needle: &str, timeout: Duration) {
        let t0 = Instant::now();
        while !self.text().contains(needle) {
            assert!(
                t0.elapsed() < timeout,
                "no {needle:?} within {timeout:?}; output:\n{:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&mut self, timeout: Duration) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return s.code().unwrap_or(-1);
            }
            assert!(
                t0.elapsed() < timeout,
                "no exit; output:\n{:?}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `script` runs `shell` on a new pty of `cols` columns and copies what it prints to its stdout:
/// the capture's stderr is a real terminal. `-e` passes the command's exit code on.
fn on_terminal(shell: &str, cols: u16, env: &[(&str, &str)]) -> Raw {
    on_terminal_in(None, shell, cols, env)
}

/// [`on_terminal`] inside a network namespace (`ip netns exec` execs `script`: same pid).
fn on_terminal_in(ns: Option<&Netns>, shell: &str, cols: u16, env: &[(&str, &str)]) -> Raw {
    let mut c = match ns {
        Some(ns) => ns.command(Path::new("script")),
        None => Command::new("script"),
    };
    c.args([
        "-qec",
        &format!("stty cols {cols} rows 24; exec {shell}"),
        "/dev/null",
    ]);
    for (k, v) in env {
        c.env(k, v);
    }
    Raw::spawn(&mut c)
}

/// The sidecap process that `script` runs (its only child once the shell has exec'd).
fn child_of(parent: u32) -> nix::unistd::Pid {
    let pid: i32 = sh("pgrep", &["-P", &parent.to_string()])
        .trim()
        .parse()
        .expect("one child");
    nix::unistd::Pid::from_raw(pid)
}

/// What is visible of a piece of terminal output: escape sequences and CR/LF removed.
fn visible(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

fn lo_capture_shell(dir: &Path, port: u16, extra: &str) -> String {
    format!(
        "{} capture -i lo -w {} --listen off {extra} udp port {port}",
        bin().display(),
        dir.display()
    )
}

#[test]
fn status_line_on_a_terminal_is_redrawn_and_erased_before_log_lines_and_at_exit() {
    require_root();
    let dir = tempdir();
    let port = unique_port();
    // A namespace of its own: its lo carries only this test's packets, so even the kernel's
    // count (which includes what arrived before the filter was set) is exact.
    let ns = Netns::new("tty");
    let shell = lo_capture_shell(dir.path(), port, "");
    let mut p = on_terminal_in(Some(&ns), &shell, 70, &[]);
    p.wait_for("Capture is live", Duration::from_secs(10));
    let pid = child_of(p.child.id());
    // 30 packets over 3 s: the line is redrawn several times while they arrive.
    ns.enter(|| {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..30u32 {
            s.send_to(&i.to_be_bytes(), ("127.0.0.1", port)).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    p.wait_for(&format!("{ERASE}0:00:0"), Duration::from_secs(5));
    p.wait_for("  30 packets  ", Duration::from_secs(5));
    // Log lines in the middle of a capture (SIGHUP: "Received SIGHUP", a rotation).
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    p.wait_for("Finished a file", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(p.wait(Duration::from_secs(10)), 0, "{:?}", p.text());
    let out = p.text();

    let segments: Vec<&str> = out.split(ERASE).collect();
    assert!(segments.len() > 4, "the line was drawn and erased: {out:?}");
    assert!(
        !segments[0].contains(STATUS),
        "nothing drawn before the first erase"
    );
    for seg in &segments[1..] {
        // A segment is log lines (each ending in a newline) and at most one status line after
        // them: a status line is never followed by other text on its row.
        let (before, last_row) = seg.rsplit_once('\n').unwrap_or(("", seg));
        assert!(
            !before.contains(STATUS),
            "text written after a status line without erasing it: {seg:?}"
        );
        if last_row.contains(STATUS) {
            let shown = visible(last_row);
            assert!(
                shown.chars().count() < 70,
                "wider than the terminal: {shown:?}"
            );
        }
    }
    let last = segments.last().unwrap();
    assert!(
        !last.contains(STATUS),
        "the status line is erased at exit: {last:?}"
    );
    for line in [
        "30 packets captured\r\n",
        // One count per packet: the kernel filter drops each packet's outgoing copy on lo.
        "30 packets received by filter\r\n",
        "0 packets dropped by kernel\r\n",
        &format!("30 packets written to {}\r\n", dir.path().display()),
        "0 packets dropped on a full disk\r\n",
        "2 files: capture-",
    ] {
        assert!(
            last.contains(line),
            "summary line {line:?} missing: {last:?}"
        );
    }
    let files = files_with(dir.path(), ".pcap");
    assert_eq!(files.len(), 2, "SIGHUP rotated once");
    let n: usize = files.iter().map(|f| udp_seqs(f, port).len()).sum();
    assert_eq!(n, 30);
}

#[test]
fn quiet_flag_and_its_env_variable_turn_off_the_status_line_and_the_summary() {
    require_root();
    for (extra, env) in [("-q", None), ("", Some(("SIDECAP_QUIET", "1")))] {
        let dir = tempdir();
        let port = unique_port();
        let shell = lo_capture_shell(dir.path(), port, &format!("{extra} --duration 2500ms"));
        let mut p = on_terminal(&shell, 100, env.as_slice());
        p.wait_for("Capture is live", Duration::from_secs(10));
        send_udp(port, 5, 10);
        assert_eq!(p.wait(Duration::from_secs(10)), 0);
        let out = p.text();
        assert!(out.contains("Capture finished"), "logs stay: {out:?}");
        assert!(
            !out.contains(ERASE) && !out.contains(STATUS),
            "{extra} {env:?}: no status line: {out:?}"
        );
        assert!(!out.contains("packets captured"), "no summary: {out:?}");
    }
}

#[test]
fn stderr_that_is_not_a_terminal_never_gets_the_status_line() {
    require_root();
    for format in ["json", "text"] {
        let dir = tempdir();
        let port = unique_port();
        let mut cmd = text_capture(dir.path(), port);
        cmd.args(["--log-format", format]);
        let mut p = Proc::spawn(&mut cmd);
        p.wait_log("Capture is live", Duration::from_secs(10));
        // Long enough for two redraws, were there a status line.
        for _ in 0..5 {
            send_udp(port, 4, 10);
            std::thread::sleep(Duration::from_millis(500));
        }
        // Statistics on SIGUSR1 follow the log format too.
        p.signal(Signal::SIGUSR1);
        let stats = if format == "json" {
            "\"Statistics.\""
        } else {
            "20 packets captured"
        };
        p.wait_log(stats, Duration::from_secs(5));
        p.signal(Signal::SIGTERM);
        assert_eq!(p.wait_timeout(Duration::from_secs(10)).code(), Some(0));
        let log = p.log_text();
        assert!(!log.contains('\r'), "{format}: carriage return in {log:?}");
        assert!(
            !log.contains(STATUS) && !log.contains("\x1b[2K"),
            "{format}: {log:?}"
        );
        if format == "json" {
            assert!(
                !log.contains('\x1b'),
                "json: no escape sequence at all: {log:?}"
            );
            let events: Vec<serde_json::Value> = log
                .lines()
                .map(|line| {
                    serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
                })
                .collect();
            let stats = events
                .iter()
                .find(|e| e["message"] == "Statistics.")
                .expect("statistics event");
            assert_eq!(stats["packets_captured"], 20, "{stats}");
            let fin = events
                .iter()
                .find(|e| e["message"] == "Capture finished.")
                .expect("finished event");
            assert_eq!(fin["packets_captured"], 20, "{fin}");
        } else {
            // tcpdump prints its summary into a pipe too: once on SIGUSR1, once at exit.
            assert_eq!(log.matches("\n20 packets captured\n").count(), 2, "{log:?}");
        }
    }
}

/// `sidecap capture -i lo -w - ... | tshark -r - -T fields -e udp.payload`: both processes,
/// with sidecap's stderr collected.
struct Pipeline {
    capture: Proc,
    tshark: std::process::Child,
}

impl Pipeline {
    fn start(port: u16, capture_args: &[&str], tshark_args: &[&str]) -> Pipeline {
        use std::process::Stdio;
        let mut c = Command::new(bin());
        c.args(["capture", "-i", "lo", "-w", "-", "--listen", "off"])
            .args(capture_args)
            .args(["udp", "port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn sidecap");
        let out = child.stdout.take().unwrap();
        let tshark = Command::new("tshark")
            .args(["-r", "-"])
            .args(tshark_args)
            .args(["-T", "fields", "-e", "udp.payload"])
            .stdin(Stdio::from(out))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark installed (scripts/setup.sh)");
        // Proc collects stderr (stdout is already taken by tshark).
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let capture = Proc { child, log };
        capture.wait_log("Capture is live", Duration::from_secs(10));
        Pipeline { capture, tshark }
    }

    /// tshark's exit code and the sequence numbers of the packets it read.
    fn tshark_result(self) -> (i32, Vec<u32>, String) {
        let out = self.tshark.wait_with_output().unwrap();
        let seqs = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| u32::from_str_radix(&l[..8], 16).unwrap())
            .collect();
        (
            out.status.code().unwrap_or(-1),
            seqs,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn stdout_stream_reads_in_tshark_with_exactly_the_packets_sent() {
    require_root();
    // Stopped by SIGTERM: every packet sent, in order.
    let port = unique_port();
    let mut p = Pipeline::start(port, &[], &[]);
    send_udp(port, 200, 50);
    std::thread::sleep(Duration::from_millis(300));
    p.capture.signal(Signal::SIGTERM);
    let st = p.capture.wait_timeout(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", p.capture.log_text());
    let log = p.capture.log_text();
    assert!(log.contains("\n200 packets written to stdout"), "{log}");
    assert!(!log.contains("full disk"), "{log}");
    let (code, seqs, err) = p.tshark_result();
    assert_eq!(code, 0, "tshark: {err}");
    assert!(!err.contains("cut short"), "tshark: {err}");
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());

    // Stopped by -c: exactly the first 50 of 80.
    let port = unique_port();
    let mut p = Pipeline::start(port, &["-c", "50"], &[]);
    send_udp(port, 80, 50);
    let st = p.capture.wait_timeout(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", p.capture.log_text());
    let (code, seqs, err) = p.tshark_result();
    assert_eq!(code, 0, "tshark: {err}");
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());

    // pcapng on stdout: the same packets, read as pcapng by tshark from the pipe.
    let port = unique_port();
    let mut p = Pipeline::start(port, &["-c", "30", "--format", "pcapng"], &[]);
    send_udp(port, 40, 50);
    let st = p.capture.wait_timeout(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", p.capture.log_text());
    let (code, seqs, err) = p.tshark_result();
    assert_eq!(code, 0, "tshark: {err}");
    assert_eq!(seqs, (0..30).collect::<Vec<_>>());
}

#[test]
fn stdout_reader_that_quits_ends_the_capture_with_exit_0() {
    require_root();
    let port = unique_port();
    // tshark stops reading after 5 packets, like a user closing Wireshark.
    let mut p = Pipeline::start(port, &["--flush-interval", "100ms"], &["-c", "5"]);
    let t0 = Instant::now();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0u32;
    while p.capture.child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still running; log:\n{}",
            p.capture.log_text()
        );
        sock.send_to(&sent.to_be_bytes(), ("127.0.0.1", port))
            .unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = p.capture.wait_timeout(Duration::from_secs(1));
    let log = p.capture.log_text();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(
        log.contains("The reader of stdout closed the pipe"),
        "{log}"
    );
    assert!(
        log.contains("packets written to stdout"),
        "the summary is printed: {log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    let (code, seqs, _) = p.tshark_result();
    assert_eq!(code, 0);
    assert_eq!(seqs, vec![0, 1, 2, 3, 4], "after {sent} sent");
}

#[test]
fn stdout_refuses_file_options_and_a_terminal() {
    require_root();
    for (args, name) in [
        (&["-C", "10"][..], "--rotate-size (-C)"),
        (&["-G", "30s"], "--rotate-interval (-G)"),
        (&["-W", "4"], "--max-files (-W)"),
        (&["--max-total-size", "1GiB"], "--max-total-size"),
        (&["--prefix", "mine"], "--prefix"),
    ] {
        let out = Command::new(bin())
            .args(["capture", "-i", "lo", "-w", "-", "--listen", "off"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{name} cannot be used with -w -")),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "nothing on stdout");
    }
    // Binary pcap on a terminal: refused before anything is opened.
    let mut p = on_terminal(
        &format!("{} capture -i lo -w - --listen off", bin().display()),
        100,
        &[],
    );
    assert_eq!(p.wait(Duration::from_secs(10)), 3);
    let out = p.text();
    assert!(out.contains("stdout is a terminal"), "{out:?}");
    assert!(!out.contains("Capture is live"), "{out:?}");
}

#[test]
fn list_interfaces_reads_like_tcpdump_d_plus_addresses() {
    require_root();
    // Other tests create and delete interfaces: compare two listings taken close together, and
    // try again if an interface came or went in between.
    for attempt in 0.. {
        let ours = Command::new(bin())
            .args(["capture", "-D"])
            .output()
            .unwrap();
        let theirs = Command::new("tcpdump").arg("-D").output().unwrap();
        assert_eq!(ours.status.code(), Some(0));
        let ours = String::from_utf8(ours.stdout).unwrap();
        let theirs = String::from_utf8(theirs.stdout).unwrap();
        let (a, b): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
        if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| !x.starts_with(y)) {
            assert!(attempt < 5, "ours:\n{ours}\ntcpdump -D:\n{theirs}");
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        for (x, y) in a.iter().zip(&b) {
            // What follows tcpdump's text is addresses with prefix lengths.
            for addr in x[y.len()..].split_whitespace() {
                let (ip, bits) = addr.split_once('/').unwrap_or((addr, "0"));
                assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{x}");
                assert!(bits.parse::<u8>().unwrap() <= 128, "{x}");
            }
        }
        let lo = a.iter().find(|l| l.contains(".lo [")).expect("lo listed");
        assert!(
            lo.contains("[Up, Running, Loopback] 127.0.0.1/8"),
            "lo with its flags and address: {lo}"
        );
        assert!(a.iter().any(|l| l.contains(".any (")), "{ours}");
        break;
    }
}
