//! JSON bodies of the HTTP API (see docs/protocol.md).
//!
//! Binary fields travel as base64 strings. Identifiers are validated by the
//! server with the `valid_*` helpers below before anything touches the store.

use serde::{Deserialize, Serialize};

/// Inbox entry kinds, shared by the HTTP inbox and the WebSocket frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum EntryKind {
    /// An MLS Welcome for this device.
    Welcome = 1,
    /// An MLS commit accepted for a group this device is in.
    Commit = 2,
    /// An MLS application message.
    Application = 3,
    /// An MLS proposal (a member leaving); the next member to sync commits it.
    Proposal = 4,
    /// The organisation revoked a device (lost, stolen, redeployed); payload is
    /// the group id's length (one byte), the group id, then the device id. The server no longer delivers to it; the next member to
    /// sync commits its removal from the MLS group.
    Revoked = 5,
    /// A member device fell out of step with the group (it missed a commit)
    /// and asks to be re-added; payload as for `Revoked`, naming that device.
    /// The next member to sync swaps its leaf for a fresh KeyPackage.
    Rejoin = 6,
}

impl EntryKind {
    /// Decode the one-byte tag used in binary frames.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Welcome),
            2 => Some(Self::Commit),
            3 => Some(Self::Application),
            4 => Some(Self::Proposal),
            5 => Some(Self::Revoked),
            6 => Some(Self::Rejoin),
            _ => None,
        }
    }
}

/// `POST /v1/groups/{group}/rejoin`: this device is out of step with the
/// group and asks its members to re-add it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RejoinRequest {
    /// 32 lowercase hex chars (idempotency).
    pub client_id: String,
}

/// Every error the API returns: a stable machine code and a human message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// Stable code, e.g. `epoch_conflict`, `unauthorised`, `too_large`.
    pub error: String,
    /// A sentence for a person; never contains user data.
    pub message: String,
    /// For `epoch_conflict`: the group's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: String,
    /// Organisation key fingerprint.
    pub org_fingerprint: String,
}

/// `POST /v1/enrol`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrolRequest {
    /// The single-use code from `sitrep admin invite`.
    pub code: String,
    /// The device's MLS signature public key (Ed25519), made on the device.
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub signature_key: Vec<u8>,
    /// Proof that the device holds that key: its Ed25519 signature over
    /// [`EnrolRequest::proof_message`].
    #[serde(with = "crate::b64", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub proof: Vec<u8>,
}

impl EnrolRequest {
    /// What the proof signs: a label, the key and the code, so a proof is
    /// good for this key and this enrolment only.
    pub fn proof_message(code: &str, signature_key: &[u8]) -> Vec<u8> {
        let mut m = b"sitrep-enrol-v1".to_vec();
        m.extend_from_slice(&(signature_key.len() as u32).to_be_bytes());
        m.extend_from_slice(signature_key);
        m.extend_from_slice(code.as_bytes());
        m
    }
}

/// Answer to [`EnrolRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrolResponse {
    /// The organisation's Ed25519 public key.
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub org_public_key: Vec<u8>,
    /// The organisation's name.
    pub org_name: String,
    /// Who this device belongs to.
    pub user_id: String,
    /// The new device's id.
    pub device_id: String,
    /// The signed credential ([`crate::credential::SignedCredential`] CBOR).
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub credential: Vec<u8>,
    /// Bearer token for this device; the server keeps only its hash.
    pub token: String,
}

/// `POST /v1/keypackages`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadKeyPackages {
    /// Serialized MLS KeyPackages (each handed out once).
    #[serde(with = "crate::b64::vec")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub key_packages: Vec<Vec<u8>>,
    /// Replaces the device's last-resort KeyPackage.
    #[serde(
        default,
        with = "crate::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Byte))]
    pub last_resort: Option<Vec<u8>>,
}

/// `GET /v1/keypackages/count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPackageCount {
    /// One-time KeyPackages still on the server for this device.
    pub available: u64,
    /// Whether a last-resort KeyPackage is stored.
    pub last_resort: bool,
}

