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
        Ok(TranslatedResponse {
            body,
            usage,
            usage_end: None,
        })
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
/// `usage` is kept as the body's own bytes, so where it ends is known too.
#[derive(Deserialize)]
struct ResponseProbe<'a> {
    #[serde(default)]
    choices: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    usage: Option<&'a serde_json::value::RawValue>,
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
        let not_a_completion = |e: serde_json::Error| {
            UpstreamFailure::new(
                &self.name,
                FailureKind::Protocol,
                format!("the provider's response is not a chat completion: {e}"),
            )
        };
        let probe: ResponseProbe = serde_json::from_slice(body).map_err(not_a_completion)?;
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
        let (usage, usage_end) = match probe.usage {
            Some(raw) => {
                let text = raw.get();
                let usage: Usage = serde_json::from_str(text).map_err(not_a_completion)?;
                // `text` is borrowed from `body`: its last byte is the object's `}` (which
                // `insert_usage_cost_at` checks before it trusts the offset).
                let end = (text.as_ptr().addr() + text.len()).checked_sub(body.as_ptr().addr() + 1);
                (Some(usage), end)
            }
            None => (None, None),
        };
        Ok(TranslatedResponse {
            body: Bytes::copy_from_slice(body),
            usage,
            usage_end,
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

/// Whether a chunk's JSON has `"usage":{` or `"usage": {` (a usage object rather than
/// `"usage":null`): one memchr-accelerated search instead of a parse.
fn has_usage_object(data: &[u8]) -> bool {
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\":"));
    USAGE.find_iter(data).any(|at| {
        let after = &data[at + b"\"usage\":".len()..];
        after.starts_with(b"{") || after.starts_with(b" {")
    })
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
        } else if has_usage_object(data) {
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
        assert_eq!(t.usage_end, Some(body.len() - 2));
        assert!(adapter().chat_response(&req, "m", b"<html>").is_err());
    }

    #[test]
    fn the_end_of_usage_is_found_in_any_layout() {
        let req =
            request(serde_json::json!({"model":"m","messages":[{"role":"user","content":"x"}]}));
        let pretty = b"{\n  \"choices\": [{\"message\": {\"content\": \"\\\"usage\\\": {}\"}}],\n  \"usage\": {\n    \"prompt_tokens\": 3, \"completion_tokens\": 1,\n    \"total_tokens\": 4, \"prompt_tokens_details\": {\"cached_tokens\": 0}\n  }\n,\n  \"id\": \"c\"\n}";
        let t = adapter().chat_response(&req, "m", pretty).unwrap();
        let end = t.usage_end.expect("usage present");
        assert_eq!(
            crate::providers::openai_out::insert_usage_cost_at(pretty, Some(end), "0.5"),
            crate::providers::openai_out::insert_usage_cost(pretty, "0.5"),
            "the offset is the `}}` the scan finds"
        );
        for no_usage in [
            &br#"{"choices":[],"usage":null}"#[..],
            br#"{"choices":[{"usage":{"total_tokens":1}}]}"#,
        ] {
            let t = adapter().chat_response(&req, "m", no_usage).unwrap();
            assert_eq!((t.usage.is_some(), t.usage_end), (false, None));
        }
        let bad_usage = br#"{"choices":[],"usage":{"total_tokens":"many"}}"#;
        let f = adapter().chat_response(&req, "m", bad_usage).unwrap_err();
        assert!(f.message.contains("not a chat completion"), "{}", f.message);
    }
}

/// One golden test per dialect rule (the corpus replay is `tests/corpus_openai_dialects.rs`).
#[cfg(test)]
mod dialect_rules {
    use super::*;
    use serde_json::json;

    fn adapter(kind: &str, base: &str, extra: Value) -> OpenAiAdapter {
        let mut cfg =
            json!({"name": "p", "kind": kind, "base_url": base, "api_key": "sk-secret-9876"});
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let cfg: ProviderConfig = serde_json::from_value(cfg).unwrap();
        let dialect = Dialect::for_kind(cfg.kind);
        OpenAiAdapter::new(&cfg, &BaseUrl::parse(base).unwrap(), dialect)
    }

    fn mistral() -> OpenAiAdapter {
        adapter("mistral", "https://api.mistral.ai/v1", json!({}))
    }

