//! Counters of the uploader: atomics the engine adds to, rendered as Prometheus text by the
//! admin server with the one renderer the capture uses too ([`Exposition`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use super::report::{FileResult, FileStatus};
use crate::metrics::Exposition;

#[derive(Default)]
pub struct UploadMetrics {
    pub files_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub files_already_uploaded: AtomicU64,
    pub files_rejected: AtomicU64,
    pub files_failed: AtomicU64,
    pub files_deleted: AtomicU64,
    pub files_skipped_not_capture: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    pub last_success_seconds: AtomicU64,
}

impl UploadMetrics {
    /// Counts one file's outcome.
    pub fn count(&self, r: &FileResult) {
        let counter = match r.status {
            FileStatus::Uploaded => {
                self.bytes_uploaded.fetch_add(r.bytes, Relaxed);
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.last_success_seconds.store(now, Relaxed);
                &self.files_uploaded
            }
            FileStatus::AlreadyUploaded => &self.files_already_uploaded,
            FileStatus::Rejected => &self.files_rejected,
            FileStatus::Failed | FileStatus::NotAttempted => &self.files_failed,
            FileStatus::Deleted => &self.files_deleted,
            FileStatus::Skipped => &self.files_skipped_not_capture,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn render(&self) -> String {
        Exposition::new(&[])
            .counter(
                "sidecap_upload_files_total",
                "Files uploaded and accepted by the receiver.",
                &self.files_uploaded,
            )
            .counter(
                "sidecap_upload_bytes_total",
                "Bytes of files uploaded (file size, before gzip).",
                &self.bytes_uploaded,
            )
            .counter(
                "sidecap_upload_files_skipped_total",
                "Files found in the ledger (uploaded earlier) and not sent again.",
                &self.files_already_uploaded,
            )
            .counter(
                "sidecap_upload_files_rejected_total",
                "Files refused for good by the receiver (or its TLS certificate).",
                &self.files_rejected,
            )
            .counter(
                "sidecap_upload_files_failed_total",
                "Files whose attempts all failed before their deadline.",
                &self.files_failed,
            )
            .counter(
                "sidecap_upload_files_deleted_total",
                "Files the capture's ring bound deleted before they could be uploaded.",
                &self.files_deleted,
            )
            .counter(
                "sidecap_upload_files_not_capture_total",
                "Files named like captures but not sent: a link or special file, or no pcap header.",
                &self.files_skipped_not_capture,
            )
            .counter(
                "sidecap_upload_attempts_total",
                "HTTP requests sent.",
                &self.attempts,
            )
            .counter(
                "sidecap_upload_retries_total",
                "Attempts that were retries.",
                &self.retries,
            )
            .gauge(
                "sidecap_upload_in_flight",
                "Files being uploaded now.",
                self.in_flight.load(Relaxed),
            )
            .gauge(
                "sidecap_upload_last_success_time_seconds",
                "Unix time of the last accepted upload.",
                self.last_success_seconds.load(Relaxed),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_help_type_and_no_labels() {
        let m = UploadMetrics::default();
        m.count(&FileResult::new("f".into(), 7, FileStatus::Uploaded));
        let t = m.render();
        assert!(
            t.contains("# TYPE sidecap_upload_files_total counter\nsidecap_upload_files_total 1\n")
        );
        assert!(t.contains("sidecap_upload_bytes_total 7\n"));
        assert!(t.contains("# TYPE sidecap_upload_in_flight gauge\n"));
    }
}
