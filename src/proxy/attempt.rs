//! The attempt loop: try the planned targets in order until one is accepted.
//!
//! An attempt is *accepted* only when llmux has something to send the client: the whole
//! translated body (non-stream) or the first translated stream bytes. Until then every
//! failure — connect error, timeout, 429, 5xx, a stream cut before its first event — leaves
//! the client untouched and the next target is tried with the same parsed request, whatever
//! its size. Once the first byte is sent there is no retry; a later failure is reported
//! inside the stream.

use super::respond;
use super::GatewayState;
use crate::health::Outcome;
use crate::providers::openai_out::{format_cost, insert_usage_cost, insert_usage_cost_at};
use crate::providers::{StreamTranslator, UpstreamRequest};
use crate::routing::{Provider, RoutingTable, Target};
use crate::stats::Sample;
use crate::telemetry::{AttemptReport, RequestTrace};
use crate::types::{ChatRequest, FailureKind, GatewayError, UpstreamFailure, Usage};
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::ServerSession as Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest upstream body llmux buffers (non-stream answers, error bodies are capped lower).
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Why an attempt ended without a response.
enum AttemptError {
    /// The upstream failed before anything reached the client.
    Upstream(UpstreamFailure),
    /// The client went away; nothing more can be sent.
    ClientGone,
}

impl From<UpstreamFailure> for AttemptError {
    fn from(f: UpstreamFailure) -> Self {
        AttemptError::Upstream(f)
    }
}

/// What one accepted attempt produced, for the access log (and later, stats and cost).
struct Served {
    status: u16,
    /// The stream failed after it had started (reported to the client in-stream).
    broken: bool,
    usage: Option<Usage>,
    ttft: Option<Duration>,
    /// USD, when the model's price and the usage are known.
    cost: Option<f64>,
}

/// Runs the plan for one parsed request and writes the client's response; counts the
/// request in `llmux_requests_total` whatever the outcome.
pub(super) async fn run(
    state: &GatewayState,
    session: &mut Session,
    table: &RoutingTable,
    req: &ChatRequest,
    plan: Vec<Target>,
    ctx: &RequestCtx<'_>,
) -> Result<(), GatewayError> {
    // The provider of the last attempt, for the request counter when all failed.
    let mut last_provider: Option<Arc<Provider>> = None;
    let mut trace = state
        .otlp
        .as_ref()
        .map(|_| RequestTrace::start(ctx.traceparent));
    let mut served = None;
    let result = run_plan(
        state,
        session,
        table,
        req,
        plan,
        ctx,
        &mut last_provider,
        &mut trace,
        &mut served,
    )
    .await;
    if let Err(e) = &result {
        let provider = last_provider.as_ref().map_or("", |p| p.name.as_str());
        state.metrics.request(&req.model, provider, &e.code());
    }
    if let (Some(trace), Some(exporter)) = (trace, state.otlp.as_deref()) {
        let (status, error) = match &result {
            Ok(()) => (200, None),
            Err(e) => (e.status(), Some(format!("{}: {e}", e.code()))),
        };
        let summary: Option<&ServedSummary> = served.as_ref();
        trace.finish(
            exporter,
            &req.model,
            req.stream,
            summary.map(|s| (s.provider.as_str(), s.upstream_model.as_str())),
            summary.and_then(|s| s.tokens),
            summary.and_then(|s| s.cost),
            status,
            error,
        );
    }
    result
}

/// Who answered, for the request span.
struct ServedSummary {
    provider: String,
    upstream_model: String,
    tokens: Option<crate::types::TokenCounts>,
    cost: Option<f64>,
}

/// What the attempt loop needs to know about the client request beyond its body.
pub(super) struct RequestCtx<'a> {
    pub rid: &'a str,
    pub started: Instant,
    /// The gateway key's name, when keys are configured (budgets are kept per key).
    pub key_name: Option<&'a str>,
    /// The caller's W3C trace context, so llmux's spans join its trace.
    pub traceparent: Option<&'a str>,
}

