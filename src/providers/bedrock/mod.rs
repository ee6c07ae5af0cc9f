//! AWS Bedrock Converse API (`POST /model/{modelId}/converse` and `/converse-stream`):
//! every Bedrock rule lives in this module (providers.md §8).
//!
//! * [`request`]: OpenAI -> Converse body (system blocks, strict alternation, `toolUse` /
//!   `toolResult`, `toolConfig`, `inferenceConfig`, `cachePoint`s, model-specific fields).
//! * [`response`]: Converse answer -> OpenAI; [`stream`]: the binary event stream
//!   ([`eventstream`]) -> OpenAI chunks.
//! * [`auth`]: credentials and SigV4 signing (signed in `chat_request` with the current time,
//!   over the exact body bytes and the exact `Host` the proxy sends).
//!
//! Choices a client can notice (each is also a doc comment where it is made):
//! * The model id is percent-encoded into the path (`:` -> `%3A`, `/` -> `%2F`, pitfall 28).
//! * `tool_choice: none` has no Converse form: the client's tools are left out of the
//!   request, and a history with tool blocks gets one never-called placeholder tool (Converse
//!   requires `toolConfig` then); calls to it are hidden from the answer.
//! * `response_format` (`json_object`, `json_schema`) uses a forced tool whose input is
//!   returned as `content` with `finish_reason: stop`.
//! * Remote image URLs are a 400: Converse needs bytes and llmux does not download.
//! * Converse returns no response id: ids are generated (`chatcmpl-bedrock-…`).
//! * `temperature` is clamped to Converse's 0–1; Claude gets no `top_p` next to it.
//! * `cache_control` marks become `cachePoint` blocks; `auto_cache` places them like the
//!   Anthropic adapter (tools for Claude, system, stable prefix) above the cacheable minimum.
//! * Credentials: `aws` keys, a Bedrock `api_key` (Bearer), or the AWS_* environment,
//!   including EKS web identity, whose STS credentials a background [`refresh::Refresher`]
//!   keeps in a slot the adapter reads when it signs.
//! * The health probe is signed like a request, also when `probe: {method, path}` overrides
//!   it.

pub mod auth;
pub mod eventstream;
pub mod refresh;
pub mod request;
pub mod response;
pub mod stream;

