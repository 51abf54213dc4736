//! The structured content carried inside MLS application messages.
//!
//! In the spirit of the IETF MIMI content draft: a versioned CBOR map with a
//! message id, a sent-at time, a kind, a body, an optional reply-to and an
//! optional expiry. Encoding is deterministic (fixed field order, absent options
//! omitted) and pinned by a known-answer test. Decoding is bounded.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Current content format version.
pub const VERSION: u8 = 1;

/// What a message is. New kinds (alerts, receipts, METHANE reports, decisions)
/// are added here; a client that does not know a kind sees `Unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Plain text.
    Text,
    /// The message named in `reply_to` was transferred to the patient's health
    /// record; clients mark it, and delete it when the organisation says so.
    Transferred,
    /// STANDBY / DECLARED / CANCELLED / STAND DOWN ([`crate::incident::IncidentMsg`]).
    Incident,
    /// A call-in reply.
    Callin,
    /// A priority alert needing acknowledgement.
    Alert,
    /// An acknowledgement of an alert.
    Ack,
    /// Aggregated read receipts.
    Receipt,
    /// A signed decision-log entry.
    Decision,
    /// A casualty-board entry.
    Casualty,
    /// A kind this build does not understand.
    #[serde(other)]
    Unknown,
}

/// One message as its sender wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Format version ([`VERSION`]).
    pub v: u8,
    /// Random 16-byte message id, chosen by the sender.
    pub id: ByteBuf,
    /// Milliseconds since the Unix epoch on the sender's clock.
    pub sent_at: u64,
    /// What this is.
    pub kind: Kind,
    /// The text.
    pub body: String,
    /// The message this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ByteBuf>,
    /// When clients must delete it (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Why content bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentError {
    /// Larger than [`crate::MAX_CONTENT_BYTES`].
    #[error("content too large")]
    TooLarge,
    /// Not CBOR of the expected shape.
    #[error("content is not valid CBOR: {0}")]
    Malformed(String),
    /// A version this build does not read.
    #[error("unsupported content version {0}")]
    Version(u8),
    /// A field is out of bounds.
    #[error("invalid content field: {0}")]
    Invalid(&'static str),
}

impl Content {
    /// A text message.
    pub fn text(id: [u8; 16], sent_at: u64, body: impl Into<String>) -> Self {
        Self {
            v: VERSION,
            id: ByteBuf::from(id.to_vec()),
            sent_at,
            kind: Kind::Text,
            body: body.into(),
            reply_to: None,
            expires_at: None,
        }
    }

    /// Deterministic CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        ciborium::into_writer(self, &mut out).expect("writing CBOR to a Vec cannot fail");
        out
    }

    /// Decode and validate untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        if bytes.len() > crate::MAX_CONTENT_BYTES {
            return Err(ContentError::TooLarge);
        }
        let c: Content =
            ciborium::from_reader(bytes).map_err(|e| ContentError::Malformed(e.to_string()))?;
        if c.v != VERSION {
            return Err(ContentError::Version(c.v));
        }
        if c.id.len() != 16 {
            return Err(ContentError::Invalid("id"));
        }
        if c.body.len() > crate::MAX_BODY_BYTES {
            return Err(ContentError::Invalid("body"));
        }
        if c.reply_to.as_ref().is_some_and(|r| r.len() != 16) {
            return Err(ContentError::Invalid("reply_to"));
        }
        Ok(c)
    }

    /// The id as 32 hex chars.
    pub fn id_hex(&self) -> String {
        hex::encode(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answer() {
        let c = Content::text([7u8; 16], 1_700_000_000_000, "hi");
        let hex = hex::encode(c.encode());
        // {"v":1,"id":h'07..07',"sent_at":1700000000000,"kind":"text","body":"hi"}
        assert_eq!(
            hex,
            "a561760162696450070707070707070707070707070707076773656e745f61741b0000018bcfe56800\
             646b696e64647465787464626f6479626869"
        );
        assert_eq!(Content::decode(&c.encode()).expect("round trip"), c);
    }

    #[test]
    fn refuses_bad_versions_and_fields() {
        let mut c = Content::text([1u8; 16], 1, "x");
        c.v = 2;
        assert_eq!(Content::decode(&c.encode()), Err(ContentError::Version(2)));
        let mut c = Content::text([1u8; 16], 1, "x");
        c.id = ByteBuf::from(vec![1, 2]);
        assert_eq!(
            Content::decode(&c.encode()),
            Err(ContentError::Invalid("id"))
        );
        let c = Content::text([1u8; 16], 1, "x".repeat(crate::MAX_BODY_BYTES + 1));
        assert_eq!(
            Content::decode(&c.encode()),
            Err(ContentError::Invalid("body"))
        );
        assert_eq!(
            Content::decode(&vec![0u8; crate::MAX_CONTENT_BYTES + 1]),
            Err(ContentError::TooLarge)
        );
    }

    #[test]
    fn unknown_kind_is_kept_as_unknown() {
        #[derive(Serialize)]
        struct Future<'a> {
            v: u8,
            id: ByteBuf,
            sent_at: u64,
            kind: &'a str,
            body: &'a str,
        }
        let mut out = Vec::new();
        ciborium::into_writer(
            &Future {
                v: 1,
                id: ByteBuf::from(vec![0u8; 16]),
                sent_at: 5,
                kind: "methane",
                body: "",
            },
            &mut out,
        )
        .expect("encode");
        assert_eq!(Content::decode(&out).expect("decodes").kind, Kind::Unknown);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Content::decode(&bytes);
        }

        #[test]
        fn round_trips(id in any::<[u8; 16]>(), t in any::<u64>(), body in ".{0,200}") {
            let c = Content::text(id, t, body);
            prop_assert_eq!(Content::decode(&c.encode()).expect("round trip"), c);
        }
    }
}
