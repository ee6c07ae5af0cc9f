//! Per-endpoint state: circuit breaker, probe health, manual drain, provider cooldown and
//! counters. An endpoint is (provider name, upstream model); every alias that routes to it
//! shares one [`Endpoint`], and a reload carries it over while the endpoint still exists.
//!
//! The request path reads this state with atomics only; the breaker's transitions take a
//! short uncontended mutex that is never held across an `.await`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Milliseconds since the process started: cheap monotonic timestamps for atomics.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Breaker settings (from `circuit_breaker:`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open the first time; doubles on each repeated trip, capped.
    pub open_for: Duration,
    /// Upper bound of the growing open time.
    pub max_open_for: Duration,
    /// Trial requests allowed at once while half-open.
    pub half_open_trials: u32,
    /// Failure-rate trip: at least this many outcomes in the window...
    pub min_requests: u32,
    /// ...of which at least this fraction failed.
    pub failure_rate: f64,
    /// The sliding window for the failure rate.
    pub window: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(300),
            half_open_trials: 1,
            min_requests: 20,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
        }
    }
}

/// Breaker states, in the order of the `llmux_circuit_state` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerState {
    /// The name used in `/admin/endpoints`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// Probe verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown = 0,
    Healthy = 1,
    Unhealthy = 2,
}

impl Health {
    /// The name used in `/admin/endpoints`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Probes in a row that flip the health verdict (avoids flapping on one lost probe).
const PROBES_TO_FLIP: u32 = 2;

/// Time slots the failure-rate window is counted in.
const RATE_SLOTS: usize = 30;

/// Outcomes in the breaker's failure-rate window, counted per time slot (a thirtieth of the
/// window). Its size and the cost of a failure-rate check stay the same at any request
/// rate: a sample per outcome held a window of traffic (16 bytes a request, 30+ MiB at
/// 35k req/s with the 30 s window) and every failure scanned all of it. The window's edge
/// moves a slot at a time: it covers the last 29 to 30 slots.
#[derive(Debug, Clone, Default)]
struct RateWindow {
    slots: [RateSlot; RATE_SLOTS],
}

/// One slot of a [`RateWindow`]: its number (time ÷ slot length) and what it counted.
#[derive(Debug, Clone, Copy, Default)]
struct RateSlot {
    slot: u64,
    outcomes: u32,
    failures: u32,
}

impl RateWindow {
    fn slot_ms(window: Duration) -> u64 {
        (window.as_millis() as u64 / RATE_SLOTS as u64).max(1)
    }

    /// Counts one outcome at `now` (ms, `now_ms` clock).
    fn record(&mut self, now: u64, window: Duration, failed: bool) {
        let slot = now / Self::slot_ms(window);
        let s = &mut self.slots[(slot % RATE_SLOTS as u64) as usize];
        if s.slot != slot {
            // The slot last counted a window ago (or never): start it afresh.
            *s = RateSlot {
                slot,
                outcomes: 0,
                failures: 0,
            };
        }
        s.outcomes = s.outcomes.saturating_add(1);
        s.failures = s.failures.saturating_add(u32::from(failed));
    }

    /// (outcomes, failures) in the slots the window still covers at `now`.
    fn totals(&self, now: u64, window: Duration) -> (u64, u64) {
        let current = now / Self::slot_ms(window);
        self.slots
            .iter()
            .filter(|s| s.outcomes > 0 && s.slot <= current && current - s.slot < RATE_SLOTS as u64)
            .fold((0, 0), |(n, f), s| {
                (n + u64::from(s.outcomes), f + u64::from(s.failures))
            })
    }

