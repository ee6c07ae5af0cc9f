//! `llmux mock`: a fake LLM provider server speaking the real OpenAI, Anthropic, Gemini,
//! Mistral, DeepSeek, Qwen (DashScope), Azure OpenAI and AWS Bedrock wire formats, so the
//! gateway can be tested and benchmarked without real upstreams.
//!
//! The mock is a *peer* of the gateway: it uses no llmux type, only HTTP/1.1 and the providers'
//! JSON/SSE shapes (modelled on the recordings in `shared/corpus`).
//!
//! # Endpoints
//! * OpenAI: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{id}`
//!   (auth: `Authorization: Bearer <non-empty>`).
//! * Anthropic: `POST /v1/messages`, `GET /v1/models` (auth: `x-api-key`; `anthropic-version`
//!   required; `max_tokens` required; a `system` role inside `messages` is rejected).
//! * Gemini: `POST /v1beta/models/{m}:generateContent`, `POST …:streamGenerateContent?alt=sse`
//!   (without `alt=sse`: one JSON array), `GET /v1beta/models[/{m}]` (key: `x-goog-api-key` or
//!   `?key=`; absent → 403 `PERMISSION_DENIED`, empty → 400 `API_KEY_INVALID`).
//! * Mistral (`dialects.rs`): `POST /mistral/v1/chat/completions`, `GET /mistral/v1/models`
//!   (Bearer). A closed request schema: a field outside Mistral's list, or a message key its
//!   role does not take (`name` outside `tool`, `reasoning_content`, ...) → 422 `{"object":
//!   "error","message":{"detail":[{"type":"extra_forbidden",...}]}}`; a tool-call id (in
//!   assistant `tool_calls` or a `tool` message) that is not exactly 9 `[A-Za-z0-9]` → 400
//!   `invalid_function_call` code `3280`; an assistant message with neither content nor
//!   calls → 400; last role must be user/tool (or assistant with `prefix: true`); calls and
//!   results must pair up; `tool_choice` `auto|none|any|required` (or a function). Answers:
//!   32-hex ids, 9-character call ids, `tool_calls: null` on text, `prompt_tokens_details`
//!   usage; streams put whole tool calls in one delta and usage (always) on the finish chunk.
//! * DeepSeek: `POST /deepseek/chat/completions` and `/deepseek/v1/chat/completions`,
//!   `GET /deepseek[/v1]/models`. 422 "Failed to deserialize…" for an unknown role (e.g.
//!   `developer`) or a missing `model`/`messages`; 400 `Model Not Exist` unless the model
//!   starts with `deepseek`; `json_object` needs "json" in the prompt; tool pairing; thinking
//!   mode (model containing `reasoner`, or `thinking.type: enabled`) answers with
//!   `reasoning_content` (and `completion_tokens_details.reasoning_tokens`) and wants it back
//!   on this turn's tool-call messages. Usage adds `prompt_cache_hit_tokens` /
//!   `prompt_cache_miss_tokens` next to `prompt_tokens_details.cached_tokens`; UUID ids,
//!   `call_00_…` call ids; streams open with a `: keep-alive` comment, tool arguments come
//!   in fragments, usage (with `include_usage`) rides on the finish chunk.
//! * Qwen / DashScope compatible mode: `POST /qwen/compatible-mode/v1/chat/completions`,
//!   `GET …/models`. Thinking (`enable_thinking: true`, default for open-weight
//!   `qwen3-<n>b…`) streams `reasoning_content` and is a 400 without `stream`; errors carry
//!   `request_id`; DashScope's key order; usage chunk `choices: []` with `include_usage`.
//! * Azure OpenAI: `POST /openai/deployments/{deployment}/chat/completions?api-version=…`
//!   (deployment percent-decoded; it is the reported model and carries directives), `POST
//!   /openai/v1/chat/completions` (deployment as body `model`), `GET /openai/models?api-version=`.
//!   No `api-version` → 404 `Resource not found` (as Azure does), a malformed one → 400; no
//!   `api-key` (or Entra `Authorization: Bearer`) → 401 `{"error":{"code":"401",...}}`;
//!   `stream_options` before 2024-09-01 → 400. `prompt_filter_results` and per-choice
//!   `content_filter_results`; streams open with a `choices: []` filter-only chunk.
//! * Generic local server (Ollama-like): `POST /compat/v1/chat/completions`, `GET
//!   /compat/v1/models`, no key needed; tool calls whole in one chunk and, in streams,
//!   `finish_reason: stop` even after tool calls; no cached tokens.
//! * AWS Bedrock (`bedrock.rs`): `POST /model/{modelId}/converse` and `/converse-stream`
//!   (modelId percent-decoded), `GET /async-invoke` (an empty list: the gateway's probe).
//!   Auth by shape: `authorization` `AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/region/
//!   bedrock/aws4_request, SignedHeaders=…host…x-amz-date…, Signature=<64 hex>` plus an
//!   `x-amz-date` of the same day (or a Bedrock API key as `Bearer`); otherwise 403 with
//!   `x-amzn-ErrorType` `UnrecognizedClientException` (no/other auth),
//!   `IncompleteSignatureException` (no date, missing parts) or `InvalidSignatureException`
//!   (wrong service or day). Once credentials were registered (`POST /_mock/aws-credentials`
//!   `{"access_key_id","secret_access_key","session_token"?}`), SigV4 signatures are verified
//!   (`sigv4.rs`): an unknown access key id or a wrong/missing session token is
//!   `UnrecognizedClientException`, a signature that does not match
//!   `InvalidSignatureException`. Converse validation (`ValidationException`, Bedrock's
//!   wording): roles alternate starting with user, no empty content or blank text, `toolConfig`
//!   whenever tool blocks exist, each `toolUse` answered by a `toolResult` in the next turn,
//!   tool names `[a-zA-Z0-9_-]{1,64}`, `inferenceConfig` ranges. Answers `output.message`
//!   (`text` / `toolUse` with `tooluse_…` ids), `stopReason`, `usage` (`inputTokens` without
//!   cache, `totalTokens` with it; cache fields when the request has `cachePoint`s), keys in
//!   AWS's alphabetical order. ConverseStream is binary `application/vnd.amazon.eventstream`
//!   (`eventstream.rs`, CRC-checked frames, headers `:event-type`, `:content-type`,
//!   `:message-type`; payloads padded with `p`): `messageStart`, `contentBlockStart` (tool
//!   use only), `contentBlockDelta` (text / `toolUse.input` fragments), `contentBlockStop`,
//!   `messageStop`, `metadata` (usage, after `messageStop`). Always parallel tool calls.
//! * `Flavor::All` serves all of them; `GET /v1/models` then answers in Anthropic shape when the
//!   request carries `x-api-key` or `anthropic-version`, else in OpenAI shape. The single
//!   flavors `mistral`, `deepseek` and `qwen` also serve the provider's own unprefixed paths
//!   (`/v1/chat/completions`, `/chat/completions`, `/compatible-mode/v1/...`); `azure` and
//!   `bedrock` serve their paths; `openai` also serves `/compat/v1`.
//! * `GET /_mock/requests` → `{"requests":[{method,path,model,body_bytes,stream,headers,connection}]}` (last
//!   256, newest last; credentials (`authorization`, `x-api-key`, `x-goog-api-key`, `api-key`,
//!   `x-amz-security-token`) shown as `"present"`, also `?key=`; `model` is the Azure
//!   deployment or Bedrock model id when it is in the path; `aws_access_key_id` names the
//!   access key of a SigV4 signature; `connection` numbers the client connection that carried
//!   the request, from 1 in accept order); `POST /_mock/reset` clears that log and the
//!   prompt-cache memory (registered AWS credentials stay).
//! * OTLP/HTTP receiver (every flavor): `POST /v1/traces` and `/v1/metrics` with
//!   `application/x-protobuf` (empty protobuf answer) or `application/json` (`{}`), 415 for
//!   other content types. Exports are counted, not decoded: `GET /_mock/otlp` →
//!   `{"traces":{"posts","bytes"},"metrics":{"posts","bytes"}}`; `/_mock/reset` zeroes it.
//!   Not in the request log.
//! * Anything else → 404 in the provider's error shape.
//!
//! # Deterministic behaviour
//! * Text reply: `mock reply to: <first 60 chars of the last user message> [len=<chars>
//!   fnv=<FNV-1a 64 hex of its UTF-8>]`; a message's text is the concatenation of its text parts.
//! * Tools (OpenAI `tools`, Anthropic `tools`, Gemini `functionDeclarations`), when the last
//!   message is not a tool result and tool choice is not none: a forced tool is called once;
//!   otherwise, if parallel calls are allowed (OpenAI `parallel_tool_calls` not false, Anthropic
//!   `disable_parallel_tool_use` not true, Gemini always) two calls (first two tools, or the only
//!   tool twice), else one. Call `i` gets arguments generated from the schema: string →
//!   `enum[i % len]` or `"<prop>-<i+1>"`, integer → `i+1`, number → `i+1.5`, boolean → true,
//!   array → `[]`, object → recurse over `required` (all properties if none listed).
//! * Last message a tool result → `tool results received: <n>`.
//! * Structured output (OpenAI `response_format`, Anthropic `output_config.format`, Gemini
//!   `responseMimeType: application/json`): JSON from the schema with the same generator, or
//!   `{"reply":"mock"}` without a schema. Tool calls take precedence, then structured output.
//! * Usage: input = ceil(chars of all system/message text / 4) + 4 per message (a non-empty
//!   system prompt counts as a message); output = ceil(reply chars / 4) + 1 + ceil(tool
//!   argument chars / 4).
//! * Prompt caching: OpenAI/Gemini remember (bounded, 4096 entries) a hash of each request's
//!   prefix (all messages but the last, per model); a repeated prefix of ≥ 1024 tokens reports
//!   `floor(prefix/128)*128` cached tokens (Azure the same; Mistral and DeepSeek from 64 tokens
//!   in 64-token units, Qwen from 256 in 64-token units, the local server never). Bedrock
//!   caches at `cachePoint` blocks like Anthropic at its breakpoints. Anthropic caches only at `cache_control` breakpoints
//!   (blocks or top-level) of ≥ 1024 tokens: the longest previously seen breakpoint prefix is
//!   read, the rest up to the last breakpoint is written; `input_tokens` excludes both.
//! * Streams: OpenAI role chunk, 4–8-char content pieces or tool-call deltas (first with id/name
//!   and `arguments:""`), empty-delta finish chunk, usage chunk (`choices:[]`, and `"usage":null`
//!   before it) only with `stream_options.include_usage`, `data: [DONE]`. Anthropic
//!   `message_start`, `content_block_start`, `ping` (after the first block start, as recorded),
//!   deltas, `content_block_stop`, `message_delta` (cumulative usage), `message_stop`. Gemini
//!   `data: …\r\n\r\n` chunks with usage on each, `finishReason` on the last, no `[DONE]`.
//! * Ids and payload details follow the recordings (`chatcmpl-`, `call_`, `msg_01`, `toolu_01`,
//!   `req_011C`, `system_fingerprint`, `service_tier`, `obfuscation`, Google's JSON spacing).
//!
//! # Directives
//! Appended to the model name after `@`, comma-separated (`gpt-4o-mini@status=429,retry_after=20`;
//! for Gemini in the path, `models/gemini-2.5-flash@status=503:generateContent`). Responses report
//! the name before `@`. `status=N` (N in 400..=599: that provider's error for N, generic body for
//! unknown N), `retry_after=S`, `latency=MS` (before the response header), `chunk_delay=MS`
//! (between stream events), `stall=MS` (after the first stream event; paced events keep a
//! schedule counted from the first, to the microsecond: `pacing.rs`), `hang` (never answer; hold
//! the connection until the client closes), `drop` (stream: header + first event, then close
//! without the terminating chunk; otherwise close without answering), `garbage` (200 with an
//! HTML body, like a broken proxy in front of the provider), `long_latency=MS` (replaces
//! `latency` when the request body is over 16 KiB: a model slow on long prompts), `blocked`
//! (Gemini: a safety-blocked prompt, HTTP 200 with `promptFeedback.blockReason`), `echo_key`
//! (OpenAI: a 401 that echoes the bearer key, as OpenAI's own message does),
//! `content_filter` (Azure: the prompt is filtered, HTTP 400 `code: content_filter` with
//! `innererror.code: ResponsibleAIPolicyViolation`), `data_inspection` (Qwen: HTTP 400
//! `data_inspection_failed`), `keep_alive=N` (DeepSeek: N `: keep-alive` comments before a
//! stream, default 1; N blank lines before a JSON body, default 0), `exception=NAME` (Bedrock:
//! the ConverseStream breaks after its first block event with an exception frame, e.g.
//! `throttlingException`, `modelStreamErrorException`), `no_done` (local server: the stream
//! ends without `data: [DONE]`). Error shapes per provider: Mistral `{"object":"error",...}`
//! (401 `{"message":"Unauthorized"}`), DeepSeek's envelope (402 `Insufficient Balance`), Qwen's
//! envelope with `request_id` (403 `Arrearage`, 429 `limit_requests`), Azure's
//! `{"error":{"code","message"}}` (429 with `retry-after-ms`), Bedrock `{"message"}` with
//! `x-amzn-ErrorType` (429 `ThrottlingException`, 500 `InternalServerException`, 503
//! `ServiceUnavailableException`, 408/424 model exceptions); `fail_rate` uses 503 as the
//! "overloaded" status for all of them. Unknown
//! directives are ignored; `status=N` also works on OpenAI `GET /v1/models/{id}` so health
//! probes can be failed. `MockOptions::latency_ms` applies to every response and `chunk_delay_ms` to every
//! stream unless a directive overrides them; `fail_rate` answers that fraction of chat requests
//! with the flavor's 429 or one of its 5xx (500, and 503 or Anthropic's 529) at random, or
//! always with `fail_status` when that is set.

