//! Anthropic Messages: `/v1/messages` (JSON and named-event SSE) and `/v1/models`.

use super::behavior::{
    content_text, explicit_cache, list, output_tokens, pieces, plan, rand_id, split_model, str_at,
    Conversation, Output, Structured, Tool, ToolMode, Transcript, Usage,
};
use super::http::{Request, Response};
use super::{respond, Flavor, State};
use serde_json::{json, Value};

/// `{"type":"error","error":{"type","message"},"request_id"}` plus the `request-id` header.
pub(crate) fn error_body(status: u16, ty: &str, message: &str) -> Response {
    let id = rand_id("req_011C", 20);
    let error = json!({"type": ty, "message": message});
    let body = json!({"type": "error", "error": error, "request_id": id});
    Response::json(status, &body).header("request-id", id)
}

/// The error Anthropic answers with for `status` (directives, `fail_rate`).
pub(crate) fn error(status: u16, model: &str, retry_after: Option<u64>) -> Response {
    let ty = match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    };
    let message = match status {
        400 => "Invalid request.".to_string(),
        401 => "invalid x-api-key".to_string(),
        402 => "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.".to_string(),
        403 => "Your API key does not have permission to use the specified resource.".to_string(),
        404 => format!("model: {model}"),
        413 => "Request exceeds the maximum allowed number of bytes.".to_string(),
        429 => "This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.".to_string(),
        500 => "Internal server error".to_string(),
        504 => "Request timed out".to_string(),
        529 => "Overloaded".to_string(),
        s => format!("Mock error (status {s})."),
    };
    let mut resp = error_body(status, ty, &message);
    if status == 429 || status >= 500 {
        resp = resp.header("x-should-retry", "true");
    }
    if status == 429 {
        resp = resp
            .header("anthropic-ratelimit-requests-limit", "50")
            .header("anthropic-ratelimit-requests-remaining", "0")
            .header("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:01Z")
            .header("retry-after", "1");
    }
    match retry_after {
        Some(s) => resp.header("retry-after", s.to_string()),
        None => resp,
    }
}

fn invalid(message: &str) -> Response {
    error_body(400, "invalid_request_error", message)
}

/// Checks `x-api-key`, then `anthropic-version`, like the real API.
fn check_headers(req: &Request) -> Option<Response> {
    match req.header("x-api-key") {
        None => Some(error_body(
            401,
            "authentication_error",
            "x-api-key header is required",
        )),
        Some("") => Some(error_body(401, "authentication_error", "invalid x-api-key")),
        Some(_) if req.header("anthropic-version").unwrap_or("").is_empty() => {
            Some(invalid("anthropic-version: header is required"))
        }
        Some(_) => None,
    }
}

const SYSTEM_ROLE: &str = "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.";

/// `POST /v1/messages`.
pub(crate) fn messages(state: &State, req: &Request, body: Option<&Value>) -> Response {
    if let Some(denied) = check_headers(req) {
        return denied;
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return invalid("There was an error parsing the body of your request: invalid JSON.");
    };
    let Some(raw_model) = str_at(body, "model") else {
        return invalid("model: Field required");
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return invalid("messages: Field required");
    };
    if body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return invalid("max_tokens: Field required");
    }
    if messages.iter().any(|m| str_at(m, "role") == Some("system")) {
        return invalid(SYSTEM_ROLE);
    }
    let (model, directives) = split_model(raw_model);
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let answer = || answer(state, body, messages, model, stream);
    respond(
        state,
        &directives,
        stream,
        (Flavor::Anthropic, model),
        answer,
    )
}

/// The successful reply (JSON or SSE) for a validated request.
fn answer(state: &State, body: &Value, messages: &[Value], model: &str, stream: bool) -> Response {
    let conv = conversation(body, messages, model);
    let out = plan(&conv);
    let (cache_read, cache_write, write_1h) = explicit_cache(&state.cache, &conv.transcript.marks);
    let input = conv.transcript.snapshot().tokens();
    let usage = Usage {
        input,
        output: output_tokens(&out),
        cache_read,
        cache_write,
        write_1h,
    };
    let id = rand_id("msg_01", 22);
    let resp = if stream {
        let events = stream_events(&id, model, &out, &usage);
        Response::sse(events, "text/event-stream; charset=utf-8")
    } else {
        Response::json(200, &message(&id, model, &out, &usage))
    };
    resp.header("request-id", rand_id("req_011C", 20))
}

