// The browser client: sign in, rooms with unread counts, messages with
// scroll-back, live updates over one WebSocket, resume after a drop.
//
// Rules this file keeps:
// - Every user-supplied string reaches the page through textContent (or an
//   attribute), never as HTML.
// - The token lives in sessionStorage and in memory; it is sent only in the
//   Authorization header and the WebSocket `hello`, never in a URL.
// - Each room's messages are keyed by `seq`: whatever the source (history,
//   replay after a resume, live frame, the `ok` of one's own send), a message
//   is shown once, in `seq` order.

import { ApiError, api } from "./api.js";
import { Connection, Disconnected, RequestTimeout, websocketUrl } from "./connection.js";
import { CLOSE } from "./closes.js";
import { initSearch } from "./search.js";
import { isStaff, setupModeration } from "./moderation.js";

const $ = (id) => document.getElementById(id);

const SESSION_KEY = "chat.session";
const ACTIVE_KEY = "chat.activeRoom";
const PAGE = 50;
const GROUP_MS = 5 * 60 * 1000;
const TYPING_SHOW_MS = 4000;
const TYPING_EVERY_MS = 1000;
const ROOMS_REFRESH_MS = 15000;
const MAX_BODY = 4000;
const MAX_GAP_FILL = 1000; // a resume that missed more than this starts afresh
const USERNAME = /^[A-Za-z0-9_.-]{3,32}$/;

const state = {
  token: null,
  me: null,
  conn: null,
  connGen: 0, // bumped at each `welcome`
  connState: "stopped",
  wasDisconnected: false,
  rooms: new Map(), // key(room id) -> Room
  activeKey: null,
  pending: new Map(), // client_id -> pending send, in the order they were typed
  lastTypingSent: 0,
  refreshTimer: null,
  readTimer: null,
  bannerTimer: null,
  toastTimer: null,
  thread: null, // the open thread pane: { room, root (message id) }
};

// The emoji one click adds under a message.
const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉"];

const key = (id) => String(id);
const sameId = (a, b) => a !== undefined && a !== null && String(a) === String(b);
const isMine = (user) => state.me !== null && sameId(user && user.id, state.me.id);

// -- small helpers ----------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, className, onClick) {
  const b = el("button", className, label);
  b.type = "button";
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

