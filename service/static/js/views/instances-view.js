/**
 * The Instances tab, drawn from an InstancesController's `view()`: one row per workflow from
 * the row template, then the recently finished ones from the history. Relative times ("3
 * minutes ago") are redrawn every 30 s to stay true.
 */

import { fillSlots, fromTemplate, showMessage } from './templates.js';

const STATUS_LABELS = {
  running: 'Running',
  blocked: 'Needs input',
  completed: 'Ready',
  failed: 'Failed',
  cancelled: 'Cancelled',
};
const REDRAW_MS = 30000;

/** "3 min ago" for an ISO time. */
function relative(moment) {
  const seconds = Math.max(0, Math.round((Date.now() - moment.getTime()) / 1000));
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  if (seconds < 60) return format.format(-seconds, 'second');
  if (seconds < 3600) return format.format(-Math.round(seconds / 60), 'minute');
  if (seconds < 86400) return format.format(-Math.round(seconds / 3600), 'hour');
  return format.format(-Math.round(seconds / 86400), 'day');
}

/** "Step 3 of 6 · 50%" (running), "6 of 6 steps · 100%" (completed). */
function stepsText({ status, step, total, percent }) {
  if (!total) return 'No steps';
  const where = status === 'completed' ? `${total} of ${total} steps` : `Step ${step} of ${total}`;
  return `${where} · ${percent}%`;
}

/** How a finished workflow ended: "6 of 6 steps done", "Failed at step 4 (Sync)". */
function outcomeText({ done, total, failedStep, failedLabel }) {
  if (failedStep) return `Failed at step ${failedStep} (${failedLabel})`;
  return `${done} of ${total} steps done`;
}

/** Fill a row's <time> with `iso` as "3 min ago" (the exact time in its title). */
function drawTime(time, iso) {
  if (!iso) {
    time.textContent = '—';
    return;
  }
  const moment = new Date(iso);
  time.dateTime = iso;
  time.title = moment.toLocaleString();
  time.textContent = relative(moment);
}

export class InstancesView {
  /**
   * @param {object} parts
   * @param {import('../controllers/instances-controller.js').InstancesController} parts.controller
   * @param {(id: string) => void} parts.onOpen a row's link was followed (plain click)
   * @param {(id: string) => void} parts.onRecord a recently finished one is to be shown
   * @param {Document} [parts.root]
   */
  constructor({ controller, onOpen, onRecord, root = document }) {
    this.controller = controller;
    this.body = root.getElementById('instances-body');
    this.empty = root.getElementById('instances-empty');
    this.error = root.getElementById('instances-error');
    this.recent = root.getElementById('recent');
    this.recentBody = root.getElementById('recent-body');
    controller.addEventListener('change', () => this.render(controller.view()));
    setInterval(() => this.render(controller.view()), REDRAW_MS);
    // A plain click opens the workflow in this page; a middle or modified click opens a new tab.
    this.body.addEventListener('click', (event) => {
      const link = event.target.closest('a.workflow-link');
      if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
        return;
      }
      event.preventDefault();
      onOpen(link.closest('tr').dataset.workflowId);
    });
    this.recentBody.addEventListener('click', (event) => {
      const button = event.target.closest('button.record-link');
      if (button) onRecord(button.closest('tr').dataset.workflowId);
    });
  }

  /** Draw `model` (an InstancesController view). */
  render({ rows, recent, loaded, error }) {
    this.body.replaceChildren(...rows.map((row) => this.row(row)));
    this.empty.hidden = rows.length > 0 || !loaded || recent.length > 0;
    showMessage(this.error, error);
    this.error.hidden = !error;
    this.recentBody.replaceChildren(...recent.map((row) => this.recentRow(row)));
    this.recent.hidden = !recent.length;
  }

  row(row) {
    const tr = drawRow('instance-row-template', row, { ssh: row.ssh, steps: stepsText(row) });
    const link = tr.querySelector('a.workflow-link');
    link.href = row.href;
    if (row.open) {
      tr.classList.add('is-open');
      link.setAttribute('aria-current', 'page');
    }
    tr.classList.toggle('needs-input', row.needsInput);
    tr.querySelector('.ssh').hidden = !row.ssh;
    return tr;
  }

  recentRow(row) {
    return drawRow('recent-row-template', row, { steps: outcomeText(row) });
  }
}

/** A row of template `id` for `row`: its name, id, status badge and time, and `slots`. */
function drawRow(id, row, slots) {
  const tr = fromTemplate(id);
  tr.dataset.workflowId = row.id;
  tr.dataset.status = row.status;
  fillSlots(tr, { name: row.name, id: row.id, status: STATUS_LABELS[row.status] || row.status, ...slots });
  tr.querySelector('.workflow-id').hidden = row.name === row.id;
  tr.querySelector('.badge').classList.add(`badge-${row.status}`);
  drawTime(tr.querySelector('time'), row.updated);
  return tr;
}
