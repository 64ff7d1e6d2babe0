//! SecureChat v1 client-side cryptography (see SECURITY.md).
//!
//! A pure, synchronous module: bytes in, bytes out; no I/O, no async, no base64.
//! Every operation interoperates byte for byte with the browser client, which
//! uses WebCrypto (`crypto.subtle`); the tests check this against vectors made
//! by `tests/vectors/make-webcrypto-vectors.mjs`.
//!
//! # Accounts
//! * `master = PBKDF2-HMAC-SHA256(NFC(password), salt, iterations, 32)`
//! * `auth_key = HKDF-SHA256(master, no salt, "securechat/v1/auth", 32)`
//! * `wrap_key = HKDF-SHA256(master, no salt, "securechat/v1/wrap", 32)` (AES-256-GCM)
//! * two RSA-4096 key pairs (e = 65537): `enc` for RSA-OAEP-SHA256 (MGF1-SHA256,
//!   empty label), `sig` for RSA-PSS-SHA256 (MGF1-SHA256, salt length 32);
//! * each private key (PKCS#8 DER) is AES-256-GCM encrypted under `wrap_key`
//!   with a fresh 12-byte IV and AAD `"securechat/v1/privkey/<username>/<enc|sig>"`;
//!   ciphertexts are WebCrypto's `ciphertext ‖ 16-byte tag`;
//! * public keys travel as SPKI DER.
//!
//! # Messages
//! A fresh AES-256-GCM key `K` and IV encrypt the content with AAD
//! `"securechat/v1/msg/<msg id>/<sender>/<chat id>"`; `K` is wrapped with
//! RSA-OAEP for every recipient (the sender included); the sender signs
//! `M = SHA-256(AAD ‖ IV ‖ ciphertext)` with RSA-PSS, `M` being the *message*
//! given to the signer (which hashes it again, as WebCrypto does). Receivers
//! verify the signature before anything else.
//!
//! # Errors and panics
//! No function panics on bad input; every failure is a [`CryptoError`] whose
//! message is safe to show to a user (it never contains secrets or input bytes).
//!
//! # Slowness
//! [`UserKeys::generate`] (two RSA-4096 key generations, run in parallel)
//! takes about 0.2–1 s with optimised dependencies, with a random long tail,
//! and [`derive_keys`] about 0.7 s at the default iteration count; unoptimised
//! builds are many times slower. Async callers should run both on a blocking
//! thread (`tokio::task::spawn_blocking`). RSA-OAEP/PSS operations take
//! milliseconds.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::Hmac;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

/// Default PBKDF2 iteration count for new accounts.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Length in bytes of the PBKDF2 salt made by [`random_salt`].
pub const SALT_LEN: usize = 16;
/// RSA modulus size in bits; the only size accepted.
pub const RSA_BITS: usize = 4096;
/// The only RSA public exponent accepted (65537).
pub const RSA_PUBLIC_EXPONENT: u32 = 65_537;
/// Length in bytes of an RSA-OAEP wrapped message key.
pub const WRAPPED_KEY_LEN: usize = RSA_BITS / 8;
/// Length in bytes of an RSA-PSS signature.
pub const SIGNATURE_LEN: usize = RSA_BITS / 8;
/// Length in bytes of an AES-GCM IV.
pub const IV_LEN: usize = 12;
/// Length in bytes of an AES-GCM tag (appended to every ciphertext).
pub const TAG_LEN: usize = 16;
/// Length in bytes of AES-256 keys and of the derived keys.
pub const KEY_LEN: usize = 32;
/// RSA-PSS salt length in bytes (rsa's `pss_sign::<Sha256>` uses the digest
/// length, which is this).
pub const PSS_SALT_LEN: usize = 32;

const AUTH_INFO: &[u8] = b"securechat/v1/auth";
const WRAP_INFO: &[u8] = b"securechat/v1/wrap";
const PRIVKEY_AAD_PREFIX: &str = "securechat/v1/privkey/";
const MSG_AAD_PREFIX: &str = "securechat/v1/msg/";

/// Errors of this module. Messages are generic on purpose and safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A key is malformed, or not RSA-4096 with e = 65537.
    #[error("invalid or unsupported key")]
    BadKey,
    /// Authenticated decryption failed (wrong key, wrong context, or tampered data).
    #[error("decryption failed: wrong key or corrupted data")]
    Decrypt,
    /// A signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// An input has the wrong length or shape (e.g. an IV that is not 12 bytes).
    #[error("malformed encrypted data")]
    Encoding,
    /// A parameter is out of range (e.g. zero PBKDF2 iterations, no recipients).
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// The reader has no wrapped key in the message.
    #[error("this message was not encrypted for you")]
    NotARecipient,
    /// The operating system's random number generator failed.
    #[error("random number generator failure")]
    Rng,
    /// Encryption, signing or key generation failed unexpectedly.
    #[error("cryptographic operation failed")]
    Internal,
}

type Result<T> = std::result::Result<T, CryptoError>;

// ---------------------------------------------------------------------------
// Randomness and small helpers

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| CryptoError::Rng)?;
    Ok(out)
}

/// `n` fresh random bytes.
pub fn random_bytes_vec(n: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; n];
    getrandom::fill(&mut out).map_err(|_| CryptoError::Rng)?;
    Ok(out)
}

/// Best-effort wipe of a secret buffer (no `unsafe`, so not guaranteed).
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(&buf);
}

/// Returns [`SALT_LEN`] fresh random bytes for a new account's PBKDF2 salt.
///
/// # Errors
/// [`CryptoError::Rng`] if the operating system RNG fails.
pub fn random_salt() -> Result<[u8; SALT_LEN]> {
    random_bytes()
}

pub(crate) fn aes_gcm_encrypt(
    key: &[u8; KEY_LEN],
    iv: &[u8; IV_LEN],
    aad: &[u8],
    pt: &[u8],
) -> Result<Vec<u8>> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Internal)?;
    cipher
        .encrypt(&Nonce::from(*iv), Payload { msg: pt, aad })
        .map_err(|_| CryptoError::Internal)
}

pub(crate) fn aes_gcm_decrypt(
    key: &[u8; KEY_LEN],
    iv: &[u8; IV_LEN],
    aad: &[u8],
    ct: &[u8],
) -> Result<Vec<u8>> {
    if ct.len() < TAG_LEN {
        return Err(CryptoError::Decrypt);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Internal)?;
    cipher
        .decrypt(&Nonce::from(*iv), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Decrypt)
}

fn iv_from_slice(iv: &[u8]) -> Result<[u8; IV_LEN]> {
    iv.try_into().map_err(|_| CryptoError::Encoding)
}

// ---------------------------------------------------------------------------
// Password-based key derivation

/// The two keys derived from a password. `Debug` never shows them.
///
/// Wiped (best effort) when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedKeys {
    /// Proves knowledge of the password to the server; never used for encryption.
    pub auth_key: [u8; KEY_LEN],
    /// AES-256-GCM key that wraps the user's private keys; never leaves the client.
    pub wrap_key: [u8; KEY_LEN],
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedKeys")
            .field("auth_key", &"<redacted>")
            .field("wrap_key", &"<redacted>")
            .finish()
    }
}

impl Drop for DerivedKeys {
    fn drop(&mut self) {
        wipe(&mut self.auth_key);
        wipe(&mut self.wrap_key);
    }
}