/// Whether a target's provider is inside its budget and free tier. `Err(true)`: refuse
/// the request (free tier with `on_exhausted: reject`); `Err(false)`: skip this target.
fn within_limits(
    state: &GatewayState,
    target: &Target,
) -> Result<(), (bool, crate::budget::Limit)> {
    let p = &target.provider;
    if p.budget.is_none() && p.free_tier.is_none() {
        return Ok(());
    }
    let key = format!("provider:{}", p.name);
    if let Some(b) = &p.budget {
        state.ledger.check_budget(&key, b).map_err(|l| (false, l))?;
    }
    if let Some(t) = &p.free_tier {
        let reject = t.on_exhausted == crate::config::OnExhausted::Reject;
        state
            .ledger
            .check_free_tier(&key, t)
            .map_err(|l| (reject, l))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_plan(
    state: &GatewayState,
    session: &mut Session,
    table: &RoutingTable,
    req: &ChatRequest,
    plan: Vec<Target>,
    ctx: &RequestCtx<'_>,
    last_provider: &mut Option<Arc<Provider>>,
    trace: &mut Option<RequestTrace>,
    summary: &mut Option<ServedSummary>,
) -> Result<(), GatewayError> {
    let (rid, started) = (ctx.rid, ctx.started);
    let mut limited: Option<crate::budget::Limit> = None;
    // Raised when a provider said the prompt does not fit its window.
    let mut min_window = 0u64;
    let window_of = |t: &Target| {
        t.price
            .as_ref()
            .and_then(|p| p.context_window)
            .unwrap_or(u64::MAX)
    };
    // Time spent waiting on providers (and in backoff), so overhead = total - this.
    let mut upstream_time = Duration::ZERO;
    let deadline = started + table.limits.request_timeout;
    let mut last: Option<UpstreamFailure> = None;
    let mut attempts = 0u32;
    table.retry_budget.on_request();
    let max_attempts = table.limits.max_attempts as usize;
    // Targets in plan order; with fewer targets than `max_attempts` the order repeats, and
    // an endpoint tried again waits a short jittered backoff first.
    let sequence = plan
        .iter()
        .cycle()
        .take(max_attempts.max(plan.len()) + plan.len());
    for (i, target) in sequence.enumerate() {
        if attempts as usize >= max_attempts || Instant::now() >= deadline {
            break;
        }
        let round = i / plan.len().max(1);
        if round > 0 {
            let pause = backoff(round).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            upstream_time += pause;
        }
        if window_of(target) < min_window {
            continue;
        }
        match within_limits(state, target) {
            Ok(()) => {}
            Err((true, limit)) => {
                return Err(GatewayError::BudgetExceeded {
                    message: format!("Free tier exhausted: {}", limit.reason()),
                })
            }
            Err((false, limit)) => {
                log::info!("request_id={rid} skipping {target:?}: {}", limit.reason());
                limited = Some(limit);
                continue;
            }
        }
        // The breaker decides right before the attempt (a half-open trial is taken here).
        let Some(permit) = target.endpoint.acquire() else {
            continue;
        };
        if target.provider.free_tier.is_some() {
            state
                .ledger
                .count_request(&format!("provider:{}", target.provider.name));
        }
        if attempts > 0 && !table.retry_budget.try_retry() {
            target.endpoint.release(permit);
            log::warn!("request_id={rid} retry budget spent; not trying {target:?}");
            break;
        }
        attempts += 1;
        let upstream_req = match target.provider.adapter.chat_request(req, &target.model) {
            Ok(r) => r,
            // The adapter could not build a request for reasons of the endpoint, not the
            // request (e.g. expired credentials): a failed attempt, like any other.
            Err(GatewayError::Upstream { failure, .. }) => {
                target.endpoint.release(permit);
                log::warn!("request_id={rid} {target:?}: {}", failure.message);
                state
                    .metrics
                    .attempt(&target.provider.name, &target.model, result_label(&failure));
                if !failure.retryable() {
                    return Err(GatewayError::Upstream { failure, attempts });
                }
                last = Some(failure);
                continue;
            }
            Err(e) => {
                target.endpoint.release(permit);
                return Err(e);
            }
        };
        *last_provider = Some(target.provider.clone());
        let attempt_started = Instant::now();
        let span_started = std::time::SystemTime::now();
        let mut report = |usage: Option<&Usage>, error: Option<String>| {
            if let Some(t) = trace.as_mut() {
                t.attempt(AttemptReport {
                    provider: &target.provider.name,
                    provider_kind: crate::providers::semconv_name(target.provider.kind),
                    upstream_model: &target.model,
                    started: span_started,
                    usage: usage.map(Usage::token_counts),
                    error,
                });
            }
        };
        let result = attempt(
            state,
            session,
            target,
            req,
            &upstream_req,
            deadline,
            attempts,
            rid,
        )
        .await;
        upstream_time += attempt_started.elapsed();
        match result {
            Ok(served) => {
                let outcome = if served.broken {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                target.endpoint.record(permit, outcome, None);
                let result = if served.broken {
                    "stream_error"
                } else {
                    "success"
                };
                state
                    .metrics
                    .attempt(&target.provider.name, &target.model, result);
                state
                    .metrics
                    .request(&req.model, &target.provider.name, "success");
                let tokens = served
                    .usage
                    .as_ref()
                    .map(Usage::token_counts)
                    .unwrap_or_default();
                let spent = served.cost.unwrap_or(0.0);
                let all_tokens =
                    tokens.input + tokens.output + tokens.cache_read + tokens.cache_write;
                // The ledger only tracks what some limit needs (no lock otherwise).
                let provider = &target.provider;
                if provider.budget.is_some() || provider.free_tier.is_some() {
                    state.ledger.add_usage(
                        &format!("provider:{}", provider.name),
                        all_tokens,
                        spent,
                    );
                }
                if let Some(name) = ctx.key_name.filter(|n| table.key_budgets.contains_key(*n)) {
                    state
                        .ledger
                        .add_usage(&format!("key:{name}"), all_tokens, spent);
                }
                let duration = started.elapsed();
                target.endpoint.stats.record(&Sample {
                    duration,
                    ttft: served.ttft,
                    overhead: duration.saturating_sub(upstream_time),
                    prompt_tokens_estimate: req.estimate_prompt_tokens(),
                    tokens: served.usage.as_ref().map(Usage::token_counts),
                    cost_usd: served.cost,
                });
                report(
                    served.usage.as_ref(),
                    served
                        .broken
                        .then(|| "stream broke after it started".to_owned()),
                );
                *summary = Some(ServedSummary {
                    provider: target.provider.name.clone(),
                    upstream_model: target.model.clone(),
                    tokens: served.usage.as_ref().map(Usage::token_counts),
                    cost: served.cost,
                });
                log_served(rid, req, target, &served, attempts, started);
                return Ok(());
            }
            Err(AttemptError::ClientGone) => {
                target.endpoint.record(permit, Outcome::Neutral, None);
                state
                    .metrics
                    .attempt(&target.provider.name, &target.model, "client_closed");
                state
                    .metrics
                    .request(&req.model, &target.provider.name, "client_closed");
                report(None, Some("client closed the connection".into()));
                log::debug!("request_id={rid} client went away during attempt {attempts}");
                return Ok(());
            }
            Err(AttemptError::Upstream(failure)) => {
                log::warn!(
                    "request_id={rid} attempt={attempts} provider={} upstream_model={} failed: {:?} {}",
                    target.provider.name,
                    target.model,
                    failure.kind,
                    failure.message
                );
                target
                    .endpoint
                    .record(permit, outcome_of(&failure), failure.retry_after);
                state
                    .metrics
                    .attempt(&target.provider.name, &target.model, result_label(&failure));
                report(
                    None,
                    Some(format!("{}: {}", result_label(&failure), failure.message)),
                );
                if failure.code() == Some("context_length_exceeded") {
                    // llmux's token estimate was short for this model: a target with a larger
                    // window may still fit; smaller or equal ones are skipped from now on.
                    let window = target
                        .price
                        .as_ref()
                        .and_then(|p| p.context_window)
                        .unwrap_or(u64::MAX);
                    min_window = min_window.max(window.saturating_add(1));
                    if plan.iter().any(|t| window_of(t) >= min_window) {
                        last = Some(failure);
                        continue;
                    }
                }
                if !failure.retryable() {
                    return Err(GatewayError::Upstream { failure, attempts });
                }
                last = Some(failure);
            }
        }
    }
    match last {
        Some(failure) if Instant::now() < deadline => {
            Err(GatewayError::Upstream { failure, attempts })
        }
        Some(_) => Err(GatewayError::Timeout {
            message: format!(
                "No provider answered within the request deadline of {:?} ({attempts} attempts)",
                table.limits.request_timeout
            ),
        }),
        // Every target left is over its budget or free tier.
        None if attempts == 0 && limited.is_some() => Err(GatewayError::BudgetExceeded {
            message: format!(
                "Budget exceeded: no target of `{}` is under its budget ({})",
                req.model,
                limited.as_ref().map_or("", |l| l.reason())
            ),
        }),
        // Every planned endpoint refused at the last moment (a half-open trial already out).
        None if attempts == 0 => Err(GatewayError::NoHealthyEndpoint {
            model: req.model.clone(),
            retry_after_secs: 1,
        }),
        None => Err(GatewayError::Timeout {
            message: format!(
                "The request deadline of {:?} passed",
                table.limits.request_timeout
            ),
        }),
    }
}

/// The pause before trying an endpoint again in the same request: 100 ms doubling per
/// round, ±50 % jitter so clients that failed together do not retry together.
fn backoff(round: usize) -> Duration {
    let base = 100u64 << (round - 1).min(4);
    Duration::from_millis(base / 2 + fastrand::u64(0..=base))
}

/// The `result` label of `llmux_attempts_total` for a failed attempt.
fn result_label(f: &UpstreamFailure) -> &'static str {
    match f.kind {
        FailureKind::Connect => "connect_error",
        FailureKind::Timeout => "timeout",
        FailureKind::Protocol => "protocol_error",
        FailureKind::Status(429) => "status_429",
        FailureKind::Status(s) if s >= 500 => "status_5xx",
        FailureKind::Status(_) => "status_4xx",
    }
}

/// What an upstream failure says about the endpoint: a request the provider refused as
/// malformed (4xx other than 408/429) says nothing about its health.
fn outcome_of(failure: &UpstreamFailure) -> Outcome {
    match failure.kind {
        FailureKind::Status(s) if (400..500).contains(&s) && !matches!(s, 408 | 429) => {
            if failure.permanent {
                Outcome::Failure
            } else {
                Outcome::Neutral
            }
        }
        _ => Outcome::Failure,
    }
}

/// The access log line: ids and numbers, never content or keys.
fn log_served(
    rid: &str,
    req: &ChatRequest,
    target: &Target,
    served: &Served,
    attempts: u32,
    started: Instant,
) {
    let tokens = served
        .usage
        .as_ref()
        .map(Usage::token_counts)
        .unwrap_or_default();
    log::info!(
        "request_id={rid} model={} provider={} upstream_model={} status={} attempts={attempts} stream={} broken={} duration_ms={} ttft_ms={} input_tokens={} cache_read_tokens={} output_tokens={}",
        req.model,
        target.provider.name,
        target.model,
        served.status,
        req.stream,
        served.broken,
        started.elapsed().as_millis(),
        served.ttft.map_or(-1, |d| d.as_millis() as i64),
        tokens.input,
        tokens.cache_read,
        tokens.output,
    );
}

/// One attempt against one target. Before acceptance it is bounded by the attempt's own
/// `timeouts.total` and the request deadline.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    state: &GatewayState,
    session: &mut Session,
    target: &Target,
    req: &ChatRequest,
    upstream_req: &UpstreamRequest,
    deadline: Instant,
    attempts: u32,
    rid: &str,
) -> Result<Served, AttemptError> {
    let provider = &target.provider;
    let attempt_deadline = deadline.min(Instant::now() + provider.timeouts.total.0);
    let name = provider.name.as_str();
    let timed_out = || {
        UpstreamFailure::new(
            name,
            FailureKind::Timeout,
            "the attempt's deadline passed before an answer",
        )
    };
    // Boxed: moved by value through the timeout wrapper, `open`'s future (~2.5 KB) was
    // copied three times, and it would be the largest part of this one (itself boxed per
    // request); in a box it is copied once.
    let opened = within(
        attempt_deadline,
        Box::pin(open(state, target, upstream_req, Connection::Pooled)),
    )
    .await;
    let (mut up, peer) = opened.map_err(|_| timed_out())??;
    let sent_at = Instant::now();
    let status = up.response_header().map_or(0, |h| h.status.as_u16());
    if !(200..300).contains(&status) {
        let headers = up
            .response_header()
            .map(|h| h.headers.clone())
            .unwrap_or_default();
        let body = within(
            attempt_deadline,
            read_all(&mut up, provider.timeouts.idle.0, MAX_ERROR_BODY, name),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
        release(state, up, &peer);
        return Err(provider.adapter.error(status, &headers, &body).into());
    }
    let mut attempts_text = itoa::Buffer::new();
    let attempts_text: &str = attempts_text.format(attempts);
    let extra = [
        ("x-llmux-provider", provider.name.as_str()),
        ("x-llmux-model", target.model.as_str()),
        ("x-llmux-attempts", attempts_text),
    ];

    if !req.stream {
        let read = within(
            attempt_deadline,
            read_all(&mut up, provider.timeouts.idle.0, MAX_UPSTREAM_BODY, name),
        )
        .await;
        let body = read.map_err(|_| timed_out())??;
        let translated = provider.adapter.chat_response(req, &target.model, &body)?;
        release(state, up, &peer);
        let cost = cost_of(target, translated.usage.as_ref());
        let mut body = translated.body;
        // Formatted once, for the body and the header alike.
        let cost_text = cost.map(format_cost);
        if let Some(text) = &cost_text {
            if let Some(with_cost) = insert_usage_cost_at(&body, translated.usage_end, text) {
                body = Bytes::from(with_cost);
            }
        }
        let with_cost;
        let headers: &[(&'static str, &str)] = match &cost_text {
            Some(text) => {
                with_cost = [extra[0], extra[1], extra[2], ("x-llmux-cost-usd", text)];
                &with_cost
            }
            None => &extra,
        };
        respond::json(session, 200, body, rid, headers)
            .await
            .map_err(|_| AttemptError::ClientGone)?;
        return Ok(Served {
            status: 200,
            broken: false,
            usage: translated.usage,
            ttft: None,
            cost,
        });
    }

    // Stream. The head is built and the client's socket corked now, while the provider is
    // still thinking: at the first token only the writes are left on its path. (That path
    // measured ~40 µs longer than a later token's one write, much of it code that runs once
    // per stream, from a cold cache; see docs/performance.md, sixth pass.) Nothing is
    // written before the first token, so failover stays possible, and an empty cork sends
    // nothing when it is dropped.
    let stream_extra = [extra[0], extra[1], extra[2], ("cache-control", "no-cache")];
    let mut head = respond::header(200, "text/event-stream; charset=utf-8", rid, &stream_extra)
        .map_err(|_| AttemptError::ClientGone)?;
    let _ = head.insert_header("transfer-encoding", HeaderValue::from_static("chunked"));
    // Pingora sends a stream's head on its own: corked, the head and the first event reach
    // the client in one segment, and the first token no longer waits behind a send.
    let cork = session
        .as_http1()
        .and_then(|h1| Cork::new(h1.stream().id()));
    // Read until the translator has the first bytes for the client.
    let mut translator = provider.adapter.stream_translator(req, &target.model);
    let mut tagger = CostTagger { target, cost: None };
    let mut out = BytesMut::new();
    let mut ended = false;
    up.set_read_timeout(Some(provider.timeouts.idle.0));
    while out.is_empty() && !ended {
        let chunk = within(attempt_deadline, up.read_response_body())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| pingora_failure(name, &e))?;
        match chunk {
            Some(chunk) => translator.feed(&chunk, &mut out)?,
            None => {
                translator.finish(&mut out)?;
                ended = true;
            }
        }
    }
    let ttft = sent_at.elapsed();
    tagger.tag(translator.as_ref(), &mut out);
    session
        .write_response_header(Box::new(head))
        .await
        .map_err(|_| AttemptError::ClientGone)?;
    session
        .write_response_body(out.split().freeze(), ended)
        .await
        .map_err(|_| AttemptError::ClientGone)?;
    drop(cork);
    let clean_end = ended
        || pump(
            session,
            &mut up,
            translator.as_mut(),
            &mut tagger,
            provider.timeouts.idle.0,
            deadline,
            attempts,
        )
        .await?;
    if clean_end {
        release(state, up, &peer);
    }
    let usage = translator.usage();
    Ok(Served {
        status: 200,
        broken: !clean_end,
        cost: tagger.cost.or_else(|| cost_of(target, usage.as_ref())),
        usage,
        ttft: Some(ttft),
    })
}

/// USD for a served request, when both the price and the usage are known.
fn cost_of(target: &Target, usage: Option<&Usage>) -> Option<f64> {
    let price = target.price.as_deref()?;
    Some(crate::pricing::cost(price, &usage?.token_counts(), 0))
}

/// `"usage":{` in translated stream bytes.
static USAGE_OBJECT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\":{"));

