//! The on-call dashboard (spec §4, `GET /dashboard`): an in-memory history of every endpoint
//! and the page that shows it.
//!
//! - [`HistorySampler`], a Pingora background service, reads each endpoint's counters and
//!   latency windows every [`INTERVAL`] (10 s) into a fixed-size ring of [`SLOTS`] slots (one
//!   hour). Memory is fixed whatever the traffic: one 64-byte [`Point`] per endpoint per slot,
//!   for at most [`MAX_SERIES`] endpoints (50 endpoints: 1.1 MiB; the cap: 11.3 MiB). The
//!   request path never touches the ring: it only bumps the atomics the sampler reads.
//! - `GET /admin/history` (guarded by `server.admin_token` like the rest of the admin
//!   listener) serves the ring plus each endpoint's live status, the model view and the
//!   providers' free-tier quotas as JSON; it is the page's only data source and is meant for
//!   scripts too. See [`History::render`] for its shape and query parameters.
//! - `GET /dashboard` and `GET /dashboard/assets/*` serve the page, embedded in the binary at
//!   build time (no CDN, works offline). They hold no data, and a browser cannot attach a
//!   bearer token to a navigation, so they are served without the token; the page asks for
//!   it and sends it on every `/admin/*` call (kept in memory, or in sessionStorage when the
//!   user ticks "remember", never in a URL).
//!
//! The ring lives in a process-global ([`History::global`]): the sampler and the admin
//! service both receive only `Arc<GatewayState>`, which has no field for it, and one process
//! runs one gateway, so one history per process is exactly one per gateway. Unit tests build
//! their own [`History`] values instead of touching the global.
//!
//! `LLMUX_DASHBOARD_INTERVAL_MS` overrides the 10 s resolution (10 ms to 60 s; the ring
//! still has [`SLOTS`] slots); the end-to-end tests use it to fill the ring in seconds.

use crate::budget::{Ledger, Metric};
use crate::config::{OnExhausted, Strategy};
use crate::health::Endpoint;
use crate::proxy::GatewayState;
use crate::routing::RoutingTable;
use crate::stats::{EndpointStats, Percentiles};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: one hour at [`INTERVAL`].
pub const SLOTS: usize = 360;
/// Endpoints tracked at most (in config order); a bigger config is cut here, with a warning.
pub const MAX_SERIES: usize = 512;

// ---------------------------------------------------------------------------------------
// The embedded page.
//
// Byte budget: the page's own files (index.html, app.js, app.css) stay under 24 KiB, and
// everything served under /dashboard (those plus uPlot 1.6.32's uPlot.iife.min.js 51,081 B,
// uPlot.min.css 1,857 B and its MIT LICENSE) under 80 KiB, uncompressed. A unit test holds
// both limits.
//
// uPlot is vendored from npm (`npm pack uplot@1.6.32`, tarball sha1
// c800a63b432bad692d6d746f44f0882aa73a49ae), files copied unchanged; its licence is served at
// /dashboard/assets/uPlot.LICENSE and linked from the page.
// ---------------------------------------------------------------------------------------

/// The page's own bytes may not exceed this.
pub const OWN_BUDGET: usize = 24 * 1024;
/// Everything served under `/dashboard` may not exceed this.
pub const TOTAL_BUDGET: usize = 80 * 1024;

/// (path, content type, body, the page's own file?)
const ASSETS: [(&str, &str, &[u8], bool); 6] = [
    (
        "/dashboard",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
        true,
    ),
    (
        "/dashboard/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
        true,
    ),
    (
        "/dashboard/assets/app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
        true,
    ),
    (
        "/dashboard/assets/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/uPlot.iife.min.js"),
        false,
    ),
    (
        "/dashboard/assets/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/uPlot.min.css"),
        false,
    ),
    (
        "/dashboard/assets/uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("assets/uPlot.LICENSE"),
        false,
    ),
];

/// The page or one of its static assets, for a `GET` of `path`: (content type, body).
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/dashboard/" {
        "/dashboard"
    } else {
        path
    };
    ASSETS
        .iter()
        .find(|(p, ..)| *p == path)
        .map(|(_, ct, body, _)| (*ct, *body))
}

// ---------------------------------------------------------------------------------------
// The ring.
// ---------------------------------------------------------------------------------------

/// One endpoint during one interval. 64 bytes; the ring holds [`SLOTS`] per endpoint.
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Attempts and failed attempts during the interval.
    requests: u32,
    errors: u32,
    /// P50/P95/P99 of the endpoint's recent window (ms) at sample time; NaN = no samples.
    latency: [f32; 3],
    ttft: [f32; 3],
    /// Tokens during the interval: input, output, cache_read, cache_write.
    tokens: [u32; 4],
    /// Spend during the interval, in pico-USD.
    cost_pico: u64,
    /// breaker (bits 0-1) | health (bits 2-3) | drained (bit 4) | present (bit 7).
    flags: u8,
}

const PRESENT: u8 = 0x80;

impl Point {
    /// A slot in which the endpoint did not exist (rendered as `null`).
    const MISSING: Point = Point {
        requests: 0,
        errors: 0,
        latency: [f32::NAN; 3],
        ttft: [f32::NAN; 3],
        tokens: [0; 4],
        cost_pico: 0,
        flags: 0,
    };

    fn present(&self) -> bool {
        self.flags & PRESENT != 0
    }
}

/// The monotonic counters of an endpoint, as last read.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    requests: u64,
    errors: u64,
    tokens: [u64; 4],
    cost_pico: u64,
}

