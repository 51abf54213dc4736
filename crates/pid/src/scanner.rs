//! The detectors. Each is a linear-time `regex` (no backtracking engine) plus a
//! few checks in code that a regex cannot express: check digits, calendar dates,
//! postcode areas, and "what is around this match".
//!
//! Never log or keep the scanned text: only spans leave this module.

use regex::Regex;

use crate::checks::{
    chi_date_prefix, mod11_valid, month_from_name, postcode_area_known, valid_day,
};
use crate::finding::{Finding, PidKind};

/// A capitalised name word: "Smith", "O'Brien", "McDonald", "Smith-Jones", "Zoë".
const NAME: &str = r"(?:Mc|Mac|O['’]|D['’])?\p{Lu}\p{Ll}+(?:-\p{Lu}\p{Ll}+)?";
/// A surname written in capitals, as patient-administration systems print it.
const UPPER_NAME: &str = r"\p{Lu}{2,}(?:-\p{Lu}{2,})?";

/// Capitalised words that follow a title or a context word without being a name.
/// Kept short and clinical: a capitalised word after "Mr" is a name almost always.
const NOT_NAMES: &[&str] = &[
    "A",
    "AE",
    "About",
    "Admitted",
    "Alert",
    "Also",
    "Am",
    "Amber",
    "An",
    "And",
    "Any",
    "April",
    "Are",
    "As",
    "At",
    "August",
    "Aware",
    "Bay",
    "Bed",
    "Bleep",
    "Bloods",
    "CT",
    "CXR",
    "Call",
    "Can",
    "Cardiac",
    "Confused",
    "Consultant",
    "Could",
    "Currently",
    "DNACPR",
    "December",
    "Discharged",
    "Doctor",
    "Dr",
    "Drowsy",
    "ECG",
    "ED",
    "Ext",
    "FY",
    "February",
    "For",
    "Friday",
    "From",
    "GCS",
    "GP",
    "Going",
    "Green",
    "HDU",
    "Had",
    "Has",
    "He",
    "Her",
    "Here",
    "His",
    "How",
    "I",
    "ICU",
    "ITU",
    "In",
    "Informed",
    "Is",
    "It",
    "January",
    "July",
    "June",
    "Just",
    "MI",
    "MRI",
    "Major",
    "Majors",
    "March",
    "Minors",
    "Miss",
    "Monday",
    "Morning",
    "Mr",
    "Mrs",
    "Ms",
    "Mx",
    "My",
    "NBM",
    "NEWS",
    "NOK",
    "Needs",
    "Night",
    "No",
    "Not",
    "November",
    "Now",
    "Nurse",
    "OK",
    "Obs",
    "October",
    "Of",
    "Ok",
    "On",
    "Or",
    "Our",
    "Patient",
    "Please",
    "Prof",
    "Pt",
    "Red",
    "Reg",
    "Registrar",
    "Resus",
    "Reviewed",
    "Room",
    "SHO",
    "Saturday",
    "Seen",
    "September",
    "She",
    "Side",
    "Sister",
    "Stable",
    "Still",
    "Sunday",
    "Surgery",
    "TTO",
    "TTOs",
    "Team",
    "Thanks",
    "That",
    "The",
    "Theatre",
    "Their",
    "There",
    "They",
    "This",
    "Thursday",
    "To",
    "Today",
    "Tomorrow",
    "Tonight",
    "Tuesday",
    "Unit",
    "Unwell",
    "Urgent",
    "Ward",
    "Was",
    "We",
    "Wednesday",
    "What",
    "When",
    "Where",
    "Who",
    "Will",
    "With",
    "Yes",
    "Yesterday",
    "You",
    "Your",
];

fn is_not_name(word: &str) -> bool {
    NOT_NAMES.binary_search(&word).is_ok()
}

/// Words that end a street name in an address.
const STREET_TYPES: &str = "Road|Rd|Street|St|Avenue|Ave|Lane|Ln|Close|Cl|Drive|Dr|Way|Crescent|Cres|Court|Ct|Place|Pl|Gardens|Gdns|Grove|Gr|Terrace|Terr|Hill|Park|Square|Sq|Row|View|Walk|Mews|Green|Rise|Parade|Boulevard|Vale|Croft|Meadows?|Fields|Wynd|Brae|Gate|Yard|End|Heights|Mount";

/// Compiled detectors. Build once (regex compilation is the expensive part) and
/// share: scanning takes `&self` and is safe from many threads.
#[derive(Debug, Clone)]
pub struct Scanner {
    email: Regex,
    dob_keyword: Regex,
    date: Regex,
    hospital: Regex,
    hospital_suffix: Regex,
    trust: Vec<Regex>,
    /// Anchored at a capitalised word after a title: "J. Smith", "SMITH".
    titled_tail: Regex,
    /// Anchored at a capitalised word after a context word: "John Smith".
    context_tail: Regex,
    /// Anchored: "Jack's mum", "Amy Jones's daughter".
    possessive_tail: Regex,
    /// Anchored: "Emma Jones (daughter)".
    relation_tail: Regex,
    street: Regex,
}

/// A trust-configured hospital-number pattern that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PidError {
    /// Pattern number `index` (0-based) is not a valid regex; `reason` is the
    /// regex crate's message, which quotes the pattern, never message text.
    InvalidPattern { index: usize, reason: String },
}

impl std::fmt::Display for PidError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PidError::InvalidPattern { index, reason } => {
                write!(f, "hospital-number pattern {index} is invalid: {reason}")
            }
        }
    }
}

