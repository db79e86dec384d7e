//! The uploader's own ports: the one contract, besides the files, that the capture and the
//! uploader share (issue 11).
//!
//! The uploader runs in the Pod's network namespace, so a capture on `any` (or on the Pod's
//! interface, or on `lo`) sees its uploads, and with `uploader --continuous` every upload is
//! captured into the next file, which is uploaded and captured again. Both sides therefore
//! agree on a small source-port range that only the uploader uses:
//!
//! - the uploader binds every socket it opens (the webhook connection, the proxy connection,
//!   its DNS queries) to a port of the range ([`forward`], with its own resolver ([`dns`]));
//! - the capture adds `and not (...)` to its BPF filter for packets whose *local* end is in the
//!   range ([`PortRange::bpf_exclusion`]), so no uploader packet is written, and the kernel
//!   does the work.
//!
//! The default range, 61000-61031, lies above Linux's default ephemeral range (32768-60999), so
//! no ordinary outgoing socket gets a port from it even without the Pod's
//! `net.ipv4.ip_local_reserved_ports` sysctl, which reserves it for good measure (a namespaced
//! "safe" sysctl, allowed in `securityContext.sysctls` since Kubernetes 1.27).
//!
//! Local end, not either end: on a real interface and on `any`, libpcap tells outgoing from
//! incoming packets (`outbound`/`inbound`), so an application talking to a *remote* port in the
//! range is still captured in full. On the loopback device both ends are local, so there either
//! port in the range excludes the packet; the one case that cannot be told apart is therefore a
//! server in the Pod listening on a port of the range (do not put one there, or move the range).

pub mod dns;
pub mod forward;

use std::fmt;

/// The range both sides use unless told otherwise.
pub const DEFAULT: PortRange = PortRange {
    first: 61000,
    last: 61031,
};

// Above net.ipv4.ip_local_port_range's default (32768-60999): checked when compiling.
const _: () = assert!(DEFAULT.first > 60999);

/// The same, as the flags' default value.
pub const DEFAULT_TEXT: &str = "61000-61031";

/// What `--own-ports` takes to keep the uploader's packets (for debugging the uploader).
pub const NONE: &str = "none";

/// The loopback device's interface index: the kernel gives `lo` index 1 in every network
/// namespace (LOOPBACK_IFINDEX), which is what `ifindex` on `any` compares with.
const LOOPBACK_IFINDEX: u32 = 1;

/// An inclusive range of ports, never empty, never containing port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// Which kind of interface a capture runs on: it decides whether libpcap can tell the direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `any`: every interface, LINUX_SLL2, with the packet type and interface index.
    Any,
    /// The loopback device: every packet is seen once, as incoming, and both ends are local.
    Loopback,
    /// Any other interface: outgoing and incoming packets are told apart.
    Other,
}

impl Link {
    /// The link kind of a capture interface name. A loopback device is `lo`, or any interface
    /// whose index is 1 (the kernel's loopback index).
    pub fn of(interface: &str) -> Link {
        if interface == "any" {
            return Link::Any;
        }
        let index = std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if interface == "lo" || index == Some(LOOPBACK_IFINDEX) {
            Link::Loopback
        } else {
            Link::Other
        }
    }
}

