//! OpenAI Chat Completions -> Bedrock Converse request body (providers.md §8.2).
//!
//! The conversation rules are Anthropic's (pitfalls 2–7, shared with the Anthropic adapter in
//! [`super::super::claude`]): system and developer messages are lifted into `system` in order,
//! turns are merged into strict user/assistant alternation that starts with the user, tool
//! calls and results become `toolUse`/`toolResult` blocks with the results first in the user
//! turn after the calls, blank text is never sent, and every tool call must be answered. Parameters are mapped, or refused with a 400 naming them (dropped
//! instead with `drop_unsupported_params: true`); content that cannot be sent is always a 400.

use super::super::anthropic::{JSON_TOOL, PLACEHOLDER_USER};
use super::super::claude::{self, Refuse, Role, Sampling, Turn};
use crate::types::{
    ChatRequest, Content, ContentPart, Extra, GatewayError, Message, ResponseFormat, Stop,
    ToolCall, ToolChoice, ToolChoiceMode,
};
use serde_json::{json, Map, Value};

/// A tool that is never called: Converse wants `toolConfig` whenever the history holds tool
/// blocks, and has no `tool_choice: none`, so a request without usable tools sends only this.
pub const HISTORY_TOOL: &str = "llmux_no_tools";
/// The text of a tool result that came back empty (Converse rejects blank text blocks).
pub const EMPTY_RESULT: &str = "(no output)";
/// `maxTokens` added on top of the thinking budget when the client set no limit (thinking
/// counts against `maxTokens`, and the model default may be below the budget).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The smallest thinking budget Claude accepts.
/// Bedrock-native request fields a client may send as extensions; passed through as sent.
const NATIVE: [&str; 8] = [
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "guardrailConfig",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
    "outputConfig",
    "serviceTier",
];
/// Extensions read elsewhere in this module.
const READ: [&str; 3] = ["thinking", "top_k", "cache_control"];
/// OpenAI fields about storage, routing or billing on OpenAI's side, not the answer.
const IGNORED: [&str; 5] = [
    "store",
    "metadata",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
];

/// Model families whose model-specific knobs (`additionalModelRequestFields`) llmux knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `anthropic.claude-*` and its inference profiles (`us.anthropic.claude-*`, ARNs).
    Claude,
    /// `amazon.nova-*`.
    Nova,
    /// `openai.gpt-oss-*`.
    GptOss,
    /// Everything else, including application inference profile ARNs (opaque ids).
    Other,
}

impl Family {
    pub fn of(model: &str) -> Family {
        let m = model.to_ascii_lowercase();
        if m.contains("anthropic.claude") {
            Family::Claude
        } else if m.contains("amazon.nova") {
            Family::Nova
        } else if m.contains("openai.gpt-oss") {
            Family::GptOss
        } else {
            Family::Other
        }
    }
}

/// What request translation needs to know about the provider.
pub struct Ctx<'a> {
    pub provider: &'a str,
    pub drop: bool,
}

