//! OpenAI Chat Completions: `/v1/chat/completions` (JSON and SSE) and `/v1/models`.

use super::behavior::{
    content_text, implicit_cached, list, now_secs, output_tokens, pieces, plan, rand_id,
    split_model, str_at, Conversation, Output, Structured, Tool, ToolMode, Transcript, Usage,
};
use super::http::{Request, Response};
use super::{respond, Flavor, State};
use serde_json::{json, Value};

const FINGERPRINT: &str = "fp_50cad350e4";
const SSE_TYPE: &str = "text/event-stream; charset=utf-8";
/// Real streams pad chunks with a random `obfuscation` field; this is its alphabet.
const OBFUSCATION: &str = "KhEoTT6u7JgGis68kWLPsNVG6FCqY";

/// `{"error":{"message","type","param","code"}}` with a fresh `x-request-id`.
pub(crate) fn error_body(status: u16, msg: &str, ty: &str, param: &str, code: &str) -> Response {
    let opt = |s: &str| {
        if s.is_empty() {
            Value::Null
        } else {
            Value::from(s)
        }
    };
    let error = json!({"message": msg, "type": ty, "param": opt(param), "code": opt(code)});
    Response::json(status, &json!({ "error": error })).header("x-request-id", rand_id("req_", 32))
}

/// The error OpenAI answers with for `status` (directives, `fail_rate`).
pub(crate) fn error(status: u16, model: &str, retry_after: Option<u64>) -> Response {
    let (ty, code) = match status {
        401 => ("invalid_request_error", "invalid_api_key"),
        403 => ("request_forbidden", "unsupported_country_region_territory"),
        404 => ("invalid_request_error", "model_not_found"),
        429 => ("requests", "rate_limit_exceeded"),
        s if s >= 500 => ("server_error", ""),
        _ => ("invalid_request_error", ""),
    };
    let message = match status {
        400 => "Invalid request.",
        401 => "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        403 => "Country, region, or territory not supported",
        404 => "The model `{model}` does not exist or you do not have access to it.",
        429 => "Rate limit reached for {model} in organization org-mock on requests per min (RPM): Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit https://platform.openai.com/account/rate-limits to learn more.",
        500 => "The server had an error while processing your request. Sorry about that!",
        503 => "The engine is currently overloaded, please try again later",
        _ => "Mock error (status {status}).",
    };
    let message = message
        .replace("{model}", model)
        .replace("{status}", &status.to_string());
    let mut resp = error_body(status, &message, ty, "", code);
    if status == 429 {
        resp = rate_limit_headers(resp, 0).header("retry-after", "1");
    }
    match retry_after {
        Some(s) => resp.header("retry-after", s.to_string()),
        None => resp,
    }
}

fn rate_limit_headers(resp: Response, remaining: u32) -> Response {
    let tokens = if remaining == 0 { "0" } else { "199000" };
    resp.header("x-ratelimit-limit-requests", "500")
        .header("x-ratelimit-limit-tokens", "200000")
        .header("x-ratelimit-remaining-requests", remaining.to_string())
        .header("x-ratelimit-remaining-tokens", tokens)
        .header("x-ratelimit-reset-requests", "120ms")
        .header("x-ratelimit-reset-tokens", "300ms")
}

const NO_KEY: &str = "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the basic auth username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.";
const BAD_JSON: &str = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)";

/// `None` when the request carries `Authorization: Bearer <non-empty>`.
fn check_auth(req: &Request) -> Option<Response> {
    let Some(auth) = req.header("authorization") else {
        return Some(error_body(
            401,
            NO_KEY,
            "invalid_request_error",
            "",
            "invalid_api_key",
        ));
    };
    let key = auth
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| auth[7..].trim());
    match key {
        Some(k) if !k.is_empty() => None,
        _ => Some(error(401, "", None)),
    }
}

fn invalid(message: &str, param: &str, code: &str) -> Response {
    error_body(400, message, "invalid_request_error", param, code)
}

