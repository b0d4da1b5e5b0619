//! The site's client certificate and key: loaded from the TLS directory, renewed by the
//! running agent over its sync session, and put in place atomically.
//!
//! Renewal: when two thirds of the certificate's lifetime have passed (by the agent's
//! injected clock, [`Identity::renewal_due`]) the sync client makes a new key pair here, sends
//! a CSR over the authenticated session, and writes the hub's certificate with the new key
//! ([`install_renewed`]): both files are written as `*.new` (the key with mode 0600), fsynced,
//! the directory fsynced, then renamed key first, certificate second, and the directory
//! fsynced again. A crash between the two renames leaves a new key beside a `.new`
//! certificate that matches it; [`load`] finishes the swap (or drops a half-written pair) before
//! it reads anything, so the key and the certificate on disk always belong together.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The files of the TLS directory (from enrollment).
pub const CA_FILE: &str = "ca.crt.pem";
pub const CERT_FILE: &str = "client.crt.pem";
pub const KEY_FILE: &str = "client.key.pem";
/// Suffix of a renewed file not yet in place.
const PENDING: &str = "new";

/// The share of a certificate's lifetime after which the agent renews it.
pub const RENEW_AFTER_NUMERATOR: i64 = 2;
pub const RENEW_AFTER_DENOMINATOR: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Bad { file: &'static str, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the agent shows of a certificate: serial (lowercase hex, as the hub's `cert list`),
/// site, validity in seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CertInfo {
    pub serial: String,
    pub common_name: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    pub fn from_pem(pem: &[u8]) -> Option<Self> {
        let der = CertificateDer::from_pem_slice(pem).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        Some(Self {
            serial: serial_hex(cert.raw_serial()),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()?
                .as_str()
                .ok()?
                .to_owned(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The moment renewal is due: two thirds of the lifetime after `not_before`.
    pub fn renew_at(&self) -> i64 {
        let life = (self.not_after - self.not_before).max(0);
        self.not_before + life * RENEW_AFTER_NUMERATOR / RENEW_AFTER_DENOMINATOR
    }
}

/// A serial as the hub's registry writes it: hex, no leading zeros.
fn serial_hex(raw: &[u8]) -> String {
    let hex = sync_protocol::enroll::hex(raw);
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() { "0" } else { trimmed }.to_owned()
}

/// The certificate and key the agent syncs with.
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    pub info: CertInfo,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Identity")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// From PEM bytes, checked: the certificate parses and the key is its key.
    pub fn new(
        ca_pem: Vec<u8>,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    ) -> Result<Self, IdentityError> {
        let info = CertInfo::from_pem(&cert_pem).ok_or_else(|| IdentityError::Bad {
            file: CERT_FILE,
            message: "not a certificate".into(),
        })?;
        if !key_matches(&cert_pem, &key_pem) {
            return Err(IdentityError::Bad {
                file: KEY_FILE,
                message: "the private key is not the certificate's".into(),
            });
        }
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
            info,
        })
    }

    pub fn certificate(&self) -> Result<CertificateDer<'static>, IdentityError> {
        CertificateDer::from_pem_slice(&self.cert_pem).map_err(|e| IdentityError::Bad {
            file: CERT_FILE,
            message: e.to_string(),
        })
    }

    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| IdentityError::Bad {
            file: KEY_FILE,
            message: e.to_string(),
        })
    }

    pub fn ca(&self) -> Result<CertificateDer<'static>, IdentityError> {
        CertificateDer::from_pem_slice(&self.ca_pem).map_err(|e| IdentityError::Bad {
            file: CA_FILE,
            message: e.to_string(),
        })
    }

    /// Whether two thirds of the certificate's lifetime have passed at `now_secs`.
    pub fn renewal_due(&self, now_secs: i64) -> bool {
        now_secs >= self.info.renew_at()
    }
}

