const { test, expect } = require('@playwright/test');
const { url } = require('./helpers');

// The helpers that keep the chat list and the message log in place (js/dom.js),
// on their own: what they keep, what they replace, what they move.
test('morph patches a kept element in place; placeInOrder moves only what is out of place', async ({ page }) => {
  await page.goto(url());
  const seen = await page.evaluate(async () => {
    const { morph, placeInOrder } = await import('/js/dom.js');
    /** @param {string} tag @param {Record<string, string>} attrs @param {(Node|string)[]} children */
    const el = (tag, attrs, ...children) => {
      const e = document.createElement(tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      e.append(...children);
      return e;
    };
    const host = el('ul', {});
    document.body.append(host);

    const kept = el('li', { 'data-id': 'm1', class: 'msg', title: 'old' }, el('span', { class: 'a' }, 'before'), el('button', { 'data-action': 'cancel' }, 'Cancel'));
    host.append(kept);
    const [span, cancel] = kept.children;
    const text = span.firstChild;
    const fresh = el('li', { 'data-id': 'm1', class: 'msg mine' }, el('span', { class: 'b' }, 'after'), el('button', { 'data-action': 'download' }, 'Download'), el('img', { alt: 'preview', src: 'data:,' }));
    morph(kept, fresh);
    const patched = {
      html: kept.outerHTML,
      sameSpan: kept.children[0] === span,
      sameText: kept.children[0].firstChild === text,
      sameButton: kept.children[1] === cancel,
    };
    const img = kept.children[2];
    morph(kept, el('li', { 'data-id': 'm1', class: 'msg mine' }, el('span', { class: 'b' }, 'after'), el('button', { 'data-action': 'download' }, 'Download')));
    const shrunk = { html: kept.outerHTML, imgGone: !img.isConnected };

    const [a, b, c] = ['a', 'b', 'c'].map((name) => el('li', {}, el('button', {}, name)));
    const list = el('ul', {}, a, b, c);
    document.body.append(list);
    // c moves to the front (a stays where it is): a move that keeps the focus.
    /** @type {HTMLElement} */ (c.firstChild).focus();
    placeInOrder(list, [c, a]);
    const placed = {
      order: [...list.children].map((li) => li.textContent).join(''),
      sameNodes: list.children[0] === c && list.children[1] === a,
      bGone: !b.isConnected,
      focusKept: document.activeElement === c.firstChild,
    };
    return { patched, shrunk, placed };
  });
  expect(seen.patched).toEqual({
    html: '<li data-id="m1" class="msg mine"><span class="b">after</span><button data-action="download">Download</button><img alt="preview" src="data:,"></li>',
    sameSpan: true,
    sameText: true,
    sameButton: false,
  });
  expect(seen.shrunk).toEqual({
    html: '<li data-id="m1" class="msg mine"><span class="b">after</span><button data-action="download">Download</button></li>',
    imgGone: true,
  });
  expect(seen.placed).toEqual({ order: 'ca', sameNodes: true, bGone: true, focusKept: true });
});
