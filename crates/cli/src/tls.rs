//! What the client trusts: HTTPS through rustls (the `ring` provider), the
//! system's root certificates plus, where a trust runs its own, a private CA
//! (`sitrep enrol --ca FILE`, kept in the sealed profile). Plain `http://` is
//! refused to anything but a loopback address, so a token never crosses a
//! network in clear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context as _, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// TLS settings for one server: HTTP (ALPN h2, then http/1.1) and
/// WebSocket (http/1.1 only: the WebSocket handshake is an HTTP/1.1 upgrade).
#[derive(Clone)]
pub struct Trust {
    pub(crate) http: Arc<rustls::ClientConfig>,
    pub(crate) ws: Arc<rustls::ClientConfig>,
}

/// Largest CA file read.
const MAX_CA_FILE: u64 = 1024 * 1024;

/// Read a CA file (PEM) for `--ca`, checking it holds at least one
/// certificate rustls accepts as a root.
pub fn read_ca(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut text = String::new();
    f.take(MAX_CA_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("{} is not a PEM file", path.display()))?;
    if text.len() as u64 > MAX_CA_FILE {
        bail!("{} is too large for a CA file", path.display());
    }
    roots(Some(&text)).with_context(|| format!("{}", path.display()))?;
    Ok(text)
}

/// The system's roots, read once per process (an empty set if none can be
/// read: then only a private CA is trusted).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() {
            tracing::debug!(errors = found.errors.len(), "some system roots unreadable");
        }
        found.certs
    })
}

fn roots(ca_pem: Option<&str>) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    // Some system bundles hold certificates webpki cannot parse; skip those.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(pem) = ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("not a PEM certificate file")?;
        if certs.is_empty() {
            bail!("holds no PEM certificate");
        }
        for c in certs {
            roots.add(c).context("not a usable CA certificate")?;
        }
    }
    Ok(roots)
}

/// The trust for a server with an optional private CA; built once per CA
/// per process.
pub fn trust(ca_pem: Option<&str>) -> anyhow::Result<Trust> {
    static CACHE: OnceLock<Mutex<HashMap<Option<String>, Trust>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = ca_pem.map(str::to_string);
    if let Some(t) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(t.clone());
    }
    let roots = Arc::new(roots(ca_pem)?);
    let config = |alpn: &[&[u8]]| -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(Arc::new(c))
    };
    let t = Trust {
        http: config(&[b"h2", b"http/1.1"])?,
        ws: config(&[b"http/1.1"])?,
    };
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, t.clone());
    Ok(t)
}

/// Whether `base` may be used: `https://` anywhere, `http://` only to a
/// loopback address (this machine).
pub fn check_url(base: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(base).with_context(|| format!("{base:?} is not a URL"))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if !loopback {
                bail!(
                    "refusing plain http:// to {}: the server's address must start with https:// (plain HTTP only reaches this machine)",
                    url.host_str().unwrap_or("?")
                );
            }
        }
        other => bail!("{base:?}: the server's address starts with https://, not {other}://"),
    }
    if url.host_str().is_none() {
        bail!("{base:?} names no host");
    }
    Ok(url)
}

/// A private CA and a server certificate it issued, written as PEM files.
pub struct PrivateCa {
    /// The server's certificate chain and key, for `serve --tls-cert/--tls-key`.
    pub files: sitrep_server::TlsFiles,
    /// Where the CA certificate is, for `enrol --ca`.
    pub ca_file: std::path::PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// Make a CA and a certificate for `names` (DNS names or IP addresses)
/// that it signs, in `dir`: `ca.pem`, `server-cert.pem` (leaf then CA),
/// `server-key.pem` (mode 0600). For a trust with no PKI of its own, and for
/// the TLS tests and benchmarks; the CA's key is not kept, so it can issue
/// nothing else.
pub fn make_private_ca(dir: &std::path::Path, names: &[&str]) -> anyhow::Result<PrivateCa> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    if names.is_empty() {
        bail!("a certificate needs at least one name");
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "Sitrep private CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    leaf.distinguished_name.push(DnType::CommonName, names[0]);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = leaf.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(dir)?;
    let files = sitrep_server::TlsFiles {
        cert: dir.join("server-cert.pem"),
        key: dir.join("server-key.pem"),
    };
    let ca_file = dir.join("ca.pem");
    let ca_pem = ca_cert.pem();
    std::fs::write(&ca_file, &ca_pem)?;
    std::fs::write(&files.cert, format!("{}{}", cert.pem(), ca_pem))?;
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    Ok(PrivateCa {
        files,
        ca_file,
        ca_pem,
    })
}

/// Write a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_reaches_only_this_machine() {
        for ok in [
            "https://sitrep.example.nhs.uk",
            "https://10.0.0.5:8448",
            "http://127.0.0.1:8448",
            "http://127.8.9.1",
            "http://[::1]:8448",
            "http://localhost:8448",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:8448",
            "http://sitrep.example.nhs.uk",
            "http://localhost.evil.example",
            "http://[::ffff:10.0.0.1]",
            "ftp://127.0.0.1",
            "ws://127.0.0.1",
            "127.0.0.1:8448",
            "https://",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        assert!(roots(Some("not pem")).is_err());
        assert!(roots(Some("")).is_err());
        assert!(roots(None).is_ok());
    }
}
