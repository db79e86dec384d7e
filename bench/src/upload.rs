//! Upload throughput (issue 15, item 5): one capture file (1 GiB by default) sent by
//! `sidecap upload`, the preStop path, to two destinations in the same run, alternating rep by
//! rep:
//!
//! - `s3`: a single-node Garage on 127.0.0.1 (scripts/garage-local.sh, the store the e2e test
//!   uses), `s3://bench/{file}`, multipart at the default part size;
//! - `webhook`: a receiver in this process on 127.0.0.1:0 that reads every body to the end and
//!   discards it (HTTP/1.1, Content-Length or chunked), answering 201 only after the last byte.
//!
//! Per upload: wall time from spawn to reap (start-up, file checks and digest included: what a
//! preStop spends), MB/s = file bytes / that time, the uploader's CPU and peak RSS from `wait4`.
//! Checked: exit 0, the receiver got exactly the file's bytes, the object has the file's size
//! and no multipart upload is left in Garage. The file is pcap with incompressible records
//! (random payloads, like TLS traffic), so Garage's zstd compression cannot make S3 look fast.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bucket the benchmark creates in its own Garage.
const BUCKET: &str = "bench";
/// Longest one upload may take before it is killed and reported.
const UPLOAD_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct UploadRun {
    pub dest: &'static str,
    pub rep: u32,
    pub bytes: u64,
    pub secs: f64,
    pub cpu_secs: f64,
    pub rss_kib: u64,
    /// CPU seconds the store (Garage) spent during the upload; the in-process webhook: none.
    pub store_cpu_secs: Option<f64>,
    pub exit_code: i32,
    pub problems: Vec<String>,
}

impl UploadRun {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }
}

pub struct Params<'a> {
    pub sidecap: &'a Path,
    pub work: &'a Path,
    pub size_mib: u64,
    pub reps: u32,
}

