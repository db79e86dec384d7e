//! Command-line flags of the uploader subcommands: raw values and their environment variables.
//! `config.rs` turns them into a validated configuration before anything runs.
//!
//! Values that may carry secrets (`--url`, `--header`) hide their environment values in
//! `--help`, so `sidecap upload --help` inside a Pod never prints them.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Where the uploader sidecar's admin server listens by default (the capture uses 9797).
pub const DEFAULT_UPLOADER_LISTEN: &str = "0.0.0.0:9798";
/// Kubernetes' default terminationGracePeriodSeconds.
pub const DEFAULT_GRACE_PERIOD: &str = "30s";
/// Time kept back from the grace period for writing the report and exiting: the kubelet's
/// SIGKILL comes at t0 + grace, and our start is a little after t0.
pub const DEFAULT_SAFETY_MARGIN: &str = "2s";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    #[value(name = "POST")]
    Post,
    #[value(name = "PUT")]
    Put,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogToPid1 {
    /// When not PID 1 and /proc/1/fd/1 is writable (an exec hook inside the container).
    Auto,
    Always,
    Never,
}

/// Options shared by `uploader` and `upload`: where the files are and how to send them.
#[derive(Args, Clone)]
pub struct UploadOpts {
    /// Directory the capture writes to (the shared volume).
    #[arg(short = 'w', long, env = "SIDECAP_DIR", default_value = ".")]
    pub dir: PathBuf,

    /// File name prefix of the capture (same as `sidecap capture --prefix`).
    #[arg(long, env = "SIDECAP_PREFIX", default_value = "capture")]
    pub prefix: String,

    /// Receiver URL. `{file}` is replaced by the percent-encoded file name (for PUT to
    /// WebDAV or bucket paths). Treated as a secret: its query string is never logged.
    /// `s3://BUCKET/KEY-TEMPLATE` uploads to S3-compatible object storage (see the --s3-*
    /// options): placeholders {file} (required), {namespace}, {pod}, {uid}, {yyyy}, {mm}, {dd},
    /// {hh}; `s3://BUCKET` alone means {namespace}/{pod}/{file}.
    #[arg(long, env = "SIDECAP_UPLOAD_URL", hide_env_values = true)]
    pub url: Option<String>,

    /// HTTP method (default POST). PUT works with presigned S3/GCS/Azure URLs and WebDAV.
    /// Not with an s3:// URL.
    #[arg(long, env = "SIDECAP_METHOD", value_enum, ignore_case = true)]
    pub method: Option<Method>,

    /// Send the file as multipart/form-data in this form field instead of a raw body.
    #[arg(long, env = "SIDECAP_FORM")]
    pub form: Option<String>,

    /// Compress the body with gzip (Content-Encoding: gzip).
    #[arg(long, env = "SIDECAP_GZIP")]
    pub gzip: bool,

    /// Extra request header `Name: value` (repeatable; in the environment, one per line). A
    /// line break inside one value, `Content-Length` and `Transfer-Encoding` are refused.
    #[arg(
        long = "header",
        value_name = "NAME: VALUE",
        env = "SIDECAP_HEADER",
        hide_env_values = true
    )]
    pub headers: Vec<String>,

    /// File holding a bearer token (a mounted Secret), sent as `Authorization: Bearer ...`.
    /// A regular file of at most 64 KiB.
    #[arg(long, env = "SIDECAP_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,

    /// PEM file of extra CA certificates to trust (a private CA). TLS is always verified.
    /// A regular file of at most 4 MiB.
    #[arg(long, env = "SIDECAP_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Which files go first when the budget may not cover all of them.
    #[arg(long, env = "SIDECAP_ORDER", value_enum, default_value_t = Order::NewestFirst)]
    pub order: Order,

    /// The Pod's terminationGracePeriodSeconds: the preStop path must be done by
    /// start + grace period - safety margin.
    #[arg(long, env = "SIDECAP_GRACE_PERIOD", default_value = DEFAULT_GRACE_PERIOD)]
    pub grace_period: String,

    /// Time kept back from the grace period (report, exit, clock skew between hooks).
    #[arg(long, env = "SIDECAP_SAFETY_MARGIN", default_value = DEFAULT_SAFETY_MARGIN)]
    pub safety_margin: String,

    /// Connect to the receiver (and the proxy, and the DNS servers) only from local ports in
    /// this range, which `sidecap capture` leaves out of the capture (same flag, same default;
    /// reserve it with the Pod sysctl net.ipv4.ip_local_reserved_ports). `none` connects from
    /// ordinary ports, and the capture records the uploads (to debug the uploader).
    #[arg(long, env = "SIDECAP_OWN_PORTS", value_name = "RANGE|none", default_value = crate::ownports::DEFAULT_TEXT)]
    pub own_ports: String,

    /// S3 endpoint URL (s3:// only). Default: https://s3.REGION.amazonaws.com. When
    /// SIDECAP_S3_ENDPOINT is unset, AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL are used.
    #[arg(long, env = "SIDECAP_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region to sign with (s3:// only). Default: us-east-1. When SIDECAP_S3_REGION is
    /// unset, AWS_REGION, then AWS_DEFAULT_REGION are used.
    #[arg(long, env = "SIDECAP_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// S3 addressing: `auto` is virtual-hosted (BUCKET.host) for *.amazonaws.com endpoints
    /// (path-style when the bucket name has a dot), path-style (host/BUCKET) for any other.
    #[arg(long, env = "SIDECAP_S3_ADDRESSING", value_enum, default_value_t = Addressing::Auto)]
    pub s3_addressing: Addressing,

    /// Directory of a mounted Secret with the files AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    /// and optionally AWS_SESSION_TOKEN, read again for every file (a rotated Secret is picked
    /// up). Without it: the environment variables of the same names.
    #[arg(long, env = "SIDECAP_S3_CREDENTIALS_DIR", value_name = "DIR")]
    pub s3_credentials_dir: Option<PathBuf>,

    /// A file larger than this goes up as a multipart upload in parts of this size, so a
    /// broken connection re-sends one part, not the file (at least 5MiB, S3's limit).
    #[arg(
        long,
        env = "SIDECAP_S3_PART_SIZE",
        value_name = "SIZE",
        default_value = "16MiB"
    )]
    pub s3_part_size: String,
}

