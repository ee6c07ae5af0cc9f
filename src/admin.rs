//! The admin listener (spec §4): endpoint state, drain/undrain, reload and `/metrics`.
//! It is a separate Pingora service on `server.admin_listen`, guarded by
//! `server.admin_token`, so nothing here is reachable from the client port.

use crate::health::Endpoint;
use crate::proxy::{request_id, GatewayState};
use crate::routing::constant_time_eq;
use crate::types::GatewayError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Reloads the configuration on demand (shared with the file watcher and SIGHUP).
pub trait Reload: Send + Sync {
    /// Loads, validates and swaps in the config file; the error lists what was wrong.
    fn reload(&self) -> Result<(), String>;
}

/// The admin service.
pub struct Admin {
    pub state: Arc<GatewayState>,
    pub reloader: Arc<dyn Reload>,
}

impl crate::proxy::app::Handler for Admin {
    async fn handle(&self, session: &mut Session) -> pingora::Result<()> {
        let rid = request_id(session);
        let (status, content_type, body) = match self.answer(session) {
            Ok((status, content_type, body)) => (status, content_type, body),
            Err(e) => (e.status(), "application/json", e.body()),
        };
        let mut resp = ResponseHeader::build(status, Some(3))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("x-request-id", rid)?;
        session.write_response_header(Box::new(resp)).await?;
        session.write_response_body(body, true).await
    }
}

type Answer = (u16, &'static str, Bytes);

impl Admin {
    /// The status, content type and body for one admin request.
    fn answer(&self, session: &Session) -> Result<Answer, GatewayError> {
        let table = self.state.table.load();
        // The dashboard page and its static assets hold no data, and a browser cannot send a
        // bearer with a navigation: they are public. The page sends the token the user types
        // with every `/admin/*` call (`/admin/history` is its only data source).
        if session.req_header().method == http::Method::GET {
            if let Some((content_type, body)) =
                crate::dashboard::asset(session.req_header().uri.path())
            {
                return Ok((200, content_type, Bytes::from_static(body)));
            }
            // Whether the page must ask for a token before its first call (so it never
            // polls into a 401). Says nothing about the token itself.
            if session.req_header().uri.path() == "/dashboard/auth" {
                let required = table.admin_token.is_some();
                let body = json!({ "token_required": required }).to_string();
                return Ok((200, "application/json", Bytes::from(body)));
            }
        }
        if let Some(token) = table.admin_token.as_deref() {
            let given = session
                .req_header()
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
            if !given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes())) {
                return Err(GatewayError::InvalidApiKey);
            }
        }
        let method = session.req_header().method.as_str();
        let path = session.req_header().uri.path();
        match (method, path) {
            ("GET", "/metrics") => Ok((
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                Bytes::from({
                    let mut text = self.state.metrics.render(&table.endpoints);
                    if let Some(fleet) = &self.state.fleet {
                        fleet.render_metrics(&mut text);
                    }
                    text
                }),
            )),
            ("GET", "/admin/history") => Ok((
                200,
                "application/json",
                Bytes::from(crate::dashboard::history_json(
                    &self.state,
                    &table,
                    session.req_header().uri.query(),
                )),
            )),
            ("GET", "/admin/endpoints") => {
                let list: Vec<_> = table.endpoints.iter().map(|e| endpoint_json(e)).collect();
                Ok((
                    200,
                    "application/json",
                    Bytes::from(
                        match &self.state.fleet {
                            Some(f) => json!({ "endpoints": list, "state": f.status_json() }),
                            None => json!({ "endpoints": list, "state": {"backend": "memory"} }),
                        }
                        .to_string(),
                    ),
                ))
            }
            ("POST", "/admin/reload") => match self.reloader.reload() {
                Ok(()) => Ok((
                    200,
                    "application/json",
                    Bytes::from_static(b"{\"reloaded\":true}"),
                )),
                Err(e) => Err(GatewayError::invalid(
                    format!("config rejected, the previous config keeps serving: {e}"),
                    "",
                )),
            },
            ("POST", p) if p.starts_with("/admin/endpoints/") => {
                let rest = &p["/admin/endpoints/".len()..];
                let (rest, drain) = if let Some(r) = rest.strip_suffix("/drain") {
                    (r, true)
                } else if let Some(r) = rest.strip_suffix("/undrain") {
                    (r, false)
                } else {
                    return Err(GatewayError::NotFound { path: p.to_owned() });
                };
                let (provider, model) = rest
                    .split_once('/')
                    .ok_or_else(|| GatewayError::NotFound { path: p.to_owned() })?;
                let model = percent_decode(model);
                let endpoint = table
                    .endpoint(provider, &model)
                    .ok_or_else(|| GatewayError::NotFound { path: p.to_owned() })?;
                endpoint.set_drained(drain);
                log::warn!(
                    "endpoint {provider}/{model} {} by hand",
                    if drain { "drained" } else { "undrained" }
                );
                Ok((
                    200,
                    "application/json",
                    Bytes::from(endpoint_json(endpoint).to_string()),
                ))
            }
            (_, "/metrics" | "/admin/endpoints") => Err(GatewayError::MethodNotAllowed {
                method: method.to_owned(),
                path: path.to_owned(),
                allow: "GET",
            }),
            (_, "/admin/reload") => Err(GatewayError::MethodNotAllowed {
                method: method.to_owned(),
                path: path.to_owned(),
                allow: "POST",
            }),
            _ => Err(GatewayError::NotFound {
                path: path.to_owned(),
            }),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One endpoint as `/admin/endpoints` shows it (spec §4).
fn endpoint_json(e: &Endpoint) -> serde_json::Value {
    let requests = e.requests.load(Ordering::Relaxed);
    let errors = e.errors.load(Ordering::Relaxed);
    let half_open_at = e.half_open_at().map(crate::clock::rfc3339);
    json!({
        "provider": e.provider,
        "model": e.model,
        "region": e.region,
        "health": e.health().as_str(),
        "breaker": {"state": e.breaker_state().as_str(), "half_open_at": half_open_at},
        "drained": e.drained(),
        "breaker_opened_by_fleet": e.opened_by_fleet(),
        "requests": requests,
        "errors": errors,
        // The share of failures over the breaker's recent window; lifetime when idle.
        "latency_ms": percentiles_json(e.stats.duration_percentiles()),
        "ttft_ms": percentiles_json(e.stats.ttft_window.percentiles()),
        "tokens": {
            "input": e.stats.tokens_input.load(Ordering::Relaxed),
            "output": e.stats.tokens_output.load(Ordering::Relaxed),
            "cache_read": e.stats.tokens_cache_read.load(Ordering::Relaxed),
            "cache_write": e.stats.tokens_cache_write.load(Ordering::Relaxed),
        },
        "cost_usd": e.stats.cost_usd(),
        "cache_hit_rate": e.stats.cache_hit_rate(),
        "error_rate": e.recent_error_rate().unwrap_or(if requests == 0 { 0.0 } else { errors as f64 / requests as f64 }),
    })
}

fn percentiles_json(p: crate::stats::Percentiles) -> serde_json::Value {
    if p.samples == 0 {
        json!({"p50": null, "p95": null, "p99": null})
    } else {
        json!({"p50": p.p50, "p95": p.p95, "p99": p.p99})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes_in_model_ids() {
        assert_eq!(percent_decode("a%2Fb%3Ac"), "a/b:c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(percent_decode("é%C3%A9%"), "éé%");
    }
}
