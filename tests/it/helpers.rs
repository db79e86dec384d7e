//! Shared test helpers: the real binary, temp dirs, loopback traffic on dedicated ports,
//! the admin address from the log, pcap inspection with our own walker and with tshark.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the built binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sidecap"))
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests capture packets and create namespaces: run them as root (scripts/test.sh)"
    );
}

/// A UDP port no other test uses, so BPF filters isolate each test's traffic.
pub fn unique_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 20000) as u16;
    base + NEXT.fetch_add(7, Ordering::SeqCst)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sidecap-it-")
        .tempdir()
        .expect("temp dir")
}

/// A running sidecap process whose stderr is collected line by line.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sidecap");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                t0.elapsed() < timeout,
                "no log line with {needle:?} within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin address from the "Admin server listening" line (JSON logs).
    pub fn admin_addr(&self) -> String {
        let line = self.wait_log("Admin server listening", Duration::from_secs(10));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        v["addr"].as_str().expect("addr field").to_string()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads pick up the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return s;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sidecap capture` on `iface` into `dir` with JSON logs and an admin server on a free port.
pub fn capture_cmd(dir: &Path, iface: &str) -> Command {
    let mut c = Command::new(bin());
    c.args(["--log-format", "json", "capture", "-i", iface, "-w"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"]);
    c
}

/// Starts a capture and waits until it reports ready on /readyz.
pub fn start_capture(cmd: &mut Command) -> (Proc, String) {
    let p = Proc::spawn(cmd);
    let addr = p.admin_addr();
    wait_ready(&addr, Duration::from_secs(10));
    (p, addr)
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

pub fn wait_ready(addr: &str, timeout: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if matches!(http_get(addr, "/readyz"), Some((200, _))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("capture not ready within {timeout:?}");
}

/// Reads one metric's value from /metrics.
pub fn metric(addr: &str, name: &str) -> u64 {
    let (_, body) = http_get(addr, "/metrics").expect("metrics");
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{body}"))
}

/// Sends `n` UDP datagrams to 127.0.0.1:`port`; payload i carries the sequence number i.
pub fn send_udp(port: u16, n: u32, payload_len: usize) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = vec![0x5a; payload_len.max(4)];
    for i in 0..n {
        buf[..4].copy_from_slice(&i.to_be_bytes());
        s.send_to(&buf, ("127.0.0.1", port)).unwrap();
    }
}

/// Our pcap walker over a file.
pub fn scan(path: &Path) -> sidecap::pcapfile::Scan {
    sidecap::pcapfile::scan_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files in `dir` whose names end with `suffix`, sorted.
pub fn files_with(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// `tshark -r FILE -T fields -e FIELD` lines; asserts tshark reads the file without error.
pub fn tshark_fields(path: &Path, filter: Option<&str>, field: &str) -> Vec<String> {
    let mut c = Command::new("tshark");
    c.arg("-r").arg(path).args(["-T", "fields", "-e", field]);
    if let Some(f) = filter {
        c.args(["-Y", f]);
    }
    let out = c.output().expect("tshark installed (scripts/setup.sh)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && !err.contains("cut short")
            && !err.contains("appears to be damaged"),
        "tshark on {}: {err}",
        path.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The 4-byte sequence numbers carried by our UDP payloads in a file, in file order.
pub fn udp_seqs(path: &Path, port: u16) -> Vec<u32> {
    tshark_fields(path, Some(&format!("udp.dstport == {port}")), "udp.payload")
        .iter()
        .filter(|s| s.len() >= 8)
        .map(|s| u32::from_str_radix(&s[..8], 16).unwrap())
        .collect()
}

/// `capinfos -c FILE` packet count; asserts capinfos accepts the file.
pub fn capinfos_count(path: &Path) -> u64 {
    let out = Command::new("capinfos")
        .args(["-M", "-c"])
        .arg(path)
        .output()
        .expect("capinfos installed");
    assert!(
        out.status.success(),
        "capinfos on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Number of packets:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("capinfos output: {text}"))
}

/// `setpriv` running `binary` as nobody (uid and gid 65534, no supplementary groups), with
/// `extra` setpriv options (capability sets) before the program.
pub fn as_nobody(binary: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(extra)
        .arg("--")
        .arg(binary);
    c
}

/// Runs a command, asserting success; returns stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created by the test with a veth pair: `<a>` (10.231.x.1) inside it, like
/// a Pod's eth0, and its peer `<b>` (10.231.x.2) in a second namespace, like the node side, so
/// traffic from a to b really crosses the veth. Both namespaces are deleted on drop; the
/// addresses exist only inside them.
pub struct Netns {
    pub name: String,
    pub peer: String,
    pub a: String,
    pub b: String,
    pub a_ip: String,
    pub b_ip: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static N: AtomicU16 = AtomicU16::new(1);
        let n = N.fetch_add(1, Ordering::SeqCst) as u32;
        let id = std::process::id() % 10000;
        let name = format!("sc{tag}{id}x{n}");
        let peer = format!("{name}p");
        let (a, b) = (format!("v{id}x{n}a"), format!("v{id}x{n}b"));
        let octet = 1 + (id * 7 + n) % 250;
        let (a_ip, b_ip) = (format!("10.231.{octet}.1"), format!("10.231.{octet}.2"));
        for ns in [&name, &peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            sh("ip", &["netns", "add", ns]);
        }
        let ns = Netns {
            name,
            peer,
            a,
            b,
            a_ip,
            b_ip,
        };
        ns.exec_ok(&[
            "ip", "link", "add", &ns.a, "type", "veth", "peer", "name", &ns.b, "netns", &ns.peer,
        ]);
        ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.a_ip),
            "dev",
            &ns.a,
        ]);
        ns.exec_ok(&["ip", "link", "set", &ns.a, "up"]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns.peer,
                "ip",
                "addr",
                "add",
                &format!("{}/24", ns.b_ip),
                "dev",
                &ns.b,
            ],
        );
        sh(
            "ip",
            &["netns", "exec", &ns.peer, "ip", "link", "set", &ns.b, "up"],
        );
        ns
    }

    /// `ip netns exec <ns> <cmd...>` as a Command.
    pub fn command(&self, cmd: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(cmd);
        c
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs `f` with the calling thread inside the namespace (for sockets created by the test).
    pub fn enter<T>(&self, f: impl FnOnce() -> T + Send) -> T
    where
        T: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                let f_ns = std::fs::File::open(format!("/var/run/netns/{}", self.name))
                    .expect("netns file");
                nix::sched::setns(f_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.name, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// HTTP GET run inside a namespace (the admin server there is not reachable from outside).
pub fn http_get_in(ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    ns.enter(|| http_get(addr, path))
}

/// A tmpfs of `size` mounted under a fresh temp dir, unmounted on drop.
pub struct SmallFs {
    pub mnt: PathBuf,
    _base: tempfile::TempDir,
}

impl SmallFs {
    pub fn new(size: &str) -> SmallFs {
        let base = tempdir();
        let mnt = base.path().join("small");
        std::fs::create_dir(&mnt).unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                mnt.to_str().unwrap(),
            ],
        );
        SmallFs { mnt, _base: base }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
    }
}
