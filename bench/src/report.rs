//! Medians over repetitions, the Markdown and CSV tables, and the SVG plot.

use std::fmt::Write;
use std::path::Path;

use plotters::prelude::*;

use crate::runner::{RunResult, Scenario};

/// Medians of one (scenario, tool) over its repetitions.
#[derive(Debug, Clone)]
pub struct Agg {
    pub scenario: String,
    pub tool: String,
    pub reps: usize,
    pub sent: f64,
    pub offered_pps: f64,
    pub captured: f64,
    pub ratio: f64,
    pub ratio_min: f64,
    pub drops: Option<f64>,
    pub cpu_per_mpkt: f64,
    pub rss_mib: f64,
    pub write_mbps: f64,
    pub files: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn aggregate(scenarios: &[Scenario], runs: &[RunResult]) -> Vec<Agg> {
    let mut out = Vec::new();
    for sc in scenarios {
        for tool in ["sidecap", "sidecap-pcapng", "tcpdump", "dumpcap"] {
            let rs: Vec<&RunResult> = runs
                .iter()
                .filter(|r| r.scenario == sc.name && r.tool == tool)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&RunResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let drops: Vec<f64> = rs
                .iter()
                .filter_map(|r| r.drops.map(|d| d as f64))
                .collect();
            out.push(Agg {
                scenario: sc.name.clone(),
                tool: tool.into(),
                reps: rs.len(),
                sent: m(&|r| r.sent as f64),
                offered_pps: m(&|r| r.offered_pps()),
                captured: m(&|r| r.captured as f64),
                ratio: m(&|r| r.ratio()),
                ratio_min: rs.iter().map(|r| r.ratio()).fold(f64::INFINITY, f64::min),
                drops: (!drops.is_empty()).then(|| median(drops)),
                cpu_per_mpkt: m(&|r| r.cpu_per_mpkt()),
                rss_mib: m(&|r| r.rss_kib as f64 / 1024.0),
                write_mbps: m(&|r| r.write_mbps()),
                files: m(&|r| r.files as f64),
            });
        }
    }
    out
}

pub fn runs_csv(runs: &[RunResult]) -> String {
    let mut s = String::from("scenario,tool,rep,sent,gen_secs,offered_pps,wire_rx,captured,capture_ratio,kernel_drops_reported,cpu_secs,cpu_s_per_mpkt,peak_rss_kib,bytes_written,write_mb_per_s,files,exit_code,metrics_written,marker_written,machine_busy_secs,machine_s_per_mpkt,mem_free_mib,mem_cached_mib,mem_dirty_mib,loadavg,stop_ms,problems\n");
    for r in runs {
        let o = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "{},{},{},{},{:.3},{:.0},{},{},{:.6},{},{:.3},{:.4},{},{},{:.2},{},{},{},{},{:.3},{:.4},{},{},{},{},{:.1},\"{}\"",
            r.scenario,
            r.tool,
            r.rep,
            r.sent,
            r.gen_secs,
            r.offered_pps(),
            o(r.wire),
            r.captured,
            r.ratio(),
            o(r.drops),
            r.cpu_secs,
            r.cpu_per_mpkt(),
            r.rss_kib,
            r.bytes,
            r.write_mbps(),
            r.files,
            r.exit_code,
            o(r.metrics_written),
            o(r.marker_written),
            r.machine_secs,
            r.machine_per_mpkt(),
            r.mem.free_mib,
            r.mem.cached_mib,
            r.mem.dirty_mib,
            r.load,
            r.stop_ms,
            r.problems.join("; ").replace('"', "'"),
        );
    }
    s
}

pub fn agg_csv(aggs: &[Agg]) -> String {
    let mut s = String::from("scenario,tool,reps,sent,offered_pps,captured,capture_ratio,capture_ratio_min,kernel_drops_reported,cpu_s_per_mpkt,peak_rss_mib,write_mb_per_s,files\n");
    for a in aggs {
        let _ = writeln!(
            s,
            "{},{},{},{:.0},{:.0},{:.0},{:.6},{:.6},{},{:.4},{:.1},{:.2},{:.0}",
            a.scenario,
            a.tool,
            a.reps,
            a.sent,
            a.offered_pps,
            a.captured,
            a.ratio,
            a.ratio_min,
            a.drops.map(|d| format!("{d:.0}")).unwrap_or_default(),
            a.cpu_per_mpkt,
            a.rss_mib,
            a.write_mbps,
            a.files
        );
    }
    s
}

