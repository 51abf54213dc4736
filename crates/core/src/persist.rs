//! The sealed store as records: what a client writes is what changed, not
//! the whole profile.
//!
//! A profile is a set of records, each sealed on its own with AES-256-GCM
//! under the passcode-derived key ([`Vault::seal_record`]) and kept under an
//! opaque id (a keyed hash of its name):
//!
//! - `state`: the device, conversations' metadata, outbox, incidents and
//!   alerts (everything but MLS storage and history);
//! - `m/<key>`: one openmls storage value each;
//! - `h/<group>/<page>`: a conversation's history, [`PAGE`] entries a page,
//!   numbered from the conversation's first entry ever, so an append writes
//!   only the last page and retention deletes whole pages from the front.
//!
//! [`Client::changes`] compares what is in memory with what was last
//! handed out and returns the records to put and the ids to delete, for the
//! driver to write in one transaction (a backend may be asynchronous, as
//! IndexedDB is). The core never touches the store itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::state::{HistoryEntry, State};
use crate::vault::{RecordId, Vault};
use crate::{Client, Error};

/// One record as the store keeps it: its id and its sealed bytes.
pub type Sealed = (RecordId, Vec<u8>);

/// History entries per sealed page.
pub const PAGE: u64 = 64;

const STATE: &[u8] = b"state";
/// The name of the record that holds the state (and the manifest).
pub const STATE_NAME: &[u8] = STATE;
const MLS: &[u8] = b"m/";
const HIST: &[u8] = b"h/";

/// What a driver must write, in one transaction, before it sends anything
/// that depends on it.
#[derive(Debug, Default)]
pub struct Changes {
    /// Records to insert or replace.
    pub put: Vec<Sealed>,
    /// Records to delete.
    pub delete: Vec<RecordId>,
    /// Delete every other record first (a new store, or a new key).
    pub clear: bool,
    /// Key material or messages were deleted: the backend should make the
    /// freed space unreadable now (SQLite: checkpoint and truncate its log).
    pub erase: bool,
}

impl Changes {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty() && !self.clear
    }

    /// Sealed bytes in this batch.
    pub fn bytes(&self) -> usize {
        self.put.iter().map(|(_, b)| b.len()).sum()
    }
}

/// One page of a conversation's history as sealed.
#[derive(Serialize, Deserialize)]
struct Page {
    /// The place of `entries[0]` in the conversation.
    first: u64,
    entries: Vec<HistoryEntry>,
}

/// Which history pages of a conversation were last handed out: those of
/// places `base..end` (always a run of pages), and any stray ones found at
/// load, to delete.
#[derive(Debug, Default, Clone)]
struct Pages {
    base: u64,
    end: u64,
    stray: Vec<u64>,
}

/// The pages that hold places `base..end`, first and last.
fn page_span(base: u64, end: u64) -> Option<(u64, u64)> {
    (end > base).then(|| (base / PAGE, (end - 1) / PAGE))
}

impl Pages {
    /// Every page held.
    fn all(&self) -> Vec<u64> {
        let mut v: Vec<u64> = page_span(self.base, self.end)
            .map(|(a, b)| (a..=b).collect())
            .unwrap_or_default();
        v.extend(&self.stray);
        v
    }
}

/// What the store holds, as far as this client knows (what [`Client::changes`]
/// last returned, or what was loaded).
#[derive(Default)]
pub(crate) struct Persisted {
    /// False until a full write or a load: the next write is then complete.
    known: bool,
    state: Zeroizing<Vec<u8>>,
    mls: HashMap<Vec<u8>, Zeroizing<Vec<u8>>>,
    history: HashMap<String, Pages>,
    /// The nonce of every record but `state`, by id: what the manifest in
    /// `state` is a digest of.
    manifest: Manifest,
    /// Epochs entered and past-epoch keys deleted, summed over the
    /// conversations: when it moves, key material was dropped.
    keys: u64,
}

