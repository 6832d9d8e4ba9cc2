//! When to try again: after a failure, as the error asks, with backoff and jitter; and the jitter
//! that spreads periodic checks.

use std::time::Duration;

use super::Retry;

/// The first delay after a transient failure.
const BACKOFF_BASE: Duration = Duration::from_secs(5);

/// The longest wait between attempts.
const CAP: Duration = Duration::from_secs(300);

/// The delay after `failures` transient failures in a row, before jitter.
fn backoff(failures: u32) -> Duration {
    (BACKOFF_BASE * (1u32 << failures.clamp(1, 8).saturating_sub(1))).min(CAP)
}

/// The wait after a failure of class `retry`, the `failures`th in a row: exponential backoff with
/// jitter for transient failures, capped at five minutes.
pub fn retry_delay(retry: Retry, failures: u32) -> Duration {
    match retry {
        Retry::Now => Duration::from_secs(1),
        // Spread the callers DPS held back, so they do not all return at once.
        Retry::After(wait) => wait + jitter(wait, 1.0),
        Retry::WhenInputsChange => CAP,
        // 5 s, 10 s, 20 s … 5 min: a DPS that fails every call costs one resource at most five
        // attempts in its first two minutes.
        Retry::Backoff => jitter(backoff(failures), 0.2),
    }
}

/// `duration` ± `fraction` at random, so checks of many resources spread out.
pub fn jitter(duration: Duration, fraction: f64) -> Duration {
    let unit = f64::from(u32::from_le_bytes(crate::random_bytes())) / f64::from(u32::MAX);
    duration.mul_f64(1.0 - fraction + 2.0 * fraction * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dps_failing_every_call_gets_at_most_five_attempts_in_two_minutes() {
        // Each retry at the earliest the jitter allows (-20%).
        let mut at = Duration::ZERO;
        let mut attempts = 1;
        for failures in 1.. {
            at += backoff(failures).mul_f64(0.8);
            if at > Duration::from_secs(120) {
                break;
            }
            attempts += 1;
        }
        assert_eq!(attempts, 5);
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(30), CAP);
        let jittered = retry_delay(Retry::Backoff, 2);
        assert!((Duration::from_secs(8)..=Duration::from_secs(12)).contains(&jittered), "{jittered:?}");
    }
}
