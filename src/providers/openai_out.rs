//! Building OpenAI output from translated pieces: one place that knows the exact shape of
//! a `chat.completion` and of the `chat.completion.chunk` stream (providers.md §1.5, §1.6),
//! shared by every adapter that is not OpenAI already.

use super::{sse, TranslatedResponse};
use crate::types::{CompletionTokensDetails, PromptTokensDetails, Usage};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// OpenAI `finish_reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// OpenAI usage from a provider's partitioned counts. `input` excludes cache reads and
/// writes; `output` includes reasoning.
pub fn usage(
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
    reasoning: Option<u64>,
) -> Usage {
    let prompt = input + cache_read + cache_write;
    Usage {
        prompt_tokens: prompt,
        completion_tokens: output,
        total_tokens: prompt + output,
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: Some(cache_read),
            cache_write_tokens: (cache_write > 0).then_some(cache_write),
            extra: Default::default(),
        }),
        completion_tokens_details: reasoning.map(|r| CompletionTokensDetails {
            reasoning_tokens: Some(r),
            extra: Default::default(),
        }),
        extra: Default::default(),
    }
}

/// A complete tool call in a non-stream answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallOut {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

/// Everything a non-stream OpenAI answer holds.
#[derive(Debug, Clone)]
pub struct CompletionOut {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub content: Option<String>,
    /// Non-standard `reasoning_content` (thinking), kept out of `content`.
    pub reasoning: Option<String>,
    pub refusal: Option<String>,
    pub tool_calls: Vec<ToolCallOut>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

impl CompletionOut {
    /// The `chat.completion` JSON body, serialised straight from borrowed views of the
    /// fields (no `serde_json::Value` tree in between).
    pub fn to_body(&self) -> Bytes {
        let body = CompletionBody {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [CompletionChoice {
                index: 0,
                message: MessageBody {
                    role: "assistant",
                    content: self.content.as_deref(),
                    refusal: self.refusal.as_deref(),
                    reasoning_content: self.reasoning.as_deref(),
                    tool_calls: &self.tool_calls,
                },
                logprobs: None,
                finish_reason: self.finish_reason.as_str(),
            }],
            usage: &self.usage,
        };
        let text_len = self.content.as_ref().map_or(0, String::len)
            + self.reasoning.as_ref().map_or(0, String::len)
            + self
                .tool_calls
                .iter()
                .map(|c| c.arguments.len() + 64)
                .sum::<usize>();
        let mut out = Vec::with_capacity(384 + text_len + text_len / 8);
        // Serialising borrowed strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &body);
        Bytes::from(out)
    }

    /// The translated response: [`CompletionOut::to_body`], with `usage` reported and the
    /// end of the body's `usage` object known (it is the last field, written compactly).
    pub fn to_response(&self, usage: Option<Usage>) -> TranslatedResponse {
        let body = self.to_body();
        let usage_end = body.len().checked_sub(2);
        debug_assert!(body.ends_with(b"}}"));
        TranslatedResponse {
            body,
            usage,
            usage_end,
        }
    }
}

// Borrowed views of the OpenAI output shapes, in OpenAI's key order.

#[derive(Serialize)]
struct CompletionBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: &'a Usage,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: MessageBody<'a>,
    /// Always `null`.
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'a [ToolCallOut],
}

impl Serialize for ToolCallOut {
    /// `{"id", "type": "function", "function": {"name", "arguments"}}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ToolCallDelta {
            index: None,
            id: Some(&self.id),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some(&self.name),
                arguments: &self.arguments,
            },
        }
        .serialize(s)
    }
}

/// A whole chunk, as [`ChunkWriter`] writes it in pieces (the tests' reference).
#[cfg(test)]
#[derive(Serialize)]
struct ChunkBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChunkChoice<'a>; 1],
}

