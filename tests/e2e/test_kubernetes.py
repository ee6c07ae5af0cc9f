"""The Kubernetes deployment in deploy/kubernetes: every overlay renders with kustomize,
validates strictly against the Kubernetes API schemas (1.29, the first release with native
sidecars, and the newest the validator ships), passes checkov offline, keeps the
invariants a pod relies on, and a pod simulation runs `llmux` exactly as the sidecar
manifest does, through a ConfigMap-style config swap and a SIGTERM drain.

The tools (kubectl, kubernetes-validate, checkov) come from `.ci/install-deploy-tools`, in
the venv $LLMUX_DEPLOY_TOOLS (default /opt/llmux-deploy-tools). Missing tools fail the
tests with that instruction: nothing here is skipped.
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import BIN, ROOT, Mock, Proc, free_port

TOOLS = Path(os.environ.get("LLMUX_DEPLOY_TOOLS", "/opt/llmux-deploy-tools")) / "bin"
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["sidecar", "legacy-sidecar", "shared-gateway"]
SECRET_EXAMPLE = KUSTOMIZE_ROOT / "secret.example.yaml"
SKIPS_DOC = ROOT / "deploy" / "checkov-skips.md"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
INSTALL = "run .ci/install-deploy-tools (as root) to install it"


def tool(name: str) -> str:
    path = TOOLS / name
    if path.exists():
        return str(path)
    pytest.fail(f"{name} not found in {TOOLS}: {INSTALL}")


def run(args, timeout, **kw):
    """Runs a command, bounded in time; returns CompletedProcess (text)."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, args))}")


def yaml_docs(text: str) -> list:
    """Parses multi-document YAML with the tools venv's PyYAML (not a suite dependency)."""
    code = "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)"
    out = run([tool("python"), "-c", code], 60, input=text)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def kustomize(path: Path) -> str:
    out = run([tool("kubectl"), "kustomize", str(path)], 120)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """overlay name -> (file with the rendered YAML, list of parsed resources)."""
    out_dir = tmp_path_factory.mktemp("rendered")
    result = {}
    for overlay in OVERLAYS:
        text = kustomize(KUSTOMIZE_ROOT / "overlays" / overlay)
        path = out_dir / f"{overlay}.yaml"
        path.write_text(text)
        result[overlay] = (path, yaml_docs(text))
    return result


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} in the rendered overlay"
    return found


def llmux_pod(docs):
    """(Deployment, pod spec, the llmux container, is-init-container) of an overlay."""
    for dep in find(docs, "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        for init in (True, False):
            for c in spec.get("initContainers" if init else "containers", []):
                if c["name"] == "llmux":
                    return dep, spec, c, init
    pytest.fail("no Deployment with a container named llmux")


def config_text(docs, pod_spec, container):
    """The llmux.yaml the container reads, from the ConfigMap volume it mounts."""
    mount = next(m for m in container["volumeMounts"] if m["name"] == "llmux-config")
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    cm = find(docs, "ConfigMap", volume["configMap"]["name"])[0]
    return cm["data"]["llmux.yaml"]


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration.strip())
    assert m, duration
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def config_value(text: str, key: str):
    m = re.search(rf"^\s+{key}:\s*(\S+)", text, re.M)
    return m.group(1) if m else None


# --- rendering, schemas, lint -------------------------------------------------------------


def test_every_overlay_renders_and_the_default_is_the_native_sidecar(rendered):
    kinds = {o: sorted(d["kind"] for d in docs) for o, (_, docs) in rendered.items()}
    assert kinds["sidecar"] == ["ConfigMap", "Deployment", "Namespace", "NetworkPolicy"]
    assert kinds["legacy-sidecar"] == kinds["sidecar"]
    assert kinds["shared-gateway"] == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace", "NetworkPolicy",
         "PodDisruptionBudget", "Service", "ServiceAccount"]
    )
    # `kubectl apply -k deploy/kubernetes` is the sidecar variant; the base renders alone too.
    assert kustomize(KUSTOMIZE_ROOT) == rendered["sidecar"][0].read_text()
    base = yaml_docs(kustomize(KUSTOMIZE_ROOT / "base"))
    assert [d["kind"] for d in base] == ["ConfigMap"]


