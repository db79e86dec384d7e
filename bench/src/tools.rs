//! The capture tools under test: how each is started with the same interface, snaplen, kernel
//! buffer, filter and rotation; how we know it is capturing; how it is stopped (SIGTERM) and
//! reaped with `wait4` for its resource usage; and what it says about kernel drops.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Sidecap,
    /// sidecap writing pcapng (`--format pcapng`): its CPU cost against classic pcap.
    SidecapPcapng,
    /// Another sidecap binary (the `SIDECAP_ALT` environment variable, a path), started like
    /// `sidecap`: an A/B of a code change in the same run.
    SidecapAlt,
    Tcpdump,
    Dumpcap,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Sidecap => "sidecap",
            Tool::SidecapPcapng => "sidecap-pcapng",
            Tool::SidecapAlt => "sidecap-alt",
            Tool::Tcpdump => "tcpdump",
            Tool::Dumpcap => "dumpcap",
        }
    }

    pub fn parse(s: &str) -> Option<Tool> {
        [
            Tool::Sidecap,
            Tool::SidecapPcapng,
            Tool::SidecapAlt,
            Tool::Tcpdump,
            Tool::Dumpcap,
        ]
        .into_iter()
        .find(|t| t.name() == s)
    }

    /// Either sidecap format: same binary, admin server, done marker.
    pub fn is_sidecap(self) -> bool {
        matches!(self, Tool::Sidecap | Tool::SidecapPcapng | Tool::SidecapAlt)
    }

    pub fn installed(self, sidecap: &Path) -> bool {
        match self {
            Tool::Sidecap | Tool::SidecapPcapng => sidecap.exists(),
            Tool::SidecapAlt => alt_sidecap().is_some_and(|p| p.exists()),
            t => Command::new("sh")
                .args(["-c", &format!("command -v {}", t.name())])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }
}

/// The binary of [`Tool::SidecapAlt`].
fn alt_sidecap() -> Option<std::path::PathBuf> {
    std::env::var_os("SIDECAP_ALT").map(Into::into)
}

/// What every tool gets alike.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    pub interface: String,
    pub filter: String,
    pub snaplen: u32,
    pub buffer_mib: u32,
    /// Rotate after this many million bytes (tcpdump's -C unit).
    pub rotate_mb: Option<u32>,
    /// Run the tool inside this network namespace.
    pub netns: Option<String>,
}

pub struct Running {
    pub tool: Tool,
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
    /// sidecap's admin address (host:port), inside `netns`.
    pub admin: Option<String>,
}

pub struct Finished {
    pub exit_code: i32,
    pub cpu: Duration,
    pub max_rss_kib: u64,
    /// SIGTERM to reaped.
    pub stop_latency: Duration,
    pub log: Vec<String>,
}

pub fn start(
    tool: Tool,
    sidecap: &Path,
    spec: &CaptureSpec,
    dir: &Path,
) -> Result<Running, String> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = &spec.netns {
        // `ip netns exec` execs the tool in place (no fork), so the pid we reap is the tool's.
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    let d = dir.display();
    match tool {
        Tool::Sidecap | Tool::SidecapPcapng | Tool::SidecapAlt => {
            let bin = match tool {
                Tool::SidecapAlt => alt_sidecap().ok_or("sidecap-alt: set SIDECAP_ALT")?,
                _ => sidecap.to_path_buf(),
            };
            argv.push(bin.display().to_string());
            argv.extend(
                [
                    "capture",
                    "-i",
                    &spec.interface,
                    "-w",
                    &d.to_string(),
                    "--prefix",
                    "cap",
                    "-s",
                    &spec.snaplen.to_string(),
                    "-B",
                    &format!("{}MiB", spec.buffer_mib),
                    "--listen",
                    "127.0.0.1:0",
                    "--log-format",
                    "json",
                ]
                .map(String::from),
            );
            if let Some(mb) = spec.rotate_mb {
                argv.extend(["-C".into(), format!("{mb}MB")]);
            }
            if tool == Tool::SidecapPcapng {
                argv.extend(["--format".into(), "pcapng".into()]);
            }
            argv.push("--filter".into());
            argv.push(spec.filter.clone());
        }
        Tool::Tcpdump => {
            argv.extend(
                [
                    "tcpdump",
                    // Debian's tcpdump drops to user tcpdump by default; keep root so it can
                    // write (and rotate) in our root-owned directory, like sidecap does.
                    "-Z",
                    "root",
                    "-n",
                    "-i",
                    &spec.interface,
                    "-w",
                    &format!("{d}/tcpdump.pcap"),
                    "-s",
                    &spec.snaplen.to_string(),
                    // tcpdump's -B is in KiB.
                    "-B",
                    &(spec.buffer_mib * 1024).to_string(),
                ]
                .map(String::from),
            );
            if let Some(mb) = spec.rotate_mb {
                argv.extend(["-C".into(), mb.to_string()]);
            }
            argv.push(spec.filter.clone());
        }
        Tool::Dumpcap => {
            argv.extend(
                [
                    "dumpcap",
                    "-i",
                    &spec.interface,
                    // Classic pcap, like the others (pcapng costs it more).
                    "-P",
                    "-w",
                    &format!("{d}/dumpcap.pcap"),
                    "-s",
                    &spec.snaplen.to_string(),
                    // dumpcap's -B is in MiB.
                    "-B",
                    &spec.buffer_mib.to_string(),
                    "-f",
                    &spec.filter,
                ]
                .map(String::from),
            );
            if let Some(mb) = spec.rotate_mb {
                argv.extend(["-b".into(), format!("filesize:{}", mb * 1000)]);
            }
        }
    }
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // dumpcap rewrites its packet count in place with \r.
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            for part in line.split(|b| *b == b'\r') {
                if !part.is_empty() && tx.send(String::from_utf8_lossy(part).into_owned()).is_err()
                {
                    return;
                }
            }
        }
    });
    let mut r = Running {
        tool,
        child,
        lines: rx,
        log: Vec::new(),
        admin: None,
    };
    r.wait_ready(Duration::from_secs(15))?;
    Ok(r)
}

