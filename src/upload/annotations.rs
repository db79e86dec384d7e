//! The annotation trigger: `kubectl annotate pod P sidecap.io/snapshot=<reason>` makes the
//! long-running `sidecap uploader` take a snapshot, with no API access and no RBAC.
//!
//! The Pod's annotations reach the uploader through a Downward API volume
//! (`fieldRef: metadata.annotations`). The kubelet writes such a volume with its AtomicWriter:
//! the files live in a timestamped directory (`..2026_12_01_10_00_00.123456789`), `..data` is a
//! symbolic link to it and `annotations` a link to `..data/annotations`; an update writes a
//! new directory and renames a new `..data` link over the old one. So every open of
//! `annotations` sees one whole version, old or new, never a mix: reading it by name on every
//! poll is enough (inotify on the file would watch the old directory, which is deleted).
//!
//! The file holds one `key="value"` line per annotation, the value quoted like Go's `%q`.
//! A snapshot starts once per new value of the key: the last value seen (or its absence) is
//! kept on the capture volume in `<prefix>.snapshot-annotation`, written before the snapshot
//! starts, so an uploader restart does not take the same snapshot again (and a snapshot cut
//! short by a restart is not retried: annotate again with a new value). Removing the
//! annotation counts as a value: setting the same reason again afterwards takes a new snapshot.
//! `sidecap.io/snapshot-last` (a duration such as `5m`) limits the window like `--last`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::blocking;
use super::engine::Engine;
use super::snapshot::{self, Options, Trigger};
use crate::files::{self, Layout};

/// The Downward API caps the annotations file well below this; a bound on reading it.
const MAX_FILE: u64 = 1 << 20;

/// Flags of `sidecap uploader` for the annotation trigger.
#[derive(Args, Debug, Clone)]
pub struct AnnotationArgs {
    /// Downward API file with the Pod's annotations (`fieldRef: metadata.annotations`, e.g.
    /// /etc/podinfo/annotations): a new value of --snapshot-annotation takes a snapshot.
    #[arg(long, env = "SIDECAP_ANNOTATIONS_FILE")]
    pub annotations_file: Option<PathBuf>,

    /// The annotation whose new values take snapshots (the value is the reason);
    /// `<key>-last` (e.g. `5m`) limits the window.
    #[arg(
        long,
        env = "SIDECAP_SNAPSHOT_ANNOTATION",
        default_value = "sidecap.io/snapshot"
    )]
    pub snapshot_annotation: String,

    /// How long a snapshot taken on an annotation may take (files and manifest).
    #[arg(long, env = "SIDECAP_SNAPSHOT_TIMEOUT", default_value = "10m")]
    pub snapshot_timeout: String,
}

/// What the watcher needs, validated.
#[derive(Clone, Debug)]
pub struct Watch {
    pub file: PathBuf,
    pub key: String,
    pub timeout: Duration,
    pub poll: Duration,
}

/// `<prefix>.snapshot-annotation`: the last value handled.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Seen {
    value: Option<String>,
    seen_at: String,
}

fn seen_path(l: &Layout) -> PathBuf {
    l.dir.join(format!("{}.snapshot-annotation", l.prefix))
}

/// Parses the Downward API annotations file: `key="value"` lines, values quoted like Go's
/// `strconv.Quote`. Lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            Some((k.trim().to_string(), unquote(v.trim())?))
        })
        .collect()
}

/// Undoes Go's `strconv.Quote`: `\n \t \r \a \b \f \v \\ \"`, `\xNN`, `\uNNNN`, `\UNNNNNNNN`
/// and octal `\NNN`.
pub fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut it = inner.chars();
    let hex = |it: &mut std::str::Chars, n: usize| -> Option<u32> {
        let h: String = it.by_ref().take(n).collect();
        (h.len() == n).then_some(())?;
        u32::from_str_radix(&h, 16).ok()
    };
    while let Some(c) = it.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        let e = it.next()?;
        let ch = match e {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'v' => '\x0b',
            '\\' | '"' | '\'' => e,
            'x' => {
                bytes.push(hex(&mut it, 2)? as u8);
                continue;
            }
            'u' => char::from_u32(hex(&mut it, 4)?)?,
            'U' => char::from_u32(hex(&mut it, 8)?)?,
            '0'..='7' => {
                let rest: String = it.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(&format!("{e}{rest}"), 8).ok()?);
                continue;
            }
            _ => return None,
        };
        let mut b = [0u8; 4];
        bytes.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads the annotations file through the kubelet's links. None: not there (yet).
