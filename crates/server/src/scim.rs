//! SCIM 2.0 (RFC 7643, RFC 7644) `/scim/v2/Users`: the trust's identity
//! system (Entra ID, Okta) provisions staff and deprovisions leavers.
//!
//! - Behind its own bearer token (`sitrep admin scim-token`, stored as its
//!   SHA-256), never a device's token.
//! - `userName` is the Sitrep user id (letters, digits, `.`, `_`, `-`): map
//!   the identity system's `mailNickname` or employee number to it. `title`
//!   is the role invitations carry; `displayName` (or `name.formatted`, or
//!   given and family names) the name.
//! - Creating a user enrols nothing: a code still goes to the person from an
//!   admin (`sitrep admin invite`, or a bulk CSV), so no secret ever travels
//!   through the identity system. A deactivated user gets no new code.
//! - Deactivating (`active: false` by PATCH or PUT, or DELETE) is `sitrep
//!   admin user disable`: every device revoked and removed from its
//!   conversations, open codes cancelled, admin rights dropped.
//! - Every change is in the signed audit log as `scim`. A deleted user is
//!   kept as a tombstone (deactivated, invisible to SCIM) until SCIM creates
//!   them again.
//! - Attributes Sitrep does not keep (emails, phone numbers, addresses) are
//!   accepted and ignored, as identity systems send them whatever the
//!   mapping.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rusqlite::{OptionalExtension as _, params};
use serde::Deserialize;
use serde_json::{Value, json};
use sitrep_wire::api::valid_id;

use crate::db::{admin_tx, connect};
use crate::{AppState, now_secs};

type St = State<Arc<AppState>>;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const ACTOR: &str = "scim";
/// Most resources in one list page.
const MAX_PAGE: u64 = 200;
/// Most operations in one PATCH.
const MAX_OPS: usize = 100;
/// Longest name or title kept (as invitations).
const MAX_TEXT: usize = 64;
/// Longest `externalId` kept.
const MAX_EXTERNAL_ID: usize = 256;

/// These routes in the OpenAPI description.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, read, replace, patch, delete, provider_config))]
pub(crate) struct Doc;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/scim/v2/Users", get(list).post(create))
        .route(
            "/scim/v2/Users/{id}",
            get(read).put(replace).patch(patch).delete(delete),
        )
        .route("/scim/v2/ServiceProviderConfig", get(provider_config))
}

/// A SCIM error response (RFC 7644 §3.12).
#[derive(Debug)]
pub(crate) struct ScimErr {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimErr {
    fn new(status: StatusCode, scim_type: Option<&'static str>, detail: &str) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.to_string(),
        }
    }
    fn invalid(detail: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some("invalidValue"), detail)
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, None, "no such user")
    }
    fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error")
    }
}

impl IntoResponse for ScimErr {
    fn into_response(self) -> Response {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = json!(t);
        }
        scim_json(self.status, &body)
    }
}

fn scim_json(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/scim+json"),
    );
    resp
}

fn store(e: impl std::fmt::Display) -> ScimErr {
    tracing::error!(error = %e, "SCIM request failed in the store");
    ScimErr::internal()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ScimErr> + Send + 'static,
) -> Result<T, ScimErr> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ScimErr::internal())?
}

/// The SCIM client: the bearer token `sitrep admin scim-token` made.
pub(crate) struct ScimAuth;

