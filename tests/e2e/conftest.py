"""Harness for llmux end-to-end tests.

Real parts only: the `llmux` binary started exactly as a user starts it (`llmux serve
--config FILE`), `llmux mock` as the provider, the official `openai` SDK or raw HTTP
(http.client) as the client. All traffic stays on 127.0.0.1.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("LLMUX_BIN") or str(ROOT / "target" / "debug" / "llmux")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not ready after {timeout}s:\n{log.read_text()}")


class Proc:
    """A child process with its log file; stopped with SIGINT at teardown.

    Ready once `port` and every one of `more_ports` accept connections: llmux binds its
    listener and its admin listener in separate services, in no fixed order."""

    def __init__(self, args, port, env=None, cwd=None, more_ports=()):
        self.log_path = Path(tempfile.mkstemp(prefix="llmux-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.port = port
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd or ROOT
        )
        for p in (port, *more_ports):
            wait_port(p, self.proc, self.log_path)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGINT, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Gateway(Proc):
    """`llmux serve` on a free port with the given YAML config text."""

    def __init__(self, config_text: str, env=None):
        port = free_port()
        fd, path = tempfile.mkstemp(prefix="llmux-", suffix=".yaml")
        os.write(fd, config_text.replace("{LISTEN}", f"127.0.0.1:{port}").encode())
        os.close(fd)
        self.config_path = path
        full_env = dict(os.environ, RUST_LOG="info")
        full_env.update(env or {})
        self.admin_port = free_port()
        super().__init__(
            [BIN, "serve", "--config", path, "--admin-listen", f"127.0.0.1:{self.admin_port}"],
            port,
            env=full_env,
            more_ports=(self.admin_port,),
        )
        self.url = f"http://127.0.0.1:{port}"

    def admin(self, method, path, headers=None):
        """A request to the admin listener: (status, headers, body)."""
        return self.request(method, path, headers=headers, port=self.admin_port)

    def request(self, method, path, body=None, headers=None, timeout=30, port=None):
        """Raw HTTP: returns (status, headers dict, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        out = (resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        conn.close()
        return out


class Mock(Proc):
    def __init__(self, *extra):
        port = free_port()
        super().__init__([BIN, "mock", "--listen", f"127.0.0.1:{port}", *extra], port)
        self.url = f"http://127.0.0.1:{port}"

    def requests(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("GET", "/_mock/requests")
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data["requests"]

    def reset(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("POST", "/_mock/reset")
        conn.getresponse().read()
        conn.close()


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


@pytest.fixture(scope="session")
def mock():
    m = Mock("--flavor", "all")
    yield m
    m.stop()


def standard_config(mock_url: str, extra_server: str = "", dead_port: int = 1) -> str:
    """Targets chosen so each fallback case is deterministic (mock directives after `@`)."""
    return f"""
server:
  listen: "{{LISTEN}}"
  max_body_bytes: 4MiB
{extra_server}
providers:
  - name: openai
    kind: openai
    base_url: {mock_url}/v1
    api_key: sk-llmux-test-SECRET-0123456789
    timeouts: {{ connect: 1s, first_byte: 2s, idle: 2s, total: 20s }}
  - name: backup
    kind: openai_compatible
    base_url: {mock_url}/v1
    api_key: local-key
  - name: dead
    kind: openai
    base_url: http://127.0.0.1:{dead_port}/v1
    api_key: sk-dead
    timeouts: {{ connect: 500ms }}
models:
  - name: chat
    targets: [ {{ provider: openai, model: gpt-4o-mini }} ]
  - name: fb-429
    targets: [ {{ provider: openai, model: "gpt-4o-mini@status=429,retry_after=0" }}, {{ provider: backup, model: gpt-4o-mini }} ]
  - name: fb-500
    targets: [ {{ provider: openai, model: "gpt-4o-mini@status=500" }}, {{ provider: backup, model: gpt-4o-mini }} ]
  - name: fb-dead
    targets: [ {{ provider: dead, model: gpt-4o-mini }}, {{ provider: backup, model: gpt-4o-mini }} ]
  - name: fb-hang
    targets: [ {{ provider: openai, model: "gpt-4o-mini@hang" }}, {{ provider: backup, model: gpt-4o-mini }} ]
  - name: all-fail
    targets: [ {{ provider: openai, model: "gpt-4o-mini@status=500" }}, {{ provider: backup, model: "gpt-4o-mini@status=503" }} ]
  - name: all-429
    targets: [ {{ provider: openai, model: "gpt-4o-mini@status=429,retry_after=7" }} ]
  - name: bad-request
    targets: [ {{ provider: openai, model: "gpt-4o-mini@status=400" }}, {{ provider: backup, model: gpt-4o-mini }} ]
  - name: mid-drop
    targets: [ {{ provider: openai, model: "gpt-4o-mini@drop" }}, {{ provider: backup, model: gpt-4o-mini }} ]
  - name: mid-stall
    targets: [ {{ provider: openai, model: "gpt-4o-mini@stall=5000" }} ]
routing:
  max_attempts: 3
  request_timeout: 30s
  retry_budget: 1.0
# 1 MiB prompts (~260k tokens) must fit: lift gpt-4o-mini's 128k window for these tests.
pricing:
  gpt-4o-mini: {{ context_window: 10000000 }}
# These tests script failures on purpose; breakers are tested on their own gateways.
circuit_breaker: {{ failure_threshold: 100000 }}
"""


@pytest.fixture(scope="module")
def gateway(mock):
    g = Gateway(standard_config(mock.url, dead_port=free_port()))
    yield g
    g.stop()
