// SecureChat in the browser: sign-in, the chat list, the conversation,
// sending and receiving end-to-end encrypted messages. The server only ever
// sees ciphertext; every user-supplied string reaches the page as text.

import { ApiError, call, get, post } from './api.js';
import { decode, encode } from './b64.js';
import * as e2e from './e2e.js';
import { morph, placeInOrder } from './dom.js';
import { render } from './format.js';
import * as store from './keystore.js';
import { Connection } from './ws.js';
import { setupEmoji } from './emoji.js';
import { openSettings, openGroupDialog, openChatDetails } from './dialogs.js';
import * as files from './files.js';

/**
 * @typedef {{username: string, enc_public: string, sig_public: string, online: boolean, is_admin: boolean, disabled: boolean}} UserEntry
 * @typedef {{id: string, kind: 'direct'|'group', name: string|null, members: {username: string, role: string}[], last_seq: number, read_seq: number, created_at: number}} ChatInfo
 * @typedef {{id: string, chat: string, sender: string, seq: number, ts: number, envelope: e2e.Envelope}} MessageRecord
 * @typedef {{id: string, sender: string, ts: number, seq: number|null, text: string|null, state: 'sending'|'sent'|'failed'|'bad', error?: string, file?: files.FileDescriptor, transfer?: {loaded: number, total: number, rate: number, cancel?: () => void, label: string}, preview?: string, previewPending?: boolean, uploaded?: boolean, source?: File, unstored?: boolean, paging?: boolean, record?: any}} Shown
 * @typedef {{info: ChatInfo, shown: Map<string, Shown>, lastSeq: number, held: number, ahead: Set<number>, filling: boolean, older: boolean, loadingOlder: boolean, loadFailed?: boolean, readSeen?: number, readSent?: number, countedTo?: number, newestFetched?: number, unread: number, draft: string, scroll: number|null, loaded: boolean}} ChatState
 */

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

export const state = {
  /** @type {{username: string, is_admin: boolean}|null} */ me: null,
  /** @type {{enc: CryptoKey, sig: CryptoKey}|null} */ keys: null,
  /** @type {Map<string, UserEntry>} */ users: new Map(),
  /** @type {Map<string, Promise<e2e.PublicKeys>>} */ publicKeys: new Map(),
  /** Users whose keys changed since they were pinned, until accepted. @type {Set<string>} */ changed: new Set(),
  /** The host's public keys for the user do not pair with the private keys held here. */ ownKeysBad: false,
  /** @type {Map<string, ChatState>} */ chats: new Map(),
  /** The open chat id, or "user:<name>" for a person without a chat yet. @type {string|null} */ active: null,
  /** @type {Set<string>} */ online: new Set(),
  /** @type {Connection|null} */ conn: null,
  notify: localStorage.getItem('securechat.notify') === 'on',
};

// ---- status, theme -------------------------------------------------------

function setStatus(text) {
  const el = $('status');
  el.textContent = text;
  el.hidden = !text;
}

/** Shows `text` in the status line for a few seconds, unless something else shows there by then ("Reconnecting…"). */
function flash(text) {
  setStatus(text);
  setTimeout(() => {
    if ($('status').textContent === text) setStatus('');
  }, 6000);
}

export function applyTheme(theme = localStorage.getItem('securechat.theme') ?? 'system') {
  if (theme === 'system') document.documentElement.removeAttribute('data-theme');
  else document.documentElement.dataset.theme = theme;
}

function lockMessage(err) {
  if (err instanceof ApiError && err.retryAfterMs) {
    const secs = Math.ceil(err.retryAfterMs / 1000);
    const when = secs >= 120 ? `${Math.ceil(secs / 60)} minutes` : `${secs} seconds`;
    return `${err.message} Try again in ${when}.`;
  }
  return err instanceof Error ? err.message : String(err);
}

// ---- sign in / create account ------------------------------------------

function strength(password) {
  let score = 0;
  if (password.length >= 15) score++;
  if (password.length >= 20) score++;
  if (/\s/.test(password.trim()) || /[^A-Za-z0-9]/.test(password)) score++;
  if (/[a-z]/.test(password) && /[A-Z0-9]/.test(password)) score++;
  return score;
}

/** @type {Promise<Set<string>>|null} */
let common = null;

/**
 * What is wrong with a new password (NIST SP 800-63B, OWASP): too short, too
 * long, on the bundled list of common passwords (zxcvbn-ts, MIT), or not
 * confirmed; `null` if nothing.
 * @param {string} password @param {string} [confirm] @returns {Promise<string|null>}
 */
export async function passwordProblem(password, confirm) {
  if (password.length < 15) return 'Use at least 15 characters — a few unrelated words make a strong passphrase.';
  if (password.length > 128) return 'Use at most 128 characters.';
  common ??= fetch('/vendor/zxcvbn-ts-language-common/passwords.json')
    .then((r) => r.json())
    .then((list) => new Set(list));
  const list = await common.catch(() => new Set());
  if (list.has(password.toLowerCase()) || /^(.)\1+$/.test(password) || /^(.{1,4})\1+$/.test(password)) {
    return 'That password is too common or too repetitive. Try a passphrase of a few unrelated words.';
  }
  if (confirm !== undefined && password !== confirm) return 'The two passwords differ.';
  return null;
}

function setupAuth() {
  const tabs = [$('tab-signin'), $('tab-register'), $('tab-reset')];
  const forms = [$('form-signin'), $('form-register'), $('form-reset')];
  tabs.forEach((tab, i) =>
    tab.addEventListener('click', () => {
      tabs.forEach((t, j) => t.setAttribute('aria-selected', String(i === j)));
      forms.forEach((f, j) => (f.hidden = i !== j));
      forms[i].querySelector('input')?.focus();
    }),
  );
  const reg = /** @type {HTMLFormElement} */ (forms[1]);
  reg.password.addEventListener('input', () => {
    /** @type {HTMLMeterElement} */ ($('strength-meter')).value = strength(reg.password.value);
  });

  forms[0].addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = /** @type {HTMLFormElement} */ (event.target);
    const error = form.querySelector('.error');
    const button = form.querySelector('button[type=submit]');
    error.textContent = '';
    button.disabled = true;
    try {
      await signIn(form.username.value.trim().toLowerCase(), form.password.value);
      form.reset();
    } catch (err) {
      error.textContent = lockMessage(err);
    } finally {
      button.disabled = false;
    }
  });

  const newAccountForm = (form, run) =>
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const error = form.querySelector('.error');
      const progress = form.querySelector('.progress');
      const button = form.querySelector('button[type=submit]');
      error.textContent = '';
      const username = form.username.value.trim().toLowerCase();
      if (!/^[a-z0-9_.-]{3,32}$/.test(username)) {
        error.textContent = 'A username has 3 to 32 characters: letters a–z, digits, “_”, “.” or “-”.';
        return;
      }
      const problem = await passwordProblem(form.password.value, form.confirm.value);
      if (problem) {
        error.textContent = problem;
        return;
      }
      button.disabled = true;
      try {
        progress.textContent = 'Generating your encryption keys…';
        await run(form, username);
        form.reset();
      } catch (err) {
        error.textContent = lockMessage(err);
      } finally {
        progress.textContent = '';
        button.disabled = false;
      }
    });
  newAccountForm(reg, (form, username) => register(username, form.password.value, { invite: form.invite.value.trim() }));
  const reset = /** @type {HTMLFormElement} */ (forms[2]);
  newAccountForm(reset, (form, username) => register(username, form.password.value, { code: form.code.value.trim() }));
}

/**
 * A new account (or a reset one, with `code`): keys made here, wrapped under
 * the password-derived key.
 * @param {string} username @param {string} password @param {{invite?: string, code?: string}} extra
 */
async function register(username, password, { invite, code }) {
  const salt = e2e.randomBytes(16);
  const [derived, pairs] = await Promise.all([e2e.deriveKeys(password, salt, e2e.ITERATIONS), e2e.generateKeyPairs()]);
  const [encPriv, sigPriv, encPub, sigPub] = await Promise.all([
    e2e.wrapPrivate(derived.wrapKey, username, 'enc', pairs.enc.privateKey),
    e2e.wrapPrivate(derived.wrapKey, username, 'sig', pairs.sig.privateKey),
    e2e.spki(pairs.enc.publicKey),
    e2e.spki(pairs.sig.publicKey),
  ]);
  const body = {
    username,
    salt: encode(salt),
    iterations: e2e.ITERATIONS,
    auth_key: encode(derived.authKey),
    enc_public: encode(encPub),
    sig_public: encode(sigPub),
    enc_private: encPriv,
    sig_private: sigPriv,
  };
  if (invite) body.invite = invite;
  if (code) body.code = code;
  const response = await post(code ? '/api/reset' : '/api/register', body);
  // Keep only non-extractable copies.
  const keys = {
    enc: await e2e.unwrapPrivate(derived.wrapKey, username, 'enc', encPriv),
    sig: await e2e.unwrapPrivate(derived.wrapKey, username, 'sig', sigPriv),
  };
  await store.saveKeys(username, keys);
  await start(response.user, keys);
}