/// `POST /v1/keypackages/claim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimRequest {
    /// Users whose every active device should get one KeyPackage claimed.
    pub user_ids: Vec<String>,
    /// Only these devices (e.g. a user's newly enrolled one); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<String>,
}

/// One claimed KeyPackage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedKeyPackage {
    /// Owner.
    pub user_id: String,
    /// Device.
    pub device_id: String,
    /// The serialized KeyPackage.
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub key_package: Vec<u8>,
}

/// Answer to [`ClaimRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimResponse {
    /// One per device found.
    pub key_packages: Vec<ClaimedKeyPackage>,
    /// Users with no device or no KeyPackage at all.
    pub missing: Vec<String>,
}

/// `POST /v1/groups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateGroup {
    /// The MLS group id the creator chose (random, 16 bytes).
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub group_id: Vec<u8>,
    /// The group's GroupInfo at epoch 0 with its ratchet tree (an
    /// `MLSMessage`), signed by the creator: where the delivery service's
    /// own view of the group starts. Its group context carries the
    /// conversation's metadata sealed.
    #[serde(with = "crate::b64", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub group_info: Vec<u8>,
}

/// `POST /v1/groups/{group}/commit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitRequest {
    /// Client-chosen id (32 hex chars) making the submission idempotent.
    pub client_id: String,
    /// The epoch this commit was built on.
    pub epoch: u64,
    /// The MLS commit message.
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub commit: Vec<u8>,
    /// The Welcome for joiners, released only if the commit wins its epoch.
    #[serde(
        default,
        with = "crate::b64::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Byte))]
    pub welcome: Option<Vec<u8>>,
    /// Devices the commit adds, as the committer sees it. Informational: the
    /// server reads who is added and removed from the commit itself.
    #[serde(default)]
    pub add_devices: Vec<String>,
    /// Devices the commit removes, as the committer sees it (informational).
    #[serde(default)]
    pub remove_devices: Vec<String>,
}

/// Answer to an accepted [`CommitRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResponse {
    /// The group's epoch after this commit.
    pub epoch: u64,
    /// True when this client id had already been accepted (a retry).
    pub duplicate: bool,
}

/// `POST /v1/groups/{group}/read`: this device has shown the group's
/// messages up to `seq` to its user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadRequest {
    /// The last sequence number shown.
    pub seq: u64,
}

/// `POST /v1/push/subscribe` and `/v1/push/unsubscribe`: a browser's Web
/// Push endpoint (its push service's URL for this device).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushSubscription {
    /// The `endpoint` of the browser's `PushSubscription`.
    pub endpoint: String,
    /// Its `keys` (RFC 8291: `p256dh`, `auth`, base64url), for the one word
    /// a push may carry, encrypted to the browser: `urgent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<PushKeys>,
}

/// A browser's push encryption keys (RFC 8291).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushKeys {
    /// The browser's P-256 public key, uncompressed, base64url.
    pub p256dh: String,
    /// Its 16-byte authentication secret, base64url.
    pub auth: String,
}

/// `GET /v1/push/key`: the server's VAPID public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushKey {
    /// Uncompressed P-256 point, base64url: the browser's
    /// `applicationServerKey`.
    pub public_key: String,
}

/// `GET /v1/groups/{group}/status?seq=N`: where one message has got to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageStatus {
    /// The message.
    pub seq: u64,
    /// Every device that was a member when it was sent, its sender's excepted.
    pub devices: Vec<DeviceDelivery>,
}

/// `GET /v1/groups/{group}/receipts`: how far each member device has got in
/// the group, so a client can show every message's state (delivered, read)
/// with one request. Current members only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipts {
    /// One row per membership of a device in the group (a device that left
    /// and came back has two).
    pub devices: Vec<DeviceReceipt>,
}

/// One row of [`Receipts`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceReceipt {
    /// User id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// It receives the group's messages after this seq...
    pub from_seq: u64,
    /// ...up to this one, if its membership ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_seq: Option<u64>,
    /// The group's last message it has fetched and acknowledged (0: none).
    pub delivered_through: u64,
    /// The group's last message it reported shown (0: none).
    pub read_through: u64,
}

