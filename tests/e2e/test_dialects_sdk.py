"""The official openai SDK through llmux to `llmux mock` impersonating every OpenAI dialect
and Bedrock: Mistral, DeepSeek, Qwen (DashScope compatible mode), Azure OpenAI, AWS Bedrock
(Converse / ConverseStream event stream, SigV4) and a generic local OpenAI-compatible server.

The mock validates like each real provider (Mistral's 9-character tool-call ids and closed
schema, Azure's api-version/api-key, DeepSeek's tool pairing, Converse's alternation and
toolConfig rules, SigV4 header shape), so a request the gateway builds wrongly fails here.
"""

import json
import uuid

import openai
import pytest
from openai import OpenAI
from conftest import Gateway
from sdk_flows import WEATHER, parallel_tool_calls_then_tool_result_turn

# alias -> provider name (the x-llmux-provider header)
KINDS = {
    "mistral": "mistral",
    "deepseek": "deepseek",
    "qwen": "qwen",
    "azure": "azure",
    "bedrock": "bedrock",
    "local": "local",
}
ALIASES = list(KINDS)

AZURE_DEPLOYMENT = "gpt4o-prod"
BEDROCK_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"


@pytest.fixture(scope="module")
def gateway(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: mistral, kind: mistral, base_url: "{mock.url}/mistral/v1", api_key: mistral-test-key }}
  - {{ name: deepseek, kind: deepseek, base_url: "{mock.url}/deepseek", api_key: sk-deepseek-test }}
  - {{ name: qwen, kind: qwen, base_url: "{mock.url}/qwen/compatible-mode/v1", api_key: sk-dashscope-test }}
  - {{ name: azure, kind: azure_openai, base_url: "{mock.url}", api_key: azure-test-key, api_version: "2024-10-21" }}
  - name: bedrock
    kind: bedrock
    base_url: "{mock.url}"
    region: us-east-1
    aws: {{ access_key_id: AKIDEXAMPLE, secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY }}
  - {{ name: local, kind: openai_compatible, base_url: "{mock.url}/compat/v1" }}
models:
  - {{ name: mistral, targets: [ {{ provider: mistral, model: mistral-small-latest }} ] }}
  - {{ name: deepseek, targets: [ {{ provider: deepseek, model: deepseek-chat }} ] }}
  - {{ name: deepseek-reasoner, targets: [ {{ provider: deepseek, model: deepseek-reasoner }} ] }}
  - {{ name: qwen, targets: [ {{ provider: qwen, model: qwen-plus }} ] }}
  - {{ name: azure, targets: [ {{ provider: azure, model: {AZURE_DEPLOYMENT} }} ] }}
  - {{ name: azure-filtered, targets: [ {{ provider: azure, model: "{AZURE_DEPLOYMENT}@content_filter" }} ] }}
  - {{ name: bedrock, targets: [ {{ provider: bedrock, model: "{BEDROCK_MODEL}" }} ] }}
  - {{ name: local, targets: [ {{ provider: local, model: llama3.2 }} ] }}
