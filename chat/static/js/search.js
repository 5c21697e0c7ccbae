// The search box: GET /api/search, a list of results, and "open it in its room".
//
// Rules this file keeps (as app.js does):
// - A message body reaches the page only through text nodes: the highlight is
//   a list of [start, end) code-point ranges of the body, and each range
//   becomes a <mark> element whose textContent is that slice. Nothing the
//   server sends is ever parsed as HTML.
// - Ranges count code points, not UTF-16 units, so a body is split with
//   Array.from before slicing (an emoji is one code point, two JS units).

import { request } from "./api.js";

const $ = (id) => document.getElementById(id);
const PAGE = 20;

export function searchApi(token, q, { room, before, limit } = {}) {
  const query = new URLSearchParams({ q });
  if (room !== undefined && room !== null) query.set("room", String(room));
  if (before !== undefined && before !== null) query.set("before", String(before));
  if (limit) query.set("limit", String(limit));
  return request("GET", `/api/search?${query}`, { token });
}

// The body as text nodes and <mark> elements, from the highlight ranges.
export function highlighted(body, ranges) {
  const chars = Array.from(body || "");
  const out = document.createDocumentFragment();
  let at = 0;
  const sorted = (Array.isArray(ranges) ? ranges : [])
    .filter((r) => Array.isArray(r) && Number.isInteger(r[0]) && Number.isInteger(r[1]))
    .sort((a, b) => a[0] - b[0]);
  for (const [start, end] of sorted) {
    if (start < at || end <= start || end > chars.length) continue; // overlapping or out of range
    if (start > at) out.append(document.createTextNode(chars.slice(at, start).join("")));
    const mark = document.createElement("mark");
    mark.textContent = chars.slice(start, end).join("");
    out.append(mark);
    at = end;
  }
  if (at < chars.length) out.append(document.createTextNode(chars.slice(at).join("")));
  return out;
}

// hooks: call(fn) runs fn(token) as the signed-in user; roomName(id) names a room;
// show(roomId, seq) opens the room at that message (resolves false if it cannot).
export function initSearch(hooks) {
  const form = $("search-form");
  const input = $("search-input");
  const panel = $("search-panel");
  const list = $("search-results");
  const status = $("search-status");
  const more = $("search-more");
  let current = null; // { q, before, generation }
  let generation = 0;

  function clear() {
    generation += 1;
    current = null;
    list.replaceChildren();
    status.textContent = "";
    more.hidden = true;
    panel.hidden = true;
  }

  function result(m) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "search-hit";
    const head = document.createElement("span");
    head.className = "search-hit-head";
    const where = hooks.roomName(m.room);
    head.textContent = `${where ? where : "room " + m.room} · ${m.sender.username} · ${new Date(m.ts).toLocaleString()}`;
    const body = document.createElement("span");
    body.className = "search-hit-body";
    body.append(highlighted(m.body, m.highlight));
    b.append(head, body);
    b.addEventListener("click", async () => {
      const shown = await hooks.show(m.room, Number(m.seq));
      if (!shown) status.textContent = "That message could not be opened.";
    });
    li.append(b);
    return li;
  }

  async function run(q, before) {
    const mine = ++generation;
    status.textContent = "Searching…";
    more.hidden = true;
    panel.hidden = false;
    try {
      const data = await hooks.call((token) => searchApi(token, q, { before, limit: PAGE }));
      if (mine !== generation) return; // a newer search replaced this one
      const found = data.messages;
      for (const m of found) list.append(result(m));
      const total = list.children.length;
      status.textContent =
        total === 0 ? "No messages found." : `${total} message${total === 1 ? "" : "s"} found`;
      current = { q, before: found.length ? found[found.length - 1].id : before };
      more.hidden = found.length < PAGE;
    } catch (err) {
      if (mine !== generation) return;
      status.textContent =
        err.code === "invalid" ? "Type a word to search for." : `Search failed: ${err.message}`;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = input.value.trim();
    clear();
    if (q) run(q, null);
  });
  more.addEventListener("click", () => {
    if (current) run(current.q, current.before);
  });
  $("search-clear").addEventListener("click", () => {
    input.value = "";
    clear();
    input.focus();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      input.value = "";
      clear();
    }
  });
  return { clear };
}
