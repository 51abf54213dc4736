//! The delivery service's own view of each group (RFC 9750 §5): the public
//! group state (openmls `PublicGroup`: ratchet tree, group context, proposal
//! queue), kept from the creator's GroupInfo on, and advanced only by commits
//! it has validated.
//!
//! Handshakes (commits, proposals) travel as MLS PublicMessages so the server
//! can check them; application messages stay PrivateMessages, which it
//! cannot read. A commit is accepted only if it is valid for the current
//! epoch, signed by the current member whose leaf is the posting device, and
//! made only of the proposals Sitrep uses (add, remove); who is added and
//! removed is read from the commit itself, never from the client. The group
//! context it sees carries the conversation's metadata sealed (see
//! `sitrep_core`'s meta sealing), so names and policies stay private.
//!
//! It never holds a private key and never decrypts anything.

use std::cell::RefCell;

use openmls::group::{PublicGroup, QueuedProposal};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, GroupId, LeafNodeIndex, MlsMessageBodyIn, MlsMessageIn,
    ProcessedMessageContent, Proposal, ProposalStore, ProtocolMessage, Sender,
};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{CURRENT_VERSION, traits};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sitrep_wire::credential::SignedCredential;

/// Past epochs whose application messages members still decrypt (the
/// core's `MAX_PAST_EPOCHS`).
const PAST_EPOCHS: u64 = 5;

/// Why the delivery service refused a handshake. Messages name no value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DsError {
    #[error(
        "not a public MLS handshake message (commits and proposals are sent as PublicMessages)"
    )]
    NotPublic,
    #[error("not an MLS application message (a PrivateMessage)")]
    NotPrivate,
    #[error("the message is for another group")]
    WrongGroup,
    #[error("the message was built on epoch {0}")]
    WrongEpoch(u64),
    #[error("the message does not verify for the group's current state ({0})")]
    Invalid(String),
    #[error("the message is signed by a member other than the posting device")]
    NotSender,
    #[error("only adds and removes are accepted ({0})")]
    Proposal(&'static str),
    #[error("an added member is not an enrolled, unrevoked device of the organisation")]
    BadAdd,
    #[error(
        "a commit that adds members needs a Welcome for exactly them, and only one that adds has one"
    )]
    Welcome,
    #[error("the group info does not start a group of one: the creating device")]
    BadGroupInfo,
    #[error("the group's stored state is damaged")]
    State,
}

/// A device as the server enrolled it.
pub(crate) struct Enrolled {
    pub device_id: String,
    pub signature_key: Vec<u8>,
}

/// What a valid commit does, and the state after it.
pub(crate) struct Accepted {
    /// Devices the commit adds (a device also in `removed` is re-added).
    pub added: Vec<String>,
    /// Devices whose leaves the commit removes.
    pub removed: Vec<String>,
    /// The group's epoch after the commit.
    pub epoch: u64,
    /// The public state to store.
    pub state: Vec<u8>,
}

/// The public state of one group, as stored (each part postcard-encoded).
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    tree: Option<ByteBuf>,
    context: Option<ByteBuf>,
    interim: Option<ByteBuf>,
    confirmation: Option<ByteBuf>,
    proposals: Vec<(ByteBuf, ByteBuf)>,
}

/// An openmls public storage provider over one group's [`Stored`] state.
#[derive(Default)]
struct Store(RefCell<Stored>);

#[derive(Debug, thiserror::Error)]
#[error("public group state: {0}")]
struct StoreError(String);

fn enc<T: Serialize>(v: &T) -> Result<ByteBuf, StoreError> {
    postcard::to_allocvec(v)
        .map(ByteBuf::from)
        .map_err(|e| StoreError(e.to_string()))
}

fn dec<T: serde::de::DeserializeOwned>(v: &Option<ByteBuf>) -> Result<Option<T>, StoreError> {
    v.as_ref()
        .map(|b| postcard::from_bytes(b).map_err(|e| StoreError(e.to_string())))
        .transpose()
}

impl Store {
    fn from_bytes(b: &[u8]) -> Result<Self, DsError> {
        postcard::from_bytes(b)
            .map(|s| Self(RefCell::new(s)))
            .map_err(|_| DsError::State)
    }

