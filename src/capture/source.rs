//! The libpcap side: opening the handle with errors a human can act on, and the capture loop.
//!
//! The loop runs on its own named thread in non-blocking mode and waits in poll(2) on the pcap
//! fd plus a wake-up socket, because with TPACKET_V3 a blocking read does not return on its
//! timeout when no packets arrive. Each wake-up reads a whole kernel block with
//! `pcap_dispatch`; the callback appends records into a 1 MiB buffer (no allocation, no
//! syscall per packet) that goes to the writer thread when full or on the flush tick.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use pcap::{Active, Capture, Device, Precision};

use super::config::{CaptureConfig, BUF_SIZE};
use super::files::KernelStats;
use super::format::Records;
use super::keylog::Keylog;
use super::rotate::RotatePolicy;
use super::writer::Msg;
use super::writer::ALIGN;
use super::CaptureError;
use crate::metrics::{CaptureMetrics, WrappingCounter};
use crate::process::{drain_waker, Shutdown};

/// TPACKET_V3 block retire timeout: the longest a packet waits in a partly filled kernel
/// block before user space can see it, so it bounds how long a stop waits for the last packets.
/// The kernel arms this timer per block and refreshes it while the block is empty, so an idle
/// link costs a kernel timer tick every 10 ms and no wake-up of ours; a trickle of traffic costs
/// at most 100 wake-ups a second (measured in docs/benchmarks.md). At 100 ms a stop right after a
/// burst waited ~100 ms for the block holding the burst's tail.
const BLOCK_TIMEOUT_MS: i32 = 10;
/// On a stop, a packet that arrived before it is visible at the latest this long after it: the
/// retire timeout rounded up to the kernel's clock tick (4 ms at HZ=250, 10 ms at HZ=100), plus
/// slack for the timer and our wake-up.
const RETIRE_WAIT: Duration = Duration::from_millis(BLOCK_TIMEOUT_MS as u64 + 20);
/// Under a constant flood the drain ends on the first packet stamped after the stop; this
/// bounds it should timestamps not tell (a clock step).
const DRAIN_MAX: Duration = Duration::from_secs(2);

pub struct Source {
    pub cap: Capture<Active>,
    pub linktype: u32,
}

/// Interfaces libpcap can capture on, for error messages.
pub fn interface_names() -> Vec<String> {
    match Device::list() {
        Ok(devs) => devs.into_iter().map(|d| d.name).collect(),
        Err(_) => Vec::new(),
    }
}

/// Does the process hold CAP_NET_RAW in its effective set? None when it cannot be told.
pub fn has_cap_net_raw() -> Option<bool> {
    caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_NET_RAW).ok()
}

pub const NET_RAW_HELP: &str = "capturing needs CAP_NET_RAW: run as root (sudo), or grant the binary the file capability (setcap cap_net_raw+ep /path/to/sidecap); in Kubernetes add securityContext.capabilities.add: [\"NET_RAW\"] to the capture container (and, for a non-root image, do not set allowPrivilegeEscalation: false)";

