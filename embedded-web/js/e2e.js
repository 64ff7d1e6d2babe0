// End-to-end cryptography in WebCrypto, exactly as SECURITY.md §1 and §4 and
// docs/PROTOCOL.md §2 give it, so the browser and the native client
// interoperate byte for byte. Private keys are imported non-extractable.

import { concat, decode, encode } from './b64.js';

const subtle = globalThis.crypto.subtle;
const text = new TextEncoder();
export const ITERATIONS = 600000;
const RSA = { modulusLength: 4096, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };

/**
 * @typedef {{iv: string, ct: string}} WrappedKey
 * @typedef {{v: number, iv: string, ct: string, keys: Record<string, string>, sig: string}} Envelope
 * @typedef {{enc: CryptoKey, sig: CryptoKey}} PrivateKeys
 * @typedef {{enc: CryptoKey, sig: CryptoKey, encSpki: Uint8Array, sigSpki: Uint8Array, fingerprint: Uint8Array}} PublicKeys
 */

/** @param {number} n */
export function randomBytes(n) {
  return crypto.getRandomValues(new Uint8Array(n));
}

/**
 * PBKDF2-SHA256 (NFC password) → HKDF-SHA256 auth and wrap keys.
 * @param {string} password @param {Uint8Array} salt @param {number} iterations
 * @returns {Promise<{authKey: Uint8Array, wrapKey: CryptoKey}>}
 */
export async function deriveKeys(password, salt, iterations) {
  const pw = await subtle.importKey('raw', text.encode(password.normalize('NFC')), 'PBKDF2', false, ['deriveBits']);
  const master = await subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations }, pw, 256);
  const hkdf = await subtle.importKey('raw', master, 'HKDF', false, ['deriveBits', 'deriveKey']);
  const params = (label) => ({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: text.encode(label) });
  const authKey = new Uint8Array(await subtle.deriveBits(params('securechat/v1/auth'), hkdf, 256));
  const wrapKey = await subtle.deriveKey(params('securechat/v1/wrap'), hkdf, { name: 'AES-GCM', length: 256 }, false, [
    'encrypt',
    'decrypt',
  ]);
  return { authKey, wrapKey };
}

/** Two RSA-4096 pairs: RSA-OAEP-SHA256 for keys, RSA-PSS-SHA256 for signatures (extractable, to wrap them). */
export async function generateKeyPairs() {
  const [enc, sig] = await Promise.all([
    subtle.generateKey({ name: 'RSA-OAEP', ...RSA }, true, ['encrypt', 'decrypt']),
    subtle.generateKey({ name: 'RSA-PSS', ...RSA }, true, ['sign', 'verify']),
  ]);
  return { enc, sig };
}

/** @param {string} username @param {'enc'|'sig'} purpose */
function privAad(username, purpose) {
  return text.encode(`securechat/v1/privkey/${username}/${purpose}`);
}

/**
 * Wraps an extractable private key (PKCS#8) under the wrap key.
 * @param {CryptoKey} wrapKey @param {string} username @param {'enc'|'sig'} purpose @param {CryptoKey} key
 * @returns {Promise<WrappedKey>}
 */
export async function wrapPrivate(wrapKey, username, purpose, key) {
  const pkcs8 = await subtle.exportKey('pkcs8', key);
  const iv = randomBytes(12);
  const ct = await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: privAad(username, purpose) }, wrapKey, pkcs8);
  return { iv: encode(iv), ct: encode(ct) };
}

/**
 * Unwraps a private key, imported non-extractable unless `extractable` (only
 * to re-wrap it at once, for a password change).
 * @param {CryptoKey} wrapKey @param {string} username @param {'enc'|'sig'} purpose @param {WrappedKey} wrapped
 * @param {boolean} [extractable]
 * @returns {Promise<CryptoKey>}
 */
export async function unwrapPrivate(wrapKey, username, purpose, wrapped, extractable = false) {
  const pkcs8 = await subtle.decrypt(
    { name: 'AES-GCM', iv: decode(wrapped.iv), additionalData: privAad(username, purpose) },
    wrapKey,
    decode(wrapped.ct),
  );
  const algorithm = purpose === 'enc' ? { name: 'RSA-OAEP', hash: 'SHA-256' } : { name: 'RSA-PSS', hash: 'SHA-256' };
  return subtle.importKey('pkcs8', pkcs8, algorithm, extractable, purpose === 'enc' ? ['decrypt'] : ['sign']);
}

/** @param {CryptoKey} key @returns {Promise<Uint8Array>} */
export async function spki(key) {
  return new Uint8Array(await subtle.exportKey('spki', key));
}

/**
 * A user's public keys from the wire, with their fingerprint.
 * @param {string} encB64 @param {string} sigB64 @returns {Promise<PublicKeys>}
 */
export async function importPublic(encB64, sigB64) {
  const encSpki = decode(encB64);
  const sigSpki = decode(sigB64);
  const [enc, sig, fp] = await Promise.all([
    subtle.importKey('spki', encSpki, { name: 'RSA-OAEP', hash: 'SHA-256' }, true, ['encrypt']),
    subtle.importKey('spki', sigSpki, { name: 'RSA-PSS', hash: 'SHA-256' }, true, ['verify']),
    subtle.digest('SHA-256', concat(encSpki, sigSpki)),
  ]);
  return { enc, sig, encSpki, sigSpki, fingerprint: new Uint8Array(fp) };
}

