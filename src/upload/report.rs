//! What a preStop upload tells people: the `Upload summary` log event and the JSON report
//! `<dir>/<prefix>.upload-report.json`, written atomically. kubelet shows nothing of a hook's
//! output, so these two are the only record; neither ever holds a secret (the URL is shown
//! redacted and every error was scrubbed by the engine). [`FileResult`] is one file's line in both.

use serde::Serialize;

use super::state::Candidate;
use crate::exit;
use crate::files::{self, Layout};

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Sent now and accepted.
    Uploaded,
    /// In the ledger: sent earlier (by this or another uploader), not sent again.
    AlreadyUploaded,
    /// Refused for good (4xx other than 408/429, 3xx, 501, TLS certificate failure).
    Rejected,
    /// Attempted, but every attempt failed before the deadline (or a stop).
    Failed,
    /// No time (or no lock) was left to try it.
    NotAttempted,
    /// Deleted by the capture's ring bound (`--max-files`, `--max-total-size`) before it could
    /// be sent: lost by configuration, not by the upload.
    Deleted,
    /// Named like a capture file but not one: a symbolic link or other non-regular file (never
    /// followed), or no pcap header (empty, or other content). Not sent, not counted as left:
    /// the capture never writes such a file, so no captured packet is in it.
    Skipped,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Uploaded => "uploaded",
            FileStatus::AlreadyUploaded => "already_uploaded",
            FileStatus::Rejected => "rejected",
            FileStatus::Failed => "failed",
            FileStatus::NotAttempted => "not_attempted",
            FileStatus::Deleted => "deleted",
            FileStatus::Skipped => "skipped",
        }
    }

    pub fn is_done(self) -> bool {
        matches!(self, FileStatus::Uploaded | FileStatus::AlreadyUploaded)
    }
}

/// The outcome for one file, as it appears in the report.
#[derive(Clone, Debug, Serialize)]
pub struct FileResult {
    pub name: String,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub status: FileStatus,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
    /// The object key, when uploading to S3 (`--url s3://…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_key: Option<String>,
    /// How the upload was known to have succeeded when its answer was lost (S3: a HeadObject
    /// after CompleteMultipartUpload's answer was lost and its retry found the upload gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
    pub duration_ms: u64,
    /// Not attempted because another uploader held the file: worth another look later.
    #[serde(skip)]
    pub busy: bool,
}

impl FileResult {
    /// A file nothing has been tried for yet.
    pub fn not_attempted(c: &Candidate) -> FileResult {
        FileResult::new(c.name.clone(), c.size, FileStatus::NotAttempted)
    }

