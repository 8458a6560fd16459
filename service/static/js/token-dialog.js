/**
 * The in-page access-token prompt: a modal <dialog>, never window.prompt.
 * `ask()` resolves to the token typed, or null when the person cancels.
 */

export class TokenDialog {
  /** @param {HTMLDialogElement} dialog the `#token-dialog` element */
  constructor(dialog) {
    this.dialog = dialog;
    this.form = dialog.querySelector('form');
    this.input = dialog.querySelector('#token-input');
    this.error = dialog.querySelector('#token-error');
    this.pending = null;
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      const token = this.input.value.trim();
      if (!token) {
        this.showError('Enter the access token.');
        this.input.focus();
        return;
      }
      this.finish(token);
    });
    dialog.querySelector('[data-dismiss]').addEventListener('click', () => this.finish(null));
    dialog.addEventListener('cancel', (event) => {
      event.preventDefault(); // Escape: close through finish() so the promise settles
      this.finish(null);
    });
  }

  /**
   * Open the prompt (or join the one already open).
   * @param {{refused?: boolean}} [options] refused: the last token was rejected
   */
  ask({ refused = false } = {}) {
    if (this.pending) return this.pending.promise;
    let resolve;
    const promise = new Promise((done) => {
      resolve = done;
    });
    this.pending = { promise, resolve };
    this.input.value = '';
    this.showError(refused ? 'That token was refused. Check it and try again.' : '');
    if (!this.dialog.open) this.dialog.showModal();
    this.input.focus();
    return promise;
  }

  showError(text) {
    this.error.textContent = text;
    this.error.hidden = !text;
  }

  finish(token) {
    if (this.dialog.open) this.dialog.close();
    const pending = this.pending;
    this.pending = null;
    this.input.value = '';
    if (pending) pending.resolve(token);
  }
}
