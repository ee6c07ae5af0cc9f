//! End-to-end tests over raw TCP on 127.0.0.1, plus unit tests of the pure helpers.

use super::behavior::{fnv1a, generate, pieces, reply_text, split_model};
use super::http::Chunked;
use super::{serve, Flavor, MockOptions};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

/// A running mock; dropping it shuts the server down.
struct Mock {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(opts: MockOptions) -> Mock {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, opts, async {
        let _ = rx.await;
    }));
    Mock { addr, _stop: tx }
}

async fn mock() -> Mock {
    start(MockOptions::default()).await
}

#[derive(Debug, Default)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunks: Vec<Vec<u8>>,
    complete: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(k, _)| k == name);
        found.map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// SSE events as `(event name, parsed data)`; `[DONE]` parses to `"[DONE]"`.
    fn events(&self, sep: &str) -> Vec<(String, Value)> {
        let parse = |d: &str| serde_json::from_str(d).unwrap_or(Value::String(d.into()));
        let field = |e: &str, p: &str| {
            let line = e.lines().find_map(|l| l.strip_prefix(p));
            line.unwrap_or("").to_string()
        };
        let text = self.text();
        let events = text.split(sep).filter(|e| !e.trim().is_empty());
        events
            .map(|e| (field(e, "event: "), parse(&field(e, "data: "))))
            .collect()
    }
}

/// `v` at a JSON pointer, `null` if absent.
fn at<'a>(v: &'a Value, ptr: &str) -> &'a Value {
    v.pointer(ptr).unwrap_or(&Value::Null)
}

/// The string at a JSON pointer, `""` if absent.
fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    at(v, ptr).as_str().unwrap_or("")
}

/// A minimal HTTP/1.1 client reading Content-Length and chunked bodies.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        Client { s, buf: Vec::new() }
    }

    async fn fill(&mut self) -> bool {
        self.buf.reserve(65536);
        matches!(self.s.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    async fn read_response(&mut self) -> Resp {
        let mut resp = Resp::default();
        let n = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                resp.status = r.code.unwrap_or(0);
                for h in r.headers.iter() {
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    resp.headers.push((h.name.to_lowercase(), value));
                }
                break n;
            }
            if !self.fill().await {
                return resp;
            }
        };
        self.buf.drain(..n);
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    if !self.fill().await {
                        return resp;
                    }
                    continue;
                };
                let size = std::str::from_utf8(&self.buf[..eol]).unwrap_or("x");
                let size = usize::from_str_radix(size, 16).expect("chunk size");
                while self.buf.len() < eol + size + 4 {
                    if !self.fill().await {
                        return resp;
                    }
                }
                let frame: Vec<u8> = self.buf.drain(..eol + size + 4).collect();
                if size == 0 {
                    resp.complete = true;
                    return resp;
                }
                let data = &frame[eol + 2..eol + 2 + size];
                resp.body.extend_from_slice(data);
                resp.chunks.push(data.to_vec());
            }
        }
        let len = resp.header("content-length").and_then(|v| v.parse().ok());
        let len: usize = len.unwrap_or(0);
        while self.buf.len() < len {
            if !self.fill().await {
                return resp;
            }
        }
        resp.body = self.buf.drain(..len).collect();
        resp.complete = true;
        resp
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        hs: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut raw = format!("{method} {path} HTTP/1.1\r\n");
        raw.push_str(&format!("content-length: {}\r\n", body.len()));
        hs.iter()
            .for_each(|(k, v)| raw.push_str(&format!("{k}: {v}\r\n")));
        raw.push_str("\r\n");
        self.s
            .write_all(&[raw.as_bytes(), body].concat())
            .await
            .expect("write");
        self.read_response().await
    }

    async fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
        let mut c = Client::connect(addr).await;
        c.s.write_all(bytes).await.expect("write");
        c.read_response().await
    }
}

type Headers = &'static [(&'static str, &'static str)];
const OAI: Headers = &[("authorization", "Bearer sk-test")];
const ANT: Headers = &[("x-api-key", "sk-ant"), ("anthropic-version", "2023-06-01")];
const GEM: Headers = &[("x-goog-api-key", "AIza-test")];
const CHAT: &str = "/v1/chat/completions";
const FLASH: &str = "gemini-2.5-flash:generateContent";
const FLASH_SSE: &str = "gemini-2.5-flash:streamGenerateContent?alt=sse";

