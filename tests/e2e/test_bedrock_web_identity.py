"""EKS web identity for `kind: bedrock`, end to end.

llmux runs as on EKS with IRSA: no static AWS keys, only AWS_WEB_IDENTITY_TOKEN_FILE and
AWS_ROLE_ARN (plus AWS_ENDPOINT_URL_STS pointing at a fake STS in this process). The fake STS
answers AssumeRoleWithWebIdentity with short-lived credentials and registers each set with
`llmux mock` (POST /_mock/aws-credentials), which then verifies every SigV4 signature against
the registered credentials: a request the gateway signs with anything but the STS answer (wrong
access key, secret or session token) is refused as Bedrock would refuse it.
"""

import json
import os
import subprocess
import tempfile
import threading
import time
import http.client
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from openai import OpenAI
from conftest import BIN, Gateway, Mock

ROLE_ARN = "arn:aws:iam::123456789012:role/llmux-e2e"
SESSION_NAME = "llmux-e2e-session"
MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
# Credentials live 66 s: past the adapter's 60 s safety margin they are usable for 6 s, so the
# refresher renews them every ~3 s (half of the usable life) and a rotation shows up quickly.
LIFETIME_S = 66


class FakeSts:
    """AssumeRoleWithWebIdentity on 127.0.0.1, recording each call."""

    def __init__(self, mock: Mock, token_path: str):
        self.mock = mock
        self.token_path = token_path
        self.calls = []  # dicts: form fields, file contents at call time, issued credentials
        self.lock = threading.Lock()
        sts = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length).decode()
                form = {k: v[0] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}
                with open(sts.token_path) as f:
                    on_disk = f.read()
                with sts.lock:
                    n = len(sts.calls) + 1
                    creds = {
                        "access_key_id": f"ASIASTSE2E{n:06d}",
                        "secret_access_key": f"sts-secret-{n}-{uuid.uuid4().hex}",
                        "session_token": f"sts-session-{n}-{uuid.uuid4().hex}",
                    }
                    sts.calls.append(
                        {
                            "form": form,
                            "content_type": self.headers.get("content-type", ""),
                            "path": self.path,
                            "token_on_disk": on_disk,
                            "creds": creds,
                            "at": time.monotonic(),
                        }
                    )
                # The mock accepts exactly what STS hands out.
                status, _, _ = mock_post(sts.mock, "/_mock/aws-credentials", creds)
                assert status == 200
                expiry = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + LIFETIME_S)
                )
                body = f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:default:llmux</SubjectFromWebIdentityToken>
    <AssumedRoleUser><Arn>{ROLE_ARN}/{SESSION_NAME}</Arn><AssumedRoleId>AROA:{SESSION_NAME}</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{creds["access_key_id"]}</AccessKeyId>
      <SecretAccessKey>{creds["secret_access_key"]}</SecretAccessKey>
      <SessionToken>{creds["session_token"]}</SessionToken>
      <Expiration>{expiry}</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>""".encode()
                self.send_response(200)
                self.send_header("content-type", "text/xml")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return list(self.calls)

    def wait_for(self, predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self.snapshot()
            if predicate(calls):
                return calls
            time.sleep(0.05)
        tokens = [c["form"].get("WebIdentityToken") for c in self.snapshot()]
        raise AssertionError(f"STS calls never matched; tokens seen: {tokens}")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def mock_post(mock, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=5)
    conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def write_token(path, token):
    """Replaces the token file atomically, as the kubelet does."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(token)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def setup():
    bedrock = Mock("--flavor", "bedrock")
    token_dir = tempfile.mkdtemp(prefix="llmux-irsa-")
    token_path = os.path.join(token_dir, "token")
    first_token = f"eyJhbGciOiJSUzI1NiJ9.first-{uuid.uuid4().hex}.sig"
    write_token(token_path, first_token)
    sts = FakeSts(bedrock, token_path)
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - name: bedrock
    kind: bedrock
    base_url: "{bedrock.url}"
    region: us-east-1
    probe: {{ method: GET, path: /async-invoke }}