impl Running {
    fn pump(&mut self, wait: Duration) -> bool {
        match self.lines.recv_timeout(wait) {
            Ok(l) => {
                if self.tool.is_sidecap() && l.contains("Admin server listening") {
                    self.admin = json_str(&l, "addr");
                }
                self.log.push(l);
                true
            }
            Err(_) => false,
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let needle = match self.tool {
            Tool::Sidecap | Tool::SidecapPcapng | Tool::SidecapAlt => "Capture is live.",
            Tool::Tcpdump => "listening on",
            Tool::Dumpcap => "Capturing on",
        };
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                while self.pump(Duration::from_millis(50)) {}
                return Err(format!(
                    "{} exited before capturing:\n{}",
                    self.tool.name(),
                    self.log.join("\n")
                ));
            }
            self.pump(Duration::from_millis(50));
            if self.log.iter().any(|l| l.contains(needle)) {
                // The handle is active and the filter set; give the first poll a moment.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
        }
        let _ = self.child.kill();
        Err(format!(
            "{} did not start capturing within {timeout:?}:\n{}",
            self.tool.name(),
            self.log.join("\n")
        ))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then reap with wait4 (SIGKILL after `timeout`). The stop latency is measured
    /// to the millisecond: the log lines are collected by their own thread meanwhile.
    pub fn stop(mut self, timeout: Duration) -> Finished {
        let pid = self.pid();
        let t0 = Instant::now();
        // SAFETY: signalling and reaping our own child by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (exit_code, cpu, max_rss_kib) = reap(pid, timeout, Duration::from_micros(500));
        let stop_latency = t0.elapsed();
        while self.pump(Duration::from_millis(100)) {}
        Finished {
            exit_code,
            cpu,
            max_rss_kib,
            stop_latency,
            log: self.log,
        }
    }
}

/// Waits for our child `pid`, polling every `poll`, and SIGKILLs it once `limit` has passed
/// (counted from the call): its exit code (128 + signal if killed by one), CPU time and peak RSS
/// in KiB, from `wait4`.
pub fn reap(pid: i32, limit: Duration, poll: Duration) -> (i32, Duration, u64) {
    let t0 = Instant::now();
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: reaping our own child by pid; WNOHANG polls.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid || r < 0 {
            break;
        }
        if t0.elapsed() > limit && !killed {
            killed = true;
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(poll);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss as u64)
}

/// The value of `"key":"..."` in a JSON line (our own log lines and markers only).
pub fn json_str(line: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":");
    let rest = line[line.find(&pat)? + pat.len()..].trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// The value of `"key": 123` in a JSON text (first occurrence).
pub fn json_u64(text: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let rest = text[text.find(&pat)? + pat.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Kernel drops as the tool reports them at exit.
pub fn reported_drops(tool: Tool, log: &[String], dir: &Path) -> Option<u64> {
    match tool {
        Tool::Sidecap | Tool::SidecapPcapng | Tool::SidecapAlt => {
            let m = std::fs::read_to_string(dir.join("cap.done")).ok()?;
            let k = &m[m.find("\"kernel\"")?..];
            json_u64(k, "dropped")
        }
        Tool::Tcpdump => log.iter().find_map(|l| {
            l.strip_suffix(" packets dropped by kernel")
                .and_then(|n| n.trim().parse().ok())
        }),
        // "Packets received/dropped on interface 'lo': 100/0 (pcap:0/dumpcap:0/...)"
        Tool::Dumpcap => log.iter().find_map(|l| {
            let i = l.find("(pcap:")? + 6;
            let n = &l[i..];
            n[..n.find('/')?].parse().ok()
        }),
    }
}

/// GET over plain HTTP/1.1, optionally from inside a network namespace (on a thread of its
/// own, since setns switches only the calling thread).
pub fn http_get(netns: Option<&str>, addr: &str, path: &str) -> Option<String> {
    let (addr, path) = (addr.to_string(), path.to_string());
    match netns {
        None => get_plain(&addr, &path),
        Some(ns) => {
            let ns = ns.to_string();
            std::thread::spawn(move || crate::gen::with_netns(&ns, || get_plain(&addr, &path)))
                .join()
                .ok()?
                .ok()?
        }
    }
}

fn get_plain(addr: &str, path: &str) -> Option<String> {
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
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// A metric value from Prometheus text (`name{labels} value`).
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
