/**
 * What the page says, as data: a message is {key, kind, args}. The key names the
 * `<template data-message="<key>">` in index.html that holds the words (its `data-slot`
 * elements take the args); the kind is the class #setup-result takes: info, success, warning
 * or error. Controllers decide which message; a view shows it.
 */

import { blockedStep, failedStepIndex, serverRun, wasTakenOver } from './states.js';

const KINDS = {
  loading: 'info',
  idle: 'info',
  'config-error': 'error',
  'state-error': 'error',
  'not-found': 'error',
  // on load with a stored workflow (the restore messages)
  'restored-running': 'warning',
  'restored-completed': 'success',
  'restored-failed': 'error',
  'restored-cancelled': 'warning',
  'restored-other': 'info',
  'running-on-server': 'info',
  resumed: 'info',
  // following a workflow
  cleared: 'info',
  'other-run-step': 'info',
  'other-run-starting': 'info',
  blocked: 'warning',
  completed: 'success',
  'failed-at': 'error',
  failed: 'error',
  cancelled: 'warning',
  record: 'info',
  offline: 'warning',
  'storage-down': 'warning',
  // starting, answering and stopping runs
  'enable-one': 'warning',
  'start-error': 'error',
  starting: 'info',
  resuming: 'info',
  'resume-error': 'error',
  retrying: 'info',
  'retry-error': 'error',
  cancelling: 'info',
  'cancel-error': 'error',
  deleting: 'info',
  deleted: 'info',
  'delete-error': 'error',
  'input-error': 'error',
  // under the Run button
  'hint-server': 'info',
  'hint-orphan': 'info',
  // on a step card
  'retry-in': 'info',
  'retry-now': 'info',
  // elsewhere on the page
  reconnecting: 'info',
  'instances-error': 'error',
};

/** Every message key (a test checks each has its template). */
export const MESSAGE_KEYS = Object.freeze(Object.keys(KINDS));

/** Whether two messages say the same (a live region is redrawn only when this is false). */
export function sameMessage(a, b) {
  if (!a || !b) return a === b;
  return a.key === b.key && JSON.stringify(a.args) === JSON.stringify(b.args);
}

/** The message `key` with its slot values. */
export function message(key, args = {}) {
  if (!(key in KINDS)) throw new Error(`unknown message ${key}`);
  return { key, kind: KINDS[key], args };
}

/** What a workflow the server runs says: ⏳, or 🔁 once another runner took it over. */
export function serverRunMessage(state) {
  const run = serverRun(state);
  if (!run) return null;
  return message(wasTakenOver(run) ? 'resumed' : 'running-on-server');
}

/** What a blocked workflow says: which step waits for the person, and the step's question. */
export function blockedMessage(state, catalog) {
  const blocked = blockedStep(state);
  if (!blocked) return null;
  return message('blocked', {
    step: blocked.index + 1,
    label: catalog.labelOf(blocked.step),
    detail: blocked.message,
  });
}

/**
 * What #setup-result says on load with a stored state: a server run in progress says so; a
 * blocked one asks its question; a running workflow without a run keeps the seed's warning.
 */
export function restoredMessage(state, catalog) {
  const said = serverRunMessage(state) || blockedMessage(state, catalog);
  if (said) return said;
  const key = `restored-${state.status}`;
  return key in KINDS ? message(key) : message('restored-other', { status: state.status });
}

/** What a finished workflow ended with. */
export function finishedMessage(state, catalog) {
  if (state.status === 'completed') return message('completed');
  if (state.status === 'failed') {
    const at = state.steps.findIndex((step) => step.status === 'failed');
    if (at < 0) return message('failed');
    return message('failed-at', { step: at + 1, label: catalog.labelOf(state.steps[at]) });
  }
  return message('cancelled');
}

/** What a finished workflow shown from the history says (it is no longer on the server). */
export function recordMessage(state, catalog) {
  let outcome = 'was cancelled';
  if (state.status === 'completed') outcome = 'completed';
  else if (state.status === 'failed') {
    const at = failedStepIndex(state);
    const step = state.steps[at];
    outcome = step ? `failed at step ${at + 1} (${catalog.labelOf(step)})` : 'failed';
  }
  return message('record', { outcome });
}

/** Where a running workflow that no server run drives (a client runs its steps) has got to. */
export function otherRunMessage(state, catalog) {
  const step = state.steps[state.current_step];
  if (!step) return message('other-run-starting');
  return message('other-run-step', {
    step: state.current_step + 1,
    total: state.steps.length,
    label: catalog.labelOf(step),
  });
}