/// Runs every repetition for both destinations. A destination that cannot be set up (no
/// `garage`) is reported as a problem of its runs, not silently left out.
pub fn run(p: &Params) -> Result<Vec<UploadRun>, String> {
    let dir = p.work.join("upload");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = "capture-20261201T000000Z-000001.pcap";
    let source = dir.join(name);
    let t0 = Instant::now();
    let bytes = write_capture(&source, p.size_mib << 20)
        .map_err(|e| format!("{}: {e}", source.display()))?;
    eprintln!(
        "upload: wrote {} ({bytes} bytes) in {:.1} s",
        source.display(),
        t0.elapsed().as_secs_f64()
    );
    let sink = Sink::start()?;
    let garage = Garage::start(&dir.join("garage"));
    if let Err(e) = &garage {
        eprintln!("upload: no local Garage: {e}");
    }
    let mut runs = Vec::new();
    for rep in 0..p.reps {
        let mut dests = ["s3", "webhook"];
        dests.rotate_left(rep as usize % 2);
        for dest in dests {
            let run_dir = dir.join(format!("{dest}-{rep}"));
            std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
            // A hard link: the same page-cached bytes for every upload, no copy.
            std::fs::hard_link(&source, run_dir.join(name)).map_err(|e| format!("link: {e}"))?;
            let r = match (dest, &garage) {
                ("s3", Ok(g)) => one_s3(p.sidecap, &run_dir, g, name, bytes, rep),
                ("s3", Err(e)) => failed(dest, rep, bytes, format!("no local Garage: {e}")),
                _ => one_webhook(p.sidecap, &run_dir, &sink, bytes, rep),
            };
            eprintln!(
                "upload {:<7} rep {rep}: {:>7.1} MB/s ({:.2} s), cpu {:.2} s, peak RSS {:.1} MiB, store cpu {}, exit {}{}",
                r.dest,
                r.mb_per_s(),
                r.secs,
                r.cpu_secs,
                r.rss_kib as f64 / 1024.0,
                r.store_cpu_secs.map_or("-".into(), |c| format!("{c:.2} s")),
                r.exit_code,
                if r.problems.is_empty() { String::new() } else { format!("  PROBLEMS: {}", r.problems.join("; ")) }
            );
            runs.push(r);
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
    drop(garage);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(runs)
}

fn failed(dest: &'static str, rep: u32, bytes: u64, why: String) -> UploadRun {
    UploadRun {
        dest,
        rep,
        bytes,
        secs: 0.0,
        cpu_secs: 0.0,
        rss_kib: 0,
        store_cpu_secs: None,
        exit_code: -1,
        problems: vec![why],
    }
}

fn one_s3(sidecap: &Path, dir: &Path, g: &Garage, name: &str, bytes: u64, rep: u32) -> UploadRun {
    let creds = g.dir.join("credentials");
    let args = [
        "--url".to_string(),
        format!("s3://{BUCKET}/bench/{{file}}"),
        "--s3-endpoint".into(),
        g.endpoint.clone(),
        "--s3-region".into(),
        "garage".into(),
        "--s3-credentials-dir".into(),
        creds.display().to_string(),
    ];
    let before = proc_cpu_secs(g.pid);
    let mut r = upload(sidecap, dir, &args, "s3", rep, bytes);
    r.store_cpu_secs = before.zip(proc_cpu_secs(g.pid)).map(|(a, b)| b - a);
    let key = format!("bench/{name}");
    match g.object_size(&key) {
        Some(n) if n == bytes => {}
        other => r
            .problems
            .push(format!("object {key}: size {other:?}, file {bytes}")),
    }
    match g.uploads_in_progress() {
        Ok(0) => {}
        Ok(n) => r
            .problems
            .push(format!("{n} multipart upload(s) left in progress")),
        Err(e) => r.problems.push(format!("ListMultipartUploads: {e}")),
    }
    g.delete(&key);
    r
}

fn one_webhook(sidecap: &Path, dir: &Path, sink: &Sink, bytes: u64, rep: u32) -> UploadRun {
    let before = sink.bytes.load(Ordering::SeqCst);
    let args = [
        "--url".to_string(),
        format!("http://{}/in/{{file}}", sink.addr),
    ];
    let mut r = upload(sidecap, dir, &args, "webhook", rep, bytes);
    let got = sink.bytes.load(Ordering::SeqCst) - before;
    if got != bytes {
        r.problems.push(format!(
            "the receiver got {got} body bytes, the file has {bytes}"
        ));
    }
    r
}

/// `sidecap upload` on a directory holding one finished file and no capture (so it is final at
/// once), reaped with `wait4` for its CPU time and peak RSS.
fn upload(
    sidecap: &Path,
    dir: &Path,
    dest_args: &[String],
    dest: &'static str,
    rep: u32,
    bytes: u64,
) -> UploadRun {
    let log_path = dir.with_extension("log");
    let log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return failed(dest, rep, bytes, format!("{}: {e}", log_path.display())),
    };
    let mut cmd = Command::new(sidecap);
    cmd.args(["--log-format", "json", "upload", "--dir"])
        .arg(dir)
        .args(dest_args)
        .args([
            "--grace-period",
            "900s",
            "--safety-margin",
            "1s",
            "--log-to-pid1",
            "never",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_or(Stdio::null(), Stdio::from))
        .stderr(Stdio::from(log));
    let t0 = Instant::now();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return failed(
                dest,
                rep,
                bytes,
                format!("spawn {}: {e}", sidecap.display()),
            )
        }
    };
    let (exit_code, cpu_secs, rss_kib) = reap(child.id() as i32, UPLOAD_LIMIT);
    let secs = t0.elapsed().as_secs_f64();
    let mut problems = Vec::new();
    if exit_code != 0 {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(3)..];
        problems.push(format!("exit {exit_code}: {}", tail.join(" | ")));
    }
    let _ = std::fs::remove_file(&log_path);
    UploadRun {
        dest,
        rep,
        bytes,
        secs,
        cpu_secs,
        rss_kib,
        store_cpu_secs: None,
        exit_code,
        problems,
    }
}

/// User + system CPU seconds of a running process (/proc/PID/stat fields 14 and 15).
fn proc_cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks / hz)
}

/// Waits for our child `pid` (SIGKILL after `limit`): exit code, CPU seconds, peak RSS KiB.
fn reap(pid: i32, limit: Duration) -> (i32, f64, u64) {
    let (code, cpu, rss) = crate::tools::reap(pid, limit, Duration::from_millis(2));
    (code, cpu.as_secs_f64(), rss)
}

