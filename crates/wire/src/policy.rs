//! The organisation's device policy, signed with the organisation key and
//! enforced by every client core: ciphersuite, passcode length, lock after idle,
//! failed unlocks before the local data is wiped, notification previews, the
//! Argon2id cost and whether two-step verification is required.
//!
//! A device accepts a policy only if the organisation key signed it and its
//! serial is higher than the one it holds; otherwise it keeps the last valid one.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

const CONTEXT: &[u8] = b"sitrep-org-policy-v1";
/// Bound on an encoded signed policy.
pub const MAX_POLICY_BYTES: usize = 4096;

/// Notification previews on the lock screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Previews {
    /// Off by default; a user may turn them on.
    Off,
    /// On by default.
    On,
    /// Never: "new message" and a count only.
    Forbidden,
}

/// What the organisation requires of every device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgPolicy {
    /// Format version (1).
    pub v: u8,
    /// Increases with every change; a device refuses a lower or equal serial.
    pub serial: u64,
    /// MLS ciphersuite code point for new conversations.
    pub ciphersuite: u16,
    /// Shortest passcode accepted.
    pub min_passcode_len: u8,
    /// Lock after this many seconds without use (default 120).
    pub lock_after_idle_secs: u32,
    /// Wrong passcodes in a row before the local data is wiped (default 10).
    pub max_failed_unlocks: u8,
    /// Lock-screen previews.
    pub previews: Previews,
    /// Argon2id memory (KiB), iterations, parallelism for the local store.
    pub argon2: (u32, u32, u32),
    /// Whether unlocking needs a TOTP code as well.
    pub two_step_required: bool,
    /// Retention for conversations that do not set their own, in seconds.
    #[serde(default = "default_retention")]
    pub retention_default_secs: u64,
    /// The longest retention a conversation may set, in seconds.
    #[serde(default = "max_retention")]
    pub retention_max_secs: u64,
    /// The organisation's records account (a user id), the only account that
    /// may search and export records and the visible member of recorded
    /// conversations.
    #[serde(default)]
    pub records_user: Option<String>,
    /// Every new conversation is recorded.
    #[serde(default)]
    pub record_all: bool,
    /// How long the records account keeps what it records, in seconds; 0 keeps
    /// it until the records team deletes it under the trust's records schedule.
    #[serde(default)]
    pub records_retention_secs: u64,
    /// Delete a message on every device once it has been transferred to the
    /// patient's health record.
    #[serde(default = "yes")]
    pub delete_after_transfer: bool,
}

fn default_retention() -> u64 {
    30 * 86_400
}

fn max_retention() -> u64 {
    180 * 86_400
}

fn yes() -> bool {
    true
}

/// Shortest retention any conversation or policy may set (a minute).
pub const MIN_RETENTION_SECS: u64 = 60;

impl Default for OrgPolicy {
    /// The NHS guidance defaults: lock after 2 minutes, wipe after 10 wrong
    /// passcodes, no previews, AES-256 suite.
    fn default() -> Self {
        Self {
            v: 1,
            serial: 1,
            ciphersuite: 0x004E,
            min_passcode_len: 6,
            lock_after_idle_secs: 120,
            max_failed_unlocks: 10,
            previews: Previews::Off,
            argon2: (19 * 1024, 2, 1),
            two_step_required: false,
            retention_default_secs: default_retention(),
            retention_max_secs: max_retention(),
            records_user: None,
            record_all: false,
            records_retention_secs: 0,
            delete_after_transfer: true,
        }
    }
}

/// A policy and the organisation's signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPolicy {
    /// CBOR of [`OrgPolicy`].
    pub policy: ByteBuf,
    /// Ed25519 over `CONTEXT || policy`.
    pub signature: ByteBuf,
}

/// Why a policy was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not a policy.
    #[error("malformed policy")]
    Malformed,
    /// Not signed by the organisation key (or tampered with).
    #[error("policy not signed by the organisation key")]
    BadSignature,
    /// Values outside what any device can honour.
    #[error("policy value out of range: {0}")]
    OutOfRange(&'static str),
}

