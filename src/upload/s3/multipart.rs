//! Multipart upload of a file larger than `--s3-part-size`: CreateMultipartUpload, one
//! UploadPart per part, CompleteMultipartUpload, each step retried by the engine's rules
//! ([`Engine::retrying`]) within the file's deadline. A broken connection costs one part, not
//! the file.
//!
//! Integrity: the upload is created with `x-amz-checksum-algorithm: SHA256`; every part carries
//! its own `x-amz-checksum-sha256` (computed in the digest pass), which the store checks
//! against the part's bytes, and the Complete request lists them again. One algorithm for
//! single and multipart uploads, no MD5 code (S3's Content-MD5 would need it), and with SHA
//! instructions SHA-256 costs no more than MD5.
//!
//! When the upload cannot finish (the deadline, a stop, a part refused for good), an
//! AbortMultipartUpload is sent, bounded in time, so no parts are left to bill; its outcome is
//! in the file's error in the report. A store that never got it (the abort failed or timed out)
//! keeps the parts until a lifecycle rule (AbortIncompleteMultipartUpload) removes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::config::Credentials;
use super::{presign, xml_escape, xml_text, S3Config, Signed, CHECKSUM_HEADER};
use crate::upload::engine::Engine;
use crate::upload::report::{FileResult, FileStatus};
use crate::upload::request::{self, Attempt, S3Body, Upload};

/// The abort never takes longer than this.
const ABORT_MAX: Duration = Duration::from_secs(5);
/// Past the deadline, the abort may use a quarter of the safety margin, within these bounds
/// (the margin is for the report and the exit: the watchdog fires at half of it).
const ABORT_PAST_DEADLINE: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(2));
const ALGORITHM_HEADER: &str = "x-amz-checksum-algorithm";

type Ended = (FileStatus, String);

/// Uploads `u` in parts to `s3`, counting attempts in `r`. `times` is (deadline, horizon).
pub(in crate::upload) async fn upload(
    engine: &Engine,
    s3: &Arc<S3Config>,
    u: &Upload<'_>,
    r: &mut FileResult,
    times: (Instant, Instant),
    cancel: &CancellationToken,
) -> Result<(), Ended> {
    let key = s3
        .template
        .render(&u.c.name, &s3.pod, u.started)
        .map_err(|e| (FileStatus::Rejected, e))?;
    let m = Multipart {
        engine,
        s3,
        key: &key,
        u,
        times,
        cancel,
    };
    let id = m.create(r).await?;
    let sent = match m.parts(&id, r).await {
        Ok(etags) => m.complete(&id, &etags, r).await,
        Err(e) => Err(e),
    };
    if let Err((status, why)) = sent {
        let note = m.abort(&id).await;
        return Err((status, format!("{why}; {note}")));
    }
    Ok(())
}

/// One file's multipart upload.
struct Multipart<'a> {
    engine: &'a Engine,
    s3: &'a Arc<S3Config>,
    key: &'a str,
    u: &'a Upload<'a>,
    times: (Instant, Instant),
    cancel: &'a CancellationToken,
}