/// A classic pcap file of at least `target` bytes: Ethernet records of 1514 bytes whose
/// contents come from a xorshift generator (incompressible). Returns its size.
fn write_capture(path: &Path, target: u64) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    // magic, version 2.4, thiszone, sigfigs, snaplen, linktype 1 (Ethernet)
    let mut hdr = Vec::with_capacity(24);
    hdr.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 262_144, 1] {
        hdr.extend_from_slice(&v.to_le_bytes());
    }
    w.write_all(&hdr)?;
    let mut written = hdr.len() as u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rec = [0u8; 16 + 1514];
    let mut n: u32 = 0;
    while written < target {
        rec[0..4].copy_from_slice(&(1_764_547_200 + n / 100_000).to_le_bytes());
        rec[4..8].copy_from_slice(&((n % 100_000) * 10).to_le_bytes());
        rec[8..12].copy_from_slice(&1514u32.to_le_bytes());
        rec[12..16].copy_from_slice(&1514u32.to_le_bytes());
        for chunk in rec[16..].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        w.write_all(&rec)?;
        written += rec.len() as u64;
        n = n.wrapping_add(1);
    }
    w.flush()?;
    Ok(written)
}

/// The webhook: accepts connections on 127.0.0.1:0, reads each request's body to the end
/// (counting the bytes), then answers 201. Threads end with the process.
struct Sink {
    addr: String,
    bytes: Arc<AtomicU64>,
}

impl Sink {
    fn start() -> Result<Sink, String> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?.to_string();
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let c = counter.clone();
                std::thread::spawn(move || {
                    let _ = serve(s, &c);
                });
            }
        });
        Ok(Sink { addr, bytes })
    }
}

fn serve(s: TcpStream, bytes: &AtomicU64) -> std::io::Result<()> {
    let mut out = s.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    loop {
        let (mut length, mut chunked) = (0u64, false);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let got = if chunked {
            drain_chunked(&mut r)?
        } else {
            drain(&mut r, length)?
        };
        bytes.fetch_add(got, Ordering::SeqCst);
        out.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")?;
    }
}

fn drain(r: &mut impl Read, n: u64) -> std::io::Result<u64> {
    std::io::copy(&mut r.take(n), &mut std::io::sink())
}

fn drain_chunked(r: &mut BufReader<TcpStream>) -> std::io::Result<u64> {
    let mut total = 0;
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if size == 0 {
            // trailers until the empty line
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(total);
                }
            }
        }
        total += drain(r, size)?;
        line.clear();
        r.read_line(&mut line)?;
    }
}

/// A single-node Garage started by scripts/garage-local.sh, stopped (SIGTERM) on drop.
struct Garage {
    dir: PathBuf,
    endpoint: String,
    key: String,
    secret: String,
    pid: i32,
}

