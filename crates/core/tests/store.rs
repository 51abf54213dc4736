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

/// Someone with the disk (or a faulty one) cannot roll back, drop or alter
/// one record: the records carry a manifest of each other, so the profile
/// refuses to open rather than show a history that never was. Such damage
/// is never counted as a wrong passcode (which would end in a wipe).
#[test]
fn one_record_rolled_back_dropped_or_altered_is_refused_and_not_counted() {
    use sitrep_core::persist::Changes;
    use sitrep_core::store::MemoryStore;
    use sitrep_core::{Error, UnlockError};
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut c, _) = common::enrol(&org, INTEROP_CIPHERSUITE, "alice");
    c.create_conversation("ward 7", "off").expect("create");
    let mut s = Session::create(MemoryStore::default(), c, "passcode-123", 0).expect("session");
    let send = |s: &mut Session<MemoryStore>, text: &str| {
        let c = s.client(0).expect("unlocked");
        let out = c.encrypt_text("ward 7", text, 0).expect("enc");
        c.sent(&out.request.client_id);
        s.save().expect("save");
    };
    for i in 0..70 {
        send(&mut s, &format!("obs {i}"));
    }
    let before = s.store().load().expect("load").expect("records");
    send(&mut s, "one more");
    let after = s.store().load().expect("load").expect("records");
    let changed: Vec<_> = after
        .iter()
        .filter_map(|(id, b)| {
            before
                .iter()
                .find(|(i, old)| i == id && old != b)
                .map(|(_, old)| (*id, old.clone(), b.clone()))
        })
        .collect();
    assert!(changed.len() >= 3, "state, a page and MLS secrets changed");
    s.lock();
    let put = |s: &Session<MemoryStore>, id, bytes: &Vec<u8>| {
        s.store()
            .write(&Changes {
                put: vec![(id, bytes.clone())],
                ..Changes::default()
            })
            .expect("write");
    };
    let refused = |s: &mut Session<MemoryStore>, what: &str| {
        match s.unlock("passcode-123", 0) {
            Err(UnlockError::Other(Error::BadStore(_))) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(
            s.store().unlock_failures().expect("count").0,
            0,
            "{what} counted"
        );
    };
    for (id, old, new) in &changed {
        put(&s, *id, old);
        refused(&mut s, "an older copy of one record");
        put(&s, *id, new);
    }
    // One record altered.
    let (id, _, new) = &changed[0];
    let mut bad = new.clone();
    let n = bad.len() - 3;
    bad[n] ^= 0x40;
    put(&s, *id, &bad);
    refused(&mut s, "an altered record");
    put(&s, *id, new);
    // One record gone (whichever is not the state).
    for (id, _, new) in &changed {
        s.store()
            .write(&Changes {
                delete: vec![*id],
                ..Changes::default()
            })
            .expect("delete");
        match s.unlock("passcode-123", 0) {
            Err(UnlockError::Other(Error::BadStore(_)))
            | Err(UnlockError::WrongPasscode { .. }) => {}
            other => panic!("a record gone: {other:?}"),
        }
        put(&s, *id, new);
    }
    // As it was: it opens, with everything.
    s.store().set_unlock_failures(0, 10).expect("reset");
    s.unlock("passcode-123", 0).expect("intact again");
    let n = s
        .client(0)
        .expect("unlocked")
        .conversation("ward 7")
        .expect("conv")
        .history
        .len();
    assert!(n >= 71, "{n}");
    // And a wrong passcode is still counted.
    s.lock();
    assert!(matches!(
        s.unlock("not-it", 0),
        Err(UnlockError::WrongPasscode { remaining: 9 })
    ));
}
