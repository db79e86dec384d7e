//! `sidecap-bench`: the capture throughput benchmark of sidecap against tcpdump (and dumpcap
//! when installed), and the short load check that CI runs.
//!
//! - `sidecap-bench run`  the full benchmark; writes bench/results/{latest.md,latest.csv,runs.csv,plot.svg}
//! - `sidecap-bench ci`   a short load run that fails on any correctness problem
//! - `sidecap-bench gen`  the traffic generator on its own (the runner starts it per run)
//! - `sidecap-bench upload` upload throughput of a 1 GiB file to a local S3 store and a webhook

mod env;
mod gen;
mod pcapcount;
mod report;
mod runner;
mod stop;
mod tools;
mod upload;

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use runner::{Ctx, Link, RunResult};
use tools::Tool;

const USAGE: &str = "usage:
  sidecap-bench run [--reps N] [--tools sidecap,sidecap-pcapng,tcpdump,dumpcap] [--only NAME,..] [--quick]
                    [--extra] [--drop-caches] [--stop-reps N]
                    [--sidecap PATH] [--out DIR] [--work DIR] [--buffer-mib N] [--snaplen N]
                    [--upload-mib N] [--upload-reps N]
  sidecap-bench ci  [--sidecap PATH] [--out DIR] [--work DIR] [--upload-mib N] [--upload-reps N]
  sidecap-bench upload [--size-mib N] [--reps N] [--sidecap PATH] [--out DIR] [--work DIR]
  sidecap-bench stop [--reps N] [--sidecap PATH]
  sidecap-bench gen --dst IP:PORT --size BYTES --count N [--rate PPS] [--batch N] [--threads N]
                    [--sink-netns NAME] [--max-time SECS]
Run as root (captures, network namespaces, a loop-mounted file system).";

fn flags(args: &[String]) -> Result<HashMap<String, String>, String> {
    let mut m = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let k = a
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {a:?}\n{USAGE}"))?;
        if matches!(k, "quick" | "extra" | "drop-caches") {
            m.insert(k.to_string(), "1".into());
            continue;
        }
        let v = it.next().ok_or_else(|| format!("--{k} needs a value"))?;
        m.insert(k.to_string(), v.clone());
    }
    Ok(m)
}

