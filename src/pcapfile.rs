//! The classic pcap file format: what we write (file header, record headers) and a walker that
//! reads records back. It tells a torn tail (an incomplete last record, what a killed writer
//! leaves) from damage (a corrupt header, a zero-filled hole) and resynchronises after damage on
//! the next plausible record header, so one bad span never hides the records after it. The
//! walker treats its input as untrusted: every length is bounded before use.

use std::io;

pub const MAGIC_MICRO: u32 = 0xa1b2_c3d4;
pub const MAGIC_NANO: u32 = 0xa1b2_3c4d;
pub const FILE_HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 16;
/// Largest record body we accept when reading (libpcap's own limit for most link types is
/// 262144; D-Bus and USB captures go higher, never past this).
pub const MAX_RECORD_LEN: u32 = 16 << 20;

/// The 24-byte file header, in native byte order as libpcap writes it.
pub fn file_header(linktype: u32, snaplen: u32, nano: bool) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    let magic = if nano { MAGIC_NANO } else { MAGIC_MICRO };
    h[0..4].copy_from_slice(&magic.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    // thiszone and sigfigs stay 0.
    h[16..20].copy_from_slice(&snaplen.to_ne_bytes());
    h[20..24].copy_from_slice(&linktype.to_ne_bytes());
    h
}

/// Appends one record (header + captured bytes) to `buf`. `frac` is microseconds or
/// nanoseconds, matching the file's magic.
#[inline]
pub fn push_record(buf: &mut Vec<u8>, sec: u32, frac: u32, caplen: u32, len: u32, data: &[u8]) {
    let mut hdr = [0u8; RECORD_HEADER_LEN];
    hdr[0..4].copy_from_slice(&sec.to_ne_bytes());
    hdr[4..8].copy_from_slice(&frac.to_ne_bytes());
    hdr[8..12].copy_from_slice(&caplen.to_ne_bytes());
    hdr[12..16].copy_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&hdr);
    buf.extend_from_slice(data);
}

/// A span of a file that is neither a complete record nor a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
    /// What is wrong at `offset`.
    pub what: String,
}

/// What a walk over a pcap file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub linktype: u32,
    pub snaplen: u32,
    pub nano: bool,
    /// Byte order differs from ours.
    pub swapped: bool,
    /// Complete, plausible records before the first damaged span or torn tail.
    pub packets: u64,
    /// End of the last of those records: the clean prefix a truncation keeps.
    pub valid_len: u64,
    /// Total bytes in the file.
    pub total_len: u64,
    /// First and last record timestamps over every record found (seconds, fraction as stored).
    pub first_ts: Option<(u32, u32)>,
    pub last_ts: Option<(u32, u32)>,
    /// Why the clean prefix ends before the end of the file, if it does.
    pub stopped: Option<String>,
    /// Damage in the middle (or a damaged, not merely torn, tail), in file order. The walk
    /// resynchronised after each span on the next plausible record header.
    pub damaged: Vec<Damage>,
    /// Complete records after the first damaged span (not counted in `packets`).
    pub packets_after_damage: u64,
    /// An incomplete last record (a write cut short): the only thing repair cuts silently.
    pub torn_tail: Option<Damage>,
}

impl Scan {
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.torn_tail.is_none()
    }

    /// Every complete record found, before and after damaged spans.
    pub fn all_packets(&self) -> u64 {
        self.packets + self.packets_after_damage
    }

    /// The byte ranges `[start, end)` that hold the file header and complete records: the file
    /// without its damaged spans and torn tail.
    pub fn kept_spans(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        for d in self.damaged.iter().chain(self.torn_tail.iter()) {
            if d.offset > at {
                out.push((at, d.offset));
            }
            at = d.offset + d.len;
        }
        if at < self.total_len {
            out.push((at, self.total_len));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("not a pcap file: {0}")]
    NotPcap(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Random-access bytes the walker reads: a file (pread) or a slice.
pub trait ReadAt {
    fn size(&self) -> io::Result<u64>;
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = (off as usize).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, off)
    }
}

