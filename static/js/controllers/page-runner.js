/**
 * The page as the runner (contract section 4, until section 9's server runs replace it): saves a
 * new workflow with POST, then for each enabled step PATCHes `in_progress`, calls the step's
 * action, PATCHes `completed` or `failed`, and ends with the workflow status. Disabled steps
 * are PATCHed `skipped`. No DOM.
 *
 * A runner drives the workflow of one controller, its host, through a small port:
 *   host.current           the newest state known from the server (or null)
 *   host.show(state, opts) a state the runner read or wrote ({force: true} shows it whatever
 *                          its version; {percent} when the answer carried progress_percent)
 *   host.say(message)      a message of ./messages.js
 *   host.sayFinished(state)
 *   host.changed()         the runner's own status (active, starting, cancelling) changed
 *   host.refresh()         look at the server again now
 *   host.ended()           a run ended (the finished list may have changed)
 * A server runner (POST /workflows/<id>/run, POST .../cancel) offers the same methods:
 * start, cancel, cancelOther, observe, isOther, isOrphan and the status getters.
 */

import { ApiError, describeError, isAbortError, sleep } from '../state-client.js';
import { message, otherRunMessage } from './messages.js';

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

/** A promise that never settles: the tab is going away and must write nothing more. */
const NEVER = () => new Promise(() => {});

export class PageRunner {
  /**
   * @param {object} parts
   * @param {import('../state-client.js').StateClient} parts.client
   * @param {object} parts.host the controller whose workflow this runner drives (see above)
   */
  constructor({ client, host }) {
    this.client = client;
    this.host = host;
    this.run = null; // the run this document drives
    this.starting = false;
    this.unloading = false;
  }

  /** A run is in progress in this document. */
  get active() {
    return Boolean(this.run);
  }

  /** Cancel was pressed and the run is winding down. */
  get cancelling() {
    return Boolean(this.run) && this.run.cancelled;
  }

  /** The run's workflow is saved: states from elsewhere now concern it. */
  get started() {
    return Boolean(this.run) && this.run.started;
  }

  /** The tab is going away (pagehide): a run in flight must write nothing more. */
  unload() {
    this.unloading = true;
  }

  /** A running workflow this tab neither drives nor started: Run would overwrite it. */
  isOther(state) {
    return (
      Boolean(state) &&
      state.status === 'running' &&
      (!this.run || state.workflow_id !== this.run.id) &&
      state.workflow_id !== ownedRun()
    );
  }

  /** A running workflow this tab started before a reload stopped it. */
  isOrphan(state) {
    return !this.run && Boolean(state) && state.status === 'running' && state.workflow_id === ownedRun();
  }

  /** A newer state of the run's workflow arrived from elsewhere: stop if it was finished or replaced. */
  observe(state) {
    const run = this.run;
    if (!run || !run.started) return;
    if (state.workflow_id !== run.id || state.status !== 'running') {
      run.stoppedElsewhere = true;
      run.controller.abort();
    }
  }

  /**
   * Run pressed: check nobody else runs a workflow, then drive a new one.
   * @param {{plan: Array<{index: number, action: string, label: string, endpoint?: string,
   *   enabled: boolean}>, ssh: string, stepDelayMs: number}} request
   */
  async start({ plan, ssh, stepDelayMs }) {
    if (this.run || this.starting) return;
    this.starting = true;
    this.host.changed();
    let current;
    try {
      const answer = await this.client.getState();
      current = answer.state;
      if (current) this.host.show(current, { percent: answer.progressPercent });
      if (current && current.status === 'running') {
        if (this.isOther(current)) {
          this.host.say({ ...otherRunMessage(current, this.host.catalog), kind: 'warning' });
          return;
        }
        // This tab's own run from before a reload: record it as cancelled before replacing it.
        current = await this.client.merge(
          { status: 'cancelled', workflow_id: current.workflow_id },
          { ifMatch: current.version },
        );
        this.host.show(current);
      }
    } catch (error) {
      this.host.say(message('start-error', { detail: describeError(error) }));
      return;
    } finally {
      this.starting = false;
      this.host.changed();
    }
    await this.execute({ plan, ssh, stepDelayMs }, current);
  }

  /** Cancel pressed while this tab runs: stop the action in flight, then record `cancelled`. */
  cancel() {
    const run = this.run;
    if (!run || run.cancelled) return;
    run.cancelled = true;
    run.controller.abort();
    this.host.say(message('cancelling'));
    this.host.changed();
  }

