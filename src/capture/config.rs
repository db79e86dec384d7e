//! Raw capture flags -> a validated [`CaptureConfig`]. Every check that does not need the
//! network or the disk happens here, once, with a message that names the flag.

use std::net::SocketAddr;
use std::time::Duration;

use super::rotate::RotatePolicy;
use crate::cli::{CaptureArgs, LogFormat, TimePrecision};
use crate::config::{parse_duration, parse_size};

/// Size of one write buffer: big sequential writes, ~4700 small packets per syscall. Here, not
/// in the capture loop that fills them, because the queue and ring bounds are counted in them.
pub const BUF_SIZE: usize = 1 << 20;

/// The longest filter accepted, in bytes. tcpdump-style filters are a line or two; libpcap's
/// optimizer time grows much faster than a filter's length (4 KB of `port N or ...` takes about
/// 30 s of CPU, 100 KB took 15 minutes and 23 GB), so longer ones are refused up front. 4 KiB
/// still fits a list of some 200 hosts.
pub const MAX_FILTER_LEN: usize = 4096;

/// libpcap's largest snapshot length for most link types; `-s 0` means this, as in tcpdump.
pub const MAX_SNAPLEN: u32 = 262_144;

#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub interface: String,
    pub dir: std::path::PathBuf,
    pub prefix: String,
    /// The filter compiled: the user's with the uploader's own ports taken out.
    pub filter: Option<String>,
    /// The uploader's port range left out of the capture (`--own-ports`); None keeps them.
    pub own_ports: Option<crate::ownports::PortRange>,
    pub snaplen: u32,
    pub buffer_size: u64,
    pub promisc: bool,
    pub rotate: RotatePolicy,
    pub max_files: Option<u64>,
    pub max_total_size: Option<u64>,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub flush_interval: Duration,
    pub fsync: crate::cli::Fsync,
    /// When the writer uses O_DIRECT (`--direct-io`).
    pub direct_io: crate::cli::DirectIo,
    /// Write buffers the queue may hold (queue size / buffer size).
    pub queue_buffers: usize,
    pub nano: bool,
    pub listen: Option<SocketAddr>,
    pub wait_for_interface: Duration,
    /// `-w -`: one pcap stream on stdout instead of files in `dir`.
    pub stdout: bool,
    /// No status line and no exit summary.
    pub quiet: bool,
    pub log_format: LogFormat,
    pub format: crate::files::FileFormat,
    /// NSS key log to follow (pcapng only).
    pub tls_keylog: Option<std::path::PathBuf>,
}

fn flag<T>(name: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("{name}: {e}"))
}

/// The rotation and ring flags, checked together: what each allows depends on the others.
struct Files {
    rotate: RotatePolicy,
    max_files: Option<u64>,
    max_total_size: Option<u64>,
}

/// The flags that end a capture or pace its writes.
struct Pace {
    duration: Option<Duration>,
    flush_interval: Duration,
    queue_buffers: usize,
}

impl CaptureConfig {
    pub fn from_args(a: &CaptureArgs) -> Result<CaptureConfig, String> {
        let filter = filter_of(a)?;
        if a.interface.is_empty() {
            return Err("--interface: must not be empty".into());
        }
        let own_ports = flag(
            "--own-ports",
            crate::ownports::PortRange::parse(&a.own_ports),
        )?;
        let link = crate::ownports::Link::of(&a.interface);
        let filter = crate::ownports::compose(filter.as_deref(), own_ports, link);
        validate_prefix(&a.prefix)?;
        let stdout = a.dir.as_os_str() == "-";
        if stdout {
            refuse_with_stdout(a)?;
        }
        let snaplen = match a.snaplen {
            0 => MAX_SNAPLEN,
            s if s > MAX_SNAPLEN => {
                return Err(format!(
                    "--snaplen: {s} is larger than {MAX_SNAPLEN} (use 0 for the maximum)"
                ))
            }
            s => s,
        };
        let buffer_size = flag("--buffer-size", parse_size(&a.buffer_size, 1024))?;
        if !(64 << 10..=1 << 30).contains(&buffer_size) {
            return Err(format!(
                "--buffer-size: {} is outside 64KiB..1GiB",
                a.buffer_size
            ));
        }
        let files = files_of(a)?;
        let pace = pace_of(a)?;
        let listen = crate::admin::parse_listen(&a.listen)?;
        let wait_for_interface = flag(
            "--wait-for-interface",
            parse_duration(&a.wait_for_interface),
        )?;
        check_keylog(a)?;
        Ok(CaptureConfig {
            interface: a.interface.clone(),
            dir: a.dir.clone(),
            prefix: a.prefix.clone(),
            filter,
            own_ports,
            snaplen,
            buffer_size,
            promisc: !a.no_promiscuous,
            rotate: files.rotate,
            max_files: files.max_files,
            max_total_size: files.max_total_size,
            count: a.count,
            duration: pace.duration,
            flush_interval: pace.flush_interval,
            fsync: a.fsync,
            direct_io: a.direct_io,
            queue_buffers: pace.queue_buffers,
            nano: a.time_precision == TimePrecision::Nano,
            listen,
            wait_for_interface,
            stdout,
            quiet: a.quiet,
            log_format: a.log_format,
            format: a.format,
            tls_keylog: a.tls_keylog.clone(),
        })
    }
}

