//! Major-incident rules in the client core, with an injected clock and this
//! file playing the delivery service: authorisation against the signed
//! directory, command channels enforced by receivers, call-in tallies under
//! any delivery order, escalation timing, the decision log's tamper evidence,
//! and the casualty board.

mod common;

use common::enrol;
use ed25519_dalek::SigningKey;
use sitrep_core::incident::verify_decision_log;
use sitrep_core::{Client, Event, INTEROP_CIPHERSUITE};
use sitrep_wire::api::{ClaimedKeyPackage, EntryKind};
use sitrep_wire::directory::{Directory, Role, SignedDirectory};
use sitrep_wire::incident::*;

fn org() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn role(id: &str, team: &str, holders: &[&str], deputy: Option<&str>, declare: bool) -> Role {
    Role {
        id: id.into(),
        name: id.into(),
        team: team.into(),
        holders: holders.iter().map(|h| h.to_string()).collect(),
        eligible: holders.iter().map(|h| h.to_string()).collect(),
        deputy: deputy.map(String::from),
        can_declare: declare,
        commander: declare,
        ..Role::default()
    }
}

fn directory(serial: u64, bob_declares: bool) -> Vec<u8> {
    let d = Directory {
        v: 1,
        serial,
        roles: vec![
            role(
                "ed-consultant",
                "ed",
                &["alice"],
                Some("site-manager"),
                true,
            ),
            role("site-manager", "management", &["bob"], None, bob_declares),
            role(
                "anaesthetist",
                "anaesthetics",
                &["carol", "dave"],
                None,
                false,
            ),
        ],
        callout_standby: vec!["site-manager".into()],
        callout_declared: vec!["site-manager".into(), "anaesthetist".into()],
        ..Directory::default()
    };
    SignedDirectory::sign(&d, &org()).expect("sign")
}

struct Net {
    seq: u64,
}

impl Net {
    /// Deliver one payload to every client given; returns their events.
    fn deliver(
        &mut self,
        to: &mut [&mut Client],
        kind: EntryKind,
        payload: &[u8],
        now: u64,
    ) -> Vec<Vec<Event>> {
        self.seq += 1;
        to.iter_mut()
            .map(|c| c.handle_entry(self.seq, kind, payload, now))
            .collect()
    }
}

/// alice, bob, carol, dave in "major-incident" (posters: everyone unless given).
fn staff(posters: &[String]) -> (Vec<Client>, Net) {
    let mut clients = Vec::new();
    let mut kps: Vec<ClaimedKeyPackage> = Vec::new();
    for u in ["alice", "bob", "carol", "dave"] {
        let (mut c, kp) = enrol(&org(), INTEROP_CIPHERSUITE, u);
        c.apply_directory(&directory(2, false)).expect("directory");
        clients.push(c);
        kps.push(kp);
    }
    clients[0]
        .create_conversation_full("major-incident", "off", 0, false, posters, 0)
        .expect("create");
    let add = clients[0]
        .prepare_add("major-incident", &kps[1..])
        .expect("add");
    clients[0]
        .commit_accepted(&add.group_hex, 0)
        .expect("merge");
    let w = add.request.welcome.expect("welcome");
    let mut net = Net { seq: 0 };
    let (_, rest) = clients.split_at_mut(1);
    let mut refs: Vec<&mut Client> = rest.iter_mut().collect();
    net.deliver(&mut refs, EntryKind::Welcome, &w, 0);
    (clients, net)
}

/// Send from clients[from] and deliver to all (including the sender's echo as sent()).
fn post(cs: &mut [Client], net: &mut Net, from: usize, item: &Structured, now: u64) -> String {
    let out = cs[from]
        .send_structured("major-incident", item, now)
        .expect("send");
    // The server's answer: the seq the others receive it at.
    cs[from].sent_at_seq(&out.request.client_id, net.seq + 1);
    let mut others: Vec<&mut Client> = cs
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| *i != from)
        .map(|(_, c)| c)
        .collect();
    net.deliver(
        &mut others,
        EntryKind::Application,
        &out.request.payload,
        now,
    );
    out.request.client_id
}

