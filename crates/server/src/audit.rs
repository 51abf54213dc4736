//! The organisation's audit log: every admin and records action (invite, wipe,
//! policy change, records account change, records search and export, personal
//! export, transfer to the health record), append-only in the store.
//!
//! Each entry is chained to the one before by SHA-256 and its hash is signed
//! with the organisation key, so `sitrep admin audit verify` finds an edited,
//! removed, inserted or reordered entry (the chain breaks), and an attacker who
//! can write the database but does not hold `org.key` cannot rebuild the chain.
//! Entries carry user and device ids, never message text or patient
//! identifiers: a records query is logged as a keyed hash (see the threat model).

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rusqlite::{Connection, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

const LABEL: &[u8] = b"sitrep-audit-v1";

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position, from 1.
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// `admin:<os user>` or `<user id>/<device id>`.
    pub actor: String,
    /// What was done, e.g. `invite`, `records.search`.
    pub action: String,
    /// Ids and counts; never message text or patient identifiers.
    pub detail: String,
    /// Hex hash of the entry before (zeros for the first).
    pub prev: String,
    /// Hex hash of this entry.
    pub hash: String,
    /// Hex Ed25519 signature of the hash by the organisation key (empty
    /// from a server before it was listed).
    #[serde(default)]
    pub signature: String,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// The chain is broken at this entry.
    #[error("audit entry {seq}: {why}")]
    Broken {
        /// Sequence number.
        seq: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The store could not be read.
    #[error("audit log unreadable: {0}")]
    Store(String),
}

fn entry_hash(prev: &[u8], seq: u64, at: u64, actor: &str, action: &str, detail: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at.to_be_bytes());
    for part in [actor, action, detail] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// Append an entry; returns its sequence number and hash. Safe against the
/// server and an admin command writing at once (an IMMEDIATE transaction).
pub fn append(
    conn: &mut Connection,
    key: &SigningKey,
    actor: &str,
    action: &str,
    detail: &str,
    at: u64,
) -> Result<(u64, [u8; 32]), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let r = append_in(&tx, key, actor, action, detail, at)?;
    tx.commit()?;
    Ok(r)
}

/// [`append`] inside the caller's (IMMEDIATE) transaction: the entry is
/// written with the action it records, or neither is.
pub fn append_in(
    tx: &Connection,
    key: &SigningKey,
    actor: &str,
    action: &str,
    detail: &str,
    at: u64,
) -> Result<(u64, [u8; 32]), rusqlite::Error> {
    let last: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    let (seq, prev) = match last {
        Some((s, h)) => (s as u64 + 1, h),
        None => (1, vec![0u8; 32]),
    };
    let hash = entry_hash(&prev, seq, at, actor, action, detail);
    let sig = key.sign(&hash).to_bytes();
    tx.execute(
        "INSERT INTO audit (seq, at, actor, action, detail, prev, hash, signature) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![seq as i64, at as i64, actor, action, detail, prev, hash.to_vec(), sig.to_vec()],
    )?;
    Ok((seq, hash))
}

type Row = (i64, i64, String, String, String, Vec<u8>, Vec<u8>, Vec<u8>);

fn rows(conn: &Connection) -> Result<Vec<Row>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, actor, action, detail, prev, hash, signature FROM audit ORDER BY seq",
    )?;
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ))
    })?
    .collect()
}

/// Every entry, oldest first.
pub fn entries(conn: &Connection) -> Result<Vec<AuditEntry>, rusqlite::Error> {
    Ok(rows(conn)?
        .into_iter()
        .map(
            |(seq, at, actor, action, detail, prev, hash, sig)| AuditEntry {
                seq: seq as u64,
                at: at as u64,
                actor,
                action,
                detail,
                prev: hex::encode(prev),
                hash: hex::encode(hash),
                signature: hex::encode(sig),
            },
        )
        .collect())
}

