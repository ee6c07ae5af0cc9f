//! State shared by every replica of a fleet (`state.backend: redis`): budget and free-tier
//! leases, breaker trips and recoveries, probe verdicts, probe and half-open-trial
//! leadership. Design and bounds: `docs/shared-state.md`.
//!
//! The request path never touches Redis. It reads the local [`Ledger`](crate::budget::Ledger)
//! and [`Endpoint`] atomics as before; [`FleetSync`], a background service, moves leases
//! and breaker events between them and Redis every `state.sync_interval` (sooner when a
//! lease runs low), and the probe service asks [`Fleet::probe_turn`] before each probe.
//! When Redis is unreachable, every call fails within `state.timeout`, the ledger falls
//! back as `on_unavailable` says, and the sync reconnects with backoff.

pub mod store;

use crate::budget::{Metric, Mode};
use crate::config::{OnUnavailable, StateConfig};
use crate::health::{unix_ms, BreakerState, Endpoint};
use crate::proxy::GatewayState;
use crate::routing::RoutingTable;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Keys, Store, StoreError};

/// How long a replica that lost the race for a half-open trial keeps its breaker open,
/// waiting for the winner's verdict.
const TRIAL_WAIT: Duration = Duration::from_secs(5);

/// The fleet's shared state as this replica sees it.
pub struct Fleet {
    url: String,
    keys: Keys,
    on_unavailable: OnUnavailable,
    timeout: Duration,
    sync_interval: Duration,
    /// This process's name in leases (`HOSTNAME`, the pod name on Kubernetes, plus pid).
    replica: String,
    store: arc_swap::ArcSwapOption<Store>,
    connected: AtomicBool,
    last_sync_unix_ms: AtomicU64,
    syncs: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Whether this replica probes an endpoint this interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeTurn {
    /// It holds the fleet's probe lease: probe and publish the verdict.
    Lead,
    /// Another replica probes; its verdict arrives through the sync.
    Follow,
    /// Redis does not answer: probe alone, as without a fleet.
    Alone,
}

/// An endpoint's name in Redis keys.
fn endpoint_id(e: &Endpoint) -> String {
    format!("{}/{}", e.provider, e.model)
}

impl Fleet {
    /// The fleet handle for `state:`; `None` with `backend: memory`.
    pub fn from_config(cfg: &StateConfig) -> Option<Arc<Fleet>> {
        if cfg.backend != crate::config::StateBackend::Redis {
            return None;
        }
        let url = cfg.redis_url.as_ref()?.expose().to_owned();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "llmux".into());
        Some(Arc::new(Fleet {
            url,
            keys: Keys::new(&cfg.key_prefix),
            on_unavailable: cfg.on_unavailable,
            timeout: cfg.timeout.0,
            sync_interval: cfg.sync_interval.0,
            replica: format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..)),
            store: Default::default(),
            connected: AtomicBool::new(false),
            last_sync_unix_ms: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }))
    }

    /// Whether `next` (a reloaded `state:`) differs from what this process runs with: the
    /// store connection is fixed at start, so such a change needs a restart.
    pub fn differs(fleet: Option<&Fleet>, next: &StateConfig) -> bool {
        let Some(f) = fleet else {
            return next.backend != crate::config::StateBackend::Memory;
        };
        next.backend != crate::config::StateBackend::Redis
            || next.redis_url.as_ref().map(|u| u.expose()) != Some(f.url.as_str())
            || next.key_prefix != f.keys.prefix()
            || next.on_unavailable != f.on_unavailable
            || next.timeout.0 != f.timeout
            || next.sync_interval.0 != f.sync_interval
    }

    /// The ledger mode while Redis does not answer.
    fn down_mode(&self) -> Mode {
        match self.on_unavailable {
            OnUnavailable::Local => Mode::SharedDownLocal,
            OnUnavailable::Deny => Mode::SharedDownDeny,
        }
    }

    fn mark_error(&self, state: &GatewayState, e: &StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.connected.swap(false, Ordering::AcqRel) {
            log::warn!("shared state unavailable, serving on local state: {e}");
        }
        state.ledger.set_mode(self.down_mode());
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
    }

    fn mark_ok(&self, state: &GatewayState) {
        if !self.connected.swap(true, Ordering::AcqRel) {
            log::info!("shared state connected (redis)");
        }
        state.ledger.set_mode(Mode::Shared);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.last_sync_unix_ms.store(unix_ms(), Ordering::Release);
    }

    /// Whether the last Redis call answered.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// `{"backend": "redis", "connected", "last_sync", ...}` for `/admin/endpoints` and
    /// `/readyz`. Never holds the URL.
    pub fn status_json(&self) -> serde_json::Value {
        let last = self.last_sync_unix_ms.load(Ordering::Acquire);
        let last_sync = (last > 0)
            .then(|| crate::clock::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(last)));
        let last_error = self.last_error.lock().ok().and_then(|e| e.clone());
        serde_json::json!({
            "backend": "redis",
            "connected": self.connected(),
            "on_unavailable": match self.on_unavailable {
                OnUnavailable::Local => "local",
                OnUnavailable::Deny => "deny",
            },
            "replica": self.replica,
            "last_sync": last_sync,
            "syncs": self.syncs.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "last_error": last_error,
        })
    }

    /// Prometheus lines for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let last = self.last_sync_unix_ms.load(Ordering::Acquire);
        let age = if last == 0 {
            -1.0
        } else {
            unix_ms().saturating_sub(last) as f64 / 1000.0
        };
        let _ = write!(
            out,
            "# HELP llmux_state_up Whether the shared state store (redis) answered the last call.\n\
             # TYPE llmux_state_up gauge\nllmux_state_up {}\n\
             # HELP llmux_state_last_sync_age_seconds Seconds since the last successful sync with the shared state store (-1: never).\n\
             # TYPE llmux_state_last_sync_age_seconds gauge\nllmux_state_last_sync_age_seconds {age}\n\
             # HELP llmux_state_syncs_total Successful syncs with the shared state store.\n\
             # TYPE llmux_state_syncs_total counter\nllmux_state_syncs_total {}\n\
             # HELP llmux_state_errors_total Failed or timed-out calls to the shared state store.\n\
             # TYPE llmux_state_errors_total counter\nllmux_state_errors_total {}\n",
            u8::from(self.connected()),
            self.syncs.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        );
    }

    /// Whether this replica probes `endpoint` now: the first to take the interval's lease
    /// does, the others follow its verdict.
    pub async fn probe_turn(&self, endpoint: &Endpoint, interval: Duration) -> ProbeTurn {
        let Some(store) = self.store.load_full().filter(|_| self.connected()) else {
            return ProbeTurn::Alone;
        };
        let key = self.keys.probe_lease(&endpoint_id(endpoint));
        // A little under the interval, so the next round's lease is free again.
        let ttl = interval.mul_f64(0.9);
        match store.take_lease(&key, &self.replica, ttl).await {
            Ok(true) => ProbeTurn::Lead,
            Ok(false) => ProbeTurn::Follow,
            Err(_) => ProbeTurn::Alone,
        }
    }

    /// Publishes this replica's probe verdict for the followers.
    pub async fn publish_probe(&self, endpoint: &Endpoint, ok: bool, interval: Duration) {
        let Some(store) = self.store.load_full() else {
            return;
        };
        let value = format!("{} {} {}", unix_ms(), u8::from(ok), self.replica);
        let key = self.keys.health(&endpoint_id(endpoint));
        let _ = store.exchange(&[(key, value, interval * 3)], &[]).await;
    }
}

