// /docs: renders /openapi.json as a list of operations, each with a small form to try it.
"use strict";

(function () {
  const root = document.getElementById("operations");
  const pretty = window.flaskserve.pretty;

  function node(tag, attributes, ...children) {
    const element = document.createElement(tag);
    Object.entries(attributes || {}).forEach(([k, v]) => element.setAttribute(k, v));
    element.append(...children.filter((c) => c !== null && c !== undefined));
    return element;
  }

  function resolve(doc, schema) {
    if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()];
    return schema;
  }

  function firstExample(media) {
    if (!media) return undefined;
    if (media.examples) return Object.values(media.examples)[0].value;
    return media.example;
  }

  function operationView(doc, path, method, op, index) {
    const id = "op-" + index;
    const params = (op.parameters || []).filter((p) => p.in === "path");
    const fields = params.map((p) =>
      node("div", { class: "param" },
        node("label", { for: id + "-" + p.name }, p.name),
        node("input", { id: id + "-" + p.name, name: p.name, required: "" })));
    const media = op.requestBody && op.requestBody.content["application/json"];
    let body = null;
    if (media) {
      const example = firstExample(media);
      body = node("textarea", { id: id + "-body", rows: "8", spellcheck: "false" });
      body.value = example === undefined ? "" : pretty(example);
      fields.push(node("label", { for: id + "-body" }, "JSON body"), body);
      const schema = resolve(doc, media.schema);
      fields.push(node("details", {}, node("summary", {}, "Request schema"),
        node("pre", { tabindex: "0" }, JSON.stringify(schema, null, 2))));
    }
    const status = node("p", { class: "muted", role: "status" });
    const output = node("pre", { class: "response", tabindex: "0", "aria-label": "Response" });
    const form = node("form", {}, ...fields,
      node("div", { class: "buttons" }, node("button", { type: "submit" }, "Send")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      let url = path;
      params.forEach((p) => {
        url = url.replace("{" + p.name + "}", encodeURIComponent(form.elements[p.name].value));
      });
      const init = { method: method.toUpperCase(), headers: { Accept: "application/json" } };
      if (body && body.value.trim()) {
        init.headers["Content-Type"] = "application/json";
        init.body = body.value;
      }
      status.textContent = "Sending…";
      const started = performance.now();
      try {
        const response = await fetch(url, init);
        const text = await response.text();
        status.textContent = "HTTP " + response.status + " in " +
          (performance.now() - started).toFixed(0) + " ms";
        try {
          output.textContent = pretty(JSON.parse(text));
        } catch (error) {
          output.textContent = text;
        }
      } catch (error) {
        status.textContent = "No answer: " + error;
      }
    });
    const responses = Object.entries(op.responses || {})
      .map(([code, r]) => code + " " + r.description).join(" · ");
    return node("details", { class: "op", id: id },
      node("summary", { class: "op-summary-line" },
        node("span", { class: "method method-" + method }, method.toUpperCase()),
        node("span", { class: "op-path" }, path),
        node("span", { class: "op-summary" }, op.summary || "")),
      node("div", { class: "op-body" },
        node("p", { class: "muted" }, "Responses: " + responses),
        form, status, output));
  }

  fetch("/openapi.json", { headers: { Accept: "application/json" } })
    .then((r) => r.json())
    .then((doc) => {
      const groups = new Map();
      let index = 0;
      Object.entries(doc.paths).forEach(([path, item]) => {
        Object.entries(item).forEach(([method, op]) => {
          const tag = (op.tags || ["Other"])[0];
          if (!groups.has(tag)) groups.set(tag, []);
          groups.get(tag).push(operationView(doc, path, method, op, index++));
        });
      });
      root.replaceChildren(...[...groups.entries()].map(([tag, views]) =>
        node("section", { "aria-label": tag }, node("h2", {}, tag), ...views)));
    })
    .catch((error) => {
      root.replaceChildren(node("p", { class: "notice" }, "Could not load /openapi.json: " + error));
    });
})();
