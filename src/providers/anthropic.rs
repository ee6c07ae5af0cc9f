//! Anthropic Messages API (`POST /v1/messages`): every Anthropic rule lives here.
//!
//! Request: the typed [`ChatRequest`] becomes a Messages body. System and developer messages
//! are lifted into the top-level `system`, turns are merged into strict user/assistant
//! alternation, tool calls and tool results become content blocks, and every parameter is
//! either mapped, or refused with a 400 naming it (dropped instead when the provider has
//! `drop_unsupported_params: true`). Nothing changes meaning silently.
//!
//! Response: content blocks become one OpenAI message through [`openai_out`]; the
//! named-event stream is translated by a state machine keyed by content-block index
//! (providers.md §2.7). Server-tool blocks (web search, code execution, MCP, ...) have no
//! OpenAI equivalent: they are left out, the text around them is kept.
//!
//! The rules that are Claude's rather than the Messages API's (turn merging and tool pairing,
//! thinking budgets, sampling limits) are shared with Bedrock in [`super::claude`].
//!
//! Choices worth knowing (each is also a doc comment where it is made):
//! - `max_tokens` defaults to [`DEFAULT_MAX_TOKENS`] (plus the thinking budget when
//!   reasoning is on); `temperature` is clamped to Anthropic's 0–1; `top_p` is dropped when
//!   `temperature` is also set (newer Claude models reject both).
//! - `response_format: json_object` uses a forced synthetic tool ([`JSON_TOOL`]) whose input
//!   comes back as `content` with `finish_reason: stop`, streamed as content too;
//!   `json_schema` uses native `output_config.format` with the schema made strict.
//! - `reasoning_effort` becomes `thinking: {type: enabled, budget_tokens}`; thinking text
//!   comes back as `reasoning_content`. Thinking signatures cannot travel through OpenAI
//!   messages, so a continuation after tool results is sent without thinking, and
//!   `redacted_thinking` blocks (encrypted, unreadable) are not surfaced.

use super::claude::{self, Refuse, Role, Sampling, Turn};
use super::openai_out::{self, ChunkWriter, CompletionOut, FinishReason, ToolCallOut};
use super::sse::{self, SseFramer};
use super::{Adapter, BaseUrl, StreamTranslator, TranslatedResponse, UpstreamRequest};
use crate::config::ProviderConfig;
use crate::types::{
    ChatRequest, Content, ContentPart, ErrorDetail, Extra, FailureKind, GatewayError, Message,
    ResponseFormat, Stop, ToolCall, ToolChoice, ToolChoiceMode, UpstreamFailure, Usage,
};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The Messages API version header; still the only version, and the SDKs hard-code it.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the client sets neither `max_completion_tokens` nor `max_tokens`:
/// Anthropic requires one, and 4096 is within every Claude model's output limit.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The synthetic tool that carries a `response_format: json_object` answer (forced-tool
/// technique, providers.md §2.5); its input is returned as the message `content`.
pub const JSON_TOOL: &str = "json_response";
/// A tool that is never called: sent with `tool_choice: none` when the history holds tool
/// blocks but the request has no tools, because Anthropic wants `tools` whenever tool
/// blocks appear.
const HISTORY_TOOL: &str = "llmux_no_tools";
/// The user turn inserted when a conversation would otherwise start with the assistant
/// (Anthropic requires the first turn to be the user's).
pub const PLACEHOLDER_USER: &str = "(continue)";
/// The smallest thinking budget Anthropic accepts.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];
/// String formats Anthropic's structured-output grammar accepts.
const SCHEMA_FORMATS: [&str; 10] = [
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "uri",
    "ipv4",
    "ipv6",
    "uuid",
];
/// Anthropic-native request fields a client may send as extensions; passed through as sent.
const PASSTHROUGH: [&str; 4] = ["thinking", "top_k", "cache_control", "output_config"];
/// OpenAI fields about storage, routing or billing on OpenAI's side, not the answer: ignored
/// (`metadata.user_id` and `safety_identifier` feed `metadata.user_id` when `user` is absent).
const IGNORED: [&str; 6] = [
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
];

/// Adapter for one Anthropic provider (`kind: anthropic`).
pub struct AnthropicAdapter {
    name: String,
    base_path: String,
    api_key: String,
    extra_headers: Vec<(String, String)>,
    drop_unsupported: bool,
    auto_cache: bool,
}

impl AnthropicAdapter {
    /// Builds the adapter from the provider's config and resolved base URL (requests go to
    /// `{base.path}/v1/messages`). Fails on configured headers that are not valid HTTP.
    pub fn new(cfg: &ProviderConfig, base: &BaseUrl) -> Result<Self, String> {
        let mut extra_headers = Vec::with_capacity(cfg.headers.len());
        for (k, v) in &cfg.headers {
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
            extra_headers.push((k.to_ascii_lowercase(), v.clone()));
        }
        Ok(AnthropicAdapter {
            name: cfg.name.clone(),
            base_path: base.path.clone(),
            api_key: cfg
                .api_key
                .as_ref()
                .map(|k| k.expose().to_owned())
                .unwrap_or_default(),
            extra_headers,
            drop_unsupported: cfg.drop_unsupported_params,
            auto_cache: cfg.auto_cache,
        })
    }

    /// Auth and version headers; a configured header of the same name wins.
    fn headers(&self, with_body: bool) -> Vec<(String, String)> {
        let configured = |name: &str| self.extra_headers.iter().any(|(k, _)| k == name);
        let mut h = Vec::with_capacity(3 + self.extra_headers.len());
        if with_body && !configured("content-type") {
            h.push(("content-type".into(), "application/json".into()));
        }
        if !self.api_key.is_empty() && !configured("x-api-key") {
            h.push(("x-api-key".into(), self.api_key.clone()));
        }
        if !configured("anthropic-version") {
            h.push(("anthropic-version".into(), API_VERSION.into()));
        }
        h.extend(self.extra_headers.iter().cloned());
        h
    }

    /// The Messages body for `req` sent to `model` (public so tests and tools can inspect
    /// the translation without the HTTP envelope).
    pub fn request_body(&self, req: &ChatRequest, model: &str) -> Result<Value, GatewayError> {
        let cx = Ctx {
            provider: &self.name,
            drop: self.drop_unsupported,
        };
        build_body(&cx, req, model, self.auto_cache)
    }

    /// A stream translator with a fixed `created` timestamp (golden tests compare bytes).
    pub fn translator_at(&self, req: &ChatRequest, model: &str, created: u64) -> AnthropicStream {
        AnthropicStream {
            provider: self.name.clone(),
            api_key: self.api_key.clone(),
            framer: SseFramer::default(),
            writer: ChunkWriter::new("chatcmpl-anthropic", model, req.wants_stream_usage())
                .with_created(created),
            json_mode: json_object_mode(req),
            blocks: HashMap::new(),
            tool_calls: 0,
            usage: None,
            stop_reason: None,
            emitted: false,
            done: false,
        }
    }

    fn failure(&self, status: u16, kind: Option<&str>, message: &str) -> UpstreamFailure {
        map_failure(&self.name, &self.api_key, status, kind, message)
    }
}

impl Adapter for AnthropicAdapter {
    fn chat_request(
        &self,
        req: &ChatRequest,
        model: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        let body = self.request_body(req, model)?;
        let body = serde_json::to_vec(&body).map_err(|e| GatewayError::Internal {
            message: format!("could not serialise the upstream request: {e}"),
        })?;
        Ok(UpstreamRequest {
            method: "POST",
            path: format!("{}/v1/messages", self.base_path),
            headers: self.headers(true),
            body: Bytes::from(body),
        })
    }

    fn chat_response(
        &self,
        req: &ChatRequest,
        model: &str,
        body: &[u8],
    ) -> Result<TranslatedResponse, UpstreamFailure> {
        let msg: WireMessage = serde_json::from_slice(body).map_err(|e| {
            UpstreamFailure::new(
                &self.name,
                FailureKind::Protocol,
                format!("the provider's response is not an Anthropic message: {e}"),
            )
        })?;
        if msg.kind.as_deref() == Some("error") {
            let (kind, message) = msg.error.map(|e| (e.kind, e.message)).unwrap_or_default();
            let status = status_of(kind.as_deref());
            return Err(self.failure(status, kind.as_deref(), message.as_deref().unwrap_or("")));
        }
        let json_mode = json_object_mode(req);
        let (mut text, mut reasoning, mut tool_calls) = (String::new(), String::new(), Vec::new());
        for block in msg.content {
            match block {
                Block::Text { text: t } => text.push_str(&t),
                Block::Thinking { thinking } => reasoning.push_str(&thinking),
                Block::ToolUse { input, name, .. } if json_mode && name == JSON_TOOL => {
                    text.push_str(&input_json(&input));
                }
                Block::ToolUse { id, name, input } => tool_calls.push(ToolCallOut {
                    id,
                    name,
                    arguments: input_json(&input),
                }),
                // redacted_thinking is encrypted; server-tool blocks have no OpenAI shape.
                Block::Other => {}
            }
        }
        let finish = finish_reason(msg.stop_reason.as_deref(), !tool_calls.is_empty());
        let usage = msg.usage.unwrap_or_default().to_openai();
        let out = CompletionOut {
            id: msg.id,
            created: openai_out::now_secs(),
            model: if msg.model.is_empty() {
                model.to_owned()
            } else {
                msg.model
            },
            content: (!text.is_empty()
                || (tool_calls.is_empty() && finish != FinishReason::ContentFilter))
                .then_some(text),
            reasoning: (!reasoning.is_empty()).then_some(reasoning),
            // Anthropic explains a refusal in `stop_details`; OpenAI's field for it is `refusal`.
            refusal: (finish == FinishReason::ContentFilter)
                .then(|| msg.stop_details.and_then(|d| d.explanation))
                .flatten(),
            tool_calls,
            finish_reason: finish,
            usage: usage.clone(),
        };
        Ok(out.to_response(Some(usage)))
    }

    fn stream_translator(&self, req: &ChatRequest, model: &str) -> Box<dyn StreamTranslator> {
        Box::new(self.translator_at(req, model, openai_out::now_secs()))
    }

    fn error(&self, status: u16, headers: &http::HeaderMap, body: &[u8]) -> UpstreamFailure {
        let mut f = match serde_json::from_slice::<WireErrorBody>(body) {
            Ok(WireErrorBody { error, request_id }) => {
                let mut message = error.message.unwrap_or_default();
                if let Some(id) = request_id.filter(|id| !id.is_empty()) {
                    message = format!("{message} (request id {id})");
                }
                self.failure(status, error.kind.as_deref(), &message)
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                self.failure(status, None, &format!("HTTP {status}: {}", text.trim()))
            }
        };
        f.retry_after = super::retry_after(headers);
        // The SDKs' own hint: Anthropic says when retrying cannot help.
        if headers.get("x-should-retry").and_then(|v| v.to_str().ok()) == Some("false") {
            f.permanent = true;
        }
        f
    }