/// Where one message has got to, from [`Receipts`]: counted by person
/// (a user counts once, on whichever of their devices), the sender's user
/// left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tally {
    /// People it was sent to.
    pub recipients: usize,
    /// Of them, on at least one device, fetched.
    pub delivered: usize,
    /// Of them, on at least one device, shown.
    pub read: usize,
}

impl Receipts {
    /// The tally of message `seq`, sent by `sender_user`.
    pub fn tally(&self, seq: u64, sender_user: &str) -> Tally {
        use std::collections::BTreeMap;
        let mut users: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
        for d in &self.devices {
            if d.user_id == sender_user || d.from_seq >= seq || d.to_seq.is_some_and(|t| t < seq) {
                continue;
            }
            let u = users.entry(&d.user_id).or_default();
            u.0 |= d.delivered_through >= seq;
            u.1 |= d.read_through >= seq;
        }
        Tally {
            recipients: users.len(),
            delivered: users.values().filter(|(d, _)| *d).count(),
            read: users.values().filter(|(_, r)| *r).count(),
        }
    }
}

/// One device in a [`MessageStatus`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceDelivery {
    /// User id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// The device has fetched and acknowledged the message.
    pub delivered: bool,
    /// When the device reported it shown (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<u64>,
}

/// `POST /v1/groups/{group}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendRequest {
    /// Client-chosen id (32 hex chars) making the submission idempotent.
    pub client_id: String,
    /// The MLS application message (PrivateMessage).
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub payload: Vec<u8>,
    /// A priority alert: offline browsers get an "Urgent alert" push, not
    /// "New message". All the server learns is that a message is urgent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// `POST /v1/groups/{group}/leave`: this device leaves. The server stops
/// delivering the group to it at once and hands the proposal to the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaveRequest {
    /// Client-chosen id (32 hex chars) making the submission idempotent.
    pub client_id: String,
    /// The MLS Remove proposal for the leaving member's own leaf.
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub proposal: Vec<u8>,
}

/// Answer to [`SendRequest`]: sent only after the message is durably stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendResponse {
    /// Devices the message is for.
    pub recipients: u64,
    /// True when this client id had already been accepted (a retry).
    pub duplicate: bool,
    /// The message's place in the server's log (0 when nobody else was in
    /// the group, or from a server that did not say).
    #[serde(default)]
    pub seq: u64,
}

/// One entry of a device's inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxEntry {
    /// Global sequence number, increasing in delivery order; acknowledge up to it.
    pub seq: u64,
    /// What the payload is.
    pub kind: EntryKind,
    /// The MLS message.
    #[serde(with = "crate::b64")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub payload: Vec<u8>,
}

/// `GET /v1/inbox?after=SEQ&limit=N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InboxResponse {
    /// Entries in sequence order.
    pub entries: Vec<InboxEntry>,
    /// More entries wait beyond this page.
    pub more: bool,
}

/// `POST /v1/inbox/ack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckRequest {
    /// Delete every entry with `seq <= up_to`.
    pub up_to: u64,
}

/// One of a user's devices (`GET /v1/devices`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceInfo {
    /// Device id.
    pub device_id: String,
    /// Seconds since the Unix epoch.
    pub enrolled_at: u64,
    /// Seconds since the Unix epoch, when revoked (wiped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// Whether this is the device asking.
    pub this_device: bool,
}

/// A records or disclosure action a device reports to the organisation's audit
/// log (`POST /v1/audit`). The device refuses to search or export unless the
/// server recorded it. Structured, with no free text: a records query travels
/// only as a keyed hash made on the device (see docs/threat-model.md), a
/// transfer as the random ids of its messages. The server writes the entry's
/// detail itself from these fields ([`AuditRequest::detail`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    /// One of [`AUDIT_ACTIONS`].
    pub action: String,
    /// `records.search`, `records.export`: HMAC-SHA256 of the query, 64 hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_hmac: Option<String>,
    /// `record.transfer`: the transferred messages' ids (32 hex each); the
    /// log keeps a hash of each, never the id itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
}

/// The audit entry written (`POST /v1/audit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditResponse {
    /// Position in the organisation's audit log.
    pub seq: u64,
    /// Hex SHA-256 chaining this entry to the ones before it.
    pub hash: String,
}

