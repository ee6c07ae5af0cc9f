//! Budgets and free-tier quotas, kept across config reloads.
//!
//! Spend is counted per gateway key and per provider, per UTC day and month; free-tier
//! usage per provider per minute and per UTC day. Routing asks before an attempt whether a
//! provider is still inside its limits, so traffic moves to the next target *before* a free
//! quota silently turns into paid traffic.
//!
//! Every quantity is a [`Meter`] counted in integer units (requests, tokens, nano-USD). With
//! `state.backend: memory` a meter counts this process only. With `redis` the fleet total
//! lives in Redis and this process spends **leases**: blocks of units claimed from Redis
//! ahead of need by the background sync (`crate::fleet`), so the request path never waits
//! on Redis. See `docs/shared-state.md` for the bounds this gives.

use crate::config::{Budget, FreeTier};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// Nano-USD per USD: spend is counted in integers so leases add up exactly.
pub const NANO_USD: f64 = 1e9;

/// The minute, UTC day and month numbers (since 1970) of a time.
fn periods(t: SystemTime) -> [u64; 3] {
    let secs = crate::clock::unix_secs(t);
    let day = secs / 86_400;
    let (year, month, _) = crate::clock::civil_from_days(day as i64);
    let months = ((year - 1970) * 12 + month - 1).max(0) as u64;
    [secs / 60, day, months]
}

/// One limited quantity of a ledger key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    RequestsPerMinute,
    TokensPerMinute,
    RequestsPerDay,
    UsdPerDay,
    UsdPerMonth,
}

impl Metric {
    /// Every metric, in slot order.
    pub const ALL: [Metric; 5] = [
        Metric::RequestsPerMinute,
        Metric::TokensPerMinute,
        Metric::RequestsPerDay,
        Metric::UsdPerDay,
        Metric::UsdPerMonth,
    ];

    fn slot(self) -> usize {
        self as usize
    }

    /// Short name, used in Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::RequestsPerMinute => "rpm",
            Metric::TokensPerMinute => "tpm",
            Metric::RequestsPerDay => "rpd",
            Metric::UsdPerDay => "usd_day",
            Metric::UsdPerMonth => "usd_month",
        }
    }

    /// Index into [`periods`].
    fn period_kind(self) -> usize {
        match self {
            Metric::RequestsPerMinute | Metric::TokensPerMinute => 0,
            Metric::RequestsPerDay | Metric::UsdPerDay => 1,
            Metric::UsdPerMonth => 2,
        }
    }

    /// The period number this metric counts in at `t`.
    pub fn period_at(self, t: SystemTime) -> u64 {
        periods(t)[self.period_kind()]
    }

    /// Longest a period of this metric lasts: how long its fleet counter must live.
    pub fn period_secs(self) -> u64 {
        [60, 86_400, 31 * 86_400][self.period_kind()]
    }

    /// The units one request adds to this metric, when it counts requests.
    fn counts_requests(self) -> bool {
        matches!(self, Metric::RequestsPerMinute | Metric::RequestsPerDay)
    }
}

/// The limits, in units, that a budget sets.
pub fn budget_limits(b: &Budget) -> impl Iterator<Item = (Metric, u64)> {
    let usd = |v: Option<f64>| v.map(|l| (l.max(0.0) * NANO_USD).round() as u64);
    [
        (Metric::UsdPerDay, usd(b.usd_per_day)),
        (Metric::UsdPerMonth, usd(b.usd_per_month)),
    ]
    .into_iter()
    .filter_map(|(m, l)| Some((m, l?)))
}

/// The limits, in units, that a free tier sets.
pub fn free_tier_limits(t: &FreeTier) -> impl Iterator<Item = (Metric, u64)> {
    [
        (Metric::RequestsPerMinute, t.requests_per_minute),
        (Metric::RequestsPerDay, t.requests_per_day),
        (Metric::TokensPerMinute, t.tokens_per_minute),
    ]
    .into_iter()
    .filter_map(|(m, l)| Some((m, l?)))
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

/// Where the ledger's truth is, as the fleet sync last found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This process alone (`state.backend: memory`).
    Memory,
    /// Shared, and the store answers: spend leases.
    Shared,
    /// Shared, store unreachable, `on_unavailable: local`: keep serving on what this
    /// process knows (the fleet total last seen plus its own spend since).
    SharedDownLocal,
    /// Shared, store unreachable, `on_unavailable: deny`: only leases already held.
    SharedDownDeny,
}