    fn to_bytes(&self) -> Result<Vec<u8>, DsError> {
        postcard::to_allocvec(&*self.0.borrow()).map_err(|_| DsError::State)
    }
}

impl PublicStorageProvider<CURRENT_VERSION> for Store {
    type PublicError = StoreError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
        tree: &T,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().tree = Some(enc(tree)?);
        Ok(())
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        h: &H,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().interim = Some(enc(h)?);
        Ok(())
    }

    fn write_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        c: &C,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().context = Some(enc(c)?);
        Ok(())
    }

    fn write_confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        t: &T,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().confirmation = Some(enc(t)?);
        Ok(())
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        r: &R,
        p: &P,
    ) -> Result<(), StoreError> {
        let (r, p) = (enc(r)?, enc(p)?);
        let mut s = self.0.borrow_mut();
        s.proposals.retain(|(k, _)| *k != r);
        s.proposals.push((r, p));
        Ok(())
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Vec<(R, P)>, StoreError> {
        self.0
            .borrow()
            .proposals
            .iter()
            .map(|(r, p)| {
                Ok((
                    postcard::from_bytes(r).map_err(|e| StoreError(e.to_string()))?,
                    postcard::from_bytes(p).map_err(|e| StoreError(e.to_string()))?,
                ))
            })
            .collect()
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<T>, StoreError> {
        dec(&self.0.borrow().tree)
    }

    fn group_context<
        G: traits::GroupId<CURRENT_VERSION>,
        C: traits::GroupContext<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<C>, StoreError> {
        dec(&self.0.borrow().context)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<H>, StoreError> {
        dec(&self.0.borrow().interim)
    }

    fn confirmation_tag<
        G: traits::GroupId<CURRENT_VERSION>,
        T: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<T>, StoreError> {
        dec(&self.0.borrow().confirmation)
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), StoreError> {
        self.0.borrow_mut().tree = None;
        Ok(())
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().confirmation = None;
        Ok(())
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), StoreError> {
        self.0.borrow_mut().context = None;
        Ok(())
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().interim = None;
        Ok(())
    }

    fn remove_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        r: &R,
    ) -> Result<(), StoreError> {
        let r = enc(r)?;
        self.0.borrow_mut().proposals.retain(|(k, _)| *k != r);
        Ok(())
    }

    fn clear_proposal_queue<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().proposals.clear();
        Ok(())
    }
}

/// The device a leaf belongs to, as the organisation vouched for it.
fn leaf_device(
    credential: &openmls::prelude::Credential,
    signature_key: &[u8],
    org_public: &[u8],
) -> Option<String> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    SignedCredential::decode(basic.identity())
        .ok()?
        .verify(org_public, signature_key)
        .ok()
        .map(|c| c.device_id)
}

fn parse_public(bytes: &[u8], group_id: &[u8]) -> Result<ProtocolMessage, DsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| DsError::NotPublic)?;
    let proto = match msg.extract() {
        MlsMessageBodyIn::PublicMessage(m) => ProtocolMessage::from(m),
        _ => return Err(DsError::NotPublic),
    };
    if proto.group_id().as_slice() != group_id {
        return Err(DsError::WrongGroup);
    }
    Ok(proto)
}

fn load(state: &[u8], group_id: &[u8]) -> Result<(Store, PublicGroup), DsError> {
    let store = Store::from_bytes(state)?;
    let group = PublicGroup::load(&store, &GroupId::from_slice(group_id))
        .map_err(|_| DsError::State)?
        .ok_or(DsError::State)?;
    Ok((store, group))
}

fn invalid(e: impl std::fmt::Debug) -> DsError {
    let d = format!("{e:?}");
    // The variant names only: openmls errors can carry values.
    let short: String = d
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|s| !s.is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    DsError::Invalid(short)
}

