//! Building OpenAI output from translated pieces: one place that knows the exact shape of
//! a `chat.completion` and of the `chat.completion.chunk` stream (providers.md §1.5, §1.6),
//! shared by every adapter that is not OpenAI already.

use super::sse;
use crate::types::{CompletionTokensDetails, PromptTokensDetails, Usage};
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

/// OpenAI `finish_reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// OpenAI usage from a provider's partitioned counts. `input` excludes cache reads and
/// writes; `output` includes reasoning.
pub fn usage(
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
    reasoning: Option<u64>,
) -> Usage {
    let prompt = input + cache_read + cache_write;
    Usage {
        prompt_tokens: prompt,
        completion_tokens: output,
        total_tokens: prompt + output,
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: Some(cache_read),
            cache_write_tokens: (cache_write > 0).then_some(cache_write),
            extra: Default::default(),
        }),
        completion_tokens_details: reasoning.map(|r| CompletionTokensDetails {
            reasoning_tokens: Some(r),
            extra: Default::default(),
        }),
        extra: Default::default(),
    }
}

/// A complete tool call in a non-stream answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallOut {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

/// Everything a non-stream OpenAI answer holds.
#[derive(Debug, Clone)]
pub struct CompletionOut {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub content: Option<String>,
    /// Non-standard `reasoning_content` (thinking), kept out of `content`.
    pub reasoning: Option<String>,
    pub refusal: Option<String>,
    pub tool_calls: Vec<ToolCallOut>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

impl CompletionOut {
    /// The `chat.completion` JSON body.
    pub fn to_body(&self) -> Bytes {
        let mut message = json!({
            "role": "assistant",
            "content": self.content,
            "refusal": self.refusal,
        });
        if let Some(r) = &self.reasoning {
            message["reasoning_content"] = Value::String(r.clone());
        }
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self
                .tool_calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect();
        }
        let body = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": self.finish_reason.as_str()}],
            "usage": self.usage,
        });
        Bytes::from(body.to_string())
    }
}

/// Seconds since the epoch, for `created`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Emits `chat.completion.chunk` events with the rules clients depend on: a role chunk first,
/// a tool call's first delta with id/type/name and later deltas with arguments only, a finish
/// chunk with an empty delta, the usage chunk (`choices: []`) only when the client asked, and
/// exactly one `data: [DONE]`.
#[derive(Debug)]
pub struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    role_sent: bool,
    finished: bool,
    done: bool,
}

impl ChunkWriter {
    /// A writer for one stream.
    pub fn new(id: impl Into<String>, model: impl Into<String>, include_usage: bool) -> Self {
        ChunkWriter {
            id: id.into(),
            created: now_secs(),
            model: model.into(),
            include_usage,
            role_sent: false,
            finished: false,
            done: false,
        }
    }

    /// Fixes `created` (the provider's own timestamp, or a constant in golden tests).
    pub fn with_created(mut self, created: u64) -> Self {
        self.created = created;
        self
    }

    /// Replaces the id and model once the provider told them (e.g. Anthropic `message_start`).
    pub fn set_identity(&mut self, id: Option<&str>, model: Option<&str>) {
        if let Some(id) = id {
            self.id = id.to_owned();
        }
        if let Some(m) = model {
            self.model = m.to_owned();
        }
    }

    /// Whether the finish chunk was written.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether `[DONE]` was written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<FinishReason>) {
        let v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(FinishReason::as_str)}],
        });
        sse::data_event(out, v.to_string().as_bytes());
    }

    /// The first chunk (`role: assistant`); later calls do nothing.
    pub fn role(&mut self, out: &mut BytesMut) {
        if !self.role_sent {
            self.role_sent = true;
            self.chunk(out, json!({"role": "assistant", "content": ""}), None);
        }
    }

    /// A text delta.
    pub fn content(&mut self, out: &mut BytesMut, text: &str) {
        if text.is_empty() {
            return;
        }
        self.role(out);
        self.chunk(out, json!({"content": text}), None);
    }

    /// A reasoning delta (`reasoning_content`).
    pub fn reasoning(&mut self, out: &mut BytesMut, text: &str) {
        if text.is_empty() {
            return;
        }
        self.role(out);
        self.chunk(out, json!({"reasoning_content": text}), None);
    }

    /// The first delta of tool call `index` (0, 1, ... within this answer).
    pub fn tool_call_start(
        &mut self,
        out: &mut BytesMut,
        index: usize,
        id: &str,
        name: &str,
        arguments: &str,
    ) {
        self.role(out);
        self.chunk(
            out,
            json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]}),
            None,
        );
    }

    /// More argument text for tool call `index`.
    pub fn tool_call_args(&mut self, out: &mut BytesMut, index: usize, fragment: &str) {
        if fragment.is_empty() {
            return;
        }
        self.chunk(
            out,
            json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
            None,
        );
    }

    /// The finish chunk (once).
    pub fn finish(&mut self, out: &mut BytesMut, reason: FinishReason) {
        if !self.finished {
            self.role(out);
            self.finished = true;
            self.chunk(out, json!({}), Some(reason));
        }
    }

    /// The usage chunk, when the client asked for it, then `[DONE]` (once).
    pub fn end(&mut self, out: &mut BytesMut, usage: Option<&Usage>) {
        if self.done {
            return;
        }
        if self.include_usage {
            if let Some(u) = usage {
                let v = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": u,
                });
                sse::data_event(out, v.to_string().as_bytes());
            }
        }
        out.extend_from_slice(sse::DONE);
        self.done = true;
    }
}