async function signIn(username, password) {
  const pre = await post('/api/prelogin', { username });
  const derived = await e2e.deriveKeys(password, decode(pre.salt), pre.iterations);
  const response = await post('/api/login', { username, auth_key: encode(derived.authKey) });
  const k = response.keys;
  const keys = {
    enc: await e2e.unwrapPrivate(derived.wrapKey, username, 'enc', k.enc_private),
    sig: await e2e.unwrapPrivate(derived.wrapKey, username, 'sig', k.sig_private),
  };
  await store.saveKeys(username, keys);
  await start(response.user, keys);
}

/**
 * Signs out: the session ends and the keys kept here are cleared. With
 * `discardUnsent`, so is this account's outbox; otherwise what it holds is
 * sent at the account's next sign-in in this browser.
 */
export async function signOut(everywhere = false, discardUnsent = false) {
  try {
    await post(everywhere ? '/api/logout-all' : '/api/logout');
  } catch {
    // Signed out locally regardless.
  }
  if (discardUnsent && state.me) await store.clearSends(state.me.username).catch(() => {});
  await store.clearKeys();
  location.reload();
}

// ---- keys of other people (trust on first use) ------------------------

/** @param {string} username @returns {Promise<e2e.PublicKeys>} */
export function publicKeys(username) {
  let p = state.publicKeys.get(username);
  if (!p) {
    p = (async () => {
      const entry = state.users.get(username) ?? (await get(`/api/users/${encodeURIComponent(username)}`));
      const keys = await e2e.importPublic(entry.enc_public, entry.sig_public);
      const fp = encode(keys.fingerprint);
      const pinned = await store.pinOf(state.me.username, username);
      if (!pinned) await store.pin(state.me.username, username, fp);
      else if (pinned !== fp) state.changed.add(username);
      return keys;
    })();
    state.publicKeys.set(username, p);
    p.catch(() => state.publicKeys.delete(username));
  }
  return p;
}

/**
 * Pins the user's own public keys as the host has them once they prove to
 * pair with the private keys unwrapped here. After an account reset they
 * are new, and the pin of before would otherwise count the user's own keys
 * as changed, which blocks every send.
 */
async function pinOwnKeys() {
  const me = state.me.username;
  try {
    const entry = state.users.get(me) ?? (await get(`/api/users/${encodeURIComponent(me)}`));
    const keys = await e2e.importPublic(entry.enc_public, entry.sig_public);
    if (await e2e.pairsWith(keys, state.keys)) await store.pin(me, me, encode(keys.fingerprint));
    // Not the user's: the host hands out keys that are not theirs.
    else state.ownKeysBad = true;
  } catch {
    // Not checked (the host did not answer): the pin, if any, decides.
  }
}

export async function acceptKeys(username) {
  const keys = await publicKeys(username);
  await store.pin(state.me.username, username, encode(keys.fingerprint));
  state.changed.delete(username);
  drawHeader();
  // What came from them meanwhile is shown now.
  for (const chat of state.chats.values()) {
    for (const m of [...chat.shown.values()]) {
      if (!m.record || m.sender !== username) continue;
      chat.shown.delete(m.id);
      await receive(m.record, false);
    }
  }
  drawMessages();
  drawList();
}

// ---- the app --------------------------------------------------------------

async function start(me, keys) {
  state.me = me;
  state.keys = keys;
  // Fetched before the app shows: if this fails, the sign-in form (or the
  // status line) says so, instead of an empty app.
  const [users, chats] = await Promise.all([get('/api/users'), get('/api/chats')]);
  $('auth').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = me.username;
  for (const u of users) state.users.set(u.username, u);
  for (const c of chats) addChat(c);
  await pinOwnKeys();
  state.conn = new Connection({
    onFrame,
    onState: (s) => {
      if (s === 'signed-out') signOut();
      // Who is online is known again at the next `welcome`: until then nobody shows as online.
      if ((s === 'reconnecting' || s === 'connecting') && state.online.size) {
        state.online = new Set();
        drawList();
        drawHeader();
      }
      // Synced: fetch what the replay did not cover (docs/PROTOCOL.md §5.6),
      // and the newest message of chats not open yet, for the list.
      if (s === 'online') for (const c of state.chats.values()) fill(c);
      if (s === 'online') fetchNewest();
      // Read marks the host has not had yet (lost with a socket) go now.
      if (s === 'online') {
        markRead();
        for (const c of state.chats.values()) sendRead(c);
      }
      // The open chat's history, if fetching it failed, is fetched now.
      const open = activeChat();
      if (s === 'online' && open?.loadFailed && !open.loaded) openChat(open.info.id);
      setStatus(s === 'reconnecting' ? 'Reconnecting…' : s === 'connecting' ? 'Connecting…' : '');
      document.body.dataset.connection = s;
    },
    since: () => Object.fromEntries([...state.chats].filter(([, c]) => c.loaded).map(([id, c]) => [id, c.held])),
  });
  await restoreSends();
  state.conn.start();
  drawList();
}

/** @param {ChatInfo} info */
function addChat(info) {
  const existing = state.chats.get(info.id);
  if (existing) {
    existing.info = info;
    return existing;
  }
  /** @type {ChatState} */
  const chat = { info, shown: new Map(), lastSeq: 0, held: 0, ahead: new Set(), filling: false, older: false, loadingOlder: false, unread: Math.max(0, info.last_seq - info.read_seq), countedTo: info.last_seq, draft: '', scroll: null, loaded: false };
  state.chats.set(info.id, chat);
  return chat;
}

/** The direct chat with `user`, if there is one. */
function directWith(user) {
  for (const c of state.chats.values()) {
    if (c.info.kind === 'direct' && c.info.members.some((m) => m.username === user)) return c;
  }
  return null;
}

export function chatTitle(info) {
  if (info.kind === 'group') return info.name ?? 'Group';
  return info.members.find((m) => m.username !== state.me.username)?.username ?? state.me.username;
}

/**
 * The chat list's entries by what they show ("group:<id>" or "user:<name>"),
 * kept from draw to draw and updated in place: a click whose press and release
 * straddle a redraw (a message or a presence change arriving) still lands on
 * its button, and a focused entry keeps the focus.
 * @type {Map<string, {li: HTMLLIElement, button: HTMLButtonElement, name: HTMLSpanElement, status: HTMLSpanElement, dot: HTMLSpanElement, extra: HTMLSpanElement, preview: HTMLSpanElement}>}
 */
const listEntries = new Map();

/** The kept entry `id` of the chat list, made on first use. @param {string} id */
function listEntry(id) {
  let entry = listEntries.get(id);
  if (!entry) {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    const [name, status, dot, extra, preview] = [0, 1, 2, 3, 4].map(() => document.createElement('span'));
    name.className = 'name';
    status.className = 'visually-hidden';
    dot.setAttribute('aria-hidden', 'true');
    preview.className = 'preview';
    preview.setAttribute('aria-hidden', 'true');
    button.append(name, status, dot, extra, preview);
    // The key is read when clicked: a user's entry becomes their direct chat's.
    button.addEventListener('click', () => openChat(/** @type {string} */ (button.dataset.key)));
    li.appendChild(button);
    entry = { li, button, name, status, dot, extra, preview };
    listEntries.set(id, entry);
  }
  return entry;
}

/**
 * True while a press on the chat list lasts: entries keep their places until
 * it ends, so the release falls on the entry pressed even when a message
 * would move it to the top.
 */
let listPressed = false;

/** The chat's newest message shown (the last of the newest time), or null. @param {ChatState} chat @returns {Shown|null} */
function newestOf(chat) {
  let newest = null;
  for (const m of chat.shown.values()) if (!newest || m.ts >= newest.ts) newest = m;
  return newest;
}

function drawList() {
  const list = $('chat-list');
  const q = /** @type {HTMLInputElement} */ ($('filter')).value.trim().toLowerCase();
  /** @type {{id: string, key: string, name: string, chat: ChatState|null, online: boolean|null, group: boolean, disabled?: boolean}[]} */
  const entries = [];
  for (const c of state.chats.values()) {
    if (c.info.kind === 'group') entries.push({ id: `group:${c.info.id}`, key: c.info.id, name: c.info.name ?? 'Group', chat: c, online: null, group: true });
  }
  for (const u of state.users.values()) {
    if (u.username === state.me.username) continue;
    const chat = directWith(u.username);
    // A disabled account is listed only for the chat you had with it, to read.
    if (u.disabled && !chat) continue;
    entries.push({ id: `user:${u.username}`, key: chat ? chat.info.id : `user:${u.username}`, name: u.username, chat, online: state.online.has(u.username), group: false, disabled: !!u.disabled });
  }
  // Each chat's newest message, found once per drawing (not once per
  // comparison of the sort, nor by copying its messages).
  const newest = new Map(entries.map((e) => [e, e.chat ? newestOf(e.chat) : null]));
  const latest = (e) => Math.max(e.chat?.info.created_at ?? 0, newest.get(e)?.ts ?? 0);
  entries.sort((a, b) => latest(b) - latest(a) || a.name.localeCompare(b.name));
  /** @type {HTMLLIElement[]} */
  const shown = [];
  for (const e of entries) {
    if (q && !e.name.toLowerCase().includes(q)) continue;
    const { li, button, name, status, dot, extra, preview } = listEntry(e.id);
    button.dataset.key = e.key;
    if (state.active === e.key) button.setAttribute('aria-current', 'true');
    else button.removeAttribute('aria-current');
    name.textContent = e.name;
    dot.className = `dot${e.group ? ' group' : e.online ? ' online' : ''}`;
    extra.className = e.chat?.unread ? 'unread' : '';
    extra.textContent = e.chat?.unread ? String(e.chat.unread) : '';
    status.textContent = `${e.group ? ', group' : e.disabled ? ', disabled' : e.online ? ', online' : ', offline'}${e.chat?.unread ? `, ${e.chat.unread} unread` : ''}`;
    const last = newest.get(e);
    preview.textContent = last ? `${last.sender === state.me.username ? 'You: ' : ''}${last.text ?? ''}` : '';
    shown.push(li);
  }
  if (listPressed) {
    const wanted = new Set(shown);
    placeInOrder(list, [...[...list.children].filter((li) => wanted.has(/** @type {HTMLLIElement} */ (li))), ...shown.filter((li) => !li.isConnected)]);
  } else placeInOrder(list, shown);
  for (const [id, entry] of listEntries) if (!entry.li.isConnected) listEntries.delete(id);
  const unread = [...state.chats.values()].reduce((n, c) => n + c.unread, 0);
  document.title = unread ? `(${unread}) SecureChat` : 'SecureChat';
}

