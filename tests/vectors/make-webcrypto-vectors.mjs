// Generates tests/vectors/webcrypto-v1.json: SecureChat v1 crypto test vectors
// produced with nothing but WebCrypto (globalThis.crypto.subtle), exactly as a
// browser client does. The Rust module src/client/crypto.rs checks them.
//
//   node tests/vectors/make-webcrypto-vectors.mjs [out.json]
//
// All binary values are base64url without padding. Keys and IVs are random,
// so every run gives a different (equally valid) file.

import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();
const b64 = (buf) => Buffer.from(buf instanceof ArrayBuffer ? new Uint8Array(buf) : buf).toString('base64url');
const cat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) { out.set(new Uint8Array(p instanceof ArrayBuffer ? p : p.buffer ? new Uint8Array(p.buffer, p.byteOffset, p.byteLength) : p), o); o += p.byteLength; }
  return out;
};

const ITERATIONS = 600000;
const RSA = { modulusLength: 4096, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };

async function deriveKeys(password, salt) {
  // Passwords are NFC-normalised before UTF-8 encoding.
  const pw = await subtle.importKey('raw', enc.encode(password.normalize('NFC')), 'PBKDF2', false, ['deriveBits']);
  const master = await subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt, iterations: ITERATIONS }, pw, 256);
  const ikm = await subtle.importKey('raw', master, 'HKDF', false, ['deriveBits']);
  const hkdf = (info) => subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: enc.encode(info) }, ikm, 256);
  const authKey = await hkdf('securechat/v1/auth');
  const wrapKeyRaw = await hkdf('securechat/v1/wrap');
  const wrapKey = await subtle.importKey('raw', wrapKeyRaw, 'AES-GCM', false, ['encrypt', 'decrypt']);
  return { authKey, wrapKeyRaw, wrapKey };
}

async function makeUser(username, password, salt) {
  const { authKey, wrapKeyRaw, wrapKey } = await deriveKeys(password, salt);
  const encPair = await subtle.generateKey({ name: 'RSA-OAEP', ...RSA }, true, ['encrypt', 'decrypt']);
  const sigPair = await subtle.generateKey({ name: 'RSA-PSS', ...RSA }, true, ['sign', 'verify']);
  const encSpki = await subtle.exportKey('spki', encPair.publicKey);
  const sigSpki = await subtle.exportKey('spki', sigPair.publicKey);
  const wrap = async (purpose, key) => {
    const pkcs8 = await subtle.exportKey('pkcs8', key);
    const iv = crypto.getRandomValues(new Uint8Array(12));
    const ct = await subtle.encrypt(
      { name: 'AES-GCM', iv, additionalData: enc.encode(`securechat/v1/privkey/${username}/${purpose}`) },
      wrapKey, pkcs8);
    return { iv: b64(iv), ct: b64(ct) };
  };
  const fingerprint = await subtle.digest('SHA-256', cat(encSpki, sigSpki));
  return {
    keys: { encPair, sigPair },
    json: {
      password,
      salt: b64(salt),
      auth_key: b64(authKey),
      wrap_key: b64(wrapKeyRaw),
      enc_spki: b64(encSpki),
      sig_spki: b64(sigSpki),
      enc_priv: await wrap('enc', encPair.privateKey),
      sig_priv: await wrap('sig', sigPair.privateKey),
      fingerprint: b64(fingerprint),
    },
    fingerprint: new Uint8Array(fingerprint),
  };
}

function safetyNumber(userA, fpA, userB, fpB) {
  const groups = (fp) => {
    const out = [];
    for (let i = 0; i < 6; i++) {
      let v = 0;
      for (let j = 0; j < 5; j++) v = v * 256 + fp[i * 5 + j];
      out.push(String(v % 100000).padStart(5, '0'));
    }
    return out;
  };
  // Bytewise order of the UTF-8 usernames.
  const a = Buffer.from(userA, 'utf8'), b = Buffer.from(userB, 'utf8');
  const [first, second] = Buffer.compare(a, b) <= 0 ? [fpA, fpB] : [fpB, fpA];
  return [...groups(first), ...groups(second)].join(' ');
}

// A decomposed "é" (e + U+0301): the NFC step above must compose it.
const alice = await makeUser('alice', 'Tr0ub4dor&3 cafe\u0301 ☕', Uint8Array.from({ length: 16 }, (_, i) => i));
const bob = await makeUser('bob', 'correct horse battery staple', Uint8Array.from({ length: 16 }, (_, i) => 0xf0 ^ i));

// One message from alice to {alice, bob}.
const msgId = '0b9d6a52-6f3c-4c1e-9d2a-3f6e8c1b7a45';
const sender = 'alice';
const chatId = 'c6f1e2d3-4b5a-4978-8e1f-0a2b3c4d5e6f';
const content = JSON.stringify({ v: 1, type: 'text', text: 'Hello Bob — ünïcødé ✓' });
const aad = enc.encode(`securechat/v1/msg/${msgId}/${sender}/${chatId}`);
const k = await subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt', 'decrypt']);
const kRaw = await subtle.exportKey('raw', k);
const iv = crypto.getRandomValues(new Uint8Array(12));
const ct = await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: aad }, k, enc.encode(content));
const keys = {};
for (const [name, u] of [['alice', alice], ['bob', bob]]) {
  keys[name] = b64(await subtle.encrypt({ name: 'RSA-OAEP' }, u.keys.encPair.publicKey, kRaw));
}
const m = await subtle.digest('SHA-256', cat(aad, iv, ct));
const sig = await subtle.sign({ name: 'RSA-PSS', saltLength: 32 }, alice.keys.sigPair.privateKey, m);

// Self-check before writing.
if (!(await subtle.verify({ name: 'RSA-PSS', saltLength: 32 }, alice.keys.sigPair.publicKey, sig, m))) throw new Error('self-check failed');

// Public keys that SecureChat must refuse: RSA-2048, and RSA-4096 with e = 3.
const spkiOf = async (params) => b64(await subtle.exportKey('spki',
  (await subtle.generateKey({ name: 'RSA-OAEP', hash: 'SHA-256', ...params }, true, ['encrypt', 'decrypt'])).publicKey));
const rejected = {
  rsa2048_spki: await spkiOf({ modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) }),
  rsa4096_e3_spki: await spkiOf({ modulusLength: 4096, publicExponent: new Uint8Array([3]) }),
};

const out = {
  description: 'SecureChat v1 crypto vectors made with WebCrypto by make-webcrypto-vectors.mjs; binary values are base64url without padding',
  iterations: ITERATIONS,
  users: { alice: alice.json, bob: bob.json },
  message: {
    msg_id: msgId, sender, chat_id: chatId, content,
    iv: b64(iv), ct: b64(ct), keys, sig: b64(sig),
    signed_digest: b64(m),
  },
  safety_number_alice_bob: safetyNumber('alice', alice.fingerprint, 'bob', bob.fingerprint),
  rejected_public_keys: rejected,
};
const path = process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), 'webcrypto-v1.json');
writeFileSync(path, JSON.stringify(out, null, 2) + '\n');
console.log(`wrote ${path}`);
