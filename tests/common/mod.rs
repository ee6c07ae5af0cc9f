//! Scaffolding shared by the corpus replay tests (`tests/corpus_*.rs`): reading recorded
//! exchanges from `../shared/corpus`, feeding streams through a translator in pieces,
//! reassembling and comparing the OpenAI output field by field, and the generators of the
//! random-request property tests. What a provider's cases expect, the request sides it
//! cannot produce (with the reasons) and its provider-specific checks stay in its own file.

// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use bytes::BytesMut;
use llmux::providers::{Adapter, StreamTranslator};
use llmux::types::{ChatRequest, FailureKind, GatewayError, UpstreamFailure};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------
// Corpus access
// ---------------------------------------------------------------------------------------

/// The recorded exchanges of one provider directory, read in place from `../shared/corpus`.
pub fn corpus_dir(provider: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus")
        .join(provider)
}

/// The file names in a corpus directory, sorted.
pub fn corpus_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("the corpus is read in place from ../shared/corpus")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    files
}

/// One recorded exchange (a corpus `.json` file).
pub fn read_case(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_slice(&bytes).unwrap()
}

/// The recorded exchange `id` of `provider`.
pub fn load(provider: &str, id: &str) -> Value {
    read_case(&corpus_dir(provider).join(format!("{id}.json")))
}

/// A table lists each corpus case once.
pub fn assert_unique_ids<'a>(ids: impl IntoIterator<Item = &'a str>) {
    let mut seen = BTreeSet::new();
    for id in ids {
        assert!(seen.insert(id), "duplicate table entry {id}");
    }
}

/// The recorded streams among `ids`, with their wire bytes.
pub fn streams_of<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    wire: impl Fn(&str) -> Option<Vec<u8>>,
) -> Vec<(String, Vec<u8>)> {
    ids.into_iter()
        .filter_map(|id| wire(id).map(|w| (id.to_owned(), w)))
        .collect()
}

/// A recorded non-stream body as sent: `body_text` where it was kept, else `body`.
pub fn recorded_body_bytes(resp: &Value) -> Vec<u8> {
    match resp["body_text"].as_str() {
        Some(t) => t.as_bytes().to_vec(),
        None => serde_json::to_vec(&resp["body"]).unwrap(),
    }
}

/// The recorded response headers.
pub fn recorded_headers(resp: &Value) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (k, v) in resp["headers"].as_object().unwrap() {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.as_str().unwrap().parse().unwrap(),
        );
    }
    headers
}

// ---------------------------------------------------------------------------------------
// Client requests and streams
// ---------------------------------------------------------------------------------------

/// The `created` timestamp the translators are pinned to.
pub const CREATED: u64 = 1_767_225_600;

/// A client request, with `model` set to `alias` when the body names none.
pub fn chat_request(mut v: Value, alias: &str) -> ChatRequest {
    if v.get("model").is_none() {
        v["model"] = alias.into();
    }
    serde_json::from_value(v).unwrap()
}

/// The one-message request the replays send when only the response matters.
pub fn question() -> Value {
    json!({"messages": [{"role": "user", "content": "x"}]})
}

/// [`question`], streamed.
pub fn streamed_question(include_usage: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "x"}], "stream": true,
        "stream_options": {"include_usage": include_usage}})
}

/// Feeds `chunks` to a translator, then finishes it: the client-ready bytes, or the first
/// failure.
pub fn try_feed_all(
    t: &mut dyn StreamTranslator,
    chunks: &[&[u8]],
) -> Result<Vec<u8>, UpstreamFailure> {
    let mut out = BytesMut::new();
    for c in chunks {
        t.feed(c, &mut out)?;
    }
    t.finish(&mut out)?;
    Ok(out.to_vec())
}

/// [`try_feed_all`] for a stream that must translate.
pub fn feed_all(t: &mut dyn StreamTranslator, chunks: &[&[u8]]) -> Vec<u8> {
    try_feed_all(t, chunks).unwrap()
}

/// `wire` cut at the generated points (sorted; empty pieces allowed).
pub fn split_at_cuts<'a>(wire: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut last = 0;
    for p in points {
        pieces.push(&wire[last..p]);
        last = p;
    }
    pieces.push(&wire[last..]);
    pieces
}

// ---------------------------------------------------------------------------------------
// Field-by-field comparison
// ---------------------------------------------------------------------------------------

