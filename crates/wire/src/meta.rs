//! Conversation metadata carried in the MLS group context as a private-use
//! extension, so names and policies travel encrypted (in Welcomes and in
//! encrypted commits) and never in clear to the server.

use serde::{Deserialize, Serialize};

/// MLS extension type (private-use range) for [`ConversationMeta`].
pub const EXTENSION_TYPE: u16 = 0xF5A1;
/// Bound on encoded metadata.
pub const MAX_META_BYTES: usize = 4096;

/// What every member of a conversation agrees on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationMeta {
    /// Format version (1).
    pub v: u8,
    /// Conversation name, as people see it.
    pub name: String,
    /// User id of the creator.
    pub created_by: String,
    /// PID guard policy: `off`, `warn`, `block` or `pseudonymise`.
    pub pid_policy: String,
    /// Messages are deleted by every client this many seconds after they were
    /// sent; 0 means the organisation's default. Bounded by the signed
    /// organisation policy.
    #[serde(default)]
    pub retention_secs: u64,
    /// Created to be recorded: the organisation's records account is a member,
    /// and every participant is shown so.
    #[serde(default)]
    pub recorded: bool,
    /// A command channel: only these users post; everyone else reads. Every
    /// client refuses other posts. Empty: everyone posts.
    #[serde(default)]
    pub posters: Vec<String>,
}

/// Why metadata bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaError {
    /// Too large or not of the expected shape.
    #[error("malformed conversation metadata")]
    Malformed,
}

impl ConversationMeta {
    /// Encode as CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("writing CBOR to a Vec cannot fail");
        out
    }

    /// Decode untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, MetaError> {
        if bytes.len() > MAX_META_BYTES {
            return Err(MetaError::Malformed);
        }
        let m: Self = ciborium::from_reader(bytes).map_err(|_| MetaError::Malformed)?;
        if m.v != 1
            || m.name.is_empty()
            || m.name.len() > 256
            || m.posters.len() > 1000
            || !m.posters.iter().all(|p| crate::api::valid_id(p))
        {
            return Err(MetaError::Malformed);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let m = ConversationMeta {
            v: 1,
            name: "resus".into(),
            created_by: "alice".into(),
            pid_policy: "warn".into(),
            retention_secs: 86_400,
            recorded: true,
            posters: vec!["alice".into()],
        };
        assert_eq!(ConversationMeta::decode(&m.encode()), Ok(m));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ConversationMeta::decode(&bytes);
        }
    }
}
