//! TLS for Berth's own connections, on one provider (ring) for the whole tree, and the private
//! files keys and credentials are kept in: the server's and
//! router's identities from PEM files, the CA and server certificate a server makes for itself
//! at first start, and what clients (CLI, agents, routers) trust: a CA file, or, for an agent's
//! first join, a CA named by its SHA-256 fingerprint, as `kubeadm join` pins one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use tokio_rustls::rustls::ClientConfig;

/// Files of a server's own TLS identity, under `<data-dir>/tls/`.
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const CERT_FILE: &str = "server.pem";
const KEY_FILE: &str = "server.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("certificate {0}: {1}")]
    Certificate(PathBuf, String),
    #[error("key {0}: {1}")]
    Key(PathBuf, String),
    #[error("certificate {0}: no certificate in it")]
    NoCertificate(PathBuf),
    #[error("{0} and {1} do not make a server identity: {2}")]
    Identity(PathBuf, PathBuf, String),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("`{0}` is not a CA fingerprint: expected sha256:HEX (64 hex digits), as the server prints it")]
    Fingerprint(String),
    #[error("{0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file, in order.
pub fn certs_from_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// An acceptor for the chain and key in PEM files, offering HTTP/2 and HTTP/1.1.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = certs_from_pem(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key(key.to_path_buf(), e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| TlsError::Identity(cert.to_path_buf(), key.to_path_buf(), e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `sha256:HEX` of a certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    format!("sha256:{}", hex(digest.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A server's own identity: where its chain and key are, and its CA.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA's certificate, PEM: handed to agents and routers when they join.
    pub ca_pem: String,
    pub ca_fingerprint: String,
    /// Made now, rather than found from an earlier start.
    pub made: bool,
}

/// The CA and server certificate under `dir` (`<data-dir>/tls`), made at first start: a CA of
/// this server's own, and a server certificate it signs for `names` (DNS names or IP
/// addresses). The chain file holds the server certificate, then the CA's.
pub fn own_identity(dir: &Path, names: &[String]) -> Result<Identity, TlsError> {
    let path = |name: &str| dir.join(name);
    let made = !path(CERT_FILE).exists();
    if made {
        make_identity(dir, names)?;
    }
    let ca = certs_from_pem(&path(CA_FILE))?;
    let ca_pem = std::fs::read_to_string(path(CA_FILE)).map_err(|e| TlsError::Io(path(CA_FILE), e))?;
    Ok(Identity { cert: path(CERT_FILE), key: path(KEY_FILE), ca_fingerprint: fingerprint(&ca[0]), ca_pem, made })
}

fn generate(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// A CA's certificate settings, named after its key: the same key always makes the same name,
/// so a CA kept as its key alone signs as the certificate it first made.
fn ca_params(ca_key: &rcgen::KeyPair) -> Result<rcgen::CertificateParams, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    // Named apart from every other cluster's CA: a server of another cluster is then an
    // unknown issuer, not a bad signature under a name that matches.
    let id = ring::digest::digest(&ring::digest::SHA256, ca_key.public_key_raw());
    ca_params.distinguished_name.push(DnType::CommonName, format!("Berth CA {}", &hex(id.as_ref())[..12]));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    Ok(ca_params)
}

fn make_identity(dir: &Path, names: &[String]) -> Result<(), TlsError> {
    let ca_key = rcgen::KeyPair::generate().map_err(generate)?;
    let ca = ca_params(&ca_key)?.self_signed(&ca_key).map_err(generate)?;
    let ca_key_pem = ca_key.serialize_pem();
    sign_server(dir, names, &ca.pem(), &ca_key_pem)
}

/// A server key and certificate for `names`, signed by the CA of `ca_pem` and `ca_key_pem`, and
/// every file of the identity written under `dir`.
fn sign_server(dir: &Path, names: &[String], ca_pem: &str, ca_key_pem: &str) -> Result<(), TlsError> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(generate)?;
    let issuer = rcgen::Issuer::new(ca_params(&ca_key)?, ca_key);
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(generate)?;
    params.distinguished_name.push(DnType::CommonName, "Berth server");
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;

    std::fs::create_dir_all(dir).map_err(|e| TlsError::Io(dir.to_path_buf(), e))?;
    // Keys first, the chain last: a crash before the chain is written makes them again.
    write_key(&dir.join(CA_KEY_FILE), &issuer_key_pem(&issuer))?;
    write_key(&dir.join(KEY_FILE), &key.serialize_pem())?;
    write_key(&dir.join(CA_FILE), ca_pem)?;
    write_key(&dir.join(CERT_FILE), &format!("{}{ca_pem}", cert.pem()))?;
    Ok(())
}

