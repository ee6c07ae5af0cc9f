//! Replays every recorded Bedrock exchange in `../shared/corpus/bedrock` through the Bedrock
//! adapter and checks the OpenAI output field by field (content, reasoning, tool calls with
//! parsed-JSON-equal arguments, finish_reason, usage, error status/code), the binary
//! event-stream decoding against the recorded decoding, and the request side where one was
//! recorded (path, and the translated body's essentials). Every file must be claimed by a
//! table entry, so a new corpus file cannot be silently ignored; request sides llmux cannot
//! produce are listed with the reason.
//!
//! Property tests: any split of a recorded stream gives byte-identical output, and random
//! OpenAI requests translate (and sign) without panicking into bodies that obey Converse's
//! rules.

mod common;

use base64::Engine;
use bytes::BytesMut;
use common::{
    check_reasoning, check_text, check_tools, check_usage, seg, text, u, PartGen, RequestStyle,
    Text, CREATED, U,
};
use llmux::config::ProviderConfig;
use llmux::providers::bedrock::eventstream::{Decoder, HeaderValue};
use llmux::providers::bedrock::BedrockAdapter;
use llmux::providers::{Adapter, BaseUrl, StreamTranslator};
use llmux::types::{ChatRequest, FailureKind};
use proptest::prelude::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

struct Expect {
    content: Text,
    /// Prefix and length of `reasoning_content`, or `None` when it must be absent.
    reasoning: Option<(&'static str, usize)>,
    /// (id, name, arguments JSON).
    tools: &'static [(&'static str, &'static str, &'static str)],
    finish: &'static str,
    usage: U,
}

enum Outcome {
    Answer(Expect),
    /// An error status: the upstream status, the client's status, `error.code`, `error.type`.
    Error(u16, u16, &'static str, &'static str),
}