impl std::error::Error for PidError {}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("built-in pattern compiles (covered by unit tests)")
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    /// The scanner with the built-in detectors only.
    pub fn new() -> Self {
        let month = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)";
        Scanner {
            email: re(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
            dob_keyword: re(
                r"(?i-u)(?-u:\b)(?:d\.?[ ]?o\.?[ ]?b|date[ ]+of[ ]+birth|birth[ ]?date|born(?:[ ]+on)?|birthday)(?-u:\b)\.?",
            ),
            date: re(&format!(
                r"(?i-u)[0-9]{{1,2}}[/.\-][0-9]{{1,2}}[/.\-](?:[0-9]{{4}}|[0-9]{{2}})|[0-9]{{4}}[/.\-][0-9]{{1,2}}[/.\-][0-9]{{1,2}}|[0-9]{{1,2}}(?:st|nd|rd|th)?[ \-]+(?:of[ ]+)?{month}\.?,?[ \-]+(?:[0-9]{{4}}|'?[0-9]{{2}})|{month}\.?[ ]+[0-9]{{1,2}}(?:st|nd|rd|th)?,?[ ]+[0-9]{{4}}|[0-9]{{1,2}} [0-9]{{1,2}} [0-9]{{4}}|[0-9]{{8}}|[0-9]{{6}}"
            )),
            hospital: re(
                r"(?i-u)(?-u:\b)(?:mrn|m\.r\.n\.?|hosp(?:ital)?\.?[ ]*(?:number|num|no|id|ref)\.?|unit[ ]+(?:number|no)\.?|case[ ]*notes?[ ]*(?:number|no)?\.?|pas[ ]+(?:number|no|id)\.?|patient[ ]+(?:id|no)\.?|pt[ ]+(?:id|no)\.?|crn|patient[ ]+number|local[ ]+(?:patient[ ]+)?(?:id|number|identifier))",
            ),
            hospital_suffix: re(
                r"(?i-u)(?-u:\b)(?:[a-z]{0,3}[0-9]{5,10}[a-z]?)[ ]*[(\[]?[ ]*(?:mrn|hosp(?:ital)?\.?[ ]*(?:number|num|no)|unit[ ]+no)(?-u:\b)",
            ),
            trust: Vec::new(),
            titled_tail: re(&format!(
                r"^(?:\p{{Lu}}\.?[ ]?){{0,2}}(?:{NAME}|{UPPER_NAME})(?:[ ]+{NAME}){{0,2}}"
            )),
            context_tail: re(&format!(r"^{NAME}(?:[ ]+(?:{NAME}|{UPPER_NAME}))?")),
            possessive_tail: re(&format!(
                r"^(?:{NAME}[ ]+)?{NAME}['’]s[ ]+(?i:mum|mom|mother|dad|father|wife|husband|partner|son|daughter|sister|brother|family|parents|nok|next[ ]+of[ ]+kin|carer|gran|grandma|grandad|nan|aunt|uncle|girlfriend|boyfriend|relatives?)(?-u:\b)"
            )),
            relation_tail: re(&format!(
                r"^(?:{NAME}[ ]+)?{NAME}[ ]*\((?i:wife|husband|son|daughter|mother|father|mum|dad|partner|brother|sister|nok|next[ ]+of[ ]+kin|carer|friend|grandson|granddaughter)\)"
            )),
            street: re(&format!(
                r"(?-u:\b)(?:(?:Flat|Apt|Apartment|Unit)[ ]+[0-9]+[A-Za-z]?,?[ ]+)?[0-9]{{1,4}}[A-Za-z]?,?[ ]+(?:{NAME}[ ]+){{1,3}}(?:{STREET_TYPES})(?-u:\b)\.?"
            )),
        }
    }

    /// The built-in detectors plus trust-configured hospital-number patterns (regex
    /// syntax of the `regex` crate, e.g. `[A-Z][0-9]{7}` or `RX[0-9]{8}`). These are
    /// matched anywhere, without needing "MRN" nearby, so make them specific.
    pub fn with_hospital_number_patterns<I, S>(patterns: I) -> Result<Self, PidError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut scanner = Self::new();
        for (index, pattern) in patterns.into_iter().enumerate() {
            let compiled = Regex::new(pattern.as_ref()).map_err(|e| PidError::InvalidPattern {
                index,
                reason: e.to_string(),
            })?;
            scanner.trust.push(compiled);
        }
        Ok(scanner)
    }

    /// All findings in `text`, sorted by start, non-overlapping, on char boundaries.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        // One cheap pass decides which detectors can possibly match, so a typical
        // message runs one or two regexes rather than all of them.
        let f = Features::of(text.as_bytes());
        let mut out = Vec::new();
        if f.digits == 0 && !f.at && !f.upper {
            return out;
        }
        if f.max_digit_run >= 10 {
            find_long_numbers(text, &mut out);
        }
        if f.dob_word && f.digits >= 3 {
            self.find_dates_of_birth(text, &mut out);
        }
        if f.hospital_word && f.digits >= 4 {
            self.find_hospital_numbers(text, &mut out);
        }
        if !self.trust.is_empty() && f.digits >= 1 {
            self.find_trust_patterns(text, &mut out);
        }
        if f.street_word && f.number_then_capital {
            self.find_addresses(text, &mut out);
        }
        if f.upper_then_digit && f.digits >= 2 {
            find_postcodes(text, &mut out);
        }
        if f.at {
            self.find_emails(text, &mut out);
        }
        if f.upper {
            self.find_names(text, &f, &mut out);
        }
        resolve_overlaps(out)
    }

    #[inline(never)]
    fn find_emails(&self, text: &str, out: &mut Vec<Finding>) {
        for m in self.email.find_iter(text) {
            out.push(Finding::new(PidKind::Email, m.start(), m.end(), 0.95));
        }
    }

    #[inline(never)]
    fn find_hospital_numbers(&self, text: &str, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        for kw in self.hospital.find_iter(text) {
            if let Some((s, e)) = identifier_after(b, kw.end()) {
                out.push(Finding::new(PidKind::HospitalNumber, s, e, 0.9));
            }
        }
        // "K445566 (MRN)", "K445566 hosp no"
        for m in self.hospital_suffix.find_iter(text) {
            let id_len = m
                .as_str()
                .bytes()
                .take_while(u8::is_ascii_alphanumeric)
                .count();
            out.push(Finding::new(
                PidKind::HospitalNumber,
                m.start(),
                m.start() + id_len,
                0.85,
            ));
        }
    }

    fn find_trust_patterns(&self, text: &str, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        for pattern in &self.trust {
            for m in pattern.find_iter(text) {
                let (s, e) = (m.start(), m.end());
                if s == e
                    || (s > 0 && b[s - 1].is_ascii_alphanumeric())
                    || (e < b.len() && b[e].is_ascii_alphanumeric())
                {
                    continue;
                }
                out.push(Finding::new(PidKind::HospitalNumber, s, e, 0.8));
            }
        }
    }

    #[inline(never)]
    fn find_dates_of_birth(&self, text: &str, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        for kw in self.dob_keyword.find_iter(text) {
            // "DOB: 12/03/1948", "born on 3rd March 1952"
            if let Some(d) = self.date.find_at(text, kw.end())
                && gap_is_filler(&text[kw.end()..d.start()])
                && date_ok(b, d.start(), d.end(), d.as_str())
            {
                out.push(Finding::new(PidKind::DateOfBirth, d.start(), d.end(), 0.95));
                continue;
            }
            // "12/03/1948 (DOB)"
            let from = floor_char_boundary(text, kw.start().saturating_sub(28));
            let mut last = None;
            for d in self.date.find_iter(&text[from..kw.start()]) {
                last = Some((from + d.start(), from + d.end()));
            }
            if let Some((ds, de)) = last {
                let gap = &text[de..kw.start()];
                if gap.len() <= 3
                    && gap
                        .bytes()
                        .all(|c| matches!(c, b' ' | b'(' | b'[' | b'-' | b','))
                    && date_ok(b, ds, de, &text[ds..de])
                {
                    out.push(Finding::new(PidKind::DateOfBirth, ds, de, 0.9));
                }
            }
        }
    }

    #[inline(never)]
    fn find_addresses(&self, text: &str, out: &mut Vec<Finding>) {
        for m in self.street.find_iter(text) {
            let (s, mut e) = (m.start(), m.end());
            if s > 0 && text.as_bytes()[s - 1].is_ascii_digit() {
                continue;
            }
            // A town and postcode often follow: ", Leeds LS6 2AB".
            let tail = &text[e..];
            let mut confidence = 0.8;
            let b = text.as_bytes();
            let pc = (e..(e + 48).min(b.len()))
                .filter(|&i| b[i].is_ascii_uppercase())
                .find_map(|i| postcode_at(b, i).map(|pe| (i - e, pe - e)));
            if let Some((pc_start, pc_end)) = pc {
                let between = &tail[..pc_start];
                let town_ok = between.len() <= 40
                    && between
                        .split([',', ' '])
                        .filter(|w| !w.is_empty())
                        .all(|w| w.chars().next().is_some_and(char::is_uppercase));
                if town_ok {
                    e += pc_end;
                    confidence = 0.95;
                }
            }
            out.push(Finding::new(PidKind::Address, s, e, confidence));
        }
    }

    #[inline(never)]
    fn find_names(&self, text: &str, f: &Features, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && CLASS[usize::from(b[i])] & (UPPER | HIGH) == 0 {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let c = b[i];
            let at_word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] >= 0x80);
            let capital = c.is_ascii_uppercase()
                || (c >= 0xC0 && text[i..].chars().next().is_some_and(char::is_uppercase));
            if !(at_word_start && capital) {
                i += 1;
                continue;
            }
            let rest = &text[i..];
            let marks = if f.apostrophe_s || f.paren {
                name_followed_by(b, i)
            } else {
                Marks::None
            };
            let found = match preceding_cue(text, i) {
                Cue::Title => self
                    .titled_tail
                    .find(rest)
                    .filter(|m| {
                        !b.get(i + m.end())
                            .is_some_and(|&n| n == b'-' || n.is_ascii_digit())
                    })
                    .and_then(|m| trim_name(text, i, i + m.end()))
                    .map(|(s, e)| (s, e, 0.9)),
                Cue::Context => self
                    .context_tail
                    .find(rest)
                    .and_then(|m| trim_name(text, i, i + m.end()))
                    .map(|(s, e)| (s, e, 0.75)),
                Cue::None => None,
            };
            let found = found
                .or_else(|| {
                    if !f.apostrophe_s || marks != Marks::Possessive {
                        return None;
                    }
                    let m = self.possessive_tail.find(rest)?;
                    let name_end = m.as_str().rfind("'s").or_else(|| m.as_str().rfind("’s"))?;
                    trim_name_leading(text, i, i + name_end).map(|(s, e)| (s, e, 0.7))
                })
                .or_else(|| {
                    if !f.paren || marks != Marks::Paren {
                        return None;
                    }
                    let m = self.relation_tail.find(rest)?;
                    let name_end = m.as_str().find('(')?;
                    let name = m.as_str()[..name_end].trim_end();
                    trim_name_leading(text, i, i + name.len()).map(|(s, e)| (s, e, 0.75))
                });
            match found {
                Some((s, e, confidence)) => {
                    out.push(Finding::new(PidKind::PersonName, s, e, confidence));
                    i = e.max(i + 1);
                }
                None => i += 1,
            }
            while i < b.len() && !text.is_char_boundary(i) {
                i += 1;
            }
        }
    }
}

