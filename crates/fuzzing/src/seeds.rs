//! Seed inputs: valid encodings of each target's format, made with the real
//! encoders, so the fuzzer starts past the first parse error. Written to
//! `fuzz/corpus/<target>/seed-*` by `cargo run -p sitrep-fuzzing --example
//! seeds`; the replay test also checks that every target still accepts its
//! fresh seeds (a format change then shows up as a failing test).

use ed25519_dalek::Signer as _;
use serde::Serialize;
use serde_bytes::ByteBuf;
use sitrep_core::{Client, INTEROP_CIPHERSUITE, PendingEnrolment};
use sitrep_wire::api::*;
use sitrep_wire::content::{Content, Kind};
use sitrep_wire::credential::{DeviceCredential, SignedCredential};
use sitrep_wire::directory::SignedDirectory;
use sitrep_wire::frame;
use sitrep_wire::incident::*;
use sitrep_wire::meta::ConversationMeta;
use sitrep_wire::policy::{OrgPolicy, Previews, SignedPolicy};

use crate::client::{directory, encode_bundle, mutation, step};
use crate::keys;
use crate::reader::Writer;
use crate::server::{GroupScript, KP_DEVICE, KP_USER};
use crate::wire::{API_BODIES, INCIDENT_KINDS, META_GROUP, META_KEY};

/// Named seeds of one target.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Every target's seeds, by target name (as in [`crate::TARGETS`]).
pub fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("api", api()),
        ("frame", frames()),
        ("content", content()),
        ("meta", meta()),
        ("credential", credential()),
        ("policy", policy()),
        ("directory", directory_seeds()),
        ("incident", incident()),
        ("decision_log", decision_log()),
        ("export_bundle", export_bundle()),
        ("client", client()),
        ("key_package", key_package()),
        ("group", group()),
    ]
}

fn named(name: impl Into<String>, bytes: Vec<u8>) -> (String, Vec<u8>) {
    (name.into(), bytes)
}

fn api_seed<T: Serialize>(ty: &str, v: &T) -> (String, Vec<u8>) {
    api_seed_named(ty, ty, v)
}

fn api_seed_named<T: Serialize>(ty: &str, name: &str, v: &T) -> (String, Vec<u8>) {
    let sel = API_BODIES
        .iter()
        .position(|t| *t == ty)
        .expect("a type of the api target");
    let mut out = vec![u8::try_from(sel).expect("few API bodies")];
    out.extend(serde_json::to_vec(v).expect("API bodies encode"));
    named(name, out)
}

const CLIENT_ID: &str = "0123456789abcdef0123456789abcdef";

