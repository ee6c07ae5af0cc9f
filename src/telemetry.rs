//! Telemetry: the Prometheus text exposition of spec §7, from request counters kept here
//! and the per-endpoint statistics kept in [`crate::stats`].

use crate::health::{BreakerState, Endpoint, Health};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Counters whose labels are not per endpoint (the client's model name, the outcome).
#[derive(Debug, Default)]
pub struct Metrics {
    /// (model, provider, outcome) → client requests.
    requests: Mutex<HashMap<(String, String, String), u64>>,
    /// (provider, model, result) → upstream attempts.
    attempts: Mutex<HashMap<(String, String, &'static str), u64>>,
}

impl Metrics {
    /// Counts one client request: `outcome` is `success` or the error code.
    pub fn request(&self, model: &str, provider: &str, outcome: &str) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((model.to_owned(), provider.to_owned(), outcome.to_owned()))
                .or_default() += 1;
        }
    }

    /// Counts one upstream attempt.
    pub fn attempt(&self, provider: &str, model: &str, result: &'static str) {
        if let Ok(mut m) = self.attempts.lock() {
            *m.entry((provider.to_owned(), model.to_owned(), result))
                .or_default() += 1;
        }
    }

    /// The whole `/metrics` page.
    pub fn render(&self, endpoints: &[Arc<Endpoint>]) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "llmux_requests_total",
            "counter",
            "Client requests by model alias, answering provider and outcome.",
        );
        if let Ok(m) = self.requests.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort();
            for ((model, provider, outcome), n) in rows {
                let _ = writeln!(
                    out,
                    "llmux_requests_total{{model=\"{}\",provider=\"{}\",outcome=\"{}\"}} {n}",
                    label(model),
                    label(provider),
                    label(outcome)
                );
            }
        }
        header(
            &mut out,
            "llmux_attempts_total",
            "counter",
            "Upstream attempts by endpoint and result.",
        );
        if let Ok(m) = self.attempts.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort();
            for ((provider, model, result), n) in rows {
                let _ = writeln!(
                    out,
                    "llmux_attempts_total{{provider=\"{}\",model=\"{}\",result=\"{result}\"}} {n}",
                    label(provider),
                    label(model)
                );
            }
        }
        let histograms: [(&str, &str, HistogramOf); 3] = [
            (
                "llmux_request_duration_seconds",
                "Client request duration, by the endpoint that answered.",
                |e| &e.stats.duration,
            ),
            (
                "llmux_time_to_first_token_seconds",
                "Time to the first streamed token, by the endpoint that answered.",
                |e| &e.stats.ttft,
            ),
            (
                "llmux_overhead_seconds",
                "Time spent in llmux itself, upstream time excluded.",
                |e| &e.stats.overhead,
            ),
        ];
        for (name, help, get) in histograms {
            header(&mut out, name, "histogram", help);
            for e in endpoints {
                get(e).render(&mut out, name, &endpoint_labels(e));
            }
        }
        header(
            &mut out,
            "llmux_tokens_total",
            "counter",
            "Tokens by endpoint and type; the types partition the tokens.",
        );
        for e in endpoints {
            let s = &e.stats;
            for (kind, v) in [
                ("input", &s.tokens_input),
                ("output", &s.tokens_output),
                ("cache_read", &s.tokens_cache_read),
                ("cache_write", &s.tokens_cache_write),
            ] {
                let _ = writeln!(
                    out,
                    "llmux_tokens_total{{{},type=\"{kind}\"}} {}",
                    endpoint_labels(e),
                    v.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut out,
            "llmux_cost_usd_total",
            "counter",
            "Spend in USD from the providers' usage and the price catalog.",
        );
        for e in endpoints {
            let _ = writeln!(
                out,
                "llmux_cost_usd_total{{{}}} {}",
                endpoint_labels(e),
                e.stats.cost_usd()
            );
        }
        header(
            &mut out,
            "llmux_circuit_state",
            "gauge",
            "Circuit breaker state per endpoint (0 closed, 1 half-open, 2 open).",
        );
        for e in endpoints {
            let state = match e.breaker_state() {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            let _ = writeln!(out, "llmux_circuit_state{{{}}} {state}", endpoint_labels(e));
        }
        header(
            &mut out,
            "llmux_endpoint_healthy",
            "gauge",
            "1 when the endpoint's probes pass and it is not drained.",
        );
        for e in endpoints {
            let healthy = u8::from(e.health() != Health::Unhealthy && !e.drained());
            let _ = writeln!(
                out,
                "llmux_endpoint_healthy{{{}}} {healthy}",
                endpoint_labels(e)
            );
        }
        out
    }
}

/// Picks one of an endpoint's histograms.
type HistogramOf = fn(&Endpoint) -> &crate::stats::Histogram;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn endpoint_labels(e: &Endpoint) -> String {
    format!(
        "provider=\"{}\",model=\"{}\"",
        label(&e.provider),
        label(&e.model)
    )
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_spec_metric_with_escaped_labels() {
        let m = Metrics::default();
        m.request("chat", "openai", "success");
        m.attempt("openai", "gpt\"x", "status_5xx");
        let e = Arc::new(Endpoint::new("openai", "gpt\"x", None, Default::default()));
        let text = m.render(&[e]);
        for name in [
            "llmux_requests_total",
            "llmux_attempts_total",
            "llmux_request_duration_seconds",
            "llmux_time_to_first_token_seconds",
            "llmux_overhead_seconds",
            "llmux_tokens_total",
            "llmux_cost_usd_total",
            "llmux_circuit_state",
            "llmux_endpoint_healthy",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        assert!(text.contains(
            "llmux_requests_total{model=\"chat\",provider=\"openai\",outcome=\"success\"} 1"
        ));
        assert!(text.contains(
            "llmux_attempts_total{provider=\"openai\",model=\"gpt\\\"x\",result=\"status_5xx\"} 1"
        ));
        assert!(text.contains("llmux_circuit_state{provider=\"openai\",model=\"gpt\\\"x\"} 0"));
    }
}