/// What one replica remembers between syncs.
#[derive(Default)]
struct SyncMemory {
    epoch: Option<String>,
    /// Per endpoint: (trips, closes) already published.
    published: HashMap<String, (u64, u64)>,
    /// Per endpoint: the last breaker and health values read, to act on changes only.
    seen_breaker: HashMap<String, String>,
    seen_health: HashMap<String, String>,
    /// Per endpoint: the open-until time whose trial we already raced for.
    trial_raced: HashMap<String, u64>,
}

/// The background service that keeps this replica and the fleet in step.
pub struct FleetSync {
    pub state: Arc<GatewayState>,
    pub fleet: Arc<Fleet>,
}

/// Every limited meter the table configures: (ledger key, metric, limit in units).
fn limits_of(table: &RoutingTable) -> Vec<(String, Metric, u64)> {
    let mut out = Vec::new();
    for p in table.providers.values() {
        let key = format!("provider:{}", p.name);
        let budget = p.budget.iter().flat_map(crate::budget::budget_limits);
        let tier = p.free_tier.iter().flat_map(crate::budget::free_tier_limits);
        out.extend(budget.chain(tier).map(|(m, l)| (key.clone(), m, l)));
    }
    for (name, b) in &table.key_budgets {
        let key = format!("key:{name}");
        out.extend(crate::budget::budget_limits(b).map(|(m, l)| (key.clone(), m, l)));
    }
    out
}

