//! Enrolment codes, with the organisation's key in them. A code is 16
//! characters of secret (80 bits; the server keeps only its hash) followed
//! by 16 characters of check: the first 80 bits of SHA-256 over the
//! organisation's public key. The client compares the check with the key a
//! server offers *before* it sends the secret, and again with the key it
//! pins, so a rogue server or a machine in the middle can neither enrol the
//! device nor learn the code. Both in Crockford base32 without I, L, O, U,
//! in groups of four: `XXXX-XXXX-XXXX-XXXX-CCCC-CCCC-CCCC-CCCC`.

use sha2::{Digest as _, Sha256};

/// Crockford base32 without I, L, O, U: easy to read out over a phone.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of secret.
pub const SECRET_CHARS: usize = 16;
/// Characters of organisation check.
pub const CHECK_CHARS: usize = 16;

/// A code as typed, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The secret part, normalised (upper case, no dashes).
    pub secret: String,
    /// The organisation check, normalised; `None` for a code issued before
    /// codes carried one.
    pub org_check: Option<String>,
}

/// Why a code was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an enrolment code is 16 or 32 characters of 0-9 and A-Z (dashes and case do not matter)")]
pub struct BadCode;

fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl Invite {
    /// Split a code as a person typed it.
    pub fn parse(code: &str) -> Result<Self, BadCode> {
        let n = normalise(code);
        if n.len() > SECRET_CHARS + CHECK_CHARS {
            return Err(BadCode);
        }
        match n.len() {
            SECRET_CHARS => Ok(Self {
                secret: n,
                org_check: None,
            }),
            l if l == SECRET_CHARS + CHECK_CHARS => Ok(Self {
                secret: n[..SECRET_CHARS].to_string(),
                org_check: Some(n[SECRET_CHARS..].to_string()),
            }),
            _ => Err(BadCode),
        }
    }

    /// Whether `org_public_key` is the key this code was issued under
    /// (`true` for a code without a check: the caller says so).
    pub fn matches_key(&self, org_public_key: &[u8]) -> bool {
        self.org_check
            .as_deref()
            .is_none_or(|c| c == org_check(org_public_key))
    }

    /// Whether a fingerprint as servers publish it
    /// ([`crate::credential::fingerprint`], hex) is of the key this code was
    /// issued under.
    pub fn matches_fingerprint(&self, fingerprint: &str) -> bool {
        let Some(check) = &self.org_check else {
            return true;
        };
        let hex: String = fingerprint.chars().filter(|c| !c.is_whitespace()).collect();
        let Ok(bytes) = hex::decode(hex) else {
            return false;
        };
        bytes.len() >= 10 && *check == base32(&bytes[..10])
    }
}

/// The check for an organisation key: the first 80 bits of its SHA-256.
pub fn org_check(org_public_key: &[u8]) -> String {
    base32(&Sha256::digest(org_public_key)[..10])
}

/// A full code for `secret` under `org_public_key`, in groups of four.
pub fn code(secret: &str, org_public_key: &[u8]) -> String {
    group(&format!(
        "{}{}",
        normalise(secret),
        org_check(org_public_key)
    ))
}

/// In groups of four, joined by dashes.
pub fn group(s: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// 10 bytes as 16 base32 characters (5 bits each, most significant first).
fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_carries_its_organisation_and_is_read_back_however_typed() {
        let key = [7u8; 32];
        let c = code("abcd-efgh-jkmn-pqrs", &key);
        assert_eq!(c.len(), 39, "{c}");
        let typed = c.to_lowercase().replace('-', " ");
        let i = Invite::parse(&typed).expect("parses");
        assert_eq!(i.secret, "ABCDEFGHJKMNPQRS");
        assert!(i.matches_key(&key));
        assert!(!i.matches_key(&[8u8; 32]), "another organisation");
        assert!(i.matches_fingerprint(&crate::credential::fingerprint(&key)));
        assert!(!i.matches_fingerprint(&crate::credential::fingerprint(&[8u8; 32])));
        assert!(!i.matches_fingerprint("not hex"));
        let old = Invite::parse("ABCD-EFGH-JKMN-PQRS").expect("an older code");
        assert_eq!(old.org_check, None);
        assert!(Invite::parse("ABCD").is_err());
        assert!(Invite::parse(&"A".repeat(33)).is_err());
        assert!(Invite::parse(&"A".repeat(20)).is_err());
    }
}