impl FromRequestParts<Arc<AppState>> for ScimAuth {
    type Rejection = ScimErr;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorised = || {
            ScimErr::new(
                StatusCode::UNAUTHORIZED,
                None,
                "a valid SCIM bearer token is required",
            )
        };
        // A bucket per client address, before the store is read: one
        // address flooding bad tokens cannot shut the identity system out.
        let addr = crate::http::client_addr_of(
            &parts.headers,
            &parts.extensions,
            &st.config.trusted_proxies,
        );
        if !st
            .addr_limiter
            .allow_with(&crate::http::AddrKey::Scim(addr), 50.0, 200.0)
        {
            return Err(ScimErr::new(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                "too many requests: retry later",
            ));
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .ok_or_else(unauthorised)?;
        let hash = crate::org::token_hash(token);
        let dir = st.config.data_dir.clone();
        let want: Option<Vec<u8>> = blocking(move || {
            let conn = connect(&dir).map_err(store)?;
            conn.query_row("SELECT token_hash FROM scim_token WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(store)
        })
        .await?;
        match want {
            Some(w) if w == hash => Ok(ScimAuth),
            _ => Err(unauthorised()),
        }
    }
}

/// Make a new SCIM token (the old one stops working), audited as `actor`.
pub fn new_token(dir: &std::path::Path, actor: &str) -> Result<String, rusqlite::Error> {
    let token = hex::encode(crate::random::<32>());
    let now = now_secs();
    admin_tx(dir, |tx, key| {
        tx.execute(
            "INSERT INTO scim_token (id, token_hash, created_at) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET token_hash = excluded.token_hash, created_at = excluded.created_at",
            params![crate::org::token_hash(&token), now as i64],
        )?;
        crate::audit::append_in(tx, key, actor, "scim.token", "new SCIM token", now)?;
        Ok(())
    })?;
    Ok(token)
}

/// Whether the identity system has deactivated `user` (the store in `dir`).
pub(crate) fn deactivated(dir: &std::path::Path, user: &str) -> Result<bool, rusqlite::Error> {
    let mut conn = connect(dir)?;
    let tx = conn.transaction()?;
    deactivated_in(&tx, user)
}

/// Whether the identity system has deactivated `user`.
pub(crate) fn deactivated_in(
    tx: &rusqlite::Transaction<'_>,
    user: &str,
) -> Result<bool, rusqlite::Error> {
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM scim_users WHERE user_name = ?1 AND active = 0",
        [user],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// A user as stored.
#[derive(Debug, Clone)]
struct User {
    id: String,
    user_name: String,
    external_id: Option<String>,
    display_name: String,
    title: String,
    active: bool,
    created_at: u64,
    modified_at: u64,
}

impl User {
    fn resource(&self) -> Value {
        let mut v = json!({
            "schemas": [USER_SCHEMA],
            "id": self.id,
            "userName": self.user_name,
            "displayName": self.display_name,
            "name": { "formatted": self.display_name },
            "title": self.title,
            "active": self.active,
            "meta": {
                "resourceType": "User",
                "created": sitrep_wire::time::rfc3339(self.created_at),
                "lastModified": sitrep_wire::time::rfc3339(self.modified_at),
                "location": format!("/scim/v2/Users/{}", self.id),
                "version": format!("W/\"{}\"", self.modified_at),
            },
        });
        if let Some(e) = &self.external_id {
            v["externalId"] = json!(e);
        }
        v
    }
}

const COLUMNS: &str =
    "id, user_name, external_id, display_name, title, active, created_at, modified_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        user_name: r.get(1)?,
        external_id: r.get(2)?,
        display_name: r.get(3)?,
        title: r.get(4)?,
        active: r.get::<_, i64>(5)? != 0,
        created_at: r.get::<_, i64>(6)? as u64,
        modified_at: r.get::<_, i64>(7)? as u64,
    })
}

fn by_id(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<User>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM scim_users WHERE id = ?1 AND deleted = 0"),
        [id],
        row,
    )
    .optional()
}

/// The attributes a request sets (PUT and POST: all; PATCH: some).
#[derive(Debug, Default)]
struct Changes {
    user_name: Option<String>,
    external_id: Option<Option<String>>,
    display_name: Option<String>,
    title: Option<String>,
    active: Option<bool>,
}

fn text(v: &Value, what: &str, max: usize) -> Result<String, ScimErr> {
    let s = v
        .as_str()
        .ok_or_else(|| ScimErr::invalid(&format!("{what} is a string")))?
        .trim();
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(ScimErr::invalid(&format!(
            "{what} is at most {max} bytes of text"
        )));
    }
    Ok(s.to_string())
}

/// `active` as a boolean, or as the strings some identity systems send.
fn boolean(v: &Value) -> Result<bool, ScimErr> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ScimErr::invalid("active is true or false")),
    }
}

