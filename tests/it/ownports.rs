//! Issue 11: the capture never records the uploader's own traffic (uploads, DNS lookups), and
//! still records every packet of the application, including its traffic to the receiver's own
//! host and port. Everything runs in network namespaces the test creates: a capture on `lo`, on
//! `any` and on a veth, a `--continuous` uploader with a short poll posting every finished file,
//! an application sending UDP and HTTP from its own sockets, and a reference capture with
//! `--own-ports none` that shows what the uploader sent. tshark reads every file.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::receiver::Receiver;

/// The default --own-ports range, as the binary has it.
const FIRST: u16 = 61000;
const LAST: u16 = 61031;
/// A port inside the range that the application sends to (a remote server's port).
const APP_PORT_IN_RANGE: u16 = 61010;

fn in_range(p: u16) -> bool {
    (FIRST..=LAST).contains(&p)
}

/// Runs `f` on a thread inside the named network namespace (sockets made there stay there).
fn in_ns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let f_ns = std::fs::File::open(format!("/var/run/netns/{name}")).expect("netns file");
            nix::sched::setns(f_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

fn capture_in(ns: &Netns, iface: &str, dir: &Path, extra: &[&str]) -> Proc {
    let mut c = ns.command(&bin());
    c.args(["--log-format", "json", "capture", "-i", iface, "-w"])
        .arg(dir)
        .args(["--listen", "off", "-q"])
        .args(extra);
    let p = Proc::spawn(&mut c);
    p.wait_log("Capture is live", Duration::from_secs(10));
    p
}

fn uploader_in(ns: &Netns, dir: &Path, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut c = ns.command(&bin());
    c.args(["--log-format", "json", "uploader", "--continuous", "--dir"])
        .arg(dir)
        .args(["--url", url, "--poll-interval", "200ms", "--listen", "off"])
        .args(extra)
        .envs(env.iter().copied());
    Proc::spawn(&mut c)
}

fn stop(mut p: Proc) -> String {
    p.signal(nix::sys::signal::Signal::SIGTERM);
    let code = p.wait_timeout(Duration::from_secs(20)).code();
    assert_eq!(code, Some(0), "log:\n{}", p.log_text());
    p.log_text()
}

/// One packet as tshark decodes it.
#[derive(Debug, Default)]
struct Pkt {
    ports: Vec<u16>,
    udp_dst: Option<u16>,
    tcp_dst: Option<u16>,
    syn: bool,
    uri: String,
    dns_name: String,
}

/// Every packet of every finished file in `dir`; HTTP decoded on `http_port`.
fn packets(dir: &Path, http_port: u16) -> Vec<Pkt> {
    let mut all = Vec::new();
    let files = files_with(dir, ".pcap");
    assert!(!files.is_empty(), "no capture file in {}", dir.display());
    for f in files {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&f)
            .args(["-d", &format!("tcp.port=={http_port},http"), "-T", "fields"])
            // The request line from the head's own segment: a body may be in the next file.
            .args(["-o", "http.desegment_body:FALSE"])
            .args(["-E", "separator=|", "-E", "occurrence=f"])
            .args([
                "-e",
                "udp.srcport",
                "-e",
                "udp.dstport",
                "-e",
                "tcp.srcport",
            ])
            .args([
                "-e",
                "tcp.dstport",
                "-e",
                "tcp.flags.syn",
                "-e",
                "tcp.flags.ack",
            ])
            .args(["-e", "http.request.uri", "-e", "dns.qry.name"])
            .args(["-e", "icmp.type", "-e", "icmpv6.type"])
            .output()
            .expect("tshark installed");
        assert!(out.status.success(), "tshark on {}: {:?}", f.display(), out);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let c: Vec<&str> = line.split('|').collect();
            let n = |i: usize| c.get(i).and_then(|v| v.parse::<u16>().ok());
            let flag = |i: usize| matches!(c.get(i).copied(), Some("1") | Some("True"));
            // An ICMP error (port unreachable: nothing listens on the app's UDP port) quotes
            // the datagram's ports; it is not the datagram.
            if [8, 9]
                .iter()
                .any(|&i| c.get(i).is_some_and(|v| !v.is_empty()))
            {
                continue;
            }
            all.push(Pkt {
                ports: [n(0), n(1), n(2), n(3)].into_iter().flatten().collect(),
                udp_dst: n(1),
                tcp_dst: n(3),
                syn: flag(4) && !flag(5),
                uri: c.get(6).unwrap_or(&"").to_string(),
                dns_name: c.get(7).unwrap_or(&"").to_string(),
            });
        }
    }
    all
}

