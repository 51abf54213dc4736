//! `sitrep admin ...` on either side: the server's data directory (on its
//! machine, as the OS user who runs it) or the API (`--server URL`, from the
//! admin's own enrolled device, which needs an admin grant and, where the
//! policy asks, the grant's two-step code). Both do the same thing and put
//! it in the same signed audit log; only the actor recorded differs.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use sitrep_server::admin::{
    AdminRow, DirectoryChange, Granted, InviteRequest, SESSION_HEADER, TOTP_HEADER,
};
use sitrep_server::audit::AuditEntry;
use sitrep_server::{DeviceAdminRow, Disabled, UserRow};
use sitrep_wire::directory::{Directory, DirectoryError};
use sitrep_wire::policy::OrgPolicy;

use crate::{Profile, Remote, ServerError};

/// Where admin commands go.
// One per command: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Admin {
    /// The server's data directory.
    Data(PathBuf),
    /// The API, as an admin's device.
    Api {
        /// With the device's token and trust.
        remote: Remote,
        /// The two-step code, once known (from `SITREP_ADMIN_TOTP` or asked),
        /// until it has opened a session.
        totp: std::sync::Mutex<Option<String>>,
        /// The admin session a code opened (`POST /v1/admin/session`): one
        /// code for every request of a command.
        session: std::sync::Mutex<Option<String>>,
        /// The organisation the device enrolled in: name and key fingerprint.
        org: (String, String),
        /// Its key, pinned at enrolment.
        org_key: Vec<u8>,
        /// The last audit entry this device verified.
        audit_pin: Option<(u64, String)>,
    },
}

