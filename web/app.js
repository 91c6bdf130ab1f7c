// The page's behaviour: pick an alias (its token kept in localStorage), the caller's rooms,
// creating and joining rooms, and one open room: its history page by page, live messages and
// the composer. Message text is only ever set with textContent, never parsed as HTML.

import { api, ApiError, freshKey } from './api.js';
import { LiveFeed } from './live.js';

const $ = (id) => document.getElementById(id);
const STORAGE_KEY = 'mess-chat.session';
const PAGE = 50;
const ROOMS_REFRESH_MS = 30_000;

/** Who is signed in: `{alias, token}` or null. */
let session = null;
/** The rooms the caller is a member of, by name (RoomMeta). */
let rooms = new Map();
/** The open room: name, first and last sequence numbers shown, whether older ones exist. */
let current = null;
/** A send not yet acknowledged: retrying the same text reuses its idempotency key. */
let pending = null;
let sending = false;
/** The countdown to resending a rate-limited message (a setTimeout id), or null. */
let retryTimer = null;

// ---- errors ----------------------------------------------------------------------------------

function showError(context, error) {
  const text = error instanceof Error ? error.message : String(error);
  $('error-text').textContent = context ? `${context}: ${text}` : text;
  $('error').hidden = false;
  if (error instanceof ApiError && error.status === 401 && session) {
    signOut();
    $('error-text').textContent += ' — you have been signed out; pick an alias again.';
  }
}

function clearError() {
  $('error').hidden = true;
  $('error-text').textContent = '';
}

// ---- signing in and out ----------------------------------------------------------------------

async function signIn(alias, token) {
  session = { alias, token };
  localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  $('me').textContent = alias;
  $('whoami').hidden = false;
  $('sign-in').hidden = true;
  $('chat').hidden = false;
  await refreshRooms();
  if (!session) return;
  const wanted = new URLSearchParams(location.hash.slice(1)).get('room');
  const first = wanted && rooms.has(wanted) ? wanted : [...rooms.keys()][0];
  if (first) await openRoom(first);
  else $('join-name').focus();
}

function signOut() {
  closeRoom();
  session = null;
  rooms = new Map();
  localStorage.removeItem(STORAGE_KEY);
  history.replaceState(null, '', location.pathname);
  $('whoami').hidden = true;
  $('chat').hidden = true;
  $('sign-in').hidden = false;
  $('alias').focus();
}

$('register-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearError();
  const alias = $('alias').value.trim();
  try {
    const user = await api.register(alias);
    $('register-form').reset();
    await signIn(user.alias, user.token);
  } catch (e) {
    if (e.code === 'name_taken') {
      showError(null, `The alias “${alias}” is already taken (${e.message}). Please pick another.`);
    } else {
      showError(`Could not register “${alias}”`, e);
    }
    $('alias').focus();
  }
});

$('token-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearError();
  const token = $('token').value.trim();
  const alias = token.split('.')[0];
  try {
    await api.rooms(token);
    $('token-form').reset();
    await signIn(alias, token);
  } catch (e) {
    showError('That token is not accepted', e);
  }
});

$('sign-out').addEventListener('click', () => {
  clearError();
  signOut();
});

$('error-close').addEventListener('click', clearError);

// ---- the room list ---------------------------------------------------------------------------

function describe(meta) {
  const others = meta.members.filter((m) => m !== session.alias);
  if (!meta.group_room) return `private, with ${others.join(', ') || 'nobody'}`;
  const n = meta.members.length;
  return `group, ${n} member${n === 1 ? '' : 's'}`;
}