async fn send(m: &Mock, method: &str, path: &str, hs: Headers, body: &Value) -> Resp {
    let bytes = match body {
        Value::Null => Vec::new(),
        b => b.to_string().into_bytes(),
    };
    let fut = async {
        let mut c = Client::connect(m.addr).await;
        c.request(method, path, hs, &bytes).await
    };
    timeout(Duration::from_secs(5), fut).await.expect("in time")
}

async fn get(m: &Mock, path: &str, hs: Headers) -> Resp {
    send(m, "GET", path, hs, &Value::Null).await
}

/// `base` with the top-level fields of `extra` added or replaced.
fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

const QUESTION: &str = "What is the capital of Mexico?";

/// An OpenAI chat request; the user text is split over two text parts.
async fn oai(m: &Mock, model: &str, extra: Value) -> Resp {
    let a = json!({"type": "text", "text": "What is the "});
    let b = json!({"type": "text", "text": "capital of Mexico?"});
    let messages = json!([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": [a, b]}]);
    let base = json!({"model": model, "messages": messages});
    send(m, "POST", CHAT, OAI, &with(base, extra)).await
}

async fn oai_v(m: &Mock, extra: Value) -> Value {
    oai(m, "gpt-4o", extra).await.json()
}

async fn ant(m: &Mock, extra: Value) -> Resp {
    let content = json!([{"type": "text", "text": "Hello there"}]);
    let base = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "system": "Be brief.",
                      "messages": [{"role": "user", "content": content}]});
    send(m, "POST", "/v1/messages", ANT, &with(base, extra)).await
}

async fn gem(m: &Mock, target: &str, hs: Headers, extra: Value) -> Resp {
    let base = json!({"contents": [{"role": "user", "parts": [{"text": QUESTION}]}]});
    let path = format!("/v1beta/models/{target}");
    send(m, "POST", &path, hs, &with(base, extra)).await
}

fn tools() -> Value {
    let weather = json!({"type": "object", "required": ["city", "unit", "days"], "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]},
        "days": {"type": "integer"}, "verbose": {"type": "boolean"}}});
    let time = json!({"type": "object", "properties": {"tz": {"type": "number"}}});
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": weather}},
           {"type": "function", "function": {"name": "get_time", "parameters": time}}])
}

/// `name(arguments)` of each tool call in a non-stream OpenAI reply.
fn oai_calls(v: &Value) -> Vec<String> {
    let calls = at(v, "/choices/0/message/tool_calls").as_array();
    let call = |c: &Value| {
        format!(
            "{}({})",
            s(c, "/function/name"),
            s(c, "/function/arguments")
        )
    };
    calls.into_iter().flatten().map(call).collect()
}

const WEATHER_0: &str = r#"get_weather({"city":"city-1","unit":"c","days":1})"#;
const WEATHER_1: &str = r#"get_weather({"city":"city-2","unit":"f","days":2})"#;

#[tokio::test]
async fn openai_non_stream_text() {
    let v = oai(&mock().await, "gpt-4o-mini", json!({})).await.json();
    assert!(s(&v, "/id").starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(s(&v, "/choices/0/message/content"), reply_text(QUESTION));
    // 9 + 30 chars -> ceil(39 / 4) = 10, + 4 per message.
    assert_eq!(v["usage"]["prompt_tokens"], 18);
    assert!(s(&v, "/system_fingerprint").starts_with("fp_"));
}

#[tokio::test]
async fn openai_stream_include_usage() {
    let m = mock().await;
    let plain = oai_v(&m, json!({})).await;
    let opts = json!({"stream": true, "stream_options": {"include_usage": true}});
    let r = oai(&m, "gpt-4o", opts).await;
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let events = r.events("\n\n");
    assert!(
        r.complete && r.chunks.len() == events.len(),
        "one HTTP chunk per event"
    );
    let chunks: Vec<&Value> = events.iter().map(|e| &e.1).collect();
    let n = chunks.len();
    assert_eq!(chunks[n - 1], "[DONE]");
    assert_eq!(s(chunks[0], "/choices/0/delta/role"), "assistant");
    let text: String = chunks
        .iter()
        .map(|c| s(c, "/choices/0/delta/content"))
        .collect();
    assert_eq!(s(&plain, "/choices/0/message/content"), text);
    assert!(chunks[..n - 2]
        .iter()
        .all(|c| c.get("usage") == Some(&Value::Null)));
    let finish = chunks[n - 3];
    assert_eq!(s(finish, "/choices/0/finish_reason"), "stop");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[n - 2]["choices"], json!([]));
    assert_eq!(chunks[n - 2]["usage"], plain["usage"]);
}

