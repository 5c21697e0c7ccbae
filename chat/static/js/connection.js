// One WebSocket to /ws: hello first, requests matched to replies by `ref`,
// an application-level ping, and reconnection with jittered exponential
// backoff. After close 4001 or 4008 it stops and says why: reconnecting as is
// would only fail again.

import { CLOSE, FINAL_CLOSES as FINAL } from "./closes.js";

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
const REQUEST_TIMEOUT_MS = 15000;

// What to tell the user after each close code that forbids reconnecting as is.
export const FATAL_CLOSES = {
  [CLOSE.UNAUTHORIZED]: "You have been signed out: your session ended or was revoked.",
  [CLOSE.RATE_LIMITED]: "Disconnected for sending too much too quickly.",
};
for (const code of FINAL) {
  if (!(code in FATAL_CLOSES)) throw new Error(`no message for final close code ${code}`);
}

export class Disconnected extends Error {
  constructor() {
    super("not connected");
  }
}

export class RequestTimeout extends Error {
  constructor() {
    super("no answer from the server");
  }
}

export function websocketUrl(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

export class Connection {
  // handlers: { state(info), welcome(frame), frame(frame) }
  constructor(url, token, handlers) {
    this.url = url;
    this.token = token;
    this.handlers = handlers;
    this.ws = null;
    this.ready = false; // welcomed
    this.stopped = true;
    this.attempt = 0;
    this.nextRef = 0;
    this.waiting = new Map();
    this.retryTimer = null;
    this.heartbeatTimer = null;
    this.lastHeard = 0;
    this.everConnected = false;
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.teardown(1000);
    this.failWaiting();
    this.handlers.state({ state: "stopped" });
  }

  // Skip the rest of the backoff wait (the banner's "Retry now").
  retryNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  // Start again after a fatal close, once the user chose to.
  restart() {
    clearTimeout(this.retryTimer);
    this.teardown(1000);
    this.start();
  }

  connect() {
    this.handlers.state({
      state: this.everConnected ? "reconnecting" : "connecting",
      attempt: this.attempt,
    });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.closed(1006, "");
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws === ws) ws.send(JSON.stringify({ type: "hello", token: this.token }));
    };
    ws.onmessage = (event) => {
      if (this.ws === ws) this.receive(event.data);
    };
    ws.onclose = (event) => {
      if (this.ws === ws) this.closed(event.code, event.reason);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  receive(raw) {
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    if (frame.type === "welcome") {
      this.ready = true;
      this.attempt = 0;
      this.everConnected = true;
      this.startHeartbeat(Number(frame.heartbeat) || 20);
      this.handlers.state({ state: "open" });
      this.handlers.welcome(frame);
      return;
    }
    if (
      (frame.type === "ok" || frame.type === "error" || frame.type === "pong") &&
      frame.ref !== undefined &&
      frame.ref !== null &&
      this.waiting.has(frame.ref)
    ) {
      const waiter = this.waiting.get(frame.ref);
      this.waiting.delete(frame.ref);
      clearTimeout(waiter.timer);
      waiter.resolve(frame);
      return;
    }
    this.handlers.frame(frame);
  }

  // Fire and forget (typing); false when not connected.
  send(frame) {
    if (!this.ready || !this.ws) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // A frame whose reply (`ok`, `error` or `pong`) resolves the promise.
  request(frame, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (!this.ready || !this.ws) {
        reject(new Disconnected());
        return;
      }
      this.nextRef += 1;
      const ref = this.nextRef;
      const timer = setTimeout(() => {
        this.waiting.delete(ref);
        reject(new RequestTimeout());
      }, timeoutMs);
      this.waiting.set(ref, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...frame, ref }));
    });
  }

  closed(code, reason) {
    this.teardown();
    this.failWaiting();
    if (this.stopped) return;
    if (code in FATAL_CLOSES) {
      this.stopped = true;
      this.handlers.state({ state: "fatal", code, reason, message: FATAL_CLOSES[code] });
      return;
    }
    // Full backoff doubles each attempt up to the cap; the delay is drawn
    // from its upper half so that many clients do not come back in step.
    const cap = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** this.attempt);
    const delay = cap / 2 + Math.random() * (cap / 2);
    this.attempt += 1;
    const retryAt = Date.now() + delay;
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.handlers.state({ state: "waiting", code, reason, retryAt, attempt: this.attempt });
  }

  teardown(code) {
    this.ready = false;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (code !== undefined) {
        try {
          ws.close(code);
        } catch {
          /* already closed */
        }
      }
    }
  }

  failWaiting() {
    for (const waiter of this.waiting.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new Disconnected());
    }
    this.waiting.clear();
  }

  // Ping at the server's heartbeat; a connection that has said nothing for
  // two heartbeats (and a grace) is dead even if the socket has not noticed.
  startHeartbeat(seconds) {
    clearInterval(this.heartbeatTimer);
    const period = Math.max(1, seconds) * 1000;
    this.heartbeatTimer = setInterval(() => {
      if (!this.ws) return;
      if (Date.now() - this.lastHeard > 2 * period + 5000) {
        const ws = this.ws;
        this.teardown();
        try {
          ws.close(1000);
        } catch {
          /* ignore */
        }
        this.failWaiting();
        this.closed(1006, "the server stopped answering");
        return;
      }
      this.send({ type: "ping", ref: "heartbeat" });
    }, period);
  }
}
