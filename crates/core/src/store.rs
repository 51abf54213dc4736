//! Where the sealed state lives. A trait so the browser can bring its own
//! backend (IndexedDB/OPFS); native builds use [`FileStore`].
//!
//! The core hands the store only sealed bytes: no backend ever sees plaintext.

use crate::Error;
use crate::persist::{Changes, Sealed};
use crate::vault::RecordId;

/// A place for one sealed profile: a set of records, each sealed on its own
/// (see [`crate::persist`]), under opaque ids.
pub trait ProfileStore {
    /// Every record, or `None` when no profile exists yet.
    fn load(&self) -> Result<Option<Vec<Sealed>>, Error>;
    /// Apply one batch of changes atomically: after a crash either all of
    /// it is there or none.
    fn write(&self, changes: &Changes) -> Result<(), Error>;
    /// Write changes that may be lost in a power cut (not in a crash of
    /// the process): what follows an answer the server would give again
    /// (the engine's writes after the last request of a task). The next
    /// [`ProfileStore::write`] makes them durable with its own.
    fn write_lazy(&self, changes: &Changes) -> Result<(), Error> {
        self.write(changes)
    }
    /// A profile an earlier version sealed as one snapshot, to migrate.
    fn load_legacy(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(None)
    }
    /// Remove the legacy snapshot once its records are written.
    fn remove_legacy(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Destroy the profile (remote wipe, too many wrong passcodes).
    fn destroy(&self) -> Result<(), Error>;
    /// Wrong passcodes in a row, and the limit the last policy set. Kept
    /// outside the sealed state, since it must be read before unlocking.
    fn unlock_failures(&self) -> Result<(u32, u32), Error>;
    /// Record the failure count and limit.
    fn set_unlock_failures(&self, failures: u32, limit: u32) -> Result<(), Error>;
}

type Records = std::collections::BTreeMap<RecordId, Vec<u8>>;

/// In-memory store, for tests and for the browser before persistence.
#[derive(Default)]
pub struct MemoryStore(
    std::sync::Mutex<Option<Records>>,
    std::sync::Mutex<(u32, u32)>,
);

fn poisoned<T>(_: T) -> Error {
    Error::Io("poisoned".into())
}

impl ProfileStore for MemoryStore {
    fn load(&self) -> Result<Option<Vec<Sealed>>, Error> {
        Ok(self
            .0
            .lock()
            .map_err(poisoned)?
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect()))
    }
    fn write(&self, ch: &Changes) -> Result<(), Error> {
        let mut g = self.0.lock().map_err(poisoned)?;
        let m = g.get_or_insert_with(Records::new);
        if ch.clear {
            m.clear();
        }
        for id in &ch.delete {
            m.remove(id);
        }
        for (id, b) in &ch.put {
            m.insert(*id, b.clone());
        }
        Ok(())
    }
    fn destroy(&self) -> Result<(), Error> {
        *self.0.lock().map_err(poisoned)? = None;
        Ok(())
    }
    fn unlock_failures(&self) -> Result<(u32, u32), Error> {
        let (n, l) = *self.1.lock().map_err(poisoned)?;
        Ok((n, if l == 0 { DEFAULT_MAX_FAILURES } else { l }))
    }
    fn set_unlock_failures(&self, failures: u32, limit: u32) -> Result<(), Error> {
        *self.1.lock().map_err(poisoned)? = (failures, limit);
        Ok(())
    }
}

/// Wrong passcodes before a wipe when no policy says otherwise.
pub const DEFAULT_MAX_FAILURES: u32 = 10;

#[cfg(not(target_arch = "wasm32"))]
pub use file::FileStore;
#[cfg(not(target_arch = "wasm32"))]
pub use sqlite::SqliteStore;

#[cfg(not(target_arch = "wasm32"))]
mod file {
    use crate::Error;
    use std::path::{Path, PathBuf};

    /// A profile directory as earlier versions kept it: one sealed
    /// snapshot, `profile.sealed`. Read once to migrate to [`super::SqliteStore`],
    /// then overwritten and removed.
    pub struct FileStore {
        dir: PathBuf,
    }

    const FILE: &str = "profile.sealed";