fn interface_exists(name: &str, names: &[String]) -> bool {
    names.iter().any(|n| n == name) || std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Whether a network interface that exists is administratively up (IFF_UP in
/// /sys/class/net/NAME/flags): libpcap cannot open a down one ("That device is not up"). Names
/// without a /sys entry (`any`, pseudo-devices) count as up.
fn interface_up(name: &str) -> bool {
    let flags = std::path::Path::new("/sys/class/net")
        .join(name)
        .join("flags");
    match std::fs::read_to_string(flags) {
        Ok(s) => {
            u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).map_or(true, |f| f & 1 != 0)
        }
        Err(_) => true,
    }
}

/// Waits up to `cfg.wait_for_interface` for the interface to exist and be up (a CNI plugin
/// creates it, then configures and raises it). Returns early on a stop.
pub fn wait_for_interface(cfg: &CaptureConfig, shutdown: &Shutdown) {
    let ready =
        |names: &[String]| interface_exists(&cfg.interface, names) && interface_up(&cfg.interface);
    if cfg.wait_for_interface.is_zero() || ready(&interface_names()) {
        return;
    }
    tracing::info!(interface = %cfg.interface, wait = ?cfg.wait_for_interface, "Waiting for the interface to appear and be up; a stop signal ends the wait and the capture cleanly.");
    let t0 = Instant::now();
    while t0.elapsed() < cfg.wait_for_interface && !shutdown.is_triggered() {
        std::thread::sleep(Duration::from_millis(100));
        if ready(&[]) {
            return;
        }
    }
}

/// Opens the handle and compiles the filter. Returns None when a stop was requested while the
/// filter was being compiled.
pub fn open(cfg: &CaptureConfig, shutdown: &Shutdown) -> Result<Option<Source>, CaptureError> {
    let names = interface_names();
    if !interface_exists(&cfg.interface, &names) {
        return Err(CaptureError::UnknownInterface {
            name: cfg.interface.clone(),
            available: names.join(", "),
        });
    }
    let precision = if cfg.nano {
        Precision::Nano
    } else {
        Precision::Micro
    };
    let inactive = Capture::from_device(cfg.interface.as_str())
        .map_err(|source| CaptureError::Open {
            interface: cfg.interface.clone(),
            source,
        })?
        .snaplen(cfg.snaplen as i32)
        .promisc(cfg.promisc)
        .buffer_size(cfg.buffer_size as i32)
        .timeout(BLOCK_TIMEOUT_MS)
        .precision(precision);
    let cap = inactive
        .open()
        .map_err(|e| classify_open_error(&cfg.interface, e))?;
    let mut cap = cap.setnonblock().map_err(|source| CaptureError::Open {
        interface: cfg.interface.clone(),
        source,
    })?;
    // libpcap still defaults cooked captures (`any`) to LINUX_SLL; like tcpdump 4.99, prefer
    // LINUX_SLL2, which also records the interface index and so tells interfaces apart.
    const DLT_LINUX_SLL: i32 = 113;
    const DLT_LINUX_SLL2: i32 = 276;
    if cap.get_datalink().0 == DLT_LINUX_SLL
        && cap
            .list_datalinks()
            .is_ok_and(|l| l.iter().any(|d| d.0 == DLT_LINUX_SLL2))
    {
        if let Err(e) = cap.set_datalink(pcap::Linktype(DLT_LINUX_SLL2)) {
            tracing::warn!(error = %e, "Could not switch to LINUX_SLL2; writing LINUX_SLL.");
        }
    }
    // After the link type is final: a BPF program is compiled for one link type.
    let loopback = super::loopback::loopback_ifindex(&cfg.interface);
    let cap = match &cfg.filter {
        Some(f) => match compile_filter(cap, f, loopback.map(|i| (i, cfg.snaplen)), shutdown)? {
            Some(cap) => cap,
            None => return Ok(None),
        },
        None => {
            if let Some(ifindex) = loopback {
                one_copy_on_loopback(&cap, None, ifindex, cfg.snaplen);
            }
            cap
        }
    };
    let linktype = cap.get_datalink().0 as u32;
    Ok(Some(Source { cap, linktype }))
}

/// Compiles and installs `filter` on its own thread while this one watches for a stop: libpcap's
/// optimizer cannot be interrupted and its time grows much faster than the filter's length
/// (measured here: 1.8 KB of `host` terms 0.35 s, 4 KB of `port` terms 35 s; 100 KB ran for
/// 15 minutes in 23 GB), and a stop signal must work at every stage of start-up. On a stop the
/// compiling thread is left to the process exit. Compiled by libpcap only; never handed to a
/// shell.
fn compile_filter(
    mut cap: Capture<Active>,
    filter: &str,
    loopback: Option<(u32, u32)>,
    shutdown: &Shutdown,
) -> Result<Option<Capture<Active>>, CaptureError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let f = filter.to_string();
    std::thread::Builder::new()
        .name("bpf-compile".into())
        .spawn(move || {
            let r = cap.filter(&f, true).map(|()| cap);
            if let (Ok(cap), Some((ifindex, snaplen))) = (&r, loopback) {
                one_copy_on_loopback(cap, Some(&f), ifindex, snaplen);
            }
            let _ = tx.send(r);
        })
        .map_err(|e| CaptureError::Io(format!("cannot start the filter compiler thread: {e}")))?;
    let t0 = Instant::now();
    let mut said = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(r) => {
                return r.map(Some).map_err(|source| CaptureError::Filter {
                    filter: filter.to_string(),
                    source,
                })
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(CaptureError::Io("the filter compiler thread died".into()))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        if shutdown.is_triggered() {
            tracing::info!("Stop requested while compiling the filter; not waiting for it.");
            return Ok(None);
        }
        if !said && t0.elapsed() > Duration::from_secs(2) {
            said = true;
            tracing::info!(filter_bytes = filter.len(), "Compiling the filter is taking a while (libpcap's optimizer); a stop signal still works.");
        }
    }
}

