//! The OpenAI dialects: Mistral, DeepSeek, Qwen (DashScope), Azure OpenAI, local server.

use super::{at, get, mock, s, send, start, tools, with, Headers, Resp, WEATHER_0, WEATHER_1};
use crate::mock::behavior::reply_text;
use crate::mock::{guess_flavor, Flavor, MockOptions};
use serde_json::{json, Value};

const KEY: Headers = &[("authorization", "Bearer sk-test")];
const AZ_KEY: Headers = &[("api-key", "az-secret")];
const MISTRAL: &str = "/mistral/v1/chat/completions";
const DEEPSEEK: &str = "/deepseek/chat/completions";
const QWEN: &str = "/qwen/compatible-mode/v1/chat/completions";
const COMPAT: &str = "/compat/v1/chat/completions";

fn azure_path(deployment: &str) -> String {
    format!("/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21")
}

fn ask(model: &str, extra: Value) -> Value {
    let base = json!({"model": model, "messages": [{"role": "user", "content": "What is the capital of Mexico?"}]});
    with(base, extra)
}

/// SSE `data:` payloads, comments and blank lines skipped; `[DONE]` as a string.
fn data(r: &Resp) -> Vec<Value> {
    r.text()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or(Value::String(d.into())))
        .collect()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .map(|c| s(c, "/choices/0/delta/content"))
        .collect()
}

/// `name(arguments)` of each tool call in a message.
fn calls(message: &Value) -> Vec<String> {
    let calls = message["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    calls
        .iter()
        .map(|c| {
            format!(
                "{}({})",
                s(c, "/function/name"),
                s(c, "/function/arguments")
            )
        })
        .collect()
}

/// Tool calls reassembled from stream deltas (fragments or whole calls).
fn streamed_calls(chunks: &[Value]) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for c in chunks {
        for tc in at(c, "/choices/0/delta/tool_calls")
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap_or(0) as usize;
            if out.len() <= i {
                out.resize(i + 1, Default::default());
            }
            out[i].0.push_str(s(tc, "/id"));
            out[i].1.push_str(s(tc, "/function/name"));
            out[i].2.push_str(s(tc, "/function/arguments"));
        }
    }
    out
}

fn tool_turn(id1: &str, id2: &str) -> Value {
    let call = |id: &str| json!({"id": id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}});
    json!([{"role": "user", "content": "weather?"},
           {"role": "assistant", "content": "", "tool_calls": [call(id1), call(id2)]},
           {"role": "tool", "tool_call_id": id1, "content": "sunny"},
           {"role": "tool", "tool_call_id": id2, "content": "rainy"}])
}

#[tokio::test]
async fn mistral_text_stream_and_usage() {
    let m = mock().await;
    let v = send(
        &m,
        "POST",
        MISTRAL,
        KEY,
        &ask("mistral-large-latest", json!({})),
    )
    .await
    .json();
    let id = s(&v, "/id");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        s(&v, "/choices/0/message/content"),
        reply_text("What is the capital of Mexico?")
    );
    assert!(v["choices"][0]["message"]["tool_calls"].is_null());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0].get("logprobs").is_none());
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    let r = send(
        &m,
        "POST",
        MISTRAL,
        KEY,
        &ask("mistral-large-latest", json!({"stream": true})),
    )
    .await;
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let chunks = data(&r);
    let n = chunks.len();
    assert_eq!(chunks[n - 1], "[DONE]");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(streamed_text(&chunks), s(&v, "/choices/0/message/content"));
    let last = &chunks[n - 2];
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({"content": ""}));
    assert_eq!(
        last["usage"]["completion_tokens"],
        v["usage"]["completion_tokens"]
    );
    assert!(
        chunks[..n - 2].iter().all(|c| c.get("usage").is_none()),
        "usage only on the last chunk"
    );
}

