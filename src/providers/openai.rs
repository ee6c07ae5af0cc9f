//! OpenAI Chat Completions, and the OpenAI dialect other servers speak.
//!
//! The client already speaks this format, so the adapter rewrites only what it must (the
//! upstream model) and passes response bytes through untouched; the stream is framed into
//! events and forwarded byte-exact, with only the usage chunk and errors looked into.

use super::sse::{self, SseFramer};
use super::{Adapter, BaseUrl, StreamTranslator, TranslatedResponse, UpstreamRequest};
use crate::config::{ProviderConfig, ProviderKind};
use crate::types::{ChatRequest, ErrorDetail, FailureKind, GatewayError, UpstreamFailure, Usage};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Which server speaks the dialect; the differences between them live here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// api.openai.com: a key is required.
    OpenAi,
    /// vLLM, Ollama, llama.cpp and similar: the key is optional.
    Compatible,
    /// llmux's own fake provider (`llmux mock`), which speaks OpenAI exactly.
    Mock,
}

impl Dialect {
    /// The dialect of a configured kind.
    pub fn for_kind(kind: ProviderKind) -> Dialect {
        match kind {
            ProviderKind::OpenaiCompatible => Dialect::Compatible,
            ProviderKind::Mock => Dialect::Mock,
            _ => Dialect::OpenAi,
        }
    }
}

/// Adapter for one OpenAI-dialect provider.
pub struct OpenAiAdapter {
    name: String,
    base_path: String,
    api_key: String,
    extra_headers: Vec<(String, String)>,
    #[allow(dead_code)]
    dialect: Dialect,
}

impl OpenAiAdapter {
    /// Builds the adapter from the provider's config and resolved base URL.
    pub fn new(cfg: &ProviderConfig, base: &BaseUrl, dialect: Dialect) -> Self {
        let mut key = cfg
            .api_key
            .as_ref()
            .map(|k| k.expose().to_owned())
            .unwrap_or_default();
        if key.is_empty() && dialect == Dialect::Mock {
            // The fake wants a key like the real API does; none is secret here.
            key = "mock-key".into();
        }
        OpenAiAdapter {
            name: cfg.name.clone(),
            base_path: base.path.clone(),
            api_key: key,
            extra_headers: cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            dialect,
        }
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::with_capacity(3 + self.extra_headers.len());
        h.push(("content-type".into(), "application/json".into()));
        if !self.api_key.is_empty() {
            h.push(("authorization".into(), format!("Bearer {}", self.api_key)));
        }
        h.extend(self.extra_headers.iter().cloned());
        h
    }
}

/// The client's request with the upstream model written in.
#[derive(Serialize)]
struct OutgoingRequest<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<OutgoingStreamOptions<'a>>,
    #[serde(flatten)]
    request: &'a ChatRequest,
}

/// `stream_options` as sent upstream: usage is always requested, so a stream is priced
/// like the same completion without stream; the client's other options pass through.
#[derive(Serialize)]
struct OutgoingStreamOptions<'a> {
    include_usage: bool,
    #[serde(flatten)]
    extra: Option<&'a crate::types::Extra>,
}

