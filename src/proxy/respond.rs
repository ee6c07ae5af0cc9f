//! Writing responses to the client: JSON bodies, OpenAI-shaped errors, stream headers.
//!
//! Header names are `&'static str` and values borrowed `&str`: pingora copies each value
//! into its header map once, and nothing else is allocated per header.

use crate::types::GatewayError;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;

/// The request id: the client's `x-request-id` when it is sane, else a fresh one.
pub fn request_id(session: &Session) -> String {
    let given = session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(v) => v.to_owned(),
        None => new_request_id(),
    }
}

/// A fresh request id, for answers given before a request head could be read.
pub fn new_request_id() -> String {
    fresh_request_id(fastrand::u64(..), fastrand::u64(..))
}

/// `req_` and 32 lowercase hex digits (the same text as `format!("req_{a:016x}{b:016x}")`).
fn fresh_request_id(a: u64, b: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 36];
    id[..4].copy_from_slice(b"req_");
    for (i, digit) in id[4..].iter_mut().enumerate() {
        let word = if i < 16 { a } else { b };
        let shift = 60 - 4 * (i % 16);
        *digit = HEX[((word >> shift) & 0xf) as usize];
    }
    // Only ASCII was written.
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

/// A response header with the headers every llmux answer carries.
pub fn header(
    status: u16,
    content_type: &'static str,
    rid: &str,
    extra: &[(&'static str, &str)],
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("content-type", HeaderValue::from_static(content_type))?;
    resp.insert_header("x-request-id", rid)?;
    for &(k, v) in extra {
        resp.insert_header(k, v)?;
    }
    Ok(resp)
}

/// Writes a whole JSON response.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    rid: &str,
    extra: &[(&'static str, &str)],
) -> pingora::Result<()> {
    let mut resp = header(status, "application/json", rid, extra)?;
    resp.insert_header("content-length", itoa::Buffer::new().format(body.len()))?;
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(body, true).await
}

/// Writes an OpenAI-shaped error with its status (and `retry-after`/`allow` when known).
pub async fn error(
    session: &mut Session,
    err: &GatewayError,
    rid: &str,
    extra: &[(&'static str, &str)],
) -> pingora::Result<()> {
    let retry_after = err.retry_after_secs().map(|secs| secs.to_string());
    let mut headers: Vec<(&'static str, &str)> = extra.to_vec();
    if let Some(secs) = &retry_after {
        headers.push(("retry-after", secs));
    }
    if let GatewayError::MethodNotAllowed { allow, .. } = err {
        headers.push(("allow", allow));
    }
    if matches!(err, GatewayError::RequestTooLarge { .. }) {
        headers.push(("connection", "close"));
    }
    json(session, err.status(), err.body(), rid, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_are_req_and_32_hex_digits() {
        for (a, b) in [
            (0, 0),
            (u64::MAX, 1),
            (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
        ] {
            assert_eq!(fresh_request_id(a, b), format!("req_{a:016x}{b:016x}"));
        }
    }

    #[test]
    fn header_carries_content_type_request_id_and_extras() {
        let h = header(
            200,
            "application/json",
            "req_1",
            &[("x-llmux-attempts", "2")],
        )
        .unwrap();
        assert_eq!(h.headers["content-type"], "application/json");
        assert_eq!(h.headers["x-request-id"], "req_1");
        assert_eq!(h.headers["x-llmux-attempts"], "2");
        assert!(header(200, "application/json", "bad\nid", &[]).is_err());
    }
}
