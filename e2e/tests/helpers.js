const { expect } = require('@playwright/test');

const PASSWORD = 'correct horse battery staple for tests';

function url() {
  return process.env.SECURECHAT_URL;
}

/** A new browser context with a user who has just created an account. */
async function newUser(browser, name, password = PASSWORD) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await signUp(context, name, password);
  return { context, page };
}

/** A new page of `context` with a user who has just created an account. */
async function signUp(context, name, password = PASSWORD) {
  const page = await context.newPage();
  page.on('dialog', (d) => {
    throw new Error(`unexpected dialog: ${d.message()}`);
  });
  await page.goto(url());
  await page.getByRole('tab', { name: 'I am new here' }).click();
  await page.getByRole('textbox', { name: 'Username' }).fill(name);
  await page.getByRole('textbox', { name: 'Password', exact: true }).fill(password);
  await page.getByRole('textbox', { name: 'Confirm password' }).fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.getByRole('navigation', { name: 'Chats' })).toBeVisible({ timeout: 60_000 });
  return page;
}

/** On the sign-in screen: signs `name` in and waits for the chat list. */
async function signIn(page, name, password = PASSWORD) {
  await page.getByRole('textbox', { name: 'Username' }).fill(name);
  await page.getByRole('textbox', { name: 'Password' }).fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByRole('navigation', { name: 'Chats' })).toBeVisible({ timeout: 60_000 });
}

/**
 * Signs out through Settings. With messages not yet sent, the page asks
 * first: `unsent` is 'keep' or 'discard' then.
 * @param {import('@playwright/test').Page} page @param {{unsent?: 'keep'|'discard'}} [options]
 */
async function signOut(page, { unsent } = {}) {
  await page.getByRole('button', { name: 'Settings' }).click();
  await page.getByRole('button', { name: 'Sign out', exact: true }).click();
  if (unsent) {
    const dialog = page.getByRole('dialog');
    await expect(dialog).toContainText('not sent yet');
    if (unsent === 'discard') await dialog.getByRole('checkbox', { name: 'Discard them instead' }).check();
    await dialog.getByRole('button', { name: 'Sign out', exact: true }).click();
  }
  await expect(page.getByRole('button', { name: 'Sign in' })).toBeVisible();
}

/** Opens the chat whose entry's name starts with `name`. */
async function openChat(page, name) {
  const nav = page.getByRole('navigation', { name: 'Chats' });
  await nav.getByRole('button', { name: new RegExp(`^${name}\\b`) }).click();
  await expect(page.getByRole('heading', { level: 2 })).toHaveText(name);
}

/** Makes the group `name` with `members` through "New group"; it opens. */
async function newGroup(page, name, members) {
  await page.getByRole('button', { name: 'New group' }).click();
  for (const m of members) await page.getByRole('checkbox', { name: m }).check();
  await page.getByRole('textbox', { name: 'Group name' }).fill(name);
  await page.getByRole('button', { name: 'Create group' }).click();
  await expect(page.locator('#chat-title')).toHaveText(name);
}

async function send(page, text) {
  await page.getByRole('textbox', { name: 'Message' }).fill(text);
  await page.getByRole('button', { name: 'Send' }).click();
}

/** Attaches `file` (a path) to the open chat through the file chooser. */
async function attach(page, file) {
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.getByRole('button', { name: 'Attach file' }).click()]);
  await chooser.setFiles(file);
}

/** On the sign-in screen: sets a new password (and new keys) with an administrator's reset code. */
async function resetAccount(page, name, code, password = PASSWORD) {
  await page.getByRole('tab', { name: 'I have a reset code' }).click();
  const form = page.locator('#form-reset');
  await form.getByRole('textbox', { name: 'Username' }).fill(name);
  await form.getByRole('textbox', { name: 'Reset code' }).fill(code);
  await form.getByRole('textbox', { name: 'Password', exact: true }).fill(password);
  await form.getByRole('textbox', { name: 'Confirm password' }).fill(password);
  await form.getByRole('button', { name: 'Reset account' }).click();
}

/**
 * Runs the sockets of `context`'s pages through a stand-in between page and
 * host. `toHost(frame, page)` and `toPage(frame)` get each frame, parsed,
 * and return false to drop it; `toHost` may answer through `page.send`.
 * The result's `close()` ends the current socket, as a lost connection.
 * @param {import('@playwright/test').BrowserContext} context
 * @param {{toHost?: (frame: any, page: import('@playwright/test').WebSocketRoute) => boolean, toPage?: (frame: any) => boolean}} [filters]
 */
async function standIn(context, { toHost = () => true, toPage = () => true } = {}) {
  /** @type {(() => void)|undefined} */
  let closeCurrent;
  await context.routeWebSocket(/\/ws$/, (ws) => {
    const host = ws.connectToServer();
    closeCurrent = () => {
      ws.close({ code: 1001, reason: 'away' });
      host.close();
    };
    ws.onMessage((message) => {
      if (toHost(JSON.parse(String(message)), ws)) host.send(message);
    });
    host.onMessage((message) => {
      if (toPage(JSON.parse(String(message)))) ws.send(message);
    });
  });
  return { close: () => closeCurrent?.() };
}

function messages(page) {
  return page.getByRole('log', { name: 'Messages' });
}

module.exports = { PASSWORD, attach, messages, newGroup, newUser, openChat, resetAccount, send, signIn, signOut, signUp, standIn, url };

const { spawn, execFileSync } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');
const server = require('../server');

const PEER = process.env.SECURECHAT_PEER || path.resolve(__dirname, '..', '..', 'target', 'debug', 'examples', 'interop_peer');

/** The host's CA certificate (PEM path), for native clients. */
function caPath() {
  return path.join(server.current().dataDir, 'tls', 'ca.pem');
}

/** Starts a native peer that registers `user`, greets `peer` and echoes; resolves once it is ready. */
function startPeer(user, peer) {
  return new Promise((resolve, reject) => {
    const child = spawn(PEER, ['echo', url(), caPath(), user, peer], { stdio: ['ignore', 'pipe', 'inherit'] });
    child.on('exit', (code) => reject(new Error(`the native peer exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.trim() === 'ready') resolve(child);
    });
  });
}

/** Runs the native peer's reset with an administrator's code. */
function resetPeer(user, code) {
  execFileSync(PEER, ['reset', url(), caPath(), user, code], { stdio: ['ignore', 'pipe', 'inherit'] });
}

/** Runs an admin command of the executable on the test host's data. */
function admin(...args) {
  return execFileSync(server.BINARY, [...args, '--data-dir', server.current().dataDir], {
    env: { ...process.env, SECURECHAT_MASTER_KEY: server.MASTER_KEY, SECURECHAT_LOG: 'warn' },
    encoding: 'utf8',
  });
}

module.exports.startPeer = startPeer;
module.exports.resetPeer = resetPeer;
module.exports.admin = admin;

/**
 * An administrator resets `name` (the command line), and its owner sets a
 * new password and new keys with the code in a new browser context.
 * @param {import('@playwright/test').Browser} browser @param {string} name
 */
async function resetElsewhere(browser, name) {
  const code = admin('user', 'reset', name).split('\n')[1].trim();
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(url());
  await resetAccount(page, name, code);
  await expect(page.getByRole('navigation', { name: 'Chats' })).toBeVisible({ timeout: 60_000 });
  return { context, page };
}

module.exports.resetElsewhere = resetElsewhere;
