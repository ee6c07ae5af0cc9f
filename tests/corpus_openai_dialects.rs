//! Replays every recorded exchange in `../shared/corpus/{mistral,deepseek,other}` through the
//! OpenAI-dialect adapter with the dialect of its provider (`other` holds OpenAI-compatible
//! servers: Cerebras, Crusoe, Groq, Hugging Face, OpenRouter) and checks the OpenAI output
//! field by field: content, reasoning, tool calls (arguments compared as parsed JSON),
//! finish_reason, usage with cached tokens, error status and code, byte-exactness where no
//! rule applies, and the stream usage rules. The request side is checked where one was
//! recorded. Every file must be claimed by a table entry, so a new corpus file cannot be
//! silently ignored; request sides llmux cannot produce are listed with the reason.
//!
//! Property tests: any split of a recorded stream gives byte-identical output.

mod common;

use bytes::BytesMut;
use common::{check_text, check_tools, Text};
use llmux::config::ProviderConfig;
use llmux::providers::openai::dialect::{is_mistral_id, mistral_tool_call_id};
use llmux::providers::openai::{Dialect, OpenAiAdapter};
use llmux::providers::{Adapter, BaseUrl};
use llmux::types::ChatRequest;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

/// OpenAI usage after the adapter: prompt, completion, total, `cached_tokens`.
struct U(u64, u64, u64, Option<u64>);

struct Expect {
    content: Text,
    reasoning_content: Text,
    /// The server's own `message.reasoning` (OpenAI-compatible servers), kept as sent.
    reasoning: Text,
    /// (id, name, arguments JSON).
    tools: &'static [(&'static str, &'static str, &'static str)],
    finish: &'static str,
    usage: U,
    /// A non-stream body a rule rewrote (else it must pass through byte-exact).
    rewritten: bool,
}

