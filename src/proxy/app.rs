//! The HTTP application Pingora runs for each listener: read a request head, hand the session
//! to a [`Handler`], give the connection back for keep-alive.
//!
//! llmux answers every request itself (see the module above), so Pingora's `HttpProxy` was
//! only a shell around `request_filter`, and its request future (~11.6 KB, nearly all of it
//! the `proxy_to_upstream` path llmux never takes) was allocated and copied into a box for
//! every request: ~13.5 k instructions of `memcpy` per request, the same in the bare Pingora
//! hop it is measured against. This app does what `HttpProxy` did on the path llmux uses,
//! and nothing else; its per-request future is the handler's own (docs/performance.md,
//! seventh pass).

use super::respond;
use crate::types::GatewayError;
use async_trait::async_trait;
use http::Method;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use std::future::Future;
use std::sync::Arc;

/// Answers one request on a session whose head has been read.
pub trait Handler: Send + Sync + 'static {
    /// Writes the whole response. An error means the client could not be written to: the
    /// connection is closed rather than reused.
    fn handle<'a>(
        &'a self,
        session: &'a mut ServerSession,
    ) -> impl Future<Output = pingora::Result<()>> + Send + 'a;
}

/// A [`Handler`] as a Pingora HTTP application.
///
/// Connections idle between requests need no shutdown signal of their own: Pingora's
/// runtime shutdown drops their tasks, after llmux has drained the requests in flight.
pub struct App<H> {
    handler: H,
}

/// A listening service (add listeners with `add_tcp`) that runs `handler` for each request.
pub fn service<H: Handler>(name: &str, handler: H) -> Service<App<H>> {
    Service::new(name.to_owned(), App { handler })
}

#[async_trait]
impl<H: Handler> HttpServerApp for App<H> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            // The connection closed before a request arrived (a kept-alive one, usually).
            Ok(false) => return None,
            Err(e) => {
                // A malformed head gets a 400; anything else is a broken connection.
                if matches!(e.etype(), pingora::ErrorType::InvalidHTTPHeader) {
                    let err =
                        GatewayError::invalid("The HTTP request head could not be parsed", "");
                    refuse(&mut session, &err).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        // CONNECT changes how the connection is framed; nothing here tunnels.
        if session.req_header().method == Method::CONNECT {
            let err = GatewayError::MethodNotAllowed {
                method: "CONNECT".into(),
                path: session.req_header().uri.to_string(),
                allow: "GET, POST",
            };
            refuse(&mut session, &err).await;
            session.shutdown().await;
            return None;
        }
        if self.handler.handle(&mut session).await.is_err() {
            session.shutdown().await;
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|stream| ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

/// Answers a request the handler never sees with an OpenAI-format error, then the connection
/// closes. Best effort: the client may already be gone.
async fn refuse(session: &mut ServerSession, err: &GatewayError) {
    let rid = respond::new_request_id();
    let _ = respond::error(session, err, &rid, &[("connection", "close")]).await;
}
