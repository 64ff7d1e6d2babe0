const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { test, expect } = require('@playwright/test');
const { PASSWORD, messages, newUser, openChat, send, url } = require('./helpers');
const server = require('../server');

/** Starts `securechat join` for the test host; resolves with the relay and its URL. */
function startRelay() {
  const pem = fs.readFileSync(path.join(server.current().dataDir, 'tls', 'ca.pem'), 'utf8');
  const fingerprint = new crypto.X509Certificate(pem).fingerprint256;
  return new Promise((resolve, reject) => {
    const child = spawn(server.BINARY, ['join', url(), '--fingerprint', fingerprint, '--no-browser'], {
      env: { ...process.env, SECURECHAT_LOG: 'warn', SECURECHAT_DATA_DIR: fs.mkdtempSync(path.join(os.tmpdir(), 'sc-joiner-')) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child.on('exit', (code) => reject(new Error(`the relay exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).once('line', (line) => resolve({ child, relayUrl: line.trim() }));
  });
}

test('a user on the local relay chats with a user on the host, with no certificate exception', async ({ browser }) => {
  const { child, relayUrl } = await startRelay();
  expect(relayUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
  const host = await newUser(browser, 'on.host');
  // No ignoreHTTPSErrors: the relay user's browser never meets the host's certificate.
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    await page.goto(relayUrl);
    await expect(page.getByText('Connected through SecureChat on this computer')).toBeVisible();
    await expect(page.locator('#check-certificate')).toBeHidden();
    if (process.env.SECURECHAT_SCREENSHOTS === '1') {
      // USER_GUIDE.md's "Joining" picture.
      await page.setViewportSize({ width: 900, height: 620 });
      await page.screenshot({ path: path.resolve(__dirname, '..', '..', 'docs', 'images', 'joining.png') });
    }
    await page.getByRole('tab', { name: 'I am new here' }).click();
    await page.getByRole('textbox', { name: 'Username' }).fill('on.relay');
    await page.getByRole('textbox', { name: 'Password', exact: true }).fill(PASSWORD);
    await page.getByRole('textbox', { name: 'Confirm password' }).fill(PASSWORD);
    await page.getByRole('button', { name: 'Create account' }).click();
    await expect(page.getByRole('navigation', { name: 'Chats' })).toBeVisible({ timeout: 60_000 });
    await openChat(page, 'on.host');
    await send(page, 'hello from the relay side');
    await openChat(host.page, 'on.relay');
    await expect(messages(host.page)).toContainText('hello from the relay side');
    await send(host.page, 'hello from the host side');
    await expect(messages(page)).toContainText('hello from the host side');
  } finally {
    child.kill('SIGTERM');
    await context.close();
    await host.context.close();
  }
});

test('a browser that opens the host directly is told how to check its certificate', async ({ browser }) => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  try {
    await page.goto(url());
    const help = page.locator('#check-certificate');
    await expect(help).toBeVisible();
    await help.getByText("Is this really your team's SecureChat?").click();
    await expect(help).toContainText('SHA-256 fingerprint');
    await expect(page.getByText('Connected through SecureChat on this computer')).toBeHidden();
  } finally {
    await context.close();
  }
});
