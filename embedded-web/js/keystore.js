// What this browser keeps, in IndexedDB: the signed-in user's unwrapped
// private keys, only as non-extractable CryptoKeys (so a reload does not
// need the password); the public-key fingerprints pinned per local account
// (trust on first use); and each account's outbox, the `send` frames not
// yet acknowledged (docs/PROTOCOL.md §5.5). A frame is sealed end to end,
// so the outbox holds nothing the host could not see. Sign-out clears the
// keys; an outbox waits for its account's next sign-in in this browser.

/**
 * The databases and their stores. The outbox has a database of its own, so
 * that adding it needed no upgrade of the first one, which a tab of an
 * older version still open would have blocked.
 */
const DATABASES = { keys: 'securechat', pins: 'securechat', outbox: 'securechat-outbox' };
const STORES = { securechat: ['keys', 'pins'], 'securechat-outbox': ['outbox'] };

/** One connection per database for the page, opened on first use. @type {Map<string, Promise<IDBDatabase>>} */
const opened = new Map();

/** @param {string} name */
function db(name) {
  let p = opened.get(name);
  if (p) return p;
  p = new Promise((resolve, reject) => {
    const req = indexedDB.open(name, 1);
    req.onupgradeneeded = () => {
      for (const store of STORES[name]) if (!req.result.objectStoreNames.contains(store)) req.result.createObjectStore(store);
    };
    req.onsuccess = () => {
      const d = req.result;
      // A later version upgrades the database: let it, and open again when next needed.
      d.onversionchange = () => {
        d.close();
        opened.delete(name);
      };
      d.onclose = () => opened.delete(name);
      resolve(d);
    };
    req.onerror = () => reject(req.error);
  });
  p.catch(() => opened.delete(name));
  opened.set(name, p);
  return p;
}

async function op(store, mode, fn) {
  const d = await db(DATABASES[store]);
  return new Promise((resolve, reject) => {
    const tx = d.transaction(store, mode);
    const req = fn(tx.objectStore(store));
    tx.oncomplete = () => resolve(req?.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

/** @param {string} username @param {{enc: CryptoKey, sig: CryptoKey}} keys */
export const saveKeys = (username, keys) => op('keys', 'readwrite', (s) => s.put({ username, ...keys }, 'me'));
/** @returns {Promise<{username: string, enc: CryptoKey, sig: CryptoKey}|undefined>} */
export const loadKeys = () => op('keys', 'readonly', (s) => s.get('me'));
export const clearKeys = () => op('keys', 'readwrite', (s) => s.clear());

/** @param {string} me @param {string} user @returns {Promise<string|undefined>} */
export const pinOf = (me, user) => op('pins', 'readonly', (s) => s.get(`${me}/${user}`));
/** @param {string} me @param {string} user @param {string} fingerprint */
export const pin = (me, user, fingerprint) => op('pins', 'readwrite', (s) => s.put(fingerprint, `${me}/${user}`));

/**
 * A send of the outbox: the sealed frame, when it was written, and why it
 * failed for good (shown as "Not sent" until Retry or Discard), if it did;
 * `unstored` when the host's answer proved it was not stored.
 * @typedef {{id: string, chat: string, frame: any, ts: number, error?: string, unstored?: boolean}} KeptSend
 */

/** @param {string} me @param {KeptSend} send */
export const keepSend = (me, send) => op('outbox', 'readwrite', (s) => s.put(send, [me, send.id]));
/** @param {string} me @param {string} id */
export const dropSend = (me, id) => op('outbox', 'readwrite', (s) => s.delete([me, id]));
/** Empties `me`'s outbox. @param {string} me */
export const clearSends = (me) => op('outbox', 'readwrite', (s) => s.delete(IDBKeyRange.bound([me], [me, []])));
/**
 * Every send of `me`'s outbox, oldest first. Array keys sort after
 * strings, so `[me, []]` bounds all of `me`'s ids.
 * @param {string} me @returns {Promise<KeptSend[]>}
 */
export const sendsOf = async (me) =>
  /** @type {KeptSend[]} */ (await op('outbox', 'readonly', (s) => s.getAll(IDBKeyRange.bound([me], [me, []])))).sort(
    (a, b) => a.ts - b.ts,
  );