/** Whether message `m` gets a preview: an image of at most 20 MiB. @param {Shown} m */
function previewed(m) {
  return !!m.file?.mime?.startsWith('image/') && m.file.size <= 20 * 1024 * 1024;
}

/**
 * Lets go of the decrypted pictures of `chat`'s previews, which would
 * otherwise stay in memory until the page closes; they are fetched again
 * when the chat is open next. @param {ChatState} chat
 */
function dropPreviews(chat) {
  for (const m of chat.shown.values()) {
    if (!m.preview) continue;
    URL.revokeObjectURL(m.preview);
    m.preview = undefined;
    m.previewPending = previewed(m);
  }
}

/** @param {string} key a chat id or "user:<name>" */
export async function openChat(key) {
  const previous = state.active && state.chats.get(state.active);
  const input = /** @type {HTMLTextAreaElement} */ ($('message-input'));
  if (previous) {
    previous.draft = input.value;
    previous.scroll = $('messages').scrollTop;
  }
  if (key.startsWith('user:')) {
    const peer = key.slice(5);
    const existing = directWith(peer);
    if (existing) key = existing.info.id;
    else {
      const info = await post('/api/chats', { kind: 'direct', peer });
      key = addChat(info).info.id;
    }
  }
  // Gone meanwhile (left, or removed: a notification clicked late).
  if (!state.chats.has(key)) return;
  if (previous && previous.info.id !== key) dropPreviews(previous);
  state.active = key;
  const chat = state.chats.get(key);
  $('app').classList.add('in-chat');
  $('composer').hidden = false;
  input.value = chat?.draft ?? '';
  if (chat && !chat.loaded) {
    try {
      await loadHistory(chat);
      chat.loadFailed = false;
    } catch {
      // Offline, or the host refused for now: the log says so, with Retry.
      chat.loadFailed = true;
    }
  }
  drawList();
  drawHeader();
  drawMessages(true);
  for (const m of chat?.shown.values() ?? []) {
    if (m.previewPending) {
      m.previewPending = false;
      fetchFile(m, false);
    }
  }
  markRead();
  input.focus();
}

/** How many messages a page of history brings: the newest when a chat opens, then each older page. */
const HISTORY_PAGE = 100;

async function loadHistory(chat) {
  const page = await get(`/api/chats/${chat.info.id}/messages?limit=${HISTORY_PAGE}`);
  chat.loaded = true;
  chat.older = page.more;
  // The newest page: what lies before it is not wanted until asked for.
  if (page.messages.length) skipTo(chat, page.messages[0].seq - 1);
  for (const m of page.messages) await receive(m, false);
}

/** Whether `fetchNewest` is running. */
let fetchingNewest = false;
/**
 * The pause between two of `fetchNewest`'s requests: a tenth of a second
 * keeps them to half the host's sustained rate (docs/PROTOCOL.md §3.4), so
 * what the user does meanwhile still has room.
 */
const NEWEST_PACE_MS = 100;

/**
 * Fetches the newest message of every chat whose history is not loaded and
 * whose newest message is not shown (after a reload, and for what came while
 * the page was away), one chat at a time: the chat list shows it, and orders
 * chats by it. A chat gone meanwhile is skipped; any other failure ends the
 * pass, and the next reconnect tries again.
 */
async function fetchNewest() {
  if (fetchingNewest) return;
  fetchingNewest = true;
  try {
    for (const chat of [...state.chats.values()]) {
      const newest = newestOf(chat);
      const upTo = chat.info.last_seq;
      // (A chat whose messages the host's retention deleted is asked once.)
      if (chat.loaded || upTo <= Math.max(newest?.seq ?? 0, chat.newestFetched ?? 0)) continue;
      if (!state.chats.has(chat.info.id)) continue;
      let page;
      try {
        page = await get(`/api/chats/${chat.info.id}/messages?limit=1`);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) continue;
        throw err;
      }
      if (!state.chats.has(chat.info.id)) continue;
      chat.newestFetched = upTo;
      for (const m of page.messages) await receive(m, false);
      drawList();
      await new Promise((resolve) => setTimeout(resolve, NEWEST_PACE_MS));
    }
  } catch {
    // Offline, or the host refused for now.
  } finally {
    fetchingNewest = false;
  }
}

/**
 * Fetches the page of messages before the oldest one shown (scrolled to
 * the top of the log, or "Show older messages"), and keeps what the
 * reader was looking at where it was.
 * @param {ChatState} chat
 */
async function loadOlder(chat) {
  if (!chat.older || chat.loadingOlder) return;
  let oldest = Infinity;
  for (const m of chat.shown.values()) if (m.seq !== null && m.seq < oldest) oldest = m.seq;
  if (oldest === Infinity) return;
  chat.loadingOlder = true;
  try {
    const page = await get(`/api/chats/${chat.info.id}/messages?before=${oldest}&limit=${HISTORY_PAGE}`);
    // Drawn together once all are open: redraws meanwhile (a message
    // arriving, a receipt) leave the log as the reader holds it.
    for (const m of page.messages) await receive(m, false, true);
    chat.older = page.more;
  } catch {
    // Tried again at the next scroll or click.
  } finally {
    chat.loadingOlder = false;
    for (const m of chat.shown.values()) delete m.paging;
  }
  if (state.active !== chat.info.id) return;
  const list = $('messages');
  const fromBottom = list.scrollHeight - list.scrollTop;
  drawMessages();
  list.scrollTop = list.scrollHeight - fromBottom;
}

/**
 * Counts message `seq` of `chat` as held, and keeps `chat.held` the
 * highest number up to which nothing is missing: that is what the next
 * `hello` asks to be replayed from. A number beyond a gap waits in
 * `chat.ahead`; a gap seen live that is still open a second later (an
 * `ack` may overtake messages on their way) is fetched through history.
 * @param {ChatState} chat @param {number} seq @param {boolean} live
 */
function hold(chat, seq, live) {
  if (seq <= chat.held) return;
  chat.ahead.add(seq);
  while (chat.ahead.delete(chat.held + 1)) chat.held += 1;
  if (live && chat.ahead.size && state.conn?.synced) setTimeout(() => fill(chat), 1000);
}

/** Counts everything up to `seq` of `chat` as held: numbers the host no longer has. @param {ChatState} chat @param {number} seq */
function skipTo(chat, seq) {
  chat.held = Math.max(chat.held, seq);
  for (const n of chat.ahead) if (n <= chat.held) chat.ahead.delete(n);
  while (chat.ahead.delete(chat.held + 1)) chat.held += 1;
}

/**
 * Fetches `chat`'s messages after what it holds without a gap, for as long
 * as some are missing: beyond a replay cut at its limit, or lost on the way.
 * @param {ChatState} chat
 */
async function fill(chat) {
  if (chat.filling || !chat.loaded || (!chat.ahead.size && chat.info.last_seq <= chat.held)) return;
  chat.filling = true;
  try {
    for (;;) {
      const from = chat.held;
      const page = await get(`/api/chats/${chat.info.id}/messages?after=${from}&limit=200`);
      const first = page.messages[0]?.seq;
      // Numbers before the first one the host has: its retention removed
      // them (all of them, when it has none after what is held).
      if (first !== undefined && first > from + 1) skipTo(chat, first - 1);
      if (first === undefined && !page.more) skipTo(chat, Math.max(chat.info.last_seq, ...chat.ahead));
      for (const m of page.messages) await receive(m, false);
      if (!page.more || chat.held === from) break;
    }
  } catch {
    // Tried again at the next gap or reconnect.
  } finally {
    chat.filling = false;
  }
  if (state.active === chat.info.id) drawMessages();
  drawList();
}

export function activeChat() {
  return state.active ? state.chats.get(state.active) ?? null : null;
}

