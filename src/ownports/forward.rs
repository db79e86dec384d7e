//! Every socket the uploader opens leaves from a port of its own range (`--own-ports`, issue 11),
//! so the capture in the same Pod can leave its packets out ([`crate::ownports`]).
//!
//! reqwest cannot bind a local port, but it can send every connection through a Unix socket
//! (TLS, HTTP and the timeouts stay reqwest's). [`OwnPorts`] listens on a private Unix socket
//! and, for each stream reqwest opens, resolves the receiver ([`super::dns`], from the range
//! too), binds a TCP socket to a free port of the range, connects, and copies bytes both ways.
//! It runs on its own thread with its own small runtime, so it serves every caller (the
//! continuous loop, the HTTP preStop hook, `sidecap upload`) whatever their runtime does.
//!
//! What reqwest no longer sees, and how it is kept:
//! - the destination: there is one receiver (`--url`; `{file}` may only be in the path);
//! - proxies (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, read as reqwest reads them):
//!   the forwarder connects to the proxy and opens a `CONNECT` tunnel, for http:// URLs too;
//! - why a connect failed: reqwest only sees the Unix stream close, so the forwarder keeps the
//!   last failure and the engine reports it ([`OwnPorts::failure_since`]).
//!
//! Ports are taken round-robin, skipping ports in use (EADDRINUSE at bind) and 4-tuples still
//! in TIME_WAIT (EADDRNOTAVAIL at connect); `SO_REUSEADDR` lets two connections to different
//! receivers share a port.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::client::proxy::matcher::Matcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::dns::Resolver;
use super::PortRange;

/// Resolving and connecting one stream (through a proxy: and its CONNECT answer) takes at most
/// this long. reqwest's own limits are usually shorter: its connect timeout covers this for
/// https (the TLS handshake waits for it), the engine's watchdog for http.
const SETUP_LIMIT: Duration = Duration::from_secs(10);
/// One connect to one address.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Copy buffers per direction: 64 KiB is what the engine hands reqwest per body chunk.
const COPY_BUF: usize = 64 * 1024;
/// A proxy's answer to CONNECT is a status line and a few headers.
const PROXY_ANSWER_MAX: usize = 16 * 1024;
/// How long a recorded failure explains a reqwest error.
const FAILURE_FRESH: Duration = Duration::from_secs(60);

/// Where the next socket starts looking in the range: round-robin, so a port whose last
/// connection is in TIME_WAIT is not tried first again.
static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--own-ports: the host or port of --url changes with {{file}}: the uploader sends through one connection target; put {{file}} in the path, or use --own-ports none")]
    HostVaries,
    #[error("--own-ports: invalid --url: {0}")]
    Url(String),
    #[error("--own-ports: proxy {proxy}: only http:// proxies can be used (a CONNECT tunnel from the uploader's ports); use --own-ports none for others")]
    ProxyScheme { proxy: String },
    #[error("--own-ports: cannot create the uploader's private socket (tried {tried})")]
    Socket {
        tried: String,
        #[source]
        source: io::Error,
    },
    #[error("--own-ports: cannot start the forwarder")]
    Start(#[source] io::Error),
}

/// The receiver, or the proxy in front of it.
#[derive(Clone, Debug)]
struct Endpoint {
    host: String,
    port: u16,
}

#[derive(Clone, Debug)]
struct Proxy {
    at: Endpoint,
    /// `Proxy-Authorization` value (from user:password in the proxy URL).
    auth: Option<String>,
    shown: String,
}

/// Why the forwarder could not give reqwest a connection: the uploader maps it to its own
/// transport error classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// No connection within the set-up limit.
    Timeout,
    /// The host name did not resolve.
    Dns,
    /// No address answered from the range, or the proxy refused the tunnel.
    Connect,
}

struct Failure {
    at: Instant,
    kind: Fail,
    msg: String,
}

struct Ctx {
    range: PortRange,
    target: Endpoint,
    proxy: Option<Proxy>,
    resolver: Resolver,
    failure: Mutex<Option<Failure>>,
}

/// The forwarder: alive as long as this value; dropping it stops it and removes the socket.
pub struct OwnPorts {
    path: PathBuf,
    ctx: Arc<Ctx>,
    stop: CancellationToken,
}

impl OwnPorts {
    /// Starts the forwarder for `url` (may contain `{file}` in its path). The private socket
    /// goes into the first of `dirs` where it can be created.
    /// `placeholder` is the part of `url` that a file name replaces (`{file}`).
    pub fn start(
        url: &str,
        placeholder: &str,
        range: PortRange,
        dirs: &[&Path],
    ) -> Result<OwnPorts, ConnectError> {
        let (target, uri) = target_of(url, placeholder)?;
        let proxy = proxy_for(&uri)?;
        let (listener, path) = bind_private(dirs)?;
        let ctx = Arc::new(Ctx {
            range,
            target,
            proxy,
            resolver: Resolver::new(range),
            failure: Mutex::new(None),
        });
        let stop = CancellationToken::new();
        let (c, s) = (ctx.clone(), stop.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ConnectError::Start)?;
        std::thread::Builder::new()
            .name("own-ports".into())
            .spawn(move || rt.block_on(serve(listener, c, s)))
            .map_err(ConnectError::Start)?;
        tracing::debug!(ports = %range, socket = %path.display(), "Uploads leave from the uploader's own ports.");
        Ok(OwnPorts { path, ctx, stop })
    }