    fn probe_request(&self, _model: &str) -> UpstreamRequest {
        UpstreamRequest {
            method: "GET",
            path: format!("{}/v1/models", self.base_path),
            headers: self.headers(false),
            body: Bytes::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Request: OpenAI -> Anthropic
// ---------------------------------------------------------------------------------------

/// What request translation needs to know about the provider.
struct Ctx<'a> {
    provider: &'a str,
    drop: bool,
}

impl Ctx<'_> {
    /// A parameter Anthropic cannot honour: a 400 naming it, or dropped (logged) when the
    /// provider is configured with `drop_unsupported_params`.
    fn unsupported(&self, what: &str, param: &str) -> Result<(), GatewayError> {
        if self.drop {
            log::debug!(
                "provider '{}': dropping {what} (`{param}`), not supported by kind anthropic",
                self.provider
            );
            Ok(())
        } else {
            Err(GatewayError::invalid(
                format!(
                    "{what} is not supported by provider '{}' (kind anthropic)",
                    self.provider
                ),
                param,
            ))
        }
    }

    /// A request this provider cannot take in any mode (dropping would change its meaning).
    fn invalid(&self, what: &str, param: &str) -> GatewayError {
        GatewayError::invalid(
            format!("{what} (provider '{}', kind anthropic)", self.provider),
            param,
        )
    }
}

impl Refuse for Ctx<'_> {
    fn provider(&self) -> &str {
        self.provider
    }
    fn unsupported(&self, what: &str, param: &str) -> Result<(), GatewayError> {
        Ctx::unsupported(self, what, param)
    }
    fn invalid(&self, what: &str, param: &str) -> GatewayError {
        Ctx::invalid(self, what, param)
    }
}

/// `json_object`, or `json_schema` without a schema: answered through [`JSON_TOOL`].
fn json_object_mode(req: &ChatRequest) -> bool {
    match &req.response_format {
        Some(ResponseFormat::JsonObject) => true,
        Some(ResponseFormat::JsonSchema { json_schema }) => json_schema.schema.is_none(),
        _ => false,
    }
}

/// The whole OpenAI -> Anthropic request mapping; each step says which rule it follows.
fn build_body(
    cx: &Ctx,
    req: &ChatRequest,
    model: &str,
    auto_cache: bool,
) -> Result<Value, GatewayError> {
    check_unsupported(cx, req)?;
    let Conversation { system, turns } = convert_messages(cx, &req.messages)?;
    let json_mode = json_object_mode(req);
    let Tools {
        mut tools,
        mut choice,
        forced,
    } = tools_and_choice(cx, req, json_mode)?;
    if tools.is_empty() && turns.iter().any(|t| !t.calls.is_empty()) {
        tools.push(
            json!({"name": HISTORY_TOOL, "description": "Not available; never call it.",
            "input_schema": {"type": "object", "properties": {}}}),
        );
        choice = Some(json!({"type": "none"}));
    }

    // Reasoning and sampling follow Claude's rules (providers/claude.rs).
    let mut thinking = claude::thinking(cx, req)?;
    claude::leave_off_after_tool_results(cx, &mut thinking, &turns);

    // max_tokens is mandatory; OpenAI's max_completion_tokens also counts reasoning, like
    // Anthropic's max_tokens counts thinking, so the numbers carry over unchanged.
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or_else(|| {
            DEFAULT_MAX_TOKENS.saturating_add(claude::budget(&thinking).unwrap_or(0))
        });
    claude::fit_budget(cx, &mut thinking, max_tokens)?;

    // Anthropic's temperature range is 0-1 (OpenAI's 0-2), and newer models reject
    // temperature together with top_p (providers.md §14, pitfall 15).
    let mut sampling = Sampling::claude(cx, req, req.top_p);
    sampling.limit_when_thinking(
        cx,
        &thinking,
        (forced, json_mode, "`response_format` `json_object`"),
        turns.last().is_some_and(|t| t.role == Role::Assistant),
    )?;
    let Sampling {
        temperature,
        top_p,
        top_k,
    } = sampling;

    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("max_tokens".into(), max_tokens.into());
    match system.as_slice() {
        [] => {}
        [one] if one.get("cache_control").is_none() => {
            body.insert("system".into(), one["text"].clone());
        }
        _ => {
            body.insert("system".into(), Value::Array(system));
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|t| json!({"role": t.role.as_str(), "content": t.blocks}))
        .collect();
    body.insert("messages".into(), messages.into());
    if !tools.is_empty() {
        body.insert("tools".into(), tools.into());
    }
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), choice);
    }
    if let Some(t) = temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(p) = top_p {
        body.insert("top_p".into(), p.into());
    }
    if let Some(k) = top_k {
        body.insert("top_k".into(), k);
    }
    let stops: Vec<&String> = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v.iter().collect(),
    };
    let stops: Vec<&String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
    if !stops.is_empty() {
        body.insert("stop_sequences".into(), json!(stops));
    }
    let user = req.user.clone().or_else(|| {
        let from_extra = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        from_extra(req.extra.get("safety_identifier"))
            .or_else(|| from_extra(req.extra.get("metadata").and_then(|m| m.get("user_id"))))
    });
    if let Some(user) = user.filter(|u| !u.is_empty()) {
        body.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some((t, _)) = thinking {
        body.insert("thinking".into(), t);
    }
    let mut output_config = match req.extra.get("output_config") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    if let Some(ResponseFormat::JsonSchema { json_schema }) = &req.response_format {
        if let Some(schema) = &json_schema.schema {
            let mut schema = strict_schema(schema);
            if let (Some(d), Some(o)) = (&json_schema.description, schema.as_object_mut()) {
                o.entry("description").or_insert_with(|| d.clone().into());
            }
            output_config.insert(
                "format".into(),
                json!({"type": "json_schema", "schema": schema}),
            );
        }
    }
    if !output_config.is_empty() {
        body.insert("output_config".into(), output_config.into());
    }
    match req.extra.get("cache_control").filter(|v| !v.is_null()) {
        Some(cc) => {
            body.insert("cache_control".into(), cc.clone());
        }
        // auto_cache: llmux places the breakpoints, only when the client placed none.
        None if auto_cache && !body.values().any(has_cache_control) => {
            place_cache_breakpoints(&mut body, model);
        }
        None => {}
    }
    if req.stream {
        body.insert("stream".into(), true.into());
    }
    Ok(Value::Object(body))
}

/// Refuses (or drops) OpenAI parameters with no Anthropic equivalent.
fn check_unsupported(cx: &Ctx, req: &ChatRequest) -> Result<(), GatewayError> {
    match req.n {
        Some(n) if n > 1 => cx.unsupported("`n` > 1", "n")?,
        Some(0) => cx.unsupported("`n` = 0", "n")?,
        _ => {}
    }
    if req.logprobs == Some(true) {
        cx.unsupported("`logprobs`", "logprobs")?;
    }
    if req.top_logprobs.is_some_and(|k| k > 0) {
        cx.unsupported("`top_logprobs`", "top_logprobs")?;
    }
    if req.seed.is_some() {
        cx.unsupported("`seed`", "seed")?;
    }
    if req.presence_penalty.is_some_and(|p| p != 0.0) {
        cx.unsupported("`presence_penalty`", "presence_penalty")?;
    }
    if req.frequency_penalty.is_some_and(|p| p != 0.0) {
        cx.unsupported("`frequency_penalty`", "frequency_penalty")?;
    }
    for (key, value) in &req.extra {
        let set = match value {
            Value::Null => false,
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        let what = match key.as_str() {
            k if PASSTHROUGH.contains(&k) || IGNORED.contains(&k) => continue,
            "logit_bias" => "`logit_bias`",
            "audio" => "audio output (`audio`)",
            "modalities"
                if value
                    .as_array()
                    .is_some_and(|m| m.iter().any(|v| v != "text")) =>
            {
                "non-text output `modalities`"
            }
            "modalities" => continue,
            "prediction" => "predicted outputs (`prediction`)",
            "web_search_options" => "`web_search_options`",
            "verbosity" => "`verbosity`",
            "functions" | "function_call" => "the legacy `functions` API (use `tools`)",
            _ => {
                log::debug!(
                    "provider '{}': ignoring unknown request field `{key}`",
                    cx.provider
                );
                continue;
            }
        };
        if set {
            cx.unsupported(what, key)?;
        }
    }
    Ok(())
}

struct Conversation {
    system: Vec<Value>,
    turns: Vec<Turn>,
}

/// OpenAI messages -> top-level system blocks and alternating turns (providers.md §2.3), with
/// Claude's turn and tool-pairing rules ([`claude`]).
fn convert_messages(cx: &Ctx, messages: &[Message]) -> Result<Conversation, GatewayError> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m {
            Message::System { content, extra, .. } | Message::Developer { content, extra, .. } => {
                let mut blocks = text_only_blocks(cx, content, i, "system")?;
                message_cache_control(&mut blocks, extra);
                system.extend(blocks);
            }
            Message::User { content, extra, .. } => {
                let mut blocks = user_blocks(cx, content, &format!("messages[{i}].content"))?;
                message_cache_control(&mut blocks, extra);
                claude::push_turn(&mut turns, Role::User, blocks, Vec::new(), Vec::new());
            }
            Message::Assistant {
                content,
                tool_calls,
                refusal,
                extra,
                ..
            } => {
                // reasoning_content is dropped: Anthropic only accepts thinking it signed.
                let mut blocks = match content {
                    Some(c) => text_only_blocks(cx, c, i, "assistant")?,
                    None => Vec::new(),
                };
                blocks.extend(refusal.as_deref().and_then(|r| text_block(r, None)));
                let mut calls = Vec::new();
                for (j, call) in tool_calls.iter().flatten().enumerate() {
                    let param = format!("messages[{i}].tool_calls[{j}]");
                    let block = tool_use_block(cx, call, &param)?;
                    calls.push((block["id"].as_str().unwrap_or_default().to_owned(), param));
                    blocks.push(block);
                }
                message_cache_control(&mut blocks, extra);
                claude::push_turn(&mut turns, Role::Assistant, blocks, calls, Vec::new());
            }
            Message::Tool {
                content,
                tool_call_id,
                extra,
            } => {
                let id = tool_id(tool_call_id);
                let param = format!("messages[{i}].tool_call_id");
                claude::check_tool_result(cx, &turns, tool_call_id, &id, &param)?;
                let mut block = json!({"type": "tool_result", "tool_use_id": id});
                match content {
                    Content::Text(t) => {
                        let t = t.as_str();
                        if !t.trim().is_empty() {
                            block["content"] = t.into_owned().into();
                        }
                    }
                    Content::Parts(_) => {
                        let inner = user_blocks(cx, content, &format!("messages[{i}].content"))?;
                        if !inner.is_empty() {
                            block["content"] = inner.into();
                        }
                    }
                }
                if let Some(e) = extra.get("is_error").filter(|v| v.is_boolean()) {
                    block["is_error"] = e.clone();
                }
                let mut blocks = vec![block];
                message_cache_control(&mut blocks, extra);
                claude::push_turn(&mut turns, Role::User, blocks, Vec::new(), vec![id]);
            }
        }
    }
    claude::check_calls_answered(cx, &turns)?;
    claude::ensure_user_first(
        &mut turns,
        json!({"type": "text", "text": PLACEHOLDER_USER}),
    );
    claude::results_first(&mut turns, |b| b["type"] == "tool_result", |_| false);
    // A final assistant turn is a prefill, and Anthropic rejects one ending in whitespace.
    if let Some(last) = turns.last_mut().filter(|t| t.role == Role::Assistant) {
        if let Some(text) = last.blocks.last_mut().and_then(|b| b.get_mut("text")) {
            if let Some(s) = text.as_str() {
                *text = s.trim_end().into();
            }
        }
    }
    Ok(Conversation { system, turns })
}