/// See [`super::loopback`]; on failure both copies reach the ring and libpcap discards one.
fn one_copy_on_loopback(cap: &Capture<Active>, filter: Option<&str>, ifindex: u32, snaplen: u32) {
    match super::loopback::drop_outgoing_copies(cap, filter, ifindex, snaplen) {
        Ok(()) => tracing::debug!("Loopback: the kernel filter drops each packet's outgoing copy."),
        Err(e) => {
            tracing::warn!(error = %e, "Loopback: could not drop each packet's outgoing copy in the kernel; libpcap discards it instead, and the kernel's counts count every packet twice.")
        }
    }
}

fn classify_open_error(interface: &str, e: pcap::Error) -> CaptureError {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    if lower.contains("permission")
        || lower.contains("not permitted")
        || has_cap_net_raw() == Some(false)
    {
        CaptureError::Permission(format!("cannot open {interface}: {msg}; {NET_RAW_HELP}"))
    } else if lower.contains("no such device") {
        CaptureError::UnknownInterface {
            name: interface.to_string(),
            available: interface_names().join(", "),
        }
    } else {
        CaptureError::Open {
            interface: interface.to_string(),
            source: e,
        }
    }
}

/// How the loop ended.
pub struct LoopEnd {
    pub reason: String,
    /// Set when the capture stopped on an error (interface gone, writer failed).
    pub error: Option<String>,
    pub kernel: KernelStats,
    pub packets_captured: u64,
}

/// What the capture thread writes: the record format (chosen once, a type parameter so the
/// per-packet path has no format branch), the bytes of a file that are not records, and the
/// key log whose secrets go in-band (pcapng only).
pub struct Output<F: Records> {
    pub records: F,
    /// Header and trailer bytes of a file (see [`super::format::Framing::overhead`]).
    pub overhead: u64,
    /// Of which the trailer (pcapng's statistics block), written at the end of the file.
    pub trailer: u64,
    pub keylog: Option<Keylog>,
}

/// Accumulates records into the current buffer and hands full buffers to the writer.
struct Batcher<F: Records> {
    buf: Vec<u8>,
    /// Where the records start in `buf` ([`Batcher::start_buffer`]).
    head: usize,
    buf_packets: u64,
    /// Bytes in the current file as the writer will see them (for size rotation).
    file_len: u64,
    /// The current file has a packet (a file always takes at least one).
    file_has_packets: bool,
    file_opened: Instant,
    out: Output<F>,
    policy: RotatePolicy,
    tx: Sender<Msg>,
    free: Receiver<Vec<u8>>,
    metrics: Arc<CaptureMetrics>,
    /// The writer is gone (fatal write error).
    broken: bool,
    packets: u64,
    bytes: u64,
    /// During the drain: the stop time as (sec, frac); a packet stamped after it means the
    /// kernel has handed us everything it held when the stop was requested.
    cutoff: Option<(u32, u32)>,
    past_cutoff: bool,
    /// Secrets read from the key log since the current buffer was started: they go in front of
    /// it when it is handed over ([`Batcher::hand_over`]).
    secrets: Vec<u8>,
}

