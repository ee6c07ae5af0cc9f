//! The Pingora glue: one handler that answers every request itself.
//!
//! Pingora's own retry path replays at most 64 KiB of request body, and prompts are larger,
//! so llmux reads the body itself, runs its own attempt loop over Pingora's pooled
//! `Connector`, and writes the response. This module only routes paths and frames
//! responses; the attempt loop lives in [`attempt`], the Pingora application in [`app`].

pub mod app;
mod attempt;
pub mod probe;
pub(crate) mod respond;

use crate::dns::Resolver;
use crate::routing::RoutingTable;
use crate::types::{ChatRequest, GatewayError};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::v1::Connector;
use pingora::protocols::http::ServerSession as Session;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use respond::request_id;

/// State shared by every request: the routing snapshot and the upstream machinery.
pub struct GatewayState {
    /// The current routing table; replaced whole on reload.
    pub table: ArcSwap<RoutingTable>,
    /// Pingora's pooled upstream connector (keep-alive, TLS). HTTP/1.1 only, as every
    /// provider is reached: its pool lookup is a small future of its own, so the request
    /// path carries Pingora's large connect future only when it has to connect.
    pub connector: Connector,
    pub resolver: Resolver,
    /// Set when SIGTERM arrives: `/readyz` fails so the load balancer stops sending traffic.
    pub draining: AtomicBool,
    /// Requests being served now, so shutdown can wait for them.
    pub in_flight: AtomicUsize,
    /// Request and attempt counters for `/metrics`.
    pub metrics: crate::telemetry::Metrics,
    /// Spend and free-tier usage; outlives reloads.
    pub ledger: crate::budget::Ledger,
    /// The OTLP exporter, when `telemetry.otlp_endpoint` is set (fixed at start).
    pub otlp: Option<Arc<crate::otlp::Exporter>>,
    /// State shared with the other replicas, with `state.backend: redis` (fixed at start).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl GatewayState {
    /// New state around a first routing table.
    pub fn new(table: RoutingTable, connector: Connector) -> Self {
        GatewayState {
            table: ArcSwap::from_pointee(table),
            connector,
            resolver: Resolver::default(),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            metrics: Default::default(),
            ledger: Default::default(),
            otlp: None,
            fleet: None,
        }
    }
}

/// The client-facing proxy.
pub struct Gateway {
    pub state: Arc<GatewayState>,
}

/// Counts a request as in flight for as long as it is alive.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl app::Handler for Gateway {
    async fn handle(&self, session: &mut Session) -> pingora::Result<()> {
        let _guard = InFlight::enter(&self.state.in_flight);
        self.route(session).await
    }
}

impl Gateway {
    async fn route(&self, session: &mut Session) -> pingora::Result<()> {
        let started = Instant::now();
        let rid = request_id(session);
        let method = session.req_header().method.as_str().to_owned();
        let path = session.req_header().uri.path().to_owned();
        let table = self.state.table.load_full();
        let result = match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => {
                return respond::json(
                    session,
                    200,
                    Bytes::from_static(b"{\"status\":\"ok\"}"),
                    &rid,
                    &[],
                )
                .await
            }
            ("GET", "/readyz") => return self.readyz(session, &table, &rid).await,
            ("GET", "/v1/models") => match table.authenticate(bearer(session)) {
                Ok(_) => return respond::json(session, 200, models_body(&table), &rid, &[]).await,
                Err(e) => Err(e),
            },
            ("POST", "/v1/chat/completions") => self.chat(session, &table, &rid, started).await,
            (_, "/healthz" | "/readyz" | "/v1/models") => Err(GatewayError::MethodNotAllowed {
                method,
                path: path.clone(),
                allow: "GET",
            }),
            (_, "/v1/chat/completions") => Err(GatewayError::MethodNotAllowed {
                method,
                path: path.clone(),
                allow: "POST",
            }),
            _ => Err(GatewayError::NotFound { path: path.clone() }),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                log::info!(
                    "request_id={rid} path={path} status={} code={} duration_ms={}",
                    e.status(),
                    e.code(),
                    started.elapsed().as_millis()
                );
                respond::error(session, &e, &rid, &[]).await
            }
        }
    }

    async fn readyz(
        &self,
        session: &mut Session,
        table: &RoutingTable,
        rid: &str,
    ) -> pingora::Result<()> {
        // Ready: config loaded, not draining, and at least one endpoint not open/out.
        let any_endpoint = if table.endpoints.is_empty() {
            !table.providers.is_empty()
        } else {
            // An endpoint counts when routing may use it and its provider can sign now.
            table.endpoints.iter().any(|e| {
                e.unavailable_for().is_none()
                    && table
                        .providers
                        .get(&e.provider)
                        .is_some_and(|p| p.adapter.ready())
            })
        };
        let ready = !self.state.draining.load(Ordering::Acquire) && any_endpoint;
        let (status, word) = if ready {
            (200, "ready")
        } else {
            (503, "not_ready")
        };
        // Shared state is detail, not a condition: replicas serve on local state without it.
        let body = match &self.state.fleet {
            None => Bytes::from(format!("{{\"status\":\"{word}\"}}")),
            Some(f) => Bytes::from(
                serde_json::json!({ "status": word, "state": f.status_json() }).to_string(),
            ),
        };
        respond::json(session, status, body, rid, &[]).await
    }

    /// `POST /v1/chat/completions`: authenticate, read and parse the body once, plan, attempt.
    async fn chat(
        &self,
        session: &mut Session,
        table: &Arc<RoutingTable>,
        rid: &str,
        started: Instant,
    ) -> Result<(), GatewayError> {
        let key_name = table.authenticate(bearer(session))?.map(str::to_owned);
        if let Some(name) = &key_name {
            if let Some(budget) = table.key_budgets.get(name) {
                self.state
                    .ledger
                    .check_budget(&format!("key:{name}"), budget)
                    .map_err(|l| GatewayError::BudgetExceeded {
                        message: format!("Budget exceeded: {}", l.reason()),
                    })?;
            }
        }
        let body = read_body(session, table.limits.max_body_bytes).await?;
        let request = parse_request(&body)?;
        drop(body);
        let pinned = session
            .req_header()
            .headers
            .get("x-llmux-provider")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let expected_output = request
            .max_completion_tokens
            .or(request.max_tokens)
            .unwrap_or(DEFAULT_EXPECTED_OUTPUT)
            .min(DEFAULT_EXPECTED_OUTPUT * 4);
        let plan = table.plan(
            &request.model,
            pinned.as_deref(),
            request.estimate_prompt_tokens(),
            expected_output,
        )?;
        let traceparent = session
            .req_header()
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ctx = attempt::RequestCtx {
            rid,
            started,
            key_name: key_name.as_deref(),
            traceparent: traceparent.as_deref(),
        };
        // Boxed, so the future `async_trait` boxes per request (`app::App`) stays small. The
        // attempt loop's own future (~4.5 KB; Pingora's connect future is boxed apart, only
        // when a request has to connect) is moved into its box once per request.
        Box::pin(attempt::run(
            &self.state,
            session,
            table,
            &request,
            plan,
            &ctx,
        ))
        .await
    }
}

