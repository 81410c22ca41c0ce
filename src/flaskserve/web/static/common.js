// Shared by the playground and the docs page.
"use strict";

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
};
