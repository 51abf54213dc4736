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
use crate::state::{Conversation, Device, HistoryEntry, OpKind, Pending, PendingOp, State};

/// How many past epochs keep their secrets, so an application message sent just
/// before a commit still decrypts after it.
const MAX_PAST_EPOCHS: usize = 5;
/// Sender ratchet tolerance for reordered and skipped messages.
const OUT_OF_ORDER_TOLERANCE: u32 = 200;
const MAX_FORWARD_DISTANCE: u32 = 5_000;

/// How long an out-of-step device waits for its re-add before asking again.
pub const REJOIN_AGAIN_MS: u64 = 10 * 60 * 1000;

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

    /// The enrolment request for `code`, signed with the new key to prove
    /// the device holds it.
    pub fn enrol_request(&self, code: &str) -> Result<sitrep_wire::api::EnrolRequest, Error> {
        use openmls_traits::signatures::Signer as _;
        let key = self.signature_key();
        let msg = sitrep_wire::api::EnrolRequest::proof_message(code, &key);
        let proof = self.signer.sign(&msg).map_err(Error::mls)?;
        Ok(sitrep_wire::api::EnrolRequest {
            code: code.to_string(),
            signature_key: key,
            proof,
        })
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
                server_ca: None,
                audit_pin: None,
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
            pending_ops: Vec::new(),
            queued: Vec::new(),
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
            skipped: HashMap::new(),
            persisted: Default::default(),
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
    /// Devices an add left out, and why (their KeyPackage was unusable).
    pub skipped: Vec<Skipped>,
}

/// A device an add could not include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its user.
    pub user_id: String,
    /// The device.
    pub device_id: String,
    /// Why its KeyPackage was refused.
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device {} of {} was not added: {}",
            self.device_id, self.user_id, self.reason
        )
    }
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
    /// Devices the pending add of each group left out (shown once it is accepted).
    pub(crate) skipped: HashMap<String, Vec<Skipped>>,
    /// What the sealed store holds, to write only what changed.
    pub(crate) persisted: crate::persist::Persisted,
}

/// A message waiting to go out (see [`Client::waiting`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    /// Conversation name.
    pub conversation: String,
    /// The conversation's group id, hex.
    pub group_hex: String,
    /// Message id.
    pub id: String,
    /// The text as it will be sent.
    pub body: String,
    /// When it was written (ms).
    pub written_at: u64,
    /// Already encrypted (waiting for the server to store it).
    pub encrypted: bool,
}

/// Messages from others received after the conversation was last shown.
pub fn unread_in(c: &Conversation, own_user: &str) -> usize {
    c.history
        .iter()
        .filter(|h| h.received_at > c.shown_through && h.sender != own_user && h.kind != "system")
        .count()
}

/// Characters of a group id that name a conversation to people.
pub const SHORT_ID_LEN: usize = 8;

/// The short id of a conversation: the start of its group id.
pub fn short_id(group_hex: &str) -> String {
    group_hex.chars().take(SHORT_ID_LEN).collect()
}

