// Sending and receiving end-to-end encrypted files: chunked, resumable
// uploads over HTTPS with progress and cancel, downloads checked against the
// SHA-256 in the (encrypted) file message, image previews decrypted here.

import { ApiError, call, get, post } from './api.js';
import { decode, encode } from './b64.js';
import { randomBytes } from './e2e.js';
import { Sha256 } from './sha256.js';

/** Files above this size are written to disk as they arrive, where the browser allows it. */
export const STREAM_ABOVE = 256 * 1024 * 1024;

export const CHUNK = 1 << 20;
/** Files up to this size are hashed by WebCrypto in one piece; larger ones in slices (see file-worker.js). */
export const WHOLE_DIGEST_MAX = 256 * 1024 * 1024;

/**
 * A file worker and its jobs. A worker that fails (its script did not
 * load, or it died) fails the jobs it had, and the next job starts a new one.
 */
function fileWorker() {
  /** @type {Worker|null} */
  let worker = null;
  let nextJob = 1;
  /** @type {Map<number, {resolve: (v: any) => void, reject: (e: Error) => void}>} */
  const jobs = new Map();
  const fail = () => {
    worker?.terminate();
    worker = null;
    for (const job of jobs.values()) job.reject(new Error('The browser stopped the file worker; try again.'));
    jobs.clear();
  };
  const start = () => {
    const w = new Worker('/js/file-worker.js', { type: 'module' });
    w.onmessage = (event) => {
      const { id, result, error } = event.data;
      const job = jobs.get(id);
      jobs.delete(id);
      if (!job) return;
      if (error) job.reject(new Error(error));
      else job.resolve(result);
    };
    w.onerror = (event) => {
      event.preventDefault();
      fail();
    };
    w.onmessageerror = fail;
    return w;
  };
  /** A job; `signal` cancels it (the worker stops what it can). @param {any} message @param {Transferable[]} transfer @param {AbortSignal} [signal] */
  return (message, transfer = [], signal = undefined) => {
    worker ??= start();
    const id = nextJob++;
    const to = /** @type {Worker} */ (worker);
    signal?.addEventListener('abort', () => to.postMessage({ op: 'cancel', job: id }), { once: true });
    return new Promise((resolve, reject) => {
      jobs.set(id, { resolve, reject });
      to.postMessage({ ...message, id }, transfer);
    });
  };
}

/** Encryption and decryption of chunks. */
const run = fileWorker();
/** Digests, in a worker of their own: an upload's runs beside its encryption. */
const hash = fileWorker();

/**
 * The SHA-256 of `blob`, off the page's thread; `signal` stops it.
 * @param {Blob} blob @param {number} whole the largest size hashed in one piece @param {AbortSignal} [signal]
 * @returns {Promise<ArrayBuffer>}
 */
export function digest(blob, whole = WHOLE_DIGEST_MAX, signal = undefined) {
  return hash({ op: 'digest', blob, whole }, [], signal);
}

/**
 * @typedef {{id: string, name: string, mime: string, size: number, chunks: number, sha256: string, key: string, nonce_prefix: string}} FileDescriptor
 * @typedef {{loaded: number, total: number, rate: number}} Progress
 */

/** Human size: 1.2 MB. */
export function humanSize(bytes) {
  const units = ['B', 'KB', 'MB', 'GB'];
  let n = bytes;
  let u = 0;
  while (n >= 1000 && u < units.length - 1) {
    n /= 1000;
    u++;
  }
  return `${n < 10 && u ? n.toFixed(1) : Math.round(n)} ${units[u]}`;
}

/** An emoji for the file's kind. */
export function typeIcon(mime) {
  if (mime.startsWith('image/')) return '🖼️';
  if (mime.startsWith('video/')) return '🎞️';
  if (mime.startsWith('audio/')) return '🎵';
  if (mime === 'application/pdf') return '📕';
  if (/zip|tar|compressed|7z|rar/.test(mime)) return '🗜️';
  if (mime.startsWith('text/')) return '📄';
  return '📦';
}

