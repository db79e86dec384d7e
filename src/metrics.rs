//! Counters and gauges of the capture agent: plain atomics on the data path, rendered as
//! Prometheus text by the admin server. Nothing here is updated per packet with more than a
//! relaxed add, and the capture thread batches even those per dispatch call.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct CaptureMetrics {
    /// Readiness latch: set once the pcap handle is active and the first file header is on
    /// disk; never cleared.
    pub ready: AtomicBool,
    pub packets_captured: AtomicU64,
    pub bytes_captured: AtomicU64,
    pub packets_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub files_finished: AtomicU64,
    pub files_deleted: AtomicU64,
    pub bytes_deleted: AtomicU64,
    pub disk_dropped_packets: AtomicU64,
    pub write_errors: AtomicU64,
    pub kernel_received: AtomicU64,
    pub kernel_dropped: AtomicU64,
    pub interface_dropped: AtomicU64,
    pub queue_bytes: AtomicU64,
    pub dir_bytes: AtomicU64,
    pub start_time_seconds: AtomicU64,
}

/// Prometheus text exposition: `# HELP`, `# TYPE` and one sample per metric, every sample with
/// the same labels. The one renderer of the capture's and the uploader's counters.
pub struct Exposition {
    text: String,
    labels: String,
}

impl Exposition {
    pub fn new(labels: &[(&str, &str)]) -> Exposition {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        Exposition {
            text: String::with_capacity(2048),
            labels,
        }
    }

    pub fn counter(&mut self, name: &str, help: &str, v: &AtomicU64) -> &mut Self {
        self.sample(name, "counter", help, v.load(Relaxed))
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: u64) -> &mut Self {
        self.sample(name, "gauge", help, v)
    }

    fn sample(&mut self, name: &str, kind: &str, help: &str, v: u64) -> &mut Self {
        let l = &self.labels;
        let _ = writeln!(
            self.text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{l} {v}"
        );
        self
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.text)
    }
}

impl CaptureMetrics {
    /// libpcap's own counters.
    fn kernel_stats(&self, p: &mut Exposition) {
        p.counter(
            "sidecap_kernel_received_total",
            "libpcap ps_recv. On any the kernel counts each loopback packet twice.",
            &self.kernel_received,
        )
        .counter(
            "sidecap_kernel_dropped_total",
            "libpcap ps_drop: packets dropped because the kernel ring was full. On any a loopback packet lost counts twice.",
            &self.kernel_dropped,
        )
        .counter(
            "sidecap_interface_dropped_total",
            "libpcap ps_ifdrop: packets dropped by the interface or driver.",
            &self.interface_dropped,
        );
    }

    pub fn render(&self, interface: &str) -> String {
        let g = |v: &AtomicU64| v.load(Relaxed);
        let mut p = Exposition::new(&[("interface", interface)]);
        p.gauge(
            "sidecap_capture_ready",
            "1 once the pcap handle is active and the first file is on disk.",
            self.ready.load(Relaxed) as u64,
        )
        .counter(
            "sidecap_packets_captured_total",
            "Packets read from the kernel.",
            &self.packets_captured,
        )
        .counter(
            "sidecap_bytes_captured_total",
            "Captured bytes (caplen) read from the kernel.",
            &self.bytes_captured,
        )
        .counter(
            "sidecap_packets_written_total",
            "Packets written to pcap files (handed to the kernel page cache).",
            &self.packets_written,
        )
        .counter(
            "sidecap_bytes_written_total",
            "Bytes written to pcap files, headers included.",
            &self.bytes_written,
        )
        .counter(
            "sidecap_files_finished_total",
            "Files completed (fsynced and renamed from .pcap.part to .pcap).",
            &self.files_finished,
        )
        .counter(
            "sidecap_files_deleted_total",
            "Finished files deleted by the ring bound (--max-files, --max-total-size).",
            &self.files_deleted,
        )
        .counter(
            "sidecap_bytes_deleted_total",
            "Bytes deleted by the ring bound.",
            &self.bytes_deleted,
        )
        .counter(
            "sidecap_disk_dropped_packets_total",
            "Captured packets that could not be written (disk full or over the size bound).",
            &self.disk_dropped_packets,
        )
        .counter(
            "sidecap_write_errors_total",
            "Failed writes to the output directory.",
            &self.write_errors,
        );
        self.kernel_stats(&mut p);
        p.gauge(
            "sidecap_queue_bytes",
            "Captured bytes waiting for the writer.",
            g(&self.queue_bytes),
        )
        .gauge(
            "sidecap_directory_bytes",
            "Bytes of this prefix's files in the output directory.",
            g(&self.dir_bytes),
        )
        .gauge(
            "sidecap_start_time_seconds",
            "Unix time the capture started.",
            g(&self.start_time_seconds),
        )
        .finish()
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Tracks a libpcap u32 statistic (which wraps) as a u64 total.
#[derive(Default, Debug, Clone, Copy)]
pub struct WrappingCounter {
    last: u32,
    total: u64,
}

impl WrappingCounter {
    pub fn update(&mut self, now: u32) -> u64 {
        self.total += now.wrapping_sub(self.last) as u64;
        self.last = now;
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_counter_survives_u32_wrap() {
        let mut c = WrappingCounter::default();
        assert_eq!(c.update(10), 10);
        assert_eq!(c.update(u32::MAX), u32::MAX as u64);
        assert_eq!(c.update(5), u32::MAX as u64 + 6);
    }

    #[test]
    fn render_has_help_type_and_labels() {
        let m = CaptureMetrics::default();
        m.packets_written.store(42, Relaxed);
        let t = m.render("eth\"0");
        assert!(t.contains("# TYPE sidecap_packets_written_total counter"));
        assert!(t.contains("sidecap_packets_written_total{interface=\"eth\\\"0\"} 42"));
    }
}
