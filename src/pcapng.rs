//! The pcapng file format (draft-ietf-opsawg-pcapng): the blocks we write (section header,
//! interface description, enhanced packet, interface statistics, decryption secrets) and a block
//! walker that reads a file back, stopping at the first torn or implausible block, for
//! `sidecap repair` and the uploader. Like [`crate::pcapfile`], the walker treats its input as
//! untrusted: every length is bounded before it is used.
//!
//! We write in native byte order (the section header's byte-order magic says which), as
//! libpcap and dumpcap do; the walker reads either order.

use std::io::{self, Read};

use crate::pcapfile::{Scan, ScanError};

pub const SHB_TYPE: u32 = 0x0A0D_0D0A;
pub const IDB_TYPE: u32 = 0x0000_0001;
pub const PB_TYPE: u32 = 0x0000_0002; // obsolete Packet Block, still counted when read
pub const SPB_TYPE: u32 = 0x0000_0003;
pub const ISB_TYPE: u32 = 0x0000_0005;
pub const EPB_TYPE: u32 = 0x0000_0006;
pub const DSB_TYPE: u32 = 0x0000_000A;
pub const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// Decryption Secrets Block payload type: an NSS key log (SSLKEYLOGFILE).
pub const SECRETS_TLS_KEYLOG: u32 = 0x544c_534b;
/// Fixed part of an Enhanced Packet Block: type, length, interface, timestamp (2), captured and
/// original length, trailing length.
pub const EPB_FIXED_LEN: usize = 32;
/// Largest block we accept when reading: a 16 MiB packet (see [`crate::pcapfile::MAX_RECORD_LEN`])
/// plus generous room for options.
pub const MAX_BLOCK_LEN: u32 = (16 << 20) + (64 << 10);

/// Option codes we write.
pub mod opt {
    pub const END: u16 = 0;
    pub const COMMENT: u16 = 1;
    pub const SHB_HARDWARE: u16 = 2;
    pub const SHB_OS: u16 = 3;
    pub const SHB_USERAPPL: u16 = 4;
    pub const IF_NAME: u16 = 2;
    pub const IF_DESCRIPTION: u16 = 3;
    pub const IF_TSRESOL: u16 = 9;
    pub const IF_FILTER: u16 = 11;
    pub const ISB_STARTTIME: u16 = 2;
    pub const ISB_ENDTIME: u16 = 3;
    pub const ISB_IFRECV: u16 = 4;
    pub const ISB_IFDROP: u16 = 5;
    pub const ISB_OSDROP: u16 = 7;
    pub const ISB_USRDELIV: u16 = 8;
}

#[inline]
fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// An options list being built; [`Options::finish`] adds `opt_endofopt`.
#[derive(Default)]
pub struct Options(Vec<u8>);

impl Options {
    pub fn bytes(mut self, code: u16, value: &[u8]) -> Self {
        // An option's length field is 16 bits: longer values (a huge filter) are cut, never
        // allowed to corrupt the block.
        let value = &value[..value.len().min(u16::MAX as usize - 3)];
        self.0.extend_from_slice(&code.to_ne_bytes());
        self.0
            .extend_from_slice(&(value.len() as u16).to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len() + pad4(value.len()), 0);
        self
    }

    pub fn str(self, code: u16, value: &str) -> Self {
        self.bytes(code, value.as_bytes())
    }

    pub fn u64(self, code: u16, value: u64) -> Self {
        self.bytes(code, &value.to_ne_bytes())
    }

    /// A timestamp option: the high 32 bits first, as in the Enhanced Packet Block.
    pub fn ts(self, code: u16, ts: u64) -> Self {
        let mut v = [0u8; 8];
        v[0..4].copy_from_slice(&((ts >> 32) as u32).to_ne_bytes());
        v[4..8].copy_from_slice(&(ts as u32).to_ne_bytes());
        self.bytes(code, &v)
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.0.is_empty() {
            self.0.extend_from_slice(&[0, 0, 0, 0]);
        }
        self.0
    }
}

