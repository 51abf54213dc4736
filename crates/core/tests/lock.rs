//! App lock, signed policy and wipe-after-failures, with an injected clock.

mod common;

use ed25519_dalek::SigningKey;
use sitrep_core::store::{MemoryStore, ProfileStore as _};
use sitrep_core::{INTEROP_CIPHERSUITE, OrgPolicy, Session, SignedPolicy, UnlockError};

const PASS: &str = "correct horse";
const MIN: u64 = 60_000;

fn session(org: &SigningKey) -> Session<MemoryStore> {
    let (client, _) = common::enrol(org, INTEROP_CIPHERSUITE, "alice");
    Session::create(MemoryStore::default(), client, PASS, 0).expect("create")
}

fn signed(org: &SigningKey, p: OrgPolicy) -> Vec<u8> {
    SignedPolicy::sign(&p, org).expect("sign").encode()
}

#[test]
fn locks_after_the_default_two_minutes_idle() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let mut s = session(&org);
    assert!(s.client(MIN).is_ok(), "used after one minute");
    assert!(s.client(MIN + 2 * MIN).is_ok(), "activity resets the timer");
    assert!(
        s.client(MIN + 2 * MIN + 2 * MIN + 1).is_err(),
        "idle past two minutes"
    );
    assert!(s.is_locked(10 * MIN));
    s.unlock(PASS, 10 * MIN).expect("unlock");
    assert!(!s.is_locked(10 * MIN + 1));
}

#[test]
fn signed_policy_sets_the_idle_time_unsigned_or_stale_ones_are_refused() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let rogue = SigningKey::from_bytes(&[9u8; 32]);
    let mut s = session(&org);
    let p30 = OrgPolicy {
        serial: 2,
        lock_after_idle_secs: 30,
        ..OrgPolicy::default()
    };
    s.client(0)
        .expect("unlocked")
        .apply_policy(&signed(&org, p30))
        .expect("applied");
    // Not signed by the organisation: refused, the 30 s policy stays.
    let p600 = OrgPolicy {
        serial: 3,
        lock_after_idle_secs: 600,
        ..OrgPolicy::default()
    };
    assert!(
        s.client(1)
            .expect("unlocked")
            .apply_policy(&signed(&rogue, p600.clone()))
            .is_err()
    );
    // Tampered after signing: refused.
    let mut t = SignedPolicy::sign(&p600, &org).expect("sign");
    let n = t.policy.len() - 2;
    t.policy[n] ^= 1;
    assert!(
        s.client(2)
            .expect("unlocked")
            .apply_policy(&t.encode())
            .is_err()
    );
    // Not newer: refused.
    let old = OrgPolicy {
        serial: 2,
        lock_after_idle_secs: 600,
        ..OrgPolicy::default()
    };
    assert!(
        s.client(3)
            .expect("unlocked")
            .apply_policy(&signed(&org, old))
            .is_err()
    );
    assert_eq!(
        s.client(4).expect("unlocked").policy().lock_after_idle_secs,
        30
    );
    assert!(s.client(4 + 31_000).is_err(), "locked after 30 s idle");
}

#[test]
fn wrong_passcodes_count_and_the_last_one_wipes_the_device() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let mut s = session(&org);
    let p3 = OrgPolicy {
        serial: 2,
        max_failed_unlocks: 3,
        ..OrgPolicy::default()
    };
    s.client(0)
        .expect("unlocked")
        .apply_policy(&signed(&org, p3))
        .expect("applied");
    s.save().expect("save");
    s.lock();
    // The limit comes into force with the next successful unlock.
    s.unlock(PASS, 1).expect("unlock");
    s.lock();
    assert!(matches!(
        s.unlock("nope", 2),
        Err(UnlockError::WrongPasscode { remaining: 2 })
    ));
    // A right passcode resets the count.
    s.unlock(PASS, 3).expect("unlock");
    s.lock();
    assert!(matches!(
        s.unlock("nope", 4),
        Err(UnlockError::WrongPasscode { remaining: 2 })
    ));
    assert!(matches!(
        s.unlock("nope", 5),
        Err(UnlockError::WrongPasscode { remaining: 1 })
    ));
    assert!(matches!(s.unlock("nope", 6), Err(UnlockError::Wiped)));
    assert!(
        s.store().load().expect("load").is_none(),
        "sealed data destroyed"
    );
    assert!(matches!(s.unlock(PASS, 7), Err(UnlockError::NoProfile)));
}

#[test]
fn a_short_passcode_is_refused_at_creation() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (client, _) = common::enrol(&org, INTEROP_CIPHERSUITE, "bob");
    assert!(Session::create(MemoryStore::default(), client, "12345", 0).is_err());
}

