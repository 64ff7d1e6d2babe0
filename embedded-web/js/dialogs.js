// Dialogs: settings (theme, notifications, export, password, sign out),
// new group, chat details (safety number, members), administration.

import { ApiError, call, get, post } from './api.js';
import { decode, encode } from './b64.js';
import * as e2e from './e2e.js';
import * as store from './keystore.js';
import {
  acceptKeys,
  activeChat,
  addChat,
  applyTheme,
  chatTitle,
  drawHeader,
  drawList,
  openChat,
  passwordProblem,
  publicKeys,
  signOut,
  state,
  userChanged,
} from './app.js';

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/**
 * Shows the dialog with `title` and `body`; `onOk` runs on OK and keeps the
 * dialog open if it throws (the message is shown).
 * @param {string} title @param {Node} body @param {(() => Promise<void>)|null} onOk @param {string} [okLabel]
 */
function show(title, body, onOk, okLabel = 'OK') {
  const dialog = /** @type {HTMLDialogElement} */ ($('dialog'));
  $('dialog-title').textContent = title;
  $('dialog-body').replaceChildren(body);
  $('dialog-error').textContent = '';
  const ok = /** @type {HTMLButtonElement} */ ($('dialog-ok'));
  ok.hidden = !onOk;
  ok.textContent = okLabel;
  // Close is not a submit button, so Enter in a field means OK, not Close.
  $('dialog-close').onclick = () => dialog.close();
  ok.onclick = async (event) => {
    event.preventDefault();
    if (!onOk) return;
    ok.disabled = true;
    try {
      await onOk();
      dialog.close();
    } catch (err) {
      $('dialog-error').textContent = err instanceof Error ? err.message : String(err);
    } finally {
      ok.disabled = false;
    }
  };
  dialog.showModal();
}

/**
 * Makes `button` run `act` in an open dialog: while it runs the button is
 * disabled, and a failure is shown in the dialog, which stays open.
 * @param {HTMLElement} button @param {() => Promise<void>} act
 */
function onAction(button, act) {
  button.addEventListener('click', async () => {
    $('dialog-error').textContent = '';
    /** @type {HTMLButtonElement} */ (button).disabled = true;
    try {
      await act();
    } catch (err) {
      $('dialog-error').textContent = err instanceof Error ? err.message : String(err);
    } finally {
      /** @type {HTMLButtonElement} */ (button).disabled = false;
    }
  });
}

