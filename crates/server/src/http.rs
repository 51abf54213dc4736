//! HTTP routes. Every body is size-bounded and validated before it reaches the
//! store; every error is JSON with a 4xx code (see docs/protocol.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sitrep_wire::api::{self, valid_client_id, valid_id};
use sitrep_wire::credential::{DeviceCredential, SignedCredential};

use crate::db::DeviceRow;
use crate::error::ApiErr;
use crate::{AppState, now_secs};

type St = State<Arc<AppState>>;

/// Most one-time KeyPackages a device may keep on the server.
const MAX_KEY_PACKAGES: u64 = 500;
/// Most users in one claim.
const MAX_CLAIM: usize = 1_000;
/// Most devices one commit may add or remove.
const MAX_COMMIT_DEVICES: usize = 10_000;
/// Most inbox entries per page.
const MAX_PAGE: u64 = 1_000;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body;
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/enrol", post(enrol))
        .route("/v1/policy", get(policy))
        .route("/v1/keypackages", post(upload_key_packages))
        .route("/v1/keypackages/count", get(count_key_packages))
        .route("/v1/keypackages/claim", post(claim_key_packages))
        .route("/v1/groups", post(create_group))
        .route("/v1/groups/{group}/commit", post(commit))
        .route("/v1/groups/{group}/messages", post(send))
        .route("/v1/groups/{group}/leave", post(leave))
        .route("/v1/groups/{group}/read", post(mark_read))
        .route("/v1/groups/{group}/status", get(message_status))
        .route("/v1/inbox", get(inbox))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{device}/wipe", post(wipe_device))
        .route("/v1/inbox/ack", post(ack))
        .route("/v1/audit", post(audit))
        .route("/v1/directory", get(directory))
        .route("/v1/roles/{role}/take", post(take_role))
        .route("/v1/roles/{role}/handback", post(handback_role))
        .route("/v1/ws", get(crate::ws::upgrade))
        .fallback(|| async { ApiErr::not_found("no_route", "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A JSON body whose every rejection is an [`ApiErr`].
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiErr::body_too_large()
            } else {
                ApiErr::bad_request("bad_body", "the request body could not be read")
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiErr::bad_request("bad_json", &format!("invalid JSON body: {e}")))
    }
}

/// The device behind the bearer token, rate limited.
pub(crate) struct Auth(pub DeviceRow);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiErr;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiErr::unauthorised)?;
        if token.len() > 128 {
            return Err(ApiErr::unauthorised());
        }
        let hash = crate::org::token_hash(token);
        let st = state.clone();
        let dev = tokio::task::spawn_blocking(move || st.db.authenticate(&hash))
            .await
            .map_err(|_| ApiErr::internal())??
            .ok_or_else(ApiErr::unauthorised)?;
        if dev.revoked {
            return Err(ApiErr::device_wiped());
        }
        if !state.limiter.allow(&dev.device_id) {
            return Err(ApiErr::rate_limited());
        }
        Ok(Auth(dev))
    }
}

/// Token buckets keyed by device id (and one for unauthenticated enrolment).
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn allow(&self, key: &str) -> bool {
        self.allow_with(key, self.rate, self.burst)
    }

    pub(crate) fn allow_with(&self, key: &str, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = b.entry(key.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiErr> + Send + 'static,
) -> Result<T, ApiErr> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiErr::internal())?
}

fn group_id(hex_id: &str) -> Result<Vec<u8>, ApiErr> {
    match hex::decode(hex_id) {
        Ok(g) if (1..=64).contains(&g.len()) => Ok(g),
        _ => Err(ApiErr::bad_request(
            "bad_group",
            "group ids are 1 to 64 bytes in hex",
        )),
    }
}

/// # GET /healthz
async fn health(State(st): St) -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
        org_fingerprint: st.org.fingerprint(),
    })
}

/// # GET /v1/devices
/// The caller's user's devices.
async fn devices(State(st): St, Auth(dev): Auth) -> Result<Json<Vec<api::DeviceInfo>>, ApiErr> {
    let me = dev.device_id.clone();
    let list = blocking(move || st.db.devices_of(&dev.user_id)).await?;
    Ok(Json(
        list.into_iter()
            .map(|(device_id, enrolled_at, revoked_at)| api::DeviceInfo {
                this_device: device_id == me,
                device_id,
                enrolled_at,
                revoked_at,
            })
            .collect(),
    ))
}