/// Writes `cost_usd` into the stream's usage chunk when it goes by.
struct CostTagger<'a> {
    target: &'a Target,
    cost: Option<f64>,
}

impl CostTagger<'_> {
    fn tag(&mut self, translator: &dyn StreamTranslator, out: &mut BytesMut) {
        if self.cost.is_some() || out.is_empty() || self.target.price.is_none() {
            return;
        }
        // Most chunks carry no usage: look for it in the bytes before asking the translator
        // for its usage (a clone).
        let Some(at) = USAGE_OBJECT.find(out) else {
            return;
        };
        let Some(usage) = translator.usage() else {
            return;
        };
        let Some(cost) = cost_of(self.target, Some(&usage)) else {
            return;
        };
        // The event holding it: from the `data: ` before it to the blank line after it.
        let start = memchr::memmem::rfind(&out[..at], b"data: ").map_or(0, |i| i + 6);
        let end = memchr::memmem::find(&out[at..], b"\n\n").map_or(out.len(), |i| at + i);
        if let Some(json) = insert_usage_cost(&out[start..end], &format_cost(cost)) {
            let mut rebuilt = BytesMut::with_capacity(out.len() + 32);
            rebuilt.extend_from_slice(&out[..start]);
            rebuilt.extend_from_slice(&json);
            rebuilt.extend_from_slice(&out[end..]);
            *out = rebuilt;
            self.cost = Some(cost);
        }
    }
}

