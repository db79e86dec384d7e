//! The body of one upload, and how it moves.
//!
//! Memory stays bounded whatever the file size: a first pass ([`prepare`]) streams the file
//! through SHA-256 (and through gzip when `--gzip`, whose output is deterministic, so its digest
//! and length are known before sending), then each attempt streams the body from the file in
//! 64 KiB chunks with a `Content-Length`, which presigned-URL receivers require. Every attempt
//! reads the file with positional reads (`pread`), so attempts never share a file offset, and
//! every read (and every gzip step) runs on the blocking pool ([`blocking`]), one chunk at a
//! time: no thread of its own per attempt.
//!
//! [`tracked`] and [`watch`] are the attempt's watchdog: it aborts an attempt when the receiver
//! accepts no body bytes for a few seconds (it stopped reading) or sends no response head for a
//! while after the whole body.

use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{blocking, retry};

const CHUNK: usize = 64 * 1024;
/// How often an attempt's watchdog looks at the body's progress.
const WATCH_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// A body as a stream of chunks read from the file.
type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Digests from the first pass.
pub(super) struct Prepared {
    /// SHA-256 of the file bytes we send (hex).
    pub file_sha: String,
    /// SHA-256 of the body on the wire (base64), and its length.
    pub body_sha_b64: String,
    pub body_len: u64,
    pub file_len: u64,
    /// S3 multipart: the part length (0: one request) and each part's SHA-256 (base64).
    pub part_len: u64,
    pub parts_sha_b64: Vec<String>,
}

/// SHA-256 (base64) of each `part_len` piece of a stream, fed in chunks of any size.
struct PartHasher {
    part_len: u64,
    h: Sha256,
    in_part: u64,
    done: Vec<String>,
}