#[test]
fn notifications_carry_no_content_unless_policy_and_user_allow_it() {
    use sitrep_core::{Event, HistoryEntry, Previews};
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let mut s = session(&org);
    let entry = HistoryEntry {
        id: "00".repeat(16),
        sender: "bob".into(),
        sender_device: "d".into(),
        sender_name: "Dr Bob".into(),
        sent_at: 0,
        received_at: 0,
        kind: "text".into(),
        body: "Mr Smith in bay 3, NHS 943 476 5919".into(),
        epoch: 1,
        transferred_at: None,
        seq: 0,
    };
    let events = vec![
        Event::Message {
            conversation: "resus".into(),
            entry: entry.clone(),
        },
        Event::Message {
            conversation: "ward".into(),
            entry,
        },
    ];
    let c = s.client(0).expect("unlocked");
    let n = c.notification(&events, None).expect("notification");
    assert_eq!(
        (n.new_messages, n.conversations, n.preview.clone()),
        (2, 2, None),
        "default: no content"
    );
    assert!(
        c.notification(&events, Some(true))
            .expect("n")
            .preview
            .is_some(),
        "user opted in under `off`"
    );
    assert!(c.notification(&[], Some(true)).is_none());
    let forbid = OrgPolicy {
        serial: 2,
        previews: Previews::Forbidden,
        ..OrgPolicy::default()
    };
    c.apply_policy(&signed(&org, forbid)).expect("applied");
    assert_eq!(
        c.notification(&events, Some(true)).expect("n").preview,
        None,
        "forbidden wins"
    );
}

#[test]
fn two_step_policy_requires_the_totp_code_at_unlock() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut client, _) = common::enrol(&org, INTEROP_CIPHERSUITE, "carol");
    let uri = client.setup_totp().expect("totp");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let p = OrgPolicy {
        serial: 2,
        two_step_required: true,
        max_failed_unlocks: 4,
        ..OrgPolicy::default()
    };
    client.apply_policy(&signed(&org, p)).expect("applied");
    let mut s = Session::create(MemoryStore::default(), client, PASS, 0).expect("create");
    s.lock();
    let now_ms = 1_800_000_000_000u64;
    let authenticator = totp_rs::TOTP::from_url(&uri).expect("parse uri");
    let code = authenticator.generate(now_ms / 1000);
    assert!(matches!(
        s.unlock(PASS, now_ms),
        Err(UnlockError::TwoStepRequired { remaining: 4 })
    ));
    assert!(
        matches!(
            s.unlock_with_code(PASS, Some("000000"), now_ms).err(),
            Some(UnlockError::TwoStepRequired { remaining: 3 })
        ) || code == "000000"
    );
    // An old code (ten minutes ago) is refused too.
    let stale = authenticator.generate(now_ms / 1000 - 600);
    if stale != code {
        assert!(s.unlock_with_code(PASS, Some(&stale), now_ms).is_err());
    }
    s.unlock_with_code(PASS, Some(&code), now_ms)
        .expect("passcode and current code");
}

#[test]
fn a_new_argon2_cost_re_seals_the_store_at_the_next_unlock() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let mut s = session(&org);
    let header = |s: &Session<MemoryStore>| {
        s.store().load().expect("load").expect("sealed")[0].1[8..12].to_vec()
    };
    assert_eq!(header(&s), (19u32 * 1024).to_be_bytes());
    let p = OrgPolicy {
        serial: 2,
        argon2: (32 * 1024, 2, 1),
        ..OrgPolicy::default()
    };
    s.client(0)
        .expect("unlocked")
        .apply_policy(&signed(&org, p))
        .expect("applied");
    s.save().expect("save");
    s.lock();
    s.unlock(PASS, 1).expect("unlock");
    assert_eq!(
        header(&s),
        (32u32 * 1024).to_be_bytes(),
        "re-sealed with the new cost"
    );
    s.lock();
    s.unlock(PASS, 2)
        .expect("the same passcode opens the re-sealed store");
}

/// Work the user did not ask for (a sync on a push) does not keep the app
/// unlocked; it is refused once the idle time has passed.
#[test]
fn background_work_is_not_activity() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let mut s = session(&org);
    assert!(s.client(MIN).is_ok());
    assert!(s.background(MIN + MIN).is_ok(), "within the idle time");
    assert!(!s.is_locked(MIN + 2 * MIN), "asking is not activity either");
    assert!(
        s.background(MIN + 2 * MIN + 1).is_err(),
        "idle since the last use, whatever ran in the background"
    );
    assert!(s.client(MIN + 2 * MIN + 2).is_err(), "and it stays locked");
}
