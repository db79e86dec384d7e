//! Raw upload flags -> a validated [`UploadConfig`]: the URL, headers, token and CA file are
//! checked once, before anything runs, and every secret found on the way is registered with the
//! [`Redactor`] so no later message can leak it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use url::Url;

use super::args::{Method, Order, UploadOpts};
use super::redact::{self, Redactor, FILE_PLACEHOLDER};
use crate::config::parse_duration;
use crate::files::Layout;

/// Downward-API environment variables sent as `X-Sidecap-Pod-*` headers when present.
pub const POD_ENV: [(&str, &str); 4] = [
    ("POD_NAME", "x-sidecap-pod-name"),
    ("POD_NAMESPACE", "x-sidecap-pod-namespace"),
    ("POD_UID", "x-sidecap-pod-uid"),
    ("NODE_NAME", "x-sidecap-pod-node"),
];

/// Both are invalid configuration (exit 3), as in `capture`: exit 2 is only for what the
/// command-line parser itself refuses (an unknown flag, a missing value).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A malformed or impossible value.
    #[error("{0}")]
    Value(String),
    /// A file we were pointed at cannot be read.
    #[error("{flag} {}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file that was read but cannot be used (not UTF-8, empty, a bad certificate).
    #[error("{0}")]
    File(String),
}

#[derive(Clone)]
pub struct UploadConfig {
    pub layout: Layout,
    /// The URL as given (may contain `{file}`); never log it, use `url_display`.
    pub url: Option<String>,
    pub url_display: String,
    pub method: Method,
    pub form: Option<String>,
    pub gzip: bool,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub bearer_token_file: Option<PathBuf>,
    pub ca_pem: Option<Vec<u8>>,
    pub order: Order,
    pub grace: Duration,
    pub margin: Duration,
    pub pod: Vec<(HeaderName, HeaderValue)>,
    pub pod_uid: String,
    pub redactor: Redactor,
    /// The local ports every connection leaves from (`--own-ports`); None: ordinary ports.
    pub own_ports: Option<crate::ownports::PortRange>,
    /// The S3 destination, when `--url` is an s3:// URL (then `method`, `form`, `headers`,
    /// `gzip` and `bearer_token_file` are unset: refused with it).
    pub s3: Option<std::sync::Arc<super::s3::S3Config>>,
}

/// Header values and the URL are secrets: Debug shows header names and the redacted URL only.
impl std::fmt::Debug for UploadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |h: &[(HeaderName, HeaderValue)]| -> Vec<String> {
            h.iter()
                .map(|(n, _)| format!("{n}: {}", redact::REDACTED))
                .collect()
        };
        f.debug_struct("UploadConfig")
            .field("layout", &self.layout)
            .field("url", &self.url_display)
            .field("method", &self.method)
            .field("form", &self.form)
            .field("gzip", &self.gzip)
            .field("headers", &names(&self.headers))
            .field("bearer_token_file", &self.bearer_token_file)
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .field("order", &self.order)
            .field("grace", &self.grace)
            .field("margin", &self.margin)
            .field("pod", &names(&self.pod))
            .field("redactor", &self.redactor)
            .field("s3", &self.s3)
            .finish_non_exhaustive()
    }
}

impl UploadConfig {
    /// The preStop budget: grace period minus safety margin.
    pub fn budget(&self) -> Duration {
        self.grace.saturating_sub(self.margin)
    }

    /// The URL every connection goes to, for the own-ports forwarder: `--url`, or the S3
    /// bucket's URL.
    pub fn connect_url(&self) -> Option<String> {
        match &self.s3 {
            Some(s3) => Some(s3.base_url().to_string()),
            None => self.url.clone(),
        }
    }