/// One quantity of one key in the current period.
#[derive(Debug, Clone, Default)]
struct Meter {
    period: u64,
    /// Units this process spent this period.
    used: i64,
    /// Shared: units claimed and not yet spent. Negative: spent ahead of a claim (a debt
    /// the next sync adds to the fleet counter unconditionally).
    lease: i64,
    /// Shared: the fleet counter (claimed by every replica) as last seen.
    fleet: i64,
    /// Shared: the units this process added to the fleet counter this period (what it
    /// adds back if the store lost its data).
    contributed: i64,
    /// Shared: the last claim found the fleet at its limit; no more spending ahead.
    exhausted: bool,
    /// Shared: a claim answered this period, so `fleet` is known.
    synced: bool,
    /// Shared: the store lost its data; the next claim re-adds `contributed`.
    reseed: bool,
    /// The lease size at the last sync: spending below half of it wakes the sync.
    last_size: i64,
    /// `health::now_ms` of the last spend (0: never), to give back leases nobody uses.
    last_spend_ms: u64,
    /// `health::now_ms` before which no claim is tried again (after one found the fleet
    /// exhausted), unless there is a debt to settle.
    quiet_until_ms: u64,
    /// Shared: a limit is configured for this meter (as of the last sync plan). Only then
    /// does a low lease wake the sync: an unlimited meter (a request counted for a
    /// per-minute quota nobody set) never gets a lease, and woke it on every request.
    limited: bool,
}

impl Meter {
    fn roll(&mut self, period: u64) {
        if self.period != period {
            *self = Meter {
                period,
                limited: self.limited,
                ..Meter::default()
            };
        }
    }

    /// The units a process may hold or spend ahead at once: a share of what the fleet has
    /// left, so leases shrink as the limit nears and little is stranded at the end.
    fn lease_size(&self, limit: u64, fraction: f64) -> i64 {
        let left = (limit as i64 - self.fleet).max(0) as f64;
        let floor = Self::min_lease(limit, fraction);
        ((left * fraction).ceil() as i64).max(floor)
    }

    /// The smallest lease, and all a replica may spend ahead before its first claim of a
    /// period answers (it does not know yet how much the fleet has left).
    fn min_lease(limit: u64, fraction: f64) -> i64 {
        (limit as f64 * fraction / 50.0).ceil().max(1.0) as i64
    }

    /// Whether one more request may use this quantity now.
    fn allows(&self, limit: u64, mode: Mode, fraction: f64) -> bool {
        let limit_units = limit as i64;
        match mode {
            Mode::Memory => self.used < limit_units,
            _ if self.lease > 0 => true,
            Mode::Shared if !self.synced => -self.lease < Self::min_lease(limit, fraction),
            Mode::Shared => !self.exhausted && -self.lease < self.lease_size(limit, fraction),
            Mode::SharedDownLocal => {
                !self.exhausted && self.fleet + (-self.lease).max(0) < limit_units
            }
            Mode::SharedDownDeny => false,
        }
    }

    /// What this process believes was used fleet-wide (its own count with `memory`).
    fn shown(&self, mode: Mode) -> i64 {
        match mode {
            Mode::Memory => self.used,
            _ => self.used.max(self.fleet + (-self.lease).max(0)),
        }
    }
}

/// What the fleet sync must do for one meter.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOp {
    /// Add `debt` to the fleet counter unconditionally, then claim up to `want` more
    /// without passing `limit`.
    Claim { debt: i64, want: i64, limit: u64 },
    /// Give back `units` of an unused lease.
    Release { units: i64 },
}

/// One meter's sync work, as planned by [`Ledger::plan_sync`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSync {
    pub key: String,
    pub metric: Metric,
    pub period: u64,
    pub op: SyncOp,
}

/// The store's answer to a [`PlannedSync`]: units granted (0 for a release) and the fleet
/// counter after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncResult {
    pub granted: i64,
    pub fleet: i64,
}

