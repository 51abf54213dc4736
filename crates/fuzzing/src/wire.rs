//! Targets for the decoders in `sitrep-wire`.

use std::any::type_name;
use std::collections::BTreeSet;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sitrep_wire::api::{self, *};
use sitrep_wire::content::{self as wcontent, Content, Kind};
use sitrep_wire::credential::{self as wcred, CredentialError, DeviceCredential, SignedCredential};
use sitrep_wire::directory::{Directory, SignedDirectory};
use sitrep_wire::frame::{self as wframe, FrameError};
use sitrep_wire::incident::{Level, Structured, Target};
use sitrep_wire::meta::{ConversationMeta, MAX_META_BYTES};
use sitrep_wire::policy::SignedPolicy;

use crate::keys;

/// Invariants of one decoded JSON body, beyond its round trip.
trait Check {
    fn check(&self) {}
}

impl Check for EnrolRequest {}
impl Check for UploadKeyPackages {}
impl Check for CreateGroup {}
impl Check for ReadRequest {}
impl Check for SendRequest {}
impl Check for LeaveRequest {}
impl Check for AckRequest {}
impl Check for EnrolResponse {}
impl Check for KeyPackageCount {}
impl Check for ClaimResponse {}
impl Check for CommitResponse {}
impl Check for MessageStatus {}
impl Check for SendResponse {}
impl Check for AuditResponse {}
impl Check for ApiError {}
impl Check for Health {}
impl Check for Vec<DeviceInfo> {}
impl Check for RejoinRequest {}

impl Check for ClaimRequest {
    fn check(&self) {
        for id in self.user_ids.iter().chain(&self.device_ids) {
            id_is_sane(id);
        }
    }
}

impl Check for CommitRequest {
    fn check(&self) {
        if api::valid_client_id(&self.client_id) {
            assert!(self.client_id.len() == 32 && hex::decode(&self.client_id).is_ok());
        }
        for id in self.add_devices.iter().chain(&self.remove_devices) {
            id_is_sane(id);
        }
    }
}

impl Check for AuditRequest {
    /// The server writes `detail()` into the audit log: printable ASCII only.
    fn check(&self) {
        if let Some(d) = self.detail() {
            assert!(AUDIT_ACTIONS.contains(&self.action.as_str()));
            assert!(d.bytes().all(|b| (0x20..0x7f).contains(&b)), "{d:?}");
        }
    }
}

impl Check for InboxResponse {
    /// What the HTTP inbox returns, re-framed as the WebSocket would carry
    /// it, must read back the same.
    fn check(&self) {
        for e in &self.entries {
            let f = wframe::encode(e.seq, e.kind, &e.payload);
            assert_eq!(
                wframe::decode(&f, usize::MAX),
                Ok((e.seq, e.kind, &e.payload[..]))
            );
        }
    }
}

/// A valid id is short, ASCII and safe in a path segment.
fn id_is_sane(id: &str) {
    if api::valid_id(id) {
        assert!(id.len() <= MAX_ID_LEN && !id.contains('/') && id.is_ascii());
    }
}

/// Decode, re-encode, decode again: the two encodings must be equal.
fn json<T: Serialize + DeserializeOwned + Check>(body: &[u8]) -> bool {
    let Ok(x) = serde_json::from_slice::<T>(body) else {
        return false;
    };
    let once = serde_json::to_vec(&x).expect("a decoded body encodes");
    let back: T = serde_json::from_slice(&once)
        .unwrap_or_else(|e| panic!("{} does not decode its own encoding: {e}", type_name::<T>()));
    let twice = serde_json::to_vec(&back).expect("a decoded body encodes");
    assert_eq!(once, twice, "{} round trip", type_name::<T>());
    x.check();
    true
}

type DeviceList = Vec<DeviceInfo>;

macro_rules! api_bodies {
    ($($t:ident),* $(,)?) => {
        /// The JSON bodies of the `api` target, by selector (the first input
        /// byte modulo their number).
        pub const API_BODIES: &[&str] = &[$(stringify!($t)),*];

        fn api_body(selector: usize, body: &[u8]) -> bool {
            let handlers: &[fn(&[u8]) -> bool] = &[$(json::<$t>),*];
            handlers[selector % handlers.len()](body)
        }
    };
}

