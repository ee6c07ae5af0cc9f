//! Unit tests of the Bedrock adapter: request mapping, signing envelope, responses, streams
//! and errors. Corpus replays live in `tests/corpus_bedrock.rs`.

use super::auth::{self, AwsCredentials};
use super::eventstream::{event_frame, exception_frame};
use super::*;
use crate::types::FailureKind;
use bytes::BytesMut;
use serde_json::json;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn cfg(extra: Value) -> ProviderConfig {
    let mut c = json!({"name": "br", "kind": "bedrock", "region": "us-east-1",
        "aws": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET}});
    if let (Some(o), Value::Object(e)) = (c.as_object_mut(), extra) {
        o.extend(e);
    }
    serde_json::from_value(c).unwrap()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn base() -> BaseUrl {
    BaseUrl::parse("https://bedrock-runtime.us-east-1.amazonaws.com").unwrap()
}

fn adapter_with(extra: Value) -> BedrockAdapter {
    BedrockAdapter::new_with_env(&cfg(extra), &base(), &no_env).unwrap()
}

fn adapter() -> BedrockAdapter {
    adapter_with(json!({}))
}

fn request(mut v: Value) -> ChatRequest {
    if v.get("model").is_none() {
        v["model"] = "chat".into();
    }
    serde_json::from_value(v).unwrap()
}

const CLAUDE: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const NOVA: &str = "us.amazon.nova-pro-v1:0";

fn body_for(a: &BedrockAdapter, v: Value, model: &str) -> Result<Value, GatewayError> {
    a.request_body(&request(v), model)
}

fn body(v: Value) -> Value {
    body_for(&adapter(), v, CLAUDE).unwrap()
}

fn err(v: Value) -> GatewayError {
    body_for(&adapter(), v, CLAUDE).unwrap_err()
}

fn param(v: Value) -> Option<String> {
    err(v).param()
}

fn user(t: &str) -> Value {
    json!({"role": "user", "content": t})
}

fn call(id: &str, name: &str, args: &str) -> Value {
    json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
}

fn tool_msg(id: &str, content: Value) -> Value {
    json!({"role": "tool", "tool_call_id": id, "content": content})
}

fn func(name: &str) -> Value {
    json!({"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}})
}

fn at(s: &str) -> SystemTime {
    auth::parse_rfc3339(s).unwrap()
}

fn header<'a>(r: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------
// Envelope, auth, config
// ---------------------------------------------------------------------------------------

#[test]
fn model_ids_are_percent_encoded_in_the_path() {
    let a = adapter();
    assert_eq!(
        a.model_path(CLAUDE, "converse"),
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    );
    assert_eq!(
        a.model_path(
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
            "converse-stream"
        ),
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc/converse-stream"
    );
    let prefixed = BedrockAdapter::new_with_env(
        &cfg(json!({})),
        &BaseUrl::parse("https://vpce.example.com:8443/bedrock").unwrap(),
        &no_env,
    )
    .unwrap();
    assert_eq!(
        prefixed.model_path("m", "converse"),
        "/bedrock/model/m/converse"
    );
}

/// The whole envelope at a fixed time: the body bytes are the ones the known-answer test in
/// `auth` signs (independently computed signature), so this proves the adapter signs exactly
/// what it sends, for the host the proxy sends.
#[test]
fn chat_request_is_signed_over_the_exact_body() {
    let a = adapter();
    let req = request(json!({"messages": [user("Hello!")]}));
    let r = a
        .chat_request_at(&req, CLAUDE, at("2026-01-01T00:00:00Z"))
        .unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
    );
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        r#"{"messages":[{"role":"user","content":[{"text":"Hello!"}]}]}"#
    );
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(header(&r, "x-amz-date"), Some("20260101T000000Z"));
    assert_eq!(
        header(&r, "authorization"),
        Some("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=a342563fc09d8e7e9f118a66165947f6585fe093d4f135a713c11148fa7d1781")
    );
    assert!(header(&r, "host").is_none(), "the proxy writes host");
    let stream = request(json!({"messages": [user("x")], "stream": true}));
    assert!(a
        .chat_request(&stream, CLAUDE)
        .unwrap()
        .path
        .ends_with("/converse-stream"));
}

