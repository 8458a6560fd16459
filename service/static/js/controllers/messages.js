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
  'not-found': 'error',
  // on load with a stored workflow (contract sections 4 and 9)
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
  completed: 'success',
  'failed-at': 'error',
  failed: 'error',
  cancelled: 'warning',
  // starting and stopping runs
  'enable-one': 'warning',
  'start-error': 'error',
  starting: 'info',
  cancelling: 'info',
  'cancel-error': 'error',
  // under the Run button
  'hint-server': 'info',
  'hint-orphan': 'info',
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

/** The server run of a running workflow, when one is queued or running (contract section 9). */
export function serverRun(state) {
  if (!state || state.status !== 'running' || !state.run || typeof state.run !== 'object') return null;
  return ['queued', 'running'].includes(state.run.status) ? state.run : null;
}

/** What a workflow the server runs says: ⏳, or 🔁 once another runner took it over. */
export function serverRunMessage(state) {
  const run = serverRun(state);
  if (!run) return null;
  return message(Number(run.attempt) > 1 ? 'resumed' : 'running-on-server');
}

/**
 * What #setup-result says on load with a stored state (contract sections 4 and 9): a server
 * run in progress says so; a running workflow without one keeps the seed's warning.
 */
export function restoredMessage(state) {
  const running = serverRunMessage(state);
  if (running) return running;
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