mod anthropic;
mod bedrock;
mod behavior;
mod dialects;
mod eventstream;
mod gemini;
mod http;
mod openai;
mod pacing;
mod sigv4;
#[cfg(test)]
mod tests;

use behavior::{Directives, PrefixCache};
use dialects::Dialect;
use http::{Body, Request, Response};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Which provider API(s) the mock impersonates; `All` lets one port stand in for every upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// OpenAI Chat Completions.
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini (Generative Language v1beta).
    Gemini,
    /// Mistral La Plateforme (`/v1/chat/completions`, also under `/mistral`).
    Mistral,
    /// DeepSeek (`/chat/completions`, `/v1/chat/completions`, also under `/deepseek`).
    Deepseek,
    /// Qwen on DashScope compatible mode (`/compatible-mode/v1/…`, also under `/qwen`).
    Qwen,
    /// Azure OpenAI (`/openai/deployments/{deployment}/chat/completions`, `/openai/v1/…`).
    Azure,
    /// AWS Bedrock runtime (`/model/{id}/converse`, `/converse-stream`, `/async-invoke`).
    Bedrock,
    /// Every endpoint above on one port.
    All,
}

impl std::str::FromStr for Flavor {
    type Err = String;

    /// Parses the CLI spelling so `llmux mock --flavor gemini` works.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "openai" => Ok(Flavor::Openai),
            "anthropic" => Ok(Flavor::Anthropic),
            "gemini" => Ok(Flavor::Gemini),
            "mistral" => Ok(Flavor::Mistral),
            "deepseek" => Ok(Flavor::Deepseek),
            "qwen" => Ok(Flavor::Qwen),
            "azure" | "azure_openai" => Ok(Flavor::Azure),
            "bedrock" => Ok(Flavor::Bedrock),
            "all" => Ok(Flavor::All),
            _ => Err(format!(
                "unknown mock flavor {s:?} (expected openai, anthropic, gemini, mistral, deepseek, qwen, azure, bedrock or all)"
            )),
        }
    }
}

