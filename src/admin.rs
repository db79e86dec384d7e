//! The admin HTTP server (`/livez`, `/readyz`, `/metrics`, and whatever a subcommand adds). It
//! runs on its own named thread with its own single-threaded runtime, so it answers even while
//! the data path is busy. The listener is bound by the caller, before anything else starts, so
//! a bad or busy address is a startup error with a clear message.

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

/// A response: status, content type, body.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
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

async fn serve(listener: TcpListener, handler: Handler) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Admin listener unusable; probes will fail.");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "Admin accept failed.");
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let reply = handler(req.method().clone(), req.uri().path().to_string()).await;
                    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
                    *resp.status_mut() = reply.status;
                    if let Ok(v) = reply.content_type.parse() {
                        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// The routes every subcommand has: `/livez` always 200, `/readyz` from a readiness check,
/// `/metrics` from a renderer. Returns None for other paths so callers can add their own.
pub fn common_route(
    method: &Method,
    path: &str,
    ready: bool,
    metrics: impl FnOnce() -> String,
) -> Option<Reply> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path {
        "/livez" => Some(Reply::text(StatusCode::OK, "ok\n")),
        "/readyz" => Some(if ready {
            Reply::text(StatusCode::OK, "ready\n")
        } else {
            Reply::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }),
        "/metrics" => Some(Reply {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics(),
        }),
        _ => None,
    }
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
}
