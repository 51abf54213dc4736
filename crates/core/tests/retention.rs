//! Retention with an injected clock: every client purges expired messages
//! from its store (and they are gone from the sealed file), and deletes the
//! key material of past epochs, so a late copy of an expired message no
//! longer decrypts. No sleeps: time is passed in.

mod common;

use common::enrol;
use ed25519_dalek::SigningKey;
use sitrep_core::store::{ProfileStore as _, SqliteStore};
use sitrep_core::vault::Vault;
use sitrep_core::{Client, Event, INTEROP_CIPHERSUITE, Session};
use sitrep_wire::api::EntryKind;

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

fn texts(c: &Client, name: &str) -> Vec<String> {
    c.conversation(name)
        .expect("conversation")
        .history
        .iter()
        .filter(|h| h.kind == "text")
        .map(|h| h.body.clone())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Alice and Bob in "ward" with a 1-day retention, created at t0.
fn pair(t0: u64) -> (Client, Client, String, u64) {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut a, _) = enrol(&org, INTEROP_CIPHERSUITE, "alice");
    let (mut b, kp_b) = enrol(&org, INTEROP_CIPHERSUITE, "bob");
    a.create_conversation_with("ward", "off", 86_400, false, t0)
        .expect("create");
    let add = a.prepare_add("ward", &[kp_b]).expect("add");
    a.commit_accepted(&add.group_hex, t0).expect("merge");
    let w = add.request.welcome.expect("welcome");
    b.handle_entry(1, EntryKind::Welcome, &w, t0);
    (a, b, add.group_hex, 2)
}

#[test]
fn retention_is_bounded_by_policy_and_carried_in_the_group() {
    let (_a, b, _, _) = pair(1_000);
    assert_eq!(b.retention_secs("ward").expect("ret"), Some(86_400));
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut c, _) = enrol(&org, INTEROP_CIPHERSUITE, "carol");
    assert!(
        c.create_conversation_with("x", "off", 10, false, 0)
            .is_err(),
        "below the minimum"
    );
    assert!(
        c.create_conversation_with("x", "off", 400 * 86_400, false, 0)
            .is_err(),
        "above the organisation's maximum"
    );
    assert!(
        c.create_conversation_with("x", "off", 0, true, 0).is_err(),
        "recorded needs a records account"
    );
    c.create_conversation_with("x", "off", 0, false, 0)
        .expect("default");
    assert_eq!(
        c.retention_secs("x").expect("ret"),
        Some(30 * 86_400),
        "the organisation's default"
    );
}

#[test]
fn expired_messages_are_purged_on_schedule_and_gone_from_the_store_file() {
    let t0 = 1_780_000_000_000;
    let (mut a, mut b, _, mut seq) = pair(t0);
    let old = a
        .encrypt_text("ward", "old: bay 4 needs a porter", t0 + HOUR)
        .expect("enc");
    a.sent(&old.request.client_id);
    b.handle_entry(seq, EntryKind::Application, &old.request.payload, t0 + HOUR);
    seq += 1;
    let new = a
        .encrypt_text("ward", "new: theatre 2 ready", t0 + 20 * HOUR)
        .expect("enc");
    a.sent(&new.request.client_id);
    b.handle_entry(
        seq,
        EntryKind::Application,
        &new.request.payload,
        t0 + 20 * HOUR,
    );

    // Sealed in a real store before the purge.
    let dir = std::env::temp_dir().join(format!("sitrep-ret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let now = t0 + HOUR + DAY - 1;
    let mut s = Session::create(
        SqliteStore::new(&dir).expect("store"),
        b,
        "passcode-123",
        now,
    )
    .expect("session");
    let before = s.store().load().expect("load").expect("present");

    // Just before the old one's day is up: nothing goes.
    let b = s.client(now).expect("unlocked");
    assert_eq!(b.purge_expired(t0 + HOUR + DAY - 1).expect("purge"), 0);
    assert_eq!(texts(b, "ward").len(), 2);
    // At its expiry: the old one goes, on both sides; the new one stays.
    assert_eq!(b.purge_expired(t0 + HOUR + DAY).expect("purge"), 1);
    // Alice also loses the "bob joined" line from t0: system lines expire too.
    assert_eq!(a.purge_expired(t0 + HOUR + DAY).expect("purge"), 2);
    assert_eq!(texts(b, "ward"), vec!["new: theatre 2 ready"]);
    assert_eq!(texts(&a, "ward"), vec!["new: theatre 2 ready"]);
    s.save().expect("save");

    // Gone from the store, checked in its decrypted form...
    let after = s.store().load().expect("load").expect("present");
    let (vault, _) = Vault::open_record("passcode-123", &after[0].0, &after[0].1).expect("open");
    let plains: Vec<_> = after
        .iter()
        .map(|(id, b)| vault.unseal_record(id, b).expect("opens"))
        .collect();
    assert!(
        !plains
            .iter()
            .any(|p| contains(p, b"old: bay 4 needs a porter"))
    );
    assert!(
        plains.iter().any(|p| contains(p, b"new: theatre 2 ready")),
        "the check can see plaintext"
    );
    // ...sealed at rest...
    let mut files = Vec::new();
    for f in ["profile.db", "profile.db-wal"] {
        files.extend(std::fs::read(dir.join(f)).unwrap_or_default());
    }
    assert!(!contains(&files, b"new: theatre 2 ready"), "sealed at rest");
    // ...and no sealed copy of a record the purge replaced is left in the
    // files (SQLite's secure_delete, and its log truncated).
    let mut replaced = 0;
    for (id, sealed) in &before {
        if !after.iter().any(|(i, b)| i == id && b == sealed) {
            replaced += 1;
            assert!(
                !contains(&files, &sealed[48..80]),
                "an old copy of a replaced record is still in the files"
            );
        }
    }
    assert!(replaced > 0, "the purge replaced a history page");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sender_clock_cannot_extend_retention() {
    let t0 = 1_780_000_000_000;
    let (mut a, mut b, _, seq) = pair(t0);
    // Alice's clock says next year.
    let m = a
        .encrypt_text("ward", "from the future", t0 + 365 * DAY)
        .expect("enc");
    b.handle_entry(seq, EntryKind::Application, &m.request.payload, t0);
    assert_eq!(b.purge_expired(t0 + DAY).expect("purge"), 1);
}

#[test]
fn past_epoch_keys_are_deleted_once_their_messages_expired() {
    let t0 = 1_780_000_000_000;
    for purge in [false, true] {
        let (mut a, mut b, _, mut seq) = pair(t0);
        // Bob writes in epoch 1; the copy for Alice is delayed.
        let late = b.encrypt_text("ward", "late one", t0 + HOUR).expect("enc");
        // Alice moves the group on, and Bob processes it.
        let up = a.prepare_update("ward").expect("update");
        a.commit_accepted(&up.group_hex, t0 + 2 * HOUR)
            .expect("merge");
        b.handle_entry(seq, EntryKind::Commit, &up.request.commit, t0 + 2 * HOUR);
        seq += 1;
        if purge {
            // Epoch 1 ended at t0 + 2h; a day later its keys must go.
            a.purge_expired(t0 + 2 * HOUR + DAY + 1).expect("purge");
        }
        let ev = a.handle_entry(
            seq,
            EntryKind::Application,
            &late.request.payload,
            t0 + 3 * HOUR,
        );
        let decrypted = ev.iter().any(|e| matches!(e, Event::Message { .. }));
        assert_eq!(
            decrypted, !purge,
            "late message decrypts only while the past epoch's keys are kept"
        );
    }
}
