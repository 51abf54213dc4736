//! Device credentials: the organisation's signed statement that a signature key
//! belongs to one device of one member of staff.
//!
//! The server (the authentication service) signs a [`DeviceCredential`] with the
//! organisation's Ed25519 key at enrolment. Clients carry the signed bytes as the
//! identity of their MLS `BasicCredential`, and every client checks every member
//! against the organisation key and the leaf's own signature key.

/// An Ed25519 public key, parsed (the organisation key, a device key).
pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

/// Domain separation for credential signatures.
const CONTEXT: &[u8] = b"sitrep-device-credential-v1";
/// Bound on encoded credentials.
pub const MAX_CREDENTIAL_BYTES: usize = 2048;

/// What the organisation vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCredential {
    /// Format version (1).
    pub v: u8,
    /// Organisation name.
    pub org: String,
    /// Staff member's user id.
    pub user_id: String,
    /// This device's id.
    pub device_id: String,
    /// Name shown to colleagues.
    pub display_name: String,
    /// Role at enrolment (e.g. "ED consultant").
    pub role: String,
    /// The device's MLS signature public key (Ed25519).
    pub signature_key: ByteBuf,
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
}

/// A credential and the organisation's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCredential {
    /// CBOR of [`DeviceCredential`].
    pub credential: ByteBuf,
    /// Ed25519 signature over `CONTEXT || credential`.
    pub signature: ByteBuf,
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialError {
    /// Not a credential at all.
    #[error("malformed credential")]
    Malformed,
    /// The organisation did not sign it.
    #[error("credential not signed by the organisation key")]
    BadSignature,
    /// Signed, but for a different signature key than the MLS leaf uses.
    #[error("credential is for a different signature key")]
    KeyMismatch,
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("writing CBOR to a Vec cannot fail");
    out
}

impl SignedCredential {
    /// Sign a credential with the organisation key.
    pub fn sign(cred: &DeviceCredential, org_key: &SigningKey) -> Self {
        let credential = cbor(cred);
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(&credential);
        let signature = org_key.sign(&msg).to_bytes().to_vec();
        Self {
            credential: ByteBuf::from(credential),
            signature: ByteBuf::from(signature),
        }
    }

    /// Encode for transport (the MLS credential identity).
    pub fn encode(&self) -> Vec<u8> {
        cbor(self)
    }

    /// Decode untrusted bytes (no verification yet).
    pub fn decode(bytes: &[u8]) -> Result<Self, CredentialError> {
        if bytes.len() > MAX_CREDENTIAL_BYTES {
            return Err(CredentialError::Malformed);
        }
        ciborium::from_reader(bytes).map_err(|_| CredentialError::Malformed)
    }

    /// Check the organisation's signature, then that the credential names
    /// `leaf_signature_key`. Returns the vouched-for device.
    pub fn verify(
        &self,
        org_public_key: &[u8],
        leaf_signature_key: &[u8],
    ) -> Result<DeviceCredential, CredentialError> {
        let key: [u8; 32] = org_public_key
            .try_into()
            .map_err(|_| CredentialError::BadSignature)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| CredentialError::BadSignature)?;
        self.verify_with(&key, leaf_signature_key)
    }

    /// [`Self::verify`] with the organisation key already parsed (a joining
    /// device checks thousands of credentials against the same key).
    pub fn verify_with(
        &self,
        key: &VerifyingKey,
        leaf_signature_key: &[u8],
    ) -> Result<DeviceCredential, CredentialError> {
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| CredentialError::BadSignature)?;
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(&self.credential);
        key.verify_strict(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| CredentialError::BadSignature)?;
        let cred: DeviceCredential = ciborium::from_reader(self.credential.as_slice())
            .map_err(|_| CredentialError::Malformed)?;
        if cred.signature_key.as_slice() != leaf_signature_key {
            return Err(CredentialError::KeyMismatch);
        }
        Ok(cred)
    }
}

/// Verify a detached signature a device made with its MLS signature key (an
/// export manifest, a decision-log entry): the organisation must have signed
/// `credential` (a [`SignedCredential`] encoding), and the credential's key must
/// have signed `label || msg`. Returns who signed.
pub fn verify_detached(
    org_public_key: &[u8],
    credential: &[u8],
    label: &[u8],
    msg: &[u8],
    signature: &[u8],
) -> Result<DeviceCredential, CredentialError> {
    let sc = SignedCredential::decode(credential)?;
    let inner: DeviceCredential =
        ciborium::from_reader(sc.credential.as_slice()).map_err(|_| CredentialError::Malformed)?;
    let cred = sc.verify(org_public_key, &inner.signature_key)?;
    let key: [u8; 32] = cred
        .signature_key
        .as_slice()
        .try_into()
        .map_err(|_| CredentialError::KeyMismatch)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| CredentialError::KeyMismatch)?;
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| CredentialError::BadSignature)?;
    let mut signed = label.to_vec();
    signed.extend_from_slice(msg);
    key.verify_strict(&signed, &Signature::from_bytes(&sig))
        .map_err(|_| CredentialError::BadSignature)?;
    Ok(cred)
}

/// Human-checkable fingerprint of the organisation key: SHA-256, first 16 bytes,
/// hex in groups of four.
pub fn fingerprint(public_key: &[u8]) -> String {
    let d = Sha256::digest(public_key);
    hex::encode(&d[..16])
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cred(key: &[u8]) -> DeviceCredential {
        DeviceCredential {
            v: 1,
            org: "Test Trust".into(),
            user_id: "alice".into(),
            device_id: "d1".into(),
            display_name: "Dr A".into(),
            role: "ED consultant".into(),
            signature_key: ByteBuf::from(key.to_vec()),
            issued_at: 1,
        }
    }

    #[test]
    fn signed_credential_verifies_and_forgeries_fail() {
        let org = SigningKey::from_bytes(&[1u8; 32]);
        let other = SigningKey::from_bytes(&[2u8; 32]);
        let sc = SignedCredential::sign(&cred(&[9u8; 32]), &org);
        let sc = SignedCredential::decode(&sc.encode()).expect("decodes");
        let org_pub = org.verifying_key().to_bytes();
        assert_eq!(
            sc.verify(&org_pub, &[9u8; 32]).expect("valid").user_id,
            "alice"
        );
        assert_eq!(
            sc.verify(&org_pub, &[8u8; 32]),
            Err(CredentialError::KeyMismatch)
        );
        let forged = SignedCredential::sign(&cred(&[9u8; 32]), &other);
        assert_eq!(
            forged.verify(&org_pub, &[9u8; 32]),
            Err(CredentialError::BadSignature)
        );
        let mut tampered = sc.clone();
        let last = tampered.credential.len() - 1;
        tampered.credential[last] ^= 1;
        assert!(tampered.verify(&org_pub, &[9u8; 32]).is_err());
    }

    #[test]
    fn fingerprint_is_grouped() {
        let f = fingerprint(&[0u8; 32]);
        assert_eq!(f.split(' ').count(), 8);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(sc) = SignedCredential::decode(&bytes) {
                let _ = sc.verify(&[0u8; 32], &[]);
            }
        }
    }
}