/// # POST /v1/devices/{device}/wipe
/// Revoke one of the caller's own user's devices (lost, stolen, redeployed).
async fn wipe_device(
    State(st): St,
    Auth(dev): Auth,
    Path(device): Path<String>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    if !valid_id(&device) {
        return Err(ApiErr::bad_request("bad_device", "invalid device id"));
    }
    let st2 = st.clone();
    let d = device.clone();
    let (actor, detail) = (
        format!("{}/{}", dev.user_id, dev.device_id),
        format!("device={device}"),
    );
    blocking(move || st2.db.revoke_own(&dev.user_id, &d, now_secs())).await?;
    let st3 = st.clone();
    blocking(move || {
        st3.db
            .sweep_revocations(now_secs(), |p| st3.hub.publish(p))
            .map(|_| ())
    })
    .await?;
    let st4 = st.clone();
    blocking(move || {
        st4.db
            .audit(&st4.org.key, &actor, "device.wipe", &detail, now_secs())
            .map(|_| ())
    })
    .await?;
    tracing::info!(device = %device, "device revoked by its user");
    Ok(Json(serde_json::json!({ "revoked": device })))
}

/// # GET /v1/directory
/// The organisation's signed directory (roles, holders, call-out lists), for
/// enrolled devices; they verify the organisation's signature.
async fn directory(State(st): St, Auth(_dev): Auth) -> Result<Json<serde_json::Value>, ApiErr> {
    let signed = blocking(move || st.db.directory()).await?;
    Ok(Json(
        serde_json::json!({ "directory": signed.map(|b| sitrep_wire::b64::encode(&b)) }),
    ))
}

async fn role_change(
    st: Arc<AppState>,
    dev: crate::db::DeviceRow,
    role: String,
    take: bool,
) -> Result<Json<serde_json::Value>, ApiErr> {
    if !valid_id(&role) {
        return Err(ApiErr::bad_request("bad_role", "invalid role id"));
    }
    let d = blocking(move || {
        st.db
            .role_holder(&st.org.key, &dev.user_id, &dev.device_id, &role, take)
    })
    .await?;
    Ok(Json(serde_json::json!({ "serial": d.serial })))
}

/// # POST /v1/roles/{role}/take
/// The caller takes on a role (e.g. the night medical registrar).
async fn take_role(
    State(st): St,
    Auth(dev): Auth,
    Path(role): Path<String>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    role_change(st, dev, role, true).await
}

/// # POST /v1/roles/{role}/handback
/// The caller hands a role back.
async fn handback_role(
    State(st): St,
    Auth(dev): Auth,
    Path(role): Path<String>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    role_change(st, dev, role, false).await
}

/// # POST /v1/audit
/// A device reports a records or disclosure action; the entry is written
/// before the device goes ahead (it refuses to search or export otherwise).
async fn audit(
    State(st): St,
    Auth(dev): Auth,
    JsonBody(req): JsonBody<sitrep_wire::api::AuditRequest>,
) -> Result<Json<sitrep_wire::api::AuditResponse>, ApiErr> {
    if !req.is_valid() {
        return Err(ApiErr::bad_request(
            "bad_audit",
            "unknown action or detail too long",
        ));
    }
    let actor = format!("{}/{}", dev.user_id, dev.device_id);
    let (seq, hash) = blocking(move || {
        st.db
            .audit(&st.org.key, &actor, &req.action, &req.detail, now_secs())
    })
    .await?;
    Ok(Json(sitrep_wire::api::AuditResponse {
        seq,
        hash: hex::encode(hash),
    }))
}

/// # GET /v1/policy
/// The organisation's signed device policy (public: devices verify the
/// signature; enrolling devices read it before choosing a passcode).
async fn policy(State(st): St) -> Result<Json<serde_json::Value>, ApiErr> {
    let signed = blocking(move || st.db.policy()).await?;
    Ok(Json(
        serde_json::json!({ "policy": signed.map(|b| sitrep_wire::b64::encode(&b)) }),
    ))
}

/// # POST /v1/enrol
/// Redeem an enrolment code: the device sends the signature key it made, the
/// organisation signs a credential binding it to the invited person.
async fn enrol(
    State(st): St,
    JsonBody(req): JsonBody<api::EnrolRequest>,
) -> Result<Json<api::EnrolResponse>, ApiErr> {
    let rate = st.config.enrol_per_sec;
    if !st.limiter.allow_with("\0enrol", rate, rate * 2.0) {
        return Err(ApiErr::rate_limited());
    }
    if req.signature_key.len() != 32 || req.code.len() > 64 {
        return Err(ApiErr::bad_request(
            "bad_enrolment",
            "expected an Ed25519 public key and a code",
        ));
    }
    let device_id = format!("d{}", hex::encode(crate::random::<6>()));
    let token = hex::encode(crate::random::<32>());
    let code_hash = crate::org::code_hash(&req.code);
    let token_hash = crate::org::token_hash(&token);
    let st2 = st.clone();
    let dev = device_id.clone();
    let sig = req.signature_key.clone();
    let (user_id, credential) = blocking(move || {
        let org = &st2.org;
        st2.db.enrol(
            &code_hash,
            now_secs(),
            &dev,
            &token_hash,
            &sig,
            |user, name, role| {
                let cred = DeviceCredential {
                    v: 1,
                    org: org.name.clone(),
                    user_id: user.to_string(),
                    device_id: dev.clone(),
                    display_name: name.to_string(),
                    role: role.to_string(),
                    signature_key: serde_bytes_buf(&sig),
                    issued_at: now_secs(),
                };
                SignedCredential::sign(&cred, &org.key).encode()
            },
        )
    })
    .await?;
    tracing::info!(device = %device_id, "device enrolled");
    Ok(Json(api::EnrolResponse {
        org_public_key: st.org.public_key().to_vec(),
        org_name: st.org.name.clone(),
        user_id,
        device_id,
        credential,
        token,
    }))
}

