//! The retry budget (after Finagle's): retries may add at most a fraction of the recent
//! request rate, plus a small floor, so an outage that hits several providers at once does
//! not multiply the load on the ones still up.

use std::sync::atomic::{AtomicU64, Ordering};

/// One-second buckets over the window.
const BUCKETS: usize = 10;

/// A sliding window of first attempts and retries.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// Retries always allowed per window, whatever the traffic (so a quiet gateway can still
    /// fail over).
    floor: u64,
    /// (second, requests, retries) per bucket; packed so each is a plain atomic.
    seconds: [AtomicU64; BUCKETS],
    requests: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

impl RetryBudget {
    /// `ratio` of requests may be retried, plus `floor` retries per 10 s window.
    pub fn new(ratio: f64, floor: u64) -> Self {
        RetryBudget {
            ratio: ratio.clamp(0.0, 1.0),
            floor,
            seconds: Default::default(),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    fn bucket(&self, now_s: u64) -> usize {
        let i = (now_s % BUCKETS as u64) as usize;
        if self.seconds[i].swap(now_s, Ordering::AcqRel) != now_s {
            // A new second reuses the slot: forget what it held 10 s ago.
            self.requests[i].store(0, Ordering::Release);
            self.retries[i].store(0, Ordering::Release);
        }
        i
    }

    fn totals(&self, now_s: u64) -> (u64, u64) {
        let mut req = 0;
        let mut ret = 0;
        for i in 0..BUCKETS {
            if now_s.saturating_sub(self.seconds[i].load(Ordering::Acquire)) < BUCKETS as u64 {
                req += self.requests[i].load(Ordering::Acquire);
                ret += self.retries[i].load(Ordering::Acquire);
            }
        }
        (req, ret)
    }

    /// The configured fraction.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Counts a client request (its first attempt).
    pub fn on_request(&self) {
        let now_s = crate::health::now_ms() / 1000;
        let i = self.bucket(now_s);
        self.requests[i].fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one retry from the budget, or says no.
    pub fn try_retry(&self) -> bool {
        let now_s = crate::health::now_ms() / 1000;
        let (req, ret) = self.totals(now_s);
        let allowed = (self.ratio * req as f64) as u64 + self.floor;
        if ret >= allowed {
            return false;
        }
        let i = self.bucket(now_s);
        self.retries[i].fetch_add(1, Ordering::AcqRel);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_ratio_plus_floor() {
        let b = RetryBudget::new(0.2, 5);
        let mut granted = 0;
        for _ in 0..500 {
            b.on_request();
            if b.try_retry() {
                granted += 1;
            }
        }
        assert!((100..=105).contains(&granted), "granted {granted}");
    }

    #[test]
    fn floor_allows_retries_on_a_quiet_gateway() {
        let b = RetryBudget::new(0.0, 3);
        b.on_request();
        assert!(b.try_retry() && b.try_retry() && b.try_retry());
        assert!(!b.try_retry());
    }
}
