// Message formatting parsed into DOM nodes, never into an HTML string:
// **bold**, *italic*, ~~strike~~, `code`, ``` blocks ```, [text](url) and
// bare http(s) URLs. Links open only http: and https:.

/** @param {string} url @returns {string|null} */
export function safeUrl(url) {
  try {
    const u = new URL(url);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

/** @param {string} href @param {string} label */
function link(href, label) {
  const a = document.createElement('a');
  a.href = href;
  a.target = '_blank';
  a.rel = 'noopener noreferrer';
  a.textContent = label;
  return a;
}

/**
 * The inline rules, in the order that breaks a tie (after `code`, which
 * wins one). Each is searched from a position in the whole line, never in
 * a copy of its rest, a link's label holds no "[" and its address no
 * bracket or parenthesis: a long line of brackets, backticks or stars
 * takes time in proportion to its length, not to its square (a 64 KiB
 * message of "[" took 2.5 s to show).
 */
const RULES = [
  { re: /\*\*([^*]+?)\*\*/g, kind: 'strong' },
  { re: /~~([^~]+?)~~/g, kind: 's' },
  { re: /(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])/g, kind: 'em' },
  { re: /(?<![_\w])_([^_\s][^_]*?)_(?![_\w])/g, kind: 'em' },
  { re: /`([^`]+)`/g, kind: 'code' },
  { re: /\[([^[\]]+)\]\(([^()[\]\s]+)\)/g, kind: 'mdlink' },
  { re: /https?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g, kind: 'url' },
];

/**
 * Appends the inline formatting of `text` to `parent`.
 * @param {Node} parent @param {string} text
 */
function inline(parent, text) {
  // Each rule's first match at or after `pos`: found once, and searched
  // for again only once `pos` has passed it (null: none left).
  /** @type {(RegExpExecArray|null|undefined)[]} */
  const next = RULES.map(() => undefined);
  let pos = 0;
  while (pos < text.length) {
    let best = -1;
    for (let r = 0; r < RULES.length; r++) {
      let m = next[r];
      if (m === undefined || (m && m.index < pos)) {
        RULES[r].re.lastIndex = pos;
        m = next[r] = RULES[r].re.exec(text);
      }
      if (!m) continue;
      const b = best < 0 ? null : next[best];
      if (!b || m.index < b.index || (m.index === b.index && RULES[r].kind === 'code')) best = r;
    }
    if (best < 0) break;
    const m = /** @type {RegExpExecArray} */ (next[best]);
    const kind = RULES[best].kind;
    if (m.index > pos) parent.appendChild(document.createTextNode(text.slice(pos, m.index)));
    if (kind === 'code') {
      const code = document.createElement('code');
      code.textContent = m[1];
      parent.appendChild(code);
    } else if (kind === 'mdlink') {
      const href = safeUrl(m[2]);
      if (href) parent.appendChild(link(href, m[1]));
      else parent.appendChild(document.createTextNode(m[0]));
    } else if (kind === 'url') {
      const href = safeUrl(m[0]);
      if (href) parent.appendChild(link(href, m[0]));
      else parent.appendChild(document.createTextNode(m[0]));
    } else {
      const el = document.createElement(kind);
      inline(el, m[1]);
      parent.appendChild(el);
    }
    pos = m.index + m[0].length;
  }
  if (pos < text.length) parent.appendChild(document.createTextNode(text.slice(pos)));
}

/**
 * The formatted message as a DocumentFragment.
 * @param {string} text @returns {DocumentFragment}
 */
export function render(text) {
  const frag = document.createDocumentFragment();
  const parts = text.split(/```/);
  parts.forEach((part, i) => {
    if (i % 2 === 1 && i < parts.length - 1) {
      const pre = document.createElement('pre');
      const code = document.createElement('code');
      code.textContent = part.replace(/^\n/, '').replace(/\n$/, '');
      pre.appendChild(code);
      frag.appendChild(pre);
      return;
    }
    const chunk = i % 2 === 1 ? '```' + part : part;
    chunk.split('\n').forEach((line, j, lines) => {
      inline(frag, line);
      if (j < lines.length - 1) frag.appendChild(document.createElement('br'));
    });
  });
  return frag;
}