function newClientId() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return `c-${crypto.randomUUID()}`;
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return `c-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayTimeFormat = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

function shortTime(date) {
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay ? timeFormat.format(date) : dayTimeFormat.format(date);
}

function describeError(err) {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Disconnected) return "Not connected: it will be retried when the connection is back.";
  if (err instanceof RequestTimeout) return "The server did not answer in time.";
  return "Something went wrong.";
}

function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(state.toastTimer);
  state.toastTimer = setTimeout(() => {
    box.hidden = true;
  }, 5000);
}

// -- session ----------------------------------------------------------------

function loadSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    // `user: null` is a token a host page handed over (an identity provider's JWT, see
    // docs/client-browser.md): the user comes with the WebSocket's `welcome`.
    if (saved && typeof saved.token === "string" && (saved.user || saved.user === null)) {
      return saved;
    }
  } catch {
    /* ignore a damaged entry */
  }
  return null;
}

function saveSession(token, user) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token, user }));
}

function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(ACTIVE_KEY);
}

// An HTTP call on behalf of the signed-in user; a 401 ends the session.
async function authed(call) {
  try {
    return await call(state.token);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401 && state.token) {
      sessionEnded("You have been signed out: your session ended or was revoked.");
    }
    throw err;
  }
}

function showAuth(note) {
  $("app-view").hidden = true;
  $("auth-view").hidden = false;
  $("auth-error").textContent = "";
  $("auth-note").textContent = note || "";
  document.title = "Chat";
  $("auth-username").focus();
}

function showApp() {
  $("auth-view").hidden = true;
  $("app-view").hidden = false;
  $("me-name").textContent = state.me ? state.me.username : "";
}

async function onAuthSubmit(event) {
  event.preventDefault();
  const mode = event.submitter && event.submitter.value === "signup" ? "signup" : "signin";
  const username = $("auth-username").value.trim();
  const password = $("auth-password").value;
  const error = $("auth-error");
  error.textContent = "";
  $("auth-note").textContent = "";
  if (mode === "signup") {
    if (!USERNAME.test(username)) {
      error.textContent =
        "Choose a username of 3 to 32 letters, digits, underscores, dots or hyphens.";
      $("auth-username").focus();
      return;
    }
    if (password.length < 8) {
      error.textContent = "Choose a password of at least 8 characters.";
      $("auth-password").focus();
      return;
    }
  } else if (!username || !password) {
    error.textContent = "Enter your username and password.";
    (username ? $("auth-password") : $("auth-username")).focus();
    return;
  }
  const buttons = [$("sign-in"), $("sign-up")];
  for (const b of buttons) b.disabled = true;
  try {
    if (mode === "signup") {
      try {
        await api.signUp(username, password);
      } catch (err) {
        if (err instanceof ApiError && err.code === "conflict") {
          throw new ApiError(409, "conflict", "That username is taken: choose another, or sign in.");
        }
        throw err;
      }
    }
    let session;
    try {
      session = await api.signIn(username, password);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        throw new ApiError(401, "unauthorized", "Wrong username or password.");
      }
      throw err;
    }
    state.token = session.token;
    state.me = session.user;
    saveSession(session.token, session.user);
    $("auth-password").value = "";
    await enterApp();
  } catch (err) {
    error.textContent = describeError(err);
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

async function enterApp() {
  showApp();
  state.conn = new Connection(websocketUrl(window.location), state.token, {
    state: onConnState,
    welcome: onWelcome,
    frame: onFrame,
  });
  try {
    await refreshRooms({ join: false });
  } catch (err) {
    if (!state.token || (err instanceof ApiError && err.status === 401)) return;
    toast(`Could not load your rooms: ${describeError(err)}`);
  }
  state.conn.start();
  moderation.loadDirectory().catch(() => {});
  clearInterval(state.refreshTimer);
  state.refreshTimer = setInterval(() => {
    refreshRooms().catch(() => {});
  }, ROOMS_REFRESH_MS);
  const remembered = sessionStorage.getItem(ACTIVE_KEY);
  if (remembered && state.rooms.has(remembered)) {
    openRoom(remembered, { focus: true });
  } else {
    closeRoomView();
    const first = document.querySelector(".room-item");
    if (first) first.focus();
    else $("new-room-name").focus();
  }
}

function teardown() {
  if (state.conn) state.conn.stop();
  state.conn = null;
  clearInterval(state.refreshTimer);
  clearTimeout(state.readTimer);
  for (const r of state.rooms.values()) for (const t of r.typing.values()) clearTimeout(t.timer);
  state.rooms.clear();
  state.pending.clear();
  state.activeKey = null;
  state.token = null;
  state.me = null;
  state.wasDisconnected = false;
  clearSession();
  $("composer-input").value = "";
  $("room-list").replaceChildren();
  $("dm-list").replaceChildren();
  closeRoomView();
  hideBanner();
  if (state.search) state.search.clear();
}

async function signOut() {
  const token = state.token;
  teardown();
  showAuth("You have signed out.");
  if (token) {
    try {
      await api.signOut(token);
    } catch {
      /* the token is forgotten here either way */
    }
  }
}

// The server ended the session (close 4001 or an HTTP 401): stop, say why.
function sessionEnded(message) {
  if (state.conn && !state.conn.stopped) state.conn.stop();
  $("conn-dot").dataset.state = "fatal";
  clearInterval(state.refreshTimer);
  showBanner(message, "error", "Sign in again", () => {
    teardown();
    showAuth("Sign in again to carry on.");
  });
}

// -- rooms ------------------------------------------------------------------

function newRoom(room) {
  const list = el("ol", "message-list");
  const r = {
    id: room.id,
    key: key(room.id),
    name: room.name,
    private: Boolean(room.private),
    createdBy: room.created_by || null,
    // The other person when the server says this is a DM; null for every other room.
    dm: room.dm || null,
    topic: typeof room.topic === "string" ? room.topic : "",
    slowMode: Number(room.slow_mode) || 0,
    // The caller's role (GET /api/rooms says; a room just created is ours).
    role: typeof room.role === "string" ? room.role : "member",
    lastSeq: Number(room.last_seq) || 0,
    readSeq: Math.max(0, (Number(room.last_seq) || 0) - (Number(room.unread) || 0)),
    // Unread messages that mention us (or @room): the server's count, then live notifies.
    mentions: Number(room.mentions) || 0,
    readSentSeq: 0,
    // The seq up to which this client has every message (a join's `since`).
    seen: room.last_seq === undefined ? null : Number(room.last_seq),
    msgs: new Map(), // seq -> { m, el }
    list,
    historyLoaded: false,
    loadingLatest: false,
    loadingOlder: false,
    historyError: "",
    online: new Map(),
    typing: new Map(),
    joinGen: -1,
    joined: false,
    truncated: false,
    gaps: [], // [after, before] ranges that a failed fillGap still owes
    draft: "",
    savedScroll: null,
    navItem: null,
  };
  r.readSentSeq = r.readSeq;
  return r;
}

// The other person's username if the server says the room is a DM. Only the server's
// `dm` field counts: a room's name is anyone's to choose ("alice & you" is no DM).
function dmPeer(r) {
  return r.dm && typeof r.dm.username === "string" ? r.dm.username : null;
}

// Rooms in the order to join them: DMs first, so that if others put us into more rooms
// than a connection may join, the conversations with one person are still live.
function dmsFirst(rooms) {
  return [...rooms].sort((a, b) => Number(Boolean(b.dm)) - Number(Boolean(a.dm)));
}

function displayName(r) {
  return dmPeer(r) || r.name;
}

function unread(r) {
  return Math.max(0, r.lastSeq - r.readSeq);
}

async function refreshRooms({ join = true } = {}) {
  if (!state.token) return [];
  const data = await authed((token) => api.rooms(token));
  const added = [];
  for (const summary of data.rooms) {
    const k = key(summary.id);
    let r = state.rooms.get(k);
    if (!r) {
      r = newRoom(summary);
      state.rooms.set(k, r);
      added.push(r);
    } else {
      r.name = summary.name;
      r.private = Boolean(summary.private);
      r.createdBy = summary.created_by || r.createdBy;
      r.dm = summary.dm || null;
      const roleBefore = r.role;
      moderation.applyRoom(r, summary);
      if (isActive(r)) renderRoomHeader();
      if (r.role !== roleBefore) repaintMessages(r);
      const serverRead = Number(summary.last_seq) - Number(summary.unread);
      r.lastSeq = Math.max(r.lastSeq, Number(summary.last_seq));
      r.readSeq = Math.max(r.readSeq, serverRead);
      r.readSentSeq = Math.max(r.readSentSeq, serverRead);
      r.mentions = Number(summary.mentions) || 0;
      if (r.seen === null) r.seen = Number(summary.last_seq);
    }
  }
  renderRoomLists();
  if (join && state.conn && state.conn.ready) for (const r of dmsFirst(added)) joinRoom(r);
  return added;
}

// Subscribe this connection to a room, resuming from what we already have.
async function joinRoom(r) {
  const conn = state.conn;
  if (!conn || !conn.ready || r.joinGen === state.connGen) return;
  r.joinGen = state.connGen;
  r.joined = false;
  const frame = { type: "join", room: r.id };
  const hadSince = r.seen !== null;
  if (hadSince) frame.since = r.seen;
  let reply;
  try {
    reply = await conn.request(frame);
  } catch {
    r.joinGen = -1; // joined again after the next welcome
    return;
  }
  if (state.rooms.get(r.key) !== r) return;
  if (reply.type === "error") {
    if (reply.code === "forbidden" || reply.code === "not_found") {
      removeRoomLocally(r, `You are no longer a member of “${displayName(r)}”.`);
    } else {
      r.joinGen = -1;
      toast(`Could not open “${displayName(r)}”: ${reply.message}`);
    }
    return;
  }
  r.joined = true;
  if (reply.truncated && r.seen !== null) {
    // More was missed than the server replays: the replay starts above a
    // gap, which the first replayed message reveals (see addMessage).
    r.truncated = true;
  } else if (!hadSince || r.seen === null) {
    r.seen = Math.max(r.seen || 0, Number(reply.seq));
  }
  r.lastSeq = Math.max(r.lastSeq, Number(reply.seq));
  renderRoomItem(r);
}

async function addRoom(room) {
  const k = key(room.id);
  if (!state.rooms.has(k)) {
    try {
      await refreshRooms();
    } catch {
      /* fall back to what we were given */
    }
  }
  if (!state.rooms.has(k)) {
    const r = newRoom(room);
    state.rooms.set(k, r);
    renderRoomLists();
    joinRoom(r);
  }
  openRoom(k, { focus: true });
}

function removeRoomLocally(r, note) {
  if (!state.rooms.has(r.key)) return;
  state.rooms.delete(r.key);
  for (const [clientId, p] of state.pending) if (p.room === r) state.pending.delete(clientId);
  for (const t of r.typing.values()) clearTimeout(t.timer);
  if (state.activeKey === r.key) closeRoomView();
  renderRoomLists();
  if (note) toast(note);
}

function renderRoomItem(r) {
  if (!r.navItem) return;
  const b = r.navItem.querySelector("button");
  const peer = dmPeer(r);
  b.querySelector(".room-icon").textContent = peer ? "@" : r.private ? "🔒" : "#";
  b.querySelector(".room-name").textContent = displayName(r);
  const count = unread(r);
  const badge = b.querySelector(".badge");
  badge.hidden = count === 0;
  badge.querySelector(".count").textContent = count > 99 ? "99+" : String(count);
  b.classList.toggle("has-unread", count > 0);
  const mentionBadge = b.querySelector(".mention-badge");
  mentionBadge.hidden = !(r.mentions > 0);
  mentionBadge.querySelector(".count").textContent = r.mentions > 99 ? "99+" : String(r.mentions);
  if (state.activeKey === r.key) b.setAttribute("aria-current", "page");
  else b.removeAttribute("aria-current");
  const online = peer && [...r.online.values()].some((u) => sameId(u.id, r.dm.id));
  b.classList.toggle("peer-online", Boolean(online));
  updateTitle();
}

function renderRoomLists() {
  const focusedKey =
    document.activeElement && document.activeElement.classList.contains("room-item")
      ? document.activeElement.dataset.room
      : null;
  const rooms = [...state.rooms.values()].sort((a, b) =>
    displayName(a).localeCompare(displayName(b), undefined, { sensitivity: "base" }),
  );
  const channels = [];
  const dms = [];
  for (const r of rooms) {
    if (!r.navItem) {
      const li = el("li");
      const b = el("button", "room-item");
      b.type = "button";
      b.dataset.room = r.key;
      const badge = el("span", "badge");
      badge.append(el("span", "count"), el("span", "visually-hidden", " unread"));
      const mentionBadge = el("span", "mention-badge");
      mentionBadge.append("@", el("span", "count"), el("span", "visually-hidden", " mentions"));
      b.append(el("span", "room-icon"), el("span", "room-name"), mentionBadge, badge);
      b.setAttribute("aria-controls", "room-view");
      b.addEventListener("click", () => openRoom(r.key, { focus: true }));
      li.append(b);
      r.navItem = li;
    }
    renderRoomItem(r);
    (dmPeer(r) ? dms : channels).push(r.navItem);
  }
  const sameOrder = (list, items) =>
    list.children.length === items.length && items.every((item, i) => list.children[i] === item);
  if (!sameOrder($("room-list"), channels)) $("room-list").replaceChildren(...channels);
  if (!sameOrder($("dm-list"), dms)) $("dm-list").replaceChildren(...dms);
  $("rooms-empty").hidden = channels.length > 0;
  $("dms-heading").hidden = dms.length === 0;
  if (focusedKey && document.activeElement === document.body) {
    const again = document.querySelector(`.room-item[data-room="${CSS.escape(focusedKey)}"]`);
    if (again) again.focus();
  }
  updateTitle();
}

function updateTitle() {
  let total = 0;
  for (const r of state.rooms.values()) total += unread(r);
  document.title = total > 0 ? `(${total}) Chat` : "Chat";
}

// -- the open room ----------------------------------------------------------

const activeRoom = () => (state.activeKey ? state.rooms.get(state.activeKey) || null : null);
const isActive = (r) => state.activeKey === r.key;

function nearBottom(box = $("messages")) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
  $("jump-new").hidden = true;
}

function closeRoomView() {
  moderation.closePanel();
  closeThread();
  const prev = activeRoom();
  if (prev) prev.list.remove();
  state.activeKey = null;
  sessionStorage.removeItem(ACTIVE_KEY);
  document.body.classList.remove("room-open");
  $("room-title").textContent = "No room open";
  $("room-sub").textContent = "";
  $("online").replaceChildren();
  $("typing").textContent = "";
  $("room-tools").hidden = true;
  $("composer").hidden = true;
  $("empty-state").hidden = false;
  $("load-older").hidden = true;
  $("history-start").hidden = true;
  $("jump-new").hidden = true;
  for (const r of state.rooms.values()) renderRoomItem(r);
}

function openRoom(k, { focus = false } = {}) {
  const r = state.rooms.get(k);
  if (!r) return;
  const box = $("messages");
  const prev = activeRoom();
  if (prev && prev !== r) {
    prev.savedScroll = nearBottom(box) ? null : box.scrollTop;
    prev.draft = $("composer-input").value;
    prev.list.remove();
  }
  const switching = prev !== r;
  if (switching) {
    moderation.closePanel();
    closeThread();
  }
  state.activeKey = k;
  sessionStorage.setItem(ACTIVE_KEY, k);
  document.body.classList.add("room-open");
  $("empty-state").hidden = true;
  $("composer").hidden = false;
  $("composer-error").textContent = "";
  if (switching) {
    box.append(r.list);
    $("composer-input").value = r.draft;
    autosize();
  }
  renderRoomHeader();
  renderOnline();
  renderTyping();
  renderHistoryTop();
  for (const other of state.rooms.values()) renderRoomItem(other);
  if (!r.historyLoaded) loadLatest(r);
  else if (switching) {
    if (r.savedScroll === null) scrollToBottom();
    else box.scrollTop = r.savedScroll;
  }
  scheduleRead();
  if (focus) $("composer-input").focus();
}

function renderRoomHeader() {
  const r = activeRoom();
  if (!r) return;
  const peer = dmPeer(r);
  $("room-title").textContent = peer ? `@${peer}` : r.name;
  let sub;
  if (peer) sub = "Direct message";
  else if (r.private) sub = "Private room · members add people";
  else sub = `Public room · id ${r.id} · others join with this id`;
  $("room-sub").textContent = sub;
  // Anyone may leave any room, a DM included (the other side cannot bring them back);
  // nobody adds a third person to a DM.
  $("room-tools").hidden = false;
  $("leave-room").textContent = peer ? "Leave conversation" : "Leave room";
  $("add-member-form").hidden = !r.private || Boolean(peer);
  moderation.renderRoom(r);
}

// Paint a room's messages again: the caller's role decides their Delete buttons.
function repaintMessages(r) {
  for (const entry of r.msgs.values()) {
    if (entry.el && entry.el.dataset.state === "sent") paintMessage(r, entry.el, entry.m);
  }
}

function renderOnline() {
  const r = activeRoom();
  const box = $("online");
  if (!r) {
    box.replaceChildren();
    return;
  }
  const users = [...r.online.values()].sort((a, b) => a.username.localeCompare(b.username));
  const label = el("span", "online-count", `${users.length} online`);
  const names = el("ul", "online-list");
  names.setAttribute("aria-label", "Online now");
  for (const u of users) {
    const item = el("li", "online-user", u.username + (isMine(u) ? " (you)" : ""));
    names.append(item);
  }
  box.replaceChildren(el("span", "presence-dot"), label, names);
}

function renderTyping() {
  const r = activeRoom();
  const box = $("typing");
  if (!r) {
    box.textContent = "";
    return;
  }
  const names = [...r.typing.values()].map((t) => t.user.username).sort();
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  box.textContent = text;
}

function minSeq(r) {
  for (const child of r.list.children) if (child.dataset.seq) return Number(child.dataset.seq);
  return null;
}

function hasOlder(r) {
  const min = minSeq(r);
  return min !== null && min > 1;
}

function renderHistoryTop() {
  const r = activeRoom();
  if (!r) return;
  const older = $("load-older");
  const start = $("history-start");
  $("messages").dataset.state = r.historyLoaded ? "ready" : "loading";
  if (r.historyError) {
    older.hidden = false;
    older.textContent = "Could not load messages: try again";
    start.hidden = true;
    return;
  }
  if (!r.historyLoaded) {
    older.hidden = true;
    start.hidden = false;
    start.textContent = "Loading messages…";
    return;
  }
  const more = hasOlder(r);
  older.hidden = !more;
  older.textContent = r.loadingOlder ? "Loading older messages…" : "Load older messages";
  older.disabled = r.loadingOlder;
  start.hidden = more;
  start.textContent =
    r.msgs.size === 0 ? "No messages yet: say hello." : "This is the start of the conversation.";
}

async function loadLatest(r) {
  if (r.loadingLatest) return;
  r.loadingLatest = true;
  r.historyError = "";
  if (isActive(r)) renderHistoryTop();
  try {
    const data = await authed((token) => api.history(token, r.id, { limit: PAGE }));
    if (state.rooms.get(r.key) !== r) return;
    const page = data.messages;
    if (page.length) {
      // Keep only what joins up with this page, so the held messages are
      // one unbroken run of seqs and scroll-back can continue below it.
      const floor = Number(page[0].seq);
      for (const [seq, entry] of r.msgs) {
        if (seq < floor) {
          entry.el.remove();
          r.msgs.delete(seq);
        }
      }
    }
    for (const m of page) addMessage(r, m, "history");
    r.historyLoaded = true;
    if (isActive(r)) {
      renderHistoryTop();
      scrollToBottom();
      fillViewport(r);
      scheduleRead();
    }
  } catch (err) {
    r.historyError = describeError(err);
    if (isActive(r)) renderHistoryTop();
  } finally {
    r.loadingLatest = false;
  }
}

async function loadOlder(r) {
  if (!r || r.loadingOlder || !r.historyLoaded || !hasOlder(r)) return;
  r.loadingOlder = true;
  renderHistoryTop();
  const box = $("messages");
  try {
    const before = minSeq(r);
    const data = await authed((token) => api.history(token, r.id, { before, limit: PAGE }));
    if (state.rooms.get(r.key) !== r) return;
    const fromBottom = box.scrollHeight - box.scrollTop;
    for (const m of data.messages) addMessage(r, m, "history");
    if (isActive(r)) box.scrollTop = box.scrollHeight - fromBottom;
  } catch (err) {
    toast(`Could not load older messages: ${describeError(err)}`);
  } finally {
    r.loadingOlder = false;
    if (isActive(r)) {
      renderHistoryTop();
      fillViewport(r);
    }
  }
}

// Load older pages until the list overflows (so there is something to scroll).
function fillViewport(r) {
  const box = $("messages");
  if (isActive(r) && box.scrollHeight <= box.clientHeight + 8 && hasOlder(r) && !r.loadingOlder) {
    loadOlder(r);
  }
}

// After a resume: edits and deletes are live only, so refresh the newest page.
async function refreshRecent(r) {
  if (!r.historyLoaded) return;
  try {
    const data = await authed((token) => api.history(token, r.id, { limit: PAGE }));
    if (state.rooms.get(r.key) !== r) return;
    const stick = isActive(r) && nearBottom();
    for (const m of data.messages) addMessage(r, m, "history");
    if (stick && isActive(r)) scrollToBottom();
  } catch {
    /* the next resume tries again */
  }
}

// -- messages ---------------------------------------------------------------

function messageShell() {
  const li = el("li", "msg");
  const avatar = el("div", "avatar");
  avatar.setAttribute("aria-hidden", "true");
  const content = el("div", "content");
  const meta = el("div", "meta");
  const sender = el("span", "sender");
  const time = el("time", "ts");
  const edited = el("span", "edited", "(edited)");
  edited.hidden = true;
  const status = el("span", "status");
  meta.append(sender, " ", time, " ", edited, " ", status);
  const body = el("div", "body");
  const actions = el("div", "actions");
  content.append(meta, body, actions);
  li.append(avatar, content);
  return li;
}

const part = (li, name) => li.querySelector(`:scope > .content > .${name}, :scope > .content > .meta > .${name}`);

function paintSender(li, user, when) {
  const avatar = li.querySelector(".avatar");
  avatar.textContent = (user.username[0] || "?").toUpperCase();
  avatar.style.setProperty("--hue", String(hue(user.username)));
  const sender = part(li, "sender");
  sender.textContent = user.username;
  if (user.bot) sender.append(el("span", "bot-tag", "bot"));
  const time = part(li, "ts");
  time.dateTime = when.toISOString();
  time.textContent = shortTime(when);
  time.title = fullFormat.format(when);
  li.dataset.sender = key(user.id);
  li.dataset.time = String(when.getTime());
}

function paintMessage(r, li, m) {
  li.dataset.seq = String(m.seq);
  li.dataset.id = String(m.id);
  li.dataset.state = "sent";
  li.classList.remove("pending", "failed", "confirming");
  li.classList.toggle("mine", isMine(m.sender));
  li.classList.toggle("deleted", Boolean(m.deleted));
  paintSender(li, m.sender, new Date(m.ts));
  const edited = part(li, "edited");
  edited.hidden = !m.edited_at || m.deleted;
  if (m.edited_at) edited.title = `Edited ${fullFormat.format(new Date(m.edited_at))}`;
  part(li, "status").textContent = "";
  if (!li.classList.contains("editing")) {
    if (m.deleted) part(li, "body").textContent = "This message was deleted.";
    else paintBody(part(li, "body"), m.body);
  }
  li.classList.toggle("mentions-me", !m.deleted && mentionsMe(m));
  li.classList.toggle("reply", m.thread !== undefined && m.thread !== null);
  paintReactions(li, m);
  const actions = part(li, "actions");
  actions.replaceChildren();
  if (!m.deleted) {
    const replies = Number(m.reply_count) || 0;
    const thread = button(
      replies ? `${replies} ${replies === 1 ? "reply" : "replies"}` : "Reply",
      replies ? "act thread has-replies" : "act thread",
    );
    thread.dataset.root = String(m.thread || m.id);
    actions.append(thread);
    const react = button("👍", "act react");
    react.setAttribute("aria-label", "React with 👍");
    actions.append(react);
    const who = `your message from ${shortTime(new Date(m.ts))}`;
    if (isMine(m.sender)) {
      const edit = button("Edit", "act edit");
      edit.setAttribute("aria-label", `Edit ${who}`);
      actions.append(edit);
    }
    // The owner and moderators delete anyone's message (never in a DM).
    if (isMine(m.sender) || isStaff(r)) {
      const del = button("Delete", "act delete");
      del.setAttribute(
        "aria-label",
        isMine(m.sender) ? `Delete ${who}` : `Delete the message from ${m.sender.username}`,
      );
      actions.append(del);
    }
  }
  actions.hidden = actions.children.length === 0;
}

// Whether a message mentions the signed-in user by name or says @room.
function mentionsMe(m) {
  if (!state.me) return false;
  return Boolean(m.mention_room) || (m.mentions || []).some((id) => sameId(id, state.me.id));
}

// The server's @name rule (docs/protocol.md): the longest run of username characters
// after an @ that starts the body or follows no letter, digit or _, less trailing . - _.
const MENTION = /@([A-Za-z0-9_.-]+)/g;

// A body as text nodes, with @mentions of the signed-in user (and @room) marked.
function paintBody(box, body) {
  box.replaceChildren();
  const mine = state.me ? state.me.username.toLowerCase() : null;
  let at = 0;
  for (const match of body.matchAll(MENTION)) {
    const before = match.index > 0 ? body[match.index - 1] : "";
    if (before && /[\p{L}\p{N}_]/u.test(before)) continue;
    const name = match[1].replace(/[._-]+$/, "");
    const lower = name.toLowerCase();
    if (!name || (lower !== mine && lower !== "room")) continue;
    box.append(body.slice(at, match.index));
    box.append(el("mark", "mention", `@${name}`));
    at = match.index + 1 + name.length;
  }
  box.append(body.slice(at));
}

// The reactions row: one toggle per emoji (pressed when one of ours), counts as text.
function paintReactions(li, m) {
  let row = li.querySelector(":scope > .content > .reactions");
  if (!row) {
    row = el("div", "reactions");
    part(li, "body").after(row);
  }
  row.replaceChildren();
  for (const x of m.deleted ? [] : m.reactions || []) {
    const mine = state.me && (x.users || []).some((id) => sameId(id, state.me.id));
    const chip = button(`${x.emoji} ${x.count}`, "reaction");
    chip.dataset.emoji = x.emoji;
    chip.setAttribute("aria-pressed", mine ? "true" : "false");
    row.append(chip);
  }
  row.hidden = row.children.length === 0;
}

function react(r, m, emoji, add) {
  if (!state.conn || !state.conn.ready) return;
  const frame = { type: add ? "react" : "unreact", room: r.id, id: m.id, emoji };
  state.conn.request(frame).then(
    (reply) => {
      if (reply.type === "error") toast(`Could not react: ${reply.message}`);
    },
    () => toast("Could not react: not connected"),
  );
}

function messageById(r, id) {
  for (const entry of r.msgs.values()) if (sameId(entry.m.id, id)) return entry;
  return null;
}

function regroup(li) {
  if (!li || !li.classList.contains("msg")) return;
  const prev = li.previousElementSibling;
  const cont =
    prev &&
    prev.dataset.sender === li.dataset.sender &&
    !prev.classList.contains("deleted") &&
    Math.abs(Number(li.dataset.time) - Number(prev.dataset.time)) < GROUP_MS;
  li.classList.toggle("cont", Boolean(cont));
}

// Stored messages in seq order; pending ones (no seq yet) after them all.
function insertSorted(list, li, seq) {
  let after = list.lastElementChild;
  while (after && (!after.dataset.seq || Number(after.dataset.seq) > seq)) {
    after = after.previousElementSibling;
  }
  list.insertBefore(li, after ? after.nextElementSibling : list.firstElementChild);
  regroup(li);
  regroup(li.nextElementSibling);
}

// origin: "live" (a message frame), "history" (the HTTP API), "ok" (the reply to our send)
function addMessage(r, m, origin) {
  const seq = Number(m.seq);
  const existing = r.msgs.get(seq);
  if (existing) {
    if (origin === "history") updateMessage(r, m);
    return false;
  }
  if (origin === "live") {
    if (r.seen !== null && seq > r.seen + 1) {
      if (r.truncated && seq - r.seen - 1 > MAX_GAP_FILL) {
        // Too much to fetch now: keep the newest, scroll-back loads the rest.
        dropHeld(r);
      } else {
        // A truncated replay is expected to skip; otherwise the server
        // promised no gaps, so say so. Either way, fill it from history.
        if (!r.truncated) {
          console.warn(`chat: gap in room ${r.id}: expected seq ${r.seen + 1}, got ${seq}`);
        }
        fillGap(r, r.seen, seq);
      }
    }
    r.truncated = false;
  }
  const box = $("messages");
  const active = isActive(r);
  const stick = active && nearBottom(box);
  let li = null;
  let fromHere = false;
  if (m.client_id && isMine(m.sender)) {
    const p = state.pending.get(m.client_id);
    if (p && p.room === r) {
      state.pending.delete(m.client_id);
      li = p.li;
      const next = li.nextElementSibling;
      li.remove();
      regroup(next);
      fromHere = true;
    }
  }
  if (!li) li = messageShell();
  paintMessage(r, li, m);
  r.msgs.set(seq, { m, el: li });
  insertSorted(r.list, li, seq);
  if (origin !== "ok") r.seen = r.seen === null ? seq : Math.max(r.seen, seq);
  r.lastSeq = Math.max(r.lastSeq, seq);
  if (origin === "live") {
    const typing = r.typing.get(key(m.sender.id));
    if (typing) {
      clearTimeout(typing.timer);
      r.typing.delete(key(m.sender.id));
      if (active) renderTyping();
    }
  }
  if (active && origin !== "history") {
    if (stick || fromHere) scrollToBottom();
    else $("jump-new").hidden = false;
    scheduleRead();
  }
  // The first message of an empty room replaces "No messages yet".
  if (active) renderHistoryTop();
  if (m.thread !== undefined && m.thread !== null) {
    if (origin === "live" || origin === "ok") {
      // A live frame's root says how many replies it had then: count this one.
      const root = messageById(r, m.thread);
      if (root && !(root.seenReplies || (root.seenReplies = new Set())).has(seq)) {
        root.seenReplies.add(seq);
        root.m = {
          ...root.m,
          reply_count: (Number(root.m.reply_count) || 0) + 1,
          last_reply_at: m.ts,
        };
        paintMessage(r, root.el, root.m);
      }
    }
    if (state.thread && state.thread.room === r && sameId(state.thread.root, m.thread)) {
      addThreadItem(m);
    }
  }
  renderRoomItem(r);
  return true;
}

// -- the thread pane ------------------------------------------------------------

function threadItem(m) {
  const li = el("li", "msg thread-msg");
  li.dataset.id = String(m.id);
  li.dataset.seq = String(m.seq);
  const meta = el("div", "meta");
  meta.append(el("span", "sender", m.sender.username), " ", el("time", "ts", shortTime(new Date(m.ts))));
  const body = el("div", "body");
  if (m.deleted) body.textContent = "This message was deleted.";
  else paintBody(body, m.body);
  li.classList.toggle("mentions-me", !m.deleted && mentionsMe(m));
  li.append(meta, body);
  return li;
}

function addThreadItem(m) {
  const list = $("thread-list");
  if (list.querySelector(`li[data-id="${CSS.escape(String(m.id))}"]`)) return;
  list.append(threadItem(m));
  list.scrollTop = list.scrollHeight;
}

async function openThread(r, rootId) {
  state.thread = { room: r, root: rootId };
  const list = $("thread-list");
  list.replaceChildren();
  $("thread-pane").hidden = false;
  document.body.classList.add("thread-open");
  const root = messageById(r, rootId);
  $("thread-title").textContent = root ? `Thread: ${root.m.sender.username}` : "Thread";
  if (root) {
    const li = threadItem(root.m);
    li.classList.add("thread-root");
    list.append(li);
  }
  try {
    const data = await authed((token) => api.history(token, r.id, { thread: rootId, limit: 200 }));
    if (!state.thread || state.thread.root !== rootId) return;
    for (const m of data.messages) addThreadItem(m);
  } catch (err) {
    $("thread-error").textContent = `Could not load the thread: ${describeError(err)}`;
  }
  $("thread-input").focus();
}

function closeThread() {
  state.thread = null;
  $("thread-pane").hidden = true;
  document.body.classList.remove("thread-open");
}

function sendReply() {
  const t = state.thread;
  const body = $("thread-input").value;
  if (!t || !body.trim() || !state.conn || !state.conn.ready) return;
  const frame = { type: "send", room: t.room.id, body, client_id: newClientId(), thread: t.root };
  $("thread-error").textContent = "";
  state.conn.request(frame).then(
    (reply) => {
      if (reply.type === "ok" && reply.message) {
        $("thread-input").value = "";
        addMessage(t.room, reply.message, "ok");
      } else {
        $("thread-error").textContent = reply.message || "The server refused it.";
      }
    },
    () => {
      $("thread-error").textContent = "Not connected: try again in a moment.";
    },
  );
}

// Fetch the messages between seq `from` and seq `to` (both excluded).
async function fillGap(r, from, to) {
  let after = from;
  try {
    while (after < to - 1) {
      const data = await authed((token) =>
        api.history(token, r.id, { after, limit: Math.min(200, to - 1 - after) }),
      );
      if (state.rooms.get(r.key) !== r || !data.messages.length) return;
      const stick = isActive(r) && nearBottom();
      for (const m of data.messages) addMessage(r, m, "history");
      if (stick && isActive(r)) scrollToBottom();
      after = Number(data.messages[data.messages.length - 1].seq);
    }
  } catch {
    r.gaps.push([after, to]); // tried again after the next welcome
  }
}

function dropHeld(r) {
  for (const entry of r.msgs.values()) entry.el.remove();
  r.msgs.clear();
  for (const child of r.list.children) regroup(child);
  if (isActive(r)) renderHistoryTop();
}

function updateMessage(r, m) {
  const entry = r.msgs.get(Number(m.seq));
  if (!entry) return;
  entry.m = m;
  if (m.deleted && entry.el.classList.contains("editing")) finishEdit(entry.el);
  paintMessage(r, entry.el, m);
  regroup(entry.el.nextElementSibling);
}

function markDeleted(r, seq) {
  const entry = r.msgs.get(Number(seq));
  if (!entry) return;
  updateMessage(r, { ...entry.m, deleted: true, body: null });
}

// -- sending ----------------------------------------------------------------

function sendMessage(r, body) {
  const clientId = newClientId();
  const li = messageShell();
  li.classList.add("pending", "mine");
  li.dataset.state = "pending";
  li.dataset.clientId = clientId;
  paintSender(li, state.me, new Date());
  part(li, "body").textContent = body;
  part(li, "status").textContent = "Sending…";
  part(li, "actions").hidden = true;
  r.list.append(li);
  regroup(li);
  const p = { clientId, room: r, body, li, inFlight: false };
  state.pending.set(clientId, p);
  if (isActive(r)) scrollToBottom();
  dispatchPending(p);
}

function dispatchPending(p) {
  const conn = state.conn;
  if (!conn || !conn.ready || p.inFlight || state.pending.get(p.clientId) !== p) return;
  p.inFlight = true;
  p.li.classList.remove("failed");
  p.li.dataset.state = "pending";
  part(p.li, "status").textContent = "Sending…";
  const frame = { type: "send", room: p.room.id, body: p.body, client_id: p.clientId };
  conn.request(frame).then(
    (reply) => {
      p.inFlight = false;
      if (state.pending.get(p.clientId) !== p) return; // already shown as stored
      if (reply.type === "ok" && reply.message) {
        addMessage(p.room, reply.message, "ok");
      } else if (reply.code === "rate_limited" || reply.code === "unavailable") {
        part(p.li, "status").textContent = "Retrying…";
        setTimeout(() => dispatchPending(p), 1500 + Math.random() * 1000);
      } else {
        failPending(p, reply.message || "The server refused it.");
      }
    },
    (err) => {
      p.inFlight = false;
      if (state.pending.get(p.clientId) !== p) return;
      // The same client_id makes a resend safe: it is stored at most once.
      if (err instanceof RequestTimeout) setTimeout(() => dispatchPending(p), 1000);
      else part(p.li, "status").textContent = "Waiting for the connection…";
    },
  );
}

function failPending(p, reason) {
  p.li.classList.add("failed");
  p.li.dataset.state = "failed";
  const status = part(p.li, "status");
  status.textContent = `Not sent: ${reason}`;
  const actions = part(p.li, "actions");
  actions.replaceChildren(
    button("Retry", "act", () => dispatchPending(p)),
    button("Discard", "act", () => {
      state.pending.delete(p.clientId);
      const next = p.li.nextElementSibling;
      p.li.remove();
      regroup(next);
    }),
  );
  actions.hidden = false;
}

function onComposerSubmit(event) {
  event.preventDefault();
  const r = activeRoom();
  if (!r) return;
  const input = $("composer-input");
  const body = input.value;
  const error = $("composer-error");
  if (!body.trim()) {
    error.textContent = "";
    return;
  }
  if ([...body].length > MAX_BODY) {
    error.textContent = `A message is at most ${MAX_BODY} characters; this one has ${[...body].length}.`;
    return;
  }
  if (body.includes("\u0000")) {
    error.textContent = "A message cannot contain a NUL character.";
    return;
  }
  error.textContent = "";
  input.value = "";
  r.draft = "";
  autosize();
  sendMessage(r, body);
  input.focus();
}

function onComposerKey(event) {
  const input = event.currentTarget;
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  } else if (event.key === "ArrowUp" && input.value === "") {
    const r = activeRoom();
    if (!r) return;
    const mine = [...r.list.querySelectorAll("li.msg.mine[data-seq]:not(.deleted)")].pop();
    if (mine) {
      event.preventDefault();
      startEdit(r, Number(mine.dataset.seq));
    }
  }
}

function onComposerInput() {
  autosize();
  const r = activeRoom();
  if (!r || !$("composer-input").value.trim()) return;
  const now = Date.now();
  if (now - state.lastTypingSent >= TYPING_EVERY_MS && state.conn && r.joined) {
    if (state.conn.send({ type: "typing", room: r.id })) state.lastTypingSent = now;
  }
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight + 2}px`;
}

