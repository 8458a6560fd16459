/**
 * The Instances list: the owner's workflows, most recently updated first, kept live by a list
 * source (live.js `WorkflowList`: a `snapshot` of `GET /workflows` each time its stream opens,
 * then one `entry` per change), and the recently finished ones from the history (live.js
 * `RecentRuns`: `GET /workflow/history`) that are no longer in that list. No DOM: a view renders
 * `view()` after every `change`.
 *
 * An entry is a workflow's summary with its `version`; an entry `{workflow_id, state: null}`
 * says the workflow was deleted or expired. Versions never go back, so an entry older than the
 * one held is old news. A finished workflow stays in the list until it expires; the history
 * keeps it after that, so it moves to "Recently finished" instead of vanishing.
 *
 * A row names its workflow by its `label`, else the host of its `ssh_connection`, else its id.
 * An entry without those fields has them looked up once (live.js `WorkflowNames`).
 */

import { describeError } from '../state-client.js';
import { message } from './messages.js';
import { entryPercent, failedStepIndex, isActive, workflowName } from './states.js';

export const LIST_LIMIT = 50;
export const RECENT_LIMIT = 10;

/** Where a workflow opens: the page with `?workflow=<id>`. */
export function workflowHref(id) {
  return `/?workflow=${encodeURIComponent(id)}`;
}