#[test]
fn session_tokens_and_configured_headers_are_signed() {
    let a = adapter_with(
        json!({"aws": {"access_key_id": "ASIAX", "secret_access_key": "s",
        "session_token": "tok123456"}, "headers": {"X-Amzn-Bedrock-Trace": "ENABLED"}}),
    );
    let r = a
        .chat_request(&request(json!({"messages": [user("x")]})), NOVA)
        .unwrap();
    assert_eq!(header(&r, "x-amz-security-token"), Some("tok123456"));
    assert_eq!(header(&r, "x-amzn-bedrock-trace"), Some("ENABLED"));
    let auth = header(&r, "authorization").unwrap();
    assert!(
        auth.contains(
            "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amzn-bedrock-trace"
        ),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"));
}

#[test]
fn bearer_api_keys_are_sent_without_signing() {
    let c: ProviderConfig = serde_json::from_value(
        json!({"name": "br", "kind": "bedrock", "region": "us-west-2", "api_key": "ABSKkey1234"}),
    )
    .unwrap();
    let a = BedrockAdapter::new_with_env(&c, &base(), &no_env).unwrap();
    let r = a
        .chat_request(&request(json!({"messages": [user("x")]})), NOVA)
        .unwrap();
    assert_eq!(header(&r, "authorization"), Some("Bearer ABSKkey1234"));
    assert!(header(&r, "x-amz-date").is_none());
    let f = a.error(
        403,
        &http::HeaderMap::new(),
        br#"{"message":"Invalid API key ABSKkey1234"}"#,
    );
    assert!(!f.message.contains("ABSKkey1234"), "{}", f.message);
}

#[test]
fn config_errors() {
    let only_web = |k: &str| match k {
        "AWS_WEB_IDENTITY_TOKEN_FILE" => Some("/var/run/token".to_owned()),
        "AWS_ROLE_ARN" => Some("arn:aws:iam::1:role/x".to_owned()),
        _ => None,
    };
    let c: ProviderConfig =
        serde_json::from_value(json!({"name": "br", "kind": "bedrock", "region": "us-east-1"}))
            .unwrap();
    let bad_sts = |k: &str| match k {
        "AWS_ENDPOINT_URL_STS" => Some("sts.internal:443".to_owned()),
        _ => only_web(k),
    };
    let e = BedrockAdapter::new_with_env(&c, &base(), &bad_sts)
        .err()
        .unwrap();
    assert!(
        e.contains("AWS_ENDPOINT_URL_STS") && e.contains("br"),
        "{e}"
    );
    let e = BedrockAdapter::new_with_env(&c, &base(), &no_env)
        .err()
        .unwrap();
    assert!(e.contains("no AWS credentials"), "{e}");
    let e = BedrockAdapter::new_with_env(
        &cfg(json!({"headers": {"Authorization": "x"}})),
        &base(),
        &no_env,
    )
    .err()
    .unwrap();
    assert!(e.contains("cannot be configured"), "{e}");
    // Region from the standard host, else required.
    let mut c = cfg(json!({}));
    c.region = None;
    let a = BedrockAdapter::new_with_env(
        &c,
        &BaseUrl::parse("https://bedrock-runtime.eu-central-1.amazonaws.com").unwrap(),
        &no_env,
    )
    .unwrap();
    assert_eq!(a.region, "eu-central-1");
    let local = BaseUrl::parse("http://127.0.0.1:9001").unwrap();
    assert!(BedrockAdapter::new_with_env(&c, &local, &no_env).is_err());
    let env_region = |k: &str| (k == "AWS_REGION").then(|| "ap-south-1".to_owned());
    assert_eq!(
        BedrockAdapter::new_with_env(&c, &local, &env_region)
            .unwrap()
            .region,
        "ap-south-1"
    );
}

#[test]
fn web_identity_signs_with_the_shared_refreshed_slot() {
    let web = |k: &str| match k {
        "AWS_WEB_IDENTITY_TOKEN_FILE" => Some("/var/run/secrets/eks/token".to_owned()),
        "AWS_ROLE_ARN" => Some("arn:aws:iam::1:role/adapter-test".to_owned()),
        "AWS_ENDPOINT_URL_STS" => Some("http://127.0.0.1:1".to_owned()),
        _ => None,
    };
    let c: ProviderConfig =
        serde_json::from_value(json!({"name": "br", "kind": "bedrock", "region": "us-east-1"}))
            .unwrap();
    let a = BedrockAdapter::new_with_env(&c, &base(), &web).unwrap();
    // A reload builds a new adapter on the same slot (and so the same refresher).
    let again = BedrockAdapter::new_with_env(&c, &base(), &web).unwrap();
    let (Auth::SigV4(slot), Auth::SigV4(slot2)) = (&a.auth, &again.auth) else {
        panic!("web identity signs with SigV4")
    };
    assert!(std::sync::Arc::ptr_eq(slot, slot2));
    let w = auth::WebIdentity::from_env(&web).unwrap();
    assert!(std::sync::Arc::ptr_eq(slot, &refresh::shared_slot(&w)));
    // Before the first refresh: a retryable failure, nothing sent.
    let req = request(json!({"messages": [user("x")]}));
    let now = at("2026-01-01T00:00:00Z");
    match a.chat_request_at(&req, NOVA, now).unwrap_err() {
        GatewayError::Upstream { failure, .. } => {
            assert_eq!(failure.kind, FailureKind::Connect);
            assert!(failure.retryable(), "{}", failure.message);
        }
        e => panic!("{e:?}"),
    }
    // What the refresher stores is what requests are signed with.
    slot.store(Some(std::sync::Arc::new(AwsCredentials {
        access_key_id: "ASIASTS".into(),
        secret_access_key: "sts-secret".into(),
        session_token: Some("sts-session".into()),
        expires_at: Some(at("2026-01-01T01:00:00Z")),
    })));
    let r = again.chat_request_at(&req, NOVA, now).unwrap();
    assert!(header(&r, "authorization")
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 Credential=ASIASTS/20260101/us-east-1/bedrock/"));
    assert_eq!(header(&r, "x-amz-security-token"), Some("sts-session"));
}

#[test]
fn credential_slot_feeds_signing_and_refuses_missing_or_expired_credentials() {
    let slot: CredentialSlot = Default::default();
    let c: ProviderConfig =
        serde_json::from_value(json!({"name": "br", "kind": "bedrock", "region": "us-east-1"}))
            .unwrap();
    let a = BedrockAdapter::with_credential_slot(&c, &base(), slot.clone()).unwrap();
    assert!(!a.ready(), "/readyz waits for the first credentials");
    let req = request(json!({"messages": [user("x")]}));
    let now = at("2026-01-01T00:00:00Z");
    let e = a.chat_request_at(&req, NOVA, now).unwrap_err();
    assert!(
        matches!(&e, GatewayError::Upstream { failure, .. } if failure.kind == FailureKind::Connect)
    );
    slot.store(Some(std::sync::Arc::new(AwsCredentials {
        access_key_id: "ASIA1".into(),
        secret_access_key: "s".into(),
        session_token: Some("t".into()),
        expires_at: Some(at("2026-01-01T01:00:00Z")),
    })));
    assert!(a.chat_request_at(&req, NOVA, now).is_ok());
    assert!(
        !a.ready(),
        "credentials of January 2026 are expired by the wall clock"
    );
    let fresh = AwsCredentials {
        access_key_id: "ASIA2".into(),
        secret_access_key: "s".into(),
        session_token: None,
        expires_at: Some(std::time::SystemTime::now() + std::time::Duration::from_secs(3600)),
    };
    slot.store(Some(std::sync::Arc::new(fresh)));
    assert!(a.ready());
    slot.store(Some(std::sync::Arc::new(AwsCredentials {
        access_key_id: "ASIA1".into(),
        secret_access_key: "s".into(),
        session_token: Some("t".into()),
        expires_at: Some(at("2026-01-01T01:00:00Z")),
    })));
    let late = at("2026-01-01T00:59:30Z");
    assert!(
        a.chat_request_at(&req, NOVA, late).is_err(),
        "within the margin"
    );
    // An unsigned probe still goes out (and is refused upstream).
    assert!(header(&a.probe_request_at(late), "authorization").is_none());
}

#[test]
fn probe_is_a_signed_list_async_invokes() {
    let p = adapter().probe_request_at(at("2026-01-01T00:00:00Z"));
    assert_eq!(
        (p.method, p.path.as_str()),
        ("GET", "/async-invoke?maxResults=1")
    );
    assert!(p.body.is_empty());
    assert!(header(&p, "authorization")
        .unwrap()
        .contains("SignedHeaders=host;x-amz-date"));
}

#[test]
fn probe_override_is_signed_for_what_the_prober_sends() {
    let time = at("2026-01-01T00:00:00Z");
    let a = adapter_with(
        json!({"probe": {"method": "post", "path": "foundation-models?maxResults=1"}}),
    );
    let p = a.probe_request_at(time);
    assert_eq!(
        (p.method, p.path.as_str()),
        ("POST", "/foundation-models?maxResults=1")
    );
    // The same signature as an independent signing of exactly that request.
    let expected = auth::sign(
        &AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SECRET.into(),
            session_token: None,
            expires_at: None,
        },
        &auth::Signable {
            method: "POST",
            host: "bedrock-runtime.us-east-1.amazonaws.com",
            path: "/foundation-models?maxResults=1",
            headers: &[],
            body: b"",
            region: "us-east-1",
            service: auth::SERVICE,
            time,
            content_sha256: false,
        },
    )
    .unwrap();
    let auth_header = |h: &[(String, String)]| {
        h.iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(auth_header(&p.headers), auth_header(&expected));
    assert!(auth_header(&p.headers).is_some());
    // Methods other than HEAD and POST are sent (and signed) as GET, like the prober does.
    let a = adapter_with(json!({"probe": {"method": "DELETE", "path": "/x"}}));
    assert_eq!(a.probe_request_at(time).method, "GET");
    let a = adapter_with(json!({"probe": {"path": "/x"}}));
    let p = a.probe_request_at(time);
    assert_eq!((p.method, p.path.as_str()), ("GET", "/x"));
}

// ---------------------------------------------------------------------------------------
// Request mapping
// ---------------------------------------------------------------------------------------

#[test]
fn system_messages_lift_and_turns_alternate() {
    let b = body(json!({"messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "assistant", "content": "Earlier answer."},
        user("a"), user("b"),
        {"role": "developer", "content": [{"type": "text", "text": "Late rule."}, {"type": "text", "text": "  "}]},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "Prefill  "}]}));
    assert_eq!(
        b["system"],
        json!([{"text": "Be terse."}, {"text": "Late rule."}])
    );
    assert_eq!(
        b["messages"],
        json!([
            {"role": "user", "content": [{"text": PLACEHOLDER}]},
            {"role": "assistant", "content": [{"text": "Earlier answer."}]},
            {"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
            {"role": "assistant", "content": [{"text": "Prefill"}]},
        ])
    );
    assert!(b.get("inferenceConfig").is_none() && b.get("toolConfig").is_none());
    // Only system messages: a placeholder user turn (Converse needs one message).
    let b = body(json!({"messages": [{"role": "system", "content": "s"}]}));
    assert_eq!(b["messages"][0]["content"][0]["text"], PLACEHOLDER);
    assert_eq!(
        param(json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]})).as_deref(),
        Some("messages[0].content[0]")
    );
}

