//! Transport security: the host's own certificate authority and leaf
//! certificate (made with rcgen on first run, kept in the data directory),
//! or an administrator's certificate; and the rustls server configuration
//! (ring provider, TLS 1.2 and 1.3, AEAD suites only).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: no usable {what} in the PEM file")]
    Pem { path: PathBuf, what: &'static str },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The certificates the server presents and the fingerprint people check.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The leaf first, then its issuers.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The trust anchor clients pin: the local CA, or the last certificate of
    /// an administrator's chain.
    pub ca_der: CertificateDer<'static>,
    /// SHA-256 of `ca_der`, as colon-separated uppercase hex.
    pub fingerprint: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of `der` as colon-separated uppercase hex (`AB:CD:…`).
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A new local CA: its certificate and key, valid for ten years from `now`.
fn new_ca(now: time::OffsetDateTime) -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + YEAR * 10;
    Ok((params.self_signed(&key)?, key))
}

/// A leaf certificate for `names`, valid for a year from `now`, signed by
/// the CA whose key is `ca_key`.
fn new_leaf(
    names: &[String],
    now: time::OffsetDateTime,
    ca_key: &KeyPair,
) -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "SecureChat host");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + YEAR;
    let issuer = Issuer::new(ca_params(), ca_key);
    Ok((params.signed_by(&key, &issuer)?, key))
}

/// A throwaway CA and a leaf for `names`, as PEM: (CA certificate, leaf
/// chain `[leaf, CA]`, leaf key). For benchmarks and tests that give other
/// servers the same kind of certificate the host uses.
pub fn throwaway_pem(names: &[String]) -> Result<(String, String, String), TlsError> {
    let now = time::OffsetDateTime::now_utc();
    let (ca, ca_key) = new_ca(now)?;
    let (leaf, key) = new_leaf(names, now, &ca_key)?;
    Ok((
        ca.pem(),
        format!("{}{}", leaf.pem(), ca.pem()),
        key.serialize_pem(),
    ))
}

/// This computer's name as people know it ("alice-pc"), or "this computer".
pub fn computer_name() -> String {
    hostname::get()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this computer".to_owned())
}

/// The names and addresses the leaf certificate covers: `localhost`,
/// loopback, the host name, `<host>.local` and every non-loopback address of
/// this machine. Sorted, so a change is detectable by comparison.
pub fn local_names() -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = hostname::get() {
        let host = host.to_string_lossy().to_lowercase();
        let valid = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host.is_empty() && host != "localhost" && valid {
            names.push(format!("{host}.local"));
            names.push(host);
        }
    }
    if let Ok(ifaces) = if_addrs::get_if_addrs() {
        for iface in ifaces {
            let ip = iface.ip();
            let link_local_v6 =
                matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if !ip.is_loopback() && !link_local_v6 {
                names.push(ip.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn san(name: &str) -> Result<SanType, rcgen::Error> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "SecureChat local CA");
    dn.push(DnType::OrganizationName, "SecureChat");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    crate::secrets::write_private(path, contents).map_err(io_err(path))
}

/// A private key's PEM, sealed under the `tls` subkey with the file's name as
/// AAD (`<name>.key.enc`). A plaintext `<name>.key.pem` from 0.1.0 is sealed
/// and removed the first time it is read.
fn read_key(dir: &Path, name: &str, key: &[u8; 32]) -> Result<Option<String>, TlsError> {
    let sealed_path = dir.join(format!("{name}.key.enc"));
    let plain_path = dir.join(format!("{name}.key.pem"));
    let aad = format!("securechat/v1/tls/{name}");
    match std::fs::read(&sealed_path) {
        Ok(sealed) => {
            let pem = crate::secrets::open(key, aad.as_bytes(), &sealed)
                .and_then(|p| String::from_utf8(p).ok())
                .ok_or(TlsError::Pem {
                    path: sealed_path,
                    what: "private key (it does not decrypt with this data directory's key)",
                })?;
            // A plaintext copy left by an interrupted upgrade must not stay.
            remove_if_present(&plain_path)?;
            return Ok(Some(pem));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&sealed_path)(e)),
        Err(_) => {}
    }
    match std::fs::read_to_string(&plain_path) {
        Ok(pem) => {
            write_key(dir, name, key, &pem)?;
            remove_if_present(&plain_path)?;
            Ok(Some(pem))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&plain_path)(e)),
    }
}

fn remove_if_present(path: &Path) -> Result<(), TlsError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

fn write_key(dir: &Path, name: &str, key: &[u8; 32], pem: &str) -> Result<(), TlsError> {
    let aad = format!("securechat/v1/tls/{name}");
    let sealed = crate::secrets::seal(key, aad.as_bytes(), pem.as_bytes());
    write_private(&dir.join(format!("{name}.key.enc")), &sealed)
}

const YEAR: time::Duration = time::Duration::days(365);

