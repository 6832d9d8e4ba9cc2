//! Pacing of DPS calls: one limiter per DPS host, shared by every caller, so the operator never
//! uses more than its share of the DPS quota however many resources change at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

/// A generic cell rate limiter: `per_minute` operations a minute on average, with bursts of up to
/// a tenth of that after a quiet period. When DPS throttles anyway (its quota is shared with other
/// clients), every caller waits out its `Retry-After` and the rate halves; it then climbs back by a
/// quarter of the configured rate every [`RECOVERY_STEP`] without throttling, so a few 429s cost
/// seconds, not minutes.
/// How long without a 429 before the rate climbs back one step.
pub const RECOVERY_STEP: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The configured rate.
    configured: u32,
    /// The rate in force: the configured one, or less after throttling.
    current: u32,
    /// When the rate was last lowered or raised.
    adjusted: Instant,
    /// The theoretical arrival time of the next operation.
    next: Instant,
}

impl State {
    fn interval(&self) -> Duration {
        Duration::from_secs(60) / self.current.max(1)
    }

    fn tolerance(&self) -> Duration {
        self.interval() * ((self.current / 10).max(1) - 1)
    }

    fn recover(&mut self, now: Instant) {
        while self.current < self.configured && now.duration_since(self.adjusted) >= RECOVERY_STEP {
            self.current = (self.current + self.configured.div_ceil(4)).min(self.configured);
            self.adjusted += RECOVERY_STEP;
        }
    }
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        let now = Instant::now();
        let per_minute = per_minute.max(1);
        Self {
            state: Mutex::new(State {
                configured: per_minute,
                current: per_minute,
                adjusted: now,
                next: now,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the rate, for example after a connection's `rateLimit` changed.
    pub fn set_rate(&self, per_minute: u32) {
        let mut state = self.state();
        let per_minute = per_minute.max(1);
        if state.configured != per_minute {
            state.configured = per_minute;
            state.current = state.current.min(per_minute).max(1);
            if state.current < per_minute && state.adjusted.elapsed() >= RECOVERY_STEP {
                state.current = per_minute;
            }
        }
    }

    /// The rate in force now, per minute.
    pub fn current_rate(&self) -> u32 {
        self.state().current
    }

    /// Waits until one more operation may go; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// DPS answered 429: hold every caller of the host back for `wait` (its `Retry-After`) and
    /// halve the rate, so the operator settles below what DPS will take.
    pub fn throttled(&self, wait: Duration) {
        let now = Instant::now();
        let mut state = self.state();
        if now.duration_since(state.adjusted) >= Duration::from_secs(1) || state.current == state.configured {
            state.current = (state.current / 2).max(1);
            state.adjusted = now;
        }
        let hold = now + wait + state.tolerance();
        state.next = state.next.max(hold);
    }

    /// Takes a slot now if one is free; otherwise books nothing and returns how long until one
    /// is. (What a server enforcing the same rate does.)
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_reserve(Instant::now())
    }

    fn try_reserve(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state();
        let arrival = state.next.max(now);
        match arrival.checked_sub(state.tolerance()) {
            Some(allowed_at) if allowed_at > now => Err(allowed_at - now),
            _ => {
                state.next = arrival + state.interval();
                Ok(())
            }
        }
    }

    /// Books the next slot at or after `now` and returns how long until it.
    fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.state();
        state.recover(now);
        let arrival = state.next.max(now);
        let allowed_at = arrival.checked_sub(state.tolerance()).unwrap_or(now).max(now);
        state.next = arrival + state.interval();
        allowed_at - now
    }
}

/// The limiters of all DPS hosts, created on first use.
#[derive(Debug, Default)]
pub struct RateLimiters {
    by_host: Mutex<HashMap<String, Arc<RateLimiter>>>,
}

impl RateLimiters {
    /// The limiter of `host` (case-insensitive), set to `per_minute`.
    pub fn for_host(&self, host: &str, per_minute: u32) -> Arc<RateLimiter> {
        let mut by_host = self.by_host.lock().unwrap_or_else(|e| e.into_inner());
        let limiter = by_host
            .entry(host.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(RateLimiter::new(per_minute)));
        limiter.set_rate(per_minute);
        limiter.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_operations_are_spaced_by_the_rate() {
        let limiter = RateLimiter::new(600); // one every 100 ms, bursts of 60
        let start = Instant::now();
        let waits: Vec<Duration> = (0..62).map(|_| limiter.reserve(start)).collect();
        assert!(waits[..60].iter().all(Duration::is_zero), "the burst is free");
        assert_eq!(waits[60], Duration::from_millis(100));
        assert_eq!(waits[61], Duration::from_millis(200));
    }

    #[test]
    fn a_quiet_period_refills_the_burst_but_no_more() {
        let limiter = RateLimiter::new(60); // one a second, bursts of 6
        let start = Instant::now();
        for _ in 0..10 {
            limiter.reserve(start);
        }
        let later = start + Duration::from_secs(60);
        let waits: Vec<Duration> = (0..8).map(|_| limiter.reserve(later)).collect();
        assert!(waits[..6].iter().all(Duration::is_zero));
        assert_eq!(waits[6], Duration::from_secs(1));
    }

    #[test]
    fn over_a_minute_no_more_than_the_rate_plus_the_burst_goes() {
        let limiter = RateLimiter::new(120);
        let start = Instant::now();
        let within_a_minute =
            (0..1000).map(|_| limiter.reserve(start)).filter(|wait| *wait < Duration::from_secs(60)).count();
        assert_eq!(within_a_minute, 120 + 12 - 1);
    }

    #[test]
    fn try_acquire_refuses_without_booking_when_the_burst_is_spent() {
        let limiter = RateLimiter::new(60); // one a second, bursts of 6
        let start = Instant::now();
        assert!((0..6).all(|_| limiter.try_reserve(start).is_ok()));
        assert_eq!(limiter.try_reserve(start), Err(Duration::from_secs(1)));
        assert_eq!(limiter.try_reserve(start), Err(Duration::from_secs(1)), "a refusal books nothing");
        assert!(limiter.try_reserve(start + Duration::from_secs(1)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_holds_every_caller_back_halves_the_rate_and_climbs_back_within_seconds() {
        let limiter = RateLimiter::new(600);
        limiter.throttled(Duration::from_secs(3));
        assert_eq!(limiter.current_rate(), 300);
        let waited = limiter.acquire().await;
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        assert_eq!(
            limiter.acquire().await,
            Duration::from_millis(200),
            "then the halved rate, without a burst"
        );
        limiter.throttled(Duration::from_secs(1));
        assert_eq!(limiter.current_rate(), 150);
        tokio::time::advance(RECOVERY_STEP).await;
        limiter.acquire().await;
        assert_eq!(limiter.current_rate(), 300, "a quarter of the configured rate back per quiet step");
        tokio::time::advance(RECOVERY_STEP * 3).await;
        limiter.acquire().await;
        assert_eq!(limiter.current_rate(), 600, "up to the configured rate, no further");
        tokio::time::advance(RECOVERY_STEP * 10).await;
        limiter.acquire().await;
        assert_eq!(limiter.current_rate(), 600);
    }

    #[test]
    fn hosts_share_one_limiter_case_insensitively() {
        let limiters = RateLimiters::default();
        let a = limiters.for_host("Contoso.azure-devices-provisioning.net", 100);
        let b = limiters.for_host("contoso.azure-devices-provisioning.net", 100);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &limiters.for_host("other.azure-devices-provisioning.net", 100)));
    }
}
