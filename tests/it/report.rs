//! A failing command reports its error exactly once on stderr, in the log's format (issue 16:
//! it used to print every error twice, as a tracing event and again as a plain line).

use std::process::Command;

use crate::helpers::{bin, tempdir};

/// An interface that does not exist: `capture` fails at start-up with an error naming it.
const IFACE: &str = "nosuch16";

/// Runs `sidecap <global args> capture -i IFACE` and returns its exit code and stderr lines.
fn failing_capture(global: &[&str]) -> (Option<i32>, Vec<String>) {
    let dir = tempdir();
    let out = Command::new(bin())
        .args(global)
        .args(["capture", "-i", IFACE, "-w"])
        .arg(dir.path())
        .args(["--listen", "off"])
        .env_remove("RUST_LOG")
        .env_remove("SIDECAP_LOG_FORMAT")
        .env_remove("SIDECAP_LOG_LEVEL")
        .output()
        .expect("run sidecap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        stderr.lines().map(str::to_owned).collect(),
    )
}

/// The lines that carry the error report (the only ones naming the interface with "error").
fn error_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains("sidecap: error:") || (l.contains(IFACE) && l.contains("ERROR")))
        .collect()
}

#[test]
fn text_log_reports_an_error_once() {
    let (code, lines) = failing_capture(&[]);
    assert_ne!(code, Some(0), "capture on {IFACE} must fail: {lines:?}");
    let errors = error_lines(&lines);
    assert_eq!(
        errors.len(),
        1,
        "expected one error line, stderr: {lines:#?}"
    );
    assert!(
        errors[0].contains(IFACE),
        "the error names the interface: {errors:?}"
    );
}

#[test]
fn json_log_reports_an_error_once_as_a_json_line() {
    let (code, lines) = failing_capture(&["--log-format", "json"]);
    assert_ne!(code, Some(0), "capture on {IFACE} must fail: {lines:?}");
    // Every line is a JSON object (log collectors parse `kubectl logs` line by line).
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let errors: Vec<&serde_json::Value> = events.iter().filter(|e| e["level"] == "ERROR").collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one ERROR event, stderr: {lines:#?}"
    );
    let msg = errors[0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("sidecap: error:") && msg.contains(IFACE),
        "the ERROR event carries the report: {msg}"
    );
    assert_eq!(error_lines(&lines).len(), 1, "stderr: {lines:#?}");
}

#[test]
fn silenced_log_still_reports_an_error_once() {
    let (code, lines) = failing_capture(&["--log-level", "off"]);
    assert_ne!(code, Some(0), "capture on {IFACE} must fail: {lines:?}");
    assert_eq!(
        lines.len(),
        1,
        "expected only the error line, stderr: {lines:#?}"
    );
    assert!(
        lines[0].starts_with("sidecap: error:") && lines[0].contains(IFACE),
        "plain error line: {lines:?}"
    );
}
