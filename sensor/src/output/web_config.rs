//! `--web-config FILE`: TLS and basic authentication for the metrics endpoint, from a file
//! in the web configuration format of node_exporter and Prometheus (prometheus/
//! exporter-toolkit), so that the files, tools (`htpasswd -B`, `promtool check
//! web-config`) and habits of every other exporter on the host serve this one too.
//!
//! Supported: `tls_server_config` (`cert_file`, `key_file`, `client_auth_type`,
//! `client_ca_file`, `min_version`, `max_version`) and `basic_auth_users` (bcrypt hashes).
//! Any other key is refused by name, never ignored: an endpoint less protected than its
//! file says would be worse than a start that fails. Relative paths are taken from the
//! file's own directory, as exporter-toolkit does.
//!
//! The certificate and key are read again when either file changes (checked at each TLS
//! handshake: a scrape every few seconds at most), so cert-manager or an ACME client can
//! rotate them without a restart; a pair that does not load is logged and the previous
//! one kept. The client CA and the users are read at start.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
    RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use serde::Deserialize;
use tracing::warn;

/// The file as written. Field names are exporter-toolkit's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    #[serde(default)]
    tls_server_config: Option<TlsServerConfig>,
    /// User name to bcrypt hash (`htpasswd -nBC 10 USER`).
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuthType,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<TlsVersion>,
    #[serde(default)]
    max_version: Option<TlsVersion>,
}

/// exporter-toolkit's names (Go's `tls.ClientAuthType`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ClientAuthType {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
    /// Accept any certificate without verifying it: refused (it proves nothing).
    RequestClientCert,
    /// Likewise.
    RequireAnyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

/// What the endpoint enforces, ready to serve.
pub struct WebSecurity {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub basic_auth: Option<Arc<BasicAuth>>,
}

impl fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSecurity")
            .field("tls", &self.tls.is_some())
            .field("basic_auth_users", &self.basic_auth.as_ref().map(|auth| auth.users.len()))
            .finish()
    }
}

impl WebSecurity {
    /// Plain HTTP, no authentication: the default, on loopback.
    pub fn none() -> Self {
        WebSecurity { tls: None, basic_auth: None }
    }

    /// Read and check the file: every certificate, key and hash it names must load.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|err| anyhow!("{err}"))?
        };
        let tls = file
            .tls_server_config
            .map(|tls| tls_acceptor(tls, base).context("tls_server_config"))
            .transpose()?;
        if tls.is_none() && !file.basic_auth_users.is_empty() {
            warn!(
                "web config: basic_auth_users without tls_server_config: passwords cross in \
                 clear, which is what this sensor reports in others"
            );
        }
        let basic_auth = if file.basic_auth_users.is_empty() {
            None
        } else {
            Some(Arc::new(BasicAuth::new(file.basic_auth_users).context("basic_auth_users")?))
        };
        Ok(WebSecurity { tls, basic_auth })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_acceptor(config: TlsServerConfig, base: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = provider();
    let versions = protocol_versions(config.min_version, config.max_version)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("protocol versions")?;
    let verifier = match (config.client_auth_type, &config.client_ca_file) {
        (ClientAuthType::NoClientCert, None) => WebPkiClientVerifier::no_client_auth(),
        // Whoever wrote a CA meant client certificates to be checked: never drop it.
        (ClientAuthType::NoClientCert, Some(_)) => bail!(
            "client_ca_file is given but client_auth_type is not: set client_auth_type to \
             RequireAndVerifyClientCert (or VerifyClientCertIfGiven), or remove client_ca_file"
        ),
        (ClientAuthType::RequestClientCert | ClientAuthType::RequireAnyClientCert, _) => bail!(
            "client_auth_type {:?} accepts client certificates without verifying them, which \
             proves nothing: use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with \
             client_ca_file",
            config.client_auth_type
        ),
        (_, None) => bail!(
            "client_auth_type {:?} needs client_ca_file (the CA that signs the scrapers' \
             certificates)",
            config.client_auth_type
        ),
        (auth, Some(ca_file)) => {
            let roots = client_roots(&base.join(ca_file))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let verifier = if auth == ClientAuthType::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            verifier.build().context("client_ca_file")?
        }
    };
    let files =
        CertificateFiles::load(base.join(config.cert_file), base.join(config.key_file), provider)?;
    let mut server =
        builder.with_client_cert_verifier(verifier).with_cert_resolver(Arc::new(files));
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// rustls speaks TLS 1.2 and 1.3 only: a minimum below 1.2 still means 1.2 (stricter than
/// asked, said in the log).
fn protocol_versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> anyhow::Result<Vec<&'static SupportedProtocolVersion>> {
    // exporter-toolkit's default minimum is TLS 1.2.
    let min = min.unwrap_or(TlsVersion::TLS12);
    let max = max.unwrap_or(TlsVersion::TLS13);
    if min > max {
        bail!("min_version {min:?} is above max_version {max:?}");
    }
    if min < TlsVersion::TLS12 {
        warn!(?min, "web config: TLS below 1.2 is not offered; the minimum is TLS12");
    }
    let versions: Vec<_> = [
        (TlsVersion::TLS12, &rustls::version::TLS12),
        (TlsVersion::TLS13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (min..=max).contains(version))
    .map(|(_, supported)| supported)
    .collect();
    if versions.is_empty() {
        bail!("max_version {max:?}: the endpoint offers TLS12 and TLS13 only");
    }
    Ok(versions)
}

fn client_roots(ca_file: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca_file).context("client_ca_file")? {
        roots.add(cert).with_context(|| format!("client_ca_file {}", ca_file.display()))?;
    }
    Ok(Arc::new(roots))
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// The served certificate, read again when its files change.
#[derive(Debug)]
struct CertificateFiles {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// What the certificate and key files were when last read.
    stamp: (Option<FileStamp>, Option<FileStamp>),
    key: Arc<CertifiedKey>,
    /// When a pair that did not load was last reported.
    warned: Option<Instant>,
}

/// A file's identity and modification: a new file renamed into place (cert-manager,
/// ACME clients), or one rewritten in place, even with its old time kept (`cp -p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: SystemTime,
}

