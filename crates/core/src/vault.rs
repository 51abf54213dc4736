//! Sealing the local store: AES-256-GCM under a key derived from the passcode
//! with Argon2id. The passcode is never stored; the key lives in memory only
//! while the profile is unlocked and is zeroised when dropped.
//!
//! Layout: `magic(8) | m_kib u32 | t u32 | p u32 | salt(16) | nonce(12) | ct`,
//! with everything before the nonce authenticated as associated data.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::Error;

const MAGIC: &[u8; 8] = b"SITREP1\0";
const HEADER_LEN: usize = 8 + 12 + 16;
const NONCE_LEN: usize = 12;

/// Argon2id cost. The organisation policy may raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Parallelism.
    pub p: u32,
}

impl Default for KdfParams {
    /// OWASP's recommended minimum for Argon2id (19 MiB, 2 passes).
    fn default() -> Self {
        Self {
            m_kib: 19 * 1024,
            t: 2,
            p: 1,
        }
    }
}

impl KdfParams {
    /// Refuse headers that would make opening a store a denial of service.
    fn bounded(self) -> Result<Self, Error> {
        if (8 * 1024..=1024 * 1024).contains(&self.m_kib)
            && (1..=16).contains(&self.t)
            && (1..=8).contains(&self.p)
        {
            Ok(self)
        } else {
            Err(Error::BadStore("KDF parameters out of bounds"))
        }
    }
}

/// An unlocked store key.
pub struct Vault {
    key: Zeroizing<[u8; 32]>,
    header: [u8; HEADER_LEN],
}

/// Bytes of a record id.
pub const RECORD_ID_LEN: usize = 16;

/// A record's id in the store: a keyed hash of its name, so the backend's
/// keys say nothing about what a record holds (no group ids on disk).
pub type RecordId = [u8; RECORD_ID_LEN];

/// Associated data of one record: the header, a domain tag and the id, so
/// a record cannot be read back as another (or as a whole snapshot).
fn record_aad(header: &[u8; HEADER_LEN], id: &RecordId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + 8 + RECORD_ID_LEN);
    aad.extend_from_slice(header);
    aad.extend_from_slice(b"SITREP-R");
    aad.extend_from_slice(id);
    aad
}

fn derive(passcode: &str, salt: &[u8], params: KdfParams) -> Result<Zeroizing<[u8; 32]>, Error> {
    let p = argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|_| Error::BadStore("KDF parameters"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passcode.as_bytes(), salt, key.as_mut())
        .map_err(|_| Error::BadStore("KDF"))?;
    Ok(key)
}

