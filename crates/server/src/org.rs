//! The organisation: its Ed25519 signing key (in the data directory, mode 0600)
//! and its enrolment invitations.

use std::io::Write as _;
use std::path::Path;

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroize as _;

use crate::ServeError;

const KEY_FILE: &str = "org.key";
const NAME_FILE: &str = "org.name";

/// The organisation this server vouches for.
pub struct Org {
    /// Display name.
    pub name: String,
    /// Signs device credentials.
    pub key: SigningKey,
}

/// Create `dir` (and parents) if needed and make it owner-only (0700): it
/// holds the organisation key and every device's ciphertext.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl Org {
    /// Load the organisation from `dir`; an error naming `sitrep init` if
    /// there is none (nothing is created).
    pub fn open(dir: &Path) -> Result<Self, ServeError> {
        if !dir.join(KEY_FILE).exists() {
            return Err(ServeError::NotInitialised(dir.display().to_string()));
        }
        Ok(Self::open_or_create(dir, None)?.0)
    }

    /// Create the organisation `name` in `dir` (made 0700 if new); refused
    /// if `dir` holds one already.
    pub fn create(dir: &Path, name: &str) -> Result<Self, ServeError> {
        if dir.join(KEY_FILE).exists() {
            let existing = Self::open(dir)?;
            return Err(ServeError::AlreadyInitialised(
                dir.display().to_string(),
                existing.name,
            ));
        }
        Ok(Self::open_or_create(dir, Some(name))?.0)
    }

    /// Load the organisation from `dir`, creating it (and the directory) if
    /// there is none (for `sitrep serve --init`, the drill and tests).
    /// Returns whether it was created.
    pub fn open_or_create(dir: &Path, name: Option<&str>) -> Result<(Self, bool), ServeError> {
        private_dir(dir)?;
        let key_path = dir.join(KEY_FILE);
        let name_path = dir.join(NAME_FILE);
        match std::fs::read(&key_path) {
            Ok(mut bytes) => {
                let seed: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| ServeError::Io(format!("{} is damaged", key_path.display())))?;
                bytes.zeroize();
                let name = std::fs::read_to_string(&name_path)
                    .unwrap_or_else(|_| "Sitrep Organisation".into())
                    .trim()
                    .to_string();
                Ok((
                    Self {
                        name,
                        key: SigningKey::from_bytes(&seed),
                    },
                    false,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed = crate::random::<32>();
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(&key_path)?;
                f.write_all(&seed)?;
                f.sync_all()?;
                let name = name.unwrap_or("Sitrep Organisation").to_string();
                std::fs::write(&name_path, &name)?;
                Ok((
                    Self {
                        name,
                        key: SigningKey::from_bytes(&seed),
                    },
                    true,
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Public key bytes.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Fingerprint for people to compare.
    pub fn fingerprint(&self) -> String {
        sitrep_wire::credential::fingerprint(&self.public_key())
    }
}

/// Crockford base32 without I, L, O, U: easy to read out over a phone.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The secret of a new enrolment code: 16 characters (80 bits) in groups of
/// four; the code given out adds the organisation check ([`sitrep_wire::invite`]).
pub fn new_code() -> String {
    let bytes = crate::random::<16>();
    let chars: Vec<u8> = bytes.iter().map(|b| ALPHABET[(b & 31) as usize]).collect();
    chars
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// What the store keeps of a code: its hash, after normalising case and dashes.
/// A code with its organisation check counts by its secret part alone
/// ([`sitrep_wire::invite`]).
pub fn code_hash(code: &str) -> Vec<u8> {
    let mut norm: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let full = sitrep_wire::invite::SECRET_CHARS + sitrep_wire::invite::CHECK_CHARS;
    if norm.len() == full {
        norm.truncate(sitrep_wire::invite::SECRET_CHARS);
    }
    Sha256::digest(norm.as_bytes()).to_vec()
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_long_and_normalise() {
        let c = new_code();
        assert_eq!(c.len(), 19);
        assert_eq!(code_hash(&c), code_hash(&c.to_lowercase().replace('-', "")));
        assert_ne!(code_hash(&c), code_hash(&new_code()));
    }
}
