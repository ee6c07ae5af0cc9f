//! AWS Bedrock runtime: `POST /model/{modelId}/converse` (JSON) and `/converse-stream`
//! (binary event-stream frames), plus `GET /async-invoke` (the gateway's free probe).
//!
//! Auth is checked for shape: a SigV4 `authorization` (`AWS4-HMAC-SHA256
//! Credential=AKID/YYYYMMDD/region/bedrock/aws4_request, SignedHeaders=…;host;…;x-amz-date…,
//! Signature=<hex>`) with an `x-amz-date` of the same day, or a Bedrock API key as `Bearer`.
//! Once credentials were registered (`POST /_mock/aws-credentials`), a SigV4 signature is also
//! verified against them ([`super::sigv4`]): an unknown access key id or a wrong session token
//! is `UnrecognizedClientException`, a wrong signature `InvalidSignatureException`. Requests are validated like Converse does (roles
//! alternate starting with user, no blank text, `toolConfig` whenever tool blocks exist,
//! every `toolUse` answered by a `toolResult` in the next turn, tool-name pattern,
//! `inferenceConfig` ranges). Errors are `{"message"}` with `x-amzn-ErrorType`.

use super::behavior::{
    explicit_cache, list, output_tokens, pieces, plan, rand_uuid, split_model, str_at,
    Conversation, Output, Structured, Tool, ToolMode, Transcript, Usage,
};
use super::eventstream;
use super::http::{Body, Request, Response};
use super::{lock, respond_with, sigv4, State};
use serde_json::{json, Map, Value};

const ERROR_NS: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";
const CORAL_NS: &str = "http://internal.amazon.com/coral/com.amazon.coral.service/";
const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";
/// The alphabet of the random-length `p` field AWS pads every stream event with.
const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// What `metrics.latencyMs` reports (the mock answers at once).
const LATENCY_MS: u64 = 120;

/// `{"message"}` with `x-amzn-ErrorType: {kind}:{namespace}` and a request id.
fn error_in(status: u16, kind: &str, namespace: &str, message: &str) -> Response {
    Response::json(status, &json!({ "message": message }))
        .header("x-amzn-errortype", format!("{kind}:{namespace}"))
        .header("x-amzn-requestid", rand_uuid())
}

/// A Bedrock service error.
pub(crate) fn error_body(status: u16, kind: &str, message: &str) -> Response {
    error_in(status, kind, ERROR_NS, message)
}

/// The error Bedrock answers with for `status` (directives, `fail_rate`).
pub(crate) fn error(status: u16, _model: &str, retry_after: Option<u64>) -> Response {
    let (kind, message) = match status {
        400 => (
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        ),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            "ResourceNotFoundException",
            "Could not resolve the foundation model from the provided model identifier.",
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request. Try your request again.",
        ),
        424 => (
            "ModelErrorException",
            "The model returned an error. Try your request again.",
        ),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        s if s >= 500 => (
            "InternalServerException",
            "The system encountered an unexpected error during processing. Try your request again.",
        ),
        _ => ("ValidationException", "Mock error."),
    };
    let resp = error_body(status, kind, message);
    match retry_after {
        Some(s) => resp.header("retry-after", s.to_string()),
        None => resp,
    }
}

fn invalid(message: &str) -> Response {
    error_body(400, "ValidationException", message)
}