impl FleetSync {
    /// One sync: settle leases, publish breaker events, read the fleet's, race for trials.
    async fn sync_once(&self, store: &Store, mem: &mut SyncMemory) -> Result<(), StoreError> {
        let fleet = &self.fleet;
        let ledger = &self.state.ledger;
        let keys = &fleet.keys;
        let epoch = match &mem.epoch {
            Some(e) => e.clone(),
            None => {
                let fresh = format!("{}-{:016x}", fleet.replica, fastrand::u64(..));
                let e = store.epoch(keys, &fresh).await?;
                mem.epoch = Some(e.clone());
                e
            }
        };
        // 1. Leases: one atomic script for every meter that needs a claim or a release.
        let table = self.state.table.load_full();
        let plan = ledger.plan_sync(&limits_of(&table), crate::health::now_ms());
        match store.sync_ledger(keys, &epoch, &plan).await? {
            Some(results) => {
                let ms = crate::health::now_ms();
                for (p, r) in plan.iter().zip(results) {
                    ledger.apply_sync(p, r, ms);
                }
            }
            None => {
                // Redis lost its data: re-add what this replica had, under a new epoch.
                log::warn!("shared state store lost its data; re-adding this replica's counts");
                ledger.reseed_all();
                mem.epoch = None;
                mem.seen_breaker.clear();
                mem.seen_health.clear();
                return Ok(());
            }
        }
        // 2. Breaker events this replica saw itself, and 3. the fleet's, in one round trip.
        let now = unix_ms();
        let mut sets = Vec::new();
        for e in &table.endpoints {
            let id = endpoint_id(e);
            let events = e.breaker_events();
            let last = mem.published.entry(id.clone()).or_insert((0, 0));
            if events == *last {
                continue;
            }
            let value = match (e.open_until_unix_ms(), events.0 > last.0) {
                (Some(until), true) => Some((
                    format!("open {until} {now}"),
                    Duration::from_millis(until.saturating_sub(now) + 60_000),
                )),
                (None, _) if events.1 > last.1 => {
                    Some((format!("closed {now}"), Duration::from_secs(600)))
                }
                _ => None,
            };
            *last = events;
            if let Some((v, ttl)) = value {
                mem.seen_breaker.insert(id.clone(), v.clone());
                sets.push((keys.breaker(&id), v, ttl));
            }
        }
        let ids: Vec<String> = table.endpoints.iter().map(|e| endpoint_id(e)).collect();
        let gets: Vec<String> = ids
            .iter()
            .map(|id| keys.breaker(id))
            .chain(ids.iter().map(|id| keys.health(id)))
            .collect();
        let values = store.exchange(&sets, &gets).await?;
        let (breakers, healths) = values.split_at(ids.len().min(values.len()));
        for ((e, id), value) in table.endpoints.iter().zip(&ids).zip(breakers) {
            let Some(value) = value else { continue };
            if mem.seen_breaker.get(id) == Some(value) {
                continue;
            }
            mem.seen_breaker.insert(id.clone(), value.clone());
            apply_breaker(e, value);
        }
        for ((e, id), value) in table.endpoints.iter().zip(&ids).zip(healths) {
            let Some(value) = value else { continue };
            if mem.seen_health.get(id) == Some(value) {
                continue;
            }
            mem.seen_health.insert(id.clone(), value.clone());
            let mut parts = value.split(' ');
            let (ok, from) = (parts.nth(1), parts.next());
            if from != Some(fleet.replica.as_str()) {
                e.record_probe(ok == Some("1"));
            }
        }
        // 4. Half-open trials: one replica of the fleet sends it; the others wait. The race
        // is run well before the breaker would let a trial through by itself.
        let ahead = (2 * self.fleet.sync_interval).max(Duration::from_secs(1));
        let soon = now + ahead.as_millis() as u64;
        for (e, id) in table.endpoints.iter().zip(&ids) {
            let Some(until) = e.open_until_unix_ms().filter(|u| *u <= soon) else {
                continue;
            };
            // One race per open period (the computed time wobbles by a millisecond or so).
            let raced = mem
                .trial_raced
                .get(id)
                .is_some_and(|r| r.abs_diff(until) < 100);
            if e.breaker_state() == BreakerState::Closed || raced {
                continue;
            }
            mem.trial_raced.insert(id.clone(), until);
            let ttl = TRIAL_WAIT + Duration::from_millis(until.saturating_sub(now));
            if !store
                .take_lease(&keys.trial_lease(id), &fleet.replica, ttl)
                .await?
            {
                e.defer_trial(ttl);
            }
        }
        Ok(())
    }
}

