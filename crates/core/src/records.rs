//! Retention, transfer to the health record and the records account.
//!
//! - **Retention.** Every conversation carries a retention period in its
//!   encrypted group context, bounded by the signed organisation policy. Every
//!   client purges expired messages from its own store
//!   ([`Client::purge_expired`]) and deletes the key material of past epochs that
//!   ended before the cut-off, so a stored ciphertext of an expired message can
//!   no longer be decrypted here either. The clock is passed in.
//! - **Records account.** The organisation names one account in its signed
//!   policy. A recorded conversation has that account's devices as ordinary,
//!   visible members: everyone's client derives "recorded by" from the verified
//!   member list, not from a flag, so the records member cannot be hidden. The
//!   records account keeps its history for the records retention instead of the
//!   conversation's, and indexes it by identifier (NHS number in any spacing,
//!   major-incident number, hospital number) for search and disclosure.
//! - **Transfer.** A message transferred to the patient's record is announced
//!   in the conversation (a `transferred` content item naming it); every client
//!   marks it, and deletes it when the organisation's policy says so.

use std::collections::BTreeSet;

use hmac::{Hmac, Mac};
use openmls::prelude::*;
use openmls_traits::signatures::Signer as _;
use serde::Serialize;
use sha2::Sha256;
use sitrep_wire::content::Kind;

use crate::Error;
use crate::client::{Client, Outgoing};
use crate::state::{HistoryEntry, JournalEntry};

/// Epoch start times kept per conversation (openmls keeps 5 past epochs).
const EPOCH_LOG: usize = 8;

/// What [`Client::records_search`] looks for. All given parts must match.
#[derive(Debug, Clone, Default)]
pub struct RecordsQuery {
    /// An NHS or CHI number in any spacing, a major-incident number
    /// (`MI-0042`), a hospital number; anything else is free text.
    pub identifier: Option<String>,
    /// Free text, case-insensitive.
    pub text: Option<String>,
    /// Sent at or after (ms since the Unix epoch).
    pub from_ms: Option<u64>,
    /// Sent before (ms since the Unix epoch).
    pub to_ms: Option<u64>,
    /// Sender's user id.
    pub participant: Option<String>,
}

/// One message a records search found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordMatch {
    /// Conversation name.
    pub conversation: String,
    /// Group id, hex.
    pub group: String,
    /// The message.
    #[serde(flatten)]
    pub entry: HistoryEntry,
}

/// The index key of an identifier as a person types it: `nhs:<10 digits>` for
/// NHS and CHI numbers in any spacing, `mi:<n>` for major-incident numbers,
/// `None` for anything else.
pub fn identifier_key(s: &str) -> Option<String> {
    let t = s.trim();
    let digits: String = t
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '\t'))
        .collect();
    if digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Some(format!("nhs:{digits}"));
    }
    let found = mi_numbers(t);
    if found.len() == 1 && found[0].0 == 0 && found[0].1 == t.len() {
        return Some(format!("mi:{}", found[0].2));
    }
    None
}

