//! The one typed internal representation of an OpenAI Chat Completions exchange.
//!
//! Ingress parses the client body once into [`ChatRequest`]; every provider adapter reads it
//! and never sees the raw bytes. Fields llmux does not model are kept in `extra` maps, so a
//! request forwarded to an OpenAI-dialect provider loses nothing.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

pub use crate::json_text::JsonText;

/// Unknown JSON fields kept verbatim.
pub type Extra = Map<String, Value>;

/// A chat completion request as the client sent it (after one parse).
///
/// Deserialised by a hand-written visitor (below) rather than `#[serde(flatten)]`: flatten
/// buffers the whole object, which costs time and loses the JSON path of an invalid field.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatRequest {
    /// The client's model name: an alias, or `provider/model`. Adapters write the upstream
    /// model themselves, so it is never serialised from here.
    #[serde(skip_serializing)]
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Not serialised from here: each adapter writes (or translates) it, because llmux asks
    /// upstreams for usage even when the client did not.
    #[serde(skip_serializing)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other field (metadata, logit_bias, service_tier, ...), passed through as sent.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    /// Whether the client asked for a final usage chunk on a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false)
    }

    /// A quick estimate of the prompt's tokens (about 4 characters a token, plus per-message
    /// and per-image overheads), for prompt-size buckets and context-window checks.
    pub fn estimate_prompt_tokens(&self) -> u64 {
        // (characters of text, tokens of media)
        fn measure(c: &Content) -> (usize, u64) {
            match c {
                Content::Text(t) => (t.text_len(), 0),
                Content::Parts(parts) => parts.iter().fold((0, 0), |(chars, media), p| match p {
                    ContentPart::Text { text, .. } => (chars + text.len(), media),
                    // A typical image costs a few hundred tokens at any provider.
                    _ => (chars, media + 765),
                }),
            }
        }
        let mut chars = 0usize;
        let mut extra = 0u64;
        let mut add = |c: &Content, chars: &mut usize| {
            let (n, media) = measure(c);
            *chars += n;
            extra += media;
        };
        let mut per_message = 0u64;
        for m in &self.messages {
            per_message += 4;
            match m {
                Message::System { content: c, .. }
                | Message::Developer { content: c, .. }
                | Message::User { content: c, .. }
                | Message::Tool { content: c, .. } => add(c, &mut chars),
                Message::Assistant {
                    content: c,
                    tool_calls,
                    ..
                } => {
                    if let Some(c) = c {
                        add(c, &mut chars);
                    }
                    for call in tool_calls.iter().flatten() {
                        chars += call.function.name.len() + call.function.arguments.len();
                    }
                }
            }
        }
        for tool in self.tools.iter().flatten() {
            chars += tool.function.name.len()
                + tool.function.description.as_deref().map_or(0, str::len)
                + tool
                    .function
                    .parameters
                    .as_ref()
                    .map_or(0, |p| p.to_string().len());
        }
        (chars as u64).div_ceil(4) + extra + per_message
    }

    /// Checks the rules serde cannot express; the error names the offending field.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.model.trim().is_empty() {
            return Err(GatewayError::invalid(
                "`model` must be a non-empty string",
                "model",
            ));
        }
        if self.messages.is_empty() {
            return Err(GatewayError::invalid(
                "`messages` must contain at least one message",
                "messages",
            ));
        }
        if let Some(tools) = &self.tools {
            for (i, tool) in tools.iter().enumerate() {
                if tool.function.name.is_empty() {
                    return Err(GatewayError::invalid(
                        "a tool's `function.name` must be non-empty",
                        &format!("tools[{i}].function.name"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// One message, typed by role. Deserialised by a visitor (below) because `role` may come
/// after `content` in the object and serde's internally tagged enums lose error paths.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Message {
    System {
        content: Content,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(flatten)]
        extra: Extra,
    },
    /// The newer name for `system` on reasoning models; translated as a system prompt.
    Developer {
        content: Content,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(flatten)]
        extra: Extra,
    },
    User {
        content: Content,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(flatten)]
        extra: Extra,
    },
    Assistant {
        #[serde(default)]
        content: Option<Content>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool_calls: Option<Vec<ToolCall>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refusal: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Non-standard reasoning text some providers return (DeepSeek, Anthropic thinking).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reasoning_content: Option<String>,
        #[serde(flatten)]
        extra: Extra,
    },
    Tool {
        content: Content,
        tool_call_id: String,
        #[serde(flatten)]
        extra: Extra,
    },
}

impl<'de> Deserialize<'de> for ChatRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RequestVisitor;
        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = ChatRequest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a chat completion request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatRequest, A::Error> {
                let mut r = ChatRequest::default();
                let (mut model, mut messages) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "model" => model = Some(map.next_value::<String>()?),
                        "messages" => messages = Some(map.next_value::<Vec<Message>>()?),
                        "stream" => r.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
                        "stream_options" => r.stream_options = map.next_value()?,
                        "tools" => r.tools = map.next_value()?,
                        "tool_choice" => r.tool_choice = map.next_value()?,
                        "parallel_tool_calls" => r.parallel_tool_calls = map.next_value()?,
                        "response_format" => r.response_format = map.next_value()?,
                        "temperature" => r.temperature = map.next_value()?,
                        "top_p" => r.top_p = map.next_value()?,
                        "max_tokens" => r.max_tokens = map.next_value()?,
                        "max_completion_tokens" => r.max_completion_tokens = map.next_value()?,
                        "stop" => r.stop = map.next_value()?,
                        "n" => r.n = map.next_value()?,
                        "seed" => r.seed = map.next_value()?,
                        "presence_penalty" => r.presence_penalty = map.next_value()?,
                        "frequency_penalty" => r.frequency_penalty = map.next_value()?,
                        "logprobs" => r.logprobs = map.next_value()?,
                        "top_logprobs" => r.top_logprobs = map.next_value()?,
                        "reasoning_effort" => r.reasoning_effort = map.next_value()?,
                        "user" => r.user = map.next_value()?,
                        _ => {
                            let v: Value = map.next_value()?;
                            r.extra.insert(key, v);
                        }
                    }
                }
                r.model = model.ok_or_else(|| de::Error::missing_field("model"))?;
                r.messages = messages.ok_or_else(|| de::Error::missing_field("messages"))?;
                Ok(r)
            }
        }
        d.deserialize_map(RequestVisitor)
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message object with a `role`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut role: Option<String> = None;
                let mut content: Option<Content> = None;
                let mut name = None;
                let mut tool_calls = None;
                let mut tool_call_id: Option<String> = None;
                let mut refusal = None;
                let mut reasoning_content = None;
                let mut extra = Extra::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "role" => role = Some(map.next_value()?),
                        "content" => content = map.next_value()?,
                        "name" => name = map.next_value()?,
                        "tool_calls" => tool_calls = map.next_value()?,
                        "tool_call_id" => tool_call_id = map.next_value()?,
                        "refusal" => refusal = map.next_value()?,
                        "reasoning_content" => reasoning_content = map.next_value()?,
                        _ => {
                            let v: Value = map.next_value()?;
                            extra.insert(key, v);
                        }
                    }
                }
                let role = role.ok_or_else(|| de::Error::missing_field("role"))?;
                let need =
                    |c: Option<Content>| c.ok_or_else(|| de::Error::missing_field("content"));
                Ok(match role.as_str() {
                    "system" => Message::System {
                        content: need(content)?,
                        name,
                        extra,
                    },
                    "developer" => Message::Developer {
                        content: need(content)?,
                        name,
                        extra,
                    },
                    "user" => Message::User {
                        content: need(content)?,
                        name,
                        extra,
                    },
                    "assistant" => Message::Assistant {
                        content,
                        tool_calls,
                        refusal,
                        name,
                        reasoning_content,
                        extra,
                    },
                    "tool" => Message::Tool {
                        content: need(content)?,
                        tool_call_id: tool_call_id
                            .ok_or_else(|| de::Error::missing_field("tool_call_id"))?,
                        extra,
                    },
                    other => {
                        return Err(de::Error::unknown_variant(
                            other,
                            &["system", "developer", "user", "assistant", "tool"],
                        ))
                    }
                })
            }
        }
        d.deserialize_map(MessageVisitor)
    }
}