/// `PBKDF2-HMAC-SHA256(UTF-8(NFC(password)), salt, iterations, 32)`.
fn master_key(password: &str, salt: &[u8], iterations: u32) -> Result<[u8; KEY_LEN]> {
    if iterations == 0 {
        return Err(CryptoError::InvalidParameter(
            "PBKDF2 iteration count must be positive",
        ));
    }
    let mut normalized = password.nfc().collect::<String>().into_bytes();
    let mut master = [0u8; KEY_LEN];
    let res = pbkdf2::pbkdf2::<Hmac<Sha256>>(&normalized, salt, iterations, &mut master);
    wipe(&mut normalized);
    res.map_err(|_| CryptoError::Internal)?;
    Ok(master)
}

/// `HKDF-SHA256(ikm, salt = none, info, 32)`. An absent salt is HashLen zero
/// bytes, the same as WebCrypto's HKDF with an empty salt.
fn hkdf_sha256(ikm: &[u8], info: &[u8]) -> Result<[u8; KEY_LEN]> {
    let mut out = [0u8; KEY_LEN];
    Hkdf::<Sha256>::new(None, ikm)
        .expand(info, &mut out)
        .map_err(|_| CryptoError::Internal)?;
    Ok(out)
}

/// Derives the account keys from a password:
/// `master = PBKDF2-HMAC-SHA256(UTF-8(NFC(password)), salt, iterations, 32)`,
/// then `auth_key` and `wrap_key` by HKDF-SHA256 (no salt) with the infos
/// `"securechat/v1/auth"` and `"securechat/v1/wrap"`.
///
/// Use [`PBKDF2_ITERATIONS`] for new accounts. Takes ~0.3–1 s at that count:
/// async callers should use a blocking thread. The salt may be any length
/// ([`random_salt`] makes 16 bytes). Callers handling a server-supplied
/// iteration count should enforce their own minimum and maximum.
///
/// # Errors
/// [`CryptoError::InvalidParameter`] if `iterations` is 0.
pub fn derive_keys(password: &str, salt: &[u8], iterations: u32) -> Result<DerivedKeys> {
    let mut master = master_key(password, salt, iterations)?;
    let keys = (|| {
        Ok(DerivedKeys {
            auth_key: hkdf_sha256(&master, AUTH_INFO)?,
            wrap_key: hkdf_sha256(&master, WRAP_INFO)?,
        })
    })();
    wipe(&mut master);
    keys
}

// ---------------------------------------------------------------------------
// Private-key wrapping

/// Which of a user's two key pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPurpose {
    /// RSA-OAEP-SHA256 key exchange (label `"enc"`).
    Enc,
    /// RSA-PSS-SHA256 signatures (label `"sig"`).
    Sig,
}

impl KeyPurpose {
    /// The label used in AADs and storage: `"enc"` or `"sig"`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            KeyPurpose::Enc => "enc",
            KeyPurpose::Sig => "sig",
        }
    }
}

impl fmt::Display for KeyPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An AES-256-GCM encrypted blob: the IV and WebCrypto's `ciphertext ‖ tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The 12-byte IV.
    pub iv: [u8; IV_LEN],
    /// Ciphertext followed by the 16-byte GCM tag.
    pub ct: Vec<u8>,
}

/// The AAD binding a wrapped private key to its owner and purpose:
/// `"securechat/v1/privkey/" + username + "/" + ("enc" | "sig")`.
#[must_use]
pub fn private_key_aad(username: &str, purpose: KeyPurpose) -> Vec<u8> {
    format!("{PRIVKEY_AAD_PREFIX}{username}/{}", purpose.label()).into_bytes()
}

/// Encrypts a private key (PKCS#8 DER, or any bytes) under `wrap_key` with a
/// fresh random IV and AAD [`private_key_aad`]`(username, purpose)`.
///
/// # Errors
/// [`CryptoError::Rng`] if no IV can be drawn.
pub fn wrap_private_key(
    wrap_key: &[u8; KEY_LEN],
    username: &str,
    purpose: KeyPurpose,
    pkcs8_der: &[u8],
) -> Result<Wrapped> {
    let iv = random_bytes::<IV_LEN>()?;
    let ct = aes_gcm_encrypt(
        wrap_key,
        &iv,
        &private_key_aad(username, purpose),
        pkcs8_der,
    )?;
    Ok(Wrapped { iv, ct })
}

/// Reverses [`wrap_private_key`]; returns the PKCS#8 DER bytes.
///
/// # Errors
/// [`CryptoError::Decrypt`] for a wrong key (i.e. wrong password), wrong
/// username or purpose, or tampered data.
pub fn unwrap_private_key(
    wrap_key: &[u8; KEY_LEN],
    username: &str,
    purpose: KeyPurpose,
    w: &Wrapped,
) -> Result<Vec<u8>> {
    aes_gcm_decrypt(wrap_key, &w.iv, &private_key_aad(username, purpose), &w.ct)
}

// ---------------------------------------------------------------------------
// RSA keys

fn check_public(key: &PublicKey) -> Result<()> {
    let bits = key.n().as_ref().bit_width_vartime() as usize;
    if bits != RSA_BITS || key.size() != RSA_BITS / 8 || *key.e_bytes() != [0x01, 0x00, 0x01] {
        return Err(CryptoError::BadKey);
    }
    Ok(())
}

fn generate_private() -> Result<PrivateKey> {
    let key = PrivateKey::new(&mut rand::rngs::SysRng, RSA_BITS).map_err(|e| match e {
        rsa::Error::Rng => CryptoError::Rng,
        _ => CryptoError::Internal,
    })?;
    check_public(key.as_public_key())?;
    Ok(key)
}

/// Imports a PKCS#8 private key; [`UserKeys`] re-encodes it on export (the
/// result is byte-identical to WebCrypto's `exportKey('pkcs8')`).
fn private_from_pkcs8(der: &[u8]) -> Result<PrivateKey> {
    let key = PrivateKey::from_pkcs8_der(der).map_err(|_| CryptoError::BadKey)?;
    check_public(key.as_public_key())?;
    Ok(key)
}

fn private_to_pkcs8(key: &PrivateKey) -> Result<Vec<u8>> {
    Ok(key
        .to_pkcs8_der()
        .map_err(|_| CryptoError::Internal)?
        .as_bytes()
        .to_vec())
}

fn public_from_spki(der: &[u8]) -> Result<PublicKey> {
    let key = PublicKey::from_public_key_der(der).map_err(|_| CryptoError::BadKey)?;
    check_public(&key)?;
    // Only the canonical encoding (rsaEncryption with NULL parameters, minimal
    // DER, nothing trailing), so that a key has exactly one fingerprint.
    let canonical = key.to_public_key_der().map_err(|_| CryptoError::BadKey)?;
    if canonical.as_bytes() != der {
        return Err(CryptoError::BadKey);
    }
    Ok(key)
}

fn public_to_spki(key: &PublicKey) -> Result<Vec<u8>> {
    Ok(key
        .to_public_key_der()
        .map_err(|_| CryptoError::Internal)?
        .as_bytes()
        .to_vec())
}

/// A user's two public keys (RSA-4096, e = 65537), kept with their SPKI DER.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKeys {
    enc: PublicKey,
    sig: PublicKey,
    enc_spki: Vec<u8>,
    sig_spki: Vec<u8>,
}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fp: String = self
            .fingerprint()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        f.debug_struct("PublicKeys")
            .field("fingerprint", &fp)
            .finish_non_exhaustive()
    }
}

