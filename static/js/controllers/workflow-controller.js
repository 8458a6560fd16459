/**
 * One followed workflow: reconciles the states that arrive (the load, a state source, the
 * runner's own writes) into what the page shows, and says what to show. No DOM: a view renders
 * `view()` after every `change` and turns clicks into the intents below.
 *
 * Reconciliation rests on the contract's versions: one counter that never goes back, and one
 * version is always the same state, so only a higher version is news. `progress_percent` comes
 * from the server's bodies (GET and the stream); a state from a write answer has none, so the
 * percent shown catches up when the source delivers that version.
 *
 * Events: `change` (render `view()` again), `reveal` (detail {restored, ssh}: bring this
 * workflow to the front; `restored` on load), `current` (detail: the server's state or null,
 * for the Instances list), `history` (the finished workflows may have changed).
 */

import { describeError } from '../state-client.js';
import { finishedMessage, message, otherRunMessage, restoredMessage } from './messages.js';

export class WorkflowController extends EventTarget {
  /**
   * @param {object} parts
   * @param {import('../state-client.js').StateClient} parts.client
   * @param {import('../live.js').LiveState} parts.feed the state source this workflow follows
   * @param {import('./catalog.js').StepCatalog} parts.catalog
   * @param {(host: WorkflowController) => import('./page-runner.js').PageRunner} parts.createRunner
   */
  constructor({ client, feed, catalog, createRunner }) {
    super();
    this.client = client;
    this.feed = feed;
    this.catalog = catalog;
    this.config = null; // {stepDelayMs, streamUrl} once GET /workflow/config answered
    this.current = null; // the newest state the server has (null: none)
    this.displayed = null; // the state on screen (a finished one stays after it expires)
    this.percent = 0; // the server's progress_percent for what is on screen
    this.percentOf = null; // the version that percent belongs to
    this.enabled = new Map(); // action → the person's enable-switch choice
    this.message = null;
    this.runner = createRunner(this);
    feed.addEventListener('state', (event) => this.onFeed(event.detail.body));
  }

  // --- intents (from a view) ---------------------------------------------------------------

  /** GET the config, then GET the state and restore it; false when the steps could not load. */
  async init() {
    if (this.runner.active) return true; // a run in this tab already shows everything
    this.say(message('loading'));
    try {
      const config = await this.client.config();
      this.catalog.set(Array.isArray(config.steps) ? config.steps : []);
      this.config = {
        stepDelayMs: Number(config.step_delay_ms) || 0,
        streamUrl: config.stream_url || null,
      };
    } catch (error) {
      this.say(message('config-error', { detail: describeError(error) }));
      return false;
    }
    let answer = null;
    try {
      answer = await this.client.getState({ path: this.feed.stateUrl });
    } catch (error) {
      this.say(message('state-error', { detail: describeError(error) }));
    }
    if (answer) this.restore(answer.state, answer.progressPercent);
    return true;
  }

  /** Run pressed (Cancel while this page runs the workflow). */
  runOrCancel({ ssh = '' } = {}) {
    if (this.runner.active) {
      this.runner.cancel();
      return Promise.resolve();
    }
    return this.start({ ssh });
  }

  /** Start a new run of the configured steps that are switched on. */
  async start({ ssh = '' } = {}) {
    if (this.runner.active || this.runner.starting || !this.config) return;
    const plan = this.catalog.steps.map((step, index) => ({
      ...step,
      index,
      enabled: this.enabled.get(step.action) !== false,
    }));
    if (!plan.some((step) => step.enabled)) {
      this.say(message('enable-one'));
      return;
    }
    await this.runner.start({ plan, ssh: ssh.trim(), stepDelayMs: this.config.stepDelayMs });
  }

  /** "Cancel that run": stop the workflow another tab runs. */
  cancelOther() {
    return this.runner.cancelOther();
  }

  /** A step's switch was turned on or off. */
  setEnabled(action, on) {
    this.enabled.set(action, Boolean(on));
    this.changed();
  }

  // --- what arrives ----------------------------------------------------------------------------

  /** Show a stored state on load: its steps, its tab, its SSH target and the restore message. */
  restore(state, percent) {
    this.show(state, { reset: true, force: true, percent });
    if (!state) {
      this.say(message('idle'));
      return;
    }
    this.emit('reveal', {
      restored: true,
      ssh: typeof state.ssh_connection === 'string' ? state.ssh_connection : undefined,
    });
    this.say(restoredMessage(state));
  }

  /** A body from the state source: {active, progress_percent, state}. */
  onFeed(body) {
    const state = body.state || null;
    const previous = this.current;
    if (state && previous && state.version === previous.version) {
      this.learnPercent(state.version, body.progress_percent);
      return;
    }
    if (this.runner.active) {
      // This page is the runner: its own writes already show; watch for someone stopping it.
      if (!state || !this.runner.started || !this.isNewer(state)) return;
      this.show(state, { percent: body.progress_percent });
      this.runner.observe(state);
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
        this.emit('current', null);
        this.emit('history');
        this.changed();
      }
      return;
    }
    if (!this.isNewer(state)) return;
    const newWorkflow = !previous || previous.workflow_id !== state.workflow_id;
    this.show(state, { reset: newWorkflow, percent: body.progress_percent });
    if (newWorkflow) this.emit('reveal', { restored: false });
    if (state.status === 'running') {
      if (this.runner.isOther(state)) this.say(otherRunMessage(state, this.catalog));
    } else if (newWorkflow || previous.status === 'running') {
      this.sayFinished(state);
      this.emit('history');
    }
  }

  /** Only a higher version is news (the same one again is already on screen). */
  isNewer(state) {
    return !this.current || !state || state.version > this.current.version;
  }

  // --- the runner's port (see page-runner.js) and shared steps -------------------------------

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
    this.emit('current', state);
    this.changed();
  }

  say(said) {
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

  ended() {
    this.emit('history');
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

  /** Everything a view needs to draw this workflow. */
  view() {
    const state = this.displayed;
    const steps = state && Array.isArray(state.steps) ? state.steps : [];
    const running = Boolean(state) && state.status === 'running';
    const layout = this.catalog.layoutFor(state);
    const runner = this.runner;
    const active = runner.active;
    const other = !active && runner.isOther(this.current);
    const orphan = !active && runner.isOrphan(this.current);
    let hint = null;
    if (other) hint = message('hint-other');
    else if (orphan) hint = message('hint-orphan');
    return {
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
          locked: active,
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
      run: {
        mode: active ? (runner.cancelling ? 'cancelling' : 'cancel') : 'run',
        disabled: active ? runner.cancelling : other || runner.starting || !this.config,
      },
      sshLocked: active,
      stopOther: other,
      hint,
    };
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
