//! One HTTP attempt: the request built from the configuration, the body streamed from the
//! file, a bounded part of the response read, all under the attempt's watchdog
//! ([`body::watch`]). What to do next is [`retry`]'s business, not this module's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderValue};

use super::args::Method;
use super::blocking;
use super::body::{self, Prepared};
use super::config::{self, UploadConfig};
use super::redact::Redactor;
use super::retry::{self, TransportError};
use super::state::Candidate;
use crate::files::FileFormat;
use crate::ownports::forward::{Fail, OwnPorts};

/// How much of an error response body is kept for the report (scrubbed).
const ERROR_BODY_LIMIT: usize = 512;
/// How much of a successful response body is kept (an S3 answer: an upload id, an error
/// inside a 200 of CompleteMultipartUpload).
const OK_BODY_LIMIT: usize = 8 * 1024;

/// How one attempt ended.
pub(super) enum Attempt {
    Status {
        code: u16,
        retry_after: Option<String>,
        /// The error body (scrubbed, at most [`ERROR_BODY_LIMIT`]), or on success the start of
        /// the body as sent.
        body: String,
        /// The `ETag` response header (S3 UploadPart).
        etag: Option<String>,
        /// The `x-amz-checksum-sha256` response header (S3 HeadObject with checksum mode).
        checksum: Option<String>,
    },
    Transport(TransportError, String),
    /// Not sent: something on our side that another attempt will not change (an S3 key over
    /// 1024 bytes).
    Local(String),
}

/// What every attempt at one file sends: the file, its digests and its idempotency key.
pub(super) struct Upload<'a> {
    pub c: &'a Candidate,
    pub file: &'a Arc<std::fs::File>,
    pub prep: &'a Prepared,
    pub key: &'a str,
    /// When this file's upload started (the S3 key's date parts).
    pub started: std::time::SystemTime,
}

/// What one request carries, whatever it is: a capture file (streamed, gzip'd with `--gzip`) or
/// a small document such as a snapshot manifest. The headers, the token and `--form` are the
/// same for both.
pub(super) struct Payload<'a> {
    pub name: &'a str,
    /// SHA-256 (hex) of the content as stored: `x-sidecap-sha256`.
    pub sha256: &'a str,
    pub key: &'a str,
    /// Length and SHA-256 (base64) of the body as sent: `Content-Length`, `Content-Digest`.
    pub len: u64,
    pub body_sha_b64: &'a str,
    pub media_type: &'a str,
    pub gzip: bool,
    /// When the upload of this payload started (the S3 key's date parts).
    pub started: std::time::SystemTime,
}

impl<'a> Payload<'a> {
    fn of_upload(u: &'a Upload<'a>, cfg: &UploadConfig) -> Self {
        Payload {
            name: &u.c.name,
            sha256: &u.prep.file_sha,
            key: u.key,
            len: u.prep.body_len,
            body_sha_b64: &u.prep.body_sha_b64,
            media_type: FileFormat::media_type_of(&u.c.name),
            gzip: cfg.gzip,
            started: u.started,
        }
    }
}

/// One attempt, at most `remaining` long; `horizon` is the end of the whole run.
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_once(
    client: &reqwest::Client,
    own: Option<&OwnPorts>,
    cfg: &UploadConfig,
    u: &Upload<'_>,
    remaining: Duration,
    horizon: Instant,
    attempt: u32,
) -> Attempt {
    let since = Instant::now();
    let run_left = horizon.saturating_duration_since(since);
    let limits = retry::attempt_limits(remaining, run_left, u.prep.body_len);
    let progress = Arc::new(body::Progress::default());
    let stream = body::body_stream(u.file.clone(), u.prep.file_len, cfg.gzip);
    let stream = body::tracked(stream, u.prep.body_len, progress.clone());
    let req = match build(client, cfg, &Payload::of_upload(u, cfg), attempt, stream).await {
        Ok(r) => r.timeout(limits.total),
        Err(a) => return a,
    };
    tokio::select! {
        a = exchange(req, &cfg.redactor, own, since) => a,
        why = body::watch(&progress, limits) => Attempt::Transport(TransportError::Timeout, why),
    }
}

/// The body of one signed S3 request.
pub(super) enum S3Body {
    Empty,
    Bytes(bytes::Bytes),
    /// `len` bytes of the file from `start` (one part).
    File {
        file: Arc<std::fs::File>,
        start: u64,
        len: u64,
    },
}

