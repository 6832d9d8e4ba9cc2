//! Pacing of DPS calls: one limiter per DPS host, shared by every caller, so the operator never
//! uses more than its share of the DPS quota however many resources change at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

/// A generic cell rate limiter: `per_minute` operations a minute on average, with bursts of up to
/// `burst` operations after a quiet period.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Mutex<Duration>,
    burst: u32,
    /// The theoretical arrival time of the next operation.
    next: Mutex<Instant>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        // A tenth of a minute's budget may go at once.
        let burst = (per_minute / 10).max(1);
        Self { interval: Mutex::new(Self::interval(per_minute)), burst, next: Mutex::new(Instant::now()) }
    }

    fn interval(per_minute: u32) -> Duration {
        Duration::from_secs(60) / per_minute.max(1)
    }

    /// Changes the rate, for example after a connection's `rateLimit` changed.
    pub fn set_rate(&self, per_minute: u32) {
        *self.interval.lock().unwrap_or_else(|e| e.into_inner()) = Self::interval(per_minute);
    }

    /// Waits until one more operation may go; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// Lets no operation go for `wait`, after DPS answered 429 with that `Retry-After`: every caller
    /// of the host backs off, not only the one that was refused.
    pub fn pause(&self, wait: Duration) {
        let interval = *self.interval.lock().unwrap_or_else(|e| e.into_inner());
        let tolerance = interval * (self.burst - 1);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        *next = (*next).max(Instant::now() + wait + tolerance);
    }

    /// Takes a slot now if one is free; otherwise books nothing and returns how long until one
    /// is. (What a server enforcing the same rate does.)
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_reserve(Instant::now())
    }

    fn try_reserve(&self, now: Instant) -> Result<(), Duration> {
        let interval = *self.interval.lock().unwrap_or_else(|e| e.into_inner());
        let tolerance = interval * (self.burst - 1);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let arrival = (*next).max(now);
        match arrival.checked_sub(tolerance) {
            Some(allowed_at) if allowed_at > now => Err(allowed_at - now),
            _ => {
                *next = arrival + interval;
                Ok(())
            }
        }
    }

    /// Books the next slot at or after `now` and returns how long until it.
    fn reserve(&self, now: Instant) -> Duration {
        let interval = *self.interval.lock().unwrap_or_else(|e| e.into_inner());
        let tolerance = interval * (self.burst - 1);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let arrival = (*next).max(now);
        let allowed_at = arrival.checked_sub(tolerance).unwrap_or(now).max(now);
        *next = arrival + interval;
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
    async fn a_pause_holds_every_caller_back() {
        let limiter = RateLimiter::new(6000);
        limiter.pause(Duration::from_secs(3));
        assert_eq!(limiter.acquire().await, Duration::from_secs(3));
        assert_eq!(limiter.acquire().await, Duration::from_millis(10), "then the rate, without a burst");
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
