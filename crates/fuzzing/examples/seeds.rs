//! Writes every target's seed inputs to `fuzz/corpus/<target>/seed-<name>`.
//!
//!     cargo run -p sitrep-fuzzing --example seeds
//!
//! Seeds made with per-process keys (the client's exports) differ on every
//! run; rewrite them only together with a `cargo fuzz cmin` of the corpus.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, seeds) in sitrep_fuzzing::seeds::all() {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}
