"""The official openai SDK, pointed at llmux, against the fake OpenAI provider."""

import json

import openai
import pytest
from openai import OpenAI

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@pytest.fixture(scope="module")
def client(gateway):
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def test_non_stream_completion_with_llmux_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Hello there"}]
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content.startswith("mock reply to: Hello there")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert raw.headers["x-llmux-provider"] == "openai"
    assert raw.headers["x-llmux-model"] == "gpt-4o-mini"
    assert raw.headers["x-llmux-attempts"] == "1"
    assert raw.headers["x-request-id"]


def test_request_id_is_kept(client):
    raw = client.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "my-trace-42"},
    )
    assert raw.headers["x-request-id"] == "my-trace-42"


def test_stream_with_include_usage(client):
    messages = [{"role": "user", "content": "Tell me a short story about a fox"}]
    full = client.chat.completions.create(model="chat", messages=messages)
    stream = client.chat.completions.create(
        model="chat", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish = "", None, None
    chunks = 0
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert chunks > 3, "the answer arrives in several chunks"
    assert text == full.choices[0].message.content
    assert finish == "stop"
    assert usage is not None and usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.completion_tokens == full.usage.completion_tokens


def test_stream_without_include_usage_sends_no_usage(client):
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert all(chunk.usage is None for chunk in stream)


def test_parallel_tool_calls_streamed_are_assembled_by_the_sdk(client):
    messages = [{"role": "user", "content": "Weather in two cities?"}]
    kwargs = dict(model="chat", messages=messages, tools=[WEATHER_TOOL], parallel_tool_calls=True)
    full = client.chat.completions.create(**kwargs)
    expected = [(c.function.name, json.loads(c.function.arguments)) for c in full.choices[0].message.tool_calls]
    assert expected == [("get_weather", {"city": "city-1"}), ("get_weather", {"city": "city-2"})]

    calls, finish = {}, None
    fragments = 0
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        for tc in delta.tool_calls or []:
            fragments += 1
            call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = tc.id or call["id"]
            if tc.function and tc.function.name:
                call["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                call["arguments"] += tc.function.arguments
    assert finish == "tool_calls"
    assert fragments > 2, "arguments arrive in fragments"
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] != calls[1]["id"]
    got = [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in (0, 1)]
    assert got == expected

    # The SDK's own stream helper assembles the same calls.
    with client.chat.completions.stream(**kwargs) as s:
        final = s.get_final_completion()
    assert [(c.function.name, json.loads(c.function.arguments)) for c in final.choices[0].message.tool_calls] == expected


def test_tool_result_turn_round_trips(client):
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    out = client.chat.completions.create(model="chat", messages=messages, tools=[WEATHER_TOOL])
    assert out.choices[0].message.content == "tool results received: 1"


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert "chat" in ids and "fb-429" in ids
    assert "openai/gpt-4o-mini" in ids


def test_direct_provider_model_addressing(client):
    raw = client.chat.completions.with_raw_response.create(
        model="backup/some-local-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-llmux-provider"] == "backup"
    assert raw.parse().model == "some-local-model"
