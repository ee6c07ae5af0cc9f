//! Where the servers that speak OpenAI's dialect depart from it: the one place that knows.
//!
//! Each rule is a small function keyed by [`Dialect`]; the adapter in `mod.rs` applies them
//! and otherwise forwards the client's request and the provider's bytes unchanged. The
//! rules and their sources (providers.md section in brackets):
//!
//! | dialect | request | response / stream | errors |
//! |---|---|---|---|
//! | `openai`, `mock` | as sent | byte-exact | OpenAI envelope |
//! | `azure_openai` [§7] | as sent; URL carries the deployment and `api-version`; key in `api-key`; `stream_options` only on versions that know it | byte-exact (`choices: []` filter chunks pass) | `content_filter` 400 is permanent |
//! | `mistral` [§4] | tool-call ids → 9 alphanumerics; `seed` → `random_seed`; `max_completion_tokens` → `max_tokens`; `required` → `any`; `developer` → `system`; `name` kept on `tool` only; empty assistant turns dropped; `reasoning_content` → a `thinking` chunk; tool schemas lose `$schema`/`$id`/`strict`; no `stream_options`; `logprobs`, `top_logprobs`, `user`, ... refused | `thinking`/`text` chunks → `reasoning_content`/`content`; `model_length` → `length`; `error` fails; usage on the last content chunk is moved to its own chunk | `{"object":"error"}` and FastAPI `detail` bodies |
//! | `deepseek` [§5] | `developer` → `system`; `max_completion_tokens` → `max_tokens`; `n` > 1 and `json_schema` refused; thinking mode drops the sampling knobs it ignores and refuses `logprobs`; `reasoning_content` replayed | `prompt_cache_hit_tokens` → `cached_tokens`; `insufficient_system_resource` fails (retryable) | 402 → permanent `insufficient_quota` |
//! | `qwen` [§6] | `developer` → `system`; `max_completion_tokens` → `max_tokens`; vendor fields (`enable_thinking`, ...) pass at the top level | the shared rules below | `data_inspection_failed` → permanent `content_filter`; `Arrearage` → `insufficient_quota` |
//! | `openai_compatible` [§9] | key optional; `developer` → `system`; `max_completion_tokens` → `max_tokens` | a stream may end without `[DONE]` after a finish; no usage chunk is fine | llama.cpp context overflow → `context_length_exceeded` |
//!
//! The four dialects whose responses are parsed (`mistral`, `deepseek`, `qwen`,
//! `openai_compatible`) share the response rules: `finish_reason: stop` after tool calls
//! becomes `tool_calls` (pitfall 17), cached tokens are written where only the provider's
//! own field has them, usage riding on a content chunk moves to a chunk of its own (or goes
//! when the client did not ask, pitfall 20), and keep-alive comments are held back until
//! the first real event so they neither commit the response nor end failover.

use crate::config::ProviderKind;
use crate::types::{ChatRequest, ErrorDetail, ResponseFormat, UpstreamFailure};
use crate::types::{GatewayError, ToolChoice, ToolChoiceMode};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

/// Which server speaks the dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// api.openai.com: a key is required.
    OpenAi,
    /// vLLM, Ollama, llama.cpp and similar: the key is optional.
    Compatible,
    /// llmux's own fake provider (`llmux mock`), which speaks OpenAI exactly.
    Mock,
    /// Mistral La Plateforme.
    Mistral,
    /// DeepSeek.
    DeepSeek,
    /// Alibaba Model Studio (DashScope) in OpenAI-compatible mode.
    Qwen,
    /// Azure OpenAI: OpenAI's models behind per-deployment URLs.
    Azure,
}

/// How a stream's usage is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamUsage {
    /// `stream_options.include_usage: true` is sent upstream.
    Ask,
    /// The provider reports it unasked (and may reject `stream_options`).
    Unasked,
    /// The configured API version cannot report it.
    Unavailable,
}

