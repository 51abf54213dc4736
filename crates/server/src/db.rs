//! The embedded SQLite store. One writer connection behind a mutex; every
//! operation that acknowledges something to a client commits (WAL,
//! `synchronous=FULL`) before the acknowledgement is sent.
//!
//! Fan-out on read: each message is one row in a global sequence; a device
//! reads its groups' logs (while it was a member) from its acknowledged cursor,
//! so a commit to a thousand devices is one row, not a thousand.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sitrep_wire::api::EntryKind;

use crate::error::ApiErr;

pub(crate) const SCHEMA: &str = r#"
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
    -- Set once the groups were told of the revocation.
    revocation_done INTEGER NOT NULL DEFAULT 0,
    -- Everything up to here was acknowledged by the device.
    cursor INTEGER NOT NULL DEFAULT 0,
    -- Its latest request (seconds), written every few seconds.
    last_seen INTEGER
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
-- Who receives a group's log: a device gets entries with
-- from_seq < seq <= to_seq (to_seq NULL while it is a member).
CREATE TABLE IF NOT EXISTS memberships (
    group_id BLOB NOT NULL,
    device_id TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER,
    PRIMARY KEY (group_id, device_id, from_seq)
);
CREATE INDEX IF NOT EXISTS memberships_device ON memberships(device_id);
-- Each message is stored once, in one global sequence; devices read their
-- groups' logs (fan-out on read), so a message to a thousand devices is one
-- row, not a thousand.
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    kind INTEGER NOT NULL,
    epoch INTEGER,
    sender_device TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_group ON messages(group_id, seq);
-- Welcomes go to the joiners only.
CREATE TABLE IF NOT EXISTS welcome_targets (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- The organisation's signed device policies; the highest serial is in force.
CREATE TABLE IF NOT EXISTS policies (
    serial INTEGER PRIMARY KEY,
    signed BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
-- The organisation's signed directories; the highest serial is in force.
CREATE TABLE IF NOT EXISTS directories (
    serial INTEGER PRIMARY KEY,
    signed BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
-- The organisation's audit log (see audit.rs): hash-chained, org-signed.
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev BLOB NOT NULL,
    hash BLOB NOT NULL,
    signature BLOB NOT NULL
);
-- Each accepted application message, kept after the message itself is
-- collected: delivery and read status are asked by its seq.
CREATE TABLE IF NOT EXISTS sent_log (
    seq INTEGER PRIMARY KEY,
    group_id BLOB NOT NULL,
    sender_device TEXT NOT NULL,
    client_id TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_log_client ON sent_log(sender_device, client_id);
CREATE INDEX IF NOT EXISTS sent_log_group ON sent_log(group_id, seq);
-- Each advance of a device's read marker in a group: it has shown the
-- group's messages up to seq (at that time). See threat-model.md.
CREATE TABLE IF NOT EXISTS read_log (
    group_id BLOB NOT NULL,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (group_id, device_id, seq)
) WITHOUT ROWID;
-- The delivery service's public view of each group (see ds.rs): ratchet
-- tree, group context, queued proposals; advanced by validated commits.
CREATE TABLE IF NOT EXISTS group_state (
    group_id BLOB PRIMARY KEY,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS admins (
    user_id TEXT PRIMARY KEY,
    totp_secret BLOB NOT NULL,
    last_step INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    granted_at INTEGER NOT NULL,
    granted_by TEXT NOT NULL
);
-- Staff provisioned by the trust's identity system over SCIM (scim.rs).
CREATE TABLE IF NOT EXISTS scim_users (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL UNIQUE,
    external_id TEXT,
    display_name TEXT NOT NULL,
    title TEXT NOT NULL,
    active INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    modified_at INTEGER NOT NULL,
    -- Deleted over SCIM: gone from SCIM, still deactivated (no new code).
    deleted INTEGER NOT NULL DEFAULT 0
);
-- The SCIM client's bearer token (its SHA-256), one at a time.
CREATE TABLE IF NOT EXISTS scim_token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
-- Web Push endpoints (a browser's push service URL), per device.
CREATE TABLE IF NOT EXISTS push_subscriptions (
    device_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, endpoint)
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

/// Why a take was refused (the directory names who may hold each role).
const NOT_ELIGIBLE: &str = "not eligible for the role";

/// A Web Push endpoint and its browser's keys (`p256dh`, `auth`).
pub type PushEndpoint = (String, Option<(Vec<u8>, Vec<u8>)>);

/// One device's view of one message: see [`Db::message_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageStatusRow {
    /// The device's user.
    pub user_id: String,
    /// The device.
    pub device_id: String,
    /// The device acknowledged a cursor at or past the message.
    pub delivered: bool,
    /// When the device first reported having shown it (seconds), if it has.
    pub read_at: Option<u64>,
}

/// An authenticated device.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Device id.
    pub device_id: String,
    /// Owner.
    pub user_id: String,
    /// Revoked (wiped): refused everything.
    pub revoked: bool,
    /// The MLS signature key enrolled for it.
    pub signature_key: Vec<u8>,
}

/// Claimed KeyPackages `(user, device, key package)` and users with none.
pub type Claimed = (Vec<(String, String, Vec<u8>)>, Vec<String>);

/// Who a commit goes to: the group's members before it, the devices it adds
/// (memberships to open), removes (memberships to close), and its Welcome's
/// recipients.
struct Routed {
    members: Vec<String>,
    add: Vec<String>,
    remove: Vec<String>,
    welcome_to: Vec<String>,
}

/// One new log entry and the connected devices that should get it now.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Devices to push to.
    pub recipients: Vec<String>,
    /// The entry's sequence number (the same for every recipient).
    pub seq: u64,
    /// Kind.
    pub kind: EntryKind,
    /// Shared payload.
    pub payload: Arc<[u8]>,
}

/// One entry of a device's inbox, as fetched.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Recipient device.
    pub device_id: String,
    /// Its sequence number (global; acknowledge up to it).
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
    /// Next sequence number: strictly increasing, never reused (a device skips
    /// sequence numbers it has processed). Persisted in `meta` with every
    /// transaction that uses it.
    next_seq: u64,
}

/// What `/metrics` reads from the store.
pub struct Stats {
    pub stored_entries: u64,
    pub active_devices: u64,
    pub revoked_devices: u64,
}

/// The store.
pub struct Db {
    inner: Mutex<Inner>,
    /// When each device last made an authenticated request (seconds), kept
    /// in memory and written every few seconds ([`Db::flush_seen`]): an
    /// admin's "last seen", not worth a write per request.
    seen: Mutex<std::collections::HashMap<String, u64>>,
}

/// Open a connection with the settings every process (server and admin CLI) uses.
/// Add a column to a table made before it existed. Two processes may open
/// an old store at once (the server and an admin command): whichever adds
/// it second finds it there.
fn add_column(conn: &Connection, table: &str, decl: &str) -> Result<(), rusqlite::Error> {
    match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {decl}")) {
        Err(e) if !e.to_string().contains("duplicate column") => Err(e),
        _ => Ok(()),
    }
}

pub fn connect(dir: &Path) -> Result<Connection, rusqlite::Error> {
    // Never start a store in a directory no organisation was created in
    // (a mistyped `--data`).
    if !dir.join("org.key").exists() {
        return Err(rusqlite::Error::ToSqlConversionFailure(
            crate::ServeError::NotInitialised(dir.display().to_string()).into(),
        ));
    }
    private_files(dir).map_err(|_| rusqlite::Error::InvalidPath(dir.into()))?;
    let conn = Connection::open(dir.join("sitrep.db"))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Deleted ciphertext is overwritten, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    // Columns added since the first release, for a store made before them.
    add_column(&conn, "devices", "last_seen INTEGER")?;
    add_column(&conn, "push_subscriptions", "p256dh BLOB")?;
    add_column(&conn, "push_subscriptions", "auth BLOB")?;
    Ok(conn)
}

