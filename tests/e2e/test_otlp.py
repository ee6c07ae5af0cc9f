"""OpenTelemetry over OTLP/HTTP protobuf: an in-test collector (decoding with the official
`opentelemetry-proto` package) receives the request span with one child per upstream attempt,
GenAI semantic-convention attributes, and the spec §7 metrics."""

import json

from conftest import Gateway
from otlp_receiver import OtlpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_request_span_with_attempt_children_and_metrics(mock):
    rx = OtlpReceiver().start()
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: first, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
  - {{ name: second, kind: anthropic, base_url: "{mock.url}", api_key: k }}
models:
  - {{ name: chat, targets: [ {{ provider: first, model: "gpt-4o-mini@status=500" }}, {{ provider: second, model: claude-haiku-4-5 }} ] }}
telemetry: {{ otlp_endpoint: "{rx.url}", metrics_interval: 300ms, service_name: llmux-test }}
"""
    g = Gateway(cfg)
    try:
        status, headers, raw = g.request(
            "POST",
            "/v1/chat/completions",
            {"model": "chat", "messages": [{"role": "user", "content": "a secret prompt text"}]},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert status == 200 and headers["x-llmux-attempts"] == "2"
        usage = json.loads(raw)["usage"]

        spans = rx.wait_for_spans(lambda s: any(x["kind"] == "SERVER" for x in s), timeout=10)
        root = next(s for s in spans if s["kind"] == "SERVER")
        children = [s for s in spans if s["parent_span_id"] == root["span_id"]]
        assert root["trace_id"] == TRACE_ID, "joins the caller's trace"
        assert root["parent_span_id"] == PARENT_ID
        assert len(children) == 2 and all(c["kind"] == "CLIENT" and c["trace_id"] == TRACE_ID for c in children)
        failed, served = sorted(children, key=lambda c: c["status"]["code"] != "ERROR")
        assert failed["status"]["code"] == "ERROR" and "status_5xx" in failed["status"]["message"]
        assert failed["attributes"]["gen_ai.provider.name"] == "openai"
        assert served["attributes"]["gen_ai.provider.name"] == "anthropic"
        assert served["attributes"]["gen_ai.request.model"] == "claude-haiku-4-5"
        assert served["attributes"]["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
        a = root["attributes"]
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "chat"
        assert a["gen_ai.response.model"] == "claude-haiku-4-5"
        assert a["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert a["llmux.attempts"] == 2 and a["http.response.status_code"] == 200
        assert root["resource"]["service.name"] == "llmux-test"
        assert not any("secret prompt" in json.dumps(s) for s in spans), "never prompt text"

        metrics = rx.wait_for_metrics(lambda m: "llmux_requests_total" in m, timeout=10)
        reqs = metrics["llmux_requests_total"]
        assert any(p["attributes"] == {"model": "chat", "provider": "second", "outcome": "success"} and p["value"] == 1 for p in reqs)
        assert all(p["temporality"] == "CUMULATIVE" for p in reqs)
        hist = metrics["llmux_request_duration_seconds"]
        assert any(p["attributes"]["provider"] == "second" and p["count"] == 1 for p in hist)
        assert {"llmux_attempts_total", "llmux_tokens_total", "llmux_cost_usd_total", "llmux_circuit_state"} <= set(metrics)
    finally:
        g.stop()
        rx.stop()
