//! Sitrep client core.
//!
//! Holds a device's keys and MLS groups, builds and reads the structured content,
//! checks every member's credential against the organisation key, and keeps the
//! local state sealed at rest (AES-256-GCM under an Argon2id key from the
//! passcode).
//!
//! It is sans-I/O in the style of matrix-sdk-crypto: callers push what arrived
//! from the server in ([`Client::handle_entry`]) and take out the requests to
//! send ([`sitrep_wire::api::CommitRequest`], [`sitrep_wire::api::SendRequest`]).
//! It never opens a socket, never picks an async runtime, never reads the clock
//! (time is passed in) and compiles for `wasm32-unknown-unknown`. It never logs.

mod client;
pub mod engine;
mod error;
pub mod export;
pub mod incident;
pub mod lock;
pub mod notify;
pub mod persist;
mod provider;
pub mod records;
pub mod sealed_meta;
mod state;
pub mod store;
pub mod vault;

pub use client::{
    Client, Event, MemberInfo, Outgoing, PendingEnrolment, PreparedCommit, SHORT_ID_LEN, Skipped,
    Waiting, short_id, unread_in,
};
pub use error::Error;
pub use lock::{Locked, Session, UnlockError};
pub use notify::Notification;
pub use openmls::prelude::Ciphersuite;
pub use records::{RecordMatch, RecordsQuery};
pub use sitrep_wire::policy::{OrgPolicy, Previews, SignedPolicy};
pub use state::{Conversation, HistoryEntry, JournalEntry, OpKind, PendingOp};

/// The default suite: AES-256-GCM (the NHS standard) with a hybrid
/// ML-KEM-768 + X25519 KEM, because health data must stay confidential for decades.
pub const DEFAULT_CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_MLKEM768X25519_AES256GCM_SHA384_Ed25519;
/// The RFC 9420 mandatory-to-implement suite, for interoperability.
pub const INTEROP_CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Suites an organisation may choose.
pub fn parse_ciphersuite(name: &str) -> Option<Ciphersuite> {
    match name {
        "MLS_128_MLKEM768X25519_AES256GCM_SHA384_Ed25519" | "0x004e" | "pq" => {
            Some(DEFAULT_CIPHERSUITE)
        }
        "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" | "0x0001" | "classic" => {
            Some(INTEROP_CIPHERSUITE)
        }
        _ => None,
    }
}