fn read_annotations(path: &std::path::Path) -> std::io::Result<Vec<(String, String)>> {
    let data = crate::volume::read_user_file(path, MAX_FILE)?;
    Ok(parse(&String::from_utf8_lossy(&data)))
}

/// Polls the annotations file until `cancel`, taking a snapshot per new value.
pub async fn watch(engine: Arc<Engine>, w: Watch, cancel: CancellationToken) {
    let layout = engine.config().layout.clone();
    let sp = seen_path(&layout);
    let mut seen = blocking::value(move || crate::snapshot::read_json::<Seen>(&sp))
        .await
        .ok()
        .flatten();
    tracing::info!(file = %w.file.display(), key = %w.key, last_value = seen.as_ref().and_then(|s| s.value.as_deref()).unwrap_or(""), "Watching the Pod's annotations for snapshot requests.");
    let mut warned = false;
    loop {
        let file = w.file.clone();
        let read = blocking::value(move || read_annotations(&file)).await;
        match read {
            Ok(Ok(all)) => {
                warned = false;
                let get = |k: &str| all.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let value = get(&w.key);
                let last = get(&format!("{}-last", w.key));
                if seen.as_ref().map(|s| &s.value) != Some(&value) {
                    let now = Seen {
                        value: value.clone(),
                        seen_at: files::rfc3339(std::time::SystemTime::now()),
                    };
                    record(&layout, &now).await;
                    seen = Some(now);
                    if let Some(reason) = value {
                        run_one(&engine, &w, reason, last, &cancel).await;
                    }
                }
            }
            Ok(Err(e)) if !warned => {
                warned = true;
                tracing::warn!(file = %w.file.display(), error = %e, "Cannot read the Pod's annotations (is the Downward API volume mounted?); looking again.");
            }
            _ => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(w.poll) => {}
        }
    }
}

async fn record(layout: &Layout, seen: &Seen) {
    let (p, s) = (seen_path(layout), seen.clone());
    let written = blocking::value(move || crate::snapshot::write_json(&p, &s)).await;
    if let Ok(Err(e)) = written {
        tracing::warn!(error = %e, "Cannot record the annotation value: an uploader restart would take this snapshot again.");
    }
}

async fn run_one(
    engine: &Engine,
    w: &Watch,
    reason: String,
    last: Option<String>,
    cancel: &CancellationToken,
) {
    let last = match last.as_deref().map(crate::config::parse_duration) {
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(_) => {
            tracing::warn!(key = %format!("{}-last", w.key), "Not a positive duration: the snapshot covers the whole ring.");
            None
        }
        None => None,
    };
    let opts = Options {
        last,
        timeout: w.timeout,
        ack_timeout: Duration::from_secs(20),
    };
    let trigger = Trigger {
        kind: "annotation",
        reason,
    };
    let o = snapshot::take(engine, trigger, opts, cancel).await;
    if o.exit_code != crate::exit::OK {
        tracing::error!(snapshot = %o.manifest.id, exit_code = o.exit_code, reason = %o.reason, "Snapshot incomplete.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_downward_api_format_is_read_like_go_writes_it() {
        // What fieldpath.FormatMap writes: sorted `key="value"` lines, values %q-quoted.
        let text = "kubernetes.io/config.seen=\"2026-12-01T10:00:00Z\"\nsidecap.io/snapshot=\"incident 42: \\\"slow\\\" \\u00e9\\n\"\nsidecap.io/snapshot-last=\"5m\"";
        let got = parse(text);
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].0, "sidecap.io/snapshot");
        assert_eq!(got[1].1, "incident 42: \"slow\" \u{e9}\n");
        assert_eq!(got[2].1, "5m");
        assert_eq!(unquote("\"a\\x41\\101\\tb\""), Some("aAA\tb".into()));
        assert_eq!(unquote("\"a=b\""), Some("a=b".into()));
        assert_eq!(unquote("unquoted"), None);
    }
}