/// What follows one or two capitalised words: "'s" ("Jack's mum") or "("
/// ("Emma Jones (daughter)"). Checked by hand so the anchored regexes run only
/// where they can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marks {
    Possessive,
    Paren,
    None,
}

#[inline(never)]
fn name_followed_by(b: &[u8], i: usize) -> Marks {
    const CURLY: &[u8] = "’".as_bytes();
    let mut j = i;
    for _ in 0..2 {
        while j < b.len()
            && (b[j].is_ascii_alphabetic()
                || b[j] == b'-'
                || (b[j] >= 0x80 && !b[j..].starts_with(CURLY)))
        {
            j += 1;
        }
        if b[j..].starts_with(b"'s ")
            || (b[j..].starts_with(CURLY) && b[j + CURLY.len()..].starts_with(b"s "))
        {
            return Marks::Possessive;
        }
        let mut k = j;
        while b.get(k) == Some(&b' ') {
            k += 1;
        }
        if b.get(k) == Some(&b'(') {
            return Marks::Paren;
        }
        if k == j || !b.get(k).is_some_and(u8::is_ascii_uppercase) {
            break;
        }
        j = k;
    }
    Marks::None
}

/// What the word before a capitalised word says about it.
enum Cue {
    Title,
    Context,
    None,
}