/// `POST /v1/chat/completions`.
pub(crate) fn chat(state: &State, req: &Request, body: Option<&Value>) -> Response {
    if let Some(denied) = check_auth(req) {
        return denied;
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return invalid(BAD_JSON, "", "");
    };
    let Some(raw_model) = str_at(body, "model") else {
        return invalid("you must provide a model parameter", "", "");
    };
    let messages = match body.get("messages").and_then(Value::as_array) {
        None => {
            let msg = "Missing required parameter: 'messages'.";
            return invalid(msg, "messages", "missing_required_parameter");
        }
        Some(m) if m.is_empty() => {
            let msg = "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.";
            return invalid(msg, "messages", "empty_array");
        }
        Some(m) => m,
    };
    let (model, directives) = split_model(raw_model);
    let directives = directives.for_body(req.body.len());
    if directives.echo_key {
        let key = req
            .header("authorization")
            .unwrap_or_default()
            .trim_start_matches("Bearer ")
            .to_owned();
        let msg = format!("Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.");
        return error_body(401, &msg, "invalid_request_error", "", "invalid_api_key");
    }
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let answer = || answer(state, body, messages, model, stream);
    respond(state, &directives, stream, (Flavor::Openai, model), answer)
}

/// The successful reply (JSON or SSE) for a validated request.
fn answer(state: &State, body: &Value, messages: &[Value], model: &str, stream: bool) -> Response {
    let conv = conversation(body, messages, model);
    let out = plan(&conv);
    let usage = Usage {
        input: conv.transcript.snapshot().tokens(),
        output: output_tokens(&out),
        cache_read: implicit_cached(&state.cache, conv.prefix),
        ..Usage::default()
    };
    let id = rand_id("chatcmpl-", 29);
    let resp = if stream {
        let include_usage = body.pointer("/stream_options/include_usage") == Some(&json!(true));
        Response::sse(
            stream_events(&id, model, &out, &usage, include_usage),
            SSE_TYPE,
        )
    } else {
        Response::json(200, &completion(&id, model, &out, &usage))
    };
    rate_limit_headers(resp, 499)
        .header("x-request-id", rand_id("req_", 32))
        .header("openai-processing-ms", "1")
        .header("openai-version", "2020-10-01")
}

fn conversation<'a>(body: &'a Value, messages: &'a [Value], model: &str) -> Conversation<'a> {
    conversation_in("openai", body, messages, model)
}

/// The conversation of an OpenAI-shaped request; `namespace` keeps each provider's prompt
/// cache apart (the dialects in `dialects.rs` share this reading of the request).
pub(crate) fn conversation_in<'a>(
    namespace: &str,
    body: &'a Value,
    messages: &'a [Value],
    model: &str,
) -> Conversation<'a> {
    let mut t = Transcript::new(namespace, model);
    let mut prefix = None;
    let mut last_user_text = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 && i + 1 == messages.len() {
            prefix = Some(t.snapshot());
        }
        let role = str_at(m, "role").unwrap_or("");
        t.message(role);
        let text = content_text(m.get("content"));
        t.text(&text);
        if role == "user" {
            last_user_text = text.into_owned();
        }
    }
    let mut c = Conversation::new(t);
    c.prefix = prefix;
    c.last_user_text = last_user_text;
    let is_result = |m: &&Value| matches!(str_at(m, "role"), Some("tool" | "function"));
    c.tool_results = messages.iter().rev().take_while(is_result).count();
    static EMPTY: Value = Value::Null;
    for f in list(body.get("tools"))
        .iter()
        .filter_map(|t| t.get("function"))
    {
        if let Some(name) = str_at(f, "name") {
            c.tools.push(Tool {
                name,
                schema: f.get("parameters").unwrap_or(&EMPTY),
            });
        }
    }
    let forced = body
        .pointer("/tool_choice/function/name")
        .and_then(Value::as_str);
    c.tool_mode = match (body.get("tool_choice"), forced) {
        (Some(Value::String(s)), _) if s == "none" => ToolMode::None,
        (_, Some(name)) => ToolMode::Forced(name),
        _ => ToolMode::Auto,
    };
    c.parallel = body.get("parallel_tool_calls").and_then(Value::as_bool) != Some(false);
    let schema = body.pointer("/response_format/json_schema/schema");
    c.structured = match (
        body.pointer("/response_format/type")
            .and_then(Value::as_str),
        schema,
    ) {
        (Some("json_schema"), Some(schema)) => Structured::Schema(schema),
        (Some("json_schema" | "json_object"), _) => Structured::JsonObject,
        _ => Structured::None,
    };
    c
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input + u.output,
        "prompt_tokens_details": {"cached_tokens": u.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
        }
    })
}

