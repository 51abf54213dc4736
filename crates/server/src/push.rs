//! Content-free Web Push (RFC 8030), signed with VAPID (RFC 8292).
//!
//! A browser that is not connected learns that something arrived from its
//! push service, never what: every push is an empty POST (no payload, so
//! nothing to encrypt and nothing for the push service to read; no
//! conversation, no sender). The service worker shows fixed text. The
//! server's VAPID key (`vapid.key` in the data directory, P-256, made on
//! first start) signs a short-lived JWT per push service origin.
//!
//! - Devices register endpoints with `POST /v1/push/subscribe`; only hosts
//!   of the known push services are taken (configurable: a trust may add
//!   its own), so the server cannot be pointed at an internal address.
//! - [`Hub::publish`](crate::hub::Hub) hands the ids of recipients with no
//!   live connection to the pusher, which coalesces them: at most one push
//!   per device per [`MIN_GAP`] (a burst of messages is one wake-up; the
//!   app fetches everything when it opens).
//! - A push service that answers 404 or 410 has forgotten the subscription:
//!   it is deleted.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::Signer as _;
use tokio::sync::mpsc;

use crate::AppState;

/// Shortest time between two pushes to one device.
pub const MIN_GAP: Duration = Duration::from_secs(5);
/// Most endpoints one device may register (a browser has one; a few
/// re-subscriptions may overlap).
pub const MAX_PER_DEVICE: usize = 4;
/// Longest endpoint URL taken.
pub const MAX_ENDPOINT: usize = 2048;
/// Push services browsers use; a host is taken if it is one of these or
/// under one.
pub const DEFAULT_HOSTS: &[&str] = &[
    "fcm.googleapis.com",
    "android.googleapis.com",
    "push.services.mozilla.com",
    "web.push.apple.com",
    "notify.windows.com",
];

/// The server's VAPID identity.
pub struct Vapid {
    key: p256::ecdsa::SigningKey,
    public: String,
}

impl Vapid {
    /// Read `vapid.key` from the data directory, or make it (owner-only).
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("vapid.key");
        let key = match std::fs::read(&path) {
            Ok(b) => p256::ecdsa::SigningKey::from_slice(&b)
                .map_err(|_| std::io::Error::other("vapid.key is not a P-256 key"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                let key = loop {
                    getrandom::getrandom(&mut seed[..]).map_err(std::io::Error::other)?;
                    if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&seed[..]) {
                        break k;
                    }
                };
                write_private(&path, &key.to_bytes())?;
                key
            }
            Err(e) => return Err(e),
        };
        let public = B64.encode(key.verifying_key().to_encoded_point(false).as_bytes());
        Ok(Self { key, public })
    }

    /// The public key as browsers take it (`applicationServerKey`):
    /// uncompressed point, base64url.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a push to `endpoint`'s origin.
    pub fn authorization(&self, endpoint: &url::Url, now_secs: u64, contact: &str) -> String {
        let aud = endpoint.origin().ascii_serialization();
        let header = B64.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = B64.encode(
            serde_json::json!({"aud": aud, "exp": now_secs + 12 * 3600, "sub": contact})
                .to_string(),
        );
        let input = format!("{header}.{claims}");
        let sig: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        format!(
            "vapid t={input}.{}, k={}",
            B64.encode(sig.to_bytes()),
            self.public
        )
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Why an endpoint was refused.
pub fn check_endpoint(endpoint: &str, hosts: &[String]) -> Result<url::Url, &'static str> {
    if endpoint.len() > MAX_ENDPOINT {
        return Err("the endpoint is too long");
    }
    let u = url::Url::parse(endpoint).map_err(|_| "the endpoint is not a URL")?;
    let host = u
        .host_str()
        .ok_or("the endpoint has no host")?
        .to_ascii_lowercase();
    let known = hosts
        .iter()
        .any(|h| host == *h || host.ends_with(&format!(".{h}")));
    if !known {
        return Err("the endpoint is not one of the push services this server sends to");
    }
    let loopback = matches!(u.host(), Some(url::Host::Ipv4(a)) if a.is_loopback())
        || matches!(u.host(), Some(url::Host::Ipv6(a)) if a.is_loopback());
    if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
        return Err("the endpoint must be https");
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("the endpoint may not carry credentials");
    }
    Ok(u)
}

/// Where the hub sends the ids of devices that were not connected, and
/// whether what arrived is urgent.
#[derive(Clone)]
pub struct Sink(mpsc::Sender<(String, bool)>);