impl Counters {
    fn read(e: &Endpoint) -> Self {
        let s = &e.stats;
        Counters {
            requests: e.requests.load(Ordering::Relaxed),
            errors: e.errors.load(Ordering::Relaxed),
            tokens: [
                s.tokens_input.load(Ordering::Relaxed),
                s.tokens_output.load(Ordering::Relaxed),
                s.tokens_cache_read.load(Ordering::Relaxed),
                s.tokens_cache_write.load(Ordering::Relaxed),
            ],
            cost_pico: s.cost_pico_usd.load(Ordering::Relaxed),
        }
    }
}

/// One endpoint's history.
struct Series {
    provider: String,
    model: String,
    /// The statistics the counters come from: a new `Arc` (the endpoint was removed and
    /// added again) restarts the counters from zero.
    stats: Arc<EndpointStats>,
    last: Counters,
    /// UTC day of the last sample, and the spend counter when that day began.
    day: u64,
    day_base_pico: u64,
    /// [`SLOTS`] points, indexed like [`Ring::times`].
    points: Box<[Point]>,
}

struct Ring {
    /// Sample times (unix ms), a ring: `head` is the next slot written, `len` the slots used.
    times: Box<[u64]>,
    head: usize,
    len: usize,
    series: Vec<Series>,
    warned_cap: bool,
}

impl Ring {
    /// Slot indexes from oldest to newest whose time is after `since_ms`.
    fn slots_after(&self, since_ms: Option<u64>) -> Vec<usize> {
        let start = (self.head + SLOTS - self.len) % SLOTS;
        (0..self.len)
            .map(|i| (start + i) % SLOTS)
            .filter(|&i| since_ms.is_none_or(|s| self.times[i] > s))
            .collect()
    }
}

/// The per-endpoint history: a fixed-size ring filled by [`HistorySampler`].
pub struct History {
    interval: Duration,
    /// When this history began (unix ms); a page seeing it change reloads everything.
    epoch_ms: u64,
    ring: Mutex<Ring>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const DAY_MS: u64 = 86_400_000;

impl History {
    /// An empty history sampled every `interval`.
    pub fn new(interval: Duration) -> Self {
        History {
            interval,
            epoch_ms: unix_ms(),
            ring: Mutex::new(Ring {
                times: vec![0; SLOTS].into_boxed_slice(),
                head: 0,
                len: 0,
                series: Vec::new(),
                warned_cap: false,
            }),
        }
    }

    /// The process's history (see the module docs for why it is a global).
    pub fn global() -> &'static History {
        static HISTORY: OnceLock<History> = OnceLock::new();
        HISTORY.get_or_init(|| {
            let interval = std::env::var("LLMUX_DASHBOARD_INTERVAL_MS")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(INTERVAL, |ms| Duration::from_millis(ms.clamp(10, 60_000)));
            History::new(interval)
        })
    }

    /// Time between samples.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes one sample of `endpoints` at `now_ms` (unix ms). Endpoints no longer listed
    /// lose their history; new ones start with empty slots.
    pub fn sample(&self, endpoints: &[Arc<Endpoint>], now_ms: u64) {
        let tracked = &endpoints[..endpoints.len().min(MAX_SERIES)];
        // Read everything before taking the ring's lock (the windows take their own locks).
        let readings: Vec<(Counters, Percentiles, Percentiles, u8)> = tracked
            .iter()
            .map(|e| {
                let flags = PRESENT
                    | e.breaker_state() as u8
                    | (e.health() as u8) << 2
                    | u8::from(e.drained()) << 4;
                (
                    Counters::read(e),
                    e.stats.duration_percentiles(),
                    e.stats.ttft_window.percentiles(),
                    flags,
                )
            })
            .collect();
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        if endpoints.len() > MAX_SERIES && !ring.warned_cap {
            ring.warned_cap = true;
            log::warn!(
                "dashboard history keeps the first {MAX_SERIES} of {} endpoints",
                endpoints.len()
            );
        }
        let slot = ring.head;
        ring.times[slot] = now_ms;
        ring.head = (slot + 1) % SLOTS;
        ring.len = (ring.len + 1).min(SLOTS);
        let day = now_ms / DAY_MS;
        let mut old: HashMap<(String, String), Series> = ring
            .series
            .drain(..)
            .map(|s| ((s.provider.clone(), s.model.clone()), s))
            .collect();
        let mut series = Vec::with_capacity(tracked.len());
        for (e, (now, lat, ttft, flags)) in tracked.iter().zip(readings) {
            let mut s = old
                .remove(&(e.provider.clone(), e.model.clone()))
                .unwrap_or_else(|| Series {
                    provider: e.provider.clone(),
                    model: e.model.clone(),
                    stats: e.stats.clone(),
                    last: Counters::default(),
                    day,
                    day_base_pico: 0,
                    points: vec![Point::MISSING; SLOTS].into_boxed_slice(),
                });
            if !Arc::ptr_eq(&s.stats, &e.stats) {
                s.stats = e.stats.clone();
                s.last = Counters::default();
                s.day = day;
                s.day_base_pico = 0;
            }
            if s.day != day {
                // Spend between the last sample of yesterday and now counts as today's.
                s.day = day;
                s.day_base_pico = s.last.cost_pico;
            }
            let delta =
                |now: u64, last: u64| now.saturating_sub(last).min(u64::from(u32::MAX)) as u32;
            let pct = |p: &Percentiles| {
                if p.samples == 0 {
                    [f32::NAN; 3]
                } else {
                    [p.p50 as f32, p.p95 as f32, p.p99 as f32]
                }
            };
            s.points[slot] = Point {
                requests: delta(now.requests, s.last.requests),
                errors: delta(now.errors, s.last.errors),
                latency: pct(&lat),
                ttft: pct(&ttft),
                tokens: std::array::from_fn(|i| delta(now.tokens[i], s.last.tokens[i])),
                cost_pico: now.cost_pico.saturating_sub(s.last.cost_pico),
                flags,
            };
            s.last = now;
            series.push(s);
        }
        ring.series = series;
    }