    fn deepseek() -> OpenAiAdapter {
        adapter("deepseek", "https://api.deepseek.com", json!({}))
    }

    fn azure(version: &str) -> OpenAiAdapter {
        adapter(
            "azure_openai",
            "https://res.openai.azure.com",
            json!({"api_version": version}),
        )
    }

    fn compatible() -> OpenAiAdapter {
        let cfg: ProviderConfig = serde_json::from_value(
            json!({"name": "local", "kind": "openai_compatible", "base_url": "http://127.0.0.1:11434/v1"}),
        )
        .unwrap();
        OpenAiAdapter::new(
            &cfg,
            &BaseUrl::parse("http://127.0.0.1:11434/v1").unwrap(),
            Dialect::Compatible,
        )
    }

    fn req(v: Value) -> ChatRequest {
        let mut v = v;
        v["model"] = "alias".into();
        serde_json::from_value(v).unwrap()
    }

    fn sent(a: &OpenAiAdapter, v: Value, model: &str) -> Value {
        let up = a.chat_request(&req(v), model).unwrap();
        serde_json::from_slice(&up.body).unwrap()
    }

    fn refused(a: &OpenAiAdapter, v: Value) -> GatewayError {
        a.chat_request(&req(v), "m").unwrap_err()
    }

    fn stream(a: &OpenAiAdapter, wants_usage: bool, wire: &[u8]) -> (Vec<Value>, Option<Usage>) {
        let r = req(
            json!({"messages": [{"role": "user", "content": "x"}], "stream": true,
            "stream_options": {"include_usage": wants_usage}}),
        );
        let mut t = a.stream_translator(&r, "m");
        let mut out = BytesMut::new();
        t.feed(wire, &mut out).unwrap();
        t.finish(&mut out).unwrap();
        (events(&out), t.usage())
    }