/// A CA as PEM: its certificate and its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaFiles(<key hidden>)")
    }
}

/// The CA a server made under `dir` (`own_identity`).
pub fn read_ca(dir: &Path) -> Result<CaFiles, TlsError> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| TlsError::Io(dir.join(name), e));
    Ok(CaFiles { cert_pem: read(CA_FILE)?, key_pem: read(CA_KEY_FILE)? })
}

/// As `own_identity`, under a CA given rather than made: servers sharing a store share one CA,
/// so that whoever trusts one trusts them all. The server certificate is made again when the CA
/// under `dir` is another.
pub fn identity_under(dir: &Path, names: &[String], ca: &CaFiles) -> Result<Identity, TlsError> {
    let kept = std::fs::read_to_string(dir.join(CA_FILE)).ok();
    let made = kept.as_deref() != Some(ca.cert_pem.as_str()) || !dir.join(CERT_FILE).exists();
    if made {
        sign_server(dir, names, &ca.cert_pem, &ca.key_pem)?;
    }
    let identity = own_identity(dir, names)?;
    Ok(Identity { made, ..identity })
}

fn issuer_key_pem(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> String {
    issuer.key().serialize_pem()
}

/// Writes a private file (a key, a token, a credential): readable by its owner only (0600),
/// written aside then renamed, so that a crash leaves the old file or the new, never half.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn write_key(path: &Path, text: &str) -> Result<(), TlsError> {
    write_private(path, text).map_err(|e| TlsError::Io(path.to_path_buf(), e))
}

/// What a client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// No CA: plain HTTP only (an https server is refused, saying how to trust it).
    Nothing,
    /// The CA certificates, PEM.
    Ca(String),
    /// The CA whose certificate has this SHA-256 (`sha256:HEX`), as the server sends it in its
    /// chain: for a first join, before the CA itself is kept.
    Pinned(String),
}

impl Trust {
    /// `sha256:HEX` checked.
    pub fn pinned(text: &str) -> Result<Trust, TlsError> {
        let hex = text.trim().strip_prefix("sha256:").unwrap_or(text.trim()).to_ascii_lowercase();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TlsError::Fingerprint(text.to_string()));
        }
        Ok(Trust::Pinned(format!("sha256:{hex}")))
    }

    /// The CA in the PEM file at `path`.
    pub fn ca_file(path: &Path) -> Result<Trust, TlsError> {
        let pem = std::fs::read_to_string(path).map_err(|e| TlsError::Io(path.to_path_buf(), e))?;
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate(path.to_path_buf(), e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate(path.to_path_buf()));
        }
        Ok(Trust::Ca(pem))
    }
}

/// A client configuration trusting `trust`, and nothing else (no system roots: Berth's servers
/// have Berth's CAs).
pub fn client_config(trust: &Trust) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = match trust {
        Trust::Nothing => builder.with_root_certificates(RootCertStore::empty()).with_no_client_auth(),
        Trust::Ca(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::Certificate(PathBuf::from("CA"), e.to_string()))?;
                roots.add(cert).map_err(|e| TlsError::Certificate(PathBuf::from("CA"), e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoCertificate(PathBuf::from("CA")));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa { fingerprint: fp.clone(), provider: provider() }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// An HTTP client builder trusting `trust` for https:// URLs. Every reqwest client in the tree
/// is built here: reqwest runs on ring without a process-wide provider, and a client built
/// without a configuration of its own would find none.
pub fn http_builder_trusting(trust: &Trust) -> Result<reqwest::ClientBuilder, TlsError> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(client_config(trust)?))
}

/// A builder of plain-HTTP clients (an https:// URL is refused: nothing is trusted).
pub fn http_builder() -> reqwest::ClientBuilder {
    // An empty trust makes a configuration without reading anything: it cannot fail.
    reqwest::Client::builder().tls_backend_preconfigured(
        client_config(&Trust::Nothing).unwrap_or_else(|e| unreachable!("a configuration trusting nothing: {e}")),
    )
}