/// `None` when the request carries a well-formed SigV4 signature (or a Bedrock API key), and,
/// when credentials were registered, one made with a registered credential.
fn check_auth(state: &State, req: &Request) -> Option<Response> {
    let denied = |kind: &str, ns: &str, message: &str| Some(error_in(403, kind, ns, message));
    let auth = req.header("authorization").unwrap_or("");
    if auth
        .strip_prefix("Bearer ")
        .is_some_and(|k| !k.trim().is_empty())
    {
        return None;
    }
    let Some(params) = auth.strip_prefix("AWS4-HMAC-SHA256 Credential=") else {
        return denied(
            "UnrecognizedClientException",
            CORAL_NS,
            "The security token included in the request is invalid.",
        );
    };
    let incomplete = |m: &str| denied("IncompleteSignatureException", CORAL_NS, m);
    let Some(date) = req.header("x-amz-date").filter(|d| !d.is_empty()) else {
        return incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        );
    };
    let mut parts = params.split(',').map(str::trim);
    let credential = parts.next().unwrap_or("");
    let rest: Vec<&str> = parts.collect();
    let field = |k: &str| rest.iter().find_map(|p| p.strip_prefix(k));
    let scope: Vec<&str> = credential.split('/').collect();
    let (Some(signed), Some(signature)) = (field("SignedHeaders="), field("Signature=")) else {
        return incomplete(
            "Authorization header requires 'SignedHeaders' and 'Signature' parameters.",
        );
    };
    if scope.len() != 5 || scope[4] != "aws4_request" || scope[0].is_empty() {
        return incomplete(
            "Credential should be of the form AKID/YYYYMMDD/region/service/aws4_request.",
        );
    }
    let invalid_sig = |m: String| denied("InvalidSignatureException", CORAL_NS, &m);
    if scope[3] != "bedrock" {
        return invalid_sig("Credential should be scoped to correct service: 'bedrock'. ".into());
    }
    if date.get(..8) != Some(scope[1]) {
        return invalid_sig(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{date}'.",
            scope[1],
            date.get(..8).unwrap_or(date)
        ));
    }
    let headers: Vec<&str> = signed.split(';').collect();
    let hex = signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit());
    let mismatch = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
    if !headers.contains(&"host") || !headers.contains(&"x-amz-date") || !hex {
        return invalid_sig(mismatch.into());
    }
    let known = lock(&state.aws_credentials);
    if known.is_empty() {
        return None;
    }
    let Some(parsed) = sigv4::parse_authorization(auth) else {
        return incomplete(
            "Credential should be of the form AKID/YYYYMMDD/region/service/aws4_request.",
        );
    };
    let result = sigv4::verify(
        known.get(parsed.access_key_id),
        &parsed,
        &req.method,
        &req.target,
        &req.headers,
        &req.body,
    );
    match result {
        Ok(()) => None,
        Err(sigv4::Refusal::UnrecognizedClient) => denied(
            "UnrecognizedClientException",
            CORAL_NS,
            "The security token included in the request is invalid.",
        ),
        Err(sigv4::Refusal::SignatureDoesNotMatch) => invalid_sig(mismatch.into()),
    }
}

/// `GET /async-invoke` (ListAsyncInvokes): an empty list, once authorized.
pub(crate) fn async_invoke(state: &State, req: &Request) -> Response {
    if let Some(denied) = check_auth(state, req) {
        return denied;
    }
    Response::json(200, &json!({ "asyncInvokeSummaries": [] }))
        .header("x-amzn-requestid", rand_uuid())
}

/// Content block kinds Converse knows (anything else is a validation error).
const BLOCKS: [&str; 11] = [
    "text",
    "image",
    "document",
    "video",
    "toolUse",
    "toolResult",
    "guardContent",
    "cachePoint",
    "reasoningContent",
    "citationsContent",
    "searchResult",
];

fn constraint(value: &str, at: &str, rule: &str) -> String {
    format!("1 validation error detected: Value {value} at '{at}' failed to satisfy constraint: Member must {rule}")
}

/// The ids of blocks of one kind (`toolUse` / `toolResult`) in a message.
fn tool_ids<'a>(m: &'a Value, kind: &str) -> Vec<&'a str> {
    list(m.get("content"))
        .iter()
        .filter_map(|b| b.get(kind))
        .map(|b| str_at(b, "toolUseId").unwrap_or(""))
        .collect()
}

