/**
 * The page's entry point: builds the client, the state source, the controllers and their views,
 * wires them together, and defines window.initWorkflow(), which runs on DOMContentLoaded.
 *
 *   state-client.js          the API client
 *   live.js                  a state source: one workflow's stream, or polling its GET route
 *   controllers/             no DOM: what to show, decided from what arrives
 *     catalog.js             the configured steps and their labels
 *     messages.js            every message as {key, kind, args}
 *     workflow-controller.js one followed workflow: reconciliation and intents
 *     page-runner.js         the page as the runner (PATCHes each step)
 *     instances-controller.js the Instances list
 *   views/                   DOM only: draw a controller's view() from index.html's templates
 */

import { InstancesController } from './controllers/instances-controller.js';
import { StepCatalog } from './controllers/catalog.js';
import { PageRunner } from './controllers/page-runner.js';
import { WorkflowController } from './controllers/workflow-controller.js';
import { LiveState } from './live.js';
import { StateClient } from './state-client.js';
import { Tabs } from './tabs.js';
import { TokenDialog } from './token-dialog.js';
import { InstancesView } from './views/instances-view.js';
import { StatusView } from './views/status-view.js';
import { WorkflowView } from './views/workflow-view.js';

const SETUP_TAB = 'vastai-setup';

let page = null;

function build() {
  const tokenDialog = new TokenDialog(document.getElementById('token-dialog'));
  const tokenButton = document.getElementById('token-btn');
  let feed = null;
  const client = new StateClient({
    async onUnauthorized({ rejectedToken }) {
      const token = await tokenDialog.ask({ refused: Boolean(rejectedToken) });
      tokenButton.hidden = false; // to enter (or change) the token later
      // A stream opened without the token must be reopened with it.
      if (token && feed) queueMicrotask(() => feed.reconnect());
      return token;
    },
  });
  feed = new LiveState(client);
  const catalog = new StepCatalog();
  const tabs = new Tabs(document.querySelector('[role="tablist"]'));

  const workflow = new WorkflowController({
    client,
    feed,
    catalog,
    createRunner: (host) => new PageRunner({ client, host }),
  });
  const instances = new InstancesController({ client, catalog });
  const workflowView = new WorkflowView({ controller: workflow });
  new InstancesView({ controller: instances });
  new StatusView({ feed, client });

  workflow.addEventListener('current', (event) => instances.setCurrent(event.detail));
  workflow.addEventListener('history', () => instances.refresh());
  workflow.addEventListener('reveal', ({ detail }) => {
    // On load a stored workflow always opens its tab; later only if the person has not picked one.
    if (detail.restored || !tabs.touched) tabs.select(SETUP_TAB);
    if (detail.ssh !== undefined) workflowView.fillSsh(detail.ssh);
  });
  window.addEventListener('pagehide', () => workflow.runner.unload());

  async function init() {
    if (!(await workflow.init())) return false;
    feed.setStreamUrl(workflow.config.streamUrl);
    feed.start();
    instances.refresh();
    document.body.dataset.workflowReady = 'true';
    return true;
  }

  tokenButton.hidden = !client.token;
  tokenButton.addEventListener('click', async () => {
    const token = await tokenDialog.ask();
    if (token) {
      client.tokenStore.set(token);
      feed.reconnect();
      init();
    }
  });
  document.getElementById('new-setup-btn').addEventListener('click', () => {
    tabs.touched = true;
    tabs.select(SETUP_TAB, { focus: true });
    document.getElementById('sshConnectionString').focus();
  });
  return { init };
}

/** Load the steps and restore the stored workflow (safe to call again). */
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
