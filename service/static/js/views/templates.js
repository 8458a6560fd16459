/**
 * Build DOM from the `<template>` elements of index.html: a view clones a template and fills
 * its `data-slot` elements with text. No markup is ever assembled from strings.
 */

/** A copy of the first element of `<template id="<id>">`. */
export function fromTemplate(id, root = document) {
  const template = root.getElementById(id);
  if (!(template instanceof HTMLTemplateElement)) throw new Error(`no <template id="${id}">`);
  return template.content.firstElementChild.cloneNode(true);
}

/** Put `values[name]` as text into every `[data-slot="<name>"]` under `node`. */
export function fillSlots(node, values = {}) {
  for (const slot of node.querySelectorAll('[data-slot]')) {
    const value = values[slot.dataset.slot];
    slot.textContent = value === undefined || value === null ? '' : String(value);
  }
  return node;
}

/** The words of a message (see controllers/messages.js): its template's content, slots filled. */
export function messageContent({ key, args }, root = document) {
  const template = root.querySelector(`template[data-message="${key}"]`);
  if (!template) throw new Error(`no <template data-message="${key}">`);
  const content = template.content.cloneNode(true);
  return fillSlots(content, args);
}

/** Show a message in `element` (nothing when `said` is null). */
export function showMessage(element, said) {
  if (said) element.replaceChildren(messageContent(said));
  else element.replaceChildren();
}