/// Converse's request rules; the message is Bedrock's wording.
fn validate(body: &Value) -> Result<(), String> {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(constraint("null", "messages", "not be null"));
    };
    let mut tool_blocks = false;
    for (i, m) in messages.iter().enumerate() {
        let role = str_at(m, "role").unwrap_or("");
        if role != "user" && role != "assistant" {
            let at = format!("messages.{}.member.role", i + 1);
            let rule = "satisfy enum value set: [user, assistant]";
            return Err(constraint(&format!("'{role}'"), &at, rule));
        }
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        if i == 0 && role != "user" {
            return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
        }
        if role != expected {
            return Err("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".into());
        }
        let content = list(m.get("content"));
        if content.is_empty() {
            return Err(format!("The content field in the Message object at messages.{i}.content is empty. Add a ContentBlock object to the content field and try again."));
        }
        for (j, block) in content.iter().enumerate() {
            let known = block
                .as_object()
                .and_then(|o| o.keys().find(|k| BLOCKS.contains(&k.as_str())));
            let Some(kind) = known else {
                return Err(format!("The model returned the following errors: Malformed input request: #/messages/{i}/content/{j}: unknown content block, please reformat your input and try again."));
            };
            if kind == "text" && str_at(block, "text").unwrap_or("").trim().is_empty() {
                return Err(format!("The text field in the ContentBlock object at messages.{i}.content.{j} is blank. Add text to the text field, and try again."));
            }
            tool_blocks |= kind == "toolUse" || kind == "toolResult";
        }
    }
    if messages.is_empty() {
        return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
    }
    match body.get("system") {
        None | Some(Value::Array(_)) => {}
        Some(_) => return Err(constraint("'system'", "system", "be a list")),
    }
    for (k, block) in list(body.get("system")).iter().enumerate() {
        if block.get("text").is_some() && str_at(block, "text").unwrap_or("").trim().is_empty() {
            return Err(format!("The text field in the SystemContentBlock object at system.{k} is blank. Add text to the text field, and try again."));
        }
    }
    let config = body.get("toolConfig");
    if tool_blocks && config.is_none() {
        return Err("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
    }
    for (i, m) in messages.iter().enumerate().skip(1) {
        if str_at(m, "role") != Some("user") {
            continue;
        }
        let calls = tool_ids(&messages[i - 1], "toolUse");
        let results = tool_ids(m, "toolResult");
        if results.iter().any(|r| !calls.contains(r)) || results.len() > calls.len() {
            return Err(format!("The number of toolResult blocks at messages.{i}.content exceeds the number of toolUse blocks of previous turn."));
        }
        let missing: Vec<&str> = calls
            .iter()
            .copied()
            .filter(|c| !results.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "Expected toolResult blocks at messages.{i}.content for the following Ids: {}",
                missing.join(", ")
            ));
        }
    }
    if let Some(config) = config {
        let tools = list(config.get("tools"));
        if tools.is_empty() {
            let rule = "have length greater than or equal to 1";
            return Err(constraint("'[]'", "toolConfig.tools", rule));
        }
        for (k, tool) in tools.iter().enumerate() {
            let Some(spec) = tool.get("toolSpec") else {
                continue;
            };
            let name = str_at(spec, "name").unwrap_or("");
            let valid = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let at = format!("toolConfig.tools.{}.member.toolSpec", k + 1);
            if !valid {
                let rule = "satisfy regular expression pattern: [a-zA-Z0-9_-]+";
                return Err(constraint(
                    &format!("'{name}'"),
                    &format!("{at}.name"),
                    rule,
                ));
            }
            if spec.pointer("/inputSchema/json").is_none() {
                let at = format!("{at}.inputSchema");
                return Err(constraint("null", &at, "not be null"));
            }
        }
        if let Some(choice) = config.get("toolChoice") {
            let n = choice.as_object().map_or(0, Map::len);
            if n != 1 {
                return Err("toolChoice must have exactly one of auto, any or tool.".into());
            }
        }
    }
    let inference = body.get("inferenceConfig");
    let number = |k: &str| inference.and_then(|c| c.get(k)).and_then(Value::as_f64);
    if let Some(n) = number("maxTokens").filter(|n| *n < 1.0) {
        let rule = "have value greater than or equal to 1";
        return Err(constraint(
            &format!("'{n}'"),
            "inferenceConfig.maxTokens",
            rule,
        ));
    }
    for key in ["temperature", "topP"] {
        if let Some(v) = number(key).filter(|v| !(0.0..=1.0).contains(v)) {
            let at = format!("inferenceConfig.{key}");
            let rule = if v < 0.0 {
                "have value greater than or equal to 0"
            } else {
                "have value less than or equal to 1"
            };
            return Err(constraint(&format!("'{v}'"), &at, rule));
        }
    }
    Ok(())
}

/// `POST /model/{raw_model}/converse` and `/converse-stream`.
pub(crate) fn converse(
    state: &State,
    req: &Request,
    body: Option<&Value>,
    raw_model: &str,
    stream: bool,
) -> Response {
    if let Some(denied) = check_auth(state, req) {
        return denied;
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return error_in(
            400,
            "SerializationException",
            ERROR_NS,
            "Unexpected token while reading the request body.",
        );
    };
    if let Err(message) = validate(body) {
        return invalid(&message);
    }
    let (model, directives) = split_model(raw_model);
    let directives = directives.for_body(req.body.len());
    let exception = directives.exception.clone();
    let answer = || answer(state, body, model, stream, exception.as_deref());
    let err = |status| error(status, model, directives.retry_after);
    respond_with(state, &directives, stream, err, 503, answer)
}

/// `outputConfig.textFormat` JSON-schema output: the schema travels as a JSON string.
fn output_schema(body: &Value) -> Option<Value> {
    let format = body.pointer("/outputConfig/textFormat")?;
    let schema = format.pointer("/structure/jsonSchema/schema")?;
    match schema {
        Value::String(s) => serde_json::from_str(s).ok(),
        other => Some(other.clone()),
    }
}

