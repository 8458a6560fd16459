/**
 * The Instances tab, drawn from an InstancesController's `view()`: one row per workflow from
 * the row template. Relative times ("3 minutes ago") are redrawn every 30 s to stay true.
 */

import { fillSlots, fromTemplate, showMessage } from './templates.js';

const STATUS_LABELS = {
  running: 'Running',
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

export class InstancesView {
  /**
   * @param {object} parts
   * @param {import('../controllers/instances-controller.js').InstancesController} parts.controller
   * @param {(id: string) => void} parts.onOpen a row's link was followed (plain click)
   * @param {Document} [parts.root]
   */
  constructor({ controller, onOpen, root = document }) {
    this.controller = controller;
    this.body = root.getElementById('instances-body');
    this.empty = root.getElementById('instances-empty');
    this.error = root.getElementById('instances-error');
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
  }

  /** Draw `model` (an InstancesController view). */
  render({ rows, loaded, error }) {
    this.body.replaceChildren(...rows.map((row) => this.row(row)));
    this.empty.hidden = rows.length > 0 || !loaded;
    showMessage(this.error, error);
    this.error.hidden = !error;
  }

  row(row) {
    const tr = fromTemplate('instance-row-template');
    tr.dataset.workflowId = row.id;
    tr.dataset.status = row.status;
    fillSlots(tr, {
      id: row.id,
      ssh: row.ssh,
      status: STATUS_LABELS[row.status] || row.status,
      steps: stepsText(row),
    });
    const link = tr.querySelector('a.workflow-link');
    link.href = row.href;
    if (row.open) {
      tr.classList.add('is-open');
      link.setAttribute('aria-current', 'page');
    }
    tr.querySelector('.ssh').hidden = !row.ssh;
    tr.querySelector('.badge').classList.add(`badge-${row.status}`);
    const time = tr.querySelector('time');
    if (row.updated) {
      const moment = new Date(row.updated);
      time.dateTime = row.updated;
      time.title = moment.toLocaleString();
      time.textContent = relative(moment);
    } else {
      time.textContent = '—';
    }
    return tr;
  }
}