    /// The `data:` payloads of an SSE body (`[DONE]` as a string).
    fn events(out: &[u8]) -> Vec<Value> {
        String::from_utf8_lossy(out)
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.into())))
            .collect()
    }

    const USER: fn() -> Value = || json!({"role": "user", "content": "hi"});

    // --- mistral -------------------------------------------------------------------------

    #[test]
    fn mistral_rewrites_tool_call_ids_the_same_way_everywhere() {
        let body = sent(
            &mistral(),
            json!({"messages": [USER(),
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_01ABC", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "VB03LVVRm", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "toolu_01ABC", "content": "1"},
                {"role": "tool", "tool_call_id": "VB03LVVRm", "content": "2"}]}),
            "mistral-large-latest",
        );
        let new = body["messages"][1]["tool_calls"][0]["id"].as_str().unwrap();
        assert!(dialect::is_mistral_id(new), "{new}");
        assert_eq!(new, dialect::mistral_tool_call_id("toolu_01ABC"));
        assert_eq!(body["messages"][2]["tool_call_id"], new);
        assert_eq!(body["messages"][1]["tool_calls"][1]["id"], "VB03LVVRm");
        assert_eq!(body["messages"][3]["tool_call_id"], "VB03LVVRm");
        assert!(
            body["messages"][1].get("content").is_none(),
            "empty content dropped"
        );
    }

    #[test]
    fn mistral_drops_empty_assistant_turns_and_refuses_a_conversation_of_them() {
        let body = sent(
            &mistral(),
            json!({"messages": [USER(), {"role": "assistant", "content": ""}, USER()]}),
            "m",
        );
        assert_eq!(body["messages"].as_array().unwrap().len(), 2);
        let e = refused(
            &mistral(),
            json!({"messages": [{"role": "assistant", "content": []}]}),
        );
        assert_eq!(e.param().as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn mistral_maps_parameters() {
        let body = sent(
            &mistral(),
            json!({"messages": [USER()], "tool_choice": "required", "seed": 7,
                "max_completion_tokens": 64, "max_tokens": 9, "parallel_tool_calls": false,
                "stream": true, "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "f", "strict": true,
                    "parameters": {"$schema": "x", "type": "object", "additionalProperties": false}}}]}),
            "m",
        );
        assert_eq!(body["tool_choice"], "any");
        assert_eq!((&body["random_seed"], body.get("seed")), (&json!(7), None));
        assert_eq!(body["max_tokens"], 64);
        assert!(body.get("max_completion_tokens").is_none());
        assert_eq!(body["parallel_tool_calls"], false);
        assert!(
            body.get("stream_options").is_none(),
            "Mistral sends usage unasked"
        );
        assert_eq!(
            body["tools"][0]["function"],
            json!({"name": "f", "parameters": {"type": "object", "additionalProperties": false}})
        );
    }

    #[test]
    fn mistral_refuses_or_drops_what_it_cannot_take() {
        for (field, value) in [
            ("logprobs", json!(true)),
            ("top_logprobs", json!(2)),
            ("user", json!("u")),
            ("logit_bias", json!({"1": 2})),
        ] {
            let mut r = json!({"messages": [USER()]});
            r[field] = value;
            let e = refused(&mistral(), r.clone());
            assert_eq!((e.status(), e.param().as_deref()), (400, Some(field)));
            assert!(e.to_string().contains("provider 'p' (kind mistral)"), "{e}");
            let lenient = adapter(
                "mistral",
                "https://api.mistral.ai/v1",
                json!({"drop_unsupported_params": true}),
            );
            assert!(sent(&lenient, r, "m").get(field).is_none());
        }
    }

    #[test]
    fn mistral_roles_names_and_reasoning() {
        let body = sent(
            &mistral(),
            json!({"messages": [{"role": "developer", "content": "be brief", "name": "ops"},
                {"role": "user", "content": "hi", "name": "ann"},
                {"role": "assistant", "content": "4", "reasoning_content": "2+2", "name": "bot"},
                USER()]}),
            "m",
        );
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert!(body["messages"][1].get("name").is_none());
        assert_eq!(
            body["messages"][2],
            json!({"role": "assistant", "content": [
                {"type": "thinking", "thinking": [{"type": "text", "text": "2+2"}], "closed": true},
                {"type": "text", "text": "4"}]})
        );
    }

    #[test]
    fn mistral_thinking_chunks_become_reasoning_content() {
        let body = br#"{"id":"x","object":"chat.completion","model":"magistral","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":[{"type":"thinking","thinking":[{"type":"text","text":"hm"}]},{"type":"text","text":"4"}]}}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let t = mistral()
            .chat_response(&req(json!({"messages": []})), "m", body)
            .unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": "4", "reasoning_content": "hm"})
        );
        let wire = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":[{\"type\":\"text\",\"text\":\"hm\"}]}]},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n";
        let (ev, _) = stream(&mistral(), false, wire);
        assert_eq!(
            ev[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": null, "reasoning_content": "hm"})
        );
    }

    #[test]
    fn mistral_finish_reasons() {
        let body = |r: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"finish_reason":"{r}","message":{{"role":"assistant","content":"a"}}}}]}}"#
            )
        };
        let r = req(json!({"messages": []}));
        let t = mistral()
            .chat_response(&r, "m", body("model_length").as_bytes())
            .unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        let f = mistral()
            .chat_response(&r, "m", body("error").as_bytes())
            .unwrap_err();
        assert!(f.retryable() && f.kind == FailureKind::Status(500));
        let mut t = mistral().stream_translator(&req(json!({"messages": [], "stream": true})), "m");
        let err = t.feed(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"error\"}]}\n\n",
            &mut BytesMut::new(),
        );
        assert!(
            err.is_err(),
            "a failed generation fails the attempt before output"
        );
    }

    #[test]
    fn usage_on_the_last_content_chunk_is_moved_or_stripped() {
        let wire = b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11,\"num_cached_tokens\":4}}\n\ndata: [DONE]\n\n";
        let (ev, usage) = stream(&mistral(), false, wire);
        assert_eq!(ev.len(), 2);
        assert!(ev[0].get("usage").is_none(), "not asked: no usage");
        assert_eq!(
            usage.unwrap().prompt_tokens_details.unwrap().cached_tokens,
            Some(4)
        );
        let (ev, _) = stream(&mistral(), true, wire);
        assert_eq!(ev.len(), 3);
        assert!(ev[0].get("usage").is_none());
        assert_eq!(ev[1]["choices"], json!([]));
        assert_eq!(ev[1]["id"], "c");
        assert_eq!(ev[1]["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(ev[2], "[DONE]");
    }

    // --- deepseek ------------------------------------------------------------------------

    #[test]
    fn deepseek_cache_hits_become_cached_tokens_and_complete_bodies_stay_byte_exact() {
        let r = req(json!({"messages": []}));
        let lacking = br#"{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"4","reasoning_content":"r"}}],"usage":{"prompt_tokens":1290,"completion_tokens":30,"total_tokens":1320,"prompt_cache_hit_tokens":1280,"prompt_cache_miss_tokens":10}}"#;
        let t = deepseek().chat_response(&r, "m", lacking).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1280);
        assert_eq!(
            v["usage"]["prompt_cache_hit_tokens"], 1280,
            "provider fields kept"
        );
        assert_eq!(v["choices"][0]["message"]["reasoning_content"], "r");
        assert_eq!(t.usage.unwrap().token_counts().cache_read, 1280);
        let whole = br#"{"choices":[],"usage":{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":0}}"#;
        assert_eq!(
            &deepseek().chat_response(&r, "m", whole).unwrap().body[..],
            &whole[..]
        );
        let wire = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6,\"prompt_cache_hit_tokens\":4}}\n\ndata: [DONE]\n\n";
        let (ev, usage) = stream(&deepseek(), true, wire);
        assert_eq!(ev[0]["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(
            usage.unwrap().prompt_tokens_details.unwrap().cached_tokens,
            Some(4)
        );
    }

    #[test]
    fn deepseek_402_is_permanent_insufficient_quota() {
        let body = br#"{"error":{"message":"Insufficient Balance","type":"unknown_error","param":null,"code":"invalid_request_error"}}"#;
        let f = deepseek().error(402, &http::HeaderMap::new(), body);
        assert!(!f.retryable() && f.permanent);
        assert_eq!(
            (f.code(), f.message.as_str()),
            (Some("insufficient_quota"), "Insufficient Balance")
        );
        let e = GatewayError::Upstream {
            failure: f,
            attempts: 1,
        };
        assert_eq!((e.status(), e.code().as_str()), (402, "insufficient_quota"));
    }

    #[test]
    fn deepseek_parameters() {
        let e = refused(&deepseek(), json!({"messages": [USER()], "n": 2}));
        assert_eq!(e.param().as_deref(), Some("n"));
        let schema = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {}}});
        let e = refused(
            &deepseek(),
            json!({"messages": [USER()], "response_format": schema}),
        );
        assert_eq!(e.param().as_deref(), Some("response_format"));
        let r = json!({"messages": [USER()], "temperature": 0.2, "top_p": 0.9, "presence_penalty": 1, "max_completion_tokens": 5});
        let body = sent(&deepseek(), r.clone(), "deepseek-reasoner");
        assert!(
            body.get("temperature").is_none()
                && body.get("top_p").is_none()
                && body.get("presence_penalty").is_none()
        );
        assert_eq!(body["max_tokens"], 5);
        let body = sent(&deepseek(), r, "deepseek-chat");
        assert_eq!(
            body["temperature"], 0.2,
            "sampling kept outside thinking mode"
        );
        let e = a_thinking_logprobs();
        assert_eq!(e.param().as_deref(), Some("logprobs"));
    }

    fn a_thinking_logprobs() -> GatewayError {
        refused(
            &deepseek(),
            json!({"messages": [USER()], "logprobs": true, "thinking": {"type": "enabled"}}),
        )
    }

    #[test]
    fn developer_messages_are_system_messages_off_openai() {
        let r = json!({"messages": [{"role": "developer", "content": "d"}, USER()]});
        for a in [
            deepseek(),
            compatible(),
            adapter(
                "qwen",
                "https://dashscope.aliyuncs.com/compatible-mode/v1",
                json!({}),
            ),
        ] {
            assert_eq!(sent(&a, r.clone(), "m")["messages"][0]["role"], "system");
        }
        assert_eq!(
            sent(&azure("2024-10-21"), r, "m")["messages"][0]["role"],
            "developer"
        );
    }

    #[test]
    fn deepseek_reasoning_content_is_replayed() {
        let body = sent(
            &deepseek(),
            json!({"messages": [USER(), {"role": "assistant", "content": "a", "reasoning_content": "why"}, USER()]}),
            "deepseek-reasoner",
        );
        assert_eq!(body["messages"][1]["reasoning_content"], "why");
    }

    #[test]
    fn keep_alive_comments_are_held_until_output_starts() {
        let wire = b": keep-alive\n\n: keep-alive\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n: keep-alive\n\ndata: [DONE]\n\n";
        let r = req(json!({"messages": [], "stream": true}));
        let mut t = deepseek().stream_translator(&r, "m");
        let mut out = BytesMut::new();
        let data_at = 2 * b": keep-alive\n\n".len();
        t.feed(&wire[..data_at + 3], &mut out).unwrap();
        assert!(out.is_empty(), "nothing commits the response before data");
        t.feed(&wire[data_at + 3..], &mut out).unwrap();
        t.finish(&mut out).unwrap();
        assert_eq!(&out[..], &wire[data_at..], "after that, bytes pass");
    }

    #[test]
    fn deepseek_insufficient_resources_fail_over() {
        let body = br#"{"choices":[{"index":0,"finish_reason":"insufficient_system_resource","message":{"role":"assistant","content":""}}]}"#;
        let f = deepseek()
            .chat_response(&req(json!({"messages": []})), "m", body)
            .unwrap_err();
        assert!(f.retryable() && f.kind == FailureKind::Status(503));
    }

    // --- qwen ----------------------------------------------------------------------------

    #[test]
    fn qwen_request_keeps_vendor_fields_and_asks_for_usage() {
        let base = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1";
        let a = adapter("qwen", base, json!({}));
        let up = a
            .chat_request(
                &req(json!({"messages": [USER()], "stream": true, "enable_thinking": true, "thinking_budget": 50, "max_completion_tokens": 9})),
                "qwen-plus",
            )
            .unwrap();
        assert_eq!(up.path, "/compatible-mode/v1/chat/completions");
        assert!(up
            .headers
            .contains(&("authorization".into(), "Bearer sk-secret-9876".into())));
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(
            (&body["enable_thinking"], &body["thinking_budget"]),
            (&json!(true), &json!(50))
        );
        assert_eq!(body["max_tokens"], 9);
    }

    #[test]
    fn qwen_moderation_and_arrears_are_permanent() {
        let a = adapter(
            "qwen",
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
            json!({}),
        );
        let body = br#"{"error":{"message":"Input data may contain inappropriate content.","type":"data_inspection_failed","param":null,"code":"data_inspection_failed"},"request_id":"6b1c"}"#;
        let f = a.error(400, &http::HeaderMap::new(), body);
        assert_eq!((f.code(), f.permanent), (Some("content_filter"), true));
        let e = GatewayError::Upstream {
            failure: f,
            attempts: 1,
        };
        assert_eq!((e.status(), e.code().as_str()), (400, "content_filter"));
        let f = a.error(403, &http::HeaderMap::new(), br#"{"code":"Arrearage","message":"Access denied, please make sure your account is in good standing.","request_id":"r"}"#);
        assert_eq!((f.code(), f.permanent), (Some("insufficient_quota"), true));
        assert!(f.message.starts_with("Access denied"));
    }

    // --- azure ---------------------------------------------------------------------------

    #[test]
    fn azure_addresses_the_deployment_with_api_key() {
        let a = azure("2024-10-21");
        let up = a
            .chat_request(
                &req(json!({"messages": [USER()], "stream": true})),
                "gpt 4o/prod",
            )
            .unwrap();
        assert_eq!(
            up.path,
            "/openai/deployments/gpt%204o%2Fprod/chat/completions?api-version=2024-10-21"
        );
        assert!(up
            .headers
            .contains(&("api-key".into(), "sk-secret-9876".into())));
        assert!(!up.headers.iter().any(|(k, _)| k == "authorization"));
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        let probe = a.probe_request("gpt-4o");
        assert_eq!(
            (probe.method, probe.path.as_str()),
            ("GET", "/openai/models?api-version=2024-10-21")
        );
        let v1 = adapter(
            "azure_openai",
            "https://res.openai.azure.com/openai/v1",
            json!({"api_version": "preview"}),
        );
        assert_eq!(
            v1.chat_request(&req(json!({"messages": [USER()]})), "dep")
                .unwrap()
                .path,
            "/openai/v1/chat/completions"
        );
    }

    #[test]
    fn azure_old_versions_get_no_stream_options() {
        let a = azure("2024-06-01");
        let body = sent(&a, json!({"messages": [USER()], "stream": true}), "dep");
        assert!(body.get("stream_options").is_none());
        let e = refused(
            &a,
            json!({"messages": [USER()], "stream": true, "stream_options": {"include_usage": true}}),
        );
        assert_eq!(e.param().as_deref(), Some("stream_options"));
    }

    #[test]
    fn azure_prompt_filter_chunk_is_not_a_usage_chunk() {
        let wire = b"data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\ndata: [DONE]\n\n";
        let (ev, usage) = stream(&azure("2024-10-21"), false, wire);
        assert_eq!(ev.len(), 3, "filter chunk kept, usage chunk stripped");
        assert!(ev[0].get("prompt_filter_results").is_some());
        assert_eq!(usage.unwrap().total_tokens, 6);
        let (ev, _) = stream(&azure("2024-10-21"), true, wire);
        assert_eq!(ev.len(), 4);
    }

    #[test]
    fn azure_content_filter_400_and_retry_after_ms() {
        let body = br#"{"error":{"code":"content_filter","message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","param":"prompt","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#;
        let f = azure("2024-10-21").error(400, &http::HeaderMap::new(), body);
        assert!(f.permanent && !f.retryable());
        let e = GatewayError::Upstream {
            failure: f,
            attempts: 1,
        };
        assert_eq!(
            (e.status(), e.code().as_str(), e.param().as_deref()),
            (400, "content_filter", Some("prompt"))
        );
        let mut h = http::HeaderMap::new();
        h.insert("retry-after-ms", "1500".parse().unwrap());
        let f = azure("2024-10-21").error(
            429,
            &h,
            br#"{"error":{"code":"429","message":"Rate limit"}}"#,
        );
        assert!(f.retryable());
        assert_eq!(f.retry_after, Some(std::time::Duration::from_millis(1500)));
    }

    // --- openai_compatible ---------------------------------------------------------------

    #[test]
    fn compatible_needs_no_key() {
        let up = compatible()
            .chat_request(&req(json!({"messages": [USER()]})), "llama3")
            .unwrap();
        assert!(!up.headers.iter().any(|(k, _)| k == "authorization"));
        assert_eq!(up.path, "/v1/chat/completions");
    }

    #[test]
    fn compatible_tool_calls_reported_as_stop_become_tool_calls() {
        let body = br#"{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#;
        let t = compatible()
            .chat_response(&req(json!({"messages": []})), "m", body)
            .unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let wire = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let (ev, _) = stream(&compatible(), false, wire);
        assert_eq!(ev[1]["choices"][0]["finish_reason"], "tool_calls");
        let plain = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let (ev, _) = stream(&compatible(), false, plain);
        assert_eq!(ev[0]["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn compatible_streams_without_usage_or_done_still_end_well() {
        let wire = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"}]}\n\n";
        let (ev, usage) = stream(&compatible(), true, wire);
        assert_eq!((ev.len(), usage), (2, None));
        assert_eq!(ev[1], "[DONE]", "the sentinel is supplied");
        let r = req(json!({"messages": [], "stream": true}));
        let mut t = compatible().stream_translator(&r, "m");
        let mut out = BytesMut::new();
        t.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n", &mut out).unwrap();
        assert_eq!(
            t.finish(&mut out).unwrap_err().kind,
            FailureKind::Protocol,
            "cut before a finish"
        );
    }

    #[test]
    fn compatible_error_shapes() {
        let f = compatible().error(400, &http::HeaderMap::new(), br#"{"error":{"code":400,"message":"request (9000 tokens) exceeds the available context size (4096 tokens)","type":"exceed_context_size_error"}}"#);
        assert_eq!(f.code(), Some("context_length_exceeded"));
        let f = compatible().error(400, &http::HeaderMap::new(), br#"{"object":"error","message":"bad temperature","type":"BadRequestError","param":null,"code":400}"#);
        assert_eq!(
            (f.message.as_str(), f.code()),
            ("bad temperature", Some("400"))
        );
        let f = mistral().error(422, &http::HeaderMap::new(), br#"{"detail":[{"loc":["body","temperature"],"msg":"Input should be less than or equal to 1.5 with key sk-secret-9876","type":"less_than_equal"}]}"#);
        assert_eq!(f.param(), Some("temperature"));
        assert!(
            f.message.starts_with("body.temperature: Input should be")
                && !f.message.contains("sk-secret-9876")
        );
    }
}
