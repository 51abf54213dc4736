//! Targets for the client core: inbox entries through `Client::handle_entry`,
//! and the two exports anyone can be handed to verify.
//!
//! The `client` target plays a small script against two enrolled devices in
//! one conversation. Keys come from the OS (the core takes no RNG), so a
//! fuzzer cannot carry a valid ciphertext from one process to the next: the
//! script makes Alice produce real MLS messages (texts, structured incident
//! items, signed decisions, commits, a leave proposal, a Welcome) inside the
//! run, optionally flips, truncates or extends them, and hands them to Bob,
//! next to raw entries of any kind. Between steps Bob acts and is queried the
//! way a front end would after a sync.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_bytes::ByteBuf;
use sitrep_core::export::verify_bundle;
use sitrep_core::incident::{DecisionLog, verify_decision_log};
use sitrep_core::{
    Client, Event, INTEROP_CIPHERSUITE, OrgPolicy, Outgoing, PendingEnrolment, SignedPolicy,
};
use sitrep_wire::api::{ClaimedKeyPackage, EnrolResponse, EntryKind};
use sitrep_wire::credential::{DeviceCredential, SignedCredential};
use sitrep_wire::directory::{Directory, Role, SignedDirectory};
use sitrep_wire::incident::{DecisionKind, Structured};

use crate::keys;
use crate::reader::{Reader, Writer};
use crate::wire::INCIDENT_KINDS;

/// `verify_decision_log` on an exported decision log (JSON).
pub fn decision_log(data: &[u8]) -> bool {
    let verdict = verify_decision_log(data);
    if let Ok(n) = verdict {
        let log: DecisionLog = serde_json::from_slice(data).expect("a verified log parses");
        assert_eq!(n, log.entries.len());
    }
    if let Ok(log) = serde_json::from_slice::<DecisionLog>(data)
        && let Ok(o) = sitrep_core::incident::log_order(&log.entries, &log.seqs)
    {
        assert_eq!(o.entries.len(), log.entries.len());
        assert_eq!(o.seqs.len(), log.seqs.len());
        for e in &log.entries {
            assert!(o.entries.contains(e), "ordering keeps every entry");
        }
    }
    verdict.is_ok()
}

/// Parse the `export_bundle` input: `(u8 name length, name, u16 length,
/// bytes)*`, a bundle directory's files by name.
fn bundle_files(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut r = Reader::new(data);
    let mut files = BTreeMap::new();
    while !r.is_empty() {
        let n = usize::from(r.u8());
        let name = String::from_utf8_lossy(r.bytes(n)).into_owned();
        files.insert(name, r.chunk().to_vec());
    }
    files
}

/// The bundle encoding [`bundle_files`] reads.
pub(crate) fn encode_bundle(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::default();
    for (name, bytes) in files {
        let n = u8::try_from(name.len()).expect("bundle file names are short");
        w.u8(n).raw(name.as_bytes()).chunk(bytes);
    }
    w.out
}

/// `export::verify_bundle` on a records or personal export bundle.
pub fn export_bundle(data: &[u8]) -> bool {
    let files = bundle_files(data);
    match verify_bundle(&files) {
        Ok(b) => {
            for f in &b.manifest.files {
                assert_eq!(files.get(&f.name).map(|b| b.len() as u64), Some(f.bytes));
            }
            assert_eq!(files.len(), b.manifest.files.len() + 1);
            true
        }
        Err(_) => false,
    }
}

const ORG_NAME: &str = "Test Trust";
const CONV: &str = "resus";
/// Fixed start of the script's clock (ms).
const T0: u64 = 1_780_000_000_000;
/// Steps per script: enough for any story, bounded so a run stays fast.
const MAX_STEPS: usize = 24;

/// Devices enrolled and joined once per process; each run restores them.
struct Fixture {
    alice: Vec<u8>,
    bob: Vec<u8>,
    carol_kp: ClaimedKeyPackage,
    /// A one-time KeyPackage of Bob's the fixture did not use, for a Welcome.
    bob_kp: ClaimedKeyPackage,
}

