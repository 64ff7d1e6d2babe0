const { test, expect } = require('@playwright/test');
const { messages, newUser, openChat, send, url } = require('./helpers');

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

test('inline formatting: each rule, which wins a tie, and long runs of markup', async ({ page }) => {
  await page.goto(url());
  const a = (href, label) => `<a href="${href}" target="_blank" rel="noopener noreferrer">${label}</a>`;
  const cases = [
    ['**b** ~~s~~ *i* _u_ `c`', '<strong>b</strong> <s>s</s> <em>i</em> <em>u</em> <code>c</code>'],
    ['**`x`**', '<strong><code>x</code></strong>'],
    ['`**x**`', '<code>**x**</code>'],
    ['`a`*b*', '<code>a</code><em>b</em>'],
    ['a*b* and snake_case_name', 'a*b* and snake_case_name'],
    ['[a](http://x.io)[b](https://y.io/p)', `${a('http://x.io/', 'a')}${a('https://y.io/p', 'b')}`],
    // A link's label holds no "[": the link starts at the last one.
    ['[[a](http://x.io)', `[${a('http://x.io/', 'a')}`],
    ['see https://e.org/x. Then', `see ${a('https://e.org/x', 'https://e.org/x')}. Then`],
    ['http://a.io/**b**', a('http://a.io/**b**', 'http://a.io/**b**')],
    ['[x](javascript:alert(1))', '[x](javascript:alert(1))'],
    // Long runs of markup, each in time proportional to its length.
    ['['.repeat(65536), '['.repeat(65536)],
    ['`a` '.repeat(16000), '<code>a</code> '.repeat(16000)],
    ['**a** '.repeat(10000), '<strong>a</strong> '.repeat(10000)],
  ];
  const html = await page.evaluate(async (inputs) => {
    const { render } = await import('/js/format.js');
    return inputs.map((text) => {
      const d = document.createElement('div');
      d.append(render(text));
      return d.innerHTML;
    });
  }, cases.map(([text]) => text));
  cases.forEach(([text, want], i) => expect(html[i], text.slice(0, 40)).toBe(want));
});
