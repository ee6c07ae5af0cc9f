//! Provider-independent behaviour: model-name directives, reply planning, schema-driven
//! argument generation, token counting and the prompt-cache simulation.

use super::lock;
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Per-request overrides parsed from `model@key=value,...`.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Directives {
    pub(crate) status: Option<u16>,
    pub(crate) retry_after: Option<u64>,
    pub(crate) latency_ms: Option<u64>,
    pub(crate) chunk_delay_ms: Option<u64>,
    pub(crate) stall_ms: Option<u64>,
    pub(crate) hang: bool,
    pub(crate) drop: bool,
    /// Answer 200 with a body that is not the provider's format (a broken upstream).
    pub(crate) garbage: bool,
    /// Gemini: block the prompt for safety (HTTP 200, no candidates, `promptFeedback`).
    pub(crate) blocked: bool,
    /// Latency used instead of `latency` when the request body is over [`LONG_PROMPT_BYTES`]
    /// (a model that slows down on long prompts).
    pub(crate) long_latency_ms: Option<u64>,
    /// OpenAI: answer 401 echoing the bearer key back, as OpenAI's own "Incorrect API key
    /// provided: sk-..." does (tests check the gateway never passes a key on).
    pub(crate) echo_key: bool,
    /// Azure: the prompt trips the content filter (HTTP 400, `code: content_filter`).
    pub(crate) content_filter: bool,
    /// Qwen: Alibaba's moderation blocks the input (HTTP 400 `data_inspection_failed`).
    pub(crate) data_inspection: bool,
    /// DeepSeek: this many keep-alives before the answer (`: keep-alive` comments in a
    /// stream, blank lines before a JSON body); streams send one unless told otherwise.
    pub(crate) keep_alive: Option<u64>,
    /// Bedrock: a ConverseStream that breaks after its first text delta with this
    /// exception frame (`throttlingException`, `modelStreamErrorException`, ...).
    pub(crate) exception: Option<String>,
    /// Generic OpenAI-compatible server: end the stream without `data: [DONE]`.
    pub(crate) no_done: bool,
}

/// Request bodies above this size count as long prompts for `long_latency`.
pub(crate) const LONG_PROMPT_BYTES: usize = 16 * 1024;

impl Directives {
    /// Applies `long_latency` for a request body of `body_len` bytes.
    pub(crate) fn for_body(mut self, body_len: usize) -> Self {
        if body_len > LONG_PROMPT_BYTES {
            if let Some(l) = self.long_latency_ms {
                self.latency_ms = Some(l);
            }
        }
        self
    }
}

/// Delays are capped at a day so no directive can overflow a timer.
const MAX_DELAY_MS: u64 = 86_400_000;

/// Splits `gpt-4o-mini@status=429,retry_after=20` into the reported model and its directives.
/// Unknown or malformed directives are ignored (and logged).
pub(crate) fn split_model(raw: &str) -> (&str, Directives) {
    let Some((base, rest)) = raw.split_once('@') else {
        return (raw, Directives::default());
    };
    let mut d = Directives::default();
    for item in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        let num = value.trim().parse::<u64>().ok();
        let delay = num.map(|n| n.min(MAX_DELAY_MS));
        match key.trim() {
            "status" => {
                d.status = num
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| (400..=599).contains(n))
            }
            "retry_after" => d.retry_after = num,
            "latency" => d.latency_ms = delay,
            "chunk_delay" => d.chunk_delay_ms = delay,
            "stall" => d.stall_ms = delay,
            "hang" => d.hang = true,
            "drop" => d.drop = true,
            "garbage" => d.garbage = true,
            "blocked" => d.blocked = true,
            "long_latency" => d.long_latency_ms = delay,
            "echo_key" => d.echo_key = true,
            "content_filter" => d.content_filter = true,
            "data_inspection" => d.data_inspection = true,
            "keep_alive" => d.keep_alive = num.map(|n| n.min(1000)),
            "exception" if !value.trim().is_empty() => d.exception = Some(value.trim().into()),
            "no_done" => d.no_done = true,
            other => log::warn!("mock: ignoring unknown directive {other:?}"),
        }
    }
    (base, d)
}

