//! The frames-per-second limit of a session: a token bucket with bursts
//! of twice the rate. Under `rate_limit_policy = "throttle"` (the default)
//! the driver waits for a token, which slows a fast client to the rate;
//! under `"close"` a frame beyond it ends the session.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket of frames per second, with bursts of twice the rate.
#[derive(Debug)]
pub struct RateLimit {
    pub per_second: u32,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            tokens: 2.0 * per_second as f64,
            last: Instant::now(),
        }
    }

    /// Takes one token, possibly borrowed from the future: how long to wait
    /// before the frame may be handled (zero within the rate).
    pub fn wait(&mut self, now: Instant) -> Duration {
        if self.per_second == 0 {
            return Duration::ZERO;
        }
        let rate = self.per_second as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(2.0 * rate) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// Takes one token; `false` when the client sends too fast.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let rate = self.per_second as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(2.0 * rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_of_twice_the_rate_then_the_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10);
        limit.last = start;
        for _ in 0..20 {
            assert!(limit.allow(start));
        }
        assert!(!limit.allow(start));
        assert!(limit.allow(start + Duration::from_millis(100)));
        let mut throttled = RateLimit::new(10);
        throttled.last = start;
        for _ in 0..20 {
            assert_eq!(throttled.wait(start), Duration::ZERO);
        }
        let wait = throttled.wait(start);
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let mut limit = RateLimit::new(0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| limit.allow(now)));
        assert_eq!(limit.wait(now), Duration::ZERO);
    }
}