/// Output tokens `lowest_cost` assumes when the request sets no limit.
const DEFAULT_EXPECTED_OUTPUT: u64 = 500;

/// The bearer token of the request, if any.
fn bearer(session: &Session) -> Option<&str> {
    let v = session
        .req_header()
        .headers
        .get("authorization")?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Reads the whole request body, refusing (without buffering) more than `limit` bytes.
async fn read_body(session: &mut Session, limit: u64) -> Result<Bytes, GatewayError> {
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(refuse_body(session, limit).await);
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() as u64 + chunk.len() as u64 > limit {
                    return Err(refuse_body(session, limit).await);
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                session.set_keepalive(None);
                return Err(GatewayError::invalid(
                    format!("could not read the request body: {e}"),
                    "",
                ));
            }
        }
    }
}

/// Most bytes of an oversized body read and discarded so the client, still sending, gets
/// to read the 413 instead of a connection reset. Beyond it the connection is just closed.
const DRAIN_LIMIT: usize = 32 * 1024 * 1024;

/// Discards the rest of an oversized body (bounded in bytes and time) and marks the
/// connection to close after the 413.
async fn refuse_body(session: &mut Session, limit: u64) -> GatewayError {
    session.set_keepalive(None);
    let drain = async {
        let mut drained = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            drained += chunk.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    GatewayError::RequestTooLarge { limit }
}

/// Parses the body into the typed request; errors name the JSON path that is wrong.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::invalid(
            "The request body is empty; expected a JSON object",
            "",
        ));
    }
    // The plain parse is about twice as fast as one that tracks the JSON path; the path is
    // only needed to name the wrong field, so only a body that fails is parsed again.
    // Like the tracked parse below, trailing bytes after the object are not checked.
    let de = &mut serde_json::Deserializer::from_slice(body);
    let request = match <ChatRequest as serde::Deserialize>::deserialize(de) {
        Ok(r) => r,
        Err(_) => return Err(parse_error(body)),
    };
    request.validate()?;
    Ok(request)
}

/// The error for a body that did not parse, naming the JSON path of the wrong field.
#[cold]
fn parse_error(body: &[u8]) -> GatewayError {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let e = match serde_path_to_error::deserialize::<_, ChatRequest>(de) {
        Ok(_) => {
            // Unreachable: the same bytes failed the plain parse.
            return GatewayError::invalid("Invalid request body", "");
        }
        Err(e) => e,
    };
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        GatewayError::invalid(format!("The request body is not valid JSON: {inner}"), "")
    } else if path == "." {
        GatewayError::invalid(format!("Invalid request body: {inner}"), "")
    } else {
        GatewayError::invalid(format!("Invalid value at `{path}`: {inner}"), &path)
    }
}

/// `GET /v1/models` in OpenAI's list shape.
fn models_body(table: &RoutingTable) -> Bytes {
    let data: Vec<serde_json::Value> = table
        .model_ids
        .iter()
        .map(|id| {
            let owned_by = id.split_once('/').map_or("llmux", |(p, _)| p);
            serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by})
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_are_invalid_request_with_param() {
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!((e.status(), e.code().as_str()), (400, "invalid_request"));
        assert!(e.to_string().contains("not valid JSON"));
        let e = parse_request(br#"{"model":"m"}"#).unwrap_err();
        assert!(e.to_string().contains("messages"), "{e}");
        let e = parse_request(br#"{"model":"m","messages":[{"role":"user","content":1}]}"#)
            .unwrap_err();
        assert_eq!(e.param().as_deref(), Some("messages[0].content"));
        let e = parse_request(br#"{"model":3,"messages":[]}"#).unwrap_err();
        assert_eq!(e.param().as_deref(), Some("model"));
        let e = parse_request(b"[1,2]").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(parse_request(b"").is_err());
        assert!(
            parse_request(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).is_ok()
        );
    }
}
