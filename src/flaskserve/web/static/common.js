// Shared by the playground, the docs page and the dashboard.
"use strict";

// The API key a person typed in (servers run with --auth): kept in this tab's sessionStorage
// only, never in a URL or in localStorage, and sent as `Authorization: Bearer`.
const KEY_ITEM = "flaskserve.apiKey";

window.flaskserve = {
  // JSON with arrays of plain values on one line, so a 64-pixel tensor stays readable.
  pretty: function pretty(value, indent) {
    indent = indent || "";
    const inner = indent + "  ";
    if (Array.isArray(value)) {
      if (value.every((v) => v === null || typeof v !== "object")) {
        return "[" + value.map((v) => JSON.stringify(v)).join(", ") + "]";
      }
      return "[\n" + value.map((v) => inner + pretty(v, inner)).join(",\n") + "\n" + indent + "]";
    }
    if (value && typeof value === "object") {
      const keys = Object.keys(value);
      if (!keys.length) return "{}";
      const lines = keys.map((k) => inner + JSON.stringify(k) + ": " + pretty(value[k], inner));
      return "{\n" + lines.join(",\n") + "\n" + indent + "}";
    }
    return JSON.stringify(value);
  },

  apiKey: {
    get: () => sessionStorage.getItem(KEY_ITEM) || "",
    set: (key) => {
      if (key) sessionStorage.setItem(KEY_ITEM, key);
      else sessionStorage.removeItem(KEY_ITEM);
    },
    // `headers` plus the key's Authorization header, when a key was given.
    headers: (headers) => {
      const key = sessionStorage.getItem(KEY_ITEM);
      return key ? Object.assign({}, headers, { Authorization: "Bearer " + key }) : headers;
    },
  },
};
