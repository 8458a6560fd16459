/**
 * The configured steps (GET /workflow/config): what a step is called, where its action lives,
 * and which step list a state shows. Shared by every controller; no DOM.
 */

export class StepCatalog {
  /** @param {Array<{action: string, label?: string, endpoint?: string}>} [steps] */
  constructor(steps = []) {
    this.set(steps);
  }

  /** Replace the configured steps (e.g. after GET /workflow/config). */
  set(steps) {
    this.steps = steps.map((step) => ({ ...step }));
    this.byAction = new Map(this.steps.map((step) => [step.action, step]));
  }

  /** A step's label: its own, else the configured one, else its action. */
  labelOf(step) {
    const known = this.byAction.get(step.action);
    return step.label || (known && known.label) || step.action;
  }

  /** The step list `state` shows: its own steps, labelled from the config where they have none. */
  layoutFor(state) {
    if (!state || !Array.isArray(state.steps) || !state.steps.length) {
      return this.steps.map(({ action, label }) => ({ action, label: label || action }));
    }
    return state.steps.map((step) => ({ action: step.action, label: this.labelOf(step) }));
  }
}
