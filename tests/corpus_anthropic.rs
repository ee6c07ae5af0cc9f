//! Replays every recorded Anthropic exchange in `../shared/corpus/anthropic` through the
//! Anthropic adapter and checks the OpenAI output field by field (content, reasoning, tool
//! calls, finish_reason, usage, error status/code), plus the request side where a request
//! was recorded. Every file must be claimed by a table entry below, so a new corpus file
//! cannot be silently ignored; request sides llmux deliberately cannot produce are listed
//! with the reason.
//!
//! Property tests: any split of a recorded stream gives byte-identical output, and random
//! OpenAI requests translate without panicking into bodies that obey Anthropic's rules.

mod common;

use bytes::BytesMut;
use common::{
    check_reasoning, check_text, check_tools, seg, text, PartGen, RequestStyle, Text, CREATED,
};
use llmux::config::ProviderConfig;
use llmux::providers::anthropic::AnthropicAdapter;
use llmux::providers::{Adapter, BaseUrl, StreamTranslator};
use llmux::types::ChatRequest;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

/// OpenAI usage as §11.2 computes it from the recorded Anthropic numbers, and
/// `reasoning_tokens`.
struct U {
    tokens: common::U,
    reasoning: Option<u64>,
}

const fn u(prompt: u64, completion: u64, cached: u64, cache_write: u64) -> U {
    U {
        tokens: common::u(prompt, completion, cached, cache_write),
        reasoning: None,
    }
}

struct Expect {
    content: Text,
    /// Prefix and length of `reasoning_content`, or `None` when it must be absent.
    reasoning: Option<(&'static str, usize)>,
    /// (id, name, arguments JSON).
    tools: &'static [(&'static str, &'static str, &'static str)],
    finish: &'static str,
    usage: U,
    /// The non-stream `refusal` field.
    refusal: Option<&'static str>,
}

enum Outcome {
    Answer(Expect),
    /// An error status: the upstream status, the client's status, `error.code`, `error.type`.
    Error(u16, u16, &'static str, &'static str),
}

