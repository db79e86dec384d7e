//! A real S3 store for the tests: a single-node Garage (`garage` on PATH, installed by
//! scripts/setup.sh) on 127.0.0.1 with free ports and its data in a temp dir, one per test
//! (about 2.5 s to start), killed on drop. Objects are read back with presigned requests
//! (rusty-s3, the uploader's signer) sent by curl, so the checks go through the S3 API as any
//! client would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};

pub const REGION: &str = "garage";
pub const BUCKET: &str = "caps";

pub struct Garage {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Child,
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Garage {
    /// Starts a node with bucket [`BUCKET`] and a key allowed to read and write it.
    pub fn start() -> Garage {
        let dir = crate::helpers::tempdir();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let config = dir.path().join("garage.toml");
        let d = dir.path().display();
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\nadmin_token = \"{secret}\"\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new("garage")
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn garage (scripts/setup.sh installs it)");
        let mut g = Garage {
            dir,
            config,
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            key_id: String::new(),
            secret: String::new(),
        };
        g.set_up();
        g
    }

    fn set_up(&mut self) {
        // `node id` reads the node's key; the RPC port may not listen yet: `status` waits for it.
        let id = self.retry_cli(&["node", "id", "-q"]);
        let id = id.trim().split('@').next().unwrap().to_string();
        self.retry_cli(&["status"]);
        self.retry_cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        self.retry_cli(&["layout", "apply", "--version", "1"]);
        self.create_bucket(BUCKET);
        let out = self.cli(&["key", "create", "sidecap"]);
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in {out}"))
        };
        self.key_id = field("Key ID:");
        self.secret = field("Secret key:");
        self.allow(BUCKET);
    }

    /// A CLI command retried while the node starts (at most 30 s).
    fn retry_cli(&self, args: &[&str]) -> String {
        let t0 = Instant::now();
        loop {
            match self.try_cli(args) {
                Ok(out) => return out,
                Err(e) => assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "{e}\nserver log: {}",
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn create_bucket(&self, name: &str) {
        // The layout takes a moment to be usable after `apply`.
        self.retry_cli(&["bucket", "create", name]);
    }

    pub fn allow(&self, bucket: &str) {
        self.cli(&[
            "bucket", "allow", "--read", "--write", bucket, "--key", "sidecap",
        ]);
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("garage")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// The uploader's S3 options and credentials for this node (endpoint `endpoint`, which may
    /// be a proxy in front of it).
    pub fn configure(&self, cmd: &mut Command, endpoint: &str) {
        cmd.args(["--s3-endpoint", endpoint, "--s3-region", REGION])
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("POD_NAMESPACE", "ns1")
            .env("POD_NAME", "pod1")
            .env("POD_UID", "uid-1");
    }

    fn bucket(&self, name: &str) -> Bucket {
        Bucket::new(
            self.endpoint.parse().unwrap(),
            UrlStyle::Path,
            name.to_string(),
            REGION,
        )
        .unwrap()
    }

    fn creds(&self) -> Credentials {
        Credentials::new(self.key_id.clone(), self.secret.clone())
    }

    /// GET of a presigned URL with curl: (HTTP status, body).
    fn curl(url: &str, out: &Path) -> (u16, Vec<u8>) {
        let o = Command::new("curl")
            .args(["-sS", "-o"])
            .arg(out)
            .args(["-w", "%{http_code}", url])
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        (code, std::fs::read(out).unwrap_or_default())
    }

    /// The object's bytes, or None when there is none (404).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let b = self.bucket(BUCKET);
        let url = b
            .get_object(Some(&self.creds()), key)
            .sign(Duration::from_secs(600));
        let (code, body) = Self::curl(url.as_str(), &self.dir.path().join("get.out"));
        match code {
            200 => Some(body),
            404 => None,
            c => panic!("GET {key}: HTTP {c}: {}", String::from_utf8_lossy(&body)),
        }
    }

    /// Deletes the object (DeleteObject, presigned, sent by curl).
    pub fn delete(&self, key: &str) {
        let b = self.bucket(BUCKET);
        let url = b
            .delete_object(Some(&self.creds()), key)
            .sign(Duration::from_secs(600));
        let o = Command::new("curl")
            .args([
                "-sS",
                "-X",
                "DELETE",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(url.as_str())
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&o.stdout);
        assert_eq!(code.trim(), "204", "DELETE {key}");
    }

    /// A presigned GET of the bucket with `query` (sorted), its XML answer.
    fn bucket_get(&self, query: &[(&str, &str)]) -> String {
        let b = self.bucket(BUCKET);
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Get,
            b.base_url().clone(),
            &self.key_id,
            &self.secret,
            None,
            REGION,
            600,
            query.iter().copied(),
            std::iter::empty(),
        );
        let (code, body) = Self::curl(url.as_str(), &self.dir.path().join("list.out"));
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(code, 200, "{query:?}: {body}");
        body
    }

    /// Every object key and size in the bucket (ListObjectsV2).
    pub fn list(&self) -> Vec<(String, u64)> {
        let xml = self.bucket_get(&[("list-type", "2")]);
        xml.split("<Contents>")
            .skip(1)
            .map(|c| {
                let key = between(c, "<Key>", "</Key>");
                let size = between(c, "<Size>", "</Size>").parse().unwrap();
                (key, size)
            })
            .collect()
    }

    /// The ETag of an object as listed (a multipart object's ends in `-PARTS`).
    pub fn etag(&self, key: &str) -> String {
        let xml = self.bucket_get(&[("list-type", "2")]);
        xml.split("<Contents>")
            .skip(1)
            .find(|c| between(c, "<Key>", "</Key>") == key)
            .map(|c| between(c, "<ETag>", "</ETag>").replace("&quot;", ""))
            .unwrap_or_else(|| panic!("no {key} in {xml}"))
    }

    /// The keys of multipart uploads in progress (ListMultipartUploads).
    pub fn multipart_uploads(&self) -> Vec<String> {
        let xml = self.bucket_get(&[("uploads", "")]);
        xml.split("<Upload>")
            .skip(1)
            .map(|u| between(u, "<Key>", "</Key>"))
            .collect()
    }
}

fn between(s: &str, a: &str, b: &str) -> String {
    let start = s.find(a).map(|i| i + a.len()).unwrap_or(0);
    let end = s[start..].find(b).map(|i| start + i).unwrap_or(start);
    s[start..end].to_string()
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
