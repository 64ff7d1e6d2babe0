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
  await admin.page.getByRole('button', { name: 'Settings' }).click();
  await admin.page.getByRole('button', { name: 'Open administration' }).click();
  const dialog = admin.page.getByRole('dialog');
  await expect(dialog.getByRole('heading', { name: 'Active sessions' })).toBeVisible();
  await expect(dialog).toContainText('this session');
  await dialog.getByRole('button', { name: 'Create invite code' }).click();
  await expect(dialog.locator('output')).toHaveText(/^[A-Za-z0-9_-]{22} \(one use/);
  await expect(dialog.getByRole('heading', { name: 'Audit log' })).toBeVisible();
  await admin.context.close();
});