/// The name from `displayName`, else `name.formatted`, else given and
/// family names.
fn name_of(o: &serde_json::Map<String, Value>) -> Result<Option<String>, ScimErr> {
    if let Some(v) = o.get("displayName").filter(|v| !v.is_null()) {
        return Ok(Some(text(v, "displayName", MAX_TEXT)?));
    }
    let Some(n) = o.get("name").and_then(Value::as_object) else {
        return Ok(None);
    };
    if let Some(v) = n.get("formatted").filter(|v| !v.is_null()) {
        return Ok(Some(text(v, "name.formatted", MAX_TEXT)?));
    }
    let part = |k: &str| -> Result<String, ScimErr> {
        n.get(k)
            .filter(|v| !v.is_null())
            .map_or(Ok(String::new()), |v| text(v, k, MAX_TEXT))
    };
    let joined = format!("{} {}", part("givenName")?, part("familyName")?)
        .trim()
        .to_string();
    if joined.len() > MAX_TEXT {
        return Err(ScimErr::invalid("the name is at most 64 bytes"));
    }
    Ok((!joined.is_empty()).then_some(joined))
}

/// Apply one attribute (by its top-level name, case-insensitive as SCIM
/// attribute names are); attributes Sitrep does not keep are ignored.
fn set(c: &mut Changes, attr: &str, v: &Value) -> Result<(), ScimErr> {
    let lower = attr.to_ascii_lowercase();
    // A path may name the core schema: `urn:...:core:2.0:User:active`.
    let name = lower
        .strip_prefix(&format!("{}:", USER_SCHEMA.to_ascii_lowercase()))
        .unwrap_or(&lower);
    match name {
        "username" => c.user_name = Some(text(v, "userName", sitrep_wire::api::MAX_ID_LEN)?),
        "externalid" => {
            c.external_id = Some(if v.is_null() {
                None
            } else {
                Some(text(v, "externalId", MAX_EXTERNAL_ID)?)
            });
        }
        "displayname" => c.display_name = Some(text(v, "displayName", MAX_TEXT)?),
        "name.formatted" => c.display_name = Some(text(v, "name.formatted", MAX_TEXT)?),
        "name" => {
            if let Some(o) = v.as_object() {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), Value::Object(o.clone()));
                if let Some(n) = name_of(&m)? {
                    c.display_name = Some(n);
                }
            }
        }
        "title" => {
            c.title = Some(if v.is_null() {
                String::new()
            } else {
                text(v, "title", MAX_TEXT)?
            })
        }
        "active" => c.active = Some(boolean(v)?),
        _ => {}
    }
    Ok(())
}

/// Every attribute of a whole resource (POST, PUT).
fn whole(body: &Value) -> Result<Changes, ScimErr> {
    let o = body
        .as_object()
        .ok_or_else(|| ScimErr::invalid("the body is a User resource"))?;
    let mut c = Changes::default();
    for (k, v) in o {
        if !matches!(k.to_ascii_lowercase().as_str(), "displayname" | "name") {
            set(&mut c, k, v)?;
        }
    }
    c.display_name = name_of(o)?;
    Ok(c)
}

fn user_name_ok(u: &str) -> Result<(), ScimErr> {
    if valid_id(u) {
        Ok(())
    } else {
        Err(ScimErr::invalid(
            "userName is the Sitrep user id: 1 to 64 letters, digits, '.', '_' or '-' \
             (map mailNickname or an employee number to it)",
        ))
    }
}

type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn parse_body(body: Body) -> Result<Value, ScimErr> {
    let body = body.map_err(|e| {
        ScimErr::new(
            e.status(),
            None,
            "the body could not be read (at most 64 KiB)",
        )
    })?;
    serde_json::from_slice(&body).map_err(|_| {
        ScimErr::new(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            "the body is not JSON",
        )
    })
}