// -- editing and deleting -----------------------------------------------------

function startEdit(r, seq) {
  const entry = r.msgs.get(seq);
  if (!entry || entry.m.deleted || !isMine(entry.m.sender)) return;
  const li = entry.el;
  if (li.classList.contains("editing")) {
    li.querySelector(".edit-box").focus();
    return;
  }
  li.classList.add("editing");
  const form = el("form", "edit-form");
  const label = el("label", "visually-hidden", "Edit message");
  const box = el("textarea", "edit-box");
  box.id = `edit-${r.key}-${seq}`;
  label.htmlFor = box.id;
  box.value = entry.m.body;
  box.rows = Math.min(8, entry.m.body.split("\n").length);
  const save = el("button", "primary small", "Save");
  save.type = "submit";
  const cancel = button("Cancel", "small", () => finishEdit(li, true));
  const hint = el("span", "hint", "Enter to save · Escape to cancel");
  const error = el("p", "form-error");
  error.setAttribute("role", "alert");
  form.append(label, box, save, cancel, hint, error);
  part(li, "body").hidden = true;
  part(li, "actions").hidden = true;
  li.querySelector(".content").append(form);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      finishEdit(li, true);
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const current = r.msgs.get(seq);
    const text = box.value;
    if (!current || text === current.m.body) {
      finishEdit(li, true);
      return;
    }
    if (!text.trim()) {
      error.textContent = "A message cannot be empty: delete it instead.";
      return;
    }
    save.disabled = true;
    try {
      const reply = await state.conn.request({
        type: "edit",
        room: r.id,
        id: current.m.id,
        body: text,
      });
      if (reply.type === "error") {
        error.textContent = reply.message;
        return;
      }
      finishEdit(li, true);
      if (reply.message) updateMessage(r, reply.message);
    } catch (err) {
      error.textContent = describeError(err);
    } finally {
      save.disabled = false;
    }
  });
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

