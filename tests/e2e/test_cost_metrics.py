"""Cost from real usage and the price catalog (header, body, stream usage chunk, admin,
metrics), context-window-aware routing, and `/metrics` matching the traffic sent."""

import json
import re

import pytest
from conftest import Gateway

# USD per 1M tokens for the test model, so every expected cost is hand-computable.
PRICE = {"input": 2.0, "cached_input": 0.5, "output": 8.0}


@pytest.fixture(scope="module")
def gateway(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: p, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
  - {{ name: q, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
models:
  - {{ name: priced, targets: [ {{ provider: p, model: priced-model }} ] }}
  - {{ name: builtin, targets: [ {{ provider: p, model: gpt-4o-mini }} ] }}
  - {{ name: windows, targets: [ {{ provider: p, model: small-window }}, {{ provider: q, model: big-window }} ] }}
pricing:
  priced-model: {{ input: {PRICE['input']}, cached_input: {PRICE['cached_input']}, output: {PRICE['output']}, context_window: 1000000 }}
  small-window: {{ input: 1, output: 1, context_window: 1000 }}
  big-window: {{ input: 1, output: 1, context_window: 20000 }}
"""
    g = Gateway(cfg)
    yield g
    g.stop()


def expected_cost(usage):
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    fresh = usage["prompt_tokens"] - cached
    return (fresh * PRICE["input"] + cached * PRICE["cached_input"] + usage["completion_tokens"] * PRICE["output"]) / 1e6


def chat(g, model, content, stream=False, include_usage=False, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    body = {"model": model, "messages": messages}
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return g.request("POST", "/v1/chat/completions", body)


def sse_json(raw):
    events = [e[len("data: "):] for e in raw.decode().split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_non_stream_cost_in_header_and_body(gateway):
    status, headers, raw = chat(gateway, "priced", "What does a fox say?")
    assert status == 200
    usage = json.loads(raw)["usage"]
    want = expected_cost(usage)
    assert abs(float(headers["x-llmux-cost-usd"]) - want) < 1e-9
    assert abs(usage["cost_usd"] - want) < 1e-9


def test_cached_tokens_are_priced_at_the_cached_rate(gateway):
    system = "You are a careful assistant. " * 200  # ~1400 tokens of stable prefix
    chat(gateway, "priced", "first question", system=system)
    status, headers, raw = chat(gateway, "priced", "second question", system=system)
    usage = json.loads(raw)["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 1024, usage
    assert abs(float(headers["x-llmux-cost-usd"]) - expected_cost(usage)) < 1e-9


def test_stream_usage_chunk_carries_the_same_cost_as_non_stream(gateway):
    _, _, raw = chat(gateway, "priced", "Same question twice")
    non_stream = json.loads(raw)["usage"]
    status, headers, raw = chat(gateway, "priced", "Same question twice", stream=True, include_usage=True)
    assert status == 200
    chunks = sse_json(raw)
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == []
    streamed = usage_chunks[0]["usage"]
    assert streamed["prompt_tokens"] == non_stream["prompt_tokens"]
    assert abs(streamed["cost_usd"] - non_stream["cost_usd"]) < 1e-12


def test_stream_without_include_usage_is_still_priced(gateway):
    def spent():
        _, _, raw = gateway.admin("GET", "/admin/endpoints")
        return {(e["provider"], e["model"]): e for e in json.loads(raw)["endpoints"]}[("p", "priced-model")]["cost_usd"]

    before = spent()
    status, _, raw = chat(gateway, "priced", "stream me", stream=True)
    assert status == 200
    assert not any(c.get("usage") for c in sse_json(raw)), "no usage chunk the client did not ask for"
    assert spent() > before, "llmux asked the provider for usage anyway"


def test_builtin_catalog_prices_known_models(gateway):
    status, headers, raw = chat(gateway, "builtin", "hello")
    usage = json.loads(raw)["usage"]
    # gpt-4o-mini in the built-in snapshot: $0.15 input, $0.075 cached, $0.60 output per 1M.
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    want = ((usage["prompt_tokens"] - cached) * 0.15 + cached * 0.075 + usage["completion_tokens"] * 0.60) / 1e6
    assert abs(float(headers["x-llmux-cost-usd"]) - want) < 1e-9


def test_prompt_over_one_window_goes_to_the_other_target(gateway, mock):
    status, headers, _ = chat(gateway, "windows", "short prompt")
    assert headers["x-llmux-model"] == "small-window"
    status, headers, _ = chat(gateway, "windows", "word " * 2000)  # ~2500 tokens > 1000
    assert status == 200 and headers["x-llmux-model"] == "big-window"
    assert headers["x-llmux-attempts"] == "1"


def test_prompt_over_every_window_is_400_without_an_upstream_call(gateway, mock):
    def window_calls():
        return len([r for r in mock.requests() if r["method"] == "POST" and (r["model"] or "").endswith("-window")])

    before = window_calls()
    status, _, raw = chat(gateway, "windows", "word " * 100_000)  # ~125k tokens
    assert status == 400
    assert json.loads(raw)["error"]["code"] == "context_length_exceeded"
    assert window_calls() == before, "no upstream call"


def metric(text, name, **labels):
    """The sum of the samples of `name` whose labels include `labels`."""
    found = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    ]
    assert found, f"{name} {labels} not found"
    return sum(found)


def test_metrics_match_the_traffic_sent(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: p, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
models:
  - {{ name: m, targets: [ {{ provider: p, model: metered }} ] }}
  - {{ name: bad, targets: [ {{ provider: p, model: "metered-400@status=400" }} ] }}
pricing:
  metered: {{ input: 1.0, output: 3.0 }}
"""
    g = Gateway(cfg)
    try:
        totals = {"prompt": 0, "completion": 0, "cached": 0, "cost": 0.0}
        for i in range(5):
            _, _, raw = chat(g, "m", f"question {i}")
            u = json.loads(raw)["usage"]
            totals["prompt"] += u["prompt_tokens"]
            totals["completion"] += u["completion_tokens"]
            totals["cached"] += (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            totals["cost"] += u["cost_usd"]
        for _ in range(2):
            _, _, raw = chat(g, "m", "streamed", stream=True, include_usage=True)
            u = [c for c in sse_json(raw) if c.get("usage")][0]["usage"]
            totals["prompt"] += u["prompt_tokens"]
            totals["completion"] += u["completion_tokens"]
            totals["cost"] += u["cost_usd"]
        assert chat(g, "bad", "x")[0] == 400
        status, headers, text = g.admin("GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        text = text.decode()
        assert metric(text, "llmux_requests_total", model="m", provider="p", outcome="success") == 7
        assert metric(text, "llmux_requests_total", model="bad", provider="p") == 1
        assert metric(text, "llmux_attempts_total", provider="p", model="metered", result="success") == 7
        assert metric(text, "llmux_attempts_total", provider="p", model="metered-400@status=400", result="status_4xx") == 1
        assert metric(text, "llmux_request_duration_seconds_count", provider="p", model="metered") == 7
        assert metric(text, "llmux_time_to_first_token_seconds_count", provider="p", model="metered") == 2
        assert metric(text, "llmux_overhead_seconds_count", provider="p", model="metered") == 7
        tokens = {t: metric(text, "llmux_tokens_total", provider="p", model="metered", type=t) for t in ["input", "output", "cache_read", "cache_write"]}
        assert tokens["input"] + tokens["cache_read"] + tokens["cache_write"] == totals["prompt"]
        assert tokens["output"] == totals["completion"]
        assert abs(metric(text, "llmux_cost_usd_total", provider="p", model="metered") - totals["cost"]) < 1e-9
        assert metric(text, "llmux_circuit_state", provider="p", model="metered") == 0
        # Every sample line parses as Prometheus text: name{labels} value.
        for line in text.splitlines():
            assert line.startswith("#") or re.match(r'^[a-z_]+(\{[^}]*\})? [0-9.e+-]+$', line), line
    finally:
        g.stop()


def test_auto_cache_places_breakpoints_and_reports_the_hit_rate(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: claude, kind: anthropic, base_url: "{mock.url}", api_key: k, auto_cache: true }}
models:
  - {{ name: chat, targets: [ {{ provider: claude, model: claude-sonnet-4-6 }} ] }}
"""
    g = Gateway(cfg)
    system = "You answer questions about the llmux gateway in detail. " * 150  # ~2k tokens
    try:
        usages = []
        for q in ["first question", "second question", "third question"]:
            _, _, raw = chat(g, "chat", q, system=system)
            usages.append(json.loads(raw)["usage"])
        # The first request writes the cache at llmux's breakpoint, later ones read it.
        assert usages[0]["prompt_tokens_details"].get("cache_write_tokens", 0) > 0, usages[0]
        assert usages[1]["prompt_tokens_details"]["cached_tokens"] > 0, usages[1]
        read = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
        prompt = sum(u["prompt_tokens"] for u in usages)
        _, _, raw = g.admin("GET", "/admin/endpoints")
        ep = json.loads(raw)["endpoints"][0]
        assert abs(ep["cache_hit_rate"] - read / prompt) < 1e-9
        assert ep["tokens"]["cache_read"] == read
    finally:
        g.stop()