    fn clear(&mut self) {
        *self = RateWindow::default();
    }
}

#[derive(Debug)]
struct BreakerInner {
    consecutive_failures: u32,
    trips: u32,
    trials_in_flight: u32,
    /// Outcomes in the failure-rate window.
    window: RateWindow,
    probe_ok_streak: u32,
    probe_fail_streak: u32,
}

/// One endpoint's shared state.
#[derive(Debug)]
pub struct Endpoint {
    pub provider: String,
    pub model: String,
    pub region: Option<String>,
    policy: BreakerPolicy,
    state: AtomicU8,
    /// While open: when a trial may go (ms, `now_ms` clock).
    half_open_at: AtomicU64,
    /// The provider asked us to wait (retry-after) until then.
    cooldown_until: AtomicU64,
    health: AtomicU8,
    drained: AtomicBool,
    inner: Mutex<BreakerInner>,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Fleet sharing (`crate::fleet`): trips and recoveries this process saw itself, so the
    /// sync publishes each once, and whether the open state came from another replica.
    fleet: FleetMarks,
    /// Latency, tokens and spend; shared with the reloaded copy of this endpoint.
    pub stats: std::sync::Arc<crate::stats::EndpointStats>,
}

/// Breaker events for the fleet sync to publish: counters it compares with what it last
/// published, read and written with atomics only.
#[derive(Debug, Default)]
struct FleetMarks {
    /// Trips by this process's own outcomes.
    trips: AtomicU64,
    /// Closes by this process's own trial or probe.
    closes: AtomicU64,
    /// Wall-clock (Unix ms) of the last open, local or remote.
    opened_unix_ms: AtomicU64,
    /// The open state was set from another replica's trip.
    remote: AtomicBool,
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the breaker said about one attempt: a normal pass or a half-open trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    Trial,
}

/// The result of one upstream attempt, as far as the endpoint's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The endpoint failed (connect, timeout, 429, 5xx, broken stream).
    Failure,
    /// The request was at fault (a 4xx other than 429): says nothing about the endpoint.
    Neutral,
}

impl Endpoint {
    /// A fresh, closed, healthy-unknown endpoint.
    pub fn new(provider: &str, model: &str, region: Option<String>, policy: BreakerPolicy) -> Self {
        Endpoint {
            provider: provider.to_owned(),
            model: model.to_owned(),
            region,
            policy,
            state: AtomicU8::new(BreakerState::Closed as u8),
            half_open_at: AtomicU64::new(0),
            cooldown_until: AtomicU64::new(0),
            health: AtomicU8::new(Health::Unknown as u8),
            drained: AtomicBool::new(false),
            inner: Mutex::new(BreakerInner {
                consecutive_failures: 0,
                trips: 0,
                trials_in_flight: 0,
                window: Default::default(),
                probe_ok_streak: 0,
                probe_fail_streak: 0,
            }),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fleet: FleetMarks::default(),
            stats: Default::default(),
        }
    }

    /// Updates the breaker policy (after a reload) without losing state.
    pub fn with_policy(&self, policy: BreakerPolicy) -> Endpoint {
        let mut e = Endpoint::new(&self.provider, &self.model, self.region.clone(), policy);
        e.stats = self.stats.clone();
        e.state
            .store(self.state.load(Ordering::Acquire), Ordering::Release);
        e.half_open_at
            .store(self.half_open_at.load(Ordering::Acquire), Ordering::Release);
        e.cooldown_until.store(
            self.cooldown_until.load(Ordering::Acquire),
            Ordering::Release,
        );
        e.health
            .store(self.health.load(Ordering::Acquire), Ordering::Release);
        e.drained
            .store(self.drained.load(Ordering::Acquire), Ordering::Release);
        e.requests
            .store(self.requests.load(Ordering::Acquire), Ordering::Release);
        e.errors
            .store(self.errors.load(Ordering::Acquire), Ordering::Release);
        for (new, old) in [
            (&e.fleet.trips, &self.fleet.trips),
            (&e.fleet.closes, &self.fleet.closes),
            (&e.fleet.opened_unix_ms, &self.fleet.opened_unix_ms),
        ] {
            new.store(old.load(Ordering::Acquire), Ordering::Release);
        }
        e.fleet
            .remote
            .store(self.fleet.remote.load(Ordering::Acquire), Ordering::Release);
        if let (Ok(old), Ok(mut new)) = (self.inner.lock(), e.inner.lock()) {
            new.consecutive_failures = old.consecutive_failures;
            new.trips = old.trips;
            new.window = old.window.clone();
            new.probe_ok_streak = old.probe_ok_streak;
            new.probe_fail_streak = old.probe_fail_streak;
        }
        e
    }

