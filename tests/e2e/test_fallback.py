"""The attempt loop: large bodies, fallback on 429 / 5xx / unreachable / hung upstreams,
non-retryable errors, deadlines, and failures after the stream has started."""

import json

import pytest
from conftest import fnv1a64

MIB = 1024 * 1024


def big_prompt(size=MIB):
    # 1 MiB of text, not a repeated single byte, so truncation anywhere changes the hash.
    words = "the quick brown fox jumps over the lazy dog 0123456789 ".encode()
    data = (words * (size // len(words) + 1))[:size]
    return data.decode()


def chat_body(model, content, stream=False):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    return body


def sse_events(body: bytes):
    return [e[len("data: "):] for e in body.decode().split("\n\n") if e.startswith("data: ")]


def test_one_mib_body_is_forwarded_whole(gateway, mock):
    prompt = big_prompt()
    status, headers, body = gateway.request("POST", "/v1/chat/completions", chat_body("chat", prompt))
    assert status == 200, body[:300]
    content = json.loads(body)["choices"][0]["message"]["content"]
    assert f"len={MIB} fnv={fnv1a64(prompt.encode())}" in content
    assert headers["x-llmux-attempts"] == "1"


@pytest.mark.parametrize("model", ["fb-429", "fb-500", "fb-dead"])
def test_one_mib_body_falls_over_to_the_second_target(gateway, mock, model):
    prompt = big_prompt()
    mock.reset()
    status, headers, body = gateway.request("POST", "/v1/chat/completions", chat_body(model, prompt))
    assert status == 200, body[:300]
    assert headers["x-llmux-attempts"] == "2"
    assert headers["x-llmux-provider"] == "backup"
    content = json.loads(body)["choices"][0]["message"]["content"]
    assert f"len={MIB} fnv={fnv1a64(prompt.encode())}" in content
    seen = [r for r in mock.requests() if r["path"] == "/v1/chat/completions"]
    if model == "fb-dead":
        assert len(seen) == 1  # the first target was never reached
    else:
        assert len(seen) == 2
        assert seen[0]["body_bytes"] > MIB and seen[1]["body_bytes"] > MIB
        assert seen[0]["headers"]["authorization"] == "present"


def test_stream_falls_over_before_anything_is_sent(gateway):
    status, headers, body = gateway.request("POST", "/v1/chat/completions", chat_body("fb-429", "hi", stream=True))
    assert status == 200
    assert headers["x-llmux-attempts"] == "2"
    assert headers["content-type"].startswith("text/event-stream")
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    assert not any('"error"' in e for e in events)


def test_hung_upstream_times_out_and_falls_over(gateway):
    status, headers, body = gateway.request("POST", "/v1/chat/completions", chat_body("fb-hang", "hi"))
    assert status == 200, body
    assert headers["x-llmux-attempts"] == "2"


def test_non_retryable_provider_error_reaches_the_client_unchanged(gateway, mock):
    mock.reset()
    status, headers, body = gateway.request("POST", "/v1/chat/completions", chat_body("bad-request", "hi"))
    assert status == 400
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error"
    assert err["message"]
    assert len([r for r in mock.requests() if r["path"] == "/v1/chat/completions"]) == 1, "no fallback on a 400"


def test_all_attempts_failing_is_upstream_error(gateway):
    status, _, body = gateway.request("POST", "/v1/chat/completions", chat_body("all-fail", "hi"))
    assert status in (502, 503)
    err = json.loads(body)["error"]
    assert err["code"] == "upstream_error"
    # Two targets, max_attempts 3: the first target is tried again after a short backoff.
    assert "3 attempts" in err["message"]


def test_provider_429_becomes_503_with_retry_after(gateway):
    status, headers, body = gateway.request("POST", "/v1/chat/completions", chat_body("all-429", "hi"))
    assert status == 503
    assert json.loads(body)["error"]["code"] == "upstream_error"
    assert headers.get("retry-after") == "7"


def test_stream_cut_after_first_byte_ends_with_error_event_and_done(gateway):
    status, headers, body = gateway.request("POST", "/v1/chat/completions", chat_body("mid-drop", "hello", stream=True))
    assert status == 200
    assert headers["x-llmux-attempts"] == "1", "no retry once bytes were sent"
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "upstream_error"


def test_stream_stall_past_idle_timeout_is_a_timeout_event(gateway):
    status, _, body = gateway.request("POST", "/v1/chat/completions", chat_body("mid-stall", "hello", stream=True))
    assert status == 200
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "timeout"
