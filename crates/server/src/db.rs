//! The embedded SQLite store. One writer connection behind a mutex; every
//! operation that acknowledges something to a client commits (WAL,
//! `synchronous=FULL`) before the acknowledgement is sent.
//!
//! Payloads are stored once per message and referenced from each recipient's
//! queue, so a commit to a thousand devices is not copied a thousand times.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sitrep_wire::api::EntryKind;

use crate::error::ApiErr;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS invites (
    code_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    signature_key BLOB NOT NULL,
    credential BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    dropped INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS devices_user ON devices(user_id);
CREATE TABLE IF NOT EXISTS key_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    last_resort INTEGER NOT NULL,
    kp BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS kp_device ON key_packages(device_id, last_resort);
CREATE TABLE IF NOT EXISTS groups (
    group_id BLOB PRIMARY KEY,
    epoch INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_members (
    group_id BLOB NOT NULL,
    device_id TEXT NOT NULL,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX IF NOT EXISTS members_device ON group_members(device_id);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB,
    kind INTEGER NOT NULL,
    epoch INTEGER,
    sender_device TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0
);
-- One B-tree, clustered the way it is read: a device's entries in order.
CREATE TABLE IF NOT EXISTS queue (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    sender_device TEXT NOT NULL,
    client_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    recipients INTEGER NOT NULL,
    epoch INTEGER,
    PRIMARY KEY (sender_device, client_id)
);
"#;

/// An authenticated device.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Device id.
    pub device_id: String,
    /// Owner.
    pub user_id: String,
}

/// Claimed KeyPackages `(user, device, key package)` and users with none.
pub type Claimed = (Vec<(String, String, Vec<u8>)>, Vec<String>);

/// An entry queued for a device: what to push.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Recipient device.
    pub device_id: String,
    /// Its queue position.
    pub seq: u64,
    /// Kind.
    pub kind: EntryKind,
    /// Shared payload.
    pub payload: Arc<[u8]>,
}

struct Inner {
    conn: Connection,
    counters: Counters,
}

struct Counters {
    /// Entries waiting per device (recomputed at start).
    queue_len: HashMap<String, u64>,
    /// Next queue sequence number: strictly increasing, never reused (a device
    /// skips sequence numbers it has processed). Persisted in `meta` with every
    /// transaction that uses it.
    next_seq: u64,
}

/// The store.
pub struct Db {
    inner: Mutex<Inner>,
}

