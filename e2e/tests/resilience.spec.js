const { test, expect } = require('@playwright/test');
const { PASSWORD, admin, messages, newUser, openChat, resetElsewhere, send, signIn, signOut, signUp, standIn, url } = require('./helpers');
const server = require('../server');

test('a server restart mid-conversation: Reconnecting, then every message exactly once', async ({ browser }) => {
  const a = await newUser(browser, 'steady.a');
  const b = await newUser(browser, 'steady.b');
  await openChat(a.page, 'steady.b');
  await openChat(b.page, 'steady.a');
  for (let i = 1; i <= 3; i++) await send(a.page, `before restart ${i}`);
  await expect(messages(b.page)).toContainText('before restart 3');

  const stopped = server.stop(server.current().pid);
  await expect(a.page.getByRole('status')).toHaveText('Reconnecting…');
  await stopped;
  // Written while the server is down: kept in the outbox, sent on reconnect.
  await send(a.page, 'during the outage');
  await server.restart();
  await expect(a.page.getByRole('status')).toBeHidden({ timeout: 60_000 });
  await send(a.page, 'after restart');
  await expect(messages(b.page)).toContainText('after restart', { timeout: 60_000 });
  await expect(messages(b.page)).toContainText('during the outage');
  for (const text of ['before restart 1', 'before restart 2', 'before restart 3', 'during the outage', 'after restart']) {
    await expect(messages(b.page).locator('.msg .body', { hasText: new RegExp(`^${text}$`) })).toHaveCount(1);
    await expect(messages(a.page).locator('.msg .body', { hasText: new RegExp(`^${text}$`) })).toHaveCount(1);
  }
  await expect(messages(a.page).locator('.msg .state', { hasText: /Sending|Not sent/ })).toHaveCount(0);
  // Once acknowledged, a send is forgotten: nothing of it is kept to reseal
  // or send again, however long the page stays open.
  const kept = () =>
    a.page.evaluate(async () => {
      const app = await import('/js/app.js');
      return { unacknowledged: app.unacknowledged(), outbox: app.state.conn?.outbox.size };
    });
  await expect.poll(kept).toEqual({ unacknowledged: 0, outbox: 0 });
  for (const u of [a, b]) await u.context.close();
});

test('a session that ended while the page was away: the sign-in page, not Reconnecting for good', async ({ browser }) => {
  const away = await newUser(browser, 'away');
  const stopped = server.stop(server.current().pid);
  await expect(away.page.getByRole('status')).toHaveText('Reconnecting…');
  await stopped;
  // Its sessions end while the page cannot hear of it: the host then
  // refuses the page's upgrade with 401, which the browser reports as any
  // failed connection.
  admin('user', 'disable', 'away');
  await server.restart();
  await expect(away.page.getByRole('button', { name: 'Sign in' })).toBeVisible({ timeout: 60_000 });
  await away.context.close();
});

test('a wrong password shows the generic error, repeated failures the lockout time', async ({ browser }) => {
  const owner = await newUser(browser, 'locky');
  await owner.context.close();
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(url());
  const attempt = async (password) => {
    await page.getByRole('textbox', { name: 'Username' }).fill('locky');
    await page.getByRole('textbox', { name: 'Password' }).fill(password);
    await page.getByRole('button', { name: 'Sign in' }).click();
  };
  const error = page.locator('#form-signin .error');
  await attempt('not the password at all, really');
  await expect(error).toHaveText(/^Sign-in failed\. Check your username and password/);
  for (let i = 0; i < 4; i++) {
    await attempt(`wrong guess number ${i}`);
    await expect(error).toHaveText(/Sign-in failed/);
  }
  await attempt(PASSWORD);
  await expect(error).toHaveText(/Try again in \d+ seconds\./);
  await context.close();
});