/// 64-bit FNV-1a, used for the reply fingerprint and prompt-prefix hashes.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv_update(FNV_OFFSET, bytes)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv_update(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A position in the prompt: hash of everything so far, its size and message count.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mark {
    pub(crate) hash: u64,
    chars: u64,
    msgs: u64,
    pub(crate) one_hour: bool,
}

impl Mark {
    /// Prompt tokens up to this point: ceil(chars / 4) + 4 per message.
    pub(crate) fn tokens(&self) -> u64 {
        self.chars.div_ceil(4) + 4 * self.msgs
    }
}

/// Walks a prompt once, counting characters and hashing it without copying any text.
pub(crate) struct Transcript {
    cur: Mark,
    /// Explicit cache breakpoints (Anthropic `cache_control`), in prompt order.
    pub(crate) marks: Vec<Mark>,
}

impl Transcript {
    /// Hashes are namespaced by flavor and model, like real provider caches.
    pub(crate) fn new(flavor: &str, model: &str) -> Self {
        let hash = fnv_update(fnv_update(FNV_OFFSET, flavor.as_bytes()), model.as_bytes());
        Transcript {
            cur: Mark {
                hash,
                ..Mark::default()
            },
            marks: Vec::new(),
        }
    }

    pub(crate) fn message(&mut self, role: &str) {
        self.cur.msgs += 1;
        self.cur.hash = fnv_update(self.cur.hash, b"\x1e");
        self.cur.hash = fnv_update(self.cur.hash, role.as_bytes());
        self.cur.hash = fnv_update(self.cur.hash, b"\x1f");
    }

    pub(crate) fn text(&mut self, s: &str) {
        self.cur.chars += s.chars().count() as u64;
        self.cur.hash = fnv_update(self.cur.hash, s.as_bytes());
    }

    /// Records a cache breakpoint here when `breakpoint` is `Some(is_1h_ttl)`.
    pub(crate) fn mark(&mut self, breakpoint: Option<bool>) {
        if let Some(one_hour) = breakpoint {
            self.marks.push(Mark {
                one_hour,
                ..self.cur
            });
        }
    }

    pub(crate) fn snapshot(&self) -> Mark {
        self.cur
    }
}

/// How the request constrains tool use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToolMode<'a> {
    Auto,
    None,
    Forced(&'a str),
}

/// A callable tool: its name and JSON schema for the arguments.
pub(crate) struct Tool<'a> {
    pub(crate) name: &'a str,
    pub(crate) schema: &'a Value,
}

/// Requested structured output.
pub(crate) enum Structured<'a> {
    None,
    JsonObject,
    Schema(&'a Value),
}

/// The flavor-neutral view of a chat request that drives the reply.
pub(crate) struct Conversation<'a> {
    pub(crate) transcript: Transcript,
    /// Everything before the last message (implicit caching), if there is more than one.
    pub(crate) prefix: Option<Mark>,
    pub(crate) last_user_text: String,
    /// Number of tool results in the last message(s); non-zero means "answer the results".
    pub(crate) tool_results: usize,
    pub(crate) tools: Vec<Tool<'a>>,
    pub(crate) tool_mode: ToolMode<'a>,
    pub(crate) parallel: bool,
    pub(crate) structured: Structured<'a>,
}

impl<'a> Conversation<'a> {
    pub(crate) fn new(transcript: Transcript) -> Self {
        Conversation {
            transcript,
            prefix: None,
            last_user_text: String::new(),
            tool_results: 0,
            tools: Vec::new(),
            tool_mode: ToolMode::Auto,
            parallel: true,
            structured: Structured::None,
        }
    }
}

/// One generated tool call: `input` is the argument object, `args` its compact JSON.
pub(crate) struct ToolCall {
    pub(crate) name: String,
    pub(crate) input: Value,
    pub(crate) args: String,
}

/// What the mock model "says".
pub(crate) enum Output {
    Text(String),
    Calls(Vec<ToolCall>),
}

