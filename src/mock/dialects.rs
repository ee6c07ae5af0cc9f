//! Servers that speak a dialect of OpenAI Chat Completions, each validating and answering
//! like the real one (providers.md §4–§7, §9, and the recordings in `shared/corpus`):
//!
//! * Mistral (`/mistral/v1/chat/completions`): a closed request schema (unknown fields and
//!   misplaced message keys → 422 `extra_forbidden`), tool-call ids of exactly 9
//!   `[A-Za-z0-9]` (400 `invalid_function_call`, code 3280), no empty assistant messages,
//!   last role user/tool (or an assistant `prefix`), `tool_choice` `auto|none|any|required`;
//!   32-hex ids, 9-character call ids, `tool_calls: null` on text answers, usage always on
//!   the last stream chunk, tool calls whole in one delta.
//! * DeepSeek (`/deepseek/chat/completions`, `/deepseek/v1/…`): role/field errors as 422
//!   "Failed to deserialize…", unknown model → 400 `Model Not Exist`, `json_object` needs
//!   "json" in the prompt, tool pairing, thinking mode (`*reasoner*` or `thinking.enabled`)
//!   returns `reasoning_content` and wants it back on this turn's tool-call messages; usage
//!   with `prompt_cache_hit_tokens`/`prompt_cache_miss_tokens` and
//!   `prompt_tokens_details.cached_tokens` (64-token cache units); streams start with a
//!   `: keep-alive` comment and carry usage on the finish chunk.
//! * Qwen / DashScope compatible mode (`/qwen/compatible-mode/v1/chat/completions`):
//!   `enable_thinking` (default on for open-weight `qwen3-<n>b…`) streams
//!   `reasoning_content` and is a 400 without `stream`; errors carry `request_id`.
//! * Azure OpenAI (`/openai/deployments/{deployment}/chat/completions?api-version=…`, and
//!   the v1 `/openai/v1/chat/completions`): `api-version` required (404 "Resource not
//!   found" without, 400 for a malformed one), `api-key` (or an Entra bearer) required (401
//!   in Azure's `{"error":{"code":"401"}}` shape), `stream_options` only from 2024-09-01;
//!   the model reported is the deployment; `prompt_filter_results` and per-choice
//!   `content_filter_results`; a stream opens with a `choices: []` filter chunk.
//! * A generic local server (`/compat/v1/chat/completions`, Ollama-like): no key needed,
//!   tool calls whole in one chunk with `finish_reason: stop` in streams, no cached tokens.

use super::behavior::{
    content_text, implicit_cached_at, list, now_secs, output_tokens, pieces, plan, rand_hex,
    rand_id, rand_uuid, split_model, str_at, Directives, Output, ToolCall, Usage,
};
use super::http::{Body, Request, Response};
use super::openai::conversation_in;
use super::{respond_with, State};
use serde_json::{json, Value};

/// An OpenAI dialect the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Mistral,
    DeepSeek,
    Qwen,
    Azure,
    /// A generic local OpenAI-compatible server (Ollama-like).
    Compat,
}

const SSE: &str = "text/event-stream; charset=utf-8";

impl Dialect {
    /// Prompt-cache namespace.
    fn name(self) -> &'static str {
        match self {
            Dialect::Mistral => "mistral",
            Dialect::DeepSeek => "deepseek",
            Dialect::Qwen => "qwen",
            Dialect::Azure => "azure",
            Dialect::Compat => "compat",
        }
    }

    /// Implicit cache: (minimum prefix, unit) in tokens; `None` reports no cache.
    fn cache(self) -> Option<(u64, u64)> {
        match self {
            Dialect::Mistral | Dialect::DeepSeek => Some((64, 64)),
            Dialect::Qwen => Some((256, 64)),
            Dialect::Azure => Some((1024, 128)),
            Dialect::Compat => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        s.into()
    }
}

/// Mistral's `{"object":"error","message","type","param","code"}`.
fn mistral_error(status: u16, message: Value, ty: &str, code: &str) -> Response {
    let body = json!({"object": "error", "message": message, "type": ty, "param": null, "code": opt(code)});
    Response::json(status, &body).header("mistral-correlation-id", rand_uuid())
}

/// Mistral's 422: pydantic's `detail` list inside `message`.
fn mistral_unprocessable(detail: Vec<Value>) -> Response {
    mistral_error(
        422,
        json!({ "detail": detail }),
        "invalid_request_error",
        "",
    )
}

/// `{"error":{"message","type","param","code"}}` (DeepSeek, the local server).
fn envelope(status: u16, message: &str, ty: &str, code: &str) -> Response {
    let error = json!({"message": message, "type": ty, "param": null, "code": opt(code)});
    Response::json(status, &json!({ "error": error }))
}

/// DashScope's envelope with `request_id` (also in `x-request-id`).
fn qwen_error(status: u16, message: &str, ty: &str, code: &str) -> Response {
    let id = rand_uuid();
    let error = json!({"message": message, "type": ty, "param": null, "code": opt(code)});
    Response::json(status, &json!({"error": error, "request_id": id})).header("x-request-id", id)
}

/// Azure's own `{"error":{"code","message"}}` (gateway-level errors: auth, routing).
fn azure_error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    Response::json(status, &body).header("apim-request-id", rand_uuid())
}

/// Azure's pass-through of OpenAI's envelope (model-level errors).
fn azure_openai_error(status: u16, message: &str, ty: &str, param: &str, code: &str) -> Response {
    let error =
        json!({"message": message, "type": opt(ty), "param": opt(param), "code": opt(code)});
    Response::json(status, &json!({ "error": error })).header("apim-request-id", rand_uuid())
}

const AZURE_401: &str = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.";