test('export produces the decrypted chat as a TXT file', async ({ browser }) => {
  const a = await newUser(browser, 'exp.a');
  const b = await newUser(browser, 'exp.b');
  await openChat(b.page, 'exp.a');
  await send(b.page, 'first line for the transcript');
  await openChat(a.page, 'exp.b');
  await expect(messages(a.page)).toContainText('first line for the transcript');
  await send(a.page, 'second line, with ünïcødé');
  await expect(messages(b.page)).toContainText('second line');
  // A message of several lines cannot pass for several messages.
  await send(b.page, 'one message\n2026-01-01T00:00:00.000Z exp.a: I agree to pay');
  await expect(messages(a.page)).toContainText('I agree to pay');
  await a.page.getByRole('button', { name: 'Settings' }).click();
  const [download] = await Promise.all([
    a.page.waitForEvent('download'),
    a.page.getByRole('button', { name: 'Export chat as TXT' }).click(),
  ]);
  expect(download.suggestedFilename()).toMatch(/^securechat-exp\.b-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.txt$/);
  const text = require('node:fs').readFileSync(await download.path(), 'utf8');
  expect(text).toMatch(/^SecureChat transcript: exp\.b\n/);
  expect(text).toMatch(/Z exp\.b: first line for the transcript\n/);
  expect(text).toMatch(/Z exp\.a: second line, with ünïcødé\n/);
  expect(text).toMatch(/Z exp\.b: one message\n {4}2026-01-01T00:00:00\.000Z exp\.a: I agree to pay\n/);
  for (const u of [a, b]) await u.context.close();
});

test("send errors get what the protocol's table asks: resent, resealed, renamed, or Not sent with Retry", async ({ browser }) => {
  const b = await newUser(browser, 'errs.b');
  // The page's socket runs through a stand-in that answers chosen `send`
  // frames with an error, as the host would, and passes the rest on.
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  /** @type {string[]} */
  const plan = [];
  /** The ids of the `send` frames the page sent. @type {{id: string}[]} */
  const sends = [];
  await standIn(context, {
    toHost: (frame, page) => {
      if (frame.type !== 'send') return true;
      sends.push({ id: frame.id });
      const code = plan.shift();
      if (!code) return true;
      const members = code === 'members_mismatch' ? { members: ['errs.a', 'errs.b'] } : {};
      page.send(JSON.stringify({ type: 'error', code, id: frame.id, message: `refused: ${code}`, ...members }));
      return false;
    },
  });
  const page = await signUp(context, 'errs.a');
  await openChat(page, 'errs.b');
  const state = (text) => messages(page).locator('.msg', { hasText: text }).locator('.state');

  // Refused once, then stored by themselves: resent or resealed under the
  // same id, or under a new one.
  for (const [code, text, sameId] of [
    ['store_failed', 'one: stored on the second try', true],
    ['duplicate_id', 'two: under a new id', false],
    ['members_mismatch', 'three: sealed again', true],
  ]) {
    plan.push(code);
    await send(page, text);
    await expect(state(text)).toHaveText(/Sent|Read/);
    const [first, second] = sends.slice(-2).map((s) => s.id);
    expect(first === second).toBe(sameId);
  }

  plan.push('bad_envelope');
  await send(page, 'four: sent with Retry');
  await expect(state('four: sent')).toHaveText('Not sent');
  await messages(page).locator('.msg', { hasText: 'four: sent' }).getByRole('button', { name: 'Retry' }).click();
  await expect(state('four: sent')).toHaveText(/Sent|Read/);

  plan.push('store_failed', 'store_failed', 'store_failed', 'store_failed');
  await send(page, 'five: refused four times');
  await expect(state('five: refused')).toHaveText('Not sent', { timeout: 30_000 });
  expect(plan).toHaveLength(0);

  await openChat(b.page, 'errs.a');
  for (const text of ['one: stored on the second try', 'two: under a new id', 'three: sealed again', 'four: sent with Retry']) {
    await expect(messages(b.page).locator('.msg .body', { hasText: new RegExp(`^${text}$`) })).toHaveCount(1);
  }
  await expect(messages(b.page)).not.toContainText('five: refused');
  await expect(messages(page).locator('.msg')).toHaveCount(5);
  for (const c of [context, b.context]) await c.close();
});

