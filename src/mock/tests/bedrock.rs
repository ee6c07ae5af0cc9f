//! Bedrock Converse / ConverseStream and the event-stream encoder.

use super::{get, mock, s, send, with, Headers, Resp};
use crate::mock::behavior::reply_text;
use crate::mock::eventstream::{self, decode_all, Decoded};
use base64::Engine;
use serde_json::{json, Value};

const SIGV4: Headers = &[
    (
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
    ),
    ("x-amz-date", "20260101T120000Z"),
];
const WRONG_DAY: Headers = &[
    (
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
    ),
    ("x-amz-date", "20260102T000000Z"),
];
const S3_SCOPE: Headers = &[
    (
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
    ),
    ("x-amz-date", "20260101T120000Z"),
];
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1%3A0";

fn path(model: &str, op: &str) -> String {
    format!("/model/{model}/{op}")
}

fn converse_body(extra: Value) -> Value {
    let base = json!({"system": [{"text": "Be brief."}],
                      "messages": [{"role": "user", "content": [{"text": "Hello "}, {"text": "there"}]}]});
    with(base, extra)
}

fn tool_config() -> Value {
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    json!({"tools": [{"toolSpec": {"name": "get_weather", "description": "d", "inputSchema": {"json": schema}}}]})
}

fn frames(r: &Resp) -> Vec<(String, Value)> {
    let decoded = decode_all(&r.body).expect("valid event stream");
    decoded
        .into_iter()
        .map(|d| {
            let kind = d
                .headers
                .iter()
                .find(|(k, _)| k == ":event-type" || k == ":exception-type")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (
                kind,
                serde_json::from_slice(&d.payload).unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// Frames recorded from Bedrock (corpus `pai-test_bedrock_model_code_execution_tool_stream`).
const RECORDED: [&str; 3] = [
    "AAAAqgAAAFLa0GiGCzpldmVudC10eXBlBwAMbWVzc2FnZVN0YXJ0DTpjb250ZW50LXR5cGUHABBhcHBsaWNhdGlvbi9qc29uDTptZXNzYWdlLXR5cGUHAAVldmVudHsicCI6ImFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJDREVGR0hJSktMTU5PUFFSUyIsInJvbGUiOiJhc3Npc3RhbnQifXIDPns=",
    "AAAA0AAAAFcZ2GRnCzpldmVudC10eXBlBwARY29udGVudEJsb2NrRGVsdGENOmNvbnRlbnQtdHlwZQcAEGFwcGxpY2F0aW9uL2pzb24NOm1lc3NhZ2UtdHlwZQcABWV2ZW50eyJjb250ZW50QmxvY2tJbmRleCI6MCwiZGVsdGEiOnsidG9vbFVzZSI6eyJpbnB1dCI6IntcInNuaXBwZXRcIjpcIjEyMzQgKiA1Njc4XCJ9In19LCJwIjoiYWJjZGVmZ2hpamtsbSJ9gZ1ffw==",
    "AAAA3QAAAE6FIwgWCzpldmVudC10eXBlBwAIbWV0YWRhdGENOmNvbnRlbnQtdHlwZQcAEGFwcGxpY2F0aW9uL2pzb24NOm1lc3NhZ2UtdHlwZQcABWV2ZW50eyJtZXRyaWNzIjp7ImxhdGVuY3lNcyI6MTYwMH0sInAiOiJhYmMiLCJ1c2FnZSI6eyJpbnB1dFRva2VucyI6MTAwMiwib3V0cHV0VG9rZW5zIjo1OSwic2VydmVyVG9vbFVzYWdlIjp7fSwidG90YWxUb2tlbnMiOjEwNjF9fS8T5as=",
];

#[test]
fn encoder_matches_recorded_frames_byte_for_byte() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let payloads = [
        json!({"p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS", "role": "assistant"}),
        json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"snippet\":\"1234 * 5678\"}"}}, "p": "abcdefghijklm"}),
        json!({"metrics": {"latencyMs": 1600}, "p": "abc", "usage": {"inputTokens": 1002, "outputTokens": 59, "serverToolUsage": {}, "totalTokens": 1061}}),
    ];
    for ((recorded, payload), kind) in
        RECORDED
            .iter()
            .zip(payloads)
            .zip(["messageStart", "contentBlockDelta", "metadata"])
    {
        let recorded = b64.decode(recorded).expect("base64");
        assert_eq!(eventstream::event(kind, &payload), recorded, "{kind}");
        let decoded = decode_all(&recorded).expect("decodes");
        assert_eq!(
            decoded[0].headers[0],
            (":event-type".to_string(), kind.to_string())
        );
    }
    // Prelude CRC over the two lengths, message CRC over everything before it.
    let f = eventstream::frame(&[(":message-type", "event")], b"{}");
    assert_eq!(
        u32::from_be_bytes(f[0..4].try_into().unwrap()) as usize,
        f.len()
    );
    assert_eq!(
        u32::from_be_bytes(f[8..12].try_into().unwrap()),
        crc32fast::hash(&f[..8])
    );
    let n = f.len();
    assert_eq!(
        u32::from_be_bytes(f[n - 4..].try_into().unwrap()),
        crc32fast::hash(&f[..n - 4])
    );
    let mut corrupt = f.clone();
    corrupt[n - 5] ^= 1;
    assert!(decode_all(&corrupt).is_err());
    assert_eq!(
        decode_all(&f).unwrap(),
        vec![Decoded {
            headers: vec![(":message-type".into(), "event".into())],
            payload: b"{}".to_vec()
        }]
    );
}

