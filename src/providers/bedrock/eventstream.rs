//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`) that Bedrock's
//! `converse-stream` answers in (providers.md §8.4).
//!
//! A frame is `total length (u32) | headers length (u32) | prelude CRC32 | headers | payload |
//! message CRC32`, big-endian, CRC-32 (IEEE) over everything before each checksum. Upstream
//! chunks split frames anywhere, so [`Decoder`] buffers bytes and hands out whole frames; a
//! checksum or length that does not add up is an error (the body is not an event stream, or
//! was corrupted), never a guess.

use bytes::{Buf, Bytes, BytesMut};

/// Prelude (two lengths and the prelude CRC) plus the trailing message CRC.
const OVERHEAD: usize = 16;
/// The largest frame accepted: AWS caps a payload at 16 MiB and headers at 128 KiB, so
/// anything bigger is corruption, and refusing it bounds what a bad stream can make us buffer.
pub const MAX_FRAME: usize = 16 * 1024 * 1024 + 128 * 1024 + OVERHEAD;

/// A typed header value (event-stream header types 0–9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Bytes),
    String(String),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Bytes,
}

impl Frame {
    /// A string header (`:event-type`, `:message-type`, `:exception-type`, ...).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(k, v)| match v {
            HeaderValue::String(s) if k == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Why bytes are not a valid event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Incremental frame decoder: [`push`](Decoder::push) bytes as they come, then take frames
/// with [`next_frame`](Decoder::next_frame) until it returns `Ok(None)`.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Decoder {
    /// Appends upstream bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received but not yet part of a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed. The prelude is checked as
    /// soon as its 12 bytes are here, so a corrupt length fails at once instead of waiting for
    /// bytes that never come.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buf.len() < 12 {
            return Ok(None);
        }
        let total = be_u32(&self.buf[0..4]) as usize;
        let headers_len = be_u32(&self.buf[4..8]) as usize;
        let prelude_crc = be_u32(&self.buf[8..12]);
        if crc32fast::hash(&self.buf[0..8]) != prelude_crc {
            return Err(DecodeError("event-stream prelude checksum mismatch".into()));
        }
        if !(OVERHEAD..=MAX_FRAME).contains(&total) || headers_len > total - OVERHEAD {
            return Err(DecodeError(format!(
                "event-stream frame lengths are invalid (total {total}, headers {headers_len})"
            )));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let frame = self.buf.split_to(total).freeze();
        let message_crc = be_u32(&frame[total - 4..]);
        if crc32fast::hash(&frame[..total - 4]) != message_crc {
            return Err(DecodeError("event-stream message checksum mismatch".into()));
        }
        let headers = parse_headers(frame.slice(12..12 + headers_len))?;
        let payload = frame.slice(12 + headers_len..total - 4);
        Ok(Some(Frame { headers, payload }))
    }
}