fn pct(r: f64) -> String {
    if (0.99995..=1.0).contains(&r) {
        "100%".into()
    } else {
        format!("{:.2}%", r * 100.0)
    }
}

/// The per-tool table and the sidecap/tcpdump headline table.
pub fn markdown(scenarios: &[Scenario], aggs: &[Agg]) -> String {
    let mut s = String::new();
    s += "Headline: sidecap / tcpdump (medians). Capture ratio > 1 means sidecap kept more packets; CPU < 1 means it spent less per captured packet.\n\n";
    s += "| scenario | offered kpps | capture ratio sidecap | capture ratio tcpdump | captured sidecap/tcpdump | CPU per packet sidecap/tcpdump | peak RSS MiB sidecap / tcpdump |\n|---|--:|--:|--:|--:|--:|--:|\n";
    for sc in scenarios {
        let get = |t: &str| aggs.iter().find(|a| a.scenario == sc.name && a.tool == t);
        if let (Some(a), Some(b)) = (get("sidecap"), get("tcpdump")) {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {:.3}x | {:.2}x | {:.1} / {:.1} |",
                sc.name,
                b.offered_pps / 1e3,
                pct(a.ratio),
                pct(b.ratio),
                a.captured / b.captured.max(1.0),
                a.cpu_per_mpkt / b.cpu_per_mpkt,
                a.rss_mib,
                b.rss_mib
            );
        }
    }
    let ng: Vec<(&Agg, &Agg)> = scenarios
        .iter()
        .filter_map(|sc| {
            let get = |t: &str| aggs.iter().find(|a| a.scenario == sc.name && a.tool == t);
            Some((get("sidecap-pcapng")?, get("sidecap")?))
        })
        .collect();
    if !ng.is_empty() {
        s += "\nsidecap pcapng / pcap format (medians; CPU < 1 means pcapng spent less per captured packet):\n\n| scenario | capture ratio pcapng | capture ratio pcap | CPU per packet pcapng/pcap | written MB/s pcapng / pcap |\n|---|--:|--:|--:|--:|\n";
        for (a, b) in ng {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2}x | {:.1} / {:.1} |",
                a.scenario,
                pct(a.ratio),
                pct(b.ratio),
                a.cpu_per_mpkt / b.cpu_per_mpkt,
                a.write_mbps,
                b.write_mbps
            );
        }
    }
    s += "\nPer tool (medians; kernel drops are what the tool reports: libpcap ps_drop, which on `lo` counts each packet twice):\n\n";
    s += "| scenario | tool | reps | sent | offered kpps | captured (in files) | capture ratio (min) | kernel drops reported | CPU s / M pkt | peak RSS MiB | written MB/s |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
    for a in aggs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} ({}) | {} | {:.3} | {:.1} | {:.1} |",
            a.scenario,
            a.tool,
            a.reps,
            a.sent,
            a.offered_pps / 1e3,
            a.captured,
            pct(a.ratio),
            pct(a.ratio_min),
            a.drops.map(|d| format!("{d:.0}")).unwrap_or("-".into()),
            a.cpu_per_mpkt,
            a.rss_mib,
            a.write_mbps
        );
    }
    s += "\nScenarios:\n\n";
    for sc in scenarios {
        let _ = writeln!(s, "- `{}`: {}", sc.name, sc.describe());
    }
    s
}

