//! Turns chat messages that a clinician chooses into FHIR R4 (4.0.1)
//! `Communication` resources, serialised as JSON, for transfer into the
//! patient's health record (`record transfer`).
//!
//! One message becomes a single `Communication`; several become a `Bundle`
//! of type `collection` holding one `Communication` per message.
//!
//! The few R4 elements used are plain serde structs in this crate, not a FHIR
//! model crate: the cheapest R4 model crate (fhirbolt 0.4, R4 only) took over
//! 5 CPU-minutes to build in release, because serialising any resource
//! compiles serialisers for every R4 resource. The tests check the output
//! against the official FHIR R4 JSON Schema. This crate does no I/O.
//!
//! Each `Communication` carries:
//! - `identifier`: the Sitrep message id under [`MESSAGE_ID_SYSTEM`];
//! - `status`: `completed`;
//! - `subject`: a logical `Patient` reference by identifier, either the NHS
//!   number under [`NHS_NUMBER_SYSTEM`] or a major-incident number under
//!   [`MAJOR_INCIDENT_SYSTEM`];
//! - `sent`: the time the message was sent, as a UTC FHIR `dateTime`;
//! - `sender`: a logical `Practitioner` reference by identifier under
//!   [`USER_ID_SYSTEM`], with the sender's name (and role) as display;
//! - `payload`: the message text as `contentString`;
//! - `note`: who transferred it, when, and from which conversation.

use serde::Serialize;

/// Identifier system for NHS numbers (England and Wales).
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// Identifier system for major-incident casualty numbers issued during a
/// declared major incident before the patient's NHS number is known.
pub const MAJOR_INCIDENT_SYSTEM: &str = "urn:sitrep:major-incident-number";
/// Identifier system for Sitrep message ids (32 lowercase hex characters).
pub const MESSAGE_ID_SYSTEM: &str = "urn:sitrep:message-id";
/// Identifier system for Sitrep user ids (the sender of a message).
pub const USER_ID_SYSTEM: &str = "urn:sitrep:user-id";

/// Latest time FHIR can express: 9999-12-31T23:59:59.999Z, in Unix ms.
const MAX_FHIR_MS: u64 = 253_402_300_799_999;

/// One chat message chosen for transfer into the health record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sitrep message id: 32 hex characters.
    pub id: String,
    /// Display name of the conversation the message was posted in.
    pub conversation: String,
    /// Sitrep user id of the sender.
    pub sender_user: String,
    /// Sender's display name, e.g. "Dr Asha Patel".
    pub sender_name: String,
    /// Sender's role, e.g. "Medical Registrar"; may be empty.
    pub sender_role: String,
    /// When the message was sent, in milliseconds since the Unix epoch (UTC).
    pub sent_at_ms: u64,
    /// The message text.
    pub text: String,
}

/// The patient the messages are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A 10-digit NHS number, already validated by the caller.
    NhsNumber(String),
    /// A major-incident casualty number, e.g. "MI-0042".
    MajorIncident(String),
}

/// A request to transfer messages into a patient's record.
#[derive(Debug, Clone)]
pub struct Transfer<'a> {
    /// Name of the organisation whose Sitrep the messages come from.
    pub organisation: &'a str,
    /// Display name of the clinician who performs the transfer.
    pub transferred_by: &'a str,
    /// The patient the messages are about.
    pub subject: Subject,
    /// The messages to transfer, in the order they should appear.
    pub messages: &'a [Message],
    /// Time of the transfer, in milliseconds since the Unix epoch (UTC).
    pub now_ms: u64,
}

