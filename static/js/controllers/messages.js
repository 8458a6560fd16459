/**
 * What the page says, as data: a message is {key, kind, args}. The key names the
 * `<template data-message="<key>">` in index.html that holds the words (its `data-slot`
 * elements take the args); the kind is the class #setup-result takes (contract section 4:
 * info, success, warning or error). Controllers decide which message; a view shows it.
 */

const KINDS = {
  loading: 'info',
  idle: 'info',
  'config-error': 'error',
  'state-error': 'error',
  // on load with a stored workflow (contract section 4)
  'restored-running': 'warning',
  'restored-completed': 'success',
  'restored-failed': 'error',
  'restored-cancelled': 'warning',
  'restored-other': 'info',
  // following a workflow
  cleared: 'info',
  'other-run-step': 'info',
  'other-run-starting': 'info',
  completed: 'success',
  'failed-at': 'error',
  failed: 'error',
  cancelled: 'warning',
  // running it from this page
  'enable-one': 'warning',
  'start-error': 'error',
  starting: 'info',
  'step-running': 'info',
  'step-failed': 'error',
  cancelling: 'info',
  'run-cancelled': 'warning',
  'stopped-elsewhere': 'warning',
  replaced: 'warning',
  'not-started-over': 'warning',
  'run-stopped': 'error',
  'marked-cancelled': 'warning',
  'still-moving': 'warning',
  'cancel-other-error': 'error',
  // under the Run button
  'hint-other': 'info',
  'hint-orphan': 'info',
  // elsewhere on the page
  reconnecting: 'info',
  'history-error': 'error',
};

/** Every message key (a test checks each has its template). */
export const MESSAGE_KEYS = Object.freeze(Object.keys(KINDS));

/** The message `key` with its slot values. */
export function message(key, args = {}) {
  if (!(key in KINDS)) throw new Error(`unknown message ${key}`);
  return { key, kind: KINDS[key], args };
}

/** What #setup-result says on load with a stored state (contract section 4). */
export function restoredMessage(state) {
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

/** Where a workflow that another tab runs has got to. */
export function otherRunMessage(state, catalog) {
  const step = state.steps[state.current_step];
  if (!step) return message('other-run-starting');
  return message('other-run-step', {
    step: state.current_step + 1,
    total: state.steps.length,
    label: catalog.labelOf(step),
  });
}