/// The error each dialect answers with for `status` (directives, `fail_rate`).
pub(crate) fn error(
    dialect: Dialect,
    status: u16,
    model: &str,
    retry_after: Option<u64>,
) -> Response {
    let mut resp = match dialect {
        Dialect::Mistral => match status {
            401 => Response::json(
                401,
                &json!({"message": "Unauthorized", "request_id": rand_hex(32)}),
            ),
            404 => mistral_error(404, format!("Invalid model: {model}").into(), "invalid_model", "1500"),
            422 => mistral_unprocessable(vec![
                json!({"type": "value_error", "loc": ["body"], "msg": "Invalid request", "input": null}),
            ]),
            429 => mistral_error(429, "Requests rate limit exceeded".into(), "rate_limited", "1300"),
            s if s >= 500 => mistral_error(s, "Internal server error".into(), "internal_server_error", ""),
            s => mistral_error(s, "Invalid request".into(), "invalid_request_error", ""),
        },
        Dialect::DeepSeek => {
            let (message, ty) = match status {
                400 => ("Invalid Format", "invalid_request_error"),
                401 => (
                    "Authentication Fails, Your api key: **** is invalid",
                    "authentication_error",
                ),
                402 => ("Insufficient Balance", "unknown_error"),
                422 => ("Invalid Parameters", "invalid_request_error"),
                429 => ("Rate Limit Reached", "rate_limit_reached_error"),
                500 => ("Server Error", "server_error"),
                503 => ("Server Overloaded", "server_overloaded"),
                s if s >= 500 => ("Server Error", "server_error"),
                _ => ("Invalid Request", "invalid_request_error"),
            };
            envelope(status, message, ty, "invalid_request_error")
        }
        Dialect::Qwen => {
            let (message, ty, code) = match status {
                400 => ("Invalid request.", "invalid_request_error", "invalid_parameter_error"),
                401 => ("Incorrect API key provided. ", "invalid_request_error", "invalid_api_key"),
                403 => (
                    "Access denied, please make sure your account is in good standing.",
                    "Arrearage",
                    "Arrearage",
                ),
                404 => ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
                429 => (
                    "Requests rate limit exceeded, please try again later.",
                    "limit_requests",
                    "limit_requests",
                ),
                503 => ("The service is temporarily unavailable, please try again later.", "ServiceUnavailable", "ServiceUnavailable"),
                s if s >= 500 => (
                    "An internal error has occured, please try again later or contact service support.",
                    "internal_error",
                    "internal_error",
                ),
                _ => ("Invalid request.", "invalid_request_error", "invalid_parameter_error"),
            };
            qwen_error(status, message, ty, code)
        }
        Dialect::Azure => match status {
            401 => azure_error(401, "401", AZURE_401),
            404 => azure_error(404, "DeploymentNotFound", "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."),
            429 => {
                let msg = format!("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit. (deployment {model})");
                azure_error(429, "429", &msg)
                    .header("retry-after", "1")
                    .header("retry-after-ms", "1000")
                    .header("x-ratelimit-remaining-requests", "0")
                    .header("x-ratelimit-remaining-tokens", "0")
            }
            503 => azure_error(503, "ServiceUnavailable", "The service is temporarily unable to process your request. Please try again later."),
            s if s >= 500 => azure_openai_error(s, "The server had an error while processing your request. Sorry about that!", "server_error", "", ""),
            s => azure_openai_error(s, "Invalid request.", "invalid_request_error", "", ""),
        },
        Dialect::Compat => match status {
            s if s >= 500 => envelope(s, "internal server error", "api_error", ""),
            404 => envelope(404, &format!("model \"{model}\" not found, try pulling it first"), "api_error", ""),
            s => envelope(s, "invalid request", "invalid_request_error", ""),
        },
    };
    if status == 429 && dialect != Dialect::Azure {
        resp = resp.header("retry-after", "1");
    }
    match retry_after {
        Some(s) => resp.header("retry-after", s.to_string()),
        None => resp,
    }
}

/// An unknown path under a dialect's prefix.
pub(crate) fn not_found(dialect: Dialect, req: &Request) -> Response {
    match dialect {
        Dialect::Mistral => Response::json(404, &json!({"detail": "Not Found"})),
        Dialect::Azure => azure_error(404, "404", "Resource not found"),
        Dialect::Qwen => qwen_error(404, "Not Found", "invalid_request_error", "NotFound"),
        _ => {
            let msg = format!("Invalid URL ({} {})", req.method, req.path());
            envelope(404, &msg, "invalid_request_error", "")
        }
    }
}

/// HTTP-level failures (bad framing, body too large) in the dialect's shape.
pub(crate) fn http_error(dialect: Dialect, status: u16, message: &str) -> Response {
    match dialect {
        Dialect::Mistral => mistral_error(status, message.into(), "invalid_request_error", ""),
        Dialect::Qwen => qwen_error(
            status,
            message,
            "invalid_request_error",
            "invalid_parameter_error",
        ),
        Dialect::Azure => azure_error(status, &status.to_string(), message),
        _ => envelope(status, message, "invalid_request_error", ""),
    }
}

// ---------------------------------------------------------------------------------------
// Auth and validation
// ---------------------------------------------------------------------------------------

/// A non-empty bearer token.
fn bearer(req: &Request) -> Option<&str> {
    let auth = req.header("authorization")?;
    auth.get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))?;
    Some(auth[7..].trim()).filter(|k| !k.is_empty())
}

/// `api-version` accepted by Azure: `YYYY-MM-DD`, optionally `-preview`, or `preview`/`latest`.
fn valid_api_version(v: &str) -> bool {
    let dated = |d: &str| {
        d.len() == 10
            && d.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                _ => b.is_ascii_digit(),
            })
    };
    matches!(v, "preview" | "latest" | "v1")
        || dated(v)
        || v.strip_suffix("-preview").is_some_and(dated)
}

