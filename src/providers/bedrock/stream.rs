//! `converse-stream` (binary event-stream frames) -> OpenAI chunks (providers.md §8.4).
//!
//! Text blocks have no start event, so a block index without one is text; a `toolUse` start
//! opens an OpenAI tool call with its own running index. `metadata` (usage) arrives after
//! `messageStop`, so the finish chunk, the usage chunk and `[DONE]` are written once both
//! are in (or at the end of the body). Exception frames before any output fail the attempt
//! (the proxy may fail over); after output they become an OpenAI error event and `[DONE]`.

use super::auth::Auth;
use super::eventstream::{Decoder, Frame};
use super::map_failure;
use super::request::{call_kind, CallKind};
use super::response::{finish_reason, WireUsage};
use crate::providers::openai_out::ChunkWriter;
use crate::providers::{sse, StreamTranslator};
use crate::types::{FailureKind, UpstreamFailure, Usage};
use bytes::BytesMut;
use serde_json::{json, Value};
use std::collections::HashMap;

/// What an open content block turns into.
enum BlockState {
    /// A client tool call with its OpenAI index; `streamed` once an argument fragment came.
    Tool { index: usize, streamed: bool },
    /// The `response_format` tool: its input is the answer, streamed as content.
    JsonAnswer { streamed: bool },
    /// Server-tool calls and results, the never-called history tool.
    Ignored,
}

/// Translates one Converse stream.
pub struct BedrockStream {
    provider: String,
    auth: Auth,
    decoder: Decoder,
    writer: ChunkWriter,
    json_mode: bool,
    blocks: HashMap<u64, BlockState>,
    /// Client tool calls started so far (the next OpenAI tool index).
    tool_calls: usize,
    stop_reason: Option<String>,
    /// `messageStop` came.
    stopped: bool,
    usage: Option<WireUsage>,
    /// Whether any byte went to the client: after that an error is an event, not a failover.
    emitted: bool,
    /// `[DONE]` (or an error event) was written; everything after is ignored.
    done: bool,
}

impl BedrockStream {
    pub(super) fn new(provider: &str, auth: Auth, writer: ChunkWriter, json_mode: bool) -> Self {
        BedrockStream {
            provider: provider.to_owned(),
            auth,
            decoder: Decoder::default(),
            writer,
            json_mode,
            blocks: HashMap::new(),
            tool_calls: 0,
            stop_reason: None,
            stopped: false,
            usage: None,
            emitted: false,
            done: false,
        }
    }

    fn protocol(&self, message: String) -> UpstreamFailure {
        UpstreamFailure::new(&self.provider, FailureKind::Protocol, message)
    }

    /// Finish chunk, usage chunk (when asked), `[DONE]`.
    fn complete(&mut self, out: &mut BytesMut) {
        let reason = finish_reason(self.stop_reason.as_deref(), self.tool_calls > 0);
        self.writer.finish(out, reason);
        let usage = self.usage.map(WireUsage::to_openai);
        self.writer.end(out, usage.as_ref());
        self.done = true;
    }