/// The few fields of a response llmux needs; everything else passes through unparsed.
#[derive(Deserialize)]
struct ResponseProbe {
    #[serde(default)]
    choices: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// OpenAI's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorObject,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    param: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

fn value_to_string(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

impl Adapter for OpenAiAdapter {
    fn chat_request(
        &self,
        req: &ChatRequest,
        model: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        let stream_options = req.stream.then(|| OutgoingStreamOptions {
            include_usage: true,
            extra: req.stream_options.as_ref().map(|o| &o.extra),
        });
        let body = serde_json::to_vec(&OutgoingRequest {
            model,
            stream_options,
            request: req,
        })
        .map_err(|e| GatewayError::Internal {
            message: format!("could not serialise the upstream request: {e}"),
        })?;
        Ok(UpstreamRequest {
            method: "POST",
            path: format!("{}/chat/completions", self.base_path),
            headers: self.headers(),
            body: Bytes::from(body),
        })
    }

    fn chat_response(
        &self,
        _req: &ChatRequest,
        _model: &str,
        body: &[u8],
    ) -> Result<TranslatedResponse, UpstreamFailure> {
        let probe: ResponseProbe = serde_json::from_slice(body).map_err(|e| {
            UpstreamFailure::new(
                &self.name,
                FailureKind::Protocol,
                format!("the provider's response is not a chat completion: {e}"),
            )
        })?;
        if probe.error.is_some() {
            // Some compatible servers report errors with a 200.
            return Err(self.error(500, &http::HeaderMap::new(), body));
        }
        if probe.choices.is_none() {
            return Err(UpstreamFailure::new(
                &self.name,
                FailureKind::Protocol,
                "the provider's response has no `choices`",
            ));
        }
        Ok(TranslatedResponse {
            body: Bytes::copy_from_slice(body),
            usage: probe.usage,
        })
    }

    fn stream_translator(&self, req: &ChatRequest, _model: &str) -> Box<dyn StreamTranslator> {
        Box::new(PassthroughStream {
            client_wants_usage: req.wants_stream_usage(),
            provider: self.name.clone(),
            api_key: self.api_key.clone(),
            framer: SseFramer::default(),
            usage: None,
            done: false,
            forwarded: false,
        })
    }

    fn error(&self, status: u16, headers: &http::HeaderMap, body: &[u8]) -> UpstreamFailure {
        openai_error(&self.name, &self.api_key, status, headers, body)
    }

    fn probe_request(&self, _model: &str) -> UpstreamRequest {
        let mut headers = self.headers();
        headers.retain(|(k, _)| k != "content-type");
        UpstreamRequest {
            method: "GET",
            path: format!("{}/models", self.base_path),
            headers,
            body: Bytes::new(),
        }
    }
}

/// Maps an OpenAI-shaped error (also used by other dialects' 200-with-error bodies).
pub fn openai_error(
    provider: &str,
    api_key: &str,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> UpstreamFailure {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let mut f = UpstreamFailure::new(provider, FailureKind::Status(status), String::new());
    match parsed {
        Some(ErrorBody { error }) => {
            f.message = error.message.unwrap_or_else(|| format!("HTTP {status}"));
            f.detail = Some(Box::new(ErrorDetail {
                error_type: error.kind,
                code: error.code.and_then(value_to_string),
                param: error.param.and_then(value_to_string),
            }));
        }
        None => {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_owned();
            f.message = if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            };
        }
    }
    f.message = super::scrub_secret(&f.message, api_key);
    f.retry_after = super::retry_after(headers);
    // A 429 for an empty balance will not clear by retrying; the SDKs' own hint wins.
    let should_retry = headers.get("x-should-retry").and_then(|v| v.to_str().ok());
    f.permanent = f.code() == Some("insufficient_quota")
        || f.error_type() == Some("insufficient_quota")
        || should_retry == Some("false");
    f
}

/// Forwards an OpenAI stream event by event, untouched.
struct PassthroughStream {
    /// The client asked for the usage chunk; otherwise it is read and not forwarded.
    client_wants_usage: bool,
    provider: String,
    api_key: String,
    framer: SseFramer,
    usage: Option<Usage>,
    done: bool,
    forwarded: bool,
}

/// Finds `needle` in `hay` (small needles; a byte scan, no parse).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl PassthroughStream {
    fn handle(&mut self, event: Bytes, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        let (_, data) = sse::parse_event(&event);
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
        } else if data.starts_with(b"{\"error\"") {
            let failure = openai_error(
                &self.provider,
                &self.api_key,
                500,
                &http::HeaderMap::new(),
                data,
            );
            if !self.forwarded {
                return Err(failure);
            }
        } else if contains(data, b"\"usage\":{") || contains(data, b"\"usage\": {") {
            #[derive(Deserialize)]
            struct UsageChunk {
                usage: Option<Usage>,
                #[serde(default)]
                choices: Vec<serde::de::IgnoredAny>,
            }
            if let Ok(u) = serde_json::from_slice::<UsageChunk>(data) {
                self.usage = u.usage.or(self.usage.take());
                if u.choices.is_empty() && !self.client_wants_usage {
                    // llmux asked for this usage-only chunk; the client did not.
                    return Ok(());
                }
            }
        }
        out.extend_from_slice(&event);
        self.forwarded = true;
        Ok(())
    }
}

