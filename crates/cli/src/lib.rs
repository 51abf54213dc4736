//! The I/O shell around the sans-I/O client core: the local profile on disk
//! (sealed), the HTTP client, and the operations the `sitrep` command offers.
//! Integration tests drive these same functions against a real server.

pub mod admin;
pub mod bench;
pub mod bulk;
pub mod config;
pub mod drill;
pub mod incident;
pub mod records;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use sitrep_core::engine::{
    Action, Change, Claim, Create, Failure, Outbox, Reply, Setup, Sync, Task, TopUp,
};
use sitrep_core::store::{ProfileStore as _, SqliteStore};
use sitrep_core::vault::Vault;
use sitrep_core::{Ciphersuite, Client, Event, PendingEnrolment, Session, UnlockError};
use sitrep_wire::api;

pub use sitrep_core::engine::sync::KEY_PACKAGE_TARGET;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An unlocked profile: the sealed store, its key, the client, and an exclusive
/// lock so two commands never interleave on one profile. A long-running
/// command (`watch`) holds the lock only while it works: see
/// [`Profile::release`] and [`Profile::reacquire`].
pub struct Profile {
    store: SqliteStore,
    vault: Vault,
    /// The device.
    pub client: Client,
    dir: PathBuf,
    lock: Option<std::fs::File>,
    /// The store's `data_version` when this process last had it current.
    version: u64,
}

/// How long a command waits for another one on the same profile to finish.
fn lock_wait() -> std::time::Duration {
    let ms = std::env::var("SITREP_LOCK_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000u64);
    std::time::Duration::from_millis(ms)
}

fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    let deadline = std::time::Instant::now() + lock_wait();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!("another sitrep command is using this profile and did not finish in time")
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow::Error::from(e).context("could not lock the profile"));
            }
        }
    }
}

impl Profile {
    /// Unlock an existing profile. Wrong passcodes are counted; at the
    /// organisation's limit the local data is destroyed.
    pub fn open(dir: &Path, passcode: &str) -> anyhow::Result<Self> {
        Self::open_with_code(dir, passcode, std::env::var("SITREP_TOTP").ok().as_deref())
    }

    /// [`Profile::open`] with a two-step (TOTP) code, which the organisation's
    /// policy may require.
    pub fn open_with_code(dir: &Path, passcode: &str, code: Option<&str>) -> anyhow::Result<Self> {
        let l = lock(dir)?;
        let mut session = Session::new(SqliteStore::new(dir)?);
        match session.unlock_with_code(passcode, code, now_ms()) {
            Ok(()) => {}
            Err(UnlockError::NoProfile) => {
                bail!("no profile in {}; run `sitrep enrol` first", dir.display())
            }
            Err(e) => return Err(e.into()),
        }
        let (vault, client, store) = session.into_parts().ok_or_else(|| anyhow!("locked"))?;
        let version = store.data_version()?;
        let mut p = Self {
            store,
            vault,
            client,
            dir: dir.to_path_buf(),
            lock: Some(l),
            version,
        };
        p.purge()?;
        Ok(p)
    }

    /// Apply retention: delete expired messages (and old epoch keys) and
    /// reseal, so they are gone from the store file too.
    pub fn purge(&mut self) -> anyhow::Result<usize> {
        let n = self.client.purge_expired(now_ms())?;
        if n > 0 {
            self.save()?;
        }
        Ok(n)
    }

    fn create(dir: &Path, passcode: &str, client: Client) -> anyhow::Result<Self> {
        let l = lock(dir)?;
        let store = SqliteStore::new(dir)?;
        if store.load()?.is_some() || store.load_legacy()?.is_some() {
            bail!("{} already holds a profile", dir.display());
        }
        let session = Session::create(store, client, passcode, now_ms())?;
        let (vault, client, store) = session.into_parts().ok_or_else(|| anyhow!("locked"))?;
        let version = store.data_version()?;
        Ok(Self {
            store,
            vault,
            client,
            dir: dir.to_path_buf(),
            lock: Some(l),
            version,
        })
    }