function drawHeader() {
  const chat = activeChat();
  if (!chat) return;
  $('chat-title').textContent = chatTitle(chat.info);
  const others = chat.info.members.map((m) => m.username).filter((u) => u !== state.me.username);
  // A direct chat with a disabled account is there to be read: nothing sent to it would be.
  const gone = chat.info.kind === 'direct' && !!state.users.get(others[0])?.disabled;
  $('chat-sub').textContent =
    chat.info.kind === 'group'
      ? `${chat.info.members.length} ${chat.info.members.length === 1 ? 'member' : 'members'}`
      : gone ? 'disabled account: read only' : state.online.has(others[0]) ? 'online' : 'offline';
  const info = $('chat-info');
  info.hidden = false;
  info.textContent = chat.info.kind === 'group' ? 'Members' : 'Safety number';
  const changed = others.filter((u) => state.changed.has(u));
  const warning = $('key-warning');
  warning.hidden = !changed.length && !state.ownKeysBad;
  const text = state.ownKeysBad
    ? 'The public keys the host has for you do not match the keys you signed in with. Sending is blocked: tell your administrator.'
    : changed.length
      ? `The encryption keys of ${changed.join(', ')} changed. Sending is blocked until you compare safety numbers and accept the new keys.`
      : '';
  // Written only when it changes: an alert written again is read out again.
  const span = /** @type {HTMLElement} */ (warning.querySelector('span'));
  if (span.textContent !== text) span.textContent = text;
  /** @type {HTMLButtonElement} */ ($('send')).disabled = changed.length > 0 || !!state.ownKeysBad || gone;
  $('accept-keys').hidden = !!state.ownKeysBad;
}

