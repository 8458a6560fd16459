/**
 * The VastAI Setup tab: shows the workflow, restores it on load, follows it live, and runs it.
 *
 * The page is the runner (contract section 4): it saves a new workflow with POST, then for each
 * enabled step PATCHes `in_progress`, calls the step's action, PATCHes `completed` or `failed`,
 * and ends with the workflow status. Disabled steps are PATCHed `skipped`.
 */

import { ApiError, describeError, isAbortError, progressPercent, sleep } from './state-client.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Step status → the class its card carries (pending carries none). */
const STEP_CLASSES = {
  in_progress: 'in-progress',
  completed: 'completed',
  failed: 'failed',
  skipped: 'skipped',
  cancelled: 'cancelled',
};
const ALL_STEP_CLASSES = Object.values(STEP_CLASSES);
const STEP_TEXT = {
  pending: 'Pending',
  in_progress: 'Running…',
  completed: 'Done',
  failed: 'Failed',
  skipped: 'Skipped',
  cancelled: 'Cancelled',
};
const STEP_MARK = { completed: '✓', failed: '✕', skipped: '–', cancelled: '■' };
const MESSAGE_KINDS = ['info', 'success', 'warning', 'error'];

/** What #setup-result says when the page loads with a stored state (contract section 4). */
const RESTORE_MESSAGES = {
  running: ['⚠️ Workflow was in progress. You may need to restart it.', 'warning'],
  completed: ['✅ Previous workflow completed successfully!', 'success'],
  failed: ['❌ Previous workflow failed.', 'error'],
  cancelled: ['⏹️ Previous workflow was cancelled.', 'warning'],
};
const IDLE_MESSAGE = 'Enter the SSH connection of your instance, choose the steps, and press Run.';

/** sessionStorage key: the id of the last workflow this browser tab started. */
const OWNED_RUN_KEY = 'workflowStateOwnedRun';

/** A workflow id in the server's own format: workflow_<unix ms>_<random hex>. */
function newWorkflowId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
  return `workflow_${Date.now()}_${hex}`;
}

function ownedRun() {
  try {
    return sessionStorage.getItem(OWNED_RUN_KEY);
  } catch {
    return null;
  }
}

function setOwnedRun(id) {
  try {
    sessionStorage.setItem(OWNED_RUN_KEY, id);
  } catch {
    // no storage: a reload then treats the run as another tab's, which is the safe side
  }
}

function arrowSvg() {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 36');
  svg.setAttribute('width', '24');
  svg.setAttribute('height', '36');
  svg.setAttribute('focusable', 'false');
  const shapes = [
    ['line', 'arrow-track', { x1: 12, y1: 2, x2: 12, y2: 30 }],
    ['line', 'arrow-fill', { x1: 12, y1: 2, x2: 12, y2: 30, pathLength: 100 }],
    ['path', 'arrow-head', { d: 'M5 24 L12 32 L19 24' }],
  ];
  for (const [tag, className, attributes] of shapes) {
    const shape = document.createElementNS(SVG_NS, tag);
    shape.setAttribute('class', className);
    for (const [name, value] of Object.entries(attributes)) shape.setAttribute(name, String(value));
    svg.append(shape);
  }
  return svg;
}

export class WorkflowPage {
  /**
   * @param {object} parts
   * @param {import('./state-client.js').StateClient} parts.client
   * @param {import('./live.js').LiveState} parts.live
   * @param {import('./tabs.js').Tabs} parts.tabs
   * @param {import('./instances.js').InstancesView} parts.instances
   */
  constructor({ client, live, tabs, instances }) {
    this.client = client;
    this.live = live;
    this.tabs = tabs;
    this.instances = instances;
    instances.labelOf = (step) => this.labelOf(step);
    // The configured steps by action: labels and endpoints for stored steps that lack them.
    this.configured = new Map();
    const byId = (id) => document.getElementById(id);
    this.dom = {
      steps: byId('workflow-steps'),
      ssh: byId('sshConnectionString'),
      run: byId('run-workflow-btn'),
      stopOther: byId('stop-other-btn'),
      hint: byId('run-hint'),
      progress: byId('workflow-progress'),
      progressFill: byId('workflow-progress').querySelector('.progress-fill'),
      progressLabel: byId('progress-label'),
      result: byId('setup-result'),
      indicator: byId('live-indicator'),
      reconnecting: byId('reconnect-note'),
    };
    this.config = null;
    this.layout = []; // the steps the cards show: {action, label, endpoint}
    this.cards = [];
    this.arrows = [];
    this.enabled = new Map(); // action → the person's enable-toggle choice
    this.shown = null; // the state on screen
    this.run = null; // the run this document drives
    this.starting = false;
    this.unloading = false; // the tab is going away: a run in flight must write nothing more

    window.addEventListener('pagehide', () => {
      this.unloading = true;
    });
    this.dom.run.addEventListener('click', () => (this.run ? this.cancel() : this.start()));
    this.dom.stopOther.addEventListener('click', () => this.cancelOther());
    live.addEventListener('state', (event) => this.onLive(event.detail.body));
    live.addEventListener('mode', (event) => this.showMode(event.detail));
    client.addEventListener('reconnecting', (event) => this.showReconnecting(event.detail));
    client.addEventListener('reconnected', () => {
      this.dom.reconnecting.hidden = true;
    });
  }

