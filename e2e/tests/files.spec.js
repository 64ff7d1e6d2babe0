const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, expect } = require('@playwright/test');
const { attach, messages, newUser, openChat, send } = require('./helpers');

// A 1×1 PNG, for the preview.
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
  'base64',
);

test('a 5 MiB file and an image travel end to end, checked and previewed', async ({ browser }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'securechat-files-'));
  const big = path.join(dir, 'report.bin');
  const data = crypto.randomBytes(5 * 1024 * 1024);
  fs.writeFileSync(big, data);
  const image = path.join(dir, 'dot.png');
  fs.writeFileSync(image, PNG);
  const a = await newUser(browser, 'files.a');
  const b = await newUser(browser, 'files.b');
  try {
    await openChat(a.page, 'files.b');
    await attach(a.page, big);
    await expect(a.page.getByRole('progressbar', { name: 'Progress of report.bin' })).toHaveAttribute('value', '100', { timeout: 120_000 });
    await attach(a.page, image);
    await expect(a.page.getByRole('progressbar', { name: 'Progress of dot.png' })).toHaveAttribute('value', '100');

    await openChat(b.page, 'files.a');
    const log = messages(b.page);
    await expect(log.getByRole('img', { name: 'Preview of dot.png' })).toBeVisible({ timeout: 60_000 });
    await expect(log).toContainText('5.2 MB');
    const [download] = await Promise.all([
      b.page.waitForEvent('download', { timeout: 120_000 }),
      log.getByRole('button', { name: 'Download report.bin' }).click(),
    ]);
    expect(download.suggestedFilename()).toBe('report.bin');
    const saved = fs.readFileSync(await download.path());
    expect(crypto.createHash('sha256').update(saved).digest('hex')).toBe(crypto.createHash('sha256').update(data).digest('hex'));
  } finally {
    for (const u of [a, b]) await u.context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the incremental SHA-256 (downloads to disk, large uploads) matches WebCrypto', async ({ browser }) => {
  const u = await newUser(browser, 'hasher');
  const mismatches = await u.page.evaluate(async () => {
    const { Sha256 } = await import('/js/sha256.js');
    const files = await import('/js/files.js');
    const bad = [];
    // The file worker's digest in slices of 8 MiB (`whole` 0) as well.
    for (const n of [0, 1, 55, 56, 63, 64, 65, 1000, 3 * 1048576 + 17, 20 * 1048576 + 123]) {
      const data = new Uint8Array(n);
      for (let i = 0; i < n; i += 65536) crypto.getRandomValues(data.subarray(i, Math.min(n, i + 65536)));
      const h = new Sha256();
      for (let i = 0; i < n; i += 100003) h.update(data.subarray(i, i + 100003));
      const ours = Array.from(h.digest()).join(',');
      const ref = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', data))).join(',');
      // In slices; and a second one, queued behind it and cancelled while
      // the first reads its slices, does not run.
      const stop = new AbortController();
      const first = files.digest(new Blob([data]), 0);
      const second = files.digest(new Blob([data]), 0, stop.signal);
      // And one hashed whole, cancelled while it waits its turn.
      const third = files.digest(new Blob([data]), undefined, stop.signal);
      stop.abort();
      const sliced = Array.from(new Uint8Array(await first)).join(',');
      const outcomes = await Promise.all([second, third].map((p) => p.then(() => 'done', (e) => e.message)));
      if (n > 16 * 1048576 && outcomes.some((o) => o !== 'cancelled')) bad.push(`cancel ${n}: ${outcomes}`);
      const whole = Array.from(new Uint8Array(await files.digest(new Blob([data])))).join(',');
      if (ours !== ref || sliced !== ref || whole !== ref) bad.push(n);
    }
    return bad;
  });
  expect(mismatches).toEqual([]);
  await u.context.close();
});

