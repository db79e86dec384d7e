//! The S3 destination (issue 15) against a real S3 store: a single-node Garage started per test
//! (tests/it/garage.rs). Objects are read back through the S3 API and compared by SHA-256.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::garage::{Garage, BUCKET};
use crate::helpers::*;
use crate::receiver::sha256_hex;
use crate::upload::{file_status, finished_capture, report, run, upload_cmd, write_pcap};

const KEY_PREFIX: &str = "ns1/pod1";

/// `sidecap upload` of `dir` to `url` on `g` (through `endpoint`, which may be a proxy).
fn s3_upload(g: &Garage, dir: &Path, url: &str, endpoint: &str, grace: &str) -> Command {
    let mut c = upload_cmd(dir, url, grace, "1s");
    g.configure(&mut c, endpoint);
    c.args(["--own-ports", "none"]);
    c
}

fn assert_stored(g: &Garage, dir: &Path, key: &str, name: &str) {
    let data = std::fs::read(dir.join(name)).unwrap();
    let got = g.get(key).unwrap_or_else(|| panic!("no object {key}"));
    assert_eq!(got.len(), data.len(), "{key}: length");
    assert_eq!(sha256_hex(&got), sha256_hex(&data), "{key}: bytes differ");
}

#[test]
fn s3_upload_reads_back_byte_identical_and_a_rerun_sends_nothing() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(3);
    let url = format!("s3://{BUCKET}");
    let (code, _, log) = run(
        &mut s3_upload(&g, dir.path(), &url, &g.endpoint, "20s"),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{log}");
    for n in &names {
        assert_stored(&g, dir.path(), &format!("{KEY_PREFIX}/{n}"), n);
    }
    assert_eq!(g.list().len(), 3, "{:?}", g.list());
    // The same run again: the ledger says every file is there; nothing is sent, no duplicate.
    let (code, _, log) = run(
        &mut s3_upload(&g, dir.path(), &url, &g.endpoint, "20s"),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{log}");
    let rep = report(dir.path());
    for n in &names {
        assert_eq!(file_status(&rep, n), "already_uploaded");
    }
    assert_eq!(rep["totals"]["uploaded"], 0);
    assert_eq!(g.list().len(), 3, "{:?}", g.list());
    assert!(
        rep["url"].as_str().unwrap().starts_with("s3://caps/"),
        "{rep:#}"
    );
}

#[test]
fn s3_multipart_upload_reads_back_byte_identical() {
    require_root();
    let g = Garage::start();
    let dir = tempdir();
    let name = "capture-20261122T154101Z-000001.pcap";
    big_pcap(&dir.path().join(name), 17);
    let mut cmd = s3_upload(&g, dir.path(), "s3://caps/{file}", &g.endpoint, "30s");
    cmd.args(["--s3-part-size", "5MiB"]);
    let (code, _, log) = run(&mut cmd, Duration::from_secs(40));
    assert_eq!(code, 0, "{log}");
    assert_stored(&g, dir.path(), name, name);
    // 17 MiB at 5 MiB: four parts, and the store says so.
    assert!(g.etag(name).ends_with("-4"), "{}", g.etag(name));
    let rep = report(dir.path());
    // Create, 4 parts, complete.
    assert_eq!(rep["files"][0]["attempts"], 6, "{rep:#}");
    assert!(g.multipart_uploads().is_empty());
}

#[test]
fn s3_key_template_renders_pod_and_date_parts() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(1);
    let url = format!(
        "s3://{BUCKET}/c/{{namespace}}/{{pod}}/{{uid}}/{{yyyy}}-{{mm}}-{{dd}}T{{hh}}/{{file}}"
    );
    let before = sidecap::files::rfc3339(std::time::SystemTime::now());
    let mut cmd = s3_upload(&g, dir.path(), &url, &g.endpoint, "20s");
    let (code, _, log) = run(&mut cmd, Duration::from_secs(30));
    let after = sidecap::files::rfc3339(std::time::SystemTime::now());
    assert_eq!(code, 0, "{log}");
    let keys: Vec<String> = g.list().into_iter().map(|(k, _)| k).collect();
    // The hour may turn during the run: either side of it is right.
    let key_at = |t: &str| format!("c/ns1/pod1/uid-1/{}T{}/{}", &t[..10], &t[11..13], names[0]);
    assert!(
        keys == vec![key_at(&before)] || keys == vec![key_at(&after)],
        "{keys:?}"
    );
}