impl StreamTranslator for PassthroughStream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        self.framer.push(chunk);
        while let Some(event) = self.framer.next_event() {
            self.handle(event, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if let Some(mut rest) = self.framer.take_rest().map(BytesMut::from) {
            // A last event without its blank line is still an event.
            rest.extend_from_slice(b"\n\n");
            self.handle(rest.freeze(), out)?;
        }
        if self.done {
            Ok(())
        } else {
            Err(UpstreamFailure::new(
                &self.provider,
                FailureKind::Protocol,
                "the provider ended the stream before `data: [DONE]`",
            ))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use std::path::PathBuf;

    fn adapter() -> OpenAiAdapter {
        let cfg: ProviderConfig = serde_json::from_value(serde_json::json!({
            "name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1",
            "api_key": "sk-test-123456", "headers": {"openai-project": "p1"}
        }))
        .unwrap();
        assert_eq!(cfg.api_key, Some(Secret("sk-test-123456".into())));
        OpenAiAdapter::new(
            &cfg,
            &BaseUrl::parse("https://api.openai.com/v1").unwrap(),
            Dialect::OpenAi,
        )
    }

    fn corpus(rel: &str) -> serde_json::Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/corpus")
            .join(rel);
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
            .unwrap()
    }

    fn request(v: serde_json::Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn request_rewrites_model_and_keeps_everything_else() {
        let case = corpus("openai/pai-test_run_stream_sync_streams_real_model__0.json");
        let mut body = case["request"]["body"].clone();
        body["model"] = "chat".into();
        let up = adapter()
            .chat_request(&request(body.clone()), "gpt-4o-mini")
            .unwrap();
        assert_eq!(up.path, "/v1/chat/completions");
        let sent: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
        let mut expected = case["request"]["body"].clone();
        expected["model"] = "gpt-4o-mini".into();
        assert_eq!(sent, expected);
        assert!(up
            .headers
            .contains(&("authorization".into(), "Bearer sk-test-123456".into())));
        assert!(up.headers.contains(&("openai-project".into(), "p1".into())));
    }

    #[test]
    fn recorded_stream_passes_through_byte_exact_in_any_split() {
        let case = corpus("openai/pai-test_run_stream_sync_streams_real_model__0.json");
        let wire = case["response"]["body_text"]
            .as_str()
            .unwrap()
            .as_bytes()
            .to_vec();
        let req = request(case["request"]["body"].clone());
        for step in [1usize, 7, 64, wire.len()] {
            let mut t = adapter().stream_translator(&req, "gpt-4o-mini");
            let mut out = BytesMut::new();
            for chunk in wire.chunks(step) {
                t.feed(chunk, &mut out).unwrap();
            }
            t.finish(&mut out).unwrap();
            assert_eq!(&out[..], &wire[..], "split every {step} bytes");
            let usage = t.usage().expect("usage chunk seen");
            assert!(
                usage.prompt_tokens > 0
                    && usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
            );
        }
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let req = request(
            serde_json::json!({"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}),
        );
        let mut t = adapter().stream_translator(&req, "m");
        let mut out = BytesMut::new();
        t.feed(b"data: {\"choices\":[]}\n\n", &mut out).unwrap();
        assert_eq!(t.finish(&mut out).unwrap_err().kind, FailureKind::Protocol);
    }

    #[test]
    fn error_event_before_any_output_fails_the_attempt() {
        let req = request(
            serde_json::json!({"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}),
        );
        let mut t = adapter().stream_translator(&req, "m");
        let mut out = BytesMut::new();
        let err = t
            .feed(
                b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
                &mut out,
            )
            .unwrap_err();
        assert!(err.retryable() && out.is_empty());
    }

    #[test]
    fn recorded_errors_map_to_status_and_code() {
        let case = corpus("openai/pai-test_model_name_suggestion_openai-chat.json");
        let body = serde_json::to_vec(&case["response"]["body"]).unwrap();
        let f = adapter().error(404, &http::HeaderMap::new(), &body);
        assert_eq!(f.kind, FailureKind::Status(404));
        assert_eq!(f.code(), Some("model_not_found"));
        assert!(!f.retryable());
        let case = corpus("other/pai-test_openrouter_errors_raised__0.json");
        let body = serde_json::to_vec(&case["response"]["body"]).unwrap();
        let f = adapter().error(429, &http::HeaderMap::new(), &body);
        assert!(f.retryable());
        assert_eq!(f.code(), Some("429"));
    }

    #[test]
    fn insufficient_quota_is_not_retried_and_keys_are_scrubbed() {
        let body = br#"{"error":{"message":"Incorrect key sk-test-123456","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let f = adapter().error(429, &http::HeaderMap::new(), body);
        assert!(!f.retryable());
        assert!(!f.message.contains("sk-test-123456"));
    }

    #[test]
    fn non_stream_body_passes_through() {
        let body = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
        let req =
            request(serde_json::json!({"model":"m","messages":[{"role":"user","content":"x"}]}));
        let t = adapter().chat_response(&req, "m", body).unwrap();
        assert_eq!(&t.body[..], &body[..]);
        assert_eq!(t.usage.unwrap().total_tokens, 4);
        assert!(adapter().chat_response(&req, "m", b"<html>").is_err());
    }
}
