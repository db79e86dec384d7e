//! The S3 destination (issue 15): `--url s3://BUCKET/KEY-TEMPLATE`.
//!
//! Requests are signed as presigned URLs (SigV4 in the query string, `rusty-s3`'s
//! [`rusty_s3::signing::sign`]) and sent through the engine's one reqwest client, so they go
//! through the same own-ports forwarder, deadline, retry, ledger and report as a webhook
//! upload. The payload is not signed (a presigned URL never signs it); its integrity is the
//! `x-amz-checksum-sha256` header (signed), which the store checks against the body it got:
//! a corrupted body is refused, never stored.
//!
//! A file larger than `--s3-part-size` goes up as a multipart upload ([`multipart`]).

pub mod config;
pub mod multipart;

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;

pub use config::S3Config;

/// How long a presigned request stays valid. S3 checks it when the request starts, so a long
/// part upload that started in time is not cut; one hour also covers a clock a little off.
const PRESIGN_FOR: Duration = Duration::from_secs(3600);

/// The header that carries the body's SHA-256 (base64) for the store to check.
pub const CHECKSUM_HEADER: &str = "x-amz-checksum-sha256";

/// One S3 request, signed: method, presigned URL and the headers that were signed with it
/// (which must be sent as they are).
pub struct Signed {
    pub method: reqwest::Method,
    pub url: url::Url,
    pub headers: Vec<(&'static str, String)>,
}

impl Signed {
    /// The request on `client`, with its signed headers (every value marked sensitive: a
    /// signed header is part of the signature).
    pub fn request(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut req = client.request(self.method.clone(), self.url.clone());
        for (n, v) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                req = req.header(*n, v);
            }
        }
        req
    }
}

/// Presigns `method` on `url` with `query` (sorted by name) and `headers` (sorted, lowercase).
pub fn presign(
    creds: &config::Credentials,
    region: &str,
    method: rusty_s3::Method,
    url: url::Url,
    query: &[(&str, &str)],
    headers: Vec<(&'static str, String)>,
) -> Signed {
    let now = jiff::Timestamp::now();
    let mut sorted = headers;
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let url = rusty_s3::signing::sign(
        &now,
        method,
        url,
        &creds.key,
        &creds.secret,
        creds.token.as_deref(),
        region,
        PRESIGN_FOR.as_secs(),
        query.iter().copied(),
        sorted.iter().map(|(n, v)| (*n, v.as_str())),
    );
    let method = match method {
        rusty_s3::Method::Head => reqwest::Method::HEAD,
        rusty_s3::Method::Get => reqwest::Method::GET,
        rusty_s3::Method::Post => reqwest::Method::POST,
        rusty_s3::Method::Put => reqwest::Method::PUT,
        rusty_s3::Method::Delete => reqwest::Method::DELETE,
    };
    Signed {
        method,
        url,
        headers: sorted,
    }
}

/// The PutObject of a whole body: its length, type and SHA-256 (base64) go with it.
pub fn put_object(
    s3: &S3Config,
    creds: &config::Credentials,
    key: &str,
    media_type: &str,
    sha256_b64: &str,
) -> Signed {
    presign(
        creds,
        &s3.region,
        rusty_s3::Method::Put,
        s3.bucket.object_url(key),
        &[],
        vec![
            (CHECKSUM_HEADER, sha256_b64.to_string()),
            ("content-type", media_type.to_string()),
        ],
    )
}

/// An S3 error response (`<Error><Code>…</Code><Message>…</Message>…`) in one line:
/// `NoSuchBucket: The specified bucket does not exist`. None when the body is not one.
pub fn error_of(body: &str) -> Option<String> {
    let code = xml_text(body, "Code")?;
    Some(match xml_text(body, "Message") {
        Some(m) if !m.is_empty() => format!("{code}: {m}"),
        _ => code,
    })
}

/// The text of the first `<tag>…</tag>` in `xml` (S3's answers are flat and small; the few
/// entities S3 escapes are unescaped).
pub fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(
        xml[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// S3 errors sent with a 4xx that another attempt can fix: the body came too slowly
/// (`RequestTimeout`), or did not match its checksum (`BadDigest` on AWS, `InvalidDigest` on
/// Garage, `XAmzContentChecksumMismatch`): the file's digest was taken from the file, so a
/// mismatch is the wire's doing, and the next attempt sends the same bytes again.
pub fn is_transient(error: &str) -> bool {
    let code = error.split(':').next().unwrap_or("");
    matches!(
        code,
        "RequestTimeout" | "BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch"
    )
}

/// XML-escapes text for a request body.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// UTC date parts of `at` for the key template: (yyyy, mm, dd, hh).
pub fn date_parts(at: SystemTime) -> [String; 4] {
    // "2026-12-01T14:30:00.000Z"
    let t = crate::files::rfc3339(at);
    let part = |a: usize, b: usize| t.get(a..b).unwrap_or("00").to_string();
    [part(0, 4), part(5, 7), part(8, 10), part(11, 13)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_read_as_one_line() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchBucket</Code><Message>Bucket not found: nope</Message><Resource>/nope/x</Resource></Error>";
        assert_eq!(
            error_of(body).as_deref(),
            Some("NoSuchBucket: Bucket not found: nope")
        );
        assert_eq!(
            error_of("<Error><Code>AccessDenied</Code></Error>").as_deref(),
            Some("AccessDenied")
        );
        assert_eq!(error_of("plain text"), None);
        assert!(is_transient(
            "InvalidDigest: Invalid digest: Failed to validate checksum"
        ));
        assert!(is_transient("BadDigest") && is_transient("RequestTimeout: slow"));
        assert!(!is_transient("NoSuchBucket: x") && !is_transient("AccessDenied"));
        assert_eq!(xml_text("<a>x &amp; y</a>", "a").as_deref(), Some("x & y"));
        assert_eq!(xml_escape("a<&\"'>"), "a&lt;&amp;&quot;&apos;&gt;");
    }

    #[test]
    fn date_parts_are_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_599_400); // 2025-12-01T14:30Z
        assert_eq!(date_parts(at), ["2025", "12", "01", "14"]);
    }
}
