//! `--tls-keylog`: follows an NSS key log file (SSLKEYLOGFILE) that the app writes into the
//! shared volume, so its TLS secrets can go into the pcapng files as Decryption Secrets Blocks.
//!
//! The capture thread polls it right before each read from the kernel ring: one `pread` that
//! returns 0 when nothing is new. That ordering is the point: a secret the app wrote before a
//! packet was read from the ring lands in the file before that packet. A separate follower
//! thread would race the capture thread and sometimes put a secret after the first packet that
//! needs it, which a single-pass reader (tshark) cannot decrypt.
//!
//! The file may not exist yet (looked for on every poll until it does), may grow, may be
//! truncated (start over) or replaced (rename or delete and create): every [`CHECK_EVERY`] the
//! path is looked at again. A truncate-and-rewrite that outgrows the old length within one such
//! period is not noticed as a truncation (the rewritten part up to the old length is skipped). Lines that do not have
//! the key log shape are skipped, so a wrong path cannot copy an unrelated file into the
//! captures. Secrets are never logged; only counts are.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often the path is checked for appearing, being replaced or truncated.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Longest line we accept: the longest real one (a 48-byte TLS 1.3 secret) is under 250 bytes.
const MAX_LINE: usize = 1024;
/// Most bytes read per poll, so a huge file cannot stall the capture thread.
const MAX_READ_PER_POLL: usize = 1 << 20;

pub struct Keylog {
    path: PathBuf,
    /// The open file and its (dev, inode).
    file: Option<(File, (u64, u64))>,
    offset: u64,
    /// An incomplete last line, waiting for its newline.
    partial: Vec<u8>,
    next_check: Instant,
    /// Secrets repeated at the start of every new file, oldest first, at most `max_carried`
    /// bytes (the oldest go first: a connection that old has most likely ended).
    carried: VecDeque<Vec<u8>>,
    carried_bytes: usize,
    max_carried: usize,
    seen: HashSet<Vec<u8>>,
    pub secrets_read: u64,
    pub lines_skipped: u64,
    said_missing: bool,
}

impl Keylog {
    pub fn new(path: PathBuf, max_carried: usize) -> Keylog {
        Keylog {
            path,
            file: None,
            offset: 0,
            partial: Vec::new(),
            next_check: Instant::now(),
            carried: VecDeque::new(),
            carried_bytes: 0,
            max_carried,
            seen: HashSet::new(),
            secrets_read: 0,
            lines_skipped: 0,
            said_missing: false,
        }
    }

    /// New secret lines (each ending in `\n`) since the last call; empty when none.
    pub fn poll(&mut self, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        // Until the file exists, look on every poll: apps create it with their first TLS
        // connection, and those packets follow within a millisecond. A failed stat is cheap.
        if self.file.is_none() || now >= self.next_check {
            self.next_check = now + CHECK_EVERY;
            self.check_path(&mut out);
        }
        self.read_new(&mut out);
        out
    }

    /// Every secret kept so far, for the start of a new file.
    pub fn carried(&self) -> Vec<u8> {
        self.carried.iter().flatten().copied().collect()
    }

    /// Opens the file when it appears; starts over when it was truncated or replaced (after
    /// reading what the old one still had).
    fn check_path(&mut self, out: &mut Vec<u8>) {
        let meta = std::fs::metadata(&self.path);
        let Some((f, id)) = &self.file else {
            match meta {
                Ok(_) => self.open(),
                Err(e) if !self.said_missing => {
                    self.said_missing = true;
                    tracing::info!(path = %self.path.display(), error = %e, "TLS key log not readable yet; looking again every 250ms.");
                }
                Err(_) => {}
            }
            return;
        };
        let replaced = meta.as_ref().map_or(true, |m| (m.dev(), m.ino()) != *id);
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if replaced {
            self.read_new(out);
            self.file = None;
            tracing::info!(path = %self.path.display(), "TLS key log was replaced; following the new file.");
            if meta.is_ok() {
                self.open();
            }
        } else if len < self.offset {
            tracing::info!(path = %self.path.display(), "TLS key log was truncated; reading it from the start.");
            self.offset = 0;
            self.partial.clear();
        }
    }

