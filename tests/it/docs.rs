//! The reference pages in docs/ and the binary's `--help` describe the same options and the same
//! exit codes: a flag added without its documentation, or a documented flag that no longer
//! exists, fails here.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::helpers::bin;

/// Which page documents which subcommand's options.
const PAGES: &[(&str, &str)] = &[
    ("capture", "docs/capture.md"),
    ("uploader", "docs/upload.md"),
    ("upload", "docs/upload.md"),
    ("snapshot", "docs/upload.md"),
    ("repair", "docs/capture.md"),
];

/// Flags clap adds to every command; they need no page.
const BUILT_IN: &[&str] = &["--help", "--version"];

fn help(sub: &str) -> String {
    let out = Command::new(bin())
        .args([sub, "--help"])
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{sub} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

fn doc(page: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(page);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Long flags (`--name`) in `text`, optionally only on lines for which `keep` holds.
fn long_flags(text: &str, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in text.lines().filter(|l| keep(l)) {
        let mut rest = line;
        while let Some(i) = rest.find("--") {
            rest = &rest[i + 2..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if name.len() > 1 && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

/// The flags `--help` defines: the first long flag of each option line.
fn help_flags(help: &str) -> BTreeSet<String> {
    long_flags(help, |l| {
        let t = l.trim_start();
        t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "))
    })
    .into_iter()
    .filter(|f| !BUILT_IN.contains(&f.as_str()))
    .collect()
}

#[test]
fn every_option_in_help_is_documented_and_every_documented_option_exists() {
    for (sub, page) in PAGES {
        let defined = help_flags(&help(sub));
        assert!(
            defined.len() >= 3,
            "{sub}: parsed too few flags: {defined:?}"
        );
        let text = doc(page);
        let documented = long_flags(&text, |_| true);
        let missing: Vec<_> = defined.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "{sub}: in --help but not in {page}: {missing:?}"
        );
    }
    // Option tables (rows that start with a flag) must not name flags that no longer exist.
    for page in ["docs/capture.md", "docs/upload.md"] {
        let all: BTreeSet<String> = PAGES
            .iter()
            .filter(|(_, p)| p == &page)
            .flat_map(|(sub, _)| help_flags(&help(sub)))
            .collect();
        let rows = long_flags(&doc(page), |l| l.starts_with("| `-"));
        let stale: Vec<_> = rows.difference(&all).collect();
        assert!(
            stale.is_empty(),
            "{page} documents options --help does not have: {stale:?}"
        );
    }
}

/// The codes of an exit-code table: the first cell of each row that `row` picks out.
fn codes_in(text: &str, row: impl Fn(&str) -> Option<&str>) -> BTreeSet<u8> {
    text.lines()
        .filter_map(row)
        .filter_map(|cell| cell.trim().parse::<u8>().ok())
        .collect()
}

#[test]
fn exit_codes_agree_between_exit_rs_help_and_docs() {
    let defined = codes_in(include_str!("../../src/exit.rs"), |l| {
        l.strip_prefix("pub const ")
            .filter(|r| r.contains(": u8 = "))
            .and_then(|r| r.rsplit("= ").next())
            .map(|v| v.trim_end_matches(';'))
    });
    assert!(
        defined.contains(&0) && defined.contains(&130),
        "parsed {defined:?}"
    );
    let documented = codes_in(&doc("docs/exit-codes.md"), |l| {
        l.strip_prefix("| ").and_then(|r| r.split('|').next())
    });
    assert_eq!(defined, documented, "src/exit.rs vs docs/exit-codes.md");
    for (sub, _) in PAGES {
        let h = help(sub);
        let section = h
            .split("Exit codes:")
            .nth(1)
            .expect("--help lists exit codes");
        let listed = codes_in(section, |l| {
            l.strip_prefix("  ")
                .and_then(|r| r.split_whitespace().next())
        });
        assert_eq!(defined, listed, "src/exit.rs vs `{sub} --help`");
    }
}
