//! Writes every target's seed inputs to `fuzz/corpus/<target>/seed-<name>`.
//!
//!     cargo run -p sitrep-fuzzing --example seeds [-- --force]
//!
//! Seeds already there are kept unless `--force`: those made with
//! per-process keys (exports, KeyPackages, GroupInfos) differ on every run,
//! and rewriting them would churn the corpus for nothing.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let force = std::env::args().any(|a| a == "--force");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, seeds) in sitrep_fuzzing::seeds::all() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in &seeds {
            let path = dir.join(format!("seed-{name}"));
            if force || !path.exists() {
                std::fs::write(path, bytes)?;
            }
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}