const PLACEHOLDER: &str = crate::providers::anthropic::PLACEHOLDER_USER;

#[test]
fn tool_calls_and_results_pair_up_with_results_first() {
    let b = body(json!({"messages": [
        user("weather?"),
        {"role": "assistant", "content": "", "tool_calls": [call("call_1", "get", "{\"city\":\"Paris\"}"), call("call.2:x", "get", "")]},
        tool_msg("call.2:x", json!("18C")),
        {"role": "user", "content": "and?"},
        tool_msg("call_1", json!([{"type": "text", "text": "sunny"}])),
        ], "tools": [func("get")]}));
    assert_eq!(
        b["messages"][1],
        json!({"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "call_1", "name": "get", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "call_2_x", "name": "get", "input": {}}}]})
    );
    assert_eq!(
        b["messages"][2],
        json!({"role": "user", "content": [
            {"toolResult": {"toolUseId": "call_2_x", "content": [{"text": "18C"}]}},
            {"toolResult": {"toolUseId": "call_1", "content": [{"text": "sunny"}]}},
            {"text": "and?"}]})
    );
    assert_eq!(
        b["toolConfig"]["tools"][0],
        json!({"toolSpec": {"name": "get", "inputSchema": {"json": {"type": "object", "properties": {"a": {"type": "string"}}}}}})
    );
    assert!(b["toolConfig"].get("toolChoice").is_none());
    // Empty results and errors.
    let b = body(json!({"messages": [user("x"),
        {"role": "assistant", "tool_calls": [call("c", "get", "{}")]},
        {"role": "tool", "tool_call_id": "c", "content": "", "is_error": true}], "tools": [func("get")]}));
    assert_eq!(
        b["messages"][2]["content"][0],
        json!({"toolResult": {"toolUseId": "c", "content": [{"text": request::EMPTY_RESULT}], "status": "error"}})
    );
}

#[test]
fn tool_pairing_and_argument_errors_name_the_field() {
    let tools = json!([func("get")]);
    assert_eq!(
        param(json!({"messages": [user("x"), tool_msg("nope", json!("r"))], "tools": tools}))
            .as_deref(),
        Some("messages[1].tool_call_id")
    );
    assert_eq!(
        param(json!({"messages": [user("x"), {"role": "assistant", "tool_calls": [call("c", "get", "{}")]}, user("y")], "tools": tools})).as_deref(),
        Some("messages[1].tool_calls[0]")
    );
    assert_eq!(
        param(json!({"messages": [user("x"), {"role": "assistant", "tool_calls": [call("c", "get", "{\"a\":")]}, tool_msg("c", json!("r"))]})).as_deref(),
        Some("messages[1].tool_calls[0].function.arguments")
    );
    assert_eq!(
        param(json!({"messages": [user("x"), {"role": "assistant", "tool_calls": [call("c", "get", "[1]")]}, tool_msg("c", json!("r"))]})).as_deref(),
        Some("messages[1].tool_calls[0].function.arguments")
    );
    assert_eq!(
        param(json!({"messages": [user("x"), {"role": "assistant", "tool_calls": [call("c", "get", "{}")]}, tool_msg("c", json!("r")), tool_msg("c", json!("r"))]})).as_deref(),
        Some("messages[3].tool_call_id")
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "tools": [func("has.dot")]})).as_deref(),
        Some("tools[0].function.name")
    );
}

#[test]
fn long_or_foreign_tool_ids_are_rewritten_consistently() {
    let long = format!("call_{}__thought__{}", "a".repeat(30), "Zm9v+/=".repeat(20));
    let id = request::tool_id(&long);
    assert_eq!(id.len(), 64);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    assert_eq!(id, request::tool_id(&long), "deterministic");
    assert_ne!(id, request::tool_id(&format!("{long}x")));
    assert_eq!(request::tool_id(""), "tooluse_empty");
    let b = body(json!({"messages": [user("x"),
        {"role": "assistant", "tool_calls": [call(&long, "get", "{}")]}, tool_msg(&long, json!("r"))]}));
    assert_eq!(b["messages"][1]["content"][0]["toolUse"]["toolUseId"], id);
    assert_eq!(
        b["messages"][2]["content"][0]["toolResult"]["toolUseId"],
        id
    );
}