#[cfg(test)]
#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    /// Always `null`.
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// A chunk's `delta`: only the fields set are written.
#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct UsageChunkBody<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [(); 0],
    usage: &'a Usage,
}

/// Appends `data: <json>\n\n`, serialising straight into `out`.
fn write_event<T: Serialize>(out: &mut BytesMut, value: &T) {
    out.extend_from_slice(b"data: ");
    // Serialising borrowed strings and integers into a buffer cannot fail.
    let _ = serde_json::to_writer(out.writer(), value);
    out.extend_from_slice(b"\n\n");
}

/// Seconds since the epoch, for `created`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Emits `chat.completion.chunk` events with the rules clients depend on: a role chunk first,
/// a tool call's first delta with id/type/name and later deltas with arguments only, a finish
/// chunk with an empty delta, the usage chunk (`choices: []`) only when the client asked, and
/// exactly one `data: [DONE]`.
#[derive(Debug)]
pub struct ChunkWriter {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    role_sent: bool,
    finished: bool,
    done: bool,
    /// Every chunk's bytes up to its `delta` (`data: {"id":…,"model":…,"choices":[{"index":0,
    /// "delta":`), which do not change within a stream: written once, copied per chunk.
    prefix: Vec<u8>,
}

impl ChunkWriter {
    /// A writer for one stream.
    pub fn new(id: impl Into<String>, model: impl Into<String>, include_usage: bool) -> Self {
        let mut w = ChunkWriter {
            id: id.into(),
            created: now_secs(),
            model: model.into(),
            include_usage,
            role_sent: false,
            finished: false,
            done: false,
            prefix: Vec::new(),
        };
        w.write_prefix();
        w
    }

    /// Fixes `created` (the provider's own timestamp, or a constant in golden tests).
    pub fn with_created(mut self, created: u64) -> Self {
        self.created = created;
        self.write_prefix();
        self
    }

    /// Replaces the id and model once the provider told them (e.g. Anthropic `message_start`).
    pub fn set_identity(&mut self, id: Option<&str>, model: Option<&str>) {
        if let Some(id) = id {
            self.id = id.to_owned();
        }
        if let Some(m) = model {
            self.model = m.to_owned();
        }
        self.write_prefix();
    }

    fn write_prefix(&mut self) {
        #[derive(Serialize)]
        struct Head<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            model: &'a str,
        }
        let head = Head {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
        };
        self.prefix.clear();
        self.prefix.extend_from_slice(b"data: ");
        // Serialising borrowed strings and an integer into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.prefix, &head);
        self.prefix.pop(); // the object goes on: `}` becomes `,"choices":…`
        self.prefix
            .extend_from_slice(br#","choices":[{"index":0,"delta":"#);
    }