    impl FileStore {
        /// The legacy snapshot in `dir`.
        pub fn new(dir: &Path) -> Self {
            Self {
                dir: dir.to_path_buf(),
            }
        }

        /// The snapshot's path.
        pub fn path(&self) -> PathBuf {
            self.dir.join(FILE)
        }

        /// Its bytes, if there is one.
        pub fn load(&self) -> Result<Option<Vec<u8>>, Error> {
            match std::fs::read(self.path()) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(super::io(e)),
            }
        }

        /// Overwrite it with zeros and remove it.
        pub fn remove(&self) -> Result<(), Error> {
            super::shred(&self.path())
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn io(e: std::io::Error) -> Error {
    Error::Io(e.kind().to_string())
}

/// Overwrite a file with zeros, then unlink it. On flash and copy-on-write
/// file systems this is best effort, which is why everything is sealed.
#[cfg(not(target_arch = "wasm32"))]
fn shred(p: &std::path::Path) -> Result<(), Error> {
    use std::io::{Seek as _, Write as _};
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(p) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let zeros = vec![0u8; 64 * 1024];
        let mut left = len;
        let _ = f.seek(std::io::SeekFrom::Start(0));
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            if f.write_all(&zeros[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = f.sync_all();
        drop(f);
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = p.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
    }
    Ok(())
}

#[cfg(not(target_arch = "wasm32"))]
mod sqlite {
    use super::{FileStore, ProfileStore, RecordId, Sealed, io, shred};
    use crate::Error;
    use crate::persist::Changes;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// A profile's records in one SQLite file, `profile.db` (WAL,
    /// `synchronous=FULL`: a batch is on disk when `write` returns;
    /// `secure_delete`: deleted records are zeroed in the file). When a
    /// batch deleted key material or messages (`Changes::erase`) the log is
    /// checkpointed and truncated at once, so no older sealed copy of them
    /// is left in either file. Between such batches the log holds older
    /// sealed versions of records that changed (up to SQLite's default
    /// checkpoint of about 4 MB): the same messages as the history still
    /// holds, under the same key.
    pub struct SqliteStore {
        dir: PathBuf,
        db: Mutex<rusqlite::Connection>,
    }

    const DB: &str = "profile.db";
    const FAILURES: &str = "unlock-failures";

    fn sql(e: rusqlite::Error) -> Error {
        Error::Io(format!("profile database: {e}"))
    }

    impl SqliteStore {
        /// The store in `dir` (created with mode 0700 if missing).
        pub fn new(dir: &Path) -> Result<Self, Error> {
            std::fs::create_dir_all(dir).map_err(io)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
            }
            let db = rusqlite::Connection::open(dir.join(DB)).map_err(sql)?;
            db.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(sql)?;
            db.execute_batch(
                "PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=FULL;
                 PRAGMA secure_delete=ON;
                                  PRAGMA journal_size_limit=4194304;
                 CREATE TABLE IF NOT EXISTS records(
                     id BLOB PRIMARY KEY NOT NULL,
                     sealed BLOB NOT NULL
                 ) WITHOUT ROWID;",
            )
            .map_err(sql)?;
            #[cfg(unix)]
            for f in [DB, "profile.db-wal", "profile.db-shm"] {
                use std::os::unix::fs::PermissionsExt as _;
                let _ =
                    std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600));
            }
            Ok(Self {
                dir: dir.to_path_buf(),
                db: Mutex::new(db),
            })
        }

        fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
            self.db.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// The database file's path.
        pub fn path(&self) -> PathBuf {
            self.dir.join(DB)
        }

        /// A number that changes when another process wrote the store
        /// (SQLite's `data_version`), to see whether what is in memory is
        /// still current.
        pub fn data_version(&self) -> Result<u64, Error> {
            self.db()
                .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                .map(|v| v as u64)
                .map_err(sql)
        }

        /// Make deleted content unreadable in the files now: checkpoint the
        /// log into the database (where `secure_delete` zeroed it) and
        /// truncate the log.
        /// Another process reading the store at that moment can hold the
        /// checkpoint up: it is tried again for a while, then left to the
        /// next erase (the data itself is durable either way).
        pub fn erase_freed(&self) -> Result<(), Error> {
            for _ in 0..50 {
                let busy: i64 = self
                    .db()
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                    .map_err(sql)?;
                if busy == 0 {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(())
        }
    }

    impl ProfileStore for SqliteStore {
        fn load(&self) -> Result<Option<Vec<Sealed>>, Error> {
            let db = self.db();
            let mut st = db
                .prepare_cached("SELECT id, sealed FROM records")
                .map_err(sql)?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, sealed) = row.map_err(sql)?;
                let id: RecordId = id
                    .try_into()
                    .map_err(|_| Error::BadStore("record id length"))?;
                out.push((id, sealed));
            }
            Ok(if out.is_empty() { None } else { Some(out) })
        }

        fn write_lazy(&self, ch: &Changes) -> Result<(), Error> {
            if ch.is_empty() {
                return Ok(());
            }
            self.db()
                .execute_batch("PRAGMA synchronous=NORMAL;")
                .map_err(sql)?;
            let r = self.write(ch);
            self.db()
                .execute_batch("PRAGMA synchronous=FULL;")
                .map_err(sql)?;
            r
        }

        fn write(&self, ch: &Changes) -> Result<(), Error> {
            if ch.is_empty() {
                return Ok(());
            }
            {
                let mut db = self.db();
                let tx = db.transaction().map_err(sql)?;
                if ch.clear {
                    tx.execute("DELETE FROM records", []).map_err(sql)?;
                }
                {
                    let mut del = tx
                        .prepare_cached("DELETE FROM records WHERE id = ?1")
                        .map_err(sql)?;
                    for id in &ch.delete {
                        del.execute([&id[..]]).map_err(sql)?;
                    }
                    let mut put = tx
                        .prepare_cached(
                            "INSERT OR REPLACE INTO records(id, sealed) VALUES (?1, ?2)",
                        )
                        .map_err(sql)?;
                    for (id, b) in &ch.put {
                        put.execute(rusqlite::params![&id[..], b]).map_err(sql)?;
                    }
                }
                tx.commit().map_err(sql)?;
            }
            if ch.erase || ch.clear {
                self.erase_freed()?;
            }
            Ok(())
        }

        fn load_legacy(&self) -> Result<Option<Vec<u8>>, Error> {
            FileStore::new(&self.dir).load()
        }

        fn remove_legacy(&self) -> Result<(), Error> {
            FileStore::new(&self.dir).remove()
        }

        fn unlock_failures(&self) -> Result<(u32, u32), Error> {
            let text = match std::fs::read_to_string(self.dir.join(FAILURES)) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(io(e)),
            };
            let mut it = text.split_whitespace().map(|w| w.parse::<u32>().ok());
            let n = it.next().flatten().unwrap_or(0);
            let l = it
                .next()
                .flatten()
                .filter(|l| *l > 0)
                .unwrap_or(super::DEFAULT_MAX_FAILURES);
            Ok((n, l))
        }

        fn set_unlock_failures(&self, failures: u32, limit: u32) -> Result<(), Error> {
            use std::io::Write as _;
            // Written and synced before the passcode is tried again, so a
            // kill between tries cannot reset the count.
            let tmp = self.dir.join(format!("{FAILURES}.tmp"));
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(format!("{failures} {limit}\n").as_bytes())
                .map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, self.dir.join(FAILURES)).map_err(io)
        }

        fn destroy(&self) -> Result<(), Error> {
            let mut db = self.db();
            // Even if this fails (a damaged file), the files are shredded below.
            let _ = db.execute("DELETE FROM records", []);
            let _ = db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            // Close the file before it goes (closing may touch the log).
            let placeholder = rusqlite::Connection::open_in_memory().map_err(sql)?;
            drop(std::mem::replace(&mut *db, placeholder));
            for f in [DB, "profile.db-wal", "profile.db-shm"] {
                shred(&self.dir.join(f))?;
            }
            FileStore::new(&self.dir).remove()?;
            // An empty store in its place, so that opening it again finds
            // no profile rather than a damaged file.
            let fresh = Self::new(&self.dir)?;
            *db = fresh.db.into_inner().unwrap_or_else(|p| p.into_inner());
            Ok(())
        }
    }
}
