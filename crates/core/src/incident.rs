//! Major-incident mode in the client core: authorisation of incident levels
//! against the organisation-signed directory, command channels where only
//! commanders post, call-in tallies, priority alerts with acknowledgement and
//! escalation (clock injected), aggregated read receipts, the signed and
//! hash-chained decision log, and the casualty board.
//!
//! Every rule here is applied by every receiving client, not only by the
//! sender or the server: an unauthorised DECLARED or a post by a
//! non-commander in a command channel is refused and shown as refused.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sitrep_wire::content::Kind;
use sitrep_wire::directory::{Directory, SignedDirectory};
use sitrep_wire::incident::{
    Ack, Alert, Availability, Casualty, DECISION_LABEL, DecisionEntry, DecisionKind, IncidentMsg,
    Level, Receipt, SignedDecision, Structured, Target,
};

use crate::Error;
use crate::client::{Client, Outgoing};
use crate::state::HistoryEntry;

/// What this device knows of one incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentState {
    /// Incident id.
    pub id: String,
    /// Current level.
    pub level: Level,
    /// The latest METHANE/ETHANE report.
    pub methane: Option<sitrep_wire::incident::Methane>,
    /// Conversation (group hex) it was raised in.
    pub group: String,
    /// (level, ms, user id) in order.
    pub timeline: Vec<(Level, u64, String)>,
    /// Latest call-in reply per user: (availability, role, sent ms, message id).
    pub callin: BTreeMap<String, (Availability, String, u64, String)>,
}

/// What the sender (and everyone) knows of one alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// The alert.
    pub alert: Alert,
    /// Group hex.
    pub group: String,
    /// Sender user id.
    pub sender: String,
    /// Sent (ms, sender's clock bounded by arrival).
    pub sent_at: u64,
    /// Who it is for, expanded through the directory at sending.
    pub recipients: Vec<String>,
    /// Who read it (receipts).
    pub read_by: BTreeSet<String>,
    /// Who acknowledged it (or an escalation of it), and when.
    pub acked: Option<(String, u64)>,
    /// Escalations that happened: (step, when it fell due in ms, target).
    /// Every device derives them from the alert, the directory and its own
    /// clock, so they happen with the sender's device off.
    pub escalations: Vec<(u8, u64, Target)>,
    /// This device has sent its read receipt for it.
    #[serde(default)]
    pub receipted: bool,
}

/// Where an unacknowledged alert to `to` goes next, step by step: a person's
/// deputy role (or, without one, their team), a role's deputy role (or its
/// team), and nothing past a team. At most four steps, no target twice.
pub fn escalation_chain(dir: &Directory, to: &Target) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let mut t = to.clone();
    for _ in 0..4 {
        let next = match &t {
            Target::User(u) => dir
                .roles_of(u)
                .find_map(|r| r.deputy.clone())
                .map(Target::Role)
                .or_else(|| dir.roles_of(u).next().map(|r| Target::Team(r.team.clone()))),
            Target::Role(r) => dir.role(r).map(|r| match &r.deputy {
                Some(d) => Target::Role(d.clone()),
                None => Target::Team(r.team.clone()),
            }),
            Target::Team(_) => None,
        };
        let Some(n) = next else { break };
        if n == *to || out.contains(&n) {
            break;
        }
        out.push(n.clone());
        t = n;
    }
    out
}

/// Per-role call-in tally.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoleTally {
    /// Coming now.
    pub now: u32,
    /// Coming later: minutes each.
    pub later: Vec<u32>,
    /// Cannot come.
    pub unavailable: u32,
}

/// The coordinator's live view of a call-in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// By role.
    pub by_role: BTreeMap<String, RoleTally>,
    /// Replies counted.
    pub replies: u32,
    /// On the call-out list and not replied.
    pub not_replied: Vec<String>,
}

