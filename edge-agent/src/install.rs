//! `edge-agent install`: from a bare box to an enrolled, configured agent in one command.
//!
//! The token (from `central-hub enroll-token SITE`) carries the hub CA's fingerprint; every
//! connection to the hub before enrollment trusts only a certificate chaining to that CA
//! ([`PinnedCa`]). Before the token is spent the installer checks what would make the
//! installation useless anyway: disk space, the hub's reachability over HTTPS, this box's
//! clock against the hub's, and UDP to the hub's QUIC port. Then it makes a key pair here
//! (the private key never leaves the box), has the hub sign a certificate for it, writes the
//! configuration, the TLS files (the key with mode 0600), the data directory and a hardened
//! systemd unit, proves a sync session with the new certificate, and starts the service when
//! systemd runs it. Re-running is safe: an installation with a valid certificate from the
//! same CA keeps it and does not spend the token again.
//!
//! Every failure is an [`InstallError`] whose message says what to do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sync_protocol::enroll::{
    EnrollInfo, EnrollRequest, EnrollResponse, EnrollToken, PATH, TokenFormatError, codes, hex,
};

/// Largest clock difference to the hub accepted at install time.
pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(300);
/// Free space the installer asks for by default.
pub const MIN_FREE_BYTES_DEFAULT: u64 = 1 << 30;
/// How long the HTTPS calls and the QUIC checks may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
pub const QUIC_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// A certificate closer to its end than this is renewed by a re-run (and flagged by doctor).
pub const CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// The systemd unit's name.
pub const UNIT: &str = "mes-edge.service";
/// The service's own user.
pub const SERVICE_USER: &str = "mes-edge";

#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// `host:port` of the hub's HTTPS enrollment endpoint (`https://` is accepted too).
    pub hub: String,
    pub token: String,
    /// Root of the installation: `/` on a real box, a directory in tests.
    pub prefix: PathBuf,
    pub http_listen: SocketAddr,
    /// Where QUIC sync goes, when not the hub's host and advertised port (NAT, a proxy).
    pub hub_quic: Option<String>,
    pub min_free_bytes: u64,
    /// Added to this box's clock (a test hook for clock skew; `EDGE_CLOCK_SKEW_SECS`).
    pub clock_offset_micros: i64,
    /// Start the service when systemd is there (only with prefix `/`).
    pub start_service: bool,
}

/// Where everything goes under the prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    pub prefix: PathBuf,
}

impl Layout {
    fn under(&self, path: &str) -> PathBuf {
        self.prefix.join(path.trim_start_matches('/'))
    }
    pub fn config_dir(&self) -> PathBuf {
        self.under("etc/mes-edge")
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join("edge.toml")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.config_dir().join("tls")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.under("var/lib/mes-edge")
    }
    pub fn unit_file(&self) -> PathBuf {
        self.under("etc/systemd/system").join(UNIT)
    }
    pub fn binary(&self) -> PathBuf {
        self.under("usr/local/bin/edge-agent")
    }
}

#[derive(Debug, Clone)]
pub struct Installed {
    pub site: String,
    pub layout: Layout,
    /// False when a valid earlier enrollment was kept.
    pub enrolled_now: bool,
    pub started: bool,
    /// How to start it, when the installer did not.
    pub start_hint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Token(#[from] TokenFormatError),
    #[error(
        "cannot reach the hub at https://{hub}/ ({reason}): check the address (the hub's enrollment endpoint, host:8443 by default), DNS, and that TCP port {port} is open from this network"
    )]
    Unreachable {
        hub: String,
        port: String,
        reason: String,
    },
    #[error(
        "the server at {hub} is not the hub this token was made for: its certificate does not chain to the CA fingerprint in the token. Check the address; if it is right, something is intercepting the connection"
    )]
    PinMismatch { hub: String },
    #[error(
        "this box's clock is {secs} s {direction} the hub's (at most {max} s is accepted): certificates and event times depend on it. Set the time (e.g. `timedatectl set-ntp true`) and run install again; the token was not used"
    )]
    ClockSkew {
        secs: i64,
        direction: &'static str,
        max: u64,
    },
    #[error(
        "HTTPS to the hub works, but QUIC sync to {address} (UDP) gets no answer: open UDP port {port} outbound to the hub in every firewall and NAT on the way, then run install again; the token was not used"
    )]
    UdpBlocked { address: String, port: String },
    #[error("the hub refused the token: {message}")]
    TokenRefused { code: String, message: String },
    #[error("{message}")]
    Revoked { message: String },
    #[error(
        "only {free_mb} MB are free in {dir}; the agent needs at least {need_mb} MB, since its store grows while the hub is unreachable. Free some space or install with --prefix on a larger disk"
    )]
    NoSpace {
        dir: String,
        free_mb: u64,
        need_mb: u64,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: String, message: String },
    #[error("the hub answered something unexpected: {0}")]
    Protocol(String),
    #[error(
        "enrolled, but a sync session with the new certificate failed: {0}. Run `edge-agent doctor` for details"
    )]
    SyncCheck(crate::sync::ProbeError),
}