function finishEdit(li, refocus = false) {
  const form = li.querySelector(".edit-form");
  if (form) form.remove();
  li.classList.remove("editing");
  part(li, "body").hidden = false;
  const actions = part(li, "actions");
  actions.hidden = actions.children.length === 0;
  const r = activeRoom();
  const entry = r && r.msgs.get(Number(li.dataset.seq));
  if (entry && !entry.m.deleted) part(li, "body").textContent = entry.m.body;
  if (refocus) $("composer-input").focus();
}

function askDelete(r, seq) {
  const entry = r.msgs.get(seq);
  if (!entry) return;
  const actions = part(entry.el, "actions");
  const restore = () => paintMessage(r, entry.el, r.msgs.get(seq).m);
  const yes = button("Delete", "act danger", async () => {
    yes.disabled = true;
    try {
      const reply = await state.conn.request({ type: "delete", room: r.id, id: entry.m.id });
      if (reply.type === "error") {
        toast(`Could not delete: ${reply.message}`);
        restore();
        return;
      }
      markDeleted(r, seq);
      $("composer-input").focus();
    } catch (err) {
      toast(`Could not delete: ${describeError(err)}`);
      restore();
    }
  });
  const no = button("Cancel", "act", () => {
    restore();
    const del = part(entry.el, "actions").querySelector(".delete");
    if (del) del.focus();
  });
  actions.replaceChildren(el("span", "confirm-text", "Delete this message?"), yes, no);
  actions.hidden = false;
  entry.el.classList.add("confirming");
  no.focus();
}

