//! Sitrep wire and protocol types.
//!
//! Everything that crosses a boundary between a device and the server, or that
//! travels inside an MLS application message, is defined here once: the HTTP API
//! bodies ([`api`]), the inbox frames pushed over WebSocket ([`frame`]), the
//! structured end-to-end content format ([`content`]), the conversation metadata
//! carried in the encrypted group context ([`meta`]) and the device credential the
//! organisation signs ([`credential`]).
//!
//! This crate must never do I/O, hold an async runtime or log. Every decoder of
//! untrusted bytes here is bounded and returns an error rather than panicking.

pub mod api;
pub mod b64;
pub mod content;
pub mod credential;
pub mod directory;
pub mod frame;
pub mod incident;
pub mod invite;
pub mod meta;
pub mod policy;
pub mod time;

/// Largest encoded [`content::Content`] we accept (plaintext inside MLS).
pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
/// Largest text body in a message.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
