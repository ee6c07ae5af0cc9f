//! Gemini (Generative Language v1beta): `models/{m}:generateContent`,
//! `models/{m}:streamGenerateContent` and `models`.

use super::behavior::{
    implicit_cached, list, output_tokens, pieces, plan, rand_id, split_model, str_at, Conversation,
    Output, Structured, Tool, ToolMode, Transcript, Usage,
};
use super::http::{Body, Request, Response};
use super::{respond, Flavor, State};
use serde::Serialize;
use serde_json::{json, Value};

/// Google serves pretty-printed JSON (two-space indent) outside of SSE.
fn pretty(status: u16, value: &Value) -> Response {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::new(status, Body::Full(body))
        .header("content-type", "application/json; charset=UTF-8")
}

/// Google's SSE payload style: `"key": value` but no space after commas.
struct GoogleFormatter;

impl serde_json::ser::Formatter for GoogleFormatter {
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

fn sse_event(value: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoogleFormatter);
    let _ = value.serialize(&mut ser);
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// `{"error":{"code","message","status"[,"details"]}}`, Google RPC style.
pub(crate) fn error_body(
    code: u16,
    status: &str,
    message: &str,
    details: Option<Value>,
) -> Response {
    let mut error = json!({"code": code, "message": message, "status": status});
    if let (Some(d), Some(obj)) = (details, error.as_object_mut()) {
        obj.insert("details".into(), d);
    }
    pretty(code, &json!({ "error": error }))
}

/// The error Gemini answers with for `code` (directives, `fail_rate`).
pub(crate) fn error(code: u16, model: &str, retry_after: Option<u64>) -> Response {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        c if c >= 500 => "UNKNOWN",
        _ => "FAILED_PRECONDITION",
    };
    let message = match code {
        400 => "Request contains an invalid argument.",
        401 => "Request had invalid authentication credentials.",
        403 => "The caller does not have permission",
        404 => "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ModelService.ListModels to see the list of available models and their supported methods.",
        429 => "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        499 => "The operation was cancelled.",
        500 => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        503 => "The model is overloaded. Please try again later.",
        504 => "The request timed out. Please try again.",
        _ => "Mock error (status {code}).",
    };
    let message = message
        .replace("{model}", model)
        .replace("{code}", &code.to_string());
    let quota = json!({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        "quotaDimensions": {"location": "global", "model": model}, "quotaValue": "10"}]});
    let delay = format!("{}s", retry_after.unwrap_or(1));
    let retry = json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay});
    let details = (code == 429).then(|| json!([quota, retry]));
    let resp = error_body(code, status, &message, details);
    match retry_after {
        Some(s) => resp.header("retry-after", s.to_string()),
        None => resp,
    }
}

const INVALID_KEY: &str = "API key not valid. Please pass a valid API key.";
const NO_KEY: &str = "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.";

/// Key from `x-goog-api-key` or `?key=`: absent → 403, empty → 400 `API_KEY_INVALID`.
fn check_key(req: &Request) -> Option<Response> {
    match req.header("x-goog-api-key").or_else(|| req.query("key")) {
        Some(k) if !k.is_empty() => None,
        Some(_) => {
            let details = json!([
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": INVALID_KEY}
            ]);
            Some(error_body(
                400,
                "INVALID_ARGUMENT",
                INVALID_KEY,
                Some(details),
            ))
        }
        None => Some(error_body(403, "PERMISSION_DENIED", NO_KEY, None)),
    }
}

/// Reads the `camelCase` or `snake_case` spelling of a field (Google accepts both).
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn invalid(message: &str) -> Response {
    error_body(400, "INVALID_ARGUMENT", message, None)
}