models:
  - {{ name: claude, targets: [ {{ provider: bedrock, model: "{MODEL}" }} ] }}
health_checks: {{ interval: 500ms }}
"""
    env = {
        "AWS_WEB_IDENTITY_TOKEN_FILE": token_path,
        "AWS_ROLE_ARN": ROLE_ARN,
        "AWS_ROLE_SESSION_NAME": SESSION_NAME,
        "AWS_ENDPOINT_URL_STS": sts.url,
        "AWS_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        # Only web identity: no static keys or Bedrock API key from the outer environment.
        for var in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_BEARER_TOKEN_BEDROCK",
        ):
            mp.delenv(var, raising=False)
        gateway = Gateway(cfg, env=env)
    yield {
        "gateway": gateway,
        "mock": bedrock,
        "sts": sts,
        "token_path": token_path,
        "first_token": first_token,
    }
    gateway.stop()
    sts.stop()
    bedrock.stop()


def converse_log(mock):
    return [r for r in mock.requests() if r["path"].startswith("/model/")]


def complete(client, text, timeout=15.0):
    """A chat completion, retried while the first credentials are on their way."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.chat.completions.create(
                model="claude", messages=[{"role": "user", "content": text}]
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_sts_credentials_sign_bedrock_requests_and_follow_token_rotation(setup):
    gateway, mock, sts = setup["gateway"], setup["mock"], setup["sts"]
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)

    calls = sts.wait_for(lambda c: len(c) >= 1)
    first = calls[0]
    assert first["path"] == "/"
    assert first["content_type"].startswith("application/x-www-form-urlencoded")
    assert first["form"]["Action"] == "AssumeRoleWithWebIdentity"
    assert first["form"]["Version"] == "2011-06-15"
    assert first["form"]["RoleArn"] == ROLE_ARN
    assert first["form"]["RoleSessionName"] == SESSION_NAME
    # The token sent is the token file's contents.
    assert first["form"]["WebIdentityToken"] == setup["first_token"] == first["token_on_disk"]

    out = complete(client, "Hello through web identity")
    assert out.choices[0].message.content.startswith("mock reply to: Hello through web identity")
    issued = {c["creds"]["access_key_id"] for c in sts.snapshot()}
    entry = converse_log(mock)[-1]
    # Signed with an STS-issued access key; the mock verified the signature with the STS
    # secret and the session token against the STS one (anything else is a 403).
    assert entry["aws_access_key_id"] in issued
    assert entry["headers"]["authorization"] == "present"
    assert entry["headers"]["x-amz-security-token"] == "present"
    assert entry["headers"]["x-amz-date"].endswith("Z")

    # Short-lived credentials are renewed before they become unusable.
    sts.wait_for(lambda c: len(c) >= 3)

    # Kubernetes rotates the projected token: the next refresh reads the new one.
    second_token = f"eyJhbGciOiJSUzI1NiJ9.second-{uuid.uuid4().hex}.sig"
    write_token(setup["token_path"], second_token)
    rotated_at = time.monotonic()
    calls = sts.wait_for(
        lambda c: any(x["form"]["WebIdentityToken"] == second_token for x in c)
    )
    first_new = next(i for i, c in enumerate(calls) if c["form"]["WebIdentityToken"] == second_token)
    assert calls[first_new]["at"] - rotated_at < 10, "picked up on the next refresh"
    # Wait for one more refresh, so the credentials from the new token are in use.
    calls = sts.wait_for(lambda c: len(c) > first_new + 1)
    # Each refresh sent the file's contents of the moment: the first token before the rotation,
    # the new one from the first refresh after it on.
    assert all(c["form"]["WebIdentityToken"] == setup["first_token"] for c in calls if c["at"] < rotated_at)
    assert all(c["form"]["WebIdentityToken"] == second_token for c in calls[first_new:])
    new_keys = {c["creds"]["access_key_id"] for c in calls[first_new:]}

    out = complete(client, "Hello after rotation")
    assert out.choices[0].message.content.startswith("mock reply to: Hello after rotation")
    assert converse_log(mock)[-1]["aws_access_key_id"] in new_keys

    # A streamed answer is signed the same way.
    text = ""
    for chunk in client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "Stream it"}], stream=True
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text.startswith("mock reply to: Stream it")
    assert converse_log(mock)[-1]["aws_access_key_id"].startswith("ASIASTSE2E")

    # The `probe:` override is signed with the STS credentials like any request: the mock
    # answers it 200 only for a valid signature, and the endpoint is healthy by probe.
    probes = [r for r in mock.requests() if r["path"] == "/async-invoke"]
    assert probes and all(r["method"] == "GET" for r in probes)
    assert any(r.get("aws_access_key_id", "").startswith("ASIASTSE2E") for r in probes)
    status, _, raw = gateway.admin("GET", "/admin/endpoints")
    assert status == 200
    (endpoint,) = json.loads(raw)["endpoints"]
    assert endpoint["health"] == "healthy", endpoint

    # Neither the tokens nor any secret reach the log.
    log = gateway.log
    assert "bedrock web identity: credentials for role" in log
    for c in sts.snapshot():
        creds = c["creds"]
        for secret in (
            c["form"]["WebIdentityToken"],
            creds["secret_access_key"],
            creds["session_token"],
            creds["access_key_id"],
        ):
            assert secret not in log


