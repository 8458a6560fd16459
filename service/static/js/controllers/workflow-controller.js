/**
 * The open workflow: which one the VastAI Setup tab shows, the states that arrive for it (the
 * load, a state source, the answers to this page's own requests) reconciled into what to show,
 * and the intents that start, answer, retry, cancel and delete server runs. No DOM: a view
 * renders `view()` after every `change` and turns clicks into the intents below.
 *
 * What is open:
 * - `open(id)` (the page's `?workflow=<id>`, a row of the Instances list): that workflow, by its
 *   own routes (`GET /workflows/<id>`, `/workflows/<id>/stream`); unknown → a clear message.
 * - `openCurrent()` (a page without `?workflow=`): the owner's current workflow is only how the
 *   page finds one to open (`GET /workflow/state`; with none, the current workflow's stream until
 *   one appears). As soon as the page knows an id, it follows that workflow by its own routes, so
 *   another workflow started elsewhere shows in the Instances list and never replaces this one.
 * - `close()` (New setup): nothing is open; Run creates a new workflow.
 * - `showRecord(state)`: a finished workflow from the history, shown read-only (nothing on the
 *   server to follow or act on; Run starts a new one with its steps).
 *
 * Reconciliation rests on the service's versions: one counter per owner that never goes back,
 * and one version is always the same state, so only a higher version is news. The percent shown
 * is the state's `completed_percent` (computed the same way when the state has none), so every
 * state shown, whatever brought it, carries its own percent.
 *
 * Events: `change` (render `view()` again), `open` (detail: the id now open, or null),
 * `reveal` (detail {restored, ssh}: bring this workflow to the front; `restored` on load and
 * when the person opened it).
 */

import { describeError, workflowPath } from '../state-client.js';
import {
  blockedMessage,
  finishedMessage,
  message,
  otherRunMessage,
  recordMessage,
  restoredMessage,
  sameMessage,
  serverRunMessage,
} from './messages.js';
import {
  blockedStep,
  completedPercent,
  failedStepIndex,
  isActive,
  retryAt,
  serverRun,
  stepProgress,
  stepTasks,
} from './states.js';

const CURRENT_STATE_URL = '/workflow/state';

const NONE = 'none'; // nothing is open
const FINDING = 'finding'; // nothing was named: waiting for the owner's current workflow
const OPEN = 'open'; // `openId` is open, followed by its own routes

/** Step statuses whose task list stays on the card (the tasks tell what happened). */
const TASKS_SHOWN = ['in_progress', 'blocked', 'failed'];

export class WorkflowController extends EventTarget {
  /**
   * @param {object} parts
   * @param {import('../state-client.js').StateClient} parts.client
   * @param {import('../live.js').LiveState} parts.feed the state source of the open workflow
   * @param {import('./catalog.js').StepCatalog} parts.catalog
   * @param {import('./page-runner.js').ServerRunner} parts.runner starts and stops server runs
   */
  constructor({ client, feed, catalog, runner }) {
    super();
    this.client = client;
    this.feed = feed;
    this.catalog = catalog;
    this.runner = runner;
    this.config = null; // {streamUrl} once GET /workflow/config answered
    this.following = NONE; // NONE, FINDING or OPEN (openId)
    this.openId = null;
    this.current = null; // the newest state the server has of the open workflow (null: none)
    this.displayed = null; // the state on screen (a finished one stays after it expires)
    this.enabled = new Map(); // action → the person's enable-switch choice
    this.message = null;
    this.pending = null; // {action, id} of the request on its way (one at a time)
    this.inputError = null; // why the server refused the last answer to a blocked step
    this.offline = false; // the service cannot serve: nothing that needs it is offered
    this.offlineReason = null; // why: 'network' or 'storage'
    feed.addEventListener('state', (event) => this.onFeed(event.detail.body));
  }

  // --- what is open ------------------------------------------------------------------------

  /**
   * GET the config, then open workflow `workflowId` (or find the owner's current one); false
   * when the steps could not load.
   */
  async init({ workflowId = null } = {}) {
    this.say(message('loading'));
    try {
      const config = await this.client.config();
      this.catalog.set(Array.isArray(config.steps) ? config.steps : []);
      this.config = { streamUrl: config.stream_url || null };
    } catch (error) {
      this.say(message('config-error', { detail: describeError(error) }));
      return false;
    }
    this.changed();
    if (workflowId) await this.open(workflowId);
    else await this.openCurrent();
    return true;
  }

  /** Open workflow `id` and follow it (404 → say there is no such workflow). */
  async open(id) {
    this.pin(id);
    this.feed.stop();
    this.show(null, { reset: true, force: true });
    this.say(message('loading'));
    let answer;
    try {
      answer = await this.client.getWorkflow(id);
    } catch (error) {
      if (this.openId !== id) return; // another workflow was opened meanwhile
      if (error.code === 'no_workflow') {
        this.missing(id);
        return;
      }
      this.say(message('state-error', { detail: describeError(error) }));
      this.feed.follow(this.urlsOf(id)); // it shows once the service answers
      return;
    }
    if (this.openId !== id) return;
    this.restore(answer.state);
    this.feed.follow(this.urlsOf(id));
  }

  /** Open the owner's current workflow; with none, wait for one to appear and open that. */
  async openCurrent() {
    this.unpin(FINDING);
    let answer = null;
    try {
      answer = await this.client.getState({ path: CURRENT_STATE_URL });
    } catch (error) {
      this.say(message('state-error', { detail: describeError(error) }));
    }
    if (this.following !== FINDING) return;
    if (answer && answer.state) {
      this.openState(answer.state, { restored: true });
      return;
    }
    if (answer) this.restore(null);
    // Only until a workflow appears: then it is followed by its id (see onFeed).
    this.feed.follow({ streamUrl: this.config.streamUrl, stateUrl: CURRENT_STATE_URL });
  }

  /** Open `state`'s workflow (read or just created) and follow it by its id from now on. */
  openState(state, { restored }) {
    this.pin(state.workflow_id);
    if (restored) {
      this.restore(state);
    } else {
      this.show(state, { reset: true, force: true });
      this.emit('reveal', { restored: false, ssh: sshOf(state) });
      this.sayProgress(null, state);
    }
    this.feed.follow(this.urlsOf(state.workflow_id));
  }

  /** New setup: nothing is open; Run will create a new workflow. */
  close() {
    this.unpin(NONE);
    this.enabled.clear();
    this.show(null, { reset: true, force: true });
    this.say(message('idle'));
    this.emit('reveal', { restored: true, ssh: '' });
  }

  /** Show a finished workflow from the history, read-only: it is no longer on the server. */
  showRecord(state) {
    this.unpin(NONE);
    this.show(state, { reset: true, force: true });
    this.current = null; // nothing there to follow, answer, retry or cancel
    this.say(recordMessage(state, this.catalog));
    this.emit('reveal', { restored: true, ssh: sshOf(state) });
  }

  /** Workflow `id` is open from now on (the URL and the Instances list hear of it). */
  pin(id) {
    const changed = this.openId !== id;
    this.following = OPEN;
    this.openId = id;
    if (changed) this.emit('open', id);
  }

  unpin(following) {
    const changed = this.openId !== null;
    this.following = following;
    this.openId = null;
    this.feed.stop();
    if (changed) this.emit('open', null);
  }

  /** Workflow `id` does not exist (never did, or was deleted, or expired). */
  missing(id) {
    this.unpin(NONE);
    this.show(null, { reset: true, force: true });
    this.say(message('not-found', { id }));
  }

  /** A workflow's own stream and GET route (polling only when the server has no streams). */
  urlsOf(id) {
    const path = workflowPath(id);
    return { streamUrl: this.config && this.config.streamUrl ? `${path}/stream` : null, stateUrl: path };
  }

  /**
   * Whether the service can serve (the sources say): null when it can, 'network' when it cannot
   * be reached, 'storage' when it answers that its storage is down. Until it can, the page says
   * so and offers nothing that needs it.
   */
  setOffline(reason) {
    const offline = reason || null;
    if (this.offlineReason === offline) return;
    this.offlineReason = offline;
    this.offline = Boolean(offline);
    this.changed();
  }

  // --- intents (from a view) ---------------------------------------------------------------

  /** What the Run button does now (see runOrCancel); 'none' while a step waits for an answer. */
  runMode() {
    if (this.pending && this.pending.action === 'cancel') return 'cancelling';
    const current = this.current;
    if (serverRun(current)) return 'cancel';
    if (current && current.status === 'running') return 'run-remaining';
    if (current && current.status === 'blocked') return 'none';
    return 'run';
  }

  /** Run pressed: Cancel while the server runs it, run the rest when nothing does, else a new run. */
  runOrCancel({ ssh = '' } = {}) {
    const mode = this.runMode();
    if (mode === 'cancel') return this.cancel();
    if (mode === 'run-remaining') return this.runRemaining();
    if (mode === 'run') return this.start({ ssh });
    return undefined;
  }

  /** Create a workflow of the configured steps that are switched on, and start it on the server. */
  async start({ ssh = '' } = {}) {
    if (this.pending || this.offline || !this.config) return;
    const plan = this.catalog.steps.map((step, index) => ({
      ...step,
      index,
      label: step.label || step.action,
      enabled: this.enabled.get(step.action) !== false,
    }));
    if (!plan.some((step) => step.enabled)) {
      this.say(message('enable-one'));
      return;
    }
    this.pending = { action: 'start', id: null };
    this.say(message('starting'));
    try {
      const state = await this.runner.start({ plan, ssh: ssh.trim() });
      this.pending = null;
      this.openState(state, { restored: false });
    } catch (error) {
      this.say(message('start-error', { detail: describeError(error) }));
    } finally {
      this.pending = null;
      this.changed();
    }
  }

  /** Run the open workflow's remaining steps on the server (it runs, but nothing runs it). */
  runRemaining() {
    return this.act('run', {
      busy: 'starting',
      call: (id) => this.runner.run(id),
      failed: (error) => this.sayAndRefresh(message('start-error', { detail: describeError(error) })),
    });
  }

  /** Answer the blocked step's question (`input`: {name: value}); a new run starts there. */
  answer(input) {
    return this.act('resume', {
      busy: 'resuming',
      call: (id) => this.runner.resume(id, input),
      failed: (error) => {
        if (error.code !== 'invalid_input') {
          return this.sayAndRefresh(message('resume-error', { detail: describeError(error) }));
        }
        // Nothing changed on the server: the form stays, with the reason next to it.
        this.inputError = message('input-error', { detail: describeError(error) });
        if (this.current) this.sayProgress(null, this.current);
        return undefined;
      },
    });
  }

  /** Run the failed workflow again from its failed step. */
  retry() {
    return this.act('retry', {
      busy: 'retrying',
      call: (id) => this.runner.retry(id),
      failed: (error) => this.sayAndRefresh(message('retry-error', { detail: describeError(error) })),
    });
  }

  /** Cancel the open workflow, whoever runs it (also one that waits for an answer). */
  cancel() {
    return this.act('cancel', {
      busy: 'cancelling',
      call: (id) => this.runner.cancel(id),
      failed: async (error) => {
        if (error.code !== 'workflow_finished') {
          this.say(message('cancel-error', { detail: describeError(error) }));
          return;
        }
        // It finished on its own meanwhile: show how.
        await this.refresh();
        if (this.current && !isActive(this.current)) this.sayFinished(this.current);
      },
    });
  }

  /** Delete the open workflow (one that runs, but that no server run drives). */
  remove() {
    return this.act('delete', {
      busy: 'deleting',
      call: async (id) => {
        await this.runner.remove(id);
        this.deleted(id);
        return null;
      },
      failed: (error, id) => {
        if (error.code === 'no_workflow') this.deleted(id);
        else this.say(message('delete-error', { detail: describeError(error) }));
      },
    });
  }

  /**
   * Send one request about the open workflow (one at a time, never offline): say `busy` while
   * it is on its way, then show the state it answers, or let `failed(error, id)` say why not.
   */
  async act(action, { busy, call, failed }) {
    const id = this.openId;
    if (!id || this.pending || this.offline) return;
    this.pending = { action, id };
    this.inputError = null;
    this.say(message(busy));
    let state = null;
    let error = null;
    try {
      state = await call(id);
    } catch (caught) {
      error = caught;
    }
    this.pending = null;
    if (this.openId === id) {
      if (error) {
        await failed(error, id);
      } else {
        if (state) this.show(state);
        if (this.current) this.sayProgress(null, this.current);
      }
    }
    this.changed();
  }

  /** The open workflow `id` was deleted: nothing is open any more. */
  deleted(id) {
    this.unpin(NONE);
    this.show(null, { reset: true, force: true });
    this.say(message('deleted', { id }));
  }

  sayAndRefresh(said) {
    this.say(said);
    return this.refresh();
  }

  /** A step's switch was turned on or off. */
  setEnabled(action, on) {
    this.enabled.set(action, Boolean(on));
    this.changed();
  }

  // --- what arrives ----------------------------------------------------------------------------

  /** Show a stored state on opening it: its steps, its tab, its SSH target and the message. */
  restore(state) {
    this.show(state, { reset: true, force: true });
    if (!state) {
      this.say(message('idle'));
      return;
    }
    this.emit('reveal', { restored: true, ssh: sshOf(state) });
    this.say(restoredMessage(state, this.catalog));
  }

  /** A body from the state source: {active, state, ...}. */
  onFeed(body) {
    const state = body.state || null;
    if (this.following === FINDING) {
      // Nothing was named: the first workflow to appear opens, and is followed by its id.
      if (state) this.openState(state, { restored: false });
      return;
    }
    if (this.following !== OPEN) return;
    if (state && state.workflow_id !== this.openId) return; // late news of the one open before
    const previous = this.current;
    if (!state) {
      if (!previous) return;
      if (isActive(previous)) {
        this.show(null);
        this.say(message('cleared'));
      } else {
        // A finished workflow's TTL ran out: keep its result on screen, allow a new run.
        this.current = null;
        this.changed();
      }
      return;
    }
    if (!this.isNewer(state)) return;
    this.show(state);
    this.sayProgress(previous, state);
  }

  /** Say where the workflow got to, when `state` follows `previous` (null: just opened). */
  sayProgress(previous, state) {
    if (state.status === 'running') {
      if (this.pending && this.pending.action === 'cancel') return; // "Cancelling…" stays
      this.say(serverRunMessage(state) || otherRunMessage(state, this.catalog));
    } else if (state.status === 'blocked') {
      this.say(blockedMessage(state, this.catalog) || restoredMessage(state, this.catalog));
    } else if (!previous || isActive(previous)) {
      this.sayFinished(state);
    }
  }

  /** Only a higher version is news (the same one again is already on screen). */
  isNewer(state) {
    return !this.current || !state || state.version > this.current.version;
  }