    /// The Unix socket reqwest connects to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why a connection set up after `since` failed, if one did recently: reqwest only saw
    /// the stream close.
    pub fn failure_since(&self, since: Instant) -> Option<(Fail, String)> {
        let g = self.ctx.failure.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(f) if f.at >= since && f.at.elapsed() < FAILURE_FRESH => {
                Some((f.kind, f.msg.clone()))
            }
            _ => None,
        }
    }
}

impl Drop for OwnPorts {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The host and port every request goes to. `{file}` must not change them.
fn target_of(url: &str, placeholder: &str) -> Result<(Endpoint, hyper::Uri), ConnectError> {
    let parse = |name: &str| {
        let u = url.replace(placeholder, name);
        let parsed = url::Url::parse(&u).map_err(|e| ConnectError::Url(e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default().to_string();
        let port = parsed.port_or_known_default().unwrap_or(80);
        Ok::<_, ConnectError>((host, port, u))
    };
    let (host, port, sample) = parse("a")?;
    let (host2, port2, _) = parse("b")?;
    if (host.as_str(), port) != (host2.as_str(), port2) {
        return Err(ConnectError::HostVaries);
    }
    let uri = sample
        .parse::<hyper::Uri>()
        .map_err(|e| ConnectError::Url(e.to_string()))?;
    Ok((Endpoint { host, port }, uri))
}

/// The proxy reqwest would have used for this URL (same variables, same `NO_PROXY`).
fn proxy_for(uri: &hyper::Uri) -> Result<Option<Proxy>, ConnectError> {
    let Some(i) = Matcher::from_env().intercept(uri) else {
        return Ok(None);
    };
    let p = i.uri();
    let shown = format!(
        "{}://{}:{}",
        p.scheme_str().unwrap_or("http"),
        p.host().unwrap_or(""),
        p.port_u16().unwrap_or(80)
    );
    if p.scheme_str() != Some("http") {
        return Err(ConnectError::ProxyScheme { proxy: shown });
    }
    let auth = i
        .basic_auth()
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(Some(Proxy {
        at: Endpoint {
            host: p.host().unwrap_or_default().to_string(),
            port: p.port_u16().unwrap_or(80),
        },
        auth,
        shown,
    }))
}

/// A listening Unix socket only this user can reach, in the first directory that takes it.
fn bind_private(
    dirs: &[&Path],
) -> Result<(std::os::unix::net::UnixListener, PathBuf), ConnectError> {
    use std::os::unix::fs::PermissionsExt;
    let name = format!(
        ".sidecap-uploader-{}-{:08x}.sock",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut last = io::Error::other("no directory to put it in");
    let mut tried = Vec::new();
    for dir in dirs {
        let path = dir.join(&name);
        tried.push(path.display().to_string());
        let bound = std::os::unix::net::UnixListener::bind(&path).and_then(|l| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            l.set_nonblocking(true)?;
            Ok(l)
        });
        match bound {
            Ok(l) => return Ok((l, path)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                last = e;
            }
        }
    }
    Err(ConnectError::Socket {
        tried: tried.join(", "),
        source: last,
    })
}

async fn serve(listener: std::os::unix::net::UnixListener, ctx: Arc<Ctx>, stop: CancellationToken) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Cannot serve the uploader's private socket: every upload will fail.");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(forward(stream, ctx.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot accept on the uploader's private socket.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// One stream from reqwest: connect from the range, then copy until either side is done.
async fn forward(mut unix: UnixStream, ctx: Arc<Ctx>, stop: CancellationToken) {
    let started = Instant::now();
    let opened = match tokio::time::timeout(SETUP_LIMIT, open(&ctx)).await {
        Ok(r) => r,
        Err(_) => Err((
            Fail::Timeout,
            format!(
                "timed out: no connection to the receiver within {} s",
                SETUP_LIMIT.as_secs()
            ),
        )),
    };
    let mut tcp = match opened {
        Ok(s) => s,
        Err((kind, msg)) => {
            tracing::debug!(error = %msg, "Connection from the uploader's own ports failed.");
            let mut g = ctx.failure.lock().unwrap_or_else(|e| e.into_inner());
            *g = Some(Failure {
                at: started,
                kind,
                msg,
            });
            return; // dropping the Unix stream tells reqwest
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional_with_sizes(&mut unix, &mut tcp, COPY_BUF, COPY_BUF) => {}
        _ = stop.cancelled() => {}
    }
}

/// Resolves and connects to the receiver, or tunnels to it through the proxy.
async fn open(ctx: &Ctx) -> Result<TcpStream, (Fail, String)> {
    let first = ctx.proxy.as_ref().map_or(&ctx.target, |p| &p.at);
    let what = if ctx.proxy.is_some() {
        "the proxy"
    } else {
        "the receiver"
    };
    let addrs = ctx
        .resolver
        .lookup(&first.host, first.port)
        .await
        .map_err(|e| (Fail::Dns, format!("cannot resolve {what}'s host name: {e}")))?;
    let mut last = io::Error::other("no address");
    let mut stream = None;
    for a in &addrs {
        match tcp_from_range(ctx.range, *a).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = io::Error::new(e.kind(), format!("{a}: {e}")),
        }
    }
    let mut s = stream.ok_or_else(|| {
        (
            Fail::Connect,
            format!(
                "cannot connect to {what} from the uploader's ports {}: {last}",
                ctx.range
            ),
        )
    })?;
    if let Some(p) = &ctx.proxy {
        tunnel(&mut s, &ctx.target, p).await.map_err(|e| {
            (
                Fail::Connect,
                format!(
                    "the proxy {} did not open a tunnel to the receiver: {e}",
                    p.shown
                ),
            )
        })?;
    }
    Ok(s)
}

/// `CONNECT host:port` through an HTTP proxy; Ok once it answered 2xx.
async fn tunnel(s: &mut TcpStream, to: &Endpoint, p: &Proxy) -> io::Result<()> {
    let authority = if to.host.contains(':') {
        format!("[{}]:{}", to.host.trim_matches(['[', ']']), to.port)
    } else {
        format!("{}:{}", to.host, to.port)
    };
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(a) = &p.auth {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    // Read byte by byte up to the blank line: nothing of the tunnelled stream may be consumed.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= PROXY_ANSWER_MAX {
            return Err(io::Error::other("the proxy's answer is too long"));
        }
        head.push(s.read_u8().await?);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.lines().next().unwrap_or("").trim().to_string();
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => Err(io::Error::other(format!("it answered {status:?}"))),
    }
}

/// A TCP connection to `to` from a free port of the range.
pub async fn tcp_from_range(range: PortRange, to: SocketAddr) -> io::Result<TcpStream> {
    let start = NEXT_PORT.fetch_add(1, Relaxed);
    let mut last = io::Error::new(
        io::ErrorKind::AddrInUse,
        "every port of the range is in use",
    );
    for i in 0..range.len() {
        let port = range.nth(start + i);
        let sock = if to.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        let local = SocketAddr::new(unspecified(&to), port);
        match sock.bind(local) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        }
        match tokio::time::timeout(CONNECT_LIMIT, sock.connect(to)).await {
            Ok(Ok(s)) => {
                // Small writes (the request head) go out at once, as reqwest sets it.
                s.set_nodelay(true)?;
                return Ok(s);
            }
            // The same 4-tuple is still in TIME_WAIT, or taken: another port.
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse
                ) =>
            {
                last = e
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {} s", CONNECT_LIMIT.as_secs()),
                ))
            }
        }
    }
    Err(last)
}