#[tokio::test]
async fn mistral_tool_calls_whole_with_nine_char_ids() {
    let m = mock().await;
    let v = send(
        &m,
        "POST",
        MISTRAL,
        KEY,
        &ask(
            "mistral-small",
            json!({"tools": [tools()[0]], "tool_choice": "any"}),
        ),
    )
    .await
    .json();
    let msg = &v["choices"][0]["message"];
    assert_eq!(calls(msg), [WEATHER_0, WEATHER_1]);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    for c in msg["tool_calls"].as_array().unwrap() {
        let id = s(c, "/id");
        assert!(
            id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{id}"
        );
    }
    let required = ask(
        "mistral-small",
        json!({"tools": tools(), "tool_choice": "required", "stream": true}),
    );
    let chunks = data(&send(&m, "POST", MISTRAL, KEY, &required).await);
    let with_calls: Vec<&Value> = chunks
        .iter()
        .filter(|c| at(c, "/choices/0/delta/tool_calls").is_array())
        .collect();
    assert_eq!(with_calls.len(), 1, "both calls whole in one delta");
    let got = streamed_calls(&chunks);
    assert_eq!(
        (got[0].1.as_str(), got[1].1.as_str()),
        ("get_weather", "get_time")
    );
    assert_eq!(got[1].2, r#"{"tz":2.5}"#);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "tool_calls"
    );
    let turn = ask(
        "mistral-small",
        json!({"messages": tool_turn("abcDEF123", "XYZ987klm"), "tools": tools()}),
    );
    let v = send(&m, "POST", MISTRAL, KEY, &turn).await.json();
    assert_eq!(
        s(&v, "/choices/0/message/content"),
        "tool results received: 2"
    );
}

#[tokio::test]
async fn mistral_rejects_like_la_plateforme() {
    let m = mock().await;
    let post = |body: Value| {
        let m = &m;
        async move { send(m, "POST", MISTRAL, KEY, &body).await }
    };
    // Tool-call ids of another provider, in the assistant turn and in the tool message.
    let r = post(ask(
        "m",
        json!({"messages": tool_turn("call_abc123", "XYZ987klm")}),
    ))
    .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(
        v["message"],
        "Tool call id was call_abc123 but must be a-z, A-Z, 0-9, with a length of 9."
    );
    assert_eq!(
        (s(&v, "/object"), s(&v, "/type"), s(&v, "/code")),
        ("error", "invalid_function_call", "3280")
    );
    let mut msgs = tool_turn("abcDEF123", "XYZ987klm");
    msgs[3]["tool_call_id"] = "toolu_01X".into();
    let r = post(ask("m", json!({ "messages": msgs }))).await;
    assert_eq!(
        s(&r.json(), "/message"),
        "Tool call id was toolu_01X but must be a-z, A-Z, 0-9, with a length of 9."
    );
    // Empty assistant message.
    let msgs = json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "b"}]);
    let r = post(ask("m", json!({ "messages": msgs }))).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "Assistant message must have either content or tool_calls, but not none."
    );
    // A closed schema: OpenAI-only fields and misplaced message keys are 422 extra_forbidden.
    let msgs = json!([{"role": "user", "content": "a", "name": "bob"}]);
    let r = post(ask(
        "m",
        json!({"messages": msgs, "stream_options": {"include_usage": true}, "seed": 1}),
    ))
    .await;
    assert_eq!(r.status, 422);
    let detail = r.json()["message"]["detail"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let locs: Vec<String> = detail.iter().map(|d| d["loc"].to_string()).collect();
    assert_eq!(
        locs,
        [
            r#"["body","stream_options"]"#,
            r#"["body","seed"]"#,
            r#"["body","messages",0,"user","name"]"#
        ]
    );
    assert!(detail.iter().all(|d| d["type"] == "extra_forbidden"));
    let msgs = json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "x", "reasoning_content": "t"}, {"role": "user", "content": "b"}]);
    assert_eq!(
        post(ask("m", json!({ "messages": msgs }))).await.status,
        422
    );
    let r = post(ask(
        "m",
        json!({"messages": [{"role": "developer", "content": "x"}]}),
    ))
    .await;
    assert_eq!(
        r.json()["message"]["detail"][0]["type"],
        "union_tag_invalid"
    );
    // The last message must be the user's (or a tool result, or an assistant prefix).
    let msgs = json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]);
    let r = post(ask("m", json!({ "messages": msgs.clone() }))).await;
    assert_eq!(r.json()["message"], "Expected last role User or Tool (or Assistant with prefix True) for serving but got assistant");
    let mut prefixed = msgs;
    prefixed[1]["prefix"] = true.into();
    assert_eq!(
        post(ask("m", json!({ "messages": prefixed }))).await.status,
        200
    );
    // Results must match calls; tool_choice values.
    let mut msgs = tool_turn("abcDEF123", "XYZ987klm");
    msgs.as_array_mut().unwrap().pop();
    let r = post(ask("m", json!({ "messages": msgs }))).await;
    assert_eq!(
        r.json()["message"],
        "Not the same number of function calls and responses"
    );
    assert_eq!(
        post(ask(
            "m",
            json!({"tools": tools(), "tool_choice": "sometimes"})
        ))
        .await
        .status,
        422
    );
    // Auth.
    let r = send(&m, "POST", MISTRAL, &[], &ask("m", json!({}))).await;
    assert_eq!((r.status, s(&r.json(), "/message")), (401, "Unauthorized"));
}