/// Server-wide knobs; per-request directives in the model name override the delays.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Which provider API(s) to serve.
    pub flavor: Flavor,
    /// Fraction (0..1) of chat requests answered with a random 429/5xx, to exercise retries.
    pub fail_rate: f64,
    /// Delay before every response header, to simulate time-to-first-byte.
    pub latency_ms: u64,
    /// Delay between stream events, to make streaming observable.
    pub chunk_delay_ms: u64,
    /// When set, `fail_rate` failures all use this status instead of a random 429/5xx
    /// (a deterministic outage without retry hints).
    pub fail_status: Option<u16>,
}

impl Default for MockOptions {
    /// All flavors, no failures, no delays: the fastest upstream for benchmarks.
    fn default() -> Self {
        MockOptions {
            flavor: Flavor::All,
            fail_rate: 0.0,
            latency_ms: 0,
            chunk_delay_ms: 0,
            fail_status: None,
        }
    }
}

/// Serves until `shutdown` resolves. Each connection is its own task; HTTP/1.1 keep-alive.
/// Open connections (including hung ones) are closed when `shutdown` resolves.
pub async fn serve<F: Future<Output = ()> + Send>(
    listener: tokio::net::TcpListener,
    opts: MockOptions,
    shutdown: F,
) -> std::io::Result<()> {
    let state = Arc::new(State {
        opts,
        log: Mutex::new(VecDeque::new()),
        cache: Mutex::new(PrefixCache::default()),
        aws_credentials: Mutex::new(HashMap::new()),
        otlp: OtlpReceiver::default(),
    });
    let mut conns = tokio::task::JoinSet::new();
    let mut accepted_connections = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accepted_connections += 1;
                    conns.spawn(http::serve_conn(stream, state.clone(), accepted_connections));
                }
                Err(e) => {
                    // e.g. EMFILE: back off briefly instead of spinning or giving up.
                    log::warn!("mock: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    Ok(())
}

/// Shared by all connections; the mutexes are held only briefly and never across I/O.
pub(crate) struct State {
    pub(crate) opts: MockOptions,
    log: Mutex<VecDeque<LogEntry>>,
    pub(crate) cache: Mutex<PrefixCache>,
    /// AWS credentials registered with `POST /_mock/aws-credentials`, by access key id; when
    /// there are any, Bedrock verifies SigV4 signatures against them.
    pub(crate) aws_credentials: Mutex<HashMap<String, sigv4::Known>>,
    otlp: OtlpReceiver,
}

/// An OTLP/HTTP receiver that accepts and counts exports without decoding them: the sink a
/// benchmark points the gateway's telemetry at, cheap enough not to disturb what it measures
/// (the load benchmark's Python sink cost ~0.7 ms of the load CPU per 200 KB batch).
#[derive(Default)]
struct OtlpReceiver {
    trace_posts: AtomicU64,
    trace_bytes: AtomicU64,
    metric_posts: AtomicU64,
    metric_bytes: AtomicU64,
}

impl OtlpReceiver {
    /// Answers an export the way a collector does: an empty success in the request's
    /// encoding (protobuf or JSON), 415 for any other content type.
    fn receive(&self, path: &str, req: &Request) -> Response {
        let content_type = req.header("content-type").unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        let resp = match media.to_ascii_lowercase().as_str() {
            "application/x-protobuf" => Response::new(200, http::Body::Full(Vec::new()))
                .header("content-type", "application/x-protobuf"),
            "application/json" => Response::json(200, &json!({})),
            _ => {
                let msg = format!("415 unsupported media type, supported: [application/json, application/x-protobuf]; got {media:?}");
                return Response::new(415, http::Body::Full(msg.into_bytes()))
                    .header("content-type", "text/plain");
            }
        };
        let (posts, bytes) = match path {
            "/v1/traces" => (&self.trace_posts, &self.trace_bytes),
            _ => (&self.metric_posts, &self.metric_bytes),
        };
        posts.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(req.body.len() as u64, Ordering::Relaxed);
        resp
    }

    fn reset(&self) {
        for counter in [
            &self.trace_posts,
            &self.trace_bytes,
            &self.metric_posts,
            &self.metric_bytes,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn to_json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "traces": { "posts": get(&self.trace_posts), "bytes": get(&self.trace_bytes) },
            "metrics": { "posts": get(&self.metric_posts), "bytes": get(&self.metric_bytes) },
        })
    }
}