    /// Spend of the endpoint since the UTC day began (pico-USD), when the sampler knows it.
    fn spend_today(ring: &Ring, e: &Endpoint, now_ms: u64) -> Option<u64> {
        let s = ring
            .series
            .iter()
            .find(|s| s.provider == e.provider && s.model == e.model)?;
        if !Arc::ptr_eq(&s.stats, &e.stats) {
            return None;
        }
        let cost = e.stats.cost_pico_usd.load(Ordering::Relaxed);
        let base = if s.day == now_ms / DAY_MS {
            s.day_base_pico
        } else {
            s.last.cost_pico
        };
        Some(cost.saturating_sub(base))
    }

    /// The `/admin/history` document.
    ///
    /// ```text
    /// {"interval_ms", "slots", "epoch_ms", "now_ms",
    ///  "t_ms": [sample times, oldest first],
    ///  "total": {"requests": [...], "errors": [...], "cost_usd": [...]},     // all endpoints
    ///  "endpoints": [{"id": "provider/model", "provider", "model", "region", "health",
    ///     "breaker": {"state", "half_open_at_ms"}, "drained", "requests", "errors",
    ///     "error_rate", "latency_ms": {"p50","p95","p99"}, "ttft_ms": {...}, "tokens": {...},
    ///     "cost_usd", "spend_today_usd", "cache_hit_rate", "quota_left",
    ///     "series": {"requests", "errors", "latency_p50", ..., "ttft_p99", "tokens_input",
    ///                "tokens_output", "tokens_cache_read", "tokens_cache_write", "cost_usd",
    ///                "cache_hit_rate", "breaker", "health", "drained", "error_rate"}}],
    ///  "models": [{"name", "strategy", "targets": [{"provider","model"}],
    ///              "served": [{"provider","requests"}], "failed": [{"code","requests"}],
    ///              "fallbacks"}],
    ///  "providers": [{"name", "kind", "free_tier", "budget", "spend_today_usd"}]}
    /// ```
    ///
    /// Series are aligned with `t_ms` (`null` where the endpoint did not exist or had no
    /// latency samples); `requests`/`errors`/tokens/`cost_usd` are per interval. Query:
    /// `since_ms=T` keeps only samples after T (live polling); `series=none` leaves out the
    /// per-endpoint series, `series=<provider/model>` (repeatable) keeps only those.
    /// Everything but the series is read live at request time.
    pub fn render(
        &self,
        table: &RoutingTable,
        ledger: &Ledger,
        metrics_text: &str,
        query: Option<&str>,
        now_ms: u64,
    ) -> String {
        let q = Query::parse(query.unwrap_or(""));
        let Ok(ring) = self.ring.lock() else {
            return "{}".into();
        };
        let slots = ring.slots_after(q.since_ms);
        let mut out = String::with_capacity(16 * 1024);
        let _ = write!(
            out,
            "{{\"interval_ms\":{},\"slots\":{SLOTS},\"epoch_ms\":{},\"now_ms\":{now_ms},\"t_ms\":",
            self.interval.as_millis(),
            self.epoch_ms
        );
        list(&mut out, slots.iter().map(|&i| Some(ring.times[i] as f64)));
        // Totals across tracked endpoints.
        let total = |f: &dyn Fn(&Point) -> f64| {
            slots
                .iter()
                .map(|&i| {
                    let pts: Vec<&Point> = ring
                        .series
                        .iter()
                        .map(|s| &s.points[i])
                        .filter(|p| p.present())
                        .collect();
                    (!pts.is_empty()).then(|| pts.iter().map(|p| f(p)).sum::<f64>())
                })
                .collect::<Vec<_>>()
        };
        out.push_str(",\"total\":{\"requests\":");
        list(&mut out, total(&|p| f64::from(p.requests)));
        out.push_str(",\"errors\":");
        list(&mut out, total(&|p| f64::from(p.errors)));
        out.push_str(",\"cost_usd\":");
        list(&mut out, total(&|p| p.cost_pico as f64 / 1e12));
        out.push_str("},\"providers\":[");

        // Providers: free-tier quota left (from the ledger) and spend today.
        let mut names: Vec<&String> = table.providers.keys().collect();
        names.sort();
        let mut quota_left: HashMap<&str, Option<(&'static str, u64, u64)>> = HashMap::new();
        let mut spend_by_provider: HashMap<&str, f64> = HashMap::new();
        for e in table.endpoints.iter().take(MAX_SERIES) {
            if let Some(p) = Self::spend_today(&ring, e, now_ms) {
                *spend_by_provider.entry(e.provider.as_str()).or_default() += p as f64 / 1e12;
            }
        }
        for (n, name) in names.iter().enumerate() {
            let p = &table.providers[*name];
            if n > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"name\":{},\"kind\":\"{}\",\"free_tier\":",
                jstr(&p.name),
                p.kind.as_str()
            );
            let mut tightest: Option<(&'static str, u64, u64)> = None;
            match &p.free_tier {
                None => out.push_str("null"),
                Some(tier) => {
                    let key = format!("provider:{}", p.name);
                    let on = match tier.on_exhausted {
                        OnExhausted::NextTarget => "next_target",
                        OnExhausted::Reject => "reject",
                    };
                    let _ = write!(out, "{{\"on_exhausted\":\"{on}\"");
                    for (what, limit) in [
                        ("requests_per_minute", tier.requests_per_minute),
                        ("requests_per_day", tier.requests_per_day),
                        ("tokens_per_minute", tier.tokens_per_minute),
                    ] {
                        let Some(limit) = limit else { continue };
                        let used = quota_used(ledger, &key, what, limit);
                        let left = limit.saturating_sub(used);
                        let _ = write!(
                            out,
                            ",\"{what}\":{{\"limit\":{limit},\"used\":{used},\"left\":{left}}}"
                        );
                        let share = |l: u64, of: u64| l as f64 / of.max(1) as f64;
                        if tightest.is_none_or(|(_, l, of)| share(left, limit) < share(l, of)) {
                            tightest = Some((what, left, limit));
                        }
                    }
                    out.push('}');
                }
            }
            quota_left.insert(p.name.as_str(), tightest);
            out.push_str(",\"budget\":");
            match &p.budget {
                None => out.push_str("null"),
                Some(b) => {
                    out.push_str("{\"usd_per_day\":");
                    num(&mut out, b.usd_per_day);
                    out.push_str(",\"usd_per_month\":");
                    num(&mut out, b.usd_per_month);
                    out.push('}');
                }
            }
            out.push_str(",\"spend_today_usd\":");
            num(
                &mut out,
                Some(
                    spend_by_provider
                        .get(p.name.as_str())
                        .copied()
                        .unwrap_or(0.0),
                ),
            );
            out.push('}');
        }

        // Endpoints: live status, then the series.
        out.push_str("],\"endpoints\":[");
        for (n, e) in table.endpoints.iter().take(MAX_SERIES).enumerate() {
            if n > 0 {
                out.push(',');
            }
            let id = format!("{}/{}", e.provider, e.model);
            let requests = e.requests.load(Ordering::Relaxed);
            let errors = e.errors.load(Ordering::Relaxed);
            let error_rate = e.recent_error_rate().unwrap_or(if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            });
            let _ = write!(
                out,
                "{{\"id\":{},\"provider\":{},\"model\":{},\"region\":{},\"health\":\"{}\",\"breaker\":{{\"state\":\"{}\",\"half_open_at_ms\":",
                jstr(&id),
                jstr(&e.provider),
                jstr(&e.model),
                e.region.as_deref().map_or("null".into(), jstr),
                e.health().as_str(),
                e.breaker_state().as_str(),
            );
            let half_open = e.half_open_at().and_then(|t| {
                t.duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as f64)
            });
            num(&mut out, half_open);
            let _ = write!(
                out,
                "}},\"drained\":{},\"requests\":{requests},\"errors\":{errors},\"error_rate\":",
                e.drained()
            );
            num(&mut out, Some(error_rate));
            out.push_str(",\"latency_ms\":");
            percentiles(&mut out, &e.stats.duration_percentiles());
            out.push_str(",\"ttft_ms\":");
            percentiles(&mut out, &e.stats.ttft_window.percentiles());
            let c = Counters::read(e);
            let _ = write!(
                out,
                ",\"tokens\":{{\"input\":{},\"output\":{},\"cache_read\":{},\"cache_write\":{}}},\"cost_usd\":",
                c.tokens[0], c.tokens[1], c.tokens[2], c.tokens[3]
            );
            num(&mut out, Some(e.stats.cost_usd()));
            out.push_str(",\"spend_today_usd\":");
            num(
                &mut out,
                Self::spend_today(&ring, e, now_ms).map(|p| p as f64 / 1e12),
            );
            out.push_str(",\"cache_hit_rate\":");
            num(&mut out, Some(e.stats.cache_hit_rate()));
            out.push_str(",\"quota_left\":");
            match quota_left.get(e.provider.as_str()).copied().flatten() {
                None => out.push_str("null"),
                Some((what, left, limit)) => {
                    let _ = write!(
                        out,
                        "{{\"what\":\"{what}\",\"left\":{left},\"limit\":{limit}}}"
                    );
                }
            }
            let wanted = match &q.series {
                SeriesFilter::All => true,
                SeriesFilter::None => false,
                SeriesFilter::Only(ids) => ids.contains(&id),
            };
            let series = ring
                .series
                .iter()
                .find(|s| s.provider == e.provider && s.model == e.model);
            if let Some(s) = series.filter(|_| wanted) {
                out.push_str(",\"series\":");
                series_json(&mut out, s, &slots);
            }
            out.push('}');
        }