fn serde_bytes_buf(b: &[u8]) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(b.to_vec())
}

/// # POST /v1/keypackages
async fn upload_key_packages(
    State(st): St,
    Auth(dev): Auth,
    JsonBody(req): JsonBody<api::UploadKeyPackages>,
) -> Result<Json<api::KeyPackageCount>, ApiErr> {
    if req
        .key_packages
        .iter()
        .chain(req.last_resort.iter())
        .any(|k| k.is_empty() || k.len() > 64 * 1024)
    {
        return Err(ApiErr::bad_request(
            "bad_key_package",
            "KeyPackages are 1 byte to 64 KiB",
        ));
    }
    let st2 = st.clone();
    let d = dev.device_id.clone();
    let available = blocking(move || {
        st2.db.upload_key_packages(
            &d,
            &req.key_packages,
            req.last_resort.as_deref(),
            MAX_KEY_PACKAGES,
        )
    })
    .await?;
    let (_, last_resort) = blocking(move || st.db.count_key_packages(&dev.device_id)).await?;
    Ok(Json(api::KeyPackageCount {
        available,
        last_resort,
    }))
}

/// # GET /v1/keypackages/count
async fn count_key_packages(
    State(st): St,
    Auth(dev): Auth,
) -> Result<Json<api::KeyPackageCount>, ApiErr> {
    let (available, last_resort) =
        blocking(move || st.db.count_key_packages(&dev.device_id)).await?;
    Ok(Json(api::KeyPackageCount {
        available,
        last_resort,
    }))
}

/// # POST /v1/keypackages/claim
async fn claim_key_packages(
    State(st): St,
    Auth(_dev): Auth,
    JsonBody(req): JsonBody<api::ClaimRequest>,
) -> Result<Json<api::ClaimResponse>, ApiErr> {
    if req.user_ids.is_empty()
        || req.user_ids.len() > MAX_CLAIM
        || !req.user_ids.iter().all(|u| valid_id(u))
    {
        return Err(ApiErr::bad_request("bad_users", "1 to 1000 valid user ids"));
    }
    if req.device_ids.len() > MAX_CLAIM || !req.device_ids.iter().all(|d| valid_id(d)) {
        return Err(ApiErr::bad_request(
            "bad_devices",
            "up to 1000 valid device ids",
        ));
    }
    let (found, missing) =
        blocking(move || st.db.claim_key_packages(&req.user_ids, &req.device_ids)).await?;
    Ok(Json(api::ClaimResponse {
        key_packages: found
            .into_iter()
            .map(|(user_id, device_id, key_package)| api::ClaimedKeyPackage {
                user_id,
                device_id,
                key_package,
            })
            .collect(),
        missing,
    }))
}

/// # POST /v1/groups
async fn create_group(
    State(st): St,
    Auth(dev): Auth,
    JsonBody(req): JsonBody<api::CreateGroup>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    if req.group_id.is_empty() || req.group_id.len() > 64 {
        return Err(ApiErr::bad_request(
            "bad_group",
            "group ids are 1 to 64 bytes",
        ));
    }
    blocking(move || {
        st.db
            .create_group(&req.group_id, &dev.device_id, now_secs())
    })
    .await?;
    Ok(Json(serde_json::json!({ "epoch": 0 })))
}

/// # POST /v1/groups/{group}/commit
/// Accepted only while the group is at `epoch`; otherwise 409 with the current
/// epoch. The Welcome is released (to the joiners only) with the winning commit.
async fn commit(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<api::CommitRequest>,
) -> Result<Json<api::CommitResponse>, ApiErr> {
    let gid = group_id(&group)?;
    if !valid_client_id(&req.client_id) {
        return Err(ApiErr::bad_request(
            "bad_client_id",
            "client_id is 32 lowercase hex chars",
        ));
    }
    if req.commit.is_empty()
        || req.add_devices.len() + req.remove_devices.len() > MAX_COMMIT_DEVICES
        || !req
            .add_devices
            .iter()
            .chain(&req.remove_devices)
            .all(|d| valid_id(d))
    {
        return Err(ApiErr::bad_request(
            "bad_commit",
            "empty commit or invalid device lists",
        ));
    }
    let st2 = st.clone();
    let (epoch, duplicate) = blocking(move || {
        st2.db.commit(
            &dev.device_id,
            &gid,
            &req.client_id,
            req.epoch,
            req.commit,
            req.welcome,
            &req.add_devices,
            &req.remove_devices,
            now_secs(),
            |p| st2.hub.publish(p),
        )
    })
    .await?;
    Ok(Json(api::CommitResponse { epoch, duplicate }))
}

