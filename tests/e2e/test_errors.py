"""spec.md §6: every error row this gateway can produce today, with exact status and code;
bad input never takes the process or other requests down."""

import http.client
import json
import os
import random
import signal
import socket

import pytest
from conftest import Gateway, standard_config


def code_of(body):
    return json.loads(body)["error"]["code"]


def assert_error(resp, status, code):
    got_status, headers, body = resp
    assert got_status == status, body
    err = json.loads(body)["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["code"] == code, err
    assert headers["content-type"] == "application/json"


def test_body_not_json(gateway):
    assert_error(gateway.request("POST", "/v1/chat/completions", b"{nope", {"content-type": "application/json"}), 400, "invalid_request")


def test_empty_body(gateway):
    assert_error(gateway.request("POST", "/v1/chat/completions", b""), 400, "invalid_request")


def test_missing_messages(gateway):
    resp = gateway.request("POST", "/v1/chat/completions", {"model": "chat"})
    assert_error(resp, 400, "invalid_request")
    assert "messages" in json.loads(resp[2])["error"]["message"]


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "chat", "messages": "hello"}, "messages"),
        ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "chat", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "chat", "messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"model": "chat", "messages": []}, "messages"),
    ],
)
def test_invalid_fields_name_the_param(gateway, body, param):
    resp = gateway.request("POST", "/v1/chat/completions", body)
    assert_error(resp, 400, "invalid_request")
    assert json.loads(resp[2])["error"]["param"] == param


def test_unknown_path(gateway):
    assert_error(gateway.request("GET", "/v2/whatever"), 404, "not_found")


def test_wrong_method(gateway):
    resp = gateway.request("GET", "/v1/chat/completions")
    assert_error(resp, 405, "method_not_allowed")
    assert resp[1]["allow"] == "POST"
    assert_error(gateway.request("DELETE", "/v1/models"), 405, "method_not_allowed")


def test_unknown_model(gateway):
    assert_error(
        gateway.request("POST", "/v1/chat/completions", {"model": "gpt-99", "messages": [{"role": "user", "content": "x"}]}),
        404,
        "model_not_found",
    )


def test_body_over_max_body_bytes(gateway):
    big = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}).encode()
    assert_error(gateway.request("POST", "/v1/chat/completions", big, {"content-type": "application/json"}), 413, "request_too_large")


def test_chunked_body_over_max_body_bytes(gateway):
    def chunks():
        yield b'{"model":"chat","messages":[{"role":"user","content":"'
        for _ in range(80):
            yield b"x" * 65536
        yield b'"}]}'

    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=chunks(), headers={"content-type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413
    assert code_of(resp.read()) == "request_too_large"
    conn.close()


def test_deadline_is_504_timeout(mock):
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: slow, kind: openai_compatible, base_url: "{mock.url}/v1", api_key: k, timeouts: {{ first_byte: 10s }} }}
models:
  - {{ name: chat, targets: [ {{ provider: slow, model: "m@hang" }} ] }}
routing: {{ request_timeout: 700ms }}
"""
    g = Gateway(cfg)
    try:
        assert_error(g.request("POST", "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "x"}]}), 504, "timeout")
    finally:
        g.stop()


def test_gateway_keys(mock):
    extra = "  api_keys:\n    - { name: team-a, key: gw-key-AAAA }\n"
    g = Gateway(standard_config(mock.url, extra_server=extra))
    try:
        body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
        assert_error(g.request("POST", "/v1/chat/completions", body), 401, "invalid_api_key")
        assert_error(g.request("POST", "/v1/chat/completions", body, {"authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_error(g.request("GET", "/v1/models"), 401, "invalid_api_key")
        status, _, _ = g.request("POST", "/v1/chat/completions", body, {"authorization": "Bearer gw-key-AAAA"})
        assert status == 200
        # Health endpoints never need the key.
        assert g.request("GET", "/healthz")[0] == 200
        assert g.request("GET", "/readyz")[0] == 200
    finally:
        g.stop()


def test_health_endpoints(gateway):
    assert gateway.request("GET", "/healthz")[0] == 200
    status, _, body = gateway.request("GET", "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"


def test_garbage_never_takes_the_gateway_down(gateway):
    rng = random.Random(7)
    for i in range(60):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        status, _, resp = gateway.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        assert status == 400, (i, resp)
    # Broken HTTP on raw sockets.
    for raw in [b"\x00\x01\x02garbage\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99\r\n\r\n{", b"GET / HTTP/9.9\r\n\r\n"]:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=3) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            try:
                s.recv(4096)
            except OSError:
                pass
    status, _, _ = gateway.request("POST", "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "still alive?"}]})
    assert status == 200


def raw_exchange(port, data):
    """Sends raw bytes on a fresh connection; returns everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


