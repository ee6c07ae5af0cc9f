//! Active health probes: a background service that asks every endpoint, on
//! `health_checks.interval`, a question that costs no tokens (by default the adapter's
//! model-list or model-get request; `probe: {method, path}` overrides it). Results feed the
//! same endpoint state the breaker uses, so an endpoint that is down is skipped before any
//! user request finds out.
//!
//! A probe opens a fresh connection and closes it, never touching the pool (which also makes
//! the probe test connecting, not only answering). The prober is a background service
//! with its own runtime, and a socket stays registered with the runtime that opened it: a
//! request that reused a probe's connection would have each of its reads and writes woken
//! through the prober's thread and handed back to a worker, a context switch per I/O event
//! on the sidecar's one core (measured: 600 a second at 8 k req/s, 10 % of the CPU).

use super::attempt::{open, read_all, Connection};
use super::GatewayState;
use crate::fleet::ProbeTurn;
use crate::providers::UpstreamRequest;
use crate::routing::{RoutingTable, Target};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// Longest a probe may take, whatever the provider's own timeouts.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The probe service.
pub struct Prober {
    pub state: Arc<GatewayState>,
}

/// The probe request for one endpoint.
fn probe_request(target: &Target) -> UpstreamRequest {
    let mut req = target.provider.adapter.probe_request(&target.model);
    if let Some(p) = &target.provider.probe {
        req.method = match p.method.to_ascii_uppercase().as_str() {
            "HEAD" => "HEAD",
            "POST" => "POST",
            _ => "GET",
        };
        req.path = if p.path.starts_with('/') {
            p.path.clone()
        } else {
            format!("/{}", p.path)
        };
    }
    req
}

/// Probes one endpoint once: true when it answered 2xx. A 429 says the endpoint is up but
/// busy, so it is not counted either way (`None`). The connection is new and is closed
/// afterwards (see the module doc).
async fn probe_once(state: &GatewayState, target: &Target) -> Option<bool> {
    let req = probe_request(target);
    let result = tokio::time::timeout(PROBE_TIMEOUT, async {
        let (mut up, _peer) = open(state, target, &req, Connection::Fresh)
            .await
            .map_err(|_| ())?;
        let status = up.response_header().map_or(0, |h| h.status.as_u16());
        let _ = read_all(
            &mut up,
            target.provider.timeouts.idle.0,
            1 << 20,
            &target.provider.name,
        )
        .await;
        up.shutdown().await;
        Ok::<u16, ()>(status)
    })
    .await;
    match result {
        Ok(Ok(429)) => None,
        Ok(Ok(status)) => Some((200..300).contains(&status)),
        _ => Some(false),
    }
}

/// One round over every endpoint of the table, concurrently.
pub async fn probe_all(state: &Arc<GatewayState>, table: &RoutingTable) {
    let mut set = tokio::task::JoinSet::new();
    for endpoint in &table.endpoints {
        let Some(provider) = table.providers.get(&endpoint.provider) else {
            continue;
        };
        let target = Target {
            provider: provider.clone(),
            model: endpoint.model.clone(),
            weight: 1,
            endpoint: endpoint.clone(),
            price: None,
        };
        let state = state.clone();
        let interval = table.health_interval;
        set.spawn(async move {
            // With a fleet, one replica probes each endpoint per interval; the others
            // take its verdict from the shared state sync.
            let turn = match &state.fleet {
                Some(fleet) => fleet.probe_turn(&target.endpoint, interval).await,
                None => ProbeTurn::Alone,
            };
            if turn == ProbeTurn::Follow {
                return;
            }
            if let Some(ok) = probe_once(&state, &target).await {
                target.endpoint.record_probe(ok);
                if let (ProbeTurn::Lead, Some(fleet)) = (turn, &state.fleet) {
                    fleet.publish_probe(&target.endpoint, ok, interval).await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let table = self.state.table.load_full();
            let interval = table.health_interval.max(Duration::from_millis(50));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = probe_all(&self.state, &table) => {}
            }
            drop(table);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
