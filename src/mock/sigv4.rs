//! SigV4 verification for the Bedrock flavor, written from AWS's documented algorithm
//! ("Create a signed AWS API request": canonical request, string to sign, derived key), so it
//! checks the gateway's signer (the `aws-sigv4` crate) rather than repeating it.
//!
//! It is used once credentials were registered with `POST /_mock/aws-credentials`
//! (`{"access_key_id", "secret_access_key", "session_token"?}`): a test that hands out
//! credentials (a fake STS, static keys) tells the mock about them, and from then on a request
//! signed with anything else, or whose signature or session token does not match, is refused
//! as Bedrock would refuse it.

use sha2::{Digest, Sha256};

/// One registered credential (the access key id is the map key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
}

/// The parts of an `AWS4-HMAC-SHA256` authorization header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Authorization<'a> {
    pub(crate) access_key_id: &'a str,
    /// `YYYYMMDD`, region, service (the scope without `aws4_request`).
    pub(crate) date: &'a str,
    pub(crate) region: &'a str,
    pub(crate) service: &'a str,
    pub(crate) signed_headers: &'a str,
    pub(crate) signature: &'a str,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request,
/// SignedHeaders=a;b, Signature=hex`.
pub(crate) fn parse_authorization(header: &str) -> Option<Authorization<'_>> {
    let params = header.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in params.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let scope: Vec<&str> = credential?.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return None;
    };
    Some(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed_headers?,
        signature: signature?,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// AWS's URI encoding: unreserved characters stay, everything else is `%XX` (upper-case),
/// `/` too unless `keep_slash`.
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical request for `method` and the raw request-target `target` (as received).
/// Every service but S3 encodes the already-encoded path once more, so `%3A` becomes `%253A`.
/// `headers` are the received (lower-case) headers; `signed` the names the client signed.
pub(crate) fn canonical_request(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    signed: &str,
    body: &[u8],
) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| uri_encode(super::percent_decode(s).as_bytes(), false);
            (enc(k), enc(v))
        })
        .collect();
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut canonical_headers = String::new();
    for name in signed.split(';') {
        let values: Vec<String> = headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload = headers
        .iter()
        .find(|(k, _)| k == "x-amz-content-sha256")
        .map_or_else(|| hex(&Sha256::digest(body)), |(_, v)| v.clone());
    format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload}",
        uri_encode(path.as_bytes(), true),
        query.join("&")
    )
}

/// The signature of `canonical_request` sent at `amz_date` (`YYYYMMDDTHHMMSSZ`) in `auth`'s
/// scope, with `secret_access_key`.
pub(crate) fn signature(
    secret_access_key: &str,
    amz_date: &str,
    auth: &Authorization,
    canonical_request: &str,
) -> String {
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{secret_access_key}").as_bytes(),
        auth.date.as_bytes(),
    );
    let k_region = hmac(&k_date, auth.region.as_bytes());
    let k_service = hmac(&k_region, auth.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex(&hmac(&k_signing, string_to_sign.as_bytes()))
}

/// Why a signed request is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unknown access key id, or a session token that is missing, extra or wrong.
    UnrecognizedClient,
    /// The signature does not match.
    SignatureDoesNotMatch,
}

/// Checks a request against the registered credential for its access key id.
pub(crate) fn verify(
    known: Option<&Known>,
    auth: &Authorization,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), Refusal> {
    let known = known.ok_or(Refusal::UnrecognizedClient)?;
    let token = headers
        .iter()
        .find(|(k, _)| k == "x-amz-security-token")
        .map(|(_, v)| v.as_str());
    if token != known.session_token.as_deref() {
        return Err(Refusal::UnrecognizedClient);
    }
    let amz_date = headers
        .iter()
        .find(|(k, _)| k == "x-amz-date")
        .map_or("", |(_, v)| v.as_str());
    let creq = canonical_request(method, target, headers, auth.signed_headers, body);
    let expected = signature(&known.secret_access_key, amz_date, auth, &creq);
    if expected == auth.signature.to_ascii_lowercase() {
        Ok(())
    } else {
        Err(Refusal::SignatureDoesNotMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// AWS SigV4 test suite `get-vanilla-with-session-token`.
    #[test]
    fn aws_test_suite_vector_with_session_token() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let header = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8";
        let auth = parse_authorization(header).unwrap();
        assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
        let headers = h(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("x-amz-security-token", token),
        ]);
        let known = Known {
            secret_access_key: SECRET.into(),
            session_token: Some(token.into()),
        };
        assert_eq!(
            verify(Some(&known), &auth, "GET", "/", &headers, b""),
            Ok(())
        );
        let wrong_token = Known {
            session_token: Some("other".into()),
            ..known.clone()
        };
        assert_eq!(
            verify(Some(&wrong_token), &auth, "GET", "/", &headers, b""),
            Err(Refusal::UnrecognizedClient)
        );
        let wrong_secret = Known {
            secret_access_key: "x".into(),
            ..known.clone()
        };
        assert_eq!(
            verify(Some(&wrong_secret), &auth, "GET", "/", &headers, b""),
            Err(Refusal::SignatureDoesNotMatch)
        );
        assert_eq!(
            verify(Some(&known), &auth, "GET", "/x", &headers, b""),
            Err(Refusal::SignatureDoesNotMatch)
        );
        assert_eq!(
            verify(None, &auth, "GET", "/", &headers, b""),
            Err(Refusal::UnrecognizedClient)
        );
    }

    /// AWS SigV4 test suite `get-vanilla-query-order-key-case`: parameters sorted.
    #[test]
    fn aws_test_suite_vector_query_order() {
        let creq = canonical_request(
            "GET",
            "/?Param2=value2&Param1=value1",
            &h(&[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ]),
            "host;x-amz-date",
            b"",
        );
        let auth = parse_authorization("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500").unwrap();
        assert_eq!(
            signature(SECRET, "20150830T123600Z", &auth, &creq),
            auth.signature
        );
    }

    /// The gateway's Bedrock known answer (computed independently in Python): the model id's
    /// `%3A` is signed as `%253A`.
    #[test]
    fn bedrock_path_is_encoded_twice() {
        let target = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse";
        let headers = h(&[
            ("content-type", "application/json"),
            ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
            ("x-amz-date", "20260101T000000Z"),
        ]);
        let body = br#"{"messages":[{"role":"user","content":[{"text":"Hello!"}]}]}"#;
        let creq = canonical_request(
            "POST",
            target,
            &headers,
            "content-type;host;x-amz-date",
            body,
        );
        assert!(creq.contains("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%253A0/converse\n"));
        let auth = parse_authorization("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=a342563fc09d8e7e9f118a66165947f6585fe093d4f135a713c11148fa7d1781").unwrap();
        let known = Known {
            secret_access_key: SECRET.into(),
            session_token: None,
        };
        assert_eq!(
            verify(Some(&known), &auth, "POST", target, &headers, body),
            Ok(())
        );
    }

    #[test]
    fn malformed_authorization_headers() {
        for bad in [
            "",
            "Bearer x",
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/bedrock, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/bedrock/aws4_request, Signature=00",
        ] {
            assert!(parse_authorization(bad).is_none(), "{bad}");
        }
    }
}
