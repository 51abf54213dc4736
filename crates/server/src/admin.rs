//! Administration over the API: the admin's own enrolled device, with an
//! admin grant (`sitrep admin grant USER`) and, where the policy asks for
//! two-step verification, a TOTP code from the grant's own secret in
//! `X-Sitrep-Totp`. Every action is in the signed audit log as
//! `admin:<user>/<device>`. The same functions serve `sitrep admin ... --data`
//! on the server's machine.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use sitrep_wire::api::valid_id;

use crate::db::{admin_tx, connect};
use crate::error::ApiErr;
use crate::http::{Auth, JsonBody, blocking};
use crate::{AppState, now_secs};

/// The header carrying the admin's current TOTP code.
pub const TOTP_HEADER: &str = "x-sitrep-totp";
/// The header carrying an admin session (`POST /v1/admin/session`).
pub const SESSION_HEADER: &str = "x-sitrep-admin-session";
/// How long an admin session lasts.
pub const SESSION_SECS: u64 = 600;
/// Most admin sessions held at once.
const MAX_SESSIONS: usize = 10_000;

/// Admin sessions: one two-step code opens a few minutes of requests from
/// one device (as `sudo` does), so a command that makes several requests
/// needs one code, not one per request (each code is single use). In
/// memory: a restart ends them all. Kept as hashes of the session token.
#[derive(Default)]
pub(crate) struct Sessions {
    by_hash: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (String, u64)>>,
}

impl Sessions {
    /// A new session for `device`, or `None` when too many are open.
    fn open(&self, device: &str, now: u64) -> Option<String> {
        let mut m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SESSIONS {
            m.retain(|_, (_, exp)| *exp > now);
            if m.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let token = hex::encode(crate::random::<32>());
        m.insert(
            crate::org::token_hash(&token),
            (device.to_string(), now + SESSION_SECS),
        );
        Some(token)
    }

    /// Whether `token` is a live session of `device`.
    fn valid(&self, token: &str, device: &str, now: u64) -> bool {
        let m = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&crate::org::token_hash(token))
            .is_some_and(|(d, exp)| d == device && *exp > now)
    }
}

/// Wrong codes before a grant is locked for [`LOCKOUT_SECS`].
const MAX_FAILURES: i64 = 5;
const LOCKOUT_SECS: i64 = 300;
const STEP_SECS: u64 = 30;

/// One admin, for `sitrep admin grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminRow {
    /// User id.
    pub user_id: String,
    /// When it was granted (seconds).
    pub granted_at: u64,
    /// Who granted it.
    pub granted_by: String,
}

/// A new grant: the TOTP secret the admin adds to an authenticator app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Granted {
    /// User id.
    pub user_id: String,
    /// `otpauth://` URI of the grant's TOTP secret (shown once).
    pub otpauth_uri: String,
}

fn totp(secret: Vec<u8>, user: &str) -> Result<totp_rs::TOTP, rusqlite::Error> {
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        STEP_SECS,
        secret,
        Some("Sitrep admin".into()),
        user.to_string(),
    )
    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.to_string().into()))
}

/// Make `user` an admin (a new TOTP secret each time). `None`: nobody of
/// that id was ever invited, or the user was disabled.
pub fn grant(dir: &Path, actor: &str, user: &str) -> Result<Option<Granted>, rusqlite::Error> {
    let secret = crate::random::<20>().to_vec();
    let uri = totp(secret.clone(), user)?.get_url();
    admin_tx(dir, |tx, key| {
        let active: i64 = tx.query_row(
            "SELECT COUNT(*) FROM devices WHERE user_id = ?1 AND revoked_at IS NULL",
            [user],
            |r| r.get(0),
        )?;
        let invited: i64 = tx.query_row(
            "SELECT COUNT(*) FROM invites WHERE user_id = ?1 AND used_at IS NULL AND expires_at > ?2",
            params![user, now_secs() as i64],
            |r| r.get(0),
        )?;
        if active + invited == 0 {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO admins (user_id, totp_secret, granted_at, granted_by) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(user_id) DO UPDATE SET totp_secret = excluded.totp_secret, last_step = 0,
                 failures = 0, locked_until = 0, granted_at = excluded.granted_at, granted_by = excluded.granted_by",
            params![user, secret, now_secs() as i64, actor],
        )?;
        crate::audit::append_in(
            tx,
            key,
            actor,
            "admin.grant",
            &format!("user={user}"),
            now_secs(),
        )?;
        Ok(Some(Granted {
            user_id: user.to_string(),
            otpauth_uri: uri,
        }))
    })
}