// Requests the server decodes, then answers a device decodes (the server is
// not trusted with content, so what it sends is untrusted too).
api_bodies!(
    EnrolRequest,
    UploadKeyPackages,
    ClaimRequest,
    CreateGroup,
    CommitRequest,
    ReadRequest,
    SendRequest,
    LeaveRequest,
    AckRequest,
    AuditRequest,
    RejoinRequest,
    EnrolResponse,
    KeyPackageCount,
    ClaimResponse,
    CommitResponse,
    MessageStatus,
    SendResponse,
    InboxResponse,
    DeviceList,
    AuditResponse,
    ApiError,
    Health,
);

/// Every JSON body of the HTTP API: the first byte picks the type
/// ([`API_BODIES`]), the rest is the body. Round trip stable, ids sane.
pub fn api(data: &[u8]) -> bool {
    match data.split_first() {
        Some((&sel, body)) => api_body(usize::from(sel), body),
        None => false,
    }
}

/// The bound the CLI's WebSocket client applies to one frame.
const MAX_FRAME: usize = 1 << 24;

/// `frame::decode`: a decoded frame re-encodes to exactly its bytes, and each
/// error is the one the bytes deserve.
pub fn frame(data: &[u8]) -> bool {
    if let Some(tight) = data.len().checked_sub(1) {
        assert_eq!(
            wframe::decode(data, tight),
            Err(FrameError::TooLarge(tight))
        );
    }
    match wframe::decode(data, MAX_FRAME) {
        Ok((seq, kind, payload)) => {
            assert_eq!(wframe::encode(seq, kind, payload), data);
            assert_eq!(EntryKind::from_u8(kind as u8), Some(kind));
            true
        }
        Err(FrameError::Truncated) => {
            assert!(data.len() < wframe::HEADER_LEN);
            false
        }
        Err(FrameError::UnknownKind(k)) => {
            assert_eq!(data[8], k);
            assert_eq!(EntryKind::from_u8(k), None);
            false
        }
        Err(e) => panic!("unexpected frame error {e:?} for {} bytes", data.len()),
    }
}

/// The history kind a client stores for a content kind.
fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::Transferred => "transferred",
        Kind::Incident => "incident",
        Kind::Callin => "callin",
        Kind::Alert => "alert",
        Kind::Ack => "ack",
        Kind::Receipt => "receipt",
        Kind::Decision => "decision",
        Kind::Casualty => "casualty",
        _ => "unknown",
    }
}

/// `Content::decode` (the plaintext of every MLS application message), then
/// its body as a receiving client reads it.
pub fn content(data: &[u8]) -> bool {
    let Ok(c) = Content::decode(data) else {
        return false;
    };
    assert!(data.len() <= sitrep_wire::MAX_CONTENT_BYTES);
    assert_eq!(c.v, wcontent::VERSION);
    assert_eq!(c.id.len(), 16);
    assert!(c.body.len() <= sitrep_wire::MAX_BODY_BYTES);
    assert!(c.reply_to.as_ref().is_none_or(|r| r.len() == 16));
    let enc = c.encode();
    let back = Content::decode(&enc).expect("decoded content re-encodes within bounds");
    assert_eq!(back, c);
    assert_eq!(back.encode(), enc, "the encoding is deterministic");
    assert_eq!(c.id_hex().len(), 32);
    let _ = Structured::decode(&c.kind, &c.body);
    let _ = sitrep_core::incident::summary(kind_name(&c.kind), &c.body);
    true
}

/// Key and group id the `meta` target seals and opens metadata under.
pub(crate) const META_KEY: [u8; 32] = [3; 32];
/// See [`META_KEY`].
pub(crate) const META_GROUP: &[u8] = &[4; 16];

