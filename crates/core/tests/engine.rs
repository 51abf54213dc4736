//! The engine's outbox against a scripted server, with no network: answers
//! lost before or after the server applied the post, answers repeated, 503s,
//! and the device restarting (sealed, then loaded from its records) between
//! any two steps. Every message the user wrote arrives once, in order.

mod common;

use std::collections::{BTreeMap, HashMap};

use ed25519_dalek::SigningKey;
use sitrep_core::engine::{Method, Reply, Step};
use sitrep_core::vault::{KdfParams, RecordId, Vault};
use sitrep_core::{Client, Event, INTEROP_CIPHERSUITE};
use sitrep_wire::api::{self, EntryKind};

/// The server's side: idempotent by client id, as the real one is.
#[derive(Default)]
struct Scripted {
    log: Vec<Vec<u8>>,
    by_id: HashMap<String, u64>,
}

impl Scripted {
    fn post(&mut self, body: &[u8]) -> (u16, Vec<u8>) {
        let req: api::SendRequest = serde_json::from_slice(body).expect("a SendRequest");
        let seq = match self.by_id.get(&req.client_id) {
            Some(s) => *s,
            None => {
                self.log.push(req.payload);
                let s = self.log.len() as u64;
                self.by_id.insert(req.client_id, s);
                s
            }
        };
        let resp = api::SendResponse {
            recipients: 1,
            duplicate: false,
            seq,
        };
        (200, serde_json::to_vec(&resp).expect("json"))
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A store key at the lowest Argon2id cost (tests only).
fn fast_vault() -> Vault {
    Vault::create(
        "passcode-123",
        KdfParams {
            m_kib: 8192,
            t: 1,
            p: 1,
        },
        [1; 16],
    )
    .expect("vault")
}

fn persist(c: &mut Client, vault: &Vault, disk: &mut BTreeMap<RecordId, Vec<u8>>) {
    let ch = c.changes(vault);
    if ch.clear {
        disk.clear();
    }
    for id in &ch.delete {
        disk.remove(id);
    }
    for (id, b) in ch.put {
        disk.insert(id, b);
    }
}

fn reload(vault: &Vault, disk: &BTreeMap<RecordId, Vec<u8>>) -> Client {
    let recs: Vec<_> = disk.iter().map(|(k, v)| (*k, v.clone())).collect();
    Client::from_records(vault, &recs).expect("the store opens after a restart")
}

fn pair() -> (Client, Client) {
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut a, _) = common::enrol(&org, INTEROP_CIPHERSUITE, "alice");
    let (mut b, kp_b) = common::enrol(&org, INTEROP_CIPHERSUITE, "bob");
    a.create_conversation("ward", "off").expect("create");
    let add = a.prepare_add("ward", &[kp_b]).expect("add");
    a.commit_accepted(&add.group_hex, 0).expect("merge");
    let w = add.request.welcome.expect("welcome");
    b.handle_entry(1, EntryKind::Welcome, &w, 0);
    (a, b)
}

#[test]
fn every_message_arrives_once_in_order_through_lost_answers_repeats_and_restarts() {
    for seed in 1..=20u64 {
        let (mut a, mut b) = pair();
        let vault = fast_vault();
        let mut disk = BTreeMap::new();
        persist(&mut a, &vault, &mut disk);
        let mut server = Scripted::default();
        let mut rng = Rng(seed);
        let mut written = Vec::new();
        let mut steps = 0;
        let total = 30;
        while written.len() < total || a.outbox_request().is_some() || !a.waiting().is_empty() {
            steps += 1;
            assert!(steps < 10_000, "seed {seed}: no progress");
            // Sometimes the user writes; sometimes the device restarts.
            if written.len() < total && rng.below(3) == 0 {
                let t = format!("obs {}", written.len());
                a.queue_text("ward", &t, 5, false).expect("queued");
                written.push(t);
                persist(&mut a, &vault, &mut disk);
            }
            if rng.below(5) == 0 {
                a = reload(&vault, &disk);
            }
            a.encrypt_queued(5);
            persist(&mut a, &vault, &mut disk);
            let Some(req) = a.outbox_request() else {
                continue;
            };
            assert_eq!(req.method, Method::Post);
            // The request is sealed before it goes: a restart now must find it.
            if rng.below(6) == 0 {
                a = reload(&vault, &disk);
                assert!(
                    a.outbox_request().is_some(),
                    "seed {seed}: lost by a restart"
                );
                continue;
            }
            let step = match rng.below(6) {
                0 => a.outbox_reply(&req.id, Reply::Lost, 5), // never reached the server
                1 => {
                    server.post(&req.body); // applied, answer lost
                    a.outbox_reply(&req.id, Reply::Lost, 5)
                }
                2 => a.outbox_reply(
                    &req.id,
                    Reply::Answered {
                        status: 503,
                        body: b"{}",
                    },
                    5,
                ),
                _ => {
                    let (status, body) = server.post(&req.body);
                    let s = a.outbox_reply(
                        &req.id,
                        Reply::Answered {
                            status,
                            body: &body,
                        },
                        5,
                    );
                    // The same answer arriving twice changes nothing.
                    if rng.below(3) == 0 {
                        assert_eq!(
                            a.outbox_reply(
                                &req.id,
                                Reply::Answered {
                                    status,
                                    body: &body
                                },
                                5
                            ),
                            Step::Unknown
                        );
                    }
                    s
                }
            };
            assert!(
                matches!(step, Step::Sent { .. } | Step::Retry),
                "seed {seed}: {step:?}"
            );
            // A restart between the answer and the write loses the answer
            // only: the post is made again and answered with the first seq.
            if rng.below(4) != 0 {
                persist(&mut a, &vault, &mut disk);
            }
        }
        // Bob reads the server's log: each message once, in the order written.
        let mut got = Vec::new();
        for (i, payload) in server.log.iter().enumerate() {
            for e in b.handle_entry(i as u64 + 2, EntryKind::Application, payload, 6) {
                if let Event::Message { entry, .. } = e {
                    got.push(entry.body);
                }
            }
        }
        assert_eq!(got, written, "seed {seed}");
        // And Alice's own history has each once.
        let own: Vec<_> = a
            .conversation("ward")
            .expect("conv")
            .history
            .iter()
            .filter(|h| h.kind == "text")
            .map(|h| h.body.clone())
            .collect();
        assert_eq!(own, written, "seed {seed}");
    }
}

#[test]
fn a_refusal_for_its_epoch_requeues_once_then_says_so_in_the_conversation() {
    let (mut a, _b) = pair();
    a.queue_text("ward", "bed 4 is free", 5, false)
        .expect("queued");
    a.encrypt_queued(5);
    let req = a.outbox_request().expect("request");
    let refusal =
        br#"{"error":"bad_message","message":"message is from an epoch the group has left"}"#;
    let step = a.outbox_reply(
        &req.id,
        Reply::Answered {
            status: 400,
            body: refusal,
        },
        6,
    );
    assert_eq!(step, Step::Requeued);
    assert!(a.outbox_request().is_none());
    let w = a.waiting();
    assert_eq!(w.len(), 1, "back in the queue");
    assert_eq!(w[0].id, req.id, "under the same id");
    a.encrypt_queued(7);
    let again = a.outbox_request().expect("encrypted again");
    assert_eq!(again.id, req.id);
    assert_ne!(again.body, req.body, "a new ciphertext");
    // Refused a second time: dropped, and the conversation says so.
    let step = a.outbox_reply(
        &again.id,
        Reply::Answered {
            status: 400,
            body: refusal,
        },
        8,
    );
    assert!(matches!(step, Step::Refused { .. }), "{step:?}");
    assert!(a.waiting().is_empty());
    let last = a
        .conversation("ward")
        .expect("conv")
        .history
        .last()
        .cloned()
        .expect("line");
    assert_eq!(last.kind, "system");
    assert!(
        last.body.contains("bed 4 is free") && last.body.contains("not sent"),
        "{}",
        last.body
    );
    // Removed from the conversation: not retried, said so.
    a.queue_text("ward", "porter to bay 3", 9, false)
        .expect("queued");
    a.encrypt_queued(9);
    let req = a.outbox_request().expect("request");
    let step = a.outbox_reply(
        &req.id,
        Reply::Answered {
            status: 403,
            body: br#"{"error":"not_a_member","message":"x"}"#,
        },
        10,
    );
    assert!(
        matches!(&step, Step::Refused { reason } if reason.contains("no longer in")),
        "{step:?}"
    );
}

/// A commit whose answer was lost is sealed before it goes, survives a
/// restart, and is settled by posting it again: taken (merged, and Bob
/// reads what Alice writes next), or overtaken (cleared, nothing merged).
#[test]
fn a_commit_whose_answer_was_lost_is_settled_after_a_restart() {
    use sitrep_core::engine::OpStep;
    let (mut a, mut b) = pair();
    let vault = fast_vault();
    let mut disk = BTreeMap::new();
    let prepared = a.prepare_update("ward").expect("update");
    a.record_commit(&prepared).expect("sealed before it goes");
    persist(&mut a, &vault, &mut disk);
    // Posted; the server took it; the answer was lost; the device restarts.
    let commit = prepared.request.commit.clone();
    let mut a = reload(&vault, &disk);
    let reqs = a.op_requests();
    assert_eq!(reqs.len(), 1, "the pending change survives the restart");
    assert_eq!(
        a.op_reply(&reqs[0].id, Reply::Lost, 1).expect("step"),
        OpStep::Retry,
        "still unknown: kept"
    );
    assert_eq!(a.op_requests().len(), 1);
    assert_eq!(
        a.op_reply(
            &reqs[0].id,
            Reply::Answered {
                status: 503,
                body: b""
            },
            1
        )
        .expect("step"),
        OpStep::Retry
    );
    // Asked again: the server answers with the first outcome.
    let step = a
        .op_reply(
            &reqs[0].id,
            Reply::Answered {
                status: 200,
                body: b"{}",
            },
            2,
        )
        .expect("step");
    assert!(matches!(step, OpStep::Accepted(_)), "{step:?}");
    assert!(a.op_requests().is_empty());
    assert_eq!(
        a.op_reply(
            &reqs[0].id,
            Reply::Answered {
                status: 200,
                body: b"{}"
            },
            2
        )
        .expect("step"),
        OpStep::Unknown,
        "a repeated answer changes nothing"
    );
    // Both are at the new epoch: Bob applies the commit, then reads Alice.
    b.handle_entry(2, EntryKind::Commit, &commit, 3);
    let out = a.encrypt_text("ward", "after the update", 4).expect("enc");
    let got = b.handle_entry(3, EntryKind::Application, &out.request.payload, 4);
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Message { entry, .. } if entry.body == "after the update")),
        "{got:?}"
    );

    // Overtaken: another member's commit took the epoch first.
    let prepared = a.prepare_update("ward").expect("update");
    a.record_commit(&prepared).expect("sealed");
    let reqs = a.op_requests();
    let step = a
        .op_reply(
            &reqs[0].id,
            Reply::Answered {
                status: 409,
                body: br#"{"error":"epoch_conflict","message":"another change came first","current_epoch":9}"#,
            },
            5,
        )
        .expect("step");
    assert_eq!(step, OpStep::Conflict);
    assert!(a.op_requests().is_empty(), "cleared");
    // Not merged: Alice still writes at the epoch Bob has.
    let out = a.encrypt_text("ward", "still readable", 6).expect("enc");
    let got = b.handle_entry(4, EntryKind::Application, &out.request.payload, 6);
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Message { entry, .. } if entry.body == "still readable")),
        "{got:?}"
    );
}

/// Two lines of the same kind ("could not be decrypted", here from replays)
/// are two entries with ids of their own, so a front end that shows new
/// entries by id shows each.
#[test]
fn two_undecryptable_messages_leave_two_lines() {
    let (mut a, mut b) = pair();
    for (i, text) in ["first", "second"].into_iter().enumerate() {
        let out = a.encrypt_text("ward", text, 1).expect("enc");
        let seq = 2 + 2 * i as u64;
        b.handle_entry(seq, EntryKind::Application, &out.request.payload, 1);
        // The same message again (a replay): cannot be decrypted twice.
        b.handle_entry(seq + 1, EntryKind::Application, &out.request.payload, 1);
    }
    let lines: Vec<_> = b
        .conversation("ward")
        .expect("conv")
        .history
        .iter()
        .filter(|h| h.body.contains("could not be decrypted"))
        .map(|h| h.id.clone())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_ne!(lines[0], lines[1]);
}