/// Why a transfer could not be turned into FHIR JSON.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transfer holds no messages.
    #[error("no messages to transfer")]
    NoMessages,
    /// A message id is not 32 hex characters.
    #[error("message id {0:?} is not 32 hex characters")]
    InvalidMessageId(String),
    /// A message has no text (empty or only whitespace).
    #[error("message {0} has no text")]
    EmptyText(String),
    /// A required name or identifier is empty.
    #[error("{0} is empty")]
    EmptyField(&'static str),
    /// A time lies after the year 9999, which FHIR cannot express.
    #[error("time {0} ms is out of FHIR's range")]
    TimeOutOfRange(u64),
    /// JSON serialisation failed.
    #[error("JSON serialisation failed: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Turns a transfer into FHIR R4 JSON (pretty-printed).
///
/// One message gives a `Communication`; several give a `Bundle` of type
/// `collection` whose entries are `Communication`s, each with a `urn:uuid:`
/// full URL derived from its message id, in the order given.
pub fn to_fhir_json(t: &Transfer) -> Result<String, Error> {
    let json = match t.messages {
        [] => return Err(Error::NoMessages),
        [one] => serde_json::to_string_pretty(&communication(t, one)?)?,
        many => {
            let entry = many
                .iter()
                .map(|m| {
                    Ok(BundleEntry {
                        full_url: format!("urn:uuid:{}", uuid_from_hex(&m.id)?),
                        resource: communication(t, m)?,
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            serde_json::to_string_pretty(&Bundle {
                resource_type: "Bundle",
                r#type: "collection",
                timestamp: fhir_instant(t.now_ms)?,
                entry,
            })?
        }
    };
    Ok(json)
}

// The R4 elements used, with only the fields Sitrep fills in. Field names
// and order follow the R4 JSON format; see the schema tests.

/// R4 `Bundle` (type `collection`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    resource_type: &'static str,
    r#type: &'static str,
    timestamp: String,
    entry: Vec<BundleEntry>,
}

/// R4 `Bundle.entry`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BundleEntry {
    full_url: String,
    resource: Communication,
}

/// R4 `Communication`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Communication {
    resource_type: &'static str,
    id: String,
    identifier: Vec<Identifier>,
    status: &'static str,
    subject: Reference,
    sent: String,
    sender: Reference,
    payload: Vec<Payload>,
    note: Vec<Annotation>,
}

/// R4 `Identifier`.
#[derive(Serialize)]
struct Identifier {
    system: &'static str,
    value: String,
}

/// R4 `Reference`, logical (by identifier).
#[derive(Serialize)]
struct Reference {
    r#type: &'static str,
    identifier: Identifier,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<String>,
}

/// R4 `Communication.payload` with `contentString`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    content_string: String,
}

/// R4 `Annotation` with `authorString`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Annotation {
    author_string: String,
    time: String,
    text: String,
}

/// Formats Unix milliseconds as a UTC FHIR `instant` (also a valid
/// `dateTime`), e.g. `2025-03-01T14:05:09.042Z`.
pub fn fhir_instant(ms: u64) -> Result<String, Error> {
    if ms > MAX_FHIR_MS {
        return Err(Error::TimeOutOfRange(ms));
    }
    let secs = ms / 1000;
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (y, m, d) = sitrep_wire::time::civil_from_days(days);
    Ok(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        ms % 1000
    ))
}

/// Checks a 32-hex message id and formats it 8-4-4-4-12, lowercase.
fn uuid_from_hex(id: &str) -> Result<String, Error> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidMessageId(id.to_owned()));
    }
    let id = id.to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    ))
}