impl Ctx<'_> {
    /// A parameter Bedrock cannot honour: a 400 naming it, or dropped (logged) when the
    /// provider has `drop_unsupported_params`.
    fn unsupported(&self, what: &str, param: &str) -> Result<(), GatewayError> {
        if self.drop {
            log::debug!(
                "provider '{}': dropping {what} (`{param}`), not supported by kind bedrock",
                self.provider
            );
            Ok(())
        } else {
            Err(GatewayError::invalid(
                format!(
                    "{what} is not supported by provider '{}' (kind bedrock)",
                    self.provider
                ),
                param,
            ))
        }
    }

    /// A request this provider cannot take in any mode (dropping would change its meaning).
    fn invalid(&self, what: &str, param: &str) -> GatewayError {
        GatewayError::invalid(
            format!("{what} (provider '{}', kind bedrock)", self.provider),
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

/// `response_format` `json_object` or `json_schema`: answered through the forced [`JSON_TOOL`]
/// whose input comes back as `content` (Converse's native `outputConfig` exists only on some
/// models; a client that wants it can send `outputConfig` itself).
pub fn json_mode(req: &ChatRequest) -> bool {
    matches!(
        req.response_format,
        Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
    )
}

/// What a `toolUse` block of a response becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A call of one of the client's functions.
    Client,
    /// The JSON tool: its input is the answer's content.
    JsonAnswer,
    /// A server-side tool (Nova code interpreter) or [`HISTORY_TOOL`]: not shown.
    Hidden,
}

/// Classifies a response tool call by name and Bedrock's `type` field.
pub fn call_kind(name: &str, kind: Option<&str>, json_mode: bool) -> CallKind {
    if kind == Some("server_tool_use") || name == HISTORY_TOOL {
        CallKind::Hidden
    } else if json_mode && name == JSON_TOOL {
        CallKind::JsonAnswer
    } else {
        CallKind::Client
    }
}

/// The whole OpenAI -> Converse body; each step says which rule it follows.
pub fn build_body(
    cx: &Ctx,
    req: &ChatRequest,
    model: &str,
    auto_cache: bool,
) -> Result<Value, GatewayError> {
    let family = Family::of(model);
    check_unsupported(cx, req)?;
    let Conversation {
        mut system,
        mut turns,
    } = Converter::default().run(cx, &req.messages)?;
    let json_mode = json_mode(req);
    let has_tool_blocks = turns
        .iter()
        .any(|t| !t.calls.is_empty() || !t.results.is_empty());
    let Tools {
        mut tools,
        choice,
        forced,
        client_tools,
    } = tools_and_choice(cx, req, json_mode)?;

    // Reasoning: Claude thinking (Claude's rules, providers/claude.rs), Nova
    // reasoningConfig, gpt-oss reasoning_effort.
    let mut extra_fields = Map::new();
    let mut thinking = claude_thinking(cx, req, family)?;
    claude::leave_off_after_tool_results(cx, &mut thinking, &turns);
    if family != Family::Claude {
        other_reasoning(cx, req, family, &mut extra_fields)?;
    }

    // maxTokens: OpenAI's max_completion_tokens counts reasoning, like Claude's thinking
    // counts against maxTokens, so the numbers carry over unchanged.
    let requested = req.max_completion_tokens.or(req.max_tokens);
    if requested == Some(0) {
        let param = if req.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(cx.invalid(&format!("`{param}` must be at least 1"), param));
    }
    let max_tokens = requested
        .or_else(|| claude::budget(&thinking).map(|b| DEFAULT_MAX_TOKENS.saturating_add(b)));
    if let Some(m) = max_tokens {
        claude::fit_budget(cx, &mut thinking, m)?;
    }

    // Sampling: Converse's temperature range is 0–1 (OpenAI's 0–2), so it is clamped (top_p
    // too); Claude rejects temperature together with top_p (pitfall 15), so top_p goes then.
    let top_p = req.top_p.map(|p| p.clamp(0.0, 1.0));
    let mut sampling = if family == Family::Claude {
        Sampling::claude(cx, req, top_p)
    } else {
        Sampling {
            temperature: req.temperature.map(|t| t.clamp(0.0, 1.0)),
            top_p,
            top_k: req.extra.get("top_k").filter(|v| !v.is_null()).cloned(),
        }
    };
    sampling.limit_when_thinking(
        cx,
        &thinking,
        (forced, json_mode, "`response_format`"),
        turns.last().is_some_and(|t| t.role == Role::Assistant),
    )?;
    let Sampling {
        temperature,
        top_p,
        top_k,
    } = sampling;
    if let Some(k) = top_k {
        match family {
            Family::Claude => {
                extra_fields.insert("top_k".into(), k);
            }
            Family::Nova => {
                extra_fields.insert("inferenceConfig".into(), json!({ "topK": k }));
            }
            _ => cx.unsupported("`top_k` for this model", "top_k")?,
        }
    }
    if let Some((t, _)) = thinking {
        extra_fields.insert("thinking".into(), t);
    }

    let mut inference = Map::new();
    if let Some(m) = max_tokens {
        inference.insert("maxTokens".into(), m.into());
    }
    if let Some(t) = temperature {
        inference.insert("temperature".into(), t.into());
    }
    if let Some(p) = top_p {
        inference.insert("topP".into(), p.into());
    }
    let stops: Vec<&String> = match &req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v.iter().collect(),
    };
    let stops: Vec<&String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
    if !stops.is_empty() {
        inference.insert("stopSequences".into(), json!(stops));
    }

    // Caching: cachePoint blocks where the client put cache_control. With auto_cache (or a
    // top-level Anthropic-style `cache_control`) and none placed, llmux places them the way
    // the Anthropic adapter does: after the tools (Claude only: other families reject them
    // there), after the system prompt, and at the end of the stable conversation prefix
    // (everything before the newest turn), each once the prefix up to it is long enough to
    // be cached (cache writes cost extra, pitfall 27).
    let placed = system.iter().any(is_cache_point)
        || tools.iter().any(is_cache_point)
        || turns.iter().any(|t| t.blocks.iter().any(is_cache_point));
    let wants_auto = auto_cache || req.extra.get("cache_control").is_some_and(|v| !v.is_null());
    if wants_auto && !placed {
        // Claude on Bedrock caches from Anthropic's minimums (providers.md §8.6).
        let min = crate::providers::anthropic::min_cacheable_tokens(model);
        let mut prefix = 0u64;
        if family == Family::Claude && client_tools > 0 {
            let end = client_tools_end(&tools, client_tools);
            prefix += tools[..end].iter().map(approx_tokens).sum::<u64>();
            if prefix >= min {
                tools.insert(end, cache_point(None));
            }
        }
        prefix += system.iter().map(approx_tokens).sum::<u64>();
        if !system.is_empty() && prefix >= min {
            system.push(cache_point(None));
        }
        let stable = turns.len().saturating_sub(1);
        prefix += turns[..stable]
            .iter()
            .flat_map(|t| t.blocks.iter())
            .map(approx_tokens)
            .sum::<u64>();
        if stable > 0 && prefix >= min {
            mark_cache(&mut turns[stable - 1].blocks, Some(&Value::Null));
        }
    }

    let mut body = Map::new();
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|t| json!({"role": t.role.as_str(), "content": t.blocks}))
        .collect();
    body.insert("messages".into(), messages.into());
    if !system.is_empty() {
        body.insert("system".into(), system.into());
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), inference.into());
    }
    if !tools.is_empty() {
        let mut config = json!({ "tools": tools });
        if let Some(c) = choice {
            config["toolChoice"] = c;
        }
        body.insert("toolConfig".into(), config);
    } else if has_tool_blocks {
        body.insert(
            "toolConfig".into(),
            json!({"tools": [{"toolSpec": {"name": HISTORY_TOOL, "description": "Not available; never call it.",
                "inputSchema": {"json": {"type": "object", "properties": {}}}}}]}),
        );
    }
    match req.extra.get("service_tier").and_then(Value::as_str) {
        None | Some("auto") => {}
        Some(t @ ("default" | "flex" | "priority")) => {
            body.insert("serviceTier".into(), json!({ "type": t }));
        }
        Some(other) => cx.unsupported(
            &format!("`service_tier` `{other}` (default, flex and priority are)"),
            "service_tier",
        )?,
    }
    // The client's own Bedrock fields win over what llmux derived.
    if let Some(Value::Object(client)) = req.extra.get("additionalModelRequestFields") {
        extra_fields.extend(client.clone());
    }
    for key in NATIVE {
        match req.extra.get(key) {
            Some(Value::Null) | None => {}
            Some(_) if key == "additionalModelRequestFields" => {}
            Some(v) => {
                body.insert(key.into(), v.clone());
            }
        }
    }
    if !extra_fields.is_empty() {
        body.insert("additionalModelRequestFields".into(), extra_fields.into());
    }
    Ok(Value::Object(body))
}