fn conversation<'a>(body: &'a Value, model: &str, schema: Option<&'a Value>) -> Conversation<'a> {
    let mut t = Transcript::new("bedrock", model);
    let cache_point = |b: &Value| {
        b.get("cachePoint")
            .map(|c| str_at(c, "ttl").is_some_and(|ttl| ttl == "1h"))
    };
    static EMPTY: Value = Value::Null;
    let config = body.get("toolConfig").unwrap_or(&EMPTY);
    let mut tools = Vec::new();
    for tool in list(config.get("tools")) {
        if let Some(spec) = tool.get("toolSpec") {
            if let Some(name) = str_at(spec, "name") {
                let schema = spec.pointer("/inputSchema/json").unwrap_or(&EMPTY);
                tools.push(Tool { name, schema });
            }
        }
        t.mark(cache_point(tool));
    }
    let system = list(body.get("system"));
    if system.iter().any(|b| b.get("text").is_some()) {
        t.message("system");
    }
    for block in system {
        t.text(str_at(block, "text").unwrap_or(""));
        t.mark(cache_point(block));
    }
    let messages = list(body.get("messages"));
    let (mut last_user_text, mut tool_results) = (String::new(), 0);
    for m in messages {
        let role = str_at(m, "role").unwrap_or("");
        t.message(role);
        let mut text = String::new();
        tool_results = 0;
        for block in list(m.get("content")) {
            if let Some(s) = str_at(block, "text") {
                text.push_str(s);
                t.text(s);
            }
            if let Some(r) = block.get("toolResult") {
                tool_results += usize::from(role == "user");
                for part in list(r.get("content")) {
                    match (str_at(part, "text"), part.get("json")) {
                        (Some(s), _) => t.text(s),
                        (None, Some(j)) => t.text(&j.to_string()),
                        _ => {}
                    }
                }
            }
            t.mark(cache_point(block));
        }
        if role == "user" {
            last_user_text = text;
        }
    }
    let mut c = Conversation::new(t);
    (c.last_user_text, c.tool_results, c.tools) = (last_user_text, tool_results, tools);
    c.tool_mode = match config
        .pointer("/toolChoice/tool/name")
        .and_then(Value::as_str)
    {
        Some(name) => ToolMode::Forced(name),
        None => ToolMode::Auto,
    };
    c.structured = match schema {
        Some(s) => Structured::Schema(s),
        None => Structured::None,
    };
    c
}

/// Whether the request asks for prompt caching anywhere (then usage reports cache fields).
fn uses_cache(body: &Value) -> bool {
    let has = |blocks: &[Value]| blocks.iter().any(|b| b.get("cachePoint").is_some());
    has(list(body.get("system")))
        || has(list(body.pointer("/toolConfig/tools")))
        || list(body.get("messages"))
            .iter()
            .any(|m| has(list(m.get("content"))))
}

/// `usage` in Bedrock's (alphabetical) key order; `inputTokens` excludes cache reads and
/// writes, `totalTokens` includes them.
fn usage_json(u: &Usage, cache_fields: bool) -> Value {
    let input = u.input.saturating_sub(u.cache_read + u.cache_write);
    let mut m = Map::new();
    if cache_fields {
        m.insert("cacheReadInputTokenCount".into(), u.cache_read.into());
        m.insert("cacheReadInputTokens".into(), u.cache_read.into());
        m.insert("cacheWriteInputTokenCount".into(), u.cache_write.into());
        m.insert("cacheWriteInputTokens".into(), u.cache_write.into());
    }
    m.insert("inputTokens".into(), input.into());
    m.insert("outputTokens".into(), u.output.into());
    m.insert("totalTokens".into(), (u.input + u.output).into());
    Value::Object(m)
}

/// Tool-use ids: `tooluse_` and 22 characters of `[A-Za-z0-9_-]`.
fn tool_use_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let tail: String = std::iter::repeat_with(|| char::from(ALPHABET[fastrand::usize(..64)]))
        .take(22)
        .collect();
    format!("tooluse_{tail}")
}