#[tokio::test]
async fn converse_text_and_stream() {
    let m = mock().await;
    let r = send(
        &m,
        "POST",
        &path(MODEL, "converse"),
        SIGV4,
        &converse_body(json!({})),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("x-amzn-requestid")
        .is_some_and(|id| id.len() == 36));
    let v = r.json();
    assert_eq!(s(&v, "/output/message/role"), "assistant");
    assert_eq!(
        s(&v, "/output/message/content/0/text"),
        reply_text("Hello there")
    );
    assert_eq!(v["stopReason"], "end_turn");
    let u = &v["usage"];
    // system 9 chars + 11 -> ceil(20 / 4) = 5, + 4 per message (system, user).
    assert_eq!(u["inputTokens"], 13);
    assert_eq!(
        u["totalTokens"],
        u["inputTokens"].as_u64().unwrap() + u["outputTokens"].as_u64().unwrap()
    );
    assert!(u.get("cacheReadInputTokens").is_none());
    assert!(v["metrics"]["latencyMs"].is_u64());

    let r = send(
        &m,
        "POST",
        &path(MODEL, "converse-stream"),
        SIGV4,
        &converse_body(json!({})),
    )
    .await;
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    assert!(r.complete && r.chunks.len() > 4, "one HTTP chunk per frame");
    let events = frames(&r);
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names[0], "messageStart");
    assert_eq!(
        names[names.len() - 3..],
        ["contentBlockStop", "messageStop", "metadata"]
    );
    assert!(
        !names.contains(&"contentBlockStart"),
        "text blocks have no start event"
    );
    let text: String = events.iter().map(|e| s(&e.1, "/delta/text")).collect();
    assert_eq!(text, s(&v, "/output/message/content/0/text"));
    assert!(
        events.iter().all(|e| e.1["p"].is_string()),
        "AWS pads every event"
    );
    let (stop, meta) = (&events[events.len() - 2].1, &events[events.len() - 1].1);
    assert_eq!(stop["stopReason"], "end_turn");
    assert_eq!(meta["usage"], v["usage"]);
    // Exact bytes: headers in AWS's order, JSON keys alphabetical.
    let raw = decode_all(&r.body).unwrap();
    let hs: Vec<&str> = raw[0].headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(hs, [":event-type", ":content-type", ":message-type"]);
    assert!(String::from_utf8_lossy(&raw[0].payload).starts_with(r#"{"p":"#));
}

#[tokio::test]
async fn converse_tool_use_and_results() {
    let m = mock().await;
    let body = converse_body(json!({"toolConfig": tool_config()}));
    let v = send(&m, "POST", &path(MODEL, "converse"), SIGV4, &body)
        .await
        .json();
    assert_eq!(v["stopReason"], "tool_use");
    let content = v["output"]["message"]["content"]
        .as_array()
        .cloned()
        .unwrap();
    let inputs: Vec<&Value> = content.iter().map(|b| &b["toolUse"]["input"]).collect();
    assert_eq!(
        inputs,
        [&json!({"city": "city-1"}), &json!({"city": "city-2"})]
    );
    let id = s(&content[0], "/toolUse/toolUseId");
    assert!(id.starts_with("tooluse_") && id.len() == 30, "{id}");
    let r = send(&m, "POST", &path(MODEL, "converse-stream"), SIGV4, &body).await;
    let events = frames(&r);
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e.0 == "contentBlockStart")
        .map(|e| &e.1)
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[1]["contentBlockIndex"], 1);
    assert_eq!(starts[1]["start"]["toolUse"]["name"], "get_weather");
    let args: String = events
        .iter()
        .filter(|e| e.1["contentBlockIndex"] == 1)
        .map(|e| s(&e.1, "/delta/toolUse/input"))
        .collect();
    assert_eq!(args, r#"{"city":"city-2"}"#);
    assert_eq!(events[events.len() - 2].1["stopReason"], "tool_use");
    // Forced tool: one call. Then the results turn.
    let mut forced = tool_config();
    forced["toolChoice"] = json!({"tool": {"name": "get_weather"}});
    let one = send(
        &m,
        "POST",
        &path(MODEL, "converse"),
        SIGV4,
        &converse_body(json!({"toolConfig": forced})),
    )
    .await
    .json();
    assert_eq!(
        one["output"]["message"]["content"].as_array().map(Vec::len),
        Some(1)
    );
    let use_ = |id: &str| json!({"toolUse": {"toolUseId": id, "name": "get_weather", "input": {"city": "x"}}});
    let result = |id: &str| json!({"toolResult": {"toolUseId": id, "content": [{"text": "sunny"}], "status": "success"}});
    let messages = json!([{"role": "user", "content": [{"text": "weather?"}]},
                          {"role": "assistant", "content": [use_("t1"), use_("t2")]},
                          {"role": "user", "content": [result("t1"), result("t2")]}]);
    let body = json!({"messages": messages, "toolConfig": tool_config()});
    let v = send(&m, "POST", &path(MODEL, "converse"), SIGV4, &body)
        .await
        .json();
    assert_eq!(
        s(&v, "/output/message/content/0/text"),
        "tool results received: 2"
    );
}

