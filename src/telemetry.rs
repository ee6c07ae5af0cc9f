//! Telemetry: the Prometheus text exposition of spec §7, from request counters kept here
//! and the per-endpoint statistics kept in [`crate::stats`].

pub mod logging;

use crate::health::{BreakerState, Endpoint, Health};
use crate::otlp::{AttrValue, Exporter, MetricData, SpanKind, SpanRecord};
use crate::types::TokenCounts;
use std::borrow::Cow;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Counters whose labels are not per endpoint (the client's model name, the outcome).
/// Label sets are few (aliases × providers × outcomes), so a short list scanned without
/// allocating beats a map that needs owned keys for every lookup.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (model, provider, outcome) → client requests.
    requests: Mutex<Vec<(RequestLabels, u64)>>,
    /// (provider, model, result) → upstream attempts.
    attempts: Mutex<Vec<(AttemptLabels, u64)>>,
}

/// `llmux_requests_total` labels: model alias, provider, outcome.
type RequestLabels = (String, String, String);
/// `llmux_attempts_total` labels: provider, model, result.
type AttemptLabels = (String, String, &'static str);

impl Metrics {
    /// Counts one client request: `outcome` is `success` or the error code.
    pub fn request(&self, model: &str, provider: &str, outcome: &str) {
        if let Ok(mut m) = self.requests.lock() {
            let hit = m
                .iter_mut()
                .find(|((a, b, c), _)| a == model && b == provider && c == outcome);
            match hit {
                Some((_, n)) => *n += 1,
                None => m.push((
                    (model.to_owned(), provider.to_owned(), outcome.to_owned()),
                    1,
                )),
            }
        }
    }

    /// Counts one upstream attempt.
    pub fn attempt(&self, provider: &str, model: &str, result: &'static str) {
        if let Ok(mut m) = self.attempts.lock() {
            let hit = m
                .iter_mut()
                .find(|((a, b, c), _)| a == provider && b == model && *c == result);
            match hit {
                Some((_, n)) => *n += 1,
                None => m.push(((provider.to_owned(), model.to_owned(), result), 1)),
            }
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

impl Metrics {
    /// The same numbers as `/metrics`, as OTLP metric data (cumulative).
    pub fn otlp_snapshot(&self, endpoints: &[Arc<Endpoint>]) -> Vec<MetricData> {
        let mut out = Vec::new();
        if let Ok(m) = self.requests.lock() {
            let points = m
                .iter()
                .map(|((model, provider, outcome), n)| {
                    (
                        vec![
                            ("model", model.clone()),
                            ("provider", provider.clone()),
                            ("outcome", outcome.clone()),
                        ],
                        *n as f64,
                    )
                })
                .collect();
            out.push(sum(
                "llmux_requests_total",
                "Client requests.",
                "{request}",
                points,
            ));
        }
        if let Ok(m) = self.attempts.lock() {
            let points = m
                .iter()
                .map(|((provider, model, result), n)| {
                    (
                        vec![
                            ("provider", provider.clone()),
                            ("model", model.clone()),
                            ("result", (*result).to_owned()),
                        ],
                        *n as f64,
                    )
                })
                .collect();
            out.push(sum(
                "llmux_attempts_total",
                "Upstream attempts.",
                "{attempt}",
                points,
            ));
        }
        let labels =
            |e: &Endpoint| vec![("provider", e.provider.clone()), ("model", e.model.clone())];
        let histograms: [(&str, HistogramOf); 3] = [
            ("llmux_request_duration_seconds", |e| &e.stats.duration),
            ("llmux_time_to_first_token_seconds", |e| &e.stats.ttft),
            ("llmux_overhead_seconds", |e| &e.stats.overhead),
        ];
        for (name, get) in histograms {
            let points = endpoints
                .iter()
                .map(|e| {
                    let (counts, sum, count) = get(e).snapshot();
                    (labels(e), counts, sum, count)
                })
                .collect();
            out.push(MetricData::Histogram {
                name: name.into(),
                description: String::new(),
                unit: "s".into(),
                bounds: crate::stats::BUCKETS.to_vec(),
                points,
            });
        }
        let mut tokens = Vec::new();
        let mut cost = Vec::new();
        let mut circuit = Vec::new();
        for e in endpoints {
            let s = &e.stats;
            for (kind, v) in [
                ("input", &s.tokens_input),
                ("output", &s.tokens_output),
                ("cache_read", &s.tokens_cache_read),
                ("cache_write", &s.tokens_cache_write),
            ] {
                let mut l = labels(e);
                l.push(("type", kind.into()));
                tokens.push((l, v.load(Ordering::Relaxed) as f64));
            }
            cost.push((labels(e), s.cost_usd()));
            circuit.push((labels(e), f64::from(e.breaker_state() as u8)));
        }
        out.push(sum(
            "llmux_tokens_total",
            "Tokens by type.",
            "{token}",
            tokens,
        ));
        out.push(sum("llmux_cost_usd_total", "Spend in USD.", "USD", cost));
        out.push(MetricData::Gauge {
            name: "llmux_circuit_state".into(),
            description: "0 closed, 1 half-open, 2 open.".into(),
            unit: "1".into(),
            points: circuit,
        });
        out
    }
}

fn sum(
    name: &str,
    description: &str,
    unit: &str,
    points: Vec<(crate::otlp::Labels, f64)>,
) -> MetricData {
    MetricData::Sum {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        monotonic: true,
        points,
    }
}

/// The spans of one client request: a SERVER span for the request and a CLIENT child per
/// upstream attempt, with GenAI semantic-convention attributes. Never holds prompt text.
#[derive(Debug)]
pub struct RequestTrace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: SystemTime,
    spans: Vec<SpanRecord>,
}

/// What one attempt's span reports.
#[derive(Debug)]
pub struct AttemptReport<'a> {
    pub provider: &'a str,
    pub provider_kind: &'static str,
    pub upstream_model: &'a str,
    pub started: SystemTime,
    pub usage: Option<TokenCounts>,
    pub error: Option<String>,
}

impl RequestTrace {
    /// Starts a trace, joining the caller's W3C `traceparent` when there is one.
    pub fn start(traceparent: Option<&str>) -> RequestTrace {
        let joined = traceparent.and_then(crate::otlp::parse_traceparent);
        RequestTrace {
            trace_id: joined.map_or_else(crate::otlp::new_trace_id, |(t, _)| t),
            span_id: crate::otlp::new_span_id(),
            parent: joined.map(|(_, s)| s),
            start: SystemTime::now(),
            spans: Vec::new(),
        }
    }

    /// Records one finished upstream attempt as a child span.
    pub fn attempt(&mut self, a: AttemptReport<'_>) {
        let mut attributes = Vec::with_capacity(9);
        attributes.extend([
            (
                "gen_ai.operation.name",
                AttrValue::Str(Cow::Borrowed("chat")),
            ),
            (
                "gen_ai.provider.name",
                AttrValue::Str(Cow::Borrowed(a.provider_kind)),
            ),
            ("gen_ai.request.model", owned(a.upstream_model)),
            ("llmux.provider", owned(a.provider)),
        ]);
        if let Some(t) = a.usage {
            attributes.push(("gen_ai.response.model", owned(a.upstream_model)));
            push_usage(&mut attributes, &t);
        }
        self.spans.push(SpanRecord {
            trace_id: self.trace_id,
            span_id: crate::otlp::new_span_id(),
            parent_span_id: Some(self.span_id),
            name: format!("chat {}", a.upstream_model),
            kind: SpanKind::Client,
            start: a.started,
            end: SystemTime::now(),
            attributes,
            error: a.error,
        });
    }

    /// Ends the request span and hands every span to the exporter (non-blocking).
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        self,
        exporter: &Exporter,
        model: &str,
        stream: bool,
        served_by: Option<(&str, &str)>,
        usage: Option<TokenCounts>,
        cost_usd: Option<f64>,
        status: u16,
        error: Option<String>,
    ) {
        let mut attributes = Vec::with_capacity(12);
        attributes.extend([
            (
                "gen_ai.operation.name",
                AttrValue::Str(Cow::Borrowed("chat")),
            ),
            ("gen_ai.request.model", owned(model)),
            ("llmux.stream", AttrValue::Bool(stream)),
            ("llmux.attempts", AttrValue::Int(self.spans.len() as i64)),
            (
                "http.response.status_code",
                AttrValue::Int(i64::from(status)),
            ),
        ]);
        if let Some((provider, upstream)) = served_by {
            attributes.push(("llmux.provider", owned(provider)));
            attributes.push(("gen_ai.response.model", owned(upstream)));
        }
        if let Some(t) = usage {
            push_usage(&mut attributes, &t);
        }
        if let Some(c) = cost_usd {
            attributes.push(("llmux.cost_usd", AttrValue::Double(c)));
        }
        let request_span = SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent,
            name: format!("chat {model}"),
            kind: SpanKind::Server,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            error,
        };
        exporter.submit_all(self.spans.into_iter().chain(std::iter::once(request_span)));
    }
}

fn owned(s: &str) -> AttrValue {
    AttrValue::Str(Cow::Owned(s.to_owned()))
}

fn push_usage(attributes: &mut Vec<(&'static str, AttrValue)>, t: &TokenCounts) {
    let input = t.input + t.cache_read + t.cache_write;
    attributes.push(("gen_ai.usage.input_tokens", AttrValue::Int(input as i64)));
    attributes.push((
        "gen_ai.usage.output_tokens",
        AttrValue::Int(t.output as i64),
    ));
    attributes.push((
        "gen_ai.usage.cache_read.input_tokens",
        AttrValue::Int(t.cache_read as i64),
    ));
    attributes.push((
        "gen_ai.usage.cache_creation.input_tokens",
        AttrValue::Int(t.cache_write as i64),
    ));
}

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