test('messages not yet sent outlive a reload and a sign-out, and go once; one refused for good stays until discarded', async ({ browser }) => {
  const b = await newUser(browser, 'out.b');
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  // The page's socket runs through a stand-in that can keep the page's
  // sends from the host, keep the host's acks from the page, or refuse
  // sends for good, as the host would a malformed one.
  /** @type {'pass'|'hold'|'no-ack'|'refuse'} */
  let mode = 'pass';
  await standIn(context, {
    toHost: (frame, page) => {
      if (frame.type === 'send' && mode === 'refuse') {
        page.send(JSON.stringify({ type: 'error', code: 'bad_envelope', id: frame.id, message: 'refused: bad_envelope' }));
      }
      return !(frame.type === 'send' && (mode === 'hold' || mode === 'refuse'));
    },
    toPage: (frame) => !(mode === 'no-ack' && frame.type === 'ack'),
  });
  const page = await signUp(context, 'out.a');
  await openChat(page, 'out.b');
  await openChat(b.page, 'out.a');
  const state = (text) => messages(page).locator('.msg', { hasText: text }).locator('.state');
  /** The sends this browser keeps for out.a. */
  const kept = () => page.evaluate(async () => (await (await import('/js/keystore.js')).sendsOf('out.a')).length);
  const once = async (text) => {
    for (const p of [page, b.page]) await expect(messages(p).locator('.msg .body', { hasText: new RegExp(`^${text}$`) })).toHaveCount(1);
  };

  // Stored by the host, its ack lost with the page; and one that never left it.
  mode = 'no-ack';
  await send(page, 'stored, its ack lost');
  await expect(messages(b.page)).toContainText('stored, its ack lost');
  mode = 'hold';
  await send(page, 'never left the page');
  await expect(state('never left the page')).toHaveText('Sending…');
  await expect.poll(kept).toBe(2);
  mode = 'pass';
  await page.reload();
  await openChat(page, 'out.b');
  await expect(state('never left the page')).toHaveText(/Sent|Read/);
  await expect(state('stored, its ack lost')).toHaveText(/Sent|Read/);
  await once('never left the page');
  await once('stored, its ack lost');
  await expect.poll(kept).toBe(0);

  // Signed out before it went: it goes at the next sign-in in this browser.
  mode = 'hold';
  await send(page, 'written before signing out');
  await expect.poll(kept).toBe(1);
  await signOut(page, { unsent: 'keep' });
  mode = 'pass';
  await signIn(page, 'out.a');
  await openChat(page, 'out.b');
  await expect(state('written before signing out')).toHaveText(/Sent|Read/);
  await once('written before signing out');
  await expect.poll(kept).toBe(0);

  // Refused for good: "Not sent", after a reload too, until discarded.
  mode = 'refuse';
  await send(page, 'refused for good');
  await expect(state('refused for good')).toHaveText('Not sent');
  mode = 'pass';
  await page.reload();
  await openChat(page, 'out.b');
  await expect(state('refused for good')).toHaveText('Not sent');
  await messages(page).locator('.msg', { hasText: 'refused for good' }).getByRole('button', { name: 'Discard' }).click();
  await expect(messages(page)).not.toContainText('refused for good');
  await expect.poll(kept).toBe(0);
  await page.reload();
  await openChat(page, 'out.b');
  await expect(messages(page)).toContainText('written before signing out');
  await expect(messages(page)).not.toContainText('refused for good');
  await expect(messages(b.page)).not.toContainText('refused for good');

  // Signed out with a message not sent, discarding it: nothing of it is kept or sent.
  mode = 'hold';
  await send(page, 'discarded at sign-out');
  await expect.poll(kept).toBe(1);
  await signOut(page, { unsent: 'discard' });
  mode = 'pass';
  await signIn(page, 'out.a');
  await openChat(page, 'out.b');
  await send(page, 'after the discard');
  await expect(messages(b.page)).toContainText('after the discard');
  await expect(messages(b.page)).not.toContainText('discarded at sign-out');
  await expect(messages(page)).not.toContainText('discarded at sign-out');
  await expect.poll(kept).toBe(0);
  for (const c of [context, b.context]) await c.close();
});

