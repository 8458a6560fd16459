/**
 * A state source: follows one workflow's state as it changes (contract section 5), from
 * whichever pair of URLs it is given (`/workflow/state/stream` + `/workflow/state` for the
 * current workflow; a workflow's own stream and route answer the same bodies). It knows
 * nothing of the page.
 *
 * - With a stream URL and no token: `EventSource(streamUrl)`, listening for `state` events.
 * - With a token: EventSource cannot send headers, and a token never goes into a URL, so the
 *   same stream is read with fetch() and an `Authorization` header.
 * - No stream (the server has none, it failed, or it is reconnecting): poll GET `stateUrl`
 *   every 2 s, cheaply, with If-None-Match.
 *
 * Events: `state` (detail: {body, source}) where body is the GET /workflow/state body
 * ({success, active, progress_percent, state}), and `mode` (detail: 'connecting' | 'live' |
 * 'polling' | 'offline').
 */

import { isAbortError } from './state-client.js';

const STREAM_RETRY_MS = 2000; // the server's `retry:`; used when a fetch stream ends
const STREAM_REOPEN_MS = 30000; // after a stream was refused (e.g. 404), try it again this late
const CONNECT_GRACE_MS = 3000; // poll if a stream has not opened by then

/** Parse a Server-Sent Events byte stream; calls onEvent({type, data, id}) per event. */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.reset();
    this.lastEventId = '';
    this.retry = null;
  }

  reset() {
    this.type = '';
    this.data = [];
  }

  /** Feed the next chunk of text (chunks may split lines anywhere, even inside '\r\n'). */
  push(text) {
    this.buffer += text;
    // A trailing '\r' may be the first half of '\r\n': keep it for the next chunk.
    const end = this.buffer.endsWith('\r') ? this.buffer.length - 1 : this.buffer.length;
    const lines = this.buffer.slice(0, end).split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + this.buffer.slice(end);
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === '') {
      if (this.data.length) {
        this.onEvent({ type: this.type || 'message', data: this.data.join('\n'), id: this.lastEventId });
      }
      this.reset();
      return;
    }
    if (line.startsWith(':')) return; // a comment, e.g. ": keepalive"
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.type = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.lastEventId = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

export class LiveState extends EventTarget {
  /**
   * @param {import('./state-client.js').StateClient} client
   * @param {{streamUrl?: string|null, stateUrl?: string, pollMs?: number}} [options]
   */
  constructor(client, { streamUrl = null, stateUrl = '/workflow/state', pollMs = 2000 } = {}) {
    super();
    this.client = client;
    this.streamUrl = streamUrl;
    this.stateUrl = stateUrl;
    this.pollMs = pollMs;
    this.mode = 'connecting';
    this.started = false;
    this.version = null; // the newest version seen, sent as If-None-Match
    this.lastEventId = '';
    this.source = null; // an open EventSource
    this.streamAbort = null; // aborts a fetch() stream
    this.streamOpen = false;
    this.pollTimer = null;
    this.polling = false;
    this.reopenTimer = null;
    this.graceTimer = null;
  }

  /** Start following; safe to call more than once. */
  start() {
    if (this.started) return;
    this.started = true;
    this.connect();
  }

  /** Stop everything (streams, timers). */
  stop() {
    this.started = false;
    this.closeStream();
    this.stopPolling();
    clearTimeout(this.reopenTimer);
    clearTimeout(this.graceTimer);
  }

  /** Use a (new) stream URL, e.g. from GET /workflow/config; null means poll. */
  setStreamUrl(url) {
    if (url === this.streamUrl) return;
    this.streamUrl = url;
    if (this.started) {
      this.closeStream();
      this.connect();
    }
  }

  /** Re-open the stream, e.g. after a token was entered (then it must carry the header). */
  reconnect() {
    if (!this.started) return;
    this.closeStream();
    this.connect();
  }

  /** Remember the newest version the caller holds in full (so polling can answer 304). */
  seen(version) {
    if (typeof version === 'number' && (this.version === null || version > this.version)) {
      this.version = version;
    }
  }

  /** Poll once now (outside the timer); resolves when done. */
  refresh() {
    return this.pollOnce();
  }

  // --- internals -------------------------------------------------------------------------------

  setMode(mode) {
    if (mode === this.mode) return;
    this.mode = mode;
    this.dispatchEvent(new CustomEvent('mode', { detail: mode }));
  }