fn parse_headers(mut b: Bytes) -> Result<Vec<(String, HeaderValue)>, DecodeError> {
    let short = || DecodeError("event-stream header block is truncated".into());
    let mut out = Vec::new();
    while b.has_remaining() {
        let name_len = b.get_u8() as usize;
        if b.remaining() < name_len + 1 {
            return Err(short());
        }
        let name = String::from_utf8(b.split_to(name_len).to_vec())
            .map_err(|_| DecodeError("event-stream header name is not UTF-8".into()))?;
        let kind = b.get_u8();
        let need = |b: &Bytes, n: usize| {
            if b.remaining() < n {
                Err(short())
            } else {
                Ok(())
            }
        };
        let value = match kind {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => {
                need(&b, 1)?;
                HeaderValue::Byte(b.get_i8())
            }
            3 => {
                need(&b, 2)?;
                HeaderValue::Short(b.get_i16())
            }
            4 => {
                need(&b, 4)?;
                HeaderValue::Int(b.get_i32())
            }
            5 | 8 => {
                need(&b, 8)?;
                let v = b.get_i64();
                if kind == 5 {
                    HeaderValue::Long(v)
                } else {
                    HeaderValue::Timestamp(v)
                }
            }
            6 | 7 => {
                need(&b, 2)?;
                let len = b.get_u16() as usize;
                need(&b, len)?;
                let raw = b.split_to(len);
                if kind == 6 {
                    HeaderValue::Bytes(raw)
                } else {
                    HeaderValue::String(String::from_utf8(raw.to_vec()).map_err(|_| {
                        DecodeError(format!("event-stream header `{name}` is not UTF-8"))
                    })?)
                }
            }
            9 => {
                need(&b, 16)?;
                let mut u = [0u8; 16];
                b.copy_to_slice(&mut u);
                HeaderValue::Uuid(u)
            }
            other => {
                return Err(DecodeError(format!(
                    "event-stream header `{name}` has unknown type {other}"
                )))
            }
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Encodes one frame (for tests and fakes of Bedrock; llmux never sends event streams).
/// Names longer than 255 bytes and strings longer than 65535 bytes are cut to fit.
pub fn encode(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        h.push(name.len() as u8);
        h.extend_from_slice(name);
        let var = |h: &mut Vec<u8>, kind: u8, raw: &[u8]| {
            let raw = &raw[..raw.len().min(u16::MAX as usize)];
            h.push(kind);
            h.extend_from_slice(&(raw.len() as u16).to_be_bytes());
            h.extend_from_slice(raw);
        };
        match value {
            HeaderValue::Bool(true) => h.push(0),
            HeaderValue::Bool(false) => h.push(1),
            HeaderValue::Byte(v) => {
                h.push(2);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Short(v) => {
                h.push(3);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int(v) => {
                h.push(4);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Long(v) => {
                h.push(5);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Bytes(v) => var(&mut h, 6, v),
            HeaderValue::String(v) => var(&mut h, 7, v.as_bytes()),
            HeaderValue::Timestamp(v) => {
                h.push(8);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(v) => {
                h.push(9);
                h.extend_from_slice(v);
            }
        }
    }
    let total = (OVERHEAD + h.len() + payload.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A Bedrock event frame: `:event-type`, JSON content type, `:message-type: event`.
pub fn event_frame(event_type: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &[
            (":event-type", HeaderValue::String(event_type.into())),
            (
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            (":message-type", HeaderValue::String("event".into())),
        ],
        payload,
    )
}

/// A Bedrock exception frame (`:message-type: exception`).
pub fn exception_frame(exception_type: &str, payload: &[u8]) -> Vec<u8> {
    encode(
        &[
            (
                ":exception-type",
                HeaderValue::String(exception_type.into()),
            ),
            (
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
            (":message-type", HeaderValue::String("exception".into())),
        ],
        payload,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_types() -> Vec<u8> {
        encode(
            &[
                ("t", HeaderValue::Bool(true)),
                ("f", HeaderValue::Bool(false)),
                ("b", HeaderValue::Byte(-3)),
                ("s", HeaderValue::Short(-300)),
                ("i", HeaderValue::Int(70000)),
                ("l", HeaderValue::Long(-1 << 40)),
                ("y", HeaderValue::Bytes(Bytes::from_static(b"\x00\x01"))),
                ("str", HeaderValue::String("héllo".into())),
                ("ts", HeaderValue::Timestamp(1_700_000_000_000)),
                ("u", HeaderValue::Uuid([7; 16])),
            ],
            b"{\"a\":1}",
        )
    }

    fn decode_all(chunks: &[&[u8]]) -> Result<Vec<Frame>, DecodeError> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(f) = d.next_frame()? {
                out.push(f);
            }
        }
        assert_eq!(d.buffered(), 0, "nothing left over");
        Ok(out)
    }

    #[test]
    fn round_trips_every_header_type() {
        let frames = decode_all(&[&all_types()]).unwrap();
        assert_eq!(frames.len(), 1);
        let f = &frames[0];
        assert_eq!(f.payload.as_ref(), b"{\"a\":1}");
        assert_eq!(f.header_str("str"), Some("héllo"));
        assert_eq!(f.header_str("b"), None, "not a string header");
        assert_eq!(f.headers[5].1, HeaderValue::Long(-1 << 40));
        assert_eq!(f.headers[9].1, HeaderValue::Uuid([7; 16]));
    }

    #[test]
    fn frames_split_at_every_byte_give_the_same_frames() {
        let mut wire = event_frame("messageStart", br#"{"role":"assistant"}"#);
        wire.extend(all_types());
        wire.extend(event_frame("metadata", b"{}"));
        let whole = decode_all(&[&wire]).unwrap();
        assert_eq!(whole.len(), 3);
        for i in 0..=wire.len() {
            assert_eq!(
                decode_all(&[&wire[..i], &wire[i..]]).unwrap(),
                whole,
                "split at {i}"
            );
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&bytes).unwrap(), whole);
    }

    #[test]
    fn any_flipped_bit_is_a_checksum_or_length_error() {
        let wire = event_frame("contentBlockDelta", br#"{"delta":{"text":"hi"}}"#);
        for byte in 0..wire.len() {
            for bit in 0..8 {
                let mut bad = wire.clone();
                bad[byte] ^= 1 << bit;
                // CRC-32 catches every single-bit error: in the first 12 bytes through the
                // prelude checksum, after them through the message checksum.
                let mut d = Decoder::default();
                d.push(&bad);
                assert!(d.next_frame().is_err(), "flipped bit {bit} of byte {byte}");
            }
        }
        let mut bad = wire.clone();
        let n = bad.len();
        bad[n - 10] ^= 0x20; // payload byte
        let err = decode_all(&[&bad]).unwrap_err();
        assert!(err.0.contains("message checksum"), "{err}");
        let mut bad = wire;
        bad[2] ^= 1; // total length
        assert!(decode_all(&[&bad])
            .unwrap_err()
            .0
            .contains("prelude checksum"));
    }

    #[test]
    fn invalid_lengths_and_headers_are_errors_not_panics() {
        // Valid prelude CRC over lengths that cannot be right.
        for (total, headers) in [(4u32, 0u32), (20, 10), (u32::MAX, 0)] {
            let mut b = Vec::new();
            b.extend_from_slice(&total.to_be_bytes());
            b.extend_from_slice(&headers.to_be_bytes());
            let crc = crc32fast::hash(&b);
            b.extend_from_slice(&crc.to_be_bytes());
            let mut d = Decoder::default();
            d.push(&b);
            assert!(d.next_frame().is_err(), "total {total} headers {headers}");
        }
        // A header block that claims more than it holds, with valid checksums.
        let mut h = vec![3u8, b'a', b'b', b'c', 7, 0, 200, b'x'];
        let total = (OVERHEAD + h.len()) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b.append(&mut h);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        let mut d = Decoder::default();
        d.push(&b);
        assert!(d.next_frame().unwrap_err().0.contains("truncated"));
    }
}