impl PublicKeys {
    /// Parses the two SPKI DER public keys (as WebCrypto `exportKey('spki')`
    /// makes them).
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] unless both are canonical DER `rsaEncryption`
    /// keys of exactly 4096 bits with e = 65537.
    pub fn from_spki(enc_der: &[u8], sig_der: &[u8]) -> Result<Self> {
        Ok(PublicKeys {
            enc: public_from_spki(enc_der)?,
            sig: public_from_spki(sig_der)?,
            enc_spki: enc_der.to_vec(),
            sig_spki: sig_der.to_vec(),
        })
    }

    fn from_keys(enc: PublicKey, sig: PublicKey) -> Result<Self> {
        let enc_spki = public_to_spki(&enc)?;
        let sig_spki = public_to_spki(&sig)?;
        Ok(PublicKeys {
            enc,
            sig,
            enc_spki,
            sig_spki,
        })
    }

    /// The key-exchange (RSA-OAEP) public key as SPKI DER.
    #[must_use]
    pub fn enc_spki(&self) -> Vec<u8> {
        self.enc_spki.clone()
    }

    /// The signing (RSA-PSS) public key as SPKI DER.
    #[must_use]
    pub fn sig_spki(&self) -> Vec<u8> {
        self.sig_spki.clone()
    }

    /// `SHA-256(enc SPKI DER ‖ sig SPKI DER)`.
    #[must_use]
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&self.enc_spki);
        h.update(&self.sig_spki);
        h.finalize().into()
    }
}

/// A user's two private keys (and their public halves). `Debug` redacts them.
#[derive(Clone)]
pub struct UserKeys {
    enc: PrivateKey,
    sig: PrivateKey,
    public: PublicKeys,
}

impl fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKeys")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl UserKeys {
    /// Generates two fresh RSA-4096 key pairs (e = 65537) from the OS RNG.
    ///
    /// Slow (see the module docs): prime search has a long tail. The two keys are generated on two
    /// threads (the calling one and a scoped helper, or sequentially if no
    /// thread can be spawned). Async callers must use a blocking thread.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if the OS RNG fails, [`CryptoError::Internal`] otherwise.
    pub fn generate() -> Result<Self> {
        let (enc, sig) = std::thread::scope(|s| {
            let helper = std::thread::Builder::new()
                .name("rsa-keygen".into())
                .spawn_scoped(s, generate_private);
            let enc = generate_private();
            let sig = match helper {
                Ok(handle) => handle.join().unwrap_or(Err(CryptoError::Internal)),
                Err(_) => generate_private(),
            };
            (enc, sig)
        });
        Self::from_private(enc?, sig?)
    }

    fn from_private(enc: PrivateKey, sig: PrivateKey) -> Result<Self> {
        let public = PublicKeys::from_keys(enc.to_public_key(), sig.to_public_key())?;
        Ok(UserKeys { enc, sig, public })
    }

    /// Imports the two private keys from PKCS#8 DER (as WebCrypto
    /// `exportKey('pkcs8')` makes them, or [`Self::enc_private_pkcs8`]).
    ///
    /// # Errors
    /// [`CryptoError::BadKey`] unless both are valid two-prime RSA-4096 keys with e = 65537.
    pub fn from_pkcs8(enc_der: &[u8], sig_der: &[u8]) -> Result<Self> {
        let enc = private_from_pkcs8(enc_der)?;
        let sig = private_from_pkcs8(sig_der)?;
        Self::from_private(enc, sig)
    }

    /// Unwraps ([`unwrap_private_key`]) and imports ([`Self::from_pkcs8`]) a
    /// user's two stored private keys.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] for a wrong `wrap_key` (wrong password) or
    /// username, [`CryptoError::BadKey`] if the plaintext is not a valid key.
    pub fn from_wrapped(
        wrap_key: &[u8; KEY_LEN],
        username: &str,
        enc: &Wrapped,
        sig: &Wrapped,
    ) -> Result<Self> {
        let mut enc_der = unwrap_private_key(wrap_key, username, KeyPurpose::Enc, enc)?;
        let mut sig_der = unwrap_private_key(wrap_key, username, KeyPurpose::Sig, sig)?;
        let keys = Self::from_pkcs8(&enc_der, &sig_der);
        wipe(&mut enc_der);
        wipe(&mut sig_der);
        keys
    }

    /// Wraps both private keys for storage on the server:
    /// returns `(enc, sig)` as made by [`wrap_private_key`].
    ///
    /// # Errors
    /// [`CryptoError::Rng`] or [`CryptoError::Internal`].
    pub fn wrap(&self, wrap_key: &[u8; KEY_LEN], username: &str) -> Result<(Wrapped, Wrapped)> {
        let mut enc_der = self.enc_private_pkcs8()?;
        let mut sig_der = self.sig_private_pkcs8()?;
        let enc = wrap_private_key(wrap_key, username, KeyPurpose::Enc, &enc_der);
        let sig = wrap_private_key(wrap_key, username, KeyPurpose::Sig, &sig_der);
        wipe(&mut enc_der);
        wipe(&mut sig_der);
        Ok((enc?, sig?))
    }

    /// The key-exchange private key as PKCS#8 DER (`rsaEncryption`), which
    /// WebCrypto imports. Secret: wrap it before it leaves the process.
    ///
    /// # Errors
    /// [`CryptoError::Internal`] if encoding fails (not expected).
    pub fn enc_private_pkcs8(&self) -> Result<Vec<u8>> {
        private_to_pkcs8(&self.enc)
    }

    /// The signing private key as PKCS#8 DER; see [`Self::enc_private_pkcs8`].
    ///
    /// # Errors
    /// [`CryptoError::Internal`] if encoding fails (not expected).
    pub fn sig_private_pkcs8(&self) -> Result<Vec<u8>> {
        private_to_pkcs8(&self.sig)
    }

    /// The matching public keys.
    #[must_use]
    pub fn public(&self) -> PublicKeys {
        self.public.clone()
    }

    /// The matching public keys, borrowed.
    #[must_use]
    pub fn public_ref(&self) -> &PublicKeys {
        &self.public
    }
}

// ---------------------------------------------------------------------------
// Messages

/// The AAD of a message: `"securechat/v1/msg/" + msg_id + "/" + sender + "/" + chat_id`.
#[must_use]
pub fn message_aad(msg_id: &str, sender: &str, chat_id: &str) -> Vec<u8> {
    format!("{MSG_AAD_PREFIX}{msg_id}/{sender}/{chat_id}").into_bytes()
}

/// The 32 bytes the sender signs: `M = SHA-256(aad ‖ iv ‖ ct)`.
#[must_use]
pub fn signed_digest(aad: &[u8], iv: &[u8], ct: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(aad);
    h.update(iv);
    h.update(ct);
    h.finalize().into()
}

/// Rejects the identifiers that would make the `/`-separated AAD ambiguous.
fn check_ids(msg_id: &str, sender: &str, chat_id: &str) -> Result<()> {
    for id in [msg_id, sender, chat_id] {
        if id.is_empty() || id.contains('/') {
            return Err(CryptoError::InvalidParameter(
                "message id, sender and chat id must be non-empty and contain no '/'",
            ));
        }
    }
    Ok(())
}