/** Whether a list entry says what names its workflow (else it is looked up). */
function carriesName(entry) {
  return 'label' in entry || 'ssh_connection' in entry;
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
   * @param {EventTarget & {refresh(): void}} [parts.history] the finished workflows: event
   *   `history` (detail {workflows}); `refresh()` reads them again
   * @param {EventTarget & {lookup(id: string): void}} [parts.names] what names a workflow:
   *   event `name` (detail {workflow_id, label, ssh_connection}); `lookup(id)` asks for one
   * @param {number} [parts.limit] how many rows to show at most
   * @param {number} [parts.recentLimit] how many recently finished ones to show at most
   */
  constructor({ list, history = null, names = null, limit = LIST_LIMIT, recentLimit = RECENT_LIMIT }) {
    super();
    this.limit = limit;
    this.recentLimit = recentLimit;
    this.history = history;
    this.names = names;
    this.looked = new Map(); // workflow id → {label, ssh_connection} looked up
    this.entries = new Map(); // workflow id → its newest entry
    this.finished = []; // the history: finished states, newest first
    this.loaded = false; // a snapshot arrived
    this.error = null; // a message when the list could not be read
    this.openId = null; // the workflow the VastAI Setup tab shows
    list.addEventListener('snapshot', (event) => this.replace(event.detail.workflows));
    list.addEventListener('entry', (event) => this.apply(event.detail));
    list.addEventListener('failed', (event) => this.fail(event.detail));
    if (history) history.addEventListener('history', (event) => this.setHistory(event.detail.workflows));
    if (names) names.addEventListener('name', (event) => this.setName(event.detail));
  }

  /** What names workflow `id`, looked up because its list entry does not say. */
  setName({ workflow_id: id, label, ssh_connection: ssh }) {
    this.looked.set(id, { label, ssh_connection: ssh });
    if (this.entries.has(id)) this.changed();
  }

  /** Ask what names the workflow of `entry` when the entry does not say (once per workflow). */
  askName(entry) {
    if (this.names && !carriesName(entry) && !this.looked.has(entry.workflow_id)) {
      this.names.lookup(entry.workflow_id);
    }
  }

  /** `entry` with what names it: its own fields, else those looked up. */
  withName(entry) {
    const named = this.looked.get(entry.workflow_id);
    return named && !carriesName(entry) ? { ...named, ...entry } : entry;
  }

  /** The whole list as the server has it now (what is not in it was deleted or expired). */
  replace(workflows) {
    const entries = new Map();
    for (const entry of Array.isArray(workflows) ? workflows : []) {
      if (entry && typeof entry.workflow_id === 'string') entries.set(entry.workflow_id, entry);
    }
    // Read the history when something may have joined it: the first time, when a workflow left
    // the list, and when one finished.
    const news =
      !this.loaded ||
      [...this.entries.keys()].some((id) => !entries.has(id)) ||
      [...entries.values()].some((entry) => this.justFinished(entry));
    this.entries = entries;
    this.loaded = true;
    this.error = null;
    this.changed();
    for (const entry of entries.values()) this.askName(entry);
    if (news) this.readHistory();
  }

  /** One change: a newer entry replaces the one held; `state: null` removes it. */
  apply(entry) {
    const id = entry.workflow_id;
    if (entry.state === null && !('status' in entry)) {
      if (this.entries.delete(id)) {
        this.changed();
        this.readHistory();
      }
      return;
    }
    const held = this.entries.get(id);
    if (held && typeof held.version === 'number' && !(entry.version > held.version)) return;
    const finished = this.justFinished(entry);
    this.entries.set(id, entry);
    this.changed();
    this.askName(entry);
    if (finished) this.readHistory();
  }

  /** Whether `entry` says its workflow finished since the entry held for it. */
  justFinished(entry) {
    if (isActive(entry)) return false;
    const held = this.entries.get(entry.workflow_id);
    return !held || isActive(held);
  }

  readHistory() {
    if (this.history) this.history.refresh();
  }

  /** The finished workflows the history holds (full states, newest first). */
  setHistory(workflows) {
    this.finished = (Array.isArray(workflows) ? workflows : []).filter(
      (state) => state && typeof state.workflow_id === 'string',
    );
    this.changed();
  }

  /** The history's record of workflow `id` (a finished state), or null. */
  record(id) {
    return this.finished.find((state) => state.workflow_id === id) || null;
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

  /** The rows to draw, newest first, the recently finished ones, and the error (or null). */
  view() {
    const rows = [...this.entries.values()]
      .sort(newestFirst)
      .slice(0, this.limit)
      .map((entry) => this.row(this.withName(entry)));
    // One record per workflow (the newest), and none that the list above still shows.
    const seen = new Set(this.entries.keys());
    const recent = [];
    for (const state of this.finished) {
      if (recent.length >= this.recentLimit) break;
      if (seen.has(state.workflow_id)) continue;
      seen.add(state.workflow_id);
      recent.push(this.recentRow(state));
    }
    return { rows, recent, loaded: this.loaded, error: this.error };
  }

  row(entry) {
    const total = Number(entry.total_steps) || 0;
    const ssh = typeof entry.ssh_connection === 'string' ? entry.ssh_connection : '';
    const labelled = typeof entry.label === 'string' && entry.label.trim() !== '';
    return {
      id: entry.workflow_id,
      name: workflowName(entry),
      href: workflowHref(entry.workflow_id),
      status: entry.status,
      needsInput: entry.status === 'blocked',
      step: total ? Math.min(total, (Number(entry.current_step) || 0) + 1) : 0,
      total,
      percent: entryPercent(entry),
      ssh: labelled ? ssh : '', // otherwise the name is its host already
      updated: entry.last_update || null,
      open: entry.workflow_id === this.openId,
    };
  }

  /** A finished workflow of the history: how it ended, and when. */
  recentRow(state) {
    const steps = Array.isArray(state.steps) ? state.steps : [];
    const failedAt = state.status === 'failed' && steps.length ? failedStepIndex(state) : -1;
    const failed = failedAt >= 0 ? steps[failedAt] : null;
    return {
      id: state.workflow_id,
      name: workflowName(state),
      status: state.status,
      done: steps.filter((step) => step && step.status === 'completed').length,
      total: steps.length,
      failedStep: failed ? failedAt + 1 : 0,
      failedLabel: failed ? failed.label || failed.action : '',
      updated: state.last_update || null,
    };
  }

  changed() {
    this.dispatchEvent(new CustomEvent('change'));
  }
}
