//! `sidecap capture -D`: the interfaces libpcap can capture on, in tcpdump's `-D` format
//! (`3.lo [Up, Running, Loopback]`), each followed by its addresses (`127.0.0.1/8 ::1/128`),
//! which tcpdump leaves out and a laptop user picking an interface wants.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;

use pcap::{ConnectionStatus, Device, IfFlags};

use super::CaptureError;

/// Prints the list on stdout.
pub fn print() -> Result<(), CaptureError> {
    let devices = Device::list().map_err(|source| CaptureError::Pcap {
        what: "cannot list interfaces",
        source,
    })?;
    let mut out = String::new();
    for (i, d) in devices.iter().enumerate() {
        let _ = writeln!(out, "{}", line(i + 1, d));
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| CaptureError::Io(format!("cannot print the interface list: {e}")))
}

/// One line: tcpdump's, then the addresses.
fn line(n: usize, d: &Device) -> String {
    let mut s = format!("{n}.{}", d.name);
    if let Some(desc) = &d.desc {
        let _ = write!(s, " ({desc})");
    }
    if let Some(flags) = flags_text(&d.flags.if_flags, &d.flags.connection_status) {
        let _ = write!(s, " [{flags}]");
    }
    for a in &d.addresses {
        let _ = write!(s, " {}", a.addr);
        if let Some(bits) = a.netmask.map(prefix_len) {
            let _ = write!(s, "/{bits}");
        }
    }
    s
}

/// tcpdump's bracket: flag names in its order, then the connection status; None when libpcap
/// reports no flags at all (tcpdump then prints no bracket), "none" when only the status is
/// "not applicable".
fn flags_text(f: &IfFlags, status: &ConnectionStatus) -> Option<String> {
    if f.is_empty() && *status == ConnectionStatus::Unknown {
        return None;
    }
    let mut names: Vec<&str> = [
        (IfFlags::UP, "Up"),
        (IfFlags::RUNNING, "Running"),
        (IfFlags::LOOPBACK, "Loopback"),
        (IfFlags::WIRELESS, "Wireless"),
    ]
    .into_iter()
    .filter(|(bit, _)| f.contains(*bit))
    .map(|(_, name)| name)
    .collect();
    if names.is_empty() {
        names.push("none");
    }
    let wireless = f.contains(IfFlags::WIRELESS);
    let conn = match (status, wireless) {
        (ConnectionStatus::Unknown, true) => Some("Association status unknown"),
        (ConnectionStatus::Connected, true) => Some("Associated"),
        (ConnectionStatus::Disconnected, true) => Some("Not associated"),
        (ConnectionStatus::Unknown, false) => Some("Connection status unknown"),
        (ConnectionStatus::Connected, false) => Some("Connected"),
        (ConnectionStatus::Disconnected, false) => Some("Disconnected"),
        (ConnectionStatus::NotApplicable, _) => None,
    };
    let mut s = names.join(", ");
    if let Some(c) = conn {
        let _ = write!(s, ", {c}");
    }
    Some(s)
}

fn prefix_len(mask: IpAddr) -> u32 {
    match mask {
        IpAddr::V4(m) => u32::from(m).count_ones(),
        IpAddr::V6(m) => u128::from(m).count_ones(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_like_tcpdump() {
        let lo = IfFlags::UP | IfFlags::RUNNING | IfFlags::LOOPBACK;
        assert_eq!(
            flags_text(&lo, &ConnectionStatus::NotApplicable).as_deref(),
            Some("Up, Running, Loopback")
        );
        let eth = IfFlags::UP | IfFlags::RUNNING;
        assert_eq!(
            flags_text(&eth, &ConnectionStatus::Connected).as_deref(),
            Some("Up, Running, Connected")
        );
        assert_eq!(
            flags_text(&IfFlags::empty(), &ConnectionStatus::NotApplicable).as_deref(),
            Some("none")
        );
        assert_eq!(
            flags_text(&IfFlags::WIRELESS, &ConnectionStatus::Disconnected).as_deref(),
            Some("Wireless, Not associated")
        );
        assert_eq!(
            flags_text(&IfFlags::empty(), &ConnectionStatus::Unknown),
            None
        );
    }

    #[test]
    fn netmasks_become_prefix_lengths() {
        assert_eq!(prefix_len("255.0.0.0".parse().unwrap()), 8);
        assert_eq!(prefix_len("255.255.255.255".parse().unwrap()), 32);
        assert_eq!(prefix_len("ffff:ffff:ffff:ffff::".parse().unwrap()), 64);
    }
}