/// Store the user's new attributes; deactivation disables the user.
/// Returns the user and whether devices were revoked (then the caller
/// sweeps them out of their conversations).
fn write(st: &AppState, existing: Option<User>, c: Changes) -> Result<(User, bool), ScimErr> {
    let now = now_secs();
    let dir = st.config.data_dir.clone();
    let is_new = existing.is_none();
    let result = admin_tx(&dir, |tx, key| {
        let (mut u, was_active) = match existing {
            Some(u) => {
                // Read again inside the transaction: another request may
                // have changed or deleted it since.
                let current = tx
                    .query_row(
                        &format!("SELECT {COLUMNS} FROM scim_users WHERE id = ?1 AND deleted = 0"),
                        [&u.id],
                        row,
                    )
                    .optional()?;
                match current {
                    Some(cur) => {
                        let a = cur.active;
                        (cur, a)
                    }
                    None => return Ok(Err(ScimErr::not_found())),
                }
            }
            None => {
                let user_name = c.user_name.clone().unwrap_or_default();
                let taken: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM scim_users WHERE user_name = ?1 AND deleted = 0",
                    [&user_name],
                    |r| r.get(0),
                )?;
                // Provisioned again after a delete: the tombstone goes.
                tx.execute(
                    "DELETE FROM scim_users WHERE user_name = ?1 AND deleted = 1",
                    [&user_name],
                )?;
                if taken > 0 {
                    return Ok(Err(ScimErr::new(
                        StatusCode::CONFLICT,
                        Some("uniqueness"),
                        "a user with this userName exists",
                    )));
                }
                (
                    User {
                        id: hex::encode(crate::random::<16>()),
                        display_name: user_name.clone(),
                        user_name,
                        external_id: None,
                        title: String::new(),
                        active: true,
                        created_at: now,
                        modified_at: now,
                    },
                    true,
                )
            }
        };
        if let Some(n) = &c.user_name
            && *n != u.user_name
        {
            return Ok(Err(ScimErr::new(
                StatusCode::BAD_REQUEST,
                Some("mutability"),
                "userName is the Sitrep user id and cannot change",
            )));
        }
        if let Some(e) = c.external_id {
            u.external_id = e;
        }
        if let Some(n) = c.display_name.filter(|n| !n.is_empty()) {
            u.display_name = n;
        }
        if let Some(t) = c.title {
            u.title = t;
        }
        if let Some(a) = c.active {
            u.active = a;
        }
        u.modified_at = now;
        tx.execute(
            "INSERT INTO scim_users (id, user_name, external_id, display_name, title, active, created_at, modified_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(id) DO UPDATE SET external_id = excluded.external_id,
                display_name = excluded.display_name, title = excluded.title,
                active = excluded.active, modified_at = excluded.modified_at",
            params![
                u.id,
                u.user_name,
                u.external_id,
                u.display_name,
                u.title,
                i64::from(u.active),
                u.created_at as i64,
                u.modified_at as i64
            ],
        )?;
        let action = match (is_new, was_active, u.active) {
            (true, _, _) => "scim.create",
            (false, true, false) => "scim.deactivate",
            (false, false, true) => "scim.reactivate",
            _ => "scim.update",
        };
        crate::audit::append_in(
            tx,
            key,
            ACTOR,
            action,
            &format!("user={}", u.user_name),
            now,
        )?;
        let mut revoked = false;
        if !u.active && was_active {
            revoked = crate::db::disable_user_in(tx, key, &u.user_name, ACTOR)?
                .is_some_and(|d| d.devices_revoked > 0);
        }
        Ok(Ok((u, revoked)))
    });
    result.map_err(store)?
}

/// [`write`], then the sweep that takes a deactivated user's devices out of
/// their conversations.
async fn save(st: &Arc<AppState>, existing: Option<User>, c: Changes) -> Result<User, ScimErr> {
    let st2 = st.clone();
    let (u, revoked) = blocking(move || write(&st2, existing, c)).await?;
    if revoked {
        sweep(st).await;
    }
    Ok(u)
}

/// Remove revoked devices from their conversations now.
async fn sweep(st: &Arc<AppState>) {
    let st = st.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let _ = st.db.sweep_revocations(now_secs(), |p| st.hub.publish(p));
    })
    .await;
}