fn any(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl Admin {
    /// Through `url` with `profile`'s device, which must be enrolled there.
    pub fn api(profile: &Profile, url: &str) -> anyhow::Result<Self> {
        let mine = profile.client.server().trim_end_matches('/');
        if mine != url.trim_end_matches('/') {
            bail!(
                "this profile is enrolled with {mine}, not {url}: use the admin's profile (--profile) for that server"
            );
        }
        Ok(Self::Api {
            remote: profile.remote()?,
            totp: std::sync::Mutex::new(std::env::var("SITREP_ADMIN_TOTP").ok()),
            session: std::sync::Mutex::new(None),
            org: (
                profile.client.org_name().to_string(),
                profile.client.org_fingerprint(),
            ),
            org_key: profile.client.org_key().to_vec(),
            audit_pin: profile.client.audit_pin().map(|(s, h)| (s, h.to_string())),
        })
    }

    /// The organisation's name and key fingerprint.
    pub fn organisation(&self) -> anyhow::Result<(String, String)> {
        match self {
            Self::Data(d) => {
                let org = sitrep_server::org::Org::open(d)?;
                Ok((org.name.clone(), org.fingerprint()))
            }
            Self::Api { org, .. } => Ok(org.clone()),
        }
    }

    async fn call<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<R> {
        let Self::Api {
            remote,
            totp,
            session,
            ..
        } = self
        else {
            bail!("not an API admin");
        };
        let lock = |m: &std::sync::Mutex<Option<String>>| {
            m.lock().unwrap_or_else(|p| p.into_inner()).clone()
        };
        for attempt in 0..2 {
            let s = lock(session);
            let headers: Vec<(&str, &str)> = s
                .as_deref()
                .map(|s| vec![(SESSION_HEADER, s)])
                .unwrap_or_default();
            match remote.request(method.clone(), path, body, &headers).await {
                Err(e)
                    if attempt == 0
                        && e.downcast_ref::<ServerError>()
                            .is_some_and(|s| s.body.error == "totp_required") =>
                {
                    // No session yet, or it ran out: one code opens one.
                    let code = match lock(totp) {
                        Some(c) => c,
                        None => ask_code()?,
                    };
                    *totp.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    #[derive(serde::Deserialize)]
                    struct Opened {
                        session: String,
                    }
                    let o: Opened = remote
                        .request(
                            reqwest::Method::POST,
                            "/v1/admin/session",
                            None::<&()>,
                            &[(TOTP_HEADER, code.as_str())],
                        )
                        .await?;
                    *session.lock().unwrap_or_else(|p| p.into_inner()) = Some(o.session);
                }
                other => return other,
            }
        }
        bail!("the server refused the admin session")
    }

    async fn get<R: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        self.call::<(), R>(reqwest::Method::GET, path, None).await
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Whether a refusal says there is no such thing.
    fn not_found(e: &anyhow::Error) -> bool {
        e.downcast_ref::<ServerError>()
            .is_some_and(|s| s.status == 404)
    }

    /// Every user invited or enrolled.
    pub async fn users(&self) -> anyhow::Result<Vec<UserRow>> {
        match self {
            Self::Data(d) => Ok(sitrep_server::list_users(d)?),
            Self::Api { .. } => self.get("/v1/admin/users").await,
        }
    }

    /// Every device, or one user's.
    pub async fn devices(&self, user: Option<&str>) -> anyhow::Result<Vec<DeviceAdminRow>> {
        match self {
            Self::Data(d) => Ok(sitrep_server::list_devices(d, user)?),
            Self::Api { .. } => match user {
                Some(u) => self.get(&format!("/v1/admin/devices?user={u}")).await,
                None => self.get("/v1/admin/devices").await,
            },
        }
    }

    /// Disable a leaver; `None`: never invited.
    pub async fn disable(&self, user: &str) -> anyhow::Result<Option<Disabled>> {
        match self {
            Self::Data(d) => Ok(sitrep_server::disable_user(
                d,
                user,
                &sitrep_server::admin_actor(),
            )?),
            Self::Api { .. } => match self
                .post(&format!("/v1/admin/users/{user}/disable"), &())
                .await
            {
                Err(e) if Self::not_found(&e) => Ok(None),
                other => other.map(Some),
            },
        }
    }

    /// Revoke a device; whether it existed.
    pub async fn wipe(&self, device: &str) -> anyhow::Result<bool> {
        match self {
            Self::Data(d) => Ok(sitrep_server::revoke_device(
                d,
                device,
                &sitrep_server::admin_actor(),
            )?),
            Self::Api { .. } => match self
                .post::<_, serde_json::Value>(&format!("/v1/admin/devices/{device}/wipe"), &())
                .await
            {
                Err(e) if Self::not_found(&e) => Ok(false),
                other => other.map(|_| true),
            },
        }
    }

    /// A new enrolment code.
    pub async fn invite(&self, r: &InviteRequest) -> anyhow::Result<String> {
        match self {
            Self::Data(d) => Ok(sitrep_server::create_invite(
                d,
                &r.user_id,
                &r.display_name,
                &r.role,
                r.ttl_secs,
            )?),
            Self::Api { org, .. } => {
                let v: serde_json::Value = self.post("/v1/admin/invites", r).await?;
                let code = v["code"]
                    .as_str()
                    .map(str::to_string)
                    .context("the server answered no code")?;
                // The code names the organisation's key: it must be the one
                // this device enrolled under, or the server is not ours.
                let invite = sitrep_wire::invite::Invite::parse(&code)?;
                if !invite.matches_fingerprint(&org.1) {
                    bail!("the server issued a code for another organisation's key; not shown");
                }
                Ok(code)
            }
        }
    }

    /// The policy in force.
    pub async fn policy(&self) -> anyhow::Result<OrgPolicy> {
        match self {
            Self::Data(d) => {
                let org = sitrep_server::org::Org::open(d)?;
                sitrep_server::show_policy(d, &org).map_err(any)
            }
            Self::Api { .. } => self.get("/v1/admin/policy").await,
        }
    }

    /// Sign and put `p` in force (the next serial); what is now in force.
    pub async fn set_policy(&self, p: OrgPolicy) -> anyhow::Result<OrgPolicy> {
        match self {
            Self::Data(d) => {
                let org = sitrep_server::org::Org::open(d)?;
                sitrep_server::set_policy(d, &org, p, &sitrep_server::admin_actor()).map_err(any)
            }
            Self::Api { .. } => self.post("/v1/admin/policy", &p).await,
        }
    }

    /// The audit log, oldest first.
    pub async fn audit(&self) -> anyhow::Result<Vec<AuditEntry>> {
        match self {
            Self::Data(d) => sitrep_server::audit_entries(d).map_err(any),
            Self::Api { .. } => self.get("/v1/admin/audit").await,
        }
    }

    /// Grant `user` admin rights; `None`: no such user.
    pub async fn grant(&self, user: &str) -> anyhow::Result<Option<Granted>> {
        match self {
            Self::Data(d) => Ok(sitrep_server::admin::grant(
                d,
                &sitrep_server::admin_actor(),
                user,
            )?),
            Self::Api { .. } => match self.post(&format!("/v1/admin/admins/{user}"), &()).await {
                Err(e) if Self::not_found(&e) => Ok(None),
                other => other.map(Some),
            },
        }
    }

    /// Take `user`'s admin rights away; whether there were any.
    pub async fn ungrant(&self, user: &str) -> anyhow::Result<bool> {
        match self {
            Self::Data(d) => Ok(sitrep_server::admin::ungrant(
                d,
                &sitrep_server::admin_actor(),
                user,
            )?),
            Self::Api { .. } => match self
                .post::<_, serde_json::Value>(&format!("/v1/admin/admins/{user}/revoke"), &())
                .await
            {
                Err(e) if Self::not_found(&e) => Ok(false),
                other => other.map(|_| true),
            },
        }
    }

    /// Every admin.
    pub async fn admins(&self) -> anyhow::Result<Vec<AdminRow>> {
        match self {
            Self::Data(d) => Ok(sitrep_server::admin::list(d)?),
            Self::Api { .. } => self.get("/v1/admin/admins").await,
        }
    }

    /// Check the audit log's chain and signatures: on the data directory
    /// with its key, or as listed by the server against the key this device
    /// pinned at enrolment, and holding the last entry this device verified
    /// before (a log cut short fails). The number of entries, and (over the
    /// API) the last one's place and hash, for the device to remember.
    pub async fn verify_audit(&self) -> anyhow::Result<(u64, Option<(u64, String)>)> {
        let failed = |e: anyhow::Error| anyhow::anyhow!("audit log FAILED verification: {e}");
        match self {
            Self::Data(d) => Ok((
                sitrep_server::audit_verify(d)
                    .map_err(any)
                    .map_err(failed)?,
                None,
            )),
            Self::Api {
                org_key, audit_pin, ..
            } => {
                let key: [u8; 32] = org_key
                    .as_slice()
                    .try_into()
                    .context("the pinned organisation key is not 32 bytes")?;
                let entries = self.audit().await?;
                let n = sitrep_server::audit::verify_entries(&entries, &key)
                    .map_err(any)
                    .map_err(failed)?;
                if let Some((seq, hash)) = audit_pin {
                    let held = entries.iter().any(|e| e.seq == *seq && e.hash == *hash);
                    if !held {
                        return Err(failed(anyhow::anyhow!(
                            "the log no longer holds entry {seq}, which this device verified before: entries were removed or replaced"
                        )));
                    }
                }
                Ok((n, entries.last().map(|e| (e.seq, e.hash.clone()))))
            }
        }
    }

    /// The organisation's directory.
    pub async fn directory(&self) -> anyhow::Result<Directory> {
        match self {
            Self::Data(d) => sitrep_server::directory::show(d).map_err(|e| anyhow::anyhow!("{e}")),
            Self::Api { .. } => self.get("/v1/admin/directory").await,
        }
    }

    /// Change the directory with `f` (which returns the audit detail). Over
    /// the API the change is made from the directory read and refused if it
    /// changed meanwhile, then made again from the new one, a few times.
    pub async fn update_directory(
        &self,
        action: &str,
        f: impl Fn(&mut Directory) -> Result<String, DirectoryError>,
    ) -> anyhow::Result<Directory> {
        match self {
            Self::Data(d) => {
                sitrep_server::directory::admin_update(d, &sitrep_server::admin_actor(), action, f)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            }
            Self::Api { .. } => {
                for _ in 0..5 {
                    let mut d = self.directory().await?;
                    let serial = d.serial;
                    let detail = f(&mut d)?;
                    let change = DirectoryChange {
                        serial,
                        action: action.to_string(),
                        detail,
                        directory: d,
                    };
                    match self.post("/v1/admin/directory", &change).await {
                        Err(e)
                            if e.downcast_ref::<ServerError>().is_some_and(|s| {
                                s.status == 409 && s.body.error == "directory_changed"
                            }) => {}
                        other => return other,
                    }
                }
                bail!("the directory kept changing while this change was made: try again")
            }
        }
    }

    /// A new SCIM bearer token (the old one stops working).
    pub async fn scim_token(&self) -> anyhow::Result<String> {
        match self {
            Self::Data(d) => Ok(sitrep_server::scim::new_token(
                d,
                &sitrep_server::admin_actor(),
            )?),
            Self::Api { .. } => {
                #[derive(serde::Deserialize)]
                struct T {
                    token: String,
                }
                let t: T = self.post("/v1/admin/scim/token", &()).await?;
                Ok(t.token)
            }
        }
    }
}

/// The admin's two-step code, asked for on the terminal.
fn ask_code() -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        bail!(
            "the organisation's policy asks for the admin two-step code: set SITREP_ADMIN_TOTP to the current code from `sitrep admin grant`'s authenticator entry"
        );
    }
    eprint!("admin two-step code: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}
