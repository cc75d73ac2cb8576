// Berth console: live pages, actions through the API, followed logs. No framework, no build.
"use strict";
(function () {
  const csrf = (document.querySelector('meta[name="berth-csrf"]') || {}).content || "";
  const banner = document.getElementById("banner");

  function say(text, tone) {
    if (!banner) return;
    banner.textContent = "";
    banner.className = tone || "";
    banner.append(text);
    if (tone === "signin") {
      const a = document.createElement("a");
      a.href = "/ui/login";
      a.textContent = " Sign in again";
      banner.append(a);
    }
    banner.hidden = false;
  }
  function clear() { if (banner) banner.hidden = true; }

  // The live part: the page's own content asked again whenever the store moves past the index
  // it was rendered at (a blocking read, as the CLI's watches are), swapped in whole.
  const live = document.getElementById("live");
  let wake = null;
  async function follow() {
    let delay = 500;
    for (;;) {
      const src = live.dataset.src;
      const sep = src.includes("?") ? "&" : "?";
      const controller = new AbortController();
      wake = () => controller.abort();
      try {
        // Charts draw samples kept outside the store: they are asked for at least every step
        // of the traffic history (10 s) even when the store stands still.
        const wait = live.querySelector("figure.chart") ? "10s" : "30s";
        const r = await fetch(`${src}${sep}fragment=1&index=${live.dataset.index}&wait=${wait}`,
          { credentials: "same-origin", signal: controller.signal });
        if (r.status === 401) { say("Your session has ended.", "signin"); return; }
        if (!r.ok) throw new Error(`the server answered ${r.status}`);
        const html = await r.text();
        live.dataset.index = r.headers.get("x-berth-index") || live.dataset.index;
        swap(html);
        if (banner && banner.className === "bad" && banner.dataset.lost) { clear(); delete banner.dataset.lost; }
        delay = 500;
      } catch (e) {
        if (e.name === "AbortError") continue;
        say("The server cannot be reached; retrying.", "bad");
        banner.dataset.lost = "1";
        await new Promise((ok) => setTimeout(ok, delay));
        delay = Math.min(delay * 2, 5000);
      }
    }
  }
  function swap(html) {
    if (live.innerHTML !== html) update(html);
  }
  // The new content is laid over the old node by node, so what did not change stays as it is:
  // no row or chart is rebuilt, focus and scroll stay, nothing on the page moves for it, and a
  // number being typed stays (a field's value attribute no longer shows once it is edited).
  function update(html) {
    const next = document.createElement("div");
    next.innerHTML = html;
    morph(live, next);
    refilter();
  }
  const keyOf = (n) => (n.nodeType === 1 && n.dataset.key !== undefined ? `${n.tagName}:${n.dataset.key}` : null);
  const alike = (a, b) => a.nodeType === b.nodeType && a.nodeName === b.nodeName && keyOf(a) === keyOf(b);
  function morph(old, next) {
    if (old !== live) {
      for (const a of [...old.attributes]) if (!next.hasAttribute(a.name)) old.removeAttribute(a.name);
      for (const a of next.attributes) if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
    }
    const keyed = new Map();
    for (const c of old.childNodes) { const k = keyOf(c); if (k) keyed.set(k, c); }
    let at = old.firstChild;
    for (const n of [...next.childNodes]) {
      const k = keyOf(n);
      let match = k ? keyed.get(k) : at && alike(at, n) ? at : null;
      if (match && match !== at) old.insertBefore(match, at);
      if (!match) { old.insertBefore(n, at); continue; }
      if (k) keyed.delete(k);
      if (match.nodeType === 1) morph(match, n);
      else if (match.nodeValue !== n.nodeValue) match.nodeValue = n.nodeValue;
      at = match.nextSibling;
    }
    while (at) { const gone = at; at = at.nextSibling; gone.remove(); }
  }
  // Rows a filter hides stay hidden when new rows arrive.
  function refilter() {
    for (const input of document.querySelectorAll("input[data-filter]")) if (input.value) filterRows(input);
  }
  if (live) follow();

  // Actions: a form with data-api is sent to the API as JSON, with the session's CSRF token.
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const body = {};
    for (const input of form.querySelectorAll("input[name], select[name]")) {
      let v = input.value;
      if (input.type === "number" || input.dataset.type === "number") v = Number(v);
      if (input.dataset.type === "bool") v = v === "true";
      body[input.name] = v;
    }
    // A script is sent as it is written.
    const raw = form.dataset.raw ? form.querySelector(`[name="${form.dataset.raw}"]`) : null;
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const r = await fetch(form.dataset.api, {
        method: form.dataset.method || "POST",
        credentials: "same-origin",
        headers: { "content-type": raw ? form.dataset.type : "application/json", "x-berth-csrf": csrf },
        body: raw ? raw.value : JSON.stringify(body),
      });
      const answer = await r.json().catch(() => ({}));
      const line = ((answer.details || []).find((d) => d.line) || {}).line;
      if (r.status === 401) say("Your session has ended.", "signin");
      else if (!r.ok && line && raw) { say(`line ${line}: ${answer.error}`, "bad"); selectLine(raw, line); }
      else if (!r.ok) say(answer.error || `refused: ${r.status}`, "bad");
      else { say(form.dataset.done || "done", "good"); setTimeout(clear, 4000); if (wake) wake(); }
    } catch (e) {
      say("The server cannot be reached: nothing was changed.", "bad");
    } finally {
      if (button) button.disabled = false;
    }
  });

  // Puts the caret on line `n` (from 1) of a text area, selected, where the error is.
  function selectLine(area, n) {
    const lines = area.value.split("\n");
    const start = lines.slice(0, n - 1).reduce((sum, l) => sum + l.length + 1, 0);
    area.focus();
    area.setSelectionRange(start, start + (lines[n - 1] || "").length);
  }

  // Logs: the API's NDJSON stream, followed; each line added as text, never as markup.
  const pre = document.getElementById("log-lines");
  let reader = null;
  async function logs() {
    if (reader) { reader.abort(); reader = null; }
    pre.textContent = "";
    const params = new URLSearchParams({ tail: "200" });
    const grep = document.getElementById("log-grep").value;
    const inst = document.getElementById("log-instance").value;
    const followOn = document.getElementById("log-follow").checked;
    if (grep) params.set("grep", grep);
    if (inst) params.set("instance", inst);
    if (followOn) params.set("follow", "true");
    const controller = new AbortController();
    reader = controller;
    try {
      const r = await fetch(`${pre.dataset.src}?${params}`, { credentials: "same-origin", signal: controller.signal });
      if (!r.ok) { const a = await r.json().catch(() => ({})); pre.textContent = a.error || `refused: ${r.status}`; return; }
      const decoder = new TextDecoder();
      const stream = r.body.getReader();
      let rest = "";
      for (;;) {
        const { value, done } = await stream.read();
        if (done) break;
        rest += decoder.decode(value, { stream: true });
        const lines = rest.split("\n");
        rest = lines.pop();
        for (const text of lines) if (text.trim()) add(JSON.parse(text));
      }
    } catch (e) {
      if (e.name !== "AbortError") pre.append("\n(the log stream ended: " + e.message + ")\n");
    }
  }
  function add(line) {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const row = document.createElement("div");
    if (line.stream === "stderr") row.className = "stderr";
    const who = document.createElement("span");
    who.className = "inst";
    who.textContent = line.instance + " ";
    row.append(who, line.line);
    pre.append(row);
    while (pre.childElementCount > 2000) pre.firstElementChild.remove();
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }
  if (pre) {
    const filter = document.getElementById("log-filter");
    filter.addEventListener("submit", (e) => { e.preventDefault(); logs(); });
    filter.addEventListener("change", logs);
    logs();
  }

  // A choice that shows another list (the group of the apps page) takes effect at once.
  document.addEventListener("change", (ev) => {
    const select = ev.target;
    if (select instanceof HTMLSelectElement && select.dataset.autosubmit !== undefined && select.form) select.form.submit();
  });

  // Filters that hide table rows as one types.
  function filterRows(input) {
    const words = input.value.toLowerCase();
    for (const row of document.querySelectorAll(input.dataset.filter)) {
      row.hidden = words !== "" && !row.textContent.toLowerCase().includes(words);
    }
  }
  document.addEventListener("input", (ev) => {
    const input = ev.target;
    if (input.dataset && input.dataset.filter) filterRows(input);
  });
})();