    /// Destroy the local data (the organisation revoked this device).
    pub fn wipe(&mut self) -> anyhow::Result<()> {
        self.store.destroy()?;
        Ok(())
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether another command wrote the profile since this one last had
    /// it current (a `send` beside a `watch`).
    pub fn changed_elsewhere(&self) -> bool {
        self.store
            .data_version()
            .map_or(true, |v| v != self.version)
    }

    /// Let other commands use the profile. The client stays in memory but
    /// may go stale: [`Profile::reacquire`] before using it again.
    pub fn release(&mut self) {
        // `version` stays as it was read at the last load: this process's
        // own writes do not change it, anyone else's (even a wipe from
        // this process's other connection) does.
        self.lock = None;
    }

    /// Take the lock again (waiting for another command to finish) and, if
    /// another command wrote the profile meanwhile, read it as that command
    /// left it.
    pub fn reacquire(&mut self) -> anyhow::Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        let l = lock(&self.dir)?;
        if !self.changed_elsewhere() {
            self.lock = Some(l);
            return Ok(());
        }
        let Some(records) = self.store.load()? else {
            bail!("this device's Sitrep data is gone (wiped)");
        };
        self.client = Client::from_records(&self.vault, &records).map_err(|e| match e {
            sitrep_core::Error::WrongPasscode => anyhow!(
                "the profile was re-sealed by another command (passcode changed): start again"
            ),
            e => e.into(),
        })?;
        self.version = self.store.data_version()?;
        self.lock = Some(l);
        Ok(())
    }

    /// Seal the store under a new passcode (the organisation's minimum
    /// length and Argon2id cost apply).
    pub fn change_passcode(&mut self, new: &str) -> anyhow::Result<()> {
        let policy = self.client.policy();
        let min = policy.min_passcode_len as usize;
        if new.chars().count() < min {
            bail!("the passcode must be at least {min} characters");
        }
        let (m_kib, t, p) = policy.argon2;
        let old = std::mem::replace(
            &mut self.vault,
            Vault::create(
                new,
                sitrep_core::vault::KdfParams { m_kib, t, p },
                self.client.random::<16>(),
            )?,
        );
        self.client.persist_unknown();
        if let Err(e) = self.save() {
            // Still sealed under the old passcode: keep using it.
            self.vault = old;
            self.client.persist_unknown();
            return Err(e);
        }
        Ok(())
    }

    /// Seal and write what changed, in one transaction (durable when this
    /// returns).
    pub fn save(&mut self) -> anyhow::Result<()> {
        let changes = self.changes();
        self.write(&changes)
    }

    /// [`Profile::save`], for what follows a server's answer it would give
    /// again (may be lost in a power cut, not in a crash;
    /// [`sitrep_core::store::ProfileStore::write_lazy`]).
    pub fn save_lazy(&mut self) -> anyhow::Result<()> {
        let changes = self.changes();
        self.write_with(&changes, true)
    }

    /// What changed since the last write, sealed ([`Client::changes`]).
    pub fn changes(&mut self) -> sitrep_core::persist::Changes {
        self.client.changes(&self.vault)
    }

    /// Write changes taken from the client ([`Client::changes`]) in one
    /// transaction; on failure the next write is a complete one.
    pub fn write(&mut self, changes: &sitrep_core::persist::Changes) -> anyhow::Result<()> {
        self.write_with(changes, false)
    }

    fn write_with(
        &mut self,
        changes: &sitrep_core::persist::Changes,
        lazy: bool,
    ) -> anyhow::Result<()> {
        if self.lock.is_none() {
            self.client.persist_unknown();
            bail!("internal: the profile was saved without its lock");
        }
        let written = if lazy {
            self.store.write_lazy(changes)
        } else {
            self.store.write(changes)
        };
        if let Err(e) = written {
            self.client.persist_unknown();
            return Err(e.into());
        }
        Ok(())
    }

    /// A client of this profile's server, with its token and trust.
    pub fn remote(&self) -> anyhow::Result<Remote> {
        Remote::with_ca(
            self.client.server(),
            Some(self.client.token()),
            self.client.server_ca(),
        )
    }
}

/// An API error the server answered with.
#[derive(Debug, thiserror::Error)]
#[error("server refused ({status}): {}", .body.message)]
pub struct ServerError {
    /// HTTP status.
    pub status: u16,
    /// Its JSON body.
    pub body: api::ApiError,
}

