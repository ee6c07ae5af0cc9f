//! Provider adapters: every provider-specific rule lives in one module here.
//!
//! An [`Adapter`] is built once per configured provider and is pure: it turns the typed
//! [`ChatRequest`] into bytes for the upstream, and the upstream's bytes back into OpenAI
//! bytes, with no network and no knowledge of routing or Pingora. The proxy only ever talks
//! to this trait, so adding a provider never touches the request path.

pub mod anthropic;
pub mod bedrock;
pub mod claude;
pub mod gemini;
pub mod openai;
pub mod openai_out;
pub mod sse;

use crate::config::{ProviderConfig, ProviderKind};
use crate::types::{ChatRequest, GatewayError, UpstreamFailure, Usage};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// An HTTP request for the upstream, before addressing (the proxy adds host and framing).
/// Its `Debug` masks credential headers, so it is safe in a log line.
#[derive(Clone)]
pub struct UpstreamRequest {
    pub method: &'static str,
    /// Path and query, including the base URL's path prefix.
    pub path: String,
    /// Headers the provider needs (auth, version, content type, configured extras).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Headers that carry credentials: never printed.
const SECRET_HEADERS: [&str; 6] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-amz-security-token",
    "proxy-authorization",
];

impl std::fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let secret = SECRET_HEADERS.iter().any(|s| k.eq_ignore_ascii_case(s));
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &headers)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// A translated non-stream response.
#[derive(Debug, Clone)]
pub struct TranslatedResponse {
    /// OpenAI `chat.completion` JSON.
    pub body: Bytes,
    pub usage: Option<Usage>,
    /// Offset in `body` of the closing `}` of its top-level `usage` object, when the adapter
    /// knows it: the proxy writes `cost_usd` there without scanning the body for it.
    pub usage_end: Option<usize>,
}

/// Incremental stream translation: provider bytes in (split anywhere), OpenAI SSE out.
pub trait StreamTranslator: Send {
    /// Consumes one upstream body chunk and appends client-ready SSE bytes to `out`.
    /// An `Err` before anything was written lets the proxy fail over to the next target.
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamFailure>;
    /// The upstream body ended. Appends what is still owed (e.g. `data: [DONE]`), or returns
    /// an error when the stream was cut short.
    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamFailure>;
    /// The usage the provider reported, once it has.
    fn usage(&self) -> Option<Usage>;
}

/// Everything one provider kind knows about its wire format.
pub trait Adapter: Send + Sync {
    /// The upstream request for a chat completion to `model` (the upstream model name).
    fn chat_request(&self, req: &ChatRequest, model: &str)
        -> Result<UpstreamRequest, GatewayError>;
    /// Translates a successful (2xx) non-stream body.
    fn chat_response(
        &self,
        req: &ChatRequest,
        model: &str,
        body: &[u8],
    ) -> Result<TranslatedResponse, UpstreamFailure>;
    /// A fresh translator for one streamed response.
    fn stream_translator(&self, req: &ChatRequest, model: &str) -> Box<dyn StreamTranslator>;
    /// Maps an error status and body to a failure in OpenAI vocabulary, with retry hints.
    fn error(&self, status: u16, headers: &http::HeaderMap, body: &[u8]) -> UpstreamFailure;
    /// A request that costs no tokens and tells whether the endpoint answers (model list).
    fn probe_request(&self, model: &str) -> UpstreamRequest;
    /// Whether the adapter can sign a request now. False only while credentials fetched in
    /// the background (Bedrock web identity) are missing or expired: `/readyz` waits.
    fn ready(&self) -> bool {
        true
    }
}

/// Where a provider lives: scheme, host, port and the base path its API hangs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`/v1`, `` for none).
    pub path: String,
}

