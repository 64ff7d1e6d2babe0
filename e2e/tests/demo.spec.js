const { test, expect } = require('@playwright/test');
const { PASSWORD, attach, messages, newGroup, newUser, openChat, send, signIn, signOut, standIn, url } = require('./helpers');

test('three users chat pairwise, each message seen by its recipient only', async ({ browser }) => {
  const u1 = await newUser(browser, 'user1');
  const u2 = await newUser(browser, 'user2');
  const u3 = await newUser(browser, 'user3');
  // New accounts appear in everyone's list without a reload.
  for (const { page } of [u1, u2, u3]) {
    for (const name of ['user1', 'user2', 'user3']) {
      if (name === (await page.locator('#me-name').textContent())) continue;
      await expect(page.getByRole('navigation', { name: 'Chats' }).getByRole('button', { name: new RegExp(`^${name}\\b`) })).toBeVisible();
    }
  }

  await openChat(u1.page, 'user2');
  await send(u1.page, 'Hello user2, from user1');
  await openChat(u2.page, 'user1');
  await expect(messages(u2.page)).toContainText('Hello user2, from user1');

  await openChat(u2.page, 'user3');
  await send(u2.page, 'Hi user3, it is user2');
  await openChat(u3.page, 'user2');
  await expect(messages(u3.page)).toContainText('Hi user3, it is user2');

  await openChat(u3.page, 'user1');
  await send(u3.page, 'And back to user1');
  await openChat(u1.page, 'user3');
  await expect(messages(u1.page)).toContainText('And back to user1');

  // Switching chats without a reload keeps each conversation apart.
  await openChat(u1.page, 'user2');
  await expect(messages(u1.page)).toContainText('Hello user2, from user1');
  await expect(messages(u1.page)).not.toContainText('And back to user1');
  await openChat(u3.page, 'user2');
  await expect(messages(u3.page)).not.toContainText('Hello user2, from user1');
  await expect(messages(u3.page)).not.toContainText('And back to user1');

  for (const u of [u1, u2, u3]) await u.context.close();
});

test('at phone width one pane shows at a time, with a way back', async ({ browser }) => {
  const a = await newUser(browser, 'phone.a');
  const b = await newUser(browser, 'phone.b');
  await b.page.setViewportSize({ width: 390, height: 760 });
  const nav = b.page.getByRole('navigation', { name: 'Chats' });
  await expect(nav).toBeVisible();
  await openChat(a.page, 'phone.b');
  await send(a.page, 'hello, small screen');
  await nav.getByRole('button', { name: /^phone\.a\b/ }).click();
  await expect(nav).toBeHidden();
  await expect(messages(b.page)).toContainText('hello, small screen');
  await b.page.getByRole('button', { name: 'Back to chats' }).click();
  await expect(nav).toBeVisible();
  for (const u of [a, b]) await u.context.close();
});

test('a click on the chat list lands when a message redraws the list between press and release', async ({ browser }) => {
  const a = await newUser(browser, 'press.a');
  const b = await newUser(browser, 'press.b');
  const c = await newUser(browser, 'press.c');
  await openChat(b.page, 'press.a');
  await send(b.page, 'before the press');
  const nav = a.page.getByRole('navigation', { name: 'Chats' });
  const entry = nav.getByRole('button', { name: /^press\.b\b/ });
  const top = nav.getByRole('listitem').first();
  await expect(entry).toContainText('before the press');
  // press.c writes last, so press.b's entry is second until press.b writes again.
  await openChat(c.page, 'press.a');
  await send(c.page, 'on top for now');
  await expect(top).toContainText('on top for now');
  const box = await entry.boundingBox();
  await a.page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await a.page.mouse.down();
  await expect(entry).toBeFocused();
  await send(b.page, 'during the press');
  await expect(entry).toContainText('during the press');
  // While pressed, the entry keeps its place (second) and the focus.
  await expect(top).toContainText('on top for now');
  await expect(entry).toBeFocused();
  await a.page.mouse.up();
  await expect(a.page.getByRole('heading', { level: 2 })).toHaveText('press.b');
  await expect(messages(a.page)).toContainText('during the press');
  // Released, the list takes its order: the latest message first.
  await expect(top).toContainText('during the press');
  for (const u of [a, b, c]) await u.context.close();
});

