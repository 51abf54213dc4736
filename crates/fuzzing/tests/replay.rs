//! Replays the committed fuzz corpora on stable Rust, under plain `cargo test`.
//!
//! Every file of `fuzz/corpus/<target>/` (inputs the fuzzer kept for new
//! coverage, and the seeds) and of `fuzz/regressions/<target>/` (crashers,
//! fixed) goes through the same harness the fuzzer runs. A target whose
//! corpus is missing or empty fails, so this cannot silently test nothing.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use sitrep_fuzzing::{TARGETS, Target, seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs one input; a panic is reported with the file that caused it.
fn run(target: &Target, what: &str, data: &[u8]) -> bool {
    let (name, harness) = target;
    catch_unwind(AssertUnwindSafe(|| harness(data)))
        .unwrap_or_else(|_| panic!("fuzz target {name} panics on {what}"))
}

#[test]
fn every_corpus_replays_and_still_reaches_past_the_decoder() {
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target.0);
        let inputs = files(&dir);
        assert!(
            !inputs.is_empty(),
            "fuzz corpus {} is empty: run the seed generator and the fuzzer",
            dir.display()
        );
        let accepted = inputs
            .iter()
            .filter(|p| {
                let data = std::fs::read(p).expect("a corpus file");
                run(target, &p.display().to_string(), &data)
            })
            .count();
        assert!(
            accepted > 0,
            "no input of {} is accepted any more: the format changed under the corpus",
            dir.display()
        );
    }
}

#[test]
fn fixed_crashers_stay_fixed() {
    let dir = fuzz_dir().join("regressions");
    let known: BTreeSet<&str> = TARGETS.iter().map(|t| t.0).collect();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries {
        let path = e.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !path.is_dir() {
            continue;
        }
        let target = TARGETS
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("regressions/{name} names no target of {known:?}"));
        for p in files(&path) {
            let data = std::fs::read(&p).expect("a regression file");
            run(target, &p.display().to_string(), &data);
        }
    }
}

#[test]
fn fresh_seeds_are_accepted_and_committed() {
    let all = seeds::all();
    for target in TARGETS {
        let (_, seeds) = all
            .iter()
            .find(|(n, _)| *n == target.0)
            .unwrap_or_else(|| panic!("no seeds for {}", target.0));
        let accepted = seeds
            .iter()
            .filter(|(name, bytes)| run(target, &format!("seed {name}"), bytes))
            .count();
        assert!(accepted > 0, "no fresh seed of {} is accepted", target.0);
        for (name, _) in seeds {
            let f = fuzz_dir()
                .join("corpus")
                .join(target.0)
                .join(format!("seed-{name}"));
            assert!(
                f.is_file(),
                "{} is missing: cargo run -p sitrep-fuzzing --example seeds",
                f.display()
            );
        }
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        let script = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let body = std::fs::read_to_string(&script)
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            body.contains(&format!("sitrep_fuzzing::{name}(")),
            "{}",
            script.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml lacks {name}"
        );
    }
}
