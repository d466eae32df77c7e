// The textstream playground: streams /v1/completions (stream: true, logprobs: 5) into #output, one element per
// character carrying data-logprob, shaded by its probability, its likeliest alternatives on hover.
// Everything shown is set with textContent (never as HTML): a prompt with <script> is text.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP = 5;
let controller = null;   // the running request's AbortController
let fullText = null;     // the prompt and all the text generated since: what "Continue" sends as its prompt
let scored = true;       // false once the server says it gives no logprobs for this model (a byte-level one)

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function busy(on) {
  $("generate").disabled = on;
  $("continue").disabled = on || fullText === null;
  $("stop").disabled = !on;
}

// Shaded by surprise, -log p, on a log scale: a near-certain character is clear, one the model gave 1 in 400
// (-log p = 6) or less is the darkest. A linear scale in p would paint nearly everything the same.
function shade(logprob) {
  const surprise = Math.min(1, Math.max(0, -logprob / 6));
  return "rgba(232, 110, 28, " + (0.06 + 0.5 * surprise).toFixed(3) + ")";
}

function alternatives(top) {
  return Object.entries(top || {}).sort((a, b) => b[1] - a[1])
    .map(([ch, lp]) => JSON.stringify(ch).padEnd(8) + " " + (100 * Math.exp(lp)).toFixed(1) + "%").join("\n");
}

function addChars(text, logprobs) {
  const out = $("output");
  const tokens = logprobs ? logprobs.tokens : Array.from(text);
  tokens.forEach((tok, i) => {
    const span = document.createElement("span");
    span.className = "ch";
    span.textContent = tok;
    if (logprobs && logprobs.token_logprobs[i] !== null && logprobs.token_logprobs[i] !== undefined) {
      const lp = logprobs.token_logprobs[i];
      span.dataset.logprob = lp.toFixed(4);
      span.style.backgroundColor = shade(lp);
      span.dataset.top = alternatives(logprobs.top_logprobs && logprobs.top_logprobs[i]);
    }
    out.appendChild(span);
  });
  fullText += text;
}

async function run(prompt) {
  if (controller) return;
  controller = new AbortController();
  busy(true);
  const body = {
    prompt: prompt, stream: true,
    max_tokens: parseInt($("length").value, 10) || 300,
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
  };
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  if (scored) body.logprobs = TOP;
  status("generating...");
  let chars = 0;
  try {
    const send = () => fetch("/v1/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                  signal: controller.signal });
    let resp = await send();
    let err = resp.ok ? null : await resp.json().catch(() => ({ error: { message: resp.statusText } }));
    if (err && err.error.param === "logprobs" && body.logprobs !== undefined) {
      // no logprobs for this request (a prompt and length past the server's cap for them) or for this model:
      // the text without its shading rather than no text
      if (err.error.code === "unsupported_parameter") scored = false;
      delete body.logprobs;
      resp = await send();
      err = resp.ok ? null : await resp.json().catch(() => ({ error: { message: resp.statusText } }));
    }
    if (err) throw new Error(resp.status + ": " + err.error.message);
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const c of chunk.choices || []) {
          if (c.text) { addChars(c.text, c.logprobs); chars += c.text.length; }
          if (c.finish_reason) status(chars + " characters (" + c.finish_reason + ")");
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") status(chars + " characters (stopped)");
    else status(String(e.message || e), true);
  } finally {
    controller = null;
    busy(false);
  }
}

function start() {
  const out = $("output");
  out.replaceChildren();
  const prompt = $("prompt").value;
  fullText = prompt;
  if (prompt) {
    const p = document.createElement("span");
    p.className = "prompt";
    p.textContent = prompt;
    out.appendChild(p);
  }
  run(prompt);
}

function showTip(event) {
  const tip = $("tip");
  const span = event.target.closest(".ch");
  if (!span || !span.dataset.logprob) { tip.hidden = true; return; }
  tip.textContent = JSON.stringify(span.textContent) + "  p = " +
                    (100 * Math.exp(parseFloat(span.dataset.logprob))).toFixed(1) + "%\n" + (span.dataset.top || "");
  tip.hidden = false;
  let x = event.clientX + 12, y = event.clientY + 12;  // below right of the pointer, or flipped at an edge
  if (x + tip.offsetWidth > window.innerWidth - 4) x = event.clientX - 12 - tip.offsetWidth;
  if (y + tip.offsetHeight > window.innerHeight - 4) y = event.clientY - 12 - tip.offsetHeight;
  tip.style.left = Math.max(4, x) + "px";
  tip.style.top = Math.max(4, y) + "px";
}

function showModel() {
  fetch("/v1/models", { headers: headers() }).then((r) => r.ok ? r.json() : null)
    .then((m) => { $("model").textContent = m && m.data.length ? m.data[0].id : ""; }).catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = sessionStorage.getItem("textstream-key") || "";
  $("key").addEventListener("input", () => sessionStorage.setItem("textstream-key", $("key").value));
  $("key").addEventListener("change", showModel);
  $("generate").addEventListener("click", start);
  $("continue").addEventListener("click", () => run(fullText));
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("output").addEventListener("mousemove", showTip);
  $("output").addEventListener("mouseleave", () => { $("tip").hidden = true; });
  showModel();
  busy(false);
});