/**
 * A fresh message id: a lowercase UUID version 7 (RFC 9562), the time in
 * milliseconds then 74 random bits. Ids that follow the clock land at the end
 * of the host's index of ids, so storing a message rewrites one page of that
 * index per batch instead of one per message (docs/BENCHMARKS.md).
 * @returns {string}
 */
export function messageId() {
  const b = randomBytes(16);
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = 0x70 | (b[6] & 0x0f);
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** @param {string} id @param {string} sender @param {string} chat */
function msgAad(id, sender, chat) {
  return text.encode(`securechat/v1/msg/${id}/${sender}/${chat}`);
}

/**
 * Seals content for every recipient (the sender included) and signs it.
 * @param {string} id @param {string} sender @param {string} chat @param {object} content
 * @param {{username: string, keys: PublicKeys}[]} recipients @param {CryptoKey} sigKey
 * @returns {Promise<Envelope>}
 */
export async function seal(id, sender, chat, content, recipients, sigKey) {
  const aad = msgAad(id, sender, chat);
  const rawKey = randomBytes(32);
  const iv = randomBytes(12);
  const key = await subtle.importKey('raw', rawKey, 'AES-GCM', false, ['encrypt']);
  const ct = new Uint8Array(
    await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: aad }, key, text.encode(JSON.stringify(content))),
  );
  /** @type {Record<string, string>} */
  const keys = {};
  await Promise.all(
    recipients.map(async (r) => {
      keys[r.username] = encode(await subtle.encrypt({ name: 'RSA-OAEP' }, r.keys.enc, rawKey));
    }),
  );
  const digest = await subtle.digest('SHA-256', concat(aad, iv, ct));
  const sig = await subtle.sign({ name: 'RSA-PSS', saltLength: 32 }, sigKey, digest);
  rawKey.fill(0);
  return { v: 1, iv: encode(iv), ct: encode(ct), keys, sig: encode(sig) };
}

/** What `open` throws for a message correctly signed but sealed without a key for the reader. */
export const NOT_A_RECIPIENT = 'not a recipient';

/**
 * Verifies the sender's signature, then opens the content. Throws on any
 * failure: NOT_A_RECIPIENT when the signature holds but no key is the reader's.
 * @param {{id: string, sender: string, chat: string, envelope: Envelope}} message
 * @param {string} me @param {CryptoKey} encKey @param {PublicKeys} sender
 * @returns {Promise<any>}
 */
export async function open(message, me, encKey, sender) {
  const { id, chat, envelope } = message;
  const aad = msgAad(id, message.sender, chat);
  const iv = decode(envelope.iv);
  const ct = decode(envelope.ct);
  const digest = await subtle.digest('SHA-256', concat(aad, iv, ct));
  const ok = await subtle.verify({ name: 'RSA-PSS', saltLength: 32 }, sender.sig, decode(envelope.sig), digest);
  if (!ok) throw new Error('bad signature');
  const wrapped = envelope.keys[me];
  if (!wrapped) throw new Error(NOT_A_RECIPIENT);
  const rawKey = await subtle.decrypt({ name: 'RSA-OAEP' }, encKey, decode(wrapped));
  const key = await subtle.importKey('raw', rawKey, 'AES-GCM', false, ['decrypt']);
  const plain = await subtle.decrypt({ name: 'AES-GCM', iv, additionalData: aad }, key, ct);
  return JSON.parse(new TextDecoder().decode(plain));
}

/**
 * Whether public keys pair with private keys: a random value encrypted to
 * one comes back through the other, and a signature of it verifies.
 * @param {PublicKeys} pub @param {PrivateKeys} priv @returns {Promise<boolean>}
 */
export async function pairsWith(pub, priv) {
  const probe = randomBytes(32);
  try {
    const back = new Uint8Array(await subtle.decrypt({ name: 'RSA-OAEP' }, priv.enc, await subtle.encrypt({ name: 'RSA-OAEP' }, pub.enc, probe)));
    const sig = await subtle.sign({ name: 'RSA-PSS', saltLength: 32 }, priv.sig, probe);
    return back.length === probe.length && back.every((b, i) => b === probe[i]) && (await subtle.verify({ name: 'RSA-PSS', saltLength: 32 }, pub.sig, sig, probe));
  } catch {
    return false;
  }
}

/**
 * The safety number of two users (SECURITY.md §4): 12 groups of 5 digits.
 * @param {string} a @param {Uint8Array} fpA @param {string} b @param {Uint8Array} fpB
 */
export function safetyNumber(a, fpA, b, fpB) {
  const groups = (fp) => {
    const out = [];
    for (let i = 0; i < 30; i += 5) {
      let n = 0n;
      for (let j = 0; j < 5; j++) n = (n << 8n) | BigInt(fp[i + j]);
      out.push(String(n % 100000n).padStart(5, '0'));
    }
    return out;
  };
  const first = a < b || (a === b && encode(fpA) <= encode(fpB));
  return (first ? [...groups(fpA), ...groups(fpB)] : [...groups(fpB), ...groups(fpA)]).join(' ');
}