const TITLES: &[&str] = &["Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Master"];

/// Context words after which a capitalised word is a name ("patient John Smith",
/// "NOK: Mary", "known as Bob"). Compared in lowercase.
const NAME_CONTEXT: &[&str] = &[
    "patient",
    "pt",
    "name",
    "named",
    "called",
    "nok",
    "kin",
    "wife",
    "husband",
    "son",
    "daughter",
    "mother",
    "father",
    "mum",
    "dad",
    "partner",
    "brother",
    "sister",
    "carer",
    "grandson",
    "granddaughter",
];

/// Look back from the capitalised word at `i` for a title or a context word,
/// skipping spaces and one `:`, `-`, `=` or "is".
#[inline(never)]
fn preceding_cue(text: &str, i: usize) -> Cue {
    let b = text.as_bytes();
    let mut j = i;
    let skip_spaces = |mut j: usize| {
        while j > 0 && b[j - 1] == b' ' {
            j -= 1;
        }
        j
    };
    let word_before = |end: usize| {
        let mut s = end;
        while s > 0 && (b[s - 1].is_ascii_alphabetic() || b[s - 1] == b'.') {
            s -= 1;
        }
        &text[s..end]
    };
    let after_word = j;
    j = skip_spaces(j);
    if j == after_word && j > 0 && b[j - 1] != b':' {
        return Cue::None; // no space: "McX" or "x.Y" is not "Title Name"
    }
    let mut punct = false;
    if j > 0 && matches!(b[j - 1], b':' | b'-' | b'=') {
        punct = true;
        j = skip_spaces(j - 1);
    }
    let mut word = word_before(j);
    if word == "is" {
        word = word_before(skip_spaces(j - 2));
    }
    if !punct && TITLES.contains(&word.trim_end_matches('.')) && !word.starts_with('.') {
        return Cue::Title;
    }
    let bare = word.trim_end_matches('.');
    if bare.len() <= 13 && NAME_CONTEXT.iter().any(|k| k.eq_ignore_ascii_case(bare)) {
        return Cue::Context;
    }
    if bare.eq_ignore_ascii_case("as") {
        let before = word_before(skip_spaces(j - word.len()));
        if before.eq_ignore_ascii_case("known") || before.eq_ignore_ascii_case("identified") {
            return Cue::Context;
        }
    }
    Cue::None
}

/// Facts about a message gathered in one pass, used to skip detectors that cannot
/// match. Each is a necessary condition of a detector, never a sufficient one.
#[derive(Debug, Default)]
struct Features {
    digits: usize,
    /// Longest run of digits allowing single separators ("943 476 5919" = 10).
    max_digit_run: usize,
    at: bool,
    upper: bool,
    upper_then_digit: bool,
    /// A number then a capitalised word ("14 Orchard", "3, Kings"): addresses.
    number_then_capital: bool,
    apostrophe_s: bool,
    paren: bool,
    dob_word: bool,
    hospital_word: bool,
    street_word: bool,
}

const DIGIT: u8 = 1;
const UPPER: u8 = 2;
const LOWER: u8 = 4;
const SEP: u8 = 8;
const SPECIAL: u8 = 16;
const HIGH: u8 = 32;
const ALPHA: u8 = UPPER | LOWER;

/// Byte classes for the prepass, so the common case (a lowercase letter) costs a
/// table load and a compare.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_digit() {
            DIGIT
        } else if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_lowercase() {
            LOWER
        } else if c == b' ' || c == b'-' || c == b'.' || c == b')' {
            SEP
        } else if c == b'(' {
            SEP | SPECIAL
        } else if c == b'@' || c == b'\'' {
            SPECIAL
        } else if c >= 0x80 {
            HIGH
        } else {
            0
        };
        i += 1;
    }
    t
};

