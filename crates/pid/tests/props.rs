//! Property tests: every Modulus 11-valid number in every written format is found;
//! no number failing the check is reported as an NHS or CHI number; arbitrary
//! input (unicode included) never panics and yields well-formed spans.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sitrep_pid::{
    Finding, PidKind, PidPolicy, PolicyOutcome, mod11_check_digit, pseudonymise, scan,
};

/// Words that carry no identifier context of their own.
fn filler() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "the", "pt", "in", "bay", "is", "for", "CT", "please", "check", "number", "ok", "→",
            "Zoë", "sats", "94%", "at", "14:30", "BP", "120/80", "(", ")", ":", "-", "NHS",
        ]),
        0..6,
    )
    .prop_map(|w| w.join(" "))
}

fn format_number(d: &[u8; 10], style: u8) -> String {
    let s: String = d.iter().map(|x| char::from(b'0' + x)).collect();
    match style {
        0 => s,
        1 => format!("{} {} {}", &s[..3], &s[3..6], &s[6..]),
        _ => format!("{}-{}-{}", &s[..3], &s[3..6], &s[6..]),
    }
}

fn valid_number() -> impl Strategy<Value = [u8; 10]> {
    prop::array::uniform9(0u8..10).prop_filter_map("remainder 1 has no check digit", |d9| {
        let c = mod11_check_digit(&d9)?;
        let mut d = [0u8; 10];
        d[..9].copy_from_slice(&d9);
        d[9] = c;
        Some(d)
    })
}

fn invalid_number() -> impl Strategy<Value = [u8; 10]> {
    (prop::array::uniform9(0u8..10), 0u8..10).prop_filter_map(
        "must fail the check",
        |(d9, last)| {
            if mod11_check_digit(&d9) == Some(last) {
                return None;
            }
            let mut d = [0u8; 10];
            d[..9].copy_from_slice(&d9);
            d[9] = last;
            Some(d)
        },
    )
}

fn well_formed(text: &str, findings: &[Finding]) {
    let mut last = 0;
    for f in findings {
        assert!(f.start < f.end && f.end <= text.len(), "{f:?}");
        assert!(
            text.is_char_boundary(f.start) && text.is_char_boundary(f.end),
            "{f:?}"
        );
        assert!(
            f.start >= last,
            "findings overlap or are unsorted: {findings:?}"
        );
        assert!((0.0..=1.0).contains(&f.confidence));
        last = f.end;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_numbers_are_found_in_every_format(
        d in valid_number(), style in 0u8..3, before in filler(), after in filler()
    ) {
        let number = format_number(&d, style);
        let text = format!("{before} {number} {after}");
        let start = before.len() + 1;
        let found = scan(&text);
        let hit = found.iter().find(|f| f.start == start && f.end == start + number.len());
        prop_assert!(
            matches!(hit.map(|f| f.kind), Some(PidKind::NhsNumber | PidKind::ChiNumber)),
            "{text:?} -> {found:?}"
        );
        // A number that is not a valid CHI date prefix is always an NHS number.
        if d[0] >= 4 {
            prop_assert_eq!(hit.map(|f| f.kind), Some(PidKind::NhsNumber));
        }
    }

    #[test]
    fn invalid_numbers_are_never_nhs_or_chi(
        d in invalid_number(), style in 0u8..3, before in filler(), after in filler()
    ) {
        let text = format!("{before} {} {after}", format_number(&d, style));
        for f in scan(&text) {
            prop_assert!(!matches!(f.kind, PidKind::NhsNumber | PidKind::ChiNumber), "{text:?} -> {f:?}");
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let found = scan(&text);
        well_formed(&text, &found);
        let _ = pseudonymise(&text, &found, Some("MI-0042"));
    }

    #[test]
    fn clinical_looking_text_never_panics(
        text in r"([A-Za-z0-9 :/.,@+()'’\-]|Mr |DOB |MRN |NHS |07700 |é|→|\u{0301}){0,120}"
    ) {
        let found = scan(&text);
        well_formed(&text, &found);
        let rewritten = pseudonymise(&text, &found, None);
        // Pseudonymising removes what was found.
        prop_assert!(found.is_empty() || rewritten != text || found.iter().all(|f| text[f.start..f.end] == f.replacement));
    }

    #[test]
    fn pseudonymise_survives_garbage_findings(
        text in any::<String>(),
        spans in prop::collection::vec((0usize..64, 0usize..64), 0..5)
    ) {
        let findings: Vec<Finding> = spans.iter().map(|&(start, end)| Finding {
            kind: PidKind::PersonName, start, end, confidence: 0.5, replacement: "[NAME]".into(),
        }).collect();
        let _ = pseudonymise(&text, &findings, None);
    }
}

#[test]
fn policy_outcomes() {
    let msg = "Mrs Jane Smith, NHS 943 476 5919, bay 4";
    assert_eq!(
        sitrep_pid::apply_policy(PidPolicy::Off, msg),
        PolicyOutcome::Send(msg.into())
    );
    assert!(matches!(
        sitrep_pid::apply_policy(PidPolicy::Warn, msg),
        PolicyOutcome::NeedsConfirmation(f) if f.len() == 2
    ));
    assert!(matches!(
        sitrep_pid::apply_policy(PidPolicy::Block, msg),
        PolicyOutcome::Blocked(f) if f.len() == 2
    ));
    assert_eq!(
        sitrep_pid::apply_policy(PidPolicy::Block, "BP 120/80 bay 4"),
        PolicyOutcome::Send("BP 120/80 bay 4".into())
    );
    let linked =
        sitrep_pid::default_scanner().apply_policy(PidPolicy::Pseudonymise, msg, Some("MI-0042"));
    let PolicyOutcome::Rewritten(text, _) = linked else {
        panic!("{linked:?}")
    };
    assert_eq!(text, "Mrs [NAME], NHS MI-0042, bay 4");
}

#[test]
fn policy_and_kinds_serialise_as_documented() {
    assert_eq!(
        serde_json::to_string(&PidPolicy::Pseudonymise).unwrap(),
        "\"pseudonymise\""
    );
    let p: PidPolicy = serde_json::from_str("\"block\"").unwrap();
    assert_eq!(p, PidPolicy::Block);
    assert_eq!("warn".parse::<PidPolicy>(), Ok(PidPolicy::Warn));
    assert!("loud".parse::<PidPolicy>().is_err());
    let line = "NHS 943 476 5919";
    assert_eq!(
        sitrep_pid::scan_line_json(line),
        r#"{"findings":[{"kind":"nhs_number","start":4,"end":16,"confidence":0.99,"replacement":"[NHS-NUMBER]"}]}"#
    );
    assert_eq!(
        sitrep_pid::scan_line_json("bay 4, HR 110"),
        r#"{"findings":[]}"#
    );
    for k in PidKind::ALL {
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            format!("\"{}\"", k.as_str())
        );
    }
}