/// Take `user`'s admin grant away; whether there was one.
pub fn ungrant(dir: &Path, actor: &str, user: &str) -> Result<bool, rusqlite::Error> {
    admin_tx(dir, |tx, key| {
        let n = tx.execute("DELETE FROM admins WHERE user_id = ?1", [user])?;
        if n > 0 {
            crate::audit::append_in(
                tx,
                key,
                actor,
                "admin.revoke",
                &format!("user={user}"),
                now_secs(),
            )?;
        }
        Ok(n > 0)
    })
}

/// Every admin.
pub fn list(dir: &Path) -> Result<Vec<AdminRow>, rusqlite::Error> {
    let conn = connect(dir)?;
    let mut st =
        conn.prepare("SELECT user_id, granted_at, granted_by FROM admins ORDER BY user_id")?;
    let rows = st.query_map([], |r| {
        Ok(AdminRow {
            user_id: r.get(0)?,
            granted_at: r.get::<_, i64>(1)? as u64,
            granted_by: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Whether `user` may administer now: a grant, and where `need_totp`, a
/// code of a step later than the last one used (no replay), within one step
/// of `now`. Wrong codes count; past [`MAX_FAILURES`] the grant is locked.
fn check(
    dir: &Path,
    user: &str,
    code: Option<&str>,
    need_totp: bool,
    now: u64,
) -> Result<(), ApiErr> {
    let mut conn = connect(dir).map_err(|_| ApiErr::internal())?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|_| ApiErr::internal())?;
    let row: Option<(Vec<u8>, i64, i64, i64)> = tx
        .query_row(
            "SELECT totp_secret, last_step, failures, locked_until FROM admins WHERE user_id = ?1",
            [user],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(|_| ApiErr::internal())?;
    let Some((secret, last_step, failures, locked_until)) = row else {
        return Err(ApiErr::forbidden(
            "not_admin",
            "this device's user has no admin grant (sitrep admin grant)",
        ));
    };
    if !need_totp {
        return Ok(());
    }
    if (now as i64) < locked_until {
        return Err(ApiErr::too_many(
            "totp_locked",
            "too many wrong admin codes: try again in a few minutes",
        ));
    }
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return Err(ApiErr::forbidden(
            "totp_required",
            "the policy asks for the admin's two-step code (X-Sitrep-Totp)",
        ));
    };
    let t = totp(secret, user).map_err(|_| ApiErr::internal())?;
    let step = now / STEP_SECS;
    let matched = [step.saturating_sub(1), step, step + 1]
        .into_iter()
        .find(|s| *s as i64 > last_step && t.generate(s * STEP_SECS) == code);
    let result = match matched {
        Some(s) => tx.execute(
            "UPDATE admins SET last_step = ?2, failures = 0 WHERE user_id = ?1",
            params![user, s as i64],
        ),
        None if failures + 1 >= MAX_FAILURES => tx.execute(
            "UPDATE admins SET failures = 0, locked_until = ?2 WHERE user_id = ?1",
            params![user, now as i64 + LOCKOUT_SECS],
        ),
        None => tx.execute(
            "UPDATE admins SET failures = failures + 1 WHERE user_id = ?1",
            [user],
        ),
    };
    result.map_err(|_| ApiErr::internal())?;
    tx.commit().map_err(|_| ApiErr::internal())?;
    match matched {
        Some(_) => Ok(()),
        None => {
            tracing::warn!("wrong or reused admin two-step code");
            Err(ApiErr::forbidden(
                "totp_invalid",
                "wrong, expired or already used admin code",
            ))
        }
    }
}

/// A request from an admin's device; the actor recorded for what it does.
pub(crate) struct AdminAuth {
    pub actor: String,
    /// The device asking.
    pub device_id: String,
    /// Let in by a session rather than a code (or no code needed).
    pub by_session: bool,
}

impl FromRequestParts<Arc<AppState>> for AdminAuth {
    type Rejection = ApiErr;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Auth(dev) = Auth::from_request_parts(parts, state).await?;
        let code = parts
            .headers
            .get(TOTP_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 16)
            .map(str::to_string);
        let by_session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128)
            .is_some_and(|t| state.admin_sessions.valid(t, &dev.device_id, now_secs()));
        let st = state.clone();
        let user = dev.user_id.clone();
        blocking(move || {
            // The signed policy in force, from the server's own connection.
            let need = match st.db.policy()? {
                Some(b) => {
                    sitrep_wire::policy::SignedPolicy::verify(&b, &st.org.public_key())
                        .map_err(store)?
                        .two_step_required
                }
                None => sitrep_wire::policy::OrgPolicy::default().two_step_required,
            };
            // A session stands for the code; the grant is checked anyway.
            check(
                &st.config.data_dir,
                &user,
                code.as_deref(),
                need && !by_session,
                now_secs(),
            )
        })
        .await?;
        Ok(AdminAuth {
            actor: format!("admin:{}/{}", dev.user_id, dev.device_id),
            device_id: dev.device_id,
            by_session,
        })
    }
}

type St = State<Arc<AppState>>;

fn store(e: impl std::fmt::Display) -> ApiErr {
    tracing::error!(error = %e, "admin request failed in the store");
    ApiErr::internal()
}

fn user_id(u: &str) -> Result<(), ApiErr> {
    if valid_id(u) {
        Ok(())
    } else {
        Err(ApiErr::bad_request("bad_user", "invalid user id"))
    }
}

/// These routes in the OpenAPI description.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    users,
    disable,
    devices,
    wipe,
    invite,
    policy,
    set_policy,
    audit,
    admins,
    grant_route,
    ungrant_route,
    scim_token,
    directory_get,
    directory_set,
    open_session,
))]
pub(crate) struct Doc;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/admin/users", get(users))
        .route("/v1/admin/users/{user}/disable", post(disable))
        .route("/v1/admin/devices", get(devices))
        .route("/v1/admin/devices/{device}/wipe", post(wipe))
        .route("/v1/admin/invites", post(invite))
        .route("/v1/admin/policy", get(policy).post(set_policy))
        .route("/v1/admin/audit", get(audit))
        .route("/v1/admin/admins", get(admins))
        .route("/v1/admin/admins/{user}", post(grant_route))
        .route("/v1/admin/admins/{user}/revoke", post(ungrant_route))
        .route("/v1/admin/scim/token", post(scim_token))
        .route("/v1/admin/session", post(open_session))
        .route(
            "/v1/admin/directory",
            get(directory_get)
                .post(directory_set)
                .layer(axum::Extension(crate::http::BodyLimit(
                    4 * sitrep_wire::directory::MAX_DIRECTORY_BYTES,
                ))),
        )
}

