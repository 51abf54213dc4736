//! Fuzz harnesses for every Sitrep decoder of untrusted bytes.
//!
//! One `pub fn <target>(data: &[u8]) -> bool` per target. Each feeds the bytes
//! to the real decoder (never a copy of it) and asserts what must hold for
//! any input: no panic, decode(encode(x)) == x for whatever decoded, bounds
//! kept, nothing verifies under a key that never signed. The return value says
//! whether the input was accepted; the fuzzer ignores it, the replay test uses
//! it to check that a corpus still reaches past the first error.
//!
//! The cargo-fuzz targets in `/fuzz/fuzz_targets/` are one-line calls into
//! this crate, and `tests/replay.rs` runs every file of `/fuzz/corpus/<target>/`
//! and `/fuzz/regressions/<target>/` through the same functions on stable Rust,
//! so a regression fails plain `cargo test`.
//!
//! Panicking is this crate's job: an assertion failing here is a finding.
//! It must never weaken a check in the crates it tests to make a target pass.

/// `SITREP_FUZZ_TRACE=1` prints what the scripted targets do, for triage.
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SITREP_FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($t:tt)*) => {
        if $crate::tracing() {
            eprintln!($($t)*);
        }
    };
}

mod client;
pub mod keys;
mod reader;
pub mod seeds;
mod server;
mod wire;

pub use client::{client, decision_log, export_bundle};
pub use server::{group, key_package};
pub use wire::{api, content, credential, directory, frame, incident, meta, policy};

/// A fuzz target: its name (the directory under `fuzz/corpus/`) and its harness.
pub type Target = (&'static str, fn(&[u8]) -> bool);

/// Every target, in the order the fuzz runs and the replay test visit them.
pub const TARGETS: &[Target] = &[
    ("api", api),
    ("frame", frame),
    ("content", content),
    ("meta", meta),
    ("credential", credential),
    ("policy", policy),
    ("directory", directory),
    ("incident", incident),
    ("decision_log", decision_log),
    ("export_bundle", export_bundle),
    ("client", client),
    ("key_package", key_package),
    ("group", group),
];
