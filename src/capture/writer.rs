//! The writer thread: takes filled buffers of complete pcap records from the capture thread over
//! a bounded channel and writes each buffer (its aligned middle with O_DIRECT straight from the
//! buffer, see [`write_direct`] and `--direct-io`), so disk stalls never block packet reads for
//! longer than the queue absorbs. It owns the files: creation with O_EXCL,
//! `.part` -> `.pcap` on completion, fsync as `--fsync` says (the flush-tick fdatasync of
//! `interval` on a small `fsync` thread, so waiting for the disk does not hold up writes), the
//! ring bound, and disk-full handling.
//!
//! Disk full (ENOSPC, EDQUOT): the buffer that did not fit is dropped and counted, the file is
//! truncated back to its last complete record so it stays valid, one warning is logged per
//! episode, and writing resumes by itself when space returns. Data goes in with pwrite(2) at the
//! end of the last complete record, so the truncation and the next write always meet. Any other write error is fatal:
//! the current file is finalized (it holds only complete records) and the capture stops.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use super::files::{self, CaptureFile, Layout, Ring, FILE_MODE};
use super::format::Framing;
use crate::cli::{DirectIo, Fsync};
use crate::metrics::CaptureMetrics;

/// Messages from the capture thread, in stream order.
pub enum Msg {
    /// Complete records to append to the current file: `buf[head..]`. `buf[..head]` is room
    /// for the writer (see `Batcher::start_buffer`).
    Data {
        buf: Vec<u8>,
        packets: u64,
        head: usize,
    },
    /// Finish the current file and start the next.
    Rotate,
    /// Flush tick: with `--fsync interval`, make what was written durable (fdatasync).
    Sync,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create {path}: {source}")]
    Create { path: String, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("cannot finish {path}: {source}")]
    Finish { path: String, source: io::Error },
}

impl WriteError {
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            WriteError::Create { source, .. }
            | WriteError::Write { source, .. }
            | WriteError::Finish { source, .. } => source.kind(),
        }
    }
}

/// What the writer reports when it ends.
#[derive(Debug, Default)]
pub struct WriterSummary {
    pub files: Vec<String>,
    pub packets_written: u64,
    pub bytes_written: u64,
    pub disk_dropped_packets: u64,
    pub files_deleted: u64,
    /// Set when the writer stopped on a fatal error (after finalizing its file).
    pub error: Option<String>,
}

struct OpenFile {
    /// Shared with the `fsync` thread (no second fd: the fd count stays flat).
    file: Arc<File>,
    path: PathBuf,
    /// Bytes known to be in the file, all complete records.
    len: u64,
    dirty: bool,
}

/// O_DIRECT needs the memory, the file offset and the length aligned to the device's logical
/// block size: 4096 covers every common one.
pub const ALIGN: usize = 4096;

/// How many buffers may wait behind a direct write before the next one goes through the page
/// cache instead (`--direct-io auto`): a direct write waits for the disk, the page cache does
/// not, so a disk that falls behind for a moment costs a few buffered writes, not packets.
const DIRECT_BACKLOG: usize = 4;

/// Sets or clears O_DIRECT on the file (the tail and every other write stay buffered).
fn set_direct(file: &File, on: bool) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    flags.set(OFlag::O_DIRECT, on);
    fcntl(fd, FcntlArg::F_SETFL(flags)).map(drop)
}

/// Where records bound for file offset `file_len` start in `buf` (whose capacity must have
/// 8 KiB to spare) so that they sit at the same offset from a 4 KiB boundary in memory as in
/// the file, which lets [`write_direct`] take them straight from `buf`.
pub fn aligned_head(buf: &[u8], file_len: u64) -> usize {
    let lead = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
    lead + (file_len % ALIGN as u64) as usize
}