/// Whether the PEM key is the one the PEM certificate was issued for.
pub fn key_matches(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    let Ok(der) = CertificateDer::from_pem_slice(cert_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let Ok(key) = std::str::from_utf8(key_pem)
        .map_err(|_| ())
        .and_then(|k| rcgen::KeyPair::from_pem(k).map_err(|_| ()))
    else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

fn pending(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(PENDING);
    path.with_file_name(name)
}

/// Finishes or drops a renewal interrupted by a crash (see the module docs).
pub fn recover(tls_dir: &Path) -> Result<(), IdentityError> {
    let (key, cert) = (tls_dir.join(KEY_FILE), tls_dir.join(CERT_FILE));
    let (key_new, cert_new) = (pending(&key), pending(&cert));
    let read = |p: &Path| std::fs::read(p).ok();
    match (key_new.exists(), cert_new.exists()) {
        (false, false) => return Ok(()),
        // Both staged: complete the swap if they belong together, else drop them.
        (true, true) => match (read(&key_new), read(&cert_new)) {
            (Some(k), Some(c)) if key_matches(&c, &k) => {
                std::fs::rename(&key_new, &key).map_err(io(&key))?;
                std::fs::rename(&cert_new, &cert).map_err(io(&cert))?;
                tracing::warn!(dir = %tls_dir.display(), "finished a certificate renewal interrupted by a crash");
            }
            _ => {
                std::fs::remove_file(&key_new).map_err(io(&key_new))?;
                std::fs::remove_file(&cert_new).map_err(io(&cert_new))?;
                tracing::warn!(dir = %tls_dir.display(), "dropped a half-written renewed certificate");
            }
        },
        // The key is in place already: the certificate follows.
        (false, true) => match (read(&key), read(&cert_new)) {
            (Some(k), Some(c)) if key_matches(&c, &k) => {
                std::fs::rename(&cert_new, &cert).map_err(io(&cert))?;
                tracing::warn!(dir = %tls_dir.display(), "finished a certificate renewal interrupted by a crash");
            }
            _ => {
                std::fs::remove_file(&cert_new).map_err(io(&cert_new))?;
            }
        },
        // A key whose certificate was never written.
        (true, false) => {
            std::fs::remove_file(&key_new).map_err(io(&key_new))?;
        }
    }
    sync_dir(tls_dir)
}

/// Reads the TLS directory (after [`recover`]).
pub fn load(tls_dir: &Path) -> Result<Identity, IdentityError> {
    recover(tls_dir)?;
    let read = |name: &str| {
        let p = tls_dir.join(name);
        std::fs::read(&p).map_err(io(&p))
    };
    Identity::new(read(CA_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?)
}

/// A new key pair and a CSR for it (the hub sets the subject: the site of the session).
pub fn new_key_and_csr() -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    Ok((key.serialize_pem(), csr))
}

fn write_synced(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = options.open(path).map_err(io(path))?;
    #[cfg(unix)]
    {
        // `mode` is masked by the umask on creation; the key must be 0600 whatever it is.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(path))?;
    }
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Puts a renewed certificate and its key in place atomically (module docs) and returns the
/// identity the next connection uses. The certificate must be for `key_pem`.
pub fn install_renewed(
    tls_dir: &Path,
    ca_pem: Vec<u8>,
    key_pem: &str,
    cert_pem: &str,
) -> Result<Identity, IdentityError> {
    let identity = Identity::new(
        ca_pem,
        cert_pem.as_bytes().to_vec(),
        key_pem.as_bytes().to_vec(),
    )?;
    let (key, cert) = (tls_dir.join(KEY_FILE), tls_dir.join(CERT_FILE));
    let (key_new, cert_new) = (pending(&key), pending(&cert));
    write_synced(&key_new, key_pem.as_bytes(), 0o600)?;
    write_synced(&cert_new, cert_pem.as_bytes(), 0o644)?;
    sync_dir(tls_dir)?;
    std::fs::rename(&key_new, &key).map_err(io(&key))?;
    std::fs::rename(&cert_new, &cert).map_err(io(&cert))?;
    sync_dir(tls_dir)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "edge-identity-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A self-signed certificate for a fresh key, valid from `nb` to `na` (seconds).
    fn cert(nb: i64, na: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "SITE_A");
        p.distinguished_name = dn;
        p.not_before = time::OffsetDateTime::from_unix_timestamp(nb).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(na).unwrap();
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn put(dir: &Path, name: &str, contents: &str) {
        std::fs::write(dir.join(name), contents).unwrap();
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let (c, k) = cert(1_000_000, 1_000_900);
        let id = Identity::new(c.clone().into_bytes(), c.into_bytes(), k.into_bytes()).unwrap();
        assert_eq!(id.info.renew_at(), 1_000_600);
        assert!(!id.renewal_due(1_000_599));
        assert!(id.renewal_due(1_000_600));
        assert_eq!(id.info.common_name, "SITE_A");
        // A key that is not the certificate's is refused.
        let (c2, _) = cert(1_000_000, 1_000_900);
        let (_, k2) = cert(1_000_000, 1_000_900);
        assert!(Identity::new(vec![], c2.into_bytes(), k2.into_bytes()).is_err());
    }

    #[test]
    fn a_renewal_is_atomic_and_an_interrupted_one_is_finished_or_dropped() {
        let dir = temp("swap");
        let (c1, k1) = cert(0, 4_000_000_000);
        put(&dir, CA_FILE, &c1);
        put(&dir, CERT_FILE, &c1);
        put(&dir, KEY_FILE, &k1);
        let (c2, k2) = cert(0, 4_000_000_000);
        let id = install_renewed(&dir, c1.clone().into_bytes(), &k2, &c2).unwrap();
        assert_eq!(load(&dir).unwrap().info, id.info);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!pending(&dir.join(KEY_FILE)).exists() && !pending(&dir.join(CERT_FILE)).exists());
        // A renewed certificate for a key that is not the new one is refused, nothing written.
        let (c3, _) = cert(0, 4_000_000_000);
        assert!(install_renewed(&dir, c1.clone().into_bytes(), &k1, &c3).is_err());
        assert_eq!(load(&dir).unwrap().info, id.info);

        // A crash between the two renames: the new key is in place, its certificate staged.
        let (c4, k4) = cert(0, 4_000_000_000);
        put(&dir, KEY_FILE, &k4);
        put(&dir, &format!("{CERT_FILE}.new"), &c4);
        let after = load(&dir).unwrap();
        assert_eq!(after.info, CertInfo::from_pem(c4.as_bytes()).unwrap());
        // A crash before the renames, both staged and whole: the swap is finished.
        let (c5, k5) = cert(0, 4_000_000_000);
        put(&dir, &format!("{KEY_FILE}.new"), &k5);
        put(&dir, &format!("{CERT_FILE}.new"), &c5);
        assert_eq!(
            load(&dir).unwrap().info,
            CertInfo::from_pem(c5.as_bytes()).unwrap()
        );
        // A crash while the certificate was written: the torn pair is dropped, the old stays.
        let (_, k6) = cert(0, 4_000_000_000);
        put(&dir, &format!("{KEY_FILE}.new"), &k6);
        put(&dir, &format!("{CERT_FILE}.new"), &c5[..c5.len() / 2]);
        assert_eq!(
            load(&dir).unwrap().info,
            CertInfo::from_pem(c5.as_bytes()).unwrap()
        );
        assert!(!pending(&dir.join(KEY_FILE)).exists() && !pending(&dir.join(CERT_FILE)).exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