/// Forwards the rest of an accepted stream. Failures now go to the client as a final error
/// event followed by `[DONE]`. Returns whether the upstream connection ended cleanly.
async fn pump(
    session: &mut Session,
    up: &mut HttpSession,
    translator: &mut dyn StreamTranslator,
    tagger: &mut CostTagger<'_>,
    idle: Duration,
    deadline: Instant,
    attempts: u32,
) -> Result<bool, AttemptError> {
    let mut out = BytesMut::new();
    loop {
        let read = within(deadline, up.read_response_body()).await;
        let failure = match read {
            Ok(Ok(Some(chunk))) => match translator.feed(&chunk, &mut out) {
                Ok(()) => {
                    tagger.tag(translator, &mut out);
                    if !out.is_empty() {
                        session
                            .write_response_body(out.split().freeze(), false)
                            .await
                            .map_err(|_| AttemptError::ClientGone)?;
                    }
                    continue;
                }
                Err(f) => GatewayError::Upstream {
                    failure: f,
                    attempts,
                },
            },
            Ok(Ok(None)) => match translator.finish(&mut out) {
                Ok(()) => {
                    tagger.tag(translator, &mut out);
                    session
                        .write_response_body(out.split().freeze(), true)
                        .await
                        .map_err(|_| AttemptError::ClientGone)?;
                    return Ok(true);
                }
                Err(f) => GatewayError::Upstream {
                    failure: f,
                    attempts,
                },
            },
            Ok(Err(e)) if matches!(e.etype(), ErrorType::ReadTimedout) => GatewayError::Timeout {
                message: format!(
                    "The provider sent nothing for {idle:?} in the middle of the stream"
                ),
            },
            Ok(Err(e)) => GatewayError::Upstream {
                failure: pingora_failure("upstream", &e),
                attempts,
            },
            Err(_) => GatewayError::Timeout {
                message: "The request deadline passed in the middle of the stream".into(),
            },
        };
        // Whatever was translated before the failure still goes out first.
        crate::providers::sse::data_event(&mut out, failure.to_json().to_string().as_bytes());
        out.extend_from_slice(crate::providers::sse::DONE);
        session
            .write_response_body(out.split().freeze(), true)
            .await
            .map_err(|_| AttemptError::ClientGone)?;
        return Ok(false);
    }
}