test('messages arriving leave the log as the reader holds it: a selection, a pressed Download button', async ({ browser }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'securechat-files-'));
  const note = path.join(dir, 'note.txt');
  fs.writeFileSync(note, 'a short note\n');
  const a = await newUser(browser, 'hold.a');
  const b = await newUser(browser, 'hold.b');
  try {
    await openChat(a.page, 'hold.b');
    await send(a.page, 'keep this selected');
    await attach(a.page, note);
    await expect(a.page.getByRole('progressbar', { name: 'Progress of note.txt' })).toHaveAttribute('value', '100');
    await openChat(b.page, 'hold.a');
    const log = messages(b.page);
    const download = log.getByRole('button', { name: 'Download note.txt' });
    await expect(download).toBeVisible();

    await b.page.evaluate(() => {
      const body = [...document.querySelectorAll('#messages .body')].find((e) => e.textContent === 'keep this selected');
      getSelection()?.selectAllChildren(/** @type {Node} */ (body));
    });
    await send(a.page, 'first arrival');
    await expect(log).toContainText('first arrival');
    expect(await b.page.evaluate(() => getSelection()?.toString())).toBe('keep this selected');

    const box = await download.boundingBox();
    await b.page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await b.page.mouse.down();
    await send(a.page, 'second arrival');
    await expect(log).toContainText('second arrival');
    const [saved] = await Promise.all([b.page.waitForEvent('download', { timeout: 10_000 }), b.page.mouse.up()]);
    expect(saved.suggestedFilename()).toBe('note.txt');
    expect(fs.readFileSync(await saved.path(), 'utf8')).toBe('a short note\n');
  } finally {
    for (const u of [a, b]) await u.context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an upload can be cancelled, and one that failed is sent with Retry', async ({ browser }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'securechat-files-'));
  const first = path.join(dir, 'stalled.txt');
  fs.writeFileSync(first, 'never sent\n');
  const second = path.join(dir, 'refused.txt');
  fs.writeFileSync(second, 'sent on the second try\n');
  const a = await newUser(browser, 'retry.a');
  const b = await newUser(browser, 'retry.b');
  const chunks = '**/api/files/*/chunks/*';
  try {
    await openChat(a.page, 'retry.b');
    const log = messages(a.page);
    // The first file's chunk never gets an answer: Cancel takes the message away.
    await a.page.route(chunks, () => {});
    await attach(a.page, first);
    const filesCall = (method) => (r) => r.request().method() === method && /\/api\/files(\/[^/]+)?$/.test(r.url());
    await Promise.all([a.page.waitForResponse(filesCall('DELETE')), log.getByRole('button', { name: 'Cancel stalled.txt' }).click()]);
    await expect(log).not.toContainText('stalled.txt');
    await a.page.unroute(chunks);
    // The second file's chunk is refused: "Not sent", and the host's space for it freed.
    await a.page.route(chunks, (route) =>
      route.fulfill({ status: 400, contentType: 'application/json', body: JSON.stringify({ error: 'bad_chunk', message: 'Refused for the test.' }) }),
    );
    const [created, freed] = await Promise.all([a.page.waitForResponse(filesCall('POST')), a.page.waitForResponse(filesCall('DELETE')), attach(a.page, second)]);
    expect(freed.url()).toBe(`${created.url()}/${(await created.json()).id}`);
    expect(freed.status()).toBeLessThan(300);
    await expect(log).toContainText('Not sent');
    await a.page.unroute(chunks);
    // Retry uploads it again and sends it, once.
    await log.getByRole('button', { name: 'Retry' }).click();
    await expect(log.getByRole('progressbar', { name: 'Progress of refused.txt' })).toHaveAttribute('value', '100');
    await expect(log).toContainText('Sent');
    await expect(log).not.toContainText('Not sent');
    await openChat(b.page, 'retry.a');
    const theirs = messages(b.page);
    const button = theirs.getByRole('button', { name: 'Download refused.txt' });
    await expect(button).toHaveCount(1);
    const [saved] = await Promise.all([b.page.waitForEvent('download', { timeout: 10_000 }), button.click()]);
    expect(fs.readFileSync(await saved.path(), 'utf8')).toBe('sent on the second try\n');
    await expect(button).toHaveCount(1);
    await expect(theirs).not.toContainText('stalled.txt');
  } finally {
    for (const u of [a, b]) await u.context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a preview's picture is let go when its chat is left, and shown again on return", async ({ browser }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'securechat-pics-'));
  const image = path.join(dir, 'dot.png');
  fs.writeFileSync(image, PNG);
  const a = await newUser(browser, 'pics.a');
  const b = await newUser(browser, 'pics.b');
  const c = await newUser(browser, 'pics.c');
  try {
    await openChat(a.page, 'pics.b');
    await attach(a.page, image);
    await expect(a.page.getByRole('progressbar', { name: 'Progress of dot.png' })).toHaveAttribute('value', '100');
    await openChat(b.page, 'pics.a');
    const preview = messages(b.page).getByRole('img', { name: 'Preview of dot.png' });
    await expect(preview).toBeVisible({ timeout: 60_000 });
    const first = await preview.getAttribute('src');
    /** Whether the picture at `src` still loads (the page's CSP lets images, not fetches, read blob: URLs). */
    const loads = (src) =>
      b.page.evaluate((u) => {
        const img = new Image();
        img.src = u;
        return img.decode().then(() => true, () => false);
      }, src);
    expect(await loads(first)).toBe(true);
    await openChat(b.page, 'pics.c');
    expect(await loads(first)).toBe(false);
    await openChat(b.page, 'pics.a');
    await expect(preview).toBeVisible({ timeout: 60_000 });
    const again = await preview.getAttribute('src');
    expect(again).not.toBe(first);
    expect(await loads(again)).toBe(true);
  } finally {
    for (const u of [a, b, c]) await u.context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a reader at the bottom of the log stays there when a picture loads', async ({ browser }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'securechat-files-'));
  const a = await newUser(browser, 'stick.a');
  const b = await newUser(browser, 'stick.b');
  try {
    await a.page.setViewportSize({ width: 900, height: 420 });
    await openChat(a.page, 'stick.b');
    await openChat(b.page, 'stick.a');
    for (let i = 1; i <= 12; i++) await send(b.page, `line ${i}`);
    await expect(messages(a.page)).toContainText('line 12');
    // A picture of 400 × 300, drawn by the browser.
    const png = await b.page.evaluate(() => {
      const canvas = document.createElement('canvas');
      canvas.width = 400;
      canvas.height = 300;
      const g = canvas.getContext('2d');
      g.fillStyle = '#3a7';
      g.fillRect(0, 0, 400, 300);
      return canvas.toDataURL('image/png').split(',')[1];
    });
    const image = path.join(dir, 'tall.png');
    fs.writeFileSync(image, Buffer.from(png, 'base64'));
    await attach(b.page, image);
    const preview = messages(a.page).getByRole('img', { name: 'Preview of tall.png' });
    await expect(preview).toBeVisible({ timeout: 60_000 });
    await expect.poll(() => preview.evaluate((img) => img.complete && img.naturalHeight)).toBe(300);
    await expect
      .poll(() => messages(a.page).evaluate((list) => list.scrollHeight - list.scrollTop - list.clientHeight))
      .toBeLessThan(40);
  } finally {
    for (const u of [a, b]) await u.context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a file message that is not well-formed shows as such, and the chat goes on', async ({ browser }) => {
  const a = await newUser(browser, 'odd.a');
  const b = await newUser(browser, 'odd.b');
  await openChat(a.page, 'odd.b');
  await openChat(b.page, 'odd.a');
  // Sealed and signed by odd.a as any message is, but its `mime` is a number.
  await a.page.evaluate(async () => {
    const app = await import('/js/app.js');
    const e2e = await import('/js/e2e.js');
    const chat = app.activeChat();
    const recipients = await Promise.all(chat.info.members.map(async (m) => ({ username: m.username, keys: await app.publicKeys(m.username) })));
    const id = e2e.messageId();
    const file = { id: 'f', name: 'odd', mime: 42, size: 1, chunks: 1, sha256: 'AA==', key: 'AA==', nonce_prefix: 'AA==' };
    const envelope = await e2e.seal(id, app.state.me.username, chat.info.id, { v: 1, type: 'file', file }, recipients, app.state.keys.sig);
    app.state.conn.raw({ type: 'send', id, chat: chat.info.id, envelope });
  });
  await expect(messages(b.page).locator('.msg.bad')).toContainText('not well-formed');
  await send(a.page, 'still talking');
  await expect(messages(b.page)).toContainText('still talking');
  await b.page.reload();
  await openChat(b.page, 'odd.a');
  await expect(messages(b.page)).toContainText('still talking');
  await expect(messages(b.page).locator('.msg.bad')).toContainText('not well-formed');
  for (const u of [a, b]) await u.context.close();
});

test("an upload cancelled before the host set its space aside frees that space as soon as it has", async ({ browser }) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'securechat-files-'));
  const file = path.join(dir, 'early.txt');
  fs.writeFileSync(file, 'cancelled early\n');
  const a = await newUser(browser, 'early.a');
  const b = await newUser(browser, 'early.b');
  try {
    await openChat(a.page, 'early.b');
    const log = messages(a.page);
    // The host's answer to the upload's start waits until Cancel is clicked.
    let release = () => {};
    const clicked = new Promise((resolve) => (release = resolve));
    await a.page.route(/\/api\/files$/, async (route) => {
      await clicked;
      await route.continue();
    });
    const filesCall = (method) => (r) => r.request().method() === method && /\/api\/files(\/[^/]+)?$/.test(r.url());
    const created = a.page.waitForResponse(filesCall('POST'));
    const freed = a.page.waitForResponse(filesCall('DELETE'), { timeout: 15_000 });
    await attach(a.page, file);
    await log.getByRole('button', { name: 'Cancel early.txt' }).click();
    release();
    const id = (await (await created).json()).id;
    expect((await freed).url()).toContain(`/api/files/${id}`);
    await expect(log).not.toContainText('early.txt');
  } finally {
    for (const u of [a, b]) await u.context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
