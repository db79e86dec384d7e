//! A minimal stub resolver whose queries leave from the uploader's own ports (issue 11), so the
//! capture leaves them out like the uploads themselves. The system resolver (getaddrinfo) picks
//! an ephemeral port that the capture cannot tell from an application's.
//!
//! It does what a Pod needs and no more: IP literals and `/etc/hosts` names (`localhost`) need
//! no query; other names are tried as glibc does with the `nameserver`, `search` and
//! `options ndots:/timeout:/attempts:` lines of `/etc/resolv.conf` (the kubelet writes
//! `ndots:5` and three search domains), A and AAAA over UDP, TCP when an answer is truncated.
//! No EDNS is sent, so a UDP answer fits 512 bytes and is never IP-fragmented: later fragments
//! carry no port, and the capture could not leave them out. `SIDECAP_RESOLV_CONF` points at
//! another resolv.conf (tests).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::forward as connect;
use super::PortRange;

/// resolv.conf's defaults (resolv.conf(5)).
const DEFAULT_NDOTS: usize = 1;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS: u32 = 2;
/// glibc uses at most three nameservers.
const MAX_NAMESERVERS: usize = 3;
/// The classic DNS message limit over UDP without EDNS (RFC 1035 4.2.1).
const UDP_MAX: usize = 512;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{name}: no such host (tried {tried})")]
    NotFound { name: String, tried: String },
    #[error("{name}: no answer from the nameservers in {conf}: {source}")]
    NoAnswer {
        name: String,
        conf: String,
        source: std::io::Error,
    },
    #[error("{name}: no nameserver in {conf}")]
    NoNameserver { name: String, conf: String },
}