        // The model view: which provider answered each alias, and how often a fallback did.
        out.push_str("],\"models\":[");
        let served = parse_requests_total(metrics_text);
        let mut first = true;
        for route in table.model_ids.iter().filter_map(|id| table.routes.get(id)) {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            let strategy = match route.strategy {
                Strategy::Fallback => "fallback",
                Strategy::Weighted => "weighted",
                Strategy::LowestLatency => "lowest_latency",
                Strategy::LowestCost => "lowest_cost",
            };
            let _ = write!(
                out,
                "{{\"name\":{},\"strategy\":\"{strategy}\",\"targets\":[",
                jstr(&route.name)
            );
            for (i, t) in route.targets.iter().enumerate() {
                let _ = write!(
                    out,
                    "{}{{\"provider\":{},\"model\":{}}}",
                    if i > 0 { "," } else { "" },
                    jstr(&t.provider.name),
                    jstr(&t.model)
                );
            }
            // Successes by answering provider; failures by error code.
            let (mut ok, mut failed): (Tally, Tally) = Default::default();
            for (model, provider, outcome, count) in &served {
                if *model != route.name {
                    continue;
                }
                let (rows, key) = if outcome == "success" {
                    (&mut ok, provider.as_str())
                } else {
                    (&mut failed, outcome.as_str())
                };
                match rows.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, n)) => *n += count,
                    None => rows.push((key, *count)),
                }
            }
            for (name, rows, field) in [("served", &ok, "provider"), ("failed", &failed, "code")] {
                let _ = write!(out, "],\"{name}\":[");
                for (i, (key, count)) in rows.iter().enumerate() {
                    let _ = write!(
                        out,
                        "{}{{\"{field}\":{},\"requests\":{count}}}",
                        if i > 0 { "," } else { "" },
                        jstr(key)
                    );
                }
            }
            out.push_str("],\"fallbacks\":");
            // Under `fallback`, a success from another provider than the first target's
            // was a fallback. The request counter names the provider only, so when another
            // target shares the first one's provider the count is unknown (null); other
            // strategies have no first choice to fall back from.
            match (route.strategy, route.targets.split_first()) {
                (Strategy::Fallback, Some((primary, rest)))
                    if rest
                        .iter()
                        .all(|t| t.provider.name != primary.provider.name) =>
                {
                    let n: u64 = ok
                        .iter()
                        .filter(|(p, _)| *p != primary.provider.name)
                        .map(|(_, n)| n)
                        .sum();
                    let _ = write!(out, "{n}");
                }
                _ => out.push_str("null"),
            }
            out.push('}');
        }
        out.push_str("]}");
        out
    }
}

