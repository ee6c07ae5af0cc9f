//! Google Gemini (Generative Language API, `v1beta`): `models/{m}:generateContent` and
//! `models/{m}:streamGenerateContent?alt=sse` (providers.md §3).
//!
//! Every Gemini rule lives in this file. The decisions a client can notice:
//!
//! * **Auth** is the `x-goog-api-key` header, never `?key=` (which would put the key in URLs
//!   and logs).
//! * **System and developer messages**, wherever they stand, become `systemInstruction` parts
//!   in order; none is dropped. Consecutive messages of one role are merged into one turn.
//! * **Tool results** become `functionResponse` parts of the user turn after the model turn
//!   with the calls, named from the id of the call (Gemini matches by name and order), in call
//!   order; a non-object result is wrapped as `{"result": ...}`. A result for an unknown id, a
//!   call without a result, or a result that does not answer the turn just before it is a 400,
//!   as on OpenAI.
//! * **Thought signatures** (Gemini 3 rejects replayed calls without them) travel inside the
//!   OpenAI tool-call id: `call_<base>__thought__<signature>`, LiteLLM's convention, so vanilla
//!   clients round-trip them untouched. For Gemini 3 targets, a replayed call turn without one
//!   (a history from another provider) gets Google's documented
//!   `skip_thought_signature_validator` value. Signatures on text parts cannot be carried.
//! * **Images**: `data:` URLs become `inlineData`; `http(s)`/`gs` URLs become `fileData` with a
//!   MIME type guessed from the extension (`image/jpeg` when there is none). llmux does not fetch
//!   remote images: the Gemini Developer API itself fetches only Files-API and a few other URLs,
//!   so other URLs may be refused upstream.
//! * **Schemas**: Gemini 2.0+ gets `parametersJsonSchema`/`responseJsonSchema` (JSON Schema,
//!   passed through); Gemini 1.x gets `parameters`/`responseSchema` after
//!   [`to_openapi_schema`], the cleanup pass of providers.md §3.7.
//! * **Blocked prompts** (HTTP 200 without candidates) fail the attempt with a permanent
//!   400 `content_filter`; a candidate stopped for safety is a normal answer with
//!   `finish_reason: content_filter` (and often no content).
//! * **Unsupported parameters** are a 400 naming the parameter and the provider, unless the
//!   provider sets `drop_unsupported_params: true`; content that cannot be expressed (an
//!   OpenAI `file_id`, an image in a tool result) is always a 400.
//! * **Streams** end when Gemini closes the body (no sentinel); a stream that closes without a
//!   `finishReason` is reported as cut short, never finished silently.

use super::openai_out::{self, ChunkWriter, CompletionOut, FinishReason, ToolCallOut};
use super::sse::{self, SseFramer};
use super::{Adapter, BaseUrl, StreamTranslator, TranslatedResponse, UpstreamRequest};
use crate::config::ProviderConfig;
use crate::types::{
    ChatRequest, Content, ContentPart, ErrorDetail, FailureKind, GatewayError, Message,
    ResponseFormat, Stop, ToolChoice, ToolChoiceMode, UpstreamFailure, Usage,
};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::time::Duration;

/// Separates a tool-call id from the Gemini thought signature carried inside it.
pub const THOUGHT_SEPARATOR: &str = "__thought__";

/// The value Google documents for replayed calls whose signature was lost.
pub const DUMMY_SIGNATURE: &str = "skip_thought_signature_validator";

/// Gemini accepts at most this many stop sequences.
const MAX_STOP: usize = 5;

/// Adapter for one configured Gemini provider.
pub struct GeminiAdapter {
    id: Ident,
    base_path: String,
    extra_headers: Vec<(String, String)>,
    safety_settings: Vec<Value>,
    drop_unsupported: bool,
}

impl GeminiAdapter {
    /// Builds the adapter; Gemini always needs a key, so a missing one is a config error.
    pub fn new(cfg: &ProviderConfig, base: &BaseUrl) -> Result<Self, String> {
        let api_key = cfg
            .api_key
            .as_ref()
            .map(|k| k.expose().to_owned())
            .unwrap_or_default();
        if api_key.is_empty() {
            return Err(format!(
                "provider `{}` (gemini) needs an `api_key`",
                cfg.name
            ));
        }
        Ok(GeminiAdapter {
            id: Ident {
                name: cfg.name.clone(),
                api_key,
            },
            base_path: base.path.clone(),
            extra_headers: cfg
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            safety_settings: cfg
                .safety_settings
                .iter()
                .flatten()
                .map(|s| json!({"category": s.category, "threshold": s.threshold}))
                .collect(),
            drop_unsupported: cfg.drop_unsupported_params,
        })
    }

    fn headers(&self, with_body: bool) -> Vec<(String, String)> {
        let mut h = Vec::with_capacity(2 + self.extra_headers.len());
        if with_body {
            h.push(("content-type".into(), "application/json".into()));
        }
        h.push(("x-goog-api-key".into(), self.id.api_key.clone()));
        h.extend(self.extra_headers.iter().cloned());
        h
    }

    /// `{base}/models/{model}` with the model percent-encoded as one path segment.
    fn model_path(&self, model: &str) -> String {
        let bare = model.strip_prefix("models/").unwrap_or(model);
        format!("{}/models/{}", self.base_path, encode_segment(bare))
    }

    /// A parameter Gemini cannot honour: 400, or nothing when the provider drops such params.
    fn unsupported(&self, param: &str, why: &str) -> Result<(), GatewayError> {
        if self.drop_unsupported {
            return Ok(());
        }
        Err(GatewayError::invalid(
            format!(
                "`{param}` is not supported by provider `{}` (gemini): {why} \
                 (set `drop_unsupported_params: true` on the provider to drop it)",
                self.id.name
            ),
            param,
        ))
    }

    /// The Gemini `GenerateContentRequest` JSON for `req` sent to `model`.
    pub fn request_body(&self, req: &ChatRequest, model: &str) -> Result<Value, GatewayError> {
        let gen = ModelGen::of(model);
        let mut body = Map::new();
        let conv = Conversation::build(req, gen)?;
        if !conv.system.is_empty() {
            body.insert("systemInstruction".into(), json!({ "parts": conv.system }));
        }
        body.insert(
            "contents".into(),
            Value::Array(
                conv.turns
                    .into_iter()
                    .map(|t| json!({"role": t.role, "parts": t.parts}))
                    .collect(),
            ),
        );
        self.tools(req, gen, &mut body)?;
        if !self.safety_settings.is_empty() {
            body.insert(
                "safetySettings".into(),
                Value::Array(self.safety_settings.clone()),
            );
        }
        let config = self.generation_config(req, gen)?;
        if !config.is_empty() {
            body.insert("generationConfig".into(), Value::Object(config));
        }
        Ok(Value::Object(body))
    }

    fn tools(
        &self,
        req: &ChatRequest,
        gen: ModelGen,
        body: &mut Map<String, Value>,
    ) -> Result<(), GatewayError> {
        let tools = req.tools.as_deref().unwrap_or_default();
        let mut declarations = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            if tool.kind != "function" {
                self.unsupported(
                    &format!("tools[{i}]"),
                    &format!("only `function` tools exist on Gemini, not `{}`", tool.kind),
                )?;
                continue;
            }
            let f = &tool.function;
            let mut d = Map::new();
            d.insert("name".into(), Value::String(f.name.clone()));
            if let Some(desc) = &f.description {
                d.insert("description".into(), Value::String(desc.clone()));
            }
            if let Some(params) = &f.parameters {
                if gen.legacy_schema() {
                    if has_properties(params) {
                        let cleaned = to_openapi_schema(params, false).map_err(|e| {
                            GatewayError::invalid(
                                format!("tool `{}`: {e}", f.name),
                                &format!("tools[{i}].function.parameters"),
                            )
                        })?;
                        d.insert("parameters".into(), cleaned);
                    }
                } else {
                    d.insert("parametersJsonSchema".into(), params.clone());
                }
            }
            declarations.push(Value::Object(d));
        }
        let names: Vec<&str> = declarations
            .iter()
            .filter_map(|d| d["name"].as_str())
            .collect();
        let mut calling = Map::new();
        let mut keep: Option<Vec<String>> = None;
        match &req.tool_choice {
            None => {}
            Some(ToolChoice::Mode(mode)) => {
                let m = match mode {
                    ToolChoiceMode::None => "NONE",
                    ToolChoiceMode::Auto => "AUTO",
                    ToolChoiceMode::Required => "ANY",
                };
                if *mode == ToolChoiceMode::Required && names.is_empty() {
                    return Err(GatewayError::invalid(
                        "`tool_choice: required` needs at least one function in `tools`",
                        "tool_choice",
                    ));
                }
                if !names.is_empty() {
                    calling.insert("mode".into(), m.into());
                }
            }
            Some(ToolChoice::Named(named)) => {
                let name = &named.function.name;
                if !names.contains(&name.as_str()) {
                    return Err(GatewayError::invalid(
                        format!("`tool_choice` names `{name}`, which is not in `tools`"),
                        "tool_choice",
                    ));
                }
                calling.insert("mode".into(), "ANY".into());
                calling.insert("allowedFunctionNames".into(), json!([name]));
            }
            Some(ToolChoice::Other(other)) => match allowed_tools(other) {
                Some((mode, allowed)) => {
                    if let Some(bad) = allowed.iter().find(|a| !names.contains(&a.as_str())) {
                        return Err(GatewayError::invalid(
                            format!("`tool_choice.allowed_tools` names `{bad}`, which is not in `tools`"),
                            "tool_choice",
                        ));
                    }
                    if mode == "required" {
                        calling.insert("mode".into(), "ANY".into());
                        calling.insert("allowedFunctionNames".into(), json!(allowed));
                    } else {
                        // Gemini restricts names only in ANY mode; in AUTO mode the
                        // declarations themselves are narrowed to the allowed ones.
                        calling.insert("mode".into(), "AUTO".into());
                        keep = Some(allowed);
                    }
                }
                None => self.unsupported(
                    "tool_choice",
                    "only `none`, `auto`, `required`, a named function or `allowed_tools` map to Gemini",
                )?,
            },
        }
        if let Some(keep) = keep {
            declarations.retain(|d| {
                d["name"]
                    .as_str()
                    .is_some_and(|n| keep.iter().any(|k| k == n))
            });
            if declarations.is_empty() {
                // Nothing may be called: no tools at all, and no config for them.
                calling.clear();
            }
        }
        if let Some(false) = req.parallel_tool_calls {
            self.unsupported(
                "parallel_tool_calls",
                "Gemini cannot be told to call one function at a time",
            )?;
        }
        if !declarations.is_empty() {
            body.insert(
                "tools".into(),
                json!([{ "functionDeclarations": declarations }]),
            );
        }
        if !calling.is_empty() {
            body.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": calling }),
            );
        }
        Ok(())
    }

    fn generation_config(
        &self,
        req: &ChatRequest,
        gen: ModelGen,
    ) -> Result<Map<String, Value>, GatewayError> {
        let mut c = Map::new();
        if let Some(t) = req.temperature {
            c.insert("temperature".into(), json!(t));
        }
        if let Some(p) = req.top_p {
            c.insert("topP".into(), json!(p));
        }
        if let Some(max) = req.max_completion_tokens.or(req.max_tokens) {
            c.insert("maxOutputTokens".into(), json!(max));
        }
        if let Some(stop) = &req.stop {
            let list: Vec<&String> = match stop {
                Stop::One(s) => vec![s],
                Stop::Many(v) => v.iter().collect(),
            };
            if list.len() > MAX_STOP {
                return Err(GatewayError::invalid(
                    format!(
                        "`stop` has {} sequences; provider `{}` (gemini) accepts at most {MAX_STOP}",
                        list.len(),
                        self.id.name
                    ),
                    "stop",
                ));
            }
            if !list.is_empty() {
                c.insert("stopSequences".into(), json!(list));
            }
        }
        if let Some(seed) = req.seed {
            if i32::try_from(seed).is_ok() {
                c.insert("seed".into(), json!(seed));
            } else {
                self.unsupported("seed", "Gemini seeds are 32-bit integers")?;
            }
        }
        if let Some(p) = req.presence_penalty {
            c.insert("presencePenalty".into(), json!(p));
        }
        if let Some(p) = req.frequency_penalty {
            c.insert("frequencyPenalty".into(), json!(p));
        }
        match req.n {
            None | Some(1) => {}
            Some(n) => self.unsupported(
                "n",
                &format!("current Gemini models return one candidate, not {n}"),
            )?,
        }
        if req.logprobs == Some(true) {
            self.unsupported("logprobs", "Gemini log probabilities are not translated")?;
        }
        if req.top_logprobs.is_some_and(|n| n > 0) {
            self.unsupported(
                "top_logprobs",
                "Gemini log probabilities are not translated",
            )?;
        }
        if let Some(effort) = &req.reasoning_effort {
            if let Some(thinking) = self.thinking(effort, gen)? {
                c.insert("thinkingConfig".into(), thinking);
            }
        }
        match &req.response_format {
            None | Some(ResponseFormat::Text) => {}
            Some(ResponseFormat::JsonObject) => {
                c.insert("responseMimeType".into(), "application/json".into());
            }
            Some(ResponseFormat::JsonSchema { json_schema }) => {
                c.insert("responseMimeType".into(), "application/json".into());
                if let Some(schema) = &json_schema.schema {
                    let mut schema = schema.clone();
                    if let (Some(desc), Some(obj)) =
                        (&json_schema.description, schema.as_object_mut())
                    {
                        obj.entry("description")
                            .or_insert_with(|| Value::String(desc.clone()));
                    }
                    if gen.legacy_schema() {
                        let cleaned = to_openapi_schema(&schema, true).map_err(|e| {
                            GatewayError::invalid(e, "response_format.json_schema.schema")
                        })?;
                        c.insert("responseSchema".into(), cleaned);
                    } else {
                        c.insert("responseJsonSchema".into(), schema);
                    }
                }
            }
        }
        for (key, value) in &req.extra {
            match key.as_str() {
                // No effect on the answer: nothing to translate.
                "metadata"
                | "store"
                | "service_tier"
                | "safety_identifier"
                | "prompt_cache_key"
                | "prompt_cache_retention" => {}
                "modalities" if value == &json!(["text"]) => {}
                "top_k" => match value.as_u64() {
                    Some(k) => {
                        c.insert("topK".into(), json!(k));
                    }
                    None => {
                        return Err(GatewayError::invalid(
                            "`top_k` must be a non-negative integer",
                            "top_k",
                        ))
                    }
                },
                other => self.unsupported(other, "Gemini has no equivalent")?,
            }
        }
        Ok(c)
    }

    /// `reasoning_effort` → `thinkingConfig`: `thinkingLevel` on Gemini 3, a token budget on
    /// 2.5 (and on unversioned names, which accept budgets too).
    fn thinking(&self, effort: &str, gen: ModelGen) -> Result<Option<Value>, GatewayError> {
        const EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];
        if !EFFORTS.contains(&effort) {
            return Err(GatewayError::invalid(
                format!("`reasoning_effort` must be one of {EFFORTS:?}"),
                "reasoning_effort",
            ));
        }
        if !gen.thinks() {
            self.unsupported("reasoning_effort", "this Gemini model does not think")?;
            return Ok(None);
        }
        let include = effort != "none";
        Ok(Some(if gen.has_levels() {
            let level = match effort {
                "none" | "minimal" => "MINIMAL",
                "low" => "LOW",
                "medium" => "MEDIUM",
                _ => "HIGH",
            };
            json!({"thinkingLevel": level, "includeThoughts": include})
        } else {
            let budget = match effort {
                "none" => 0,
                "minimal" => 512,
                "low" => 1024,
                "medium" => 8192,
                _ => 24576,
            };
            if include {
                json!({"thinkingBudget": budget, "includeThoughts": true})
            } else {
                json!({"thinkingBudget": 0})
            }
        }))
    }
}