def test_check_accepts_a_web_identity_only_config(setup, tmp_path):
    """`llmux check` accepts a config whose only credentials are a web identity (it starts no
    refresher: STS here is a closed port), and still names what is missing without one."""

    cfg = tmp_path / "llmux.yaml"
    cfg.write_text(
        f"""
providers:
  - {{ name: bedrock, kind: bedrock, region: us-east-1 }}
models:
  - {{ name: claude, targets: [ {{ provider: bedrock, model: "{MODEL}" }} ] }}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_WEB_IDENTITY_TOKEN_FILE=setup["token_path"],
        AWS_ROLE_ARN=ROLE_ARN,
        AWS_ENDPOINT_URL_STS="http://127.0.0.1:1",
    )
    r = subprocess.run([BIN, "check", "--config", str(cfg)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    env.pop("AWS_ROLE_ARN")
    r = subprocess.run([BIN, "check", "--config", str(cfg)], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "no AWS credentials" in r.stdout + r.stderr


def test_not_ready_until_the_first_credentials_arrive(tmp_path):
    """A pod must not get traffic it cannot sign: `/readyz` fails while STS has not answered,
    and a request meanwhile is a retryable 5xx, not a hang."""
    from conftest import free_port

    bedrock = Mock("--flavor", "bedrock")
    token_path = tmp_path / "token"
    token_path.write_text("eyJ.not-yet.sig")
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: bedrock, kind: bedrock, base_url: "{bedrock.url}", region: us-east-1 }}
models:
  - {{ name: claude, targets: [ {{ provider: bedrock, model: "{MODEL}" }} ] }}
"""
    env = {
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_path),
        "AWS_ROLE_ARN": ROLE_ARN,
        "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{free_port()}",  # nobody listens
        "AWS_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"):
            mp.delenv(var, raising=False)
        g = Gateway(cfg, env=env)
    try:
        time.sleep(0.5)
        assert g.request("GET", "/healthz")[0] == 200
        assert g.request("GET", "/readyz")[0] == 503
        body = {"model": "claude", "messages": [{"role": "user", "content": "hi"}]}
        status, _, raw = g.request("POST", "/v1/chat/completions", body)
        assert status in (502, 503), raw
        assert converse_log(bedrock) == [], "nothing unsigned was sent"
    finally:
        g.stop()
        bedrock.stop()
