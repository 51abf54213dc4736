//! The device: enrolment, KeyPackages, conversations, sending and receiving.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use serde_bytes::ByteBuf;
use sitrep_wire::api::{
    ClaimedKeyPackage, CommitRequest, CreateGroup, EnrolResponse, EntryKind, SendRequest,
    UploadKeyPackages,
};
use sitrep_wire::content::{Content, Kind};
use sitrep_wire::credential::{DeviceCredential, SignedCredential};
use sitrep_wire::meta::{self, ConversationMeta};
use sitrep_wire::policy::{OrgPolicy, SignedPolicy};

use crate::Error;
use crate::provider::Provider;
use crate::state::{Conversation, Device, HistoryEntry, Pending, State};

/// How many past epochs keep their secrets, so an application message sent just
/// before a commit still decrypts after it.
const MAX_PAST_EPOCHS: usize = 5;
/// Sender ratchet tolerance for reordered and skipped messages.
const OUT_OF_ORDER_TOLERANCE: u32 = 200;
const MAX_FORWARD_DISTANCE: u32 = 5_000;

/// A device being enrolled: its signature key exists, its credential does not yet.
pub struct PendingEnrolment {
    provider: Provider,
    signer: SignatureKeyPair,
    ciphersuite: Ciphersuite,
}

impl PendingEnrolment {
    /// Make the device's MLS signature key (it never leaves the device).
    pub fn new(ciphersuite: Ciphersuite) -> Result<Self, Error> {
        let signer =
            SignatureKeyPair::new(ciphersuite.signature_algorithm()).map_err(Error::mls)?;
        Ok(Self {
            provider: Provider::default(),
            signer,
            ciphersuite,
        })
    }

    /// The public key to send to the authentication service.
    pub fn signature_key(&self) -> Vec<u8> {
        self.signer.public().to_vec()
    }

    /// Check the server's answer (the credential must be signed by the returned
    /// organisation key and name our signature key) and become a device.
    pub fn finish(self, server: &str, resp: EnrolResponse) -> Result<Client, Error> {
        let sc = SignedCredential::decode(&resp.credential)
            .map_err(|e| Error::Unverified(e.to_string()))?;
        let cred = sc
            .verify(&resp.org_public_key, self.signer.public())
            .map_err(|e| Error::Unverified(e.to_string()))?;
        if cred.user_id != resp.user_id || cred.device_id != resp.device_id {
            return Err(Error::Protocol("credential names another device".into()));
        }
        self.signer
            .store(self.provider.storage())
            .map_err(Error::mls)?;
        let state = State {
            v: 1,
            device: Device {
                server: server.to_string(),
                org_name: resp.org_name,
                org_public_key: ByteBuf::from(resp.org_public_key),
                user_id: cred.user_id,
                device_id: cred.device_id,
                display_name: cred.display_name,
                role: cred.role,
                token: resp.token,
                credential: ByteBuf::from(resp.credential),
                ciphersuite: u16::from(self.ciphersuite),
                signer_public: ByteBuf::from(self.signer.public().to_vec()),
            },
            mls: Vec::new(),
            conversations: BTreeMap::new(),
            last_seq: 0,
            outbox: Vec::new(),
            has_last_resort: false,
            policy: None,
            totp_secret: None,
            records_index: BTreeMap::new(),
            records_journal: Vec::new(),
            audit_key: None,
            directory: None,
            incidents: BTreeMap::new(),
            alerts: BTreeMap::new(),
        };
        Ok(Client {
            provider: self.provider,
            signer: self.signer,
            state,
            groups: HashMap::new(),
            verified: RefCell::default(),
            deferred: Vec::new(),
            org_key: std::cell::OnceCell::default(),
            verified_policy: RefCell::default(),
            verified_directory: RefCell::default(),
        })
    }
}

/// A commit ready for the server; apply the outcome with
/// [`Client::commit_accepted`] or [`Client::commit_rejected`].
#[derive(Debug, Clone)]
pub struct PreparedCommit {
    /// Group id, hex (the URL path segment).
    pub group_hex: String,
    /// The request body.
    pub request: CommitRequest,
}

/// An application message ready for the server.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Group id, hex.
    pub group_hex: String,
    /// The request body.
    pub request: SendRequest,
}

/// A member of a conversation, as its verified credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// User id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: String,
}

/// What processing an inbox entry did, for a front end to show.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// This device joined a conversation.
    Joined {
        /// Its name.
        conversation: String,
    },
    /// A message arrived.
    Message {
        /// Conversation name.
        conversation: String,
        /// The stored entry.
        entry: HistoryEntry,
    },
    /// Members were added or removed.
    Membership {
        /// Conversation name.
        conversation: String,
        /// What changed, for people.
        summary: String,
    },
    /// This device was removed from a conversation.
    Removed {
        /// Conversation name.
        conversation: String,
    },
    /// Something was refused: an unverifiable member, an undecryptable message.
    Refused {
        /// Why, for people (no message content).
        reason: String,
    },
}

/// Verified credentials by leaf signature key: (credential bytes, result).
type VerifiedCache = HashMap<Vec<u8>, (Vec<u8>, DeviceCredential)>;

/// An unlocked device.
pub struct Client {
    pub(crate) provider: Provider,
    pub(crate) signer: SignatureKeyPair,
    pub(crate) state: State,
    /// Groups in memory. openmls writes through to the provider's storage on
    /// every change, so this is only a cache: dropping an entry loses nothing.
    pub(crate) groups: HashMap<String, MlsGroup>,
    /// Credentials already verified, by leaf signature key: (credential bytes, result).
    verified: RefCell<VerifiedCache>,
    /// Groups whose message secrets wait to be written (see `handle_entries`).
    deferred: Vec<String>,
    /// The organisation's key, parsed once.
    org_key: std::cell::OnceCell<Option<sitrep_wire::credential::VerifyingKey>>,
    /// The signed policy and directory, verified once per change rather than
    /// on every read (every received message consults the policy).
    pub(crate) verified_policy: RefCell<Option<OrgPolicy>>,
    pub(crate) verified_directory: RefCell<Option<sitrep_wire::directory::Directory>>,
}

