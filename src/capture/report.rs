//! What a person at a terminal sees of a capture: the status line (redrawn by
//! [`crate::term::StatusLine`]), the statistics printed on SIGUSR1 and the tcpdump-style summary
//! at exit. All of it is read from the counters in [`CaptureMetrics`] or from the done marker,
//! never from the packet path.
//!
//! Kernel counts: on a loopback device the kernel hands every packet to a packet socket twice
//! (outgoing and incoming). tcpdump's libpcap discards the outgoing copy in user space, so its
//! `ps_recv` is twice the packets ("100 packets captured, 200 received by filter"); sidecap's
//! kernel filter drops that copy ([`super::loopback`]), so on `lo` the counts are per packet. On
//! `any` the loopback share is still counted twice, which cannot be separated out, so the raw
//! figure is shown with that explanation.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::output::Dest;
use crate::cli::LogFormat;
use crate::config::human_bytes;
use crate::files::{DoneMarker, Layout};
use crate::metrics::CaptureMetrics;

/// The counters a summary reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub captured: u64,
    pub written: u64,
    pub kernel_received: u64,
    pub kernel_dropped: u64,
    pub interface_dropped: u64,
    pub disk_dropped: u64,
}

impl Counts {
    pub fn from_metrics(m: &CaptureMetrics) -> Counts {
        Counts {
            captured: m.packets_captured.load(Relaxed),
            written: m.packets_written.load(Relaxed),
            kernel_received: m.kernel_received.load(Relaxed),
            kernel_dropped: m.kernel_dropped.load(Relaxed),
            interface_dropped: m.interface_dropped.load(Relaxed),
            disk_dropped: m.disk_dropped_packets.load(Relaxed),
        }
    }

    pub fn from_marker(m: &DoneMarker) -> Counts {
        Counts {
            captured: m.packets_captured,
            written: m.packets_written,
            kernel_received: m.kernel.received,
            kernel_dropped: m.kernel.dropped,
            interface_dropped: m.kernel.interface_dropped,
            disk_dropped: m.disk_dropped_packets,
        }
    }
}

/// One "N packets <what>" line from a kernel count, with the double count on `any` explained.
fn kernel_line(out: &mut String, interface: &str, n: u64, what: &str) {
    let _ = match interface {
        "any" if n > 0 => writeln!(
            out,
            "{n} packets {what} (kernel count: packets on lo are counted twice on any)"
        ),
        _ => writeln!(out, "{n} packets {what}"),
    };
}

/// The summary text. `files` is the last line (which files), if there is one.
pub fn summary_text(interface: &str, c: &Counts, dest: &Dest, files: Option<String>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{} packets captured", c.captured);
    kernel_line(&mut s, interface, c.kernel_received, "received by filter");
    kernel_line(&mut s, interface, c.kernel_dropped, "dropped by kernel");
    if c.interface_dropped > 0 {
        let _ = writeln!(s, "{} packets dropped by interface", c.interface_dropped);
    }
    match dest {
        Dest::Stdout => {
            let _ = writeln!(s, "{} packets written to stdout", c.written);
        }
        Dest::Dir(layout) => {
            let _ = writeln!(
                s,
                "{} packets written to {}",
                c.written,
                layout.dir.display()
            );
            let _ = writeln!(s, "{} packets dropped on a full disk", c.disk_dropped);
        }
    }
    if let Some(f) = files {
        s.push_str(&f);
        s.push('\n');
    }
    s
}

/// The files line of the exit summary.
fn final_files(names: &[String], deleted: u64) -> String {
    let mut s = match names {
        [] => "no file finished".to_string(),
        [one] => format!("1 file: {one}"),
        [first, .., last] => format!("{} files: {first} ... {last}", names.len()),
    };
    if deleted > 0 {
        let _ = write!(s, " ({deleted} deleted by the ring bound)");
    }
    s
}

/// The `.pcap.part` being written: the newest of this prefix's files in the directory.
fn current_file(layout: &Layout) -> Option<String> {
    let files = layout.list().ok()?;
    files
        .into_iter()
        .rev()
        .find(|f| !f.finished)
        .map(|f| f.name)
}

/// The tcpdump-style summary at exit, from the done marker.
pub fn exit_summary(marker: &DoneMarker, dest: &Dest) -> String {
    let files = match dest {
        Dest::Stdout => None,
        Dest::Dir(_) => Some(final_files(&marker.files, marker.files_deleted)),
    };
    summary_text(&marker.interface, &Counts::from_marker(marker), dest, files)
}

/// What SIGUSR1 prints (text logs) or logs (JSON logs), while the capture goes on. Kernel
/// counts are as of the last flush tick (`--flush-interval`).
pub fn print_statistics(interface: &str, m: &CaptureMetrics, dest: &Dest, format: LogFormat) {
    let c = Counts::from_metrics(m);
    if format == LogFormat::Json {
        tracing::info!(
            signal = "SIGUSR1",
            packets_captured = c.captured,
            kernel_received = c.kernel_received,
            kernel_dropped = c.kernel_dropped,
            interface_dropped = c.interface_dropped,
            packets_written = c.written,
            disk_dropped = c.disk_dropped,
            files_finished = m.files_finished.load(Relaxed),
            "Statistics."
        );
        return;
    }
    let files = match dest {
        Dest::Stdout => None,
        Dest::Dir(layout) => Some(format!(
            "{} files finished, writing {}",
            m.files_finished.load(Relaxed),
            current_file(layout).unwrap_or_else(|| "nothing".into())
        )),
    };
    crate::term::print_block(&summary_text(interface, &c, dest, files));
}

