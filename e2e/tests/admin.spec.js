const { test, expect } = require('@playwright/test');
const { newUser } = require('./helpers');

test('common passwords are refused; the administration page shows sessions, invites and the audit log', async ({ browser }) => {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(process.env.SECURECHAT_URL);
  await page.getByRole('tab', { name: 'I am new here' }).click();
  await page.getByRole('textbox', { name: 'Username' }).fill('weakling');
  await page.getByRole('textbox', { name: 'Password', exact: true }).fill('1qaz2wsx3edc4rfv');
  await page.getByRole('textbox', { name: 'Confirm password' }).fill('1qaz2wsx3edc4rfv');
  await page.getByRole('button', { name: 'Create account' }).click();
  await expect(page.locator('#form-register .error')).toHaveText(/too common/);
  await context.close();

  // The first account of a host is its administrator. The tests share one
  // host and this file runs first, so that is this one.
  const admin = await newUser(browser, 'overseer');
  const me = await admin.page.evaluate(() => fetch('/api/me').then((r) => r.json()));
  expect(me.is_admin).toBe(true);
  const other = await newUser(browser, 'underling');
  await admin.page.getByRole('button', { name: 'Settings' }).click();
  await admin.page.getByRole('button', { name: 'Open administration' }).click();
  const dialog = admin.page.getByRole('dialog');
  await expect(dialog.getByRole('heading', { name: 'Active sessions' })).toBeVisible();
  await expect(dialog).toContainText('this session');
  await dialog.getByRole('button', { name: 'Create invite code' }).click();
  const code = dialog.locator('output').filter({ hasText: 'one use' });
  await expect(code).toHaveText(/^[A-Za-z0-9_-]{22} \(one use/);
  await expect(dialog.getByRole('heading', { name: 'Audit log' })).toBeVisible();
  // A change shows in its row; the code shown once stays.
  await dialog.getByRole('button', { name: 'Disable underling' }).click();
  const row = dialog.getByRole('row', { name: /^underling/ }).first();
  await expect(row).toContainText('disabled');
  await expect(dialog.getByRole('button', { name: 'Enable underling' })).toBeVisible();
  await expect(code).toHaveText(/^[A-Za-z0-9_-]{22} \(one use/);
  await dialog.getByRole('button', { name: 'Enable underling' }).click();
  await expect(row).toContainText('active');
  // A change the host does not take says why, and shows what the host kept.
  const registration = dialog.getByRole('combobox', { name: 'Registration' });
  const before = await registration.inputValue();
  await admin.page.route(/\/api\/admin\/registration$/, (route) =>
    route.request().method() === 'PUT'
      ? route.fulfill({ status: 503, contentType: 'application/json', body: JSON.stringify({ error: 'busy', message: 'Refused for the test.' }) })
      : route.continue(),
  );
  await registration.selectOption('closed');
  await expect(dialog.locator('#dialog-error')).toHaveText('Refused for the test.');
  await expect(registration).toHaveValue(before);
  await admin.context.close();
  await other.context.close();
});