async function refreshRooms() {
  if (!session) return;
  try {
    const list = await api.rooms(session.token);
    rooms = new Map(list.map((meta) => [meta.name, meta]));
  } catch (e) {
    showError('Could not list your rooms', e);
    return;
  }
  const ul = $('room-list');
  ul.replaceChildren();
  for (const meta of [...rooms.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'room-button';
    button.dataset.room = meta.name;
    const name = document.createElement('span');
    name.className = 'room-name';
    name.textContent = meta.name;
    const kind = document.createElement('span');
    kind.className = 'hint';
    kind.textContent = describe(meta);
    button.append(name, kind);
    button.addEventListener('click', () => openRoom(meta.name));
    const li = document.createElement('li');
    li.append(button);
    ul.append(li);
  }
  $('no-rooms').hidden = rooms.size > 0;
  markCurrent();
}

function markCurrent() {
  for (const button of document.querySelectorAll('.room-button')) {
    if (current && button.dataset.room === current.name) button.setAttribute('aria-current', 'true');
    else button.removeAttribute('aria-current');
  }
  const meta = current && rooms.get(current.name);
  $('room-info').textContent = meta ? describe(meta) : '';
}

$('rooms-refresh').addEventListener('click', refreshRooms);
window.addEventListener('focus', refreshRooms);
// Someone may have made a private room with the caller, or changed a room's members.
setInterval(() => {
  if (session && !document.hidden) refreshRooms();
}, ROOMS_REFRESH_MS);

/** Shows the member field only for a private room (and requires it there). */
function syncKind() {
  const group = $('create-form').elements.kind.value === 'group';
  $('member-field').hidden = group;
  $('create-member').required = !group;
}

$('create-form').addEventListener('change', syncKind);

$('create-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearError();
  const form = $('create-form');
  const name = $('create-name').value.trim();
  const group = form.elements.kind.value === 'group';
  try {
    await api.createRoom(session.token, name, group, $('create-member').value.trim());
    form.reset();
    syncKind();
    await refreshRooms();
    await openRoom(name);
  } catch (e) {
    showError(`Could not create “${name}”`, e);
  }
});

$('join-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  clearError();
  const name = $('join-name').value.trim();
  try {
    await api.join(session.token, name, session.alias);
    $('join-form').reset();
    await refreshRooms();
    await openRoom(name);
  } catch (e) {
    showError(`Could not join “${name}”`, e);
    $('join-name').focus();
  }
});

// ---- the open room ---------------------------------------------------------------------------

const LIVE_STATES = {
  connecting: 'connecting…',
  live: '● live',
  polling: '● live (polling)',
  reconnecting: 'reconnecting…',
};

function closeRoom() {
  if (current && current.feed) current.feed.stop();
  current = null;
  $('messages').replaceChildren();
  $('room-title').textContent = 'No room selected';
  $('room-info').textContent = '';
  $('live-state').textContent = '';
  $('text').disabled = true;
  $('send').disabled = true;
  updateOlder();
}

async function openRoom(name) {
  closeRoom();
  const room = { name, first: null, last: 0, more: false, loading: false, feed: null };
  current = room;
  history.replaceState(null, '', `#room=${encodeURIComponent(name)}`);
  $('room-title').textContent = name;
  markCurrent();
  $('text').disabled = false;
  $('send').disabled = false;
  let page;
  try {
    page = await api.page(session.token, name, { limit: PAGE });
  } catch (e) {
    if (current === room) showError(`Could not open “${name}”`, e);
    return;
  }
  if (current !== room) return;
  append(room, page.messages);
  room.more = page.more;
  updateOlder();
  scrollToEnd();
  room.feed = new LiveFeed({
    room: name,
    token: session.token,
    last: () => room.last,
    deliver: (messages) => {
      if (current !== room) return;
      const follow = nearEnd();
      const mine = append(room, messages);
      if (follow || mine) scrollToEnd();
      const meta = rooms.get(name);
      if (meta && messages.some((m) => !meta.members.includes(m.mess_props.from_user))) {
        refreshRooms(); // someone joined: show the new member count
      }
    },
    state: (state) => {
      if (current === room) $('live-state').textContent = LIVE_STATES[state] || '';
    },
    fail: (e) => {
      if (current !== room) return;
      $('live-state').textContent = 'not live';
      showError(`Stopped following “${name}”`, e);
    },
  });
  room.feed.start();
  $('text').focus();
}

function seqOf(message) {
  return message.mess_props && message.mess_props.sequence_number;
}

/** Appends the messages numbered past the last one shown; true if one of them is the caller's. */
function append(room, messages) {
  let mine = false;
  for (const message of messages) {
    const seq = seqOf(message);
    if (typeof seq !== 'number' || seq <= room.last) continue;
    $('messages').append(messageItem(message));
    room.last = seq;
    if (room.first === null) room.first = seq;
    if (message.mess_props.from_user === session.alias) mine = true;
  }
  return mine;
}