impl<F: Records> Batcher<F> {
    fn new(
        cfg: &CaptureConfig,
        out: Output<F>,
        tx: Sender<Msg>,
        free: Receiver<Vec<u8>>,
        metrics: Arc<CaptureMetrics>,
    ) -> Self {
        let mut b = Batcher {
            buf: Vec::with_capacity(BUF_SIZE + 2 * ALIGN),
            head: 0,
            buf_packets: 0,
            file_len: out.overhead,
            file_has_packets: false,
            file_opened: Instant::now(),
            out,
            policy: cfg.rotate,
            tx,
            free,
            metrics,
            broken: false,
            packets: 0,
            bytes: 0,
            cutoff: None,
            past_cutoff: false,
            secrets: Vec::new(),
        };
        b.start_buffer();
        b
    }

    /// Starts the records of a new buffer at the same offset from a 4 KiB boundary in memory as
    /// they will have in the file, so that the writer can hand the aligned middle of the
    /// buffer to the device with O_DIRECT straight from here (`writer::write_direct`): the
    /// records are copied once, from the kernel's ring into this buffer, and never again in
    /// user space. Costs under 8 KiB of room per 1 MiB buffer. (`file_len` counts the trailer
    /// from the start, for size rotation; the records go before it.)
    fn start_buffer(&mut self) {
        let at = self.file_len - self.out.trailer;
        self.head = super::writer::aligned_head(&self.buf, at);
        self.buf.clear();
        self.buf.resize(self.head, 0);
    }

    #[inline]
    fn on_packet(&mut self, h: &pcap::PacketHeader, data: &[u8]) {
        let rec = F::record_len(data.len());
        if self.file_has_packets && self.policy.size_exceeded(self.file_len, rec) {
            self.rotate();
        }
        if self.buf.len() + rec as usize > self.buf.capacity() {
            self.hand_over();
        }
        let (sec, frac) = (h.ts.tv_sec as u32, h.ts.tv_usec as u32);
        self.file_len += self.out.records.push(&mut self.buf, h, data);
        self.file_has_packets = true;
        self.buf_packets += 1;
        self.packets += 1;
        self.bytes += data.len() as u64;
        if let Some(c) = self.cutoff {
            if (sec, frac) > c {
                self.past_cutoff = true;
            }
        }
    }

    fn send(&mut self, msg: Msg) {
        if self.broken {
            return;
        }
        if self.tx.send(msg).is_err() {
            self.broken = true;
        }
    }

    /// Sends the current buffer (if any) to the writer and takes a recycled one.
    fn hand_over(&mut self) {
        if !self.secrets.is_empty() {
            // Before every packet of the buffer: a server's handshake reaches us before the
            // client has derived (and logged) the secret that decrypts it, so a secret read
            // after a packet may still be that packet's. One move per buffer, only when the key
            // log grew while it filled.
            let secrets = std::mem::take(&mut self.secrets);
            self.buf.splice(self.head..self.head, secrets);
        }
        if self.buf.len() == self.head {
            return;
        }
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BUF_SIZE + 2 * ALIGN));
        let full = std::mem::replace(&mut self.buf, next);
        let head = self.head;
        self.start_buffer();
        let packets = std::mem::take(&mut self.buf_packets);
        self.metrics
            .queue_bytes
            .fetch_add((full.len() - head) as u64, Relaxed);
        self.send(Msg::Data {
            buf: full,
            packets,
            head,
        });
    }

    fn rotate(&mut self) {
        self.hand_over();
        self.send(Msg::Rotate);
        self.file_len = self.out.overhead;
        self.start_buffer();
        self.file_has_packets = false;
        self.file_opened = Instant::now();
        self.out.records.new_file();
        // Every file carries the secrets known so far, so each one decrypts on its own.
        if let Some(k) = &self.out.keylog {
            let carried = k.carried();
            self.file_len += self.out.records.secrets(&mut self.buf, &carried);
        }
    }

    /// Secrets the app wrote since the last look: kept for the front of the current buffer.
    fn poll_keylog(&mut self) {
        if let Some(k) = self.out.keylog.as_mut() {
            let new = k.poll(Instant::now());
            self.file_len += self.out.records.secrets(&mut self.secrets, &new);
        }
    }

    fn publish(&mut self) {
        self.metrics
            .packets_captured
            .fetch_add(std::mem::take(&mut self.packets), Relaxed);
        self.metrics
            .bytes_captured
            .fetch_add(std::mem::take(&mut self.bytes), Relaxed);
    }
}