fn hex_id(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

impl Client {
    /// Restore from the plaintext of a sealed profile.
    pub fn from_bytes(plain: &[u8]) -> Result<Self, Error> {
        let state: State =
            ciborium::from_reader(plain).map_err(|_| Error::BadStore("state does not decode"))?;
        if state.v != 1 {
            return Err(Error::BadStore("unknown state version"));
        }
        let cs = Ciphersuite::try_from(state.device.ciphersuite)
            .map_err(|_| Error::BadStore("ciphersuite"))?;
        let values: HashMap<Vec<u8>, Vec<u8>> = state
            .mls
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let provider = Provider::from_values(values);
        let signer = SignatureKeyPair::read(
            provider.storage(),
            &state.device.signer_public,
            cs.signature_algorithm(),
        )
        .ok_or(Error::BadStore("signature key missing"))?;
        let mut state = state;
        state.mls = Vec::new();
        Ok(Self {
            provider,
            signer,
            state,
            groups: HashMap::new(),
            verified: RefCell::default(),
            deferred: Vec::new(),
            org_key: std::cell::OnceCell::default(),
            verified_policy: RefCell::default(),
            verified_directory: RefCell::default(),
        })
    }

    /// Everything to seal, as bytes.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut state = self.state.clone();
        let mut mls: Vec<(ByteBuf, ByteBuf)> = self
            .provider
            .values()
            .into_iter()
            .map(|(k, v)| (ByteBuf::from(k), ByteBuf::from(v)))
            .collect();
        mls.sort();
        state.mls = mls;
        let mut out = zeroize::Zeroizing::new(Vec::new());
        ciborium::into_writer(&state, &mut *out).expect("writing CBOR to a Vec cannot fail");
        out
    }

    /// `N` random bytes from the injected provider.
    pub fn random<const N: usize>(&self) -> [u8; N] {
        self.provider
            .rand()
            .random_array()
            .expect("the OS random source is available")
    }

    /// A fresh client message id (32 hex chars).
    pub fn new_client_id(&self) -> String {
        hex::encode(self.random::<16>())
    }

    /// The server this device enrolled with.
    pub fn server(&self) -> &str {
        &self.state.device.server
    }
    /// Bearer token for the server.
    pub fn token(&self) -> &str {
        &self.state.device.token
    }
    /// User id.
    pub fn user_id(&self) -> &str {
        &self.state.device.user_id
    }
    /// Device id.
    pub fn device_id(&self) -> &str {
        &self.state.device.device_id
    }
    /// Display name.
    pub fn display_name(&self) -> &str {
        &self.state.device.display_name
    }
    /// Organisation name.
    pub fn org_name(&self) -> &str {
        &self.state.device.org_name
    }
    /// Highest inbox sequence number processed.
    pub fn last_seq(&self) -> u64 {
        self.state.last_seq
    }
    /// The suite this device's groups use.
    pub fn ciphersuite(&self) -> Ciphersuite {
        Ciphersuite::try_from(self.state.device.ciphersuite)
            .expect("the ciphersuite was valid when the profile was created")
    }

    fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.state.device.credential.to_vec()).into(),
            signature_key: self.signer.public().into(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            None,
            Some(&[self.ciphersuite()]),
            Some(&[ExtensionType::Unknown(meta::EXTENSION_TYPE)]),
            None,
            None,
        )
    }

    /// `n` fresh one-time KeyPackages, plus a last-resort one if this device has
    /// none on the server yet.
    pub fn key_packages(&mut self, n: usize) -> Result<UploadKeyPackages, Error> {
        let cs = self.ciphersuite();
        let mut out = UploadKeyPackages::default();
        for _ in 0..n {
            let kp = KeyPackage::builder()
                .leaf_node_capabilities(self.capabilities())
                .build(cs, &self.provider, &self.signer, self.credential_with_key())
                .map_err(Error::mls)?;
            out.key_packages.push(ser(kp.key_package())?);
        }
        if !self.state.has_last_resort {
            let kp = KeyPackage::builder()
                .leaf_node_capabilities(self.capabilities())
                .mark_as_last_resort()
                .build(cs, &self.provider, &self.signer, self.credential_with_key())
                .map_err(Error::mls)?;
            out.last_resort = Some(ser(kp.key_package())?);
        }
        Ok(out)
    }

    /// Apply a policy signed by the organisation key. A policy that is not
    /// signed by it, is malformed, or is not newer than the one in force is
    /// refused, and the one in force stays.
    pub fn apply_policy(&mut self, signed: &[u8]) -> Result<OrgPolicy, Error> {
        let p = SignedPolicy::verify(signed, &self.state.device.org_public_key)
            .map_err(|e| Error::Unverified(e.to_string()))?;
        if p.serial <= self.policy().serial && self.state.policy.is_some() {
            return Err(Error::Invalid(format!(
                "policy serial {} is not newer than {}",
                p.serial,
                self.policy().serial
            )));
        }
        self.state.policy = Some(ByteBuf::from(signed.to_vec()));
        self.verified_policy.replace(None);
        Ok(p)
    }

    /// The policy in force (the NHS-guidance defaults until the organisation
    /// sends one).
    pub fn policy(&self) -> OrgPolicy {
        self.verified_policy
            .borrow_mut()
            .get_or_insert_with(|| {
                self.state
                    .policy
                    .as_ref()
                    .and_then(|b| SignedPolicy::verify(b, &self.state.device.org_public_key).ok())
                    .unwrap_or_default()
            })
            .clone()
    }

    /// Set up two-step verification: a fresh TOTP secret (RFC 6238: SHA-1,
    /// 6 digits, 30 s) kept in the sealed store. Returns the otpauth URI for
    /// an authenticator app.
    pub fn setup_totp(&mut self) -> Result<String, Error> {
        let secret = self.random::<20>().to_vec();
        self.state.totp_secret = Some(ByteBuf::from(secret));
        self.totp_uri().ok_or_else(|| Error::Invalid("TOTP".into()))
    }

    fn totp(&self) -> Option<totp_rs::TOTP> {
        let secret = self.state.totp_secret.as_ref()?.to_vec();
        totp_rs::TOTP::new(
            totp_rs::Algorithm::SHA1,
            6,
            1,
            30,
            secret,
            Some("Sitrep".into()),
            format!(
                "{}@{}",
                self.state.device.user_id, self.state.device.device_id
            ),
        )
        .ok()
    }

    /// The otpauth URI of this device's TOTP secret, if set up.
    pub fn totp_uri(&self) -> Option<String> {
        self.totp().map(|t| t.get_url())
    }

    /// Whether `code` is this device's current TOTP code (one step of skew).
    pub fn check_totp(&self, code: &str, unix_secs: u64) -> bool {
        self.totp().is_some_and(|t| t.check(code.trim(), unix_secs))
    }

    /// The server stored our last-resort KeyPackage.
    pub fn last_resort_uploaded(&mut self) {
        self.state.has_last_resort = true;
    }

    fn verify_leaf(
        &self,
        credential: &Credential,
        signature_key: &[u8],
    ) -> Result<DeviceCredential, Error> {
        let basic = BasicCredential::try_from(credential.clone())
            .map_err(|_| Error::Unverified("a member has no Sitrep credential".into()))?;
        if let Some((bytes, cred)) = self.verified.borrow().get(signature_key)
            && bytes.as_slice() == basic.identity()
        {
            return Ok(cred.clone());
        }
        let sc = SignedCredential::decode(basic.identity())
            .map_err(|e| Error::Unverified(format!("a member's credential: {e}")))?;
        let org_key = self
            .org_key
            .get_or_init(|| {
                <[u8; 32]>::try_from(self.state.device.org_public_key.as_slice())
                    .ok()
                    .and_then(|k| sitrep_wire::credential::VerifyingKey::from_bytes(&k).ok())
            })
            .as_ref()
            .ok_or_else(|| Error::Unverified("the organisation key is malformed".into()))?;
        let cred = sc
            .verify_with(org_key, signature_key)
            .map_err(|e| Error::Unverified(format!("a member's {e}")))?;
        if cred.org != self.state.device.org_name {
            return Err(Error::Unverified(
                "a member belongs to another organisation".into(),
            ));
        }
        self.verified.borrow_mut().insert(
            signature_key.to_vec(),
            (basic.identity().to_vec(), cred.clone()),
        );
        Ok(cred)
    }

    fn group_config_builder(&self) -> MlsGroupBuilder {
        MlsGroup::builder()
            .ciphersuite(self.ciphersuite())
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                OUT_OF_ORDER_TOLERANCE,
                MAX_FORWARD_DISTANCE,
            ))
            .with_capabilities(self.capabilities())
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                OUT_OF_ORDER_TOLERANCE,
                MAX_FORWARD_DISTANCE,
            ))
            .build()
    }

    fn unique_name(&self, name: &str) -> String {
        let taken = |n: &str| {
            self.state
                .conversations
                .values()
                .any(|c| c.active && c.name == n)
        };
        if !taken(name) {
            return name.to_string();
        }
        (2..)
            .map(|i| format!("{name} ({i})"))
            .find(|n| !taken(n))
            .expect("some suffix is free")
    }

    fn group_hex_by_name(&self, name: &str) -> Result<String, Error> {
        self.state
            .conversations
            .iter()
            .rev()
            .find(|(_, c)| c.name == name && c.active)
            .or_else(|| {
                self.state
                    .conversations
                    .iter()
                    .find(|(_, c)| c.name == name)
            })
            .map(|(k, _)| k.clone())
            .ok_or_else(|| Error::UnknownConversation(name.to_string()))
    }

    /// Take a group out of the cache (or load it); put it back with
    /// [`Self::put_group`] once the operation succeeded.
    pub(crate) fn take_group(&mut self, group_hex: &str) -> Result<MlsGroup, Error> {
        match self.groups.remove(group_hex) {
            Some(g) => Ok(g),
            None => self.load_group(group_hex),
        }
    }

    pub(crate) fn put_group(&mut self, group_hex: &str, group: MlsGroup) {
        self.groups.insert(group_hex.to_string(), group);
    }

    fn load_group(&self, group_hex: &str) -> Result<MlsGroup, Error> {
        let gid = hex::decode(group_hex).map_err(|_| Error::Invalid("group id".into()))?;
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(&gid))
            .map_err(Error::mls)?
            .ok_or_else(|| Error::Invalid("this device holds no state for that group".into()))
    }

    /// Create a conversation with only this device in it. Returns the request
    /// that registers it with the server.
    pub fn create_conversation(
        &mut self,
        name: &str,
        pid_policy: &str,
    ) -> Result<(String, CreateGroup), Error> {
        let recorded = self.policy().record_all;
        self.create_conversation_with(name, pid_policy, 0, recorded, 0)
    }

    /// [`Client::create_conversation`] with a retention period in seconds (0:
    /// the organisation's default; otherwise within the signed policy's bounds)
    /// and, when `recorded`, marked for the organisation's records account, whose
    /// devices the caller then adds. The organisation may make every
    /// conversation recorded.
    pub fn create_conversation_with(
        &mut self,
        name: &str,
        pid_policy: &str,
        retention_secs: u64,
        recorded: bool,
        now_ms: u64,
    ) -> Result<(String, CreateGroup), Error> {
        self.create_conversation_full(name, pid_policy, retention_secs, recorded, &[], now_ms)
    }

    /// [`Client::create_conversation_with`], optionally as a command channel
    /// where only `posters` post (every member's client enforces it).
    pub fn create_conversation_full(
        &mut self,
        name: &str,
        pid_policy: &str,
        retention_secs: u64,
        recorded: bool,
        posters: &[String],
        now_ms: u64,
    ) -> Result<(String, CreateGroup), Error> {
        let policy = self.policy();
        if retention_secs != 0
            && !(sitrep_wire::policy::MIN_RETENTION_SECS..=policy.retention_max_secs)
                .contains(&retention_secs)
        {
            return Err(Error::Invalid(format!(
                "retention must be between {} seconds and the organisation's maximum of {} seconds",
                sitrep_wire::policy::MIN_RETENTION_SECS,
                policy.retention_max_secs
            )));
        }
        let recorded = recorded || policy.record_all;
        if recorded && policy.records_user.is_none() {
            return Err(Error::Invalid(
                "the organisation has not named a records account".into(),
            ));
        }
        if name.is_empty() || name.len() > 256 {
            return Err(Error::Invalid(
                "a conversation name is 1 to 256 bytes".into(),
            ));
        }
        if self
            .state
            .conversations
            .values()
            .any(|c| c.active && c.name == name)
        {
            return Err(Error::ConversationExists(name.to_string()));
        }
        if !matches!(pid_policy, "off" | "warn" | "block" | "pseudonymise") {
            return Err(Error::Invalid(format!("unknown PID policy {pid_policy:?}")));
        }
        let meta = ConversationMeta {
            v: 1,
            name: name.to_string(),
            created_by: self.state.device.user_id.clone(),
            pid_policy: pid_policy.to_string(),
            retention_secs,
            recorded,
            posters: posters.to_vec(),
        };
        let ext = Extensions::single(Extension::Unknown(
            meta::EXTENSION_TYPE,
            UnknownExtension(meta.encode()),
        ))
        .map_err(Error::mls)?;
        let gid = self.random::<16>();
        let group = self
            .group_config_builder()
            .with_group_id(GroupId::from_slice(&gid))
            .with_group_context_extensions(ext)
            .build(&self.provider, &self.signer, self.credential_with_key())
            .map_err(Error::mls)?;
        let group_hex = hex_id(group.group_id().as_slice());
        self.state.conversations.insert(
            group_hex.clone(),
            Conversation {
                group_id: ByteBuf::from(gid.to_vec()),
                name: name.to_string(),
                pid_policy: pid_policy.to_string(),
                active: true,
                history: Vec::new(),
                pending_removals: Vec::new(),
                retention_secs,
                recorded,
                epoch_starts: vec![(0, now_ms)],
                keys_deleted_through: 0,
                posters: posters.to_vec(),
                decisions: Vec::new(),
                decision_seqs: BTreeMap::new(),
                casualties: BTreeMap::new(),
                receipts_through: 0,
            },
        );
        Ok((
            group_hex,
            CreateGroup {
                group_id: gid.to_vec(),
            },
        ))
    }

    /// Name to group id.
    pub fn group_hex(&self, name: &str) -> Result<String, Error> {
        self.group_hex_by_name(name)
    }

    /// Build a commit adding the devices whose KeyPackages were claimed. Every
    /// KeyPackage is validated and its credential checked against the
    /// organisation key first; one bad KeyPackage refuses the whole add.
    pub fn prepare_add(
        &mut self,
        name: &str,
        claimed: &[ClaimedKeyPackage],
    ) -> Result<PreparedCommit, Error> {
        let group_hex = self.group_hex_by_name(name)?;
        let mut group = self.take_group(&group_hex)?;
        let present: Vec<String> = self
            .members_of(&group)?
            .into_iter()
            .map(|m| m.device_id)
            .collect();
        let mut kps = Vec::new();
        let mut devices = Vec::new();
        for c in claimed {
            if present.contains(&c.device_id) {
                continue;
            }
            let kp_in = match MlsMessageIn::tls_deserialize_exact(c.key_package.as_slice())
                .map(MlsMessageIn::extract)
            {
                Ok(MlsMessageBodyIn::KeyPackage(kp)) => kp,
                _ => return Err(Error::Protocol("malformed KeyPackage".into())),
            };
            let kp = kp_in
                .validate(self.provider.crypto(), ProtocolVersion::Mls10)
                .map_err(|e| {
                    Error::Unverified(format!("KeyPackage of device {}: {e:?}", c.device_id))
                })?;
            if kp.ciphersuite() != self.ciphersuite() {
                return Err(Error::Unverified(format!(
                    "device {} uses another ciphersuite",
                    c.device_id
                )));
            }
            let leaf = kp.leaf_node();
            let cred = self
                .verify_leaf(leaf.credential(), leaf.signature_key().as_slice())
                .map_err(|e| {
                    Error::Unverified(format!("device {} of {}: {e}", c.device_id, c.user_id))
                })?;
            if cred.user_id != c.user_id || cred.device_id != c.device_id {
                return Err(Error::Unverified(format!(
                    "KeyPackage for {} carries another device's credential",
                    c.device_id
                )));
            }
            devices.push(c.device_id.clone());
            kps.push(kp);
        }
        if kps.is_empty() {
            return Err(Error::Invalid("nobody new to add".into()));
        }
        let epoch = group.epoch().as_u64();
        let (commit, welcome, _) = group
            .add_members(&self.provider, &self.signer, &kps)
            .map_err(Error::mls)?;
        self.put_group(&group_hex, group);
        Ok(self.prepared(
            group_hex,
            epoch,
            ser_msg(&commit)?,
            Some(ser_msg(&welcome)?),
            devices,
            Vec::new(),
        ))
    }

    /// Build a commit removing every device of `user_id`.
    pub fn prepare_remove(&mut self, name: &str, user_id: &str) -> Result<PreparedCommit, Error> {
        let group_hex = self.group_hex_by_name(name)?;
        let mut group = self.take_group(&group_hex)?;
        let mut leaves = Vec::new();
        let mut devices = Vec::new();
        for m in group.members() {
            let cred = self.verify_leaf(&m.credential, &m.signature_key)?;
            if cred.user_id == user_id {
                leaves.push(m.index);
                devices.push(cred.device_id);
            }
        }
        if leaves.is_empty() {
            return Err(Error::Invalid(format!(
                "{user_id} is not in this conversation"
            )));
        }
        let epoch = group.epoch().as_u64();
        let (commit, _, _) = group
            .remove_members(&self.provider, &self.signer, &leaves)
            .map_err(Error::mls)?;
        self.put_group(&group_hex, group);
        Ok(self.prepared(
            group_hex,
            epoch,
            ser_msg(&commit)?,
            None,
            Vec::new(),
            devices,
        ))
    }

    /// Build a commit that refreshes this device's leaf keys (post-compromise security).
    pub fn prepare_update(&mut self, name: &str) -> Result<PreparedCommit, Error> {
        let group_hex = self.group_hex_by_name(name)?;
        let mut group = self.take_group(&group_hex)?;
        let epoch = group.epoch().as_u64();
        let bundle = group
            .self_update(&self.provider, &self.signer, LeafNodeParameters::default())
            .map_err(Error::mls)?;
        self.put_group(&group_hex, group);
        Ok(self.prepared(
            group_hex,
            epoch,
            ser_msg(bundle.commit())?,
            None,
            Vec::new(),
            Vec::new(),
        ))
    }

    /// Leave a conversation: a Remove proposal for our own leaf, for the server
    /// to hand to the others. Call [`Client::left`] once the server accepted it.
    pub fn prepare_leave(
        &mut self,
        name: &str,
    ) -> Result<(String, sitrep_wire::api::LeaveRequest), Error> {
        let group_hex = self.group_hex_by_name(name)?;
        let mut group = self.take_group(&group_hex)?;
        let proposal = group
            .leave_group(&self.provider, &self.signer)
            .map_err(Error::mls)?;
        self.put_group(&group_hex, group);
        Ok((
            group_hex,
            sitrep_wire::api::LeaveRequest {
                client_id: self.new_client_id(),
                proposal: ser_msg(&proposal)?,
            },
        ))
    }

    /// The server accepted our leaving: the conversation stays readable here,
    /// but nothing more arrives or can be sent.
    pub fn left(&mut self, group_hex: &str, now_ms: u64) -> Vec<Event> {
        let mut events = self.system_line(group_hex, u64::MAX, "you left".into(), now_ms);
        if let Some(c) = self.state.conversations.get_mut(group_hex) {
            c.active = false;
            events.push(Event::Removed {
                conversation: c.name.clone(),
            });
        }
        events
    }

    /// Names of active conversations holding proposals that still need a commit.
    pub fn pending_proposals(&mut self) -> Vec<String> {
        let hexes: Vec<String> = self
            .state
            .conversations
            .iter()
            .filter(|(_, c)| c.active)
            .map(|(h, _)| h.clone())
            .collect();
        let mut names = Vec::new();
        for h in hexes {
            let removals = !self.state.conversations[&h].pending_removals.is_empty();
            if let Ok(g) = self.take_group(&h) {
                if removals || g.pending_proposals().next().is_some() {
                    names.push(self.state.conversations[&h].name.clone());
                }
                self.put_group(&h, g);
            }
        }
        names
    }

    /// Commit the pending proposals of a conversation (members who left), or
    /// `None` when there are none left (another member committed them).
    pub fn prepare_commit_pending(&mut self, name: &str) -> Result<Option<PreparedCommit>, Error> {
        let group_hex = self.group_hex_by_name(name)?;
        let mut group = self.take_group(&group_hex)?;
        // Revoked devices still in the tree.
        let revoked = self.state.conversations[&group_hex]
            .pending_removals
            .clone();
        let mut leaves = Vec::new();
        for m in group.members() {
            if let Ok(c) = self.verify_leaf(&m.credential, &m.signature_key)
                && revoked.contains(&c.device_id)
            {
                leaves.push(m.index);
            }
        }
        if leaves.is_empty()
            && let Some(c) = self.state.conversations.get_mut(&group_hex)
        {
            c.pending_removals.clear();
        }
        if leaves.is_empty() && group.pending_proposals().next().is_none() {
            self.put_group(&group_hex, group);
            return Ok(None);
        }
        let epoch = group.epoch().as_u64();
        let (commit, _, _) = if leaves.is_empty() {
            group
                .commit_to_pending_proposals(&self.provider, &self.signer)
                .map_err(Error::mls)?
        } else {
            // Pending proposals (members leaving) go into the same commit.
            group
                .remove_members(&self.provider, &self.signer, &leaves)
                .map_err(Error::mls)?
        };
        self.put_group(&group_hex, group);
        // No device lists: the server already ended the delivery of members who
        // left or were revoked.
        Ok(Some(self.prepared(
            group_hex,
            epoch,
            ser_msg(&commit)?,
            None,
            Vec::new(),
            Vec::new(),
        )))
    }

    fn prepared(
        &self,
        group_hex: String,
        epoch: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
        add_devices: Vec<String>,
        remove_devices: Vec<String>,
    ) -> PreparedCommit {
        PreparedCommit {
            group_hex,
            request: CommitRequest {
                client_id: self.new_client_id(),
                epoch,
                commit,
                welcome,
                add_devices,
                remove_devices,
            },
        }
    }

    /// The server accepted our commit: merge it.
    pub fn commit_accepted(&mut self, group_hex: &str, now_ms: u64) -> Result<Vec<Event>, Error> {
        let mut group = self.take_group(group_hex)?;
        let summary = match group.pending_commit() {
            Some(staged) => self.describe(&group, staged),
            None => return Err(Error::Invalid("no commit is pending".into())),
        };
        group
            .merge_pending_commit(&self.provider)
            .map_err(Error::mls)?;
        let epoch = group.epoch().as_u64();
        self.put_group(group_hex, group);
        self.epoch_started(group_hex, epoch, now_ms);
        Ok(self.system_line(group_hex, epoch, summary, now_ms))
    }

    /// The server refused our commit (another won the epoch): forget it. The
    /// caller syncs and builds the commit again.
    pub fn commit_rejected(&mut self, group_hex: &str) -> Result<(), Error> {
        let mut group = self.take_group(group_hex)?;
        group
            .clear_pending_commit(self.provider.storage())
            .map_err(Error::mls)?;
        self.put_group(group_hex, group);
        Ok(())
    }

    fn describe(&self, group: &MlsGroup, staged: &StagedCommit) -> String {
        let mut parts = Vec::new();
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            if let Ok(c) = self.verify_leaf(leaf.credential(), leaf.signature_key().as_slice()) {
                if self.is_records_user(&c.user_id) {
                    parts.push(format!(
                        "{} Records ({}) joined: this conversation is now recorded by {} Records",
                        self.state.device.org_name, c.user_id, self.state.device.org_name
                    ));
                } else {
                    parts.push(format!("{} ({}) joined", c.display_name, c.user_id));
                }
            }
        }
        for rem in staged.remove_proposals() {
            let idx = rem.remove_proposal().removed();
            if let Some(m) = group.member_at(idx)
                && let Ok(c) = self.verify_leaf(&m.credential, &m.signature_key)
            {
                if self.is_records_user(&c.user_id) {
                    parts.push(format!(
                        "{} Records ({}) left: this conversation is no longer recorded",
                        self.state.device.org_name, c.user_id
                    ));
                } else {
                    parts.push(format!("{} ({}) left", c.display_name, c.user_id));
                }
            }
        }
        parts.join("; ")
    }

    pub(crate) fn system_line(
        &mut self,
        group_hex: &str,
        epoch: u64,
        summary: String,
        now_ms: u64,
    ) -> Vec<Event> {
        if summary.is_empty() {
            return Vec::new();
        }
        let Some(conv) = self.state.conversations.get_mut(group_hex) else {
            return Vec::new();
        };
        conv.history.push(HistoryEntry {
            id: format!("{epoch:032x}"),
            sender: "system".into(),
            sender_device: String::new(),
            sender_name: "Sitrep".into(),
            sent_at: now_ms,
            received_at: now_ms,
            kind: "system".into(),
            body: summary.clone(),
            epoch: 0,
            transferred_at: None,
            seq: 0,
        });
        vec![Event::Membership {
            conversation: conv.name.clone(),
            summary,
        }]
    }

    fn members_of(&self, group: &MlsGroup) -> Result<Vec<MemberInfo>, Error> {
        group
            .members()
            .map(|m| {
                let c = self.verify_leaf(&m.credential, &m.signature_key)?;
                Ok(MemberInfo {
                    user_id: c.user_id,
                    device_id: c.device_id,
                    display_name: c.display_name,
                    role: c.role,
                })
            })
            .collect()
    }

    /// Members of a conversation, each verified against the organisation key.
    pub fn members(&self, name: &str) -> Result<Vec<MemberInfo>, Error> {
        let group_hex = self.group_hex_by_name(name)?;
        match self.groups.get(&group_hex) {
            Some(g) => self.members_of(g),
            None => self.members_of(&self.load_group(&group_hex)?),
        }
    }

    /// Apply the conversation's PID policy (carried in the encrypted group
    /// context) to an outgoing text: the text to send, or why not. With
    /// `confirmed`, findings under `warn` are accepted (the sender saw them).
    pub fn pid_check(&self, name: &str, body: &str, confirmed: bool) -> Result<String, Error> {
        let conv = self.conversation(name)?;
        let policy: sitrep_pid::PidPolicy = conv.pid_policy.parse().unwrap_or_default();
        match sitrep_pid::apply_policy(policy, body) {
            sitrep_pid::PolicyOutcome::Send(t) | sitrep_pid::PolicyOutcome::Rewritten(t, _) => {
                Ok(t)
            }
            sitrep_pid::PolicyOutcome::NeedsConfirmation(_) if confirmed => Ok(body.to_string()),
            sitrep_pid::PolicyOutcome::NeedsConfirmation(f) => Err(Error::PidNeedsConfirmation(f)),
            sitrep_pid::PolicyOutcome::Blocked(f) => Err(Error::PidBlocked(f)),
        }
    }

    /// Encrypt a text message after the PID guard (unconfirmed); it waits in
    /// the outbox until [`Client::sent`].
    pub fn encrypt_text(&mut self, name: &str, body: &str, now_ms: u64) -> Result<Outgoing, Error> {
        self.encrypt_text_checked(name, body, now_ms, false)
    }

    /// [`Client::encrypt_text`], with the sender's confirmation of PID-guard
    /// warnings when `confirmed`. `block` and `pseudonymise` apply regardless.
    pub fn encrypt_text_checked(
        &mut self,
        name: &str,
        body: &str,
        now_ms: u64,
        confirmed: bool,
    ) -> Result<Outgoing, Error> {
        let checked = self.pid_check(name, body, confirmed)?;
        self.encrypt_raw(name, &checked, now_ms)
    }

    fn encrypt_raw(&mut self, name: &str, body: &str, now_ms: u64) -> Result<Outgoing, Error> {
        self.encrypt_content(name, Kind::Text, body, None, now_ms)
    }

    /// Encrypt structured content of any kind; it waits in the outbox until
    /// [`Client::sent`].
    pub(crate) fn encrypt_content(
        &mut self,
        name: &str,
        kind: Kind,
        body: &str,
        reply_to: Option<[u8; 16]>,
        now_ms: u64,
    ) -> Result<Outgoing, Error> {
        if body.len() > sitrep_wire::MAX_BODY_BYTES {
            return Err(Error::Invalid(format!(
                "message longer than {} bytes",
                sitrep_wire::MAX_BODY_BYTES
            )));
        }
        let group_hex = self.group_hex_by_name(name)?;
        let conv = &self.state.conversations[&group_hex];
        if !conv.active {
            return Err(Error::Invalid(
                "you are no longer in this conversation".into(),
            ));
        }
        let me = &self.state.device.user_id;
        if !conv.posters.is_empty()
            && !conv.posters.contains(me)
            && !matches!(kind, Kind::Receipt | Kind::Ack | Kind::Callin)
        {
            return Err(Error::Invalid(format!(
                "only commanders post in {name:?}; you can read it and reply to call-ins and alerts"
            )));
        }
        let mut group = self.take_group(&group_hex)?;
        let id = self.random::<16>();
        let mut content = Content::text(id, now_ms, body);
        content.kind = kind;
        content.reply_to = reply_to.map(|r| ByteBuf::from(r.to_vec()));
        let epoch = group.epoch().as_u64();
        let msg = group
            .create_message(&self.provider, &self.signer, &content.encode())
            .map_err(Error::mls)?;
        self.put_group(&group_hex, group);
        let client_id = hex_id(&id);
        let entry = HistoryEntry {
            id: client_id.clone(),
            sender: self.state.device.user_id.clone(),
            sender_device: self.state.device.device_id.clone(),
            sender_name: self.state.device.display_name.clone(),
            sent_at: now_ms,
            received_at: now_ms,
            kind: kind_name(&content.kind).into(),
            body: match &content.reply_to {
                Some(r) if content.kind == Kind::Transferred => hex_id(r),
                _ => body.to_string(),
            },
            epoch,
            transferred_at: None,
            seq: 0,
        };
        let payload = ser_msg(&msg)?;
        self.state.outbox.push(Pending {
            group_hex: group_hex.clone(),
            client_id: client_id.clone(),
            payload: ByteBuf::from(payload.clone()),
            entry,
        });
        Ok(Outgoing {
            group_hex,
            request: SendRequest { client_id, payload },
        })
    }

    /// Messages encrypted but not yet acknowledged, oldest first (to retry).
    pub fn outbox(&self) -> Vec<Outgoing> {
        self.state
            .outbox
            .iter()
            .map(|p| Outgoing {
                group_hex: p.group_hex.clone(),
                request: SendRequest {
                    client_id: p.client_id.clone(),
                    payload: p.payload.to_vec(),
                },
            })
            .collect()
    }

    /// The server durably stored this message: move it to history.
    pub fn sent(&mut self, client_id: &str) {
        self.sent_at_seq(client_id, 0);
    }

    /// [`Self::sent`], with the place the server gave it in its log.
    pub fn sent_at_seq(&mut self, client_id: &str, seq: u64) {
        if let Some(pos) = self
            .state
            .outbox
            .iter()
            .position(|p| p.client_id == client_id)
        {
            let mut p = self.state.outbox.remove(pos);
            p.entry.seq = seq;
            self.store_entry(&p.group_hex, p.entry);
        }
    }

    /// Drop an outbox entry the server refused for good.
    pub fn drop_outgoing(&mut self, client_id: &str) {
        self.state.outbox.retain(|p| p.client_id != client_id);
    }

    /// Conversations this device knows.
    pub fn conversations(&self) -> impl Iterator<Item = &Conversation> {
        self.state.conversations.values()
    }

    /// One conversation by name.
    pub fn conversation(&self, name: &str) -> Result<&Conversation, Error> {
        let hex = self.group_hex_by_name(name)?;
        Ok(&self.state.conversations[&hex])
    }

    /// Process one inbox entry. Entries at or below [`Client::last_seq`] were
    /// processed before and are skipped, so redelivery after a crash is harmless.
    /// Bad entries never fail the sync: they come back as [`Event::Refused`].
    /// [`Self::handle_entry`] for a page of entries, in order. Application
    /// messages' key-schedule state is written to the store once for the
    /// page instead of once per message (in a 5,000-member group that write
    /// was most of a message's cost).
    pub fn handle_entries<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, EntryKind, &'a [u8])>,
        now_ms: u64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for (seq, kind, payload) in entries {
            self.provider
                .storage_ref()
                .set_defer(kind == EntryKind::Application);
            events.extend(self.handle_entry(seq, kind, payload, now_ms));
        }
        self.provider.storage_ref().set_defer(false);
        let mut touched = std::mem::take(&mut self.deferred);
        touched.sort();
        touched.dedup();
        for hex in touched {
            if let Some(mut g) = self.groups.remove(&hex) {
                if let Err(e) = self.flush_secrets(&mut g) {
                    events.push(Event::Refused {
                        reason: e.to_string(),
                    });
                }
                self.groups.insert(hex, g);
            }
        }
        events
    }

    /// Write a group's message secrets to the store now (they were deferred).
    fn flush_secrets(&self, group: &mut MlsGroup) -> Result<(), Error> {
        let storage = self.provider.storage_ref();
        let was = storage.deferring();
        storage.set_defer(false);
        // Setting the policy it already has rewrites the join config and the
        // message secrets and changes nothing else.
        let policy = group.past_epoch_deletion_policy().clone();
        let r = group
            .set_past_epoch_deletion_policy(&self.provider, policy)
            .map_err(Error::mls);
        storage.set_defer(was);
        r
    }

    pub fn handle_entry(
        &mut self,
        seq: u64,
        kind: EntryKind,
        payload: &[u8],
        now_ms: u64,
    ) -> Vec<Event> {
        if seq <= self.state.last_seq {
            return Vec::new();
        }
        self.state.last_seq = seq;
        let result = match kind {
            EntryKind::Welcome => self.handle_welcome(payload, now_ms),
            EntryKind::Revoked => self.handle_revoked(payload, now_ms),
            EntryKind::Commit | EntryKind::Application | EntryKind::Proposal => {
                self.handle_group_message(seq, payload, now_ms)
            }
        };
        result.unwrap_or_else(|e| {
            vec![Event::Refused {
                reason: e.to_string(),
            }]
        })
    }

    /// The organisation revoked a device of this group: note it for removal.
    fn handle_revoked(&mut self, payload: &[u8], now_ms: u64) -> Result<Vec<Event>, Error> {
        let (&len, rest) = payload
            .split_first()
            .ok_or_else(|| Error::Protocol("empty revocation".into()))?;
        let len = len as usize;
        if rest.len() <= len || rest.len() - len > sitrep_wire::api::MAX_ID_LEN {
            return Err(Error::Protocol("malformed revocation".into()));
        }
        let group_hex = hex_id(&rest[..len]);
        let device = std::str::from_utf8(&rest[len..])
            .ok()
            .filter(|d| sitrep_wire::api::valid_id(d))
            .ok_or_else(|| Error::Protocol("malformed revocation".into()))?
            .to_string();
        let Some(conv) = self.state.conversations.get_mut(&group_hex) else {
            return Ok(Vec::new());
        };
        if !conv.pending_removals.contains(&device) {
            conv.pending_removals.push(device.clone());
        }
        let line = format!("device {device} was revoked by the organisation and is being removed");
        Ok(self.system_line(&group_hex, u64::MAX - 1, line, now_ms))
    }

    fn handle_welcome(&mut self, payload: &[u8], now_ms: u64) -> Result<Vec<Event>, Error> {
        let msg = MlsMessageIn::tls_deserialize_exact(payload)
            .map_err(|_| Error::Protocol("malformed Welcome".into()))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(Error::Protocol("expected a Welcome".into()));
        };
        let staged =
            StagedWelcome::build_from_welcome(&self.provider, &Self::join_config(), welcome)
                .map_err(Error::mls)?
                .replace_old_group()
                .build()
                .map_err(Error::mls)?;
        for m in staged.members() {
            self.verify_leaf(&m.credential, &m.signature_key)
                .map_err(|e| Error::Unverified(format!("invitation refused: {e}")))?;
        }
        let meta = staged
            .group_context()
            .extensions()
            .unknown(meta::EXTENSION_TYPE)
            .ok_or_else(|| Error::Protocol("conversation has no metadata".into()))
            .and_then(|u| {
                ConversationMeta::decode(&u.0).map_err(|e| Error::Protocol(e.to_string()))
            })?;
        let group = staged.into_group(&self.provider).map_err(Error::mls)?;
        let group_hex = hex_id(group.group_id().as_slice());
        let name = self.unique_name(&meta.name);
        let conv = self
            .state
            .conversations
            .entry(group_hex)
            .or_insert_with(|| Conversation {
                group_id: ByteBuf::from(group.group_id().as_slice().to_vec()),
                name: name.clone(),
                pid_policy: meta.pid_policy.clone(),
                active: true,
                history: Vec::new(),
                pending_removals: Vec::new(),
                retention_secs: 0,
                recorded: false,
                epoch_starts: Vec::new(),
                keys_deleted_through: 0,
                posters: Vec::new(),
                decisions: Vec::new(),
                decision_seqs: BTreeMap::new(),
                casualties: BTreeMap::new(),
                receipts_through: 0,
            });
        conv.name = name.clone();
        conv.active = true;
        conv.pid_policy = meta.pid_policy;
        conv.retention_secs = meta.retention_secs;
        conv.recorded = meta.recorded;
        conv.posters = meta.posters;
        conv.epoch_starts = vec![(group.epoch().as_u64(), now_ms)];
        Ok(vec![Event::Joined { conversation: name }])
    }

    fn handle_group_message(
        &mut self,
        seq: u64,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Vec<Event>, Error> {
        let msg = MlsMessageIn::tls_deserialize_exact(payload)
            .map_err(|_| Error::Protocol("malformed MLS message".into()))?;
        let proto = msg
            .try_into_protocol_message()
            .map_err(|_| Error::Protocol("not a group message".into()))?;
        let group_hex = hex_id(proto.group_id().as_slice());
        let Some(conv) = self.state.conversations.get(&group_hex) else {
            return Err(Error::Protocol(
                "message for a conversation this device is not in".into(),
            ));
        };
        let conv_name = conv.name.clone();
        let mut group = self.take_group(&group_hex)?;
        let processed = match group.process_message(&self.provider, proto) {
            Ok(p) => p,
            Err(e) => {
                self.flush_secrets(&mut group)?;
                self.put_group(&group_hex, group);
                return Err(Error::Undecryptable(format!(
                    "a message in {conv_name:?} could not be decrypted: {e:?}"
                )));
            }
        };
        if self.provider.storage_ref().deferring() {
            if matches!(
                processed.content(),
                ProcessedMessageContent::ApplicationMessage(_)
            ) {
                self.deferred.push(group_hex.clone());
            } else {
                // Commits and proposals change more than the secrets: write
                // them now, before anything else touches the group.
                self.flush_secrets(&mut group)?;
            }
        }
        let sender_leaf = match processed.sender() {
            Sender::Member(idx) => Some(idx),
            _ => None,
        };
        let sender_cred = sender_leaf
            .and_then(|idx| group.member_at(*idx))
            .map(|m| self.verify_leaf(&m.credential, &m.signature_key));
        let epoch = processed.epoch().as_u64();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                self.put_group(&group_hex, group);
                let sender = match sender_cred {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(Error::Protocol(
                            "application message from a non-member".into(),
                        ));
                    }
                };
                let content = Content::decode(&app.into_bytes())
                    .map_err(|e| Error::Protocol(format!("content: {e}")))?;
                let entry = HistoryEntry {
                    id: content.id_hex(),
                    sender: sender.user_id,
                    sender_device: sender.device_id,
                    sender_name: sender.display_name,
                    sent_at: content.sent_at,
                    received_at: now_ms,
                    kind: kind_name(&content.kind).into(),
                    body: match &content.reply_to {
                        Some(r) if content.kind == Kind::Transferred => hex_id(r),
                        _ => content.body,
                    },
                    epoch,
                    transferred_at: None,
                    seq,
                };
                // Redelivery is already excluded by the inbox sequence number
                // and by MLS itself (a generation key decrypts once).
                match self.store_entry(&group_hex, entry.clone()) {
                    true => Ok(vec![Event::Message {
                        conversation: conv_name,
                        entry,
                    }]),
                    false => Ok(Vec::new()),
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                // Check every credential the commit brings in before merging.
                for add in staged.add_proposals() {
                    let leaf = add.add_proposal().key_package().leaf_node();
                    if let Err(e) =
                        self.verify_leaf(leaf.credential(), leaf.signature_key().as_slice())
                    {
                        return self.refuse_group(&group_hex, group, e);
                    }
                }
                if let Some(leaf) = staged.update_path_leaf_node()
                    && let Err(e) =
                        self.verify_leaf(leaf.credential(), leaf.signature_key().as_slice())
                {
                    return self.refuse_group(&group_hex, group, e);
                }
                if let Some(Err(e)) = sender_cred {
                    return self.refuse_group(&group_hex, group, e);
                }
                let summary = self.describe(&group, &staged);
                let removed = staged.self_removed();
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .map_err(Error::mls)?;
                let epoch = group.epoch().as_u64();
                self.epoch_started(&group_hex, epoch, now_ms);
                if !removed {
                    self.put_group(&group_hex, group);
                }
                let mut events = self.system_line(&group_hex, epoch, summary, now_ms);
                if removed {
                    if let Some(c) = self.state.conversations.get_mut(&group_hex) {
                        c.active = false;
                    }
                    events.push(Event::Removed {
                        conversation: conv_name,
                    });
                }
                Ok(events)
            }
            ProcessedMessageContent::OwnPendingCommit => {
                group
                    .merge_pending_commit(&self.provider)
                    .map_err(Error::mls)?;
                let epoch = group.epoch().as_u64();
                self.put_group(&group_hex, group);
                self.epoch_started(&group_hex, epoch, now_ms);
                Ok(Vec::new())
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                // Only a member removing itself (leaving) is accepted as a
                // standalone proposal; it is committed by the next commit.
                let leaving = match proposal.proposal() {
                    Proposal::Remove(r) => Some(r.removed()),
                    _ => None,
                };
                let sender_leaf = match proposal.sender() {
                    Sender::Member(idx) => Some(*idx),
                    _ => None,
                };
                if leaving.is_none() || leaving != sender_leaf {
                    self.put_group(&group_hex, group);
                    return Err(Error::Protocol(
                        "ignored a proposal other than leaving".into(),
                    ));
                }
                let who = match sender_cred {
                    Some(Ok(c)) => format!("{} ({}) is leaving", c.display_name, c.user_id),
                    _ => "a member is leaving".into(),
                };
                group
                    .store_pending_proposal(self.provider.storage(), *proposal)
                    .map_err(Error::mls)?;
                let epoch = group.epoch().as_u64();
                self.put_group(&group_hex, group);
                Ok(self.system_line(&group_hex, epoch, who, now_ms))
            }
            ProcessedMessageContent::OwnPrivateMessage
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                self.put_group(&group_hex, group);
                Ok(Vec::new())
            }
        }
    }

    /// A commit brought in an unverifiable member: this device stops taking part.
    fn refuse_group(
        &mut self,
        group_hex: &str,
        _group: MlsGroup,
        e: Error,
    ) -> Result<Vec<Event>, Error> {
        let name = match self.state.conversations.get_mut(group_hex) {
            Some(c) => {
                c.active = false;
                c.name.clone()
            }
            None => String::new(),
        };
        Err(Error::Unverified(format!(
            "conversation {name:?} suspended: a commit brought in a member the organisation did not vouch for ({e})"
        )))
    }
}

/// The history `kind` of a content kind.
fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::Transferred => "transferred",
        Kind::Incident => "incident",
        Kind::Callin => "callin",
        Kind::Alert => "alert",
        Kind::Ack => "ack",
        Kind::Receipt => "receipt",
        Kind::Decision => "decision",
        Kind::Casualty => "casualty",
        _ => "unknown",
    }
}

fn ser(kp: &KeyPackage) -> Result<Vec<u8>, Error> {
    let msg: MlsMessageOut = kp.clone().into();
    ser_msg(&msg)
}

fn ser_msg(msg: &MlsMessageOut) -> Result<Vec<u8>, Error> {
    msg.tls_serialize_detached().map_err(Error::mls)
}
