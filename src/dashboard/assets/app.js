// llmux on-call dashboard. Its only data source is GET /admin/history (polled); actions
// are the admin API's drain/undrain and reload. The admin token the user types is kept in
// memory (or sessionStorage when "remember" is ticked), sent as a bearer header, never put
// in a URL. Part of the page's 24 KiB own-file budget (src/dashboard/mod.rs).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "llmux-admin-token";
  let token = sessionStorage.getItem(KEY) || "";
  let D = null; // last document: live status, models, providers
  let T = []; // sample times (ms), oldest first
  let TOT = {}; // totals columns aligned with T
  let S = {}; // endpoint id -> series columns aligned with T
  let epoch = 0, interval = 10000, slots = 360;
  let full = true, busy = false, timer = 0, autoOpened = false;
  const open = new Set(); // endpoints whose plots are shown
  const details = {}; // id -> persistent plot container
  const plots = {}; // key -> uPlot

  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const k in props || {}) {
      const v = props[k];
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const c of kids) if (c != null) el.append(c);
    return el;
  }
  const badge = (text, cls) => h("span", { class: "b " + cls, text });
  const show = (id) => (msg, bad) => { const s = $(id); s.textContent = msg; s.className = bad ? "b bad" : ""; };
  const say = show("status"), note = show("note"); // polling state; the last action's result
  const ms = (v) => v == null ? "—" : v >= 10000 ? (v / 1000).toFixed(1) + " s" : (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
  const span = (t) => t < 120000 ? Math.round(t / 1000) + " s" : Math.round(t / 60000) + " min";
  const usd = (v) => v == null ? "—" : v === 0 ? "$0" : "$" + (v >= 1 ? v.toFixed(2) : v.toPrecision(2));
  const pct = (v) => v == null ? "—" : (v * 100).toFixed(1) + "%";
  const clock = (t) => new Date(t).toLocaleTimeString();
  const ABBR = { requests_per_minute: "req/min", requests_per_day: "req/day", tokens_per_minute: "tok/min" };

  async function api(method, path) {
    const headers = {};
    if (token) headers.authorization = "Bearer " + token;
    const r = await fetch(path, { method, headers, cache: "no-store", credentials: "omit" });
    const text = await r.text();
    let body = null;
    try { body = JSON.parse(text); } catch (e) { /* not JSON */ }
    if (!r.ok) {
      const err = new Error(r.status + ": " + (body && body.error ? body.error.message : text));
      err.status = r.status;
      throw err;
    }
    return body;
  }

  async function poll() {
    clearTimeout(timer);
    if (busy) return;
    busy = true;
    const wasFull = full;
    let failed = false;
    try {
      const q = new URLSearchParams();
      if (!wasFull && T.length) q.set("since_ms", T[T.length - 1]);
      if (open.size) for (const id of open) q.append("series", id);
      else q.set("series", "none");
      const d = await api("GET", "/admin/history?" + q);
      if (!wasFull && d.epoch_ms !== epoch) full = true; // the gateway restarted
      else { merge(d, wasFull); full = false; render(); }
      say("updated " + clock(Date.now()));
    } catch (e) {
      failed = true;
      say(e.status === 401 ? "admin token missing or wrong: type it above" : "error: " + e.message, true);
    } finally {
      busy = false;
      timer = setTimeout(poll, full && !failed ? 0 : Math.min(5000, Math.max(1000, interval / 2)));
    }
  }

  function merge(d, wasFull) {
    if (wasFull) { T = []; TOT = {}; S = {}; }
    epoch = d.epoch_ms; interval = d.interval_ms; slots = d.slots;
    const before = T.length;
    T = T.concat(d.t_ms);
    const cut = Math.max(0, T.length - slots);
    T = T.slice(cut);
    const add = (cols, src) => {
      for (const k in src) cols[k] = (cols[k] || new Array(before).fill(null)).concat(src[k]).slice(cut);
    };
    add(TOT, d.total);
    const seen = new Set();
    for (const e of d.endpoints) {
      if (!e.series) continue;
      seen.add(e.id);
      add(S[e.id] || (S[e.id] = {}), e.series);
    }
    for (const id in S) if (!seen.has(id)) delete S[id];
    D = d;
  }

  function severity(e) {
    return (e.breaker.state === "open" ? 8 : e.breaker.state === "half_open" ? 4 : 0) +
      (e.health === "unhealthy" ? 8 : 0) + (e.drained ? 2 : 0) + (e.error_rate > 0.05 ? 1 : 0);
  }

  function render() {
    if (!D) return;
    const eps = D.endpoints;
    if (!autoOpened) {
      autoOpened = true;
      if (eps.length <= 4) { for (const e of eps) open.add(e.id); if (eps.length) { full = true; } }
    }
    const count = (f) => eps.filter(f).length;
    const spend = D.providers.reduce((a, p) => a + (p.spend_today_usd || 0), 0);
    const reqs = (TOT.requests || []).reduce((a, v) => a + (v || 0), 0);
    $("summary").textContent = `${eps.length} endpoints · ${count((e) => e.breaker.state === "open")} open breakers · ` +
      `${count((e) => e.health === "unhealthy")} unhealthy · ${count((e) => e.drained)} drained · ` +
      `spend today ${usd(spend)} · ${reqs} attempts in the last ${span(T.length * interval)}`;
    renderOverview();
    renderEndpoints(eps);
    renderModels();
    renderProviders();
  }

  const perSec = (a) => (a || []).map((v) => v == null ? null : v * 1000 / interval);
  const perMin = (a) => (a || []).map((v) => v == null ? null : v * 60000 / interval);
  const xs = () => T.map((t) => t / 1000);

  function plot(key, el, title, labels, colors, data, width) {
    let u = plots[key];
    if (!u) {
      u = plots[key] = new uPlot({
        title, width, height: 160,
        series: [{}].concat(labels.map((label, i) => ({ label, stroke: colors[i], width: 1.5 }))),
        axes: [{}, { size: 56 }],
        legend: { live: false },
      }, data, el);
    } else {
      if (u.width !== width) u.setSize({ width, height: 160 });
      u.setData(data);
    }
  }

  function renderOverview() {
    const w = Math.max(300, Math.floor(($("ov-traffic").parentNode.clientWidth - 24) / 2));
    plot("ov-traffic", $("ov-traffic"), "All endpoints: attempts/s and errors/s", ["attempts/s", "errors/s"],
      ["#264653", "#d62828"], [xs(), perSec(TOT.requests), perSec(TOT.errors)], w);
    plot("ov-cost", $("ov-cost"), "All endpoints: spend (USD/min)", ["USD/min"], ["#6a4c93"], [xs(), perMin(TOT.cost_usd)], w);
  }

  function renderEndpoints(eps) {
    const f = $("filter").value.trim().toLowerCase();
    const rows = eps.filter((e) => !f || e.id.toLowerCase().includes(f))
      .sort((a, b) => severity(b) - severity(a) || (a.id < b.id ? -1 : 1));
    const body = h("tbody");
    for (const e of rows) {
      const shown = open.has(e.id);
      const br = e.breaker;
      const brCell = h("td", { class: "breaker" },
        badge(br.state.replace("_", "-"), br.state === "closed" ? "ok" : br.state === "open" ? "bad" : "warn"));
      if (br.half_open_at_ms) {
        const secs = Math.max(0, Math.round((br.half_open_at_ms - Date.now()) / 1000));
        brCell.append(h("span", { class: "dim", text: ` trial at ${clock(br.half_open_at_ms)} (in ${secs} s)` }));
      }
      const q = e.quota_left;
      body.append(h("tr", { "data-id": e.id, class: "row" },
        h("td", null, h("button", { class: "link toggle", title: "show plots", onclick: () => toggle(e.id) }, (shown ? "▾ " : "▸ ") + e.id)),
        h("td", { class: "health" }, badge(e.health, e.health === "healthy" ? "ok" : e.health === "unhealthy" ? "bad" : "dim")),
        brCell,
        h("td", { class: "drained" }, e.drained ? badge("drained", "warn") : "—"),
        h("td", null, pct(e.error_rate)),
        h("td", null, ms(e.latency_ms.p95)),
        h("td", null, ms(e.ttft_ms.p95)),
        h("td", null, `${e.requests} (${e.errors} failed)`),
        h("td", null, usd(e.spend_today_usd)),
        h("td", null, q ? badge(`${q.left}/${q.limit} ${ABBR[q.what] || q.what}`, q.left <= q.limit / 10 ? "bad" : "ok") : "—"),
        h("td", null, h("button", {
          class: e.drained ? "undrain" : "drain",
          onclick: () => act(e.drained ? "undrain" : "drain", e),
        }, e.drained ? "Undrain" : "Drain"))));
      if (shown) {
        const det = detail(e.id);
        body.append(h("tr", { class: "detail", "data-id": e.id }, h("td", { colspan: 11 }, det)));
        fill(e.id, det);
      }
    }
    for (const id in details) if (!open.has(id)) { dropPlots(id); delete details[id]; }
    $("endpoints").replaceChild(body, $("endpoints").tBodies[0]);
  }

  function detail(id) {
    if (!details[id]) details[id] = h("div", { class: "grid" });
    return details[id];
  }

  function fill(id, el) {
    const s = S[id];
    if (!s) { if (!el.firstChild) el.append(h("span", { class: "dim", text: "no samples yet" })); return; }
    if (el.firstChild && el.firstChild.tagName === "SPAN") el.textContent = "";
    const x = xs(), w = Math.max(220, Math.floor(($("endpoints").clientWidth - 60) / 5));
    const cell = (k) => el.querySelector(`[data-k="${k}"]`) || el.appendChild(h("div", { class: "plot", "data-k": k }));
    const pcs = ["#2a9d8f", "#e9c46a", "#e76f51"], L = ["P50", "P95", "P99"];
    plot(id + "|lat", cell("lat"), "latency (ms)", L, pcs, [x, s.latency_p50, s.latency_p95, s.latency_p99], w);
    plot(id + "|ttft", cell("ttft"), "time to first token (ms)", L, pcs, [x, s.ttft_p50, s.ttft_p95, s.ttft_p99], w);
    plot(id + "|req", cell("req"), "attempts/s", ["attempts/s"], ["#264653"], [x, perSec(s.requests)], w);
    plot(id + "|err", cell("err"), "errors/s", ["errors/s"], ["#d62828"], [x, perSec(s.errors)], w);
    plot(id + "|cost", cell("cost"), "spend (USD/min)", ["USD/min"], ["#6a4c93"], [x, perMin(s.cost_usd)], w);
  }

  function dropPlots(id) {
    for (const k in plots) if (k.startsWith(id + "|")) { plots[k].destroy(); delete plots[k]; }
  }

  function toggle(id) {
    if (open.has(id)) open.delete(id);
    else { open.add(id); full = true; }
    render();
    if (full) poll();
  }

  function renderModels() {
    const body = h("tbody");
    for (const m of D.models) {
      const list = (rows, k) => rows.length ? rows.map((r) => `${r[k]}: ${r.requests}`).join(", ") : "—";
      body.append(h("tr", null,
        h("td", null, m.name), h("td", null, m.strategy),
        h("td", { class: "wrap" }, m.targets.map((t, i) => `${t.provider}/${t.model}` +
          (i === 0 && m.strategy === "fallback" ? " (primary)" : "")).join(" → ")),
        h("td", { class: "wrap" }, list(m.served, "provider")),
        h("td", null, m.fallbacks == null ? "—" : String(m.fallbacks)),
        h("td", { class: "wrap" }, list(m.failed, "code"))));
    }
    $("models").replaceChild(body, $("models").tBodies[0]);
  }

  function renderProviders() {
    const body = h("tbody");
    for (const p of D.providers) {
      const ft = p.free_tier;
      const tier = ft ? Object.keys(ABBR).filter((k) => ft[k])
        .map((k) => `${ft[k].used}/${ft[k].limit} ${ABBR[k]}`).join(", ") + ` (then ${ft.on_exhausted})` : "—";
      body.append(h("tr", null, h("td", null, p.name), h("td", null, p.kind), h("td", { class: "wrap" }, tier),
        h("td", null, p.budget && p.budget.usd_per_day != null ? usd(p.budget.usd_per_day) : "—"),
        h("td", null, usd(p.spend_today_usd))));
    }
    $("providers").replaceChild(body, $("providers").tBodies[0]);
  }

  function ask(text) {
    return new Promise((resolve) => {
      const d = $("confirm");
      $("confirm-text").textContent = text;
      const done = (v) => { d.onclose = null; if (d.open) d.close(); resolve(v); };
      $("confirm-ok").onclick = () => done(true);
      $("confirm-cancel").onclick = () => done(false);
      d.onclose = () => done(false); // Esc
      d.showModal();
    });
  }

  async function act(what, e) {
    const text = what === "drain"
      ? `Drain ${e.id}? It gets no traffic until undrained.`
      : `Undrain ${e.id}? It goes back into rotation.`;
    if (!(await ask(text))) return;
    try {
      await api("POST", `/admin/endpoints/${encodeURIComponent(e.provider)}/${encodeURIComponent(e.model)}/${what}`);
      note(`${e.id} ${what}ed`);
    } catch (err) {
      note(`${what} failed: ${err.message}`, true);
    }
    poll();
  }

  $("reload").addEventListener("click", async () => {
    if (!(await ask("Reload the config file now? A config that fails validation is rejected and the current one keeps serving."))) return;
    try {
      await api("POST", "/admin/reload");
      note("config reloaded");
      full = true;
    } catch (err) {
      note("reload failed: " + err.message, true);
    }
    poll();
  });

  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    if ($("remember").checked && token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
    full = true;
    poll();
  });
  $("filter").addEventListener("input", render);
  let resizing = 0;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(render, 150); });
  if (token) { $("token").value = token; $("remember").checked = true; }
  // Ask first whether a token is needed, so the page never polls into a 401.
  fetch("/dashboard/auth", { cache: "no-store", credentials: "omit" })
    .then((r) => r.json())
    .then((a) => {
      if (a.token_required && !token) say("admin token required: type it above", true);
      else poll();
    })
    .catch(() => poll());
})();