impl BaseUrl {
    /// Parses `http(s)://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "base_url `{url}` must start with http:// or https://"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("base_url `{url}` needs a host and no credentials"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| format!("bad IPv6 host in `{url}`"))?;
            let port = match &v6[end + 1..] {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad port in `{url}`"))?,
            };
            (v6[..end].to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("bad port in `{url}`"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        Ok(BaseUrl {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Builds the adapter for one configured provider. `base_url` is resolved by the caller
/// (for `mock` it may point at the in-process fake).
pub fn build_adapter(cfg: &ProviderConfig, base: &BaseUrl) -> Result<Arc<dyn Adapter>, String> {
    match cfg.kind {
        ProviderKind::Anthropic => Ok(Arc::new(anthropic::AnthropicAdapter::new(cfg, base)?)),
        ProviderKind::Gemini => Ok(Arc::new(gemini::GeminiAdapter::new(cfg, base)?)),
        ProviderKind::Bedrock => Ok(Arc::new(bedrock::BedrockAdapter::new(cfg, base)?)),
        ProviderKind::Openai
        | ProviderKind::OpenaiCompatible
        | ProviderKind::Mock
        | ProviderKind::Mistral
        | ProviderKind::Deepseek
        | ProviderKind::Qwen
        | ProviderKind::AzureOpenai => Ok(Arc::new(openai::OpenAiAdapter::new(
            cfg,
            base,
            openai::Dialect::for_kind(cfg.kind),
        ))),
    }
}

/// The provider's name in the OpenTelemetry GenAI semantic conventions
/// (`gen_ai.provider.name`).
pub fn semconv_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Mock => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Mistral => "mistral_ai",
        ProviderKind::Deepseek => "deepseek",
        ProviderKind::Qwen => "alibaba_cloud",
        ProviderKind::AzureOpenai => "azure.ai.openai",
        ProviderKind::Bedrock => "aws.bedrock",
    }
}

/// Whether llmux runs this provider itself, in process: a `mock` without a `base_url`.
pub fn runs_in_process(cfg: &ProviderConfig) -> bool {
    cfg.kind == ProviderKind::Mock && cfg.base_url.is_none()
}

/// Default base URL for kinds that have one, so `base_url` may be omitted.
pub fn default_base_url(cfg: &ProviderConfig) -> Option<String> {
    match cfg.kind {
        ProviderKind::Bedrock => cfg
            .region
            .as_ref()
            .map(|r| format!("https://bedrock-runtime.{r}.amazonaws.com")),
        _ => None,
    }
}

/// Removes a configured secret from provider-supplied text (some providers echo a
/// partial key in auth errors); no key may reach a client or a log line.
pub fn scrub_secret(text: &str, secret: &str) -> String {
    if secret.len() >= 4 && text.contains(secret) {
        text.replace(secret, "[redacted]")
    } else {
        text.to_owned()
    }
}

/// Parses a `retry-after` header (seconds; HTTP dates are treated as absent) and the
/// OpenAI/Anthropic `retry-after-ms` variant.
pub fn retry_after(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(std::time::Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let secs = get("retry-after")?.trim().parse::<f64>().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_forms() {
        let b = BaseUrl::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.path.as_str()),
            (true, "api.openai.com", 443, "/v1")
        );
        assert_eq!(b.host_header(), "api.openai.com");
        let b = BaseUrl::parse("http://127.0.0.1:9001").unwrap();
        assert_eq!(
            (b.port, b.path.as_str(), b.host_header().as_str()),
            (9001, "", "127.0.0.1:9001")
        );
        let b = BaseUrl::parse("http://[::1]:8000/v1").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.host_header().as_str()),
            ("::1", 8000, "[::1]:8000")
        );
        assert!(BaseUrl::parse("ftp://x").is_err());
        assert!(BaseUrl::parse("http://user:pw@x/").is_err());
        assert!(BaseUrl::parse("http://x:notaport/").is_err());
    }

    #[test]
    fn retry_after_variants() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "20".parse().unwrap());
        assert_eq!(retry_after(&h), Some(std::time::Duration::from_secs(20)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(
            retry_after(&h),
            Some(std::time::Duration::from_millis(1500))
        );
        let mut h = http::HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn debug_masks_credential_headers() {
        let r = UpstreamRequest {
            method: "POST",
            path: "/v1/x".into(),
            headers: vec![
                ("Authorization".into(), "Bearer sk-1".into()),
                ("x-goog-api-key".into(), "g-2".into()),
                ("accept".into(), "a".into()),
            ],
            body: Bytes::from_static(b"{}"),
        };
        let s = format!("{r:?}");
        assert!(
            !s.contains("sk-1") && !s.contains("g-2") && s.contains("accept"),
            "{s}"
        );
    }

    #[test]
    fn scrub_removes_key() {
        assert_eq!(
            scrub_secret("bad key sk-abcdef", "sk-abcdef"),
            "bad key [redacted]"
        );
        assert_eq!(scrub_secret("fine", ""), "fine");
    }
}