fn hex_id(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

impl Client {
    /// Restore from the plaintext of a sealed profile (one snapshot, as
    /// profiles were sealed before records; see [`crate::persist`]).
    pub fn from_bytes(plain: &[u8]) -> Result<Self, Error> {
        let mut state: State =
            ciborium::from_reader(plain).map_err(|_| Error::BadStore("state does not decode"))?;
        let mls = std::mem::take(&mut state.mls)
            .into_iter()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect();
        Self::from_parts(state, mls)
    }

    /// A client from its state and its openmls storage values.
    pub(crate) fn from_parts(
        mut state: State,
        mls: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, Error> {
        if state.v != 1 {
            return Err(Error::BadStore("unknown state version"));
        }
        let cs = Ciphersuite::try_from(state.device.ciphersuite)
            .map_err(|_| Error::BadStore("ciphersuite"))?;
        let values: HashMap<Vec<u8>, Vec<u8>> = mls.into_iter().collect();
        let provider = Provider::from_values(values);
        let signer = SignatureKeyPair::read(
            provider.storage(),
            &state.device.signer_public,
            cs.signature_algorithm(),
        )
        .ok_or(Error::BadStore("signature key missing"))?;
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
            skipped: HashMap::new(),
            persisted: Default::default(),
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
    /// The private CA (PEM) the server's certificate chains to, if the
    /// organisation uses one.
    pub fn server_ca(&self) -> Option<&str> {
        self.state.device.server_ca.as_deref()
    }

    /// Trust a private CA for the server (set at enrolment).
    pub fn set_server_ca(&mut self, pem: Option<String>) {
        self.state.device.server_ca = pem;
    }

    /// The last audit entry this device verified: its place and hash.
    pub fn audit_pin(&self) -> Option<(u64, &str)> {
        self.state
            .device
            .audit_pin
            .as_ref()
            .map(|(s, h)| (*s, h.as_str()))
    }

    /// Remember the last audit entry verified.
    pub fn set_audit_pin(&mut self, seq: u64, hash: String) {
        self.state.device.audit_pin = Some((seq, hash));
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
    /// The organisation key's fingerprint, as `sitrep init` and `serve`
    /// print it, for staff to compare.
    pub fn org_fingerprint(&self) -> String {
        sitrep_wire::credential::fingerprint(&self.state.device.org_public_key)
    }

    /// The organisation's public key, pinned at enrolment.
    pub fn org_key(&self) -> &[u8] {
        &self.state.device.org_public_key
    }

    /// The organisation's name, from enrolment.
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
            // LastResort: without it in the leaf's capabilities, every adder
            // refuses the last-resort KeyPackage (UnsupportedExtension).
            Some(&[
                ExtensionType::Unknown(meta::EXTENSION_TYPE),
                ExtensionType::LastResort,
            ]),
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
            // Handshakes in clear framing, for the delivery service to
            // validate (RFC 9750 §5); application messages are always
            // PrivateMessages. Encrypted handshakes are refused.
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
    }

    fn join_config() -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                OUT_OF_ORDER_TOLERANCE,
                MAX_FORWARD_DISTANCE,
            ))
            .build()
    }

    /// The group of conversation `name`: the active one of that name, else
    /// the one that has ended; when several of one kind share the name, an
    /// error naming their short ids. A short id (or the whole group id) is
    /// taken where no conversation has that name.
    fn group_hex_by_name(&self, name: &str) -> Result<String, Error> {
        let named: Vec<(&String, &Conversation)> = self
            .state
            .conversations
            .iter()
            .filter(|(_, c)| c.name == name)
            .collect();
        let active: Vec<&String> = named
            .iter()
            .filter(|(_, c)| c.active)
            .map(|(k, _)| *k)
            .collect();
        let pick: Vec<&String> = if active.is_empty() {
            named.iter().map(|(k, _)| *k).collect()
        } else {
            active
        };
        match pick.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            many => {
                return Err(Error::AmbiguousConversation {
                    name: name.to_string(),
                    ids: many.iter().map(|k| short_id(k)).collect(),
                });
            }
        }
        let lower = name.to_ascii_lowercase();
        if lower.len() >= SHORT_ID_LEN && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            let by_id: Vec<&String> = self
                .state
                .conversations
                .keys()
                .filter(|k| k.starts_with(&lower))
                .collect();
            if let [one] = by_id.as_slice() {
                return Ok((*one).clone());
            }
        }
        Err(Error::UnknownConversation(name.to_string()))
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
        let gid = self.random::<16>();
        let meta_key = self.random::<32>();
        let sealed = crate::sealed_meta::seal(&meta, &meta_key, &gid, self.random::<12>());
        let ext = Extensions::single(Extension::Unknown(
            meta::EXTENSION_TYPE,
            UnknownExtension(sealed),
        ))
        .map_err(Error::mls)?;
        let group = self
            .group_config_builder()
            .with_group_id(GroupId::from_slice(&gid))
            .with_group_context_extensions(ext)
            .build(&self.provider, &self.signer, self.credential_with_key())
            .map_err(Error::mls)?;
        // Where the delivery service's view of the group starts.
        let group_info = group
            .export_group_info(self.provider.crypto(), &self.signer, true)
            .map_err(Error::mls)
            .and_then(|m| ser_msg(&m))?;
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
                shown_through: 0,
                out_of_step: false,
                rejoin_requested: false,
                unreadable: 0,
                pending_readds: Vec::new(),
                rejoin_requested_at: 0,
                history_base: 0,
                dirty_from: None,
                meta_key: Some(ByteBuf::from(meta_key.to_vec())),
            },
        );
        Ok((
            group_hex,
            CreateGroup {
                group_id: gid.to_vec(),
                group_info,
            },
        ))
    }

    /// Undo a conversation the server never confirmed creating (its
    /// creation was refused, or no answer came after every retry): it
    /// leaves this device's state and its MLS group is deleted, so the
    /// name is free again. Only for a conversation with no one else in it.
    pub fn abandon_conversation(&mut self, group_hex: &str) -> Result<(), Error> {
        let alone = self
            .state
            .conversations
            .get(group_hex)
            .is_some_and(|c| c.history.iter().all(|h| h.kind == "system"));
        if !alone {
            return Err(Error::Invalid(
                "only a conversation never used can be abandoned".into(),
            ));
        }
        let mut group = self.take_group(group_hex)?;
        if group.members().count() > 1 {
            self.put_group(group_hex, group);
            return Err(Error::Invalid(
                "only a conversation with no one else in it can be abandoned".into(),
            ));
        }
        group.delete(self.provider.storage()).map_err(Error::mls)?;
        self.state.conversations.remove(group_hex);
        self.state.outbox.retain(|p| p.group_hex != group_hex);
        self.state.queued.retain(|q| q.group_hex != group_hex);
        Ok(())
    }

    /// Name to group id.
    pub fn group_hex(&self, name: &str) -> Result<String, Error> {
        self.group_hex_by_name(name)
    }

    /// Build a commit adding the devices whose KeyPackages were claimed. Every
    /// KeyPackage is validated and its credential checked against the
    /// organisation key first. A device whose KeyPackage fails is skipped and
    /// named in [`PreparedCommit::skipped`], so one colleague's broken (or
    /// maliciously replaced) KeyPackage cannot block an add of everyone else;
    /// when nobody is left the add is refused with every reason.
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
        let mut devices: Vec<String> = Vec::new();
        let mut skipped = Vec::new();
        for c in claimed {
            if present.contains(&c.device_id) || devices.contains(&c.device_id) {
                continue;
            }
            match self.check_claimed(c) {
                Ok(kp) => {
                    devices.push(c.device_id.clone());
                    kps.push(kp);
                }
                Err(e) => skipped.push(Skipped {
                    user_id: c.user_id.clone(),
                    device_id: c.device_id.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        if kps.is_empty() {
            self.put_group(&group_hex, group);
            if skipped.is_empty() {
                return Err(Error::Invalid("nobody new to add".into()));
            }
            let all: Vec<String> = skipped.iter().map(Skipped::to_string).collect();
            return Err(Error::Unverified(all.join("; ")));
        }
        let epoch = group.epoch().as_u64();
        let (commit, welcome) = self.add_commit(&group_hex, &mut group, Vec::new(), kps)?;
        self.put_group(&group_hex, group);
        let mut prepared = self.prepared(
            group_hex,
            epoch,
            ser_msg(&commit)?,
            Some(ser_msg(&welcome)?),
            devices,
            Vec::new(),
        );
        prepared.skipped = skipped.clone();
        self.skipped.insert(prepared.group_hex.clone(), skipped);
        Ok(prepared)
    }

    /// A commit adding `kps` (after removing `removals`, for a re-add) whose
    /// Welcome carries the conversation's metadata key to the joiners.
    fn add_commit(
        &self,
        group_hex: &str,
        group: &mut MlsGroup,
        removals: Vec<LeafNodeIndex>,
        kps: Vec<KeyPackage>,
    ) -> Result<(MlsMessageOut, MlsMessageOut), Error> {
        let key = self.state.conversations[group_hex]
            .meta_key
            .as_ref()
            .ok_or_else(|| Error::Invalid("this conversation has no metadata key".into()))?
            .to_vec();
        let ext = Extension::Unknown(
            crate::sealed_meta::KEY_EXTENSION_TYPE,
            UnknownExtension(key),
        );
        let bundle = group
            .commit_builder()
            .propose_removals(removals)
            .propose_adds(kps)
            .force_self_update(true)
            .load_psks(self.provider.storage())
            .map_err(Error::mls)?
            .create_group_info_with_extensions([ext])
            .map_err(Error::mls)?
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                |_| true,
            )
            .map_err(Error::mls)?
            .stage_commit(&self.provider)
            .map_err(Error::mls)?;
        let welcome = bundle
            .to_welcome_msg()
            .ok_or_else(|| Error::Invalid("an add without a Welcome".into()))?;
        let (commit, _, _) = bundle.into_contents();
        Ok((commit, welcome))
    }

    /// Validate one claimed KeyPackage: well-formed, signed, our ciphersuite,
    /// and carrying the organisation's credential for exactly the claimed
    /// user and device.
    fn check_claimed(&self, c: &ClaimedKeyPackage) -> Result<KeyPackage, Error> {
        let kp_in = match MlsMessageIn::tls_deserialize_exact(c.key_package.as_slice())
            .map(MlsMessageIn::extract)
        {
            Ok(MlsMessageBodyIn::KeyPackage(kp)) => kp,
            _ => return Err(Error::Protocol("malformed KeyPackage".into())),
        };
        let kp = kp_in
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| Error::Unverified(format!("invalid KeyPackage: {e:?}")))?;
        if kp.ciphersuite() != self.ciphersuite() {
            return Err(Error::Unverified(
                "the device uses another ciphersuite".into(),
            ));
        }
        let leaf = kp.leaf_node();
        if !leaf
            .capabilities()
            .extensions()
            .contains(&ExtensionType::Unknown(meta::EXTENSION_TYPE))
        {
            return Err(Error::Unverified(
                "the device's KeyPackage cannot hold the conversation's metadata".into(),
            ));
        }
        let cred = self.verify_leaf(leaf.credential(), leaf.signature_key().as_slice())?;
        if cred.user_id != c.user_id || cred.device_id != c.device_id {
            return Err(Error::Unverified(
                "the KeyPackage carries another device's credential".into(),
            ));
        }
        Ok(kp)
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
        self.state.pending_ops.retain(|o| o.group_hex != group_hex);
        let mut events = self.system_line(group_hex, u64::MAX, "you left".into(), now_ms);
        if let Some(c) = self.state.conversations.get_mut(group_hex) {
            c.active = false;
            events.push(Event::Removed {
                conversation: c.name.clone(),
            });
        }
        events
    }

    /// Active conversations (by group id, which every method taking a
    /// conversation name also takes) holding proposals that still need a commit.
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
                    // By group id: names need not be unique.
                    names.push(h.clone());
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
        // Revoked and leaving devices still in the tree; a leaver whose own
        // Remove proposal is queued is removed by it, the others by value (a
        // leave proposal that a concurrent commit dropped is not lost).
        let revoked = self.state.conversations[&group_hex]
            .pending_removals
            .clone();
        let queued: Vec<LeafNodeIndex> = group
            .pending_proposals()
            .filter_map(|p| match p.proposal() {
                Proposal::Remove(r) => Some(r.removed()),
                _ => None,
            })
            .collect();
        let mut leaves = Vec::new();
        let mut in_tree = Vec::new();
        for m in group.members() {
            if let Ok(c) = self.verify_leaf(&m.credential, &m.signature_key)
                && revoked.contains(&c.device_id)
            {
                in_tree.push(c.device_id);
                if !queued.contains(&m.index) {
                    leaves.push(m.index);
                }
            }
        }
        if let Some(c) = self.state.conversations.get_mut(&group_hex) {
            c.pending_removals.retain(|d| in_tree.contains(d));
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
            skipped: Vec::new(),
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

    /// Seal-before-send: remember `prepared` as this group's pending change,
    /// so that its fate is asked again (same client id) after a lost answer
    /// or a crash. Save the state before posting it.
    pub fn record_commit(&mut self, prepared: &PreparedCommit) -> Result<(), Error> {
        let body = serde_json::to_vec(&prepared.request)
            .map_err(|e| Error::Invalid(format!("commit request: {e}")))?;
        self.record_op(PendingOp {
            group_hex: prepared.group_hex.clone(),
            kind: OpKind::Commit,
            client_id: prepared.request.client_id.clone(),
            body: ByteBuf::from(body),
        });
        Ok(())
    }

    /// [`Client::record_commit`] for a leave.
    pub fn record_leave(
        &mut self,
        group_hex: &str,
        req: &sitrep_wire::api::LeaveRequest,
    ) -> Result<(), Error> {
        let body =
            serde_json::to_vec(req).map_err(|e| Error::Invalid(format!("leave request: {e}")))?;
        self.record_op(PendingOp {
            group_hex: group_hex.to_string(),
            kind: OpKind::Leave,
            client_id: req.client_id.clone(),
            body: ByteBuf::from(body),
        });
        Ok(())
    }

    fn record_op(&mut self, op: PendingOp) {
        self.state
            .pending_ops
            .retain(|o| o.group_hex != op.group_hex);
        self.state.pending_ops.push(op);
    }

    /// Changes sent whose answer has not been seen: post each again, as is,
    /// before anything else touches its group.
    pub fn pending_ops(&self) -> Vec<PendingOp> {
        self.state.pending_ops.clone()
    }

    /// Whether a change to this group awaits its answer.
    pub fn has_pending_op(&self, group_hex: &str) -> bool {
        self.state
            .pending_ops
            .iter()
            .any(|o| o.group_hex == group_hex)
    }

    /// The server refused our leaving (the device stays in the group).
    pub fn leave_rejected(&mut self, group_hex: &str) -> Result<(), Error> {
        self.state.pending_ops.retain(|o| o.group_hex != group_hex);
        let mut group = self.take_group(group_hex)?;
        group
            .clear_pending_proposals(self.provider.storage())
            .map_err(Error::mls)?;
        self.put_group(group_hex, group);
        Ok(())
    }

    /// The server accepted our commit: merge it.
    pub fn commit_accepted(&mut self, group_hex: &str, now_ms: u64) -> Result<Vec<Event>, Error> {
        self.state.pending_ops.retain(|o| o.group_hex != group_hex);
        let mut group = self.take_group(group_hex)?;
        let summary = match group.pending_commit() {
            Some(staged) => {
                self.readded(group_hex, staged);
                self.describe(&group, staged, group.own_leaf_index())
            }
            None => return Err(Error::Invalid("no commit is pending".into())),
        };
        group
            .merge_pending_commit(&self.provider)
            .map_err(Error::mls)?;
        let epoch = group.epoch().as_u64();
        self.put_group(group_hex, group);
        self.epoch_started(group_hex, epoch, now_ms);
        let mut events = self.system_line(group_hex, epoch, summary, now_ms);
        for s in self.skipped.remove(group_hex).unwrap_or_default() {
            let line = s.to_string();
            events.extend(self.system_line(group_hex, epoch, line.clone(), now_ms));
            events.push(Event::Refused { reason: line });
        }
        Ok(events)
    }

    /// The server refused our commit (another won the epoch): forget it. The
    /// caller syncs and builds the commit again.
    pub fn commit_rejected(&mut self, group_hex: &str) -> Result<(), Error> {
        self.state.pending_ops.retain(|o| o.group_hex != group_hex);
        self.skipped.remove(group_hex);
        let mut group = self.take_group(group_hex)?;
        group
            .clear_pending_commit(self.provider.storage())
            .map_err(Error::mls)?;
        self.put_group(group_hex, group);
        Ok(())
    }

    /// What a commit changed, for people. `committer` is the leaf that made
    /// it (this device's own for a commit it made).
    fn describe(
        &self,
        group: &MlsGroup,
        staged: &StagedCommit,
        committer: LeafNodeIndex,
    ) -> String {
        let own = group.own_leaf_index();
        let who = |idx: LeafNodeIndex| {
            group
                .member_at(idx)
                .and_then(|m| self.verify_leaf(&m.credential, &m.signature_key).ok())
        };
        let mut parts: Vec<String> = Vec::new();
        let mut push = |line: String| {
            if !parts.contains(&line) {
                parts.push(line);
            }
        };
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            if let Ok(c) = self.verify_leaf(leaf.credential(), leaf.signature_key().as_slice()) {
                if self.is_records_user(&c.user_id) {
                    push(format!(
                        "{} Records ({}) joined: this conversation is now recorded by {} Records",
                        self.state.device.org_name, c.user_id, self.state.device.org_name
                    ));
                } else {
                    push(format!("{} ({}) joined", c.display_name, c.user_id));
                }
            }
        }
        for rem in staged.remove_proposals() {
            let idx = rem.remove_proposal().removed();
            let by = match rem.sender() {
                Sender::Member(i) => *i,
                _ => committer,
            };
            let Some(c) = who(idx) else { continue };
            let remover = who(by);
            // A device of the same user removing it is that user leaving
            // (a leave is a proposal the others commit).
            let left = by == idx
                || remover
                    .as_ref()
                    .is_some_and(|r| r.user_id == c.user_id && by != own);
            let by_name = match &remover {
                _ if by == own => "you".to_string(),
                Some(r) => format!("{} ({})", r.display_name, r.user_id),
                None => "a member".to_string(),
            };
            if self.is_records_user(&c.user_id) {
                push(format!(
                    "{} Records ({}) {}: this conversation is no longer recorded",
                    self.state.device.org_name,
                    c.user_id,
                    if left {
                        "left".to_string()
                    } else {
                        format!("was removed by {by_name}")
                    }
                ));
            } else if idx == own {
                push(if left {
                    "you left".to_string()
                } else {
                    format!("you were removed by {by_name}")
                });
            } else if left {
                push(format!("{} ({}) left", c.display_name, c.user_id));
            } else if by == own {
                push(format!("you removed {} ({})", c.display_name, c.user_id));
            } else {
                push(format!(
                    "{} ({}) was removed by {by_name}",
                    c.display_name, c.user_id
                ));
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
        // The epoch (or kind of line), then its place in the conversation:
        // two lines of one epoch, or two "could not be decrypted", are two
        // entries, each shown.
        let place = conv.history_base + conv.history.len() as u64;
        conv.history.push(HistoryEntry {
            id: format!("{epoch:016x}{place:016x}"),
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
        let id = self.random::<16>();
        self.encrypt_content_as(name, kind, body, reply_to, id, now_ms)
    }

    /// Write a text message into the sealed outbox without the network:
    /// the PID guard is applied now (so a queued message is exactly what will
    /// be sent), and it is encrypted later by [`Self::encrypt_queued`], once
    /// the device has caught up with its groups. Returns its id.
    pub fn queue_text(
        &mut self,
        name: &str,
        body: &str,
        now_ms: u64,
        confirmed: bool,
    ) -> Result<String, Error> {
        let checked = self.pid_check(name, body, confirmed)?;
        if checked.len() > sitrep_wire::MAX_BODY_BYTES {
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
        if !conv.posters.is_empty() && !conv.posters.contains(me) {
            return Err(Error::Invalid(format!(
                "only commanders post in {name:?}; you can read it and reply to call-ins and alerts"
            )));
        }
        let id = hex_id(&self.random::<16>());
        self.state.queued.push(crate::state::Queued {
            group_hex,
            id: id.clone(),
            body: checked,
            written_at: now_ms,
            requeued: false,
            kind: "text".into(),
        });
        Ok(id)
    }

    /// Encrypt every queued message whose conversation can take it now, in
    /// the order written, into the outbox (call after catching up). A
    /// conversation this device is out of step with keeps its messages
    /// queued until it is re-added; one it is no longer in, or that refuses
    /// the message, drops it with a visible [`Event::Refused`].
    pub fn encrypt_queued(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut keep = Vec::new();
        let mut held: std::collections::BTreeSet<String> = Default::default();
        for q in std::mem::take(&mut self.state.queued) {
            let Some(conv) = self.state.conversations.get(&q.group_hex) else {
                events.push(Event::Refused {
                    reason: "a queued message was dropped: its conversation is gone".into(),
                });
                continue;
            };
            if held.contains(&q.group_hex) || (conv.active && conv.out_of_step) {
                held.insert(q.group_hex.clone());
                keep.push(q);
                continue;
            }
            let name = conv.name.clone();
            let mut id = [0u8; 16];
            if hex::decode_to_slice(&q.id, &mut id).is_err() {
                continue;
            }
            let Some(kind) = kind_from_name(&q.kind) else {
                events.push(Event::Refused {
                    reason: format!("a queued item of an unknown kind for {name:?} was dropped"),
                });
                continue;
            };
            // By group id: two conversations may share a name.
            match self.encrypt_content_as(&q.group_hex, kind, &q.body, None, id, q.written_at) {
                Ok(_) => {
                    if let Some(p) = self.state.outbox.iter_mut().find(|p| p.client_id == q.id) {
                        p.requeued = q.requeued;
                    }
                }
                Err(e) => events.push(Event::Refused {
                    reason: format!("a message queued for {name:?} could not be sent: {e}"),
                }),
            }
        }
        self.state.queued = keep;
        let _ = now_ms;
        events
    }

    /// What waits to go out, oldest first: written but not yet encrypted
    /// (`encrypted: false`), then encrypted and not yet stored by the server.
    pub fn waiting(&self) -> Vec<Waiting> {
        let name = |hex: &str| {
            self.state
                .conversations
                .get(hex)
                .map(|c| c.name.clone())
                .unwrap_or_default()
        };
        let mut out: Vec<Waiting> = self
            .state
            .outbox
            .iter()
            .map(|p| Waiting {
                conversation: name(&p.group_hex),
                group_hex: p.group_hex.clone(),
                id: p.client_id.clone(),
                body: crate::incident::summary(&p.entry.kind, &p.entry.body),
                written_at: p.entry.sent_at,
                encrypted: true,
            })
            .collect();
        out.extend(self.state.queued.iter().map(|q| Waiting {
            conversation: name(&q.group_hex),
            group_hex: q.group_hex.clone(),
            id: q.id.clone(),
            body: crate::incident::summary(&q.kind, &q.body),
            written_at: q.written_at,
            encrypted: false,
        }));
        out
    }

    /// [`Self::encrypt_content`] under a given content id and send time.
    fn encrypt_content_as(
        &mut self,
        name: &str,
        kind: Kind,
        body: &str,
        reply_to: Option<[u8; 16]>,
        id: [u8; 16],
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
        if conv.out_of_step {
            // Nobody could read it: the group has moved on without us.
            return Err(Error::Invalid(
                "this device is out of step with this conversation and is being re-added; \
                 send again once it has been"
                    .into(),
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
            requeued: false,
            group_hex: group_hex.clone(),
            client_id: client_id.clone(),
            payload: ByteBuf::from(payload.clone()),
            entry,
        });
        Ok(Outgoing {
            group_hex,
            request: SendRequest {
                client_id,
                payload,
                urgent: false,
            },
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
                    urgent: p.entry.kind == "alert",
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

    /// Messages from others in conversation `name` not yet shown to the user.
    pub fn unread(&self, name: &str) -> Result<usize, Error> {
        let c = self.conversation(name)?;
        Ok(unread_in(c, &self.state.device.user_id))
    }

    /// Everything in conversation `name` has now been shown to the user.
    pub fn mark_shown(&mut self, name: &str) -> Result<(), Error> {
        let hex = self.group_hex_by_name(name)?;
        let c = self
            .state
            .conversations
            .get_mut(&hex)
            .expect("found by name");
        let last = c.history.iter().map(|h| h.received_at).max().unwrap_or(0);
        c.shown_through = c.shown_through.max(last);
        Ok(())
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
            EntryKind::Rejoin => self.handle_rejoin(payload, now_ms),
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
        let (group_hex, device) = device_entry(payload)?;
        let Some(conv) = self.state.conversations.get_mut(&group_hex) else {
            return Ok(Vec::new());
        };
        if !conv.pending_removals.contains(&device) {
            conv.pending_removals.push(device.clone());
        }
        let line = format!("device {device} was revoked by the organisation and is being removed");
        Ok(self.system_line(&group_hex, u64::MAX - 1, line, now_ms))
    }

    /// A member device fell out of step and asks to be re-added: note it,
    /// if it really is a member here, for the next commit to swap its leaf.
    fn handle_rejoin(&mut self, payload: &[u8], now_ms: u64) -> Result<Vec<Event>, Error> {
        let (group_hex, device) = device_entry(payload)?;
        if device == self.state.device.device_id {
            return Ok(Vec::new());
        }
        match self.state.conversations.get(&group_hex) {
            Some(c) if c.active && !c.out_of_step => {}
            _ => return Ok(Vec::new()),
        }
        let group = self.take_group(&group_hex)?;
        let member = self
            .members_of(&group)?
            .into_iter()
            .find(|m| m.device_id == device);
        self.put_group(&group_hex, group);
        let Some(member) = member else {
            return Err(Error::Protocol(
                "a re-add was asked for a device that is not in the conversation".into(),
            ));
        };
        let conv = self
            .state
            .conversations
            .get_mut(&group_hex)
            .expect("checked above");
        if conv.pending_readds.contains(&device) {
            return Ok(Vec::new());
        }
        conv.pending_readds.push(device.clone());
        let line = format!(
            "a device of {} ({}) missed a change to this conversation and is being re-added",
            member.display_name, member.user_id
        );
        Ok(self.system_line(&group_hex, u64::MAX - 2, line, now_ms))
    }

    /// Conversations this device fell out of step with and has not asked to
    /// be re-added to, or asked more than [`REJOIN_AGAIN_MS`] ago without
    /// being re-added (the re-add's Welcome may have failed) (group hex).
    pub fn rejoins_to_request(&self, now_ms: u64) -> Vec<String> {
        self.state
            .conversations
            .iter()
            .filter(|(_, c)| {
                c.active
                    && c.out_of_step
                    && (!c.rejoin_requested
                        || now_ms.saturating_sub(c.rejoin_requested_at) > REJOIN_AGAIN_MS)
            })
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// The server took our request to be re-added.
    pub fn rejoin_requested(&mut self, group_hex: &str, now_ms: u64) {
        if let Some(c) = self.state.conversations.get_mut(group_hex) {
            c.rejoin_requested = true;
            c.rejoin_requested_at = now_ms;
        }
    }

    /// Conversations with members waiting to be re-added: (group id, their
    /// (user, device)).
    pub fn pending_readds(&mut self) -> Vec<(String, Vec<(String, String)>)> {
        let hexes: Vec<String> = self
            .state
            .conversations
            .iter()
            .filter(|(_, c)| c.active && !c.out_of_step && !c.pending_readds.is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        let mut out = Vec::new();
        for h in hexes {
            let Ok(group) = self.take_group(&h) else {
                continue;
            };
            let members = self.members_of(&group).unwrap_or_default();
            self.put_group(&h, group);
            let conv = self.state.conversations.get_mut(&h).expect("listed above");
            // Someone else re-added (or removed) it already.
            conv.pending_readds
                .retain(|d| members.iter().any(|m| &m.device_id == d));
            let devs: Vec<(String, String)> = conv
                .pending_readds
                .iter()
                .filter_map(|d| members.iter().find(|m| &m.device_id == d))
                .map(|m| (m.user_id.clone(), m.device_id.clone()))
                .collect();
            if !devs.is_empty() {
                // By group id: names need not be unique.
                out.push((h.clone(), devs));
            }
        }
        out
    }

    /// Build a commit that swaps the leaves of out-of-step devices for the
    /// fresh KeyPackages claimed for them (remove and add in one commit), so
    /// they rejoin through the Welcome.
    pub fn prepare_readd(
        &mut self,
        name: &str,
        claimed: &[ClaimedKeyPackage],
    ) -> Result<PreparedCommit, Error> {
        let group_hex = self.group_hex_by_name(name)?;
        let wanted = self.state.conversations[&group_hex].pending_readds.clone();
        let mut group = self.take_group(&group_hex)?;
        let mut by_device = HashMap::new();
        for m in group.members() {
            if let Ok(c) = self.verify_leaf(&m.credential, &m.signature_key) {
                by_device.insert(c.device_id, m.index);
            }
        }
        let mut leaves = Vec::new();
        let mut kps = Vec::new();
        let mut devices = Vec::new();
        for c in claimed {
            if !wanted.contains(&c.device_id) || devices.contains(&c.device_id) {
                continue;
            }
            let Some(leaf) = by_device.get(&c.device_id) else {
                continue;
            };
            let Ok(kp) = self.check_claimed(c) else {
                continue;
            };
            leaves.push(*leaf);
            kps.push(kp);
            devices.push(c.device_id.clone());
        }
        if kps.is_empty() {
            self.put_group(&group_hex, group);
            return Err(Error::Invalid("nobody to re-add".into()));
        }
        let epoch = group.epoch().as_u64();
        let (commit, welcome) = self.add_commit(&group_hex, &mut group, leaves, kps)?;
        self.put_group(&group_hex, group);
        Ok(self.prepared(
            group_hex,
            epoch,
            ser_msg(&commit)?,
            Some(ser_msg(&welcome)?),
            devices.clone(),
            devices,
        ))
    }

    fn handle_welcome(&mut self, payload: &[u8], now_ms: u64) -> Result<Vec<Event>, Error> {
        let msg = MlsMessageIn::tls_deserialize_exact(payload)
            .map_err(|_| Error::Protocol("malformed Welcome".into()))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(Error::Protocol("expected a Welcome".into()));
        };
        let join = StagedWelcome::build_from_welcome(&self.provider, &Self::join_config(), welcome)
            .map_err(Error::mls)?
            .replace_old_group();
        let meta_key = join
            .processed_welcome()
            .unverified_group_info()
            .extensions()
            .unknown(crate::sealed_meta::KEY_EXTENSION_TYPE)
            .map(|u| u.0.clone());
        let staged = join.build().map_err(Error::mls)?;
        for m in staged.members() {
            self.verify_leaf(&m.credential, &m.signature_key)
                .map_err(|e| Error::Unverified(format!("invitation refused: {e}")))?;
        }
        let sealed = staged
            .group_context()
            .extensions()
            .unknown(meta::EXTENSION_TYPE)
            .ok_or_else(|| Error::Protocol("conversation has no metadata".into()))?
            .0
            .clone();
        let meta_key = meta_key.ok_or_else(|| {
            Error::Protocol("the invitation carries no key for the conversation's metadata".into())
        })?;
        let meta: ConversationMeta = crate::sealed_meta::open(
            &sealed,
            &meta_key,
            staged.group_context().group_id().as_slice(),
        )?;
        let group = staged.into_group(&self.provider).map_err(Error::mls)?;
        let group_hex = hex_id(group.group_id().as_slice());
        // Re-added after falling out of step: the same conversation again.
        let rejoined = self
            .state
            .conversations
            .get(&group_hex)
            .filter(|c| c.out_of_step)
            .map(|c| (c.name.clone(), c.unreadable));
        // One name for all members; two of this user's conversations may
        // share it (the front end then asks for the short id).
        let name = match &rejoined {
            Some((n, _)) => n.clone(),
            None => meta.name.clone(),
        };
        let conv = self
            .state
            .conversations
            .entry(group_hex.clone())
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
                shown_through: 0,
                out_of_step: false,
                rejoin_requested: false,
                unreadable: 0,
                pending_readds: Vec::new(),
                rejoin_requested_at: 0,
                history_base: 0,
                dirty_from: None,
                meta_key: None,
            });
        conv.name = name.clone();
        conv.active = true;
        conv.pid_policy = meta.pid_policy;
        conv.retention_secs = meta.retention_secs;
        conv.recorded = meta.recorded;
        conv.posters = meta.posters;
        conv.epoch_starts = vec![(group.epoch().as_u64(), now_ms)];
        conv.out_of_step = false;
        conv.rejoin_requested = false;
        conv.unreadable = 0;
        conv.meta_key = Some(ByteBuf::from(meta_key));
        let epoch = group.epoch().as_u64();
        self.put_group(&group_hex, group);
        let mut events = vec![Event::Joined { conversation: name }];
        if let Some((_, lost)) = rejoined {
            let line = match lost {
                0 => "this device was re-added to the conversation".to_string(),
                1 => "this device was re-added; 1 message sent while it was out of step could not be read".to_string(),
                n => format!("this device was re-added; {n} messages sent while it was out of step could not be read"),
            };
            events.extend(self.system_line(&group_hex, epoch, line, now_ms));
        }
        Ok(events)
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
        let active = conv.active;
        let application = proto.content_type() == ContentType::Application;
        let commit = proto.content_type() == ContentType::Commit;
        let mut group = self.take_group(&group_hex)?;
        let current = proto.epoch() == group.epoch();
        if active && proto.epoch().as_u64() > group.epoch().as_u64() {
            // The group moved on without this device (a commit it missed or
            // could not process): nothing later can be read until it is
            // re-added. Say so, count what is lost, ask to be re-added.
            self.put_group(&group_hex, group);
            return Ok(self.out_of_step(&group_hex, application, now_ms));
        }
        let processed = match group.process_message(&self.provider, proto) {
            Ok(p) => p,
            Err(e) => {
                self.flush_secrets(&mut group)?;
                self.put_group(&group_hex, group);
                if commit && active && current {
                    // The delivery service took a commit this device cannot
                    // apply (it validates signatures, not what only members
                    // can check): nothing later is readable here. Say so and
                    // ask to be re-added, rather than fail message by message.
                    let mut events = self.out_of_step(&group_hex, false, now_ms);
                    events.push(Event::Refused {
                        reason: format!(
                            "a change to {conv_name:?} could not be applied on this device: {e:?}"
                        ),
                    });
                    return Ok(events);
                }
                if application && active {
                    if let Some(c) = self.state.conversations.get_mut(&group_hex) {
                        c.unreadable += 1;
                    }
                    self.system_line(
                        &group_hex,
                        u64::MAX - 3,
                        "a message could not be decrypted on this device".into(),
                        now_ms,
                    );
                }
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
            Sender::Member(idx) => Some(*idx),
            _ => None,
        };
        let sender_cred = sender_leaf
            .and_then(|idx| group.member_at(idx))
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
                let summary = self.describe(
                    &group,
                    &staged,
                    sender_leaf.unwrap_or(LeafNodeIndex::new(u32::MAX)),
                );
                self.readded(&group_hex, &staged);
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
                    Some(Ok(c)) => {
                        // Also by device: removed by value should the
                        // proposal be dropped by a concurrent commit.
                        if let Some(conv) = self.state.conversations.get_mut(&group_hex)
                            && !conv.pending_removals.contains(&c.device_id)
                        {
                            conv.pending_removals.push(c.device_id.clone());
                        }
                        format!("{} ({}) is leaving", c.display_name, c.user_id)
                    }
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

    /// A commit brought these devices (back) in: they need no re-add.
    fn readded(&mut self, group_hex: &str, staged: &StagedCommit) {
        let added: Vec<String> = staged
            .add_proposals()
            .filter_map(|a| {
                let leaf = a.add_proposal().key_package().leaf_node();
                self.verify_leaf(leaf.credential(), leaf.signature_key().as_slice())
                    .ok()
                    .map(|c| c.device_id)
            })
            .collect();
        if let Some(c) = self.state.conversations.get_mut(group_hex) {
            c.pending_readds.retain(|d| !added.contains(d));
        }
    }

    /// The server will not take our request to be re-added (we are no
    /// longer a member there): stop asking; the conversation is over here.
    pub fn rejoin_refused(&mut self, group_hex: &str, now_ms: u64) -> Vec<Event> {
        let Some(c) = self.state.conversations.get_mut(group_hex) else {
            return Vec::new();
        };
        c.rejoin_requested = true;
        c.active = false;
        let name = c.name.clone();
        let mut events = self.system_line(
            group_hex,
            u64::MAX - 5,
            "this device is no longer in this conversation".into(),
            now_ms,
        );
        events.push(Event::Removed { conversation: name });
        events
    }

    /// A message for an epoch this device never reached arrived.
    fn out_of_step(&mut self, group_hex: &str, application: bool, now_ms: u64) -> Vec<Event> {
        let Some(c) = self.state.conversations.get_mut(group_hex) else {
            return Vec::new();
        };
        let first = !c.out_of_step;
        c.out_of_step = true;
        if application {
            c.unreadable += 1;
        }
        let name = c.name.clone();
        if !first {
            return Vec::new();
        }
        let mut events = self.system_line(
            group_hex,
            u64::MAX - 4,
            "this device missed a change to this conversation and cannot read new messages \
             until a member re-adds it; it has asked to be re-added"
                .into(),
            now_ms,
        );
        events.push(Event::Refused {
            reason: format!("{name:?}: this device is out of step and is asking to be re-added"),
        });
        events
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

/// The payload of a `revoked` or `rejoin` entry: the group id's length (one
/// byte), the group id, the device id.
fn device_entry(payload: &[u8]) -> Result<(String, String), Error> {
    let (&len, rest) = payload
        .split_first()
        .ok_or_else(|| Error::Protocol("empty entry".into()))?;
    let len = len as usize;
    if len == 0 || rest.len() <= len || rest.len() - len > sitrep_wire::api::MAX_ID_LEN {
        return Err(Error::Protocol("malformed entry".into()));
    }
    let device = std::str::from_utf8(&rest[len..])
        .ok()
        .filter(|d| sitrep_wire::api::valid_id(d))
        .ok_or_else(|| Error::Protocol("malformed entry".into()))?
        .to_string();
    Ok((hex_id(&rest[..len]), device))
}

/// The history `kind` of a content kind.
/// The kinds an item can be queued (again) under: any but a transfer
/// (whose body is the transferred message's id, not its content).
fn kind_from_name(name: &str) -> Option<Kind> {
    match name {
        "text" => Some(Kind::Text),
        other => crate::incident::structured_kind(other),
    }
}

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

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use serde_bytes::ByteBuf;
    use sitrep_wire::credential::{DeviceCredential, SignedCredential};

    /// A device enrolled against a test organisation key, in one new
    /// conversation: the client and the group hex.
    pub(crate) fn client_with_conversation(name: &str) -> (Client, String) {
        let org = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pending = PendingEnrolment::new(crate::INTEROP_CIPHERSUITE).expect("signer");
        let cred = DeviceCredential {
            v: 1,
            org: "Test Trust".into(),
            user_id: "alice".into(),
            device_id: "alice-d1".into(),
            display_name: "Dr Alice".into(),
            role: "ED consultant".into(),
            signature_key: ByteBuf::from(pending.signature_key()),
            issued_at: 0,
        };
        let resp = EnrolResponse {
            org_public_key: org.verifying_key().to_bytes().to_vec(),
            org_name: "Test Trust".into(),
            user_id: "alice".into(),
            device_id: "alice-d1".into(),
            credential: SignedCredential::sign(&cred, &org).encode(),
            token: "t".into(),
        };
        let mut c = pending.finish("http://x", resp).expect("enrol");
        let (hex, _) = c.create_conversation(name, "off").expect("create");
        (c, hex)
    }
}
