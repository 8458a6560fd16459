/**
 * A small client for the Workflow State Service API.
 *
 * No dependencies and no build step: another page (the host application's own UI) can copy
 * this file or import it from the service:
 *
 *   import { StateClient, describeError } from '/static/js/state-client.js';
 *   const client = new StateClient();                       // same origin
 *   const { state } = await client.getState();
 *
 * What it does for a caller:
 * - every error becomes an `ApiError` with `.status`, `.code` (the service's snake_case
 *   `error`) and `.message` (the server's sentence);
 * - 503 (and a lost connection) is retried with exponential backoff, honouring Retry-After;
 *   the client fires `reconnecting` and `reconnected` events so a page can show a note;
 * - 409 (`workflow_finished`, `workflow_mismatch`) and 412 are never retried or papered over:
 *   they reach the caller, and `describeError()` turns them into a sentence for a person;
 * - a 401 asks `onUnauthorized()` for a bearer token (once for any number of concurrent
 *   calls), keeps it in sessionStorage and sends it as `Authorization: Bearer <token>` on every
 *   same-origin call. The token never goes into a URL or to another origin.
 */

export const TOKEN_STORAGE_KEY = 'workflowStateToken';

/** Statuses that mean "the service is briefly unavailable": worth another try. */
const RETRYABLE_STATUSES = new Set([502, 503, 504]);

