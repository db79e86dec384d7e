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

impl CaptureMetrics {
    pub fn render(&self, interface: &str) -> String {
        let mut s = String::with_capacity(2048);
        let l = format!("interface=\"{}\"", escape_label(interface));
        let g = |v: &AtomicU64| v.load(Relaxed);
        let mut m = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{l}}} {v}"
            );
        };
        m(
            "sidecap_capture_ready",
            "gauge",
            "1 once the pcap handle is active and the first file is on disk.",
            self.ready.load(Relaxed) as u64,
        );
        m(
            "sidecap_packets_captured_total",
            "counter",
            "Packets read from the kernel.",
            g(&self.packets_captured),
        );
        m(
            "sidecap_bytes_captured_total",
            "counter",
            "Captured bytes (caplen) read from the kernel.",
            g(&self.bytes_captured),
        );
        m(
            "sidecap_packets_written_total",
            "counter",
            "Packets written to pcap files (handed to the kernel page cache).",
            g(&self.packets_written),
        );
        m(
            "sidecap_bytes_written_total",
            "counter",
            "Bytes written to pcap files, headers included.",
            g(&self.bytes_written),
        );
        m(
            "sidecap_files_finished_total",
            "counter",
            "Files completed (fsynced and renamed from .pcap.part to .pcap).",
            g(&self.files_finished),
        );
        m(
            "sidecap_files_deleted_total",
            "counter",
            "Finished files deleted by the ring bound (--max-files, --max-total-size).",
            g(&self.files_deleted),
        );
        m(
            "sidecap_bytes_deleted_total",
            "counter",
            "Bytes deleted by the ring bound.",
            g(&self.bytes_deleted),
        );
        m(
            "sidecap_disk_dropped_packets_total",
            "counter",
            "Captured packets that could not be written (disk full or over the size bound).",
            g(&self.disk_dropped_packets),
        );
        m(
            "sidecap_write_errors_total",
            "counter",
            "Failed writes to the output directory.",
            g(&self.write_errors),
        );
        m(
            "sidecap_kernel_received_total",
            "counter",
            "libpcap ps_recv. On lo and any the kernel counts each packet twice.",
            g(&self.kernel_received),
        );
        m("sidecap_kernel_dropped_total", "counter", "libpcap ps_drop: packets dropped because the kernel ring was full. On lo and any about twice the real loss.", g(&self.kernel_dropped));
        m(
            "sidecap_interface_dropped_total",
            "counter",
            "libpcap ps_ifdrop: packets dropped by the interface or driver.",
            g(&self.interface_dropped),
        );
        m(
            "sidecap_queue_bytes",
            "gauge",
            "Captured bytes waiting for the writer.",
            g(&self.queue_bytes),
        );
        m(
            "sidecap_directory_bytes",
            "gauge",
            "Bytes of this prefix's files in the output directory.",
            g(&self.dir_bytes),
        );
        m(
            "sidecap_start_time_seconds",
            "gauge",
            "Unix time the capture started.",
            g(&self.start_time_seconds),
        );
        s
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