/// A resynchronisation candidate's timestamp must be within this of the record before the damage
/// (and of the record after it): captures are written in time order, so a header far off in time
/// is more likely packet bytes that happen to look like one.
const RESYNC_WINDOW_SECS: u32 = 86_400;

/// One record header, decoded.
#[derive(Clone, Copy)]
struct Rec {
    sec: u32,
    frac: u32,
    caplen: u32,
    len: u32,
}

fn plausible(r: &Rec, snaplen: u32, frac_limit: u32) -> bool {
    r.caplen <= MAX_RECORD_LEN
        && r.frac < frac_limit
        && r.len != 0
        && r.caplen <= r.len.max(snaplen)
}

/// Whether 16 bytes in native byte order are a record header the walker would accept in a file
/// with this snaplen and precision (for tests and the fuzz target's oracle).
pub fn header_plausible(h: &[u8; RECORD_HEADER_LEN], snaplen: u32, nano: bool) -> bool {
    let rd = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let r = Rec {
        sec: rd(0),
        frac: rd(4),
        caplen: rd(8),
        len: rd(12),
    };
    plausible(&r, snaplen, if nano { 1_000_000_000 } else { 1_000_000 })
}

/// The walker: a read-ahead window over the source plus the file's format.
struct Walker<'a, S: ReadAt + ?Sized> {
    src: &'a S,
    total: u64,
    win: Vec<u8>,
    win_off: u64,
    win_len: usize,
    swapped: bool,
    snaplen: u32,
    frac_limit: u32,
}

