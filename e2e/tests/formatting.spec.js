const { test, expect } = require('@playwright/test');
const { messages, newUser, openChat, send } = require('./helpers');

test('formatting and emoji render; HTML and script payloads stay text', async ({ browser }) => {
  const a = await newUser(browser, 'fmt.a');
  const b = await newUser(browser, 'fmt.b');
  let dialogs = 0;
  for (const p of [a.page, b.page]) p.on('dialog', () => dialogs++);
  await openChat(a.page, 'fmt.b');
  await send(a.page, '**bold** and *italic* and `code` and [a link](https://example.org/x) 🎉');
  const payloads = [
    '<img src=x onerror=alert(1)>',
    '<script>alert(2)</script>',
    '[click](javascript:alert(3))',
    '"><svg onload=alert(4)>',
  ];
  for (const p of payloads) await send(a.page, p);
  // The emoji picker inserts Unicode text.
  await a.page.getByRole('button', { name: 'Emoji' }).click();
  await a.page.getByRole('searchbox', { name: 'Search emoji' }).fill('red heart');
  await a.page.getByRole('button', { name: 'red heart', exact: true }).click();
  await expect(a.page.getByRole('textbox', { name: 'Message' })).toHaveValue('❤️');
  await a.page.getByRole('button', { name: 'Send' }).click();

  await openChat(b.page, 'fmt.a');
  const log = messages(b.page);
  await expect(log.locator('strong')).toHaveText('bold');
  await expect(log.locator('em')).toHaveText('italic');
  await expect(log.locator('code')).toHaveText('code');
  const link = log.getByRole('link', { name: 'a link' });
  await expect(link).toHaveAttribute('href', 'https://example.org/x');
  await expect(link).toHaveAttribute('rel', 'noopener noreferrer');
  await expect(log).toContainText('🎉');
  await expect(log).toContainText('❤️');
  for (const p of payloads) await expect(log).toContainText(p);
  await expect(log.locator('img, script, svg')).toHaveCount(0);
  await expect(log.getByRole('link')).toHaveCount(1);
  expect(dialogs).toBe(0);
  for (const u of [a, b]) await u.context.close();
});