fn methane() -> Methane {
    Methane {
        major_incident: true,
        exact_location: "Westgate shopping centre".into(),
        incident_type: "explosion".into(),
        hazards: "secondary device possible".into(),
        access: "north entrance only".into(),
        casualties: Casualties {
            estimated: 30,
            p1: 5,
            p2: 10,
            p3: 10,
            dead: 1,
        },
        emergency_services: "police, fire, 8 ambulances".into(),
    }
}

fn declare(level: Level) -> Structured {
    Structured::Incident(IncidentMsg {
        incident: "MI-2026-01".into(),
        level,
        methane: (level == Level::Declared).then(methane),
        note: String::new(),
    })
}

#[test]
fn only_authorised_roles_raise_incident_levels_checked_by_every_client() {
    let (mut cs, mut net) = staff(&[]);
    post(&mut cs, &mut net, 0, &declare(Level::Declared), 1_000);
    for c in &cs {
        let inc: Vec<_> = c.incidents().collect();
        assert_eq!(inc.len(), 1, "{}", c.user_id());
        assert_eq!(inc[0].level, Level::Declared);
        assert_eq!(inc[0].methane.as_ref().map(|m| m.casualties.p1), Some(5));
    }
    // Bob holds no declaring role: his own client refuses.
    let err = cs[1]
        .send_structured("major-incident", &declare(Level::StandDown), 2_000)
        .expect_err("refused");
    assert!(err.to_string().contains("authorises"), "{err}");
    // Bob's device holds a directory in which he may declare (say, an older
    // one that the organisation has since replaced): everyone else's client,
    // holding the current directory, refuses his STAND DOWN.
    for c in cs.iter_mut() {
        c.apply_directory(&directory(3, false)).expect("current");
    }
    cs[1].apply_directory(&directory(4, true)).expect("bob");
    let out = cs[1]
        .send_structured("major-incident", &declare(Level::StandDown), 3_000)
        .expect("bob's client lets it through");
    let mut others: Vec<&mut Client> = cs
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, c)| c)
        .collect();
    net.deliver(
        &mut others,
        EntryKind::Application,
        &out.request.payload,
        3_000,
    );
    for (i, c) in cs.iter().enumerate() {
        if i == 1 {
            continue;
        }
        assert_eq!(
            c.incidents().next().map(|i| i.level),
            Some(Level::Declared),
            "not stood down"
        );
        let refused = c
            .conversation("major-incident")
            .expect("conv")
            .history
            .iter()
            .any(|h| h.kind == "system" && h.body.contains("refused a incident from bob"));
        assert!(refused, "{} shows the refusal", c.user_id());
    }
    // METHANE is validated before anything is sent.
    let mut bad = methane();
    bad.exact_location = String::new();
    let item = Structured::Incident(IncidentMsg {
        incident: "MI-2026-02".into(),
        level: Level::Declared,
        methane: Some(bad),
        note: String::new(),
    });
    assert!(
        cs[0]
            .send_structured("major-incident", &item, 4_000)
            .is_err()
    );
}

#[test]
fn only_commanders_post_in_a_command_channel_enforced_by_receivers() {
    let (mut cs, mut net) = staff(&["alice".to_string()]);
    let out = cs[0]
        .encrypt_text("major-incident", "Gold: hold all elective lists", 1)
        .expect("alice posts");
    let mut others: Vec<&mut Client> = cs.iter_mut().skip(1).collect();
    net.deliver(&mut others, EntryKind::Application, &out.request.payload, 1);
    assert!(
        cs[1]
            .encrypt_text("major-incident", "can I help?", 2)
            .is_err(),
        "bob's own client refuses"
    );
    // A modified client ignores the rule: every receiver refuses its post.
    let mut rogue = strip_posters(&cs[1]);
    let out = rogue
        .encrypt_text("major-incident", "rogue post", 3)
        .expect("rogue sends");
    let mut recv: Vec<&mut Client> = cs.iter_mut().filter(|c| c.user_id() != "bob").collect();
    net.deliver(&mut recv, EntryKind::Application, &out.request.payload, 3);
    for c in cs.iter().filter(|c| c.user_id() != "bob") {
        let h = &c.conversation("major-incident").expect("conv").history;
        assert!(!h.iter().any(|e| e.body == "rogue post"), "{}", c.user_id());
        assert!(
            h.iter()
                .any(|e| e.kind == "system" && e.body.contains("only commanders post"))
        );
    }
    // Acknowledgements and call-in replies are not posts.
    let ack = Structured::Ack(Ack {
        alert: "ab".repeat(16),
    });
    assert!(cs[2].send_structured("major-incident", &ack, 4).is_ok());
}