/// `tool_choice: {"type":"allowed_tools","allowed_tools":{"mode", "tools":[...]}}`.
fn allowed_tools(choice: &Map<String, Value>) -> Option<(String, Vec<String>)> {
    if choice.get("type")?.as_str()? != "allowed_tools" {
        return None;
    }
    let spec = choice.get("allowed_tools")?;
    let mode = spec.get("mode")?.as_str()?;
    if mode != "auto" && mode != "required" {
        return None;
    }
    let names = spec
        .get("tools")?
        .as_array()?
        .iter()
        .map(|t| t.get("function")?.get("name")?.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    Some((mode.to_owned(), names))
}

fn has_properties(schema: &Value) -> bool {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty())
        || schema.get("$ref").is_some()
        || schema.get("anyOf").is_some()
        || schema.get("allOf").is_some()
}

/// Percent-encodes everything outside RFC 3986 `pchar` except `:` (which would read as the
/// method verb) — `@`, `,` and `=` stay as they are.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'@'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What llmux knows about a target model from its name (`gemini-2.5-flash` → 2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModelGen(Option<(u32, u32)>);

impl ModelGen {
    fn of(model: &str) -> ModelGen {
        let name = model.rsplit('/').next().unwrap_or(model);
        let version = name.strip_prefix("gemini-").and_then(|rest| {
            let v = rest.split(['-', '@']).next()?;
            let mut it = v.split('.');
            let major = it.next()?.parse().ok()?;
            let minor = match it.next() {
                Some(m) => m.parse().ok()?,
                None => 0,
            };
            Some((major, minor))
        });
        ModelGen(version)
    }

    /// Gemini 1.x predates `responseJsonSchema`/`parametersJsonSchema`.
    fn legacy_schema(self) -> bool {
        self.0.is_some_and(|v| v < (2, 0))
    }

    /// Thinking exists from 2.5 on; an unversioned name (`gemini-flash-latest`) is current.
    fn thinks(self) -> bool {
        self.0.is_none_or(|v| v >= (2, 5))
    }

    /// Gemini 3 takes `thinkingLevel`; budgets are its backward-compatible fallback.
    fn has_levels(self) -> bool {
        self.0.is_some_and(|v| v.0 >= 3)
    }
}

// ---------------------------------------------------------------------------------------
// Messages → contents
// ---------------------------------------------------------------------------------------

struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

/// A call of the latest model turn, waiting for its `tool` message.
struct OpenCall {
    base_id: String,
    name: String,
    /// Where the call was declared (for the error naming it).
    at: String,
    answered: bool,
}

#[derive(Default)]
struct Conversation {
    system: Vec<Value>,
    turns: Vec<Turn>,
    /// Calls of the latest model turn.
    open: Vec<OpenCall>,
    /// Ids of every earlier call, for a clearer error than "unknown".
    earlier: HashSet<String>,
    /// `functionResponse` parts of the current run of `tool` messages, with their call index.
    responses: Vec<(usize, Value)>,
}

impl Conversation {
    fn build(req: &ChatRequest, gen: ModelGen) -> Result<Conversation, GatewayError> {
        let mut c = Conversation::default();
        for (i, msg) in req.messages.iter().enumerate() {
            let at = format!("messages[{i}]");
            if !matches!(msg, Message::Tool { .. }) {
                c.flush_responses();
            }
            match msg {
                Message::System { content, .. } | Message::Developer { content, .. } => {
                    for text in system_texts(content, &at)? {
                        c.system.push(json!({ "text": text }));
                    }
                }
                Message::User { content, .. } => {
                    let parts = user_parts(content, &format!("{at}.content"))?;
                    c.push("user", parts);
                }
                Message::Assistant {
                    content,
                    tool_calls,
                    refusal,
                    ..
                } => c.assistant(content.as_ref(), tool_calls.as_deref(), refusal, &at)?,
                Message::Tool {
                    content,
                    tool_call_id,
                    ..
                } => c.tool(content, tool_call_id, &at)?,
            }
        }
        c.flush_responses();
        c.check_answered()?;
        if c.turns.is_empty() {
            return Err(GatewayError::invalid(
                "Gemini needs at least one user or assistant message besides system messages",
                "messages",
            ));
        }
        if gen.has_levels() {
            for turn in c.turns.iter_mut().filter(|t| t.role == "model") {
                let first_call = turn
                    .parts
                    .iter_mut()
                    .find(|p| p.get("functionCall").is_some());
                if let Some(Value::Object(part)) = first_call {
                    part.entry("thoughtSignature")
                        .or_insert_with(|| DUMMY_SIGNATURE.into());
                }
            }
        }
        Ok(c)
    }

    /// Appends parts to the conversation, merging into the last turn when the role repeats.
    fn push(&mut self, role: &'static str, parts: Vec<Value>) {
        if parts.is_empty() {
            return;
        }
        match self.turns.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => self.turns.push(Turn { role, parts }),
        }
    }

    fn flush_responses(&mut self) {
        if self.responses.is_empty() {
            return;
        }
        let mut responses = std::mem::take(&mut self.responses);
        responses.sort_by_key(|(index, _)| *index);
        self.push("user", responses.into_iter().map(|(_, p)| p).collect());
    }

    /// Every call of the latest model turn must have been answered by now.
    fn check_answered(&self) -> Result<(), GatewayError> {
        match self.open.iter().find(|c| !c.answered) {
            Some(call) => Err(GatewayError::invalid(
                format!(
                    "no `tool` message answers the call `{}` (`{}`); Gemini needs one result per call",
                    call.base_id, call.name
                ),
                &call.at,
            )),
            None => Ok(()),
        }
    }

    fn assistant(
        &mut self,
        content: Option<&Content>,
        tool_calls: Option<&[crate::types::ToolCall]>,
        refusal: &Option<String>,
        at: &str,
    ) -> Result<(), GatewayError> {
        let mut parts = Vec::new();
        match content {
            None => {}
            Some(Content::Text(t)) if t.is_empty() => {}
            Some(Content::Text(t)) => parts.push(json!({ "text": t.as_str().into_owned() })),
            Some(Content::Parts(ps)) => {
                for (j, p) in ps.iter().enumerate() {
                    match p {
                        ContentPart::Text { text, .. }
                        | ContentPart::Refusal { refusal: text, .. } => {
                            if !text.is_empty() {
                                parts.push(json!({ "text": text }));
                            }
                        }
                        _ => {
                            return Err(GatewayError::invalid(
                                "assistant content may hold only text and refusal parts",
                                &format!("{at}.content[{j}]"),
                            ))
                        }
                    }
                }
            }
        }
        if let Some(r) = refusal.as_deref().filter(|r| !r.is_empty()) {
            parts.push(json!({ "text": r }));
        }
        let calls = tool_calls.unwrap_or_default();
        let continues_model_turn = self.turns.last().is_some_and(|t| t.role == "model");
        // A new model turn: the previous one's calls must all have been answered.
        if (!calls.is_empty() || !parts.is_empty()) && !continues_model_turn {
            self.check_answered()?;
            for call in self.open.drain(..) {
                self.earlier.insert(call.base_id);
            }
        }
        for (j, call) in calls.iter().enumerate() {
            let arg_at = format!("{at}.tool_calls[{j}].function.arguments");
            let args = parse_arguments(&call.function.arguments, &arg_at)?;
            let (base, signature) = decode_tool_call_id(&call.id);
            let mut part = json!({"functionCall": {"name": call.function.name, "args": args}});
            if let (Some(sig), Some(obj)) = (signature, part.as_object_mut()) {
                obj.insert("thoughtSignature".into(), sig.into());
            }
            parts.push(part);
            self.open.push(OpenCall {
                base_id: base.to_owned(),
                name: call.function.name.clone(),
                at: format!("{at}.tool_calls[{j}]"),
                answered: false,
            });
        }
        self.push("model", parts);
        Ok(())
    }

    fn tool(&mut self, content: &Content, id: &str, at: &str) -> Result<(), GatewayError> {
        let (base, _) = decode_tool_call_id(id);
        let Some(index) = self.open.iter().position(|c| c.base_id == base) else {
            let why = if self.earlier.contains(base) {
                "answers a call of an earlier assistant turn, not the one just before it"
            } else {
                "matches no tool call of an earlier assistant message"
            };
            return Err(GatewayError::invalid(
                format!("`tool_call_id` `{id}` {why}"),
                &format!("{at}.tool_call_id"),
            ));
        };
        let call = &mut self.open[index];
        if call.answered {
            return Err(GatewayError::invalid(
                format!("the call `{id}` is answered twice"),
                &format!("{at}.tool_call_id"),
            ));
        }
        call.answered = true;
        let text = match content {
            Content::Text(t) => t.as_str().into_owned(),
            Content::Parts(parts) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match p {
                        ContentPart::Text { text: t, .. } => text.push_str(t),
                        _ => {
                            return Err(GatewayError::invalid(
                                "a tool result sent to Gemini may hold only text",
                                &format!("{at}.content[{j}]"),
                            ))
                        }
                    }
                }
                text
            }
        };
        let response = tool_response(&text);
        let name = call.name.clone();
        self.responses.push((
            index,
            json!({"functionResponse": {"name": name, "response": response}}),
        ));
        Ok(())
    }
}

/// `functionResponse.response` must be an object: JSON objects pass, anything else is
/// wrapped as `{"result": ...}` (parsed JSON when it parses, else the text).
fn tool_response(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Value::Object(o),
        Ok(other) => json!({ "result": other }),
        Err(_) => json!({ "result": text }),
    }
}

/// OpenAI `arguments` (a JSON string) → Gemini `args` (an object); empty means none.
fn parse_arguments(arguments: &str, at: &str) -> Result<Value, GatewayError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(o)) => Ok(Value::Object(o)),
        Ok(_) => Err(GatewayError::invalid(
            "tool call arguments must be a JSON object for Gemini",
            at,
        )),
        Err(e) => Err(GatewayError::invalid(
            format!("tool call arguments are not valid JSON: {e}"),
            at,
        )),
    }
}

