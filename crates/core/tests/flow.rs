//! The client core end to end without a network: devices enrol against a test
//! organisation key, and this file plays the delivery service by hand.

mod common;

use common::enrol;
use ed25519_dalek::SigningKey;
use sitrep_core::{Ciphersuite, Client, DEFAULT_CIPHERSUITE, Event, INTEROP_CIPHERSUITE};
use sitrep_wire::api::EntryKind;

fn bodies(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { entry, .. } => Some(entry.body.clone()),
            _ => None,
        })
        .collect()
}

fn conversation_flow(cs: Ciphersuite) {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut a, _) = enrol(&org, cs, "alice");
    let (mut b, kp_b) = enrol(&org, cs, "bob");
    let (mut c, kp_c) = enrol(&org, cs, "carol");
    a.create_conversation("resus", "warn").expect("create");
    let add = a.prepare_add("resus", &[kp_b, kp_c]).expect("add");
    assert_eq!(add.request.add_devices, vec!["bob-d1", "carol-d1"]);
    a.commit_accepted(&add.group_hex, 1).expect("merge");
    let welcome = add.request.welcome.expect("welcome");
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    for d in [&mut b, &mut c] {
        let ev = d.handle_entry(next(), EntryKind::Welcome, &welcome, 2);
        assert_eq!(
            ev,
            vec![Event::Joined {
                conversation: "resus".into()
            }]
        );
    }
    // Names travel in the encrypted group context, members are verified.
    let members = b.members("resus").expect("members");
    assert_eq!(members.len(), 3);

    let out = a.encrypt_text("resus", "hello from A", 3).expect("encrypt");
    a.sent(&out.request.client_id);
    let got = bodies(&b.handle_entry(next(), EntryKind::Application, &out.request.payload, 4));
    assert_eq!(got, vec!["hello from A"]);
    let got = bodies(&c.handle_entry(next(), EntryKind::Application, &out.request.payload, 4));
    assert_eq!(got, vec!["hello from A"]);
    let reply = b.encrypt_text("resus", "hello from B", 5).expect("encrypt");
    let got = bodies(&a.handle_entry(next(), EntryKind::Application, &reply.request.payload, 6));
    assert_eq!(got, vec!["hello from B"]);

    // A removes C; C cannot read what follows.
    let rm = a.prepare_remove("resus", "carol").expect("remove");
    assert_eq!(rm.request.remove_devices, vec!["carol-d1"]);
    a.commit_accepted(&rm.group_hex, 7).expect("merge");
    let ev = b.handle_entry(next(), EntryKind::Commit, &rm.request.commit, 8);
    assert!(
        matches!(&ev[0], Event::Membership { summary, .. } if summary.contains("carol")),
        "{ev:?}"
    );
    let ev = c.handle_entry(next(), EntryKind::Commit, &rm.request.commit, 8);
    assert!(
        ev.contains(&Event::Removed {
            conversation: "resus".into()
        }),
        "{ev:?}"
    );
    let secret = a
        .encrypt_text("resus", "after removal", 9)
        .expect("encrypt");
    assert_eq!(
        bodies(&b.handle_entry(next(), EntryKind::Application, &secret.request.payload, 10)),
        vec!["after removal"]
    );
    let ev = c.handle_entry(next(), EntryKind::Application, &secret.request.payload, 10);
    assert!(bodies(&ev).is_empty());
    assert!(matches!(&ev[0], Event::Refused { .. }), "{ev:?}");

    // State survives a round trip through bytes.
    let b2 = Client::from_bytes(&b.to_bytes()).expect("reload");
    assert_eq!(
        b2.conversation("resus").expect("conv").history.len(),
        b.conversation("resus").expect("conv").history.len()
    );
}

#[test]
fn conversation_flow_pq_suite() {
    conversation_flow(DEFAULT_CIPHERSUITE);
}

#[test]
fn conversation_flow_rfc9420_suite() {
    conversation_flow(INTEROP_CIPHERSUITE);
}

#[test]
fn member_not_vouched_for_by_the_organisation_is_refused() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let rogue_org = SigningKey::from_bytes(&[8u8; 32]);
    let cs = INTEROP_CIPHERSUITE;
    let (mut a, _) = enrol(&org, cs, "alice");
    let (_m, kp_m) = enrol(&rogue_org, cs, "mallory");
    a.create_conversation("resus", "warn").expect("create");
    let err = a.prepare_add("resus", &[kp_m]).expect_err("must refuse");
    assert!(
        err.to_string().contains("not signed by the organisation"),
        "{err}"
    );

    // A device enrolled by another organisation cannot add our staff either.
    let (mut r, _) = enrol(&rogue_org, cs, "rogue");
    let (_b, kp_b) = enrol(&org, cs, "bob");
    r.create_conversation("trap", "warn").expect("create");
    let err = r.prepare_add("trap", &[kp_b]).expect_err("must refuse");
    assert!(matches!(err, sitrep_core::Error::Unverified(_)), "{err}");
}

/// A page of messages handled as a batch writes the key schedule once, at the
/// end: what is sealed afterwards is current. A reloaded device decrypts the
/// next message, refuses a replay of one it already read (its key is gone),
/// and a commit in the middle of a page is applied in order.
#[test]
fn a_batch_of_messages_leaves_current_secrets_in_the_sealed_state() {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let cs = INTEROP_CIPHERSUITE;
    let (mut a, _) = enrol(&org, cs, "alice");
    let (mut b, kp_b) = enrol(&org, cs, "bob");
    let (_, kp_c) = enrol(&org, cs, "carol");
    a.create_conversation("resus", "warn").expect("create");
    let add = a.prepare_add("resus", &[kp_b]).expect("add");
    a.commit_accepted(&add.group_hex, 1).expect("merge");
    let welcome = add.request.welcome.expect("welcome");
    b.handle_entry(1, EntryKind::Welcome, &welcome, 2);
    let mut page: Vec<(u64, EntryKind, Vec<u8>)> = Vec::new();
    for i in 0..5 {
        let out = a
            .encrypt_text("resus", &format!("m{i}"), 3)
            .expect("encrypt");
        a.sent(&out.request.client_id);
        page.push((2 + i, EntryKind::Application, out.request.payload));
    }
    // A commit (carol joins), then two more messages in the new epoch.
    let add_c = a.prepare_add("resus", &[kp_c]).expect("add carol");
    a.commit_accepted(&add_c.group_hex, 4).expect("merge");
    page.push((7, EntryKind::Commit, add_c.request.commit.clone()));
    for i in 5..7 {
        let out = a
            .encrypt_text("resus", &format!("m{i}"), 5)
            .expect("encrypt");
        a.sent(&out.request.client_id);
        page.push((3 + i as u64, EntryKind::Application, out.request.payload));
    }
    let replay = page.last().expect("page").2.clone();
    let events = b.handle_entries(page.iter().map(|(s, k, p)| (*s, *k, p.as_slice())), 6);
    assert_eq!(bodies(&events), ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
    // Seal, reload.
    let sealed = b.to_bytes();
    let mut b2 = Client::from_bytes(&sealed).expect("reload");
    let next = a.encrypt_text("resus", "after reload", 7).expect("encrypt");
    assert_eq!(
        bodies(&b2.handle_entry(20, EntryKind::Application, &next.request.payload, 8)),
        ["after reload"]
    );
    let again = b2.handle_entry(21, EntryKind::Application, &replay, 9);
    assert!(
        bodies(&again).is_empty(),
        "a message read in the batch cannot be read again after reload: {again:?}"
    );
}