    /// Whether the finish chunk was written.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Whether `[DONE]` was written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// One `chat.completion.chunk` event: the same bytes as serialising [`ChunkBody`].
    fn chunk(&self, out: &mut BytesMut, delta: Delta<'_>, finish: Option<FinishReason>) {
        out.extend_from_slice(&self.prefix);
        // Serialising borrowed strings and integers into a buffer cannot fail.
        let _ = serde_json::to_writer(out.writer(), &delta);
        out.extend_from_slice(br#","logprobs":null,"finish_reason":"#);
        match finish {
            // Finish reasons are plain ASCII words: nothing to escape.
            Some(reason) => {
                out.put_u8(b'"');
                out.extend_from_slice(reason.as_str().as_bytes());
                out.put_u8(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    /// The first chunk (`role: assistant`); later calls do nothing.
    pub fn role(&mut self, out: &mut BytesMut) {
        if !self.role_sent {
            self.role_sent = true;
            let delta = Delta {
                role: Some("assistant"),
                content: Some(""),
                ..Delta::default()
            };
            self.chunk(out, delta, None);
        }
    }

    /// A text delta.
    pub fn content(&mut self, out: &mut BytesMut, text: &str) {
        if text.is_empty() {
            return;
        }
        self.role(out);
        let delta = Delta {
            content: Some(text),
            ..Delta::default()
        };
        self.chunk(out, delta, None);
    }

    /// A reasoning delta (`reasoning_content`).
    pub fn reasoning(&mut self, out: &mut BytesMut, text: &str) {
        if text.is_empty() {
            return;
        }
        self.role(out);
        let delta = Delta {
            reasoning_content: Some(text),
            ..Delta::default()
        };
        self.chunk(out, delta, None);
    }

    /// The first delta of tool call `index` (0, 1, ... within this answer).
    pub fn tool_call_start(
        &mut self,
        out: &mut BytesMut,
        index: usize,
        id: &str,
        name: &str,
        arguments: &str,
    ) {
        self.role(out);
        let call = ToolCallDelta {
            index: Some(index),
            id: Some(id),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some(name),
                arguments,
            },
        };
        let delta = Delta {
            tool_calls: Some([call]),
            ..Delta::default()
        };
        self.chunk(out, delta, None);
    }

    /// More argument text for tool call `index`.
    pub fn tool_call_args(&mut self, out: &mut BytesMut, index: usize, fragment: &str) {
        if fragment.is_empty() {
            return;
        }
        let call = ToolCallDelta {
            index: Some(index),
            id: None,
            kind: None,
            function: FunctionDelta {
                name: None,
                arguments: fragment,
            },
        };
        let delta = Delta {
            tool_calls: Some([call]),
            ..Delta::default()
        };
        self.chunk(out, delta, None);
    }

    /// The finish chunk (once).
    pub fn finish(&mut self, out: &mut BytesMut, reason: FinishReason) {
        if !self.finished {
            self.role(out);
            self.finished = true;
            self.chunk(out, Delta::default(), Some(reason));
        }
    }

    /// The usage chunk, when the client asked for it, then `[DONE]` (once).
    pub fn end(&mut self, out: &mut BytesMut, usage: Option<&Usage>) {
        if self.done {
            return;
        }
        if self.include_usage {
            if let Some(u) = usage {
                write_event(
                    out,
                    &UsageChunkBody {
                        id: &self.id,
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: &self.model,
                        choices: [],
                        usage: u,
                    },
                );
            }
        }
        out.extend_from_slice(sse::DONE);
        self.done = true;
    }
}

/// Adds `"cost_usd": <cost>` to the top-level `usage` object of a JSON body, with a byte
/// scan instead of a re-parse (the body may be a provider's untouched bytes). `cost` is the
/// JSON number text, from [`format_cost`]. None when the body has no top-level `usage`
/// object.
pub fn insert_usage_cost(json: &[u8], cost: &str) -> Option<Vec<u8>> {
    insert_usage_cost_at(json, None, cost)
}

/// [`insert_usage_cost`] where the caller may know the offset of the `usage` object's
/// closing `}` ([`TranslatedResponse::usage_end`]): then there
/// is nothing to scan. An offset that does not point at a `}` is ignored.
pub fn insert_usage_cost_at(json: &[u8], close: Option<usize>, cost: &str) -> Option<Vec<u8>> {
    let close = match close.filter(|&i| json.get(i) == Some(&b'}')) {
        Some(i) => i,
        None => usage_object_end(json)?,
    };
    Some(insert_cost_at(json, close, cost))
}

/// Adds `"cost_usd": <cost>` before `close`, the closing `}` of the body's `usage` object.
fn insert_cost_at(json: &[u8], close: usize, cost: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 16 + cost.len());
    out.extend_from_slice(&json[..close]);
    // An empty object `{}` needs no comma.
    let before = json[..close]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace());
    if before != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(b"\"cost_usd\":");
    out.extend_from_slice(cost.as_bytes());
    out.extend_from_slice(&json[close..]);
    out
}

/// A cost as JSON/header text: plain decimal, up to 12 places, no exponent. The same text
/// as `format!("{cost:.12}")` with trailing zeros (and a trailing `.`) removed, without the
/// exact big-number algorithm `{:.12}` runs for every value.
pub fn format_cost(cost: f64) -> String {
    let Some(pico) = picos(cost) else {
        return format_cost_exact(cost);
    };
    let (whole, frac) = (pico / PICOS, pico % PICOS);
    let mut buf = itoa::Buffer::new();
    let mut s = String::with_capacity(24);
    s.push_str(buf.format(whole));
    if frac != 0 {
        let digits = buf.format(frac + PICOS); // "1" and 12 digits, leading zeros kept
        s.push('.');
        s.push_str(digits[1..].trim_end_matches('0'));
    }
    s
}

/// 10^12: `format_cost` prints picodollars.
const PICOS: u64 = 1_000_000_000_000;

/// `cost` × 10^12 rounded half to even, exactly as `{:.12}` rounds the binary value; None
/// outside `0..1e6` (and for NaN), which [`format_cost_exact`] handles.
fn picos(cost: f64) -> Option<u64> {
    if !(0.0..1e6).contains(&cost) || cost.is_sign_negative() {
        return None;
    }
    let bits = cost.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    // cost = m × 2^e exactly.
    let (m, e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp - 1075)
    };
    // cost × 10^12 = m × 5^12 × 2^(e + 12); m × 5^12 < 2^82.
    let n = u128::from(m) * 5u128.pow(12);
    let shift = e + 12;
    let rounded = if shift >= 0 {
        n << shift
    } else {
        let shift = shift.unsigned_abs();
        if shift >= 100 {
            0 // n < 2^82, so the value is below 2^-18: it rounds to 0.
        } else {
            let q = n >> shift;
            let rest = n & ((1u128 << shift) - 1);
            let half = 1u128 << (shift - 1);
            if rest > half || (rest == half && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        }
    };
    u64::try_from(rounded).ok()
}

/// The reference formatting (`{:.12}`, zeros trimmed), for values [`picos`] does not cover.
#[cold]
fn format_cost_exact(cost: f64) -> String {
    let s = format!("{cost:.12}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

/// The index of the `}` closing the top-level `"usage": {...}` object.
fn usage_object_end(json: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    let mut usage_start = None;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i;
                // Skip to the closing quote with memchr (measured cheaper than a byte loop
                // even for short keys).
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &json[i.min(json.len())..]) {
                        Some(k) if json[i + k] == b'\\' => i += k + 2,
                        Some(k) => {
                            i += k;
                            break;
                        }
                        None => {
                            i = json.len();
                            break;
                        }
                    }
                }
                if depth == 1
                    && usage_start.is_none()
                    && &json[start..=i.min(json.len() - 1)] == b"\"usage\""
                {
                    // A key at the top level: the value must be an object.
                    let mut j = i + 1;
                    while j < json.len() && (json[j].is_ascii_whitespace() || json[j] == b':') {
                        j += 1;
                    }
                    if json.get(j) == Some(&b'{') {
                        usage_start = Some(depth);
                        depth += 1;
                        i = j;
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if usage_start == Some(depth) && json[i] == b'}' {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Chunks written from the stream's prefix are the bytes serde writes for the whole
        /// chunk, whatever the id, model and text hold, before and after `set_identity`.
        #[test]
        fn chunks_equal_the_whole_serialised_chunk(
            id in "\\PC{0,12}", model in "\\PC{0,12}", text in "\\PC{0,16}", created: u64,
            finish in proptest::option::of(0usize..4),
        ) {
            let reference = |w: &ChunkWriter, delta: Delta<'_>, finish: Option<FinishReason>| {
                let mut out = BytesMut::new();
                write_event(&mut out, &ChunkBody {
                    id: &w.id,
                    object: "chat.completion.chunk",
                    created: w.created,
                    model: &w.model,
                    choices: [ChunkChoice {
                        index: 0,
                        delta,
                        logprobs: None,
                        finish_reason: finish.map(FinishReason::as_str),
                    }],
                });
                out
            };
            let reasons = [FinishReason::Stop, FinishReason::Length, FinishReason::ToolCalls, FinishReason::ContentFilter];
            let finish = finish.map(|i| reasons[i]);
            let mut w = ChunkWriter::new("chatcmpl-0", "m", false).with_created(created);
            for round in 0..2 {
                let delta = || Delta { content: Some(text.as_str()), ..Delta::default() };
                let mut out = BytesMut::new();
                w.chunk(&mut out, delta(), finish);
                proptest::prop_assert_eq!(&out[..], &reference(&w, delta(), finish)[..], "round {}", round);
                w.set_identity(Some(&id), Some(&model));
            }
        }
    }

    #[test]
    fn inserts_cost_into_top_level_usage_only() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"a \"usage\":{} }"}}],"usage":{"prompt_tokens":3,"nested":{"a":1}},"z":1}"#;
        let out = insert_usage_cost(body, "0.000123").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["cost_usd"], 0.000123);
        assert_eq!(v["usage"]["nested"]["a"], 1);
        assert_eq!(v["choices"][0]["message"]["content"], "a \"usage\":{} }");
        let out = insert_usage_cost(br#"{"usage": { }}"#, "1.5").unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()["usage"]["cost_usd"],
            1.5
        );
        assert!(insert_usage_cost(br#"{"usage":null}"#, "1").is_none());
        // A hint that is not the usage object's `}` is ignored for the scan.
        for hint in [None, Some(0), Some(3), Some(body.len() + 9)] {
            assert_eq!(
                insert_usage_cost_at(body, hint, "0.000123"),
                insert_usage_cost(body, "0.000123")
            );
        }
        assert!(insert_usage_cost(br#"{"choices":[{"usage":{}}]}"#, "1").is_none());
        assert!(insert_usage_cost(b"{\"usage\":{", "1").is_none());
        assert!(insert_usage_cost(b"{\"a\":\"\\", "1").is_none());
        assert!(insert_usage_cost(b"{\"a\":\"x\\\"", "1").is_none());
        assert_eq!(format_cost(0.00012), "0.00012");
        assert_eq!(format_cost(2.0), "2");
    }

    /// The byte-at-a-time scan `usage_object_end` had before it used memchr.
    fn usage_object_end_reference(json: &[u8]) -> Option<usize> {
        let (mut depth, mut i, mut usage_start) = (0usize, 0, None);
        while i < json.len() {
            match json[i] {
                b'"' => {
                    let start = i;
                    i += 1;
                    while i < json.len() && json[i] != b'"' {
                        if json[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    if depth == 1
                        && usage_start.is_none()
                        && &json[start..=i.min(json.len() - 1)] == b"\"usage\""
                    {
                        let mut j = i + 1;
                        while j < json.len() && (json[j].is_ascii_whitespace() || json[j] == b':') {
                            j += 1;
                        }
                        if json.get(j) == Some(&b'{') {
                            usage_start = Some(depth);
                            depth += 1;
                            i = j;
                        }
                    }
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if usage_start == Some(depth) && json[i] == b'}' {
                        return Some(i);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        None
    }

    #[test]
    fn usage_scan_matches_the_byte_at_a_time_one() {
        let body = include_bytes!("../../benches/data/openai.json");
        assert_eq!(usage_object_end(body), usage_object_end_reference(body));
        assert!(usage_object_end(body).is_some());
        // Every prefix, and random mixes of the characters the scan cares about.
        for n in 0..body.len() {
            assert_eq!(
                usage_object_end(&body[..n]),
                usage_object_end_reference(&body[..n])
            );
        }
        let alphabet: &[u8] = b"{}[]\":\\ ausgex";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100_000 {
            let mut json = b"{\"usage\":{".to_vec();
            for _ in 0..rng.usize(0..40) {
                json.push(alphabet[rng.usize(..alphabet.len())]);
            }
            if rng.bool() {
                json.splice(0..0, *b"{\"a\":\"");
            }
            assert_eq!(
                usage_object_end(&json),
                usage_object_end_reference(&json),
                "{}",
                String::from_utf8_lossy(&json)
            );
        }
    }

    #[test]
    fn format_cost_matches_twelve_places_trimmed() {
        let cases = [
            0.0,
            -0.0,
            1.0 / 8192.0, // 0.0001220703125: a tie at the 12th place, rounded to even
            3.0 / 8192.0,
            5e-13,
            4.9e-13,
            1.5e-12,
            2.5e-12,
            0.000123,
            0.1 + 0.2,
            123.456,
            999_999.999_999_999_9,
            1e6,
            1e300,
            -0.5,
            f64::MIN_POSITIVE,
            5e-324,
            f64::INFINITY,
            f64::NAN,
        ];
        for c in cases {
            assert_eq!(format_cost(c), format_cost_exact(c), "{c:e}");
        }
        // Prices times token counts, as `pricing::cost` computes them.
        for price in [
            0.05, 0.15, 0.6, 1.25, 2.5, 3.0, 10.0, 15.0, 75.0, 0.075, 0.0375,
        ] {
            for tokens in (0..5000u64).chain([12_345, 199_999, 1_000_000, 7_777_777]) {
                let c = tokens as f64 * price / 1e6;
                assert_eq!(format_cost(c), format_cost_exact(c), "{c:e}");
            }
        }
        // And random bit patterns over the whole positive range, and small costs.
        let mut rng = fastrand::Rng::with_seed(12);
        for _ in 0..200_000 {
            let c = f64::from_bits(rng.u64(..) >> 1);
            assert_eq!(format_cost(c), format_cost_exact(c), "{c:e}");
            let c = rng.f64() * 10f64.powi(rng.i32(-14..4));
            assert_eq!(format_cost(c), format_cost_exact(c), "{c:e}");
        }
    }

    /// The `json!` bodies `to_body` and `ChunkWriter` wrote before they serialised structs:
    /// the bytes must not change.
    fn reference_body(c: &CompletionOut) -> String {
        use serde_json::{json, Value};
        let mut message = json!({"role": "assistant", "content": c.content, "refusal": c.refusal});
        if let Some(r) = &c.reasoning {
            message["reasoning_content"] = Value::String(r.clone());
        }
        if !c.tool_calls.is_empty() {
            message["tool_calls"] = c
                .tool_calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect();
        }
        json!({
            "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": c.finish_reason.as_str()}],
            "usage": c.usage,
        })
        .to_string()
    }

    fn reference_chunk(delta: serde_json::Value, finish: Option<FinishReason>) -> String {
        let v = serde_json::json!({
            "id": "chatcmpl-\"1\"", "object": "chat.completion.chunk", "created": 7, "model": "m\u{e9}",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(FinishReason::as_str)}],
        });
        format!("data: {v}\n\n")
    }

    #[test]
    fn bodies_are_byte_identical_to_the_json_macro_ones() {
        let mut rich = usage(230, 1920, 100, 88, Some(10));
        rich.extra.insert("service_tier".into(), "default".into());
        rich.extra.insert("cost".into(), serde_json::json!(0.25));
        let texts = [
            "",
            "plain",
            "quote \" backslash \\ newline \n tab \t nul \u{0} \u{1f} del \u{7f}",
            "unicode \u{e9} \u{2028} \u{1f600}",
        ];
        for (i, text) in texts.iter().enumerate() {
            for tools in [0, 1, 2] {
                let c = CompletionOut {
                    id: format!("msg_{i}\"x"),
                    created: 1_700_000_000 + i as u64,
                    model: "claude-\u{e9}".into(),
                    content: (i != 1).then(|| text.to_string()),
                    reasoning: (i % 2 == 0).then(|| format!("thinking {text}")),
                    refusal: (i == 3).then(|| text.to_string()),
                    tool_calls: (0..tools)
                        .map(|k| ToolCallOut {
                            id: format!("call_{k}"),
                            name: format!("f{k}{text}"),
                            arguments: format!("{{\"a\":{k},\"t\":\"{}\"}}", text.escape_default()),
                        })
                        .collect(),
                    finish_reason: [
                        FinishReason::Stop,
                        FinishReason::ToolCalls,
                        FinishReason::Length,
                        FinishReason::ContentFilter,
                    ][i],
                    usage: if tools == 1 {
                        rich.clone()
                    } else {
                        usage(3, 0, 0, 5, None)
                    },
                };
                assert_eq!(
                    std::str::from_utf8(&c.to_body()).unwrap(),
                    reference_body(&c)
                );
            }
        }
        let w = || ChunkWriter::new("chatcmpl-\"1\"", "m\u{e9}", true).with_created(7);
        let text = texts[2];
        let mut out = BytesMut::new();
        let mut writer = w();
        writer.role(&mut out);
        let mut want = reference_chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        );
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        writer.content(&mut out, text);
        writer.reasoning(&mut out, text);
        writer.tool_call_start(&mut out, 1, "call\"1", text, "{}");
        writer.tool_call_args(&mut out, 1, text);
        writer.finish(&mut out, FinishReason::ToolCalls);
        writer.end(&mut out, Some(&rich));
        want += &reference_chunk(serde_json::json!({"content": text}), None);
        want += &reference_chunk(serde_json::json!({"reasoning_content": text}), None);
        want += &reference_chunk(
            serde_json::json!({"tool_calls": [{"index": 1, "id": "call\"1", "type": "function", "function": {"name": text, "arguments": "{}"}}]}),
            None,
        );
        want += &reference_chunk(
            serde_json::json!({"tool_calls": [{"index": 1, "function": {"arguments": text}}]}),
            None,
        );
        want += &reference_chunk(serde_json::json!({}), Some(FinishReason::ToolCalls));
        let usage_chunk = serde_json::json!({
            "id": "chatcmpl-\"1\"", "object": "chat.completion.chunk", "created": 7, "model": "m\u{e9}",
            "choices": [], "usage": rich,
        });
        want += &format!("data: {usage_chunk}\n\ndata: [DONE]\n\n");
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
    }

    #[test]
    fn chunk_sequence_follows_openai_rules() {
        let mut w = ChunkWriter::new("chatcmpl-1", "m", true);
        let mut out = BytesMut::new();
        w.content(&mut out, "Hi");
        w.tool_call_start(&mut out, 0, "call_1", "f", "");
        w.tool_call_args(&mut out, 0, "{\"a\":1}");
        w.finish(&mut out, FinishReason::ToolCalls);
        w.finish(&mut out, FinishReason::Stop);
        w.end(&mut out, Some(&usage(3, 2, 0, 5, None)));
        w.end(&mut out, None);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 7, "{text}");
        assert!(events[0].contains("\"role\":\"assistant\""));
        assert!(events[4].contains("\"finish_reason\":\"tool_calls\""));
        assert!(events[5].contains("\"choices\":[]") && events[5].contains("\"prompt_tokens\":5"));
        assert_eq!(events[6], "data: [DONE]");
    }

    #[test]
    fn usage_includes_cache_in_prompt_tokens() {
        let u = usage(230, 1920, 100, 88, Some(10));
        assert_eq!((u.prompt_tokens, u.total_tokens), (2250, 2338));
        let t = u.token_counts();
        assert_eq!(
            (t.input, t.cache_read, t.cache_write, t.output),
            (230, 1920, 100, 88)
        );
    }
}
