//! The traffic generator: UDP datagrams of a fixed payload size sent with `sendmmsg(2)` in
//! batches, either as fast as one core can (a packet count) or paced at a fixed rate. A sink
//! socket bound on the destination port (optionally inside another network namespace) absorbs
//! the datagrams with a tiny receive buffer, so the receiver answers no ICMP port-unreachable
//! (which on loopback is not even rate-limited and would double the traffic).

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GenArgs {
    pub dst: SocketAddrV4,
    pub size: usize,
    pub count: u64,
    /// Packets per second; None = as fast as possible.
    pub rate: Option<u64>,
    pub batch: usize,
    /// Sending threads (each its own socket); the count and rate are split between them.
    pub threads: usize,
    /// Bind the sink socket in this network namespace (a name under /run/netns).
    pub sink_netns: Option<String>,
    /// Hard bound on the run, whatever the count.
    pub max_time: Duration,
}

pub struct GenResult {
    pub sent: u64,
    pub elapsed: Duration,
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Runs `f` with the calling thread in network namespace `ns`, then switches back.
pub fn with_netns<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let target =
        std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("netns {ns}: {e}"))?;
    let home =
        std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| format!("own netns: {e}"))?;
    // SAFETY: setns on valid namespace fds; it affects only the calling thread.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {ns}: {}", last_err()));
    }
    let out = f();
    // SAFETY: as above, back to where we started.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns back: {}", last_err()));
    }
    Ok(out)
}

fn sink(dst: SocketAddrV4) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind(dst).map_err(|e| format!("sink bind {dst}: {e}"))?;
    let small: libc::c_int = 1; // the kernel rounds up to its minimum (a few KiB)
                                // SAFETY: plain setsockopt with a c_int option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &small as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(s)
}

pub fn run(a: &GenArgs) -> Result<GenResult, String> {
    let _sink = match &a.sink_netns {
        Some(ns) => with_netns(ns, || sink(a.dst))??,
        None => sink(a.dst)?,
    };
    let n = a.threads.clamp(1, 64) as u64;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let mut part = a.clone();
            part.count = a.count / n + u64::from(i < a.count % n);
            part.rate = a.rate.map(|r| (r / n).max(1));
            std::thread::spawn(move || send(&part))
        })
        .collect();
    let mut sent = 0;
    for h in handles {
        sent += h.join().map_err(|_| "sender thread panicked")??.sent;
    }
    Ok(GenResult {
        sent,
        elapsed: t0.elapsed(),
    })
}

fn send(a: &GenArgs) -> Result<GenResult, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    sock.connect(a.dst)
        .map_err(|e| format!("connect {}: {e}", a.dst))?;
    let fd = sock.as_raw_fd();
    let mut payload = vec![0u8; a.size];
    payload
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let batch = a.batch.clamp(1, 1024);
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
    let mut hdrs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for h in hdrs.iter_mut() {
        h.msg_hdr.msg_iov = &mut iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    let t0 = Instant::now();
    let deadline = t0 + a.max_time;
    let mut sent: u64 = 0;
    let mut spins: u64 = 0;
    while sent < a.count {
        let mut want = (a.count - sent).min(batch as u64);
        if let Some(rate) = a.rate {
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            if due <= sent {
                // Ahead of schedule: sleep until the next batch is due (short gaps spin).
                let next = (sent + want.min(32)) as f64 / rate as f64;
                let wait = next - t0.elapsed().as_secs_f64();
                if wait > 200e-6 {
                    std::thread::sleep(Duration::from_secs_f64(wait - 100e-6));
                } else {
                    std::hint::spin_loop();
                }
                spins += 1;
                if spins % 1024 == 0 && Instant::now() > deadline {
                    break;
                }
                continue;
            }
            want = want.min(due - sent);
        }
        // SAFETY: hdrs holds `batch` initialized headers pointing at `payload`, which outlives
        // the call; want <= batch.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), want as libc::c_uint, 0) };
        if n < 0 {
            let e = last_err();
            match e.raw_os_error() {
                Some(libc::ENOBUFS)
                | Some(libc::EAGAIN)
                | Some(libc::ECONNREFUSED)
                | Some(libc::EINTR) => {}
                _ => return Err(format!("sendmmsg: {e}")),
            }
        } else {
            sent += n as u64;
        }
        spins += 1;
        if spins % 256 == 0 && Instant::now() > deadline {
            break;
        }
    }
    Ok(GenResult {
        sent,
        elapsed: t0.elapsed(),
    })
}