impl Vault {
    /// A new store key from a passcode and a fresh random salt.
    pub fn create(passcode: &str, params: KdfParams, salt: [u8; 16]) -> Result<Self, Error> {
        let params = params.bounded()?;
        let key = derive(passcode, &salt, params)?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&params.m_kib.to_be_bytes());
        header[12..16].copy_from_slice(&params.t.to_be_bytes());
        header[16..20].copy_from_slice(&params.p.to_be_bytes());
        header[20..36].copy_from_slice(&salt);
        Ok(Self { key, header })
    }

    /// Open sealed bytes with a passcode: the vault (to seal again) and the plaintext.
    pub fn open(passcode: &str, sealed: &[u8]) -> Result<(Self, Zeroizing<Vec<u8>>), Error> {
        let (key, header) = Self::derive_from(passcode, sealed)?;
        let vault = Self { key, header };
        let plain = vault.decrypt(&sealed[HEADER_LEN..])?;
        Ok((vault, plain))
    }

    /// Open one sealed record with a passcode (the key is derived from the
    /// record's header): the vault and the record's plaintext.
    pub fn open_record(
        passcode: &str,
        id: &RecordId,
        sealed: &[u8],
    ) -> Result<(Self, Zeroizing<Vec<u8>>), Error> {
        let (key, header) = Self::derive_from(passcode, sealed)?;
        let vault = Self { key, header };
        let plain = vault.unseal_record(id, sealed)?;
        Ok((vault, plain))
    }

    /// The key a passcode gives for records sealed with this header (any
    /// record's bytes): whether it is the right one shows when records are
    /// looked up by the ids it derives.
    pub fn for_records(passcode: &str, any_sealed: &[u8]) -> Result<Self, Error> {
        let (key, header) = Self::derive_from(passcode, any_sealed)?;
        Ok(Self { key, header })
    }

    fn derive_from(
        passcode: &str,
        sealed: &[u8],
    ) -> Result<(Zeroizing<[u8; 32]>, [u8; HEADER_LEN]), Error> {
        if sealed.len() < HEADER_LEN + NONCE_LEN + 16 || &sealed[..8] != MAGIC {
            return Err(Error::BadStore("bad header"));
        }
        let word = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&sealed[i..i + 4]);
            u32::from_be_bytes(b)
        };
        let params = KdfParams {
            m_kib: word(8),
            t: word(12),
            p: word(16),
        }
        .bounded()?;
        let key = derive(passcode, &sealed[20..36], params)?;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&sealed[..HEADER_LEN]);
        Ok((key, header))
    }

    /// The id of the record called `name` under this key.
    pub fn record_id(&self, name: &[u8]) -> RecordId {
        use hmac::{Hmac, Mac};
        let mut sub = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.key.as_ref())
            .expect("HMAC takes any key length");
        sub.update(b"sitrep record id v1");
        let sub = Zeroizing::new(sub.finalize().into_bytes());
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(&sub).expect("HMAC takes any key length");
        mac.update(name);
        let full = mac.finalize().into_bytes();
        let mut id = [0u8; RECORD_ID_LEN];
        id.copy_from_slice(&full[..RECORD_ID_LEN]);
        id
    }

    /// Seal one record under this key, bound to its id.
    pub fn seal_record(&self, id: &RecordId, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        self.seal_with(plaintext, nonce, &record_aad(&self.header, id))
    }

    /// Open one record sealed under this key with this id. A record sealed
    /// under another key (a passcode change meanwhile) is `WrongPasscode`;
    /// one moved to another id, or altered, is `BadStore`.
    pub fn unseal_record(&self, id: &RecordId, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if sealed.len() < HEADER_LEN + NONCE_LEN + 16 || sealed[..HEADER_LEN] != self.header {
            return Err(Error::WrongPasscode);
        }
        self.open_with(&sealed[HEADER_LEN..], &record_aad(&self.header, id))
            .ok_or(Error::BadStore(
                "a record does not open: the store is damaged or was altered",
            ))
    }

    fn decrypt(&self, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.open_with(body, &self.header)
            .ok_or(Error::WrongPasscode)
    }

    /// `nonce | ciphertext` opened under this key with `aad`.
    fn open_with(&self, body: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let cipher = Aes256Gcm::new_from_slice(self.key.as_ref()).expect("key is 32 bytes");
        let (nonce, ct) = body.split_at(NONCE_LEN);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .ok()
    }

    /// `header | nonce | ciphertext` of `plaintext` under this key with `aad`.
    fn seal_with(&self, plaintext: &[u8], nonce: [u8; NONCE_LEN], aad: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new_from_slice(self.key.as_ref()).expect("key is 32 bytes");
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + ct.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// The Argon2id cost this store key was derived with.
    pub fn params(&self) -> KdfParams {
        let word = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&self.header[i..i + 4]);
            u32::from_be_bytes(b)
        };
        KdfParams {
            m_kib: word(8),
            t: word(12),
            p: word(16),
        }
    }

    /// Seal plaintext as one snapshot (the format before records; kept for
    /// fixtures and tests).
    pub fn seal(&self, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        self.seal_with(plaintext, nonce, &self.header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FAST: KdfParams = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };

    #[test]
    fn right_passcode_opens_wrong_one_does_not() {
        let v = Vault::create("correct horse", FAST, [3u8; 16]).expect("create");
        let sealed = v.seal(b"secret state", [1u8; 12]);
        let (_, plain) = Vault::open("correct horse", &sealed).expect("opens");
        assert_eq!(&plain[..], b"secret state");
        assert!(matches!(
            Vault::open("wrong", &sealed),
            Err(Error::WrongPasscode)
        ));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn tampered_header_or_body_is_refused() {
        let v = Vault::create("pin", FAST, [3u8; 16]).expect("create");
        let sealed = v.seal(b"x", [1u8; 12]);
        let mut t = sealed.clone();
        t[25] ^= 1; // salt
        assert!(Vault::open("pin", &t).is_err());
        let mut t = sealed.clone();
        let n = t.len() - 1;
        t[n] ^= 1;
        assert!(matches!(Vault::open("pin", &t), Err(Error::WrongPasscode)));
        let mut t = sealed;
        t[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Vault::open("pin", &t), Err(Error::BadStore(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Vault::open("pin", &bytes);
        }
    }
}