function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return '';
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (date.toDateString() === new Date().toDateString()) return time;
  return `${date.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

function messageItem(message) {
  const props = message.mess_props;
  const mine = props.from_user === session.alias;
  const li = document.createElement('li');
  li.className = mine ? 'msg mine' : 'msg';
  li.dataset.seq = String(props.sequence_number);
  const head = document.createElement('div');
  head.className = 'msg-head';
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = mine ? `${props.from_user} (you)` : props.from_user;
  const time = document.createElement('time');
  time.dateTime = props.sent_time;
  time.title = new Date(props.sent_time).toLocaleString();
  time.textContent = formatTime(props.sent_time);
  head.append(from, time);
  const text = document.createElement('div');
  text.className = 'text';
  text.textContent = message.message;
  li.append(head, text);
  return li;
}

// ---- history ---------------------------------------------------------------------------------

function updateOlder() {
  const room = current;
  const more = Boolean(room && room.more && room.first !== null);
  $('load-older').hidden = !more;
  $('load-older').disabled = Boolean(room && room.loading);
  $('load-older').textContent = room && room.loading ? 'Loading…' : 'Load older messages';
  $('history-start').hidden = !room || room.more || room.loading;
}

async function loadOlder() {
  const room = current;
  if (!room || room.loading || !room.more || room.first === null) return;
  room.loading = true;
  updateOlder();
  try {
    const page = await api.page(session.token, room.name, { before: room.first, limit: PAGE });
    if (current !== room) return;
    const log = $('log');
    const fromBottom = log.scrollHeight - log.scrollTop;
    const older = page.messages.filter((m) => seqOf(m) < room.first);
    $('messages').prepend(...older.map(messageItem));
    if (older.length) room.first = seqOf(older[0]);
    room.more = page.more;
    log.scrollTop = log.scrollHeight - fromBottom;
  } catch (e) {
    if (current === room) showError('Could not load older messages', e);
  } finally {
    room.loading = false;
    if (current === room) updateOlder();
  }
}

$('load-older').addEventListener('click', loadOlder);
$('log').addEventListener('scroll', () => {
  if ($('log').scrollTop < 40) loadOlder();
});

function nearEnd() {
  const log = $('log');
  return log.scrollHeight - log.scrollTop - log.clientHeight < 60;
}

function scrollToEnd() {
  const log = $('log');
  log.scrollTop = log.scrollHeight;
}

// ---- sending ---------------------------------------------------------------------------------

$('send-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const room = current;
  const text = $('text').value;
  if (!room || sending || !text.trim()) return;
  stopRetrying();
  clearError();
  if (!pending || pending.room !== room.name || pending.text !== text) {
    pending = { room: room.name, text, key: freshKey() };
  }
  sending = true;
  $('send').disabled = true;
  try {
    const answer = await api.send(session.token, room.name, text, pending.key);
    pending = null;
    if ($('text').value === text) $('text').value = '';
    if (answer && answer.status === 'accepted') {
      $('live-state').textContent = 'sent; it shows once stored';
    }
    if (room.feed) room.feed.nudge();
  } catch (e) {
    if (e instanceof ApiError && e.status === 429) retryLater(room, text, e.retryAfter || 1);
    else showError(`Could not send to “${room.name}”`, e);
  } finally {
    sending = false;
    $('send').disabled = current === null;
    $('text').focus();
  }
});

/**
 * After a 429: the text stays in the box, a countdown shows, and the same message (same
 * idempotency key) is sent again once the server's Retry-After has passed, unless the room was
 * left or the text changed meanwhile.
 */
function retryLater(room, text, seconds) {
  stopRetrying();
  let left = seconds;
  const tick = () => {
    if (current !== room || $('text').value !== text) {
      retryTimer = null;
      clearError();
      return;
    }
    if (left <= 0) {
      retryTimer = null;
      clearError();
      $('send-form').requestSubmit();
      return;
    }
    showError(null, `rate limited, retrying in ${left} s`);
    left -= 1;
    retryTimer = setTimeout(tick, 1000);
  };
  tick();
}

function stopRetrying() {
  if (retryTimer !== null) clearTimeout(retryTimer);
  retryTimer = null;
}

$('text').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('send-form').requestSubmit();
  }
});

// ---- start -----------------------------------------------------------------------------------

const saved = (() => {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY) || 'null');
  } catch {
    return null;
  }
})();
if (saved && saved.alias && saved.token) {
  signIn(saved.alias, saved.token);
} else {
  $('sign-in').hidden = false;
  $('alias').focus();
}
