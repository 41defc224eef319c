// The analytics dashboard: reads the analytics API with the key the operator gives,
// draws it with Chart.js, and refreshes itself. No data is in the page itself.
"use strict";

(function () {
  const body = document.body;
  const refreshSeconds = Number(body.dataset.refresh) || 30;
  const goals = {
    availability: Number(body.dataset.targetAvailability),
    latency: Number(body.dataset.targetLatencyP99Ms),
    cache: Number(body.dataset.targetCacheHitRate),
  };
  const KEY = "gateway-analytics-key";
  const charts = {};
  let timer = null;

  const $ = (id) => document.getElementById(id);
  const fmtInt = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
  const fmtPct = (x, digits = 2) => (x == null ? "–" : (x * 100).toFixed(digits) + "%");
  const fmtMs = (x) => (x == null ? "–" : x < 10 ? x.toFixed(2) + " ms" : Math.round(x).toLocaleString("en-US") + " ms");
  const fmtCost = (x) => (x == null ? "–" : "$" + x.toFixed(x < 1 ? 4 : 2));

  function unitFor(seconds) {
    if (seconds <= 6 * 3600) return "minute";
    if (seconds <= 7 * 86400) return "hour";
    return "day";
  }

  async function get(path, params) {
    const query = new URLSearchParams(params).toString();
    const response = await fetch(path + (query ? "?" + query : ""), {
      headers: { authorization: "Bearer " + sessionStorage.getItem(KEY) },
    });
    if (response.status === 401 || response.status === 403) {
      const error = new Error("The key was refused (" + response.status + ").");
      error.auth = true;
      throw error;
    }
    if (!response.ok) throw new Error(path + " answered " + response.status);
    return response.json();
  }

  function chart(id, type, data, options) {
    if (charts[id]) {
      charts[id].data = data;
      charts[id].update("none");
      return;
    }
    charts[id] = new Chart($(id), {
      type,
      data,
      options: Object.assign({ animation: false, responsive: true, maintainAspectRatio: false }, options || {}),
    });
  }

  const WIDTH = { minute: 60, hour: 3600, day: 86400 };

  // Every bucket of the range, with the rows the API returned (it omits empty buckets).
  function filled(rows, unit, start, end) {
    const width = WIDTH[unit];
    const byBucket = new Map(rows.map((r) => [r.bucket, r]));
    const out = [];
    for (let t = Math.floor(start / width) * width; t < end; t += width) {
      out.push(byBucket.get(t) || { bucket: t, empty: true });
    }
    return out;
  }

  function timeAxis(unit, start, end) {
    return {
      type: "linear",
      min: start * 1000,
      max: end * 1000,
      ticks: {
        maxTicksLimit: 8,
        callback: (value) => {
          const d = new Date(value);
          return unit === "day" ? d.toISOString().slice(5, 10) : d.toISOString().slice(11, 16);
        },
      },
    };
  }

  function line(label, points, color) {
    return { label, data: points, borderColor: color, backgroundColor: color, pointRadius: points.length > 90 ? 0 : 2, borderWidth: 2, spanGaps: false };
  }

  function target(id, met, value, goal) {
    const tile = $(id);
    tile.classList.remove("met", "missed", "unknown");
    tile.classList.add(met === true ? "met" : met === false ? "missed" : "unknown");
    tile.querySelector(".value").textContent = value;
    tile.querySelector(".goal").textContent = goal + (met == null ? " · no traffic" : met ? " · met" : " · missed");
    tile.dataset.met = String(met);
  }

  function showSummary(s) {
    $("n-requests").textContent = fmtInt(s.requests);
    $("n-tokens").textContent = fmtInt(s.total_tokens);
    $("n-cost").textContent = fmtCost(s.cost);
    $("n-unpriced").textContent = s.unpriced_requests ? s.unpriced_requests + " requests without a price" : "";
    $("n-saved").textContent = fmtCost(s.saved_cost);
    $("n-errors").textContent = fmtPct(s.error_rate);
    $("n-ttft").textContent = fmtMs(s.ttft_ms.p95);
    const t = s.targets;
    target("target-availability", t.availability.met, fmtPct(t.availability.value, 3), "objective ≥ " + fmtPct(goals.availability, 1));
    target("target-latency", t.latency_p99_ms.met, fmtMs(t.latency_p99_ms.value), "objective < " + fmtMs(goals.latency));
    target("target-cache", t.cache_hit_rate.met, fmtPct(t.cache_hit_rate.value, 1), "objective ≥ " + fmtPct(goals.cache, 0));
  }

  function showSeries(rows, unit, start, end) {
    const all = filled(rows, unit, start, end);
    const at = (r) => r.bucket * 1000;
    const count = (f) => all.map((r) => ({ x: at(r), y: r.empty ? 0 : f(r) }));
    const measured = (f) => all.map((r) => ({ x: at(r), y: r.empty ? null : f(r) }));
    const x = { x: timeAxis(unit, start, end) };
    chart("chart-requests", "line", {
      datasets: [
        line("requests", count((r) => r.requests), "#2c6fbb"),
        line("errors", count((r) => r.client_errors + r.server_errors), "#b3261e"),
      ],
    }, { scales: x });
    chart("chart-cost", "line", {
      datasets: [
        line("cost", count((r) => r.cost), "#8a5cf5"),
        line("saved by cache", count((r) => r.saved_cost), "#1b7f3b"),
      ],
    }, { scales: x });
    chart("chart-latency", "line", {
      datasets: [
        line("p50", measured((r) => r.latency_ms.p50), "#1b7f3b"),
        line("p95", measured((r) => r.latency_ms.p95), "#e0a100"),
        line("p99", measured((r) => r.latency_ms.p99), "#b3261e"),
      ],
    }, { scales: x });
    chart("chart-cache", "line", {
      datasets: [line("hit rate", measured((r) => r.cache_hit_rate), "#1b7f3b")],
    }, { scales: Object.assign({ y: { min: 0, max: 1 } }, x) });
  }

  function bars(id, rows, name, value, color) {
    chart(id, "bar", {
      labels: rows.map((r) => r[name] == null ? "(none)" : r[name]),
      datasets: [{ label: "requests", data: rows.map(value), backgroundColor: color }],
    }, { indexAxis: "y", plugins: { legend: { display: false } } });
  }

  async function load() {
    const span = Number($("range").value);
    const end = Math.ceil(Date.now() / 60000) * 60;
    const range = { start: end - span, end };
    const unit = unitFor(span);
    const [summary, series, keys, models, errors] = await Promise.all([
      get("v1/stats/summary", range),
      get("v1/usage", Object.assign({ group_by: unit }, range)),
      get("v1/usage", Object.assign({ group_by: "key", limit: 10 }, range)),
      get("v1/usage", Object.assign({ group_by: "model", limit: 10 }, range)),
      get("v1/usage", Object.assign({ group_by: "model", status: "error", limit: 10 }, range)),
    ]);
    showSummary(summary);
    showSeries(series.data, unit, range.start, range.end);
    bars("chart-keys", keys.data, "key", (r) => r.requests, "#2c6fbb");
    bars("chart-models", models.data, "model", (r) => r.requests, "#8a5cf5");
    bars("chart-errors", errors.data, "model", (r) => r.requests, "#b3261e");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    body.dataset.loaded = String(Number(body.dataset.loaded || 0) + 1);
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      await load();
    } catch (error) {
      if (error.auth) {
        sessionStorage.removeItem(KEY);
        showLogin(error.message);
        return;
      }
      $("updated").textContent = "refresh failed: " + error.message;
    }
    timer = setTimeout(refresh, refreshSeconds * 1000);
  }

  function showLogin(message) {
    $("main").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
  }

  function showMain() {
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = false;
    refresh();
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value);
    $("key").value = "";
    showMain();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("");
  });
  $("range").addEventListener("change", refresh);

  if (sessionStorage.getItem(KEY)) showMain();
  else showLogin("");
})();