/// The same client with its local copy of the posting rule removed, as a
/// modified build would have it.
fn strip_posters(c: &Client) -> Client {
    use ciborium::Value;
    let bytes = c.to_bytes();
    let mut v: Value = ciborium::from_reader(bytes.as_slice()).expect("state");
    fn walk(v: &mut Value) {
        match v {
            Value::Map(m) => {
                for (k, val) in m.iter_mut() {
                    if k.as_text() == Some("posters") {
                        *val = Value::Array(Vec::new());
                    } else {
                        walk(val);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).expect("encode");
    Client::from_bytes(&out).expect("restore")
}

#[test]
fn callin_tally_is_the_same_whatever_the_delivery_order() {
    let (mut cs, mut net) = staff(&[]);
    post(&mut cs, &mut net, 0, &declare(Level::Declared), 1_000);
    let reply = |a: Availability, role: &str| {
        Structured::Callin(CallinReply {
            incident: "MI-2026-01".into(),
            availability: a,
            role: role.into(),
        })
    };
    // Carol, Dave and Bob reply; Carol changes her mind. Replies are encrypted
    // concurrently and reach Alice and Bob in different orders.
    let mut outs = Vec::new();
    for (i, item, t) in [
        (2, reply(Availability::In(30), "anaesthetist"), 2_000),
        (3, reply(Availability::Now, "anaesthetist"), 2_001),
        (1, reply(Availability::Unavailable, "site-manager"), 2_002),
        (2, reply(Availability::Now, "anaesthetist"), 2_500),
    ] {
        let o = cs[i]
            .send_structured("major-incident", &item, t)
            .expect("reply");
        cs[i].sent(&o.request.client_id);
        outs.push((i, o.request.payload));
    }
    let (first, rest) = cs.split_at_mut(1);
    let alice = &mut first[0];
    for (i, p) in &outs {
        if *i != 0 {
            net.seq += 1;
            alice.handle_entry(net.seq, EntryKind::Application, p, 3_000);
        }
    }
    // Dave sees them in reverse (his own already applied at sending).
    let dave = &mut rest[2];
    for (i, p) in outs.iter().rev() {
        if *i != 3 {
            net.seq += 1;
            dave.handle_entry(net.seq, EntryKind::Application, p, 3_000);
        }
    }
    let ta = alice.callin_tally("MI-2026-01").expect("tally");
    let td = dave.callin_tally("MI-2026-01").expect("tally");
    assert_eq!(ta, td, "same tally in any order");
    assert_eq!(ta.replies, 3);
    assert_eq!(
        ta.by_role["anaesthetist"].now, 2,
        "Carol's later reply counts"
    );
    assert_eq!(ta.by_role["site-manager"].unavailable, 1);
    assert!(ta.not_replied.is_empty());
}

#[test]
fn escalation_fires_on_time_along_the_chain_and_stops_on_acknowledgement() {
    let (mut cs, mut net) = staff(&[]);
    let alert = Structured::Alert(Alert {
        priority: Priority::Urgent,
        to: Target::User("alice".into()),
        text: "CT scanner down, redirect trauma".into(),
        ack_within_secs: 60,
        breakthrough: false,
        escalates: None,
    });
    let dir = cs[0].directory();
    assert_eq!(
        sitrep_core::incident::escalation_chain(&dir, &Target::User("alice".into())),
        [
            Target::Role("site-manager".into()),
            Target::Team("management".into())
        ],
        "Alice's role's deputy, then that role's team"
    );
    let t0 = 10_000_000;
    // Carol alerts Alice, and her device does nothing more: everything below
    // happens on the recipients' own devices.
    let id = post(&mut cs, &mut net, 2, &alert, t0);
    assert_eq!(cs[0].alerts_for_me(t0).len(), 1, "Alice sees it");
    assert!(
        cs[1].alerts_for_me(t0 + 59_999).is_empty(),
        "not Bob's yet at 59.999 s"
    );
    assert!(cs[1].escalations_due(t0 + 59_999).is_empty(), "not yet");
    assert_eq!(
        cs[1].alerts_for_me(t0 + 60_000).len(),
        1,
        "Bob (site manager, Alice's deputy role) has it at 60 s"
    );
    assert!(
        cs[3].alerts_for_me(t0 + 60_000).is_empty(),
        "Dave is not on the chain"
    );
    // Bob's device synced when the alert came: no receipt then; one once
    // the escalation reaches him.
    assert!(cs[1].pending_receipts(t0).is_empty(), "not Bob's yet");
    let r = cs[1].pending_receipts(t0 + 60_000);
    assert_eq!(r.len(), 1, "Bob's receipt once it is his");
    assert!(cs[1].pending_receipts(t0 + 60_001).is_empty(), "only once");
    let due = cs[1].escalations_due(t0 + 60_000);
    assert_eq!(
        due,
        [(id.clone(), 1, Target::Role("site-manager".into()))],
        "step 1 recorded once"
    );
    assert!(
        cs[1].escalations_due(t0 + 60_001).is_empty(),
        "once per step"
    );
    // Next step: the site manager's team, a minute later.
    assert_eq!(cs[1].escalations_due(t0 + 120_000).len(), 1);
    // Bob acknowledges: the chain stops for good, on every device.
    post(
        &mut cs,
        &mut net,
        1,
        &Structured::Ack(Ack { alert: id.clone() }),
        t0 + 130_000,
    );
    assert!(cs[1].alerts_for_me(t0 + 10_000_000).is_empty());
    assert!(cs[0].alerts_for_me(t0 + 10_000_000).is_empty());
    // Carol's device, back: the same two steps, worked out from the alert.
    assert_eq!(cs[2].escalations_due(t0 + 10_000_000).len(), 2);
    assert!(cs[2].escalations_due(t0 + 20_000_000).is_empty());
    let st = cs[2].alert_state(&id).expect("state");
    assert_eq!(st.acked.as_ref().map(|a| a.0.as_str()), Some("bob"));
    assert_eq!(
        st.escalations,
        [
            (1, t0 + 60_000, Target::Role("site-manager".into())),
            (2, t0 + 120_000, Target::Team("management".into()))
        ]
    );
    // Read receipts: aggregated, one per conversation per sync.
    let r = cs[0].pending_receipts(t0 + 140_000);
    assert_eq!(r.len(), 1);
    let Structured::Receipt(rec) = &r[0].1 else {
        panic!("receipt")
    };
    assert!(rec.read.contains(&id));
    post(&mut cs, &mut net, 0, &r[0].1, t0 + 140_000);
    assert!(
        cs[2]
            .alert_state(&id)
            .expect("state")
            .read_by
            .contains("alice")
    );
    assert!(
        cs[0].pending_receipts(t0 + 140_000).is_empty(),
        "nothing new"
    );
    assert!(
        cs[3].pending_receipts(t0 + 140_000).is_empty(),
        "Dave read it too, but it was never his: no receipt"
    );
    // An alert acknowledged in time never escalates.
    let t1 = t0 + 200_000;
    let id2 = post(&mut cs, &mut net, 2, &alert, t1);
    post(
        &mut cs,
        &mut net,
        0,
        &Structured::Ack(Ack { alert: id2.clone() }),
        t1 + 10_000,
    );
    assert!(cs[1].alerts_for_me(t1 + 1_000_000).is_empty());
    assert!(cs[1].escalations_due(t1 + 1_000_000).is_empty());
    // An acknowledgement made in time but delivered after Bob's device had
    // escalated: the escalation is taken back.
    let t2 = t0 + 2_000_000;
    let id3 = post(&mut cs, &mut net, 2, &alert, t2);
    assert_eq!(cs[1].escalations_due(t2 + 61_000).len(), 1);
    assert_eq!(cs[1].alerts_for_me(t2 + 61_000).len(), 1);
    post(
        &mut cs,
        &mut net,
        0,
        &Structured::Ack(Ack { alert: id3.clone() }),
        t2 + 59_000,
    );
    assert!(cs[1].alerts_for_me(t2 + 61_000).is_empty());
    assert!(
        cs[1]
            .alert_state(&id3)
            .expect("state")
            .escalations
            .is_empty(),
        "acknowledged at 59 s: no escalation happened"
    );
}

#[test]
fn decision_log_verifies_and_detects_edits_removals_and_reordering() {
    let (mut cs, mut net) = staff(&[]);
    for (i, text) in [
        (0, "Declare major incident"),
        (1, "Open theatre 3 for trauma"),
        (0, "Cancel elective lists"),
    ] {
        let d = cs[i]
            .decision(
                "major-incident",
                DecisionKind::Decision,
                text,
                5_000 + i as u64,
            )
            .expect("sign");
        post(&mut cs, &mut net, i, &d, 5_000);
    }
    let log = cs[3]
        .export_decisions("major-incident", 9_000)
        .expect("export");
    assert_eq!(log.entries.len(), 3);
    let json = serde_json::to_vec(&log).expect("json");
    assert_eq!(verify_decision_log(&json), Ok(3));
    let mut edited = log.clone();
    edited.entries[1].entry.text = "Open theatre 4 for trauma".into();
    assert!(verify_decision_log(&serde_json::to_vec(&edited).expect("j")).is_err());
    let mut removed = log.clone();
    removed.entries.remove(1);
    assert!(verify_decision_log(&serde_json::to_vec(&removed).expect("j")).is_err());
    let mut reordered = log.clone();
    reordered.entries.swap(0, 2);
    assert!(verify_decision_log(&serde_json::to_vec(&reordered).expect("j")).is_err());
    let mut truncated = log;
    truncated.entries.pop();
    assert!(verify_decision_log(&serde_json::to_vec(&truncated).expect("j")).is_err());
}

/// Two commanders log at the same instant, each before seeing the other's
/// entry: the log forks, the next entry joins it, every device exports the
/// same log, and removing either branch is detected.
#[test]
fn concurrent_decisions_fork_and_rejoin_and_every_device_agrees() {
    let (mut cs, mut net) = staff(&[]);
    let early = cs[3]
        .decision("major-incident", DecisionKind::Decision, "Backdated", 1)
        .expect("sign");
    let first = cs[0]
        .decision("major-incident", DecisionKind::Decision, "Declare", 1_000)
        .expect("sign");
    post(&mut cs, &mut net, 0, &first, 1_000);
    // Alice and Bob sign before either has the other's entry; the server
    // takes Bob's first, and every device gets them in that order.
    let a = cs[0]
        .decision(
            "major-incident",
            DecisionKind::Decision,
            "Open theatre 3",
            2_000,
        )
        .expect("sign");
    let b = cs[1]
        .decision("major-incident", DecisionKind::Action, "Call in ICU", 2_000)
        .expect("sign");
    let out_a = cs[0]
        .send_structured("major-incident", &a, 2_000)
        .expect("a");
    let out_b = cs[1]
        .send_structured("major-incident", &b, 2_000)
        .expect("b");
    cs[1].sent_at_seq(&out_b.request.client_id, net.seq + 1);
    cs[0].sent_at_seq(&out_a.request.client_id, net.seq + 2);
    let (ab, cd) = cs.split_at_mut(2);
    let (alice, bob) = ab.split_at_mut(1);
    let (carol, dave) = cd.split_at_mut(1);
    net.deliver(
        &mut [&mut alice[0], &mut carol[0], &mut dave[0]],
        EntryKind::Application,
        &out_b.request.payload,
        2_000,
    );
    net.deliver(
        &mut [&mut bob[0], &mut carol[0], &mut dave[0]],
        EntryKind::Application,
        &out_a.request.payload,
        2_000,
    );
    let fork_c = cs[2].export_decisions("major-incident", 3_000).expect("c");
    let fork_d = cs[3].export_decisions("major-incident", 3_000).expect("d");
    assert_eq!(fork_c.heads.len(), 2, "forked: two heads");
    assert_eq!(fork_c.entries, fork_d.entries, "one order on every device");
    assert_eq!(fork_c.heads, fork_d.heads);
    for c in [0, 1] {
        let other = cs[c].export_decisions("major-incident", 3_000).expect("x");
        assert_eq!(other.entries, fork_c.entries, "the authors agree too");
    }
    assert_eq!(
        fork_c.entries[1].entry.text, "Call in ICU",
        "ordered as the server took them"
    );
    assert_eq!(
        verify_decision_log(&serde_json::to_vec(&fork_c).expect("j")),
        Ok(3)
    );
    // Carol's next entry follows both branches: one head again.
    let join = cs[2]
        .decision(
            "major-incident",
            DecisionKind::Decision,
            "Stand down",
            4_000,
        )
        .expect("sign");
    let Structured::Decision(j) = &join else {
        panic!("decision")
    };
    assert_eq!(j.entry.also.len(), 1, "joins the other branch");
    post(&mut cs, &mut net, 2, &join, 4_000);
    let log = cs[3].export_decisions("major-incident", 5_000).expect("d");
    assert_eq!(log.heads.len(), 1);
    assert_eq!(
        log.entries,
        cs[0]
            .export_decisions("major-incident", 5_000)
            .expect("a")
            .entries
    );
    let json = serde_json::to_vec(&log).expect("json");
    assert_eq!(verify_decision_log(&json), Ok(4));
    // Either branch removed, or the two swapped: detected.
    for i in [1, 2] {
        let mut removed = log.clone();
        removed.entries.remove(i);
        assert!(
            verify_decision_log(&serde_json::to_vec(&removed).expect("j")).is_err(),
            "entry {i} removed"
        );
    }
    let mut swapped = log.clone();
    swapped.entries.swap(1, 2);
    assert!(verify_decision_log(&serde_json::to_vec(&swapped).expect("j")).is_err());
    // Removing a head and claiming the rest is the whole log: the heads the
    // exporter signed no longer match.
    let mut cut = fork_c.clone();
    cut.entries.pop();
    cut.seqs.pop();
    assert!(verify_decision_log(&serde_json::to_vec(&cut).expect("j")).is_err());
    // Dave's entry, signed before he held any and dated before everything,
    // follows nothing: it still goes where the server took it, last.
    // Re-posting it changes nothing.
    post(&mut cs, &mut net, 3, &early, 6_000);
    post(&mut cs, &mut net, 3, &early, 6_001);
    let log = cs[0].export_decisions("major-incident", 7_000).expect("a");
    assert_eq!(log.entries.len(), 5, "the re-post is not a second entry");
    assert_eq!(
        log.entries.last().map(|d| d.entry.text.as_str()),
        Some("Backdated"),
        "dated at 1 ms, placed where it arrived"
    );
    assert_eq!(
        verify_decision_log(&serde_json::to_vec(&log).expect("j")),
        Ok(5)
    );
}

#[test]
fn casualty_board_keeps_the_latest_entry_per_mi_number() {
    let (mut cs, mut net) = staff(&[]);
    let cas = |mi: &str, t: Triage, loc: &str| {
        Structured::Casualty(Casualty {
            mi: mi.into(),
            triage: t,
            location: loc.into(),
            note: String::new(),
        })
    };
    post(
        &mut cs,
        &mut net,
        0,
        &cas("MI-0001", Triage::P1, "resus 1"),
        1,
    );
    post(
        &mut cs,
        &mut net,
        1,
        &cas("MI-0002", Triage::P3, "minors"),
        2,
    );
    post(&mut cs, &mut net, 2, &cas("MI-0001", Triage::P2, "CT"), 3);
    let board = cs[3].casualties("major-incident").expect("board");
    assert_eq!(board.len(), 2);
    assert_eq!(board[0].0.triage, Triage::P2);
    assert_eq!(board[0].0.location, "CT");
    assert!(
        cs[0]
            .send_structured("major-incident", &cas("Mr Smith", Triage::P1, "x"), 4)
            .is_err(),
        "no names: MI numbers only"
    );
}
