//! What the delivery service checks of the MLS objects devices upload, so one
//! device cannot plant something that breaks its colleagues' clients.
//!
//! It parses and verifies public MLS structures only (KeyPackages); it never
//! holds a private key or decrypts anything.

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Ciphersuite, ExtensionType, KeyPackage, MlsMessageBodyIn, MlsMessageIn,
    ProtocolVersion,
};
use openmls_rust_crypto::RustCrypto;
use sitrep_wire::credential::SignedCredential;

/// The ciphersuites Sitrep devices use (see the core's `Ciphersuite` choices).
const SUITES: [Ciphersuite; 2] = [
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
    Ciphersuite::MLS_128_MLKEM768X25519_AES256GCM_SHA384_Ed25519,
];

/// Who uploads: the device as the server enrolled it.
pub(crate) struct Uploader<'a> {
    pub device_id: &'a str,
    pub user_id: &'a str,
    /// The signature key the device proved at enrolment.
    pub signature_key: &'a [u8],
}

/// Why an uploaded KeyPackage was refused. The text names no value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum KeyPackageError {
    #[error("not an MLS KeyPackage")]
    Malformed,
    #[error("the KeyPackage does not verify ({0})")]
    Invalid(String),
    #[error("unsupported ciphersuite")]
    Ciphersuite,
    #[error("the KeyPackage's credential is not the organisation's credential for this device")]
    Credential,
    #[error("a last-resort KeyPackage must be marked last-resort, and only it")]
    LastResort,
    #[error("the KeyPackage's leaf does not support Sitrep's group extensions")]
    Capabilities,
}

/// Check one uploaded KeyPackage: it parses, its signatures and lifetime
/// verify (openmls `KeyPackageIn::validate`), its suite is one Sitrep uses,
/// its leaf carries the organisation's credential for exactly this device
/// with the signature key enrolled for it, and it is marked last-resort
/// exactly when it is uploaded as the last-resort one.
pub(crate) fn validate_key_package(
    bytes: &[u8],
    who: &Uploader<'_>,
    org_public_key: &[u8],
    last_resort: bool,
) -> Result<(), KeyPackageError> {
    let kp_in = match MlsMessageIn::tls_deserialize_exact(bytes).map(MlsMessageIn::extract) {
        Ok(MlsMessageBodyIn::KeyPackage(kp)) => kp,
        _ => return Err(KeyPackageError::Malformed),
    };
    let kp: KeyPackage = kp_in
        .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
        .map_err(|e| KeyPackageError::Invalid(short_error(&format!("{e:?}"))))?;
    if !SUITES.contains(&kp.ciphersuite()) {
        return Err(KeyPackageError::Ciphersuite);
    }
    let leaf = kp.leaf_node();
    // Every Sitrep group context carries the conversation metadata: a leaf
    // that cannot hold it would make the whole add fail at the adder.
    if !leaf
        .capabilities()
        .extensions()
        .contains(&ExtensionType::Unknown(sitrep_wire::meta::EXTENSION_TYPE))
    {
        return Err(KeyPackageError::Capabilities);
    }
    let key = leaf.signature_key().as_slice();
    if key != who.signature_key {
        return Err(KeyPackageError::Credential);
    }
    let basic = BasicCredential::try_from(leaf.credential().clone())
        .map_err(|_| KeyPackageError::Credential)?;
    let cred = SignedCredential::decode(basic.identity())
        .and_then(|sc| sc.verify(org_public_key, key))
        .map_err(|_| KeyPackageError::Credential)?;
    if cred.device_id != who.device_id || cred.user_id != who.user_id {
        return Err(KeyPackageError::Credential);
    }
    if kp.last_resort() != last_resort {
        return Err(KeyPackageError::LastResort);
    }
    Ok(())
}

/// The variant name of an openmls error, without any payload it may carry.
fn short_error(debug: &str) -> String {
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .find(|s| !s.is_empty())
        .unwrap_or("invalid")
        .chars()
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::short_error;

    #[test]
    fn error_names_carry_no_payload() {
        assert_eq!(
            short_error("InvalidLeafNodeSignature(\"x\")"),
            "InvalidLeafNodeSignature"
        );
        assert_eq!(short_error(""), "invalid");
    }
}