#[tokio::test]
async fn openai_stream_without_usage() {
    let events = oai(&mock().await, "m", json!({"stream": true}))
        .await
        .events("\n\n");
    assert_eq!(events.last().map(|e| &e.1), Some(&json!("[DONE]")));
    let chunks = &events[..events.len() - 1];
    assert!(chunks.iter().all(|(_, c)| c.get("usage").is_none()));
    assert!(chunks.iter().all(|(_, c)| c["choices"] != json!([])));
}

#[tokio::test]
async fn openai_parallel_tool_calls() {
    let m = mock().await;
    let v = oai_v(&m, json!({"tools": tools()})).await;
    assert_eq!(s(&v, "/choices/0/finish_reason"), "tool_calls");
    assert!(at(&v, "/choices/0/message/content").is_null());
    let id = s(&v, "/choices/0/message/tool_calls/0/id");
    assert!(id.starts_with("call_") && id.len() == 29);
    assert_eq!(oai_calls(&v), [WEATHER_0, r#"get_time({"tz":2.5})"#]);
    let single = oai_v(&m, json!({"tools": [tools()[0]]})).await;
    assert_eq!(oai_calls(&single), [WEATHER_0, WEATHER_1]);
    let serial = json!({"tools": tools(), "parallel_tool_calls": false});
    assert_eq!(oai_calls(&oai_v(&m, serial).await), [WEATHER_0]);
    let pick = json!({"type": "function", "function": {"name": "get_time"}});
    let forced = oai_v(&m, json!({"tools": tools(), "tool_choice": pick})).await;
    assert_eq!(oai_calls(&forced), [r#"get_time({"tz":1.5})"#]);
    let none = oai_v(&m, json!({"tools": tools(), "tool_choice": "none"})).await;
    assert_eq!(s(&none, "/choices/0/finish_reason"), "stop");
}

#[tokio::test]
async fn openai_streamed_tool_arguments() {
    let m = mock().await;
    let plain = oai_v(&m, json!({"tools": tools()})).await;
    let r = oai(&m, "gpt-4o", json!({"tools": tools(), "stream": true})).await;
    let mut calls = [String::new(), String::new()];
    for (_, chunk) in r.events("\n\n") {
        let deltas = at(&chunk, "/choices/0/delta/tool_calls").as_array();
        for tc in deltas.into_iter().flatten() {
            let call = &mut calls[tc["index"].as_u64().unwrap_or(9) as usize];
            if tc.get("id").is_some() {
                assert_eq!(
                    (s(tc, "/type"), s(tc, "/function/arguments")),
                    ("function", "")
                );
                call.push_str(&format!("{}(", s(tc, "/function/name")));
            }
            call.push_str(s(tc, "/function/arguments"));
        }
    }
    let calls = calls.map(|c| c + ")");
    assert_eq!(oai_calls(&plain), calls);
}

#[tokio::test]
async fn tool_results_and_structured_output() {
    let m = mock().await;
    let call = json!({"id": "call_1", "type": "function",
                      "function": {"name": "f", "arguments": "{}"}});
    let messages = json!([{"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rainy"}]);
    let v = oai_v(&m, json!({"tools": tools(), "messages": messages})).await;
    assert_eq!(
        s(&v, "/choices/0/message/content"),
        "tool results received: 2"
    );
    let schema = json!({"type": "object", "required": ["city", "pop"], "properties": {
        "city": {"type": "string"}, "pop": {"type": ["integer", "null"]}}});
    let rf = json!({"type": "json_schema", "json_schema": {"name": "A", "schema": schema}});
    let v = oai_v(&m, json!({"response_format": rf})).await;
    assert_eq!(
        s(&v, "/choices/0/message/content"),
        r#"{"city":"city-1","pop":1}"#
    );
    let v = oai_v(&m, json!({"response_format": {"type": "json_object"}})).await;
    assert_eq!(s(&v, "/choices/0/message/content"), r#"{"reply":"mock"}"#);
}

#[tokio::test]
async fn openai_and_gemini_cached_tokens() {
    let m = mock().await;
    let long = "x".repeat(8000);
    let messages =
        |q: &str| json!([{"role": "system", "content": long}, {"role": "user", "content": q}]);
    let first = oai_v(&m, json!({"messages": messages("one")})).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let second = oai_v(&m, json!({"messages": messages("two")})).await;
    // prefix = 8000 / 4 + 4 = 2004 tokens -> 1920 cached; prompt_tokens includes them.
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        1920
    );
    assert_eq!(second["usage"]["prompt_tokens"], 2009);

    let system = json!({"systemInstruction": {"parts": [{"text": long}]}});
    let g1 = gem(&m, FLASH, GEM, system.clone()).await.json();
    assert!(at(&g1, "/usageMetadata/cachedContentTokenCount").is_null());
    let g2 = gem(&m, FLASH, GEM, system).await.json();
    assert_eq!(g2["usageMetadata"]["cachedContentTokenCount"], 1920);
    assert_eq!(g2["usageMetadata"]["promptTokenCount"], 2000 + 8 + 8);
}

#[tokio::test]
async fn anthropic_text_and_stream() {
    let m = mock().await;
    let r = ant(&m, json!({})).await;
    assert!(r
        .header("request-id")
        .is_some_and(|id| id.starts_with("req_")));
    let v = r.json();
    assert!(s(&v, "/id").starts_with("msg_01") && s(&v, "/id").len() == 28);
    assert_eq!(s(&v, "/content/0/text"), reply_text("Hello there"));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 13);

    let events = ant(&m, json!({"stream": true})).await.events("\n\n");
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    let tail = ["content_block_stop", "message_delta", "message_stop"];
    assert_eq!(names[names.len() - 3..], tail);
    let text: String = events.iter().map(|e| s(&e.1, "/delta/text")).collect();
    assert_eq!(s(&v, "/content/0/text"), text);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], v["usage"]["output_tokens"]);
}

#[tokio::test]
async fn anthropic_tool_use_and_stream() {
    let m = mock().await;
    let schema = json!({"type": "object", "properties": {"q": {"type": "string"}}});
    let tools = json!([{"name": "lookup", "input_schema": schema}]);
    let v = ant(&m, json!({"tools": tools})).await.json();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][1]["input"], json!({"q": "q-2"}));
    assert!(s(&v, "/content/0/id").starts_with("toolu_01"));
    let choice = json!({"type": "auto", "disable_parallel_tool_use": true});
    let extra = json!({"tools": tools, "tool_choice": choice, "stream": true});
    let events = ant(&m, extra).await.events("\n\n");
    let starts = events.iter().filter(|e| e.0 == "content_block_start");
    assert_eq!(starts.count(), 1);
    let partial = events
        .iter()
        .filter_map(|e| at(&e.1, "/delta/partial_json").as_str());
    let partial: Vec<&str> = partial.collect();
    assert_eq!(partial[0], "");
    assert_eq!(partial.concat(), r#"{"q":"q-1"}"#);
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_reason"],
        "tool_use"
    );
}

