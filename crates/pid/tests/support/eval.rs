#![allow(dead_code)] // each user (test, example) uses a different part
//! Shared by `tests/corpus.rs` and `examples/eval.rs`: load a labelled corpus and
//! score a scanner on it.
//!
//! Match rule: a gold span is *recalled* when some finding of the same kind
//! overlaps it by at least one byte; a finding is *correct* when it overlaps a
//! gold span of the same kind. Precision = correct findings / all findings,
//! recall = recalled gold spans / all gold spans.

use std::collections::BTreeMap;

use serde::Deserialize;
use sitrep_pid::{Finding, PidKind, Scanner};

#[derive(Debug, Deserialize)]
pub struct GoldSpan {
    pub kind: PidKind,
    pub start: usize,
    pub end: usize,
    #[serde(default)]
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Row {
    pub text: String,
    pub spans: Vec<GoldSpan>,
}

pub fn parse_corpus(jsonl: &str) -> Vec<Row> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("corpus line {}: {e}", i + 1))
        })
        .collect()
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub gold: usize,
    pub recalled: usize,
    pub predicted: usize,
    pub correct: usize,
}

impl Counts {
    pub fn recall(&self) -> f64 {
        if self.gold == 0 {
            1.0
        } else {
            self.recalled as f64 / self.gold as f64
        }
    }
    pub fn precision(&self) -> f64 {
        if self.predicted == 0 {
            1.0
        } else {
            self.correct as f64 / self.predicted as f64
        }
    }
    fn add(&mut self, o: &Counts) {
        self.gold += o.gold;
        self.recalled += o.recalled;
        self.predicted += o.predicted;
        self.correct += o.correct;
    }
}

/// A miss or a false alarm, for debugging on synthetic data.
#[derive(Debug)]
pub struct Error {
    pub line: usize,
    pub false_positive: bool,
    pub kind: PidKind,
    pub snippet: String,
}

pub struct Scores {
    pub per_kind: BTreeMap<PidKind, Counts>,
    pub errors: Vec<Error>,
    pub messages: usize,
}

impl Scores {
    pub fn overall(&self) -> Counts {
        let mut c = Counts::default();
        for k in self.per_kind.values() {
            c.add(k);
        }
        c
    }

    pub fn kind(&self, kind: PidKind) -> Counts {
        self.per_kind.get(&kind).copied().unwrap_or_default()
    }

    pub fn table(&self) -> String {
        let mut s = String::from(
            "| kind | gold | found | predicted | correct | recall | precision |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        let mut row = |name: &str, c: &Counts| {
            s.push_str(&format!(
                "| {name} | {} | {} | {} | {} | {:.3} | {:.3} |\n",
                c.gold,
                c.recalled,
                c.predicted,
                c.correct,
                c.recall(),
                c.precision()
            ));
        };
        for (k, c) in &self.per_kind {
            row(k.as_str(), c);
        }
        row("**overall**", &self.overall());
        s
    }
}

pub fn evaluate(scanner: &Scanner, rows: &[Row]) -> Scores {
    let mut per_kind: BTreeMap<PidKind, Counts> = PidKind::ALL
        .iter()
        .map(|k| (*k, Counts::default()))
        .collect();
    let mut errors = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let found: Vec<Finding> = scanner.scan(&row.text);
        for g in &row.spans {
            let c = per_kind.entry(g.kind).or_default();
            c.gold += 1;
            if found
                .iter()
                .any(|f| f.kind == g.kind && f.overlaps(g.start, g.end))
            {
                c.recalled += 1;
            } else {
                errors.push(Error {
                    line: i + 1,
                    false_positive: false,
                    kind: g.kind,
                    snippet: row.text.get(g.start..g.end).unwrap_or("?").to_owned(),
                });
            }
        }
        for f in &found {
            let c = per_kind.entry(f.kind).or_default();
            c.predicted += 1;
            if row
                .spans
                .iter()
                .any(|g| g.kind == f.kind && f.overlaps(g.start, g.end))
            {
                c.correct += 1;
            } else {
                errors.push(Error {
                    line: i + 1,
                    false_positive: true,
                    kind: f.kind,
                    snippet: row.text[f.start..f.end].to_owned(),
                });
            }
        }
    }
    per_kind.retain(|_, c| c.gold > 0 || c.predicted > 0);
    Scores {
        per_kind,
        errors,
        messages: rows.len(),
    }
}