/// What the status line shows at one moment.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub elapsed: Duration,
    pub packets: u64,
    pub per_second: u64,
    pub bytes_written: u64,
    /// As reported (halved on lo).
    pub kernel_dropped: u64,
    pub disk_dropped: u64,
    pub current: String,
}

/// Renders the status line into `width` columns; drops are highlighted with `hl`.
pub fn status_text(p: &Progress, width: usize, hl: &str) -> String {
    let t = p.elapsed.as_secs();
    let mut pieces = vec![
        (
            format!("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60),
            false,
        ),
        (format!("{} packets", p.packets), false),
        (format!("{}/s", p.per_second), false),
        (format!("{} written", human_bytes(p.bytes_written)), false),
        (
            format!("kernel drops {}", p.kernel_dropped),
            p.kernel_dropped > 0,
        ),
    ];
    if p.disk_dropped > 0 {
        pieces.push((format!("disk drops {}", p.disk_dropped), true));
    }
    pieces.push((p.current.clone(), false));
    crate::term::fit(&pieces, width, hl)
}

/// The render function of the status line: reads the counters, computes the rate since the last
/// draw, and finds the current file again only after a rotation (one directory listing per file).
pub fn status_renderer(
    metrics: Arc<CaptureMetrics>,
    dest: Dest,
    first_file: Option<PathBuf>,
) -> crate::term::Render {
    let started = Instant::now();
    let mut last = (started, 0u64);
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut current = first_file.as_deref().map(name).unwrap_or_default();
    let mut seen_finished = 0;
    let hl = crate::term::highlight();
    Box::new(move |width| {
        let now = Instant::now();
        let packets = metrics.packets_captured.load(Relaxed);
        let dt = now.duration_since(last.0).as_secs_f64();
        let per_second = if dt > 0.0 {
            ((packets - last.1.min(packets)) as f64 / dt).round() as u64
        } else {
            0
        };
        last = (now, packets);
        match &dest {
            Dest::Stdout => current = "stdout".into(),
            Dest::Dir(layout) => {
                let finished = metrics.files_finished.load(Relaxed);
                if finished != seen_finished {
                    seen_finished = finished;
                    current = current_file(layout).unwrap_or_default();
                }
            }
        }
        let p = Progress {
            elapsed: now.duration_since(started),
            packets,
            per_second,
            bytes_written: metrics.bytes_written.load(Relaxed),
            kernel_dropped: metrics.kernel_dropped.load(Relaxed),
            disk_dropped: metrics.disk_dropped_packets.load(Relaxed),
            current: current.clone(),
        };
        status_text(&p, width, hl)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Counts {
        Counts {
            captured: 100,
            written: 100,
            kernel_received: 200,
            kernel_dropped: 0,
            interface_dropped: 0,
            disk_dropped: 0,
        }
    }

    #[test]
    fn summary_on_lo_gives_the_kernel_counts_as_they_are() {
        let dest = Dest::Dir(Layout::new("/tmp/cap", "capture"));
        let files = Some(final_files(&["capture-1.pcap".into()], 0));
        let s = summary_text("lo", &counts(), &dest, files);
        assert_eq!(
            s,
            "100 packets captured\n\
             200 packets received by filter\n\
             0 packets dropped by kernel\n\
             100 packets written to /tmp/cap\n\
             0 packets dropped on a full disk\n\
             1 file: capture-1.pcap\n"
        );
    }

    #[test]
    fn summary_on_any_explains_and_on_eth0_is_plain() {
        let mut c = counts();
        c.kernel_dropped = 7;
        c.interface_dropped = 2;
        let s = summary_text("any", &c, &Dest::Stdout, None);
        assert!(s.contains(
            "200 packets received by filter (kernel count: packets on lo are counted twice on any)"
        ));
        assert!(s.contains("7 packets dropped by kernel (kernel count"));
        assert!(s.contains("2 packets dropped by interface\n"));
        assert!(s.ends_with("100 packets written to stdout\n"));
        assert!(!s.contains("full disk"), "no disk with -w -");
        let s = summary_text("eth0", &c, &Dest::Stdout, None);
        assert!(s.contains("\n200 packets received by filter\n7 packets dropped by kernel\n"));
    }

    #[test]
    fn files_line_names_first_and_last_and_the_ring_deletions() {
        assert_eq!(final_files(&[], 0), "no file finished");
        let names: Vec<String> = (1..=3).map(|i| format!("c-{i}.pcap")).collect();
        assert_eq!(
            final_files(&names, 2),
            "3 files: c-1.pcap ... c-3.pcap (2 deleted by the ring bound)"
        );
    }

    #[test]
    fn status_line_highlights_drops_only_when_there_are_some() {
        let mut p = Progress {
            elapsed: Duration::from_secs(3725),
            packets: 1234,
            per_second: 98,
            bytes_written: 3 << 20,
            kernel_dropped: 0,
            disk_dropped: 0,
            current: "capture-x.pcap.part".into(),
        };
        let s = status_text(&p, 200, "<HL>");
        assert_eq!(
            s,
            "1:02:05  1234 packets  98/s  3.0 MiB written  kernel drops 0  capture-x.pcap.part"
        );
        p.kernel_dropped = 5;
        p.disk_dropped = 9;
        let s = status_text(&p, 200, "<HL>");
        assert!(s.contains("<HL>kernel drops 5\x1b[0m  <HL>disk drops 9\x1b[0m"));
    }
}
