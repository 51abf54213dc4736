//! Major-incident content: what travels, end to end encrypted, inside MLS
//! application messages as structured content kinds (see [`crate::content::Kind`]).
//!
//! Each type is carried as JSON in the content body; [`Structured::decode`]
//! bounds and validates it, so a malformed or out-of-range item is refused by
//! every client the same way.

use serde::{Deserialize, Serialize};

use crate::content::Kind;

/// Bound on free-text fields (METHANE lines, alert text).
pub const MAX_FIELD: usize = 1000;

/// Incident alert levels (UK major-incident practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// May escalate; key people on the call-out list are alerted.
    Standby,
    /// A major incident is declared: the plan is activated.
    Declared,
    /// Stood down before declaring, or declared in error.
    Cancelled,
    /// The response ends.
    StandDown,
}

/// Casualty numbers and severity (the N of METHANE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Casualties {
    /// Estimated total.
    pub estimated: u32,
    /// Immediate.
    pub p1: u32,
    /// Urgent.
    pub p2: u32,
    /// Delayed.
    pub p3: u32,
    /// Dead.
    pub dead: u32,
}

/// A METHANE report; with `major_incident` false it is an ETHANE report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Methane {
    /// M: major incident declared (false: standby, ETHANE).
    pub major_incident: bool,
    /// E: exact location.
    pub exact_location: String,
    /// T: type of incident.
    pub incident_type: String,
    /// H: hazards, present and potential.
    pub hazards: String,
    /// A: access and egress routes.
    pub access: String,
    /// N: number and severity of casualties.
    pub casualties: Casualties,
    /// E: emergency services present and required.
    pub emergency_services: String,
}

/// Why structured content was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IncidentError {
    /// Not JSON of the expected shape.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A field is missing, empty, too long or out of range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

fn text(s: &str, what: &'static str) -> Result<(), IncidentError> {
    if s.trim().is_empty() || s.len() > MAX_FIELD {
        return Err(IncidentError::Invalid(what));
    }
    Ok(())
}

impl Methane {
    /// Every line present and bounded; casualty numbers consistent.
    pub fn validate(&self) -> Result<(), IncidentError> {
        text(&self.exact_location, "METHANE exact location")?;
        text(&self.incident_type, "METHANE type of incident")?;
        text(&self.hazards, "METHANE hazards")?;
        text(&self.access, "METHANE access")?;
        text(&self.emergency_services, "METHANE emergency services")?;
        let c = self.casualties;
        let triaged = [c.p1, c.p2, c.p3, c.dead]
            .iter()
            .try_fold(0u32, |a, b| a.checked_add(*b))
            .ok_or(IncidentError::Invalid("METHANE casualties"))?;
        if c.estimated > 100_000 || triaged > c.estimated {
            return Err(IncidentError::Invalid(
                "METHANE casualties (triaged more than estimated)",
            ));
        }
        Ok(())
    }
}

/// STANDBY, DECLARED, CANCELLED or STAND DOWN for one incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentMsg {
    /// Incident id, e.g. `MI-2026-11-26-01` (an id: `[A-Za-z0-9._-]`, 1..=64).
    pub incident: String,
    /// The level.
    pub level: Level,
    /// Required for DECLARED (with `major_incident`); optional ETHANE at STANDBY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methane: Option<Methane>,
    /// Free text.
    #[serde(default)]
    pub note: String,
}

/// A staff member's answer to the call-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "minutes")]
pub enum Availability {
    /// Coming now.
    Now,
    /// Coming in this many minutes (1..=720).
    In(u32),
    /// Cannot come.
    Unavailable,
}

/// One call-in reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallinReply {
    /// Incident id.
    pub incident: String,
    /// The answer.
    pub availability: Availability,
    /// The role the person would fill.
    pub role: String,
}

/// Alert priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Routine.
    Routine,
    /// Urgent.
    Urgent,
    /// Emergency: break-through delivery.
    Emergency,
}

/// Whom an alert is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum Target {
    /// One person (user id).
    User(String),
    /// Whoever holds a role (role id).
    Role(String),
    /// Everyone in a team.
    Team(String),
}