/// Expected text (`content`, `reasoning_content`, or a server's own `reasoning`).
#[derive(Clone, Copy)]
pub enum Text {
    Exact(&'static str),
    /// Prefix and total length in characters.
    Prefix(&'static str, usize),
    /// `null` or absent.
    Null,
}

pub fn check_text(id: &str, what: &str, got: Option<&str>, want: &Text) {
    match want {
        Text::Exact(t) => assert_eq!(got, Some(*t), "{id}: {what}"),
        Text::Prefix(p, n) => {
            let got = got.unwrap_or_else(|| panic!("{id}: {what} missing"));
            assert!(
                got.starts_with(p),
                "{id}: {what} starts {:?}",
                got.chars().take(80).collect::<String>()
            );
            assert_eq!(got.chars().count(), *n, "{id}: {what} length");
        }
        Text::Null => assert_eq!(got, None, "{id}: no {what}"),
    }
}

/// `reasoning_content`: its prefix and length, or `None` when it must be absent.
pub fn check_reasoning(id: &str, got: Option<&str>, want: Option<(&'static str, usize)>) {
    match want {
        Some((p, n)) => check_text(id, "reasoning_content", got, &Text::Prefix(p, n)),
        None => assert_eq!(got, None, "{id}: no reasoning_content"),
    }
}

/// OpenAI usage as §11.2 computes it from the recorded numbers.
pub struct U {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub cache_write: u64,
}

pub const fn u(prompt: u64, completion: u64, cached: u64, cache_write: u64) -> U {
    U {
        prompt,
        completion,
        cached,
        cache_write,
    }
}

/// Prompt, completion and total tokens, `cached_tokens`, and `cache_write_tokens` (absent
/// counts as 0).
pub fn check_usage(id: &str, usage: &Value, want: &U) {
    let n = |p: &str| usage.pointer(p).and_then(Value::as_u64);
    assert_eq!(
        n("/prompt_tokens"),
        Some(want.prompt),
        "{id}: prompt_tokens"
    );
    assert_eq!(
        n("/completion_tokens"),
        Some(want.completion),
        "{id}: completion_tokens"
    );
    assert_eq!(
        n("/total_tokens"),
        Some(want.prompt + want.completion),
        "{id}: total_tokens"
    );
    assert_eq!(
        n("/prompt_tokens_details/cached_tokens"),
        Some(want.cached),
        "{id}: cached_tokens"
    );
    assert_eq!(
        n("/prompt_tokens_details/cache_write_tokens").unwrap_or(0),
        want.cache_write,
        "{id}: cache_write_tokens"
    );
}

/// Tool calls as (id, name, arguments); arguments are compared as parsed JSON.
pub fn check_tools(id: &str, got: &[(String, String, String)], want: &[(&str, &str, &str)]) {
    assert_eq!(got.len(), want.len(), "{id}: tool calls {got:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            (g.0.as_str(), g.1.as_str()),
            (w.0, w.1),
            "{id}: tool id/name"
        );
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(parse(&g.2), parse(w.2), "{id}: arguments of {}", w.1);
    }
}

/// The tool calls of a non-stream `message` as (id, name, arguments).
pub fn message_tool_calls(msg: &Value) -> Vec<(String, String, String)> {
    msg["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            assert_eq!(c["type"], "function");
            let s = |p: &str| c.pointer(p).and_then(Value::as_str).unwrap().to_owned();
            (s("/id"), s("/function/name"), s("/function/arguments"))
        })
        .collect()
}

/// What a client reassembles from a chunk stream, checking the chunk rules on the way.
pub struct Assembled {
    pub id: String,
    pub model: String,
    pub content: Option<String>,
    pub reasoning: Option<String>,
    pub tools: Vec<(String, String, String)>,
    pub finish: String,
    pub usage: Value,
}

/// Reassembles a translated stream: the role first, every chunk with the first one's id and
/// model and `created` = [`CREATED`], tool calls opened with an id and empty arguments then
/// continued by index, one finish chunk, the usage chunk last, exactly one `[DONE]`.
pub fn assemble(out: &[u8]) -> Assembled {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "ends with [DONE]");
    assert_eq!(
        text.matches("data: [DONE]").count(),
        1,
        "exactly one [DONE]"
    );
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("data events only")).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""}),
        "role first"
    );
    let (mut content, mut reasoning) = (String::new(), String::new());
    let mut tools: Vec<(String, String, String)> = Vec::new();
    let mut finish = None;
    let mut usage = Value::Null;
    for (k, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(
            (&c["id"], &c["model"], &c["created"]),
            (&chunks[0]["id"], &chunks[0]["model"], &json!(CREATED))
        );
        if c["choices"] == json!([]) {
            assert_eq!(k, chunks.len() - 1, "the usage chunk is last");
            usage = c["usage"].clone();
            continue;
        }
        assert!(finish.is_none(), "nothing after the finish chunk but usage");
        let choice = &c["choices"][0];
        let delta = &choice["delta"];
        if let Some(f) = choice["finish_reason"].as_str() {
            assert_eq!(*delta, json!({}), "finish chunk has an empty delta");
            finish = Some(f.to_owned());
        }
        content.push_str(delta["content"].as_str().unwrap_or(""));
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if let Some(id) = call["id"].as_str() {
                assert_eq!(index, tools.len(), "tool indexes count up from 0");
                assert_eq!(call["type"], "function");
                assert_eq!(
                    call["function"]["arguments"], "",
                    "the first delta never carries the {{}} placeholder"
                );
                tools.push((
                    id.to_owned(),
                    call["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            } else {
                assert!(call.get("type").is_none() && call["function"].get("name").is_none());
                tools[index]
                    .2
                    .push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    Assembled {
        id: chunks[0]["id"].as_str().unwrap().to_owned(),
        model: chunks[0]["model"].as_str().unwrap().to_owned(),
        content: (!content.is_empty()).then_some(content),
        reasoning: (!reasoning.is_empty()).then_some(reasoning),
        tools,
        finish: finish.expect("a finish chunk"),
        usage,
    }
}

/// Replays a recorded error response through the adapter: the failure keeps the upstream
/// status and the provider's message (found at `message_at` in the body). The caller checks
/// what else its provider maps.
pub fn replay_error(
    id: &str,
    case: &Value,
    adapter: &impl Adapter,
    upstream: u16,
    message_at: &str,
) -> UpstreamFailure {
    let resp = &case["response"];
    assert_eq!(resp["status"], upstream, "{id}: recorded status");
    let body = serde_json::to_vec(&resp["body"]).unwrap();
    let f = adapter.error(upstream, &recorded_headers(resp), &body);
    assert_eq!(f.kind, FailureKind::Status(upstream), "{id}");
    let message = resp["body"].pointer(message_at).and_then(Value::as_str);
    assert!(f.message.contains(message.unwrap()), "{id}: message kept");
    f
}

/// The status and `error.code` a client sees for a failed single attempt.
pub fn assert_client_sees(id: &str, failure: UpstreamFailure, status: u16, code: &str) {
    let e = GatewayError::Upstream {
        failure,
        attempts: 1,
    };
    assert_eq!(
        (e.status(), e.code().as_str()),
        (status, code),
        "{id}: what the client sees"
    );
}

/// Leaves the top-level fields that differ by design (each with its reason) out of both
/// request bodies.
pub fn drop_differing(got: &mut Value, want: &mut Value, differs: &[(&str, &str)]) {
    for (field, why) in differs {
        assert!(!why.is_empty());
        got.as_object_mut().unwrap().remove(*field);
        want.as_object_mut().unwrap().remove(*field);
    }
}

/// The translated request body equals the recorded one (both already in comparable form).
pub fn assert_same_request(id: &str, got: &Value, want: &Value) {
    assert_eq!(
        got,
        want,
        "{id}: translated request\n got: {}\nwant: {}",
        serde_json::to_string_pretty(got).unwrap(),
        serde_json::to_string_pretty(want).unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// Random OpenAI requests (property tests)
// ---------------------------------------------------------------------------------------

/// One step of a generated conversation.
#[derive(Debug, Clone)]
pub enum Seg {
    System(&'static str),
    Developer(&'static str),
    User(Vec<PartGen>),
    UserText(&'static str),
    Assistant(Option<&'static str>),
    /// Tool calls (count, argument style, how results come back).
    Calls(Option<&'static str>, usize, u8, u8),
    OrphanTool,
}

/// One part of a user message (each provider's `part()` picks which kinds it generates).
#[derive(Debug, Clone)]
pub enum PartGen {
    Text(&'static str, bool),
    Image(u8),
    File(u8),
    Audio,
}

pub const TEXTS: &[&str] = &[
    "",
    " ",
    "\n\t",
    "hello",
    "  padded  ",
    "日本語のテキスト",
    "trailing \n",
    "{\"json\": true}",
];

pub fn text() -> impl Strategy<Value = &'static str> {
    prop::sample::select(TEXTS)
}

pub fn seg(part: impl Strategy<Value = PartGen>) -> impl Strategy<Value = Seg> {
    prop_oneof![
        6 => text().prop_map(Seg::System),
        4 => text().prop_map(Seg::Developer),
        12 => prop::collection::vec(part, 0..4).prop_map(Seg::User),
        16 => text().prop_map(Seg::UserText),
        10 => prop::option::of(text()).prop_map(Seg::Assistant),
        16 => (prop::option::of(text()), 1usize..4, 0u8..24, 0u8..24).prop_map(|(c, n, a, r)| Seg::Calls(c, n, a, r)),
        1 => Just(Seg::OrphanTool),
    ]
}

#[derive(Debug, Clone)]
pub struct Params {
    pub tools: u8,
    pub tool_choice: u8,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u64>,
    pub n: Option<u32>,
    pub seed: bool,
    pub stop: u8,
    pub parallel: Option<bool>,
    pub format: u8,
    pub effort: u8,
    pub stream: bool,
    pub drop: bool,
    /// Which of the provider's models (its own table; 0 where it has one).
    pub model: u8,
    /// Which `service_tier` (0: none).
    pub tier: u8,
}

/// Request parameters, with the provider's choice of `max_completion_tokens` values, model
/// indexes and service tiers.
pub fn params(
    max_tokens: impl Strategy<Value = u64>,
    model: impl Strategy<Value = u8>,
    tier: impl Strategy<Value = u8>,
) -> impl Strategy<Value = Params> {
    (
        (
            0u8..4,
            prop_oneof![8 => 0u8..5, 1 => 5u8..7],
            prop::option::of(0.0f64..2.0),
            prop::option::of(0.0f64..1.0),
            prop::option::of(max_tokens),
        ),
        (
            prop::option::weighted(0.15, 1u32..3),
            prop::bool::weighted(0.1),
            0u8..4,
            prop::option::of(any::<bool>()),
        ),
        (
            0u8..4,
            prop_oneof![6 => 0u8..4, 1 => 4u8..6],
            any::<bool>(),
            any::<bool>(),
            model,
            tier,
        ),
    )
        .prop_map(
            |(
                (tools, tool_choice, temperature, top_p, max_tokens),
                (n, seed, stop, parallel),
                (format, effort, stream, drop, model, tier),
            )| Params {
                tools,
                tool_choice,
                temperature,
                top_p,
                max_tokens,
                n,
                seed,
                stop,
                parallel,
                format,
                effort,
                stream,
                drop,
                model,
                tier,
            },
        )
}

/// What a provider's generated requests do their own way.
pub struct RequestStyle {
    /// The request's `model`.
    pub model: &'static str,
    /// Mark the developer message and the third tool with `cache_control`.
    pub cache_marks: bool,
    /// The URL of image part `k` (0..10).
    pub image_url: fn(u8) -> &'static str,
    /// The id of tool call `k` in segment `i`, by argument style `args`.
    pub call_id: fn(usize, usize, u8) -> String,
    /// The content of the tool result answering call `id`.
    pub tool_result: fn(&str) -> Value,
}

pub fn build_messages(segs: &[Seg], style: &RequestStyle) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        match s {
            Seg::System(t) => out.push(json!({"role": "system", "content": t})),
            Seg::Developer(t) => {
                let mut part = json!({"type": "text", "text": t});
                if style.cache_marks {
                    part["cache_control"] = json!({"type": "ephemeral"});
                }
                out.push(json!({"role": "developer", "content": [part]}))
            }
            Seg::UserText(t) => out.push(json!({"role": "user", "content": t})),
            Seg::User(parts) => {
                let parts: Vec<Value> = parts
                    .iter()
                    .map(|p| match p {
                        PartGen::Text(t, true) => json!({"type": "text", "text": t, "cache_control": {"type": "ephemeral"}}),
                        PartGen::Text(t, false) => json!({"type": "text", "text": t}),
                        PartGen::Image(k) => {
                            json!({"type": "image_url", "image_url": {"url": (style.image_url)(*k), "detail": "low"}})
                        }
                        PartGen::File(k) => match k {
                            0 => json!({"type": "file", "file": {"filename": "a b.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}),
                            1 => json!({"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}}),
                            2 => json!({"type": "file", "file": {"file_id": "file-1"}}),
                            _ => json!({"type": "file", "file": {"file_data": "data:application/zip;base64,UEs="}}),
                        },
                        PartGen::Audio => json!({"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}),
                    })
                    .collect();
                out.push(json!({"role": "user", "content": parts}));
            }
            Seg::Assistant(t) => out.push(json!({"role": "assistant", "content": t})),
            Seg::Calls(content, n, args, results) => {
                let ids: Vec<String> = (0..*n).map(|k| (style.call_id)(i, k, *args)).collect();
                let calls: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(k, id)| {
                        let arguments = match (args, k) {
                            (23, 0) => "{\"broken\": ".to_owned(),
                            (22, _) => String::new(),
                            _ => format!("{{\"k\": {k}, \"s\": \"x\"}}"),
                        };
                        json!({"id": id, "type": "function", "function": {"name": if k % 2 == 0 { "f" } else { "g" }, "arguments": arguments}})
                    })
                    .collect();
                out.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
                let tool = |id: &String| json!({"role": "tool", "tool_call_id": id, "content": (style.tool_result)(id)});
                match results {
                    0..=14 => out.extend(ids.iter().map(tool)),
                    15..=17 => out.extend(ids.iter().rev().map(tool)),
                    18..=20 => {
                        out.push(json!({"role": "user", "content": "also this"}));
                        out.extend(ids.iter().map(tool));
                    }
                    21 => out.extend(ids.iter().skip(1).map(tool)),
                    22 => {
                        out.extend(ids.iter().map(tool));
                        out.push(tool(&ids[0]));
                    }
                    _ => {}
                }
            }
            Seg::OrphanTool => {
                out.push(json!({"role": "tool", "tool_call_id": "call_nobody", "content": "x"}))
            }
        }
    }
    out
}

pub fn build_request(segs: &[Seg], p: &Params, style: &RequestStyle) -> Value {
    let mut r = json!({"model": style.model, "messages": build_messages(segs, style)});
    let names = ["f", "g", "h"];
    if p.tools > 0 {
        r["tools"] = (0..p.tools as usize)
            .map(|k| {
                let mut t = json!({"type": "function", "function": {"name": names[k], "description": "d",
                "parameters": {"type": "object", "properties": {"k": {"type": "integer", "minimum": 0}}}, "strict": k == 1}});
                if style.cache_marks && k == 2 {
                    t["cache_control"] = json!({"type": "ephemeral"});
                }
                t
            })
            .collect();
    }
    let choice = match p.tool_choice {
        0 => Value::Null,
        1 => json!("auto"),
        2 => json!("none"),
        3 => json!("required"),
        4 => json!({"type": "function", "function": {"name": "f"}}),
        5 => json!({"type": "function", "function": {"name": "zzz"}}),
        _ => json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}),
    };
    if !choice.is_null() {
        r["tool_choice"] = choice;
    }
    let set = |r: &mut Value, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            r[k] = v;
        }
    };
    set(&mut r, "temperature", p.temperature.map(Value::from));
    set(&mut r, "top_p", p.top_p.map(Value::from));
    set(
        &mut r,
        "max_completion_tokens",
        p.max_tokens.map(Value::from),
    );
    set(&mut r, "n", p.n.map(Value::from));
    set(&mut r, "seed", p.seed.then(|| json!(42)));
    set(
        &mut r,
        "stop",
        [
            None,
            Some(json!("END")),
            Some(json!(["a", ""])),
            Some(json!([])),
        ][p.stop as usize]
            .clone(),
    );
    set(&mut r, "parallel_tool_calls", p.parallel.map(Value::from));
    set(&mut r, "response_format", [None, Some(json!({"type": "text"})), Some(json!({"type": "json_object"})),
        Some(json!({"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}}}))][p.format as usize].clone());
    set(
        &mut r,
        "reasoning_effort",
        [
            None,
            Some("none"),
            Some("low"),
            Some("high"),
            Some("bogus"),
            Some("max"),
        ][p.effort as usize]
            .map(Value::from),
    );
    set(
        &mut r,
        "service_tier",
        [
            None,
            Some("auto"),
            Some("flex"),
            Some("priority"),
            Some("scale"),
        ][p.tier as usize]
            .map(Value::from),
    );
    if p.stream {
        r["stream"] = true.into();
        r["stream_options"] = json!({"include_usage": true});
    }
    r
}

/// Where an adapter says the body's `usage` object ends, writing the cost there gives the
/// same body as the proxy's byte scan for it: the offset is a shortcut, never a change.
pub fn check_usage_end(id: &str, t: &llmux::providers::TranslatedResponse) {
    use llmux::providers::openai_out::{insert_usage_cost, insert_usage_cost_at};
    let Some(end) = t.usage_end else { return };
    assert_eq!(
        t.body.get(end),
        Some(&b'}'),
        "{id}: usage_end is the `}}` of usage"
    );
    assert_eq!(
        insert_usage_cost_at(&t.body, Some(end), "0.5"),
        insert_usage_cost(&t.body, "0.5"),
        "{id}: cost written at usage_end"
    );
}