impl Sink {
    /// Ask for a wake-up of `device`; dropped when the queue is full (a
    /// push is only a wake-up: the app fetches everything when it opens).
    pub fn wake(&self, device: &str, urgent: bool) {
        let _ = self.0.try_send((device.to_string(), urgent));
    }
}

/// Whether an entry of this kind wakes an offline browser: what a person
/// would want to know of (a message, being added); not the group's
/// housekeeping (commits, proposals, revocations), which would show
/// notifications for nothing.
pub fn wakes(kind: sitrep_wire::api::EntryKind) -> bool {
    matches!(
        kind,
        sitrep_wire::api::EntryKind::Application | sitrep_wire::api::EntryKind::Welcome
    )
}

/// A host entry of `push.allowed_hosts` that is usable: a DNS name or an
/// IP address, no scheme, port, path or empty label.
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && !h.starts_with('.')
        && !h.ends_with('.')
        && !h.contains("..")
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// Start the pusher: returns the hub's sink and the task.
pub(crate) fn spawn(st: Arc<AppState>) -> (Sink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(65_536);
    let task = tokio::spawn(run(st, rx));
    (Sink(tx), task)
}

async fn run(st: Arc<AppState>, mut rx: mpsc::Receiver<(String, bool)>) {
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "push: no HTTP client; pushes are off");
            return;
        }
    };
    // At most this many devices are pushed to at once; the rest wait in
    // `pending` (a slow push service must not pile up tasks).
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let inflight: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let mut last: HashMap<String, Instant> = HashMap::new();
    // Device to "something urgent is among what waits".
    let mut pending: HashMap<String, bool> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            d = rx.recv() => match d {
                Some((d, urgent)) => { *pending.entry(d).or_default() |= urgent; }
                None => return,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                last.retain(|_, t| now.duration_since(*t) < MIN_GAP);
                let busy = inflight.lock().map(|g| g.clone()).unwrap_or_default();
                // An urgent one goes at once, past the coalescing gap.
                let due: Vec<String> = pending
                    .iter()
                    .filter(|(d, urgent)| (**urgent || !last.contains_key(*d)) && !busy.contains(*d))
                    .map(|(d, _)| d.clone())
                    .collect();
                for d in due {
                    let Ok(permit) = sem.clone().try_acquire_owned() else {
                        break;
                    };
                    let urgent = pending.remove(&d).unwrap_or(false);
                    last.insert(d.clone(), now);
                    if let Ok(mut g) = inflight.lock() {
                        g.insert(d.clone());
                    }
                    let (st, client, inflight) = (st.clone(), client.clone(), inflight.clone());
                    tokio::spawn(async move {
                        push_device(&st, &client, &d, urgent).await;
                        if let Ok(mut g) = inflight.lock() {
                            g.remove(&d);
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
}

fn client() -> Result<reqwest::Client, reqwest::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    match tls {
        Ok(t) => b.use_preconfigured_tls(t).build(),
        Err(_) => b.build(),
    }
}

async fn push_device(st: &Arc<AppState>, client: &reqwest::Client, device: &str, urgent: bool) {
    let st2 = st.clone();
    let d = device.to_string();
    let Ok(Ok(endpoints)) = tokio::task::spawn_blocking(move || st2.db.push_endpoints(&d)).await
    else {
        return;
    };
    for (e, keys) in endpoints {
        let Ok(url) = check_endpoint(&e, &st.config.push_hosts) else {
            continue;
        };
        let auth = st
            .vapid
            .authorization(&url, crate::now_secs(), &st.config.push_contact);
        // Urgent: the one word `urgent`, encrypted to the browser (RFC 8291);
        // otherwise nothing at all.
        let body = match (urgent, keys) {
            (true, Some((p256dh, secret))) => encrypt(&p256dh, &secret, b"urgent").ok(),
            _ => None,
        };
        let mut r = client
            .post(url)
            .header("authorization", auth)
            .header("ttl", "86400")
            // Pushes waiting at the push service for an offline browser
            // collapse into one (an urgent one under its own topic).
            .header(
                "topic",
                if body.is_some() {
                    "sitrep-urgent"
                } else {
                    "sitrep"
                },
            )
            .header("urgency", "high");
        r = match body {
            Some(b) => r
                .header("content-encoding", "aes128gcm")
                .header("content-type", "application/octet-stream")
                .body(b),
            None => r.header("content-length", "0"),
        };
        let r = r.send().await;
        match r.map(|r| r.status().as_u16()) {
            Ok(404 | 410) => {
                let st2 = st.clone();
                let (d, e) = (device.to_string(), e.clone());
                let _ = tokio::task::spawn_blocking(move || st2.db.push_unsubscribe(&d, &e)).await;
                st.metrics.pushed("gone");
            }
            Ok(s) if (200..300).contains(&s) => st.metrics.pushed("sent"),
            Ok(_) | Err(_) => st.metrics.pushed("failed"),
        }
    }
}

/// Why a browser's push keys were refused.
#[derive(Debug, thiserror::Error)]
#[error("push keys: {0}")]
pub struct BadKeys(&'static str);

/// Check a browser's push keys (`p256dh`: an uncompressed P-256 point;
/// `auth`: 16 bytes), base64url as browsers give them.
pub fn check_keys(p256dh: &str, auth: &str) -> Result<(Vec<u8>, Vec<u8>), BadKeys> {
    let decode = |s: &str| {
        B64.decode(s.trim_end_matches('='))
            .map_err(|_| BadKeys("not base64url"))
    };
    let (public, secret) = (decode(p256dh)?, decode(auth)?);
    if public.len() != 65 || p256::PublicKey::from_sec1_bytes(&public).is_err() {
        return Err(BadKeys("p256dh is not an uncompressed P-256 point"));
    }
    if secret.len() != 16 {
        return Err(BadKeys("auth is not 16 bytes"));
    }
    Ok((public, secret))
}

/// RFC 8291 message encryption (`aes128gcm`, RFC 8188, one record) of a
/// push payload to a browser's keys, with a fresh P-256 key and salt.
pub fn encrypt(ua_public: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, BadKeys> {
    let eph = p256::SecretKey::random(&mut rand_core::OsRng);
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|_| BadKeys("no randomness"))?;
    encrypt_with(ua_public, auth, plaintext, &eph, salt)
}

/// [`encrypt`] with a given key and salt (RFC 8291 Appendix A checks it).
fn encrypt_with(
    ua_public: &[u8],
    auth: &[u8],
    plaintext: &[u8],
    eph: &p256::SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, BadKeys> {
    use aes_gcm::aead::{Aead as _, KeyInit as _};
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    let ua = p256::PublicKey::from_sec1_bytes(ua_public).map_err(|_| BadKeys("p256dh"))?;
    let as_public = eph.public_key().to_encoded_point(false);
    let as_public = as_public.as_bytes();
    let shared = p256::ecdh::diffie_hellman(eph.to_nonzero_scalar(), ua.as_affine());
    // IKM = HKDF(auth, ECDH, "WebPush: info" || 0 || ua_public || as_public, 32)
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_public);
    info.extend_from_slice(as_public);
    let mut ikm = zeroize::Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<sha2::Sha256>::new(Some(auth), shared.raw_secret_bytes().as_slice())
        .expand(&info, &mut ikm[..])
        .map_err(|_| BadKeys("hkdf"))?;
    let prk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), &ikm[..]);
    let mut cek = zeroize::Zeroizing::new([0u8; 16]);
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek[..])
        .map_err(|_| BadKeys("hkdf"))?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| BadKeys("hkdf"))?;
    // One record: the plaintext and the last-record delimiter.
    let mut record = plaintext.to_vec();
    record.push(2);
    let sealed = aes_gcm::Aes128Gcm::new_from_slice(&cek[..])
        .map_err(|_| BadKeys("key"))?
        .encrypt(aes_gcm::Nonce::from_slice(&nonce), record.as_slice())
        .map_err(|_| BadKeys("seal"))?;
    let mut out = Vec::with_capacity(16 + 4 + 1 + as_public.len() + sealed.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&4096u32.to_be_bytes());
    out.push(as_public.len() as u8);
    out.extend_from_slice(as_public);
    out.extend_from_slice(&sealed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Vec<u8> {
        B64.decode(s).expect("base64url")
    }

    /// RFC 8291 Appendix A: fixed keys and salt give the published message,
    /// byte for byte.
    #[test]
    fn the_rfc_8291_example() {
        let eph = p256::SecretKey::from_slice(&d("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
            .expect("key");
        let salt: [u8; 16] = d("DGv6ra1nlYgDCS1FRnbzlw").try_into().expect("16 bytes");
        let out = encrypt_with(
            &d("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"),
            &d("BTBZMqHH6r4Tts7J_aSIgg"),
            b"When I grow up, I want to be a watermelon",
            &eph,
            salt,
        )
        .expect("encrypts");
        assert_eq!(
            B64.encode(out),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn keys_that_are_not_a_browsers_are_refused() {
        assert!(check_keys("AAAA", "BTBZMqHH6r4Tts7J_aSIgg").is_err());
        let public = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        assert!(check_keys(public, "AAAA").is_err());
        assert!(check_keys(public, "BTBZMqHH6r4Tts7J_aSIgg").is_ok());
    }
}