/// `fut`, bounded by `deadline`, on Pingora's timer wheel (10 ms buckets shared by every
/// request, a timer registered only when `fut` has to wait) rather than tokio's: a tokio timer
/// earlier than every pending one re-arms the driver through its eventfd, an extra `write` and
/// wake-up on every request (measured at c=1: one per request, ~15 % of the CPU).
fn within<F: Future>(
    deadline: Instant,
    fut: F,
) -> impl Future<Output = Result<F::Output, pingora::time::Elapsed>> {
    pingora::time::timeout(deadline.saturating_duration_since(Instant::now()), fut)
}

/// Which connections a caller takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    /// The shared keep-alive pool: user requests.
    Pooled,
    /// Always a new one, outside the pool, never reused: health probes (see `probe.rs`).
    Fresh,
}

/// Pool key of fresh connections: nothing is ever released under it, so a lookup never hits.
const FRESH_GROUP: u64 = u64::from_be_bytes(*b"llmuxnew");

/// Connects (or reuses a pooled connection), sends the request and reads the response
/// header. A pooled connection the server already closed is retried on a fresh one.
pub(crate) async fn open(
    state: &GatewayState,
    target: &Target,
    upstream_req: &UpstreamRequest,
    connection: Connection,
) -> Result<(HttpSession, HttpPeer), UpstreamFailure> {
    let provider = &target.provider;
    let name = provider.name.as_str();
    let addr = state
        .resolver
        .resolve(&provider.base.host, provider.base.port)
        .await
        .map_err(|e| UpstreamFailure::new(name, FailureKind::Connect, e))?;
    let mut peer = HttpPeer::new(addr, provider.base.tls, provider.base.host.clone());
    let t = &provider.timeouts;
    peer.options.connection_timeout = Some(t.connect.0);
    peer.options.total_connection_timeout = Some(t.connect.0);
    peer.options.idle_timeout = Some(POOL_IDLE);
    if connection == Connection::Fresh {
        peer.group_key = FRESH_GROUP;
    }
    let mut tries = 0;
    loop {
        tries += 1;
        let pooled = match connection {
            Connection::Pooled => state.connector.reused_http_session(&peer).await,
            Connection::Fresh => None,
        };
        let (up, reused) = match pooled {
            Some(up) => (up, true),
            // Boxed: Pingora's connect future (TCP, TLS) is ~9 KB, which every request's
            // future would otherwise carry and copy, though most reuse a pooled connection.
            None => Box::pin(state.connector.get_http_session(&peer))
                .await
                .map_err(|e| connect_failure(name, &e))?,
        };
        let mut up = HttpSession::H1(up);
        up.set_write_timeout(Some(t.idle.0));
        up.set_read_timeout(Some(t.first_byte.0));
        match exchange(&mut up, provider.base.host_header(), upstream_req).await {
            Ok(()) => return Ok((up, peer)),
            Err(e) if reused && tries < 3 && !matches!(e.etype(), ErrorType::ReadTimedout) => {
                log::debug!("pooled connection to {name} was stale ({e}); retrying on a new one");
            }
            Err(e) => return Err(pingora_failure(name, &e)),
        }
    }
}