@pytest.fixture(scope="module")
def k8s_versions():
    out = run([tool("python"), "-c", "from kubernetes_validate.utils import latest_version; print(latest_version())"], 60)
    assert out.returncode == 0, out.stderr
    newest = out.stdout.strip()
    assert tuple(map(int, newest.split("."))) >= (1, 29)
    return ["1.29.0", newest]


def test_manifests_validate_strictly_for_1_29_and_the_newest_kubernetes(rendered, k8s_versions, tmp_path):
    files = [str(p) for p, _ in rendered.values()] + [str(SECRET_EXAMPLE)]
    for version in k8s_versions:
        out = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files], 300)
        assert out.returncode == 0, f"Kubernetes {version}:\n{out.stdout}\n{out.stderr}"
    # The validator is strict: an unknown field is an error (so passing above means something).
    broken = tmp_path / "broken.yaml"
    broken.write_text(rendered["sidecar"][0].read_text().replace("restartPolicy: Always", "restartPolicy: Always\n        restartPolicyy: Always"))
    out = run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", k8s_versions[0], str(broken)], 120)
    assert out.returncode != 0 and "restartPolicyy" in out.stdout + out.stderr


def documented_skips():
    skips = re.findall(r"^\| (CKV2?_[A-Z0-9_]+) \|", SKIPS_DOC.read_text(), re.M)
    assert skips == sorted(set(skips), key=skips.index), "a check is listed twice"
    return skips


def test_checkov_passes_offline_with_only_the_documented_skips(rendered):
    skips = documented_skips()
    files = [p for p, _ in rendered.values()] + [DOCKERFILE]
    base = [tool("checkov"), "--skip-download", "--compact", "-o", "json",
            "--framework", "kubernetes", "dockerfile", *[a for p in files for a in ("-f", str(p))]]
    # Offline: no policy download, no update check; in a network namespace of its own when
    # this user may make one, so a call out fails at once instead of hanging.
    if shutil.which("unshare") and run(["unshare", "--net", "true"], 10).returncode == 0:
        base = ["unshare", "--net", *base]
    env = dict(os.environ, CKV_SKIP_PACKAGE_UPDATE_CHECK="true", BC_SKIP_MAPPING="TRUE", LOG_LEVEL="WARNING")
    # The gate: the documented skips passed as --skip-check, nothing may fail. Beside it, a
    # run without them, to see that each documented skip is still needed (both at once).
    gate = subprocess.Popen([*base, "--skip-check", ",".join(skips)] if skips else base,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    full = subprocess.Popen(base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    outs = {}
    for name, p in [("gate", gate), ("full", full)]:
        try:
            out, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            gate.kill(), full.kill()
            pytest.fail("checkov took over 600s")
        assert out.strip(), err[-3000:]
        reports = json.loads(out)
        outs[name] = (p.returncode, reports if isinstance(reports, list) else [reports], err)

    code, reports, err = outs["gate"]
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}, str(reports)[:2000]
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']} in {Path(c['file_path']).name})"
        for r in reports for c in r["results"]["failed_checks"]
    ]
    assert failed == [], "checkov failures (fix them, or skip with a reason in deploy/checkov-skips.md):\n" + "\n".join(failed)
    assert by_type["kubernetes"]["summary"]["passed"] > 100 and by_type["dockerfile"]["summary"]["passed"] > 5
    assert by_type["kubernetes"]["summary"]["parsing_errors"] == 0
    assert by_type["kubernetes"]["summary"]["resource_count"] >= sum(len(d) for _, d in rendered.values())
    assert code == 0, err[-3000:]

    _, reports, _ = outs["full"]
    needed = {c["check_id"] for r in reports for c in r["results"]["failed_checks"]}
    assert needed == set(skips), f"checkov-skips.md lists {sorted(skips)}; without them these fail: {sorted(needed)}"