fn enrol(user: &str, n: usize) -> (Client, Vec<ClaimedKeyPackage>) {
    let pending = PendingEnrolment::new(INTEROP_CIPHERSUITE).expect("a signature key");
    let device = format!("{user}-d1");
    let cred = DeviceCredential {
        v: 1,
        org: ORG_NAME.into(),
        user_id: user.into(),
        device_id: device.clone(),
        display_name: format!("Dr {user}"),
        role: "ED consultant".into(),
        signature_key: ByteBuf::from(pending.signature_key()),
        issued_at: 0,
    };
    let resp = EnrolResponse {
        org_public_key: keys::org_public().to_vec(),
        org_name: ORG_NAME.into(),
        user_id: user.into(),
        device_id: device.clone(),
        credential: SignedCredential::sign(&cred, &keys::org()).encode(),
        token: "t".into(),
    };
    let mut c = pending.finish("http://fuzz", resp).expect("enrolment");
    let up = c.key_packages(n).expect("key packages");
    c.last_resort_uploaded();
    let kps = up
        .key_packages
        .into_iter()
        .map(|key_package| ClaimedKeyPackage {
            user_id: user.into(),
            device_id: device.clone(),
            key_package,
        })
        .collect();
    (c, kps)
}

fn role(id: &str, team: &str, holders: &[&str], deputy: Option<&str>, declare: bool) -> Role {
    Role {
        id: id.into(),
        name: id.into(),
        team: team.into(),
        holders: holders.iter().map(|h| h.to_string()).collect(),
        deputy: deputy.map(String::from),
        can_declare: declare,
        commander: declare,
        eligible: holders.iter().map(|h| h.to_string()).collect(),
        ..Role::default()
    }
}

/// The directory both devices hold: Alice may declare; alerts escalate
/// from the anaesthetist to the site manager (Bob).
pub(crate) fn directory() -> Directory {
    Directory {
        v: 1,
        serial: 1,
        roles: vec![
            role(
                "ed-consultant",
                "ed",
                &["alice"],
                Some("site-manager"),
                true,
            ),
            role("site-manager", "management", &["bob"], None, false),
            role(
                "anaesthetist",
                "anaesthetics",
                &["carol"],
                Some("site-manager"),
                false,
            ),
        ],
        callout_standby: vec!["site-manager".into()],
        callout_declared: vec!["site-manager".into(), "anaesthetist".into()],
        ..Directory::default()
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (mut alice, _) = enrol("alice", 1);
        let (mut bob, mut bob_kps) = enrol("bob", 2);
        let (_carol, mut carol_kps) = enrol("carol", 1);
        let dir = SignedDirectory::sign(&directory(), &keys::org()).expect("valid directory");
        let policy = OrgPolicy {
            serial: 2,
            records_user: Some("records".into()),
            ..OrgPolicy::default()
        };
        let policy = SignedPolicy::sign(&policy, &keys::org())
            .expect("valid policy")
            .encode();
        for c in [&mut alice, &mut bob] {
            c.apply_directory(&dir).expect("directory");
            c.apply_policy(&policy).expect("policy");
        }
        alice
            .create_conversation_with(CONV, "warn", 0, false, T0)
            .expect("conversation");
        let add = alice
            .prepare_add(CONV, &[bob_kps.remove(0)])
            .expect("add bob");
        alice.commit_accepted(&add.group_hex, T0).expect("merge");
        let welcome = add.request.welcome.expect("a Welcome for bob");
        let ev = bob.handle_entry(1, EntryKind::Welcome, &welcome, T0);
        assert!(matches!(&ev[..], [Event::Joined { .. }]), "fixture: {ev:?}");
        Fixture {
            alice: alice.to_bytes().to_vec(),
            bob: bob.to_bytes().to_vec(),
            carol_kp: carol_kps.remove(0),
            bob_kp: bob_kps.remove(0),
        }
    })
}

/// Script steps (the first byte of each, modulo their number).
pub(crate) mod step {
    /// `kind: u8, payload: chunk`: a raw entry to Bob.
    pub const RAW: u8 = 0;
    /// `conv: u8, body: chunk, mutation`: Alice sends a text.
    pub const TEXT: u8 = 1;
    /// `conv: u8, kind: u8, body: chunk, mutation`: Alice sends the
    /// structured item the body decodes to (if it is valid).
    pub const STRUCTURED: u8 = 2;
    /// `conv: u8, action: u8, text: chunk, mutation`: Alice logs a decision.
    pub const DECISION: u8 = 3;
    /// `conv: u8, what: u8 (update, add carol, remove carol, remove bob),
    /// mutation`: Alice commits.
    pub const COMMIT: u8 = 4;
    /// `conv: u8, mutation`: Alice proposes to leave.
    pub const LEAVE: u8 = 5;
    /// `name: chunk, retention: u32, flags: u8, mutation`: Alice creates a
    /// conversation and adds Bob; Bob gets the Welcome.
    pub const WELCOME: u8 = 6;
    /// `kind: u8 (revoked, rejoin), conv: u8 (255: gid from a chunk),
    /// device: chunk`: the server's note that a device was revoked or asks to
    /// be re-added.
    pub const REVOKED: u8 = 7;
    /// `mutation`: the last MLS entry again, under a new sequence number.
    pub const REPLAY: u8 = 8;
    /// `conv: u8, what: u8 (text, commit pending, update, receipts), body:
    /// chunk`: Bob acts; Alice gets the result.
    pub const BOB: u8 = 9;
    /// `seconds: u16`: the clock moves; Bob's timers run.
    pub const TIME: u8 = 10;
    /// `conv: u8`: Bob's views and exports, which must verify.
    pub const VIEWS: u8 = 11;
    /// How many steps there are.
    pub const COUNT: u8 = 12;
}