async fn exchange(up: &mut HttpSession, host: String, r: &UpstreamRequest) -> pingora::Result<()> {
    // Pingora flushes the head before the body is written: without the cork they would
    // leave as two segments, each a transmit here and a wake-up at the provider.
    let cork = match r.body.is_empty() {
        true => None,
        false => up.as_http1().and_then(|h1| Cork::new(h1.stream().id())),
    };
    let mut head = RequestHeader::build(r.method, r.path.as_bytes(), Some(r.headers.len() + 4))?;
    head.insert_header("host", host)?;
    head.insert_header(
        "user-agent",
        HeaderValue::from_static(concat!("llmux/", env!("CARGO_PKG_VERSION"))),
    )?;
    for (k, v) in &r.headers {
        head.insert_header(k.clone(), v.as_str())?;
    }
    if r.method != "GET" || !r.body.is_empty() {
        head.insert_header("content-length", itoa::Buffer::new().format(r.body.len()))?;
    }
    up.write_request_header(Box::new(head)).await?;
    if !r.body.is_empty() {
        up.write_request_body(r.body.clone(), true).await?;
    }
    up.finish_request_body().await?;
    drop(cork);
    up.read_response_header().await
}

/// Holds a TCP socket's writes in the kernel (`TCP_CORK`) until dropped, so a message's head
/// and body go out together in one segment: one transmit here, one wake-up at the peer.
/// Best effort: on a socket that is not TCP nothing changes.
struct Cork(std::os::fd::RawFd);

