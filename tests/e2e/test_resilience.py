"""Resilience against `llmux mock` instances with fault knobs: the fault matrix, circuit
breakers, active probes, the retry budget, drain, and hot reload under load."""

import json
import os
import signal
import threading
import time

import pytest
from conftest import Gateway, Mock, free_port


def body(model, content="hi", stream=False):
    b = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
    return b


def chat_count(mock, model=None):
    return len(
        [
            r
            for r in mock.requests()
            if r["method"] == "POST" and r["path"] == "/v1/chat/completions" and (model is None or (r["model"] or "").split("@")[0] == model)
        ]
    )


def sse_events(raw: bytes):
    return [e[len("data: "):] for e in raw.decode().split("\n\n") if e.startswith("data: ")]


def endpoints(g):
    status, _, raw = g.admin("GET", "/admin/endpoints")
    assert status == 200
    return {(e["provider"], e["model"]): e for e in json.loads(raw)["endpoints"]}


def wait_until(pred, timeout=10.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


# --- fault matrix -------------------------------------------------------------------------

FAULTS = {
    # fault name: (first target's model, stream?)
    "429 with retry-after": ("m@status=429,retry_after=1", False),
    "500": ("m@status=500", False),
    "503": ("m@status=503", False),
    "529": ("m@status=529", False),
    "reset before headers": ("m@drop", False),
    "no first byte": ("m@hang", False),
    "stream 500 before first event": ("m@status=500", True),
    "malformed JSON body": ("m@garbage", False),
}


@pytest.fixture(scope="module")
def fault_gateway(mock):
    dead = free_port()
    models = "\n".join(
        f"  - {{ name: 'f{i}', targets: [ {{ provider: a, model: '{m}' }}, {{ provider: b, model: ok }} ] }}"
        for i, (m, _) in enumerate(FAULTS.values())
    )
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{mock.url}/v1", api_key: ka, timeouts: {{ first_byte: 700ms, idle: 700ms }} }}
  - {{ name: b, kind: openai, base_url: "{mock.url}/v1", api_key: kb }}
  - {{ name: dead, kind: openai, base_url: "http://127.0.0.1:{dead}/v1", api_key: kd, timeouts: {{ connect: 300ms }} }}
  - {{ name: c, kind: openai, base_url: "{mock.url}/v1", api_key: kc, timeouts: {{ first_byte: 2s, idle: 500ms }} }}
models:
{models}
  - {{ name: refused, targets: [ {{ provider: dead, model: m }}, {{ provider: b, model: ok }} ] }}
  - {{ name: stall, targets: [ {{ provider: c, model: "m@stall=3000" }}, {{ provider: b, model: ok }} ] }}
  - {{ name: cut, targets: [ {{ provider: c, model: "m@drop" }}, {{ provider: b, model: ok }} ] }}
routing: {{ request_timeout: 5s, retry_budget: 1.0 }}
circuit_breaker: {{ failure_threshold: 100000 }}
"""
    g = Gateway(cfg)
    yield g
    g.stop()


@pytest.mark.parametrize("fault", list(FAULTS) + ["connection refused"])
def test_fault_before_first_byte_is_served_by_next_target(fault_gateway, fault):
    if fault == "connection refused":
        model, stream = "refused", False
    else:
        model, stream = f"f{list(FAULTS).index(fault)}", FAULTS[fault][1]
    started = time.monotonic()
    status, headers, raw = fault_gateway.request("POST", "/v1/chat/completions", body(model, stream=stream), timeout=10)
    assert status == 200, raw
    assert headers["x-llmux-attempts"] == "2", fault
    assert headers["x-llmux-provider"] == "b"
    if stream:
        events = sse_events(raw)
        assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    else:
        assert json.loads(raw)["choices"][0]["message"]["content"].startswith("mock reply to: hi")
    assert time.monotonic() - started < 5, "never past the deadline"


@pytest.mark.parametrize("model,code", [("stall", "timeout"), ("cut", "upstream_error")])
def test_fault_after_first_byte_is_an_error_event(fault_gateway, model, code):
    started = time.monotonic()
    status, headers, raw = fault_gateway.request("POST", "/v1/chat/completions", body(model, stream=True), timeout=10)
    assert status == 200
    assert headers["x-llmux-attempts"] == "1", "no retry once bytes reached the client"
    events = sse_events(raw)
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == code
    assert time.monotonic() - started < 5


# --- circuit breaker ----------------------------------------------------------------------


def test_breaker_opens_after_threshold_and_closes_after_recovery(mock):
    port = free_port()
    failing = Mock("--flavor", "openai", "--fail-rate", "1", "--fail-status", "500")
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{failing.url}/v1", api_key: ka }}
  - {{ name: b, kind: openai, base_url: "{mock.url}/v1", api_key: kb }}
models:
  - {{ name: chat, targets: [ {{ provider: a, model: gpt-a }}, {{ provider: b, model: gpt-b }} ] }}
  - {{ name: also-a, targets: [ {{ provider: a, model: gpt-a }}, {{ provider: b, model: gpt-b }} ] }}
circuit_breaker: {{ failure_threshold: 3, open_for: 1500ms }}
routing: {{ retry_budget: 1.0 }}
health_checks: {{ interval: 200ms }}
"""
    g = Gateway(cfg)
    try:
        for _ in range(10):
            status, headers, _ = g.request("POST", "/v1/chat/completions", body("chat"))
            assert status == 200 and headers["x-llmux-provider"] == "b"
        # Another alias on the same endpoint shares the open breaker.
        status, headers, _ = g.request("POST", "/v1/chat/completions", body("also-a"))
        assert headers["x-llmux-attempts"] == "1"
        assert chat_count(failing) == 3, "after 3 failures A gets no more user requests"
        ep = endpoints(g)[("a", "gpt-a")]
        assert ep["breaker"]["state"] == "open" and ep["breaker"]["half_open_at"]
        status, _, metrics = g.admin("GET", "/metrics")
        assert 'llmux_circuit_state{provider="a",model="gpt-a"} 2' in metrics.decode()

        # A recovers: a healthy mock on the same port.
        failing.stop()
        failing = Mock_on(failing.port)
        time.sleep(1.6)
        status, headers, _ = g.request("POST", "/v1/chat/completions", body("chat"))
        assert headers["x-llmux-provider"] == "a", "the half-open trial went to A and succeeded"
        assert endpoints(g)[("a", "gpt-a")]["breaker"]["state"] == "closed"
    finally:
        g.stop()
        failing.stop()


class Mock_on(Mock):
    """A healthy mock restarted on a given port."""

    def __init__(self, port):
        from conftest import BIN, Proc

        Proc.__init__(self, [BIN, "mock", "--listen", f"127.0.0.1:{port}", "--flavor", "openai"], port)
        self.url = f"http://127.0.0.1:{port}"


def test_endpoint_down_by_probe_gets_no_user_traffic(mock):
    down = Mock("--flavor", "openai")
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{down.url}/v1", api_key: ka, probe: {{ path: "/v1/models/probe@status=503" }} }}
  - {{ name: b, kind: openai, base_url: "{mock.url}/v1", api_key: kb }}
models:
  - {{ name: chat, targets: [ {{ provider: a, model: gpt-a }}, {{ provider: b, model: gpt-b }} ] }}
health_checks: {{ interval: 150ms }}
"""
    g = Gateway(cfg)
    try:
        # No client traffic at all: the probes alone mark A unhealthy.
        assert wait_until(lambda: endpoints(g)[("a", "gpt-a")]["health"] == "unhealthy", timeout=5)
        status, headers, _ = g.request("POST", "/v1/chat/completions", body("chat"))
        assert status == 200
        assert headers["x-llmux-provider"] == "b" and headers["x-llmux-attempts"] == "1"
        assert chat_count(down) == 0, "A received no completion request"
        probes = [r for r in down.requests() if r["method"] == "GET"]
        assert probes and all(r["path"].startswith("/v1/models") for r in probes), "probes cost no tokens"
        assert 'llmux_endpoint_healthy{provider="a",model="gpt-a"} 0' in g.admin("GET", "/metrics")[2].decode()
    finally:
        g.stop()
        down.stop()


def test_probe_connections_are_closed_not_lent_to_user_requests():
    """A probe runs on the prober's own runtime; a pooled probe connection would route every
    user request's I/O through that thread. Probes close their connections, and user
    requests ride on connections of their own."""
    up = Mock("--flavor", "openai")
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{up.url}/v1", api_key: ka }}
models:
  - {{ name: chat, targets: [ {{ provider: a, model: gpt-a }} ] }}
health_checks: {{ interval: 100ms }}
"""
    g = Gateway(cfg)
    try:
        def probes():
            return [r for r in up.requests() if r["method"] == "GET" and r["path"].startswith("/v1/models")]

        for round in range(1, 4):
            assert wait_until(lambda: len(probes()) >= 2 * round, timeout=5)
            for _ in range(4):
                status, _, _ = g.request("POST", "/v1/chat/completions", body("chat"))
                assert status == 200
        log = up.requests()
        probe_conns = [r["connection"] for r in log if r["method"] == "GET"]
        chat_conns = [r["connection"] for r in log if r["method"] == "POST"]
        assert len(chat_conns) == 12 and len(probe_conns) >= 3
        assert all(c >= 1 for c in probe_conns + chat_conns), "the mock numbers connections"
        assert not set(probe_conns) & set(chat_conns), (probe_conns, chat_conns)
        assert len(set(probe_conns)) == len(probe_conns), "each probe on a fresh connection"
        assert len(set(chat_conns)) < len(chat_conns), "user requests still reuse pooled connections"
    finally:
        g.stop()
        up.stop()


def test_sequential_requests_ride_one_pooled_upstream_connection():
    """Every fully read upstream answer (non-stream, stream, and an error answer the attempt
    loop read to report it) goes back to the pool, so sequential requests share one
    connection instead of opening one each."""
    up = Mock("--flavor", "openai")
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{up.url}/v1", api_key: ka }}
models:
  - {{ name: chat, targets: [ {{ provider: a, model: gpt-a }} ] }}
  - {{ name: bad, targets: [ {{ provider: a, model: "gpt-a@status=400" }} ] }}
"""
    g = Gateway(cfg)
    try:
        for _ in range(2):
            status, _, _ = g.request("POST", "/v1/chat/completions", body("chat"))
            assert status == 200
            status, _, raw = g.request("POST", "/v1/chat/completions", body("chat", stream=True))
            assert status == 200 and sse_events(raw)[-1] == "[DONE]"
            status, _, _ = g.request("POST", "/v1/chat/completions", body("bad"))
            assert status == 400
        conns = [r["connection"] for r in up.requests() if r["method"] == "POST"]
        assert len(conns) == 6 and all(c >= 1 for c in conns), conns
        assert len(set(conns)) == 1, f"each request should reuse the pooled connection: {conns}"
    finally:
        g.stop()
        up.stop()


def test_all_endpoints_out_is_503_no_healthy_endpoint_without_touching_providers(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{mock.url}/v1", api_key: ka }}
models:
  - {{ name: chat, targets: [ {{ provider: a, model: gpt-drain }} ] }}
"""
    g = Gateway(cfg)
    try:
        status, _, raw = g.admin("POST", "/admin/endpoints/a/gpt-drain/drain")
        assert status == 200 and json.loads(raw)["drained"] is True
        assert endpoints(g)[("a", "gpt-drain")]["drained"] is True
        before = chat_count(mock, "gpt-drain")
        status, headers, raw = g.request("POST", "/v1/chat/completions", body("chat"))
        assert status == 503 and json.loads(raw)["error"]["code"] == "no_healthy_endpoint"
        assert int(headers["retry-after"]) >= 1
        assert chat_count(mock, "gpt-drain") == before
        assert g.admin("POST", "/admin/endpoints/a/gpt-drain/undrain")[0] == 200
        assert g.request("POST", "/v1/chat/completions", body("chat"))[0] == 200
        assert g.admin("POST", "/admin/endpoints/a/nope/drain")[0] == 404
    finally:
        g.stop()


def test_retry_after_is_honoured_by_skipping_the_endpoint(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{mock.url}/v1", api_key: ka }}
  - {{ name: b, kind: openai, base_url: "{mock.url}/v1", api_key: kb }}
models:
  - {{ name: chat, targets: [ {{ provider: a, model: "slowdown@status=429,retry_after=20" }}, {{ provider: b, model: ok }} ] }}
circuit_breaker: {{ failure_threshold: 1000 }}
"""
    g = Gateway(cfg)
    try:
        before = chat_count(mock, "slowdown")
        for i in range(5):
            status, headers, _ = g.request("POST", "/v1/chat/completions", body("chat"))
            assert status == 200
            assert headers["x-llmux-attempts"] == ("2" if i == 0 else "1")
        assert chat_count(mock, "slowdown") == before + 1, "skipped for the 20 s the provider asked"
    finally:
        g.stop()


def test_retry_budget_caps_attempts_when_everything_fails(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{mock.url}/v1", api_key: ka }}
  - {{ name: b, kind: openai, base_url: "{mock.url}/v1", api_key: kb }}
  - {{ name: c, kind: openai, base_url: "{mock.url}/v1", api_key: kc }}
models:
  - name: chat
    targets: [ {{ provider: a, model: "bx@status=500" }}, {{ provider: b, model: "by@status=502" }}, {{ provider: c, model: "bz@status=503" }} ]
routing: {{ max_attempts: 3, retry_budget: 0.2 }}
circuit_breaker: {{ failure_threshold: 1000000 }}
"""
    g = Gateway(cfg)
    try:
        n = 300
        for _ in range(n):
            status, _, _ = g.request("POST", "/v1/chat/completions", body("chat"))
            assert status in (502, 503)
        # The mock keeps only its last 256 requests; the gateway's endpoint counters see all.
        eps = endpoints(g)
        attempts = sum(eps[(p, m)]["requests"] for p, m in [("a", "bx@status=500"), ("b", "by@status=502"), ("c", "bz@status=503")])
        per_request = attempts / n
        assert 1.1 < per_request < 1.4, f"{per_request:.2f} attempts per request with budget 0.2"
    finally:
        g.stop()


# --- admin surface ------------------------------------------------------------------------


def test_admin_token_guards_the_admin_listener(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}", admin_token: adm-TOKEN-1 }}
providers:
  - {{ name: a, kind: openai, base_url: "{mock.url}/v1", api_key: ka }}
models:
  - {{ name: chat, targets: [ {{ provider: a, model: m }} ] }}
"""
    g = Gateway(cfg)
    try:
        assert g.admin("GET", "/admin/endpoints")[0] == 401
        assert g.admin("GET", "/metrics", headers={"authorization": "Bearer nope"})[0] == 401
        assert g.admin("GET", "/admin/endpoints", headers={"authorization": "Bearer adm-TOKEN-1"})[0] == 200
        # The admin surface is not on the client port.
        assert g.request("GET", "/admin/endpoints")[0] == 404
    finally:
        g.stop()


# --- hot reload ---------------------------------------------------------------------------

RELOAD_BASE = """
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: a, kind: openai, base_url: "{url_a}/v1", api_key: ka }}
  - {{ name: b, kind: openai, base_url: "{url_b}/v1", api_key: kb }}