#[derive(Default)]
struct Stats {
    recv: WrappingCounter,
    drop: WrappingCounter,
    ifdrop: WrappingCounter,
    /// The kernel's received count and when it was first seen at that value: every packet it
    /// counts arrived before then.
    seen: Option<(Instant, u64)>,
    refreshed: Option<Instant>,
}

/// How often the loop looks at the kernel's count for [`Stats::all_visible_at`]: libpcap's
/// `pcap_stats` is a getsockopt plus two sysfs files opened and read (~20 us), which once per
/// wake-up cost ~0.05 s per million 64 B packets; at most 50 a second it costs nothing, and a stop
/// waits at most this much longer.
const STATS_EVERY: Duration = Duration::from_millis(20);

impl Stats {
    /// [`Stats::refresh`] unless it ran less than [`STATS_EVERY`] ago (it costs a getsockopt
    /// and two sysfs reads).
    fn refresh_if_stale(&mut self, cap: &mut Capture<Active>, metrics: &CaptureMetrics) {
        if !matches!(self.refreshed, Some(t) if t.elapsed() < STATS_EVERY) {
            self.refresh(cap, metrics);
        }
    }

    /// Reads the kernel's counters into the metrics; returns the received count.
    fn refresh(&mut self, cap: &mut Capture<Active>, m: &CaptureMetrics) -> Option<u64> {
        self.refreshed = Some(Instant::now());
        let s = cap.stats().ok()?;
        let recv = self.recv.update(s.received);
        m.kernel_received.store(recv, Relaxed);
        m.kernel_dropped.store(self.drop.update(s.dropped), Relaxed);
        m.interface_dropped
            .store(self.ifdrop.update(s.if_dropped), Relaxed);
        if !matches!(self.seen, Some((_, r)) if r == recv) {
            self.seen = Some((Instant::now(), recv));
        }
        Some(recv)
    }

    /// At a stop: when everything the kernel has received for us is visible. The packets its
    /// count includes arrived before the count was first seen at that value, so they sit in
    /// retired blocks [`RETIRE_WAIT`] later; the main loop looks at the count when it has read the
    /// ring empty (at most every [`STATS_EVERY`]), so after an idle spell or a burst that ended a moment before the
    /// stop, that moment has passed and the drain waits for nothing. libpcap's count includes
    /// packets it discards in user space (lo's outgoing copies), so only its changes tell,
    /// never its value.
    fn all_visible_at(&mut self, cap: &mut Capture<Active>, m: &CaptureMetrics) -> Instant {
        self.refresh(cap, m);
        self.seen.map_or_else(Instant::now, |(at, _)| at) + RETIRE_WAIT
    }
}

