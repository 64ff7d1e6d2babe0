//! Token buckets keyed by user or address.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// A token bucket per key: `rate` tokens a second, at most `burst`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, i64)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter refilling `rate` tokens per second up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now_ms`. Returns `Err(ms)` with the wait
    /// until a token is available if the bucket is empty.
    pub fn check(&self, key: &K, now_ms: i64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets so the map cannot grow without bound.
            let burst = self.burst;
            let rate = self.rate;
            buckets
                .retain(|_, (tokens, at)| *tokens + (now_ms - *at) as f64 / 1000.0 * rate < burst);
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((self.burst, now_ms));
        let elapsed = (now_ms - *at).max(0) as f64 / 1000.0;
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *at = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else if self.rate > 0.0 {
            Err((((1.0 - *tokens) / self.rate) * 1000.0).ceil() as u64)
        } else {
            Err(u64::MAX / 2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(5.0, 20.0);
        for _ in 0..20 {
            rl.check(&1, 0).unwrap();
        }
        let wait = rl.check(&1, 0).unwrap_err();
        assert_eq!(wait, 200);
        rl.check(&1, 200).unwrap();
        assert!(rl.check(&1, 200).is_err());
        rl.check(&2, 200).unwrap();
    }
}