/// A decision-log export anyone can verify with [`verify_decision_log`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionLog {
    /// `sitrep-decision-log-v1`.
    pub format: String,
    /// Conversation name.
    pub conversation: String,
    /// Organisation key (base64) and its fingerprint.
    pub org_public_key: String,
    /// Fingerprint.
    pub org_fingerprint: String,
    /// Entries in log order: every entry after those it follows, entries
    /// logged at the same time ordered by time, then hash.
    pub entries: Vec<SignedDecision>,
    /// Hex hash of the last entry.
    pub head: String,
    /// (v2) Hex hashes of every entry nothing follows yet, in log order: more
    /// than one while the log has concurrent branches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<String>,
    /// (v2) Each entry's place in the server's log, as the exporting device
    /// received it: what orders entries made at the same time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seqs: Vec<u64>,
    /// (v2) Entries followed but not held by the exporting device (it joined
    /// after them): the export starts after them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// ms since the Unix epoch.
    pub exported_at: u64,
    /// Exporting device's credential (base64).
    pub exported_by: String,
    /// Exporter's signature over `sitrep-decision-log-v2 || heads joined by
    /// "," || be64(count) || (hex hash || be64(seq)) for each entry in order ||
    /// missing joined by ","` (v1:
    /// `sitrep-decision-log-v1 || head || be64(count)`).
    pub signature: String,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const LOG_LABEL: &[u8] = b"sitrep-decision-log-v1";
const LOG_LABEL_V2: &[u8] = b"sitrep-decision-log-v2";

/// What an entry follows: its `prev` and its `also`.
fn parents(d: &SignedDecision) -> impl Iterator<Item = &String> {
    std::iter::once(&d.entry.prev).chain(d.entry.also.iter())
}

/// A decision log in its one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordered {
    /// Entries: each after every entry it follows; among entries free to go
    /// next, the lowest server sequence number, then the lowest hash.
    pub entries: Vec<SignedDecision>,
    /// Their server sequence numbers.
    pub seqs: Vec<u64>,
    /// Hashes of the entries nothing follows, in that order.
    pub heads: Vec<String>,
    /// Followed but not in the log, sorted.
    pub missing: Vec<String>,
}

/// Put `entries` (with their server sequence numbers) in the log's one
/// order. The server's sequence is the same on every device, and an entry
/// someone dated in the past still goes where it arrived. Fails on a
/// repeated entry.
pub fn log_order(entries: &[SignedDecision], seqs: &[u64]) -> Result<Ordered, String> {
    if entries.len() != seqs.len() {
        return Err("one sequence number per entry".into());
    }
    let hashes: Vec<String> = entries.iter().map(decision_hash).collect();
    let index: BTreeMap<&str, usize> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (h.as_str(), i))
        .collect();
    if index.len() != entries.len() {
        return Err("an entry appears twice".into());
    }
    let mut waiting = vec![0usize; entries.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); entries.len()];
    let mut missing = BTreeSet::new();
    for (i, d) in entries.iter().enumerate() {
        for p in parents(d) {
            if p == GENESIS {
                continue;
            }
            match index.get(p.as_str()) {
                Some(&j) => {
                    waiting[i] += 1;
                    children[j].push(i);
                }
                None => {
                    missing.insert(p.clone());
                }
            }
        }
    }
    let mut ready: BTreeSet<(u64, &str, usize)> = (0..entries.len())
        .filter(|&i| waiting[i] == 0)
        .map(|i| (seqs[i], hashes[i].as_str(), i))
        .collect();
    let mut order = Vec::with_capacity(entries.len());
    while let Some((_, _, i)) = ready.pop_first() {
        order.push(i);
        for &c in &children[i] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.insert((seqs[c], hashes[c].as_str(), c));
            }
        }
    }
    let followed: BTreeSet<&String> = entries.iter().flat_map(parents).collect();
    Ok(Ordered {
        heads: order
            .iter()
            .map(|&i| hashes[i].clone())
            .filter(|h| !followed.contains(h))
            .collect(),
        entries: order.iter().map(|&i| entries[i].clone()).collect(),
        seqs: order.iter().map(|&i| seqs[i]).collect(),
        missing: missing.into_iter().collect(),
    })
}

/// What the exporter signs: the heads, the count, each entry's hash with
/// its sequence number in order, and what is missing.
fn export_message(o: &Ordered) -> Vec<u8> {
    let mut msg = o.heads.join(",").into_bytes();
    msg.extend_from_slice(&(o.entries.len() as u64).to_be_bytes());
    for (d, s) in o.entries.iter().zip(&o.seqs) {
        msg.extend_from_slice(decision_hash(d).as_bytes());
        msg.extend_from_slice(&s.to_be_bytes());
    }
    msg.extend_from_slice(o.missing.join(",").as_bytes());
    msg
}

