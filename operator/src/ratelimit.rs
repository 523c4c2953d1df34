//! The budget for the operator's FleetNode writes: at most `burst` at
//! once, refilled at `qps` per second, so a 10,000-node wave does not
//! flood the API server. A `governor` direct limiter (GCRA) shared by
//! every reconcile.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};

/// A shared write budget.
pub struct RateLimiter {
    inner: DefaultDirectRateLimiter,
}

impl RateLimiter {
    /// `qps` writes per second (at least one per 1,000 s), at most `burst`
    /// saved up (at least 1).
    pub fn new(qps: f64, burst: u32) -> Self {
        let period = Duration::from_secs_f64(1.0 / qps.max(0.001));
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        RateLimiter {
            inner: DefaultDirectRateLimiter::direct(quota),
        }
    }

    /// Wait for one write's turn.
    pub async fn acquire(&self) {
        self.inner.until_ready().await;
    }

    /// Take one write's turn if it is free now.
    pub fn try_acquire(&self) -> bool {
        self.inner.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_free_and_then_the_budget_is_spent() {
        // One per 100 s: nothing refills while the test runs.
        let rl = RateLimiter::new(0.01, 5);
        for i in 0..5 {
            assert!(rl.try_acquire(), "write {i} of the burst waited");
        }
        assert!(!rl.try_acquire(), "a sixth write went through at once");
    }

    #[tokio::test]
    async fn a_spent_budget_refills_at_qps() {
        let rl = RateLimiter::new(20.0, 1);
        rl.acquire().await;
        let start = std::time::Instant::now();
        for _ in 0..4 {
            rl.acquire().await;
        }
        // Four more at 20/s wait at least ~200 ms (lower bound only: a
        // loaded machine may wait longer).
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(190),
            "4 more at 20/s took {took:?}"
        );
    }

    #[test]
    fn nonsense_settings_still_make_a_limiter() {
        let rl = RateLimiter::new(0.0, 0);
        assert!(rl.try_acquire());
        assert!(!rl.try_acquire());
        let fast = RateLimiter::new(f64::INFINITY, 3);
        assert!(fast.try_acquire());
    }
}