/// What a provider's `finish_reason` becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Keep,
    Rewrite(&'static str),
    /// The generation failed: the attempt fails with this status (retryable ones fail over).
    Fail(u16, &'static str),
}

/// Azure's GA version, used when none is configured (validation normally requires one).
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";
/// The first Azure `api-version` that accepts `stream_options` (older ones 400 on it).
const AZURE_STREAM_OPTIONS_SINCE: &str = "2024-09-01";

/// OpenAI request fields Mistral's chat endpoint does not take (providers.md §4.2); Mistral
/// rejects unknown fields, so each is refused, or dropped with `drop_unsupported_params`.
const MISTRAL_UNSUPPORTED: [&str; 11] = [
    "logit_bias",
    "service_tier",
    "store",
    "modalities",
    "audio",
    "web_search_options",
    "safety_identifier",
    "verbosity",
    "prompt_cache_retention",
    "functions",
    "function_call",
];

/// The sampling knobs DeepSeek's thinking mode ignores (§5.2): sent or not, nothing changes.
const DEEPSEEK_THINKING_IGNORED: [&str; 4] = [
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
];

impl Dialect {
    /// The dialect of a configured kind.
    pub fn for_kind(kind: ProviderKind) -> Dialect {
        match kind {
            ProviderKind::OpenaiCompatible => Dialect::Compatible,
            ProviderKind::Mock => Dialect::Mock,
            ProviderKind::Mistral => Dialect::Mistral,
            ProviderKind::Deepseek => Dialect::DeepSeek,
            ProviderKind::Qwen => Dialect::Qwen,
            ProviderKind::AzureOpenai => Dialect::Azure,
            _ => Dialect::OpenAi,
        }
    }

    /// The config name of the kind, for error messages.
    pub fn kind_name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Compatible => "openai_compatible",
            Dialect::Mock => "mock",
            Dialect::Mistral => "mistral",
            Dialect::DeepSeek => "deepseek",
            Dialect::Qwen => "qwen",
            Dialect::Azure => "azure_openai",
        }
    }

    /// The auth header for a (non-empty) key: Azure wants `api-key`, the rest a bearer token.
    pub fn auth_header(self, key: &str) -> (String, String) {
        match self {
            Dialect::Azure => ("api-key".into(), key.to_owned()),
            _ => ("authorization".into(), format!("Bearer {key}")),
        }
    }

    /// Whether the request body is rewritten beyond the model (else serialised as sent).
    pub fn rewrites_request(self) -> bool {
        !matches!(self, Dialect::OpenAi | Dialect::Mock)
    }

    /// Whether responses and stream events are parsed and fixed where the provider departs
    /// from OpenAI; the others pass through byte-exact.
    pub fn normalizes_responses(self) -> bool {
        matches!(
            self,
            Dialect::Mistral | Dialect::DeepSeek | Dialect::Qwen | Dialect::Compatible
        )
    }

    /// How stream usage is obtained; `api_version` is Azure's.
    pub fn stream_usage(self, api_version: Option<&str>) -> StreamUsage {
        match self {
            // Not a Mistral request field; its last content chunk carries usage anyway.
            Dialect::Mistral => StreamUsage::Unasked,
            Dialect::Azure => match api_version {
                Some(v) if is_dated_before(v, AZURE_STREAM_OPTIONS_SINCE) => {
                    StreamUsage::Unavailable
                }
                _ => StreamUsage::Ask,
            },
            _ => StreamUsage::Ask,
        }
    }

    /// `finish_reason` in OpenAI's vocabulary (§11.1).
    pub fn finish(self, reason: &str) -> Finish {
        match (self, reason) {
            (Dialect::Mistral, "model_length") => Finish::Rewrite("length"),
            (Dialect::Mistral, "error") => Finish::Fail(
                500,
                "the provider stopped the generation with finish_reason `error`",
            ),
            (Dialect::DeepSeek, "insufficient_system_resource") => Finish::Fail(
                503,
                "the provider stopped the generation for lack of resources \
                 (finish_reason `insufficient_system_resource`)",
            ),
            _ => Finish::Keep,
        }
    }

    /// Whether a `stop` after tool calls is rewritten to `tool_calls` (pitfall 17).
    fn fixes_tool_finish(self) -> bool {
        self.normalizes_responses()
    }

    /// Whether a stream that closes after a finish chunk but before `[DONE]` ended well
    /// (some local servers never send it, §9).
    pub fn done_optional(self) -> bool {
        self == Dialect::Compatible
    }
}

