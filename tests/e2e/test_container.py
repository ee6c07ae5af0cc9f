"""The container image in deploy/Dockerfile: built with the exact command deploy/README.md
gives (a statically linked release build, then `docker build`), it holds the binary and
the CA bundle and nothing else, and it runs read-only as UID 65532 with only a config
folder mounted: the official `openai` SDK gets a chat completion through it from a
`llmux mock` on the host, and `docker stop` (SIGTERM) ends it with exit code 0.

Needs Docker: `.ci/install-deploy-tools` installs docker.io and starts dockerd. Without a
running daemon this test fails (it is never skipped). It removes what it creates.
"""

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, Mock, free_port
from openai import OpenAI

README = ROOT / "deploy" / "README.md"
STATIC_BIN = ROOT / "target" / "x86_64-unknown-linux-gnu" / "release" / "llmux"
INSTALL = "run .ci/install-deploy-tools (as root): it installs docker.io and starts dockerd"
BUILD_TIMEOUT = 30 * 60  # a cold static release build of pingora: ~6 min on 2 idle cores


def run(args, timeout, check=True, **kw):
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, args))}")
    if check and out.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def docker_problem():
    """None when a Docker daemon answers, else what is wrong."""
    exe = shutil.which("docker")
    if not exe:
        return "docker is not installed"
    try:
        info = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 30s"
    if info.returncode != 0 or not info.stdout.strip():
        return f"dockerd is not running ({info.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def docker():
    """The docker CLI; without a running daemon each test FAILS (in its body, not skipped)."""
    problem = docker_problem()
    if problem:
        pytest.fail(f"{problem}: {INSTALL}")
    return shutil.which("docker")


def build_command() -> str:
    """The one-line build + `docker build` command from deploy/README.md."""
    lines = [l for l in README.read_text().splitlines() if l.startswith("RUSTFLAGS=") and "docker build" in l]
    assert len(lines) == 1, "deploy/README.md gives exactly one build command line"
    return lines[0]