/// A text block, or nothing for empty/whitespace-only text (Anthropic rejects those).
fn text_block(text: &str, extra: Option<&Extra>) -> Option<Value> {
    if text.trim().is_empty() {
        return None;
    }
    let mut b = json!({"type": "text", "text": text});
    if let Some(cc) = extra.and_then(cache_control) {
        b["cache_control"] = cc;
    }
    Some(b)
}

fn cache_control(extra: &Extra) -> Option<Value> {
    extra.get("cache_control").filter(|v| !v.is_null()).cloned()
}

/// A `cache_control` on a whole message (a LiteLLM-style extension) marks its last block.
fn message_cache_control(blocks: &mut [Value], extra: &Extra) {
    if let (Some(cc), Some(last)) = (cache_control(extra), blocks.last_mut()) {
        last["cache_control"] = cc;
    }
}

/// System and assistant content: text (and refusal) parts only.
fn text_only_blocks(
    cx: &Ctx,
    content: &Content,
    i: usize,
    role: &str,
) -> Result<Vec<Value>, GatewayError> {
    match content {
        Content::Text(t) => Ok(text_block(&t.as_str(), None).into_iter().collect()),
        Content::Parts(parts) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part {
                    ContentPart::Text { text, extra } => {
                        blocks.extend(text_block(text, Some(extra)))
                    }
                    ContentPart::Refusal { refusal, extra } => {
                        blocks.extend(text_block(refusal, Some(extra)))
                    }
                    _ => {
                        return Err(cx.invalid(
                            &format!("{role} messages may only hold text parts"),
                            &format!("messages[{i}].content[{j}]"),
                        ))
                    }
                }
            }
            Ok(blocks)
        }
    }
}

/// User (and tool-result) content: text, images, PDF files.
fn user_blocks(cx: &Ctx, content: &Content, param: &str) -> Result<Vec<Value>, GatewayError> {
    let parts = match content {
        Content::Text(t) => return Ok(text_block(&t.as_str(), None).into_iter().collect()),
        Content::Parts(parts) => parts,
    };
    let mut blocks = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let param = format!("{param}[{j}]");
        match part {
            ContentPart::Text { text, extra } => blocks.extend(text_block(text, Some(extra))),
            ContentPart::Refusal { refusal, extra } => {
                blocks.extend(text_block(refusal, Some(extra)))
            }
            ContentPart::ImageUrl { image_url, extra } => {
                // `detail` has no Anthropic equivalent and is not sent.
                let source = match image_source(&image_url.url) {
                    Ok(s) => s,
                    Err(Unusable::Unsupported(what)) => {
                        cx.unsupported(&what, &param)?;
                        continue;
                    }
                    Err(Unusable::Invalid(what)) => return Err(cx.invalid(&what, &param)),
                };
                let mut b = json!({"type": "image", "source": source});
                if let Some(cc) = cache_control(extra) {
                    b["cache_control"] = cc;
                }
                blocks.push(b);
            }
            ContentPart::File { file, extra } => {
                let data = file.get("file_data").and_then(Value::as_str);
                let Some(("application/pdf", data)) = data.and_then(base64_data_url) else {
                    cx.unsupported("a file part other than a base64 PDF in `file_data`", &param)?;
                    continue;
                };
                let mut b = json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}});
                if let Some(name) = file.get("filename").and_then(Value::as_str) {
                    b["title"] = name.into();
                }
                if let Some(cc) = cache_control(extra) {
                    b["cache_control"] = cc;
                }
                blocks.push(b);
            }
            ContentPart::InputAudio { .. } => cx.unsupported("audio input", &param)?,
        }
    }
    Ok(blocks)
}

/// Why an image URL cannot be sent.
enum Unusable {
    /// A valid URL Anthropic cannot take (droppable).
    Unsupported(String),
    /// Not a valid image URL at all.
    Invalid(String),
}

/// `(media type, base64 data)` of a `data:<type>[;param...];base64,<data>` URL.
fn base64_data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mut fields = meta.split(';');
    let media = fields.next()?;
    fields
        .any(|f| f.eq_ignore_ascii_case("base64"))
        .then_some((media, data))
}

fn image_source(url: &str) -> Result<Value, Unusable> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "url", "url": url}));
    }
    if !lower.starts_with("data:") {
        return Err(Unusable::Invalid(
            "an image URL must be http(s) or a base64 `data:` URL".into(),
        ));
    }
    let Some((media, data)) = base64_data_url(url) else {
        return Err(Unusable::Invalid(
            "an image `data:` URL must be base64-encoded (`data:image/png;base64,...`)".into(),
        ));
    };
    let media = match media.to_ascii_lowercase().as_str() {
        "image/jpg" => "image/jpeg".to_owned(),
        m => m.to_owned(),
    };
    if !IMAGE_TYPES.contains(&media.as_str()) {
        return Err(Unusable::Unsupported(format!(
            "image media type `{media}` (jpeg, png, gif and webp are)"
        )));
    }
    Ok(json!({"type": "base64", "media_type": media, "data": data}))
}

/// Anthropic tool ids must match `^[a-zA-Z0-9_-]+$`; other providers' ids are rewritten
/// the same way in calls and results, so pairs stay matched.
fn tool_id(id: &str) -> String {
    if id.is_empty() {
        return "toolu_empty".into();
    }
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An assistant tool call as a `tool_use` block; arguments must be a JSON object (an empty
/// string means no arguments). Invalid JSON is a 400, never a silent `{}`.
fn tool_use_block(cx: &Ctx, call: &ToolCall, param: &str) -> Result<Value, GatewayError> {
    if call.kind != "function" {
        return Err(cx.invalid(
            &format!("tool call type `{}` cannot be sent", call.kind),
            &format!("{param}.type"),
        ));
    }
    if call.function.name.is_empty() {
        return Err(cx.invalid(
            "a tool call needs a function name",
            &format!("{param}.function.name"),
        ));
    }
    let args = call.function.arguments.trim();
    let input: Value = if args.is_empty() {
        json!({})
    } else {
        serde_json::from_str(args).map_err(|e| {
            cx.invalid(
                &format!(
                    "the arguments of tool call `{}` are not valid JSON ({e})",
                    call.id
                ),
                &format!("{param}.function.arguments"),
            )
        })?
    };
    if !input.is_object() {
        return Err(cx.invalid(
            &format!(
                "the arguments of tool call `{}` must be a JSON object",
                call.id
            ),
            &format!("{param}.function.arguments"),
        ));
    }
    Ok(
        json!({"type": "tool_use", "id": tool_id(&call.id), "name": call.function.name, "input": input}),
    )
}

/// Anthropic `tool_choice` before serialisation.
enum Choice {
    Auto,
    None,
    Any,
    Tool(String),
}

impl Choice {
    fn to_json(&self, disable_parallel: bool) -> Value {
        let mut v = match self {
            Choice::Auto => json!({"type": "auto"}),
            Choice::None => return json!({"type": "none"}),
            Choice::Any => json!({"type": "any"}),
            Choice::Tool(name) => json!({"type": "tool", "name": name}),
        };
        if disable_parallel {
            v["disable_parallel_tool_use"] = true.into();
        }
        v
    }
}

struct Tools {
    tools: Vec<Value>,
    choice: Option<Value>,
    /// The model must call a tool (`any`/`tool`), which extended thinking forbids.
    forced: bool,
}

fn tools_and_choice(cx: &Ctx, req: &ChatRequest, json_mode: bool) -> Result<Tools, GatewayError> {
    let mut tools = Vec::new();
    let mut names = Vec::new();
    for (i, tool) in req.tools.iter().flatten().enumerate() {
        if tool.kind != "function" {
            cx.unsupported(
                &format!("tool type `{}`", tool.kind),
                &format!("tools[{i}].type"),
            )?;
            continue;
        }
        let f = &tool.function;
        if json_mode && f.name == JSON_TOOL {
            return Err(cx.invalid(
                &format!(
                    "the tool name `{JSON_TOOL}` is reserved for `response_format` `json_object`"
                ),
                &format!("tools[{i}].function.name"),
            ));
        }
        let param = format!("tools[{i}].function.parameters");
        let schema = match &f.parameters {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(Value::Object(o)) => match o.get("type") {
                None => {
                    let mut o = o.clone();
                    o.insert("type".into(), "object".into());
                    Value::Object(o)
                }
                Some(t) if t == "object" => Value::Object(o.clone()),
                Some(_) => {
                    return Err(cx.invalid("tool parameters must be an object schema", &param))
                }
            },
            Some(_) => {
                return Err(cx.invalid("tool parameters must be a JSON schema object", &param))
            }
        };
        let strict = f.strict == Some(true);
        let mut t = Map::new();
        t.insert("name".into(), f.name.clone().into());
        if let Some(d) = &f.description {
            t.insert("description".into(), d.clone().into());
        }
        let schema = if strict {
            strict_schema(&schema)
        } else {
            schema
        };
        t.insert("input_schema".into(), schema);
        if strict {
            t.insert("strict".into(), true.into());
        }
        if let Some(cc) = cache_control(&tool.extra).or_else(|| cache_control(&f.extra)) {
            t.insert("cache_control".into(), cc);
        }
        names.push(f.name.as_str());
        tools.push(Value::Object(t));
    }
    let has_tools = !tools.is_empty();
    let mut choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => Some(Choice::Auto),
        Some(ToolChoice::Mode(ToolChoiceMode::None)) => Some(Choice::None),
        Some(ToolChoice::Mode(ToolChoiceMode::Required)) => Some(Choice::Any),
        Some(ToolChoice::Named(n)) => Some(Choice::Tool(n.function.name.clone())),
        Some(ToolChoice::Other(_)) => {
            cx.unsupported(
                "this `tool_choice` shape (`none`, `auto`, `required` and a named function are)",
                "tool_choice",
            )?;
            None
        }
    };
    match &choice {
        Some(Choice::Any) if !has_tools && !json_mode => {
            return Err(cx.invalid(
                "`tool_choice` is `required` but there are no `tools`",
                "tool_choice",
            ))
        }
        Some(Choice::Tool(n)) if !names.contains(&n.as_str()) => {
            return Err(cx.invalid(
                &format!("`tool_choice` names `{n}`, which is not in `tools`"),
                "tool_choice",
            ))
        }
        _ => {}
    }
    if json_mode {
        tools.push(json!({"name": JSON_TOOL,
            "description": "Give your complete answer as a JSON object: the input of this tool is the answer.",
            "input_schema": {"type": "object"}}));
        // json_object means "answer in JSON": with tools offered, the model may still call
        // one of them instead (`any`); otherwise the JSON tool is forced.
        choice = Some(match choice {
            Some(Choice::Tool(n)) => Choice::Tool(n),
            Some(Choice::Any | Choice::Auto) | None if has_tools => Choice::Any,
            _ => Choice::Tool(JSON_TOOL.into()),
        });
    } else if !has_tools {
        choice = None;
    }
    let forced_json = matches!(&choice, Some(Choice::Tool(n)) if n == JSON_TOOL);
    let disable_parallel = req.parallel_tool_calls == Some(false) || forced_json;
    let forced = matches!(choice, Some(Choice::Any | Choice::Tool(_)));
    let choice = match choice {
        Some(c) => Some(c.to_json(disable_parallel)),
        None if disable_parallel && has_tools => Some(Choice::Auto.to_json(true)),
        None => None,
    };
    Ok(Tools {
        tools,
        choice,
        forced,
    })
}

/// The shortest prefix Anthropic caches for a model, in tokens (providers.md §2.9); below it
/// a breakpoint is silently ignored, so llmux does not place one.
pub(crate) fn min_cacheable_tokens(model: &str) -> u64 {
    let m = model.to_ascii_lowercase();
    if ["opus-5", "fable-5", "mythos-5"]
        .iter()
        .any(|k| m.contains(k))
    {
        512
    } else if ["opus-4-5", "opus-4-6", "opus-4-7", "haiku-4-5"]
        .iter()
        .any(|k| m.contains(k))
    {
        4096
    } else if m.contains("haiku-3") || m.contains("3-haiku") || m.contains("3-5-haiku") {
        2048
    } else {
        1024
    }
}

/// A rough token count of a JSON value (4 characters a token), for breakpoint placement.
fn approx_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.len() as u64 / 4,
        Value::Array(a) => a.iter().map(approx_tokens).sum(),
        Value::Object(o) => o.values().map(approx_tokens).sum(),
        _ => 0,
    }
}

