const { test, expect } = require('@playwright/test');
const { admin, messages, newUser, openChat, resetAccount, resetElsewhere, resetPeer, send, signUp, standIn, startPeer } = require('./helpers');

test('a browser user and a native-client user exchange messages both ways', async ({ browser }) => {
  const web = await newUser(browser, 'webber');
  const peer = await startPeer('rusty', 'webber');
  try {
    await openChat(web.page, 'rusty');
    // RustCrypto → WebCrypto
    await expect(messages(web.page)).toContainText('hello from rust');
    // WebCrypto → RustCrypto (and back)
    await send(web.page, 'hi from the browser ✓');
    await expect(messages(web.page)).toContainText('rust got: hi from the browser ✓');
    await expect(messages(web.page).locator('.msg.bad')).toHaveCount(0);
  } finally {
    peer.kill();
    await web.context.close();
  }
});

test("a contact's key change blocks sending until accepted", async ({ browser }) => {
  const web = await newUser(browser, 'wary');
  const peer = await startPeer('changer', 'wary');
  try {
    await openChat(web.page, 'changer');
    await expect(messages(web.page)).toContainText('hello from rust');
    peer.kill();
    // The administrator resets the contact's account; it comes back with new keys.
    const out = admin('user', 'reset', 'changer');
    const code = out.split('\n')[1].trim();
    resetPeer('changer', code);
    const warning = web.page.getByRole('alert').filter({ hasText: 'keys of changer changed' });
    await expect(warning).toBeVisible();
    await expect(web.page.getByRole('button', { name: 'Send' })).toBeDisabled();
    await web.page.getByRole('button', { name: 'Safety number' }).click();
    await expect(web.page.locator('.safety')).toHaveText(/^(\d{5} ){11}\d{5}$/);
    await web.page.getByRole('button', { name: 'Accept new keys' }).last().click();
    await expect(warning).toBeHidden();
    await expect(web.page.getByRole('button', { name: 'Send' })).toBeEnabled();
  } finally {
    peer.kill();
    await web.context.close();
  }
});

test('an administrator reset: the code sets a new password and keys in the browser', async ({ browser }) => {
  const friend = await newUser(browser, 'friend');
  const forgetful = await newUser(browser, 'forgetful');
  await openChat(friend.page, 'forgetful');
  await send(friend.page, 'a message from before the reset');
  await openChat(forgetful.page, 'friend');
  await expect(messages(forgetful.page)).toContainText('a message from before the reset');
  // A reply pins forgetful's own keys in this browser.
  await send(forgetful.page, 'a reply from before the reset');
  await expect(messages(forgetful.page).locator('.msg.mine .state')).toHaveText(/Sent|Read/);

  const code = admin('user', 'reset', 'forgetful').split('\n')[1].trim();
  // The open session ends at once; the sign-in screen comes back.
  await expect(forgetful.page.getByRole('button', { name: 'Sign in' })).toBeVisible();
  await resetAccount(forgetful.page, 'forgetful', code, 'a brand new passphrase after the reset');
  await openChat(forgetful.page, 'friend');
  await expect(messages(forgetful.page).locator('.msg.bad').first()).toContainText('failed its signature or decryption check');
  await expect(friend.page.getByRole('alert').filter({ hasText: 'keys of forgetful changed' })).toBeVisible();
  // The new keys are forgetful's own, in the browser that pinned the old ones: sending works.
  await send(forgetful.page, 'the first message after the reset');
  await expect(messages(forgetful.page).locator('.msg.mine', { hasText: 'the first message after the reset' }).locator('.state')).toHaveText(/Sent|Read/);
  await friend.page.getByRole('button', { name: 'Accept new keys' }).last().click();
  await expect(messages(friend.page).locator('.msg .body', { hasText: /^the first message after the reset$/ })).toHaveCount(1);
  for (const u of [friend, forgetful]) await u.context.close();
});