#[tokio::test]
async fn anthropic_validation_errors() {
    let m = mock().await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let body = json!({"model": "c", "max_tokens": 5, "messages": messages});
    let r = send(&m, "POST", "/v1/messages", &ANT[..1], &body)
        .await
        .json();
    assert_eq!(
        r["error"]["message"],
        "anthropic-version: header is required"
    );
    let r = send(&m, "POST", "/v1/messages", &ANT[1..], &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let no_max = json!({"model": "c", "messages": messages});
    let r = send(&m, "POST", "/v1/messages", ANT, &no_max).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "max_tokens: Field required");
    let system = json!([{"role": "system", "content": "x"}, messages[0]]);
    let v = ant(&m, json!({"messages": system})).await.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn anthropic_cache_control_write_then_read() {
    let m = mock().await;
    let cc = json!({"type": "ephemeral"});
    let system = json!([{"type": "text", "text": "y".repeat(6000), "cache_control": cc}]);
    // Breakpoint prefix = 6000 / 4 + 4 = 1504 tokens; the whole prompt is 1511.
    let u1 = ant(&m, json!({"system": system})).await.json()["usage"].clone();
    assert_eq!(u1["cache_creation_input_tokens"], 1504);
    assert_eq!(u1["cache_creation"]["ephemeral_5m_input_tokens"], 1504);
    assert_eq!(u1["cache_read_input_tokens"], 0);
    assert_eq!(u1["input_tokens"], 7);
    let u2 = ant(&m, json!({"system": system})).await.json()["usage"].clone();
    assert_eq!(u2["cache_creation_input_tokens"], 0);
    assert_eq!(u2["cache_read_input_tokens"], 1504);
    assert_eq!(u2["input_tokens"], 7);
}

#[tokio::test]
async fn gemini_text_and_stream() {
    let m = mock().await;
    let r = gem(&m, FLASH, GEM, json!({})).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    let v = r.json();
    assert_eq!(
        s(&v, "/candidates/0/content/parts/0/text"),
        reply_text(QUESTION)
    );
    assert_eq!(s(&v, "/candidates/0/finishReason"), "STOP");
    assert_eq!(v["modelVersion"], "gemini-2.5-flash");

    let r = gem(&m, FLASH_SSE, GEM, json!({})).await;
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r.text().ends_with("}\r\n\r\n") && !r.text().contains("[DONE]"));
    let chunks: Vec<Value> = r.events("\r\n\r\n").into_iter().map(|e| e.1).collect();
    assert!(chunks.len() > 2);
    assert!(chunks
        .iter()
        .all(|c| c["usageMetadata"]["promptTokenCount"].is_u64()));
    let text: String = chunks
        .iter()
        .map(|c| s(c, "/candidates/0/content/parts/0/text"))
        .collect();
    assert_eq!(s(&v, "/candidates/0/content/parts/0/text"), text);
    assert!(at(&chunks[0], "/candidates/0/finishReason").is_null());
    assert_eq!(
        s(&chunks[chunks.len() - 1], "/candidates/0/finishReason"),
        "STOP"
    );
}

