// AI Service dashboard: auto-refresh of the overview and live telemetry of the
// providers page. Written for this app, no library; loaded with `defer`, no inline
// handlers (the pages send Content-Security-Policy: default-src 'self').
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  // A poller that can be paused with a toggle button (aria-pressed says so).
  function poller(button, state, interval, tick, pausedText, runningText) {
    let paused = false;
    let timer = null;
    async function run() {
      if (paused) return;
      try {
        await tick();
      } catch (err) {
        state.textContent = "Refresh failed: " + err.message;
      }
      timer = window.setTimeout(run, interval);
    }
    button.addEventListener("click", function () {
      paused = !paused;
      button.setAttribute("aria-pressed", paused ? "true" : "false");
      button.textContent = paused ? button.textContent.replace("Pause", "Resume") : button.textContent.replace("Resume", "Pause");
      state.textContent = paused ? pausedText : runningText;
      if (timer !== null) window.clearTimeout(timer);
      if (!paused) run();
    });
    timer = window.setTimeout(run, interval);
  }

  async function fetchOk(url, accept) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: accept } });
    if (response.status === 401) throw new Error("the session ended: log in again");
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response;
  }

  // Overview: replace the live section with a freshly rendered one.
  function overview() {
    const button = document.getElementById("refresh-toggle");
    if (!button) return;
    const target = document.getElementById(button.dataset.target);
    const state = document.getElementById("refresh-state");
    const interval = Number(button.dataset.interval) || 5000;
    const running = "Auto-refresh every " + interval / 1000 + " s.";
    poller(button, state, interval, async function () {
      const response = await fetchOk(button.dataset.url, "text/html");
      const html = await response.text();
      const doc = new DOMParser().parseFromString("<div>" + html + "</div>", "text/html");
      const fresh = doc.body.firstElementChild;
      // Keep open <details> open across refreshes.
      const open = new Set(Array.from(target.querySelectorAll("details[open] > summary")).map(s => s.textContent));
      target.replaceChildren(...Array.from(fresh.childNodes));
      target.querySelectorAll("details > summary").forEach(function (s) {
        if (open.has(s.textContent)) s.parentElement.open = true;
      });
      state.textContent = running + " Updated " + new Date().toLocaleTimeString() + ".";
    }, "Auto-refresh paused.", running);
  }

  // Providers page: tables and sparklines of the last N samples, kept here.
  const SAMPLES = 60;
  const series = new Map();

  function remember(key, value) {
    if (value === null || value === undefined || Number.isNaN(value)) return series.get(key) || [];
    const list = series.get(key) || [];
    list.push(value);
    while (list.length > SAMPLES) list.shift();
    series.set(key, list);
    return list;
  }

  function sparkline(values, max, label) {
    const width = 160, height = 32;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label + ": last " + values.length + " samples");
    const top = Math.max(max || 0, ...values, 1e-9);
    const step = width / Math.max(SAMPLES - 1, 1);
    const offset = (SAMPLES - values.length) * step;
    const points = values.map(function (v, i) {
      return (offset + i * step).toFixed(1) + "," + (height - 1 - (v / top) * (height - 2)).toFixed(1);
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", "spark-line");
    svg.appendChild(line);
    return svg;
  }

  function metric(key, label, value, shown, max) {
    const wrap = el("div", null, "metric");
    wrap.appendChild(el("span", label + ": ", "metric-label"));
    wrap.appendChild(el("strong", shown));
    wrap.appendChild(sparkline(remember(key, value), max, label));
    return wrap;
  }

  function fmt(value, digits, unit) {
    if (value === null || value === undefined) return "-";
    return Number(value).toFixed(digits) + (unit || "");
  }

  function state(ok, busy) {
    return busy ? "busy" : ok ? "ok" : "DOWN";
  }

  function providersTable(data) {
    const body = document.querySelector("#providers-table tbody");
    const rows = data.providers.providers.map(function (p) {
      const tr = el("tr");
      const name = p.name + (p.instance ? " #" + p.instance : "");
      tr.appendChild(el("th", name)).setAttribute("scope", "row");
      const st = p.configured ? state(p.ok, p.busy) : "not configured";
      tr.appendChild(el("td")).appendChild(el("span", st, "status state-" + st.replace(" ", "-")));
      tr.appendChild(el("td", fmt(p.latency_ms, 0, " ms")));
      tr.appendChild(el("td", p.base_url || "-", "mono"));
      tr.appendChild(el("td", p.model || "-"));
      tr.appendChild(el("td", p.detail));
      return tr;
    });
    body.replaceChildren(...rows);
  }

  function section(title, reason) {
    const box = el("section", null, "infra-box");
    box.appendChild(el("h3", title));
    if (reason !== undefined) box.appendChild(el("p", "Unavailable: " + (reason || "no reason given")));
    return box;
  }

  function infra(data) {
    const box = document.getElementById("infra");
    const note = document.getElementById("infra-state");
    const info = data.infra;
    if (!info.configured) {
      note.textContent = "INFRA_STATUS_URL is not set: no AI-server telemetry.";
      box.replaceChildren();
      return;
    }
    if (info.error) {
      note.textContent = "The sidecar could not be read: " + info.error;
      return;
    }
    note.textContent = "Sidecar " + (info.url || "") + ", fetched " + new Date(info.fetched_at).toLocaleTimeString() + ".";
    const parts = [];
    const gpu = info.gpu;
    const g = section("GPU", gpu && gpu.available ? undefined : gpu && gpu.reason);
    if (gpu && gpu.available) {
      gpu.gpus.forEach(function (r) {
        g.appendChild(el("h4", "GPU " + r.index + (r.name ? " · " + r.name : "")));
        g.appendChild(metric("gpu" + r.index + "util", "utilisation", r.utilization_percent, fmt(r.utilization_percent, 0, " %"), 100));
        const used = r.memory_used_bytes, total = r.memory_total_bytes;
        const gib = v => (v === null || v === undefined ? null : v / 1073741824);
        g.appendChild(metric("gpu" + r.index + "mem", "memory", gib(used), fmt(gib(used), 1) + " / " + fmt(gib(total), 1, " GiB"), gib(total)));
      });
    }
    parts.push(g);
    const vllm = info.vllm;
    const v = section("vLLM", vllm && vllm.available ? undefined : vllm && vllm.reason);
    if (vllm && vllm.available) {
      vllm.instances.forEach(function (inst, i) {
        v.appendChild(el("h4", inst.url + " · " + (inst.ok ? "ok" : "DOWN: " + (inst.error || ""))));
        v.appendChild(metric("vllm" + i + "run", "running", inst.requests_running, fmt(inst.requests_running, 0)));
        v.appendChild(metric("vllm" + i + "wait", "waiting", inst.requests_waiting, fmt(inst.requests_waiting, 0)));
        const kv = inst.kv_cache_usage === null || inst.kv_cache_usage === undefined ? null : inst.kv_cache_usage * 100;
        v.appendChild(metric("vllm" + i + "kv", "KV cache", kv, fmt(kv, 1, " %"), 100));
      });
    }
    parts.push(v);
    const wx = info.whisperx;
    const w = section("WhisperX", wx && wx.available ? undefined : wx && wx.reason);
    if (wx && wx.available) {
      const list = el("ul");
      wx.instances.forEach(function (inst) {
        list.appendChild(el("li", inst.url + ": " + (inst.busy ? "busy" : inst.reachable ? "ok" : "DOWN") + " · " + inst.detail));
      });
      w.appendChild(list);
    }
    parts.push(w);
    const ct = info.containers;
    const c = section("Containers", ct && ct.available ? undefined : ct && ct.reason);
    if (ct && ct.available) {
      const list = el("ul");
      ct.containers.forEach(function (k) {
        list.appendChild(el("li", k.name + ": " + (k.status || "?") + (k.health ? " (health: " + k.health + ")" : "") + (k.status_text ? " · " + k.status_text : "")));
      });
      c.appendChild(list);
    }
    parts.push(c);
    box.replaceChildren(...parts);
  }

  function providers() {
    const button = document.getElementById("status-toggle");
    if (!button) return;
    const note = document.getElementById("status-state");
    const running = "Polling every 5 s; charts keep the last " + SAMPLES + " samples in this browser.";
    async function tick() {
      const data = await (await fetchOk("/ui/data/status", "application/json")).json();
      providersTable(data);
      infra(data);
      note.textContent = running + " Updated " + new Date().toLocaleTimeString() + ".";
    }
    tick().catch(function (err) { note.textContent = "Refresh failed: " + err.message; });
    poller(button, note, 5000, tick, "Polling paused.", running);
  }

  document.addEventListener("DOMContentLoaded", function () {
    overview();
    providers();
  });
})();