/// Major-incident numbers in a text: (start, end, number without leading zeros).
pub fn mi_numbers(text: &str) -> Vec<(usize, usize, u64)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 < b.len() {
        let boundary = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        if boundary && b[i].eq_ignore_ascii_case(&b'm') && b[i + 1].eq_ignore_ascii_case(&b'i') {
            let mut j = i + 2;
            if j < b.len() && matches!(b[j], b'-' | b' ') {
                j += 1;
            }
            let start_digits = j;
            while j < b.len() && b[j].is_ascii_digit() && j - start_digits < 7 {
                j += 1;
            }
            let n = j - start_digits;
            let ends = j == b.len() || !b[j].is_ascii_alphanumeric();
            if (1..=6).contains(&n) && ends {
                let v = text[start_digits..j].parse().unwrap_or(0);
                out.push((i, j, v));
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The hex group id of a conversation.
pub fn group_hex_of(c: &crate::Conversation) -> String {
    hex::encode(&c.group_id)
}

/// Index keys for one message body.
pub(crate) fn index_keys(body: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for f in sitrep_pid::scan(body) {
        let s = &body[f.start..f.end];
        match f.kind {
            sitrep_pid::PidKind::NhsNumber | sitrep_pid::PidKind::ChiNumber => {
                let d: String = s.chars().filter(char::is_ascii_digit).collect();
                keys.insert(format!("nhs:{d}"));
            }
            sitrep_pid::PidKind::HospitalNumber => {
                keys.insert(format!("hosp:{}", hospital_key(s)));
            }
            _ => {}
        }
    }
    for (_, _, n) in mi_numbers(body) {
        keys.insert(format!("mi:{n}"));
    }
    keys
}

fn hospital_key(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Replace every patient identifier in `body` that is not the subject's (by
/// [`identifier_key`]) with `[REDACTED …]`. Returns the text and how many
/// items were redacted. Staff names in message headers are not touched.
pub fn redact_others(body: &str, subject_key: Option<&str>) -> (String, usize) {
    let mut spans: Vec<(usize, usize, String)> = Vec::new();
    for f in sitrep_pid::scan(body) {
        let s = &body[f.start..f.end];
        let key = match f.kind {
            sitrep_pid::PidKind::NhsNumber | sitrep_pid::PidKind::ChiNumber => Some(format!(
                "nhs:{}",
                s.chars().filter(char::is_ascii_digit).collect::<String>()
            )),
            sitrep_pid::PidKind::HospitalNumber => Some(format!("hosp:{}", hospital_key(s))),
            _ => None,
        };
        if key.is_some() && key.as_deref() == subject_key {
            continue;
        }
        let token = f.replacement.trim_matches(|c| c == '[' || c == ']');
        spans.push((f.start, f.end, format!("[REDACTED {token}]")));
    }
    for (start, end, n) in mi_numbers(body) {
        if subject_key == Some(format!("mi:{n}").as_str()) {
            continue;
        }
        if spans.iter().any(|(s, e, _)| start < *e && *s < end) {
            continue;
        }
        spans.push((start, end, "[REDACTED MI-NUMBER]".into()));
    }
    spans.sort_by_key(|s| s.0);
    let mut out = String::with_capacity(body.len());
    let mut at = 0;
    let mut n = 0;
    for (start, end, token) in spans {
        if start < at {
            continue;
        }
        out.push_str(&body[at..start]);
        out.push_str(&token);
        at = end;
        n += 1;
    }
    out.push_str(&body[at..]);
    (out, n)
}

impl Client {
    /// Whether `user_id` is the organisation's records account.
    pub(crate) fn is_records_user(&self, user_id: &str) -> bool {
        self.policy().records_user.as_deref() == Some(user_id)
    }

    /// Whether this device belongs to the organisation's records account.
    pub fn is_records_account(&self) -> bool {
        self.is_records_user(&self.state.device.user_id)
    }

    /// The records account's user id, if the organisation named one.
    pub fn records_user(&self) -> Option<String> {
        self.policy().records_user
    }

    /// "<organisation> Records" when the records account is a member of the
    /// conversation (derived from the verified members, so it cannot be hidden).
    pub fn recorded_by(&self, name: &str) -> Result<Option<String>, Error> {
        let Some(records) = self.records_user() else {
            return Ok(None);
        };
        Ok(self
            .members(name)?
            .iter()
            .any(|m| m.user_id == records)
            .then(|| format!("{} Records", self.state.device.org_name)))
    }

    /// The retention in force for a conversation, in seconds; `None` keeps
    /// messages (a records account under a records retention of 0).
    pub fn retention_secs(&self, name: &str) -> Result<Option<u64>, Error> {
        let hex = self.group_hex(name)?;
        Ok(self.retention_of(&hex))
    }

    fn retention_of(&self, group_hex: &str) -> Option<u64> {
        let policy = self.policy();
        if self.is_records_account() {
            return (policy.records_retention_secs != 0).then_some(policy.records_retention_secs);
        }
        let own = self
            .state
            .conversations
            .get(group_hex)
            .map_or(0, |c| c.retention_secs);
        Some(match own {
            0 => policy.retention_default_secs,
            s => s.min(policy.retention_max_secs),
        })
    }

    /// Note that this device entered `epoch` at `now_ms`.
    pub(crate) fn epoch_started(&mut self, group_hex: &str, epoch: u64, now_ms: u64) {
        if let Some(c) = self.state.conversations.get_mut(group_hex) {
            c.epoch_starts.push((epoch, now_ms));
            if c.epoch_starts.len() > EPOCH_LOG {
                let excess = c.epoch_starts.len() - EPOCH_LOG;
                c.epoch_starts.drain(..excess);
            }
        }
    }

    /// Store a message (or apply a `transferred` notice). Returns whether the
    /// front end should show it as a new message.
    pub(crate) fn store_entry(&mut self, group_hex: &str, entry: HistoryEntry) -> bool {
        if entry.kind == "transferred" {
            let by = entry.sender_name.clone();
            self.apply_transferred(group_hex, &entry.body, &by, entry.received_at);
            return false;
        }
        if let Some(kind) = crate::incident::structured_kind(&entry.kind) {
            if let Err(why) = self.apply_structured(group_hex, &entry, &kind) {
                let line = format!("refused a {} from {}: {why}", entry.kind, entry.sender);
                let _ = self.system_line(group_hex, u64::MAX - 3, line, entry.received_at);
                return false;
            }
            if kind == Kind::Receipt {
                return false;
            }
        } else if let Some(conv) = self.state.conversations.get(group_hex)
            && !conv.posters.is_empty()
            && !conv.posters.contains(&entry.sender)
            && entry.kind != "system"
        {
            let line = format!(
                "refused a message from {}: only commanders post in this channel",
                entry.sender
            );
            let _ = self.system_line(group_hex, u64::MAX - 3, line, entry.received_at);
            return false;
        }
        let records = self.is_records_account();
        let Some(conv) = self.state.conversations.get_mut(group_hex) else {
            return false;
        };
        if records {
            for key in index_keys(&entry.body) {
                self.state
                    .records_index
                    .entry(key)
                    .or_default()
                    .insert(format!("{group_hex}/{}", entry.id));
            }
        }
        conv.history.push(entry);
        true
    }

    /// A message was transferred to the health record: mark it, and delete
    /// it if the organisation says so (the records account keeps it).
    fn apply_transferred(&mut self, group_hex: &str, message_id: &str, by: &str, now_ms: u64) {
        let delete = self.policy().delete_after_transfer && !self.is_records_account();
        let Some(conv) = self.state.conversations.get_mut(group_hex) else {
            return;
        };
        let Some(pos) = conv.history.iter().position(|e| e.id == message_id) else {
            return;
        };
        let short = &message_id[..8.min(message_id.len())];
        let line = if delete {
            conv.remove_entry(pos);
            self.unindex(group_hex, message_id);
            format!(
                "{by} transferred message {short} to the patient's record; it was deleted from this conversation"
            )
        } else {
            conv.history[pos].transferred_at = Some(now_ms);
            conv.touch_entry(pos);
            format!("{by} transferred message {short} to the patient's record")
        };
        let _ = self.system_line(group_hex, u64::MAX - 2, line, now_ms);
    }

    fn unindex(&mut self, group_hex: &str, message_id: &str) {
        let r = format!("{group_hex}/{message_id}");
        self.state.records_index.retain(|_, v| {
            v.remove(&r);
            !v.is_empty()
        });
    }

    /// Announce in the conversation that a message was transferred to the
    /// patient's health record. Every member's client marks it (and deletes it
    /// when the organisation's policy says so) once this is delivered.
    pub fn mark_transferred(
        &mut self,
        name: &str,
        message_id: &str,
        now_ms: u64,
    ) -> Result<Outgoing, Error> {
        let conv = self.conversation(name)?;
        if !conv
            .history
            .iter()
            .any(|e| e.id == message_id && e.kind == "text")
        {
            return Err(Error::Invalid(format!(
                "no message {message_id} in {name:?}"
            )));
        }
        let id: [u8; 16] = hex::decode(message_id)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| Error::Invalid("a message id is 32 hex characters".into()))?;
        self.encrypt_content(name, Kind::Transferred, "", Some(id), now_ms)
    }

    /// Delete every message whose retention has run out, everywhere this
    /// device holds it, and the key material of past epochs that ended before
    /// the cut-off. A message's age counts from the earlier of its sent time and
    /// the time this device received it, so a sender's clock cannot extend it.
    /// Returns how many messages were deleted.
    pub fn purge_expired(&mut self, now_ms: u64) -> Result<usize, Error> {
        let hexes: Vec<String> = self.state.conversations.keys().cloned().collect();
        let mut purged = 0;
        for hex in hexes {
            let Some(secs) = self.retention_of(&hex) else {
                continue;
            };
            let cutoff = now_ms.saturating_sub(secs.saturating_mul(1000));
            let conv = self
                .state
                .conversations
                .get_mut(&hex)
                .expect("key taken from the map");
            let mut gone = Vec::new();
            conv.retain_entries(|e| {
                let keep = e.sent_at.min(e.received_at) > cutoff;
                if !keep {
                    gone.push(e.id.clone());
                }
                keep
            });
            purged += gone.len();
            for id in gone {
                self.unindex(&hex, &id);
            }
            self.delete_old_epoch_keys(&hex, cutoff)?;
        }
        Ok(purged)
    }

    /// Delete the secrets of past epochs that ended before `cutoff`.
    fn delete_old_epoch_keys(&mut self, group_hex: &str, cutoff: u64) -> Result<(), Error> {
        let conv = &self.state.conversations[group_hex];
        if !conv.active {
            return Ok(());
        }
        // A past epoch e ended when e + 1 started.
        let starts = &conv.epoch_starts;
        let mut expired_through = None;
        let mut keep = 0usize;
        for w in starts.windows(2) {
            let (e, _) = w[0];
            let (_, next_started) = w[1];
            if next_started < cutoff {
                expired_through = Some(e);
            } else {
                keep += 1;
            }
        }
        let Some(through) = expired_through else {
            return Ok(());
        };
        // Stored as "deleted up to and including epoch n - 1"; 0 is nothing yet.
        if through < conv.keys_deleted_through {
            return Ok(());
        }
        let mut group = self.take_group(group_hex)?;
        let policy = PastEpochDeletion::delete_all_without_timestamps().max_past_epochs(keep);
        let result = group
            .delete_past_epoch_secrets(&self.provider, policy)
            .map_err(Error::mls);
        self.put_group(group_hex, group);
        result?;
        if let Some(c) = self.state.conversations.get_mut(group_hex) {
            c.keys_deleted_through = through + 1;
        }
        Ok(())
    }

    /// Search what this records account holds. Refused for any other account.
    pub fn records_search(&self, q: &RecordsQuery) -> Result<Vec<RecordMatch>, Error> {
        if !self.is_records_account() {
            return Err(Error::NotRecords);
        }
        let mut text = q.text.as_ref().map(|t| t.to_lowercase());
        let mut wanted: Option<BTreeSet<String>> = None;
        if let Some(id) = &q.identifier {
            let key = identifier_key(id).or_else(|| {
                let h = format!("hosp:{}", hospital_key(id));
                self.state.records_index.contains_key(&h).then_some(h)
            });
            match key {
                Some(k) => {
                    wanted = Some(
                        self.state
                            .records_index
                            .get(&k)
                            .cloned()
                            .unwrap_or_default(),
                    )
                }
                None if text.is_none() => text = Some(id.to_lowercase()),
                None => {
                    return Err(Error::Invalid(
                        "not an identifier Sitrep indexes; search it as text".into(),
                    ));
                }
            }
        }
        let mut out = Vec::new();
        for (hex, conv) in &self.state.conversations {
            for e in &conv.history {
                if e.kind != "text" {
                    continue;
                }
                if let Some(w) = &wanted
                    && !w.contains(&format!("{hex}/{}", e.id))
                {
                    continue;
                }
                if let Some(t) = &text
                    && !e.body.to_lowercase().contains(t.as_str())
                {
                    continue;
                }
                if q.from_ms.is_some_and(|f| e.sent_at < f)
                    || q.to_ms.is_some_and(|t| e.sent_at >= t)
                {
                    continue;
                }
                if q.participant.as_ref().is_some_and(|p| &e.sender != p) {
                    continue;
                }
                out.push(RecordMatch {
                    conversation: conv.name.clone(),
                    group: hex.clone(),
                    entry: e.clone(),
                });
            }
        }
        out.sort_by(|a, b| (a.entry.sent_at, &a.entry.id).cmp(&(b.entry.sent_at, &b.entry.id)));
        Ok(out)
    }

    /// A keyed hash of a records query for the server's audit log: the server
    /// cannot reverse it (it does not hold the key), the records account's own
    /// journal can match it.
    pub fn audit_hash(&mut self, query: &str) -> String {
        let key = match &self.state.audit_key {
            Some(k) => k.to_vec(),
            None => {
                let k = self.random::<32>().to_vec();
                self.state.audit_key = Some(serde_bytes::ByteBuf::from(k.clone()));
                k
            }
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key");
        mac.update(b"sitrep-records-query-v1");
        mac.update(query.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Keep a search or export in this records account's sealed journal.
    pub fn journal(&mut self, entry: JournalEntry) {
        self.state.records_journal.push(entry);
    }

    /// The records journal, oldest first.
    pub fn journal_entries(&self) -> &[JournalEntry] {
        &self.state.records_journal
    }

    /// Sign `label || msg` with this device's MLS signature key (Ed25519), for
    /// detached signatures over exports and logs that anyone holding the
    /// organisation key can check with
    /// [`sitrep_wire::credential::verify_detached`].
    pub fn sign_detached(&self, label: &[u8], msg: &[u8]) -> Result<Vec<u8>, Error> {
        let mut m = label.to_vec();
        m.extend_from_slice(msg);
        self.signer
            .sign(&m)
            .map_err(|e| Error::Mls(format!("signing: {e:?}")))
    }

    /// This device's organisation-signed credential (a `SignedCredential` encoding).
    pub fn credential(&self) -> &[u8] {
        &self.state.device.credential
    }

    /// The organisation's public key as this device enrolled with it.
    pub fn org_public_key(&self) -> &[u8] {
        &self.state.device.org_public_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_normalise() {
        assert_eq!(
            identifier_key("943 476 5919").as_deref(),
            Some("nhs:9434765919")
        );
        assert_eq!(
            identifier_key("943-476-5919").as_deref(),
            Some("nhs:9434765919")
        );
        assert_eq!(
            identifier_key("9434765919").as_deref(),
            Some("nhs:9434765919")
        );
        assert_eq!(identifier_key("MI-0042").as_deref(), Some("mi:42"));
        assert_eq!(identifier_key("mi 42").as_deref(), Some("mi:42"));
        assert_eq!(identifier_key("sepsis"), None);
        assert_eq!(identifier_key("MI-0042 and more"), None);
    }

    #[test]
    fn mi_numbers_need_boundaries() {
        assert_eq!(mi_numbers("pt MI-0042 to CT"), vec![(3, 10, 42)]);
        assert!(mi_numbers("SEMI-0042").is_empty());
        assert!(mi_numbers("MI-0042a").is_empty());
        assert_eq!(mi_numbers("MI-7, MI-8").len(), 2);
    }

    #[test]
    fn redaction_keeps_the_subject_only() {
        let body = "MI-0042 is 943 476 5919; bed next to 401 023 2137 (MI-0043)";
        let (out, n) = redact_others(body, Some("nhs:9434765919"));
        assert!(out.contains("943 476 5919"), "{out}");
        assert!(!out.contains("401 023 2137"), "{out}");
        assert!(!out.contains("MI-0043"), "{out}");
        assert!(!out.contains("MI-0042"), "{out}");
        assert_eq!(n, 3, "{out}");
        let (out, _) = redact_others(body, Some("mi:42"));
        assert!(
            out.contains("MI-0042") && !out.contains("943 476 5919"),
            "{out}"
        );
    }
}