/// Actions a device may report.
pub const AUDIT_ACTIONS: &[&str] = &[
    "records.search",
    "records.export",
    "export.personal",
    "record.transfer",
];
/// Most messages one transfer reports.
pub const MAX_AUDIT_MESSAGES: usize = 1_000;

fn lower_hex(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl AuditRequest {
    /// The entry's detail as the server writes it, or `None` if the request
    /// does not have exactly the fields its action takes, well formed.
    pub fn detail(&self) -> Option<String> {
        match (
            self.action.as_str(),
            &self.query_hmac,
            self.messages.as_slice(),
        ) {
            ("records.search" | "records.export", Some(h), []) if lower_hex(h, 64, 64) => {
                Some(format!("query_hmac={h}"))
            }
            ("export.personal", None, []) => Some(String::new()),
            ("record.transfer", None, m)
                if !m.is_empty()
                    && m.len() <= MAX_AUDIT_MESSAGES
                    && m.iter().all(|id| lower_hex(id, 32, 32)) =>
            {
                // Hashes: 32 hex chars could carry anything (an NHS number is
                // valid hex), and the log cannot be cleaned once signed. Whoever
                // holds the messages can hash their ids to find them.
                let hashes: Vec<String> = m
                    .iter()
                    .map(|id| {
                        use sha2::Digest as _;
                        let h = sha2::Sha256::digest(id.as_bytes());
                        hex::encode(&h[..8])
                    })
                    .collect();
                Some(format!(
                    "message_sha256_64={} count={}",
                    hashes.join(","),
                    m.len()
                ))
            }
            _ => None,
        }
    }

    /// Only the organisation's records account may report this action.
    pub fn records_only(&self) -> bool {
        self.action.starts_with("records.")
    }
}

/// Longest user id, device id, name or role accepted.
pub const MAX_ID_LEN: usize = 64;

/// User and device ids: 1..=64 of `[A-Za-z0-9._-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Client-chosen message ids: exactly 32 lowercase hex chars.
pub fn valid_client_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(valid_id("alice"));
        assert!(valid_id("dr.smith-2"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"x".repeat(65)));
        assert!(valid_client_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_client_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_client_id("abc"));
    }

    #[test]
    fn entry_kind_round_trips() {
        for k in [
            EntryKind::Welcome,
            EntryKind::Commit,
            EntryKind::Application,
        ] {
            assert_eq!(EntryKind::from_u8(k as u8), Some(k));
        }
        assert_eq!(EntryKind::from_u8(0), None);
        assert_eq!(EntryKind::from_u8(9), None);
    }

    proptest::proptest! {
        /// Every request body the server decodes refuses garbage with an error,
        /// never a panic.
        #[test]
        fn request_decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<EnrolRequest>(&bytes);
            let _ = serde_json::from_slice::<UploadKeyPackages>(&bytes);
            let _ = serde_json::from_slice::<ClaimRequest>(&bytes);
            let _ = serde_json::from_slice::<CreateGroup>(&bytes);
            let _ = serde_json::from_slice::<CommitRequest>(&bytes);
            let _ = serde_json::from_slice::<SendRequest>(&bytes);
            let _ = serde_json::from_slice::<AckRequest>(&bytes);
            let _ = serde_json::from_slice::<LeaveRequest>(&bytes);
            let _ = serde_json::from_slice::<InboxResponse>(&bytes);
        }

        #[test]
        fn send_request_round_trips(id in "[0-9a-f]{32}", payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let r = SendRequest { client_id: id.clone(), payload: payload.clone(), urgent: false };
            let back: SendRequest = serde_json::from_str(&serde_json::to_string(&r).expect("encode")).expect("decode");
            proptest::prop_assert_eq!(back.client_id, id);
            proptest::prop_assert_eq!(back.payload, payload);
        }
    }

    #[test]
    fn bad_base64_is_an_error() {
        let r: Result<SendRequest, _> =
            serde_json::from_str(r#"{"client_id":"x","payload":"!!!"}"#);
        assert!(r.is_err());
    }
}