  // --- loading and restoring -------------------------------------------------------------------

  /** GET the config and render the steps, then GET the state and restore it. */
  async init() {
    if (this.run) return true; // a run in this tab already shows everything
    this.setMessage('Loading the workflow…', 'info');
    try {
      const config = await this.client.config();
      this.config = {
        steps: Array.isArray(config.steps) ? config.steps : [],
        stepDelayMs: Number(config.step_delay_ms) || 0,
        streamUrl: config.stream_url || null,
      };
    } catch (error) {
      this.setMessage(`❌ Could not load the workflow steps: ${describeError(error)}`, 'error');
      this.updateControls();
      return false;
    }
    this.configured = new Map(this.config.steps.map((step) => [step.action, step]));
    this.showLayout(this.config.steps);
    let answer;
    try {
      answer = await this.client.getState();
    } catch (error) {
      this.setMessage(`❌ Could not load the workflow state: ${describeError(error)}`, 'error');
      answer = null;
    }
    if (answer) this.restore(answer.state);
    this.live.setStreamUrl(this.config.streamUrl);
    this.live.start();
    this.instances.refresh();
    document.body.dataset.workflowReady = 'true';
    return true;
  }

  restore(state) {
    this.shown = null;
    this.render(state, { resetToggles: true });
    if (!state) {
      this.setMessage(IDLE_MESSAGE, 'info');
      return;
    }
    this.tabs.select('vastai-setup');
    if (typeof state.ssh_connection === 'string') this.dom.ssh.value = state.ssh_connection;
    const [text, kind] = RESTORE_MESSAGES[state.status] || [`Workflow is ${state.status}.`, 'info'];
    this.setMessage(text, kind);
  }

  /** A state from the live feed (stream or polling). */
  onLive(body) {
    const state = body.state;
    const previous = this.shown;
    const run = this.run;
    if (run) {
      // This tab is the runner: its own writes already show; watch for someone stopping it.
      if (!state || !run.started || !this.isNewer(state)) return;
      this.render(state);
      if (state.workflow_id !== run.id || state.status !== 'running') {
        run.stoppedElsewhere = true;
        run.controller.abort();
      }
      return;
    }
    if (!state) {
      if (!previous) return;
      this.shown = null;
      if (previous.status === 'running') {
        this.render(null);
        this.setMessage('The workflow state was cleared.', 'info');
      } else {
        // A finished workflow's TTL ran out: keep its result on screen, allow a new run.
        this.instances.setCurrent(null);
        this.instances.refresh();
        this.updateControls();
      }
      return;
    }
    if (!this.isNewer(state)) return;
    const newWorkflow = !previous || previous.workflow_id !== state.workflow_id;
    this.render(state, { resetToggles: newWorkflow });
    if (newWorkflow && !this.tabs.touched) this.tabs.select('vastai-setup');
    if (state.status === 'running') {
      if (this.isOtherRun(state)) this.setMessage(this.otherRunMessage(state), 'info');
    } else if (newWorkflow || previous.status === 'running') {
      this.showFinished(state);
      this.instances.refresh();
    }
  }

  /**
   * Versions come from one counter that never goes back, and one version is always the same
   * state: only a higher one is news (the same one again is already on screen).
   */
  isNewer(state) {
    return !this.shown || !state || state.version > this.shown.version;
  }

  // --- rendering -------------------------------------------------------------------------------

