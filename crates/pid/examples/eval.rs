//! Precision and recall per kind on a labelled corpus.
//!
//! `cargo run -p sitrep-pid --example eval --release [-- CORPUS.jsonl] [--errors]`
//!
//! Defaults to the crate's own corpus. `--errors` also lists every miss and false
//! alarm with its text: use it on synthetic corpora only.

#[path = "../tests/support/eval.rs"]
mod eval;

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let show_errors = args.iter().any(|a| a == "--errors");
    let path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/corpus.jsonl").to_owned());
    let jsonl = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(2);
        }
    };
    let rows = eval::parse_corpus(&jsonl);
    let scanner = sitrep_pid::Scanner::new();
    let t = Instant::now();
    let scores = eval::evaluate(&scanner, &rows);
    let elapsed = t.elapsed();
    println!(
        "corpus: {path} ({} messages, scanned in {elapsed:?})\n",
        scores.messages
    );
    println!("{}", scores.table());
    if show_errors {
        for e in &scores.errors {
            let what = if e.false_positive { "FP  " } else { "MISS" };
            println!(
                "{what} line {:>4} {:<16} {:?}",
                e.line,
                e.kind.as_str(),
                e.snippet
            );
        }
    }
}