/// Refuses (or drops) OpenAI parameters with no Converse equivalent.
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
        let k = key.as_str();
        if NATIVE.contains(&k) || READ.contains(&k) || IGNORED.contains(&k) || k == "service_tier" {
            continue;
        }
        let what = match k {
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
    if let Some(user) = &req.user {
        // Converse has no end-user field; `requestMetadata` is for invocation-log filters.
        log::debug!(
            "provider '{}': `user` ({} chars) is not sent",
            cx.provider,
            user.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

struct Conversation {
    system: Vec<Value>,
    turns: Vec<Turn>,
}

/// A rough token count of a JSON value (4 characters a token), for cache-point placement.
fn approx_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.len() as u64 / 4,
        Value::Array(a) => a.iter().map(approx_tokens).sum(),
        Value::Object(o) => o.values().map(approx_tokens).sum(),
        _ => 0,
    }
}

fn is_cache_point(b: &Value) -> bool {
    b.get("cachePoint").is_some()
}

/// A `cachePoint` block; a `ttl` on the client's `cache_control` carries over.
fn cache_point(cc: Option<&Value>) -> Value {
    let mut cp = json!({"type": "default"});
    if let Some(ttl) = cc.and_then(|c| c.get("ttl")).filter(|t| t.is_string()) {
        cp["ttl"] = ttl.clone();
    }
    json!({ "cachePoint": cp })
}

fn cache_control(extra: &Extra) -> Option<&Value> {
    extra.get("cache_control").filter(|v| !v.is_null())
}

/// Appends a cache point after the last block (never first, never twice in a row).
fn mark_cache(blocks: &mut Vec<Value>, cc: Option<&Value>) {
    if let Some(cc) = cc {
        if blocks.last().is_some_and(|b| !is_cache_point(b)) {
            blocks.push(cache_point(Some(cc)));
        }
    }
}

/// A text block, or nothing for empty/whitespace-only text (Converse rejects those).
fn text_block(text: &str) -> Option<Value> {
    (!text.trim().is_empty()).then(|| json!({ "text": text }))
}

/// Bedrock tool-use ids must match `[a-zA-Z0-9_-]{1,64}`; other providers' ids are rewritten
/// the same way in calls and results (so pairs stay matched), long ones shortened with a hash.
pub fn tool_id(id: &str) -> String {
    if id.is_empty() {
        return "tooluse_empty".into();
    }
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= 64 {
        return clean;
    }
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}_{hash:016x}", &clean[..47])
}

