//! The sealed store on SQLite: a profile sealed as one snapshot by an
//! earlier version is migrated to records at its next unlock, and the old
//! file is gone; what a send writes does not grow with history.

mod common;

use ed25519_dalek::SigningKey;
use sitrep_core::store::{ProfileStore as _, SqliteStore};
use sitrep_core::vault::{KdfParams, Vault};
use sitrep_core::{INTEROP_CIPHERSUITE, Session};

#[test]
fn a_legacy_snapshot_is_migrated_to_records_and_removed() {
    let dir = std::env::temp_dir().join(format!("sitrep-store-mig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut c, _) = common::enrol(&org, INTEROP_CIPHERSUITE, "alice");
    c.create_conversation("ward 7", "off").expect("create");
    let out = c.encrypt_text("ward 7", "bay 3 is free", 5).expect("enc");
    c.sent(&out.request.client_id);
    let vault = Vault::create("passcode-123", KdfParams::default(), [4; 16]).expect("vault");
    let legacy = dir.join("profile.sealed");
    std::fs::write(&legacy, vault.seal(&c.to_bytes(), [9; 12])).expect("write");

    let mut s = Session::new(SqliteStore::new(&dir).expect("store"));
    assert!(
        s.unlock("wrong-passcode", 0).is_err(),
        "still needs the passcode"
    );
    assert!(legacy.exists(), "a wrong passcode migrates nothing");
    s.unlock("passcode-123", 0).expect("unlock");
    assert!(!legacy.exists(), "the snapshot is removed once migrated");
    let n = s.store().load().expect("load").expect("records").len();
    assert!(n > 3, "{n} records");
    drop(s);

    let mut s = Session::new(SqliteStore::new(&dir).expect("store"));
    s.unlock("passcode-123", 0).expect("unlock again");
    let conv = s
        .client(0)
        .expect("unlocked")
        .conversation("ward 7")
        .expect("conv");
    assert!(conv.history.iter().any(|h| h.body == "bay 3 is free"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_send_writes_the_same_few_records_with_100_or_5000_messages_of_history() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut c, _) = common::enrol(&org, INTEROP_CIPHERSUITE, "alice");
    c.create_conversation("ward 7", "off").expect("create");
    let vault = Vault::create("passcode-123", KdfParams::default(), [4; 16]).expect("vault");
    let _ = c.changes(&vault);
    let mut sizes = Vec::new();
    for target in [100usize, 5_000] {
        while c.conversation("ward 7").expect("conv").history.len() < target {
            let out = c
                .encrypt_text("ward 7", "obs: BP 120/80 HR 88", 5)
                .expect("enc");
            c.sent(&out.request.client_id);
        }
        let _ = c.changes(&vault);
        let out = c.encrypt_text("ward 7", "one more", 6).expect("enc");
        c.sent(&out.request.client_id);
        let ch = c.changes(&vault);
        sizes.push((ch.put.len(), ch.bytes()));
    }
    let (small, large) = (sizes[0], sizes[1]);
    assert!(large.0 <= small.0 + 1, "{sizes:?}");
    assert!(
        large.1 < small.1 * 2,
        "bytes written grew with history: {sizes:?}"
    );
}
