/**
 * Sources of what changes on the server, knowing nothing of the page:
 *
 * - `LiveState` follows one workflow: `/workflows/<id>/stream` and its GET route
 *   `/workflows/<id>` (or any pair of a stream and the GET route answering the same bodies,
 *   such as the owner's current workflow's). Event `state` (detail: {body, source}) where body
 *   is the GET body ({success, active, progress_percent, state}).
 * - `WorkflowList` follows the owner's list: `/workflows/stream`, and `GET /workflows?limit=50`
 *   each time the stream opens (or every 2 s while polling). Events `snapshot` (detail:
 *   {workflows}) then `entry` (detail: a list entry, or `{workflow_id, state: null}` for a
 *   workflow deleted or expired).
 * - `RecentRuns` reads the owner's finished workflows (`GET /workflow/history`) when asked to.
 *   Event `history` (detail: {workflows}).
 * - `WorkflowNames` reads what names a workflow (its `label` and `ssh_connection`) from
 *   `GET /workflows/<id>`, once per workflow, for list entries that do not carry them.
 *   Event `name` (detail: {workflow_id, label, ssh_connection}).
 *
 * The first two share how they connect (`Feed`):
 * - With a stream URL and no token: `EventSource(streamUrl)`.
 * - With a token: EventSource cannot send headers, and a token never goes into a URL, so the
 *   same stream is read with fetch() and an `Authorization` header.
 * - No stream (the server has none, it failed, or it is reconnecting): poll every 2 s.
 * Event `mode` (detail: 'connecting' | 'live' | 'polling' | 'offline'); while offline, `error`
 * says why the last poll failed (the service is unreachable, or it answered 503).
 */

import { ApiError, isAbortError } from './state-client.js';

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

