//! What to do with findings before a message is encrypted: the per-conversation
//! policy and the rewrite that minimises the message.

use serde::{Deserialize, Serialize};

use crate::finding::Finding;
use crate::scanner::Scanner;

/// Per-conversation PID policy. Serialised lowercase: `"off"`, `"warn"`,
/// `"block"`, `"pseudonymise"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PidPolicy {
    /// Do not scan.
    Off,
    /// Show the findings and ask the sender to confirm.
    #[default]
    Warn,
    /// Refuse to send a message with findings.
    Block,
    /// Replace findings with tokens (or the linked major-incident number).
    Pseudonymise,
}

impl std::str::FromStr for PidPolicy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(PidPolicy::Off),
            "warn" => Ok(PidPolicy::Warn),
            "block" => Ok(PidPolicy::Block),
            "pseudonymise" => Ok(PidPolicy::Pseudonymise),
            _ => Err(UnknownPolicy),
        }
    }
}

/// A policy name other than off, warn, block or pseudonymise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownPolicy;

impl std::fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unknown PID policy (expected off, warn, block or pseudonymise)")
    }
}

impl std::error::Error for UnknownPolicy {}

/// What the client core should do with the message.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyOutcome {
    /// Send this text as it is (policy off, or nothing found).
    Send(String),
    /// Policy `warn`: show these findings and send only if the sender confirms.
    NeedsConfirmation(Vec<Finding>),
    /// Policy `block`: do not send.
    Blocked(Vec<Finding>),
    /// Policy `pseudonymise`: send the rewritten text instead; the findings say
    /// what was replaced (in the original text's offsets).
    Rewritten(String, Vec<Finding>),
}

/// Replace each finding with its `replacement` token. With `link` (the patient's
/// major-incident number, e.g. `MI-0042`), record identifiers (NHS, CHI and
/// hospital numbers) are replaced by that number instead, so the recipient still
/// knows which patient is meant.
///
/// `findings` may come from anywhere: ones that are out of range, not on char
/// boundaries or overlapping an earlier one are skipped, never a panic.
pub fn pseudonymise(text: &str, findings: &[Finding], link: Option<&str>) -> String {
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| (f.start, f.end));
    let mut out = String::with_capacity(text.len());
    let mut cursor = 0;
    for f in sorted {
        let valid = f.start >= cursor
            && f.start < f.end
            && f.end <= text.len()
            && text.is_char_boundary(f.start)
            && text.is_char_boundary(f.end);
        if !valid {
            continue;
        }
        out.push_str(&text[cursor..f.start]);
        match link {
            Some(mi) if f.kind.is_record_identifier() => out.push_str(mi),
            _ => out.push_str(&f.replacement),
        }
        cursor = f.end;
    }
    out.push_str(&text[cursor..]);
    out
}

impl Scanner {
    /// Apply `policy` to `text`, with an optional linked major-incident number
    /// used by `pseudonymise`.
    pub fn apply_policy(&self, policy: PidPolicy, text: &str, link: Option<&str>) -> PolicyOutcome {
        if policy == PidPolicy::Off {
            return PolicyOutcome::Send(text.to_owned());
        }
        let findings = self.scan(text);
        if findings.is_empty() {
            return PolicyOutcome::Send(text.to_owned());
        }
        match policy {
            PidPolicy::Off => PolicyOutcome::Send(text.to_owned()),
            PidPolicy::Warn => PolicyOutcome::NeedsConfirmation(findings),
            PidPolicy::Block => PolicyOutcome::Blocked(findings),
            PidPolicy::Pseudonymise => {
                PolicyOutcome::Rewritten(pseudonymise(text, &findings, link), findings)
            }
        }
    }
}
