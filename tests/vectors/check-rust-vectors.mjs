// Checks, with nothing but WebCrypto, a message and an account that the Rust
// module src/client/crypto.rs produced (the test `rust_to_webcrypto` pipes
// the JSON in on stdin). The recipients alice and bob are the WebCrypto users
// of webcrypto-v1.json beside this script. Exits non-zero on any mismatch.
//
//   node tests/vectors/check-rust-vectors.mjs < rust-vectors.json

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();
const unb64 = (s) => new Uint8Array(Buffer.from(s, 'base64url'));
const b64 = (buf) => Buffer.from(new Uint8Array(buf)).toString('base64url');
const cat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) { out.set(new Uint8Array(p), o); o += p.byteLength; }
  return out;
};
function check(cond, what) {
  if (!cond) throw new Error(`mismatch: ${what}`);
  console.log(`ok: ${what}`);
}

const rust = JSON.parse(readFileSync(0, 'utf8'));
const web = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), 'webcrypto-v1.json'), 'utf8'));
const OAEP = { name: 'RSA-OAEP', hash: 'SHA-256' };
const PSS = { name: 'RSA-PSS', hash: 'SHA-256' };

async function unwrapPrivate(wrapKeyRaw, username, purpose, w) {
  const wrapKey = await subtle.importKey('raw', wrapKeyRaw, 'AES-GCM', false, ['decrypt']);
  const pkcs8 = await subtle.decrypt(
    { name: 'AES-GCM', iv: unb64(w.iv), additionalData: enc.encode(`securechat/v1/privkey/${username}/${purpose}`) },
    wrapKey, unb64(w.ct));
  return subtle.importKey('pkcs8', pkcs8, purpose === 'enc' ? OAEP : PSS, true, [purpose === 'enc' ? 'decrypt' : 'sign']);
}

// 1. Key derivation.
const u = rust.user;
const pw = await subtle.importKey('raw', enc.encode(u.password.normalize('NFC')), 'PBKDF2', false, ['deriveBits']);
const master = await subtle.deriveBits({ name: 'PBKDF2', hash: 'SHA-256', salt: unb64(u.salt), iterations: rust.iterations }, pw, 256);
const ikm = await subtle.importKey('raw', master, 'HKDF', false, ['deriveBits']);
const hkdf = (info) => subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: enc.encode(info) }, ikm, 256);
check(b64(await hkdf('securechat/v1/auth')) === u.auth_key, 'auth_key');
const wrapKeyRaw = await hkdf('securechat/v1/wrap');
check(b64(wrapKeyRaw) === u.wrap_key, 'wrap_key');

// 2. Rust's wrapped PKCS#8 private keys unwrap and import; they match the SPKIs.
const encPriv = await unwrapPrivate(wrapKeyRaw, u.name, 'enc', u.enc_priv);
const sigPriv = await unwrapPrivate(wrapKeyRaw, u.name, 'sig', u.sig_priv);
const encPub = await subtle.importKey('spki', unb64(u.enc_spki), OAEP, true, ['encrypt']);
const sigPub = await subtle.importKey('spki', unb64(u.sig_spki), PSS, true, ['verify']);
check(b64(await subtle.exportKey('spki', encPub)) === u.enc_spki, 'enc SPKI re-exports identically');
check((await subtle.exportKey('jwk', encPriv)).n === (await subtle.exportKey('jwk', encPub)).n, 'enc private key matches enc SPKI');
check((await subtle.exportKey('jwk', sigPriv)).n === (await subtle.exportKey('jwk', sigPub)).n, 'sig private key matches sig SPKI');
check(encPub.algorithm.modulusLength === 4096 && sigPub.algorithm.modulusLength === 4096, 'RSA-4096');
const fp = new Uint8Array(await subtle.digest('SHA-256', cat(unb64(u.enc_spki), unb64(u.sig_spki))));
check(b64(fp) === u.fingerprint, 'fingerprint');

// 3. The message: signature first, then every recipient opens it.
const m = rust.message;
const aad = enc.encode(`securechat/v1/msg/${m.msg_id}/${m.sender}/${m.chat_id}`);
const digest = await subtle.digest('SHA-256', cat(aad, unb64(m.iv), unb64(m.ct)));
check(await subtle.verify({ name: 'RSA-PSS', saltLength: 32 }, sigPub, unb64(m.sig), digest), 'PSS signature verifies');
const tampered = unb64(m.ct); tampered[0] ^= 1;
const badDigest = await subtle.digest('SHA-256', cat(aad, unb64(m.iv), tampered));
check(!(await subtle.verify({ name: 'RSA-PSS', saltLength: 32 }, sigPub, unb64(m.sig), badDigest)), 'tampered ciphertext fails to verify');

const privs = { [u.name]: encPriv };
for (const name of ['alice', 'bob']) {
  privs[name] = await unwrapPrivate(unb64(web.users[name].wrap_key), name, 'enc', web.users[name].enc_priv);
}
check(Object.keys(m.keys).sort().join() === Object.keys(privs).sort().join(), 'recipients');
for (const [name, priv] of Object.entries(privs)) {
  const kRaw = await subtle.decrypt({ name: 'RSA-OAEP' }, priv, unb64(m.keys[name]));
  check(kRaw.byteLength === 32, `${name}: message key is 32 bytes`);
  const k = await subtle.importKey('raw', kRaw, 'AES-GCM', false, ['decrypt']);
  const pt = await subtle.decrypt({ name: 'AES-GCM', iv: unb64(m.iv), additionalData: aad }, k, unb64(m.ct));
  check(new TextDecoder().decode(pt) === m.content, `${name}: content decrypts`);
}

// 4. Safety number, computed here independently.
const groups = (f) => Array.from({ length: 6 }, (_, i) => {
  let v = 0;
  for (let j = 0; j < 5; j++) v = v * 256 + f[i * 5 + j];
  return String(v % 100000).padStart(5, '0');
});
const fpAlice = unb64(web.users.alice.fingerprint);
const [first, second] = Buffer.compare(Buffer.from('alice'), Buffer.from(u.name)) <= 0 ? [fpAlice, fp] : [fp, fpAlice];
check([...groups(first), ...groups(second)].join(' ') === rust.safety_number_with_alice, 'safety number');
console.log('all rust vectors ok');