/// A plain-HTTP client with reqwest's defaults.
pub fn http() -> reqwest::Client {
    http_builder().build().unwrap_or_else(|e| unreachable!("a default client: {e}"))
}

/// Trusts a server whose chain holds the CA of the pinned fingerprint and whose certificate
/// that CA signed for the name dialled: the usual checks, with that one CA as the root.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == self.fingerprint) else {
            let sent: Vec<String> = intermediates.iter().map(fingerprint).collect();
            return Err(rustls::Error::General(format!(
                "the server's CA is not the one pinned ({}); it sent {}",
                self.fingerprint,
                if sent.is_empty() { "no CA".to_string() } else { sent.join(", ") }
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake with a server of `identity` on loopback, trusting `trust`, dialling `name`.
    async fn handshake(identity: &Identity, trust: &Trust, name: &str) -> Result<(), String> {
        let acceptor = acceptor(&identity.cert, &identity.key).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(stream).await;
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(trust).map_err(|e| e.to_string())?));
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        let result = connector.connect(name, stream).await.map(|_| ()).map_err(|e| e.to_string());
        server.abort();
        result
    }

    #[tokio::test]
    async fn a_made_identity_is_trusted_by_its_ca_or_its_pin_and_by_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let identity = own_identity(dir.path(), &names).unwrap();
        assert!(identity.made);
        use std::os::unix::fs::PermissionsExt;
        for file in [CA_KEY_FILE, KEY_FILE] {
            let mode = std::fs::metadata(dir.path().join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let again = own_identity(dir.path(), &names).unwrap();
        assert!(!again.made);
        assert_eq!(again.ca_fingerprint, identity.ca_fingerprint, "made once, kept");

        let ca = Trust::Ca(identity.ca_pem.clone());
        handshake(&identity, &ca, "127.0.0.1").await.unwrap();
        handshake(&identity, &ca, "localhost").await.unwrap();
        let pinned = Trust::pinned(&identity.ca_fingerprint).unwrap();
        handshake(&identity, &pinned, "127.0.0.1").await.unwrap();

        let wrong_name = handshake(&identity, &ca, "elsewhere.example").await.unwrap_err();
        assert!(wrong_name.contains("NotValidForName") || wrong_name.contains("not valid"), "{wrong_name}");
        let other = tempfile::tempdir().unwrap();
        let other = own_identity(other.path(), &names).unwrap();
        let wrong_pin = handshake(&identity, &Trust::pinned(&other.ca_fingerprint).unwrap(), "127.0.0.1").await;
        assert!(wrong_pin.unwrap_err().contains("not the one pinned"));
        let wrong_ca = handshake(&identity, &Trust::Ca(other.ca_pem.clone()), "127.0.0.1").await.unwrap_err();
        assert!(wrong_ca.contains("UnknownIssuer") || wrong_ca.contains("unknown issuer"), "{wrong_ca}");
        assert!(handshake(&identity, &Trust::Nothing, "127.0.0.1").await.is_err());
    }

    #[tokio::test]
    async fn a_server_under_another_servers_ca_is_trusted_by_that_ca_and_its_pin() {
        let names = vec!["127.0.0.1".to_string()];
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let made = own_identity(first.path(), &names).unwrap();
        // The second server had a CA of its own; it takes the first's.
        own_identity(second.path(), &names).unwrap();
        let shared = read_ca(first.path()).unwrap();
        let under = identity_under(second.path(), &names, &shared).unwrap();
        assert!(under.made, "a new certificate under the new CA");
        assert_eq!(under.ca_fingerprint, made.ca_fingerprint);
        assert!(!identity_under(second.path(), &names, &shared).unwrap().made, "kept after");
        handshake(&under, &Trust::Ca(made.ca_pem.clone()), "127.0.0.1").await.unwrap();
        handshake(&under, &Trust::pinned(&made.ca_fingerprint).unwrap(), "127.0.0.1").await.unwrap();
        handshake(&made, &Trust::Ca(under.ca_pem.clone()), "127.0.0.1").await.unwrap();
    }

    #[test]
    fn a_pin_is_sha256_hex() {
        assert!(Trust::pinned("sha256:zz").is_err());
        let hex = "AB".repeat(32);
        assert_eq!(Trust::pinned(&hex).unwrap(), Trust::Pinned(format!("sha256:{}", hex.to_lowercase())));
    }
}