/// A sealed message, as sent to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The 12-byte AES-GCM IV.
    pub iv: [u8; IV_LEN],
    /// The content's ciphertext followed by the 16-byte tag.
    pub ct: Vec<u8>,
    /// Username → the message key wrapped with RSA-OAEP ([`WRAPPED_KEY_LEN`] bytes).
    pub keys: BTreeMap<String, Vec<u8>>,
    /// RSA-PSS signature ([`SIGNATURE_LEN`] bytes) over [`signed_digest`].
    pub sig: Vec<u8>,
}

/// Encrypts and signs `content` (opaque bytes) for `recipients`.
///
/// The sender is always a recipient: if `sender` is not in `recipients`, it
/// is added with `sender_keys.public()`. Usernames must be distinct.
///
/// # Errors
/// [`CryptoError::InvalidParameter`] for empty ids or ids containing `/`, or
/// duplicate recipients, or a recipient entry for `sender` whose keys are not
/// `sender_keys`' own; [`CryptoError::Rng`]/[`CryptoError::Internal`] otherwise.
pub fn seal(
    msg_id: &str,
    sender: &str,
    chat_id: &str,
    content: &[u8],
    recipients: &[(&str, &PublicKeys)],
    sender_keys: &UserKeys,
) -> Result<Sealed> {
    check_ids(msg_id, sender, chat_id)?;
    let mut all: BTreeMap<&str, &PublicKeys> = BTreeMap::new();
    for &(name, keys) in recipients {
        if all.insert(name, keys).is_some() {
            return Err(CryptoError::InvalidParameter("duplicate recipient"));
        }
    }
    match all.get(sender) {
        Some(keys) if **keys != sender_keys.public => {
            return Err(CryptoError::InvalidParameter(
                "the sender's public keys do not match their private keys",
            ));
        }
        Some(_) => {}
        None => {
            all.insert(sender, &sender_keys.public);
        }
    }

    let aad = message_aad(msg_id, sender, chat_id);
    let mut key = random_bytes::<KEY_LEN>()?;
    let sealed = (|| {
        let iv = random_bytes::<IV_LEN>()?;
        let ct = aes_gcm_encrypt(&key, &iv, &aad, content)?;
        let mut keys = BTreeMap::new();
        for (name, public) in all {
            let wrapped = public
                .enc
                .oaep_encrypt::<Sha256>(&key)
                .map_err(|e| match e {
                    rsa::Error::Rng => CryptoError::Rng,
                    _ => CryptoError::Internal,
                })?;
            keys.insert(name.to_owned(), wrapped);
        }
        let digest = signed_digest(&aad, &iv, &ct);
        let sig = sender_keys
            .sig
            .pss_sign::<Sha256>(&digest)
            .map_err(|e| match e {
                rsa::Error::Rng => CryptoError::Rng,
                _ => CryptoError::Internal,
            })?;
        Ok(Sealed { iv, ct, keys, sig })
    })();
    wipe(&mut key);
    sealed
}