/// Trusts a server certificate only if it chains to a CA certificate, sent in the chain,
/// whose SHA-256 is the pinned fingerprint. The token carries the fingerprint, so no CA file
/// has to be copied to the box beforehand.
#[derive(Debug)]
pub struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// The message a pin mismatch carries, to tell it apart from other TLS failures.
const PIN_MISMATCH: &str = "certificate does not chain to the pinned CA";

impl PinnedCa {
    pub fn new(fingerprint: [u8; 32]) -> Self {
        Self {
            fingerprint,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    fn client_config(self) -> Result<rustls::ClientConfig, InstallError> {
        let provider = self.provider.clone();
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| InstallError::Protocol(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self))
            .with_no_client_auth();
        c.enable_early_data = false;
        Ok(c)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The TLS 1.2 and 1.3 handshake-signature checks of a `ServerCertVerifier`: each is the
/// same-named `rustls::crypto` function over the provider's algorithms.
macro_rules! verify_signatures_with_provider {
    ($($name:ident),+) => {$(
        fn $name(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::$name(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }
    )+};
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256(c.as_ref()) == self.fingerprint)
            .ok_or_else(|| rustls::Error::General(PIN_MISMATCH.into()))?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    verify_signatures_with_provider!(verify_tls12_signature, verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `host:port` without a scheme or path.
fn hub_address(hub: &str) -> String {
    let h = hub.trim();
    let h = h.strip_prefix("https://").unwrap_or(h);
    h.trim_end_matches('/').to_owned()
}

fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
}

fn port_of(address: &str) -> String {
    address
        .rsplit_once(':')
        .map_or("443", |(_, p)| p)
        .to_owned()
}

/// This box's clock, shifted by `offset` (the clock-skew test hook).
pub(crate) fn now_micros(offset: i64) -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        + offset
}

/// Free bytes for unprivileged users on the file system holding `dir` (or its nearest
/// existing ancestor).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        if !d.pop() {
            break;
        }
    }
    let s = rustix::fs::statvfs(&d).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

fn write_err(path: &Path, e: &std::io::Error) -> InstallError {
    let message = if e.kind() == std::io::ErrorKind::StorageFull {
        "the disk is full: free some space and run install again".to_owned()
    } else if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!("{e}: run install as root, or with --prefix in a directory you may write")
    } else {
        e.to_string()
    };
    InstallError::Write {
        path: path.display().to_string(),
        message,
    }
}

/// Writes a file atomically (temporary file, fsync, rename) with the given mode.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, &e))?;
    let tmp = path.with_extension("tmp-install");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new();
        f.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            f.mode(mode);
        }
        let mut f = f.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        // Best effort: the write error is the one to report; the next attempt replaces a
        // leftover temporary file.
        let _ = std::fs::remove_file(&tmp);
        write_err(path, &e)
    })
}

fn make_dir(path: &Path, mode: u32) -> Result<(), InstallError> {
    std::fs::create_dir_all(path).map_err(|e| write_err(path, &e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| write_err(path, &e))?;
    }
    Ok(())
}