function onMessagesClick(event) {
  const chip = event.target.closest("button.reaction");
  const target = chip || event.target.closest("button.act");
  if (!target) return;
  const li = target.closest("li.msg");
  const r = activeRoom();
  if (!li || !r || !li.dataset.seq) return;
  const seq = Number(li.dataset.seq);
  const entry = r.msgs.get(seq);
  if (chip && entry) {
    react(r, entry.m, chip.dataset.emoji, chip.getAttribute("aria-pressed") !== "true");
    return;
  }
  if (target.classList.contains("react") && entry) {
    const x = (entry.m.reactions || []).find((y) => y.emoji === QUICK_REACTIONS[0]);
    const mine = x && state.me && x.users.some((id) => sameId(id, state.me.id));
    react(r, entry.m, QUICK_REACTIONS[0], !mine);
    return;
  }
  if (target.classList.contains("thread")) {
    openThread(r, Number(target.dataset.root));
    return;
  }
  if (target.classList.contains("edit")) startEdit(r, seq);
  else if (target.classList.contains("delete")) askDelete(r, seq);
}

// -- read positions -----------------------------------------------------------

function scheduleRead() {
  clearTimeout(state.readTimer);
  state.readTimer = setTimeout(markRead, 250);
}

function markRead() {
  const r = activeRoom();
  if (!r || !r.historyLoaded || document.visibilityState !== "visible") return;
  if (!nearBottom()) return;
  let top = 0;
  for (const seq of r.msgs.keys()) top = Math.max(top, seq);
  if (top > r.readSeq || r.mentions) {
    r.readSeq = Math.max(r.readSeq, top);
    r.mentions = 0; // read up to the newest: no unread mention is left
    renderRoomItem(r);
  }
  if (r.readSeq > r.readSentSeq && state.conn && state.conn.ready) {
    const seq = r.readSeq;
    state.conn.request({ type: "read", room: r.id, seq }).then(
      (reply) => {
        if (reply.type === "ok") r.readSentSeq = Math.max(r.readSentSeq, seq);
      },
      () => {},
    );
  }
}