/// `v` is a `YYYY-MM-DD...` version older than `since` (non-dated versions count as new).
fn is_dated_before(v: &str, since: &str) -> bool {
    let dated = v.len() >= 10
        && v.bytes().take(10).enumerate().all(|(i, b)| {
            if matches!(i, 4 | 7) {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    dated && v.get(..10).is_some_and(|d| d < since)
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// What request rewriting needs to know about the provider.
pub struct Ctx<'a> {
    pub provider: &'a str,
    pub dialect: Dialect,
    pub drop_unsupported: bool,
    pub stream_usage: StreamUsage,
}

impl Ctx<'_> {
    /// A parameter the provider cannot honour: a 400 naming it, or removed from the body
    /// (logged) when the provider has `drop_unsupported_params: true`.
    fn unsupported(
        &self,
        what: &str,
        param: &str,
        body: &mut Map<String, Value>,
    ) -> Result<(), GatewayError> {
        if self.drop_unsupported {
            log::debug!(
                "provider '{}': dropping {what} (`{param}`), not supported by kind {}",
                self.provider,
                self.dialect.kind_name()
            );
            body.shift_remove(param);
            Ok(())
        } else {
            Err(GatewayError::invalid(
                format!(
                    "{what} is not supported by provider '{}' (kind {}); set \
                     `drop_unsupported_params: true` on the provider to drop it",
                    self.provider,
                    self.dialect.kind_name()
                ),
                param,
            ))
        }
    }
}

/// Applies the dialect's request rules to the serialised body (model and `stream_options`
/// already written).
pub fn rewrite_request(
    cx: &Ctx,
    req: &ChatRequest,
    model: &str,
    body: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    if cx.stream_usage == StreamUsage::Unavailable && req.wants_stream_usage() {
        cx.unsupported(
            "`stream_options.include_usage` (needs `api_version` 2024-09-01 or later)",
            "stream_options",
            body,
        )?;
    }
    match cx.dialect {
        Dialect::Mistral => mistral_request(cx, req, body),
        Dialect::DeepSeek => {
            developer_as_system(body);
            deepseek_request(cx, req, model, body)
        }
        Dialect::Qwen | Dialect::Compatible => {
            developer_as_system(body);
            completion_tokens_as_max_tokens(body);
            Ok(())
        }
        Dialect::OpenAi | Dialect::Mock | Dialect::Azure => Ok(()),
    }
}

/// `developer` is OpenAI's newer name for `system` (§1.3); servers other than OpenAI's own
/// know only `system`.
fn developer_as_system(body: &mut Map<String, Value>) {
    for m in body
        .get_mut("messages")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(m) = m.as_object_mut() {
            if m.get("role").and_then(Value::as_str) == Some("developer") {
                m.insert("role".into(), "system".into());
            }
        }
    }
}

/// `max_completion_tokens` → `max_tokens`, the name every dialect server knows; the newer
/// field wins when both are set, as on OpenAI.
fn completion_tokens_as_max_tokens(body: &mut Map<String, Value>) {
    if let Some(v) = body.shift_remove("max_completion_tokens") {
        body.insert("max_tokens".into(), v);
    }
}

fn mistral_request(
    cx: &Ctx,
    req: &ChatRequest,
    body: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    match req.logprobs {
        Some(true) => cx.unsupported("`logprobs`", "logprobs", body)?,
        Some(false) => {
            body.shift_remove("logprobs");
        }
        None => {}
    }
    if req.top_logprobs.is_some() {
        cx.unsupported("`top_logprobs`", "top_logprobs", body)?;
    }
    if req.user.is_some() {
        cx.unsupported("`user`", "user", body)?;
    }
    for param in MISTRAL_UNSUPPORTED {
        if body.contains_key(param) {
            cx.unsupported(&format!("`{param}`"), param, body)?;
        }
    }
    if let Some(seed) = body.shift_remove("seed") {
        body.entry("random_seed").or_insert(seed);
    }
    completion_tokens_as_max_tokens(body);
    if matches!(
        req.tool_choice,
        Some(ToolChoice::Mode(ToolChoiceMode::Required))
    ) {
        body.insert("tool_choice".into(), "any".into());
    }
    if let Some(Value::Array(tools)) = body.get_mut("tools") {
        for tool in tools.iter_mut() {
            if let Some(f) = tool.get_mut("function").and_then(Value::as_object_mut) {
                // Schema cleanup of §4.2: Mistral refuses these keys.
                f.shift_remove("strict");
                if let Some(p) = f.get_mut("parameters").and_then(Value::as_object_mut) {
                    p.shift_remove("$schema");
                    p.shift_remove("$id");
                }
            }
        }
    }
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        mistral_messages(messages)?;
    }
    Ok(())
}

