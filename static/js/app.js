/**
 * The page's entry point: wires the client, the live feed, the tabs, the token prompt and the
 * workflow view, and defines window.initWorkflow(), which runs on DOMContentLoaded.
 */

import { InstancesView } from './instances.js';
import { LiveState } from './live.js';
import { StateClient } from './state-client.js';
import { Tabs } from './tabs.js';
import { TokenDialog } from './token-dialog.js';
import { WorkflowPage } from './workflow.js';

let page = null;

function build() {
  const tokenDialog = new TokenDialog(document.getElementById('token-dialog'));
  const tokenButton = document.getElementById('token-btn');
  let live = null;
  const client = new StateClient({
    async onUnauthorized({ rejectedToken }) {
      const token = await tokenDialog.ask({ refused: Boolean(rejectedToken) });
      tokenButton.hidden = false; // to enter (or change) the token later
      // A stream opened without the token must be reopened with it.
      if (token && live) queueMicrotask(() => live.reconnect());
      return token;
    },
  });
  live = new LiveState(client);
  const tabs = new Tabs(document.querySelector('[role="tablist"]'));
  const instances = new InstancesView({
    client,
    body: document.getElementById('instances-body'),
    empty: document.getElementById('instances-empty'),
    error: document.getElementById('instances-error'),
  });
  tokenButton.hidden = !client.token;
  tokenButton.addEventListener('click', async () => {
    const token = await tokenDialog.ask();
    if (token) {
      client.tokenStore.set(token);
      live.reconnect();
      page.init();
    }
  });
  document.getElementById('new-setup-btn').addEventListener('click', () => {
    tabs.touched = true;
    tabs.select('vastai-setup', { focus: true });
    document.getElementById('sshConnectionString').focus();
  });
  return new WorkflowPage({ client, live, tabs, instances });
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