// -- the WebSocket ------------------------------------------------------------

async function onWelcome(frame) {
  state.connGen += 1;
  const gen = state.connGen;
  if (frame.user) {
    state.me = frame.user;
    $("me-name").textContent = frame.user.username;
    saveSession(state.token, frame.user);
  }
  const resumed = state.wasDisconnected;
  try {
    await refreshRooms({ join: false });
  } catch {
    /* join what we know */
  }
  if (gen !== state.connGen || !state.conn || !state.conn.ready) return;
  const joins = dmsFirst(state.rooms.values()).map((r) => joinRoom(r));
  // Sends that never got their `ok` go again, in order, with their client_id.
  for (const p of state.pending.values()) dispatchPending(p);
  await Promise.all(joins);
  if (gen !== state.connGen) return;
  for (const room of state.rooms.values()) {
    for (const [from, to] of room.gaps.splice(0)) fillGap(room, from, to);
  }
  const r = activeRoom();
  if (r) {
    if (!r.historyLoaded) loadLatest(r);
    else if (resumed) refreshRecent(r);
    scheduleRead();
  }
}

function onFrame(frame) {
  const r = frame.room !== undefined ? state.rooms.get(key(frame.room)) : null;
  switch (frame.type) {
    case "message":
      if (r && frame.message) addMessage(r, frame.message, "live");
      break;
    case "edited":
      if (r && frame.message) updateMessage(r, frame.message);
      break;
    case "deleted":
      if (r) markDeleted(r, frame.seq);
      break;
    case "presence":
      if (r) {
        r.online = new Map((frame.online || []).map((u) => [key(u.id), u]));
        if (isActive(r)) renderOnline();
        renderRoomItem(r);
      }
      break;
    case "presence_diff":
      if (r) {
        for (const u of frame.joins || []) r.online.set(key(u.id), u);
        for (const u of frame.leaves || []) r.online.delete(key(u.id));
        if (isActive(r)) renderOnline();
        renderRoomItem(r);
      }
      break;
    case "typing":
      if (r && frame.user && !isMine(frame.user)) {
        const k = key(frame.user.id);
        const prior = r.typing.get(k);
        if (prior) clearTimeout(prior.timer);
        const timer = setTimeout(() => {
          r.typing.delete(k);
          if (isActive(r)) renderTyping();
        }, TYPING_SHOW_MS);
        r.typing.set(k, { user: frame.user, timer });
        if (isActive(r)) renderTyping();
      }
      break;
    case "room_updated": {
      // Its `room` is the whole room, not an id.
      const updated = frame.room && state.rooms.get(key(frame.room.id));
      if (updated) {
        moderation.applyRoom(updated, { ...frame.room, role: undefined });
        renderRoomItem(updated);
        if (isActive(updated)) renderRoomHeader();
      }
      break;
    }
    case "removed":
      if (r) removeRoomLocally(r, `You were removed from “${displayName(r)}”.`);
      break;
    case "reactions": {
      const entry = r ? r.msgs.get(Number(frame.seq)) : null;
      if (entry) {
        entry.m = { ...entry.m, reactions: frame.reactions || [] };
        paintMessage(r, entry.el, entry.m);
      }
      break;
    }
    case "room_added":
      // Someone added us, opened a DM with us, or we joined elsewhere: show it now,
      // with its unread count, and join it (refreshRooms joins what is new).
      if (frame.room && !state.rooms.has(key(frame.room.id))) {
        refreshRooms().catch(() => {
          if (state.rooms.has(key(frame.room.id))) return;
          const added = newRoom(frame.room);
          state.rooms.set(added.key, added);
          renderRoomLists();
          joinRoom(added);
        });
      }
      break;
    case "notify": {
      // `notify` has no room id at the top but the frame's own `room`.
      const target = state.rooms.get(key(frame.room));
      if (!target) {
        refreshRooms().catch(() => {});
        break;
      }
      const seen = isActive(target) && nearBottom() && document.visibilityState === "visible";
      if ((frame.reason === "mention" || frame.reason === "room") && !seen) {
        target.mentions += 1;
        renderRoomItem(target);
      }
      break;
    }
    default:
      // error frames without a ref, pongs of the heartbeat, and types this
      // client does not know: nothing to show.
      break;
  }
}