  emit(body, source) {
    if (!body || typeof body !== 'object' || !('state' in body)) return;
    if (body.state && typeof body.state.version === 'number') this.seen(body.state.version);
    this.dispatchEvent(new CustomEvent('state', { detail: { body, source } }));
  }

  connect() {
    clearTimeout(this.reopenTimer);
    if (!this.streamUrl) {
      this.startPolling();
      return;
    }
    this.setMode('connecting');
    clearTimeout(this.graceTimer);
    this.graceTimer = setTimeout(() => {
      if (!this.streamOpen) this.startPolling();
    }, CONNECT_GRACE_MS);
    if (this.client.token || typeof EventSource === 'undefined') this.openFetchStream();
    else this.openEventSource();
  }

  closeStream() {
    this.streamOpen = false;
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    if (this.streamAbort) {
      this.streamAbort.abort();
      this.streamAbort = null;
    }
  }

  streamOpened() {
    this.streamOpen = true;
    clearTimeout(this.graceTimer);
    this.stopPolling();
    this.setMode('live');
  }

  streamFailed(reopenMs) {
    this.streamOpen = false;
    this.startPolling();
    if (reopenMs !== null) {
      clearTimeout(this.reopenTimer);
      this.reopenTimer = setTimeout(() => {
        if (this.started && !this.streamOpen) {
          this.closeStream();
          this.connect();
        }
      }, reopenMs);
    }
  }

  openEventSource() {
    const source = new EventSource(this.client.url(this.streamUrl));
    this.source = source;
    source.addEventListener('open', () => {
      if (this.source === source) this.streamOpened();
    });
    source.addEventListener('state', (event) => {
      if (this.source !== source) return;
      if (!this.streamOpen) this.streamOpened();
      this.lastEventId = event.lastEventId || this.lastEventId;
      this.handleData(event.data);
    });
    source.addEventListener('error', () => {
      if (this.source !== source) return;
      if (source.readyState === EventSource.CLOSED) {
        // Refused for good (an HTTP error or a wrong content type): poll, try again later.
        source.close();
        this.source = null;
        this.streamFailed(STREAM_REOPEN_MS);
      } else {
        // The browser reconnects by itself; poll until it is back.
        this.streamFailed(null);
      }
    });
  }

  async openFetchStream() {
    const controller = new AbortController();
    this.streamAbort = controller;
    const url = this.client.url(this.streamUrl);
    let retryMs = STREAM_RETRY_MS;
    try {
      const headers = { Accept: 'text/event-stream', ...this.client.authHeaders(url) };
      if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
      const response = await fetch(url, { headers, cache: 'no-store', signal: controller.signal });
      const type = response.headers.get('Content-Type') || '';
      if (!response.ok || !response.body || !type.startsWith('text/event-stream')) {
        retryMs = STREAM_REOPEN_MS;
        throw new Error(`stream answered ${response.status}`);
      }
      this.streamOpened();
      const parser = new SseParser((event) => {
        if (event.type !== 'state') return;
        this.lastEventId = event.id || this.lastEventId;
        this.handleData(event.data);
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
      if (parser.retry !== null) retryMs = parser.retry;
    } catch (error) {
      if (isAbortError(error) || controller.signal.aborted) return;
    }
    if (this.streamAbort !== controller || !this.started) return;
    this.streamAbort = null;
    this.streamFailed(retryMs);
  }

  handleData(data) {
    let body;
    try {
      body = JSON.parse(data);
    } catch {
      return; // not a state event we understand
    }
    this.emit(body, 'stream');
  }

  startPolling() {
    if (this.pollTimer !== null) return;
    if (this.mode !== 'offline') this.setMode('polling');
    this.pollTimer = setInterval(() => this.pollOnce(), this.pollMs);
    this.pollOnce();
  }

  stopPolling() {
    if (this.pollTimer !== null) clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  async pollOnce() {
    if (this.polling) return;
    this.polling = true;
    try {
      const answer = await this.client.getState({
        path: this.stateUrl,
        ifNoneMatch: this.version,
        retries: 0,
      });
      if (!this.streamOpen) this.setMode('polling');
      if (!answer.notModified) this.emit(answer.body, 'poll');
    } catch {
      if (!this.streamOpen) this.setMode('offline');
    } finally {
      this.polling = false;
    }
  }
}
