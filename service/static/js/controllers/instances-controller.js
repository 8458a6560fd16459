/**
 * The Instances list: the owner's workflows (contract section 8), most recently updated first,
 * kept live by a list source (live.js `WorkflowList`: a `snapshot` of `GET /workflows` each time
 * its stream opens, then one `entry` per change). No DOM: a view renders `view()` after every
 * `change`.
 *
 * An entry is a workflow's summary with its `version`; an entry `{workflow_id, state: null}`
 * says the workflow was deleted or expired. Versions never go back, so an entry older than the
 * one held is old news.
 */

import { describeError } from '../state-client.js';
import { message } from './messages.js';

export const LIST_LIMIT = 50;

/** Where a workflow opens: the page with `?workflow=<id>`. */
export function workflowHref(id) {
  return `/?workflow=${encodeURIComponent(id)}`;
}

/** The order of the list: `last_update` descending, then workflow id descending. */
function newestFirst(a, b) {
  const when = (entry) => Date.parse(entry.last_update) || 0;
  const delta = when(b) - when(a);
  if (delta) return delta;
  if (a.workflow_id === b.workflow_id) return 0;
  return a.workflow_id < b.workflow_id ? 1 : -1;
}

export class InstancesController extends EventTarget {
  /**
   * @param {object} parts
   * @param {EventTarget} parts.list the list source: events `snapshot`, `entry`, `failed`
   * @param {number} [parts.limit] how many rows to show at most
   */
  constructor({ list, limit = LIST_LIMIT }) {
    super();
    this.limit = limit;
    this.entries = new Map(); // workflow id → its newest entry
    this.loaded = false; // a snapshot arrived
    this.error = null; // a message when the list could not be read
    this.openId = null; // the workflow the VastAI Setup tab shows
    list.addEventListener('snapshot', (event) => this.replace(event.detail.workflows));
    list.addEventListener('entry', (event) => this.apply(event.detail));
    list.addEventListener('failed', (event) => this.fail(event.detail));
  }

  /** The whole list as the server has it now (what is not in it was deleted or expired). */
  replace(workflows) {
    const entries = new Map();
    for (const entry of Array.isArray(workflows) ? workflows : []) {
      if (entry && typeof entry.workflow_id === 'string') entries.set(entry.workflow_id, entry);
    }
    this.entries = entries;
    this.loaded = true;
    this.error = null;
    this.changed();
  }

  /** One change: a newer entry replaces the one held; `state: null` removes it. */
  apply(entry) {
    const id = entry.workflow_id;
    if (entry.state === null && !('status' in entry)) {
      if (this.entries.delete(id)) this.changed();
      return;
    }
    const held = this.entries.get(id);
    if (held && typeof held.version === 'number' && !(entry.version > held.version)) return;
    this.entries.set(id, entry);
    this.changed();
  }

  /** The list could not be read: say so (the rows shown stay). */
  fail(error) {
    this.error = message('instances-error', { detail: describeError(error) });
    this.changed();
  }

  /** The workflow the setup tab shows now (its row is marked). */
  setOpen(id) {
    if (id === this.openId) return;
    this.openId = id;
    this.changed();
  }

  /** The rows to draw, newest first, and the error to show (or null). */
  view() {
    const rows = [...this.entries.values()]
      .sort(newestFirst)
      .slice(0, this.limit)
      .map((entry) => this.row(entry));
    return { rows, loaded: this.loaded, error: this.error };
  }

  row(entry) {
    const total = Number(entry.total_steps) || 0;
    return {
      id: entry.workflow_id,
      href: workflowHref(entry.workflow_id),
      status: entry.status,
      step: total ? Math.min(total, (Number(entry.current_step) || 0) + 1) : 0,
      total,
      percent: typeof entry.progress_percent === 'number' ? entry.progress_percent : 0,
      ssh: typeof entry.ssh_connection === 'string' ? entry.ssh_connection : '',
      updated: entry.last_update || null,
      open: entry.workflow_id === this.openId,
    };
  }

  changed() {
    this.dispatchEvent(new CustomEvent('change'));
  }
}