/// Checks the key (and Azure's `api-version`); `None` when the request may proceed.
fn check_access(dialect: Dialect, req: &Request, classic_azure: bool) -> Option<Response> {
    match dialect {
        Dialect::Compat => None,
        Dialect::Azure => {
            if classic_azure {
                match req.query("api-version") {
                    None | Some("") => return Some(azure_error(404, "404", "Resource not found")),
                    Some(v) if !valid_api_version(v) => {
                        return Some(azure_error(400, "BadRequest", "API version not supported"))
                    }
                    Some(_) => {}
                }
            }
            let key = req.header("api-key").filter(|k| !k.is_empty());
            match (key, bearer(req)) {
                (None, None) => Some(azure_error(401, "401", AZURE_401)),
                _ => None,
            }
        }
        Dialect::DeepSeek => match bearer(req) {
            Some(_) => None,
            None => Some(envelope(
                401,
                "Authentication Fails, Your api key: **** is invalid",
                "authentication_error",
                "invalid_request_error",
            )),
        },
        d => bearer(req).is_none().then(|| error(d, 401, "", None)),
    }
}

/// What is wrong with the pairing of tool calls and tool messages.
enum Pairing {
    /// A `tool` message at this index answers no pending call.
    Orphan(usize),
    /// The assistant message at this index has calls without results.
    Unanswered(usize, Vec<String>),
}

fn call_ids(m: &Value) -> Vec<&str> {
    list(m.get("tool_calls"))
        .iter()
        .filter_map(|c| str_at(c, "id"))
        .collect()
}

/// OpenAI's rule: an assistant message with `tool_calls` is followed by one `tool` message
/// per call before anything else, and a `tool` message answers a pending call.
fn pairing(messages: &[Value]) -> Option<Pairing> {
    let mut pending: Vec<&str> = Vec::new();
    let mut from = 0;
    let unanswered =
        |from, p: &[&str]| Pairing::Unanswered(from, p.iter().map(|s| s.to_string()).collect());
    for (i, m) in messages.iter().enumerate() {
        let role = str_at(m, "role").unwrap_or("");
        if role == "tool" {
            let id = str_at(m, "tool_call_id").unwrap_or("");
            match pending.iter().position(|p| *p == id) {
                Some(k) => drop(pending.remove(k)),
                None => return Some(Pairing::Orphan(i)),
            }
            continue;
        }
        if !pending.is_empty() {
            return Some(unanswered(from, &pending));
        }
        if role == "assistant" {
            pending = call_ids(m);
            from = i;
        }
    }
    (!pending.is_empty()).then(|| unanswered(from, &pending))
}

/// Whether content carries no text and no other part.
fn empty_content(c: Option<&Value>) -> bool {
    match c {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(parts)) => parts.iter().all(|p| {
            str_at(p, "type") == Some("text") && str_at(p, "text").is_none_or(str::is_empty)
        }),
        Some(_) => false,
    }
}

/// The fields of Mistral's chat request (client-python 2026-06); anything else is a 422.
const MISTRAL_FIELDS: [&str; 22] = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "metadata",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "prediction",
    "parallel_tool_calls",
    "reasoning_effort",
    "prompt_mode",
    "guardrails",
    "prompt_cache_key",
    "safe_prompt",
];

fn is_mistral_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn validate_mistral(body: &Value, messages: &[Value]) -> Result<(), Response> {
    let extra = |loc: Value, input: &Value| json!({"type": "extra_forbidden", "loc": loc, "msg": "Extra inputs are not permitted", "input": input});
    let mut detail = Vec::new();
    for (k, v) in body.as_object().into_iter().flatten() {
        if !MISTRAL_FIELDS.contains(&k.as_str()) {
            detail.push(extra(json!(["body", k]), v));
        }
    }
    if body.get("model").is_none() {
        detail.push(json!({"type": "missing", "loc": ["body", "model"], "msg": "Field required", "input": null}));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = str_at(m, "role").unwrap_or("");
        let allowed: &[&str] = match role {
            "system" | "user" => &["role", "content"],
            "assistant" => &["role", "content", "tool_calls", "prefix"],
            "tool" => &["role", "content", "tool_call_id", "name"],
            other => {
                let msg = format!("Input tag '{other}' found using 'role' does not match any of the expected tags: 'assistant', 'system', 'tool', 'user'");
                detail.push(json!({"type": "union_tag_invalid", "loc": ["body", "messages", i], "msg": msg, "input": m}));
                continue;
            }
        };
        for (k, v) in m.as_object().into_iter().flatten() {
            if !allowed.contains(&k.as_str()) {
                detail.push(extra(json!(["body", "messages", i, role, k]), v));
            }
        }
    }
    if let Some(choice) = body.get("tool_choice").and_then(Value::as_str) {
        if !["auto", "none", "any", "required"].contains(&choice) {
            let msg = "Input should be 'auto', 'none', 'any' or 'required'";
            detail.push(json!({"type": "enum", "loc": ["body", "tool_choice", "enum[ToolChoiceEnum]"], "msg": msg, "input": choice}));
        }
    }
    if !detail.is_empty() {
        return Err(mistral_unprocessable(detail));
    }
    if messages.is_empty() {
        let msg = "List should have at least 1 item after validation, not 0";
        return Err(mistral_unprocessable(vec![
            json!({"type": "too_short", "loc": ["body", "messages"], "msg": msg, "input": []}),
        ]));
    }
    let bad_id = |id: &str| {
        let msg = format!("Tool call id was {id} but must be a-z, A-Z, 0-9, with a length of 9.");
        let body = json!({"object": "error", "message": msg, "type": "invalid_function_call",
                          "param": null, "code": "3280", "raw_status_code": 400});
        Response::json(400, &body)
    };
    for m in messages {
        for id in call_ids(m) {
            if !is_mistral_id(id) {
                return Err(bad_id(id));
            }
        }
        if let Some(id) = str_at(m, "tool_call_id").filter(|id| !is_mistral_id(id)) {
            return Err(bad_id(id));
        }
        let no_calls = list(m.get("tool_calls")).is_empty();
        let prefix = m.get("prefix") == Some(&Value::Bool(true));
        if str_at(m, "role") == Some("assistant")
            && no_calls
            && !prefix
            && empty_content(m.get("content"))
        {
            let msg = "Assistant message must have either content or tool_calls, but not none.";
            return Err(mistral_error(400, msg.into(), "invalid_request_error", ""));
        }
    }
    let last = messages.last().unwrap_or(&Value::Null);
    let last_role = str_at(last, "role").unwrap_or("");
    let prefix = last.get("prefix") == Some(&Value::Bool(true));
    if !(last_role == "user" || last_role == "tool" || (last_role == "assistant" && prefix)) {
        let msg = format!("Expected last role User or Tool (or Assistant with prefix True) for serving but got {last_role}");
        return Err(mistral_error(400, msg.into(), "invalid_request_error", ""));
    }
    if pairing(messages).is_some() {
        let msg = "Not the same number of function calls and responses";
        return Err(mistral_error(400, msg.into(), "invalid_request_error", ""));
    }
    Ok(())
}