#[test]
fn s3_wrong_credentials_are_rejected_once_with_the_s3_error_code() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(2);
    for (id, secret, code_name) in [
        (g.key_id.as_str(), "0".repeat(64), "SignatureDoesNotMatch"),
        (
            "GK00000000000000000000000",
            g.secret.clone(),
            "InvalidAccessKeyId",
        ),
    ] {
        let mut cmd = s3_upload(
            &g,
            dir.path(),
            &format!("s3://{BUCKET}"),
            &g.endpoint,
            "20s",
        );
        cmd.env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", &secret);
        let (code, took, log) = run(&mut cmd, Duration::from_secs(30));
        assert_eq!(code, 6, "{log}");
        // Refused for good: one request per file, no retry until the deadline.
        assert!(took < Duration::from_secs(10), "{took:?}");
        let rep = report(dir.path());
        for n in &names {
            assert_eq!(file_status(&rep, n), "rejected");
        }
        let f = &rep["files"][0];
        assert_eq!(f["attempts"], 1, "{f:#}");
        let err = f["error"].as_str().unwrap();
        // Garage names a wrong secret as Forbidden/AccessDenied with the reason in the message.
        assert!(
            err.contains(code_name) || err.contains("AccessDenied") || err.contains("Forbidden"),
            "{err}"
        );
        assert!(
            err.contains("HTTP 403") || err.contains("HTTP 400"),
            "{err}"
        );
        assert!(err.contains("bucket caps"), "{err}");
        // The one-line error of the run says it too.
        assert!(
            log.lines()
                .any(|l| l.contains("rejected 2 file(s) for good") && l.contains("bucket caps at")),
            "{log}"
        );
        assert!(
            !log.contains(&secret) && !err.contains(&secret),
            "secret in the log"
        );
        assert!(g.list().is_empty());
    }
}

#[test]
fn s3_missing_bucket_is_a_rejection_naming_no_such_bucket() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(1);
    let mut cmd = s3_upload(&g, dir.path(), "s3://nope/{file}", &g.endpoint, "20s");
    let (code, took, log) = run(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, 6, "{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let rep = report(dir.path());
    assert_eq!(file_status(&rep, &names[0]), "rejected");
    let err = rep["files"][0]["error"].as_str().unwrap();
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(
        err.contains("bucket nope") && err.contains(&g.endpoint),
        "{err}"
    );
    assert!(log.contains("NoSuchBucket"), "{log}");
}

#[test]
fn s3_credentials_from_a_secret_directory() {
    require_root();
    let g = Garage::start();
    let (dir, names) = finished_capture(1);
    let secret_dir = tempdir();
    std::fs::write(
        secret_dir.path().join("AWS_ACCESS_KEY_ID"),
        format!("{}\n", g.key_id),
    )
    .unwrap();
    std::fs::write(
        secret_dir.path().join("AWS_SECRET_ACCESS_KEY"),
        format!("{}\n", g.secret),
    )
    .unwrap();
    let mut cmd = s3_upload(&g, dir.path(), "s3://caps/d/{file}", &g.endpoint, "20s");
    // Wrong ones in the environment: the directory wins.
    cmd.env("AWS_SECRET_ACCESS_KEY", "0".repeat(64))
        .arg("--s3-credentials-dir")
        .arg(secret_dir.path());
    let (code, _, log) = run(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert_stored(&g, dir.path(), &format!("d/{}", names[0]), &names[0]);
    assert!(!log.contains(&g.secret));
}

#[test]
fn s3_refuses_webhook_flags_and_a_template_without_file() {
    let dir = tempdir();
    for (extra, url, needle) in [
        (vec!["--method", "PUT"], "s3://caps", "--method"),
        (vec!["--header", "X-A: b"], "s3://caps", "--header"),
        (vec!["--form", "f"], "s3://caps", "--form"),
        (vec![], "s3://caps/{pod}", "{file}"),
        (
            vec!["--s3-part-size", "1MiB"],
            "s3://caps",
            "--s3-part-size",
        ),
    ] {
        let mut c = upload_cmd(dir.path(), url, "10s", "1s");
        c.args(&extra)
            .env("AWS_ACCESS_KEY_ID", "k1234")
            .env("AWS_SECRET_ACCESS_KEY", "s1234");
        let (code, _, log) = run(&mut c, Duration::from_secs(10));
        assert_eq!(code, 3, "{extra:?} {url}: {log}");
        assert!(log.contains(needle), "{extra:?} {url}: {log}");
    }
}

/// A pcap of about `mib` MiB.
pub(crate) fn big_pcap(path: &Path, mib: u32) {
    write_pcap(path, mib * 1024, 1008);
}