use self::auth::{Auth, CredentialSlot, Plan, Signable};
use self::request::{build_body, json_mode, Ctx};
use self::stream::BedrockStream;
use super::openai_out::{self, ChunkWriter};
use super::{Adapter, BaseUrl, StreamTranslator, TranslatedResponse, UpstreamRequest};
use crate::config::ProviderConfig;
use crate::types::{ChatRequest, ErrorDetail, FailureKind, GatewayError, UpstreamFailure};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// A path segment keeps only RFC 3986 unreserved characters; `:` and `/` in model ids and
/// ARNs must be encoded (pitfall 28).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Temporary credentials this close to expiry are not used: a request signed now must
/// still be valid when it arrives.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Headers llmux writes itself for SigV4; a configured one would break the signature.
const RESERVED_HEADERS: [&str; 5] = [
    "authorization",
    "host",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Adapter for one Bedrock provider (`kind: bedrock`).
pub struct BedrockAdapter {
    name: String,
    base: BaseUrl,
    region: String,
    auth: Auth,
    extra_headers: Vec<(String, String)>,
    drop_unsupported: bool,
    auto_cache: bool,
    /// `probe: {method, path}`, normalised as the prober sends it, so it can be signed.
    probe: Option<(&'static str, String)>,
}

impl BedrockAdapter {
    /// Builds the adapter, finding credentials in the config, then the process environment.
    /// With only a web identity, the adapter signs with the process-wide slot for it
    /// ([`refresh::shared_slot`]), which the [`refresh::Refresher`] service fills.
    pub fn new(cfg: &ProviderConfig, base: &BaseUrl) -> Result<Self, String> {
        Self::new_with_env(cfg, base, &|k| std::env::var(k).ok())
    }

    /// [`BedrockAdapter::new`] with the environment given as a lookup (tests).
    pub fn new_with_env(
        cfg: &ProviderConfig,
        base: &BaseUrl,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let api_key = cfg.api_key.as_ref().map(|k| k.expose());
        let auth = match auth::resolve(cfg.aws.as_ref(), api_key, env)
            .map_err(|e| format!("provider '{}' (bedrock): {e}", cfg.name))?
        {
            Plan::Ready(a) => a,
            Plan::WebIdentity(w) => {
                BaseUrl::parse(&w.sts_base_url()).map_err(|e| {
                    format!(
                        "provider '{}' (bedrock): AWS_ENDPOINT_URL_STS: {e}",
                        cfg.name
                    )
                })?;
                Auth::SigV4(refresh::shared_slot(&w))
            }
        };
        Self::build(cfg, base, auth, env)
    }

    /// An adapter that signs with whatever credentials `slot` holds when a request is built
    /// (what web identity uses, with the refresher's slot). Until the slot is filled (or while
    /// its credentials are expired) attempts fail, retryably, without being sent.
    pub fn with_credential_slot(
        cfg: &ProviderConfig,
        base: &BaseUrl,
        slot: CredentialSlot,
    ) -> Result<Self, String> {
        Self::build(cfg, base, Auth::SigV4(slot), &|k| std::env::var(k).ok())
    }

    fn build(
        cfg: &ProviderConfig,
        base: &BaseUrl,
        auth: Auth,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut extra_headers = Vec::with_capacity(cfg.headers.len());
        for (k, v) in &cfg.headers {
            let lower = k.to_ascii_lowercase();
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(format!(
                    "provider '{}': `{k}` is not a valid HTTP header name",
                    cfg.name
                ));
            }
            if http::HeaderValue::from_str(v).is_err() {
                return Err(format!(
                    "provider '{}': the value of header `{k}` is not a valid HTTP header value",
                    cfg.name
                ));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(format!(
                    "provider '{}': header `{k}` is written by the bedrock adapter and cannot be configured",
                    cfg.name
                ));
            }
            extra_headers.push((lower, v.clone()));
        }
        // The signing region: configured, else read from a standard endpoint host, else the
        // environment.
        let region = cfg
            .region
            .clone()
            .filter(|r| !r.is_empty())
            .or_else(|| {
                base.host
                    .strip_prefix("bedrock-runtime.")
                    .and_then(|h| h.split('.').next())
                    .filter(|r| !r.is_empty() && !r.starts_with("amazonaws"))
                    .map(str::to_owned)
            })
            .or_else(|| env("AWS_REGION").filter(|r| !r.is_empty()))
            .or_else(|| env("AWS_DEFAULT_REGION").filter(|r| !r.is_empty()));
        let region = match (region, &auth) {
            (Some(r), _) => r,
            (None, Auth::Bearer(_)) => String::new(),
            (None, Auth::SigV4(_)) => {
                return Err(format!(
                    "provider '{}' (bedrock): set `region` (SigV4 signs for one region)",
                    cfg.name
                ))
            }
        };
        Ok(BedrockAdapter {
            name: cfg.name.clone(),
            base: base.clone(),
            region,
            auth,
            extra_headers,
            drop_unsupported: cfg.drop_unsupported_params,
            auto_cache: cfg.auto_cache,
            probe: cfg
                .probe
                .as_ref()
                .map(|p| probe_override(&p.method, &p.path)),
        })
    }

    /// The Converse body for `req` sent to `model` (public so tests and tools can inspect
    /// the translation without the HTTP envelope).
    pub fn request_body(&self, req: &ChatRequest, model: &str) -> Result<Value, GatewayError> {
        let cx = Ctx {
            provider: &self.name,
            drop: self.drop_unsupported,
        };
        build_body(&cx, req, model, self.auto_cache)
    }

    /// `{base}/model/{percent-encoded model}/{operation}`.
    pub fn model_path(&self, model: &str, operation: &str) -> String {
        format!(
            "{}/model/{}/{operation}",
            self.base.path,
            utf8_percent_encode(model, SEGMENT)
        )
    }

    /// [`Adapter::chat_request`] signed at a given time (known-answer tests).
    pub fn chat_request_at(
        &self,
        req: &ChatRequest,
        model: &str,
        time: SystemTime,
    ) -> Result<UpstreamRequest, GatewayError> {
        if model.is_empty() {
            return Err(GatewayError::invalid(
                format!("provider '{}' (bedrock) needs a model id", self.name),
                "model",
            ));
        }
        let body = self.request_body(req, model)?;
        let body = serde_json::to_vec(&body).map_err(|e| GatewayError::Internal {
            message: format!("could not serialise the upstream request: {e}"),
        })?;
        let operation = if req.stream {
            "converse-stream"
        } else {
            "converse"
        };
        let path = self.model_path(model, operation);
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(self.extra_headers.iter().cloned());
        let auth_headers = self
            .authorize("POST", &path, &headers, &body, time)
            .map_err(|f| GatewayError::Upstream {
                failure: f,
                attempts: 1,
            })?;
        headers.extend(auth_headers);
        Ok(UpstreamRequest {
            method: "POST",
            path,
            headers,
            body: Bytes::from(body),
        })
    }

    /// The auth headers for one request: a bearer key, or a SigV4 signature over `headers`,
    /// the proxy's `Host` and the exact body. Missing or expired credentials fail here, as a
    /// failure nothing was sent for.
    fn authorize(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>, UpstreamFailure> {
        let unavailable = |why: String| UpstreamFailure::new(&self.name, FailureKind::Connect, why);
        match &self.auth {
            Auth::Bearer(key) => Ok(vec![("authorization".into(), format!("Bearer {key}"))]),
            Auth::SigV4(slot) => {
                let Some(creds) = slot.load_full() else {
                    return Err(unavailable(
                        "AWS credentials are not available yet (web identity not refreshed)".into(),
                    ));
                };
                if creds.expired(time, EXPIRY_MARGIN) {
                    return Err(unavailable("the AWS credentials have expired".into()));
                }
                let host = self.base.host_header();
                auth::sign(
                    &creds,
                    &Signable {
                        method,
                        host: &host,
                        path,
                        headers,
                        body,
                        region: &self.region,
                        service: auth::SERVICE,
                        time,
                        content_sha256: false,
                    },
                )
                .map_err(|e| unavailable(self.auth.scrub(&e)))
            }
        }
    }

    /// A stream translator with a fixed `created` timestamp.
    pub fn translator_at(&self, req: &ChatRequest, model: &str, created: u64) -> BedrockStream {
        self.translator_with(req, model, created, &response::completion_id())
    }

    /// A stream translator with a fixed `created` and id (golden tests compare bytes; the
    /// id is otherwise random, as Converse sends none).
    pub fn translator_with(
        &self,
        req: &ChatRequest,
        model: &str,
        created: u64,
        id: &str,
    ) -> BedrockStream {
        let writer = ChunkWriter::new(id, model, req.wants_stream_usage()).with_created(created);
        BedrockStream::new(&self.name, self.auth.clone(), writer, json_mode(req))
    }

    /// The probe signed at a given time: `ListAsyncInvokes`, or the configured `probe`.
    pub fn probe_request_at(&self, time: SystemTime) -> UpstreamRequest {
        let (method, path) = match &self.probe {
            Some((method, path)) => (*method, path.clone()),
            None => (
                "GET",
                format!("{}/async-invoke?maxResults=1", self.base.path),
            ),
        };
        let mut headers = self.extra_headers.clone();
        match self.authorize(method, &path, &headers, b"", time) {
            Ok(h) => headers.extend(h),
            // Sent unsigned: the 403 marks the endpoint down, which it is without credentials.
            Err(f) => log::debug!("provider '{}': probe not signed: {}", self.name, f.message),
        }
        UpstreamRequest {
            method,
            path,
            headers,
            body: Bytes::new(),
        }
    }
}

/// A `probe: {method, path}` override exactly as the prober sends it (`proxy::probe`: HEAD
/// and POST kept, anything else GET; the path is absolute on the provider's host). The
/// adapter signs this request, and the prober's own rewrite then changes nothing.
fn probe_override(method: &str, path: &str) -> (&'static str, String) {
    let method = match method.to_ascii_uppercase().as_str() {
        "HEAD" => "HEAD",
        "POST" => "POST",
        _ => "GET",
    };
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    (method, path)
}

impl Adapter for BedrockAdapter {
    fn ready(&self) -> bool {
        match &self.auth {
            Auth::Bearer(_) => true,
            Auth::SigV4(slot) => slot
                .load_full()
                .is_some_and(|c| !c.expired(SystemTime::now(), EXPIRY_MARGIN)),
        }
    }

    fn chat_request(
        &self,
        req: &ChatRequest,
        model: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        self.chat_request_at(req, model, SystemTime::now())
    }

    fn chat_response(
        &self,
        req: &ChatRequest,
        model: &str,
        body: &[u8],
    ) -> Result<TranslatedResponse, UpstreamFailure> {
        let (out, usage) = response::translate(&self.name, body, model, json_mode(req))?;
        Ok(out.to_response(Some(usage)))
    }

    fn stream_translator(&self, req: &ChatRequest, model: &str) -> Box<dyn StreamTranslator> {
        Box::new(self.translator_at(req, model, openai_out::now_secs()))
    }

    fn error(&self, status: u16, headers: &http::HeaderMap, body: &[u8]) -> UpstreamFailure {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| {
            json.as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        // `x-amzn-ErrorType: ThrottlingException:http://internal.amazon.com/coral/...`, or a
        // JSON `__type` of `com.amazon.coral.validate#ValidationException`.
        let kind = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).trim().to_owned())
            .or_else(|| field("__type").map(|t| t.rsplit('#').next().unwrap_or(&t).to_owned()))
            .filter(|k| !k.is_empty());
        let message = match field("message").or_else(|| field("Message")) {
            Some(m) => m,
            None => {
                let cut = body.len().min(300);
                let text = String::from_utf8_lossy(&body[..cut]);
                format!("HTTP {status}: {}", text.trim())
            }
        };
        let mut f = map_failure(
            &self.name,
            &self.auth,
            Some(status),
            kind.as_deref(),
            &message,
        );
        f.retry_after = super::retry_after(headers);
        f
    }

    /// Bedrock runtime has no model list: the probe is `ListAsyncInvokes` (`GET
    /// /async-invoke?maxResults=1`), signed, free, and 200 when the credentials are valid and
    /// may call it (`bedrock:ListAsyncInvokes`); without that permission it is a 403. A
    /// configured `probe` is signed the same way.
    fn probe_request(&self, _model: &str) -> UpstreamRequest {
        self.probe_request_at(SystemTime::now())
    }
}

/// The HTTP status an exception name comes with (for exceptions inside a 200 stream, and
/// for `error` bodies whose status we are not given).
pub fn exception_status(kind: &str) -> u16 {
    match kind.to_ascii_lowercase().as_str() {
        "validationexception" => 400,
        "accessdeniedexception" => 403,
        "resourcenotfoundexception" => 404,
        "modeltimeoutexception" => 408,
        "conflictexception" => 409,
        "modelerrorexception" | "modelstreamerrorexception" => 424,
        "throttlingexception" | "servicequotaexceededexception" | "modelnotreadyexception" => 429,
        "serviceunavailableexception" => 503,
        _ => 500,
    }
}

/// Bedrock's error vocabulary in OpenAI's words (providers.md §8.5, §11.3). `status` is the
/// HTTP status when there was one (`None` inside a stream). A model error (424, "retry once")
/// is reported as a 502 so the attempt loop may try again, since 424 is not retryable as such.
pub(crate) fn map_failure(
    provider: &str,
    auth: &Auth,
    status: Option<u16>,
    kind: Option<&str>,
    message: &str,
) -> UpstreamFailure {
    let lower = message.to_ascii_lowercase();
    // Without a name (a body that is only `{"message": ...}`), the status names the class.
    let name = match kind {
        Some(k) => k.to_ascii_lowercase(),
        None => match status {
            Some(400) => "validationexception",
            Some(403) => "accessdeniedexception",
            Some(404) => "resourcenotfoundexception",
            Some(408) => "modeltimeoutexception",
            Some(424) => "modelerrorexception",
            Some(429) => "throttlingexception",
            Some(500) => "internalserverexception",
            Some(503) => "serviceunavailableexception",
            _ => "",
        }
        .to_owned(),
    };
    let mut status = status.unwrap_or_else(|| exception_status(&name));
    let too_long = [
        "too long",
        "context length",
        "context window",
        "too many tokens",
        "too many input tokens",
        "maximum context",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let (error_type, code) = match name.as_str() {
        "validationexception" if too_long => ("invalid_request_error", "context_length_exceeded"),
        "validationexception" if lower.contains("model identifier is invalid") => {
            ("invalid_request_error", "model_not_found")
        }
        "validationexception" => ("invalid_request_error", "invalid_request_error"),
        "accessdeniedexception" => ("permission_error", "permission_denied"),
        "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "incompletesignatureexception"
        | "missingauthenticationtokenexception"
        | "expiredtokenexception"
        | "invalidclienttokenid"
        | "signaturedoesnotmatch" => ("authentication_error", "invalid_api_key"),
        "resourcenotfoundexception" if lower.contains("model") => {
            ("invalid_request_error", "model_not_found")
        }
        "resourcenotfoundexception" => ("invalid_request_error", "not_found"),
        "throttlingexception" | "servicequotaexceededexception" => {
            ("rate_limit_error", "rate_limit_exceeded")
        }
        "modelnotreadyexception" => ("server_error", "model_not_ready"),
        "modeltimeoutexception" => ("timeout_error", "timeout"),
        "modelerrorexception" | "modelstreamerrorexception" => ("server_error", "model_error"),
        "internalserverexception" => ("server_error", "server_error"),
        "serviceunavailableexception" => ("server_error", "service_unavailable"),
        _ => match status {
            400 | 422 => ("invalid_request_error", "invalid_request_error"),
            401 => ("authentication_error", "invalid_api_key"),
            s if s >= 500 => ("server_error", "server_error"),
            _ => ("upstream_error", "upstream_error"),
        },
    };
    let mut text = if message.is_empty() {
        "the provider gave no message".to_owned()
    } else {
        auth.scrub(message)
    };
    if status == 424 {
        text = format!("{text} (HTTP 424, reported as 502 so it may be retried)");
        status = 502;
    }
    let mut f = UpstreamFailure::new(provider, FailureKind::Status(status), text);
    f.detail = Some(Box::new(ErrorDetail {
        error_type: Some(error_type.to_owned()),
        code: Some(code.to_owned()),
        param: None,
    }));
    f
}

#[cfg(test)]
mod tests;