impl PortRange {
    /// Parses `A-B`, a single port `A`, or `none`/`off` (no range: nothing excluded, sockets
    /// not bound).
    pub fn parse(s: &str) -> Result<Option<PortRange>, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case(NONE) || s.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let port = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!(
                    "{s:?}: expected a port range like {DEFAULT_TEXT}, a single port, or {NONE}"
                )),
                Ok(p) => Ok(p),
            }
        };
        let (first, last) = (port(a)?, port(b)?);
        if first > last {
            return Err(format!("{s:?}: the first port is above the last"));
        }
        Ok(Some(PortRange { first, last }))
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `n`-th port of the range, wrapping around.
    pub fn nth(&self, n: usize) -> u16 {
        // len() <= 65535, so the sum stays in u16 range after the modulo.
        self.first + (n % self.len()) as u16
    }

    /// The pcap-filter(7) expression matching the packets of sockets bound to the range, on
    /// this kind of link: outgoing packets from a port of the range and incoming packets to
    /// one; on loopback (both ends local) a port of the range on either end.
    ///
    /// `portrange` matches TCP, UDP and SCTP over IPv4 and IPv6, and only first fragments
    /// (later IPv4 fragments carry no ports; the uploader's DNS sends no EDNS, so its answers
    /// fit 512 bytes and are never fragmented) and only IPv6 packets whose transport header
    /// follows the fixed header (the uploader's packets have no extension headers).
    ///
    /// The port test comes before the direction test on purpose. On an interface other than
    /// `any`, `inbound`/`outbound` read the kernel's packet type (ancillary data), which only
    /// the kernel filter has; libpcap filters the packets of the first ring block after start
    /// in user space, where that read fails and rejects the packet. Port first, only packets
    /// with a port of the range reach it: the rest are kept, as they must be.
    pub fn bpf_exclusion(&self, link: Link) -> String {
        let r = self.bpf_range();
        let directed =
            format!("(src portrange {r} and outbound) or (dst portrange {r} and inbound)");
        match link {
            Link::Loopback => format!("portrange {r}"),
            Link::Other => directed,
            // On `any` a loopback packet comes twice, outgoing and incoming, from interface
            // index 1; both ends are local there.
            Link::Any => format!("{directed} or (portrange {r} and ifindex {LOOPBACK_IFINDEX})"),
        }
    }

    fn bpf_range(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The filter the capture compiles: the user's expression (if any) with the uploader's
/// packets taken out.
pub fn compose(user: Option<&str>, own: Option<PortRange>, link: Link) -> Option<String> {
    match (user, own) {
        (u, None) => u.map(str::to_string),
        (None, Some(r)) => Some(format!("not ({})", r.bpf_exclusion(link))),
        (Some(u), Some(r)) => Some(format!("({u}) and not ({})", r.bpf_exclusion(link))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse() {
        assert_eq!(PortRange::parse(DEFAULT_TEXT).unwrap(), Some(DEFAULT));
        assert_eq!(
            PortRange::parse("7000").unwrap(),
            Some(PortRange {
                first: 7000,
                last: 7000
            })
        );
        assert_eq!(PortRange::parse("none").unwrap(), None);
        assert_eq!(PortRange::parse("OFF").unwrap(), None);
        for bad in ["", "0-10", "10-5", "x", "1-70000", "1-2-3"] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(DEFAULT.len(), 32);
        assert_eq!(DEFAULT.nth(0), 61000);
        assert_eq!(DEFAULT.nth(33), 61001);
        assert_eq!(DEFAULT.to_string(), DEFAULT_TEXT);
    }

    #[test]
    fn filters_compose_with_the_users_expression() {
        let r = DEFAULT;
        assert_eq!(
            compose(Some("udp"), None, Link::Any).as_deref(),
            Some("udp")
        );
        assert_eq!(compose(None, None, Link::Any), None);
        assert_eq!(
            compose(None, Some(r), Link::Loopback).as_deref(),
            Some("not (portrange 61000-61031)")
        );
        assert_eq!(
            compose(Some("port 80 or udp"), Some(r), Link::Other).as_deref(),
            Some("(port 80 or udp) and not ((src portrange 61000-61031 and outbound) or (dst portrange 61000-61031 and inbound))")
        );
        assert!(compose(None, Some(r), Link::Any)
            .unwrap()
            .contains("(portrange 61000-61031 and ifindex 1)"));
    }

    #[test]
    fn loopback_is_recognised_by_name_or_index() {
        assert_eq!(Link::of("any"), Link::Any);
        assert_eq!(Link::of("lo"), Link::Loopback);
        assert_eq!(Link::of("no-such-interface-x"), Link::Other);
    }
}
