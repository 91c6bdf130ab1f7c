// Live messages of one open room. First choice: the WebSocket
// `ws(s)://<host>/api/v1/rooms/{room}/live?after=<n>&token=<t>`, one ChatMessage JSON per text
// frame in sequence order, reopened after a short delay with the last number shown. When the
// socket cannot open at all (no such endpoint, a proxy without WebSocket), polling
// `GET .../messages?after=<n>` every second instead, trying the socket again now and then.

import { api } from './api.js';

const RECONNECT_MS = 1000;
const POLL_MS = 1000;
const RETRY_AFTER_ERROR_MS = 3000;
/** Polls between two attempts to go back to the socket. */
const POLLS_PER_SOCKET_TRY = 30;

export class LiveFeed {
  /**
   * @param {object} o
   * @param {string} o.room     the room's name
   * @param {string} o.token    the caller's token
   * @param {() => number} o.last                 the last sequence number shown
   * @param {(messages: object[]) => void} o.deliver  new messages, in order
   * @param {(state: string) => void} o.state     'connecting' | 'live' | 'polling' | 'reconnecting'
   * @param {(error: Error) => void} o.fail       polling refused for good (a 4xx): the feed stops
   */
  constructor({ room, token, last, deliver, state, fail }) {
    Object.assign(this, { room, token, last, deliver, state, fail });
    this.stopped = false;
    this.socket = null;
    this.timer = null;
    this.mode = 'socket';
    this.polling = false;
    this.polls = 0;
  }

  start() {
    this.openSocket();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close();
      this.socket = null;
    }
  }

  /** Look for new messages now rather than at the next poll (after a send). */
  nudge() {
    if (this.mode === 'poll' && !this.polling && !this.stopped) {
      clearTimeout(this.timer);
      this.poll();
    }
  }

  openSocket() {
    if (this.stopped) return;
    this.mode = 'socket';
    this.state('connecting');
    let socket;
    try {
      socket = new WebSocket(api.liveUrl(this.token, this.room, this.last()));
    } catch {
      this.startPolling();
      return;
    }
    let opened = false;
    this.socket = socket;
    socket.onopen = () => {
      opened = true;
      this.state('live');
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.deliver([message]);
    };
    socket.onclose = () => {
      this.socket = null;
      if (this.stopped) return;
      if (opened) {
        this.state('reconnecting');
        this.timer = setTimeout(() => this.openSocket(), RECONNECT_MS);
      } else {
        this.startPolling();
      }
    };
  }

  startPolling() {
    this.mode = 'poll';
    this.polls = 0;
    this.poll();
  }

  async poll() {
    if (this.stopped) return;
    this.polls += 1;
    if (this.polls > POLLS_PER_SOCKET_TRY) {
      this.openSocket();
      return;
    }
    this.polling = true;
    let delay = POLL_MS;
    try {
      const page = await api.page(this.token, this.room, { after: this.last(), limit: 100 });
      if (this.stopped) return;
      this.state('polling');
      this.deliver(page.messages);
      if (page.more) delay = 0;
    } catch (e) {
      if (this.stopped) return;
      if (e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429) {
        this.stopped = true;
        this.fail(e);
        return;
      }
      this.state('reconnecting');
      delay = RETRY_AFTER_ERROR_MS;
    } finally {
      this.polling = false;
    }
    this.timer = setTimeout(() => this.poll(), delay);
  }
}