#[tokio::test]
async fn gemini_function_calls_stream_whole() {
    let m = mock().await;
    let params = json!({"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}});
    let decl = json!({"name": "f", "parameters": params});
    let tools = json!({"tools": [{"functionDeclarations": [decl]}]});
    let target = format!("{FLASH_SSE}&key=k");
    let chunks = gem(&m, &target, &[], tools.clone())
        .await
        .events("\r\n\r\n");
    assert_eq!(chunks.len(), 2, "one whole functionCall per chunk");
    let call = at(&chunks[1].1, "/candidates/0/content/parts/0/functionCall");
    assert_eq!(call, &json!({"name": "f", "args": {"n": 2}}));
    let v = gem(&m, FLASH, GEM, tools).await.json();
    let args = at(&v, "/candidates/0/content/parts/0/functionCall/args");
    assert_eq!(args, &json!({"n": 1}));
}

#[tokio::test]
async fn gemini_key_required() {
    let m = mock().await;
    let r = gem(&m, FLASH, &[], json!({})).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["status"], "PERMISSION_DENIED");
    let r = gem(&m, &format!("{FLASH}?key="), &[], json!({})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["details"][0]["reason"], "API_KEY_INVALID");
}

#[tokio::test]
async fn openai_error_directives() {
    let m = mock().await;
    let r = oai(&m, "gpt-4o-mini@status=429,retry_after=20", json!({})).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("20")));
    assert!(r.header("x-ratelimit-remaining-requests").is_some());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let cases = [
        (500, "server_error"),
        (503, "server_error"),
        (418, "invalid_request_error"),
    ];
    for (status, ty) in cases {
        let r = oai(&m, &format!("m@status={status}"), json!({})).await;
        assert_eq!(r.status, status);
        assert_eq!(r.json()["error"]["type"], ty);
    }
}

#[tokio::test]
async fn anthropic_error_directives() {
    let m = mock().await;
    let cases = [
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ];
    for (status, ty) in cases.into_iter().chain([(599, "api_error")]) {
        let model = format!("c@status={status},retry_after=3");
        let r = ant(&m, json!({ "model": model })).await;
        assert_eq!((r.status, r.header("retry-after")), (status, Some("3")));
        let v = r.json();
        assert_eq!((s(&v, "/type"), s(&v, "/error/type")), ("error", ty));
        assert!(s(&v, "/request_id").starts_with("req_"));
    }
}