fn api() -> Seeds {
    let device = keys::device().verifying_key().to_bytes();
    let entry = InboxEntry {
        seq: 7,
        kind: EntryKind::Application,
        payload: vec![0, 1, 2, 3],
    };
    vec![
        api_seed(
            "EnrolRequest",
            &EnrolRequest {
                code: "ABCD-EFGH".into(),
                signature_key: device.to_vec(),
                proof: keys::device()
                    .sign(&EnrolRequest::proof_message("ABCD-EFGH", &device))
                    .to_bytes()
                    .to_vec(),
            },
        ),
        api_seed(
            "UploadKeyPackages",
            &UploadKeyPackages {
                key_packages: vec![vec![1, 2, 3], vec![4]],
                last_resort: Some(vec![5, 6]),
            },
        ),
        api_seed(
            "ClaimRequest",
            &ClaimRequest {
                user_ids: vec!["alice".into(), "bob".into()],
                device_ids: vec!["bob-d1".into()],
            },
        ),
        api_seed(
            "CreateGroup",
            &CreateGroup {
                group_id: vec![3; 16],
                group_info: vec![0, 1, 0, 4],
            },
        ),
        api_seed(
            "CommitRequest",
            &CommitRequest {
                client_id: CLIENT_ID.into(),
                epoch: 3,
                commit: vec![1; 8],
                welcome: Some(vec![2; 8]),
                add_devices: vec!["bob-d1".into()],
                remove_devices: vec!["carol-d1".into()],
            },
        ),
        api_seed("ReadRequest", &ReadRequest { seq: 12 }),
        api_seed(
            "SendRequest",
            &SendRequest {
                client_id: CLIENT_ID.into(),
                payload: vec![7; 24],
                urgent: false,
            },
        ),
        api_seed(
            "LeaveRequest",
            &LeaveRequest {
                client_id: CLIENT_ID.into(),
                proposal: vec![8; 12],
            },
        ),
        api_seed("AckRequest", &AckRequest { up_to: 99 }),
        api_seed(
            "AuditRequest",
            &AuditRequest {
                action: "records.search".into(),
                query_hmac: Some("3f".repeat(32)),
                messages: Vec::new(),
            },
        ),
        api_seed(
            "RejoinRequest",
            &RejoinRequest {
                client_id: CLIENT_ID.into(),
            },
        ),
        api_seed_named(
            "AuditRequest",
            "AuditRequest_transfer",
            &AuditRequest {
                action: "record.transfer".into(),
                query_hmac: None,
                messages: vec!["ab".repeat(16), CLIENT_ID.into()],
            },
        ),
        api_seed(
            "EnrolResponse",
            &EnrolResponse {
                org_public_key: keys::org_public().to_vec(),
                org_name: "Test Trust".into(),
                user_id: "alice".into(),
                device_id: "alice-d1".into(),
                credential: vec![1, 2, 3],
                token: "token".into(),
            },
        ),
        api_seed(
            "KeyPackageCount",
            &KeyPackageCount {
                available: 5,
                last_resort: true,
            },
        ),
        api_seed(
            "ClaimResponse",
            &ClaimResponse {
                key_packages: vec![ClaimedKeyPackage {
                    user_id: "bob".into(),
                    device_id: "bob-d1".into(),
                    key_package: vec![4; 10],
                }],
                missing: vec!["dave".into()],
            },
        ),
        api_seed(
            "CommitResponse",
            &CommitResponse {
                epoch: 4,
                duplicate: false,
            },
        ),
        api_seed(
            "MessageStatus",
            &MessageStatus {
                seq: 12,
                devices: vec![DeviceDelivery {
                    user_id: "bob".into(),
                    device_id: "bob-d1".into(),
                    delivered: true,
                    read_at: Some(1_780_000_000),
                }],
            },
        ),
        api_seed(
            "SendResponse",
            &SendResponse {
                recipients: 2,
                duplicate: false,
                seq: 13,
            },
        ),
        api_seed(
            "InboxResponse",
            &InboxResponse {
                entries: vec![entry],
                more: true,
            },
        ),
        api_seed(
            "DeviceList",
            &vec![DeviceInfo {
                device_id: "alice-d1".into(),
                enrolled_at: 1,
                revoked_at: Some(2),
                this_device: true,
            }],
        ),
        api_seed(
            "AuditResponse",
            &AuditResponse {
                seq: 3,
                hash: "00".repeat(32),
            },
        ),
        api_seed(
            "ApiError",
            &ApiError {
                error: "epoch_conflict".into(),
                message: "the group moved on".into(),
                current_epoch: Some(5),
            },
        ),
        api_seed(
            "Health",
            &Health {
                status: "ok".into(),
                org_fingerprint: "abcd".into(),
            },
        ),
    ]
}

fn frames() -> Seeds {
    crate::client::entry_kinds()
        .iter()
        .map(|&kind| {
            named(
                format!("{kind:?}"),
                frame::encode(u64::from(kind as u8) << 32 | 7, kind, b"payload"),
            )
        })
        .collect()
}

fn methane() -> Methane {
    Methane {
        major_incident: true,
        exact_location: "M4 junction 3, westbound".into(),
        incident_type: "coach versus lorry".into(),
        hazards: "fuel spill".into(),
        access: "via junction 2".into(),
        casualties: Casualties {
            estimated: 40,
            p1: 6,
            p2: 10,
            p3: 20,
            dead: 2,
        },
        emergency_services: "fire, police, 6 ambulances".into(),
    }
}