def raw_error(answer):
    """(status line, error object) of a raw HTTP answer with an OpenAI-format error body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)["error"]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"\x00\x01\x02garbage\r\n\r\n",
    ],
)
def test_malformed_request_head_gets_a_400(gateway, head):
    for port in (gateway.port, gateway.admin_port):
        status, err = raw_error(raw_exchange(port, head))
        assert status.startswith(b"HTTP/1.1 400 "), (port, status)
        assert err["code"] == "invalid_request" and err["message"], err


def test_connect_is_refused_with_405(gateway):
    answer = raw_exchange(gateway.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    status, err = raw_error(answer)
    assert status.startswith(b"HTTP/1.1 405 ") and err["code"] == "method_not_allowed", answer
    assert b"\r\nallow: get, post\r\n" in answer.lower(), answer
    assert gateway.request("GET", "/healthz")[0] == 200


def test_idle_kept_alive_connection_is_closed_at_shutdown_not_waited_for(mock):
    """A client holding a kept-alive connection open between requests must not hold the
    shutdown up for the grace period: the connection is closed and the process exits."""
    g = Gateway(standard_config(mock.url, extra_server="  shutdown_grace: 60s"))
    try:
        with socket.create_connection(("127.0.0.1", g.port), timeout=15) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200 ") and b"keep-alive" in head.lower(), head
            g.proc.send_signal(signal.SIGTERM)
            assert s.recv(4096) == b"", "the idle connection is closed"
            # Waiting on the idle connection would take the 60 s grace: a hang, not a timing.
            assert g.proc.wait(15) == 0
    finally:
        g.stop()


def test_no_secret_reaches_a_response_the_log_metrics_or_admin(mock):
    secrets = {"sk-provider-SECRET-0001", "gw-key-SECRET-0002", "adm-SECRET-0003"}
    cfg = f"""
server:
  listen: "{{LISTEN}}"
  admin_token: adm-SECRET-0003
  api_keys: [ {{ name: team, key: gw-key-SECRET-0002 }} ]
providers:
  - {{ name: p, kind: openai, base_url: "{mock.url}/v1", api_key: sk-provider-SECRET-0001 }}
models:
  - {{ name: chat, targets: [ {{ provider: p, model: m }} ] }}
  # The provider echoes the key back in its 401, as OpenAI's own error does.
  - {{ name: echo, targets: [ {{ provider: p, model: "m@echo_key" }} ] }}
  - {{ name: fail, targets: [ {{ provider: p, model: "m@status=500" }} ] }}
"""
    g = Gateway(cfg)
    try:
        auth = {"authorization": "Bearer gw-key-SECRET-0002"}
        outputs = []
        for model, headers in [("chat", auth), ("echo", auth), ("fail", auth), ("chat", {}), ("chat", {"authorization": "Bearer wrong"})]:
            status, h, body = g.request("POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "x"}]}, headers=headers)
            outputs += [body.decode(errors="replace"), json.dumps(h)]
        status, _, body = g.request("POST", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "x"}]}, headers=auth)
        assert status == 401 and b"[redacted]" in body, body
        admin = {"authorization": "Bearer adm-SECRET-0003"}
        for path in ["/metrics", "/admin/endpoints"]:
            status, h, body = g.admin("GET", path, headers=admin)
            assert status == 200
            outputs.append(body.decode())
        g.stop()
        outputs.append(g.log)
        for out in outputs:
            for s in secrets:
                assert s not in out, f"{s} leaked"
    finally:
        g.stop()