/** @param {string} tag @param {Record<string, string>} [attrs] @param {(Node|string)[]} [children] */
function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/plain;charset=utf-8' }));
  const a = el('a', { href: url, download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** Every message of a chat, decrypted here, as a TXT transcript. */
export async function exportChat(chat) {
  const lines = [`SecureChat transcript: ${chatTitle(chat.info)}`, `Exported ${new Date().toISOString()}`, ''];
  let after = 0;
  for (;;) {
    const page = await get(`/api/chats/${chat.info.id}/messages?after=${after}&limit=200`);
    for (const m of page.messages) {
      let text;
      try {
        const content = await e2e.open(m, state.me.username, state.keys.enc, await publicKeys(m.sender));
        if (state.changed.has(m.sender)) text = `[held back: ${m.sender}'s keys changed and are not accepted]`;
        else if (content.type === 'file') text = `[file] ${String(content.file?.name ?? '')} (${Number(content.file?.size) || 0} bytes)`;
        else text = typeof content.text === 'string' ? content.text : '';
      } catch (err) {
        text = err instanceof Error && err.message === e2e.NOT_A_RECIPIENT ? '[sent before you joined this chat]' : '[a message that failed verification]';
      }
      // A message's own line breaks start indented lines, so that no text
      // can pass for a line of the transcript (a time and a sender).
      lines.push(`${new Date(m.ts).toISOString()} ${m.sender}: ${text.replace(/\r\n|[\r\n\u2028\u2029]/g, '\n    ')}`);
      after = m.seq;
    }
    if (!page.more) break;
  }
  const stamp = new Date().toISOString().replace(/[:]/g, '-').replace(/\..*/, '');
  const safe = chatTitle(chat.info).replace(/[^A-Za-z0-9_.-]+/g, '_');
  download(`securechat-${safe}-${stamp}.txt`, lines.join('\n') + '\n');
}

export function openSettings() {
  const tpl = /** @type {HTMLTemplateElement} */ ($('settings-template'));
  const body = /** @type {HTMLElement} */ (tpl.content.firstElementChild.cloneNode(true));
  const q = (name) => /** @type {any} */ (body.querySelector(`[name="${name}"]`));
  for (const e of body.querySelectorAll('.admin-only')) /** @type {HTMLElement} */ (e).hidden = !state.me.is_admin;
  q('theme').value = localStorage.getItem('securechat.theme') ?? 'system';
  q('theme').addEventListener('change', () => {
    localStorage.setItem('securechat.theme', q('theme').value);
    applyTheme(q('theme').value);
  });
  q('notify').checked = state.notify;
  q('notify').addEventListener('change', async () => {
    if (q('notify').checked && typeof Notification !== 'undefined' && Notification.permission !== 'granted') {
      q('notify').checked = (await Notification.requestPermission()) === 'granted';
    }
    state.notify = q('notify').checked;
    localStorage.setItem('securechat.notify', state.notify ? 'on' : 'off');
  });
  q('export').disabled = !activeChat();
  q('export').addEventListener('click', async () => {
    const chat = activeChat();
    if (chat) await exportChat(chat);
  });
  const passwords = ['old', 'new', 'confirm'];
  q('change').addEventListener('click', async () => {
    const change = /** @type {HTMLButtonElement} */ (q('change'));
    // Once at a time: a second change would check the old password again
    // after the first had replaced it, and report a failure that was not.
    change.disabled = true;
    $('dialog-error').textContent = 'Changing the password…';
    try {
      const problem = await passwordProblem(q('new').value, q('confirm').value);
      if (problem) throw new Error(problem);
      await changePassword(q('old').value, q('new').value);
      $('dialog-error').textContent = 'Password changed. Your other sessions have been signed out.';
      for (const n of passwords) q(n).value = '';
    } catch (err) {
      $('dialog-error').textContent = err instanceof ApiError && err.code === 'wrong_password'
        ? 'The current password is not correct.'
        : err instanceof Error ? err.message : String(err);
    } finally {
      change.disabled = false;
    }
  });
  // Typed passwords do not stay in the page once the dialog is closed.
  $('dialog').addEventListener('close', () => passwords.forEach((n) => (q(n).value = '')), { once: true });
  q('signout').addEventListener('click', () => confirmSignOut(false));
  q('signout-all').addEventListener('click', () => confirmSignOut(true));
  q('admin').addEventListener('click', () =>
    openAdmin().catch((err) => ($('dialog-error').textContent = err instanceof Error ? err.message : String(err))),
  );
  show('Settings', body, null);
}

/**
 * Signs out; with messages not yet sent, asks first whether this browser
 * keeps them for the next sign-in or discards them (a shared computer).
 * @param {boolean} everywhere
 */
async function confirmSignOut(everywhere) {
  const unsent = (await store.sendsOf(state.me.username).catch(() => [])).length;
  if (!unsent) {
    await signOut(everywhere);
    return;
  }
  const discard = el('input', { type: 'checkbox', name: 'discard-unsent' });
  const body = el('div', {}, [
    el('p', {}, [
      `${unsent === 1 ? '1 message is' : `${unsent} messages are`} not sent yet. This browser keeps ${unsent === 1 ? 'it' : 'them'}, encrypted, and sends ${unsent === 1 ? 'it' : 'them'} when you sign in here again.`,
    ]),
    el('label', {}, [discard, ' Discard them instead']),
  ]);
  show('Sign out', body, () => signOut(everywhere, /** @type {HTMLInputElement} */ (discard).checked), 'Sign out');
}

/** Re-wraps the same private keys under a key derived from the new password. */
async function changePassword(oldPassword, newPassword) {
  const me = state.me.username;
  const k = await get('/api/keys');
  const old = await e2e.deriveKeys(oldPassword, decode(k.salt), k.iterations);
  let enc;
  let sig;
  try {
    enc = await e2e.unwrapPrivate(old.wrapKey, me, 'enc', k.enc_private, true);
    sig = await e2e.unwrapPrivate(old.wrapKey, me, 'sig', k.sig_private, true);
  } catch {
    throw new Error('The current password is not correct.');
  }
  const salt = e2e.randomBytes(16);
  const fresh = await e2e.deriveKeys(newPassword, salt, e2e.ITERATIONS);
  await post('/api/change-password', {
    old_auth_key: encode(old.authKey),
    salt: encode(salt),
    iterations: e2e.ITERATIONS,
    auth_key: encode(fresh.authKey),
    enc_private: await e2e.wrapPrivate(fresh.wrapKey, me, 'enc', enc),
    sig_private: await e2e.wrapPrivate(fresh.wrapKey, me, 'sig', sig),
  });
}

export function openGroupDialog() {
  const name = el('input', { 'aria-label': 'Group name', required: '', maxlength: '64' });
  const members = el('fieldset', {}, [el('legend', {}, ['Members'])]);
  for (const u of [...state.users.values()].sort((a, b) => a.username.localeCompare(b.username))) {
    if (u.username === state.me.username || u.disabled) continue;
    const box = el('input', { type: 'checkbox', value: u.username });
    members.append(el('label', {}, [box, ` ${u.username}`]), el('br'));
  }
  const body = el('div', {}, [el('label', {}, ['Group name ', name]), members]);
  show(
    'New group',
    body,
    async () => {
      const chosen = [...members.querySelectorAll('input:checked')].map((i) => /** @type {HTMLInputElement} */ (i).value);
      const info = await post('/api/chats', { kind: 'group', name: /** @type {HTMLInputElement} */ (name).value, members: chosen });
      addChat(info);
      drawList();
      await openChat(info.id);
    },
    'Create group',
  );
}

/** Safety number (direct chats) or members (groups). */
export async function openChatDetails(chat) {
  const me = state.me.username;
  if (chat.info.kind === 'direct') {
    const peer = chat.info.members.find((m) => m.username !== me)?.username ?? me;
    const [mine, theirs] = await Promise.all([publicKeys(me), publicKeys(peer)]);
    const number = e2e.safetyNumber(me, mine.fingerprint, peer, theirs.fingerprint);
    const body = el('div', {}, [
      el('p', {}, [`Compare this number with ${peer}, in person or on a call. If it matches on both screens, nobody is in the middle.`]),
      el('p', { class: 'safety' }, [number]),
    ]);
    if (state.changed.has(peer)) {
      body.append(el('p', {}, [`${peer}'s keys changed since you first talked.`]));
      show('Safety number', body, async () => acceptKeys(peer), 'Accept new keys');
    } else show('Safety number', body, null);
    return;
  }
  const owner = chat.info.members.some((m) => m.username === me && m.role === 'owner');
  const list = el('ul');
  for (const m of chat.info.members) {
    const li = el('li', {}, [`${m.username}${m.role === 'owner' ? ' (owner)' : ''}`]);
    if (owner && m.username !== me) {
      const remove = el('button', { type: 'button' }, [`Remove ${m.username}`]);
      onAction(remove, async () => {
        await call('DELETE', `/api/chats/${chat.info.id}/members/${encodeURIComponent(m.username)}`);
        li.remove();
      });
      li.append(' ', remove);
    }
    list.append(li);
  }
  const body = el('div', {}, [list]);
  if (owner) {
    const rename = el('input', { 'aria-label': 'Group name', value: chat.info.name ?? '', maxlength: '64', required: '' });
    const renameButton = el('button', { type: 'button' }, ['Rename']);
    onAction(renameButton, async () => {
      const renamed = addChat(await call('PATCH', `/api/chats/${chat.info.id}`, { name: /** @type {HTMLInputElement} */ (rename).value }));
      $('dialog-title').textContent = `Members of ${chatTitle(renamed.info)}`;
      drawList();
      drawHeader();
    });
    const pick = el('select', { 'aria-label': 'Add member' });
    for (const u of state.users.values()) {
      if (!chat.info.members.some((m) => m.username === u.username) && !u.disabled) pick.append(el('option', { value: u.username }, [u.username]));
    }
    const add = el('button', { type: 'button' }, ['Add member']);
    // Nobody left to add: nothing to choose.
    if (!pick.childElementCount) /** @type {HTMLButtonElement} */ (add).disabled = true;
    onAction(add, async () => {
      addChat(await post(`/api/chats/${chat.info.id}/members`, { username: /** @type {HTMLSelectElement} */ (pick).value }));
      drawHeader();
      /** @type {HTMLDialogElement} */ ($('dialog')).close();
    });
    body.append(el('p', {}, [rename, ' ', renameButton]), el('p', {}, [pick, ' ', add]));
  }
  const leave = el('button', { type: 'button' }, ['Leave group']);
  onAction(leave, async () => {
    await call('DELETE', `/api/chats/${chat.info.id}/members/${encodeURIComponent(me)}`);
    /** @type {HTMLDialogElement} */ ($('dialog')).close();
  });
  body.append(el('p', {}, [leave]));
  show(`Members of ${chatTitle(chat.info)}`, body, null);
}

async function openAdmin() {
  const [users, reg, audit, sessions] = await Promise.all([
    get('/api/users'),
    get('/api/admin/registration'),
    get('/api/admin/audit'),
    get('/api/admin/sessions'),
  ]);
  const table = el('table', {}, [el('tr', {}, [el('th', {}, ['User']), el('th', {}, ['State']), el('th', {}, ['Actions'])])]);
  for (const u of users) {
    const actions = el('td');
    const standing = el('td', {}, [u.disabled ? 'disabled' : u.is_admin ? 'administrator' : 'active']);
    // Each change is shown in its row, and the dialog stays as it is: a
    // reset or invite code shown once is not wiped.
    const changed = (entry) => {
      Object.assign(u, entry);
      standing.textContent = u.disabled ? 'disabled' : u.is_admin ? 'administrator' : 'active';
      userChanged(entry);
    };
    if (u.username !== state.me.username) {
      const toggle = el('button', { type: 'button' }, [u.disabled ? `Enable ${u.username}` : `Disable ${u.username}`]);
      onAction(toggle, async () => {
        changed(await call('PATCH', `/api/admin/users/${encodeURIComponent(u.username)}`, { disabled: !u.disabled }));
        toggle.textContent = u.disabled ? `Enable ${u.username}` : `Disable ${u.username}`;
      });
      actions.append(toggle);
      const reset = el('button', { type: 'button' }, [`Reset ${u.username}`]);
      const resetOut = el('output');
      onAction(reset, async () => {
        if (!window.confirm(`Reset ${u.username}? Their password stops working and their old messages become unreadable.`)) return;
        const r = await post(`/api/admin/users/${encodeURIComponent(u.username)}/reset`);
        resetOut.textContent = `One-time code for ${u.username}: ${r.code} (valid until ${new Date(r.expires_at).toLocaleString()})`;
      });
      actions.append(' ', reset, ' ', resetOut);
      if (!u.is_admin) {
        const promote = el('button', { type: 'button' }, [`Promote ${u.username}`]);
        onAction(promote, async () => {
          changed(await call('PATCH', `/api/admin/users/${encodeURIComponent(u.username)}`, { is_admin: true }));
          promote.remove();
        });
        actions.append(' ', promote);
      }
    }
    table.append(el('tr', {}, [el('td', {}, [u.username]), standing, actions]));
  }
  const mode = el('select', { 'aria-label': 'Registration' });
  for (const m of ['open', 'invite', 'closed']) mode.append(el('option', { value: m }, [m]));
  /** @type {HTMLSelectElement} */ (mode).value = reg.mode;
  let modeNow = reg.mode;
  mode.addEventListener('change', async () => {
    const select = /** @type {HTMLSelectElement} */ (mode);
    $('dialog-error').textContent = '';
    select.disabled = true;
    try {
      await call('PUT', '/api/admin/registration', { mode: select.value });
      modeNow = select.value;
    } catch (err) {
      // The host keeps its mode: so does the choice shown.
      select.value = modeNow;
      $('dialog-error').textContent = err instanceof Error ? err.message : String(err);
    } finally {
      select.disabled = false;
    }
  });
  const inviteOut = el('output');
  const invite = el('button', { type: 'button' }, ['Create invite code']);
  onAction(invite, async () => {
    const r = await post('/api/admin/invites', { uses: 1 });
    inviteOut.textContent = `${r.code} (one use, valid until ${new Date(r.expires_at).toLocaleString()})`;
  });
  const sessionTable = el('table', {}, [
    el('tr', {}, [el('th', {}, ['User']), el('th', {}, ['Last used']), el('th', {}, ['From']), el('th', {}, [''])]),
  ]);
  for (const x of sessions) {
    const end = el('td');
    if (!x.current) {
      const b = el('button', { type: 'button' }, [`End ${x.username}'s session`]);
      onAction(b, async () => {
        await call('DELETE', `/api/admin/sessions/${x.id}`);
        end.replaceChildren('ended');
      });
      end.append(b);
    } else end.append('this session');
    sessionTable.append(
      el('tr', {}, [el('td', {}, [x.username]), el('td', {}, [new Date(x.last_seen).toLocaleString()]), el('td', {}, [x.ip]), end]),
    );
  }
  const auditList = el('ol', { class: 'audit' });
  for (const a of audit.slice(0, 100)) {
    auditList.append(el('li', {}, [`${new Date(a.ts).toLocaleString()} ${a.event} ${a.actor} ${a.detail}`]));
  }
  const body = el('div', {}, [
    el('h3', {}, ['Users']),
    table,
    el('p', {}, ['Reset gives a one-time code for a forgotten password; the account gets new keys and its old messages become unreadable.']),
    el('h3', {}, ['Registration']),
    el('label', {}, ['Who may create accounts ', mode]),
    el('p', {}, [invite, ' ', inviteOut]),
    el('h3', {}, ['Active sessions']),
    sessionTable,
    el('h3', {}, ['Audit log']),
    auditList,
  ]);
  show('Administration', body, null);
}
