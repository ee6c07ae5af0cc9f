//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`) Bedrock's
//! ConverseStream answers in: `total length (u32 BE) | headers length (u32 BE) | prelude
//! CRC32 | headers | payload | message CRC32`, CRC-32/IEEE over everything before each
//! checksum. Headers are written as AWS writes them: string-typed (type 7, u16 length).

use serde_json::Value;

/// Prelude (two lengths and its CRC) plus the trailing message CRC.
const OVERHEAD: usize = 16;
/// Header value type 7: a UTF-8 string with a 2-byte big-endian length.
const STRING: u8 = 7;

/// One frame with string headers (names ≤ 255 bytes, values ≤ 65535 bytes).
pub(crate) fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        let value = &value.as_bytes()[..value.len().min(65535)];
        block.push(name.len() as u8);
        block.extend_from_slice(name);
        block.push(STRING);
        block.extend_from_slice(&(value.len() as u16).to_be_bytes());
        block.extend_from_slice(value);
    }
    let total = OVERHEAD + block.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(block.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// An `event` frame with a JSON payload, headers in AWS's order.
pub(crate) fn event(event_type: &str, payload: &Value) -> Vec<u8> {
    let headers = [
        (":event-type", event_type),
        (":content-type", "application/json"),
        (":message-type", "event"),
    ];
    frame(&headers, payload.to_string().as_bytes())
}

/// An `exception` frame (`throttlingException`, `modelStreamErrorException`, ...).
pub(crate) fn exception(exception_type: &str, payload: &Value) -> Vec<u8> {
    let headers = [
        (":exception-type", exception_type),
        (":content-type", "application/json"),
        (":message-type", "exception"),
    ];
    frame(&headers, payload.to_string().as_bytes())
}

/// A decoded frame: string headers and payload (tests and the self-check below).
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload: Vec<u8>,
}

/// Splits a whole body into frames, checking both CRCs and every length.
#[cfg(test)]
pub(crate) fn decode_all(mut body: &[u8]) -> Result<Vec<Decoded>, String> {
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < OVERHEAD {
            return Err(format!("{} trailing bytes", body.len()));
        }
        let (total, hlen) = (be(&body[0..4]) as usize, be(&body[4..8]) as usize);
        if crc32fast::hash(&body[..8]) != be(&body[8..12]) {
            return Err("prelude CRC mismatch".into());
        }
        if total < OVERHEAD || total > body.len() || hlen > total - OVERHEAD {
            return Err(format!("bad lengths {total}/{hlen}"));
        }
        if crc32fast::hash(&body[..total - 4]) != be(&body[total - 4..total]) {
            return Err("message CRC mismatch".into());
        }
        let mut h = &body[12..12 + hlen];
        let mut headers = Vec::new();
        while !h.is_empty() {
            let n = h[0] as usize;
            let name = String::from_utf8_lossy(&h[1..1 + n]).into_owned();
            if h[1 + n] != STRING {
                return Err(format!("header {name} is not a string"));
            }
            let vlen = u16::from_be_bytes([h[2 + n], h[3 + n]]) as usize;
            let value = String::from_utf8_lossy(&h[4 + n..4 + n + vlen]).into_owned();
            headers.push((name, value));
            h = &h[4 + n + vlen..];
        }
        let payload = body[12 + hlen..total - 4].to_vec();
        out.push(Decoded { headers, payload });
        body = &body[total..];
    }
    Ok(out)
}
