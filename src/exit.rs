//! The process exit codes, one place for all subcommands. They are part of the interface
//! (documented in docs/exit-codes.md and `--help`), so they never change meaning.

/// Clean stop: finished, or stopped by SIGTERM/SIGINT after finalizing everything.
pub const OK: u8 = 0;
/// A runtime failure after a successful start (interface went away, unrecoverable disk error).
/// What was captured is finalized and the done marker records the reason.
pub const RUNTIME: u8 = 1;
/// Command-line usage error: what clap itself refuses (an unknown flag, a missing value).
pub const USAGE: u8 = 2;
/// Invalid configuration, in every subcommand: a malformed or impossible value (one clap
/// accepted), unknown interface, invalid filter, missing directory, impossible combination of
/// options, an unreadable token or CA file, another capture already owns the directory and
/// prefix.
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

/// The table `--help` shows under every subcommand (tests/it/docs.rs checks it against the
/// constants above and docs/exit-codes.md).
pub const EXIT_CODES: &str = "\
Exit codes:
  0    clean stop (finished, or SIGTERM/SIGINT handled and everything finalized);
       upload: everything uploaded (stopped by SIGTERM/SIGINT with files left: 5)
  1    runtime failure after start (interface gone, unrecoverable disk error); files finalized;
       upload: the capture directory could not be listed
  2    usage error: what the command-line parser refuses (unknown flag, missing value)
  3    invalid configuration: a malformed or impossible value, unknown interface, bad filter,
       missing directory, unreadable token or CA file
  4    permission denied (no CAP_NET_RAW, directory not writable)
  5    upload: files left (deadline reached, stopped by a signal, or a dead file not repairable)
  6    upload permanently rejected by the receiver
  7    repair: damage before the end of a file (not just a torn last record); the damaged
       spans were cut out (--dry-run: would be) and listed, every record around them kept
  8    snapshot: the running capture did not answer (older than snapshots, or stuck); its
       finished files were uploaded, the file it was writing is not in the snapshot
  130  forced exit on a second SIGTERM/SIGINT";

/// Errors that know which exit code they mean.
pub trait ExitStatus: std::error::Error {
    fn exit_code(&self) -> u8;
}

/// An error and its causes on one line, "error: cause: cause", each said once.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
