//! The two output formats, split along the data path:
//!
//! - [`Records`] is what the capture thread appends per packet. It is a type parameter of the
//!   batcher, chosen once at start, so the classic pcap path has no per-packet format branch.
//!   pcapng adds in-band blocks there: an Interface Description Block the first time a
//!   LINUX_SLL2 interface index appears in a file (so Wireshark shows `lo`, `eth0` rather than
//!   an index), and Decryption Secrets Blocks from `--tls-keylog`.
//! - [`Framing`] is what the writer thread puts around each file: the header when it opens
//!   (pcap file header, or pcapng Section Header + the capture interface's IDB) and, for pcapng,
//!   an Interface Statistics Block when it finishes, with what was received and dropped while
//!   that file was current.
//!
//! A buffer the writer has to drop (disk full, size bound) may hold in-band IDBs and secrets
//! that later packets of the same file depend on: [`Framing::dropped`] keeps those blocks and
//! the writer puts them in front of its next write, so a file never has a packet on an
//! interface it does not describe.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::CaptureConfig;
use crate::files::FileFormat;
use crate::metrics::CaptureMetrics;
use crate::pcapfile::{self, push_record, FILE_HEADER_LEN, RECORD_HEADER_LEN};
use crate::pcapng::{self, opt, Options};

/// LINUX_SLL2: `-i any` with an interface index in each packet's cooked header.
pub const DLT_LINUX_SLL2: u32 = 276;
/// Offset of the big-endian interface index in a LINUX_SLL2 header.
const SLL2_IFINDEX: std::ops::Range<usize> = 4..8;
/// Salvaged secrets beyond this are let go (interface descriptions are always kept): a disk
/// that stays full for long must not grow the writer's memory without bound.
const MAX_SALVAGED_SECRETS: usize = 4 << 20;

/// Per-packet formatting on the capture thread.
pub trait Records: Send + 'static {
    /// Bytes a packet with `caplen` captured bytes takes, without in-band blocks.
    fn record_len(caplen: usize) -> u64;
    /// Appends one packet (and any block it needs first); returns the bytes appended.
    fn push(&mut self, buf: &mut Vec<u8>, h: &pcap::PacketHeader, data: &[u8]) -> u64;
    /// A new file begins after the next byte: forget what the last file described.
    fn new_file(&mut self) {}
    /// Appends TLS key log lines as a secrets block; returns the bytes appended.
    fn secrets(&mut self, _buf: &mut Vec<u8>, _lines: &[u8]) -> u64 {
        0
    }
}

/// Classic pcap records: what libpcap's `pcap_dump` writes.
pub struct PcapRecords;

impl Records for PcapRecords {
    #[inline]
    fn record_len(caplen: usize) -> u64 {
        (RECORD_HEADER_LEN + caplen) as u64
    }

    #[inline]
    fn push(&mut self, buf: &mut Vec<u8>, h: &pcap::PacketHeader, data: &[u8]) -> u64 {
        let (sec, frac) = (h.ts.tv_sec as u32, h.ts.tv_usec as u32);
        push_record(buf, sec, frac, h.caplen, h.len, data);
        (RECORD_HEADER_LEN + data.len()) as u64
    }
}

/// What an IDB says about an interface besides its name.
#[derive(Clone)]
struct IdbTemplate {
    linktype: u32,
    snaplen: u32,
    tsresol: u8,
    filter: Option<String>,
}

impl IdbTemplate {
    fn block(&self, name: &str, description: &str) -> Vec<u8> {
        let mut o = Options::default()
            .str(opt::IF_NAME, name)
            .str(opt::IF_DESCRIPTION, description)
            .bytes(opt::IF_TSRESOL, &[self.tsresol]);
        if let Some(f) = &self.filter {
            // if_filter: first byte 0 = a libpcap filter string.
            let mut v = vec![0u8];
            v.extend_from_slice(f.as_bytes());
            o = o.bytes(opt::IF_FILTER, &v);
        }
        pcapng::idb(self.linktype, self.snaplen, o)
    }
}

/// pcapng records: Enhanced Packet Blocks, plus in-band IDBs and secrets.
pub struct PcapngRecords {
    /// if_tsresol units per second.
    units: u64,
    /// Map each packet's SLL2 interface index to its own IDB.
    by_ifindex: bool,
    template: IdbTemplate,
    capture_interface: String,
    /// (ifindex, interface id) described in the current file; id 0 is the capture handle.
    ids: Vec<(u32, u32)>,
    last: (u32, u32),
    /// Interface names by index, kept across files.
    names: HashMap<u32, String>,
}

