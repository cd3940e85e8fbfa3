// The operator page: reads GET v1/dashboard/summary with the key kept in sessionStorage.
// Every value from the API goes into the page as text (textContent), never as markup: user
// names and error codes come from callers.
"use strict";
(function () {
  const KEY = "first.dashboard.key";
  const REFRESH_MS = 5000;
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0; // a newer load (window changed, signed in again) supersedes older ones
  const charts = {};

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
    return tr;
  }
  function num(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
  function age(s) {
    if (s === null || s === undefined) return "none";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "–"; }

  function showError(message) {
    const e = $("error");
    e.textContent = message;
    e.hidden = !message;
  }
  function signedIn(on) {
    $("signin").hidden = on;
    $("board").hidden = !on;
    $("session").hidden = !on;
  }
  function signOut(message) {
    generation++;
    sessionStorage.removeItem(KEY);
    if (timer) clearTimeout(timer);
    timer = null;
    signedIn(false);
    showError(message || "");
  }

  async function load() {
    const key = sessionStorage.getItem(KEY);
    if (!key) return signOut();
    if (timer) clearTimeout(timer);
    timer = null;
    const mine = ++generation;
    let res;
    try {
      res = await fetch("v1/dashboard/summary?window_s=" + $("window").value, {
        headers: { Authorization: "Bearer " + key },
        cache: "no-store",
      });
    } catch (err) {
      if (mine !== generation) return;
      showError("The API did not answer: " + err);
      timer = setTimeout(load, REFRESH_MS);
      return;
    }
    let body = null;
    try { body = await res.json(); } catch (err) { body = null; }
    if (mine !== generation) return;
    if (res.status === 401 || res.status === 403) {
      const why = body && body.error ? body.error.message : res.statusText;
      return signOut("Refused (" + res.status + "): " + why);
    }
    if (!res.ok || !body) {
      showError("The summary failed (" + res.status + "): " + (body && body.error ? body.error.message : res.statusText));
    } else {
      showError("");
      signedIn(true);
      render(body);
    }
    timer = setTimeout(load, REFRESH_MS);
  }

  function render(s) {
    const t = s.traffic;
    $("stat-requests").textContent = num(t.requests);
    $("stat-error-rate").textContent = t.error_rate === null ? "–" : (100 * t.error_rate).toFixed(1) + " %";
    $("stat-tokens-per-minute").textContent = num(t.tokens_per_minute);
    $("stat-tokens").textContent = num(t.prompt_tokens + t.completion_tokens);
    $("stat-inflight").textContent = num(s.inflight) + " / " + num(s.capacity);
    $("stat-queue-depth").textContent = num(s.queue.depth);
    $("stat-queue-age").textContent = age(s.queue.oldest_age_s);
    $("queue-detail").textContent =
      s.queue.depth + " waiting, " + s.queue.in_flight_messages + " held by pollers, " +
      s.queue.delayed + " delayed; oldest unfinished request " +
      (s.queue.oldest_request_id ? s.queue.oldest_request_id + " (" + age(s.queue.oldest_age_s) + ")" : "none");
    $("updated").textContent = "updated " + when(s.generated_at);

    const eps = $("endpoints").tBodies[0];
    eps.replaceChildren(...s.endpoints.map((e) => {
      const meter = el("div", null, "meter");
      const fill = el("div");
      fill.style.width = Math.min(100, e.capacity ? (100 * e.inflight) / e.capacity : 0) + "%";
      meter.appendChild(fill);
      const load = el("td"); load.appendChild(meter);
      const models = Object.entries(e.models).map(([m, st]) => m + ": " + st).join(", ");
      const tr = row([el("td", e.name, "mono"), el("td", e.status, e.status), el("td", e.circuit, e.circuit),
        el("td", e.inflight, "num"), el("td", e.capacity, "num"), load, el("td", e.consecutive_failures, "num"),
        el("td", when(e.last_seen)), el("td", models)]);
      tr.dataset.endpoint = e.name;
      return tr;
    }));

    const most = t.top_users.length ? t.top_users[0].tokens : 0;
    $("top-users").tBodies[0].replaceChildren(...t.top_users.map((u) => {
      const bar = el("div", null, "bar");
      bar.style.width = (most ? Math.max(2, (100 * u.tokens) / most) : 0) + "%";
      const cell = el("td"); cell.style.width = "40%"; cell.appendChild(bar);
      const tr = row([el("td", u.user, "mono"), el("td", num(u.tokens), "num"), el("td", num(u.requests), "num"), cell]);
      tr.dataset.user = u.user;
      return tr;
    }));

    $("by-function").tBodies[0].replaceChildren(...Object.entries(t.by_function).map(([f, n]) =>
      row([el("td", f, "mono"), el("td", num(n), "num")])));

    $("failures").tBodies[0].replaceChildren(...(t.recent_failures.length ? t.recent_failures.map((f) =>
      row([el("td", when(f.finished_at)), el("td", f.request_id, "mono"), el("td", f.user, "mono"), el("td", f.model),
        el("td", f.endpoint), el("td", f.status_code), el("td", f.error_code)])
    ) : [row([el("td", "none in this window")])]));

    const ser = t.series;
    plot("chart-tokens", [ser.t, ser.prompt_tokens, ser.completion_tokens],
      [{ label: "prompt", stroke: "#4c7bd9", fill: "rgba(76,123,217,0.15)" }, { label: "completion", stroke: "#1b7f3b" }]);
    plot("chart-requests", [ser.t, ser.completed, ser.failed],
      [{ label: "completed", stroke: "#1b7f3b" }, { label: "failed", stroke: "#b3261e" }]);
  }

  function plot(id, data, series) {
    const box = $(id);
    if (typeof uPlot === "undefined") { box.textContent = "charting library not loaded"; return; }
    const width = Math.max(300, box.clientWidth || 600);
    if (charts[id] && charts[id].series.length === series.length + 1) {
      charts[id].setData(data);
      return;
    }
    if (charts[id]) charts[id].destroy();
    charts[id] = new uPlot({
      width: width, height: 200,
      series: [{}].concat(series.map((s) => Object.assign({ width: 2, points: { show: false } }, s))),
      axes: [{}, { size: 60 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    }, data, box);
  }

  $("signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    load();
  });
  $("signout").addEventListener("click", () => signOut());
  $("window").addEventListener("change", () => load());
  if (sessionStorage.getItem(KEY)) load(); else signedIn(false);
})();
