//! Our `OpenMlsProvider`: RustCrypto for crypto and randomness, paired with an
//! in-memory key/value store whose whole content is sealed into the local store
//! after each operation. Snapshot-and-replace makes every operation atomic on
//! disk (a crash leaves the previous snapshot) and really deletes old key
//! material, which forward secrecy needs.
//!
//! The store is openmls's `MemoryStorage` with one change: the group's
//! message secrets, which openmls rewrites after every message it encrypts or
//! decrypts and which grow with the number of members who have sent (one
//! sender ratchet each), are encoded with postcard instead of JSON. In a
//! 1,000-member group JSON took three quarters of a received message's cost
//! (BENCHMARKS.md, call-in tally). Secrets written as JSON by earlier
//! versions are still read.

use openmls_memory_storage::{MemoryStorage, MemoryStorageError};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider, traits};
use std::collections::HashMap;

#[derive(Default)]
pub(crate) struct Provider {
    crypto: RustCrypto,
    storage: Storage,
}

/// openmls's in-memory store, message secrets in a binary encoding.
#[derive(Default)]
pub(crate) struct Storage {
    inner: MemoryStorage,
    /// While set, writes of message secrets are noted, not made: a batch of
    /// application messages rewrites them once per message, and only the
    /// last matters. The client writes them (`Client::flush_secrets`)
    /// before the batch ends, before anything else touches the group, and
    /// before the store is read out.
    defer: std::sync::atomic::AtomicBool,
    /// Message-secrets keys written while deferring and not yet written.
    dirty: std::sync::Mutex<std::collections::BTreeSet<Vec<u8>>>,
}

