//! The serialisable state of one device profile. Sealed as a whole by
//! [`crate::vault`]; never written anywhere in clear.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// Who this device is, as the organisation enrolled it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Device {
    pub server: String,
    pub org_name: String,
    pub org_public_key: ByteBuf,
    pub user_id: String,
    pub device_id: String,
    pub display_name: String,
    pub role: String,
    pub token: String,
    pub credential: ByteBuf,
    pub ciphersuite: u16,
    pub signer_public: ByteBuf,
    /// A private CA (PEM) the server's TLS certificate chains to, when the
    /// trust runs one; the system's roots are trusted besides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ca: Option<String>,
    /// The last audit entry this device verified (as an admin): its place
    /// and hash. A later listing must still hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_pin: Option<(u64, String)>,
}

/// One line of a conversation's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Message id (32 hex chars); for system lines, the epoch (or kind of
    /// line) and the line's place in the conversation.
    pub id: String,
    /// Sender's user id (`system` for membership changes).
    pub sender: String,
    /// Sender's device id.
    pub sender_device: String,
    /// Sender's display name as the organisation vouches for it.
    pub sender_name: String,
    /// Milliseconds since the Unix epoch on the sender's clock.
    pub sent_at: u64,
    /// Milliseconds since the Unix epoch when this device stored it.
    pub received_at: u64,
    /// `text` or `system`.
    pub kind: String,
    /// The text.
    pub body: String,
    /// MLS epoch the message was sent in (0 for system lines and old entries).
    #[serde(default)]
    pub epoch: u64,
    /// When it was transferred to the patient's health record (ms), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_at: Option<u64>,
    /// Its place in the server's log (0: not known, a system line, or not
    /// yet accepted); what delivery and read status are asked by.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A conversation this device is (or was) in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conversation {
    /// MLS group id.
    pub group_id: ByteBuf,
    /// Name from the encrypted group context.
    pub name: String,
    /// PID guard policy from the encrypted group context.
    pub pid_policy: String,
    /// False once this device was removed or left.
    pub active: bool,
    /// Messages, in the order this device received them.
    pub history: Vec<HistoryEntry>,
    /// Devices the organisation revoked that are still in the MLS group: the
    /// next sync commits their removal.
    #[serde(default)]
    pub pending_removals: Vec<String>,
    /// Retention from the encrypted group context, seconds (0: the
    /// organisation's default).
    #[serde(default)]
    pub retention_secs: u64,
    /// Created to be recorded (the group context says so).
    #[serde(default)]
    pub recorded: bool,
    /// (epoch, ms when this device entered it), newest last; the last few only.
    #[serde(default)]
    pub epoch_starts: Vec<(u64, u64)>,
    /// Past-epoch key material up to this epoch has been deleted for retention.
    #[serde(default)]
    pub keys_deleted_through: u64,
    /// Command channel: only these users post (empty: everyone).
    #[serde(default)]
    pub posters: Vec<String>,
    /// The conversation's decision log, in delivery order.
    #[serde(default)]
    pub decisions: Vec<sitrep_wire::incident::SignedDecision>,
    /// Each decision's place in the server's log (by entry hash): what
    /// orders entries made at the same time, the same on every device.
    #[serde(default)]
    pub decision_seqs: BTreeMap<String, u64>,
    /// Casualty board: MI number to (latest entry, ms, by whom).
    #[serde(default)]
    pub casualties: BTreeMap<String, (sitrep_wire::incident::Casualty, u64, String)>,
    /// Entries received up to this time (ms, this device's clock) have been
    /// shown to the user; later ones from others are unread.
    #[serde(default)]
    pub shown_through: u64,
    /// History entries already covered by a read receipt.
    #[serde(default)]
    pub receipts_through: usize,
    /// This device missed or failed a change of the group (messages arrive
    /// for an epoch it never reached): it cannot read until re-added.
    #[serde(default)]
    pub out_of_step: bool,
    /// The server has been asked to have this device re-added.
    #[serde(default)]
    pub rejoin_requested: bool,
    /// When it was last asked (ms).
    #[serde(default)]
    pub rejoin_requested_at: u64,
    /// Messages this device could not read since it fell out of step (or
    /// that failed to decrypt); shown to the user, then reset when it rejoins.
    #[serde(default)]
    pub unreadable: u64,
    /// The key the conversation's metadata is sealed under in the group
    /// context (see `sealed_meta`); passed to joiners in the Welcome.
    #[serde(default)]
    pub meta_key: Option<ByteBuf>,
    /// Devices of this group that fell out of step and asked to be re-added:
    /// the next member to sync swaps their leaves for fresh KeyPackages.
    #[serde(default)]
    pub pending_readds: Vec<String>,
    /// Entries ever dropped from the front of `history` (retention): the
    /// place of `history[0]` in the conversation, which numbers the sealed
    /// history pages.
    #[serde(default)]
    pub history_base: u64,
    /// The first place (as `history_base` counts) changed in memory since
    /// the last write, other than appends; not sealed.
    #[serde(skip)]
    pub(crate) dirty_from: Option<u64>,
}

impl Conversation {
    fn mark(&mut self, pos: usize) {
        let at = self.history_base + pos as u64;
        self.dirty_from = Some(self.dirty_from.map_or(at, |d| d.min(at)));
    }

    /// Note that `history[pos]` was changed in place.
    pub(crate) fn touch_entry(&mut self, pos: usize) {
        self.mark(pos);
    }