/// One valid item of every structured kind.
fn structured() -> Vec<(&'static str, Structured)> {
    let ethane = Methane {
        major_incident: false,
        ..methane()
    };
    vec![
        (
            "standby",
            Structured::Incident(IncidentMsg {
                incident: "MI-2026-01".into(),
                level: Level::Standby,
                methane: Some(ethane),
                note: "stand by".into(),
            }),
        ),
        (
            "declared",
            Structured::Incident(IncidentMsg {
                incident: "MI-2026-01".into(),
                level: Level::Declared,
                methane: Some(methane()),
                note: String::new(),
            }),
        ),
        (
            "stand_down",
            Structured::Incident(IncidentMsg {
                incident: "MI-2026-01".into(),
                level: Level::StandDown,
                methane: None,
                note: String::new(),
            }),
        ),
        (
            "callin",
            Structured::Callin(CallinReply {
                incident: "MI-2026-01".into(),
                availability: Availability::In(20),
                role: "anaesthetist".into(),
            }),
        ),
        (
            "alert",
            Structured::Alert(Alert {
                priority: Priority::Emergency,
                to: Target::Role("anaesthetist".into()),
                text: "CT down, divert".into(),
                ack_within_secs: 60,
                breakthrough: true,
                escalates: None,
            }),
        ),
        (
            "alert_bob",
            Structured::Alert(Alert {
                priority: Priority::Urgent,
                to: Target::User("bob".into()),
                text: "bed state please".into(),
                ack_within_secs: 30,
                breakthrough: false,
                escalates: Some((CLIENT_ID.into(), 1)),
            }),
        ),
        (
            "ack",
            Structured::Ack(Ack {
                alert: CLIENT_ID.into(),
            }),
        ),
        (
            "receipt",
            Structured::Receipt(Receipt {
                read: vec![CLIENT_ID.into()],
            }),
        ),
        (
            "decision",
            Structured::Decision(SignedDecision {
                entry: DecisionEntry {
                    kind: DecisionKind::Decision,
                    text: "Open the major incident plan".into(),
                    prev: "0".repeat(64),
                    also: vec!["1".repeat(64)],
                    at: 1,
                    author: "alice".into(),
                    device: "alice-d1".into(),
                },
                credential: "AAAA".into(),
                signature: "AAAA".into(),
            }),
        ),
        (
            "casualty",
            Structured::Casualty(Casualty {
                mi: "MI-0042".into(),
                triage: Triage::P1,
                // Non-ASCII text gives the fuzzer multi-byte UTF-8 to splice.
                location: "résus 2".into(),
                note: "→ CT, 5 min".into(),
            }),
        ),
    ]
}

fn kind_index(k: &Kind) -> u8 {
    let i = INCIDENT_KINDS
        .iter()
        .position(|x| x == k)
        .expect("a structured kind");
    u8::try_from(i).expect("few kinds")
}

fn content() -> Seeds {
    let mut out = vec![named(
        "text",
        Content::text([7; 16], 1_780_000_000_000, "hello").encode(),
    )];
    let mut reply = Content::text([1; 16], 5, "noted");
    reply.kind = Kind::Transferred;
    reply.reply_to = Some(ByteBuf::from(vec![7; 16]));
    reply.expires_at = Some(99);
    out.push(named("transferred", reply.encode()));
    for (name, s) in structured() {
        let (kind, body) = s.encode();
        let mut c = Content::text([2; 16], 6, body);
        c.kind = kind;
        out.push(named(name, c.encode()));
    }
    out
}

fn meta() -> Seeds {
    let m = ConversationMeta {
        v: 1,
        name: "resus".into(),
        created_by: "alice".into(),
        pid_policy: "warn".into(),
        retention_secs: 86_400,
        recorded: true,
        posters: vec!["alice".into(), "bob".into()],
    };
    let plain = ConversationMeta {
        posters: Vec::new(),
        recorded: false,
        retention_secs: 0,
        ..m.clone()
    };
    let sealed =
        |m: &ConversationMeta| sitrep_core::sealed_meta::seal(m, &META_KEY, META_GROUP, [1; 12]);
    vec![
        named("command", m.encode()),
        named("plain", plain.encode()),
        named("sealed_command", sealed(&m)),
        named("sealed_plain", sealed(&plain)),
    ]
}

fn device_credential(key: &[u8]) -> DeviceCredential {
    DeviceCredential {
        v: 1,
        org: "Test Trust".into(),
        user_id: "alice".into(),
        device_id: "alice-d1".into(),
        display_name: "Dr A".into(),
        role: "ED consultant".into(),
        signature_key: ByteBuf::from(key.to_vec()),
        issued_at: 1_780_000_000,
    }
}

