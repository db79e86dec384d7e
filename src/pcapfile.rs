//! The classic pcap file format: what we write (file header, record headers) and a walker that
//! reads records back, stopping at the first torn or implausible one. The walker treats its input
//! as untrusted: every length is bounded before use.

use std::io::{self, Read};

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

/// What a walk over a pcap file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub linktype: u32,
    pub snaplen: u32,
    pub nano: bool,
    /// Byte order differs from ours.
    pub swapped: bool,
    /// Complete, plausible records.
    pub packets: u64,
    /// Bytes up to the end of the last complete record (what a repair keeps).
    pub valid_len: u64,
    /// Total bytes read.
    pub total_len: u64,
    /// First and last record timestamps (seconds, fraction as stored).
    pub first_ts: Option<(u32, u32)>,
    pub last_ts: Option<(u32, u32)>,
    /// Why the walk stopped before the end, if it did.
    pub stopped: Option<String>,
}

impl Scan {
    pub fn is_clean(&self) -> bool {
        self.stopped.is_none() && self.valid_len == self.total_len
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("not a pcap file: {0}")]
    NotPcap(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Walks every record of a pcap stream. Never fails on a torn or corrupt tail: it reports where
/// the valid part ends in `valid_len` and why it stopped in `stopped`.
pub fn scan<R: Read>(mut r: R) -> Result<Scan, ScanError> {
    let mut hdr = [0u8; FILE_HEADER_LEN];
    let got = read_full(&mut r, &mut hdr)?;
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
    let linktype = rd(&hdr[20..24]) & 0x0fff_ffff;
    let mut s = Scan {
        linktype,
        snaplen,
        nano,
        swapped,
        packets: 0,
        valid_len: FILE_HEADER_LEN as u64,
        total_len: FILE_HEADER_LEN as u64,
        first_ts: None,
        last_ts: None,
        stopped: None,
    };
    let frac_limit = if nano { 1_000_000_000 } else { 1_000_000 };
    let mut body = vec![0u8; 64 * 1024];
    loop {
        let mut rh = [0u8; RECORD_HEADER_LEN];
        let got = read_full(&mut r, &mut rh)?;
        s.total_len += got as u64;
        if got == 0 {
            return Ok(s);
        }
        if got < RECORD_HEADER_LEN {
            s.stopped = Some(format!("torn record header ({got} of 16 bytes)"));
            return finish_len(r, s);
        }
        let (sec, frac, caplen, len) = (
            rd(&rh[0..4]),
            rd(&rh[4..8]),
            rd(&rh[8..12]),
            rd(&rh[12..16]),
        );
        if caplen > MAX_RECORD_LEN || frac >= frac_limit || (len != 0 && caplen > len.max(snaplen))
        {
            s.stopped = Some(format!(
                "implausible record header (caplen {caplen}, len {len}, fraction {frac})"
            ));
            return finish_len(r, s);
        }
        let mut left = caplen as usize;
        while left > 0 {
            let n = left.min(body.len());
            let got = read_full(&mut r, &mut body[..n])?;
            s.total_len += got as u64;
            if got < n {
                s.stopped = Some(format!(
                    "torn record body ({} of {caplen} bytes)",
                    caplen as usize - left + got
                ));
                return finish_len(r, s);
            }
            left -= n;
        }
        s.packets += 1;
        s.valid_len = s.total_len;
        if s.first_ts.is_none() {
            s.first_ts = Some((sec, frac));
        }
        s.last_ts = Some((sec, frac));
    }
}

/// Counts the rest of the stream so `total_len` is the real size.
fn finish_len<R: Read>(mut r: R, mut s: Scan) -> Result<Scan, ScanError> {
    s.total_len += io::copy(&mut r, &mut io::sink())?;
    Ok(s)
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

/// Scans a file on disk.
pub fn scan_file(path: &std::path::Path) -> Result<Scan, ScanError> {
    let f = std::fs::File::open(path)?;
    scan(io::BufReader::with_capacity(1 << 20, f))
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
            assert_eq!(s.is_clean(), (cut - FILE_HEADER_LEN) % 26 == 0);
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
}