/// (provider or error code, requests) rows of the model view.
type Tally<'a> = Vec<(&'a str, u64)>;

/// The `/admin/history` query.
struct Query {
    since_ms: Option<u64>,
    series: SeriesFilter,
}

enum SeriesFilter {
    All,
    None,
    Only(Vec<String>),
}

impl Query {
    fn parse(q: &str) -> Self {
        let mut since_ms = None;
        let mut only: Vec<String> = Vec::new();
        let mut none = false;
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = v.replace('+', " ");
            let v = percent_encoding::percent_decode_str(&v).decode_utf8_lossy();
            match k {
                "since_ms" => since_ms = v.trim().parse().ok(),
                "series" if v == "none" => none = true,
                "series" if v == "all" => {}
                "series" if only.len() < MAX_SERIES => only.push(v.into_owned()),
                _ => {}
            }
        }
        let series = if !only.is_empty() {
            SeriesFilter::Only(only)
        } else if none {
            SeriesFilter::None
        } else {
            SeriesFilter::All
        };
        Query { since_ms, series }
    }
}

fn series_json(out: &mut String, s: &Series, slots: &[usize]) {
    let pts: Vec<&Point> = slots.iter().map(|&i| &s.points[i]).collect();
    let col = |f: &dyn Fn(&Point) -> Option<f64>| {
        pts.iter()
            .map(|p| if p.present() { f(p) } else { None })
            .collect::<Vec<_>>()
    };
    let ms = |v: f32| {
        v.is_finite()
            .then(|| (f64::from(v) * 1000.0).round() / 1000.0)
    };
    let columns: [(&str, Vec<Option<f64>>); 18] = [
        ("requests", col(&|p| Some(f64::from(p.requests)))),
        ("errors", col(&|p| Some(f64::from(p.errors)))),
        ("latency_p50", col(&|p| ms(p.latency[0]))),
        ("latency_p95", col(&|p| ms(p.latency[1]))),
        ("latency_p99", col(&|p| ms(p.latency[2]))),
        ("ttft_p50", col(&|p| ms(p.ttft[0]))),
        ("ttft_p95", col(&|p| ms(p.ttft[1]))),
        ("ttft_p99", col(&|p| ms(p.ttft[2]))),
        ("tokens_input", col(&|p| Some(f64::from(p.tokens[0])))),
        ("tokens_output", col(&|p| Some(f64::from(p.tokens[1])))),
        ("tokens_cache_read", col(&|p| Some(f64::from(p.tokens[2])))),
        ("tokens_cache_write", col(&|p| Some(f64::from(p.tokens[3])))),
        ("cost_usd", col(&|p| Some(p.cost_pico as f64 / 1e12))),
        (
            "cache_hit_rate",
            col(&|p| {
                let [input, _, read, write] = p.tokens.map(f64::from);
                let all = input + read + write;
                (all > 0.0).then(|| (read / all * 1e4).round() / 1e4)
            }),
        ),
        ("breaker", col(&|p| Some(f64::from(p.flags & 3)))),
        ("health", col(&|p| Some(f64::from((p.flags >> 2) & 3)))),
        ("drained", col(&|p| Some(f64::from((p.flags >> 4) & 1)))),
        // Error share of the interval's attempts.
        (
            "error_rate",
            col(&|p| {
                (p.requests > 0)
                    .then(|| (f64::from(p.errors) / f64::from(p.requests) * 1e4).round() / 1e4)
            }),
        ),
    ];
    out.push('{');
    for (i, (name, values)) in columns.into_iter().enumerate() {
        let _ = write!(out, "{}\"{name}\":", if i > 0 { "," } else { "" });
        list(out, values);
    }
    out.push('}');
}

/// How much of one free-tier quota `key` has used now (the fleet's, when state is shared),
/// capped at `limit`.
fn quota_used(ledger: &Ledger, key: &str, what: &str, limit: u64) -> u64 {
    let metric = match what {
        "requests_per_minute" => Metric::RequestsPerMinute,
        "requests_per_day" => Metric::RequestsPerDay,
        _ => Metric::TokensPerMinute,
    };
    ledger.used(key, metric).min(limit)
}

/// `(model, provider, outcome, count)` rows of `llmux_requests_total` in a Prometheus text
/// page (the request counters are private to `telemetry`; their text form is public).
fn parse_requests_total(text: &str) -> Vec<(String, String, String, u64)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("llmux_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = parse_labels(rest) else {
            continue;
        };
        let get = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        if let Ok(count) = value.trim().parse::<f64>() {
            rows.push((get("model"), get("provider"), get("outcome"), count as u64));
        }
    }
    rows
}