/// Message content: a plain string or typed parts.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(JsonText),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// All text of the content, parts concatenated (images and other media skipped).
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.as_str().into_owned(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }
}

// Content is captured as raw JSON first, so a string stays in the client's encoding
// ([`JsonText`]); an array is then parsed into parts. Errors name what was expected ("a
// string or an array of content parts") instead of serde's opaque "did not match any variant
// of untagged enum".
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <Box<RawValue>>::deserialize(d)?;
        match raw.get().as_bytes().first() {
            Some(b'"') => JsonText::from_raw(raw)
                .map(Content::Text)
                .map_err(de::Error::custom),
            Some(b'[') => parse_parts(raw.get()).map(Content::Parts),
            _ => Err(de::Error::invalid_type(
                unexpected(raw.get()),
                &"a string or an array of content parts",
            )),
        }
    }
}

/// Content parts from their raw JSON array. On failure the error names the part and field
/// (`[1].type: ...`), as the path-tracking parse does for the fields around it.
fn parse_parts<E: de::Error>(raw: &str) -> Result<Vec<ContentPart>, E> {
    serde_json::from_str(raw).map_err(|_| {
        let de = &mut serde_json::Deserializer::from_str(raw);
        match serde_path_to_error::deserialize::<_, Vec<ContentPart>>(de) {
            Ok(_) => E::custom("invalid content parts"),
            Err(e) => E::custom(format_args!("{}: {}", e.path(), e.inner())),
        }
    })
}