fn credential() -> Seeds {
    let device = keys::device().verifying_key().to_bytes();
    let other_org = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
    vec![
        named(
            "device",
            SignedCredential::sign(&device_credential(&device), &keys::org()).encode(),
        ),
        named(
            "other_key",
            SignedCredential::sign(&device_credential(&[5; 32]), &keys::org()).encode(),
        ),
        named(
            "other_org",
            SignedCredential::sign(&device_credential(&device), &other_org).encode(),
        ),
    ]
}

fn policy() -> Seeds {
    let sign = |p: &OrgPolicy| {
        SignedPolicy::sign(p, &keys::org())
            .expect("a valid policy")
            .encode()
    };
    let strict = OrgPolicy {
        serial: 9,
        previews: Previews::Forbidden,
        two_step_required: true,
        records_user: Some("records".into()),
        record_all: true,
        records_retention_secs: 86_400 * 365,
        ..OrgPolicy::default()
    };
    vec![
        named("default", sign(&OrgPolicy::default())),
        named("strict", sign(&strict)),
    ]
}

fn directory_seeds() -> Seeds {
    let d = directory();
    let mut raw = Vec::new();
    ciborium::into_writer(&d, &mut raw).expect("CBOR to a Vec");
    vec![
        named(
            "signed",
            SignedDirectory::sign(&d, &keys::org()).expect("a valid directory"),
        ),
        named("unsigned", raw),
    ]
}

fn incident() -> Seeds {
    structured()
        .into_iter()
        .map(|(name, s)| {
            let (kind, body) = s.encode();
            let mut out = vec![kind_index(&kind)];
            out.extend_from_slice(body.as_bytes());
            named(name, out)
        })
        .collect()
}

/// A device of the test organisation (random keys, organisation-signed).
fn enrolled(user: &str) -> Client {
    let pending = PendingEnrolment::new(INTEROP_CIPHERSUITE).expect("a signature key");
    let mut cred = device_credential(&pending.signature_key());
    cred.user_id = user.into();
    cred.device_id = format!("{user}-d1");
    let resp = EnrolResponse {
        org_public_key: keys::org_public().to_vec(),
        org_name: "Test Trust".into(),
        user_id: user.into(),
        device_id: cred.device_id.clone(),
        credential: SignedCredential::sign(&cred, &keys::org()).encode(),
        token: "t".into(),
    };
    pending.finish("http://seeds", resp).expect("enrolment")
}

fn decision_log() -> Seeds {
    let mut a = enrolled("alice");
    let dir = SignedDirectory::sign(&directory(), &keys::org()).expect("a valid directory");
    a.apply_directory(&dir).expect("directory");
    a.create_conversation("resus", "warn")
        .expect("conversation");
    let mut out = Vec::new();
    for (i, text) in ["Open the major incident plan", "Call in theatres"]
        .iter()
        .enumerate()
    {
        let d = a
            .decision("resus", DecisionKind::Decision, text, 10 + i as u64)
            .expect("decision");
        let sent = a
            .send_structured("resus", &d, 10 + i as u64)
            .expect("logged");
        a.sent_at_seq(&sent.request.client_id, 20 + i as u64);
        let log = a.export_decisions("resus", 100).expect("export");
        out.push(named(
            format!("entries_{}", i + 1),
            serde_json::to_vec(&log).expect("JSON"),
        ));
        // The same chain in the first format (a single chain, signed head).
        let mut v1 = log;
        v1.format = "sitrep-decision-log-v1".into();
        v1.heads.clear();
        v1.seqs.clear();
        v1.missing.clear();
        let mut msg = v1.head.as_bytes().to_vec();
        msg.extend_from_slice(&(v1.entries.len() as u64).to_be_bytes());
        let sig = a
            .sign_detached(b"sitrep-decision-log-v1", &msg)
            .expect("signature");
        v1.signature = sitrep_wire::b64::encode(&sig);
        out.push(named(
            format!("v1_entries_{}", i + 1),
            serde_json::to_vec(&v1).expect("JSON"),
        ));
    }
    out
}