/// # POST /v1/groups/{group}/messages
/// Answers only after the message is durably stored for every other member.
async fn send(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<api::SendRequest>,
) -> Result<Json<api::SendResponse>, ApiErr> {
    let gid = group_id(&group)?;
    if !valid_client_id(&req.client_id) {
        return Err(ApiErr::bad_request(
            "bad_client_id",
            "client_id is 32 lowercase hex chars",
        ));
    }
    if req.payload.is_empty() || req.payload.len() > st.config.max_message {
        return Err(ApiErr::too_large(st.config.max_message));
    }
    let st2 = st.clone();
    let (recipients, duplicate, seq) = blocking(move || {
        st2.db.send(
            &dev.device_id,
            &gid,
            &req.client_id,
            req.payload,
            now_secs(),
            |p| st2.hub.publish(p),
        )
    })
    .await?;
    Ok(Json(api::SendResponse {
        recipients,
        duplicate,
        seq,
    }))
}

/// # POST /v1/groups/{group}/read
/// The device has shown the group's messages up to `seq`.
async fn mark_read(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<api::ReadRequest>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    let gid = group_id(&group)?;
    let seq = blocking(move || st.db.mark_read(&dev.device_id, &gid, req.seq, now_secs())).await?;
    Ok(Json(serde_json::json!({ "read": seq })))
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    seq: u64,
}

/// # GET /v1/groups/{group}/status?seq=N
/// Per device that was in the group when message N was sent: delivered, and
/// read (when). Members of the group only.
async fn message_status(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
    q: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::MessageStatus>, ApiErr> {
    let Query(q) = q.map_err(|_| ApiErr::bad_request("bad_query", "seq is a number"))?;
    let gid = group_id(&group)?;
    let rows = blocking(move || st.db.message_status(&dev.device_id, &gid, q.seq)).await?;
    Ok(Json(api::MessageStatus {
        seq: q.seq,
        devices: rows
            .into_iter()
            .map(|r| api::DeviceDelivery {
                user_id: r.user_id,
                device_id: r.device_id,
                delivered: r.delivered,
                read_at: r.read_at,
            })
            .collect(),
    }))
}

/// # POST /v1/groups/{group}/leave
/// The device leaves: delivery to it stops at once, and its Remove proposal goes
/// to the other members, the next of whom to sync commits it.
async fn leave(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<api::LeaveRequest>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    let gid = group_id(&group)?;
    if !valid_client_id(&req.client_id) {
        return Err(ApiErr::bad_request(
            "bad_client_id",
            "client_id is 32 lowercase hex chars",
        ));
    }
    if req.proposal.is_empty() || req.proposal.len() > st.config.max_message {
        return Err(ApiErr::too_large(st.config.max_message));
    }
    let st2 = st.clone();
    let duplicate = blocking(move || {
        st2.db.leave(
            &dev.device_id,
            &gid,
            &req.client_id,
            req.proposal,
            now_secs(),
            |p| st2.hub.publish(p),
        )
    })
    .await?;
    Ok(Json(
        serde_json::json!({ "left": true, "duplicate": duplicate }),
    ))
}

#[derive(Deserialize)]
struct InboxQuery {
    #[serde(default)]
    after: u64,
    limit: Option<u64>,
}

/// # GET /v1/inbox?after=SEQ&limit=N
async fn inbox(
    State(st): St,
    Auth(dev): Auth,
    q: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::InboxResponse>, ApiErr> {
    let Query(q) =
        q.map_err(|_| ApiErr::bad_request("bad_query", "after and limit are numbers"))?;
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let (entries, more) = blocking(move || st.db.fetch(&dev.device_id, q.after, limit)).await?;
    Ok(Json(api::InboxResponse {
        entries: entries
            .into_iter()
            .map(|e| api::InboxEntry {
                seq: e.seq,
                kind: e.kind,
                payload: e.payload.to_vec(),
            })
            .collect(),
        more,
    }))
}

/// # POST /v1/inbox/ack
async fn ack(
    State(st): St,
    Auth(dev): Auth,
    JsonBody(req): JsonBody<api::AckRequest>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    blocking(move || st.db.ack(&dev.device_id, req.up_to)).await?;
    Ok(Json(serde_json::json!({ "acknowledged": req.up_to })))
}
