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

/// The longest function `src/` may have, in lines from its `fn` line to its closing brace.
const MAX_FN_LINES: usize = 80;

/// The functions of one file longer than `max` lines, as (name, first line, lines), tests
/// (from the first `#[cfg(test)]` or `mod tests` on) aside. A function ends at the first line
/// that is a `}` at its own indentation; a body-less declaration (`fn f();`) has none.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") || t.starts_with("mod tests") {
            break;
        }
        let indent = &line[..line.len() - t.len()];
        let Some(name) = fn_name(t) else {
            i += 1;
            continue;
        };
        let close = format!("{indent}}}");
        let mut j = i;
        while j < lines.len() && lines[j].trim_end() != close {
            if lines[i..=j].iter().all(|l| !l.contains('{')) && lines[j].trim_end().ends_with(';') {
                break;
            }
            j += 1;
        }
        if j + 1 - i > max {
            long.push((name, i + 1, j + 1 - i));
        }
        i = j + 1;
    }
    long
}

/// The name of the function a trimmed line declares, if it declares one.
fn fn_name(t: &str) -> Option<String> {
    let mut rest = t;
    if let Some(r) = rest.strip_prefix("pub") {
        rest = match r.strip_prefix('(') {
            Some(r) => r.split_once(") ")?.1,
            None => r.strip_prefix(' ')?,
        };
    }
    for q in ["async ", "unsafe ", "const "] {
        rest = rest.strip_prefix(q).unwrap_or(rest);
    }
    let name: String = rest
        .strip_prefix("fn ")?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src/") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_function_in_src_is_longer_than_80_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found {files:?}");
    let mut long = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read a source file");
        for (func, line, n) in long_functions(&text, MAX_FN_LINES) {
            long.push(format!("{}:{line} {func}: {n} lines", f.display()));
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_length_check_finds_a_long_function() {
    let body = "    x();\n".repeat(80);
    let text = format!(
        "fn short() {{\n}}\n\npub(crate) async fn long() {{\n{body}}}\ntrait T {{\n    fn decl(&self);\n}}\n"
    );
    assert_eq!(long_functions(&text, 80), vec![("long".to_string(), 4, 82)]);
    assert!(long_functions(&text, 82).is_empty());
}

/// The code and stderr of `sidecap <args>`.
fn exit_of(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run sidecap");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_malformed_value_exits_3_and_an_unknown_flag_2_in_every_subcommand() {
    let dir = std::env::temp_dir();
    let dir = dir.to_str().expect("a UTF-8 temp dir");
    let url = "http://127.0.0.1:9/in";
    let malformed: &[&[&str]] = &[
        &["capture", "--dir", dir, "--rotate-size", "lots"],
        &[
            "upload",
            "--dir",
            dir,
            "--url",
            url,
            "--grace-period",
            "soon",
        ],
        &[
            "upload",
            "--dir",
            dir,
            "--url",
            url,
            "--header",
            "X-A: 1\nX-B: 2",
        ],
        &["uploader", "--dir", dir, "--poll-interval", "often"],
        &["uploader", "--dir", dir, "--listen", "everywhere"],
        // A mistyped level would otherwise silence every line (Targets reads it as a target).
        &["capture", "--dir", dir, "--log-level", "inf0"],
        &[
            "upload",
            "--dir",
            dir,
            "--url",
            url,
            "--log-level",
            "sidecap=loud",
        ],
    ];
    for args in malformed {
        let (code, err) = exit_of(args);
        assert_eq!(code, Some(3), "{args:?}: {err}");
    }
    for sub in ["capture", "upload", "uploader", "repair"] {
        let (code, err) = exit_of(&[sub, "--no-such-flag"]);
        assert_eq!(code, Some(2), "{sub}: {err}");
    }
}