impl Storage {
    pub(crate) fn set_defer(&self, on: bool) {
        self.defer.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn deferring(&self) -> bool {
        self.defer.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<Vec<u8>>> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Our label for the binary-encoded message secrets (openmls's JSON ones
/// live under `MessageSecrets`).
const MESSAGE_SECRETS_BIN: &[u8] = b"SitrepMessageSecretsPostcard";

impl Storage {
    /// The map key, built as `MemoryStorage` builds its own.
    fn secrets_key<GroupId: traits::GroupId<CURRENT_VERSION>>(
        group_id: &GroupId,
    ) -> Result<Vec<u8>, MemoryStorageError> {
        let mut key = MESSAGE_SECRETS_BIN.to_vec();
        key.extend(
            serde_json::to_vec(group_id).map_err(|_| MemoryStorageError::SerializationError)?,
        );
        key.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
        Ok(key)
    }
}

impl Provider {
    pub(crate) fn from_values(values: HashMap<Vec<u8>, Vec<u8>>) -> Self {
        let inner = MemoryStorage::default();
        *inner.values.write().expect("fresh lock is not poisoned") = values;
        Self {
            crypto: RustCrypto::default(),
            storage: Storage {
                inner,
                ..Storage::default()
            },
        }
    }

    pub(crate) fn storage_ref(&self) -> &Storage {
        &self.storage
    }

    /// Look at the storage values in place (after the same backstop as
    /// [`Provider::values`]).
    pub(crate) fn with_values<R>(&self, f: impl FnOnce(&HashMap<Vec<u8>, Vec<u8>>) -> R) -> R {
        self.drop_unflushed();
        let v = self
            .storage
            .inner
            .values
            .read()
            .expect("storage lock is never poisoned: no panics while held");
        f(&v)
    }

    fn drop_unflushed(&self) {
        let dirty = std::mem::take(&mut *self.storage.dirty());
        debug_assert!(dirty.is_empty(), "message secrets not flushed");
        if !dirty.is_empty()
            && let Ok(mut v) = self.storage.inner.values.write()
        {
            for k in dirty {
                v.remove(&k);
            }
        }
    }

    pub(crate) fn values(&self) -> HashMap<Vec<u8>, Vec<u8>> {
        // A deferred write never flushed would leave stale secrets (older
        // keys, a ratchet behind) in what is sealed: drop them instead, so
        // the group fails closed rather than keeping old keys. The client
        // always flushes first; this is the backstop.
        self.drop_unflushed();
        self.storage
            .inner
            .values
            .read()
            .expect("storage lock is never poisoned: no panics while held")
            .clone()
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = Storage;

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

impl StorageProvider<CURRENT_VERSION> for Storage {
    type Error = MemoryStorageError;

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        let key = Self::secrets_key(group_id)?;
        if self.deferring() {
            self.dirty().insert(key);
            return Ok(());
        }
        self.dirty().remove(&key);
        let value = postcard::to_allocvec(message_secrets)
            .map_err(|_| MemoryStorageError::SerializationError)?;
        self.inner
            .values
            .write()
            .map_err(|_| MemoryStorageError::UnsupportedMethod)?
            .insert(key, value);
        // A JSON copy from an earlier version must not outlive this one.
        self.inner.delete_message_secrets(group_id)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        let key = Self::secrets_key(group_id)?;
        let values = self
            .inner
            .values
            .read()
            .map_err(|_| MemoryStorageError::UnsupportedMethod)?;
        match values.get(&key) {
            Some(v) => postcard::from_bytes(v)
                .map(Some)
                .map_err(|_| MemoryStorageError::SerializationError),
            None => {
                drop(values);
                self.inner.message_secrets(group_id)
            }
        }
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        let key = Self::secrets_key(group_id)?;
        self.dirty().remove(&key);
        self.inner
            .values
            .write()
            .map_err(|_| MemoryStorageError::UnsupportedMethod)?
            .remove(&key);
        self.inner.delete_message_secrets(group_id)
    }

    // Everything else as openmls's own store does it.

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        self.inner.write_mls_join_config(group_id, config)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        self.inner.append_own_leaf_node(group_id, leaf_node)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        self.inner.queue_proposal(group_id, proposal_ref, proposal)
    }

    fn write_tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.inner.write_tree(group_id, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.inner
            .write_interim_transcript_hash(group_id, interim_transcript_hash)
    }

    fn write_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.inner.write_context(group_id, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.inner
            .write_confirmation_tag(group_id, confirmation_tag)
    }

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.inner.write_group_state(group_id, group_state)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.inner
            .write_resumption_psk_store(group_id, resumption_psk_store)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.inner.write_own_leaf_index(group_id, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.inner
            .write_group_epoch_secrets(group_id, group_epoch_secrets)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.inner
            .write_signature_key_pair(public_key, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.inner.write_encryption_key_pair(public_key, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        self.inner
            .write_encryption_epoch_key_pairs(group_id, epoch, leaf_index, key_pairs)
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        self.inner.write_key_package(hash_ref, key_package)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.inner.write_psk(psk_id, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        self.inner.mls_group_join_config(group_id)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.inner.own_leaf_nodes(group_id)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.inner.queued_proposal_refs(group_id)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        self.inner.queued_proposals(group_id)
    }

    fn tree<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        TreeSync: traits::TreeSync<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.inner.tree(group_id)
    }

    fn group_context<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupContext: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.inner.group_context(group_id)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.inner.interim_transcript_hash(group_id)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.inner.confirmation_tag(group_id)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.inner.group_state(group_id)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.inner.resumption_psk_store(group_id)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.inner.own_leaf_index(group_id)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.inner.group_epoch_secrets(group_id)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.inner.signature_key_pair(public_key)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.inner.encryption_key_pair(public_key)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        self.inner
            .encryption_epoch_key_pairs(group_id, epoch, leaf_index)
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        self.inner.key_package(hash_ref)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        self.inner.psk(psk_id)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        self.inner.remove_proposal(group_id, proposal_ref)
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_own_leaf_nodes(group_id)
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_group_config(group_id)
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_tree(group_id)
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_confirmation_tag(group_id)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_group_state(group_id)
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_context(group_id)
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_interim_transcript_hash(group_id)
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_all_resumption_psk_secrets(group_id)
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_own_leaf_index(group_id)
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner.delete_group_epoch_secrets(group_id)
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.inner
            .clear_proposal_queue::<GroupId, ProposalRef>(group_id)
    }

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        self.inner.delete_signature_key_pair(public_key)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.inner.delete_encryption_key_pair(public_key)
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        self.inner
            .delete_encryption_epoch_key_pairs(group_id, epoch, leaf_index)
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.inner.delete_key_package(hash_ref)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskKey,
    ) -> Result<(), Self::Error> {
        self.inner.delete_psk(psk_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;

    const CS: openmls::prelude::Ciphersuite =
        openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

    fn has_label(values: &HashMap<Vec<u8>, Vec<u8>>, label: &[u8]) -> bool {
        values.keys().any(|k| k.starts_with(label))
    }

    /// A group whose state openmls's own JSON store wrote (as every profile
    /// before this store did) loads, works, and leaves no JSON secrets behind.
    #[test]
    fn reads_json_message_secrets_then_writes_binary() {
        let legacy = openmls_rust_crypto::OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("keys");
        signer.store(legacy.storage()).expect("store signer");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(b"alice".to_vec()).into(),
            signature_key: signer.public().into(),
        };
        let group = MlsGroup::builder()
            .ciphersuite(CS)
            .build(&legacy, &signer, credential)
            .expect("group");
        let id = group.group_id().clone();
        let values = legacy.storage().values.read().expect("lock").clone();
        assert!(has_label(&values, b"MessageSecrets"));
        assert!(!has_label(&values, MESSAGE_SECRETS_BIN));

        let ours = Provider::from_values(values);
        let mut group = MlsGroup::load(ours.storage(), &id)
            .expect("load")
            .expect("group present");
        group
            .create_message(&ours, &signer, b"hello")
            .expect("encrypt with the secrets read from JSON");
        let values = ours.values();
        assert!(has_label(&values, MESSAGE_SECRETS_BIN));
        assert!(
            !has_label(&values, b"MessageSecrets"),
            "the JSON copy of the secrets must be deleted, not left behind"
        );
        // And the binary copy reads back.
        let again = Provider::from_values(values);
        let mut group = MlsGroup::load(again.storage(), &id)
            .expect("load")
            .expect("group present");
        group
            .create_message(&again, &signer, b"again")
            .expect("encrypt with the secrets read from postcard");
    }
}