fn completion(id: &str, model: &str, out: &Output, usage: &Usage) -> Value {
    let (message, finish) = match out {
        Output::Text(text) => (
            json!({"role": "assistant", "content": text, "refusal": null, "annotations": []}),
            "stop",
        ),
        Output::Calls(calls) => {
            let call = |c: &super::behavior::ToolCall| {
                json!({"id": rand_id("call_", 24), "type": "function",
                       "function": {"name": c.name, "arguments": c.args}})
            };
            let calls: Vec<Value> = calls.iter().map(call).collect();
            let msg = json!({"role": "assistant", "content": null, "tool_calls": calls,
                             "refusal": null, "annotations": []});
            (msg, "tool_calls")
        }
    };
    json!({
        "id": id, "object": "chat.completion", "created": now_secs(), "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": usage_json(usage), "service_tier": "default", "system_fingerprint": FINGERPRINT,
    })
}

/// SSE chunks; the envelope shared by every chunk is serialized once.
fn stream_events(id: &str, model: &str, out: &Output, u: &Usage, with_usage: bool) -> Vec<Vec<u8>> {
    let (id, model, created) = (Value::from(id), Value::from(model), now_secs());
    let head = format!(
        r#"data: {{"id":{id},"object":"chat.completion.chunk","created":{created},"model":{model},"service_tier":"default","system_fingerprint":"{FINGERPRINT}","choices":"#
    );
    let mut events: Vec<Vec<u8>> = Vec::new();
    let mut push = |choices: &str, usage: &str| {
        let usage = if with_usage {
            format!(r#","usage":{usage}"#)
        } else {
            String::new()
        };
        let pad = &OBFUSCATION[..(events.len() * 7) % 16];
        let event = format!("{head}{choices}{usage},\"obfuscation\":\"{pad}\"}}\n\n");
        events.push(event.into_bytes());
    };
    let delta =
        |d: &str| format!(r#"[{{"index":0,"delta":{d},"logprobs":null,"finish_reason":null}}]"#);
    let finish = match out {
        Output::Text(text) => {
            push(
                &delta(r#"{"role":"assistant","content":"","refusal":null}"#),
                "null",
            );
            for p in pieces(text, 4, 8) {
                push(
                    &delta(&format!(r#"{{"content":{}}}"#, Value::from(p))),
                    "null",
                );
            }
            "stop"
        }
        Output::Calls(calls) => {
            push(&delta(r#"{"role":"assistant","content":null}"#), "null");
            for (i, c) in calls.iter().enumerate() {
                let first = json!({"index": i, "id": rand_id("call_", 24), "type": "function",
                                   "function": {"name": c.name, "arguments": ""}});
                push(
                    &delta(&json!({ "tool_calls": [first] }).to_string()),
                    "null",
                );
                for p in pieces(&c.args, 4, 8) {
                    let frag = json!({"index": i, "function": {"arguments": p}});
                    push(&delta(&json!({ "tool_calls": [frag] }).to_string()), "null");
                }
            }
            "tool_calls"
        }
    };
    let end = format!(r#"[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish}"}}]"#);
    push(&end, "null");
    if with_usage {
        push("[]", &usage_json(u).to_string());
    }
    events.push(b"data: [DONE]\n\n".to_vec());
    events
}

const MODELS: &[(&str, u64)] = &[
    ("gpt-4o", 1_715_367_049),
    ("gpt-4o-mini", 1_721_172_741),
    ("gpt-4.1", 1_744_316_542),
    ("gpt-5", 1_754_425_777),
];

/// `GET /v1/models` and `GET /v1/models/{id}` (any id exists).
pub(crate) fn models(req: &Request, id: Option<&str>) -> Response {
    if let Some(denied) = check_auth(req) {
        return denied;
    }
    let model =
        |id: &str, t: u64| json!({"id": id, "object": "model", "created": t, "owned_by": "system"});
    match id {
        // Directives work here too, so a test can make a probe fail.
        Some(raw) if raw.contains('@') => match super::behavior::split_model(raw) {
            (id, d) if d.status.is_some() => error(d.status.unwrap_or(500), id, d.retry_after),
            (id, _) => Response::json(200, &model(id, 1_715_367_049)),
        },
        Some(id) => Response::json(200, &model(id, 1_715_367_049)),
        None => {
            let data: Vec<Value> = MODELS.iter().map(|(id, t)| model(id, *t)).collect();
            Response::json(200, &json!({"object": "list", "data": data}))
        }
    }
}