/// What a raw JSON value that is neither a string nor an array is, for a type error.
fn unexpected(raw: &str) -> de::Unexpected<'_> {
    match raw.as_bytes().first() {
        Some(b'{') => de::Unexpected::Map,
        Some(b'n') => de::Unexpected::Unit,
        Some(b't') => de::Unexpected::Bool(true),
        Some(b'f') => de::Unexpected::Bool(false),
        _ => {
            if let Ok(n) = raw.parse::<u64>() {
                de::Unexpected::Unsigned(n)
            } else if let Ok(n) = raw.parse::<i64>() {
                de::Unexpected::Signed(n)
            } else {
                raw.parse::<f64>()
                    .map_or(de::Unexpected::Other(raw), de::Unexpected::Float)
            }
        }
    }
}

/// One typed content part.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
        #[serde(flatten)]
        extra: Extra,
    },
    ImageUrl {
        image_url: ImageUrl,
        #[serde(flatten)]
        extra: Extra,
    },
    InputAudio {
        input_audio: Value,
        #[serde(flatten)]
        extra: Extra,
    },
    File {
        file: Value,
        #[serde(flatten)]
        extra: Extra,
    },
    Refusal {
        refusal: String,
        #[serde(flatten)]
        extra: Extra,
    },
}

/// An image by URL or `data:` URL.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A tool the model may call.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Tool {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionDef,
    #[serde(flatten)]
    pub extra: Extra,
}

fn function_type() -> String {
    "function".into()
}

/// A function tool's declaration.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `tool_choice`: a mode, one named function, or a newer shape kept as sent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(ToolChoiceMode),
    Named(NamedToolChoice),
    Other(Extra),
}

/// `none` | `auto` | `required`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    None,
    Auto,
    Required,
}

/// `{"type":"function","function":{"name":...}}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: NamedFunction,
}