/// Open a connection with the settings every process (server and admin CLI) uses.
pub fn connect(dir: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(dir.join("sitrep.db"))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn db_err(e: rusqlite::Error) -> ApiErr {
    tracing::error!(error = %e, "database error");
    ApiErr::internal()
}

impl Db {
    /// Open (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, rusqlite::Error> {
        std::fs::create_dir_all(dir).map_err(|_| rusqlite::Error::InvalidPath(dir.into()))?;
        let conn = connect(dir)?;
        let mut queue_len = HashMap::new();
        {
            let mut stmt =
                conn.prepare("SELECT device_id, COUNT(*) FROM queue GROUP BY device_id")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (d, n) = row?;
                queue_len.insert(d, n as u64);
            }
        }
        let stored: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(1);
        let max_seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM queue", [], |r| r.get(0))?;
        let next_seq = stored.max(max_seq + 1).max(1) as u64;
        Ok(Self {
            inner: Mutex::new(Inner {
                conn,
                counters: Counters {
                    queue_len,
                    next_seq,
                },
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the connection itself is
        // still consistent (SQLite rolled back), so carry on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look up a bearer token.
    pub fn authenticate(&self, token_hash: &[u8]) -> Result<Option<DeviceRow>, ApiErr> {
        let g = self.lock();
        g.conn
            .query_row(
                "SELECT device_id, user_id FROM devices WHERE token_hash = ?1 AND revoked_at IS NULL",
                [token_hash],
                |r| Ok(DeviceRow { device_id: r.get(0)?, user_id: r.get(1)? }),
            )
            .optional()
            .map_err(db_err)
    }

    /// Redeem an invitation and register the device, atomically.
    #[allow(clippy::too_many_arguments)]
    pub fn enrol(
        &self,
        code_hash: &[u8],
        now: u64,
        device_id: &str,
        token_hash: &[u8],
        signature_key: &[u8],
        make_credential: impl FnOnce(&str, &str, &str) -> Vec<u8>,
    ) -> Result<(String, Vec<u8>), ApiErr> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let invite: Option<(String, String, String)> = tx
            .query_row(
                "UPDATE invites SET used_at = ?2 WHERE code_hash = ?1 AND used_at IS NULL AND expires_at > ?2
                 RETURNING user_id, display_name, role",
                params![code_hash, now as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db_err)?;
        let Some((user_id, name, role)) = invite else {
            return Err(ApiErr::forbidden(
                "invalid_code",
                "the enrolment code is unknown, used or expired",
            ));
        };
        let credential = make_credential(&user_id, &name, &role);
        tx.execute(
            "INSERT INTO devices (device_id, user_id, display_name, role, token_hash, signature_key, credential, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![device_id, user_id, name, role, token_hash, signature_key, credential, now as i64],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok((user_id, credential))
    }

    /// Store KeyPackages; a new last-resort one replaces the old.
    pub fn upload_key_packages(
        &self,
        device_id: &str,
        kps: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        max_stored: u64,
    ) -> Result<u64, ApiErr> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let have: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM key_packages WHERE device_id = ?1 AND last_resort = 0",
                [device_id],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if have as u64 + kps.len() as u64 > max_stored {
            return Err(ApiErr::bad_request(
                "too_many_key_packages",
                &format!("a device keeps at most {max_stored} KeyPackages on the server"),
            ));
        }
        for kp in kps {
            tx.execute(
                "INSERT INTO key_packages (device_id, last_resort, kp) VALUES (?1, 0, ?2)",
                params![device_id, kp],
            )
            .map_err(db_err)?;
        }
        if let Some(lr) = last_resort {
            tx.execute(
                "DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
                [device_id],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO key_packages (device_id, last_resort, kp) VALUES (?1, 1, ?2)",
                params![device_id, lr],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(have as u64 + kps.len() as u64)
    }

    /// One-time KeyPackages left, and whether a last-resort one is stored.
    pub fn count_key_packages(&self, device_id: &str) -> Result<(u64, bool), ApiErr> {
        let g = self.lock();
        let (n, lr): (i64, i64) = g
            .conn
            .query_row(
                "SELECT COALESCE(SUM(last_resort = 0), 0), COALESCE(SUM(last_resort = 1), 0)
                 FROM key_packages WHERE device_id = ?1",
                [device_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db_err)?;
        Ok((n as u64, lr > 0))
    }

    /// Claim one KeyPackage for every active device of each user: a one-time one
    /// is consumed (atomically), else the last-resort one is handed out.
    pub fn claim_key_packages(&self, user_ids: &[String]) -> Result<Claimed, ApiErr> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for user in user_ids {
            let devices: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached("SELECT device_id FROM devices WHERE user_id = ?1 AND revoked_at IS NULL ORDER BY device_id")
                    .map_err(db_err)?;
                let rows = stmt.query_map([user], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            };
            let mut any = false;
            for d in devices {
                let one: Option<Vec<u8>> = tx
                    .query_row(
                        "DELETE FROM key_packages WHERE id = (
                            SELECT id FROM key_packages WHERE device_id = ?1 AND last_resort = 0 ORDER BY id LIMIT 1)
                         RETURNING kp",
                        [&d],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?;
                let kp = match one {
                    Some(kp) => Some(kp),
                    None => tx
                        .query_row(
                            "SELECT kp FROM key_packages WHERE device_id = ?1 AND last_resort = 1",
                            [&d],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(db_err)?,
                };
                if let Some(kp) = kp {
                    any = true;
                    found.push((user.clone(), d, kp));
                }
            }
            if !any {
                missing.push(user.clone());
            }
        }
        tx.commit().map_err(db_err)?;
        Ok((found, missing))
    }

    /// Register a new group at epoch 0 with its creator as the only member.
    pub fn create_group(&self, group_id: &[u8], device_id: &str, now: u64) -> Result<(), ApiErr> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let n = tx
            .execute(
                "INSERT OR IGNORE INTO groups (group_id, epoch, created_by, created_at) VALUES (?1, 0, ?2, ?3)",
                params![group_id, device_id, now as i64],
            )
            .map_err(db_err)?;
        if n == 0 {
            // Idempotent for the creator's retry; a conflict for anyone else.
            let creator: String = tx
                .query_row(
                    "SELECT created_by FROM groups WHERE group_id = ?1",
                    [group_id],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if creator != device_id {
                return Err(ApiErr::conflict(
                    "group_exists",
                    "a group with this id exists",
                ));
            }
        } else {
            tx.execute(
                "INSERT INTO group_members (group_id, device_id) VALUES (?1, ?2)",
                params![group_id, device_id],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        counters: &mut Counters,
        tx: &rusqlite::Transaction<'_>,
        message_id: i64,
        kind: EntryKind,
        payload: &Arc<[u8]>,
        recipients: &[String],
        max_queue: u64,
        out: &mut Vec<Queued>,
    ) -> Result<u64, ApiErr> {
        // Rows go in CHUNK at a time: one statement step per chunk.
        const CHUNK: usize = 64;
        let mut rows: Vec<(&String, u64)> = Vec::with_capacity(recipients.len());
        for d in recipients {
            let len = counters.queue_len.entry(d.clone()).or_insert(0);
            if *len >= max_queue {
                tx.execute(
                    "UPDATE devices SET dropped = dropped + 1 WHERE device_id = ?1",
                    [d],
                )
                .map_err(db_err)?;
                continue;
            }
            *len += 1;
            let seq = counters.next_seq;
            counters.next_seq += 1;
            rows.push((d, seq));
        }
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO queue (device_id, seq, message_id) VALUES {}",
                vec!["(?, ?, ?)"; chunk.len()].join(", ")
            );
            let mut stmt = tx.prepare_cached(&sql).map_err(db_err)?;
            let mut params: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() * 3);
            for (d, seq) in chunk {
                params.push(rusqlite::types::Value::Text((*d).clone()));
                params.push(rusqlite::types::Value::Integer(*seq as i64));
                params.push(rusqlite::types::Value::Integer(message_id));
            }
            stmt.execute(rusqlite::params_from_iter(params))
                .map_err(db_err)?;
        }
        let n = rows.len() as u64;
        for (d, seq) in rows {
            out.push(Queued {
                device_id: d.clone(),
                seq,
                kind,
                payload: payload.clone(),
            });
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [counters.next_seq as i64],
        )
        .map_err(db_err)?;
        tx.execute(
            "UPDATE messages SET refs = ?2 WHERE id = ?1",
            params![message_id, n as i64],
        )
        .map_err(db_err)?;
        Ok(n)
    }

    fn members(tx: &rusqlite::Transaction<'_>, group_id: &[u8]) -> Result<Vec<String>, ApiErr> {
        let mut stmt = tx
            .prepare_cached("SELECT device_id FROM group_members WHERE group_id = ?1")
            .map_err(db_err)?;
        let rows = stmt.query_map([group_id], |r| r.get(0)).map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// Accept a commit if it was built on the group's current epoch, fan it out
    /// to the other members (including those it removes) and release its
    /// Welcome to the joiners only. Returns the new epoch, whether this was a
    /// retry, and what to push.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        sender: &str,
        group_id: &[u8],
        client_id: &str,
        epoch: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        add: &[String],
        remove: &[String],
        now: u64,
        max_queue: u64,
        publish: impl FnOnce(Vec<Queued>),
    ) -> Result<(u64, bool), ApiErr> {
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if let Some(e) = tx
            .query_row(
                "SELECT epoch FROM submissions WHERE sender_device = ?1 AND client_id = ?2",
                params![sender, client_id],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map_err(db_err)?
        {
            return Ok((e.unwrap_or(0) as u64, true));
        }
        let current: i64 = tx
            .query_row(
                "SELECT epoch FROM groups WHERE group_id = ?1",
                [group_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| ApiErr::not_found("unknown_group", "no such group"))?;
        let members = Self::members(&tx, group_id)?;
        if !members.iter().any(|m| m == sender) {
            return Err(ApiErr::forbidden(
                "not_a_member",
                "this device is not in the group",
            ));
        }
        if current as u64 != epoch {
            return Err(ApiErr::epoch_conflict(current as u64));
        }
        for r in remove {
            if !members.contains(r) {
                return Err(ApiErr::bad_request(
                    "bad_remove",
                    "a removed device is not in the group",
                ));
            }
        }
        for a in add {
            let ok: bool = tx
                .query_row(
                    "SELECT COUNT(*) FROM devices WHERE device_id = ?1 AND revoked_at IS NULL",
                    [a],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db_err)?
                > 0;
            if !ok || members.contains(a) {
                return Err(ApiErr::bad_request(
                    "bad_add",
                    "an added device is unknown, revoked or already in the group",
                ));
            }
        }
        if !add.is_empty() && welcome.is_none() {
            return Err(ApiErr::bad_request(
                "missing_welcome",
                "a commit that adds devices needs a Welcome",
            ));
        }
        let new_epoch = epoch + 1;
        tx.execute(
            "UPDATE groups SET epoch = ?2 WHERE group_id = ?1",
            params![group_id, new_epoch as i64],
        )
        .map_err(db_err)?;
        let mut pushes = Vec::new();
        let recipients: Vec<String> = members.iter().filter(|m| *m != sender).cloned().collect();
        let commit_len = commit.len();
        tx.execute(
            "INSERT INTO messages (group_id, kind, epoch, sender_device, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![group_id, EntryKind::Commit as u8, epoch as i64, sender, commit, now as i64],
        )
        .map_err(db_err)?;
        let commit_id = tx.last_insert_rowid();
        let payload: Arc<[u8]> = Arc::from(commit);
        let n = Self::enqueue(
            &mut inner.counters,
            &tx,
            commit_id,
            EntryKind::Commit,
            &payload,
            &recipients,
            max_queue,
            &mut pushes,
        )?;
        for r in remove {
            tx.execute(
                "DELETE FROM group_members WHERE group_id = ?1 AND device_id = ?2",
                params![group_id, r],
            )
            .map_err(db_err)?;
        }
        for a in add {
            tx.execute(
                "INSERT INTO group_members (group_id, device_id) VALUES (?1, ?2)",
                params![group_id, a],
            )
            .map_err(db_err)?;
        }
        if let Some(w) = welcome {
            tx.execute(
                "INSERT INTO messages (group_id, kind, epoch, sender_device, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![group_id, EntryKind::Welcome as u8, new_epoch as i64, sender, w, now as i64],
            )
            .map_err(db_err)?;
            let wid = tx.last_insert_rowid();
            let wpayload: Arc<[u8]> = Arc::from(w);
            Self::enqueue(
                &mut inner.counters,
                &tx,
                wid,
                EntryKind::Welcome,
                &wpayload,
                add,
                max_queue,
                &mut pushes,
            )?;
        }
        if n == 0 {
            // Nobody to deliver the commit to (a group of one): keep no payload.
            tx.execute("DELETE FROM messages WHERE id = ?1", [commit_id])
                .map_err(db_err)?;
        }
        tx.execute(
            "INSERT INTO submissions (sender_device, client_id, created_at, recipients, epoch) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![sender, client_id, now as i64, n as i64, new_epoch as i64],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::debug!(
            epoch = new_epoch,
            bytes = commit_len,
            recipients = n,
            "commit accepted"
        );
        // Publish while still holding the lock, so every connection sees its
        // entries in sequence order.
        publish(pushes);
        Ok((new_epoch, false))
    }

    /// Store an application message for every other member of the group.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        sender: &str,
        group_id: &[u8],
        client_id: &str,
        payload: Vec<u8>,
        now: u64,
        max_queue: u64,
        publish: impl FnOnce(Vec<Queued>),
    ) -> Result<(u64, bool), ApiErr> {
        let started = std::time::Instant::now();
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if let Some(n) = tx
            .query_row(
                "SELECT recipients FROM submissions WHERE sender_device = ?1 AND client_id = ?2",
                params![sender, client_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(db_err)?
        {
            return Ok((n as u64, true));
        }
        let epoch: i64 = tx
            .query_row(
                "SELECT epoch FROM groups WHERE group_id = ?1",
                [group_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| ApiErr::not_found("unknown_group", "no such group"))?;
        let members = Self::members(&tx, group_id)?;
        if !members.iter().any(|m| m == sender) {
            return Err(ApiErr::forbidden(
                "not_a_member",
                "this device is not in the group",
            ));
        }
        let recipients: Vec<String> = members.into_iter().filter(|m| m != sender).collect();
        let mut pushes = Vec::new();
        let n = if recipients.is_empty() {
            0
        } else {
            tx.execute(
                "INSERT INTO messages (group_id, kind, epoch, sender_device, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![group_id, EntryKind::Application as u8, epoch, sender, payload, now as i64],
            )
            .map_err(db_err)?;
            let id = tx.last_insert_rowid();
            let payload: Arc<[u8]> = Arc::from(payload);
            Self::enqueue(
                &mut inner.counters,
                &tx,
                id,
                EntryKind::Application,
                &payload,
                &recipients,
                max_queue,
                &mut pushes,
            )?
        };
        tx.execute(
            "INSERT INTO submissions (sender_device, client_id, created_at, recipients) VALUES (?1, ?2, ?3, ?4)",
            params![sender, client_id, now as i64, n as i64],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::debug!(
            recipients = n,
            elapsed_us = started.elapsed().as_micros() as u64,
            "message stored"
        );
        publish(pushes);
        Ok((n, false))
    }

    /// Entries after `after`, in order, at most `limit`.
    pub fn fetch(
        &self,
        device_id: &str,
        after: u64,
        limit: u64,
    ) -> Result<(Vec<Queued>, bool), ApiErr> {
        let g = self.lock();
        let mut stmt = g
            .conn
            .prepare_cached(
                "SELECT q.seq, m.kind, m.payload FROM queue q JOIN messages m ON m.id = q.message_id
                 WHERE q.device_id = ?1 AND q.seq > ?2 ORDER BY q.seq LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![device_id, after as i64, (limit + 1) as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, u8>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, kind, payload) = row.map_err(db_err)?;
            let kind = EntryKind::from_u8(kind).ok_or_else(ApiErr::internal)?;
            out.push(Queued {
                device_id: device_id.to_string(),
                seq: seq as u64,
                kind,
                payload: Arc::from(payload),
            });
        }
        let more = out.len() as u64 > limit;
        out.truncate(limit as usize);
        Ok((out, more))
    }

    /// Delete everything up to `up_to` for this device, and payloads nobody needs.
    pub fn ack(&self, device_id: &str, up_to: u64) -> Result<u64, ApiErr> {
        self.ack_many(&[(device_id.to_string(), up_to)])
    }

    /// Apply many acknowledgements in one transaction. Acknowledgements only
    /// delete, and losing one in a crash means a redelivery that the device
    /// skips by sequence number, so they commit without waiting for fsync
    /// (`synchronous=NORMAL` for this transaction only); the next durable
    /// commit syncs them with it.
    pub fn ack_many(&self, acks: &[(String, u64)]) -> Result<u64, ApiErr> {
        let mut g = self.lock();
        let inner = &mut *g;
        inner
            .conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err)?;
        let result = Self::ack_tx(inner, acks);
        inner
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        result
    }

    fn ack_tx(inner: &mut Inner, acks: &[(String, u64)]) -> Result<u64, ApiErr> {
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let mut total = 0u64;
        let mut per_device = Vec::with_capacity(acks.len());
        {
            let mut del_queue = tx
                .prepare_cached(
                    "DELETE FROM queue WHERE device_id = ?1 AND seq <= ?2 RETURNING message_id",
                )
                .map_err(db_err)?;
            let mut unref = tx
                .prepare_cached("UPDATE messages SET refs = refs - ?2 WHERE id = ?1 RETURNING refs")
                .map_err(db_err)?;
            let mut del_msg = tx
                .prepare_cached("DELETE FROM messages WHERE id = ?1")
                .map_err(db_err)?;
            let mut counts: HashMap<i64, i64> = HashMap::new();
            for (device_id, up_to) in acks {
                let rows = del_queue
                    .query_map(params![device_id, *up_to as i64], |r| r.get::<_, i64>(0))
                    .map_err(db_err)?;
                let mut n = 0u64;
                for r in rows {
                    *counts.entry(r.map_err(db_err)?).or_insert(0) += 1;
                    n += 1;
                }
                total += n;
                per_device.push((device_id.clone(), n));
            }
            // A payload is kept while any queue still refers to it.
            for (id, k) in counts {
                let left: Option<i64> = unref
                    .query_row(params![id, k], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?;
                if left.is_some_and(|l| l <= 0) {
                    del_msg.execute([id]).map_err(db_err)?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        for (d, n) in per_device {
            if let Some(len) = inner.counters.queue_len.get_mut(&d) {
                *len = len.saturating_sub(n);
            }
        }
        Ok(total)
    }

    /// Entries dropped for this device because its queue was full.
    pub fn dropped(&self, device_id: &str) -> Result<u64, ApiErr> {
        let g = self.lock();
        g.conn
            .query_row(
                "SELECT dropped FROM devices WHERE device_id = ?1",
                [device_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db_err)
    }
}

/// Create an invitation (used by `sitrep admin invite`, also while the server
/// runs: SQLite in WAL mode takes the second writer).
pub fn create_invite(
    dir: &Path,
    user_id: &str,
    display_name: &str,
    role: &str,
    ttl_secs: u64,
) -> Result<String, rusqlite::Error> {
    let conn = connect(dir)?;
    let code = crate::org::new_code();
    let now = crate::now_secs();
    conn.execute(
        "INSERT INTO invites (code_hash, user_id, display_name, role, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![crate::org::code_hash(&code), user_id, display_name, role, now as i64, (now + ttl_secs) as i64],
    )?;
    Ok(code)
}
