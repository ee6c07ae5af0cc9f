//! Server-sent events framing shared by every streaming adapter.
//!
//! Upstream chunks split events anywhere (inside a line, inside `\r\n`); [`SseFramer`]
//! buffers bytes and hands out whole events, byte-exact, so a pass-through adapter can
//! forward them untouched and a translating adapter can read their `data:` payload.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into complete SSE events.
#[derive(Debug, Default)]
pub struct SseFramer {
    buf: BytesMut,
    /// Bytes already scanned without finding a separator (so rescans start late).
    scanned: usize,
}

impl SseFramer {
    /// Appends upstream bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, separator included, if one is buffered.
    pub fn next_event(&mut self) -> Option<Bytes> {
        let start = self.scanned.saturating_sub(3);
        let hay = &self.buf[start..];
        let mut i = 0;
        while i < hay.len() {
            let end = match hay[i] {
                b'\n' if hay.get(i + 1) == Some(&b'\n') => Some(i + 2),
                b'\n' if hay.get(i + 1) == Some(&b'\r') && hay.get(i + 2) == Some(&b'\n') => {
                    Some(i + 3)
                }
                b'\r' if hay.get(i + 1) == Some(&b'\r') => Some(i + 2),
                _ => None,
            };
            if let Some(end) = end {
                self.scanned = 0;
                return Some(self.buf.split_to(start + end).freeze());
            }
            i += 1;
        }
        self.scanned = self.buf.len();
        None
    }

    /// Whatever is left after the upstream closed (an event without its blank line).
    pub fn take_rest(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        let rest = self.buf.split().freeze();
        (!rest.iter().all(|b| b.is_ascii_whitespace())).then_some(rest)
    }
}

/// The `data:` payload of one event (multiple data lines joined by `\n`), and its
/// `event:` name. Comments and other fields are ignored.
pub fn parse_event(event: &[u8]) -> (Option<&[u8]>, Vec<u8>) {
    let mut name = None;
    let mut data: Vec<u8> = Vec::new();
    let mut first = true;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"data:") {
            if !first {
                data.push(b'\n');
            }
            first = false;
            data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
        } else if let Some(v) = line.strip_prefix(b"event:") {
            name = Some(v.strip_prefix(b" ").unwrap_or(v));
        }
    }
    (name, data)
}

/// Formats one `data:` event for the client.
pub fn data_event(out: &mut BytesMut, json: &[u8]) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
}

/// The OpenAI stream terminator.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(chunks: &[&[u8]]) -> Vec<Bytes> {
        let mut f = SseFramer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c);
            while let Some(e) = f.next_event() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn splits_anywhere_and_keeps_bytes() {
        let whole: &[u8] = b"data: {\"a\":1}\n\nevent: ping\ndata: {}\r\n\r\ndata: [DONE]\n\n";
        let expected = events_of(&[whole]);
        assert_eq!(expected.len(), 3);
        assert_eq!(expected.concat(), whole);
        for cut in 0..whole.len() {
            for cut2 in cut..whole.len() {
                let got = events_of(&[&whole[..cut], &whole[cut..cut2], &whole[cut2..]]);
                assert_eq!(got, expected, "cuts at {cut},{cut2}");
            }
        }
    }

    #[test]
    fn parses_name_and_multiline_data() {
        let (name, data) = parse_event(b"event: message_start\ndata: {\"x\":\ndata: 1}\n\n");
        assert_eq!(name, Some(&b"message_start"[..]));
        assert_eq!(data, b"{\"x\":\n1}");
    }

    #[test]
    fn rest_ignores_trailing_whitespace() {
        let mut f = SseFramer::default();
        f.push(b"data: x\n\n  \n");
        assert!(f.next_event().is_some());
        assert!(f.take_rest().is_none());
        f.push(b"data: partial");
        assert_eq!(f.take_rest().as_deref(), Some(&b"data: partial"[..]));
    }
}