const LOG_CAPACITY: usize = 256;

/// Locks without propagating poisoning: the guarded data stays consistent on every path.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a request goes, decided from method, path, flavor and (for `/v1/models`) headers.
enum Route {
    OpenaiChat,
    OpenaiModels(Option<String>),
    AnthropicMessages,
    AnthropicModels(Option<String>),
    GeminiGenerate {
        model: String,
        stream: bool,
    },
    GeminiModels(Option<String>),
    /// A dialect's chat endpoint; `deployment` is Azure's classic URL segment.
    DialectChat {
        dialect: Dialect,
        deployment: Option<String>,
    },
    /// A dialect's model list (Azure classic: `/openai/models?api-version=`).
    DialectModels {
        dialect: Dialect,
        classic_azure: bool,
    },
    DialectNotFound(Dialect),
    BedrockConverse {
        model: String,
        stream: bool,
    },
    BedrockAsyncInvoke,
    NotFound(Flavor),
}

/// The flavor whose error shape fits a request nobody routes (or that fails HTTP parsing).
pub(crate) fn guess_flavor(configured: Flavor, path: &str, anthropic_headers: bool) -> Flavor {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    match configured {
        Flavor::All if path.starts_with("/v1beta") => Flavor::Gemini,
        Flavor::All if under("/mistral") => Flavor::Mistral,
        Flavor::All if under("/deepseek") => Flavor::Deepseek,
        Flavor::All if under("/qwen") => Flavor::Qwen,
        Flavor::All if under("/openai") => Flavor::Azure,
        Flavor::All if under("/model") || under("/async-invoke") => Flavor::Bedrock,
        Flavor::All if anthropic_headers => Flavor::Anthropic,
        Flavor::All => Flavor::Openai,
        f => f,
    }
}