/// Appends `data` at `len` (the end of the last complete record) when `data` sits in memory
/// at the same offset from a 4 KiB boundary as `len` does in the file, which the capture
/// thread arranges (see `Batcher::start_buffer`): the rest of the file's last, partly written
/// block and the unaligned tail (each under 4 KiB) go through the page cache, everything
/// between with O_DIRECT straight from `data`, no copy and no page cache. The direct part never
/// touches a block the page cache holds, so it does not wait for one to be written back first,
/// and after every write the file ends at a record boundary exactly as with buffered writes
/// (what was written survives a SIGKILL). Ok(false) = not in step (written as nothing; the
/// caller writes buffered). Err(None) = O_DIRECT refused (EINVAL): the caller cuts the file
/// back to `len` and writes buffered. On another error the caller cuts the file back to `len`.
fn write_direct(file: &File, len: u64, data: &[u8]) -> Result<bool, Option<io::Error>> {
    let first = (ALIGN - (len % ALIGN as u64) as usize) % ALIGN;
    if !(data.as_ptr() as usize + first).is_multiple_of(ALIGN) || data.len() < first + ALIGN {
        return Ok(false);
    }
    let mid = (data.len() - first) / ALIGN * ALIGN;
    let (head, rest) = data.split_at(first);
    let (mid_part, tail) = rest.split_at(mid);
    if !head.is_empty() {
        file.write_all_at(head, len).map_err(Some)?;
    }
    set_direct(file, true).map_err(|_| None)?;
    let r = file.write_all_at(mid_part, len + first as u64);
    let _ = set_direct(file, false);
    match r {
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => return Err(None),
        r => r.map_err(Some)?,
    }
    if !tail.is_empty() {
        file.write_all_at(tail, len + (first + mid) as u64)
            .map_err(Some)?;
    }
    Ok(true)
}

pub struct Writer {
    layout: Layout,
    /// File header and trailer of the output format.
    framing: Framing,
    ring: Ring,
    fsync: Fsync,
    metrics: Arc<CaptureMetrics>,
    next_seq: u64,
    current: Option<OpenFile>,
    summary: WriterSummary,
    /// Some while the disk is full, or was within the last [`EPISODE_QUIET`].
    full_episode: Option<FullEpisode>,
    /// Flush ticks hand the current file to the `fsync` thread, so the
    /// writer keeps writing into the page cache while the disk catches up; None until `run`.
    sync_tx: Option<Sender<(Arc<File>, PathBuf)>>,
    /// `--direct-io`; `Never` once the file system refused O_DIRECT.
    direct: DirectIo,
    /// Buffers waiting in the queue behind the one being written.
    backlog: usize,
}

/// A disk-full episode ends only after writing has gone on this long without a drop. A nearly
/// full disk flaps (a small buffer fits, the next one does not); without a quiet period every
/// flap would log a new warning.
const EPISODE_QUIET: Duration = Duration::from_secs(10);

struct FullEpisode {
    dropped: u64,
    last_drop: Instant,
    /// A write succeeded after the last drop.
    written_since: bool,
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT)
}

impl Writer {
    /// Prepares the writer and creates the first file (so that startup errors such as a
    /// read-only directory surface before the capture reports ready). Files already in the
    /// directory with our prefix (an earlier run) join the ring, oldest first, and numbering
    /// continues after them.
    pub fn create(
        layout: Layout,
        framing: Framing,
        ring: Ring,
        (fsync, direct): (Fsync, DirectIo),
        metrics: Arc<CaptureMetrics>,
    ) -> Result<Writer, WriteError> {
        let existing: Vec<CaptureFile> = layout.list().map_err(|source| WriteError::Create {
            path: layout.dir.display().to_string(),
            source,
        })?;
        let mut w = Writer {
            next_seq: existing.iter().map(|f| f.seq + 1).max().unwrap_or(1),
            layout,
            framing,
            ring,
            fsync,
            metrics,
            current: None,
            summary: WriterSummary::default(),
            full_episode: None,
            sync_tx: None,
            direct,
            backlog: 0,
        };
        w.layout.remove_stale_temporaries();
        if !existing.is_empty() {
            tracing::info!(
                files = existing.len(),
                next_seq = w.next_seq,
                "Found files of an earlier run; continuing in new files."
            );
        }
        for f in existing {
            w.ring.push(f.path, f.size);
        }
        w.open_next()?;
        Ok(w)
    }

    /// The path of the file being written.
    pub fn current_path(&self) -> Option<&PathBuf> {
        self.current.as_ref().map(|c| &c.path)
    }

