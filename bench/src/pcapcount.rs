//! Counts the records of classic pcap files (either byte order, micro or nano), checking that
//! every record is complete: the "captured" figure of the benchmark comes from the files, not
//! from what a tool says about itself.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

#[derive(Debug, Default, Clone)]
pub struct FileCount {
    pub packets: u64,
    pub bytes: u64,
    /// None when the file is a complete, well-formed pcap file.
    pub problem: Option<String>,
}

/// Returns None when the file does not start with a pcap magic number (not a capture file).
pub fn count(path: &Path) -> std::io::Result<Option<FileCount>> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut hdr = [0u8; 24];
    if r.read_exact(&mut hdr).is_err() {
        return Ok(None);
    }
    if hdr[..4] == [0x0a, 0x0d, 0x0d, 0x0a] {
        return count_pcapng(r, hdr, len).map(Some);
    }
    let magic = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => return Ok(None),
    };
    let rd = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let snaplen = rd(&hdr[16..20]).max(65535);
    let mut out = FileCount {
        bytes: len,
        ..Default::default()
    };
    let mut pos: u64 = 24;
    let mut rec = [0u8; 16];
    while pos < len {
        if len - pos < 16 {
            out.problem = Some(format!("torn record header at byte {pos}"));
            break;
        }
        r.read_exact(&mut rec)?;
        let (incl, orig) = (rd(&rec[8..12]), rd(&rec[12..16]));
        if incl > snaplen || incl > orig.max(incl) {
            out.problem = Some(format!("implausible record length {incl} at byte {pos}"));
            break;
        }
        if len - pos - 16 < incl as u64 {
            out.problem = Some(format!("torn record at byte {pos}"));
            break;
        }
        r.seek_relative(incl as i64)?;
        pos += 16 + incl as u64;
        out.packets += 1;
    }
    Ok(Some(out))
}

/// Counts the Enhanced Packet Blocks of a pcapng file (`--format pcapng`), checking that every
/// block is complete and framed by equal lengths. `hdr` holds the file's first 24 bytes.
fn count_pcapng(mut r: BufReader<File>, hdr: [u8; 24], len: u64) -> std::io::Result<FileCount> {
    let le = hdr[8..12] == [0x4d, 0x3c, 0x2b, 0x1a];
    let rd = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = FileCount {
        bytes: len,
        ..Default::default()
    };
    let mut pos: u64 = 0;
    let mut block = hdr.to_vec();
    loop {
        if pos == len {
            break;
        }
        if len - pos < 12 {
            out.problem = Some(format!("torn block header at byte {pos}"));
            break;
        }
        if block.len() < 8 {
            let have = block.len();
            block.resize(8, 0);
            r.read_exact(&mut block[have..])?;
        }
        let (ty, total) = (rd(&block[0..4]), rd(&block[4..8]) as u64);
        // The first block (the section header, at least 28 bytes) holds the 24 read ahead.
        if total < block.len() as u64 || total < 12 || total % 4 != 0 || total > len - pos {
            out.problem = Some(format!("bad or torn block of {total} bytes at byte {pos}"));
            break;
        }
        let have = block.len();
        block.resize(total as usize, 0);
        r.read_exact(&mut block[have..])?;
        if rd(&block[total as usize - 4..]) as u64 != total {
            out.problem = Some(format!("block lengths differ at byte {pos}"));
            break;
        }
        if ty == 6 || ty == 3 {
            out.packets += 1;
        }
        pos += total;
        block.clear();
    }
    Ok(out)
}

/// Sums the pcap files of a directory. Files that are not pcap (markers, locks) are skipped.
pub fn count_dir(dir: &Path) -> std::io::Result<(FileCount, Vec<(String, FileCount)>)> {
    let mut total = FileCount::default();
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Some(c) = count(&e.path())? {
            total.packets += c.packets;
            total.bytes += c.bytes;
            if let Some(p) = &c.problem {
                total.problem = Some(format!("{}: {p}", e.file_name().to_string_lossy()));
            }
            files.push((e.file_name().to_string_lossy().into_owned(), c));
        }
    }
    Ok((total, files))
}