/** An API call that did not succeed. */
export class ApiError extends Error {
  /**
   * @param {string} message the server's sentence (or ours when there was no answer)
   * @param {{status?: number, code?: string, body?: any, retryAfter?: number|null}} details
   */
  constructor(message, { status = 0, code = 'network_error', body = null, retryAfter = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

/** True when `error` comes from an AbortController (a cancelled call, not a failure). */
export function isAbortError(error) {
  return Boolean(error) && error.name === 'AbortError';
}

/** Turn any error from this client into one sentence a person can act on. */
export function describeError(error) {
  if (!(error instanceof ApiError)) {
    return (error && error.message) || 'Something went wrong.';
  }
  switch (error.code) {
    case 'workflow_finished':
      return 'That workflow has already finished, so it was not changed.';
    case 'workflow_mismatch':
      return 'Another workflow has replaced this one; nothing was overwritten.';
    case 'precondition_failed':
      return 'The workflow changed somewhere else in the meantime; nothing was overwritten.';
    case 'no_workflow':
      return 'The workflow state was cleared in the meantime.';
    case 'run_active':
      return 'That workflow is already running on the server.';
    case 'not_blocked':
      return 'That workflow no longer waits for an answer.';
    case 'not_failed':
      return 'That workflow has not failed, so there is nothing to retry.';
    case 'unauthorized':
      return 'The service needs a valid access token.';
    case 'backend_unavailable':
      return 'The service cannot reach its storage right now. Try again in a moment.';
    case 'network_error':
      return 'The service cannot be reached. Check your connection and try again.';
    default:
      return error.message || `The service answered ${error.status}.`;
  }
}

/** The path of one workflow's routes. */
export function workflowPath(id) {
  return `/workflows/${encodeURIComponent(id)}`;
}

/** A token store on sessionStorage (one browser tab), the one the page uses. */
export function sessionTokenStore(key = TOKEN_STORAGE_KEY) {
  const storage = () => {
    try {
      return globalThis.sessionStorage || null;
    } catch {
      return null; // storage disabled by the browser: keep the token in memory only
    }
  };
  let memory = null;
  return {
    get() {
      const store = storage();
      return store ? store.getItem(key) : memory;
    },
    set(token) {
      const store = storage();
      if (store) store.setItem(key, token);
      else memory = token;
    },
    clear() {
      const store = storage();
      if (store) store.removeItem(key);
      memory = null;
    },
  };
}

/** Wait `ms`, or reject with an AbortError as soon as `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(signal.reason || new DOMException('Aborted', 'AbortError'));
      return;
    }
    const timer = setTimeout(done, ms);
    function done() {
      if (signal) signal.removeEventListener('abort', aborted);
      resolve();
    }
    function aborted() {
      clearTimeout(timer);
      reject(signal.reason || new DOMException('Aborted', 'AbortError'));
    }
    if (signal) signal.addEventListener('abort', aborted, { once: true });
  });
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function toApiError(response, body) {
  const retryAfter = Number.parseFloat(response.headers.get('Retry-After'));
  const details = {
    status: response.status,
    code: (body && typeof body === 'object' && body.error) || `http_${response.status}`,
    body,
    retryAfter: Number.isFinite(retryAfter) ? retryAfter : null,
  };
  const message =
    (body && typeof body === 'object' && body.message) ||
    `The service answered ${response.status} ${response.statusText}`.trim();
  if (response.ok) details.code = (body && body.error) || 'unsuccessful';
  return new ApiError(message, details);
}

function versionOf(response) {
  const etag = response.headers.get('ETag');
  if (!etag) return null;
  const match = /^(?:W\/)?"([^"]*)"$/.exec(etag.trim());
  return match ? match[1] : etag;
}

/** The state API client. Events: `reconnecting` (detail: attempt, delayMs, error), `reconnected`. */
export class StateClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] where the service lives ('' = this page's origin)
   * @param {{get(): string|null, set(t: string): void, clear(): void}} [options.tokenStore]
   * @param {(info: {error: ApiError, rejectedToken: string|null}) => Promise<string|null>}
   *   [options.onUnauthorized] asked for a token after a 401; null gives up
   * @param {number} [options.maxRetries] tries after the first for 503 / lost connection
   * @param {typeof fetch} [options.fetch]
   */
  constructor({
    baseUrl = '',
    tokenStore = sessionTokenStore(),
    onUnauthorized = null,
    maxRetries = 6,
    fetch: fetchImpl = null,
  } = {}) {
    super();
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.tokenStore = tokenStore;
    this.onUnauthorized = onUnauthorized;
    this.maxRetries = maxRetries;
    this.fetchImpl = fetchImpl || ((...args) => globalThis.fetch(...args));
    this.pendingToken = null;
    this.retrying = false;
  }

  /** The bearer token in use, or null. */
  get token() {
    return this.tokenStore.get();
  }

  /** Absolute URL of a service path. */
  url(path) {
    return /^https?:\/\//.test(path) ? path : this.baseUrl + path;
  }

  /** Whether the token may be sent to `url` (only to the service's own origin). */
  sendsTokenTo(url) {
    const target = new URL(url, globalThis.location ? globalThis.location.href : undefined);
    const own = new URL(this.baseUrl || '/', globalThis.location ? globalThis.location.href : undefined);
    return target.origin === own.origin;
  }

  /** Headers carrying the token for `url`, for callers that fetch by themselves (streams). */
  authHeaders(url = this.url('/')) {
    const token = this.token;
    return token && this.sendsTokenTo(url) ? { Authorization: `Bearer ${token}` } : {};
  }

  /**
   * Send one request. Resolves to {status, version, body}; a 304 resolves with body null.
   * Rejects with ApiError (or an AbortError when `signal` aborts).
   */
  async request(method, path, options = {}) {
    const {
      body,
      headers = {},
      ifMatch = null,
      ifNoneMatch = null,
      signal = undefined,
      retries = this.maxRetries,
    } = options;
    const url = this.url(path);
    let attempt = 0;
    let tokenTries = 0;
    for (;;) {
      const sent = { Accept: 'application/json', ...headers, ...this.authHeaders(url) };
      if (body !== undefined) sent['Content-Type'] = 'application/json';
      if (ifMatch !== null && ifMatch !== undefined) sent['If-Match'] = `"${ifMatch}"`;
      if (ifNoneMatch !== null && ifNoneMatch !== undefined) sent['If-None-Match'] = `"${ifNoneMatch}"`;
      const tokenUsed = this.token;
      let response;
      try {
        response = await this.fetchImpl(url, {
          method,
          headers: sent,
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: 'no-store',
          credentials: 'same-origin',
          signal,
        });
      } catch (error) {
        if (isAbortError(error) || (signal && signal.aborted)) throw error;
        const lost = new ApiError('The service cannot be reached', { code: 'network_error' });
        if (attempt < retries) {
          await this.backoff(attempt++, lost, signal);
          continue;
        }
        this.settle(false);
        throw lost;
      }
      if (response.status === 304) {
        this.settle(attempt > 0);
        return { status: 304, version: versionOf(response), body: null };
      }
      const parsed = await readBody(response);
      if (response.ok && !(parsed && typeof parsed === 'object' && parsed.success === false)) {
        this.settle(attempt > 0);
        return { status: response.status, version: versionOf(response), body: parsed };
      }
      const error = toApiError(response, parsed);
      if (response.status === 401 && this.onUnauthorized && tokenTries < 3) {
        tokenTries += 1;
        if (await this.obtainToken(error, tokenUsed)) continue;
        this.settle(attempt > 0);
        throw error;
      }
      if (RETRYABLE_STATUSES.has(response.status) && attempt < retries) {
        await this.backoff(attempt++, error, signal);
        continue;
      }
      this.settle(attempt > 0);
      throw error;
    }
  }

  /** Ask for a token once, however many calls got a 401 at the same time. */
  async obtainToken(error, rejectedToken) {
    const current = this.token;
    if (current && current !== rejectedToken) return true; // another call already got one
    if (!this.pendingToken) {
      this.pendingToken = (async () => {
        try {
          const token = await this.onUnauthorized({ error, rejectedToken });
          if (!token) return false;
          this.tokenStore.set(token);
          return true;
        } finally {
          this.pendingToken = null;
        }
      })();
    }
    return this.pendingToken;
  }

  async backoff(attempt, error, signal) {
    const base = Math.min(8000, 400 * 2 ** attempt);
    const hinted = error.retryAfter ? error.retryAfter * 1000 : 0;
    const delayMs = Math.round(Math.max(base, hinted) * (0.8 + Math.random() * 0.4));
    this.retrying = true;
    this.dispatchEvent(new CustomEvent('reconnecting', { detail: { attempt: attempt + 1, delayMs, error } }));
    await sleep(delayMs, signal);
  }

  settle(recovered) {
    if (this.retrying) {
      this.retrying = false;
      this.dispatchEvent(new CustomEvent('reconnected', { detail: { recovered } }));
    }
  }

  // --- the API, one method per route --------------------------------------------------------

  /**
   * GET /workflow/state (or `path`, another route answering the same body) → {active, state,
   * progressPercent, version, body}; with `ifNoneMatch` (a version) and an unchanged state →
   * {notModified: true}. `progressPercent` is the server's `progress_percent`.
   */
  async getState({ path = '/workflow/state', ifNoneMatch = null, signal, retries } = {}) {
    const answer = await this.request('GET', path, { ifNoneMatch, signal, retries });
    if (answer.status === 304) return { notModified: true, version: answer.version };
    const { body } = answer;
    return {
      notModified: false,
      active: body.active,
      state: body.state,
      progressPercent: body.progress_percent,
      version: answer.version,
      body,
    };
  }

  /** POST /workflow/state: save or replace the whole state; resolves to the stored state. */
  async save(state, { ifMatch = null, signal } = {}) {
    return (await this.request('POST', '/workflow/state', { body: state, ifMatch, signal })).body.state;
  }

  /** PATCH /workflow/state/steps/<index>: {status, data?, workflow_id?} → the stored state. */
  async patchStep(index, change, { ifMatch = null, signal } = {}) {
    const path = `/workflow/state/steps/${encodeURIComponent(index)}`;
    return (await this.request('PATCH', path, { body: change, ifMatch, signal })).body.state;
  }

  /** PATCH /workflow/state: replace top-level fields (e.g. {status: 'cancelled'}). */
  async merge(fields, { ifMatch = null, signal } = {}) {
    return (await this.request('PATCH', '/workflow/state', { body: fields, ifMatch, signal })).body.state;
  }

  /** DELETE /workflow/state. */
  async clear({ signal } = {}) {
    return (await this.request('DELETE', '/workflow/state', { signal })).body;
  }

  /** GET /workflow/state/summary → the summary object. */
  async summary({ signal } = {}) {
    return (await this.request('GET', '/workflow/state/summary', { signal })).body.summary;
  }

  /** GET /workflow/config → {steps, step_delay_ms, stream_url}. */
  async config({ signal } = {}) {
    return (await this.request('GET', '/workflow/config', { signal })).body;
  }

  /** GET /workflow/history → the last finished workflows, newest first. */
  async history(limit = 20, { signal } = {}) {
    const path = `/workflow/history?limit=${encodeURIComponent(limit)}`;
    return (await this.request('GET', path, { signal, retries: 1 })).body.workflows;
  }

  // --- many workflows, and runs on the server ------------------------------------------------

  /** GET /workflows/<id>: the same answer as getState(), for one workflow (404 `no_workflow`). */
  getWorkflow(id, { ifNoneMatch = null, signal, retries } = {}) {
    return this.getState({ path: workflowPath(id), ifNoneMatch, signal, retries });
  }

  /** POST /workflows: create a workflow (`run: true` also starts its server run) → the state. */
  async createWorkflow(body, { signal } = {}) {
    return (await this.request('POST', '/workflows', { body, signal })).body.state;
  }

  /** POST /workflows/<id>/run: run its remaining steps on the server → the state (run queued). */
  async runWorkflow(id, { signal } = {}) {
    return (await this.request('POST', `${workflowPath(id)}/run`, { signal })).body.state;
  }

  /** POST /workflows/<id>/cancel: its running step and itself become cancelled → the state. */
  async cancelWorkflow(id, { signal } = {}) {
    return (await this.request('POST', `${workflowPath(id)}/cancel`, { signal })).body.state;
  }

  /**
   * POST /workflows/<id>/resume with `{"input": {...}}`: answer a blocked step's question; a new
   * run starts at that step → the state. Input the fields refuse → ApiError `invalid_input`.
   */
  async resumeWorkflow(id, input = {}, { signal } = {}) {
    const path = `${workflowPath(id)}/resume`;
    return (await this.request('POST', path, { body: { input }, signal })).body.state;
  }

  /** POST /workflows/<id>/retry: run a failed workflow again from its failed step → the state. */
  async retryWorkflow(id, { signal } = {}) {
    return (await this.request('POST', `${workflowPath(id)}/retry`, { signal })).body.state;
  }

  /** DELETE /workflows/<id>: remove the workflow (404 `no_workflow` when there is none). */
  async deleteWorkflow(id, { signal } = {}) {
    return (await this.request('DELETE', workflowPath(id), { signal })).body;
  }

  /**
   * GET /workflows: the owner's workflows, most recent `last_update` first → {workflows,
   * nextCursor}; each entry is a summary with its `version`.
   */
  async listWorkflows({ status = 'all', limit = 50, cursor = null, signal, retries = 1 } = {}) {
    const query = new URLSearchParams({ status, limit: String(limit) });
    if (cursor) query.set('cursor', cursor);
    const { body } = await this.request('GET', `/workflows?${query}`, { signal, retries });
    return { workflows: body.workflows, nextCursor: body.next_cursor || null };
  }

  /**
   * Run one step's action: POST <step.endpoint>, else the built-in POST /workflow/actions/<action>.
   * Never retried (a host action need not be idempotent). Rejects with ApiError on an HTTP
   * error or a `{"success": false}` answer.
   */
  async runAction(step, payload, { signal } = {}) {
    const path = step.endpoint || `/workflow/actions/${encodeURIComponent(step.action)}`;
    return (await this.request('POST', path, { body: payload, signal, retries: 0 })).body;
  }
}