fn system_texts(content: &Content, at: &str) -> Result<Vec<String>, GatewayError> {
    match content {
        Content::Text(t) => Ok((!t.is_empty())
            .then(|| t.as_str().into_owned())
            .into_iter()
            .collect()),
        Content::Parts(parts) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match p {
                    ContentPart::Text { text, .. } => {
                        if !text.is_empty() {
                            out.push(text.clone());
                        }
                    }
                    _ => {
                        return Err(GatewayError::invalid(
                            "Gemini system instructions may hold only text",
                            &format!("{at}.content[{j}]"),
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

fn user_parts(content: &Content, at: &str) -> Result<Vec<Value>, GatewayError> {
    let parts = match content {
        Content::Text(t) => return Ok(vec![json!({ "text": t.as_str().into_owned() })]),
        Content::Parts(parts) => parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        out.push(match p {
            ContentPart::Text { text, .. } => json!({ "text": text }),
            ContentPart::ImageUrl { image_url, .. } => {
                media_part(&image_url.url, None, &format!("{at}.image_url.url"))?
            }
            ContentPart::InputAudio { input_audio, .. } => audio_part(input_audio, &at)?,
            ContentPart::File { file, .. } => file_part(file, &at)?,
            ContentPart::Refusal { .. } => {
                return Err(GatewayError::invalid(
                    "a user message cannot hold a refusal part",
                    &at,
                ))
            }
        });
    }
    Ok(out)
}

/// `data:` URL → `inlineData`; a URL → `fileData` (not fetched by llmux).
fn media_part(url: &str, name_hint: Option<&str>, at: &str) -> Result<Value, GatewayError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest.split_once(',').ok_or_else(|| {
            GatewayError::invalid("a `data:` URL needs a comma before its data", at)
        })?;
        let mut params = header.split(';');
        let mime = params.next().unwrap_or_default();
        if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
            return Err(GatewayError::invalid(
                "only base64 `data:` URLs can be sent to Gemini",
                at,
            ));
        }
        if mime.is_empty() {
            return Err(GatewayError::invalid(
                "a `data:` URL needs a MIME type for Gemini",
                at,
            ));
        }
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    let scheme_ok = ["https://", "http://", "gs://"]
        .iter()
        .any(|s| url.len() > s.len() && url[..s.len()].eq_ignore_ascii_case(s));
    if !scheme_ok {
        return Err(GatewayError::invalid(
            "media must be a `data:` URL or an http(s)/gs URL",
            at,
        ));
    }
    let mime = guess_mime(name_hint.unwrap_or(url)).unwrap_or("image/jpeg");
    Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
}

/// A MIME type from a file name or URL's extension.
fn guess_mime(name: &str) -> Option<&'static str> {
    let path = name.split(['?', '#']).next().unwrap_or(name);
    let last = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = last.rsplit_once('.')?;
    Some(match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "wav" => "audio/wav",
        "mp3" => "audio/mp3",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "mov" => "video/mov",
        "webm" => "video/webm",
        _ => return None,
    })
}

fn audio_part(audio: &Value, at: &str) -> Result<Value, GatewayError> {
    let data = audio.get("data").and_then(Value::as_str);
    let format = audio.get("format").and_then(Value::as_str);
    let (Some(data), Some(format)) = (data, format) else {
        return Err(GatewayError::invalid(
            "`input_audio` needs `data` and `format`",
            &format!("{at}.input_audio"),
        ));
    };
    let mime = match format {
        "wav" => "audio/wav",
        "mp3" => "audio/mp3",
        "flac" => "audio/flac",
        "ogg" | "opus" => "audio/ogg",
        "aac" => "audio/aac",
        "aiff" => "audio/aiff",
        other => {
            return Err(GatewayError::invalid(
                format!("audio format `{other}` cannot be sent to Gemini"),
                &format!("{at}.input_audio.format"),
            ))
        }
    };
    Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
}

fn file_part(file: &Value, at: &str) -> Result<Value, GatewayError> {
    let name = file.get("filename").and_then(Value::as_str);
    match file.get("file_data").and_then(Value::as_str) {
        Some(data) if data.starts_with("data:") => {
            media_part(data, name, &format!("{at}.file.file_data"))
        }
        Some(data) => match name.and_then(guess_mime) {
            Some(mime) => Ok(json!({"inlineData": {"mimeType": mime, "data": data}})),
            None => Err(GatewayError::invalid(
                "`file_data` needs a `data:` URL or a `filename` with a known extension",
                &format!("{at}.file.file_data"),
            )),
        },
        None => Err(GatewayError::invalid(
            "OpenAI `file_id` references cannot be resolved for Gemini; send `file_data`",
            &format!("{at}.file"),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Tool-call ids
// ---------------------------------------------------------------------------------------

/// `call_<base>` plus the thought signature, when there is one (LiteLLM's convention).
pub fn encode_tool_call_id(base: &str, signature: Option<&str>) -> String {
    match signature.filter(|s| !s.is_empty()) {
        Some(sig) => format!("{base}{THOUGHT_SEPARATOR}{sig}"),
        None => base.to_owned(),
    }
}

/// Splits an id from [`encode_tool_call_id`] into its base and signature.
pub fn decode_tool_call_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once(THOUGHT_SEPARATOR) {
        Some((base, sig)) if !sig.is_empty() => (base, Some(sig)),
        Some((base, _)) => (base, None),
        None => (id, None),
    }
}

/// The OpenAI id of the `index`-th call of a response: Gemini's own call id when it gave one,
/// else the response id and the index. The base never holds `__`, so it never holds
/// [`THOUGHT_SEPARATOR`].
fn tool_call_id(
    gemini_id: Option<&str>,
    response_id: &str,
    index: usize,
    sig: Option<&str>,
) -> String {
    let raw = match gemini_id.filter(|s| !s.is_empty()) {
        Some(id) => id.to_owned(),
        None => format!("{response_id}_{index}"),
    };
    let mut base = String::from("call_");
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' {
            c
        } else {
            '_'
        };
        if !(c == '_' && base.ends_with('_')) {
            base.push(c);
        }
    }
    encode_tool_call_id(&base, sig)
}

/// 64-bit FNV-1a: a stable id for responses Gemini gave none.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------
// Response (shared by the non-stream answer and each stream chunk)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GenResponse {
    candidates: Option<Vec<Candidate>>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
    model_version: Option<String>,
    response_id: Option<String>,
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
    index: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CandidateContent {
    parts: Option<Vec<Part>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Part {
    text: Option<String>,
    thought: Option<bool>,
    thought_signature: Option<String>,
    function_call: Option<FunctionCallPart>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct FunctionCallPart {
    id: Option<String>,
    name: Option<String>,
    args: Option<Value>,
    /// Vertex `streamFunctionCallArguments` only.
    partial_args: Option<Vec<PartialArg>>,
    will_continue: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PartialArg {
    json_path: Option<String>,
    string_value: Option<String>,
    number_value: Option<serde_json::Number>,
    bool_value: Option<bool>,
    null_value: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct PromptFeedback {
    block_reason: Option<String>,
    block_reason_message: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    tool_use_prompt_token_count: Option<u64>,
}

impl UsageMetadata {
    /// providers.md §3.5: prompt = prompt + tool-use prompt (cache reads included);
    /// completion = candidates + thoughts; reasoning = thoughts; no cache writes on Gemini.
    fn to_usage(&self) -> Usage {
        let prompt = self
            .prompt_token_count
            .unwrap_or(0)
            .saturating_add(self.tool_use_prompt_token_count.unwrap_or(0));
        let cached = self.cached_content_token_count.unwrap_or(0).min(prompt);
        let output = self
            .candidates_token_count
            .unwrap_or(0)
            .saturating_add(self.thoughts_token_count.unwrap_or(0));
        openai_out::usage(
            prompt - cached,
            cached,
            0,
            output,
            self.thoughts_token_count,
        )
    }
}

impl GenResponse {
    /// The candidate llmux answers with (`n` is always 1).
    fn candidate(&self) -> Option<&Candidate> {
        let all = self.candidates.as_deref()?;
        all.iter()
            .find(|c| c.index.unwrap_or(0) == 0)
            .or_else(|| all.first())
    }

    fn parts(&self) -> &[Part] {
        self.candidate()
            .and_then(|c| c.content.as_ref())
            .and_then(|c| c.parts.as_deref())
            .unwrap_or_default()
    }
}

/// Gemini `finishReason` → OpenAI `finish_reason` (providers.md §3.5); a plain stop with any
/// function call is `tool_calls`.
fn finish_reason(raw: Option<&str>, has_calls: bool) -> FinishReason {
    match raw.unwrap_or("STOP") {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "LANGUAGE"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "IMAGE_OTHER"
        | "NO_IMAGE" => FinishReason::ContentFilter,
        "STOP" | "FINISH_REASON_UNSPECIFIED" if has_calls => FinishReason::ToolCalls,
        // MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS, OTHER, ...
        _ => FinishReason::Stop,
    }
}

/// Who failed, for building failures (shared by the adapter and its stream translators).
#[derive(Clone)]
struct Ident {
    name: String,
    api_key: String,
}

impl Ident {
    fn protocol(&self, message: impl Into<String>) -> UpstreamFailure {
        UpstreamFailure::new(&self.name, FailureKind::Protocol, message)
    }

    /// HTTP 200 without candidates: the prompt itself was blocked (providers.md §3.6).
    fn blocked(&self, feedback: Option<&PromptFeedback>) -> Option<UpstreamFailure> {
        let feedback = feedback?;
        let reason = feedback.block_reason.as_deref()?;
        let mut message = format!("Gemini blocked the prompt (blockReason: {reason})");
        if let Some(m) = feedback.block_reason_message.as_deref() {
            message = format!("{message}: {m}");
        }
        let mut f = UpstreamFailure::new(
            &self.name,
            FailureKind::Status(400),
            super::scrub_secret(&message, &self.api_key),
        );
        f.detail = Some(Box::new(ErrorDetail {
            error_type: Some("invalid_request_error".into()),
            code: Some("content_filter".into()),
            param: None,
        }));
        f.permanent = true;
        Some(f)
    }

    /// An `{"error": ...}` object inside a 200 body or a stream event.
    fn embedded_error(&self, r: &GenResponse, raw: &[u8]) -> Option<UpstreamFailure> {
        let status = r
            .error
            .as_ref()?
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..600).contains(c))
            .unwrap_or(500);
        Some(gemini_error(
            &self.name,
            &self.api_key,
            status,
            &http::HeaderMap::new(),
            raw,
        ))
    }
}

impl Adapter for GeminiAdapter {
    fn chat_request(
        &self,
        req: &ChatRequest,
        model: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        let body = self.request_body(req, model)?;
        let body = serde_json::to_vec(&body).map_err(|e| GatewayError::Internal {
            message: format!("could not serialise the Gemini request: {e}"),
        })?;
        let verb = if req.stream {
            ":streamGenerateContent?alt=sse"
        } else {
            ":generateContent"
        };
        Ok(UpstreamRequest {
            method: "POST",
            path: format!("{}{verb}", self.model_path(model)),
            headers: self.headers(true),
            body: Bytes::from(body),
        })
    }

    fn chat_response(
        &self,
        _req: &ChatRequest,
        model: &str,
        body: &[u8],
    ) -> Result<TranslatedResponse, UpstreamFailure> {
        let r: GenResponse = serde_json::from_slice(body).map_err(|e| {
            self.id.protocol(format!(
                "the response is not a Gemini GenerateContentResponse: {e}"
            ))
        })?;
        if let Some(failure) = self.id.embedded_error(&r, body) {
            return Err(failure);
        }
        if r.candidates.as_ref().is_none_or(Vec::is_empty) {
            return Err(self
                .id
                .blocked(r.prompt_feedback.as_ref())
                .unwrap_or_else(|| self.id.protocol("the Gemini response has no candidates")));
        }
        let id = r
            .response_id
            .clone()
            .unwrap_or_else(|| format!("gen-{:016x}", fnv1a(body)));
        let (mut content, mut reasoning, mut tool_calls) =
            (String::new(), String::new(), Vec::new());
        let mut assembler = CallAssembler::default();
        for part in r.parts() {
            match (&part.function_call, &part.text) {
                (Some(fc), _) => {
                    for call in assembler.feed(fc, part.thought_signature.as_deref()) {
                        let call_id = tool_call_id(
                            call.id.as_deref(),
                            &id,
                            tool_calls.len(),
                            call.signature.as_deref(),
                        );
                        tool_calls.push(ToolCallOut {
                            id: call_id,
                            name: call.name,
                            arguments: call.args.to_string(),
                        });
                    }
                }
                (None, Some(text)) if part.thought == Some(true) => reasoning.push_str(text),
                (None, Some(text)) => content.push_str(text),
                (None, None) => {}
            }
        }
        if let Some(call) = assembler.flush() {
            let call_id = tool_call_id(
                call.id.as_deref(),
                &id,
                tool_calls.len(),
                call.signature.as_deref(),
            );
            tool_calls.push(ToolCallOut {
                id: call_id,
                name: call.name,
                arguments: call.args.to_string(),
            });
        }
        let raw_finish = r.candidate().and_then(|c| c.finish_reason.as_deref());
        let usage = r.usage_metadata.as_ref().map(UsageMetadata::to_usage);
        let out = CompletionOut {
            id,
            created: openai_out::now_secs(),
            model: r.model_version.clone().unwrap_or_else(|| model.to_owned()),
            content: (!content.is_empty()).then_some(content),
            reasoning: (!reasoning.is_empty()).then_some(reasoning),
            refusal: None,
            finish_reason: finish_reason(raw_finish, !tool_calls.is_empty()),
            tool_calls,
            usage: usage.clone().unwrap_or_default(),
        };
        Ok(out.to_response(usage))
    }

    fn stream_translator(&self, req: &ChatRequest, model: &str) -> Box<dyn StreamTranslator> {
        Box::new(GeminiStream::new(self, model, req.wants_stream_usage()))
    }

    fn error(&self, status: u16, headers: &http::HeaderMap, body: &[u8]) -> UpstreamFailure {
        gemini_error(&self.id.name, &self.id.api_key, status, headers, body)
    }

    fn probe_request(&self, model: &str) -> UpstreamRequest {
        UpstreamRequest {
            method: "GET",
            path: self.model_path(model),
            headers: self.headers(false),
            body: Bytes::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Function calls, whole or (Vertex `streamFunctionCallArguments`) in pieces
// ---------------------------------------------------------------------------------------

/// A complete function call.
struct CallOut {
    id: Option<String>,
    name: String,
    args: Value,
    signature: Option<String>,
}

/// Turns `functionCall` parts into complete calls. The Gemini API sends each call whole;
/// Vertex may stream one as a `willContinue` head, `partialArgs` pieces (string values
/// continue across pieces) and a closing part, which this reassembles.
#[derive(Default)]
struct CallAssembler {
    pending: Option<CallOut>,
}

/// Largest array index a `partialArgs` path may create (guards memory).
const MAX_PARTIAL_INDEX: usize = 10_000;

impl CallAssembler {
    fn feed(&mut self, fc: &FunctionCallPart, signature: Option<&str>) -> Vec<CallOut> {
        let mut done = Vec::new();
        let continues = fc.will_continue == Some(true);
        if fc.name.is_some() {
            done.extend(self.pending.take());
            let args = match &fc.args {
                Some(Value::Object(o)) => Value::Object(o.clone()),
                _ => json!({}),
            };
            self.pending = Some(CallOut {
                id: fc.id.clone(),
                name: fc.name.clone().unwrap_or_default(),
                args,
                signature: signature.map(str::to_owned),
            });
        }
        if let Some(call) = self.pending.as_mut() {
            for piece in fc.partial_args.iter().flatten() {
                apply_partial(&mut call.args, piece);
            }
            if call.signature.is_none() {
                call.signature = signature.map(str::to_owned);
            }
        }
        if !continues {
            done.extend(self.pending.take());
        }
        done
    }

    fn flush(&mut self) -> Option<CallOut> {
        self.pending.take()
    }
}

enum PathStep {
    Key(String),
    Index(usize),
}

/// `$.a.b[0]['c d']` → steps; `None` for anything else.
fn parse_json_path(path: &str) -> Option<Vec<PathStep>> {
    let mut rest = path.strip_prefix('$')?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            steps.push(PathStep::Key(r[..end].to_owned()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            steps.push(PathStep::Key(r[..end].to_owned()));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let index: usize = r[..end].parse().ok()?;
            if index > MAX_PARTIAL_INDEX {
                return None;
            }
            steps.push(PathStep::Index(index));
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

fn apply_partial(args: &mut Value, piece: &PartialArg) {
    let Some(steps) = piece.json_path.as_deref().and_then(parse_json_path) else {
        return;
    };
    let mut node = args;
    for step in &steps {
        node = match step {
            PathStep::Key(k) => {
                if !node.is_object() {
                    *node = json!({});
                }
                match node {
                    Value::Object(o) => o.entry(k.clone()).or_insert(Value::Null),
                    _ => return,
                }
            }
            PathStep::Index(i) => {
                if !node.is_array() {
                    *node = json!([]);
                }
                match node {
                    Value::Array(a) => {
                        if a.len() <= *i {
                            a.resize(*i + 1, Value::Null);
                        }
                        &mut a[*i]
                    }
                    _ => return,
                }
            }
        };
    }
    if let Some(s) = &piece.string_value {
        match node {
            Value::String(existing) => existing.push_str(s),
            _ => *node = Value::String(s.clone()),
        }
    } else if let Some(n) = &piece.number_value {
        *node = Value::Number(n.clone());
    } else if let Some(b) = piece.bool_value {
        *node = Value::Bool(b);
    } else if piece.null_value.is_some() {
        *node = Value::Null;
    }
}

// ---------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------

/// Translates `streamGenerateContent?alt=sse` into OpenAI chunks. The finish chunk waits for
/// the end of the body, so parts arriving after `finishReason` (or a Vertex call still being
/// assembled) are never lost, and the `tool_calls` override sees every call.
struct GeminiStream {
    id: Ident,
    framer: SseFramer,
    writer: ChunkWriter,
    identity_set: bool,
    response_id: String,
    emitted: bool,
    calls: usize,
    assembler: CallAssembler,
    raw_finish: Option<String>,
    blocked_late: bool,
    usage: Option<Usage>,
    done: bool,
}

impl GeminiStream {
    fn new(adapter: &GeminiAdapter, model: &str, include_usage: bool) -> GeminiStream {
        GeminiStream {
            id: adapter.id.clone(),
            framer: SseFramer::default(),
            writer: ChunkWriter::new("", model, include_usage),
            identity_set: false,
            response_id: String::new(),
            emitted: false,
            calls: 0,
            assembler: CallAssembler::default(),
            raw_finish: None,
            blocked_late: false,
            usage: None,
            done: false,
        }
    }

    /// A failure: fails the attempt while nothing went out, else ends the client's stream
    /// with an OpenAI error event and `[DONE]`.
    fn fail(
        &mut self,
        failure: UpstreamFailure,
        out: &mut BytesMut,
    ) -> Result<(), UpstreamFailure> {
        if !self.emitted {
            return Err(failure);
        }
        let err = GatewayError::Upstream {
            failure,
            attempts: 1,
        };
        sse::data_event(out, err.to_json().to_string().as_bytes());
        self.writer.end(out, None);
        self.done = true;
        Ok(())
    }

    fn emit_call(&mut self, call: CallOut, out: &mut BytesMut) {
        let id = tool_call_id(
            call.id.as_deref(),
            &self.response_id,
            self.calls,
            call.signature.as_deref(),
        );
        self.writer
            .tool_call_start(out, self.calls, &id, &call.name, &call.args.to_string());
        self.calls += 1;
    }

    fn handle(&mut self, event: &[u8], out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if self.done {
            return Ok(());
        }
        let (_, data) = sse::parse_event(event);
        let data = data.trim_ascii();
        if data.is_empty() {
            return Ok(());
        }
        let r: GenResponse = match serde_json::from_slice(data) {
            Ok(r) => r,
            Err(e) => {
                let f = self
                    .id
                    .protocol(format!("a stream event is not a Gemini response: {e}"));
                return self.fail(f, out);
            }
        };
        if let Some(f) = self.id.embedded_error(&r, data) {
            return self.fail(f, out);
        }
        if r.candidates.as_ref().is_none_or(Vec::is_empty) {
            if let Some(f) = self.id.blocked(r.prompt_feedback.as_ref()) {
                if !self.emitted {
                    return Err(f);
                }
                self.blocked_late = true;
                self.raw_finish = Some("BLOCKED".into());
            }
        }
        if !self.identity_set {
            self.identity_set = true;
            self.response_id = r
                .response_id
                .clone()
                .unwrap_or_else(|| format!("gen-{:016x}", fnv1a(data)));
            self.writer
                .set_identity(Some(&self.response_id), r.model_version.as_deref());
        }
        if let Some(u) = &r.usage_metadata {
            self.usage = Some(u.to_usage());
        }
        let before = out.len();
        for part in r.parts() {
            match (&part.function_call, &part.text) {
                (Some(fc), _) => {
                    for call in self.assembler.feed(fc, part.thought_signature.as_deref()) {
                        self.emit_call(call, out);
                    }
                }
                (None, Some(text)) if part.thought == Some(true) => {
                    self.writer.reasoning(out, text)
                }
                (None, Some(text)) => self.writer.content(out, text),
                (None, None) => {}
            }
        }
        if let Some(reason) = r.candidate().and_then(|c| c.finish_reason.clone()) {
            self.raw_finish = Some(reason);
        }
        self.emitted |= out.len() > before;
        Ok(())
    }
}

impl StreamTranslator for GeminiStream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        self.framer.push(chunk);
        while let Some(event) = self.framer.next_event() {
            self.handle(&event, out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if let Some(rest) = self.framer.take_rest() {
            self.handle(&rest, out)?;
        }
        if self.done {
            return Ok(());
        }
        let before = out.len();
        if let Some(call) = self.assembler.flush() {
            self.emit_call(call, out);
        }
        self.emitted |= out.len() > before;
        let Some(raw) = self.raw_finish.clone() else {
            let f = self.id.protocol(if self.emitted {
                "the Gemini stream ended without a finishReason (cut short)"
            } else {
                "the Gemini stream ended before any answer"
            });
            return self.fail(f, out);
        };
        let reason = if self.blocked_late {
            FinishReason::ContentFilter
        } else {
            finish_reason(Some(&raw), self.calls > 0)
        };
        self.writer.finish(out, reason);
        self.writer.end(out, self.usage.as_ref());
        self.done = true;
        Ok(())
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.clone()
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Maps a Google RPC error body (`{"error":{"code","message","status","details"}}`, also the
/// array form) to a failure in OpenAI vocabulary (providers.md §3.9): `RetryInfo.retryDelay`
/// becomes `retry_after`, a per-day quota is permanent, the key never reaches the message.
pub fn gemini_error(
    provider: &str,
    api_key: &str,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> UpstreamFailure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| match v {
        Value::Array(a) => a.first()?.get("error"),
        other => other.get("error"),
    });
    let mut f = UpstreamFailure::new(provider, FailureKind::Status(status), String::new());
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    f.message = match message {
        Some(m) if !m.is_empty() => m,
        _ if error.is_some() => format!("HTTP {status}"),
        _ => {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_owned();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }
        }
    };
    f.message = super::scrub_secret(&f.message, api_key);
    let rpc_status = error
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let details: &[Value] = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let mut reason = None;
    let mut retry = None;
    let mut daily = false;
    for d in details {
        let kind = d.get("@type").and_then(Value::as_str).unwrap_or_default();
        if kind.ends_with("google.rpc.RetryInfo") {
            retry = d
                .get("retryDelay")
                .and_then(Value::as_str)
                .and_then(parse_duration);
        } else if kind.ends_with("google.rpc.ErrorInfo") {
            reason = d.get("reason").and_then(Value::as_str);
        } else if kind.ends_with("google.rpc.QuotaFailure") {
            let violations = d.get("violations").and_then(Value::as_array);
            daily |= violations.into_iter().flatten().any(|v| {
                v.get("quotaId")
                    .and_then(Value::as_str)
                    .is_some_and(|id| id.contains("PerDay"))
            });
        }
    }
    let lower = f.message.to_ascii_lowercase();
    let too_long = lower.contains("input token count")
        || lower.contains("exceeds the maximum number of tokens")
        || lower.contains("too many tokens");
    let (error_type, code) = match (rpc_status, status) {
        _ if reason.is_some_and(|r| r.starts_with("API_KEY")) => {
            ("authentication_error", "invalid_api_key")
        }
        (_, 400) if too_long => ("invalid_request_error", "context_length_exceeded"),
        ("INVALID_ARGUMENT" | "OUT_OF_RANGE", _) | ("", 400) => {
            ("invalid_request_error", "invalid_request")
        }
        ("FAILED_PRECONDITION", _) => ("invalid_request_error", "failed_precondition"),
        ("UNAUTHENTICATED", _) | ("", 401) => ("authentication_error", "invalid_api_key"),
        ("PERMISSION_DENIED", _) | ("", 403) => ("authentication_error", "permission_denied"),
        ("NOT_FOUND", _) | ("", 404) if lower.contains("model") => {
            ("invalid_request_error", "model_not_found")
        }
        ("NOT_FOUND", _) | ("", 404) => ("invalid_request_error", "not_found"),
        ("RESOURCE_EXHAUSTED", _) | ("", 429) => ("rate_limit_error", "rate_limit_exceeded"),
        ("CANCELLED", _) => ("api_error", "cancelled"),
        ("DEADLINE_EXCEEDED", _) | ("", 504) => ("timeout_error", "deadline_exceeded"),
        ("UNAVAILABLE", _) | ("", 503) => ("server_error", "service_unavailable"),
        _ if status >= 500 => ("server_error", "internal_error"),
        _ => ("invalid_request_error", "invalid_request"),
    };
    f.detail = Some(Box::new(ErrorDetail {
        error_type: Some(error_type.into()),
        code: Some(code.into()),
        param: None,
    }));
    f.retry_after = retry.or_else(|| super::retry_after(headers));
    // A per-day quota does not reset until midnight Pacific: retrying only burns attempts.
    f.permanent = daily && status == 429;
    f
}

/// A protobuf JSON `Duration` (`"34s"`, `"1.5s"`).
fn parse_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (0.0..1e9)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------
// JSON Schema → Gemini OpenAPI-3.0 subset (providers.md §3.7)
// ---------------------------------------------------------------------------------------

/// Keywords of the OpenAPI `Schema` subset copied as they are.
const KEPT_KEYWORDS: [&str; 13] = [
    "title",
    "description",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "default",
];

/// Most schema nodes (after `$ref` inlining) one conversion may produce.
const MAX_SCHEMA_NODES: usize = 10_000;

/// Rewrites a JSON Schema into the OpenAPI-3.0 subset that `responseSchema` and function
/// `parameters` accept; llmux uses it only for Gemini 1.x, which lacks the JSON-Schema fields.
///
/// Local `$ref`s (`#/$defs/..`, `#/definitions/..`) are inlined (recursion is an error);
/// `allOf` is merged; `oneOf` becomes `anyOf`; `null` in a type list or an `anyOf` becomes
/// `nullable`; `const` becomes a one-value `enum`; enum values become strings (numeric enums
/// are dropped, their values noted in `description`); types are upper-cased; keywords
/// outside the subset are removed; `propertyOrdering` keeps the key order when `response`.
/// Constructs the subset cannot express (an object without properties, an array without
/// `items`, tuples, remote refs) are errors rather than silent changes.
pub fn to_openapi_schema(schema: &Value, response: bool) -> Result<Value, String> {
    let mut defs = Map::new();
    for key in ["$defs", "definitions"] {
        if let Some(d) = schema.get(key).and_then(Value::as_object) {
            defs.extend(d.iter().map(|(k, v)| (format!("#/{key}/{k}"), v.clone())));
        }
    }
    let mut cx = SchemaCx {
        defs,
        refs: Vec::new(),
        nodes: 0,
        response,
    };
    let out = cx.convert(schema, 0)?;
    if out.get("type").and_then(Value::as_str) == Some("OBJECT")
        && out
            .get("properties")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
    {
        return Err("Gemini's schema subset cannot express an object without properties".into());
    }
    Ok(out)
}

struct SchemaCx {
    defs: Map<String, Value>,
    refs: Vec<String>,
    nodes: usize,
    response: bool,
}

fn is_null_schema(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null")
}

fn openapi_type(t: &str) -> Result<&'static str, String> {
    Ok(match t {
        "string" => "STRING",
        "number" => "NUMBER",
        "integer" => "INTEGER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        "object" => "OBJECT",
        other => return Err(format!("unknown schema type `{other}`")),
    })
}

impl SchemaCx {
    fn convert(&mut self, node: &Value, depth: usize) -> Result<Value, String> {
        if depth > 64 {
            return Err("the schema nests deeper than 64 levels".into());
        }
        self.nodes += 1;
        if self.nodes > MAX_SCHEMA_NODES {
            return Err(format!(
                "the schema expands to more than {MAX_SCHEMA_NODES} nodes"
            ));
        }
        let obj = match node {
            Value::Object(o) => o,
            Value::Bool(true) => {
                return Err("Gemini's schema subset cannot express `true` (any value)".into())
            }
            _ => return Err("every schema node must be an object".into()),
        };
        if let Some(r) = obj.get("$ref") {
            let r = r.as_str().ok_or("`$ref` must be a string")?;
            if self.refs.iter().any(|seen| seen == r) {
                return Err(format!(
                    "the recursive `$ref` `{r}` cannot be expressed in Gemini's schema subset"
                ));
            }
            let target =
                self.defs.get(r).cloned().ok_or_else(|| {
                    format!("`$ref` `{r}` does not point into `$defs`/`definitions`")
                })?;
            self.refs.push(r.to_owned());
            let mut out = self.convert(&target, depth + 1)?;
            self.refs.pop();
            // `description` and friends beside a `$ref` override the target's.
            let mut siblings = obj.clone();
            siblings.remove("$ref");
            if !siblings.is_empty() {
                let extra = self.convert_plain(&siblings, depth)?;
                merge_schema(&mut out, extra, true);
            }
            return Ok(out);
        }
        self.convert_plain(obj, depth)
    }

    fn convert_plain(&mut self, obj: &Map<String, Value>, depth: usize) -> Result<Value, String> {
        let mut out = Map::new();
        let mut nullable = obj.get("nullable") == Some(&Value::Bool(true));
        let mut types: Vec<&str> = match obj.get("type") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().ok_or("a `type` list must hold strings"))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`type` must be a string or a list".into()),
        };
        if types.contains(&"null") {
            nullable = true;
            types.retain(|t| *t != "null");
        }
        match types.as_slice() {
            [] => {}
            [one] => {
                out.insert("type".into(), openapi_type(one)?.into());
            }
            many => {
                let variants = many
                    .iter()
                    .map(|t| openapi_type(t).map(|t| json!({ "type": t })))
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert("anyOf".into(), Value::Array(variants));
            }
        }
        for key in KEPT_KEYWORDS {
            if let Some(v) = obj.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        let ty = out.get("type").and_then(Value::as_str).map(str::to_owned);
        if let Some(format) = obj.get("format").and_then(Value::as_str) {
            let ok = match ty.as_deref() {
                Some("STRING") => matches!(format, "enum" | "date-time"),
                Some("NUMBER") => matches!(format, "float" | "double"),
                Some("INTEGER") => matches!(format, "int32" | "int64"),
                _ => false,
            };
            if ok {
                out.insert("format".into(), format.into());
            }
        }
        let mut values: Option<Vec<Value>> = obj.get("enum").and_then(Value::as_array).cloned();
        if let Some(c) = obj.get("const") {
            values = Some(vec![c.clone()]);
        }
        if let Some(values) = values {
            if values.iter().any(Value::is_null) {
                nullable = true;
            }
            let values: Vec<Value> = values.into_iter().filter(|v| !v.is_null()).collect();
            match ty.as_deref() {
                Some("NUMBER" | "INTEGER" | "BOOLEAN") => {
                    let listed: Vec<String> = values.iter().map(Value::to_string).collect();
                    let note = format!("Allowed values: {}.", listed.join(", "));
                    let desc = match out.get("description").and_then(Value::as_str) {
                        Some(d) => format!("{d} {note}"),
                        None => note,
                    };
                    out.insert("description".into(), desc.into());
                }
                _ => {
                    let strings: Vec<Value> = values
                        .iter()
                        .map(|v| match v {
                            Value::String(s) => Value::String(s.clone()),
                            other => Value::String(other.to_string()),
                        })
                        .collect();
                    out.insert("type".into(), "STRING".into());
                    out.insert("format".into(), "enum".into());
                    out.insert("enum".into(), Value::Array(strings));
                }
            }
        }
        let variants = obj.get("anyOf").or_else(|| obj.get("oneOf"));
        if let Some(variants) = variants {
            let variants = variants
                .as_array()
                .ok_or("`anyOf`/`oneOf` must be a list")?;
            let mut converted = Vec::new();
            for v in variants {
                if is_null_schema(v) {
                    nullable = true;
                } else {
                    converted.push(self.convert(v, depth + 1)?);
                }
            }
            if converted.len() == 1 && !out.contains_key("type") {
                if let Some(only) = converted.pop() {
                    let mut merged = only;
                    merge_schema(&mut merged, Value::Object(out), true);
                    out = match merged {
                        Value::Object(o) => o,
                        _ => Map::new(),
                    };
                }
            } else if !converted.is_empty() {
                out.insert("anyOf".into(), Value::Array(converted));
            }
        }
        if let Some(props) = obj.get("properties") {
            let props = props.as_object().ok_or("`properties` must be an object")?;
            let mut converted = Map::new();
            for (k, v) in props {
                converted.insert(k.clone(), self.convert(v, depth + 1)?);
            }
            if self.response && !props.is_empty() {
                out.insert(
                    "propertyOrdering".into(),
                    props.keys().cloned().map(Value::String).collect(),
                );
            }
            out.insert("properties".into(), Value::Object(converted));
            if let Some(req) = obj.get("required").and_then(Value::as_array) {
                let req: Vec<Value> = req.iter().filter(|r| r.is_string()).cloned().collect();
                if !req.is_empty() {
                    out.insert("required".into(), Value::Array(req));
                }
            }
        }
        if let Some(items) = obj.get("items") {
            if !items.is_object() {
                return Err("tuple `items` cannot be expressed in Gemini's schema subset".into());
            }
            out.insert("items".into(), self.convert(items, depth + 1)?);
        }
        if obj.contains_key("prefixItems") {
            return Err("`prefixItems` cannot be expressed in Gemini's schema subset".into());
        }
        if let Some(all) = obj.get("allOf") {
            let all = all.as_array().ok_or("`allOf` must be a list")?;
            let mut merged = Value::Object(out);
            for sub in all {
                let sub = self.convert(sub, depth + 1)?;
                merge_schema(&mut merged, sub, false);
            }
            out = match merged {
                Value::Object(o) => o,
                _ => Map::new(),
            };
        }
        let ty = out.get("type").and_then(Value::as_str);
        if ty == Some("ARRAY") && !out.contains_key("items") {
            return Err(
                "an array without `items` cannot be expressed in Gemini's schema subset".into(),
            );
        }
        if ty == Some("OBJECT")
            && depth > 0
            && out
                .get("properties")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty)
        {
            return Err(
                "an object without properties cannot be expressed in Gemini's schema subset".into(),
            );
        }
        if nullable {
            out.insert("nullable".into(), true.into());
        }
        Ok(Value::Object(out))
    }
}

/// Merges schema `src` into `dst`: properties and required lists unite; other keys are
/// taken from `src` when `overwrite`, else only where `dst` has none.
fn merge_schema(dst: &mut Value, src: Value, overwrite: bool) {
    let (Value::Object(d), Value::Object(s)) = (dst, src) else {
        return;
    };
    for (k, v) in s {
        match (k.as_str(), d.get_mut(&k), v) {
            ("properties", Some(Value::Object(dp)), Value::Object(sp)) => {
                for (pk, pv) in sp {
                    dp.entry(pk).or_insert(pv);
                }
            }
            ("required" | "propertyOrdering", Some(Value::Array(dr)), Value::Array(sr)) => {
                for r in sr {
                    if !dr.contains(&r) {
                        dr.push(r);
                    }
                }
            }
            (_, Some(existing), v) => {
                if overwrite {
                    *existing = v;
                }
            }
            (_, None, v) => {
                d.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "AIzaTEST-secret-123";

    fn adapter_with(extra: Value) -> GeminiAdapter {
        let mut cfg = json!({
            "name": "gem", "kind": "gemini", "api_key": KEY,
            "base_url": "https://generativelanguage.googleapis.com/v1beta",
            "headers": {"x-extra": "1"}
        });
        if let (Some(c), Value::Object(e)) = (cfg.as_object_mut(), extra) {
            c.extend(e);
        }
        let cfg: ProviderConfig = serde_json::from_value(cfg).unwrap();
        let base = BaseUrl::parse("https://generativelanguage.googleapis.com/v1beta").unwrap();
        GeminiAdapter::new(&cfg, &base).unwrap()
    }

    fn adapter() -> GeminiAdapter {
        adapter_with(json!({}))
    }

    fn request(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    fn body_for(a: &GeminiAdapter, req: Value, model: &str) -> Result<Value, GatewayError> {
        a.request_body(&request(req), model)
    }

    fn body(req: Value) -> Value {
        body_for(&adapter(), req, "gemini-2.5-flash").unwrap()
    }

    fn err_param(req: Value) -> (String, Option<String>) {
        let e = body_for(&adapter(), req, "gemini-2.5-flash").unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        (e.to_string(), e.param())
    }

    fn answer(body: Value) -> Value {
        let req = request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        let t = adapter()
            .chat_response(&req, "gemini-2.5-flash", body.to_string().as_bytes())
            .unwrap();
        serde_json::from_slice(&t.body).unwrap()
    }

    fn run_stream(
        a: &GeminiAdapter,
        include_usage: bool,
        wire: &[u8],
    ) -> Result<String, UpstreamFailure> {
        let req = request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "stream": true, "stream_options": {"include_usage": include_usage}}),
        );
        let mut t = a.stream_translator(&req, "gemini-2.5-flash");
        let mut out = BytesMut::new();
        t.feed(wire, &mut out)?;
        t.finish(&mut out)?;
        Ok(String::from_utf8(out.to_vec()).unwrap())
    }

    fn events(sse: &str) -> Vec<Value> {
        sse.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    // ---- request: roles, system, merge ------------------------------------------------

    #[test]
    fn consecutive_roles_merge_and_system_messages_move_in_order() {
        let b = body(json!({"model": "m", "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "system", "content": "Late rule."},
            {"role": "user", "content": "e"}
        ]}));
        assert_eq!(
            b["systemInstruction"],
            json!({"parts": [{"text": "Be terse."}, {"text": "Answer in French."}, {"text": "Late rule."}]})
        );
        assert_eq!(
            b["contents"],
            json!([
                {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                {"role": "model", "parts": [{"text": "c"}, {"text": "d"}]},
                {"role": "user", "parts": [{"text": "e"}]}
            ])
        );
    }

    #[test]
    fn only_system_messages_is_a_400() {
        let (_, param) =
            err_param(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}));
        assert_eq!(param.as_deref(), Some("messages"));
    }

    // ---- request: tools ---------------------------------------------------------------

    fn tool_loop(results: Value) -> Value {
        let mut messages = vec![
            json!({"role": "user", "content": "weather?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]}),
        ];
        messages.extend(results.as_array().unwrap().iter().cloned());
        json!({"model": "m", "messages": messages})
    }

    #[test]
    fn function_responses_are_named_by_call_id_in_call_order() {
        let b = body(tool_loop(json!([
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 18}"},
            {"role": "user", "content": "thanks"}
        ])));
        assert_eq!(
            b["contents"][1]["parts"],
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}}
            ])
        );
        assert_eq!(
            b["contents"][2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
                {"text": "thanks"}
            ]})
        );
    }

    #[test]
    fn non_object_tool_output_is_wrapped() {
        assert_eq!(tool_response("plain text"), json!({"result": "plain text"}));
        assert_eq!(tool_response("[1, 2]"), json!({"result": [1, 2]}));
        assert_eq!(tool_response("42"), json!({"result": 42}));
        assert_eq!(tool_response("{\"a\": 1}"), json!({"a": 1}));
        assert_eq!(tool_response(""), json!({"result": ""}));
    }

    #[test]
    fn tool_pairing_errors_name_the_message() {
        let (msg, param) = err_param(tool_loop(json!([
            {"role": "tool", "tool_call_id": "call_zzz", "content": "x"}
        ])));
        assert_eq!(param.as_deref(), Some("messages[2].tool_call_id"), "{msg}");
        let (msg, param) = err_param(tool_loop(json!([
            {"role": "tool", "tool_call_id": "call_a", "content": "x"}
        ])));
        assert_eq!(param.as_deref(), Some("messages[1].tool_calls[1]"), "{msg}");
        let (_, param) = err_param(tool_loop(json!([
            {"role": "tool", "tool_call_id": "call_a", "content": "x"},
            {"role": "tool", "tool_call_id": "call_a", "content": "y"}
        ])));
        assert_eq!(param.as_deref(), Some("messages[3].tool_call_id"));
    }

    #[test]
    fn invalid_arguments_are_a_400_naming_the_field() {
        let req = json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"}
        ]});
        let (msg, param) = err_param(req.clone());
        assert_eq!(
            param.as_deref(),
            Some("messages[1].tool_calls[0].function.arguments")
        );
        assert!(msg.contains("not valid JSON"), "{msg}");
        let mut arr = req;
        arr["messages"][1]["tool_calls"][0]["function"]["arguments"] = json!("[1]");
        assert_eq!(
            err_param(arr).1.as_deref(),
            Some("messages[1].tool_calls[0].function.arguments")
        );
    }

    #[test]
    fn thought_signature_round_trips_through_the_tool_call_id() {
        let sig = "CiQBVKh+/sig==";
        let out = answer(json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": sig},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}
            ]}, "finishReason": "STOP", "index": 0}],
            "responseId": "resp-1", "modelVersion": "gemini-3-pro-preview"
        }));
        let calls = out["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        let first = calls[0]["id"].as_str().unwrap();
        let second = calls[1]["id"].as_str().unwrap();
        assert_eq!(first, format!("call_resp-1_0{THOUGHT_SEPARATOR}{sig}"));
        assert_eq!(second, "call_resp-1_1");
        assert_eq!(decode_tool_call_id(first), ("call_resp-1_0", Some(sig)));
        // The client replays the history with the ids it received.
        let replay = json!({"model": "m", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": calls},
            {"role": "tool", "tool_call_id": first, "content": "18C"},
            {"role": "tool", "tool_call_id": second, "content": "24C"}
        ]});
        let b = body_for(&adapter(), replay.clone(), "gemini-3-pro-preview").unwrap();
        let parts = &b["contents"][1]["parts"];
        assert_eq!(parts[0]["thoughtSignature"], sig);
        assert!(
            parts[1].get("thoughtSignature").is_none(),
            "only the first call carries it"
        );
        assert_eq!(
            b["contents"][2]["parts"][1]["functionResponse"]["name"],
            "get_weather"
        );
    }

    #[test]
    fn gemini3_gets_the_documented_dummy_signature_for_foreign_history() {
        let req = tool_loop(json!([
            {"role": "tool", "tool_call_id": "call_a", "content": "x"},
            {"role": "tool", "tool_call_id": "call_b", "content": "y"}
        ]));
        let b3 = body_for(&adapter(), req.clone(), "gemini-3-flash-preview").unwrap();
        assert_eq!(
            b3["contents"][1]["parts"][0]["thoughtSignature"],
            DUMMY_SIGNATURE
        );
        assert!(b3["contents"][1]["parts"][1]
            .get("thoughtSignature")
            .is_none());
        let b25 = body_for(&adapter(), req, "gemini-2.5-flash").unwrap();
        assert!(b25["contents"][1]["parts"][0]
            .get("thoughtSignature")
            .is_none());
    }

    #[test]
    fn tools_and_tool_choice_map_to_declarations_and_calling_config() {
        let tools = json!([
            {"type": "function", "function": {"name": "a", "description": "A", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": false}}},
            {"type": "function", "function": {"name": "b"}}
        ]);
        let with = |choice: Value| {
            body(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": choice}),
            )
        };
        let b = with(json!("auto"));
        assert_eq!(
            b["tools"],
            json!([{"functionDeclarations": [
                {"name": "a", "description": "A", "parametersJsonSchema": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": false}},
                {"name": "b"}
            ]}])
        );
        assert_eq!(
            b["toolConfig"],
            json!({"functionCallingConfig": {"mode": "AUTO"}})
        );
        assert_eq!(
            with(json!("none"))["toolConfig"]["functionCallingConfig"]["mode"],
            "NONE"
        );
        assert_eq!(
            with(json!("required"))["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY"})
        );
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "b"}}))["toolConfig"]
                ["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["b"]})
        );
        let allowed = |mode: &str| json!({"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": [{"type": "function", "function": {"name": "a"}}]}});
        assert_eq!(
            with(allowed("required"))["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["a"]})
        );
        let auto = with(allowed("auto"));
        assert_eq!(
            auto["tools"][0]["functionDeclarations"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            auto["toolConfig"]["functionCallingConfig"],
            json!({"mode": "AUTO"})
        );
        let (_, param) = err_param(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
        );
        assert_eq!(param.as_deref(), Some("tool_choice"));
        // Gemini 1.x gets the OpenAPI dialect, and no `parameters` for an argument-less tool.
        let legacy = body_for(&adapter(), json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "n", "parameters": {"type": "object", "properties": {}}}},
                      {"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}]}),
            "gemini-1.5-flash").unwrap();
        assert_eq!(
            legacy["tools"][0]["functionDeclarations"],
            json!([{"name": "n"}, {"name": "a", "parameters": {"type": "OBJECT", "properties": {"x": {"type": "STRING"}}}}])
        );
    }

    // ---- request: media -----------------------------------------------------------------

    #[test]
    fn images_map_to_inline_and_file_data() {
        let b = body(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a/cat.WEBP?x=1"}},
                {"type": "image_url", "image_url": {"url": "https://generativelanguage.googleapis.com/v1beta/files/abc"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}
            ]}]}),
        );
        assert_eq!(
            b["contents"][0]["parts"],
            json!([
                {"text": "what?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/a/cat.WEBP?x=1"}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}
            ])
        );
        let bad = |url: &str| {
            err_param(
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]}),
            )
            .1
        };
        let at = Some("messages[0].content[0].image_url.url".to_owned());
        assert_eq!(bad("data:image/png,notbase64"), at);
        assert_eq!(bad("data:;base64,AAAA"), at);
        assert_eq!(bad("ftp://x/y.png"), at);
        let (_, p) = err_param(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-123"}}]}]}),
        );
        assert_eq!(p.as_deref(), Some("messages[0].content[0].file"));
    }

    // ---- request: generation config -----------------------------------------------------

    #[test]
    fn generation_config_fields() {
        let b = body(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "temperature": 0.7, "top_p": 0.9, "max_tokens": 100, "max_completion_tokens": 200,
            "stop": "END", "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5, "n": 1,
            "top_k": 40, "user": "u-1", "metadata": {"a": "b"}, "parallel_tool_calls": true}),
        );
        assert_eq!(
            b["generationConfig"],
            json!({"temperature": 0.7, "topP": 0.9, "maxOutputTokens": 200, "stopSequences": ["END"],
                   "seed": 42, "presencePenalty": 0.5, "frequencyPenalty": -0.5, "topK": 40})
        );
        let plain = body(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert!(plain.get("generationConfig").is_none());
    }

    #[test]
    fn more_than_five_stop_sequences_is_a_400() {
        let (msg, param) = err_param(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "stop": ["a", "b", "c", "d", "e", "f"]}),
        );
        assert_eq!(param.as_deref(), Some("stop"));
        assert!(msg.contains("at most 5"), "{msg}");
        let b = body(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "stop": ["a", "b", "c", "d", "e"]}),
        );
        assert_eq!(
            b["generationConfig"]["stopSequences"]
                .as_array()
                .unwrap()
                .len(),
            5
        );
    }

    #[test]
    fn n_above_one_is_a_400_unless_dropped() {
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 3});
        let (msg, param) = err_param(req.clone());
        assert_eq!(param.as_deref(), Some("n"));
        assert!(
            msg.contains("gem") && msg.contains("drop_unsupported_params"),
            "{msg}"
        );
        let dropping = adapter_with(json!({"drop_unsupported_params": true}));
        let b = body_for(&dropping, req, "gemini-2.5-flash").unwrap();
        assert!(b.get("generationConfig").is_none());
    }

    #[test]
    fn unsupported_parameters_are_refused_or_dropped() {
        for (extra, param) in [
            (json!({"logit_bias": {"1": 5}}), "logit_bias"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"parallel_tool_calls": false}), "parallel_tool_calls"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"seed": 1_i64 << 40}), "seed"),
            (json!({"reasoning_effort": "high"}), "reasoning_effort"),
        ] {
            let mut req = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            req.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let model = if param == "reasoning_effort" {
                "gemini-2.0-flash"
            } else {
                "gemini-2.5-flash"
            };
            let e = body_for(&adapter(), req.clone(), model).unwrap_err();
            assert_eq!(e.param().as_deref(), Some(param));
            let dropping = adapter_with(json!({"drop_unsupported_params": true}));
            let b = body_for(&dropping, req, model).unwrap();
            assert!(b.get("generationConfig").is_none(), "{param}: {b}");
        }
    }

    #[test]
    fn reasoning_effort_maps_to_thinking_config() {
        let with = |effort: &str, model: &str| {
            body_for(
                &adapter(),
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "reasoning_effort": effort}),
                model,
            )
            .map(|b| b["generationConfig"]["thinkingConfig"].clone())
        };
        assert_eq!(
            with("high", "gemini-3-pro-preview").unwrap(),
            json!({"thinkingLevel": "HIGH", "includeThoughts": true})
        );
        assert_eq!(
            with("none", "gemini-3-flash-preview").unwrap(),
            json!({"thinkingLevel": "MINIMAL", "includeThoughts": false})
        );
        assert_eq!(
            with("low", "gemini-2.5-flash").unwrap(),
            json!({"thinkingBudget": 1024, "includeThoughts": true})
        );
        assert_eq!(
            with("none", "gemini-2.5-flash").unwrap(),
            json!({"thinkingBudget": 0})
        );
        assert_eq!(
            with("medium", "gemini-flash-latest").unwrap(),
            json!({"thinkingBudget": 8192, "includeThoughts": true})
        );
        assert_eq!(
            with("extreme", "gemini-2.5-flash")
                .unwrap_err()
                .param()
                .as_deref(),
            Some("reasoning_effort")
        );
    }

    #[test]
    fn json_schema_goes_to_response_json_schema_or_cleaned_response_schema() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "pop": {"type": ["integer", "null"]}},
            "required": ["city"], "additionalProperties": false});
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "City", "description": "A city.", "schema": schema, "strict": true}}});
        let b = body_for(&adapter(), req.clone(), "gemini-2.5-flash").unwrap();
        let mut expected = schema.clone();
        expected["description"] = json!("A city.");
        assert_eq!(
            b["generationConfig"],
            json!({"responseMimeType": "application/json", "responseJsonSchema": expected})
        );
        let legacy = body_for(&adapter(), req, "gemini-1.5-pro").unwrap();
        assert_eq!(
            legacy["generationConfig"]["responseSchema"],
            json!({"type": "OBJECT", "description": "A city.", "propertyOrdering": ["city", "pop"],
                   "properties": {"city": {"type": "STRING"}, "pop": {"type": "INTEGER", "nullable": true}},
                   "required": ["city"]})
        );
        let b = body(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
        );
        assert_eq!(
            b["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
    }

    #[test]
    fn safety_settings_and_headers_and_paths() {
        let a = adapter_with(
            json!({"safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_LOW_AND_ABOVE"}]}),
        );
        let req = request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}),
        );
        let up = a
            .chat_request(&req, "gemini-2.5-flash@status=503,latency=5")
            .unwrap();
        assert_eq!(
            up.path,
            "/v1beta/models/gemini-2.5-flash@status=503,latency=5:streamGenerateContent?alt=sse"
        );
        assert!(up.headers.contains(&("x-goog-api-key".into(), KEY.into())));
        assert!(up.headers.contains(&("x-extra".into(), "1".into())));
        assert!(!up.path.contains(KEY));
        let sent: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            sent["safetySettings"],
            json!([{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_LOW_AND_ABOVE"}])
        );
        let up = a
            .chat_request(
                &request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
                "models/my model:v1/x",
            )
            .unwrap();
        assert_eq!(
            up.path,
            "/v1beta/models/my%20model%3Av1%2Fx:generateContent"
        );
        let probe = a.probe_request("gemini-2.5-flash");
        assert_eq!(
            (probe.method, probe.path.as_str()),
            ("GET", "/v1beta/models/gemini-2.5-flash")
        );
        assert!(probe.headers.iter().all(|(k, _)| k != "content-type"));
        assert!(probe
            .headers
            .contains(&("x-goog-api-key".into(), KEY.into())));
        let cfg: ProviderConfig =
            serde_json::from_value(json!({"name": "g", "kind": "gemini"})).unwrap();
        assert!(GeminiAdapter::new(&cfg, &BaseUrl::parse("https://x/v1beta").unwrap()).is_err());
    }

    // ---- schema cleanup -----------------------------------------------------------------

    #[test]
    fn schema_cleanup_rewrites_the_dialect() {
        let s = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": {"Pet": {"type": "object", "properties": {"kind": {"const": "dog"}, "age": {"type": "integer", "exclusiveMinimum": 0}}, "additionalProperties": false}},
            "type": "object",
            "properties": {
                "pet": {"$ref": "#/$defs/Pet", "description": "The pet"},
                "nick": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
                "size": {"type": "integer", "enum": [1, 2, 3]},
                "mood": {"enum": ["calm", 3, null]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                                   {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]}
            },
            "required": ["pet"],
            "additionalProperties": false
        });
        let out = to_openapi_schema(&s, true).unwrap();
        assert_eq!(
            out,
            json!({
                "type": "OBJECT",
                "propertyOrdering": ["pet", "nick", "size", "mood", "tags", "either", "both"],
                "properties": {
                    "pet": {"type": "OBJECT", "description": "The pet", "propertyOrdering": ["kind", "age"],
                            "properties": {"kind": {"type": "STRING", "format": "enum", "enum": ["dog"]}, "age": {"type": "INTEGER"}}},
                    "nick": {"type": "STRING", "nullable": true},
                    "size": {"type": "INTEGER", "description": "Allowed values: 1, 2, 3."},
                    "mood": {"type": "STRING", "format": "enum", "enum": ["calm", "3"], "nullable": true},
                    "tags": {"type": "ARRAY", "minItems": 1, "items": {"type": "STRING"}},
                    "either": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]},
                    "both": {"type": "OBJECT", "propertyOrdering": ["a", "b"], "properties": {"a": {"type": "STRING"}, "b": {"type": "BOOLEAN"}}, "required": ["a", "b"]}
                },
                "required": ["pet"]
            })
        );
        assert!(!out.to_string().contains("additionalProperties"));
    }

    #[test]
    fn schema_cleanup_refuses_what_the_subset_cannot_say() {
        let recursive = json!({"$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
            "type": "object", "properties": {"root": {"$ref": "#/$defs/Node"}}});
        assert!(to_openapi_schema(&recursive, true)
            .unwrap_err()
            .contains("recursive"));
        let free_map = json!({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {"type": "string"}}}});
        assert!(to_openapi_schema(&free_map, true)
            .unwrap_err()
            .contains("object without properties"));
        let any_array = json!({"type": "object", "properties": {"a": {"type": "array"}}});
        assert!(to_openapi_schema(&any_array, true)
            .unwrap_err()
            .contains("items"));
        assert!(to_openapi_schema(&json!({"type": "object"}), true).is_err());
        assert!(to_openapi_schema(&json!({"$ref": "https://x/y.json"}), true).is_err());
        assert!(to_openapi_schema(&json!({"type": "wat"}), true).is_err());
        // Exponential `$ref` fan-out is bounded.
        let mut defs = Map::new();
        for i in 0..20 {
            defs.insert(format!("D{i}"), json!({"type": "object", "properties": {
                "l": {"$ref": format!("#/$defs/D{}", i + 1)}, "r": {"$ref": format!("#/$defs/D{}", i + 1)}}}));
        }
        defs.insert("D20".into(), json!({"type": "string"}));
        let bomb = json!({"$defs": defs, "$ref": "#/$defs/D0"});
        assert!(to_openapi_schema(&bomb, true)
            .unwrap_err()
            .contains("nodes"));
        // Function parameters get no propertyOrdering.
        let p = to_openapi_schema(
            &json!({"type": "object", "properties": {"x": {"type": "string"}}}),
            false,
        )
        .unwrap();
        assert_eq!(
            p,
            json!({"type": "OBJECT", "properties": {"x": {"type": "STRING"}}})
        );
    }

    // ---- response -----------------------------------------------------------------------

    #[test]
    fn text_thoughts_usage_and_finish() {
        let out = answer(json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "Let me think.", "thought": true},
                {"text": "Hello"}, {"text": " world", "thoughtSignature": "sig"}
            ]}, "finishReason": "MAX_TOKENS", "index": 0}],
            "usageMetadata": {"promptTokenCount": 2150, "cachedContentTokenCount": 1900, "candidatesTokenCount": 40,
                              "thoughtsTokenCount": 210, "totalTokenCount": 2400},
            "modelVersion": "gemini-3.1-pro-preview", "responseId": "mR9rZ-abc"
        }));
        assert_eq!(out["id"], "mR9rZ-abc");
        assert_eq!(out["model"], "gemini-3.1-pro-preview");
        let m = &out["choices"][0]["message"];
        assert_eq!(
            (m["content"].as_str(), m["reasoning_content"].as_str()),
            (Some("Hello world"), Some("Let me think."))
        );
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 2150, "completion_tokens": 250, "total_tokens": 2400,
                   "prompt_tokens_details": {"cached_tokens": 1900},
                   "completion_tokens_details": {"reasoning_tokens": 210}})
        );
    }

    #[test]
    fn finish_reason_table() {
        assert_eq!(finish_reason(Some("STOP"), false), FinishReason::Stop);
        assert_eq!(finish_reason(Some("STOP"), true), FinishReason::ToolCalls);
        assert_eq!(finish_reason(None, true), FinishReason::ToolCalls);
        assert_eq!(
            finish_reason(Some("MAX_TOKENS"), true),
            FinishReason::Length
        );
        for r in [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
            "LANGUAGE",
            "IMAGE_SAFETY",
        ] {
            assert_eq!(
                finish_reason(Some(r), false),
                FinishReason::ContentFilter,
                "{r}"
            );
        }
        for r in [
            "MALFORMED_FUNCTION_CALL",
            "UNEXPECTED_TOOL_CALL",
            "TOO_MANY_TOOL_CALLS",
            "OTHER",
            "NEW_REASON",
        ] {
            assert_eq!(finish_reason(Some(r), true), FinishReason::Stop, "{r}");
        }
    }

    #[test]
    fn candidate_stopped_for_safety_is_a_content_filter_answer() {
        let out = answer(
            json!({"candidates": [{"content": {}, "finishReason": "SAFETY"}],
            "usageMetadata": {"promptTokenCount": 14, "totalTokenCount": 14}, "responseId": "r"}),
        );
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
        assert!(out["choices"][0]["message"]["content"].is_null());
        assert_eq!(out["usage"]["total_tokens"], 14);
    }

    #[test]
    fn blocked_prompt_is_a_permanent_400_content_filter() {
        let body = json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "responseId": "x1"});
        let req = request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        let f = adapter()
            .chat_response(&req, "m", body.to_string().as_bytes())
            .unwrap_err();
        assert_eq!(f.kind, FailureKind::Status(400));
        assert!(f.permanent && !f.retryable());
        assert_eq!(
            (f.error_type(), f.code(), f.param()),
            (Some("invalid_request_error"), Some("content_filter"), None)
        );
        assert_eq!(
            f.message,
            "Gemini blocked the prompt (blockReason: PROHIBITED_CONTENT)"
        );
        let g = GatewayError::Upstream {
            failure: f,
            attempts: 1,
        };
        assert_eq!((g.status(), g.code()), (400, "content_filter".to_owned()));
        // In a stream, before any output.
        let wire = format!("data: {body}\r\n\r\n");
        let f = run_stream(&adapter(), false, wire.as_bytes()).unwrap_err();
        assert_eq!(f.code(), Some("content_filter"));
        // Neither candidates nor a block reason: not an answer.
        let f = adapter()
            .chat_response(&req, "m", b"{\"usageMetadata\":{}}")
            .unwrap_err();
        assert_eq!(f.kind, FailureKind::Protocol);
        assert_eq!(
            adapter()
                .chat_response(&req, "m", b"<html>")
                .unwrap_err()
                .kind,
            FailureKind::Protocol
        );
    }

    // ---- stream -------------------------------------------------------------------------

    #[test]
    fn stream_translates_text_calls_and_usage() {
        let wire = concat!(
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"plan\",\"thought\":true}]}}],\"responseId\":\"r-1\",\"modelVersion\":\"gemini-3.5-flash\",\"usageMetadata\":{\"promptTokenCount\":12,\"totalTokenCount\":12}}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Par\"}]}}],\"responseId\":\"r-1\"}\n\n",
            ": keep-alive\n\n",
            "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Rome\"}},\"thoughtSignature\":\"CiQB\"}]},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":12,\"candidatesTokenCount\":19,\"thoughtsTokenCount\":35,\"totalTokenCount\":66},\"responseId\":\"r-1\"}\r\n\r\n"
        );
        let out = run_stream(&adapter(), true, wire.as_bytes()).unwrap();
        assert_eq!(out.matches("data: [DONE]").count(), 1);
        let ev = events(&out);
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(ev
            .iter()
            .all(|e| e["id"] == "r-1" && e["model"] == "gemini-3.5-flash"));
        assert_eq!(ev[1]["choices"][0]["delta"]["reasoning_content"], "plan");
        assert_eq!(ev[2]["choices"][0]["delta"]["content"], "Par");
        let call = &ev[3]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["id"], format!("call_r-1_0{THOUGHT_SEPARATOR}CiQB"));
        assert_eq!(
            (call["index"].as_u64(), call["function"]["name"].as_str()),
            (Some(0), Some("get_weather"))
        );
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Rome\"}");
        assert_eq!(ev[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(ev[5]["choices"], json!([]));
        assert_eq!(ev[5]["usage"]["completion_tokens"], 54);
        assert_eq!(ev[5]["usage"]["total_tokens"], 66);
        assert_eq!(ev.len(), 6);
    }

    #[test]
    fn stream_errors_before_and_after_output() {
        let err = "data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
        let f = run_stream(&adapter(), false, err.as_bytes()).unwrap_err();
        assert_eq!(f.kind, FailureKind::Status(503));
        assert!(f.retryable());
        let text = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"responseId\":\"r\"}\r\n\r\n";
        let out = run_stream(
            &adapter(),
            true,
            format!("{text}{err}data: {{\"candidates\":[]}}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        assert_eq!(out.matches("data: [DONE]").count(), 1);
        let ev = events(&out);
        assert_eq!(ev[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            ev.last().unwrap()["error"]["message"],
            "Provider 'gem': The model is overloaded."
        );
        assert!(out.ends_with("data: [DONE]\n\n"));
        // Cut short: nothing out → the attempt fails; something out → error event + [DONE].
        assert_eq!(
            run_stream(&adapter(), false, b"").unwrap_err().kind,
            FailureKind::Protocol
        );
        let out = run_stream(&adapter(), false, text.as_bytes()).unwrap();
        assert!(
            out.contains("cut short") && out.ends_with("data: [DONE]\n\n"),
            "{out}"
        );
        // Not JSON before any output.
        assert_eq!(
            run_stream(&adapter(), false, b"data: <html>\n\n")
                .unwrap_err()
                .kind,
            FailureKind::Protocol
        );
    }

    #[test]
    fn stream_safety_finish_without_content_and_no_usage_chunk_unless_asked() {
        let wire = "data: {\"candidates\":[{\"finishReason\":\"SAFETY\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":5},\"responseId\":\"r\"}\r\n\r\n";
        let out = run_stream(&adapter(), false, wire.as_bytes()).unwrap();
        let ev = events(&out);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1]["choices"][0]["finish_reason"], "content_filter");
        // A last event without its blank line still counts.
        let out = run_stream(&adapter(), false, wire.trim_end().as_bytes()).unwrap();
        assert_eq!(events(&out).len(), 2);
    }

    #[test]
    fn vertex_partial_arguments_are_reassembled() {
        let fc = |v: Value| -> FunctionCallPart { serde_json::from_value(v).unwrap() };
        let mut a = CallAssembler::default();
        assert!(a
            .feed(
                &fc(json!({"name": "cook", "willContinue": true})),
                Some("sig")
            )
            .is_empty());
        for piece in [
            json!({"partialArgs": [{"jsonPath": "$.recipe.steps[1]", "stringValue": "Boil", "willContinue": true}], "willContinue": true}),
            json!({"partialArgs": [{"jsonPath": "$.recipe.steps[1]", "stringValue": " water."}], "willContinue": true}),
            json!({"partialArgs": [{"jsonPath": "$.recipe['serves']", "numberValue": 4}, {"jsonPath": "$.recipe.vegan", "boolValue": true}], "willContinue": true}),
            json!({"partialArgs": [{"jsonPath": "$.bad[99999999]", "stringValue": "x"}, {"jsonPath": "nope", "stringValue": "x"}], "willContinue": true}),
        ] {
            assert!(a.feed(&fc(piece), None).is_empty());
        }
        let done = a.feed(&fc(json!({})), None);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].name, "cook");
        assert_eq!(done[0].signature.as_deref(), Some("sig"));
        assert_eq!(
            done[0].args,
            json!({"recipe": {"steps": [null, "Boil water."], "serves": 4, "vegan": true}})
        );
        // A whole call, and a new head flushing an unterminated one.
        assert_eq!(
            a.feed(&fc(json!({"name": "f", "args": {"x": 1}})), None)
                .len(),
            1
        );
        assert!(a
            .feed(&fc(json!({"name": "g", "willContinue": true})), None)
            .is_empty());
        let flushed = a.feed(&fc(json!({"name": "h"})), None);
        assert_eq!(
            flushed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["g", "h"]
        );
    }

    // ---- errors -------------------------------------------------------------------------

    fn error_of(status: u16, body: Value) -> UpstreamFailure {
        adapter().error(status, &http::HeaderMap::new(), body.to_string().as_bytes())
    }

    #[test]
    fn retry_info_becomes_retry_after() {
        let f = error_of(
            429,
            json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}}),
        );
        assert_eq!(f.retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(
            (f.error_type(), f.code()),
            (Some("rate_limit_error"), Some("rate_limit_exceeded"))
        );
        assert!(f.retryable());
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        let f = adapter().error(
            429,
            &h,
            b"{\"error\":{\"code\":429,\"status\":\"RESOURCE_EXHAUSTED\"}}",
        );
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("34s"), Some(Duration::from_secs(34)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn daily_quota_is_permanent() {
        let quota = |id: &str| {
            error_of(
                429,
                json!({"error": {"code": 429, "message": "You exceeded your current quota", "status": "RESOURCE_EXHAUSTED",
                "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": id}]},
                            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}]}}),
            )
        };
        let daily = quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier");
        assert!(daily.permanent && !daily.retryable());
        let minute = quota("GenerateRequestsPerMinutePerProjectPerModel-FreeTier");
        assert!(!minute.permanent && minute.retryable());
        assert_eq!(minute.retry_after, Some(Duration::from_secs(20)));
    }

    #[test]
    fn error_classes_and_key_scrubbing() {
        let f = error_of(
            400,
            json!({"error": {"code": 400, "message": format!("API key not valid: {KEY}"), "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}),
        );
        assert_eq!(
            (f.error_type(), f.code()),
            (Some("authentication_error"), Some("invalid_api_key"))
        );
        assert!(!f.message.contains(KEY) && f.message.contains("[redacted]"));
        let f = error_of(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."}}),
        );
        assert_eq!(f.code(), Some("context_length_exceeded"));
        let f = error_of(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Unknown name \"additionalProperties\""}}),
        );
        assert_eq!(
            (f.kind, f.code(), f.retryable()),
            (FailureKind::Status(400), Some("invalid_request"), false)
        );
        let f = error_of(
            404,
            json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "models/x is not found"}}),
        );
        assert_eq!(f.code(), Some("model_not_found"));
        let f = error_of(
            403,
            json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "denied"}}),
        );
        assert_eq!(f.error_type(), Some("authentication_error"));
        let f = error_of(
            503,
            json!([{"error": {"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}}]),
        );
        assert_eq!(
            (f.code(), f.retryable()),
            (Some("service_unavailable"), true)
        );
        let f = adapter().error(502, &http::HeaderMap::new(), b"<html>bad gateway</html>");
        assert_eq!(
            (f.message.as_str(), f.retryable()),
            ("HTTP 502: <html>bad gateway</html>", true)
        );
    }

    // ---- property: random OpenAI requests ---------------------------------------------

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z ]{1,8}",
            Just("{\"k\":1}".to_owned()),
            Just("[1]".to_owned())
        ]
    }

    fn user_content() -> impl Strategy<Value = Value> {
        let part = prop_oneof![
            text().prop_map(|t| json!({"type": "text", "text": t})),
            Just(json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})),
            Just(json!({"type": "image_url", "image_url": {"url": "https://x.test/a.gif"}})),
            Just(json!({"type": "image_url", "image_url": {"url": "data:,x"}})),
            Just(json!({"type": "input_audio", "input_audio": {"data": "AA", "format": "mp3"}})),
        ];
        prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(part, 0..3).prop_map(Value::Array)
        ]
    }

    /// One step of a conversation: several messages that belong together.
    fn step() -> impl Strategy<Value = Vec<Value>> {
        prop_oneof![
            user_content().prop_map(|c| vec![json!({"role": "user", "content": c})]),
            text().prop_map(|t| vec![json!({"role": "system", "content": t})]),
            text().prop_map(|t| vec![json!({"role": "developer", "content": [{"type": "text", "text": t}]})]),
            (prop::option::of(text()), prop::bool::ANY).prop_map(|(t, refusal)| {
                let mut m = json!({"role": "assistant", "content": t});
                if refusal {
                    m["refusal"] = json!("no");
                }
                vec![m]
            }),
            // A tool round: calls, then answers (maybe shuffled, maybe broken).
            (1usize..4, prop::bool::ANY, 0u8..8, prop::option::of("[A-Za-z0-9+/]{4,12}"), "[a-z]{3}").prop_map(
                |(n, reverse, damage, sig, tag)| {
                    let ids: Vec<String> = (0..n).map(|i| format!("call_{tag}{i}")).collect();
                    let calls: Vec<Value> = ids.iter().enumerate().map(|(i, id)| {
                        let id = if i == 0 { encode_tool_call_id(id, sig.as_deref()) } else { id.clone() };
                        let args = if damage == 1 && i == 0 { "{bad".to_owned() } else { format!("{{\"i\":{i}}}") };
                        json!({"id": id, "type": "function", "function": {"name": format!("f{i}"), "arguments": args}})
                    }).collect();
                    let mut answers: Vec<Value> = ids.iter().map(|id| json!({"role": "tool", "tool_call_id": id, "content": "ok"})).collect();
                    if reverse {
                        answers.reverse();
                    }
                    match damage {
                        2 => { answers.pop(); }
                        3 => answers.push(json!({"role": "tool", "tool_call_id": "call_unknown", "content": "x"})),
                        4 => answers.push(answers[0].clone()),
                        _ => {}
                    }
                    let mut out = vec![json!({"role": "assistant", "content": null, "tool_calls": calls})];
                    out.extend(answers);
                    out
                },
            ),
        ]
    }

    fn chat_request() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(step(), 1..7),
            prop::option::of(0.0f64..2.0),
            prop::option::of(0u64..5000),
            prop::option::of(prop::collection::vec("[a-z]{1,3}", 0..7)),
            prop::option::of(0u32..3),
            prop::option::of(prop_oneof![Just(json!("auto")), Just(json!("none")), Just(json!("required")),
                Just(json!({"type": "function", "function": {"name": "f0"}}))]),
            prop::option::of(prop_oneof![Just("low"), Just("none"), Just("high")]),
            prop::option::of(prop_oneof![Just(json!({"type": "json_object"})),
                Just(json!({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}))]),
            prop::option::of(-3i64..3),
        )
            .prop_map(|(steps, temperature, max_tokens, stop, n, tool_choice, effort, format, seed)| {
                let mut r = json!({"model": "m", "messages": steps.concat(),
                    "tools": [{"type": "function", "function": {"name": "f0", "parameters": {"type": "object", "properties": {"i": {"type": "integer"}}}}},
                              {"type": "function", "function": {"name": "f1"}}, {"type": "function", "function": {"name": "f2"}}]});
                let o = r.as_object_mut().unwrap();
                let mut set = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        o.insert(k.into(), v);
                    }
                };
                set("temperature", temperature.map(|t| json!(t)));
                set("max_tokens", max_tokens.map(|t| json!(t)));
                set("stop", stop.map(|s| json!(s)));
                set("n", n.map(|t| json!(t)));
                set("tool_choice", tool_choice);
                set("reasoning_effort", effort.map(|t| json!(t)));
                set("response_format", format);
                set("seed", seed.map(|t| json!(t)));
                r
            })
    }

    /// The data fields of a part: exactly one may be present.
    const DATA_FIELDS: [&str; 5] = [
        "text",
        "inlineData",
        "fileData",
        "functionCall",
        "functionResponse",
    ];

    fn count(parts: &[Value], field: &str) -> usize {
        parts.iter().filter(|p| p.get(field).is_some()).count()
    }

    fn check_gemini_rules(b: &Value) {
        let contents = b["contents"].as_array().expect("contents");
        assert!(!contents.is_empty());
        for (i, turn) in contents.iter().enumerate() {
            let role = turn["role"].as_str().unwrap();
            assert!(role == "user" || role == "model", "role {role}");
            if i > 0 {
                assert_ne!(
                    contents[i - 1]["role"],
                    turn["role"],
                    "same role twice in a row"
                );
            }
            let parts = turn["parts"].as_array().unwrap();
            assert!(!parts.is_empty());
            for p in parts {
                let n = DATA_FIELDS.iter().filter(|f| p.get(**f).is_some()).count();
                assert_eq!(n, 1, "part {p}");
                if let Some(args) = p.pointer("/functionCall/args") {
                    assert!(args.is_object());
                }
                if let Some(r) = p.pointer("/functionResponse/response") {
                    assert!(r.is_object());
                }
            }
            let calls = count(parts, "functionCall");
            let responses = count(parts, "functionResponse");
            assert!(role == "model" || calls == 0);
            assert!(role == "user" || responses == 0);
            if calls > 0 {
                let next = contents.get(i + 1).expect("a turn after the calls");
                assert_eq!(
                    count(next["parts"].as_array().unwrap(), "functionResponse"),
                    calls
                );
            }
            if responses > 0 {
                assert!(i > 0);
                assert_eq!(
                    count(contents[i - 1]["parts"].as_array().unwrap(), "functionCall"),
                    responses
                );
            }
        }
        if let Some(sys) = b.get("systemInstruction") {
            assert!(sys["parts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["text"].is_string()));
        }
        if let Some(g) = b.get("generationConfig") {
            let g = g.as_object().unwrap();
            for (k, v) in g {
                match k.as_str() {
                    "temperature" | "topP" | "presencePenalty" | "frequencyPenalty" => {
                        assert!(v.is_number())
                    }
                    "maxOutputTokens" | "topK" | "candidateCount" => assert!(v.is_u64()),
                    "seed" => assert!(v.as_i64().is_some_and(|s| i32::try_from(s).is_ok())),
                    "stopSequences" => {
                        let s = v.as_array().unwrap();
                        assert!(s.len() <= MAX_STOP && s.iter().all(Value::is_string));
                    }
                    "responseMimeType" => assert!(v.is_string()),
                    "responseJsonSchema" | "responseSchema" | "thinkingConfig" => {
                        assert!(v.is_object())
                    }
                    other => panic!("unexpected generationConfig field {other}"),
                }
            }
        }
    }

    /// The generator must mostly produce acceptable requests, or the property proves little.
    #[test]
    fn random_requests_are_mostly_accepted() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut ok, mut with_calls) = (0, 0);
        for _ in 0..300 {
            let req = chat_request().new_tree(&mut runner).unwrap().current();
            let parsed: ChatRequest = serde_json::from_value(req).unwrap();
            let dropping = adapter_with(json!({"drop_unsupported_params": true}));
            if let Ok(b) = dropping.request_body(&parsed, "gemini-2.5-flash") {
                ok += 1;
                with_calls += usize::from(b.to_string().contains("functionResponse"));
            }
        }
        assert!(
            ok > 90 && with_calls > 30,
            "ok {ok}, with tool rounds {with_calls}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn random_requests_translate_to_valid_gemini(req in chat_request(), model in prop_oneof![
            Just("gemini-2.5-flash"), Just("gemini-3-pro-preview"), Just("gemini-1.5-flash"), Just("gemini-flash-latest")
        ]) {
            let parsed: ChatRequest = serde_json::from_value(req).unwrap();
            for a in [adapter(), adapter_with(json!({"drop_unsupported_params": true}))] {
                match a.request_body(&parsed, model) {
                    Ok(b) => check_gemini_rules(&b),
                    Err(e) => prop_assert_eq!(e.status(), 400),
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), split in 0usize..300) {
            let a = adapter();
            let req = request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}));
            let _ = a.chat_response(&req, "m", &bytes);
            let _ = a.error(500, &http::HeaderMap::new(), &bytes);
            let mut t = a.stream_translator(&req, "m");
            let mut out = BytesMut::new();
            let cut = split.min(bytes.len());
            let _ = t.feed(b"data: ", &mut out);
            let _ = t.feed(&bytes[..cut], &mut out);
            let _ = t.feed(&bytes[cut..], &mut out);
            let _ = t.finish(&mut out);
        }
    }
}
