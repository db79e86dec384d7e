//! Command-line definitions: raw flags and their environment variables, nothing else.
//! Validation into typed configurations happens in each subcommand's `config` step, so that a
//! bad value is reported once, with a clear message, before anything runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

// Defined with the logging it selects; named here too, where the flag is.
use crate::exit::EXIT_CODES;
pub use crate::logging::LogFormat;

pub const DEFAULT_CAPTURE_LISTEN: &str = "0.0.0.0:9797";

#[derive(Parser, Debug)]
#[command(
    name = "sidecap",
    version,
    about = "Capture a Pod's packets with libpcap and get the capture out before the Pod is gone",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "SIDECAP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log level or filter (e.g. info, debug, sidecap=trace). Overrides RUST_LOG; default info.
    #[arg(long, env = "SIDECAP_LOG_LEVEL", global = true)]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Capture packets into rotating pcap files (the capture sidecar, or `sudo sidecap capture -i lo`).
    ///
    /// On a terminal a status line shows the progress, and a summary like tcpdump's is printed at
    /// exit. Signals: SIGTERM/SIGINT drain, finalize and exit 0; SIGHUP starts a new file;
    /// SIGUSR1 prints the statistics and the capture goes on.
    #[command(after_help = EXIT_CODES)]
    Capture(Box<CaptureArgs>),
    /// Long-running uploader sidecar: idle PID 1, optional continuous upload, metrics.
    #[command(after_help = EXIT_CODES)]
    Uploader(Box<crate::upload::args::UploaderArgs>),
    /// The preStop path: wait for the capture to be final, then upload every file before the deadline.
    #[command(after_help = EXIT_CODES)]
    Upload(Box<crate::upload::args::UploadArgs>),
    /// Flight recorder: finish the capture's current file and upload the last minutes (or the whole ring) with a manifest, now. Run in the uploader container (kubectl exec).
    #[command(after_help = EXIT_CODES)]
    Snapshot(Box<crate::upload::snapshot::SnapshotArgs>),
    /// Make pcap files left by a killed capture readable: cut a torn last record; cut out (and report) damage before the end, keeping every record around it.
    #[command(after_help = EXIT_CODES)]
    Repair(crate::repair::RepairArgs),
}

/// When the capture fsyncs its files (`--fsync`); what each protects is in docs/capture.md.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Never: written data survives any end of the process (SIGKILL, OOM kill), not a node crash.
    #[default]
    None,
    /// Before a finished file is renamed to `.pcap`, and the directory after it.
    Rotate,
    /// As `rotate`, and fdatasync the file being written on every `--flush-interval` tick.
    Interval,
}

