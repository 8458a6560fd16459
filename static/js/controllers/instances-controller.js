/**
 * The Instances list: the workflow being set up now, then the setups that finished recently
 * (GET /workflow/history, kept 7 days), newest first. No DOM: a view renders `view()` after
 * every `change`.
 *
 * Today the current workflow comes from the followed workflow's controller (`setCurrent`) and
 * the finished ones from `refresh()`. When the service lists every workflow of an owner
 * (GET /workflows and its stream), a list source replaces both and this stays the model the
 * view draws.
 */

import { describeError } from '../state-client.js';
import { message } from './messages.js';

const HISTORY_LIMIT = 20;

export class InstancesController extends EventTarget {
  /**
   * @param {object} parts
   * @param {import('../state-client.js').StateClient} parts.client
   * @param {import('./catalog.js').StepCatalog} parts.catalog for step labels
   */
  constructor({ client, catalog }) {
    super();
    this.client = client;
    this.catalog = catalog;
    this.current = null;
    this.history = [];
    this.error = null; // a message when the history could not be read
    this.loading = null;
  }

  /** Show `state` (the current workflow, or null) at the top of the list. */
  setCurrent(state) {
    this.current = state;
    this.changed();
  }

  /** Fetch the finished workflows again (one request at a time). */
  refresh() {
    if (this.loading) return this.loading;
    this.loading = (async () => {
      try {
        this.history = await this.client.history(HISTORY_LIMIT);
        this.error = null;
      } catch (error) {
        this.error = message('history-error', { detail: describeError(error) });
      } finally {
        this.loading = null;
      }
      this.changed();
    })();
    return this.loading;
  }

  /** The rows to draw, each workflow once, and the error to show (or null). */
  view() {
    const rows = [];
    const seen = new Set();
    for (const workflow of [this.current, ...this.history]) {
      if (!workflow || seen.has(workflow.workflow_id)) continue;
      seen.add(workflow.workflow_id);
      rows.push(this.row(workflow));
    }
    return { rows, error: this.error };
  }

  row(workflow) {
    const steps = Array.isArray(workflow.steps) ? workflow.steps : [];
    const failed = steps.find((step) => step.status === 'failed');
    const current = workflow.status === 'running' ? steps[workflow.current_step] : undefined;
    let note = null;
    if (failed) note = { kind: 'failed', label: this.catalog.labelOf(failed) };
    else if (current) note = { kind: 'current', label: this.catalog.labelOf(current) };
    return {
      id: workflow.workflow_id,
      ssh: typeof workflow.ssh_connection === 'string' ? workflow.ssh_connection : '',
      status: workflow.status,
      done: steps.filter((step) => step.status === 'completed').length,
      total: steps.length,
      note,
      updated: workflow.last_update || null,
    };
  }

  changed() {
    this.dispatchEvent(new CustomEvent('change'));
  }
}
