//! The organisation's signed directory (roles, holders, call-out lists), kept
//! in the store and re-signed with the organisation key on every change: by
//! the admin (`sitrep admin role|callout`), or by the server when a member of
//! staff takes or hands back a role. Every change goes into the audit log.

use std::path::Path;

use ed25519_dalek::SigningKey;
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use sitrep_wire::directory::{Directory, DirectoryError, SignedDirectory};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// The signed directory in force, if any.
pub fn current(conn: &Connection) -> Result<Option<Vec<u8>>, rusqlite::Error> {
    conn.query_row(
        "SELECT signed FROM directories ORDER BY serial DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// The directory in force, verified (an empty one if none).
pub fn load(conn: &Connection, org_public: &[u8; 32]) -> Result<Directory, BoxErr> {
    Ok(match current(conn)? {
        Some(b) => SignedDirectory::verify(&b, org_public)?,
        None => Directory {
            v: 1,
            serial: 1,
            ..Directory::default()
        },
    })
}

/// Change the directory in one transaction: load, apply `f`, bump the serial,
/// sign, store, audit. Returns the new directory.
pub fn update(
    conn: &mut Connection,
    key: &SigningKey,
    actor: &str,
    action: &str,
    f: impl FnOnce(&mut Directory) -> Result<String, DirectoryError>,
) -> Result<Directory, BoxErr> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut d = load(&tx, &key.verifying_key().to_bytes())?;
    let detail = f(&mut d)?;
    d.serial += 1;
    let signed = SignedDirectory::sign(&d, key)?;
    tx.execute(
        "INSERT INTO directories (serial, signed, created_at) VALUES (?1, ?2, ?3)",
        params![d.serial as i64, signed, crate::now_secs() as i64],
    )?;
    crate::audit::append_in(&tx, key, actor, action, &detail, crate::now_secs())?;
    tx.commit()?;
    Ok(d)
}

/// [`update`] on the store in `dir` as the admin.
pub fn admin_update(
    dir: &Path,
    actor: &str,
    action: &str,
    f: impl FnOnce(&mut Directory) -> Result<String, DirectoryError>,
) -> Result<Directory, BoxErr> {
    let org = crate::org::Org::open(dir).map_err(|e| e.to_string())?;
    let mut conn = crate::db::connect(dir)?;
    update(&mut conn, &org.key, actor, action, f)
}

/// The directory in `dir`, verified.
pub fn show(dir: &Path) -> Result<Directory, BoxErr> {
    let org = crate::org::Org::open(dir).map_err(|e| e.to_string())?;
    let conn = crate::db::connect(dir)?;
    load(&conn, &org.public_key())
}
