// /dashboard: polls /dashboard/data (cumulative counters summed over the workers) and draws the
// rates between polls with uPlot (static/vendor/uplot). Nothing is kept after the tab closes.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("dashboard-data").textContent);
  const store = window.flaskserve.apiKey;
  const status = document.getElementById("key-status");
  // Ten minutes of polls; the usage chart comes from the server's per-minute table instead.
  const KEEP = Math.ceil(600000 / config.interval_ms);
  const COLOURS = ["#0b5cad", "#d1242f", "#1a7f37", "#8250df", "#bc4c00", "#0a7d7d", "#bf3989",
    "#57606a"];
  const samples = [];
  const plots = {};
  // Bumped when the key changes: answers to polls sent with the old key are dropped.
  let epoch = 0;

  // -- numbers from two polls ------------------------------------------------------------------

  function sum(values) {
    return Object.values(values || {}).reduce((a, b) => a + b, 0);
  }

  function errors(requests) {
    const found = {};
    Object.entries(requests || {}).forEach(([code, n]) => { if (code >= "400") found[code] = n; });
    return found;
  }

  // Prometheus's histogram_quantile: the bucket holding the q-th observation, linearly inside it.
  function quantile(q, bounds, before, after) {
    const counts = after.map((n, i) => n - ((before && before[i]) || 0));
    const total = counts.reduce((a, b) => a + b, 0);
    if (total <= 0) return null;
    const rank = q * total;
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      if (seen + counts[i] >= rank && counts[i] > 0) {
        if (i >= bounds.length) return bounds[bounds.length - 1] * 1000;
        const lower = i === 0 ? 0 : bounds[i - 1];
        return (lower + (bounds[i] - lower) * (rank - seen) / counts[i]) * 1000;
      }
      seen += counts[i];
    }
    return bounds[bounds.length - 1] * 1000;
  }

  // One point per model (and per series of it) for the interval between polls i-1 and i.
  function interval(i) {
    const after = samples[i];
    const before = i > 0 ? samples[i - 1] : { time: after.time, models: {} };
    const seconds = (after.time - before.time) / 1000;
    const bounds = after.latency_bounds;
    const point = {};
    Object.entries(after.models).forEach(([name, now]) => {
      const then = before.models[name] || {};
      const rate = (a, b) => (seconds > 0 ? Math.max(0, (a - (b || 0)) / seconds) : null);
      const predicts = now.predicts - (then.predicts || 0);
      const failed = {};
      Object.entries(errors(now.requests)).forEach(([code, n]) => {
        failed[code] = rate(n, (then.requests || {})[code]);
      });
      const latency = (q) => (seconds > 0
        ? quantile(q, bounds, (then.latency || {}).buckets, now.latency.buckets) : null);
      const entry = point[name] = {
        rps: rate(sum(now.requests), sum(then.requests)),
        errors: failed,
        p50: latency(0.5),
        p99: latency(0.99),
        rows: predicts > 0 ? (now.rows - (then.rows || 0)) / predicts : null,
        inFlight: now.in_flight,
        queued: now.queue_depth,
        total: sum(now.requests),
      };
      const generation = now.generation;
      if (generation) {
        const was = then.generation || {};
        entry.tokens = rate(generation.tokens || 0, was.tokens);
        if (generation.ttft) {
          const old = (was.ttft || {}).buckets;
          entry.ttft50 = quantile(0.5, bounds, old, generation.ttft.buckets);
          entry.ttft99 = quantile(0.99, bounds, old, generation.ttft.buckets);
        }
      }
    });
    return point;
  }

  // -- charts ----------------------------------------------------------------------------------

  function clock(u, splits) {
    return splits.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit",
      minute: "2-digit", second: t % 60 ? "2-digit" : undefined }));
  }

  // `series`: [{label, values, dash}]: each its own colour; dashed ones are the second line of
  // a model (p99 after p50, queued after in flight).
  function draw(id, times, series) {
    const figure = document.getElementById(id);
    const data = [times, ...series.map((s) => s.values)];
    const values = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
    figure.dataset.max = values.length ? String(Math.max(...values)) : "0";
    const signature = series.map((s) => s.label).join("|");
    const holder = figure.querySelector(".plot");
    if (plots[id] && plots[id].signature === signature) {
      plots[id].plot.setData(data);
      return;
    }
    if (plots[id]) plots[id].plot.destroy();
    const options = {
      width: Math.max(holder.clientWidth, 240),
      height: 200,
      series: [{}, ...series.map((s, i) => ({
        label: s.label,
        stroke: COLOURS[i % COLOURS.length],
        width: 2,
        dash: s.dash ? [6, 4] : undefined,
      }))],
      axes: [{ space: 90, values: clock }, { size: 56 }],
      scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      legend: { live: false },
    };
    plots[id] = { signature: signature, plot: new window.uPlot(options, data, holder) };
  }

  // Series per model, each from `lines(model)`: [[label suffix, point -> value, dashed?], ...].
  function perModel(points, lines) {
    const models = [...new Set(points.flatMap((p) => Object.keys(p)))].sort();
    return models.flatMap((model) => lines(model).map(([suffix, value, dash]) => ({
      label: model + suffix,
      values: points.map((p) => (p[model] ? value(p[model]) : null)),
      dash: dash,
    })));
  }

  function redraw() {
    const points = [];
    const times = [];
    for (let i = 1; i < samples.length; i++) {
      points.push(interval(i));
      times.push(samples[i].time / 1000);
    }
    draw("chart-rps", times, perModel(points, () => [["", (m) => m.rps]]));
    draw("chart-latency", times, perModel(points, () => [
      [" p50", (m) => m.p50], [" p99", (m) => m.p99, true]]));
    const codes = (model) => [...new Set(points.flatMap(
      (p) => Object.keys((p[model] || {}).errors || {})))].sort();
    draw("chart-errors", times, perModel(points, (model) => codes(model).map(
      (code) => [" " + code, (m) => m.errors[code] || 0])));
    draw("chart-batch", times, perModel(points, () => [["", (m) => m.rows]]));
    draw("chart-load", times, perModel(points, () => [
      [" in flight", (m) => m.inFlight], [" queued", (m) => m.queued, true]]));
    const generating = points.some((p) => Object.values(p).some((m) => m.tokens !== undefined));
    ["chart-tokens", "chart-ttft"].forEach((id) => {
      document.getElementById(id).hidden = !generating;
    });
    if (generating) {
      draw("chart-tokens", times, perModel(points, () => [["", (m) => m.tokens]]));
      draw("chart-ttft", times, perModel(points, () => [
        [" p50", (m) => m.ttft50], [" p99", (m) => m.ttft99, true]]));
    }
    if (samples.length) table(interval(samples.length - 1));
  }

  function cell(tag, text, attributes) {
    const element = document.createElement(tag);
    element.textContent = text;
    Object.entries(attributes || {}).forEach(([k, v]) => element.setAttribute(k, v));
    return element;
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? "–" : value.toFixed(digits);
  }

  function table(point) {
    const rows = Object.entries(point).map(([model, p]) => {
      const row = document.createElement("tr");
      row.append(cell("th", model, { scope: "row" }), cell("td", fixed(p.rps, 1)),
        cell("td", fixed(sum(p.errors), 1)), cell("td", fixed(p.p50, 1)), cell("td", fixed(p.p99, 1)),
        cell("td", fixed(p.rows, 1)), cell("td", String(p.inFlight)), cell("td", String(p.queued)),
        cell("td", String(p.total)));
      return row;
    });
    document.querySelector("#now tbody").replaceChildren(...rows);
  }

  // -- usage -----------------------------------------------------------------------------------

  function usage(report, viewer) {
    const note = document.getElementById("usage-note");
    if (!report.metered) {
      note.textContent = "Usage metering is off: serve with --auth keys.toml or --usage-db PATH.";
    } else if (report.scope === "own") {
      note.textContent = "Only your key's usage (" + viewer.key + "): other keys' usage is for admin keys.";
    } else {
      note.textContent = viewer ? "Every key's usage (admin key " + viewer.key + ")." : "Every key's usage.";
    }
    const minutes = [];
    for (let t = report.since; t <= samples[samples.length - 1].time / 1000; t += 60) minutes.push(t);
    const keys = [...new Set(report.minutes.map((r) => r.key))].sort();
    const perKey = {};
    const totals = {};
    report.minutes.forEach((r) => {
      const series = perKey[r.key] = perKey[r.key] || {};
      series[r.minute] = (series[r.minute] || 0) + r.requests;
      const total = totals[r.key + "\u0000" + r.model] = totals[r.key + "\u0000" + r.model] ||
        { key: r.key, model: r.model, requests: 0, failed: 0, items: 0, compute_ms: 0, bytes_in: 0, bytes_out: 0 };
      ["requests", "failed", "items", "compute_ms", "bytes_in", "bytes_out"].forEach((f) => { total[f] += r[f]; });
    });
    draw("chart-usage", minutes, keys.map((key) => ({
      label: key === "-" ? "(no key)" : key,
      values: minutes.map((m) => perKey[key][m] || 0),
    })));
    const rows = Object.values(totals).map((t) => {
      const row = document.createElement("tr");
      row.append(cell("th", t.key === "-" ? "(no key)" : t.key, { scope: "row" }),
        cell("td", t.model, { class: "name" }), cell("td", String(t.requests)), cell("td", String(t.failed)),
        cell("td", String(t.items)), cell("td", t.compute_ms.toFixed(1)), cell("td", String(t.bytes_in)),
        cell("td", String(t.bytes_out)));
      return row;
    });
    document.querySelector("#usage tbody").replaceChildren(...rows);
  }

  // -- polling ---------------------------------------------------------------------------------

  async function poll() {
    const sent = epoch;
    let response;
    try {
      response = await fetch(config.data, { headers: store.headers({ Accept: "application/json" }) });
    } catch (error) {
      status.textContent = "The server did not answer: " + error;
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (sent !== epoch) return;
    if (!response.ok) {
      status.textContent = response.status === 401
        ? "This server needs an API key: enter one above."
        : "HTTP " + response.status + ": " + (body.error || "refused");
      return;
    }
    status.textContent = "Updated " + new Date(body.time).toLocaleTimeString() +
      (body.viewer ? " · key " + body.viewer.key + (body.viewer.admin ? " (admin)" : "") : "");
    samples.push(body);
    if (samples.length > KEEP) samples.shift();
    redraw();
    usage(body.usage, body.viewer);
  }

  function setupKey() {
    const form = document.getElementById("key-form");
    if (!form) return;
    const field = document.getElementById("api-key");
    field.value = store.get();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      store.set(field.value.trim());
      epoch += 1;
      samples.length = 0;
      document.querySelectorAll("#now tbody, #usage tbody").forEach((t) => t.replaceChildren());
      poll();
    });
    document.getElementById("forget-key").addEventListener("click", () => {
      store.set("");
      field.value = "";
    });
  }

  window.addEventListener("resize", () => {
    Object.entries(plots).forEach(([id, p]) => {
      const holder = document.getElementById(id).querySelector(".plot");
      p.plot.setSize({ width: Math.max(holder.clientWidth, 240), height: 200 });
    });
  });
  setupKey();
  poll();
  setInterval(poll, config.interval_ms);
})();