enum RequestSide {
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

const SERVER_TOOLS: &str = "Bedrock system tools (`systemTool` nova_code_interpreter, and its server_tool_use/toolResult blocks in the history) cannot be expressed in an OpenAI request: llmux sends function tools only";
const S3_MEDIA: &str = "the tool result holds media by `s3Location` (an S3 URI): OpenAI messages cannot express it, and llmux refuses remote media URLs for Bedrock";
const THINKING_MAX_TOKENS: (&str, &str) = (
    "inferenceConfig",
    "with thinking on and no limit set, llmux sends maxTokens = budget + 4096 (thinking counts against maxTokens, and a model default can be below the budget)",
);

fn cases() -> Vec<Case> {
    use Outcome::*;
    use RequestSide::*;
    vec![
        Case {
            id: "pai-test_bedrock_cache_write_and_read__1",
            outcome: Answer(Expect {
                content: Text::Exact("21"),
                reasoning: None,
                tools: &[],
                finish: "stop",
                usage: u(1324, 5, 1322, 0),
            }),
            request: Check(
                |r| {
                    let cc = json!({"type": "ephemeral"});
                    let params = &r["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"];
                    let doc = &r["messages"][0]["content"][1]["document"];
                    json!({"messages": [
                        {"role": "system", "content": [{"type": "text", "text": r["system"][0]["text"], "cache_control": cc}]},
                        {"role": "user", "content": [
                            {"type": "text", "text": text_at(r, 0, 0)},
                            {"type": "file", "file": {"filename": doc["name"],
                                "file_data": format!("data:text/plain;base64,{}", doc["source"]["bytes"].as_str().unwrap())}},
                            {"type": "text", "text": text_at(r, 0, 2), "cache_control": cc},
                            {"type": "text", "text": text_at(r, 0, 4), "cache_control": cc}]}],
                        "tools": [
                            {"type": "function", "function": {"name": "catalog_lookup", "parameters": params}},
                            {"type": "function", "function": {"name": "diagnostics", "parameters": params}, "cache_control": cc}],
                        "tool_choice": "auto"})
                },
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_bedrock_model",
            outcome: Answer(Expect {
                content: Text::Exact("Hello! How can I assist you today? Whether you have questions, need information, or just want to chat, I'm here to help."),
                reasoning: None,
                tools: &[],
                finish: "stop",
                usage: u(7, 30, 0, 0),
            }),
            request: Check(system_and_user, false, &[]),
        },
        Case {
            id: "pai-test_bedrock_model_code_execution_tool_stream",
            outcome: Answer(Expect {
                // The code-interpreter call and its result are server-side: not shown.
                content: Text::Null,
                reasoning: None,
                tools: &[("tooluse_ptgCcZ0uQu-UUMz0abqoWw", "final_result", "{\"result\":7006652.0}")],
                finish: "tool_calls",
                usage: u(1002, 59, 0, 0),
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_bedrock_model_guardrail_config",
            outcome: Answer(Expect {
                content: Text::Prefix("The capital of France is Paris. Paris is not only the capital city", 345),
                reasoning: None,
                tools: &[],
                finish: "stop",
                usage: u(13, 69, 0, 0),
            }),
            // `guardrailConfig` is a Bedrock-native field llmux passes through.
            request: Check(
                |r| {
                    let mut o = system_and_user(r);
                    o["guardrailConfig"] = r["guardrailConfig"].clone();
                    o
                },
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_bedrock_model_max_tokens",
            outcome: Answer(Expect {
                content: Text::Exact("The capital of France is"),
                reasoning: None,
                tools: &[],
                finish: "length",
                usage: u(13, 5, 0, 0),
            }),
            request: Check(
                |r| {
                    let mut o = system_and_user(r);
                    o["max_tokens"] = 5.into();
                    o
                },
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_bedrock_model_other_parameters",
            outcome: Answer(Expect {
                content: Text::Prefix("The capital of France is Paris. Paris is not only the capital city", 376),
                reasoning: None,
                tools: &[],
                finish: "length",
                usage: u(13, 5, 0, 0),
            }),
            // Bedrock-native fields pass through as sent. (The recorded body is stored as
            // text without its closing brace; it is checked with the brace added.)
            request: Check(
                |r| {
                    let mut o = system_and_user(r);
                    for k in ["requestMetadata", "additionalModelResponseFieldPaths", "additionalModelRequestFields", "promptVariables"] {
                        o[k] = r[k].clone();
                    }
                    o
                },
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_bedrock_model_service_tier",
            outcome: Answer(Expect {
                content: Text::Prefix("The capital of France is Paris. Paris is not only the capital city", 376),
                reasoning: None,
                tools: &[],
                finish: "length",
                usage: u(13, 5, 0, 0),
            }),
            request: Check(
                |r| {
                    let mut o = system_and_user(r);
                    o["service_tier"] = "default".into();
                    o
                },
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_bedrock_model_thinking_part_redacted__0",
            outcome: Answer(Expect {
                // Only redacted (encrypted) reasoning: no reasoning_content.
                content: Text::Prefix("I notice you've sent what appears to be some kind of trigger", 388),
                reasoning: None,
                tools: &[],
                finish: "stop",
                usage: u(92, 176, 0, 0),
            }),
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)}], "reasoning_effort": "low"}),
                false,
                &[THINKING_MAX_TOKENS],
            ),
        },
        Case {
            id: "pai-test_bedrock_model_thinking_part_redacted__1",
            outcome: Answer(Expect {
                content: Text::Prefix("That appeared to be an attempt to access internal systems", 669),
                reasoning: None,
                tools: &[],
                finish: "stop",
                usage: u(182, 258, 0, 0),
            }),
            // The redacted reasoning block of the history cannot travel through OpenAI
            // messages (it is left out on both sides of the comparison).
            request: Check(
                |r| json!({"messages": [{"role": "user", "content": text_at(r, 0, 0)},
                    {"role": "assistant", "content": text_at(r, 1, 1)},
                    {"role": "user", "content": text_at(r, 2, 0)}], "reasoning_effort": "low"}),
                false,
                &[THINKING_MAX_TOKENS],
            ),
        },
        Case {
            id: "pai-test_bedrock_model_with_code_execution_tool__1",
            outcome: Answer(Expect {
                content: Text::Null,
                reasoning: None,
                tools: &[("tooluse_RyG7SphVTsuS_8GFmX9hIA", "final_result", "{\"result\":14013304.0}")],
                finish: "tool_calls",
                usage: u(1148, 59, 0, 0),
            }),
            request: Skip(SERVER_TOOLS),
        },
        Case {
            id: "pai-test_image_url_input__1",
            outcome: Answer(Expect {
                content: Text::Prefix("The image shows a potato.", 399),
                reasoning: None,
                tools: &[],
                finish: "stop",
                usage: u(1837, 82, 0, 0),
            }),
            request: Check(
                |r| {
                    let image = &r["messages"][0]["content"][1]["image"];
                    json!({"messages": [{"role": "system", "content": r["system"][0]["text"]},
                        {"role": "user", "content": [{"type": "text", "text": text_at(r, 0, 0)},
                            {"type": "image_url", "image_url": {"url": format!("data:image/{};base64,{}",
                                image["format"].as_str().unwrap(), image["source"]["bytes"].as_str().unwrap())}}]}]})
                },
                false,
                &[],
            ),
        },
        Case {
            id: "pai-test_model_name_suggestion_bedrock",
            // No x-amzn-errortype was recorded: the 400 and the message classify it.
            outcome: Error(400, 400, "model_not_found", "invalid_request_error"),
            request: Check(system_and_user, false, &[]),
        },
        Case {
            id: "pai-test_multimodal_tool_return_matrix_direct-uploaded_file-image-bedrock_claude__1",
            outcome: Error(400, 400, "invalid_request_error", "invalid_request_error"),
            request: Skip(S3_MEDIA),
        },
        Case {
            id: "pai-test_multimodal_tool_return_matrix_direct-uploaded_file-video-bedrock_claude__1",
            outcome: Error(400, 400, "invalid_request_error", "invalid_request_error"),
            request: Skip(S3_MEDIA),
        },
        Case {
            id: "pai-test_multimodal_tool_return_matrix_direct-uploaded_file-video-bedrock_nova__1",
            outcome: Error(400, 400, "invalid_request_error", "invalid_request_error"),
            request: Skip(S3_MEDIA),
        },
    ]
}

/// The text of content block `block` of recorded message `msg`.
fn text_at(r: &Value, msg: usize, block: usize) -> Value {
    r["messages"][msg]["content"][block]["text"].clone()
}

/// The recorded system text (if any) and first user text as OpenAI messages.
fn system_and_user(r: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = r["system"][0]["text"].as_str() {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": text_at(r, 0, 0)}));
    json!({ "messages": messages })
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

const PROVIDER: &str = "bedrock";
/// The model alias of the client requests.
const ALIAS: &str = "chat";

fn no_env(_: &str) -> Option<String> {
    None
}

fn adapter_with(auto_cache: bool, drop: bool) -> BedrockAdapter {
    let cfg: ProviderConfig = serde_json::from_value(json!({
        "name": "bedrock", "kind": "bedrock", "region": "us-east-1",
        "aws": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"},
        "auto_cache": auto_cache, "drop_unsupported_params": drop,
    }))
    .unwrap();
    let base = BaseUrl::parse("https://bedrock-runtime.us-east-1.amazonaws.com").unwrap();
    BedrockAdapter::new_with_env(&cfg, &base, &no_env).unwrap()
}

fn adapter() -> BedrockAdapter {
    adapter_with(false, false)
}

fn load(id: &str) -> Value {
    common::load(PROVIDER, id)
}

/// The model id of a recorded request, decoded from its path.
fn recorded_model(case: &Value) -> String {
    let path = case["request"]["path"].as_str().unwrap();
    let enc = path
        .strip_prefix("/model/")
        .and_then(|p| p.rsplit_once('/'))
        .unwrap()
        .0;
    percent_encoding::percent_decode_str(enc)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

/// The recorded request body as JSON (one case stores it as text without its last brace).
fn recorded_body(case: &Value) -> Value {
    match &case["request"]["body"] {
        Value::String(s) => serde_json::from_str(s)
            .or_else(|_| serde_json::from_str(&format!("{s}}}")))
            .unwrap(),
        other => other.clone(),
    }
}

fn stream_wire(case: &Value) -> Option<Vec<u8>> {
    let b64 = case["response"]["body_base64"].as_str()?;
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("body_base64 is base64"),
    )
}

const MODEL: &str = "us.amazon.nova-2-lite-v1:0";
/// The completion id the stream translator is pinned to.
const STREAM_ID: &str = "chatcmpl-corpus";

fn translate_stream(req: &ChatRequest, chunks: &[&[u8]]) -> Vec<u8> {
    let mut t = adapter().translator_with(req, MODEL, CREATED, STREAM_ID);
    common::feed_all(&mut t, chunks)
}

fn stream_request() -> ChatRequest {
    common::chat_request(common::streamed_question(true), ALIAS)
}
/// The recorded decoding and ours agree frame for frame (headers and JSON payload).
fn check_decoding(id: &str, case: &Value, wire: &[u8]) {
    let mut d = Decoder::default();
    d.push(wire);
    let mut frames = Vec::new();
    while let Some(f) = d.next_frame().unwrap() {
        frames.push(f);
    }
    assert_eq!(d.buffered(), 0, "{id}: no trailing bytes");
    let recorded = case["response"]["eventstream_events"].as_array().unwrap();
    assert_eq!(frames.len(), recorded.len(), "{id}: frame count");
    for (f, r) in frames.iter().zip(recorded) {
        let headers: serde_json::Map<String, Value> = f
            .headers
            .iter()
            .map(|(k, v)| match v {
                HeaderValue::String(s) => (k.clone(), Value::String(s.clone())),
                other => panic!("{id}: unexpected header {k}: {other:?}"),
            })
            .collect();
        assert_eq!(Value::Object(headers), r["headers"], "{id}: headers");
        let payload: Value = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(payload, r["payload"], "{id}: payload");
    }
}

fn check_answer(id: &str, case: &Value, want: &Expect) {
    let resp = &case["response"];
    if let Some(wire) = stream_wire(case) {
        check_decoding(id, case, &wire);
        let req = stream_request();
        let got = common::assemble(&translate_stream(&req, &[&wire]));
        assert_eq!(
            (got.id.as_str(), got.model.as_str()),
            (STREAM_ID, MODEL),
            "{id}: id/model"
        );
        check_text(id, "content", got.content.as_deref(), &want.content);
        check_reasoning(id, got.reasoning.as_deref(), want.reasoning);
        check_tools(id, &got.tools, want.tools);
        assert_eq!(got.finish, want.finish, "{id}: finish_reason");
        check_usage(id, &got.usage, &want.usage);
        let mut t = adapter().translator_at(&req, MODEL, CREATED);
        let mut sink = BytesMut::new();
        t.feed(&wire, &mut sink).unwrap();
        check_usage(
            id,
            &serde_json::to_value(t.usage().unwrap()).unwrap(),
            &want.usage,
        );
    } else {
        let body = serde_json::to_vec(&resp["body"]).unwrap();
        let req = common::chat_request(common::question(), ALIAS);
        let model = recorded_model(case);
        let t = adapter().chat_response(&req, &model, &body).unwrap();
        common::check_usage_end(id, &t);
        assert!(
            t.usage_end.is_some(),
            "{id}: a built body knows where its usage ends"
        );
        let out: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["model"], model.as_str(), "{id}: model");
        let msg = &out["choices"][0]["message"];
        assert_eq!(msg["role"], "assistant");
        check_text(id, "content", msg["content"].as_str(), &want.content);
        check_reasoning(id, msg["reasoning_content"].as_str(), want.reasoning);
        check_tools(id, &common::message_tool_calls(msg), want.tools);
        assert_eq!(
            out["choices"][0]["finish_reason"], want.finish,
            "{id}: finish_reason"
        );
        check_usage(id, &out["usage"], &want.usage);
        assert_eq!(
            serde_json::to_value(t.usage.unwrap()).unwrap(),
            out["usage"],
            "{id}: reported usage"
        );
        if let Some(total) = resp["body"]["usage"]["totalTokens"].as_u64() {
            assert_eq!(
                out["usage"]["total_tokens"], total,
                "{id}: Bedrock's own total"
            );
        }
    }
}

fn check_error(id: &str, case: &Value, upstream: u16, client: u16, code: &str, kind: &str) {
    let f = common::replay_error(id, case, &adapter(), upstream, "/message");
    assert_eq!(
        (f.code(), f.error_type()),
        (Some(code), Some(kind)),
        "{id}: code/type"
    );
    common::assert_client_sees(id, f, client, code);
}
/// The fields of a Converse body that carry meaning, in a comparable form: empty
/// `inferenceConfig`/`system` and the default `toolChoice: auto` removed, `toolResult`'s
/// default `status: success` removed, whitespace-only text blocks left out (llmux never sends
/// them: Converse rejects blank text), and reasoning blocks left out of the history (OpenAI
/// messages cannot carry their signatures).
fn essentials(body: &Value) -> Value {
    let mut out = body.as_object().unwrap().clone();
    if out.get("inferenceConfig") == Some(&json!({})) {
        out.remove("inferenceConfig");
    }
    if out.get("system") == Some(&json!([])) {
        out.remove("system");
    }
    if let Some(tc) = out.get_mut("toolConfig").and_then(Value::as_object_mut) {
        if tc.get("toolChoice") == Some(&json!({"auto": {}})) {
            tc.remove("toolChoice");
        }
    }
    let messages: Vec<Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let blocks: Vec<Value> = m["content"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b.get("reasoningContent").is_none())
                .filter(|b| !b["text"].as_str().is_some_and(|t| t.trim().is_empty()))
                .map(|b| {
                    let mut b = b.clone();
                    if let Some(r) = b.get_mut("toolResult").and_then(Value::as_object_mut) {
                        if r.get("status") == Some(&json!("success")) {
                            r.remove("status");
                        }
                    }
                    b
                })
                .collect();
            json!({"role": m["role"], "content": blocks})
        })
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
    let recorded = recorded_body(case);
    let mut openai = openai(&recorded);
    let stream = case["request"]["path"]
        .as_str()
        .unwrap()
        .ends_with("/converse-stream");
    if stream {
        openai["stream"] = true.into();
    }
    let req = common::chat_request(openai, ALIAS);
    let model = recorded_model(case);
    let up = adapter_with(auto_cache, false)
        .chat_request(&req, &model)
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(
        up.method,
        case["request"]["method"].as_str().unwrap(),
        "{id}"
    );
    assert_eq!(
        up.path,
        case["request"]["path"].as_str().unwrap(),
        "{id}: path"
    );
    let sent: Value = serde_json::from_slice(&up.body).unwrap();
    let (mut got, mut want) = (essentials(&sent), essentials(&recorded));
    common::drop_differing(&mut got, &mut want, differs);
    common::assert_same_request(id, &got, &want);
}

#[test]
fn every_corpus_file_is_replayed_or_listed() {
    let table = cases();
    common::assert_unique_ids(table.iter().map(|c| c.id));
    let files = common::corpus_files(&common::corpus_dir(PROVIDER));
    let (mut responses, mut requests, mut skipped) = (0, 0, Vec::new());
    for file in &files {
        let id = file
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("corpus file {file} is not a case file"));
        let c = table.iter().find(|c| c.id == id).unwrap_or_else(|| {
            panic!("corpus case {id} is neither checked nor listed in the table")
        });
        let case = load(id);
        assert_eq!(case["provider"], "bedrock");
        match &c.outcome {
            Outcome::Answer(want) => check_answer(id, &case, want),
            Outcome::Error(up, client, code, kind) => {
                check_error(id, &case, *up, *client, code, kind)
            }
        }
        responses += 1;
        assert!(
            !case["request"]["body"].is_null(),
            "{id}: every case has a request"
        );
        match &c.request {
            RequestSide::Skip(why) => {
                assert!(!why.is_empty());
                skipped.push(id);
            }
            RequestSide::Check(openai, auto_cache, differs) => {
                check_request(id, &case, *openai, *auto_cache, differs);
                requests += 1;
            }
        }
    }
    assert_eq!(
        responses,
        table.len(),
        "every table entry has its corpus file"
    );
    assert!(requests >= 10, "request sides checked: {requests}");
    eprintln!("bedrock corpus: {responses} responses checked, {requests} requests checked, request side skipped for {skipped:?}");
}