/// DeepSeek's thinking mode: `*reasoner*` models, or `thinking: {type: enabled}`.
fn deepseek_thinking(body: &Value, model: &str) -> bool {
    match body.pointer("/thinking/type").and_then(Value::as_str) {
        Some("enabled") => true,
        Some("disabled") => false,
        _ => model.contains("reasoner"),
    }
}

fn validate_deepseek(body: &Value, messages: &[Value], model: &str) -> Result<(), Response> {
    let deserialize = |what: String| {
        let msg = format!("Failed to deserialize the JSON body into the target type: {what}");
        envelope(422, &msg, "invalid_request_error", "invalid_request_error")
    };
    let bad = |msg: &str| envelope(400, msg, "invalid_request_error", "invalid_request_error");
    for (i, m) in messages.iter().enumerate() {
        let role = str_at(m, "role").unwrap_or("");
        if !["system", "user", "assistant", "tool"].contains(&role) {
            return Err(deserialize(format!("messages[{i}]: unknown variant `{role}`, expected one of `system`, `user`, `assistant`, `tool`")));
        }
    }
    if !model.starts_with("deepseek") {
        return Err(bad("Model Not Exist"));
    }
    if messages.is_empty() {
        return Err(bad("Empty input messages"));
    }
    if body
        .pointer("/response_format/type")
        .and_then(Value::as_str)
        == Some("json_object")
    {
        let mentions = messages.iter().any(|m| {
            content_text(m.get("content"))
                .to_ascii_lowercase()
                .contains("json")
        });
        if !mentions {
            return Err(bad("Prompt must contain the word 'json' in some form to use 'response_format' of type 'json_object'."));
        }
    }
    match pairing(messages) {
        Some(Pairing::Orphan(_)) => {
            return Err(bad("Messages with role 'tool' must be a response to a preceding message with 'tool_calls'"))
        }
        Some(Pairing::Unanswered(..)) => {
            return Err(bad("An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. (insufficient tool messages following tool_calls message)"))
        }
        None => {}
    }
    if deepseek_thinking(body, model) {
        let last_user = messages
            .iter()
            .rposition(|m| str_at(m, "role") == Some("user"))
            .unwrap_or(0);
        let missing = messages[last_user..].iter().any(|m| {
            str_at(m, "role") == Some("assistant")
                && !call_ids(m).is_empty()
                && str_at(m, "reasoning_content").is_none()
        });
        if missing {
            return Err(bad(
                "The reasoning_content in the thinking mode must be passed back to the API.",
            ));
        }
    }
    Ok(())
}

/// Open-weight hybrid-thinking Qwen3 (`qwen3-32b`, `qwen3-235b-a22b`, ...): thinking is on
/// unless `enable_thinking: false`.
fn qwen_open_weight(model: &str) -> bool {
    let mut parts = model.split('-');
    let size = match (parts.next(), parts.next()) {
        (Some("qwen3"), Some(size)) => size,
        _ => return false,
    };
    let digits = size.strip_suffix('b').unwrap_or("");
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !model.contains("instruct")
}

fn qwen_thinking(body: &Value, model: &str) -> bool {
    match body.get("enable_thinking").and_then(Value::as_bool) {
        Some(on) => on,
        None => qwen_open_weight(model),
    }
}

fn validate_qwen(
    body: &Value,
    messages: &[Value],
    model: &str,
    stream: bool,
) -> Result<(), Response> {
    let bad = |msg: &str| qwen_error(400, msg, "invalid_request_error", "invalid_parameter_error");
    if model.is_empty() {
        return Err(bad("The model is required."));
    }
    if messages.is_empty() {
        return Err(bad(
            "<400> InternalError.Algo.InvalidParameter: Input should be a non-empty list: messages",
        ));
    }
    if qwen_thinking(body, model) && !stream {
        return Err(bad(
            "parameter.enable_thinking must be set to false for non-streaming calls",
        ));
    }
    match pairing(messages) {
        Some(Pairing::Orphan(i)) => Err(bad(&format!("<400> InternalError.Algo.InvalidParameter: messages with role \"tool\" must be a response to a preceeding message with \"tool_calls\" (messages[{i}])"))),
        Some(Pairing::Unanswered(i, ids)) => Err(bad(&format!("<400> InternalError.Algo.InvalidParameter: An assistant message with \"tool_calls\" must be followed by tool messages responding to each \"tool_call_id\". The following tool_call_ids did not have response messages: {} (messages[{i}])", ids.join(", ")))),
        None => Ok(()),
    }
}