/// Hash of a signed entry (what the next entry's `prev` names).
pub fn decision_hash(d: &SignedDecision) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&d.entry).expect("plain struct"));
    h.update(d.signature.as_bytes());
    hex::encode(h.finalize())
}

fn verify_decision(d: &SignedDecision, org_key: &[u8]) -> Result<(), String> {
    let cred = sitrep_wire::b64::decode(&d.credential).ok_or("credential is not base64")?;
    let sig = sitrep_wire::b64::decode(&d.signature).ok_or("signature is not base64")?;
    let msg = serde_json::to_vec(&d.entry).map_err(|e| e.to_string())?;
    let who = sitrep_wire::credential::verify_detached(org_key, &cred, DECISION_LABEL, &msg, &sig)
        .map_err(|e| format!("signature: {e}"))?;
    if who.user_id != d.entry.author || who.device_id != d.entry.device {
        return Err("signed by another device than it names".into());
    }
    Ok(())
}

/// Check an exported decision log: every entry signed by its author's
/// organisation-vouched device, each chained to the one before, and the
/// exporter's signature over the head and count. Returns the entry count.
pub fn verify_decision_log(json: &[u8]) -> Result<usize, String> {
    let log: DecisionLog =
        serde_json::from_slice(json).map_err(|e| format!("not a decision log: {e}"))?;
    let org = sitrep_wire::b64::decode(&log.org_public_key).ok_or("bad organisation key")?;
    if sitrep_wire::credential::fingerprint(&org) != log.org_fingerprint {
        return Err("organisation key does not match its fingerprint".into());
    }
    for (i, d) in log.entries.iter().enumerate() {
        verify_decision(d, &org).map_err(|e| format!("entry {}: {e} (changed?)", i + 1))?;
    }
    let cred = sitrep_wire::b64::decode(&log.exported_by).ok_or("bad exporter credential")?;
    let sig = sitrep_wire::b64::decode(&log.signature).ok_or("bad signature")?;
    let (label, msg) = match log.format.as_str() {
        "sitrep-decision-log-v1" => {
            // A single chain.
            let mut prev = GENESIS.to_string();
            for (i, d) in log.entries.iter().enumerate() {
                if d.entry.prev != prev || !d.entry.also.is_empty() {
                    return Err(format!(
                        "entry {}: does not follow the entry before it (removed or reordered)",
                        i + 1
                    ));
                }
                prev = decision_hash(d);
            }
            if prev != log.head {
                return Err("the log's head does not match its last entry (truncated?)".into());
            }
            let mut msg = log.head.as_bytes().to_vec();
            msg.extend_from_slice(&(log.entries.len() as u64).to_be_bytes());
            (LOG_LABEL, msg)
        }
        "sitrep-decision-log-v2" => {
            let o = log_order(&log.entries, &log.seqs)?;
            if let Some(i) = o.entries.iter().zip(&log.entries).position(|(a, b)| a != b) {
                return Err(format!(
                    "entry {}: out of order (reordered, or an entry before it removed)",
                    i + 1
                ));
            }
            if o.seqs != log.seqs {
                return Err("sequence numbers out of order".into());
            }
            if o.missing != log.missing {
                return Err("an entry follows one that is not in the log (removed?)".into());
            }
            if o.heads != log.heads || log.head != *o.heads.last().map_or(GENESIS, String::as_str) {
                return Err(
                    "the log's heads do not match its entries (an entry removed, or truncated?)"
                        .into(),
                );
            }
            (LOG_LABEL_V2, export_message(&o))
        }
        other => return Err(format!("unknown decision log format {other:?}")),
    };
    sitrep_wire::credential::verify_detached(&org, &cred, label, &msg, &sig)
        .map_err(|e| format!("exporter signature: {e}"))?;
    Ok(log.entries.len())
}

/// The history kind of a structured content kind.
pub(crate) fn structured_kind(kind: &str) -> Option<Kind> {
    Some(match kind {
        "incident" => Kind::Incident,
        "callin" => Kind::Callin,
        "alert" => Kind::Alert,
        "ack" => Kind::Ack,
        "receipt" => Kind::Receipt,
        "decision" => Kind::Decision,
        "casualty" => Kind::Casualty,
        _ => return None,
    })
}