    /// The breaker state now (an open breaker past its time reads as half-open).
    pub fn breaker_state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ if now_ms() >= self.half_open_at.load(Ordering::Acquire) => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    /// When an open breaker lets its next trial through, as wall-clock time.
    pub fn half_open_at(&self) -> Option<SystemTime> {
        if self.state.load(Ordering::Acquire) != BreakerState::Open as u8 {
            return None;
        }
        let at = self.half_open_at.load(Ordering::Acquire);
        let wait = Duration::from_millis(at.saturating_sub(now_ms()));
        Some(SystemTime::now() + wait)
    }

    /// The probe verdict.
    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    /// Whether the endpoint was taken out of rotation by hand.
    pub fn drained(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    /// The failure share of the outcomes in the breaker's sliding window (None when the
    /// window is empty).
    pub fn recent_error_rate(&self) -> Option<f64> {
        let inner = self.inner.lock().ok()?;
        let (outcomes, failures) = inner.window.totals(now_ms(), self.policy.window);
        (outcomes > 0).then(|| failures as f64 / outcomes as f64)
    }

    /// Takes the endpoint out of rotation (true) or puts it back (false).
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Release);
    }

    /// Whether routing may consider the endpoint now (no side effects). `None` = yes;
    /// `Some(wait)` = not before `wait` (zero when only a hand drain or a probe keeps it out).
    pub fn unavailable_for(&self) -> Option<Duration> {
        let now = now_ms();
        if self.drained() || self.health() == Health::Unhealthy {
            return Some(Duration::ZERO);
        }
        let cooldown = self.cooldown_until.load(Ordering::Acquire);
        if now < cooldown {
            return Some(Duration::from_millis(cooldown - now));
        }
        if self.state.load(Ordering::Acquire) == BreakerState::Open as u8 {
            let at = self.half_open_at.load(Ordering::Acquire);
            if now < at {
                return Some(Duration::from_millis(at - now));
            }
        }
        None
    }

    /// Asks the breaker for one attempt, right before it is made. `None` = skip.
    pub fn acquire(&self) -> Option<Permit> {
        if self.unavailable_for().is_some() {
            return None;
        }
        match self.state.load(Ordering::Acquire) {
            0 => Some(Permit::Normal),
            _ => {
                let mut inner = self.inner.lock().ok()?;
                if inner.trials_in_flight >= self.policy.half_open_trials {
                    return None;
                }
                inner.trials_in_flight += 1;
                self.state
                    .store(BreakerState::HalfOpen as u8, Ordering::Release);
                Some(Permit::Trial)
            }
        }
    }

    /// Gives back a permit that was not used (the attempt never started).
    pub fn release(&self, permit: Permit) {
        if permit == Permit::Trial {
            if let Ok(mut inner) = self.inner.lock() {
                inner.trials_in_flight = inner.trials_in_flight.saturating_sub(1);
            }
        }
    }

    /// Records an attempt's outcome. `retry_after` (a provider's hint) makes routing skip
    /// the endpoint for that long.
    pub fn record(&self, permit: Permit, outcome: Outcome, retry_after: Option<Duration>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::Failure {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(wait) = retry_after.filter(|_| outcome == Outcome::Failure) {
            let wait = wait.min(self.policy.max_open_for);
            self.cooldown_until
                .fetch_max(now_ms() + wait.as_millis() as u64, Ordering::AcqRel);
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if permit == Permit::Trial {
            inner.trials_in_flight = inner.trials_in_flight.saturating_sub(1);
        }
        let now = now_ms();
        if outcome != Outcome::Neutral {
            inner
                .window
                .record(now, self.policy.window, outcome == Outcome::Failure);
        }
        match outcome {
            Outcome::Neutral => {}
            Outcome::Success => {
                inner.consecutive_failures = 0;
                if permit == Permit::Trial
                    || self.state.load(Ordering::Acquire) != BreakerState::Closed as u8
                {
                    inner.trips = 0;
                    inner.window.clear();
                    self.state
                        .store(BreakerState::Closed as u8, Ordering::Release);
                    self.fleet.remote.store(false, Ordering::Release);
                    self.fleet.closes.fetch_add(1, Ordering::AcqRel);
                }
            }
            Outcome::Failure => {
                inner.consecutive_failures += 1;
                let (outcomes, failed) = inner.window.totals(now, self.policy.window);
                let rate_trip = outcomes >= u64::from(self.policy.min_requests)
                    && failed as f64 >= self.policy.failure_rate * outcomes as f64;
                let closed = self.state.load(Ordering::Acquire) == BreakerState::Closed as u8;
                if !closed
                    || inner.consecutive_failures >= self.policy.failure_threshold
                    || rate_trip
                {
                    self.trip(&mut inner, now);
                }
            }
        }
    }

    fn trip(&self, inner: &mut BreakerInner, now: u64) {
        inner.trips += 1;
        let factor = 1u32 << (inner.trips - 1).min(10);
        let open_for =
            (self.policy.open_for * factor).min(self.policy.max_open_for.max(self.policy.open_for));
        self.half_open_at
            .store(now + open_for.as_millis() as u64, Ordering::Release);
        self.state
            .store(BreakerState::Open as u8, Ordering::Release);
        inner.window.clear();
        self.fleet.remote.store(false, Ordering::Release);
        self.fleet
            .opened_unix_ms
            .store(unix_ms(), Ordering::Release);
        self.fleet.trips.fetch_add(1, Ordering::AcqRel);
        log::warn!(
            "circuit opened for endpoint {}/{} for {:?} (trip {})",
            self.provider,
            self.model,
            open_for,
            inner.trips
        );
    }

    /// Records one active probe. Two in a row flip the verdict; a good verdict after a bad
    /// one also closes an open breaker (the endpoint answers again).
    pub fn record_probe(&self, ok: bool) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if ok {
            inner.probe_ok_streak += 1;
            inner.probe_fail_streak = 0;
            let was = self.health();
            if was == Health::Unknown || inner.probe_ok_streak >= PROBES_TO_FLIP {
                self.health.store(Health::Healthy as u8, Ordering::Release);
                if was == Health::Unhealthy {
                    log::info!("endpoint {}/{} is healthy again", self.provider, self.model);
                    inner.consecutive_failures = 0;
                    inner.trips = 0;
                    if self.state.load(Ordering::Acquire) != BreakerState::Closed as u8 {
                        self.fleet.remote.store(false, Ordering::Release);
                        self.fleet.closes.fetch_add(1, Ordering::AcqRel);
                    }
                    self.state
                        .store(BreakerState::Closed as u8, Ordering::Release);
                }
            }
        } else {
            inner.probe_fail_streak += 1;
            inner.probe_ok_streak = 0;
            if inner.probe_fail_streak >= PROBES_TO_FLIP && self.health() != Health::Unhealthy {
                log::warn!(
                    "endpoint {}/{} is unhealthy by probe",
                    self.provider,
                    self.model
                );
                self.health
                    .store(Health::Unhealthy as u8, Ordering::Release);
            }
        }
    }
}