/// `Some(is_1h)` when the block carries a `cache_control` breakpoint.
fn breakpoint(block: &Value) -> Option<bool> {
    let cc = block.get("cache_control").filter(|c| c.is_object())?;
    Some(str_at(cc, "ttl") == Some("1h"))
}

fn conversation<'a>(body: &'a Value, messages: &'a [Value], model: &str) -> Conversation<'a> {
    let mut t = Transcript::new("anthropic", model);
    static EMPTY: Value = Value::Null;
    let mut tools = Vec::new();
    for tool in list(body.get("tools")) {
        let custom = matches!(str_at(tool, "type"), None | Some("custom"));
        if let Some(name) = str_at(tool, "name").filter(|_| custom) {
            tools.push(Tool {
                name,
                schema: tool.get("input_schema").unwrap_or(&EMPTY),
            });
        }
        t.mark(breakpoint(tool));
    }
    match body.get("system") {
        Some(Value::String(system)) if !system.is_empty() => {
            t.message("system");
            t.text(system);
        }
        Some(Value::Array(blocks)) if !blocks.is_empty() => {
            t.message("system");
            for block in blocks {
                t.text(str_at(block, "text").unwrap_or(""));
                t.mark(breakpoint(block));
            }
        }
        _ => {}
    }
    let (mut last_user_text, mut tool_results) = (String::new(), 0);
    for m in messages {
        let role = str_at(m, "role").unwrap_or("");
        t.message(role);
        let content = m.get("content");
        t.text(&content_text(content.filter(|c| c.is_string())));
        tool_results = 0;
        for block in list(content) {
            match str_at(block, "type") {
                Some("text") => t.text(str_at(block, "text").unwrap_or("")),
                Some("tool_result") => {
                    tool_results += usize::from(role == "user");
                    t.text(&content_text(block.get("content")));
                }
                _ => {}
            }
            t.mark(breakpoint(block));
        }
        if role == "user" {
            last_user_text = content_text(content).into_owned();
        }
    }
    t.mark(breakpoint(body));
    let mut c = Conversation::new(t);
    (c.last_user_text, c.tool_results, c.tools) = (last_user_text, tool_results, tools);
    let choice = body.get("tool_choice").unwrap_or(&EMPTY);
    c.tool_mode = match (str_at(choice, "type"), str_at(choice, "name")) {
        (Some("none"), _) => ToolMode::None,
        (Some("tool"), Some(name)) => ToolMode::Forced(name),
        _ => ToolMode::Auto,
    };
    c.parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        != Some(true);
    let format = body
        .pointer("/output_config/format")
        .or_else(|| body.get("output_format"));
    c.structured = match format.map(|f| f.get("schema")) {
        Some(Some(schema)) => Structured::Schema(schema),
        Some(None) => Structured::JsonObject,
        None => Structured::None,
    };
    c
}

fn usage_json(u: &Usage) -> Value {
    let (w5, w1) = if u.write_1h {
        (0, u.cache_write)
    } else {
        (u.cache_write, 0)
    };
    json!({
        "input_tokens": u.input.saturating_sub(u.cache_read + u.cache_write),
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "output_tokens": u.output,
        "service_tier": "standard",
    })
}

/// Content blocks (tool ids filled in) and the stop reason.
fn blocks(out: &Output) -> (Vec<Value>, &'static str) {
    match out {
        Output::Text(text) => (vec![json!({"type": "text", "text": text})], "end_turn"),
        Output::Calls(calls) => {
            let block = |c: &super::behavior::ToolCall| json!({"type": "tool_use", "id": rand_id("toolu_01", 22), "name": c.name, "input": c.input});
            (calls.iter().map(block).collect(), "tool_use")
        }
    }
}

