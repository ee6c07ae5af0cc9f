//! Per-endpoint statistics: Prometheus histograms (lock-free), token and cost totals, and
//! sliding windows of recent latencies from which routing reads P95 per prompt-size bucket.
//!
//! Recording costs a few atomic adds plus one short uncontended lock on the window; the
//! percentiles routing reads are recomputed at most every [`REFRESH`] and cached in atomics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::health::now_ms;
use crate::types::TokenCounts;

/// Histogram bucket bounds in seconds (LLM calls span milliseconds to minutes).
pub const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// A Prometheus histogram on atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Adds one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// (per-bucket counts with the +Inf bucket last, sum in seconds, count), for OTLP.
    pub fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let mut counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count = self.count();
        let finite: u64 = counts.iter().sum();
        counts.push(count.saturating_sub(finite));
        (
            counts,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count,
        )
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines (cumulative buckets, as the format wants).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        use std::fmt::Write;
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Prompt-size buckets for latency (some models slow sharply past ~32K tokens).
pub const PROMPT_BUCKETS: [(&str, u64); 3] =
    [("<=4k", 4_096), ("<=32k", 32_768), (">32k", u64::MAX)];

/// The bucket index of a prompt of `tokens` estimated tokens.
pub fn prompt_bucket(tokens: u64) -> usize {
    PROMPT_BUCKETS
        .iter()
        .position(|(_, max)| tokens <= *max)
        .unwrap_or(PROMPT_BUCKETS.len() - 1)
}

/// Samples kept per window, and how old they may be.
const WINDOW_SAMPLES: usize = 512;
const WINDOW_AGE_MS: u64 = 10 * 60 * 1000;
/// How often cached percentiles are recomputed.
const REFRESH: Duration = Duration::from_millis(500);

/// Percentiles of a window, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub samples: usize,
}

/// Recent samples of one latency, with a cached P95 for routing.
#[derive(Debug)]
pub struct Window {
    samples: Mutex<VecDeque<(u64, u32)>>,
    /// Cached P95 in microseconds; `u64::MAX` = no data.
    p95_us: AtomicU64,
    refreshed_at: AtomicU64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            samples: Mutex::new(VecDeque::with_capacity(64)),
            p95_us: AtomicU64::new(u64::MAX),
            refreshed_at: AtomicU64::new(0),
        }
    }
}

impl Window {
    /// Adds a sample and refreshes the cached P95 when it is stale.
    pub fn record(&self, d: Duration) {
        let now = now_ms();
        let Ok(mut s) = self.samples.lock() else {
            return;
        };
        s.push_back((now, d.as_micros().min(u128::from(u32::MAX)) as u32));
        while s.len() > WINDOW_SAMPLES
            || s.front()
                .is_some_and(|(t, _)| now.saturating_sub(*t) > WINDOW_AGE_MS)
        {
            s.pop_front();
        }
        if now.saturating_sub(self.refreshed_at.load(Ordering::Relaxed))
            >= REFRESH.as_millis() as u64
            || s.len() < 16
        {
            let p = percentiles_of(s.iter().map(|(_, v)| *v));
            drop(s);
            self.p95_us
                .store((p.p95 * 1000.0) as u64, Ordering::Relaxed);
            self.refreshed_at.store(now, Ordering::Relaxed);
        }
    }

    /// The cached P95 (None without samples).
    pub fn p95(&self) -> Option<Duration> {
        match self.p95_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Exact percentiles now (admin and dashboard; not on the request path).
    pub fn percentiles(&self) -> Percentiles {
        match self.samples.lock() {
            Ok(s) => percentiles_of(s.iter().map(|(_, v)| *v)),
            Err(_) => Percentiles::default(),
        }
    }
}

fn percentiles_of(values: impl Iterator<Item = u32>) -> Percentiles {
    let mut v: Vec<u32> = values.collect();
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let at = |q: f64| {
        let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        f64::from(v[idx]) / 1000.0
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        samples: v.len(),
    }
}

/// Everything measured for one endpoint.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub duration: Histogram,
    pub ttft: Histogram,
    pub overhead: Histogram,
    /// Recent total durations by prompt-size bucket (routing reads their P95).
    pub duration_window: [Window; 3],
    pub ttft_window: Window,
    pub tokens_input: AtomicU64,
    pub tokens_output: AtomicU64,
    pub tokens_cache_read: AtomicU64,
    pub tokens_cache_write: AtomicU64,
    /// Spend in pico-USD (integer atomics; 1e-12 USD resolution, room for $18M).
    pub cost_pico_usd: AtomicU64,
    /// Requests whose cost could not be priced (unknown model).
    pub cost_unknown: AtomicU64,
}

