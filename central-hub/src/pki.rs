//! The hub's certificate authority: one CA per deployment, created on first use in the state
//! directory. It issues a client certificate per site (the site id is the certificate's
//! common name, the only place the hub takes a site identity from) and the hub's own server
//! certificate.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use shared_model::SiteId;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the client certificate is not readable: {0}")]
    BadCertificate(String),
    #[error("the client certificate's common name {0:?} is not a site id")]
    NotASite(String),
}

const CA_CERT: &str = "ca.crt.pem";
/// How long a site certificate is valid by default; the edge renews it when two thirds of
/// that have passed, and `edge-agent doctor` and the hub's expiry alert warn 30 days before
/// the end.
pub const SITE_CERT_VALIDITY_DAYS: i64 = 365;
/// Shortest site certificate lifetime the CA issues (tests use 10 minutes).
pub const SITE_CERT_VALIDITY_MIN: std::time::Duration = std::time::Duration::from_secs(60);
/// A site certificate is valid from this long before its issue (clocks differ a little), but
/// never more than a tenth of its lifetime, so a short-lived certificate is not mostly past.
pub const SITE_CERT_BACKDATE_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
/// Random bytes of a certificate's serial number (RFC 5280 allows up to 20 octets).
pub const SERIAL_BYTES: usize = 16;
const CA_KEY: &str = "ca.key.pem";

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Lifetime of the site certificates this CA issues.
    site_validity: std::time::Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file readable by its owner only (private keys).
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, contents).map_err(io)
    }
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, contents).map_err(io)
}

impl Ca {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if cert_path.exists() && key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?)?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
            return Ok(Self {
                cert_pem,
                issuer,
                site_validity: default_site_validity(),
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "MES sync CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_private(&key_path, &key.serialize_pem())?;
        write_public(&cert_path, &cert_pem)?;
        Ok(Self {
            cert_pem,
            issuer: Issuer::new(params, key),
            site_validity: default_site_validity(),
        })
    }

    /// Site certificates issued from now on are valid for `validity` (at least
    /// [`SITE_CERT_VALIDITY_MIN`]) instead of [`SITE_CERT_VALIDITY_DAYS`].
    pub fn with_site_validity(mut self, validity: std::time::Duration) -> Self {
        self.site_validity = validity.max(SITE_CERT_VALIDITY_MIN);
        self
    }

    pub fn site_validity(&self) -> std::time::Duration {
        self.site_validity
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate (DER): what an enrollment token pins.
    pub fn fingerprint(&self) -> Result<[u8; 32], PkiError> {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Ok(out)
    }

    /// What a site certificate says, whoever made the key: the site as common name, client
    /// authentication only, a random serial number (the registry's key: rcgen's default is a
    /// hash of the public key, the same for every certificate of one key), valid from a
    /// little before now (at most [`SITE_CERT_BACKDATE_MAX`]: clocks differ) for the CA's site
    /// validity.
    fn site_params(&self, site: &SiteId, params: &mut CertificateParams) -> Result<(), PkiError> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, site.as_str());
        dn.push(DnType::OrganizationalUnitName, "site");
        params.distinguished_name = dn;
        params.subject_alt_names = Vec::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()?));
        let now = time::OffsetDateTime::now_utc();
        let backdate = (self.site_validity / 10).min(SITE_CERT_BACKDATE_MAX);
        params.not_before = now - backdate;
        params.not_after = now + self.site_validity;
        Ok(())
    }

    /// A client certificate whose common name is the site id, with a key made here.
    pub fn issue_site(&self, site: &SiteId) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        self.site_params(site, &mut params)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a site's certificate signing request (the key never left the edge). Whatever
    /// the request asks for, the certificate names the site of the enrollment token and
    /// allows client authentication only.
    pub fn sign_site_csr(&self, site: &SiteId, csr_pem: &str) -> Result<String, PkiError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCertificate(format!("certificate signing request: {e}")))?;
        self.site_params(site, &mut csr.params)?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// The hub's server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mes-hub");
        params.distinguished_name = dn;
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.clone().try_into()?),
                });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes a site's enrollment bundle (`ca.crt.pem`, `client.crt.pem`, `client.key.pem`)
    /// into `dir`, the layout the edge agent reads from its TLS directory, and returns the
    /// certificate (for the registry: `certs::issue_bundle` records it).
    pub fn write_site_bundle(&self, site: &SiteId, dir: &Path) -> Result<Issued, PkiError> {
        let issued = self.issue_site(site)?;
        write_public(&dir.join("ca.crt.pem"), &self.cert_pem)?;
        write_public(&dir.join("client.crt.pem"), &issued.cert_pem)?;
        write_private(&dir.join("client.key.pem"), &issued.key_pem)?;
        Ok(issued)
    }
}

fn default_site_validity() -> std::time::Duration {
    std::time::Duration::from_secs(SITE_CERT_VALIDITY_DAYS as u64 * 86_400)
}