/// HTTP access to one server.
#[derive(Clone)]
pub struct Remote {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    trust: tls::Trust,
}

/// A WebSocket to the server.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Remote {
    /// A client for `base` (`https://sitrep.example.nhs.uk:8448`, or
    /// `http://127.0.0.1:8448` on this machine), trusting the system's roots.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        Self::with_ca(base, token, None)
    }

    /// A client that also trusts a private CA (PEM). Plain HTTP is refused
    /// to anything but loopback ([`tls::check_url`]).
    pub fn with_ca(base: &str, token: Option<&str>, ca_pem: Option<&str>) -> anyhow::Result<Self> {
        tls::check_url(base)?;
        let trust = tls::trust(ca_pem)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .use_preconfigured_tls((*trust.http).clone())
            // A redirect could lead to plain HTTP elsewhere: the API has none.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot set up HTTPS")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.map(String::from),
            trust,
        })
    }

    /// The server's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Open the WebSocket at `path` (`/v1/ws`), with this client's token
    /// and trust, within `timeout`.
    pub async fn ws(&self, path: &str, timeout: Duration) -> anyhow::Result<Ws> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}{path}")
        } else {
            format!("ws://{}{path}", self.base.trim_start_matches("http://"))
        };
        let mut req = url.as_str().into_client_request()?;
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let connector = tokio_tungstenite::Connector::Rustls(self.trust.ws.clone());
        let (ws, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector)),
        )
        .await
        .context("timed out")??;
        Ok(ws)
    }

    async fn call<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        self.request(method, path, body, &[]).await
    }

    async fn call_with<R: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<R> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let req = body(req);
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.json().await?);
        }
        let body = resp.json::<api::ApiError>().await.unwrap_or(api::ApiError {
            error: "unknown".into(),
            message: format!("HTTP {status}"),
            current_epoch: None,
        });
        Err(ServerError {
            status: status.as_u16(),
            body,
        }
        .into())
    }

    /// A JSON request with extra headers (`body` `None`: no body).
    pub async fn request<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<R> {
        self.call_with(method, path, |mut req| {
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            match body {
                Some(b) => req.json(b),
                None => req,
            }
        })
        .await
    }

    /// POST JSON.
    pub async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// POST a JSON body already encoded (a sealed pending change, re-sent as is).
    pub async fn post_raw<R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<R> {
        self.call_with(reqwest::Method::POST, path, |r| {
            r.header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        })
        .await
    }

    /// Make a request the engine asked for: the status and body, or `None`
    /// when no answer came (the request may or may not have been applied).
    pub async fn perform(&self, req: &sitrep_core::engine::Request) -> Option<(u16, Vec<u8>)> {
        let method = match req.method {
            sitrep_core::engine::Method::Get => reqwest::Method::GET,
            _ => reqwest::Method::POST,
        };
        let mut r = self
            .http
            .request(method.clone(), format!("{}{}", self.base, req.path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if method == reqwest::Method::POST {
            r = r
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(req.body.clone());
        }
        let resp = r.send().await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.ok()?;
        Some((status, body.to_vec()))
    }

    /// GET JSON.
    pub async fn get<R: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.call::<(), R>(reqwest::Method::GET, path, None).await
    }
}

/// Enrol a new device with an invitation code and create its sealed profile.
pub async fn enrol(
    dir: &Path,
    server: &str,
    code: &str,
    passcode: &str,
    cs: impl Into<Option<Ciphersuite>>,
) -> anyhow::Result<Profile> {
    enrol_with_ca(dir, server, code, passcode, cs, None).await
}