/// The name inside a named tool choice.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NamedFunction {
    pub name: String,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// The schema of a `json_schema` response format.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A tool call in an assistant message (request history or response).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// Name and JSON-string arguments of a call.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// OpenAI-shaped usage, as clients receive it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Input token breakdown; `prompt_tokens` includes both cache counts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct PromptTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Output token breakdown; `completion_tokens` includes reasoning.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct CompletionTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Tokens partitioned the way they are priced: the four kinds sum to all tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// Input tokens neither read from nor written to a cache.
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Usage {
    /// The priced partition of this usage.
    pub fn token_counts(&self) -> TokenCounts {
        let details = self.prompt_tokens_details.as_ref();
        let cache_read = details.and_then(|d| d.cached_tokens).unwrap_or(0);
        let cache_write = details.and_then(|d| d.cache_write_tokens).unwrap_or(0);
        TokenCounts {
            input: self
                .prompt_tokens
                .saturating_sub(cache_read)
                .saturating_sub(cache_write),
            output: self.completion_tokens,
            cache_read,
            cache_write,
        }
    }
}

/// Why an upstream attempt failed: decides retry and the client's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// DNS, TCP connect or TLS handshake failed: nothing reached the provider.
    Connect,
    /// A deadline passed (connect, first byte, idle gap, attempt total).
    Timeout,
    /// The provider answered with an error status.
    Status(u16),
    /// The provider answered 200 with something that is not its wire format, or cut the
    /// stream before anything could be sent to the client.
    Protocol,
}

/// One failed upstream attempt, already mapped from the provider's wire format.
#[derive(Debug, Clone)]
pub struct UpstreamFailure {
    pub provider: String,
    pub kind: FailureKind,
    /// The provider's message (never contains the configured key).
    pub message: String,
    /// The provider's own error type, code and param, when it gave them (boxed: rare, and
    /// it keeps every `Result` carrying a failure small).
    pub detail: Option<Box<ErrorDetail>>,
    /// How long the provider asked us to wait (`retry-after`, Gemini `RetryInfo`).
    pub retry_after: Option<std::time::Duration>,
    /// The provider marked the failure as not worth retrying (e.g. OpenAI `insufficient_quota`).
    pub permanent: bool,
}

/// A provider's own error vocabulary, mapped to OpenAI's field names.
#[derive(Debug, Clone, Default)]
pub struct ErrorDetail {
    pub error_type: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
}

impl UpstreamFailure {
    /// The provider's error code, if it gave one.
    pub fn code(&self) -> Option<&str> {
        self.detail.as_ref()?.code.as_deref()
    }

    /// The provider's error type, if it gave one.
    pub fn error_type(&self) -> Option<&str> {
        self.detail.as_ref()?.error_type.as_deref()
    }

    /// The request field the provider blamed, if it named one.
    pub fn param(&self) -> Option<&str> {
        self.detail.as_ref()?.param.as_deref()
    }

    /// A failure of the given kind with a message.
    pub fn new(provider: &str, kind: FailureKind, message: impl Into<String>) -> Self {
        UpstreamFailure {
            provider: provider.to_owned(),
            kind,
            message: message.into(),
            detail: None,
            retry_after: None,
            permanent: false,
        }
    }

    /// Whether another target (or the same endpoint later) may succeed where this failed.
    pub fn retryable(&self) -> bool {
        if self.permanent {
            return false;
        }
        match self.kind {
            FailureKind::Connect | FailureKind::Timeout | FailureKind::Protocol => true,
            FailureKind::Status(s) => matches!(s, 408 | 409 | 429) || s >= 500,
        }
    }
}

/// Every error llmux answers a client with. One enum, so status, code and retry policy are
/// decided in one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("Unknown path {path}")]
    NotFound { path: String },
    #[error("Method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("The model `{model}` does not exist on this gateway")]
    ModelNotFound { model: String },
    #[error("Request body is larger than the limit of {limit} bytes")]
    RequestTooLarge { limit: u64 },
    #[error("Missing or invalid gateway API key")]
    InvalidApiKey,
    #[error("{message}")]
    BudgetExceeded { message: String },
    #[error("{message}")]
    ContextLengthExceeded { message: String },
    #[error("{message}")]
    ContentFilter { message: String },
    #[error("No healthy endpoint serves model `{model}`")]
    NoHealthyEndpoint {
        model: String,
        retry_after_secs: u64,
    },
    /// The last upstream failure after the attempt loop gave up.
    #[error("{}", upstream_message(.failure, *.attempts))]
    Upstream {
        failure: UpstreamFailure,
        attempts: u32,
    },
    #[error("{message}")]
    Timeout { message: String },
    #[error("Internal gateway error: {message}")]
    Internal { message: String },
}