/// A lease untouched this long is given back for other replicas to use.
const IDLE_RELEASE_MS: u64 = 2_000;
/// After a claim finds the fleet exhausted, ask again this often (others may give back).
const EXHAUSTED_RECHECK_MS: u64 = 1_000;

/// Budgets and quotas: the checks routing makes and the spend it records.
#[derive(Debug)]
pub struct Ledger {
    meters: Mutex<HashMap<String, [Meter; 5]>>,
    mode: AtomicU8,
    /// Wakes the fleet sync when a lease runs low (never awaited on the request path).
    low: tokio::sync::Notify,
    /// The share of what is left that one lease may take.
    lease_fraction: f64,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new(0.05)
    }
}

impl Ledger {
    /// A memory-mode ledger whose leases (once shared) take `lease_fraction` of what is left.
    pub fn new(lease_fraction: f64) -> Self {
        Ledger {
            meters: Mutex::new(HashMap::new()),
            mode: AtomicU8::new(Mode::Memory as u8),
            low: tokio::sync::Notify::new(),
            lease_fraction: lease_fraction.clamp(0.0001, 1.0),
        }
    }

    /// How checks are answered now.
    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Shared,
            2 => Mode::SharedDownLocal,
            3 => Mode::SharedDownDeny,
            _ => Mode::Memory,
        }
    }

    /// Set by the fleet sync as the store comes and goes.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Release);
    }

    /// Resolves when some lease runs low (the fleet sync waits on this between ticks).
    pub async fn lease_low(&self) {
        self.low.notified().await
    }

    fn with<R>(&self, key: &str, f: impl FnOnce(&mut [Meter; 5], SystemTime) -> R) -> Option<R> {
        let mut map = self.meters.lock().ok()?;
        let now = SystemTime::now();
        let meters = match map.get_mut(key) {
            Some(m) => m,
            None => map.entry(key.to_owned()).or_default(),
        };
        Some(f(meters, now))
    }

    /// The first limit in `limits` that `key` has reached, as (metric, used, limit).
    fn first_full(
        &self,
        key: &str,
        limits: impl Iterator<Item = (Metric, u64)>,
    ) -> Option<(Metric, i64, u64)> {
        let mode = self.mode();
        let fraction = self.lease_fraction;
        self.with(key, |meters, now| {
            limits.into_iter().find_map(|(metric, limit)| {
                let m = &mut meters[metric.slot()];
                m.roll(metric.period_at(now));
                (!m.allows(limit, mode, fraction)).then(|| (metric, m.shown(mode), limit))
            })
        })
        .flatten()
    }

    /// The reason when a limit was refused only because the store is unreachable and
    /// `on_unavailable: deny` fails closed (not because it was reached).
    fn failed_closed(&self, key: &str, used: i64, limit: u64) -> Option<String> {
        (self.mode() == Mode::SharedDownDeny && used < limit as i64).then(|| {
            format!(
                "{key}'s limits cannot be checked: the shared state store is unreachable \
                 and state.on_unavailable is deny"
            )
        })
    }

    /// Whether `key` (e.g. `key:team-a`, `provider:openai`) is inside `budget`.
    pub fn check_budget(&self, key: &str, budget: &Budget) -> Result<(), Limit> {
        let Some((metric, used, limit)) = self.first_full(key, budget_limits(budget)) else {
            return Ok(());
        };
        if let Some(why) = self.failed_closed(key, used, limit) {
            return Err(Limit::Budget(why));
        }
        let what = if metric == Metric::UsdPerDay {
            "daily"
        } else {
            "monthly"
        };
        Err(Limit::Budget(format!(
            "{key} spent ${:.4} of its ${} {what} budget",
            used as f64 / NANO_USD,
            limit as f64 / NANO_USD
        )))
    }

    /// Whether provider `key` has free-tier room for one more request.
    pub fn check_free_tier(&self, key: &str, tier: &FreeTier) -> Result<(), Limit> {
        let Some((metric, used, limit)) = self.first_full(key, free_tier_limits(tier)) else {
            return Ok(());
        };
        if let Some(why) = self.failed_closed(key, used, limit) {
            return Err(Limit::FreeTier(why));
        }
        let what = match metric {
            Metric::RequestsPerMinute => "requests per minute",
            Metric::RequestsPerDay => "requests per day",
            _ => "tokens per minute",
        };
        Err(Limit::FreeTier(format!(
            "{key} used {} of its free {limit} {what}",
            used.max(0)
        )))
    }

    /// Spends `units` of each metric `pick` names, and wakes the sync when a lease ran low.
    fn spend(&self, key: &str, pick: impl Fn(Metric) -> i64) {
        let shared = self.mode() != Mode::Memory;
        let low = self
            .with(key, |meters, now| {
                let ms = crate::health::now_ms();
                let mut low = false;
                for metric in Metric::ALL {
                    let units = pick(metric);
                    if units == 0 {
                        continue;
                    }
                    let m = &mut meters[metric.slot()];
                    m.roll(metric.period_at(now));
                    m.used += units;
                    m.last_spend_ms = ms.max(1); // 0 means never
                    if shared {
                        m.lease -= units;
                        // Half a lease left (or a debt): time to claim the next one.
                        low |= m.limited && (m.lease <= 0 || m.lease * 2 <= m.last_size);
                    }
                }
                low
            })
            .unwrap_or(false);
        if low {
            self.low.notify_one();
        }
    }

    /// Counts one request against free-tier quotas (every attempt counts: the provider
    /// counts what it receives).
    pub fn count_request(&self, key: &str) {
        self.spend(key, |m| i64::from(m.counts_requests()));
    }

    /// Adds tokens (free-tier per-minute quotas) and spend (budgets).
    pub fn add_usage(&self, key: &str, tokens: u64, usd: f64) {
        let nano = (usd.max(0.0) * NANO_USD).round() as i64;
        let tokens = tokens.min(i64::MAX as u64) as i64;
        self.spend(key, |m| match m {
            Metric::TokensPerMinute => tokens,
            Metric::UsdPerDay | Metric::UsdPerMonth => nano,
            _ => 0,
        });
    }

    /// What `key` has used of `metric` this period, as best this process knows: its own
    /// count with `memory`, the fleet's as last synced (plus its own since) when shared.
    pub fn used(&self, key: &str, metric: Metric) -> u64 {
        let mode = self.mode();
        self.with(key, |meters, now| {
            let m = &mut meters[metric.slot()];
            m.roll(metric.period_at(now));
            m.shown(mode).max(0) as u64
        })
        .unwrap_or(0)
    }

    /// The sync work due now for the limited meters in `limits` ((key, metric, limit)):
    /// claims for leases running low (or debts), releases of idle leases. `ms` is
    /// `health::now_ms()`.
    pub fn plan_sync(&self, limits: &[(String, Metric, u64)], ms: u64) -> Vec<PlannedSync> {
        let fraction = self.lease_fraction;
        let Ok(mut map) = self.meters.lock() else {
            return Vec::new();
        };
        let now = SystemTime::now();
        // Which meters are limited is decided here, from the current table: a meter whose
        // limit was removed stops waking the sync, and a key nobody used yet gets its
        // meters now, so its first spend already wakes it.
        for meters in map.values_mut() {
            meters.iter_mut().for_each(|m| m.limited = false);
        }
        let mut plan = Vec::new();
        for (key, metric, limit) in limits {
            let meters = match map.get_mut(key) {
                Some(meters) => meters,
                None => map.entry(key.clone()).or_default(),
            };
            let m = &mut meters[metric.slot()];
            m.limited = true;
            m.roll(metric.period_at(now));
            let debt = (-m.lease).max(0) + if m.reseed { m.contributed } else { 0 };
            let size = m.lease_size(*limit, fraction);
            m.last_size = size;
            let recently_used =
                m.last_spend_ms > 0 && ms.saturating_sub(m.last_spend_ms) < IDLE_RELEASE_MS;
            let op = if m.lease > 0 && !recently_used && !m.reseed {
                SyncOp::Release { units: m.lease }
            } else if debt > 0 || (recently_used && m.lease * 2 <= size && ms >= m.quiet_until_ms) {
                SyncOp::Claim {
                    debt,
                    want: if recently_used {
                        (size - m.lease.max(0)).max(0)
                    } else {
                        0
                    },
                    limit: *limit,
                }
            } else {
                continue;
            };
            plan.push(PlannedSync {
                key: key.clone(),
                metric: *metric,
                period: m.period,
                op,
            });
        }
        plan
    }

    /// Applies the store's answer to a planned sync (ignored if the period moved on).
    pub fn apply_sync(&self, planned: &PlannedSync, result: SyncResult, ms: u64) {
        let Ok(mut map) = self.meters.lock() else {
            return;
        };
        let Some(meters) = map.get_mut(&planned.key) else {
            return;
        };
        let m = &mut meters[planned.metric.slot()];
        if m.period != planned.period {
            return;
        }
        m.fleet = result.fleet;
        match planned.op {
            SyncOp::Claim { debt, want, limit } => {
                // The debt is in the fleet counter now; what was spent since the plan
                // stays a (new) debt in `lease`. A reseed re-added `contributed` itself.
                let lease_debt = debt - if m.reseed { m.contributed } else { 0 };
                m.lease += lease_debt + result.granted;
                m.contributed += lease_debt + result.granted;
                m.reseed = false;
                m.synced = true;
                m.exhausted = result.granted < want && result.fleet >= limit as i64;
                if m.exhausted {
                    m.quiet_until_ms = ms + EXHAUSTED_RECHECK_MS;
                }
            }
            SyncOp::Release { units } => {
                m.lease -= units;
                m.contributed -= units;
            }
        }
    }

    /// The store lost its data (it restarted empty): every meter adds back what this
    /// process had contributed this period, on its next sync.
    pub fn reseed_all(&self) {
        if let Ok(mut map) = self.meters.lock() {
            for meters in map.values_mut() {
                for m in meters.iter_mut().filter(|m| m.contributed > 0) {
                    m.reseed = true;
                }
            }
        }
    }

    /// Every positive lease, to give back at shutdown.
    pub fn plan_release_all(&self) -> Vec<PlannedSync> {
        let Ok(map) = self.meters.lock() else {
            return Vec::new();
        };
        let mut plan = Vec::new();
        for (key, meters) in map.iter() {
            for metric in Metric::ALL {
                let m = &meters[metric.slot()];
                if m.lease > 0 {
                    plan.push(PlannedSync {
                        key: key.clone(),
                        metric,
                        period: m.period,
                        op: SyncOp::Release { units: m.lease },
                    });
                }
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(day: f64) -> Budget {
        Budget {
            usd_per_day: Some(day),
            usd_per_month: None,
        }
    }

    fn tier_per_day(n: u64) -> FreeTier {
        FreeTier {
            requests_per_minute: None,
            requests_per_day: Some(n),
            tokens_per_minute: None,
            on_exhausted: Default::default(),
        }
    }

    /// A fake store: one fleet counter per (key, metric), with the claim and release
    /// semantics of the Redis scripts in `fleet::store`.
    #[derive(Default)]
    struct FakeStore(HashMap<(String, Metric), i64>);

    impl FakeStore {
        fn run(&mut self, ledger: &Ledger, limits: &[(String, Metric, u64)]) {
            self.run_at(ledger, limits, crate::health::now_ms());
        }

        fn run_at(&mut self, ledger: &Ledger, limits: &[(String, Metric, u64)], ms: u64) {
            for p in ledger.plan_sync(limits, ms) {
                let c = self.0.entry((p.key.clone(), p.metric)).or_default();
                let granted = match p.op {
                    SyncOp::Claim { debt, want, limit } => {
                        *c += debt;
                        let g = want.min(limit as i64 - *c).max(0);
                        *c += g;
                        g
                    }
                    SyncOp::Release { units } => {
                        *c = (*c - units).max(0);
                        0
                    }
                };
                ledger.apply_sync(&p, SyncResult { granted, fleet: *c }, ms);
            }
        }
    }

    #[test]
    fn daily_budget_stops_at_the_limit() {
        let l = Ledger::default();
        let b = budget(1.0);
        assert!(l.check_budget("key:a", &b).is_ok());
        l.add_usage("key:a", 10, 0.6);
        assert!(l.check_budget("key:a", &b).is_ok());
        l.add_usage("key:a", 10, 0.6);
        let err = l.check_budget("key:a", &b).unwrap_err();
        assert_eq!(
            err,
            Limit::Budget("key:a spent $1.2000 of its $1 daily budget".into())
        );
        assert!(l.check_budget("key:b", &b).is_ok(), "keys are separate");
    }

    #[test]
    fn free_tier_requests_per_day() {
        let l = Ledger::default();
        let t = tier_per_day(2);
        for _ in 0..2 {
            assert!(l.check_free_tier("provider:g", &t).is_ok());
            l.count_request("provider:g");
        }
        assert_eq!(
            l.check_free_tier("provider:g", &t),
            Err(Limit::FreeTier(
                "provider:g used 2 of its free 2 requests per day".into()
            ))
        );
        assert_eq!(l.used("provider:g", Metric::RequestsPerDay), 2);
    }

    #[test]
    fn periods_are_utc_day_and_month() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600); // 2026-01-01
        let [_, day, month] = periods(t);
        assert_eq!(day, 20_454);
        assert_eq!(month, 56 * 12);
    }

    /// Whether the sync was woken (a `notify_one` with nobody waiting leaves a permit).
    async fn woke(l: &Ledger) -> bool {
        let wait = tokio::time::timeout(std::time::Duration::from_millis(5), l.lease_low());
        wait.await.is_ok()
    }

    #[tokio::test]
    async fn only_limited_meters_wake_the_sync() {
        let l = Ledger::new(0.05);
        l.set_mode(Mode::Shared);
        let limits = vec![("provider:g".to_owned(), Metric::RequestsPerDay, 1000)];
        let mut store = FakeStore::default();
        // The sync at start: nothing used yet, nothing claimed.
        store.run(&l, &limits);
        // A key with no limit at all, and the unlimited quantities of a limited key (tokens,
        // USD, requests per minute), spend without a lease and must not wake it: they woke
        // it on every request, and each wake-up was a Redis round trip.
        for _ in 0..50 {
            l.count_request("provider:other");
            l.add_usage("provider:g", 500, 0.01);
        }
        assert!(!woke(&l).await, "spends nobody limits woke the sync");
        // The first request on the limited key spends ahead of any lease: wake the sync.
        l.count_request("provider:g");
        assert!(woke(&l).await, "a debt on a limited meter wakes the sync");
        store.run(&l, &limits);
        l.count_request("provider:g");
        assert!(!woke(&l).await, "a fresh lease has room");
        // Once the limit is removed from the table, its meter stops waking the sync.
        store.run(&l, &[]);
        for _ in 0..100 {
            l.count_request("provider:g");
        }
        assert!(!woke(&l).await, "an unlimited meter woke the sync");
    }

    /// Three replicas sharing one store never serve more than the limit plus one lease
    /// each (spent ahead of their first claim), and all of them stop once it is reached.
    #[test]
    fn leased_replicas_share_one_limit() {
        let replicas: Vec<Ledger> = (0..3).map(|_| Ledger::new(0.05)).collect();
        for r in &replicas {
            r.set_mode(Mode::Shared);
        }
        let t = tier_per_day(100);
        let limits = vec![("provider:g".to_owned(), Metric::RequestsPerDay, 100)];
        let mut store = FakeStore::default();
        let mut served = 0;
        for i in 0..600 {
            let r = &replicas[i % 3];
            if r.check_free_tier("provider:g", &t).is_ok() {
                r.count_request("provider:g");
                served += 1;
            }
            if i % 2 == 0 {
                store.run(r, &limits); // the sync runs now and then, not per request
            }
        }
        for r in &replicas {
            store.run(r, &limits);
        }
        let bound = 3 * 5; // one lease (5% of 100) each
        assert!((100..=100 + bound).contains(&served), "served {served}");
        for r in &replicas {
            assert!(r.check_free_tier("provider:g", &t).is_err());
        }
        let fleet = store.0[&("provider:g".to_owned(), Metric::RequestsPerDay)];
        assert_eq!(fleet, served, "the fleet counter is what was served");
    }

    #[test]
    fn usd_leases_settle_real_cost_as_debt() {
        let l = Ledger::new(0.1);
        l.set_mode(Mode::Shared);
        let b = budget(1.0);
        let limits = vec![("key:a".to_owned(), Metric::UsdPerDay, 1_000_000_000)];
        let mut store = FakeStore::default();
        let mut served = 0;
        for _ in 0..100 {
            if l.check_budget("key:a", &b).is_ok() {
                l.add_usage("key:a", 0, 0.03);
                served += 1;
            }
            store.run(&l, &limits);
        }
        // $1 at $0.03: 34 requests reach it; one lease ahead (at most $0.1) may add 3.
        assert!((34..=37).contains(&served), "served {served}");
        let fleet = store.0[&("key:a".to_owned(), Metric::UsdPerDay)];
        assert_eq!(fleet, served * 30_000_000);
        assert!(l.check_budget("key:a", &b).is_err());
    }

    #[test]
    fn store_down_local_keeps_serving_and_deny_stops() {
        let l = Ledger::new(0.05);
        l.set_mode(Mode::Shared);
        let t = tier_per_day(1000);
        let limits = vec![("provider:g".to_owned(), Metric::RequestsPerDay, 1000)];
        let mut store = FakeStore::default();
        l.count_request("provider:g");
        store.run(&l, &limits);
        // The lease (50) runs out while the store is down.
        l.set_mode(Mode::SharedDownDeny);
        let mut served = 0;
        while l.check_free_tier("provider:g", &t).is_ok() && served < 1000 {
            l.count_request("provider:g");
            served += 1;
        }
        assert_eq!(served, 50, "deny: only the lease already held");
        l.set_mode(Mode::SharedDownLocal);
        for _ in 0..100 {
            assert!(l.check_free_tier("provider:g", &t).is_ok());
            l.count_request("provider:g");
        }
        // Back: the spend made while down is added to the fleet counter.
        l.set_mode(Mode::Shared);
        store.run(&l, &limits);
        let fleet = store.0[&("provider:g".to_owned(), Metric::RequestsPerDay)];
        assert!(fleet >= 151, "fleet {fleet} counts all 151 requests");
    }

    #[test]
    fn a_store_that_lost_its_data_is_reseeded() {
        let l = Ledger::new(0.05);
        l.set_mode(Mode::Shared);
        let limits = vec![("provider:g".to_owned(), Metric::RequestsPerDay, 1000)];
        let mut store = FakeStore::default();
        for _ in 0..30 {
            l.count_request("provider:g");
            store.run(&l, &limits);
        }
        let before = store.0[&("provider:g".to_owned(), Metric::RequestsPerDay)];
        store.0.clear(); // restarted without persistence
        l.reseed_all();
        store.run(&l, &limits);
        let after = store.0[&("provider:g".to_owned(), Metric::RequestsPerDay)];
        assert!(after >= before, "reseeded {after} >= {before}");
        assert!(after <= before + 50 + 1);
    }

    #[test]
    fn a_limit_only_checked_claims_nothing() {
        let l = Ledger::new(0.05);
        l.set_mode(Mode::Shared);
        assert!(l.check_free_tier("provider:g", &tier_per_day(100)).is_ok());
        let limits = vec![("provider:g".to_owned(), Metric::RequestsPerDay, 100)];
        assert_eq!(l.plan_sync(&limits, 0), vec![]);
        assert_eq!(l.plan_sync(&limits, 10_000), vec![]);
    }

    #[test]
    fn idle_leases_are_given_back() {
        let l = Ledger::new(0.5);
        l.set_mode(Mode::Shared);
        let limits = vec![("provider:g".to_owned(), Metric::RequestsPerDay, 100)];
        let mut store = FakeStore::default();
        l.count_request("provider:g");
        store.run(&l, &limits);
        let key = ("provider:g".to_owned(), Metric::RequestsPerDay);
        assert!(store.0[&key] > 1, "a lease was claimed");
        store.run_at(&l, &limits, crate::health::now_ms() + IDLE_RELEASE_MS / 2);
        assert!(store.0[&key] > 1, "kept while recently used");
        store.run_at(&l, &limits, crate::health::now_ms() + IDLE_RELEASE_MS + 1);
        assert_eq!(store.0[&key], 1, "only the request itself stays counted");
        assert_eq!(l.plan_release_all(), vec![], "nothing left to give back");
    }
}