/// Routes of the dialects and Bedrock; `None` leaves the request to the classic flavors.
fn dialect_route(flavor: Flavor, req: &Request) -> Option<Route> {
    let path = req.path();
    let (get, post) = (req.method == "GET", req.method == "POST");
    if matches!(flavor, Flavor::All | Flavor::Azure) {
        if let Some(rest) = path.strip_prefix("/openai/") {
            let deployment = rest
                .strip_prefix("deployments/")
                .and_then(|r| r.strip_suffix("/chat/completions"))
                .filter(|d| !d.is_empty() && !d.contains('/'));
            let dialect = Dialect::Azure;
            return Some(match (rest, deployment) {
                (_, Some(d)) if post => Route::DialectChat {
                    dialect,
                    deployment: Some(percent_decode(d)),
                },
                ("v1/chat/completions", _) if post => Route::DialectChat {
                    dialect,
                    deployment: None,
                },
                ("models" | "v1/models", _) if get => Route::DialectModels {
                    dialect,
                    classic_azure: rest == "models",
                },
                _ => Route::DialectNotFound(dialect),
            });
        }
    }
    if matches!(flavor, Flavor::All | Flavor::Bedrock) {
        if let Some(rest) = path.strip_prefix("/model/") {
            let converse = |model: &str, stream| {
                let model = percent_decode(model);
                Route::BedrockConverse { model, stream }
            };
            return Some(match rest.rsplit_once('/') {
                Some((m, "converse")) if post && !m.is_empty() => converse(m, false),
                Some((m, "converse-stream")) if post && !m.is_empty() => converse(m, true),
                _ => Route::NotFound(Flavor::Bedrock),
            });
        }
        if path == "/async-invoke" && get {
            return Some(Route::BedrockAsyncInvoke);
        }
    }
    const PREFIXED: [(&str, Dialect, Flavor); 4] = [
        ("/mistral", Dialect::Mistral, Flavor::Mistral),
        ("/deepseek", Dialect::DeepSeek, Flavor::Deepseek),
        ("/qwen", Dialect::Qwen, Flavor::Qwen),
        ("/compat", Dialect::Compat, Flavor::Openai),
    ];
    let (dialect, rest) = match PREFIXED.iter().find(|(_, _, f)| *f == flavor) {
        // A single-dialect flavor serves the provider's own paths, prefixed or not.
        Some((prefix, d, _)) if *d != Dialect::Compat => {
            (*d, path.strip_prefix(prefix).unwrap_or(path))
        }
        _ => {
            let found = PREFIXED.iter().find(|(prefix, _, f)| {
                (flavor == Flavor::All || flavor == *f)
                    && path
                        .strip_prefix(prefix)
                        .is_some_and(|r| r.starts_with('/'))
            })?;
            (found.1, &path[found.0.len()..])
        }
    };
    let base = match dialect {
        Dialect::DeepSeek => rest.strip_prefix("/v1").unwrap_or(rest),
        Dialect::Qwen => rest.strip_prefix("/compatible-mode/v1").unwrap_or("-"),
        _ => rest.strip_prefix("/v1").unwrap_or("-"),
    };
    Some(match base {
        "/chat/completions" if post => Route::DialectChat {
            dialect,
            deployment: None,
        },
        "/models" if get => Route::DialectModels {
            dialect,
            classic_azure: false,
        },
        _ => Route::DialectNotFound(dialect),
    })
}