/// Walks the OpenAI messages once, keeping the document counter for generated names.
#[derive(Default)]
struct Converter {
    documents: usize,
}

impl Converter {
    fn run(mut self, cx: &Ctx, messages: &[Message]) -> Result<Conversation, GatewayError> {
        let mut system = Vec::new();
        let mut turns: Vec<Turn> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            match m {
                Message::System { content, extra, .. }
                | Message::Developer { content, extra, .. } => {
                    let mut blocks = text_only_blocks(cx, content, i, "system")?;
                    mark_cache(&mut blocks, cache_control(extra));
                    system.extend(blocks);
                }
                Message::User { content, extra, .. } => {
                    let mut blocks =
                        self.user_blocks(cx, content, &format!("messages[{i}].content"))?;
                    mark_cache(&mut blocks, cache_control(extra));
                    claude::push_turn(&mut turns, Role::User, blocks, Vec::new(), Vec::new());
                }
                Message::Assistant {
                    content,
                    tool_calls,
                    refusal,
                    extra,
                    ..
                } => {
                    // reasoning_content is not replayed: Converse wants the signature that
                    // came with it, and OpenAI messages cannot carry one.
                    let mut blocks = match content {
                        Some(c) => text_only_blocks(cx, c, i, "assistant")?,
                        None => Vec::new(),
                    };
                    blocks.extend(refusal.as_deref().and_then(text_block));
                    let mut calls = Vec::new();
                    for (j, call) in tool_calls.iter().flatten().enumerate() {
                        let param = format!("messages[{i}].tool_calls[{j}]");
                        let (id, block) = tool_use_block(cx, call, &param)?;
                        calls.push((id, param));
                        blocks.push(block);
                    }
                    mark_cache(&mut blocks, cache_control(extra));
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
                    let (result, cache) =
                        self.tool_result(cx, content, &format!("messages[{i}].content"))?;
                    let mut block = json!({"toolResult": {"toolUseId": id, "content": result}});
                    if extra.get("is_error") == Some(&Value::Bool(true)) {
                        block["toolResult"]["status"] = "error".into();
                    }
                    let mut blocks = vec![block];
                    mark_cache(&mut blocks, cache.or_else(|| cache_control(extra)));
                    claude::push_turn(&mut turns, Role::User, blocks, Vec::new(), vec![id]);
                }
            }
        }
        claude::check_calls_answered(cx, &turns)?;
        claude::ensure_user_first(&mut turns, json!({ "text": PLACEHOLDER_USER }));
        // `toolResult` blocks first, each with the cache points after it.
        claude::results_first(
            &mut turns,
            |b| b.get("toolResult").is_some(),
            is_cache_point,
        );
        // A final assistant turn is a prefill, and Claude rejects one ending in whitespace.
        if let Some(last) = turns.last_mut().filter(|t| t.role == Role::Assistant) {
            let text_at = last.blocks.iter().rposition(|b| !is_cache_point(b));
            if let Some(k) = text_at {
                if let Some(s) = last.blocks[k].get("text").and_then(Value::as_str) {
                    let trimmed = s.trim_end().to_owned();
                    last.blocks[k]["text"] = trimmed.into();
                }
            }
        }
        Ok(Conversation { system, turns })
    }

    /// User content: text, images (base64 `data:` URLs), documents.
    fn user_blocks(
        &mut self,
        cx: &Ctx,
        content: &Content,
        param: &str,
    ) -> Result<Vec<Value>, GatewayError> {
        let parts = match content {
            Content::Text(t) => return Ok(text_block(&t.as_str()).into_iter().collect()),
            Content::Parts(parts) => parts,
        };
        let mut blocks = Vec::new();
        for (j, part) in parts.iter().enumerate() {
            let param = format!("{param}[{j}]");
            let (block, extra) = match part {
                ContentPart::Text { text, extra } => (text_block(text), extra),
                ContentPart::Refusal { refusal, extra } => (text_block(refusal), extra),
                ContentPart::ImageUrl { image_url, extra } => {
                    // `detail` has no Converse equivalent and is not sent.
                    (Some(image_block(cx, &image_url.url, &param)?), extra)
                }
                ContentPart::File { file, extra } => {
                    (Some(self.document(cx, file, &param)?), extra)
                }
                ContentPart::InputAudio { .. } => {
                    return Err(cx.invalid("audio input cannot be sent to Bedrock Converse", &param))
                }
            };
            blocks.extend(block);
            mark_cache(&mut blocks, cache_control(extra));
        }
        Ok(blocks)
    }

    /// A `file` part with base64 `file_data` as a `document` block.
    fn document(&mut self, cx: &Ctx, file: &Value, param: &str) -> Result<Value, GatewayError> {
        let Some(data) = file.get("file_data").and_then(Value::as_str) else {
            return Err(cx.invalid(
                "a file part needs `file_data` (a base64 `data:` URL); file ids cannot be sent",
                param,
            ));
        };
        let Some((media, data)) = base64_data_url(data) else {
            return Err(cx.invalid("`file_data` must be a base64 `data:` URL", param));
        };
        let format = match media.to_ascii_lowercase().as_str() {
            "application/pdf" => "pdf",
            "text/csv" => "csv",
            "application/msword" => "doc",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
            "application/vnd.ms-excel" => "xls",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
            "text/html" => "html",
            "text/plain" => "txt",
            "text/markdown" => "md",
            other => {
                return Err(cx.invalid(
                    &format!("document type `{other}` cannot be sent (pdf, csv, doc, docx, xls, xlsx, html, txt and md can)"),
                    param,
                ))
            }
        };
        self.documents += 1;
        let name = file
            .get("filename")
            .and_then(Value::as_str)
            .map(document_name)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("Document {}", self.documents));
        Ok(json!({"document": {"format": format, "name": name, "source": {"bytes": data}}}))
    }

    /// A tool message's content as `toolResult.content`, and a cache mark found on its parts
    /// (cache points cannot sit inside a tool result, so it goes after the block).
    fn tool_result<'c>(
        &mut self,
        cx: &Ctx,
        content: &'c Content,
        param: &str,
    ) -> Result<(Vec<Value>, Option<&'c Value>), GatewayError> {
        let mut out = Vec::new();
        let mut cache = None;
        match content {
            Content::Text(t) => out.extend(text_block(&t.as_str())),
            Content::Parts(parts) => {
                for (j, part) in parts.iter().enumerate() {
                    let param = format!("{param}[{j}]");
                    let extra = match part {
                        ContentPart::Text { text, extra } => {
                            out.extend(text_block(text));
                            extra
                        }
                        ContentPart::Refusal { refusal, extra } => {
                            out.extend(text_block(refusal));
                            extra
                        }
                        ContentPart::ImageUrl { image_url, extra } => {
                            out.push(image_block(cx, &image_url.url, &param)?);
                            extra
                        }
                        ContentPart::File { file, extra } => {
                            out.push(self.document(cx, file, &param)?);
                            extra
                        }
                        ContentPart::InputAudio { .. } => {
                            return Err(
                                cx.invalid("audio cannot be sent in a Bedrock tool result", &param)
                            )
                        }
                    };
                    cache = cache.or(cache_control(extra));
                }
            }
        }
        if out.is_empty() {
            out.push(json!({ "text": EMPTY_RESULT }));
        }
        Ok((out, cache))
    }
}

