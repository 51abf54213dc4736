//! Targets for the server's validation of untrusted MLS bytes, through
//! `sitrep_server::fuzzing`: KeyPackage uploads, and a group's public state
//! from its creator's GroupInfo through commits, leave proposals and the
//! framing of application messages.

use sitrep_server::fuzzing as ds;

use crate::keys;
use crate::reader::{Reader, Writer};

/// The uploader every `key_package` input is checked for.
pub(crate) const KP_USER: &str = "bob";
/// See [`KP_USER`].
pub(crate) const KP_DEVICE: &str = "bob-d1";
/// The creating (and committing) device of every `group` input.
pub(crate) const CREATOR: &str = "alice-d1";

/// A key that differs from `key` (or is not a key at all if `key` is empty).
fn other_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    match k.first_mut() {
        Some(b) => *b ^= 1,
        None => k.push(0),
    }
    k
}

/// Input: `flags: u8 (bit 0: last resort), signature key: chunk, the
/// KeyPackage (an MLSMessage)`. What is taken for one device, flag and
/// organisation is refused for any other.
pub fn key_package(data: &[u8]) -> bool {
    let mut r = Reader::new(data);
    let last_resort = r.u8() & 1 == 1;
    let key = r.chunk();
    let kp = r.bytes(data.len());
    let org = keys::org_public();
    let take = |kp: &[u8], dev: &str, user: &str, key: &[u8], org: &[u8], lr: bool| {
        ds::key_package(kp, dev, user, key, org, lr)
    };
    let ok = take(kp, KP_DEVICE, KP_USER, key, &org, last_resort);
    if ok {
        assert!(!take(kp, "carol-d1", KP_USER, key, &org, last_resort));
        assert!(!take(kp, KP_DEVICE, "carol", key, &org, last_resort));
        assert!(!take(
            kp,
            KP_DEVICE,
            KP_USER,
            &other_key(key),
            &org,
            last_resort
        ));
        let stranger = keys::stranger_public();
        assert!(!take(kp, KP_DEVICE, KP_USER, key, &stranger, last_resort));
        assert!(
            !take(kp, KP_DEVICE, KP_USER, key, &org, !last_resort),
            "a KeyPackage is taken both as last resort and not"
        );
    }
    ok
}

/// `group` script steps (first byte modulo their number).
pub(crate) mod op {
    /// `commit: chunk, has welcome: u8 (bit 0), welcome: chunk (if any)`.
    pub const COMMIT: u8 = 0;
    /// `proposal: chunk`: a member's proposal to leave.
    pub const LEAVE: u8 = 1;
    /// `epochs back: u8, message: chunk`: the framing of an application
    /// message at the group's epoch minus that.
    pub const APPLICATION: u8 = 2;
    /// How many there are.
    pub const COUNT: u8 = 3;
}

/// Steps per input.
const MAX_OPS: usize = 16;

/// Input: `group id: chunk, creator's signature key: chunk, GroupInfo:
/// chunk`, then steps ([`op`]) applied to the state the server would store.
/// A group starts only for its creator under the organisation's key; an
/// accepted commit moves the epoch on, so the same commit is refused next;
/// what the organisation did not vouch for is never accepted; application
/// framing is accepted only for this group and a recent epoch.
pub fn group(data: &[u8]) -> bool {
    let mut r = Reader::new(data);
    let gid = r.chunk();
    let key = r.chunk();
    let info = r.chunk();
    let org = keys::org_public();
    let Some(mut state) = ds::group_state(gid, info, CREATOR, key, &org) else {
        return false;
    };
    let stranger = keys::stranger_public();
    assert!(ds::group_state(gid, info, CREATOR, key, &stranger).is_none());
    assert!(ds::group_state(gid, info, "mallory-d1", key, &org).is_none());
    assert!(ds::group_state(gid, info, CREATOR, &other_key(key), &org).is_none());
    assert!(ds::group_state(&other_key(gid), info, CREATOR, key, &org).is_none());
    let mut epoch = 0u64;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % op::COUNT {
            op::COMMIT => {
                let commit = r.chunk();
                let welcome = (r.u8() & 1 == 1).then(|| r.chunk());
                let next = ds::commit(&state, gid, commit, welcome, CREATOR, key, &org);
                trace!(
                    "commit ({} bytes): accepted {}",
                    commit.len(),
                    next.is_some()
                );
                assert!(
                    ds::commit(&state, gid, commit, welcome, CREATOR, key, &stranger).is_none()
                );
                if let Some(next) = next {
                    assert!(
                        ds::commit(&next, gid, commit, welcome, CREATOR, key, &org).is_none(),
                        "a commit is accepted twice"
                    );
                    state = next;
                    epoch += 1;
                }
            }
            op::LEAVE => {
                let proposal = r.chunk();
                let next = ds::leave(&state, gid, proposal, CREATOR, key, &org);
                trace!("leave: accepted {}", next.is_some());
                if let Some(next) = next {
                    assert!(ds::leave(&state, gid, proposal, CREATOR, key, &stranger).is_none());
                    state = next;
                }
            }
            _ => {
                let back = u64::from(r.u8());
                let msg = r.chunk();
                let at = epoch.saturating_sub(back);
                let ok = ds::application(msg, gid, at);
                trace!("application at epoch {at}: accepted {ok}");
                if ok {
                    assert!(!ds::application(msg, &other_key(gid), at));
                    assert!(!ds::application(msg, gid, at + 6), "too old to decrypt");
                }
            }
        }
    }
    true
}

/// A `group` input being written by the seed generator.
pub(crate) struct GroupScript(pub(crate) Writer);

impl GroupScript {
    pub(crate) fn new(gid: &[u8], key: &[u8], info: &[u8]) -> Self {
        let mut w = Writer::default();
        w.chunk(gid).chunk(key).chunk(info);
        Self(w)
    }

    pub(crate) fn commit(&mut self, commit: &[u8], welcome: Option<&[u8]>) -> &mut Self {
        self.0.u8(op::COMMIT).chunk(commit);
        match welcome {
            Some(w) => self.0.u8(1).chunk(w),
            None => self.0.u8(0),
        };
        self
    }

    pub(crate) fn leave(&mut self, proposal: &[u8]) -> &mut Self {
        self.0.u8(op::LEAVE).chunk(proposal);
        self
    }

    pub(crate) fn application(&mut self, back: u8, msg: &[u8]) -> &mut Self {
        self.0.u8(op::APPLICATION).u8(back).chunk(msg);
        self
    }
}
