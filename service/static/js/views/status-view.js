/**
 * The header's live indicator (how the followed workflow reaches the page) and the note shown
 * while the client retries a service that is briefly unavailable.
 */

import { message } from '../controllers/messages.js';
import { showMessage } from './templates.js';

const MODES = {
  live: ['Live', 'Following changes as they happen (Server-Sent Events).'],
  polling: ['Polling', 'Checking for changes every 2 seconds.'],
  offline: ['Offline', 'The service cannot be reached; still trying every 2 seconds.'],
  connecting: ['Connecting', 'Connecting to the live feed…'],
};

export class StatusView {
  /**
   * @param {object} parts
   * @param {Array<import('../live.js').LiveState | import('../live.js').WorkflowList>} parts.feeds
   *   the first one that is following something shows (the open workflow's, else the list's)
   * @param {import('../state-client.js').StateClient} parts.client
   * @param {Document} [parts.root]
   */
  constructor({ feeds, client, root = document }) {
    this.indicator = root.getElementById('live-indicator');
    this.note = root.getElementById('reconnect-note');
    const show = () => {
      const feed = feeds.find((each) => each.started);
      if (feed) this.showMode(feed.mode);
    };
    for (const feed of feeds) feed.addEventListener('mode', show);
    client.addEventListener('reconnecting', (event) => this.showReconnecting(event.detail));
    client.addEventListener('reconnected', () => {
      this.note.hidden = true;
    });
  }

  showMode(mode) {
    const [label, title] = MODES[mode] || [mode, ''];
    const indicator = this.indicator;
    indicator.textContent = label;
    indicator.title = title;
    indicator.dataset.mode = mode;
    indicator.classList.remove(...Object.keys(MODES));
    indicator.classList.add(mode);
  }

  showReconnecting({ attempt, delayMs }) {
    showMessage(this.note, message('reconnecting', { attempt, seconds: Math.ceil(delayMs / 1000) }));
    this.note.hidden = false;
  }
}