test("a message kept while its recipient's keys changed waits, Not sent, until they are accepted", async ({ browser }) => {
  const b = await newUser(browser, 'rekey.b');
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  // The page's socket runs through a stand-in that can keep its sends from the host.
  let hold = false;
  await standIn(context, { toHost: (frame) => !(hold && frame.type === 'send') });
  const page = await signUp(context, 'rekey.a');
  await openChat(page, 'rekey.b');
  const state = messages(page).locator('.msg', { hasText: 'written before the reset' }).locator('.state');
  hold = true;
  await send(page, 'written before the reset');
  await expect(state).toHaveText('Sending…');
  await signOut(page, { unsent: 'keep' });
  hold = false;
  // Meanwhile rekey.b's account is reset: new keys.
  await b.context.close();
  const { context: again, page: b2 } = await resetElsewhere(browser, 'rekey.b');

  // Back: the kept message is neither sent as it was sealed (for the old
  // keys) nor sealed for the new ones nobody accepted.
  await signIn(page, 'rekey.a');
  await openChat(page, 'rekey.b');
  await expect(state).toHaveText('Not sent');
  await expect(state).toHaveAttribute('title', /keys of a member changed/);
  await page.getByRole('button', { name: 'Accept new keys' }).last().click();
  await messages(page).locator('.msg', { hasText: 'written before the reset' }).getByRole('button', { name: 'Retry' }).click();
  await expect(state).toHaveText(/Sent|Read/);
  await openChat(b2, 'rekey.a');
  await expect(messages(b2).locator('.msg .body', { hasText: /^written before the reset$/ })).toHaveCount(1);
  for (const c of [context, again]) await c.close();
});

test("a hidden tab's timers running once a minute keep a live socket, and a dead one is still found", async ({ browser }) => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  await context.clock.install();
  // The page's socket runs through a stand-in that can stop passing on
  // what the host sends, answers to pings included, as a dead socket would.
  let deaf = false;
  await standIn(context, { toPage: () => !deaf });
  const page = await signUp(context, 'hidden.tab');
  const socket = () =>
    page.evaluate(async () => {
      const { state } = await import('/js/app.js');
      window.firstSocket ??= state.conn.ws;
      return { same: state.conn.ws === window.firstSocket, open: state.conn.ws?.readyState === WebSocket.OPEN };
    });
  await expect.poll(socket).toEqual({ same: true, open: true });
  // Browsers run a hidden tab's timers about once a minute: every tick
  // comes long after the one before, as after a sleep.
  await page.clock.pauseAt(Date.now() + 1000);
  for (let minute = 0; minute < 3; minute++) {
    await page.clock.fastForward('01:00');
    await expect.poll(socket).toEqual({ same: true, open: true });
  }
  await expect(page.getByRole('status')).toBeHidden();
  // A socket whose pings go unanswered is given up (a second after the
  // wait, as the check itself came late), and a new one opened.
  deaf = true;
  await page.clock.fastForward('01:00');
  for (let i = 0; i < 2; i++) await page.clock.fastForward('00:05');
  deaf = false;
  await page.clock.fastForward('00:05');
  await expect.poll(socket).toEqual({ same: false, open: true });
  await context.close();
});

test('unread counts follow the host: what came while away counts, and reading on another device clears it', async ({ browser }) => {
  const a = await newUser(browser, 'count.a');
  const b = await newUser(browser, 'count.b');
  // count.a's second device, whose socket runs through a stand-in that can
  // lose everything the host sends, then close.
  const other = await browser.newContext({ ignoreHTTPSErrors: true });
  let away = false;
  const socket = await standIn(other, { toPage: () => !away });
  const second = await other.newPage();
  await second.goto(url());
  await signIn(second, 'count.a');
  const entry = (page) => page.getByRole('navigation', { name: 'Chats' }).getByRole('button', { name: /^count\.b\b/ });
  await openChat(b.page, 'count.a');
  await send(b.page, 'one');
  await expect(entry(second)).toContainText('1 unread');
  away = true;
  await send(b.page, 'two, while away');
  await send(b.page, 'three, while away');
  await expect(messages(b.page).locator('.msg .state', { hasText: /Sent|Read/ })).toHaveCount(3);
  away = false;
  socket.close();
  await expect(entry(second)).toContainText('3 unread');
  // Read on the first device: the second's count goes.
  await openChat(a.page, 'count.b');
  await expect(messages(a.page)).toContainText('three, while away');
  await expect(entry(second)).not.toContainText('unread');
  await expect(second).toHaveTitle('SecureChat');
  // A message of your own counts as read: the host would count it unread at
  // the next welcome otherwise.
  await send(a.page, 'my own reply');
  const caughtUp = () =>
    a.page.evaluate(async () => (await (await import('/js/api.js')).get('/api/chats')).every((c) => c.read_seq >= c.last_seq));
  await expect.poll(caughtUp).toBe(true);
  for (const c of [a.context, b.context, other]) await c.close();
});