/// One attempt at a signed S3 request (multipart steps), at most `remaining` long; `horizon`
/// is the end of the whole run. A part's body is watched like a file's ([`body::watch`]).
pub(super) async fn send_signed(
    client: &reqwest::Client,
    own: Option<&OwnPorts>,
    cfg: &UploadConfig,
    signed: crate::upload::s3::Signed,
    body: S3Body,
    remaining: Duration,
    horizon: Instant,
) -> Attempt {
    let since = Instant::now();
    let run_left = horizon.saturating_duration_since(since);
    let req = signed.request(client);
    match body {
        S3Body::Empty => {
            let limits = retry::attempt_limits(remaining, run_left, 0);
            let req = req.header(header::CONTENT_LENGTH, 0).timeout(limits.total);
            exchange(req, &cfg.redactor, own, since).await
        }
        S3Body::Bytes(b) => {
            let limits = retry::attempt_limits(remaining, run_left, b.len() as u64);
            let req = req
                .header(header::CONTENT_LENGTH, b.len())
                .body(b)
                .timeout(limits.total);
            exchange(req, &cfg.redactor, own, since).await
        }
        S3Body::File { file, start, len } => {
            let limits = retry::attempt_limits(remaining, run_left, len);
            let progress = Arc::new(body::Progress::default());
            let stream = body::tracked(body::range_stream(file, start, len), len, progress.clone());
            let req = req
                .header(header::CONTENT_LENGTH, len)
                .body(stream)
                .timeout(limits.total);
            tokio::select! {
                a = exchange(req, &cfg.redactor, own, since) => a,
                why = body::watch(&progress, limits) => Attempt::Transport(TransportError::Timeout, why),
            }
        }
    }
}

/// One attempt at a payload held in memory (a snapshot manifest), at most `timeout` long.
pub(super) async fn send_bytes(
    client: &reqwest::Client,
    own: Option<&OwnPorts>,
    cfg: &UploadConfig,
    p: &Payload<'_>,
    body: bytes::Bytes,
    attempt: u32,
    timeout: Duration,
) -> Attempt {
    let since = Instant::now();
    match build(client, cfg, p, attempt, reqwest::Body::from(body)).await {
        Ok(req) => exchange(req.timeout(timeout), &cfg.redactor, own, since).await,
        Err(a) => a,
    }
}

/// The request: URL, method, configured headers, the bearer token (read for every attempt, so
/// a rotated Secret is picked up), the sidecap headers, and the body raw or as a form part.
async fn build(
    client: &reqwest::Client,
    cfg: &UploadConfig,
    p: &Payload<'_>,
    attempt: u32,
    body: reqwest::Body,
) -> Result<reqwest::RequestBuilder, Attempt> {
    let other = |m: String| Attempt::Transport(TransportError::Other, m);
    if let Some(s3) = &cfg.s3 {
        return build_s3(client, cfg, s3, p, body).await;
    }
    let Some(url) = cfg.url_for(p.name) else {
        return Err(other("no --url".into()));
    };
    let method = match cfg.method {
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
    };
    let mut req = client.request(method, &url);
    for (n, v) in cfg.headers.iter().chain(&cfg.pod) {
        req = req.header(n, v);
    }
    if let Some(p) = &cfg.bearer_token_file {
        let (p, mut redactor) = (p.clone(), cfg.redactor.clone());
        // Worth a retry: a Secret being updated is briefly absent.
        let token = blocking::value(move || config::read_token(&p, &mut redactor))
            .await
            .map_err(|e| other(e.to_string()))?
            .map_err(|e| other(crate::exit::with_causes(&e)))?;
        if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            v.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, v);
        }
    }
    req = req
        .header("x-sidecap-file", p.name)
        .header("x-sidecap-sha256", p.sha256)
        .header("x-sidecap-attempt", attempt.to_string())
        .header("idempotency-key", p.key);
    with_body(req, cfg, p, body).map_err(other)
}

/// An S3 PutObject of the whole payload: presigned with the credentials read now (a rotated
/// Secret is picked up), the body's SHA-256 in `x-amz-checksum-sha256`.
async fn build_s3(
    client: &reqwest::Client,
    cfg: &UploadConfig,
    s3: &Arc<crate::upload::s3::S3Config>,
    p: &Payload<'_>,
    body: reqwest::Body,
) -> Result<reqwest::RequestBuilder, Attempt> {
    let key = s3
        .template
        .render(p.name, &s3.pod, p.started)
        .map_err(Attempt::Local)?;
    let creds = credentials(s3, &cfg.redactor).await?;
    let signed = crate::upload::s3::put_object(s3, &creds, &key, p.media_type, p.body_sha_b64);
    let req = signed
        .request(client)
        .header(header::CONTENT_LENGTH, p.len)
        .body(body);
    Ok(req)
}

/// The S3 credentials for one request (a Secret directory is read on the blocking pool). A
/// missing file is worth a retry: a Secret being updated is briefly absent.
pub(super) async fn credentials(
    s3: &Arc<crate::upload::s3::S3Config>,
    redactor: &Redactor,
) -> Result<crate::upload::s3::config::Credentials, Attempt> {
    let (s3, mut redactor) = (s3.clone(), redactor.clone());
    blocking::value(move || s3.credentials(&mut redactor))
        .await
        .map_err(|e| Attempt::Transport(TransportError::Other, e.to_string()))?
        .map_err(|e| Attempt::Transport(TransportError::Other, crate::exit::with_causes(&e)))
}