  /** The step list a state shows: its own steps, labelled from the config where it has none. */
  layoutFor(state) {
    if (!state || !Array.isArray(state.steps) || !state.steps.length) {
      return this.config ? this.config.steps : [];
    }
    return state.steps.map((step) => ({
      ...this.configured.get(step.action),
      action: step.action,
      label: this.labelOf(step),
    }));
  }

  showLayout(steps) {
    const same =
      steps.length === this.layout.length &&
      steps.every((step, index) => step.action === this.layout[index].action && step.label === this.layout[index].label);
    if (same) return;
    this.layout = steps.map((step) => ({ ...step }));
    this.cards = [];
    this.arrows = [];
    const nodes = [];
    steps.forEach((step, index) => {
      if (index > 0) {
        const arrow = document.createElement('div');
        arrow.className = 'workflow-arrow';
        arrow.setAttribute('aria-hidden', 'true');
        arrow.append(arrowSvg());
        this.arrows.push(arrow);
        nodes.push(arrow);
      }
      const card = this.stepCard(step, index);
      this.cards.push(card);
      nodes.push(card.root);
    });
    this.dom.steps.replaceChildren(...nodes);
  }

  stepCard(step, index) {
    const root = document.createElement('div');
    root.className = 'workflow-step';
    root.dataset.action = step.action;
    root.dataset.index = String(index);
    root.setAttribute('role', 'listitem');

    const mark = document.createElement('span');
    mark.className = 'step-mark';
    mark.setAttribute('aria-hidden', 'true');
    mark.textContent = String(index + 1);

    const body = document.createElement('div');
    body.className = 'step-body';
    const label = document.createElement('span');
    label.className = 'step-label';
    label.textContent = step.label;
    const meta = document.createElement('span');
    meta.className = 'step-meta';
    const status = document.createElement('span');
    status.className = 'step-status';
    status.textContent = STEP_TEXT.pending;
    const action = document.createElement('code');
    action.className = 'step-action';
    action.textContent = step.action;
    meta.append(status, action);
    const note = document.createElement('span');
    note.className = 'step-note';
    note.hidden = true;
    body.append(label, meta, note);

    const switchLabel = document.createElement('label');
    switchLabel.className = 'switch';
    switchLabel.title = `Run “${step.label}”`;
    const toggle = document.createElement('input');
    toggle.type = 'checkbox';
    toggle.className = 'step-toggle';
    toggle.checked = this.enabled.get(step.action) !== false;
    toggle.setAttribute('aria-label', `Enable ${step.label}`);
    toggle.addEventListener('change', () => {
      this.enabled.set(step.action, toggle.checked);
      root.classList.toggle('disabled', !toggle.checked);
    });
    root.classList.toggle('disabled', !toggle.checked);
    const track = document.createElement('span');
    track.className = 'switch-track';
    track.setAttribute('aria-hidden', 'true');
    switchLabel.append(toggle, track);

    root.append(mark, body, switchLabel);
    return { root, mark, status, note, toggle };
  }

  /** Show `state` (or no state): cards, arrows, progress, controls, the Instances tab. */
  render(state, { resetToggles = false } = {}) {
    this.shown = state;
    if (state && typeof state.version === 'number') this.live.seen(state.version);
    this.showLayout(this.layoutFor(state));
    const steps = state && Array.isArray(state.steps) ? state.steps : [];
    const running = Boolean(state) && state.status === 'running';
    this.cards.forEach((card, index) => {
      const step = steps[index] || {};
      const status = step.status || 'pending';
      card.root.classList.remove(...ALL_STEP_CLASSES);
      if (STEP_CLASSES[status]) card.root.classList.add(STEP_CLASSES[status]);
      card.root.dataset.status = status;
      if (status === 'in_progress' && running) card.root.setAttribute('aria-current', 'step');
      else card.root.removeAttribute('aria-current');
      card.status.textContent = STEP_TEXT[status] || status;
      card.mark.textContent = STEP_MARK[status] || String(index + 1);
      const message = step.data && typeof step.data.message === 'string' ? step.data.message : '';
      card.note.textContent = message;
      card.note.hidden = !message;
      if ((resetToggles || running) && typeof step.enabled === 'boolean') {
        card.toggle.checked = step.enabled;
        this.enabled.set(step.action, step.enabled);
        card.root.classList.toggle('disabled', !step.enabled);
      }
    });
    this.arrows.forEach((arrow, index) => {
      const before = (steps[index] || {}).status;
      arrow.classList.toggle('completed', before === 'completed'); // contract: the step before it is done
      arrow.classList.toggle('loading', running && before === 'in_progress');
    });
    this.showProgress(state);
    this.updateControls();
    this.instances.setCurrent(state);
  }