#[tokio::test]
async fn converse_validation_errors() {
    let m = mock().await;
    let check = |body: Value, message: &'static str| {
        let m = &m;
        async move {
            let r = send(m, "POST", &path(MODEL, "converse"), SIGV4, &body).await;
            assert_eq!(r.status, 400, "{message}");
            assert_eq!(
                r.header("x-amzn-errortype"),
                Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/")
            );
            let got = s(&r.json(), "/message").to_string();
            assert!(got.starts_with(message), "{got}");
        }
    };
    let text = |t: &str| json!([{ "text": t }]);
    check(
        json!({"messages": [{"role": "assistant", "content": text("a")}]}),
        "A conversation must start with a user message.",
    )
    .await;
    check(json!({"messages": [{"role": "user", "content": text("a")}, {"role": "user", "content": text("b")}]}), "A conversation must alternate between user and assistant roles.").await;
    check(
        json!({"messages": [{"role": "user", "content": text(" ")}]}),
        "The text field in the ContentBlock object at messages.0.content.0 is blank.",
    )
    .await;
    check(
        json!({"messages": [{"role": "user", "content": []}]}),
        "The content field in the Message object at messages.0.content is empty.",
    )
    .await;
    check(
        json!({"messages": [{"role": "system", "content": text("a")}]}),
        "1 validation error detected: Value 'system' at 'messages.1.member.role'",
    )
    .await;
    let tool_use = json!([{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]);
    let history = json!([{"role": "user", "content": text("a")}, {"role": "assistant", "content": tool_use},
                         {"role": "user", "content": text("b")}]);
    check(
        json!({ "messages": history.clone() }),
        "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
    )
    .await;
    check(
        json!({"messages": history, "toolConfig": tool_config()}),
        "Expected toolResult blocks at messages.2.content for the following Ids: t1",
    )
    .await;
    let mut bad_name = tool_config();
    bad_name["tools"][0]["toolSpec"]["name"] = "get weather".into();
    check(converse_body(json!({ "toolConfig": bad_name })), "1 validation error detected: Value 'get weather' at 'toolConfig.tools.1.member.toolSpec.name'").await;
    check(converse_body(json!({"inferenceConfig": {"temperature": 1.5}})), "1 validation error detected: Value '1.5' at 'inferenceConfig.temperature' failed to satisfy constraint: Member must have value less than or equal to 1").await;
    check(
        converse_body(json!({"inferenceConfig": {"maxTokens": 0}})),
        "1 validation error detected: Value '0' at 'inferenceConfig.maxTokens'",
    )
    .await;
}