/// Whether `id` already has Mistral's tool-call id shape, `^[a-zA-Z0-9]{9}$`.
pub fn is_mistral_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A deterministic 9-character `[A-Za-z0-9]` id for `id` (Mistral's only accepted shape):
/// ids that already fit are kept, others are hashed, so the same id always gives the same
/// result, in the assistant's `tool_calls` and in the `tool` message alike.
pub fn mistral_tool_call_id(id: &str) -> String {
    if is_mistral_id(id) {
        id.to_owned()
    } else {
        hashed_id(id, 0)
    }
}

/// FNV-1a (64-bit) with a SplitMix64 finaliser, as 9 base-62 digits (about 53 bits). Written
/// out so the mapping never changes with a compiler or crate version.
fn hashed_id(id: &str, salt: u32) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(salt.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let mut out = [0u8; 9];
    for slot in out.iter_mut() {
        *slot = DIGITS[(h % 62) as usize];
        h /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// The id rewrite for one request: every id that does not fit gets its hash, and a hash
/// that would collide with another id of the same request is salted until it does not.
fn mistral_id_map(messages: &[Value]) -> HashMap<String, String> {
    let mut ids: Vec<&str> = Vec::new();
    for m in messages {
        for call in m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                ids.push(id);
            }
        }
        if let Some(id) = m.get("tool_call_id").and_then(Value::as_str) {
            ids.push(id);
        }
    }
    let mut used: HashSet<String> = ids
        .iter()
        .filter(|id| is_mistral_id(id))
        .map(|id| (*id).to_owned())
        .collect();
    let mut map = HashMap::new();
    for id in ids {
        if is_mistral_id(id) || map.contains_key(id) {
            continue;
        }
        let mut salt = 0;
        let mut new = hashed_id(id, salt);
        while used.contains(&new) {
            salt += 1;
            new = hashed_id(id, salt);
        }
        used.insert(new.clone());
        map.insert(id.to_owned(), new);
    }
    map
}

/// Content that carries nothing: absent, null, `""`, `[]`, or only empty text parts.
fn is_empty_content(c: Option<&Value>) -> bool {
    match c {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(parts)) => parts.iter().all(|p| {
            p.get("type").and_then(Value::as_str) == Some("text")
                && p.get("text")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        }),
        Some(_) => false,
    }
}

