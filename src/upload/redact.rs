//! Keeping secrets out of logs, reports, metrics, errors and panics.
//!
//! Webhook and presigned URLs carry their credential in the query string, tokens come from a
//! mounted Secret, and API keys travel in headers. Two layers: what we print on purpose is
//! built from redacted parts ([`url_for_display`]), and every free-form message (errors from the
//! HTTP stack, response bodies) goes through [`Redactor::scrub`], which blanks every secret
//! value registered at configuration time.

use std::sync::{Arc, RwLock};

use url::Url;

/// The placeholder in `--url` replaced by the percent-encoded file name. Here because the
/// redaction is what must know how a templated URL is written (its path is not a secret).
pub const FILE_PLACEHOLDER: &str = "{file}";

pub const REDACTED: &str = "[REDACTED]";
/// Secrets shorter than this are not scrubbed from free text (they would blank ordinary words
/// and numbers); they are still never printed on purpose.
const MIN_SECRET_LEN: usize = 4;

/// Header names whose values are credentials.
pub fn is_sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "authorization"
        || n == "proxy-authorization"
        || n == "cookie"
        || [
            "token",
            "secret",
            "key",
            "auth",
            "signature",
            "password",
            "session",
        ]
        .iter()
        .any(|w| n.contains(w))
}

/// A URL as it may be shown: scheme, host and port; user info, query and fragment replaced.
/// The path is shown only when it holds `{file}` (a storage location, e.g. a bucket or WebDAV
/// path); otherwise it may be the credential itself (Slack-style webhooks put it there), so
/// it is replaced too. A URL that does not parse is shown as its scheme and host at most.
pub fn url_for_display(raw: &str) -> String {
    let templated = raw.contains(FILE_PLACEHOLDER);
    match Url::parse(&raw.replace(FILE_PLACEHOLDER, "__FILE__")) {
        Ok(mut u) => {
            let had_query = u.query().is_some();
            let had_fragment = u.fragment().is_some();
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            if !templated && u.path() != "/" {
                u.set_path(REDACTED);
            }
            let mut s = u.to_string().replace("__FILE__", FILE_PLACEHOLDER);
            if had_query {
                s.push('?');
                s.push_str(REDACTED);
            }
            if had_fragment {
                s.push('#');
                s.push_str(REDACTED);
            }
            s
        }
        Err(_) => {
            // Keep at most "scheme://host".
            let cut = raw
                .find("://")
                .map(|i| i + 3)
                .and_then(|start| {
                    raw[start..]
                        .find(['/', '?', '#', '@'])
                        .map(|j| start + j)
                        .or(Some(raw.len()))
                })
                .unwrap_or(0);
            let head = &raw[..cut];
            if head.contains('@') || cut == 0 {
                format!("<unparsable URL {REDACTED}>")
            } else {
                format!("{head}/{REDACTED}")
            }
        }
    }
}

/// Scrubs registered secret values out of free text. Cheap to clone.
/// Clones share the list, so a secret learned later (a rotated token) is scrubbed everywhere.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Arc<RwLock<Vec<String>>>,
}

/// Shows how many secrets are registered, never the secrets.
impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.secrets.read().map(|v| v.len()).unwrap_or(0);
        f.debug_struct("Redactor").field("secrets", &n).finish()
    }
}

impl Redactor {
    /// Registers a secret value (ignored when too short to scrub safely).
    pub fn add(&mut self, secret: &str) {
        let s = secret.trim();
        if s.len() < MIN_SECRET_LEN {
            return;
        }
        if let Ok(mut v) = self.secrets.write() {
            if !v.iter().any(|x| x == s) {
                v.push(s.to_string());
                // Longest first, so a secret containing another is blanked whole.
                v.sort_by_key(|x| std::cmp::Reverse(x.len()));
            }
        }
    }

    /// Registers a URL's secret parts: user info, query (whole, and each value), fragment, and
    /// the path when it is not a `{file}` template (see [`url_for_display`]).
    pub fn add_url(&mut self, raw: &str) {
        if !raw.contains(FILE_PLACEHOLDER) {
            if let Ok(u) = Url::parse(raw) {
                if u.path() != "/" {
                    self.add(u.path());
                }
            }
        }
        if let Some((_, q)) = raw.split_once('?') {
            let q = q.split('#').next().unwrap_or(q);
            self.add(q);
            for pair in q.split('&') {
                if let Some((_, v)) = pair.split_once('=') {
                    self.add(v);
                }
            }
            // Also the decoded forms, which error messages may show.
            for (_, v) in url::form_urlencoded::parse(q.as_bytes()) {
                self.add(&v);
            }
        }
        if let Some((_, f)) = raw.split_once('#') {
            self.add(f);
        }
        if let Ok(u) = Url::parse(&raw.replace(FILE_PLACEHOLDER, "x")) {
            if let Some(p) = u.password() {
                self.add(p);
            }
            if !u.username().is_empty() {
                self.add(u.username());
            }
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        let Ok(secrets) = self.secrets.read() else {
            // A poisoned lock means a panic mid-update: show nothing rather than a secret.
            return REDACTED.to_string();
        };
        for s in secrets.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_drops_query_fragment_and_userinfo() {
        assert_eq!(
            url_for_display(
                "https://user:pw@example.com:8443/up/{file}?X-Amz-Signature=abc&x=1#frag"
            ),
            "https://example.com:8443/up/{file}?[REDACTED]#[REDACTED]"
        );
        assert_eq!(
            url_for_display("https://hooks.example.com/services/T0/B0/SECRETPATH"),
            "https://hooks.example.com/[REDACTED]"
        );
        assert_eq!(
            url_for_display("http://127.0.0.1:9/"),
            "http://127.0.0.1:9/"
        );
        assert_eq!(
            url_for_display("http://127.0.0.1:9/dav/{file}"),
            "http://127.0.0.1:9/dav/{file}"
        );
        let s = url_for_display("http://bad host/?sig=SECRET");
        assert!(!s.contains("SECRET"), "{s}");
        let s = url_for_display("garbage?sig=SECRET");
        assert!(!s.contains("SECRET"), "{s}");
    }

    #[test]
    fn scrub_blanks_every_registered_secret() {
        let mut r = Redactor::default();
        r.add_url("https://h/p?sig=abc%2Fdef&token=longtoken123");
        r.add("tok-XYZ-123");
        r.add("ab"); // too short to scrub
        let msg =
            "error for url (https://h/p?sig=abc%2Fdef&token=longtoken123): tok-XYZ-123 abc/def ab";
        let out = r.scrub(msg);
        for s in ["abc%2Fdef", "longtoken123", "tok-XYZ-123", "abc/def"] {
            assert!(!out.contains(s), "{s} left in {out}");
        }
        assert!(out.ends_with(" ab"));
    }

    #[test]
    fn sensitive_header_names() {
        for n in [
            "Authorization",
            "X-Api-Key",
            "X-Auth-Token",
            "Cookie",
            "x-goog-signature",
        ] {
            assert!(is_sensitive_header(n), "{n}");
        }
        for n in ["X-Team", "Content-Type"] {
            assert!(!is_sensitive_header(n), "{n}");
        }
    }
}