#[tokio::test]
async fn sigv4_shape_is_required() {
    let m = mock().await;
    let body = converse_body(json!({}));
    let r = send(&m, "POST", &path(MODEL, "converse"), &[], &body).await;
    assert_eq!(r.status, 403);
    let kind = r.header("x-amzn-errortype").unwrap_or("");
    assert!(kind.starts_with("UnrecognizedClientException:"), "{kind}");
    assert_eq!(
        r.json(),
        json!({"message": "The security token included in the request is invalid."})
    );
    let r = send(&m, "POST", &path(MODEL, "converse"), &SIGV4[..1], &body).await;
    assert!(r
        .header("x-amzn-errortype")
        .unwrap_or("")
        .starts_with("IncompleteSignatureException:"));
    let r = send(&m, "POST", &path(MODEL, "converse"), WRONG_DAY, &body).await;
    assert!(s(&r.json(), "/message").starts_with("Date in Credential scope does not match"));
    let r = send(&m, "POST", &path(MODEL, "converse"), S3_SCOPE, &body).await;
    assert_eq!(
        (r.status, s(&r.json(), "/message")),
        (
            403,
            "Credential should be scoped to correct service: 'bedrock'. "
        )
    );
    let api_key: Headers = &[("authorization", "Bearer bedrock-api-key")];
    assert_eq!(
        send(&m, "POST", &path(MODEL, "converse"), api_key, &body)
            .await
            .status,
        200
    );
    let probe = get(&m, "/async-invoke?maxResults=1", SIGV4).await;
    assert_eq!(probe.json(), json!({"asyncInvokeSummaries": []}));
    assert_eq!(get(&m, "/async-invoke", &[]).await.status, 403);
}

