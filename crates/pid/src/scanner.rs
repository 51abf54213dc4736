//! The detectors. Each is a linear-time `regex` (no backtracking engine) plus a
//! few checks in code that a regex cannot express: check digits, calendar dates,
//! postcode areas, and "what is around this match".
//!
//! Never log or keep the scanned text: only spans leave this module.

use regex::Regex;

use crate::checks::{
    chi_date_prefix, mod11_valid, month_from_letters, postcode_area_letters_known, valid_day,
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

fn is_not_name(word: &[u8]) -> bool {
    match word_key128(word) {
        Some(k) => {
            let i = NOT_NAME_SLOTS[not_name_slot(k)];
            i != 0 && NOT_NAME_KEYS[usize::from(i - 1)] == k
        }
        None => false,
    }
}

/// Multiplier of the perfect hash over [`NOT_NAMES`] (found offline; the
/// table build fails to compile if two words share a slot).
const NOT_NAME_HASH_MUL: u64 = 0x2238_9c84_00b6_0b9d;
const NOT_NAME_HASH_BITS: u32 = 10;

const fn not_name_slot(k: u128) -> usize {
    let folded = (k as u64) ^ ((k >> 64) as u64).rotate_left(29);
    (folded.wrapping_mul(NOT_NAME_HASH_MUL) >> (64 - NOT_NAME_HASH_BITS)) as usize
}

/// For each hash slot, 1 + the index in [`NOT_NAME_KEYS`] of the word there (0
/// when empty).
const NOT_NAME_SLOTS: [u8; 1 << NOT_NAME_HASH_BITS] = {
    assert!(NOT_NAMES.len() < 255);
    let mut t = [0u8; 1 << NOT_NAME_HASH_BITS];
    let mut i = 0;
    while i < NOT_NAME_KEYS.len() {
        let h = not_name_slot(NOT_NAME_KEYS[i]);
        assert!(
            t[h] == 0,
            "stoplist hash collision: pick another multiplier"
        );
        t[h] = (i + 1) as u8;
        i += 1;
    }
    t
};

/// A word of up to 15 bytes packed into an integer (its bytes, then its length),
/// so a stoplist lookup compares integers instead of strings.
const fn word_key128(w: &[u8]) -> Option<u128> {
    if w.len() > 15 {
        return None;
    }
    let mut k = 0u128;
    let mut i = 0;
    while i < w.len() {
        k = (k << 8) | w[i] as u128;
        i += 1;
    }
    Some((k << 8) | w.len() as u128)
}

/// [`NOT_NAMES`] as [`word_key128`] keys.
const NOT_NAME_KEYS: [u128; NOT_NAMES.len()] = {
    let mut t = [0u128; NOT_NAMES.len()];
    let mut i = 0;
    while i < t.len() {
        t[i] = match word_key128(NOT_NAMES[i].as_bytes()) {
            Some(k) => k,
            None => panic!("stoplist words are at most 15 bytes"),
        };
        i += 1;
    }
    t
};

/// The hospital-number keyword, anchored: matched by hand in
/// [`hospital_keyword_at`]; the regex is kept for the test that pins the two
/// together.
#[cfg(test)]
const HOSPITAL_KEYWORD: &str = r"^(?i-u)(?:mrn|m\.r\.n\.?|hosp(?:ital)?\.?[ ]*(?:number|num|no|id|ref)\.?|unit[ ]+(?:number|no)\.?|case[ ]*notes?[ ]*(?:number|no)?\.?|pas[ ]+(?:number|no|id)\.?|patient[ ]+(?:id|no)\.?|pt[ ]+(?:id|no)\.?|crn|patient[ ]+number|local[ ]+(?:patient[ ]+)?(?:id|number|identifier))";

/// Words that end a street name in an address.
const STREET_TYPES: &str = "Road|Rd|Street|St|Avenue|Ave|Lane|Ln|Close|Cl|Drive|Dr|Way|Crescent|Cres|Court|Ct|Place|Pl|Gardens|Gdns|Grove|Gr|Terrace|Terr|Hill|Park|Square|Sq|Row|View|Walk|Mews|Green|Rise|Parade|Boulevard|Vale|Croft|Meadows?|Fields|Wynd|Brae|Gate|Yard|End|Heights|Mount";

/// Compiled detectors. Build once (regex compilation is the expensive part) and
/// share: scanning takes `&self` and is safe from many threads.
#[derive(Debug, Clone)]
pub struct Scanner {
    email: Regex,
    /// Any date, unanchored (looked for just before a birth keyword).
    date: Regex,
    /// The same, anchored: tried at the candidate starts just after a keyword.
    date_at: Regex,
    /// Anchored at the start of an identifier: "K445566 (MRN)".
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
    /// Anchored at a house number or "Flat"/"Apt"/"Unit".
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
        let date = format!(
            r"(?i-u)[0-9]{{1,2}}[/.\-][0-9]{{1,2}}[/.\-](?:[0-9]{{4}}|[0-9]{{2}})|[0-9]{{4}}[/.\-][0-9]{{1,2}}[/.\-][0-9]{{1,2}}|[0-9]{{1,2}}(?:st|nd|rd|th)?[ \-]+(?:of[ ]+)?{month}\.?,?[ \-]+(?:[0-9]{{4}}|'?[0-9]{{2}})|{month}\.?[ ]+[0-9]{{1,2}}(?:st|nd|rd|th)?,?[ ]+[0-9]{{4}}|[0-9]{{1,2}} [0-9]{{1,2}} [0-9]{{4}}|[0-9]{{8}}|[0-9]{{6}}"
        );
        // The keyword regexes below are anchored: the prepass finds the word starts
        // where they can begin (checking the leading word boundary by hand), so
        // each runs over a few bytes instead of the whole message.
        Scanner {
            email: re(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"),
            date_at: re(&format!("^(?:{date})")),
            date: re(&date),
            hospital_suffix: re(
                r"^(?i-u)(?:[a-z]{0,3}[0-9]{5,10}[a-z]?)[ ]*[(\[]?[ ]*(?:mrn|hosp(?:ital)?\.?[ ]*(?:number|num|no)|unit[ ]+no)(?-u:\b)",
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
                r"^(?:(?:Flat|Apt|Apartment|Unit)[ ]+[0-9]+[A-Za-z]?,?[ ]+)?[0-9]{{1,4}}[A-Za-z]?,?[ ]+(?:{NAME}[ ]+){{1,3}}(?:{STREET_TYPES})(?-u:\b)\.?"
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
        let mut pre = Prepass::default();
        pre.fill(text.as_bytes());
        let f = &pre.f;
        let mut out = Vec::new();
        if f.digits == 0 && !f.at && !f.upper {
            return out;
        }
        if f.max_digit_run >= 10 {
            find_long_numbers(text, &pre.digit_runs, &mut out);
        }
        if f.dob_word && f.digits >= 3 {
            self.find_dates_of_birth(text, &pre.dob_words, &mut out);
        }
        if f.hospital_word && f.digits >= 4 {
            self.find_hospital_numbers(text, &pre, &mut out);
        }
        if !self.trust.is_empty() && f.digits >= 1 {
            self.find_trust_patterns(text, &mut out);
        }
        if f.street_word && f.number_then_capital {
            self.find_addresses(text, &pre, &mut out);
        }
        if f.upper_then_digit && f.digits >= 2 {
            find_postcodes(text, &pre.digit_runs, &mut out);
        }
        if f.at {
            self.find_emails(text, &mut out);
        }
        // A name needs a cue word before it or a mark ("'s", "(") after it.
        if f.upper && !(pre.cue_ends.is_empty() && pre.marks.is_empty()) {
            self.find_names(text, &pre, &mut out);
        }
        resolve_overlaps(out)
    }

    fn find_emails(&self, text: &str, out: &mut Vec<Finding>) {
        for m in self.email.find_iter(text) {
            out.push(Finding::new(PidKind::Email, m.start(), m.end(), 0.95));
        }
    }

    fn find_hospital_numbers(&self, text: &str, pre: &Prepass, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        // Keyword first: the same matches as an unanchored, non-overlapping search,
        // because every match starts at one of the candidate word starts.
        let mut next = 0;
        for s in pre.hospital_words.iter() {
            if s < next || !hospital_keyword_may_start(b, s) {
                continue;
            }
            if let Some(kw_end) = hospital_keyword_at(b, s) {
                next = kw_end;
                if let Some((s, e)) = identifier_after(b, next) {
                    out.push(Finding::new(PidKind::HospitalNumber, s, e, 0.9));
                }
            }
        }
        // "K445566 (MRN)", "K445566 hosp no": up to three letters, then a run of
        // 5-10 digits, so every match starts just before a digit run.
        let mut next = 0;
        for d in pre.digit_runs.iter() {
            // A run of fewer than five digits is skipped with one load.
            if !b.get(d + 4).is_some_and(u8::is_ascii_digit) {
                continue;
            }
            let mut c = d;
            while c > 0 && d - c < 4 && b[c - 1].is_ascii_alphabetic() {
                c -= 1;
            }
            if c < next || d - c > 3 || (c > 0 && is_word_byte(b[c - 1])) {
                continue;
            }
            let e = d + b[d..].iter().take_while(|c| c.is_ascii_digit()).count();
            if !(5..=10).contains(&(e - d)) || !suffix_keyword_may_follow(b, e) {
                continue;
            }
            if let Some(m) = self.hospital_suffix.find(&text[c..]) {
                let id_len = m
                    .as_str()
                    .bytes()
                    .take_while(u8::is_ascii_alphanumeric)
                    .count();
                out.push(Finding::new(PidKind::HospitalNumber, c, c + id_len, 0.85));
                next = c + m.end();
            }
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

    fn find_dates_of_birth<const N: usize>(
        &self,
        text: &str,
        candidates: &Positions<N>,
        out: &mut Vec<Finding>,
    ) {
        let b = text.as_bytes();
        let mut next = 0;
        for ks in candidates.iter() {
            if ks < next {
                continue;
            }
            let Some(ke) = dob_keyword_at(b, ks) else {
                continue;
            };
            next = ke;
            // "DOB: 12/03/1948", "born on 3rd March 1952"
            if let Some((ds, de)) = self.date_after(text, ke)
                && gap_is_filler(&text[ke..ds])
                && date_ok(b, ds, de, &text[ds..de])
            {
                out.push(Finding::new(PidKind::DateOfBirth, ds, de, 0.95));
                continue;
            }
            // "12/03/1948 (DOB)"
            let from = floor_char_boundary(text, ks.saturating_sub(28));
            let mut last = None;
            for d in self.date.find_iter(&text[from..ks]) {
                last = Some((from + d.start(), from + d.end()));
            }
            if let Some((ds, de)) = last {
                let gap = &text[de..ks];
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

    /// The leftmost date starting in `from..=from + 16` (a date further away fails
    /// the filler-gap rule anyway), as an unanchored search from `from` would find.
    fn date_after(&self, text: &str, from: usize) -> Option<(usize, usize)> {
        let b = text.as_bytes();
        let last = (from + 16).min(b.len().saturating_sub(1));
        (from..=last)
            .filter(|&p| {
                b.get(p).is_some_and(|&c| {
                    c.is_ascii_digit()
                        || matches!(
                            c.to_ascii_lowercase(),
                            b'j' | b'f' | b'm' | b'a' | b's' | b'o' | b'n' | b'd'
                        )
                })
            })
            .find_map(|p| self.date_at.find(&text[p..]).map(|m| (p, p + m.end())))
    }

    fn find_addresses(&self, text: &str, pre: &Prepass, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        // Every match starts at a "Flat"/"Apt"/"Unit" word or at a house number of
        // 1-4 digits on a word boundary followed by a capitalised word; merge the
        // two sorted candidate lists and try the anchored regex at each.
        let mut flats = pre.flat_words.iter().peekable();
        let mut runs = pre.digit_runs.iter().peekable();
        // Every match ends at a capitalised street-type word the prepass
        // recorded, and everything before it in the match is letters, digits,
        // spaces, commas, apostrophes, dashes or non-ASCII: `street` holds the
        // next such word and the start of the run of those bytes before it.
        let mut streets = pre.street_words.iter();
        let mut street: Option<(usize, usize)> = None;
        let mut next = 0;
        loop {
            let (s, is_run) = match (flats.peek(), runs.peek()) {
                (Some(&f), Some(&r)) if f < r => (flats.next(), false),
                (Some(_), None) => (flats.next(), false),
                (_, Some(_)) => (runs.next(), true),
                (None, None) => (None, false),
            };
            let Some(s) = s else { break };
            if s < next {
                continue;
            }
            while street.is_none_or(|(w, _)| w <= s) {
                let Some(w) = streets.next() else {
                    return;
                };
                let limit = street.map_or(0, |(p, _)| p);
                let mut r = w;
                while r > limit && street_byte(b[r - 1]) {
                    r -= 1;
                }
                if let Some((p, pr)) = street
                    && r == p
                {
                    r = pr;
                }
                street = Some((w, r));
            }
            if street.is_some_and(|(_, r)| r > s) || (is_run && !house_number_at(b, s)) {
                continue;
            }
            let Some(m) = self.street.find(&text[s..]) else {
                continue;
            };
            let mut e = s + m.end();
            next = e;
            // A town and postcode often follow: ", Leeds LS6 2AB".
            let tail = &text[e..];
            let mut confidence = 0.8;
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

    fn find_names(&self, text: &str, pre: &Prepass, out: &mut Vec<Finding>) {
        let b = text.as_bytes();
        let f = &pre.f;
        // A title or context cue can only end at a word the prepass flagged;
        // `last_cue` is the end of the last such word before the capital.
        let mut cues = pre.cue_ends.iter().peekable();
        let mut last_cue = None;
        // "'s" and "(" marks, each with the first position from which
        // `name_followed_by` can reach it.
        let mut marks = pre.marks.iter().peekable();
        let mut mark_reach: Option<(usize, usize)> = None;
        // The prepass recorded every word start (no ASCII letter, digit or
        // non-ASCII byte before it) holding an ASCII capital or a non-ASCII
        // lead byte; positions inside a name already found are skipped.
        let mut i = 0;
        for p in pre.capitals.iter() {
            if p < i {
                continue;
            }
            i = p;
            let c = b[i];
            let capital = c.is_ascii_uppercase()
                || (c >= 0xC0 && text[i..].chars().next().is_some_and(char::is_uppercase));
            if !capital {
                continue;
            }
            let rest = &text[i..];
            while let Some(&p) = cues.peek() {
                if p > i {
                    break;
                }
                last_cue = Some(p);
                cues.next();
            }
            let cue = match last_cue {
                Some(p) if cue_gap(&b[p..i]) => preceding_cue(text, i),
                _ => Cue::None,
            };
            let found = match cue {
                Cue::Title => titled_tail_at(b, i)
                    .unwrap_or_else(|NonAscii| self.titled_tail.find(rest).map(|m| i + m.end()))
                    .filter(|&e| !b.get(e).is_some_and(|&n| n == b'-' || n.is_ascii_digit()))
                    .and_then(|e| trim_name(text, i, e))
                    .map(|(s, e)| (s, e, 0.9)),
                Cue::Context => context_tail_at(b, i)
                    .unwrap_or_else(|NonAscii| self.context_tail.find(rest).map(|m| i + m.end()))
                    .and_then(|e| trim_name(text, i, e))
                    .map(|(s, e)| (s, e, 0.75)),
                Cue::None => None,
            };
            // What follows the word matters only when no cue before it finds a name.
            let marks = if found.is_none()
                && (f.apostrophe_s || f.paren)
                && mark_reachable(b, i, &mut marks, &mut mark_reach)
            {
                name_followed_by(b, i)
            } else {
                Marks::None
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

/// A hand matcher reached a non-ASCII byte, where `\p{Lu}` / `\p{Ll}` (and
/// the curly apostrophe) need the regex: the caller falls back to it.
struct NonAscii;

/// The byte at `j` (0 past the end) if it is ASCII.
fn ascii_at(b: &[u8], j: usize) -> Result<u8, NonAscii> {
    match b.get(j) {
        None => Ok(0),
        Some(&c) if c >= 0x80 => Err(NonAscii),
        Some(&c) => Ok(c),
    }
}

/// `[A-Z][a-z]+(?:-[A-Z][a-z]+)?` at `p`: its end, if it matches. Every byte
/// read is ASCII (else `NonAscii`), where `\p{Lu}`/`\p{Ll}` are `[A-Z]`/`[a-z]`;
/// the quantifiers are greedy and nothing after them can start with a
/// lowercase letter, so the first match found is the regex's.
fn name_core_at(b: &[u8], p: usize) -> Result<Option<usize>, NonAscii> {
    if !ascii_at(b, p)?.is_ascii_uppercase() || !ascii_at(b, p + 1)?.is_ascii_lowercase() {
        return Ok(None);
    }
    let mut j = p + 2;
    while ascii_at(b, j)?.is_ascii_lowercase() {
        j += 1;
    }
    if ascii_at(b, j)? == b'-'
        && ascii_at(b, j + 1)?.is_ascii_uppercase()
        && ascii_at(b, j + 2)?.is_ascii_lowercase()
    {
        j += 3;
        while ascii_at(b, j)?.is_ascii_lowercase() {
            j += 1;
        }
    }
    Ok(Some(j))
}

/// [`NAME`] at `p` on ASCII bytes: the end of the first alternative that
/// matches, in the regex's order (prefix "Mc", "Mac", "O'", "D'", then none).
/// Whatever follows a name in the tail patterns can match empty, so the
/// first alternative that matches is the one the regex keeps.
fn name_at(b: &[u8], p: usize) -> Result<Option<usize>, NonAscii> {
    let c0 = ascii_at(b, p)?;
    if c0 == b'M' {
        let c1 = ascii_at(b, p + 1)?;
        if c1 == b'c'
            && let Some(e) = name_core_at(b, p + 2)?
        {
            return Ok(Some(e));
        }
        if c1 == b'a'
            && ascii_at(b, p + 2)? == b'c'
            && let Some(e) = name_core_at(b, p + 3)?
        {
            return Ok(Some(e));
        }
    } else if (c0 == b'O' || c0 == b'D')
        && ascii_at(b, p + 1)? == b'\''
        && let Some(e) = name_core_at(b, p + 2)?
    {
        return Ok(Some(e));
    }
    name_core_at(b, p)
}

/// [`UPPER_NAME`] at `p` on ASCII bytes: `[A-Z]{2,}(?:-[A-Z]{2,})?`, greedy.
fn upper_name_at(b: &[u8], p: usize) -> Result<Option<usize>, NonAscii> {
    let mut j = p;
    while ascii_at(b, j)?.is_ascii_uppercase() {
        j += 1;
    }
    if j - p < 2 {
        return Ok(None);
    }
    if ascii_at(b, j)? == b'-' {
        let mut k = j + 1;
        while ascii_at(b, k)?.is_ascii_uppercase() {
            k += 1;
        }
        if k - (j + 1) >= 2 {
            j = k;
        }
    }
    Ok(Some(j))
}

/// The `titled_tail` regex at `p` on ASCII bytes: the end of its match.
/// `(?:\p{Lu}\.?[ ]?){0,2}(?:NAME|UPPER_NAME)(?:[ ]+NAME){0,2}`, leftmost-first:
/// the initials are tried greedily (most repetitions, then with the dot and
/// space before without), backing off until a name follows; the trailing
/// names can match empty, so they never force a back-off.
fn titled_tail_at(b: &[u8], p: usize) -> Result<Option<usize>, NonAscii> {
    fn from(b: &[u8], p: usize, initials_left: u8) -> Result<Option<usize>, NonAscii> {
        if initials_left > 0 && ascii_at(b, p)?.is_ascii_uppercase() {
            let q = p + 1;
            let dots: &[usize] = if ascii_at(b, q)? == b'.' {
                &[1, 0]
            } else {
                &[0]
            };
            for &d in dots {
                let spaces: &[usize] = if ascii_at(b, q + d)? == b' ' {
                    &[1, 0]
                } else {
                    &[0]
                };
                for &sp in spaces {
                    if let Some(e) = from(b, q + d + sp, initials_left - 1)? {
                        return Ok(Some(e));
                    }
                }
            }
        }
        let head = match name_at(b, p)? {
            Some(e) => Some(e),
            None => upper_name_at(b, p)?,
        };
        let Some(mut e) = head else {
            return Ok(None);
        };
        for _ in 0..2 {
            let mut j = e;
            while ascii_at(b, j)? == b' ' {
                j += 1;
            }
            if j == e {
                break;
            }
            match name_at(b, j)? {
                Some(x) => e = x,
                None => break,
            }
        }
        Ok(Some(e))
    }
    from(b, p, 2)
}

/// The `context_tail` regex at `p` on ASCII bytes: the end of its match.
/// `NAME(?:[ ]+(?:NAME|UPPER_NAME))?`, leftmost-first.
fn context_tail_at(b: &[u8], p: usize) -> Result<Option<usize>, NonAscii> {
    let Some(mut e) = name_at(b, p)? else {
        return Ok(None);
    };
    let mut j = e;
    while ascii_at(b, j)? == b' ' {
        j += 1;
    }
    if j > e {
        if let Some(x) = name_at(b, j)? {
            e = x;
        } else if let Some(x) = upper_name_at(b, j)? {
            e = x;
        }
    }
    Ok(Some(e))
}

/// The bytes between the end of a cue word and a capitalised word allow
/// [`preceding_cue`] to find the cue: trailing dots, spaces, one `:`/`-`/`=`
/// and "is". A necessary condition only.
fn cue_gap(gap: &[u8]) -> bool {
    gap.iter()
        .all(|c| matches!(c, b' ' | b'.' | b':' | b'-' | b'=' | b'i' | b's'))
}

/// Whether [`name_followed_by`] can reach a mark ("'s" or "(") from the
/// capital at `i`: it walks only over letters, `-`, spaces and non-ASCII bytes,
/// so the next mark after `i` must be preceded by such bytes back to `i`.
/// `reach` caches the next mark and the start of that run.
fn mark_reachable(
    b: &[u8],
    i: usize,
    marks: &mut std::iter::Peekable<impl Iterator<Item = usize>>,
    reach: &mut Option<(usize, usize)>,
) -> bool {
    if reach.is_none_or(|(m, _)| m <= i) {
        *reach = None;
        for m in marks.by_ref() {
            if m > i {
                let mut r = m;
                while r > 0
                    && (b[r - 1].is_ascii_alphabetic()
                        || matches!(b[r - 1], b' ' | b'-')
                        || b[r - 1] >= 0x80)
                {
                    r -= 1;
                }
                *reach = Some((m, r));
                break;
            }
        }
    }
    reach.is_some_and(|(_, r)| r <= i)
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

/// `word` is one of [`NAME_CONTEXT`], in any case (compared through a lowercase
/// copy on the stack instead of one case-insensitive compare per entry).
fn is_name_context(word: &str) -> bool {
    let w = word.as_bytes();
    if !(2..=13).contains(&w.len()) {
        return false;
    }
    let mut lower = [0u8; 13];
    for (d, c) in lower.iter_mut().zip(w) {
        *d = c.to_ascii_lowercase();
    }
    let lw = &lower[..w.len()];
    NAME_CONTEXT.iter().any(|k| k.as_bytes() == lw)
}

/// Look back from the capitalised word at `i` for a title or a context word,
/// skipping spaces and one `:`, `-`, `=` or "is".
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
    let bare = word.trim_end_matches('.');
    if !punct && TITLES.contains(&bare) && !word.starts_with('.') {
        return Cue::Title;
    }
    if is_name_context(bare) {
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

/// Positions recorded by the prepass: kept on the stack for typical messages,
/// spilling to the heap only for long ones.
#[derive(Debug)]
/// Positions are pushed in increasing order; the inline slots hold `u16` (less
/// stack to clear per scan), and everything from the first position that does
/// not fit (past 64 KiB, or past `N` positions) goes to `spill`.
struct Positions<const N: usize> {
    inline: [u16; N],
    len: usize,
    spill: Vec<usize>,
}

impl<const N: usize> Default for Positions<N> {
    fn default() -> Self {
        Positions {
            inline: [0; N],
            len: 0,
            spill: Vec::new(),
        }
    }
}

impl<const N: usize> Positions<N> {
    fn push(&mut self, p: usize) {
        if self.spill.is_empty()
            && let Some(slot) = self.inline.get_mut(self.len)
            && let Ok(v) = u16::try_from(p)
        {
            *slot = v;
            self.len += 1;
        } else {
            self.spill.push(p);
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0 && self.spill.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.inline[..self.len]
            .iter()
            .map(|&v| v as usize)
            .chain(self.spill.iter().copied())
    }
}

/// The prepass result: the gating features plus the positions where the
/// detectors can start, so they try a handful of places instead of every byte.
#[derive(Debug, Default)]
struct Prepass {
    f: Features,
    /// Start of every run of ASCII digits.
    digit_runs: Positions<96>,
    /// Word starts (on an ASCII word boundary) that may begin a hospital-number
    /// keyword: "MRN", "m.r.n", "hosp...", "unit", "case...", "pas", "pat...",
    /// "pt", "crn", "local".
    hospital_words: Positions<16>,
    /// Word starts that may begin a birth keyword: "d", "do", "dob", "date",
    /// "born...", "birth...".
    dob_words: Positions<16>,
    /// "Flat", "Apt", "Apartment", "Unit" (case-sensitive) on a word boundary.
    flat_words: Positions<4>,
    /// Ends of words that may be a title or name-context word ("Mr", "son", "as").
    cue_ends: Positions<32>,
    /// Positions of "(" and of the quote in "'s" / "’s", in order.
    marks: Positions<16>,
    /// Starts of capitalised street-type words ("Road", "St").
    street_words: Positions<8>,
    /// Word starts holding an ASCII capital or a non-ASCII lead byte, with no
    /// ASCII letter or digit or non-ASCII byte before them: where names start.
    capitals: Positions<128>,
}

/// A word of up to 8 ASCII letters packed big-endian and lowercased (the
/// prepass builds the same value byte by byte), so a word test is one integer
/// compare. A nine-letter word keeps its last eight letters.
const fn key(w: &[u8]) -> u64 {
    let mut k = 0u64;
    let mut i = 0;
    while i < w.len() {
        k = (k << 8) | (w[i] | 0x20) as u64;
        i += 1;
    }
    k
}

// What a (lowercased) word means to the detectors, from one lookup.
const W_HOSPITAL: u8 = 1; // mrn, crn, hosp, hospno, hospital
const W_ID: u8 = 2; // id, no, number, num, ref
const W_ID_CONTEXT: u8 = 4; // patient, pt, unit, pas, local, case, notes, note, casenotes
const W_DOB: u8 = 8; // dob, b, born, birth, birthday, birthdate
const W_STREET: u8 = 16; // a street type, when capitalised
const W_FLAT: u8 = 32; // flat, apt, apartment, unit, when capitalised
/// A title or name-context word (any case; `preceding_cue` decides), or "as".
const W_CUE: u8 = 64;

/// The words the prepass recognises, with their flags.
const WORD_LIST: &[(&[u8], u8)] = &[
    (b"mrn", W_HOSPITAL),
    (b"crn", W_HOSPITAL),
    (b"hosp", W_HOSPITAL),
    (b"hospno", W_HOSPITAL),
    (b"hospital", W_HOSPITAL),
    (b"id", W_ID),
    (b"no", W_ID),
    (b"number", W_ID),
    (b"num", W_ID),
    (b"ref", W_ID),
    (b"patient", W_ID_CONTEXT | W_CUE),
    (b"pt", W_ID_CONTEXT | W_CUE),
    (b"pas", W_ID_CONTEXT),
    (b"local", W_ID_CONTEXT),
    (b"case", W_ID_CONTEXT),
    (b"notes", W_ID_CONTEXT),
    (b"note", W_ID_CONTEXT),
    (b"unit", W_ID_CONTEXT | W_FLAT),
    (b"dob", W_DOB),
    (b"b", W_DOB),
    (b"born", W_DOB),
    (b"birth", W_DOB),
    (b"birthday", W_DOB),
    (b"flat", W_FLAT),
    (b"apt", W_FLAT),
    (b"road", W_STREET),
    (b"rd", W_STREET),
    (b"street", W_STREET),
    (b"st", W_STREET),
    (b"avenue", W_STREET),
    (b"ave", W_STREET),
    (b"lane", W_STREET),
    (b"ln", W_STREET),
    (b"close", W_STREET),
    (b"cl", W_STREET),
    (b"drive", W_STREET),
    (b"dr", W_STREET | W_CUE),
    (b"way", W_STREET),
    (b"crescent", W_STREET),
    (b"cres", W_STREET),
    (b"court", W_STREET),
    (b"ct", W_STREET),
    (b"place", W_STREET),
    (b"pl", W_STREET),
    (b"gardens", W_STREET),
    (b"gdns", W_STREET),
    (b"grove", W_STREET),
    (b"gr", W_STREET),
    (b"terrace", W_STREET),
    (b"terr", W_STREET),
    (b"hill", W_STREET),
    (b"park", W_STREET),
    (b"square", W_STREET),
    (b"sq", W_STREET),
    (b"row", W_STREET),
    (b"view", W_STREET),
    (b"walk", W_STREET),
    (b"mews", W_STREET),
    (b"green", W_STREET),
    (b"rise", W_STREET),
    (b"parade", W_STREET),
    (b"vale", W_STREET),
    (b"croft", W_STREET),
    (b"meadow", W_STREET),
    (b"meadows", W_STREET),
    (b"fields", W_STREET),
    (b"wynd", W_STREET),
    (b"brae", W_STREET),
    (b"gate", W_STREET),
    (b"yard", W_STREET),
    (b"end", W_STREET),
    (b"heights", W_STREET),
    (b"mount", W_STREET),
    (b"mr", W_CUE),
    (b"mrs", W_CUE),
    (b"ms", W_CUE),
    (b"miss", W_CUE),
    (b"mx", W_CUE),
    (b"prof", W_CUE),
    (b"master", W_CUE),
    (b"name", W_CUE),
    (b"named", W_CUE),
    (b"called", W_CUE),
    (b"nok", W_CUE),
    (b"kin", W_CUE),
    (b"wife", W_CUE),
    (b"husband", W_CUE),
    (b"son", W_CUE),
    (b"daughter", W_CUE),
    (b"mother", W_CUE),
    (b"father", W_CUE),
    (b"mum", W_CUE),
    (b"dad", W_CUE),
    (b"partner", W_CUE),
    (b"brother", W_CUE),
    (b"sister", W_CUE),
    (b"carer", W_CUE),
    (b"grandson", W_CUE),
    (b"as", W_CUE),
];

/// Multiplier of the perfect hash over [`WORD_LIST`] (found offline; the
/// table build below fails to compile if two words share a slot).
const WORD_HASH_MUL: u64 = 0x958a_85b0_091a_d845;
const WORD_HASH_BITS: u32 = 9;

/// The slot of a packed word key in [`WORD_TABLE`].
const fn word_slot(k: u64) -> usize {
    (k.wrapping_mul(WORD_HASH_MUL) >> (64 - WORD_HASH_BITS)) as usize
}

/// [`WORD_LIST`] as a perfect hash table: the packed key in each slot (0 when
/// empty) and its flags, so a lookup is one multiply and one compare.
const WORD_TABLE: ([u64; 1 << WORD_HASH_BITS], [u8; 1 << WORD_HASH_BITS]) = {
    let mut keys = [0u64; 1 << WORD_HASH_BITS];
    let mut flags = [0u8; 1 << WORD_HASH_BITS];
    let mut i = 0;
    while i < WORD_LIST.len() {
        let (w, f) = WORD_LIST[i];
        assert!(
            !w.is_empty() && w.len() <= 8,
            "table words have 1-8 letters"
        );
        let k = key(w);
        let h = word_slot(k);
        assert!(keys[h] == 0, "word hash collision: pick another multiplier");
        keys[h] = k;
        flags[h] = f;
        i += 1;
    }
    (keys, flags)
};

/// Flags of a word of 1-8 letters with packed key `k` (0 if not listed).
fn table_flags(k: u64) -> u8 {
    let h = word_slot(k);
    if WORD_TABLE.0[h] == k {
        WORD_TABLE.1[h]
    } else {
        0
    }
}

/// Flags of a nine-letter word: `first` is its first letter (lowercased) and
/// `k` the packed key of the other eight.
fn nine_letter_flags(first: u8, k: u64) -> u8 {
    if first == b'b' && k == const { key(b"irthdate") } {
        W_DOB
    } else if first == b'c' && k == const { key(b"asenotes") } {
        W_ID_CONTEXT
    } else if first == b'b' && k == const { key(b"oulevard") } {
        W_STREET
    } else if first == b'a' && k == const { key(b"partment") } {
        W_FLAT
    } else {
        0
    }
}

/// Flags of the word of ASCII letters `b[s..s + len]`; `x` is [`load8`] at `s`.
#[inline(always)]
fn word_flags(b: &[u8], s: usize, len: usize, x: u64) -> u8 {
    if len <= 8 {
        // The packed lowercase key of a word of up to eight letters is the
        // top `len` bytes of `x`.
        let shift = 8 * (8 - len) as u32;
        table_flags((x >> shift) | (0x2020_2020_2020_2020 >> shift))
    } else {
        long_word_flags(b, s, len)
    }
}

#[cold]
fn long_word_flags(b: &[u8], s: usize, len: usize) -> u8 {
    let lower_first = b[s] | 0x20;
    if len == 9 {
        nine_letter_flags(lower_first, load8(b, s + 1) | 0x2020_2020_2020_2020)
    } else if len == 13 && lower_first == b'g' {
        W_CUE // granddaughter (or another 13-letter g-word: a cue is only a hint)
    } else {
        0
    }
}

/// The eight bytes from `s` as a big-endian integer, zero-padded past the end.
fn load8(b: &[u8], s: usize) -> u64 {
    let rest = &b[s..];
    match rest.first_chunk::<8>() {
        Some(c) => u64::from_be_bytes(*c),
        None => {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            u64::from_be_bytes(buf)
        }
    }
}

/// An ASCII word byte for `\b` in the regexes (`(?-u:\b)`): `[0-9A-Za-z_]`.
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// First letters (lowercased) of words that may start a keyword match.
const fn first_letter_mask() -> [u8; 256] {
    let mut t = [0u8; 256];
    let hosp = b"mhucpl";
    let mut i = 0;
    while i < hosp.len() {
        t[hosp[i] as usize] |= 1;
        t[(hosp[i] - 32) as usize] |= 1;
        i += 1;
    }
    t[b'd' as usize] |= 2;
    t[b'D' as usize] |= 2;
    t[b'b' as usize] |= 2;
    t[b'B' as usize] |= 2;
    t
}
const FIRST: [u8; 256] = first_letter_mask();

/// State carried from word to word by the prepass.
#[derive(Debug, Default)]
struct WordState {
    upper: bool,
    /// Flags of the previous word (0 if none or long).
    prev_flags: u8,
}

impl Prepass {
    /// Fill in the features and candidate positions of `b` (in place, so the
    /// position arrays are not copied on return).
    fn fill(&mut self, b: &[u8]) {
        let mut ws = WordState::default();
        let mut digits = 0usize;
        let mut run = 0usize; // digits in the current run (up to two separator bytes between groups)
        let mut max_run = 0usize;
        let mut prev_end = usize::MAX; // end of the previous digit run
        let n = b.len();
        let mut i = 0;
        loop {
            // Spaces and most punctuation only matter next to digits (handled
            // when the next digit run starts), so skip them in a tight loop.
            while i < n && CLASS[usize::from(b[i])] & (ALPHA | DIGIT | SPECIAL | HIGH) == 0 {
                i += 1;
            }
            if i >= n {
                break;
            }
            let k = CLASS[usize::from(b[i])];
            if k & ALPHA != 0 {
                // Most words are lowercase, not listed and cannot start a
                // keyword: they cost the end search and one table probe.
                let s = i;
                let (e, rest_upper) = word_end(b, s + 1);
                let len = e - s;
                let x = load8(b, s);
                let flags = word_flags(b, s, len, x);
                let first = b[s];
                let fm = FIRST[usize::from(first)];
                let kw = if fm != 0 {
                    keyword_start(len, x, fm)
                } else {
                    0
                };
                if k & UPPER == 0
                    && !rest_upper
                    && flags == 0
                    && kw == 0
                    && !(len == 1 && first == b's')
                {
                    ws.prev_flags = 0;
                } else if k & UPPER != 0 && !rest_upper && flags == 0 && kw == 0 && len >= 2 {
                    // "Word": what `word` does for it, without the call.
                    ws.upper = true;
                    ws.prev_flags = 0;
                    if s == 0 || !(b[s - 1].is_ascii_digit() || b[s - 1] >= 0x80) {
                        self.capitals.push(s);
                    }
                    if s >= 2 && b[s - 1] == b' ' {
                        let p = if b[s - 2] == b',' && s >= 3 {
                            b[s - 3]
                        } else {
                            b[s - 2]
                        };
                        self.f.number_then_capital |= p.is_ascii_digit();
                    }
                } else {
                    self.word(b, s, e, k, rest_upper, flags, kw, &mut ws);
                }
                i = e;
            } else if k & DIGIT != 0 {
                // Runs are consumed whole, so a digit here starts a new run.
                self.digit_runs.push(i);
                let s = i;
                i += 1;
                while i < n && b[i].is_ascii_digit() {
                    i += 1;
                }
                digits += i - s;
                // The run continues across up to two separator bytes
                // (space, `-`, `.`, `(`, `)`): "943 476 5919" = 10.
                let joined = prev_end < s
                    && s - prev_end <= 2
                    && b[prev_end..s]
                        .iter()
                        .all(|&c| CLASS[usize::from(c)] & SEP != 0);
                run = if joined { run + (i - s) } else { i - s };
                max_run = max_run.max(run);
                prev_end = i;
            } else {
                self.f.at |= b[i] == b'@';
                if b[i] == b'(' {
                    self.f.paren = true;
                    self.marks.push(i);
                }
                if k & HIGH != 0 {
                    ws.upper = true;
                    if b[i] >= 0xC0
                        && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] >= 0x80))
                    {
                        self.capitals.push(i);
                    }
                }
                i += 1;
            }
        }
        self.f.digits = digits;
        self.f.max_digit_run = max_run;
        self.f.upper = ws.upper;
    }

    /// Handle the word of ASCII letters `b[s..i]` (first byte of class `k`,
    /// `rest_upper` if a later letter is a capital, `x` is [`load8`] at `s`,
    /// `flags` its [`word_flags`]). Kept out of line so the byte loop stays
    /// small.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn word(
        &mut self,
        b: &[u8],
        s: usize,
        i: usize,
        k: u8,
        rest_upper: bool,
        flags: u8,
        kw: u8,
        ws: &mut WordState,
    ) {
        let n = b.len();
        let first = b[s];
        let len = i - s;
        let first_upper = k & UPPER != 0;
        let mut capitalised = false;
        if first_upper || rest_upper {
            ws.upper = true;
            if first_upper && (s == 0 || !(b[s - 1].is_ascii_digit() || b[s - 1] >= 0x80)) {
                self.capitals.push(s);
            }
            if first_upper && s >= 2 && b[s - 1] == b' ' {
                let p = if b[s - 2] == b',' && s >= 3 {
                    b[s - 3]
                } else {
                    b[s - 2]
                };
                self.f.number_then_capital |= p.is_ascii_digit();
            }
            if i < n && b[i].is_ascii_digit() && b[i - 1].is_ascii_uppercase() {
                self.f.upper_then_digit = true;
            }
            // Capitalised with the rest lowercase, as street types are written.
            capitalised = first_upper && len <= 9 && !rest_upper;
        }
        // "'s" / "’s" (the curly quote ends in byte 0x99)
        if len == 1 && first == b's' && s > 0 && (b[s - 1] == b'\'' || b[s - 1] == 0x99) {
            self.f.apostrophe_s = true;
            if b[s - 1] == b'\'' {
                self.marks.push(s - 1);
            } else if s >= 3 && b[s - 3..s] == *"’".as_bytes() {
                self.marks.push(s - 3);
            }
        }
        if flags != 0 {
            if flags & W_HOSPITAL != 0 || (flags & W_ID != 0 && ws.prev_flags & W_ID_CONTEXT != 0) {
                self.f.hospital_word = true;
            }
            self.f.dob_word |= flags & W_DOB != 0;
            if capitalised {
                if flags & W_STREET != 0 {
                    self.f.street_word = true;
                    self.street_words.push(s);
                }
                if flags & W_FLAT != 0 && (s == 0 || !is_word_byte(b[s - 1])) {
                    self.flat_words.push(s);
                }
            }
            if flags & W_CUE != 0 {
                self.cue_ends.push(i);
            }
        }
        ws.prev_flags = flags;
        // Record a word start (on an ASCII word boundary) where a keyword
        // may begin.
        if kw != 0 && (s == 0 || !is_word_byte(b[s - 1])) {
            if kw & 1 != 0 {
                self.hospital_words.push(s);
            }
            if kw & 2 != 0 {
                self.dob_words.push(s);
            }
        }
    }
}

/// The end of the run of ASCII letters starting at `j`, and whether it holds a
/// capital. (A word-at-a-time version measured no better: words are short.)
fn word_end(b: &[u8], mut j: usize) -> (usize, bool) {
    let mut classes = 0u8;
    while let Some(&c) = b.get(j) {
        let k = CLASS[usize::from(c)];
        if k & ALPHA == 0 {
            break;
        }
        classes |= k;
        j += 1;
    }
    (j, classes & UPPER != 0)
}

/// Whether a hospital-number (bit 1) or birth (bit 2) keyword may begin at a
/// word of `len` ASCII letters whose first eight bytes are `x` ([`load8`]) and
/// whose first letter has the [`FIRST`] mask `mask`. Necessary conditions
/// only: the detectors decide.
#[inline(always)]
fn keyword_start(len: usize, x: u64, mask: u8) -> u8 {
    let l0 = (x >> 56) as u8 | 0x20;
    // The first three letters, lowercased and packed (0 when shorter).
    let p3 = if len >= 3 {
        (x >> 40) as u32 | 0x0020_2020
    } else {
        0
    };
    const fn w3(w: &[u8; 3]) -> u32 {
        (w[0] as u32) << 16 | (w[1] as u32) << 8 | w[2] as u32
    }
    const MRN: u32 = w3(b"mrn");
    const CRN: u32 = w3(b"crn");
    const HOS: u32 = w3(b"hos");
    const UNI: u32 = w3(b"uni");
    const CAS: u32 = w3(b"cas");
    const PAS: u32 = w3(b"pas");
    const PAT: u32 = w3(b"pat");
    const LOC: u32 = w3(b"loc");
    let mut kw = 0;
    if mask & 1 != 0
        && ((len == 1 && l0 == b'm')
            || (len == 2 && (x >> 48) as u16 | 0x2020 == u16::from_be_bytes(*b"pt"))
            || matches!(p3, MRN | CRN | HOS | UNI | CAS | PAS | PAT | LOC))
    {
        kw |= 1;
    }
    if mask & 2 != 0
        && ((l0 == b'd' && len <= 4) || p3 == const { w3(b"bor") } || p3 == const { w3(b"bir") })
    {
        kw |= 2;
    }
    kw
}

/// The birth keyword starting at `s` (on a word boundary), with the semantics of
/// the regex `(?i)(?:d\.?[ ]?o\.?[ ]?b|date[ ]+of[ ]+birth|birth[ ]?date|born(?:[ ]+on)?|birthday)\b\.?`
/// (leftmost-first). Returns the end of the match.
fn dob_keyword_at(b: &[u8], s: usize) -> Option<usize> {
    let lc = |i: usize| b.get(i).map(u8::to_ascii_lowercase);
    let word_end = |e: usize| !b.get(e).is_some_and(|&c| is_word_byte(c));
    let finish = |e: usize| if b.get(e) == Some(&b'.') { e + 1 } else { e };
    let lit = |i: usize, w: &[u8]| {
        b.get(i..i + w.len())
            .is_some_and(|x| x.eq_ignore_ascii_case(w))
            .then_some(i + w.len())
    };
    let spaces = |mut i: usize| {
        let from = i;
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let opt = |i: usize, c: u8| if b.get(i) == Some(&c) { i + 1 } else { i };
    match lc(s)? {
        b'd' => {
            // d\.?[ ]?o\.?[ ]?b: each optional byte differs from what follows it,
            // so taking it whenever present is what the regex does.
            let i = opt(opt(s + 1, b'.'), b' ');
            if lc(i) == Some(b'o') {
                let i = opt(opt(i + 1, b'.'), b' ');
                if lc(i) == Some(b'b') && word_end(i + 1) {
                    return Some(finish(i + 1));
                }
            }
            let i = spaces(lit(s, b"date")?)?;
            let i = spaces(lit(i, b"of")?)?;
            let e = lit(i, b"birth")?;
            word_end(e).then(|| finish(e))
        }
        b'b' => {
            if let Some(i) = lit(s, b"birth")
                && let Some(e) = lit(opt(i, b' '), b"date")
                && word_end(e)
            {
                return Some(finish(e));
            }
            if let Some(i) = lit(s, b"born") {
                if let Some(e) = spaces(i).and_then(|j| lit(j, b"on"))
                    && word_end(e)
                {
                    return Some(finish(e));
                }
                if word_end(i) {
                    return Some(finish(i));
                }
            }
            let e = lit(s, b"birthday")?;
            word_end(e).then(|| finish(e))
        }
        _ => None,
    }
}

/// The hospital-number keyword at `s`, with the semantics of the anchored
/// regex `(?i-u)(?:mrn|m\.r\.n\.?|hosp(?:ital)?\.?[ ]*(?:number|num|no|id|ref)\.?|
/// unit[ ]+(?:number|no)\.?|case[ ]*notes?[ ]*(?:number|no)?\.?|pas[ ]+(?:number|no|id)\.?|
/// patient[ ]+(?:id|no)\.?|pt[ ]+(?:id|no)\.?|crn|patient[ ]+number|
/// local[ ]+(?:patient[ ]+)?(?:id|number|identifier))` (leftmost-first: the
/// first alternative that matches, each optional part taken when present).
/// Returns the end of the match. (The test `hospital_keyword_matches_the_regex`
/// compares it with the regex.)
fn hospital_keyword_at(b: &[u8], s: usize) -> Option<usize> {
    let lit = |i: usize, w: &[u8]| {
        b.get(i..i + w.len())
            .is_some_and(|x| x.eq_ignore_ascii_case(w))
            .then_some(i + w.len())
    };
    let spaces = |mut i: usize| {
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    };
    let spaces1 = |i: usize| {
        let j = spaces(i);
        (j > i).then_some(j)
    };
    let dot = |i: usize| if b.get(i) == Some(&b'.') { i + 1 } else { i };
    let first_of = |i: usize, words: &[&[u8]]| words.iter().find_map(|w| lit(i, w));
    match b.get(s)? | 0x20 {
        b'm' => {
            if let Some(e) = lit(s, b"mrn") {
                return Some(e);
            }
            lit(s, b"m.r.n").map(dot)
        }
        b'h' => {
            let h = lit(s, b"hosp")?;
            // "ital" when present; without it the keyword would have to
            // start at its "i", and "id" cannot match "it".
            let base = lit(h, b"ital").unwrap_or(h);
            let j = spaces(dot(base));
            first_of(j, &[b"number", b"num", b"no", b"id", b"ref"]).map(dot)
        }
        b'u' => {
            let j = spaces1(lit(s, b"unit")?)?;
            first_of(j, &[b"number", b"no"]).map(dot)
        }
        b'c' => {
            if let Some(c) = lit(s, b"case") {
                if let Some(n) = lit(spaces(c), b"note") {
                    let n = if b.get(n).is_some_and(|&c| c | 0x20 == b's') {
                        n + 1
                    } else {
                        n
                    };
                    let j = spaces(n);
                    return Some(dot(first_of(j, &[b"number", b"no"]).unwrap_or(j)));
                }
                return None;
            }
            lit(s, b"crn")
        }
        b'p' => {
            if let Some(j) = lit(s, b"pas").and_then(spaces1) {
                return first_of(j, &[b"number", b"no", b"id"]).map(dot);
            }
            if let Some(j) = lit(s, b"patient").and_then(spaces1) {
                if let Some(e) = first_of(j, &[b"id", b"no"]) {
                    return Some(dot(e));
                }
                return lit(j, b"number");
            }
            let j = lit(s, b"pt").and_then(spaces1)?;
            first_of(j, &[b"id", b"no"]).map(dot)
        }
        b'l' => {
            let j = spaces1(lit(s, b"local")?)?;
            // "id" before "identifier": the longer word never wins.
            let words: &[&[u8]] = &[b"id", b"number", b"identifier"];
            if let Some(k) = lit(j, b"patient").and_then(spaces1)
                && let Some(e) = first_of(k, words)
            {
                return Some(e);
            }
            first_of(j, words)
        }
        _ => None,
    }
}

/// Necessary conditions for the hospital keyword regex to match at the word
/// start `s`: "pt", "pas", "patient", "unit" and "local" must be followed by
/// spaces and the first letter of "id"/"no"/"number" (or "patient" after
/// "local"); "mrn" and "m.r.n" need an "r" or "." second.
fn hospital_keyword_may_start(b: &[u8], s: usize) -> bool {
    let l0 = b[s] | 0x20;
    match l0 {
        b'm' => b.get(s + 1).is_some_and(|&c| c | 0x20 == b'r' || c == b'.'),
        b'p' | b'u' | b'l' => {
            let mut j = s + 1;
            while b.get(j).is_some_and(u8::is_ascii_alphabetic) {
                j += 1;
            }
            if b.get(j) != Some(&b' ') {
                return false;
            }
            while b.get(j) == Some(&b' ') {
                j += 1;
            }
            b.get(j).is_some_and(|&c| {
                let c = c | 0x20;
                c == b'i' || c == b'n' || (c == b'p' && l0 == b'l')
            })
        }
        _ => true,
    }
}

/// After a 5-10 digit identifier ending at `e`, the suffix keyword ("mrn",
/// "hosp", "unit") can start: optional letter, spaces, optional bracket, spaces.
fn suffix_keyword_may_follow(b: &[u8], e: usize) -> bool {
    let kw = |j: usize| {
        b.get(j)
            .is_some_and(|c| matches!(c.to_ascii_lowercase(), b'm' | b'h' | b'u'))
    };
    if kw(e) {
        return true;
    }
    let mut j = e;
    if b.get(j).is_some_and(u8::is_ascii_alphabetic) {
        j += 1;
    }
    while b.get(j) == Some(&b' ') {
        j += 1;
    }
    if matches!(b.get(j), Some(b'(' | b'[')) {
        j += 1;
    }
    while b.get(j) == Some(&b' ') {
        j += 1;
    }
    kw(j)
}

/// A byte that can occur in an address match before its street-type word.
fn street_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b' ' | b',' | b'\'' | b'-') || c >= 0x80
}

/// A house number can start an address at the digit run `d`: on a word boundary,
/// 1-4 digits, an optional letter and comma, spaces, then a capital (ASCII or not).
fn house_number_at(b: &[u8], d: usize) -> bool {
    if d > 0 && is_word_byte(b[d - 1]) {
        return false;
    }
    let digits = b[d..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits > 4 {
        return false;
    }
    let mut j = d + digits;
    if b.get(j).is_some_and(u8::is_ascii_alphabetic) {
        j += 1;
    }
    if b.get(j) == Some(&b',') {
        j += 1;
    }
    if b.get(j) != Some(&b' ') {
        return false;
    }
    while b.get(j) == Some(&b' ') {
        j += 1;
    }
    b.get(j)
        .is_some_and(|&c| c.is_ascii_uppercase() || c >= 0x80)
}

/// NHS/CHI numbers and phone numbers: both are long digit groups, so one walk over
/// the starts of digit runs finds both without a regex.
fn find_long_numbers<const N: usize>(
    text: &str,
    digit_runs: &Positions<N>,
    out: &mut Vec<Finding>,
) {
    let b = text.as_bytes();
    let mut next = 0;
    for i in digit_runs.iter() {
        if i < next {
            continue;
        }
        // An NHS/CHI number's first group has 3, 6 or 10 digits; a phone starts
        // at "0", "+44" or "(0". Anything else is skipped without parsing.
        let mut run = i + 1;
        while run < b.len() && run - i < 11 && b[run].is_ascii_digit() {
            run += 1;
        }
        if matches!(run - i, 3 | 6 | 10)
            && let Some(f) = nhs_at(text, i)
        {
            next = f.end;
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
            next = e;
        }
    }
}

/// A Modulus 11-valid ten-digit number starting at `s`, written plain, 3-3-4,
/// 3-7 or 6-4 with single spaces, dashes or dots.
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
    let (nhs_context, chi_context) = nhs_chi_words(before.as_bytes());
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

/// Postcodes start one or two capitals before a digit run ("M1 1AE", "LS6 2AB").
fn find_postcodes<const N: usize>(text: &str, digit_runs: &Positions<N>, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let upper = |j: usize| b[j].is_ascii_uppercase();
    let mut next = 0;
    for d in digit_runs.iter() {
        let two = d >= 2 && upper(d - 2) && upper(d - 1);
        let one = d >= 1 && upper(d - 1);
        for (ok, i) in [(two, d.wrapping_sub(2)), (one, d.wrapping_sub(1))] {
            if !ok || i < next {
                continue;
            }
            if let Some(e) = postcode_at(b, i) {
                out.push(Finding::new(PidKind::Postcode, i, e, 0.9));
                next = e;
            }
        }
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
    postcode_area_letters_known(&b[s..area_end]).then_some(end)
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
fn date_ok(b: &[u8], s: usize, e: usize, d: &str) -> bool {
    if s > 0 && b[s - 1].is_ascii_alphanumeric() {
        return false;
    }
    if e < b.len() && (b[e].is_ascii_alphanumeric() || (b[e] == b'/' || b[e] == b':')) {
        return false;
    }
    // The numbers in the date (runs of digits that fit a `u32`, at most three
    // kept: more never match below) and the first month name.
    let mut nums = [0u32; 3];
    let mut count = 0usize;
    let mut month_word = None;
    let db = d.as_bytes();
    let mut j = 0;
    while j < db.len() {
        let c = db[j];
        let from = j;
        if c.is_ascii_digit() {
            let mut v = Some(0u32);
            while j < db.len() && db[j].is_ascii_digit() {
                v = v
                    .and_then(|v| v.checked_mul(10))
                    .and_then(|v| v.checked_add(u32::from(db[j] - b'0')));
                j += 1;
            }
            if let Some(v) = v {
                if let Some(slot) = nums.get_mut(count) {
                    *slot = v;
                }
                count += 1;
            }
        } else if c.is_ascii_alphabetic() {
            while j < db.len() && db[j].is_ascii_alphabetic() {
                j += 1;
            }
            if month_word.is_none() {
                month_word = month_from_letters(&db[from..j]);
            }
        } else {
            j += 1;
        }
    }
    if count > 3 {
        return false;
    }
    let nums = &nums[..count];
    let year_ok = |y: u32| y < 100 || (1880..=2100).contains(&y);
    match (nums, month_word) {
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
fn trim_name(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let mut end = s;
    let mut seen = 0;
    // The space-separated words of `s..e` (empty ones skipped).
    let mut w = s;
    while w <= e {
        let mut we = w;
        while we < e && b[we] != b' ' {
            we += 1;
        }
        if we > w {
            let mut bare = we;
            while bare > w && b[bare - 1] == b'.' {
                bare -= 1;
            }
            if is_not_name(&b[w..bare]) {
                if seen == 0 {
                    return None;
                }
                break;
            }
            end = we;
            seen += 1;
        }
        w = we + 1;
    }
    if seen == 0 {
        return None;
    }
    // Never end a name on an initial ("Mr J." alone is still flagged, trimmed):
    // at least two alphabetic characters.
    let mut letters = 0;
    let mut i = s;
    while i < end && letters < 2 {
        let c = b[i];
        if c < 0x80 {
            letters += usize::from(c.is_ascii_alphabetic());
            i += 1;
        } else {
            let ch = text[i..].chars().next()?;
            letters += usize::from(ch.is_alphabetic());
            i += ch.len_utf8();
        }
    }
    if letters < 2 {
        return None;
    }
    Some((s, end))
}

/// For "X's mum" the capture may start with a sentence word ("Today Jack's mum").
fn trim_name_leading(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let mut start = s;
    while start <= e {
        let mut we = start;
        while we < e && b[we] != b' ' {
            we += 1;
        }
        if we == start || is_not_name(&b[start..we]) {
            start = we + 1;
        } else {
            break;
        }
    }
    if start >= e {
        return None;
    }
    Some((start, e))
}

/// Whether "nhs" and "chi" occur in `hay` as whole words (maximal runs of ASCII
/// letters and digits), in any case.
fn nhs_chi_words(hay: &[u8]) -> (bool, bool) {
    // Both words have an "h" in the middle: look at each "h" with a letter
    // on either side and nothing alphanumeric beyond them.
    let (mut nhs, mut chi) = (false, false);
    for j in 1..hay.len().saturating_sub(1) {
        if hay[j] | 0x20 != b'h' {
            continue;
        }
        let isolated = (j < 2 || !hay[j - 2].is_ascii_alphanumeric())
            && hay.get(j + 2).is_none_or(|c| !c.is_ascii_alphanumeric());
        if isolated {
            let (p, n) = (hay[j - 1] | 0x20, hay[j + 1] | 0x20);
            nhs |= p == b'n' && n == b's';
            chi |= p == b'c' && n == b'i';
        }
    }
    (nhs, chi)
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
fn resolve_overlaps(mut found: Vec<Finding>) -> Vec<Finding> {
    const MAX: usize = 32;
    let n = found.len();
    if n <= 1 {
        return found;
    }
    if n == 2 && found[0].start != found[1].start {
        let (a, b) = (&found[0], &found[1]);
        if !a.overlaps(b.start, b.end) {
            if a.start > b.start {
                found.swap(0, 1);
            }
            return found;
        }
        // Keep the first in the general order (priority, longer, earlier).
        let rank = |f: &Finding| {
            (
                std::cmp::Reverse(f.kind.priority()),
                std::cmp::Reverse(f.len()),
                f.start,
            )
        };
        if rank(b) < rank(a) {
            found.swap(0, 1);
        }
        found.truncate(1);
        return found;
    }
    if n > MAX
        || found
            .iter()
            .any(|f| f.start > u32::MAX as usize || f.len() >= 1 << 20)
    {
        return resolve_overlaps_general(found);
    }
    // The order of the general version (priority, then length, then start,
    // then the original order) as one integer per candidate: priority (4
    // bits), inverted length (20), start (32), index (8).
    let mut keys = [0u64; MAX];
    for (i, (k, f)) in keys.iter_mut().zip(&found).enumerate() {
        let inv_len = ((1 << 20) - 1 - f.len()) as u64;
        *k = u64::from(15 - f.kind.priority()) << 60
            | inv_len << 40
            | (f.start as u64) << 8
            | i as u64;
    }
    let keys = &mut keys[..n];
    keys.sort_unstable();
    // Greedy in that order; each kept one gets a key by start, then rank.
    let mut spans = [(0usize, 0usize); MAX];
    let mut order = [0u64; MAX];
    let mut kept = 0;
    for k in keys.iter() {
        let i = (k & 0xFF) as usize;
        let (s, e) = (found[i].start, found[i].end);
        if !spans[..kept].iter().any(|&(ks, ke)| ks < e && s < ke) {
            spans[kept] = (s, e);
            order[kept] = (s as u64) << 16 | (kept as u64) << 8 | i as u64;
            kept += 1;
        }
    }
    let order = &mut order[..kept];
    order.sort_unstable();
    // Move the kept ones to the front in that order (in place: `at[i]` is
    // where original candidate `i` is now, `who[j]` which one is at `j`).
    let mut at: [u8; MAX] = std::array::from_fn(|i| i as u8);
    let mut who = at;
    for (j, o) in order.iter().enumerate() {
        let i = (o & 0xFF) as usize;
        let from = usize::from(at[i]);
        if from != j {
            found.swap(j, from);
            let displaced = usize::from(who[j]);
            at[displaced] = from as u8;
            who[from] = displaced as u8;
            at[i] = j as u8;
            who[j] = i as u8;
        }
    }
    found.truncate(kept);
    found
}

/// [`resolve_overlaps`] for many candidates or huge spans.
fn resolve_overlaps_general(mut found: Vec<Finding>) -> Vec<Finding> {
    found.sort_by(|a, b| {
        b.kind
            .priority()
            .cmp(&a.kind.priority())
            .then(b.len().cmp(&a.len()))
            .then(a.start.cmp(&b.start))
    });
    // Keep in place: the kept findings gather at the front, in priority order.
    let mut kept = 0;
    for i in 0..found.len() {
        let (s, e) = (found[i].start, found[i].end);
        if !found[..kept].iter().any(|k| k.overlaps(s, e)) {
            found.swap(kept, i);
            kept += 1;
        }
    }
    found.truncate(kept);
    found.sort_by_key(|f| f.start);
    found
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
    fn word_table_finds_every_word() {
        for &(w, f) in WORD_LIST {
            assert_eq!(table_flags(key(w)), f);
        }
        assert_eq!(table_flags(key(b"xyz")), 0);
    }

    #[test]
    fn stoplist_is_sorted_and_hashed() {
        assert!(NOT_NAMES.windows(2).all(|w| w[0] < w[1]));
        for w in NOT_NAMES {
            assert!(is_not_name(w.as_bytes()), "{w}");
        }
        assert!(!is_not_name(b"Smith"));
    }

    #[test]
    fn hospital_keyword_matches_the_regex() {
        let hospital = Regex::new(HOSPITAL_KEYWORD).unwrap();
        let words = [
            "mrn",
            "MRN",
            "m.r.n",
            "M.R.N.",
            "m.r.n.x",
            "hosp",
            "hospital",
            "Hosp.",
            "hosp. no",
            "hospital number",
            "hospitalno",
            "hosp num",
            "hosp  id.",
            "hosp ref",
            "hospit no",
            "hospitalid",
            "unit no",
            "unit  number.",
            "unitno",
            "unit x",
            "case notes",
            "casenote",
            "case  notes  no.",
            "case notesnumber",
            "case note .",
            "casenotes no",
            "case x",
            "pas no",
            "pas id.",
            "pas number",
            "pasno",
            "patient id",
            "patient no.",
            "patient number",
            "patient  num",
            "patientid",
            "pt id",
            "pt no.",
            "pt number",
            "ptid",
            "crn",
            "CRN.",
            "crnx",
            "local id",
            "local patient id",
            "local patient number",
            "local identifier",
            "local  patient  identifier",
            "local patientid",
            "local pt id",
            "unit",
            "hosp",
            "case",
            "pt",
            "m",
            "mr",
            "",
            "loc",
            "hospital  ",
            "Case Notes No.",
        ];
        for w in words {
            for tail in ["", " ", ".", " 123", "x", ". A1", "\u{e9}"] {
                let t = format!("{w}{tail}");
                let want = hospital.find(&t).map(|m| m.end());
                assert_eq!(hospital_keyword_at(t.as_bytes(), 0), want, "{t:?}");
            }
        }
    }

    #[test]
    fn name_tails_match_the_regexes() {
        let scanner = Scanner::new();
        let parts = [
            "J",
            "J.",
            "JS",
            "J ",
            "J. ",
            "Smith",
            "SMITH",
            "O'Brien",
            "McDonald",
            "Macdonald",
            "MacDonald",
            "Mc",
            "Mac",
            "D'Arcy",
            "Smith-Jones",
            "SMITH-JONES",
            "AB-C",
            "X",
            " ",
            "  ",
            "-",
            ".",
            "a",
            "Ab",
            "Zoe",
            "Anne-",
            "Mcx",
            "O'",
            "D'x",
        ];
        for a in parts {
            for b in parts {
                for c in parts {
                    let t = format!("{a}{b}{c}");
                    let want = scanner.titled_tail.find(&t).map(|m| m.end());
                    let got = titled_tail_at(t.as_bytes(), 0).ok().flatten();
                    assert_eq!(got, want, "titled {t:?}");
                    let want = scanner.context_tail.find(&t).map(|m| m.end());
                    let got = context_tail_at(t.as_bytes(), 0).ok().flatten();
                    assert_eq!(got, want, "context {t:?}");
                }
            }
        }
    }

    #[test]
    fn nhs_chi_words_are_whole_words() {
        assert_eq!(nhs_chi_words(b"NHS no"), (true, false));
        assert_eq!(nhs_chi_words(b"x chi:"), (false, true));
        assert_eq!(nhs_chi_words(b"nhs1 achi chip"), (false, false));
        assert_eq!(nhs_chi_words(b"hs chi"), (false, true));
        assert_eq!(nhs_chi_words(b"nh"), (false, false));
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