test('a message of a chat the page has not heard of (its `chat` frame lost) notifies, as the next ones do, and counts once', async ({ browser }) => {
  const a = await newUser(browser, 'ping.a');
  const b = await newUser(browser, 'ping.b');
  // The `chat` frame that announces the new chat never reaches ping.a's
  // page: it first hears of the chat from its first message.
  await standIn(a.context, { toPage: (frame) => frame.type !== 'chat' });
  // ping.a's notifications, switched on and granted, are recorded instead
  // of shown.
  await a.context.addInitScript(() => {
    localStorage.setItem('securechat.notify', 'on');
    window.notified = [];
    window.Notification = class {
      static permission = 'granted';
      constructor(title, options) {
        window.notified.push(`${title}: ${options?.body}`);
      }
    };
  });
  await a.page.reload();
  await expect(a.page.locator('#me-name')).toHaveText('ping.a');
  const notified = () => a.page.evaluate(() => window.notified);
  await openChat(b.page, 'ping.a');
  await send(b.page, 'first words');
  await expect.poll(notified).toEqual(['ping.b · ping.b: first words']);
  await send(b.page, 'second words');
  await expect.poll(notified).toEqual(['ping.b · ping.b: first words', 'ping.b · ping.b: second words']);
  const entry = a.page.getByRole('navigation', { name: 'Chats' }).getByRole('button', { name: /^ping\.b\b/ });
  await expect(entry).toContainText('2 unread');
  for (const u of [a, b]) await u.context.close();
});

test('new messages of the open chat are announced to screen readers, a catch-up as a count; the history is not read out', async ({ browser }) => {
  const a = await newUser(browser, 'hear.a');
  const b = await newUser(browser, 'hear.b');
  let away = false;
  const socket = await standIn(a.context, { toPage: () => !away });
  await a.page.reload();
  await openChat(b.page, 'hear.a');
  for (let i = 1; i <= 3; i++) await send(b.page, `earlier ${i}`);
  await openChat(a.page, 'hear.b');
  await expect(messages(a.page)).toContainText('earlier 3');
  // The log is not live (its history, drawn whole, is not read out): a
  // region of its own announces what comes while the chat is open.
  await expect(messages(a.page)).toHaveAttribute('aria-live', 'off');
  const announced = a.page.locator('#announce');
  await expect(announced).toHaveAttribute('aria-live', 'polite');
  // (Announcements wait 300 ms, to gather what comes together.)
  await a.page.waitForTimeout(600);
  await expect(announced).toHaveText('');
  await send(b.page, 'are you there?');
  await expect(announced).toHaveText('hear.b: are you there?');
  // Your own messages, sent from another device, are not read back to you.
  const elsewhere = await browser.newContext({ ignoreHTTPSErrors: true });
  const other = await elsewhere.newPage();
  await other.goto(url());
  await signIn(other, 'hear.a');
  await openChat(other, 'hear.b');
  await send(other, 'yes, from my phone');
  await expect(messages(a.page)).toContainText('yes, from my phone');
  await a.page.waitForTimeout(600);
  await expect(announced).toHaveText('hear.b: are you there?');
  await elsewhere.close();
  // What the page missed while away comes back together: a count.
  away = true;
  for (let i = 1; i <= 4; i++) await send(b.page, `while away ${i}`);
  await expect(messages(b.page).locator('.msg .state', { hasText: /Sent|Read/ })).toHaveCount(8);
  away = false;
  socket.close();
  await expect(messages(a.page)).toContainText('while away 4');
  await expect(announced).toHaveText('4 new messages');
  for (const u of [a, b]) await u.context.close();
});