#[tokio::test]
async fn gemini_error_directives() {
    let m = mock().await;
    let target = "gemini-2.5-flash%40status=429,retry_after=7:generateContent";
    let r = gem(&m, target, GEM, json!({})).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    let v = r.json();
    let details = v["error"]["details"].as_array().into_iter().flatten();
    let mut retry = details.filter(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo");
    assert_eq!(retry.next().map(|d| &d["retryDelay"]), Some(&json!("7s")));
    for (status, name) in [(500, "INTERNAL"), (503, "UNAVAILABLE")] {
        let r = gem(
            &m,
            &format!("g@status={status}:generateContent"),
            GEM,
            json!({}),
        )
        .await;
        assert_eq!(r.status, status);
        assert_eq!(r.json()["error"]["status"], name);
    }
}

#[tokio::test]
async fn fail_rate_one_always_fails() {
    let m = start(MockOptions {
        fail_rate: 1.0,
        ..MockOptions::default()
    })
    .await;
    for _ in 0..6 {
        let status = oai(&m, "gpt-4o", json!({})).await.status;
        assert!([429, 500, 503].contains(&status), "{status}");
    }
}

#[tokio::test]
async fn fail_status_garbage_and_probe_directives() {
    let opts = MockOptions {
        fail_rate: 1.0,
        fail_status: Some(503),
        ..MockOptions::default()
    };
    let m = start(opts).await;
    assert_eq!(oai(&m, "gpt-4o", json!({})).await.status, 503);
    let m = mock().await;
    let r = oai(&m, "gpt-4o@garbage", json!({})).await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("text/html"))
    );
    assert!(r.json().is_null(), "not JSON");
    assert_eq!(
        get(&m, "/v1/models/gpt-4o@status=503", OAI).await.status,
        503
    );
}

#[tokio::test]
async fn drop_directive() {
    let m = mock().await;
    let r = oai(&m, "gpt-4o@drop", json!({"stream": true})).await;
    assert_eq!((r.status, r.complete, r.chunks.len()), (200, false, 1));
    let r = oai(&m, "gpt-4o@drop", json!({})).await;
    assert_eq!(r.status, 0, "closed without an answer");
}

#[tokio::test]
async fn hang_directive() {
    let m = mock().await;
    let mut c = Client::connect(m.addr).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let body = json!({"model": "gpt-4o@hang", "messages": messages}).to_string();
    let answer = c.request("POST", CHAT, OAI, body.as_bytes());
    let waited = timeout(Duration::from_millis(200), answer).await;
    assert!(waited.is_err(), "never answers");
}

#[tokio::test]
async fn stall_latency_and_chunk_delay() {
    let opts = MockOptions {
        latency_ms: 30,
        chunk_delay_ms: 1,
        ..MockOptions::default()
    };
    let m = start(opts).await;
    let t0 = Instant::now();
    get(&m, "/v1/models", OAI).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(30),
        "server-wide latency"
    );
    let t0 = Instant::now();
    let r = oai(&m, "gpt-4o@stall=150,latency=50", json!({"stream": true})).await;
    let min = Duration::from_millis(200 + r.chunks.len() as u64 - 1);
    assert!(r.complete && t0.elapsed() >= min);
}

#[tokio::test]
async fn keep_alive_two_requests_one_connection() {
    let m = mock().await;
    let mut c = Client::connect(m.addr).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let body = json!({"model": "gpt-4o", "messages": messages}).to_string();
    for _ in 0..2 {
        let r = c.request("POST", CHAT, OAI, body.as_bytes()).await;
        assert_eq!(
            (r.status, r.header("connection")),
            (200, Some("keep-alive"))
        );
    }
}

