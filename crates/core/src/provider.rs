//! Our `OpenMlsProvider`: RustCrypto for crypto and randomness, paired with an
//! in-memory key/value store whose whole content is sealed into the local store
//! after each operation. Snapshot-and-replace makes every operation atomic on
//! disk (a crash leaves the previous snapshot) and really deletes old key
//! material, which forward secrecy needs.

use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl Provider {
    pub(crate) fn from_values(values: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let storage = MemoryStorage::default();
        *storage.values.write().expect("fresh lock is not poisoned") = values;
        Self {
            crypto: RustCrypto::default(),
            storage,
        }
    }

    pub(crate) fn values(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.storage
            .values
            .read()
            .expect("storage lock is never poisoned: no panics while held")
            .clone()
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
