// Updating drawn elements in place. The chat list and the message log are
// drawn again whenever something arrives; these helpers keep the elements a
// person may be pressing, focusing or selecting text in, and change only what
// differs. The message log's buttons carry no listeners of their own (the log
// handles their clicks and reads the message as it is at that moment), and a
// button is told apart from another by its `data-action`, never patched into it.

/**
 * Makes `from` (in the document) look like `to` (just built, not in the
 * document): same attributes, same text, same children, keeping every node
 * whose kind, tag and `data-action` are unchanged. Children of `to` that
 * `from` lacks are moved over, so `to` is left in pieces.
 * @param {Node} from @param {Node} to
 */
export function morph(from, to) {
  const same =
    from.nodeType === to.nodeType &&
    from.nodeName === to.nodeName &&
    (!(from instanceof Element) || !(to instanceof Element) || from.getAttribute('data-action') === to.getAttribute('data-action'));
  if (!same) {
    /** @type {ChildNode} */ (from).replaceWith(to);
    return;
  }
  if (!(from instanceof Element) || !(to instanceof Element)) {
    if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
    return;
  }
  for (const name of from.getAttributeNames()) if (!to.hasAttribute(name)) from.removeAttribute(name);
  for (const name of to.getAttributeNames()) {
    const value = /** @type {string} */ (to.getAttribute(name));
    if (from.getAttribute(name) !== value) from.setAttribute(name, value);
  }
  const old = [...from.childNodes];
  const fresh = [...to.childNodes];
  fresh.forEach((child, i) => {
    if (i < old.length) morph(old[i], child);
    else from.appendChild(child);
  });
  for (const extra of old.slice(fresh.length)) extra.remove();
}

/**
 * Puts `nodes` (each once) as the children of `parent`, in order, moving only
 * those out of place and removing the rest. A move keeps the focus and a press
 * on the node where the browser can move a node without taking it out
 * (`moveBefore`).
 * @param {Element} parent @param {Element[]} nodes
 */
export function placeInOrder(parent, nodes) {
  nodes.forEach((node, i) => {
    const at = parent.children[i] ?? null;
    if (at === node) return;
    if (node.parentNode === parent && 'moveBefore' in parent) {
      try {
        /** @type {{moveBefore: (node: Node, child: Node|null) => void}} */ (/** @type {unknown} */ (parent)).moveBefore(node, at);
        return;
      } catch {
        // Refused (a node of another document, say): moved the old way below.
      }
    }
    parent.insertBefore(node, at);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild?.remove();
}