fn export_bundle() -> Seeds {
    let mut a = enrolled("alice");
    a.create_conversation("resus", "warn")
        .expect("conversation");
    let out = a.encrypt_text("resus", "bed 4 to CT", 5).expect("sent");
    a.sent_at_seq(&out.request.client_id, 1);
    let files = a.personal_export(3, 10).expect("export");
    let files: Vec<(String, Vec<u8>)> = files.into_iter().map(|f| (f.name, f.bytes)).collect();
    vec![named("personal", encode_bundle(&files))]
}

/// A client script (see [`crate::client`]) being written.
#[derive(Default)]
struct Script(Writer);

impl Script {
    fn step(&mut self, s: u8) -> &mut Writer {
        self.0.u8(s)
    }

    fn text(&mut self, conv: u8, body: &str) -> &mut Self {
        self.step(step::TEXT)
            .u8(conv)
            .chunk(body.as_bytes())
            .u8(mutation::NONE);
        self
    }

    fn item(&mut self, conv: u8, s: &Structured) -> &mut Self {
        let (kind, body) = s.encode();
        self.step(step::STRUCTURED)
            .u8(conv)
            .u8(kind_index(&kind))
            .chunk(body.as_bytes())
            .u8(mutation::NONE);
        self
    }

    fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0.out)
    }
}

fn client() -> Seeds {
    let items = structured();
    let item = |name: &str| {
        items
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
            .expect("a sample item")
    };
    let mut out = Vec::new();
    let mut s = Script::default();

    out.push(named("text", s.text(0, "hello from A").done()));
    s.step(step::TEXT)
        .u8(0)
        .chunk(b"tampered")
        .u8(mutation::FLIP)
        .u16(60)
        .u8(0x10);
    out.push(named("text_tampered", s.done()));
    s.text(0, "once");
    s.step(step::REPLAY).u8(mutation::NONE);
    out.push(named("replay", s.done()));

    s.item(0, &item("standby"))
        .item(0, &item("declared"))
        .item(0, &item("callin"))
        .item(0, &item("casualty"));
    s.step(step::VIEWS).u8(0);
    s.item(0, &item("stand_down"));
    out.push(named("incident", s.done()));

    s.item(0, &item("alert"));
    s.step(step::TIME).u16(600);
    s.step(step::BOB).u8(0).u8(3).chunk(b"");
    s.step(step::TIME).u16(3600);
    out.push(named("alert_escalates", s.done()));
    s.item(0, &item("alert_bob"))
        .item(0, &item("ack"))
        .item(0, &item("receipt"));
    out.push(named("alert_ack", s.done()));

    for (i, text) in ["Open the major incident plan", "Call in theatres"]
        .iter()
        .enumerate()
    {
        s.step(step::DECISION)
            .u8(0)
            .u8(i as u8)
            .chunk(text.as_bytes())
            .u8(mutation::NONE);
    }
    s.step(step::VIEWS).u8(0);
    out.push(named("decisions", s.done()));

    for (name, what) in [("update", 0u8), ("add_carol", 1)] {
        s.step(step::COMMIT).u8(0).u8(what).u8(mutation::NONE);
        s.text(0, "after the commit");
        out.push(named(format!("commit_{name}"), s.done()));
    }
    s.step(step::COMMIT).u8(0).u8(1).u8(mutation::NONE);
    s.step(step::COMMIT).u8(0).u8(2).u8(mutation::NONE);
    out.push(named("commit_add_remove", s.done()));
    s.step(step::COMMIT).u8(0).u8(3).u8(mutation::NONE);
    s.text(0, "bob cannot read this");
    out.push(named("commit_remove_bob", s.done()));

    s.step(step::LEAVE).u8(0).u8(mutation::NONE);
    s.step(step::BOB).u8(0).u8(1).chunk(b"");
    out.push(named("leave", s.done()));

    s.step(step::WELCOME)
        .chunk(b"theatres")
        .u32(86_400)
        .u8(3)
        .u8(mutation::NONE);
    s.text(1, "in theatres");
    s.step(step::BOB).u8(1).u8(0).chunk(b"bob posts");
    s.step(step::VIEWS).u8(1);
    out.push(named("welcome", s.done()));

    s.step(step::REVOKED).u8(0).u8(0).chunk(b"carol-d1");
    s.step(step::BOB).u8(0).u8(1).chunk(b"");
    out.push(named("revoked", s.done()));
    s.step(step::COMMIT).u8(0).u8(1).u8(mutation::NONE);
    s.step(step::REVOKED).u8(1).u8(0).chunk(b"carol-d1");
    s.step(step::BOB).u8(0).u8(1).chunk(b"");
    out.push(named("rejoin", s.done()));

    s.step(step::BOB).u8(0).u8(0).chunk(b"reply from B");
    s.step(step::BOB).u8(0).u8(2).chunk(b"");
    s.text(0, "after bob's update");
    out.push(named("bob", s.done()));

    for (i, kind) in crate::client::entry_kinds().iter().enumerate() {
        let i = u8::try_from(i).expect("few kinds");
        s.step(step::RAW).u8(i).chunk(&[0, 1, 0, 2, i, 0, 0, 0]);
        out.push(named(format!("raw_{kind:?}"), s.done()));
    }
    out
}