/// `ConversationMeta::decode` (the 0xF5A1 group-context extension) and
/// `sealed_meta::open` (how it travels in the group context): what decodes
/// round-trips and seals to something that opens only with its key and group.
pub fn meta(data: &[u8]) -> bool {
    use sitrep_core::sealed_meta::{open, seal};
    let opened = open(data, &META_KEY, META_GROUP);
    if let Ok(m) = &opened {
        assert!(open(data, &META_KEY, &[5; 16]).is_err());
        assert_eq!(ConversationMeta::decode(&m.encode()).as_ref(), Ok(m));
    }
    let Ok(m) = ConversationMeta::decode(data) else {
        return opened.is_ok();
    };
    assert!(data.len() <= MAX_META_BYTES);
    assert!(m.v == 1 && !m.name.is_empty() && m.name.len() <= 256);
    assert!(m.posters.len() <= 1000 && m.posters.iter().all(|p| api::valid_id(p)));
    assert_eq!(ConversationMeta::decode(&m.encode()).as_ref(), Ok(&m));
    let sealed = seal(&m, &META_KEY, META_GROUP, [6; 12]);
    assert_eq!(open(&sealed, &META_KEY, META_GROUP).ok().as_ref(), Some(&m));
    assert!(open(&sealed, &[9; 32], META_GROUP).is_err());
    assert!(open(&sealed, &META_KEY, &[5; 16]).is_err());
    true
}

/// `SignedCredential::decode`, `verify` against the fixed organisation key and
/// `verify_detached`: decode(encode) is the identity, nothing verifies under a
/// key that never signed, and what verifies names the leaf key it was checked
/// against.
pub fn credential(data: &[u8]) -> bool {
    let detached = wcred::verify_detached(
        &keys::org_public(),
        data,
        keys::DETACHED_LABEL,
        keys::DETACHED_MSG,
        &keys::detached_signature(),
    );
    let Ok(sc) = SignedCredential::decode(data) else {
        assert!(detached.is_err());
        return false;
    };
    assert_eq!(SignedCredential::decode(&sc.encode()), Ok(sc.clone()));
    let inner: Option<DeviceCredential> = ciborium::from_reader(sc.credential.as_slice()).ok();
    let leaf = inner.map(|c| c.signature_key.to_vec()).unwrap_or_default();
    assert_eq!(
        sc.verify(&keys::stranger_public(), &leaf),
        Err(CredentialError::BadSignature)
    );
    assert!(sc.verify(&keys::org_public()[..31], &leaf).is_err());
    let verified = sc.verify(&keys::org_public(), &leaf);
    if let Ok(c) = &verified {
        assert_eq!(c.signature_key.as_slice(), &leaf[..]);
        let again = SignedCredential::sign(c, &keys::org());
        assert_eq!(again.verify(&keys::org_public(), &leaf), Ok(c.clone()));
    }
    let device = keys::device().verifying_key().to_bytes();
    match &detached {
        Ok(c) => {
            assert_eq!(c.signature_key.as_slice(), &device[..]);
            assert_eq!(verified.as_ref(), Ok(c));
        }
        Err(_) => assert!(verified.is_err() || leaf != device),
    }
    verified.is_ok()
}

/// `SignedPolicy::verify` and `peek_unverified`: a verified policy is valid
/// and is what a peek shows; any valid policy a peek finds signs and verifies
/// back to itself.
pub fn policy(data: &[u8]) -> bool {
    let peeked = SignedPolicy::peek_unverified(data);
    let verified = SignedPolicy::verify(data, &keys::org_public());
    assert!(SignedPolicy::verify(data, &keys::stranger_public()).is_err());
    if let Ok(p) = &verified {
        assert!(p.validate().is_ok());
        assert_eq!(peeked.as_ref(), Some(p));
    }
    if let Some(p) = peeked.filter(|p| p.validate().is_ok()) {
        let signed = SignedPolicy::sign(&p, &keys::org())
            .expect("a valid policy signs")
            .encode();
        assert_eq!(
            SignedPolicy::verify(&signed, &keys::org_public()),
            Ok(p.clone())
        );
        assert_eq!(SignedPolicy::peek_unverified(&signed), Some(p));
    }
    verified.is_ok()
}