# --- what a pod relies on -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_llmux_container_invariants(rendered, overlay):
    _, docs = rendered[overlay]
    dep, spec, c, is_init = llmux_pod(docs)
    cfg = config_text(docs, spec, c)

    # Native sidecar only where asked; the legacy variant is a plain second container.
    if overlay == "sidecar":
        assert is_init and c["restartPolicy"] == "Always"
        assert [x["name"] for x in spec["containers"]] == ["app"]
    elif overlay == "legacy-sidecar":
        assert not is_init and "restartPolicy" not in c and not spec.get("initContainers")
        assert [x["name"] for x in spec["containers"]] == ["app", "llmux"]
    else:
        assert not is_init and [x["name"] for x in spec["containers"]] == ["llmux"]

    # Config: the ConfigMap mounted as a directory (a subPath mount never sees updates).
    mounts = [m for m in c["volumeMounts"] if m["name"] == "llmux-config"]
    assert len(mounts) == 1 and "subPath" not in mounts[0] and "subPathExpr" not in mounts[0]
    assert mounts[0]["readOnly"] is True
    config_path = f"{mounts[0]['mountPath'].rstrip('/')}/llmux.yaml"
    assert f"--config={config_path}" in c["args"] and c["args"][0] == "serve"
    assert "command" not in c and c["image"].startswith("llmux:"), "the image's entrypoint runs llmux"
    env = {e["name"]: e for e in c["env"]}
    assert env["LLMUX_CONFIG"]["value"] == config_path

    # Every ${VAR} without a default comes from the Secret, as an env var.
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", re.sub(r"#.*", "", cfg)))
    assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "LLMUX_ADMIN_TOKEN"} <= required
    for var in required:
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "llmux-secrets", "key": var}
    secret_keys = set(yaml_docs(SECRET_EXAMPLE.read_text())[0]["stringData"])
    assert required <= secret_keys, "secret.example.yaml lists every key a variant reads"

    # Named ports, matching the listen addresses in args and config.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"llmux-http": 8080, "llmux-admin": 9090}
    assert "--listen=0.0.0.0:8080" in c["args"] and "--admin-listen=0.0.0.0:9090" in c["args"]
    assert config_value(cfg, "listen") == "0.0.0.0:8080" and config_value(cfg, "admin_listen") == "0.0.0.0:9090"
    # The admin port is on the pod IP: a token is required (llmux refuses to start without).
    assert config_value(cfg, "admin_token") == "${LLMUX_ADMIN_TOKEN}"
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == ports["llmux-admin"]
    assert ann["prometheus.io/path"] == "/metrics"

    # Probes on the named client port.
    for probe, path in [("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        assert c[probe]["httpGet"] == {"path": path, "port": "llmux-http"}, probe
        assert c[probe].get("timeoutSeconds", 1) <= c[probe].get("periodSeconds", 10)

    # The pod outlives the drain (and the preStop delay, where there is one).
    grace = seconds(config_value(cfg, "shutdown_grace"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert spec["terminationGracePeriodSeconds"] >= grace + pre_stop + 5

    # Resources and the restricted security profile, on every container of the pod.
    res = c["resources"]
    assert set(res["requests"]) == {"cpu", "memory"} and set(res["limits"]) == {"cpu", "memory"}
    for container in spec.get("initContainers", []) + spec["containers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
    ns = find(docs, "Namespace")[0]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(d["metadata"].get("namespace") == ns["metadata"]["name"] for d in docs if d["kind"] != "Namespace")

    # The config itself passes `llmux check` with the Secret's keys in the env.
    check_env = dict(os.environ, **{k: f"test-{k.lower()}" for k in required})
    cfg_file = Path(rendered[overlay][0]).with_suffix(".llmux.yaml")
    cfg_file.write_text(cfg)
    out = run([BIN, "check", "--config", str(cfg_file)], 30, env=check_env)
    assert out.returncode == 0, out.stderr
    assert not any(f"test-{k.lower()}" in out.stdout + out.stderr for k in required)


def test_shared_gateway_service_hpa_pdb_point_at_the_gateway_pods(rendered):
    _, docs = rendered["shared-gateway"]
    dep, spec, c, _ = llmux_pod(docs)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selects = lambda sel: all(pod_labels.get(k) == v for k, v in sel.items())
    assert selects(dep["spec"]["selector"]["matchLabels"])
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    svc = find(docs, "Service", "llmux")[0]
    assert selects(svc["spec"]["selector"])
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "llmux-http")]
    hpa = find(docs, "HorizontalPodAutoscaler", "llmux")[0]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    pdb = find(docs, "PodDisruptionBudget", "llmux")[0]["spec"]
    assert selects(pdb["selector"]["matchLabels"]) and pdb["minAvailable"] < hpa["minReplicas"]
    assert spec["serviceAccountName"] == find(docs, "ServiceAccount", "llmux")[0]["metadata"]["name"]
    cfg = config_text(docs, spec, c)
    assert "api_keys:" in cfg and "${LLMUX_GATEWAY_KEY}" in cfg, "a shared gateway asks clients for a key"
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0


# --- a pod, simulated ---------------------------------------------------------------------


def http_get(port, path, headers=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def chat(port, model="chat", content="hello from the pod", timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]})
        conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_until(pred, timeout, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def configmap_volume(root: Path, version: str, text: str):
    """Writes the file set a kubelet writes for a ConfigMap volume and swaps `..data` to it
    atomically, removing the previous version, as the kubelet's AtomicWriter does."""
    data_dir = root / version
    data_dir.mkdir()
    (data_dir / "llmux.yaml").write_text(text)
    data = root / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    os.symlink(version, root / "..data_tmp")
    os.replace(root / "..data_tmp", data)
    if not (root / "llmux.yaml").is_symlink():
        os.symlink("..data/llmux.yaml", root / "llmux.yaml")
    if old:
        shutil.rmtree(root / old)


def test_pod_simulation_config_swap_and_sigterm_drain(rendered, tmp_path):
    """Starts llmux as the sidecar manifest does: its args and env (the Secret's keys set,
    the config's documented base-URL overrides pointed at `llmux mock`), the ConfigMap as a
    kubelet lays it out, only the ports replaced with free ones."""
    _, docs = rendered["sidecar"]
    _, spec, c, _ = llmux_pod(docs)
    cfg = config_text(docs, spec, c)
    grace = seconds(config_value(cfg, "shutdown_grace"))
    mount = next(m for m in c["volumeMounts"] if m["name"] == "llmux-config")["mountPath"]
    volume = tmp_path / "etc-llmux"
    volume.mkdir()
    configmap_volume(volume, "..2026_01_01_00_00_00.000000001", cfg)

    # Ports: each containerPort gets a free one; the rest of the args is kept verbatim.
    port_map = {p["containerPort"]: free_port() for p in c["ports"]}
    names = {p["name"]: port_map[p["containerPort"]] for p in c["ports"]}
    http_port, admin_port = names["llmux-http"], names["llmux-admin"]

    def localize(value: str) -> str:
        value = value.replace(mount, str(volume))
        for old, new in port_map.items():
            value = re.sub(rf":{old}\b", f":{new}", value)
        return value

    args = [localize(a) for a in c["args"]]
    mock = Mock("--flavor", "all")
    secrets = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "ANTHROPIC", "LLMUX"))}
    for e in c["env"]:
        if "value" in e:
            env[e["name"]] = localize(e["value"])
        else:
            assert e["valueFrom"]["secretKeyRef"]["name"] == "llmux-secrets"
            secrets[e["name"]] = env[e["name"]] = f"test-{e['name'].lower()}-0123456789"
    # The config's documented base-URL overrides (${OPENAI_BASE_URL:-...}) point at the mock.
    assert "${OPENAI_BASE_URL:-" in cfg and "${ANTHROPIC_BASE_URL:-" in cfg
    env["OPENAI_BASE_URL"] = f"{mock.url}/v1"
    env["ANTHROPIC_BASE_URL"] = mock.url

    pod = Proc([BIN, *args], http_port, env=env, more_ports=(admin_port,))
    try:
        # startupProbe / readinessProbe / livenessProbe, as the kubelet sends them.
        assert wait_until(lambda: http_get(http_port, "/readyz")[0] == 200, timeout=10), pod.log
        assert http_get(http_port, "/healthz")[0] == 200
        # Prometheus on the admin port (bound to all addresses): the token is required.
        assert http_get(admin_port, "/metrics")[0] == 401
        token = secrets["LLMUX_ADMIN_TOKEN"]
        status, metrics = http_get(admin_port, "/metrics", {"authorization": f"Bearer {token}"})
        assert status == 200 and b"llmux_" in metrics

        status, headers, raw = chat(http_port)
        assert status == 200, raw
        assert (headers["x-llmux-provider"], headers["x-llmux-model"]) == ("openai", "gpt-4o-mini")
        assert json.loads(raw)["choices"][0]["message"]["content"].startswith("mock reply to: hello from the pod")

        # A ConfigMap update: the kubelet writes a new version and swaps `..data`.
        slow = "gpt-4o-mini@chunk_delay=50"
        v2 = cfg.replace("{ provider: openai, model: gpt-4o-mini }", f'{{ provider: openai, model: "{slow}" }}')
        assert v2 != cfg
        reloads_before = pod.log.count("config reloaded")
        configmap_volume(volume, "..2026_01_01_00_05_00.000000002", v2)
        assert wait_until(lambda: chat(http_port)[1].get("x-llmux-model") == slow, timeout=5), pod.log
        time.sleep(1.2)  # one more file-watch tick: the swap must not reload twice
        log = pod.log
        assert log.count("config reloaded") - reloads_before == 1, log
        assert "rejected" not in log
        for value in secrets.values():
            assert value not in log, "a secret reached the log"

        # SIGTERM with a stream in flight: /readyz fails at once, the stream finishes,
        # the process exits 0 within server.shutdown_grace.
        stream = {}
        first_byte = threading.Event()

        def run_stream():
            s = socket.create_connection(("127.0.0.1", http_port), timeout=grace + 5)
            body = json.dumps({"model": "chat", "stream": True, "messages": [
                {"role": "user", "content": "stream this back to me slowly, word by word, " * 3}]})
            s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nhost: llmux\r\ncontent-type: application/json\r\n"
                       f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}").encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                if b"data: " in data + chunk:
                    first_byte.set()
                data += chunk
            s.close()
            stream["raw"], stream["done_at"] = data, time.monotonic()

        t = threading.Thread(target=run_stream, daemon=True)
        t.start()
        assert first_byte.wait(5), "the stream started"
        pod.proc.send_signal(signal.SIGTERM)
        term_at = time.monotonic()
        # The kubelet's next readiness probe fails: within a few ms, long before the stream ends.
        assert wait_until(lambda: http_get(http_port, "/readyz", timeout=2)[0] == 503, timeout=0.5, every=0.01), \
            "/readyz fails from the moment SIGTERM arrives"
        readyz_at = time.monotonic()
        t.join(grace + 5)
        assert not t.is_alive(), "the stream finished"
        raw = stream["raw"]
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        events = [line[len(b"data: "):] for line in payload.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]" and not any(b'"error"' in e for e in events), payload[-500:]
        assert len(events) > 10, "a real stream, long enough to be in flight at SIGTERM"
        assert stream["done_at"] - readyz_at > 0.2, "the stream outlived the SIGTERM"
        try:
            code = pod.proc.wait(timeout=max(0.0, grace - (time.monotonic() - term_at)))
        except subprocess.TimeoutExpired:
            pytest.fail(f"llmux still running {grace}s after SIGTERM:\n{pod.log}")
        assert code == 0, pod.log
    finally:
        pod.stop()
        mock.stop()