fn upstream_message(f: &UpstreamFailure, attempts: u32) -> String {
    if attempts > 1 {
        format!(
            "All {attempts} attempts failed; the last, to provider '{}': {}",
            f.provider, f.message
        )
    } else {
        format!("Provider '{}': {}", f.provider, f.message)
    }
}

impl GatewayError {
    /// A 400 naming the offending field.
    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: (!param.is_empty()).then(|| param.to_owned()),
        }
    }

    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidRequest { .. } => 400,
            GatewayError::NotFound { .. } => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::ModelNotFound { .. } => 404,
            GatewayError::RequestTooLarge { .. } => 413,
            GatewayError::InvalidApiKey => 401,
            GatewayError::BudgetExceeded { .. } => 429,
            GatewayError::ContextLengthExceeded { .. } => 400,
            GatewayError::ContentFilter { .. } => 400,
            GatewayError::NoHealthyEndpoint { .. } => 503,
            GatewayError::Upstream { failure, .. } => match failure.kind {
                FailureKind::Status(s) if failure.retryable() => {
                    if matches!(s, 429 | 503 | 529) {
                        503
                    } else {
                        502
                    }
                }
                FailureKind::Status(s) if (400..500).contains(&s) => s,
                FailureKind::Status(_) => 502,
                FailureKind::Timeout => 504,
                FailureKind::Connect | FailureKind::Protocol => 502,
            },
            GatewayError::Timeout { .. } => 504,
            GatewayError::Internal { .. } => 500,
        }
    }

    /// The stable `error.code` (spec §6).
    pub fn code(&self) -> String {
        match self {
            GatewayError::InvalidRequest { .. } => "invalid_request".into(),
            GatewayError::NotFound { .. } => "not_found".into(),
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed".into(),
            GatewayError::ModelNotFound { .. } => "model_not_found".into(),
            GatewayError::RequestTooLarge { .. } => "request_too_large".into(),
            GatewayError::InvalidApiKey => "invalid_api_key".into(),
            GatewayError::BudgetExceeded { .. } => "budget_exceeded".into(),
            GatewayError::ContextLengthExceeded { .. } => "context_length_exceeded".into(),
            GatewayError::ContentFilter { .. } => "content_filter".into(),
            GatewayError::NoHealthyEndpoint { .. } => "no_healthy_endpoint".into(),
            GatewayError::Upstream { failure, .. } => match failure.kind {
                // A provider's own non-retryable 4xx keeps the provider's code.
                FailureKind::Status(s) if (400..500).contains(&s) && !failure.retryable() => {
                    failure.code().unwrap_or("upstream_error").to_owned()
                }
                FailureKind::Timeout => "timeout".into(),
                _ => "upstream_error".into(),
            },
            GatewayError::Timeout { .. } => "timeout".into(),
            GatewayError::Internal { .. } => "internal_error".into(),
        }
    }

    /// The OpenAI `error.type`, which the SDKs show to users.
    pub fn error_type(&self) -> String {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::NotFound { .. }
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::ModelNotFound { .. }
            | GatewayError::RequestTooLarge { .. }
            | GatewayError::ContextLengthExceeded { .. }
            | GatewayError::ContentFilter { .. } => "invalid_request_error".into(),
            GatewayError::InvalidApiKey => "authentication_error".into(),
            GatewayError::BudgetExceeded { .. } => "rate_limit_error".into(),
            GatewayError::NoHealthyEndpoint { .. } => "service_unavailable_error".into(),
            GatewayError::Upstream { failure, .. } => match failure.kind {
                FailureKind::Status(s) if (400..500).contains(&s) && !failure.retryable() => {
                    failure
                        .error_type()
                        .unwrap_or("invalid_request_error")
                        .to_owned()
                }
                FailureKind::Timeout => "timeout_error".into(),
                _ => "upstream_error".into(),
            },
            GatewayError::Timeout { .. } => "timeout_error".into(),
            GatewayError::Internal { .. } => "server_error".into(),
        }
    }

    /// The `error.param` field.
    pub fn param(&self) -> Option<String> {
        match self {
            GatewayError::InvalidRequest { param, .. } => param.clone(),
            GatewayError::ModelNotFound { .. } => Some("model".into()),
            GatewayError::Upstream { failure, .. } => failure.param().map(str::to_owned),
            _ => None,
        }
    }

    /// Whether the client may retry the same request later and expect a different answer.
    pub fn retryable(&self) -> bool {
        match self {
            GatewayError::NoHealthyEndpoint { .. } | GatewayError::Timeout { .. } => true,
            GatewayError::Upstream { failure, .. } => failure.retryable(),
            _ => false,
        }
    }

    /// Seconds for a `retry-after` response header, when llmux knows one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            GatewayError::NoHealthyEndpoint {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            GatewayError::Upstream { failure, .. } if failure.retryable() => {
                failure.retry_after.map(|d| d.as_secs_f64().ceil() as u64)
            }
            _ => None,
        }
    }

    /// The OpenAI-shaped error object, `{"error": {...}}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    /// The error as response body bytes.
    pub fn body(&self) -> bytes::Bytes {
        bytes::Bytes::from(self.to_json().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, String> {
        let de = &mut serde_json::Deserializer::from_str(body);
        serde_path_to_error::deserialize(de).map_err(|e| format!("{} | {}", e.path(), e.inner()))
    }

    #[test]
    fn keeps_unknown_fields_and_typed_parts() {
        let req = parse(
            r#"{"model":"chat","messages":[{"role":"user","content":[{"type":"text","text":"hi","cache_control":{"type":"ephemeral"}},{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}],"metadata":{"a":"b"},"stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert!(req.wants_stream_usage());
        assert_eq!(req.extra["metadata"]["a"], "b");
        let Message::User {
            content: Content::Parts(parts),
            ..
        } = &req.messages[0]
        else {
            panic!("expected parts")
        };
        assert!(
            matches!(&parts[0], ContentPart::Text { extra, .. } if extra.contains_key("cache_control"))
        );
        let out = serde_json::to_value(&req).unwrap();
        assert!(out.get("model").is_none(), "adapters write the model");
        assert_eq!(
            out["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert_eq!(out["metadata"]["a"], "b");
    }

    #[test]
    fn string_content_passes_through_in_the_clients_encoding() {
        // Escapes as the client wrote them, including ones serde_json would write differently
        // (`\u00e9`, `\/`): the text is copied, never unescaped and re-escaped.
        let body = r#"{"model":"m","messages":[{"role":"user","content":"caf\u00e9 \"q\"\ta\/b \ud83d\ude00"}]}"#;
        let req = parse(body).unwrap();
        let Message::User {
            content: Content::Text(t),
            ..
        } = &req.messages[0]
        else {
            panic!("string content");
        };
        assert_eq!(t.json(), r#""caf\u00e9 \"q\"\ta\/b \ud83d\ude00""#);
        assert_eq!(t.as_str(), "café \"q\"\ta/b 😀");
        assert!(!t.is_empty());
        let out = serde_json::to_string(&req.messages).unwrap();
        assert_eq!(
            out,
            r#"[{"role":"user","content":"caf\u00e9 \"q\"\ta\/b \ud83d\ude00"}]"#
        );
        // Through a `Value` (the dialect rewrites, `json!`) it is the unescaped string.
        let v = serde_json::to_value(&req.messages).unwrap();
        assert_eq!(v[0]["content"], "café \"q\"\ta/b 😀");
    }

    #[test]
    fn prompt_estimate_does_not_depend_on_how_the_client_escaped_text() {
        let utf8 = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"日本語のテキスト, café"}]}"#,
        )
        .unwrap();
        let escaped = parse(
            r#"{"model":"m","messages":[{"role":"user","content":"\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8, caf\u00e9"}]}"#,
        )
        .unwrap();
        assert_eq!(
            utf8.estimate_prompt_tokens(),
            escaped.estimate_prompt_tokens()
        );
    }

    #[test]
    fn a_lone_surrogate_in_string_content_is_refused_as_before() {
        let err = parse(r#"{"model":"m","messages":[{"role":"user","content":"a \ud83d b"}]}"#)
            .unwrap_err();
        assert!(
            err.starts_with("messages[0].content | lone surrogate"),
            "{err}"
        );
    }

    #[test]
    fn content_of_every_other_type_is_refused_by_name() {
        for (content, kind) in [
            ("5", "integer `5`"),
            ("-5", "integer `-5`"),
            ("1.5", "floating point `1.5`"),
            ("true", "boolean `true`"),
            ("{}", "map"),
        ] {
            let body =
                format!(r#"{{"model":"m","messages":[{{"role":"user","content":{content}}}]}}"#);
            let err = parse(&body).unwrap_err();
            let want = format!(
                "messages[0].content | invalid type: {kind}, expected a string or an array of content parts at line 1"
            );
            assert!(err.starts_with(&want), "{err}");
        }
        // `null` is a missing content for a user message.
        let err =
            parse(r#"{"model":"m","messages":[{"role":"user","content":null}]}"#).unwrap_err();
        assert!(err.contains("content"), "{err}");
    }

    #[test]
    fn a_bad_content_part_is_named_inside_the_content() {
        let err = parse(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"wizard"}]}]}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("messages[0].content | [1]"), "{err}");
        assert!(err.contains("wizard"), "{err}");
        let err = parse(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}"#,
        )
        .unwrap_err();
        assert!(err.starts_with("messages[0].content | [0]"), "{err}");
    }

    #[test]
    fn bad_content_type_names_the_path() {
        let err = parse(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#).unwrap_err();
        assert!(err.starts_with("messages[0].content"), "{err}");
        assert!(
            err.contains("a string or an array of content parts"),
            "{err}"
        );
    }

    #[test]
    fn unknown_role_is_an_error() {
        let err =
            parse(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#).unwrap_err();
        assert!(err.contains("wizard"), "{err}");
    }

    #[test]
    fn tool_choice_shapes() {
        let r = parse(r#"{"model":"m","messages":[],"tool_choice":"required"}"#).unwrap();
        assert!(matches!(
            r.tool_choice,
            Some(ToolChoice::Mode(ToolChoiceMode::Required))
        ));
        let r = parse(r#"{"model":"m","messages":[],"tool_choice":{"type":"function","function":{"name":"f"}}}"#).unwrap();
        assert!(matches!(r.tool_choice, Some(ToolChoice::Named(n)) if n.function.name == "f"));
        assert!(parse(r#"{"model":"m","messages":[],"tool_choice":"sometimes"}"#).is_err());
    }

    #[test]
    fn validate_rejects_empty_messages_and_model() {
        let r = parse(r#"{"model":"m","messages":[]}"#).unwrap();
        assert_eq!(
            r.validate().unwrap_err().param().as_deref(),
            Some("messages")
        );
        let r = parse(r#"{"model":" ","messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(r.validate().unwrap_err().status(), 400);
    }

    #[test]
    fn usage_partition_excludes_cache_from_input() {
        let u: Usage = serde_json::from_str(
            r#"{"prompt_tokens":2150,"completion_tokens":64,"total_tokens":2214,"prompt_tokens_details":{"cached_tokens":1920}}"#,
        )
        .unwrap();
        let t = u.token_counts();
        assert_eq!((t.input, t.cache_read, t.output), (230, 1920, 64));
    }

    #[test]
    fn upstream_error_status_mapping() {
        let mk = |s| GatewayError::Upstream {
            failure: UpstreamFailure::new("p", FailureKind::Status(s), "x"),
            attempts: 2,
        };
        assert_eq!(mk(429).status(), 503);
        assert_eq!(mk(500).status(), 502);
        assert_eq!(mk(529).status(), 503);
        assert_eq!(mk(400).status(), 400);
        assert_eq!(mk(500).code(), "upstream_error");
        assert!(mk(500).retryable() && !mk(400).retryable());
    }
}
