// What this browser keeps, in IndexedDB: the signed-in user's unwrapped
// private keys, only as non-extractable CryptoKeys (so a reload does not
// need the password); the public-key fingerprints pinned per local account
// (trust on first use); and each account's outbox, the `send` frames not
// yet acknowledged (docs/PROTOCOL.md §5.5). A frame is sealed end to end,
// so the outbox holds nothing the host could not see. Sign-out clears the
// keys; an outbox waits for its account's next sign-in in this browser.

const DB = 'securechat';
const STORES = ['keys', 'pins', 'outbox'];

/** One connection for the page, opened on first use. @type {Promise<IDBDatabase>|null} */
let opened = null;

function db() {
  opened ??= new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 2);
    req.onupgradeneeded = () => {
      for (const name of STORES) if (!req.result.objectStoreNames.contains(name)) req.result.createObjectStore(name);
    };
    req.onsuccess = () => {
      const d = req.result;
      // Another tab upgrades the database: let it, and open again when next needed.
      d.onversionchange = () => {
        d.close();
        opened = null;
      };
      d.onclose = () => {
        opened = null;
      };
      resolve(d);
    };
    req.onerror = () => reject(req.error);
  });
  opened.catch(() => {
    opened = null;
  });
  return opened;
}

async function op(store, mode, fn) {
  const d = await db();
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
 * failed for good (shown as "Not sent" until Retry or Discard), if it did.
 * @typedef {{id: string, chat: string, frame: any, ts: number, error?: string}} KeptSend
 */

/** @param {string} me @param {KeptSend} send */
export const keepSend = (me, send) => op('outbox', 'readwrite', (s) => s.put(send, [me, send.id]));
/** @param {string} me @param {string} id */
export const dropSend = (me, id) => op('outbox', 'readwrite', (s) => s.delete([me, id]));
/**
 * Every send of `me`'s outbox, oldest first. Array keys sort after
 * strings, so `[me, []]` bounds all of `me`'s ids.
 * @param {string} me @returns {Promise<KeptSend[]>}
 */
export const sendsOf = async (me) =>
  /** @type {KeptSend[]} */ (await op('outbox', 'readonly', (s) => s.getAll(IDBKeyRange.bound([me], [me, []])))).sort(
    (a, b) => a.ts - b.ts,
  );