async function putChunk(fileId, index, body, signal) {
  let response;
  try {
    response = await fetch(`/api/files/${fileId}/chunks/${index}`, {
      method: 'PUT',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/octet-stream' },
      body,
      signal,
    });
  } catch (err) {
    if (signal?.aborted) throw err;
    throw new ApiError(0, 'offline', 'The connection dropped.', undefined);
  }
  if (!response.ok) {
    const json = await response.json().catch(() => ({}));
    throw new ApiError(response.status, json.error ?? 'http_error', json.message ?? 'The upload failed.', json.retry_after_ms);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The error a cancelled transfer ends with. */
export const cancelled = () => new DOMException('cancelled', 'AbortError');

/**
 * Uploads `file` to `chat`, encrypting in the worker; resumes by itself after
 * a dropped connection. Resolves with the descriptor to send.
 * @param {File} file @param {string} chat @param {(p: Progress) => void} onProgress @param {AbortSignal} signal
 * @returns {Promise<FileDescriptor>}
 */
export async function upload(file, chat, onProgress, signal) {
  const chunks = Math.max(1, Math.ceil(file.size / CHUNK));
  const status = await post('/api/files', { chat, size: file.size + 16 * chunks, chunks });
  const key = randomBytes(32);
  const prefix = randomBytes(7);
  const started = performance.now();
  let sent = 0;
  const report = () => onProgress({ loaded: sent, total: file.size, rate: sent / Math.max(0.001, (performance.now() - started) / 1000) });
  // Frees the space the host set aside for the file, and what it holds of it.
  const discard = () => call('DELETE', `/api/files/${status.id}`).catch(() => {});
  // Cancelled while the host was setting the space aside: freed at once.
  if (signal.aborted) {
    discard();
    throw cancelled();
  }
  signal.addEventListener('abort', discard, { once: true });
  // Hashed while it uploads; read in slices when large. Stopped with the
  // upload, so that the next file's hash does not wait behind it.
  const hashing = new AbortController();
  signal.addEventListener('abort', () => hashing.abort(), { once: true });
  const sha = digest(file, WHOLE_DIGEST_MAX, hashing.signal);
  sha.catch(() => {});
  let held = new Set();
  // Failures in a row with no chunk stored between them: an outage of
  // about four minutes. Any progress starts the count again.
  let failures = 0;
  let heldAtFailure = 0;
  for (;;) {
    try {
      for (let index = 0; index < chunks; index++) {
        if (held.has(index)) continue;
        if (signal.aborted) throw cancelled();
        const ct = await run({ op: 'encrypt', blob: file, key, prefix, fileId: status.id, index, chunks });
        await putChunk(status.id, index, ct, signal);
        held.add(index);
        sent = Math.min(file.size, held.size * CHUNK);
        report();
      }
      await post(`/api/files/${status.id}/complete`);
      break;
    } catch (err) {
      // A full disk (507) stays full for a while: not worth waiting for.
      const transient = err instanceof ApiError && (err.code === 'offline' || (err.status >= 500 && err.status !== 507) || err.status === 429);
      if (signal.aborted) throw err;
      if (held.size > heldAtFailure) failures = 0;
      heldAtFailure = held.size;
      const attempt = failures++;
      if (!transient || attempt >= 30) {
        // Given up (a cancel discards the file above).
        discard();
        hashing.abort();
        throw err;
      }
      // The connection dropped: wait, then ask the server what it holds.
      await sleep(Math.min(10000, 500 * 2 ** Math.min(attempt, 5)));
      try {
        held = new Set((await get(`/api/files/${status.id}`)).received);
      } catch {
        // Still down: the next round asks again.
      }
    }
  }
  let sha256;
  try {
    sha256 = await sha;
  } catch (err) {
    discard();
    throw err;
  }
  // Cancelled after the last chunk (the file is being deleted): not to be sent.
  if (signal.aborted) throw cancelled();
  return {
    id: status.id,
    name: file.name || 'file',
    mime: file.type || 'application/octet-stream',
    size: file.size,
    chunks,
    sha256: encode(sha256),
    key: encode(key),
    nonce_prefix: encode(prefix),
  };
}

/**
 * Downloads and decrypts a file; checks its SHA-256. Resolves with a Blob.
 * @param {FileDescriptor} d @param {(p: Progress) => void} onProgress
 */
export async function download(d, onProgress) {
  const key = decode(d.key);
  const prefix = decode(d.nonce_prefix);
  const parts = [];
  let loaded = 0;
  const started = performance.now();
  for (let index = 0; index < d.chunks; index++) {
    const response = await fetch(`/api/files/${d.id}/chunks/${index}`, { credentials: 'same-origin' });
    if (!response.ok) {
      const json = await response.json().catch(() => ({}));
      throw new ApiError(response.status, json.error ?? 'http_error', json.message ?? 'The download failed.', undefined);
    }
    const ct = await response.arrayBuffer();
    const plain = await run({ op: 'decrypt', ct, key, prefix, fileId: d.id, index, chunks: d.chunks }, [ct]).catch(() => {
      throw new Error('This file was altered or damaged: it does not decrypt.');
    });
    parts.push(plain);
    loaded += plain.byteLength;
    onProgress({ loaded, total: d.size, rate: loaded / Math.max(0.001, (performance.now() - started) / 1000) });
  }
  const blob = new Blob(parts, { type: d.mime });
  const hash = new Uint8Array(await digest(blob));
  if (blob.size !== d.size || encode(hash) !== d.sha256) {
    throw new Error('This file does not match its checksum: it was altered or is incomplete.');
  }
  return blob;
}

/** True if and only if this browser can write a download to disk piece by piece. */
export function canStream() {
  return typeof window.showSaveFilePicker === 'function';
}

/**
 * Downloads, decrypts and writes a file straight to a file the user picks,
 * checking its SHA-256 on the way; a file that fails the check is discarded.
 * Must start in a user gesture (the picker asks first).
 * @param {FileDescriptor} d @param {(p: Progress) => void} onProgress
 */
export async function downloadToDisk(d, onProgress) {
  const handle = await window.showSaveFilePicker({ suggestedName: d.name });
  const writable = await handle.createWritable();
  const key = decode(d.key);
  const prefix = decode(d.nonce_prefix);
  const sha = new Sha256();
  const started = performance.now();
  let loaded = 0;
  try {
    for (let index = 0; index < d.chunks; index++) {
      const response = await fetch(`/api/files/${d.id}/chunks/${index}`, { credentials: 'same-origin' });
      if (!response.ok) throw new Error('The download failed; try again.');
      const ct = await response.arrayBuffer();
      const plain = await run({ op: 'decrypt', ct, key, prefix, fileId: d.id, index, chunks: d.chunks }, [ct]).catch(() => {
        throw new Error('This file was altered or damaged: it does not decrypt.');
      });
      sha.update(new Uint8Array(plain));
      await writable.write(plain);
      loaded += plain.byteLength;
      onProgress({ loaded, total: d.size, rate: loaded / Math.max(0.001, (performance.now() - started) / 1000) });
    }
    if (loaded !== d.size || encode(sha.digest()) !== d.sha256) {
      throw new Error('This file does not match its checksum: it was altered or is incomplete.');
    }
    await writable.close();
  } catch (err) {
    await writable.abort().catch(() => {});
    throw err;
  }
}

/** Offers a Blob as an ordinary browser download with its name. */
export function save(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
