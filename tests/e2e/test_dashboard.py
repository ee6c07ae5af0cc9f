"""The on-call dashboard: `GET /admin/history` (its shape, its bounds) and `GET /dashboard`
in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): status rows,
plots, drain and reload with their confirmation, the admin token never in a URL.

The browser tests need .ci/install-dashboard-tools (chromium, the pins of
requirements-dashboard.txt); without them they fail, they never skip.
`LLMUX_DASHBOARD_INTERVAL_MS` shortens the sampler's 10 s step so the ring fills in seconds.
"""

import contextlib
import json
import os
import re
import struct
import tempfile
import time

import pytest
from conftest import Gateway, Mock

TOKEN = "adm-dash-TOKEN-7"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CHROMIUM = os.environ.get("LLMUX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SLOTS = 360
FLAKY = "flaky/dash-a@status=500"
GOOD = "good/dash-b"


def wait_until(pred, timeout=10.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def history(g, query=""):
    status, headers, raw = g.admin("GET", "/admin/history" + query, headers=AUTH)
    assert status == 200, raw
    assert headers["content-type"] == "application/json"
    return json.loads(raw), raw


def endpoints(g):
    status, _, raw = g.admin("GET", "/admin/endpoints", headers=AUTH)
    assert status == 200
    return {f'{e["provider"]}/{e["model"]}': e for e in json.loads(raw)["endpoints"]}


@pytest.fixture(scope="module")
def provider():
    m = Mock("--flavor", "openai")
    yield m
    m.stop()


@pytest.fixture(scope="module")
def dash(provider):
    """A gateway whose first target always fails (its breaker opens after 2 failures) and
    whose second, on a free tier, serves everything; sampled every 200 ms."""
    cfg = f"""
server: {{ listen: "{{LISTEN}}", admin_token: {TOKEN} }}
providers:
  - {{ name: flaky, kind: openai, base_url: "{provider.url}/v1", api_key: kf }}
  - name: good
    kind: openai
    base_url: "{provider.url}/v1"
    api_key: kg
    free_tier: {{ requests_per_minute: 1000, requests_per_day: 100000 }}
    budget: {{ usd_per_day: 50 }}
models:
  - {{ name: chat, targets: [ {{ provider: flaky, model: "dash-a@status=500" }}, {{ provider: good, model: dash-b }} ] }}
pricing:
  dash-b: {{ input: 1.0, output: 2.0 }}
circuit_breaker: {{ failure_threshold: 2, open_for: 300s }}
routing: {{ retry_budget: 1.0 }}
health_checks: {{ interval: 200ms }}
"""
    g = Gateway(cfg, env={"LLMUX_DASHBOARD_INTERVAL_MS": "200"})
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello dashboard"}]}
    for _ in range(6):
        status, headers, raw = g.request("POST", "/v1/chat/completions", body)
        assert status == 200, raw
        assert headers["x-llmux-provider"] == "good"
    yield g
    g.stop()


# --- the JSON history -----------------------------------------------------------------------


def test_page_and_assets_are_public_but_history_needs_the_token(dash):
    status, headers, page = dash.admin("GET", "/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = page.decode()
    assert "https://" not in page and "http://" not in page, "no CDN: everything is embedded"
    for path, kind in [
        ("/dashboard/assets/app.js", "text/javascript"),
        ("/dashboard/assets/app.css", "text/css"),
        ("/dashboard/assets/uPlot.iife.min.js", "text/javascript"),
        ("/dashboard/assets/uPlot.min.css", "text/css"),
        ("/dashboard/assets/uPlot.LICENSE", "text/plain"),
    ]:
        status, headers, body = dash.admin("GET", path)
        assert status == 200 and headers["content-type"].startswith(kind), path
        assert len(body) == int(headers["content-length"]) > 0
    assert dash.admin("GET", "/dashboard/assets/uPlot.LICENSE")[2].startswith(b"The MIT License")
    # The data and everything else stay behind the token.
    assert dash.admin("GET", "/admin/history")[0] == 401
    assert dash.admin("GET", "/admin/history", headers={"authorization": "Bearer nope"})[0] == 401
    assert dash.admin("GET", "/dashboard/assets/other.js")[0] == 401
    assert dash.admin("GET", "/dashboard/assets/other.js", headers=AUTH)[0] == 404
    assert dash.admin("POST", "/dashboard")[0] == 401


def test_history_shape(dash):
    # The sampler picks the traffic up within a few 200 ms steps: 2 failed attempts on the
    # flaky endpoint, then 6 successes on the good one.
    def sampled():
        d, _ = history(dash)
        return sum(v for v in d["total"]["requests"] if v) == 8 and len(d["t_ms"]) >= 3

    assert wait_until(sampled, timeout=10), "no samples: is HistorySampler running (server.rs)?"
    d, _ = history(dash)
    assert d["interval_ms"] == 200 and d["slots"] == SLOTS
    t = d["t_ms"]
    assert 3 <= len(t) <= SLOTS and t == sorted(t) and len(set(t)) == len(t)
    assert abs(t[-1] - time.time() * 1000) < 5000, "unix milliseconds"
    assert set(d["total"]) == {"requests", "errors", "cost_usd"}
    assert all(len(col) == len(t) for col in d["total"].values())
    assert sum(v for v in d["total"]["errors"] if v) == 2
    assert sum(v for v in d["total"]["cost_usd"] if v) > 0

    eps = {e["id"]: e for e in d["endpoints"]}
    assert list(eps) == [FLAKY, GOOD], "config order"
    flaky, good = eps[FLAKY], eps[GOOD]
    assert flaky["breaker"]["state"] == "open"
    assert flaky["breaker"]["half_open_at_ms"] > time.time() * 1000 + 200_000
    assert (flaky["requests"], flaky["errors"], flaky["error_rate"]) == (2, 2, 1)
    assert flaky["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert good["breaker"] == {"state": "closed", "half_open_at_ms": None}
    assert good["drained"] is False and good["requests"] == 6 and good["errors"] == 0
    assert good["latency_ms"]["p95"] > 0 and good["spend_today_usd"] > 0
    assert good["spend_today_usd"] == pytest.approx(good["cost_usd"])
    assert good["quota_left"]["limit"] in (1000, 100000)
    assert flaky["quota_left"] is None
    # The same live state as /admin/endpoints.
    admin = endpoints(dash)
    for id_, e in eps.items():
        for field in ["health", "drained", "requests", "errors", "tokens", "cost_usd"]:
            assert e[field] == admin[id_][field], (id_, field)
        assert e["breaker"]["state"] == admin[id_]["breaker"]["state"]

    names = {
        "requests", "errors", "latency_p50", "latency_p95", "latency_p99", "ttft_p50",
        "ttft_p95", "ttft_p99", "tokens_input", "tokens_output", "tokens_cache_read",
        "tokens_cache_write", "cost_usd", "cache_hit_rate", "breaker", "health", "drained",
        "error_rate",
    }
    for e in (flaky, good):
        assert set(e["series"]) == names
        assert all(len(col) == len(t) for col in e["series"].values())
    assert sum(v for v in good["series"]["requests"] if v) == 6
    assert sum(v for v in good["series"]["tokens_output"] if v) == good["tokens"]["output"] > 0
    assert flaky["series"]["breaker"][-1] == 2 and good["series"]["breaker"][-1] == 0
    assert max(v for v in good["series"]["latency_p95"] if v is not None) > 0
    assert all(v is None for v in flaky["series"]["latency_p50"])

    (chat,) = d["models"]
    assert chat["name"] == "chat" and chat["strategy"] == "fallback"
    assert chat["targets"] == [
        {"provider": "flaky", "model": "dash-a@status=500"},
        {"provider": "good", "model": "dash-b"},
    ]
    assert chat["served"] == [{"provider": "good", "requests": 6}]
    assert chat["fallbacks"] == 6 and chat["failed"] == []

    prov = {p["name"]: p for p in d["providers"]}
    assert prov["flaky"]["free_tier"] is None and prov["flaky"]["budget"] is None
    tier = prov["good"]["free_tier"]
    assert tier["on_exhausted"] == "next_target"
    assert tier["requests_per_day"] == {"limit": 100000, "used": 6, "left": 99994}
    assert prov["good"]["budget"]["usd_per_day"] == 50
    assert prov["good"]["spend_today_usd"] == pytest.approx(good["cost_usd"])


def test_history_polling_filters(dash):
    d, _ = history(dash)
    last = d["t_ms"][-1]
    time.sleep(0.5)
    newer, _ = history(dash, f"?since_ms={last}&series=none")
    assert newer["epoch_ms"] == d["epoch_ms"]
    assert newer["t_ms"] and all(t > last for t in newer["t_ms"])
    assert len(newer["t_ms"]) <= 5
    assert all(len(col) == len(newer["t_ms"]) for col in newer["total"].values())
    assert all("series" not in e for e in newer["endpoints"])
    assert len(newer["endpoints"]) == 2 and newer["models"], "status is always whole"
    # Repeated `series=` (percent-encoded ids, as URLSearchParams sends them) keeps only those.
    one, _ = history(dash, "?series=flaky%2Fdash-a%40status%3D500")
    assert "series" in one["endpoints"][0] and "series" not in one["endpoints"][1]


# --- bounded with 50 endpoints --------------------------------------------------------------


@pytest.fixture(scope="module")
def fifty(provider):
    """50 endpoints (10 aliases of 5 targets), sampled every 20 ms: the ring fills in 7 s."""
    models = "\n".join(
        f"  - {{ name: alias{a}, targets: ["
        + ", ".join(f"{{ provider: p{a % 3}, model: m{a * 5 + i:02} }}" for i in range(5))
        + "] }"
        for a in range(10)
    )
    providers = "\n".join(
        f'  - {{ name: p{i}, kind: openai, base_url: "{provider.url}/v1", api_key: k{i} }}'
        for i in range(3)
    )
    cfg = f"""
server: {{ listen: "{{LISTEN}}", admin_token: {TOKEN} }}
providers:
{providers}
models:
{models}
"""
    g = Gateway(cfg, env={"LLMUX_DASHBOARD_INTERVAL_MS": "20"})
    for a in range(10):
        body = {"model": f"alias{a}", "messages": [{"role": "user", "content": "hi"}]}
        assert g.request("POST", "/v1/chat/completions", body)[0] == 200
    yield g
    g.stop()


def test_history_stays_bounded_with_50_endpoints(fifty):
    assert wait_until(lambda: len(history(fifty, "?series=none")[0]["t_ms"]) == SLOTS, timeout=30)
    d, raw = history(fifty)
    assert len(d["endpoints"]) == 50 and len(d["t_ms"]) == SLOTS
    for e in d["endpoints"]:
        assert all(len(col) == SLOTS for col in e["series"].values())
    # A full hour of 50 endpoints: about 18 numbers per endpoint per slot, short ones.
    assert len(raw) < 50 * SLOTS * 18 * 8, len(raw)
    time.sleep(1.0)  # 50 more samples: the ring turns, nothing grows
    d2, raw2 = history(fifty)
    assert len(d2["t_ms"]) == SLOTS and d2["t_ms"][0] > d["t_ms"][0]
    assert len(raw2) <= len(raw) * 1.05
    light, raw_light = history(fifty, "?series=none")
    assert len(raw_light) < 64 * 1024, "status of 50 endpoints without the series stays small"


# --- the page in Chromium --------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: run .ci/install-dashboard-tools", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run .ci/install-dashboard-tools", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def page_of(chromium, g):
    """A fresh page on the dashboard, with the URLs it requested and its script errors."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    urls, errors = [], []
    page.on("request", lambda r: urls.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Console errors count too (a failed fetch, a blocked asset).
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"http://127.0.0.1:{g.admin_port}/dashboard")
    try:
        yield page, urls, errors
    finally:
        context.close()


def login(page):
    page.wait_for_function("() => document.getElementById('status').textContent.includes('token')")
    page.fill("#token", TOKEN)
    page.click("#auth button[type=submit]")


def row(page, id_):
    return page.locator(f'tr.row[data-id="{id_}"]')


def canvas_sizes(page):
    return page.eval_on_selector_all(
        "canvas", "cs => cs.map(c => [c.getBoundingClientRect().width, c.getBoundingClientRect().height])"
    )


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_dashboard_in_chromium_shows_breakers_plots_and_drains(chromium, dash):
    with page_of(chromium, dash) as (page, urls, errors):
        login(page)
        flaky, good = row(page, FLAKY), row(page, GOOD)
        flaky.locator("td.breaker", has_text="open").wait_for()
        assert "trial at" in flaky.locator("td.breaker").inner_text()
        good.locator("td.breaker", has_text="closed").wait_for()
        good.locator("td.health", has_text="healthy").wait_for()
        assert "100.0%" in flaky.inner_text(), "error rate"
        # Spend today, and the free tier's tightest quota (per minute or per day: the
        # minute may have turned since the traffic).
        assert re.search(r"\$0\.\d+\t(\d+/1000 req/min|99994/100000 req/day)\t", good.inner_text())
        # Problems sort first.
        assert page.locator("tr.row").first.get_attribute("data-id") == FLAKY
        # Plots: 2 overview charts and 5 per endpoint (few endpoints: all shown), drawn.
        page.wait_for_function("() => document.querySelectorAll('tr.detail canvas').length >= 10")
        sizes = canvas_sizes(page)
        assert len(sizes) >= 12 and all(w > 100 and h > 50 for w, h in sizes), sizes
        assert page.locator("#models", has_text="fallbacks").count() == 1
        assert "good: 6" in page.locator("#models tbody").inner_text()

        # Drain asks first; cancelling changes nothing.
        good.locator("button.drain").click()
        assert page.locator("#confirm").is_visible()
        assert GOOD in page.locator("#confirm-text").inner_text()
        page.click("#confirm-cancel")
        time.sleep(0.3)
        assert endpoints(dash)[GOOD]["drained"] is False
        # Confirmed: the admin API reports it and the row shows it.
        good.locator("button.drain").click()
        page.click("#confirm-ok")
        assert wait_until(lambda: endpoints(dash)[GOOD]["drained"] is True, timeout=5)
        good.locator("td.drained", has_text="drained").wait_for()
        good.locator("button.undrain").wait_for()

        # Reload, confirmed.
        page.click("#reload")
        page.click("#confirm-ok")
        page.wait_for_function("() => document.getElementById('note').textContent === 'config reloaded'")

        # Kept as a test artifact (target/test-artifacts/dashboard.png).
        artifacts = os.path.join(os.path.dirname(__file__), "..", "..", "target", "test-artifacts")
        os.makedirs(artifacts, exist_ok=True)
        shot = os.path.join(artifacts, "dashboard.png")
        page.screenshot(path=shot, full_page=True)
        width, height = png_size(shot)
        assert width >= 1400 and height >= 1000
        assert os.path.getsize(shot) > 30_000, "a rendered page, not a blank one"

        # The token went in headers only: never in a URL, and not stored unless asked.
        assert urls and not any(TOKEN in u for u in urls)
        assert TOKEN not in page.url
        assert page.evaluate("sessionStorage.length") == 0
        assert errors == []
        # Works offline: no request leaves the admin listener on 127.0.0.1.
        origin = f"http://127.0.0.1:{dash.admin_port}/"
        assert all(u.startswith(origin) for u in urls), [u for u in urls if not u.startswith(origin)]

        # Undrain from the page puts it back.
        good.locator("button.undrain").click()
        page.click("#confirm-ok")
        assert wait_until(lambda: endpoints(dash)[GOOD]["drained"] is False, timeout=5)


def test_dashboard_loads_with_50_endpoints(chromium, fifty):
    with page_of(chromium, fifty) as (page, urls, errors):
        started = time.monotonic()
        login(page)
        page.wait_for_function("() => document.querySelectorAll('tr.row').length === 50")
        assert time.monotonic() - started < 10
        # Only the overview is drawn until a row is opened; a row opens its five plots.
        assert page.locator("tr.detail").count() == 0
        assert len(canvas_sizes(page)) == 2
        row(page, "p0/m00").locator("button.toggle").click()
        page.wait_for_function("() => document.querySelectorAll('tr.detail canvas').length === 5")
        assert all(w > 100 and h > 50 for w, h in canvas_sizes(page))
        page.fill("#filter", "m4")
        page.wait_for_function("() => document.querySelectorAll('tr.row').length === 10")
        assert errors == [] and not any(TOKEN in u for u in urls)