impl Garage {
    fn start(dir: &Path) -> Result<Garage, String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/garage-local.sh");
        let port = free_port_block()?;
        let out = Command::new(&script)
            .arg(dir)
            .arg(port.to_string())
            .arg(BUCKET)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let env = std::fs::read_to_string(dir.join("env")).map_err(|e| format!("env: {e}"))?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .ok_or(format!("{k} missing in {}", dir.join("env").display()))
        };
        let pid = std::fs::read_to_string(dir.join("garage.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or("no garage.pid")?;
        Ok(Garage {
            dir: dir.to_path_buf(),
            endpoint: get("S3_ENDPOINT")?,
            key: get("AWS_ACCESS_KEY_ID")?,
            secret: get("AWS_SECRET_ACCESS_KEY")?,
            pid,
        })
    }

    /// curl, SigV4-signed for region garage (the uploader's code is not used to check itself).
    fn curl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-m",
                "60",
                "--aws-sigv4",
                "aws:amz:garage:s3",
                "--user",
            ])
            .arg(format!("{}:{}", self.key, self.secret))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(args)
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn object_size(&self, key: &str) -> Option<u64> {
        let head = self
            .curl(&["-f", "-I", &format!("{}/{BUCKET}/{key}", self.endpoint)])
            .ok()?;
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
    }

    fn uploads_in_progress(&self) -> Result<usize, String> {
        let body = self.curl(&[&format!("{}/{BUCKET}?uploads=", self.endpoint)])?;
        if !body.contains("<ListMultipartUploadsResult") {
            return Err(body.chars().take(200).collect());
        }
        Ok(body.matches("<Upload>").count())
    }

    fn delete(&self, key: &str) {
        let _ = self.curl(&["-X", "DELETE", &format!("{}/{BUCKET}/{key}", self.endpoint)]);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // SAFETY: signalling the server the script started (its pid file); not our child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        for _ in 0..50 {
            // SAFETY: signal 0 only checks the pid exists.
            if unsafe { libc::kill(self.pid, 0) } != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port P with P, P+1 and P+3 free on 127.0.0.1 (Garage's S3, RPC and admin ports).
fn free_port_block() -> Result<u16, String> {
    // 30000-49999, away from the capture benchmark's 40000 + pid % 20000 only by chance: the
    // bind test is what counts.
    let start = std::process::id() % 5000;
    (0..200u32)
        .map(|i| (30000 + ((start + i) % 5000) * 4) as u16)
        .find(|&p| {
            [p, p + 1, p + 3]
                .iter()
                .all(|&q| TcpListener::bind(("127.0.0.1", q)).is_ok())
        })
        .ok_or_else(|| "no free block of ports for Garage".to_string())
}

/// The report section: per destination, min / median / max over the repetitions.
pub fn markdown(runs: &[UploadRun], load: &str) -> String {
    let size = runs.first().map_or(0, |r| r.bytes);
    let mut md = format!(
        "## Upload: one {:.0} MiB capture file through `sidecap upload`\n\n\
         S3 = a single-node Garage on 127.0.0.1 (scripts/garage-local.sh; multipart, default part \
         size); webhook = a receiver on 127.0.0.1 that reads each body to its end and discards it. \
         Same run, alternating. Wall time from spawn to exit (start-up and the digest included); \
         MB = 10^6 bytes; CPU and peak RSS of the uploader from `wait4`; the file is in the page \
         cache. Load average: {load} (2 shared cores: Garage, the receiver and the uploader \
         compete for them). min / **median** / max.\n\n\
         | destination | MB/s | seconds | uploader CPU s | uploader peak RSS MiB | Garage CPU s | runs ok |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
        size as f64 / 1048576.0
    );
    for dest in ["s3", "webhook"] {
        let of: Vec<&UploadRun> = runs.iter().filter(|r| r.dest == dest).collect();
        let ok: Vec<&&UploadRun> = of.iter().filter(|r| r.problems.is_empty()).collect();
        let f = |v: Vec<f64>, d: usize| {
            let (a, b, c) = crate::stop::spread(v);
            format!("{a:.d$} / **{b:.d$}** / {c:.d$}")
        };
        if ok.is_empty() {
            md += &format!("| {dest} | - | - | - | - | - | 0 of {} |\n", of.len());
            continue;
        }
        let store: Vec<f64> = ok.iter().filter_map(|r| r.store_cpu_secs).collect();
        md += &format!(
            "| {dest} | {} | {} | {} | {} | {} | {} of {} |\n",
            f(ok.iter().map(|r| r.mb_per_s()).collect(), 0),
            f(ok.iter().map(|r| r.secs).collect(), 2),
            f(ok.iter().map(|r| r.cpu_secs).collect(), 2),
            f(ok.iter().map(|r| r.rss_kib as f64 / 1024.0).collect(), 1),
            if store.is_empty() {
                "-".to_string()
            } else {
                f(store, 2)
            },
            ok.len(),
            of.len()
        );
    }
    md
}

pub fn csv(runs: &[UploadRun]) -> String {
    let mut s = String::from(
        "destination,rep,bytes,seconds,mb_per_s,cpu_secs,peak_rss_kib,store_cpu_secs,exit_code,problems\n",
    );
    for r in runs {
        s += &format!(
            "{},{},{},{:.3},{:.1},{:.3},{},{},{},\"{}\"\n",
            r.dest,
            r.rep,
            r.bytes,
            r.secs,
            r.mb_per_s(),
            r.cpu_secs,
            r.rss_kib,
            r.store_cpu_secs
                .map_or(String::new(), |c| format!("{c:.3}")),
            r.exit_code,
            r.problems.join("; ").replace('"', "'")
        );
    }
    s
}
