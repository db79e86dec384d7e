//! The admin HTTP server (`/livez`, `/readyz`, `/metrics`, and whatever a subcommand adds). It
//! runs on its own named thread with its own single-threaded runtime, so it answers even while
//! the data path is busy. The listener is bound by the caller, before anything else starts, so
//! a bad or busy address is a startup error with a clear message.
//!
//! It faces the Pod network, so it bounds what a client can hold: request headers must arrive
//! within [`HEADER_READ_TIMEOUT`] (also between keep-alive requests), and at most
//! [`MAX_CONNECTIONS`] connections are open at once; a new one beyond that closes the oldest.
//! Without these, idle connections held file descriptors until the capture's next rotation
//! failed with EMFILE. Evicting the oldest (rather than refusing the newest) keeps probes
//! answered during a flood: a probe's connection is the newest while it is served.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

/// A client must send a request's headers within this. Probes and scrapers send theirs at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Open connections at most. Kubelet probes and a Prometheus scraper need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// A response: status, content type, body, and for a 405 the methods allowed.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
    pub allow: Option<&'static str>,
}

impl Reply {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: None,
        }
    }

    /// 405 with the `Allow` header RFC 9110 requires.
    pub fn method_not_allowed(allow: &'static str) -> Reply {
        Reply {
            allow: Some(allow),
            ..Reply::text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method not allowed: use {allow}\n"),
            )
        }
    }
}

pub type BoxFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
/// Maps (method, path) to a reply. Query strings are stripped before the call.
pub type Handler = Arc<dyn Fn(Method, String) -> BoxFuture + Send + Sync>;

/// Parses `--listen`: `off` (or empty) disables the server.
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    t.parse::<SocketAddr>().map(Some).map_err(|e| {
        format!(
            "invalid --listen address {s:?}: {e} (expected IP:PORT such as 0.0.0.0:9797, or off)"
        )
    })
}

/// Binds the admin listener; errors name the address.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let l = TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen on {addr} for the admin server: {e} (choose another --listen address, or --listen off)")
    })?;
    l.set_nonblocking(true)
        .map_err(|e| format!("admin listener: {e}"))?;
    Ok(l)
}

/// Starts serving on a named thread. The thread lives until the process exits.
pub fn spawn(listener: TcpListener, handler: Handler) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        // The listener is already bound: serving needs no privilege.
        if let Err(e) = crate::process::drop_thread_capabilities(&[]) {
            tracing::warn!(error = %e, "Admin thread keeps its capabilities.");
        }
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "Cannot start the admin server runtime; probes will fail.");
                return;
            }
        };
        rt.block_on(serve(listener, handler));
    })?;
    tracing::info!(%addr, "Admin server listening.");
    Ok(addr)
}

/// The open connections, oldest first, each with the token that closes it.
#[derive(Default)]
struct Connections {
    open: Mutex<VecDeque<(u64, tokio_util::sync::CancellationToken)>>,
}

impl Connections {
    /// Registers a new connection; closes the oldest when that makes more than the cap.
    fn add(&self, id: u64) -> tokio_util::sync::CancellationToken {
        let token = tokio_util::sync::CancellationToken::new();
        if let Ok(mut open) = self.open.lock() {
            while open.len() >= MAX_CONNECTIONS {
                if let Some((_, oldest)) = open.pop_front() {
                    oldest.cancel();
                }
            }
            open.push_back((id, token.clone()));
        }
        token
    }

    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|(i, _)| *i != id);
        }
    }
}

async fn serve(listener: TcpListener, handler: Handler) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Admin listener unusable; probes will fail.");
            return;
        }
    };
    let conns = Arc::new(Connections::default());
    let mut evictions_logged = false;
    for id in 0u64.. {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "Admin accept failed.");
                // EMFILE and the like: do not spin on an error that repeats at once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let full = conns.open.lock().map_or(0, |o| o.len()) >= MAX_CONNECTIONS;
        if full && !evictions_logged {
            evictions_logged = true;
            tracing::warn!(max = MAX_CONNECTIONS, "Admin server at its connection cap: closing the oldest connection for each new one (logged once).");
        }
        let token = conns.add(id);
        let (handler, conns) = (handler.clone(), conns.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let reply = handler(req.method().clone(), req.uri().path().to_string()).await;
                    Ok::<_, Infallible>(response(reply))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = token.cancelled() => {}
            }
            conns.remove(id);
        });
    }
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    if let Ok(v) = reply.content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Some(Ok(v)) = reply.allow.map(|a| a.parse()) {
        resp.headers_mut().insert(hyper::header::ALLOW, v);
    }
    resp
}

/// The routes every subcommand has: `/livez` always 200, `/readyz` from a readiness check,
/// `/metrics` from a renderer. Returns None for other paths so callers can add their own.
pub fn common_route(
    method: &Method,
    path: &str,
    ready: bool,
    metrics: impl FnOnce() -> String,
) -> Option<Reply> {
    let known = matches!(path, "/livez" | "/readyz" | "/metrics");
    if method != Method::GET && method != Method::HEAD {
        return known.then(|| Reply::method_not_allowed("GET, HEAD"));
    }
    match path {
        "/livez" => Some(Reply::text(StatusCode::OK, "ok\n")),
        "/readyz" => Some(if ready {
            Reply::text(StatusCode::OK, "ready\n")
        } else {
            Reply::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }),
        "/metrics" => Some(Reply {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Reply::text(StatusCode::OK, metrics())
        }),
        _ => None,
    }
}

/// A handler that serves the common routes only: readiness from `ready`, `/metrics` from
/// `metrics`.
pub fn probes<R, M>(ready: R, metrics: M) -> Handler
where
    R: Fn() -> bool + Send + Sync + 'static,
    M: Fn() -> String + Send + Sync + 'static,
{
    Arc::new(move |method: Method, path: String| {
        let reply = common_route(&method, &path, ready(), &metrics).unwrap_or_else(not_found);
        Box::pin(async move { reply })
    })
}

pub fn not_found() -> Reply {
    Reply::text(
        StatusCode::NOT_FOUND,
        "not found: try /livez, /readyz, /metrics\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_parsing() {
        assert_eq!(parse_listen("off"), Ok(None));
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().unwrap().port(), 0);
        assert!(parse_listen("9797")
            .unwrap_err()
            .contains("expected IP:PORT"));
    }

    #[test]
    fn wrong_method_on_a_known_path_is_405_with_allow() {
        let r = common_route(&Method::POST, "/livez", true, String::new).unwrap();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.allow, Some("GET, HEAD"));
        assert!(common_route(&Method::POST, "/nope", true, String::new).is_none());
        assert_eq!(
            common_route(&Method::HEAD, "/livez", true, String::new)
                .unwrap()
                .status,
            StatusCode::OK
        );
    }

    #[test]
    fn the_oldest_connection_is_closed_at_the_cap() {
        let c = Connections::default();
        let tokens: Vec<_> = (0..MAX_CONNECTIONS as u64).map(|i| c.add(i)).collect();
        assert!(tokens.iter().all(|t| !t.is_cancelled()));
        let newest = c.add(1000);
        assert!(tokens[0].is_cancelled() && !tokens[1].is_cancelled() && !newest.is_cancelled());
        c.remove(5);
        c.add(1001);
        assert!(!tokens[1].is_cancelled(), "a free slot evicts nobody");
    }
}