#[tokio::test]
async fn deepseek_cache_usage_keep_alive_and_reasoning() {
    let m = mock().await;
    let long = "cache me ".repeat(100);
    let messages =
        |q: &str| json!([{"role": "system", "content": long}, {"role": "user", "content": q}]);
    let first = send(
        &m,
        "POST",
        DEEPSEEK,
        KEY,
        &ask("deepseek-chat", json!({"messages": messages("one")})),
    )
    .await
    .json();
    assert_eq!(first["usage"]["prompt_cache_hit_tokens"], 0);
    let second = send(
        &m,
        "POST",
        DEEPSEEK,
        KEY,
        &ask("deepseek-chat", json!({"messages": messages("two")})),
    )
    .await
    .json();
    let u = &second["usage"];
    // prefix = 900 / 4 + 4 = 229 tokens -> 192 in 64-token units.
    assert_eq!(u["prompt_cache_hit_tokens"], 192);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 192);
    assert_eq!(
        u["prompt_cache_hit_tokens"].as_u64().unwrap()
            + u["prompt_cache_miss_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap()
    );
    assert!(u.get("completion_tokens_details").is_none());
    assert!(s(&second, "/system_fingerprint").starts_with("fp_"));
    assert_eq!(s(&second, "/id").len(), 36, "a UUID");

    let opts = json!({"stream": true, "stream_options": {"include_usage": true}});
    let r = send(
        &m,
        "POST",
        "/deepseek/v1/chat/completions",
        KEY,
        &ask("deepseek-chat", opts.clone()),
    )
    .await;
    assert!(r.text().starts_with(": keep-alive\n\n"));
    let chunks = data(&r);
    let n = chunks.len();
    assert_eq!(
        streamed_text(&chunks),
        reply_text("What is the capital of Mexico?")
    );
    assert!(chunks[..n - 2].iter().all(|c| c["usage"].is_null()));
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    assert!(
        chunks[n - 2]["usage"]["prompt_cache_miss_tokens"].is_u64(),
        "usage rides on the finish chunk"
    );
    let r = send(
        &m,
        "POST",
        DEEPSEEK,
        KEY,
        &ask("deepseek-chat@keep_alive=3", json!({"stream": true})),
    )
    .await;
    assert!(r.text().starts_with(&": keep-alive\n\n".repeat(3)));
    assert!(data(&r).iter().all(|c| c.get("usage").is_none()));

    let v = send(
        &m,
        "POST",
        DEEPSEEK,
        KEY,
        &ask("deepseek-reasoner", json!({})),
    )
    .await
    .json();
    let reasoning = s(&v, "/choices/0/message/reasoning_content").to_string();
    assert!(reasoning.starts_with("The user asked"));
    assert!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let chunks = data(&send(&m, "POST", DEEPSEEK, KEY, &ask("deepseek-reasoner", opts)).await);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null, "reasoning_content": ""})
    );
    let r: String = chunks
        .iter()
        .map(|c| s(c, "/choices/0/delta/reasoning_content"))
        .collect();
    assert_eq!(r, reasoning);

    let v = send(
        &m,
        "POST",
        DEEPSEEK,
        KEY,
        &ask("deepseek-chat", json!({"tools": tools()})),
    )
    .await
    .json();
    let ids: Vec<&str> = v["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| s(c, "/id"))
        .collect();
    assert!(ids[0].starts_with("call_00_") && ids[1].starts_with("call_01_"));
    let r = send(
        &m,
        "POST",
        DEEPSEEK,
        KEY,
        &ask("deepseek-chat@status=402", json!({})),
    )
    .await;
    assert_eq!(r.status, 402);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": null, "code": "invalid_request_error"}})
    );
}