def is_static_elf(path: Path) -> bool:
    """An ELF executable with no PT_INTERP: it needs no dynamic loader (and no libc) at run time."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


@pytest.fixture(scope="module")
def image(docker, tmp_path_factory):
    tag = f"llmux-test:{uuid.uuid4().hex[:12]}"
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    # The command as a user runs it from a shell: without the variables `cargo test` sets for
    # its test processes (ring's build script tracks CARGO_MANIFEST_DIR, so keeping them
    # would rebuild everything the next time the command runs from a shell, and back).
    injected = ("CARGO", "CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR", "CARGO_TARGET_DIR", "CARGO_ENCODED_RUSTFLAGS",
                "RUSTFLAGS", "RUST_RECURSION_COUNT")
    env = {k: v for k, v in os.environ.items()
           if k not in injected and not k.startswith(("CARGO_PKG_", "CARGO_BIN_EXE_"))}
    # `cargo test` also puts its own library folders in front of LD_LIBRARY_PATH.
    paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":")
             if p and not p.startswith(str(ROOT / "target")) and "/toolchains/" not in p]
    env.pop("LD_LIBRARY_PATH", None)
    if paths:
        env["LD_LIBRARY_PATH"] = ":".join(paths)
    env["IMAGE"] = tag
    with open(log, "w") as f:
        build = subprocess.Popen(["bash", "-c", build_command()], cwd=ROOT, env=env, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = build.wait(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(build.pid, signal.SIGKILL)  # cargo, rustc and docker with it
            build.wait()
            pytest.fail(f"the image build took over {BUILD_TIMEOUT}s:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    print(f"static build + docker build: {time.monotonic() - started:.0f}s")
    try:
        assert code == 0, f"the build command from deploy/README.md failed:\n{text[-5000:]}"
        yield tag
    finally:
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=120)


def test_static_binary_and_a_minimal_image(request, tmp_path):
    docker, image = request.getfixturevalue("docker"), request.getfixturevalue("image")
    assert is_static_elf(STATIC_BIN), "the release binary needs no dynamic loader"
    out = run([str(STATIC_BIN), "--version"], 10)
    assert out.stdout.startswith("llmux ")

    cfg = json.loads(run([docker, "image", "inspect", image], 30).stdout)[0]["Config"]
    assert cfg["User"] == "65532:65532"
    assert "LLMUX_CONFIG=/etc/llmux/llmux.yaml" in cfg["Env"]
    assert cfg["Entrypoint"] == ["/usr/local/bin/llmux"] and cfg["Cmd"] == ["serve"]
    assert set(cfg["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}

    # Every file in every layer: the binary and the CA bundle, nothing else.
    saved = tmp_path / "image.tar"
    run([docker, "save", "-o", str(saved), image], 120)
    files = {}
    with tarfile.open(saved) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(layer).read())) as t:
                for m in t.getmembers():
                    if not m.isdir():
                        files["/" + m.name.lstrip("./")] = m
    assert set(files) == {"/usr/local/bin/llmux", "/etc/ssl/certs/ca-certificates.crt"}, sorted(files)
    binary = files["/usr/local/bin/llmux"]
    assert binary.uid == 0 and binary.mode & 0o022 == 0, "the runtime user cannot modify the binary"
    assert binary.size == STATIC_BIN.stat().st_size
    assert files["/etc/ssl/certs/ca-certificates.crt"].size > 10_000


class TinyDns:
    """A DNS server on a loopback address, port 53, answering every A question with
    127.0.0.1 (and AAAA with no address), so the container resolves an upstream by DNS."""

    ADDR = "127.77.0.53"

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((self.ADDR, 53))
        except OSError as e:
            pytest.fail(f"cannot bind {self.ADDR}:53 for the test DNS server ({e}): run the suite as root, as CI does")
        self.sock.settimeout(0.2)
        self.questions = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                q, peer = self.sock.recvfrom(512)
            except (socket.timeout, OSError):
                continue
            tid, = struct.unpack_from(">H", q)
            i, labels = 12, []
            while q[i]:
                labels.append(q[i + 1:i + 1 + q[i]].decode())
                i += q[i] + 1
            qtype, = struct.unpack_from(">H", q, i + 1)
            self.questions.append((".".join(labels), qtype))
            question = q[12:i + 5]
            answers = b""
            if qtype == 1:
                answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton("127.0.0.1")
            header = struct.pack(">HHHHHH", tid, 0x8180, 1, 1 if answers else 0, 0, 0)
            self.sock.sendto(header + question + answers, peer)

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_image_serves_the_openai_sdk_read_only_as_uid_65532(request, tmp_path):
    docker, image = request.getfixturevalue("docker"), request.getfixturevalue("image")
    mock = Mock("--flavor", "openai")
    dns = TinyDns()
    port, admin = free_port(), free_port()
    # Name resolution in a static glibc binary with no NSS libraries in the image: the main
    # upstream is found by DNS (the resolv.conf mounted, as Kubernetes mounts one), the
    # backup through /etc/hosts (`localhost`).
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {TinyDns.ADDR}\noptions timeout:2 attempts:2\n")
    resolv.chmod(0o644)
    # Mounted like the ConfigMap: a folder at /etc/llmux, read-only.
    conf = tmp_path / "etc-llmux"
    conf.mkdir()
    (conf / "llmux.yaml").write_text(f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin}
  shutdown_grace: 10s
providers:
  - name: openai
    kind: openai
    base_url: http://mock.llmux.test:{mock.port}/v1
    api_key: ${{OPENAI_API_KEY}}
  - name: backup
    kind: openai
    base_url: http://localhost:{mock.port}/v1
    api_key: ${{OPENAI_API_KEY}}
models:
  - name: chat
    targets: [ {{ provider: openai, model: gpt-4o-mini }} ]
  - name: via-hosts
    targets: [ {{ provider: backup, model: gpt-4o-mini }} ]
""")
    conf.chmod(0o755)
    (conf / "llmux.yaml").chmod(0o644)
    tmp_path.chmod(0o755)
    name = f"llmux-test-{uuid.uuid4().hex[:12]}"
    # Loopback only: the container shares the host's network namespace; no port is published.
    run([docker, "run", "-d", "--name", name, "--network", "host", "--read-only", "--user", "65532:65532",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "-v", f"{conf}:/etc/llmux:ro", "-v", f"{resolv}:/etc/resolv.conf:ro", "-e", "OPENAI_API_KEY=sk-container-test-0123456789", image], 60)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and not ready:
            state = json.loads(run([docker, "inspect", name], 30).stdout)[0]["State"]
            assert state["Running"], f"the container exited ({state['ExitCode']}):\n{logs(docker, name)}"
            ready = readyz(port) == 200
            if not ready:
                time.sleep(0.2)
        assert ready, f"/readyz never answered:\n{logs(docker, name)}"

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=20, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "Hello from a container"}])
        reply = raw.parse()
        assert reply.choices[0].message.content.startswith("mock reply to: Hello from a container")
        assert raw.headers["x-llmux-provider"] == "openai" and raw.headers["x-llmux-model"] == "gpt-4o-mini"
        assert ("mock.llmux.test", 1) in dns.questions, "the upstream was resolved by DNS"
        hosts = client.chat.completions.with_raw_response.create(model="via-hosts", messages=[{"role": "user", "content": "hi"}])
        assert hosts.headers["x-llmux-provider"] == "backup", "and `localhost` through /etc/hosts"
        chunks = list(client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "and a stream"}], stream=True,
            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith("mock reply to: and a stream") and chunks[-1].usage.total_tokens > 0
        assert any(r["path"] == "/v1/chat/completions" for r in mock.requests())

        # It really runs as 65532, with a read-only root.
        top = run([docker, "top", name, "-o", "pid,uid,args"], 30).stdout
        assert re.search(r"^\s*\d+\s+65532\s+/usr/local/bin/llmux serve\s*$", top, re.M), top
        inspect = json.loads(run([docker, "inspect", name], 30).stdout)[0]["HostConfig"]
        assert inspect["ReadonlyRootfs"] is True

        # `docker stop` sends SIGTERM to llmux as PID 1: it drains and exits 0.
        started = time.monotonic()
        run([docker, "stop", "-t", "20", name], 40)
        assert time.monotonic() - started < 15
        state = json.loads(run([docker, "inspect", name], 30).stdout)[0]["State"]
        assert state["ExitCode"] == 0, logs(docker, name)
        assert "sk-container-test" not in logs(docker, name)
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=60)
        dns.close()
        mock.stop()


def readyz(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/readyz")
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def logs(docker, name):
    out = subprocess.run([docker, "logs", name], capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr
