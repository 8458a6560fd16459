/**
 * The open workflow: which one the VastAI Setup tab shows, the states that arrive for it (the
 * load, a state source, the answers to this page's own requests) reconciled into what to show,
 * and the intents that start, resume and cancel server runs. No DOM: a view renders `view()`
 * after every `change` and turns clicks into the intents below.
 *
 * What is open:
 * - `open(id)` (the page's `?workflow=<id>`, a row of the Instances list): that workflow, by its
 *   own routes (`GET /workflows/<id>`, `/workflows/<id>/stream`); unknown → a clear message.
 * - `openCurrent()` (a page without `?workflow=`): the owner's current workflow
 *   (`GET /workflow/state`); with none, the page follows the current one until a workflow
 *   appears, and opens that. Once open, a workflow stays open: another one started elsewhere
 *   shows in the Instances list, it never replaces what this page shows.
 * - `close()` (New setup): nothing is open; Run creates a new workflow.
 *
 * A workflow that is the owner's current one (opened from it, or just started here) is followed
 * on the current workflow's stream, which is already open: no state is missed by switching.
 * As soon as that stream shows another workflow (or none), the page switches to the open
 * workflow's own stream, whose first event is its state as it is then.
 *
 * Reconciliation rests on the contract's versions: one counter per owner that never goes back,
 * and one version is always the same state, so only a higher version is news. `progress_percent`
 * comes from the server's bodies (GET and the stream); a state from a write answer has none, so
 * the percent shown catches up when the source delivers that version.
 *
 * Events: `change` (render `view()` again), `open` (detail: the id now open, or null),
 * `reveal` (detail {restored, ssh}: bring this workflow to the front; `restored` on load and
 * when the person opened it).
 */

import { describeError, workflowPath } from '../state-client.js';
import {
  finishedMessage,
  message,
  otherRunMessage,
  restoredMessage,
  sameMessage,
  serverRun,
  serverRunMessage,
} from './messages.js';

const CURRENT_STATE_URL = '/workflow/state';

const NONE = 'none';
const CURRENT = 'current';
const WORKFLOW = 'workflow';

export class WorkflowController extends EventTarget {
  /**
   * @param {object} parts
   * @param {import('../state-client.js').StateClient} parts.client
   * @param {import('../live.js').LiveState} parts.feed the state source of the open workflow
   * @param {import('./catalog.js').StepCatalog} parts.catalog
   * @param {import('./page-runner.js').ServerRunner} parts.runner starts and cancels server runs
   */
  constructor({ client, feed, catalog, runner }) {
    super();
    this.client = client;
    this.feed = feed;
    this.catalog = catalog;
    this.runner = runner;
    this.config = null; // {streamUrl} once GET /workflow/config answered
    this.following = NONE; // NONE, CURRENT (the owner's current one) or WORKFLOW (openId)
    this.openId = null;
    this.viaCurrent = false; // the open workflow is followed on the current workflow's stream
    this.current = null; // the newest state the server has of the open workflow (null: none)
    this.displayed = null; // the state on screen (a finished one stays after it expires)
    this.percent = 0; // the server's progress_percent for what is on screen
    this.percentOf = null; // the version that percent belongs to
    this.enabled = new Map(); // action → the person's enable-switch choice
    this.message = null;
    this.starting = false; // a start or resume request is on its way
    this.cancelling = null; // the id of the workflow whose cancel is on its way
    feed.addEventListener('state', (event) => this.onFeed(event.detail.body));
  }

  // --- what is open ------------------------------------------------------------------------

  /**
   * GET the config, then open workflow `workflowId` (or the owner's current one); false when
   * the steps could not load.
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
    this.viaCurrent = false;
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
    this.restore(answer.state, answer.progressPercent);
    this.feed.follow(this.urlsOf(id));
  }

  /** Open the owner's current workflow; with none, follow until one appears. */
  async openCurrent() {
    this.unpin(CURRENT);
    let answer = null;
    try {
      answer = await this.client.getState({ path: CURRENT_STATE_URL });
    } catch (error) {
      this.say(message('state-error', { detail: describeError(error) }));
    }
    if (this.following !== CURRENT) return;
    if (answer && answer.state) {
      this.adopt(answer.state, { percent: answer.progressPercent, restored: true });
      return;
    }
    if (answer) this.restore(null);
    this.followCurrent();
  }

  /** Follow the owner's current workflow (its stream, or polling GET /workflow/state). */
  followCurrent() {
    const following = this.feed.started && this.feed.stateUrl === CURRENT_STATE_URL;
    if (!following) this.feed.follow({ streamUrl: this.config.streamUrl, stateUrl: CURRENT_STATE_URL });
  }

  /** New setup: nothing is open; Run will create a new workflow. */
  close() {
    this.unpin(NONE);
    this.enabled.clear();
    this.show(null, { reset: true, force: true });
    this.say(message('idle'));
    this.emit('reveal', { restored: true, ssh: '' });
  }

  /** Workflow `id` is open from now on (the URL and the Instances list hear of it). */
  pin(id) {
    const changed = this.openId !== id;
    this.following = WORKFLOW;
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

  /** Open `state`'s workflow, the owner's current one (read from it, or just created). */
  adopt(state, { percent = undefined, restored = false } = {}) {
    this.pin(state.workflow_id);
    this.viaCurrent = true;
    if (restored) {
      this.restore(state, percent);
    } else {
      this.show(state, { reset: true, force: true, percent });
      this.emit('reveal', { restored: false, ssh: sshOf(state) });
      this.sayProgress(null, state);
    }
    this.followCurrent();
  }

  /** Follow the open workflow on its own routes (it may no longer be the current one). */
  followOwn() {
    this.viaCurrent = false;
    this.feed.follow(this.urlsOf(this.openId));
  }

  /** Workflow `id` does not exist (never did, or was deleted, or expired). */
  missing(id) {
    this.unpin(NONE);
    this.viaCurrent = false;
    this.show(null, { reset: true, force: true });
    this.say(message('not-found', { id }));
  }

  /** A workflow's own stream and GET route (polling only when the server has no streams). */
  urlsOf(id) {
    const path = workflowPath(id);
    return { streamUrl: this.config && this.config.streamUrl ? `${path}/stream` : null, stateUrl: path };
  }

  // --- intents (from a view) ---------------------------------------------------------------

  /** Run pressed: Cancel while the server runs it, Resume when nothing does, else a new run. */
  runOrCancel({ ssh = '' } = {}) {
    if (serverRun(this.current)) return this.cancel();
    if (this.current && this.current.status === 'running') return this.resume();
    return this.start({ ssh });
  }

  /** Create a workflow of the configured steps that are switched on, and start it on the server. */
  async start({ ssh = '' } = {}) {
    if (this.starting || !this.config) return;
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
    this.starting = true;
    this.say(message('starting'));
    try {
      const state = await this.runner.start({ plan, ssh: ssh.trim() });
      this.adopt(state);
    } catch (error) {
      this.say(message('start-error', { detail: describeError(error) }));
    } finally {
      this.starting = false;
      this.changed();
    }
  }

  /** Run the open workflow's remaining steps on the server (it runs, but nothing runs it). */
  async resume() {
    const id = this.openId;
    if (this.starting || !id) return;
    this.starting = true;
    this.say(message('starting'));
    try {
      const state = await this.runner.resume(id);
      if (this.openId !== id) return;
      this.show(state);
      this.sayProgress(null, this.current);
    } catch (error) {
      if (this.openId !== id) return;
      this.say(message('start-error', { detail: describeError(error) }));
      this.refresh();
    } finally {
      this.starting = false;
      this.changed();
    }
  }

  /** Cancel the open workflow, whoever runs it. */
  async cancel() {
    const id = this.openId;
    if (!id || this.cancelling) return;
    this.cancelling = id;
    this.say(message('cancelling'));
    try {
      const state = await this.runner.cancel(id);
      this.cancelling = null;
      if (this.openId !== id) return;
      this.show(state);
      if (this.current) this.sayFinished(this.current);
    } catch (error) {
      this.cancelling = null;
      if (this.openId !== id) return;
      if (error.code === 'workflow_finished') {
        // It finished on its own meanwhile: show how.
        await this.refresh();
        if (this.current && this.current.status !== 'running') this.sayFinished(this.current);
      } else {
        this.say(message('cancel-error', { detail: describeError(error) }));
      }
    } finally {
      this.changed();
    }
  }

  /** "Cancel that run": stop a running workflow that no server run drives. */
  cancelOther() {
    return this.cancel();
  }

  /** A step's switch was turned on or off. */
  setEnabled(action, on) {
    this.enabled.set(action, Boolean(on));
    this.changed();
  }

  // --- what arrives ----------------------------------------------------------------------------

  /** Show a stored state on opening it: its steps, its tab, its SSH target and the message. */
  restore(state, percent) {
    this.show(state, { reset: true, force: true, percent });
    if (!state) {
      this.say(message('idle'));
      return;
    }
    this.emit('reveal', { restored: true, ssh: sshOf(state) });
    this.say(restoredMessage(state));
  }

  /** A body from the state source: {active, progress_percent, state}. */
  onFeed(body) {
    const state = body.state || null;
    if (this.following === CURRENT) {
      // Nothing was open: the first workflow to appear opens.
      if (state) this.adopt(state, { percent: body.progress_percent });
      return;
    }
    if (this.following !== WORKFLOW) return;
    if (this.viaCurrent && (!state || state.workflow_id !== this.openId)) {
      // The current workflow is another one now (or none): follow the open one by its id.
      this.followOwn();
      return;
    }
    if (state && state.workflow_id !== this.openId) return; // late news of the one open before
    const previous = this.current;
    if (state && previous && state.version === previous.version) {
      this.learnPercent(state.version, body.progress_percent);
      return;
    }
    if (!state) {
      if (!previous) return;
      if (previous.status === 'running') {
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
    this.show(state, { percent: body.progress_percent });
    this.sayProgress(previous, state);
  }

  /** Say where the workflow got to, when `state` follows `previous` (null: just opened). */
  sayProgress(previous, state) {
    if (state.status === 'running') {
      if (this.cancelling) return; // "Cancelling…" stays until the cancel shows
      this.say(serverRunMessage(state) || otherRunMessage(state, this.catalog));
    } else if (!previous || previous.status === 'running') {
      this.sayFinished(state);
    }
  }

  /** Only a higher version is news (the same one again is already on screen). */
  isNewer(state) {
    return !this.current || !state || state.version > this.current.version;
  }

  /**
   * Put `state` (or no state) on screen. Without `force`, a state older than the one shown is
   * dropped. `reset` takes the step switches from the state; `percent` is its progress_percent.
   */
  show(state, { reset = false, force = false, percent = undefined } = {}) {
    if (!force && state && !this.isNewer(state)) {
      if (this.current && state.version === this.current.version) this.learnPercent(state.version, percent);
      return;
    }
    const before = this.displayed;
    this.current = state;
    this.displayed = state;
    if (!state) {
      this.percent = 0;
      this.percentOf = null;
    } else if (typeof percent === 'number') {
      this.percent = percent;
      this.percentOf = state.version;
      this.feed.seen(state.version);
    } else if (!before || before.workflow_id !== state.workflow_id) {
      this.percent = 0; // until the source brings this workflow's own percent
      this.percentOf = null;
    }
    const steps = state && Array.isArray(state.steps) ? state.steps : [];
    if (reset || (state && state.status === 'running')) {
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

  /** The server's percent for the version on screen, when it arrives after the state. */
  learnPercent(version, percent) {
    if (typeof percent !== 'number' || this.percentOf === version) return;
    if (!this.displayed || this.displayed.version !== version) return;
    this.percent = percent;
    this.percentOf = version;
    this.feed.seen(version);
    this.changed();
  }

  /** Everything a view needs to draw the open workflow. */
  view() {
    const state = this.displayed;
    const steps = state && Array.isArray(state.steps) ? state.steps : [];
    const running = Boolean(state) && state.status === 'running';
    const layout = this.catalog.layoutFor(state);
    const run = serverRun(this.current);
    // Running, but no server run drives it: a client that runs steps itself, or one that stopped.
    const unattended = !run && Boolean(this.current) && this.current.status === 'running';
    const locked = running || this.starting;
    let mode = 'run';
    if (this.cancelling) mode = 'cancelling';
    else if (run) mode = 'cancel';
    else if (unattended) mode = 'resume';
    let hint = null;
    if (run) hint = message('hint-server');
    else if (unattended) hint = message('hint-orphan');
    return {
      open: this.openId,
      steps: layout.map((entry, index) => {
        const step = steps[index] || {};
        const status = step.status || 'pending';
        return {
          index,
          action: entry.action,
          label: entry.label,
          status,
          current: running && status === 'in_progress',
          note: step.data && typeof step.data.message === 'string' ? step.data.message : '',
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
        percent: this.percent,
        step: state ? state.current_step + 1 : 0,
        total: steps.length,
        status: state ? state.status : null,
      },
      message: this.message,
      run: { mode, disabled: !this.config || this.starting || Boolean(this.cancelling) },
      sshLocked: locked,
      stopOther: unattended && !this.cancelling,
      newSetup: Boolean(state) || this.following === WORKFLOW,
      hint,
    };
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** A state's SSH connection for its field ('' when it has none). */
function sshOf(state) {
  return typeof state.ssh_connection === 'string' ? state.ssh_connection : '';
}