impl CertificateFiles {
    fn load(
        cert_file: PathBuf,
        key_file: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> anyhow::Result<Self> {
        let stamp = (stamp(&cert_file), stamp(&key_file));
        let key = certified_key(&cert_file, &key_file, &provider)?;
        Ok(CertificateFiles {
            cert_file,
            key_file,
            provider,
            current: Mutex::new(Loaded { stamp, key, warned: None }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let stamp = (stamp(&self.cert_file), stamp(&self.key_file));
        if stamp != loaded.stamp {
            match certified_key(&self.cert_file, &self.key_file, &self.provider) {
                Ok(key) => {
                    loaded.key = key;
                    loaded.stamp = stamp;
                }
                // Not stamped: tried again at the next handshake (a pair caught half
                // written is read whole later); said at most once a minute.
                Err(err) => {
                    let now = Instant::now();
                    if loaded.warned.is_none_or(|at| now.duration_since(at) >= RELOAD_WARN_EVERY) {
                        warn!("web config: keeping the previous certificate: {err:#}");
                        loaded.warned = Some(now);
                    }
                }
            }
        }
        loaded.key.clone()
    }
}

/// How often a certificate pair that does not load is reported.
const RELOAD_WARN_EVERY: Duration = Duration::from_secs(60);

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp { inode: meta.ino(), len: meta.len(), modified: meta.modified().ok()? })
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = read_certificates(cert_file).context("cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
        format!("key_file: no PEM private key read from {}", key_file.display())
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!("key_file {} does not match cert_file {}", key_file.display(), cert_file.display())
    })?;
    Ok(Arc::new(key))
}

/// `basic_auth_users`: bcrypt hashes, checked like exporter-toolkit checks them.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Credentials verified before (a digest, never the password): bcrypt costs tens of
    /// milliseconds by design, which a scrape every few seconds should not pay each time.
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// Held while bcrypt runs.
static BCRYPT: Mutex<()> = Mutex::new(());

/// Verified credentials remembered at most; the set starts over when full.
const VERIFIED_CACHE: usize = 64;

/// Checked when the user is unknown, so that a wrong user name takes as long as a wrong
/// password (no user enumeration by timing). bcrypt of an unguessable password, cost 10.
const DUMMY_HASH: &str = "$2b$10$vK7n.oIISTA6IrMjMzx7f.6ITHp0oTgG8QRSX9YvBDRcruGPfj3SK";

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> anyhow::Result<Self> {
        for (user, hash) in &users {
            hash.parse::<bcrypt::HashParts>()
                // Not the parser's message: it quotes the value, which may be a password.
                .map_err(|_| {
                    anyhow!("{user}: not a bcrypt hash; make one with `htpasswd -nBC 10 {user}`")
                })?;
        }
        Ok(BasicAuth { users, verified: Mutex::new(HashSet::new()) })
    }

    /// Whether an `Authorization` header value names a user with the right password. Runs
    /// bcrypt (tens of milliseconds) unless these credentials were verified before: call
    /// from a blocking thread.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let digest = credentials_digest(&user, &password);
        let mut verified = self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if verified.contains(&digest) {
            return true;
        }
        drop(verified);
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        // Always one bcrypt, known user or not; one at a time (as exporter-toolkit does), so
        // that wrong passwords sent in parallel cost one core at most, never the agent's.
        let ok = {
            let _one_at_a_time = BCRYPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            bcrypt::verify(&password, hash).unwrap_or(false) && known
        };
        if ok {
            verified = self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if verified.len() >= VERIFIED_CACHE {
                verified.clear();
            }
            verified.insert(digest);
        }
        ok
    }
}

/// `Basic base64(user:password)` split at the first colon.
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    // The scheme is case-insensitive (RFC 7617).
    let (scheme, encoded) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn credentials_digest(user: &str, password: &str) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(user.as_bytes());
    context.update(&[0]);
    context.update(password.as_bytes());
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

#[cfg(test)]
mod tests;