/// # POST /scim/v2/Users
#[utoipa::path(
    post,
    path = "/scim/v2/Users",
    tag = "scim",
    request_body(content = serde_json::Value, content_type = "application/scim+json"),
    responses((status = 201, description = "created", content_type = "application/scim+json", body = serde_json::Value), (status = "4XX", description = "refused (RFC 7644 error)", content_type = "application/scim+json", body = serde_json::Value)),
    security(("scim" = [])),
)]
async fn create(State(st): St, _a: ScimAuth, body: Body) -> Result<Response, ScimErr> {
    let c = whole(&parse_body(body)?)?;
    let user_name = c
        .user_name
        .clone()
        .ok_or_else(|| ScimErr::invalid("userName is required"))?;
    user_name_ok(&user_name)?;
    let u = save(&st, None, c).await?;
    let mut resp = scim_json(StatusCode::CREATED, &u.resource());
    if let Ok(loc) = HeaderValue::from_str(&format!("/scim/v2/Users/{}", u.id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

fn valid_resource_id(id: &str) -> Result<(), ScimErr> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ScimErr::not_found())
    }
}

async fn load(st: &Arc<AppState>, id: String) -> Result<User, ScimErr> {
    valid_resource_id(&id)?;
    let dir = st.config.data_dir.clone();
    blocking(move || {
        let conn = connect(&dir).map_err(store)?;
        by_id(&conn, &id)
            .map_err(store)?
            .ok_or_else(ScimErr::not_found)
    })
    .await
}

/// # GET /scim/v2/Users/{id}
#[utoipa::path(
    get,
    path = "/scim/v2/Users/{id}",
    tag = "scim",
    params(("id" = String, Path, description = "SCIM resource id")),
    responses((status = 200, description = "the user", content_type = "application/scim+json", body = serde_json::Value), (status = "4XX", description = "refused (RFC 7644 error)", content_type = "application/scim+json", body = serde_json::Value)),
    security(("scim" = [])),
)]
async fn read(
    State(st): St,
    _a: ScimAuth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ScimErr> {
    let u = load(&st, id).await?;
    Ok(scim_json(StatusCode::OK, &u.resource()))
}

/// # PUT /scim/v2/Users/{id}
#[utoipa::path(
    put,
    path = "/scim/v2/Users/{id}",
    tag = "scim",
    params(("id" = String, Path, description = "SCIM resource id")),
    request_body(content = serde_json::Value, content_type = "application/scim+json"),
    responses((status = 200, description = "replaced", content_type = "application/scim+json", body = serde_json::Value), (status = "4XX", description = "refused (RFC 7644 error)", content_type = "application/scim+json", body = serde_json::Value)),
    security(("scim" = [])),
)]
async fn replace(
    State(st): St,
    _a: ScimAuth,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Result<Response, ScimErr> {
    let mut c = whole(&parse_body(body)?)?;
    let u = load(&st, id).await?;
    // A whole resource: what it leaves out is cleared (active stays as is
    // unless given, as RFC 7643 makes it default to true only on create).
    c.external_id.get_or_insert(None);
    c.title.get_or_insert_with(String::new);
    let u = save(&st, Some(u), c).await?;
    Ok(scim_json(StatusCode::OK, &u.resource()))
}

#[derive(Deserialize)]
struct PatchOp {
    schemas: Option<Vec<String>>,
    #[serde(rename = "Operations")]
    operations: Vec<Value>,
}

/// The changes of a PATCH (RFC 7644 §3.5.2): `add` and `replace` with a path
/// or with an object of attributes; `remove` clears `title` or
/// `externalId`.
fn patch_changes(body: &Value) -> Result<Changes, ScimErr> {
    let p: PatchOp = serde_json::from_value(body.clone()).map_err(|_| {
        ScimErr::new(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            "a PatchOp body is required",
        )
    })?;
    if let Some(s) = &p.schemas
        && !s.iter().any(|s| s == PATCH_SCHEMA)
    {
        return Err(ScimErr::new(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            "schemas must name PatchOp",
        ));
    }
    if p.operations.is_empty() || p.operations.len() > MAX_OPS {
        return Err(ScimErr::invalid("1 to 100 operations"));
    }
    let mut c = Changes::default();
    for op in &p.operations {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| ScimErr::invalid("each operation has an op"))?;
        let path = op.get("path").and_then(Value::as_str);
        let value = op.get("value").unwrap_or(&Value::Null);
        match (kind.as_str(), path) {
            ("add" | "replace", Some(path)) => set(&mut c, path, value)?,
            ("add" | "replace", None) => {
                let o = value.as_object().ok_or_else(|| {
                    ScimErr::invalid("an operation without a path takes an object")
                })?;
                for (k, v) in o {
                    set(&mut c, k, v)?;
                }
            }
            ("remove", Some(path)) => match path
                .to_ascii_lowercase()
                .trim_start_matches("urn:ietf:params:scim:schemas:core:2.0:user:")
            {
                "title" | "externalid" => set(&mut c, path, &Value::Null)?,
                "active" | "username" | "displayname" => {
                    return Err(ScimErr::new(
                        StatusCode::BAD_REQUEST,
                        Some("mutability"),
                        "this attribute cannot be removed",
                    ));
                }
                _ => {}
            },
            ("remove", None) => {
                return Err(ScimErr::new(
                    StatusCode::BAD_REQUEST,
                    Some("noTarget"),
                    "remove needs a path",
                ));
            }
            _ => return Err(ScimErr::invalid("op is add, replace or remove")),
        }
    }
    Ok(c)
}

