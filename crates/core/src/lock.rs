//! The app lock. A profile starts locked; the passcode unlocks it; idle time
//! past the organisation's policy locks it again (the store key is zeroised and
//! the client with its MLS state is dropped); too many wrong passcodes in a row
//! destroy the local data. Time is passed in, never read.

use crate::store::ProfileStore;
use crate::vault::{KdfParams, Vault};
use crate::{Client, Error};

/// Why an unlock failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnlockError {
    /// Wrong passcode; `remaining` tries before the local data is wiped.
    #[error("wrong passcode ({remaining} tries left before this device's data is wiped)")]
    WrongPasscode {
        /// Tries left.
        remaining: u32,
    },
    /// Too many wrong passcodes: the local data was destroyed.
    #[error("too many wrong passcodes: this device's Sitrep data was wiped")]
    Wiped,
    /// The policy requires a TOTP code and none (or a wrong one) was given.
    #[error(
        "two-step verification: enter the code from your authenticator app (at a prompt, or in SITREP_TOTP; {remaining} tries left)"
    )]
    TwoStepRequired {
        /// Tries left before the local data is wiped.
        remaining: u32,
    },
    /// No profile on this device.
    #[error("no profile on this device")]
    NoProfile,
    /// Anything else.
    #[error(transparent)]
    Other(#[from] Error),
}

/// The session is locked (or was locked by idle time): unlock again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("locked: enter the passcode")]
pub struct Locked;

struct Unlocked {
    vault: Vault,
    client: Client,
    last_active_ms: u64,
}

/// A profile behind the app lock.
pub struct Session<S: ProfileStore> {
    store: S,
    unlocked: Option<Unlocked>,
}

impl<S: ProfileStore> Session<S> {
    /// A locked session over a store.
    pub fn new(store: S) -> Self {
        Self {
            store,
            unlocked: None,
        }
    }

    /// Seal a freshly enrolled client into an empty store; the session stays
    /// unlocked. The passcode must meet the policy's minimum length.
    pub fn create(store: S, client: Client, passcode: &str, now_ms: u64) -> Result<Self, Error> {
        let policy = client.policy();
        if passcode.chars().count() < policy.min_passcode_len as usize {
            return Err(Error::Invalid(format!(
                "the passcode must be at least {} characters",
                policy.min_passcode_len
            )));
        }
        let (m_kib, t, p) = policy.argon2;
        let vault = Vault::create(passcode, KdfParams { m_kib, t, p }, client.random::<16>())?;
        store.set_unlock_failures(0, policy.max_failed_unlocks as u32)?;
        let mut s = Self {
            store,
            unlocked: Some(Unlocked {
                vault,
                client,
                last_active_ms: now_ms,
            }),
        };
        s.save()?;
        Ok(s)
    }

    /// Whether the session is locked at `now_ms` (locking it if idle too
    /// long). Asking is not activity.
    pub fn is_locked(&mut self, now_ms: u64) -> bool {
        self.background(now_ms).is_err()
    }

    /// Unlock with the passcode. Each wrong one is counted outside the sealed
    /// data; at the policy's limit the local data is destroyed.
    pub fn unlock(&mut self, passcode: &str, now_ms: u64) -> Result<(), UnlockError> {
        self.unlock_with_code(passcode, None, now_ms)
    }