test("a message sealed again after a refusal keeps its place: the chat's later ones wait for it", async ({ browser }) => {
  const a = await newUser(browser, 'order.a');
  const b = await newUser(browser, 'order.b');
  // The host (a stand-in) refuses the first send as sealed for old members.
  let refused = false;
  await standIn(a.context, {
    toHost: (frame, page) => {
      if (frame.type !== 'send' || refused) return true;
      refused = true;
      page.send(JSON.stringify({ type: 'error', code: 'members_mismatch', id: frame.id, message: 'refused: members_mismatch', members: ['order.a', 'order.b'] }));
      return false;
    },
  });
  // The chat's fetch before the reseal waits until the second message is written.
  let release = () => {};
  const written = new Promise((resolve) => (release = resolve));
  await a.context.route(/\/api\/chats\/[^/?]+$/, async (route) => {
    if (refused && route.request().method() === 'GET') await written;
    await route.continue();
  });
  await a.page.reload();
  await openChat(a.page, 'order.b');
  await send(a.page, 'first');
  await expect.poll(() => refused).toBe(true);
  await send(a.page, 'second');
  // The second waits for the first, which is not sealed again yet.
  await a.page.waitForTimeout(300);
  await expect(messages(a.page).locator('.msg', { hasText: 'second' }).locator('.state')).toHaveText('Sending…');
  release();
  await expect(messages(a.page).locator('.msg .state', { hasText: /Sent|Read/ })).toHaveCount(2);
  await openChat(b.page, 'order.a');
  await expect(messages(b.page).locator('.msg .body')).toHaveText(['first', 'second']);
  for (const u of [a, b]) await u.context.close();
});

test('a reload that cannot reach the host at first keeps the user signed in', async ({ browser }) => {
  const { context, page } = await newUser(browser, 'blip');
  await page.close();
  let failures = 2;
  await context.route(/\/api\/me$/, (route) => (failures-- > 0 ? route.abort() : route.continue()));
  const again = await context.newPage();
  await again.goto(url());
  await expect(again.getByRole('navigation', { name: 'Chats' })).toBeVisible();
  await expect(again.locator('#me-name')).toHaveText('blip');
  expect(failures).toBeLessThan(0);
  await context.close();
});

test('read receipts of a busy chat go at most once a second, the last one included', async ({ browser }) => {
  const a = await newUser(browser, 'busy.a');
  const b = await newUser(browser, 'busy.b');
  await openChat(a.page, 'busy.b');
  await openChat(b.page, 'busy.a');
  let reads = 0;
  let synced = false;
  a.page.on('websocket', (ws) => {
    ws.on('framesent', (f) => String(f.payload).startsWith('{"type":"read"') && (reads += 1));
    ws.on('framereceived', (f) => String(f.payload).startsWith('{"type":"synced"') && (synced = true));
  });
  // A fresh socket for the page, so that its frames are seen.
  await a.page.evaluate(async () => (await import('/js/app.js')).state.conn.ws.close());
  await expect.poll(() => synced).toBe(true);
  for (let i = 1; i <= 12; i++) await send(b.page, `quick ${i}`);
  await expect(messages(a.page)).toContainText('quick 12');
  // The last one is marked read too (its receipt may wait its turn).
  await expect(messages(b.page).locator('.msg', { hasText: 'quick 12' }).locator('.state')).toHaveText('Read');
  expect(reads).toBeLessThan(8);
  for (const u of [a, b]) await u.context.close();
});

test("a disabled account's chat stays in the list, marked disabled, to be read", async ({ browser }) => {
  const a = await newUser(browser, 'keeper.a');
  const b = await newUser(browser, 'gone.b');
  await openChat(b.page, 'keeper.a');
  await send(b.page, 'before I go');
  const entry = a.page.getByRole('navigation', { name: 'Chats' }).getByRole('button', { name: /^gone\.b\b/ });
  await expect(entry).toContainText('1 unread');
  admin('user', 'disable', 'gone.b');
  await a.page.reload();
  await expect(entry).toContainText('disabled');
  await expect(entry).toContainText('1 unread');
  await entry.click();
  await expect(messages(a.page)).toContainText('before I go');
  await expect(a.page.getByText('disabled account: read only')).toBeVisible();
  await expect(a.page.getByRole('button', { name: 'Send' })).toBeDisabled();
  // Nor does it take a file.
  await a.page.locator('#file-input').setInputFiles({ name: 'late.txt', mimeType: 'text/plain', buffer: Buffer.from('too late') });
  await a.page.waitForTimeout(500);
  await expect(messages(a.page)).not.toContainText('late.txt');
  // A file dropped on the chat list is not opened by the browser in place of the app.
  const kept = await a.page.evaluate(() => {
    const data = new DataTransfer();
    data.items.add(new File(['x'], 'dropped.txt', { type: 'text/plain' }));
    const drop = new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true });
    document.getElementById('chat-list').dispatchEvent(drop);
    return drop.defaultPrevented;
  });
  expect(kept).toBe(true);
  for (const u of [a, b]) await u.context.close();
});

