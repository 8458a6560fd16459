/**
 * The Instances tab: the machine being set up now, and the setups that finished recently
 * (GET /workflow/history, kept 7 days), newest first.
 */

import { describeError } from './state-client.js';

const STATUS_LABELS = {
  running: 'Running',
  completed: 'Ready',
  failed: 'Failed',
  cancelled: 'Cancelled',
};

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** "3 min ago" for an ISO time, with the exact time in a title. */
function timeCell(iso) {
  const cell = element('td', 'when');
  cell.dataset.label = 'Updated';
  if (!iso) {
    cell.textContent = '—';
    return cell;
  }
  const moment = new Date(iso);
  const time = element('time');
  time.dateTime = iso;
  time.title = moment.toLocaleString();
  const seconds = Math.max(0, Math.round((Date.now() - moment.getTime()) / 1000));
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  if (seconds < 60) time.textContent = format.format(-seconds, 'second');
  else if (seconds < 3600) time.textContent = format.format(-Math.round(seconds / 60), 'minute');
  else if (seconds < 86400) time.textContent = format.format(-Math.round(seconds / 3600), 'hour');
  else time.textContent = format.format(-Math.round(seconds / 86400), 'day');
  cell.append(time);
  return cell;
}

function stepsSummary(workflow, labelOf) {
  const steps = Array.isArray(workflow.steps) ? workflow.steps : [];
  const done = steps.filter((step) => step.status === 'completed').length;
  const failed = steps.find((step) => step.status === 'failed');
  const text = `${done} of ${steps.length} done`;
  if (failed) return `${text} · ${labelOf(failed)} failed`;
  if (workflow.status === 'running') {
    const current = steps[workflow.current_step];
    if (current) return `${text} · ${labelOf(current)}`;
  }
  return text;
}

export class InstancesView {
  /** @param {{client: any, body: Element, empty: Element, error: Element}} parts */
  constructor({ client, body, empty, error }) {
    this.client = client;
    this.body = body;
    this.empty = empty;
    this.error = error;
    this.current = null;
    this.history = [];
    this.loading = null;
    // Set by the page to its own step labelling; this default serves a page without config.
    this.labelOf = (step) => step.label || step.action;
    setInterval(() => this.render(), 30000); // keep "2 minutes ago" true
  }

  /** Show `state` (the current workflow, or null) at the top of the list. */
  setCurrent(state) {
    this.current = state;
    this.render();
  }

  /** Fetch the history again (debounced to one request at a time). */
  async refresh() {
    if (this.loading) return this.loading;
    this.loading = (async () => {
      try {
        this.history = await this.client.history(20);
        this.error.hidden = true;
      } catch (error) {
        this.error.textContent = `History unavailable: ${describeError(error)}`;
        this.error.hidden = false;
      } finally {
        this.loading = null;
      }
      this.render();
    })();
    return this.loading;
  }

  render() {
    const rows = [];
    const seen = new Set();
    for (const workflow of [this.current, ...this.history]) {
      if (!workflow || seen.has(workflow.workflow_id)) continue;
      seen.add(workflow.workflow_id);
      rows.push(workflow);
    }
    this.body.replaceChildren(...rows.map((workflow) => this.row(workflow)));
    this.empty.hidden = rows.length > 0;
  }

  row(workflow) {
    const tr = element('tr');
    tr.dataset.workflowId = workflow.workflow_id;

    const instance = element('td', 'instance');
    instance.dataset.label = 'Instance';
    const ssh = typeof workflow.ssh_connection === 'string' ? workflow.ssh_connection : '';
    instance.append(element('code', 'ssh', ssh || 'no SSH connection given'));
    instance.append(element('span', 'workflow-id', workflow.workflow_id));

    const status = element('td', 'status');
    status.dataset.label = 'Status';
    status.append(
      element('span', `badge badge-${workflow.status}`, STATUS_LABELS[workflow.status] || workflow.status),
    );

    const steps = element('td', 'steps', stepsSummary(workflow, (step) => this.labelOf(step)));
    steps.dataset.label = 'Steps';

    tr.append(instance, status, steps, timeCell(workflow.last_update));
    return tr;
  }
}