/// A change to the directory over the API: the whole new directory, made
/// from the one at `serial` (compare and set: a change made meanwhile, by
/// another admin or a role taken, is not overwritten), with what the audit
/// log says of it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DirectoryChange {
    /// Serial of the directory the change was made from.
    pub serial: u64,
    /// `role.set`, `role.remove`, `team.set` or `callout.set`.
    pub action: String,
    /// What the admin's client says it did (at most 512 bytes of text); the
    /// audit log records what the server finds changed instead.
    pub detail: String,
    /// The new directory (its serial is the server's to set).
    #[schema(value_type = Object)]
    pub directory: sitrep_wire::directory::Directory,
}

/// Actions a directory change may be audited as.
pub const DIRECTORY_ACTIONS: &[&str] = &["role.set", "role.remove", "team.set", "callout.set"];

/// What changed between two directories, for the audit log: ids only.
fn directory_diff(
    old: &sitrep_wire::directory::Directory,
    new: &sitrep_wire::directory::Directory,
) -> String {
    fn changed<'a, T: PartialEq>(
        old: &'a [T],
        new: &'a [T],
        id: impl Fn(&T) -> &str,
    ) -> Vec<&'a str> {
        let mut out: Vec<&str> = new
            .iter()
            .filter(|n| !old.iter().any(|o| o == *n))
            .map(&id)
            .chain(
                old.iter()
                    .filter(|o| !new.iter().any(|n| id(n) == id(o)))
                    .map(&id),
            )
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
    let roles = changed(&old.roles, &new.roles, |r| r.id.as_str());
    let teams = changed(&old.teams, &new.teams, |t| t.id.as_str());
    let mut parts = vec![
        format!("roles={}", roles.join(",")),
        format!("teams={}", teams.join(",")),
    ];
    if old.callout_standby != new.callout_standby {
        parts.push("callout=standby".into());
    }
    if old.callout_declared != new.callout_declared {
        parts.push("callout=declared".into());
    }
    let mut d = parts.join(" ");
    if d.len() > 512 {
        let mut end = 509;
        while !d.is_char_boundary(end) {
            end -= 1;
        }
        d.truncate(end);
        d.push_str("...");
    }
    d
}