/// Capture ratio and CPU per packet against offered rate, for the 64-byte loopback scenarios
/// (fixed rates and saturation).
pub fn plot(aggs: &[Agg], path: &Path) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let pts = |tool: &str| -> Vec<(f64, f64, f64)> {
        let mut v: Vec<(f64, f64, f64)> = aggs
            .iter()
            .filter(|a| {
                a.tool == tool
                    && a.scenario.starts_with("lo-")
                    && a.scenario.ends_with("-64")
                    && (a.scenario.contains("-rate-") || a.scenario.contains("-sat-"))
            })
            .map(|a| (a.offered_pps / 1e3, a.ratio * 100.0, a.cpu_per_mpkt))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let tools: Vec<(&str, RGBColor)> = vec![
        ("sidecap", RGBColor(0x1f, 0x77, 0xb4)),
        ("tcpdump", RGBColor(0xd6, 0x27, 0x28)),
        ("dumpcap", RGBColor(0x7f, 0x7f, 0x7f)),
    ];
    type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64, f64)>);
    let series: Vec<Series> = tools
        .into_iter()
        .map(|(t, c)| (t, c, pts(t)))
        .filter(|s| !s.2.is_empty())
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    let xmax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        * 1.08;
    let rmin = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(100.0, f64::min);
    let ymin = (rmin - (100.0 - rmin) * 0.2 - 0.5).max(0.0).floor();
    let cmax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.2))
        .fold(0.0, f64::max)
        * 1.15;

    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(550);
    {
        let mut c = ChartBuilder::on(&left)
            .caption(
                "Capture ratio vs offered rate (lo, 64 B UDP)",
                ("sans-serif", 17),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..xmax, ymin..100.5)
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .x_desc("offered kpps")
            .y_desc("captured / sent (%)")
            .draw()
            .map_err(|x| e(&x))?;
        for (name, color, p) in &series {
            c.draw_series(LineSeries::new(
                p.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
            c.draw_series(p.iter().map(|p| Circle::new((p.0, p.1), 4, color.filled())))
                .map_err(|x| e(&x))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
    }
    {
        let mut c = ChartBuilder::on(&right)
            .caption("CPU per captured packet (lo, 64 B UDP)", ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..xmax, 0.0..cmax)
            .map_err(|x| e(&x))?;
        c.configure_mesh()
            .x_desc("offered kpps")
            .y_desc("CPU seconds per million packets")
            .draw()
            .map_err(|x| e(&x))?;
        for (name, color, p) in &series {
            c.draw_series(LineSeries::new(
                p.iter().map(|p| (p.0, p.2)),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
            c.draw_series(p.iter().map(|p| Circle::new((p.0, p.2), 4, color.filled())))
                .map_err(|x| e(&x))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// sidecap against tcpdump in the same repetition (the two ran back to back under the same
/// load and memory state): the ratios a claim and the CI gate rest on.
#[derive(Debug, Clone)]
pub struct Paired {
    pub scenario: String,
    pub reps: usize,
    pub offered_kpps: f64,
    /// Per-repetition CPU per captured packet, sidecap / tcpdump: min, median, max.
    pub cpu: (f64, f64, f64),
    /// The same with the whole machine's busy CPU over each run.
    pub machine: (f64, f64, f64),
    pub sent: u64,
    pub captured_sidecap: u64,
    pub captured_tcpdump: u64,
    pub rss_mib_sidecap: f64,
    pub rss_mib_tcpdump: f64,
    pub mem_free_mib: (u64, u64),
    pub mem_dirty_mib: (u64, u64),
}

fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], median(v.clone()), v[v.len() - 1])
}

pub fn paired(scenarios: &[Scenario], runs: &[RunResult]) -> Vec<Paired> {
    let mut out = Vec::new();
    for sc in scenarios {
        let of = |t: &str| -> Vec<&RunResult> {
            runs.iter()
                .filter(|r| r.scenario == sc.name && r.tool == t)
                .collect()
        };
        let (side, tcp) = (of("sidecap"), of("tcpdump"));
        let pairs: Vec<(&RunResult, &RunResult)> = side
            .iter()
            .filter_map(|a| Some((*a, *tcp.iter().find(|b| b.rep == a.rep)?)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let both = || pairs.iter().flat_map(|(a, b)| [*a, *b]);
        out.push(Paired {
            scenario: sc.name.clone(),
            reps: pairs.len(),
            offered_kpps: median(both().map(|r| r.offered_pps() / 1e3).collect()),
            cpu: spread(
                pairs
                    .iter()
                    .map(|(a, b)| a.cpu_per_mpkt() / b.cpu_per_mpkt())
                    .collect(),
            ),
            machine: spread(
                pairs
                    .iter()
                    .map(|(a, b)| a.machine_per_mpkt() / b.machine_per_mpkt())
                    .collect(),
            ),
            sent: pairs.iter().map(|(a, b)| a.sent.min(b.sent)).sum(),
            captured_sidecap: pairs.iter().map(|(a, _)| a.captured).sum(),
            captured_tcpdump: pairs.iter().map(|(_, b)| b.captured).sum(),
            rss_mib_sidecap: pairs.iter().map(|(a, _)| a.rss_kib).max().unwrap_or(0) as f64
                / 1024.0,
            rss_mib_tcpdump: pairs.iter().map(|(_, b)| b.rss_kib).max().unwrap_or(0) as f64
                / 1024.0,
            mem_free_mib: (
                both().map(|r| r.mem.free_mib).min().unwrap_or(0),
                both().map(|r| r.mem.free_mib).max().unwrap_or(0),
            ),
            mem_dirty_mib: (
                both().map(|r| r.mem.dirty_mib).min().unwrap_or(0),
                both().map(|r| r.mem.dirty_mib).max().unwrap_or(0),
            ),
        });
    }
    out
}

pub fn paired_markdown(p: &[Paired]) -> String {
    let mut s = String::from(
        "Same-run ratios, sidecap / tcpdump: in every repetition the two ran back to back \
         (order alternating), and each ratio is taken within one repetition, then min / **median** \
         / max over the repetitions. CPU = the tool's own CPU (user + system, all threads, from \
         `wait4`) per captured packet; machine = the whole machine's busy CPU (/proc/stat) from \
         the start of the load to the tool's exit, per captured packet (it includes the \
         generator and kernel writeback). Captured = packets in the files, summed over the \
         repetitions.\n\n\
         | scenario | reps | offered kpps | CPU / pkt ratio | machine CPU / pkt ratio | captured sidecap | captured tcpdump | peak RSS MiB sidecap / tcpdump | free MiB before (min-max) | dirty MiB before |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for x in p {
        let f = |(a, b, c): (f64, f64, f64)| format!("{a:.2} / **{b:.2}** / {c:.2}");
        let pc = |n: u64| format!("{:.2}%", n as f64 * 100.0 / x.sent.max(1) as f64);
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {:.1} / {:.1} | {}-{} | {}-{} |",
            x.scenario,
            x.reps,
            x.offered_kpps,
            f(x.cpu),
            f(x.machine),
            pc(x.captured_sidecap),
            pc(x.captured_tcpdump),
            x.rss_mib_sidecap,
            x.rss_mib_tcpdump,
            x.mem_free_mib.0,
            x.mem_free_mib.1,
            x.mem_dirty_mib.0,
            x.mem_dirty_mib.1,
        );
    }
    s
}

/// Capturing fewer packets than tcpdump: more than this fraction of the packets sent.
pub const CAPTURE_SLACK: f64 = 0.001;

/// Why the gated scenarios fail, if they do.
pub fn gate(scenarios: &[Scenario], p: &[Paired]) -> Vec<String> {
    let mut fails = Vec::new();
    for sc in scenarios
        .iter()
        .filter(|s| s.cpu_gate.is_some() || s.capture_gate)
    {
        let Some(x) = p.iter().find(|x| x.scenario == sc.name) else {
            fails.push(format!("{}: no sidecap/tcpdump pair ran", sc.name));
            continue;
        };
        if let Some(g) = sc.cpu_gate.filter(|g| x.cpu.1 > *g) {
            fails.push(format!(
                "{}: sidecap's CPU per packet is {:.2}x tcpdump's (median of {} same-run ratios; gate {g}x)",
                x.scenario, x.cpu.1, x.reps
            ));
        }
        let slack = (x.sent as f64 * CAPTURE_SLACK) as u64;
        if sc.capture_gate && x.captured_sidecap + slack < x.captured_tcpdump {
            fails.push(format!(
                "{}: sidecap captured {} packets, tcpdump {} (of {} sent)",
                x.scenario, x.captured_sidecap, x.captured_tcpdump, x.sent
            ));
        }
    }
    fails
}