/// A priority alert that needs acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Priority.
    pub priority: Priority,
    /// Recipient.
    pub to: Target,
    /// The text.
    pub text: String,
    /// Escalate if nobody acknowledged within this (30..=3600 s).
    pub ack_within_secs: u32,
    /// Surface even in do-not-disturb (always true for emergency).
    pub breakthrough: bool,
    /// The alert (message id) this escalates, and the step in the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalates: Option<(String, u8)>,
}

impl Alert {
    /// A new alert (not an escalation); an emergency always breaks through
    /// do-not-disturb.
    pub fn new(priority: Priority, to: Target, text: &str, ack_within_secs: u32) -> Self {
        Self {
            priority,
            to,
            text: text.to_string(),
            ack_within_secs,
            breakthrough: priority == Priority::Emergency,
            escalates: None,
        }
    }
}

/// An acknowledgement of an alert (its message id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Message id of the alert.
    pub alert: String,
}

/// Read receipts, aggregated: one message lists everything read since the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Message ids (at most 1000).
    pub read: Vec<String>,
}

/// DECISION or ACTION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DecisionKind {
    /// A decision.
    Decision,
    /// An action.
    Action,
}

/// One decision-log entry as its author signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionEntry {
    /// DECISION or ACTION.
    pub kind: DecisionKind,
    /// What was decided.
    pub text: String,
    /// Hex SHA-256 of the entry before in this conversation's log (64 zeros for the first).
    pub prev: String,
    /// When the log had forked (two people logged at once), the other heads
    /// the author's device knew: this entry joins the branches again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// ms since the Unix epoch, author's clock.
    pub at: u64,
    /// Author's user id.
    pub author: String,
    /// Author's device id.
    pub device: String,
}

/// A decision-log entry with its author device's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDecision {
    /// The entry.
    pub entry: DecisionEntry,
    /// Base64 organisation-signed credential of the author's device.
    pub credential: String,
    /// Base64 Ed25519 over `sitrep-decision-v1 || JSON(entry)`.
    pub signature: String,
}

/// Triage category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Triage {
    /// Immediate.
    P1,
    /// Urgent.
    P2,
    /// Delayed.
    P3,
    /// Dead.
    Dead,
}

/// A casualty-board entry, keyed by major-incident number; no names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Casualty {
    /// `MI-0001`...
    pub mi: String,
    /// Triage category.
    pub triage: Triage,
    /// Where the casualty is (resus 2, CT, theatre 3).
    pub location: String,
    /// Update text.
    #[serde(default)]
    pub note: String,
}

/// Every structured item, with its content kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Structured {
    /// STANDBY / DECLARED / CANCELLED / STAND DOWN.
    Incident(IncidentMsg),
    /// A call-in reply.
    Callin(CallinReply),
    /// A priority alert.
    Alert(Alert),
    /// An acknowledgement.
    Ack(Ack),
    /// Aggregated read receipts.
    Receipt(Receipt),
    /// A decision-log entry.
    Decision(SignedDecision),
    /// A casualty-board entry.
    Casualty(Casualty),
}

/// Domain separation for decision signatures.
pub const DECISION_LABEL: &[u8] = b"sitrep-decision-v1";

fn is_mi(s: &str) -> bool {
    // Bytes, not `&s[..3]`: a sender's multi-byte character across byte 3
    // must be refused, not panic every receiving client.
    let b = s.as_bytes();
    b.len() >= 4
        && b.len() <= 10
        && b[..3].eq_ignore_ascii_case(b"MI-")
        && b[3..].iter().all(u8::is_ascii_digit)
}

impl Structured {
    /// Content kind and JSON body.
    pub fn encode(&self) -> (Kind, String) {
        let (k, j) = match self {
            Self::Incident(v) => (Kind::Incident, serde_json::to_string(v)),
            Self::Callin(v) => (Kind::Callin, serde_json::to_string(v)),
            Self::Alert(v) => (Kind::Alert, serde_json::to_string(v)),
            Self::Ack(v) => (Kind::Ack, serde_json::to_string(v)),
            Self::Receipt(v) => (Kind::Receipt, serde_json::to_string(v)),
            Self::Decision(v) => (Kind::Decision, serde_json::to_string(v)),
            Self::Casualty(v) => (Kind::Casualty, serde_json::to_string(v)),
        };
        (k, j.expect("plain structs serialise"))
    }