/// [`enrol`] with a server whose certificate chains to a private CA (PEM,
/// [`tls::read_ca`]), which the profile keeps for every later request.
pub async fn enrol_with_ca(
    dir: &Path,
    server: &str,
    code: &str,
    passcode: &str,
    cs: impl Into<Option<Ciphersuite>>,
    ca_pem: Option<String>,
) -> anyhow::Result<Profile> {
    let invite = sitrep_wire::invite::Invite::parse(code)?;
    let remote = Remote::with_ca(server, None, ca_pem.as_deref())?;
    // The invitation names its organisation's key: a server that offers
    // another is refused before the code leaves this device.
    let health: api::Health = remote.get("/healthz").await?;
    if !invite.matches_fingerprint(&health.org_fingerprint) {
        bail!(
            "the server at {server} is not the organisation this invitation is from (its key fingerprint is {}); nothing was sent to it",
            health.org_fingerprint
        );
    }
    let signed_policy = fetch_policy(&remote).await?;
    // Without an explicit choice, the organisation's policy names the suite.
    let cs = match cs.into() {
        Some(cs) => cs,
        None => signed_policy
            .as_deref()
            .and_then(sitrep_wire::policy::SignedPolicy::peek_unverified)
            .and_then(|p| Ciphersuite::try_from(p.ciphersuite).ok())
            .unwrap_or(sitrep_core::DEFAULT_CIPHERSUITE),
    };
    let min = signed_policy
        .as_deref()
        .and_then(sitrep_wire::policy::SignedPolicy::peek_unverified)
        .map(|p| p.min_passcode_len)
        .unwrap_or(6);
    if passcode.chars().count() < min as usize {
        bail!("the organisation requires a passcode of at least {min} characters");
    }
    let pending = PendingEnrolment::new(cs)?;
    let resp: api::EnrolResponse = remote
        .post("/v1/enrol", &pending.enrol_request(&invite.secret)?)
        .await?;
    if !invite.matches_key(&resp.org_public_key) {
        bail!(
            "the server at {server} enrolled this device under a key that is not its invitation's organisation's; refused"
        );
    }
    let mut client = pending.finish(server, resp)?;
    client.set_server_ca(ca_pem);
    if let Some(sp) = signed_policy {
        client.apply_policy(&sp)?;
    }
    client.setup_totp()?;
    let mut profile = Profile::create(dir, passcode, client)?;
    top_up(&mut profile).await?;
    Ok(profile)
}

async fn fetch_policy(remote: &Remote) -> anyhow::Result<Option<Vec<u8>>> {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(with = "sitrep_wire::b64::opt", default)]
        policy: Option<Vec<u8>>,
    }
    let p: P = remote.get("/v1/policy").await?;
    Ok(p.policy)
}

/// Fetch and process everything pending, then retry the outbox. Each page is
/// processed and sealed to disk before it is acknowledged, so a crash at any
/// point loses nothing and processes nothing twice.
pub async fn sync(p: &mut Profile) -> anyhow::Result<Vec<Event>> {
    match drive(p, &mut Sync::new()).await {
        Err(e) if is_wiped(&e) => {
            p.wipe()?;
            Err(e.context(WIPED))
        }
        other => other,
    }
}

/// What a push calls for ([`sitrep_core::engine::Sync::catch_up`]): a sync
/// without the housekeeping (the user's new devices, KeyPackage top-up).
pub async fn catch_up(p: &mut Profile) -> anyhow::Result<Vec<Event>> {
    match drive(p, &mut Sync::catch_up()).await {
        Err(e) if is_wiped(&e) => {
            p.wipe()?;
            Err(e.context(WIPED))
        }
        other => other,
    }
}

/// Tell the server this device has shown `names`' messages to its user: the
/// "read" of delivery status. A conversation with nothing from the server
/// yet is skipped.
pub async fn mark_read(p: &Profile, names: &[String]) -> anyhow::Result<()> {
    let remote = p.remote()?;
    for name in names {
        let conv = p.client.conversation(name)?;
        if !conv.active {
            continue;
        }
        let Some(seq) = conv.history.iter().map(|h| h.seq).max().filter(|s| *s > 0) else {
            continue;
        };
        let _: serde_json::Value = remote
            .post(
                &format!("/v1/groups/{}/read", p.client.group_hex(name)?),
                &api::ReadRequest { seq },
            )
            .await?;
    }
    Ok(())
}

/// How far each member has got in a conversation (one request), for every
/// message's state: [`api::Receipts::tally`].
pub async fn receipts(p: &Profile, name: &str) -> anyhow::Result<api::Receipts> {
    let gid = p.client.group_hex(name)?;
    let r: api::Receipts = p
        .remote()?
        .get(&format!("/v1/groups/{gid}/receipts"))
        .await?;
    Ok(r)
}

