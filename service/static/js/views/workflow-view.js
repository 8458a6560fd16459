/**
 * The VastAI Setup tab, drawn from a WorkflowController's `view()`: step cards and arrows from
 * their templates, the progress bar, the status line, the Run button and the hint. It keeps no
 * state of its own beyond the cards it drew; clicks go to the controller's intents.
 */

import { fillSlots, fromTemplate, showMessage } from './templates.js';

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
const RUN_LABELS = {
  run: 'Run workflow',
  resume: 'Resume on the server',
  cancel: 'Cancel',
  cancelling: 'Cancelling…',
};
const MESSAGE_KINDS = ['info', 'success', 'warning', 'error'];
const PROGRESS_CLASSES = ['is-running', 'is-completed', 'is-failed', 'is-cancelled'];

export class WorkflowView {
  /**
   * @param {object} parts
   * @param {import('../controllers/workflow-controller.js').WorkflowController} parts.controller
   * @param {Document} [parts.root]
   */
  constructor({ controller, root = document }) {
    this.controller = null;
    this.detach = null;
    const byId = (id) => root.getElementById(id);
    this.dom = {
      steps: byId('workflow-steps'),
      ssh: byId('sshConnectionString'),
      run: byId('run-workflow-btn'),
      stopOther: byId('stop-other-btn'),
      newSetup: byId('new-workflow-btn'),
      hint: byId('run-hint'),
      progress: byId('workflow-progress'),
      progressFill: byId('workflow-progress').querySelector('.progress-fill'),
      progressLabel: byId('progress-label'),
      result: byId('setup-result'),
    };
    this.layoutKey = null;
    this.said = undefined; // the message drawn: redrawn only when it changes (a live region)
    this.hinted = undefined;
    this.cards = [];
    this.arrows = [];

    this.dom.run.addEventListener('click', () => this.controller.runOrCancel({ ssh: this.dom.ssh.value }));
    this.dom.stopOther.addEventListener('click', () => this.controller.cancelOther());
    this.dom.newSetup.addEventListener('click', () => {
      this.controller.close();
      this.dom.ssh.focus();
    });
    this.dom.steps.addEventListener('change', (event) => {
      const toggle = event.target.closest('.step-toggle');
      const card = toggle && toggle.closest('.workflow-step');
      if (card) this.controller.setEnabled(card.dataset.action, toggle.checked);
    });
    this.attach(controller);
  }

  /** Draw `controller`'s workflow from now on (another workflow opened: another controller). */
  attach(controller) {
    if (this.detach) this.detach.abort();
    this.detach = new AbortController();
    this.controller = controller;
    controller.addEventListener('change', () => this.render(controller.view()), { signal: this.detach.signal });
    this.render(controller.view());
  }

  /** Put the SSH connection of an opened workflow into its field. */
  fillSsh(value) {
    this.dom.ssh.value = value;
  }

  /** Draw `model` (a WorkflowController view). */
  render(model) {
    this.drawLayout(model.steps);
    model.steps.forEach((step, index) => this.drawStep(this.cards[index], step));
    model.arrows.forEach((arrow, index) => {
      this.arrows[index].classList.toggle('completed', arrow.completed);
      this.arrows[index].classList.toggle('loading', arrow.loading);
    });
    this.drawProgress(model.progress);
    this.drawMessage(model.message);
    this.drawControls(model);
  }

  /** Rebuild the cards and arrows only when the list of steps changed (keeps focus and toggles). */
  drawLayout(steps) {
    const key = JSON.stringify(steps.map((step) => [step.action, step.label]));
    if (key === this.layoutKey) return;
    this.layoutKey = key;
    this.cards = [];
    this.arrows = [];
    const nodes = [];
    steps.forEach((step, index) => {
      if (index > 0) {
        const arrow = fromTemplate('workflow-arrow-template');
        this.arrows.push(arrow);
        nodes.push(arrow);
      }
      const card = fromTemplate('workflow-step-template');
      card.dataset.action = step.action;
      card.dataset.index = String(index);
      fillSlots(card, { number: index + 1, label: step.label, action: step.action });
      card.querySelector('.switch').title = `Run “${step.label}”`;
      card.querySelector('.step-toggle').setAttribute('aria-label', `Enable ${step.label}`);
      this.cards.push(card);
      nodes.push(card);
    });
    this.dom.steps.replaceChildren(...nodes);
  }

  drawStep(card, step) {
    card.classList.remove(...ALL_STEP_CLASSES);
    if (STEP_CLASSES[step.status]) card.classList.add(STEP_CLASSES[step.status]);
    card.classList.toggle('disabled', !step.enabled);
    card.dataset.status = step.status;
    if (step.current) card.setAttribute('aria-current', 'step');
    else card.removeAttribute('aria-current');
    card.querySelector('.step-status').textContent = STEP_TEXT[step.status] || step.status;
    card.querySelector('.step-mark').textContent = STEP_MARK[step.status] || String(step.index + 1);
    const note = card.querySelector('.step-note');
    note.textContent = step.note;
    note.hidden = !step.note;
    const toggle = card.querySelector('.step-toggle');
    toggle.checked = step.enabled;
    toggle.disabled = step.locked;
  }

  drawProgress({ percent, step, total, status }) {
    const bar = this.dom.progress;
    bar.setAttribute('aria-valuenow', String(percent));
    bar.setAttribute('aria-valuetext', total ? `${percent}% (step ${step} of ${total}, ${status})` : `${percent}%`);
    bar.classList.remove(...PROGRESS_CLASSES);
    if (status) bar.classList.add(`is-${status}`);
    this.dom.progressFill.style.width = `${percent}%`; // CSSOM: allowed under the page's CSP
    this.dom.progressLabel.textContent = `${percent}%`;
  }

  /** #setup-result: the message's words, and exactly one class, its kind (contract section 4). */
  drawMessage(said) {
    if (said === this.said) return;
    this.said = said;
    const result = this.dom.result;
    showMessage(result, said);
    result.className = said && MESSAGE_KINDS.includes(said.kind) ? said.kind : 'info';
  }

  drawControls({ run, sshLocked, stopOther, newSetup, hint }) {
    const button = this.dom.run;
    const starts = run.mode === 'run' || run.mode === 'resume';
    button.textContent = RUN_LABELS[run.mode];
    button.classList.toggle('btn-danger', !starts);
    button.classList.toggle('btn-primary', starts);
    button.disabled = run.disabled;
    this.dom.ssh.disabled = sshLocked;
    this.dom.stopOther.hidden = !stopOther;
    this.dom.newSetup.hidden = !newSetup;
    if (hint && hint.key !== (this.hinted && this.hinted.key)) showMessage(this.dom.hint, hint);
    this.hinted = hint;
    this.dom.hint.hidden = !hint;
  }
}