/// Decides the reply: tool calls, then structured output, then tool-result ack, then echo.
pub(crate) fn plan(c: &Conversation) -> Output {
    if !c.tools.is_empty() && c.tool_results == 0 && c.tool_mode != ToolMode::None {
        static NO_SCHEMA: Value = Value::Null;
        let (first, second) = (&c.tools[0], c.tools.get(1).unwrap_or(&c.tools[0]));
        let picks = match c.tool_mode {
            ToolMode::Forced(name) => {
                let tool = c.tools.iter().find(|t| t.name == name);
                vec![(name, tool.map_or(&NO_SCHEMA, |t| t.schema))]
            }
            _ if c.parallel => vec![(first.name, first.schema), (second.name, second.schema)],
            _ => vec![(first.name, first.schema)],
        };
        let call = |(i, (name, schema)): (usize, (&str, &Value))| {
            let input = generate(schema, schema, "value", i, 0);
            let input = if input.is_object() { input } else { json!({}) };
            ToolCall {
                name: name.to_string(),
                args: input.to_string(),
                input,
            }
        };
        return Output::Calls(picks.into_iter().enumerate().map(call).collect());
    }
    match c.structured {
        Structured::JsonObject => return Output::Text(r#"{"reply":"mock"}"#.to_string()),
        Structured::Schema(s) => return Output::Text(generate(s, s, "value", 0, 0).to_string()),
        Structured::None => {}
    }
    if c.tool_results > 0 {
        return Output::Text(format!("tool results received: {}", c.tool_results));
    }
    Output::Text(reply_text(&c.last_user_text))
}

/// `mock reply to: <first 60 chars> [len=<chars> fnv=<hex>]`.
pub(crate) fn reply_text(user: &str) -> String {
    let head: String = user.chars().take(60).collect();
    let (len, fnv) = (user.chars().count(), fnv1a(user.as_bytes()));
    format!("mock reply to: {head} [len={len} fnv={fnv:016x}]")
}

/// Output tokens: ceil(reply chars / 4) + 1 + ceil(tool argument chars / 4).
pub(crate) fn output_tokens(out: &Output) -> u64 {
    match out {
        Output::Text(t) => (t.chars().count() as u64).div_ceil(4) + 1,
        Output::Calls(calls) => {
            let chars: usize = calls.iter().map(|c| c.args.chars().count()).sum();
            (chars as u64).div_ceil(4) + 1
        }
    }
}

/// Generates the `i`-th deterministic value for a JSON schema (OpenAPI-style uppercase types,
/// type unions, `enum`, `const`, `anyOf`/`oneOf`/`allOf` and local `$ref`s are understood).
pub(crate) fn generate(root: &Value, schema: &Value, name: &str, i: usize, depth: usize) -> Value {
    let Some(obj) = schema.as_object().filter(|_| depth < 16) else {
        return Value::Null;
    };
    let reference = obj.get("$ref").and_then(Value::as_str);
    if let Some(target) = reference.and_then(|r| root.pointer(r.strip_prefix('#')?)) {
        return generate(root, target, name, i, depth + 1);
    }
    if let Some(e) = obj
        .get("enum")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
    {
        return e[i % e.len()].clone();
    }
    if let Some(c) = obj.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(alts) = obj.get(key).and_then(Value::as_array) {
            let is_null = |a: &&Value| a.get("type").and_then(Value::as_str) == Some("null");
            if let Some(alt) = alts.iter().find(|a| !is_null(a)).or(alts.first()) {
                return generate(root, alt, name, i, depth + 1);
            }
        }
    }
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.to_ascii_lowercase(),
        Some(Value::Array(ts)) => {
            let first = ts.iter().filter_map(Value::as_str).find(|t| *t != "null");
            first.unwrap_or("null").to_ascii_lowercase()
        }
        _ if obj.contains_key("properties") => "object".to_string(),
        _ => String::new(),
    };
    match ty.as_str() {
        "string" => Value::String(format!("{name}-{}", i + 1)),
        "integer" => json!(i + 1),
        "number" => json!(i as f64 + 1.5),
        "boolean" => Value::Bool(true),
        "array" => json!([]),
        "object" => {
            let required: Vec<&str> = list(obj.get("required"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let props = obj
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten();
            let props =
                props.filter(|(p, _)| required.is_empty() || required.contains(&p.as_str()));
            let value =
                |(p, sub): (&String, &Value)| (p.clone(), generate(root, sub, p, i, depth + 1));
            Value::Object(props.map(value).collect())
        }
        _ => Value::Null,
    }
}

/// Splits `s` into pieces of `min..=max` characters (cycling), never inside a character.
pub(crate) fn pieces(s: &str, min: usize, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    let span = max.saturating_sub(min) + 1;
    while !rest.is_empty() {
        let n = min.max(1) + out.len() % span;
        let cut = rest.char_indices().nth(n).map_or(rest.len(), |(i, _)| i);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

/// A random `[A-Za-z0-9]` id with the given prefix, like the providers' ids.
pub(crate) fn rand_id(prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(len));
    id
}

/// `len` random lowercase hex digits (Mistral's response ids).
pub(crate) fn rand_hex(len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    std::iter::repeat_with(|| char::from(HEX[fastrand::usize(..16)]))
        .take(len)
        .collect()
}

/// A random version-4 UUID in its usual 8-4-4-4-12 spelling (DeepSeek, DashScope, AWS ids).
pub(crate) fn rand_uuid() -> String {
    let h = rand_hex(32);
    let variant = ["8", "9", "a", "b"][fastrand::usize(..4)];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..]
    )
}

