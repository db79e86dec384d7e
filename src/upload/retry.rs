//! Whether to retry (classification) kept apart from how long to wait (backoff), both pure so
//! they are unit-tested without a network. Also the deadline arithmetic of the preStop budget.
//!
//! Retried: connect errors, timeouts, broken connections, 408, 429 and 5xx except 501. Never
//! retried: other 4xx (the receiver said no; sending again will not change its mind), 3xx
//! (redirects are not followed: a streamed body cannot be replayed to another place, and an
//! `Authorization` header must not follow one), 501, and TLS certificate failures
//! (verification cannot be switched off, so retrying would only burn the budget).

use std::time::{Duration, SystemTime};

/// What to do after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAction {
    Success,
    /// Try again; `retry_after` is the receiver's `Retry-After`, if it sent one.
    Retry {
        retry_after: Option<Duration>,
    },
    /// Give up on this file: the failure will not go away by itself.
    Permanent,
}

/// Classifies an HTTP status (and its Retry-After header, if any).
pub fn classify_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> RetryAction {
    match status {
        200..=299 => RetryAction::Success,
        408 | 429 => RetryAction::Retry {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        501 => RetryAction::Permanent,
        500..=599 => RetryAction::Retry {
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        _ => RetryAction::Permanent,
    }
}

/// Transport failures, as far as the HTTP stack lets us tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    Dns,
    Connect,
    Timeout,
    /// Connection reset or closed while sending or reading.
    Broken,
    /// The server's certificate did not verify.
    Certificate,
    Other,
}

pub fn classify_transport(e: TransportError) -> RetryAction {
    match e {
        TransportError::Certificate => RetryAction::Permanent,
        _ => RetryAction::Retry { retry_after: None },
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 10.2.3).
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential backoff: the base doubles per attempt up to `cap`; with "equal jitter" the wait
/// is uniformly in [d/2, d], so concurrent uploaders spread out but never retry instantly.
/// `jitter` is a uniform sample in [0, 1).
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
    let d = exp.min(cap);
    let j = jitter.clamp(0.0, 1.0);
    d / 2 + d.mul_f64(j / 2.0)
}

/// A connect that has not succeeded in this long will not: retry on a fresh one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Below this much time left an attempt cannot achieve anything: stop instead.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(250);

/// How long to sleep before the next attempt, or None when no attempt fits in what is left.
/// A Retry-After is honoured when the attempt after it still fits; otherwise the receiver's
/// wish loses to the deadline and we try once more after our own backoff (the Pod is going
/// away; not trying means losing the file).
pub fn next_sleep(
    backoff: Duration,
    retry_after: Option<Duration>,
    remaining: Duration,
) -> Option<Duration> {
    let usable = remaining.checked_sub(MIN_ATTEMPT)?;
    let wanted = match retry_after {
        Some(ra) if ra <= usable => ra.max(backoff.min(usable)),
        _ => backoff,
    };
    if wanted > usable {
        // Sleep what we can and try one last time.
        return if usable.is_zero() { None } else { Some(usable) };
    }
    Some(wanted)
}

/// The lowest upload rate an attempt is given time for: a body that needs longer at this rate
/// may use everything that is left; a smaller one gets at most half of it (or what it needs),
/// so one stalled attempt leaves room for a retry.
pub const MIN_RATE: f64 = 1024.0 * 1024.0;
/// Added to `body / MIN_RATE` for connecting, TLS and the receiver's processing.
pub const ATTEMPT_ALLOWANCE: Duration = Duration::from_secs(5);
/// The longest an attempt waits without the receiver taking any body bytes.
pub const STALL_MAX: Duration = Duration::from_secs(5);
/// The longest an attempt waits for the response head after the whole body went out.
pub const RESPONSE_MAX: Duration = Duration::from_secs(10);
/// Patience never goes below this, so a receiver gets a chance even near the deadline.
pub const PATIENCE_MIN: Duration = Duration::from_secs(1);

/// The bounds of one attempt (see [`attempt_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptLimits {
    /// The whole attempt: connect, send, response and its body.
    pub total: Duration,
    /// No body bytes taken by the receiver for this long: abandon the attempt.
    pub stall: Duration,
    /// No response head this long after the whole body was sent: abandon the attempt.
    pub response: Duration,
}

/// `remaining` is what is left of this file's turn, `run_left` what is left of the whole run
/// (the preStop budget; the same in `--continuous`). patience = run_left / 3 between
/// [`PATIENCE_MIN`] and [`RESPONSE_MAX`] (the stall limit also at most [`STALL_MAX`]): a
/// receiver that stops reading or never answers costs one bounded attempt, not the budget,
/// while one that verifies a body before answering gets the wait the budget allows, also when
/// the file's turn is a share of it. `total = min(remaining, max(remaining / 2, send + 5 s,
/// send + patience))` with send = body_len / MIN_RATE: one attempt fits its response wait
/// unless the turn itself is shorter.
pub fn attempt_limits(remaining: Duration, run_left: Duration, body_len: u64) -> AttemptLimits {
    let send = Duration::from_secs_f64((body_len as f64 / MIN_RATE).min(1e6));
    let patience = (run_left.max(remaining) / 3).clamp(PATIENCE_MIN, RESPONSE_MAX);
    let need = send + ATTEMPT_ALLOWANCE.max(patience);
    let total = remaining.min((remaining / 2).max(need));
    AttemptLimits {
        total,
        stall: patience.min(STALL_MAX),
        response: patience,
    }
}