/// One block: type, total length, `body` (padded), options, total length again.
fn block(ty: u32, body: &[u8], opts: Options) -> Vec<u8> {
    let opts = opts.finish();
    let total = 12 + body.len() + pad4(body.len()) + opts.len();
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&(total as u32).to_ne_bytes());
    b.extend_from_slice(body);
    b.resize(b.len() + pad4(body.len()), 0);
    b.extend_from_slice(&opts);
    b.extend_from_slice(&(total as u32).to_ne_bytes());
    b
}

/// Section Header Block, section length unknown (-1): files are written as a stream.
pub fn shb(opts: Options) -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&BYTE_ORDER_MAGIC.to_ne_bytes());
    body.extend_from_slice(&1u16.to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&(-1i64).to_ne_bytes());
    block(SHB_TYPE, &body, opts)
}

/// Interface Description Block.
pub fn idb(linktype: u32, snaplen: u32, opts: Options) -> Vec<u8> {
    let mut body = Vec::with_capacity(8);
    body.extend_from_slice(&(linktype as u16).to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&snaplen.to_ne_bytes());
    block(IDB_TYPE, &body, opts)
}

/// Interface Statistics Block for interface `if_id` at `ts` (the interface's resolution).
pub fn isb(if_id: u32, ts: u64, opts: Options) -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&if_id.to_ne_bytes());
    body.extend_from_slice(&((ts >> 32) as u32).to_ne_bytes());
    body.extend_from_slice(&(ts as u32).to_ne_bytes());
    block(ISB_TYPE, &body, opts)
}

/// Decryption Secrets Block holding NSS key log lines.
pub fn dsb_tls_keylog(lines: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + lines.len());
    body.extend_from_slice(&SECRETS_TLS_KEYLOG.to_ne_bytes());
    body.extend_from_slice(&(lines.len() as u32).to_ne_bytes());
    body.extend_from_slice(lines);
    block(DSB_TYPE, &body, Options::default())
}

/// Bytes an Enhanced Packet Block with `caplen` captured bytes takes.
#[inline]
pub fn epb_len(caplen: usize) -> usize {
    EPB_FIXED_LEN + caplen + pad4(caplen)
}

/// Appends an Enhanced Packet Block without options. `ts` is in the interface's `if_tsresol`
/// units. Returns the bytes appended.
#[inline]
pub fn push_epb(buf: &mut Vec<u8>, if_id: u32, ts: u64, len: u32, data: &[u8]) -> usize {
    let total = epb_len(data.len());
    let mut hdr = [0u8; 28];
    hdr[0..4].copy_from_slice(&EPB_TYPE.to_ne_bytes());
    hdr[4..8].copy_from_slice(&(total as u32).to_ne_bytes());
    hdr[8..12].copy_from_slice(&if_id.to_ne_bytes());
    hdr[12..16].copy_from_slice(&((ts >> 32) as u32).to_ne_bytes());
    hdr[16..20].copy_from_slice(&(ts as u32).to_ne_bytes());
    hdr[20..24].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    hdr[24..28].copy_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&hdr);
    buf.extend_from_slice(data);
    let pad = pad4(data.len());
    buf.extend_from_slice(&[0u8; 3][..pad]);
    buf.extend_from_slice(&(total as u32).to_ne_bytes());
    total
}

/// Does a file starting with these bytes look like pcapng?
pub fn is_pcapng(first4: &[u8]) -> bool {
    first4.len() >= 4 && first4[..4] == SHB_TYPE.to_ne_bytes()
}

/// The parts of a walk that a [`Scan`] has no field for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    pub interfaces: u32,
    pub secrets_blocks: u64,
    pub statistics_blocks: u64,
}

/// Walks every block of a pcapng stream; never fails on a torn or corrupt tail (see
/// [`crate::pcapfile::scan`] for the meaning of the [`Scan`] fields; timestamps are seconds and
/// the fraction in the first interface's resolution, micro or nano).
pub fn scan<R: Read>(r: R) -> Result<Scan, ScanError> {
    scan_extra(r).map(|(s, _)| s)
}

pub fn scan_extra<R: Read>(r: R) -> Result<(Scan, Extra), ScanError> {
    let (mut s, x) = walk(r)?;
    classify_stop(&mut s);
    Ok((s, x))
}

