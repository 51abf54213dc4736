//! # sitrep-pid: the PID guard
//!
//! Finds patient-identifiable data (PID) in a message before the client encrypts
//! and sends it, and minimises it according to the conversation's policy
//! ([`PidPolicy`]): off, warn, block, or pseudonymise (replace with a token such
//! as `[NHS-NUMBER]`, or with the patient's major-incident number when the sender
//! links one).
//!
//! It finds NHS and CHI numbers (Modulus 11), dates of birth (a date with birth
//! context), UK postcodes, phone numbers and e-mail addresses, hospital numbers
//! (with context, or trust-configured patterns), names (with a title or in
//! context) and street addresses. It is built to stay quiet on what clinicians
//! write all day: major-incident numbers, bed/bay/theatre numbers, bleeps,
//! extensions, 2222, doses, observations, lab values, times, clinical dates, and
//! 10-digit references that fail Modulus 11.
//!
//! ## What it must never do
//! - **Never log, store or send the text it scans.** It performs no I/O at all and
//!   holds no state between calls; a [`Finding`] carries only a kind, a byte span,
//!   a confidence and a replacement token, never the matched text, so findings can
//!   be shown or serialised without repeating the identifier.
//! - Never panic on any input, and never take more than linear time: all matching
//!   uses the `regex` crate (finite automata, no backtracking).
//! - It is a safety net, not a guarantee: a message it passes may still contain
//!   PID (see RESULTS.md for measured recall and known gaps).
//!
//! ```
//! use sitrep_pid::{apply_policy, scan, PidKind, PidPolicy, PolicyOutcome};
//! let msg = "Bed 4: Mrs Jane Smith, NHS 943 476 5919, BP 120/80";
//! let kinds: Vec<PidKind> = scan(msg).iter().map(|f| f.kind).collect();
//! assert_eq!(kinds, [PidKind::PersonName, PidKind::NhsNumber]);
//! match apply_policy(PidPolicy::Pseudonymise, msg) {
//!     PolicyOutcome::Rewritten(text, _) => {
//!         assert_eq!(text, "Bed 4: Mrs [NAME], NHS [NHS-NUMBER], BP 120/80")
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

mod checks;
mod finding;
mod policy;
mod scanner;

use std::sync::OnceLock;

use serde::Serialize;

pub use checks::{mod11_check_digit, mod11_valid};
pub use finding::{Finding, PidKind};
pub use policy::{PidPolicy, PolicyOutcome, UnknownPolicy, pseudonymise};
pub use scanner::{PidError, Scanner};

/// The shared scanner with the built-in detectors, compiled on first use.
pub fn default_scanner() -> &'static Scanner {
    static SCANNER: OnceLock<Scanner> = OnceLock::new();
    SCANNER.get_or_init(Scanner::new)
}

/// Scan `text` with the built-in detectors. See [`Scanner::scan`].
pub fn scan(text: &str) -> Vec<Finding> {
    default_scanner().scan(text)
}

/// Apply `policy` to `text` with the built-in detectors and no linked
/// major-incident number. See [`Scanner::apply_policy`].
pub fn apply_policy(policy: PidPolicy, text: &str) -> PolicyOutcome {
    default_scanner().apply_policy(policy, text, None)
}

#[derive(Serialize)]
struct LineReport<'a> {
    findings: &'a [Finding],
}

impl Scanner {
    /// One JSON object for one input line, as `sitrep pid scan` prints it:
    /// `{"findings":[{"kind":"nhs_number","start":B,"end":E,"confidence":C,"replacement":"[NHS-NUMBER]"}]}`
    /// with byte offsets into `line`. The matched text is not included.
    pub fn scan_line_json(&self, line: &str) -> String {
        let findings = self.scan(line);
        serde_json::to_string(&LineReport {
            findings: &findings,
        })
        .expect("findings hold only plain fields and finite confidences")
    }
}

/// [`Scanner::scan_line_json`] with the built-in detectors.
pub fn scan_line_json(line: &str) -> String {
    default_scanner().scan_line_json(line)
}