// ---------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------

fn recorded_streams() -> Vec<(String, Vec<u8>)> {
    common::streams_of(cases().iter().map(|c| c.id), |id| stream_wire(&load(id)))
}

#[test]
fn every_split_point_and_byte_by_byte_feeding_match_one_chunk() {
    let req = stream_request();
    let streams = recorded_streams();
    assert!(!streams.is_empty());
    for (id, wire) in streams {
        let whole = translate_stream(&req, &[&wire]);
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(translate_stream(&req, &bytes), whole, "{id}");
        for i in 0..=wire.len() {
            assert_eq!(
                translate_stream(&req, &[&wire[..i], &wire[i..]]),
                whole,
                "{id} at {i}"
            );
        }
    }
}

#[test]
fn a_flipped_bit_in_a_recorded_stream_is_a_protocol_failure() {
    let req = stream_request();
    for (id, wire) in recorded_streams() {
        // In the first frame (messageStart, no output yet): the attempt fails and may fail over.
        for byte in [0, 5, 9, 20, 60] {
            let mut bad = wire.clone();
            bad[byte] ^= 0x10;
            let mut t = adapter().translator_at(&req, MODEL, CREATED);
            let f = t.feed(&bad, &mut BytesMut::new()).unwrap_err();
            assert_eq!(f.kind, FailureKind::Protocol, "{id} byte {byte}");
        }
        // After output: an error event and [DONE].
        let mut bad = wire.clone();
        let n = bad.len();
        bad[n - 8] ^= 0x10;
        let mut t = adapter().translator_at(&req, MODEL, CREATED);
        let mut out = BytesMut::new();
        t.feed(&bad, &mut out).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.contains("\"error\"") && text.ends_with("data: [DONE]\n\n"),
            "{id}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_split_of_a_recorded_stream_gives_identical_output(
        pick in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..32),
    ) {
        let streams = recorded_streams();
        let (id, wire) = &streams[pick.index(streams.len())];
        let req = stream_request();
        let whole = translate_stream(&req, &[wire]);
        let pieces = common::split_at_cuts(wire, &cuts);
        prop_assert_eq!(translate_stream(&req, &pieces), whole, "{}", id);
    }
}