/// Seconds since the epoch, for `created` fields.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Token accounting for one reply. `input` includes cached and written tokens.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) input: u64,
    pub(crate) output: u64,
    pub(crate) cache_read: u64,
    pub(crate) cache_write: u64,
    pub(crate) write_1h: bool,
}

/// Minimum prefix the providers cache, in tokens.
const MIN_CACHEABLE: u64 = 1024;

/// Remembers prompt-prefix hashes, FIFO-bounded so memory never grows without limit.
#[derive(Default)]
pub(crate) struct PrefixCache {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl PrefixCache {
    const CAPACITY: usize = 4096;

    fn insert(&mut self, h: u64) {
        if self.seen.insert(h) {
            self.order.push_back(h);
            if self.order.len() > Self::CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
    }
}

/// OpenAI/Gemini implicit caching: tokens read from cache for this request's prefix.
pub(crate) fn implicit_cached(cache: &Mutex<PrefixCache>, prefix: Option<Mark>) -> u64 {
    implicit_cached_at(cache, prefix, MIN_CACHEABLE, 128)
}

/// Implicit caching with a provider's own minimum prefix and cache granularity (tokens):
/// a repeated prefix of at least `min` tokens reports `floor(prefix / unit) * unit`.
pub(crate) fn implicit_cached_at(
    cache: &Mutex<PrefixCache>,
    prefix: Option<Mark>,
    min: u64,
    unit: u64,
) -> u64 {
    let Some(p) = prefix else { return 0 };
    let seen = {
        let mut c = lock(cache);
        let seen = c.seen.contains(&p.hash);
        c.insert(p.hash);
        seen
    };
    let unit = unit.max(1);
    match p.tokens() {
        t if seen && t >= min => t / unit * unit,
        _ => 0,
    }
}

/// Anthropic explicit caching at breakpoints: (read, written, written with 1h TTL).
pub(crate) fn explicit_cache(cache: &Mutex<PrefixCache>, marks: &[Mark]) -> (u64, u64, bool) {
    let eligible: Vec<&Mark> = marks
        .iter()
        .filter(|m| m.tokens() >= MIN_CACHEABLE)
        .collect();
    let Some(last) = eligible.last() else {
        return (0, 0, false);
    };
    let read = {
        let mut c = lock(cache);
        let read = eligible
            .iter()
            .rev()
            .find(|m| c.seen.contains(&m.hash))
            .map_or(0, |m| m.tokens());
        for m in &eligible {
            c.insert(m.hash);
        }
        read
    };
    (read, last.tokens().saturating_sub(read), last.one_hour)
}

/// `v[key]` as a string.
pub(crate) fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `v` as an array, empty when absent or not an array.
pub(crate) fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Text of a string-or-parts content value: the string, or its `text` parts concatenated.
pub(crate) fn content_text(content: Option<&Value>) -> std::borrow::Cow<'_, str> {
    match content {
        Some(Value::String(s)) => s.as_str().into(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<String>()
            .into(),
        _ => "".into(),
    }
}