/// The lines of resolv.conf the resolver uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: u32,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut c = ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: DEFAULT_NDOTS,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        };
        for line in text.lines() {
            let mut w = line.split_whitespace();
            match w.next() {
                Some("nameserver") if c.nameservers.len() < MAX_NAMESERVERS => {
                    // A scoped IPv6 address (fe80::1%eth0) is not parsed; it is skipped.
                    if let Some(ip) = w.next().and_then(|a| a.parse().ok()) {
                        c.nameservers.push(ip);
                    }
                }
                // The last search or domain line wins, as in glibc.
                Some("search") | Some("domain") => {
                    c.search = w.map(|d| d.trim_end_matches('.').to_string()).collect()
                }
                Some("options") => {
                    for o in w {
                        let (k, v) = o.split_once(':').unwrap_or((o, ""));
                        match (k, v.parse::<u64>()) {
                            ("ndots", Ok(n)) => c.ndots = n.min(15) as usize,
                            ("timeout", Ok(n)) => c.timeout = Duration::from_secs(n.clamp(1, 30)),
                            ("attempts", Ok(n)) => c.attempts = n.clamp(1, 5) as u32,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }

    /// The names to try for `name`, in order (resolv.conf(5), `ndots`).
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(abs) = name.strip_suffix('.') {
            return vec![abs.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

/// Looks names up from the uploader's own ports.
#[derive(Clone, Debug)]
pub struct Resolver {
    range: PortRange,
    conf_path: PathBuf,
    hosts_path: PathBuf,
}

impl Resolver {
    pub fn new(range: PortRange) -> Resolver {
        let conf_path = std::env::var_os("SIDECAP_RESOLV_CONF")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/etc/resolv.conf".into());
        Resolver {
            range,
            conf_path,
            hosts_path: "/etc/hosts".into(),
        }
    }

    /// The addresses of `host` (IPv4 first), with `port`.
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let from_hosts = hosts_lookup(&self.hosts_path, host);
        if !from_hosts.is_empty() {
            return Ok(with_port(from_hosts, port));
        }
        // Read each time: it is small, and it may change while a long-running uploader lives.
        let conf = ResolvConf::parse(&std::fs::read_to_string(&self.conf_path).unwrap_or_default());
        let shown = self.conf_path.display().to_string();
        if conf.nameservers.is_empty() {
            return Err(DnsError::NoNameserver {
                name: host.into(),
                conf: shown,
            });
        }
        let candidates = conf.candidates(host);
        let mut last_err = None;
        for name in &candidates {
            let (a, aaaa) = tokio::join!(
                self.query(&conf, name, TYPE_A),
                self.query(&conf, name, TYPE_AAAA)
            );
            let mut found = Vec::new();
            for r in [a, aaaa] {
                match r {
                    Ok(ips) => found.extend(ips),
                    Err(e) => last_err = Some(e),
                }
            }
            if !found.is_empty() {
                return Ok(with_port(found, port));
            }
        }
        match last_err {
            Some(e) => Err(DnsError::NoAnswer {
                name: host.into(),
                conf: shown,
                source: e,
            }),
            None => Err(DnsError::NotFound {
                name: host.into(),
                tried: candidates.join(", "),
            }),
        }
    }

    /// Asks each nameserver in turn, `attempts` rounds. Ok(empty) is NXDOMAIN or no record
    /// of this type; Err means no nameserver answered usefully.
    async fn query(
        &self,
        conf: &ResolvConf,
        name: &str,
        qtype: u16,
    ) -> std::io::Result<Vec<IpAddr>> {
        let mut last = std::io::Error::other("no attempt made");
        for _ in 0..conf.attempts {
            for ns in &conf.nameservers {
                let server = SocketAddr::new(*ns, 53);
                match tokio::time::timeout(conf.timeout, self.ask(server, name, qtype)).await {
                    Ok(Ok(ips)) => return Ok(ips),
                    Ok(Err(e)) => last = e,
                    Err(_) => {
                        last = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "{server} did not answer within {} s",
                                conf.timeout.as_secs()
                            ),
                        )
                    }
                }
            }
        }
        Err(last)
    }

    /// One question to one server: UDP, then TCP if the answer is truncated.
    async fn ask(
        &self,
        server: SocketAddr,
        name: &str,
        qtype: u16,
    ) -> std::io::Result<Vec<IpAddr>> {
        let id: u16 = rand::random();
        let q = build_query(id, name, qtype)?;
        let sock = connect::udp_from_range(self.range, server).await?;
        sock.send(&q).await?;
        let mut buf = [0u8; UDP_MAX];
        loop {
            let n = sock.recv(&mut buf).await?;
            match parse_answer(&buf[..n], id, qtype) {
                // Not our answer (a stray or spoofed datagram): keep waiting.
                Err(Answer::Mismatch) => continue,
                Err(Answer::Truncated) => break,
                Err(Answer::Failed(e)) => return Err(e),
                Ok(ips) => return Ok(ips),
            }
        }
        let mut tcp = connect::tcp_from_range(self.range, server).await?;
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        tcp.write_all(&framed).await?;
        let len = tcp.read_u16().await? as usize;
        let mut msg = vec![0u8; len];
        tcp.read_exact(&mut msg).await?;
        match parse_answer(&msg, id, qtype) {
            Ok(ips) => Ok(ips),
            Err(Answer::Failed(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("bad answer over TCP")),
        }
    }
}

fn with_port(ips: Vec<IpAddr>, port: u16) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    // IPv4 first: a Pod without IPv6 fails IPv6 connects anyway, but only after a try.
    v.sort_by_key(|a| a.is_ipv6());
    v.dedup();
    v
}

/// The addresses /etc/hosts gives `name` (case-insensitive, as glibc).
fn hosts_lookup(path: &std::path::Path, name: &str) -> Vec<IpAddr> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let name = name.trim_end_matches('.');
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next().unwrap_or("");
            let mut w = l.split_whitespace();
            let ip: IpAddr = w.next()?.parse().ok()?;
            w.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// A recursive query for `name` (RFC 1035 4.1), no EDNS.
fn build_query(id: u16, name: &str, qtype: u16) -> std::io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.').filter(|l| !l.is_empty()) {
        if label.len() > 63 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a DNS label is longer than 63 bytes",
            ));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // class IN
    Ok(q)
}

