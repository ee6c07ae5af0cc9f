//! Server-sent events framing shared by every streaming adapter.
//!
//! Upstream chunks split events anywhere (inside a line, inside `\r\n`); [`SseFramer`]
//! buffers bytes and hands out whole events, byte-exact, so a pass-through adapter can
//! forward them untouched and a translating adapter can read their `data:` payload.

use bytes::{Bytes, BytesMut};
use std::borrow::Cow;

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
        // Only a line break can start a separator: jump from one to the next.
        while let Some(k) = memchr::memchr2(b'\n', b'\r', &hay[i..]) {
            i += k;
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
/// `event:` name. Comments and other fields are ignored. An event with one data line (every
/// event of the providers llmux speaks) borrows its payload: no copy.
pub fn parse_event(event: &[u8]) -> (Option<&[u8]>, Cow<'_, [u8]>) {
    let mut name = None;
    let mut data: Option<Cow<'_, [u8]>> = None;
    let mut rest = Some(event);
    while let Some(text) = rest {
        // Lines as `split(b'\n')` gives them, found with memchr.
        let line = match memchr::memchr(b'\n', text) {
            Some(i) => {
                rest = Some(&text[i + 1..]);
                &text[..i]
            }
            None => {
                rest = None;
                text
            }
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(v) = line.strip_prefix(b"data:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            match &mut data {
                None => data = Some(Cow::Borrowed(v)),
                Some(d) => {
                    let d = d.to_mut();
                    d.push(b'\n');
                    d.extend_from_slice(v);
                }
            }
        } else if let Some(v) = line.strip_prefix(b"event:") {
            name = Some(v.strip_prefix(b" ").unwrap_or(v));
        }
    }
    (name, data.unwrap_or(Cow::Borrowed(&[])))
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
        assert_eq!(&data[..], b"{\"x\":\n1}");
        let event = b"event: ping\r\ndata: {}\r\n\r\n";
        let (name, data) = parse_event(event);
        assert_eq!((name, &data[..]), (Some(&b"ping"[..]), &b"{}"[..]));
        assert!(
            matches!(data, Cow::Borrowed(_)),
            "one data line is not copied"
        );
        let (name, data) = parse_event(b": comment\n\n");
        assert_eq!((name, &data[..]), (None, &b""[..]));
        let (_, data) = parse_event(b"data:\ndata:\n\n");
        assert_eq!(&data[..], b"\n");
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