impl Multipart<'_> {
    /// One attempt: the credentials read now, the request signed with them, sent.
    async fn attempt(
        &self,
        sign: impl Fn(&Credentials) -> Signed,
        body: S3Body,
        remaining: Duration,
        horizon: Instant,
    ) -> Attempt {
        let cfg = self.engine.config();
        let creds = match request::credentials(self.s3, &cfg.redactor).await {
            Ok(c) => c,
            Err(a) => return a,
        };
        let (client, own) = (self.engine.client(), self.engine.own());
        request::send_signed(client, own, cfg, sign(&creds), body, remaining, horizon).await
    }

    fn sign(
        &self,
        c: &Credentials,
        method: rusty_s3::Method,
        query: &[(&str, &str)],
        headers: Vec<(&'static str, String)>,
    ) -> Signed {
        let url = self.s3.bucket.object_url(self.key);
        presign(c, &self.s3.region, method, url, query, headers)
    }

    /// CreateMultipartUpload: the upload id.
    async fn create(&self, r: &mut FileResult) -> Result<String, Ended> {
        let (deadline, horizon) = self.times;
        let media = crate::files::FileFormat::media_type_of(&self.u.c.name);
        let send = |_, remaining| {
            let headers = vec![
                (ALGORITHM_HEADER, "SHA256".to_string()),
                ("content-type", media.to_string()),
            ];
            let sign = move |c: &Credentials| {
                self.sign(
                    c,
                    rusty_s3::Method::Post,
                    &[("uploads", "")],
                    headers.clone(),
                )
            };
            self.attempt(sign, S3Body::Empty, remaining, horizon)
        };
        let a = self
            .engine
            .retrying(&self.u.c.name, r, deadline, self.cancel, send)
            .await?;
        match a {
            Attempt::Status { body, .. } => xml_text(&body, "UploadId").ok_or_else(|| {
                (
                    FileStatus::Failed,
                    "CreateMultipartUpload: no UploadId in the answer".into(),
                )
            }),
            _ => Err((
                FileStatus::Failed,
                "CreateMultipartUpload: no answer".into(),
            )),
        }
    }

    /// Every part, in order: their ETags.
    async fn parts(&self, id: &str, r: &mut FileResult) -> Result<Vec<String>, Ended> {
        let (deadline, horizon) = self.times;
        let prep = self.u.prep;
        let mut etags = Vec::with_capacity(prep.parts_sha_b64.len());
        for (i, sha) in prep.parts_sha_b64.iter().enumerate() {
            let start = i as u64 * prep.part_len;
            let len = prep.part_len.min(prep.file_len - start);
            let number = (i + 1).to_string();
            let send = |_, remaining| {
                let query = [("partNumber", number.as_str()), ("uploadId", id)];
                let sign = move |c: &Credentials| {
                    let headers = vec![(CHECKSUM_HEADER, sha.clone())];
                    self.sign(c, rusty_s3::Method::Put, &query, headers)
                };
                let body = S3Body::File {
                    file: self.u.file.clone(),
                    start,
                    len,
                };
                self.attempt(sign, body, remaining, horizon)
            };
            let a = self
                .engine
                .retrying(&self.u.c.name, r, deadline, self.cancel, send)
                .await?;
            match a {
                Attempt::Status {
                    etag: Some(etag), ..
                } => etags.push(etag),
                _ => {
                    return Err((
                        FileStatus::Failed,
                        format!("UploadPart {number}: no ETag in the answer"),
                    ))
                }
            }
            tracing::debug!(file = %self.u.c.name, part = i + 1, parts = prep.parts_sha_b64.len(), bytes = len, "Part uploaded.");
        }
        Ok(etags)
    }

    /// CompleteMultipartUpload with every part's ETag and SHA-256.
    async fn complete(&self, id: &str, etags: &[String], r: &mut FileResult) -> Result<(), Ended> {
        let (deadline, horizon) = self.times;
        let xml = bytes::Bytes::from(complete_xml(etags, &self.u.prep.parts_sha_b64));
        let send = |_, remaining| {
            let xml = xml.clone();
            async move {
                let sign = |c: &Credentials| {
                    self.sign(c, rusty_s3::Method::Post, &[("uploadId", id)], vec![])
                };
                error_in_200(
                    self.attempt(sign, S3Body::Bytes(xml), remaining, horizon)
                        .await,
                )
            }
        };
        self.engine
            .retrying(&self.u.c.name, r, deadline, self.cancel, send)
            .await
            .map(|_| ())
    }

    /// AbortMultipartUpload, bounded (see [`ABORT_MAX`]): what happened, for the report.
    async fn abort(&self, id: &str) -> String {
        let (deadline, _) = self.times;
        let (lo, hi) = ABORT_PAST_DEADLINE;
        let past = (self.engine.config().margin / 4).clamp(lo, hi);
        let limit = (deadline.saturating_duration_since(Instant::now()) + past).min(ABORT_MAX);
        let sign =
            |c: &Credentials| self.sign(c, rusty_s3::Method::Delete, &[("uploadId", id)], vec![]);
        let until = Instant::now() + limit;
        let a = tokio::time::timeout(limit, self.attempt(sign, S3Body::Empty, limit, until)).await;
        let (note, ok) = match a {
            Ok(Attempt::Status { code, .. }) if (200..300).contains(&code) => {
                ("multipart upload aborted: no parts left".to_string(), true)
            }
            Ok(Attempt::Status { code: 404, .. }) => {
                ("multipart upload already gone: no parts left".to_string(), true)
            }
            Ok(Attempt::Status { code, body, .. }) => (
                format!(
                    "AbortMultipartUpload refused (HTTP {code}{}): its parts are left until a lifecycle rule (AbortIncompleteMultipartUpload) removes them",
                    super::error_of(&body).map(|e| format!(": {e}")).unwrap_or_default()
                ),
                false,
            ),
            Ok(Attempt::Transport(_, m)) | Ok(Attempt::Local(m)) => (
                format!("AbortMultipartUpload failed ({m}): its parts are left until a lifecycle rule (AbortIncompleteMultipartUpload) removes them"),
                false,
            ),
            Err(_) => (
                format!("AbortMultipartUpload got no answer within {} ms: its parts may be left until a lifecycle rule (AbortIncompleteMultipartUpload) removes them", limit.as_millis()),
                false,
            ),
        };
        if ok {
            tracing::info!(file = %self.u.c.name, "Multipart upload aborted.");
        } else {
            tracing::warn!(file = %self.u.c.name, error = %note, "Multipart upload not aborted.");
        }
        note
    }
}

/// S3 may answer CompleteMultipartUpload with 200 and an error in the body (it failed after
/// the answer started): that is a failure to retry, like a 5xx.
fn error_in_200(a: Attempt) -> Attempt {
    match a {
        Attempt::Status {
            code: 200,
            body,
            retry_after,
            etag,
        } if body.contains("<Error>") => Attempt::Status {
            code: 500,
            body,
            retry_after,
            etag,
        },
        a => a,
    }
}

/// The CompleteMultipartUpload body.
fn complete_xml(etags: &[String], shas: &[String]) -> String {
    let mut x = String::from("<CompleteMultipartUpload>");
    for (i, (etag, sha)) in etags.iter().zip(shas).enumerate() {
        x.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumSHA256>{}</ChecksumSHA256></Part>",
            i + 1,
            xml_escape(etag),
            xml_escape(sha)
        ));
    }
    x.push_str("</CompleteMultipartUpload>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_body_lists_parts_in_order() {
        let x = complete_xml(
            &["\"a\"".into(), "\"b\"".into()],
            &["s1".into(), "s2".into()],
        );
        assert_eq!(
            x,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;a&quot;</ETag><ChecksumSHA256>s1</ChecksumSHA256></Part><Part><PartNumber>2</PartNumber><ETag>&quot;b&quot;</ETag><ChecksumSHA256>s2</ChecksumSHA256></Part></CompleteMultipartUpload>"
        );
    }
}
