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

/** "4 of 6 done · Sync Instance failed" */
function stepsText({ done, total, note }) {
  const text = `${done} of ${total} done`;
  if (!note) return text;
  return note.kind === 'failed' ? `${text} · ${note.label} failed` : `${text} · ${note.label}`;
}

export class InstancesView {
  /**
   * @param {object} parts
   * @param {import('../controllers/instances-controller.js').InstancesController} parts.controller
   * @param {Document} [parts.root]
   */
  constructor({ controller, root = document }) {
    this.controller = controller;
    this.body = root.getElementById('instances-body');
    this.empty = root.getElementById('instances-empty');
    this.error = root.getElementById('instances-error');
    controller.addEventListener('change', () => this.render(controller.view()));
    setInterval(() => this.render(controller.view()), REDRAW_MS);
  }

  /** Draw `model` (an InstancesController view). */
  render({ rows, error }) {
    this.body.replaceChildren(...rows.map((row) => this.row(row)));
    this.empty.hidden = rows.length > 0;
    showMessage(this.error, error);
    this.error.hidden = !error;
  }

  row(row) {
    const tr = fromTemplate('instance-row-template');
    tr.dataset.workflowId = row.id;
    fillSlots(tr, {
      ssh: row.ssh || 'no SSH connection given',
      id: row.id,
      status: STATUS_LABELS[row.status] || row.status,
      steps: stepsText(row),
    });
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