fn count(p: &[Pkt], f: impl Fn(&Pkt) -> bool) -> usize {
    p.iter().filter(|x| f(x)).count()
}

/// What the application does, from its own sockets: `udp` datagrams to `udp_to`, a few to a
/// port inside the range at `udp_to`'s host, and `posts` HTTP POSTs to the receiver, each on its
/// own connection.
struct App {
    udp: u32,
    posts: u32,
}

impl App {
    fn run(&self, ns: &str, udp_to: SocketAddr, receiver: SocketAddr) {
        let (udp, posts) = (self.udp, self.posts);
        in_ns(ns, move || {
            let bind = if udp_to.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let s = UdpSocket::bind(bind).unwrap();
            let in_range_to = SocketAddr::new(udp_to.ip(), APP_PORT_IN_RANGE);
            let mut buf = [0x5au8; 200];
            for i in 0..udp {
                buf[..4].copy_from_slice(&i.to_be_bytes());
                s.send_to(&buf, udp_to).unwrap();
                // At the end, past the capture's first ring block, which libpcap filters in
                // user space where the direction is unknown (see ownports::bpf_exclusion).
                if i >= udp - 20 {
                    s.send_to(&buf, in_range_to).unwrap();
                }
                if i % 100 == 99 {
                    // Spread over a few rotations and upload polls.
                    std::thread::sleep(Duration::from_millis(60));
                }
            }
            for i in 0..posts {
                post(receiver, i);
            }
        });
    }
}

