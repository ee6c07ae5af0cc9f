"""`llmux check` and `llmux schema` as a user runs them; the README's demo command."""

import json
import os
import subprocess
import tempfile

from openai import OpenAI
from conftest import BIN, ROOT, Gateway, Proc, free_port


def check(text, env=None):
    fd, path = tempfile.mkstemp(suffix=".yaml")
    os.write(fd, text.encode())
    os.close(fd)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMUX_TEST_")}
    run_env.update(env or {})
    p = subprocess.run([BIN, "check", "--config", path], capture_output=True, text=True, env=run_env)
    return p.returncode, p.stdout + p.stderr, path


def test_check_reports_line_and_column_of_a_typo():
    text = "providers:\n  - name: a\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\n    api_key: k\n    timeouts: { conect: 2s }\nmodels: []\n"
    rc, out, path = check(text)
    assert rc == 1
    assert f"{path}:6:17:" in out, out
    assert "conect" in out


def test_check_reports_an_unknown_target_provider_at_its_line():
    text = "providers:\n  - { name: a, kind: openai_compatible, base_url: 'http://127.0.0.1:1/v1' }\nmodels:\n  - name: chat\n    targets:\n      - { provider: nope, model: m }\n"
    rc, out, path = check(text)
    assert rc == 1
    assert f"{path}:6:" in out and "nope" in out, out


def test_missing_env_var_is_named_and_its_value_never_printed():
    text = "providers:\n  - name: a\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\n    api_key: ${LLMUX_TEST_MISSING_KEY}\n"
    rc, out, path = check(text)
    assert rc == 1
    assert "LLMUX_TEST_MISSING_KEY" in out and f"{path}:5:" in out, out
    text = "server: { listen: '${LLMUX_TEST_LISTEN}' }\n"
    rc, out, _ = check(text, {"LLMUX_TEST_LISTEN": "sk-not-an-address-SECRET"})
    assert rc == 1 and "SECRET" not in out, out


def test_check_accepts_the_shipped_configs():
    for name in ["conf/demo.yaml", "conf/llmux.yaml"]:
        env = dict(os.environ, OPENAI_API_KEY="sk-x")
        p = subprocess.run([BIN, "check", "--config", str(ROOT / name)], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr


def test_admin_on_a_non_loopback_address_needs_a_token(mock):
    port, admin = free_port(), free_port()
    fd, path = tempfile.mkstemp(suffix=".yaml")
    os.write(fd, f"providers: [ {{ name: p, kind: openai, base_url: '{mock.url}/v1', api_key: k }} ]\n".encode())
    os.close(fd)
    p = subprocess.run(
        [BIN, "serve", "--config", path, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"0.0.0.0:{admin}"],
        capture_output=True, text=True, timeout=20,
    )
    assert p.returncode == 1
    assert "admin_token" in p.stderr and "loopback" in p.stderr, p.stderr


def test_schema_is_json_schema_of_the_config():
    p = subprocess.run([BIN, "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(p.stdout)
    assert {"server", "providers", "models", "routing"} <= set(schema["properties"])


def test_readme_demo_command_serves_with_no_keys():
    # The README runs `cargo run -- serve --config conf/demo.yaml`; same binary, free port.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    args = [BIN, "serve", "--config", "conf/demo.yaml", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{free_port()}"]
    p = Proc(args, port, env=env)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        for _ in range(10):  # the demo's primary fails 20% of requests; fallback hides it
            out = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}])
            assert out.choices[0].message.content.startswith("mock reply to: Hello")
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}], stream=True)
            if c.choices
        )
        assert text.startswith("mock reply to: Hello")
    finally:
        p.stop()