/// How long before the deadline the preStop path stops waiting for a capture that has not
/// finalized, to keep time for uploading its last file: the estimated upload time of
/// `pending_bytes` at `rate` bytes/s plus a fixed allowance, never more than half the budget
/// (the other half is for waiting: an app draining slowly is the common case).
pub fn wait_reserve(pending_bytes: u64, rate: f64, budget: Duration) -> Duration {
    let fixed = Duration::from_millis(1500);
    let est = if rate > 0.0 {
        Duration::from_secs_f64((pending_bytes as f64 / rate).min(1e6))
    } else {
        Duration::ZERO
    };
    (fixed + est).min(budget / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_like_vector() {
        let now = SystemTime::now();
        assert_eq!(classify_status(200, None, now), RetryAction::Success);
        assert_eq!(classify_status(201, None, now), RetryAction::Success);
        assert_eq!(classify_status(204, None, now), RetryAction::Success);
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(classify_status(s, None, now), RetryAction::Retry { .. }),
                "{s}"
            );
        }
        for s in [301, 302, 307, 400, 401, 403, 404, 409, 413, 422, 501] {
            assert_eq!(classify_status(s, None, now), RetryAction::Permanent, "{s}");
        }
        assert_eq!(
            classify_status(429, Some("3"), now),
            RetryAction::Retry {
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn transport_errors_retry_except_certificates() {
        for e in [
            TransportError::Dns,
            TransportError::Connect,
            TransportError::Timeout,
            TransportError::Broken,
            TransportError::Other,
        ] {
            assert!(matches!(classify_transport(e), RetryAction::Retry { .. }));
        }
        assert_eq!(
            classify_transport(TransportError::Certificate),
            RetryAction::Permanent
        );
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(12))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn backoff_bounds_hold_for_every_attempt_and_jitter() {
        let (base, cap) = (Duration::from_millis(200), Duration::from_secs(5));
        let mut prev_max = Duration::ZERO;
        for attempt in 0..100 {
            let lo = backoff(attempt, base, cap, 0.0);
            let hi = backoff(attempt, base, cap, 0.999_999);
            let nominal = (base * 2u32.saturating_pow(attempt.min(20))).min(cap);
            assert_eq!(lo, nominal / 2);
            assert!(hi <= nominal && hi >= lo);
            assert!(hi >= prev_max / 2, "never shrinks by more than jitter");
            prev_max = hi;
            for j in [0.1, 0.5, 0.9] {
                let d = backoff(attempt, base, cap, j);
                assert!(d >= lo && d <= hi);
                assert!(d <= cap);
            }
        }
    }

    #[test]
    fn never_sleeps_past_the_deadline() {
        let ms = Duration::from_millis;
        // Property: for any backoff, retry-after and remaining time, the sleep leaves room for
        // an attempt, or there is no sleep at all.
        for remaining in [0, 100, 250, 251, 300, 1000, 5000, 30_000] {
            for b in [0, 50, 400, 2000, 10_000] {
                for ra in [None, Some(0), Some(100), Some(3000), Some(60_000)] {
                    let s = next_sleep(ms(b), ra.map(ms), ms(remaining));
                    if let Some(s) = s {
                        assert!(
                            s + MIN_ATTEMPT <= ms(remaining),
                            "{remaining} {b} {ra:?} -> {s:?}"
                        );
                    } else {
                        assert!(ms(remaining) <= MIN_ATTEMPT);
                    }
                }
            }
        }
        // A Retry-After that fits is honoured; one that does not falls back to the backoff.
        assert_eq!(
            next_sleep(ms(200), Some(ms(2000)), ms(10_000)),
            Some(ms(2000))
        );
        assert_eq!(
            next_sleep(ms(200), Some(ms(60_000)), ms(10_000)),
            Some(ms(200))
        );
    }

    #[test]
    fn one_attempt_never_takes_the_whole_budget_when_a_retry_fits() {
        let s = Duration::from_secs;
        // Small body, big budget: half of it at most, patience capped.
        let l = attempt_limits(s(28), s(28), 100_000);
        assert_eq!(l.total, s(14));
        assert_eq!((l.stall, l.response), (STALL_MAX, s(28) / 3));
        // A body that needs longer than half at MIN_RATE may use what it needs.
        let l = attempt_limits(s(28), s(28), 15 << 20);
        assert_eq!(l.total, s(15) + s(28) / 3);
        // ... but never more than what is left.
        assert_eq!(attempt_limits(s(28), s(28), 1 << 40).total, s(28));
        // A tight budget: everything left, and patience at its floor.
        let l = attempt_limits(s(3), s(3), 1000);
        assert_eq!(l.total, s(3));
        assert_eq!((l.stall, l.response), (PATIENCE_MIN, PATIENCE_MIN));
        // A file's turn (a share of the budget while others wait) does not shrink the response
        // wait: it follows the run's budget, and the attempt may use the whole turn for it.
        let l = attempt_limits(s(7), s(28), 100_000);
        assert_eq!((l.total, l.response), (s(7), s(28) / 3));
        // Property: never past the remaining time, patience within its bounds.
        for ms in [0u64, 10, 999, 3000, 60_000, 3_600_000] {
            for len in [0u64, 1, 1 << 20, 1 << 30, u64::MAX] {
                let d = Duration::from_millis(ms);
                let l = attempt_limits(d, d * 4, len);
                assert!(l.total <= Duration::from_millis(ms));
                assert!(l.stall >= PATIENCE_MIN && l.stall <= STALL_MAX);
                assert!(l.response >= PATIENCE_MIN && l.response <= RESPONSE_MAX);
            }
        }
    }

    #[test]
    fn wait_reserve_bounds() {
        let s = Duration::from_secs;
        assert_eq!(wait_reserve(0, 0.0, s(28)), Duration::from_millis(1500));
        assert_eq!(
            wait_reserve(10 << 20, (10 << 20) as f64, s(28)),
            Duration::from_millis(2500)
        );
        assert_eq!(wait_reserve(u64::MAX, 1.0, s(28)), s(14));
    }
}