/** A stream of one event type, with polling while the stream is not there (see the top). */
class Feed extends EventTarget {
  /**
   * @param {import('./state-client.js').StateClient} client
   * @param {{streamUrl?: string|null, pollMs?: number, eventType: string}} options
   */
  constructor(client, { streamUrl = null, pollMs = 2000, eventType }) {
    super();
    this.client = client;
    this.streamUrl = streamUrl;
    this.pollMs = pollMs;
    this.eventType = eventType;
    this.mode = 'connecting';
    this.error = null; // why the last poll failed (while `offline`)
    this.started = false;
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
    const was = this.started;
    this.started = false;
    this.closeStream();
    this.stopPolling();
    clearTimeout(this.reopenTimer);
    clearTimeout(this.graceTimer);
    this.mode = 'connecting'; // what a new start() begins with
    if (was) this.dispatchEvent(new CustomEvent('mode', { detail: 'stopped' }));
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

  /** Poll once now (outside the timer); resolves when done. */
  refresh() {
    return this.pollOnce();
  }

  // --- what a kind of feed does ---------------------------------------------------------------

  /** The stream (re)opened: nothing by default. */
  opened() {}

  /** An event of `eventType` arrived with `data`. */
  received() {}

  /** Poll once; resolves when done (throws nothing). */
  async poll() {}

  // --- internals -------------------------------------------------------------------------------

  setMode(mode) {
    if (mode === this.mode) return;
    this.mode = mode;
    this.dispatchEvent(new CustomEvent('mode', { detail: mode }));
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
    this.opened();
  }

  streamFailed(reopenMs) {
    this.streamOpen = false;
    if (!this.started) return;
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
    source.addEventListener(this.eventType, (event) => {
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
        if (event.type !== this.eventType) return;
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
      return; // not an event we understand
    }
    this.received(body, 'stream');
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
    if (this.polling || !this.started) return;
    this.polling = true;
    try {
      await this.poll();
      this.error = null;
      if (!this.streamOpen && this.started) this.setMode('polling');
    } catch (error) {
      this.error = error;
      if (!this.streamOpen && this.started) this.setMode('offline');
    } finally {
      this.polling = false;
    }
  }
}

/** What a feed follows: one workflow, or the owner's current one. */
export const CURRENT_URLS = Object.freeze({
  streamUrl: '/workflow/state/stream',
  stateUrl: '/workflow/state',
});

export class LiveState extends Feed {
  /**
   * @param {import('./state-client.js').StateClient} client
   * @param {{streamUrl?: string|null, stateUrl?: string, pollMs?: number}} [options]
   */
  constructor(client, { streamUrl = null, stateUrl = CURRENT_URLS.stateUrl, pollMs = 2000 } = {}) {
    super(client, { streamUrl, pollMs, eventType: 'state' });
    this.stateUrl = stateUrl;
    this.version = null; // the newest version seen, sent as If-None-Match
  }

  /**
   * Follow another workflow from now on: its stream (null: poll) and its GET route. Nothing
   * seen of the one followed before counts for it.
   */
  follow({ streamUrl, stateUrl }) {
    this.stop();
    this.streamUrl = streamUrl;
    this.stateUrl = stateUrl;
    this.version = null;
    this.lastEventId = '';
    this.start();
  }

  /** Remember the newest version the caller holds in full (so polling can answer 304). */
  seen(version) {
    if (typeof version === 'number' && (this.version === null || version > this.version)) {
      this.version = version;
    }
  }

  emit(body, source) {
    if (!body || typeof body !== 'object' || !('state' in body)) return;
    if (body.state && typeof body.state.version === 'number') this.seen(body.state.version);
    this.dispatchEvent(new CustomEvent('state', { detail: { body, source } }));
  }

  received(body, source) {
    this.emit(body, source);
  }

  async poll() {
    const stateUrl = this.stateUrl;
    let answer;
    try {
      answer = await this.client.getState({ path: stateUrl, ifNoneMatch: this.version, retries: 0 });
    } catch (error) {
      if (!(error instanceof ApiError) || error.code !== 'no_workflow' || stateUrl !== this.stateUrl) {
        throw error;
      }
      // The workflow followed is gone (deleted, or expired): say so once, and stop asking.
      this.stop();
      this.emit({ success: true, active: false, progress_percent: 0, state: null }, 'poll');
      return;
    }
    if (stateUrl !== this.stateUrl) return; // it follows another workflow now
    if (!answer.notModified) this.emit(answer.body, 'poll');
  }
}

export class WorkflowList extends Feed {
  /**
   * @param {import('./state-client.js').StateClient} client
   * @param {{streamUrl?: string|null, limit?: number, pollMs?: number}} [options]
   */
  constructor(client, { streamUrl = null, limit = 50, pollMs = 2000 } = {}) {
    super(client, { streamUrl, pollMs, eventType: 'workflow' });
    this.limit = limit;
    this.held = null; // events that arrived while a snapshot was on its way
  }

  opened() {
    this.snapshot().catch(() => {
      // Read it again a little later while the stream stays open (polling reads it anyway).
      setTimeout(() => {
        if (this.streamOpen) this.opened();
      }, this.pollMs);
    });
  }

  received(entry) {
    if (!entry || typeof entry !== 'object' || typeof entry.workflow_id !== 'string') return;
    // An event newer than the snapshot being read must land after it, not under it.
    if (this.held) this.held.push(entry);
    else this.dispatchEvent(new CustomEvent('entry', { detail: entry }));
  }

  poll() {
    return this.snapshot();
  }

  /** Read the list, then apply the events that arrived meanwhile. */
  async snapshot() {
    if (this.held) return; // one read at a time; events wait for it
    this.held = [];
    try {
      const { workflows } = await this.client.listWorkflows({ limit: this.limit, retries: 0 });
      this.dispatchEvent(new CustomEvent('snapshot', { detail: { workflows } }));
    } catch (error) {
      this.dispatchEvent(new CustomEvent('failed', { detail: error }));
      throw error;
    } finally {
      const held = this.held;
      this.held = null;
      for (const entry of held) this.dispatchEvent(new CustomEvent('entry', { detail: entry }));
    }
  }
}

export class RecentRuns extends EventTarget {
  /**
   * @param {import('./state-client.js').StateClient} client
   * @param {{limit?: number}} [options] how many finished workflows to read
   */
  constructor(client, { limit = 20 } = {}) {
    super();
    this.client = client;
    this.limit = limit;
    this.reading = null; // the read on its way
    this.again = false; // asked again while reading: read once more after it
  }

  /** Read the history (at most one read at a time; a call meanwhile reads once more after). */
  refresh() {
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = (async () => {
      do {
        this.again = false;
        try {
          const workflows = await this.client.history(this.limit);
          this.dispatchEvent(new CustomEvent('history', { detail: { workflows } }));
        } catch {
          // Leave what was read before; the next change of the list asks again.
        }
      } while (this.again);
      this.reading = null;
    })();
    return this.reading;
  }
}

export class WorkflowNames extends EventTarget {
  /**
   * @param {import('./state-client.js').StateClient} client
   * @param {{parallel?: number}} [options] how many workflows to read at once
   */
  constructor(client, { parallel = 2 } = {}) {
    super();
    this.client = client;
    this.parallel = parallel;
    this.asked = new Set(); // ids read or being read
    this.queue = [];
    this.reading = 0;
  }

  /** Read what names workflow `id` (once: a workflow's label and SSH target stay as created). */
  lookup(id) {
    if (this.asked.has(id)) return;
    this.asked.add(id);
    this.queue.push(id);
    this.next();
  }

  next() {
    while (this.reading < this.parallel && this.queue.length) {
      const id = this.queue.shift();
      this.reading += 1;
      this.read(id).finally(() => {
        this.reading -= 1;
        this.next();
      });
    }
  }

  async read(id) {
    try {
      const { state } = await this.client.getWorkflow(id, { retries: 1 });
      if (!state) return;
      const { label = null, ssh_connection: ssh = null } = state;
      this.dispatchEvent(new CustomEvent('name', { detail: { workflow_id: id, label, ssh_connection: ssh } }));
    } catch (error) {
      // Gone: its id names it. Not reached: ask again with the next list.
      if (!(error instanceof ApiError) || error.code !== 'no_workflow') this.asked.delete(id);
    }
  }
}