/// The breaker as the fleet sync sees it (`crate::fleet`).
impl Endpoint {
    /// How many times this process's own outcomes tripped or closed the breaker.
    pub fn breaker_events(&self) -> (u64, u64) {
        (
            self.fleet.trips.load(Ordering::Acquire),
            self.fleet.closes.load(Ordering::Acquire),
        )
    }

    /// While open: when the next trial may go, in Unix ms.
    pub fn open_until_unix_ms(&self) -> Option<u64> {
        if self.state.load(Ordering::Acquire) != BreakerState::Open as u8 {
            return None;
        }
        let wait = self
            .half_open_at
            .load(Ordering::Acquire)
            .saturating_sub(now_ms());
        Some(unix_ms() + wait)
    }

    /// Another replica tripped this endpoint's breaker until `until` (Unix ms): stay out
    /// until then too, without counting it as a trip of our own.
    pub fn open_from_fleet(&self, until_unix_ms: u64) {
        let wait = until_unix_ms.saturating_sub(unix_ms());
        if wait == 0 {
            return;
        }
        let Ok(_inner) = self.inner.lock() else {
            return;
        };
        let at = now_ms() + wait;
        let state = self.state.load(Ordering::Acquire);
        if state == BreakerState::Open as u8 && self.half_open_at.load(Ordering::Acquire) >= at {
            return;
        }
        self.half_open_at.store(at, Ordering::Release);
        self.state
            .store(BreakerState::Open as u8, Ordering::Release);
        if state == BreakerState::Closed as u8 {
            self.fleet.remote.store(true, Ordering::Release);
            self.fleet
                .opened_unix_ms
                .store(unix_ms(), Ordering::Release);
            log::warn!(
                "circuit opened for endpoint {}/{} by another replica",
                self.provider,
                self.model
            );
        }
    }