    /// Remove `history[pos]`.
    pub(crate) fn remove_entry(&mut self, pos: usize) -> HistoryEntry {
        if pos == 0 {
            self.history_base += 1;
            return self.history.remove(0);
        }
        self.mark(pos);
        self.history.remove(pos)
    }

    /// Keep the entries `keep` says yes to. Entries dropped from the front
    /// (the usual case with retention) only move `history_base`, so the
    /// pages after them need not be written again.
    pub(crate) fn retain_entries(&mut self, mut keep: impl FnMut(&HistoryEntry) -> bool) {
        let mut lead = 0usize;
        let mut first_gap: Option<usize> = None;
        let mut kept = 0usize;
        self.history.retain(|e| {
            let k = keep(e);
            if !k && kept == 0 {
                lead += 1;
            } else if !k && first_gap.is_none() {
                first_gap = Some(kept);
            }
            kept += usize::from(k);
            k
        });
        self.history_base += lead as u64;
        if let Some(g) = first_gap {
            self.mark(g);
        }
    }
}

/// A message encrypted and waiting for the server's acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub group_hex: String,
    pub client_id: String,
    pub payload: ByteBuf,
    pub entry: HistoryEntry,
    /// Encrypted again after a refusal for its epoch (only once).
    #[serde(default)]
    pub requeued: bool,
}

/// A change this device sent (or is about to send) whose answer it has not
/// seen: sealed *before* it is posted, so that after a lost answer or a
/// crash its fate is asked again with the same client id (the server answers
/// a repeated id with the first outcome) and never guessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOp {
    /// The group, hex.
    pub group_hex: String,
    /// What it is.
    pub kind: OpKind,
    /// Its client id (idempotency key).
    pub client_id: String,
    /// The exact JSON request body.
    pub body: ByteBuf,
}

/// The kinds of [`PendingOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OpKind {
    /// `POST /v1/groups/{g}/commit`.
    Commit,
    /// `POST /v1/groups/{g}/leave`.
    Leave,
}

impl PendingOp {
    /// The route it is posted to.
    pub fn path(&self) -> String {
        match self.kind {
            OpKind::Commit => format!("/v1/groups/{}/commit", self.group_hex),
            OpKind::Leave => format!("/v1/groups/{}/leave", self.group_hex),
        }
    }
}

/// Everything sealed in a profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub v: u8,
    pub device: Device,
    /// openmls storage provider contents.
    pub mls: Vec<(ByteBuf, ByteBuf)>,
    /// Keyed by group id hex.
    pub conversations: BTreeMap<String, Conversation>,
    /// Highest inbox sequence number processed.
    pub last_seq: u64,
    /// Encrypted but not yet acknowledged by the server.
    pub outbox: Vec<Pending>,
    /// Whether this device holds a last-resort KeyPackage on the server.
    pub has_last_resort: bool,
    /// The organisation's signed device policy in force (CBOR `SignedPolicy`).
    #[serde(default)]
    pub policy: Option<ByteBuf>,
    /// TOTP (RFC 6238) secret for two-step unlock, set up at enrolment.
    #[serde(default)]
    pub totp_secret: Option<ByteBuf>,
    /// Records accounts only: identifier key (`nhs:9434765919`, `mi:42`) to
    /// `group_hex/message_id` of the messages that mention it.
    #[serde(default)]
    pub records_index: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Records accounts only: the account's own audit journal of searches and
    /// exports, with the query in clear (sealed here, never sent).
    #[serde(default)]
    pub records_journal: Vec<JournalEntry>,
    /// Key for the keyed hashes of records queries sent to the audit log.
    #[serde(default)]
    pub audit_key: Option<ByteBuf>,
    /// The organisation's signed directory (roles, call-out lists).
    #[serde(default)]
    pub directory: Option<ByteBuf>,
    /// Incidents by id.
    #[serde(default)]
    pub incidents: BTreeMap<String, crate::incident::IncidentState>,
    /// Alerts by message id.
    #[serde(default)]
    pub alerts: BTreeMap<String, crate::incident::AlertState>,
    /// Commits and leaves sent whose answer has not been seen (one per group).
    #[serde(default)]
    pub pending_ops: Vec<PendingOp>,
    /// Messages written but not yet encrypted (outbox first: the server
    /// could not be reached, or the device had not caught up yet). Each is
    /// encrypted at the group's current epoch when the device has caught up,
    /// under the id it was given when written, so it goes out exactly once.
    #[serde(default)]
    pub queued: Vec<Queued>,
}

/// A message the user wrote that is waiting to be encrypted and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queued {
    pub group_hex: String,
    /// Content id (32 hex): also the client id it is sent under.
    pub id: String,
    /// The text after the PID guard (pseudonymised where the policy says so).
    pub body: String,
    /// When the user wrote it (ms).
    pub written_at: u64,
    /// Back from the outbox after a refusal for its epoch (only once).
    #[serde(default)]
    pub requeued: bool,
    /// Its content kind ("text", or a structured item back from the
    /// outbox: an alert's acknowledgement, a call-in reply, ...).
    #[serde(default = "text_kind")]
    pub kind: String,
}

fn text_kind() -> String {
    "text".into()
}

/// One search or export by a records account, as its own sealed journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// ms since the Unix epoch.
    pub at: u64,
    /// `records.search` or `records.export`.
    pub action: String,
    /// What was asked, in clear.
    pub query: String,
    /// The keyed hash the server's audit log holds for it.
    pub query_hash: String,
    /// The server's audit sequence number.
    pub audit_seq: u64,
}
