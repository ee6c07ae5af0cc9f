"""Shared state across replicas (`state.backend: redis`): three `llmux serve` processes and a
real `redis-server` on 127.0.0.1, started by the test. Budgets and free tiers hold across the
fleet, a breaker tripped on one replica keeps the others off the endpoint, one replica probes
each endpoint per interval, and Redis going away mid-load fails no request."""

import json
import shutil
import subprocess
import threading
import time

import pytest
from conftest import Gateway, Mock, free_port, wait_port

# A missing tool is a failure, not a skip: `.ci/run` installs Debian's redis-server.
assert shutil.which("redis-server") and shutil.which("redis-cli"), "install redis-server"

REPLICAS = 3


class Redis:
    """`redis-server` without persistence: a restart loses every key, like a pod restart."""

    def __init__(self):
        self.port = free_port()
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.cli("PING") != "PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip()

    def counter(self, pattern: str) -> int:
        """Sum of the fleet counters whose keys match `pattern`."""
        keys = [k for k in self.cli("--scan", "--pattern", pattern).splitlines() if k]
        return sum(int(self.cli("GET", k) or 0) for k in keys)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


@pytest.fixture
def redis():
    r = Redis()
    yield r
    r.kill()


def fleet(cfg: str, n=REPLICAS):
    return [Gateway(cfg) for _ in range(n)]


def stop_all(gateways):
    for g in gateways:
        g.stop()


# The replicas' `state.sync_interval` in `state_block`.
SYNC_INTERVAL_S = 0.1


def state_block(redis, prefix, extra=""):
    return f"""
state:
  backend: redis
  redis_url: "{redis.url}"
  key_prefix: {prefix}
  sync_interval: {int(SYNC_INTERVAL_S * 1000)}ms
  {extra}
"""


def chat(g, model, headers=None):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return g.request("POST", "/v1/chat/completions", body, headers=headers)


def endpoints(g):
    status, _, raw = g.admin("GET", "/admin/endpoints")
    assert status == 200
    return json.loads(raw)


def breaker_of(g, provider):
    (e,) = [e for e in endpoints(g)["endpoints"] if e["provider"] == provider]
    return e["breaker"]["state"]


def wait_synced(gateways, timeout=5.0):
    """Until every replica has synced with Redis once (leases are then claimed ahead)."""
    deadline = time.monotonic() + timeout
    while not all(endpoints(g)["state"].get("connected") for g in gateways):
        assert time.monotonic() < deadline, [endpoints(g)["state"] for g in gateways]
        time.sleep(0.05)


def drain_until_refused(gateways, send, limit=200):
    """Round-robin requests until every replica refused twice in a row, a sync apart;
    returns the statuses and the codes of the refusals.

    A replica that spent ahead of its lease refuses until its next sync settles the debt
    (a request here costs more than a lease), so a refusal counts towards "exhausted" only
    once a sync interval has passed since it: a fast client would otherwise stop while the
    fleet still had budget, and stop with leases claimed but unspent."""
    served, refused_in_a_row, codes = 0, [0] * len(gateways), set()
    for i in range(limit):
        g = i % len(gateways)
        if min(refused_in_a_row) >= 2:
            break
        status, raw = send(gateways[g])
        if status == 200:
            served += 1
            refused_in_a_row[g] = 0
        else:
            assert status == 429, raw
            codes.add(json.loads(raw)["error"]["code"])
            refused_in_a_row[g] += 1
            time.sleep(SYNC_INTERVAL_S * 1.5)
    assert min(refused_in_a_row) >= 2, "every replica ends up refusing"
    return served, codes


def test_three_replicas_share_a_free_tier_of_n_requests(redis, mock):
    n = 12
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: free, kind: openai, base_url: "{mock.url}/v1", api_key: k, free_tier: {{ requests_per_day: {n}, on_exhausted: reject }} }}
models:
  - {{ name: chat, targets: [ {{ provider: free, model: m }} ] }}
{state_block(redis, "t1")}"""
    gws = fleet(cfg)
    try:
        wait_synced(gws)
        served, codes = drain_until_refused(gws, lambda g: (lambda s, h, r: (s, r))(*chat(g, "chat")))
        # Documented bound: each replica may spend one lease (here 1 request) ahead of
        # its claim; no lease is stranded because every replica keeps receiving traffic.
        assert n <= served <= n + REPLICAS, served
        assert codes == {"budget_exceeded"}
        time.sleep(0.5)
        assert redis.counter("t1:ledger:provider:free:rpd:*") == served, "Redis holds the fleet total"
        for g in gws:
            assert chat(g, "chat")[0] == 429, "the next request is refused on every replica"
    finally:
        stop_all(gws)


def test_free_tier_overflow_moves_to_the_paid_fallback_across_replicas(redis, mock):
    n = 9
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: free, kind: openai, base_url: "{mock.url}/v1", api_key: k, free_tier: {{ requests_per_day: {n}, on_exhausted: next_target }} }}
  - {{ name: paid, kind: openai, base_url: "{mock.url}/v1", api_key: k }}
models:
  - {{ name: chat, targets: [ {{ provider: free, model: m }}, {{ provider: paid, model: m }} ] }}
{state_block(redis, "t2")}"""
    gws = fleet(cfg)
    try:
        wait_synced(gws)
        providers = []
        for i in range(30):
            status, headers, raw = chat(gws[i % REPLICAS], "chat")
            assert status == 200, raw
            providers.append(headers["x-llmux-provider"])
        free = providers.count("free")
        assert n <= free <= n + REPLICAS, providers
        assert providers[-REPLICAS:] == ["paid"] * REPLICAS, "the overflow goes to the paid target"
    finally:
        stop_all(gws)


