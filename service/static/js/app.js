/**
 * The page's entry point: builds the client, the sources, the controllers and their views,
 * wires them together, and defines window.initWorkflow(), which runs on DOMContentLoaded.
 *
 *   state-client.js          the API client
 *   live.js                  sources: one workflow (stream, or polling its GET route), the list,
 *                            the history of finished ones
 *   controllers/             no DOM: what to show, decided from what arrives
 *     catalog.js             the configured steps and their labels
 *     states.js              what a stored state says (run, percent, blocked step, name)
 *     messages.js            every message as {key, kind, args}
 *     workflow-controller.js the open workflow: reconciliation and intents
 *     page-runner.js         runs on the server: start, run, resume, retry, cancel, delete
 *     instances-controller.js the Instances list (the owner's workflows, live; recent ones)
 *   views/                   DOM only: draw a controller's view() from index.html's templates
 *
 * The open workflow's id lives in the URL (`?workflow=<id>`, kept with history.replaceState),
 * so a reload reopens it and the address can be shared between the owner's tabs.
 */

import { InstancesController, LIST_LIMIT, RECENT_LIMIT } from './controllers/instances-controller.js';
import { StepCatalog } from './controllers/catalog.js';
import { ServerRunner } from './controllers/page-runner.js';
import { WorkflowController } from './controllers/workflow-controller.js';
import { LiveState, RecentRuns, WorkflowList, WorkflowNames } from './live.js';
import { StateClient } from './state-client.js';
import { Tabs } from './tabs.js';
import { TokenDialog } from './token-dialog.js';
import { InstancesView } from './views/instances-view.js';
import { StatusView } from './views/status-view.js';
import { WorkflowView } from './views/workflow-view.js';

const SETUP_TAB = 'vastai-setup';
const WORKFLOW_PARAM = 'workflow';
const LIST_STREAM_URL = '/workflows/stream';

let page = null;

/** The workflow the address names (`?workflow=<id>`), or null. */
function workflowInUrl() {
  return new URLSearchParams(window.location.search).get(WORKFLOW_PARAM) || null;
}

/** Keep the open workflow in the address, without a new history entry. */
function putWorkflowInUrl(id) {
  const url = new URL(window.location.href);
  if (id) url.searchParams.set(WORKFLOW_PARAM, id);
  else url.searchParams.delete(WORKFLOW_PARAM);
  if (url.href !== window.location.href) window.history.replaceState(window.history.state, '', url);
}

function build() {
  const tokenDialog = new TokenDialog(document.getElementById('token-dialog'));
  const tokenButton = document.getElementById('token-btn');
  const feeds = [];
  const client = new StateClient({
    async onUnauthorized({ rejectedToken }) {
      const token = await tokenDialog.ask({ refused: Boolean(rejectedToken) });
      tokenButton.hidden = false; // to enter (or change) the token later
      // A stream opened without the token must be reopened with it.
      if (token) queueMicrotask(() => feeds.forEach((feed) => feed.reconnect()));
      return token;
    },
  });
  const feed = new LiveState(client);
  const list = new WorkflowList(client, { limit: LIST_LIMIT });
  feeds.push(feed, list);
  const catalog = new StepCatalog();
  const tabs = new Tabs(document.querySelector('[role="tablist"]'));

  const workflow = new WorkflowController({
    client,
    feed,
    catalog,
    runner: new ServerRunner({ client }),
  });
  // Finished workflows still in the list are not shown again: read more than are shown.
  const recentRuns = new RecentRuns(client, { limit: RECENT_LIMIT * 2 });
  const instances = new InstancesController({
    list,
    history: recentRuns,
    names: new WorkflowNames(client),
    limit: LIST_LIMIT,
  });
  const workflowView = new WorkflowView({ controller: workflow });
  new InstancesView({
    controller: instances,
    onOpen(id) {
      tabs.touched = true;
      tabs.select(SETUP_TAB, { focus: true });
      workflow.open(id);
    },
    onRecord(id) {
      const record = instances.record(id);
      if (!record) return;
      tabs.touched = true;
      tabs.select(SETUP_TAB, { focus: true });
      workflow.showRecord(record);
    },
  });
  new StatusView({ feeds, client });

  // Whether the service can serve, as the source in use says (the open workflow's, else the
  // list's): offline, the page says so and offers nothing that needs the service.
  const connection = () => {
    const feed = feeds.find((each) => each.started);
    if (!feed || feed.mode !== 'offline') workflow.setOffline(null);
    else workflow.setOffline(feed.error && feed.error.code === 'backend_unavailable' ? 'storage' : 'network');
  };
  for (const each of feeds) each.addEventListener('mode', connection);

  workflow.addEventListener('open', ({ detail: id }) => {
    putWorkflowInUrl(id);
    instances.setOpen(id);
  });
  workflow.addEventListener('reveal', ({ detail }) => {
    // An opened workflow always shows its tab; one that appeared only if no tab was picked.
    if (detail.restored || !tabs.touched) tabs.select(SETUP_TAB);
    if (detail.ssh !== undefined) workflowView.fillSsh(detail.ssh);
  });

  async function init() {
    if (!(await workflow.init({ workflowId: workflow.openId || workflowInUrl() }))) return false;
    list.setStreamUrl(workflow.config.streamUrl ? LIST_STREAM_URL : null);
    list.start();
    document.body.dataset.workflowReady = 'true';
    return true;
  }

  tokenButton.hidden = !client.token;
  tokenButton.addEventListener('click', async () => {
    const token = await tokenDialog.ask();
    if (token) {
      client.tokenStore.set(token);
      feeds.forEach((each) => each.reconnect());
      init();
    }
  });
  document.getElementById('new-setup-btn').addEventListener('click', () => {
    tabs.touched = true;
    workflow.close();
    tabs.select(SETUP_TAB, { focus: true });
    document.getElementById('sshConnectionString').focus();
  });
  return { init };
}

/** Load the steps and open the workflow of the address, else the current one (safe to call again). */
export function initWorkflow() {
  if (!page) page = build();
  return page.init();
}

window.initWorkflow = initWorkflow;

if (document.readyState === 'loading') {
  document.addEventListener('DOMContentLoaded', () => initWorkflow(), { once: true });
} else {
  initWorkflow();
}