/// Start tracking a new group from its creator's GroupInfo (with the ratchet
/// tree): epoch 0, the creating device its only member. Returns the state.
pub(crate) fn create(
    group_id: &[u8],
    group_info: &[u8],
    creator: &Enrolled,
    org_public: &[u8],
) -> Result<Vec<u8>, DsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(group_info).map_err(|_| DsError::BadGroupInfo)?;
    let MlsMessageBodyIn::GroupInfo(gi) = msg.extract() else {
        return Err(DsError::BadGroupInfo);
    };
    if gi.group_id().as_slice() != group_id || gi.epoch().as_u64() != 0 {
        return Err(DsError::BadGroupInfo);
    }
    let tree = gi
        .extensions()
        .ratchet_tree()
        .ok_or(DsError::BadGroupInfo)?
        .ratchet_tree()
        .clone();
    let store = Store::default();
    let (group, _) = PublicGroup::from_external(
        &RustCrypto::default(),
        &store,
        tree,
        gi,
        ProposalStore::new(),
    )
    .map_err(|_| DsError::BadGroupInfo)?;
    let members: Vec<_> = group.members().collect();
    let [only] = members.as_slice() else {
        return Err(DsError::BadGroupInfo);
    };
    if only.signature_key != creator.signature_key
        || leaf_device(&only.credential, &only.signature_key, org_public).as_deref()
            != Some(creator.device_id.as_str())
    {
        return Err(DsError::BadGroupInfo);
    }
    store.to_bytes()
}

/// Validate a commit against the group's state. `device` looks up an
/// enrolled device by id: its signature key, if it exists and is not revoked.
pub(crate) fn commit(
    state: &[u8],
    group_id: &[u8],
    commit: &[u8],
    welcome: Option<&[u8]>,
    sender: &Enrolled,
    org_public: &[u8],
    mut device: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Accepted, DsError> {
    let proto = parse_public(commit, group_id)?;
    let (store, mut group) = load(state, group_id)?;
    let current = group.group_context().epoch().as_u64();
    if proto.epoch().as_u64() != current {
        return Err(DsError::WrongEpoch(current));
    }
    let crypto = RustCrypto::default();
    let processed = group.process_message(&crypto, proto).map_err(invalid)?;
    let sender_leaf = match processed.sender() {
        Sender::Member(i) => *i,
        _ => return Err(DsError::NotSender),
    };
    let sender_ok = group.leaf(sender_leaf).is_some_and(|l| {
        l.signature_key().as_slice() == sender.signature_key.as_slice()
            && leaf_device(l.credential(), l.signature_key().as_slice(), org_public).as_deref()
                == Some(sender.device_id.as_str())
    });
    if !sender_ok {
        return Err(DsError::NotSender);
    }
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(DsError::NotPublic);
    };
    // Only what Sitrep's clients make: adds, removes, and the committer's
    // own path (its leaf must stay the same device).
    for p in staged.queued_proposals() {
        match p.proposal() {
            Proposal::Add(_) | Proposal::Remove(_) => {}
            Proposal::Update(_) => return Err(DsError::Proposal("update")),
            Proposal::GroupContextExtensions(_) => {
                return Err(DsError::Proposal("group context extensions"));
            }
            _ => return Err(DsError::Proposal("other")),
        }
    }
    if let Some(leaf) = staged.update_path_leaf_node()
        && (leaf.signature_key().as_slice() != sender.signature_key.as_slice()
            || leaf_device(
                leaf.credential(),
                leaf.signature_key().as_slice(),
                org_public,
            )
            .as_deref()
                != Some(sender.device_id.as_str()))
    {
        return Err(DsError::NotSender);
    }
    let mut added = Vec::new();
    let mut joiners = Vec::new();
    for add in staged.add_proposals() {
        let kp = add.add_proposal().key_package();
        joiners.push(kp.hash_ref(&crypto).map_err(|_| DsError::BadAdd)?);
        let leaf = kp.leaf_node();
        let key = leaf.signature_key().as_slice();
        let dev = leaf_device(leaf.credential(), key, org_public).ok_or(DsError::BadAdd)?;
        if device(&dev).as_deref() != Some(key) || added.contains(&dev) {
            return Err(DsError::BadAdd);
        }
        added.push(dev);
    }
    let mut removed = Vec::new();
    for rem in staged.remove_proposals() {
        let idx: LeafNodeIndex = rem.remove_proposal().removed();
        let leaf = group
            .leaf(idx)
            .ok_or_else(|| invalid("remove of an empty leaf"))?;
        // A leaf the organisation never vouched for (it could not have been
        // added) has no device; removing it is fine.
        if let Some(d) = leaf_device(
            leaf.credential(),
            leaf.signature_key().as_slice(),
            org_public,
        ) {
            removed.push(d);
        }
    }
    // The Welcome cannot be opened here, but it must be one, of this
    // group's suite, with secrets for exactly the KeyPackages the commit adds:
    // a joiner is never left in the tree with nothing to join by.
    match welcome {
        None if added.is_empty() => {}
        Some(w) if !added.is_empty() => {
            let Ok(MlsMessageBodyIn::Welcome(w)) =
                MlsMessageIn::tls_deserialize_exact(w).map(MlsMessageIn::extract)
            else {
                return Err(DsError::Welcome);
            };
            let mut refs: Vec<_> = w.secrets().iter().map(|s| s.new_member()).collect();
            refs.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
            joiners.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
            if w.ciphersuite() != group.ciphersuite() || refs != joiners {
                return Err(DsError::Welcome);
            }
        }
        _ => return Err(DsError::Welcome),
    }
    group
        .merge_commit(&store, *staged)
        .map_err(|_| DsError::State)?;
    Ok(Accepted {
        added,
        removed,
        epoch: group.group_context().epoch().as_u64(),
        state: store.to_bytes()?,
    })
}