/// `SignedDirectory::verify`, then (signed or not, so the fuzzer reaches it
/// without forging) `Directory::validate` and the queries clients run on it.
pub fn directory(data: &[u8]) -> bool {
    let verified = SignedDirectory::verify(data, &keys::org_public());
    assert!(SignedDirectory::verify(data, &keys::stranger_public()).is_err());
    let unsigned: Option<Directory> = (data.len() <= sitrep_wire::directory::MAX_DIRECTORY_BYTES)
        .then(|| {
            ciborium::from_reader::<SignedDirectory, _>(data)
                .ok()
                .and_then(|sd| ciborium::from_reader(sd.directory.as_slice()).ok())
                .or_else(|| ciborium::from_reader(data).ok())
        })
        .flatten();
    if let Ok(d) = &verified {
        assert_eq!(unsigned.as_ref(), Some(d));
    }
    if let Some(d) = unsigned.filter(|d| d.validate().is_ok()) {
        let signed = SignedDirectory::sign(&d, &keys::org()).expect("a valid directory signs");
        assert_eq!(
            SignedDirectory::verify(&signed, &keys::org_public()),
            Ok(d.clone())
        );
        directory_queries(&d);
    }
    verified.is_ok()
}

fn directory_queries(d: &Directory) {
    for level in [Level::Standby, Level::Declared] {
        let called = d.callout(level);
        let users: BTreeSet<&String> = called.iter().map(|(u, _)| u).collect();
        assert_eq!(users.len(), called.len(), "a person is called once");
        for (u, r) in &called {
            let role = d.role(r).expect("called for a role that exists");
            assert!(role.holders.contains(u) && d.may_hold(role, u));
        }
    }
    let commanders = d.commanders();
    for r in &d.roles {
        for h in &r.holders {
            assert_eq!(d.can_declare(h), d.roles_of(h).any(|r| r.can_declare));
            if (r.commander || r.can_declare) && d.may_hold(r, h) {
                assert!(commanders.contains(h));
            }
            chain_is_bounded(d, &Target::User(h.clone()));
        }
        let team = d.team(&r.team);
        assert!(d.holders(r).all(|h| team.contains(h)));
        assert!(d.holders_of(&r.id).iter().all(|h| r.holders.contains(h)));
        chain_is_bounded(d, &Target::Role(r.id.clone()));
        chain_is_bounded(d, &Target::Team(r.team.clone()));
    }
}

/// An alert escalates at most four steps and never to the same target twice.
fn chain_is_bounded(d: &Directory, t: &Target) {
    let chain = sitrep_core::incident::escalation_chain(d, t);
    assert!(chain.len() <= 4);
    assert!(!chain.contains(t));
    for (i, a) in chain.iter().enumerate() {
        assert!(!chain[i + 1..].contains(a));
    }
}

/// Content kinds the `incident` target picks from with its first byte.
pub const INCIDENT_KINDS: &[Kind] = &[
    Kind::Incident,
    Kind::Callin,
    Kind::Alert,
    Kind::Ack,
    Kind::Receipt,
    Kind::Decision,
    Kind::Casualty,
    Kind::Text,
    Kind::Transferred,
    Kind::Unknown,
];

/// `Structured::decode` (incident.rs) for the kind the first byte picks, the
/// rest being the body: what decodes is valid and round-trips, and the
/// one-line summary a client shows never panics.
pub fn incident(data: &[u8]) -> bool {
    let Some((&sel, body)) = data.split_first() else {
        return false;
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return false;
    };
    let kind = &INCIDENT_KINDS[usize::from(sel) % INCIDENT_KINDS.len()];
    let _ = sitrep_core::incident::summary(kind_name(kind), body);
    match Structured::decode(kind, body) {
        Ok(Some(s)) => {
            assert_eq!(s.validate(), Ok(()));
            let (k, json) = s.encode();
            assert_eq!(&k, kind);
            assert_eq!(Structured::decode(&k, &json), Ok(Some(s.clone())));
            if let Structured::Decision(d) = &s {
                let h = sitrep_core::incident::decision_hash(d);
                assert!(h.len() == 64 && hex::decode(&h).is_ok());
            }
            true
        }
        Ok(None) => {
            assert!(matches!(
                kind,
                Kind::Text | Kind::Transferred | Kind::Unknown
            ));
            false
        }
        Err(_) => false,
    }
}