test('a redraw builds again only the messages whose look changed', async ({ browser }) => {
  const a = await newUser(browser, 'redraw.a');
  const b = await newUser(browser, 'redraw.b');
  await openChat(a.page, 'redraw.b');
  for (let i = 1; i <= 12; i++) await send(a.page, `line ${i} with **bold**, _italics_ and https://example.com/${i}`);
  await openChat(b.page, 'redraw.a');
  await expect(messages(b.page)).toContainText('line 12 with bold');
  // Acknowledged, then read: the last changes a message's look gets.
  await expect(messages(a.page).locator('.msg .state', { hasText: 'Read' })).toHaveCount(12);
  /** The elements one redraw of the open chat creates. */
  const built = (page) =>
    page.evaluate(async () => {
      const app = await import('/js/app.js');
      const create = document.createElement;
      let n = 0;
      document.createElement = function (...args) {
        n += 1;
        return create.apply(this, args);
      };
      try {
        app.drawMessages();
      } finally {
        document.createElement = create;
      }
      return n;
    });
  expect(await built(a.page)).toBe(0);
  expect(await built(b.page)).toBe(0);
  await expect(messages(a.page).locator('.msg')).toHaveCount(12);
  await expect(messages(a.page).locator('.msg').last()).toContainText('line 12 with bold, italics and https://example.com/12');
  for (const u of [a, b]) await u.context.close();
});