/// Mistral's message rules (§4.2, pitfalls 7 and 8).
fn mistral_messages(messages: &mut Vec<Value>) -> Result<(), GatewayError> {
    let ids = mistral_id_map(messages);
    let rewrite = |id: &mut Value| {
        if let Some(new) = id.as_str().and_then(|s| ids.get(s)) {
            *id = Value::String(new.clone());
        }
    };
    let total = messages.len();
    let mut kept = Vec::with_capacity(total);
    let mut last_dropped = None;
    for (i, mut m) in std::mem::take(messages).into_iter().enumerate() {
        let Some(obj) = m.as_object_mut() else {
            kept.push(m);
            continue;
        };
        let role = obj
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match role.as_str() {
            "tool" => {
                if let Some(id) = obj.get_mut("tool_call_id") {
                    rewrite(id);
                }
            }
            "assistant" => {
                obj.shift_remove("name");
                if !mistral_assistant(obj, &rewrite) {
                    log::debug!("dropping empty assistant message {i} (Mistral rejects it)");
                    last_dropped = Some(i);
                    continue;
                }
            }
            other => {
                // `name` is accepted on tool messages only; `developer` is a system prompt.
                if other == "developer" {
                    obj.insert("role".into(), "system".into());
                }
                obj.shift_remove("name");
            }
        }
        kept.push(m);
    }
    if let (true, Some(i)) = (kept.is_empty(), last_dropped) {
        return Err(GatewayError::invalid(
            "the conversation has only empty assistant messages, which Mistral rejects",
            &format!("messages[{i}].content"),
        ));
    }
    *messages = kept;
    Ok(())
}

/// Rewrites one assistant message; false when it carries nothing and is to be dropped.
fn mistral_assistant(obj: &mut Map<String, Value>, rewrite: &impl Fn(&mut Value)) -> bool {
    // Mistral has no `refusal` field: a refusal with no content becomes the content.
    if let Some(Value::String(refusal)) = obj.shift_remove("refusal") {
        if is_empty_content(obj.get("content")) && !refusal.is_empty() {
            obj.insert("content".into(), Value::String(refusal));
        }
    }
    // Reasoning goes back the way Mistral sent it: a `thinking` chunk before the text.
    if let Some(Value::String(reasoning)) = obj.shift_remove("reasoning_content") {
        if !reasoning.is_empty() {
            let mut parts = vec![
                json!({"type": "thinking", "thinking": [{"type": "text", "text": reasoning}], "closed": true}),
            ];
            match obj.shift_remove("content") {
                Some(Value::String(s)) if !s.is_empty() => {
                    parts.push(json!({"type": "text", "text": s}));
                }
                Some(Value::Array(a)) => parts.extend(a),
                _ => {}
            }
            obj.insert("content".into(), Value::Array(parts));
        }
    }
    let mut has_calls = false;
    match obj.get_mut("tool_calls") {
        Some(Value::Array(calls)) if !calls.is_empty() => {
            has_calls = true;
            for call in calls.iter_mut() {
                if let Some(id) = call.get_mut("id") {
                    rewrite(id);
                }
            }
        }
        // `tool_calls: []` is accepted as sent (the corpus shows it): no calls.
        _ => {}
    }
    if is_empty_content(obj.get("content")) {
        if !has_calls {
            return false;
        }
        // Mistral rejects empty assistant content; calls alone are a whole turn.
        obj.shift_remove("content");
    }
    true
}