#[test]
fn images_need_bytes_and_documents_get_safe_names() {
    let b = body(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/4AAQ", "detail": "high"}},
        {"type": "file", "file": {"filename": "Q3 report.v2.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "file", "file": {"file_data": "data:text/plain;base64,aGk="}}]}]}));
    assert_eq!(
        b["messages"][0]["content"],
        json!([{"text": "What is this?"},
            {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}},
            {"document": {"format": "pdf", "name": "Q3 report v2", "source": {"bytes": "JVBERi0x"}}},
            {"document": {"format": "txt", "name": "Document 2", "source": {"bytes": "aGk="}}}])
    );
    let image = |url: &str| json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
    let e = err(image("https://example.com/cat.png"));
    assert_eq!(
        e.param().as_deref(),
        Some("messages[0].content[0].image_url")
    );
    assert!(e.to_string().contains("does not download"), "{e}");
    // Remote URLs are refused even when unsupported parameters are dropped.
    let lenient = adapter_with(json!({"drop_unsupported_params": true}));
    assert!(body_for(&lenient, image("http://x/y.png"), CLAUDE).is_err());
    for bad in [
        "data:image/svg+xml;base64,PHN2Zz4=",
        "data:image/png,raw",
        "ftp://x",
    ] {
        assert_eq!(err(image(bad)).status(), 400, "{bad}");
    }
    assert_eq!(
        param(json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]})).as_deref(),
        Some("messages[0].content[0]")
    );
    assert_eq!(
        param(json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]})).as_deref(),
        Some("messages[0].content[0]")
    );
}

#[test]
fn tool_choice_mapping() {
    let tools = json!([func("get"), func("put")]);
    let choice = |c: Value| {
        body(json!({"messages": [user("x")], "tools": tools, "tool_choice": c}))["toolConfig"]
            .clone()
    };
    assert_eq!(choice(json!("auto"))["toolChoice"], json!({"auto": {}}));
    assert_eq!(choice(json!("required"))["toolChoice"], json!({"any": {}}));
    assert_eq!(
        choice(json!({"type": "function", "function": {"name": "put"}}))["toolChoice"],
        json!({"tool": {"name": "put"}})
    );
    // `none`: no tools at all without tool history...
    assert_eq!(choice(json!("none")), Value::Null);
    // ...and only the never-called placeholder with it.
    let b = body(json!({"messages": [user("x"),
        {"role": "assistant", "tool_calls": [call("c", "get", "{}")]}, tool_msg("c", json!("r"))],
        "tools": tools, "tool_choice": "none"}));
    let names: Vec<&str> = b["toolConfig"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["toolSpec"]["name"].as_str())
        .collect();
    assert_eq!(names, [request::HISTORY_TOOL]);
    assert!(b["toolConfig"].get("toolChoice").is_none());
    // Tool history without tools gets the placeholder too.
    let b = body(json!({"messages": [user("x"),
        {"role": "assistant", "tool_calls": [call("c", "get", "{}")]}, tool_msg("c", json!("r"))]}));
    assert_eq!(
        b["toolConfig"]["tools"][0]["toolSpec"]["name"],
        request::HISTORY_TOOL
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "tool_choice": "required"})).as_deref(),
        Some("tool_choice")
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "zzz"}}})).as_deref(),
        Some("tool_choice")
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "tools": tools, "parallel_tool_calls": false}))
            .as_deref(),
        Some("parallel_tool_calls")
    );
    assert!(
        body(json!({"messages": [user("x")], "tools": tools, "parallel_tool_calls": true}))
            .get("toolConfig")
            .is_some()
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "tools": [{"type": "custom", "custom": {"name": "c"}, "function": {"name": "c"}}]})).as_deref(),
        Some("tools[0].type")
    );
}

#[test]
fn response_format_uses_the_forced_json_tool() {
    let b = body(
        json!({"messages": [user("x")], "response_format": {"type": "json_schema",
        "json_schema": {"name": "P", "description": "A person", "schema": {"type": "object", "properties": {"n": {"type": "string"}}}}}}),
    );
    assert_eq!(
        b["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": JSON_TOOL, "description": "A person",
            "inputSchema": {"json": {"type": "object", "properties": {"n": {"type": "string"}}}}}}],
            "toolChoice": {"any": {}}})
    );
    let b = body(
        json!({"messages": [user("x")], "response_format": {"type": "json_object"}, "tools": [func("get")]}),
    );
    assert_eq!(b["toolConfig"]["tools"].as_array().unwrap().len(), 2);
    assert_eq!(b["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert!(
        body(json!({"messages": [user("x")], "response_format": {"type": "text"}}))
            .get("toolConfig")
            .is_none()
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "response_format": {"type": "json_object"}, "tools": [func(JSON_TOOL)]})).as_deref(),
        Some("tools[0].function.name")
    );
}

use crate::providers::anthropic::JSON_TOOL;