    /// Unlock with the passcode and, where the policy requires two-step
    /// verification, the current TOTP code. A missing or wrong code counts as
    /// a failed unlock.
    pub fn unlock_with_code(
        &mut self,
        passcode: &str,
        code: Option<&str>,
        now_ms: u64,
    ) -> Result<(), UnlockError> {
        let (failures, limit) = self.store.unlock_failures()?;
        let opened = match self.store.load()? {
            Some(records) => {
                // The passcode is right if the key it gives names a record
                // that is there (ids are keyed): one derivation, and a
                // damaged record is never taken for a wrong passcode.
                let vault = Vault::for_records(passcode, &records[0].1)?;
                let state_id = vault.record_id(crate::persist::STATE_NAME);
                if records.iter().any(|(id, _)| *id == state_id) {
                    // Left over from a migration cut short.
                    self.store.remove_legacy()?;
                    let client = Client::from_records(&vault, &records).map_err(|e| match e {
                        Error::WrongPasscode => Error::BadStore(
                            "records sealed under different keys: the store is damaged",
                        ),
                        e => e,
                    })?;
                    Ok((vault, client, false))
                } else {
                    Err(Error::WrongPasscode)
                }
            }
            None => {
                let legacy = self.store.load_legacy()?.ok_or(UnlockError::NoProfile)?;
                Vault::open(passcode, &legacy)
                    .and_then(|(vault, plain)| Client::from_bytes(&plain).map(|c| (vault, c, true)))
            }
        };
        match opened {
            Ok((vault, client, migrated)) => {
                let limit = client.policy().max_failed_unlocks as u32;
                if client.policy().two_step_required
                    && !code.is_some_and(|c| client.check_totp(c, now_ms / 1000))
                {
                    // A wrong code counts; merely not having offered one yet does not.
                    let failures = failures + u32::from(code.is_some());
                    if failures >= limit {
                        self.wipe()?;
                        return Err(UnlockError::Wiped);
                    }
                    self.store.set_unlock_failures(failures, limit)?;
                    return Err(UnlockError::TwoStepRequired {
                        remaining: limit - failures,
                    });
                }
                self.store.set_unlock_failures(0, limit)?;
                // The organisation raised (or changed) the Argon2id cost: derive a
                // new store key while the passcode is at hand, and re-seal.
                let (m_kib, t, p) = client.policy().argon2;
                let wanted = KdfParams { m_kib, t, p };
                let resealed = vault.params() != wanted;
                let vault = if resealed {
                    Vault::create(passcode, wanted, client.random::<16>())?
                } else {
                    vault
                };
                let mut client = client;
                if resealed {
                    client.persist_unknown();
                }
                self.unlocked = Some(Unlocked {
                    vault,
                    client,
                    last_active_ms: now_ms,
                });
                if resealed || migrated {
                    self.save()?;
                }
                if migrated {
                    self.store.remove_legacy()?;
                }
                Ok(())
            }
            Err(Error::WrongPasscode) => {
                let failures = failures + 1;
                if failures >= limit {
                    self.wipe()?;
                    return Err(UnlockError::Wiped);
                }
                self.store.set_unlock_failures(failures, limit)?;
                Err(UnlockError::WrongPasscode {
                    remaining: limit - failures,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The unlocked client, marking activity; locks and refuses after the
    /// policy's idle time.
    pub fn client(&mut self, now_ms: u64) -> Result<&mut Client, Locked> {
        let idle_ms = match &self.unlocked {
            None => return Err(Locked),
            Some(u) => u.client.policy().lock_after_idle_secs as u64 * 1000,
        };
        if self
            .unlocked
            .as_ref()
            .is_some_and(|u| now_ms.saturating_sub(u.last_active_ms) > idle_ms)
        {
            self.lock();
            return Err(Locked);
        }
        let u = self.unlocked.as_mut().ok_or(Locked)?;
        u.last_active_ms = now_ms;
        Ok(&mut u.client)
    }

    /// The unlocked client for work the user did not ask for at `now_ms`
    /// (a sync on a push, a timer): locks and refuses after the policy's
    /// idle time like [`Session::client`], but does not restart it.
    pub fn background(&mut self, now_ms: u64) -> Result<&mut Client, Locked> {
        let idle = self.unlocked.as_ref().map(|u| {
            (
                now_ms.saturating_sub(u.last_active_ms),
                u64::from(u.client.policy().lock_after_idle_secs) * 1000,
            )
        });
        match idle {
            None => Err(Locked),
            Some((idle, limit)) if idle > limit => {
                self.lock();
                Err(Locked)
            }
            Some(_) => self.unlocked.as_mut().map(|u| &mut u.client).ok_or(Locked),
        }
    }

    /// Lock now: the store key is zeroised and the client dropped.
    pub fn lock(&mut self) {
        self.unlocked = None;
    }

    /// Seal the current state into the store (when unlocked).
    pub fn save(&mut self) -> Result<(), Error> {
        let Some(u) = &mut self.unlocked else {
            return Err(Error::Invalid("locked".into()));
        };
        let changes = u.client.changes(&u.vault);
        if let Err(e) = self.store.write(&changes) {
            u.client.persist_unknown();
            return Err(e);
        }
        Ok(())
    }

    /// Destroy the local data (remote wipe, too many wrong passcodes).
    pub fn wipe(&mut self) -> Result<(), Error> {
        self.unlocked = None;
        self.store.destroy()?;
        self.store.set_unlock_failures(0, 0)?;
        Ok(())
    }

    /// The unlocked store key and client, for a one-shot front end (the CLI)
    /// that holds them for a single command.
    pub fn into_parts(self) -> Option<(Vault, Client, S)> {
        let store = self.store;
        self.unlocked.map(|u| (u.vault, u.client, store))
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }
}