impl<S: ReadAt + ?Sized> Walker<'_, S> {
    /// Up to 16 bytes at `off` (fewer at the end), from the read-ahead window.
    fn header_bytes(&mut self, off: u64) -> io::Result<([u8; RECORD_HEADER_LEN], usize)> {
        let win_end = self.win_off + self.win_len as u64;
        // The window covers `off` when it holds the 16 bytes there, or everything up to the end.
        let in_win = off >= self.win_off
            && (off + RECORD_HEADER_LEN as u64 <= win_end || win_end == self.total);
        if !in_win {
            // 1 MiB windows: one pread per ~thousands of records when walking in order.
            if self.win.is_empty() {
                self.win = vec![0; (self.total.min(1 << 20) as usize).max(RECORD_HEADER_LEN)];
            }
            let mut got = 0;
            while got < self.win.len() {
                match self.src.read_at(off + got as u64, &mut self.win[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.win_len = got;
            self.win_off = off;
        }
        let at = ((off - self.win_off) as usize).min(self.win_len);
        let n = (self.win_len - at).min(RECORD_HEADER_LEN);
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[..n].copy_from_slice(&self.win[at..at + n]);
        Ok((h, n))
    }

    fn header(&mut self, off: u64) -> io::Result<Option<Rec>> {
        let (h, n) = self.header_bytes(off)?;
        if n < RECORD_HEADER_LEN {
            return Ok(None);
        }
        let rd = |b: &[u8]| {
            let v = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            if self.swapped {
                v.swap_bytes()
            } else {
                v
            }
        };
        Ok(Some(Rec {
            sec: rd(&h[0..4]),
            frac: rd(&h[4..8]),
            caplen: rd(&h[8..12]),
            len: rd(&h[12..16]),
        }))
    }

    /// Could a writer have produced this header? A zero wire length never comes from a real
    /// packet (it is what a zero-filled hole reads as).
    fn implausible(&self, r: &Rec) -> Option<String> {
        (!plausible(r, self.snaplen, self.frac_limit)).then(|| {
            format!(
                "implausible record header (caplen {}, len {}, fraction {})",
                r.caplen, r.len, r.frac
            )
        })
    }

    fn end_of(off: u64, r: &Rec) -> u64 {
        off + RECORD_HEADER_LEN as u64 + r.caplen as u64
    }

    /// Is `off` a record we can resynchronise on: a plausible header near `near` in time, a body
    /// that fits, and then the end of the file or another plausible header near it in time?
    fn confirmed(&mut self, off: u64, near: Option<u32>) -> io::Result<bool> {
        let close = |a: u32, b: u32| a.abs_diff(b) <= RESYNC_WINDOW_SECS;
        let Some(r) = self.header(off)? else {
            return Ok(false);
        };
        if self.implausible(&r).is_some() || near.is_some_and(|t| !close(t, r.sec)) {
            return Ok(false);
        }
        let end = Self::end_of(off, &r);
        if end > self.total {
            return Ok(false);
        }
        if end == self.total {
            return Ok(true);
        }
        let next = self.header(end)?;
        Ok(next.is_some_and(|n| self.implausible(&n).is_none() && close(n.sec, r.sec)))
    }

    /// The first offset in `from..to` to resynchronise on.
    fn find(&mut self, from: u64, to: u64, near: Option<u32>) -> io::Result<Option<u64>> {
        for off in from..to.min(self.total) {
            if self.confirmed(off, near)? {
                return Ok(Some(off));
            }
        }
        Ok(None)
    }
}

/// Walks every record of a pcap file held in memory. See [`scan_at`].
pub fn scan(data: &[u8]) -> Result<Scan, ScanError> {
    scan_at(data)
}

/// Walks every record of a pcap file. Never fails on damage: a torn last record is reported in
/// `torn_tail`; anything else that is not a record (a corrupt header, a zero-filled hole) is
/// reported in `damaged`, and the walk resynchronises on the next plausible record header so the
/// records after it are still found.
///
/// A plausible header whose body fits is a record, as for any sequential reader, so everything
/// libpcap would read is kept. (A corrupt length that is still plausible therefore swallows the
/// records it spans, as it does for every reader; an implausible one is damage.)
pub fn scan_at<S: ReadAt + ?Sized>(src: &S) -> Result<Scan, ScanError> {
    let total = src.size()?;
    let mut hdr = [0u8; FILE_HEADER_LEN];
    let mut got = 0;
    while got < FILE_HEADER_LEN {
        match src.read_at(got as u64, &mut hdr[got..])? {
            0 => break,
            k => got += k,
        }
    }
    if got < FILE_HEADER_LEN {
        return Err(ScanError::NotPcap(format!(
            "{got} bytes, shorter than the 24-byte file header"
        )));
    }
    let magic_ne = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let (nano, swapped) = match magic_ne {
        MAGIC_MICRO => (false, false),
        MAGIC_NANO => (true, false),
        m if m.swap_bytes() == MAGIC_MICRO => (false, true),
        m if m.swap_bytes() == MAGIC_NANO => (true, true),
        m => return Err(ScanError::NotPcap(format!("unknown magic {m:#010x}"))),
    };
    let rd = |b: &[u8]| {
        let v = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        if swapped {
            v.swap_bytes()
        } else {
            v
        }
    };
    let snaplen = rd(&hdr[16..20]);
    let mut s = Scan {
        linktype: rd(&hdr[20..24]) & 0x0fff_ffff,
        snaplen,
        nano,
        swapped,
        valid_len: FILE_HEADER_LEN as u64,
        total_len: total,
        ..Scan::default()
    };
    let mut w = Walker {
        src,
        total,
        win: Vec::new(),
        win_off: 0,
        win_len: 0,
        swapped,
        snaplen,
        frac_limit: if nano { 1_000_000_000 } else { 1_000_000 },
    };
    walk(&mut w, &mut s)?;
    Ok(s)
}

fn walk<S: ReadAt + ?Sized>(w: &mut Walker<'_, S>, s: &mut Scan) -> io::Result<()> {
    let total = w.total;
    let mut pos = FILE_HEADER_LEN as u64;
    while pos < total {
        let near = s.last_ts.map(|t| t.0);
        let Some(r) = w.header(pos)? else {
            let what = format!("torn record header ({} of 16 bytes)", total - pos);
            torn(s, pos, what);
            return Ok(());
        };
        let end = Walker::<S>::end_of(pos, &r);
        let verdict = if let Some(why) = w.implausible(&r) {
            // The header itself is damaged: the damage starts here.
            match w.find(pos + 1, total, near)? {
                Some(next) => Err((next, why)),
                None => Err((total, format!("{why}; no record after it"))),
            }
        } else if end > total {
            // A torn last record, or a corrupt length with records after it.
            match w.find(pos + 1, total, near)? {
                Some(next) => Err((
                    next,
                    format!("record length {} runs past the end of the file", r.caplen),
                )),
                None => {
                    let what = format!(
                        "torn record body ({} of {} bytes)",
                        total - pos - 16,
                        r.caplen
                    );
                    torn(s, pos, what);
                    return Ok(());
                }
            }
        } else {
            // Kept even when an implausible header follows: a sequential reader (libpcap) reads
            // it, so it is never ours to drop; the damage starts after it.
            Ok(())
        };
        match verdict {
            Ok(()) => {
                record(s, &r, end);
                pos = end;
            }
            Err((next, what)) => {
                if s.stopped.is_none() {
                    s.stopped = Some(what.clone());
                }
                s.damaged.push(Damage {
                    offset: pos,
                    len: next - pos,
                    what,
                });
                pos = next;
            }
        }
    }
    Ok(())
}

fn torn(s: &mut Scan, pos: u64, what: String) {
    if s.stopped.is_none() {
        s.stopped = Some(what.clone());
    }
    s.torn_tail = Some(Damage {
        offset: pos,
        len: s.total_len - pos,
        what,
    });
}

fn record(s: &mut Scan, r: &Rec, end: u64) {
    if s.damaged.is_empty() {
        s.packets += 1;
        s.valid_len = end;
    } else {
        s.packets_after_damage += 1;
    }
    if s.first_ts.is_none() {
        s.first_ts = Some((r.sec, r.frac));
    }
    s.last_ts = Some((r.sec, r.frac));
}

/// Scans a file on disk.
pub fn scan_file(path: &std::path::Path) -> Result<Scan, ScanError> {
    let f = std::fs::File::open(path)?;
    scan_at(&f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u32) -> Vec<u8> {
        let mut v = file_header(1, 65535, false).to_vec();
        for i in 0..n {
            push_record(&mut v, 1000 + i, i, 10, 60, &[i as u8; 10]);
        }
        v
    }

    #[test]
    fn walks_complete_records() {
        let s = scan(&sample(5)[..]).unwrap();
        assert_eq!(s.packets, 5);
        assert!(s.is_clean());
        assert_eq!(s.valid_len, 24 + 5 * 26);
        assert_eq!(s.first_ts, Some((1000, 0)));
        assert_eq!(s.last_ts, Some((1004, 4)));
    }

    #[test]
    fn every_truncation_point_keeps_the_complete_records() {
        let full = sample(4);
        for cut in FILE_HEADER_LEN..full.len() {
            let s = scan(&full[..cut]).unwrap();
            let complete = ((cut - FILE_HEADER_LEN) / 26) as u64;
            assert_eq!(s.packets, complete, "cut at {cut}");
            assert_eq!(s.valid_len, 24 + complete * 26);
            assert_eq!(s.total_len, cut as u64);
            assert_eq!(s.is_clean(), (cut - FILE_HEADER_LEN).is_multiple_of(26));
        }
    }

    #[test]
    fn rejects_non_pcap_and_short_headers() {
        assert!(matches!(scan(&b"hello"[..]), Err(ScanError::NotPcap(_))));
        assert!(matches!(scan(&[0u8; 40][..]), Err(ScanError::NotPcap(_))));
    }

    #[test]
    fn implausible_length_stops_the_walk() {
        let mut v = sample(1);
        push_record(&mut v, 1, 0, u32::MAX, u32::MAX, &[]);
        let s = scan(&v[..]).unwrap();
        assert_eq!(s.packets, 1);
        assert!(s.stopped.unwrap().contains("implausible"));
    }

    #[test]
    fn reads_swapped_byte_order() {
        let mut v = sample(2);
        for w in [0usize, 16, 20] {
            v[w..w + 4].reverse();
        }
        v[4..6].reverse();
        v[6..8].reverse();
        for r in 0..2 {
            let off = 24 + r * 26;
            for f in 0..4 {
                v[off + f * 4..off + f * 4 + 4].reverse();
            }
        }
        let s = scan(&v[..]).unwrap();
        assert!(s.swapped);
        assert_eq!(s.packets, 2);
    }

    /// A file of `n` records with payload bytes >= 0x80 (so no header hides in a payload) and
    /// timestamps a second apart; returns the bytes and each record's byte range.
    fn records(n: u32, size: impl Fn(u32) -> u32) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut v = file_header(1, 65535, false).to_vec();
        let mut spans = Vec::new();
        for i in 0..n {
            let start = v.len();
            let c = size(i);
            push_record(
                &mut v,
                1_790_000_000 + i,
                i * 7,
                c,
                c + 4,
                &vec![0x80 | i as u8; c as usize],
            );
            spans.push((start, v.len()));
        }
        (v, spans)
    }

    /// The records of the file without its damaged spans and torn tail, as a strict sequential
    /// reader (libpcap's) sees them: it must read to the end.
    fn kept_records(v: &[u8], s: &Scan) -> Vec<Vec<u8>> {
        let out: Vec<u8> = s
            .kept_spans()
            .iter()
            .flat_map(|&(a, b)| v[a as usize..b as usize].to_vec())
            .collect();
        let mut recs = Vec::new();
        let mut off = FILE_HEADER_LEN;
        while off < out.len() {
            let caplen = u32::from_ne_bytes(out[off + 8..off + 12].try_into().unwrap()) as usize;
            recs.push(out[off..off + 16 + caplen].to_vec());
            off += 16 + caplen;
        }
        assert_eq!(off, out.len(), "the kept spans read to the end");
        recs
    }

    fn survivors(
        v: &[u8],
        spans: &[(usize, usize)],
        hit: impl Fn(usize, usize) -> bool,
    ) -> Vec<Vec<u8>> {
        spans
            .iter()
            .filter(|&&(a, b)| !hit(a, b))
            .map(|&(a, b)| v[a..b].to_vec())
            .collect()
    }

    #[test]
    fn zero_filled_hole_is_damage_and_every_record_after_it_is_kept() {
        // Regression (issue 10): the hole the old writer left after a disk-full episode read as
        // thousands of zero-length records stamped 1970.
        let (v, spans) = records(40, |i| 60 + i * 13);
        let mut holed = v[..spans[20].0].to_vec();
        holed.extend(std::iter::repeat_n(0, 100_003));
        holed.extend_from_slice(&v[spans[20].0..]);
        let s = scan(&holed).unwrap();
        assert_eq!(s.packets, 20);
        assert_eq!(s.packets_after_damage, 20);
        assert_eq!(s.damaged.len(), 1);
        assert_eq!(s.damaged[0].offset, spans[20].0 as u64);
        assert_eq!(s.damaged[0].len, 100_003);
        assert!(s.damaged[0].what.contains("len 0"), "{:?}", s.damaged);
        assert!(s.torn_tail.is_none() && !s.is_clean());
        assert_eq!(
            kept_records(&holed, &s),
            survivors(&v, &spans, |_, _| false)
        );
    }

    #[test]
    fn a_corrupt_length_early_in_a_big_file_keeps_every_record_after_it() {
        // Regression (issue 10): one corrupt length field near the start made repair treat the
        // rest (94% of the file) as a torn tail.
        let (v, spans) = records(2000, |i| 40 + (i * 37) % 1400);
        for bad in [u32::MAX, 0x0100_0001, 70_000, 3, 0] {
            let mut d = v.clone();
            let at = spans[5].0 + 8;
            d[at..at + 4].copy_from_slice(&bad.to_ne_bytes());
            let s = scan(&d).unwrap();
            assert!(s.torn_tail.is_none());
            assert_eq!(s.damaged.len(), 1, "caplen {bad}");
            let mut got = kept_records(&d, &s);
            // A plausible length too small to be caught leaves the corrupt record's first bytes
            // as a short record (a sequential reader reads it so); the damage starts after it.
            if s.packets == 6 {
                assert_eq!(got.remove(5).len(), 16 + bad as usize);
            } else {
                assert_eq!(s.packets, 5, "caplen {bad}");
                assert_eq!(s.damaged[0].offset, spans[5].0 as u64);
            }
            assert_eq!(
                got,
                survivors(&v, &spans, |a, _| a == spans[5].0),
                "caplen {bad}"
            );
        }
    }

    #[test]
    fn only_an_incomplete_last_record_is_a_torn_tail() {
        let (v, spans) = records(10, |i| 100 + i);
        let s = scan(&v[..v.len() - 7]).unwrap();
        assert!(s.damaged.is_empty());
        let t = s.torn_tail.unwrap();
        assert_eq!(t.offset, spans[9].0 as u64);
        assert!(t.what.contains("torn record body"));
        // Garbage after the last record is damage, not a torn tail: it is reported.
        let mut g = v.clone();
        g.extend_from_slice(&[0xff; 40]);
        let s = scan(&g).unwrap();
        assert_eq!(s.packets, 10);
        assert!(s.torn_tail.is_none());
        assert_eq!(s.damaged[0].offset, v.len() as u64);
        assert!(s.damaged[0].what.contains("no record after it"));
    }

    #[test]
    fn records_outside_a_corrupted_span_survive() {
        // The property the fuzz target checks, over a deterministic sample: overwrite a span of a
        // valid file; unless the span itself forges a plausible header, every record that does
        // not overlap it is kept, and the kept spans read to the end.
        let mut seed = 0x51c0_ffee_1234_5678u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut forged, mut checked) = (0, 0);
        for _ in 0..3000 {
            let (v, spans) = records(30, |i| 20 + (i * 53) % 300);
            let a = spans[1].0 + (rnd() as usize) % (v.len() - spans[1].0);
            let b = (a + 1 + (rnd() as usize) % 600).min(v.len());
            let mut d = v.clone();
            let mode = rnd() % 3;
            for x in &mut d[a..b] {
                *x = match mode {
                    0 => 0,
                    1 => 0xff,
                    _ => rnd() as u8,
                };
            }
            let s = scan(&d).unwrap();
            let got = kept_records(&d, &s);
            let hit = |x: usize, y: usize| x < b && a < y;
            let before = survivors(&v, &spans, |x, y| hit(x, y) || x >= a);
            assert_eq!(&got[..before.len()], &before[..], "records before the span");
            let forges = (a.saturating_sub(15).max(24)..b).any(|o| {
                o + 16 <= d.len()
                    && header_plausible(d[o..o + 16].try_into().unwrap(), 65535, false)
            });
            if forges {
                forged += 1;
                continue;
            }
            checked += 1;
            let want = survivors(&v, &spans, hit);
            let mut it = got.iter();
            for w in &want {
                assert!(
                    it.any(|g| g == w),
                    "a record outside [{a}, {b}) was lost ({mode})"
                );
            }
        }
        assert!(checked > 1000, "{checked} checked, {forged} forged");
    }
}