impl Client {
    /// Take up a newer organisation-signed directory.
    pub fn apply_directory(&mut self, signed: &[u8]) -> Result<Directory, Error> {
        let d = SignedDirectory::verify(signed, &self.state.device.org_public_key)
            .map_err(|e| Error::Unverified(e.to_string()))?;
        if self.state.directory.is_some() && d.serial <= self.directory().serial {
            return Ok(self.directory());
        }
        self.state.directory = Some(serde_bytes::ByteBuf::from(signed.to_vec()));
        self.verified_directory.replace(None);
        Ok(d)
    }

    /// The directory in force (verified once after unlock or a change; empty if none).
    pub fn directory(&self) -> Directory {
        self.verified_directory
            .borrow_mut()
            .get_or_insert_with(|| {
                self.state
                    .directory
                    .as_ref()
                    .and_then(|b| {
                        SignedDirectory::verify(b, &self.state.device.org_public_key).ok()
                    })
                    .unwrap_or_default()
            })
            .clone()
    }

    /// Incidents this device knows.
    pub fn incidents(&self) -> impl Iterator<Item = &IncidentState> {
        self.state.incidents.values()
    }

    /// Every alert this device knows, by message id.
    pub fn alert_states(&self) -> impl Iterator<Item = (&String, &AlertState)> {
        self.state.alerts.iter()
    }

    /// One alert's state, by its message id.
    pub fn alert_state(&self, id: &str) -> Option<&AlertState> {
        self.state.alerts.get(id)
    }

    /// Alerts addressed to this user and not yet acknowledged;
    /// `breakthrough` ones must be surfaced even in do-not-disturb. At
    /// `now_ms`: addressed directly or by an escalation that has fallen due
    /// (worked out here, whether or not the sender's device is on).
    pub fn alerts_for_me(&self, now_ms: u64) -> Vec<(&String, &AlertState)> {
        self.alerts_reaching_me(now_ms)
            .filter(|(_, a)| a.acked.is_none())
            .collect()
    }

    /// The alerts addressed to this user at `now_ms`: directly, or by an
    /// escalation step that fell due before anyone acknowledged.
    fn alerts_reaching_me(&self, now_ms: u64) -> impl Iterator<Item = (&String, &AlertState)> {
        let me = self.user_id().to_string();
        let dir = self.directory();
        self.state.alerts.iter().filter(move |(_, a)| {
            a.recipients.contains(&me)
                || due_steps(&dir, a, now_ms)
                    .iter()
                    .any(|(_, _, t)| self.expand_target(t).contains(&me))
        })
    }

    /// A target as a person types it: `user:ID`, `role:ID`, `team:ID`, or a
    /// bare id (a role if the directory has it, else a user).
    pub fn parse_target(&self, s: &str) -> Target {
        let s = s.trim();
        match s.split_once(':') {
            Some(("user", u)) => Target::User(u.into()),
            Some(("role", r)) => Target::Role(r.into()),
            Some(("team", t)) => Target::Team(t.into()),
            _ if self.directory().role(s).is_some() => Target::Role(s.into()),
            _ => Target::User(s.into()),
        }
    }

    /// Who an alert target means now.
    pub fn expand_target(&self, t: &Target) -> Vec<String> {
        let d = self.directory();
        match t {
            Target::User(u) => vec![u.clone()],
            Target::Role(r) => d.holders_of(r),
            Target::Team(t) => d.team(t).into_iter().collect(),
        }
    }

    /// Encrypt a structured item after the sender-side checks every receiver
    /// also applies.
    pub fn send_structured(
        &mut self,
        name: &str,
        item: &Structured,
        now_ms: u64,
    ) -> Result<Outgoing, Error> {
        item.validate().map_err(|e| Error::Invalid(e.to_string()))?;
        let hex = self.group_hex(name)?;
        let me = self.user_id().to_string();
        self.authorised(&hex, &me, item).map_err(Error::Invalid)?;
        let (kind, body) = item.encode();
        self.encrypt_content(name, kind, &body, None, now_ms)
    }