enum RequestSide {
    /// Response-only fixture.
    NotRecorded,
    /// llmux cannot produce this request from an OpenAI one, and why.
    Skip(&'static str),
    /// An OpenAI request equivalent (built from the recording's texts), whether the adapter
    /// runs with `auto_cache`, and top-level fields that differ by design (with why).
    Check(
        fn(&Value) -> Value,
        bool,
        &'static [(&'static str, &'static str)],
    ),
}

struct Case {
    id: &'static str,
    outcome: Outcome,
    request: RequestSide,
}

const SERVER_TOOLS: &str = "Anthropic server tools (web search, code execution, advisor, tool search, MCP connector) cannot be expressed in an OpenAI request: llmux sends function tools only";

fn cases() -> Vec<Case> {
    use Outcome::*;
    use RequestSide::*;
    let none = None;
    vec![
        Case {
            id: "pai-test_anthropic_advisor_tool_stream",
            outcome: Answer(Expect {
                content: Text::Prefix("The task asks \"What's 2+2?\" — a trivial", 190),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: U { reasoning: Some(47), ..u(2411, 145, 0, 0) },
                refusal: None,
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_anthropic_cache_real_api__0",
            outcome: Answer(Expect {
                content: Text::Prefix("# What is Python?\n\nPython is a high-level", 1561),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(1114, 406, 1111, 0),
                refusal: None,
            }),
            // The client asked for Anthropic's automatic caching itself (top-level
            // `cache_control`, passed through); llmux's own `auto_cache` places explicit
            // breakpoints instead and is covered by the adapter's unit tests.
            request: Check(
                |r| json!({"cache_control": {"type": "ephemeral", "ttl": "5m"},
                    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": text_at(r, 0, 0)}]}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_cache_real_api__1",
            outcome: Answer(Expect {
                content: Text::Prefix("Python is a beginner-friendly, versatile", 164),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(1532, 33, 1111, 418),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": text_at(r, 0, 0)},
                    {"role": "assistant", "content": text_at(r, 1, 0)},
                    {"role": "user", "content": [{"type": "text", "text": text_at(r, 2, 0)}]}],
                    "cache_control": {"type": "ephemeral", "ttl": "5m"}}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_code_execution_files_cache_prefix_stable_messages-sonnet-4-6__1",
            outcome: Answer(Expect {
                content: Text::Prefix("Here are the results from reading `data.csv`:", 264),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(8855, 211, 4332, 4513),
                refusal: None,
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_anthropic_code_execution_files_cache_prefix_stable_messages-sonnet-5__2",
            outcome: Answer(Expect {
                // The thinking block is empty (signature only): no reasoning_content.
                content: Text::Prefix("**Average of the `value` column = 50**", 100),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: U { reasoning: Some(15), ..u(14640, 290, 14210, 426) },
                refusal: None,
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_anthropic_code_execution_tool_stream",
            outcome: Answer(Expect {
                content: Text::Prefix("I'll calculate that expression for you right away!Following", 501),
                reasoning: Some(("Let me calculate this mathematical expression.", 46)),
                tools: &[],
                finish: "stop",
                usage: u(4714, 304, 0, 0),
                refusal: None,
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_anthropic_explicit_effort_xhigh_unsupported_model_errors",
            outcome: Error(400, 400, "invalid_request_error", "invalid_request_error"),
            // `output_config` is an Anthropic-native field llmux passes through.
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}], "output_config": {"effort": "xhigh"}}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_mcp_servers_stream",
            outcome: Answer(Expect {
                content: Text::Prefix("**Pydantic-AI** is a framework for building", 806),
                reasoning: Some(("The user is asking about the pydantic/pydantic-ai", 192)),
                tools: &[],
                finish: "stop",
                usage: u(3042, 354, 0, 0),
                refusal: None,
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_anthropic_model_instructions",
            outcome: Answer(Expect {
                content: Text::Exact("The capital of France is Paris."),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(20, 10, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "developer", "content": "You are a helpful assistant.\n\n"},
                    {"role": "user", "content": text_at(r, 0, 0)}]}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_model_thinking_part__0",
            outcome: Answer(Expect {
                content: Text::Prefix("Here's how to cross the street safely:", 1062),
                reasoning: Some(("This is a straightforward question about pedestrian safety.", 134)),
                tools: &[],
                finish: "stop",
                usage: u(43, 321, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}],
                    "reasoning_effort": "low", "max_completion_tokens": 4096}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_model_thinking_part__1",
            outcome: Answer(Expect {
                content: Text::Prefix("# How to Cross a River (Using the Street-Crossing Analogy)", 1295),
                reasoning: Some(("This is an interesting analogy question.", 847)),
                tools: &[],
                finish: "stop",
                usage: u(354, 525, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)},
                    {"role": "assistant", "content": text_at(r, 1, 1), "reasoning_content": r["messages"][1]["content"][0]["thinking"]},
                    {"role": "user", "content": text_at(r, 2, 0)}],
                    "reasoning_effort": "low", "max_completion_tokens": 4096}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_model_thinking_part_redacted__0",
            outcome: Answer(Expect {
                content: Text::Prefix("I notice that your message appears to contain a command", 341),
                // redacted_thinking is encrypted: nothing readable to report.
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(92, 196, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}],
                    "reasoning_effort": "minimal", "max_completion_tokens": 4096}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_model_thinking_part_redacted__1",
            outcome: Answer(Expect {
                content: Text::Prefix("That message appeared to be an attempt", 500),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(168, 232, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)},
                    {"role": "assistant", "content": text_at(r, 1, 1)},
                    {"role": "user", "content": text_at(r, 2, 0)}],
                    "reasoning_effort": "low", "max_tokens": 4096}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_model_thinking_part_redacted_stream",
            outcome: Answer(Expect {
                content: Text::Prefix("I notice that you've sent what appears to be", 359),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(92, 189, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}], "stream": true,
                    "stream_options": {"include_usage": true}, "reasoning_effort": "low", "max_completion_tokens": 4096}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_model_thinking_part_stream",
            outcome: Answer(Expect {
                content: Text::Prefix("Here are the basic steps for safely crossing the street:", 1021),
                reasoning: Some(("This is a straightforward question about pedestrian", 202)),
                tools: &[],
                finish: "stop",
                usage: u(43, 282, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}], "stream": true,
                    "reasoning_effort": "low", "max_completion_tokens": 4096}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_model_web_search_tool_stream",
            outcome: Answer(Expect {
                // Text blocks (citations ignored) concatenate around the dropped search blocks.
                content: Text::Prefix("Based on the search results, I can see that the information", 1335),
                reasoning: Some(("The user is asking about the weather in San Francisco", 405)),
                tools: &[],
                finish: "stop",
                // message_delta repeats cumulative input counts that include the searches.
                usage: u(22397, 637, 0, 0),
                refusal: None,
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_anthropic_native_tool_search_streaming__0",
            outcome: Answer(Expect {
                content: Text::Prefix("Let me search for a tool that can provide current exchange rate information.I found", 158),
                reasoning: none,
                // The server tool_search call is not a client tool call: the client call is index 0.
                tools: &[("toolu_01EFn5wTNBYA8Reni8rbmnHT", "get_exchange_rate", r#"{"from_currency": "USD", "to_currency": "EUR"}"#)],
                finish: "tool_calls",
                usage: u(1591, 175, 0, 0),
                refusal: None,
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_anthropic_native_tool_search_streaming__1",
            outcome: Answer(Expect {
                content: Text::Prefix("The current exchange rate is **1 USD = 0.92 EUR**.", 227),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(1007, 59, 0, 0),
                refusal: None,
            }),
            request: Skip("the history replays a server `tool_search` call and its result, and tools use `defer_loading`; neither exists in OpenAI requests"),
        },
        Case {
            id: "pai-test_anthropic_tool_with_thinking__0",
            outcome: Answer(Expect {
                content: Text::Prefix("I'll help you find the largest city in your country.", 103),
                reasoning: Some(("The user is asking about the largest city in \"the user country\"", 376)),
                tools: &[("toolu_01YGzqpRE16Vricda3Aqcejo", "get_user_country", "{}")],
                finish: "tool_calls",
                usage: u(398, 155, 0, 0),
                refusal: None,
            }),
            // A client that knows it talks to Claude passes `thinking` through as an extension.
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}],
                    "thinking": {"type": "enabled", "budget_tokens": 3000}, "max_completion_tokens": 4096, "tool_choice": "auto",
                    "tools": [function_tool("get_user_country", json!({"additionalProperties": false, "properties": {}, "type": "object"}), false)]}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_anthropic_tool_with_thinking__1",
            outcome: Answer(Expect {
                content: Text::Prefix("Based on the information that you're from Mexico", 604),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(566, 126, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)},
                    {"role": "assistant", "content": text_at(r, 1, 1), "reasoning_content": "(signed thinking cannot travel)",
                     "tool_calls": [{"id": "toolu_01YGzqpRE16Vricda3Aqcejo", "type": "function", "function": {"name": "get_user_country", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_01YGzqpRE16Vricda3Aqcejo", "content": "Mexico"}],
                    "thinking": {"type": "enabled", "budget_tokens": 3000}, "max_completion_tokens": 4096, "tool_choice": "auto",
                    "tools": [function_tool("get_user_country", json!({"additionalProperties": false, "properties": {}, "type": "object"}), false)]}),
                false,
                &[("thinking", "the recorded turn replays the signed thinking block before its tool_use; OpenAI messages cannot carry the signature, so llmux sends this tool-result turn without thinking (Anthropic's own error text recommends that)")],
            ),
        },
        Case {
            id: "pai-test_mixed_tools_basemodel_output__0",
            outcome: Answer(Expect {
                content: Text::Null,
                reasoning: none,
                tools: &[
                    ("toolu_01KWZYbjFVqYdpqBiJbw8zJB", "get_population", r#"{"city":"London"}"#),
                    ("toolu_01XTbK9b3Attg9LFsW4L6Fr5", "get_area", r#"{"city":"London"}"#),
                ],
                finish: "tool_calls",
                usage: u(781, 74, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}], "tool_choice": "required",
                    "tools": [function_tool("get_population", city_schema(), true), function_tool("get_area", city_schema(), false),
                        {"type": "function", "function": {"name": "final_result", "description": "Information about a city.",
                            "parameters": r["tools"][2]["input_schema"]}}]}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_mixed_tools_native_output__0",
            outcome: Answer(Expect {
                content: Text::Null,
                reasoning: none,
                tools: &[
                    ("toolu_01XhRHVXkKSCMGnaoHjpKax8", "lookup_country", r#"{"city":"Tokyo"}"#),
                    ("toolu_01DrZpF6pdh3dMMQ2rLTeM3E", "get_founded_year", r#"{"city":"Tokyo"}"#),
                ],
                finish: "tool_calls",
                usage: u(797, 91, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}], "tool_choice": "auto",
                    "response_format": city_format(),
                    "tools": [function_tool("lookup_country", city_schema(), true), function_tool("get_founded_year", city_schema(), false)]}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_model_name_suggestion_anthropic",
            outcome: Error(404, 404, "model_not_found", "invalid_request_error"),
            request: Check(
                |_| json!({"messages": [{"role": "user", "content": "hello"}]}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_multimodal_tool_return_matrix_tool_return_content-uploaded_file-document-anthropic__1",
            outcome: Answer(Expect {
                content: Text::Prefix("I successfully retrieved a document file!", 604),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(2222, 145, 0, 0),
                refusal: None,
            }),
            request: Skip("the tool-result turn adds a `document` from Anthropic's Files API (`file_id`); an OpenAI `file_id` means nothing to Anthropic, so llmux refuses file ids (base64 PDFs map)"),
        },
        Case {
            id: "pai-test_multiple_parallel_tool_calls__0",
            outcome: Answer(Expect {
                content: Text::Exact("I'll help you find out who is the youngest by retrieving information about each family member. I'll retrieve their entity information to compare their ages."),
                reasoning: none,
                tools: &[
                    ("toolu_0167cfEnoQaPviGdVXA95zcu", "retrieve_entity_info", r#"{"name":"Alice"}"#),
                    ("toolu_01EEe2V5HD1Ac4rKiUR4HD2T", "retrieve_entity_info", r#"{"name":"Bob"}"#),
                    ("toolu_01XFyAjstT3966qvRynZyVPo", "retrieve_entity_info", r#"{"name":"Charlie"}"#),
                    ("toolu_013mnQZbgtK2oe3Mo3XKJsx3", "retrieve_entity_info", r#"{"name":"Daisy"}"#),
                ],
                finish: "tool_calls",
                usage: u(423, 202, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "system", "content": r["system"]}, {"role": "user", "content": text_at(r, 0, 0)}],
                    "tool_choice": "auto",
                    "tools": [{"type": "function", "function": {"name": "retrieve_entity_info", "description": "Get the knowledge about the given entity.",
                        "parameters": r["tools"][0]["input_schema"]}}]}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_pause_turn_web_search_vcr__0",
            outcome: Answer(Expect {
                content: Text::Prefix("I'll run these searches for you one at a time. Let me begin:Now continuing", 425),
                reasoning: Some(("The user wants me to run 15 separate web searches", 293)),
                tools: &[],
                // pause_turn: the turn is incomplete (Anthropic wants it resent).
                finish: "length",
                usage: u(401468, 792, 0, 0),
                refusal: None,
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_strict_none_tool_native_output__0",
            outcome: Answer(Expect {
                content: Text::Null,
                reasoning: none,
                tools: &[("toolu_01XMSifipsUF53jokN1mo3X1", "get_coordinates", r#"{"city":"Barcelona"}"#)],
                finish: "tool_calls",
                usage: u(744, 53, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}], "tool_choice": "auto",
                    "response_format": city_format(), "tools": [function_tool("get_coordinates", city_schema(), false)]}),
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_tool_choice_matrix_none-anthropic",
            outcome: Answer(Expect {
                content: Text::Exact("Hello! 👋 How can I help you today?"),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(567, 16, 0, 0),
                refusal: None,
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}], "tool_choice": "none",
                    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city.",
                        "parameters": r["tools"][0]["input_schema"]}}]}),
                false,
                &[],
            ),
        },
        Case {
            id: "vercel-anthropic-refusal-chunks",
            outcome: Answer(Expect {
                content: Text::Null,
                reasoning: none,
                tools: &[],
                finish: "content_filter",
                usage: u(18, 5, 0, 0),
                refusal: None,
            }),
            request: NotRecorded,
        },
        Case {
            id: "vercel-anthropic-refusal-no-details",
            outcome: Answer(Expect {
                content: Text::Null,
                reasoning: none,
                tools: &[],
                finish: "content_filter",
                usage: u(18, 5, 0, 0),
                refusal: None,
            }),
            request: NotRecorded,
        },
        Case {
            id: "vercel-anthropic-refusal",
            outcome: Answer(Expect {
                content: Text::Null,
                reasoning: none,
                tools: &[],
                finish: "content_filter",
                usage: u(18, 5, 0, 0),
                refusal: Some("This request triggered restrictions on violative cyber content and was blocked under Anthropic's Usage Policy."),
            }),
            request: NotRecorded,
        },
        Case {
            id: "vercel-anthropic-tool-no-args-chunks",
            outcome: Answer(Expect {
                content: Text::Exact("I'll update the issue list for you."),
                reasoning: none,
                tools: &[("toolu_01QE1WLsSVp5hy5Q3GmGTmjP", "updateIssueList", "{}")],
                finish: "tool_calls",
                usage: u(565, 48, 0, 0),
                refusal: None,
            }),
            request: NotRecorded,
        },
        Case {
            id: "vercel-anthropic-tool-no-args",
            outcome: Answer(Expect {
                content: Text::Prefix("<thinking>\nThe updateIssueList tool was provided", 255),
                reasoning: none,
                tools: &[("toolu_01LRmxn9vGM1d2DZSDBowdZ1", "updateIssueList", "{}")],
                finish: "tool_calls",
                usage: u(602, 93, 0, 0),
                refusal: None,
            }),
            request: NotRecorded,
        },
        Case {
            id: "vercel-anthropic-web-fetch-tool.error",
            outcome: Answer(Expect {
                content: Text::Prefix("I'll fetch the PDF document from the URL you provided to see what it says about AI.I'm unable", 579),
                reasoning: none,
                tools: &[],
                finish: "stop",
                usage: u(1902, 214, 0, 0),
                refusal: None,
            }),
            request: NotRecorded,
        },
    ]
}

/// The text of content block `block` of recorded message `msg` (or the string content).
fn text_at(r: &Value, msg: usize, block: usize) -> Value {
    let c = &r["messages"][msg]["content"];
    match c {
        Value::String(_) => c.clone(),
        _ => c[block]["text"].clone(),
    }
}

fn function_tool(name: &str, parameters: Value, strict: bool) -> Value {
    let mut f = json!({"name": name, "description": "", "parameters": parameters});
    if strict {
        f["strict"] = true.into();
    }
    json!({"type": "function", "function": f})
}

fn city_schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false})
}

fn city_format() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "CityInfo", "strict": true, "schema": {"type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "country", "population"]}}})
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

const PROVIDER: &str = "anthropic";
/// The model alias of the client requests.
const ALIAS: &str = "claude";

fn adapter(auto_cache: bool) -> AnthropicAdapter {
    let cfg: ProviderConfig = serde_json::from_value(json!({
        "name": "anthropic", "kind": "anthropic", "base_url": "https://api.anthropic.com",
        "api_key": "sk-ant-test-0000", "auto_cache": auto_cache,
    }))
    .unwrap();
    AnthropicAdapter::new(&cfg, &BaseUrl::parse("https://api.anthropic.com").unwrap()).unwrap()
}

fn load(id: &str) -> Value {
    common::load(PROVIDER, id)
}

/// The upstream stream bytes of a case: the `.sse` file, or SSE framing rebuilt around the
/// data payloads of a `.chunks` fixture.
fn stream_wire(case: &Value) -> Option<Vec<u8>> {
    let resp = &case["response"];
    if let Some(file) = resp["sse_file"].as_str() {
        let bytes = std::fs::read(common::corpus_dir(PROVIDER).join(file)).unwrap();
        assert_eq!(
            resp["body_text"].as_str().map(str::as_bytes),
            Some(&bytes[..]),
            "sse file matches body_text"
        );
        return Some(bytes);
    }
    let chunks = resp["chunks"].as_array()?;
    let text: String = chunks
        .iter()
        .map(|c| format!("event: {}\ndata: {c}\n\n", c["type"].as_str().unwrap()))
        .collect();
    Some(text.into_bytes())
}

fn translate_stream(a: &AnthropicAdapter, req: &ChatRequest, chunks: &[&[u8]]) -> Vec<u8> {
    common::feed_all(
        &mut a.translator_at(req, "claude-upstream", CREATED),
        chunks,
    )
}

fn stream_request() -> ChatRequest {
    common::chat_request(common::streamed_question(true), ALIAS)
}

fn check_usage(id: &str, usage: &Value, want: &U) {
    common::check_usage(id, usage, &want.tokens);
    assert_eq!(
        usage
            .pointer("/completion_tokens_details/reasoning_tokens")
            .and_then(Value::as_u64),
        want.reasoning,
        "{id}: reasoning_tokens"
    );
}

fn check_answer(id: &str, case: &Value, want: &Expect) {
    let a = adapter(false);
    let resp = &case["response"];
    if let Some(wire) = stream_wire(case) {
        let req = stream_request();
        let got = common::assemble(&translate_stream(&a, &req, &[&wire]));
        let start = wire_message_start(&wire);
        assert_eq!(
            (got.id.as_str(), got.model.as_str()),
            (start.0.as_str(), start.1.as_str()),
            "{id}: id/model from message_start"
        );
        check_text(id, "content", got.content.as_deref(), &want.content);
        check_reasoning(id, got.reasoning.as_deref(), want.reasoning);
        check_tools(id, &got.tools, want.tools);
        assert_eq!(got.finish, want.finish, "{id}: finish_reason");
        check_usage(id, &got.usage, &want.usage);
        let mut t = a.translator_at(&req, "m", CREATED);
        let mut sink = BytesMut::new();
        t.feed(&wire, &mut sink).unwrap();
        check_usage(
            id,
            &serde_json::to_value(t.usage().unwrap()).unwrap(),
            &want.usage,
        );
        assert!(
            want.refusal.is_none(),
            "{id}: streams carry no refusal text"
        );
    } else {
        let body = common::recorded_body_bytes(resp);
        let req = common::chat_request(common::question(), ALIAS);
        let t = a.chat_response(&req, "claude-upstream", &body).unwrap();
        common::check_usage_end(id, &t);
        assert!(
            t.usage_end.is_some(),
            "{id}: a built body knows where its usage ends"
        );
        let out: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(
            (&out["id"], &out["model"]),
            (&resp["body"]["id"], &resp["body"]["model"]),
            "{id}: id/model"
        );
        let msg = &out["choices"][0]["message"];
        assert_eq!(msg["role"], "assistant");
        check_text(id, "content", msg["content"].as_str(), &want.content);
        check_reasoning(id, msg["reasoning_content"].as_str(), want.reasoning);
        check_tools(id, &common::message_tool_calls(msg), want.tools);
        assert_eq!(
            out["choices"][0]["finish_reason"], want.finish,
            "{id}: finish_reason"
        );
        assert_eq!(msg["refusal"].as_str(), want.refusal, "{id}: refusal");
        check_usage(id, &out["usage"], &want.usage);
        assert_eq!(
            serde_json::to_value(t.usage.unwrap()).unwrap(),
            out["usage"],
            "{id}: reported usage"
        );
    }
}

fn wire_message_start(wire: &[u8]) -> (String, String) {
    let text = std::str::from_utf8(wire).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"message_start\""))
        .unwrap();
    let v: Value = serde_json::from_str(line.trim_start_matches("data:").trim()).unwrap();
    (
        v["message"]["id"].as_str().unwrap().into(),
        v["message"]["model"].as_str().unwrap().into(),
    )
}

fn check_error(id: &str, case: &Value, upstream: u16, client: u16, code: &str, kind: &str) {
    let f = common::replay_error(id, case, &adapter(false), upstream, "/error/message");
    assert_eq!(
        (f.code(), f.error_type()),
        (Some(code), Some(kind)),
        "{id}: code/type"
    );
    common::assert_client_sees(id, f, client, code);
}
/// The fields of a Messages body that carry meaning, in a comparable form: string content
/// as one text block, default `is_error: false` and `stream: false` removed, and thinking
/// blocks left out of the history (OpenAI messages cannot carry their signatures).
fn essentials(body: &Value) -> Value {
    fn blocks(content: &Value) -> Value {
        match content {
            Value::String(s) => json!([{"type": "text", "text": s}]),
            Value::Array(a) => a
                .iter()
                .filter(|b| !matches!(b["type"].as_str(), Some("thinking" | "redacted_thinking")))
                .map(|b| {
                    let mut b = b.clone();
                    if b["type"] == "tool_result" {
                        let obj = b.as_object_mut().unwrap();
                        if obj.get("is_error") == Some(&json!(false)) {
                            obj.remove("is_error");
                        }
                        if let Some(c) = obj.get("content").cloned() {
                            obj.insert("content".into(), blocks(&c));
                        }
                    }
                    b
                })
                .collect(),
            other => other.clone(),
        }
    }
    let mut out = body.as_object().unwrap().clone();
    out.remove("model");
    if out.get("stream") == Some(&json!(false)) {
        out.remove("stream");
    }
    if let Some(s) = out.get("system").cloned() {
        out.insert("system".into(), blocks(&s));
    }
    let messages: Vec<Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!({"role": m["role"], "content": blocks(&m["content"])}))
        .collect();
    out.insert("messages".into(), messages.into());
    Value::Object(out)
}

fn check_request(
    id: &str,
    case: &Value,
    openai: fn(&Value) -> Value,
    auto_cache: bool,
    differs: &[(&str, &str)],
) {
    let recorded = &case["request"]["body"];
    let req = common::chat_request(openai(recorded), ALIAS);
    let a = adapter(auto_cache);
    let model = recorded["model"].as_str().unwrap();
    let up = a.chat_request(&req, model).unwrap();
    assert_eq!(up.path, "/v1/messages", "{id}");
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(sent["model"], recorded["model"]);
    let (mut got, mut want) = (essentials(&sent), essentials(recorded));
    common::drop_differing(&mut got, &mut want, differs);
    common::assert_same_request(id, &got, &want);
}

#[test]
fn every_corpus_file_is_replayed_or_listed() {
    let table = cases();
    common::assert_unique_ids(table.iter().map(|c| c.id));
    let mut claimed_sse = BTreeSet::new();
    let files = common::corpus_files(&common::corpus_dir(PROVIDER));
    let (mut responses, mut requests, mut skipped) = (0, 0, Vec::new());
    for file in files.iter().filter(|f| f.ends_with(".json")) {
        let id = file.trim_end_matches(".json");
        let c = table.iter().find(|c| c.id == id).unwrap_or_else(|| {
            panic!("corpus case {id} is neither checked nor listed in the table")
        });
        let case = load(id);
        assert_eq!(case["provider"], "anthropic");
        if let Some(sse) = case["response"]["sse_file"].as_str() {
            claimed_sse.insert(sse.to_owned());
        }
        match &c.outcome {
            Outcome::Answer(want) => check_answer(id, &case, want),
            Outcome::Error(up, client, code, kind) => {
                check_error(id, &case, *up, *client, code, kind)
            }
        }
        responses += 1;
        let recorded = case["request"]["body"].is_object();
        match &c.request {
            RequestSide::NotRecorded => assert!(
                !recorded,
                "{id}: a request was recorded; check it or say why not"
            ),
            RequestSide::Skip(why) => {
                assert!(recorded && !why.is_empty());
                skipped.push(id);
            }
            RequestSide::Check(openai, auto_cache, differs) => {
                assert!(recorded, "{id}");
                check_request(id, &case, *openai, *auto_cache, differs);
                requests += 1;
            }
        }
    }
    for file in &files {
        assert!(
            file.ends_with(".json") || claimed_sse.contains(file),
            "corpus file {file} belongs to no case"
        );
    }
    assert_eq!(
        responses,
        table.len(),
        "every table entry has its corpus file"
    );
    assert!(requests >= 15, "request sides checked: {requests}");
    eprintln!("anthropic corpus: {responses} responses checked, {requests} requests checked, request side skipped for {skipped:?}");
}

// ---------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------

fn recorded_streams() -> Vec<(String, Vec<u8>)> {
    common::streams_of(cases().iter().map(|c| c.id), |id| stream_wire(&load(id)))
}

#[test]
fn byte_by_byte_feeding_matches_one_chunk() {
    let a = adapter(false);
    let req = stream_request();
    for (id, wire) in recorded_streams() {
        let whole = translate_stream(&a, &req, &[&wire]);
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(translate_stream(&a, &req, &bytes), whole, "{id}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_split_of_a_recorded_stream_gives_identical_output(
        pick in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let streams = recorded_streams();
        let (id, wire) = &streams[pick.index(streams.len())];
        let a = adapter(false);
        let req = stream_request();
        let whole = translate_stream(&a, &req, &[wire]);
        let pieces = common::split_at_cuts(wire, &cuts);
        prop_assert_eq!(translate_stream(&a, &req, &pieces), whole, "{}", id);
    }
}

fn part() -> impl Strategy<Value = PartGen> {
    prop_oneof![
        12 => (text(), any::<bool>()).prop_map(|(t, c)| PartGen::Text(t, c)),
        4 => (0u8..10).prop_map(PartGen::Image),
        1 => Just(PartGen::Audio),
    ]
}

fn params() -> impl Strategy<Value = common::Params> {
    common::params(
        prop_oneof![Just(1u64), Just(900), 1u64..20_000],
        Just(0),
        Just(0),
    )
}

/// Generated requests for Anthropic: cache marks on user text parts only, image URLs
/// Anthropic takes and refuses, tool call ids with characters it refuses.
const STYLE: RequestStyle = RequestStyle {
    model: ALIAS,
    cache_marks: false,
    image_url: |k| match k {
        0..=3 => "data:image/png;base64,iVBORw0KGgo=",
        4..=6 => "https://example.com/a.jpg",
        7 => "data:image/svg+xml;base64,PHN2Zz4=",
        8 => "ftp://nope",
        _ => "data:image/gif,raw",
    },
    call_id: |i, k, args| {
        if args % 3 == 0 {
            format!("call.{i}:{k}")
        } else {
            format!("call_{i}_{k}")
        }
    },
    tool_result: |_| json!("result"),
};

/// Anthropic's rules for a Messages body; the error says which one broke.
fn obeys_anthropic_rules(b: &Value) -> Result<(), String> {
    let max_tokens = b["max_tokens"].as_u64().ok_or("max_tokens missing")?;
    if let Some(t) = b.get("temperature") {
        let t = t.as_f64().ok_or("temperature not a number")?;
        if !(0.0..=1.0).contains(&t) {
            return Err(format!("temperature {t} outside 0..1"));
        }
        if b.get("top_p").is_some() {
            return Err("both temperature and top_p".into());
        }
    }
    if let Some(budget) = b.pointer("/thinking/budget_tokens").and_then(Value::as_u64) {
        if budget >= max_tokens || budget < 1024 {
            return Err(format!(
                "thinking budget {budget} vs max_tokens {max_tokens}"
            ));
        }
    }
    match &b["system"] {
        Value::Null => {}
        Value::String(s) if !s.trim().is_empty() => {}
        Value::Array(a)
            if !a.is_empty()
                && a.iter()
                    .all(|x| x["text"].as_str().is_some_and(|t| !t.trim().is_empty())) => {}
        other => return Err(format!("bad system {other}")),
    }
    let messages = b["messages"].as_array().ok_or("messages missing")?;
    if messages.is_empty() {
        return Err("no messages".into());
    }
    let tool_names: Vec<&str> = b["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let mut any_tool_block = false;
    let mut previous_calls: Vec<&str> = Vec::new();
    for (k, m) in messages.iter().enumerate() {
        let want = if k % 2 == 0 { "user" } else { "assistant" };
        if m["role"] != want {
            return Err(format!("message {k} should be {want}"));
        }
        let blocks = m["content"]
            .as_array()
            .ok_or(format!("message {k} content not blocks"))?;
        if blocks.is_empty() {
            return Err(format!("message {k} is empty"));
        }
        let mut seen_other = false;
        let mut answered: Vec<&str> = Vec::new();
        let mut calls: Vec<&str> = Vec::new();
        for block in blocks {
            match block["type"].as_str() {
                Some("text") => {
                    let t = block["text"].as_str().ok_or("text block without text")?;
                    if t.trim().is_empty() {
                        return Err(format!("message {k} has a blank text block"));
                    }
                    if k == messages.len() - 1
                        && want == "assistant"
                        && t.ends_with(char::is_whitespace)
                        && block == blocks.last().unwrap()
                    {
                        return Err("final assistant text ends in whitespace".into());
                    }
                    seen_other = true;
                }
                Some("tool_result") => {
                    any_tool_block = true;
                    if seen_other {
                        return Err(format!("message {k}: tool_result after other blocks"));
                    }
                    let id = block["tool_use_id"]
                        .as_str()
                        .ok_or("tool_result without id")?;
                    if !previous_calls.contains(&id) {
                        return Err(format!("message {k}: tool_result {id} answers nothing"));
                    }
                    answered.push(id);
                }
                Some("tool_use") => {
                    any_tool_block = true;
                    let id = block["id"].as_str().ok_or("tool_use without id")?;
                    if id.is_empty()
                        || !id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(format!("bad tool_use id {id}"));
                    }
                    if !block["input"].is_object() {
                        return Err("tool_use input not an object".into());
                    }
                    calls.push(id);
                    seen_other = true;
                }
                Some("image") | Some("document") => seen_other = true,
                other => return Err(format!("unexpected block {other:?}")),
            }
        }
        if want == "user" {
            if let Some(missing) = previous_calls.iter().find(|c| !answered.contains(c)) {
                return Err(format!(
                    "tool_use {missing} has no tool_result in message {k}"
                ));
            }
        }
        previous_calls = calls;
    }
    if !previous_calls.is_empty() {
        return Err("the conversation ends with unanswered tool_use".into());
    }
    if any_tool_block && tool_names.is_empty() {
        return Err("tool blocks without tools".into());
    }
    if let Some(name) = b.pointer("/tool_choice/name").and_then(Value::as_str) {
        if !tool_names.contains(&name) {
            return Err(format!("tool_choice names unknown tool {name}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn random_requests_never_panic_and_obey_anthropic_rules(
        segs in prop::collection::vec(seg(part()), 0..10),
        p in params(),
    ) {
        let raw = common::build_request(&segs, &p, &STYLE);
        let req: ChatRequest = serde_json::from_value(raw.clone()).unwrap();
        let cfg: ProviderConfig = serde_json::from_value(json!({"name": "a", "kind": "anthropic", "api_key": "k",
            "drop_unsupported_params": p.drop, "auto_cache": p.stream})).unwrap();
        let a = AnthropicAdapter::new(&cfg, &BaseUrl::parse("https://api.anthropic.com").unwrap()).unwrap();
        match a.chat_request(&req, "claude-x") {
            Ok(up) => {
                let body: Value = serde_json::from_slice(&up.body).unwrap();
                if let Err(rule) = obeys_anthropic_rules(&body) {
                    return Err(TestCaseError::fail(format!("{rule}\nrequest: {raw}\nbody: {body}")));
                }
                prop_assert_eq!(body["stream"].as_bool().unwrap_or(false), p.stream);
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 400, "{}", e);
                prop_assert!(e.param().is_some(), "an error names its field: {}", e);
            }
        }
    }
}
