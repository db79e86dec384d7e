//! Fuzzes the pcap record walker that `sidecap repair` and the uploader run over files left by
//! a killed capture (untrusted input). Two checks per input:
//!
//! 1. The input as a file: the walker never panics, its accounting holds, and what repair keeps
//!    (the clean prefix, and the file without its damaged spans) reads to the end with a strict
//!    sequential reader, as libpcap reads.
//! 2. The input as a recipe: build a valid file from records it describes (payload bytes >= 0x80
//!    and timestamps close together, as a capture writes them), overwrite one span after the
//!    first record with bytes it gives, and check that no record outside that span is dropped
//!    unless the span itself forges a plausible record header (then a correct reader cannot tell
//!    either, and only the records before the span are owed).
#![no_main]

use libfuzzer_sys::fuzz_target;
// The walker needs only std and thiserror, so its source is compiled in directly rather than
// through the sidecap crate: the sanitizer build then covers libFuzzer and this one file, not
// sidecap's whole dependency tree (tokio, reqwest, rustls, ring, …), which took minutes of
// every CI run.
#[path = "../../src/pcapfile.rs"]
#[allow(dead_code)]
mod pcapfile;
use pcapfile::{file_header, header_plausible, push_record, scan, Scan};

/// Reads `data` the way libpcap does: header, then records until the end. Returns the records,
/// or None when a record runs past the end.
fn strict_records(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut off = 24;
    while off < data.len() {
        let caplen = u32::from_ne_bytes(data.get(off + 8..off + 12)?.try_into().ok()?) as usize;
        let end = off.checked_add(16 + caplen)?;
        out.push(data.get(off..end)?.to_vec());
        off = end;
    }
    Some(out)
}

fn kept(data: &[u8], s: &Scan) -> Vec<u8> {
    s.kept_spans()
        .iter()
        .flat_map(|&(a, b)| data[a as usize..b as usize].iter().copied())
        .collect()
}

fn check_file(data: &[u8]) {
    let Ok(s) = scan(data) else { return };
    assert!(s.valid_len <= s.total_len);
    assert_eq!(s.total_len, data.len() as u64);
    if s.swapped {
        return; // the strict reader below reads native order only
    }
    let prefix = strict_records(&data[..s.valid_len as usize]).expect("prefix reads to the end");
    assert_eq!(prefix.len() as u64, s.packets);
    let all = strict_records(&kept(data, &s)).expect("repaired file reads to the end");
    assert_eq!(all.len() as u64, s.all_packets());
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
}

fn check_recipe(data: &[u8]) {
    let mut inp = Input(data);
    let n = 2 + inp.byte() as usize % 40;
    let mut file = file_header(1, 65535, false).to_vec();
    let mut spans = Vec::new();
    for i in 0..n {
        let caplen = inp.u16() as u32 % 1600;
        let extra = inp.byte() as u32;
        let sec = 1_790_000_000 + inp.byte() as u32;
        let frac = inp.u16() as u32 * 15;
        let start = file.len();
        let body: Vec<u8> = (0..caplen).map(|k| 0x80 | (k as u8 ^ i as u8)).collect();
        push_record(&mut file, sec, frac, caplen, caplen + 1 + extra, &body);
        spans.push((start, file.len()));
    }
    let first_end = spans[0].1;
    if file.len() <= first_end {
        return;
    }
    let a = first_end + inp.u16() as usize % (file.len() - first_end);
    let b = (a + 1 + inp.u16() as usize % 2048).min(file.len());
    let mut d = file.clone();
    let fill = inp.byte();
    for x in &mut d[a..b] {
        *x = match fill {
            0 => 0,
            1 => 0xff,
            // Past the end of the input the span keeps its bytes: the check stays conservative.
            _ if inp.0.is_empty() => *x,
            _ => inp.byte(),
        };
    }
    let s = scan(&d).expect("a pcap header");
    let got = strict_records(&kept(&d, &s)).expect("repaired file reads to the end");
    let hit = |x: usize, y: usize| x < b && a < y;
    let before: Vec<Vec<u8>> = spans
        .iter()
        .filter(|&&(x, y)| y <= a && !hit(x, y))
        .map(|&(x, y)| file[x..y].to_vec())
        .collect();
    assert_eq!(&got[..before.len()], &before[..], "a record before the span was lost");
    let forges = (a.saturating_sub(15).max(24)..b).any(|o| {
        o + 16 <= d.len() && header_plausible(d[o..o + 16].try_into().unwrap(), 65535, false)
    });
    if forges {
        return;
    }
    let mut it = got.iter();
    for &(x, y) in spans.iter().filter(|&&(x, y)| !hit(x, y)) {
        let want = &file[x..y];
        assert!(
            it.any(|g| g == want),
            "the record at {x}..{y}, outside the corrupted span {a}..{b}, was dropped"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check_file(data);
    check_recipe(data);
});
