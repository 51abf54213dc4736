//! The types a scan returns: what kind of identifier, where, how sure, and what to
//! put in its place.

use serde::{Deserialize, Serialize};

/// A kind of patient-identifiable data. Serialised as the snake_case names the CLI
/// and the evaluation corpus use (`nhs_number`, `date_of_birth`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PidKind {
    NhsNumber,
    ChiNumber,
    DateOfBirth,
    Postcode,
    Phone,
    Email,
    HospitalNumber,
    PersonName,
    Address,
}

impl PidKind {
    /// Every kind, in a stable order (used by reports and the evaluation).
    pub const ALL: [PidKind; 9] = [
        PidKind::NhsNumber,
        PidKind::ChiNumber,
        PidKind::DateOfBirth,
        PidKind::Postcode,
        PidKind::Phone,
        PidKind::Email,
        PidKind::HospitalNumber,
        PidKind::PersonName,
        PidKind::Address,
    ];

    /// The snake_case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            PidKind::NhsNumber => "nhs_number",
            PidKind::ChiNumber => "chi_number",
            PidKind::DateOfBirth => "date_of_birth",
            PidKind::Postcode => "postcode",
            PidKind::Phone => "phone",
            PidKind::Email => "email",
            PidKind::HospitalNumber => "hospital_number",
            PidKind::PersonName => "person_name",
            PidKind::Address => "address",
        }
    }

    /// The placeholder that replaces a finding of this kind when pseudonymising.
    pub fn token(self) -> &'static str {
        match self {
            PidKind::NhsNumber => "[NHS-NUMBER]",
            PidKind::ChiNumber => "[CHI-NUMBER]",
            PidKind::DateOfBirth => "[DOB]",
            PidKind::Postcode => "[POSTCODE]",
            PidKind::Phone => "[PHONE]",
            PidKind::Email => "[EMAIL]",
            PidKind::HospitalNumber => "[HOSPITAL-NUMBER]",
            PidKind::PersonName => "[NAME]",
            PidKind::Address => "[ADDRESS]",
        }
    }

    /// Kinds that identify the patient record itself. When the sender links a
    /// major-incident number, these are replaced by it so the recipient can still
    /// tell which patient is meant. Names are not: a titled name is as often a
    /// colleague ("Dr Patel") as the patient.
    pub fn is_record_identifier(self) -> bool {
        matches!(
            self,
            PidKind::NhsNumber | PidKind::ChiNumber | PidKind::HospitalNumber
        )
    }

    /// When two candidate findings overlap, the one with the higher priority wins:
    /// the wider, context-backed reading first (an address contains a postcode; a
    /// number after "MRN" is the hospital's even if it passes Modulus 11).
    pub(crate) fn priority(self) -> u8 {
        match self {
            PidKind::Address => 9,
            PidKind::HospitalNumber => 8,
            PidKind::NhsNumber | PidKind::ChiNumber => 7,
            PidKind::DateOfBirth => 6,
            PidKind::Email => 5,
            PidKind::Phone => 4,
            PidKind::Postcode => 3,
            PidKind::PersonName => 2,
        }
    }
}

impl std::fmt::Display for PidKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of patient-identifiable data found in a message.
///
/// `start..end` is a byte range into the scanned text, always on `char` boundaries.
/// The finding deliberately does not carry the matched text, so it can be shown,
/// logged or serialised without repeating the identifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: PidKind,
    pub start: usize,
    pub end: usize,
    /// How sure the detector is, in 0..=1.
    pub confidence: f32,
    /// Suggested replacement, e.g. `[NHS-NUMBER]`.
    pub replacement: String,
}

impl Finding {
    pub(crate) fn new(kind: PidKind, start: usize, end: usize, confidence: f32) -> Self {
        Finding {
            kind,
            start,
            end,
            confidence,
            replacement: kind.token().to_owned(),
        }
    }

    /// Byte length of the span.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// True for an empty span (never produced by a scan).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when the two spans share at least one byte.
    pub fn overlaps(&self, start: usize, end: usize) -> bool {
        self.start < end && start < self.end
    }
}