/// Makes text fit FHIR's `string` type: other Unicode whitespace (e.g.
/// no-break space) becomes a plain space and control characters other than
/// tab, CR and LF are dropped.
fn fhir_text(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            ' ' | '\t' | '\r' | '\n' => Some(c),
            c if c.is_whitespace() => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Like [`fhir_text`], trimmed; `None` if nothing is left.
fn non_empty(s: &str) -> Option<String> {
    let s = fhir_text(s);
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Logical reference to the patient, by NHS number or major-incident number.
fn subject_reference(subject: &Subject) -> Result<Reference, Error> {
    let (system, value, display) = match subject {
        Subject::NhsNumber(n) => (NHS_NUMBER_SYSTEM, n, None),
        Subject::MajorIncident(n) => (
            MAJOR_INCIDENT_SYSTEM,
            n,
            Some(format!("Major incident casualty {}", fhir_text(n.trim()))),
        ),
    };
    let value = non_empty(value).ok_or(Error::EmptyField("subject identifier"))?;
    Ok(Reference {
        r#type: "Patient",
        identifier: Identifier { system, value },
        display,
    })
}

/// Builds the `Communication` for one message.
fn communication(t: &Transfer, m: &Message) -> Result<Communication, Error> {
    uuid_from_hex(&m.id)?;
    let id = m.id.to_ascii_lowercase();
    let text = non_empty(&m.text).ok_or_else(|| Error::EmptyText(m.id.clone()))?;
    let sender_user = non_empty(&m.sender_user).ok_or(Error::EmptyField("sender user id"))?;
    let sender_display = match (non_empty(&m.sender_name), non_empty(&m.sender_role)) {
        (Some(name), Some(role)) => Some(format!("{name} ({role})")),
        (Some(name), None) => Some(name),
        (None, role) => role,
    };
    let transferred_by = non_empty(t.transferred_by).ok_or(Error::EmptyField("transferred_by"))?;
    let now = fhir_instant(t.now_ms)?;
    let conversation = non_empty(&m.conversation).unwrap_or_else(|| "(unnamed)".to_owned());
    let origin = match non_empty(t.organisation) {
        Some(org) => format!("Sitrep conversation \"{conversation}\" ({org})"),
        None => format!("Sitrep conversation \"{conversation}\""),
    };
    Ok(Communication {
        resource_type: "Communication",
        identifier: vec![Identifier {
            system: MESSAGE_ID_SYSTEM,
            value: id.clone(),
        }],
        id,
        status: "completed",
        subject: subject_reference(&t.subject)?,
        sent: fhir_instant(m.sent_at_ms)?,
        sender: Reference {
            r#type: "Practitioner",
            identifier: Identifier {
                system: USER_ID_SYSTEM,
                value: sender_user,
            },
            display: sender_display,
        },
        payload: vec![Payload {
            content_string: text,
        }],
        note: vec![Annotation {
            text: format!("Transferred from {origin} at {now} by {transferred_by}."),
            author_string: transferred_by,
            time: now,
        }],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(id: &str, sent_at_ms: u64, text: &str) -> Message {
        Message {
            id: id.to_owned(),
            conversation: "Ward 7 handover".to_owned(),
            sender_user: "u-1234".to_owned(),
            sender_name: "Dr Asha Patel".to_owned(),
            sender_role: "Medical Registrar".to_owned(),
            sent_at_ms,
            text: text.to_owned(),
        }
    }

    fn transfer<'a>(subject: Subject, messages: &'a [Message]) -> Transfer<'a> {
        Transfer {
            organisation: "St Elsewhere NHS Trust",
            transferred_by: "Dr Ben Okafor",
            subject,
            messages,
            now_ms: 1_740_838_000_000,
        }
    }

    fn json(t: &Transfer) -> serde_json::Value {
        serde_json::from_str(&to_fhir_json(t).unwrap()).unwrap()
    }

    #[test]
    fn instant_formatting() {
        assert_eq!(fhir_instant(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            fhir_instant(1_740_837_909_042).unwrap(),
            "2025-03-01T14:05:09.042Z"
        );
        // Leap day, end of day.
        assert_eq!(
            fhir_instant(951_868_799_999).unwrap(),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(
            fhir_instant(MAX_FHIR_MS).unwrap(),
            "9999-12-31T23:59:59.999Z"
        );
        assert!(matches!(
            fhir_instant(MAX_FHIR_MS + 1),
            Err(Error::TimeOutOfRange(_))
        ));
    }

    #[test]
    fn instant_matches_days_for_every_day_of_some_years() {
        // Walk day by day across 1999-2001 (incl. the 2000 leap year) and
        // check the date advances by exactly one calendar day each time.
        let start = 915_148_800_000; // 1999-01-01
        let mut prev = fhir_instant(start).unwrap();
        for d in 1..(3 * 366) {
            let cur = fhir_instant(start + d * 86_400_000).unwrap();
            assert!(cur > prev, "{cur} after {prev}");
            assert!(cur.ends_with("T00:00:00.000Z"));
            prev = cur;
        }
        assert_eq!(
            fhir_instant(start + 365 * 86_400_000 + 59 * 86_400_000).unwrap(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn single_message_is_a_communication_with_nhs_number_subject() {
        let m = [msg(
            "0123456789ABCDEF0123456789abcdef",
            1_740_837_909_042,
            "BP 90/60",
        )];
        let v = json(&transfer(Subject::NhsNumber("9434765919".into()), &m));
        assert_eq!(v["resourceType"], "Communication");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["id"], "0123456789abcdef0123456789abcdef");
        assert_eq!(v["identifier"][0]["system"], MESSAGE_ID_SYSTEM);
        assert_eq!(
            v["identifier"][0]["value"],
            "0123456789abcdef0123456789abcdef"
        );
        assert_eq!(v["subject"]["type"], "Patient");
        assert_eq!(v["subject"]["identifier"]["system"], NHS_NUMBER_SYSTEM);
        assert_eq!(v["subject"]["identifier"]["value"], "9434765919");
        assert!(v["subject"].get("display").is_none());
        assert_eq!(v["sent"], "2025-03-01T14:05:09.042Z");
        assert_eq!(v["sender"]["type"], "Practitioner");
        assert_eq!(v["sender"]["identifier"]["system"], USER_ID_SYSTEM);
        assert_eq!(v["sender"]["identifier"]["value"], "u-1234");
        assert_eq!(v["sender"]["display"], "Dr Asha Patel (Medical Registrar)");
        assert_eq!(v["payload"][0]["contentString"], "BP 90/60");
        assert_eq!(v["note"][0]["authorString"], "Dr Ben Okafor");
        assert_eq!(v["note"][0]["time"], "2025-03-01T14:06:40.000Z");
        assert_eq!(
            v["note"][0]["text"],
            "Transferred from Sitrep conversation \"Ward 7 handover\" (St Elsewhere NHS Trust) \
             at 2025-03-01T14:06:40.000Z by Dr Ben Okafor."
        );
    }

    #[test]
    fn major_incident_subject_has_its_system_and_display() {
        let m = [msg("a".repeat(32).as_str(), 0, "walking wounded")];
        let v = json(&transfer(Subject::MajorIncident("MI-0042".into()), &m));
        assert_eq!(v["subject"]["identifier"]["system"], MAJOR_INCIDENT_SYSTEM);
        assert_eq!(v["subject"]["identifier"]["value"], "MI-0042");
        assert_eq!(v["subject"]["display"], "Major incident casualty MI-0042");
    }

    #[test]
    fn several_messages_make_a_collection_bundle_in_order() {
        let m = [
            msg(&"1".repeat(32), 1_000, "first"),
            msg(&"2".repeat(32), 2_000, "second"),
            msg(&"3".repeat(32), 3_000, "third"),
        ];
        let v = json(&transfer(Subject::NhsNumber("9434765919".into()), &m));
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "collection");
        assert_eq!(v["timestamp"], "2025-03-01T14:06:40.000Z");
        let entries = v["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        for (e, (m, want)) in entries
            .iter()
            .zip(m.iter().zip(["first", "second", "third"]))
        {
            let r = &e["resource"];
            assert_eq!(r["resourceType"], "Communication");
            assert_eq!(r["payload"][0]["contentString"], want);
            assert_eq!(r["identifier"][0]["value"], m.id.as_str());
            let full_url = e["fullUrl"].as_str().unwrap();
            assert_eq!(full_url.len(), "urn:uuid:".len() + 36);
            assert_eq!(full_url.replace(['-'], "")[9..], m.id);
        }
    }

    #[test]
    fn rejects_bad_input() {
        let t = |m: &[Message]| to_fhir_json(&transfer(Subject::NhsNumber("9434765919".into()), m));
        assert!(matches!(t(&[]), Err(Error::NoMessages)));
        assert!(matches!(
            t(&[msg("not-hex", 0, "x")]),
            Err(Error::InvalidMessageId(_))
        ));
        assert!(matches!(
            t(&[msg(&"a".repeat(32), 0, " \n ")]),
            Err(Error::EmptyText(_))
        ));
        assert!(matches!(
            t(&[msg(&"a".repeat(32), u64::MAX, "x")]),
            Err(Error::TimeOutOfRange(_))
        ));
        let mut no_sender = msg(&"a".repeat(32), 0, "x");
        no_sender.sender_user.clear();
        assert!(matches!(t(&[no_sender]), Err(Error::EmptyField(_))));
    }

    #[test]
    fn text_is_made_fhir_safe() {
        assert_eq!(fhir_text("a\u{a0}b\u{7}c\td\r\ne"), "a bc\td\r\ne");
        let m = [msg(&"b".repeat(32), 0, "  sats\u{a0}88%  ")];
        let v = json(&transfer(Subject::NhsNumber("9434765919".into()), &m));
        assert_eq!(v["payload"][0]["contentString"], "sats 88%");
    }
}