fn answer(
    state: &State,
    body: &Value,
    model: &str,
    stream: bool,
    exception: Option<&str>,
) -> Response {
    let schema = output_schema(body);
    let conv = conversation(body, model, schema.as_ref());
    let out = plan(&conv);
    let (cache_read, cache_write, write_1h) = explicit_cache(&state.cache, &conv.transcript.marks);
    let usage = Usage {
        input: conv.transcript.snapshot().tokens(),
        output: output_tokens(&out),
        cache_read,
        cache_write,
        write_1h,
    };
    let cache_fields = uses_cache(body);
    let stop = match out {
        Output::Text(_) => "end_turn",
        Output::Calls(_) => "tool_use",
    };
    let resp = if stream {
        let events = stream_events(&out, stop, &usage, cache_fields, exception);
        let r = Response::new(
            200,
            Body::Sse {
                events,
                drop: false,
            },
        );
        r.header("content-type", EVENTSTREAM)
    } else {
        let content: Vec<Value> = match &out {
            Output::Text(text) => vec![json!({ "text": text })],
            Output::Calls(calls) => calls
                .iter()
                .map(|c| json!({"toolUse": {"input": c.input, "name": c.name, "toolUseId": tool_use_id()}}))
                .collect(),
        };
        let v = json!({
            "metrics": {"latencyMs": LATENCY_MS},
            "output": {"message": {"content": content, "role": "assistant"}},
            "stopReason": stop,
            "usage": usage_json(&usage, cache_fields),
        });
        Response::json(200, &v)
    };
    resp.header("x-amzn-requestid", rand_uuid())
}

/// The stream's frames: `messageStart`, per block (`contentBlockStart` for tool use only)
/// deltas and `contentBlockStop`, `messageStop`, then `metadata` with usage. Each payload
/// carries AWS's `p` padding; keys are in AWS's (alphabetical) order.
fn stream_events(
    out: &Output,
    stop: &str,
    usage: &Usage,
    cache_fields: bool,
    exception: Option<&str>,
) -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut push = |name: &str, mut fields: Vec<(&str, Value)>| {
        let n = frames.len();
        fields.push(("p", PAD[..(n * 11 + 3) % PAD.len()].into()));
        fields.sort_by(|a, b| a.0.cmp(b.0));
        let payload: Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        frames.push(eventstream::event(name, &Value::Object(payload)));
    };
    push("messageStart", vec![("role", "assistant".into())]);
    // With an `exception` directive the stream breaks after its first block event.
    let broken = exception.is_some();
    match out {
        Output::Text(text) => {
            for p in pieces(text, 4, 8) {
                let delta = json!({ "text": p });
                push(
                    "contentBlockDelta",
                    vec![("contentBlockIndex", 0.into()), ("delta", delta)],
                );
                if broken {
                    break;
                }
            }
            if !broken {
                push("contentBlockStop", vec![("contentBlockIndex", 0.into())]);
            }
        }
        Output::Calls(calls) => {
            'calls: for (i, c) in calls.iter().enumerate() {
                let start = json!({"toolUse": {"name": c.name, "toolUseId": tool_use_id()}});
                push(
                    "contentBlockStart",
                    vec![("contentBlockIndex", i.into()), ("start", start)],
                );
                if broken {
                    break 'calls;
                }
                for p in pieces(&c.args, 4, 8) {
                    let delta = json!({"toolUse": {"input": p}});
                    push(
                        "contentBlockDelta",
                        vec![("contentBlockIndex", i.into()), ("delta", delta)],
                    );
                }
                push("contentBlockStop", vec![("contentBlockIndex", i.into())]);
            }
        }
    }
    if let (true, Some(name)) = (broken, exception) {
        frames.push(stream_exception(name));
        return frames;
    }
    push("messageStop", vec![("stopReason", stop.into())]);
    let metrics = json!({ "latencyMs": LATENCY_MS });
    push(
        "metadata",
        vec![
            ("metrics", metrics),
            ("usage", usage_json(usage, cache_fields)),
        ],
    );
    frames
}

/// An in-stream exception frame; the name is normalised to lower camel case
/// (`ThrottlingException` → `throttlingException`), as the stream spells them.
fn stream_exception(name: &str) -> Vec<u8> {
    let mut kind: String = name.to_string();
    if let Some(first) = kind.get(..1) {
        kind = first.to_ascii_lowercase() + &kind[1..];
    }
    if !kind.ends_with("Exception") {
        kind.push_str("Exception");
    }
    let message = match kind.as_str() {
        "throttlingException" => "Too many requests, please wait before trying again.",
        "validationException" => "Input is too long for requested model.",
        "serviceUnavailableException" => "Bedrock is unable to process your request.",
        "modelStreamErrorException" => {
            "The model stream encountered an error. Try your request again."
        }
        _ => {
            "The system encountered an unexpected error during processing. Try your request again."
        }
    };
    let payload = if kind == "modelStreamErrorException" {
        json!({"message": message, "originalMessage": "upstream model failure", "originalStatusCode": 500})
    } else {
        json!({ "message": message })
    };
    eventstream::exception(&kind, &payload)
}