/// `POST models/{raw_model}:generateContent` / `:streamGenerateContent` (SSE with `alt=sse`,
/// otherwise one JSON array of chunks).
pub(crate) fn generate(
    state: &State,
    req: &Request,
    body: Option<&Value>,
    raw_model: &str,
    stream: bool,
) -> Response {
    if let Some(denied) = check_key(req) {
        return denied;
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return invalid("Invalid JSON payload received. Unexpected token.");
    };
    let contents = list(body.get("contents"));
    if contents.is_empty() {
        return invalid("* GenerateContentRequest.contents: contents is not specified\n");
    }
    let (model, directives) = split_model(raw_model);
    let sse = stream && req.query("alt") == Some("sse");
    if directives.blocked {
        // As the real API does: HTTP 200, no candidates, the reason in promptFeedback.
        let blocked = json!({
            "promptFeedback": {
                "blockReason": "SAFETY",
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true},
                    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}
                ]
            },
            "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
            "modelVersion": model,
            "responseId": rand_id("", 23),
        });
        return if sse {
            Response::sse(vec![sse_event(&blocked)], "text/event-stream")
        } else {
            pretty(200, &blocked)
        };
    }
    let answer = || answer(state, body, contents, model, stream, sse);
    respond(state, &directives, sse, (Flavor::Gemini, model), answer)
}

/// The successful reply for a validated request: one JSON object, a JSON array of chunks
/// (`streamGenerateContent` without `alt=sse`) or SSE.
fn answer(
    state: &State,
    body: &Value,
    contents: &[Value],
    model: &str,
    stream: bool,
    sse: bool,
) -> Response {
    let conv = conversation(body, contents, model);
    let out = plan(&conv);
    let usage = Usage {
        input: conv.transcript.snapshot().tokens(),
        output: output_tokens(&out),
        cache_read: implicit_cached(&state.cache, conv.prefix),
        ..Usage::default()
    };
    let id = rand_id("", 23);
    let chunks = chunks(&out, stream);
    let last = chunks.len().saturating_sub(1);
    let to_body = |(i, parts)| response(parts, i == last, &usage, model, &id);
    let mut bodies = chunks.into_iter().enumerate().map(to_body);
    if sse {
        Response::sse(bodies.map(|b| sse_event(&b)).collect(), "text/event-stream")
    } else if stream {
        pretty(200, &Value::Array(bodies.collect()))
    } else {
        pretty(200, &bodies.next().unwrap_or_default())
    }
}

fn parts(content: &Value) -> &[Value] {
    list(content.get("parts"))
}

fn text_of(content: &Value) -> String {
    parts(content)
        .iter()
        .filter_map(|p| str_at(p, "text"))
        .collect()
}

fn function_response(part: &Value) -> Option<&Value> {
    field(part, "functionResponse", "function_response")
}

fn conversation<'a>(body: &'a Value, contents: &'a [Value], model: &str) -> Conversation<'a> {
    let mut t = Transcript::new("gemini", model);
    let system = field(body, "systemInstruction", "system_instruction").map(text_of);
    if let Some(system) = system.filter(|s| !s.is_empty()) {
        t.message("system");
        t.text(&system);
    }
    let (mut prefix, mut last_user_text) = (None, String::new());
    for (i, c) in contents.iter().enumerate() {
        if i + 1 == contents.len() && t.snapshot().tokens() > 0 {
            prefix = Some(t.snapshot());
        }
        let role = str_at(c, "role").unwrap_or("user");
        t.message(role);
        let text = text_of(c);
        t.text(&text);
        for r in parts(c).iter().filter_map(function_response) {
            t.text(&r.get("response").map(Value::to_string).unwrap_or_default());
        }
        if role == "user" {
            last_user_text = text;
        }
    }
    let mut conv = Conversation::new(t);
    (conv.prefix, conv.last_user_text) = (prefix, last_user_text);
    let last = contents.last().map_or(&[][..], parts);
    conv.tool_results = last.iter().filter_map(function_response).count();
    static EMPTY: Value = Value::Null;
    for tool in list(body.get("tools")) {
        for d in list(field(tool, "functionDeclarations", "function_declarations")) {
            let json_schema = field(d, "parametersJsonSchema", "parameters_json_schema");
            let schema = d.get("parameters").or(json_schema).unwrap_or(&EMPTY);
            if let Some(name) = str_at(d, "name") {
                conv.tools.push(Tool { name, schema });
            }
        }
    }
    let calling = field(body, "toolConfig", "tool_config")
        .and_then(|c| field(c, "functionCallingConfig", "function_calling_config"))
        .unwrap_or(&EMPTY);
    let allowed = list(field(
        calling,
        "allowedFunctionNames",
        "allowed_function_names",
    ));
    conv.tool_mode = match (str_at(calling, "mode"), allowed) {
        (Some("NONE"), _) => ToolMode::None,
        (Some("ANY"), [only]) => only.as_str().map_or(ToolMode::Auto, ToolMode::Forced),
        _ => ToolMode::Auto,
    };
    let gen = field(body, "generationConfig", "generation_config").unwrap_or(&EMPTY);
    let json_out =
        field(gen, "responseMimeType", "response_mime_type") == Some(&json!("application/json"));
    let schema = field(gen, "responseJsonSchema", "response_json_schema")
        .or_else(|| field(gen, "responseSchema", "response_schema"));
    conv.structured = match (json_out, schema) {
        (true, Some(schema)) => Structured::Schema(schema),
        (true, None) => Structured::JsonObject,
        _ => Structured::None,
    };
    conv
}

