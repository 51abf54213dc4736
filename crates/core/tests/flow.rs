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