/// `--s3-addressing`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Addressing {
    Auto,
    Path,
    Virtual,
}

/// `--url` and `--header` values are secrets: Debug shows the redacted URL and header names.
#[cfg(test)]
impl UploadOpts {
    /// The options as clap gives them with only `--url` set and no own ports: for unit tests,
    /// which change what they test with struct update syntax.
    pub(crate) fn for_test(url: &str) -> Self {
        UploadOpts {
            dir: ".".into(),
            prefix: "capture".into(),
            url: Some(url.into()),
            method: None,
            form: None,
            gzip: false,
            headers: vec![],
            bearer_token_file: None,
            ca_file: None,
            order: Order::NewestFirst,
            grace_period: "30s".into(),
            safety_margin: "2s".into(),
            own_ports: crate::ownports::NONE.into(),
            s3_endpoint: None,
            s3_region: None,
            s3_addressing: Addressing::Auto,
            s3_credentials_dir: None,
            s3_part_size: "16MiB".into(),
        }
    }
}

impl std::fmt::Debug for UploadOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|h| {
                let name = h.split_once(':').map_or("?", |(n, _)| n.trim());
                format!("{name}: {}", super::redact::REDACTED)
            })
            .collect();
        f.debug_struct("UploadOpts")
            .field("dir", &self.dir)
            .field("prefix", &self.prefix)
            .field(
                "url",
                &self.url.as_deref().map(super::redact::url_for_display),
            )
            .field("method", &self.method)
            .field("form", &self.form)
            .field("gzip", &self.gzip)
            .field("headers", &headers)
            .field("bearer_token_file", &self.bearer_token_file)
            .field("ca_file", &self.ca_file)
            .field("order", &self.order)
            .field("grace_period", &self.grace_period)
            .field("safety_margin", &self.safety_margin)
            .field("own_ports", &self.own_ports)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_addressing", &self.s3_addressing)
            .field("s3_credentials_dir", &self.s3_credentials_dir)
            .field("s3_part_size", &self.s3_part_size)
            .finish()
    }
}

/// `sidecap upload`: the preStop path (exec hook).
#[derive(Args, Debug, Clone)]
pub struct UploadArgs {
    #[command(flatten)]
    pub opts: UploadOpts,

    /// Also write log lines to /proc/1/fd/1 so an exec hook's output shows in the container
    /// log (kubelet shows nothing of a hook's own output).
    #[arg(long, env = "SIDECAP_LOG_TO_PID1", value_enum, default_value_t = LogToPid1::Auto)]
    pub log_to_pid1: LogToPid1,
}

/// `sidecap uploader`: the long-running sidecar.
#[derive(Args, Debug, Clone)]
pub struct UploaderArgs {
    #[command(flatten)]
    pub opts: UploadOpts,

    /// Upload each finished .pcap as soon as it appears (needs --url).
    #[arg(long, env = "SIDECAP_CONTINUOUS")]
    pub continuous: bool,

    /// How often --continuous looks for finished files.
    #[arg(long, env = "SIDECAP_POLL_INTERVAL", default_value = "2s")]
    pub poll_interval: String,

    /// Time allowed for one file in --continuous mode (the preStop path uses the grace period).
    #[arg(long, env = "SIDECAP_FILE_TIMEOUT", default_value = "5m")]
    pub file_timeout: String,

    /// Admin HTTP address: GET /livez, /readyz and /metrics.
    /// `off` disables it.
    #[arg(long, env = "SIDECAP_LISTEN", default_value = DEFAULT_UPLOADER_LISTEN)]
    pub listen: String,

    #[command(flatten)]
    pub annotations: super::annotations::AnnotationArgs,
}