fn deepseek_request(
    cx: &Ctx,
    req: &ChatRequest,
    model: &str,
    body: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    if req.n.is_some_and(|n| n > 1) {
        cx.unsupported("`n` > 1", "n", body)?;
    }
    if matches!(req.response_format, Some(ResponseFormat::JsonSchema { .. })) {
        // Accepted but not enforced (§5.2): refusing beats a silently unstructured answer.
        cx.unsupported(
            "`response_format` `json_schema` (use `json_object` or strict tools)",
            "response_format",
            body,
        )?;
    }
    let thinking = model.contains("reasoner")
        || req
            .extra
            .get("thinking")
            .and_then(|t| t.get("type"))
            .and_then(Value::as_str)
            == Some("enabled");
    if thinking {
        for param in DEEPSEEK_THINKING_IGNORED {
            body.shift_remove(param);
        }
        if req.logprobs == Some(true) {
            cx.unsupported("`logprobs` in thinking mode", "logprobs", body)?;
        }
        if req.top_logprobs.is_some() {
            cx.unsupported("`top_logprobs` in thinking mode", "top_logprobs", body)?;
        }
    }
    completion_tokens_as_max_tokens(body);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Responses and stream chunks
// ---------------------------------------------------------------------------------------

/// Turns Mistral's content chunks (`text`, `thinking`) in `obj["content"]` (a message or a
/// delta) into OpenAI's string `content` plus `reasoning_content`. Content with any other
/// chunk type is left as sent. Returns whether anything changed.
pub fn flatten_content_parts(obj: &mut Map<String, Value>) -> bool {
    let Some(Value::Array(parts)) = obj.get("content") else {
        return false;
    };
    let (mut text, mut thinking) = (None::<String>, None::<String>);
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(p.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => {
                let acc = thinking.get_or_insert_with(String::new);
                match p.get("thinking") {
                    Some(Value::String(s)) => acc.push_str(s),
                    Some(Value::Array(items)) => {
                        for item in items {
                            if let Some(t) = item.get("text").and_then(Value::as_str) {
                                acc.push_str(t);
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => return false,
        }
    }
    obj.insert("content".into(), text.map_or(Value::Null, Value::String));
    if let Some(t) = thinking {
        obj.insert("reasoning_content".into(), Value::String(t));
    }
    true
}

/// Fixes one non-stream choice; `Err` when its finish reason means the generation failed.
pub fn normalize_choice(dialect: Dialect, choice: &mut Value) -> Result<bool, (u16, &'static str)> {
    let Some(choice) = choice.as_object_mut() else {
        return Ok(false);
    };
    let mut changed = false;
    let mut has_calls = false;
    if let Some(msg) = choice.get_mut("message").and_then(Value::as_object_mut) {
        if dialect == Dialect::Mistral {
            changed |= flatten_content_parts(msg);
        }
        has_calls = msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty());
    }
    changed |= fix_finish(dialect, choice, has_calls)?;
    Ok(changed)
}

/// Maps `choice["finish_reason"]` and applies the tool-call fix; returns whether it changed.
pub fn fix_finish(
    dialect: Dialect,
    choice: &mut Map<String, Value>,
    had_tool_calls: bool,
) -> Result<bool, (u16, &'static str)> {
    let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) else {
        return Ok(false);
    };
    let new = match dialect.finish(reason) {
        Finish::Fail(status, why) => return Err((status, why)),
        Finish::Rewrite(r) => r,
        Finish::Keep if reason == "stop" && had_tool_calls && dialect.fixes_tool_finish() => {
            "tool_calls"
        }
        Finish::Keep => return Ok(false),
    };
    choice.insert("finish_reason".into(), new.into());
    Ok(true)
}

/// Writes `prompt_tokens_details.cached_tokens` from the provider's own field when it is
/// missing (§11.2): DeepSeek `prompt_cache_hit_tokens`, Mistral `num_cached_tokens` or
/// `prompt_token_details`. Everything else in the usage object stays. Returns whether it
/// changed.
pub fn normalize_usage(usage: &mut Value) -> bool {
    let Some(u) = usage.as_object_mut() else {
        return false;
    };
    let cached = |u: &Map<String, Value>, details: &str| {
        u.get(details)
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
    };
    if cached(u, "prompt_tokens_details").is_some() {
        return false;
    }
    let Some(n) = u
        .get("prompt_cache_hit_tokens")
        .and_then(Value::as_u64)
        .or_else(|| u.get("num_cached_tokens").and_then(Value::as_u64))
        .or_else(|| cached(u, "prompt_token_details"))
    else {
        return false;
    };
    match u.get_mut("prompt_tokens_details") {
        Some(Value::Object(d)) => {
            d.insert("cached_tokens".into(), n.into());
        }
        _ => {
            u.insert("prompt_tokens_details".into(), json!({"cached_tokens": n}));
        }
    }
    true
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// An error body in one of the non-OpenAI shapes these servers use: top-level
/// `{"message","type","code","param"}` (Mistral, older vLLM, DashScope native), FastAPI's
/// `{"detail": ...}` (Mistral 422), or `{"error": "text"}` (Ollama native).
pub fn other_error_shape(body: &[u8]) -> Option<(String, ErrorDetail)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let text = |v: Option<&Value>| match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    if let Some(Value::String(message)) = v.get("error") {
        return Some((message.clone(), ErrorDetail::default()));
    }
    if let Some(message) = text(v.get("message")) {
        let detail = ErrorDetail {
            error_type: text(v.get("type")),
            code: text(v.get("code")),
            param: text(v.get("param")),
        };
        return Some((message, detail));
    }
    match v.get("detail")? {
        Value::String(s) => Some((s.clone(), ErrorDetail::default())),
        Value::Array(items) => {
            let msgs: Vec<String> = items
                .iter()
                .map(|i| {
                    let msg = text(i.get("msg")).unwrap_or_default();
                    let loc = i.get("loc").and_then(Value::as_array).map(|l| {
                        l.iter()
                            .map(|p| text(Some(p)).unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(".")
                    });
                    match loc {
                        Some(loc) if !loc.is_empty() => format!("{loc}: {msg}"),
                        _ => msg,
                    }
                })
                .collect();
            let param = items
                .first()
                .and_then(|i| i.get("loc"))
                .and_then(Value::as_array)
                .and_then(|l| l.last())
                .and_then(|p| text(Some(p)));
            Some((
                msgs.join("; "),
                ErrorDetail {
                    error_type: Some("invalid_request_error".into()),
                    code: None,
                    param,
                },
            ))
        }
        _ => None,
    }
}

/// The dialect's own error vocabulary mapped to OpenAI's (status kept).
pub fn adjust_failure(dialect: Dialect, status: u16, f: &mut UpstreamFailure) {
    let code = f.code().map(str::to_owned);
    let kind = f.error_type().map(str::to_owned);
    let is = |s: &str| code.as_deref() == Some(s) || kind.as_deref() == Some(s);
    let set = |f: &mut UpstreamFailure, code: &str, kind: &str| {
        let d = f.detail.get_or_insert_with(Default::default);
        d.code = Some(code.into());
        d.error_type = Some(kind.into());
    };
    match dialect {
        // "Insufficient Balance": retrying cannot help (§5.4, pitfall 24).
        Dialect::DeepSeek if status == 402 => {
            set(f, "insufficient_quota", "insufficient_quota");
            f.permanent = true;
        }
        // Alibaba's moderation blocked the input or output (§6.3).
        Dialect::Qwen if is("data_inspection_failed") => {
            set(f, "content_filter", "invalid_request_error");
            f.permanent = true;
        }
        Dialect::Qwen if is("Arrearage") => {
            set(f, "insufficient_quota", "insufficient_quota");
            f.permanent = true;
        }
        // A prompt-filter violation is the same answer on every retry (§7.2).
        Dialect::Azure if is("content_filter") => f.permanent = true,
        Dialect::Compatible if is("exceed_context_size_error") => {
            set(f, "context_length_exceeded", "invalid_request_error");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistral_ids_are_nine_alphanumerics_and_stable() {
        for id in [
            "call_abc123",
            "toolu_01A09q90qw90lq917835lq9",
            "",
            "x",
            "é✓",
        ] {
            let a = mistral_tool_call_id(id);
            assert!(is_mistral_id(&a), "{id} -> {a}");
            assert_eq!(a, mistral_tool_call_id(id));
        }
        assert_eq!(mistral_tool_call_id("VB03LVVRm"), "VB03LVVRm");
        assert_ne!(
            mistral_tool_call_id("call_1"),
            mistral_tool_call_id("call_2")
        );
        // Pinned: the mapping must not change between llmux versions.
        assert_eq!(
            mistral_tool_call_id("call_abc123"),
            hashed_id("call_abc123", 0)
        );
    }

    #[test]
    fn dated_versions_compare() {
        assert!(is_dated_before("2024-06-01", "2024-09-01"));
        assert!(is_dated_before("2024-08-01-preview", "2024-09-01"));
        assert!(!is_dated_before("2024-09-01-preview", "2024-09-01"));
        assert!(!is_dated_before("2024-10-21", "2024-09-01"));
        assert!(!is_dated_before("preview", "2024-09-01"));
        assert!(!is_dated_before("v1", "2024-09-01"));
    }

    #[test]
    fn usage_cached_tokens_from_provider_fields() {
        let mut u = json!({"prompt_tokens": 10, "prompt_cache_hit_tokens": 8, "prompt_cache_miss_tokens": 2});
        assert!(normalize_usage(&mut u));
        assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 8);
        assert!(!normalize_usage(&mut u), "already there: untouched");
        let mut u =
            json!({"prompt_tokens": 10, "num_cached_tokens": 4, "prompt_tokens_details": null});
        assert!(normalize_usage(&mut u));
        assert_eq!(u["prompt_tokens_details"], json!({"cached_tokens": 4}));
        let mut u = json!({"prompt_tokens": 10, "prompt_token_details": {"cached_tokens": 3}, "prompt_tokens_details": {"audio_tokens": 0}});
        assert!(normalize_usage(&mut u));
        assert_eq!(
            u["prompt_tokens_details"],
            json!({"audio_tokens": 0, "cached_tokens": 3})
        );
        let mut u = json!({"prompt_tokens": 10});
        assert!(!normalize_usage(&mut u));
        assert!(!normalize_usage(&mut json!(null)));
    }

    #[test]
    fn content_parts_flatten_or_stay() {
        let mut m = json!({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"type": "text", "text": "4"}]});
        assert!(flatten_content_parts(m.as_object_mut().unwrap()));
        assert_eq!(m, json!({"content": "4", "reasoning_content": "ab"}));
        let mut m =
            json!({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "a"}]}]});
        assert!(flatten_content_parts(m.as_object_mut().unwrap()));
        assert_eq!(m, json!({"content": null, "reasoning_content": "a"}));
        let mut m = json!({"content": [{"type": "reference", "reference_ids": [1]}]});
        assert!(!flatten_content_parts(m.as_object_mut().unwrap()));
        let mut m = json!({"content": "plain"});
        assert!(!flatten_content_parts(m.as_object_mut().unwrap()));
    }

    #[test]
    fn other_error_shapes_parse() {
        let (m, d) = other_error_shape(br#"{"object":"error","message":"bad","type":"invalid_request_error","param":null,"code":"3280"}"#).unwrap();
        assert_eq!((m.as_str(), d.code.as_deref()), ("bad", Some("3280")));
        let (m, d) = other_error_shape(br#"{"detail":[{"loc":["body","messages",0],"msg":"field required","type":"missing"}]}"#).unwrap();
        assert_eq!(m, "body.messages.0: field required");
        assert_eq!(d.param.as_deref(), Some("0"));
        let (m, _) = other_error_shape(br#"{"error":"model 'x' not found"}"#).unwrap();
        assert_eq!(m, "model 'x' not found");
        assert!(other_error_shape(b"<html>").is_none());
        assert!(other_error_shape(br#"{"detail": 5}"#).is_none());
    }
}