// Made once: a date's `toLocale…String` builds a formatter on every call,
// which for a long chat was most of a redraw.
const DAY = new Intl.DateTimeFormat(undefined, { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' });
const TIME = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

function dayOf(ts) {
  return DAY.format(ts);
}

/**
 * The open chat's log items (a message's by its id, a day's heading by
 * "day:<id of the message under it>"), kept from draw to draw and patched in place: a button pressed
 * while a message arrives still gets its click, a selection and the reading
 * position stay, and a preview is not loaded again.
 */
const log = {
  chat: /** @type {string|null} */ (null),
  items: /** @type {Map<string, HTMLLIElement>} */ (new Map()),
  /** What each text message's item was last built from (see `messageLogItem`). @type {Map<string, any[]>} */
  drawnFrom: new Map(),
  /** Whether the reader is at the bottom of the log (as of the last drawing or scroll). */
  atBottom: true,
};

/** The log item `key` as `fresh` shows it: the kept element, patched, or `fresh`. @param {string} key @param {HTMLLIElement} fresh */
function logItem(key, fresh) {
  const kept = log.items.get(key);
  if (!kept) {
    log.items.set(key, fresh);
    return fresh;
  }
  morph(kept, fresh);
  return kept;
}

function clearLog() {
  log.chat = null;
  log.items.clear();
  log.drawnFrom.clear();
  $('messages').replaceChildren();
}

function drawMessages(restoreScroll = false) {
  const chat = activeChat();
  const list = $('messages');
  if (!chat) return;
  if (log.chat !== chat.info.id) {
    clearLog();
    log.chat = chat.info.id;
  }
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  /** @type {HTMLLIElement[]} */
  const items = [];
  let day = '';
  // While its history could not be fetched, and while the host has older messages than those shown.
  if (chat.loadFailed && !chat.loaded) {
    items.push(log.items.get('unloaded') ?? logItem('unloaded', noticeItem('The messages of this chat could not be fetched.', 'Try again', 'history')));
  }
  if (chat.older) items.push(log.items.get('older') ?? logItem('older', noticeItem('', 'Show older messages', 'older')));
  const sorted = [...chat.shown.values()].filter((m) => !m.paging).sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity) || a.ts - b.ts);
  for (const m of sorted) {
    const d = dayOf(m.ts);
    if (d !== day) {
      day = d;
      const kept = log.items.get(`day:${m.id}`);
      if (kept?.textContent === d) items.push(kept);
      else {
        const sep = document.createElement('li');
        sep.className = 'day';
        sep.textContent = d;
        items.push(logItem(`day:${m.id}`, sep));
      }
    }
    items.push(messageLogItem(chat, m));
  }
  placeInOrder(list, items);
  for (const [key, li] of log.items) {
    if (li.isConnected) continue;
    log.items.delete(key);
    log.drawnFrom.delete(key);
  }
  if (restoreScroll && chat.scroll !== null) list.scrollTop = chat.scroll;
  else if (restoreScroll || atBottom) list.scrollTop = list.scrollHeight;
  log.atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

/**
 * A log item above the messages: `text`, then a button that does `action`
 * (see `onLogClick`). @param {string} text @param {string} label @param {string} action
 */
function noticeItem(text, label, action) {
  const li = document.createElement('li');
  li.className = 'older';
  if (text) li.append(text, ' ');
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = label;
  button.dataset.action = action;
  li.appendChild(button);
  return li;
}

/**
 * The log item of message `m`. A text message's item is built again only
 * when something it shows has changed, so a redraw of a long chat (every
 * message, acknowledgement and read receipt makes one) costs little for
 * the messages it leaves alone; a file's is built every time, as its card
 * follows the transfer. @param {ChatState} chat @param {Shown} m
 */
function messageLogItem(chat, m) {
  const kept = log.items.get(m.id);
  const from = m.file || m.transfer ? null : [m, m.state, m.seq, m.ts, m.text, m.error, m.seq !== null && chat.info.kind === 'direct' && readBy(chat, m.seq)];
  const before = log.drawnFrom.get(m.id);
  if (kept && from && before && from.every((v, i) => v === before[i])) return kept;
  if (from) log.drawnFrom.set(m.id, from);
  else log.drawnFrom.delete(m.id);
  return logItem(m.id, messageItem(chat, m));
}

/** The log's buttons: what a click does is read from the message as it is now. @param {MouseEvent} event */
function onLogClick(event) {
  const button = /** @type {Element} */ (event.target).closest('button[data-action]');
  const chat = activeChat();
  if (chat && button?.getAttribute('data-action') === 'older') {
    loadOlder(chat);
    return;
  }
  if (chat && button?.getAttribute('data-action') === 'history') {
    openChat(chat.info.id);
    return;
  }
  const id = button?.closest('li[data-id]')?.getAttribute('data-id');
  const m = id ? chat?.shown.get(id) : undefined;
  if (!button || !chat || !m) return;
  switch (button.getAttribute('data-action')) {
    case 'retry':
      if (m.state === 'failed') resend(chat, m);
      break;
    case 'discard':
      if (m.state === 'failed') discard(chat, m);
      break;
    case 'cancel':
      m.transfer?.cancel?.();
      break;
    case 'download':
      fetchFile(m, true);
      break;
  }
}

/** @param {ChatState} chat @param {Shown} m */
function messageItem(chat, m) {
  const li = document.createElement('li');
  const mine = m.sender === state.me.username;
  li.className = `msg${mine ? ' mine' : ''}${m.state === 'bad' ? ' bad' : ''}`;
  li.dataset.id = m.id;
  const meta = document.createElement('div');
  meta.className = 'meta';
  const who = document.createElement('span');
  who.className = 'sender';
  who.textContent = mine ? 'You' : m.sender;
  const when = document.createElement('time');
  when.dateTime = new Date(m.ts).toISOString();
  when.textContent = TIME.format(m.ts);
  meta.append(who, when);
  if (mine) {
    const st = document.createElement('span');
    st.className = 'state';
    const read = chat.info.kind === 'direct' && m.seq !== null && readBy(chat, m.seq);
    st.textContent = m.state === 'sending' ? 'Sending…' : m.state === 'failed' ? 'Not sent' : read ? 'Read' : 'Sent';
    if (m.state === 'failed' && m.error) st.title = m.error;
    meta.appendChild(st);
    if (m.state === 'failed') {
      const retry = document.createElement('button');
      retry.type = 'button';
      retry.className = 'retry';
      retry.textContent = 'Retry';
      retry.dataset.action = 'retry';
      const discard = document.createElement('button');
      discard.type = 'button';
      discard.className = 'retry';
      discard.textContent = 'Discard';
      discard.dataset.action = 'discard';
      meta.append(retry, discard);
    }
  }
  const body = document.createElement('div');
  body.className = 'body';
  if (m.state === 'bad') body.textContent = m.error ?? 'This message could not be verified and is not shown.';
  else if (m.file || m.transfer) body.appendChild(fileCard(m));
  else body.appendChild(render(m.text ?? ''));
  li.append(meta, body);
  if (mine && m.state === 'failed' && m.error) {
    // Why it was not sent, in view (a title reaches neither a keyboard nor a touch screen).
    const why = document.createElement('p');
    why.className = 'why';
    why.textContent = m.error;
    li.appendChild(why);
  }
  return li;
}

/** The card of a file message: name, size, type, progress, download, preview. @param {Shown} m */
function fileCard(m) {
  const d = m.file;
  const name = d?.name ?? m.transfer?.label ?? 'file';
  const card = document.createElement('div');
  card.className = 'file';
  const icon = document.createElement('span');
  icon.className = 'icon';
  icon.setAttribute('aria-hidden', 'true');
  icon.textContent = files.typeIcon(d?.mime ?? '');
  const title = document.createElement('span');
  title.className = 'fname';
  title.textContent = name;
  const meta = document.createElement('span');
  meta.className = 'fmeta';
  meta.textContent = d ? `${files.humanSize(d.size)} · ${d.mime}` : '';
  const actions = document.createElement('div');
  actions.className = 'actions';
  card.append(icon, title, meta, actions);
  const t = m.transfer;
  if (t) {
    const bar = document.createElement('progress');
    bar.max = 100;
    bar.value = Math.floor((100 * t.loaded) / Math.max(1, t.total));
    bar.setAttribute('aria-label', `Progress of ${name}`);
    const info = document.createElement('span');
    info.className = 'fmeta';
    const left = t.rate > 0 ? Math.ceil((t.total - t.loaded) / t.rate) : null;
    info.textContent = `${bar.value}% · ${files.humanSize(t.rate)}/s${left !== null ? ` · ${left} s left` : ''}`;
    actions.append(bar, info);
    if (t.cancel) {
      const cancel = document.createElement('button');
      cancel.type = 'button';
      cancel.textContent = `Cancel ${name}`;
      cancel.dataset.action = 'cancel';
      actions.append(cancel);
    }
  } else if (d) {
    if (m.uploaded) {
      const bar = document.createElement('progress');
      bar.max = 100;
      bar.value = 100;
      bar.setAttribute('aria-label', `Progress of ${name}`);
      const done = document.createElement('span');
      done.className = 'fmeta';
      done.textContent = 'Uploaded';
      actions.append(bar, done);
    }
    const get = document.createElement('button');
    get.type = 'button';
    get.textContent = `Download ${name}`;
    get.dataset.action = 'download';
    actions.append(get);
  }
  if (m.preview) {
    const img = document.createElement('img');
    img.className = 'preview';
    img.src = m.preview;
    img.alt = `Preview of ${name}`;
    card.append(img);
  }
  return card;
}

/** Re-draws one message in place (progress updates). @param {string} chatId @param {Shown} m */
function redrawMessage(chatId, m) {
  const chat = state.chats.get(chatId);
  if (!chat || state.active !== chatId || log.chat !== chatId || !log.items.has(m.id)) return;
  logItem(m.id, messageItem(chat, m));
}

/** Downloads a file message's file; saves it, or shows it as a preview. */
async function fetchFile(m, saveIt) {
  const chatId = state.active;
  if (!m.file || m.transfer) return;
  const label = m.file.name;
  const onProgress = (p) => {
    m.transfer = { ...p, label };
    redrawMessage(chatId, m);
  };
  if (saveIt && m.file.size > files.STREAM_ABOVE && files.canStream()) {
    // Large files go straight to disk (the picker needs this click).
    const written = files.downloadToDisk(m.file, onProgress);
    m.transfer = { loaded: 0, total: m.file.size, rate: 0, label };
    redrawMessage(chatId, m);
    try {
      await written;
    } catch (err) {
      if (!(err instanceof DOMException && err.name === 'AbortError')) flash(err instanceof Error ? err.message : String(err));
    } finally {
      m.transfer = undefined;
      redrawMessage(chatId, m);
    }
    return;
  }
  m.transfer = { loaded: 0, total: m.file.size, rate: 0, label };
  redrawMessage(chatId, m);
  try {
    const blob = await files.download(m.file, onProgress);
    // Kept only while its chat is open (see `dropPreviews`).
    if (previewed(m) && !m.preview) {
      if (state.active === chatId) m.preview = URL.createObjectURL(blob);
      else m.previewPending = true;
    }
    if (saveIt) files.save(blob, m.file.name);
  } catch (err) {
    m.error = err instanceof Error ? err.message : String(err);
    flash(m.error);
  } finally {
    m.transfer = undefined;
    redrawMessage(chatId, m);
  }
}

/** Uploads and shares each file in the open chat. @param {File[]} list */
async function sendFiles(list) {
  const chat = activeChat();
  // Where no text may be sent (a disabled account's chat, keys to accept), no file either.
  if (!chat || /** @type {HTMLButtonElement} */ ($('send')).disabled) return;
  let accepted = false;
  try {
    accepted = await keysAccepted(chat);
  } catch {
    flash("The members' keys could not be fetched: nothing was sent. Try again.");
  }
  if (!accepted) return;
  for (const file of list) {
    /** @type {Shown} */
    const shown = { id: e2e.messageId(), sender: state.me.username, ts: Date.now(), seq: null, text: `📎 ${file.name}`, state: 'sending', source: file };
    chat.shown.set(shown.id, shown);
    upload(chat, shown, file);
  }
  drawMessages();
}

/**
 * Uploads a file message's file (`shown.source`), then sends the message. A
 * cancelled upload takes its message away; a failed one keeps the file for Retry.
 * @param {ChatState} chat @param {Shown} shown @param {File} file its `source`
 */
function upload(chat, shown, file) {
  const controller = new AbortController();
  const cancel = () => controller.abort();
  const chatId = chat.info.id;
  shown.transfer = { loaded: 0, total: file.size, rate: 0, label: file.name, cancel };
  files
    .upload(file, chatId, (p) => {
      shown.transfer = { ...p, label: file.name, cancel };
      redrawMessage(chatId, shown);
    }, controller.signal)
    .then(async (descriptor) => {
      if (controller.signal.aborted) throw files.cancelled();
      shown.file = descriptor;
      shown.source = undefined;
      shown.transfer = undefined;
      shown.uploaded = true;
      if (previewed(shown)) {
        if (state.active === chatId) shown.preview = URL.createObjectURL(file);
        else shown.previewPending = true;
      }
      redrawMessage(chatId, shown);
      await sealAndSend(chat, shown, { v: 1, type: 'file', file: descriptor });
    })
    .catch((err) => {
      if (controller.signal.aborted) chat.shown.delete(shown.id);
      else {
        shown.state = 'failed';
        shown.transfer = undefined;
        shown.error = err instanceof Error ? err.message : String(err);
      }
      if (state.active === chatId) drawMessages();
    });
}

/** @type {Map<string, Map<string, number>>} chat → user → read seq */
const reads = new Map();
function readBy(chat, seq) {
  const r = reads.get(chat.info.id);
  return !!r && [...r].some(([u, s]) => u !== state.me.username && s >= seq);
}

/**
 * Decrypts and shows a message record (live, replayed or from history).
 * @param {MessageRecord} rec @param {boolean} live
 */
async function receive(rec, live, paging = false) {
  let chat = state.chats.get(rec.chat);
  // A chat this page did not know yet (someone has just started it): its
  // unread count comes with it, this message included.
  const fresh = !chat;
  if (!chat) {
    chat = addChat(await get(`/api/chats/${rec.chat}`));
  }
  chat.lastSeq = Math.max(chat.lastSeq, rec.seq);
  hold(chat, rec.seq, live);
  const existing = chat.shown.get(rec.id);
  if (existing && existing.seq !== null) return;
  /** @type {Shown} */
  const shown = { id: rec.id, sender: rec.sender, ts: rec.ts, seq: rec.seq, text: null, state: 'sent' };
  if (paging) shown.paging = true;
  try {
    await accountsRead;
    const sender = await publicKeys(rec.sender);
    const content = await e2e.open(rec, state.me.username, state.keys.enc, sender);
    if (state.changed.has(rec.sender)) {
      // Neither its text nor its file is shown, in the log, the chat list
      // or a notification, until the new keys are accepted; it is opened
      // again then.
      shown.state = 'bad';
      shown.error = `${rec.sender}'s keys changed: accept them to read new messages.`;
      shown.record = rec;
    } else showContent(shown, content);
  } catch (err) {
    shown.state = 'bad';
    // Signed by its sender, but with no key for this user: a group's
    // messages from before they joined (docs/PROTOCOL.md §4.5.14).
    shown.error =
      err instanceof Error && err.message === e2e.NOT_A_RECIPIENT
        ? 'Sent before you joined this chat: it was not encrypted for you.'
        : 'This message failed its signature or decryption check and is not shown.';
  }
  if (existing?.preview) {
    // Our own picture, sent from this page: its preview is already here.
    shown.preview = existing.preview;
  }
  chat.shown.set(rec.id, shown);
  if (previewed(shown) && !shown.preview) {
    // Images show a preview, decrypted here; fetched once drawn.
    queueMicrotask(() => {
      if (state.active === rec.chat) fetchFile(shown, false);
      else shown.previewPending = true;
    });
  }
  // Counted past what `welcome` counted (the replay's, and any stored
  // while the socket was being set up), or by the new chat's own count.
  const counted = rec.seq > (chat.countedTo ?? 0);
  const unread = counted || (fresh && rec.seq > chat.info.read_seq);
  if (live && rec.sender !== state.me.username) {
    if (unread && (state.active !== rec.chat || document.hidden)) {
      if (counted) chat.unread += 1;
      notify(chat, shown);
    }
    // New to this page (a replay's too): read out if its chat is open.
    if (state.active === rec.chat) announce(`${shown.sender}: ${shown.state === 'bad' ? 'a message that is not shown' : shown.text}`);
  }
}

/** What waits to be announced, and the timer that announces it. */
const announcing = { lines: /** @type {string[]} */ ([]), timer: 0 };
const ANNOUNCE_MS = 300;
const ANNOUNCE_MAX = 3;

/**
 * Reads a new message of the open chat out to screen readers (the log
 * itself is not live). Messages that come together are read together, and
 * a burst (a reconnect's catch-up) as a count only.
 * @param {string} line
 */
function announce(line) {
  announcing.lines.push(line.length > 300 ? `${line.slice(0, 300)}…` : line);
  if (announcing.timer) return;
  announcing.timer = window.setTimeout(() => {
    const { lines } = announcing;
    $('announce').textContent = lines.length > ANNOUNCE_MAX ? `${lines.length} new messages` : lines.join('. ');
    announcing.lines = [];
    announcing.timer = 0;
  }, ANNOUNCE_MS);
}

/** What a message's opened content shows: a file's card, or its text. @param {Shown} shown @param {any} content */
function showContent(shown, content) {
  if (content?.type === 'file') {
    if (wellFormedFile(content.file)) {
      shown.file = content.file;
      shown.text = `📎 ${content.file.name}`;
    } else {
      // Signed by its sender, but not a file this page can show or fetch.
      shown.state = 'bad';
      shown.error = 'This file message is not well-formed, so it is not shown.';
    }
  } else {
    shown.text = typeof content?.text === 'string' ? content.text : '';
  }
}

/** Whether a file message's `file` has the fields of docs/PROTOCOL.md §2.9, each of its type. @param {any} f */
function wellFormedFile(f) {
  const text = (v) => typeof v === 'string' && v.length > 0;
  return (
    !!f &&
    typeof f === 'object' &&
    [f.id, f.name, f.mime, f.sha256, f.key, f.nonce_prefix].every(text) &&
    Number.isSafeInteger(f.size) &&
    f.size > 0 &&
    f.chunks === Math.ceil(f.size / (1024 * 1024))
  );
}

function notify(chat, shown) {
  if (!state.notify || typeof Notification === 'undefined' || Notification.permission !== 'granted') return;
  const n = new Notification(`${shown.sender} · ${chatTitle(chat.info)}`, {
    body: shown.state === 'bad' ? 'A message that could not be verified' : (shown.text ?? '').slice(0, 140),
    tag: chat.info.id,
  });
  n.onclick = () => {
    window.focus();
    openChat(chat.info.id);
  };
}

function markRead() {
  const chat = activeChat();
  if (!chat || document.hidden) return;
  chat.unread = 0;
  chat.readSeen = Math.max(chat.readSeen ?? 0, chat.lastSeq);
  sendRead(chat);
  drawList();
}

/** Chats with the user's own messages acknowledged, to be marked read once the outbox is empty. @type {Set<ChatState>} */
const ownRead = new Set();

/** Marks them read if the outbox is empty now (the last send acknowledged, or given up). */
function flushOwnReads() {
  if (state.conn?.outbox.size) return;
  for (const c of ownRead) sendRead(c);
  ownRead.clear();
}

/** Chats whose last `read` went less than READ_EVERY_MS ago, with the timer that sends the next. @type {Map<string, number>} */
const readLater = new Map();
/**
 * At most one `read` a chat per this many ms: every frame counts against
 * the user's rate (docs/PROTOCOL.md §5.8), and a busy chat would spend it
 * on receipts, one per message, instead of on the user's own messages.
 */
const READ_EVERY_MS = 1000;

/** Sends the chat's read mark (what the user has seen), now or with the next `read` allowed. @param {ChatState} chat */
function sendRead(chat) {
  const id = chat.info.id;
  if (readLater.has(id)) return;
  if ((chat.readSeen ?? 0) <= (chat.readSent ?? 0)) return;
  // Not synced: sent again at the next `synced` (markRead then).
  if (!state.conn?.synced) return;
  state.conn.send({ type: 'read', chat: id, seq: chat.readSeen });
  chat.readSent = chat.readSeen;
  readLater.set(
    id,
    setTimeout(() => {
      readLater.delete(id);
      sendRead(chat);
    }, READ_EVERY_MS),
  );
}

/** Whether a `welcome` came before: the next one follows a reconnect. */
let welcomed = false;
/** The accounts as read again at the last reconnect; messages are opened and sealed after it. */
let accountsRead = Promise.resolve();

/** The user is no longer in chat `id`. @param {string} id */
function removeChat(id) {
  const chat = state.chats.get(id);
  if (chat) dropPreviews(chat);
  state.chats.delete(id);
  // What waited to be sent there never can be: it goes (and is not kept
  // for the next sign-in).
  for (const p of [...pending.values()]) {
    if (p.chat !== id) continue;
    forget(p.id);
    state.conn?.replace(p.id, null);
  }
  if (state.active === id) {
    state.active = null;
    drawNoChat('You are no longer a member of this chat');
  }
}

/** The chat pane with no chat open: `title`, and nothing to act on. */
function drawNoChat(title) {
  $('chat-title').textContent = title;
  $('chat-sub').textContent = '';
  $('chat-info').hidden = true;
  $('key-warning').hidden = true;
  $('composer').hidden = true;
  clearLog();
}

/** An account an administrator changed from this page: listed as it is now. @param {any} user */
export async function userChanged(user) {
  await updateUser(user);
  drawList();
  drawHeader();
}

/** A user's account as the host has it now; new keys are checked against the pinned ones. */
async function updateUser(user) {
  const before = state.users.get(user.username);
  state.users.set(user.username, user);
  if (before && (before.enc_public !== user.enc_public || before.sig_public !== user.sig_public)) {
    state.publicKeys.delete(user.username);
    await publicKeys(user.username).catch(() => {});
    drawHeader();
  }
}

async function onFrame(frame) {
  switch (frame.type) {
    case 'welcome': {
      state.online = new Set(frame.online);
      // Every chat the user belongs to: one missing was left (or its
      // member removed) while the page was away.
      const listed = new Set(frame.chats.map((c) => c.id));
      for (const c of frame.chats) {
        // Unread as the host counts it: what arrived while away, less what
        // was read on another device. The replay that follows adds nothing.
        const chat = addChat(c);
        chat.unread = state.active === c.id && !document.hidden ? 0 : Math.max(0, c.last_seq - Math.max(c.read_seq, chat.readSeen ?? 0));
        chat.countedTo = c.last_seq;
        // The read mark the host has: a receipt lost with a socket goes again.
        chat.readSent = c.read_seq;
      }
      for (const id of [...state.chats.keys()]) if (!listed.has(id)) removeChat(id);
      if (welcomed) {
        // A reconnect: `user` frames sent meanwhile were missed (a
        // contact's account reset, with new keys), so read them all again,
        // before the replay that follows is opened or anything is sealed.
        accountsRead = get('/api/users')
          .catch(() => [])
          .then(async (users) => {
            for (const u of users) await updateUser(u);
          });
      }
      welcomed = true;
      await accountsRead;
      drawList();
      // The open chat's name, members and presence as the host has them now.
      drawHeader();
      break;
    }
    case 'message': {
      await receive(frame.message, true);
      const chat = state.chats.get(frame.message.chat);
      if (chat && state.active === chat.info.id) {
        drawMessages();
        markRead();
      }
      drawList();
      break;
    }
    case 'ack': {
      // Stored: nothing left to reseal or retry.
      forget(frame.id);
      const chat = state.chats.get(frame.chat);
      const m = chat?.shown.get(frame.id);
      if (chat && m) {
        m.seq = frame.seq;
        m.ts = frame.ts;
        m.state = 'sent';
        chat.lastSeq = Math.max(chat.lastSeq, frame.seq);
        hold(chat, frame.seq, true);
        if (state.active === chat.info.id) drawMessages();
      }
      // The user's own message, in a chat read up to just before it: read
      // too, or the host would count it unread at the next welcome. Marked
      // once the outbox is empty, so that receipts do not take the rate a
      // backlog of sends needs.
      if (chat && Math.max(chat.readSeen ?? 0, chat.readSent ?? 0) >= frame.seq - 1) {
        chat.readSeen = Math.max(chat.readSeen ?? 0, frame.seq);
        ownRead.add(chat);
      }
      flushOwnReads();
      break;
    }
    case 'error':
      await onSendError(frame);
      break;
    case 'presence':
      if (frame.online) state.online.add(frame.user);
      else state.online.delete(frame.user);
      drawList();
      drawHeader();
      break;
    case 'typing':
      showTyping(frame.chat, frame.user);
      break;
    case 'read': {
      const r = reads.get(frame.chat) ?? new Map();
      r.set(frame.user, frame.seq);
      reads.set(frame.chat, r);
      const chat = state.chats.get(frame.chat);
      if (chat && frame.user === state.me.username) {
        // Read on another device (or this one): unread below the mark goes.
        chat.unread = Math.min(chat.unread, Math.max(0, Math.max(chat.lastSeq, chat.info.last_seq) - frame.seq));
        drawList();
      }
      if (state.active === frame.chat) drawMessages();
      break;
    }
    case 'chat':
      addChat(frame.chat);
      drawList();
      if (state.active === frame.chat.id) drawHeader();
      break;
    case 'chat_removed':
      removeChat(frame.chat);
      drawList();
      break;
    case 'user':
      await updateUser(frame.user);
      drawList();
      break;
    default:
      break;
  }
}

/** Messages sent but not acknowledged, by id: what is needed to reseal them. */
const pending = new Map();

/**
 * Keeps a send in this browser's outbox (docs/PROTOCOL.md §5.5), with why
 * it failed if it did, so that a reload or the next sign-in shows it and,
 * unless it failed, sends it again. Without IndexedDB it is kept only
 * while the page lives.
 * @param {{id: string, chat: string, frame: any}} p @param {Shown|undefined} m
 */
async function remember(p, m) {
  const kept = { id: p.id, chat: p.chat, frame: p.frame, ts: m?.ts ?? Date.now() };
  if (m?.state === 'failed') kept.error = m.error ?? 'Not sent';
  if (m?.unstored) kept.unstored = true;
  await store.keepSend(state.me.username, kept).catch(() => {});
}

/** A send acknowledged, replaced by a new id, or discarded: nothing of it is kept. @param {string} id */
function forget(id) {
  pending.delete(id);
  store.dropSend(state.me.username, id).catch(() => {});
}

/**
 * Puts back the sends this browser kept for the user, written before a
 * reload or before the session ended: shown as they were and, unless they
 * had failed, sent again with their ids, so that one the host stored
 * already is acknowledged as a duplicate, never stored twice.
 */
async function restoreSends() {
  const me = state.me.username;
  for (const k of await store.sendsOf(me).catch(() => [])) {
    const chat = state.chats.get(k.chat);
    let content;
    try {
      if (!chat) throw new Error('not a member');
      // The sender is among the recipients: the content comes back from the sealed frame.
      content = await e2e.open({ id: k.id, sender: me, chat: k.chat, envelope: k.frame.envelope }, me, state.keys.enc, await publicKeys(me));
    } catch {
      // Its chat is gone, or it was sealed under keys since replaced (an
      // account reset): it can neither be sent nor read any more.
      forget(k.id);
      continue;
    }
    /** @type {Shown} */
    const shown = { id: k.id, sender: me, ts: k.ts, seq: null, text: null, state: k.error ? 'failed' : 'sending', error: k.error, unstored: k.unstored };
    showContent(shown, content);
    shown.previewPending = previewed(shown);
    chat.shown.set(k.id, shown);
    pending.set(k.id, { id: k.id, chat: k.chat, content, frame: k.frame, tries: 0, busy: false });
    // Sealed again under its id, for the chat's members and their keys as
    // they are now (one may have come, gone or changed keys since it was
    // written; changed keys not yet accepted make it "Not sent"). A copy
    // the host stored before is acknowledged as a duplicate all the same.
    if (!k.error) await sealAndSend(chat, shown, content);
  }
}

/** How many sent messages wait for their `ack` (kept to reseal or retry them). */
export function unacknowledged() {
  return pending.size;
}

/** The largest frame the host reads (docs/PROTOCOL.md §5.8). */
const MAX_FRAME_BYTES = 65536;

/** How often one message is resealed or resent by itself after an error, before it shows "Not sent". */
const AUTOMATIC_TRIES = 3;

/** What the host's `error` for a send asks of the client (docs/PROTOCOL.md §5.5). */
async function onSendError(frame) {
  const p = frame.id && pending.get(frame.id);
  if (!p) {
    // Nothing here to send again: it must not hold its chat's later sends.
    if (frame.id) state.conn?.replace(frame.id, null);
    return;
  }
  // An answer to a frame resent (after a reconnect) while this message's
  // reseal is under way changes nothing: the reseal decides.
  if (p.busy) return;
  const chat = state.chats.get(p.chat);
  const m = chat?.shown.get(frame.id);
  /** Resends the frame later, if it is still the one to send then. */
  const later = (ms) => {
    const frameThen = p.frame;
    setTimeout(() => {
      if (pending.get(p.id) !== p || p.frame !== frameThen) return;
      if (chat?.shown.get(p.id)?.seq != null) {
        // History or a replay showed it stored meanwhile: nothing to resend.
        forget(p.id);
        state.conn?.replace(p.id, null);
      } else if (m?.state === 'sending') state.conn?.sendMessage(p.frame);
    }, ms);
  };
  if (frame.code === 'rate_limited') {
    later(frame.retry_after_ms ?? 1000);
    return;
  }
  const again = chat && m && p.tries < AUTOMATIC_TRIES;
  if (again) p.tries += 1;
  p.busy = true;
  try {
    if (again && frame.code === 'store_failed') {
      // The host could not store it (its disk, say): the same frame, later.
      later(1000 * p.tries);
      return;
    }
    if (again && frame.code === 'members_mismatch') {
      // Members came or went since it was sealed: seal it for them.
      chat.info = await get(`/api/chats/${p.chat}`);
      await reseal(chat, m, p, m.id);
      return;
    }
    if (again && frame.code === 'duplicate_id') {
      // Its id is taken (another chat's or sender's): a new id, and a new
      // seal, since the id is in what the signature covers.
      await reseal(chat, m, p, e2e.messageId());
      return;
    }
  } catch (err) {
    failed(p.chat, m, err instanceof Error ? err.message : String(err), frame.id);
    return;
  } finally {
    p.busy = false;
  }
  // These answers come after the host's check for a stored copy: this one was not stored.
  if (m && frame.code !== 'bad_envelope') m.unstored = true;
  failed(p.chat, m, frame.message, frame.id);
}

/** A send that will not go by itself: "Not sent", with Retry. @param {string} chatId @param {Shown|undefined} m @param {string} error @param {string} id */
function failed(chatId, m, error, id) {
  state.conn?.replace(id, null);
  flushOwnReads();
  if (!m) return;
  m.state = 'failed';
  m.error = error;
  const p = pending.get(id);
  // Kept as "Not sent", unless another tab's copy was acknowledged meanwhile.
  if (p && m.seq === null) remember(p, m);
  if (state.active === chatId) drawMessages();
}

/**
 * Seals `m` again, under `id`, for the chat's members as they are now, and
 * sends it.
 * @param {ChatState} chat @param {Shown} m @param {{id: string, chat: string, content: any, frame: any, tries: number, busy: boolean}} p @param {string} id
 */
async function reseal(chat, m, p, id) {
  const frame = await sealFrame(chat, id, p.content);
  if (id !== m.id) {
    state.conn?.replace(m.id, null);
    forget(m.id);
    chat.shown.delete(m.id);
    m.id = id;
    chat.shown.set(id, m);
  }
  p.id = id;
  p.frame = frame;
  pending.set(id, p);
  await remember(p, m);
  state.conn?.sendMessage(frame);
}

/** A `send` frame of `content` for the chat's members; refused while a member's keys changed and are not accepted. */
async function sealFrame(chat, id, content) {
  await accountsRead;
  const recipients = await Promise.all(
    chat.info.members.map(async (m) => ({ username: m.username, keys: await publicKeys(m.username) })),
  );
  if (state.ownKeysBad) {
    drawHeader();
    throw new Error('The public keys the host has for you are not yours: nothing is sent.');
  }
  if (recipients.some((r) => state.changed.has(r.username))) {
    drawHeader();
    throw new Error('The encryption keys of a member changed: compare safety numbers and accept them, then use Retry.');
  }
  const envelope = await e2e.seal(id, state.me.username, chat.info.id, content, recipients, state.keys.sig);
  const frame = { type: 'send', id, chat: chat.info.id, envelope };
  // A larger frame closes the socket (1009), and the outbox would send it
  // again after every reconnect (docs/PROTOCOL.md §5.8).
  if (new TextEncoder().encode(JSON.stringify(frame)).length > MAX_FRAME_BYTES) throw new Error('This message is too long to send.');
  return frame;
}

/**
 * Whether every member's keys are known and none changed without being
 * accepted; if one did, the header says so and sending is blocked.
 * @param {ChatState} chat
 */
async function keysAccepted(chat) {
  await accountsRead;
  const members = chat.info.members.map((m) => m.username);
  await Promise.all(members.map((u) => publicKeys(u)));
  if (state.ownKeysBad || members.some((u) => state.changed.has(u))) {
    drawHeader();
    return false;
  }
  return true;
}

/** Sends `text` to the open chat; false when it was not taken (a member's keys changed). @returns {Promise<boolean>} */
async function send(text) {
  const chat = activeChat();
  if (!chat || !text.trim() || !(await keysAccepted(chat))) return false;
  const id = e2e.messageId();
  /** @type {Shown} */
  const shown = { id, sender: state.me.username, ts: Date.now(), seq: null, text, state: 'sending' };
  chat.shown.set(id, shown);
  drawMessages();
  drawList();
  await sealAndSend(chat, shown, { v: 1, type: 'text', text });
  return true;
}

/**
 * Seals a message for the chat's members and sends it; a failure marks it "Not sent".
 * @param {ChatState} chat @param {Shown} shown @param {{v: number, type: string, text?: string, file?: files.FileDescriptor}} content
 */
async function sealAndSend(chat, shown, content) {
  try {
    const frame = await sealFrame(chat, shown.id, content);
    const p = { id: shown.id, chat: chat.info.id, content, frame, tries: 0, busy: false };
    pending.set(shown.id, p);
    // Kept before it is written, as the outbox rule asks.
    await remember(p, shown);
    state.conn?.sendMessage(frame);
  } catch (err) {
    shown.state = 'failed';
    shown.error = err instanceof Error ? err.message : String(err);
    // One kept in the outbox (restored, or Retry) is kept as "Not sent";
    // one never sealed was never sent, so Discard may remove its file.
    const p = pending.get(shown.id);
    if (p) remember(p, shown);
    else shown.unstored = true;
    if (state.active === chat.info.id) drawMessages();
  }
}

/** Retry: sends a message that was not sent again, uploading its file first if that failed. @param {ChatState} chat @param {Shown} m */
function resend(chat, m) {
  const p = pending.get(m.id);
  m.state = 'sending';
  m.error = undefined;
  // Sealed again: the chat's members may have changed since.
  if (p) sealAndSend(chat, m, p.content);
  else if (m.file) sealAndSend(chat, m, { v: 1, type: 'file', file: m.file });
  else if (m.source) upload(chat, m, m.source);
  else sealAndSend(chat, m, { v: 1, type: 'text', text: m.text ?? '' });
  drawMessages();
}

/** Discard: a message not sent is taken away, from this browser's outbox too. @param {ChatState} chat @param {Shown} m */
function discard(chat, m) {
  // Its file, uploaded for a message the host refused, goes too.
  if (m.file && m.unstored) call('DELETE', `/api/files/${encodeURIComponent(m.file.id)}`).catch(() => {});
  // Its picture's preview, made from the file on this device, goes too.
  if (m.preview) URL.revokeObjectURL(m.preview);
  chat.shown.delete(m.id);
  forget(m.id);
  state.conn?.replace(m.id, null);
  drawMessages();
  drawList();
}

/** @type {Map<string, number>} */
const typingTimers = new Map();
function showTyping(chatId, user) {
  clearTimeout(typingTimers.get(`${chatId}/${user}`));
  const el = $('typing');
  if (state.active === chatId) el.textContent = `${user} is typing…`;
  typingTimers.set(
    `${chatId}/${user}`,
    setTimeout(() => {
      if (el.textContent === `${user} is typing…`) el.textContent = '';
    }, 4000),
  );
}

function setupComposer() {
  const form = /** @type {HTMLFormElement} */ ($('composer'));
  const input = /** @type {HTMLTextAreaElement} */ ($('message-input'));
  let lastTyping = 0;
  const submit = () => {
    const text = input.value;
    if (!text.trim() || /** @type {HTMLButtonElement} */ ($('send')).disabled) return;
    input.value = '';
    const chat = activeChat();
    // Not taken (a member's keys changed, or their keys could not be
    // fetched): the text comes back to its chat, unless something new was
    // typed there.
    send(text)
      .catch(() => false)
      .then((taken) => {
        if (taken || !chat) return;
        if (activeChat() === chat) {
          if (!input.value) input.value = text;
        } else if (!chat.draft) chat.draft = text;
      });
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });
  const wrap = (mark) => {
    const { selectionStart: a, selectionEnd: b, value } = input;
    input.value = value.slice(0, a) + mark + value.slice(a, b) + mark + value.slice(b);
    input.setSelectionRange(a + mark.length, b + mark.length);
    input.focus();
  };
  for (const b of form.querySelectorAll('[data-wrap]')) {
    b.addEventListener('click', () => wrap(/** @type {HTMLElement} */ (b).dataset.wrap));
  }
  $('make-link').addEventListener('click', () => {
    const { selectionStart: a, selectionEnd: b, value } = input;
    const label = value.slice(a, b) || 'link';
    const inserted = `[${label}](https://)`;
    input.value = value.slice(0, a) + inserted + value.slice(b);
    input.setSelectionRange(a + label.length + 3, a + inserted.length - 1);
    input.focus();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'b') {
      e.preventDefault();
      wrap('**');
    } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'i') {
      e.preventDefault();
      wrap('*');
    }
  });
  input.addEventListener('input', () => {
    const now = Date.now();
    if (state.active && now - lastTyping > 3000) {
      lastTyping = now;
      state.conn?.send({ type: 'typing', chat: state.active });
    }
  });
  const picker = /** @type {HTMLInputElement} */ ($('file-input'));
  $('attach').addEventListener('click', () => picker.click());
  picker.addEventListener('change', () => {
    sendFiles([...(picker.files ?? [])]);
    picker.value = '';
  });
  const pane = $('pane');
  // A file dropped anywhere but on an open chat would make the browser
  // leave the app to show it (and lose its uploads).
  for (const type of ['dragover', 'drop']) {
    document.addEventListener(type, (e) => {
      if (e.dataTransfer?.types.includes('Files')) e.preventDefault();
    });
  }
  pane.addEventListener('dragover', (e) => {
    if (!state.active || !e.dataTransfer?.types.includes('Files')) return;
    e.preventDefault();
    pane.classList.add('dropping');
  });
  pane.addEventListener('dragleave', () => pane.classList.remove('dropping'));
  pane.addEventListener('drop', (e) => {
    pane.classList.remove('dropping');
    if (!state.active || !e.dataTransfer?.files.length) return;
    e.preventDefault();
    sendFiles([...e.dataTransfer.files]);
  });
  input.addEventListener('paste', (e) => {
    const pasted = [...(e.clipboardData?.files ?? [])];
    if (pasted.length) {
      e.preventDefault();
      sendFiles(pasted);
    }
  });
  setupEmoji((emoji) => {
    const { selectionStart: a, selectionEnd: b, value } = input;
    input.value = value.slice(0, a) + emoji + value.slice(b);
    input.setSelectionRange(a + emoji.length, a + emoji.length);
    input.focus();
  });
}