/// Parses `name="value",...} rest` (values with Prometheus escapes) into the labels and rest.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        let (start, c) = chars.next()?;
        if c == '}' {
            return Some((labels, &s[start + 1..]));
        }
        if c == ',' {
            continue;
        }
        let eq = s[start..].find("=\"")? + start;
        let name = s[start..eq].to_owned();
        while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
            chars.next();
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.push((name, value));
    }
}

/// A JSON string literal.
fn jstr(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A JSON number, or `null` for none and non-finite values.
fn num(out: &mut String, v: Option<f64>) {
    match v.filter(|v| v.is_finite()) {
        Some(v) if v == v.trunc() && v.abs() < 1e15 => {
            let _ = write!(out, "{}", v as i64);
        }
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("null"),
    }
}

fn list(out: &mut String, values: impl IntoIterator<Item = Option<f64>>) {
    out.push('[');
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        num(out, v);
    }
    out.push(']');
}

fn percentiles(out: &mut String, p: &Percentiles) {
    if p.samples == 0 {
        out.push_str("{\"p50\":null,\"p95\":null,\"p99\":null}");
    } else {
        let _ = write!(
            out,
            "{{\"p50\":{},\"p95\":{},\"p99\":{}}}",
            p.p50, p.p95, p.p99
        );
    }
}

/// `GET /admin/history` for the admin listener.
pub fn history_json(state: &GatewayState, table: &RoutingTable, query: Option<&str>) -> String {
    // Only the request and attempt counters: no endpoint histograms to render.
    let metrics = state.metrics.render(&[]);
    History::global().render(table, &state.ledger, &metrics, query, unix_ms())
}

/// Fills the history every interval, off the request path. The lead's `server.rs` adds it:
/// `server.add_service(background_service("dashboard history", HistorySampler { state: state.clone() }))`.
pub struct HistorySampler {
    pub state: Arc<GatewayState>,
}