impl PcapngRecords {
    pub fn new(cfg: &CaptureConfig, linktype: u32) -> PcapngRecords {
        PcapngRecords {
            units: if cfg.nano { 1_000_000_000 } else { 1_000_000 },
            by_ifindex: linktype == DLT_LINUX_SLL2,
            template: template(cfg, linktype),
            capture_interface: cfg.interface.clone(),
            ids: Vec::new(),
            last: (u32::MAX, 0),
            names: HashMap::new(),
        }
    }

    /// The interface id for an SLL2 index, describing it first if this file has not.
    fn interface_id(&mut self, buf: &mut Vec<u8>, ifindex: u32) -> (u32, u64) {
        if self.last.0 == ifindex {
            return (self.last.1, 0);
        }
        if let Some(&(_, id)) = self.ids.iter().find(|(i, _)| *i == ifindex) {
            self.last = (ifindex, id);
            return (id, 0);
        }
        if !self.names.contains_key(&ifindex) {
            self.names = interface_names();
        }
        let name = self
            .names
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("ifindex{ifindex}"));
        let desc = format!(
            "interface index {ifindex}, captured through -i {}",
            self.capture_interface
        );
        let block = self.template.block(&name, &desc);
        buf.extend_from_slice(&block);
        let id = 1 + self.ids.len() as u32;
        self.ids.push((ifindex, id));
        self.last = (ifindex, id);
        (id, block.len() as u64)
    }
}

impl Records for PcapngRecords {
    #[inline]
    fn record_len(caplen: usize) -> u64 {
        pcapng::epb_len(caplen) as u64
    }

    #[inline]
    fn push(&mut self, buf: &mut Vec<u8>, h: &pcap::PacketHeader, data: &[u8]) -> u64 {
        let ts = h.ts.tv_sec as u64 * self.units + h.ts.tv_usec as u64;
        let (if_id, extra) = match data.get(SLL2_IFINDEX) {
            Some(b) if self.by_ifindex => {
                let ifindex = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                self.interface_id(buf, ifindex)
            }
            _ => (0, 0),
        };
        extra + pcapng::push_epb(buf, if_id, ts, h.len, data) as u64
    }

    fn new_file(&mut self) {
        self.ids.clear();
        self.last = (u32::MAX, 0);
    }

    fn secrets(&mut self, buf: &mut Vec<u8>, lines: &[u8]) -> u64 {
        if lines.is_empty() {
            return 0;
        }
        let b = pcapng::dsb_tls_keylog(lines);
        buf.extend_from_slice(&b);
        b.len() as u64
    }
}

/// Interface names by index in our network namespace (the Pod's), from sysfs.
fn interface_names() -> HashMap<u32, String> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(i) = std::fs::read_to_string(e.path().join("ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            out.insert(i, name);
        }
    }
    out
}

fn template(cfg: &CaptureConfig, linktype: u32) -> IdbTemplate {
    IdbTemplate {
        linktype,
        snaplen: cfg.snaplen,
        tsresol: if cfg.nano { 9 } else { 6 },
        filter: cfg.filter.clone(),
    }
}

/// The Pod identity line from the Downward API variables the manifests set, if any is set.
pub fn pod_identity() -> Option<String> {
    let parts: Vec<String> = [
        ("pod", "POD_NAME"),
        ("namespace", "POD_NAMESPACE"),
        ("uid", "POD_UID"),
        ("node", "NODE_NAME"),
        ("image", "CONTAINER_IMAGE"),
    ]
    .iter()
    .filter_map(|(k, var)| {
        let v = std::env::var(var).ok()?;
        let v = v.trim();
        (!v.is_empty()).then(|| format!("{k}={v}"))
    })
    .collect();
    (!parts.is_empty()).then(|| format!("kubernetes {}", parts.join(" ")))
}

fn os_name() -> String {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    match (
        read("/proc/sys/kernel/ostype"),
        read("/proc/sys/kernel/osrelease"),
    ) {
        (Ok(t), Ok(r)) => format!("{t} {r}"),
        _ => std::env::consts::OS.to_string(),
    }
}

/// Counters when a file was opened, to report that file's share in its statistics block.
#[derive(Clone, Copy, Default)]
struct Counters {
    ts: u64,
    recv: u64,
    kernel_drop: u64,
    if_drop: u64,
    disk_drop: u64,
    written: u64,
}

/// The writer's side of the format: file header, trailer and salvaged blocks.
pub enum Framing {
    Pcap([u8; FILE_HEADER_LEN]),
    Pcapng(Box<PcapngFraming>),
}

pub struct PcapngFraming {
    header: Vec<u8>,
    units: u64,
    at_open: Counters,
    /// Where the last finished file's counts ended: the next file starts there, so the files'
    /// statistics add up to the whole capture's.
    next_open: Option<Counters>,
    salvage: Vec<u8>,
    salvaged_secrets: usize,
}

const ISB_COMMENT: &str = "counts are for this file only, from isb_starttime to isb_endtime; ifrecv/osdrop are libpcap ps_recv/ps_drop (on any the kernel counts each loopback packet twice), osdrop adds packets sidecap could not write (disk full, size bound)";