/// Validate a member's proposal to remove itself (leaving) and queue it for
/// the next commit. Returns the new state.
pub(crate) fn leave(
    state: &[u8],
    group_id: &[u8],
    proposal: &[u8],
    sender: &Enrolled,
    org_public: &[u8],
) -> Result<Vec<u8>, DsError> {
    let proto = parse_public(proposal, group_id)?;
    let (store, mut group) = load(state, group_id)?;
    let current = group.group_context().epoch().as_u64();
    if proto.epoch().as_u64() != current {
        return Err(DsError::WrongEpoch(current));
    }
    let processed = group
        .process_message(&RustCrypto::default(), proto)
        .map_err(invalid)?;
    let Sender::Member(me) = *processed.sender() else {
        return Err(DsError::NotSender);
    };
    let sender_ok = group.leaf(me).is_some_and(|l| {
        l.signature_key().as_slice() == sender.signature_key.as_slice()
            && leaf_device(l.credential(), l.signature_key().as_slice(), org_public).as_deref()
                == Some(sender.device_id.as_str())
    });
    if !sender_ok {
        return Err(DsError::NotSender);
    }
    let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
        return Err(DsError::Proposal("a leave is one proposal"));
    };
    let queued: QueuedProposal = *queued;
    match queued.proposal() {
        Proposal::Remove(r) if r.removed() == me => {}
        _ => {
            return Err(DsError::Proposal(
                "a member may only propose its own removal",
            ));
        }
    }
    group
        .add_proposal(&store, queued)
        .map_err(|_| DsError::State)?;
    store.to_bytes()
}

/// Check the clear framing of an application message: an MLS PrivateMessage
/// of this group carrying application content. Its content is encrypted and
/// stays unread; a handshake smuggled past validation this way is refused.
pub(crate) fn application(bytes: &[u8], group_id: &[u8], epoch: u64) -> Result<(), DsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| DsError::NotPrivate)?;
    let MlsMessageBodyIn::PrivateMessage(m) = msg.extract() else {
        return Err(DsError::NotPrivate);
    };
    let proto = ProtocolMessage::from(m);
    if proto.group_id().as_slice() != group_id {
        return Err(DsError::WrongGroup);
    }
    if proto.content_type() != openmls::prelude::ContentType::Application {
        return Err(DsError::NotPrivate);
    }
    // Not from an epoch the group has not reached (it would tell every
    // member it is out of step), nor older than members keep keys for.
    let e = proto.epoch().as_u64();
    if e > epoch || e + PAST_EPOCHS < epoch {
        return Err(DsError::WrongEpoch(epoch));
    }
    Ok(())
}
