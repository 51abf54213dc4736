//! The organisation's directory for major incidents: roles and teams, who
//! holds each role, who may declare, who commands, and the call-out lists for
//! STANDBY and DECLARED. Signed with the organisation key like the device
//! policy, so every client can check who is authorised without trusting the
//! server's database.

use std::collections::BTreeSet;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::api::valid_id;
use crate::incident::Level;

const CONTEXT: &[u8] = b"sitrep-directory-v1";
/// Bound on an encoded signed directory.
pub const MAX_DIRECTORY_BYTES: usize = 1024 * 1024;

/// One role ("ED consultant", "night medical registrar", "site manager").
///
/// Who may hold it is the organisation's decision, signed with the rest:
/// `eligible` users and members of `eligible_teams`. A holder who is not
/// eligible is ignored by every client (see [`Directory::holders`]), so a
/// server that lists someone as a holder without the admin's say-so makes
/// nobody a commander.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Role {
    /// Role id (`[A-Za-z0-9._-]`).
    pub id: String,
    /// Name people see.
    pub name: String,
    /// Team id (anaesthetics, theatres, icu, ...).
    pub team: String,
    /// User ids holding it now.
    pub holders: Vec<String>,
    /// Role an unacknowledged alert escalates to next.
    #[serde(default)]
    pub deputy: Option<String>,
    /// May raise STANDBY, DECLARED, CANCELLED and STAND DOWN.
    #[serde(default)]
    pub can_declare: bool,
    /// Posts in an incident's command channel.
    #[serde(default)]
    pub commander: bool,
    /// Users who may take the role (set by the admin).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eligible: Vec<String>,
    /// Teams (see [`Directory::teams`]) whose members may take the role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eligible_teams: Vec<String>,
}

/// A team of staff, named by the admin (anaesthetics, theatres, icu, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Team {
    /// Team id (`[A-Za-z0-9._-]`).
    pub id: String,
    /// Its members' user ids.
    pub members: Vec<String>,
}

/// The directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Directory {
    /// Format version (1).
    pub v: u8,
    /// Increases with every change.
    pub serial: u64,
    /// Roles.
    pub roles: Vec<Role>,
    /// Roles called at STANDBY.
    pub callout_standby: Vec<String>,
    /// Roles called at DECLARED.
    pub callout_declared: Vec<String>,
    /// Teams, for role eligibility.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<Team>,
}

/// Why a directory was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectoryError {
    /// Not a directory.
    #[error("malformed directory")]
    Malformed,
    /// Not signed by the organisation key.
    #[error("directory not signed by the organisation key")]
    BadSignature,
    /// Inconsistent content.
    #[error("invalid directory: {0}")]
    Invalid(&'static str),
}

impl Directory {
    /// Ids valid, roles unique, references resolve.
    pub fn validate(&self) -> Result<(), DirectoryError> {
        if self.v != 1 {
            return Err(DirectoryError::Invalid("version"));
        }
        let mut ids = BTreeSet::new();
        for r in &self.roles {
            if !valid_id(&r.id) || !valid_id(&r.team) || r.name.is_empty() || r.name.len() > 64 {
                return Err(DirectoryError::Invalid("role id, team or name"));
            }
            if !ids.insert(r.id.as_str()) {
                return Err(DirectoryError::Invalid("duplicate role"));
            }
            if r.holders.len() > 10_000 || !r.holders.iter().all(|h| valid_id(h)) {
                return Err(DirectoryError::Invalid("role holders"));
            }
            if r.eligible.len() > 10_000
                || r.eligible_teams.len() > 1_000
                || !r
                    .eligible
                    .iter()
                    .chain(&r.eligible_teams)
                    .all(|h| valid_id(h))
            {
                return Err(DirectoryError::Invalid("role eligibility"));
            }
        }
        let mut teams = BTreeSet::new();
        for t in &self.teams {
            if !valid_id(&t.id)
                || !teams.insert(t.id.as_str())
                || t.members.len() > 10_000
                || !t.members.iter().all(|m| valid_id(m))
            {
                return Err(DirectoryError::Invalid("team"));
            }
        }
        for r in &self.roles {
            if r.deputy.as_ref().is_some_and(|d| !ids.contains(d.as_str())) {
                return Err(DirectoryError::Invalid(
                    "the deputy names a role that does not exist (add that role first)",
                ));
            }
        }
        for c in self.callout_standby.iter().chain(&self.callout_declared) {
            if !ids.contains(c.as_str()) {
                return Err(DirectoryError::Invalid("call-out list names no role"));
            }
        }
        Ok(())
    }