fn num<T: std::str::FromStr>(m: &HashMap<String, String>, k: &str, d: T) -> Result<T, String> {
    match m.get(k) {
        None => Ok(d),
        Some(v) => v.parse().map_err(|_| format!("--{k}: not a number: {v}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen") => cmd_gen(&args[1..]),
        Some("run") => cmd_run(&args[1..], false),
        Some("ci") => cmd_run(&args[1..], true),
        Some("stop") => cmd_stop(&args[1..]).map(|md| println!("{md}")),
        Some("upload") => cmd_upload(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecap-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_gen(args: &[String]) -> Result<(), String> {
    let m = flags(args)?;
    let dst: SocketAddrV4 = m
        .get("dst")
        .ok_or("--dst is required")?
        .parse()
        .map_err(|e| format!("--dst: {e}"))?;
    let a = gen::GenArgs {
        dst,
        size: num(&m, "size", 64)?,
        count: num(&m, "count", 1_000_000)?,
        rate: m
            .get("rate")
            .map(|r| r.parse())
            .transpose()
            .map_err(|_| "--rate: not a number")?,
        batch: num(&m, "batch", 64)?,
        threads: num(&m, "threads", 1)?,
        sink_netns: m.get("sink-netns").cloned(),
        max_time: Duration::from_secs(num(&m, "max-time", 60)?),
    };
    let r = gen::run(&a)?;
    println!("sent={} secs={:.6}", r.sent, r.elapsed.as_secs_f64());
    Ok(())
}

/// The stop scenarios alone (also part of `run` and `ci`): tools interleaved rep by rep.
fn cmd_stop(args: &[String]) -> Result<String, String> {
    let m = flags(args)?;
    let sidecap = m
        .get("sidecap")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../target/release/sidecap"));
    let reps: u32 = num(&m, "reps", 5)?;
    let tools = vec![Tool::Sidecap, Tool::Tcpdump];
    let work = PathBuf::from(format!("/var/tmp/sidecap-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let port = 40000 + (std::process::id() % 20000) as u16;
    let runs = stop_runs(&sidecap, &work, port, &tools, reps)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(stop::markdown(&runs, &tools) + "\n" + &stop::csv(&runs))
}

/// Upload throughput alone (also part of `run`): writes upload.md and upload.csv into --out.
fn cmd_upload(args: &[String]) -> Result<(), String> {
    let m = flags(args)?;
    let sidecap = m
        .get("sidecap")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../target/release/sidecap"));
    let out = m
        .get("out")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("results"));
    let work = m
        .get("work")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/sidecap-bench-{}", std::process::id())));
    let load_before = loadavg();
    let runs = upload::run(&upload::Params {
        sidecap: &sidecap,
        work: &work,
        size_mib: num(&m, "size-mib", 1024)?,
        reps: num(&m, "reps", 2)?,
    });
    let _ = std::fs::remove_dir_all(&work);
    let runs = runs?;
    let md = format!(
        "{}\nCommand: `target/release/sidecap-bench upload {}` on {}, finished {}\n",
        upload::markdown(&runs, &format!("{load_before} before, {} after", loadavg())),
        args.join(" "),
        machine(),
        first_line(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    );
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (name, text) in [
        ("upload.md", md.clone()),
        ("upload.csv", upload::csv(&runs)),
    ] {
        std::fs::write(out.join(name), text)
            .map_err(|e| format!("{}: {e}", out.join(name).display()))?;
    }
    println!("{md}\n(written to {})", out.display());
    let problems: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r.problems
                .iter()
                .map(move |p| format!("upload {} rep {}: {p}", r.dest, r.rep))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn stop_runs(
    sidecap: &Path,
    work: &Path,
    port: u16,
    tools: &[Tool],
    reps: u32,
) -> Result<Vec<stop::StopRun>, String> {
    let mut runs = Vec::new();
    for rep in 0..reps {
        for burst in [false, true] {
            let mut order = tools.to_vec();
            let k = rep as usize % order.len().max(1);
            order.rotate_left(k);
            for &t in &order {
                let r = stop::run_one(sidecap, work, port, t, burst, rep)?;
                eprintln!(
                    "stop {:<6} {:<8} rep {rep}: {:>6.1} ms, kept {}/{} (signal {} us after the last send), exit {}",
                    r.case, r.tool, r.latency_ms, r.kept, r.sent, r.signal_after_us, r.exit_code
                );
                runs.push(r);
            }
        }
    }
    Ok(runs)
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn first_line(cmd: &[&str]) -> String {
    std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .ok()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t += &String::from_utf8_lossy(&o.stderr);
            t.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            tools::json_u64(
                &format!("\"{}", m.replace("MemTotal:", "MemTotal\":")),
                "MemTotal",
            )
        })
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {:.0} GiB RAM, kernel {}",
        mem as f64 / 1048576.0,
        first_line(&["uname", "-r"])
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cmd_run(args: &[String], ci: bool) -> Result<(), String> {
    let m = flags(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must run as root (packet capture, network namespaces, loop devices)".into());
    }
    let sidecap = m
        .get("sidecap")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../target/release/sidecap"));
    if !sidecap.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --bins)",
            sidecap.display()
        ));
    }
    let out = m
        .get("out")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join(if ci { "target/ci-results" } else { "results" }));
    let work = m
        .get("work")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/sidecap-bench-{}", std::process::id())));
    let reps: u32 = if ci { 1 } else { num(&m, "reps", 5)? };
    let mut scenarios = if ci {
        runner::ci_scenarios()
    } else {
        runner::full_scenarios()
    };
    if m.contains_key("extra") || m.contains_key("only") {
        scenarios.extend(runner::extra_scenarios());
    }
    if m.contains_key("quick") {
        // A smoke run of the full set: a tenth of the packets.
        for s in scenarios.iter_mut() {
            s.count = (s.count / 10).max(10_000);
        }
    }
    if let Some(only) = m.get("only") {
        let want: Vec<&str> = only.split(',').collect();
        scenarios.retain(|s| want.contains(&s.name.as_str()));
        if scenarios.is_empty() {
            return Err(format!("--only {only}: no such scenario"));
        }
    }
    // dumpcap costs ~2.5x tcpdump (it is in results/run1); `--tools` adds it back.
    let default_tools = "sidecap,tcpdump";
    let mut tools = Vec::new();
    for t in m
        .get("tools")
        .map(String::as_str)
        .unwrap_or(default_tools)
        .split(',')
    {
        let tool = Tool::parse(t).ok_or_else(|| format!("--tools: unknown tool {t}"))?;
        if tool.installed(&sidecap) {
            tools.push(tool);
        } else {
            eprintln!("note: {t} is not installed; skipping it");
        }
    }
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;

    let need_ns = scenarios.iter().any(|s| s.link != Link::Lo);
    let need_fs = scenarios.iter().any(|s| s.stall.is_some());
    let netns = if need_ns {
        Some(env::Netns::create()?)
    } else {
        None
    };
    let loopfs = if need_fs {
        match env::LoopFs::create(&work, 2048) {
            Ok(fs) => Some(fs),
            Err(e) => {
                eprintln!("note: no loop file system ({e}); skipping the slow-disk scenarios");
                scenarios.retain(|s| s.stall.is_none());
                None
            }
        }
    } else {
        None
    };
    let ctx = Ctx {
        sidecap: sidecap.clone(),
        bench_exe: std::env::current_exe().map_err(|e| e.to_string())?,
        work: work.clone(),
        netns,
        loopfs,
        port: 40000 + (std::process::id() % 20000) as u16,
        snaplen: num(&m, "snaplen", 262_144)?,
        buffer_mib: num(&m, "buffer-mib", 32)?,
        check: ci,
        drop_caches: m.contains_key("drop-caches"),
    };
    let fs_desc = fs_type(&work);
    let started = Instant::now();
    let load_before = loadavg();
    let command = format!(
        "{} {}",
        if ci {
            "bench/ci.sh ->"
        } else {
            "bench/run.sh ->"
        },
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut runs: Vec<RunResult> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let total: usize = scenarios
        .iter()
        .map(|s| s.reps.unwrap_or(reps) as usize * tools.len())
        .sum();
    let mut done = 0;
    for sc in &scenarios {
        for rep in 0..sc.reps.unwrap_or(reps) {
            // Rotate the order per repetition so no tool always runs first (or right after
            // another tool's files were written).
            let mut order = tools.clone();
            let k = rep as usize % order.len().max(1);
            order.rotate_left(k);
            for &tool in &order {
                done += 1;
                let t0 = Instant::now();
                match runner::run_one(&ctx, sc, tool, rep) {
                    Ok(r) => {
                        eprintln!(
                            "[{done}/{total}] {:<24} {:<8} rep {rep}: sent {:>9} ({:>5.0} kpps) captured {:>9} ({:>7.3}%) drops {:>8} cpu {:>6.3}s ({:.3} s/Mpkt, machine {:.3}) rss {:>6.1} MiB free {} MiB dirty {} MiB stop {:.0} ms [{:.1}s]{}",
                            sc.name,
                            tool.name(),
                            r.sent,
                            r.offered_pps() / 1e3,
                            r.captured,
                            r.ratio() * 100.0,
                            r.drops.map(|d| d.to_string()).unwrap_or("-".into()),
                            r.cpu_secs,
                            r.cpu_per_mpkt(),
                            r.machine_per_mpkt(),
                            r.rss_kib as f64 / 1024.0,
                            r.mem.free_mib,
                            r.mem.dirty_mib,
                            r.stop_ms,
                            t0.elapsed().as_secs_f64(),
                            if r.problems.is_empty() { String::new() } else { format!("  PROBLEMS: {}", r.problems.join("; ")) }
                        );
                        for p in &r.problems {
                            failures.push(format!("{} {} rep {rep}: {p}", sc.name, tool.name()));
                        }
                        runs.push(r);
                    }
                    Err(e) => {
                        eprintln!(
                            "[{done}/{total}] {} {} rep {rep}: FAILED: {e}",
                            sc.name,
                            tool.name()
                        );
                        failures.push(format!("{} {} rep {rep}: {e}", sc.name, tool.name()));
                    }
                }
            }
        }
    }
    let stop_tools: Vec<Tool> = [Tool::Sidecap, Tool::Tcpdump]
        .into_iter()
        .filter(|t| tools.contains(t))
        .collect();
    let stop_reps = num(&m, "stop-reps", if ci { 3 } else { 5 })?;
    let stops = if stop_tools.len() == 2 && stop_reps > 0 && !m.contains_key("only") {
        match stop_runs(&ctx.sidecap, &work, ctx.port, &stop_tools, stop_reps) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("stop scenarios: {e}"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    for r in stops.iter().filter(|r| r.tool == "sidecap") {
        if r.kept != r.sent || r.exit_code != 0 {
            failures.push(format!(
                "stop {} rep {}: sidecap kept {} of {} packets sent before SIGTERM, exit {}",
                r.case, r.rep, r.kept, r.sent, r.exit_code
            ));
        }
    }
    if ci {
        failures.extend(stop_gate(&stops));
    }
    // Upload throughput (issue 15): ~1 GiB through `sidecap upload` to a local S3 store and a
    // webhook; correctness problems fail the run, the figures are reported, not gated.
    let upload_reps = num(&m, "upload-reps", if ci { 1 } else { 2 })?;
    let upload_load = loadavg();
    let uploads = if upload_reps > 0 && !m.contains_key("only") {
        match upload::run(&upload::Params {
            sidecap: &ctx.sidecap,
            work: &work,
            size_mib: num(&m, "upload-mib", if ci { 256 } else { 1024 })?,
            reps: upload_reps,
        }) {
            Ok(u) => u,
            Err(e) => {
                failures.push(format!("upload: {e}"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    for r in &uploads {
        for p in &r.problems {
            failures.push(format!("upload {} rep {}: {p}", r.dest, r.rep));
        }
    }
    drop(ctx);
    let _ = std::fs::remove_dir_all(&work);

    let paired = report::paired(&scenarios, &runs);
    let gate = if ci {
        report::gate(&scenarios, &paired)
    } else {
        Vec::new()
    };
    let aggs = report::aggregate(&scenarios, &runs);
    let mut md = format!(
        "# sidecap capture benchmark\n\n- Machine: {}\n- Load average before / after: {} / {} (the machine is shared: numbers are noisy; medians of {reps} repetition(s))\n- Tools: {}; `{}`; `{}`\n- Same for every tool: snaplen {}, kernel buffer {} MiB, BPF filter `udp dst port <port>`, output on {}\n- Command: `{}`\n- Finished: {} after {:.0} s\n\n",
        machine(),
        load_before,
        loadavg(),
        first_line(&[&sidecap.display().to_string(), "--version"]),
        first_line(&["tcpdump", "--version"]),
        first_line(&["dumpcap", "--version"]),
        num(&m, "snaplen", 262_144u32)?,
        num(&m, "buffer-mib", 32u32)?,
        fs_desc,
        command.trim(),
        first_line(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        started.elapsed().as_secs_f64(),
    );
    md += &report::paired_markdown(&paired);
    md += "\n";
    if !stops.is_empty() {
        md += &stop::markdown(&stops, &stop_tools);
        md += "\n";
    }
    if !uploads.is_empty() {
        md += &upload::markdown(
            &uploads,
            &format!("{upload_load} before, {} after", loadavg()),
        );
        md += "\n";
    }
    if ci {
        md += &format!(
            "CI gate: median same-run CPU ratio sidecap/tcpdump <= {} on {}; sidecap captures no fewer packets than tcpdump (slack {}% of sent) on {}: {}\n\n",
            runner::CPU_GATE_64,
            scenarios.iter().filter(|s| s.cpu_gate.is_some()).map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            report::CAPTURE_SLACK * 100.0,
            scenarios.iter().filter(|s| s.capture_gate).map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            if gate.is_empty() { "pass".to_string() } else { format!("FAIL: {}", gate.join("; ")) }
        );
    }
    md += &report::markdown(&scenarios, &aggs);
    if !failures.is_empty() {
        md += "\nProblems:\n\n";
        for f in &failures {
            md += &format!("- {f}\n");
        }
    }
    let w = |name: &str, text: &str| -> Result<(), String> {
        std::fs::write(out.join(name), text)
            .map_err(|e| format!("{}: {e}", out.join(name).display()))
    };
    w("latest.md", &md)?;
    w("latest.csv", &report::agg_csv(&aggs))?;
    w("runs.csv", &report::runs_csv(&runs))?;
    if !stops.is_empty() {
        w("stop.csv", &stop::csv(&stops))?;
    }
    if !uploads.is_empty() {
        w("upload.csv", &upload::csv(&uploads))?;
    }
    if let Err(e) = report::plot(&aggs, &out.join("plot.svg")) {
        eprintln!("note: plot failed: {e}");
    }
    println!("{md}");
    println!("(written to {})", out.display());
    if !failures.is_empty() {
        return Err(format!(
            "{} correctness problem(s) (results are written):\n{}",
            failures.len(),
            failures.join("\n")
        ));
    }
    if !gate.is_empty() {
        return Err(format!("CI gate failed:\n{}", gate.join("\n")));
    }
    if runs.is_empty() {
        return Err("no run succeeded".into());
    }
    Ok(())
}

fn fs_type(p: &Path) -> String {
    let t = first_line(&[
        "findmnt",
        "-n",
        "-o",
        "FSTYPE,SOURCE",
        "-T",
        &p.display().to_string(),
    ]);
    format!(
        "{} ({}; the slow-disk scenario: ext4 on a loop device)",
        if t.is_empty() { "?" } else { t.as_str() },
        p.display()
    )
}

/// Issue 17's stop target, held in CI: sidecap's median SIGTERM-to-exit per case (idle, right
/// after a burst) at most this. Measured 24-44 ms here; a watcher thread that slept out a
/// 200 ms tick before the exit (fixed) made it 105 and 190 ms.
const STOP_GATE_MS: f64 = 100.0;

fn stop_gate(stops: &[stop::StopRun]) -> Vec<String> {
    let mut out = Vec::new();
    for case in ["idle", "burst"] {
        let mut ms: Vec<f64> = stops
            .iter()
            .filter(|r| r.tool == "sidecap" && r.case == case)
            .map(|r| r.latency_ms)
            .collect();
        if ms.is_empty() {
            continue;
        }
        ms.sort_by(f64::total_cmp);
        let median = ms[ms.len() / 2];
        if median > STOP_GATE_MS {
            out.push(format!(
                "stop {case}: sidecap's median SIGTERM-to-exit is {median:.0} ms, over the {STOP_GATE_MS:.0} ms gate ({ms:?})"
            ));
        }
    }
    out
}