/// The parts of each response chunk: one chunk when not streaming; text in pieces and one
/// whole `functionCall` per chunk when streaming (Gemini never splits call arguments).
fn chunks(out: &Output, stream: bool) -> Vec<Vec<Value>> {
    match out {
        Output::Text(text) if stream => pieces(text, 8, 16)
            .into_iter()
            .map(|p| vec![json!({ "text": p })])
            .collect(),
        Output::Text(text) => vec![vec![json!({ "text": text })]],
        Output::Calls(calls) => {
            let part = |c: &super::behavior::ToolCall| json!({"functionCall": {"name": c.name, "args": c.input}});
            let parts = calls.iter().map(part);
            if stream {
                parts.map(|p| vec![p]).collect()
            } else {
                vec![parts.collect()]
            }
        }
    }
}

/// One `GenerateContentResponse`; only the last carries `finishReason` and output usage.
fn response(parts: Vec<Value>, last: bool, u: &Usage, model: &str, id: &str) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}});
    let mut usage = json!({"promptTokenCount": u.input});
    if let (Some(c), Some(m)) = (candidate.as_object_mut(), usage.as_object_mut()) {
        if last {
            c.insert("finishReason".into(), "STOP".into());
            c.insert("index".into(), 0.into());
            m.insert("candidatesTokenCount".into(), u.output.into());
        }
        let total = if last { u.input + u.output } else { u.input };
        m.insert("totalTokenCount".into(), total.into());
        let details = |n: u64| json!([{"modality": "TEXT", "tokenCount": n}]);
        if u.cache_read > 0 {
            m.insert("cachedContentTokenCount".into(), u.cache_read.into());
        }
        m.insert("promptTokensDetails".into(), details(u.input));
        if u.cache_read > 0 {
            m.insert("cacheTokensDetails".into(), details(u.cache_read));
        }
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": id})
}

fn model_json(id: &str, display: &str) -> Value {
    let methods = [
        "generateContent",
        "countTokens",
        "createCachedContent",
        "batchGenerateContent",
    ];
    json!({
        "name": format!("models/{id}"), "version": "001", "displayName": display,
        "description": "Mock Gemini model", "inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536,
        "supportedGenerationMethods": methods,
        "temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2, "thinking": true
    })
}

/// `GET /v1beta/models` and `GET /v1beta/models/{id}`.
pub(crate) fn models(req: &Request, id: Option<&str>) -> Response {
    if let Some(denied) = check_key(req) {
        return denied;
    }
    if let Some(id) = id {
        return pretty(200, &model_json(id, id));
    }
    let names = [
        ("gemini-2.5-flash", "Gemini 2.5 Flash"),
        ("gemini-2.5-pro", "Gemini 2.5 Pro"),
    ];
    let list: Vec<Value> = names.iter().map(|(id, d)| model_json(id, d)).collect();
    pretty(200, &json!({ "models": list }))
}