/// Says what the bytes after the last complete block are, in the terms `repair` acts on: an
/// incomplete last block is a torn tail (cut silently, as for pcap); anything else (an
/// implausible block in the middle) is damage. The pcapng walker does not resynchronise, so the
/// damage runs to the end of the file and `repair` leaves such a file as it is.
fn classify_stop(s: &mut Scan) {
    if s.valid_len >= s.total_len {
        return;
    }
    let what = s.stopped.clone().unwrap_or_else(|| "trailing bytes".into());
    let d = crate::pcapfile::Damage {
        offset: s.valid_len,
        len: s.total_len - s.valid_len,
        what: what.clone(),
    };
    if what.starts_with("torn") {
        s.torn_tail = Some(d);
    } else {
        s.damaged.push(d);
    }
}

fn walk<R: Read>(mut r: R) -> Result<(Scan, Extra), ScanError> {
    let mut w = Walk {
        s: Scan::default(),
        x: Extra::default(),
        tsresol: Vec::new(),
        section: false,
    };
    let mut head = [0u8; 12];
    let got = read_full(&mut r, &mut head)?;
    if got < 12 || !is_pcapng(&head) {
        return Err(ScanError::NotPcap(format!(
            "{got} bytes without a pcapng section header"
        )));
    }
    let bom = u32::from_ne_bytes([head[8], head[9], head[10], head[11]]);
    if bom != BYTE_ORDER_MAGIC && bom.swap_bytes() != BYTE_ORDER_MAGIC {
        return Err(ScanError::NotPcap(format!(
            "unknown byte-order magic {bom:#010x}"
        )));
    }
    w.s.swapped = bom != BYTE_ORDER_MAGIC;
    let mut pending = Some(head);
    loop {
        let hdr = match pending.take() {
            Some(h) => h,
            None => {
                let mut h = [0u8; 12];
                let got = read_full(&mut r, &mut h)?;
                if got == 0 {
                    return Ok((w.s, w.x));
                }
                if got < 12 {
                    w.s.total_len += got as u64;
                    w.s.stopped = Some(format!("torn block header ({got} bytes)"));
                    return finish_len(r, w);
                }
                h
            }
        };
        w.s.total_len += 12;
        if let Err(why) = w.block(&hdr, &mut r)? {
            w.s.stopped = Some(why);
            return finish_len(r, w);
        }
        w.s.valid_len = w.s.total_len;
    }
}

struct Walk {
    s: Scan,
    x: Extra,
    /// if_tsresol exponent (base 10) of each interface in the current section.
    tsresol: Vec<u32>,
    section: bool,
}

impl Walk {
    fn rd(&self, b: &[u8]) -> u32 {
        let v = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        if self.s.swapped {
            v.swap_bytes()
        } else {
            v
        }
    }

    fn rd16(&self, b: &[u8]) -> u32 {
        let v = u16::from_ne_bytes([b[0], b[1]]);
        (if self.s.swapped { v.swap_bytes() } else { v }) as u32
    }

