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

/// The texts in conversation "ward", in history order.
fn ward_texts(c: &Client) -> Vec<String> {
    c.conversation("ward")
        .expect("conv")
        .history
        .iter()
        .filter(|h| h.kind == "text")
        .map(|h| h.body.clone())
        .collect()
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
        let own = ward_texts(&a);
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

/// The server's side of a whole sync, as the real one answers it: per-device
/// inboxes with cursors (a page of 3, so a sync pages), posts idempotent by
/// client id and fanned out to the other member.
#[derive(Default)]
struct Node {
    log: Vec<(u64, String, Vec<u8>)>,
    by_id: HashMap<String, u64>,
    /// Posts repeated under a client id with a different ciphertext: the
    /// device encrypted the same message twice (a ratchet generation used
    /// twice, after its first ciphertext was lost by a power cut).
    reencrypted: usize,
    cursor: HashMap<String, u64>,
    /// KeyPackages to hand out, by user.
    kps: HashMap<String, api::ClaimedKeyPackage>,
    /// Groups registered, by creator.
    groups: HashMap<String, String>,
    seq: u64,
}

impl Node {
    fn handle(&mut self, who: &str, req: &sitrep_core::engine::Request) -> (u16, Vec<u8>) {
        let json = |v: serde_json::Value| (200, v.to_string().into_bytes());
        let path = req.path.as_str();
        match req.method {
            Method::Get if path == "/v1/policy" => json(serde_json::json!({ "policy": null })),
            Method::Get if path == "/v1/directory" => {
                json(serde_json::json!({ "directory": null }))
            }
            Method::Get if path == "/v1/devices" => json(serde_json::json!([])),
            Method::Get if path == "/v1/keypackages/count" => {
                json(serde_json::json!({ "available": 20, "last_resort": true }))
            }
            Method::Get if path.starts_with("/v1/inbox?after=") => {
                let after: u64 = path["/v1/inbox?after=".len()..]
                    .split('&')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("after");
                let from = after.max(*self.cursor.get(who).unwrap_or(&0));
                let mut pending = self
                    .log
                    .iter()
                    .filter(|(seq, sender, _)| *seq > from && sender != who);
                let entries: Vec<api::InboxEntry> = pending
                    .by_ref()
                    .take(3)
                    .map(|(seq, _, p)| api::InboxEntry {
                        seq: *seq,
                        kind: EntryKind::Application,
                        payload: p.clone(),
                    })
                    .collect();
                let more = pending.next().is_some();
                let r = api::InboxResponse { entries, more };
                (200, serde_json::to_vec(&r).expect("json"))
            }
            Method::Post if path == "/v1/inbox/ack" => {
                let a: api::AckRequest = serde_json::from_slice(&req.body).expect("ack");
                let c = self.cursor.entry(who.to_string()).or_default();
                *c = (*c).max(a.up_to);
                json(serde_json::json!({}))
            }
            Method::Post if path == "/v1/keypackages/claim" => {
                let r: api::ClaimRequest = serde_json::from_slice(&req.body).expect("claim");
                let mut out = api::ClaimResponse {
                    key_packages: Vec::new(),
                    missing: Vec::new(),
                };
                for u in r.user_ids {
                    match self.kps.get(&u) {
                        Some(kp) => out.key_packages.push(kp.clone()),
                        None => out.missing.push(u),
                    }
                }
                (200, serde_json::to_vec(&out).expect("json"))
            }
            Method::Post if path == "/v1/groups" => {
                let r: api::CreateGroup = serde_json::from_slice(&req.body).expect("create");
                let g = hex::encode(&r.group_id);
                match self.groups.get(&g) {
                    Some(by) if by != who => (
                        409,
                        br#"{"error":"group_exists","message":"exists"}"#.to_vec(),
                    ),
                    _ => {
                        self.groups.insert(g, who.to_string());
                        json(serde_json::json!({}))
                    }
                }
            }
            Method::Post if path.ends_with("/commit") => json(serde_json::json!({})),
            Method::Post if path.ends_with("/messages") => {
                let r: api::SendRequest = serde_json::from_slice(&req.body).expect("send");
                let seq = match self.by_id.get(&r.client_id) {
                    Some(s) => {
                        if self.log.iter().any(|(q, _, p)| q == s && *p != r.payload) {
                            self.reencrypted += 1;
                        }
                        *s
                    }
                    None => {
                        self.seq += 1;
                        self.log.push((self.seq, who.to_string(), r.payload));
                        self.by_id.insert(r.client_id, self.seq);
                        self.seq
                    }
                };
                let resp = api::SendResponse {
                    recipients: 1,
                    duplicate: false,
                    seq,
                };
                (200, serde_json::to_vec(&resp).expect("json"))
            }
            _ => (
                404,
                br#"{"error":"not_found","message":"no such route"}"#.to_vec(),
            ),
        }
    }
}

/// One device: its client, its sealed records (as written, and as of the
/// last durable write: what a power cut leaves), and its clock.
struct Device {
    name: &'static str,
    client: Client,
    vault: Vault,
    disk: BTreeMap<RecordId, Vec<u8>>,
    synced: BTreeMap<RecordId, Vec<u8>>,
    now: u64,
}

enum Ran {
    Done,
    Failed(sitrep_core::engine::Failure),
    Restarted,
}

impl Device {
    fn write(&mut self, durable: bool) {
        persist(&mut self.client, &self.vault, &mut self.disk);
        if durable {
            self.synced = self.disk.clone();
        }
    }

    /// A crash of the process (what was written stays), or a power cut
    /// (only what was written durably stays).
    fn restart(&mut self, power_cut: bool) -> Ran {
        if power_cut {
            self.disk = self.synced.clone();
        }
        self.client = reload(&self.vault, &self.disk);
        Ran::Restarted
    }

    /// Drive one sync as a driver would, with faults from `rng` (none when
    /// `None`): answers lost before or after the server applied the
    /// request, 503s, and restarts (from the sealed records) before a
    /// request goes or after an answer came but before it was written.
    fn sync(&mut self, node: &mut Node, mut rng: Option<&mut Rng>) -> Ran {
        use sitrep_core::engine::{Action, Sync, Task};
        let mut task = Sync::new();
        let mut fault = |n: u64| rng.as_mut().is_some_and(|r| r.below(n) == 0);
        loop {
            self.now += 1;
            match task.poll(&mut self.client, self.now) {
                Err(f) => {
                    self.write(false);
                    return Ran::Failed(f);
                }
                Ok(Action::Request(req)) => {
                    self.write(req.durable);
                    if fault(12) {
                        let cut = fault(2);
                        return self.restart(cut);
                    }
                    let answer;
                    let reply = if fault(10) {
                        Reply::Lost
                    } else if fault(10) {
                        node.handle(self.name, &req);
                        Reply::Lost
                    } else if fault(10) {
                        Reply::Answered {
                            status: 503,
                            body: b"{}",
                        }
                    } else {
                        answer = node.handle(self.name, &req);
                        Reply::Answered {
                            status: answer.0,
                            body: &answer.1,
                        }
                    };
                    let fed = task.feed(&mut self.client, reply, self.now);
                    if fault(12) {
                        let cut = fault(2);
                        return self.restart(cut);
                    }
                    if let Err(f) = fed {
                        self.write(false);
                        return Ran::Failed(f);
                    }
                }
                Ok(Action::Wait { until_ms }) => self.now = until_ms,
                Ok(Action::Done(_)) => {
                    self.write(false);
                    if fault(6) {
                        return self.restart(true);
                    }
                    return Ran::Done;
                }
                Ok(other) => panic!("unexpected action {other:?}"),
            }
        }
    }

    fn texts(&self) -> Vec<String> {
        ward_texts(&self.client)
    }
}

/// Whole syncs (policy, directory, inbox pages and acks, outbox) on both
/// ends of a conversation, through lost answers (before and after the
/// server applied them), 503s, and restarts between any two steps (crashes,
/// and power cuts that lose what was written lazily): every
/// message the user wrote arrives once, in order, on the other device, and
/// is once in the writer's own history; failures are retryable ones only.
#[test]
fn whole_syncs_deliver_every_message_once_in_order_through_faults_and_restarts() {
    for seed in 1..=20u64 {
        let (a, b) = pair();
        let mut rng = Rng(seed);
        let mut node = Node {
            seq: 1,
            ..Node::default()
        };
        let mut devices = [a, b].map(|c| Device {
            name: "",
            client: c,
            vault: fast_vault(),
            disk: BTreeMap::new(),
            synced: BTreeMap::new(),
            now: 10,
        });
        devices[0].name = "alice";
        devices[1].name = "bob";
        for d in &mut devices {
            d.write(true);
        }
        let mut written = Vec::new();
        for round in 0..60 {
            if round < 40 && rng.below(2) == 0 {
                let t = format!("obs {}", written.len());
                let now = devices[0].now;
                devices[0]
                    .client
                    .queue_text("ward", &t, now, false)
                    .expect("queued");
                devices[0].write(true);
                written.push(t);
            }
            let who = rng.below(2) as usize;
            if let Ran::Failed(f) = devices[who].sync(&mut node, Some(&mut rng)) {
                assert!(f.retryable(), "seed {seed}: {f}");
            }
        }
        // The network heals: a clean sync each, Alice first.
        for d in &mut devices {
            assert!(
                matches!(d.sync(&mut node, None), Ran::Done),
                "seed {seed}: a clean sync completes"
            );
        }
        let [alice, bob] = &mut devices;
        bob.client = reload(&bob.vault, &bob.disk);
        assert_eq!(
            bob.texts(),
            written,
            "seed {seed}: bob has each once, in order"
        );
        assert_eq!(alice.texts(), written, "seed {seed}: alice's own history");
        assert!(
            alice.client.waiting().is_empty(),
            "seed {seed}: outbox empty"
        );
        let ids: std::collections::HashSet<_> = node.by_id.keys().collect();
        assert_eq!(
            ids.len(),
            node.log.len(),
            "seed {seed}: no client id stored twice"
        );
        assert_eq!(
            node.log.len(),
            written.len(),
            "seed {seed}: nothing posted twice"
        );
    }
}

/// The live client's timers on an injected clock: a first sync, then the
/// push channel; a push wakes a sync; the idle lock (not while typed work
/// waits); failures back off exponentially with jitter, capped; the
/// fallback poll.
#[test]
fn live_timers_follow_the_injected_clock() {
    use sitrep_core::engine::live::{BACKOFF_MAX_MS, BACKOFF_MIN_MS, POLL_MS};
    use sitrep_core::engine::{Due, Live};
    let (a, _) = pair();
    let t0 = 1_000_000;
    let mut live = Live::new(60, t0, 7);
    assert_eq!(live.next(&a, t0, false), Due::Sync, "a first sync at once");
    live.synced(true, t0);
    assert_eq!(live.next(&a, t0, false), Due::Connect);
    live.connected(true, t0);
    // Nothing due until the idle lock (60 s) or the poll (30 s), whichever first.
    assert_eq!(
        live.next(&a, t0 + 1, false),
        Due::Sleep {
            until_ms: t0 + POLL_MS
        }
    );
    live.frame(false);
    assert!(
        matches!(live.next(&a, t0 + 2, false), Due::Sleep { .. }),
        "a text frame is not a push"
    );
    live.frame(true);
    assert_eq!(
        live.next(&a, t0 + 2, false),
        Due::Sync,
        "a push wakes a sync"
    );
    live.synced(true, t0 + 2);
    assert_eq!(
        live.next(&a, t0 + 2 + POLL_MS, false),
        Due::Sync,
        "the fallback poll"
    );
    live.synced(true, t0 + 2 + POLL_MS);
    // Idle: locked at 60 s since the last input, unless typed work waits.
    assert_eq!(live.next(&a, t0 + 60_000, false), Due::Lock);
    assert_ne!(live.next(&a, t0 + 60_000, true), Due::Lock);
    live.input(t0 + 50_000);
    assert_ne!(live.next(&a, t0 + 60_000, false), Due::Lock);
    assert_eq!(live.next(&a, t0 + 110_000, false), Due::Lock);

    // The server goes away: each failure waits longer, with up to a
    // quarter of jitter, capped; a success resets it.
    let mut live = Live::new(0, t0, 7);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..10 {
        assert_eq!(live.next(&a, now, false), Due::Sync);
        live.synced(false, now);
        let Due::Sleep { until_ms } = live.next(&a, now + 1, false) else {
            panic!("backing off");
        };
        waits.push(until_ms - now);
        assert_eq!(live.next(&a, until_ms - 1, false), Due::Sleep { until_ms });
        now = until_ms;
    }
    let mut base = BACKOFF_MIN_MS;
    for w in &waits {
        assert!(*w >= base && *w <= base + base / 4, "{waits:?}");
        base = (base * 2).min(BACKOFF_MAX_MS);
    }
    assert!(*waits.last().expect("waits") <= BACKOFF_MAX_MS + BACKOFF_MAX_MS / 4);
    // Something typed meanwhile is taken at once (it goes to the outbox).
    live.synced(false, now);
    live.wake();
    assert_eq!(live.next(&a, now + 1, false), Due::Sync);
    live.synced(true, now + 1);
    assert_eq!(live.next(&a, now + 1, false), Due::Connect);
    live.connected(false, now + 1);
    let Due::Sleep { until_ms } = live.next(&a, now + 2, false) else {
        panic!("backing off the push channel");
    };
    assert!(
        until_ms - (now + 1) <= BACKOFF_MIN_MS + BACKOFF_MIN_MS / 4,
        "reset after a success"
    );
    // A push channel that closes as soon as it opens is not reconnected in
    // a loop: each reconnect waits longer (a sync runs in between).
    let mut live = Live::new(0, t0, 9);
    let mut now = t0;
    live.synced(true, now);
    let mut waits = Vec::new();
    for _ in 0..6 {
        assert_eq!(live.next(&a, now, false), Due::Connect);
        live.connected(true, now);
        live.disconnected(now + 1);
        assert_eq!(
            live.next(&a, now + 1, false),
            Due::Sync,
            "catch up after a close"
        );
        live.synced(true, now + 2);
        let Due::Sleep { until_ms } = live.next(&a, now + 2, false) else {
            panic!("waiting to reconnect");
        };
        waits.push(until_ms - now);
        now = until_ms;
    }
    assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
    // One that stayed up a while is reconnected at once.
    live.connected(true, now);
    live.disconnected(now + 60_000);
    live.synced(true, now + 60_001);
    assert_eq!(live.next(&a, now + 60_001, false), Due::Connect);
    // Typed work waiting (an /ack while offline) delays the lock one idle
    // period, no more.
    let mut live = Live::new(60, t0, 1);
    live.synced(false, t0);
    assert_ne!(live.next(&a, t0 + 60_000, true), Due::Lock);
    assert_eq!(live.next(&a, t0 + 120_000, true), Due::Lock);
    // Two clients cut off together do not come back in the same instant.
    let (mut x, mut y) = (Live::new(0, t0, 1), Live::new(0, t0, 2));
    x.synced(false, t0);
    y.synced(false, t0);
    assert_ne!(x.next(&a, t0, false), y.next(&a, t0, false));
}

/// What must be durable before a request: the first post after encrypting
/// (it carries the new ciphertexts, sealed all at once), an ack (it acts on
/// what was processed), a commit; not a GET, and not later posts of the
/// same batch (what changed since is only what answers would say again).
#[test]
fn requests_say_what_must_be_durable_before_they_go() {
    use sitrep_core::engine::{Action, Outbox, Task};
    let (mut a, _) = pair();
    for i in 0..3 {
        a.queue_text("ward", &format!("m{i}"), 1, false)
            .expect("queued");
    }
    let mut node = Node::default();
    let mut t = Outbox::new();
    let mut durable = Vec::new();
    loop {
        match t.poll(&mut a, 2).expect("poll") {
            Action::Request(r) => {
                durable.push(r.durable);
                let (status, body) = node.handle("alice", &r);
                t.feed(
                    &mut a,
                    Reply::Answered {
                        status,
                        body: &body,
                    },
                    2,
                )
                .expect("feed");
            }
            Action::Done(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(durable, [true, false, false]);
    let prepared = a.prepare_update("ward").expect("update");
    a.record_commit(&prepared).expect("sealed");
    assert!(a.op_requests().iter().all(|r| r.durable), "a commit");
    let mut s = sitrep_core::engine::Sync::new();
    let Action::Request(first) = s.poll(&mut a, 3).expect("poll") else {
        panic!("a request first");
    };
    assert_eq!(first.path, "/v1/policy");
    assert!(!first.durable, "a GET");
}

/// A push calls for a catch-up (no device list, no KeyPackage count); a
/// whole sync comes at start, after an outage and on the poll.
#[test]
fn a_push_calls_for_a_catch_up_and_the_poll_for_a_whole_sync() {
    use sitrep_core::engine::live::POLL_MS;
    use sitrep_core::engine::{Action, Live, Sync, Task};
    let (mut a, _) = pair();
    let paths = |a: &mut Client, mut s: Sync| {
        let mut node = Node::default();
        let mut out = Vec::new();
        loop {
            match s.poll(a, 5).expect("poll") {
                Action::Request(r) => {
                    out.push(r.path.clone());
                    let (status, body) = node.handle("alice", &r);
                    s.feed(
                        a,
                        Reply::Answered {
                            status,
                            body: &body,
                        },
                        5,
                    )
                    .expect("feed");
                }
                Action::Done(_) => return out,
                other => panic!("{other:?}"),
            }
        }
    };
    let full = paths(&mut a, Sync::new());
    assert!(full.iter().any(|p| p == "/v1/devices"), "{full:?}");
    assert!(
        full.iter().any(|p| p == "/v1/keypackages/count"),
        "{full:?}"
    );
    let quick = paths(&mut a, Sync::catch_up());
    assert!(
        !quick
            .iter()
            .any(|p| p == "/v1/devices" || p == "/v1/keypackages/count"),
        "{quick:?}"
    );
    assert!(
        quick.iter().any(|p| p == "/v1/directory"),
        "judged under the current directory"
    );
    assert!(quick.iter().any(|p| p.starts_with("/v1/inbox")));

    let t0 = 1_000;
    let mut live = Live::new(0, t0, 3);
    assert!(live.full_sync_due(t0), "at start");
    live.synced(true, t0);
    assert!(!live.full_sync_due(t0 + 10), "a push");
    assert!(live.full_sync_due(t0 + POLL_MS), "the poll");
    live.synced(false, t0 + POLL_MS + 1);
    assert!(live.full_sync_due(t0 + POLL_MS + 2), "after an outage");
}

/// Creating a conversation is all or nothing: an unknown member refuses it
/// before anything exists; a registration never confirmed (every answer
/// lost) or refused leaves no conversation behind, and the name is free;
/// one lost answer is posted again and the member is added.
#[test]
fn creating_a_conversation_is_all_or_nothing_through_lost_answers() {
    use sitrep_core::engine::{Action, Create, Failure, Setup, Task};
    let org = SigningKey::from_bytes(&[7u8; 32]);
    let (mut a, _) = common::enrol(&org, INTEROP_CIPHERSUITE, "alice");
    let (_, kp) = common::enrol(&org, INTEROP_CIPHERSUITE, "carol");
    let mut node = Node::default();
    node.kps.insert("carol".into(), kp);
    let setup = || Setup {
        pid_policy: "warn".into(),
        ..Setup::default()
    };
    // `lose(i)`: lose the answer to the i-th request to /v1/groups (applied or not).
    let run = |a: &mut Client,
               node: &mut Node,
               members: &[&str],
               lose: &dyn Fn(usize) -> Option<u16>|
     -> Result<(), Failure> {
        let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        let mut t = Create::new(a, "theatre", &members, setup());
        let mut now = 10;
        let mut registers = 0;
        loop {
            match t.poll(a, now)? {
                Action::Request(r) => {
                    let answer = node.handle("alice", &r);
                    let reply = if r.path == "/v1/groups" {
                        registers += 1;
                        match lose(registers) {
                            Some(0) => Reply::Lost,
                            Some(s) => Reply::Answered {
                                status: s,
                                body: br#"{"error":"forbidden","message":"no"}"#,
                            },
                            None => Reply::Answered {
                                status: answer.0,
                                body: &answer.1,
                            },
                        }
                    } else {
                        Reply::Answered {
                            status: answer.0,
                            body: &answer.1,
                        }
                    };
                    t.feed(a, reply, now)?;
                }
                Action::Wait { until_ms } => now = until_ms,
                Action::Done(_) => return Ok(()),
                other => panic!("{other:?}"),
            }
        }
    };
    let err = run(&mut a, &mut node, &["carol", "nobody"], &|_| None).expect_err("unknown member");
    assert!(err.to_string().contains("nothing was created"), "{err}");
    assert!(a.conversation("theatre").is_err());
    assert!(node.groups.is_empty(), "nothing registered");

    let err = run(&mut a, &mut node, &["carol"], &|_| Some(0)).expect_err("never confirmed");
    assert!(err.retryable(), "{err}");
    assert!(err.to_string().contains("nothing was created"), "{err}");
    assert!(a.conversation("theatre").is_err(), "abandoned");

    let err = run(&mut a, &mut node, &["carol"], &|_| Some(403)).expect_err("refused");
    assert!(!err.retryable(), "{err}");
    assert!(a.conversation("theatre").is_err(), "abandoned");

    run(&mut a, &mut node, &["carol"], &|i| (i == 1).then_some(0))
        .expect("created after one lost answer");
    let members: Vec<_> = a
        .members("theatre")
        .expect("members")
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(members, ["alice", "carol"]);
}

/// A hostile or broken inbox: a page out of order loses nothing (and the
/// ack covers the highest seq); a page replayed for ever with `more: true`
/// cannot keep a pull going.
#[test]
fn a_hostile_inbox_cannot_hide_a_message_or_keep_a_pull_going() {
    use sitrep_core::engine::{Action, Pull, Task};
    let (mut a, mut b) = pair();
    let m1 = a
        .encrypt_text("ward", "first", 1)
        .expect("enc")
        .request
        .payload;
    let m2 = a
        .encrypt_text("ward", "second", 1)
        .expect("enc")
        .request
        .payload;
    let entry = |seq, payload: &Vec<u8>| api::InboxEntry {
        seq,
        kind: EntryKind::Application,
        payload: payload.clone(),
    };
    let page = |more| {
        serde_json::to_vec(&api::InboxResponse {
            entries: vec![entry(3, &m2), entry(2, &m1), entry(3, &m2)],
            more,
        })
        .expect("json")
    };
    let mut acks = Vec::new();
    let mut requests = 0;
    let mut t = Pull::new();
    loop {
        match t.poll(&mut b, 2).expect("poll") {
            Action::Request(r) => {
                requests += 1;
                assert!(requests < 20, "the pull never ends");
                let body = if r.path == "/v1/inbox/ack" {
                    let ack: api::AckRequest = serde_json::from_slice(&r.body).expect("ack");
                    acks.push(ack.up_to);
                    b"{}".to_vec()
                } else {
                    page(true)
                };
                t.feed(
                    &mut b,
                    Reply::Answered {
                        status: 200,
                        body: &body,
                    },
                    2,
                )
                .expect("feed");
            }
            Action::Done(_) => break,
            other => panic!("{other:?}"),
        }
    }
    let texts = ward_texts(&b);
    assert_eq!(texts, ["first", "second"]);
    assert_eq!(acks.first(), Some(&3), "the ack covers the highest seq");
    assert_eq!(b.last_seq(), 3);
}

/// A structured item refused for its epoch (a decision, an alert's
/// acknowledgement) is encrypted again like a text, not dropped: an
/// acknowledgement lost there would let the alert escalate.
#[test]
fn a_structured_item_refused_for_its_epoch_is_encrypted_again() {
    use sitrep_wire::incident::DecisionKind;
    let (mut a, _b) = pair();
    let item = a
        .decision("ward", DecisionKind::Decision, "open the second theatre", 5)
        .expect("decision");
    a.send_structured("ward", &item, 5).expect("sent");
    let req = a.outbox_request().expect("request");
    let step = a.outbox_reply(
        &req.id,
        Reply::Answered {
            status: 409,
            body: br#"{"error":"epoch_conflict","message":"the group moved on"}"#,
        },
        6,
    );
    assert_eq!(step, Step::Requeued);
    let w = a.waiting();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].body.contains("open the second theatre"),
        "shown as a summary: {}",
        w[0].body
    );
    a.encrypt_queued(7);
    let again = a.outbox_request().expect("encrypted again");
    assert_eq!(again.id, req.id, "under the same id");
    assert_ne!(again.body, req.body, "a new ciphertext");
}