/// `--filter`, or the expression after the options; empty means none.
fn filter_of(a: &CaptureArgs) -> Result<Option<String>, String> {
    let filter = match (&a.filter, a.expression.is_empty()) {
        (Some(f), _) => Some(f.clone()),
        (None, false) => Some(a.expression.join(" ")),
        (None, true) => None,
    }
    .filter(|f| !f.trim().is_empty());
    if let Some(f) = filter.as_ref().filter(|f| f.len() > MAX_FILTER_LEN) {
        return Err(format!(
            "--filter: {} bytes is longer than the {MAX_FILTER_LEN} accepted (libpcap's optimizer needs minutes and gigabytes for filters that long); shorten it, e.g. with net/portrange instead of many host/port terms",
            f.len()
        ));
    }
    Ok(filter)
}

fn files_of(a: &CaptureArgs) -> Result<Files, String> {
    let mut rotate_size = a
        .rotate_size
        .as_deref()
        .map(|s| flag("--rotate-size", parse_size(s, 1_000_000)))
        .transpose()?;
    if rotate_size.is_some_and(|s| s < 1024) {
        return Err("--rotate-size: must be at least 1KiB".into());
    }
    let rotate_interval = a
        .rotate_interval
        .as_deref()
        .map(|s| flag("--rotate-interval", parse_duration(s)))
        .transpose()?;
    if rotate_interval.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err("--rotate-interval: must be at least 1s".into());
    }
    let max_total_size = a
        .max_total_size
        .as_deref()
        .map(|s| flag("--max-total-size", parse_size(s, 1)))
        .transpose()?;
    if let Some(max) = max_total_size {
        let min = 4 * (BUF_SIZE as u64);
        if max < min {
            return Err(format!(
                "--max-total-size: must be at least {} (4 write buffers)",
                crate::config::human_bytes(min)
            ));
        }
        match rotate_size {
            None => rotate_size = Some(max / 8),
            Some(r) if r > max / 2 => {
                return Err(format!(
                    "--rotate-size ({r} bytes) must be at most half of --max-total-size ({max} bytes), so a finished file can be deleted while the next one is written"
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(w) = a.max_files {
        if w < 2 {
            return Err(
                "--max-files: must be at least 2 (the file being written and one finished file)"
                    .into(),
            );
        }
        if rotate_size.is_none() && rotate_interval.is_none() {
            return Err("--max-files needs --rotate-size, --rotate-interval or --max-total-size: without rotation there is only one file".into());
        }
    }
    Ok(Files {
        rotate: RotatePolicy {
            size: rotate_size,
            interval: rotate_interval,
        },
        max_files: a.max_files.map(u64::from),
        max_total_size,
    })
}

fn pace_of(a: &CaptureArgs) -> Result<Pace, String> {
    if a.count == Some(0) {
        return Err("--count: must be at least 1".into());
    }
    let duration = a
        .duration
        .as_deref()
        .map(|s| flag("--duration", parse_duration(s)))
        .transpose()?;
    if duration == Some(Duration::ZERO) {
        return Err("--duration: must be more than 0".into());
    }
    let flush_interval = flag("--flush-interval", parse_duration(&a.flush_interval))?;
    if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&flush_interval) {
        return Err("--flush-interval: must be between 10ms and 1h".into());
    }
    let queue_size = flag("--queue-size", parse_size(&a.queue_size, 1))?;
    let queue_buffers = (queue_size / BUF_SIZE as u64) as usize;
    if queue_buffers < 2 {
        return Err("--queue-size: must be at least 2MiB".into());
    }
    Ok(Pace {
        duration,
        flush_interval,
        queue_buffers,
    })
}

fn check_keylog(a: &CaptureArgs) -> Result<(), String> {
    if a.tls_keylog.is_some() && a.format != crate::files::FileFormat::Pcapng {
        return Err("--tls-keylog needs --format pcapng: only pcapng files can carry TLS secrets (classic pcap has no place for them)".into());
    }
    if a.tls_keylog
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err("--tls-keylog: must not be empty".into());
    }
    Ok(())
}

/// Options about files, which `-w -` does not write: naming the option beats silently
/// ignoring it.
fn refuse_with_stdout(a: &CaptureArgs) -> Result<(), String> {
    let set = [
        ("--rotate-size (-C)", a.rotate_size.is_some()),
        ("--rotate-interval (-G)", a.rotate_interval.is_some()),
        ("--max-files (-W)", a.max_files.is_some()),
        ("--max-total-size", a.max_total_size.is_some()),
        ("--prefix", a.prefix != crate::files::DEFAULT_PREFIX),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((name, _)) => Err(format!(
            "{name} cannot be used with -w -: it is about files in a directory, and -w - streams one pcap to stdout (no rotation, ring, prefix or done marker)"
        )),
        None => Ok(()),
    }
}

/// A prefix becomes part of file names on a shared volume: keep it to a safe alphabet.
pub fn validate_prefix(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.len() <= 100
        && !p.starts_with('.')
        && !p.starts_with('-')
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("--prefix: {p:?} must be 1-100 characters of A-Z a-z 0-9 . _ - and not start with . or -"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg(args: &[&str]) -> Result<CaptureConfig, String> {
        let mut v = vec!["sidecap", "capture"];
        v.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(v).map_err(|e| e.to_string())?;
        match cli.command {
            crate::cli::Command::Capture(a) => CaptureConfig::from_args(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.interface, "any");
        assert_eq!(c.snaplen, 262_144);
        assert_eq!(c.buffer_size, 32 << 20);
        assert!(c.promisc);
        assert_eq!(c.rotate, RotatePolicy::default());
        assert_eq!(c.flush_interval, Duration::from_secs(1));
        assert_eq!(c.fsync, crate::cli::Fsync::None);
        assert_eq!(
            cfg(&["--fsync", "rotate"]).unwrap().fsync,
            crate::cli::Fsync::Rotate
        );
        assert_eq!(c.queue_buffers, 64);
        assert_eq!(c.own_ports, Some(crate::ownports::DEFAULT));
        assert!(cfg(&["--own-ports", "none"]).unwrap().filter.is_none());
        assert!(!c.quiet && !c.stdout);
        assert!(cfg(&["-q"]).unwrap().quiet);
        assert_eq!(c.format, crate::files::FileFormat::Pcap);
    }

    #[test]
    fn tls_keylog_needs_pcapng() {
        let e = cfg(&["--tls-keylog", "/x/keys"]).unwrap_err();
        assert!(e.contains("--tls-keylog needs --format pcapng"), "{e}");
        let c = cfg(&["--format", "pcapng", "--tls-keylog", "/x/keys"]).unwrap();
        assert_eq!(
            c.tls_keylog.as_deref(),
            Some(std::path::Path::new("/x/keys"))
        );
    }

    #[test]
    fn tcpdump_style_units_and_trailing_filter() {
        let c = cfg(&[
            "-C", "100", "-B", "4096", "-G", "300", "-W", "5", "-s", "0", "udp", "port", "53",
        ])
        .unwrap();
        assert_eq!(c.rotate.size, Some(100_000_000));
        assert_eq!(c.buffer_size, 4 << 20);
        assert_eq!(c.rotate.interval, Some(Duration::from_secs(300)));
        assert_eq!(c.max_files, Some(5));
        assert_eq!(c.snaplen, MAX_SNAPLEN);
        assert!(c
            .filter
            .as_deref()
            .unwrap()
            .starts_with("(udp port 53) and not ("));
    }

    #[test]
    fn max_total_size_sets_a_rotation_size() {
        let c = cfg(&["--max-total-size", "80MiB"]).unwrap();
        assert_eq!(c.rotate.size, Some(10 << 20));
    }

    #[test]
    fn impossible_combinations_are_refused() {
        assert!(cfg(&["-W", "3"])
            .unwrap_err()
            .contains("needs --rotate-size"));
        assert!(cfg(&["-W", "1", "-C", "1"])
            .unwrap_err()
            .contains("at least 2"));
        assert!(cfg(&["--max-total-size", "10MiB", "-C", "6MiB"])
            .unwrap_err()
            .contains("at most half"));
        assert!(cfg(&["--max-total-size", "1MiB"])
            .unwrap_err()
            .contains("at least"));
        assert!(cfg(&["-c", "0"]).unwrap_err().contains("--count"));
        assert!(cfg(&["-s", "300000"]).unwrap_err().contains("--snaplen"));
        assert!(cfg(&["--prefix", "../x"]).unwrap_err().contains("--prefix"));
        assert!(cfg(&["--listen", "nope"]).unwrap_err().contains("--listen"));
        let long = vec!["port 1 or"; 500].join(" ") + " port 2";
        assert!(cfg(&["--filter", &long]).unwrap_err().contains("4096"));
        assert!(cfg(&["--duration", "18446744073709551615s"])
            .unwrap_err()
            .contains("out of range"));
        assert!(cfg(&["-G", "18446744073709551615"])
            .unwrap_err()
            .contains("out of range"));
        assert!(
            cfg(&["--filter", "tcp", "udp"]).is_err(),
            "--filter and an expression conflict"
        );
    }

    #[test]
    fn stdout_refuses_file_options_by_name() {
        let c = cfg(&["-w", "-", "-c", "10", "udp"]).unwrap();
        assert!(c.stdout);
        assert!(!cfg(&["-w", "./-"]).unwrap().stdout);
        for (args, name) in [
            (&["-C", "10"][..], "--rotate-size"),
            (&["-G", "60"], "--rotate-interval"),
            (&["-W", "3", "-C", "1"], "--rotate-size"),
            (&["--max-total-size", "1GiB"], "--max-total-size"),
            (&["--prefix", "mine"], "--prefix"),
        ] {
            let mut v = vec!["-w", "-"];
            v.extend_from_slice(args);
            let e = cfg(&v).unwrap_err();
            assert!(e.starts_with(name) && e.contains("-w -"), "{args:?}: {e}");
        }
    }
}
