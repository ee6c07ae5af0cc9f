//! Budgets and free-tier quotas, kept in memory across config reloads.
//!
//! Spend is counted per gateway key and per provider, per UTC day and month; free-tier
//! usage per provider per minute and per UTC day. Routing asks before an attempt whether a
//! provider is still inside its limits, so traffic moves to the next target *before* a free
//! quota silently turns into paid traffic.

use crate::config::{Budget, FreeTier};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// The minute, UTC day and month numbers (since 1970) of a time.
fn periods(t: SystemTime) -> (u64, u64, u64) {
    let secs = crate::clock::unix_secs(t);
    let day = secs / 86_400;
    let (year, month, _) = crate::clock::civil_from_days(day as i64);
    let months = ((year - 1970) * 12 + month - 1).max(0) as u64;
    (secs / 60, day, months)
}

#[derive(Debug, Default, Clone)]
struct Counter {
    minute: u64,
    day: u64,
    month: u64,
    minute_requests: u64,
    minute_tokens: u64,
    day_requests: u64,
    day_usd: f64,
    month_usd: f64,
}

impl Counter {
    fn roll(&mut self, (minute, day, month): (u64, u64, u64)) {
        if self.minute != minute {
            self.minute = minute;
            self.minute_requests = 0;
            self.minute_tokens = 0;
        }
        if self.day != day {
            self.day = day;
            self.day_requests = 0;
            self.day_usd = 0.0;
        }
        if self.month != month {
            self.month = month;
            self.month_usd = 0.0;
        }
    }
}

/// Why a request may not use something now.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    /// A USD budget (day or month) is spent.
    Budget(String),
    /// A free-tier quota is used up.
    FreeTier(String),
}

impl Limit {
    /// Human-readable reason, for the 429 message and the log.
    pub fn reason(&self) -> &str {
        match self {
            Limit::Budget(r) | Limit::FreeTier(r) => r,
        }
    }
}

/// The in-memory ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    counters: Mutex<HashMap<String, Counter>>,
}

impl Ledger {
    fn with<R>(&self, key: &str, f: impl FnOnce(&mut Counter) -> R) -> Option<R> {
        let mut map = self.counters.lock().ok()?;
        let c = map.entry(key.to_owned()).or_default();
        c.roll(periods(SystemTime::now()));
        Some(f(c))
    }

    /// Whether `key` (e.g. `key:team-a`, `provider:openai`) is inside `budget`.
    pub fn check_budget(&self, key: &str, budget: &Budget) -> Result<(), Limit> {
        let (day, month) = self
            .with(key, |c| (c.day_usd, c.month_usd))
            .unwrap_or((0.0, 0.0));
        if let Some(limit) = budget.usd_per_day.filter(|l| day >= *l) {
            return Err(Limit::Budget(format!(
                "{key} spent ${day:.4} of its ${limit} daily budget"
            )));
        }
        if let Some(limit) = budget.usd_per_month.filter(|l| month >= *l) {
            return Err(Limit::Budget(format!(
                "{key} spent ${month:.4} of its ${limit} monthly budget"
            )));
        }
        Ok(())
    }

    /// Whether provider `key` has free-tier room for one more request.
    pub fn check_free_tier(&self, key: &str, tier: &FreeTier) -> Result<(), Limit> {
        let (rpm, tpm, rpd) = self
            .with(key, |c| {
                (c.minute_requests, c.minute_tokens, c.day_requests)
            })
            .unwrap_or_default();
        let full = |what: &str, used: u64, limit: u64| {
            Err(Limit::FreeTier(format!(
                "{key} used {used} of its free {limit} {what}"
            )))
        };
        if let Some(l) = tier.requests_per_minute.filter(|l| rpm >= *l) {
            return full("requests per minute", rpm, l);
        }
        if let Some(l) = tier.requests_per_day.filter(|l| rpd >= *l) {
            return full("requests per day", rpd, l);
        }
        if let Some(l) = tier.tokens_per_minute.filter(|l| tpm >= *l) {
            return full("tokens per minute", tpm, l);
        }
        Ok(())
    }

    /// Counts one request against free-tier quotas (every attempt counts: the provider
    /// counts what it receives).
    pub fn count_request(&self, key: &str) {
        self.with(key, |c| {
            c.minute_requests += 1;
            c.day_requests += 1;
        });
    }

    /// Adds tokens (free-tier per-minute quotas) and spend (budgets).
    pub fn add_usage(&self, key: &str, tokens: u64, usd: f64) {
        self.with(key, |c| {
            c.minute_tokens += tokens;
            c.day_usd += usd;
            c.month_usd += usd;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_budget_stops_at_the_limit() {
        let l = Ledger::default();
        let b = Budget {
            usd_per_day: Some(1.0),
            usd_per_month: None,
        };
        assert!(l.check_budget("key:a", &b).is_ok());
        l.add_usage("key:a", 10, 0.6);
        assert!(l.check_budget("key:a", &b).is_ok());
        l.add_usage("key:a", 10, 0.6);
        assert!(matches!(l.check_budget("key:a", &b), Err(Limit::Budget(_))));
        assert!(l.check_budget("key:b", &b).is_ok(), "keys are separate");
    }

    #[test]
    fn free_tier_requests_per_day() {
        let l = Ledger::default();
        let t = FreeTier {
            requests_per_minute: None,
            requests_per_day: Some(2),
            tokens_per_minute: None,
            on_exhausted: Default::default(),
        };
        for _ in 0..2 {
            assert!(l.check_free_tier("provider:g", &t).is_ok());
            l.count_request("provider:g");
        }
        assert!(matches!(
            l.check_free_tier("provider:g", &t),
            Err(Limit::FreeTier(_))
        ));
    }

    #[test]
    fn periods_are_utc_day_and_month() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600); // 2026-01-01
        let (_, day, month) = periods(t);
        assert_eq!(day, 20_454);
        assert_eq!(month, 56 * 12);
    }
}