/// A certificate's subject common name and end of validity (seconds since the epoch).
pub fn certificate_facts(pem: &[u8]) -> Option<(String, i64, i64)> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some((
        cn,
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// An earlier enrollment worth keeping: certificate, key and CA present, the CA the token's,
/// and the certificate valid for a while yet. Returns the site.
fn existing_enrollment(layout: &Layout, token: &EnrollToken, now_secs: i64) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let tls = layout.tls_dir();
    let ca = std::fs::read(tls.join("ca.crt.pem")).ok()?;
    let ca_der = CertificateDer::from_pem_slice(&ca).ok()?;
    if sha256(ca_der.as_ref()) != token.ca_fingerprint || !tls.join("client.key.pem").exists() {
        return None;
    }
    let (site, _, not_after) = certificate_facts(&std::fs::read(tls.join("client.crt.pem")).ok()?)?;
    (not_after - now_secs > CERT_RENEW_BEFORE.as_secs() as i64).then_some(site)
}

/// The hardened unit: its own user, restart on failure, a read-only system apart from the
/// data directory and the TLS directory (the running agent renews its certificate there), no
/// privileges to gain.
pub fn systemd_unit(layout: &Layout) -> String {
    format!(
        "[Unit]
Description=MES edge agent (offline-first store and sync to the hub)
Documentation=https://github.com/mes-sync/mes/blob/main/docs/install.md
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={SERVICE_USER}
Group={SERVICE_USER}
ExecStart={bin} run --config {config}
Restart=on-failure
RestartSec=5
TimeoutStopSec=30
LimitNOFILE=65536
ReadWritePaths={data} {tls}
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0027

[Install]
WantedBy=multi-user.target
",
        bin = layout.binary().display(),
        config = layout.config_file().display(),
        data = layout.data_dir().display(),
        tls = layout.tls_dir().display(),
    )
}

fn config_toml(layout: &Layout, site: &str, http_listen: SocketAddr, quic: &str) -> String {
    let q = |p: &Path| toml_string(&p.display().to_string());
    format!(
        "# Written by `edge-agent install`; re-running install rewrites it.\n\
         site = {}\ndata_dir = {}\ntls_dir = {}\nhttp_listen = {}\nhub = {}\n",
        toml_string(site),
        q(&layout.data_dir()),
        q(&layout.tls_dir()),
        toml_string(&http_listen.to_string()),
        toml_string(quic),
    )
}

fn toml_string(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

async fn http_client(token: &EnrollToken) -> Result<reqwest::Client, InstallError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(PinnedCa::new(token.ca_fingerprint).client_config()?)
        .connect_timeout(Duration::from_secs(5))
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| InstallError::Protocol(format!("HTTP client: {e}")))
}

fn request_error(hub: &str, e: &reqwest::Error) -> InstallError {
    // The pin's own message survives in the error chain.
    let mut chain = format!("{e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    if chain.contains(PIN_MISMATCH) {
        return InstallError::PinMismatch {
            hub: hub.to_owned(),
        };
    }
    let reason = if e.is_timeout() {
        "no answer in time".to_owned()
    } else if chain.contains("Connection refused") {
        "connection refused".to_owned()
    } else {
        chain
    };
    InstallError::Unreachable {
        hub: hub.to_owned(),
        port: port_of(hub),
        reason,
    }
}

/// A QUIC handshake without a client certificate: the hub refuses it, but any answer at all
/// proves UDP gets through; only silence means it does not.
async fn udp_reaches(address: &str, token: &EnrollToken) -> Result<(), InstallError> {
    let blocked = || InstallError::UdpBlocked {
        address: address.to_owned(),
        port: port_of(address),
    };
    let mut tls = PinnedCa::new(token.ca_fingerprint).client_config()?;
    tls.alpn_protocols = vec![sync_protocol::ALPN_V1.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| InstallError::Protocol(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(QUIC_CHECK_TIMEOUT.try_into().ok());
    config.transport_config(Arc::new(transport));
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| InstallError::Protocol(e.to_string()))?;
    endpoint.set_default_client_config(config);
    let addr = tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| InstallError::Unreachable {
            hub: address.to_owned(),
            port: port_of(address),
            reason: "the name does not resolve".into(),
        })?;
    let connecting = endpoint
        .connect(addr, host_of(address))
        .map_err(|e| InstallError::Protocol(e.to_string()))?;
    let outcome = tokio::time::timeout(QUIC_CHECK_TIMEOUT + Duration::from_secs(1), async {
        match connecting.await {
            // Accepted so far: wait for the hub to close it (it requires a certificate).
            Ok(conn) => {
                // Either outcome proves the hub's QUIC port answers; the wait only lets the
                // hub close first.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                Ok(())
            }
            Err(quinn::ConnectionError::TimedOut) => Err(blocked()),
            Err(_) => Ok(()),
        }
    })
    .await;
    endpoint.close(0u32.into(), b"");
    match outcome {
        Ok(r) => r,
        Err(_) => Err(blocked()),
    }
}

