/**
 * What a stored workflow (or a list entry) says, read without side effects: whether a server run
 * drives it, how far it got, which step waits for the person, what to call it. Shared by the
 * controllers; no DOM.
 */

/** Statuses of a workflow that has not finished (a blocked one waits for the person). */
export const ACTIVE_STATUSES = Object.freeze(['running', 'blocked']);

/** Run statuses of a server run in progress: queued, running, or waiting to try a step again. */
const RUN_IN_PROGRESS = ['queued', 'running', 'waiting'];

/** Whether `state` (a state or a list entry) has not finished yet. */
export function isActive(state) {
  return Boolean(state) && ACTIVE_STATUSES.includes(state.status);
}

/** The server run of a running workflow while one is queued, running or waiting; else null. */
export function serverRun(state) {
  if (!state || state.status !== 'running' || !state.run || typeof state.run !== 'object') return null;
  return RUN_IN_PROGRESS.includes(state.run.status) ? state.run : null;
}

/**
 * Whether the run was taken over after an interruption: `run.takeovers` > 0. A person's resume
 * or retry starts a new run (a higher attempt) but is no takeover; a server that does not count
 * takeovers yet is read by the attempt alone.
 */
export function wasTakenOver(run) {
  if (!run) return false;
  if (typeof run.takeovers === 'number') return run.takeovers > 0;
  return Number(run.attempt) > 1;
}

function round2(value) {
  return Math.round(value * 100) / 100;
}

/** A percent between 0 and 100 (anything else: null). */
function percentOf(value) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return null;
  return Math.min(100, Math.max(0, value));
}

/**
 * How much of the workflow is done, for a person: the server's `completed_percent` when the
 * state has it, else the same rule computed here: steps completed or skipped ÷ all steps × 100,
 * plus the running step's own `progress.percent` as a share of one step, to 2 decimals (0 with
 * no steps). A one-step workflow with nothing done is 0, not 100.
 */
export function completedPercent(state) {
  if (!state) return 0;
  const given = percentOf(state.completed_percent);
  if (given !== null) return given;
  const steps = Array.isArray(state.steps) ? state.steps : [];
  if (!steps.length) return 0;
  let done = 0;
  for (const step of steps) {
    if (!step) continue;
    if (step.status === 'completed' || step.status === 'skipped') {
      done += 1;
    } else if (step.status === 'in_progress' && step.progress) {
      done += (percentOf(step.progress.percent) || 0) / 100;
    }
  }
  return round2((done / steps.length) * 100);
}

/**
 * The same for a list entry (a summary: no steps): its `completed_percent`, else what its
 * position says: a completed workflow is 100, another one has done the steps before its
 * current one.
 */
export function entryPercent(entry) {
  const given = percentOf(entry.completed_percent);
  if (given !== null) return given;
  const total = Number(entry.total_steps) || 0;
  if (entry.status === 'completed') return 100;
  if (!total) return 0;
  const before = Math.min(total, Math.max(0, Number(entry.current_step) || 0));
  return round2((before / total) * 100);
}

/** A field of a blocked step's form, with the defaults filled in (required unless false). */
function inputField(field) {
  const type = ['text', 'secret', 'boolean', 'choice'].includes(field.type) ? field.type : 'text';
  return {
    name: String(field.name),
    label: typeof field.label === 'string' && field.label ? field.label : String(field.name),
    type,
    choices: type === 'choice' && Array.isArray(field.choices) ? field.choices.map(String) : [],
    required: field.required !== false,
  };
}

/**
 * The step a blocked workflow waits on: {index, step, message, fields, since}; null when the
 * workflow is not blocked. `fields` are the inputs the answer needs (none: an approval).
 */
export function blockedStep(state) {
  if (!state || state.status !== 'blocked' || !Array.isArray(state.steps)) return null;
  const index = state.steps.findIndex((step) => step && step.status === 'blocked');
  if (index < 0) return null;
  const step = state.steps[index];
  const blocked = step.blocked && typeof step.blocked === 'object' ? step.blocked : {};
  const fields = Array.isArray(blocked.input) ? blocked.input : [];
  return {
    index,
    step,
    message: typeof blocked.message === 'string' ? blocked.message : '',
    fields: fields.filter((field) => field && typeof field.name === 'string').map(inputField),
    since: typeof blocked.since === 'string' ? blocked.since : '',
  };
}

/** The index of the step a failed workflow failed at (its current step when none says so). */
export function failedStepIndex(state) {
  const steps = Array.isArray(state.steps) ? state.steps : [];
  const at = steps.findIndex((step) => step && step.status === 'failed');
  if (at >= 0) return at;
  return Math.min(Math.max(0, Number(state.current_step) || 0), Math.max(0, steps.length - 1));
}

/** When a step waiting to be tried again will be (ISO time), or null. */
export function retryAt(state, step) {
  if (!step || step.status !== 'in_progress' || typeof step.retry_at !== 'string') return null;
  const run = state && state.run;
  return run && run.status === 'waiting' ? step.retry_at : null;
}

// Options of `ssh` that take a value: the destination is the first word that is none of these.
const SSH_OPTIONS_WITH_VALUE = new Set('BbcDEeFIiJLlmOopQRSWw'.split(''));

/**
 * The host of an SSH connection string: `203.0.113.7` for `ssh -p 2222 root@203.0.113.7 -L …`
 * (also `user@host:port`, `ssh://user@host:port`, `[::1]`); '' when there is none.
 */
export function hostOf(ssh) {
  if (typeof ssh !== 'string') return '';
  const words = ssh.trim().split(/\s+/).filter(Boolean);
  if (words[0] && /(^|\/)ssh$/.test(words[0])) words.shift();
  for (let i = 0; i < words.length; i += 1) {
    const word = words[i];
    if (word.startsWith('-')) {
      const letter = word.slice(1, 2);
      if (word.length === 2 && SSH_OPTIONS_WITH_VALUE.has(letter)) i += 1; // `-p 2222`
      continue;
    }
    let target = word.replace(/^ssh:\/\//, '');
    target = target.slice(target.lastIndexOf('@') + 1);
    const bracketed = /^\[([^\]]+)\]/.exec(target);
    if (bracketed) return bracketed[1];
    if ((target.match(/:/g) || []).length === 1) target = target.split(':')[0]; // host:port
    return target.replace(/\/.*$/, '');
  }
  return '';
}

/** What a person calls a workflow: its `label`, else the host it sets up, else its id. */
export function workflowName(state) {
  if (typeof state.label === 'string' && state.label.trim()) return state.label.trim();
  return hostOf(state.ssh_connection) || state.workflow_id;
}

/** A running step's own progress report: {percent, message}, or null when it sent none. */
export function stepProgress(step) {
  const progress = step && step.progress;
  if (!progress || typeof progress !== 'object') return null;
  const percent = percentOf(progress.percent);
  const said = typeof progress.message === 'string' ? progress.message : '';
  if (percent === null && !said) return null;
  return { percent, message: said };
}

/** A step's task list: [{name, status, note}] (tasks without a name are left out). */
export function stepTasks(step) {
  const tasks = step && Array.isArray(step.tasks) ? step.tasks : [];
  return tasks
    .filter((task) => task && typeof task.name === 'string')
    .map((task) => ({
      name: task.name,
      status: typeof task.status === 'string' ? task.status : 'pending',
      note: typeof task.note === 'string' ? task.note : '',
    }));
}