    fn handle(&mut self, frame: Frame, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if self.done {
            return Ok(());
        }
        match frame.header_str(":message-type") {
            Some("exception") => {
                let kind = frame.header_str(":exception-type").unwrap_or("exception");
                let message = serde_json::from_slice::<Value>(&frame.payload)
                    .ok()
                    .and_then(|v| {
                        v.get("message")
                            .or_else(|| v.get("Message"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&frame.payload).into_owned());
                let f = map_failure(&self.provider, &self.auth, None, Some(kind), &message);
                return self.fail(f, out);
            }
            Some("error") => {
                let code = frame.header_str(":error-code").unwrap_or("error");
                let message = frame.header_str(":error-message").unwrap_or("");
                let f = map_failure(&self.provider, &self.auth, None, Some(code), message);
                return self.fail(f, out);
            }
            _ => {}
        }
        let before = out.len();
        let event = frame
            .header_str(":event-type")
            .unwrap_or_default()
            .to_owned();
        let payload: Value = match serde_json::from_slice(&frame.payload) {
            Ok(v) => v,
            Err(e) => {
                let f = self.protocol(format!(
                    "the provider sent a `{event}` event whose payload is not JSON: {e}"
                ));
                return self.fail(f, out);
            }
        };
        let index = payload
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match event.as_str() {
            // The role chunk waits for the first output, so an exception right after
            // messageStart can still fail over.
            "messageStart" => {}
            "contentBlockStart" => {
                let state = match payload.pointer("/start/toolUse") {
                    Some(u) => {
                        let name = u.get("name").and_then(Value::as_str).unwrap_or_default();
                        let kind = u.get("type").and_then(Value::as_str);
                        match call_kind(name, kind, self.json_mode) {
                            CallKind::Hidden => BlockState::Ignored,
                            CallKind::JsonAnswer => BlockState::JsonAnswer { streamed: false },
                            CallKind::Client => {
                                let id = u
                                    .get("toolUseId")
                                    .and_then(Value::as_str)
                                    .unwrap_or_default();
                                let tool_index = self.tool_calls;
                                self.tool_calls += 1;
                                self.writer.tool_call_start(out, tool_index, id, name, "");
                                BlockState::Tool {
                                    index: tool_index,
                                    streamed: false,
                                }
                            }
                        }
                    }
                    // toolResult (server tools) and anything newer.
                    None => BlockState::Ignored,
                };
                self.blocks.insert(index, state);
            }
            "contentBlockDelta" => {
                let Some(delta) = payload.get("delta") else {
                    return Ok(());
                };
                let state = self.blocks.get_mut(&index);
                if matches!(state, Some(BlockState::Ignored)) {
                    return Ok(());
                }
                if let Some(t) = delta.get("text").and_then(Value::as_str) {
                    self.writer.content(out, t);
                } else if let Some(r) = delta.get("reasoningContent") {
                    // `signature` and `redactedContent` deltas have no OpenAI shape.
                    if let Some(t) = r.get("text").and_then(Value::as_str) {
                        self.writer.reasoning(out, t);
                    }
                } else if let Some(frag) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                    match state {
                        Some(BlockState::Tool { index, streamed }) => {
                            *streamed |= !frag.is_empty();
                            self.writer.tool_call_args(out, *index, frag);
                        }
                        Some(BlockState::JsonAnswer { streamed }) => {
                            *streamed |= !frag.is_empty();
                            self.writer.content(out, frag);
                        }
                        _ => {}
                    }
                }
            }
            "contentBlockStop" => match self.blocks.get(&index) {
                // A call without argument fragments has no arguments: `{}`, never empty text.
                Some(BlockState::Tool {
                    index,
                    streamed: false,
                }) => {
                    let index = *index;
                    self.writer.tool_call_args(out, index, "{}");
                }
                Some(BlockState::JsonAnswer { streamed: false }) => self.writer.content(out, "{}"),
                _ => {}
            },
            "messageStop" => {
                self.stop_reason = payload
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.stopped = true;
                if self.usage.is_some() {
                    self.complete(out);
                }
            }
            "metadata" => {
                let usage = payload
                    .get("usage")
                    .and_then(|u| serde_json::from_value::<WireUsage>(u.clone()).ok())
                    .unwrap_or_default();
                self.usage = Some(usage);
                if self.stopped {
                    self.complete(out);
                }
            }
            _ => {}
        }
        self.emitted |= out.len() > before;
        Ok(())
    }

    /// Before any output the failure goes back to the proxy (which may fail over); after
    /// it, the client gets an OpenAI error event and `[DONE]`.
    fn fail(&mut self, f: UpstreamFailure, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if !self.emitted {
            self.done = true;
            return Err(f);
        }
        let error = json!({"error": {
            "message": f.message,
            "type": f.error_type().unwrap_or("server_error"),
            "param": null,
            "code": f.code(),
        }});
        sse::data_event(out, error.to_string().as_bytes());
        out.extend_from_slice(sse::DONE);
        self.done = true;
        Ok(())
    }
}

impl StreamTranslator for BedrockStream {
    fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if self.done {
            return Ok(());
        }
        self.decoder.push(chunk);
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.handle(frame, out)?;
                    if self.done {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let f = self.protocol(format!(
                        "the provider's stream is not a valid event stream: {e}"
                    ));
                    return self.fail(f, out);
                }
            }
        }
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), UpstreamFailure> {
        if self.done {
            return Ok(());
        }
        if self.stopped {
            // No `metadata` (or a cut one after messageStop): the answer is whole, usage unknown.
            self.complete(out);
            return Ok(());
        }
        self.done = true;
        Err(self.protocol(if self.decoder.buffered() > 0 {
            "the provider's stream ended inside an event-stream frame".into()
        } else {
            "the provider ended the stream before `messageStop`".into()
        }))
    }

    fn usage(&self) -> Option<Usage> {
        self.usage.map(WireUsage::to_openai)
    }
}
