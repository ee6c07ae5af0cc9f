"""Routing strategies fed by what llmux measured (latency per prompt-size bucket, cost), and
budgets and free-tier quotas that move traffic before a free quota turns into paid traffic."""

import json
import time

import pytest
from conftest import BIN, Gateway, Mock, Proc


def chat(g, model, content="hi", headers=None):
    return g.request("POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": content}]}, headers=headers)


def provider_of(g, model, content="hi"):
    status, headers, raw = chat(g, model, content)
    assert status == 200, raw
    return headers["x-llmux-provider"]


def test_lowest_latency_prefers_the_fast_endpoint_and_moves_when_it_slows():
    slow_a = Mock("--flavor", "openai", "--latency-ms", "200")
    fast_b = Mock("--flavor", "openai", "--latency-ms", "20")
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{slow_a.url}/v1", api_key: k }}
  - {{ name: b, kind: openai, base_url: "{fast_b.url}/v1", api_key: k }}
models:
  - {{ name: chat, strategy: lowest_latency, targets: [ {{ provider: a, model: m }}, {{ provider: b, model: m }} ] }}
"""
    g = Gateway(cfg)
    try:
        for _ in range(4):  # warm-up: each endpoint gets measured
            provider_of(g, "chat")
        served = [provider_of(g, "chat") for _ in range(60)]
        assert served.count("b") >= 57, f"{served.count('b')}/60 to the fast endpoint"

        # B slows to 400 ms (same address, new behaviour).
        port = fast_b.port
        fast_b.stop()
        fast_b = Proc([BIN, "mock", "--listen", f"127.0.0.1:{port}", "--flavor", "openai", "--latency-ms", "400"], port)
        served = [provider_of(g, "chat") for _ in range(20)]
        assert served[-10:].count("a") >= 8, f"traffic moved to A within 10 requests: {served}"
    finally:
        g.stop()
        slow_a.stop()
        fast_b.stop()


def test_lowest_latency_is_decided_per_prompt_size(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
  - {{ name: b, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
models:
  - name: chat
    strategy: lowest_latency
    targets:
      - {{ provider: a, model: "a@latency=10,long_latency=400" }}
      - {{ provider: b, model: "b@latency=100" }}
"""
    g = Gateway(cfg)
    long_prompt = "lorem ipsum dolor sit amet " * 1000  # ~27 KB, ~7k tokens
    try:
        # Routing reads P95s that are recomputed every 0.5 s: each warm-up round is decided
        # on the previous round's samples, so both endpoints get measured in both buckets.
        for _ in range(3):
            provider_of(g, "chat")
            provider_of(g, "chat", long_prompt)
            time.sleep(0.6)
        # 2 % of requests explore another target first: 20 each, at most 3 astray.
        short = [provider_of(g, "chat") for _ in range(20)]
        long = [provider_of(g, "chat", long_prompt) for _ in range(20)]
        assert short.count("a") >= 17, short
        assert long.count("b") >= 17, long
    finally:
        g.stop()


def test_lowest_cost_picks_the_cheaper_target(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: pricey, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
  - {{ name: cheap, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
models:
  - {{ name: chat, strategy: lowest_cost, targets: [ {{ provider: pricey, model: pricey-m }}, {{ provider: cheap, model: cheap-m }} ] }}
pricing:
  pricey-m: {{ input: 10, output: 30 }}
  cheap-m: {{ input: 0.1, output: 0.4 }}
"""
    g = Gateway(cfg)
    try:
        assert [provider_of(g, "chat") for _ in range(5)] == ["cheap"] * 5
    finally:
        g.stop()


def test_free_tier_moves_request_n_plus_1_to_the_paid_fallback(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - name: gemini-free
    kind: openai
    base_url: "{mock.url}/v1"
    api_key: k
    free_tier: {{ requests_per_day: 3, on_exhausted: next_target }}
  - {{ name: paid, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
models:
  - {{ name: chat, targets: [ {{ provider: gemini-free, model: m }}, {{ provider: paid, model: m }} ] }}
"""
    g = Gateway(cfg)
    try:
        served = [provider_of(g, "chat") for _ in range(5)]
        assert served == ["gemini-free"] * 3 + ["paid"] * 2
    finally:
        g.stop()


def test_free_tier_reject_is_429_budget_exceeded(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: free, kind: openai, base_url: "{mock.url}/v1", api_key: k, free_tier: {{ requests_per_minute: 1, on_exhausted: reject }} }}
  - {{ name: paid, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
models:
  - {{ name: chat, targets: [ {{ provider: free, model: m }}, {{ provider: paid, model: m }} ] }}
"""
    g = Gateway(cfg)
    try:
        assert chat(g, "chat")[0] == 200
        status, _, raw = chat(g, "chat")
        assert status == 429 and json.loads(raw)["error"]["code"] == "budget_exceeded"
    finally:
        g.stop()


def test_usd_budgets_stop_further_requests(mock):
    cfg = f"""
server:
  listen: "{{LISTEN}}"
  api_keys:
    - {{ name: team-a, key: key-a, budget: {{ usd_per_day: 0.000001 }} }}
    - {{ name: team-b, key: key-b }}
providers:
  - {{ name: p, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
  - {{ name: capped, kind: openai, base_url: "{mock.url}/v1", api_key: k, budget: {{ usd_per_month: 0.000001 }} }}
models:
  - {{ name: chat, targets: [ {{ provider: p, model: priced }} ] }}
  - {{ name: capped, targets: [ {{ provider: capped, model: priced }} ] }}
pricing:
  priced: {{ input: 1.0, output: 1.0 }}
"""
    g = Gateway(cfg)
    try:
        a = {"authorization": "Bearer key-a"}
        b = {"authorization": "Bearer key-b"}
        assert chat(g, "chat", headers=a)[0] == 200
        status, _, raw = chat(g, "chat", headers=a)
        assert status == 429 and json.loads(raw)["error"]["code"] == "budget_exceeded"
        assert chat(g, "chat", headers=b)[0] == 200, "another key's budget is separate"
        # A provider budget: the only target is over it.
        assert chat(g, "capped", headers=b)[0] == 200
        status, _, raw = chat(g, "capped", headers=b)
        assert status == 429 and json.loads(raw)["error"]["code"] == "budget_exceeded"
    finally:
        g.stop()