    /// Reads the rest of one block whose first 12 bytes are `hdr`. Ok(Err(why)) when the block
    /// is torn or implausible.
    fn block<R: Read>(&mut self, hdr: &[u8; 12], r: &mut R) -> io::Result<Result<(), String>> {
        let mut ty = self.rd(&hdr[0..4]);
        if ty == SHB_TYPE {
            let bom = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
            if bom == BYTE_ORDER_MAGIC {
                self.s.swapped = false;
            } else if bom.swap_bytes() == BYTE_ORDER_MAGIC {
                self.s.swapped = true;
            } else {
                return Ok(Err(format!(
                    "section header with byte-order magic {bom:#010x}"
                )));
            }
            ty = SHB_TYPE;
        }
        let total = self.rd(&hdr[4..8]);
        if !(12..=MAX_BLOCK_LEN).contains(&total) || !total.is_multiple_of(4) {
            return Ok(Err(format!("implausible block length {total}")));
        }
        if ty != SHB_TYPE && !self.section {
            return Ok(Err("block before the section header".into()));
        }
        // Everything after the first 12 bytes: body rest and the trailing length.
        let rest_len = total as usize - 12;
        let keep = match ty {
            SHB_TYPE | IDB_TYPE | EPB_TYPE | PB_TYPE => rest_len.min(64 << 10),
            _ => 0,
        };
        let mut rest = vec![0u8; keep];
        let got = read_full(r, &mut rest)?;
        self.s.total_len += got as u64;
        if got < keep {
            return Ok(Err(format!("torn block ({} of {total} bytes)", 12 + got)));
        }
        let skipped = io::copy(&mut r.take((rest_len - keep) as u64), &mut io::sink())?;
        self.s.total_len += skipped;
        if skipped < (rest_len - keep) as u64 {
            return Ok(Err(format!(
                "torn block ({} of {total} bytes)",
                12 + keep as u64 + skipped
            )));
        }
        if keep == rest_len && rest_len >= 4 {
            let trailer = self.rd(&rest[rest_len - 4..]);
            if trailer != total {
                return Ok(Err(format!(
                    "block length {total} and trailing length {trailer} differ"
                )));
            }
        }
        let mut body = hdr[8..12].to_vec();
        body.extend_from_slice(&rest[..keep.saturating_sub(4).min(rest.len())]);
        Ok(self.interpret(ty, &body))
    }

    /// Takes what we report from a complete block. `body` starts after the length field (it
    /// may be cut short for huge blocks; only the fixed parts are read from it).
    fn interpret(&mut self, ty: u32, body: &[u8]) -> Result<(), String> {
        match ty {
            SHB_TYPE => {
                self.section = true;
                self.tsresol.clear();
            }
            IDB_TYPE if body.len() >= 8 => {
                let linktype = self.rd16(&body[0..2]);
                let snaplen = self.rd(&body[4..8]);
                let res = self.tsresol_of(&body[8..]);
                if self.x.interfaces == 0 {
                    self.s.linktype = linktype;
                    self.s.snaplen = snaplen;
                    self.s.nano = res == 9;
                }
                self.x.interfaces += 1;
                self.tsresol.push(res);
            }
            EPB_TYPE | PB_TYPE if body.len() >= 20 => {
                let if_id = if ty == PB_TYPE {
                    self.rd16(&body[0..2])
                } else {
                    self.rd(&body[0..4])
                };
                let Some(&res) = self.tsresol.get(if_id as usize) else {
                    return Err(format!("packet on undefined interface {if_id}"));
                };
                let caplen = self.rd(&body[12..16]) as u64;
                if caplen + 20 > MAX_BLOCK_LEN as u64 {
                    return Err(format!("implausible captured length {caplen}"));
                }
                let ts = (self.rd(&body[4..8]) as u64) << 32 | self.rd(&body[8..12]) as u64;
                self.note_packet(ts, res);
            }
            SPB_TYPE => {
                if self.tsresol.is_empty() {
                    return Err("simple packet without an interface".into());
                }
                self.s.packets += 1;
            }
            EPB_TYPE | PB_TYPE | IDB_TYPE => return Err("block too short".into()),
            ISB_TYPE => self.x.statistics_blocks += 1,
            DSB_TYPE => self.x.secrets_blocks += 1,
            _ => {}
        }
        Ok(())
    }

    /// The if_tsresol exponent in an IDB's options (default 6); base-2 resolutions are
    /// reported as 6 (they are never written by us).
    fn tsresol_of(&self, mut opts: &[u8]) -> u32 {
        while opts.len() >= 4 {
            let rd16 = |b: [u8; 2]| {
                let v = u16::from_ne_bytes(b);
                if self.s.swapped {
                    v.swap_bytes()
                } else {
                    v
                }
            };
            let code = rd16([opts[0], opts[1]]);
            let len = rd16([opts[2], opts[3]]) as usize;
            if code == opt::END {
                break;
            }
            let v = &opts[4..];
            if code == opt::IF_TSRESOL && len == 1 && !v.is_empty() {
                return if v[0] & 0x80 == 0 && v[0] <= 9 {
                    v[0] as u32
                } else {
                    6
                };
            }
            let step = 4 + len + pad4(len);
            if step > opts.len() {
                break;
            }
            opts = &opts[step..];
        }
        6
    }