/// Runs the installation; `progress(step, total, what)` is called as each step starts.
pub async fn install(
    opts: &InstallOptions,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Installed, InstallError> {
    const STEPS: usize = 9;
    let layout = Layout {
        prefix: opts.prefix.clone(),
    };
    let hub = hub_address(&opts.hub);

    progress(1, STEPS, "Reading the token");
    let token = EnrollToken::parse(&opts.token)?;

    progress(2, STEPS, "Checking free disk space");
    let free = free_bytes(&layout.data_dir()).map_err(|e| write_err(&layout.prefix, &e))?;
    if free < opts.min_free_bytes {
        return Err(InstallError::NoSpace {
            dir: layout.data_dir().display().to_string(),
            free_mb: free >> 20,
            need_mb: opts.min_free_bytes >> 20,
        });
    }

    progress(3, STEPS, &format!("Contacting the hub at https://{hub}"));
    let http = http_client(&token).await?;
    let url = format!("https://{hub}{PATH}");
    let info: EnrollInfo = http
        .get(&url)
        .send()
        .await
        .map_err(|e| request_error(&hub, &e))?
        .json()
        .await
        .map_err(|e| InstallError::Protocol(e.to_string()))?;

    progress(4, STEPS, "Comparing this box's clock with the hub's");
    let skew = (now_micros(opts.clock_offset_micros) - info.hub_time_micros) / 1_000_000;
    if skew.unsigned_abs() > CLOCK_SKEW_MAX.as_secs() {
        return Err(InstallError::ClockSkew {
            secs: skew.abs(),
            direction: if skew > 0 { "ahead of" } else { "behind" },
            max: CLOCK_SKEW_MAX.as_secs(),
        });
    }

    let quic = opts
        .hub_quic
        .clone()
        .unwrap_or_else(|| format!("{}:{}", host_of(&hub), info.quic_port));
    progress(
        5,
        STEPS,
        &format!("Checking UDP to the hub's sync port {quic}"),
    );
    udp_reaches(&quic, &token).await?;

    progress(6, STEPS, "Enrolling this box");
    let now_secs = now_micros(opts.clock_offset_micros) / 1_000_000;
    let (site, enrolled_now) = match existing_enrollment(&layout, &token, now_secs) {
        Some(site) => (site, false),
        None => (enroll(opts, &layout, &http, &url, &token).await?, true),
    };

    progress(7, STEPS, "Writing the configuration and the service");
    make_dir(&layout.data_dir(), 0o750)?;
    write_file(
        &layout.config_file(),
        config_toml(&layout, &site, opts.http_listen, &quic).as_bytes(),
        0o640,
    )?;
    write_file(&layout.unit_file(), systemd_unit(&layout).as_bytes(), 0o644)?;
    if let Ok(me) = std::env::current_exe()
        && me != layout.binary()
    {
        let bytes = std::fs::read(&me).map_err(|e| write_err(&me, &e))?;
        write_file(&layout.binary(), &bytes, 0o755)?;
    }

    progress(8, STEPS, "Proving a sync session with the new certificate");
    let probe = crate::sync::probe(&layout.tls_dir(), &quic, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            crate::sync::ProbeError::Refused { message, .. } if message.contains("revoked") => {
                InstallError::Revoked {
                    message: format!(
                        "site {site} is revoked at the hub ({message}): HQ must re-admit it"
                    ),
                }
            }
            other => InstallError::SyncCheck(other),
        })?;
    if probe.site_id.as_str() != site {
        return Err(InstallError::Protocol(format!(
            "the hub knows this certificate as {}, not {site}",
            probe.site_id
        )));
    }

    progress(9, STEPS, "Starting the service");
    let (started, start_hint) = start_service(opts, &layout);
    Ok(Installed {
        site,
        layout,
        enrolled_now,
        started,
        start_hint,
    })
}