fn post(to: SocketAddr, i: u32) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One write: the head in one segment, so tshark reads its request line on its own.
    let mut req = format!(
        "POST /app/{i} HTTP/1.1\r\nHost: {to}\r\nContent-Length: 3000\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&[b'x'; 3000]);
    s.write_all(&req).unwrap();
    // The status line is enough: the receiver keeps connections open for the next request.
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer,
        b"HTTP/1.1 200",
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Waits until every finished file of `dir` was accepted by the receiver.
fn wait_uploaded(dir: &Path, rx: &Receiver) {
    let t0 = Instant::now();
    loop {
        let files = files_with(dir, ".pcap").len();
        let uploads = count_uploads(rx);
        if files > 0 && uploads >= files && files_with(dir, ".part").is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{uploads} uploads for {files} files"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count_uploads(rx: &Receiver) -> usize {
    rx.accepted()
        .iter()
        .filter(|r| r.path.starts_with("/upload/"))
        .count()
}

/// Asserts the application's packets are all in `p`, and none of the uploader's.
fn assert_app_only(what: &str, p: &[Pkt], app: &App, udp_port: u16, rx_port: u16) {
    let copies = 1;
    assert_eq!(
        count(p, |x| x.udp_dst == Some(udp_port)),
        copies * app.udp as usize,
        "{what}: the app's UDP datagrams"
    );
    assert_eq!(
        count(p, |x| x.syn && x.tcp_dst == Some(rx_port)),
        copies * app.posts as usize,
        "{what}: connections to the receiver's port: the app's only"
    );
    assert_eq!(
        count(p, |x| x.uri.starts_with("/app/")),
        copies * app.posts as usize,
        "{what}: the app's POSTs"
    );
    assert_eq!(
        count(p, |x| x.uri.starts_with("/upload/")),
        0,
        "{what}: an upload request was captured"
    );
}

/// Packets with a port of the range, other than the app's datagrams to APP_PORT_IN_RANGE.
fn uploader_packets(p: &[Pkt]) -> usize {
    count(p, |x| {
        x.udp_dst != Some(APP_PORT_IN_RANGE) && x.ports.iter().any(|&q| in_range(q))
    })
}

/// A DNS server on 127.0.0.53:53 inside `ns`: `name` has the A record 127.0.0.1, every other
/// name is NXDOMAIN. Returns the source ports of the queries it got, by name.
struct DnsServer {
    seen: std::sync::Arc<std::sync::Mutex<HashMap<String, Vec<u16>>>>,
}

impl DnsServer {
    fn start(ns: &str, name: &'static str) -> DnsServer {
        let sock = in_ns(ns, || UdpSocket::bind("127.0.0.53:53").unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let seen: std::sync::Arc<std::sync::Mutex<HashMap<String, Vec<u16>>>> = Default::default();
        let s2 = seen.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut buf = [0u8; 512];
            while t0.elapsed() < Duration::from_secs(120) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let q = &buf[..n];
                let (qname, end) = read_qname(q);
                let qtype = u16::from_be_bytes([q[end], q[end + 1]]);
                s2.lock()
                    .unwrap()
                    .entry(qname.clone())
                    .or_default()
                    .push(from.port());
                let mut a = q[..end + 4].to_vec();
                a[2] = 0x81; // QR, RD
                a[3] = 0x80; // RA, NOERROR
                if qname != name {
                    a[3] |= 3; // NXDOMAIN
                } else if qtype == 1 {
                    a[7] = 1;
                    a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
                }
                let _ = sock.send_to(&a, from);
            }
        });
        DnsServer { seen }
    }

    fn ports_for(&self, name: &str) -> Vec<u16> {
        self.seen
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

fn read_qname(q: &[u8]) -> (String, usize) {
    let mut at = 12;
    let mut labels = Vec::new();
    while q[at] != 0 {
        let l = q[at] as usize;
        labels.push(String::from_utf8_lossy(&q[at + 1..at + 1 + l]).to_string());
        at += 1 + l;
    }
    (labels.join("."), at + 1)
}

/// The application asks the DNS server itself, from its own socket: that is app traffic.
fn app_dns_query(ns: &str, name: &str) {
    let name = name.to_string();
    in_ns(ns, move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut q = vec![0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        s.send_to(&q, "127.0.0.53:53").unwrap();
        let mut buf = [0u8; 512];
        s.recv_from(&mut buf)
            .expect("the test's DNS server answers");
    });
}

#[test]
fn uploads_and_their_dns_lookups_are_not_captured_on_lo_and_the_apps_traffic_is() {
    require_root();
    let ns = Netns::new("own");
    let (up, reference) = (tempdir(), tempdir());
    let dns = DnsServer::start(&ns.name, "receiver.test");
    let conf = tempdir();
    let resolv = conf.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "search ns1.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.53\noptions ndots:5\n",
    )
    .unwrap();
    let rx = in_ns(&ns.name, || Receiver::start(vec![]));
    let url = format!("http://receiver.test:{}/upload/{{file}}", rx.addr.port());
    let cap = capture_in(&ns, "lo", up.path(), &["-C", "60KB"]);
    let refcap = capture_in(&ns, "lo", reference.path(), &["--own-ports", "none"]);
    let resolv_env = resolv.to_string_lossy().to_string();
    let uploader = uploader_in(
        &ns,
        up.path(),
        &url,
        &[],
        &[("SIDECAP_RESOLV_CONF", &resolv_env)],
    );
    let udp_port = unique_port();
    let app = App {
        udp: 2000,
        posts: 5,
    };
    app.run(&ns.name, ([127, 0, 0, 1], udp_port).into(), rx.addr);
    app_dns_query(&ns.name, "app.test");
    std::thread::sleep(Duration::from_millis(500));
    stop(cap);
    wait_uploaded(up.path(), &rx);
    stop(refcap);
    let log = stop(uploader);

    let files = files_with(up.path(), ".pcap").len();
    assert!(
        files >= 3,
        "-C 60KB made {files} files: too few uploads to tell"
    );
    assert_eq!(count_uploads(&rx), files, "each file once; log:\n{log}");
    let p = packets(up.path(), rx.addr.port());
    assert_app_only("lo", &p, &app, udp_port, rx.addr.port());
    assert_eq!(uploader_packets(&p), 0, "uploader packets in the capture");
    // On lo both ends are local: datagrams to a port of the range are left out (the documented
    // case a capture cannot tell from the uploader's).
    assert_eq!(count(&p, |x| x.udp_dst == Some(APP_PORT_IN_RANGE)), 0);
    assert_eq!(count(&p, |x| x.dns_name == "receiver.test"), 0);
    assert_eq!(
        count(&p, |x| x.dns_name == "app.test"),
        2,
        "the app's query and answer"
    );

    // What the uploader sent, as the reference capture saw it: there was something to leave out.
    // (Request lines on a kept-alive connection follow a body tshark does not reassemble
    // here, so only the first of each connection is counted: at least one.)
    let r = packets(reference.path(), rx.addr.port());
    assert!(count(&r, |x| x.uri.starts_with("/upload/")) >= 1);
    assert!(uploader_packets(&r) > 0);
    assert!(count(&r, |x| x.dns_name == "receiver.test") >= 2);
    assert_eq!(count(&r, |x| x.udp_dst == Some(APP_PORT_IN_RANGE)), 20);
    let ports = dns.ports_for("receiver.test");
    assert!(
        !ports.is_empty() && ports.iter().all(|&q| in_range(q)),
        "{ports:?}"
    );
    // ndots:5: the search domains were asked first, from the range too.
    let searched = dns.ports_for("receiver.test.ns1.svc.cluster.local");
    assert!(!searched.is_empty() && searched.iter().all(|&q| in_range(q)));
}

#[test]
fn uploads_over_a_veth_are_not_captured_on_any_or_the_interface_and_remote_ports_in_the_range_are()
{
    require_root();
    let ns = Netns::new("ownv");
    let (up, on_veth, reference) = (tempdir(), tempdir(), tempdir());
    let b_ip = ns.b_ip.clone();
    let rx = in_ns(&ns.peer, move || {
        Receiver::start_on(&format!("{b_ip}:0"), vec![])
    });
    let url = format!("http://{}/upload/{{file}}", rx.addr);
    let cap = capture_in(&ns, "any", up.path(), &["-C", "60KB"]);
    let veth = capture_in(&ns, &ns.a, on_veth.path(), &[]);
    let refcap = capture_in(&ns, "any", reference.path(), &["--own-ports", "none"]);
    let uploader = uploader_in(&ns, up.path(), &url, &[], &[]);
    let udp_port = unique_port();
    let app = App {
        udp: 2000,
        posts: 5,
    };
    let to: SocketAddr = format!("{}:{udp_port}", ns.b_ip).parse().unwrap();
    app.run(&ns.name, to, rx.addr);
    std::thread::sleep(Duration::from_millis(500));
    stop(cap);
    wait_uploaded(up.path(), &rx);
    stop(veth);
    stop(refcap);
    stop(uploader);

    let files = files_with(up.path(), ".pcap").len();
    assert!(files >= 3, "-C 60KB made {files} files");
    for (what, dir) in [("any", up.path()), ("veth", on_veth.path())] {
        let p = packets(dir, rx.addr.port());
        assert_app_only(what, &p, &app, udp_port, rx.addr.port());
        assert_eq!(uploader_packets(&p), 0, "{what}: uploader packets captured");
        // A remote port in the range is the app's: outgoing, from an ordinary port.
        assert_eq!(
            count(&p, |x| x.udp_dst == Some(APP_PORT_IN_RANGE)),
            20,
            "{what}: the app's datagrams to a remote port inside the range"
        );
    }
    let r = packets(reference.path(), rx.addr.port());
    assert!(count(&r, |x| x.uri.starts_with("/upload/")) >= 1);
    assert!(uploader_packets(&r) > 0);
}

#[test]
fn uploads_to_ipv6_loopback_are_not_captured_on_any() {
    require_root();
    let ns = Netns::new("own6");
    let up = tempdir();
    let rx = in_ns(&ns.name, || Receiver::start_on("[::1]:0", vec![]));
    let url = format!("http://{}/upload/{{file}}", rx.addr);
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let cap = capture_in(&ns, "any", up.path(), &["-C", "60KB"]);
    let uploader = uploader_in(&ns, up.path(), &url, &[], &[]);
    let udp_port = unique_port();
    let app = App {
        udp: 1500,
        posts: 3,
    };
    app.run(
        &ns.name,
        format!("[::1]:{udp_port}").parse().unwrap(),
        rx.addr,
    );
    std::thread::sleep(Duration::from_millis(500));
    stop(cap);
    wait_uploaded(up.path(), &rx);
    stop(uploader);
    assert!(files_with(up.path(), ".pcap").len() >= 3);
    let p = packets(up.path(), rx.addr.port());
    assert_app_only("any, ::1", &p, &app, udp_port, rx.addr.port());
    assert_eq!(uploader_packets(&p), 0, "uploader packets captured");
}

#[test]
fn own_ports_none_captures_the_uploads_for_debugging_the_uploader() {
    require_root();
    let ns = Netns::new("ownn");
    let up = tempdir();
    let rx = in_ns(&ns.name, || Receiver::start(vec![]));
    let url = format!("http://{}/upload/{{file}}", rx.addr);
    let none = [("SIDECAP_OWN_PORTS", "none")];
    let mut c = ns.command(&bin());
    c.args(["--log-format", "json", "capture", "-i", "lo", "-w"])
        .arg(up.path())
        .args(["--listen", "off", "-q", "-C", "60KB"])
        .envs(none);
    let cap = Proc::spawn(&mut c);
    cap.wait_log("Capture is live", Duration::from_secs(10));
    let uploader = uploader_in(&ns, up.path(), &url, &[], &none);
    let udp_port = unique_port();
    let app = App {
        udp: 1000,
        posts: 2,
    };
    app.run(&ns.name, ([127, 0, 0, 1], udp_port).into(), rx.addr);
    // Uploads of the first files are captured into the later ones.
    let t0 = Instant::now();
    while count_uploads(&rx) < 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop(cap);
    wait_uploaded(up.path(), &rx);
    stop(uploader);
    let p = packets(up.path(), rx.addr.port());
    assert!(
        count(&p, |x| x.uri.starts_with("/upload/")) >= 1,
        "with --own-ports none the uploads are captured"
    );
    assert_eq!(count(&p, |x| x.udp_dst == Some(udp_port)), 1000);
    assert_eq!(count(&p, |x| x.udp_dst == Some(APP_PORT_IN_RANGE)), 20);
}

/// The client port and the target of each tunnel a proxy opened.
type Tunnels = std::sync::Arc<std::sync::Mutex<Vec<(u16, String)>>>;

/// A CONNECT proxy on 127.0.0.1: records the client's port and the target of each tunnel.
fn connect_proxy() -> (SocketAddr, Tunnels) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Tunnels = Default::default();
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().take(20) {
            let Ok(mut c) = c else { continue };
            let peer = c.peer_addr().unwrap().port();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap() <= 2 {
                    break;
                }
            }
            s2.lock().unwrap().push((peer, target.clone()));
            let up = TcpStream::connect(&target).unwrap();
            c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .unwrap();
            let (mut up_w, mut c_w) = (up.try_clone().unwrap(), c);
            // `r` may hold bytes read past the head: they are the tunnel's first bytes.
            std::thread::spawn(move || std::io::copy(&mut r, &mut up_w));
            std::thread::spawn(move || {
                let mut up = up;
                std::io::copy(&mut up, &mut c_w)
            });
        }
    });
    (addr, seen)
}

