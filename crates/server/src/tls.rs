//! TLS termination: rustls with the `ring` provider, TLS 1.3 and 1.2, ALPN
//! `h2` then `http/1.1`. The certificate chain and key are read from PEM
//! files at start and again on [`Tls::reload`] (SIGHUP): a reload that fails
//! keeps the certificate in use, so a half-copied file never takes the
//! service down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::ServeError;

/// Where the certificate chain and its key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The server side of TLS, with the certificate it hands out now.
pub(crate) struct Tls {
    files: TlsFiles,
    current: Arc<Current>,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Load the files and build the acceptor.
    pub fn new(files: &TlsFiles) -> Result<Self, ServeError> {
        let provider = provider();
        let key = load(files, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            files: files.clone(),
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Read the files again; new handshakes use what they hold. On error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<(), ServeError> {
        let key = load(&self.files, &provider())?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(())
    }
}

/// Largest certificate or key file read (a chain is a few KiB).
const MAX_PEM: u64 = 1024 * 1024;

fn read_bounded(path: &Path) -> Result<Vec<u8>, ServeError> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)
        .map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_PEM + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ServeError::Tls(format!("cannot read {}: {e}", path.display())))?;
    if buf.len() as u64 > MAX_PEM {
        return Err(ServeError::Tls(format!(
            "{} is larger than a certificate or key file can be",
            path.display()
        )));
    }
    Ok(buf)
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, ServeError> {
    let cert_pem = read_bounded(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Tls(format!("{}: {e}", files.cert.display())))?;
    if chain.is_empty() {
        return Err(ServeError::Tls(format!(
            "{} holds no PEM certificate",
            files.cert.display()
        )));
    }
    let key_pem = zeroize::Zeroizing::new(read_bounded(&files.key)?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ServeError::Tls(format!(
            "{} holds no usable private key: {e}",
            files.key.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        ServeError::Tls(format!(
            "{} and {} do not make a certificate and its key: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })
}