    /// The URL for one file, with `{file}` replaced.
    pub fn url_for(&self, name: &str) -> Option<String> {
        self.url
            .as_ref()
            .map(|u| u.replace(FILE_PLACEHOLDER, &percent_encode(name)))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// Headers sidecap sets from the body itself: a user value would contradict the body (a
/// second `Content-Length` made the body go chunked, which presigned S3 PUTs refuse).
const BODY_HEADERS: [&str; 2] = ["content-length", "transfer-encoding"];

/// Parses `Name: value`. One header per value: a line break inside it is an error, never a
/// second header.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    if s.contains(['\r', '\n']) {
        return Err(
            "invalid --header: a line break inside one value (one header per --header)".into(),
        );
    }
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| "invalid --header: expected 'Name: value'".to_string())?;
    // The name is not echoed: a header written with '=' instead of ':' puts its secret value
    // into what would be the name ("Authorization=Bearer …:x").
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        let bad = name
            .trim()
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)))
            .map_or(0, |(i, _)| i + 1);
        format!(
            "invalid --header name ({} characters, the first invalid one at position {bad}): expected 'Name: value'",
            name.trim().chars().count()
        )
    })?;
    if BODY_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "invalid --header {name}: sidecap sets it from the file (the real length is always sent)"
        ));
    }
    let mut value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid --header value for {name}"))?;
    if redact::is_sensitive_header(name.as_str()) {
        value.set_sensitive(true);
    }
    Ok((name, value))
}

/// The grace period and the safety margin, checked: everything the deadline needs, and nothing
/// that reads a file (the watchdog is armed from these before any file is read).
pub fn timing(o: &UploadOpts) -> Result<(Duration, Duration), ConfigError> {
    let usage = ConfigError::Value;
    let grace =
        parse_duration(&o.grace_period).map_err(|e| usage(format!("--grace-period: {e}")))?;
    let margin =
        parse_duration(&o.safety_margin).map_err(|e| usage(format!("--safety-margin: {e}")))?;
    if margin >= grace {
        return Err(usage(format!(
            "--safety-margin ({}) must be shorter than --grace-period ({}): nothing would be left for uploading",
            o.safety_margin, o.grace_period
        )));
    }
    Ok((grace, margin))
}

pub fn from_opts(o: &UploadOpts, url_required: bool) -> Result<UploadConfig, ConfigError> {
    let usage = ConfigError::Value;
    let mut redactor = Redactor::default();
    let (grace, margin) = timing(o)?;
    if o.prefix.is_empty() || o.prefix.contains('/') {
        return Err(usage(format!("invalid --prefix {:?}", o.prefix)));
    }
    let url = url_of(o, url_required, &mut redactor)?;
    let s3 = match url.as_deref().filter(|u| super::s3::config::is_s3_url(u)) {
        Some(u) => Some(std::sync::Arc::new(super::s3::config::from_opts(
            o,
            u,
            &mut redactor,
            &|k| std::env::var(k).ok(),
        )?)),
        None => None,
    };
    let url_display = match &s3 {
        Some(s3) => s3.display(),
        None => url
            .as_deref()
            .map(redact::url_for_display)
            .unwrap_or_else(|| "(none)".into()),
    };
    if let Some(f) = &o.form {
        if f.is_empty() || f.contains('"') || f.contains('\n') {
            return Err(usage(format!("invalid --form field name {f:?}")));
        }
    }
    let headers = headers_of(o, &mut redactor)?;
    if let Some(p) = &o.bearer_token_file {
        // Checked now so a wrong path fails at start; read again for every file, because
        // mounted Secrets and projected tokens rotate while a long-running uploader lives.
        read_token(p, &mut redactor)?;
    }
    let own_ports = crate::ownports::PortRange::parse(&o.own_ports)
        .map_err(|e| usage(format!("--own-ports: {e}")))?;
    let ca_pem = match &o.ca_file {
        Some(p) => Some(read_ca(p)?),
        None => None,
    };
    let (pod, pod_uid) = pod_headers();
    Ok(UploadConfig {
        layout: Layout::new(&o.dir, &o.prefix),
        url,
        url_display,
        method: o.method.unwrap_or(Method::Post),
        form: o.form.clone(),
        gzip: o.gzip,
        headers,
        bearer_token_file: o.bearer_token_file.clone(),
        ca_pem,
        order: o.order,
        grace,
        margin,
        pod,
        pod_uid,
        redactor,
        own_ports,
        s3,
    })
}

