//! Counts the packets in the capture files of a directory with the library's own walkers
//! (`sidecap::pcapfile`, `sidecap::pcapng`: the code `sidecap repair` and the uploader trust),
//! checking that every record is complete: the "captured" figure of the benchmark comes from
//! the files, not from what a tool says about itself.

use std::path::Path;

use sidecap::pcapfile::ScanError;

#[derive(Debug, Default, Clone)]
pub struct FileCount {
    pub packets: u64,
    pub bytes: u64,
    /// None when the file is a complete, well-formed pcap or pcapng file.
    pub problem: Option<String>,
}

/// Returns None when the file is not a capture file (a marker, a lock).
pub fn count(path: &Path) -> std::io::Result<Option<FileCount>> {
    match sidecap::pcapng::scan_any_file(path) {
        Ok(s) => Ok(Some(FileCount {
            packets: s.all_packets(),
            bytes: s.total_len,
            problem: (!s.is_clean()).then(|| {
                s.stopped
                    .clone()
                    .unwrap_or_else(|| "damaged or torn".into())
            }),
        })),
        Err(ScanError::NotPcap(_)) => Ok(None),
        Err(ScanError::Io(e)) => Err(e),
    }
}

/// Sums the capture files of a directory. Files that are not pcap (markers, locks) are skipped.
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