impl Features {
    #[inline(never)]
    fn of(b: &[u8]) -> Features {
        let mut f = Features::default();
        let mut run = 0usize;
        let mut gap = 0u8;
        let mut prev_word = [0u8; 9];
        let mut prev_len = 0usize;
        let n = b.len();
        let mut i = 0;
        while i < n {
            let k = CLASS[usize::from(b[i])];
            if k & ALPHA != 0 {
                let s = i;
                let mut acc = 0u8;
                while i < n && CLASS[usize::from(b[i])] & ALPHA != 0 {
                    acc |= CLASS[usize::from(b[i])];
                    i += 1;
                }
                f.upper |= acc & UPPER != 0;
                if acc & UPPER != 0 && b[s].is_ascii_uppercase() && s >= 2 && b[s - 1] == b' ' {
                    let p = if b[s - 2] == b',' && s >= 3 {
                        b[s - 3]
                    } else {
                        b[s - 2]
                    };
                    f.number_then_capital |= p.is_ascii_digit();
                }
                // "'s" / "’s" (the curly quote ends in byte 0x99)
                if i - s == 1 && b[s] == b's' && s > 0 && (b[s - 1] == b'\'' || b[s - 1] == 0x99) {
                    f.apostrophe_s = true;
                }
                if i < n && b[i].is_ascii_digit() && b[i - 1].is_ascii_uppercase() {
                    f.upper_then_digit = true;
                }
                f.classify_word(&b[s..i], &mut prev_word, &mut prev_len);
                run = 0;
                gap = 0;
                continue;
            }
            if k & DIGIT != 0 {
                f.digits += 1;
                run += 1;
                gap = 0;
                f.max_digit_run = f.max_digit_run.max(run);
            } else if k & SEP != 0 && run > 0 && gap < 2 {
                gap += 1;
            } else {
                run = 0;
                gap = 0;
            }
            if k & SPECIAL != 0 {
                f.at |= b[i] == b'@';
                f.paren |= b[i] == b'(';
            }
            f.upper |= k & HIGH != 0;
            i += 1;
        }
        f
    }

    fn classify_word(&mut self, w: &[u8], prev_word: &mut [u8; 9], prev_len: &mut usize) {
        if w.len() > prev_word.len() {
            *prev_len = 0;
            return;
        }
        let mut lower = [0u8; 9];
        for (d, s) in lower.iter_mut().zip(w) {
            *d = s.to_ascii_lowercase();
        }
        let lw = &lower[..w.len()];
        let pw = &prev_word[..*prev_len];
        match lw {
            b"mrn" | b"crn" | b"hosp" | b"hospno" | b"hospital" => self.hospital_word = true,
            b"id" | b"no" | b"number" | b"num" | b"ref"
                if matches!(
                    pw,
                    b"patient"
                        | b"pt"
                        | b"unit"
                        | b"pas"
                        | b"local"
                        | b"case"
                        | b"notes"
                        | b"note"
                        | b"casenotes"
                ) =>
            {
                self.hospital_word = true
            }
            b"dob" | b"b" | b"born" | b"birth" | b"birthday" | b"birthdate" => self.dob_word = true,
            _ => {}
        }
        if w[0].is_ascii_uppercase() && is_street_type(w) {
            self.street_word = true;
        }
        *prev_word = lower;
        *prev_len = w.len();
    }
}

fn is_street_type(w: &[u8]) -> bool {
    matches!(
        w,
        b"Road"
            | b"Rd"
            | b"Street"
            | b"St"
            | b"Avenue"
            | b"Ave"
            | b"Lane"
            | b"Ln"
            | b"Close"
            | b"Cl"
            | b"Drive"
            | b"Dr"
            | b"Way"
            | b"Crescent"
            | b"Cres"
            | b"Court"
            | b"Ct"
            | b"Place"
            | b"Pl"
            | b"Gardens"
            | b"Gdns"
            | b"Grove"
            | b"Gr"
            | b"Terrace"
            | b"Terr"
            | b"Hill"
            | b"Park"
            | b"Square"
            | b"Sq"
            | b"Row"
            | b"View"
            | b"Walk"
            | b"Mews"
            | b"Green"
            | b"Rise"
            | b"Parade"
            | b"Boulevard"
            | b"Vale"
            | b"Croft"
            | b"Meadow"
            | b"Meadows"
            | b"Fields"
            | b"Wynd"
            | b"Brae"
            | b"Gate"
            | b"Yard"
            | b"End"
            | b"Heights"
            | b"Mount"
    )
}

/// NHS/CHI numbers and phone numbers: both are long digit groups, so one walk over
/// the starts of digit runs finds both without a regex.
#[inline(never)]
fn find_long_numbers(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        if let Some(f) = nhs_at(text, i) {
            i = f.end;
            out.push(f);
            continue;
        }
        let phone_start = if i > 0
            && ((b[i - 1] == b'+' && b[i..].starts_with(b"44"))
                || (b[i] == b'0' && b[i - 1] == b'('))
        {
            Some(i - 1)
        } else if b[i] == b'0' {
            Some(i)
        } else {
            None
        };
        if let Some(s) = phone_start
            && !(s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'+'))
            && let Some(e) = parse_phone(b, s)
        {
            out.push(Finding::new(PidKind::Phone, s, e, 0.9));
            i = e;
            continue;
        }
        i += 1;
    }
}