    fn note_packet(&mut self, ts: u64, res: u32) {
        let unit = 10u64.pow(res);
        let (sec, sub) = (ts / unit, ts % unit);
        let want = if self.s.nano { 9 } else { 6 };
        let frac = if res >= want {
            sub / 10u64.pow(res - want)
        } else {
            sub * 10u64.pow(want - res)
        };
        let t = (sec as u32, frac as u32);
        self.s.packets += 1;
        self.s.first_ts.get_or_insert(t);
        self.s.last_ts = Some(t);
    }
}

/// Is there a complete block (a known type, a plausible length, the same length at both ends)
/// anywhere after `from` in `f`? Then what the walker took for a torn last block is damage in
/// the middle: a genuinely torn tail is one partly written block running to the end of the
/// file, with nothing complete after its start. Reads at most one largest block's worth.
pub fn complete_block_after(f: &std::fs::File, from: u64, swapped: bool) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    let want = len.saturating_sub(from).min(MAX_BLOCK_LEN as u64 + 4) as usize;
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match f.read_at(&mut buf[got..], from + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    let rd = |o: usize| {
        let v = u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        if swapped {
            v.swap_bytes()
        } else {
            v
        }
    };
    const KNOWN: [u32; 7] = [
        SHB_TYPE, IDB_TYPE, PB_TYPE, SPB_TYPE, ISB_TYPE, EPB_TYPE, DSB_TYPE,
    ];
    // Blocks start 4-aligned in the file; `from` is itself a block start (4-aligned).
    let mut o = 4;
    while o + 12 <= buf.len() {
        let l = rd(o + 4) as usize;
        if KNOWN.contains(&rd(o))
            && l >= 12
            && l.is_multiple_of(4)
            && o + l <= buf.len()
            && rd(o + l - 4) as usize == l
        {
            return Ok(true);
        }
        o += 4;
    }
    Ok(false)
}

/// Scans a file on disk as pcapng or classic pcap, by its first bytes (the dispatch `sidecap
/// repair` and the uploader use).
pub fn scan_any_file(path: &std::path::Path) -> Result<Scan, ScanError> {
    scan_any(&std::fs::File::open(path)?)
}

/// [`scan_any_file`] for a file just opened (a pcapng file is read from its current offset, 0).
pub fn scan_any(f: &std::fs::File) -> Result<Scan, ScanError> {
    use std::io::{BufRead, BufReader};
    let mut r = BufReader::with_capacity(1 << 20, f);
    if is_pcapng(r.fill_buf()?) {
        scan(r)
    } else {
        crate::pcapfile::scan_at(f)
    }
}