fn validate_azure(
    req: &Request,
    body: &Value,
    messages: Option<&Vec<Value>>,
) -> Result<(), Response> {
    let invalid =
        |msg: &str, param: &str| azure_openai_error(400, msg, "invalid_request_error", param, "");
    let Some(messages) = messages else {
        return Err(invalid("'messages' is a required property", ""));
    };
    if messages.is_empty() {
        return Err(invalid("[] is too short - 'messages'", ""));
    }
    let old = req
        .query("api-version")
        .is_some_and(|v| v.len() >= 10 && v.as_bytes()[4] == b'-' && v[..10] < *"2024-09-01");
    if old && body.get("stream_options").is_some() {
        return Err(invalid(
            "Unrecognized request argument supplied: stream_options",
            "",
        ));
    }
    match pairing(messages) {
        Some(Pairing::Orphan(i)) => Err(invalid(
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
            &format!("messages.[{i}].role"),
        )),
        Some(Pairing::Unanswered(i, ids)) => Err(invalid(
            &format!("An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}", ids.join(", ")),
            &format!("messages.[{i}].role"),
        )),
        None => Ok(()),
    }
}

const AZURE_FILTERED: &str = "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766";

/// Azure's 400 for a prompt the content filter blocks.
fn azure_content_filter() -> Response {
    let mut result = prompt_filter();
    result["sexual"] = json!({"filtered": true, "severity": "medium"});
    let error = json!({
        "message": AZURE_FILTERED, "type": null, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": result},
    });
    Response::json(400, &json!({ "error": error })).header("apim-request-id", rand_uuid())
}

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------

/// `POST …/chat/completions` of a dialect; `deployment` is Azure's (classic URL).
pub(crate) fn chat(
    state: &State,
    req: &Request,
    body: Option<&Value>,
    dialect: Dialect,
    deployment: Option<&str>,
) -> Response {
    if let Some(denied) = check_access(dialect, req, deployment.is_some()) {
        return denied;
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return match dialect {
            Dialect::Mistral => mistral_unprocessable(vec![
                json!({"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error", "input": {}}),
            ]),
            Dialect::DeepSeek => envelope(
                400,
                "Failed to parse the request body as JSON",
                "invalid_request_error",
                "invalid_request_error",
            ),
            Dialect::Qwen => qwen_error(
                400,
                "Request body is not valid JSON.",
                "invalid_request_error",
                "invalid_parameter_error",
            ),
            Dialect::Azure => azure_openai_error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                "",
                "",
            ),
            Dialect::Compat => envelope(
                400,
                "invalid character in request body",
                "invalid_request_error",
                "",
            ),
        };
    };
    let raw_model = deployment.or_else(|| str_at(body, "model")).unwrap_or("");
    let (model, directives) = split_model(raw_model);
    let directives = directives.for_body(req.body.len());
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let messages = body.get("messages").and_then(Value::as_array);
    let empty = Vec::new();
    let checked = match dialect {
        Dialect::Mistral => validate_mistral(body, messages.unwrap_or(&empty)),
        Dialect::DeepSeek => match messages {
            None => Err(envelope(422, "Failed to deserialize the JSON body into the target type: missing field `messages`", "invalid_request_error", "invalid_request_error")),
            Some(_) if str_at(body, "model").is_none() => Err(envelope(422, "Failed to deserialize the JSON body into the target type: missing field `model`", "invalid_request_error", "invalid_request_error")),
            Some(m) => validate_deepseek(body, m, model),
        },
        Dialect::Qwen => validate_qwen(body, messages.unwrap_or(&empty), model, stream),
        Dialect::Azure => validate_azure(req, body, messages),
        Dialect::Compat => match messages {
            Some(m) if !m.is_empty() && !model.is_empty() => Ok(()),
            _ => Err(envelope(400, "model and messages are required", "invalid_request_error", "")),
        },
    };
    if let Err(resp) = checked {
        return resp;
    }
    if dialect == Dialect::Azure && directives.content_filter {
        return azure_content_filter();
    }
    if dialect == Dialect::Qwen && directives.data_inspection {
        return qwen_error(
            400,
            "Input data may contain inappropriate content.",
            "data_inspection_failed",
            "data_inspection_failed",
        );
    }
    let messages = messages.map_or(&[][..], Vec::as_slice);
    let thinking = match dialect {
        Dialect::DeepSeek => deepseek_thinking(body, model),
        Dialect::Qwen => qwen_thinking(body, model),
        _ => false,
    };
    let spec = Spec {
        dialect,
        model,
        stream,
        include_usage: body.pointer("/stream_options/include_usage") == Some(&json!(true)),
        thinking,
        directives: &directives,
    };
    let answer = || answer(state, body, messages, &spec);
    let err = |status| error(dialect, status, model, directives.retry_after);
    respond_with(state, &directives, stream, err, 503, answer)
}

/// Everything that shapes one answer.
struct Spec<'a> {
    dialect: Dialect,
    model: &'a str,
    stream: bool,
    include_usage: bool,
    thinking: bool,
    directives: &'a Directives,
}

/// The reasoning a thinking model shows, derived from the question.
fn reasoning_text(user: &str) -> String {
    let head: String = user.chars().take(40).collect();
    format!(
        "The user asked \"{head}\" ({} characters); a mock answer follows.",
        user.chars().count()
    )
}

/// A generated tool call with the dialect's id.
struct Call<'a> {
    id: String,
    call: &'a ToolCall,
}

fn call_id(dialect: Dialect, i: usize) -> String {
    match dialect {
        Dialect::Mistral => rand_id("", 9),
        Dialect::DeepSeek => rand_id(&format!("call_{i:02}_"), 24),
        Dialect::Qwen => format!("call_{}", rand_hex(24)),
        Dialect::Azure => rand_id("call_", 24),
        Dialect::Compat => format!("call_{}", rand_hex(8)),
    }
}