impl PartHasher {
    fn update(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            let take = ((self.part_len - self.in_part) as usize).min(b.len());
            self.h.update(&b[..take]);
            self.in_part += take as u64;
            b = &b[take..];
            if self.in_part == self.part_len {
                self.finish_part();
            }
        }
    }

    fn finish_part(&mut self) {
        let h = std::mem::replace(&mut self.h, Sha256::new());
        self.done
            .push(base64::engine::general_purpose::STANDARD.encode(h.finalize()));
        self.in_part = 0;
    }

    fn finish(mut self) -> Vec<String> {
        if self.in_part > 0 {
            self.finish_part();
        }
        self.done
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A writer that only hashes and counts what is written to it.
struct HashWriter {
    h: Sha256,
    n: u64,
}

impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.h.update(b);
        self.n += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a shared file from `pos` on with positional reads: readers never share an offset.
struct PosReader {
    f: Arc<std::fs::File>,
    pos: u64,
}

impl Read for PosReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A capture file starts with a pcap file header or a pcapng Section Header Block (both at
/// least 24 bytes): one that does not (empty, or anything else named like a capture) is not
/// ours and is not sent. Err says what it is instead.
pub(super) fn check_pcap_header(f: &std::fs::File) -> Result<(), String> {
    use crate::pcapfile::{FILE_HEADER_LEN, MAGIC_MICRO, MAGIC_NANO};
    let mut h = [0u8; FILE_HEADER_LEN];
    let mut got = 0;
    while got < h.len() {
        match f.read_at(&mut h[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read error is not "not a pcap": the upload's own read reports it.
            Err(_) => return Ok(()),
        }
    }
    if got == 0 {
        return Err("not uploaded: the file is empty (no pcap header): not a capture file".into());
    }
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let pcap = [MAGIC_MICRO, MAGIC_NANO]
        .iter()
        .any(|&m| magic == m || magic.swap_bytes() == m);
    // pcapng: a Section Header Block (its type reads the same in both byte orders) with the
    // byte-order magic after the block length.
    let bom = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let pcapng = magic == crate::pcapng::SHB_TYPE
        && [bom, bom.swap_bytes()].contains(&crate::pcapng::BYTE_ORDER_MAGIC);
    if got < FILE_HEADER_LEN || !(pcap || pcapng) {
        return Err(format!(
            "not uploaded: no pcap or pcapng file header ({got} bytes, starts with {}): not a capture file",
            hex(&h[..got.min(4)])
        ));
    }
    Ok(())
}

/// The first pass: digests of the file and of the body as sent, and with `part_of` (S3
/// multipart: the part length for a body of this length, None when it goes in one request) of
/// each part. Stops at the deadline.
pub(super) fn prepare(
    f: Arc<std::fs::File>,
    limit: Option<u64>,
    gzip: bool,
    part_of: &dyn Fn(u64) -> Option<u64>,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Prepared, String> {
    let len = f
        .metadata()
        .map_err(|e| format!("cannot stat: {e}"))?
        .len()
        .min(limit.unwrap_or(u64::MAX));
    // Multipart bodies are never gzipped (--gzip is refused with S3).
    let part_len = if gzip { None } else { part_of(len) };
    let mut parts = part_len.map(|part_len| PartHasher {
        part_len,
        h: Sha256::new(),
        in_part: 0,
        done: Vec::new(),
    });
    let mut f = PosReader { f, pos: 0 };
    let mut file_h = Sha256::new();
    let mut gz = gzip.then(|| {
        flate2::write::GzEncoder::new(
            HashWriter {
                h: Sha256::new(),
                n: 0,
            },
            flate2::Compression::fast(),
        )
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        if Instant::now() >= deadline {
            return Err("deadline reached while computing the digest".into());
        }
        if cancel.is_cancelled() {
            return Err("stopped while computing the digest".into());
        }
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want]).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the file shrank while being read".into());
        }
        file_h.update(&buf[..n]);
        if let Some(p) = parts.as_mut() {
            p.update(&buf[..n]);
        }
        if let Some(g) = gz.as_mut() {
            g.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
        left -= n as u64;
    }
    let file_digest = file_h.finalize();
    let b64 = base64::engine::general_purpose::STANDARD;
    let (body_sha_b64, body_len) = match gz {
        Some(g) => {
            let w = g.finish().map_err(|e| e.to_string())?;
            (b64.encode(w.h.finalize()), w.n)
        }
        None => (b64.encode(file_digest), len),
    };
    Ok(Prepared {
        file_sha: hex(&file_digest),
        body_sha_b64,
        body_len,
        file_len: len,
        part_len: part_len.unwrap_or(0),
        parts_sha_b64: parts.map(PartHasher::finish).unwrap_or_default(),
    })
}

/// The body of one attempt: the first `len` bytes of the file, raw or gzipped, as a stream.
/// Each call reads from offset 0 with its own positional reader.
pub(super) fn body_stream(file: Arc<std::fs::File>, len: u64, gzip: bool) -> ByteStream {
    if gzip {
        let gz = Gzip {
            enc: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
            src: PosReader { f: file, pos: 0 }.take(len),
            buf: vec![0u8; CHUNK],
            finished: false,
        };
        return Box::pin(futures_util::stream::try_unfold(gz, |mut gz| async move {
            let (gz, chunk) = blocking::run(move || {
                let chunk = gz.next_chunk()?;
                Ok((gz, chunk))
            })
            .await?;
            Ok(chunk.map(|c| (c, gz)))
        }));
    }
    range_stream(file, 0, len)
}

/// `len` bytes of the file from `start` on, as a stream (an S3 part).
pub(super) fn range_stream(file: Arc<std::fs::File>, start: u64, len: u64) -> ByteStream {
    let end = start + len;
    Box::pin(futures_util::stream::try_unfold(
        (file, start),
        move |(f, pos)| async move {
            if pos >= end {
                return Ok(None);
            }
            let want = CHUNK.min((end - pos) as usize);
            let f2 = f.clone();
            let buf = blocking::run(move || {
                let mut buf = vec![0u8; want];
                let n = f2.read_at(&mut buf, pos)?;
                buf.truncate(n);
                Ok(buf)
            })
            .await?;
            if buf.is_empty() {
                return Err(shrank());
            }
            let next = pos + buf.len() as u64;
            Ok(Some((Bytes::from(buf), (f, next))))
        },
    ))
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file shrank while being sent",
    )
}

/// The gzip encoder of one attempt: moved onto the blocking pool for each chunk and back, so
/// memory stays at about one chunk and no thread is held between chunks.
struct Gzip {
    enc: flate2::write::GzEncoder<Vec<u8>>,
    src: io::Take<PosReader>,
    buf: Vec<u8>,
    finished: bool,
}

impl Gzip {
    /// The next compressed chunk (about [`CHUNK`] bytes), None after the gzip trailer.
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        while !self.finished && self.enc.get_ref().len() < CHUNK {
            let n = match self.src.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n > 0 {
                self.enc.write_all(&self.buf[..n])?;
            } else if self.src.limit() > 0 {
                return Err(shrank());
            } else {
                self.enc.try_finish()?;
                self.finished = true;
            }
        }
        let out = std::mem::take(self.enc.get_mut());
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

/// When the body of one attempt last moved: the instants the HTTP stack took a chunk and took
/// the end of the body.
pub(super) struct Progress {
    started: Instant,
    last_chunk: Mutex<Option<Instant>>,
    body_done: Mutex<Option<Instant>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            last_chunk: Mutex::new(None),
            body_done: Mutex::new(None),
        }
    }
}

impl Progress {
    fn set(m: &Mutex<Option<Instant>>) {
        if let Ok(mut g) = m.lock() {
            *g = Some(Instant::now());
        }
    }

    fn get(m: &Mutex<Option<Instant>>) -> Option<Instant> {
        m.lock().ok().and_then(|g| *g)
    }
}

/// Counts the chunks the HTTP stack takes: it takes the next one only when the previous one is
/// on its way, so a receiver that stops reading stops the count. The body is done when its
/// last byte was taken: with a `Content-Length` the HTTP stack stops polling the stream after
/// `len` bytes and never sees its end, so waiting for the end would leave the response wait to
/// the stall timer (5 s, whatever the budget: the bug of issue 10).
pub(super) fn tracked(s: ByteStream, len: u64, p: Arc<Progress>) -> reqwest::Body {
    let p2 = p.clone();
    let mut taken = 0u64;
    let s = s
        .map(move |item| {
            Progress::set(&p.last_chunk);
            if let Ok(b) = &item {
                taken += b.len() as u64;
                if taken >= len {
                    Progress::set(&p.body_done);
                }
            }
            item
        })
        .chain(futures_util::stream::poll_fn(move |_| {
            Progress::set(&p2.body_done);
            Poll::Ready(None)
        }));
    reqwest::Body::wrap_stream(s)
}

/// Resolves when the attempt should be abandoned: no body progress for `limits.stall` (the
/// receiver stopped reading), or no response for `limits.response` after the whole body went
/// out. Before the first chunk the connect timeout applies. Returns why.
pub(super) async fn watch(p: &Progress, limits: retry::AttemptLimits) -> String {
    loop {
        tokio::time::sleep(WATCH_TICK).await;
        let now = Instant::now();
        if let Some(done) = Progress::get(&p.body_done) {
            if now.duration_since(done) >= limits.response {
                return format!(
                    "timed out: no response within {} ms after the whole body was sent",
                    limits.response.as_millis()
                );
            }
            continue;
        }
        let (since, allowed) = match Progress::get(&p.last_chunk) {
            Some(t) => (t, limits.stall),
            None => (p.started, retry::CONNECT_TIMEOUT + limits.stall),
        };
        if now.duration_since(since) >= allowed {
            return format!(
                "timed out: the receiver accepted no data for {} ms (it stopped reading the body)",
                allowed.as_millis()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Read;
    use std::time::Duration;

    #[test]
    fn gzip_digest_matches_what_is_streamed() {
        // The first pass and the body must produce the same bytes, or Content-Digest lies.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = Arc::new(std::fs::File::open(&p).unwrap());
        let prep = prepare(
            f.clone(),
            None,
            true,
            &|_| None,
            Instant::now() + Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sent = rt.block_on(async {
            let mut s = body_stream(f.clone(), prep.file_len, true);
            let mut out = Vec::new();
            while let Some(ch) = s.next().await {
                out.extend_from_slice(&ch.unwrap());
            }
            out
        });
        assert_eq!(sent.len() as u64, prep.body_len);
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.encode(Sha256::digest(&sent)), prep.body_sha_b64);
        let mut dec = Vec::new();
        flate2::read::GzDecoder::new(&sent[..])
            .read_to_end(&mut dec)
            .unwrap();
        assert_eq!(dec, data);
        assert_eq!(prep.file_sha, hex(&Sha256::digest(&data)));
    }

    #[test]
    fn part_digests_cover_the_file_in_part_order() {
        // Part boundaries fall inside the first pass's 256 KiB reads: each part's digest must
        // still be over exactly its bytes, and a range stream must send exactly those bytes.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = Arc::new(std::fs::File::open(&p).unwrap());
        let part = 300_007u64;
        let prep = prepare(
            f.clone(),
            None,
            false,
            &|len| (len > part).then_some(part),
            Instant::now() + Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!(prep.part_len, part);
        assert_eq!(prep.parts_sha_b64.len(), 4);
        let b64 = base64::engine::general_purpose::STANDARD;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (i, chunk) in data.chunks(part as usize).enumerate() {
            assert_eq!(
                prep.parts_sha_b64[i],
                b64.encode(Sha256::digest(chunk)),
                "part {i}"
            );
            let start = i as u64 * part;
            let sent = rt.block_on(async {
                let mut s = range_stream(f.clone(), start, chunk.len() as u64);
                let mut out = Vec::new();
                while let Some(ch) = s.next().await {
                    out.extend_from_slice(&ch.unwrap());
                }
                out
            });
            assert_eq!(sent, chunk, "part {i}");
        }
        // At or under the part size: one request, no part digests.
        let one = prepare(
            f,
            Some(part),
            false,
            &|len| (len > part).then_some(part),
            Instant::now() + Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .unwrap();
        assert_eq!((one.part_len, one.parts_sha_b64.len()), (0, 0));
    }

    #[test]
    fn body_streams_of_two_attempts_do_not_share_a_file_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = Arc::new(std::fs::File::open(&p).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (a, b) = rt.block_on(async {
            // An abandoned attempt read part of the file; the retry must still start at 0.
            let mut first = body_stream(f.clone(), data.len() as u64, false);
            let mut a = first.next().await.unwrap().unwrap().to_vec();
            let mut second = body_stream(f.clone(), data.len() as u64, false);
            let mut b = Vec::new();
            while let Some(ch) = second.next().await {
                b.extend_from_slice(&ch.unwrap());
            }
            while let Some(ch) = first.next().await {
                a.extend_from_slice(&ch.unwrap());
            }
            (a, b)
        });
        assert_eq!(a, data);
        assert_eq!(b, data);
    }
}