fn finish_len<R: Read>(mut r: R, mut w: Walk) -> Result<(Scan, Extra), ScanError> {
    w.s.total_len += io::copy(&mut r, &mut io::sink())?;
    Ok((w.s, w.x))
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u32) -> (Vec<u8>, Vec<usize>) {
        let mut v = shb(Options::default().str(opt::SHB_USERAPPL, "test"));
        v.extend(idb(
            1,
            65535,
            Options::default()
                .str(opt::IF_NAME, "lo")
                .bytes(opt::IF_TSRESOL, &[9]),
        ));
        let mut ends = vec![v.len()];
        for i in 0..n {
            if i == 1 {
                v.extend(dsb_tls_keylog(b"CLIENT_RANDOM aa bb\n"));
                ends.push(v.len());
            }
            push_epb(
                &mut v,
                0,
                1_700_000_000_000_000_000 + i as u64,
                60,
                &vec![i as u8; 10 + i as usize],
            );
            ends.push(v.len());
        }
        v.extend(isb(0, 1, Options::default().u64(opt::ISB_IFRECV, 7)));
        ends.push(v.len());
        (v, ends)
    }

    #[test]
    fn walks_every_block() {
        let (v, _) = sample(5);
        let (s, x) = scan_extra(&v[..]).unwrap();
        assert!(s.is_clean(), "{s:?}");
        assert_eq!(s.packets, 5);
        assert_eq!((s.linktype, s.snaplen, s.nano), (1, 65535, true));
        assert_eq!(s.first_ts, Some((1_700_000_000, 0)));
        assert_eq!(s.last_ts, Some((1_700_000_000, 4)));
        assert_eq!(x.interfaces, 1);
        assert_eq!(x.secrets_blocks, 1);
        assert_eq!(x.statistics_blocks, 1);
    }

    #[test]
    fn every_truncation_point_keeps_the_complete_blocks() {
        let (full, ends) = sample(4);
        for cut in ends[0]..full.len() {
            let s = scan(&full[..cut]).unwrap();
            let keep = ends.iter().copied().filter(|&e| e <= cut).max().unwrap();
            assert_eq!(s.valid_len, keep as u64, "cut at {cut}");
            assert_eq!(s.total_len, cut as u64);
            assert_eq!(s.is_clean(), keep == cut);
        }
    }

    #[test]
    fn packet_blocks_are_padded_and_framed() {
        let mut v = Vec::new();
        for n in 0..8 {
            v.clear();
            let len = push_epb(&mut v, 0, 0, 0, &vec![0xab; n]);
            assert_eq!(len, v.len());
            assert_eq!(len % 4, 0);
            assert_eq!(v[len - 4..], (len as u32).to_ne_bytes());
        }
    }

    #[test]
    fn implausible_and_foreign_input_stops_the_walk() {
        assert!(scan(&b"\xd4\xc3\xb2\xa1 not pcapng"[..]).is_err());
        let (mut v, ends) = sample(2);
        // Break the trailing length of the first packet.
        let e = ends[1];
        v[e - 1] ^= 0x40;
        let s = scan(&v[..]).unwrap();
        assert_eq!(s.valid_len, ends[0] as u64);
        assert!(s.stopped.unwrap().contains("differ"));
        let (mut v, ends) = sample(1);
        v[ends[0] + 4..ends[0] + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(scan(&v[..])
            .unwrap()
            .stopped
            .unwrap()
            .contains("implausible"));
    }

    #[test]
    fn a_packet_on_an_undefined_interface_stops_the_walk() {
        let (mut v, ends) = sample(1);
        v.truncate(ends[0]);
        push_epb(&mut v, 3, 0, 1, &[1]);
        let s = scan(&v[..]).unwrap();
        assert_eq!(s.packets, 0);
        assert!(s.stopped.unwrap().contains("undefined interface"));
    }

    #[test]
    fn reads_swapped_byte_order() {
        let mut v = Vec::new();
        let be = |x: u32| x.to_be_bytes();
        // SHB, big-endian, no options.
        v.extend(be(SHB_TYPE));
        v.extend(be(28));
        v.extend(be(BYTE_ORDER_MAGIC));
        v.extend(1u16.to_be_bytes());
        v.extend(0u16.to_be_bytes());
        v.extend((-1i64).to_be_bytes());
        v.extend(be(28));
        // IDB: linktype 1, snaplen 100, if_tsresol 9.
        v.extend(be(IDB_TYPE));
        v.extend(be(32));
        v.extend(1u16.to_be_bytes());
        v.extend(0u16.to_be_bytes());
        v.extend(be(100));
        v.extend(9u16.to_be_bytes());
        v.extend(1u16.to_be_bytes());
        v.extend([9, 0, 0, 0, 0, 0, 0, 0]);
        v.extend(be(32));
        // EPB with 1 byte.
        v.extend(be(EPB_TYPE));
        v.extend(be(36));
        v.extend(be(0));
        v.extend(be(0));
        v.extend(be(2_000_000_005));
        v.extend(be(1));
        v.extend(be(1));
        v.extend([7, 0, 0, 0]);
        v.extend(be(36));
        let s = scan(&v[..]).unwrap();
        assert!(s.swapped && s.is_clean(), "{s:?}");
        assert_eq!((s.packets, s.linktype, s.snaplen), (1, 1, 100));
        assert_eq!(s.first_ts, Some((2, 5)));
    }
}