fn answer(state: &State, body: &Value, messages: &[Value], s: &Spec) -> Response {
    let conv = conversation_in(s.dialect.name(), body, messages, s.model);
    let out = plan(&conv);
    let reasoning = s.thinking.then(|| reasoning_text(&conv.last_user_text));
    let reasoning_tokens = reasoning
        .as_ref()
        .map_or(0, |r| (r.chars().count() as u64).div_ceil(4));
    let cache_read = match s.dialect.cache() {
        Some((min, unit)) => implicit_cached_at(&state.cache, conv.prefix, min, unit),
        None => 0,
    };
    let usage = Usage {
        input: conv.transcript.snapshot().tokens(),
        output: output_tokens(&out) + reasoning_tokens,
        cache_read,
        ..Usage::default()
    };
    let calls: Vec<Call> = match &out {
        Output::Calls(c) => c
            .iter()
            .enumerate()
            .map(|(i, call)| Call {
                id: call_id(s.dialect, i),
                call,
            })
            .collect(),
        Output::Text(_) => Vec::new(),
    };
    let text = match &out {
        Output::Text(t) => Some(t.as_str()),
        Output::Calls(_) => None,
    };
    let a = Answer {
        text,
        calls,
        reasoning,
        usage,
        reasoning_tokens,
    };
    let resp = if s.stream {
        Response::sse(stream_events(s, &a), SSE)
    } else {
        let mut bytes = Vec::new();
        if s.dialect == Dialect::DeepSeek {
            // Keep-alives before a non-stream body are blank lines.
            let n = s.directives.keep_alive.unwrap_or(0) as usize;
            bytes.extend(std::iter::repeat_n(b'\n', n));
        }
        bytes.extend(serde_json::to_vec(&completion(s, &a)).unwrap_or_default());
        Response::new(200, Body::Full(bytes)).header("content-type", "application/json")
    };
    match s.dialect {
        Dialect::Mistral => resp
            .header("mistral-correlation-id", rand_uuid())
            .header("x-ratelimitbysize-remaining-minute", "499000"),
        Dialect::DeepSeek => resp.header("x-ds-trace-id", rand_hex(32)),
        Dialect::Qwen => resp.header("x-request-id", rand_uuid()),
        Dialect::Azure => resp
            .header("apim-request-id", rand_uuid())
            .header("x-request-id", rand_uuid())
            .header("x-ms-region", "East US")
            .header("x-ratelimit-remaining-requests", "499")
            .header("x-ratelimit-remaining-tokens", "199000"),
        Dialect::Compat => resp,
    }
}

/// The planned reply with ids assigned.
struct Answer<'a> {
    text: Option<&'a str>,
    calls: Vec<Call<'a>>,
    reasoning: Option<String>,
    usage: Usage,
    reasoning_tokens: u64,
}

/// Usage in each dialect's shape.
fn usage_json(s: &Spec, a: &Answer) -> Value {
    let u = &a.usage;
    let (prompt, completion, total) = (u.input, u.output, u.input + u.output);
    match s.dialect {
        Dialect::Mistral => json!({
            "prompt_tokens": prompt, "total_tokens": total, "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": u.cache_read},
        }),
        Dialect::DeepSeek => {
            let mut v = json!({
                "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total,
                "prompt_tokens_details": {"cached_tokens": u.cache_read},
            });
            if a.reasoning.is_some() {
                v["completion_tokens_details"] = json!({"reasoning_tokens": a.reasoning_tokens});
            }
            v["prompt_cache_hit_tokens"] = u.cache_read.into();
            v["prompt_cache_miss_tokens"] = (prompt - u.cache_read.min(prompt)).into();
            v
        }
        Dialect::Qwen => {
            let mut v = json!({
                "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total,
                "prompt_tokens_details": {"cached_tokens": u.cache_read},
            });
            if a.reasoning.is_some() {
                v["completion_tokens_details"] = json!({"reasoning_tokens": a.reasoning_tokens});
            }
            v
        }
        Dialect::Azure => json!({
            "completion_tokens": completion,
            "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0,
                                          "reasoning_tokens": 0, "rejected_prediction_tokens": 0},
            "prompt_tokens": prompt,
            "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": u.cache_read},
            "total_tokens": total,
        }),
        Dialect::Compat => json!({
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total,
        }),
    }
}

fn safe() -> Value {
    json!({"filtered": false, "severity": "safe"})
}

/// Azure's per-prompt filter verdict (everything safe).
fn prompt_filter() -> Value {
    json!({"hate": safe(), "jailbreak": {"filtered": false, "detected": false},
           "self_harm": safe(), "sexual": safe(), "violence": safe()})
}

/// Azure's per-completion filter verdict (everything safe).
fn completion_filter() -> Value {
    json!({"hate": safe(), "protected_material_code": {"filtered": false, "detected": false},
           "protected_material_text": {"filtered": false, "detected": false},
           "self_harm": safe(), "sexual": safe(), "violence": safe()})
}

fn prompt_filter_results() -> Value {
    json!([{"prompt_index": 0, "content_filter_results": prompt_filter()}])
}

/// Tool calls in a message (or a whole-call delta) in the dialect's key order.
fn calls_json(dialect: Dialect, calls: &[Call]) -> Vec<Value> {
    let one = |(i, c): (usize, &Call)| {
        let (name, args) = (&c.call.name, &c.call.args);
        match dialect {
            Dialect::Mistral => json!({"id": c.id, "type": "function",
                                       "function": {"name": name, "arguments": args}, "index": i}),
            Dialect::Qwen => json!({"function": {"arguments": args, "name": name}, "index": i,
                                    "id": c.id, "type": "function"}),
            Dialect::Compat => json!({"id": c.id, "index": i, "type": "function",
                                      "function": {"name": name, "arguments": args}}),
            Dialect::DeepSeek => json!({"index": i, "id": c.id, "type": "function",
                                        "function": {"name": name, "arguments": args}}),
            Dialect::Azure => json!({"function": {"arguments": args, "name": name},
                                     "id": c.id, "type": "function"}),
        }
    };
    calls.iter().enumerate().map(one).collect()
}

