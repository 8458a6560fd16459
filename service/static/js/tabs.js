/**
 * ARIA tabs (WAI-ARIA Authoring Practices "Tabs with automatic activation").
 *
 * Markup: `[role=tablist]` holding `.tab-button[role=tab][data-tab=<id>]` buttons whose
 * `aria-controls` names a `.tab-panel[role=tabpanel]#<id>`. Roving tabindex: only the selected
 * tab is in the Tab order; Left/Right move between tabs (wrapping), Home/End jump to the ends,
 * Enter/Space activate (a button does that by itself).
 */

export class Tabs {
  /** @param {Element} tablist the `[role=tablist]` element */
  constructor(tablist) {
    this.tablist = tablist;
    this.tabs = Array.from(tablist.querySelectorAll('[role="tab"]'));
    this.touched = false; // whether the person has picked a tab themselves
    for (const tab of this.tabs) {
      tab.addEventListener('click', () => {
        this.touched = true;
        this.select(tab.dataset.tab);
      });
      tab.addEventListener('keydown', (event) => this.onKeydown(event, tab));
    }
  }

  /** Show the panel `id`; with focus, move keyboard focus to its tab. */
  select(id, { focus = false } = {}) {
    const target = this.tabs.find((tab) => tab.dataset.tab === id);
    if (!target) return;
    for (const tab of this.tabs) {
      const on = tab === target;
      tab.setAttribute('aria-selected', String(on));
      tab.tabIndex = on ? 0 : -1;
      tab.classList.toggle('active', on);
      const panel = document.getElementById(tab.getAttribute('aria-controls'));
      if (panel) {
        panel.hidden = !on;
        panel.classList.toggle('active', on);
      }
    }
    if (focus) target.focus();
  }

  onKeydown(event, tab) {
    const index = this.tabs.indexOf(tab);
    let next = null;
    switch (event.key) {
      case 'ArrowRight':
        next = (index + 1) % this.tabs.length;
        break;
      case 'ArrowLeft':
        next = (index - 1 + this.tabs.length) % this.tabs.length;
        break;
      case 'Home':
        next = 0;
        break;
      case 'End':
        next = this.tabs.length - 1;
        break;
      default:
        return;
    }
    event.preventDefault();
    this.touched = true;
    this.select(this.tabs[next].dataset.tab, { focus: true });
  }
}