    /// Reply to incident `id`'s call-in, into the outbox of the
    /// conversation it was raised in; `role` by default the user's first
    /// role in the directory (`staff` without one).
    pub fn callin_reply(
        &mut self,
        id: &str,
        availability: Availability,
        role: Option<String>,
        now_ms: u64,
    ) -> Result<Outgoing, Error> {
        let group = self
            .incidents()
            .find(|i| i.id == id)
            .map(|i| i.group.clone())
            .ok_or_else(|| {
                Error::Invalid(format!("no incident {id} on this device (sync first?)"))
            })?;
        if !self.state.conversations.contains_key(&group) {
            return Err(Error::Invalid("the incident's conversation is gone".into()));
        }
        let role = role.unwrap_or_else(|| {
            self.directory()
                .roles_of(self.user_id())
                .next()
                .map_or_else(|| "staff".into(), |r| r.id.clone())
        });
        let item = Structured::Callin(sitrep_wire::incident::CallinReply {
            incident: id.to_string(),
            availability,
            role,
        });
        self.send_structured(&group, &item, now_ms)
    }

    /// Acknowledge alert `alert` (its message id), into the outbox of its
    /// conversation: it stops escalating on every device.
    pub fn ack_alert(&mut self, alert: &str, now_ms: u64) -> Result<Outgoing, Error> {
        let group = self
            .alert_state(alert)
            .map(|a| a.group.clone())
            .ok_or_else(|| Error::Invalid(format!("no alert {alert} on this device")))?;
        if !self.state.conversations.contains_key(&group) {
            return Err(Error::Invalid("the alert's conversation is gone".into()));
        }
        let item = Structured::Ack(Ack {
            alert: alert.to_string(),
        });
        self.send_structured(&group, &item, now_ms)
    }

    /// A signed decision-log entry chained to this conversation's log head.
    pub fn decision(
        &self,
        name: &str,
        kind: DecisionKind,
        text: &str,
        now_ms: u64,
    ) -> Result<Structured, Error> {
        let conv = self.conversation(name)?;
        // Follow every head this device knows: the newest as `prev`, any
        // others (entries logged at the same time elsewhere) in `also`.
        let followed: BTreeSet<&String> = conv.decisions.iter().flat_map(parents).collect();
        let mut heads: Vec<(u64, String)> = conv
            .decisions
            .iter()
            .map(|d| (d.entry.at, decision_hash(d)))
            .filter(|(_, h)| !followed.contains(h))
            .collect();
        heads.sort();
        let mut heads: Vec<String> = heads.into_iter().map(|(_, h)| h).collect();
        let prev = heads.pop().unwrap_or_else(|| GENESIS.to_string());
        let entry = DecisionEntry {
            kind,
            text: text.to_string(),
            prev,
            also: heads,
            at: now_ms,
            author: self.user_id().to_string(),
            device: self.device_id().to_string(),
        };
        let msg = serde_json::to_vec(&entry).map_err(|e| Error::Invalid(e.to_string()))?;
        let sig = self.sign_detached(DECISION_LABEL, &msg)?;
        Ok(Structured::Decision(SignedDecision {
            entry,
            credential: sitrep_wire::b64::encode(self.credential()),
            signature: sitrep_wire::b64::encode(&sig),
        }))
    }