fn route(flavor: Flavor, req: &Request) -> Route {
    if let Some(r) = dialect_route(flavor, req) {
        return r;
    }
    let path = req.path();
    let (get, post) = (req.method == "GET", req.method == "POST");
    let anthropic_hdr =
        req.header("x-api-key").is_some() || req.header("anthropic-version").is_some();
    let anthropic_models = flavor == Flavor::Anthropic || (flavor == Flavor::All && anthropic_hdr);
    let models_route = |id: Option<String>| match anthropic_models {
        true => (Flavor::Anthropic, Route::AnthropicModels(id)),
        false => (Flavor::Openai, Route::OpenaiModels(id)),
    };
    let found = match path {
        "/v1/chat/completions" if post => Some((Flavor::Openai, Route::OpenaiChat)),
        "/v1/messages" if post => Some((Flavor::Anthropic, Route::AnthropicMessages)),
        "/v1/models" if get => Some(models_route(None)),
        "/v1beta/models" if get => Some((Flavor::Gemini, Route::GeminiModels(None))),
        p if get && p.len() > 11 && p.starts_with("/v1/models/") => {
            Some(models_route(Some(percent_decode(&p[11..]))))
        }
        p if p.starts_with("/v1beta/models/") => {
            let rest = percent_decode(&p["/v1beta/models/".len()..]);
            let generate = |model: &str, stream| {
                let model = model.to_string();
                Some((Flavor::Gemini, Route::GeminiGenerate { model, stream }))
            };
            match rest.rsplit_once(':') {
                Some((m, "generateContent")) if post => generate(m, false),
                Some((m, "streamGenerateContent")) if post => generate(m, true),
                None if get && !rest.is_empty() => {
                    Some((Flavor::Gemini, Route::GeminiModels(Some(rest))))
                }
                _ => None,
            }
        }
        _ => None,
    };
    match found {
        Some((f, r)) if flavor == Flavor::All || flavor == f => r,
        _ => Route::NotFound(guess_flavor(flavor, path, anthropic_hdr)),
    }
}