/// One member's view of one message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Seen {
    /// User id.
    pub user_id: String,
    /// On at least one of the member's devices.
    pub delivered: bool,
    /// Earliest time (seconds) one of the member's devices showed it.
    pub read_at: Option<u64>,
}

/// Per member of conversation `name` when message `id` was sent (its sender
/// excepted): delivered, and read when. "Who has not seen it" is the members
/// with no `read_at`.
pub async fn message_status(p: &Profile, name: &str, id: &str) -> anyhow::Result<Vec<Seen>> {
    let conv = p.client.conversation(name)?;
    let entry = conv
        .history
        .iter()
        .find(|h| h.id == id || (id.len() >= 8 && h.id.starts_with(id)))
        .with_context(|| format!("no message {id} in {name}"))?;
    if entry.seq == 0 {
        bail!("message {id} has no place in the server's log yet (not sent, or a system line)");
    }
    let st: api::MessageStatus = p
        .remote()?
        .get(&format!(
            "/v1/groups/{}/status?seq={}",
            p.client.group_hex(name)?,
            entry.seq
        ))
        .await?;
    let mut by_user: std::collections::BTreeMap<String, Seen> = Default::default();
    for d in st.devices {
        if d.user_id == entry.sender {
            continue;
        }
        let s = by_user.entry(d.user_id.clone()).or_insert(Seen {
            user_id: d.user_id,
            delivered: false,
            read_at: None,
        });
        s.delivered |= d.delivered;
        s.read_at = match (s.read_at, d.read_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(by_user.into_values().collect())
}

/// What a wiped device says.
pub const WIPED: &str =
    "this device was wiped by the organisation: its keys and history have been destroyed";

/// The server answered that this device was revoked.
pub fn is_wiped(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ServerError>()
            .is_some_and(|s| s.status == 401 && s.body.error == "device_wiped")
            || c.downcast_ref::<Failure>().is_some_and(Failure::wiped)
    })
}

/// Whether trying again later may succeed: the engine could not reach the
/// server (what it had sent is kept, sealed), or the server was busy.
pub fn retryable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<Failure>().is_some_and(Failure::retryable)
            || c.downcast_ref::<ServerError>()
                .is_some_and(|s| s.status >= 500 || s.status == 429)
            || c.downcast_ref::<reqwest::Error>().is_some()
    })
}

/// A user's devices; the first column of the CLI output is the id.
pub async fn devices(p: &Profile) -> anyhow::Result<Vec<api::DeviceInfo>> {
    p.remote()?.get("/v1/devices").await
}

/// Revoke (remote-wipe) another of this user's devices.
pub async fn wipe_device(p: &Profile, device_id: &str) -> anyhow::Result<()> {
    let _: serde_json::Value = p
        .remote()?
        .post(&format!("/v1/devices/{device_id}/wipe"), &())
        .await?;
    Ok(())
}

/// Drive an engine task ([`sitrep_core::engine::Task`]): write what changed
/// durably before each request it asks for (so whatever the server may act
/// on is sealed first), perform it, feed back the reply or its absence, and wait
/// out its backoffs on the real clock. This loop is the whole of the CLI's
/// part in a sync, a commit or an outbox flush.
pub async fn drive<T: Task + ?Sized>(p: &mut Profile, task: &mut T) -> anyhow::Result<Vec<Event>> {
    let remote = p.remote()?;
    loop {
        let action = match task.poll(&mut p.client, now_ms()) {
            Ok(a) => a,
            Err(f) => {
                p.save_lazy()?;
                return Err(f.into());
            }
        };
        match action {
            Action::Request(req) => {
                if req.durable {
                    p.save()?;
                } else {
                    p.save_lazy()?;
                }
                let answer = remote.perform(&req).await;
                let reply = match &answer {
                    Some((status, body)) => Reply::Answered {
                        status: *status,
                        body,
                    },
                    None => Reply::Lost,
                };
                if let Err(f) = task.feed(&mut p.client, reply, now_ms()) {
                    p.save_lazy()?;
                    return Err(f.into());
                }
            }
            Action::Wait { until_ms } => {
                tokio::time::sleep(Duration::from_millis(until_ms.saturating_sub(now_ms()))).await;
            }
            Action::Done(events) => {
                // After the last answer: durable with the next write; lost
                // only in a power cut, and then asked again (the server
                // answers a repeated client id or change with its first
                // outcome, and keeps the inbox until it is acknowledged).
                p.save_lazy()?;
                return Ok(events);
            }
            _ => bail!("internal: an engine action this CLI does not know"),
        }
    }
}