#[test]
fn inference_config_and_sampling() {
    let b = body(
        json!({"messages": [user("x")], "max_tokens": 100, "max_completion_tokens": 512,
        "temperature": 1.7, "top_p": 0.9, "stop": ["END", ""]}),
    );
    assert_eq!(
        b["inferenceConfig"],
        json!({"maxTokens": 512, "temperature": 1.0, "stopSequences": ["END"]}),
        "clamped temperature; Claude drops top_p next to temperature"
    );
    let b = body_for(
        &adapter(),
        json!({"messages": [user("x")], "temperature": 0.2, "top_p": 0.9, "stop": "END"}),
        NOVA,
    )
    .unwrap();
    assert_eq!(
        b["inferenceConfig"],
        json!({"temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "max_tokens": 0})).as_deref(),
        Some("max_tokens")
    );
    let b = body(json!({"messages": [user("x")], "top_k": 40}));
    assert_eq!(b["additionalModelRequestFields"], json!({"top_k": 40}));
    let b = body_for(
        &adapter(),
        json!({"messages": [user("x")], "top_k": 40}),
        NOVA,
    )
    .unwrap();
    assert_eq!(
        b["additionalModelRequestFields"],
        json!({"inferenceConfig": {"topK": 40}})
    );
    assert_eq!(
        body_for(
            &adapter(),
            json!({"messages": [user("x")], "top_k": 40}),
            "meta.llama3-70b"
        )
        .unwrap_err()
        .param()
        .as_deref(),
        Some("top_k")
    );
}

#[test]
fn unsupported_parameters_are_refused_or_dropped() {
    for (field, value) in [
        ("n", json!(2)),
        ("seed", json!(1)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(2)),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(0.5)),
        ("logit_bias", json!({"1": 2})),
        ("audio", json!({"voice": "x"})),
        ("modalities", json!(["text", "audio"])),
        ("prediction", json!({"type": "content", "content": "x"})),
        ("service_tier", json!("scale")),
    ] {
        let mut r = json!({"messages": [user("x")]});
        r[field] = value;
        let e = err(r.clone());
        assert_eq!(e.param().as_deref(), Some(field), "{field}");
        assert!(
            e.to_string().contains("provider 'br'") && e.to_string().contains("bedrock"),
            "{e}"
        );
        let lenient = adapter_with(json!({"drop_unsupported_params": true}));
        assert!(body_for(&lenient, r, CLAUDE).is_ok(), "{field} dropped");
    }
    // Harmless values and OpenAI-side fields pass.
    let b = body(
        json!({"messages": [user("x")], "n": 1, "presence_penalty": 0, "store": true,
        "metadata": {"a": "b"}, "user": "u1", "modalities": ["text"], "service_tier": "auto"}),
    );
    assert!(b.get("serviceTier").is_none() && b.get("requestMetadata").is_none());
    let b = body(json!({"messages": [user("x")], "service_tier": "flex"}));
    assert_eq!(b["serviceTier"], json!({"type": "flex"}));
}

#[test]
fn native_bedrock_fields_pass_through() {
    let b = body(json!({"messages": [user("x")],
        "guardrailConfig": {"guardrailIdentifier": "g1", "guardrailVersion": "DRAFT", "trace": "enabled"},
        "additionalModelRequestFields": {"anthropic_beta": ["b1"], "top_k": 5},
        "additionalModelResponseFieldPaths": ["/stop_sequence"],
        "requestMetadata": {"team": "a"}, "promptVariables": {"v": {"text": "t"}},
        "performanceConfig": {"latency": "optimized"}, "serviceTier": {"type": "priority"},
        "service_tier": "flex", "top_k": 40}));
    assert_eq!(b["guardrailConfig"]["guardrailIdentifier"], "g1");
    assert_eq!(
        b["additionalModelRequestFields"],
        json!({"top_k": 5, "anthropic_beta": ["b1"]}),
        "the client's own field wins"
    );
    assert_eq!(b["serviceTier"], json!({"type": "priority"}));
    for k in [
        "additionalModelResponseFieldPaths",
        "requestMetadata",
        "promptVariables",
        "performanceConfig",
    ] {
        assert!(b.get(k).is_some(), "{k}");
    }
}

#[test]
fn reasoning_effort_per_model_family() {
    let b = body(json!({"messages": [user("x")], "reasoning_effort": "medium"}));
    assert_eq!(
        b["additionalModelRequestFields"]["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert_eq!(
        b["inferenceConfig"]["maxTokens"],
        2048 + request::DEFAULT_MAX_TOKENS
    );
    let b = body(
        json!({"messages": [user("x")], "reasoning_effort": "high", "max_completion_tokens": 3000}),
    );
    assert_eq!(
        b["additionalModelRequestFields"]["thinking"]["budget_tokens"],
        2999
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "reasoning_effort": "high", "max_completion_tokens": 1000})).as_deref(),
        Some("max_completion_tokens")
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "reasoning_effort": "low", "temperature": 0.3}))
            .as_deref(),
        Some("temperature")
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "reasoning_effort": "low", "tools": [func("get")], "tool_choice": "required"})).as_deref(),
        Some("tool_choice")
    );
    assert_eq!(
        param(json!({"messages": [user("x")], "reasoning_effort": "loads"})).as_deref(),
        Some("reasoning_effort")
    );
    // Continuing a tool loop: no thinking (its signatures cannot be replayed).
    let b = body(
        json!({"messages": [user("x"), {"role": "assistant", "reasoning_content": "hm", "tool_calls": [call("c", "get", "{}")]},
        tool_msg("c", json!("r"))], "reasoning_effort": "low", "tools": [func("get")]}),
    );
    assert!(b.get("additionalModelRequestFields").is_none());
    assert_eq!(b["messages"][1]["content"].as_array().unwrap().len(), 1);
    let b = body(
        json!({"messages": [user("x")], "thinking": {"type": "enabled", "budget_tokens": 5000}}),
    );
    assert_eq!(
        b["additionalModelRequestFields"]["thinking"]["budget_tokens"],
        5000
    );
    let nova = body_for(
        &adapter(),
        json!({"messages": [user("x")], "reasoning_effort": "xhigh"}),
        NOVA,
    )
    .unwrap();
    assert_eq!(
        nova["additionalModelRequestFields"],
        json!({"reasoningConfig": {"type": "enabled", "maxReasoningEffort": "high"}})
    );
    let oss = body_for(
        &adapter(),
        json!({"messages": [user("x")], "reasoning_effort": "minimal"}),
        "openai.gpt-oss-120b-1:0",
    )
    .unwrap();
    assert_eq!(
        oss["additionalModelRequestFields"],
        json!({"reasoning_effort": "low"})
    );
    assert!(body_for(
        &adapter(),
        json!({"messages": [user("x")], "reasoning_effort": "low"}),
        "meta.llama3"
    )
    .is_err());
    assert!(
        body(json!({"messages": [user("x")], "reasoning_effort": "none"}))
            .get("additionalModelRequestFields")
            .is_none()
    );
}

