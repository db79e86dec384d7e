//! Parsing of the human-friendly values on the command line (sizes, durations), shared by all
//! subcommands. Everything here is pure and unit-tested; validation of whole configurations
//! lives beside the subcommand that owns them.

use std::time::Duration;

/// The largest duration any flag accepts: ten years. Longer values are typos (or probes), and
/// deadline arithmetic (`Instant + duration`) panics on overflow long before `u64::MAX` seconds.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600); // humantime's 10y
/// The largest size any flag accepts: 1 EiB. Far beyond any disk, and small enough that adding
/// a few such values never overflows a u64.
pub const MAX_SIZE: u64 = 1 << 60;

/// Parses a byte size such as `100MB`, `64MiB`, `1.5G` or `4096`. A bare number is multiplied by
/// `bare_unit`, so `-C 100` can keep tcpdump's meaning (millions of bytes) and `-B 4096` its
/// meaning (KiB). Decimal units (k, M, G, T) are powers of 1000, binary ones (KiB, MiB, ...)
/// powers of 1024; the trailing `B` is optional and case is ignored except for the `i`.
pub fn parse_size(s: &str, bare_unit: u64) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number such as 100MB or 64MiB"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: {num:?} is not a number"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => bare_unit,
        "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, kB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > MAX_SIZE as f64 {
        return Err(format!("invalid size {s:?}: out of range (at most 1EiB)"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration such as `5m`, `1s`, `250ms`, `1h30m`; a bare number means seconds, as
/// tcpdump's `-G` does.
/// Anything above [`MAX_DURATION`] is refused with a message, never a panic later.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        t.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("invalid duration {s:?}: {e} (at most 10 years)"))?
    } else {
        humantime::parse_duration(t)
            .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 500ms, 30s, 5m, 1h)"))?
    };
    if d > MAX_DURATION {
        return Err(format!(
            "invalid duration {s:?}: out of range (at most 10 years)"
        ));
    }
    Ok(d)
}

/// Formats a byte count for humans (`1.5 MiB`), used in logs and error messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("100MB", 1), Ok(100_000_000));
        assert_eq!(parse_size("64MiB", 1), Ok(64 << 20));
        assert_eq!(parse_size("64mib", 1), Ok(64 << 20));
        assert_eq!(parse_size("1.5GiB", 1), Ok(3 << 29));
        assert_eq!(parse_size("10 kB", 1), Ok(10_000));
        assert_eq!(parse_size("7b", 1), Ok(7));
    }

    #[test]
    fn bare_sizes_use_the_flag_unit() {
        assert_eq!(parse_size("100", 1_000_000), Ok(100_000_000));
        assert_eq!(parse_size("4096", 1024), Ok(4 << 20));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size("", 1).unwrap_err().contains("expected a number"));
        assert!(parse_size("MB", 1)
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_size("10XB", 1).unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.2.3MB", 1)
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").unwrap_err().contains("examples"));
    }

    #[test]
    fn overflowing_values_are_errors_not_panics() {
        // Regression (issue 10): `--grace-period 18446744073709551615s` panicked (exit 101).
        for d in [
            "18446744073709551615s",
            "18446744073709551615",
            "99999999999999999999999",
            "584942417355y",
            "11y",
        ] {
            assert!(
                parse_duration(d).unwrap_err().contains("out of range")
                    || parse_duration(d).unwrap_err().contains("invalid duration"),
                "{d}"
            );
        }
        assert_eq!(parse_duration("10y"), Ok(MAX_DURATION));
        for v in ["18446744073709551615", "16EiB", "2EiB", "1e30"] {
            assert!(parse_size(v, 1).is_err(), "{v}");
        }
        assert!(parse_size("100", 1 << 40).is_ok());
        assert!(parse_size("18446744073709551615", 1_000_000)
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn size_parse_round_trips_every_binary_unit() {
        // Property over a range instead of a crate: n<unit> == n * 2^(10k) for all small n.
        for n in 0u64..2000 {
            for (u, shift) in [("KiB", 10), ("MiB", 20), ("GiB", 30)] {
                assert_eq!(parse_size(&format!("{n}{u}"), 1), Ok(n << shift));
            }
            assert_eq!(parse_size(&n.to_string(), 1000), Ok(n * 1000));
        }
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