/// A UDP socket bound to a free port of the range, connected to `to` (so only its answers
/// are received).
pub async fn udp_from_range(range: PortRange, to: SocketAddr) -> io::Result<UdpSocket> {
    let start = NEXT_PORT.fetch_add(1, Relaxed);
    let mut last = io::Error::new(
        io::ErrorKind::AddrInUse,
        "every port of the range is in use",
    );
    for i in 0..range.len() {
        let local = SocketAddr::new(unspecified(&to), range.nth(start + i));
        match UdpSocket::bind(local).await {
            Ok(s) => {
                s.connect(to).await?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn unspecified(to: &SocketAddr) -> std::net::IpAddr {
    if to.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_must_not_change_with_the_file_name() {
        let (t, _) = target_of("https://hooks.example/in/{file}?x=1", "{file}").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("hooks.example", 443));
        let (t, _) = target_of("http://[::1]:8080/{file}", "{file}").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 8080));
        assert!(matches!(
            target_of("https://{file}.example/in", "{file}"),
            Err(ConnectError::HostVaries)
        ));
    }

    #[test]
    fn connections_leave_from_the_range_and_skip_ports_in_use() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let to = server.local_addr().unwrap();
            // A high, narrow range unlikely to be used by anything else on the test machine.
            let range = PortRange::parse("61990-61991").unwrap().unwrap();
            // Taken by a listener (not SO_REUSEADDR-shareable): the other port must be used.
            let busy = std::net::TcpListener::bind("0.0.0.0:61990");
            let s = tcp_from_range(range, to).await.unwrap();
            let local = s.local_addr().unwrap().port();
            assert!(range.contains(local), "{local}");
            if busy.is_ok() {
                assert_eq!(local, 61991);
            }
            let u = udp_from_range(range, "127.0.0.1:53".parse().unwrap())
                .await
                .unwrap();
            assert!(range.contains(u.local_addr().unwrap().port()));
        });
    }
}