#[tokio::test]
async fn deepseek_validation() {
    let m = mock().await;
    let post = |body: Value| {
        let m = &m;
        async move { send(m, "POST", DEEPSEEK, KEY, &body).await }
    };
    let r = post(ask("deepseek-chat", json!({"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}]}))).await;
    assert_eq!(r.status, 422);
    assert!(s(&r.json(), "/error/message").contains("unknown variant `developer`"));
    assert_eq!(
        s(
            &post(ask("gpt-4o", json!({}))).await.json(),
            "/error/message"
        ),
        "Model Not Exist"
    );
    let r = post(ask(
        "deepseek-chat",
        json!({"response_format": {"type": "json_object"}}),
    ))
    .await;
    assert_eq!(r.status, 400);
    let msgs = json!([{"role": "user", "content": "Answer in JSON"}]);
    let r = post(ask(
        "deepseek-chat",
        json!({"messages": msgs, "response_format": {"type": "json_object"}}),
    ))
    .await;
    assert_eq!(
        s(&r.json(), "/choices/0/message/content"),
        r#"{"reply":"mock"}"#
    );
    let mut msgs = tool_turn("call_1", "call_2");
    msgs.as_array_mut().unwrap().remove(1);
    let r = post(ask("deepseek-chat", json!({ "messages": msgs }))).await;
    assert_eq!(
        s(&r.json(), "/error/message"),
        "Messages with role 'tool' must be a response to a preceding message with 'tool_calls'"
    );
    let ok = post(ask(
        "deepseek-chat",
        json!({"messages": tool_turn("call_1", "call_2")}),
    ))
    .await;
    assert_eq!(
        s(&ok.json(), "/choices/0/message/content"),
        "tool results received: 2"
    );
    // Thinking mode wants this turn's reasoning back on tool-call messages.
    let r = post(ask(
        "deepseek-reasoner",
        json!({"messages": tool_turn("call_1", "call_2")}),
    ))
    .await;
    assert_eq!(
        s(&r.json(), "/error/message"),
        "The reasoning_content in the thinking mode must be passed back to the API."
    );
    let mut msgs = tool_turn("call_1", "call_2");
    msgs[1]["reasoning_content"] = "why".into();
    assert_eq!(
        post(ask("deepseek-reasoner", json!({ "messages": msgs })))
            .await
            .status,
        200
    );
    let r = send(&m, "POST", DEEPSEEK, &[], &ask("deepseek-chat", json!({}))).await;
    assert_eq!(
        (r.status, s(&r.json(), "/error/type")),
        (401, "authentication_error")
    );
}

#[tokio::test]
async fn qwen_dashscope_shapes() {
    let m = mock().await;
    let v = send(&m, "POST", QWEN, KEY, &ask("qwen-plus", json!({})))
        .await
        .json();
    assert!(s(&v, "/id").starts_with("chatcmpl-"));
    assert!(v["system_fingerprint"].is_null());
    assert_eq!(
        v.as_object().unwrap().keys().next().map(String::as_str),
        Some("choices")
    );
    let opts = json!({"stream": true, "stream_options": {"include_usage": true}});
    let chunks = data(&send(&m, "POST", QWEN, KEY, &ask("qwen-plus", opts.clone())).await);
    let n = chunks.len();
    assert_eq!(streamed_text(&chunks), s(&v, "/choices/0/message/content"));
    assert_eq!(
        (&chunks[n - 2]["choices"], &chunks[n - 2]["usage"]),
        (&json!([]), &v["usage"])
    );
    assert_eq!(chunks[n - 3]["choices"][0]["finish_reason"], "stop");
    // Open-weight hybrid thinking: a 400 without stream, reasoning_content with it.
    let r = send(&m, "POST", QWEN, KEY, &ask("qwen3-32b", json!({}))).await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(
        s(&e, "/error/message"),
        "parameter.enable_thinking must be set to false for non-streaming calls"
    );
    assert!(!s(&e, "/request_id").is_empty());
    assert_eq!(
        send(
            &m,
            "POST",
            QWEN,
            KEY,
            &ask("qwen3-32b", json!({"enable_thinking": false}))
        )
        .await
        .status,
        200
    );
    let chunks = data(&send(&m, "POST", QWEN, KEY, &ask("qwen3-32b", opts)).await);
    assert!(chunks
        .iter()
        .any(|c| !s(c, "/choices/0/delta/reasoning_content").is_empty()));
    let r = send(
        &m,
        "POST",
        QWEN,
        KEY,
        &ask("qwen-plus@data_inspection", json!({})),
    )
    .await;
    assert_eq!(
        (r.status, s(&r.json(), "/error/code")),
        (400, "data_inspection_failed")
    );
    let r = send(&m, "POST", QWEN, &[], &ask("qwen-plus", json!({}))).await;
    assert_eq!(
        (r.status, s(&r.json(), "/error/code")),
        (401, "invalid_api_key")
    );
    let r = send(
        &m,
        "POST",
        QWEN,
        KEY,
        &ask("qwen-plus@status=403", json!({})),
    )
    .await;
    assert_eq!(s(&r.json(), "/error/code"), "Arrearage");
}

#[tokio::test]
async fn azure_deployment_urls_keys_and_filters() {
    let m = mock().await;
    let r = send(
        &m,
        "POST",
        &azure_path("prod-4o"),
        AZ_KEY,
        &ask("ignored", json!({})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("apim-request-id").is_some());
    let v = r.json();
    assert_eq!(v["model"], "prod-4o", "the deployment is reported");
    assert_eq!(
        v["prompt_filter_results"][0]["content_filter_results"]["jailbreak"]["detected"],
        false
    );
    assert_eq!(
        v["choices"][0]["content_filter_results"]["hate"]["severity"],
        "safe"
    );
    // Entra ID bearer tokens work too; no key at all is Azure's 401.
    let bearer: Headers = &[("authorization", "Bearer eyJ0eXAi")];
    assert_eq!(
        send(&m, "POST", &azure_path("d"), bearer, &ask("x", json!({})))
            .await
            .status,
        200
    );
    let r = send(&m, "POST", &azure_path("d"), &[], &ask("x", json!({}))).await;
    assert_eq!((r.status, s(&r.json(), "/error/code")), (401, "401"));
    let no_version = "/openai/deployments/d/chat/completions";
    let r = send(&m, "POST", no_version, AZ_KEY, &ask("x", json!({}))).await;
    assert_eq!(
        (r.status, s(&r.json(), "/error/message")),
        (404, "Resource not found")
    );
    let bad = "/openai/deployments/d/chat/completions?api-version=2024";
    assert_eq!(
        send(&m, "POST", bad, AZ_KEY, &ask("x", json!({})))
            .await
            .status,
        400
    );
    // stream_options needs api-version 2024-09-01 or later.
    let old = "/openai/deployments/d/chat/completions?api-version=2024-06-01";
    let opts = json!({"stream": true, "stream_options": {"include_usage": true}});
    let r = send(&m, "POST", old, AZ_KEY, &ask("x", opts.clone())).await;
    assert_eq!(
        s(&r.json(), "/error/message"),
        "Unrecognized request argument supplied: stream_options"
    );
    // Streams open with a filter-only chunk.
    let chunks = data(&send(&m, "POST", &azure_path("d"), AZ_KEY, &ask("x", opts)).await);
    assert_eq!(chunks[0]["choices"], json!([]));
    assert_eq!((s(&chunks[0], "/id"), s(&chunks[0], "/model")), ("", ""));
    assert!(chunks[0]["prompt_filter_results"].is_array());
    assert_eq!(streamed_text(&chunks), s(&v, "/choices/0/message/content"));
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"], json!([]));
    assert_eq!(
        chunks[n - 2]["usage"]["prompt_tokens"],
        v["usage"]["prompt_tokens"]
    );
    // Directives ride in the (percent-encoded) deployment name.
    let r = send(
        &m,
        "POST",
        &azure_path("d%40content_filter"),
        AZ_KEY,
        &ask("x", json!({})),
    )
    .await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(
        (s(&e, "/error/code"), s(&e, "/error/param")),
        ("content_filter", "prompt")
    );
    assert_eq!(
        e["error"]["innererror"]["code"],
        "ResponsibleAIPolicyViolation"
    );
    let r = send(
        &m,
        "POST",
        &azure_path("d%40status%3D429"),
        AZ_KEY,
        &ask("x", json!({})),
    )
    .await;
    assert_eq!((r.status, r.header("retry-after-ms")), (429, Some("1000")));
    // Tool calls stream in fragments; the v1 API takes the deployment as body model.
    let v = send(
        &m,
        "POST",
        "/openai/v1/chat/completions",
        AZ_KEY,
        &ask("dep-v1", json!({"tools": tools()})),
    )
    .await
    .json();
    assert_eq!(
        (s(&v, "/model"), s(&v, "/choices/0/finish_reason")),
        ("dep-v1", "tool_calls")
    );
    assert_eq!(calls(&v["choices"][0]["message"])[0], WEATHER_0);
    let probe = get(&m, "/openai/models?api-version=2024-10-21", AZ_KEY).await;
    assert_eq!(probe.json()["object"], "list");
    let log = get(&m, "/_mock/requests", &[]).await.json();
    let first = &log["requests"][0];
    assert_eq!(
        (s(first, "/model"), s(first, "/headers/api-key")),
        ("prod-4o", "present")
    );
    assert_eq!(
        s(first, "/path"),
        "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    );
}

#[tokio::test]
async fn local_server_holes() {
    let m = mock().await;
    let v = send(
        &m,
        "POST",
        COMPAT,
        &[],
        &ask("llama3.2", json!({"tools": tools()})),
    )
    .await
    .json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert!(v["usage"].get("prompt_tokens_details").is_none());
    let chunks = data(
        &send(
            &m,
            "POST",
            COMPAT,
            &[],
            &ask("llama3.2", json!({"tools": tools(), "stream": true})),
        )
        .await,
    );
    let n = chunks.len();
    assert_eq!(chunks[n - 1], "[DONE]");
    assert_eq!(
        chunks[n - 2]["choices"][0]["finish_reason"],
        "stop",
        "tools called, yet stop"
    );
    assert_eq!(streamed_calls(&chunks).len(), 2);
    let chunks = data(
        &send(
            &m,
            "POST",
            COMPAT,
            &[],
            &ask("llama3.2@no_done", json!({"stream": true})),
        )
        .await,
    );
    assert_ne!(chunks.last(), Some(&json!("[DONE]")));
    assert_eq!(
        get(&m, "/compat/v1/models", &[]).await.json()["object"],
        "list"
    );
}

#[tokio::test]
async fn single_flavors_serve_the_providers_own_paths() {
    let only = |flavor| MockOptions {
        flavor,
        ..MockOptions::default()
    };
    let m = start(only(Flavor::Mistral)).await;
    let v = send(
        &m,
        "POST",
        "/v1/chat/completions",
        KEY,
        &ask("mistral-small", json!({})),
    )
    .await
    .json();
    assert_eq!(v["choices"][0]["message"]["tool_calls"], Value::Null);
    assert_eq!(
        send(&m, "POST", MISTRAL, KEY, &ask("m", json!({})))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&m, "/v1/models", KEY).await.json()["data"][0]["owned_by"],
        "mistralai"
    );
    let r = get(&m, "/v1beta/models", &[]).await;
    assert_eq!(
        (r.status, r.json()["detail"].clone()),
        (404, json!("Not Found"))
    );
    let m = start(only(Flavor::Deepseek)).await;
    assert_eq!(
        send(
            &m,
            "POST",
            "/chat/completions",
            KEY,
            &ask("deepseek-chat", json!({}))
        )
        .await
        .status,
        200
    );
    let m = start(only(Flavor::Qwen)).await;
    let path = "/compatible-mode/v1/chat/completions";
    assert_eq!(
        send(&m, "POST", path, KEY, &ask("qwen-max", json!({})))
            .await
            .status,
        200
    );
    let m = start(only(Flavor::Azure)).await;
    assert_eq!(
        send(&m, "POST", &azure_path("d"), AZ_KEY, &ask("x", json!({})))
            .await
            .status,
        200
    );
    assert_eq!(
        send(
            &m,
            "POST",
            "/v1/chat/completions",
            KEY,
            &ask("x", json!({}))
        )
        .await
        .json()["error"]["code"],
        "404"
    );
    for (name, flavor) in [
        ("mistral", Flavor::Mistral),
        ("DeepSeek", Flavor::Deepseek),
        ("qwen", Flavor::Qwen),
        ("azure_openai", Flavor::Azure),
        ("bedrock", Flavor::Bedrock),
    ] {
        assert_eq!(name.parse::<Flavor>(), Ok(flavor));
    }
    assert_eq!(
        guess_flavor(Flavor::All, "/mistral/v1/x", false),
        Flavor::Mistral
    );
    assert_eq!(
        guess_flavor(Flavor::All, "/openai/deployments/x", false),
        Flavor::Azure
    );
    assert_eq!(
        guess_flavor(Flavor::All, "/model/x/converse", false),
        Flavor::Bedrock
    );
    assert_eq!(
        guess_flavor(Flavor::All, "/v1/chat/completions", false),
        Flavor::Openai
    );
}