/// The body as a multipart form part (`--form`) or raw, with its length, type and digest.
fn with_body(
    req: reqwest::RequestBuilder,
    cfg: &UploadConfig,
    p: &Payload<'_>,
    body: reqwest::Body,
) -> Result<reqwest::RequestBuilder, String> {
    let (name, len) = (p.name, p.len);
    if let Some(field) = &cfg.form {
        let (fname, mime) = if p.gzip {
            (format!("{name}.gz"), "application/gzip")
        } else {
            (name.to_string(), p.media_type)
        };
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(fname)
            .mime_str(mime)
            .map_err(|e| e.to_string())?;
        return Ok(req.multipart(reqwest::multipart::Form::new().part(field.clone(), part)));
    }
    let req = req
        .header(header::CONTENT_TYPE, p.media_type)
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )
        .header("content-digest", format!("sha-256=:{}:", p.body_sha_b64))
        .body(body);
    Ok(if p.gzip {
        req.header(header::CONTENT_ENCODING, "gzip")
    } else {
        req
    })
}

/// Sends the request and reads (a bounded part of) the response, so the connection can be
/// reused and an error says what the receiver said.
/// With `--own-ports`, a connection failure the forwarder saw is told as the forwarder saw it.
async fn exchange(
    req: reqwest::RequestBuilder,
    redactor: &Redactor,
    own: Option<&OwnPorts>,
    since: Instant,
) -> Attempt {
    let transport = |e: &reqwest::Error| {
        let (k, m) = explain(own, since, classify_reqwest(e, redactor));
        Attempt::Transport(k, redactor.scrub(&m))
    };
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return transport(&e),
    };
    let code = resp.status().as_u16();
    let ok = (200..300).contains(&code);
    let header = |n: header::HeaderName| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let retry_after = header(header::RETRY_AFTER);
    let etag = header(header::ETAG);
    let checksum = header(header::HeaderName::from_static(
        crate::upload::s3::CHECKSUM_HEADER,
    ));
    let limit = if ok { OK_BODY_LIMIT } else { ERROR_BODY_LIMIT };
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(ch)) => {
                let room = limit.saturating_sub(body.len());
                body.extend_from_slice(&ch[..ch.len().min(room)]);
            }
            Ok(None) => break,
            // The status is what counts; a body cut short after a 2xx changes nothing.
            Err(_) if ok => break,
            Err(e) => return transport(&e),
        }
    }
    let body = if ok {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        let t: String = String::from_utf8_lossy(&body)
            .chars()
            .map(|ch| if ch.is_control() { ' ' } else { ch })
            .collect();
        redactor.scrub(t.trim())
    };
    Attempt::Status {
        code,
        retry_after,
        body,
        etag,
        checksum,
    }
}

/// Maps a reqwest error to a transport class and a message with no URL and no secret in it.
pub(super) fn classify_reqwest(e: &reqwest::Error, r: &Redactor) -> (TransportError, String) {
    let mut chain = Vec::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push(s.to_string());
        src = s.source();
    }
    let detail = chain.join(": ");
    let lower = detail.to_ascii_lowercase();
    let kind = if e.is_timeout() {
        TransportError::Timeout
    } else if lower.contains("certificate") || lower.contains("invalidcertificate") {
        TransportError::Certificate
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        TransportError::Dns
    } else if e.is_connect() {
        TransportError::Connect
    } else if e.is_request() || e.is_body() {
        TransportError::Broken
    } else {
        TransportError::Other
    };
    let what = match kind {
        TransportError::Timeout => "timed out (the attempt's budget ran out)",
        TransportError::Certificate => "TLS certificate rejected (use --ca-file for a private CA)",
        TransportError::Dns => "cannot resolve the receiver's host name",
        TransportError::Connect => "cannot connect to the receiver",
        TransportError::Broken => "connection broken during the request",
        TransportError::Other => "request failed",
    };
    let msg = if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    };
    (kind, r.scrub(&msg))
}

/// With `--own-ports`, a connection failure as the forwarder saw it, for the errors that can
/// stem from one (connect, broken, other): reqwest only saw its stream close.
fn explain(
    own: Option<&OwnPorts>,
    since: Instant,
    seen: (TransportError, String),
) -> (TransportError, String) {
    let stems = matches!(
        seen.0,
        TransportError::Connect | TransportError::Broken | TransportError::Other
    );
    match own.filter(|_| stems).and_then(|o| o.failure_since(since)) {
        Some((fail, msg)) => {
            let kind = match fail {
                Fail::Timeout => TransportError::Timeout,
                Fail::Dns => TransportError::Dns,
                Fail::Connect => TransportError::Connect,
            };
            (kind, msg)
        }
        None => seen,
    }
}