/// Loads the local CA and leaf from `dir` (`<data>/tls`), creating the CA on
/// first run and re-issuing the leaf when `names` differ from the ones it
/// covers or it expires within 30 days. Private keys are stored sealed under
/// `key` (the `tls` subkey).
pub fn load_or_create(
    dir: &Path,
    names: &[String],
    key: &[u8; 32],
) -> Result<TlsMaterial, TlsError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_cert_path = dir.join("ca.pem");
    let leaf_cert_path = dir.join("leaf.pem");
    let leaf_names_path = dir.join("leaf.names");
    let now = time::OffsetDateTime::now_utc();
    let sealing_key = key;

    let ca_key_pem = read_key(dir, "ca", sealing_key)?;
    let (ca_pem, ca_key) = if let (true, Some(key_pem)) = (ca_cert_path.exists(), ca_key_pem) {
        let pem = std::fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
        (pem, KeyPair::from_pem(&key_pem)?)
    } else {
        let (cert, key) = new_ca(now)?;
        write_key(dir, "ca", sealing_key, &key.serialize_pem())?;
        write_private(&ca_cert_path, cert.pem().as_bytes())?;
        let _ = std::fs::remove_file(&leaf_cert_path);
        (cert.pem(), key)
    };
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| TlsError::Pem {
        path: ca_cert_path.clone(),
        what: "certificate",
    })?;

    let recorded = std::fs::read_to_string(&leaf_names_path).unwrap_or_default();
    let (recorded_names, recorded_expiry) = recorded.split_once('\n').unwrap_or(("", ""));
    let expiry: i64 = recorded_expiry.trim().parse().unwrap_or(0);
    let fresh = expiry - now.unix_timestamp() > 30 * 24 * 3600;
    let leaf_key_pem = read_key(dir, "leaf", sealing_key)?;
    let reuse = leaf_cert_path.exists()
        && leaf_key_pem.is_some()
        && recorded_names == names.join(",")
        && fresh;

    let leaf_key_pem = if let (true, Some(pem)) = (reuse, leaf_key_pem) {
        pem
    } else {
        let not_after = now + YEAR;
        let (cert, key) = new_leaf(names, now, &ca_key)?;
        write_key(dir, "leaf", sealing_key, &key.serialize_pem())?;
        write_private(&leaf_cert_path, cert.pem().as_bytes())?;
        write_private(
            &leaf_names_path,
            format!("{}\n{}", names.join(","), not_after.unix_timestamp()).as_bytes(),
        )?;
        key.serialize_pem()
    };
    let leaf_der = CertificateDer::from_pem_file(&leaf_cert_path).map_err(|_| TlsError::Pem {
        path: leaf_cert_path.clone(),
        what: "certificate",
    })?;
    let key =
        PrivateKeyDer::from_pem_slice(leaf_key_pem.as_bytes()).map_err(|_| TlsError::Pem {
            path: dir.join("leaf.key.enc"),
            what: "private key",
        })?;
    Ok(TlsMaterial {
        fingerprint: fingerprint(&ca_der),
        chain: vec![leaf_der, ca_der.clone()],
        key: Arc::new(key),
        ca_der,
    })
}

/// Loads an administrator's certificate chain and key (PEM files). The last
/// certificate of the chain is the one whose fingerprint is shown.
pub fn load_custom(cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|_| TlsError::Pem {
            path: cert.to_owned(),
            what: "certificate",
        })?
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            path: cert.to_owned(),
            what: "certificate",
        })?;
    let Some(anchor) = chain.last().cloned() else {
        return Err(TlsError::Pem {
            path: cert.to_owned(),
            what: "certificate",
        });
    };
    let key = PrivateKeyDer::from_pem_file(key).map_err(|_| TlsError::Pem {
        path: key.to_owned(),
        what: "private key",
    })?;
    Ok(TlsMaterial {
        fingerprint: fingerprint(&anchor),
        ca_der: anchor,
        chain,
        key: Arc::new(key),
    })
}

/// The rustls server configuration: ring, TLS 1.2 and 1.3 with rustls's
/// default (AEAD-only) suites, HTTP/1.1 (WebSockets upgrade over it).
pub fn server_config(material: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(material.chain.clone(), material.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A rustls client configuration that trusts only `anchor`: how the native
/// client pins the host's CA.
pub fn pinned_client_config(anchor: &CertificateDer<'_>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(anchor.clone().into_owned())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_reused_and_leaf_reissued_when_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let key = [7u8; 32];
        let first = load_or_create(dir.path(), &names, &key).unwrap();
        let again = load_or_create(dir.path(), &names, &key).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(
            first.chain[0], again.chain[0],
            "leaf reused while names are unchanged"
        );
        let more = vec![
            "127.0.0.1".to_owned(),
            "10.0.0.5".to_owned(),
            "localhost".to_owned(),
        ];
        let changed = load_or_create(dir.path(), &more, &key).unwrap();
        assert_eq!(first.fingerprint, changed.fingerprint, "the CA survives");
        assert_ne!(first.chain[0], changed.chain[0], "the leaf is re-issued");
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        server_config(&changed).unwrap();
        // No private key is stored in the clear, and another key cannot open them.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
        }
        assert!(load_or_create(dir.path(), &more, &[8u8; 32]).is_err());
    }
}