/// Acts on another replica's breaker event.
fn apply_breaker(e: &Endpoint, value: &str) {
    let mut parts = value.split(' ');
    let at = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok());
    match parts.next() {
        Some("open") => {
            if let Some(until) = at(parts.next()) {
                e.open_from_fleet(until);
            }
        }
        Some("closed") => {
            if let Some(closed_at) = at(parts.next()) {
                e.close_from_fleet(closed_at);
            }
        }
        _ => {}
    }
}

#[async_trait]
impl BackgroundService for FleetSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let fleet = &self.fleet;
        let mut mem = SyncMemory::default();
        let mut backoff = fleet.sync_interval;
        // Until the first sync answers, the ledger runs as if Redis were down.
        self.state.ledger.set_mode(fleet.down_mode());
        loop {
            let store = match fleet.store.load_full() {
                Some(s) => Ok(s),
                None => Store::connect(&fleet.url, fleet.timeout).await.map(|s| {
                    let s = Arc::new(s);
                    fleet.store.store(Some(s.clone()));
                    s
                }),
            };
            let result = match store {
                Ok(store) => self.sync_once(&store, &mut mem).await,
                Err(e) => Err(e),
            };
            let wait = match result {
                Ok(()) => {
                    fleet.mark_ok(&self.state);
                    backoff = fleet.sync_interval;
                    fleet.sync_interval
                }
                Err(e) => {
                    fleet.mark_error(&self.state, &e);
                    // Reconnect with backoff. The epoch known before stays: the first
                    // settlement after it finds out whether Redis kept its data.
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.state.ledger.lease_low(), if fleet.connected() => {
                    // Let a burst of spends batch into one settlement.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        // Give back unused leases so the rest of the fleet can spend them.
        if let (Some(store), Some(epoch)) = (fleet.store.load_full(), mem.epoch) {
            let plan = self.state.ledger.plan_release_all();
            let _ = store.sync_ledger(&fleet.keys, &epoch, &plan).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, StateBackend};

    fn redis_cfg() -> StateConfig {
        StateConfig {
            backend: StateBackend::Redis,
            redis_url: Some(Secret("redis://127.0.0.1:6399".into())),
            ..StateConfig::default()
        }
    }

    #[test]
    fn memory_has_no_fleet_and_a_state_change_needs_a_restart() {
        assert!(Fleet::from_config(&StateConfig::default()).is_none());
        let fleet = Fleet::from_config(&redis_cfg()).unwrap();
        assert!(!Fleet::differs(Some(&fleet), &redis_cfg()));
        let moved = StateConfig {
            key_prefix: "other".into(),
            ..redis_cfg()
        };
        assert!(Fleet::differs(Some(&fleet), &moved));
        assert!(Fleet::differs(Some(&fleet), &StateConfig::default()));
        assert!(Fleet::differs(None, &redis_cfg()));
        assert!(!Fleet::differs(None, &StateConfig::default()));
        // The URL (and its password) stays out of the status.
        let status = fleet.status_json().to_string();
        assert!(!status.contains("6399"), "{status}");
    }

    #[test]
    fn breaker_events_from_the_fleet() {
        let e = Endpoint::new("p", "m", None, Default::default());
        apply_breaker(&e, &format!("open {} {}", unix_ms() + 10_000, unix_ms()));
        assert_eq!(e.breaker_state(), BreakerState::Open);
        apply_breaker(&e, "garbage");
        apply_breaker(&e, "open not-a-number");
        assert_eq!(e.breaker_state(), BreakerState::Open);
        apply_breaker(&e, &format!("closed {}", unix_ms() + 1));
        assert_eq!(e.breaker_state(), BreakerState::Closed);
        // An open time already past opens nothing.
        apply_breaker(&e, &format!("open {} 0", unix_ms().saturating_sub(1)));
        assert_eq!(e.breaker_state(), BreakerState::Closed);
    }
}
