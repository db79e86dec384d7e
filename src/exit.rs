//! The process exit codes, one place for all subcommands. They are part of the interface
//! (documented in docs/exit-codes.md and `--help`), so they never change meaning.

/// Clean stop: finished, or stopped by SIGTERM/SIGINT after finalizing everything.
pub const OK: u8 = 0;
/// A runtime failure after a successful start (interface went away, unrecoverable disk error).
/// What was captured is finalized and the done marker records the reason.
pub const RUNTIME: u8 = 1;
/// Command-line usage error (clap's own code).
pub const USAGE: u8 = 2;
/// Invalid configuration: unknown interface, invalid filter, missing directory, impossible
/// combination of options, another capture already owns the directory and prefix.
pub const CONFIG: u8 = 3;
/// Permission denied: no CAP_NET_RAW, or the output directory is not writable.
pub const PERMISSION: u8 = 4;
/// Upload: the deadline was reached with files left to upload.
pub const DEADLINE: u8 = 5;
/// Upload: the receiver rejected a file permanently (4xx other than 408/429).
pub const REJECTED: u8 = 6;
/// Repair: a file had damage before its end (not just a torn last record). The damaged spans
/// were removed (with `--dry-run`: would be) and listed; every complete record around them kept.
pub const DAMAGED: u8 = 7;
/// Snapshot: the running capture did not answer the request (a capture older than snapshots,
/// or stuck); its finished files were uploaded, the file it was writing is not in the snapshot.
pub const SNAPSHOT_UNANSWERED: u8 = 8;
/// A second SIGTERM/SIGINT forced an immediate exit before the graceful stop finished.
pub const FORCED: u8 = 130;

/// Errors that know which exit code they mean.
pub trait ExitStatus: std::error::Error {
    fn exit_code(&self) -> u8;
}
