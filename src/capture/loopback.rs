//! One copy of each loopback packet, dropped in the kernel.
//!
//! On a loopback device the kernel hands every packet to packet sockets twice, once as it goes
//! out and once as it comes back in, and libpcap throws the outgoing copy away in user space
//! (tcpdump pays for both copies the same way). Here the kernel filter drops it: a prefix of
//! five classic BPF instructions ahead of the program libpcap installed ("an outgoing packet on
//! the loopback device: reject"), using the kernel's ancillary loads for the packet type and the
//! interface index, which need no link-layer offsets. For loopback traffic that halves what
//! the kernel copies into the ring, what the ring holds and what the capture thread reads
//! (measured in docs/benchmarks.md), and the kernel's counts are counted once per packet.
//!
//! Only on a loopback device (`lo`, or any device of type ARPHRD_LOOPBACK): there libpcap's
//! kernel program is the compiled filter as it is (no cooked-header rewriting, which `any`
//! needs), so compiling the filter once more gives exactly the program to prefix. The filter
//! libpcap applies in user space to the packets of the first ring block (those the kernel
//! filtered before the filter was set) is left as it is; the prefix only takes away copies
//! libpcap discards anyway, so what the files hold does not change.

use std::io;

use pcap::{Active, BpfProgram, Capture};
use socket2::{SockFilter, SockRef};

/// `SKF_AD_OFF`: where the kernel's ancillary data starts for BPF loads.
const SKF_AD_OFF: u32 = 0xffff_f000;
const SKF_AD_PKTTYPE: u32 = 4;
const SKF_AD_IFINDEX: u32 = 8;
/// `PACKET_OUTGOING` in `<linux/if_packet.h>`.
const PACKET_OUTGOING: u32 = 4;
/// `ARPHRD_LOOPBACK` in `<linux/if_arp.h>`: /sys/class/net/DEV/type of a loopback device.
const ARPHRD_LOOPBACK: &str = "772";
/// `BPF_MAXINSNS`: the longest classic program the kernel takes.
const BPF_MAXINSNS: usize = 4096;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JMP_JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

