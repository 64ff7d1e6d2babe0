const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, expect } = require('@playwright/test');
const { messages, newUser, openChat } = require('./helpers');

// A 1×1 PNG, for the preview.
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
  'base64',
);

async function attach(page, file) {
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.getByRole('button', { name: 'Attach file' }).click()]);
  await chooser.setFiles(file);
}

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

test('the incremental SHA-256 used for downloads to disk matches WebCrypto', async ({ browser }) => {
  const u = await newUser(browser, 'hasher');
  const mismatches = await u.page.evaluate(async () => {
    const { Sha256 } = await import('/js/sha256.js');
    const bad = [];
    for (const n of [0, 1, 55, 56, 63, 64, 65, 1000, 3 * 1048576 + 17]) {
      const data = new Uint8Array(n);
      for (let i = 0; i < n; i += 65536) crypto.getRandomValues(data.subarray(i, Math.min(n, i + 65536)));
      const h = new Sha256();
      for (let i = 0; i < n; i += 100003) h.update(data.subarray(i, i + 100003));
      const ours = Array.from(h.digest()).join(',');
      const ref = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', data))).join(',');
      if (ours !== ref) bad.push(n);
    }
    return bad;
  });
  expect(mismatches).toEqual([]);
  await u.context.close();
});
