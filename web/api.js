// The REST API v1 as seen from the page: one `call` that sends the token and turns every
// failure (an `{"error": {code, message}}` body, another HTTP error, no network) into an ApiError
// (with the server's Retry-After, when it sends one).

/** A failed API call, with a message meant for a person. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    /** Seconds to wait before trying again (a 429's Retry-After), or null. */
    this.retryAfter = retryAfter;
  }
}

/** Calls `path` under the same origin; resolves to the JSON body (or null), rejects with ApiError. */
export async function call(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server (${e.message})`);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: a proxy's error page, say. Described by its status below.
  }
  if (!response.ok) {
    const detail = json && json.error;
    const wait = Number.parseInt(response.headers.get('Retry-After') || '', 10);
    const retryAfter = Number.isFinite(wait) && wait >= 0 ? Math.max(1, wait) : null;
    if (detail && typeof detail.message === 'string') {
      throw new ApiError(response.status, detail.code || 'error', detail.message, retryAfter);
    }
    const what = `${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, 'http', `the server answered ${what}`);
  }
  return json;
}

const enc = encodeURIComponent;

/** A fresh idempotency key (crypto.randomUUID needs https; this works on plain http too). */
export function freshKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export const api = {
  register: (alias) => call('POST', '/api/v1/users', { body: { alias } }),
  rooms: (token) => call('GET', '/api/v1/rooms', { token }),
  createRoom: (token, name, groupRoom, member) =>
    call('POST', '/api/v1/rooms', {
      token,
      body: groupRoom ? { name, group_room: true } : { name, group_room: false, member },
    }),
  join: (token, room, alias) =>
    call('POST', `/api/v1/rooms/${enc(room)}/members`, { token, body: { alias } }),
  /** Sends a message; the same `key` on a retry stores it once. */
  send: (token, room, message, key) =>
    call('POST', `/api/v1/rooms/${enc(room)}/messages`, {
      token,
      body: { message, idempotency_key: key },
    }),
  /** A history page `{messages, more}`: the newest, or right `before` / `after` a number. */
  page: (token, room, { before, after, limit = 50 } = {}) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== undefined) q.set('before', String(before));
    if (after !== undefined) q.set('after', String(after));
    return call('GET', `/api/v1/rooms/${enc(room)}/messages?${q}`, { token });
  },
  liveUrl: (token, room, after) => {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams({ after: String(after), token });
    return `${scheme}//${location.host}/api/v1/rooms/${enc(room)}/live?${q}`;
  },
};