/// Verifies a message's signature with the sender's public signing key.
///
/// # Errors
/// [`CryptoError::BadSignature`] (also for a signature of the wrong length,
/// or ids that [`seal`] would refuse).
pub fn verify_message(
    msg_id: &str,
    sender: &str,
    chat_id: &str,
    iv: &[u8],
    ct: &[u8],
    sig: &[u8],
    sender_public: &PublicKeys,
) -> Result<()> {
    check_ids(msg_id, sender, chat_id).map_err(|_| CryptoError::BadSignature)?;
    let digest = signed_digest(&message_aad(msg_id, sender, chat_id), iv, ct);
    sender_public
        .sig
        .pss_verify::<Sha256>(&digest, sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// Verifies, then decrypts, a message; `wrapped_key` is the reader's entry
/// of [`Sealed::keys`]. Returns the content only if everything checks out.
///
/// Order: shape checks, the signature (with `sender_public`'s signing key),
/// then RSA-OAEP unwrapping with `my_keys`, then AES-GCM.
///
/// # Errors
/// [`CryptoError::InvalidParameter`] for bad ids, [`CryptoError::Encoding`]
/// for a wrongly sized IV, wrapped key or signature,
/// [`CryptoError::BadSignature`], or [`CryptoError::Decrypt`] (wrapped key not
/// for `my_keys`, tampering the signature cannot see).
#[allow(clippy::too_many_arguments)]
pub fn open(
    msg_id: &str,
    sender: &str,
    chat_id: &str,
    iv: &[u8],
    ct: &[u8],
    wrapped_key: &[u8],
    sig: &[u8],
    sender_public: &PublicKeys,
    my_keys: &UserKeys,
) -> Result<Vec<u8>> {
    check_ids(msg_id, sender, chat_id)?;
    let iv_arr = iv_from_slice(iv)?;
    if wrapped_key.len() != WRAPPED_KEY_LEN || sig.len() != SIGNATURE_LEN || ct.len() < TAG_LEN {
        return Err(CryptoError::Encoding);
    }
    verify_message(msg_id, sender, chat_id, iv, ct, sig, sender_public)?;

    let mut key_vec = my_keys
        .enc
        .oaep_decrypt::<Sha256>(wrapped_key)
        .map_err(|_| CryptoError::Decrypt)?;
    let key: Result<[u8; KEY_LEN]> = key_vec
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Decrypt);
    wipe(&mut key_vec);
    let mut key = key?;
    let pt = aes_gcm_decrypt(&key, &iv_arr, &message_aad(msg_id, sender, chat_id), ct);
    wipe(&mut key);
    pt
}

/// [`open`] for a whole [`Sealed`], picking `me`'s wrapped key.
///
/// # Errors
/// [`CryptoError::NotARecipient`] if `sealed.keys` has no entry for `me`,
/// otherwise as [`open`].
pub fn open_sealed(
    msg_id: &str,
    sender: &str,
    chat_id: &str,
    sealed: &Sealed,
    sender_public: &PublicKeys,
    me: &str,
    my_keys: &UserKeys,
) -> Result<Vec<u8>> {
    let wrapped = sealed.keys.get(me).ok_or(CryptoError::NotARecipient)?;
    open(
        msg_id,
        sender,
        chat_id,
        &sealed.iv,
        &sealed.ct,
        wrapped,
        &sealed.sig,
        sender_public,
        my_keys,
    )
}

// ---------------------------------------------------------------------------
// Trust

fn safety_groups(fp: &[u8; 32], out: &mut Vec<String>) {
    for chunk in fp[..30].chunks_exact(5) {
        let v = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push(format!("{:05}", v % 100_000));
    }
}

/// Plaintext bytes per file chunk (SECURITY.md §5).
pub const FILE_CHUNK: usize = 1 << 20;
/// Length of a file's random nonce prefix.
pub const FILE_NONCE_PREFIX: usize = 7;

/// The nonce of file chunk `index`: prefix ‖ index (4 bytes, big-endian) ‖
/// last (1 for the final chunk, else 0) — the STREAM construction.
pub fn file_nonce(prefix: &[u8; FILE_NONCE_PREFIX], index: u32, last: bool) -> [u8; IV_LEN] {
    let mut nonce = [0u8; IV_LEN];
    nonce[..FILE_NONCE_PREFIX].copy_from_slice(prefix);
    nonce[FILE_NONCE_PREFIX..FILE_NONCE_PREFIX + 4].copy_from_slice(&index.to_be_bytes());
    nonce[IV_LEN - 1] = u8::from(last);
    nonce
}

/// Encrypts file chunk `index` with AAD = the file id.
pub fn seal_chunk(
    key: &[u8; KEY_LEN],
    prefix: &[u8; FILE_NONCE_PREFIX],
    file_id: &str,
    index: u32,
    last: bool,
    plain: &[u8],
) -> Result<Vec<u8>> {
    aes_gcm_encrypt(
        key,
        &file_nonce(prefix, index, last),
        file_id.as_bytes(),
        plain,
    )
}

/// Decrypts file chunk `index` in place: `buf` holds ciphertext ‖ tag and,
/// once the tag checks out, the plaintext alone.
///
/// # Errors
/// [`CryptoError::Decrypt`] if the chunk was altered, moved, or is not (or
/// wrongly claims to be) the last; `buf` then holds nothing to use.
pub fn open_chunk_in_place(
    key: &[u8; KEY_LEN],
    prefix: &[u8; FILE_NONCE_PREFIX],
    file_id: &str,
    index: u32,
    last: bool,
    buf: &mut Vec<u8>,
) -> Result<()> {
    use aes_gcm::aead::AeadInOut;
    if buf.len() < TAG_LEN {
        return Err(CryptoError::Decrypt);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Internal)?;
    cipher
        .decrypt_in_place(
            &Nonce::from(file_nonce(prefix, index, last)),
            file_id.as_bytes(),
            buf,
        )
        .map_err(|_| CryptoError::Decrypt)
}

/// The safety number of a direct chat between two users, from their
/// [`PublicKeys::fingerprint`]s: for each user, ordered by username (bytewise;
/// by fingerprint if the usernames are equal), the first 30 bytes of the
/// fingerprint as six 5-byte big-endian integers mod 100 000, as 5 digits.
/// Returns the 12 groups separated by single spaces; the same whichever
/// order the users are given in.
#[must_use]
pub fn safety_number(user_a: &str, fp_a: &[u8; 32], user_b: &str, fp_b: &[u8; 32]) -> String {
    let (first, second) = if (user_a.as_bytes(), fp_a) <= (user_b.as_bytes(), fp_b) {
        (fp_a, fp_b)
    } else {
        (fp_b, fp_a)
    };
    let mut groups = Vec::with_capacity(12);
    safety_groups(first, &mut groups);
    safety_groups(second, &mut groups);
    groups.join(" ")
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::Value;
    use std::sync::OnceLock;
    use std::time::Instant;

    const VECTORS: &str = include_str!("../../tests/vectors/webcrypto-v1.json");

    #[test]
    fn a_chunk_opens_in_place_only_where_it_was_sealed() {
        let (key, prefix) = ([7u8; KEY_LEN], [9u8; FILE_NONCE_PREFIX]);
        let sealed = seal_chunk(&key, &prefix, "f1", 3, false, b"chunk three").unwrap();
        assert_eq!(sealed.len(), b"chunk three".len() + TAG_LEN);
        let open = |id: &str, index: u32, last: bool, ct: &[u8]| {
            let mut buf = ct.to_vec();
            open_chunk_in_place(&key, &prefix, id, index, last, &mut buf).map(|()| buf)
        };
        assert_eq!(open("f1", 3, false, &sealed).unwrap(), b"chunk three");
        let mut altered = sealed.clone();
        altered[0] ^= 1;
        for refused in [
            open("f1", 3, false, &altered),
            open("f1", 4, false, &sealed),
            open("f1", 3, true, &sealed),
            open("f2", 3, false, &sealed),
            open("f1", 3, false, &sealed[..TAG_LEN - 1]),
        ] {
            assert!(matches!(refused, Err(CryptoError::Decrypt)));
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    fn b64(s: &Value) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(s.as_str().expect("string"))
            .expect("base64url")
    }
    fn enc64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }
    fn wrapped(v: &Value) -> Wrapped {
        Wrapped {
            iv: b64(&v["iv"]).try_into().expect("12-byte iv"),
            ct: b64(&v["ct"]),
        }
    }

    /// A WebCrypto-made user from the vector file, imported.
    struct VecUser {
        keys: UserKeys,
        public: PublicKeys,
    }

    struct Fixture {
        v: Value,
        alice: VecUser,
        bob: VecUser,
        /// Generated here, by `UserKeys::generate`.
        carol: UserKeys,
        carol_pw: &'static str,
        carol_salt: [u8; 16],
        carol_derived: DerivedKeys,
    }

    fn import_user(v: &Value, name: &str) -> VecUser {
        let u = &v["users"][name];
        let iterations = u32::try_from(v["iterations"].as_u64().unwrap()).unwrap();
        let t = Instant::now();
        let dk = derive_keys(
            u["password"].as_str().unwrap(),
            &b64(&u["salt"]),
            iterations,
        )
        .unwrap();
        eprintln!("derive_keys({iterations} iterations): {:?}", t.elapsed());
        // Interop: PBKDF2 + NFC + HKDF equal WebCrypto's.
        assert_eq!(dk.auth_key.to_vec(), b64(&u["auth_key"]), "{name} auth_key");
        assert_eq!(dk.wrap_key.to_vec(), b64(&u["wrap_key"]), "{name} wrap_key");
        let keys = UserKeys::from_wrapped(
            &dk.wrap_key,
            name,
            &wrapped(&u["enc_priv"]),
            &wrapped(&u["sig_priv"]),
        )
        .expect("WebCrypto private keys unwrap and import");
        let public = PublicKeys::from_spki(&b64(&u["enc_spki"]), &b64(&u["sig_spki"]))
            .expect("WebCrypto SPKI");
        VecUser { keys, public }
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let v: Value = serde_json::from_str(VECTORS).unwrap();
            let alice = import_user(&v, "alice");
            let bob = import_user(&v, "bob");
            let t = Instant::now();
            let carol = UserKeys::generate().unwrap();
            eprintln!(
                "UserKeys::generate (2 × RSA-4096, in parallel): {:?}",
                t.elapsed()
            );
            let carol_pw = "Carol's pässword"; // precomposed ä
            let carol_salt = random_salt().unwrap();
            let carol_derived = derive_keys(carol_pw, &carol_salt, PBKDF2_ITERATIONS).unwrap();
            Fixture {
                v,
                alice,
                bob,
                carol,
                carol_pw,
                carol_salt,
                carol_derived,
            }
        })
    }

    // ---- known answers ----

    #[test]
    fn pbkdf2_known_answers() {
        // PBKDF2-HMAC-SHA256 vectors (RFC 7914 style, "password"/"salt"), 32 bytes.
        for (c, want) in [
            (
                1,
                "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b",
            ),
            (
                2,
                "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43",
            ),
            (
                4096,
                "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a",
            ),
        ] {
            assert_eq!(
                master_key("password", b"salt", c).unwrap().to_vec(),
                hex(want),
                "c = {c}"
            );
        }
        assert_eq!(
            master_key("password", b"salt", 0),
            Err(CryptoError::InvalidParameter(
                "PBKDF2 iteration count must be positive"
            ))
        );
        assert!(matches!(
            derive_keys("pw", b"salt", 0),
            Err(CryptoError::InvalidParameter(_))
        ));
    }

    #[test]
    fn hkdf_known_answers() {
        // RFC 5869 test case 3 (SHA-256, no salt, empty info), first 32 bytes.
        assert_eq!(
            hkdf_sha256(&[0x0b; 22], b"").unwrap().to_vec(),
            hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d")
        );
        // The full derivation with the SecureChat labels, values from WebCrypto
        // (PBKDF2 then HKDF with an empty salt).
        let k = derive_keys("password", b"salt", 1).unwrap();
        assert_eq!(
            k.auth_key.to_vec(),
            hex("0f1fb3f9f1cb2db9c6cbc976b996596fa52607a28bccdd60756668c397ad96fe")
        );
        assert_eq!(
            k.wrap_key.to_vec(),
            hex("124daa6a84f5969f8888ba2d8f378ecbdee81cf0a8b01dd61160cd8f2a11e0d0")
        );
        let k = derive_keys("p\u{e4}ssw\u{f6}rd", b"securechat-salt!", 1000).unwrap();
        assert_eq!(
            k.auth_key.to_vec(),
            hex("417ac9e981cb1e5d4a6fbb5f5ac38cf3e4c3a7f4e4fcf244376c6a132d41ca99")
        );
        assert_eq!(
            k.wrap_key.to_vec(),
            hex("8c2454e8aef7327ee90bb2c4013b000fe60b15d83c2e49873163c402e96ce073")
        );
        assert_eq!(
            format!("{k:?}"),
            "DerivedKeys { auth_key: \"<redacted>\", wrap_key: \"<redacted>\" }"
        );
    }

    #[test]
    fn passwords_are_nfc_normalised() {
        let composed = derive_keys("caf\u{e9}", b"0123456789abcdef", 100).unwrap();
        let decomposed = derive_keys("cafe\u{301}", b"0123456789abcdef", 100).unwrap();
        assert_eq!(composed, decomposed);
        assert_ne!(composed.auth_key, composed.wrap_key);
        assert_ne!(
            composed,
            derive_keys("cafe", b"0123456789abcdef", 100).unwrap()
        );
        assert_ne!(
            composed,
            derive_keys("caf\u{e9}", b"0123456789abcdeF", 100).unwrap()
        );
    }

    #[test]
    fn random_salts_differ() {
        assert_ne!(random_salt().unwrap(), random_salt().unwrap());
    }

    // ---- private-key wrapping ----

    #[test]
    fn wrap_round_trip_and_aad_binding() {
        let key = [7u8; 32];
        let secret = b"pretend this is PKCS#8".to_vec();
        let w = wrap_private_key(&key, "alice", KeyPurpose::Enc, &secret).unwrap();
        assert_eq!(w.ct.len(), secret.len() + TAG_LEN);
        assert_eq!(
            unwrap_private_key(&key, "alice", KeyPurpose::Enc, &w).unwrap(),
            secret
        );
        assert_ne!(
            w.iv,
            wrap_private_key(&key, "alice", KeyPurpose::Enc, &secret)
                .unwrap()
                .iv
        );

        let fails = |k: &[u8; 32], user: &str, p: KeyPurpose, w: &Wrapped| {
            assert_eq!(unwrap_private_key(k, user, p, w), Err(CryptoError::Decrypt));
        };
        fails(&key, "bob", KeyPurpose::Enc, &w);
        fails(&key, "alice", KeyPurpose::Sig, &w);
        fails(&key, "Alice", KeyPurpose::Enc, &w);
        fails(&[8u8; 32], "alice", KeyPurpose::Enc, &w);
        let mut t = w.clone();
        t.iv[0] ^= 1;
        fails(&key, "alice", KeyPurpose::Enc, &t);
        let mut t = w.clone();
        t.ct[3] ^= 0x80;
        fails(&key, "alice", KeyPurpose::Enc, &t);
        let mut t = w.clone();
        t.ct.pop();
        fails(&key, "alice", KeyPurpose::Enc, &t);
        fails(
            &key,
            "alice",
            KeyPurpose::Enc,
            &Wrapped {
                iv: w.iv,
                ct: vec![],
            },
        );
        assert_eq!(
            private_key_aad("alice", KeyPurpose::Sig),
            b"securechat/v1/privkey/alice/sig"
        );
    }

    // ---- keys ----

    #[test]
    fn generated_keys_round_trip() {
        let f = fixture();
        let pk = f.carol.public();
        assert_eq!(pk.enc_spki().len(), 550);
        assert_ne!(pk.enc_spki(), pk.sig_spki());
        let again = PublicKeys::from_spki(&pk.enc_spki(), &pk.sig_spki()).unwrap();
        assert_eq!(again.fingerprint(), pk.fingerprint());
        let enc = f.carol.enc_private_pkcs8().unwrap();
        let sig = f.carol.sig_private_pkcs8().unwrap();
        let back = UserKeys::from_pkcs8(&enc, &sig).unwrap();
        assert_eq!(back.public(), pk);
        // Stored wrapped, then unwrapped with the same password-derived key.
        let (we, ws) = f.carol.wrap(&f.carol_derived.wrap_key, "carol").unwrap();
        let back = UserKeys::from_wrapped(&f.carol_derived.wrap_key, "carol", &we, &ws).unwrap();
        assert_eq!(back.public(), pk);
        assert_eq!(
            UserKeys::from_wrapped(&f.carol_derived.wrap_key, "carl", &we, &ws).unwrap_err(),
            CryptoError::Decrypt
        );
        // Swapped purposes fail the AAD.
        assert!(UserKeys::from_wrapped(&f.carol_derived.wrap_key, "carol", &ws, &we).is_err());
        assert!(!format!("{:?}", f.carol).contains("PrivateKey"));
    }

    #[test]
    fn from_spki_rejects_other_keys() {
        let f = fixture();
        let r = &f.v["rejected_public_keys"];
        let good = f.alice.public.sig_spki();
        let rsa2048 = b64(&r["rsa2048_spki"]);
        let e3 = b64(&r["rsa4096_e3_spki"]);
        assert_eq!(
            PublicKeys::from_spki(&rsa2048, &good).unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            PublicKeys::from_spki(&good, &rsa2048).unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            PublicKeys::from_spki(&e3, &good).unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            PublicKeys::from_spki(b"", &good).unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            PublicKeys::from_spki(b"garbage", &good).unwrap_err(),
            CryptoError::BadKey
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            PublicKeys::from_spki(&good, &trailing).unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            PublicKeys::from_spki(&good[..good.len() - 1], &good).unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            UserKeys::from_pkcs8(b"garbage", b"garbage").unwrap_err(),
            CryptoError::BadKey
        );
        assert_eq!(
            UserKeys::from_pkcs8(&good, &good).unwrap_err(),
            CryptoError::BadKey
        );
    }

    // ---- messages ----

    #[test]
    fn seal_open_round_trip_two_recipients() {
        let f = fixture();
        let content = br#"{"v":1,"type":"text","text":"hi"}"#;
        let t = Instant::now();
        let s = seal(
            "m1",
            "carol",
            "chat1",
            content,
            &[("carol", &f.carol.public()), ("bob", &f.bob.public)],
            &f.carol,
        )
        .unwrap();
        eprintln!("seal to 2 recipients: {:?}", t.elapsed());
        assert_eq!(s.keys.keys().collect::<Vec<_>>(), ["bob", "carol"]);
        assert!(s.keys.values().all(|k| k.len() == WRAPPED_KEY_LEN));
        assert_eq!(s.sig.len(), SIGNATURE_LEN);
        assert_eq!(s.ct.len(), content.len() + TAG_LEN);
        let cp = f.carol.public();
        let t = Instant::now();
        let out = open_sealed("m1", "carol", "chat1", &s, &cp, "bob", &f.bob.keys).unwrap();
        eprintln!("open: {:?}", t.elapsed());
        assert_eq!(out, content);
        assert_eq!(
            open_sealed("m1", "carol", "chat1", &s, &cp, "carol", &f.carol).unwrap(),
            content
        );
        assert_eq!(
            open(
                "m1",
                "carol",
                "chat1",
                &s.iv,
                &s.ct,
                &s.keys["carol"],
                &s.sig,
                &cp,
                &f.carol
            )
            .unwrap(),
            content
        );

        // The sender is added when missing; empty content works.
        let s2 = seal(
            "m2",
            "carol",
            "chat1",
            b"",
            &[("bob", &f.bob.public)],
            &f.carol,
        )
        .unwrap();
        assert_eq!(s2.keys.len(), 2);
        assert_eq!(
            open_sealed("m2", "carol", "chat1", &s2, &cp, "carol", &f.carol).unwrap(),
            b""
        );

        // Bad recipient lists.
        let dup = seal(
            "m3",
            "carol",
            "c",
            b"x",
            &[("bob", &f.bob.public), ("bob", &f.bob.public)],
            &f.carol,
        );
        assert!(matches!(dup, Err(CryptoError::InvalidParameter(_))));
        let wrong_self = seal(
            "m3",
            "carol",
            "c",
            b"x",
            &[("carol", &f.bob.public)],
            &f.carol,
        );
        assert!(matches!(wrong_self, Err(CryptoError::InvalidParameter(_))));
        let slash = seal("m/3", "carol", "c", b"x", &[], &f.carol);
        assert!(matches!(slash, Err(CryptoError::InvalidParameter(_))));
    }

    #[test]
    fn tampering_is_detected() {
        let f = fixture();
        let cp = f.carol.public();
        let s = seal(
            "m1",
            "carol",
            "chat1",
            b"secret",
            &[("bob", &f.bob.public)],
            &f.carol,
        )
        .unwrap();
        let wk = &s.keys["bob"];
        let open_bob = |id: &str,
                        sender: &str,
                        chat: &str,
                        iv: &[u8],
                        ct: &[u8],
                        wk: &[u8],
                        sig: &[u8],
                        pk: &PublicKeys| {
            open(id, sender, chat, iv, ct, wk, sig, pk, &f.bob.keys)
        };
        assert_eq!(
            open_bob("m1", "carol", "chat1", &s.iv, &s.ct, wk, &s.sig, &cp).unwrap(),
            b"secret"
        );

        let flip = |b: &[u8], i: usize| {
            let mut v = b.to_vec();
            v[i] ^= 1;
            v
        };
        use CryptoError::*;
        let cases: Vec<(&str, Result<Vec<u8>>, CryptoError)> = vec![
            (
                "ct",
                open_bob(
                    "m1",
                    "carol",
                    "chat1",
                    &s.iv,
                    &flip(&s.ct, 0),
                    wk,
                    &s.sig,
                    &cp,
                ),
                BadSignature,
            ),
            (
                "tag",
                open_bob(
                    "m1",
                    "carol",
                    "chat1",
                    &s.iv,
                    &flip(&s.ct, s.ct.len() - 1),
                    wk,
                    &s.sig,
                    &cp,
                ),
                BadSignature,
            ),
            (
                "iv",
                open_bob(
                    "m1",
                    "carol",
                    "chat1",
                    &flip(&s.iv, 11),
                    &s.ct,
                    wk,
                    &s.sig,
                    &cp,
                ),
                BadSignature,
            ),
            (
                "sig",
                open_bob(
                    "m1",
                    "carol",
                    "chat1",
                    &s.iv,
                    &s.ct,
                    wk,
                    &flip(&s.sig, 100),
                    &cp,
                ),
                BadSignature,
            ),
            (
                "msg id",
                open_bob("m2", "carol", "chat1", &s.iv, &s.ct, wk, &s.sig, &cp),
                BadSignature,
            ),
            (
                "chat id",
                open_bob("m1", "carol", "chat2", &s.iv, &s.ct, wk, &s.sig, &cp),
                BadSignature,
            ),
            // Claimed sender alice: checked against alice's key, fails.
            (
                "sender",
                open_bob(
                    "m1",
                    "alice",
                    "chat1",
                    &s.iv,
                    &s.ct,
                    wk,
                    &s.sig,
                    &f.alice.public,
                ),
                BadSignature,
            ),
            // Right key, wrong sender name in the AAD.
            (
                "sender name",
                open_bob("m1", "bob", "chat1", &s.iv, &s.ct, wk, &s.sig, &cp),
                BadSignature,
            ),
            // Signature is over the ciphertext, not the wrapped keys: those fail at OAEP.
            (
                "wrapped key",
                open_bob(
                    "m1",
                    "carol",
                    "chat1",
                    &s.iv,
                    &s.ct,
                    &flip(wk, 7),
                    &s.sig,
                    &cp,
                ),
                Decrypt,
            ),
            (
                "carol's wrapped key",
                open_bob(
                    "m1",
                    "carol",
                    "chat1",
                    &s.iv,
                    &s.ct,
                    &s.keys["carol"],
                    &s.sig,
                    &cp,
                ),
                Decrypt,
            ),
            (
                "short iv",
                open_bob("m1", "carol", "chat1", &s.iv[..11], &s.ct, wk, &s.sig, &cp),
                Encoding,
            ),
            (
                "short sig",
                open_bob("m1", "carol", "chat1", &s.iv, &s.ct, wk, &s.sig[1..], &cp),
                Encoding,
            ),
            (
                "short key",
                open_bob("m1", "carol", "chat1", &s.iv, &s.ct, &wk[1..], &s.sig, &cp),
                Encoding,
            ),
            (
                "short ct",
                open_bob("m1", "carol", "chat1", &s.iv, &s.ct[..15], wk, &s.sig, &cp),
                Encoding,
            ),
            (
                "empty",
                open_bob("", "", "", &[], &[], &[], &[], &cp),
                InvalidParameter(
                    "message id, sender and chat id must be non-empty and contain no '/'",
                ),
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, Err(want), "{what}");
        }

        // A validly signed message whose key wraps a non-32-byte value.
        let aad = message_aad("m9", "carol", "chat1");
        let digest = signed_digest(&aad, &s.iv, &s.ct);
        let sig = f.carol.sig.pss_sign::<Sha256>(&digest).unwrap();
        let bad_k = f.bob.public.enc.oaep_encrypt::<Sha256>(&[1u8; 16]).unwrap();
        assert_eq!(
            open_bob("m9", "carol", "chat1", &s.iv, &s.ct, &bad_k, &sig, &cp),
            Err(Decrypt)
        );
        // A validly signed message whose ciphertext was made under another AAD.
        assert_eq!(
            open_bob("m9", "carol", "chat1", &s.iv, &s.ct, wk, &sig, &cp),
            Err(Decrypt)
        );
    }

    #[test]
    fn not_a_recipient() {
        let f = fixture();
        let s = seal("m1", "carol", "chat1", b"for carol only", &[], &f.carol).unwrap();
        assert_eq!(
            open_sealed(
                "m1",
                "carol",
                "chat1",
                &s,
                &f.carol.public(),
                "bob",
                &f.bob.keys
            ),
            Err(CryptoError::NotARecipient)
        );
        // Bob using carol's entry cannot unwrap it.
        assert_eq!(
            open(
                "m1",
                "carol",
                "chat1",
                &s.iv,
                &s.ct,
                &s.keys["carol"],
                &s.sig,
                &f.carol.public(),
                &f.bob.keys
            ),
            Err(CryptoError::Decrypt)
        );
    }

    // ---- trust ----

    #[test]
    fn safety_number_format_and_symmetry() {
        let fa: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let fb: [u8; 32] = std::array::from_fn(|i| 255 - i as u8);
        let n = safety_number("alice", &fa, "bob", &fb);
        assert_eq!(n, safety_number("bob", &fb, "alice", &fa));
        let groups: Vec<&str> = n.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
        );
        assert_eq!(n.len(), 12 * 5 + 11);
        // First group: bytes 00 07 0e 15 1c = 0x00070e151c = 118_363_420 → 63420.
        assert_eq!(groups[0], "63420");
        // Zero padding and the maximum 5-byte value.
        assert!(
            safety_number("a", &[0; 32], "b", &[0xff; 32])
                .starts_with("00000 00000 00000 00000 00000 00000 27775")
        );
        // Bytewise order: "Zed" < "alice" (uppercase sorts first).
        assert_eq!(
            safety_number("alice", &fa, "Zed", &fb),
            safety_number("bob", &fb, "carol", &fa)
        );
        assert_eq!(
            safety_number("x", &fa, "x", &fb),
            safety_number("x", &fb, "x", &fa)
        );
    }

    // ---- interoperability ----

    #[test]
    fn webcrypto_vectors_verify_and_open() {
        let f = fixture();
        let v = &f.v;
        for (name, u) in [("alice", &f.alice), ("bob", &f.bob)] {
            let j = &v["users"][name];
            // SPKI and fingerprint: WebCrypto's public keys, and the public halves of
            // the imported private keys, give the same bytes as WebCrypto's export.
            assert_eq!(
                u.public.fingerprint().to_vec(),
                b64(&j["fingerprint"]),
                "{name} fingerprint"
            );
            assert_eq!(u.keys.public(), u.public, "{name} private matches public");
            assert_eq!(u.keys.public().enc_spki(), b64(&j["enc_spki"]));
            assert_eq!(u.keys.public().sig_spki(), b64(&j["sig_spki"]));
            // Our PKCS#8 export is byte-identical to WebCrypto's.
            let wk: [u8; 32] = b64(&j["wrap_key"]).try_into().unwrap();
            for (p, der) in [
                (KeyPurpose::Enc, u.keys.enc_private_pkcs8().unwrap()),
                (KeyPurpose::Sig, u.keys.sig_private_pkcs8().unwrap()),
            ] {
                let w = wrapped(&j[format!("{p}_priv")]);
                assert_eq!(
                    unwrap_private_key(&wk, name, p, &w).unwrap(),
                    der,
                    "{name} {p} PKCS#8"
                );
            }
        }
        assert_eq!(
            safety_number(
                "alice",
                &f.alice.public.fingerprint(),
                "bob",
                &f.bob.public.fingerprint()
            ),
            v["safety_number_alice_bob"].as_str().unwrap()
        );
        assert_eq!(
            safety_number(
                "bob",
                &f.bob.public.fingerprint(),
                "alice",
                &f.alice.public.fingerprint()
            ),
            v["safety_number_alice_bob"].as_str().unwrap()
        );

        let m = &v["message"];
        let (id, sender, chat) = (
            m["msg_id"].as_str().unwrap(),
            m["sender"].as_str().unwrap(),
            m["chat_id"].as_str().unwrap(),
        );
        let (iv, ct, sig) = (b64(&m["iv"]), b64(&m["ct"]), b64(&m["sig"]));
        assert_eq!(
            signed_digest(&message_aad(id, sender, chat), &iv, &ct).to_vec(),
            b64(&m["signed_digest"])
        );
        verify_message(id, sender, chat, &iv, &ct, &sig, &f.alice.public)
            .expect("WebCrypto PSS signature verifies");
        assert_eq!(
            verify_message(id, sender, chat, &iv, &ct, &sig, &f.bob.public),
            Err(CryptoError::BadSignature)
        );
        for (name, u) in [("alice", &f.alice), ("bob", &f.bob)] {
            let pt = open(
                id,
                sender,
                chat,
                &iv,
                &ct,
                &b64(&m["keys"][name]),
                &sig,
                &f.alice.public,
                &u.keys,
            )
            .unwrap_or_else(|e| panic!("{name} cannot open: {e}"));
            assert_eq!(pt, m["content"].as_str().unwrap().as_bytes(), "{name}");
        }
    }

    /// Rust → WebCrypto: carol (keys generated here) seals a message to
    /// herself and the WebCrypto users alice and bob; the JSON goes to
    /// `tests/vectors/check-rust-vectors.mjs`, which checks it with WebCrypto.
    /// Skipped (with a note) where `node` is not installed.
    #[test]
    fn rust_to_webcrypto() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let f = fixture();
        let content = r#"{"v":1,"type":"text","text":"Hi from Rust — ✓ ü"}"#;
        let (msg_id, chat_id) = (
            "5e0c4f7e-1a2b-4c3d-8e9f-001122334455",
            "c6f1e2d3-4b5a-4978-8e1f-0a2b3c4d5e6f",
        );
        let s = seal(
            msg_id,
            "carol",
            chat_id,
            content.as_bytes(),
            &[("alice", &f.alice.public), ("bob", &f.bob.public)],
            &f.carol,
        )
        .unwrap();
        let pk = f.carol.public();
        let (we, ws) = f.carol.wrap(&f.carol_derived.wrap_key, "carol").unwrap();
        let w = |w: &Wrapped| serde_json::json!({ "iv": enc64(&w.iv), "ct": enc64(&w.ct) });
        let doc = serde_json::json!({
            "iterations": PBKDF2_ITERATIONS,
            "user": {
                "name": "carol",
                "password": f.carol_pw,
                "salt": enc64(&f.carol_salt),
                "auth_key": enc64(&f.carol_derived.auth_key),
                "wrap_key": enc64(&f.carol_derived.wrap_key),
                "enc_spki": enc64(&pk.enc_spki()),
                "sig_spki": enc64(&pk.sig_spki()),
                "enc_priv": w(&we),
                "sig_priv": w(&ws),
                "fingerprint": enc64(&pk.fingerprint()),
            },
            "message": {
                "msg_id": msg_id, "sender": "carol", "chat_id": chat_id, "content": content,
                "iv": enc64(&s.iv), "ct": enc64(&s.ct), "sig": enc64(&s.sig),
                "keys": s.keys.iter().map(|(k, v)| (k.clone(), Value::String(enc64(v)))).collect::<serde_json::Map<_, _>>(),
            },
            "safety_number_with_alice": safety_number("carol", &pk.fingerprint(), "alice", &f.alice.public.fingerprint()),
        });

        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/check-rust-vectors.mjs"
        );
        let child = Command::new("node")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            // CI installs Node.js, so there a missing `node` is a failure.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() =>
            {
                eprintln!("SKIPPED rust_to_webcrypto: `node` is not installed");
                return;
            }
            Err(e) => panic!("cannot run node: {e}"),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(doc.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}");
        assert!(
            out.status.success() && stdout.contains("all rust vectors ok"),
            "WebCrypto rejected Rust's output:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