test('messages lost on their way are fetched: after a gap seen live, and after a replay that falls short', async ({ browser }) => {
  const b = await newUser(browser, 'gaps.b');
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  // The page's socket runs through a stand-in that can drop the host's
  // next `message` frame, or all of them, and close.
  let [dropNext, dropAll] = [false, false];
  const socket = await standIn(context, {
    toPage: (frame) => {
      if (!((dropNext || dropAll) && frame.type === 'message')) return true;
      dropNext = false;
      return false;
    },
  });
  const page = await signUp(context, 'gaps.a');
  await openChat(page, 'gaps.b');
  await openChat(b.page, 'gaps.a');
  await send(b.page, 'first');
  await expect(messages(page)).toContainText('first');
  dropNext = true;
  await send(b.page, 'second, lost on the way');
  await expect.poll(() => dropNext).toBe(false);
  await send(b.page, 'third');
  await expect(messages(page)).toContainText('third');
  await expect(messages(page)).toContainText('second, lost on the way');
  // Messages missed and a replay that falls short (the host replays at
  // most 1 000 a chat): what `welcome` says is there comes through history.
  dropAll = true;
  await send(b.page, 'fourth');
  await send(b.page, 'fifth');
  await expect(messages(b.page).locator('.msg .state', { hasText: /Sent|Read/ })).toHaveCount(5);
  socket.close();
  await expect(messages(page)).toContainText('fifth');
  await expect(messages(page)).toContainText('fourth');
  for (const text of ['first', 'second, lost on the way', 'third', 'fourth', 'fifth']) {
    await expect(messages(page).locator('.msg .body', { hasText: new RegExp(`^${text}$`) })).toHaveCount(1);
  }
  for (const c of [context, b.context]) await c.close();
});

test('75 messages written during an outage go out at the pace the host allows, on one connection', async ({ browser }) => {
  const a = await newUser(browser, 'pace.a');
  const b = await newUser(browser, 'pace.b');
  await openChat(a.page, 'pace.b');
  await openChat(b.page, 'pace.a');
  const stopped = server.stop(server.current().pid);
  await expect(a.page.getByRole('status')).toHaveText('Reconnecting…');
  await stopped;
  const texts = Array.from({ length: 75 }, (_, i) => `written offline ${i + 1}`);
  for (const text of texts) await send(a.page, text);
  // Connections the host welcomed (attempts while it starts fail).
  let sockets = 0;
  let refused = 0;
  a.page.on('websocket', (ws) => {
    ws.on('framereceived', (f) => {
      if (String(f.payload).startsWith('{"type":"welcome"')) sockets += 1;
      if (String(f.payload).includes('"code":"rate_limited"')) refused += 1;
    });
  });
  await server.restart();
  // All of them at once would pass the host's burst (20) and meet 50
  // refusals in a row, which close the socket (1008), again and again.
  await expect(messages(b.page).locator('.msg')).toHaveCount(75, { timeout: 90_000 });
  await expect(messages(a.page).locator('.msg .state', { hasText: /Sending|Not sent/ })).toHaveCount(0);
  for (const text of [texts[0], texts[37], texts[74]]) {
    await expect(messages(b.page).locator('.msg .body', { hasText: new RegExp(`^${text}$`) })).toHaveCount(1);
  }
  expect(sockets).toBe(1);
  // Past the burst, the rest go at the host's pace instead of being
  // refused and resent in turn (265 refusals before; 5 here, those of the
  // sends already on their way).
  expect(refused).toBeLessThan(20);
  for (const u of [a, b]) await u.context.close();
});
