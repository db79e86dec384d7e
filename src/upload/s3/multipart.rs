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

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
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
/// Asks HeadObject for the object's checksum headers.
const CHECKSUM_MODE_HEADER: &str = "x-amz-checksum-mode";

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

    /// CompleteMultipartUpload with every part's ETag and SHA-256. When an attempt's answer
    /// was lost and a retry finds the upload gone (`NoSuchUpload`), the lost attempt may well
    /// have completed it: [`Self::confirm`] looks at the object before calling it a failure.
    async fn complete(&self, id: &str, etags: &[String], r: &mut FileResult) -> Result<(), Ended> {
        let (deadline, horizon) = self.times;
        let xml = bytes::Bytes::from(complete_xml(etags, &self.u.prep.parts_sha_b64));
        // An earlier attempt got no answer that says what the store did; a later one found
        // the upload gone.
        let (lost, gone) = (AtomicBool::new(false), AtomicBool::new(false));
        let send = |_, remaining| {
            let (xml, lost, gone) = (xml.clone(), &lost, &gone);
            async move {
                let sign = |c: &Credentials| {
                    self.sign(c, rusty_s3::Method::Post, &[("uploadId", id)], vec![])
                };
                let a = error_in_200(
                    self.attempt(sign, S3Body::Bytes(xml), remaining, horizon)
                        .await,
                );
                if lost.load(Relaxed) && is_no_such_upload(&a) {
                    gone.store(true, Relaxed);
                }
                if answer_lost(&a) {
                    lost.store(true, Relaxed);
                }
                a
            }
        };
        match self
            .engine
            .retrying(&self.u.c.name, r, deadline, self.cancel, send)
            .await
        {
            Ok(_) => Ok(()),
            Err((FileStatus::Rejected, why)) if gone.load(Relaxed) => self.confirm(why, r).await,
            Err(e) => Err(e),
        }
    }

    /// After a lost answer to CompleteMultipartUpload and `NoSuchUpload` on its retry
    /// (`why`): a HeadObject with checksum mode on the key. The object's composite SHA-256
    /// equal to the one of our parts means the lost attempt completed the upload (the same
    /// parts, in the same order, with the same bytes): it is sent. Anything else keeps the
    /// rejection, saying what was found at the key.
    async fn confirm(&self, why: String, r: &mut FileResult) -> Result<(), Ended> {
        let Some(want) = composite_sha256(&self.u.prep.parts_sha_b64) else {
            return Err((FileStatus::Rejected, why));
        };
        let (deadline, horizon) = self.times;
        let send = |_, remaining| {
            let sign = |c: &Credentials| {
                let headers = vec![(CHECKSUM_MODE_HEADER, "ENABLED".to_string())];
                self.sign(c, rusty_s3::Method::Head, &[], headers)
            };
            self.attempt(sign, S3Body::Empty, remaining, horizon)
        };
        let head = self
            .engine
            .retrying(&self.u.c.name, r, deadline, self.cancel, send)
            .await;
        match head_verdict(&head, &want) {
            Ok(()) => {
                tracing::info!(file = %self.u.c.name, key = %self.key, checksum = %want, "Multipart upload confirmed by HeadObject: CompleteMultipartUpload's answer was lost, its retry found the upload completed (NoSuchUpload), and the object's composite SHA-256 is ours.");
                r.confirmed_by = Some(format!(
                    "HeadObject: CompleteMultipartUpload's answer was lost and its retry got NoSuchUpload; the object's x-amz-checksum-sha256 {want} is ours"
                ));
                Ok(())
            }
            Err(found) => Err((
                FileStatus::Rejected,
                format!("{why}, after a lost answer to an earlier attempt; {found}"),
            )),
        }
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

/// An attempt whose answer does not say whether the store did the work: no answer (a
/// connection failure, a timeout) or a 5xx (a gateway's, or the store's error after the fact).
fn answer_lost(a: &Attempt) -> bool {
    match a {
        Attempt::Transport(..) => true,
        Attempt::Status { code, .. } => (500..600).contains(code),
        Attempt::Local(_) => false,
    }
}

fn is_no_such_upload(a: &Attempt) -> bool {
    matches!(a, Attempt::Status { code: 404, body, .. }
        if super::error_of(body).is_some_and(|e| e.split(':').next() == Some("NoSuchUpload")))
}

/// The composite checksum S3 keeps for a multipart object uploaded with SHA-256 part
/// checksums, as HeadObject returns it: base64(SHA-256(the parts' raw SHA-256 digests, in
/// order)), `-`, the number of parts (AWS and Garage alike). None if a part's digest is not
/// base64 (it always is: the digest pass wrote it).
fn composite_sha256(parts_b64: &[String]) -> Option<String> {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut h = Sha256::new();
    for p in parts_b64 {
        h.update(b64.decode(p).ok()?);
    }
    Some(format!("{}-{}", b64.encode(h.finalize()), parts_b64.len()))
}

/// What HeadObject found at the key: Ok when the object's `x-amz-checksum-sha256` is `want`,
/// else what it found instead, for the rejection's message.
fn head_verdict(head: &Result<Attempt, Ended>, want: &str) -> Result<(), String> {
    match head {
        Ok(Attempt::Status {
            checksum: Some(got),
            ..
        }) if got.trim() == want => Ok(()),
        Ok(Attempt::Status {
            checksum: Some(got),
            ..
        }) => Err(format!(
            "the object at the key does not match: HeadObject's x-amz-checksum-sha256 is {}, ours {want}",
            got.trim()
        )),
        Ok(_) => Err(format!(
            "the object at the key cannot be confirmed: HeadObject returned no x-amz-checksum-sha256 (ours {want})"
        )),
        Err((_, e)) if e.contains("HTTP 404") => {
            Err("the object at the key is absent (HeadObject: HTTP 404)".to_string())
        }
        Err((_, e)) => Err(format!(
            "the object at the key could not be checked (HeadObject: {e})"
        )),
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
            checksum,
        } if body.contains("<Error>") => Attempt::Status {
            code: 500,
            body,
            retry_after,
            etag,
            checksum,
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

    /// Computed apart (Python's hashlib and base64): the SHA-256 of b"part1" and b"part2", then
    /// the SHA-256 of their raw digests concatenated.
    const PARTS: [&str; 2] = [
        "WeCjzHoMRflnNb8fBjJduQtLt0LyV98StrGN89ISZJk=",
        "R008mgtSt2i3xUr/ssOGqSGmszAHEJxwvntTbroXa7Q=",
    ];
    const COMPOSITE: &str = "xheoOGWlJSrr1KooTDWywen6ft/oubM2FCHlVKEDMfM=-2";

    fn head(checksum: Option<&str>) -> Result<Attempt, Ended> {
        Ok(Attempt::Status {
            code: 200,
            retry_after: None,
            body: String::new(),
            etag: None,
            checksum: checksum.map(str::to_string),
        })
    }

    #[test]
    fn composite_checksum_is_the_sha256_of_the_part_digests_and_the_part_count() {
        let parts: Vec<String> = PARTS.iter().map(|p| p.to_string()).collect();
        assert_eq!(composite_sha256(&parts).as_deref(), Some(COMPOSITE));
        assert_eq!(composite_sha256(&["not base64!".into()]), None);
    }

    #[test]
    fn head_object_confirms_only_our_composite_checksum() {
        assert_eq!(head_verdict(&head(Some(COMPOSITE)), COMPOSITE), Ok(()));
        // Another object at the key: other parts, or the same digest with another part count.
        let other = "WeCjzHoMRflnNb8fBjJduQtLt0LyV98StrGN89ISZJk=-1";
        let e = head_verdict(&head(Some(other)), COMPOSITE).unwrap_err();
        assert!(e.contains("does not match") && e.contains(other), "{e}");
        let e = head_verdict(&head(Some(&COMPOSITE[..44])), COMPOSITE).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let e = head_verdict(&head(None), COMPOSITE).unwrap_err();
        assert!(e.contains("no x-amz-checksum-sha256"), "{e}");
        let gone = Err((FileStatus::Rejected, "HTTP 404".to_string()));
        let e = head_verdict(&gone, COMPOSITE).unwrap_err();
        assert!(e.contains("absent"), "{e}");
        let denied = Err((FileStatus::Rejected, "HTTP 403".to_string()));
        let e = head_verdict(&denied, COMPOSITE).unwrap_err();
        assert!(
            e.contains("could not be checked") && e.contains("HTTP 403"),
            "{e}"
        );
    }

    #[test]
    fn only_a_retry_after_a_lost_answer_may_find_the_upload_completed() {
        let status = |code: u16, body: &str| Attempt::Status {
            code,
            retry_after: None,
            body: body.into(),
            etag: None,
            checksum: None,
        };
        assert!(answer_lost(&Attempt::Transport(
            crate::upload::retry::TransportError::Broken,
            "reset".into()
        )));
        assert!(answer_lost(&status(502, "")) && answer_lost(&status(500, "")));
        assert!(!answer_lost(&status(400, "")) && !answer_lost(&status(200, "")));
        let gone = "<Error><Code>NoSuchUpload</Code><Message>Upload not found</Message></Error>";
        assert!(is_no_such_upload(&status(404, gone)));
        assert!(!is_no_such_upload(&status(
            404,
            "<Error><Code>NoSuchBucket</Code></Error>"
        )));
        assert!(!is_no_such_upload(&status(404, "")));
    }
}