/// Post the outbox ([`sitrep_core::engine::Outbox`]).
async fn flush_outbox(p: &mut Profile) -> anyhow::Result<Vec<Event>> {
    drive(p, &mut Outbox::new()).await
}

/// Keep enough KeyPackages on the server ([`sitrep_core::engine::TopUp`]).
pub async fn top_up(p: &mut Profile) -> anyhow::Result<()> {
    drive(p, &mut TopUp::new()).await.map(drop)
}

/// Run a commit-building step until the server accepts it, rebuilding after
/// another member's commit wins the epoch ([`sitrep_core::engine::Change`]).
async fn commit_with_retry(
    p: &mut Profile,
    build: impl FnMut(&mut Client) -> Result<sitrep_core::PreparedCommit, sitrep_core::Error> + Send,
) -> anyhow::Result<Vec<Event>> {
    drive(p, &mut Change::commit(build)).await
}

/// Create a conversation and add the given users (all their devices).
pub async fn chat_create(
    p: &mut Profile,
    name: &str,
    members: &[String],
    pid_policy: &str,
) -> anyhow::Result<Vec<Event>> {
    chat_create_with(
        p,
        name,
        members,
        &ChatOptions {
            pid_policy: pid_policy.into(),
            ..ChatOptions::default()
        },
    )
    .await
}

/// How a new conversation is set up.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// PID guard policy.
    pub pid_policy: String,
    /// Retention in seconds; 0 is the organisation's default.
    pub retention_secs: u64,
    /// Add the organisation's records account, visibly.
    pub recorded: bool,
}

impl Default for ChatOptions {
    fn default() -> Self {
        Self {
            pid_policy: "warn".into(),
            retention_secs: 0,
            recorded: false,
        }
    }
}

/// [`chat_create`] with retention and recording.
pub async fn chat_create_with(
    p: &mut Profile,
    name: &str,
    members: &[String],
    opts: &ChatOptions,
) -> anyhow::Result<Vec<Event>> {
    sync(p).await?;
    if p.client.conversation(name).is_ok_and(|c| c.active) {
        bail!("you already have a conversation named {name:?}: choose another name");
    }
    let setup = Setup {
        pid_policy: opts.pid_policy.clone(),
        retention_secs: opts.retention_secs,
        recorded: opts.recorded,
        posters: Vec::new(),
    };
    let mut task = Create::new(&p.client, name, members, setup);
    drive(p, &mut task).await
}

/// Claim one KeyPackage for each device of `users`, in requests within the
/// server's bound, for a client outside a profile (the benchmarks; a
/// profile's commands drive [`sitrep_core::engine::Claim`]). Returns the
/// KeyPackages and the users with no device.
pub async fn claim_key_packages(
    remote: &Remote,
    users: &[String],
) -> anyhow::Result<(Vec<api::ClaimedKeyPackage>, Vec<String>)> {
    let mut kps = Vec::new();
    let mut missing = Vec::new();
    for chunk in users.chunks(500) {
        let claim: api::ClaimResponse = remote
            .post(
                "/v1/keypackages/claim",
                &api::ClaimRequest {
                    user_ids: chunk.to_vec(),
                    device_ids: Vec::new(),
                },
            )
            .await?;
        kps.extend(claim.key_packages);
        missing.extend(claim.missing);
    }
    Ok((kps, missing))
}

/// Add users to a conversation. A device whose KeyPackage is unusable is
/// left out and reported (an `Event::Refused` naming it), the others are added.
pub async fn chat_add(p: &mut Profile, name: &str, users: &[String]) -> anyhow::Result<Vec<Event>> {
    let mut claim = Claim::users(users);
    drive(p, &mut claim).await?;
    if !claim.missing().is_empty() {
        bail!("no enrolled device for: {}", claim.missing().join(", "));
    }
    commit_with_retry(p, |c| c.prepare_add(name, claim.claimed())).await
}

