/**
 * The VastAI Setup tab, drawn from a WorkflowController's `view()`: step cards and arrows from
 * their templates (with a running step's own progress, tasks and next try), the progress bar,
 * the status line with the form a blocked step asks for, the Run, Delete and Retry buttons and
 * the hint. It keeps no state of its own beyond the nodes it drew; clicks go to the controller's
 * intents.
 */

import { message } from '../controllers/messages.js';
import { fillSlots, fromTemplate, showMessage } from './templates.js';

/** Step status → the class its card carries (pending carries none). */
const STEP_CLASSES = {
  in_progress: 'in-progress',
  blocked: 'blocked',
  completed: 'completed',
  failed: 'failed',
  skipped: 'skipped',
  cancelled: 'cancelled',
};
const ALL_STEP_CLASSES = Object.values(STEP_CLASSES);
const STEP_TEXT = {
  pending: 'Pending',
  in_progress: 'Running…',
  blocked: 'Needs your answer',
  completed: 'Done',
  failed: 'Failed',
  skipped: 'Skipped',
  cancelled: 'Cancelled',
};
const STEP_MARK = { completed: '✓', failed: '✕', skipped: '–', cancelled: '■', blocked: '?' };
const TASK_MARK = { completed: '✓', failed: '✕', skipped: '–', in_progress: '●', pending: '○' };
const RUN_LABELS = {
  run: 'Run workflow',
  'run-remaining': 'Run on the server',
  cancel: 'Cancel',
  cancelling: 'Cancelling…',
  none: '',
};
const MESSAGE_KINDS = ['info', 'success', 'warning', 'error'];
const PROGRESS_CLASSES = ['is-running', 'is-blocked', 'is-completed', 'is-failed', 'is-cancelled'];
const TICK_MS = 1000; // a next try's countdown is redrawn every second

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
      remove: byId('delete-workflow-btn'),
      newSetup: byId('new-workflow-btn'),
      hint: byId('run-hint'),
      progress: byId('workflow-progress'),
      progressFill: byId('workflow-progress').querySelector('.progress-fill'),
      progressLabel: byId('progress-label'),
      result: byId('setup-result'),
      said: byId('setup-message'),
      resultActions: byId('result-actions'),
      retry: byId('retry-workflow-btn'),
      panel: byId('setup-result').closest('[role="tabpanel"]'),
    };
    this.root = root;
    this.layoutKey = null;
    this.said = undefined; // the message drawn: redrawn only when it changes (a live region)
    this.hinted = undefined;
    this.cards = [];
    this.arrows = [];
    this.form = null; // the blocked step's form, while there is one
    this.formKey = null; // which question it answers (rebuilt only for another one)
    this.ticker = null; // redraws a next try's countdown
    this.model = null;

    this.dom.run.addEventListener('click', () => this.controller.runOrCancel({ ssh: this.dom.ssh.value }));
    this.dom.remove.addEventListener('click', () => this.controller.remove());
    this.dom.retry.addEventListener('click', () => this.controller.retry());
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
    this.model = model;
    this.drawLayout(model.steps);
    model.steps.forEach((step, index) => this.drawStep(this.cards[index], step));
    model.arrows.forEach((arrow, index) => {
      this.arrows[index].classList.toggle('completed', arrow.completed);
      this.arrows[index].classList.toggle('loading', arrow.loading);
    });
    this.drawProgress(model.progress);
    this.drawMessage(model.message);
    this.drawForm(model.blocked);
    this.dom.result.hidden = !model.message && !this.form;
    this.drawControls(model);
    this.tick(model.steps.some((step) => step.retryAt));
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
      card.querySelector('.step-progress-bar').setAttribute('aria-label', `Progress of ${step.label}`);
      card.querySelector('.step-tasks').setAttribute('aria-label', `Tasks of ${step.label}`);
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
    this.drawStepProgress(card, step.progress);
    this.drawRetry(card.querySelector('.step-retry'), step.retryAt);
    this.drawTasks(card.querySelector('.step-tasks'), step.tasks);
    const toggle = card.querySelector('.step-toggle');
    toggle.checked = step.enabled;
    toggle.disabled = step.locked;
  }

  /** A running step's own report: its percent (a small bar) and its message. */
  drawStepProgress(card, progress) {
    const box = card.querySelector('.step-progress');
    box.hidden = !progress;
    if (!progress) return;
    const bar = card.querySelector('.step-progress-bar');
    const known = typeof progress.percent === 'number';
    bar.closest('.step-progress-row').hidden = !known;
    if (known) {
      bar.setAttribute('aria-valuenow', String(progress.percent));
      bar.querySelector('.progress-fill').style.width = `${progress.percent}%`;
      card.querySelector('.step-percent').textContent = `${progress.percent}%`;
    }
    const said = card.querySelector('.step-progress-message');
    said.textContent = progress.message;
    said.hidden = !progress.message;
  }

  /** When a step waiting to be tried again will be: "Trying again in 12 s". */
  drawRetry(node, at) {
    node.hidden = !at;
    if (!at) return;
    const when = new Date(at);
    const seconds = Math.ceil((when.getTime() - Date.now()) / 1000);
    const said = seconds > 0 ? message('retry-in', { seconds }) : message('retry-now');
    showMessage(node, said);
    node.title = when.toLocaleTimeString();
  }

  drawTasks(list, tasks) {
    list.hidden = !tasks.length;
    const items = tasks.map((task) => {
      const item = fromTemplate('step-task-template');
      item.dataset.status = task.status;
      fillSlots(item, {
        name: task.name,
        status: STEP_TEXT[task.status] || task.status,
        note: task.note,
      });
      item.querySelector('.task-mark').textContent = TASK_MARK[task.status] || '○';
      item.querySelector('.task-note').hidden = !task.note;
      return item;
    });
    list.replaceChildren(...items);
  }

  /** Redraw the countdowns every second while a step waits to be tried again. */
  tick(on) {
    if (on && !this.ticker) {
      this.ticker = setInterval(() => {
        this.model.steps.forEach((step, index) => {
          this.drawRetry(this.cards[index].querySelector('.step-retry'), step.retryAt);
        });
      }, TICK_MS);
    } else if (!on && this.ticker) {
      clearInterval(this.ticker);
      this.ticker = null;
    }
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

  /** #setup-result: the message's words, and exactly one class, its kind. */
  drawMessage(said) {
    if (said === this.said) return;
    this.said = said;
    const result = this.dom.result;
    showMessage(this.dom.said, said);
    result.className = said && MESSAGE_KINDS.includes(said.kind) ? said.kind : 'info';
  }

  /**
   * The form a blocked step asks for, inside #setup-result: built once per question (what the
   * person typed stays while the page redraws), focused on its first field when it appears.
   */
  drawForm(blocked) {
    const key = blocked ? blocked.key : null;
    if (key !== this.formKey) {
      this.formKey = key;
      if (this.form) {
        // Focus inside a form that goes away would fall to the page's top: keep it in this tab.
        const hadFocus = this.form.contains(this.root.activeElement);
        this.form.remove();
        if (hadFocus) this.dom.panel.focus();
      }
      this.form = blocked ? this.buildForm(blocked) : null;
      if (this.form) {
        this.dom.result.append(this.form);
        const first = this.form.querySelector('input, select, button');
        // After this change is drawn (the tab may be revealed in the same turn).
        queueMicrotask(() => first.focus());
      }
    }
    if (!this.form) return;
    const error = this.form.querySelector('.step-input-error');
    showMessage(error, blocked.error);
    error.hidden = !blocked.error;
    for (const button of this.form.querySelectorAll('button')) button.disabled = blocked.disabled;
  }

  buildForm(blocked) {
    const form = fromTemplate('step-input-template');
    form.setAttribute('aria-label', `Answer for step ${blocked.step} (${blocked.label})`);
    const fields = blocked.fields.map((field) => this.buildField(field));
    form.querySelector('.step-input-fields').replaceChildren(...fields);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.controller.answer(formInput(form, blocked.fields));
    });
    form.querySelector('#cancel-blocked-btn').addEventListener('click', () => this.controller.cancel());
    return form;
  }

  /** One input of the form: text, a password for a secret, a checkbox, or a select of choices. */
  buildField(field) {
    const node = fromTemplate(`input-${field.type}-template`);
    const input = node.querySelector('input, select');
    const label = node.querySelector('label');
    input.id = `step-input-${field.name}`;
    input.name = field.name;
    label.htmlFor = input.id;
    label.textContent = field.required || field.type === 'boolean' ? field.label : `${field.label} (optional)`;
    if (field.type === 'boolean') return node; // unchecked is an answer too: false
    input.required = field.required;
    if (field.type === 'choice') {
      const options = [['', field.required ? 'Choose…' : '—'], ...field.choices.map((choice) => [choice, choice])];
      input.replaceChildren(
        ...options.map(([value, text]) => {
          const option = fromTemplate('input-option-template');
          option.value = value;
          option.textContent = text;
          return option;
        }),
      );
    }
    return node;
  }

  drawControls({ run, sshLocked, remove, retry, newSetup, hint }) {
    const button = this.dom.run;
    const starts = run.mode === 'run' || run.mode === 'run-remaining';
    button.textContent = RUN_LABELS[run.mode];
    button.hidden = run.mode === 'none'; // a blocked step's form holds the way on
    button.classList.toggle('btn-danger', !starts);
    button.classList.toggle('btn-primary', starts);
    button.disabled = run.disabled;
    this.dom.ssh.disabled = sshLocked;
    this.dom.remove.hidden = !remove;
    this.dom.remove.disabled = Boolean(remove && remove.disabled);
    this.dom.resultActions.hidden = !retry;
    if (retry) {
      this.dom.retry.textContent = `Retry from step ${retry.step}`;
      this.dom.retry.disabled = retry.disabled;
    }
    this.dom.newSetup.hidden = !newSetup;
    if (hint && hint.key !== (this.hinted && this.hinted.key)) showMessage(this.dom.hint, hint);
    this.hinted = hint;
    this.dom.hint.hidden = !hint;
  }
}

/** The answer the form holds: {name: value}; empty optional fields are left out. */
function formInput(form, fields) {
  const input = {};
  for (const field of fields) {
    const element = form.elements.namedItem(field.name);
    if (!element) continue;
    if (field.type === 'boolean') input[field.name] = element.checked;
    else if (element.value !== '' || field.required) input[field.name] = element.value;
  }
  return input;
}
