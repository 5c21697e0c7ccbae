// The HTTP half of the protocol: JSON in, JSON out, errors as ApiError.
// The token travels only in the Authorization header, never in a URL.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function request(method, path, { token, body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch {
    throw new ApiError(0, "unavailable", "Cannot reach the server. Try again in a moment.");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(
      response.status,
      error.code || (response.status >= 500 ? "unavailable" : "invalid"),
      error.message || `The server answered ${response.status}.`,
    );
  }
  return data;
}

export const api = {
  signUp: (username, password) => request("POST", "/api/users", { body: { username, password } }),
  signIn: (username, password) => request("POST", "/api/sessions", { body: { username, password } }),
  signOut: (token) => request("DELETE", "/api/sessions/current", { token }),
  rooms: (token) => request("GET", "/api/rooms", { token }),
  createRoom: (token, name, isPrivate) =>
    request("POST", "/api/rooms", { token, body: { name, private: isPrivate } }),
  joinRoom: (token, id) => request("POST", `/api/rooms/${encodeURIComponent(id)}/join`, { token }),
  addMember: (token, id, username) =>
    request("POST", `/api/rooms/${encodeURIComponent(id)}/members`, { token, body: { username } }),
  removeMember: (token, id, username) =>
    request(
      "DELETE",
      `/api/rooms/${encodeURIComponent(id)}/members/${encodeURIComponent(username)}`,
      { token },
    ),
  dm: (token, username) => request("POST", "/api/dms", { token, body: { username } }),
  history: (token, id, { before, after, limit, thread } = {}) => {
    const query = new URLSearchParams();
    if (thread !== undefined && thread !== null) query.set("thread", String(thread));
    if (before !== undefined && before !== null) query.set("before", String(before));
    if (after !== undefined && after !== null) query.set("after", String(after));
    if (limit) query.set("limit", String(limit));
    const qs = query.toString();
    return request("GET", `/api/rooms/${encodeURIComponent(id)}/messages${qs ? `?${qs}` : ""}`, {
      token,
    });
  },
  presence: (token, id) => request("GET", `/api/rooms/${encodeURIComponent(id)}/presence`, { token }),
};

// Finding and running rooms (issue 13).
const roomPath = (id, rest = "") => `/api/rooms/${encodeURIComponent(id)}${rest}`;
const userPath = (username) => encodeURIComponent(username);

export const moderationApi = {
  directory: (token, q, limit = 50) => {
    const query = new URLSearchParams({ limit: String(limit) });
    if (q) query.set("q", q);
    return request("GET", `/api/rooms/directory?${query}`, { token });
  },
  updateRoom: (token, id, fields) => request("PATCH", roomPath(id), { token, body: fields }),
  members: (token, id, after = 0) =>
    request("GET", roomPath(id, `/members?after=${after}&limit=1000`), { token }),
  setRole: (token, id, username, role) =>
    request("PUT", roomPath(id, `/members/${userPath(username)}/role`), { token, body: { role } }),
  mute: (token, id, username, seconds) =>
    request("POST", roomPath(id, "/mutes"), { token, body: { username, seconds } }),
  unmute: (token, id, username) =>
    request("DELETE", roomPath(id, `/mutes/${userPath(username)}`), { token }),
  ban: (token, id, username, reason) =>
    request("POST", roomPath(id, "/bans"), { token, body: { username, reason } }),
  unban: (token, id, username) =>
    request("DELETE", roomPath(id, `/bans/${userPath(username)}`), { token }),
  bans: (token, id) => request("GET", roomPath(id, "/bans"), { token }),
};
