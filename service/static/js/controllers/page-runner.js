/**
 * How the page runs workflows: on the server. The page asks once and then only follows what the
 * server writes; it never PATCHes a step or calls a step's action itself, so a reload, another
 * tab or closing every tab leaves a run going. No DOM.
 *
 *   start({plan, ssh})  POST /workflows with `"run": true`: create a workflow and start it
 *   run(id)             POST /workflows/<id>/run: run its remaining steps on the server
 *   resume(id, input)   POST /workflows/<id>/resume: answer a blocked step; a new run starts there
 *   retry(id)           POST /workflows/<id>/retry: run a failed workflow again from its failed step
 *   cancel(id)          POST /workflows/<id>/cancel: the running step and the workflow stop
 *   remove(id)          DELETE /workflows/<id>: the workflow is gone
 *
 * Each resolves to the stored state the server answered (remove: to nothing), or rejects with an
 * ApiError.
 */

import { ApiError } from '../state-client.js';

/** A workflow id in the server's own format: workflow_<unix ms>_<random hex>. */
export function newWorkflowId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
  return `workflow_${Date.now()}_${hex}`;
}

/** The body of POST /workflows for `plan` (steps switched off are `skipped`, never run). */
export function runBody({ id, plan, ssh }) {
  const body = {
    workflow_id: id,
    status: 'running',
    current_step: Math.max(0, plan.findIndex((step) => step.enabled)),
    // A step's endpoint (from the steps file) is what the server calls for it.
    steps: plan.map(({ index, action, label, endpoint, enabled }) => ({
      index,
      action,
      label,
      ...(endpoint ? { endpoint } : {}),
      status: enabled ? 'pending' : 'skipped',
      enabled,
    })),
    run: true,
  };
  if (ssh) body.ssh_connection = ssh;
  return body;
}

export class ServerRunner {
  /** @param {{client: import('../state-client.js').StateClient}} parts */
  constructor({ client }) {
    this.client = client;
  }

  /**
   * Create a workflow of `plan` and start its run in one call.
   * @param {{plan: Array<{index: number, action: string, label: string, endpoint?: string,
   *   enabled: boolean}>, ssh: string}} request
   */
  async start({ plan, ssh }) {
    // The id is named here so a create retried after a lost answer finds its own workflow.
    const id = newWorkflowId();
    try {
      return await this.client.createWorkflow(runBody({ id, plan, ssh }));
    } catch (error) {
      if (!(error instanceof ApiError) || error.code !== 'workflow_exists') throw error;
      return (await this.client.getWorkflow(id)).state;
    }
  }

  /** Run the remaining steps of workflow `id` on the server. */
  run(id) {
    return this.client.runWorkflow(id);
  }

  /** Answer the question of blocked workflow `id` (`input`: {name: value}) and go on. */
  resume(id, input) {
    return this.client.resumeWorkflow(id, input);
  }

  /** Run failed workflow `id` again from the step that failed. */
  retry(id) {
    return this.client.retryWorkflow(id);
  }

  /** Cancel workflow `id` (from any tab: the server stops its run within a second). */
  cancel(id) {
    return this.client.cancelWorkflow(id);
  }

  /** Delete workflow `id`. */
  async remove(id) {
    await this.client.deleteWorkflow(id);
  }
}