/// How a delivery is tampered with: `0` none, `1` xor `(pos: u16, x: u8)`,
/// `2` truncate at `pos: u16`, `3` append a chunk.
pub(crate) mod mutation {
    pub const NONE: u8 = 0;
    pub const FLIP: u8 = 1;
}

/// One conversation as Bob shows it: name, members (user, device), and
/// how many entries people wrote.
type View = (String, Vec<(String, String)>, usize);

struct Run<'a> {
    r: Reader<'a>,
    alice: Client,
    bob: Client,
    bob_seq: u64,
    alice_seq: u64,
    now: u64,
    convs: Vec<String>,
    last: Option<(EntryKind, Vec<u8>)>,
    accepted: bool,
}

/// Every inbox entry kind the wire knows (new kinds join automatically).
pub(crate) fn entry_kinds() -> &'static [EntryKind] {
    static K: OnceLock<Vec<EntryKind>> = OnceLock::new();
    K.get_or_init(|| (0..=u8::MAX).filter_map(EntryKind::from_u8).collect())
}

/// Bob's events that show something was taken in (not just refused).
fn took_effect(events: &[Event]) -> bool {
    events.iter().any(|e| !matches!(e, Event::Refused { .. }))
}

impl Run<'_> {
    fn conv(&mut self) -> String {
        let i = usize::from(self.r.u8()) % self.convs.len();
        self.convs[i].clone()
    }

    /// Apply the script's mutation; `true` if the bytes changed.
    fn mutate(&mut self, p: &mut Vec<u8>) -> bool {
        match self.r.u8() % 4 {
            1 if !p.is_empty() => {
                let i = usize::from(self.r.u16()) % p.len();
                let x = self.r.u8() | 1;
                trace!("tamper: byte {i} of {} ^= {x:#04x}", p.len());
                p[i] ^= x;
                true
            }
            2 if !p.is_empty() => {
                let n = usize::from(self.r.u16()) % p.len();
                trace!("tamper: truncate {} to {n}", p.len());
                p.truncate(n);
                true
            }
            3 => {
                let extra = self.r.chunk();
                trace!("tamper: append {} bytes", extra.len());
                p.extend_from_slice(extra);
                !extra.is_empty()
            }
            _ => false,
        }
    }

    /// Hand an MLS message Alice made to Bob, perhaps tampered with.
    ///
    /// A tampered message must change nothing Bob shows: no message, no
    /// join, no member added or removed. It may put Bob out of step (a
    /// commit he cannot apply, which the server accepted, leaves him behind
    /// the group; he says so and asks to be re-added): that notice is a
    /// system line and is allowed. See BENCHMARKS.md, Fuzzing, for why a
    /// commit with only a bad membership tag does that.
    fn hand_to_bob(&mut self, kind: EntryKind, mut payload: Vec<u8>) {
        let tampered = self.mutate(&mut payload);
        let before = tampered.then(|| self.bob_view());
        let events = self.deliver(kind, &payload);
        if let Some(before) = before {
            assert!(
                !events.iter().any(|e| matches!(
                    e,
                    Event::Message { .. } | Event::Joined { .. } | Event::Removed { .. }
                )),
                "a tampered {kind:?} was taken in: {events:?}"
            );
            assert_eq!(
                self.bob_view(),
                before,
                "a tampered {kind:?} changed what Bob shows"
            );
        }
        self.last = Some((kind, payload));
    }

    /// What Bob shows of each conversation: its members, and how many
    /// entries people (not the system) wrote.
    fn bob_view(&self) -> Vec<View> {
        self.bob
            .conversations()
            .map(|c| {
                let members = self
                    .bob
                    .members(&c.name)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| (m.user_id, m.device_id))
                    .collect();
                let said = c.history.iter().filter(|e| e.sender != "system").count();
                (c.name.clone(), members, said)
            })
            .collect()
    }

    /// Alice's application message to Bob; the server's answer files it in
    /// Alice's own history, as a front end would.
    fn alice_sends(&mut self, out: Outgoing) {
        self.hand_to_bob(EntryKind::Application, out.request.payload);
        self.alice.sent_at_seq(&out.request.client_id, self.bob_seq);
    }

    fn deliver(&mut self, kind: EntryKind, payload: &[u8]) -> Vec<Event> {
        self.bob_seq += 1;
        let events = self.bob.handle_entry(self.bob_seq, kind, payload, self.now);
        trace!("bob <- {kind:?} ({} bytes): {events:?}", payload.len());
        assert_eq!(self.bob.last_seq(), self.bob_seq);
        self.accepted |= took_effect(&events);
        events
    }

    fn hand_to_alice(&mut self, kind: EntryKind, payload: &[u8]) {
        self.alice_seq += 1;
        let events = self
            .alice
            .handle_entry(self.alice_seq, kind, payload, self.now);
        trace!("alice <- {kind:?}: {events:?}");
    }

    fn step(&mut self) {
        self.now += 1_000;
        let s = self.r.u8() % step::COUNT;
        trace!("step {s}");
        match s {
            step::RAW => {
                let kinds = entry_kinds();
                let kind = kinds[usize::from(self.r.u8()) % kinds.len()];
                let payload = self.r.chunk();
                self.deliver(kind, payload);
            }
            step::TEXT => {
                let conv = self.conv();
                let body = self.r.text();
                if let Ok(out) = self.alice.encrypt_text(&conv, &body, self.now) {
                    self.alice_sends(out);
                }
            }
            step::STRUCTURED => {
                let conv = self.conv();
                let kind = &INCIDENT_KINDS[usize::from(self.r.u8()) % INCIDENT_KINDS.len()];
                let body = self.r.text();
                if let Ok(Some(item)) = Structured::decode(kind, &body)
                    && let Ok(out) = self.alice.send_structured(&conv, &item, self.now)
                {
                    self.alice_sends(out);
                }
            }
            step::DECISION => {
                let conv = self.conv();
                let kind = match self.r.u8() % 2 {
                    0 => DecisionKind::Decision,
                    _ => DecisionKind::Action,
                };
                let text = self.r.text();
                if let Ok(item) = self.alice.decision(&conv, kind, &text, self.now)
                    && let Ok(out) = self.alice.send_structured(&conv, &item, self.now)
                {
                    self.alice_sends(out);
                }
            }
            step::COMMIT => {
                let conv = self.conv();
                let f = fixture();
                let prepared = match self.r.u8() % 4 {
                    0 => self.alice.prepare_update(&conv),
                    1 => self
                        .alice
                        .prepare_add(&conv, std::slice::from_ref(&f.carol_kp)),
                    2 => self.alice.prepare_remove(&conv, "carol"),
                    _ => self.alice.prepare_remove(&conv, "bob"),
                };
                if let Ok(p) = prepared
                    && self.alice.commit_accepted(&p.group_hex, self.now).is_ok()
                {
                    self.hand_to_bob(EntryKind::Commit, p.request.commit);
                }
            }
            step::LEAVE => {
                let conv = self.conv();
                if let Ok((_, leave)) = self.alice.prepare_leave(&conv) {
                    self.hand_to_bob(EntryKind::Proposal, leave.proposal);
                }
            }
            step::WELCOME => {
                let name = self.r.text();
                let retention = u64::from(self.r.u32());
                let flags = self.r.u8();
                let posters: Vec<String> = match flags & 2 {
                    0 => Vec::new(),
                    _ => vec!["alice".into()],
                };
                let created = self.alice.create_conversation_full(
                    &name,
                    "warn",
                    retention,
                    flags & 1 == 1,
                    &posters,
                    self.now,
                );
                trace!("alice creates {name:?}: {created:?}");
                if created.is_ok() {
                    self.convs.push(name.clone());
                    if let Ok(add) = self
                        .alice
                        .prepare_add(&name, std::slice::from_ref(&fixture().bob_kp))
                        && self.alice.commit_accepted(&add.group_hex, self.now).is_ok()
                        && let Some(w) = add.request.welcome
                    {
                        self.hand_to_bob(EntryKind::Welcome, w);
                    }
                }
            }
            step::REVOKED => {
                let kind = match self.r.u8() % 2 {
                    0 => EntryKind::Revoked,
                    _ => EntryKind::Rejoin,
                };
                let sel = self.r.u8();
                let gid = match sel {
                    255 => self.r.chunk().to_vec(),
                    _ => {
                        let conv = self.convs[usize::from(sel) % self.convs.len()].clone();
                        self.alice
                            .group_hex(&conv)
                            .ok()
                            .and_then(|h| hex::decode(h).ok())
                            .unwrap_or_default()
                    }
                };
                let device = self.r.chunk();
                let mut p = vec![u8::try_from(gid.len()).unwrap_or(u8::MAX)];
                p.extend_from_slice(&gid);
                p.extend_from_slice(device);
                self.deliver(kind, &p);
            }
            step::REPLAY => {
                if let Some((kind, mut p)) = self.last.clone() {
                    self.mutate(&mut p);
                    let events = self.deliver(kind, &p);
                    assert!(
                        !events
                            .iter()
                            .any(|e| matches!(e, Event::Message { .. } | Event::Joined { .. })),
                        "a replayed {kind:?} was taken in again: {events:?}"
                    );
                }
            }
            step::BOB => {
                let conv = self.conv();
                let what = self.r.u8() % 4;
                let body = self.r.text();
                self.bob_acts(&conv, what, &body);
            }
            step::TIME => {
                self.now += u64::from(self.r.u16()) * 1_000;
                let _ = self.bob.escalations_due(self.now);
                let _ = self.bob.alerts_for_me(self.now);
                let _ = self.bob.purge_expired(self.now);
            }
            _ => {
                let conv = self.conv();
                self.views(&conv);
            }
        }
    }

    fn bob_acts(&mut self, conv: &str, what: u8, body: &str) {
        match what {
            0 => {
                if let Ok(out) = self.bob.encrypt_text(conv, body, self.now) {
                    self.hand_to_alice(EntryKind::Application, &out.request.payload);
                    self.bob.sent_at_seq(&out.request.client_id, self.alice_seq);
                }
            }
            1 | 2 => {
                let prepared = match what {
                    1 => self.bob.prepare_commit_pending(conv).ok().flatten(),
                    _ => self.bob.prepare_update(conv).ok(),
                };
                if let Some(p) = prepared
                    && self.bob.commit_accepted(&p.group_hex, self.now).is_ok()
                {
                    self.hand_to_alice(EntryKind::Commit, &p.request.commit);
                }
            }
            _ => {
                for (name, item) in self.bob.pending_receipts(self.now) {
                    if let Ok(out) = self.bob.send_structured(&name, &item, self.now) {
                        self.hand_to_alice(EntryKind::Application, &out.request.payload);
                    }
                }
            }
        }
    }

    /// What a front end shows after a sync; what Bob exports must verify.
    fn views(&mut self, conv: &str) {
        let _ = self.bob.members(conv);
        let _ = self.bob.casualties(conv);
        let ids: Vec<String> = self.bob.incidents().map(|i| i.id.clone()).collect();
        for id in ids {
            let _ = self.bob.callin_tally(&id);
        }
        if let Ok(log) = self.bob.export_decisions(conv, self.now) {
            let json = serde_json::to_vec(&log).expect("a decision log encodes");
            if let Err(e) = verify_decision_log(&json) {
                panic!("Bob's own decision log does not verify: {e}");
            }
        }
        if let Ok(files) = self.bob.personal_export(1, self.now) {
            let files: BTreeMap<String, Vec<u8>> =
                files.into_iter().map(|f| (f.name, f.bytes)).collect();
            if let Err(e) = verify_bundle(&files) {
                panic!("Bob's own personal export does not verify: {e}");
            }
        }
    }
}

/// A script of inbox entries, real and tampered, to a device in a
/// conversation (see the module docs). No panic; tampered or replayed MLS
/// messages are never taken in; what Bob exports verifies; Bob's state still
/// saves and loads afterwards.
pub fn client(data: &[u8]) -> bool {
    let f = fixture();
    let alice = Client::from_bytes(&f.alice).expect("the fixture loads");
    let bob = Client::from_bytes(&f.bob).expect("the fixture loads");
    let mut run = Run {
        r: Reader::new(data),
        bob_seq: bob.last_seq(),
        alice_seq: alice.last_seq(),
        alice,
        bob,
        now: T0,
        convs: vec![CONV.to_string()],
        last: None,
        accepted: false,
    };
    for _ in 0..MAX_STEPS {
        if run.r.is_empty() {
            break;
        }
        run.step();
    }
    let saved = run.bob.to_bytes();
    let reloaded = Client::from_bytes(&saved).expect("state after untrusted input reloads");
    assert_eq!(reloaded.last_seq(), run.bob.last_seq());
    assert_eq!(
        reloaded.conversations().count(),
        run.bob.conversations().count()
    );
    run.accepted
}