/// # GET /v1/admin/directory
#[utoipa::path(
    get,
    path = "/v1/admin/directory",
    tag = "admin",
    responses((status = 200, description = "the directory in force", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn directory_get(
    State(st): St,
    _a: AdminAuth,
) -> Result<Json<sitrep_wire::directory::Directory>, ApiErr> {
    let dir = st.config.data_dir.clone();
    Ok(Json(
        blocking(move || crate::directory::show(&dir).map_err(store)).await?,
    ))
}

/// # POST /v1/admin/directory
#[utoipa::path(
    post,
    path = "/v1/admin/directory",
    tag = "admin",
    request_body(content = DirectoryChange),
    responses((status = 200, description = "signed and in force", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn directory_set(
    State(st): St,
    a: AdminAuth,
    JsonBody(c): JsonBody<DirectoryChange>,
) -> Result<Json<sitrep_wire::directory::Directory>, ApiErr> {
    if !DIRECTORY_ACTIONS.contains(&c.action.as_str()) {
        return Err(ApiErr::bad_request(
            "bad_action",
            "action is role.set, role.remove, team.set or callout.set",
        ));
    }
    if c.detail.len() > 512 || c.detail.chars().any(char::is_control) {
        return Err(ApiErr::bad_request(
            "bad_detail",
            "detail is at most 512 bytes of text",
        ));
    }
    c.directory
        .validate()
        .map_err(|e| ApiErr::bad_request("bad_directory", &e.to_string()))?;
    let dir = st.config.data_dir.clone();
    blocking(move || {
        let changed = std::cell::Cell::new(false);
        let r = crate::directory::admin_update(&dir, &a.actor, &c.action, |d| {
            if d.serial != c.serial {
                changed.set(true);
                return Err(sitrep_wire::directory::DirectoryError::Invalid("changed"));
            }
            let serial = d.serial;
            let detail = directory_diff(d, &c.directory);
            *d = c.directory;
            d.serial = serial;
            Ok(detail)
        });
        match r {
            Ok(d) => Ok(Json(d)),
            Err(_) if changed.get() => Err(ApiErr::conflict(
                "directory_changed",
                "the directory changed since it was read: read it again",
            )),
            Err(e) => Err(store(e)),
        }
    })
    .await
}

/// # POST /v1/admin/session
/// A session for this device (`X-Sitrep-Admin-Session` on the requests that
/// follow, for ten minutes), opened with a two-step code: never from another
/// session, so one code cannot be stretched into a day.
#[utoipa::path(
    post,
    path = "/v1/admin/session",
    tag = "admin",
    responses((status = 200, description = "the session token and its lifetime", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn open_session(State(st): St, a: AdminAuth) -> Result<Json<serde_json::Value>, ApiErr> {
    if a.by_session {
        return Err(ApiErr::forbidden(
            "session_from_session",
            "a session is opened with a two-step code, not another session",
        ));
    }
    let token = st
        .admin_sessions
        .open(&a.device_id, now_secs())
        .ok_or_else(|| ApiErr::too_many("too_many_sessions", "too many admin sessions open"))?;
    Ok(Json(
        serde_json::json!({ "session": token, "expires_in": SESSION_SECS }),
    ))
}

/// # POST /v1/admin/scim/token
/// A new bearer token for the identity system's SCIM client (the old one
/// stops working); shown once.
#[utoipa::path(
    post,
    path = "/v1/admin/scim/token",
    tag = "admin",
    responses((status = 200, description = "a new SCIM token, shown once", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn scim_token(State(st): St, a: AdminAuth) -> Result<Json<serde_json::Value>, ApiErr> {
    let dir = st.config.data_dir.clone();
    let token = blocking(move || crate::scim::new_token(&dir, &a.actor).map_err(store)).await?;
    Ok(Json(serde_json::json!({ "token": token })))
}

/// # GET /v1/admin/users
#[utoipa::path(
    get,
    path = "/v1/admin/users",
    tag = "admin",
    responses((status = 200, description = "every user", body = Vec<crate::UserRow>), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn users(State(st): St, _a: AdminAuth) -> Result<Json<Vec<crate::UserRow>>, ApiErr> {
    let dir = st.config.data_dir.clone();
    Ok(Json(
        blocking(move || crate::db::list_users(&dir).map_err(store)).await?,
    ))
}

#[derive(Deserialize)]
struct DevicesQuery {
    user: Option<String>,
}

/// # GET /v1/admin/devices?user=U
#[utoipa::path(
    get,
    path = "/v1/admin/devices",
    tag = "admin",
    params(("user" = Option<String>, Query, description = "only this user's")),
    responses((status = 200, description = "devices", body = Vec<crate::DeviceAdminRow>), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn devices(
    State(st): St,
    _a: AdminAuth,
    Query(q): Query<DevicesQuery>,
) -> Result<Json<Vec<crate::DeviceAdminRow>>, ApiErr> {
    if let Some(u) = &q.user {
        user_id(u)?;
    }
    let dir = st.config.data_dir.clone();
    Ok(Json(
        blocking(move || crate::db::list_devices(&dir, q.user.as_deref()).map_err(store)).await?,
    ))
}

/// Have the groups of revoked devices remove them now, not at the next sweep.
async fn sweep(st: &Arc<AppState>) -> Result<(), ApiErr> {
    let st = st.clone();
    blocking(move || {
        st.db
            .sweep_revocations(now_secs(), |p| st.hub.publish(p))
            .map(|_| ())
    })
    .await
}

/// # POST /v1/admin/users/{user}/disable
#[utoipa::path(
    post,
    path = "/v1/admin/users/{user}/disable",
    tag = "admin",
    params(("user" = String, Path, description = "user id")),
    responses((status = 200, description = "disabled", body = crate::Disabled), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn disable(
    State(st): St,
    a: AdminAuth,
    UrlPath(user): UrlPath<String>,
) -> Result<Json<crate::Disabled>, ApiErr> {
    user_id(&user)?;
    let dir = st.config.data_dir.clone();
    let u = user.clone();
    let d = blocking(move || crate::db::disable_user(&dir, &u, &a.actor).map_err(store))
        .await?
        .ok_or_else(|| ApiErr::not_found("no_user", "no such user was ever invited"))?;
    sweep(&st).await?;
    tracing::info!(devices = d.devices_revoked, "user disabled by an admin");
    Ok(Json(d))
}

/// # POST /v1/admin/devices/{device}/wipe
#[utoipa::path(
    post,
    path = "/v1/admin/devices/{device}/wipe",
    tag = "admin",
    params(("device" = String, Path, description = "device id")),
    responses((status = 200, description = "revoked", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn wipe(
    State(st): St,
    a: AdminAuth,
    UrlPath(device): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    if !valid_id(&device) {
        return Err(ApiErr::bad_request("bad_device", "invalid device id"));
    }
    let dir = st.config.data_dir.clone();
    let d = device.clone();
    if !blocking(move || crate::db::revoke_device(&dir, &d, &a.actor).map_err(store)).await? {
        return Err(ApiErr::not_found("no_device", "no such device"));
    }
    sweep(&st).await?;
    Ok(Json(serde_json::json!({ "revoked": device })))
}

/// An invitation asked for over the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[derive(utoipa::ToSchema)]
pub struct InviteRequest {
    /// User id.
    pub user_id: String,
    /// Name colleagues see (1 to 64 bytes).
    pub display_name: String,
    /// Role (1 to 64 bytes).
    pub role: String,
    /// Seconds the code stays valid (at most 30 days).
    pub ttl_secs: u64,
}

/// Longest an invitation may stay valid.
pub const MAX_INVITE_TTL_SECS: u64 = 30 * 24 * 3600;

/// # POST /v1/admin/invites
#[utoipa::path(
    post,
    path = "/v1/admin/invites",
    tag = "admin",
    request_body(content = InviteRequest),
    responses((status = 200, description = "the code", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn invite(
    State(st): St,
    a: AdminAuth,
    JsonBody(r): JsonBody<InviteRequest>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    user_id(&r.user_id)?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control);
    if !ok(&r.display_name) || !ok(&r.role) {
        return Err(ApiErr::bad_request(
            "bad_invite",
            "name and role are 1 to 64 bytes of text",
        ));
    }
    if r.ttl_secs == 0 || r.ttl_secs > MAX_INVITE_TTL_SECS {
        return Err(ApiErr::bad_request(
            "bad_invite",
            "ttl_secs is between 1 and 30 days",
        ));
    }
    let dir = st.config.data_dir.clone();
    let (d, u) = (dir.clone(), r.user_id.clone());
    if blocking(move || crate::scim::deactivated(&d, &u).map_err(store)).await? {
        return Err(deactivated());
    }
    let code = blocking(move || {
        crate::db::create_invite_as(
            &dir,
            &a.actor,
            &r.user_id,
            &r.display_name,
            &r.role,
            r.ttl_secs,
        )
        .map_err(|e| {
            // SCIM deactivated the user since the check above.
            if e.to_string().contains("deactivated in the identity system") {
                deactivated()
            } else {
                store(e)
            }
        })
    })
    .await?;
    Ok(Json(serde_json::json!({ "code": code })))
}

/// # GET /v1/admin/policy
#[utoipa::path(
    get,
    path = "/v1/admin/policy",
    tag = "admin",
    responses((status = 200, description = "the policy in force", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn policy(
    State(st): St,
    _a: AdminAuth,
) -> Result<Json<sitrep_wire::policy::OrgPolicy>, ApiErr> {
    let st2 = st.clone();
    Ok(Json(
        blocking(move || crate::db::show_policy(&st2.config.data_dir, &st2.org).map_err(store))
            .await?,
    ))
}

fn deactivated() -> ApiErr {
    ApiErr::conflict(
        "user_deactivated",
        "the identity system (SCIM) has deactivated this user: reactivate them there first",
    )
}

/// # POST /v1/admin/policy
/// The whole policy; the server validates it, gives it the next serial and
/// signs it.
#[utoipa::path(
    post,
    path = "/v1/admin/policy",
    tag = "admin",
    request_body(content = serde_json::Value),
    responses((status = 200, description = "signed and in force", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn set_policy(
    State(st): St,
    a: AdminAuth,
    JsonBody(p): JsonBody<sitrep_wire::policy::OrgPolicy>,
) -> Result<Json<sitrep_wire::policy::OrgPolicy>, ApiErr> {
    p.validate()
        .map_err(|e| ApiErr::bad_request("bad_policy", &e.to_string()))?;
    let st2 = st.clone();
    Ok(Json(
        blocking(move || {
            crate::db::set_policy(&st2.config.data_dir, &st2.org, p, &a.actor).map_err(store)
        })
        .await?,
    ))
}

/// # GET /v1/admin/audit
#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    tag = "admin",
    responses((status = 200, description = "every entry, oldest first", body = Vec<crate::audit::AuditEntry>), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn audit(
    State(st): St,
    _a: AdminAuth,
) -> Result<Json<Vec<crate::audit::AuditEntry>>, ApiErr> {
    let dir = st.config.data_dir.clone();
    Ok(Json(
        blocking(move || crate::db::audit_entries(&dir).map_err(store)).await?,
    ))
}

/// # GET /v1/admin/admins
#[utoipa::path(
    get,
    path = "/v1/admin/admins",
    tag = "admin",
    responses((status = 200, description = "grants", body = Vec<AdminRow>), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn admins(State(st): St, _a: AdminAuth) -> Result<Json<Vec<AdminRow>>, ApiErr> {
    let dir = st.config.data_dir.clone();
    Ok(Json(blocking(move || list(&dir).map_err(store)).await?))
}

/// # POST /v1/admin/admins/{user}
#[utoipa::path(
    post,
    path = "/v1/admin/admins/{user}",
    tag = "admin",
    params(("user" = String, Path, description = "user id")),
    responses((status = 200, description = "granted; the TOTP URI shown once", body = Granted), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn grant_route(
    State(st): St,
    a: AdminAuth,
    UrlPath(user): UrlPath<String>,
) -> Result<Json<Granted>, ApiErr> {
    user_id(&user)?;
    let dir = st.config.data_dir.clone();
    blocking(move || grant(&dir, &a.actor, &user).map_err(store))
        .await?
        .map(Json)
        .ok_or_else(|| ApiErr::not_found("no_user", "no such user is enrolled or invited"))
}

/// # POST /v1/admin/admins/{user}/revoke
#[utoipa::path(
    post,
    path = "/v1/admin/admins/{user}/revoke",
    tag = "admin",
    params(("user" = String, Path, description = "user id")),
    responses((status = 200, description = "revoked", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security(("admin" = [])),
)]
async fn ungrant_route(
    State(st): St,
    a: AdminAuth,
    UrlPath(user): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    user_id(&user)?;
    let dir = st.config.data_dir.clone();
    if !blocking(move || ungrant(&dir, &a.actor, &user).map_err(store)).await? {
        return Err(ApiErr::not_found(
            "no_admin",
            "that user has no admin grant",
        ));
    }
    Ok(Json(serde_json::json!({ "revoked": true })))
}