test('while a changed key is not accepted, a send gives its text back and a file is not uploaded', async ({ browser }) => {
  const fs = require('node:fs');
  const os = require('node:os');
  const path = require('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'securechat-guard-'));
  const file = path.join(dir, 'note.txt');
  fs.writeFileSync(file, 'a small file');
  const a = await newUser(browser, 'guard.a');
  const b = await newUser(browser, 'guard.b');
  try {
    await openChat(a.page, 'guard.b');
    await send(a.page, 'before the change');
    await expect(messages(a.page).locator('.msg .state', { hasText: /Sent|Read/ })).toHaveCount(1);
    // The page learns of the change only as it seals (as after a time
    // offline): Send is still enabled when the text goes.
    await a.page.evaluate(async () => (await import('/js/app.js')).state.changed.add('guard.b'));
    await send(a.page, 'not for keys nobody accepted');
    await expect(a.page.getByRole('alert').filter({ hasText: 'keys of guard.b changed' })).toBeVisible();
    await expect(a.page.getByRole('textbox', { name: 'Message' })).toHaveValue('not for keys nobody accepted');
    await attach(a.page, file);
    // Accepted: the same file goes, and only now.
    await a.page.evaluate(async () => (await import('/js/app.js')).acceptKeys('guard.b'));
    await attach(a.page, file);
    await expect(messages(a.page).locator('.msg')).toHaveCount(2);
    await expect(messages(a.page).locator('.msg .state', { hasText: /Sent|Read/ })).toHaveCount(2);
    await expect(messages(a.page)).not.toContainText('not for keys nobody accepted');
  } finally {
    for (const u of [a, b]) await u.context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a message too long for the host shows Not sent, and the connection stays', async ({ browser }) => {
  const a = await newUser(browser, 'long.a');
  const b = await newUser(browser, 'long.b');
  try {
    await openChat(a.page, 'long.b');
    let sockets = 0;
    a.page.on('websocket', () => {
      sockets += 1;
    });
    await send(a.page, 'x'.repeat(70_000));
    const state = messages(a.page).locator('.msg', { hasText: 'xxxx' }).locator('.state');
    await expect(state).toHaveText('Not sent');
    await expect(state).toHaveAttribute('title', 'This message is too long to send.');
    await expect(messages(a.page).locator('.msg', { hasText: 'xxxx' }).locator('.why')).toHaveText('This message is too long to send.');
    await send(a.page, 'a short one');
    await expect(messages(a.page).locator('.msg', { hasText: 'a short one' }).locator('.state')).toHaveText(/Sent|Read/);
    expect(sockets).toBe(0);
  } finally {
    for (const u of [a, b]) await u.context.close();
  }
});

test('a long chat opens on its newest messages; older pages come as the reader scrolls up, or asks', async ({ browser }) => {
  const a = await newUser(browser, 'paged.a');
  const b = await newUser(browser, 'paged.b');
  // Pages of 10 instead of 100, so that 25 messages make three of them,
  // and a log short enough to scroll.
  await a.context.route(/\/api\/chats\/[^/]+\/messages\?/, (route) => {
    const u = new URL(route.request().url());
    if (u.searchParams.get('limit') === '100') u.searchParams.set('limit', '10');
    route.continue({ url: u.toString() });
  });
  // Written while paged.a's page is closed; it opens again signed in.
  await a.page.close();
  await openChat(b.page, 'paged.a');
  const texts = Array.from({ length: 25 }, (_, i) => `line ${i + 1} of the long chat`);
  for (const text of texts) await send(b.page, text);
  await expect(messages(b.page).locator('.msg .state', { hasText: /Sent|Read/ })).toHaveCount(25);
  const page = await a.context.newPage();
  await page.setViewportSize({ width: 900, height: 420 });
  await page.goto(url());
  await openChat(page, 'paged.b');
  const log = messages(page);
  const body = (n) => log.locator('.msg .body', { hasText: new RegExp(`^line ${n} of the long chat$`) });
  await expect(log.locator('.msg')).toHaveCount(10);
  await expect(body(25)).toBeInViewport();
  // Scrolled to the top: the page before comes by itself, and the message
  // that was at the top stays where the reader saw it.
  await log.evaluate((el) => {
    el.scrollTop = 0;
  });
  await expect(log.locator('.msg')).toHaveCount(20);
  await expect(body(16)).toBeInViewport();
  await expect(body(6)).not.toBeInViewport();
  // Or asked for; the first page has nothing before it.
  await log.getByRole('button', { name: 'Show older messages' }).click();
  await expect(log.locator('.msg')).toHaveCount(25);
  await expect(log.getByRole('button', { name: 'Show older messages' })).toHaveCount(0);
  await expect(log.locator('.msg .body').first()).toHaveText('line 1 of the long chat');
  for (const n of [1, 5, 6, 15, 16, 25]) await expect(body(n)).toHaveCount(1);
  for (const u of [a, b]) await u.context.close();
});

test('a chat whose history cannot be fetched says so, offers to try again, and its messages go to it', async ({ browser }) => {
  const a = await newUser(browser, 'unfetched.a');
  const b = await newUser(browser, 'unfetched.b');
  await openChat(b.page, 'unfetched.a');
  await send(b.page, 'written before it was opened');
  await expect(messages(b.page).locator('.msg .state')).toHaveText(/Sent|Read/);
  // A fresh page of unfetched.a's, whose first history request fails.
  await a.page.close();
  let failures = 1;
  await a.context.route(/\/api\/chats\/[^/]+\/messages\?limit=100$/, (route) => (failures-- > 0 ? route.abort() : route.continue()));
  const page = await a.context.newPage();
  await page.goto(url());
  await openChat(page, 'unfetched.b');
  await expect(messages(page)).toContainText('could not be fetched');
  await send(page, 'sent while its history was missing');
  await expect(messages(b.page)).toContainText('sent while its history was missing');
  await messages(page).getByRole('button', { name: 'Try again' }).click();
  await expect(messages(page)).toContainText('written before it was opened');
  await expect(messages(page)).not.toContainText('could not be fetched');
  for (const u of [a, b]) await u.context.close();
});

test("a group's messages from before a member joined say so to the new member", async ({ browser }) => {
  const a = await newUser(browser, 'joined.a');
  const b = await newUser(browser, 'joined.b');
  const c = await newUser(browser, 'joined.c');
  const id = await a.page.evaluate(async () => {
    const { post } = await import('/js/api.js');
    return (await post('/api/chats', { kind: 'group', name: 'Joiners', members: ['joined.b'] })).id;
  });
  await openChat(a.page, 'Joiners');
  await send(a.page, 'before joined.c came');
  await expect(messages(a.page).locator('.msg .state')).toHaveText(/Sent|Read/);
  await a.page.evaluate(async (chat) => (await import('/js/api.js')).post(`/api/chats/${chat}/members`, { username: 'joined.c' }), id);
  await send(a.page, 'after joined.c came');
  await openChat(c.page, 'Joiners');
  await expect(messages(c.page)).toContainText('after joined.c came');
  await expect(messages(c.page).locator('.msg.bad .body')).toHaveText('Sent before you joined this chat: it was not encrypted for you.');
  for (const u of [a, b, c]) await u.context.close();
});

test('Enter in a dialog field does what its main button does, not Close', async ({ browser }) => {
  const a = await newUser(browser, 'enter.a');
  const b = await newUser(browser, 'enter.b');
  await a.page.reload();
  await a.page.getByRole('button', { name: 'New group' }).click();
  await a.page.getByRole('checkbox', { name: 'enter.b' }).check();
  await a.page.getByRole('textbox', { name: 'Group name' }).fill('Made with Enter');
  await a.page.getByRole('textbox', { name: 'Group name' }).press('Enter');
  await expect(a.page.getByRole('dialog')).toBeHidden();
  await expect(a.page.getByRole('heading', { level: 2 })).toHaveText('Made with Enter');
  for (const u of [a, b]) await u.context.close();
});

test('public keys that the host gives out as your own but are not block sending, with a warning', async ({ browser }) => {
  const a = await newUser(browser, 'self.a');
  const b = await newUser(browser, 'self.b');
  // A host (here a stand-in) that hands self.a's page self.b's keys as self.a's.
  await a.context.route(/\/api\/users$/, async (route) => {
    const response = await route.fetch();
    const users = await response.json();
    const other = users.find((u) => u.username === 'self.b');
    for (const u of users) if (u.username === 'self.a') Object.assign(u, { enc_public: other.enc_public, sig_public: other.sig_public });
    await route.fulfill({ response, json: users });
  });
  await a.page.reload();
  await openChat(a.page, 'self.b');
  await expect(a.page.getByRole('alert').filter({ hasText: 'do not match the keys you signed in with' })).toBeVisible();
  await expect(a.page.getByRole('button', { name: 'Send' })).toBeDisabled();
  await expect(a.page.getByRole('button', { name: 'Accept new keys' })).toBeHidden();
  for (const u of [a, b]) await u.context.close();
});

test('group changes: a refused change says why; a member removed while the group is open sees it closed; the header follows a reconnect', async ({ browser }) => {
  const a = await newUser(browser, 'grp.owner');
  const b = await newUser(browser, 'grp.member');
  let away = false;
  const socket = await standIn(b.context, { toPage: () => !away });
  await b.page.reload();
  await a.page.reload();
  await newGroup(a.page, 'Crew', ['grp.member']);
  await send(a.page, 'welcome aboard');
  await openChat(b.page, 'Crew');
  await expect(messages(b.page)).toContainText('welcome aboard');
  await expect(b.page.locator('#chat-sub')).toHaveText('2 members');

  // A rename the host refuses (an empty name) says why, and the dialog stays.
  await a.page.getByRole('button', { name: 'Members' }).click();
  const dialog = a.page.getByRole('dialog');
  await dialog.getByRole('textbox', { name: 'Group name' }).fill('');
  await dialog.getByRole('button', { name: 'Rename' }).click();
  await expect(dialog.locator('#dialog-error')).not.toBeEmpty();
  // Renamed while grp.member's page is away: its header follows at the reconnect.
  away = true;
  await dialog.getByRole('textbox', { name: 'Group name' }).fill('Crew, renamed');
  await dialog.getByRole('button', { name: 'Rename' }).click();
  await expect(a.page.locator('#chat-title')).toHaveText('Crew, renamed');
  await expect(dialog.locator('#dialog-title')).toHaveText('Members of Crew, renamed');
  await expect(dialog.locator('#dialog-error')).toBeEmpty();
  away = false;
  socket.close();
  await expect(b.page.locator('#chat-title')).toHaveText('Crew, renamed');

  // Removed while the group is open: the pane says so, with nothing left to act on.
  await dialog.getByRole('button', { name: 'Remove grp.member' }).click();
  await expect(dialog.getByRole('button', { name: 'Remove grp.member' })).toBeHidden();
  await dialog.getByRole('button', { name: 'Close' }).click();
  await expect(a.page.locator('#chat-sub')).toHaveText('1 member');
  await expect(b.page.locator('#chat-title')).toHaveText('You are no longer a member of this chat');
  await expect(b.page.locator('#chat-sub')).toBeEmpty();
  await expect(b.page.getByRole('button', { name: 'Members' })).toBeHidden();
  await expect(b.page.locator('#composer')).toBeHidden();
  for (const u of [a, b]) await u.context.close();
});

test('after a reload the chat list shows each chat\'s newest message and orders the chats by it', async ({ browser }) => {
  const a = await newUser(browser, 'list.a');
  const b = await newUser(browser, 'list.b');
  const c = await newUser(browser, 'list.c');
  await a.page.reload();
  // The group is made first, the direct chat after it; the group speaks last.
  await newGroup(a.page, 'Listed', ['list.b']);
  await openChat(c.page, 'list.a');
  await send(c.page, 'an older word');
  await openChat(b.page, 'Listed');
  await send(b.page, 'the newest word');
  await expect(a.page.getByRole('navigation', { name: 'Chats' })).toContainText('the newest word');
  await a.page.reload();
  const chats = a.page.getByRole('navigation', { name: 'Chats' });
  await expect(chats.getByRole('button', { name: /^Listed\b/ })).toContainText('the newest word');
  await expect(chats.getByRole('button', { name: /^list\.c\b/ })).toContainText('an older word');
  // The newest first (then everyone without a chat, by name).
  const entries = chats.getByRole('list').getByRole('button');
  await expect(entries.nth(0)).toHaveText(/^Listed/);
  await expect(entries.nth(1)).toHaveText(/^list\.c/);
  for (const u of [a, b, c]) await u.context.close();
});

test('messages not sent to a group you leave are dropped, not kept for the next sign-in', async ({ browser }) => {
  const a = await newUser(browser, 'quit.a');
  const b = await newUser(browser, 'quit.b');
  // quit.a's sends never reach the host.
  await standIn(a.context, { toHost: (frame) => frame.type !== 'send' });
  await a.page.reload();
  await newGroup(a.page, 'Quitters', ['quit.b']);
  await send(a.page, 'never delivered');
  await expect(messages(a.page).locator('.msg', { hasText: 'never delivered' }).locator('.state')).toHaveText('Sending…');
  await a.page.getByRole('button', { name: 'Members' }).click();
  await a.page.getByRole('dialog').getByRole('button', { name: 'Leave group' }).click();
  await expect(a.page.locator('#chat-title')).toHaveText('You are no longer a member of this chat');
  // Nothing is left to send: signing out does not ask.
  await signOut(a.page);
  const kept = await a.page.evaluate(async () => (await import('/js/keystore.js')).sendsOf('quit.a'));
  expect(kept).toEqual([]);
  for (const u of [a, b]) await u.context.close();
});

test('a password changed in Settings, even with a double click, is changed once and says so', async ({ browser }) => {
  const a = await newUser(browser, 'pw.a');
  const fresh = 'a new passphrase for pw.a';
  await a.page.getByRole('button', { name: 'Settings' }).click();
  const dialog = a.page.getByRole('dialog');
  await dialog.getByLabel('Current password').fill(PASSWORD);
  await dialog.getByLabel('New password', { exact: true }).fill(fresh);
  await dialog.getByLabel('Confirm new password').fill(fresh);
  await dialog.getByRole('button', { name: 'Change password' }).dblclick();
  await expect(dialog.locator('#dialog-error')).toHaveText('Password changed. Your other sessions have been signed out.');
  await a.page.waitForTimeout(500);
  await expect(dialog.locator('#dialog-error')).toHaveText('Password changed. Your other sessions have been signed out.');
  await dialog.getByRole('button', { name: 'Close' }).click();
  await signOut(a.page);
  await signIn(a.page, 'pw.a', fresh);
  await expect(a.page.locator('#me-name')).toHaveText('pw.a');
  await a.context.close();
});