def test_three_replicas_share_a_usd_budget(redis, mock):
    # The cost of one request, measured through a plain gateway first.
    price = "pricing:\n  priced: { input: 1000.0, output: 1000.0 }\n"
    probe = Gateway(
        f"""
server: {{ listen: "{{LISTEN}}" }}
providers: [ {{ name: p, kind: openai, base_url: "{mock.url}/v1", api_key: k }} ]
models: [ {{ name: chat, targets: [ {{ provider: p, model: priced }} ] }} ]
{price}"""
    )
    try:
        status, headers, _ = chat(probe, "chat")
        assert status == 200
        cost = float(headers["x-llmux-cost-usd"])
    finally:
        probe.stop()
    assert cost > 0
    budget = cost * 10.5  # 11 requests reach it
    cfg = f"""
server:
  listen: "{{LISTEN}}"
  api_keys:
    - {{ name: team-a, key: key-a, budget: {{ usd_per_day: {budget!r} }} }}
providers: [ {{ name: p, kind: openai, base_url: "{mock.url}/v1", api_key: k }} ]
models: [ {{ name: chat, targets: [ {{ provider: p, model: priced }} ] }} ]
{price}{state_block(redis, "t3")}"""
    gws = fleet(cfg)
    try:
        wait_synced(gws)
        auth = {"authorization": "Bearer key-a"}
        served, codes = drain_until_refused(
            gws, lambda g: (lambda s, h, r: (s, r))(*chat(g, "chat", headers=auth))
        )
        # Cost is known after the answer: a replica may overspend by the request it had
        # in flight when its lease ran out (one each here, requests being sequential).
        assert 11 <= served <= 11 + REPLICAS, served
        assert codes == {"budget_exceeded"}
        time.sleep(0.5)
        spent = redis.counter("t3:ledger:key:team-a:usd_day:*") / 1e9
        assert abs(spent - served * cost) < 1e-6 * served + 1e-9, (spent, served * cost)
    finally:
        stop_all(gws)


def test_requests_do_not_each_wake_the_sync(redis, mock):
    """A replica syncs with Redis on its interval, or sooner when a limited lease runs
    low; never per request. The unlimited quantities a request also counts (requests per
    minute, tokens, monthly USD here) have no lease, and used to wake the sync on every
    request: a Redis round trip per request per replica."""
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: p, kind: openai, base_url: "{mock.url}/v1", api_key: k, budget: {{ usd_per_day: 1000000 }}, free_tier: {{ requests_per_day: 1000000000 }} }}
models: [ {{ name: chat, targets: [ {{ provider: p, model: m }} ] }} ]
state:
  backend: redis
  redis_url: "{redis.url}"
  key_prefix: t-wake
  sync_interval: 1s
"""
    (g,) = fleet(cfg, n=1)
    try:
        wait_synced([g])

        def syncs():  # one MGET per sync (the fleet's breaker and probe state)
            stats = redis.cli("INFO", "commandstats")
            line = next((ln for ln in stats.splitlines() if ln.startswith("cmdstat_mget:")), "")
            return int(line.split("calls=")[1].split(",")[0]) if line else 0

        before, started = syncs(), time.monotonic()
        for _ in range(100):
            assert chat(g, "chat")[0] == 200
        elapsed = time.monotonic() - started
        woken = syncs() - before
        # The interval's syncs, plus one to claim the first leases (the first request
        # spends ahead of them), plus one of slack for a sync in flight at either end.
        assert woken <= int(elapsed) + 3, f"{woken} syncs for 100 requests in {elapsed:.1f} s"
    finally:
        stop_all([g])


def flaky_fleet(redis, prefix, breaker):
    """A failing target with a healthy backup, on three replicas; probes out of the way."""
    flaky = Mock("--flavor", "openai")
    backup = Mock("--flavor", "openai")
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: flaky, kind: openai, base_url: "{flaky.url}/v1", api_key: k }}
  - {{ name: backup, kind: openai, base_url: "{backup.url}/v1", api_key: k }}
models:
  - {{ name: chat, targets: [ {{ provider: flaky, model: "m@status=500" }}, {{ provider: backup, model: m }} ] }}
routing: {{ retry_budget: 1.0 }}
health_checks: {{ interval: 5m }}
circuit_breaker: {breaker}
{state_block(redis, prefix)}"""
    return flaky, backup, fleet(cfg)