#[test]
fn cache_control_becomes_cache_points() {
    let cc = json!({"type": "ephemeral"});
    let b = body(json!({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Long system.", "cache_control": cc}]},
        {"role": "user", "content": [{"type": "text", "text": "doc", "cache_control": {"type": "ephemeral", "ttl": "1h"}}, {"type": "text", "text": "q"}]},
        {"role": "assistant", "content": "a", "cache_control": cc},
        {"role": "user", "content": [{"type": "text", "text": " ", "cache_control": cc}]}],
        "tools": [{"type": "function", "function": {"name": "get"}, "cache_control": cc}]}));
    assert_eq!(
        b["system"],
        json!([{"text": "Long system."}, {"cachePoint": {"type": "default"}}])
    );
    assert_eq!(
        b["messages"][0]["content"],
        json!([{"text": "doc"}, {"cachePoint": {"type": "default", "ttl": "1h"}}, {"text": "q"}])
    );
    assert_eq!(
        b["messages"][1]["content"],
        json!([{"text": "a"}, {"cachePoint": {"type": "default"}}])
    );
    assert_eq!(
        b["messages"].as_array().unwrap().len(),
        2,
        "a blank message is dropped with its mark"
    );
    assert_eq!(
        b["toolConfig"]["tools"][1],
        json!({"cachePoint": {"type": "default"}})
    );
    // auto_cache: after the tools (Claude only), the system prompt and the stable prefix,
    // each once the prefix is long enough, and only when the client placed none.
    let a = adapter_with(json!({"auto_cache": true}));
    let long = "word ".repeat(1000); // ~1250 tokens
    let r = json!({"messages": [{"role": "system", "content": long}, user("q1"), {"role": "assistant", "content": "a1"}, user("q2")],
        "tools": [func("get")], "response_format": {"type": "json_object"}});
    let b = body_for(&a, r.clone(), CLAUDE).unwrap();
    assert_eq!(
        b["toolConfig"]["tools"].as_array().unwrap().len(),
        2,
        "tools alone are too short"
    );
    assert_eq!(b["system"][1], json!({"cachePoint": {"type": "default"}}));
    assert_eq!(
        b["messages"][1]["content"],
        json!([{"text": "a1"}, {"cachePoint": {"type": "default"}}])
    );
    assert_eq!(
        b["messages"][2]["content"],
        json!([{"text": "q2"}]),
        "the newest turn is not marked"
    );
    let big_tool = json!({"type": "function", "function": {"name": "big", "description": long}});
    let b = body_for(&a, json!({"messages": [user("x")], "tools": [big_tool.clone()], "response_format": {"type": "json_object"}}), CLAUDE).unwrap();
    assert_eq!(
        b["toolConfig"]["tools"][1],
        json!({"cachePoint": {"type": "default"}}),
        "before the JSON tool"
    );
    let b = body_for(
        &a,
        json!({"messages": [user("x")], "tools": [big_tool]}),
        NOVA,
    )
    .unwrap();
    assert!(!b["toolConfig"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t.get("cachePoint").is_some()));
    let b = body_for(&a, r.clone(), NOVA).unwrap();
    assert_eq!(b["system"][1], json!({"cachePoint": {"type": "default"}}));
    let haiku = "us.anthropic.claude-haiku-4-5-20251001-v1:0";
    let b = body_for(&a, r.clone(), haiku).unwrap();
    assert_eq!(
        b["system"].as_array().unwrap().len(),
        1,
        "below Haiku 4.5's 4096-token minimum"
    );
    let b = body_for(&adapter(), r, CLAUDE).unwrap();
    assert_eq!(
        b["system"].as_array().unwrap().len(),
        1,
        "no auto_cache, no marks"
    );
    let marked = json!({"messages": [{"role": "system", "content": long}, {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": cc}]}]});
    assert_eq!(
        body_for(&a, marked, CLAUDE).unwrap()["system"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A top-level Anthropic-style marker asks for the same placement.
    let b = body(
        json!({"messages": [{"role": "system", "content": long}, user("x")], "cache_control": cc}),
    );
    assert_eq!(b["system"][1], json!({"cachePoint": {"type": "default"}}));
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

fn answer(req: &ChatRequest, body: Value) -> Value {
    let t = adapter()
        .chat_response(req, CLAUDE, body.to_string().as_bytes())
        .unwrap();
    serde_json::from_slice(&t.body).unwrap()
}

#[test]
fn non_stream_answers_translate() {
    let req = request(json!({"messages": [user("x")]}));
    let out = answer(
        &req,
        json!({"output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Let me see.", "signature": "sig"}}},
            {"reasoningContent": {"redactedContent": "ZW5j"}},
            {"text": "Checking "},
            {"toolUse": {"toolUseId": "tooluse_srv", "name": "nova_code_interpreter", "input": {"s": 1}, "type": "server_tool_use"}},
            {"toolResult": {"toolUseId": "tooluse_srv", "content": [{"json": {}}], "type": "nova_code_interpreter_result"}},
            {"citationsContent": {"content": [{"text": "both."}], "citations": []}},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get", "input": {"city": "Paris"}}},
            {"toolUse": {"toolUseId": "tooluse_2", "name": "now"}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 230, "outputTokens": 88, "totalTokens": 2338, "cacheReadInputTokens": 1920, "cacheWriteInputTokens": 100},
        "metrics": {"latencyMs": 1}}),
    );
    assert!(out["id"].as_str().unwrap().starts_with("chatcmpl-bedrock-"));
    assert_eq!(out["model"], CLAUDE);
    let msg = &out["choices"][0]["message"];
    assert_eq!(msg["content"], "Checking both.");
    assert_eq!(msg["reasoning_content"], "Let me see.");
    assert_eq!(
        msg["tool_calls"],
        json!([{"id": "tooluse_1", "type": "function", "function": {"name": "get", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "tooluse_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}])
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        (
            out["usage"]["prompt_tokens"].as_u64(),
            out["usage"]["completion_tokens"].as_u64(),
            out["usage"]["total_tokens"].as_u64()
        ),
        (Some(2250), Some(88), Some(2338))
    );
    assert_eq!(
        out["usage"]["prompt_tokens_details"],
        json!({"cached_tokens": 1920, "cache_write_tokens": 100})
    );
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("malformed_model_output", "stop"),
        ("malformed_tool_use", "stop"),
        ("something_new", "stop"),
    ] {
        let out = answer(
            &req,
            json!({"output": {"message": {"content": [{"text": "t"}]}}, "stopReason": stop, "usage": {}}),
        );
        assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
    }
    let a = adapter();
    for bad in [&b"<html>"[..], br#"{"message":"x"}"#, b""] {
        assert_eq!(
            a.chat_response(&req, CLAUDE, bad).unwrap_err().kind,
            FailureKind::Protocol
        );
    }
}

#[test]
fn json_answers_and_hidden_calls() {
    let req = request(json!({"messages": [user("x")], "response_format": {"type": "json_object"}}));
    let out = answer(
        &req,
        json!({"output": {"message": {"content": [{"toolUse": {"toolUseId": "t", "name": JSON_TOOL, "input": {"a": 1}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 1, "outputTokens": 2}}),
    );
    assert_eq!(out["choices"][0]["message"]["content"], "{\"a\":1}");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert!(out["choices"][0]["message"].get("tool_calls").is_none());
    let plain = request(json!({"messages": [user("x")]}));
    let out = answer(
        &plain,
        json!({"output": {"message": {"content": [{"toolUse": {"toolUseId": "t", "name": request::HISTORY_TOOL, "input": {}}}]}},
            "stopReason": "tool_use", "usage": {}}),
    );
    assert_eq!(out["choices"][0]["message"]["content"], "");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

fn error_of(status: u16, kind: Option<&str>, body: &str) -> UpstreamFailure {
    let mut h = http::HeaderMap::new();
    if let Some(k) = kind {
        h.insert(
            "x-amzn-errortype",
            format!("{k}:http://internal.amazon.com/coral/com.amazon.bedrock/")
                .parse()
                .unwrap(),
        );
    }
    adapter().error(status, &h, body.as_bytes())
}

#[test]
fn errors_map_to_openai_vocabulary() {
    // (status, x-amzn-errortype, message, error.type, error.code, retryable)
    type Row<'a> = (u16, Option<&'a str>, &'a str, &'a str, &'a str, bool);
    let cases: &[Row] = &[
        (
            400,
            Some("ValidationException"),
            "Malformed input request",
            "invalid_request_error",
            "invalid_request_error",
            false,
        ),
        (
            400,
            Some("ValidationException"),
            "Input is too long for requested model.",
            "invalid_request_error",
            "context_length_exceeded",
            false,
        ),
        (
            400,
            None,
            "The provided model identifier is invalid.",
            "invalid_request_error",
            "model_not_found",
            false,
        ),
        (
            403,
            Some("AccessDeniedException"),
            "You don't have access to the model",
            "permission_error",
            "permission_denied",
            false,
        ),
        (
            403,
            Some("UnrecognizedClientException"),
            "The security token included in the request is invalid.",
            "authentication_error",
            "invalid_api_key",
            false,
        ),
        (
            403,
            Some("InvalidSignatureException"),
            "The request signature we calculated does not match",
            "authentication_error",
            "invalid_api_key",
            false,
        ),
        (
            404,
            Some("ResourceNotFoundException"),
            "Model not found",
            "invalid_request_error",
            "model_not_found",
            false,
        ),
        (
            408,
            Some("ModelTimeoutException"),
            "timed out",
            "timeout_error",
            "timeout",
            true,
        ),
        (
            429,
            Some("ThrottlingException"),
            "Too many requests, please wait before trying again.",
            "rate_limit_error",
            "rate_limit_exceeded",
            true,
        ),
        (
            429,
            Some("ServiceQuotaExceededException"),
            "quota",
            "rate_limit_error",
            "rate_limit_exceeded",
            true,
        ),
        (
            429,
            Some("ModelNotReadyException"),
            "not ready",
            "server_error",
            "model_not_ready",
            true,
        ),
        (
            500,
            Some("InternalServerException"),
            "oops",
            "server_error",
            "server_error",
            true,
        ),
        (
            503,
            Some("ServiceUnavailableException"),
            "busy",
            "server_error",
            "service_unavailable",
            true,
        ),
    ];
    for (status, kind, message, ty, code, retry) in cases {
        let f = error_of(*status, *kind, &json!({ "message": message }).to_string());
        assert_eq!(f.kind, FailureKind::Status(*status), "{message}");
        assert_eq!(
            (f.error_type(), f.code()),
            (Some(*ty), Some(*code)),
            "{message}"
        );
        assert_eq!(f.retryable(), *retry, "{message}");
        assert!(f.message.contains(message));
    }
    // 424: "retry once" per §8.5, reported as a retryable 502.
    let f = error_of(
        424,
        Some("ModelErrorException"),
        r#"{"message":"The model failed"}"#,
    );
    assert_eq!(
        (f.kind, f.code()),
        (FailureKind::Status(502), Some("model_error"))
    );
    assert!(f.retryable() && f.message.contains("424"));
    // JSON `__type`, a `Message` key, non-JSON bodies, retry-after, secrets.
    let f = adapter().error(
        400,
        &http::HeaderMap::new(),
        br#"{"__type":"com.amazon.coral.validate#ValidationException","Message":"prompt is too long"}"#,
    );
    assert_eq!(f.code(), Some("context_length_exceeded"));
    let mut h = http::HeaderMap::new();
    h.insert("retry-after", "7".parse().unwrap());
    let f = adapter().error(502, &h, b"<html>Bad Gateway</html>");
    assert!(f.retryable() && f.message.contains("502") && f.message.contains("Bad Gateway"));
    assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
    let f = error_of(
        403,
        Some("UnrecognizedClientException"),
        &json!({"message": format!("bad key AKIDEXAMPLE secret {SECRET}")}).to_string(),
    );
    assert!(
        !f.message.contains(SECRET) && !f.message.contains("AKIDEXAMPLE"),
        "{}",
        f.message
    );
    let client = GatewayError::Upstream {
        failure: error_of(
            400,
            None,
            r#"{"message":"The provided model identifier is invalid."}"#,
        ),
        attempts: 1,
    };
    assert_eq!(
        (client.status(), client.code().as_str()),
        (400, "model_not_found")
    );
}

// ---------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------

fn ev(kind: &str, payload: Value) -> Vec<u8> {
    event_frame(kind, payload.to_string().as_bytes())
}

fn run(req: &ChatRequest, wire: &[u8]) -> Result<String, UpstreamFailure> {
    let mut t = adapter().translator_at(req, CLAUDE, 7);
    let mut out = BytesMut::new();
    t.feed(wire, &mut out)?;
    t.finish(&mut out)?;
    Ok(String::from_utf8(out.to_vec()).unwrap())
}

fn chunks(sse: &str) -> Vec<Value> {
    sse.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn full_stream() -> Vec<u8> {
    [
        ev("messageStart", json!({"role": "assistant", "p": "abc"})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hm."}}})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}})),
        ev("contentBlockStop", json!({"contentBlockIndex": 0})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"text": "Let me"}})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"text": " check."}})),
        ev("contentBlockStop", json!({"contentBlockIndex": 1})),
        ev("contentBlockStart", json!({"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "srv", "name": "nova_code_interpreter", "type": "server_tool_use"}}})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"s\":1}"}}})),
        ev("contentBlockStop", json!({"contentBlockIndex": 2})),
        ev("contentBlockStart", json!({"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "tooluse_Ab12", "name": "get_weather"}}})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{\"city\":"}}})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "\"Paris\"}"}}})),
        ev("contentBlockStop", json!({"contentBlockIndex": 3})),
        ev("contentBlockStart", json!({"contentBlockIndex": 4, "start": {"toolUse": {"toolUseId": "tooluse_B", "name": "now"}}})),
        ev("contentBlockStop", json!({"contentBlockIndex": 4})),
        ev("messageStop", json!({"stopReason": "tool_use"})),
        ev("metadata", json!({"usage": {"inputTokens": 412, "outputTokens": 37, "totalTokens": 1473, "cacheReadInputTokens": 1024}, "metrics": {"latencyMs": 790}})),
    ]
    .concat()
}