fn part() -> impl Strategy<Value = PartGen> {
    prop_oneof![
        12 => (text(), any::<bool>()).prop_map(|(t, c)| PartGen::Text(t, c)),
        4 => (0u8..10).prop_map(PartGen::Image),
        2 => (0u8..4).prop_map(PartGen::File),
        1 => Just(PartGen::Audio),
    ]
}

fn params() -> impl Strategy<Value = common::Params> {
    common::params(
        prop_oneof![Just(0u64), Just(1), Just(900), 1u64..20_000],
        0u8..MODELS.len() as u8,
        0u8..5,
    )
}

/// Generated requests for Bedrock: cache marks on the developer message and a tool too,
/// image formats Converse takes and refuses, tool call ids with characters it refuses or
/// over its length limit, and empty tool results.
const STYLE: RequestStyle = RequestStyle {
    model: ALIAS,
    cache_marks: true,
    image_url: |k| match k {
        0..=4 => "data:image/png;base64,iVBORw0KGgo=",
        5 => "https://example.com/a.jpg",
        6 => "data:image/webp;base64,UklGR==",
        7 => "data:image/svg+xml;base64,PHN2Zz4=",
        8 => "ftp://nope",
        _ => "data:image/gif,raw",
    },
    call_id: |i, k, args| match args % 4 {
        0 => format!("call.{i}:{k}"),
        1 => format!("call_{i}_{k}_{}", "x".repeat(70)),
        _ => format!("call_{i}_{k}"),
    },
    tool_result: |id| {
        if id.len().is_multiple_of(2) {
            json!("result")
        } else {
            json!("")
        }
    },
};