const NONCE: usize = 12;
/// Where a sealed record's nonce is (after the vault header).
const NONCE_AT: usize = 36;

fn nonce_of(sealed: &[u8]) -> [u8; NONCE] {
    let mut n = [0u8; NONCE];
    if let Some(s) = sealed.get(NONCE_AT..NONCE_AT + NONCE) {
        n.copy_from_slice(s);
    }
    n
}

/// The digest of the set of records (every one but `state`, by id and
/// nonce), sealed in `state`: a record deleted, added, or put back from an
/// earlier write no longer matches it. A two-level hash: records fall in
/// 256 buckets by the first byte of their id, so a write that touches a
/// few records rehashes a few buckets, however long the history.
#[derive(Default)]
struct Manifest {
    nonces: BTreeMap<RecordId, [u8; NONCE]>,
    buckets: Vec<[u8; 32]>,
    dirty: BTreeSet<u8>,
}

impl Manifest {
    fn from_nonces(nonces: BTreeMap<RecordId, [u8; NONCE]>) -> Self {
        let mut m = Self {
            nonces,
            buckets: Vec::new(),
            dirty: (0..=255).collect(),
        };
        m.digest();
        m
    }

    fn insert(&mut self, id: RecordId, nonce: [u8; NONCE]) {
        self.nonces.insert(id, nonce);
        self.dirty.insert(id[0]);
    }

    fn remove(&mut self, id: &RecordId) {
        self.nonces.remove(id);
        self.dirty.insert(id[0]);
    }

    fn digest(&mut self) -> [u8; 32] {
        use sha2::Digest as _;
        if self.buckets.len() != 256 {
            self.buckets = vec![[0u8; 32]; 256];
            self.dirty = (0..=255).collect();
        }
        for b in std::mem::take(&mut self.dirty) {
            let mut h = sha2::Sha256::new();
            h.update(b"sitrep records bucket v1");
            let lo = {
                let mut id = [0u8; crate::vault::RECORD_ID_LEN];
                id[0] = b;
                id
            };
            for (id, n) in self.nonces.range(lo..) {
                if id[0] != b {
                    break;
                }
                h.update(id);
                h.update(n);
            }
            self.buckets[b as usize] = h.finalize().into();
        }
        let mut h = sha2::Sha256::new();
        h.update(b"sitrep records manifest v1");
        for d in &self.buckets {
            h.update(d);
        }
        h.finalize().into()
    }
}

fn name_of(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut n = Vec::with_capacity(prefix.len() + rest.len());
    n.extend_from_slice(prefix);
    n.extend_from_slice(rest);
    n
}

fn page_name(group_hex: &str, page: u64) -> Vec<u8> {
    name_of(HIST, format!("{group_hex}/{page}").as_bytes())
}

/// Record plaintext: `name length (u16, big-endian) | name | value`.
fn frame(name: &[u8], value: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(2 + name.len() + value.len()));
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out
}

fn unframe(plain: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    if plain.len() < 2 {
        return Err(Error::BadStore("record too short"));
    }
    let n = u16::from_be_bytes([plain[0], plain[1]]) as usize;
    if plain.len() < 2 + n {
        return Err(Error::BadStore("record name overruns"));
    }
    Ok((&plain[2..2 + n], &plain[2 + n..]))
}

fn cbor<T: Serialize>(v: &T) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::new());
    ciborium::into_writer(v, &mut *out).expect("writing CBOR to a Vec cannot fail");
    out
}

impl Client {
    fn seal_one(&self, vault: &Vault, name: &[u8], value: &[u8]) -> (RecordId, Vec<u8>) {
        let id = vault.record_id(name);
        let sealed = vault.seal_record(&id, &frame(name, value), self.random::<12>());
        (id, sealed)
    }

