// The model page: a drawing pad for digits models, sentences for text models, and a JSON editor
// for every model. All of them call the ordinary V2 route with fetch().
"use strict";

(function () {
  const page = JSON.parse(document.getElementById("model-data").textContent);

  // -- shared ----------------------------------------------------------------------------------

  async function infer(request) {
    const started = performance.now();
    let response;
    try {
      response = await fetch(page.infer, {
        method: "POST",
        headers: window.flaskserve.apiKey.headers(
          { "Content-Type": "application/json", Accept: "application/json" }),
        body: JSON.stringify(request),
      });
    } catch (error) {
      return { ok: false, status: 0, body: { error: "the server did not answer: " + error }, ms: 0 };
    }
    const text = await response.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch (error) {
      body = { error: text };
    }
    if (response.status === 401 && page.auth) {
      keyStatus.textContent = window.flaskserve.apiKey.get()
        ? "The server refused this key (" + (body.error || "401") + ")."
        : "This server needs an API key: enter one above.";
      document.getElementById("api-key").focus();
    }
    return { ok: response.ok, status: response.status, body: body, ms: performance.now() - started };
  }

  // -- the API key (servers run with --auth) ----------------------------------------------------
  // Kept in this tab's sessionStorage only (common.js), sent as `Authorization: Bearer`; the
  // snippets below read it from $FLASKSERVE_API_KEY and never show it.

  const keyStatus = document.getElementById("key-status");

  function setupKey() {
    const form = document.getElementById("key-form");
    const field = document.getElementById("api-key");
    const store = window.flaskserve.apiKey;
    const show = () => {
      keyStatus.textContent = store.get()
        ? "A key is set for this tab; requests send it as Authorization: Bearer."
        : "No key yet: requests will be refused (401).";
    };
    field.value = store.get();
    show();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      store.set(field.value.trim());
      show();
    });
    document.getElementById("forget-key").addEventListener("click", () => {
      store.set("");
      field.value = "";
      show();
    });
  }

  function output(body, name) {
    return (body.outputs || []).find((o) => o.name === name);
  }

  const pretty = window.flaskserve.pretty;

  const requestArea = document.getElementById("request");
  const jsonStatus = document.getElementById("json-status");
  const responseBox = document.getElementById("response");

  function showExchange(request, result) {
    requestArea.value = pretty(request);
    jsonStatus.textContent = statusText(result);
    responseBox.textContent = pretty(result.body);
  }

  function statusText(result) {
    if (!result.status) return result.body.error;
    return "HTTP " + result.status + " in " + result.ms.toFixed(0) + " ms";
  }

  function setupJson() {
    const reset = () => { requestArea.value = pretty(page.example); };
    reset();
    document.getElementById("reset-example").addEventListener("click", reset);
    document.getElementById("json-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      let request;
      try {
        request = JSON.parse(requestArea.value);
      } catch (error) {
        jsonStatus.textContent = "Not valid JSON: " + error.message;
        return;
      }
      jsonStatus.textContent = "Sending…";
      const result = await infer(request);
      jsonStatus.textContent = statusText(result);
      responseBox.textContent = pretty(result.body);
    });
  }

  function setupCopy() {
    document.querySelectorAll("button.copy").forEach((button) => {
      button.addEventListener("click", async () => {
        const text = document.getElementById(button.dataset.target).textContent;
        try {
          await navigator.clipboard.writeText(text);
          button.textContent = "Copied";
        } catch (error) {
          const range = document.createRange();
          range.selectNodeContents(document.getElementById(button.dataset.target));
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          button.textContent = "Selected: press Ctrl+C";
        }
        setTimeout(() => { button.textContent = "Copy"; }, 2000);
      });
    });
  }

  // -- digits ----------------------------------------------------------------------------------
  // scikit-learn's digits are 32x32 black-and-white bitmaps, scaled so the digit spans the full
  // height (and at most ~28 px of width) and centred, then cut into 4x4 blocks whose "on"
  // pixels are counted: 8x8 values in 0..16, ~310 on-pixels per digit. The drawing is replayed
  // the same way: strokes fitted into 32x32, drawn with a pen width that gives that much ink,
  // thresholded, and counted per block.

  const SIZE = 32;
  const MAX_WIDTH = 28;
  const INK = 300;

  function digitPixels(strokes) {
    const points = strokes.flat();
    if (!points.length) return null;
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    const minX = Math.min(...xs), maxX = Math.max(...xs);
    const minY = Math.min(...ys), maxY = Math.max(...ys);
    const width = maxX - minX, height = maxY - minY;
    let length = 0;
    for (const stroke of strokes) {
      for (let i = 1; i < stroke.length; i++) {
        length += Math.hypot(stroke[i][0] - stroke[i - 1][0], stroke[i][1] - stroke[i - 1][1]);
      }
    }
    let pen = 4, scale = 1;
    for (let i = 0; i < 4; i++) {
      scale = Math.min((SIZE - pen) / Math.max(height, 1), (MAX_WIDTH - pen) / Math.max(width, 1));
      pen = Math.min(9, Math.max(2.5, INK / Math.max(length * scale, 1)));
    }
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = SIZE;
    const g = canvas.getContext("2d", { willReadFrequently: true });
    g.lineWidth = pen;
    g.lineCap = g.lineJoin = "round";
    g.strokeStyle = g.fillStyle = "#000";
    const cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
    const tx = (x) => (x - cx) * scale + SIZE / 2;
    const ty = (y) => (y - cy) * scale + SIZE / 2;
    for (const stroke of strokes) {
      g.beginPath();
      if (stroke.length === 1) {
        g.arc(tx(stroke[0][0]), ty(stroke[0][1]), pen / 2, 0, 2 * Math.PI);
        g.fill();
        continue;
      }
      g.moveTo(tx(stroke[0][0]), ty(stroke[0][1]));
      for (const p of stroke.slice(1)) g.lineTo(tx(p[0]), ty(p[1]));
      g.stroke();
    }
    const alpha = g.getImageData(0, 0, SIZE, SIZE).data;
    const pixels = new Array(64).fill(0);
    for (let y = 0; y < SIZE; y++) {
      for (let x = 0; x < SIZE; x++) {
        if (alpha[(y * SIZE + x) * 4 + 3] >= 128) pixels[(y >> 2) * 8 + (x >> 2)] += 1;
      }
    }
    return pixels;
  }

  function setupDigits() {
    const widget = page.widget;
    const input = page.inputs[0];
    const pad = document.getElementById("pad");
    const ctx = pad.getContext("2d");
    const preview = document.getElementById("preview").getContext("2d");
    const label = document.getElementById("label");
    const bars = document.getElementById("bars");
    const status = document.getElementById("digits-status");
    let strokes = [];
    let current = null;
    let pending = null;

    function clearPad() {
      ctx.fillStyle = "#fff";
      ctx.fillRect(0, 0, pad.width, pad.height);
      ctx.lineWidth = pad.width / 14;
      ctx.lineCap = ctx.lineJoin = "round";
      ctx.strokeStyle = ctx.fillStyle = "#111";
    }

    function position(event) {
      const box = pad.getBoundingClientRect();
      return [
        (event.clientX - box.left) * (pad.width / box.width),
        (event.clientY - box.top) * (pad.height / box.height),
      ];
    }

    function start(point) {
      current = [point];
      strokes.push(current);
      ctx.beginPath();
      ctx.arc(point[0], point[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      clearTimeout(pending);
    }

    function move(point) {
      if (!current) return;
      const last = current[current.length - 1];
      current.push(point);
      ctx.beginPath();
      ctx.moveTo(last[0], last[1]);
      ctx.lineTo(point[0], point[1]);
      ctx.stroke();
    }

    function end() {
      if (!current) return;
      current = null;
      clearTimeout(pending);
      pending = setTimeout(predict, 250);
    }

    if (window.PointerEvent) {
      pad.addEventListener("pointerdown", (e) => {
        e.preventDefault();
        pad.setPointerCapture(e.pointerId);
        start(position(e));
      });
      pad.addEventListener("pointermove", (e) => {
        if (!current) return;
        e.preventDefault();
        const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
        (events.length ? events : [e]).forEach((c) => move(position(c)));
      });
      pad.addEventListener("pointerup", end);
      pad.addEventListener("pointercancel", end);
    } else {
      pad.addEventListener("mousedown", (e) => start(position(e)));
      pad.addEventListener("mousemove", (e) => move(position(e)));
      window.addEventListener("mouseup", end);
      const touch = (handler) => (e) => {
        e.preventDefault();
        if (e.touches.length) handler(position(e.touches[0]));
      };
      pad.addEventListener("touchstart", touch(start), { passive: false });
      pad.addEventListener("touchmove", touch(move), { passive: false });
      pad.addEventListener("touchend", end);
    }

    function showPreview(pixels) {
      const image = preview.createImageData(8, 8);
      pixels.forEach((value, i) => {
        const shade = Math.round(255 * (1 - Math.min(value, 16) / 16));
        image.data.set([shade, shade, shade, 255], i * 4);
      });
      preview.putImageData(image, 0, 0);
    }

    function showBars(probabilities, best) {
      bars.replaceChildren(
        ...probabilities.map((p, digit) => {
          const item = document.createElement("li");
          item.className = digit === best ? "bar best" : "bar";
          const percent = (100 * p).toFixed(1) + "%";
          item.setAttribute("aria-label", "digit " + digit + ": " + percent);
          const name = document.createElement("span");
          name.className = "bar-digit";
          name.textContent = digit;
          const track = document.createElement("span");
          track.className = "bar-track";
          const fill = document.createElement("span");
          fill.className = "bar-fill";
          fill.style.width = Math.max(0, Math.min(100, 100 * p)) + "%";
          track.append(fill);
          const value = document.createElement("span");
          value.className = "bar-value";
          value.textContent = percent;
          item.append(name, track, value);
          return item;
        }),
      );
    }

    async function send(pixels) {
      showPreview(pixels);
      const request = {
        inputs: [{ name: input.name, shape: [1, 64], datatype: input.datatype, data: pixels }],
      };
      status.textContent = "Asking the model…";
      const result = await infer(request);
      showExchange(request, result);
      if (!result.ok) {
        status.textContent = "Error: " + (result.body.error || statusText(result));
        return;
      }
      const best = output(result.body, widget.label_output).data[0];
      label.textContent = best;
      status.textContent = statusText(result);
      const probabilities = output(result.body, widget.probabilities_output);
      if (probabilities) showBars(probabilities.data.slice(0, 10), best);
    }

    function predict() {
      const pixels = digitPixels(strokes);
      if (pixels) send(pixels);
    }

    document.getElementById("clear").addEventListener("click", () => {
      strokes = [];
      clearPad();
      label.textContent = "–";
      status.textContent = "";
      bars.replaceChildren();
      showPreview(new Array(64).fill(0));
    });
    document.getElementById("sample").addEventListener("click", () => {
      send(page.example.inputs[0].data.slice(0, 64));
    });
    clearPad();
    showPreview(new Array(64).fill(0));
  }

  // -- text ------------------------------------------------------------------------------------

  function cosine(a, b) {
    let dot = 0, na = 0, nb = 0;
    for (let i = 0; i < a.length; i++) {
      dot += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    return na && nb ? dot / Math.sqrt(na * nb) : 0;
  }

  function cell(tag, text, attributes) {
    const node = document.createElement(tag);
    node.textContent = text;
    Object.entries(attributes || {}).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  }

  function similarityTable(sentences, vectors) {
    const table = document.createElement("table");
    table.className = "similarity";
    table.append(cell("caption", "Cosine similarity of the sentences' embeddings"));
    const head = document.createElement("tr");
    head.append(cell("td", ""));
    sentences.forEach((_, i) => head.append(cell("th", "#" + (i + 1), { scope: "col" })));
    table.append(document.createElement("thead"));
    table.tHead.append(head);
    const body = document.createElement("tbody");
    sentences.forEach((sentence, i) => {
      const row = document.createElement("tr");
      row.append(cell("th", "#" + (i + 1) + " " + sentence, { scope: "row" }));
      vectors.forEach((_, j) => {
        const value = cosine(vectors[i], vectors[j]);
        const td = cell("td", value.toFixed(3), { "data-i": i, "data-j": j });
        td.style.setProperty("--strength", Math.max(0, value).toFixed(3));
        row.append(td);
      });
      body.append(row);
    });
    table.append(body);
    return table;
  }

  function setupText() {
    const input = page.inputs[0];
    const area = document.getElementById("sentences");
    const result = document.getElementById("text-result");
    area.value = page.example.inputs[0].data.join("\n");
    document.getElementById("text-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const sentences = area.value.split("\n").map((s) => s.trim()).filter(Boolean);
      if (!sentences.length) {
        result.replaceChildren(cell("p", "Write at least one sentence.", { class: "notice" }));
        return;
      }
      const request = {
        inputs: [{ name: input.name, shape: [sentences.length], datatype: "BYTES", data: sentences }],
      };
      result.replaceChildren(cell("p", "Asking the model…", { class: "muted" }));
      const answer = await infer(request);
      showExchange(request, answer);
      if (!answer.ok) {
        result.replaceChildren(cell("p", "Error: " + (answer.body.error || statusText(answer)),
                                    { class: "notice" }));
        return;
      }
      const parts = [cell("p", statusText(answer), { class: "muted" })];
      const embedding = page.widget.embedding_output && output(answer.body, page.widget.embedding_output);
      if (embedding) {
        const dims = embedding.shape[1];
        const vectors = sentences.map((_, i) => embedding.data.slice(i * dims, (i + 1) * dims));
        parts.push(cell("p", sentences.length + " embeddings of " + dims + " dimensions."));
        parts.push(similarityTable(sentences, vectors));
      } else {
        parts.push(cell("pre", pretty(answer.body.outputs), { class: "response" }));
      }
      result.replaceChildren(...parts);
    });
  }

  if (page.auth) setupKey();
  setupJson();
  setupCopy();
  if (page.widget.kind === "digits") setupDigits();
  else if (page.widget.kind === "text") setupText();
})();
