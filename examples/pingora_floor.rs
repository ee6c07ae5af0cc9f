//! The floor llmux is measured against: a bare Pingora 0.9 hop doing only what any
//! Pingora-based LLM gateway must do, and nothing llmux adds (routing, breakers, budgets,
//! translation, metrics, logs).
//!
//! ```sh
//! cargo run --release --example pingora_floor -- --listen 127.0.0.1:18081 --upstream 127.0.0.1:18090
//! ```
//!
//! Per `POST /v1/chat/completions`, like llmux:
//! * one thread, `work_stealing: false` (the fastest Pingora setting on one core;
//!   `--work-stealing` switches to Pingora's default for comparison);
//! * the body is read in `request_filter`, parsed once into a `serde_json::Value`, the model
//!   replaced, serialised again;
//! * the upstream is called through Pingora's pooled `Connector` (keep-alive pool);
//! * a non-stream answer is read whole, parsed once and serialised once; a stream is
//!   forwarded chunk by chunk, untouched.
//!
//! `GET /readyz` answers 200 so start-to-ready can be measured the same way as for llmux.
//! Used by `benches/load/run.sh`; not part of llmux.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::time::Duration;

struct Floor {
    connector: Connector,
    upstream: SocketAddr,
    host: String,
    model: String,
}

type Res<T> = pingora::Result<T>;

fn fail(status: u16, why: &'static str) -> Box<pingora::Error> {
    pingora::Error::explain(pingora::ErrorType::HTTPStatus(status), why)
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Res<Box<HttpPeer>> {
        Err(fail(500, "answered in request_filter"))
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Res<bool> {
        let head = session.req_header();
        let is_chat = head.method == "POST" && head.uri.path() == "/v1/chat/completions";
        if !is_chat {
            let (status, body): (u16, &'static [u8]) = match head.uri.path() {
                "/readyz" | "/healthz" => (200, b"{\"status\":\"ready\"}"),
                _ => (404, b"{\"error\":\"not found\"}"),
            };
            respond(
                session,
                status,
                "application/json",
                Bytes::from_static(body),
            )
            .await?;
            return Ok(true);
        }
        self.chat(session).await?;
        Ok(true)
    }
}

impl Floor {
    async fn chat(&self, session: &mut Session) -> Res<()> {
        // 1. Read the whole body, parse once, change the model, serialise once.
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
        }
        let Ok(mut req) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return respond(session, 400, "application/json", Bytes::from_static(b"{}")).await;
        };
        let stream = req.get("stream").and_then(|v| v.as_bool()).unwrap_or(false);
        req["model"] = serde_json::Value::String(self.model.clone());
        let out = Bytes::from(serde_json::to_vec(&req).map_err(|_| fail(500, "serialise"))?);

        // 2. One upstream exchange over the pooled connector.
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        let (mut up, _reused) = self.connector.get_http_session(&peer).await?;
        up.set_read_timeout(Some(Duration::from_secs(30)));
        up.set_write_timeout(Some(Duration::from_secs(30)));
        let mut h = RequestHeader::build("POST", b"/v1/chat/completions", Some(4))?;
        h.insert_header("host", self.host.as_str())?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("authorization", "Bearer floor")?;
        h.insert_header("content-length", out.len().to_string())?;
        up.write_request_header(Box::new(h)).await?;
        up.write_request_body(out, true).await?;
        up.finish_request_body().await?;
        up.read_response_header().await?;
        let status = up.response_header().map_or(502, |h| h.status.as_u16());

        // 3. The answer: streams chunk by chunk; JSON parsed and serialised once.
        if stream && status == 200 {
            let mut head = ResponseHeader::build(200, Some(3))?;
            head.insert_header("content-type", "text/event-stream")?;
            head.insert_header("transfer-encoding", "chunked")?;
            session.write_response_header(Box::new(head), false).await?;
            while let Some(chunk) = up.read_response_body().await? {
                session.write_response_body(Some(chunk), false).await?;
            }
            session.write_response_body(None, true).await?;
        } else {
            let mut answer = BytesMut::new();
            while let Some(chunk) = up.read_response_body().await? {
                answer.extend_from_slice(&chunk);
            }
            let body = match serde_json::from_slice::<serde_json::Value>(&answer) {
                Ok(v) => Bytes::from(serde_json::to_vec(&v).map_err(|_| fail(500, "serialise"))?),
                Err(_) => answer.freeze(),
            };
            respond(session, status, "application/json", body).await?;
        }
        if up.response_done() {
            self.connector
                .release_http_session(up, &peer, Some(Duration::from_secs(60)))
                .await;
        }
        Ok(())
    }
}

async fn respond(session: &mut Session, status: u16, ctype: &str, body: Bytes) -> Res<()> {
    let mut head = ResponseHeader::build(status, Some(2))?;
    head.insert_header("content-type", ctype)?;
    head.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: pingora_floor --listen ADDR --upstream IP:PORT [--model NAME] [--work-stealing]";
    let (Some(listen), Some(upstream)) = (arg(&args, "--listen"), arg(&args, "--upstream")) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|e| {
        eprintln!("--upstream {upstream}: {e}\n{usage}");
        std::process::exit(2);
    });
    let model = arg(&args, "--model").unwrap_or_else(|| "gpt-4o-mini".to_owned());
    // `--work-stealing` runs Pingora's default runtime (what llmux runs today), to measure
    // what `work_stealing: false` buys.
    let work_stealing = args.iter().any(|a| a == "--work-stealing");

    let conf = ServerConf {
        threads: 1,
        work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let floor = Floor {
        connector,
        upstream,
        host: upstream.to_string(),
        model,
    };
    let mut proxy = http_proxy_service(&server.configuration, floor);
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