#[async_trait]
impl BackgroundService for HistorySampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let history = History::global();
        let mut tick = tokio::time::interval(history.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let table = self.state.table.load();
                    history.sample(&table.endpoints, unix_ms());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::health::{Outcome, Permit};
    use crate::pricing::Catalog;
    use crate::stats::Sample;
    use crate::types::TokenCounts;
    use serde_json::Value;

    const YAML: &str = r#"
providers:
  - name: a
    kind: openai
    base_url: "http://127.0.0.1:1/v1"
    api_key: k1
    free_tier: { requests_per_minute: 10, requests_per_day: 1000 }
    budget: { usd_per_day: 5 }
  - { name: b, kind: openai_compatible, base_url: "http://127.0.0.1:2/v1" }
models:
  - name: chat
    targets: [ { provider: a, model: m1 }, { provider: b, model: "m2@status=500,x" } ]
  - name: w
    strategy: weighted
    targets: [ { provider: a, model: m1 }, { provider: b, model: "m2@status=500,x" } ]
"#;

    fn table(yaml: &str) -> RoutingTable {
        let cfg: Config = serde_yaml::from_str(yaml).unwrap();
        RoutingTable::build(&cfg, &HashMap::new(), None, Catalog::builtin()).unwrap()
    }

    fn serve(e: &Endpoint, ms: u64, usd: f64) {
        e.record(Permit::Normal, Outcome::Success, None);
        e.stats.record(&Sample {
            duration: Duration::from_millis(ms),
            ttft: Some(Duration::from_millis(ms / 2)),
            overhead: Duration::from_micros(20),
            prompt_tokens_estimate: 10,
            tokens: Some(TokenCounts {
                input: 10,
                output: 5,
                cache_read: 30,
                cache_write: 0,
            }),
            cost_usd: Some(usd),
        });
    }

    fn doc(h: &History, t: &RoutingTable, query: Option<&str>, now: u64) -> Value {
        let text = h.render(t, &Ledger::default(), "", query, now);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn a_point_is_64_bytes() {
        assert!(std::mem::size_of::<Point>() <= 64);
    }

    #[test]
    fn the_ring_is_fixed_size_and_keeps_the_last_hour() {
        let h = History::new(INTERVAL);
        let t = table(YAML);
        let ticks = SLOTS * 2 + 7;
        for i in 0..ticks {
            serve(&t.endpoints[0], 5 + i as u64 % 7, 0.001);
            h.sample(&t.endpoints, T0 + i as u64 * 10_000);
        }
        {
            let ring = h.ring.lock().unwrap();
            assert_eq!((ring.len, ring.times.len()), (SLOTS, SLOTS));
            assert!(ring.series.iter().all(|s| s.points.len() == SLOTS));
        }
        let d = doc(&h, &t, None, T0 + ticks as u64 * 10_000);
        let times: Vec<u64> = d["t_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(times.len(), SLOTS);
        assert_eq!(*times.last().unwrap(), T0 + (ticks as u64 - 1) * 10_000);
        assert!(
            times.windows(2).all(|w| w[1] - w[0] == 10_000),
            "oldest first"
        );
        let e0 = &d["endpoints"][0];
        assert_eq!(e0["id"], "a/m1");
        for (name, col) in e0["series"].as_object().unwrap() {
            assert_eq!(col.as_array().unwrap().len(), SLOTS, "{name}");
        }
        let series = &e0["series"];
        assert!(series["requests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v == 1));
        assert_eq!(series["tokens_cache_read"][0], 30);
        assert_eq!(series["cache_hit_rate"][0], 0.75);
        assert!((series["cost_usd"][5].as_f64().unwrap() - 0.001).abs() < 1e-12);
        assert!(series["latency_p95"][0].as_f64().unwrap() >= 5.0);
        assert_eq!(d["total"]["requests"].as_array().unwrap().len(), SLOTS);
        // The idle endpoint has present, zero points and no latency.
        let e1 = &d["endpoints"][1];
        assert_eq!(e1["id"], "b/m2@status=500,x");
        assert_eq!(e1["series"]["requests"][0], 0);
        assert!(e1["series"]["latency_p50"][0].is_null());
        assert!(e1["latency_ms"]["p95"].is_null());
    }

    #[test]
    fn status_fields_follow_admin_endpoints() {
        let h = History::new(INTERVAL);
        let t = table(YAML);
        serve(&t.endpoints[0], 40, 0.25);
        for _ in 0..5 {
            t.endpoints[1].record(Permit::Normal, Outcome::Failure, None);
        }
        t.endpoints[1].set_drained(true);
        h.sample(&t.endpoints, T0);
        let d = doc(&h, &t, None, T0 + 1);
        let (a, b) = (&d["endpoints"][0], &d["endpoints"][1]);
        assert_eq!(a["health"], "unknown");
        assert_eq!(a["breaker"]["state"], "closed");
        assert!(a["breaker"]["half_open_at_ms"].is_null());
        assert_eq!(a["latency_ms"]["p95"], 40.0);
        assert_eq!(a["spend_today_usd"], 0.25);
        assert_eq!(a["quota_left"]["what"], "requests_per_minute");
        assert_eq!(b["breaker"]["state"], "open");
        assert!(b["breaker"]["half_open_at_ms"].as_u64().unwrap() > unix_ms());
        assert_eq!(
            (b["drained"].clone(), b["errors"].clone()),
            (true.into(), 5.into())
        );
        assert_eq!(b["error_rate"], 1.0);
        assert_eq!(b["series"]["breaker"][0], 2);
        assert_eq!(b["series"]["drained"][0], 1);
        assert_eq!(b["series"]["error_rate"][0], 1.0);
        assert!(b["quota_left"].is_null());
        let pa = &d["providers"][0];
        assert_eq!(pa["name"], "a");
        assert_eq!(pa["budget"]["usd_per_day"], 5);
        assert_eq!(pa["spend_today_usd"], 0.25);
        assert_eq!(pa["free_tier"]["requests_per_day"]["limit"], 1000);
        assert!(d["providers"][1]["free_tier"].is_null());
    }

    #[test]
    fn counters_restart_when_an_endpoint_is_replaced_and_gone_endpoints_are_dropped() {
        let h = History::new(INTERVAL);
        let t = table(YAML);
        for _ in 0..3 {
            serve(&t.endpoints[0], 5, 0.0);
        }
        h.sample(&t.endpoints, T0);
        // A new table (as after two reloads that removed and re-added `a/m1`): fresh stats.
        let t2 = table(YAML);
        serve(&t2.endpoints[0], 5, 0.0);
        h.sample(&t2.endpoints, T0 + 10_000);
        let d = doc(&h, &t2, None, T0 + 20_000);
        assert_eq!(
            d["endpoints"][0]["series"]["requests"],
            serde_json::json!([3, 1])
        );
        // Only `b` left: `a`'s history goes.
        let only_b = table(
            r#"
providers: [ { name: b, kind: openai_compatible, base_url: "http://127.0.0.1:2/v1" } ]
models: [ { name: chat, targets: [ { provider: b, model: "m2@status=500,x" } ] } ]
"#,
        );
        h.sample(&only_b.endpoints, T0 + 20_000);
        assert_eq!(h.ring.lock().unwrap().series.len(), 1);
        let d = doc(&h, &only_b, None, T0 + 30_000);
        assert_eq!(d["endpoints"].as_array().unwrap().len(), 1);
        // A new endpoint's earlier slots are null.
        let with_c = table(
            r#"
providers: [ { name: b, kind: openai_compatible, base_url: "http://127.0.0.1:2/v1" } ]
models: [ { name: chat, targets: [ { provider: b, model: "m2@status=500,x" }, { provider: b, model: c } ] } ]
"#,
        );
        h.sample(&with_c.endpoints, T0 + 30_000);
        let d = doc(&h, &with_c, None, T0 + 40_000);
        assert_eq!(
            d["endpoints"][1]["series"]["requests"],
            serde_json::json!([null, null, null, 0])
        );
    }

    #[test]
    fn since_and_series_filters() {
        let h = History::new(INTERVAL);
        let t = table(YAML);
        for i in 0..5 {
            h.sample(&t.endpoints, T0 + i * 10_000);
        }
        let since = format!("since_ms={}", T0 + 20_000);
        let d = doc(&h, &t, Some(&since), T0 + 50_000);
        assert_eq!(d["t_ms"], serde_json::json!([T0 + 30_000, T0 + 40_000]));
        assert_eq!(
            d["endpoints"][0]["series"]["requests"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let d = doc(&h, &t, Some("series=none"), T0 + 50_000);
        assert!(d["endpoints"][0].get("series").is_none());
        assert_eq!(d["endpoints"][0]["id"], "a/m1", "status stays");
        // Ids are percent-encoded (URLSearchParams): `@`, `=`, `,` in the model name.
        let d = doc(
            &h,
            &t,
            Some("series=b%2Fm2%40status%3D500%2Cx"),
            T0 + 50_000,
        );
        assert!(d["endpoints"][0].get("series").is_none());
        assert_eq!(
            d["endpoints"][1]["series"]["requests"]
                .as_array()
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn spend_today_restarts_at_utc_midnight() {
        let h = History::new(INTERVAL);
        let t = table(YAML);
        let e = &t.endpoints[0];
        let before_midnight = T0 - 5_000;
        serve(e, 5, 1.0);
        h.sample(&t.endpoints, before_midnight);
        serve(e, 5, 2.0);
        let today = |now| doc(&h, &t, None, now)["endpoints"][0]["spend_today_usd"].clone();
        assert_eq!(today(before_midnight + 1), 3.0);
        // Past midnight, before the next sample: only what came after the last sample.
        assert_eq!(today(T0 + 1), 2.0);
        h.sample(&t.endpoints, T0 + 5_000);
        serve(e, 5, 0.5);
        assert_eq!(today(T0 + 6_000), 2.5);
        assert_eq!(
            doc(&h, &t, None, T0 + 6_000)["endpoints"][0]["cost_usd"],
            3.5
        );
    }

    #[test]
    fn quota_used_matches_the_ledger() {
        let ledger = Ledger::default();
        for n in 0..13u64 {
            for (what, limit) in [("requests_per_minute", 10), ("requests_per_day", 1000)] {
                let used = quota_used(&ledger, "provider:a", what, limit);
                assert_eq!(used, n.min(limit), "{what} after {n}");
            }
            ledger.count_request("provider:a");
        }
        assert_eq!(
            quota_used(&ledger, "provider:a", "tokens_per_minute", 500),
            0
        );
        ledger.add_usage("provider:a", 123, 0.0);
        assert_eq!(
            quota_used(&ledger, "provider:a", "tokens_per_minute", 500),
            123
        );
        assert_eq!(
            quota_used(&ledger, "provider:a", "tokens_per_minute", 100),
            100
        );
        assert_eq!(quota_used(&ledger, "provider:a", "tokens_per_minute", 0), 0);
    }

    #[test]
    fn model_view_counts_providers_and_fallbacks() {
        let h = History::new(INTERVAL);
        let t = table(YAML);
        let m = crate::telemetry::Metrics::default();
        for _ in 0..3 {
            m.request("chat", "a", "success");
        }
        m.request("chat", "b", "success");
        m.request("chat", "b", "upstream_error");
        m.request("w", "b", "success");
        m.request("w\"x", "b", "success");
        let text = h.render(&t, &Ledger::default(), &m.render(&[]), None, T0);
        let d: Value = serde_json::from_str(&text).unwrap();
        let chat = &d["models"][0];
        assert_eq!(chat["name"], "chat");
        assert_eq!(chat["strategy"], "fallback");
        assert_eq!(chat["targets"][1]["model"], "m2@status=500,x");
        assert_eq!(
            chat["served"],
            serde_json::json!([{"provider": "a", "requests": 3}, {"provider": "b", "requests": 1}])
        );
        assert_eq!(
            chat["failed"],
            serde_json::json!([{"code": "upstream_error", "requests": 1}])
        );
        assert_eq!(chat["fallbacks"], 1);
        let same = table(
            r#"
providers: [ { name: b, kind: openai_compatible, base_url: "http://127.0.0.1:2/v1" } ]
models: [ { name: chat, targets: [ { provider: b, model: x }, { provider: b, model: y } ] } ]
"#,
        );
        let text = h.render(&same, &Ledger::default(), &m.render(&[]), None, T0);
        let d2: Value = serde_json::from_str(&text).unwrap();
        assert!(
            d2["models"][0]["fallbacks"].is_null(),
            "one provider: unknown"
        );
        let w = &d["models"][1];
        assert_eq!(
            (w["name"].clone(), w["fallbacks"].clone()),
            ("w".into(), Value::Null)
        );
        assert_eq!(w["served"][0]["requests"], 1);
        assert_eq!(d["models"].as_array().unwrap().len(), 2, "aliases only");
    }

    #[test]
    fn parses_escaped_prometheus_labels() {
        let (labels, rest) = parse_labels(r#"model="a\"b\\c\nd",provider="p"} 7"#).unwrap();
        assert_eq!(labels[0], ("model".into(), "a\"b\\c\nd".into()));
        assert_eq!(labels[1], ("provider".into(), "p".into()));
        assert_eq!(rest, " 7");
        assert!(parse_labels("model=\"unterminated").is_none());
    }

    #[test]
    fn series_are_capped() {
        let h = History::new(INTERVAL);
        let endpoints: Vec<Arc<Endpoint>> = (0..MAX_SERIES + 10)
            .map(|i| {
                Arc::new(Endpoint::new(
                    "p",
                    &format!("m{i}"),
                    None,
                    Default::default(),
                ))
            })
            .collect();
        h.sample(&endpoints, T0);
        h.sample(&endpoints, T0 + 10_000);
        assert_eq!(h.ring.lock().unwrap().series.len(), MAX_SERIES);
    }

    #[test]
    fn assets_are_embedded_within_the_byte_budget() {
        let (ct, page) = asset("/dashboard").unwrap();
        assert!(ct.starts_with("text/html"));
        assert_eq!(asset("/dashboard/").unwrap().1, page);
        let page = std::str::from_utf8(page).unwrap();
        for (path, ..) in &ASSETS[1..] {
            assert!(
                page.contains(path) || path.ends_with("LICENSE"),
                "{path} is linked from the page"
            );
        }
        assert!(page.contains("/dashboard/assets/uPlot.LICENSE"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no CDN"
        );
        assert!(asset("/dashboard/assets/nope.js").is_none());
        let own: usize = ASSETS.iter().filter(|a| a.3).map(|a| a.2.len()).sum();
        let total: usize = ASSETS.iter().map(|a| a.2.len()).sum();
        assert!(own <= OWN_BUDGET, "own files {own} B > {OWN_BUDGET} B");
        assert!(
            total <= TOTAL_BUDGET,
            "all files {total} B > {TOTAL_BUDGET} B"
        );
    }
}
