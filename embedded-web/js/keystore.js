// The signed-in user's unwrapped private keys, kept only as non-extractable
// CryptoKeys in IndexedDB (so a reload does not need the password), and the
// public-key fingerprints pinned per local account (trust on first use).
// Sign-out clears the keys.

const DB = 'securechat';

function db() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => {
      req.result.createObjectStore('keys');
      req.result.createObjectStore('pins');
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function op(store, mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction(store, mode);
    const req = fn(tx.objectStore(store));
    tx.oncomplete = () => resolve(req?.result);
    tx.onerror = () => reject(tx.error);
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
