//! Conversation metadata (name, PID policy, retention, posters) sealed for
//! the group context.
//!
//! The delivery service keeps the public state of every group to validate
//! commits, and so sees the group context. The metadata therefore travels in
//! it sealed with AES-256-GCM under a per-conversation key that only members
//! hold: the creator makes it, and every adder passes it to joiners inside
//! the Welcome's encrypted GroupInfo (extension [`KEY_EXTENSION_TYPE`]). The
//! sealed form commits to its key (a hash of the key is part of it), so an
//! adder cannot show a joiner different metadata under another key.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest as _, Sha256};
use sitrep_wire::meta::ConversationMeta;

use crate::Error;

/// GroupInfo extension (private use) carrying the metadata key to joiners,
/// encrypted inside the Welcome.
pub const KEY_EXTENSION_TYPE: u16 = 0xF5A2;

const MAGIC: &[u8; 4] = b"SMC1";
const KEY_LABEL: &[u8] = b"sitrep-meta-key-v1";
const AAD_LABEL: &[u8] = b"sitrep-meta-v1";

fn commitment(key: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(KEY_LABEL);
    h.update(key);
    h.finalize().into()
}

fn aad(group_id: &[u8]) -> Vec<u8> {
    let mut a = AAD_LABEL.to_vec();
    a.extend_from_slice(group_id);
    a
}

/// Seal `meta` for the group context of `group_id`.
pub fn seal(meta: &ConversationMeta, key: &[u8; 32], group_id: &[u8], nonce: [u8; 12]) -> Vec<u8> {
    let ct = Aes256Gcm::new(key.into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &meta.encode(),
                aad: &aad(group_id),
            },
        )
        .expect("AES-GCM encryption of a small buffer cannot fail");
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&commitment(key));
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Open sealed metadata from the group context with the key a Welcome gave.
pub fn open(sealed: &[u8], key: &[u8], group_id: &[u8]) -> Result<ConversationMeta, Error> {
    let bad = || Error::Protocol("the conversation's metadata does not open".into());
    let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
    if sealed.len() < 4 + 32 + 12 + 16 || &sealed[..4] != MAGIC {
        return Err(bad());
    }
    if sealed[4..36] != commitment(&key) {
        return Err(bad());
    }
    let plain = Aes256Gcm::new((&key).into())
        .decrypt(
            Nonce::from_slice(&sealed[36..48]),
            Payload {
                msg: &sealed[48..],
                aad: &aad(group_id),
            },
        )
        .map_err(|_| bad())?;
    ConversationMeta::decode(&plain).map_err(|e| Error::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ConversationMeta {
        ConversationMeta {
            v: 1,
            name: "resus bay 4".into(),
            created_by: "alice".into(),
            pid_policy: "warn".into(),
            retention_secs: 0,
            recorded: false,
            posters: vec![],
        }
    }

    #[test]
    fn sealed_meta_opens_only_with_its_key_and_group() {
        let key = [3u8; 32];
        let s = seal(&meta(), &key, b"group-1", [1u8; 12]);
        assert!(
            !s.windows(5).any(|w| w == b"resus"),
            "the name is not in clear"
        );
        assert_eq!(open(&s, &key, b"group-1").expect("open"), meta());
        assert!(open(&s, &[4u8; 32], b"group-1").is_err(), "another key");
        assert!(open(&s, &key, b"group-2").is_err(), "another group");
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(open(&t, &key, b"group-1").is_err(), "tampered");
        assert!(open(&s[..40], &key, b"group-1").is_err(), "truncated");
    }
}
