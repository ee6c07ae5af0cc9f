//! Converse answers -> OpenAI (providers.md §8.3, §11.1, §11.2), shared by the non-stream
//! path and the stream translator.

use super::request::{call_kind, CallKind};
use crate::providers::openai_out::{self, CompletionOut, FinishReason, ToolCallOut};
use crate::types::{FailureKind, UpstreamFailure, Usage};
use serde::Deserialize;
use serde_json::Value;

/// Converse usage. `inputTokens` excludes cache reads and writes (like Anthropic), so the
/// prompt is their sum; reasoning is inside `outputTokens` and not broken out.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_write_input_tokens: Option<u64>,
}

impl WireUsage {
    pub fn to_openai(self) -> Usage {
        openai_out::usage(
            self.input_tokens.unwrap_or(0),
            self.cache_read_input_tokens.unwrap_or(0),
            self.cache_write_input_tokens.unwrap_or(0),
            self.output_tokens.unwrap_or(0),
            None,
        )
    }
}

/// `stopReason` -> `finish_reason`. `tool_use` is `tool_calls` only when a client tool was
/// called (the JSON tool and server tools answer with `stop`); `malformed_model_output` and
/// `malformed_tool_use` are reported as `stop` (the text that came is kept) and logged.
pub fn finish_reason(stop: Option<&str>, client_calls: bool) -> FinishReason {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("guardrail_intervened" | "content_filtered") => FinishReason::ContentFilter,
        _ if client_calls => FinishReason::ToolCalls,
        Some("end_turn" | "stop_sequence" | "tool_use") | None => FinishReason::Stop,
        Some(other) => {
            log::debug!("Bedrock stopReason `{other}` reported as `stop`");
            FinishReason::Stop
        }
    }
}

/// Tool input as OpenAI `arguments` text (`{}` for none).
pub fn input_json(input: Option<&Value>) -> String {
    match input {
        None | Some(Value::Null) => "{}".into(),
        Some(v) => v.to_string(),
    }
}

/// A fresh `chatcmpl-…` id: Converse bodies carry none (only the `x-amzn-RequestId` header,
/// which the adapter does not see).
pub fn completion_id() -> String {
    let mut id = String::from("chatcmpl-bedrock-");
    for _ in 0..20 {
        id.push(fastrand::alphanumeric());
    }
    id
}

/// Translates a successful non-stream Converse body.
pub fn translate(
    provider: &str,
    body: &[u8],
    model: &str,
    json_mode: bool,
) -> Result<(CompletionOut, Usage), UpstreamFailure> {
    let protocol = |what: String| UpstreamFailure::new(provider, FailureKind::Protocol, what);
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| protocol(format!("the provider's response is not JSON: {e}")))?;
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            protocol(
                "the provider's response is not a Converse answer (no output.message.content)"
                    .into(),
            )
        })?;
    let (mut text, mut reasoning, mut tool_calls) = (String::new(), String::new(), Vec::new());
    for b in blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(u) = b.get("toolUse") {
            let name = u.get("name").and_then(Value::as_str).unwrap_or_default();
            let kind = u.get("type").and_then(Value::as_str);
            match call_kind(name, kind, json_mode) {
                CallKind::Hidden => {}
                CallKind::JsonAnswer => text.push_str(&input_json(u.get("input"))),
                CallKind::Client => tool_calls.push(ToolCallOut {
                    id: u
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    name: name.to_owned(),
                    arguments: input_json(u.get("input")),
                }),
            }
        } else if let Some(r) = b.get("reasoningContent") {
            // `redactedContent` is encrypted and not surfaced.
            if let Some(t) = r.pointer("/reasoningText/text").and_then(Value::as_str) {
                reasoning.push_str(t);
            }
        } else if let Some(parts) = b
            .pointer("/citationsContent/content")
            .and_then(Value::as_array)
        {
            for p in parts {
                text.push_str(p.get("text").and_then(Value::as_str).unwrap_or_default());
            }
        }
        // toolResult (server tools), images, guardContent: no OpenAI shape.
    }
    let usage: WireUsage = v
        .get("usage")
        .and_then(|u| serde_json::from_value(u.clone()).ok())
        .unwrap_or_default();
    let finish = finish_reason(
        v.get("stopReason").and_then(Value::as_str),
        !tool_calls.is_empty(),
    );
    let usage = usage.to_openai();
    let out = CompletionOut {
        id: completion_id(),
        created: openai_out::now_secs(),
        model: model.to_owned(),
        content: (!text.is_empty()
            || (tool_calls.is_empty() && finish != FinishReason::ContentFilter))
            .then_some(text),
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        refusal: None,
        tool_calls,
        finish_reason: finish,
        usage: usage.clone(),
    };
    Ok((out, usage))
}