impl Framing {
    pub fn new(cfg: &CaptureConfig, linktype: u32) -> Framing {
        match cfg.format {
            FileFormat::Pcap => {
                Framing::Pcap(pcapfile::file_header(linktype, cfg.snaplen, cfg.nano))
            }
            FileFormat::Pcapng => Framing::Pcapng(Box::new(PcapngFraming::new(cfg, linktype))),
        }
    }

    pub fn format(&self) -> FileFormat {
        match self {
            Framing::Pcap(_) => FileFormat::Pcap,
            Framing::Pcapng(_) => FileFormat::Pcapng,
        }
    }

    pub fn header_len(&self) -> u64 {
        match self {
            Framing::Pcap(h) => h.len() as u64,
            Framing::Pcapng(p) => p.header.len() as u64,
        }
    }

    /// Bytes of a file that are not packets and not in-band blocks: what the batcher counts
    /// before the first packet, so size rotation keeps whole files under the limit.
    pub fn overhead(&self) -> u64 {
        match self {
            Framing::Pcap(h) => h.len() as u64,
            Framing::Pcapng(p) => (p.header.len() + p.isb(&Counters::default()).len()) as u64,
        }
    }

    /// The header of a file being opened now.
    pub fn header(&mut self, m: &CaptureMetrics) -> Vec<u8> {
        match self {
            Framing::Pcap(h) => h.to_vec(),
            Framing::Pcapng(p) => {
                p.at_open = p.next_open.take().unwrap_or_else(|| p.counters(m));
                p.header.clone()
            }
        }
    }

    /// What ends a finished file (empty for pcap).
    pub fn trailer(&mut self, m: &CaptureMetrics) -> Vec<u8> {
        match self {
            Framing::Pcap(_) => Vec::new(),
            Framing::Pcapng(p) => {
                let now = p.counters(m);
                p.next_open = Some(now);
                p.isb(&now)
            }
        }
    }

    /// A buffer that was not written: keep the blocks later packets of the file depend on.
    pub fn dropped(&mut self, buf: &[u8]) {
        if let Framing::Pcapng(p) = self {
            p.salvage_from(buf);
        }
    }

    /// Blocks kept from dropped buffers, to write before the next buffer.
    pub fn take_salvage(&mut self) -> Option<Vec<u8>> {
        match self {
            Framing::Pcapng(p) if !p.salvage.is_empty() => {
                p.salvaged_secrets = 0;
                Some(std::mem::take(&mut p.salvage))
            }
            _ => None,
        }
    }

    /// The batcher started a new file: what it described before no longer applies.
    pub fn file_finished(&mut self) {
        if let Framing::Pcapng(p) = self {
            p.salvage.clear();
            p.salvaged_secrets = 0;
        }
    }
}

impl PcapngFraming {
    fn new(cfg: &CaptureConfig, linktype: u32) -> PcapngFraming {
        let mut shb = Options::default()
            .str(opt::SHB_HARDWARE, std::env::consts::ARCH)
            .str(opt::SHB_OS, &os_name())
            .str(
                opt::SHB_USERAPPL,
                concat!("sidecap ", env!("CARGO_PKG_VERSION")),
            );
        if let Some(pod) = pod_identity() {
            shb = shb.str(opt::COMMENT, &pod);
        }
        let mut header = pcapng::shb(shb);
        let desc = if linktype == DLT_LINUX_SLL2 {
            format!("{} (libpcap): packets are on the interfaces described after this one, by the index in their LINUX_SLL2 header; the statistics are this one's", cfg.interface)
        } else {
            format!("{} (libpcap)", cfg.interface)
        };
        header.extend(template(cfg, linktype).block(&cfg.interface, &desc));
        PcapngFraming {
            header,
            units: if cfg.nano { 1_000_000_000 } else { 1_000_000 },
            at_open: Counters::default(),
            next_open: None,
            salvage: Vec::new(),
            salvaged_secrets: 0,
        }
    }

    fn counters(&self, m: &CaptureMetrics) -> Counters {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Counters {
            ts: now.as_secs() * self.units
                + now.subsec_nanos() as u64 / (1_000_000_000 / self.units),
            recv: m.kernel_received.load(Relaxed),
            kernel_drop: m.kernel_dropped.load(Relaxed),
            if_drop: m.interface_dropped.load(Relaxed),
            disk_drop: m.disk_dropped_packets.load(Relaxed),
            written: m.packets_written.load(Relaxed),
        }
    }