models:
  - {{ name: chat, targets: [ {{ provider: a, model: m1 }}{extra_target} ] }}
{extra_models}
"""


def test_hot_reload_under_load_drops_nothing(mock):
    other = Mock("--flavor", "openai")
    write = lambda text: open(g.config_path, "w").write(text.replace("{LISTEN}", f"127.0.0.1:{g.port}"))
    g = Gateway(RELOAD_BASE.format(url_a=mock.url, url_b=mock.url, extra_target=", { provider: b, model: m2 }", extra_models=""))
    stop = threading.Event()
    failures, served = [], [0]

    def load():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            status, _, raw = g.request("POST", "/v1/chat/completions", body("chat"))
            if status != 200:
                failures.append((status, raw[:200]))
            served[0] += 1

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for i in range(20):
            url_a = other.url if i % 2 else mock.url  # a provider's URL changes
            extra_target = "" if i % 3 == 0 else ", { provider: b, model: m2 }"  # a target removed / back
            new_model = f"  - {{ name: 'added-{i}', targets: [ {{ provider: b, model: m{i} }} ] }}"
            if i == 10:
                write("models: [ { name: broken, targets: [ { provider: nope, model: x } ] } ]\n")
                status, _, raw = g.admin("POST", "/admin/reload")
                assert status == 400 and b"nope" in raw
                assert g.request("POST", "/v1/chat/completions", body("added-9"))[0] == 200, "old table still serves"
                continue
            write(RELOAD_BASE.format(url_a=url_a, url_b=mock.url, extra_target=extra_target, extra_models=new_model).replace("{{", "{").replace("}}", "}"))
            status, _, raw = g.admin("POST", "/admin/reload")
            assert status == 200, raw
            status, _, raw = g.request("POST", "/v1/chat/completions", body(f"added-{i}"))
            assert status == 200, raw
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join()
        g.stop()
        other.stop()
    assert served[0] > 50
    assert failures == [], failures[:3]


def test_config_file_change_through_a_symlink_swap_is_picked_up(mock, tmp_path):
    # A Kubernetes ConfigMap volume: file -> ..data/file, ..data -> ..<timestamp>/ swapped atomically.
    base = RELOAD_BASE.format(url_a=mock.url, url_b=mock.url, extra_target="", extra_models="{extra}")
    v1, v2 = tmp_path / "..v1", tmp_path / "..v2"
    v1.mkdir()
    v2.mkdir()
    port, admin = free_port(), free_port()
    text = lambda extra: base.replace("{extra}", extra).replace("{{", "{").replace("}}", "}").replace("{LISTEN}", f"127.0.0.1:{port}")
    (v1 / "llmux.yaml").write_text(text(""))
    (v2 / "llmux.yaml").write_text(text("  - { name: swapped-in, targets: [ { provider: a, model: m9 } ] }"))
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/llmux.yaml", tmp_path / "llmux.yaml")
    from conftest import BIN, Proc

    p = Proc([BIN, "serve", "--config", str(tmp_path / "llmux.yaml"), "--admin-listen", f"127.0.0.1:{admin}"], port, more_ports=(admin,))
    try:
        gw = Gateway.__new__(Gateway)
        gw.port, gw.admin_port = port, admin
        assert gw.request("POST", "/v1/chat/completions", body("swapped-in"))[0] == 404
        os.symlink("..v2", tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert wait_until(lambda: gw.request("POST", "/v1/chat/completions", body("swapped-in"))[0] == 200, timeout=5)
        # SIGHUP reloads too (nothing changed: still serving).
        p.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert gw.request("POST", "/v1/chat/completions", body("swapped-in"))[0] == 200
    finally:
        p.stop()


def test_sigterm_drains_in_flight_streams(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}", shutdown_grace: 10s }}
providers:
  - {{ name: a, kind: openai, base_url: "{mock.url}/v1", api_key: ka }}
models:
  - {{ name: slow, targets: [ {{ provider: a, model: "m@chunk_delay=40" }} ] }}
"""
    g = Gateway(cfg)
    result = {}

    def stream():
        result["resp"] = g.request("POST", "/v1/chat/completions", body("slow", "a fairly long message to stream back slowly", stream=True))

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)
    g.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    assert g.request("GET", "/readyz")[0] == 503, "readyz fails from the moment SIGTERM arrives"
    t.join(15)
    status, _, raw = result["resp"]
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    assert g.proc.wait(10) == 0
    g.stop()
