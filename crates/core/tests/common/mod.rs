//! Test devices enrolled against a test organisation key, without a server.

use ed25519_dalek::SigningKey;
use serde_bytes::ByteBuf;
use sitrep_core::{Ciphersuite, Client, PendingEnrolment};
use sitrep_wire::api::{ClaimedKeyPackage, EnrolResponse};
use sitrep_wire::credential::{DeviceCredential, SignedCredential};

pub fn enrol(org: &SigningKey, cs: Ciphersuite, user: &str) -> (Client, ClaimedKeyPackage) {
    let pending = PendingEnrolment::new(cs).expect("signer");
    let cred = DeviceCredential {
        v: 1,
        org: "Test Trust".into(),
        user_id: user.into(),
        device_id: format!("{user}-d1"),
        display_name: format!("Dr {user}"),
        role: "ED consultant".into(),
        signature_key: ByteBuf::from(pending.signature_key()),
        issued_at: 0,
    };
    let resp = EnrolResponse {
        org_public_key: org.verifying_key().to_bytes().to_vec(),
        org_name: "Test Trust".into(),
        user_id: user.into(),
        device_id: format!("{user}-d1"),
        credential: SignedCredential::sign(&cred, org).encode(),
        token: "t".into(),
    };
    let mut c = pending.finish("http://x", resp).expect("enrol");
    let mut up = c.key_packages(1).expect("kps");
    let kp = ClaimedKeyPackage {
        user_id: user.into(),
        device_id: format!("{user}-d1"),
        key_package: up.key_packages.remove(0),
    };
    (c, kp)
}