impl Cork {
    fn new(fd: std::os::fd::RawFd) -> Option<Cork> {
        set_cork(fd, true).then_some(Cork(fd))
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        // Uncorking sends what is queued at once.
        set_cork(self.0, false);
    }
}

fn set_cork(fd: std::os::fd::RawFd, on: bool) -> bool {
    let value: libc::c_int = on.into();
    // SAFETY: `fd` is the open socket of the session that outlives the `Cork`; the option value
    // is a live `c_int` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Reads a whole body with a per-read idle timeout and a size cap.
pub(crate) async fn read_all(
    up: &mut HttpSession,
    idle: Duration,
    cap: usize,
    provider: &str,
) -> Result<Bytes, UpstreamFailure> {
    up.set_read_timeout(Some(idle));
    let mut buf = BytesMut::new();
    while let Some(chunk) = up
        .read_response_body()
        .await
        .map_err(|e| pingora_failure(provider, &e))?
    {
        if buf.len() + chunk.len() > cap {
            return Err(UpstreamFailure::new(
                provider,
                FailureKind::Protocol,
                format!("the provider's response is larger than {cap} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Returns a fully read connection to the pool (anything else is closed on drop).
///
/// Not `async`: Pingora's release never waits for a connection it keeps alive (only closing
/// one can), yet its future is ~2 KB, which every request's future would carry and copy into
/// its box. It is polled once here; a release that would wait closes the connection instead.
pub(crate) fn release(state: &GatewayState, mut up: HttpSession, peer: &HttpPeer) {
    if !up.response_done() {
        return;
    }
    // `open` only makes HTTP/1.1 sessions.
    if let HttpSession::H1(h1) = up {
        poll_once(
            state
                .connector
                .release_http_session(h1, peer, Some(POOL_IDLE)),
        );
    }
}

/// Polls `fut` once; `None` (and `fut` dropped) if it is not ready at once.
fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let fut = std::pin::pin!(fut);
    match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

fn connect_failure(provider: &str, e: &pingora::Error) -> UpstreamFailure {
    let kind = match e.etype() {
        ErrorType::ConnectTimedout => FailureKind::Timeout,
        _ => FailureKind::Connect,
    };
    UpstreamFailure::new(provider, kind, format!("could not connect: {e}"))
}

fn pingora_failure(provider: &str, e: &pingora::Error) -> UpstreamFailure {
    let kind = match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout => {
            FailureKind::Timeout
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure => FailureKind::Connect,
        _ => FailureKind::Protocol,
    };
    UpstreamFailure::new(provider, kind, format!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_cork_holds_small_writes_until_it_is_dropped() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // As Pingora's upstream sockets are.
        sender.set_nodelay(true).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        receiver.set_nonblocking(true).unwrap();

        let cork = Cork::new(sender.as_raw_fd()).expect("a TCP socket takes TCP_CORK");
        sender.write_all(b"head ").unwrap();
        sender.write_all(b"body").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut buf = [0u8; 64];
        let held = receiver.read(&mut buf).map_err(|e| e.kind());
        assert_eq!(
            held,
            Err(ErrorKind::WouldBlock),
            "nothing leaves while corked"
        );

        drop(cork);
        receiver.set_nonblocking(false).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = receiver.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"head body", "both writes arrive as one segment");
    }

    #[test]
    fn a_socket_that_is_not_tcp_is_left_alone() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Cork::new(a.as_raw_fd()).is_none());
    }

    #[test]
    fn poll_once_returns_what_is_ready_and_drops_what_would_wait() {
        assert_eq!(poll_once(async { 7 }), Some(7));
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Flag(dropped.clone());
        let waits = async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        };
        assert_eq!(poll_once(waits), None);
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "the pending future is dropped"
        );
    }
}