function setupChrome() {
  $('filter').addEventListener('input', () => drawList());
  document.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'k') {
      e.preventDefault();
      $('filter').focus();
    }
  });
  $('filter').addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      const first = /** @type {HTMLButtonElement|null} */ ($('chat-list').querySelector('button'));
      first?.click();
    }
  });
  $('messages').addEventListener('click', onLogClick);
  // Near the top of the log: the page before comes by itself.
  $('messages').addEventListener(
    'scroll',
    () => {
      const list = $('messages');
      log.atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
      const chat = activeChat();
      if (chat?.older && list.scrollTop < 200) loadOlder(chat);
    },
    { passive: true },
  );
  // A picture's preview that loads makes the log taller: a reader at the
  // bottom stays there (a load does not bubble, so it is caught on its way down).
  $('messages').addEventListener(
    'load',
    (event) => {
      const list = $('messages');
      if (/** @type {Element} */ (event.target).tagName === 'IMG' && log.atBottom) list.scrollTop = list.scrollHeight;
    },
    true,
  );
  $('chat-list').addEventListener('pointerdown', (e) => {
    // A press of the main button on an entry; not one on the scrollbar, whose
    // release the page never sees, nor one that opens a context menu.
    if (e.button === 0 && /** @type {Element} */ (e.target).closest('#chat-list button')) listPressed = true;
  });
  const released = () => {
    if (!listPressed) return;
    listPressed = false;
    // After the click this release makes: the order catches up.
    setTimeout(drawList);
  };
  for (const type of ['pointerup', 'pointercancel', 'contextmenu', 'blur']) window.addEventListener(type, released);
  $('back').addEventListener('click', () => {
    $('app').classList.remove('in-chat');
    $('chat-list').querySelector('[aria-current="true"]')?.focus();
  });
  $('open-settings').addEventListener('click', () => openSettings());
  $('new-group').addEventListener('click', () => openGroupDialog());
  $('chat-info').addEventListener('click', () => {
    const chat = activeChat();
    if (chat) openChatDetails(chat);
  });
  $('accept-keys').addEventListener('click', async () => {
    const chat = activeChat();
    if (!chat) return;
    for (const m of chat.info.members) if (state.changed.has(m.username)) await acceptKeys(m.username);
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) markRead();
  });
}