/// # PATCH /scim/v2/Users/{id}
#[utoipa::path(
    patch,
    path = "/scim/v2/Users/{id}",
    tag = "scim",
    params(("id" = String, Path, description = "SCIM resource id")),
    request_body(content = serde_json::Value, content_type = "application/scim+json"),
    responses((status = 200, description = "patched", content_type = "application/scim+json", body = serde_json::Value), (status = "4XX", description = "refused (RFC 7644 error)", content_type = "application/scim+json", body = serde_json::Value)),
    security(("scim" = [])),
)]
async fn patch(
    State(st): St,
    _a: ScimAuth,
    UrlPath(id): UrlPath<String>,
    body: Body,
) -> Result<Response, ScimErr> {
    let c = patch_changes(&parse_body(body)?)?;
    let u = load(&st, id).await?;
    let u = save(&st, Some(u), c).await?;
    Ok(scim_json(StatusCode::OK, &u.resource()))
}

/// # DELETE /scim/v2/Users/{id}
/// The user is disabled, then forgotten by SCIM (the audit log keeps both).
#[utoipa::path(
    delete,
    path = "/scim/v2/Users/{id}",
    tag = "scim",
    params(("id" = String, Path, description = "SCIM resource id")),
    responses((status = 204, description = "disabled and deleted"), (status = "4XX", description = "refused (RFC 7644 error)", content_type = "application/scim+json", body = serde_json::Value)),
    security(("scim" = [])),
)]
async fn delete(
    State(st): St,
    _a: ScimAuth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ScimErr> {
    valid_resource_id(&id)?;
    let dir = st.config.data_dir.clone();
    let revoked = blocking(move || {
        admin_tx(&dir, |tx, key| {
            let Some(user): Option<String> = tx
                .query_row(
                    "SELECT user_name FROM scim_users WHERE id = ?1 AND deleted = 0",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let d = crate::db::disable_user_in(tx, key, &user, ACTOR)?;
            // Kept as a tombstone: gone from SCIM, still deactivated, so
            // no code is issued for a deleted user until SCIM creates them again.
            tx.execute(
                "UPDATE scim_users SET deleted = 1, active = 0, modified_at = ?2 WHERE id = ?1",
                params![id, now_secs() as i64],
            )?;
            crate::audit::append_in(
                tx,
                key,
                ACTOR,
                "scim.delete",
                &format!("user={user}"),
                now_secs(),
            )?;
            Ok(Some(d.is_some_and(|d| d.devices_revoked > 0)))
        })
        .map_err(store)?
        .ok_or_else(ScimErr::not_found)
    })
    .await?;
    if revoked {
        sweep(&st).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    filter: Option<String>,
    #[serde(rename = "startIndex")]
    start_index: Option<String>,
    count: Option<String>,
}

/// `attr eq "value"` for `userName`, `externalId` or `id`: the filters
/// identity systems send to find a user before creating one.
fn parse_filter(f: &str) -> Result<(&'static str, String), ScimErr> {
    let bad = || {
        ScimErr::new(
            StatusCode::BAD_REQUEST,
            Some("invalidFilter"),
            "supported filters: userName, externalId or id eq \"value\"",
        )
    };
    let f = f.trim();
    let (attr, rest) = f.split_once(char::is_whitespace).ok_or_else(bad)?;
    let (op, value) = rest
        .trim_start()
        .split_once(char::is_whitespace)
        .ok_or_else(bad)?;
    if !op.eq_ignore_ascii_case("eq") {
        return Err(bad());
    }
    let value: String = serde_json::from_str::<String>(value.trim()).map_err(|_| bad())?;
    let column = match attr.to_ascii_lowercase().as_str() {
        "username" => "user_name",
        "externalid" => "external_id",
        "id" => "id",
        _ => return Err(bad()),
    };
    Ok((column, value))
}

/// # GET /scim/v2/Users?filter=...&startIndex=&count=
#[utoipa::path(
    get,
    path = "/scim/v2/Users",
    tag = "scim",
    params(("filter" = Option<String>, Query, description = "userName, externalId or id eq \"value\""), ("startIndex" = Option<u64>, Query, description = "from 1"), ("count" = Option<u64>, Query, description = "at most 200")),
    responses((status = 200, description = "a ListResponse", content_type = "application/scim+json", body = serde_json::Value), (status = "4XX", description = "refused (RFC 7644 error)", content_type = "application/scim+json", body = serde_json::Value)),
    security(("scim" = [])),
)]
async fn list(
    State(st): St,
    _a: ScimAuth,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ScimErr> {
    let Query(q) = q.map_err(|_| ScimErr::invalid("bad query"))?;
    let num = |v: &Option<String>, default: u64| -> Result<u64, ScimErr> {
        v.as_deref().map_or(Ok(default), |s| {
            s.parse::<u64>()
                .map_err(|_| ScimErr::invalid("startIndex and count are numbers"))
        })
    };
    let start = num(&q.start_index, 1)?.max(1);
    let count = num(&q.count, 100)?.min(MAX_PAGE);
    let filter = q.filter.as_deref().map(parse_filter).transpose()?;
    let dir = st.config.data_dir.clone();
    let (total, users) = blocking(move || {
        let conn = connect(&dir).map_err(store)?;
        let (cond, arg) = match &filter {
            Some((col, v)) => (format!("WHERE deleted = 0 AND {col} = ?1"), Some(v.clone())),
            None => ("WHERE deleted = 0 AND ?1 IS NULL".to_string(), None),
        };
        let total: i64 = conn
            .query_row(
                &format!("SELECT COUNT(*) FROM scim_users {cond}"),
                [&arg],
                |r| r.get(0),
            )
            .map_err(store)?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM scim_users {cond} ORDER BY created_at, id LIMIT ?2 OFFSET ?3"
            ))
            .map_err(store)?;
        let users = stmt
            .query_map(
                params![arg, count as i64, (start - 1).min(i64::MAX as u64) as i64],
                row,
            )
            .map_err(store)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(store)?;
        Ok((total as u64, users))
    })
    .await?;
    Ok(scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": users.len(),
            "Resources": users.iter().map(User::resource).collect::<Vec<_>>(),
        }),
    ))
}

/// # GET /scim/v2/ServiceProviderConfig
#[utoipa::path(
    get,
    path = "/scim/v2/ServiceProviderConfig",
    tag = "scim",
    responses((status = 200, description = "what is supported", content_type = "application/scim+json", body = serde_json::Value), (status = "4XX", description = "refused (RFC 7644 error)", content_type = "application/scim+json", body = serde_json::Value)),
    security(("scim" = [])),
)]
async fn provider_config(_a: ScimAuth) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": { "supported": true },
            "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
            "filter": { "supported": true, "maxResults": MAX_PAGE },
            "changePassword": { "supported": false },
            "sort": { "supported": false },
            "etag": { "supported": false },
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "The token from sitrep admin scim-token",
                "primary": true,
            }],
        }),
    )
}
