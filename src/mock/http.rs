//! A small HTTP/1.1 server loop on tokio + httparse: keep-alive, Content-Length and chunked
//! request bodies (64 MiB cap), `Expect: 100-continue`, JSON and chunked SSE responses.

use super::pacing::Pacer;
use super::{guess_flavor, handle, http_error, State};
use serde_json::Value;
use std::io::{ErrorKind, Result as IoResult};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest accepted request body; bigger ones get 413 and the connection is closed.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// An HTTP-level rejection: status and message; the connection is closed after it.
type Reject = (u16, &'static str);
const TOO_LARGE: Reject = (413, "Request exceeds the maximum allowed number of bytes.");
const BAD_CHUNKS: Reject = (400, "Malformed chunked request body.");

/// A fully read request. Header names are lower-cased.
pub(crate) struct Request {
    pub(crate) method: String,
    /// The raw request-target (path and query).
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Which client connection carried it (numbered from 1 in accept order), so tests can
    /// tell which requests shared a pooled connection.
    pub(crate) connection: u64,
    keep_alive: bool,
}

impl Request {
    /// The target without its query string.
    pub(crate) fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(p, _)| p)
    }

    /// The first header with this (lower-case) name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether any `name` header contains `token` (case-insensitive).
    fn has_token(&self, name: &str, token: &str) -> bool {
        let matches =
            |(k, v): &(String, String)| k == name && v.to_ascii_lowercase().contains(token);
        self.headers.iter().any(matches)
    }

    /// A query parameter's raw value (`Some("")` for `?key=` or `?key`).
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        let param = query
            .split('&')
            .find(|kv| kv.split('=').next() == Some(key))?;
        Some(param.split_once('=').map_or("", |(_, v)| v))
    }
}

/// What to send back, plus the pacing the directives asked for.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Body,
    /// Delay before the header; `None` means "the server-wide `latency_ms`".
    pub(crate) latency_ms: Option<u64>,
    pub(crate) chunk_delay_ms: u64,
    pub(crate) stall_ms: u64,
}

pub(crate) enum Body {
    /// Sent with Content-Length.
    Full(Vec<u8>),
    /// Each event is one chunk of a chunked body; `drop` closes after the first one.
    Sse { events: Vec<Vec<u8>>, drop: bool },
    /// Never answer; hold the connection until the client closes it.
    Hang,
    /// Close the connection without answering.
    Close,
}

impl Response {
    pub(crate) fn new(status: u16, body: Body) -> Self {
        let (latency_ms, chunk_delay_ms, stall_ms) = (None, 0, 0);
        Response {
            status,
            headers: Vec::new(),
            body,
            latency_ms,
            chunk_delay_ms,
            stall_ms,
        }
    }

    /// A compact JSON body with `content-type: application/json`.
    pub(crate) fn json(status: u16, value: &Value) -> Self {
        let body = Body::Full(serde_json::to_vec(value).unwrap_or_default());
        Response::new(status, body).header("content-type", "application/json")
    }

    /// A 200 event stream; each element of `events` is one complete SSE event.
    pub(crate) fn sse(events: Vec<Vec<u8>>, content_type: &str) -> Self {
        let resp = Response::new(
            200,
            Body::Sse {
                events,
                drop: false,
            },
        );
        resp.header("content-type", content_type)
            .header("cache-control", "no-cache")
    }

    /// Sets (replaces) a response header.
    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.retain(|(k, _)| *k != name);
        self.headers.push((name, value.into()));
        self
    }
}

/// Runs one client connection until it closes, errs, or a response ends it.
pub(crate) async fn serve_conn(mut stream: TcpStream, state: Arc<State>, connection: u64) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let mut req = match read_head(&mut stream, &mut buf).await {
            Ok(Ok(Some(mut req))) => {
                req.connection = connection;
                req
            }
            Ok(Err((status, msg))) => {
                let resp = http_error(guess_flavor(state.opts.flavor, "", false), status, msg);
                let _ = write_response(&mut stream, resp, false).await;
                return;
            }
            Ok(Ok(None)) | Err(_) => return,
        };
        match read_body(&mut stream, &mut buf, &req).await {
            Ok(Ok(body)) => req.body = body,
            Ok(Err((status, msg))) => {
                let anthropic = req.header("x-api-key").is_some();
                let flavor = guess_flavor(state.opts.flavor, req.path(), anthropic);
                let _ = write_response(&mut stream, http_error(flavor, status, msg), false).await;
                return;
            }
            Err(_) => return,
        }
        let keep_alive = req.keep_alive;
        let resp = handle(&state, &req);
        drop(req);
        if !matches!(
            write_response(&mut stream, resp, keep_alive).await,
            Ok(true)
        ) {
            return;
        }
    }
}

/// Reads and parses a request head; `Ok(Ok(None))` on a clean EOF between requests.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> IoResult<Result<Option<Request>, Reject>> {
    loop {
        if !buf.is_empty() {
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut hs);
            match parsed.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let header = |h: &httparse::Header| {
                        let value = String::from_utf8_lossy(h.value).trim().to_string();
                        (h.name.to_ascii_lowercase(), value)
                    };
                    let mut req = Request {
                        method: parsed.method.unwrap_or("").to_string(),
                        target: parsed.path.unwrap_or("/").to_string(),
                        headers: parsed.headers.iter().map(header).collect(),
                        body: Vec::new(),
                        connection: 0,
                        keep_alive: false,
                    };
                    req.keep_alive = match parsed.version {
                        Some(1) => !req.has_token("connection", "close"),
                        _ => req.has_token("connection", "keep-alive"),
                    };
                    buf.drain(..n);
                    return Ok(Ok(Some(req)));
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
                Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                    return Ok(Err((431, "Request header fields too large.")))
                }
                Err(_) => return Ok(Err((400, "Malformed HTTP request."))),
            }
        }
        buf.reserve(8192);
        if stream.read_buf(buf).await? == 0 {
            return Ok(if buf.is_empty() {
                Ok(None)
            } else {
                Err((400, "Truncated request."))
            });
        }
    }
}