/// A Modulus 11-valid ten-digit number starting at `s`, written plain, 3-3-4,
/// 3-7 or 6-4 with single spaces, dashes or dots.
#[inline(never)]
fn nhs_at(text: &str, s: usize) -> Option<Finding> {
    let b = text.as_bytes();
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut groups = [0usize; 4];
    let mut g = 0;
    let mut seps = [0u8; 3];
    let mut i = s;
    loop {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() && n < 10 {
            digits[n] = b[i] - b'0';
            n += 1;
            i += 1;
        }
        groups[g] = i - start;
        g += 1;
        if n == 10 || g == groups.len() {
            break;
        }
        if i + 1 < b.len() && matches!(b[i], b' ' | b'-' | b'.') && b[i + 1].is_ascii_digit() {
            seps[g - 1] = b[i];
            i += 1;
        } else {
            return None;
        }
    }
    if n != 10 || !matches!(&groups[..g], [10] | [3, 3, 4] | [3, 7] | [6, 4]) {
        return None;
    }
    let e = i;
    if !isolated_number(b, s, e) || !mod11_valid(&digits) {
        return None;
    }
    let before = window_before(text, s, 32);
    let nhs_context = has_word(before, "nhs");
    let chi_context = has_word(before, "chi");
    let kind = if !nhs_context && (chi_context || (digits[0] <= 3 && chi_date_prefix(&digits))) {
        PidKind::ChiNumber
    } else {
        PidKind::NhsNumber
    };
    let consistent = g != 3 || seps[0] == seps[1];
    let confidence = match (nhs_context || chi_context, consistent) {
        (true, _) => 0.99,
        (false, true) => 0.9,
        (false, false) => 0.75,
    };
    Some(Finding::new(kind, s, e, confidence))
}

/// The identifier after a hospital-number keyword: skip `:`, `#`, `=`, `-` or
/// "is", then up to four letters, an optional space or dash, 4-10 digits and up
/// to two letters ("A1234567", "RX 12345678", "1234567"), or digits in groups of
/// 3-4 ("123 4567").
fn identifier_after(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    let skip_spaces = |mut i: usize| {
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    };
    i = skip_spaces(i);
    if matches!(b.get(i), Some(b':' | b'#' | b'=' | b'-')) {
        i = skip_spaces(i + 1);
    } else if b[i..].len() > 3 && b[i..i + 2].eq_ignore_ascii_case(b"is") && b[i + 2] == b' ' {
        i = skip_spaces(i + 3);
    }
    let s = i;
    let count = |mut j: usize, f: fn(&u8) -> bool| {
        let from = j;
        while b.get(j).is_some_and(f) {
            j += 1;
        }
        (j, j - from)
    };
    let (mut j, letters) = count(i, u8::is_ascii_alphabetic);
    if letters > 4 {
        return None;
    }
    if letters > 0
        && matches!(b.get(j), Some(b' ' | b'-'))
        && b.get(j + 1).is_some_and(u8::is_ascii_digit)
    {
        j += 1;
    }
    let (after_digits, digits) = count(j, u8::is_ascii_digit);
    j = after_digits;
    let e = if (4..=10).contains(&digits) {
        let (after_letters, trailing) = count(j, u8::is_ascii_alphabetic);
        if trailing > 2 {
            return None;
        }
        after_letters
    } else if digits == 3 && letters == 0 {
        // 123 4567 or 123-456-7890
        let mut e = j;
        for _ in 0..2 {
            if matches!(b.get(e), Some(b' ' | b'-')) {
                let (next, n) = count(e + 1, u8::is_ascii_digit);
                if (3..=4).contains(&n) {
                    e = next;
                    continue;
                }
            }
            break;
        }
        if e == j {
            return None;
        }
        e
    } else {
        return None;
    };
    if b.get(e).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((s, e))
}

/// Postcodes start where a capital letter is followed by a digit.
#[inline(never)]
fn find_postcodes(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Cheap test first: a digit within the next three bytes.
        let digit_at = |j: usize| b.get(j).is_some_and(u8::is_ascii_digit);
        if b[i].is_ascii_uppercase()
            && (digit_at(i + 1) || (digit_at(i + 2) && b[i + 1].is_ascii_uppercase()))
            && let Some(e) = postcode_at(b, i)
        {
            out.push(Finding::new(PidKind::Postcode, i, e, 0.9));
            i = e;
            continue;
        }
        i += 1;
    }
}

/// A UK postcode starting at `s` ("LS6 2AB", "SW1A 1AA", "M11AE"): outward code of a
/// known area, digit, optional letter/digit, optional space, then digit and two
/// letters from the inward alphabet (no C, I, K, M, O, V).
fn postcode_at(b: &[u8], s: usize) -> Option<usize> {
    if s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] >= 0x80) {
        return None;
    }
    let upper = |i: usize| b.get(i).is_some_and(u8::is_ascii_uppercase);
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let inward_letter = |i: usize| {
        b.get(i).is_some_and(|c| {
            c.is_ascii_uppercase() && !matches!(c, b'C' | b'I' | b'K' | b'M' | b'O' | b'V')
        })
    };
    let mut i = s;
    while upper(i) && i - s < 2 {
        i += 1;
    }
    if i == s || !digit(i) {
        return None;
    }
    let area_end = i;
    i += 1;
    let inward_at = |j: usize| -> Option<usize> {
        let j = if b.get(j) == Some(&b' ') { j + 1 } else { j };
        let end = j + 3;
        let ok = digit(j)
            && inward_letter(j + 1)
            && inward_letter(j + 2)
            && !b
                .get(end)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c >= 0x80);
        ok.then_some(end)
    };
    // Optional second outward character, tried long-first like the regex would.
    let end = if (upper(i) || digit(i))
        && let Some(e) = inward_at(i + 1)
    {
        e
    } else {
        inward_at(i)?
    };
    let area = std::str::from_utf8(&b[s..area_end]).ok()?;
    postcode_area_known(area).then_some(end)
}

