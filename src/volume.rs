//! Opening files on the shared volume. The volume is writable by every container that mounts
//! it, so a name there may be a planted symbolic link (to a secret, to a file to truncate,
//! dangling to create a file elsewhere), a FIFO (an open that never returns), or a device
//! (`/dev/zero`: a read that never ends). Every open of a file sidecap expects to be its own
//! goes through [`open`]: the last component is never followed (`O_NOFOLLOW`), the open never
//! waits (`O_NONBLOCK`: a FIFO opens at once instead of waiting for a writer), and anything that
//! is not a regular file is refused with an error that says what it is. Every file sidecap uses
//! lives directly in the directory the user named, so refusing a link in the last component is
//! what "relative to the directory" means here; the directory itself is the user's choice.
//!
//! [`read_bounded`] adds a size cap for small files read whole (tokens, CA bundles, markers).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;

/// How to open: read-only, or read-write (optionally creating the file with `mode`).
#[derive(Clone, Copy, Debug)]
pub enum Access {
    Read,
    /// Read-write; create it with this mode when it does not exist.
    ReadWriteCreate(u32),
    /// Append-only; create it with this mode when it does not exist.
    AppendCreate(u32),
}

/// What a non-regular file is, for messages.
pub fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// The payload of an error for a name that is not a regular file (a planted link, FIFO or
/// device), so callers can tell a refusal from any other `InvalidInput` (an EINVAL from a FUSE
/// or CIFS volume must not turn a real capture file into a skipped one).
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Was `e` made by [`open`] refusing a file that is not a regular file?
pub fn is_refused(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<Refused>())
}

/// An error that names the file and says why it was refused.
fn refused(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        Refused(format!(
            "{} is {what}, not a regular file: sidecap does not follow links or open special files on the shared volume (remove it)",
            path.display()
        )),
    )
}

/// Opens a regular file without following a symbolic link in its last component and without
/// blocking; anything else is an error naming what it found.
pub fn open(path: &Path, access: Access) -> io::Result<File> {
    let mut o = OpenOptions::new();
    match access {
        Access::Read => {
            o.read(true);
        }
        Access::ReadWriteCreate(mode) => {
            o.read(true).write(true).create(true).mode(mode);
        }
        Access::AppendCreate(mode) => {
            o.append(true).create(true).mode(mode);
        }
    }
    o.custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits());
    let f = match o.open(path) {
        Ok(f) => f,
        // ELOOP: the last component is a symbolic link (O_NOFOLLOW).
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(refused(path, "a symbolic link"))
        }
        // ENXIO: a FIFO opened for writing with no reader, or a socket.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {
            let what = std::fs::symlink_metadata(path)
                .map(|m| kind_of(m.file_type()))
                .unwrap_or("not a regular file");
            return Err(refused(path, what));
        }
        Err(e) => return Err(e),
    };
    let t = f.metadata()?.file_type();
    if !t.is_file() {
        return Err(refused(path, kind_of(t)));
    }
    Ok(f)
}

/// Reads a small regular file whole (see [`open`]), refusing one larger than `cap` bytes.
pub fn read_bounded(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    read_capped(open(path, Access::Read)?, path, cap)
}

/// Like [`read_bounded`] for a file the user named outside the volume (a token, a CA bundle):
/// links are followed, because Kubernetes mounts Secrets as links into `..data/`, but the open
/// never waits on a FIFO and only a regular file of at most `cap` bytes is read.
pub fn read_user_file(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)?;
    let t = f.metadata()?.file_type();
    if !t.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is {}, not a regular file", path.display(), kind_of(t)),
        ));
    }
    read_capped(f, path, cap)
}

fn read_capped(f: File, path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    f.take(cap + 1).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is larger than {cap} bytes: not the small file expected",
                path.display()
            ),
        ));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_devices_are_refused_regular_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"secret").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for a in [
            Access::Read,
            Access::ReadWriteCreate(0o640),
            Access::AppendCreate(0o640),
        ] {
            let e = open(&link, a).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
        // A dangling link creates nothing at its target.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(open(&dangling, Access::ReadWriteCreate(0o640)).is_err());
        assert!(!dir.path().join("nowhere").exists());
        // A FIFO opens at once (no writer needed) and is refused.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for a in [Access::Read, Access::ReadWriteCreate(0o640)] {
            let e = open(&fifo, a).unwrap_err().to_string();
            assert!(e.contains("a FIFO"), "{e}");
        }
        let e = read_bounded(Path::new("/dev/zero"), 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a device"), "{e}");
        assert_eq!(read_bounded(&target, 6).unwrap(), b"secret");
        let e = read_bounded(&target, 5).unwrap_err().to_string();
        assert!(e.contains("larger than 5 bytes"), "{e}");
        assert!(open(&dir.path().join("new"), Access::ReadWriteCreate(0o640)).is_ok());
        // User-named files (Secrets) may be links, but never FIFOs or devices.
        assert_eq!(read_user_file(&link, 64).unwrap(), b"secret");
        let e = read_user_file(&fifo, 64).unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");
        let e = read_user_file(Path::new("/dev/zero"), 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a device"), "{e}");
    }
}
