//! DPS's service quota: a number of operations a minute per unit (1,000 for S1), refused with 429
//! and `Retry-After` beyond it. DPS documents the rate but not how much of it may come at once;
//! the emulator lets a tenth of a minute's operations through in a burst, then one every
//! `60 s / rate`.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

/// A bucket of operations that refills at the per-minute rate.
#[derive(Debug)]
pub struct Quota {
    per_minute: u32,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Operations that may go now (fractional while refilling).
    available: f64,
    refilled: Instant,
}

impl Quota {
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        Self {
            per_minute,
            bucket: Mutex::new(Bucket { available: Self::burst(per_minute), refilled: Instant::now() }),
        }
    }

    fn burst(per_minute: u32) -> f64 {
        f64::from((per_minute / 10).max(1))
    }

    /// Counts one operation, or says how long until one is allowed.
    pub fn take(&self) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let per_second = f64::from(self.per_minute) / 60.0;
        let refill = now.duration_since(bucket.refilled).as_secs_f64() * per_second;
        bucket.available = (bucket.available + refill).min(Self::burst(self.per_minute));
        bucket.refilled = now;
        if bucket.available >= 1.0 {
            bucket.available -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.available) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_a_tenth_then_the_rate() {
        let quota = Quota::new(600);
        for _ in 0..60 {
            quota.take().expect("within the burst");
        }
        let wait = quota.take().unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one every 100 ms at 600 a minute");
        tokio::time::advance(wait).await;
        quota.take().expect("refilled");
        assert!(quota.take().is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..60 {
            quota.take().expect("a quiet minute refills the burst, no more");
        }
        assert!(quota.take().is_err());
    }
}