def test_a_breaker_tripped_on_one_replica_is_skipped_by_the_others(redis):
    flaky, backup, gws = flaky_fleet(redis, "t4", "{ failure_threshold: 2, open_for: 30s }")
    try:
        wait_synced(gws)
        one, others = gws[0], gws[1:]
        for _ in range(4):
            if breaker_of(one, "flaky") == "open":
                break
            assert chat(one, "chat")[0] == 200, "the backup answers"
        assert breaker_of(one, "flaky") == "open"
        tripped = time.monotonic()
        paid = len([r for r in flaky.requests() if r["path"].endswith("/chat/completions")])
        assert paid == 2, "replica 1 paid for the discovery"
        # Within a second the other replicas have the breaker open too...
        while not all(breaker_of(g, "flaky") == "open" for g in others):
            assert time.monotonic() - tripped < 1.0, [endpoints(g) for g in others]
            time.sleep(0.02)
        assert all(endpoints(g)["endpoints"][0]["breaker_opened_by_fleet"] for g in others)
        # ...and their users never reach the failing target.
        for g in others:
            for _ in range(5):
                status, headers, _ = chat(g, "chat")
                assert status == 200 and headers["x-llmux-provider"] == "backup"
        calls = [r for r in flaky.requests() if r["path"].endswith("/chat/completions")]
        assert len(calls) == paid, "no request from replicas 2 and 3 reached it"
    finally:
        stop_all(gws)
        flaky.stop()
        backup.stop()


def test_one_replica_sends_the_half_open_trial(redis):
    flaky, backup, gws = flaky_fleet(redis, "t5", "{ failure_threshold: 1, open_for: 2s }")
    try:
        wait_synced(gws)
        assert chat(gws[0], "chat")[0] == 200
        assert breaker_of(gws[0], "flaky") == "open"
        before = len([r for r in flaky.requests() if r["path"].endswith("/chat/completions")])
        time.sleep(2.5)  # past the open time: a trial is due
        # Every replica gets traffic at once; only the trial's winner tries the endpoint.
        threads = [threading.Thread(target=chat, args=(g, "chat")) for g in gws for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        calls = [r for r in flaky.requests() if r["path"].endswith("/chat/completions")]
        assert len(calls) - before == 1, "one trial for the fleet, not one per replica"
    finally:
        stop_all(gws)
        flaky.stop()
        backup.stop()


def test_one_probe_per_endpoint_per_interval_for_the_fleet(redis):
    upstream = Mock("--flavor", "openai")
    cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: p, kind: openai, base_url: "{upstream.url}/v1", api_key: k }}
models:
  - {{ name: chat, targets: [ {{ provider: p, model: m }} ] }}
health_checks: {{ interval: 1s }}
{state_block(redis, "t6")}"""
    gws = fleet(cfg)
    try:
        wait_synced(gws)
        time.sleep(1.2)
        upstream.reset()
        time.sleep(4.0)
        probes = [r for r in upstream.requests() if r["path"].startswith("/v1/models")]
        # Four intervals: about four probes for the fleet (three replicas alone would send ~12).
        assert 2 <= len(probes) <= 6, probes
        # Followers take the leader's verdict.
        for g in gws:
            assert endpoints(g)["endpoints"][0]["health"] == "healthy"
    finally:
        stop_all(gws)
        upstream.stop()


def test_redis_killed_mid_load_fails_nothing_and_counters_reconcile(redis, mock):
    cfg = f"""
server:
  listen: "{{LISTEN}}"
  api_keys:
    - {{ name: team-a, key: key-a, budget: {{ usd_per_day: 1000 }} }}
providers:
  - {{ name: free, kind: openai, base_url: "{mock.url}/v1", api_key: k, free_tier: {{ requests_per_day: 100000 }} }}