    /// Runs the writer loop until the capture thread drops its sender, then finalizes.
    pub fn run(mut self, rx: Receiver<Msg>, free: Sender<Vec<u8>>) -> WriterSummary {
        // fdatasync waits for the disk; on the writer thread it stalled writes (and, once the
        // queue was full, packet reads) whenever the disk was slower than the capture for a
        // moment. One sync in flight at a time: a tick that finds one still running leaves the
        // file dirty for the next tick.
        let (sync_tx, sync_rx) = crossbeam_channel::bounded::<(Arc<File>, PathBuf)>(1);
        let syncer = (self.fsync == Fsync::Interval)
            .then(|| {
                std::thread::Builder::new()
            .name("fsync".into())
            .spawn(move || {
                for (file, path) in sync_rx.iter() {
                    if let Err(e) = file.sync_data() {
                        tracing::warn!(file = %path.display(), error = %e, "fdatasync failed.");
                    }
                }
            })
            })
            .and_then(Result::ok);
        if syncer.is_some() {
            self.sync_tx = Some(sync_tx);
        }
        let result = (|| -> Result<(), WriteError> {
            for msg in rx.iter() {
                match msg {
                    Msg::Data {
                        mut buf,
                        packets,
                        head,
                    } => {
                        self.metrics
                            .queue_bytes
                            .fetch_sub((buf.len() - head) as u64, Relaxed);
                        self.backlog = rx.len();
                        self.write_framed(&buf, head, packets)?;
                        buf.clear();
                        let _ = free.try_send(buf);
                    }
                    Msg::Rotate => {
                        self.finish_current()?;
                        if let Err(e) = self.open_next() {
                            if !is_disk_full_err(&e) {
                                return Err(e);
                            }
                            // No room for even a header: retried on the next buffer.
                            self.dropped(0, "cannot create a new file");
                        }
                    }
                    Msg::Sync => self.sync(),
                }
            }
            Ok(())
        })();
        self.sync_tx = None; // ends the fsync thread after its last sync
        if let Some(h) = syncer {
            let _ = h.join();
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "Stopping capture on a write error; finalizing what was written.");
            self.summary.error = Some(e.to_string());
        }
        if let Err(e) = self.finish_current() {
            tracing::error!(error = %e, "Could not finalize the last file; it stays as .pcap.part with complete records.");
            self.summary.error.get_or_insert(e.to_string());
        }
        self.end_episode();
        self.summary
    }

    /// Appends the records `buf[head..]`; `buf[..head]` is room the direct path may use.
    fn write(&mut self, buf: &[u8], head: usize, packets: u64) -> Result<(), WriteError> {
        if self.current.is_none() {
            // The previous open failed on a full disk; try again now.
            if let Err(e) = self.open_next() {
                if is_disk_full_err(&e) {
                    self.dropped(packets, "cannot create a new file");
                    return Ok(());
                }
                return Err(e);
            }
        }
        let n = (buf.len() - head) as u64;
        self.enforce_bound(0, n);
        if let Some(max) = self.ring.max_total {
            let cur = self.current.as_ref().map_or(0, |c| c.len);
            if self.ring.finished_bytes() + cur + n > max {
                // Only possible when the current file alone is near the bound (validation
                // keeps -C <= max/2, so only an enormous single buffer gets here).
                self.dropped(packets, "over --max-total-size");
                return Ok(());
            }
        }
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        // Positioned write at the end of the last complete record, never at the file offset: a
        // short write on a full disk moves the offset past what the truncation below keeps, and
        // writing there later left a zero-filled hole (bogus zero-length records stamped 1970).
        let data = &buf[head..];
        let direct = match self.direct {
            DirectIo::Never => false,
            DirectIo::Auto => self.backlog < DIRECT_BACKLOG,
            DirectIo::Always => true,
        };
        let written = match direct.then(|| write_direct(&cur.file, cur.len, data)) {
            Some(Ok(true)) => Ok(()),
            Some(Err(Some(e))) => Err(e),
            Some(Err(None)) => {
                // The file system does not do O_DIRECT (or not with this alignment).
                tracing::debug!(file = %cur.path.display(), "O_DIRECT refused; writing through the page cache.");
                self.direct = DirectIo::Never;
                cur.file
                    .set_len(cur.len)
                    .and_then(|_| cur.file.write_all_at(data, cur.len))
            }
            Some(Ok(false)) | None => cur.file.write_all_at(data, cur.len),
        };
        match written {
            Ok(()) => {
                cur.len += n;
                cur.dirty = true;
                self.summary.packets_written += packets;
                self.summary.bytes_written += n;
                self.metrics.packets_written.fetch_add(packets, Relaxed);
                self.metrics.bytes_written.fetch_add(n, Relaxed);
                self.metrics
                    .dir_bytes
                    .store(self.ring.on_disk_bytes() + cur.len, Relaxed);
                self.wrote_ok();
                Ok(())
            }
            Err(e) => {
                self.metrics.write_errors.fetch_add(1, Relaxed);
                // A short write leaves a torn record: cut back to the last complete one.
                let good = cur.len;
                let path = cur.path.display().to_string();
                if let Err(te) = cur.file.set_len(good) {
                    return Err(WriteError::Write { path, source: te });
                }
                if is_disk_full(&e) {
                    self.dropped(packets, "disk full");
                    Ok(())
                } else {
                    Err(WriteError::Write { path, source: e })
                }
            }
        }
    }

    /// [`Writer::write`], keeping the in-band blocks of a buffer it could not write (see
    /// [`Framing::dropped`]) and writing them before the next one.
    fn write_framed(&mut self, buf: &[u8], head: usize, packets: u64) -> Result<(), WriteError> {
        if let Some(kept) = self.framing.take_salvage() {
            let before = self.summary.bytes_written;
            self.write(&kept, 0, 0)?;
            if self.summary.bytes_written == before {
                // Still no room: packets after them would refer to what is missing.
                self.framing.dropped(&kept);
                self.framing.dropped(&buf[head..]);
                self.dropped(packets, "disk full");
                return Ok(());
            }
        }
        let before = self.summary.bytes_written;
        self.write(buf, head, packets)?;
        if self.summary.bytes_written == before && buf.len() > head {
            self.framing.dropped(&buf[head..]);
        }
        Ok(())
    }

    fn dropped(&mut self, packets: u64, why: &str) {
        self.summary.disk_dropped_packets += packets;
        self.metrics
            .disk_dropped_packets
            .fetch_add(packets, Relaxed);
        match self.full_episode.as_mut() {
            Some(ep) => {
                ep.dropped += packets;
                ep.last_drop = Instant::now();
                ep.written_since = false;
            }
            None => {
                tracing::warn!(reason = why, dir = %self.layout.dir.display(), "Cannot write captured packets; dropping them until space returns. Files written so far stay valid.");
                self.full_episode = Some(FullEpisode {
                    dropped: packets,
                    last_drop: Instant::now(),
                    written_since: false,
                });
            }
        }
    }

    fn wrote_ok(&mut self) {
        if let Some(ep) = self.full_episode.as_mut() {
            ep.written_since = true;
            if ep.last_drop.elapsed() >= EPISODE_QUIET {
                self.end_episode();
            }
        }
    }

    fn end_episode(&mut self) {
        if let Some(ep) = self.full_episode.take() {
            if ep.written_since {
                tracing::warn!(
                    dropped_packets = ep.dropped,
                    "Writing resumed after a disk-full episode."
                );
            } else {
                tracing::warn!(
                    dropped_packets = ep.dropped,
                    "Stopping during a disk-full episode."
                );
            }
        }
    }

    /// Deletes the oldest finished files until `open_files` more files and `incoming` more bytes
    /// (on top of the current file) fit the bounds.
    fn enforce_bound(&mut self, open_files: u64, incoming: u64) {
        let cur_files = self.current.is_some() as u64;
        let cur_len = self.current.as_ref().map_or(0, |c| c.len);
        for (path, size) in self.ring.evict(cur_files + open_files, cur_len + incoming) {
            match fs::remove_file(&path) {
                Ok(()) => {
                    self.summary.files_deleted += 1;
                    self.metrics.files_deleted.fetch_add(1, Relaxed);
                    self.metrics.bytes_deleted.fetch_add(size, Relaxed);
                    tracing::info!(file = %path.display(), bytes = size, "Deleted the oldest file to stay within the ring bound.");
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "Could not delete a file for the ring bound.")
                }
            }
        }
    }

    /// Creates the next file with its header already in it: the header goes into a hidden
    /// temporary name first and the file is then linked into place, so a SIGKILL at any moment
    /// never leaves a `.pcap.part` without a complete header, and link(2) fails rather than
    /// replace a file that exists.
    fn open_next(&mut self) -> Result<(), WriteError> {
        self.enforce_bound(1, self.framing.header_len());
        let name = self
            .layout
            .part_name(SystemTime::now(), self.next_seq, self.framing.format());
        let path = self.layout.dir.join(&name);
        let tmp = self.layout.dir.join(format!(".{name}.tmp"));
        let header = self.framing.header(&self.metrics);
        let create = || -> io::Result<File> {
            // A leftover from a killed run is ours to replace: we hold the directory lock.
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp)?;
            let linked = f
                .write_all(&header)
                .and_then(|_| fs::hard_link(&tmp, &path));
            let _ = fs::remove_file(&tmp);
            linked.map(|_| f)
        };
        let file = create().map_err(|source| WriteError::Create {
            path: path.display().to_string(),
            source,
        })?;
        self.next_seq += 1;
        tracing::debug!(file = %name, "Started a new file.");
        self.current = Some(OpenFile {
            file: Arc::new(file),
            path,
            len: header.len() as u64,
            dirty: true,
        });
        Ok(())
    }

    /// Appends the format's trailer (pcapng statistics). On any error the file is cut back to
    /// its last block and finished without it: it stays valid.
    fn write_trailer(&mut self) {
        if self.current.is_none() {
            return;
        }
        let trailer = self.framing.trailer(&self.metrics);
        if trailer.is_empty() {
            return;
        }
        self.enforce_bound(0, trailer.len() as u64);
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        // Positioned, like every data write: the file offset is not where the data ends.
        match cur.file.write_all_at(&trailer, cur.len) {
            Ok(()) => cur.len += trailer.len() as u64,
            Err(e) => {
                let _ = cur.file.set_len(cur.len);
                tracing::warn!(file = %cur.path.display(), error = %e, "Could not write the statistics block; the file ends without it.");
            }
        }
    }

    fn sync(&mut self) {
        if self.fsync != Fsync::Interval {
            return;
        }
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if !cur.dirty {
            return;
        }
        if let Some(tx) = &self.sync_tx {
            match tx.try_send((cur.file.clone(), cur.path.clone())) {
                Ok(()) => cur.dirty = false,
                // The previous sync is still running: this file stays dirty for the next tick.
                Err(crossbeam_channel::TrySendError::Full(_)) => {}
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    self.sync_tx = None;
                }
            }
            return;
        }
        if let Err(e) = cur.file.sync_data() {
            tracing::warn!(file = %cur.path.display(), error = %e, "fdatasync failed.");
        }
        cur.dirty = false;
    }

    /// Trailer, fsync (unless `--fsync none`), rename `.pcap.part` -> `.pcap` (`.pcapng`), fsync
    /// the directory (unless `none`). Without a node crash the rename alone is enough: readers
    /// see the page cache, and what was written survives the process.
    fn finish_current(&mut self) -> Result<(), WriteError> {
        self.framing.file_finished();
        self.write_trailer();
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let path_s = cur.path.display().to_string();
        let fin = |source| WriteError::Finish {
            path: path_s.clone(),
            source,
        };
        let durable = self.fsync != Fsync::None;
        if durable {
            cur.file.sync_all().map_err(fin)?;
        }
        drop(cur.file);
        let done = cur.path.with_extension(""); // strips ".part"
        fs::rename(&cur.path, &done).map_err(fin)?;
        if durable {
            files::sync_dir(&self.layout.dir).map_err(fin)?;
        }
        let name = done
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::info!(file = %name, bytes = cur.len, "Finished a file.");
        self.summary.files.push(name);
        self.metrics.files_finished.fetch_add(1, Relaxed);
        self.ring.push(done, cur.len);
        self.metrics
            .dir_bytes
            .store(self.ring.on_disk_bytes(), Relaxed);
        Ok(())
    }
}

