// Updating drawn elements in place. The chat list and the message log are
// drawn again whenever something arrives; these helpers keep the elements a
// person may be pressing, focusing or selecting text in, and change only what
// differs. Elements patched this way carry no listeners of their own: their
// containers handle clicks and read the current state at that moment.

/**
 * Makes `from` (in the document) look like `to` (just built, not in the
 * document): same attributes, same text, same children, keeping every node
 * whose kind and tag are unchanged.
 * @param {Node} from @param {Node} to
 */
export function morph(from, to) {
  if (from.nodeType !== to.nodeType || from.nodeName !== to.nodeName) {
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
 * Puts `nodes` as the children of `parent`, in order, moving only those out of
 * place and removing the rest.
 * @param {Element} parent @param {Element[]} nodes
 */
export function placeInOrder(parent, nodes) {
  nodes.forEach((node, i) => {
    if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] ?? null);
  });
  while (parent.children.length > nodes.length) parent.lastElementChild?.remove();
}
