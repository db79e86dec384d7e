//! A small HTTP/1.1 receiver for upload tests, on 127.0.0.1:0, with fault injection: each
//! request takes the next scripted action (then 200 once the script is used up). It records
//! method, path, headers, body length and SHA-256 (and the body itself up to a limit), so tests
//! check exactly what arrived. Plain threads and std sockets: nothing here is clever, so a test
//! failure points at the uploader, not the receiver.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Bodies larger than this are hashed, not kept.
const KEEP_BODY: u64 = 32 << 20;

#[derive(Clone, Debug)]
pub enum Action {
    /// Read the whole request, answer with this status.
    Status(u16),
    /// Answer with this status and a Retry-After header.
    RetryAfter(u16, &'static str),
    /// Read the head and part of the body, then close with unread data: the kernel sends RST.
    Reset,
    /// Read the whole request, then close without answering.
    Close,
    /// Read the request and never answer (until the receiver is dropped, at most 60 s).
    Hang,
    /// Read the whole request, wait this many milliseconds, answer with this status.
    Delay(u64, u16),
    /// Read the head and this many body bytes, then stop reading with the connection open
    /// (until the receiver is dropped, at most 60 s): a receiver stalled mid-body.
    StallMidBody(u64),
}

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub len: u64,
    pub sha256: String,
    pub body: Vec<u8>,
    /// The body arrived whole and we answered with this status (None: reset/closed/hung).
    pub answered: Option<u16>,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Inner {
    script: Mutex<VecDeque<Action>>,
    /// Requests whose path contains the string always get that status (before the script).
    path_status: Mutex<Vec<(String, u16)>>,
    requests: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    pub fn start(script: Vec<Action>) -> Receiver {
        Receiver::start_on("127.0.0.1:0", script)
    }

    /// A receiver on another address ("[::1]:0", an address inside a test's namespace).
    pub fn start_on(addr: &str, script: Vec<Action>) -> Receiver {
        let l = TcpListener::bind(addr).expect("bind receiver");
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let inner = Arc::new(Inner {
            script: Mutex::new(script.into()),
            path_status: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let i = inner.clone();
        std::thread::spawn(move || {
            while !i.stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        let i = i.clone();
                        std::thread::spawn(move || serve(s, &i));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Receiver { addr, inner }
    }

    /// From now on, every request whose path contains `needle` is answered with `status`.
    pub fn status_for_path(&self, needle: &str, status: u16) {
        self.inner
            .path_status
            .lock()
            .unwrap()
            .push((needle.to_string(), status));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Requests answered with a 2xx.
    pub fn accepted(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| matches!(r.answered, Some(200..=299)))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(s: TcpStream, inner: &Inner) {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Request head.
        let mut head = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line == "\r\n" || line == "\n" {
                        if head.is_empty() {
                            continue;
                        }
                        break;
                    }
                    head.push(line.trim_end().to_string());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if inner.stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let mut first = head[0].split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = head[1..]
            .iter()
            .filter_map(|h| h.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let content_length: Option<u64> = get("content-length").and_then(|v| v.parse().ok());
        let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let by_path = inner
            .path_status
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| path.contains(n.as_str()))
            .map(|(_, c)| Action::Status(*c));
        let action = by_path.unwrap_or_else(|| {
            inner
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Action::Status(200))
        });
        let mut req = Request {
            method,
            path,
            headers,
            len: 0,
            sha256: String::new(),
            body: Vec::new(),
            answered: None,
            at: Instant::now(),
        };
        if let Action::Reset = action {
            // Take a little of the body, then close with the rest unread: RST.
            let want = content_length.unwrap_or(1 << 20).min(64 * 1024) / 2;
            let mut buf = vec![0u8; want as usize];
            let _ = read_exact_patient(&mut r, &mut buf, inner);
            req.len = want;
            inner.requests.lock().unwrap().push(req);
            return;
        }
        if let Action::StallMidBody(n) = action {
            let mut buf = vec![0u8; n as usize];
            let _ = read_exact_patient(&mut r, &mut buf, inner);
            req.len = n;
            inner.requests.lock().unwrap().push(req);
            let t0 = Instant::now();
            while !inner.stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let ok = if chunked {
            read_chunked(&mut r, &mut req, inner)
        } else {
            read_body(&mut r, content_length.unwrap_or(0), &mut req, inner)
        };
        if !ok {
            inner.requests.lock().unwrap().push(req);
            return;
        }
        match action {
            Action::Close => {
                inner.requests.lock().unwrap().push(req);
                return;
            }
            Action::Hang => {
                inner.requests.lock().unwrap().push(req);
                let t0 = Instant::now();
                while !inner.stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Action::Status(code) | Action::RetryAfter(code, _) | Action::Delay(_, code) => {
                if let Action::Delay(ms, _) = action {
                    let t0 = Instant::now();
                    while !inner.stop.load(Ordering::SeqCst)
                        && t0.elapsed() < Duration::from_millis(ms)
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                let extra = match &action {
                    Action::RetryAfter(_, v) => format!("Retry-After: {v}\r\n"),
                    _ => String::new(),
                };
                let body = format!("status {code}\n");
                req.answered = Some(code);
                inner.requests.lock().unwrap().push(req);
                let resp = format!(
                    "HTTP/1.1 {code} Scripted\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{extra}\r\n{body}",
                    body.len()
                );
                if w.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
            Action::Reset | Action::StallMidBody(_) => unreachable!(),
        }
    }
}

fn read_exact_patient(r: &mut impl Read, buf: &mut [u8], inner: &Inner) -> bool {
    let mut got = 0;
    let t0 = Instant::now();
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if inner.stop.load(Ordering::SeqCst) || t0.elapsed() > Duration::from_secs(120) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

fn read_body(r: &mut impl Read, len: u64, req: &mut Request, inner: &Inner) -> bool {
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let n = buf.len().min(left as usize);
        if !read_exact_patient(r, &mut buf[..n], inner) {
            return false;
        }
        h.update(&buf[..n]);
        if (req.body.len() as u64) < KEEP_BODY {
            req.body.extend_from_slice(&buf[..n]);
        }
        left -= n as u64;
        req.len += n as u64;
    }
    req.sha256 = hex(&h.finalize());
    true
}

fn read_chunked(r: &mut BufReader<TcpStream>, req: &mut Request, inner: &Inner) -> bool {
    let mut h = Sha256::new();
    loop {
        let mut line = String::new();
        let t0 = Instant::now();
        loop {
            match r.read_line(&mut line) {
                Ok(0) => return false,
                Ok(_) => break,
                Err(_)
                    if t0.elapsed() < Duration::from_secs(60)
                        && !inner.stop.load(Ordering::SeqCst) => {}
                Err(_) => return false,
            }
        }
        let size = match u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16) {
            Ok(s) => s,
            Err(_) => return false,
        };
        let mut buf = vec![0u8; size as usize + 2];
        if !read_exact_patient(r, &mut buf, inner) {
            return false;
        }
        if size == 0 {
            break;
        }
        h.update(&buf[..size as usize]);
        req.body.extend_from_slice(&buf[..size as usize]);
        req.len += size;
    }
    req.sha256 = hex(&h.finalize());
    true
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}