    /// Export a conversation's decision log, signed over its head.
    pub fn export_decisions(&self, name: &str, now_ms: u64) -> Result<DecisionLog, Error> {
        let conv = self.conversation(name)?;
        let seqs: Vec<u64> = conv
            .decisions
            .iter()
            .map(|d| {
                conv.decision_seqs
                    .get(&decision_hash(d))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        let o = log_order(&conv.decisions, &seqs).map_err(Error::Invalid)?;
        let head = o
            .heads
            .last()
            .cloned()
            .unwrap_or_else(|| GENESIS.to_string());
        let sig = self.sign_detached(LOG_LABEL_V2, &export_message(&o))?;
        Ok(DecisionLog {
            format: "sitrep-decision-log-v2".into(),
            conversation: conv.name.clone(),
            org_public_key: sitrep_wire::b64::encode(self.org_public_key()),
            org_fingerprint: sitrep_wire::credential::fingerprint(self.org_public_key()),
            head,
            heads: o.heads,
            seqs: o.seqs,
            missing: o.missing,
            entries: o.entries,
            exported_at: now_ms,
            exported_by: sitrep_wire::b64::encode(self.credential()),
            signature: sitrep_wire::b64::encode(&sig),
        })
    }

    /// The casualty board of a conversation: latest entry per MI number.
    pub fn casualties(&self, name: &str) -> Result<Vec<(Casualty, u64, String)>, Error> {
        Ok(self
            .conversation(name)?
            .casualties
            .values()
            .cloned()
            .collect())
    }

    /// Live call-in tally for an incident: latest reply per person, by role,
    /// and who on the DECLARED call-out list has not replied.
    pub fn callin_tally(&self, incident: &str) -> Result<Tally, Error> {
        let inc = self
            .state
            .incidents
            .get(incident)
            .ok_or_else(|| Error::Invalid(format!("no incident {incident}")))?;
        let mut t = Tally::default();
        for (avail, role, _, _) in inc.callin.values() {
            let r = t.by_role.entry(role.clone()).or_default();
            match avail {
                Availability::Now => r.now += 1,
                Availability::In(m) => r.later.push(*m),
                Availability::Unavailable => r.unavailable += 1,
            }
            t.replies += 1;
        }
        let level = if inc.timeline.iter().any(|(l, _, _)| *l == Level::Declared) {
            Level::Declared
        } else {
            Level::Standby
        };
        t.not_replied = self
            .directory()
            .callout(level)
            .into_iter()
            .map(|(u, _)| u)
            .filter(|u| !inc.callin.contains_key(u))
            .collect();
        Ok(t)
    }

    /// Record the escalations that have fallen due by `now_ms`, on every
    /// device, for every alert: step k of [`escalation_chain`] falls due
    /// k x `ack_within_secs` after the alert unless it was acknowledged
    /// before then. Nobody sends anything: each device works it out from the
    /// alert, the directory and its clock, so an alert escalates with its
    /// sender's device off. Returns the newly recorded (alert id, step,
    /// target), for a notification.
    pub fn escalations_due(&mut self, now_ms: u64) -> Vec<(String, u8, Target)> {
        let dir = self.directory();
        let mut out = Vec::new();
        for (id, a) in self.state.alerts.iter_mut() {
            for (step, due, target) in due_steps(&dir, a, now_ms) {
                if !a.escalations.iter().any(|e| e.0 == step) {
                    a.escalations.push((step, due, target.clone()));
                    out.push((id.clone(), step, target));
                }
            }
        }
        out
    }

    /// When the next escalation step of an unacknowledged alert falls due
    /// after `now_ms` (for a live front end's timer: at that time a sync
    /// records it and the alert reaches its next target).
    pub fn next_escalation_at(&self, now_ms: u64) -> Option<u64> {
        let dir = self.directory();
        self.state
            .alerts
            .values()
            .filter(|a| a.acked.is_none() && a.alert.escalates.is_none())
            .filter_map(|a| {
                let chain = escalation_chain(&dir, &a.alert.to).len() as u64;
                let every = u64::from(a.alert.ack_within_secs) * 1000;
                let done = due_steps(&dir, a, now_ms).len() as u64;
                (every > 0 && done < chain).then(|| a.sent_at + every * (done + 1))
            })
            .min()
    }

    /// One aggregated receipt per conversation for the alerts addressed to
    /// this user (directly, or by an escalation step that fell due by
    /// `now_ms` before anyone acknowledged) that it has not yet receipted.
    /// Nobody else sends one, and no other message needs one: in a
    /// 5,000-member coordination group a receipt from every member for every
    /// message would be 25 million deliveries. Everyone else's "seen" is the
    /// server's read marker (`sitrep seen`).
    pub fn pending_receipts(&mut self, now_ms: u64) -> Vec<(String, Structured)> {
        let me = self.user_id().to_string();
        let mine: Vec<String> = self
            .alerts_reaching_me(now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        let mut by_conv: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in mine {
            let Some(a) = self.state.alerts.get_mut(&id) else {
                continue;
            };
            if a.receipted || a.sender == me {
                continue;
            }
            let Some(conv) = self.state.conversations.get(&a.group) else {
                continue;
            };
            if !conv.active {
                continue;
            }
            a.receipted = true;
            let ids = by_conv.entry(conv.name.clone()).or_default();
            if ids.len() < 1000 {
                ids.push(id);
            }
        }
        by_conv
            .into_iter()
            .map(|(conv, read)| (conv, Structured::Receipt(Receipt { read })))
            .collect()
    }

    /// Whether `user` may post `item` in the conversation `hex`.
    fn authorised(&self, hex: &str, user: &str, item: &Structured) -> Result<(), String> {
        let conv = &self.state.conversations[hex];
        let reading = matches!(
            item,
            Structured::Receipt(_) | Structured::Ack(_) | Structured::Callin(_)
        );
        // A command channel: the poster must be named by its creator and be
        // a commander in the signed directory now (holding, and eligible for,
        // a commanding role), whatever the creator wrote.
        if !conv.posters.is_empty()
            && !reading
            && (!conv.posters.iter().any(|p| p == user)
                || !self.directory().commanders().contains(user))
        {
            return Err(format!(
                "{user} is not a commander: only commanders post in {:?}",
                conv.name
            ));
        }
        if let Structured::Incident(m) = item
            && !self.directory().can_declare(user)
        {
            return Err(format!(
                "{user} holds no role the organisation authorises to raise {:?}",
                m.level
            ));
        }
        Ok(())
    }

    /// Apply a structured item (sent or received). `Err` is why it was refused.
    pub(crate) fn apply_structured(
        &mut self,
        hex: &str,
        e: &HistoryEntry,
        kind: &Kind,
    ) -> Result<(), String> {
        let item = Structured::decode(kind, &e.body)
            .map_err(|err| err.to_string())?
            .ok_or("not structured")?;
        self.authorised(hex, &e.sender, &item)?;
        let at = e.sent_at.min(e.received_at);
        match item {
            Structured::Incident(IncidentMsg {
                incident,
                level,
                methane,
                ..
            }) => {
                let inc = self
                    .state
                    .incidents
                    .entry(incident.clone())
                    .or_insert_with(|| IncidentState {
                        id: incident,
                        level,
                        methane: None,
                        group: hex.to_string(),
                        timeline: Vec::new(),
                        callin: BTreeMap::new(),
                    });
                inc.level = level;
                if methane.is_some() {
                    inc.methane = methane;
                }
                // The same raise goes into the coordination group and the
                // command channel; a member of both sees it once.
                let repeat = inc.timeline.last().is_some_and(|(l, t, by)| {
                    *l == level && *by == e.sender && t.abs_diff(at) < 10_000
                });
                if !repeat {
                    inc.timeline.push((level, at, e.sender.clone()));
                }
            }
            Structured::Callin(c) => {
                let inc = self
                    .state
                    .incidents
                    .get_mut(&c.incident)
                    .ok_or("call-in reply for an unknown incident")?;
                // Latest reply per person wins, by sent time then id, so
                // every device computes the same tally whatever the order.
                let newer = inc
                    .callin
                    .get(&e.sender)
                    .is_none_or(|(_, _, t, id)| (at, &e.id) > (*t, id));
                if newer {
                    inc.callin
                        .insert(e.sender.clone(), (c.availability, c.role, at, e.id.clone()));
                }
            }
            Structured::Alert(a) => {
                let recipients = self.expand_target(&a.to);
                if let Some((root, _)) = &a.escalates
                    && let Some(r) = self.state.alerts.get_mut(root)
                    && !r.escalations.iter().any(|x| x.2 == a.to)
                {
                    r.escalations
                        .push((a.escalates.as_ref().map_or(1, |x| x.1), at, a.to.clone()));
                }
                self.state.alerts.insert(
                    e.id.clone(),
                    AlertState {
                        alert: a,
                        group: hex.to_string(),
                        sender: e.sender.clone(),
                        sent_at: at,
                        recipients,
                        read_by: BTreeSet::new(),
                        acked: None,
                        escalations: Vec::new(),
                        receipted: false,
                    },
                );
            }
            Structured::Ack(Ack { alert }) => {
                let root = self
                    .state
                    .alerts
                    .get(&alert)
                    .and_then(|a| a.alert.escalates.as_ref().map(|x| x.0.clone()))
                    .unwrap_or(alert.clone());
                for id in [alert, root] {
                    if let Some(a) = self.state.alerts.get_mut(&id)
                        && a.acked.is_none()
                    {
                        // Not before the alert itself: a backdated
                        // acknowledgement cannot undo steps further back.
                        let at = at.max(a.sent_at);
                        a.acked = Some((e.sender.clone(), at));
                        // Acknowledged before a step fell due (the ack was
                        // still on its way): that step did not happen.
                        a.escalations.retain(|x| x.1 <= at);
                    }
                }
            }
            Structured::Receipt(r) => {
                for id in r.read {
                    if let Some(a) = self.state.alerts.get_mut(&id) {
                        a.read_by.insert(e.sender.clone());
                    }
                }
            }
            Structured::Decision(d) => {
                verify_decision(&d, &self.state.device.org_public_key)?;
                if d.entry.author != e.sender {
                    return Err("decision signed for someone else".into());
                }
                let conv = self
                    .state
                    .conversations
                    .get_mut(hex)
                    .ok_or("no conversation")?;
                // The same signed entry again (re-posted) changes nothing.
                let hash = decision_hash(&d);
                if conv.decision_seqs.contains_key(&hash)
                    || conv.decisions.iter().any(|x| decision_hash(x) == hash)
                {
                    return Ok(());
                }
                conv.decision_seqs.insert(hash, e.seq);
                conv.decisions.push(d);
            }
            Structured::Casualty(c) => {
                let conv = self
                    .state
                    .conversations
                    .get_mut(hex)
                    .ok_or("no conversation")?;
                conv.casualties
                    .insert(c.mi.to_ascii_uppercase(), (c, at, e.sender.clone()));
            }
        }
        Ok(())
    }
}

/// A one-line rendering of a structured history entry for people.
pub fn summary(kind: &str, body: &str) -> String {
    let Some(k) = structured_kind(kind) else {
        return body.to_string();
    };
    match Structured::decode(&k, body) {
        Ok(Some(Structured::Incident(m))) => {
            let mut s = format!("{} {}", m.level, m.incident).to_uppercase();
            if let Some(me) = m.methane {
                s.push_str(&format!(
                    " | M: {} E: {} T: {} H: {} A: {} N: {} (P1 {} P2 {} P3 {} dead {}) E: {}",
                    if me.major_incident {
                        "declared"
                    } else {
                        "standby"
                    },
                    me.exact_location,
                    me.incident_type,
                    me.hazards,
                    me.access,
                    me.casualties.estimated,
                    me.casualties.p1,
                    me.casualties.p2,
                    me.casualties.p3,
                    me.casualties.dead,
                    me.emergency_services
                ));
            }
            s
        }
        Ok(Some(Structured::Callin(c))) => {
            format!("call-in {}: {} as {}", c.incident, c.availability, c.role)
        }
        Ok(Some(Structured::Alert(a))) => {
            format!(
                "{} ALERT to {}: {}",
                a.priority.to_string().to_uppercase(),
                a.to,
                a.text
            )
        }
        Ok(Some(Structured::Ack(a))) => format!("acknowledged alert {}", &a.alert[..8]),
        Ok(Some(Structured::Receipt(r))) => match r.read.len() {
            1 => "read 1 item".to_string(),
            n => format!("read {n} items"),
        },
        Ok(Some(Structured::Decision(d))) => {
            let k = match d.entry.kind {
                DecisionKind::Decision => "DECISION",
                DecisionKind::Action => "ACTION",
            };
            format!("{k}: {}", d.entry.text)
        }
        Ok(Some(Structured::Casualty(c))) => format!(
            "casualty {} {} at {} {}",
            c.mi, c.triage, c.location, c.note
        ),
        _ => "(unreadable structured item)".into(),
    }
}

/// The steps of `a`'s chain that have fallen due by `now_ms`: (step, due ms,
/// target). None for an explicit escalation message (older clients sent
/// them) or once acknowledged before the step's time.
fn due_steps(dir: &Directory, a: &AlertState, now_ms: u64) -> Vec<(u8, u64, Target)> {
    if a.alert.escalates.is_some() {
        return Vec::new();
    }
    let every = u64::from(a.alert.ack_within_secs) * 1000;
    let mut out = Vec::new();
    for (k, target) in escalation_chain(dir, &a.alert.to).into_iter().enumerate() {
        let step = k as u8 + 1;
        let due = a.sent_at + every * u64::from(step);
        if due > now_ms || a.acked.as_ref().is_some_and(|(_, at)| *at < due) {
            break;
        }
        out.push((step, due, target));
    }
    out
}