  /** "Cancel that run": mark another tab's workflow cancelled, unless it moved meanwhile. */
  async cancelOther() {
    const state = this.host.current;
    if (!this.isOther(state)) return;
    try {
      const stored = await this.client.merge(
        { status: 'cancelled', workflow_id: state.workflow_id },
        { ifMatch: state.version },
      );
      this.host.show(stored);
      this.host.say(message('marked-cancelled'));
    } catch (error) {
      if (error instanceof ApiError && error.status === 412) {
        this.host.say(message('still-moving'));
        this.host.refresh();
      } else {
        this.host.say(message('cancel-other-error', { detail: describeError(error) }));
      }
    }
  }

  async execute({ plan, ssh, stepDelayMs }, previous) {
    const run = {
      id: newWorkflowId(),
      controller: new AbortController(),
      started: false, // the new workflow is saved
      cancelled: false, // Cancel was pressed
      stoppedElsewhere: false, // another tab finished or replaced it
    };
    this.run = run;
    setOwnedRun(run.id);
    this.host.changed();
    this.host.say(message('starting'));
    const total = plan.length;
    try {
      const body = {
        workflow_id: run.id,
        status: 'running',
        current_step: 0,
        steps: plan.map(({ index, action, label, enabled }) => ({
          index,
          action,
          label,
          status: 'pending',
          enabled,
        })),
      };
      if (ssh) body.ssh_connection = ssh;
      this.host.show(await this.saveNew(body, previous), { reset: true });
      run.started = true;
      for (const step of plan) {
        const { index } = step;
        if (run.stoppedElsewhere) return this.stoppedElsewhere(run);
        if (run.cancelled) return await this.finishCancelled(run);
        if (!step.enabled) {
          await this.patchStep(run, index, { status: 'skipped' });
          continue;
        }
        this.host.say(message('step-running', { step: index + 1, total, label: step.label }));
        await this.patchStep(run, index, { status: 'in_progress' });
        let outcome;
        try {
          const answer = await this.client.runAction(
            step,
            { workflow_id: run.id, step: index, action: step.action, ssh_connection: ssh || null },
            { signal: run.controller.signal },
          );
          outcome = { ok: true, message: answer && typeof answer.message === 'string' ? answer.message : '' };
        } catch (error) {
          if (this.unloading) return NEVER(); // leave the state as it is: running
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
          this.host.say(message('step-failed', { step: index + 1, label: step.label, detail: outcome.message }));
          return undefined;
        }
        await this.patchStep(run, index, {
          status: 'completed',
          ...(outcome.message ? { data: { message: outcome.message } } : {}),
        });
        if (index < total - 1 && stepDelayMs > 0) {
          try {
            await sleep(stepDelayMs, run.controller.signal);
          } catch {
            if (run.stoppedElsewhere) return this.stoppedElsewhere(run);
            return await this.finishCancelled(run);
          }
        }
      }
      if (run.stoppedElsewhere) return this.stoppedElsewhere(run);
      if (run.cancelled) return await this.finishCancelled(run);
      this.host.sayFinished(await this.finish(run, 'completed'));
    } catch (error) {
      if (this.unloading) return NEVER();
      await this.stopped(run, error);
    } finally {
      this.run = null;
      this.host.changed();
      this.host.ended();
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
    this.host.show(await this.client.patchStep(index, { ...change, workflow_id: run.id }));
  }

  async finish(run, status) {
    const stored = await this.client.merge({ status, workflow_id: run.id });
    this.host.show(stored);
    return stored;
  }

  async finishCancelled(run) {
    await this.finish(run, 'cancelled');
    this.host.say(message('run-cancelled'));
  }

  /** The live feed showed this run finished or replaced by someone else: write nothing more. */
  stoppedElsewhere(run) {
    const state = this.host.current;
    this.sayStopped(state && state.workflow_id === run.id ? state.status : null);
    return undefined;
  }

  /** Say the run stopped because its workflow became `status` elsewhere (null: was replaced). */
  sayStopped(status) {
    this.host.say(status ? message('stopped-elsewhere', { status }) : message('replaced'));
  }

  /** A state write of the run was refused: say why, and show what is stored now. */
  async stopped(run, error) {
    let answer = null;
    try {
      answer = await this.client.getState({ retries: 0 });
    } catch {
      // keep the last state shown
    }
    const stored = answer ? answer.state : null;
    if (stored !== null || (error instanceof ApiError && error.code === 'no_workflow')) {
      this.host.show(stored, { force: true, percent: answer ? answer.progressPercent : undefined });
    }
    if (error instanceof ApiError && error.code === 'workflow_finished') {
      this.sayStopped(stored && stored.workflow_id === run.id ? stored.status : 'finished');
    } else if (error instanceof ApiError && error.code === 'workflow_mismatch') {
      this.sayStopped(null);
    } else if (error instanceof ApiError && error.code === 'precondition_failed') {
      this.host.say(message('not-started-over'));
    } else {
      this.host.say(message('run-stopped', { detail: describeError(error) }));
    }
  }
}