"""
    g = Gateway(cfg)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def client(gateway):
    return OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def mock_log(mock, path_prefix):
    return [r for r in mock.requests() if r["path"].startswith(path_prefix)]


@pytest.mark.parametrize("alias", ALIASES)
def test_plain_text(client, alias):
    raw = client.chat.completions.with_raw_response.create(
        model=alias,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
    )
    out = raw.parse()
    assert out.choices[0].message.content.startswith("mock reply to: Hello there")
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert raw.headers["x-llmux-provider"] == KINDS[alias]


@pytest.mark.parametrize("alias", ALIASES)
def test_streamed_text_matches_non_stream(client, alias):
    messages = [{"role": "user", "content": f"Tell me about foxes ({alias})"}]
    full = client.chat.completions.create(model=alias, messages=messages)
    text, usage, finish, chunks = "", None, None, 0
    for chunk in client.chat.completions.create(
        model=alias, messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        chunks += 1
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            assert usage is None, "usage arrives once"
            usage = chunk.usage
    assert chunks > 3
    assert text == full.choices[0].message.content
    assert finish == "stop"
    assert usage is not None
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.completion_tokens == full.usage.completion_tokens


@pytest.mark.parametrize("alias", ALIASES)
@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_then_tool_result_turn(client, alias, stream):
    calls = parallel_tool_calls_then_tool_result_turn(client, alias, stream)
    assert all(c.id for c in calls)


def test_mistral_foreign_tool_call_ids_are_rewritten(client, mock):
    """History from another provider (OpenAI `call_…` ids) reaches Mistral with 9-character ids."""
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_Xf3aBc9KdLmN0pQrStUvWxYz", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_Xf3aBc9KdLmN0pQrStUvWxYz", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "24C"},
    ]
    out = client.chat.completions.create(model="mistral", messages=messages, tools=[WEATHER])
    assert out.choices[0].message.content == "tool results received: 2"


def test_azure_url_query_and_key_as_azure_expects(client, mock):
    mock.reset()
    out = client.chat.completions.create(model="azure", messages=[{"role": "user", "content": "Hi Azure"}])
    assert out.model == AZURE_DEPLOYMENT
    log = mock_log(mock, "/openai/deployments/")
    assert len(log) == 1
    req = log[0]
    assert req["method"] == "POST"
    assert req["path"] == f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions?api-version=2024-10-21"
    assert req["model"] == AZURE_DEPLOYMENT
    assert req["headers"]["api-key"] == "present"
    assert "authorization" not in req["headers"]


@pytest.mark.parametrize("stream", [False, True])
def test_azure_content_filter_is_a_400_content_filter(client, stream):
    with pytest.raises(openai.BadRequestError) as err:
        r = client.chat.completions.create(
            model="azure-filtered", messages=[{"role": "user", "content": "something filtered"}], stream=stream
        )
        if stream:
            list(r)
    assert err.value.status_code == 400
    assert err.value.code == "content_filter"


def test_deepseek_cached_tokens_on_repeated_prefix(client):
    # A system prompt unique to this run, so the mock's prompt cache starts cold.
    system = f"[{uuid.uuid4()}] " + "You answer questions about the weather. " * 60
    # The mock's DeepSeek caches whole 64-token units of a prefix it has seen
    # (prefix tokens = ceil(chars / 4) + 4 per message).
    prefix_tokens = -(-len(system) // 4) + 4
    expected = prefix_tokens // 64 * 64

    def ask(q, **kw):
        return client.chat.completions.create(
            model="deepseek", messages=[{"role": "system", "content": system}, {"role": "user", "content": q}], **kw
        )

    first = ask("Is it sunny?")
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = ask("Is it raining?")
    assert second.usage.prompt_tokens_details.cached_tokens == expected > 0
    assert second.usage.model_extra.get("prompt_cache_hit_tokens") == expected
    usage = None
    for chunk in ask("Is it windy?", stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
    assert usage.prompt_tokens_details.cached_tokens == expected


def test_deepseek_reasoner_reasoning_content(client):
    out = client.chat.completions.create(model="deepseek-reasoner", messages=[{"role": "user", "content": "Why?"}])
    reasoning = (out.choices[0].message.model_extra or {}).get("reasoning_content")
    assert reasoning and reasoning.startswith("The user asked")
    streamed = ""
    for chunk in client.chat.completions.create(
        model="deepseek-reasoner", messages=[{"role": "user", "content": "Why?"}], stream=True
    ):
        if chunk.choices:
            streamed += (chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
    assert streamed == reasoning


def test_bedrock_stream_arrives_as_openai_sse(gateway, mock):
    mock.reset()
    status, headers, body = gateway.request(
        "POST",
        "/v1/chat/completions",
        body={"model": "bedrock", "stream": True, "messages": [{"role": "user", "content": "Stream from Bedrock"}]},
        headers={"authorization": "Bearer unused"},
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.decode().split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(e.startswith("data: ") for e in events)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.startswith("mock reply to: Stream from Bedrock")
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == [
        "stop"
    ]
    # Upstream it was a signed ConverseStream call with the model id percent-encoded.
    (req,) = mock_log(mock, "/model/")
    assert req["path"] == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    assert req["model"] == BEDROCK_MODEL and req["stream"] is True
    assert req["headers"]["authorization"] == "present"
    assert req["headers"]["x-amz-date"].endswith("Z")
