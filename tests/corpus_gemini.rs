//! Replays every recorded Gemini exchange in `../shared/corpus/gemini` through the Gemini
//! adapter and checks the OpenAI output field by field (content, reasoning, tool call
//! ids/names/arguments, finish_reason, usage, error status/code/retry hints), and — where a
//! request was recorded — that an equivalent OpenAI request translates to a body with the
//! recorded essentials. Every file must appear in [`cases`]; deliberate gaps say why.

mod common;

use llmux::config::ProviderConfig;
use llmux::providers::gemini::{decode_tool_call_id, encode_tool_call_id, GeminiAdapter};
use llmux::providers::{Adapter, BaseUrl};
use llmux::types::{FailureKind, GatewayError};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

/// What the OpenAI side must show for one recorded response.
enum Response {
    /// A translated answer (non-stream body or stream, by the file's shape).
    Answer(Expect),
    /// An upstream error mapped to OpenAI vocabulary.
    Error {
        status: u16,
        code: &'static str,
        retry_after_ms: Option<u64>,
        retryable: bool,
    },
    /// HTTP 200 without candidates: a permanent 400 `content_filter`.
    Blocked { reason: &'static str },
}

enum Text {
    Absent,
    Exact(&'static str),
    Prefix(&'static str),
}

/// A tool call: name, arguments (JSON text, compared parsed), and whether the id carries a
/// thought signature.
type Call = (&'static str, &'static str, bool);

struct Expect {
    content: Text,
    reasoning: bool,
    calls: &'static [Call],
    finish: &'static str,
    /// prompt, completion, total, cached, reasoning.
    usage: (u64, u64, u64, u64, Option<u64>),
}

/// Adjusts the recorded Gemini body where llmux deliberately differs (the reason is in the row).
type Adjust = fn(&mut Value);

enum Request {
    /// Builds the OpenAI request (reading opaque blobs such as signatures from the recorded
    /// Gemini request), optionally adjusts the recording, then compares normalised bodies.
    Check {
        openai: fn(&Value) -> Value,
        adjust: Option<(Adjust, &'static str)>,
    },
    Skip(&'static str),
    NotRecorded,
}

struct Case {
    id: &'static str,
    /// Extra provider config (e.g. `safety_settings`).
    provider: Option<fn() -> Value>,
    response: Response,
    request: Request,
}

const SERVER_TOOLS: &str =
    "uses Gemini server tools (`googleSearch`, `includeServerSideToolInvocations`), which \
     the OpenAI Chat Completions surface cannot request; the response side is still replayed";

fn answer(
    content: Text,
    reasoning: bool,
    calls: &'static [Call],
    finish: &'static str,
    usage: (u64, u64, u64, u64, Option<u64>),
) -> Response {
    Response::Answer(Expect {
        content,
        reasoning,
        calls,
        finish,
        usage,
    })
}

fn cases() -> Vec<Case> {
    use Text::*;
    let case = |id, response, request| Case {
        id,
        provider: None,
        response,
        request,
    };
    let check = |openai: fn(&Value) -> Value| Request::Check {
        openai,
        adjust: None,
    };
    vec![
        case(
            "pai-test_auto_mode_with_function_and_builtin_tools__1",
            answer(Absent, false, &[("final_result", r#"{"city":"Mexico City","country":"Mexico"}"#, true)],
                "tool_calls", (510, 18, 528, 0, Some(18))),
            Request::Skip(SERVER_TOOLS),
        ),
        case(
            "pai-test_cancel_recorded_provider_stream_google",
            answer(Exact("Paris"), false, &[], "stop", (6, 36, 42, 0, Some(35))),
            check(|_| json!({"model": "m", "stream": true, "temperature": 0.0,
                "messages": [{"role": "user", "content": "Reply with exactly: Paris"}]})),
        ),
        case(
            "pai-test_google_deferred_capability_announcement_live__1",
            answer(Absent, false, &[("lookup_refund_policy", r#"{"order_id":"A-4417"}"#, true)],
                "tool_calls", (341, 65, 406, 0, Some(40))),
            Request::Check {
                openai: |rec| {
                    let id = encode_tool_call_id("call_g98os1Jf", Some(sig(rec, "/contents/1/parts/0")));
                    json!({"model": "m", "tool_choice": "auto", "tools": tools_of(rec), "messages": [
                        {"role": "system", "content": system_text(rec)},
                        {"role": "user", "content": "First load the refunds capability. Then use its newly available tool for order A-4417. Return only the result."},
                        {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                            "function": {"name": "load_capability", "arguments": "{\"id\": \"refunds\"}"}}]},
                        {"role": "tool", "tool_call_id": id, "content": "{}"},
                        {"role": "user", "content": "<system>The following tool(s) are now available: `lookup_refund_policy`</system>"}
                    ]})
                },
                adjust: Some((
                    |rec| rec["toolConfig"]["functionCallingConfig"]["mode"] = json!("AUTO"),
                    "Gemini's VALIDATED mode has no OpenAI `tool_choice`; `auto` maps to AUTO",
                )),
            },
        ),
        case(
            "pai-test_google_instructions_only_with_tool_calls__0",
            answer(Absent, false, &[("generate_topic", "{}", true), ("generate_topic", "{}", false), ("generate_topic", "{}", false)],
                "tool_calls", (83, 220, 303, 0, Some(190))),
            check(|rec| json!({"model": "m", "tools": tools_of(rec),
                "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
                    {"type": "function", "function": {"name": "generate_topic"}},
                    {"type": "function", "function": {"name": "final_result"}}]}},
                "messages": [{"role": "system", "content": "Tell three jokes. Generate topics with the generate_topic tool."},
                             {"role": "user", "content": ""}]})),
        ),
        case(
            "pai-test_google_model",
            answer(Exact("Hello! How can I help you today?"), false, &[], "stop", (9, 43, 52, 0, Some(34))),
            check(|_| json!({"model": "m", "messages": [
                {"role": "system", "content": "You are a chatbot."}, {"role": "user", "content": "Hello!"}]})),
        ),
        case(
            "pai-test_google_model_armor_prompt_template_text_gets_blocked__1",
            Response::Blocked { reason: "MODEL_ARMOR" },
            Request::Skip("the request carries Vertex AI's `modelArmorConfig`; llmux speaks the Gemini Developer API, where safety is `safety_settings`"),
        ),
        case(
            "pai-test_google_model_cached_content__1",
            answer(Exact("Paris."), false, &[], "stop", (3520, 44, 3564, 3512, Some(42))),
            Request::Skip("references an explicit cache (`cachedContent`); OpenAI has no such field and llmux relies on Gemini's implicit caching (cache reads still reported, as checked here)"),
        ),
        case(
            "pai-test_google_model_cached_content__2",
            answer(Exact("Paris."), false, &[], "stop", (3520, 53, 3573, 3512, Some(51))),
            Request::Skip("references an explicit cache (`cachedContent`); see cached_content__1"),
        ),
        case(
            "pai-test_google_model_image_url_input__1",
            answer(Exact("That is a potato."), false, &[], "stop", (1817, 5, 1822, 0, None)),
            check(|rec| {
                let data = rec.pointer("/contents/0/parts/1/inlineData/data").cloned().unwrap_or_default();
                json!({"model": "m", "messages": [
                    {"role": "system", "content": "You are a helpful chatbot."},
                    {"role": "user", "content": [{"type": "text", "text": "What is this vegetable?"},
                        {"type": "image_url", "image_url": {"url": format!("data:image/jpeg;base64,{}", data.as_str().unwrap_or_default())}}]}]})
            }),
        ),
        case(
            "pai-test_google_model_iter_stream__0",
            answer(Absent, false, &[("get_capital", r#"{"country":"France"}"#, false)], "tool_calls", (52, 5, 57, 0, None)),
            Request::Check {
                openai: |_| json!({"model": "m", "stream": true, "messages": [
                    {"role": "system", "content": "You are a helpful chatbot."},
                    {"role": "user", "content": "What is the temperature of the capital of France?"}],
                    "tools": [
                        {"type": "function", "function": {"name": "get_capital", "description": "Get the capital of a country.",
                            "parameters": {"type": "object", "properties": {"country": {"type": "string", "description": "The country name."}}, "required": ["country"]}}},
                        {"type": "function", "function": {"name": "get_temperature", "description": "Get the temperature in a city.",
                            "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name."}}, "required": ["city"]}}}]}),
                adjust: Some((
                    |rec| {
                        for d in rec["tools"][0]["functionDeclarations"].as_array_mut().into_iter().flatten() {
                            if let Some(p) = d.as_object_mut().and_then(|d| d.remove("parameters")) {
                                d["parametersJsonSchema"] = lowercase_types(p);
                            }
                        }
                    },
                    "the recording declares tools in the OpenAPI dialect (`parameters`, upper-case types); llmux sends JSON Schema (`parametersJsonSchema`) to Gemini 2.0+",
                )),
            },
        ),
        case(
            "pai-test_google_model_max_tokens",
            answer(Exact("The capital of France is"), false, &[], "length", (15, 5, 20, 0, None)),
            check(|_| json!({"model": "m", "max_tokens": 5, "reasoning_effort": "none", "messages": [
                {"role": "system", "content": "You are a helpful chatbot."},
                {"role": "user", "content": "What is the capital of France?"}]})),
        ),
        Case {
            id: "pai-test_google_model_safety_settings",
            provider: Some(|| json!({"safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_LOW_AND_ABOVE"}]})),
            response: answer(Absent, false, &[], "content_filter", (14, 0, 14, 0, None)),
            request: check(|_| json!({"model": "m", "messages": [
                {"role": "system", "content": "You hate the world!"},
                {"role": "user", "content": "Tell me a joke about a Brazilians."}]})),
        },
        case(
            "pai-test_google_model_stream",
            answer(Exact("The capital of France is Paris.\n"), false, &[], "stop", (13, 8, 21, 0, None)),
            check(|_| json!({"model": "m", "stream": true, "temperature": 0.0, "messages": [
                {"role": "system", "content": "You are a helpful chatbot."},
                {"role": "user", "content": "What is the capital of France?"}]})),
        ),
        case(
            "pai-test_google_model_thinking_part__0",
            answer(Prefix("Crossing the street safely is a fundamental skill"), true, &[], "stop", (29, 1737, 1766, 0, Some(1001))),
            Request::Check {
                openai: |rec| json!({"model": "m", "reasoning_effort": "high", "tools": tools_of(rec), "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "How do I cross the street?"}]}),
                adjust: Some((thinking_level_high, THOUGHTS_NEED_EFFORT)),
            },
        ),
        case(
            "pai-test_google_model_thinking_part__1",
            answer(Prefix("Crossing a river is deceptively similar"), true, &[], "stop", (1280, 2073, 3353, 0, Some(1115))),
            Request::Check {
                openai: |rec| {
                    let text = |i: usize| rec.pointer(&format!("/contents/1/parts/{i}/text")).cloned().unwrap_or_default();
                    json!({"model": "m", "reasoning_effort": "high", "tools": tools_of(rec), "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": "How do I cross the street?"},
                        {"role": "assistant", "content": text(1), "reasoning_content": text(0)},
                        {"role": "user", "content": "Considering the way to cross the street, analogously, how do I cross the river?"}]})
                },
                adjust: Some((
                    |rec| {
                        thinking_level_high(rec);
                        let parts = &mut rec["contents"][1]["parts"];
                        if let Some(p) = parts.as_array_mut() {
                            p.remove(0);
                        }
                        if let Some(p) = parts[0].as_object_mut() {
                            p.remove("thoughtSignature");
                        }
                    },
                    "prior reasoning is not replayed (pitfall 29) and a text part's signature cannot ride in an OpenAI message (Gemini requires signatures only on function calls); plus: thoughts need reasoning_effort",
                )),
            },
        ),
        case(
            "pai-test_google_native_output",
            answer(Exact("{\n  \"city\": \"Mexico City\",\n  \"country\": \"Mexico\"\n}"), false, &[], "stop", (8, 20, 28, 0, None)),
            check(|rec| json!({"model": "m", "messages": [{"role": "user", "content": "What is the largest city in Mexico?"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "CityLocation",
                    "schema": rec["generationConfig"]["responseJsonSchema"]}}})),
        ),
        case(
            "pai-test_google_streaming_tool_call_thought_signature__0",
            answer(Absent, false, &[("get_country", "{}", true)], "tool_calls", (29, 212, 241, 0, Some(202))),
            check(|rec| json!({"model": "m", "stream": true, "tools": tools_of(rec),
                "messages": [{"role": "user", "content": "What is the capital of the user country? Call the tool"}]})),
        ),
        case(
            "pai-test_google_streaming_tool_call_thought_signature__1",
            answer(Exact("The capital of Mexico is Mexico City."), false, &[], "stop", (257, 8, 265, 0, None)),
            check(|rec| {
                let id = encode_tool_call_id("call_pyd_ai_29bf73b69e02448588e15893d47a3e7e", Some(sig(rec, "/contents/1/parts/0")));
                json!({"model": "m", "stream": true, "tools": tools_of(rec), "messages": [
                    {"role": "user", "content": "What is the capital of the user country? Call the tool"},
                    {"role": "assistant", "content": "", "tool_calls": [{"id": id, "type": "function",
                        "function": {"name": "get_country", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": id, "content": "{\"return_value\":\"Mexico\"}"}]})
            }),
        ),
        case(
            "pai-test_model_name_suggestion_google",
            Response::Error { status: 404, code: "model_not_found", retry_after_ms: None, retryable: false },
            check(|_| json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]})),
        ),
        case(
            "pai-test_multimodal_tool_return_matrix_direct-binary-audio-google_vertex__0",
            answer(Absent, false, &[("list_files", "{}", true)], "stop", (22, 145, 167, 0, Some(142))),
            check(|rec| json!({"model": "m", "tools": tools_of(rec), "messages": [
                {"role": "user", "content": "Use the get_file tool now to retrieve a audio file, then describe what you received."}]})),
        ),
        case(
            "pai-test_multimodal_tool_return_matrix_direct-uploaded_file-video-google_vertex__0",
            answer(Absent, false, &[("list_files", "{}", true)], "stop", (22, 137, 159, 0, Some(134))),
            check(|rec| json!({"model": "m", "tools": tools_of(rec), "messages": [
                {"role": "user", "content": "Use the get_file tool now to retrieve a video file, then describe what you received."}]})),
        ),
        case(
            "pai-test_multimodal_tool_return_matrix_direct-url-image-google_vertex__2",
            Response::Error { status: 400, code: "invalid_request", retry_after_ms: None, retryable: false },
            Request::Skip("the last tool result carries a file (`functionResponse.parts`); OpenAI tool messages hold text only"),
        ),
        case(
            "pai-test_multimodal_tool_return_matrix_direct-url_force_download-image-google_2_5__2",
            answer(Prefix("I received an image of a single orange and yellow rose"), false, &[], "stop", (345, 104, 449, 191, Some(40))),
            check(|rec| {
                let id = encode_tool_call_id("call_pyd_ai_9262303fe208466e9052feed128c22fb", Some(sig(rec, "/contents/1/parts/0")));
                let data = rec.pointer("/contents/3/parts/1/inlineData/data").cloned().unwrap_or_default();
                json!({"model": "m", "tools": tools_of(rec), "messages": [
                    {"role": "user", "content": "Use the get_file tool now to retrieve a image file, then describe what you received."},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                        "function": {"name": "get_file", "arguments": ""}}]},
                    {"role": "tool", "tool_call_id": id, "content": "{\"files\": [\"See file 6a18c6.\"]}"},
                    {"role": "user", "content": [{"type": "text", "text": "This is file 6a18c6:"},
                        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", data.as_str().unwrap_or_default())}}]}]})
            }),
        ),
        case(
            "pai-test_native_output_with_builtin_tools",
            answer(Exact("{\n  \"city\": \"Mexico City\",\n  \"country\": \"Mexico\"\n} "), false, &[], "stop", (417, 71, 488, 0, Some(71))),
            Request::Skip(SERVER_TOOLS),
        ),
        case(
            "pai-test_native_output_with_function_and_builtin_tools__1",
            answer(Exact("{\n  \"city\": \"Mexico City\",\n  \"country\": \"Mexico\"\n} "), false, &[], "stop", (526, 27, 553, 0, Some(27))),
            Request::Skip(SERVER_TOOLS),
        ),
        case(
            "pai-test_stop_settings_google",
            answer(Exact("The most iconic city in France is "), false, &[], "stop", (25, 8, 33, 0, None)),
            check(|_| json!({"model": "m", "stop": ["Paris"], "messages": [{"role": "user",
                "content": "What is the capital of France? Give me an answer that contains the word \"Paris\", but is not the first word."}]})),
        ),
        case(
            "pai-test_tool_choice_matrix_none-google",
            answer(Prefix("Okay, let me check the current weather in Paris for you."), false, &[], "stop", (49, 1124, 1173, 0, Some(996))),
            check(|rec| json!({"model": "m", "tool_choice": "none", "tools": tools_of(rec),
                "messages": [{"role": "user", "content": "What's the weather in Paris?"}]})),
        ),
        case(
            "pai-test_tool_output_with_builtin_tools",
            answer(Absent, false, &[("final_result", r#"{"city":"Mexico City","country":"Mexico"}"#, true)],
                "tool_calls", (279, 31, 310, 0, Some(31))),
            Request::Skip(SERVER_TOOLS),
        ),
        case(
            "vercel-google-429-retry-info",
            Response::Error { status: 429, code: "rate_limit_exceeded", retry_after_ms: Some(34_400), retryable: true },
            Request::NotRecorded,
        ),
        case(
            "vercel-google-reasoning",
            answer(Exact("There are **3** \"r\"s in strawberry.\n\nHere is the breakdown: st**r**awbe**rr**y."), false, &[], "stop",
                (9, 311, 320, 0, Some(282))),
            Request::NotRecorded,
        ),
        case(
            "vercel-google-reasoning-gemini3-chunks",
            answer(Exact("There are **3** \"r\"s in strawberry.\n\nSt**r**awbe**rr**y"), false, &[], "stop", (9, 325, 334, 0, Some(302))),
            Request::NotRecorded,
        ),
        case(
            "vercel-google-stream-no-args-tool-call-chunks",
            answer(Absent, true, &[("read_theme", "{}", true), ("read_screen", r#"{"id":"A"}"#, false),
                ("read_screen", r#"{"id":"B"}"#, false), ("read_screen", r#"{"id":"C"}"#, false)],
                "tool_calls", (249, 241, 490, 0, Some(183))),
            Request::NotRecorded,
        ),
        case(
            "vercel-google-stream-tool-call-arguments-chunks",
            answer(Absent, false, &[("getWeather", r#"{"location":"Boston"}"#, true), ("getWeather", r#"{"location":"San Francisco"}"#, false)],
                "tool_calls", (26, 155, 181, 0, Some(132))),
            Request::NotRecorded,
        ),
        case(
            "vercel-google-stream-tool-call-array-arguments-missing-terminal-function-call-chunks",
            answer(Absent, false, &[("writeItems", r#"{"operations":[
                {"action":"add","description":"Fresh red apple","itemid":"apple_001","price":0.5},
                {"action":"add","description":"Ripe yellow banana","itemid":"banana_001","price":0.3}]}"#, true)],
                "tool_calls", (54, 195, 249, 0, Some(121))),
            Request::NotRecorded,
        ),
        case(
            "vercel-google-tool-call-gemini3",
            answer(Absent, false, &[("weather", r#"{"location":"San Francisco"}"#, true)], "tool_calls", (29, 1816, 1845, 0, Some(1801))),
            Request::NotRecorded,
        ),
        case(
            "vercel-google-vertex-stream-tool-call-arguments-nested.1-chunks",
            answer(Absent, false, &[("cookRecipe", LASAGNA, true)], "tool_calls", (31, 1710, 1741, 0, Some(1026))),
            Request::NotRecorded,
        ),
    ]
}

const THOUGHTS_NEED_EFFORT: &str = "OpenAI asks for thoughts only through `reasoning_effort`, which also sets Gemini 3's `thinkingLevel`";

fn thinking_level_high(rec: &mut Value) {
    rec["generationConfig"]["thinkingConfig"] =
        json!({"thinkingLevel": "HIGH", "includeThoughts": true});
}

const LASAGNA: &str = r#"{"recipe": {
    "ingredients": [
        {"amount": "16 oz", "name": "Lasagna noodles"}, {"amount": "1 lb", "name": "Ground beef"},
        {"amount": "15 oz", "name": "Ricotta cheese"}, {"amount": "3 cups", "name": "Mozzarella cheese"},
        {"amount": "1/2 cup", "name": "Parmesan cheese"}, {"amount": "24 oz", "name": "Tomato sauce"},
        {"amount": "1", "name": "Egg"}, {"amount": "2 cloves", "name": "Garlic"},
        {"amount": "1 tsp", "name": "Salt"}, {"amount": "1/2 tsp", "name": "Pepper"}],
    "name": "Lasagna",
    "steps": [
        "Preheat oven to 375°F (190°C).",
        "Cook lasagna noodles according to package directions, drain and set aside.",
        "Brown ground beef with minced garlic in a skillet. Drain fat and stir in tomato sauce. Simmer for 10 minutes.",
        "In a bowl, mix ricotta cheese, egg, salt, pepper, and Parmesan cheese.",
        "In a 9x13 baking dish, spread a thin layer of meat sauce.",
        "Layer noodles, ricotta mixture, mozzarella, and meat sauce. Repeat.",
        "Top with remaining mozzarella cheese.",
        "Cover with foil and bake for 25 minutes.",
        "Remove foil and bake for another 25 minutes until golden.",
        "Let stand for 15 minutes before serving."]}}"#;

// ---------------------------------------------------------------------------------------
// Corpus access
// ---------------------------------------------------------------------------------------

const PROVIDER: &str = "gemini";
/// The model alias of the client requests.
const ALIAS: &str = "m";

fn load(id: &str) -> Value {
    common::load(PROVIDER, id)
}

/// The recorded stream bytes: the byte-exact `.sse` sibling, `body_text`, or (vercel) the
/// stored payloads re-framed as Gemini frames them.
fn stream_wire(case: &Value) -> Option<Vec<u8>> {
    let resp = &case["response"];
    if let Some(file) = resp["sse_file"].as_str() {
        return Some(std::fs::read(common::corpus_dir(PROVIDER).join(file)).unwrap());
    }
    if let Some(chunks) = resp["chunks"].as_array() {
        let mut wire = Vec::new();
        for c in chunks {
            wire.extend_from_slice(b"data: ");
            wire.extend_from_slice(c.to_string().as_bytes());
            wire.extend_from_slice(b"\r\n\r\n");
        }
        return Some(wire);
    }
    let text = resp["body_text"].as_str()?;
    text.starts_with("data:").then(|| text.as_bytes().to_vec())
}

/// The recorded Gemini payloads of a response (one body, or each stream event).
fn recorded_payloads(case: &Value) -> Vec<Value> {
    match stream_wire(case) {
        Some(wire) => String::from_utf8(wire)
            .unwrap()
            .split("\r\n\r\n")
            .filter_map(|e| e.trim().strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect(),
        None => vec![case["response"]["body"].clone()],
    }
}

fn provider_cfg(extra: Option<Value>) -> ProviderConfig {
    let mut cfg = json!({"name": "gemini", "kind": "gemini", "api_key": "AIza-corpus-test-key",
        "base_url": "https://generativelanguage.googleapis.com/v1beta"});
    if let (Some(c), Some(Value::Object(e))) = (cfg.as_object_mut(), extra) {
        c.extend(e);
    }
    serde_json::from_value(cfg).unwrap()
}

fn adapter(extra: Option<Value>) -> GeminiAdapter {
    let base = BaseUrl::parse("https://generativelanguage.googleapis.com/v1beta").unwrap();
    GeminiAdapter::new(&provider_cfg(extra), &base).unwrap()
}

/// The model of a recorded request (`.../models/{m}:verb`), or a stand-in.
fn recorded_model(case: &Value) -> String {
    case["request"]["path"]
        .as_str()
        .and_then(|p| p.split("/models/").nth(1))
        .and_then(|m| m.split(':').next())
        .unwrap_or("gemini-2.5-flash")
        .to_owned()
}

// Helpers the OpenAI-request builders use to read opaque blobs from the recording.

fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> &'a Value {
    v.get(camel)
        .or_else(|| v.get(snake))
        .unwrap_or(&Value::Null)
}

fn sig<'a>(rec: &'a Value, part: &str) -> &'a str {
    let p = rec.pointer(part).unwrap_or(&Value::Null);
    field(p, "thoughtSignature", "thought_signature")
        .as_str()
        .unwrap_or_default()
}

fn system_text(rec: &Value) -> Value {
    field(rec, "systemInstruction", "system_instruction")["parts"][0]["text"].clone()
}

/// The recorded function declarations as OpenAI `tools`.
fn tools_of(rec: &Value) -> Value {
    let decls = rec["tools"][0]["functionDeclarations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    decls
        .iter()
        .map(|d| {
            json!({"type": "function", "function": {"name": d["name"], "description": d["description"],
                "parameters": field(d, "parametersJsonSchema", "parameters_json_schema")}})
        })
        .collect()
}

fn lowercase_types(mut schema: Value) -> Value {
    match &mut schema {
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                if k == "type" {
                    if let Some(t) = v.as_str() {
                        *v = Value::String(t.to_ascii_lowercase());
                    }
                } else {
                    *v = lowercase_types(v.take());
                }
            }
        }
        Value::Array(a) => {
            for v in a {
                *v = lowercase_types(v.take());
            }
        }
        _ => {}
    }
    schema
}

// ---------------------------------------------------------------------------------------
// Request-side normalisation
// ---------------------------------------------------------------------------------------

/// Structural keys the REST API also accepts in snake_case.
const SNAKE: [(&str, &str); 12] = [
    ("function_call", "functionCall"),
    ("function_response", "functionResponse"),
    ("thought_signature", "thoughtSignature"),
    ("inline_data", "inlineData"),
    ("file_data", "fileData"),
    ("mime_type", "mimeType"),
    ("file_uri", "fileUri"),
    ("parameters_json_schema", "parametersJsonSchema"),
    ("thinking_budget", "thinkingBudget"),
    ("include_thoughts", "includeThoughts"),
    ("system_instruction", "systemInstruction"),
    ("generation_config", "generationConfig"),
];

/// Values whose keys are user data, never renamed.
const OPAQUE: [&str; 6] = [
    "args",
    "response",
    "parameters",
    "parametersJsonSchema",
    "responseJsonSchema",
    "responseSchema",
];

fn camel(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let k = SNAKE
                        .iter()
                        .find(|(s, _)| *s == k)
                        .map_or(k, |(_, c)| (*c).to_owned());
                    let v = if OPAQUE.contains(&k.as_str()) {
                        v
                    } else {
                        camel(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(camel).collect()),
        other => other,
    }
}

/// A Gemini request body in a comparable form: camelCase structure, call ids dropped (llmux
/// matches by name and order), consecutive same-role turns merged, the pydantic-ai default
/// `responseModalities: [TEXT]` (Gemini's default too) and empty sections removed.
fn normalise(body: &Value) -> Value {
    let mut b = camel(body.clone());
    let Some(o) = b.as_object_mut() else {
        return b;
    };
    if let Some(sys) = o
        .get_mut("systemInstruction")
        .and_then(Value::as_object_mut)
    {
        sys.remove("role");
    }
    let mut merged: Vec<Value> = Vec::new();
    for turn in o
        .get("contents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let mut turn = turn;
        for p in turn["parts"].as_array_mut().into_iter().flatten() {
            for key in ["functionCall", "functionResponse"] {
                if let Some(call) = p.get_mut(key).and_then(Value::as_object_mut) {
                    call.remove("id");
                }
            }
        }
        match merged.last_mut() {
            Some(last) if last["role"] == turn["role"] => {
                let parts = turn["parts"].as_array().cloned().unwrap_or_default();
                if let Some(lp) = last["parts"].as_array_mut() {
                    lp.extend(parts);
                }
            }
            _ => merged.push(turn),
        }
    }
    o.insert("contents".into(), Value::Array(merged));
    if let Some(g) = o.get_mut("generationConfig").and_then(Value::as_object_mut) {
        g.remove("responseModalities");
    }
    o.retain(|_, v| !matches!(v, Value::Object(m) if m.is_empty()));
    b
}

fn check_request(id: &str, case: &Value, c: &Case) -> Result<(), String> {
    let Request::Check { openai, adjust } = &c.request else {
        return Ok(());
    };
    let recorded = &case["request"]["body"];
    let req = common::chat_request(openai(recorded), ALIAS);
    let model = recorded_model(case);
    let a = adapter(c.provider.map(|f| f()));
    let up = a
        .chat_request(&req, &model)
        .map_err(|e| format!("{id}: translation failed: {e}"))?;
    let rec_path = case["request"]["path"].as_str().unwrap_or_default();
    let tail = &rec_path[rec_path.find("/models/").unwrap_or(0)..];
    if !up.path.ends_with(tail) {
        return Err(format!(
            "{id}: path {} does not end with the recorded {tail}",
            up.path
        ));
    }
    let ours = normalise(&serde_json::from_slice(&up.body).unwrap());
    let mut expected = normalise(recorded);
    if let Some((f, _why)) = adjust {
        f(&mut expected);
    }
    if ours != expected {
        return Err(format!(
            "{id}: request body differs\n ours:     {ours}\n recorded: {expected}"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Response-side checks
// ---------------------------------------------------------------------------------------

/// What one OpenAI answer (body or reassembled stream) says.
#[derive(Debug, Default)]
struct Seen {
    content: Option<String>,
    reasoning: Option<String>,
    /// id, name, arguments.
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Option<Value>,
}

fn seen_from_body(body: &Value) -> Seen {
    let m = &body["choices"][0]["message"];
    Seen {
        content: m["content"].as_str().map(str::to_owned),
        reasoning: m["reasoning_content"].as_str().map(str::to_owned),
        calls: m["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (
                    s(&c["id"]),
                    s(&c["function"]["name"]),
                    s(&c["function"]["arguments"]),
                )
            })
            .collect(),
        finish: body["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_owned),
        usage: Some(body["usage"].clone()),
    }
}

/// Reassembles a translated stream and checks the chunk rules on the way.
fn seen_from_stream(id: &str, sse: &str) -> Result<Seen, String> {
    let events: Vec<&str> = sse.split("\n\n").filter(|e| !e.is_empty()).collect();
    if events.last() != Some(&"data: [DONE]") || sse.matches("data: [DONE]").count() != 1 {
        return Err(format!("{id}: the stream must end with exactly one [DONE]"));
    }
    let mut seen = Seen::default();
    let mut stream_id = None;
    for (i, e) in events[..events.len() - 1].iter().enumerate() {
        let v: Value = serde_json::from_str(
            e.strip_prefix("data: ")
                .ok_or_else(|| format!("{id}: not a data event: {e}"))?,
        )
        .map_err(|err| format!("{id}: {err}: {e}"))?;
        if v.get("error").is_some() {
            return Err(format!("{id}: unexpected error event {v}"));
        }
        if *stream_id.get_or_insert_with(|| v["id"].clone()) != v["id"] {
            return Err(format!("{id}: chunk ids differ"));
        }
        if i == 0 && v["choices"][0]["delta"]["role"] != "assistant" {
            return Err(format!("{id}: the first chunk must carry the role"));
        }
        if seen.usage.is_some() {
            return Err(format!("{id}: a chunk after the usage chunk"));
        }
        if v["choices"] == json!([]) {
            seen.usage = Some(v["usage"].clone());
            continue;
        }
        if seen.finish.is_some() {
            return Err(format!("{id}: a chunk after the finish chunk: {v}"));
        }
        let delta = &v["choices"][0]["delta"];
        if let Some(t) = delta["content"].as_str() {
            seen.content.get_or_insert_with(String::new).push_str(t);
        }
        if let Some(t) = delta["reasoning_content"].as_str() {
            seen.reasoning.get_or_insert_with(String::new).push_str(t);
        }
        for tc in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = tc["index"].as_u64().unwrap_or(u64::MAX) as usize;
            let args = tc["function"]["arguments"].as_str().unwrap_or_default();
            if index == seen.calls.len() {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                seen.calls
                    .push((s(&tc["id"]), s(&tc["function"]["name"]), args.to_owned()));
            } else if let Some(call) = seen.calls.get_mut(index) {
                call.2.push_str(args);
            } else {
                return Err(format!("{id}: tool call index {index} out of order"));
            }
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            seen.finish = Some(f.to_owned());
        }
    }
    if seen.content.as_deref() == Some("") {
        seen.content = None;
    }
    Ok(seen)
}

fn run_stream(a: &GeminiAdapter, pieces: &[&[u8]]) -> Result<String, String> {
    let req = common::chat_request(common::streamed_question(true), ALIAS);
    let mut t = a.stream_translator(&req, "gemini-test");
    let out = common::try_feed_all(&mut *t, pieces).map_err(|f| f.message)?;
    Ok(String::from_utf8(out).unwrap())
}

/// `created` comes from the clock; everything else must be byte-identical.
fn without_created(sse: &str) -> String {
    let mut out = String::with_capacity(sse.len());
    let mut rest = sse;
    while let Some(i) = rest.find("\"created\":") {
        let (head, tail) = rest.split_at(i + "\"created\":".len());
        out.push_str(head);
        out.push('0');
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

fn check_answer(id: &str, case: &Value, e: &Expect, seen: &Seen) -> Result<(), String> {
    match (&e.content, seen.content.as_deref()) {
        (Text::Absent, None) => {}
        (Text::Exact(want), Some(got)) if got == *want => {}
        (Text::Prefix(want), Some(got)) if got.starts_with(want) => {}
        (_, got) => return Err(format!("{id}: content {got:?}")),
    }
    if e.reasoning != seen.reasoning.as_deref().is_some_and(|r| !r.is_empty()) {
        return Err(format!("{id}: reasoning {:?}", seen.reasoning));
    }
    if seen.finish.as_deref() != Some(e.finish) {
        return Err(format!("{id}: finish_reason {:?}", seen.finish));
    }
    // Recorded signatures of the calls, in order (a call's head part carries it).
    let recorded_sigs: Vec<Option<String>> = recorded_payloads(case)
        .iter()
        .flat_map(|p| {
            p["candidates"][0]["content"]["parts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|p| p["functionCall"]["name"].is_string())
        .map(|p| p["thoughtSignature"].as_str().map(str::to_owned))
        .collect();
    if seen.calls.len() != e.calls.len() {
        return Err(format!("{id}: tool calls {:?}", seen.calls));
    }
    let mut ids = BTreeSet::new();
    for (i, ((call_id, name, args), (want_name, want_args, signed))) in
        seen.calls.iter().zip(e.calls).enumerate()
    {
        if name != want_name {
            return Err(format!("{id}: call {i} name {name}"));
        }
        let got: Value =
            serde_json::from_str(args).map_err(|err| format!("{id}: call {i}: {err}"))?;
        let want: Value = serde_json::from_str(want_args).unwrap();
        if got != want {
            return Err(format!("{id}: call {i} arguments {got}"));
        }
        let (base, sig) = decode_tool_call_id(call_id);
        if !base.starts_with("call_") || !ids.insert(base.to_owned()) {
            return Err(format!("{id}: call {i} id {call_id} not a fresh call_ id"));
        }
        if sig.is_some() != *signed || sig != recorded_sigs.get(i).cloned().flatten().as_deref() {
            return Err(format!("{id}: call {i} signature {sig:?}"));
        }
    }
    let u = seen.usage.as_ref().ok_or(format!("{id}: no usage"))?;
    let (prompt, completion, total, cached, reasoning) = e.usage;
    let got = (
        u["prompt_tokens"].as_u64(),
        u["completion_tokens"].as_u64(),
        u["total_tokens"].as_u64(),
        u["prompt_tokens_details"]["cached_tokens"].as_u64(),
        u["completion_tokens_details"]["reasoning_tokens"].as_u64(),
    );
    if got
        != (
            Some(prompt),
            Some(completion),
            Some(total),
            Some(cached),
            reasoning,
        )
    {
        return Err(format!("{id}: usage {u}"));
    }
    // The §3.5 rule must agree with Gemini's own total where it sent one.
    let last_total = recorded_payloads(case)
        .iter()
        .rev()
        .find_map(|p| p["usageMetadata"]["totalTokenCount"].as_u64());
    if last_total.is_some_and(|t| t != total) {
        return Err(format!("{id}: total {total} != recorded {last_total:?}"));
    }
    Ok(())
}

fn check_response(id: &str, case: &Value, c: &Case) -> Result<(), String> {
    let a = adapter(c.provider.map(|f| f()));
    let status = case["response"]["status"].as_u64().unwrap_or(200) as u16;
    let body_bytes = || case["response"]["body"].to_string().into_bytes();
    let req = common::chat_request(common::question(), ALIAS);
    match &c.response {
        Response::Error {
            status: want,
            code,
            retry_after_ms,
            retryable,
        } => {
            if status != *want {
                return Err(format!("{id}: recorded status {status}"));
            }
            let f = a.error(status, &http::HeaderMap::new(), &body_bytes());
            let ok = f.kind == FailureKind::Status(*want)
                && f.code() == Some(code)
                && f.retry_after.map(|d| d.as_millis() as u64) == *retry_after_ms
                && f.retryable() == *retryable;
            if !ok {
                return Err(format!("{id}: failure {f:?}"));
            }
        }
        Response::Blocked { reason } => {
            let f = a
                .chat_response(&req, "m", &body_bytes())
                .err()
                .ok_or(format!("{id}: a blocked prompt must fail"))?;
            let g = GatewayError::Upstream {
                failure: f.clone(),
                attempts: 1,
            };
            let ok = f.kind == FailureKind::Status(400)
                && f.permanent
                && g.status() == 400
                && g.code() == "content_filter"
                && g.error_type() == "invalid_request_error"
                && f.message.contains(reason);
            if !ok {
                return Err(format!("{id}: failure {f:?}"));
            }
        }
        Response::Answer(e) => {
            let seen = match stream_wire(case) {
                Some(wire) => seen_from_stream(id, &run_stream(&a, &[&wire])?)?,
                None => {
                    let t = a
                        .chat_response(&req, "m", &body_bytes())
                        .map_err(|f| format!("{id}: {f:?}"))?;
                    common::check_usage_end(id, &t);
                    let body: Value = serde_json::from_slice(&t.body).unwrap();
                    if t.usage.as_ref().map(|u| serde_json::to_value(u).unwrap())
                        != Some(body["usage"].clone())
                    {
                        return Err(format!("{id}: reported usage differs from the body's"));
                    }
                    seen_from_body(&body)
                }
            };
            check_answer(id, case, e, &seen)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn every_corpus_file_is_in_the_table() {
    let files = common::corpus_files(&common::corpus_dir(PROVIDER));
    let on_disk: BTreeSet<String> = files
        .iter()
        .filter_map(|name| name.strip_suffix(".json").map(str::to_owned))
        .collect();
    common::assert_unique_ids(cases().iter().map(|c| c.id));
    let listed: BTreeSet<String> = cases().iter().map(|c| c.id.to_owned()).collect();
    let missing: Vec<_> = on_disk.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "corpus cases neither checked nor listed: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "table rows without a corpus file: {stale:?}"
    );
    // Every `.sse` file belongs to a case.
    for name in &files {
        if let Some(stem) = name.strip_suffix(".sse") {
            assert!(listed.contains(stem), "{name} has no case");
        }
    }
}

#[test]
fn responses_replay_field_by_field() {
    let mut failures = Vec::new();
    for c in cases() {
        let case = load(c.id);
        if let Err(e) = check_response(c.id, &case, &c) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn recorded_requests_have_their_essentials() {
    let mut failures = Vec::new();
    let (mut checked, mut skipped) = (0, 0);
    for c in cases() {
        let case = load(c.id);
        let recorded = !case["request"].is_null();
        match (&c.request, recorded) {
            (Request::Check { .. }, true) => checked += 1,
            (Request::Skip(why), true) => {
                assert!(!why.is_empty());
                skipped += 1;
            }
            (Request::NotRecorded, false) => {}
            _ => failures.push(format!("{}: request kind does not match the file", c.id)),
        }
        if let Err(e) = check_request(c.id, &case, &c) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!((checked, skipped), (20, 8));
}

/// Recorded streams, for the split property.
fn recorded_streams() -> Vec<(String, Vec<u8>)> {
    common::streams_of(cases().iter().map(|c| c.id), |id| stream_wire(&load(id)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any split of any recorded stream gives the same OpenAI bytes as the whole stream.
    #[test]
    fn any_split_of_a_recorded_stream_gives_identical_output(
        which in 0usize..10,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let streams = recorded_streams();
        prop_assert_eq!(streams.len(), 10);
        let (id, wire) = &streams[which];
        let a = adapter(None);
        let whole = without_created(&run_stream(&a, &[wire]).unwrap());
        let pieces = common::split_at_cuts(wire, &cuts);
        let split = without_created(&run_stream(&a, &pieces).unwrap());
        prop_assert_eq!(whole, split, "{}", id);
    }
}

#[test]
fn byte_at_a_time_matches_whole() {
    let a = adapter(None);
    for (id, wire) in recorded_streams() {
        let whole = without_created(&run_stream(&a, &[&wire]).unwrap());
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let split = without_created(&run_stream(&a, &bytes).unwrap());
        assert_eq!(whole, split, "{id}");
    }
}

#[test]
fn skip_reasons_are_documented() {
    for c in cases() {
        if let Request::Skip(why) = c.request {
            assert!(why.len() > 20, "{}: give a real reason", c.id);
        }
        if let Request::Check {
            adjust: Some((_, why)),
            ..
        } = c.request
        {
            assert!(why.len() > 20, "{}: explain the adjustment", c.id);
        }
    }
}