  showProgress(state) {
    const percent = state ? progressPercent(state) : 0;
    const total = state && Array.isArray(state.steps) ? state.steps.length : 0;
    const bar = this.dom.progress;
    bar.setAttribute('aria-valuenow', String(percent));
    bar.setAttribute(
      'aria-valuetext',
      total ? `${percent}% (step ${state.current_step + 1} of ${total}, ${state.status})` : `${percent}%`,
    );
    bar.classList.remove('is-running', 'is-completed', 'is-failed', 'is-cancelled');
    if (state) bar.classList.add(`is-${state.status}`);
    this.dom.progressFill.style.width = `${percent}%`; // CSSOM: allowed under the page's CSP
    this.dom.progressLabel.textContent = `${percent}%`;
  }

  /** Say `text` in #setup-result, whose class is then exactly `kind` (info/success/warning/error). */
  setMessage(text, kind) {
    const result = this.dom.result;
    result.textContent = text;
    result.className = MESSAGE_KINDS.includes(kind) ? kind : 'info';
  }

  showFinished(state) {
    const failedAt = state.steps.findIndex((step) => step.status === 'failed');
    if (state.status === 'completed') this.setMessage('✅ Workflow completed successfully!', 'success');
    else if (state.status === 'failed' && failedAt >= 0) {
      const step = state.steps[failedAt];
      this.setMessage(`❌ Workflow failed at step ${failedAt + 1} (${this.labelOf(step)}).`, 'error');
    } else if (state.status === 'failed') this.setMessage('❌ Workflow failed.', 'error');
    else this.setMessage('⏹️ Workflow was cancelled.', 'warning');
  }

  /** A step's label: its own, else the configured one, else its action. */
  labelOf(step) {
    const known = this.configured.get(step.action);
    return step.label || (known && known.label) || step.action;
  }

  /** A running workflow this tab neither drives nor started: Run would overwrite it. */
  isOtherRun(state) {
    return (
      Boolean(state) &&
      state.status === 'running' &&
      (!this.run || state.workflow_id !== this.run.id) &&
      state.workflow_id !== ownedRun()
    );
  }

  otherRunMessage(state) {
    const step = state.steps[state.current_step];
    const where = step ? `step ${state.current_step + 1} of ${state.steps.length} (${this.labelOf(step)})` : 'starting';
    return `⏳ A workflow is running in another tab or window: ${where}.`;
  }

  updateControls() {
    const { run: button, ssh, hint, stopOther } = this.dom;
    const running = Boolean(this.run);
    button.textContent = running ? (this.run.cancelled ? 'Cancelling…' : 'Cancel') : 'Run workflow';
    button.classList.toggle('btn-danger', running);
    button.classList.toggle('btn-primary', !running);
    ssh.disabled = running;
    for (const card of this.cards) card.toggle.disabled = running;

    const other = !running && this.isOtherRun(this.shown);
    const orphan =
      !running && Boolean(this.shown) && this.shown.status === 'running' && this.shown.workflow_id === ownedRun();
    button.disabled = running ? this.run.cancelled : other || this.starting || !this.config;
    stopOther.hidden = !other;
    if (other) {
      hint.textContent =
        'Run is disabled: another tab or window is running a workflow, and starting a new one would ' +
        'overwrite it. If that tab was closed, cancel its run first.';
    } else if (orphan) {
      hint.textContent =
        'This tab started that run before it was reloaded, which stopped it. Run starts the workflow again.';
    }
    hint.hidden = !(other || orphan);
  }

  showMode(mode) {
    const indicator = this.dom.indicator;
    const labels = { live: 'Live', polling: 'Polling', offline: 'Offline', connecting: 'Connecting' };
    const titles = {
      live: 'Following changes as they happen (Server-Sent Events).',
      polling: 'Checking for changes every 2 seconds.',
      offline: 'The service cannot be reached; still trying every 2 seconds.',
      connecting: 'Connecting to the live feed…',
    };
    indicator.textContent = labels[mode] || mode;
    indicator.title = titles[mode] || '';
    indicator.dataset.mode = mode;
    indicator.classList.remove('live', 'polling', 'offline', 'connecting');
    indicator.classList.add(mode);
  }