fn completion(s: &Spec, a: &Answer) -> Value {
    let (id, created, model) = (response_id(s.dialect), now_secs(), s.model);
    let finish = if a.calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let calls = calls_json(s.dialect, &a.calls);
    let usage = usage_json(s, a);
    match s.dialect {
        Dialect::Mistral => {
            let tool_calls = if calls.is_empty() {
                Value::Null
            } else {
                calls.into()
            };
            let message = json!({"role": "assistant", "content": a.text.unwrap_or(""), "tool_calls": tool_calls});
            json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                   "usage": usage})
        }
        Dialect::DeepSeek => {
            let mut message = json!({"role": "assistant", "content": a.text.unwrap_or("")});
            if let Some(r) = &a.reasoning {
                message["reasoning_content"] = r.as_str().into();
            }
            if !calls.is_empty() {
                message["tool_calls"] = calls.into();
            }
            json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                   "usage": usage, "system_fingerprint": DEEPSEEK_FINGERPRINT})
        }
        Dialect::Qwen => {
            let mut message = json!({"role": "assistant", "content": a.text.unwrap_or("")});
            if let Some(r) = &a.reasoning {
                message["reasoning_content"] = r.as_str().into();
            }
            if !calls.is_empty() {
                message["tool_calls"] = calls.into();
            }
            json!({"choices": [{"message": message, "finish_reason": finish, "index": 0, "logprobs": null}],
                   "object": "chat.completion", "usage": usage, "created": created,
                   "system_fingerprint": null, "model": model, "id": id})
        }
        Dialect::Azure => {
            let mut message =
                json!({"annotations": [], "content": a.text, "refusal": null, "role": "assistant"});
            if !calls.is_empty() {
                message["tool_calls"] = calls.into();
            }
            let filter = if a.calls.is_empty() {
                completion_filter()
            } else {
                json!({})
            };
            json!({"choices": [{"content_filter_results": filter, "finish_reason": finish, "index": 0,
                                "logprobs": null, "message": message}],
                   "created": created, "id": id, "model": model, "object": "chat.completion",
                   "prompt_filter_results": prompt_filter_results(),
                   "system_fingerprint": AZURE_FINGERPRINT, "usage": usage})
        }
        Dialect::Compat => {
            let mut message = json!({"role": "assistant", "content": a.text.unwrap_or("")});
            if !calls.is_empty() {
                message["tool_calls"] = calls.into();
            }
            json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                   "system_fingerprint": "fp_ollama",
                   "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                   "usage": usage})
        }
    }
}

const DEEPSEEK_FINGERPRINT: &str = "fp_8b330d02d0_prod0820_fp8_kvcache";
const AZURE_FINGERPRINT: &str = "fp_efad92c60b";

fn response_id(dialect: Dialect) -> String {
    match dialect {
        Dialect::Mistral => rand_hex(32),
        Dialect::DeepSeek => rand_uuid(),
        Dialect::Qwen => format!("chatcmpl-{}", rand_uuid()),
        Dialect::Azure => rand_id("chatcmpl-", 29),
        Dialect::Compat => format!("chatcmpl-{}", fastrand::u32(100..1000)),
    }
}

/// Writes the stream chunks of one answer.
struct Chunks<'a> {
    s: &'a Spec<'a>,
    id: String,
    created: u64,
    events: Vec<Vec<u8>>,
}

impl Chunks<'_> {
    /// One chunk: `choice` is `(delta, finish_reason, azure filter results)`, or none for a
    /// `choices: []` usage chunk; `usage` is written when the dialect reports it there.
    fn push(&mut self, choice: Option<(Value, Option<&str>, Value)>, usage: Option<Value>) {
        let s = self.s;
        let choices: Vec<Value> = choice
            .into_iter()
            .map(|(delta, finish, filter)| match s.dialect {
                Dialect::Mistral | Dialect::Compat => {
                    json!({"index": 0, "delta": delta, "finish_reason": finish})
                }
                Dialect::DeepSeek => {
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
                }
                Dialect::Qwen => {
                    json!({"delta": delta, "finish_reason": finish, "index": 0, "logprobs": null})
                }
                Dialect::Azure => json!({"content_filter_results": filter, "delta": delta,
                                         "finish_reason": finish, "index": 0, "logprobs": null}),
            })
            .collect();
        let (id, created, model) = (&self.id, self.created, s.model);
        let object = "chat.completion.chunk";
        let mut v = match s.dialect {
            Dialect::Mistral => {
                json!({"id": id, "object": object, "created": created, "model": model, "choices": choices})
            }
            Dialect::DeepSeek => {
                json!({"id": id, "object": object, "created": created, "model": model,
                                        "system_fingerprint": DEEPSEEK_FINGERPRINT, "choices": choices})
            }
            Dialect::Qwen => json!({"choices": choices, "object": object}),
            Dialect::Azure => {
                json!({"choices": choices, "created": created, "id": id, "model": model,
                                     "object": object, "system_fingerprint": AZURE_FINGERPRINT})
            }
            Dialect::Compat => {
                json!({"id": id, "object": object, "created": created, "model": model,
                                      "system_fingerprint": "fp_ollama", "choices": choices})
            }
        };
        let usage_key = match s.dialect {
            // Mistral reports usage unasked on the last chunk only.
            Dialect::Mistral => usage.is_some(),
            _ => s.include_usage,
        };
        if usage_key {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        if s.dialect == Dialect::Qwen {
            // DashScope's key order: created, system_fingerprint, model, id after usage.
            v["created"] = created.into();
            v["system_fingerprint"] = Value::Null;
            v["model"] = model.into();
            v["id"] = id.as_str().into();
        }
        self.events.push(format!("data: {v}\n\n").into_bytes());
    }
}