/// Marks the last block of `content` (a string is turned into one text block first).
fn mark_last_block(content: &mut Value) -> bool {
    if let Value::String(s) = content {
        *content = json!([{"type": "text", "text": s.clone()}]);
    }
    match content
        .as_array_mut()
        .and_then(|a| a.last_mut())
        .and_then(Value::as_object_mut)
    {
        Some(block) => {
            block.insert("cache_control".into(), json!({"type": "ephemeral"}));
            true
        }
        None => false,
    }
}

/// `auto_cache`: up to three breakpoints in Anthropic's cache order (tools → system →
/// messages) — after the tools, after the system prompt, and at the end of the stable
/// conversation prefix (everything before the newest turn, which the next request repeats)
/// — each only once the prefix up to it is long enough to be cached (at most 4 allowed).
fn place_cache_breakpoints(body: &mut Map<String, Value>, model: &str) {
    let min = min_cacheable_tokens(model);
    let mut prefix = 0u64;
    if let Some(tools) = body.get_mut("tools").and_then(Value::as_array_mut) {
        prefix += tools.iter().map(approx_tokens).sum::<u64>();
        if prefix >= min {
            if let Some(last) = tools.last_mut().and_then(Value::as_object_mut) {
                last.insert("cache_control".into(), json!({"type": "ephemeral"}));
            }
        }
    }
    if let Some(system) = body.get_mut("system") {
        prefix += approx_tokens(system);
        if prefix >= min {
            mark_last_block(system);
        }
    }
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        let stable = messages.len().saturating_sub(1);
        prefix += messages[..stable].iter().map(approx_tokens).sum::<u64>();
        if stable > 0 && prefix >= min {
            if let Some(content) = messages[stable - 1].get_mut("content") {
                mark_last_block(content);
            }
        }
    }
}

fn has_cache_control(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.contains_key("cache_control") || o.values().any(has_cache_control),
        Value::Array(a) => a.iter().any(has_cache_control),
        _ => false,
    }
}