test('the browser sends time-ordered UUID version 7 message ids', async ({ browser }) => {
  const a = await newUser(browser, 'clocky');
  const b = await newUser(browser, 'ticky');
  try {
    await openChat(a.page, 'ticky');
    // Record the frames the page sends from now on.
    await a.page.evaluate(() => {
      const original = WebSocket.prototype.send;
      window.sentFrames = [];
      WebSocket.prototype.send = function (data) {
        window.sentFrames.push(String(data));
        return original.call(this, data);
      };
    });
    const before = Date.now();
    await send(a.page, 'one tick');
    await send(a.page, 'two ticks');
    await openChat(b.page, 'clocky');
    await expect(messages(b.page)).toContainText('two ticks');
    const after = Date.now();
    const ids = (await a.page.evaluate(() => window.sentFrames))
      .map((f) => JSON.parse(f))
      .filter((f) => f.type === 'send')
      .map((f) => f.id);
    expect(ids).toHaveLength(2);
    const times = ids.map((id) => {
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      return parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
    });
    expect(times[0]).toBeGreaterThanOrEqual(before);
    expect(times[1]).toBeGreaterThanOrEqual(times[0]);
    expect(times[1]).toBeLessThanOrEqual(after);
    expect(ids[0]).not.toBe(ids[1]);
  } finally {
    for (const u of [a, b]) await u.context.close();
  }
});

test("a contact's key change made while the page was away is found on reconnecting", async ({ browser }) => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  // The page's socket runs through a stand-in that can drop the host's
  // `user` frames, as a page that is away misses them, and close.
  let away = false;
  const socket = await standIn(context, { toPage: (frame) => !(away && frame.type === 'user') });
  const page = await signUp(context, 'returner');
  const peer = await startPeer('reborn', 'returner');
  try {
    await openChat(page, 'reborn');
    await expect(messages(page)).toContainText('hello from rust');
    peer.kill();
    away = true;
    const code = admin('user', 'reset', 'reborn').split('\n')[1].trim();
    resetPeer('reborn', code);
    const warning = page.getByRole('alert').filter({ hasText: 'keys of reborn changed' });
    await expect(page.getByRole('button', { name: 'Send' })).toBeEnabled();
    away = false;
    socket.close();
    await expect(warning).toBeVisible();
    await expect(page.getByRole('button', { name: 'Send' })).toBeDisabled();
  } finally {
    peer.kill();
    await context.close();
  }
});

test('a message from a contact reset while the page was away says their keys changed, not that it was tampered with', async ({ browser }) => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  // The page's socket runs through a stand-in that drops everything the
  // host sends while the page is away, then closes.
  let away = false;
  const socket = await standIn(context, { toPage: () => !away });
  const page = await signUp(context, 'kept.a');
  const b = await newUser(browser, 'kept.b');
  try {
    await openChat(b.page, 'kept.a');
    await send(b.page, 'before the reset');
    await openChat(page, 'kept.b');
    await expect(messages(page)).toContainText('before the reset');
    away = true;
    await b.context.close();
    // Its owner sets a new password, and new keys, with the code, and writes.
    const { context: again, page: b2 } = await resetElsewhere(browser, 'kept.b');
    await openChat(b2, 'kept.a');
    await send(b2, 'after the reset');
    await expect(messages(b2).locator('.msg', { hasText: 'after the reset' }).locator('.state')).toHaveText(/Sent|Read/);
    away = false;
    socket.close();
    // The replay brings it: opened with the new keys once the accounts are
    // read again, and held back until they are accepted.
    await expect(page.getByRole('alert').filter({ hasText: 'keys of kept.b changed' })).toBeVisible();
    await expect(messages(page).locator('.msg.bad .body')).toHaveText("kept.b's keys changed: accept them to read new messages.");
    // Its text is nowhere until then, not even in the chat list.
    await expect(page.getByRole('navigation', { name: 'Chats' })).not.toContainText('after the reset');
    await page.getByRole('button', { name: 'Accept new keys' }).last().click();
    await expect(messages(page).locator('.msg .body', { hasText: /^after the reset$/ })).toHaveCount(1);
    await expect(messages(page).locator('.msg.bad')).toHaveCount(0);
    await again.close();
  } finally {
    await context.close();
  }
});