/// Reads the body announced by `req` (Content-Length or chunked) from `buf` + `stream`.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &Request,
) -> IoResult<Result<Vec<u8>, Reject>> {
    let length = match req.header("content-length") {
        _ if req.has_token("transfer-encoding", "chunked") => None,
        None => Some(0),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > MAX_BODY as u64 => return Ok(Err(TOO_LARGE)),
            Ok(n) => Some(n as usize),
            Err(_) => return Ok(Err((400, "Invalid Content-Length header."))),
        },
    };
    if req.has_token("expect", "100-continue") && length != Some(0) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    if let Some(len) = length {
        buf.reserve(len.saturating_sub(buf.len()));
        while buf.len() < len {
            if stream.read_buf(buf).await? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        }
        let rest = buf.split_off(len);
        return Ok(Ok(std::mem::replace(buf, rest)));
    }
    let mut decoder = Chunked::default();
    loop {
        match decoder.feed(buf) {
            Ok(true) => return Ok(Ok(decoder.body)),
            Ok(false) => {}
            Err(e) => return Ok(Err(e)),
        }
        buf.reserve(8192);
        if stream.read_buf(buf).await? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Incremental decoder for a chunked request body; linear in the body size.
#[derive(Default)]
pub(crate) struct Chunked {
    pub(crate) body: Vec<u8>,
    state: ChunkState,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
}

impl Chunked {
    /// Consumes what it can from the front of `buf`; `Ok(true)` once the body is complete.
    pub(crate) fn feed(&mut self, buf: &mut Vec<u8>) -> Result<bool, Reject> {
        let mut pos = 0;
        let result = loop {
            let avail = &buf[pos..];
            let line_end = || avail.windows(2).position(|w| w == b"\r\n");
            match self.state {
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(end) = line_end() else {
                        break if avail.len() > 4096 {
                            Err(BAD_CHUNKS)
                        } else {
                            Ok(false)
                        };
                    };
                    pos += end + 2;
                    if let ChunkState::Trailer = self.state {
                        match end {
                            0 => break Ok(true),
                            _ => continue,
                        }
                    }
                    let hex = avail[..end]
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default();
                    let hex = std::str::from_utf8(hex).unwrap_or("").trim();
                    let valid = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
                    self.state = match usize::from_str_radix(hex, 16).ok().filter(|_| valid) {
                        None => break Err(BAD_CHUNKS),
                        Some(0) => ChunkState::Trailer,
                        Some(n) if n > MAX_BODY.saturating_sub(self.body.len()) => {
                            break Err(TOO_LARGE)
                        }
                        Some(n) => ChunkState::Data(n),
                    };
                }
                ChunkState::Data(remaining) => {
                    let take = remaining.min(avail.len());
                    if take == 0 {
                        break Ok(false);
                    }
                    self.body.extend_from_slice(&avail[..take]);
                    pos += take;
                    self.state = match remaining - take {
                        0 => ChunkState::DataEnd,
                        n => ChunkState::Data(n),
                    };
                }
                ChunkState::DataEnd => match avail.get(..2) {
                    None => break Ok(false),
                    Some(b"\r\n") => {
                        pos += 2;
                        self.state = ChunkState::Size;
                    }
                    Some(_) => break Err(BAD_CHUNKS),
                },
            }
        };
        buf.drain(..pos);
        result
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Unknown",
    }
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Writes `resp`; `Ok(true)` when the connection may serve another request.
async fn write_response(
    stream: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
) -> IoResult<bool> {
    sleep_ms(resp.latency_ms.unwrap_or(0)).await;
    let framing = match &resp.body {
        Body::Hang => {
            let mut scratch = [0u8; 1024];
            while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
            return Ok(false);
        }
        Body::Close => return Ok(false),
        Body::Full(b) => format!("content-length: {}\r\n", b.len()),
        Body::Sse { .. } => "transfer-encoding: chunked\r\n".to_string(),
    };
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&framing);
    out.push_str(if keep_alive {
        "connection: keep-alive\r\n\r\n"
    } else {
        "connection: close\r\n\r\n"
    });
    let mut out = out.into_bytes();
    let (events, drop) = match resp.body {
        Body::Sse { events, drop } => (events, drop),
        Body::Full(body) => {
            out.extend_from_slice(&body);
            stream.write_all(&out).await?;
            return Ok(keep_alive);
        }
        Body::Hang | Body::Close => return Ok(false),
    };
    // Unpaced streams go out in one write; paced ones flush each event as its own chunk, on a
    // schedule counted from the first event (not from whenever the previous write ended).
    let paced = drop || resp.chunk_delay_ms > 0 || resp.stall_ms > 0;
    let pacer = paced.then(Pacer::new);
    let mut due = Instant::now();
    for (i, event) in events.iter().enumerate() {
        if let Some(pacer) = pacer.as_ref().filter(|_| i > 0) {
            let stall = if i == 1 { resp.stall_ms } else { 0 };
            due += Duration::from_millis(stall + resp.chunk_delay_ms);
            pacer.sleep_until(due).await;
        }
        out.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
        out.extend_from_slice(event);
        out.extend_from_slice(b"\r\n");
        if paced {
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
            if drop {
                return Ok(false);
            }
        }
    }
    out.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&out).await?;
    Ok(keep_alive)
}