  /**
   * Put `state` (or no state) on screen. Without `force`, a state older than the one shown is
   * dropped. `reset` takes the step switches from the state.
   */
  show(state, { reset = false, force = false } = {}) {
    if (!force && state && !this.isNewer(state)) return;
    if (state && (!this.current || state.version !== this.current.version)) this.inputError = null;
    this.current = state;
    this.displayed = state;
    if (state && typeof state.version === 'number') this.feed.seen(state.version);
    const steps = state && Array.isArray(state.steps) ? state.steps : [];
    if (reset || isActive(state)) {
      for (const step of steps) {
        if (typeof step.enabled === 'boolean') this.enabled.set(step.action, step.enabled);
      }
    }
    this.changed();
  }

  /** Show `said`, unless it is already shown (the status line is a live region). */
  say(said) {
    if (sameMessage(said, this.message)) return;
    this.message = said;
    this.changed();
  }

  sayFinished(state) {
    this.say(finishedMessage(state, this.catalog));
  }

  changed() {
    this.emit('change');
  }

  refresh() {
    return this.feed.refresh();
  }

  // --- what to show ---------------------------------------------------------------------------

  /** Everything a view needs to draw the open workflow. */
  view() {
    const state = this.displayed;
    const current = this.current;
    const steps = state && Array.isArray(state.steps) ? state.steps : [];
    const running = Boolean(state) && state.status === 'running';
    const active = isActive(state);
    const layout = this.catalog.layoutFor(state);
    const run = serverRun(current);
    // Running, but no server run drives it: a client that runs steps itself, or one that stopped.
    const unattended = !run && Boolean(current) && current.status === 'running';
    const blocked = blockedStep(current);
    const busy = Boolean(this.pending);
    const unavailable = busy || this.offline;
    const locked = active || Boolean(this.pending && this.pending.action === 'start');
    let hint = null;
    if (run) hint = message('hint-server');
    else if (unattended) hint = message('hint-orphan');
    return {
      open: this.openId,
      steps: layout.map((entry, index) => {
        const step = steps[index] || {};
        const status = step.status || 'pending';
        const working = running && status === 'in_progress';
        return {
          index,
          action: entry.action,
          label: entry.label,
          status,
          current: (working || status === 'blocked') && active,
          note: step.data && typeof step.data.message === 'string' ? step.data.message : '',
          progress: working ? stepProgress(step) : null,
          tasks: TASKS_SHOWN.includes(status) ? stepTasks(step) : [],
          retryAt: working ? retryAt(state, step) : null,
          enabled: this.enabled.get(entry.action) !== false,
          locked,
        };
      }),
      // The arrow after step i: `completed` when step i is done, `loading` while it runs.
      arrows: layout.slice(1).map((_, index) => {
        const before = (steps[index] || {}).status;
        return { completed: before === 'completed', loading: running && before === 'in_progress' };
      }),
      progress: {
        percent: completedPercent(state),
        step: state ? state.current_step + 1 : 0,
        total: steps.length,
        status: state ? state.status : null,
      },
      message: this.offline ? offlineMessage(this.offlineReason) : this.message,
      run: { mode: this.runMode(), disabled: !this.config || unavailable },
      sshLocked: locked,
      // A running workflow nothing drives can be deleted (it would otherwise linger).
      remove: unattended ? { disabled: unavailable } : null,
      retry:
        current && current.status === 'failed'
          ? { step: failedStepIndex(current) + 1, disabled: unavailable }
          : null,
      blocked: blocked
        ? {
            key: `${current.workflow_id}:${blocked.index}:${blocked.since}`,
            step: blocked.index + 1,
            label: this.catalog.labelOf(blocked.step),
            message: blocked.message,
            fields: blocked.fields,
            error: this.inputError,
            disabled: unavailable,
          }
        : null,
      newSetup: Boolean(state) || this.following === OPEN,
      offline: this.offline,
      hint,
    };
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** What the status line says while the service cannot serve. */
function offlineMessage(reason) {
  return message(reason === 'storage' ? 'storage-down' : 'offline');
}

/** A state's SSH connection for its field ('' when it has none). */
function sshOf(state) {
  return typeof state.ssh_connection === 'string' ? state.ssh_connection : '';
}