fn is_disk_full_err(e: &WriteError) -> bool {
    match e {
        WriteError::Create { source, .. }
        | WriteError::Write { source, .. }
        | WriteError::Finish { source, .. } => is_disk_full(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcapfile;

    /// `n` buffers of 1 MiB of records laid out as the capture thread lays them out, all
    /// queued before the writer starts (so the first ones have the rest waiting behind them),
    /// written with `mode`: the file's bytes and how much of it the page cache holds.
    fn write_queued(mode: DirectIo, n: usize) -> (Vec<u8>, Vec<u8>, u64) {
        let dir =
            std::env::temp_dir().join(format!("sidecap-writer-{mode:?}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let header = pcapfile::file_header(1, 65535, false);
        let w = Writer::create(
            Layout::new(&dir, "t"),
            Framing::Pcap(header),
            Ring::new(None, None),
            (Fsync::None, mode),
            Arc::new(CaptureMetrics::default()),
        )
        .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (free, _free_rx) = crossbeam_channel::unbounded();
        let mut expected = header.to_vec();
        let mut file_len = header.len() as u64;
        for i in 0..n {
            let mut buf = Vec::with_capacity(super::super::config::BUF_SIZE + 2 * ALIGN);
            let head = aligned_head(&buf, file_len);
            buf.resize(head, 0);
            let data = [i as u8; 1000];
            while buf.len() - head + 1016 <= super::super::config::BUF_SIZE {
                pcapfile::push_record(&mut buf, i as u32, 0, 1000, 1000, &data);
            }
            expected.extend_from_slice(&buf[head..]);
            file_len += (buf.len() - head) as u64;
            tx.send(Msg::Data {
                buf,
                packets: 1,
                head,
            })
            .unwrap();
        }
        drop(tx);
        let summary = w.run(rx, free);
        assert!(summary.error.is_none(), "{:?}", summary.error);
        let path = dir.join(&summary.files[0]);
        let resident = String::from_utf8(
            std::process::Command::new("fincore")
                .args(["--bytes", "--noheadings", "--output", "RES"])
                .arg(&path)
                .output()
                .expect("fincore (util-linux-extra)")
                .stdout,
        )
        .unwrap();
        let written = fs::read(&path).unwrap();
        let _ = fs::remove_dir_all(&dir);
        (written, expected, resident.trim().parse().unwrap())
    }

    /// `auto` writes a buffer through the page cache while DIRECT_BACKLOG others wait behind
    /// it (the page cache does not wait for the disk), and the rest with O_DIRECT; `always` and
    /// `never` do what they say. The bytes are the same every way. Needs a file system that
    /// takes O_DIRECT in the temporary directory (ext4, xfs, btrfs; tmpfs holds everything).
    #[test]
    fn auto_goes_through_the_page_cache_only_while_buffers_queue_up() {
        const MIB: u64 = 1 << 20;
        let n = DIRECT_BACKLOG + 4;
        let (got, want, always) = write_queued(DirectIo::Always, n);
        assert!(got == want, "always: the file differs from what was sent");
        assert!(always < MIB / 8, "always: {always} bytes in the page cache");
        let (got, want, never) = write_queued(DirectIo::Never, n);
        assert!(got == want, "never: the file differs");
        assert!(
            never >= n as u64 * MIB - MIB / 8,
            "never: only {never} bytes cached"
        );
        let (got, want, auto) = write_queued(DirectIo::Auto, n);
        assert!(got == want, "auto: the file differs");
        // The first buffers had n-1, n-2, ... waiting: those with DIRECT_BACKLOG or more
        // behind them went through the page cache, the last DIRECT_BACKLOG did not.
        let buffered = (n - DIRECT_BACKLOG) as u64;
        assert!(
            (buffered * MIB - MIB / 8..buffered * MIB + MIB / 4).contains(&auto),
            "auto: {auto} bytes cached, expected about {buffered} MiB"
        );
    }
}