/// `--url`, checked, its secret parts registered with the redactor.
fn url_of(
    o: &UploadOpts,
    url_required: bool,
    redactor: &mut Redactor,
) -> Result<Option<String>, ConfigError> {
    let usage = ConfigError::Value;
    let u = match &o.url {
        Some(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ if url_required => {
            return Err(usage(
                "--url (or SIDECAP_UPLOAD_URL) is required".to_string(),
            ))
        }
        _ => return Ok(None),
    };
    if super::s3::config::is_s3_url(&u) {
        // Checked by s3::config; its path is a key template, not a secret.
        return Ok(Some(u));
    }
    redactor.add_url(&u);
    // `{file}` is not valid in every URL part; check the URL with a sample name.
    let parsed = Url::parse(&u.replace(FILE_PLACEHOLDER, "x")).map_err(|e| {
        // idna is linked without its Unicode tables (Cargo.lock pins idna_adapter 1.0, -121 KB
        // of the image, docs/image.md): a host name is accepted in its ASCII form only.
        let hint = if e == url::ParseError::IdnaError {
            "; write a non-ASCII host name in its ASCII form (xn--...)"
        } else {
            ""
        };
        usage(format!(
            "invalid --url {}: {e}{hint}",
            redact::url_for_display(&u)
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(usage(format!(
            "invalid --url {}: only http, https and s3 are supported",
            redact::url_for_display(&u)
        )));
    }
    if parsed.host_str().is_none() {
        return Err(usage(format!(
            "invalid --url {}: no host",
            redact::url_for_display(&u)
        )));
    }
    Ok(Some(u))
}

/// The `--header` values, parsed; each value registered with the redactor.
fn headers_of(
    o: &UploadOpts,
    redactor: &mut Redactor,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let mut headers = Vec::new();
    for h in header_lines(&o.headers)
        .iter()
        .filter(|h| !h.trim().is_empty())
    {
        let (n, v) = parse_header(h).map_err(ConfigError::Value)?;
        // Any header value may be a credential (API keys come in many names): scrub them all
        // from messages. Short values are skipped so that "1" does not blank every number.
        if let Ok(s) = v.to_str() {
            redactor.add(s);
        }
        headers.push((n, v));
    }
    Ok(headers)
}

/// The Pod's identity from the downward API (see [`POD_ENV`]) as headers, and its UID.
fn pod_headers() -> (Vec<(HeaderName, HeaderValue)>, String) {
    let mut pod = Vec::new();
    let mut pod_uid = String::new();
    for (env, header) in POD_ENV {
        if let Ok(v) = std::env::var(env) {
            if env == "POD_UID" {
                pod_uid = v.clone();
            }
            if let Ok(hv) = HeaderValue::from_str(&v) {
                pod.push((HeaderName::from_static(header), hv));
            }
        }
    }
    (pod, pod_uid)
}

/// A bearer token is a few KiB at most (a projected service-account JWT is ~1 KiB).
const TOKEN_MAX: u64 = 64 * 1024;
/// A CA bundle: the whole Mozilla bundle is ~220 KiB.
const CA_MAX: u64 = 4 << 20;

/// The `--header` values, one header each. `SIDECAP_HEADER` holds one header per line (a
/// Secret or ConfigMap value); clap hands it over as one value, which is split here, and only
/// there: a line break inside a `--header` given on the command line is an error.
fn header_lines(values: &[String]) -> Vec<String> {
    let env = std::env::var("SIDECAP_HEADER").ok();
    match values {
        [one] if env.as_deref() == Some(one.as_str()) => one
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .collect(),
        _ => values.to_vec(),
    }
}

/// Reads the bearer token file and registers the token as a secret. Bounded: a regular file of
/// at most [`TOKEN_MAX`] bytes, opened without waiting (a FIFO, `/dev/zero` are refused).
pub fn read_token(p: &Path, redactor: &mut Redactor) -> Result<String, ConfigError> {
    let t = crate::volume::read_user_file(p, TOKEN_MAX).map_err(|source| ConfigError::Read {
        flag: "--bearer-token-file",
        path: p.to_path_buf(),
        source,
    })?;
    read_token_text(p, t, redactor).map_err(ConfigError::File)
}

/// The token in a bearer token file's bytes, registered as a secret.
fn read_token_text(p: &Path, t: Vec<u8>, redactor: &mut Redactor) -> Result<String, String> {
    let t = String::from_utf8(t)
        .map_err(|_| format!("--bearer-token-file {}: not UTF-8 text", p.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(format!("--bearer-token-file {} is empty", p.display()));
    }
    if HeaderValue::from_str(&format!("Bearer {t}")).is_err() {
        return Err(format!(
            "--bearer-token-file {}: the token has characters not allowed in a header",
            p.display()
        ));
    }
    redactor.add(&t);
    Ok(t)
}

/// Reads the CA bundle and checks every certificate in it the way the HTTP client will, so a
/// bad one is named here (which file, which certificate, why) and not later as a bare
/// "builder error".
fn read_ca(p: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = crate::volume::read_user_file(p, CA_MAX).map_err(|source| ConfigError::Read {
        flag: "--ca-file",
        path: p.to_path_buf(),
        source,
    })?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => {
            for (i, c) in certs.into_iter().enumerate() {
                let built = reqwest::Client::builder()
                    .use_rustls_tls()
                    .add_root_certificate(c)
                    .build();
                if let Err(e) = built {
                    return Err(ConfigError::File(format!(
                        "--ca-file {}: certificate {} of the file is not a valid X.509 certificate: {}",
                        p.display(),
                        i + 1,
                        error_chain(&e)
                    )));
                }
            }
            Ok(pem)
        }
        Ok(_) => Err(ConfigError::File(format!(
            "--ca-file {}: no PEM certificate found",
            p.display()
        ))),
        Err(e) => Err(ConfigError::File(format!("--ca-file {}: {e}", p.display()))),
    }
}

/// The causes of an error, "b: c": reqwest's own message ("builder error") says nothing, its
/// sources say what is wrong. The error itself when it has no source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut src = e.source();
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_percent_encoded() {
        assert_eq!(
            percent_encode("capture-20261122T154123Z-000001.pcap"),
            "capture-20261122T154123Z-000001.pcap"
        );
        assert_eq!(percent_encode("a b/c?d"), "a%20b%2Fc%3Fd");
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let opts = UploadOpts {
            headers: vec!["X-Api-Key: HEADERSECRET3".into()],
            own_ports: crate::ownports::DEFAULT_TEXT.into(),
            ..UploadOpts::for_test("https://h.example/hook/PATHSECRET1?sig=QUERYSECRET2")
        };
        let cfg = from_opts(&opts, true).unwrap();
        for text in [format!("{cfg:?}"), format!("{opts:?}"), format!("{cfg:#?}")] {
            for secret in ["PATHSECRET1", "QUERYSECRET2", "HEADERSECRET3"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(
                text.contains("x-api-key") || text.contains("X-Api-Key"),
                "{text}"
            );
        }
    }

    fn opts_with_url(url: &str) -> UploadOpts {
        UploadOpts {
            own_ports: crate::ownports::DEFAULT_TEXT.into(),
            ..UploadOpts::for_test(url)
        }
    }

    #[test]
    fn host_names_are_taken_in_their_ascii_form() {
        let cfg = from_opts(&opts_with_url("https://xn--bcher-kva.example/up"), true).unwrap();
        assert_eq!(
            cfg.url_for("a.pcap").as_deref(),
            Some("https://xn--bcher-kva.example/up")
        );
        let e = from_opts(&opts_with_url("https://bücher.example/up"), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid international domain name"), "{e}");
        assert!(e.contains("ASCII form (xn--...)"), "{e}");
    }

    #[test]
    fn headers_parse_and_mark_secrets() {
        let (n, v) = parse_header("X-Api-Key:  abc ").unwrap();
        assert_eq!(n.as_str(), "x-api-key");
        assert_eq!(v.to_str().unwrap(), "abc");
        assert!(v.is_sensitive());
        let (_, v) = parse_header("X-Team: net").unwrap();
        assert!(!v.is_sensitive());
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