/// Bedrock document names allow letters, digits, single spaces, hyphens, parentheses and
/// square brackets: the extension goes, anything else becomes a space.
fn document_name(filename: &str) -> String {
    let stem = match filename.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => filename,
    };
    let mapped: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '(' | ')' | '[' | ']') {
                c
            } else {
                ' '
            }
        })
        .collect();
    mapped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// System and assistant content: text (and refusal) parts only.
fn text_only_blocks(
    cx: &Ctx,
    content: &Content,
    i: usize,
    role: &str,
) -> Result<Vec<Value>, GatewayError> {
    match content {
        Content::Text(t) => Ok(text_block(&t.as_str()).into_iter().collect()),
        Content::Parts(parts) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let (text, extra) = match part {
                    ContentPart::Text { text, extra } => (text, extra),
                    ContentPart::Refusal { refusal, extra } => (refusal, extra),
                    _ => {
                        return Err(cx.invalid(
                            &format!("{role} messages may only hold text parts"),
                            &format!("messages[{i}].content[{j}]"),
                        ))
                    }
                };
                blocks.extend(text_block(text));
                mark_cache(&mut blocks, cache_control(extra));
            }
            Ok(blocks)
        }
    }
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

/// An image part as a Converse `image` block. Converse needs the bytes, and llmux does not
/// fetch URLs (no egress from the request path, no SSRF surface): remote URLs are a 400.
fn image_block(cx: &Ctx, url: &str, param: &str) -> Result<Value, GatewayError> {
    let param = format!("{param}.image_url");
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Err(cx.invalid(
            "image URLs cannot be sent: Bedrock needs the image bytes and llmux does not download them; send a base64 `data:` URL",
            &param,
        ));
    }
    let Some((media, data)) = base64_data_url(url) else {
        return Err(cx.invalid(
            "an image must be a base64 `data:` URL (`data:image/png;base64,...`)",
            &param,
        ));
    };
    let format = match media.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        other => {
            return Err(cx.invalid(
                &format!("image type `{other}` cannot be sent (png, jpeg, gif and webp can)"),
                &param,
            ))
        }
    };
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// An assistant tool call as a `toolUse` block; arguments must be a JSON object (an empty
/// string means no arguments). Invalid JSON is a 400, never a silent `{}` (pitfall 6).
fn tool_use_block(cx: &Ctx, call: &ToolCall, param: &str) -> Result<(String, Value), GatewayError> {
    if call.kind != "function" {
        return Err(cx.invalid(
            &format!("tool call type `{}` cannot be sent", call.kind),
            &format!("{param}.type"),
        ));
    }
    if !valid_tool_name(&call.function.name) {
        return Err(cx.invalid(
            "a tool call's function name must match [a-zA-Z0-9_-]{1,64}",
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
    let id = tool_id(&call.id);
    let block = json!({"toolUse": {"toolUseId": id, "name": call.function.name, "input": input}});
    Ok((id, block))
}

/// Converse tool names: `[a-zA-Z0-9_-]{1,64}` (OpenAI's own rule, so no renaming is needed).
fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

// ---------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------

enum Choice {
    Auto,
    Any,
    Tool(String),
}

impl Choice {
    fn to_json(&self) -> Value {
        match self {
            Choice::Auto => json!({"auto": {}}),
            Choice::Any => json!({"any": {}}),
            Choice::Tool(name) => json!({"tool": {"name": name}}),
        }
    }
}

struct Tools {
    /// `toolConfig.tools` entries (tool specs and cache points).
    tools: Vec<Value>,
    choice: Option<Value>,
    /// The model must call a tool (`any`/`tool`), which Claude's thinking forbids.
    forced: bool,
    /// How many client tools lead `tools` (the JSON tool, if any, follows them).
    client_tools: usize,
}

/// Where the client's tools end in `tools` (after their trailing cache points).
fn client_tools_end(tools: &[Value], client_tools: usize) -> usize {
    let mut seen = 0;
    for (k, t) in tools.iter().enumerate() {
        if t.get("toolSpec").is_some() {
            if seen == client_tools {
                return k;
            }
            seen += 1;
        }
    }
    tools.len()
}

/// `tools` and `tool_choice` as `toolConfig`. `tool_choice: none` has no Converse form: the
/// client's tools are left out (so none can be called), and a history with tool blocks gets
/// the never-called [`HISTORY_TOOL`] instead, since `toolConfig` is then mandatory.
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
        let name_param = format!("tools[{i}].function.name");
        if !valid_tool_name(&f.name) {
            return Err(cx.invalid("tool names must match [a-zA-Z0-9_-]{1,64}", &name_param));
        }
        if f.name == HISTORY_TOOL || (json_mode && f.name == JSON_TOOL) {
            return Err(cx.invalid(
                &format!("the tool name `{}` is reserved by llmux", f.name),
                &name_param,
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
        // `strict` has no Converse field: the schema is sent, not enforced by a grammar.
        let mut spec = Map::new();
        spec.insert("name".into(), f.name.clone().into());
        if let Some(d) = f.description.as_ref().filter(|d| !d.is_empty()) {
            spec.insert("description".into(), d.clone().into());
        }
        spec.insert("inputSchema".into(), json!({ "json": schema }));
        names.push(f.name.as_str());
        tools.push(json!({ "toolSpec": spec }));
        mark_cache(
            &mut tools,
            cache_control(&tool.extra).or_else(|| cache_control(&f.extra)),
        );
    }
    let mut none_mode = false;
    let mut choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => Some(Choice::Auto),
        Some(ToolChoice::Mode(ToolChoiceMode::None)) => {
            none_mode = true;
            None
        }
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
        Some(Choice::Any) if names.is_empty() && !json_mode => {
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
    if none_mode && !tools.is_empty() {
        log::debug!(
            "provider '{}': `tool_choice: none` sends no tools (Converse has no `none`)",
            cx.provider
        );
        tools.clear();
        names.clear();
    }
    let client_tools = names.len();
    if client_tools > 0 && req.parallel_tool_calls == Some(false) {
        cx.unsupported(
            "`parallel_tool_calls: false` (Converse cannot limit a turn to one call)",
            "parallel_tool_calls",
        )?;
    }
    if json_mode {
        let (schema, description) = match &req.response_format {
            Some(ResponseFormat::JsonSchema { json_schema }) => (
                json_schema
                    .schema
                    .clone()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({"type": "object"})),
                json_schema.description.clone(),
            ),
            _ => (json!({"type": "object"}), None),
        };
        let description = description.unwrap_or_else(|| {
            "Give your complete answer as a JSON object: the input of this tool is the answer."
                .into()
        });
        tools.push(
            json!({"toolSpec": {"name": JSON_TOOL, "description": description,
            "inputSchema": {"json": schema}}}),
        );
        // The answer must be JSON: with client tools the model may call one of them instead
        // (`any`); alone, `any` forces the JSON tool (and works on more models than `tool`).
        choice = Some(match choice {
            Some(Choice::Tool(n)) => Choice::Tool(n),
            _ => Choice::Any,
        });
    } else if client_tools == 0 {
        choice = None;
    }
    let forced = matches!(choice, Some(Choice::Any | Choice::Tool(_)));
    Ok(Tools {
        tools,
        choice: choice.map(|c| c.to_json()),
        forced,
        client_tools,
    })
}

// ---------------------------------------------------------------------------------------
// Reasoning
// ---------------------------------------------------------------------------------------

/// Claude's `thinking` (in `additionalModelRequestFields`, [`claude::thinking`]): passed
/// through as sent, or derived from `reasoning_effort`. Opaque ids (application inference
/// profile ARNs) may be Claude, so a client's `thinking` is trusted for them; Nova and gpt-oss
/// refuse it.
fn claude_thinking(
    cx: &Ctx,
    req: &ChatRequest,
    family: Family,
) -> Result<claude::Thinking, GatewayError> {
    let sent = req.extra.get("thinking").is_some_and(|v| !v.is_null());
    if sent && matches!(family, Family::Nova | Family::GptOss) {
        cx.unsupported("`thinking` (a Claude field) for this model", "thinking")?;
        return Ok(None);
    }
    if !sent && family != Family::Claude {
        return Ok(None);
    }
    claude::thinking(cx, req)
}

/// `reasoning_effort` for Nova (`reasoningConfig`) and gpt-oss (`reasoning_effort`); other
/// models have no documented switch.
fn other_reasoning(
    cx: &Ctx,
    req: &ChatRequest,
    family: Family,
    fields: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    let Some(e) = claude::effort(cx, req)? else {
        return Ok(());
    };
    let level = match e {
        "minimal" | "low" => "low",
        "medium" => "medium",
        _ => "high",
    };
    match family {
        Family::Nova => {
            fields.insert(
                "reasoningConfig".into(),
                json!({"type": "enabled", "maxReasoningEffort": level}),
            );
        }
        Family::GptOss => {
            fields.insert("reasoning_effort".into(), level.into());
        }
        _ => cx.unsupported("`reasoning_effort` for this model", "reasoning_effort")?,
    }
    Ok(())
}