fn stream_events(s: &Spec, a: &Answer) -> Vec<Vec<u8>> {
    let mut c = Chunks {
        s,
        id: response_id(s.dialect),
        created: now_secs(),
        events: Vec::new(),
    };
    let d = s.dialect;
    let none = Value::Null;
    if d == Dialect::DeepSeek {
        let n = s.directives.keep_alive.unwrap_or(1) as usize;
        c.events
            .extend(std::iter::repeat_n(b": keep-alive\n\n".to_vec(), n));
    }
    if d == Dialect::Azure {
        let first = json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                           "prompt_filter_results": prompt_filter_results()});
        c.events.push(format!("data: {first}\n\n").into_bytes());
    }
    let role = match (d, a.reasoning.is_some()) {
        (Dialect::DeepSeek | Dialect::Qwen, true) => {
            json!({"role": "assistant", "content": null, "reasoning_content": ""})
        }
        (Dialect::Qwen, false) => json!({"content": "", "role": "assistant"}),
        (Dialect::Azure, _) => json!({"content": "", "refusal": null, "role": "assistant"}),
        _ => json!({"role": "assistant", "content": ""}),
    };
    c.push(Some((role, None, json!({}))), None);
    if let Some(r) = &a.reasoning {
        for p in pieces(r, 4, 8) {
            c.push(
                Some((
                    json!({"content": null, "reasoning_content": p}),
                    None,
                    none.clone(),
                )),
                None,
            );
        }
    }
    if let Some(text) = a.text {
        for p in pieces(text, 4, 8) {
            let delta = if a.reasoning.is_some() {
                json!({"content": p, "reasoning_content": null})
            } else {
                json!({ "content": p })
            };
            c.push(Some((delta, None, completion_filter())), None);
        }
    }
    if !a.calls.is_empty() {
        match d {
            // Whole calls in one delta.
            Dialect::Mistral | Dialect::Compat => {
                let delta = json!({ "tool_calls": calls_json(d, &a.calls) });
                c.push(Some((delta, None, none.clone())), None);
            }
            _ => {
                for (i, call) in a.calls.iter().enumerate() {
                    let first = json!({"index": i, "id": call.id, "type": "function",
                                       "function": {"name": call.call.name, "arguments": ""}});
                    c.push(
                        Some((json!({ "tool_calls": [first] }), None, json!({}))),
                        None,
                    );
                    for p in pieces(&call.call.args, 4, 8) {
                        let frag = json!({"index": i, "function": {"arguments": p}});
                        c.push(
                            Some((json!({ "tool_calls": [frag] }), None, json!({}))),
                            None,
                        );
                    }
                }
            }
        }
    }
    let finish = match (d, a.calls.is_empty()) {
        (_, true) => "stop",
        // The local server's hole: a stream that called tools still ends with `stop`.
        (Dialect::Compat, false) => "stop",
        (_, false) => "tool_calls",
    };
    let usage = usage_json(s, a);
    match d {
        Dialect::Mistral => c.push(
            Some((json!({"content": ""}), Some(finish), none)),
            Some(usage),
        ),
        Dialect::DeepSeek => {
            let delta = if a.reasoning.is_some() {
                json!({"content": "", "reasoning_content": null})
            } else {
                json!({"content": ""})
            };
            let usage = s.include_usage.then_some(usage);
            c.push(Some((delta, Some(finish), none)), usage);
        }
        _ => {
            let delta = match d {
                Dialect::Azure => json!({}),
                Dialect::Compat => json!({"role": "assistant", "content": ""}),
                _ => json!({"content": ""}),
            };
            c.push(Some((delta, Some(finish), json!({}))), None);
            if s.include_usage {
                c.push(None, Some(usage));
            }
        }
    }
    if !(d == Dialect::Compat && s.directives.no_done) {
        c.events.push(b"data: [DONE]\n\n".to_vec());
    }
    c.events
}

// ---------------------------------------------------------------------------------------
// Model lists (the gateway's health probes)
// ---------------------------------------------------------------------------------------

/// `GET …/models` of a dialect (Azure: `/openai/models?api-version=…`).
pub(crate) fn models(req: &Request, dialect: Dialect, classic_azure: bool) -> Response {
    if let Some(denied) = check_access(dialect, req, classic_azure) {
        return denied;
    }
    let created = 1_722_470_400u64;
    let list = |ids: &[&str], owner: &str| {
        let data: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": owner}))
            .collect();
        json!({"object": "list", "data": data})
    };
    let body = match dialect {
        Dialect::Mistral => {
            let caps = json!({"completion_chat": true, "completion_fim": false, "function_calling": true,
                              "fine_tuning": false, "vision": true});
            let data: Vec<Value> = ["mistral-large-latest", "mistral-small-latest", "magistral-medium-latest"]
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "mistralai",
                                 "capabilities": caps, "name": id, "max_context_length": 131072, "type": "base"}))
                .collect();
            json!({"object": "list", "data": data})
        }
        Dialect::DeepSeek => {
            let data: Vec<Value> = ["deepseek-chat", "deepseek-reasoner"]
                .iter()
                .map(|id| json!({"id": id, "object": "model", "owned_by": "deepseek"}))
                .collect();
            json!({"object": "list", "data": data})
        }
        Dialect::Qwen => list(&["qwen-plus", "qwen-max", "qwen3-32b"], "system"),
        Dialect::Azure => {
            let caps = json!({"chat_completion": true, "completion": false, "embeddings": false,
                              "fine_tune": false, "inference": true});
            let data: Vec<Value> = ["gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"]
                .iter()
                .map(|id| json!({"capabilities": caps, "created_at": created, "id": id,
                                 "lifecycle_status": "generally-available", "object": "model", "status": "succeeded"}))
                .collect();
            json!({"data": data, "object": "list"})
        }
        Dialect::Compat => list(&["llama3.2", "qwen2.5-coder"], "library"),
    };
    Response::json(200, &body)
}