#[test]
fn stream_translates_events_and_waits_for_metadata() {
    let req = request(
        json!({"messages": [user("x")], "stream": true, "stream_options": {"include_usage": true}}),
    );
    let out = run(&req, &full_stream()).unwrap();
    assert!(out.ends_with("data: [DONE]\n\n") && out.matches("[DONE]").count() == 1);
    let c = chunks(&out);
    let id = &c[0]["id"];
    assert!(c
        .iter()
        .all(|c| &c["id"] == id && c["created"] == 7 && c["model"] == CLAUDE));
    let deltas: Vec<&Value> = c
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|ch| &ch["delta"]))
        .collect();
    assert_eq!(*deltas[0], json!({"role": "assistant", "content": ""}));
    assert_eq!(*deltas[1], json!({"reasoning_content": "Hm."}));
    assert_eq!(*deltas[2], json!({"content": "Let me"}));
    assert_eq!(*deltas[3], json!({"content": " check."}));
    assert_eq!(
        *deltas[4],
        json!({"tool_calls": [{"index": 0, "id": "tooluse_Ab12", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
    );
    assert_eq!(
        *deltas[5],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]})
    );
    assert_eq!(
        *deltas[6],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]})
    );
    assert_eq!(deltas[7]["tool_calls"][0]["index"], 1);
    assert_eq!(
        *deltas[8],
        json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        "no-argument call ends as {{}}"
    );
    assert_eq!(c[c.len() - 2]["choices"][0]["finish_reason"], "tool_calls");
    let usage = &c[c.len() - 1]["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(1436), Some(37))
    );
    // The finish waits for metadata: cut right after messageStop, nothing is finished yet.
    let wire = full_stream();
    let cut = wire.len() - ev("metadata", json!({"usage": {"inputTokens": 412, "outputTokens": 37, "totalTokens": 1473, "cacheReadInputTokens": 1024}, "metrics": {"latencyMs": 790}})).len();
    let mut t = adapter().translator_at(&req, CLAUDE, 7);
    let mut out = BytesMut::new();
    t.feed(&wire[..cut], &mut out).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("finish_reason\":\"tool_calls"));
    // ...and the end of the body finishes it without usage.
    t.finish(&mut out).unwrap();
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(
        text.contains("\"finish_reason\":\"tool_calls\"") && text.ends_with("data: [DONE]\n\n")
    );
    assert!(t.usage().is_none());
    // Without include_usage there is no usage chunk, but usage is still reported.
    let plain = request(json!({"messages": [user("x")], "stream": true}));
    let mut t = adapter().translator_at(&plain, CLAUDE, 7);
    let mut out = BytesMut::new();
    t.feed(&full_stream(), &mut out).unwrap();
    t.finish(&mut out).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("\"usage\""));
    assert_eq!(t.usage().unwrap().prompt_tokens, 1436);
}

