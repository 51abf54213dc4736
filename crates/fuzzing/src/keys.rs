//! Fixed keys shared by the harnesses and the seed generator, so that seeds
//! signed once still verify in every later fuzzing process. Derived once per
//! process: a public key costs a scalar multiplication, and the harnesses ask
//! for them on every input.

use std::sync::OnceLock;

use ed25519_dalek::{Signer as _, SigningKey};

fn cached(cell: &'static OnceLock<SigningKey>, seed: u8) -> SigningKey {
    cell.get_or_init(|| SigningKey::from_bytes(&[seed; 32]))
        .clone()
}

/// The test organisation (the same seed as `crates/core/tests`).
pub fn org() -> SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    cached(&K, 7)
}

/// The organisation's public key.
pub fn org_public() -> [u8; 32] {
    org().verifying_key().to_bytes()
}

/// A key that never signs anything: nothing may verify under it.
pub fn stranger_public() -> [u8; 32] {
    static K: OnceLock<SigningKey> = OnceLock::new();
    cached(&K, 8).verifying_key().to_bytes()
}

/// A device's MLS signature key, for credentials and detached signatures.
pub fn device() -> SigningKey {
    static K: OnceLock<SigningKey> = OnceLock::new();
    cached(&K, 9)
}

/// Label and message of the detached signature the credential target checks.
pub const DETACHED_LABEL: &[u8] = b"sitrep-fuzz-detached-v1";
/// See [`DETACHED_LABEL`].
pub const DETACHED_MSG: &[u8] = b"fixed message";

/// The device key's signature over `DETACHED_LABEL || DETACHED_MSG`.
pub fn detached_signature() -> [u8; 64] {
    static S: OnceLock<[u8; 64]> = OnceLock::new();
    *S.get_or_init(|| {
        let mut m = DETACHED_LABEL.to_vec();
        m.extend_from_slice(DETACHED_MSG);
        device().sign(&m).to_bytes()
    })
}