    fn open(&mut self) {
        // O_NOFOLLOW: the app controls that volume; a symlink planted there must not make us
        // read (and embed) some other file. Lines that are not secrets are skipped anyway.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&self.path);
        match f.and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok((f, m)) if m.is_file() => {
                tracing::info!(path = %self.path.display(), "Following the TLS key log.");
                self.file = Some((f, (m.dev(), m.ino())));
                self.offset = 0;
                self.partial.clear();
                self.said_missing = false;
            }
            Ok(_) => self.warn_once("not a regular file"),
            Err(e) => self.warn_once(&e.to_string()),
        }
    }

    fn warn_once(&mut self, why: &str) {
        if !self.said_missing {
            self.said_missing = true;
            tracing::warn!(path = %self.path.display(), error = why, "Cannot open the TLS key log; looking again every 250ms.");
        }
    }

    fn read_new(&mut self, out: &mut Vec<u8>) {
        let Some((f, id)) = self.file.take() else {
            return;
        };
        let mut buf = [0u8; 16 << 10];
        let mut total = 0;
        while total < MAX_READ_PER_POLL {
            let n = match f.read_at(&mut buf, self.offset) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "Reading the TLS key log failed; opening it again later.");
                    return;
                }
            };
            self.offset += n as u64;
            total += n;
            self.take_lines(&buf[..n], out);
        }
        self.file = Some((f, id));
    }

    fn take_lines(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&data[..nl]);
            data = &data[nl + 1..];
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.add_line(line, out);
        }
        if self.partial.len() + data.len() <= MAX_LINE {
            self.partial.extend_from_slice(data);
        } else {
            // Not a key log line; drop it up to its newline.
            self.partial.clear();
            self.partial.extend_from_slice(b"#");
        }
    }

    fn add_line(&mut self, line: Vec<u8>, out: &mut Vec<u8>) {
        if line.is_empty() || line[0] == b'#' {
            return;
        }
        if !is_secret_line(&line) {
            self.lines_skipped += 1;
            return;
        }
        if !self.seen.insert(line.clone()) {
            return;
        }
        let mut line = line;
        line.push(b'\n');
        out.extend_from_slice(&line);
        self.secrets_read += 1;
        self.carried_bytes += line.len();
        self.carried.push_back(line);
        while self.carried_bytes > self.max_carried {
            let Some(mut old) = self.carried.pop_front() else {
                break;
            };
            self.carried_bytes -= old.len();
            old.pop();
            self.seen.remove(&old);
        }
    }
}

/// `LABEL <hex> <hex>` as in the NSS key log format: an upper-case label, then the client
/// random (or RSA's encrypted premaster prefix) and the secret, both hex.
pub fn is_secret_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(label), Some(id), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let hex = |p: &[u8]| !p.is_empty() && p.len() <= 512 && p.iter().all(u8::is_ascii_hexdigit);
    !label.is_empty()
        && label.len() <= 64
        && label
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        && hex(id)
        && hex(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const L1: &str =
        "CLIENT_RANDOM 0011223344556677889900112233445566778899001122334455667788990011 aabbccdd";
    const L2: &str = "CLIENT_TRAFFIC_SECRET_0 1111223344556677889900112233445566778899001122334455667788990011 eeff";

    fn poll(k: &mut Keylog) -> String {
        // Due now: this poll looks at the path again.
        k.next_check = Instant::now();
        String::from_utf8(k.poll(Instant::now())).unwrap()
    }

    #[test]
    fn shape_of_a_secret_line() {
        assert!(is_secret_line(L1.as_bytes()));
        assert!(!is_secret_line(b"root:x:0:0:root:/root:/bin/bash"));
        assert!(!is_secret_line(b"CLIENT_RANDOM abc"));
        assert!(!is_secret_line(b"CLIENT_RANDOM zz 00"));
        assert!(!is_secret_line(b"lower 00 00"));
    }

    #[test]
    fn follows_appears_appends_truncates_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let mut k = Keylog::new(path.clone(), 1 << 20);
        assert_eq!(poll(&mut k), "");
        let mut f = File::create(&path).unwrap();
        // A partial line waits for its newline; junk and comments are skipped.
        write!(f, "# comment\nnot a secret\n{}", &L1[..20]).unwrap();
        assert_eq!(poll(&mut k), "");
        writeln!(f, "{}", &L1[20..]).unwrap();
        assert_eq!(poll(&mut k), format!("{L1}\n"));
        assert_eq!(k.lines_skipped, 1);
        // Truncated and rewritten: a repeated line is not embedded again.
        f.set_len(0).unwrap();
        assert_eq!(poll(&mut k), "");
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writeln!(f, "{L1}\n{L2}").unwrap();
        assert_eq!(poll(&mut k), format!("{L2}\n"));
        // Replaced by rename.
        let tmp = dir.path().join("keys.new");
        std::fs::write(&tmp, format!("{L1}\nCLIENT_RANDOM 22 33\n")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(poll(&mut k), "CLIENT_RANDOM 22 33\n");
        assert_eq!(
            k.carried(),
            format!("{L1}\n{L2}\nCLIENT_RANDOM 22 33\n").into_bytes()
        );
    }

    #[test]
    fn carried_secrets_stay_bounded_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let mut f = File::create(&path).unwrap();
        for i in 0..100 {
            writeln!(f, "CLIENT_RANDOM {i:064x} 00").unwrap();
        }
        let mut k = Keylog::new(path, 500);
        let all = poll(&mut k);
        assert_eq!(all.lines().count(), 100);
        let carried = String::from_utf8(k.carried()).unwrap();
        assert!(carried.len() <= 500);
        assert!(carried.ends_with(&format!("CLIENT_RANDOM {:064x} 00\n", 99)));
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, format!("{L1}\n")).unwrap();
        let path = dir.path().join("keys");
        std::os::unix::fs::symlink(&real, &path).unwrap();
        let mut k = Keylog::new(path, 1 << 20);
        assert_eq!(poll(&mut k), "");
    }
}
