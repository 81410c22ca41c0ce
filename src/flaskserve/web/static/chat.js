// The chat page of a generative model: sends the conversation to POST /v1/chat/completions with
// stream: true and shows each piece of text as its server-sent event arrives.
(function () {
  "use strict";
  const model = JSON.parse(document.getElementById("chat-data").textContent).model;
  const log = document.getElementById("chat-log");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  const maxTokens = document.getElementById("chat-max-tokens");
  const send = document.getElementById("chat-send");
  const stop = document.getElementById("chat-stop");
  const status = document.getElementById("chat-status");
  const messages = [];
  let running = null;

  function say(role, text) {
    const item = document.createElement("li");
    item.className = "chat-" + role;
    const who = document.createElement("strong");
    who.textContent = role + ": ";
    const body = document.createElement("span");
    body.className = "chat-text";
    body.textContent = text;
    item.append(who, body);
    log.append(item);
    return body;
  }

  async function converse(event) {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || running) return;
    messages.push({ role: "user", content: text });
    say("user", text);
    input.value = "";
    const answer = say("assistant", "");
    answer.setAttribute("data-streaming", "true");
    running = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    status.textContent = "Generating…";
    let reply = "";
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          model: model, messages: messages, stream: true,
          max_tokens: Number(maxTokens.value) || 64,
          stream_options: { include_usage: true },
        }),
        signal: running.signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffered.indexOf("\n\n")) >= 0) {
          const line = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new Error(chunk.error.message || String(chunk.error));
          const piece = chunk.choices.length ? chunk.choices[0].delta.content : null;
          if (piece) { reply += piece; answer.textContent = reply; }
          if (chunk.usage) {
            status.textContent = chunk.usage.prompt_tokens + " prompt tokens, " +
              chunk.usage.completion_tokens + " completion tokens";
          }
        }
      }
      messages.push({ role: "assistant", content: reply });
    } catch (error) {
      status.textContent = error.name === "AbortError" ? "Stopped." : "Error: " + error.message;
    } finally {
      answer.removeAttribute("data-streaming");
      running = null;
      send.disabled = false;
      stop.disabled = true;
    }
  }

  form.addEventListener("submit", converse);
  stop.addEventListener("click", () => running && running.abort());
  document.querySelectorAll("button.copy").forEach((button) => {
    button.addEventListener("click", () => {
      const code = document.getElementById(button.dataset.target);
      navigator.clipboard && navigator.clipboard.writeText(code.textContent);
    });
  });
})();