const MODELS: [&str; 4] = [
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "us.amazon.nova-pro-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
    "openai.gpt-oss-120b-1:0",
];

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Converse's rules for a request body; the error says which one broke.
fn obeys_converse_rules(b: &Value, claude: bool) -> Result<(), String> {
    let obj = b.as_object().ok_or("body not an object")?;
    for key in obj.keys() {
        let known = [
            "messages",
            "system",
            "inferenceConfig",
            "toolConfig",
            "additionalModelRequestFields",
            "serviceTier",
            "guardrailConfig",
            "additionalModelResponseFieldPaths",
            "promptVariables",
            "requestMetadata",
            "performanceConfig",
            "outputConfig",
        ];
        if !known.contains(&key.as_str()) {
            return Err(format!("unknown top-level field {key}"));
        }
    }
    let ic = &b["inferenceConfig"];
    if let Some(t) = ic.get("temperature") {
        let t = t.as_f64().ok_or("temperature not a number")?;
        if !(0.0..=1.0).contains(&t) {
            return Err(format!("temperature {t} outside 0..1"));
        }
        if claude && ic.get("topP").is_some() {
            return Err("both temperature and topP for Claude".into());
        }
    }
    if let Some(p) = ic.get("topP").and_then(Value::as_f64) {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("topP {p} outside 0..1"));
        }
    }
    if let Some(m) = ic.get("maxTokens") {
        if m.as_u64().is_none_or(|m| m < 1) {
            return Err(format!("maxTokens {m}"));
        }
    }
    if let Some(stops) = ic.get("stopSequences") {
        let stops = stops.as_array().ok_or("stopSequences not an array")?;
        if stops.is_empty() || stops.iter().any(|s| s.as_str().is_none_or(str::is_empty)) {
            return Err("empty stop sequences".into());
        }
    }
    if let Some(budget) = b
        .pointer("/additionalModelRequestFields/thinking/budget_tokens")
        .and_then(Value::as_u64)
    {
        let max = ic["maxTokens"]
            .as_u64()
            .ok_or("thinking without maxTokens")?;
        if budget >= max || budget < 1024 {
            return Err(format!("thinking budget {budget} vs maxTokens {max}"));
        }
    }
    let check_blocks = |blocks: &[Value], what: &str| -> Result<(), String> {
        if blocks.is_empty() {
            return Err(format!("{what}: no blocks"));
        }
        for (k, block) in blocks.iter().enumerate() {
            let o = block
                .as_object()
                .ok_or(format!("{what}: block not an object"))?;
            if o.len() != 1 {
                return Err(format!("{what}: a block is a union of one member: {block}"));
            }
            if let Some(t) = o.get("text") {
                if t.as_str().is_none_or(|t| t.trim().is_empty()) {
                    return Err(format!("{what}: blank text block"));
                }
            }
            if o.contains_key("cachePoint") && (k == 0 || blocks[k - 1].get("cachePoint").is_some())
            {
                return Err(format!("{what}: cachePoint first or doubled"));
            }
            if let Some(img) = o.get("image") {
                if !["png", "jpeg", "gif", "webp"].contains(&img["format"].as_str().unwrap_or("")) {
                    return Err(format!("{what}: bad image format"));
                }
                if img
                    .pointer("/source/bytes")
                    .and_then(Value::as_str)
                    .is_none()
                {
                    return Err(format!("{what}: image without bytes"));
                }
            }
            if let Some(d) = o.get("document") {
                let name = d["name"].as_str().unwrap_or("");
                if name.is_empty()
                    || name.contains("  ")
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || " -()[]".contains(c))
                {
                    return Err(format!("{what}: bad document name {name:?}"));
                }
            }
        }
        Ok(())
    };
    if let Some(system) = b.get("system") {
        let system = system.as_array().ok_or("system not an array")?;
        check_blocks(system, "system")?;
        if system
            .iter()
            .any(|s| s.get("text").is_none() && s.get("cachePoint").is_none())
        {
            return Err("system holds something other than text".into());
        }
    }
    let messages = b["messages"].as_array().ok_or("messages missing")?;
    if messages.is_empty() {
        return Err("no messages".into());
    }
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
        check_blocks(blocks, &format!("message {k}"))?;
        let mut seen_other = false;
        let mut answered: Vec<&str> = Vec::new();
        let mut calls: Vec<&str> = Vec::new();
        for block in blocks {
            if block.get("cachePoint").is_some() {
                continue;
            }
            if let Some(r) = block.get("toolResult") {
                any_tool_block = true;
                if want != "user" || seen_other {
                    return Err(format!("message {k}: misplaced toolResult"));
                }
                let id = r["toolUseId"].as_str().ok_or("toolResult without id")?;
                if !previous_calls.contains(&id) {
                    return Err(format!("message {k}: toolResult {id} answers nothing"));
                }
                let content = r["content"]
                    .as_array()
                    .ok_or("toolResult without content")?;
                check_blocks(content, &format!("message {k} toolResult"))?;
                answered.push(id);
            } else if let Some(u) = block.get("toolUse") {
                any_tool_block = true;
                if want != "assistant" {
                    return Err(format!("message {k}: toolUse from the user"));
                }
                let id = u["toolUseId"].as_str().ok_or("toolUse without id")?;
                if !valid_name(id) {
                    return Err(format!("bad toolUseId {id}"));
                }
                if !valid_name(u["name"].as_str().unwrap_or("")) || !u["input"].is_object() {
                    return Err(format!("bad toolUse {u}"));
                }
                calls.push(id);
                seen_other = true;
            } else {
                seen_other = true;
            }
        }
        if want == "user" {
            if let Some(missing) = previous_calls.iter().find(|c| !answered.contains(c)) {
                return Err(format!(
                    "toolUse {missing} has no toolResult in message {k}"
                ));
            }
        }
        previous_calls = calls;
    }
    if !previous_calls.is_empty() {
        return Err("the conversation ends with an unanswered toolUse".into());
    }
    let tools: Vec<&Value> = b["toolConfig"]["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let names: Vec<&str> = tools
        .iter()
        .filter_map(|t| t["toolSpec"]["name"].as_str())
        .collect();
    if any_tool_block && names.is_empty() {
        return Err("tool blocks without toolConfig".into());
    }
    if b.get("toolConfig").is_some() {
        if names.is_empty() {
            return Err("toolConfig without tools".into());
        }
        if tools.first().is_some_and(|t| t.get("cachePoint").is_some()) {
            return Err("toolConfig starts with a cachePoint".into());
        }
        for t in &tools {
            if let Some(spec) = t.get("toolSpec") {
                if !valid_name(spec["name"].as_str().unwrap_or(""))
                    || !spec
                        .pointer("/inputSchema/json")
                        .is_some_and(Value::is_object)
                {
                    return Err(format!("bad toolSpec {spec}"));
                }
            }
        }
        if let Some(name) = b
            .pointer("/toolConfig/toolChoice/tool/name")
            .and_then(Value::as_str)
        {
            if !names.contains(&name) {
                return Err(format!("toolChoice names unknown tool {name}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn random_requests_never_panic_and_obey_converse_rules(
        segs in prop::collection::vec(seg(part()), 0..10),
        p in params(),
    ) {
        let raw = common::build_request(&segs, &p, &STYLE);
        let req: ChatRequest = serde_json::from_value(raw.clone()).unwrap();
        let a = adapter_with(p.stream, p.drop);
        let model = MODELS[p.model as usize];
        match a.chat_request(&req, model) {
            Ok(up) => {
                let body: Value = serde_json::from_slice(&up.body).unwrap();
                if let Err(rule) = obeys_converse_rules(&body, p.model == 0) {
                    return Err(TestCaseError::fail(format!("{rule}\nrequest: {raw}\nbody: {body}")));
                }
                prop_assert_eq!(up.path.ends_with("/converse-stream"), p.stream);
                prop_assert!(up.headers.iter().any(|(k, v)| k == "authorization" && v.starts_with("AWS4-HMAC-SHA256 ")));
            }
            Err(e) => {
                prop_assert_eq!(e.status(), 400, "{}", e);
                prop_assert!(e.param().is_some(), "an error names its field: {}", e);
            }
        }
    }
}
