//! OpenAI Chat Completions, and the dialects of it other servers speak (Mistral, DeepSeek,
//! Qwen/DashScope, Azure OpenAI, vLLM/Ollama/llama.cpp).
//!
//! The client already speaks this format, so the adapter rewrites only what it must: the
//! upstream model, plus the per-dialect rules of [`dialect`] (the one place that knows the
//! differences). OpenAI, the mock and Azure responses pass through byte-exact; for the
//! other dialects each response and stream event is parsed and re-serialised only when a
//! rule changed it, so an event that already speaks OpenAI leaves byte-exact too.

pub mod dialect;

pub use dialect::Dialect;

use super::sse::{self, SseFramer};
use super::{Adapter, BaseUrl, StreamTranslator, TranslatedResponse, UpstreamRequest};
use crate::config::ProviderConfig;
use crate::types::{ChatRequest, ErrorDetail, FailureKind, GatewayError, UpstreamFailure, Usage};
use bytes::{Bytes, BytesMut};
use dialect::StreamUsage;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What may stay unescaped in one URL path segment or query value (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Adapter for one OpenAI-dialect provider.
pub struct OpenAiAdapter {
    name: String,
    base_path: String,
    api_key: String,
    extra_headers: Vec<(String, String)>,
    dialect: Dialect,
    drop_unsupported: bool,
    /// Azure's `api-version` (classic deployment URLs only).
    api_version: String,
    /// Azure's v1 API (`{resource}/openai/v1`): OpenAI paths, deployment as body `model`.
    azure_v1: bool,
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
            drop_unsupported: cfg.drop_unsupported_params,
            api_version: cfg
                .api_version
                .clone()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| dialect::DEFAULT_AZURE_API_VERSION.into()),
            azure_v1: dialect == Dialect::Azure && base.path.ends_with("/openai/v1"),
        }
    }

    /// The dialect this adapter speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::with_capacity(3 + self.extra_headers.len());
        h.push(("content-type".into(), "application/json".into()));
        if !self.api_key.is_empty() {
            h.push(self.dialect.auth_header(&self.api_key));
        }
        h.extend(self.extra_headers.iter().cloned());
        h
    }

    /// Azure classic: the deployment and the API version are in the URL.
    fn azure_classic(&self) -> bool {
        self.dialect == Dialect::Azure && !self.azure_v1
    }

    fn stream_usage(&self) -> StreamUsage {
        let version = self.azure_classic().then_some(self.api_version.as_str());
        self.dialect.stream_usage(version)
    }

    fn chat_path(&self, model: &str) -> String {
        if self.azure_classic() {
            format!(
                "{}/openai/deployments/{}/chat/completions?api-version={}",
                self.base_path,
                utf8_percent_encode(model, SEGMENT),
                utf8_percent_encode(&self.api_version, SEGMENT)
            )
        } else {
            format!("{}/chat/completions", self.base_path)
        }
    }

    /// A failure for a finish reason that means the generation failed.
    fn finish_failure(&self, (status, why): (u16, &'static str)) -> UpstreamFailure {
        UpstreamFailure::new(&self.name, FailureKind::Status(status), why)
    }

    /// Non-stream body for the dialects that need fixing ([`Dialect::normalizes_responses`]).
    fn normalized_response(&self, body: &[u8]) -> Result<TranslatedResponse, UpstreamFailure> {
        let protocol = |why: String| UpstreamFailure::new(&self.name, FailureKind::Protocol, why);
        let mut v: Value = serde_json::from_slice(body).map_err(|e| {
            protocol(format!(
                "the provider's response is not a chat completion: {e}"
            ))
        })?;
        let Some(obj) = v.as_object_mut() else {
            return Err(protocol(
                "the provider's response is not a JSON object".into(),
            ));
        };
        if obj.contains_key("error") || obj.get("object").and_then(Value::as_str) == Some("error") {
            // Some servers report errors with a 200.
            return Err(self.error(500, &http::HeaderMap::new(), body));
        }
        let Some(Value::Array(choices)) = obj.get_mut("choices") else {
            return Err(protocol("the provider's response has no `choices`".into()));
        };
        let mut changed = false;
        for choice in choices.iter_mut() {
            changed |= dialect::normalize_choice(self.dialect, choice)
                .map_err(|f| self.finish_failure(f))?;
        }
        let mut usage = None;
        if let Some(u) = obj.get_mut("usage").filter(|u| u.is_object()) {
            changed |= dialect::normalize_usage(u);
            usage = serde_json::from_value::<Usage>(u.clone()).ok();
        }
        let body = if changed {
            Bytes::from(serde_json::to_vec(&v).map_err(|e| protocol(e.to_string()))?)
        } else {
            Bytes::copy_from_slice(body)
        };
        Ok(TranslatedResponse { body, usage })
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
        let stream_usage = self.stream_usage();
        let stream_options =
            (req.stream && stream_usage == StreamUsage::Ask).then(|| OutgoingStreamOptions {
                include_usage: true,
                extra: req.stream_options.as_ref().map(|o| &o.extra),
            });
        let outgoing = OutgoingRequest {
            model,
            stream_options,
            request: req,
        };
        let internal = |e: serde_json::Error| GatewayError::Internal {
            message: format!("could not serialise the upstream request: {e}"),
        };
        let body = if self.dialect.rewrites_request() {
            let mut body = match serde_json::to_value(&outgoing).map_err(internal)? {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            let cx = dialect::Ctx {
                provider: &self.name,
                dialect: self.dialect,
                drop_unsupported: self.drop_unsupported,
                stream_usage,
            };
            dialect::rewrite_request(&cx, req, model, &mut body)?;
            serde_json::to_vec(&body).map_err(internal)?
        } else {
            serde_json::to_vec(&outgoing).map_err(internal)?
        };
        Ok(UpstreamRequest {
            method: "POST",
            path: self.chat_path(model),
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
        if self.dialect.normalizes_responses() {
            return self.normalized_response(body);
        }
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
            dialect: self.dialect,
            client_wants_usage: req.wants_stream_usage(),
            provider: self.name.clone(),
            api_key: self.api_key.clone(),
            framer: SseFramer::default(),
            usage: None,
            done: false,
            forwarded: false,
            tool_choices: Vec::new(),
            finished: false,
        })
    }

    fn error(&self, status: u16, headers: &http::HeaderMap, body: &[u8]) -> UpstreamFailure {
        dialect_error(
            self.dialect,
            &self.name,
            &self.api_key,
            status,
            headers,
            body,
        )
    }

    fn probe_request(&self, _model: &str) -> UpstreamRequest {
        let mut headers = self.headers();
        headers.retain(|(k, _)| k != "content-type");
        // Listing models costs no tokens; on Azure it also proves the key and the version.
        let path = if self.azure_classic() {
            format!(
                "{}/openai/models?api-version={}",
                self.base_path,
                utf8_percent_encode(&self.api_version, SEGMENT)
            )
        } else {
            format!("{}/models", self.base_path)
        };
        UpstreamRequest {
            method: "GET",
            path,
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

/// Maps an error in the dialect's shapes and vocabulary: the OpenAI envelope first, then the
/// other shapes these servers use, then the dialect's codes ([`dialect::adjust_failure`]).
pub fn dialect_error(
    dialect: Dialect,
    provider: &str,
    api_key: &str,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> UpstreamFailure {
    let mut f = openai_error(provider, api_key, status, headers, body);
    if matches!(dialect, Dialect::OpenAi | Dialect::Mock) {
        return f;
    }
    if f.detail.is_none() {
        if let Some((message, detail)) = dialect::other_error_shape(body) {
            if !message.is_empty() {
                f.message = super::scrub_secret(&message, api_key);
            }
            f.detail = Some(Box::new(detail));
        }
    }
    dialect::adjust_failure(dialect, status, &mut f);
    f.permanent |= f.code() == Some("insufficient_quota");
    f
}

/// Forwards an OpenAI-dialect stream event by event: untouched for OpenAI, the mock and
/// Azure; parsed and fixed per the dialect's rules for the others.
struct PassthroughStream {
    dialect: Dialect,
    /// The client asked for the usage chunk; otherwise it is read and not forwarded.
    client_wants_usage: bool,
    provider: String,
    api_key: String,
    framer: SseFramer,
    usage: Option<Usage>,
    done: bool,
    forwarded: bool,
    /// Choice indexes that streamed a tool call (for the `stop` → `tool_calls` fix).
    tool_choices: Vec<u64>,
    /// A chunk with a `finish_reason` went by.
    finished: bool,
}

/// Finds `needle` in `hay` (small needles; a byte scan, no parse).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Copies the chunk identity (`id`, `object`, `created`, `model`, `system_fingerprint`) into
/// a usage-only chunk, as OpenAI sends it last.
fn usage_chunk(chunk: &Map<String, Value>, usage: Value) -> Value {
    let mut out = Map::new();
    for key in ["id", "object", "created", "model", "system_fingerprint"] {
        if let Some(v) = chunk.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("choices".into(), Value::Array(Vec::new()));
    out.insert("usage".into(), usage);
    Value::Object(out)
}

impl PassthroughStream {
    fn handle(&mut self, event: Bytes, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if self.dialect.normalizes_responses() {
            return self.handle_dialect(event, out);
        }
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
                // Only a chunk that carries usage is a usage chunk: Azure's first chunk
                // also has `choices: []` (prompt filter results) and must reach the client.
                let is_usage_chunk = u.usage.is_some() && u.choices.is_empty();
                self.usage = u.usage.or(self.usage.take());
                if is_usage_chunk && !self.client_wants_usage {
                    // llmux asked for this usage-only chunk; the client did not.
                    return Ok(());
                }
            }
        }
        out.extend_from_slice(&event);
        self.forwarded = true;
        Ok(())
    }

    /// One event of a dialect that departs from OpenAI: parsed, fixed, and re-serialised
    /// only if a rule changed it.
    fn handle_dialect(&mut self, event: Bytes, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        let (_, data) = sse::parse_event(&event);
        let data = data.trim_ascii();
        if data.is_empty() {
            // Keep-alive comments and blank lines (DeepSeek under load, §5.3). Held back until
            // real output starts, so they neither commit the response nor end failover.
            if self.forwarded {
                out.extend_from_slice(&event);
            }
            return Ok(());
        }
        if data == b"[DONE]" {
            self.done = true;
            return self.forward(event, out);
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(data) else {
            return self.forward(event, out);
        };
        if (chunk.contains_key("error") && !chunk.contains_key("choices"))
            || chunk.get("object").and_then(Value::as_str) == Some("error")
        {
            let failure = dialect_error(
                self.dialect,
                &self.provider,
                &self.api_key,
                500,
                &http::HeaderMap::new(),
                data,
            );
            if !self.forwarded {
                return Err(failure);
            }
            return self.forward(event, out);
        }
        let mut changed = false;
        let mut has_choices = false;
        if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
            has_choices = !choices.is_empty();
            for choice in choices.iter_mut().filter_map(Value::as_object_mut) {
                let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                    if self.dialect == Dialect::Mistral {
                        changed |= dialect::flatten_content_parts(delta);
                    }
                    let calls = delta
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .is_some_and(|c| !c.is_empty());
                    if calls && !self.tool_choices.contains(&index) {
                        self.tool_choices.push(index);
                    }
                }
                if choice.get("finish_reason").is_some_and(|r| !r.is_null()) {
                    self.finished = true;
                }
                let had_calls = self.tool_choices.contains(&index);
                changed |= dialect::fix_finish(self.dialect, choice, had_calls).map_err(
                    |(status, why)| {
                        UpstreamFailure::new(&self.provider, FailureKind::Status(status), why)
                    },
                )?;
            }
        }
        let usage = match chunk.get_mut("usage") {
            Some(u) if u.is_object() => {
                changed |= dialect::normalize_usage(u);
                if let Ok(parsed) = serde_json::from_value::<Usage>(u.clone()) {
                    self.usage = Some(parsed);
                }
                true
            }
            _ => false,
        };
        if usage && !has_choices {
            if !self.client_wants_usage {
                return Ok(());
            }
        } else if usage {
            // Usage on a content chunk (Mistral, DeepSeek): OpenAI sends it in a chunk of its
            // own, and only when asked (pitfall 20).
            let moved = chunk.shift_remove("usage").unwrap_or(Value::Null);
            self.emit(&Value::Object(chunk.clone()), out)?;
            if self.client_wants_usage {
                self.emit(&usage_chunk(&chunk, moved), out)?;
            }
            return Ok(());
        }
        if changed {
            self.emit(&Value::Object(chunk), out)
        } else {
            self.forward(event, out)
        }
    }

    fn forward(&mut self, event: Bytes, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        out.extend_from_slice(&event);
        self.forwarded = true;
        Ok(())
    }

    fn emit(&mut self, chunk: &Value, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        let json = serde_json::to_vec(chunk).map_err(|e| {
            UpstreamFailure::new(&self.provider, FailureKind::Protocol, e.to_string())
        })?;
        sse::data_event(out, &json);
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
        if !self.done && self.finished && self.dialect.done_optional() {
            // The server finished and closed without the sentinel: the answer is whole.
            out.extend_from_slice(sse::DONE);
            self.done = true;
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