#[tokio::test]
async fn chunked_request_body() {
    let m = mock().await;
    let text = "é".repeat(5000);
    let messages = json!([{"role": "user", "content": text}]);
    let body = json!({"model": "gpt-4o", "messages": messages}).to_string();
    let (a, b) = body.as_bytes().split_at(body.len() / 3);
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nauthorization: Bearer k\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x};ext=1\r\n",
        a.len()
    );
    let middle = format!("\r\n{:X}\r\n", b.len());
    let raw = [head.as_bytes(), a, middle.as_bytes(), b, b"\r\n0\r\n\r\n"].concat();
    let v = Client::raw(m.addr, &raw).await.json();
    let suffix = format!("[len=5000 fnv={:016x}]", fnv1a(text.as_bytes()));
    assert!(s(&v, "/choices/0/message/content").ends_with(&suffix));
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let m = mock().await;
    let head = b"POST /v1/messages HTTP/1.1\r\ncontent-length: 67108865\r\n\r\n";
    let r = Client::raw(m.addr, head).await;
    assert_eq!((r.status, r.header("connection")), (413, Some("close")));
    let message = "Request exceeds the maximum allowed number of bytes.";
    assert_eq!(r.json()["error"]["message"], message);
}

#[tokio::test]
async fn garbage_gets_400_and_server_survives() {
    let m = mock().await;
    let garbage: [&[u8]; 4] = [
        b"\x00\x01GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ];
    for bytes in garbage {
        assert_eq!(Client::raw(m.addr, bytes).await.status, 400);
    }
    let r = send(&m, "POST", CHAT, OAI, &json!("not an object")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(get(&m, "/v1/models", OAI).await.json()["object"], "list");
}

#[tokio::test]
async fn introspection_redacts_and_resets() {
    let m = mock().await;
    oai(&m, "gpt-4o@latency=1", json!({"stream": true})).await;
    get(&m, "/v1beta/models?key=secret", &[]).await;
    ant(&m, json!({})).await;
    let log = get(&m, "/_mock/requests", &[]).await.json();
    let reqs = log["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        (s(&reqs[0], "/model"), &reqs[0]["stream"]),
        ("gpt-4o@latency=1", &json!(true))
    );
    assert_eq!(reqs[0]["headers"]["authorization"], "present");
    assert!(reqs[0]["body_bytes"].as_u64().is_some_and(|n| n > 50));
    assert_eq!(reqs[1]["path"], "/v1beta/models?key=present");
    assert_eq!(reqs[2]["headers"]["x-api-key"], "present");
    assert_eq!(reqs[2]["headers"]["anthropic-version"], "2023-06-01");
    assert!(!log.to_string().contains("sk-") && !log.to_string().contains("secret"));
    send(&m, "POST", "/_mock/reset", &[], &Value::Null).await;
    let log = get(&m, "/_mock/requests", &[]).await.json();
    assert_eq!(log["requests"], json!([]));
}

#[tokio::test]
async fn models_auth_and_not_found() {
    let m = mock().await;
    assert_eq!(get(&m, "/v1/models", ANT).await.json()["has_more"], false);
    assert_eq!(
        get(&m, "/v1/models/gpt-4o", OAI).await.json()["id"],
        "gpt-4o"
    );
    assert!(get(&m, "/v1beta/models", GEM).await.json()["models"].is_array());
    let r = send(&m, "POST", CHAT, &[], &json!({})).await;
    assert_eq!(
        (r.status, s(&r.json(), "/error/code")),
        (401, "invalid_api_key")
    );
    let r = send(&m, "POST", "/v1/nope", OAI, &Value::Null).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["message"], "Invalid URL (POST /v1/nope)");
    let r = get(&m, "/v1beta/nope", &[]).await;
    assert_eq!(r.json()["error"]["status"], "NOT_FOUND");
    let anthropic_only = MockOptions {
        flavor: Flavor::Anthropic,
        ..MockOptions::default()
    };
    let r = oai(&start(anthropic_only).await, "gpt-4o", json!({})).await;
    assert_eq!(
        (r.status, s(&r.json(), "/error/type")),
        (404, "not_found_error")
    );
    assert_eq!("Gemini".parse::<Flavor>(), Ok(Flavor::Gemini));
    assert!("bogus".parse::<Flavor>().is_err());
}

#[test]
fn directives_parse() {
    let raw = "gpt-4o@status=429,retry_after=20,latency=5,chunk_delay=6,stall=7,hang,drop,x";
    let (model, d) = split_model(raw);
    assert_eq!(model, "gpt-4o");
    assert_eq!((d.status, d.retry_after), (Some(429), Some(20)));
    assert_eq!(
        (d.latency_ms, d.chunk_delay_ms, d.stall_ms),
        (Some(5), Some(6), Some(7))
    );
    assert!(d.hang && d.drop);
    assert_eq!(split_model("m@status=200").1.status, None);
}

#[test]
fn schema_generator_fnv_and_pieces() {
    let props = json!({"u": {"$ref": "#/$defs/U"}, "o": {"properties": {"x": {"type": "number"}}},
        "l": {"type": "array", "items": {}}, "b": {"anyOf": [{"type": "null"}, {"type": "boolean"}]}});
    let defs = json!({"U": {"type": "string", "enum": ["a", "b"]}});
    let schema = json!({"$defs": defs, "type": "object", "properties": props});
    let expected = json!({"u": "b", "o": {"x": 2.5}, "l": [], "b": true});
    assert_eq!(generate(&schema, &schema, "value", 1, 0), expected);
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(
        pieces("héllo wörld, ça va?", 4, 8).concat(),
        "héllo wörld, ça va?"
    );
    let sizes: Vec<usize> = pieces(&"z".repeat(40), 4, 8)
        .iter()
        .map(|p| p.len())
        .collect();
    assert_eq!(sizes, [4, 5, 6, 7, 8, 4, 5, 1]);
}

#[test]
fn chunked_decoder_is_incremental() {
    let mut dec = Chunked::default();
    let mut buf = b"3\r\nabc\r\n0\r\n".to_vec();
    assert_eq!(dec.feed(&mut buf), Ok(false));
    buf.extend_from_slice(b"\r\nNEXT");
    assert_eq!(dec.feed(&mut buf), Ok(true));
    assert_eq!(
        (dec.body.as_slice(), buf.as_slice()),
        (&b"abc"[..], &b"NEXT"[..])
    );
    assert!(Chunked::default().feed(&mut b"zz\r\n".to_vec()).is_err());
}

mod bedrock;
mod dialects;

#[tokio::test]
async fn otlp_exports_are_accepted_counted_and_reset() {
    let m = mock().await;
    let mut c = Client::connect(m.addr).await;
    let proto: Headers = &[("content-type", "application/x-protobuf")];
    let spans = vec![0x0a_u8; 300_000];
    let r = c.request("POST", "/v1/traces", proto, &spans).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert!(r.body.is_empty(), "an empty ExportTraceServiceResponse");
    // The same connection carries the next export (a collector keeps it alive).
    let json_type: Headers = &[("content-type", "application/json; charset=utf-8")];
    let r = c.request("POST", "/v1/metrics", json_type, b"{}").await;
    assert_eq!((r.status, r.json()), (200, json!({})));
    let text: Headers = &[("content-type", "text/plain")];
    let r = c.request("POST", "/v1/traces", text, b"spans").await;
    assert_eq!(r.status, 415, "{}", r.text());

    let counts = get(&m, "/_mock/otlp", &[]).await.json();
    let expected = json!({
        "traces": {"posts": 1, "bytes": 300_000},
        "metrics": {"posts": 1, "bytes": 2},
    });
    assert_eq!(counts, expected);
    let log = get(&m, "/_mock/requests", &[]).await.json();
    assert_eq!(log["requests"], json!([]), "exports are not chat requests");

    send(&m, "POST", "/_mock/reset", &[], &Value::Null).await;
    let counts = get(&m, "/_mock/otlp", &[]).await.json();
    assert_eq!(counts["traces"], json!({"posts": 0, "bytes": 0}));
}

#[tokio::test]
async fn paced_events_are_never_early() {
    // Each event is due `chunk_delay` after the one before, counted from the first event, so
    // the n-th arrives no earlier than (n-1) delays after the first: never sooner, whatever a
    // timer's resolution.
    let m = start(MockOptions {
        chunk_delay_ms: 3,
        ..MockOptions::default()
    })
    .await;
    let mut c = Client::connect(m.addr).await;
    let messages = json!([{"role": "user", "content": "pace me please"}]);
    let body = json!({"model": "gpt-4o", "messages": messages, "stream": true}).to_string();
    let t0 = Instant::now();
    let r = c.request("POST", CHAT, OAI, body.as_bytes()).await;
    assert!(
        r.complete && r.chunks.len() > 3,
        "{} chunks",
        r.chunks.len()
    );
    let events = r.chunks.len() as u64;
    assert!(t0.elapsed() >= Duration::from_millis(3 * (events - 1)));
}