export { drawList, drawHeader, drawMessages, addChat, setStatus };

/**
 * Signs the page in again with the keys kept here, if the session still
 * holds: false when it ended (401) or belongs to someone else. While the
 * host cannot be reached or answers with an error, it tries again, so a
 * reload while offline keeps the keys instead of asking for the password.
 * @param {{username: string, enc: CryptoKey, sig: CryptoKey}} saved
 */
async function resume(saved) {
  for (let attempt = 0; ; attempt++) {
    try {
      const me = await call('GET', '/api/me');
      if (me.username !== saved.username) return false;
      setStatus('');
      await start(me, { enc: saved.enc, sig: saved.sig });
      return true;
    } catch (err) {
      // Only what passes (no connection, the host busy or restarting) is
      // tried again; anything else asks for the password.
      const passing = err instanceof ApiError && (err.status === 0 || err.status === 429 || err.status >= 500);
      if (!passing) return false;
      setStatus('The host cannot be reached; trying again…');
      await new Promise((r) => setTimeout(r, Math.min(30000, 1000 * 2 ** attempt)));
    }
  }
}

async function boot() {
  applyTheme();
  setupAuth();
  setupComposer();
  setupChrome();
  const saved = await store.loadKeys().catch(() => undefined);
  if (saved) {
    if (await resume(saved)) return;
    await store.clearKeys().catch(() => {});
  }
  $('auth').hidden = false;
  // Opened directly (https://): explain how to check the host's certificate.
  // Through the local relay (http://127.0.0.1): the relay checks it.
  const relayed = location.protocol === 'http:';
  $('relayed').hidden = !relayed;
  $('check-certificate').hidden = relayed;
  /** @type {HTMLInputElement} */ ($('form-signin').querySelector('input')).focus();
}

boot();