/// Check the whole chain: sequence numbers from 1 without gaps, each entry's
/// hash recomputed from its fields and the entry before, and the organisation's
/// signature over each hash. Returns the number of entries.
pub fn verify(conn: &Connection, org_public_key: &[u8; 32]) -> Result<u64, AuditError> {
    let all = entries(conn).map_err(|e| AuditError::Store(e.to_string()))?;
    verify_entries(&all, org_public_key)
}

/// [`verify`] over entries as listed (`GET /v1/admin/audit`): an admin's
/// device checks them against the organisation key it pinned at enrolment.
pub fn verify_entries(all: &[AuditEntry], org_public_key: &[u8; 32]) -> Result<u64, AuditError> {
    let key = VerifyingKey::from_bytes(org_public_key)
        .map_err(|_| AuditError::Store("bad organisation key".into()))?;
    let mut prev = vec![0u8; 32];
    let mut expected = 1u64;
    for e in all {
        let seq = e.seq;
        let broken = |why| AuditError::Broken { seq, why };
        if seq != expected {
            return Err(broken("an entry before it is missing or out of order"));
        }
        if hex::decode(&e.prev).ok().as_deref() != Some(prev.as_slice()) {
            return Err(broken("does not chain to the entry before it"));
        }
        let h = entry_hash(&prev, seq, e.at, &e.actor, &e.action, &e.detail);
        let hash = hex::decode(&e.hash).map_err(|_| broken("hash malformed"))?;
        if h.as_slice() != hash.as_slice() {
            return Err(broken("its contents were changed"));
        }
        let sig: [u8; 64] = hex::decode(&e.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| broken("signature malformed"))?;
        key.verify_strict(&h, &Signature::from_bytes(&sig))
            .map_err(|_| broken("not signed by the organisation key"))?;
        prev = hash;
        expected += 1;
    }
    Ok(expected - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().expect("db");
        c.execute_batch(crate::db::SCHEMA).expect("schema");
        c
    }

    #[test]
    fn chain_verifies_and_every_edit_breaks_it() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pk = key.verifying_key().to_bytes();
        let mut c = conn();
        for (i, a) in ["invite", "wipe", "policy", "records.search"]
            .iter()
            .enumerate()
        {
            append(
                &mut c,
                &key,
                "admin:root",
                a,
                &format!("n={i}"),
                100 + i as u64,
            )
            .expect("append");
        }
        assert_eq!(verify(&c, &pk), Ok(4));
        // Edited detail.
        c.execute("UPDATE audit SET detail = 'n=9' WHERE seq = 2", [])
            .expect("edit");
        assert!(matches!(
            verify(&c, &pk),
            Err(AuditError::Broken { seq: 2, .. })
        ));
        c.execute("UPDATE audit SET detail = 'n=1' WHERE seq = 2", [])
            .expect("undo");
        assert_eq!(verify(&c, &pk), Ok(4));
        // Removed entry.
        let saved: Row = rows(&c).expect("rows").remove(2);
        c.execute("DELETE FROM audit WHERE seq = 3", [])
            .expect("del");
        assert!(matches!(
            verify(&c, &pk),
            Err(AuditError::Broken { seq: 4, .. })
        ));
        // Rebuilt chain without the organisation key.
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let mut d = conn();
        append(&mut d, &other, "admin:x", "invite", "", 1).expect("append");
        assert!(matches!(
            verify(&d, &pk),
            Err(AuditError::Broken { seq: 1, .. })
        ));
        let _ = saved;
    }

    #[test]
    fn reordering_breaks_it() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pk = key.verifying_key().to_bytes();
        let mut c = conn();
        append(&mut c, &key, "a", "invite", "1", 1).expect("append");
        append(&mut c, &key, "a", "wipe", "2", 2).expect("append");
        c.execute_batch(
            "UPDATE audit SET seq = 99 WHERE seq = 1; UPDATE audit SET seq = 1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 99;",
        )
        .expect("swap");
        assert!(verify(&c, &pk).is_err());
    }
}
