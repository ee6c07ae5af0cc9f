"""The official openai SDK through llmux to `llmux mock` speaking Anthropic Messages and
Gemini generateContent: llmux translates both directions, streams included."""

import base64
import json

import openai
import pytest
from openai import OpenAI
from conftest import Gateway
from sdk_flows import parallel_tool_calls_then_tool_result_turn

FLAVORS = ["anthropic", "gemini"]

# A 1x1 PNG.
PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


@pytest.fixture(scope="module")
def gateway(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: anthropic, kind: anthropic, base_url: "{mock.url}", api_key: sk-ant-test }}
  - {{ name: gemini, kind: gemini, base_url: "{mock.url}/v1beta", api_key: gm-test }}
models:
  - {{ name: anthropic, targets: [ {{ provider: anthropic, model: claude-haiku-4-5 }} ] }}
  - {{ name: gemini, targets: [ {{ provider: gemini, model: gemini-2.5-flash }} ] }}
  - {{ name: gemini-blocked, targets: [ {{ provider: gemini, model: "gemini-2.5-flash@blocked" }} ] }}
"""
    g = Gateway(cfg)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def client(gateway):
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_plain_text(client, flavor):
    raw = client.chat.completions.with_raw_response.create(
        model=flavor,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
    )
    out = raw.parse()
    assert out.choices[0].message.content.startswith("mock reply to: Hello there")
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert raw.headers["x-llmux-provider"] == flavor


@pytest.mark.parametrize("flavor", FLAVORS)
def test_streamed_text_matches_non_stream(client, flavor):
    messages = [{"role": "user", "content": "Tell me about foxes"}]
    full = client.chat.completions.create(model=flavor, messages=messages)
    text, usage, finish = "", None, None
    for chunk in client.chat.completions.create(
        model=flavor, messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == full.choices[0].message.content
    assert finish == "stop"
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.completion_tokens == full.usage.completion_tokens


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_then_tool_result_turn(client, flavor, stream):
    parallel_tool_calls_then_tool_result_turn(client, flavor, stream)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_json_schema_output_validates(client, flavor):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        model=flavor,
        messages=[{"role": "user", "content": "Describe a person"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    data = json.loads(out.choices[0].message.content)
    assert set(data) == {"name", "age", "tags"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int) and isinstance(data["tags"], list)
    assert out.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_image_input(client, flavor, mock):
    out = client.chat.completions.create(
        model=flavor,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
    )
    assert out.choices[0].message.content.startswith("mock reply to: What is in this image?")
    assert out.usage.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_safety_block_is_a_400_content_filter(client, stream):
    with pytest.raises(openai.BadRequestError) as err:
        r = client.chat.completions.create(
            model="gemini-blocked", messages=[{"role": "user", "content": "something unsafe"}], stream=stream
        )
        if stream:
            list(r)
    assert err.value.status_code == 400
    assert err.value.code == "content_filter"
    assert "SAFETY" in err.value.message


def test_unsupported_parameter_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="anthropic", messages=[{"role": "user", "content": "x"}], n=2)
    assert err.value.param == "n"
    assert "anthropic" in err.value.message