/// Answers one parsed request; never panics, whatever the input.
pub(crate) fn handle(state: &State, req: &Request) -> Response {
    match (req.method.as_str(), req.path()) {
        ("GET", "/_mock/requests") => {
            let items: Vec<Value> = lock(&state.log).iter().map(LogEntry::to_json).collect();
            return Response::json(200, &json!({ "requests": items }));
        }
        ("POST", "/_mock/aws-credentials") => return register_aws_credentials(state, req),
        ("POST", "/_mock/reset") => {
            lock(&state.log).clear();
            *lock(&state.cache) = PrefixCache::default();
            state.otlp.reset();
            return Response::json(200, &json!({ "reset": true }));
        }
        ("GET", "/_mock/otlp") => return Response::json(200, &state.otlp.to_json()),
        ("POST", path @ ("/v1/traces" | "/v1/metrics")) => return state.otlp.receive(path, req),
        (_, p) if p.starts_with("/_mock/") => {
            return Response::json(404, &json!({ "error": "unknown mock endpoint" }));
        }
        _ => {}
    }
    let body: Option<Value> = serde_json::from_slice(&req.body).ok();
    let route = route(state.opts.flavor, req);
    let field = |key: &str| body.as_ref().and_then(|b| b.get(key));
    let (model, stream) = match &route {
        Route::GeminiGenerate { model, stream } | Route::BedrockConverse { model, stream } => {
            (Some(model.as_str()), *stream)
        }
        Route::DialectChat {
            deployment: Some(d),
            ..
        } => (
            Some(d.as_str()),
            field("stream") == Some(&Value::Bool(true)),
        ),
        _ => (
            field("model").and_then(Value::as_str),
            field("stream") == Some(&Value::Bool(true)),
        ),
    };
    record(state, req, model, stream);
    let mut resp = match route {
        Route::OpenaiChat => openai::chat(state, req, body.as_ref()),
        Route::OpenaiModels(id) => openai::models(req, id.as_deref()),
        Route::AnthropicMessages => anthropic::messages(state, req, body.as_ref()),
        Route::AnthropicModels(id) => anthropic::models(req, id.as_deref()),
        Route::GeminiGenerate { model, stream } => {
            gemini::generate(state, req, body.as_ref(), &model, stream)
        }
        Route::GeminiModels(id) => gemini::models(req, id.as_deref()),
        Route::DialectChat {
            dialect,
            deployment,
        } => dialects::chat(state, req, body.as_ref(), dialect, deployment.as_deref()),
        Route::DialectModels {
            dialect,
            classic_azure,
        } => dialects::models(req, dialect, classic_azure),
        Route::DialectNotFound(d) => dialects::not_found(d, req),
        Route::BedrockConverse { model, stream } => {
            bedrock::converse(state, req, body.as_ref(), &model, stream)
        }
        Route::BedrockAsyncInvoke => bedrock::async_invoke(state, req),
        Route::NotFound(f) => not_found(f, req),
    };
    resp.latency_ms.get_or_insert(state.opts.latency_ms);
    resp
}

/// The dialect a flavor stands for, if it is one.
fn flavor_dialect(flavor: Flavor) -> Option<Dialect> {
    match flavor {
        Flavor::Mistral => Some(Dialect::Mistral),
        Flavor::Deepseek => Some(Dialect::DeepSeek),
        Flavor::Qwen => Some(Dialect::Qwen),
        Flavor::Azure => Some(Dialect::Azure),
        _ => None,
    }
}

fn not_found(flavor: Flavor, req: &Request) -> Response {
    if let Some(d) = flavor_dialect(flavor) {
        return dialects::not_found(d, req);
    }
    match flavor {
        Flavor::Anthropic => anthropic::error_body(404, "not_found_error", "Not Found"),
        Flavor::Gemini => gemini::error_body(404, "NOT_FOUND", "Method not found.", None),
        Flavor::Bedrock => {
            bedrock::error_body(404, "UnknownOperationException", "Unknown operation.")
        }
        _ => {
            let msg = format!("Invalid URL ({} {})", req.method, req.path());
            openai::error_body(404, &msg, "invalid_request_error", "", "")
        }
    }
}

/// The error an HTTP-level failure (bad framing, body too large) gets, in a provider's shape.
pub(crate) fn http_error(flavor: Flavor, status: u16, message: &str) -> Response {
    if let Some(d) = flavor_dialect(flavor) {
        return dialects::http_error(d, status, message);
    }
    match flavor {
        Flavor::Bedrock => bedrock::error_body(status, "ValidationException", message),
        Flavor::Anthropic if status == 413 => {
            anthropic::error_body(413, "request_too_large", message)
        }
        Flavor::Anthropic => anthropic::error_body(status, "invalid_request_error", message),
        Flavor::Gemini => gemini::error_body(status, "INVALID_ARGUMENT", message, None),
        _ => openai::error_body(status, message, "invalid_request_error", "", ""),
    }
}

/// The common tail of every chat endpoint: directives and `fail_rate` decide between an error
/// in `flavor`'s shape, a hang, a dropped connection and the real answer (`build`, run last).
pub(crate) fn respond(
    state: &State,
    d: &Directives,
    stream: bool,
    (flavor, model): (Flavor, &str),
    build: impl FnOnce() -> Response,
) -> Response {
    let error = |status| match flavor {
        Flavor::Anthropic => anthropic::error(status, model, d.retry_after),
        Flavor::Gemini => gemini::error(status, model, d.retry_after),
        _ => openai::error(status, model, d.retry_after),
    };
    let overloaded = if flavor == Flavor::Anthropic {
        529
    } else {
        503
    };
    respond_with(state, d, stream, error, overloaded, build)
}