/// After a stop: reads what the kernel holds for us, including the partly filled block it
/// retires within [`RETIRE_WAIT`], and nothing that arrived after the stop once a packet says
/// so. Returns the packets read.
fn drain<F: Records>(
    src: &mut Source,
    cfg: &CaptureConfig,
    b: &mut Batcher<F>,
    stats: &mut Stats,
    metrics: &CaptureMetrics,
    mut total: u64,
) -> u64 {
    let start = total;
    let now_wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let frac = if cfg.nano {
        now_wall.subsec_nanos()
    } else {
        now_wall.subsec_micros()
    };
    b.cutoff = Some((now_wall.as_secs() as u32, frac));
    let t0 = Instant::now();
    let deadline = stats.all_visible_at(&mut src.cap, metrics);
    let settled = deadline <= t0;
    let at_stop = stats.seen.map(|(_, r)| r);
    // The ring was read empty once: a block that shows up after that was retired by the timer
    // (a block fills only as a packet arrives), and a timer retires the block being filled, so
    // if no packet has arrived since the stop, it held the last of them.
    let mut emptied = false;
    while t0.elapsed() < DRAIN_MAX && !b.past_cutoff && !b.broken {
        let limit = cfg.count.map(|c| (c - total).min(i32::MAX as u64) as usize);
        if limit == Some(0) {
            break;
        }
        b.poll_keylog();
        match src.cap.dispatch(limit, |p| b.on_packet(p.header, p.data)) {
            Ok(0) => {
                emptied = true;
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let ms = left.as_millis().clamp(1, 1000) as u16;
                let mut fds = [PollFd::new(src.cap.as_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
            }
            Ok(n) => {
                b.poll_keylog();
                total += n as u64;
                if emptied && at_stop.is_some() && stats.refresh(&mut src.cap, metrics) == at_stop {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Read error while draining; finalizing what was read.");
                break;
            }
        }
    }
    b.publish();
    tracing::debug!(
        elapsed_us = t0.elapsed().as_micros() as u64,
        settled,
        packets = total - start,
        "Drained the kernel ring."
    );
    total - start
}

/// Runs the capture loop until a stop condition, then drains what the kernel holds. Dropping
/// the sender at the end tells the writer to finalize.
pub fn run_loop<F: Records>(
    mut src: Source,
    cfg: &CaptureConfig,
    out: Output<F>,
    tx: Sender<Msg>,
    free: Receiver<Vec<u8>>,
    metrics: Arc<CaptureMetrics>,
    shutdown: &Shutdown,
) -> Result<LoopEnd, CaptureError> {
    let mut pacer = Pacer {
        waker: shutdown
            .waker(true)
            .map_err(|e| CaptureError::Io(format!("wake-up socket: {e}")))?,
        last_read: Instant::now(),
        ring: cfg.buffer_size,
    };
    let mut b = Batcher::new(cfg, out, tx, free, metrics.clone());
    let mut stats = Stats::default();
    stats.refresh(&mut src.cap, &metrics);
    let started = Instant::now();
    let stop_at = cfg.duration.map(|d| started + d);
    let mut next_flush = started + cfg.flush_interval;
    let mut hups = shutdown.hups();
    let mut total: u64 = 0;
    let reason;
    let mut error = None;

    // Main phase.
    loop {
        if shutdown.is_triggered() {
            reason = shutdown
                .reason()
                .map_or("stop requested".into(), |r| r.to_string());
            break;
        }
        let limit = cfg.count.map(|c| (c - total).min(i32::MAX as u64) as usize);
        b.poll_keylog();
        let n = match src.cap.dispatch(limit, |p| b.on_packet(p.header, p.data)) {
            Ok(n) => n,
            Err(e) => {
                error = Some(format!("reading from {} failed: {e}", cfg.interface));
                reason = "capture error".into();
                break;
            }
        };
        if n > 0 {
            b.poll_keylog();
        }
        total += n as u64;
        let read = b.bytes + n as u64 * RING_FRAME_OVERHEAD;
        b.publish();
        let now = Instant::now();
        if let Some((why, err)) = limit_reached(&b, cfg, total, stop_at, now) {
            (reason, error) = (why.to_string(), err);
            break;
        }
        rotate_when_due(&mut b, cfg, shutdown, &mut hups, now);
        if now >= next_flush {
            b.hand_over();
            b.send(Msg::Sync);
            stats.refresh(&mut src.cap, &metrics);
            next_flush = now + cfg.flush_interval;
        }
        if n > 0 && limit.is_some() {
            continue; // --count may have stopped the read with blocks still waiting
        }
        let wake = [stop_at, b.policy.deadline(b.file_opened)]
            .into_iter()
            .flatten()
            .fold(next_flush, Instant::min);
        if let Err(e) = pacer.wait(&mut src, &mut stats, &metrics, (n, read), wake) {
            error = Some(format!("poll failed: {e}"));
            reason = "capture error".into();
            break;
        }
    }

    Ok(finish(src, b, stats, cfg, &metrics, (reason, error), total))
}

/// How the capture loop waits between reads.
struct Pacer {
    waker: std::os::unix::net::UnixStream,
    /// When the last read returned.
    last_read: Instant,
    /// `--buffer-size`: the kernel ring's bytes.
    ring: u64,
}

impl Pacer {
    /// After a read of `n` packets (`read` bytes in the ring) that left the ring empty (an
    /// unlimited pcap_dispatch reads every block the kernel has handed over, so calling it
    /// again would only cost libpcap's zero-timeout poll(2)): during a flood a nap
    /// ([`flood_nap`]), which a stop ends; otherwise wait in poll(2) for a block, a signal or
    /// `wake`. The kernel's count, read here, now dates the packets it holds for us, which lets
    /// a stop skip the retire wait (see [`Stats::all_visible_at`]).
    fn wait(
        &mut self,
        src: &mut Source,
        stats: &mut Stats,
        metrics: &CaptureMetrics,
        (n, read): (usize, u64),
        wake: Instant,
    ) -> Result<(), nix::errno::Errno> {
        let now = Instant::now();
        let since = now.duration_since(std::mem::replace(&mut self.last_read, now));
        if let Some(nap) = flood_nap(n, read, since, self.ring) {
            // Not on the ring's fd: that poll is what the nap avoids.
            return sleep_until(src, &mut self.waker, now + nap, now, false);
        }
        stats.refresh_if_stale(&mut src.cap, metrics);
        sleep_until(src, &mut self.waker, wake, now, true)
    }
}

/// What a packet takes in the kernel's ring besides its bytes (TPACKET_V3 header, link-layer
/// address, alignment), for [`flood_nap`]'s estimate of how fast the ring fills.
const RING_FRAME_OVERHEAD: u64 = 80;
/// A read of at least this many packets means a flood (a block retired by its timer holds
/// fewer unless 12 800 packets a second arrive).
const FLOOD_PACKETS: usize = 128;
/// The longest nap: the retire timeout, so a nap adds no more latency than a quiet link has.
const FLOOD_NAP_MAX: Duration = Duration::from_millis(BLOCK_TIMEOUT_MS as u64);

/// During a flood, how long to sleep before reading again instead of waiting in poll(2): each
/// poll of a packet socket takes the lock the kernel takes for every packet it puts in the ring,
/// and on a 2-core VM with the sender on the other core that contended lock was a quarter of the
/// capture thread's time at 64 B (`perf`: `packet_poll` -> `__pv_queued_spin_lock_slowpath`).
/// Napping until several blocks are full reads them in one pcap_dispatch with no poll at all.
/// The nap is bounded by the time the ring takes to fill an eighth of itself at the rate just
/// seen (a small `--buffer-size` gets short naps, and none below 1 ms) and by
/// [`FLOOD_NAP_MAX`]. None: not a flood, or too fast for a nap; wait in poll as usual.
fn flood_nap(n: usize, read_bytes: u64, since_last: Duration, ring: u64) -> Option<Duration> {
    if n < FLOOD_PACKETS || since_last.is_zero() {
        return None;
    }
    let per_sec = read_bytes as f64 / since_last.as_secs_f64();
    let eighth = Duration::from_secs_f64(ring as f64 / 8.0 / per_sec);
    let nap = eighth.min(FLOOD_NAP_MAX);
    (nap >= Duration::from_millis(1)).then_some(nap)
}

/// Why the loop must end after a read, other than a signal: the writer stopped, `--count` or
/// `--duration` reached. The reason and, for a failure, the error.
fn limit_reached<F: Records>(
    b: &Batcher<F>,
    cfg: &CaptureConfig,
    total: u64,
    stop_at: Option<Instant>,
    now: Instant,
) -> Option<(&'static str, Option<String>)> {
    if b.broken {
        return Some(("write error", Some("the writer stopped".into())));
    }
    if cfg.count.is_some_and(|c| total >= c) {
        return Some(("count reached", None));
    }
    stop_at
        .is_some_and(|t| now >= t)
        .then_some(("duration reached", None))
}

/// Rotates on a new SIGHUP (not on stdout) and when the file's time is up.
fn rotate_when_due<F: Records>(
    b: &mut Batcher<F>,
    cfg: &CaptureConfig,
    shutdown: &Shutdown,
    hups: &mut u64,
    now: Instant,
) {
    let hup_now = shutdown.hups();
    if hup_now != *hups {
        *hups = hup_now;
        // One stream on stdout has one section: a "new file" there would restart the pcapng
        // interface numbering in the middle of it.
        if cfg.stdout {
            tracing::info!("SIGHUP: writing to stdout, there is no file to rotate.");
        } else {
            tracing::info!("Rotating on SIGHUP.");
            b.rotate();
        }
    }
    if b.policy.deadline(b.file_opened).is_some_and(|d| now >= d) {
        b.rotate();
    }
}

/// Sleeps until the waker fires (a signal), `wake`, or, with `ring`, the handle has data.
fn sleep_until(
    src: &Source,
    waker: &mut std::os::unix::net::UnixStream,
    wake: Instant,
    now: Instant,
    ring: bool,
) -> Result<(), nix::errno::Errno> {
    let ms = wake
        .saturating_duration_since(now)
        .as_millis()
        .clamp(1, 1000) as u16;
    let mut fds = [
        PollFd::new(waker.as_fd(), PollFlags::POLLIN),
        PollFd::new(src.cap.as_fd(), PollFlags::POLLIN),
    ];
    let watched = if ring { &mut fds[..] } else { &mut fds[..1] };
    let polled = nix::poll::poll(watched, PollTimeout::from(ms));
    let woken = fds[0].revents().is_some_and(|r| !r.is_empty());
    match polled {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e),
    }
    if woken {
        drain_waker(waker);
    }
    Ok(())
}

/// The end of the loop: the kernel drained (unless the loop failed or `--count` was reached),
/// the key log's figures, the channel closed (the writer finalizes), and what the loop reports.
fn finish<F: Records>(
    mut src: Source,
    mut b: Batcher<F>,
    mut stats: Stats,
    cfg: &CaptureConfig,
    metrics: &Arc<CaptureMetrics>,
    (reason, error): (String, Option<String>),
    mut total: u64,
) -> LoopEnd {
    if error.is_none() && cfg.count.is_none_or(|c| total < c) {
        total += drain(&mut src, cfg, &mut b, &mut stats, metrics, total);
    }
    stats.refresh(&mut src.cap, metrics);
    b.hand_over();
    if let Some(k) = &b.out.keylog {
        tracing::info!(
            secrets = k.secrets_read,
            lines_skipped = k.lines_skipped,
            "TLS secrets embedded from the key log."
        );
    }
    drop(b); // closes the channel: the writer finalizes
    let kernel = KernelStats {
        received: metrics.kernel_received.load(Relaxed),
        dropped: metrics.kernel_dropped.load(Relaxed),
        interface_dropped: metrics.interface_dropped.load(Relaxed),
        note: if cfg.interface == "any" {
            "libpcap ps_recv/ps_drop; on any the kernel counts each loopback packet twice".into()
        } else {
            "libpcap ps_recv/ps_drop/ps_ifdrop".into()
        },
    };
    LoopEnd {
        reason,
        error,
        kernel,
        packets_captured: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_naps_for_an_eighth_of_the_ring_at_most_the_retire_timeout() {
        let ms = Duration::from_millis;
        // A trickle (a block retired by its timer) is not a flood.
        assert_eq!(
            flood_nap(FLOOD_PACKETS - 1, 1 << 20, ms(10), 32 << 20),
            None
        );
        // 300 000 x 64 B a second (~43 MB/s into the ring): 32 MiB / 8 takes ~97 ms, so the
        // retire timeout bounds it.
        let n = 1600;
        let read = n as u64 * (64 + 42 + RING_FRAME_OVERHEAD);
        let since = Duration::from_secs_f64(n as f64 / 300_000.0);
        assert_eq!(flood_nap(n, read, since, 32 << 20), Some(FLOOD_NAP_MAX));
        // The same rate into a 1 MiB ring: an eighth fills in ~3 ms.
        let nap = flood_nap(n, read, since, 1 << 20).unwrap();
        assert!(nap > ms(2) && nap < ms(4), "{nap:?}");
        // 400 MB/s into a 1 MiB ring: under a millisecond, so poll as usual.
        assert_eq!(flood_nap(300, 400_000, ms(1), 1 << 20), None);
    }
}