/// One served request, as the stats see it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub duration: Duration,
    pub ttft: Option<Duration>,
    pub overhead: Duration,
    pub prompt_tokens_estimate: u64,
    pub tokens: Option<TokenCounts>,
    pub cost_usd: Option<f64>,
}

impl EndpointStats {
    /// Records one served request.
    pub fn record(&self, s: &Sample) {
        self.duration.observe(s.duration);
        self.overhead.observe(s.overhead);
        self.duration_window[prompt_bucket(s.prompt_tokens_estimate)].record(s.duration);
        if let Some(t) = s.ttft {
            self.ttft.observe(t);
            self.ttft_window.record(t);
        }
        if let Some(t) = s.tokens {
            self.tokens_input.fetch_add(t.input, Ordering::Relaxed);
            self.tokens_output.fetch_add(t.output, Ordering::Relaxed);
            self.tokens_cache_read
                .fetch_add(t.cache_read, Ordering::Relaxed);
            self.tokens_cache_write
                .fetch_add(t.cache_write, Ordering::Relaxed);
        }
        match s.cost_usd {
            Some(c) => {
                self.cost_pico_usd
                    .fetch_add((c * 1e12).round() as u64, Ordering::Relaxed);
            }
            None => {
                self.cost_unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Total spend in USD.
    pub fn cost_usd(&self) -> f64 {
        self.cost_pico_usd.load(Ordering::Relaxed) as f64 / 1e12
    }

    /// Share of input tokens served from a cache (reads over all input), for `/admin/endpoints`.
    pub fn cache_hit_rate(&self) -> f64 {
        let read = self.tokens_cache_read.load(Ordering::Relaxed) as f64;
        let all = read
            + self.tokens_input.load(Ordering::Relaxed) as f64
            + self.tokens_cache_write.load(Ordering::Relaxed) as f64;
        if all == 0.0 {
            0.0
        } else {
            read / all
        }
    }

    /// P95 of total duration for prompts in `bucket`, falling back to all buckets.
    pub fn p95_for(&self, bucket: usize) -> Option<Duration> {
        self.duration_window[bucket]
            .p95()
            .or_else(|| self.duration_window.iter().filter_map(Window::p95).max())
    }

    /// Exact percentiles of all recent durations (every bucket).
    pub fn duration_percentiles(&self) -> Percentiles {
        let mut all = Vec::new();
        for w in &self.duration_window {
            if let Ok(s) = w.samples.lock() {
                all.extend(s.iter().map(|(_, v)| *v));
            }
        }
        percentiles_of(all.into_iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(400));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 1\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.05\"} 2\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"300\"} 2\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count{a=\"b\"} 3\n"));
    }

    #[test]
    fn percentiles_and_cached_p95() {
        let w = Window::default();
        for ms in 1..=100 {
            w.record(Duration::from_millis(ms));
        }
        let p = w.percentiles();
        assert_eq!((p.p50, p.p95, p.p99, p.samples), (50.0, 95.0, 99.0, 100));
        let cached = w.p95().unwrap();
        assert!(cached >= Duration::from_millis(15) && cached <= Duration::from_millis(95));
    }

    #[test]
    fn prompt_buckets() {
        assert_eq!(prompt_bucket(100), 0);
        assert_eq!(prompt_bucket(20_000), 1);
        assert_eq!(prompt_bucket(200_000), 2);
    }

    #[test]
    fn cost_and_cache_rate() {
        let s = EndpointStats::default();
        s.record(&Sample {
            duration: Duration::from_millis(10),
            ttft: None,
            overhead: Duration::from_micros(50),
            prompt_tokens_estimate: 10,
            tokens: Some(TokenCounts {
                input: 100,
                output: 10,
                cache_read: 300,
                cache_write: 0,
            }),
            cost_usd: Some(0.000_123_456_789),
        });
        assert!((s.cost_usd() - 0.000_123_456_789).abs() < 1e-12);
        assert!((s.cache_hit_rate() - 0.75).abs() < 1e-9);
    }
}
