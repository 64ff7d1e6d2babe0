// Takes the screenshots that illustrate USER_GUIDE.md (docs/images/). They
// are committed; `SECURECHAT_SCREENSHOTS=1 npx playwright test screenshots`
// (in e2e/) regenerates them. Without that variable the pages are still
// driven and checked, and nothing is written.
const path = require('node:path');
const { test, expect } = require('@playwright/test');
const { messages, newUser, openChat, send } = require('./helpers');

const OUT = path.resolve(__dirname, '..', '..', 'docs', 'images');
const write = process.env.SECURECHAT_SCREENSHOTS === '1';

/** A small gradient picture as PNG bytes (for the preview). */
function gradientPng(width, height) {
  const zlib = require('node:zlib');
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3);
    for (let x = 0; x < width; x++) {
      row[1 + x * 3] = Math.round((255 * x) / width);
      row[2 + x * 3] = Math.round((180 * y) / height) + 40;
      row[3 + x * 3] = 200;
    }
    rows.push(row);
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', zlib.deflateSync(Buffer.concat(rows))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

async function shot(page, name) {
  if (write) await page.screenshot({ path: path.join(OUT, `${name}.png`) });
}

test('the pages of the user guide', async ({ browser }) => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  await page.goto(process.env.SECURECHAT_URL);
  await page.getByRole('tab', { name: 'I am new here' }).click();
  await page.getByRole('textbox', { name: 'Username' }).fill('ada');
  await shot(page, 'create-account');

  const ada = await newUser(browser, 'ada.l');
  const grace = await newUser(browser, 'grace.h');
  await openChat(grace.page, 'ada.l');
  await send(grace.page, 'Morning! The **build** is green again 🎉');
  await openChat(ada.page, 'grace.h');
  await expect(messages(ada.page)).toContainText('The build is green again');
  await send(ada.page, 'Great — notes are at https://example.org/notes, *thanks*!');
  await expect(messages(grace.page)).toContainText('notes are at');
  await ada.page.setViewportSize({ width: 1100, height: 700 });
  await shot(ada.page, 'chat');
  await ada.page.getByRole('button', { name: 'Emoji' }).click();
  await expect(ada.page.getByRole('dialog', { name: 'Emoji' })).toBeVisible();
  await shot(ada.page, 'emoji');
  await ada.page.keyboard.press('Escape');
  const png = require('node:path').join(require('node:os').tmpdir(), 'team-photo.png');
  require('node:fs').writeFileSync(png, gradientPng(320, 180));
  const [chooser] = await Promise.all([
    grace.page.waitForEvent('filechooser'),
    grace.page.getByRole('button', { name: 'Attach file' }).click(),
  ]);
  await chooser.setFiles(png);
  await expect(messages(ada.page).getByRole('img', { name: 'Preview of team-photo.png' })).toBeVisible();
  await shot(ada.page, 'files');
  await ada.page.getByRole('button', { name: 'Safety number' }).click();
  await expect(ada.page.locator('.safety')).toHaveText(/^(\d{5} ){11}\d{5}$/);
  await shot(ada.page, 'safety-number');
  for (const c of [context, ada.context, grace.context]) await c.close();
});