  showReconnecting({ attempt, delayMs }) {
    const note = this.dom.reconnecting;
    note.textContent = `Reconnecting to the service… (try ${attempt}, next in ${Math.ceil(delayMs / 1000)} s)`;
    note.hidden = false;
  }

  // --- running -----------------------------------------------------------------------------------

  /** Run pressed: check nobody else runs a workflow, then drive a new one. */
  async start() {
    if (this.run || this.starting || !this.config) return;
    const steps = this.config.steps.map((step, index) => ({
      index,
      action: step.action,
      label: step.label,
      status: 'pending',
      enabled: this.enabled.get(step.action) !== false,
    }));
    if (!steps.some((step) => step.enabled)) {
      this.setMessage('Enable at least one step to run the workflow.', 'warning');
      return;
    }
    this.starting = true;
    this.updateControls();
    let current;
    try {
      current = (await this.client.getState()).state;
      if (current && this.isNewer(current)) this.render(current);
      if (current && current.status === 'running') {
        if (this.isOtherRun(current)) {
          this.setMessage(this.otherRunMessage(current), 'warning');
          return;
        }
        // This tab's own run from before a reload: record it as cancelled before replacing it.
        current = await this.client.merge(
          { status: 'cancelled', workflow_id: current.workflow_id },
          { ifMatch: current.version },
        );
        this.render(current);
      }
    } catch (error) {
      this.setMessage(`❌ Could not start the workflow: ${describeError(error)}`, 'error');
      return;
    } finally {
      this.starting = false;
      this.updateControls();
    }
    await this.execute(steps, current);
  }

  /** Cancel pressed while this tab runs: stop the action in flight, then record `cancelled`. */
  cancel() {
    const run = this.run;
    if (!run || run.cancelled) return;
    run.cancelled = true;
    run.controller.abort();
    this.setMessage('Cancelling the workflow…', 'info');
    this.updateControls();
  }

  /** "Cancel that run": mark another tab's workflow cancelled, unless it moved meanwhile. */
  async cancelOther() {
    const state = this.shown;
    if (!this.isOtherRun(state)) return;
    try {
      const stored = await this.client.merge(
        { status: 'cancelled', workflow_id: state.workflow_id },
        { ifMatch: state.version },
      );
      this.render(stored);
      this.setMessage('⏹️ That workflow was marked cancelled. You can run a new one.', 'warning');
    } catch (error) {
      if (error instanceof ApiError && error.status === 412) {
        this.setMessage(
          '⚠️ That workflow is still moving (it changed since this page showed it), so it was not ' +
            'cancelled. Press again to cancel it anyway.',
          'warning',
        );
        this.live.refresh();
      } else {
        this.setMessage(`❌ Could not cancel that workflow: ${describeError(error)}`, 'error');
      }
    }
  }

