//! Where the sealed state lives. A trait so the browser can bring its own
//! backend (IndexedDB/OPFS); native builds use [`FileStore`].
//!
//! The core hands the store only sealed bytes: no backend ever sees plaintext.

use crate::Error;

/// A place for one sealed profile.
pub trait ProfileStore {
    /// The sealed bytes, or `None` when no profile exists yet.
    fn load(&self) -> Result<Option<Vec<u8>>, Error>;
    /// Replace the sealed bytes atomically: after a crash either the old or the
    /// new snapshot is there, never a mix.
    fn save(&self, sealed: &[u8]) -> Result<(), Error>;
    /// Destroy the profile (remote wipe, too many wrong passcodes).
    fn destroy(&self) -> Result<(), Error>;
    /// Wrong passcodes in a row, and the limit the last policy set. Kept
    /// outside the sealed state, since it must be read before unlocking.
    fn unlock_failures(&self) -> Result<(u32, u32), Error>;
    /// Record the failure count and limit.
    fn set_unlock_failures(&self, failures: u32, limit: u32) -> Result<(), Error>;
}

/// In-memory store, for tests and for the browser before persistence.
#[derive(Default)]
pub struct MemoryStore(
    std::sync::Mutex<Option<Vec<u8>>>,
    std::sync::Mutex<(u32, u32)>,
);

impl ProfileStore for MemoryStore {
    fn load(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .0
            .lock()
            .map_err(|_| Error::Io("poisoned".into()))?
            .clone())
    }
    fn save(&self, sealed: &[u8]) -> Result<(), Error> {
        *self.0.lock().map_err(|_| Error::Io("poisoned".into()))? = Some(sealed.to_vec());
        Ok(())
    }
    fn destroy(&self) -> Result<(), Error> {
        *self.0.lock().map_err(|_| Error::Io("poisoned".into()))? = None;
        Ok(())
    }
    fn unlock_failures(&self) -> Result<(u32, u32), Error> {
        let (n, l) = *self.1.lock().map_err(|_| Error::Io("poisoned".into()))?;
        Ok((n, if l == 0 { DEFAULT_MAX_FAILURES } else { l }))
    }
    fn set_unlock_failures(&self, failures: u32, limit: u32) -> Result<(), Error> {
        *self.1.lock().map_err(|_| Error::Io("poisoned".into()))? = (failures, limit);
        Ok(())
    }
}

/// Wrong passcodes before a wipe when no policy says otherwise.
pub const DEFAULT_MAX_FAILURES: u32 = 10;

#[cfg(not(target_arch = "wasm32"))]
pub use file::FileStore;

#[cfg(not(target_arch = "wasm32"))]
mod file {
    use super::ProfileStore;
    use crate::Error;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};

    /// One sealed file in a profile directory, replaced by write-fsync-rename.
    pub struct FileStore {
        dir: PathBuf,
    }

    const FILE: &str = "profile.sealed";
    const FAILURES: &str = "unlock-failures";

    impl FileStore {
        /// The store in `dir` (created with mode 0700 if missing).
        pub fn new(dir: &Path) -> Result<Self, Error> {
            std::fs::create_dir_all(dir).map_err(io)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
            }
            Ok(Self {
                dir: dir.to_path_buf(),
            })
        }

        /// The sealed file's path.
        pub fn path(&self) -> PathBuf {
            self.dir.join(FILE)
        }
    }

    fn io(e: std::io::Error) -> Error {
        Error::Io(e.kind().to_string())
    }

    impl ProfileStore for FileStore {
        fn load(&self) -> Result<Option<Vec<u8>>, Error> {
            match std::fs::read(self.path()) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(e)),
            }
        }

        fn save(&self, sealed: &[u8]) -> Result<(), Error> {
            let tmp = self.dir.join(format!("{FILE}.tmp"));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(sealed).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, self.path()).map_err(io)?;
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
            Ok(())
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
            std::fs::write(self.dir.join(FAILURES), format!("{failures} {limit}\n")).map_err(io)
        }

        fn destroy(&self) -> Result<(), Error> {
            let p = self.path();
            if let Ok(meta) = std::fs::metadata(&p) {
                // Overwrite before unlinking; on flash and copy-on-write file
                // systems this is best effort, which is why the data is sealed.
                let zeros = vec![0u8; meta.len() as usize];
                let _ = std::fs::write(&p, zeros);
                std::fs::remove_file(&p).map_err(io)?;
            }
            Ok(())
        }
    }
}