#[test]
fn uploads_through_an_http_proxy_tunnel_from_the_uploaders_ports() {
    require_root();
    let dir = tempdir();
    // A finished capture file: the pcap header and one record.
    let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    pcap.extend_from_slice(&[0xff, 0xff, 0, 0, 1, 0, 0, 0]);
    pcap.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4]);
    std::fs::write(
        dir.path().join("capture-20260101T000000Z-000001.pcap"),
        &pcap,
    )
    .unwrap();
    let rx = Receiver::start(vec![]);
    let (proxy, seen) = connect_proxy();
    let proxy_url = format!("http://{proxy}");
    let mut c = Command::new(bin());
    c.args(["--log-format", "json", "uploader", "--continuous", "--dir"])
        .arg(dir.path())
        .args([
            "--url",
            &rx.url("/upload/{file}"),
            "--poll-interval",
            "200ms",
        ])
        .args(["--listen", "off"])
        .env("HTTP_PROXY", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let p = Proc::spawn(&mut c);
    let t0 = Instant::now();
    while count_uploads(&rx) < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no upload; log:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = stop(p);
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty(),
        "the upload did not go through the proxy; log:\n{log}"
    );
    for (port, target) in &seen {
        assert!(in_range(*port), "proxy connection from port {port}");
        assert_eq!(target, &rx.addr.to_string());
    }
}

#[test]
fn a_refused_connection_is_reported_with_its_reason_through_the_forwarder() {
    // reqwest only sees its Unix stream close; the report must still say why.
    let (dir, _) = crate::upload::finished_capture(1);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/in/{{file}}", closed.local_addr().unwrap());
    drop(closed);
    let mut c = crate::upload::upload_cmd(dir.path(), &url, "3s", "1s");
    let mut p = Proc::spawn(&mut c);
    let code = p.wait_timeout(Duration::from_secs(10)).code();
    assert_eq!(code, Some(5), "{}", p.log_text());
    let rep: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("capture.upload-report.json")).unwrap(),
    )
    .unwrap();
    let err = rep["files"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("cannot connect to the receiver from the uploader's ports 61000-61031")
            && err.contains("Connection refused"),
        "{err}"
    );
}
