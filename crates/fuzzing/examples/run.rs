//! Runs one target on the given files, e.g. to triage a crasher on stable:
//!
//!     SITREP_FUZZ_TRACE=1 cargo run -p sitrep-fuzzing --example run -- client crash-1234

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let Some((_, harness)) = sitrep_fuzzing::TARGETS.iter().find(|t| t.0 == name) else {
        let names: Vec<&str> = sitrep_fuzzing::TARGETS.iter().map(|t| t.0).collect();
        eprintln!("usage: run <target> <file>...; targets: {names:?}");
        std::process::exit(2);
    };
    for path in args {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        println!("{path}: accepted {}", harness(&data));
    }
}