    /// A result with only a name, a size and a status; the rest empty.
    pub fn new(name: String, bytes: u64, status: FileStatus) -> FileResult {
        FileResult {
            name,
            bytes,
            sha256: None,
            status,
            attempts: 0,
            http_status: None,
            error: None,
            repaired: None,
            s3_key: None,
            confirmed_by: None,
            duration_ms: 0,
            busy: false,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub files: usize,
    pub uploaded: usize,
    pub already_uploaded: usize,
    pub rejected: usize,
    /// Rejected, or every attempt failed.
    pub failed: usize,
    /// Every file not uploaded (failed + not attempted), deleted ones aside.
    pub left: usize,
    /// Deleted by the capture's ring bound before they could be sent.
    pub deleted: usize,
    /// Named like capture files but not ones (links, special files, no pcap header): not sent,
    /// not left.
    pub skipped: usize,
    pub bytes_uploaded: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub sidecap_version: &'static str,
    /// Always "exec" (`sidecap upload`); the HTTP hook that could also write it was removed.
    pub hook: &'static str,
    pub started_at: String,
    pub finished_at: String,
    /// The instant the run had to be done by (start + grace period - safety margin).
    pub deadline: String,
    pub grace_period_ms: u64,
    pub safety_margin_ms: u64,
    pub deadline_reached: bool,
    /// The receiver, with user info and query string redacted.
    pub url: String,
    /// The capture as last seen: running / final (reason) / dead.
    pub capture: String,
    /// Why the run ended, in one sentence.
    pub reason: String,
    pub exit_code: u8,
    pub totals: Totals,
    /// Files not uploaded, by name (the same as the failed / not attempted entries below).
    pub not_uploaded: Vec<String>,
    pub files: Vec<FileResult>,
}

pub fn report_path(layout: &Layout) -> std::path::PathBuf {
    layout
        .dir
        .join(format!("{}.upload-report.json", layout.prefix))
}

pub fn totals(files: &[FileResult]) -> Totals {
    let mut t = Totals {
        files: files.len(),
        ..Default::default()
    };
    for f in files {
        match f.status {
            FileStatus::Uploaded => {
                t.uploaded += 1;
                t.bytes_uploaded += f.bytes;
            }
            FileStatus::AlreadyUploaded => t.already_uploaded += 1,
            FileStatus::Rejected => {
                t.rejected += 1;
                t.failed += 1;
            }
            FileStatus::Failed => t.failed += 1,
            FileStatus::NotAttempted => {}
            FileStatus::Deleted => t.deleted += 1,
            FileStatus::Skipped => t.skipped += 1,
        }
        if !f.status.is_done() && !matches!(f.status, FileStatus::Deleted | FileStatus::Skipped) {
            t.left += 1;
        }
    }
    t
}

/// 0 when everything is uploaded, 6 when the receiver rejected a file for good, else 5.
pub fn exit_code(t: &Totals) -> u8 {
    if t.rejected > 0 {
        exit::REJECTED
    } else if t.left > 0 {
        exit::DEADLINE
    } else {
        exit::OK
    }
}

impl Report {
    /// Logs the summary event and writes the report file (errors are logged, not returned: a
    /// read-only volume must not turn a successful upload into a failure).
    pub fn publish(&self, layout: &Layout) {
        if self.deadline_reached {
            tracing::error!(
                left = self.totals.left,
                files = ?self.not_uploaded,
                "Upload deadline reached: files left that were not uploaded."
            );
        }
        let t = &self.totals;
        tracing::info!(
            uploaded = t.uploaded,
            already_uploaded = t.already_uploaded,
            failed = t.failed,
            left = t.left,
            deleted = t.deleted,
            bytes = t.bytes_uploaded,
            deadline_reached = self.deadline_reached,
            capture = %self.capture,
            reason = %self.reason,
            exit_code = self.exit_code,
            "Upload summary"
        );
        let path = report_path(layout);
        match serde_json::to_vec_pretty(self) {
            Ok(json) => {
                if let Err(e) = files::write_atomic(&path, &json) {
                    tracing::warn!(report = %path.display(), error = %e, "Cannot write the upload report.");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot serialize the upload report."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(status: FileStatus) -> FileResult {
        FileResult {
            name: "x".into(),
            bytes: 10,
            sha256: None,
            status,
            attempts: 1,
            http_status: None,
            error: None,
            repaired: None,
            s3_key: None,
            confirmed_by: None,
            duration_ms: 0,
            busy: false,
        }
    }

    #[test]
    fn concurrent_atomic_writes_never_tear() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("capture.upload-report.json");
        let bodies: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 100_000]).collect();
        std::thread::scope(|s| {
            for b in &bodies {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..20 {
                        files::write_atomic(p, b).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&p).unwrap();
        assert!(bodies.contains(&got), "torn report");
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn totals_and_exit_codes() {
        let t = totals(&[f(FileStatus::Uploaded), f(FileStatus::AlreadyUploaded)]);
        assert_eq!((t.uploaded, t.already_uploaded, t.left), (1, 1, 0));
        assert_eq!(exit_code(&t), exit::OK);
        let t = totals(&[
            f(FileStatus::Uploaded),
            f(FileStatus::Failed),
            f(FileStatus::NotAttempted),
        ]);
        assert_eq!((t.failed, t.left), (1, 2));
        assert_eq!(exit_code(&t), exit::DEADLINE);
        let t = totals(&[f(FileStatus::Rejected), f(FileStatus::NotAttempted)]);
        assert_eq!((t.rejected, t.failed, t.left), (1, 1, 2));
        assert_eq!(exit_code(&t), exit::REJECTED);
        assert_eq!(exit_code(&totals(&[])), exit::OK);
        let t = totals(&[f(FileStatus::Uploaded), f(FileStatus::Deleted)]);
        assert_eq!((t.deleted, t.left), (1, 0));
        assert_eq!(exit_code(&t), exit::OK);
    }
}
