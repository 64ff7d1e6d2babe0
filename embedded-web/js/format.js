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

const INLINE = [
  { re: /\*\*([^*]+?)\*\*/, tag: 'strong' },
  { re: /~~([^~]+?)~~/, tag: 's' },
  { re: /(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])/, tag: 'em' },
  { re: /(?<![_\w])_([^_\s][^_]*?)_(?![_\w])/, tag: 'em' },
];
const CODE = /`([^`]+)`/;
const MDLINK = /\[([^\]]+)\]\(([^)\s]+)\)/;
const URL_RE = /https?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/;

/**
 * Appends the inline formatting of `text` to `parent`.
 * @param {Node} parent @param {string} text
 */
function inline(parent, text) {
  while (text) {
    const candidates = [];
    for (const rule of INLINE) {
      const m = rule.re.exec(text);
      if (m) candidates.push({ m, kind: rule.tag });
    }
    for (const [re, kind] of [
      [CODE, 'code'],
      [MDLINK, 'mdlink'],
      [URL_RE, 'url'],
    ]) {
      const m = re.exec(text);
      if (m) candidates.push({ m, kind });
    }
    if (!candidates.length) {
      parent.appendChild(document.createTextNode(text));
      return;
    }
    candidates.sort((a, b) => a.m.index - b.m.index || (a.kind === 'code' ? -1 : 1));
    const { m, kind } = candidates[0];
    if (m.index > 0) parent.appendChild(document.createTextNode(text.slice(0, m.index)));
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
    text = text.slice(m.index + m[0].length);
  }
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