/// The MLS signature key a device enrolled with (from its credential).
fn signature_key_of(c: &Client) -> Vec<u8> {
    let sc = SignedCredential::decode(c.credential()).expect("our own credential");
    let cred: DeviceCredential =
        ciborium::from_reader(sc.credential.as_slice()).expect("our own credential");
    cred.signature_key.to_vec()
}

fn key_package() -> Seeds {
    assert_eq!(format!("{KP_USER}-d1"), KP_DEVICE);
    let mut bob = enrolled(KP_USER);
    let key = signature_key_of(&bob);
    let up = bob.key_packages(1).expect("key packages");
    let mut carol = enrolled("carol");
    let theirs = carol.key_packages(1).expect("key packages");
    let seed = |flags: u8, kp: &[u8]| {
        let mut w = Writer::default();
        w.u8(flags).chunk(&key).raw(kp);
        w.out
    };
    let last_resort = up.last_resort.as_deref().expect("a last-resort KeyPackage");
    vec![
        named("one_time", seed(0, &up.key_packages[0])),
        named("last_resort", seed(1, last_resort)),
        named("not_last_resort", seed(1, &up.key_packages[0])),
        named("another_device", seed(0, &theirs.key_packages[0])),
    ]
}

/// Alice with a fresh conversation, and the `group` script it starts.
fn creator() -> (Client, GroupScript) {
    let mut a = enrolled("alice");
    let key = signature_key_of(&a);
    let (_, create) = a
        .create_conversation("resus", "warn")
        .expect("conversation");
    let s = GroupScript::new(&create.group_id, &key, &create.group_info);
    (a, s)
}

fn group() -> Seeds {
    let mut out = Vec::new();
    let (_, s) = creator();
    out.push(named("created", s.0.out));

    let (mut a, mut s) = creator();
    let msg0 = a.encrypt_text("resus", "epoch 0", 1).expect("text");
    s.application(0, &msg0.request.payload);
    for i in 0..2u64 {
        let up = a.prepare_update("resus").expect("update");
        a.commit_accepted(&up.group_hex, 2 + i).expect("merge");
        s.commit(&up.request.commit, None);
    }
    let msg2 = a.encrypt_text("resus", "epoch 2", 5).expect("text");
    s.application(0, &msg2.request.payload)
        .application(2, &msg0.request.payload);
    out.push(named("updates", s.0.out));

    let (mut a, mut s) = creator();
    let mut bob = enrolled("bob");
    let up = bob.key_packages(1).expect("key packages");
    let kp = ClaimedKeyPackage {
        user_id: "bob".into(),
        device_id: "bob-d1".into(),
        key_package: up.key_packages[0].clone(),
    };
    let add = a.prepare_add("resus", &[kp]).expect("add");
    a.commit_accepted(&add.group_hex, 2).expect("merge");
    s.commit(&add.request.commit, add.request.welcome.as_deref());
    out.push(named("add", s.0.out));

    let (mut a, mut s) = creator();
    if let Ok((_, leave)) = a.prepare_leave("resus") {
        s.leave(&leave.proposal);
        out.push(named("leave", s.0.out));
    }
    out
}