/// The span of a digit group stands alone: no digit or letter glued to either end,
/// and it is not one part of a longer dotted/slashed/dashed number.
fn isolated_number(b: &[u8], s: usize, e: usize) -> bool {
    if s > 0 {
        let p = b[s - 1];
        if p.is_ascii_alphanumeric() {
            return false;
        }
        if matches!(p, b'-' | b'/' | b'.' | b'+') && s > 1 && b[s - 2].is_ascii_digit() {
            return false;
        }
    }
    if e < b.len() {
        let n = b[e];
        if n.is_ascii_alphanumeric() {
            return false;
        }
        if matches!(n, b'-' | b'/' | b'.' | b':') && e + 1 < b.len() && b[e + 1].is_ascii_digit() {
            return false;
        }
    }
    true
}

/// Parse a UK phone number starting at `s` (at "+44", "0044", "(0" or "0"). Returns
/// the end of the number: ten national digits after the 0 or +44, grouped by
/// single spaces, dashes or a bracketed area code.
fn parse_phone(b: &[u8], s: usize) -> Option<usize> {
    let mut i = s;
    let international = if b[i..].starts_with(b"+44") {
        i += 3;
        true
    } else if b[i..].starts_with(b"0044") {
        i += 4;
        true
    } else {
        false
    };
    if international {
        if b.get(i) == Some(&b' ') {
            i += 1;
        }
        if b[i..].starts_with(b"(0)") {
            i += 3;
            if b.get(i) == Some(&b' ') {
                i += 1;
            }
        }
    } else {
        if b.get(i) == Some(&b'(') {
            i += 1;
        }
        if b.get(i) != Some(&b'0') {
            return None;
        }
        i += 1;
    }
    let mut national = 0;
    let mut last_digit_end = i;
    let mut prev_sep = true; // no separator straight after the prefix ("07", not "0 7")
    while i < b.len() && national < 10 {
        let c = b[i];
        if c.is_ascii_digit() {
            if national == 0 && !matches!(c, b'1' | b'2' | b'3' | b'7' | b'8') {
                return None;
            }
            national += 1;
            prev_sep = false;
            last_digit_end = i + 1;
        } else if matches!(c, b' ' | b'-' | b')') && !prev_sep {
            prev_sep = c != b')';
        } else {
            break;
        }
        i += 1;
    }
    if national != 10 {
        return None;
    }
    let e = last_digit_end;
    if e < b.len() && (b[e].is_ascii_alphanumeric()) {
        return None;
    }
    // "07700 900123 4": a digit group straight after means this is something else.
    if e + 1 < b.len() && matches!(b[e], b' ' | b'-') && b[e + 1].is_ascii_digit() {
        let run = b[e + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if run <= 2 {
            return None;
        }
    }
    Some(e)
}

/// Between a birth keyword and the date only punctuation and little words.
fn gap_is_filler(gap: &str) -> bool {
    gap.len() <= 16
        && !gap.contains('\n')
        && gap
            .split(|c: char| !c.is_ascii_alphanumeric())
            .all(|w| w.is_empty() || matches!(w, "is" | "on" | "was" | "of" | "the" | "in"))
}

/// The date match stands alone and is a real calendar date.
#[inline(never)]
fn date_ok(b: &[u8], s: usize, e: usize, d: &str) -> bool {
    if s > 0 && b[s - 1].is_ascii_alphanumeric() {
        return false;
    }
    if e < b.len() && (b[e].is_ascii_alphanumeric() || (b[e] == b'/' || b[e] == b':')) {
        return false;
    }
    let nums: Vec<u32> = d
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
        .collect();
    let month_word = d
        .split(|c: char| !c.is_ascii_alphabetic())
        .find_map(month_from_name);
    let year_ok = |y: u32| y < 100 || (1880..=2100).contains(&y);
    match (nums.as_slice(), month_word) {
        ([day, year], Some(month)) => valid_day(*day, month, None) && year_ok(*year),
        ([single], None) => {
            // DDMMYYYY or DDMMYY written without separators.
            let digits = d.len();
            let day = single / 10u32.pow(u32::try_from(digits).unwrap_or(8) - 2);
            let rest = single % 10u32.pow(u32::try_from(digits).unwrap_or(8) - 2);
            let month = rest / 10u32.pow(u32::try_from(digits).unwrap_or(8) - 4);
            valid_day(day, month, None)
        }
        ([a, m, y], None) if *a > 31 => valid_day(*y, *m, Some(*a)), // ISO
        ([d1, m, y], None) => {
            year_ok(*y) && (valid_day(*d1, *m, Some(*y)) || valid_day(*m, *d1, Some(*y)))
        }
        _ => false,
    }
}

/// Trim a captured name: drop trailing words that are not names ("Mr Smith Bay"),
/// and reject it if the first word is not a name ("Dr On call").
#[inline(never)]
fn trim_name(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let span = &text[s..e];
    let mut end = s;
    let mut seen = 0;
    let mut offset = 0;
    for word in span.split(' ') {
        let w_start = s + offset;
        offset += word.len() + 1;
        if word.is_empty() {
            continue;
        }
        let bare = word.trim_end_matches('.');
        if is_not_name(bare) {
            if seen == 0 {
                return None;
            }
            break;
        }
        // A single capital with no initial-dot is only a name part before a surname.
        end = w_start + word.len();
        seen += 1;
    }
    if seen == 0 {
        return None;
    }
    // Never end a name on an initial ("Mr J." alone is still flagged, trimmed).
    let out = &text[s..end];
    if out.chars().filter(|c| c.is_alphabetic()).count() < 2 {
        return None;
    }
    Some((s, end))
}

/// For "X's mum" the capture may start with a sentence word ("Today Jack's mum").
fn trim_name_leading(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let span = &text[s..e];
    let mut start = s;
    for word in span.split(' ') {
        if is_not_name(word) || word.is_empty() {
            start += word.len() + 1;
        } else {
            break;
        }
    }
    if start >= e {
        return None;
    }
    Some((start, e))
}

/// `word` (lowercase ASCII) occurs in `hay` as a whole word, in any case.
fn has_word(hay: &str, word: &str) -> bool {
    hay.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// Up to `n` bytes of text before `pos`, cut at a char boundary.
fn window_before(text: &str, pos: usize, n: usize) -> &str {
    let from = floor_char_boundary(text, pos.saturating_sub(n));
    &text[from..pos]
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Keep the best of overlapping candidates: higher kind priority, then longer span.
#[inline(never)]
fn resolve_overlaps(mut found: Vec<Finding>) -> Vec<Finding> {
    if found.len() <= 1 {
        return found;
    }
    found.sort_by(|a, b| {
        b.kind
            .priority()
            .cmp(&a.kind.priority())
            .then(b.len().cmp(&a.len()))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        if !kept.iter().any(|k| k.overlaps(f.start, f.end)) {
            kept.push(f);
        }
    }
    kept.sort_by_key(|f| f.start);
    kept
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(PidKind, &str)> {
        Scanner::new()
            .scan(text)
            .into_iter()
            .map(|f| (f.kind, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn stoplist_is_sorted_for_binary_search() {
        assert!(NOT_NAMES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn nhs_formats() {
        for t in [
            "NHS 943 476 5919.",
            "nhs: 943-476-5919",
            "9434765919 is him",
        ] {
            assert_eq!(kinds(t).len(), 1, "{t}");
            assert_eq!(kinds(t)[0].0, PidKind::NhsNumber, "{t}");
        }
        assert!(kinds("ref 9434765918 failed").is_empty());
        assert!(kinds("order 19434765919").is_empty());
    }

    #[test]
    fn chi_by_date_or_context() {
        // 010150123? with a valid check digit.
        let d: [u8; 9] = [0, 1, 0, 1, 5, 0, 1, 2, 3];
        let c = crate::checks::mod11_check_digit(&d).unwrap();
        let t = format!("CHI 010150123{c} noted");
        assert_eq!(kinds(&t)[0].0, PidKind::ChiNumber);
    }

    #[test]
    fn phones() {
        for t in [
            "call 07700 900123",
            "mob 07700900123 ok",
            "+44 7700 900123",
            "+44 (0)20 7946 0000",
            "tel 0161 496 0000",
            "(01632) 960001",
        ] {
            let k = kinds(t);
            assert_eq!(k.len(), 1, "{t}: {k:?}");
            assert_eq!(k[0].0, PidKind::Phone, "{t}");
        }
        assert!(kinds("bleep 1234, ext 4567, 2222 called at 14:30").is_empty());
    }

    #[test]
    fn dates_need_birth_context() {
        assert_eq!(kinds("DOB 12/03/1948")[0].1, "12/03/1948");
        assert_eq!(kinds("born on 3rd March 1952.")[0].1, "3rd March 1952");
        assert_eq!(kinds("d.o.b. 1948-03-12")[0].1, "1948-03-12");
        assert_eq!(kinds("12.03.48 (DOB)")[0].1, "12.03.48");
        assert!(kinds("admitted 12/03/2024, CT on 13/03/2024").is_empty());
    }

    #[test]
    fn names_and_negatives() {
        assert_eq!(kinds("Mrs Jane Smith in bay 4")[0].1, "Jane Smith");
        assert_eq!(kinds("Dr O'Brien aware")[0].1, "O'Brien");
        assert_eq!(kinds("patient John Smith")[0].1, "John Smith");
        assert_eq!(kinds("Today Jack's mum called")[0].1, "Jack");
        assert!(kinds("Dr On call aware").is_empty());
        assert!(
            kinds("MI-0042 to theatre 3, bed 12 bay 4, BP 120/80, HR 110, sats 94%, K+ 5.1")
                .is_empty()
        );
    }

    #[test]
    fn addresses_absorb_postcodes() {
        let k = kinds("lives at 14 Orchard Mews, Leeds LS6 2AB with wife");
        assert_eq!(k[0], (PidKind::Address, "14 Orchard Mews, Leeds LS6 2AB"));
        assert_eq!(kinds("postcode SW1A 1AA")[0].0, PidKind::Postcode);
        assert!(kinds("ST2 segment, T2 4HB").is_empty());
    }

    #[test]
    fn hospital_numbers_and_trust_patterns() {
        assert_eq!(
            kinds("MRN: A1234567")[0],
            (PidKind::HospitalNumber, "A1234567")
        );
        assert_eq!(kinds("hosp no 1234567")[0].1, "1234567");
        let s = Scanner::with_hospital_number_patterns(["RX[0-9]{6}"]).unwrap();
        let f = s.scan("pt RX123456 to CT");
        assert_eq!(f[0].kind, PidKind::HospitalNumber);
        assert!(Scanner::with_hospital_number_patterns(["("]).is_err());
        assert_eq!(kinds("band says K445566 (MRN)")[0].1, "K445566");
        assert_eq!(kinds("Emma Jones (daughter) aware")[0].1, "Emma Jones");
        assert!(kinds("Mr MI-0042 in resus").is_empty());
    }
}