function onConnState(info) {
  state.connState = info.state;
  const dot = $("conn-dot");
  dot.dataset.state = info.state;
  dot.title = {
    open: "Connected",
    connecting: "Connecting…",
    reconnecting: "Reconnecting…",
    waiting: "Disconnected",
    fatal: "Disconnected",
    stopped: "",
  }[info.state];
  clearInterval(state.bannerTimer);
  switch (info.state) {
    case "open":
      if (state.wasDisconnected) {
        state.wasDisconnected = false;
        showBanner("Reconnected. You are up to date.", "ok");
        state.bannerTimer = setTimeout(hideBanner, 2500);
      } else {
        hideBanner();
      }
      break;
    case "waiting": {
      state.wasDisconnected = true;
      const tick = () => {
        const seconds = Math.max(0, Math.ceil((info.retryAt - Date.now()) / 1000));
        showBanner(
          `Connection lost. Reconnecting in ${seconds} s… Messages you send meanwhile will go out then.`,
          "warn",
          "Retry now",
          () => state.conn && state.conn.retryNow(),
        );
      };
      tick();
      state.bannerTimer = setInterval(tick, 1000);
      break;
    }
    case "reconnecting":
      showBanner("Reconnecting…", "warn");
      break;
    case "fatal":
      state.wasDisconnected = true;
      if (info.code === CLOSE.UNAUTHORIZED) {
        sessionEnded(info.message);
      } else {
        showBanner(
          `${info.message} Wait a moment, then reconnect.`,
          "error",
          "Reconnect",
          () => state.conn && state.conn.restart(),
        );
      }
      break;
    default:
      break;
  }
}