  async execute(steps, previous) {
    const ssh = this.dom.ssh.value.trim();
    const run = {
      id: newWorkflowId(),
      controller: new AbortController(),
      started: false, // the new workflow is saved
      cancelled: false, // Cancel was pressed
      stoppedElsewhere: false, // another tab finished or replaced it
    };
    this.run = run;
    setOwnedRun(run.id);
    this.showLayout(this.config.steps);
    this.updateControls();
    this.setMessage('▶️ Starting the workflow…', 'info');
    const total = steps.length;
    try {
      const body = {
        workflow_id: run.id,
        status: 'running',
        current_step: 0,
        steps: steps.map((step) => ({ ...step })),
      };
      if (ssh) body.ssh_connection = ssh;
      this.render(await this.saveNew(body, previous), { resetToggles: true });
      run.started = true;
      for (let index = 0; index < total; index += 1) {
        if (run.stoppedElsewhere) return this.stoppedElsewhere(run);
        if (run.cancelled) return await this.finishCancelled(run);
        const step = steps[index];
        if (!step.enabled) {
          await this.patchStep(run, index, { status: 'skipped' });
          continue;
        }
        this.setMessage(`⏳ Step ${index + 1} of ${total}: ${step.label}…`, 'info');
        await this.patchStep(run, index, { status: 'in_progress' });
        let outcome;
        try {
          const answer = await this.client.runAction(
            this.config.steps[index],
            { workflow_id: run.id, step: index, action: step.action, ssh_connection: ssh || null },
            { signal: run.controller.signal },
          );
          outcome = { ok: true, message: answer && typeof answer.message === 'string' ? answer.message : '' };
        } catch (error) {
          if (this.unloading) return new Promise(() => {}); // leave the state as it is: running
          if (run.stoppedElsewhere) return this.stoppedElsewhere(run);
          if (isAbortError(error) || run.controller.signal.aborted) {
            await this.patchStep(run, index, { status: 'cancelled' });
            return await this.finishCancelled(run);
          }
          outcome = { ok: false, message: describeError(error) };
        }
        if (!outcome.ok) {
          await this.patchStep(run, index, { status: 'failed', data: { message: outcome.message } });
          await this.finish(run, 'failed');
          this.setMessage(`❌ Step ${index + 1} (${step.label}) failed: ${outcome.message}`, 'error');
          return undefined;
        }
        await this.patchStep(run, index, {
          status: 'completed',
          ...(outcome.message ? { data: { message: outcome.message } } : {}),
        });
        if (index < total - 1 && this.config.stepDelayMs > 0) {
          try {
            await sleep(this.config.stepDelayMs, run.controller.signal);
          } catch {
            if (run.stoppedElsewhere) return this.stoppedElsewhere(run);
            return await this.finishCancelled(run);
          }
        }
      }
      if (run.stoppedElsewhere) return this.stoppedElsewhere(run);
      if (run.cancelled) return await this.finishCancelled(run);
      await this.finish(run, 'completed');
      this.showFinished(this.shown);
    } catch (error) {
      if (this.unloading) return new Promise(() => {});
      await this.stopped(run, error);
    } finally {
      this.run = null;
      this.updateControls();
      this.instances.refresh();
    }
    return undefined;
  }

  /** POST the new workflow; If-Match keeps it from replacing a state that changed meanwhile. */
  async saveNew(body, previous) {
    try {
      return await this.client.save(body, { ifMatch: previous ? previous.version : null });
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 412) throw error;
      // The state changed since we looked (or a finished one expired): look again, once.
      const { state } = await this.client.getState();
      if (state && state.status === 'running') throw error;
      return this.client.save(body, { ifMatch: state ? state.version : null });
    }
  }

  async patchStep(run, index, change) {
    this.render(await this.client.patchStep(index, { ...change, workflow_id: run.id }));
  }

  async finish(run, status) {
    this.render(await this.client.merge({ status, workflow_id: run.id }));
  }

  async finishCancelled(run) {
    await this.finish(run, 'cancelled');
    this.setMessage('⏹️ Workflow cancelled.', 'warning');
  }

  /** The live feed showed this run finished or replaced by someone else: write nothing more. */
  stoppedElsewhere(run) {
    const state = this.shown;
    this.sayStopped(state && state.workflow_id === run.id ? state.status : null);
    return undefined;
  }

  /** Say the run stopped because its workflow became `status` elsewhere (null: was replaced). */
  sayStopped(status) {
    if (status) {
      this.setMessage(`⏹️ This run was stopped from another tab or window (the workflow is ${status}).`, 'warning');
    } else {
      this.setMessage('⚠️ Another workflow replaced this run, so it stopped without overwriting it.', 'warning');
    }
  }

  /** A state write of the run was refused: say why, and show what is stored now. */
  async stopped(run, error) {
    let stored = null;
    try {
      stored = (await this.client.getState({ retries: 0 })).state;
    } catch {
      // keep the last state shown
    }
    if (stored !== null || (error instanceof ApiError && error.code === 'no_workflow')) {
      this.shown = null;
      this.render(stored);
    }
    if (error instanceof ApiError && error.code === 'workflow_finished') {
      this.sayStopped(stored && stored.workflow_id === run.id ? stored.status : 'finished');
    } else if (error instanceof ApiError && error.code === 'workflow_mismatch') {
      this.sayStopped(null);
    } else if (error instanceof ApiError && error.code === 'precondition_failed') {
      this.setMessage('⚠️ Another workflow started meanwhile, so this one was not started over it.', 'warning');
    } else {
      this.setMessage(`❌ The run stopped: ${describeError(error)}`, 'error');
    }
  }
}