    /// Another replica's trial (or probe) found the endpoint working again at `closed_at`
    /// (Unix ms): close, unless this process tripped it again since.
    pub fn close_from_fleet(&self, closed_at_unix_ms: u64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if self.state.load(Ordering::Acquire) == BreakerState::Closed as u8
            || self.fleet.opened_unix_ms.load(Ordering::Acquire) > closed_at_unix_ms
        {
            return;
        }
        inner.consecutive_failures = 0;
        inner.trips = 0;
        inner.window.clear();
        self.fleet.remote.store(false, Ordering::Release);
        self.state
            .store(BreakerState::Closed as u8, Ordering::Release);
        log::info!(
            "circuit closed for endpoint {}/{} by another replica's trial",
            self.provider,
            self.model
        );
    }

    /// Another replica holds the half-open trial: keep this one's breaker open `for_` longer.
    pub fn defer_trial(&self, for_: Duration) {
        if self.state.load(Ordering::Acquire) == BreakerState::Open as u8 {
            self.half_open_at
                .fetch_max(now_ms() + for_.as_millis() as u64, Ordering::AcqRel);
        }
    }

    /// Whether the breaker is open because of another replica (for `/admin/endpoints`).
    pub fn opened_by_fleet(&self) -> bool {
        self.fleet.remote.load(Ordering::Acquire)
            && self.state.load(Ordering::Acquire) != BreakerState::Closed as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_open_and_close() {
        let e = Endpoint::new("p", "m", None, policy(60_000));
        e.open_from_fleet(unix_ms() + 5_000);
        assert_eq!(e.breaker_state(), BreakerState::Open);
        assert!(e.opened_by_fleet());
        assert_eq!(e.breaker_events(), (0, 0), "not our own trip");
        assert!(e.acquire().is_none());
        let until = e.open_until_unix_ms().unwrap();
        assert!(until > unix_ms() + 4_000 && until <= unix_ms() + 5_000);
        e.defer_trial(Duration::from_secs(10));
        assert!(e.open_until_unix_ms().unwrap() > unix_ms() + 9_000);
        // A close from before our open does not count; one after does.
        e.close_from_fleet(unix_ms() - 60_000);
        assert_eq!(e.breaker_state(), BreakerState::Open);
        e.close_from_fleet(unix_ms() + 1);
        assert_eq!(e.breaker_state(), BreakerState::Closed);
        assert!(e.acquire().is_some());
        // Our own trip is an event to publish.
        for _ in 0..3 {
            let p = e.acquire().unwrap();
            e.record(p, Outcome::Failure, None);
        }
        assert_eq!(e.breaker_events().0, 1);
        assert!(!e.opened_by_fleet());
    }

    fn policy(open_ms: u64) -> BreakerPolicy {
        BreakerPolicy {
            failure_threshold: 3,
            open_for: Duration::from_millis(open_ms),
            ..BreakerPolicy::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_half_opens_one_trial() {
        let e = Endpoint::new("p", "m", None, policy(50));
        for _ in 0..2 {
            let p = e.acquire().unwrap();
            e.record(p, Outcome::Failure, None);
        }
        assert_eq!(e.breaker_state(), BreakerState::Closed);
        e.record(Permit::Normal, Outcome::Failure, None);
        assert_eq!(e.breaker_state(), BreakerState::Open);
        assert!(e.acquire().is_none() && e.unavailable_for().is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(e.acquire(), Some(Permit::Trial));
        assert_eq!(e.acquire(), None, "one trial at a time");
        e.record(Permit::Trial, Outcome::Success, None);
        assert_eq!(e.breaker_state(), BreakerState::Closed);
        assert_eq!(e.acquire(), Some(Permit::Normal));
    }

    #[test]
    fn failed_trial_reopens_for_longer() {
        let e = Endpoint::new("p", "m", None, policy(40));
        for _ in 0..3 {
            e.record(Permit::Normal, Outcome::Failure, None);
        }
        std::thread::sleep(Duration::from_millis(50));
        let p = e.acquire().unwrap();
        e.record(p, Outcome::Failure, None);
        assert_eq!(e.breaker_state(), BreakerState::Open);
        let wait = e.unavailable_for().unwrap();
        assert!(
            wait > Duration::from_millis(50),
            "second trip doubles: {wait:?}"
        );
    }

    #[test]
    fn neutral_outcomes_do_not_trip_and_success_resets() {
        let e = Endpoint::new("p", "m", None, policy(1000));
        for _ in 0..10 {
            e.record(Permit::Normal, Outcome::Neutral, None);
        }
        e.record(Permit::Normal, Outcome::Failure, None);
        e.record(Permit::Normal, Outcome::Failure, None);
        e.record(Permit::Normal, Outcome::Success, None);
        e.record(Permit::Normal, Outcome::Failure, None);
        assert_eq!(e.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn failure_rate_trips_without_consecutive_run() {
        let e = Endpoint::new(
            "p",
            "m",
            None,
            BreakerPolicy {
                failure_threshold: 100,
                ..policy(1000)
            },
        );
        for i in 0..21 {
            let outcome = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            e.record(Permit::Normal, outcome, None);
        }
        assert_eq!(e.breaker_state(), BreakerState::Open);
    }

    #[test]
    fn rate_window_counts_the_last_window_of_outcomes_only() {
        let window = Duration::from_millis(300); // 30 slots of 10 ms
        let mut w = RateWindow::default();
        for _ in 0..10 {
            w.record(5, window, true);
        }
        for _ in 0..10 {
            w.record(150, window, false);
        }
        assert_eq!(w.totals(200, window), (20, 10));
        // 29 slots on, the first slot still counts; 30 on, it has left the window.
        assert_eq!(w.totals(299, window), (20, 10));
        assert_eq!(w.totals(300, window), (10, 0));
        assert_eq!(w.totals(450, window), (0, 0));
        // A slot reused a window later starts afresh instead of adding to the old count.
        w.record(301, window, false);
        assert_eq!(w.totals(301, window), (11, 0));
        w.clear();
        assert_eq!(w.totals(301, window), (0, 0));
    }

    #[test]
    fn failure_rate_counts_every_outcome_at_any_volume() {
        // 100,000 successes, then failures: the rate trip comes when failures reach half of
        // all outcomes in the window, not at some sample cap.
        let e = Endpoint::new(
            "p",
            "m",
            None,
            BreakerPolicy {
                failure_threshold: u32::MAX,
                ..policy(1000)
            },
        );
        for _ in 0..100_000 {
            e.record(Permit::Normal, Outcome::Success, None);
        }
        for _ in 0..99_999 {
            e.record(Permit::Normal, Outcome::Failure, None);
        }
        assert_eq!(e.breaker_state(), BreakerState::Closed);
        assert_eq!(e.recent_error_rate(), Some(99_999.0 / 199_999.0));
        e.record(Permit::Normal, Outcome::Failure, None);
        assert_eq!(e.breaker_state(), BreakerState::Open);
    }

    #[test]
    fn retry_after_cools_the_endpoint_down() {
        let e = Endpoint::new("p", "m", None, policy(1000));
        e.record(
            Permit::Normal,
            Outcome::Failure,
            Some(Duration::from_secs(20)),
        );
        let wait = e.unavailable_for().unwrap();
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20));
        assert!(e.acquire().is_none());
    }

    #[test]
    fn probes_flip_health_after_two_in_a_row() {
        let e = Endpoint::new("p", "m", None, policy(1000));
        e.record_probe(false);
        assert_eq!(e.health(), Health::Unknown);
        e.record_probe(false);
        assert_eq!(e.health(), Health::Unhealthy);
        assert!(e.acquire().is_none());
        e.record_probe(true);
        assert_eq!(e.health(), Health::Unhealthy);
        e.record_probe(true);
        assert_eq!(e.health(), Health::Healthy);
        assert!(e.acquire().is_some());
    }

    #[test]
    fn drain_takes_it_out_of_rotation() {
        let e = Endpoint::new("p", "m", None, policy(1000));
        e.set_drained(true);
        assert!(e.acquire().is_none());
        e.set_drained(false);
        assert!(e.acquire().is_some());
    }
}