    /// Decode and validate the body of a structured kind; `Ok(None)` for text
    /// and other non-structured kinds.
    pub fn decode(kind: &Kind, body: &str) -> Result<Option<Self>, IncidentError> {
        fn j<'a, T: Deserialize<'a>>(b: &'a str, what: &'static str) -> Result<T, IncidentError> {
            serde_json::from_str(b).map_err(|_| IncidentError::Malformed(what))
        }
        let s = match kind {
            Kind::Incident => Self::Incident(j(body, "incident")?),
            Kind::Callin => Self::Callin(j(body, "call-in reply")?),
            Kind::Alert => Self::Alert(j(body, "alert")?),
            Kind::Ack => Self::Ack(j(body, "acknowledgement")?),
            Kind::Receipt => Self::Receipt(j(body, "receipt")?),
            Kind::Decision => Self::Decision(j(body, "decision")?),
            Kind::Casualty => Self::Casualty(j(body, "casualty")?),
            _ => return Ok(None),
        };
        s.validate()?;
        Ok(Some(s))
    }

    /// Field checks every client applies.
    pub fn validate(&self) -> Result<(), IncidentError> {
        use crate::api::{valid_client_id, valid_id};
        match self {
            Self::Incident(m) => {
                if !valid_id(&m.incident) {
                    return Err(IncidentError::Invalid("incident id"));
                }
                if m.note.len() > MAX_FIELD {
                    return Err(IncidentError::Invalid("note"));
                }
                match (&m.level, &m.methane) {
                    (Level::Declared, Some(me)) if me.major_incident => me.validate(),
                    (Level::Declared, _) => Err(IncidentError::Invalid(
                        "DECLARED needs a METHANE report (major incident: yes)",
                    )),
                    (_, Some(me)) => me.validate(),
                    (_, None) => Ok(()),
                }
            }
            Self::Callin(c) => {
                if !valid_id(&c.incident) || c.role.len() > 64 {
                    return Err(IncidentError::Invalid("call-in reply"));
                }
                match c.availability {
                    Availability::In(m) if !(1..=720).contains(&m) => {
                        Err(IncidentError::Invalid("call-in minutes (1 to 720)"))
                    }
                    _ => Ok(()),
                }
            }
            Self::Alert(a) => {
                text(&a.text, "alert text")?;
                let id = match &a.to {
                    Target::User(i) | Target::Role(i) | Target::Team(i) => i,
                };
                if !valid_id(id) {
                    return Err(IncidentError::Invalid("alert recipient"));
                }
                if !(30..=3600).contains(&a.ack_within_secs) {
                    return Err(IncidentError::Invalid("ack_within_secs (30 to 3600)"));
                }
                if a.priority == Priority::Emergency && !a.breakthrough {
                    return Err(IncidentError::Invalid("emergency alerts break through"));
                }
                if a.escalates
                    .as_ref()
                    .is_some_and(|(id, step)| !valid_client_id(id) || *step > 8)
                {
                    return Err(IncidentError::Invalid("escalation"));
                }
                Ok(())
            }
            Self::Ack(a) if valid_client_id(&a.alert) => Ok(()),
            Self::Ack(_) => Err(IncidentError::Invalid("acknowledged alert id")),
            Self::Receipt(r) => {
                if r.read.len() > 1000 || !r.read.iter().all(|i| valid_client_id(i)) {
                    return Err(IncidentError::Invalid("receipt"));
                }
                Ok(())
            }
            Self::Decision(d) => {
                text(&d.entry.text, "decision text")?;
                if d.entry.prev.len() != 64 || hex::decode(&d.entry.prev).is_err() {
                    return Err(IncidentError::Invalid("decision chain"));
                }
                if !valid_id(&d.entry.author) || !valid_id(&d.entry.device) {
                    return Err(IncidentError::Invalid("decision author"));
                }
                Ok(())
            }
            Self::Casualty(c) => {
                if !is_mi(&c.mi) {
                    return Err(IncidentError::Invalid("major-incident number (MI-0001)"));
                }
                text(&c.location, "casualty location")?;
                if c.note.len() > MAX_FIELD {
                    return Err(IncidentError::Invalid("note"));
                }
                Ok(())
            }
        }
    }
}

