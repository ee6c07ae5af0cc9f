//! Writing responses to the client: JSON bodies, OpenAI-shaped errors, stream headers.

use crate::types::GatewayError;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

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
        None => format!("req_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
    }
}

/// A response header with the headers every llmux answer carries.
pub fn header(
    status: u16,
    content_type: &str,
    rid: &str,
    extra: &[(&str, String)],
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("x-request-id", rid)?;
    for (k, v) in extra {
        resp.insert_header(k.to_string(), v.as_str())?;
    }
    Ok(resp)
}

/// Writes a whole JSON response.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    rid: &str,
    extra: &[(&str, String)],
) -> pingora::Result<()> {
    let mut resp = header(status, "application/json", rid, extra)?;
    resp.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Writes an OpenAI-shaped error with its status (and `retry-after`/`allow` when known).
pub async fn error(
    session: &mut Session,
    err: &GatewayError,
    rid: &str,
    extra: &[(&str, String)],
) -> pingora::Result<()> {
    let mut headers: Vec<(&str, String)> = extra.to_vec();
    if let Some(secs) = err.retry_after_secs() {
        headers.push(("retry-after", secs.to_string()));
    }
    if let GatewayError::MethodNotAllowed { allow, .. } = err {
        headers.push(("allow", (*allow).to_owned()));
    }
    if matches!(err, GatewayError::RequestTooLarge { .. }) {
        headers.push(("connection", "close".to_owned()));
    }
    json(session, err.status(), err.body(), rid, &headers).await
}