fn message(id: &str, model: &str, out: &Output, usage: &Usage) -> Value {
    let (content, stop) = blocks(out);
    json!({
        "model": model, "id": id, "type": "message", "role": "assistant", "content": content,
        "stop_reason": stop, "stop_sequence": null, "stop_details": null, "usage": usage_json(usage),
    })
}

fn stream_events(id: &str, model: &str, out: &Output, usage: &Usage) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut push = |name: &str, data: &dyn std::fmt::Display| {
        events.push(format!("event: {name}\ndata: {data}\n\n").into_bytes());
    };
    let mut start_usage = usage_json(usage);
    start_usage["output_tokens"] = json!(1);
    let start = json!({"type": "message_start", "message": {
        "model": model, "id": id, "type": "message", "role": "assistant", "content": [],
        "stop_reason": null, "stop_sequence": null, "stop_details": null, "usage": start_usage}});
    push("message_start", &start);
    let (content, stop) = blocks(out);
    for (index, block) in content.into_iter().enumerate() {
        let (empty, deltas): (Value, Vec<String>) = match out {
            Output::Text(text) => {
                let delta = |p| format!(r#"{{"type":"text_delta","text":{}}}"#, Value::from(p));
                let deltas = pieces(text, 4, 8).into_iter().map(delta).collect();
                (json!({"type": "text", "text": ""}), deltas)
            }
            Output::Calls(calls) => {
                let args = calls.get(index).map_or("{}", |c| c.args.as_str());
                let frags = std::iter::once("").chain(pieces(args, 4, 8));
                let delta = |p| {
                    format!(
                        r#"{{"type":"input_json_delta","partial_json":{}}}"#,
                        Value::from(p)
                    )
                };
                let (id, name) = (&block["id"], &block["name"]);
                let empty = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                (empty, frags.map(delta).collect())
            }
        };
        let ev = json!({"type": "content_block_start", "index": index, "content_block": empty});
        push("content_block_start", &ev);
        if index == 0 {
            push("ping", &r#"{"type": "ping"}"#);
        }
        for delta in deltas {
            let ev = format!(r#"{{"type":"content_block_delta","index":{index},"delta":{delta}}}"#);
            push("content_block_delta", &ev);
        }
        let done = format!(r#"{{"type":"content_block_stop","index":{index}}}"#);
        push("content_block_stop", &done);
    }
    let full = usage_json(usage);
    let delta_usage = json!({"input_tokens": full["input_tokens"],
        "cache_creation_input_tokens": usage.cache_write, "cache_read_input_tokens": usage.cache_read,
        "output_tokens": usage.output});
    let delta = json!({"type": "message_delta", "usage": delta_usage,
        "delta": {"stop_reason": stop, "stop_sequence": null, "stop_details": null}});
    push("message_delta", &delta);
    push("message_stop", &json!({"type": "message_stop"}));
    events
}

const MODELS: &[(&str, &str, &str)] = &[
    (
        "claude-opus-4-1-20250805",
        "Claude Opus 4.1",
        "2025-08-05T00:00:00Z",
    ),
    (
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
    ),
    (
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "2025-10-01T00:00:00Z",
    ),
];

/// `GET /v1/models` and `GET /v1/models/{id}` in Anthropic's paginated shape.
pub(crate) fn models(req: &Request, id: Option<&str>) -> Response {
    if let Some(denied) = check_headers(req) {
        return denied;
    }
    let model = |id: &str, name: &str, at: &str| json!({"type": "model", "id": id, "display_name": name, "created_at": at});
    if let Some(id) = id {
        return Response::json(200, &model(id, id, "2025-09-29T00:00:00Z"));
    }
    let data: Vec<Value> = MODELS.iter().map(|(id, n, at)| model(id, n, at)).collect();
    let (first, last) = (MODELS[0].0, MODELS[MODELS.len() - 1].0);
    let body = json!({"data": data, "has_more": false, "first_id": first, "last_id": last});
    Response::json(200, &body)
}
