// Encrypts and decrypts file chunks off the page's thread (SECURITY.md §5):
// AES-256-GCM, nonce = prefix (7 bytes) ‖ index (4 bytes, big-endian) ‖ last
// (1 byte), AAD = the file id; and takes a file's SHA-256. A module worker.

import { Sha256 } from './sha256.js';

const CHUNK = 1 << 20;
/** A file above `whole` bytes is hashed in slices of this size, so it is never read into memory at once. */
const SLICE = 8 << 20;

/**
 * The SHA-256 of `blob`: by WebCrypto in one piece up to `whole` bytes,
 * incrementally above (slower, in memory that stays flat), stopping
 * between slices once `stopped()`.
 * @param {Blob} blob @param {number} whole @param {() => boolean} stopped @returns {Promise<ArrayBuffer>}
 */
async function digest(blob, whole, stopped) {
  if (stopped()) throw new Error('cancelled');
  if (blob.size <= whole) return crypto.subtle.digest('SHA-256', await blob.arrayBuffer());
  const sha = new Sha256();
  for (let at = 0; at < blob.size; at += SLICE) {
    if (stopped()) throw new Error('cancelled');
    sha.update(new Uint8Array(await blob.slice(at, at + SLICE).arrayBuffer()));
  }
  return sha.digest().buffer;
}

function nonce(prefix, index, last) {
  const n = new Uint8Array(12);
  n.set(prefix, 0);
  new DataView(n.buffer).setUint32(7, index, false);
  n[11] = last ? 1 : 0;
  return n;
}

async function keyOf(raw, usage) {
  return crypto.subtle.importKey('raw', raw, 'AES-GCM', false, [usage]);
}

/** The digest under way, if any: the next waits for it. */
let digests = Promise.resolve();
/** Digests queued or under way. */
const digesting = new Set();
/** Of those, the ones cancelled (an upload cancelled or failed): each stops, or never starts. */
const cancelled = new Set();

self.onmessage = async (event) => {
  const { op, id } = event.data;
  if (op === 'cancel') {
    // A job already done is not remembered.
    if (digesting.has(event.data.job)) cancelled.add(event.data.job);
    return;
  }
  try {
    if (op === 'digest') {
      // One at a time: files dropped together are not all read at once.
      digesting.add(id);
      const job = digests.then(() => digest(event.data.blob, event.data.whole, () => cancelled.has(id)));
      digests = job.catch(() => {});
      try {
        const hash = await job;
        self.postMessage({ id, result: hash }, [hash]);
      } finally {
        digesting.delete(id);
        cancelled.delete(id);
      }
    } else if (op === 'encrypt') {
      const { blob, key, prefix, fileId, index, chunks } = event.data;
      const plain = await blob.slice(index * CHUNK, (index + 1) * CHUNK).arrayBuffer();
      const ct = await crypto.subtle.encrypt(
        { name: 'AES-GCM', iv: nonce(prefix, index, index === chunks - 1), additionalData: new TextEncoder().encode(fileId) },
        await keyOf(key, 'encrypt'),
        plain,
      );
      self.postMessage({ id, result: ct }, [ct]);
    } else if (op === 'decrypt') {
      const { ct, key, prefix, fileId, index, chunks } = event.data;
      const plain = await crypto.subtle.decrypt(
        { name: 'AES-GCM', iv: nonce(prefix, index, index === chunks - 1), additionalData: new TextEncoder().encode(fileId) },
        await keyOf(key, 'decrypt'),
        ct,
      );
      self.postMessage({ id, result: plain }, [plain]);
    } else {
      throw new Error(`unknown operation ${op}`);
    }
  } catch (err) {
    self.postMessage({ id, error: String(err && err.message ? err.message : err) });
  }
};