impl OrgPolicy {
    /// Refuse values no device should apply.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.v != 1 {
            return Err(PolicyError::OutOfRange("version"));
        }
        if !(4..=64).contains(&self.min_passcode_len) {
            return Err(PolicyError::OutOfRange("min_passcode_len"));
        }
        if !(10..=3600).contains(&self.lock_after_idle_secs) {
            return Err(PolicyError::OutOfRange("lock_after_idle_secs"));
        }
        if !(1..=100).contains(&self.max_failed_unlocks) {
            return Err(PolicyError::OutOfRange("max_failed_unlocks"));
        }
        let (m, t, p) = self.argon2;
        if !(8 * 1024..=1024 * 1024).contains(&m) || !(1..=16).contains(&t) || !(1..=8).contains(&p)
        {
            return Err(PolicyError::OutOfRange("argon2"));
        }
        if !matches!(self.ciphersuite, 0x0001 | 0x004E) {
            return Err(PolicyError::OutOfRange("ciphersuite"));
        }
        const TEN_YEARS: u64 = 10 * 366 * 86_400;
        if !(MIN_RETENTION_SECS..=TEN_YEARS).contains(&self.retention_max_secs) {
            return Err(PolicyError::OutOfRange("retention_max_secs"));
        }
        if !(MIN_RETENTION_SECS..=self.retention_max_secs).contains(&self.retention_default_secs) {
            return Err(PolicyError::OutOfRange("retention_default_secs"));
        }
        if self.records_retention_secs != 0
            && !(MIN_RETENTION_SECS..=TEN_YEARS * 10).contains(&self.records_retention_secs)
        {
            return Err(PolicyError::OutOfRange("records_retention_secs"));
        }
        if self
            .records_user
            .as_deref()
            .is_some_and(|u| !crate::api::valid_id(u))
        {
            return Err(PolicyError::OutOfRange("records_user"));
        }
        if self.record_all && self.records_user.is_none() {
            return Err(PolicyError::OutOfRange("record_all needs a records_user"));
        }
        Ok(())
    }
}

impl SignedPolicy {
    /// Sign a (valid) policy with the organisation key.
    pub fn sign(policy: &OrgPolicy, org_key: &SigningKey) -> Result<Self, PolicyError> {
        policy.validate()?;
        let mut bytes = Vec::new();
        ciborium::into_writer(policy, &mut bytes).map_err(|_| PolicyError::Malformed)?;
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(&bytes);
        Ok(Self {
            policy: ByteBuf::from(bytes),
            signature: ByteBuf::from(org_key.sign(&msg).to_bytes().to_vec()),
        })
    }

    /// Encode for transport and storage.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("writing CBOR to a Vec cannot fail");
        out
    }

    /// Read a policy WITHOUT verifying it: only for advice before the device
    /// knows the organisation key (e.g. the passcode length at enrolment). Never
    /// enforce or store what this returns.
    pub fn peek_unverified(bytes: &[u8]) -> Option<OrgPolicy> {
        if bytes.len() > MAX_POLICY_BYTES {
            return None;
        }
        let sp: SignedPolicy = ciborium::from_reader(bytes).ok()?;
        ciborium::from_reader(sp.policy.as_slice()).ok()
    }

    /// Decode untrusted bytes and verify them against the organisation key.
    pub fn verify(bytes: &[u8], org_public_key: &[u8]) -> Result<OrgPolicy, PolicyError> {
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::Malformed);
        }
        let sp: SignedPolicy = ciborium::from_reader(bytes).map_err(|_| PolicyError::Malformed)?;
        let key: [u8; 32] = org_public_key
            .try_into()
            .map_err(|_| PolicyError::BadSignature)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| PolicyError::BadSignature)?;
        let sig: [u8; 64] = sp
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| PolicyError::BadSignature)?;
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(&sp.policy);
        key.verify_strict(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| PolicyError::BadSignature)?;
        let p: OrgPolicy =
            ciborium::from_reader(sp.policy.as_slice()).map_err(|_| PolicyError::Malformed)?;
        p.validate()?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signed_policy_verifies_tampered_or_foreign_does_not() {
        let org = SigningKey::from_bytes(&[1u8; 32]);
        let other = SigningKey::from_bytes(&[2u8; 32]);
        let pubkey = org.verifying_key().to_bytes();
        let p = OrgPolicy {
            lock_after_idle_secs: 60,
            ..OrgPolicy::default()
        };
        let signed = SignedPolicy::sign(&p, &org).expect("sign").encode();
        assert_eq!(SignedPolicy::verify(&signed, &pubkey), Ok(p.clone()));
        let foreign = SignedPolicy::sign(&p, &other).expect("sign").encode();
        assert_eq!(
            SignedPolicy::verify(&foreign, &pubkey),
            Err(PolicyError::BadSignature)
        );
        let mut sp = SignedPolicy::sign(&p, &org).expect("sign");
        let n = sp.policy.len() - 3;
        sp.policy[n] ^= 1;
        assert!(SignedPolicy::verify(&sp.encode(), &pubkey).is_err());
        let bad = OrgPolicy {
            max_failed_unlocks: 0,
            ..OrgPolicy::default()
        };
        assert!(SignedPolicy::sign(&bad, &org).is_err());
    }

    proptest! {
        #[test]
        fn verify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SignedPolicy::verify(&bytes, &[0u8; 32]);
        }
    }
}