/// A positive, random serial number.
fn random_serial() -> Result<[u8; SERIAL_BYTES], PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; SERIAL_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::BadCertificate("no randomness available for a serial".into()))?;
    // Positive, and not shortened by a leading zero byte (any 15 bytes would do, but a fixed
    // length reads better in `cert list`).
    bytes[0] = (bytes[0] & 0x7f) | 0x10;
    Ok(bytes)
}

/// What the registry keeps of a certificate: its serial (lowercase hex, no leading zeros),
/// SHA-256 fingerprint of the DER, subject common name and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub serial: String,
    pub fingerprint: [u8; 32],
    pub common_name: String,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl CertFacts {
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (cert, common_name) = parse_named(der)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(Self {
            serial: normalize_serial(&sync_protocol::enroll::hex(cert.raw_serial()))
                .ok_or_else(|| PkiError::BadCertificate("empty serial number".into()))?,
            fingerprint,
            common_name,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        Self::from_der(der.as_ref())
    }
}

/// A DER certificate and its subject's (first) common name, which every certificate the hub
/// handles must have.
fn parse_named(
    der: &[u8],
) -> Result<(x509_parser::certificate::X509Certificate<'_>, String), PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or_else(|| PkiError::BadCertificate("no common name".into()))?
        .as_str()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?
        .to_owned();
    Ok((cert, common_name))
}

/// A serial as typed by an operator (`0A:1B:...`, `0x0a1b...`, any case) in the registry's
/// form: lowercase hex without separators or leading zeros. `None` if it is not hex or is
/// longer than RFC 5280's 20 octets.
pub fn normalize_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || hex.len() > 42 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

/// The site a verified client certificate names: its common name, validated as a site id.
pub fn site_from_cert(der: &[u8]) -> Result<SiteId, PkiError> {
    let (_, cn) = parse_named(der)?;
    SiteId::new(cn.clone()).map_err(|_| PkiError::NotASite(cn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_certificates_name_their_site_and_the_ca_persists() {
        let dir = std::env::temp_dir().join(format!("hub-pki-{}", std::process::id()));
        let ca = Ca::load_or_create(&dir).unwrap();
        let site = SiteId::new("SITE_042").unwrap();
        let issued = ca.issue_site(&site).unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
            .unwrap();
        assert_eq!(site_from_cert(&der).unwrap(), site);
        // Loading again gives the same CA, not a new one.
        let again = Ca::load_or_create(&dir).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        // The server certificate is not a site.
        let server = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(server.cert_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
            .unwrap();
        assert!(matches!(site_from_cert(&der), Err(PkiError::NotASite(_))));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn serials_are_random_and_validity_follows_the_ca() {
        let dir = std::env::temp_dir().join(format!("hub-pki-serial-{}", std::process::id()));
        let ca = Ca::load_or_create(&dir)
            .unwrap()
            .with_site_validity(std::time::Duration::from_secs(600));
        let site = SiteId::new("SITE_042").unwrap();
        let a = CertFacts::from_pem(&ca.issue_site(&site).unwrap().cert_pem).unwrap();
        let b = CertFacts::from_pem(&ca.issue_site(&site).unwrap().cert_pem).unwrap();
        assert_ne!(a.serial, b.serial);
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(a.serial.len(), 2 * SERIAL_BYTES, "{}", a.serial);
        assert_eq!(a.common_name, "SITE_042");
        // Ten minutes, backdated by a tenth of that, not by an hour.
        assert_eq!((a.not_after - a.not_before).whole_seconds(), 660);
        // Signing one CSR twice gives two serials: the serial is no hash of the key.
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let c1 = CertFacts::from_pem(&ca.sign_site_csr(&site, &csr).unwrap()).unwrap();
        let c2 = CertFacts::from_pem(&ca.sign_site_csr(&site, &csr).unwrap()).unwrap();
        assert_ne!(c1.serial, c2.serial);
        // A CSR naming another site gets a certificate for the site it is signed for.
        let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "SITE_999");
        other.distinguished_name = dn;
        let csr = other.serialize_request(&key).unwrap().pem().unwrap();
        let c3 = CertFacts::from_pem(&ca.sign_site_csr(&site, &csr).unwrap()).unwrap();
        assert_eq!(c3.common_name, "SITE_042");
        // The default lifetime is a year, backdated an hour.
        let year = Ca::load_or_create(&dir).unwrap();
        let y = CertFacts::from_pem(&year.issue_site(&site).unwrap().cert_pem).unwrap();
        assert_eq!(
            (y.not_after - y.not_before).whole_seconds(),
            SITE_CERT_VALIDITY_DAYS * 86_400 + 3600
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn serials_typed_by_an_operator_are_normalized() {
        assert_eq!(normalize_serial("0A:1b:FF").as_deref(), Some("a1bff"));
        assert_eq!(normalize_serial(" 0x00ab ").as_deref(), Some("ab"));
        assert_eq!(normalize_serial("000").as_deref(), Some("0"));
        for bad in ["", "xyz", "12 34", &"a".repeat(43)] {
            assert_eq!(normalize_serial(bad), None, "{bad:?}");
        }
    }
}