models:
  - {{ name: chat, targets: [ {{ provider: free, model: m }} ] }}
{state_block(redis, "t7", "timeout: 100ms")}"""
    gws = fleet(cfg)
    auth = {"authorization": "Bearer key-a"}
    try:
        wait_synced(gws)
        latencies = []
        slow = threading.Thread(target=redis.cli, args=("DEBUG", "SLEEP", "1.5"))
        for i in range(150):
            if i == 20:
                slow.start()  # Redis stalls (every call times out) before it dies
            if i == 50:
                slow.join()
                redis.kill()
            if i == 75:
                time.sleep(0.5)  # the replicas have noticed
                for g in gws:
                    state = endpoints(g)["state"]
                    assert state["connected"] is False, state
                    status, _, raw = g.request("GET", "/readyz")
                    assert status == 200 and json.loads(raw)["state"]["connected"] is False
                    _, _, metrics = g.admin("GET", "/metrics")
                    assert "llmux_state_up 0" in metrics.decode()
            if i == 100:
                redis.start()  # empty: it lost every counter
            started = time.monotonic()
            status, _, raw = chat(gws[i % REPLICAS], "chat", headers=auth)
            latencies.append(time.monotonic() - started)
            assert status == 200, (i, raw)
        baseline = max(latencies[:20])
        # Redis is never on the request path: no request waited for it.
        assert max(latencies[20:]) < baseline + 0.5, (baseline, max(latencies[20:]))
        # Back: every replica re-adds its own counts; idle leases are given back.
        deadline = time.monotonic() + 10
        while redis.counter("t7:ledger:provider:free:rpd:*") != 150:
            assert time.monotonic() < deadline, redis.counter("t7:ledger:provider:free:rpd:*")
            time.sleep(0.2)
        for g in gws:
            assert endpoints(g)["state"]["connected"] is True
            _, _, metrics = g.admin("GET", "/metrics")
            assert "llmux_state_up 1" in metrics.decode()
    finally:
        stop_all(gws)


def test_deny_fails_budgets_closed_when_redis_is_unreachable(mock):
    dead = free_port()
    cfg = f"""
server:
  listen: "{{LISTEN}}"
  api_keys:
    - {{ name: capped, key: key-a, budget: {{ usd_per_day: 1000 }} }}
    - {{ name: open, key: key-b }}
providers: [ {{ name: p, kind: openai, base_url: "{mock.url}/v1", api_key: k }} ]
models: [ {{ name: chat, targets: [ {{ provider: p, model: m }} ] }} ]
state:
  backend: redis
  redis_url: "redis://:hunter2-secret@127.0.0.1:{dead}"
  on_unavailable: deny
"""
    g = Gateway(cfg)
    try:
        status, _, raw = chat(g, "chat", headers={"authorization": "Bearer key-a"})
        assert status == 429 and json.loads(raw)["error"]["code"] == "budget_exceeded"
        assert "unreachable" in json.loads(raw)["error"]["message"]
        assert chat(g, "chat", headers={"authorization": "Bearer key-b"})[0] == 200, "no budget: served"
        deadline = time.monotonic() + 5
        while endpoints(g)["state"]["errors"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        state = endpoints(g)["state"]
        assert state["connected"] is False and state["last_sync"] is None
        assert "hunter2" not in json.dumps(state) and "hunter2" not in g.log
    finally:
        g.stop()


def test_rediss_with_a_password_over_tls(tmp_path, mock):
    """`rediss://` (TLS, the CA from SSL_CERT_FILE) with a password that never shows."""

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=llmux-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
            "-subj", "/CN=127.0.0.1")
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "srv.crt", "-days", "1", "-extfile", "ext")
    port, password = free_port(), "tls-s3cret-pass"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "srv.crt", "--tls-key-file", "srv.key", "--tls-ca-cert-file", "ca.crt",
         "--tls-auth-clients", "no", "--requirepass", password, "--save", ""],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def cli(*args):
        out = subprocess.run(
            ["redis-cli", "--tls", "--cacert", str(tmp_path / "ca.crt"), "-p", str(port),
             "--no-auth-warning", "-a", password, *args],
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip()

    try:
        deadline = time.monotonic() + 10
        while cli("PING") != "PONG":
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.05)
        cfg = f"""
server: {{ listen: "{{LISTEN}}" }}
providers:
  - {{ name: free, kind: openai, base_url: "{mock.url}/v1", api_key: k, free_tier: {{ requests_per_day: 100 }} }}
models:
  - {{ name: chat, targets: [ {{ provider: free, model: m }} ] }}
state:
  backend: redis
  redis_url: "rediss://:{password}@127.0.0.1:{port}"
  key_prefix: t8
  sync_interval: 100ms
"""
        g = Gateway(cfg, env={"SSL_CERT_FILE": str(tmp_path / "ca.crt")})
        try:
            wait_synced([g])
            for _ in range(3):
                assert chat(g, "chat")[0] == 200
            deadline = time.monotonic() + 5
            while not cli("--scan", "--pattern", "t8:ledger:provider:free:rpd:*"):
                assert time.monotonic() < deadline, "the lease was claimed over TLS"
                time.sleep(0.1)
            _, _, metrics = g.admin("GET", "/metrics")
            seen = json.dumps(endpoints(g)) + g.request("GET", "/readyz")[2].decode()
            assert password not in seen + metrics.decode() + g.log
        finally:
            g.stop()
    finally:
        server.kill()
        server.wait()