    /// A role by id.
    pub fn role(&self, id: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.id == id)
    }

    /// Whether `user` may hold `role`: named eligible, or a member of an
    /// eligible team.
    pub fn may_hold(&self, role: &Role, user: &str) -> bool {
        role.eligible.iter().any(|u| u == user)
            || role.eligible_teams.iter().any(|t| {
                self.teams
                    .iter()
                    .any(|team| team.id == *t && team.members.iter().any(|m| m == user))
            })
    }

    /// The holders of `role` that count: those eligible for it. Every
    /// question about who holds a role goes through here.
    pub fn holders<'a>(&'a self, role: &'a Role) -> impl Iterator<Item = &'a String> + 'a {
        role.holders.iter().filter(move |h| self.may_hold(role, h))
    }

    /// Holders (that count) of the role with id `role`.
    pub fn holders_of(&self, role: &str) -> Vec<String> {
        self.role(role)
            .map(|r| self.holders(r).cloned().collect())
            .unwrap_or_default()
    }

    /// Roles a user holds (and is eligible for).
    pub fn roles_of<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a Role> + 'a {
        self.roles
            .iter()
            .filter(move |r| r.holders.iter().any(|h| h == user) && self.may_hold(r, user))
    }

    /// Whether `user` may raise incident levels.
    pub fn can_declare(&self, user: &str) -> bool {
        self.roles_of(user).any(|r| r.can_declare)
    }

    /// Users who command (post in command channels).
    pub fn commanders(&self) -> BTreeSet<String> {
        self.roles
            .iter()
            .filter(|r| r.commander || r.can_declare)
            .flat_map(|r| self.holders(r).cloned())
            .collect()
    }

    /// Holders of the roles on the call-out list for `level`, with the role
    /// each is called for (a person in two roles is called once, for the first).
    pub fn callout(&self, level: Level) -> Vec<(String, String)> {
        let list = match level {
            Level::Standby => &self.callout_standby,
            _ => &self.callout_declared,
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for rid in list {
            if let Some(r) = self.role(rid) {
                for h in self.holders(r) {
                    if seen.insert(h.clone()) {
                        out.push((h.clone(), r.id.clone()));
                    }
                }
            }
        }
        out
    }

    /// Users in a team.
    pub fn team(&self, team: &str) -> BTreeSet<String> {
        self.roles
            .iter()
            .filter(|r| r.team == team)
            .flat_map(|r| self.holders(r).cloned())
            .collect()
    }
}

/// A directory and the organisation's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDirectory {
    /// CBOR of [`Directory`].
    pub directory: ByteBuf,
    /// Ed25519 over `CONTEXT || directory`.
    pub signature: ByteBuf,
}

impl SignedDirectory {
    /// Sign a valid directory.
    pub fn sign(d: &Directory, key: &SigningKey) -> Result<Vec<u8>, DirectoryError> {
        d.validate()?;
        let mut bytes = Vec::new();
        ciborium::into_writer(d, &mut bytes).map_err(|_| DirectoryError::Malformed)?;
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(&bytes);
        let sd = Self {
            directory: ByteBuf::from(bytes),
            signature: ByteBuf::from(key.sign(&msg).to_bytes().to_vec()),
        };
        let mut out = Vec::new();
        ciborium::into_writer(&sd, &mut out).map_err(|_| DirectoryError::Malformed)?;
        Ok(out)
    }