#[tokio::test]
async fn registered_credentials_turn_on_signature_verification() {
    let m = mock().await;
    // The gateway's known answer (tests of `providers::bedrock::auth`): a Converse call
    // signed with AKIDEXAMPLE at 2026-01-01T00:00:00Z.
    let kat = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse";
    let body = json!({"messages": [{"role": "user", "content": [{"text": "Hello!"}]}]});
    let signed: Headers = &[
        ("content-type", "application/json"),
        ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
        ("x-amz-date", "20260101T000000Z"),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=a342563fc09d8e7e9f118a66165947f6585fe093d4f135a713c11148fa7d1781"),
    ];
    let tampered: Headers = &[
        ("content-type", "application/json"),
        ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
        ("x-amz-date", "20260101T000000Z"),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=b342563fc09d8e7e9f118a66165947f6585fe093d4f135a713c11148fa7d1781"),
    ];
    // Shape only until credentials are registered.
    assert_eq!(send(&m, "POST", kat, tampered, &body).await.status, 200);
    let register = |id: &str, token: Option<&str>| {
        json!({"access_key_id": id,
               "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
               "session_token": token})
    };
    let r = send(
        &m,
        "POST",
        "/_mock/aws-credentials",
        &[],
        &json!({"access_key_id": "A"}),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = send(
        &m,
        "POST",
        "/_mock/aws-credentials",
        &[],
        &register("AKIDOTHER", None),
    )
    .await;
    assert_eq!(r.json(), json!({"registered": 1}));
    // AKIDEXAMPLE is not registered (yet).
    let r = send(&m, "POST", kat, signed, &body).await;
    assert_eq!(r.status, 403);
    assert!(r
        .header("x-amzn-errortype")
        .unwrap_or("")
        .starts_with("UnrecognizedClientException:"));
    send(
        &m,
        "POST",
        "/_mock/aws-credentials",
        &[],
        &register("AKIDEXAMPLE", None),
    )
    .await;
    let r = send(&m, "POST", kat, signed, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(s(&r.json(), "/output/message/content/0/text").starts_with("mock reply to: Hello!"));
    let r = send(&m, "POST", kat, tampered, &body).await;
    assert_eq!(r.status, 403);
    assert!(r
        .header("x-amzn-errortype")
        .unwrap_or("")
        .starts_with("InvalidSignatureException:"));
    // Another body under the same signature.
    let other = json!({"messages": [{"role": "user", "content": [{"text": "Hello?"}]}]});
    assert_eq!(send(&m, "POST", kat, signed, &other).await.status, 403);
    // A session token the credential does not have.
    let with_token: Headers = &[
        ("content-type", "application/json"),
        ("host", "bedrock-runtime.us-east-1.amazonaws.com"),
        ("x-amz-date", "20260101T000000Z"),
        ("x-amz-security-token", "forged"),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=a342563fc09d8e7e9f118a66165947f6585fe093d4f135a713c11148fa7d1781"),
    ];
    let r = send(&m, "POST", kat, with_token, &body).await;
    assert!(r
        .header("x-amzn-errortype")
        .unwrap_or("")
        .starts_with("UnrecognizedClientException:"));
    // The log names the access key (never the signature or token).
    let log = get(&m, "/_mock/requests", &[]).await.json();
    let last = &log["requests"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["aws_access_key_id"], "AKIDEXAMPLE");
    assert_eq!(last["headers"]["x-amz-security-token"], "present");
    assert_eq!(last["headers"]["authorization"], "present");
}

#[tokio::test]
async fn errors_directives_cache_and_stream_exceptions() {
    let m = mock().await;
    let body = converse_body(json!({}));
    for (status, kind) in [
        (429, "ThrottlingException"),
        (500, "InternalServerException"),
        (503, "ServiceUnavailableException"),
        (400, "ValidationException"),
    ] {
        let model = format!("{MODEL}%40status%3D{status}");
        let r = send(&m, "POST", &path(&model, "converse"), SIGV4, &body).await;
        assert_eq!(r.status, status);
        let header = r.header("x-amzn-errortype").unwrap_or("");
        assert_eq!(header.split(':').next(), Some(kind));
        assert!(r.json()["message"].is_string());
    }
    let log = get(&m, "/_mock/requests", &[]).await.json();
    assert_eq!(
        log["requests"][0]["model"],
        "anthropic.claude-3-haiku-20240307-v1:0@status=429"
    );
    assert_eq!(log["requests"][0]["headers"]["authorization"], "present");
    // An exception frame after the first delta.
    let model = format!("{MODEL}%40exception%3DthrottlingException");
    let r = send(&m, "POST", &path(&model, "converse-stream"), SIGV4, &body).await;
    let raw = decode_all(&r.body).unwrap();
    let last = raw.last().unwrap();
    assert!(last
        .headers
        .contains(&(":message-type".into(), "exception".into())));
    assert!(last
        .headers
        .contains(&(":exception-type".into(), "throttlingException".into())));
    assert_eq!(raw.len(), 3, "messageStart, one delta, the exception");
    // cachePoint blocks: written once, then read.
    let system = json!([{"text": "z".repeat(6000)}, {"cachePoint": {"type": "default"}}]);
    let cached = converse_body(json!({ "system": system }));
    let u1 = send(&m, "POST", &path(MODEL, "converse"), SIGV4, &cached)
        .await
        .json()["usage"]
        .clone();
    assert_eq!(
        (
            u1["cacheWriteInputTokens"].as_u64(),
            u1["cacheReadInputTokens"].as_u64()
        ),
        (Some(1504), Some(0))
    );
    let u2 = send(&m, "POST", &path(MODEL, "converse"), SIGV4, &cached)
        .await
        .json()["usage"]
        .clone();
    assert_eq!(
        (
            u2["cacheWriteInputTokens"].as_u64(),
            u2["cacheReadInputTokens"].as_u64()
        ),
        (Some(0), Some(1504))
    );
    assert_eq!(u2["inputTokens"], 7);
    assert_eq!(
        u2["totalTokens"],
        7 + 1504 + u2["outputTokens"].as_u64().unwrap()
    );
    let r = send(&m, "POST", "/model/x/invoke", SIGV4, &body).await;
    assert_eq!(r.status, 404);
}