enum Outcome {
    Answer(Expect),
    /// Upstream status, the client's status, `error.code`, retryable.
    Error(u16, u16, &'static str, bool),
}

enum RequestSide {
    /// Response-only fixture.
    NotRecorded,
    /// llmux cannot produce this request from an OpenAI one, and why.
    Skip(&'static str),
    /// The recorded body is also the client's request; the adapter must send it back with
    /// the dialect's rules applied. The function turns the recording into what the rules
    /// make of it, with why (`None`: sent as recorded).
    Check(Option<Fix>),
}

/// How the rules change a recorded request, and why.
type Fix = (fn(&mut Value), &'static str);

struct Case {
    id: &'static str,
    outcome: Outcome,
    request: RequestSide,
}

const fn answer(content: Text, reasoning_content: Text, finish: &'static str, usage: U) -> Expect {
    Expect {
        content,
        reasoning_content,
        reasoning: Text::Null,
        tools: &[],
        finish,
        usage,
        rewritten: false,
    }
}

/// Mistral rejects empty assistant content next to tool calls (pitfall 7): the rule drops it.
fn drop_empty_assistant_content(body: &mut Value) {
    for m in body["messages"].as_array_mut().into_iter().flatten() {
        let calls = m["tool_calls"].as_array().is_some_and(|c| !c.is_empty());
        if m["role"] == "assistant" && calls && m["content"] == json!([]) {
            m.as_object_mut().unwrap().remove("content");
        }
    }
}

fn cases() -> Vec<Case> {
    use Outcome::*;
    use RequestSide::*;
    use Text::{Exact, Prefix};
    vec![
        // --- mistral -----------------------------------------------------------------
        Case {
            id: "pai-test_mistral_history_uses_prompt_cache__0",
            outcome: Answer(answer(Exact("cache probe one."), Text::Null, "stop", U(253, 5, 258, Some(0)))),
            request: Check(None),
        },
        Case {
            id: "pai-test_mistral_history_uses_prompt_cache__1",
            outcome: Answer(answer(Exact("cache probe two."), Text::Null, "stop", U(268, 5, 273, Some(224)))),
            request: Check(None),
        },
        Case {
            id: "pai-test_mistral_model_thinking_part__1",
            outcome: Answer(Expect {
                rewritten: true,
                ..answer(
                    Prefix("Crossing a river is quite different from", 1282),
                    Prefix("**Analogizing crossing a river**\n\nThe us", 2379),
                    "stop",
                    U(664, 747, 1411, None),
                )
            }),
            request: Skip("the history replays Mistral `thinking` content chunks, which an OpenAI request cannot carry: llmux answers with `reasoning_content` and sends a replayed one back as one `thinking` chunk (golden test `mistral_roles_names_and_reasoning`)"),
        },
        Case {
            id: "pai-test_mistral_model_thinking_part_iter",
            outcome: Answer(answer(
                Prefix("To cross the street safely, follow these", 607),
                Prefix("Okay, the user is asking how to cross th", 421),
                "stop",
                U(10, 232, 242, None),
            )),
            request: Check(None),
        },
        Case {
            id: "pai-test_model_sees_multiple_images_mistral__1",
            outcome: Answer(Expect {
                rewritten: true,
                ..answer(Exact("Kiwi"), Text::Null, "stop", U(781, 3, 784, Some(0)))
            }),
            request: Check(Some((
                drop_empty_assistant_content,
                "an assistant turn with tool calls loses its empty content",
            ))),
        },
        Case {
            id: "pai-test_reasoning_wire_contract_mistral-small-thinking-high",
            outcome: Answer(Expect {
                rewritten: true,
                ..answer(
                    Exact("4"),
                    Exact("The user is asking for the result of 2+2. The instruction is to reply with just the number, so I should respond with \"4\"."),
                    "stop",
                    U(28, 35, 63, Some(0)),
                )
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_stop_settings_mistral",
            outcome: Answer(answer(Exact("The capital of France is "), Text::Null, "stop", U(28, 6, 34, None))),
            request: Check(None),
        },
        Case {
            id: "vercel-mistral-incremental-tool-call-chunks",
            outcome: Answer(Expect {
                tools: &[(
                    "chatcmpl-tool-9f149c74c42f265b",
                    "webSearchTool",
                    r#"{"query": "current Berlin weather"}"#,
                )],
                ..answer(Text::Null, Text::Null, "tool_calls", U(171, 14, 185, Some(128)))
            }),
            request: NotRecorded,
        },
        Case {
            id: "vercel-mistral-reasoning-chunks",
            outcome: Answer(answer(
                Exact("2 + 2 = 4"),
                Exact("The user is asking for 2+2. This is basic arithmetic. 2+2=4."),
                "stop",
                U(10, 46, 56, None),
            )),
            request: NotRecorded,
        },
        // --- deepseek ----------------------------------------------------------------
        Case {
            id: "pai-test_deepseek_deferred_capability_with_thinking__0",
            outcome: Answer(Expect {
                tools: &[(
                    "call_00_sXqYgMESDht75NCLLZtt9804",
                    "load_capability",
                    r#"{"id": "DICE_ROLL"}"#,
                )],
                ..answer(
                    Exact("Let me load the dice rolling capability!"),
                    Prefix("The user wants to play a dice game. I ne", 233),
                    "tool_calls",
                    U(563, 116, 679, Some(512)),
                )
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_deepseek_deferred_capability_with_thinking__1",
            outcome: Answer(Expect {
                tools: &[
                    ("call_00_6edlnw3Z1MgeMfey687g8451", "get_player_name", "{}"),
                    ("call_01_km02sac7sHxNDPATKLZy7705", "roll_dice", "{}"),
                ],
                ..answer(
                    Exact("Let me get your name and roll the die!"),
                    Prefix("Great, now I have access to the dice rol", 105),
                    "tool_calls",
                    U(875, 79, 954, Some(0)),
                )
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_deepseek_model_thinking_part",
            outcome: Answer(answer(
                Prefix("Crossing the street safely involves care", 1568),
                Prefix("Okay, the user is asking how to cross th", 1997),
                "stop",
                U(12, 789, 801, Some(0)),
            )),
            request: Check(None),
        },
        Case {
            id: "pai-test_deepseek_model_thinking_stream",
            outcome: Answer(answer(
                Exact("Hello there! 😊 How can I help you today?"),
                Prefix("Hmm, the user just said \"Hello\". It's a ", 882),
                "stop",
                U(6, 212, 218, Some(0)),
            )),
            request: Check(None),
        },
        Case {
            id: "vercel-deepseek-reasoning",
            outcome: Answer(answer(
                Prefix("The word \"strawberry\" contains three ins", 107),
                Prefix("We are asked: \"How many 'r's are in the ", 935),
                "stop",
                U(18, 345, 363, Some(0)),
            )),
            request: NotRecorded,
        },
        Case {
            id: "vercel-deepseek-tool-call",
            outcome: Answer(Expect {
                tools: &[(
                    "call_00_9V0vrf86Pc9aelHCJMZqnJBo",
                    "weather",
                    r#"{"location": "San Francisco"}"#,
                )],
                ..answer(
                    Exact(""),
                    Prefix("The user is asking for the weather in Sa", 242),
                    "tool_calls",
                    U(339, 92, 431, Some(320)),
                )
            }),
            request: NotRecorded,
        },
        Case {
            id: "vercel-deepseek-tool-call-chunks",
            outcome: Answer(Expect {
                tools: &[(
                    "call_00_ioIn7yN9p1ZOMNpDLwd4MgAF",
                    "weather",
                    r#"{"location":"San Francisco"}"#,
                )],
                ..answer(
                    Text::Null,
                    Prefix("The user is asking for the weather in Sa", 191),
                    "tool_calls",
                    U(339, 83, 422, Some(320)),
                )
            }),
            request: NotRecorded,
        },
        // --- other: OpenAI-compatible servers ----------------------------------------
        Case {
            id: "pai-test_cerebras_thinking_part_survives_multiturn__1",
            outcome: Answer(Expect {
                reasoning: Prefix("User asks \"Now add 3 to that.\"", 73),
                ..answer(Exact("\\(4 + 3 = 7\\)."), Text::Null, "stop", U(98, 47, 145, Some(0)))
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_crusoe_native_output",
            outcome: Answer(Expect {
                reasoning: Prefix("1.  **Identify the core entity", 844),
                ..answer(
                    Exact("{ \"city\": \"Paris\", \"country\": \"France\" }"),
                    Text::Null,
                    "stop",
                    U(20, 233, 253, Some(0)),
                )
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_crusoe_tool_calling__1",
            outcome: Answer(Expect {
                reasoning: Prefix("The weather in Paris is sunny ", 80),
                ..answer(
                    Prefix("The weather in Paris is currently **sunn", 114),
                    Text::Null,
                    "stop",
                    U(214, 54, 268, Some(64)),
                )
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_groq_native_output",
            outcome: Answer(Expect {
                reasoning: Prefix("The user asks: \"What is the la", 319),
                ..answer(
                    Exact("{\"city\":\"Mexico City\",\"country\":\"Mexico\"}"),
                    Text::Null,
                    "stop",
                    U(178, 94, 272, None),
                )
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_image_url_input__",
            outcome: Answer(answer(
                Prefix("Hello! How can I assist you with the ima", 122),
                Text::Null,
                "stop",
                U(269, 27, 296, None),
            )),
            request: Check(None),
        },
        Case {
            id: "pai-test_openrouter_errors_raised__0",
            outcome: Error(429, 503, "upstream_error", true),
            request: Check(None),
        },
        Case {
            id: "pai-test_openrouter_file_annotation",
            outcome: Answer(Expect {
                reasoning: Exact("**Assessing dummy PDF file**"),
                ..answer(
                    Exact("The PDF appears to be a dummy placeholder file."),
                    Text::Null,
                    "stop",
                    U(31, 80, 111, Some(0)),
                )
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_stop_settings_groq",
            outcome: Answer(answer(
                Prefix("Bien sûr!\n\nThe lovely city that is the c", 60),
                Text::Null,
                "stop",
                U(35, 25, 60, None),
            )),
            request: Check(None),
        },
        Case {
            id: "pai-test_tool_choice_matrix_tools_plus_output-groq",
            outcome: Answer(Expect {
                tools: &[
                    ("rew01jq49", "get_weather", r#"{"city":"Paris"}"#),
                    ("gbpypqxpx", "final_result", r#"{"city":"Paris","summary":"Current weather in Paris"}"#),
                ],
                ..answer(Text::Null, Text::Null, "tool_calls", U(779, 65, 844, None))
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_tool_choice_matrix_tools_plus_output-huggingface",
            outcome: Answer(Expect {
                tools: &[
                    ("call_c67bb6b901354ca19bd1b70d", "get_weather", r#"{"city": "Paris"}"#),
                    ("call_1113747bb7de47ce8bffe3e9", "final_result", r#"{"city": "Paris", "summary": "Weather in Paris"}"#),
                ],
                ..answer(Exact(""), Text::Null, "tool_calls", U(720, 65, 785, None))
            }),
            request: Check(None),
        },
        Case {
            id: "pai-test_tool_regular_error",
            outcome: Error(404, 404, "model_not_found", false),
            request: Check(None),
        },
    ]
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const DIRS: [&str; 3] = ["mistral", "deepseek", "other"];

/// The model alias of the client requests.
const ALIAS: &str = "alias";

/// The corpus case `id` and the directory it lives in.
fn load(id: &str) -> (Value, &'static str) {
    for dir in DIRS {
        let path = common::corpus_dir(dir).join(format!("{id}.json"));
        if path.is_file() {
            return (common::read_case(&path), dir);
        }
    }
    panic!("corpus case {id} not found")
}

/// The configured kind for a corpus directory.
fn kind_of(dir: &str) -> &'static str {
    match dir {
        "mistral" => "mistral",
        "deepseek" => "deepseek",
        _ => "openai_compatible",
    }
}

/// The provider's base URL: the recorded request URL without the chat path, else the
/// provider's documented one.
fn base_url(case: &Value, dir: &str) -> String {
    match case["request"]["url"].as_str() {
        Some(url) => url
            .trim_end_matches("#stream")
            .trim_end_matches("/chat/completions")
            .to_owned(),
        None => match dir {
            "mistral" => "https://api.mistral.ai/v1".into(),
            "deepseek" => "https://api.deepseek.com".into(),
            _ => "http://127.0.0.1:8000/v1".into(),
        },
    }
}

fn adapter(case: &Value, dir: &str) -> OpenAiAdapter {
    let kind = kind_of(dir);
    let base = base_url(case, dir);
    let cfg: ProviderConfig = serde_json::from_value(
        json!({"name": "p", "kind": kind, "base_url": base, "api_key": "sk-corpus-123456"}),
    )
    .unwrap();
    let dialect = Dialect::for_kind(cfg.kind);
    assert_eq!(dialect.kind_name(), kind);
    OpenAiAdapter::new(&cfg, &BaseUrl::parse(&base).unwrap(), dialect)
}

fn stream_request(include_usage: bool) -> ChatRequest {
    common::chat_request(common::streamed_question(include_usage), ALIAS)
}

/// The recorded stream as wire bytes: the raw SSE text, or the stored payloads re-framed
/// (response-only fixtures kept only the `data:` JSON, without the `[DONE]` line).
fn stream_wire(case: &Value) -> Option<Vec<u8>> {
    let resp = &case["response"];
    if resp["sse_file"].is_string() {
        return Some(resp["body_text"].as_str().unwrap().as_bytes().to_vec());
    }
    let chunks = resp["chunks"].as_array()?;
    let mut wire = Vec::new();
    for c in chunks {
        wire.extend_from_slice(b"data: ");
        wire.extend_from_slice(&serde_json::to_vec(c).unwrap());
        wire.extend_from_slice(b"\n\n");
    }
    wire.extend_from_slice(b"data: [DONE]\n\n");
    Some(wire)
}

fn translate_stream(a: &OpenAiAdapter, req: &ChatRequest, chunks: &[&[u8]]) -> Vec<u8> {
    common::feed_all(&mut *a.stream_translator(req, "m"), chunks)
}

/// A stream put back together the way an OpenAI client does.
#[derive(Default, Debug)]
struct Assembled {
    content: Option<String>,
    reasoning_content: Option<String>,
    tools: Vec<(String, String, String)>,
    finish: Option<String>,
    /// Every chunk that carried a `usage` object: (its `choices` were empty, the usage).
    usage_chunks: Vec<(bool, Value)>,
    done_last: bool,
}

fn assemble(out: &[u8]) -> Assembled {
    let text = std::str::from_utf8(out).unwrap();
    let mut a = Assembled::default();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    for (k, event) in events.iter().enumerate() {
        let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
            continue;
        };
        if data == "[DONE]" {
            a.done_last = k == events.len() - 1;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if v["usage"].is_object() {
            let empty = v["choices"].as_array().is_some_and(Vec::is_empty);
            a.usage_chunks.push((empty, v["usage"].clone()));
        }
        for c in v["choices"].as_array().into_iter().flatten() {
            let d = &c["delta"];
            if let Some(s) = d["content"].as_str().filter(|s| !s.is_empty()) {
                a.content.get_or_insert_with(String::new).push_str(s);
            }
            assert!(!d["content"].is_array(), "content parts reach no client");
            if let Some(s) = d["reasoning_content"].as_str().filter(|s| !s.is_empty()) {
                a.reasoning_content
                    .get_or_insert_with(String::new)
                    .push_str(s);
            }
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap() as usize;
                if a.tools.len() <= i {
                    a.tools.resize(i + 1, Default::default());
                }
                let entry = &mut a.tools[i];
                if let Some(id) = call["id"].as_str() {
                    entry.0 = id.to_owned();
                }
                entry
                    .1
                    .push_str(call["function"]["name"].as_str().unwrap_or_default());
                entry
                    .2
                    .push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
            if let Some(f) = c["finish_reason"].as_str() {
                a.finish = Some(f.to_owned());
            }
        }
    }
    a
}

fn check_usage(id: &str, usage: &Value, want: &U) {
    let n = |p: &str| usage.pointer(p).and_then(Value::as_u64);
    assert_eq!(
        (
            n("/prompt_tokens"),
            n("/completion_tokens"),
            n("/total_tokens")
        ),
        (Some(want.0), Some(want.1), Some(want.2)),
        "{id}: usage {usage}"
    );
    assert_eq!(
        n("/prompt_tokens_details/cached_tokens"),
        want.3,
        "{id}: cached_tokens in {usage}"
    );
}

fn check_answer(id: &str, case: &Value, dir: &str, want: &Expect) {
    let a = adapter(case, dir);
    let resp = &case["response"];
    assert_eq!(resp["status"], 200, "{id}");
    if let Some(wire) = stream_wire(case) {
        for asked in [true, false] {
            let req = stream_request(asked);
            let out = translate_stream(&a, &req, &[&wire]);
            let got = assemble(&out);
            check_text(id, "content", got.content.as_deref(), &want.content);
            check_text(
                id,
                "reasoning_content",
                got.reasoning_content.as_deref(),
                &want.reasoning_content,
            );
            check_tools(id, &got.tools, want.tools);
            assert_eq!(got.finish.as_deref(), Some(want.finish), "{id}: finish");
            assert!(got.done_last, "{id}: one [DONE], last");
            let mut t = a.stream_translator(&req, "m");
            t.feed(&wire, &mut BytesMut::new()).unwrap();
            let reported = serde_json::to_value(t.usage().expect("usage seen")).unwrap();
            check_usage(id, &reported, &want.usage);
            if asked {
                // OpenAI's rule 4: one usage chunk, `choices: []`, the last before [DONE].
                assert_eq!(got.usage_chunks.len(), 1, "{id}: usage chunks");
                assert!(got.usage_chunks[0].0, "{id}: usage in its own chunk");
                check_usage(id, &got.usage_chunks[0].1, &want.usage);
            } else {
                assert!(got.usage_chunks.is_empty(), "{id}: usage not asked for");
            }
        }
        assert!(
            matches!(want.reasoning, Text::Null),
            "{id}: streams record no `reasoning`"
        );
        return;
    }
    let body = common::recorded_body_bytes(resp);
    let req = common::chat_request(common::question(), ALIAS);
    let t = a.chat_response(&req, "m", &body).unwrap();
    common::check_usage_end(id, &t);
    if !want.rewritten {
        assert_eq!(&t.body[..], &body[..], "{id}: passes through byte-exact");
    }
    let out: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(
        (&out["id"], &out["model"]),
        (&resp["body"]["id"], &resp["body"]["model"]),
        "{id}: id/model"
    );
    let msg = &out["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    check_text(id, "content", msg["content"].as_str(), &want.content);
    assert!(
        !msg["content"].is_array(),
        "{id}: content parts reach no client"
    );
    check_text(
        id,
        "reasoning_content",
        msg["reasoning_content"].as_str(),
        &want.reasoning_content,
    );
    check_text(id, "reasoning", msg["reasoning"].as_str(), &want.reasoning);
    check_tools(id, &common::message_tool_calls(msg), want.tools);
    assert_eq!(
        out["choices"][0]["finish_reason"], want.finish,
        "{id}: finish"
    );
    check_usage(id, &out["usage"], &want.usage);
    let reported = serde_json::to_value(t.usage.expect("usage")).unwrap();
    check_usage(id, &reported, &want.usage);
}

fn check_error(
    id: &str,
    case: &Value,
    dir: &str,
    (upstream, client, code, retryable): (u16, u16, &str, bool),
) {
    let f = common::replay_error(id, case, &adapter(case, dir), upstream, "/error/message");
    assert_eq!(f.retryable(), retryable, "{id}: retryable");
    common::assert_client_sees(id, f, client, code);
}

/// Drops `null` members (the typed request omits unset fields) and `stream: false`, and
/// the `index` of history tool calls (not an OpenAI request field; llmux does not keep it).
fn essentials(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !v.is_null() && k.as_str() != "index")
                .filter(|(k, v)| !(k.as_str() == "stream" && **v == json!(false)))
                .map(|(k, v)| (k.clone(), essentials(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(essentials).collect()),
        other => other.clone(),
    }
}

/// The Mistral request rules every translated body obeys (§4.2).
fn obeys_mistral_rules(id: &str, body: &Value) {
    assert!(
        body.get("seed").is_none() && body.get("stream_options").is_none(),
        "{id}"
    );
    assert_ne!(body["tool_choice"], "required", "{id}");
    for m in body["messages"].as_array().unwrap() {
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            assert!(is_mistral_id(call["id"].as_str().unwrap()), "{id}: {call}");
        }
        if let Some(tid) = m["tool_call_id"].as_str() {
            assert!(is_mistral_id(tid), "{id}: {tid}");
        }
        if m["role"] == "assistant" {
            let calls = m["tool_calls"].as_array().is_some_and(|c| !c.is_empty());
            let content = m.get("content");
            let empty = content.is_some_and(|c| c.is_null() || *c == json!("") || *c == json!([]));
            assert!(!empty, "{id}: empty assistant content {m}");
            assert!(calls || content.is_some(), "{id}: empty assistant turn {m}");
        }
        assert!(
            m["role"] == "tool" || m.get("name").is_none(),
            "{id}: name only on tool messages"
        );
    }
}

fn check_request(id: &str, case: &Value, dir: &str, fix: Option<Fix>) {
    let recorded = &case["request"]["body"];
    let a = adapter(case, dir);
    let model = recorded["model"].as_str().unwrap();
    let up = a
        .chat_request(&common::chat_request(recorded.clone(), ALIAS), model)
        .unwrap();
    let path = case["request"]["path"]
        .as_str()
        .unwrap()
        .trim_end_matches("#stream");
    assert_eq!(up.path, path, "{id}: path");
    assert!(
        up.headers
            .contains(&("authorization".into(), "Bearer sk-corpus-123456".into())),
        "{id}: bearer auth"
    );
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    if dir == "mistral" {
        obeys_mistral_rules(id, &sent);
    }
    let mut want = recorded.clone();
    if let Some((f, why)) = fix {
        assert!(!why.is_empty());
        f(&mut want);
    }
    // The typed request writes OpenAI's default tool `type`.
    for tool in want["tools"].as_array_mut().into_iter().flatten() {
        if tool.get("type").is_none() {
            tool["type"] = "function".into();
        }
    }
    common::assert_same_request(id, &essentials(&sent), &essentials(&want));
}

// ---------------------------------------------------------------------------------------
// The replay
// ---------------------------------------------------------------------------------------

#[test]
fn every_corpus_file_is_replayed_or_listed() {
    let table = cases();
    common::assert_unique_ids(table.iter().map(|c| c.id));
    let (mut responses, mut requests, mut skipped, mut files) = (0, 0, Vec::<String>::new(), 0);
    let mut claimed_sse = BTreeSet::new();
    for dir in DIRS {
        let names = common::corpus_files(&common::corpus_dir(dir));
        for file in names.iter().filter(|f| f.ends_with(".json")) {
            files += 1;
            let id = file.trim_end_matches(".json");
            let c = table.iter().find(|c| c.id == id).unwrap_or_else(|| {
                panic!("corpus case {dir}/{id} is neither checked nor listed in the table")
            });
            let (case, found_in) = load(id);
            assert_eq!(found_in, dir);
            assert_eq!(case["provider"], dir, "{id}");
            if let Some(sse) = case["response"]["sse_file"].as_str() {
                claimed_sse.insert(format!("{dir}/{sse}"));
            }
            match &c.outcome {
                Outcome::Answer(want) => check_answer(id, &case, dir, want),
                Outcome::Error(up, client, code, retry) => {
                    check_error(id, &case, dir, (*up, *client, code, *retry))
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
                    skipped.push(id.to_owned());
                }
                RequestSide::Check(fix) => {
                    assert!(recorded, "{id}");
                    check_request(id, &case, dir, *fix);
                    requests += 1;
                }
            }
        }
        for file in names.iter().filter(|f| !f.ends_with(".json")) {
            assert!(
                claimed_sse.contains(&format!("{dir}/{file}")),
                "corpus file {dir}/{file} belongs to no case"
            );
        }
    }
    assert_eq!(
        responses,
        table.len(),
        "every table entry has its corpus file"
    );
    assert_eq!(files, 27, "mistral 9 + deepseek 7 + other 11");
    assert!(requests >= 18, "request sides checked: {requests}");
    eprintln!(
        "openai-dialect corpus: {responses} responses checked, {requests} requests checked, request side skipped for {skipped:?}"
    );
}

/// The `.sse` file is the same stream as the case's `body_text`.
#[test]
fn sse_files_match_their_cases() {
    for dir in DIRS {
        for c in cases() {
            let (case, found) = load(c.id);
            if found != dir {
                continue;
            }
            if let Some(sse) = case["response"]["sse_file"].as_str() {
                let file = std::fs::read(common::corpus_dir(dir).join(sse)).unwrap();
                assert_eq!(file, stream_wire(&case).unwrap(), "{}", c.id);
            }
        }
    }
}

/// A history recorded against DeepSeek (its `call_00_…` ids, an `auto_load_…` id) sent to
/// Mistral: every id becomes 9 alphanumerics, the same in the call and in its result.
#[test]
fn a_deepseek_history_sent_to_mistral_gets_nine_character_ids() {
    let (case, _) = load("pai-test_deepseek_deferred_capability_with_thinking__1");
    let recorded = &case["request"]["body"];
    let cfg: ProviderConfig = serde_json::from_value(
        json!({"name": "m", "kind": "mistral", "base_url": "https://api.mistral.ai/v1", "api_key": "k"}),
    )
    .unwrap();
    let a = OpenAiAdapter::new(
        &cfg,
        &BaseUrl::parse("https://api.mistral.ai/v1").unwrap(),
        Dialect::Mistral,
    );
    let up = a
        .chat_request(
            &common::chat_request(recorded.clone(), ALIAS),
            "mistral-large-latest",
        )
        .unwrap();
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    obeys_mistral_rules("deepseek→mistral", &sent);
    let messages = sent["messages"].as_array().unwrap();
    let original = recorded["messages"].as_array().unwrap();
    assert_eq!(messages.len(), original.len());
    for (m, o) in messages.iter().zip(original) {
        for (call, orig) in m["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(o["tool_calls"].as_array().into_iter().flatten())
        {
            assert_eq!(
                call["id"],
                mistral_tool_call_id(orig["id"].as_str().unwrap())
            );
        }
        if let Some(tid) = o["tool_call_id"].as_str() {
            assert_eq!(m["tool_call_id"], mistral_tool_call_id(tid));
        }
    }
    // The assistant turn with reasoning went back as a thinking chunk before its text.
    assert_eq!(messages[3]["content"][0]["type"], "thinking");
    assert_eq!(
        messages[3]["content"][1]["text"],
        "Let me load the dice rolling capability!"
    );
    // The one with empty reasoning and no content is its tool calls alone.
    assert!(messages[5].get("content").is_none() && messages[5].get("reasoning_content").is_none());
    // DeepSeek's strict flag on tools is not Mistral's.
    assert!(sent["tools"][0]["function"].get("strict").is_none());
}

// ---------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------

fn recorded_streams() -> Vec<(String, Value, &'static str, Vec<u8>)> {
    cases()
        .iter()
        .filter_map(|c| {
            let (case, dir) = load(c.id);
            stream_wire(&case).map(|w| (c.id.to_owned(), case, dir, w))
        })
        .collect()
}

#[test]
fn byte_by_byte_feeding_matches_one_chunk() {
    let streams = recorded_streams();
    assert_eq!(streams.len(), 5);
    for (id, case, dir, wire) in streams {
        let a = adapter(&case, dir);
        for asked in [true, false] {
            let req = stream_request(asked);
            let whole = translate_stream(&a, &req, &[&wire]);
            let bytes: Vec<&[u8]> = wire.chunks(1).collect();
            assert_eq!(translate_stream(&a, &req, &bytes), whole, "{id}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_split_of_a_recorded_stream_gives_identical_output(
        pick in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        asked in any::<bool>(),
    ) {
        let streams = recorded_streams();
        let (id, case, dir, wire) = &streams[pick.index(streams.len())];
        let a = adapter(case, dir);
        let req = stream_request(asked);
        let whole = translate_stream(&a, &req, &[wire]);
        let pieces = common::split_at_cuts(wire, &cuts);
        prop_assert_eq!(translate_stream(&a, &req, &pieces), whole, "{}", id);
    }
}

// ---------------------------------------------------------------------------------------
// No input makes a dialect panic
// ---------------------------------------------------------------------------------------

const KINDS: [(&str, &str); 7] = [
    ("openai", "https://api.openai.com/v1"),
    ("mock", "http://127.0.0.1:9/v1"),
    ("openai_compatible", "http://127.0.0.1:8000/v1"),
    ("mistral", "https://api.mistral.ai/v1"),
    ("deepseek", "https://api.deepseek.com"),
    (
        "qwen",
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    ),
    ("azure_openai", "https://res.openai.azure.com"),
];

fn adapter_of(kind: &str, base: &str, drop: bool, version: &str) -> OpenAiAdapter {
    let cfg: ProviderConfig = serde_json::from_value(json!({"name": "p", "kind": kind,
        "base_url": base, "api_key": "sk-prop-123456", "drop_unsupported_params": drop,
        "api_version": version}))
    .unwrap();
    OpenAiAdapter::new(
        &cfg,
        &BaseUrl::parse(base).unwrap(),
        Dialect::for_kind(cfg.kind),
    )
}

/// Pieces of plausible and implausible OpenAI-dialect stream events.
fn event_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("data: [DONE]\n\n".to_owned()),
        Just(": keep-alive\n\n".to_owned()),
        Just("\n".to_owned()),
        Just("data: {\"error\":{\"message\":\"x\"}}\n\n".to_owned()),
        Just("data: {\"object\":\"error\",\"message\":\"m\"}\n\n".to_owned()),
        Just("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":[{\"type\":\"thinking\",\"thinking\":[{\"type\":\"text\",\"text\":\"t\"}]},{\"type\":\"text\",\"text\":\"a\"}]},\"finish_reason\":null}]}\n\n".to_owned()),
        Just("data: {\"choices\":[{\"index\":1,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n".to_owned()),
        Just("data: {\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1,\"prompt_cache_hit_tokens\":1}}\n\n".to_owned()),
        Just("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"model_length\"}]}\n\n".to_owned()),
        Just("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-1}}\n\n".to_owned()),
        Just("data: {\"choices\":[],\"usage\":5}\n\n".to_owned()),
        Just("data: {\"choices\":\"nope\",\"usage\":null}\n\n".to_owned()),
        Just("data: [1,2]\n\n".to_owned()),
        "[ -~]{0,40}",
        any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Plausible and implausible JSON for a non-stream body or an error body.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z_]{0,8}".prop_map(Value::from),
        Just(json!("stop")),
        Just(json!("error")),
        Just(json!("model_length")),
        Just(json!({"type": "thinking", "thinking": [{"type": "text", "text": "t"}]})),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "choices",
                    "message",
                    "content",
                    "tool_calls",
                    "finish_reason",
                    "usage",
                    "error",
                    "message",
                    "object",
                    "detail",
                    "prompt_tokens_details",
                    "cached_tokens",
                    "prompt_cache_hit_tokens",
                    "code",
                    "type",
                    "delta",
                    "x",
                ]),
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_upstream_bytes_never_panic(
        kind in 0usize..KINDS.len(),
        pieces in prop::collection::vec(event_piece(), 0..12),
        body in json_value(),
        status in 100u16..600,
        asked in any::<bool>(),
    ) {
        let (kind, base) = KINDS[kind];
        let a = adapter_of(kind, base, false, "2024-10-21");
        let req = stream_request(asked);
        let mut t = a.stream_translator(&req, "m");
        let mut out = BytesMut::new();
        for p in &pieces {
            if t.feed(p.as_bytes(), &mut out).is_err() {
                break;
            }
        }
        let _ = t.finish(&mut out);
        let bytes = serde_json::to_vec(&body).unwrap();
        if let Ok(r) = a.chat_response(&req, "m", &bytes) {
            prop_assert!(serde_json::from_slice::<Value>(&r.body).is_ok());
        }
        let f = a.error(status, &http::HeaderMap::new(), &bytes);
        prop_assert!(!f.message.contains("sk-prop-123456"));
        let _ = a.error(status, &http::HeaderMap::new(), pieces.concat().as_bytes());
    }

    #[test]
    fn random_requests_translate_or_name_the_refused_field(
        kind in 0usize..KINDS.len(),
        ids in prop::collection::vec("[a-zA-Z0-9_.:-]{0,14}", 1..4),
        contents in prop::collection::vec(prop::option::of(prop::sample::select(vec!["", "hi", " "])), 1..4),
        params in prop::collection::vec(prop::sample::select(vec![
            ("logprobs", json!(true)), ("top_logprobs", json!(2)), ("user", json!("u")),
            ("n", json!(3)), ("seed", json!(1)), ("max_completion_tokens", json!(10)),
            ("tool_choice", json!("required")), ("logit_bias", json!({})),
            ("response_format", json!({"type": "json_schema", "json_schema": {"name": "a"}})),
            ("thinking", json!({"type": "enabled"})), ("temperature", json!(0.5)),
            ("stream", json!(true)), ("stream_options", json!({"include_usage": true})),
        ]), 0..6),
        drop in any::<bool>(),
        old_version in any::<bool>(),
    ) {
        let (kind, base) = KINDS[kind];
        let a = adapter_of(kind, base, drop, if old_version { "2024-06-01" } else { "2024-10-21" });
        let mut messages = vec![json!({"role": "developer", "content": "d", "name": "n"})];
        for (k, id) in ids.iter().enumerate() {
            let content = contents[k % contents.len()];
            messages.push(json!({"role": "user", "content": "q"}));
            messages.push(json!({"role": "assistant", "content": content,
                "tool_calls": [{"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}));
            messages.push(json!({"role": "tool", "tool_call_id": id, "content": "r"}));
            messages.push(json!({"role": "assistant", "content": content, "reasoning_content": "why"}));
        }
        let mut r = json!({"model": "m", "messages": messages,
            "tools": [{"type": "function", "function": {"name": "f", "strict": true, "parameters": {"$schema": "s", "type": "object"}}}]});
        for (k, v) in &params {
            r[*k] = v.clone();
        }
        let req: ChatRequest = serde_json::from_value(r).unwrap();
        match a.chat_request(&req, "deepseek-reasoner") {
            Ok(up) => {
                let body: Value = serde_json::from_slice(&up.body).unwrap();
                if kind == "mistral" {
                    obeys_mistral_rules("random", &body);
                    // Each call and its result carry the same rewritten id.
                    let msgs = body["messages"].as_array().unwrap();
                    for (m, next) in msgs.iter().zip(msgs.iter().skip(1)) {
                        if let Some(call) = m["tool_calls"].as_array().and_then(|c| c.first()) {
                            prop_assert_eq!(&call["id"], &next["tool_call_id"]);
                        }
                    }
                }
                if kind != "openai" && kind != "mock" && kind != "azure_openai" {
                    prop_assert!(body["messages"].as_array().unwrap().iter().all(|m| m["role"] != "developer"));
                }
            }
            Err(e) => {
                prop_assert!(!drop, "dropping never refuses: {}", e);
                prop_assert_eq!(e.status(), 400, "{}", e);
                prop_assert!(e.param().is_some(), "an error names its field: {}", e);
            }
        }
    }
}
