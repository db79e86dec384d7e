//! How fast and how completely a tool stops on SIGTERM (issue 17, item 1), rep by rep with the
//! tools interleaved:
//!
//! - `idle`: the tool has captured nothing for a second; SIGTERM; time until it is reaped.
//! - `burst`: `BURST` packets sent as fast as one core can (in this process, so the signal follows
//!   the last `sendmmsg` within microseconds), then SIGTERM at once; time until reaped, and how
//!   many of the packets are in the files. A tool that exits without reading the kernel block
//!   that had not been retired yet loses the burst's tail.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::gen::{self, GenArgs};
use crate::pcapcount;
use crate::tools::{self, CaptureSpec, Tool};

pub const BURST: u64 = 3000;

#[derive(Debug, Clone)]
pub struct StopRun {
    pub tool: String,
    pub case: &'static str,
    pub rep: u32,
    pub latency_ms: f64,
    pub sent: u64,
    pub kept: u64,
    pub exit_code: i32,
    /// Microseconds from the last packet handed to the kernel to the signal.
    pub signal_after_us: u64,
}

pub fn run_one(
    sidecap: &Path,
    work: &Path,
    port: u16,
    tool: Tool,
    burst: bool,
    rep: u32,
) -> Result<StopRun, String> {
    let case = if burst { "burst" } else { "idle" };
    let dir = work.join(format!("stop-{case}-{}-{rep}", tool.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec = CaptureSpec {
        interface: "lo".into(),
        filter: format!("udp dst port {port}"),
        snaplen: 262_144,
        buffer_mib: 32,
        rotate_mb: None,
        netns: None,
    };
    let running = tools::start(tool, sidecap, &spec, &dir)?;
    let (sent, after) = if burst {
        let a = GenArgs {
            dst: SocketAddrV4::new([127, 0, 0, 1].into(), port),
            size: 64,
            count: BURST,
            rate: None,
            batch: 64,
            threads: 1,
            sink_netns: None,
            max_time: Duration::from_secs(10),
        };
        let g = gen::run(&a)?;
        (g.sent, Instant::now())
    } else {
        // Idle for longer than any tool's block timeout (tcpdump's 1 s).
        std::thread::sleep(Duration::from_millis(1100));
        (0, Instant::now())
    };
    let signal_after_us = after.elapsed().as_micros() as u64;
    let fin = running.stop(Duration::from_secs(20));
    let (total, _) = pcapcount::count_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(StopRun {
        tool: tool.name().into(),
        case,
        rep,
        latency_ms: fin.stop_latency.as_secs_f64() * 1e3,
        sent,
        kept: total.packets,
        exit_code: fin.exit_code,
        signal_after_us,
    })
}

/// min / median / max.
pub fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

pub fn markdown(runs: &[StopRun], tools: &[Tool]) -> String {
    let mut md = String::from(
        "## Stop: SIGTERM to exit, and the burst's tail\n\n\
         `idle`: nothing captured for 1.1 s, then SIGTERM. `burst`: 3000 × 64 B UDP on `lo` as fast \
         as one core sends, SIGTERM within microseconds of the last `sendmmsg`. Times are SIGTERM \
         to reaped (`wait4`), min / median / max over the repetitions.\n\n\
         | tool | idle stop ms | burst stop ms | burst packets kept (min / median / max of 3000) | exit codes |\n\
         |---|--:|--:|--:|---|\n",
    );
    for t in tools {
        let of = |case: &'static str| {
            runs.iter()
                .filter(move |r| r.tool == t.name() && r.case == case)
        };
        let fmt = |(a, b, c): (f64, f64, f64)| format!("{a:.0} / **{b:.0}** / {c:.0}");
        let idle = spread(of("idle").map(|r| r.latency_ms).collect());
        let burst = spread(of("burst").map(|r| r.latency_ms).collect());
        let kept = spread(of("burst").map(|r| r.kept as f64).collect());
        let mut codes: Vec<i32> = of("idle").chain(of("burst")).map(|r| r.exit_code).collect();
        codes.sort();
        codes.dedup();
        md += &format!(
            "| {} | {} | {} | {:.0} / **{:.0}** / {:.0} | {:?} |\n",
            t.name(),
            fmt(idle),
            fmt(burst),
            kept.0,
            kept.1,
            kept.2,
            codes
        );
    }
    md
}

pub fn csv(runs: &[StopRun]) -> String {
    let mut s = String::from("tool,case,rep,latency_ms,sent,kept,exit_code,signal_after_us\n");
    for r in runs {
        s += &format!(
            "{},{},{},{:.2},{},{},{},{}\n",
            r.tool, r.case, r.rep, r.latency_ms, r.sent, r.kept, r.exit_code, r.signal_after_us
        );
    }
    s
}