function showBanner(text, kind, actionLabel, action) {
  const banner = $("banner");
  banner.dataset.kind = kind;
  $("banner-text").textContent = text;
  const b = $("banner-action");
  if (actionLabel) {
    b.textContent = actionLabel;
    b.onclick = action;
    b.hidden = false;
  } else {
    b.hidden = true;
    b.onclick = null;
  }
  banner.hidden = false;
}

function hideBanner() {
  clearInterval(state.bannerTimer);
  clearTimeout(state.bannerTimer);
  $("banner").hidden = true;
}

// -- forms in the sidebar -------------------------------------------------------

function formHandler(form, run, { keep = false } = {}) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = form.querySelector(".form-error");
    error.textContent = "";
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      await run(form);
      if (!keep) form.reset();
    } catch (err) {
      error.textContent = describeError(err);
    } finally {
      submit.disabled = false;
    }
  });
}

const moderation = setupModeration({
  $,
  el,
  button,
  authed,
  toast,
  describeError,
  formHandler,
  activeRoom: () => activeRoom(),
  isMe: (user) => isMine(user),
  isMember: (id) => state.rooms.has(key(id)),
  joinById: async (id) => {
    const data = await authed((token) => api.joinRoom(token, id));
    await addRoom(data.room);
  },
  removeMember: (token, id, username) => api.removeMember(token, id, username),
  roleChanged: (r) => {
    if (isActive(r)) renderRoomHeader();
    repaintMessages(r);
  },
  roomChanged: (r) => {
    renderRoomItem(r);
    if (isActive(r)) renderRoomHeader();
  },
});

function wire() {
  moderation.wire();
  $("auth-form").addEventListener("submit", onAuthSubmit);
  $("sign-out").addEventListener("click", signOut);
  $("composer").addEventListener("submit", onComposerSubmit);
  $("composer-input").addEventListener("keydown", onComposerKey);
  $("composer-input").addEventListener("input", onComposerInput);
  $("messages").addEventListener("click", onMessagesClick);
  $("thread-close").addEventListener("click", closeThread);
  $("thread-composer").addEventListener("submit", (event) => {
    event.preventDefault();
    sendReply();
  });
  $("thread-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      sendReply();
    }
  });
  $("messages").addEventListener(
    "scroll",
    () => {
      const r = activeRoom();
      if (!r) return;
      if ($("messages").scrollTop < 120) loadOlder(r);
      if (nearBottom()) $("jump-new").hidden = true;
      scheduleRead();
    },
    { passive: true },
  );
  $("load-older").addEventListener("click", () => {
    const r = activeRoom();
    if (!r) return;
    if (!r.historyLoaded) loadLatest(r);
    else loadOlder(r);
  });
  $("jump-new").addEventListener("click", () => {
    scrollToBottom();
    scheduleRead();
    $("composer-input").focus();
  });
  $("back-to-rooms").addEventListener("click", () => {
    document.body.classList.remove("room-open");
    const r = activeRoom();
    const item = r && r.navItem && r.navItem.querySelector("button");
    if (item) item.focus();
  });
  $("leave-room").addEventListener("click", async () => {
    const r = activeRoom();
    if (!r || !state.me) return;
    try {
      await authed((token) => api.removeMember(token, r.id, state.me.username));
      removeRoomLocally(r, `You left “${displayName(r)}”.`);
    } catch (err) {
      toast(`Could not leave: ${describeError(err)}`);
    }
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.token) {
      scheduleRead();
      refreshRooms().catch(() => {});
    }
  });

  formHandler($("create-room-form"), async () => {
    const name = $("new-room-name").value.trim();
    if (!name) throw new ApiError(0, "invalid", "Give the room a name.");
    const data = await authed((token) => api.createRoom(token, name, $("new-room-private").checked));
    await addRoom(data.room);
  });
  formHandler($("join-room-form"), async () => {
    const id = $("join-room-id").value.trim();
    if (!/^[0-9]+$/.test(id)) throw new ApiError(0, "invalid", "A room id is a number.");
    const data = await authed((token) => api.joinRoom(token, id));
    await addRoom(data.room);
  });
  formHandler($("dm-form"), async () => {
    const username = $("dm-username").value.trim();
    if (!username) throw new ApiError(0, "invalid", "Whom do you want to message?");
    if (state.me && username.toLowerCase() === state.me.username.toLowerCase()) {
      throw new ApiError(0, "invalid", "That is you: pick someone else.");
    }
    const data = await authed((token) => api.dm(token, username));
    await addRoom(data.room);
  });
  formHandler($("add-member-form"), async () => {
    const r = activeRoom();
    const username = $("add-member-name").value.trim();
    if (!r || !username) return;
    await authed((token) => api.addMember(token, r.id, username));
    toast(`${username} can now read and write in “${displayName(r)}”.`);
  });
}

// -- search (search.js draws the box and its results) -------------------------

// Open a found message in its room: scroll back page by page until it is loaded.
async function showMessage(roomId, seq) {
  let r = state.rooms.get(key(roomId));
  if (!r) {
    await refreshRooms().catch(() => {});
    r = state.rooms.get(key(roomId));
  }
  if (!r) return false;
  if (!r.historyLoaded) await loadLatest(r);
  openRoom(r.key);
  for (let pages = 0; !r.msgs.has(seq) && hasOlder(r) && pages < 40; pages += 1) {
    const before = minSeq(r);
    const data = await authed((token) => api.history(token, r.id, { before, limit: PAGE }));
    if (state.rooms.get(r.key) !== r) return false;
    for (const m of data.messages) addMessage(r, m, "history");
    renderHistoryTop();
  }
  const entry = r.msgs.get(seq);
  if (!entry || !isActive(r)) return false;
  entry.el.scrollIntoView({ block: "center" });
  entry.el.classList.add("found");
  setTimeout(() => entry.el.classList.remove("found"), 2500);
  return true;
}

// A host page that signs its users in with the team's identity provider hands the
// client a fresh JWT before the current one expires: `window.chatRefresh(jwt)` (same
// origin). The open socket sends `refresh`, so the server does not close it; HTTP
// calls and reconnects use the new token.
async function refreshToken(token) {
  if (typeof token !== "string" || !token) throw new TypeError("chatRefresh needs a token");
  state.token = token;
  if (state.me) saveSession(token, state.me);
  if (state.conn) {
    state.conn.token = token;
    if (state.conn.ready) await state.conn.request({ type: "refresh", token });
  }
}
window.chatRefresh = refreshToken;

async function boot() {
  wire();
  state.search = initSearch({
    call: authed,
    roomName: (id) => {
      const r = state.rooms.get(key(id));
      return r ? displayName(r) : null;
    },
    show: showMessage,
  });
  const saved = loadSession();
  if (!saved) {
    showAuth();
    return;
  }
  state.token = saved.token;
  state.me = saved.user;
  try {
    await enterApp();
  } catch (err) {
    if (state.token) toast(describeError(err));
  }
}

boot();