async fn enroll(
    opts: &InstallOptions,
    layout: &Layout,
    http: &reqwest::Client,
    url: &str,
    token: &EnrollToken,
) -> Result<String, InstallError> {
    let key = rcgen::KeyPair::generate().map_err(|e| InstallError::Protocol(e.to_string()))?;
    let params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| InstallError::Protocol(e.to_string()))?;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| InstallError::Protocol(e.to_string()))?;
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let response = http
        .post(url)
        .json(&EnrollRequest {
            secret: token.secret.clone(),
            csr_pem: csr,
            agent: format!("edge-agent {} on {host}", env!("CARGO_PKG_VERSION")),
        })
        .send()
        .await
        .map_err(|e| request_error(&opts.hub, &e))?;
    if !response.status().is_success() {
        let v: serde_json::Value = response.json().await.unwrap_or_default();
        let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or("no reason given")
            .to_owned();
        return Err(if code == codes::SITE_REVOKED {
            InstallError::Revoked { message }
        } else {
            InstallError::TokenRefused { code, message }
        });
    }
    let r: EnrollResponse = response
        .json()
        .await
        .map_err(|e| InstallError::Protocol(e.to_string()))?;
    // The CA the hub sends must be the one the token pinned.
    {
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(r.ca_pem.as_bytes())
            .map_err(|e| InstallError::Protocol(format!("CA certificate: {e}")))?;
        if sha256(der.as_ref()) != token.ca_fingerprint {
            return Err(InstallError::Protocol(format!(
                "the CA certificate sent ({}) is not the token's",
                hex(&sha256(der.as_ref()))
            )));
        }
    }
    let tls = layout.tls_dir();
    make_dir(&tls, 0o750)?;
    write_file(
        &tls.join("client.key.pem"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(
        &tls.join("client.crt.pem"),
        r.certificate_pem.as_bytes(),
        0o644,
    )?;
    write_file(&tls.join("ca.crt.pem"), r.ca_pem.as_bytes(), 0o644)?;
    Ok(r.site_id)
}

/// Starts the unit when this is a real installation on a systemd box run by root; otherwise
/// says how to start the agent.
fn start_service(opts: &InstallOptions, layout: &Layout) -> (bool, String) {
    let manual = format!(
        "{} run --config {}",
        layout.binary().display(),
        layout.config_file().display()
    );
    let systemd = Path::new("/run/systemd/system").exists();
    let root = rustix::process::geteuid().is_root();
    if !opts.start_service || layout.prefix != Path::new("/") || !systemd || !root {
        let why = if layout.prefix != Path::new("/") {
            "installed under a prefix"
        } else if !systemd {
            "systemd is not running here"
        } else if !root {
            "not running as root"
        } else {
            "--no-start"
        };
        return (
            false,
            format!("not started ({why}); start it with: {manual}"),
        );
    }
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let user_exists = run("id", &["-u", SERVICE_USER]);
    if !user_exists {
        run(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
        );
    }
    let data = layout.data_dir().display().to_string();
    let tls = layout.tls_dir().display().to_string();
    run(
        "chown",
        &["-R", &format!("{SERVICE_USER}:{SERVICE_USER}"), &data],
    );
    run(
        "chown",
        &["-R", &format!("{SERVICE_USER}:{SERVICE_USER}"), &tls],
    );
    if run("systemctl", &["daemon-reload"]) && run("systemctl", &["enable", "--now", UNIT]) {
        (
            true,
            format!("running as {UNIT}; `systemctl status {UNIT}`"),
        )
    } else {
        (
            false,
            format!(
                "systemctl could not start {UNIT}; see `journalctl -u {UNIT}`, or run: {manual}"
            ),
        )
    }
}