    /// The `state` record's plaintext: the state without MLS storage or
    /// history.
    fn state_bytes(&mut self) -> Zeroizing<Vec<u8>> {
        let mut taken: Vec<(String, Vec<HistoryEntry>)> =
            Vec::with_capacity(self.state.conversations.len());
        for (hex, c) in self.state.conversations.iter_mut() {
            taken.push((hex.clone(), std::mem::take(&mut c.history)));
        }
        let out = cbor(&self.state);
        for (hex, h) in taken {
            if let Some(c) = self.state.conversations.get_mut(&hex) {
                c.history = h;
            }
        }
        out
    }

    /// Forget what the store holds: the next [`Client::changes`] writes
    /// everything (after a failed write, or for a new key).
    pub fn persist_unknown(&mut self) {
        self.persisted = Persisted::default();
    }

    /// The records that changed since the last call (all of them, with
    /// `clear`, the first time or after [`Client::persist_unknown`]), sealed
    /// under `vault`. The caller writes them in one transaction; if that
    /// fails it calls [`Client::persist_unknown`].
    pub fn changes(&mut self, vault: &Vault) -> Changes {
        let mut ch = Changes {
            clear: !self.persisted.known,
            ..Changes::default()
        };
        if ch.clear {
            self.persisted = Persisted {
                known: true,
                ..Persisted::default()
            };
        }
        // MLS storage, value by value.
        let mut mls_puts = Vec::new();
        let mut seen = BTreeSet::new();
        self.provider.with_values(|values| {
            for (k, v) in values {
                seen.insert(k.clone());
                if self.persisted.mls.get(k).is_none_or(|old| old[..] != v[..]) {
                    mls_puts.push((k.clone(), v.clone()));
                }
            }
        });
        for (k, v) in mls_puts {
            ch.put.push(self.seal_one(vault, &name_of(MLS, &k), &v));
            self.persisted.mls.insert(k, Zeroizing::new(v));
        }
        let gone: Vec<Vec<u8>> = self
            .persisted
            .mls
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            ch.delete.push(vault.record_id(&name_of(MLS, &k)));
            self.persisted.mls.remove(&k);
            ch.erase = true;
        }
        // History pages.
        let hexes: Vec<String> = self.state.conversations.keys().cloned().collect();
        for hex in &hexes {
            let (puts, dels, erase) = self.history_changes(vault, hex);
            ch.erase |= erase || !dels.is_empty();
            ch.put.extend(puts);
            ch.delete.extend(dels);
        }
        let dropped: Vec<String> = self
            .persisted
            .history
            .keys()
            .filter(|h| !self.state.conversations.contains_key(*h))
            .cloned()
            .collect();
        for hex in dropped {
            if let Some(p) = self.persisted.history.remove(&hex) {
                for page in p.all() {
                    ch.delete.push(vault.record_id(&page_name(&hex, page)));
                }
                ch.erase = true;
            }
        }
        // A new epoch, or past-epoch keys deleted: the old values of the MLS
        // records that held them must leave the files too.
        let keys = self.key_fingerprint();
        if keys != self.persisted.keys {
            ch.erase = true;
            self.persisted.keys = keys;
        }
        // The manifest of every other record, then the state with it.
        for id in &ch.delete {
            self.persisted.manifest.remove(id);
        }
        for (id, sealed) in &ch.put {
            self.persisted.manifest.insert(*id, nonce_of(sealed));
        }
        let mut state = Zeroizing::new(self.persisted.manifest.digest().to_vec());
        state.extend_from_slice(&self.state_bytes());
        if ch.clear || state[..] != self.persisted.state[..] {
            ch.put.push(self.seal_one(vault, STATE, &state));
            self.persisted.state = state;
        }
        ch
    }

    fn key_fingerprint(&self) -> u64 {
        self.state
            .conversations
            .values()
            .map(|c| {
                c.keys_deleted_through
                    .wrapping_add(c.epoch_starts.last().map_or(0, |e| e.0))
            })
            .fold(0u64, u64::wrapping_add)
    }

    fn history_changes(&mut self, vault: &Vault, hex: &str) -> (Vec<Sealed>, Vec<RecordId>, bool) {
        let prev = self.persisted.history.remove(hex).unwrap_or_default();
        let Some(conv) = self.state.conversations.get_mut(hex) else {
            return (Vec::new(), Vec::new(), false);
        };
        let base = conv.history_base;
        let end = base + conv.history.len() as u64;
        let mut from = prev.end.min(end);
        // Anything but appends may have removed a message: erase it.
        let erase = conv.dirty_from.is_some() || base != prev.base || end < prev.end;
        if let Some(d) = conv.dirty_from.take() {
            from = from.min(d);
        }
        if end < prev.end && end > base {
            from = from.min(end - 1);
        }
        let from = from.max(base);
        let span = page_span(base, end);
        let mut write = BTreeSet::new();
        if let Some((first, last)) = span {
            if from < end {
                write.extend(from / PAGE..=last);
            }
            // Entries dropped from the front: the new first page is shorter.
            if base != prev.base {
                write.insert(first);
            }
        }
        let mut puts = Vec::new();
        for p in write {
            let lo = (p * PAGE).max(base);
            let hi = ((p + 1) * PAGE).min(end);
            let page = Page {
                first: lo,
                entries: conv.history[(lo - base) as usize..(hi - base) as usize].to_vec(),
            };
            puts.push((p, cbor(&page)));
        }
        let held = |p: u64| span.is_some_and(|(a, b)| (a..=b).contains(&p));
        let mut dels: Vec<RecordId> = prev
            .stray
            .iter()
            .copied()
            .filter(|p| !held(*p))
            .map(|p| vault.record_id(&page_name(hex, p)))
            .collect();
        if let Some((a, b)) = page_span(prev.base, prev.end) {
            // Only the ends of the old run can fall outside the new one.
            let below = span.map_or(b, |(f, _)| f.saturating_sub(1).min(b));
            let above = span.map_or(a, |(_, l)| (l + 1).max(a));
            if span.is_none_or(|(f, _)| f > a) {
                dels.extend((a..=below).map(|p| vault.record_id(&page_name(hex, p))));
            }
            if span.is_some_and(|(_, l)| l < b) {
                dels.extend((above..=b).map(|p| vault.record_id(&page_name(hex, p))));
            }
        }
        let puts = puts
            .into_iter()
            .map(|(p, bytes)| self.seal_one(vault, &page_name(hex, p), &bytes))
            .collect();
        self.persisted.history.insert(
            hex.to_string(),
            Pages {
                base,
                end,
                stray: Vec::new(),
            },
        );
        (puts, dels, erase)
    }

    /// Restore a client from its sealed records. Every record must open
    /// under `vault` at its own id; the history pages must fit together.
    pub fn from_records(vault: &Vault, records: &[Sealed]) -> Result<Client, Error> {
        let mut state: Option<Zeroizing<Vec<u8>>> = None;
        let mut mls: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut pages: BTreeMap<String, BTreeMap<u64, Page>> = BTreeMap::new();
        let mut nonces = BTreeMap::new();
        for (id, sealed) in records {
            let plain = vault.unseal_record(id, sealed)?;
            let (name, value) = unframe(&plain)?;
            if vault.record_id(name) != *id {
                return Err(Error::BadStore("a record is under another record's id"));
            }
            if name == STATE {
                state = Some(Zeroizing::new(value.to_vec()));
                continue;
            }
            nonces.insert(*id, nonce_of(sealed));
            if let Some(k) = name.strip_prefix(MLS) {
                mls.push((k.to_vec(), value.to_vec()));
            } else if let Some(rest) = name.strip_prefix(HIST) {
                let rest =
                    std::str::from_utf8(rest).map_err(|_| Error::BadStore("history page name"))?;
                let (hex, n) = rest
                    .rsplit_once('/')
                    .ok_or(Error::BadStore("history page name"))?;
                let n: u64 = n
                    .parse()
                    .map_err(|_| Error::BadStore("history page name"))?;
                let page: Page = ciborium::from_reader(value)
                    .map_err(|_| Error::BadStore("history page does not decode"))?;
                pages.entry(hex.to_string()).or_default().insert(n, page);
            } else {
                return Err(Error::BadStore("unknown record"));
            }
        }
        let state_bytes = state.ok_or(Error::BadStore("no state record"))?;
        let mut manifest = Manifest::from_nonces(nonces);
        if state_bytes.len() < 32 || state_bytes[..32] != manifest.digest() {
            return Err(Error::BadStore(
                "the store's records do not belong together (one was removed, added or put back from an earlier copy)",
            ));
        }
        let mut st: State = ciborium::from_reader(&state_bytes[32..])
            .map_err(|_| Error::BadStore("state does not decode"))?;
        let mut loaded: HashMap<String, Pages> = HashMap::new();
        for (hex, conv) in st.conversations.iter_mut() {
            let mut expect = conv.history_base;
            if let Some(ps) = pages.remove(hex) {
                for (n, p) in ps {
                    if p.first != expect || n != p.first / PAGE || p.entries.is_empty() {
                        return Err(Error::BadStore("history pages do not fit together"));
                    }
                    expect += p.entries.len() as u64;
                    if expect > (n + 1) * PAGE {
                        return Err(Error::BadStore("history page overruns"));
                    }
                    conv.history.extend(p.entries);
                }
            }
            loaded.insert(
                hex.clone(),
                Pages {
                    base: conv.history_base,
                    end: expect,
                    stray: Vec::new(),
                },
            );
        }
        // Pages of a conversation the state no longer knows are deleted by
        // the next write.
        for (hex, ps) in pages {
            loaded.insert(
                hex,
                Pages {
                    base: 0,
                    end: 0,
                    stray: ps.into_keys().collect(),
                },
            );
        }
        let mut client = Client::from_parts(st, mls)?;
        let keys = client.key_fingerprint();
        client.persisted = Persisted {
            known: true,
            manifest,
            keys,
            state: state_bytes,
            mls: client
                .provider
                .values()
                .into_iter()
                .map(|(k, v)| (k, Zeroizing::new(v)))
                .collect(),
            history: loaded,
        };
        // The state as sealed may differ from the state as re-encoded (older
        // fields); write it again on the next change only.
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::KdfParams;

    const FAST: KdfParams = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };

    fn entry(i: u64) -> HistoryEntry {
        HistoryEntry {
            id: format!("{i:032x}"),
            sender: "alice".into(),
            sender_device: "d".into(),
            sender_name: "Alice".into(),
            sent_at: i,
            received_at: i,
            kind: "text".into(),
            body: format!("message {i}"),
            epoch: 1,
            transferred_at: None,
            seq: i,
        }
    }

    /// Apply changes to a map, as a backend would.
    fn apply(store: &mut BTreeMap<RecordId, Vec<u8>>, ch: Changes) {
        if ch.clear {
            store.clear();
        }
        for id in ch.delete {
            store.remove(&id);
        }
        for (id, b) in ch.put {
            store.insert(id, b);
        }
    }

    fn reload(vault: &Vault, store: &BTreeMap<RecordId, Vec<u8>>) -> Client {
        let recs: Vec<_> = store.iter().map(|(k, v)| (*k, v.clone())).collect();
        Client::from_records(vault, &recs).expect("loads")
    }

    fn texts(c: &Client, hex: &str) -> Vec<String> {
        c.state.conversations[hex]
            .history
            .iter()
            .map(|e| e.body.clone())
            .collect()
    }

    #[test]
    fn appends_write_one_page_and_history_round_trips_through_purges() {
        let (mut c, hex) = crate::client::tests_support::client_with_conversation("ward 7");
        let vault = Vault::create("pin-12345", FAST, [5; 16]).expect("vault");
        let mut store = BTreeMap::new();
        let ch = c.changes(&vault);
        assert!(ch.clear);
        apply(&mut store, ch);
        for i in 0..1000 {
            c.state
                .conversations
                .get_mut(&hex)
                .expect("conv")
                .history
                .push(entry(i));
        }
        apply(&mut store, c.changes(&vault));
        assert_eq!(texts(&reload(&vault, &store), &hex).len(), 1000);
        // One more message: the state record (maybe) and one page, no more.
        c.state
            .conversations
            .get_mut(&hex)
            .expect("conv")
            .history
            .push(entry(1000));
        let ch = c.changes(&vault);
        let pages = ch.put.len();
        assert!(pages <= 2, "an append wrote {pages} records");
        assert!(ch.delete.is_empty());
        apply(&mut store, ch);
        // Retention from the front: pages below are deleted, none rewritten
        // but the new first one.
        let conv = c.state.conversations.get_mut(&hex).expect("conv");
        conv.retain_entries(|e| e.seq >= 130);
        let ch = c.changes(&vault);
        assert_eq!(ch.delete.len(), 2, "pages 0 and 1 go");
        assert!(ch.erase);
        assert!(ch.put.len() <= 2);
        apply(&mut store, ch);
        let r = reload(&vault, &store);
        assert_eq!(r.state.conversations[&hex].history_base, 130);
        assert_eq!(texts(&r, &hex), texts(&c, &hex));
        // Removal in the middle and a change in place.
        let conv = c.state.conversations.get_mut(&hex).expect("conv");
        conv.remove_entry(500);
        conv.history[10].transferred_at = Some(7);
        conv.touch_entry(10);
        conv.retain_entries(|e| e.seq != 900);
        apply(&mut store, c.changes(&vault));
        let r = reload(&vault, &store);
        assert_eq!(texts(&r, &hex), texts(&c, &hex));
        assert_eq!(
            r.state.conversations[&hex].history[10].transferred_at,
            Some(7)
        );
        // Everything purged.
        c.state
            .conversations
            .get_mut(&hex)
            .expect("conv")
            .retain_entries(|_| false);
        apply(&mut store, c.changes(&vault));
        assert!(texts(&reload(&vault, &store), &hex).is_empty());
        // Nothing changed: nothing written.
        assert!(c.changes(&vault).is_empty());
    }

    #[test]
    fn records_cannot_be_moved_altered_or_opened_with_another_key() {
        let (mut c, _hex) = crate::client::tests_support::client_with_conversation("ward 7");
        let vault = Vault::create("pin-12345", FAST, [5; 16]).expect("vault");
        let ch = c.changes(&vault);
        let mut recs = ch.put;
        assert!(recs.len() > 2);
        assert!(Client::from_records(&vault, &recs).is_ok());
        // Swapping two records' bytes.
        let mut swapped = recs.clone();
        let b0 = swapped[0].1.clone();
        swapped[0].1 = swapped[1].1.clone();
        swapped[1].1 = b0;
        assert!(Client::from_records(&vault, &swapped).is_err());
        // A flipped bit.
        let last = recs[0].1.len() - 1;
        recs[0].1[last] ^= 1;
        assert!(Client::from_records(&vault, &recs).is_err());
        // Another passcode.
        let other = Vault::create("pin-54321", FAST, [5; 16]).expect("vault");
        let ch = c.changes(&vault);
        assert!(ch.is_empty());
        c.persist_unknown();
        let ch = c.changes(&vault);
        assert!(Client::from_records(&other, &ch.put).is_err());
        // No record holds the conversation's name or group id in clear.
        for (_, b) in &ch.put {
            assert!(!b.windows(6).any(|w| w == b"ward 7"));
        }
    }
}
