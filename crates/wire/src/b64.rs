//! Base64 (standard alphabet, padded) for binary fields in JSON bodies.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serializer};

/// Encode bytes as base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decode base64; `None` on malformed input.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).ok()
}

/// `#[serde(with = "sitrep_wire::b64")]` for `Vec<u8>` fields.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&encode(bytes))
}

/// See [`serialize`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    decode(&s).ok_or_else(|| serde::de::Error::custom("invalid base64"))
}

/// Base64 for `Vec<Vec<u8>>`.
pub mod vec {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    /// Serialize a list of byte strings as base64 strings.
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(&super::encode(b))?;
        }
        seq.end()
    }

    /// Deserialize a list of base64 strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| super::decode(s).ok_or_else(|| serde::de::Error::custom("invalid base64")))
            .collect()
    }
}

/// Base64 for `Option<Vec<u8>>`.
pub mod opt {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize an optional byte string.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&super::encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Deserialize an optional byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let v = Option::<String>::deserialize(d)?;
        v.map(|s| super::decode(&s).ok_or_else(|| serde::de::Error::custom("invalid base64")))
            .transpose()
    }
}