    /// Decode untrusted bytes and verify them.
    pub fn verify(bytes: &[u8], org_public_key: &[u8]) -> Result<Directory, DirectoryError> {
        if bytes.len() > MAX_DIRECTORY_BYTES {
            return Err(DirectoryError::Malformed);
        }
        let sd: Self = ciborium::from_reader(bytes).map_err(|_| DirectoryError::Malformed)?;
        let key: [u8; 32] = org_public_key
            .try_into()
            .map_err(|_| DirectoryError::BadSignature)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| DirectoryError::BadSignature)?;
        let sig: [u8; 64] = sd
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| DirectoryError::BadSignature)?;
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(&sd.directory);
        key.verify_strict(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| DirectoryError::BadSignature)?;
        let d: Directory = ciborium::from_reader(sd.directory.as_slice())
            .map_err(|_| DirectoryError::Malformed)?;
        d.validate()?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Directory {
        Directory {
            v: 1,
            serial: 2,
            roles: vec![
                Role {
                    id: "ed-consultant".into(),
                    name: "ED consultant in charge".into(),
                    team: "ed".into(),
                    holders: vec!["alice".into()],
                    deputy: Some("site-manager".into()),
                    can_declare: true,
                    commander: true,
                    eligible: vec!["alice".into()],
                    ..Role::default()
                },
                Role {
                    id: "site-manager".into(),
                    name: "Site manager".into(),
                    team: "management".into(),
                    holders: vec!["bob".into()],
                    deputy: None,
                    can_declare: false,
                    commander: true,
                    eligible_teams: vec!["management".into()],
                    ..Role::default()
                },
                Role {
                    id: "anaesthetist".into(),
                    name: "Anaesthetist".into(),
                    team: "anaesthetics".into(),
                    holders: vec!["carol".into(), "dave".into()],
                    deputy: None,
                    can_declare: false,
                    commander: false,
                    eligible: vec!["carol".into(), "dave".into()],
                    ..Role::default()
                },
            ],
            callout_standby: vec!["site-manager".into()],
            callout_declared: vec!["site-manager".into(), "anaesthetist".into()],
            teams: vec![Team {
                id: "management".into(),
                members: vec!["bob".into()],
            }],
        }
    }

    #[test]
    fn signed_directory_verifies_and_forged_does_not() {
        let org = SigningKey::from_bytes(&[1u8; 32]);
        let other = SigningKey::from_bytes(&[2u8; 32]);
        let d = sample();
        let b = SignedDirectory::sign(&d, &org).expect("sign");
        assert_eq!(
            SignedDirectory::verify(&b, &org.verifying_key().to_bytes()),
            Ok(d.clone())
        );
        let f = SignedDirectory::sign(&d, &other).expect("sign");
        assert_eq!(
            SignedDirectory::verify(&f, &org.verifying_key().to_bytes()),
            Err(DirectoryError::BadSignature)
        );
        assert!(d.can_declare("alice") && !d.can_declare("bob"));
        assert_eq!(
            d.callout(Level::Declared),
            vec![
                ("bob".to_string(), "site-manager".to_string()),
                ("carol".into(), "anaesthetist".into()),
                ("dave".into(), "anaesthetist".into())
            ]
        );
        let mut bad = d;
        bad.callout_standby.push("nobody".into());
        assert!(bad.validate().is_err());
    }

    /// A holder the admin did not make eligible counts for nothing: not a
    /// declarer, not a commander, not called out.
    #[test]
    fn ineligible_holders_are_ignored() {
        let mut d = sample();
        d.roles[0].holders.push("mallory".into());
        d.roles[1].holders.push("mallory".into());
        d.roles[2].holders.push("mallory".into());
        assert!(!d.can_declare("mallory"));
        assert!(!d.commanders().contains("mallory"));
        assert!(
            d.callout(Level::Declared)
                .iter()
                .all(|(u, _)| u != "mallory")
        );
        assert!(!d.team("ed").contains("mallory"));
        assert_eq!(d.holders_of("site-manager"), vec!["bob".to_string()]);
        // Eligible through a team.
        d.teams[0].members.push("mallory".into());
        assert!(d.commanders().contains("mallory"));
        assert!(!d.can_declare("mallory"));
    }
}