/// How the writer puts records in the file (`--direct-io`); measured in docs/benchmarks.md.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DirectIo {
    /// O_DIRECT while the writer keeps up; a buffer with others queued behind it goes through
    /// the page cache, which does not wait for the disk.
    #[default]
    Auto,
    /// O_DIRECT for every buffer.
    #[value(alias = "true")]
    Always,
    /// The page cache for every buffer.
    #[value(alias = "false")]
    Never,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TimePrecision {
    Micro,
    Nano,
}

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Interface to capture on; `any` captures on all interfaces (LINUX_SLL2 link type, never
    /// promiscuous).
    #[arg(short = 'i', long, env = "SIDECAP_INTERFACE", default_value = "any")]
    pub interface: String,

    /// Output directory (the shared volume). Must exist and be writable. `-` streams one pcap
    /// to stdout instead (`-w - | tshark -r -`, `-w - | wireshark -k -i -`): no rotation, ring,
    /// prefix or done marker; logs stay on stderr; a reader closing the pipe ends the capture
    /// with exit 0.
    #[arg(short = 'w', long, env = "SIDECAP_DIR", default_value = ".")]
    pub dir: PathBuf,

    /// File name prefix: files are <prefix>-<UTC time>-<seq>.pcap(.part), the done marker is
    /// <prefix>.done, the lock <prefix>.lock.
    #[arg(long, env = "SIDECAP_PREFIX", default_value = crate::files::DEFAULT_PREFIX)]
    pub prefix: String,

    /// BPF filter (pcap-filter(7)), as an alternative to the trailing expression. At most 4096
    /// bytes: libpcap's optimizer needs minutes and gigabytes for much longer ones.
    #[arg(long, env = "SIDECAP_FILTER", conflicts_with = "expression")]
    pub filter: Option<String>,

    /// Wait up to this long for the interface to appear and be up (e.g. a VPN's tun0 or a veth
    /// created later) instead of failing at once; /readyz stays 503 meanwhile. 0 = do not wait. A stop
    /// signal meanwhile is a clean stop: exit 0 and a marker saying nothing was captured.
    #[arg(long, env = "SIDECAP_WAIT_FOR_INTERFACE", default_value = "0s")]
    pub wait_for_interface: String,

    /// Snapshot length: bytes kept of each packet.
    #[arg(short = 's', long, env = "SIDECAP_SNAPLEN", default_value_t = 262_144)]
    pub snaplen: u32,

    /// Kernel capture buffer (ring) size. Units accepted (64MiB); a bare number is KiB, as in tcpdump.
    #[arg(
        short = 'B',
        long,
        env = "SIDECAP_BUFFER_SIZE",
        default_value = "32MiB"
    )]
    pub buffer_size: String,

    /// Do not put the interface into promiscuous mode (`any` never is).
    #[arg(short = 'p', long, env = "SIDECAP_NO_PROMISCUOUS")]
    pub no_promiscuous: bool,

    /// Rotate to a new file before it exceeds this size. Units accepted (100MB); a bare number is
    /// millions of bytes, as in tcpdump. Default: no size rotation (set by --max-total-size).
    #[arg(short = 'C', long, env = "SIDECAP_ROTATE_SIZE")]
    pub rotate_size: Option<String>,

    /// Rotate to a new file after this much time (5m, 30s; a bare number is seconds).
    #[arg(short = 'G', long, env = "SIDECAP_ROTATE_INTERVAL")]
    pub rotate_interval: Option<String>,

    /// Keep at most this many files (ring buffer): the oldest finished file is deleted.
    #[arg(short = 'W', long, env = "SIDECAP_MAX_FILES")]
    pub max_files: Option<u32>,

    /// Never let this prefix's files in the directory grow past this size: the oldest finished
    /// files are deleted first. Keep it well under an emptyDir's sizeLimit. Without -C, files
    /// rotate at 1/8 of this size.
    #[arg(long, env = "SIDECAP_MAX_TOTAL_SIZE")]
    pub max_total_size: Option<String>,

    /// Stop after writing this many packets.
    #[arg(short = 'c', long, env = "SIDECAP_COUNT")]
    pub count: Option<u64>,

    /// Stop after this much time (e.g. 30s, 10m).
    #[arg(long, env = "SIDECAP_DURATION")]
    pub duration: Option<String>,

    /// Hand captured data to the kernel (write) at least this often: at most this much captured
    /// data is lost to a SIGKILL (with `--fsync interval`, to a node crash too).
    #[arg(long, env = "SIDECAP_FLUSH_INTERVAL", default_value = "1s")]
    pub flush_interval: String,

    /// When to fsync: `none` (written data survives SIGKILL and OOM kills; a node crash, which an
    /// emptyDir does not survive anyway, may lose it), `rotate` (also finished files and the
    /// done marker survive a node crash), `interval` (also the file being written, up to one
    /// `--flush-interval`; costs ~10% CPU at 1400 B packets).
    #[arg(long, env = "SIDECAP_FSYNC", value_enum, default_value_t = Fsync::None)]
    pub fsync: Fsync,

    /// How records reach the disk: `auto` writes them with O_DIRECT straight from the capture's
    /// buffers (the unaligned tail under 4 KiB through the page cache, so files end on a record
    /// after every write) while the disk keeps up, and through the page cache when buffers queue
    /// up behind a slow disk; `always` uses O_DIRECT whatever the queue (packets are lost when
    /// the queue fills); `never` always the page cache. O_DIRECT skips a copy of every byte
    /// and charges no page cache to the Pod's memory limit. Where the file system refuses
    /// O_DIRECT, the page cache is used.
    #[arg(long, env = "SIDECAP_DIRECT_IO", value_enum, default_value_t = DirectIo::Auto)]
    pub direct_io: DirectIo,

    /// Memory for packets waiting to be written (absorbs disk stalls). Units accepted.
    #[arg(long, env = "SIDECAP_QUEUE_SIZE", default_value = "64MiB")]
    pub queue_size: String,

    /// Timestamp precision of the pcap files.
    #[arg(long, env = "SIDECAP_TIME_PRECISION", value_enum, default_value_t = TimePrecision::Micro)]
    pub time_precision: TimePrecision,

    /// Admin HTTP address for GET /livez, /readyz (startupProbe: capture is live) and /metrics
    /// (Prometheus). `off` disables it.
    #[arg(long, env = "SIDECAP_LISTEN", default_value = DEFAULT_CAPTURE_LISTEN)]
    pub listen: String,

    /// No status line on a terminal and no summary at exit: log lines only (SIGUSR1 still prints
    /// the statistics). The status line is never drawn when stderr is not a terminal.
    /// SIDECAP_QUIET takes 1/0, true/false, yes/no, on/off.
    #[arg(short = 'q', long, env = "SIDECAP_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,

    /// List the interfaces libpcap can capture on, with their flags and addresses, and exit
    /// (like tcpdump -D). No environment variable: it is an action, not a setting, and set in a
    /// manifest it would turn the capture sidecar into a one-shot listing.
    #[arg(short = 'D', long)]
    pub list_interfaces: bool,

    /// The global --log-format, copied here by main: the summary and statistics are text for
    /// text logs and a log event for JSON logs.
    #[arg(skip)]
    pub log_format: LogFormat,

    /// Output file format. pcapng files also carry the Pod's identity (POD_NAME, POD_NAMESPACE,
    /// POD_UID, NODE_NAME, CONTAINER_IMAGE), interface names, per-file statistics and TLS
    /// secrets (--tls-keylog); pcap is what tcpdump writes and the oldest tools read.
    #[arg(long, env = "SIDECAP_FORMAT", value_enum, default_value_t = crate::files::FileFormat::Pcap)]
    pub format: crate::files::FileFormat,

    /// Follow this NSS key log file (SSLKEYLOGFILE, written by the app into the shared volume)
    /// and embed each new TLS secret in the pcapng file before the packets that follow, so
    /// Wireshark decrypts with no setup. The file may appear later, grow, or be replaced.
    /// Needs --format pcapng. Anyone who can read the capture files can decrypt the traffic.
    #[arg(long, env = "SIDECAP_TLS_KEYLOG")]
    pub tls_keylog: Option<PathBuf>,

    /// Leave out the packets of the paired uploader: those whose local port is in this range,
    /// which `sidecap uploader`/`upload` bind their sockets to (same flag, same default). An
    /// app's traffic to a remote port in the range is kept on `any` and on an interface. Cannot
    /// be told apart, so left out too: a server in the Pod listening on a port of the range,
    /// loopback traffic with such a port (both ends are local), and on an interface other than
    /// `any`/`lo` such packets in the first ring block after start (docs/capture.md). `none`
    /// keeps everything (to debug the uploader).
    #[arg(long, env = "SIDECAP_OWN_PORTS", value_name = "RANGE|none", default_value = crate::ownports::DEFAULT_TEXT)]
    pub own_ports: String,

    /// BPF filter expression, as trailing words like tcpdump (`sidecap capture -i lo udp port 53`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = false)]
    pub expression: Vec<String>,
}