/// The interface index of `interface` when it is a loopback device.
pub fn loopback_ifindex(interface: &str) -> Option<u32> {
    let dev = std::path::Path::new("/sys/class/net").join(interface);
    let kind = std::fs::read_to_string(dev.join("type")).ok()?;
    if kind.trim() != ARPHRD_LOOPBACK {
        return None;
    }
    std::fs::read_to_string(dev.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A classic BPF instruction: code, jt, jf, k.
type Insn = (u16, u8, u8, u32);

/// The instructions of a compiled program. The pcap crate shows them only through Display
/// ("code jt jf k", decimal); None if that ever changes (a unit test would say so first).
fn instructions(prog: &BpfProgram) -> Option<Vec<Insn>> {
    prog.get_instructions()
        .iter()
        .map(|i| {
            let s = i.to_string();
            let mut f = s.split(' ');
            let code = f.next()?.parse().ok()?;
            let jt = f.next()?.parse().ok()?;
            let jf = f.next()?.parse().ok()?;
            let k = f.next()?.parse().ok()?;
            f.next().is_none().then_some((code, jt, jf, k))
        })
        .collect()
}

/// The kernel program: reject an outgoing packet on interface `ifindex`, then run `filter`'s
/// program (or accept `snaplen` bytes without one). The original's jumps are relative, so they
/// are unchanged behind the prefix. None when the result would be too long for the kernel or
/// the filter's program cannot be read.
fn program(filter: Option<&BpfProgram>, ifindex: u32, snaplen: u32) -> Option<Vec<Insn>> {
    let mut prog = vec![
        (LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),
        // Not outgoing: on to the filter (3 ahead).
        (JMP_JEQ_K, 0, 3, PACKET_OUTGOING),
        (LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX),
        (JMP_JEQ_K, 0, 1, ifindex),
        (RET_K, 0, 0, 0),
    ];
    match filter {
        Some(p) => prog.extend(instructions(p)?),
        None => prog.push((RET_K, 0, 0, snaplen)),
    }
    (prog.len() <= BPF_MAXINSNS).then_some(prog)
}

/// Installs the kernel program for loopback device `ifindex` over the one libpcap installed
/// (`filter` compiled once more, or none). Err leaves libpcap's in place: then both copies reach
/// the ring and libpcap discards one, as before.
pub fn drop_outgoing_copies(
    cap: &Capture<Active>,
    filter: Option<&str>,
    ifindex: u32,
    snaplen: u32,
) -> io::Result<()> {
    let compiled = match filter {
        Some(f) => Some(cap.compile(f, true).map_err(io::Error::other)?),
        None => None,
    };
    let prog = program(compiled.as_ref(), ifindex, snaplen)
        .ok_or_else(|| io::Error::other("the filter's program is too long for the prefix"))?;
    let prog: Vec<SockFilter> = prog
        .into_iter()
        .map(|(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
        .collect();
    SockRef::from(cap).attach_filter(&prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program as the kernel would run it over (pkttype, ifindex, packet) for the prefix's
    /// instructions; stops at the first instruction that is not the prefix's.
    fn prefix_verdict(prog: &[Insn], pkttype: u32, ifindex: u32) -> Option<u32> {
        let (mut pc, mut a) = (0usize, 0u32);
        while pc < 5 {
            let (code, jt, jf, k) = prog[pc];
            match code {
                LD_W_ABS if k == SKF_AD_OFF + SKF_AD_PKTTYPE => a = pkttype,
                LD_W_ABS if k == SKF_AD_OFF + SKF_AD_IFINDEX => a = ifindex,
                JMP_JEQ_K => {
                    pc += if a == k { jt } else { jf } as usize;
                }
                RET_K => return Some(k),
                _ => return None,
            }
            pc += 1;
        }
        None // on to the original program
    }

    #[test]
    fn compiled_programs_read_back_instruction_for_instruction() {
        let cap = Capture::dead(pcap::Linktype::ETHERNET).unwrap();
        let prog = cap.compile("udp port 53", true).unwrap();
        let ins = instructions(&prog).expect("the pcap crate's Display format changed");
        assert_eq!(ins.len(), prog.get_instructions().len());
        // tcpdump -d "udp port 53" starts with `ldh [12]` (0x28, k 12) and ends in `ret #0`.
        assert_eq!(ins[0], (0x28, 0, 0, 12));
        assert_eq!(ins[ins.len() - 1], (RET_K, 0, 0, 0));
        assert!(ins
            .iter()
            .any(|&(code, _, _, k)| code == JMP_JEQ_K && k == 53));
    }

    #[test]
    fn the_prefix_rejects_only_outgoing_copies_on_the_loopback_device() {
        let cap = Capture::dead(pcap::Linktype::ETHERNET).unwrap();
        let f = cap.compile("udp", true).unwrap();
        let prog = program(Some(&f), 1, 65535).unwrap();
        assert_eq!(prog.len(), 5 + f.get_instructions().len());
        const HOST: u32 = 0;
        assert_eq!(prefix_verdict(&prog, PACKET_OUTGOING, 1), Some(0));
        assert_eq!(
            prefix_verdict(&prog, HOST, 1),
            None,
            "incoming copy: filter runs"
        );
        assert_eq!(
            prefix_verdict(&prog, PACKET_OUTGOING, 2),
            None,
            "other device"
        );
        let bare = program(None, 1, 65535).unwrap();
        assert_eq!(bare.len(), 6);
        assert_eq!(prefix_verdict(&bare, PACKET_OUTGOING, 1), Some(0));
    }

    #[test]
    fn a_program_too_long_for_the_kernel_gets_no_prefix() {
        let cap = Capture::dead(pcap::Linktype::ETHERNET).unwrap();
        let hosts: Vec<String> = (0..1200)
            .map(|i| format!("host 10.0.{}.{}", i / 250, i % 250))
            .collect();
        let f = cap.compile(&hosts.join(" or "), false).unwrap();
        if f.get_instructions().len() + 5 > BPF_MAXINSNS {
            assert!(program(Some(&f), 1, 65535).is_none());
        } else {
            panic!(
                "the test filter is too short: {} instructions",
                f.get_instructions().len()
            );
        }
    }

    #[test]
    fn only_loopback_devices_qualify() {
        assert!(loopback_ifindex("lo").is_some());
        assert_eq!(loopback_ifindex("any"), None);
        assert_eq!(loopback_ifindex("no-such-device0"), None);
    }
}
