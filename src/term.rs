//! Stderr shared between log lines and a status line redrawn in place on a terminal.
//!
//! One lock ([`TERM`]) serialises everything written to stderr while a status line may be
//! shown: the tracing writer ([`LogWriter`]) erases the status line, writes its log line and
//! draws the status line again below it; [`print_block`] does the same for multi-line text
//! (statistics); the drawer thread of [`StatusLine`] redraws it about once a second. Nothing
//! here runs on the packet path: the drawer reads counters that the data path already keeps.
//!
//! Drawing is a few hand-written ANSI sequences (carriage return, erase line) rather than a
//! progress-bar crate: the line is one row, never wider than the terminal (so it never wraps
//! and one erase always removes all of it), and the width comes from `terminal_size`, which clap
//! already links for its help text.

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Carriage return, then erase the whole line: the cursor ends at column 0 of an empty row.
const ERASE: &[u8] = b"\r\x1b[2K";
/// How often the status line is redrawn.
const REDRAW: Duration = Duration::from_secs(1);
/// Width assumed when the terminal does not say (a serial console, `script` without a size).
const DEFAULT_WIDTH: usize = 80;

struct Term {
    /// The status line as last drawn (escape sequences included), while one is shown.
    line: Option<String>,
}

static TERM: Mutex<Term> = Mutex::new(Term { line: None });

fn lock() -> MutexGuard<'static, Term> {
    // A panic while holding the lock leaves nothing half-updated that matters here.
    TERM.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether stderr is a terminal, the one condition (with `--quiet`) for drawing a status line.
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// Columns of the terminal on stderr.
fn width() -> usize {
    terminal_size::terminal_size_of(io::stderr())
        .map(|(w, _)| w.0 as usize)
        .filter(|w| *w > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// The tracing writer: stderr, with the status line (if any) erased before each log line and
/// drawn again after it. Use it with `tracing_subscriber::fmt().with_writer(LogWriter)`.
pub struct LogWriter;

/// One log line's hold on stderr; see [`LogWriter`].
pub struct LogLine {
    term: MutexGuard<'static, Term>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        let term = lock();
        if term.line.is_some() {
            let _ = io::stderr().write_all(ERASE);
        }
        LogLine { term }
    }
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if let Some(line) = &self.term.line {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Writes `text` (whole lines) to stderr without tearing the status line.
pub fn print_block(text: &str) {
    let term = lock();
    let mut err = io::stderr().lock();
    if term.line.is_some() {
        let _ = err.write_all(ERASE);
    }
    let _ = err.write_all(text.as_bytes());
    if let Some(line) = &term.line {
        let _ = err.write_all(line.as_bytes());
    }
}

/// Erases the status line, if one is shown, and stops drawing it, so the summary and the shell
/// prompt start on a clean row.
pub fn clear() {
    let mut term = lock();
    if term.line.take().is_some() {
        let _ = io::stderr().write_all(ERASE);
    }
}

/// [`clear`] for a forced exit, which must not wait: if another thread is writing to stderr
/// (a paused terminal blocks it), the line stays as it is.
pub fn try_clear() {
    if let Ok(mut term) = TERM.try_lock() {
        if term.line.take().is_some() {
            let _ = io::stderr().write_all(ERASE);
        }
    }
}

fn draw(line: String) {
    let mut term = lock();
    let mut err = io::stderr().lock();
    let _ = err.write_all(ERASE);
    let _ = err.write_all(line.as_bytes());
    term.line = Some(line);
}

/// Renders the status line for a terminal this many columns wide.
pub type Render = Box<dyn FnMut(usize) -> String + Send + 'static>;

/// The status line's drawer thread. Dropping it stops the thread and erases the line.
pub struct StatusLine {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl StatusLine {
    /// Starts drawing at once, then every [`REDRAW`]. Call only when stderr is a terminal.
    pub fn start(mut render: Render) -> io::Result<StatusLine> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("status".into())
            .spawn(move || {
                let (flag, cv) = &*stop2;
                let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
                while !*stopped {
                    // The terminal may have been resized since the last draw.
                    draw(render(width().saturating_sub(1)));
                    stopped = cv
                        .wait_timeout(stopped, REDRAW)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
            })?;
        Ok(StatusLine {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        clear();
    }
}

/// Pieces of a status line, some highlighted, fitted into a width: pieces are dropped from the
/// end while the line is too wide, and the last one kept is cut. Highlighting costs no columns.
pub fn fit(pieces: &[(String, bool)], width: usize, highlight: &str) -> String {
    const SEP: &str = "  ";
    let mut out = String::new();
    let mut used = 0;
    for (i, (text, hl)) in pieces.iter().enumerate() {
        let sep = if i == 0 { "" } else { SEP };
        let room = width.saturating_sub(used + sep.len());
        if room == 0 {
            break;
        }
        let shown: String = text.chars().take(room).collect();
        let n = shown.chars().count();
        out.push_str(sep);
        if *hl {
            out.push_str(highlight);
            out.push_str(&shown);
            out.push_str("\x1b[0m");
        } else {
            out.push_str(&shown);
        }
        used += sep.len() + n;
        if n < text.chars().count() {
            break;
        }
    }
    out
}

/// The highlight for bad news (drops): bold red, or reverse video under `NO_COLOR`
/// (<https://no-color.org>: no colour, but emphasis is fine).
pub fn highlight() -> &'static str {
    match std::env::var_os("NO_COLOR") {
        Some(v) if !v.is_empty() => "\x1b[7m",
        _ => "\x1b[1;31m",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn fit_keeps_everything_that_fits() {
        let p = vec![("a".to_string(), false), ("drops 3".to_string(), true)];
        let s = fit(&p, 80, "\x1b[1;31m");
        assert_eq!(s, "a  \x1b[1;31mdrops 3\x1b[0m");
        assert_eq!(visible(&s), "a  drops 3");
    }

    #[test]
    fn fit_never_exceeds_the_width() {
        let p: Vec<(String, bool)> = ["0:00:01", "1234 packets", "drops 5", "capture-x.pcap.part"]
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i == 2))
            .collect();
        for w in 0..60 {
            let s = fit(&p, w, "\x1b[7m");
            assert!(visible(&s).chars().count() <= w, "width {w}: {s:?}");
            // A highlight that was opened is always closed.
            assert_eq!(s.matches("\x1b[7m").count(), s.matches("\x1b[0m").count());
        }
        assert_eq!(visible(&fit(&p, 12, "")), "0:00:01  123");
    }
}