/// Plain English for people (never `Debug`).
impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Standby => "standby",
            Self::Declared => "major incident declared",
            Self::Cancelled => "cancelled",
            Self::StandDown => "stood down",
        })
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Routine => "routine",
            Self::Urgent => "urgent",
            Self::Emergency => "emergency",
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(u) => write!(f, "{u}"),
            Self::Role(r) => write!(f, "whoever holds {r}"),
            Self::Team(t) => write!(f, "team {t}"),
        }
    }
}

impl std::fmt::Display for Triage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::P1 => "P1 immediate",
            Self::P2 => "P2 urgent",
            Self::P3 => "P3 delayed",
            Self::Dead => "dead",
        })
    }
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Now => f.write_str("coming now"),
            Self::In(1) => f.write_str("coming in 1 minute"),
            Self::In(m) => write!(f, "coming in {m} minutes"),
            Self::Unavailable => f.write_str("not available"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn methane() -> Methane {
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
            emergency_services: "fire, police, 6 ambulances; HEMS requested".into(),
        }
    }

    #[test]
    fn declared_needs_a_valid_methane() {
        let mut m = IncidentMsg {
            incident: "MI-2026-01".into(),
            level: Level::Declared,
            methane: Some(methane()),
            note: String::new(),
        };
        let (k, b) = Structured::Incident(m.clone()).encode();
        assert_eq!(
            Structured::decode(&k, &b),
            Ok(Some(Structured::Incident(m.clone())))
        );
        m.methane.as_mut().expect("m").hazards = " ".into();
        assert!(Structured::Incident(m.clone()).validate().is_err());
        m.methane.as_mut().expect("m").hazards = "none".into();
        m.methane.as_mut().expect("m").casualties.p1 = 100;
        assert!(
            Structured::Incident(m.clone()).validate().is_err(),
            "more triaged than estimated"
        );
        m.methane = None;
        assert!(Structured::Incident(m.clone()).validate().is_err());
        m.level = Level::Standby;
        assert!(Structured::Incident(m.clone()).validate().is_ok());
        let mut e = methane();
        e.major_incident = false;
        m.level = Level::Declared;
        m.methane = Some(e);
        assert!(
            Structured::Incident(m).validate().is_err(),
            "ETHANE does not declare"
        );
    }

    #[test]
    fn other_items_are_bounded() {
        let c = CallinReply {
            incident: "MI-1".into(),
            availability: Availability::In(0),
            role: "anaesthetist".into(),
        };
        assert!(Structured::Callin(c).validate().is_err());
        let a = Alert {
            priority: Priority::Emergency,
            to: Target::Role("site-manager".into()),
            text: "CT down".into(),
            ack_within_secs: 60,
            breakthrough: false,
            escalates: None,
        };
        assert!(Structured::Alert(a).validate().is_err());
        let c = Casualty {
            mi: "MI-0042".into(),
            triage: Triage::P1,
            location: "resus 2".into(),
            note: String::new(),
        };
        assert!(Structured::Casualty(c.clone()).validate().is_ok());
        let bad = Casualty {
            mi: "Smith".into(),
            ..c
        };
        assert!(Structured::Casualty(bad).validate().is_err());
    }

    #[test]
    fn multi_byte_mi_number_is_refused_not_a_panic() {
        // Found by the `incident` fuzz target: `&mi[..3]` split a character.
        let body = r#"{"mi":"MIé0","triage":"P1","location":"x"}"#;
        assert!(Structured::decode(&Kind::Casualty, body).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(body in ".{0,300}", k in 0u8..8) {
            let kind = match k {
                0 => Kind::Incident, 1 => Kind::Callin, 2 => Kind::Alert, 3 => Kind::Ack,
                4 => Kind::Receipt, 5 => Kind::Decision, 6 => Kind::Casualty, _ => Kind::Text,
            };
            let _ = Structured::decode(&kind, &body);
        }
    }
}