enum Answer {
    /// Not the answer to this question.
    Mismatch,
    /// TC set: ask again over TCP.
    Truncated,
    Failed(std::io::Error),
}

/// The A or AAAA records of an answer (CNAMEs are followed by the server; their targets'
/// records are in the same answer). NXDOMAIN and "no data" are Ok(empty).
fn parse_answer(m: &[u8], id: u16, qtype: u16) -> Result<Vec<IpAddr>, Answer> {
    let bad = || Answer::Failed(std::io::Error::other("malformed DNS answer"));
    if m.len() < 12 || u16::from_be_bytes([m[0], m[1]]) != id || m[2] & 0x80 == 0 {
        return Err(Answer::Mismatch);
    }
    if m[2] & 0x02 != 0 {
        return Err(Answer::Truncated);
    }
    match m[3] & 0x0f {
        0 => {}
        3 => return Ok(Vec::new()), // NXDOMAIN
        rcode => {
            return Err(Answer::Failed(std::io::Error::other(format!(
                "the nameserver answered with error code {rcode}"
            ))))
        }
    }
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(m, at).ok_or_else(bad)? + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..an {
        at = skip_name(m, at).ok_or_else(bad)?;
        let h = m.get(at..at + 10).ok_or_else(bad)?;
        let (rtype, rdlen) = (
            u16::from_be_bytes([h[0], h[1]]),
            usize::from(u16::from_be_bytes([h[8], h[9]])),
        );
        let data = m.get(at + 10..at + 10 + rdlen).ok_or_else(bad)?;
        match (rtype, data.len()) {
            (TYPE_A, 4) if qtype == TYPE_A => ips.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) if qtype == TYPE_AAAA => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                ips.push(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => {}
        }
        at += 10 + rdlen;
    }
    Ok(ips)
}

/// The offset after a (possibly compressed) name at `at`.
fn skip_name(m: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *m.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2), // a pointer ends the name
            l => at += 1 + usize::from(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_resolv_conf_is_read_like_glibc() {
        let c = ResolvConf::parse(
            "search ns1.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
        );
        assert_eq!(c.nameservers, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.ndots, 5);
        assert_eq!(
            c.candidates("hooks.example.com"),
            vec![
                "hooks.example.com.ns1.svc.cluster.local",
                "hooks.example.com.svc.cluster.local",
                "hooks.example.com.cluster.local",
                "hooks.example.com",
            ]
        );
        assert_eq!(
            c.candidates("hooks.example.com."),
            vec!["hooks.example.com"]
        );
        let plain = ResolvConf::parse("nameserver 127.0.0.53\nsearch corp\n");
        assert_eq!(plain.candidates("a.b"), vec!["a.b", "a.b.corp"]);
        assert_eq!(plain.candidates("a"), vec!["a.corp", "a"]);
    }

    #[test]
    fn answers_are_parsed_with_compression_and_cnames() {
        let q = build_query(0x1234, "h.example", TYPE_A).unwrap();
        let mut m = q.clone();
        m[2] |= 0x80; // QR
        m[7] = 2; // two answers
                  // CNAME h.example -> x (pointer to the question name), then x A 10.1.2.3.
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'x', 0xc0, 14]);
        m.extend_from_slice(&[0xc0, 14, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        let ips = parse_answer(&m, 0x1234, TYPE_A).ok().unwrap();
        assert_eq!(ips, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert!(matches!(
            parse_answer(&m, 0x9999, TYPE_A),
            Err(Answer::Mismatch)
        ));
        m[2] |= 0x02;
        assert!(matches!(
            parse_answer(&m, 0x1234, TYPE_A),
            Err(Answer::Truncated)
        ));
        assert_eq!(q[10..12], [0, 0], "no additional record: no OPT (EDNS)");
    }

    #[test]
    fn hosts_names_need_no_query() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        std::fs::write(&p, "127.0.0.1 localhost\n::1 localhost ip6-localhost # c\n").unwrap();
        assert_eq!(hosts_lookup(&p, "LOCALHOST.").len(), 2);
        assert!(hosts_lookup(&p, "other").is_empty());
    }
}