/// Rewrites a JSON schema into the subset Anthropic's structured-output grammar accepts
/// (providers.md §2.5, pitfall 12): every object gets `additionalProperties: false`,
/// `oneOf` becomes `anyOf`, and constraints the grammar rejects (numeric bounds, string
/// lengths, `pattern`, unknown formats, `minItems` > 1, ...) move into `description`, so the
/// model still reads them; validate client-side if they matter.
pub fn strict_schema(schema: &Value) -> Value {
    let Value::Object(src) = schema else {
        return schema.clone();
    };
    let mut rest = src.clone();
    let mut out = Map::new();
    for defs in ["$defs", "definitions"] {
        if let Some(Value::Object(d)) = rest.remove(defs) {
            let d: Map<String, Value> = d
                .iter()
                .map(|(k, v)| (k.clone(), strict_schema(v)))
                .collect();
            out.insert(defs.into(), d.into());
        }
    }
    rest.remove("$schema");
    rest.remove("$id");
    if let Some(r) = rest.remove("$ref") {
        out.insert("$ref".into(), r);
        if let Some(d) = rest.remove("description") {
            out.insert("description".into(), d);
        }
        return Value::Object(out);
    }
    for (key, to) in [("anyOf", "anyOf"), ("oneOf", "anyOf"), ("allOf", "allOf")] {
        if let Some(Value::Array(items)) = rest.remove(key) {
            let mut items: Vec<Value> = items.iter().map(strict_schema).collect();
            if let Some(Value::Array(existing)) = out.remove(to) {
                items.splice(0..0, existing);
            }
            out.insert(to.into(), items.into());
        }
    }
    for key in ["type", "enum", "const", "description", "title"] {
        if let Some(v) = rest.remove(key) {
            out.insert(key.into(), v);
        }
    }
    let declared = out.get("type").cloned();
    let is = |t: &str| match &declared {
        Some(Value::String(s)) => s == t,
        Some(Value::Array(a)) => a.iter().any(|x| x == t),
        _ => false,
    };
    if is("object") || rest.contains_key("properties") {
        let props: Map<String, Value> = match rest.remove("properties") {
            Some(Value::Object(p)) => p
                .iter()
                .map(|(k, v)| (k.clone(), strict_schema(v)))
                .collect(),
            _ => Map::new(),
        };
        out.insert("properties".into(), props.into());
        if let Some(r) = rest.remove("required") {
            out.insert("required".into(), r);
        }
        rest.remove("additionalProperties");
        out.insert("additionalProperties".into(), false.into());
    }
    if is("array") || rest.contains_key("items") {
        if let Some(items) = rest.remove("items") {
            out.insert("items".into(), strict_schema(&items));
        }
        if let Some(n) = rest.remove("minItems") {
            if n == 0 || n == 1 {
                out.insert("minItems".into(), n);
            } else {
                rest.insert("minItems".into(), n);
            }
        }
    }
    if is("string") {
        if let Some(f) = rest.remove("format") {
            if f.as_str().is_some_and(|f| SCHEMA_FORMATS.contains(&f)) {
                out.insert("format".into(), f);
            } else {
                rest.insert("format".into(), f);
            }
        }
    }
    if !rest.is_empty() {
        let hint = rest
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let description = match out.get("description").and_then(Value::as_str) {
            Some(d) => format!("{d}\n\n{{{hint}}}"),
            None => format!("{{{hint}}}"),
        };
        out.insert("description".into(), description.into());
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------
// Response: Anthropic -> OpenAI
// ---------------------------------------------------------------------------------------

/// The parts of an Anthropic message (or error) body llmux reads.
#[derive(Deserialize)]
struct WireMessage {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_details: Option<StopDetails>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct StopDetails {
    #[serde(default)]
    explanation: Option<String>,
}

/// A content block; anything that is not text, a client tool call or thinking is `Other`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    #[serde(other)]
    Other,
}

/// Anthropic usage; every field optional because stream events repeat only some of them.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct OutputDetails {
    #[serde(default)]
    thinking_tokens: Option<u64>,
}

impl WireUsage {
    /// Later counts replace earlier ones: Anthropic's stream counts are cumulative.
    fn update(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
        self.output_tokens_details = later.output_tokens_details.or(self.output_tokens_details);
    }

    /// providers.md §11.2: `input_tokens` excludes both cache counts; thinking is already
    /// inside `output_tokens`, and its share is reported when Anthropic gives it.
    fn to_openai(self) -> Usage {
        openai_out::usage(
            self.input_tokens.unwrap_or(0),
            self.cache_read_input_tokens.unwrap_or(0),
            self.cache_creation_input_tokens.unwrap_or(0),
            self.output_tokens.unwrap_or(0),
            self.output_tokens_details.and_then(|d| d.thinking_tokens),
        )
    }
}

/// Tool input as OpenAI `arguments` text (`{}` for none).
fn input_json(input: &Value) -> String {
    match input {
        Value::Null => "{}".into(),
        v => v.to_string(),
    }
}

/// providers.md §2.6: `tool_use` is `tool_calls` only when a client tool was called (the
/// JSON tool answers with `stop`); `pause_turn` (a server-tool turn Anthropic wants
/// resent) is reported as `length`, i.e. incomplete; unknown reasons count as `stop`.
fn finish_reason(stop_reason: Option<&str>, has_tool_calls: bool) -> FinishReason {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded" | "pause_turn") => FinishReason::Length,
        Some("refusal") => FinishReason::ContentFilter,
        _ if has_tool_calls => FinishReason::ToolCalls,
        Some("end_turn" | "stop_sequence" | "tool_use") | None => FinishReason::Stop,
        Some(other) => {
            log::debug!("unknown Anthropic stop_reason `{other}` reported as `stop`");
            FinishReason::Stop
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireErrorBody {
    error: WireError,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The HTTP status an error type comes with (for errors inside a 200 stream).
fn status_of(kind: Option<&str>) -> u16 {
    match kind {
        Some("invalid_request_error") => 400,
        Some("authentication_error") => 401,
        Some("billing_error") => 402,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        Some("request_too_large") => 413,
        Some("rate_limit_error") => 429,
        Some("timeout_error") => 504,
        Some("overloaded_error") => 529,
        _ => 500,
    }
}

/// Anthropic's error vocabulary in OpenAI's words (providers.md §2.8, §11.3).
fn map_failure(
    provider: &str,
    api_key: &str,
    status: u16,
    kind: Option<&str>,
    message: &str,
) -> UpstreamFailure {
    let lower = message.to_ascii_lowercase();
    let too_long = [
        "prompt is too long",
        "context limit",
        "context window",
        "too many tokens",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let (error_type, code) = match kind {
        Some("invalid_request_error") if too_long => {
            ("invalid_request_error", "context_length_exceeded")
        }
        Some("invalid_request_error") => ("invalid_request_error", "invalid_request_error"),
        Some("authentication_error") => ("authentication_error", "invalid_api_key"),
        Some("billing_error") => ("insufficient_quota", "insufficient_quota"),
        Some("permission_error") => ("permission_error", "permission_denied"),
        Some("not_found_error") if lower.contains("model") => {
            ("invalid_request_error", "model_not_found")
        }
        Some("not_found_error") => ("invalid_request_error", "not_found"),
        Some("request_too_large") => ("invalid_request_error", "request_too_large"),
        Some("rate_limit_error") => ("rate_limit_error", "rate_limit_exceeded"),
        Some("timeout_error") => ("timeout_error", "timeout"),
        Some("overloaded_error") => ("server_error", "overloaded"),
        Some("api_error") => ("server_error", "server_error"),
        Some(other) => (other, other),
        None => ("upstream_error", "upstream_error"),
    };
    let mut f = UpstreamFailure::new(
        provider,
        FailureKind::Status(status),
        super::scrub_secret(
            if message.is_empty() {
                "the provider gave no message"
            } else {
                message
            },
            api_key,
        ),
    );
    f.detail = kind.map(|_| {
        Box::new(ErrorDetail {
            error_type: Some(error_type.to_owned()),
            code: Some(code.to_owned()),
            param: None,
        })
    });
    // An empty balance does not refill by retrying.
    f.permanent = kind == Some("billing_error");
    f
}

// ---------------------------------------------------------------------------------------
// Stream: named SSE events -> OpenAI chunks
// ---------------------------------------------------------------------------------------

/// One stream event; unknown event types (future ones included) are `Other` and ignored.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: Block,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u64,
    },
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    #[serde(other)]
    Other,
}

/// `content_block_delta` with a `text_delta`, most of a stream's events, read from borrowed
/// text: the general [`Event`] is internally tagged, which makes serde buffer every field
/// (and copy every string) before it can pick the variant. Anything else fails to parse
/// here and takes the general path.
#[derive(Deserialize)]
struct TextDeltaEvent<'a> {
    index: u64,
    #[serde(borrow)]
    delta: TextDeltaBody<'a>,
}

#[derive(Deserialize)]
struct TextDeltaBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    /// signature_delta, citations_delta and anything newer.
    #[serde(other)]
    Other,
}

/// What an open content block turns into.
enum BlockState {
    Text,
    Thinking,
    /// A client tool call with its OpenAI index; `input` is the block-start input, sent
    /// when no argument fragment followed (so arguments are never empty text).
    Tool {
        index: usize,
        streamed: bool,
        input: Value,
    },
    /// The `json_object` tool: its input is the answer, streamed as content.
    JsonAnswer {
        streamed: bool,
        input: Value,
    },
    /// Redacted thinking and server-tool blocks.
    Ignored,
}

/// Translates one Anthropic stream (providers.md §2.7) into OpenAI chunks.
pub struct AnthropicStream {
    provider: String,
    api_key: String,
    framer: SseFramer,
    writer: ChunkWriter,
    json_mode: bool,
    blocks: HashMap<u64, BlockState>,
    /// Client tool calls started so far (the next OpenAI tool index).
    tool_calls: usize,
    usage: Option<WireUsage>,
    stop_reason: Option<String>,
    /// Whether any byte went to the client: after that an error is an event, not a failover.
    emitted: bool,
    /// `message_stop` (or an error event) was translated; everything after is ignored.
    done: bool,
}

impl AnthropicStream {
    fn handle(&mut self, event: &[u8], out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if self.done {
            return Ok(());
        }
        let (_, data) = sse::parse_event(event);
        let data = data.trim_ascii();
        if data.is_empty() {
            return Ok(()); // comments, keep-alives
        }
        let before = out.len();
        if data.starts_with(br#"{"type":"content_block_delta""#) {
            if let Ok(e) = serde_json::from_slice::<TextDeltaEvent<'_>>(data) {
                if e.delta.kind == "text_delta" {
                    // As `Event::ContentBlockDelta` with a `TextDelta` below.
                    if !matches!(self.blocks.get(&e.index), Some(BlockState::Ignored)) {
                        self.writer.content(out, &e.delta.text);
                    }
                    self.emitted |= out.len() > before;
                    return Ok(());
                }
            }
        }
        let event: Event = match serde_json::from_slice(data) {
            Ok(e) => e,
            Err(e) => {
                let f = UpstreamFailure::new(
                    &self.provider,
                    FailureKind::Protocol,
                    format!("the provider sent a stream event that is not Anthropic's: {e}"),
                );
                return self.fail(f, out);
            }
        };
        match event {
            Event::MessageStart { message } => {
                // The role chunk waits for the first output, so an error right after
                // message_start (a common overload pattern) can still fail over.
                let id = (!message.id.is_empty()).then_some(message.id.as_str());
                let model = (!message.model.is_empty()).then_some(message.model.as_str());
                self.writer.set_identity(id, model);
                self.usage = Some(message.usage.unwrap_or_default());
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => {
                let state = match content_block {
                    Block::Text { text } => {
                        self.writer.content(out, &text);
                        BlockState::Text
                    }
                    Block::Thinking { thinking } => {
                        self.writer.reasoning(out, &thinking);
                        BlockState::Thinking
                    }
                    Block::ToolUse { input, name, .. } if self.json_mode && name == JSON_TOOL => {
                        BlockState::JsonAnswer {
                            streamed: false,
                            input,
                        }
                    }
                    Block::ToolUse { id, name, input } => {
                        let index = self.tool_calls;
                        self.tool_calls += 1;
                        // Never the block-start `{}` placeholder: arguments start empty.
                        self.writer.tool_call_start(out, index, &id, &name, "");
                        BlockState::Tool {
                            index,
                            streamed: false,
                            input,
                        }
                    }
                    Block::Other => BlockState::Ignored,
                };
                self.blocks.insert(index, state);
            }
            Event::ContentBlockDelta { index, delta } => {
                let state = self.blocks.get_mut(&index);
                match (delta, state) {
                    (_, Some(BlockState::Ignored)) | (BlockDelta::Other, _) => {}
                    (BlockDelta::TextDelta { text }, _) => self.writer.content(out, &text),
                    (BlockDelta::ThinkingDelta { thinking }, _) => {
                        self.writer.reasoning(out, &thinking)
                    }
                    (BlockDelta::InputJsonDelta { partial_json }, Some(state)) => match state {
                        BlockState::Tool {
                            index, streamed, ..
                        } => {
                            *streamed |= !partial_json.is_empty();
                            self.writer.tool_call_args(out, *index, &partial_json);
                        }
                        BlockState::JsonAnswer { streamed, .. } => {
                            *streamed |= !partial_json.is_empty();
                            self.writer.content(out, &partial_json);
                        }
                        _ => {}
                    },
                    (BlockDelta::InputJsonDelta { .. }, None) => {}
                }
            }
            Event::ContentBlockStop { index } => match self.blocks.get(&index) {
                Some(BlockState::Tool {
                    index,
                    streamed: false,
                    input,
                }) => {
                    let (index, args) = (*index, input_json(input));
                    self.writer.tool_call_args(out, index, &args);
                }
                Some(BlockState::JsonAnswer {
                    streamed: false,
                    input,
                }) => {
                    let args = input_json(input);
                    self.writer.content(out, &args);
                }
                _ => {}
            },
            Event::MessageDelta { delta, usage } => {
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
                if let Some(u) = usage {
                    self.usage.get_or_insert_with(WireUsage::default).update(u);
                }
            }
            Event::MessageStop => {
                let reason = finish_reason(self.stop_reason.as_deref(), self.tool_calls > 0);
                self.writer.finish(out, reason);
                let usage = self.usage.map(WireUsage::to_openai);
                self.writer.end(out, usage.as_ref());
                self.done = true;
            }
            Event::Error { error } => {
                let status = status_of(error.kind.as_deref());
                let message = error.message.unwrap_or_default();
                let f = map_failure(
                    &self.provider,
                    &self.api_key,
                    status,
                    error.kind.as_deref(),
                    &message,
                );
                return self.fail(f, out);
            }
            Event::Other => {}
        }
        self.emitted |= out.len() > before;
        Ok(())
    }

    /// Before any output the failure goes back to the proxy (which may fail over); after
    /// it, the client gets an OpenAI error event and `[DONE]`.
    fn fail(&mut self, f: UpstreamFailure, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if !self.emitted {
            return Err(f);
        }
        let error = json!({"error": {
            "message": f.message,
            "type": f.error_type().unwrap_or("server_error"),
            "param": null,
            "code": f.code(),
        }});
        sse::data_event(out, error.to_string().as_bytes());
        out.extend_from_slice(sse::DONE);
        self.done = true;
        Ok(())
    }
}

impl StreamTranslator for AnthropicStream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        self.framer.push(chunk);
        while let Some(event) = self.framer.next_event() {
            self.handle(&event, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if let Some(rest) = self.framer.take_rest() {
            // A last event without its blank line is still an event.
            self.handle(&rest, out)?;
        }
        if self.done {
            Ok(())
        } else {
            Err(UpstreamFailure::new(
                &self.provider,
                FailureKind::Protocol,
                "the provider ended the stream before `message_stop`",
            ))
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.map(WireUsage::to_openai)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn adapter_with(extra: Value) -> AnthropicAdapter {
        let mut cfg = json!({"name": "claude", "kind": "anthropic", "base_url": "https://api.anthropic.com",
            "api_key": "sk-ant-secret-1234", "headers": {"anthropic-beta": "context-1m-2025-08-07"}});
        if let (Some(c), Value::Object(e)) = (cfg.as_object_mut(), extra) {
            c.extend(e);
        }
        let cfg: ProviderConfig = serde_json::from_value(cfg).unwrap();
        AnthropicAdapter::new(&cfg, &BaseUrl::parse("https://api.anthropic.com").unwrap()).unwrap()
    }

    fn adapter() -> AnthropicAdapter {
        adapter_with(json!({}))
    }

    fn request(mut v: Value) -> ChatRequest {
        if v.get("model").is_none() {
            v["model"] = "claude".into();
        }
        serde_json::from_value(v).unwrap()
    }

    fn body(v: Value) -> Value {
        adapter()
            .request_body(&request(v), "claude-sonnet-4-5")
            .unwrap()
    }

    fn body_err(a: &AnthropicAdapter, v: Value) -> GatewayError {
        a.request_body(&request(v), "m").unwrap_err()
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    fn call(id: &str, name: &str, args: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
    }

    fn response(a: &AnthropicAdapter, req: &ChatRequest, body: Value) -> Value {
        let t = a
            .chat_response(req, "m", body.to_string().as_bytes())
            .unwrap();
        serde_json::from_slice(&t.body).unwrap()
    }

    /// Feeds SSE events (built from `event: type` + data) and returns the client bytes.
    fn sse_of(events: &[Value]) -> Vec<u8> {
        events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect::<String>()
            .into_bytes()
    }

    fn run_stream(req: &ChatRequest, wire: &[u8]) -> Result<String, UpstreamFailure> {
        let mut t = adapter().translator_at(req, "m", 7);
        let mut out = BytesMut::new();
        t.feed(wire, &mut out)?;
        t.finish(&mut out)?;
        Ok(String::from_utf8(out.to_vec()).unwrap())
    }

    fn chunks(out: &str) -> Vec<Value> {
        out.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn start(id: &str) -> Value {
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "model": "claude-x", "content": [], "usage": {"input_tokens": 10, "cache_read_input_tokens": 5,
            "cache_creation_input_tokens": 0, "output_tokens": 1}}})
    }

    #[test]
    fn request_envelope_headers_and_probe() {
        let a = adapter();
        let up = a
            .chat_request(
                &request(json!({"messages": [user("hi")]})),
                "claude-sonnet-4-5",
            )
            .unwrap();
        assert_eq!((up.method, up.path.as_str()), ("POST", "/v1/messages"));
        for h in [
            ("x-api-key", "sk-ant-secret-1234"),
            ("anthropic-version", API_VERSION),
            ("content-type", "application/json"),
            ("anthropic-beta", "context-1m-2025-08-07"),
        ] {
            assert!(
                up.headers.contains(&(h.0.into(), h.1.into())),
                "{h:?} in {:?}",
                up.headers
            );
        }
        let sent: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(sent["model"], "claude-sonnet-4-5");
        assert_eq!(sent["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(
            sent["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );
        let probe = a.probe_request("claude-sonnet-4-5");
        assert_eq!((probe.method, probe.path.as_str()), ("GET", "/v1/models"));
        assert!(probe.headers.iter().any(|(k, _)| k == "x-api-key"));
        assert!(!probe.headers.iter().any(|(k, _)| k == "content-type"));
        let bad: ProviderConfig = serde_json::from_value(
            json!({"name": "c", "kind": "anthropic", "headers": {"bad header": "x"}}),
        )
        .unwrap();
        assert!(AnthropicAdapter::new(&bad, &BaseUrl::parse("http://x").unwrap()).is_err());
    }

    #[test]
    fn system_and_developer_messages_become_top_level_system_in_order() {
        let b = body(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            user("hi"),
            {"role": "developer", "content": [{"type": "text", "text": "Cite sources.", "cache_control": {"type": "ephemeral"}}]},
            user("again"),
        ]}));
        assert_eq!(
            b["system"],
            json!([{"type": "text", "text": "Be brief."},
                   {"type": "text", "text": "Cite sources.", "cache_control": {"type": "ephemeral"}}])
        );
        // The two user messages, no longer separated, merge into one turn.
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
        assert_eq!(b["messages"][0]["content"].as_array().unwrap().len(), 2);
        let single =
            body(json!({"messages": [{"role": "system", "content": "Only me."}, user("x")]}));
        assert_eq!(single["system"], "Only me.");
        let parts = request(
            json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}, user("x")]}),
        );
        assert_eq!(
            adapter()
                .request_body(&parts, "m")
                .unwrap_err()
                .param()
                .as_deref(),
            Some("messages[0].content[0]")
        );
    }

    #[test]
    fn roles_merge_alternate_and_start_with_user() {
        let b = body(json!({"messages": [
            {"role": "assistant", "content": "Hello, how can I help?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Anything?"}]},
            user("first"), user(" "), user("second"),
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": "Partial answer   "},
        ]}));
        let roles: Vec<&str> = b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
        assert_eq!(b["messages"][0]["content"][0]["text"], PLACEHOLDER_USER);
        assert_eq!(b["messages"][1]["content"].as_array().unwrap().len(), 2);
        assert_eq!(
            b["messages"][2]["content"],
            json!([{"type": "text", "text": "first"}, {"type": "text", "text": "second"}])
        );
        // A final assistant turn is a prefill; trailing whitespace would be rejected.
        assert_eq!(b["messages"][3]["content"][0]["text"], "Partial answer");
        let only_system = body(json!({"messages": [{"role": "system", "content": "s"}]}));
        assert_eq!(
            only_system["messages"][0]["content"][0]["text"],
            PLACEHOLDER_USER
        );
    }

    #[test]
    fn tool_results_grouped_in_one_user_turn_first() {
        let b = body(json!({"messages": [
            user("weather?"),
            {"role": "assistant", "content": "", "tool_calls": [call("call_a", "get", r#"{"city":"Paris"}"#), call("call.b", "get", "")]},
            {"role": "tool", "tool_call_id": "call.b", "content": "24C"},
            user("and be quick"),
            {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "18C"}], "cache_control": {"type": "ephemeral"}},
        ], "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}));
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        // An empty assistant text plus tool calls is just the tool_use blocks.
        assert_eq!(
            m[1]["content"],
            json!([{"type": "tool_use", "id": "call_a", "name": "get", "input": {"city": "Paris"}},
                   {"type": "tool_use", "id": "call_b", "name": "get", "input": {}}])
        );
        assert_eq!(
            m[2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "call_b", "content": "24C"},
                   {"type": "tool_result", "tool_use_id": "call_a", "content": [{"type": "text", "text": "18C"}], "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "and be quick"}])
        );
        assert_eq!(
            b["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
    }

    #[test]
    fn tool_pairing_errors_name_the_message() {
        let a = adapter();
        let missing = body_err(
            &a,
            json!({"messages": [user("x"),
            {"role": "assistant", "tool_calls": [call("c1", "f", "{}"), call("c2", "f", "{}")]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}, user("go on")]}),
        );
        assert_eq!(
            missing.param().as_deref(),
            Some("messages[1].tool_calls[1]")
        );
        let orphan = body_err(
            &a,
            json!({"messages": [user("x"), {"role": "tool", "tool_call_id": "nope", "content": "ok"}]}),
        );
        assert_eq!(orphan.param().as_deref(), Some("messages[1].tool_call_id"));
        let twice = body_err(
            &a,
            json!({"messages": [user("x"),
            {"role": "assistant", "tool_calls": [call("c1", "f", "{}")]},
            {"role": "tool", "tool_call_id": "c1", "content": "a"}, {"role": "tool", "tool_call_id": "c1", "content": "b"}]}),
        );
        assert_eq!(twice.status(), 400);
    }

    #[test]
    fn tool_arguments_must_be_a_json_object() {
        let a = adapter();
        for args in ["{\"city\": ", "[1,2]", "\"x\""] {
            let e = body_err(
                &a,
                json!({"messages": [user("x"),
                {"role": "assistant", "content": null, "tool_calls": [call("c1", "f", args)]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}),
            );
            assert_eq!(e.status(), 400);
            assert_eq!(
                e.param().as_deref(),
                Some("messages[1].tool_calls[0].function.arguments"),
                "{args}"
            );
            assert!(e.to_string().contains("anthropic"), "{e}");
        }
    }

    #[test]
    fn unsupported_params_are_400_or_dropped() {
        let strict = adapter();
        let lenient = adapter_with(json!({"drop_unsupported_params": true}));
        let cases = [
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"seed": 7}), "seed"),
            (json!({"presence_penalty": 0.5}), "presence_penalty"),
            (json!({"frequency_penalty": -1.0}), "frequency_penalty"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}, {"type": "text", "text": "hi"}]}]}),
                "messages[0].content[0]",
            ),
        ];
        for (extra, param) in cases {
            let mut v = json!({"messages": [user("hi")]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let e = body_err(&strict, v.clone());
            assert_eq!(e.param().as_deref(), Some(param));
            assert!(
                e.to_string()
                    .contains("not supported by provider 'claude' (kind anthropic)"),
                "{e}"
            );
            let b = lenient.request_body(&request(v), "m").unwrap();
            for key in [
                "n",
                "logprobs",
                "seed",
                "logit_bias",
                "presence_penalty",
                "modalities",
            ] {
                assert!(b.get(key).is_none(), "{key} dropped");
            }
            assert_eq!(
                b["messages"][0]["content"],
                json!([{"type": "text", "text": "hi"}])
            );
        }
        let e = body_err(&strict, json!({"messages": [user("hi")], "n": 2}));
        assert_eq!(
            e.to_string(),
            "`n` > 1 is not supported by provider 'claude' (kind anthropic)"
        );
        // Defaults that change nothing are accepted.
        let b = body(
            json!({"messages": [user("hi")], "n": 1, "logprobs": false, "presence_penalty": 0, "logit_bias": {}, "store": true, "metadata": {"a": "b"}}),
        );
        assert!(b.get("metadata").is_none());
    }

    #[test]
    fn sampling_parameters() {
        let b = body(
            json!({"messages": [user("x")], "temperature": 1.7, "top_p": 0.9, "stop": "###",
            "max_completion_tokens": 300, "max_tokens": 9, "user": "u-1", "stream": true}),
        );
        assert_eq!(b["temperature"], 1.0, "clamped to Anthropic's 0-1");
        assert!(
            b.get("top_p").is_none(),
            "top_p dropped when temperature is set"
        );
        assert_eq!(b["stop_sequences"], json!(["###"]));
        assert_eq!(b["max_tokens"], 300, "max_completion_tokens wins");
        assert_eq!(b["metadata"], json!({"user_id": "u-1"}));
        assert_eq!(b["stream"], true);
        let b = body(
            json!({"messages": [user("x")], "temperature": 0.2, "max_tokens": 9, "stop": ["a", ""]}),
        );
        assert_eq!(
            (b["temperature"].as_f64(), b["max_tokens"].as_u64()),
            (Some(0.2), Some(9))
        );
        assert_eq!(b["stop_sequences"], json!(["a"]));
        let b = body(json!({"messages": [user("x")], "top_p": 0.5}));
        assert_eq!(b["top_p"], 0.5);
        assert!(b.get("stream").is_none());
    }

    #[test]
    fn images_and_files() {
        let b = body(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/4AAQ", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}, "cache_control": {"type": "ephemeral"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        ]}]}));
        assert_eq!(
            b["messages"][0]["content"],
            json!([
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}, "cache_control": {"type": "ephemeral"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}, "title": "a.pdf"},
            ])
        );
        let svg = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}, {"type": "text", "text": "x"}]}]});
        assert_eq!(
            body_err(&adapter(), svg.clone()).param().as_deref(),
            Some("messages[0].content[0]")
        );
        let lenient = adapter_with(json!({"drop_unsupported_params": true}));
        assert_eq!(
            lenient.request_body(&request(svg), "m").unwrap()["messages"][0]["content"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // A malformed URL is the client's error in either mode.
        let bad = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}]}]});
        assert!(lenient.request_body(&request(bad), "m").is_err());
        let file_id = json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]});
        assert_eq!(
            body_err(&adapter(), file_id).param().as_deref(),
            Some("messages[0].content[0]")
        );
    }

    #[test]
    fn json_schema_becomes_strict_output_config() {
        let b = body(
            json!({"messages": [user("x")], "response_format": {"type": "json_schema", "json_schema": {
            "name": "City", "strict": true, "schema": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                "properties": {"name": {"type": "string", "minLength": 2, "description": "City name"},
                    "tags": {"type": "array", "items": {"type": "string", "format": "hex"}, "minItems": 3},
                    "where": {"oneOf": [{"type": "object", "properties": {"lat": {"type": "number", "minimum": -90}}}, {"type": "null"}]}},
                "required": ["name"], "additionalProperties": true}}}}),
        );
        assert!(b.get("tools").is_none());
        assert_eq!(
            b["output_config"],
            json!({"format": {"type": "json_schema", "schema": {
            "type": "object", "additionalProperties": false, "required": ["name"],
            "properties": {
                "name": {"type": "string", "description": "City name\n\n{minLength: 2}"},
                "tags": {"type": "array", "items": {"type": "string", "description": "{format: \"hex\"}"}, "description": "{minItems: 3}"},
                "where": {"anyOf": [{"type": "object", "properties": {"lat": {"type": "number", "description": "{minimum: -90}"}}, "additionalProperties": false}, {"type": "null"}]},
            }}}})
        );
        // Passed-through output_config (effort) merges with the format.
        let b = body(
            json!({"messages": [user("x")], "output_config": {"effort": "low"},
            "response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object", "properties": {}}}}}),
        );
        assert_eq!(b["output_config"]["effort"], "low");
        assert_eq!(
            b["output_config"]["format"]["schema"]["additionalProperties"],
            false
        );
    }

    #[test]
    fn tool_choice_mapping() {
        let tools = json!([{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": "integer", "maximum": 3}}}, "strict": true}},
            {"type": "function", "function": {"name": "g"}}]);
        let with = |choice: Value, parallel: Option<bool>| {
            let mut v = json!({"messages": [user("x")], "tools": tools, "tool_choice": choice});
            if let Some(p) = parallel {
                v["parallel_tool_calls"] = p.into();
            }
            body(v)
        };
        assert_eq!(
            with(json!("auto"), None)["tool_choice"],
            json!({"type": "auto"})
        );
        assert_eq!(
            with(json!("none"), None)["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            with(json!("required"), None)["tool_choice"],
            json!({"type": "any"})
        );
        assert_eq!(
            with(
                json!({"type": "function", "function": {"name": "g"}}),
                Some(false)
            )["tool_choice"],
            json!({"type": "tool", "name": "g", "disable_parallel_tool_use": true})
        );
        let b = with(Value::Null, Some(false));
        assert_eq!(
            b["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(b["tools"][0]["strict"], true);
        assert_eq!(
            b["tools"][0]["input_schema"]["additionalProperties"], false,
            "strict tools get strict schemas"
        );
        assert_eq!(
            b["tools"][0]["input_schema"]["properties"]["a"]["description"],
            "{maximum: 3}"
        );
        assert_eq!(
            b["tools"][1]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
        let e = body_err(
            &adapter(),
            json!({"messages": [user("x")], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "h"}}}),
        );
        assert_eq!(e.param().as_deref(), Some("tool_choice"));
        let e = body_err(
            &adapter(),
            json!({"messages": [user("x")], "tool_choice": "required"}),
        );
        assert_eq!(e.param().as_deref(), Some("tool_choice"));
        let e = body_err(
            &adapter(),
            json!({"messages": [user("x")], "tools": tools, "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}),
        );
        assert_eq!(e.param().as_deref(), Some("tool_choice"));
        // Tool history without tools in the request gets a never-callable tool.
        let b = body(
            json!({"messages": [user("x"), {"role": "assistant", "tool_calls": [call("c", "f", "{}")]},
            {"role": "tool", "tool_call_id": "c", "content": "r"}]}),
        );
        assert_eq!(b["tools"][0]["name"], HISTORY_TOOL);
        assert_eq!(b["tool_choice"], json!({"type": "none"}));
    }

    #[test]
    fn json_object_uses_a_forced_tool_answered_as_content() {
        let req =
            request(json!({"messages": [user("x")], "response_format": {"type": "json_object"}}));
        let b = adapter().request_body(&req, "m").unwrap();
        assert_eq!(b["tools"][0]["name"], JSON_TOOL);
        assert_eq!(
            b["tool_choice"],
            json!({"type": "tool", "name": JSON_TOOL, "disable_parallel_tool_use": true})
        );
        let out = response(
            &adapter(),
            &req,
            json!({"id": "msg_1", "type": "message", "model": "claude-x",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {"a": [1, 2]}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}}),
        );
        let msg = &out["choices"][0]["message"];
        assert_eq!(
            serde_json::from_str::<Value>(msg["content"].as_str().unwrap()).unwrap(),
            json!({"a": [1, 2]})
        );
        assert!(msg.get("tool_calls").is_none());
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        let wire = sse_of(&[
            start("msg_1"),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_1", "name": JSON_TOOL, "input": {}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"a\": "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "[1, 2]}"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ]);
        let out = run_stream(&req, &wire).unwrap();
        let c = chunks(&out);
        let content: String = c
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "{\"a\": [1, 2]}");
        assert!(!out.contains("tool_calls"));
        assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "stop");
        // With client tools, the model may call one of them instead of answering in JSON.
        let b = body(
            json!({"messages": [user("x")], "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}]}),
        );
        assert_eq!(b["tool_choice"], json!({"type": "any"}));
    }

    #[test]
    fn reasoning_effort_becomes_thinking() {
        let b = body(json!({"messages": [user("x")], "reasoning_effort": "medium"}));
        assert_eq!(
            b["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
        assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS + 2048);
        let b = body(
            json!({"messages": [user("x")], "reasoning_effort": "high", "max_completion_tokens": 2000, "temperature": 1}),
        );
        assert_eq!(
            b["thinking"]["budget_tokens"], 1999,
            "budget fits under max_tokens"
        );
        assert_eq!(b["temperature"], 1.0);
        let a = adapter();
        assert_eq!(
            body_err(
                &a,
                json!({"messages": [user("x")], "reasoning_effort": "low", "temperature": 0.3})
            )
            .param()
            .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            body_err(
                &a,
                json!({"messages": [user("x")], "reasoning_effort": "low", "max_tokens": 800})
            )
            .param()
            .as_deref(),
            Some("max_completion_tokens")
        );
        assert_eq!(
            body_err(
                &a,
                json!({"messages": [user("x")], "reasoning_effort": "lots"})
            )
            .param()
            .as_deref(),
            Some("reasoning_effort")
        );
        assert_eq!(body_err(&a, json!({"messages": [user("x")], "reasoning_effort": "low", "response_format": {"type": "json_object"}})).param().as_deref(), Some("response_format"));
        assert!(
            body(json!({"messages": [user("x")], "reasoning_effort": "none"}))
                .get("thinking")
                .is_none()
        );
        // Continuing after tool results: the signed thinking cannot be replayed, so no thinking.
        let b = body(
            json!({"messages": [user("x"), {"role": "assistant", "reasoning_content": "hmm", "tool_calls": [call("c", "f", "{}")]},
            {"role": "tool", "tool_call_id": "c", "content": "r"}], "reasoning_effort": "low", "tools": [{"type": "function", "function": {"name": "f"}}]}),
        );
        assert!(b.get("thinking").is_none());
        assert_eq!(
            b["messages"][1]["content"].as_array().unwrap().len(),
            1,
            "reasoning_content is not replayed"
        );
        // An explicit Anthropic `thinking` passes through.
        let b = body(
            json!({"messages": [user("x")], "thinking": {"type": "enabled", "budget_tokens": 5000}}),
        );
        assert_eq!(
            (
                b["thinking"]["budget_tokens"].as_u64(),
                b["max_tokens"].as_u64()
            ),
            (Some(5000), Some(9096))
        );
    }

    #[test]
    fn auto_cache_marks_only_unmarked_requests() {
        let a = adapter_with(json!({"auto_cache": true}));
        // Too short to be cached: no breakpoint at all.
        let b = a
            .request_body(&request(json!({"messages": [user("x")]})), "m")
            .unwrap();
        assert!(!has_cache_control(&b), "{b}");
        // Long tools, system and history: breakpoints after each, never on the newest turn.
        let long = "lorem ipsum ".repeat(500);
        let req = request(json!({
            "tools": [{"type": "function", "function": {"name": "f", "description": long, "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "system", "content": long},
                user(&long),
                {"role": "assistant", "content": "ok"},
                user("newest question"),
            ]
        }));
        let b = a.request_body(&req, "claude-sonnet-4-6").unwrap();
        assert_eq!(b["tools"][0]["cache_control"], json!({"type": "ephemeral"}));
        let system_last = b["system"]
            .as_array()
            .and_then(|s| s.last())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            system_last["cache_control"],
            json!({"type": "ephemeral"}),
            "{b}"
        );
        let msgs = b["messages"].as_array().unwrap();
        let stable_end = &msgs[msgs.len() - 2]["content"];
        assert!(has_cache_control(stable_end), "{b}");
        assert!(
            !has_cache_control(&msgs[msgs.len() - 1]),
            "never the newest turn"
        );
        let count = b.to_string().matches("cache_control").count();
        assert!(count <= 4, "{count} breakpoints");
        // Haiku 4.5 caches from 4096 tokens: tools (~1.5k) and tools+system (~3k) are too
        // short there, only the whole stable prefix (~4.5k) gets a breakpoint.
        let h = a.request_body(&req, "claude-haiku-4-5").unwrap();
        assert!(
            !has_cache_control(&h["tools"]) && !has_cache_control(&h["system"]),
            "{h}"
        );
        let hm = h["messages"].as_array().unwrap();
        assert!(has_cache_control(&hm[hm.len() - 2]));
        let marked = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]});
        assert!(a
            .request_body(&request(marked), "m")
            .unwrap()
            .get("cache_control")
            .is_none());
        assert!(body(json!({"messages": [user("x")]}))
            .get("cache_control")
            .is_none());
    }

    #[test]
    fn non_stream_response_fields() {
        let req = request(json!({"messages": [user("x")]}));
        let out = response(
            &adapter(),
            &req,
            json!({"id": "msg_9", "type": "message", "model": "claude-x",
            "content": [{"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "text", "text": "Checking "},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"q": "x"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
                {"type": "text", "text": "both."},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 230, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1920, "output_tokens": 88,
                "output_tokens_details": {"thinking_tokens": 12}}}),
        );
        assert_eq!(
            (out["id"].as_str(), out["model"].as_str()),
            (Some("msg_9"), Some("claude-x"))
        );
        let msg = &out["choices"][0]["message"];
        assert_eq!(msg["content"], "Checking both.");
        assert_eq!(msg["reasoning_content"], "Let me see.");
        assert_eq!(
            msg["tool_calls"][0],
            json!({"id": "toolu_1", "type": "function", "function": {"name": "get", "arguments": "{\"city\":\"Paris\"}"}})
        );
        assert_eq!(msg["tool_calls"][1]["function"]["arguments"], "{}");
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        let u = &out["usage"];
        assert_eq!(
            (
                u["prompt_tokens"].as_u64(),
                u["completion_tokens"].as_u64(),
                u["total_tokens"].as_u64()
            ),
            (Some(2250), Some(88), Some(2338))
        );
        assert_eq!(
            u["prompt_tokens_details"],
            json!({"cached_tokens": 1920, "cache_write_tokens": 100})
        );
        assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], 12);
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("refusal", "content_filter"),
            ("pause_turn", "length"),
        ] {
            let out = response(
                &adapter(),
                &req,
                json!({"id": "m", "content": [{"type": "text", "text": "t"}], "stop_reason": stop, "usage": {}}),
            );
            assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
        }
        assert_eq!(
            adapter()
                .chat_response(&req, "m", b"<html>oops</html>")
                .unwrap_err()
                .kind,
            FailureKind::Protocol
        );
    }

    #[test]
    fn errors_map_to_openai_vocabulary() {
        let a = adapter();
        let err = |status: u16, ty: &str, msg: &str, headers: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in headers {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let body = json!({"type": "error", "error": {"type": ty, "message": msg}, "request_id": "req_011X"});
            a.error(status, &h, body.to_string().as_bytes())
        };
        let f = err(
            529,
            "overloaded_error",
            "Overloaded",
            &[("retry-after", "3")],
        );
        assert_eq!(f.kind, FailureKind::Status(529));
        assert!(f.retryable());
        assert_eq!(
            (f.error_type(), f.code()),
            (Some("server_error"), Some("overloaded"))
        );
        assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(3)));
        assert!(f.message.contains("Overloaded") && f.message.contains("req_011X"));
        let f = err(
            429,
            "rate_limit_error",
            "slow down",
            &[("retry-after-ms", "1500")],
        );
        assert_eq!(
            (f.error_type(), f.code()),
            (Some("rate_limit_error"), Some("rate_limit_exceeded"))
        );
        assert_eq!(f.retry_after, Some(std::time::Duration::from_millis(1500)));
        assert!(f.retryable());
        let f = err(
            400,
            "invalid_request_error",
            "prompt is too long: 215000 tokens > 200000 maximum",
            &[],
        );
        assert_eq!(f.code(), Some("context_length_exceeded"));
        assert!(!f.retryable());
        let f = err(400, "invalid_request_error", "tools.0: bad", &[]);
        assert_eq!(
            (f.error_type(), f.code()),
            (Some("invalid_request_error"), Some("invalid_request_error"))
        );
        let f = err(
            401,
            "authentication_error",
            "invalid x-api-key sk-ant-secret-1234",
            &[],
        );
        assert_eq!(f.code(), Some("invalid_api_key"));
        assert!(!f.message.contains("sk-ant-secret-1234"));
        let f = err(402, "billing_error", "credit balance too low", &[]);
        assert!(!f.retryable());
        let f = err(500, "api_error", "Internal", &[("x-should-retry", "false")]);
        assert!(!f.retryable(), "x-should-retry: false wins");
        let f = a.error(502, &http::HeaderMap::new(), b"<html>bad gateway</html>");
        assert!(f.retryable() && f.message.contains("502"));
    }

    #[test]
    fn stream_translates_events_in_order() {
        let req = request(
            json!({"messages": [user("x")], "stream": true, "stream_options": {"include_usage": true}}),
        );
        let wire = sse_of(&[
            start("msg_7"),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hm."}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"q\":1}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            json!({"type": "content_block_stop", "index": 3}),
            json!({"type": "content_block_start", "index": 4, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}}),
            json!({"type": "content_block_stop", "index": 4}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 20}}),
            json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 42}}),
            json!({"type": "message_stop"}),
        ]);
        let out = run_stream(&req, &wire).unwrap();
        assert_eq!(out.matches("data: [DONE]").count(), 1);
        let c = chunks(&out);
        assert!(c
            .iter()
            .all(|c| c["id"] == "msg_7" && c["model"] == "claude-x" && c["created"] == 7));
        let deltas: Vec<&Value> = c
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|ch| &ch["delta"]))
            .collect();
        assert_eq!(*deltas[0], json!({"role": "assistant", "content": ""}));
        assert_eq!(*deltas[1], json!({"reasoning_content": "Hm."}));
        assert_eq!(*deltas[2], json!({"content": "Hi"}));
        assert_eq!(
            *deltas[3],
            json!({"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "f", "arguments": ""}}]})
        );
        assert_eq!(
            *deltas[4],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]})
        );
        assert_eq!(
            *deltas[5],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]})
        );
        assert_eq!(deltas[6]["tool_calls"][0]["index"], 1);
        assert_eq!(
            *deltas[7],
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
            "no-argument call ends as {{}}"
        );
        assert_eq!(c[c.len() - 2]["choices"][0]["finish_reason"], "tool_calls");
        let usage = &c[c.len() - 1]["usage"];
        assert_eq!(
            (
                usage["prompt_tokens"].as_u64(),
                usage["completion_tokens"].as_u64()
            ),
            (Some(15), Some(42)),
            "last cumulative output count"
        );
        assert_eq!(c[c.len() - 1]["choices"], json!([]));
        // Without include_usage there is no usage chunk.
        let out = run_stream(
            &request(json!({"messages": [user("x")], "stream": true})),
            &wire,
        )
        .unwrap();
        assert!(!out.contains("\"usage\""));
    }

    #[test]
    fn text_deltas_take_the_borrowed_path_with_the_same_result() {
        let req = request(json!({"messages": [user("x")], "stream": true}));
        // As Anthropic writes them: `type` first, escapes in the text.
        let wire = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\\\"b\\u00e9\\n\"}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"z\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"hidden\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"t\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let out = run_stream(&req, wire.as_bytes()).unwrap();
        let deltas: Vec<Value> = chunks(&out)
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|ch| ch["delta"].clone()))
            .collect();
        assert_eq!(deltas[1], json!({"content": "a\"b\u{e9}\n"}));
        assert_eq!(
            deltas[2],
            json!({"reasoning_content": "t"}),
            "a block llmux ignores stays silent"
        );
        assert_eq!(deltas.len(), 4, "role, text, reasoning, finish: {deltas:?}");
    }

    #[test]
    fn stream_errors_fail_over_before_output_and_are_events_after() {
        let req = request(json!({"messages": [user("x")], "stream": true}));
        let overloaded = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let f = run_stream(
            &req,
            &sse_of(&[start("m1"), json!({"type": "ping"}), overloaded.clone()]),
        )
        .unwrap_err();
        assert!(f.retryable());
        assert_eq!(
            (f.kind, f.code()),
            (FailureKind::Status(529), Some("overloaded"))
        );
        let text = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}});
        let block = json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}});
        let out = run_stream(
            &req,
            &sse_of(&[start("m1"), block.clone(), text.clone(), overloaded]),
        )
        .unwrap();
        assert!(out.contains("\"content\":\"Hel\""));
        let last_event = out.trim_end().rsplit("\n\n").nth(1).unwrap();
        let err: Value = serde_json::from_str(last_event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(err["error"]["code"], "overloaded");
        assert!(out.ends_with("data: [DONE]\n\n") && out.matches("[DONE]").count() == 1);
        // Cut before message_stop: the stream is truncated.
        let f = run_stream(&req, &sse_of(&[start("m1"), block, text])).unwrap_err();
        assert_eq!(f.kind, FailureKind::Protocol);
        // Garbage before any output is a protocol failure the proxy can fail over from.
        assert!(run_stream(&req, b"event: message_start\ndata: {nope\n\n").is_err());
    }

    #[test]
    fn refusal_reports_content_filter_and_explanation() {
        let req = request(json!({"messages": [user("x")]}));
        let out = response(
            &adapter(),
            &req,
            json!({"id": "msg_r", "type": "message", "model": "m", "content": [],
            "stop_reason": "refusal", "stop_details": {"type": "refusal", "explanation": "Blocked."}, "usage": {"input_tokens": 18, "output_tokens": 5}}),
        );
        let msg = &out["choices"][0]["message"];
        assert_eq!(
            (msg["content"].clone(), msg["refusal"].clone()),
            (Value::Null, json!("Blocked."))
        );
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    }
}