#[test]
fn stream_json_answer_is_content() {
    let req = request(
        json!({"messages": [user("x")], "stream": true, "response_format": {"type": "json_object"}}),
    );
    let wire = [
        ev("messageStart", json!({"role": "assistant"})),
        ev("contentBlockStart", json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": JSON_TOOL}}})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"a\":"}}})),
        ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "1}"}}})),
        ev("contentBlockStop", json!({"contentBlockIndex": 0})),
        ev("messageStop", json!({"stopReason": "tool_use"})),
        ev("metadata", json!({"usage": {"inputTokens": 1, "outputTokens": 1}})),
    ]
    .concat();
    let out = run(&req, &wire).unwrap();
    let content: String = chunks(&out)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "{\"a\":1}");
    assert!(out.contains("\"finish_reason\":\"stop\"") && !out.contains("tool_calls"));
}

#[test]
fn stream_failures_before_and_after_output() {
    let req = request(json!({"messages": [user("x")], "stream": true}));
    let start = ev("messageStart", json!({"role": "assistant"}));
    let throttled = exception_frame("throttlingException", br#"{"message":"Too many requests"}"#);
    let f = run(&req, &[start.clone(), throttled.clone()].concat()).unwrap_err();
    assert_eq!(
        (f.kind, f.code()),
        (FailureKind::Status(429), Some("rate_limit_exceeded"))
    );
    assert!(f.retryable());
    let model_err = exception_frame(
        "modelStreamErrorException",
        br#"{"message":"boom","originalStatusCode":500}"#,
    );
    let f = run(&req, &[start.clone(), model_err].concat()).unwrap_err();
    assert!(f.retryable(), "a model stream error may fail over");
    let text = ev(
        "contentBlockDelta",
        json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
    );
    let out = run(&req, &[start.clone(), text.clone(), throttled].concat()).unwrap();
    assert!(out.contains("\"content\":\"Hel\""));
    let last_event = out.trim_end().rsplit("\n\n").nth(1).unwrap();
    let e: Value = serde_json::from_str(last_event.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    assert!(out.ends_with("data: [DONE]\n\n") && out.matches("[DONE]").count() == 1);
    // Generic `:message-type: error` frames.
    let generic = eventstream::encode(
        &[
            (
                ":message-type",
                eventstream::HeaderValue::String("error".into()),
            ),
            (
                ":error-code",
                eventstream::HeaderValue::String("InternalFailure".into()),
            ),
            (
                ":error-message",
                eventstream::HeaderValue::String("bad".into()),
            ),
        ],
        b"",
    );
    assert!(run(&req, &generic).unwrap_err().retryable());
    // Cut before messageStop: truncated, whether between frames or inside one.
    let f = run(&req, &[start.clone(), text.clone()].concat()).unwrap_err();
    assert_eq!(f.kind, FailureKind::Protocol);
    let partial = [start.clone(), text[..5].to_vec()].concat();
    assert!(run(&req, &partial).unwrap_err().message.contains("inside"));
    // A corrupted frame: a protocol failure before output, an error event after.
    let mut bad = text.clone();
    let n = bad.len();
    bad[n - 6] ^= 1;
    assert_eq!(
        run(&req, &[start.clone(), bad.clone()].concat())
            .unwrap_err()
            .kind,
        FailureKind::Protocol
    );
    let out = run(&req, &[start, text, bad].concat()).unwrap();
    assert!(out.contains("checksum") && out.ends_with("data: [DONE]\n\n"));
    // A JSON body where frames were expected.
    assert_eq!(
        run(&req, br#"{"message":"not a stream"}"#)
            .unwrap_err()
            .kind,
        FailureKind::Protocol
    );
}

#[test]
fn stream_split_anywhere_gives_identical_output() {
    let req = request(
        json!({"messages": [user("x")], "stream": true, "stream_options": {"include_usage": true}}),
    );
    let wire = full_stream();
    let translate = |parts: &[&[u8]]| {
        let mut t = adapter().translator_with(&req, CLAUDE, 7, "chatcmpl-fixed");
        let mut out = BytesMut::new();
        for p in parts {
            t.feed(p, &mut out).unwrap();
        }
        t.finish(&mut out).unwrap();
        out.freeze()
    };
    let whole = translate(&[&wire]);
    for i in 0..=wire.len() {
        assert_eq!(translate(&[&wire[..i], &wire[i..]]), whole, "split at {i}");
    }
    let bytes: Vec<&[u8]> = wire.chunks(1).collect();
    assert_eq!(translate(&bytes), whole);
}

#[test]
fn secrets_never_reach_debug_output() {
    let a = adapter_with(
        json!({"aws": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET, "session_token": "sess-token-value"}}),
    );
    let d = format!("{:?}", a.auth);
    assert!(!d.contains(SECRET) && !d.contains("sess-token-value"));
    let cfg_debug = format!("{:?}", cfg(json!({})));
    assert!(!cfg_debug.contains(SECRET));
}