/// The database is created owner-only (0600) before SQLite opens it, and an
/// existing one (with its WAL and shared-memory files, which SQLite creates
/// with the database's mode) is tightened to that.
fn private_files(dir: &Path) -> std::io::Result<()> {
    crate::org::private_dir(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        // Only when it does not exist yet: closing a descriptor of a database
        // file drops every POSIX lock this process holds on it, including
        // SQLite's of the server's own connection, and an admin request
        // served in the server process opens a second connection (closing
        // our descriptor there once corrupted the store while another
        // process wrote).
        let db = dir.join("sitrep.db");
        if !db.exists() {
            match std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&db)
            {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        for f in ["sitrep.db", "sitrep.db-wal", "sitrep.db-shm"] {
            match std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
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
        let stored: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(1);
        let max_seq: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM messages", [], |r| {
                r.get(0)
            })?;
        let next_seq = stored.max(max_seq + 1).max(1) as u64;
        Ok(Self {
            inner: Mutex::new(Inner {
                conn,
                counters: Counters { next_seq },
            }),
            seen: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug; the connection itself is
        // still consistent (SQLite rolled back), so carry on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The signed directory in force.
    pub fn directory(&self) -> Result<Option<Vec<u8>>, ApiErr> {
        crate::directory::current(&self.lock().conn).map_err(db_err)
    }

    /// A member of staff takes (`take`) or hands back a role: the server
    /// re-signs the directory with the organisation key and audits it.
    pub fn role_holder(
        &self,
        key: &ed25519_dalek::SigningKey,
        user: &str,
        device: &str,
        role: &str,
        take: bool,
    ) -> Result<sitrep_wire::directory::Directory, ApiErr> {
        let mut g = self.lock();
        let actor = format!("{user}/{device}");
        let action = if take { "role.take" } else { "role.handback" };
        let (user, role) = (user.to_string(), role.to_string());
        crate::directory::update(&mut g.conn, key, &actor, action, |d| {
            let eligible = d.role(&role).map(|r| d.may_hold(r, &user));
            let r = d.roles.iter_mut().find(|r| r.id == role).ok_or(
                sitrep_wire::directory::DirectoryError::Invalid("no such role"),
            )?;
            if take && eligible != Some(true) {
                return Err(sitrep_wire::directory::DirectoryError::Invalid(
                    NOT_ELIGIBLE,
                ));
            }
            if take {
                if !r.holders.contains(&user) {
                    r.holders.push(user.clone());
                }
            } else {
                r.holders.retain(|h| h != &user);
            }
            Ok(format!("role={role} user={user}"))
        })
        .map_err(|e| {
            if e.to_string().contains("no such role") {
                ApiErr::not_found("no_role", "no such role")
            } else if e.to_string().contains(NOT_ELIGIBLE) {
                ApiErr::forbidden(
                    "not_eligible",
                    "the organisation has not made you eligible for this role",
                )
            } else {
                tracing::error!(error = %e, "directory update failed");
                ApiErr::internal()
            }
        })
    }

    /// Append to the audit log (for actions devices report, and user wipes).
    pub fn audit(
        &self,
        key: &ed25519_dalek::SigningKey,
        actor: &str,
        action: &str,
        detail: &str,
        at: u64,
    ) -> Result<(u64, [u8; 32]), ApiErr> {
        let mut g = self.lock();
        crate::audit::append(&mut g.conn, key, actor, action, detail, at).map_err(db_err)
    }

    /// Look up a bearer token.
    pub fn authenticate(&self, token_hash: &[u8]) -> Result<Option<DeviceRow>, ApiErr> {
        let row = self.authenticate_row(token_hash)?;
        if let Some(d) = &row
            && let Ok(mut seen) = self.seen.lock()
        {
            seen.insert(d.device_id.clone(), crate::now_secs());
        }
        Ok(row)
    }

    /// Write the "last seen" times gathered since the last flush.
    pub fn flush_seen(&self) -> Result<(), ApiErr> {
        let batch = match self.seen.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(_) => return Ok(()),
        };
        if batch.is_empty() {
            return Ok(());
        }
        // Losing a "last seen" in a crash is harmless.
        self.without_fsync(|tx| {
            let mut st = tx
                .prepare_cached(
                    "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE device_id = ?1",
                )
                .map_err(db_err)?;
            for (device, at) in &batch {
                st.execute(params![device, *at as i64]).map_err(db_err)?;
            }
            Ok(())
        })
    }

    fn authenticate_row(&self, token_hash: &[u8]) -> Result<Option<DeviceRow>, ApiErr> {
        let g = self.lock();
        g.conn
            .query_row(
                "SELECT device_id, user_id, revoked_at IS NOT NULL, signature_key FROM devices WHERE token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(DeviceRow {
                        device_id: r.get(0)?,
                        user_id: r.get(1)?,
                        revoked: r.get(2)?,
                        signature_key: r.get(3)?,
                    })
                },
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
    /// is consumed (atomically) if `one_time_ok(device)` allows this claimer
    /// another of that device's, else the last-resort one is handed out (so a
    /// claimer draining a colleague's one-time KeyPackages only ever gets her
    /// last-resort one, which still works).
    pub fn claim_key_packages(
        &self,
        user_ids: &[String],
        only_devices: &[String],
        mut one_time_ok: impl FnMut(&str) -> bool,
    ) -> Result<Claimed, ApiErr> {
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
                if !only_devices.is_empty() && !only_devices.contains(&d) {
                    continue;
                }
                let one: Option<Vec<u8>> = if one_time_ok(&d) {
                    tx.query_row(
                        "DELETE FROM key_packages WHERE id = (
                            SELECT id FROM key_packages WHERE device_id = ?1 AND last_resort = 0 ORDER BY id LIMIT 1)
                         RETURNING kp",
                        [&d],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?
                } else {
                    None
                };
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

    /// Register a new group at epoch 0 with its creator as the only member,
    /// with the delivery service's public state of it (`ds::create`).
    pub fn create_group(
        &self,
        group_id: &[u8],
        device_id: &str,
        now: u64,
        state: &[u8],
    ) -> Result<(), ApiErr> {
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
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
            let from = inner.counters.next_seq - 1;
            tx.execute(
                "INSERT INTO memberships (group_id, device_id, from_seq) VALUES (?1, ?2, ?3)",
                params![group_id, device_id, from as i64],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO group_state (group_id, state) VALUES (?1, ?2)",
                params![group_id, state],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    fn members(tx: &rusqlite::Transaction<'_>, group_id: &[u8]) -> Result<Vec<String>, ApiErr> {
        let mut stmt = tx
            .prepare_cached(
                "SELECT device_id FROM memberships WHERE group_id = ?1 AND to_seq IS NULL",
            )
            .map_err(db_err)?;
        let rows = stmt.query_map([group_id], |r| r.get(0)).map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// A submission already accepted with this client id: its recipients and
    /// (for commits) the epoch it produced.
    fn submitted(
        tx: &rusqlite::Transaction<'_>,
        sender: &str,
        client_id: &str,
    ) -> Result<Option<(i64, Option<i64>)>, ApiErr> {
        tx.query_row(
            "SELECT recipients, epoch FROM submissions WHERE sender_device = ?1 AND client_id = ?2",
            params![sender, client_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)
    }

    /// The group's epoch and current members; refuses a sender who is not one.
    fn group_for(
        tx: &rusqlite::Transaction<'_>,
        group_id: &[u8],
        sender: &str,
    ) -> Result<(u64, Vec<String>), ApiErr> {
        let epoch: i64 = tx
            .query_row(
                "SELECT epoch FROM groups WHERE group_id = ?1",
                [group_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| ApiErr::not_found("unknown_group", "no such group"))?;
        let members = Self::members(tx, group_id)?;
        if !members.iter().any(|m| m == sender) {
            return Err(ApiErr::forbidden(
                "not_a_member",
                "this device is not in the group",
            ));
        }
        Ok((epoch as u64, members))
    }

    /// Append one message to the log; returns its sequence number.
    #[allow(clippy::too_many_arguments)]
    fn append(
        counters: &mut Counters,
        tx: &rusqlite::Transaction<'_>,
        group_id: &[u8],
        kind: EntryKind,
        epoch: u64,
        sender: &str,
        payload: &[u8],
        now: u64,
    ) -> Result<u64, ApiErr> {
        let seq = counters.next_seq;
        counters.next_seq += 1;
        tx.prepare_cached(
            "INSERT INTO messages (seq, group_id, kind, epoch, sender_device, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut st| {
            st.execute(params![
                seq as i64,
                group_id,
                kind as u8,
                epoch as i64,
                sender,
                payload,
                now as i64
            ])
        })
        .map_err(db_err)?;
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('next_seq', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut st| st.execute([counters.next_seq as i64]))
        .map_err(db_err)?;
        Ok(seq)
    }

    fn pushes(
        to: &[String],
        skip: &str,
        seq: u64,
        kind: EntryKind,
        payload: Arc<[u8]>,
    ) -> Delivery {
        Delivery {
            recipients: to.iter().filter(|d| *d != skip).cloned().collect(),
            seq,
            kind,
            payload,
        }
    }

    /// Accept a commit if it is valid for the group's current state (see
    /// `ds::commit`: current epoch, signed by the posting device's leaf, adds
    /// and removes only), append it to the group's log (the members it
    /// removes still receive it) and release its Welcome to the joiners only,
    /// who are read from the commit. Returns the new epoch and whether this
    /// was a retry; `publish` runs under the lock, so pushes stay in order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit(
        &self,
        sender: &crate::ds::Enrolled,
        org_public: &[u8],
        group_id: &[u8],
        client_id: &str,
        epoch: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        now: u64,
        publish: impl FnOnce(Vec<Delivery>),
    ) -> Result<(u64, bool), ApiErr> {
        let sender_id = sender.device_id.as_str();
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if let Some((_, e)) = Self::submitted(&tx, sender_id, client_id)? {
            return Ok((e.unwrap_or(0) as u64, true));
        }
        let (current, members) = Self::group_for(&tx, group_id, sender_id)?;
        if current != epoch {
            return Err(ApiErr::epoch_conflict(current));
        }
        let state: Vec<u8> = tx
            .query_row(
                "SELECT state FROM group_state WHERE group_id = ?1",
                [group_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| {
                ApiErr::conflict(
                    "no_group_state",
                    "the server holds no validated state of this group; create it again",
                )
            })?;
        let accepted = {
            let mut st = tx
                .prepare_cached(
                    "SELECT signature_key FROM devices WHERE device_id = ?1 AND revoked_at IS NULL",
                )
                .map_err(db_err)?;
            crate::ds::commit(
                &state,
                group_id,
                &commit,
                welcome.as_deref(),
                sender,
                org_public,
                |d| st.query_row([d], |r| r.get(0)).optional().ok().flatten(),
            )
            .map_err(|e| match e {
                crate::ds::DsError::WrongEpoch(c) => ApiErr::epoch_conflict(c),
                crate::ds::DsError::State => {
                    tracing::error!("stored group state unreadable");
                    ApiErr::internal()
                }
                e => ApiErr::bad_request("bad_commit", &e.to_string()),
            })?
        };
        if accepted.epoch != epoch + 1 {
            return Err(ApiErr::internal());
        }
        tx.execute(
            "UPDATE group_state SET state = ?2 WHERE group_id = ?1",
            params![group_id, accepted.state],
        )
        .map_err(db_err)?;
        // Who the commit adds and removes, from the commit itself. A removed
        // device the server already stopped delivering to (it left, or was
        // revoked) has nothing to close.
        let remove: Vec<String> = accepted
            .removed
            .iter()
            .filter(|d| members.contains(d))
            .cloned()
            .collect();
        let add: Vec<String> = accepted
            .added
            .iter()
            .filter(|d| !members.contains(d) || remove.contains(d))
            .cloned()
            .collect();
        let routed = Routed {
            members,
            add,
            remove,
            welcome_to: accepted.added,
        };
        Self::append_commit(
            &mut inner.counters,
            tx,
            sender_id,
            group_id,
            client_id,
            epoch,
            commit,
            welcome,
            routed,
            now,
            publish,
        )
    }

    /// [`Db::commit`] with the routing given, unvalidated: for the store's own
    /// tests, which use opaque payloads.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    fn commit_routed(
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
        publish: impl FnOnce(Vec<Delivery>),
    ) -> Result<(u64, bool), ApiErr> {
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let (current, members) = Self::group_for(&tx, group_id, sender)?;
        assert_eq!(current, epoch);
        let routed = Routed {
            members,
            add: add.to_vec(),
            remove: remove.to_vec(),
            welcome_to: add.to_vec(),
        };
        Self::append_commit(
            &mut inner.counters,
            tx,
            sender,
            group_id,
            client_id,
            epoch,
            commit,
            welcome,
            routed,
            now,
            publish,
        )
    }

    /// Store an accepted commit: next epoch, the commit in the log for every
    /// member (removed ones included), memberships, the Welcome for its
    /// joiners, the submission; then push.
    #[allow(clippy::too_many_arguments)]
    fn append_commit(
        counters: &mut Counters,
        tx: rusqlite::Transaction<'_>,
        sender: &str,
        group_id: &[u8],
        client_id: &str,
        epoch: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        routed: Routed,
        now: u64,
        publish: impl FnOnce(Vec<Delivery>),
    ) -> Result<(u64, bool), ApiErr> {
        let Routed {
            members,
            add,
            remove,
            welcome_to,
        } = routed;
        let new_epoch = epoch + 1;
        tx.execute(
            "UPDATE groups SET epoch = ?2 WHERE group_id = ?1",
            params![group_id, new_epoch as i64],
        )
        .map_err(db_err)?;
        let commit_len = commit.len();
        let seq = Self::append(
            counters,
            &tx,
            group_id,
            EntryKind::Commit,
            epoch,
            sender,
            &commit,
            now,
        )?;
        let payload: Arc<[u8]> = Arc::from(commit);
        let mut pushes = vec![Self::pushes(
            &members,
            sender,
            seq,
            EntryKind::Commit,
            payload,
        )];
        for r in &remove {
            tx.execute(
                "UPDATE memberships SET to_seq = ?3 WHERE group_id = ?1 AND device_id = ?2 AND to_seq IS NULL",
                params![group_id, r, seq as i64],
            )
            .map_err(db_err)?;
        }
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO memberships (group_id, device_id, from_seq) VALUES (?1, ?2, ?3)",
                )
                .map_err(db_err)?;
            for a in &add {
                st.execute(params![group_id, a, seq as i64])
                    .map_err(db_err)?;
            }
        }
        if let Some(w) = welcome {
            let wseq = Self::append(
                counters,
                &tx,
                group_id,
                EntryKind::Welcome,
                new_epoch,
                sender,
                &w,
                now,
            )?;
            let mut st = tx
                .prepare_cached("INSERT INTO welcome_targets (device_id, seq) VALUES (?1, ?2)")
                .map_err(db_err)?;
            for a in &welcome_to {
                st.execute(params![a, wseq as i64]).map_err(db_err)?;
            }
            let wpayload: Arc<[u8]> = Arc::from(w);
            pushes.push(Self::pushes(
                &welcome_to,
                sender,
                wseq,
                EntryKind::Welcome,
                wpayload,
            ));
        }
        let recipients = members.len().saturating_sub(1);
        tx.execute(
            "INSERT INTO submissions (sender_device, client_id, created_at, recipients, epoch) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![sender, client_id, now as i64, recipients as i64, new_epoch as i64],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::debug!(
            epoch = new_epoch,
            bytes = commit_len,
            recipients,
            "commit accepted"
        );
        publish(pushes);
        Ok((new_epoch, false))
    }

    /// A member device fell out of step and asks to be re-added: a `rejoin`
    /// entry naming it goes to the other members. Idempotent per client id.
    pub fn rejoin(
        &self,
        device: &str,
        group_id: &[u8],
        client_id: &str,
        now: u64,
        publish: impl FnOnce(Vec<Delivery>),
    ) -> Result<bool, ApiErr> {
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if Self::submitted(&tx, device, client_id)?.is_some() {
            return Ok(true);
        }
        let (epoch, members) = Self::group_for(&tx, group_id, device)?;
        let mut payload = vec![group_id.len() as u8];
        payload.extend_from_slice(group_id);
        payload.extend_from_slice(device.as_bytes());
        let seq = Self::append(
            &mut inner.counters,
            &tx,
            group_id,
            EntryKind::Rejoin,
            epoch,
            device,
            &payload,
            now,
        )?;
        tx.execute(
            "INSERT INTO submissions (sender_device, client_id, created_at, recipients) VALUES (?1, ?2, ?3, ?4)",
            params![device, client_id, now as i64, members.len().saturating_sub(1) as i64],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        publish(vec![Self::pushes(
            &members,
            device,
            seq,
            EntryKind::Rejoin,
            Arc::from(payload),
        )]);
        Ok(false)
    }

    /// Append an application message to the group's log for every other member.
    /// Answers after the transaction is durable; `publish` runs under the lock.
    /// `check` looks at the payload's clear framing once the group and the
    /// sender's membership are known.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        sender: &str,
        group_id: &[u8],
        client_id: &str,
        payload: Vec<u8>,
        now: u64,
        check: impl FnOnce(&[u8], &[u8], u64) -> Result<(), ApiErr>,
        publish: impl FnOnce(Vec<Delivery>),
    ) -> Result<(u64, bool, u64), ApiErr> {
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if let Some((n, _)) = Self::submitted(&tx, sender, client_id)? {
            let seq: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM sent_log WHERE sender_device = ?1 AND client_id = ?2",
                    params![sender, client_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            return Ok((n as u64, true, seq.unwrap_or(0) as u64));
        }
        let (epoch, members) = Self::group_for(&tx, group_id, sender)?;
        check(&payload, group_id, epoch)?;
        let n = members.len() - 1;
        let mut pushes = Vec::new();
        let mut sent_seq = 0;
        if n > 0 {
            let seq = Self::append(
                &mut inner.counters,
                &tx,
                group_id,
                EntryKind::Application,
                epoch,
                sender,
                &payload,
                now,
            )?;
            sent_seq = seq;
            tx.prepare_cached(
                "INSERT INTO sent_log (seq, group_id, sender_device, client_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db_err)?
            .execute(params![seq as i64, group_id, sender, client_id, now as i64])
            .map_err(db_err)?;
            let payload: Arc<[u8]> = Arc::from(payload);
            pushes.push(Self::pushes(
                &members,
                sender,
                seq,
                EntryKind::Application,
                payload,
            ));
        }
        tx.execute(
            "INSERT INTO submissions (sender_device, client_id, created_at, recipients) VALUES (?1, ?2, ?3, ?4)",
            params![sender, client_id, now as i64, n as i64],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        publish(pushes);
        Ok((n as u64, false, sent_seq))
    }

    /// Register a Web Push endpoint for a device (a repeat is a no-op); the
    /// oldest go past [`crate::push::MAX_PER_DEVICE`].
    pub fn push_subscribe(
        &self,
        device: &str,
        endpoint: &str,
        keys: Option<(Vec<u8>, Vec<u8>)>,
        now: u64,
    ) -> Result<(), ApiErr> {
        let (p256dh, auth) = keys.unzip();
        self.without_fsync(|tx| {
            tx.execute(
                "INSERT INTO push_subscriptions (device_id, endpoint, created_at, p256dh, auth) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (device_id, endpoint) DO UPDATE SET p256dh = excluded.p256dh, auth = excluded.auth",
                params![device, endpoint, now as i64, p256dh, auth],
            )
            .map_err(db_err)?;
            tx.execute(
                "DELETE FROM push_subscriptions WHERE device_id = ?1 AND endpoint NOT IN \
                 (SELECT endpoint FROM push_subscriptions WHERE device_id = ?1 \
                  ORDER BY created_at DESC, rowid DESC LIMIT ?2)",
                params![device, crate::push::MAX_PER_DEVICE as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }

    /// Forget a Web Push endpoint (the device asked, or its push service
    /// answered that it is gone).
    pub fn push_unsubscribe(&self, device: &str, endpoint: &str) -> Result<(), ApiErr> {
        self.without_fsync(|tx| {
            tx.execute(
                "DELETE FROM push_subscriptions WHERE device_id = ?1 AND endpoint = ?2",
                params![device, endpoint],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }

    /// A device's Web Push endpoints, with their encryption keys where the
    /// browser gave them; none for a revoked device.
    pub fn push_endpoints(&self, device: &str) -> Result<Vec<PushEndpoint>, ApiErr> {
        let g = self.lock();
        let mut q = g
            .conn
            .prepare_cached(
                "SELECT p.endpoint, p.p256dh, p.auth FROM push_subscriptions p JOIN devices d ON d.device_id = p.device_id \
                 WHERE p.device_id = ?1 AND d.revoked_at IS NULL",
            )
            .map_err(db_err)?;
        let rows: Result<Vec<PushEndpoint>, _> = q
            .query_map([device], |r| {
                let keys = match (
                    r.get::<_, Option<Vec<u8>>>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                ) {
                    (Some(k), Some(a)) => Some((k, a)),
                    _ => None,
                };
                Ok((r.get(0)?, keys))
            })
            .map_err(db_err)?
            .collect();
        rows.map_err(db_err)
    }

    /// The device has shown the group's messages up to `seq` to its user.
    /// Markers only move forward, and never past what the device has
    /// fetched (its acknowledged cursor). Returns the marker as stored.
    pub fn mark_read(
        &self,
        device: &str,
        group_id: &[u8],
        seq: u64,
        now: u64,
    ) -> Result<u64, ApiErr> {
        self.without_fsync(|tx| {
            require_member(tx, group_id, device, 0)?;
            let cursor: i64 = tx
                .query_row(
                    "SELECT cursor FROM devices WHERE device_id = ?1",
                    [device],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            let seq = (seq as i64).min(cursor);
            let marker: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM read_log WHERE group_id = ?1 AND device_id = ?2",
                    params![group_id, device],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if seq <= marker {
                return Ok(marker as u64);
            }
            tx.execute(
                "INSERT INTO read_log (group_id, device_id, seq, at) VALUES (?1, ?2, ?3, ?4)",
                params![group_id, device, seq, now as i64],
            )
            .map_err(db_err)?;
            Ok(seq as u64)
        })
    }

    /// Per device that was a member when message `seq` of the group was
    /// sent (its sender excepted): whether the message reached the device
    /// (its acknowledged cursor) and when the device reported it read. Only
    /// a current member of the group may ask.
    pub fn message_status(
        &self,
        asker: &str,
        group_id: &[u8],
        seq: u64,
    ) -> Result<Vec<MessageStatusRow>, ApiErr> {
        let g = self.lock();
        // A current member who was in the group when the message was sent.
        require_member(&g.conn, group_id, asker, seq)?;
        let sender: String = g
            .conn
            .query_row(
                "SELECT sender_device FROM sent_log WHERE seq = ?1 AND group_id = ?2",
                params![seq as i64, group_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .ok_or_else(|| ApiErr::not_found("unknown_message", "no such message in this group"))?;
        let mut st = g
            .conn
            .prepare_cached(
                "SELECT d.user_id, d.device_id, d.cursor >= ?2,
                        (SELECT MIN(r.at) FROM read_log r WHERE r.group_id = ms.group_id
                            AND r.device_id = ms.device_id AND r.seq >= ?2)
                   FROM memberships ms
                   JOIN devices d ON d.device_id = ms.device_id
                  WHERE ms.group_id = ?1 AND ms.from_seq < ?2
                    AND (ms.to_seq IS NULL OR ms.to_seq >= ?2)
                    AND ms.device_id != ?3
                  ORDER BY d.user_id, d.device_id",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![group_id, seq as i64, sender], |r| {
                Ok(MessageStatusRow {
                    user_id: r.get(0)?,
                    device_id: r.get(1)?,
                    delivered: r.get(2)?,
                    read_at: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// Every membership of the group with how far its device has got in the
    /// group's own messages (never the global cursor, which would tell a
    /// member about the device's other groups). Current members only.
    pub fn receipts(
        &self,
        asker: &str,
        group_id: &[u8],
    ) -> Result<Vec<sitrep_wire::api::DeviceReceipt>, ApiErr> {
        let g = self.lock();
        require_member(&g.conn, group_id, asker, 0)?;
        let mut st = g
            .conn
            .prepare_cached(
                "SELECT d.user_id, d.device_id, ms.from_seq, ms.to_seq,
                        COALESCE((SELECT MAX(s.seq) FROM sent_log s
                                   WHERE s.group_id = ms.group_id AND s.seq <= d.cursor
                                     AND s.seq > ms.from_seq
                                     AND (ms.to_seq IS NULL OR s.seq <= ms.to_seq)), 0),
                        COALESCE((SELECT MAX(r.seq) FROM read_log r
                                   WHERE r.group_id = ms.group_id AND r.device_id = ms.device_id), 0)
                   FROM memberships ms
                   JOIN devices d ON d.device_id = ms.device_id
                  WHERE ms.group_id = ?1
                  ORDER BY d.user_id, d.device_id, ms.from_seq
                  LIMIT 100000",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map(params![group_id], |r| {
                Ok(sitrep_wire::api::DeviceReceipt {
                    user_id: r.get(0)?,
                    device_id: r.get(1)?,
                    from_seq: r.get::<_, i64>(2)? as u64,
                    to_seq: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    delivered_through: r.get::<_, i64>(4)? as u64,
                    read_through: r.get::<_, i64>(5)? as u64,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// The device leaves the group: its Remove proposal goes into the log for
    /// the others (the next to sync commits it) and its membership ends here,
    /// so nothing sent afterwards is delivered to it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn leave(
        &self,
        device: &crate::ds::Enrolled,
        org_public: &[u8],
        group_id: &[u8],
        client_id: &str,
        proposal: Vec<u8>,
        now: u64,
        publish: impl FnOnce(Vec<Delivery>),
    ) -> Result<bool, ApiErr> {
        let sender = device.device_id.as_str();
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        if Self::submitted(&tx, sender, client_id)?.is_some() {
            return Ok(true);
        }
        let (epoch, members) = Self::group_for(&tx, group_id, sender)?;
        // The proposal must be this device's own removal, valid now; it is
        // queued in the server's view for the commit that covers it.
        let state: Option<Vec<u8>> = tx
            .query_row(
                "SELECT state FROM group_state WHERE group_id = ?1",
                [group_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        let state = state.ok_or_else(|| {
            ApiErr::conflict(
                "no_group_state",
                "the server holds no validated state of this group",
            )
        })?;
        let state = crate::ds::leave(&state, group_id, &proposal, device, org_public).map_err(
            |e| match e {
                crate::ds::DsError::WrongEpoch(c) => ApiErr::epoch_conflict(c),
                e => ApiErr::bad_request("bad_proposal", &e.to_string()),
            },
        )?;
        tx.execute(
            "UPDATE group_state SET state = ?2 WHERE group_id = ?1",
            params![group_id, state],
        )
        .map_err(db_err)?;
        let seq = Self::append(
            &mut inner.counters,
            &tx,
            group_id,
            EntryKind::Proposal,
            epoch,
            sender,
            &proposal,
            now,
        )?;
        tx.execute(
            "UPDATE memberships SET to_seq = ?3 WHERE group_id = ?1 AND device_id = ?2 AND to_seq IS NULL",
            params![group_id, sender, seq as i64],
        )
        .map_err(db_err)?;
        tx.execute(
            "INSERT INTO submissions (sender_device, client_id, created_at, recipients) VALUES (?1, ?2, ?3, ?4)",
            params![sender, client_id, now as i64, members.len() as i64 - 1],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        publish(vec![Self::pushes(
            &members,
            sender,
            seq,
            EntryKind::Proposal,
            Arc::from(proposal),
        )]);
        Ok(false)
    }

    /// Whether the store answers (for `/readyz`): a read on the writer's
    /// connection, so a store that is locked or gone is not ready.
    pub fn ready(&self) -> Result<(), ApiErr> {
        let g = self.lock();
        g.conn
            .query_row("SELECT COUNT(*) FROM meta", [], |r| r.get::<_, i64>(0))
            .map_err(db_err)?;
        Ok(())
    }

    /// Counts for `/metrics`.
    pub fn stats(&self) -> Result<Stats, ApiErr> {
        let g = self.lock();
        let stored_entries: i64 = g
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .map_err(db_err)?;
        let (active, revoked): (i64, i64) = g
            .conn
            .query_row(
                "SELECT COALESCE(SUM(revoked_at IS NULL), 0), COALESCE(SUM(revoked_at IS NOT NULL), 0) FROM devices",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db_err)?;
        Ok(Stats {
            stored_entries: stored_entries as u64,
            active_devices: active as u64,
            revoked_devices: revoked as u64,
        })
    }

    /// A user's devices.
    pub fn devices_of(&self, user_id: &str) -> Result<Vec<(String, u64, Option<u64>)>, ApiErr> {
        let g = self.lock();
        let mut st = g
            .conn
            .prepare_cached("SELECT device_id, created_at, revoked_at FROM devices WHERE user_id = ?1 ORDER BY created_at, device_id")
            .map_err(db_err)?;
        let rows = st
            .query_map([user_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, Option<i64>>(2)?.map(|t| t as u64),
                ))
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    /// Revoke a device of `user_id` (from another of the user's devices),
    /// with its audit entry `(key, actor, detail)` in the same transaction.
    pub fn revoke_own(
        &self,
        user_id: &str,
        device_id: &str,
        now: u64,
        audit: (&ed25519_dalek::SigningKey, &str, &str),
    ) -> Result<(), ApiErr> {
        let mut g = self.lock();
        let tx = g
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let n = tx
            .execute(
                "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?3) WHERE device_id = ?1 AND user_id = ?2",
                params![device_id, user_id, now as i64],
            )
            .map_err(db_err)?;
        if n == 0 {
            return Err(ApiErr::not_found(
                "unknown_device",
                "no such device of yours",
            ));
        }
        let (key, actor, detail) = audit;
        crate::audit::append_in(&tx, key, actor, "device.wipe", detail, now).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Tell the groups of every newly revoked device: end its memberships, drop
    /// its KeyPackages, and append a `Revoked` entry for the other members, the
    /// next of whom to sync commits its removal. Runs in the server's
    /// background task, so revocations written by `sitrep admin wipe` in another
    /// process take effect within seconds.
    pub fn sweep_revocations(
        &self,
        now: u64,
        publish: impl FnOnce(Vec<Delivery>),
    ) -> Result<usize, ApiErr> {
        let mut g = self.lock();
        let inner = &mut *g;
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let revoked: Vec<String> = {
            let mut st = tx
                .prepare("SELECT device_id FROM devices WHERE revoked_at IS NOT NULL AND revocation_done = 0")
                .map_err(db_err)?;
            let rows = st.query_map([], |r| r.get(0)).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        let mut pushes = Vec::new();
        for d in &revoked {
            let groups: Vec<Vec<u8>> = {
                let mut st = tx
                    .prepare(
                        "SELECT group_id FROM memberships WHERE device_id = ?1 AND to_seq IS NULL",
                    )
                    .map_err(db_err)?;
                let rows = st.query_map([d], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            };
            for gid in groups {
                let epoch: i64 = tx
                    .query_row(
                        "SELECT epoch FROM groups WHERE group_id = ?1",
                        [&gid],
                        |r| r.get(0),
                    )
                    .map_err(db_err)?;
                // Payload: group id length, group id, device id.
                let mut payload = vec![gid.len() as u8];
                payload.extend_from_slice(&gid);
                payload.extend_from_slice(d.as_bytes());
                let seq = Self::append(
                    &mut inner.counters,
                    &tx,
                    &gid,
                    EntryKind::Revoked,
                    epoch as u64,
                    "server",
                    &payload,
                    now,
                )?;
                tx.execute(
                    "UPDATE memberships SET to_seq = ?3 WHERE group_id = ?1 AND device_id = ?2 AND to_seq IS NULL",
                    params![gid, d, seq as i64 - 1],
                )
                .map_err(db_err)?;
                let members = Self::members(&tx, &gid)?;
                pushes.push(Self::pushes(
                    &members,
                    d,
                    seq,
                    EntryKind::Revoked,
                    Arc::from(payload),
                ));
            }
            tx.execute("DELETE FROM key_packages WHERE device_id = ?1", [d])
                .map_err(db_err)?;
            tx.execute(
                "UPDATE devices SET revocation_done = 1 WHERE device_id = ?1",
                [d],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        if !revoked.is_empty() {
            tracing::info!(devices = revoked.len(), "revocations applied to groups");
        }
        publish(pushes);
        Ok(revoked.len())
    }

    /// The signed policy in force.
    pub fn policy(&self) -> Result<Option<Vec<u8>>, ApiErr> {
        current_policy(&self.lock().conn).map_err(db_err)
    }

    /// A device's entries after `after` (and after what it acknowledged), in
    /// order, at most `limit`: its groups' logs while it was a member, minus its
    /// own messages, plus Welcomes addressed to it. A page also stops before
    /// its payloads would pass `max_bytes`, but always holds at least one entry,
    /// so a single larger entry still goes out alone. `more` is true when
    /// entries wait beyond the page.
    pub fn fetch(
        &self,
        device_id: &str,
        after: u64,
        limit: u64,
        max_bytes: usize,
    ) -> Result<(Vec<Queued>, bool), ApiErr> {
        let g = self.lock();
        let cursor: i64 = g
            .conn
            .query_row(
                "SELECT cursor FROM devices WHERE device_id = ?1",
                [device_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .unwrap_or(0);
        let after = after.max(cursor as u64) as i64;
        // Sizes first: SQLite answers length() of a blob without loading it, so
        // the page is cut before any payload is read (a sort over the payloads
        // themselves held every one of them in memory at once).
        let mut stmt = g
            .conn
            .prepare_cached(
                "SELECT m.seq, m.kind, length(m.payload) FROM memberships ms
                   JOIN messages m ON m.group_id = ms.group_id
                    AND m.seq > ms.from_seq AND (ms.to_seq IS NULL OR m.seq <= ms.to_seq)
                  WHERE ms.device_id = ?1 AND m.seq > ?2 AND m.kind != 1 AND m.sender_device != ?1
                 UNION ALL
                 SELECT m.seq, m.kind, length(m.payload) FROM welcome_targets w
                   JOIN messages m ON m.seq = w.seq
                  WHERE w.device_id = ?1 AND w.seq > ?2
                 ORDER BY 1 LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![device_id, after, (limit + 1) as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, u8>(1)?, r.get::<_, i64>(2)?))
            })
            .map_err(db_err)?;
        let (mut page, mut bytes, mut more) = (Vec::new(), 0usize, false);
        for row in rows {
            let (seq, kind, len) = row.map_err(db_err)?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if page.len() as u64 >= limit
                || (!page.is_empty() && bytes.saturating_add(len) > max_bytes)
            {
                more = true;
                break;
            }
            bytes = bytes.saturating_add(len);
            page.push((seq, kind));
        }
        let mut load = g
            .conn
            .prepare_cached("SELECT payload FROM messages WHERE seq = ?1")
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(page.len());
        for (seq, kind) in page {
            let kind = EntryKind::from_u8(kind).ok_or_else(ApiErr::internal)?;
            // Under the store lock nothing deletes in between; skip rather than
            // fail if another connection did.
            let Some(payload) = load
                .query_row([seq], |r| r.get::<_, Vec<u8>>(0))
                .optional()
                .map_err(db_err)?
            else {
                continue;
            };
            out.push(Queued {
                device_id: device_id.to_string(),
                seq: seq as u64,
                kind,
                payload: Arc::from(payload),
            });
        }
        Ok((out, more))
    }

    /// The device has processed everything up to `up_to`.
    pub fn ack(&self, device_id: &str, up_to: u64) -> Result<(), ApiErr> {
        self.ack_many(&[(device_id.to_string(), up_to)])
    }

    /// Run `f` in one transaction that commits without waiting for fsync
    /// (`synchronous=NORMAL` for this transaction only). Only for writes whose
    /// loss in a crash is harmless; the next durable commit syncs them too.
    fn without_fsync<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, ApiErr>,
    ) -> Result<T, ApiErr> {
        let mut g = self.lock();
        let conn = &mut g.conn;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err)?;
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let v = f(&tx)?;
            tx.commit().map_err(db_err)?;
            Ok(v)
        })();
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        result
    }

    /// Apply many acknowledgements in one transaction. An acknowledgement only
    /// moves a cursor, and losing one in a crash means a redelivery that the
    /// device skips by sequence number, so it commits without waiting for fsync
    /// (`synchronous=NORMAL` for this transaction only); the next durable commit
    /// syncs it with it.
    pub fn ack_many(&self, acks: &[(String, u64)]) -> Result<(), ApiErr> {
        self.without_fsync(|tx| {
            {
                let mut st = tx
                    .prepare_cached(
                        "UPDATE devices SET cursor = MAX(cursor, ?2) WHERE device_id = ?1",
                    )
                    .map_err(db_err)?;
                for (d, up_to) in acks {
                    st.execute(params![d, *up_to as i64]).map_err(db_err)?;
                }
            }
            Ok(())
        })
    }

    /// Delete what no device still needs: log entries every current (or
    /// not-yet-caught-up former) member has acknowledged, Welcomes their joiners
    /// acknowledged, anything older than `max_age_secs`, and the oldest entries
    /// of a group holding more than `max_backlog` (a device that far behind
    /// misses them and is told by the gap in the log). Returns rows deleted.
    pub fn gc(&self, now: u64, max_age_secs: u64, max_backlog: u64) -> Result<u64, ApiErr> {
        self.without_fsync(|tx| {
            let mut deleted = 0usize;
            let groups: Vec<(Vec<u8>, i64)> = {
                let mut st = tx
                    .prepare(
                        "SELECT g.group_id, (SELECT COUNT(*) FROM messages m WHERE m.group_id = g.group_id)
                         FROM groups g WHERE EXISTS (SELECT 1 FROM messages m WHERE m.group_id = g.group_id)",
                    )
                    .map_err(db_err)?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            };
            for (gid, count) in groups {
                // The two devices furthest behind among those that still owe an
                // acknowledgement: a message is done once everyone but its
                // sender (who never receives it) has passed it.
                let behind: Vec<(String, i64)> = {
                    let mut st = tx
                        .prepare_cached(
                            "SELECT d.device_id, d.cursor FROM memberships ms JOIN devices d ON d.device_id = ms.device_id
                              WHERE ms.group_id = ?1 AND d.revoked_at IS NULL
                                AND (ms.to_seq IS NULL OR ms.to_seq > d.cursor)
                              ORDER BY d.cursor LIMIT 2",
                        )
                        .map_err(db_err)?;
                    let rows = st
                        .query_map([&gid], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(db_err)?;
                    rows.collect::<Result<_, _>>().map_err(db_err)?
                };
                let first = behind.first().map(|b| b.1).unwrap_or(i64::MAX);
                let second = behind.get(1).map(|b| b.1).unwrap_or(i64::MAX);
                deleted += tx
                    .execute(
                        "DELETE FROM messages WHERE group_id = ?1 AND kind != 1 AND seq <= ?2",
                        params![gid, first],
                    )
                    .map_err(db_err)?;
                if let Some((laggard, _)) = behind.first() {
                    deleted += tx
                        .execute(
                            "DELETE FROM messages WHERE group_id = ?1 AND kind != 1 AND seq <= ?2 AND sender_device = ?3",
                            params![gid, second, laggard],
                        )
                        .map_err(db_err)?;
                }
                if count as u64 > max_backlog {
                    deleted += tx
                        .execute(
                            "DELETE FROM messages WHERE group_id = ?1 AND seq <= (
                               SELECT seq FROM messages WHERE group_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                            params![gid, max_backlog as i64],
                        )
                        .map_err(db_err)?;
                }
            }
            tx.execute(
                "DELETE FROM welcome_targets WHERE seq <= (SELECT cursor FROM devices d WHERE d.device_id = welcome_targets.device_id)",
                [],
            )
            .map_err(db_err)?;
            deleted += tx
                .execute(
                    "DELETE FROM messages WHERE kind = 1 AND NOT EXISTS (SELECT 1 FROM welcome_targets w WHERE w.seq = messages.seq)",
                    [],
                )
                .map_err(db_err)?;
            let cutoff = now.saturating_sub(max_age_secs) as i64;
            deleted += tx
                .execute("DELETE FROM messages WHERE created_at < ?1", [cutoff])
                .map_err(db_err)?;
            // Status metadata lives as long as undelivered ciphertext may; a
            // device's newest read marker stays.
            tx.execute("DELETE FROM sent_log WHERE created_at < ?1", [cutoff])
                .map_err(db_err)?;
            tx.execute(
                "DELETE FROM read_log WHERE at < ?1 AND EXISTS (SELECT 1 FROM read_log n
                   WHERE n.group_id = read_log.group_id AND n.device_id = read_log.device_id
                     AND n.seq > read_log.seq)",
                [cutoff],
            )
            .map_err(db_err)?;
            Ok(deleted as u64)
        })
    }
}

/// Refuse a device that is not a current member of the group, or that
/// joined at or after `since` (0: any current member).
fn require_member(
    conn: &Connection,
    group_id: &[u8],
    device: &str,
    since: u64,
) -> Result<(), ApiErr> {
    let member = conn
        .prepare_cached(
            "SELECT 1 FROM memberships WHERE group_id = ?1 AND device_id = ?2
                AND to_seq IS NULL AND (?3 = 0 OR from_seq < ?3)",
        )
        .map_err(db_err)?
        .exists(params![group_id, device, since as i64])
        .map_err(db_err)?;
    if member {
        Ok(())
    } else {
        Err(ApiErr::forbidden(
            "not_a_member",
            "this device is not in the group, or was not when that message was sent",
        ))
    }
}

/// The signed policy in force, if the organisation has set one.
pub fn current_policy(conn: &Connection) -> Result<Option<Vec<u8>>, rusqlite::Error> {
    conn.query_row(
        "SELECT signed FROM policies ORDER BY serial DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Sign and store a new policy (used by `sitrep admin policy set`, also while
/// the server runs). The serial is one above the current one.
pub fn set_policy(
    dir: &Path,
    org: &crate::org::Org,
    mut policy: sitrep_wire::policy::OrgPolicy,
    actor: &str,
) -> Result<sitrep_wire::policy::OrgPolicy, Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = connect(dir)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("SELECT COALESCE(MAX(serial), 1) FROM policies", [], |r| {
        r.get(0)
    })?;
    policy.serial = current as u64 + 1;
    let signed = sitrep_wire::policy::SignedPolicy::sign(&policy, &org.key)?;
    tx.execute(
        "INSERT INTO policies (serial, signed, created_at) VALUES (?1, ?2, ?3)",
        params![
            policy.serial as i64,
            signed.encode(),
            crate::now_secs() as i64
        ],
    )?;
    let detail = format!(
        "serial={} records_user={} record_all={} retention_default_secs={} retention_max_secs={}",
        policy.serial,
        policy.records_user.as_deref().unwrap_or("-"),
        policy.record_all,
        policy.retention_default_secs,
        policy.retention_max_secs
    );
    crate::audit::append_in(
        &tx,
        &org.key,
        actor,
        "policy.set",
        &detail,
        crate::now_secs(),
    )?;
    tx.commit()?;
    Ok(policy)
}

/// The policy in force, verified against the organisation key, or the defaults.
pub fn show_policy(
    dir: &Path,
    org: &crate::org::Org,
) -> Result<sitrep_wire::policy::OrgPolicy, Box<dyn std::error::Error + Send + Sync>> {
    let conn = connect(dir)?;
    Ok(match current_policy(&conn)? {
        Some(b) => sitrep_wire::policy::SignedPolicy::verify(&b, &org.public_key())?,
        None => sitrep_wire::policy::OrgPolicy::default(),
    })
}

/// Revoke (remote-wipe) a device: `sitrep admin wipe`, also while the server
/// runs. The server refuses the device's token at once; its groups are told
/// within seconds (see [`Db::sweep_revocations`]).
pub fn revoke_device(dir: &Path, device_id: &str, actor: &str) -> Result<bool, rusqlite::Error> {
    admin_tx(dir, |tx, key| {
        let n = tx.execute(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?2) WHERE device_id = ?1",
            params![device_id, crate::now_secs() as i64],
        )?;
        if n > 0 {
            crate::audit::append_in(
                tx,
                key,
                actor,
                "device.wipe",
                &format!("device={device_id}"),
                crate::now_secs(),
            )?;
        }
        Ok(n > 0)
    })
}

/// One user, for `sitrep admin users`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UserRow {
    /// User id.
    pub user_id: String,
    /// Name as invited.
    pub display_name: String,
    /// Role as invited.
    pub role: String,
    /// Devices not revoked.
    pub active_devices: u64,
    /// Devices revoked (wiped, or the user disabled).
    pub revoked_devices: u64,
    /// Enrolment codes not yet used and not expired.
    pub open_invites: u64,
    /// Latest request from any of the user's devices (seconds), if any.
    pub last_seen: Option<u64>,
}

/// One device, for `sitrep admin devices`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeviceAdminRow {
    /// Device id.
    pub device_id: String,
    /// Its user.
    pub user_id: String,
    /// When it enrolled (seconds).
    pub enrolled_at: u64,
    /// Its latest request (seconds; written every few seconds).
    pub last_seen: Option<u64>,
    /// When it was revoked (seconds).
    pub revoked_at: Option<u64>,
}

/// Every user the organisation has invited or enrolled.
pub fn list_users(dir: &Path) -> Result<Vec<UserRow>, rusqlite::Error> {
    let conn = connect(dir)?;
    let now = crate::now_secs() as i64;
    let mut st = conn.prepare(
        "WITH u AS (
             SELECT user_id, display_name, role, created_at FROM devices
             UNION ALL SELECT user_id, display_name, role, created_at FROM invites
             UNION ALL SELECT user_name, display_name, title, modified_at FROM scim_users
         ), latest AS (
             SELECT user_id, display_name, role,
                    ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY created_at DESC) AS n
             FROM u
         )
         SELECT l.user_id, l.display_name, l.role,
             (SELECT COUNT(*) FROM devices d WHERE d.user_id = l.user_id AND d.revoked_at IS NULL),
             (SELECT COUNT(*) FROM devices d WHERE d.user_id = l.user_id AND d.revoked_at IS NOT NULL),
             (SELECT COUNT(*) FROM invites i WHERE i.user_id = l.user_id AND i.used_at IS NULL AND i.expires_at > ?1),
             (SELECT MAX(last_seen) FROM devices d WHERE d.user_id = l.user_id)
         FROM latest l WHERE l.n = 1 ORDER BY l.user_id",
    )?;
    let rows = st.query_map([now], |r| {
        Ok(UserRow {
            user_id: r.get(0)?,
            display_name: r.get(1)?,
            role: r.get(2)?,
            active_devices: r.get::<_, i64>(3)? as u64,
            revoked_devices: r.get::<_, i64>(4)? as u64,
            open_invites: r.get::<_, i64>(5)? as u64,
            last_seen: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
        })
    })?;
    rows.collect()
}

/// Every device, or one user's.
pub fn list_devices(
    dir: &Path,
    user: Option<&str>,
) -> Result<Vec<DeviceAdminRow>, rusqlite::Error> {
    let conn = connect(dir)?;
    let mut st = conn.prepare(
        "SELECT device_id, user_id, created_at, last_seen, revoked_at FROM devices
         WHERE ?1 IS NULL OR user_id = ?1 ORDER BY user_id, created_at, device_id",
    )?;
    let rows = st.query_map([user], |r| {
        Ok(DeviceAdminRow {
            device_id: r.get(0)?,
            user_id: r.get(1)?,
            enrolled_at: r.get::<_, i64>(2)? as u64,
            last_seen: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
            revoked_at: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
        })
    })?;
    rows.collect()
}

/// What disabling a leaver did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Disabled {
    /// Devices revoked now (each is removed from every conversation by
    /// the revocation sweep, and wipes itself when it next connects).
    pub devices_revoked: u64,
    /// Enrolment codes cancelled.
    pub invites_cancelled: u64,
}

/// Disable a leaver: every device revoked, every open enrolment code
/// cancelled, in one transaction with its audit entry. `None`: no such user.
pub fn disable_user(
    dir: &Path,
    user_id: &str,
    actor: &str,
) -> Result<Option<Disabled>, rusqlite::Error> {
    admin_tx(dir, |tx, key| disable_user_in(tx, key, user_id, actor))
}

/// [`disable_user`] inside the caller's transaction.
pub(crate) fn disable_user_in(
    tx: &rusqlite::Transaction<'_>,
    key: &ed25519_dalek::SigningKey,
    user_id: &str,
    actor: &str,
) -> Result<Option<Disabled>, rusqlite::Error> {
    {
        let now = crate::now_secs() as i64;
        let known: i64 = tx.query_row(
            "SELECT (SELECT COUNT(*) FROM devices WHERE user_id = ?1) + (SELECT COUNT(*) FROM invites WHERE user_id = ?1)",
            [user_id],
            |r| r.get(0),
        )?;
        if known == 0 {
            return Ok(None);
        }
        let devices_revoked = tx.execute(
            "UPDATE devices SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
            params![user_id, now],
        )? as u64;
        let invites_cancelled = tx.execute(
            "UPDATE invites SET used_at = ?2, expires_at = MIN(expires_at, ?2) WHERE user_id = ?1 AND used_at IS NULL",
            params![user_id, now],
        )? as u64;
        // A leaver keeps no admin rights either.
        tx.execute("DELETE FROM admins WHERE user_id = ?1", [user_id])?;
        crate::audit::append_in(
            tx,
            key,
            actor,
            "user.disable",
            &format!(
                "user={user_id} devices_revoked={devices_revoked} invites_cancelled={invites_cancelled}"
            ),
            now as u64,
        )?;
        Ok(Some(Disabled {
            devices_revoked,
            invites_cancelled,
        }))
    }
}

/// The lock a running server holds on its data directory.
pub(crate) fn serve_lock(dir: &Path) -> Result<std::fs::File, crate::ServeError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("serve.lock"))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(crate::ServeError::Io(format!(
            "a sitrep server is already running on {}",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backup {
    /// The organisation it belongs to (its key's fingerprint).
    pub org_fingerprint: String,
    /// When it was taken (seconds).
    pub taken_at: u64,
    /// The last position in the log it holds.
    pub last_seq: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

fn admin_err(e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.to_string().into())
}

/// Copy the store to `out`, consistent as of one moment, while the server
/// runs (`VACUUM INTO` reads one snapshot of the WAL database). The copy
/// is stamped with its organisation's fingerprint, and the backup is in the
/// audit log. The organisation key is not in it: keep `org.key` safe on its
/// own (a restore needs a data directory initialised with it).
pub fn backup(dir: &Path, out: &Path) -> Result<Backup, rusqlite::Error> {
    let org = crate::org::Org::open(dir).map_err(admin_err)?;
    if out.exists() {
        return Err(admin_err(format!(
            "{} exists: a backup never overwrites a file",
            out.display()
        )));
    }
    let path = out
        .to_str()
        .ok_or_else(|| admin_err("the backup path is not UTF-8"))?;
    // In the audit log before the copy, so the backup holds its own entry.
    let taken_at = crate::now_secs();
    admin_tx(dir, |tx, key| {
        crate::audit::append_in(tx, key, &admin_actor(), "backup", "", taken_at)
    })?;
    let conn = connect(dir)?;
    conn.execute("VACUUM INTO ?1", [path])?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).map_err(admin_err)?;
    }
    let b = Connection::open(out)?;
    b.execute_batch(
        "CREATE TABLE backup_info (org_fingerprint TEXT NOT NULL, taken_at INTEGER NOT NULL)",
    )?;
    b.execute(
        "INSERT INTO backup_info VALUES (?1, ?2)",
        params![org.fingerprint(), taken_at as i64],
    )?;
    let last_seq: i64 = b.query_row("SELECT COALESCE(MAX(seq), 0) FROM sent_log", [], |r| {
        r.get(0)
    })?;
    drop(b);
    let bytes = std::fs::metadata(out).map_err(admin_err)?.len();
    Ok(Backup {
        org_fingerprint: org.fingerprint(),
        taken_at,
        last_seq: last_seq as u64,
        bytes,
    })
}

/// How far above a backup's last position a restore without the replaced
/// store starts numbering (more entries than any trust writes between a
/// backup and losing its store).
const RESTORE_GAP: i64 = 1_000_000_000;

/// Put a backup in place of the store in `dir`, which must be initialised
/// with the same organisation key and have no server running. The old store
/// is kept beside it (`sitrep.db.before-restore`).
pub fn restore(dir: &Path, from: &Path) -> Result<Backup, rusqlite::Error> {
    let org = crate::org::Org::open(dir).map_err(admin_err)?;
    let _running = serve_lock(dir).map_err(|_| {
        admin_err(format!(
            "a sitrep server is running on {}: stop it before restoring",
            dir.display()
        ))
    })?;
    let (fingerprint, taken_at, last_seq) = {
        let b = Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let (fp, at): (String, i64) = b
            .query_row(
                "SELECT org_fingerprint, taken_at FROM backup_info",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|_| admin_err(format!("{} is not a Sitrep backup", from.display())))?;
        let ok: String = b.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(admin_err(format!("{} is damaged: {ok}", from.display())));
        }
        let last: i64 = b.query_row("SELECT COALESCE(MAX(seq), 0) FROM sent_log", [], |r| {
            r.get(0)
        })?;
        (fp, at as u64, last as u64)
    };
    if fingerprint != org.fingerprint() {
        return Err(admin_err(format!(
            "the backup is of another organisation (key {fingerprint}), not the one in {} ({})",
            dir.display(),
            org.fingerprint()
        )));
    }
    let live = dir.join("sitrep.db");
    let tmp = dir.join("sitrep.db.restoring");
    std::fs::copy(from, &tmp).map_err(admin_err)?;
    // Positions in the log must never go back: a device that saw position
    // n skips anything numbered n or below. New entries continue above the
    // store being replaced (or, without it, far above the backup's).
    let next_of = |c: &Connection| -> Option<i64> {
        c.query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
            r.get(0)
        })
        .ok()
    };
    let live_next = Connection::open_with_flags(&live, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()
        .and_then(|c| next_of(&c));
    {
        let t = Connection::open(&tmp)?;
        let backup_next = next_of(&t).unwrap_or(1).max(last_seq as i64 + 1);
        let next = match live_next {
            Some(n) => n.max(backup_next),
            None => backup_next + RESTORE_GAP,
        };
        t.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?1)",
            [next],
        )?;
        t.execute_batch("DROP TABLE backup_info")?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(admin_err)?;
    if live.exists() {
        // Fold the old store's log into it first, so the kept copy is whole.
        if let Ok(c) = Connection::open(&live) {
            let _ = c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        }
        std::fs::rename(&live, dir.join("sitrep.db.before-restore")).map_err(admin_err)?;
    }
    for f in ["sitrep.db-wal", "sitrep.db-shm"] {
        match std::fs::remove_file(dir.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(admin_err(e)),
            _ => {}
        }
    }
    std::fs::rename(&tmp, &live).map_err(admin_err)?;
    let bytes = std::fs::metadata(&live).map_err(admin_err)?.len();
    admin_tx(dir, |tx, key| {
        crate::audit::append_in(
            tx,
            key,
            &admin_actor(),
            "restore",
            &format!("last_seq={last_seq} taken_at={taken_at}"),
            crate::now_secs(),
        )
    })?;
    Ok(Backup {
        org_fingerprint: fingerprint,
        taken_at,
        last_seq,
        bytes,
    })
}

/// Run an admin change and its audit entry in one transaction on the store
/// in `dir`, with the organisation key kept there.
pub(crate) fn admin_tx<T>(
    dir: &Path,
    f: impl FnOnce(&rusqlite::Transaction<'_>, &ed25519_dalek::SigningKey) -> Result<T, rusqlite::Error>,
) -> Result<T, rusqlite::Error> {
    let org = crate::org::Org::open(dir)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.to_string().into()))?;
    let mut conn = connect(dir)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let v = f(&tx, &org.key)?;
    tx.commit()?;
    Ok(v)
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
    create_invite_as(dir, &admin_actor(), user_id, display_name, role, ttl_secs)
}

/// [`create_invite`] by `actor` (for the audit log).
pub fn create_invite_as(
    dir: &Path,
    actor: &str,
    user_id: &str,
    display_name: &str,
    role: &str,
    ttl_secs: u64,
) -> Result<String, rusqlite::Error> {
    let secret = crate::org::new_code();
    let now = crate::now_secs();
    let code = admin_tx(dir, |tx, key| {
        if crate::scim::deactivated_in(tx, user_id)? {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                format!(
                    "{user_id} is deactivated in the identity system (SCIM): reactivate them there first"
                )
                .into(),
            ));
        }
        let code = sitrep_wire::invite::code(&secret, &key.verifying_key().to_bytes());
        tx.execute(
            "INSERT INTO invites (code_hash, user_id, display_name, role, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![crate::org::code_hash(&secret), user_id, display_name, role, now as i64, (now + ttl_secs) as i64],
        )?;
        crate::audit::append_in(
            tx,
            key,
            actor,
            "invite",
            &format!("user={user_id} ttl_secs={ttl_secs}"),
            now,
        )?;
        Ok(code)
    })?;
    Ok(code)
}

/// Who runs an admin command: `admin:<OS user>`.
pub fn admin_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let user: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    format!("admin:{user}")
}

/// Append an admin action to the audit log in `dir` (signed with the
/// organisation key there).
pub fn audit_dir(
    dir: &Path,
    actor: &str,
    action: &str,
    detail: &str,
) -> Result<(u64, [u8; 32]), Box<dyn std::error::Error + Send + Sync>> {
    let org = crate::org::Org::open(dir).map_err(|e| e.to_string())?;
    let mut conn = connect(dir)?;
    Ok(crate::audit::append(
        &mut conn,
        &org.key,
        actor,
        action,
        detail,
        crate::now_secs(),
    )?)
}

/// Verify the audit log in `dir`; returns the number of entries.
pub fn audit_verify(dir: &Path) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let org = crate::org::Org::open(dir).map_err(|e| e.to_string())?;
    let conn = connect(dir)?;
    Ok(crate::audit::verify(&conn, &org.public_key())?)
}

/// The audit log in `dir`, oldest first.
pub fn audit_entries(
    dir: &Path,
) -> Result<Vec<crate::audit::AuditEntry>, Box<dyn std::error::Error + Send + Sync>> {
    let conn = connect(dir)?;
    Ok(crate::audit::entries(&conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sitrep-db-{tag}-{}",
            hex::encode(crate::random::<6>())
        ));
        crate::org::Org::create(&d, "Test Trust").expect("organisation");
        d
    }

    fn device(db: &Db, id: &str) {
        let g = db.lock();
        g.conn
            .execute(
                "INSERT INTO devices (device_id, user_id, display_name, role, token_hash, signature_key, credential, created_at)
                 VALUES (?1, ?1, 'n', 'r', ?1, x'00', x'00', 0)",
                [id],
            )
            .expect("device");
    }

    fn stored(db: &Db) -> i64 {
        db.lock()
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .expect("count")
    }

    /// A store made before `devices.last_seen` gains it; adding it again
    /// (a second process racing the first) is not an error.
    #[test]
    fn an_old_store_gains_new_columns_even_when_two_processes_open_it() {
        let d = dir("migrate");
        {
            let c = Connection::open(d.join("sitrep.db")).expect("open");
            c.execute_batch(
                "CREATE TABLE devices (device_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, display_name TEXT NOT NULL, role TEXT NOT NULL, token_hash BLOB NOT NULL UNIQUE, signature_key BLOB NOT NULL, credential BLOB NOT NULL, created_at INTEGER NOT NULL, revoked_at INTEGER, revocation_done INTEGER NOT NULL DEFAULT 0, cursor INTEGER NOT NULL DEFAULT 0);",
            )
            .expect("old schema");
        }
        let c = connect(&d).expect("migrated");
        c.prepare("SELECT last_seen FROM devices")
            .expect("the new column");
        // The race: both add it.
        add_column(&c, "devices", "x INTEGER").expect("first");
        add_column(&c, "devices", "x INTEGER").expect("second finds it there");
        connect(&d).expect("opens again");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn log_is_shared_and_collected_once_everyone_acknowledged() {
        let d = dir("gc");
        let db = Db::open(&d).expect("open");
        for id in ["a", "b", "c"] {
            device(&db, id);
        }
        let gid = [7u8; 16];
        db.create_group(&gid, "a", 0, &[]).expect("group");
        let (e, _) = db
            .commit_routed(
                "a",
                &gid,
                &"0".repeat(32),
                0,
                vec![1],
                Some(vec![2]),
                &["b".into(), "c".into()],
                &[],
                0,
                |_| {},
            )
            .expect("commit");
        assert_eq!(e, 1);
        let mut pushed = Vec::new();
        for i in 0..3 {
            db.send(
                "a",
                &gid,
                &format!("{:032x}", 100 + i),
                vec![9, i],
                0,
                |_, _, _| Ok(()),
                |p| pushed.extend(p.into_iter().flat_map(|d| d.recipients)),
            )
            .expect("send");
        }
        // One row per message, pushed to both other members.
        assert_eq!(pushed.len(), 6);
        assert_eq!(stored(&db), 5);
        let (b_entries, _) = db.fetch("b", 0, 100, usize::MAX).expect("fetch");
        let kinds: Vec<EntryKind> = b_entries.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EntryKind::Welcome,
                EntryKind::Application,
                EntryKind::Application,
                EntryKind::Application
            ]
        );
        assert!(
            db.fetch("a", 0, 100, usize::MAX)
                .expect("fetch")
                .0
                .is_empty(),
            "the sender gets nothing of its own"
        );
        let last = b_entries.last().expect("entries").seq;
        db.ack("b", last).expect("ack");
        db.gc(0, u64::MAX / 2, 1000).expect("gc");
        assert_eq!(
            stored(&db),
            5,
            "c still needs every entry, the shared Welcome too"
        );
        db.ack("c", last).expect("ack");
        db.gc(0, u64::MAX / 2, 1000).expect("gc");
        assert_eq!(
            stored(&db),
            0,
            "everyone but the sender has passed every entry"
        );
        assert!(
            db.fetch("b", 0, 100, usize::MAX)
                .expect("fetch")
                .0
                .is_empty(),
            "acknowledged entries do not come back"
        );
        // Delivery and read status outlive the collected messages.
        let st = db.message_status("a", &gid, last).expect("status after gc");
        assert_eq!(st.len(), 2);
        assert!(st.iter().all(|r| r.delivered && r.read_at.is_none()));
        assert_eq!(db.mark_read("b", &gid, last, 7).expect("read"), last);
        assert_eq!(
            db.mark_read("b", &gid, last + 50, 8).expect("read"),
            last,
            "never past what the device fetched"
        );
        let st = db.message_status("c", &gid, last).expect("status");
        let b = st.iter().find(|r| r.device_id == "b").expect("b");
        assert_eq!(b.read_at, Some(7), "the first time it was read");
        let devices: Vec<&str> = st.iter().map(|r| r.device_id.as_str()).collect();
        assert_eq!(devices, ["b", "c"], "everyone but the sender");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn removed_device_gets_its_removal_and_nothing_after() {
        let d = dir("rm");
        let db = Db::open(&d).expect("open");
        for id in ["a", "b"] {
            device(&db, id);
        }
        let gid = [8u8; 16];
        db.create_group(&gid, "a", 0, &[]).expect("group");
        db.commit_routed(
            "a",
            &gid,
            &"1".repeat(32),
            0,
            vec![1],
            Some(vec![2]),
            &["b".into()],
            &[],
            0,
            |_| {},
        )
        .expect("add");
        db.commit_routed(
            "a",
            &gid,
            &"2".repeat(32),
            1,
            vec![3],
            None,
            &[],
            &["b".into()],
            0,
            |_| {},
        )
        .expect("remove");
        db.send(
            "a",
            &gid,
            &"3".repeat(32),
            vec![4],
            0,
            |_, _, _| Ok(()),
            |_| {},
        )
        .expect("send");
        let (e, _) = db.fetch("b", 0, 100, usize::MAX).expect("fetch");
        let payloads: Vec<Vec<u8>> = e.iter().map(|e| e.payload.to_vec()).collect();
        assert_eq!(
            payloads,
            [vec![2], vec![3]],
            "Welcome, then the commit removing b; not the later message"
        );
        let err = db
            .send(
                "b",
                &gid,
                &"4".repeat(32),
                vec![5],
                0,
                |_, _, _| Ok(()),
                |_| {},
            )
            .expect_err("not a member");
        assert!(format!("{err:?}").contains("not_a_member"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