/// Remove a user (all their devices) from a conversation.
pub async fn chat_remove(p: &mut Profile, name: &str, user: &str) -> anyhow::Result<()> {
    commit_with_retry(p, |c| c.prepare_remove(name, user)).await?;
    Ok(())
}

/// Leave a conversation: the server stops delivering it to this device at
/// once; the next member to sync commits the removal.
pub async fn chat_leave(p: &mut Profile, name: &str) -> anyhow::Result<Vec<Event>> {
    sync(p).await?;
    drive(p, &mut Change::leave(name)).await.map_err(|e| {
        if retryable(&e) {
            e.context("leaving is not confirmed yet; the next sync confirms it")
        } else {
            e
        }
    })
}

/// Refresh this device's keys in a conversation.
pub async fn chat_update(p: &mut Profile, name: &str) -> anyhow::Result<()> {
    commit_with_retry(p, |c| c.prepare_update(name)).await?;
    Ok(())
}

/// Encrypt and send a text message; returns its id once the server has stored it.
pub async fn send(p: &mut Profile, name: &str, text: &str) -> anyhow::Result<String> {
    send_checked(p, name, text, false).await
}

/// [`send`], with PID-guard warnings confirmed by the sender when `allow_pid`.
/// Returns the message id; the message may still be queued (see [`send_queued`]).
pub async fn send_checked(
    p: &mut Profile,
    name: &str,
    text: &str,
    allow_pid: bool,
) -> anyhow::Result<String> {
    Ok(send_queued(p, name, text, allow_pid).await?.id)
}

/// What became of a message the user wrote.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its id.
    pub id: String,
    /// Why it still waits in the sealed outbox (`None`: the server stored it).
    pub queued: Option<String>,
}

/// Outbox first: the message is sealed in the outbox before anything else,
/// so it is never lost; then a sync catches up and sends it. When the server
/// cannot be reached (or answers "later"), the message stays queued and goes
/// out at the next sync, in order and once.
pub async fn send_queued(
    p: &mut Profile,
    name: &str,
    text: &str,
    allow_pid: bool,
) -> anyhow::Result<Sent> {
    let id = match p.client.queue_text(name, text, now_ms(), allow_pid) {
        Err(sitrep_core::Error::UnknownConversation(_)) => {
            // Perhaps added since the last sync: catch up, if the server
            // can be reached, and look again.
            if let Err(e) = sync(p).await
                && is_wiped(&e)
            {
                return Err(e);
            }
            p.client.queue_text(name, text, now_ms(), allow_pid)?
        }
        r => r?,
    };
    p.save()?;
    let waiting = |p: &Profile| p.client.waiting().iter().any(|w| w.id == id);
    let stored = |p: &Profile| {
        p.client
            .conversations()
            .any(|c| c.history.iter().any(|h| h.id == id && h.kind != "system"))
    };
    match sync(p).await {
        Ok(_) if stored(p) => Ok(Sent { id, queued: None }),
        Ok(events) if !waiting(p) => {
            let why = events
                .iter()
                .find_map(|e| match e {
                    Event::Refused { reason } if reason.contains("not sent") => {
                        Some(reason.clone())
                    }
                    _ => None,
                })
                .unwrap_or_else(|| "the message was not sent".into());
            bail!("{why}")
        }
        Ok(_) => Ok(Sent {
            id,
            queued: Some("this device is being re-added to the conversation".into()),
        }),
        Err(e) if is_wiped(&e) => Err(e),
        Err(e) if retryable(&e) && waiting(p) => Ok(Sent {
            id,
            queued: Some(format!("{:#}", e)),
        }),
        Err(e) if waiting(p) => {
            Err(e.context("the message is kept in the outbox and goes out at the next sync"))
        }
        Err(e) => Err(e),
    }
}

/// Default profile directory.
pub fn default_profile() -> PathBuf {
    PathBuf::from("sitrep-profile")
}