    /// The statistics block for interface 0 (the capture handle), this file's share only.
    fn isb(&self, now: &Counters) -> Vec<u8> {
        let a = &self.at_open;
        let osdrop = now.kernel_drop.saturating_sub(a.kernel_drop)
            + now.disk_drop.saturating_sub(a.disk_drop);
        let o = Options::default()
            .str(opt::COMMENT, ISB_COMMENT)
            .ts(opt::ISB_STARTTIME, a.ts)
            .ts(opt::ISB_ENDTIME, now.ts)
            .u64(opt::ISB_IFRECV, now.recv.saturating_sub(a.recv))
            .u64(opt::ISB_IFDROP, now.if_drop.saturating_sub(a.if_drop))
            .u64(opt::ISB_OSDROP, osdrop)
            .u64(opt::ISB_USRDELIV, now.written.saturating_sub(a.written));
        pcapng::isb(0, now.ts, o)
    }

    /// Keeps the IDBs and DSBs of a buffer of our own blocks (well-formed: we wrote them).
    fn salvage_from(&mut self, buf: &[u8]) {
        let mut off = 0;
        while off + 12 <= buf.len() {
            let word =
                |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
            let (ty, len) = (word(off), word(off + 4) as usize);
            if len < 12 || off + len > buf.len() {
                break;
            }
            let keep = match ty {
                pcapng::IDB_TYPE => true,
                pcapng::DSB_TYPE => {
                    self.salvaged_secrets += len;
                    self.salvaged_secrets <= MAX_SALVAGED_SECRETS
                }
                _ => false,
            };
            if keep {
                self.salvage.extend_from_slice(&buf[off..off + len]);
            }
            off += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(format: &str, iface: &str) -> CaptureConfig {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "sidecap", "capture", "-i", iface, "--format", format, "tcp",
        ])
        .unwrap();
        match cli.command {
            crate::cli::Command::Capture(a) => CaptureConfig::from_args(&a).unwrap(),
            _ => unreachable!(),
        }
    }

    fn header(ts_sec: i64, usec: i64, len: u32) -> pcap::PacketHeader {
        pcap::PacketHeader {
            ts: nix::libc::timeval {
                tv_sec: ts_sec,
                tv_usec: usec,
            },
            caplen: len,
            len,
        }
    }

    fn sll2(ifindex: u32) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[4..8].copy_from_slice(&ifindex.to_be_bytes());
        p
    }

    #[test]
    fn one_idb_per_sll2_interface_per_file() {
        let c = cfg("pcapng", "any");
        let mut f = Framing::new(&c, DLT_LINUX_SLL2);
        let m = CaptureMetrics::default();
        let mut r = PcapngRecords::new(&c, DLT_LINUX_SLL2);
        let mut file = f.header(&m);
        let mut buf = Vec::new();
        for ifindex in [1, 1, 7, 1, 7] {
            r.push(&mut buf, &header(1, 2, 40), &sll2(ifindex));
        }
        file.extend(&buf);
        file.extend(f.trailer(&m));
        let (s, x) = pcapng::scan_extra(&file[..]).unwrap();
        assert!(s.is_clean(), "{s:?}");
        assert_eq!((s.packets, x.interfaces, x.statistics_blocks), (5, 3, 1));
        // A new file describes its interfaces again.
        r.new_file();
        let mut file2 = f.header(&m);
        r.push(&mut file2, &header(1, 2, 40), &sll2(7));
        assert_eq!(pcapng::scan_extra(&file2[..]).unwrap().1.interfaces, 2);
    }

    #[test]
    fn a_dropped_buffer_leaves_its_interfaces_behind() {
        let c = cfg("pcapng", "any");
        let mut f = Framing::new(&c, DLT_LINUX_SLL2);
        let m = CaptureMetrics::default();
        let mut r = PcapngRecords::new(&c, DLT_LINUX_SLL2);
        let mut file = f.header(&m);
        let mut lost = Vec::new();
        r.push(&mut lost, &header(1, 2, 40), &sll2(3));
        r.secrets(&mut lost, b"CLIENT_RANDOM 00 11\n");
        f.dropped(&lost);
        let mut next = Vec::new();
        r.push(&mut next, &header(1, 3, 40), &sll2(3));
        file.extend(f.take_salvage().unwrap());
        file.extend(&next);
        let (s, x) = pcapng::scan_extra(&file[..]).unwrap();
        assert!(s.is_clean(), "{s:?}");
        assert_eq!((s.packets, x.interfaces, x.secrets_blocks), (1, 2, 1));
        assert!(f.take_salvage().is_none());
    }

    #[test]
    fn overhead_covers_header_and_statistics() {
        let c = cfg("pcapng", "lo");
        let mut f = Framing::new(&c, 1);
        let m = CaptureMetrics::default();
        let n = f.header(&m).len() + f.trailer(&m).len();
        assert_eq!(f.overhead(), n as u64);
        let p = Framing::new(&cfg("pcap", "lo"), 1);
        assert_eq!(p.overhead(), 24);
    }
}
