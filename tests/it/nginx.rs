//! A real nginx (Debian's nginx-light: http_dav_module for PUT, http_ssl_module for TLS)
//! started by a test on loopback ports with a temporary configuration, and a test PKI made with
//! the openssl CLI.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{sh, tempdir};

pub struct Nginx {
    child: Child,
    pub dir: tempfile::TempDir,
    /// Files PUT to /dav/NAME land in root/dav/NAME.
    pub root: PathBuf,
    pub port: u16,
    /// TLS ports: (port, cert) for each certificate given.
    pub tls_ports: Vec<u16>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nginx {
    /// Plain HTTP on `port`, and one TLS server per (cert, key).
    pub fn start(tls: &[(PathBuf, PathBuf)]) -> Nginx {
        let dir = tempdir();
        let d = dir.path();
        let root = d.join("www");
        std::fs::create_dir_all(root.join("dav")).unwrap();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let port = free_port();
        let tls_ports: Vec<u16> = tls.iter().map(|_| free_port()).collect();
        let location = "location /dav/ { dav_methods PUT; create_full_put_path on; dav_access user:rw group:r; }";
        let mut servers = format!(
            "server {{ listen 127.0.0.1:{port}; root {root}; {location} }}\n",
            root = root.display()
        );
        for ((cert, key), p) in tls.iter().zip(&tls_ports) {
            servers.push_str(&format!(
                "server {{ listen 127.0.0.1:{p} ssl; ssl_certificate {}; ssl_certificate_key {}; root {root}; {location} }}\n",
                cert.display(),
                key.display(),
                root = root.display()
            ));
        }
        let tmp = d.join("tmp");
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log {err} info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n access_log {acc};\n client_max_body_size 0;\n client_body_temp_path {t}/body;\n\
             proxy_temp_path {t}/proxy;\n fastcgi_temp_path {t}/fcgi;\n uwsgi_temp_path {t}/uwsgi;\n scgi_temp_path {t}/scgi;\n\
             {servers}}}\n",
            pid = d.join("nginx.pid").display(),
            err = d.join("error.log").display(),
            acc = d.join("access.log").display(),
            t = tmp.display(),
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx installed (scripts/setup.sh: nginx-light)");
        let n = Nginx {
            child,
            dir,
            root,
            port,
            tls_ports,
        };
        let t0 = Instant::now();
        for p in std::iter::once(n.port).chain(n.tls_ports.iter().copied()) {
            while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "nginx did not listen on {p}: {}",
                    std::fs::read_to_string(n.dir.path().join("error.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        n
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA, a server certificate for 127.0.0.1 signed by it, and a self-signed one.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub self_signed: (PathBuf, PathBuf),
}

pub fn make_pki() -> Pki {
    let dir = tempdir();
    let p = |n: &str| dir.path().join(n);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    let (ca, ca_key) = (s(&p("ca.pem")), s(&p("ca.key")));
    a.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=sidecap test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    sh("openssl", &a);
    let (key, csr, cert) = (
        s(&p("server.key")),
        s(&p("server.csr")),
        s(&p("server.pem")),
    );
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    sh("openssl", &a);
    let ext = p("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    let ext_s = s(&ext);
    sh(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext_s,
        ],
    );
    let (ss_key, ss) = (s(&p("self.key")), s(&p("self.pem")));
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        &ss_key,
        "-out",
        &ss,
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
    ]);
    sh("openssl", &a);
    Pki {
        ca: p("ca.pem"),
        server: (p("server.pem"), p("server.key")),
        self_signed: (p("self.pem"), p("self.key")),
        dir,
    }
}