/// [`respond`] with the provider's error builder given directly (dialects, Bedrock);
/// `overloaded` is the provider's "try later" status `fail_rate` may answer with.
pub(crate) fn respond_with(
    state: &State,
    d: &Directives,
    stream: bool,
    error: impl Fn(u16) -> Response,
    overloaded: u16,
    build: impl FnOnce() -> Response,
) -> Response {
    let opts = &state.opts;
    let mut resp = if d.hang {
        Response::new(200, Body::Hang)
    } else if let Some(status) = d.status {
        error(status)
    } else if opts.fail_rate > 0.0 && fastrand::f64() < opts.fail_rate {
        error(
            opts.fail_status
                .unwrap_or([429, 500, overloaded][fastrand::usize(..3)]),
        )
    } else if d.garbage {
        let mut r = Response::new(
            200,
            Body::Full(b"<html>upstream proxy error</html>".to_vec()),
        );
        r.headers.push(("content-type", "text/html".into()));
        r
    } else if d.drop && !stream {
        Response::new(200, Body::Close)
    } else {
        let mut r = build();
        if let Body::Sse { drop, .. } = &mut r.body {
            *drop = d.drop;
        }
        r
    };
    resp.latency_ms = d.latency_ms.or(resp.latency_ms);
    resp.chunk_delay_ms = d.chunk_delay_ms.unwrap_or(opts.chunk_delay_ms);
    resp.stall_ms = d.stall_ms.unwrap_or(0);
    resp
}

/// `POST /_mock/aws-credentials` `{"access_key_id", "secret_access_key", "session_token"?}`:
/// Bedrock accepts SigV4 requests signed with these (and, from then on, only with registered
/// credentials, verifying the signature).
fn register_aws_credentials(state: &State, req: &Request) -> Response {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let (Some(id), Some(secret)) = (field("access_key_id"), field("secret_access_key")) else {
        return Response::json(
            400,
            &json!({ "error": "expected {\"access_key_id\", \"secret_access_key\", \"session_token\"?}" }),
        );
    };
    let known = sigv4::Known {
        secret_access_key: secret.to_owned(),
        session_token: field("session_token").map(str::to_owned),
    };
    let mut creds = lock(&state.aws_credentials);
    creds.insert(id.to_owned(), known);
    Response::json(200, &json!({ "registered": creds.len() }))
}

/// One `/_mock/requests` entry (already redacted), serialized only when someone asks.
struct LogEntry {
    method: String,
    path: String,
    model: Option<String>,
    body_bytes: usize,
    stream: bool,
    headers: Vec<(String, String)>,
    connection: u64,
    /// The access key id of a SigV4 `authorization` (an identifier, not a secret: AWS logs it
    /// too), so tests can tell which credentials signed a request.
    aws_access_key_id: Option<String>,
}

impl LogEntry {
    fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for (name, value) in &self.headers {
            match headers.get_mut(name) {
                Some(Value::String(prev)) => *prev = format!("{prev}, {value}"),
                _ => drop(headers.insert(name.clone(), value.as_str().into())),
            }
        }
        let mut entry = json!({"method": self.method, "path": self.path, "model": self.model,
               "body_bytes": self.body_bytes, "stream": self.stream, "headers": headers,
               "connection": self.connection});
        if let Some(id) = &self.aws_access_key_id {
            entry["aws_access_key_id"] = id.as_str().into();
        }
        entry
    }
}

fn record(state: &State, req: &Request, model: Option<&str>, stream: bool) {
    let redact = |(name, value): &(String, String)| match name.as_str() {
        "authorization" | "x-api-key" | "x-goog-api-key" | "api-key" | "x-amz-security-token" => {
            (name.clone(), "present".into())
        }
        _ => (name.clone(), value.clone()),
    };
    let entry = LogEntry {
        method: req.method.clone(),
        path: redact_key(&req.target),
        model: model.map(String::from),
        body_bytes: req.body.len(),
        stream,
        headers: req.headers.iter().map(redact).collect(),
        connection: req.connection,
        aws_access_key_id: req
            .header("authorization")
            .and_then(sigv4::parse_authorization)
            .map(|a| a.access_key_id.to_owned()),
    };
    let mut log = lock(&state.log);
    if log.len() >= LOG_CAPACITY {
        log.pop_front();
    }
    log.push_back(entry);
}

/// Replaces the value of a `key=` query parameter so Gemini keys never reach the log.
fn redact_key(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let params: Vec<&str> = query
        .split('&')
        .map(|p| {
            if p.starts_with("key=") {
                "key=present"
            } else {
                p
            }
        })
        .collect();
    format!("{path}?{}", params.join("&"))
}

/// Decodes `%XX` escapes (clients may encode `@`, `=`, `,` and `:` in Gemini model paths).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
