//! The labelled corpus: its offsets are right, and the scanner meets the targets
//! on it (NHS-number recall >= 0.98, overall recall >= 0.90, precision >= 0.95).

#![allow(clippy::unwrap_used)]

mod support;

use sitrep_pid::Scanner;
use support::eval::{evaluate, parse_corpus};

const CORPUS: &str = include_str!("../corpus/corpus.jsonl");

#[test]
fn corpus_offsets_are_exact() {
    let rows = parse_corpus(CORPUS);
    assert!(rows.len() >= 300, "corpus has {} messages", rows.len());
    let negatives = rows.iter().filter(|r| r.spans.is_empty()).count();
    assert!(negatives >= 100, "only {negatives} messages without PID");
    for (i, row) in rows.iter().enumerate() {
        let mut last_end = 0;
        for s in &row.spans {
            let got = row.text.get(s.start..s.end);
            assert!(
                got.is_some(),
                "line {}: span {}..{} not on char boundaries",
                i + 1,
                s.start,
                s.end
            );
            assert_eq!(got, s.value.as_deref(), "line {}", i + 1);
            assert!(
                s.start >= last_end,
                "line {}: spans overlap or are unsorted",
                i + 1
            );
            last_end = s.end;
        }
    }
}

#[test]
fn corpus_meets_targets() {
    let rows = parse_corpus(CORPUS);
    let scores = evaluate(&Scanner::new(), &rows);
    let report = || {
        let mut s = scores.table();
        for e in &scores.errors {
            let what = if e.false_positive {
                "false positive"
            } else {
                "missed"
            };
            s.push_str(&format!(
                "line {}: {what} {} {:?}\n",
                e.line, e.kind, e.snippet
            ));
        }
        s
    };
    let nhs = scores.kind(sitrep_pid::PidKind::NhsNumber);
    let all = scores.overall();
    assert!(
        nhs.recall() >= 0.98,
        "NHS recall {:.3}\n{}",
        nhs.recall(),
        report()
    );
    assert!(
        all.recall() >= 0.90,
        "overall recall {:.3}\n{}",
        all.recall(),
        report()
    );
    assert!(
        all.precision() >= 0.95,
        "precision {:.3}\n{}",
        all.precision(),
        report()
    );
}