/// Adds `"cost_usd": cost` to the top-level `usage` object of a JSON body, with a byte scan
/// instead of a re-parse (the body may be a provider's untouched bytes). None when the body
/// has no top-level `usage` object.
pub fn insert_usage_cost(json: &[u8], cost: f64) -> Option<Vec<u8>> {
    let close = usage_object_end(json)?;
    let mut out = Vec::with_capacity(json.len() + 32);
    out.extend_from_slice(&json[..close]);
    // An empty object `{}` needs no comma.
    let before = json[..close]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace());
    if before != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(format!("\"cost_usd\":{}", format_cost(cost)).as_bytes());
    out.extend_from_slice(&json[close..]);
    Some(out)
}

/// A cost as JSON/header text: plain decimal, up to 12 places, no exponent.
pub fn format_cost(cost: f64) -> String {
    let s = format!("{cost:.12}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

/// The index of the `}` closing the top-level `"usage": {...}` object.
fn usage_object_end(json: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    let mut usage_start = None;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    if json[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1
                    && usage_start.is_none()
                    && &json[start..=i.min(json.len() - 1)] == b"\"usage\""
                {
                    // A key at the top level: the value must be an object.
                    let mut j = i + 1;
                    while j < json.len() && (json[j].is_ascii_whitespace() || json[j] == b':') {
                        j += 1;
                    }
                    if json.get(j) == Some(&b'{') {
                        usage_start = Some(depth);
                        depth += 1;
                        i = j;
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if usage_start == Some(depth) && json[i] == b'}' {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_cost_into_top_level_usage_only() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"a \"usage\":{} }"}}],"usage":{"prompt_tokens":3,"nested":{"a":1}},"z":1}"#;
        let out = insert_usage_cost(body, 0.000123).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["cost_usd"], 0.000123);
        assert_eq!(v["usage"]["nested"]["a"], 1);
        assert_eq!(v["choices"][0]["message"]["content"], "a \"usage\":{} }");
        let out = insert_usage_cost(br#"{"usage": { }}"#, 1.5).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()["usage"]["cost_usd"],
            1.5
        );
        assert!(insert_usage_cost(br#"{"usage":null}"#, 1.0).is_none());
        assert!(insert_usage_cost(br#"{"choices":[{"usage":{}}]}"#, 1.0).is_none());
        assert!(insert_usage_cost(b"{\"usage\":{", 1.0).is_none());
        assert_eq!(format_cost(0.00012), "0.00012");
        assert_eq!(format_cost(2.0), "2");
    }

    #[test]
    fn chunk_sequence_follows_openai_rules() {
        let mut w = ChunkWriter::new("chatcmpl-1", "m", true);
        let mut out = BytesMut::new();
        w.content(&mut out, "Hi");
        w.tool_call_start(&mut out, 0, "call_1", "f", "");
        w.tool_call_args(&mut out, 0, "{\"a\":1}");
        w.finish(&mut out, FinishReason::ToolCalls);
        w.finish(&mut out, FinishReason::Stop);
        w.end(&mut out, Some(&usage(3, 2, 0, 5, None)));
        w.end(&mut out, None);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 7, "{text}");
        assert!(events[0].contains("\"role\":\"assistant\""));
        assert!(events[4].contains("\"finish_reason\":\"tool_calls\""));
        assert!(events[5].contains("\"choices\":[]") && events[5].contains("\"prompt_tokens\":5"));
        assert_eq!(events[6], "data: [DONE]");
    }

    #[test]
    fn usage_includes_cache_in_prompt_tokens() {
        let u = usage(230, 1920, 100, 88, Some(10));
        assert_eq!((u.prompt_tokens, u.total_tokens), (2250, 2338));
        let t = u.token_counts();
        assert_eq!(
            (t.input, t.cache_read, t.cache_write, t.output),
            (230, 1920, 100, 88)
        );
    }
}
