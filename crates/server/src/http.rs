//! HTTP routes. Every body is size-bounded and validated before it reaches the
//! store; every error is JSON with a 4xx code (see docs/protocol.md).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Extension, Json, Router, middleware};
use futures_util::StreamExt as _;
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
/// One-time KeyPackages one claimer may take of one device: a burst, then one
/// per five minutes; beyond that the claimer gets the device's last-resort
/// KeyPackage. Nobody can drain a colleague's one-time KeyPackages faster
/// than her devices top them up, and no add is ever refused for it.
const CLAIM_BURST: f64 = 4.0;
const CLAIM_PER_SEC: f64 = 1.0 / 300.0;

/// Body limit of a route without one of its own: every small JSON request.
const SMALL_BODY: usize = 64 * 1024;
/// Body limit of `/v1/enrol`, read before anyone is known (a code and a key).
const ENROL_BODY: usize = 8 * 1024;
/// Body limit of a claim: up to 1000 user ids and 1000 device ids of 64 chars.
const CLAIM_BODY: usize = 2 * MAX_CLAIM * (64 + 4) + 1024;

/// This module's routes (and the WebSocket's and the scrape's) in the
/// OpenAPI description.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    health,
    ready,
    enrol,
    policy,
    upload_key_packages,
    count_key_packages,
    claim_key_packages,
    create_group,
    commit,
    send,
    leave,
    rejoin,
    mark_read,
    message_status,
    receipts,
    inbox,
    ack,
    devices,
    wipe_device,
    directory,
    take_role,
    handback_role,
    audit,
    push_key,
    push_subscribe,
    push_unsubscribe,
    crate::ws::upgrade,
    crate::metrics::scrape,
    openapi_json,
))]
pub(crate) struct Doc;

/// # GET /v1/openapi.json
/// This description.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
)]
async fn openapi_json() -> axum::response::Response {
    crate::openapi::serve().await
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let large = Extension(BodyLimit(state.config.max_body));
    // A payload in base64, plus the JSON around it.
    let message = Extension(BodyLimit(state.config.max_message.div_ceil(3) * 4 + 1024));
    // The routes without a token: per-address buckets, before any body is read.
    let public = Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route(
            "/v1/enrol",
            post(enrol)
                .layer(Extension(BodyLimit(ENROL_BODY)))
                .layer(middleware::from_fn_with_state(state.clone(), enrol_limit)),
        )
        .route("/v1/policy", get(policy))
        .route("/metrics", get(crate::metrics::scrape))
        .route("/v1/openapi.json", get(openapi_json))
        .route_layer(middleware::from_fn_with_state(state.clone(), public_limit));
    Router::new()
        .merge(public)
        .route("/v1/keypackages", post(upload_key_packages).layer(large))
        .route("/v1/keypackages/count", get(count_key_packages))
        .route(
            "/v1/keypackages/claim",
            post(claim_key_packages).layer(Extension(BodyLimit(CLAIM_BODY))),
        )
        .route("/v1/groups", post(create_group))
        .route("/v1/groups/{group}/commit", post(commit).layer(large))
        .route("/v1/groups/{group}/messages", post(send).layer(message))
        .route("/v1/groups/{group}/leave", post(leave).layer(message))
        .route("/v1/groups/{group}/rejoin", post(rejoin))
        .route("/v1/groups/{group}/read", post(mark_read))
        .route("/v1/groups/{group}/status", get(message_status))
        .route("/v1/groups/{group}/receipts", get(receipts))
        .route("/v1/inbox", get(inbox))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{device}/wipe", post(wipe_device))
        .route("/v1/inbox/ack", post(ack))
        .route("/v1/audit", post(audit))
        .route("/v1/push/key", get(push_key))
        .route("/v1/push/subscribe", post(push_subscribe))
        .route("/v1/push/unsubscribe", post(push_unsubscribe))
        .route("/v1/directory", get(directory))
        .route("/v1/roles/{role}/take", post(take_role))
        .route("/v1/roles/{role}/handback", post(handback_role))
        .route("/v1/ws", get(crate::ws::upgrade))
        .merge(crate::admin::routes())
        .merge(crate::scim::routes())
        .fallback(web_or_not_found)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        // For any extractor other than `JsonBody`.
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .with_state(state)
}

/// # GET /v1/push/key
/// The server's VAPID public key, for the browser's push subscription.
#[utoipa::path(
    get,
    path = "/v1/push/key",
    tag = "push",
    responses((status = 200, description = "the key", body = api::PushKey), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn push_key(State(st): St, Auth(_dev): Auth) -> Json<api::PushKey> {
    Json(api::PushKey {
        public_key: st.vapid.public_key().to_string(),
    })
}

/// # POST /v1/push/subscribe
/// Register this device's Web Push endpoint. Pushes are empty: they say
/// only that something arrived. Endpoints must be of a known push service.
#[utoipa::path(
    post,
    path = "/v1/push/subscribe",
    tag = "push",
    request_body = api::PushSubscription,
    responses((status = 200, description = "registered"), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn push_subscribe(
    State(st): St,
    Auth(dev): Auth,
    JsonBody(req): JsonBody<api::PushSubscription>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    crate::push::check_endpoint(&req.endpoint, &st.config.push_hosts)
        .map_err(|why| ApiErr::bad_request("bad_endpoint", why))?;
    let keys = match &req.keys {
        Some(k) => Some(
            crate::push::check_keys(&k.p256dh, &k.auth)
                .map_err(|e| ApiErr::bad_request("bad_keys", &e.to_string()))?,
        ),
        None => None,
    };
    blocking(move || {
        st.db
            .push_subscribe(&dev.device_id, &req.endpoint, keys, now_secs())
    })
    .await?;
    Ok(Json(serde_json::json!({ "subscribed": true })))
}

/// # POST /v1/push/unsubscribe
/// Forget one of this device's Web Push endpoints.
#[utoipa::path(
    post,
    path = "/v1/push/unsubscribe",
    tag = "push",
    request_body = api::PushSubscription,
    responses((status = 200, description = "forgotten (or never known)"), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn push_unsubscribe(
    State(st): St,
    Auth(dev): Auth,
    JsonBody(req): JsonBody<api::PushSubscription>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    if req.endpoint.len() > crate::push::MAX_ENDPOINT {
        return Err(ApiErr::bad_request(
            "bad_endpoint",
            "the endpoint is too long",
        ));
    }
    blocking(move || st.db.push_unsubscribe(&dev.device_id, &req.endpoint)).await?;
    Ok(Json(serde_json::json!({ "subscribed": false })))
}

/// A path no API route takes: the web app's (a GET outside `/v1/`,
/// `/scim/`), or the API's JSON 404.
async fn web_or_not_found(
    State(st): State<Arc<AppState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = uri.path();
    // The API's own prefixes (and a doubled slash, a client's base URL
    // ending in `/`) keep the JSON 404: only the app's paths get its shell.
    let api = ["/v1", "/scim", "/healthz", "/readyz", "/metrics"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        || path.contains("//");
    if !api && (method == axum::http::Method::GET || method == axum::http::Method::HEAD) {
        match &st.web {
            Some(b) => {
                if let Some(r) = b.serve(path, &headers) {
                    return r;
                }
            }
            None if path == "/" => return crate::web::not_built(),
            None => {}
        }
    }
    ApiErr::not_found("no_route", "no such endpoint").into_response()
}

/// Every refusal in JSON: axum's own rejections (a path that does not
/// decode, a query that does not parse, a method the route does not take, a
/// WebSocket request without its headers) come as plain text or empty, and
/// leave as the API's [`api::ApiError`] (under `/scim`, RFC 7644's error),
/// with the same status and `Allow`/`Retry-After`.
async fn json_errors(req: Request, next: middleware::Next) -> axum::response::Response {
    use axum::http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER};
    use axum::response::IntoResponse as _;
    let scim = req.uri().path().starts_with("/scim/");
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let ct = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/json") || ct.starts_with("application/scim+json") {
        return resp;
    }
    let code = match status.as_u16() {
        400 | 422 => "bad_request",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "body_too_large",
        415 => "unsupported_media_type",
        426 => "upgrade_required",
        s if s >= 500 => "internal",
        _ => "refused",
    };
    let message = status
        .canonical_reason()
        .unwrap_or("refused")
        .to_lowercase();
    let (body, ct) = if scim {
        (
            serde_json::json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                "status": status.as_u16().to_string(),
                "detail": message,
            }),
            "application/scim+json",
        )
    } else {
        (
            serde_json::json!({ "error": code, "message": message }),
            "application/json",
        )
    };
    let mut out = (status, body.to_string()).into_response();
    let h = out.headers_mut();
    h.insert(CONTENT_TYPE, axum::http::HeaderValue::from_static(ct));
    for name in [ALLOW, RETRY_AFTER] {
        if let Some(v) = resp.headers().get(&name) {
            h.insert(name, v.clone());
        }
    }
    out
}

/// This address's bucket for the routes without a token.
async fn public_limit(
    State(st): St,
    req: Request,
    next: middleware::Next,
) -> Result<axum::response::Response, ApiErr> {
    let c = &st.config;
    // Each enrolment reads the policy first: never below the enrolment share.
    let share = c.enrol_per_sec * c.enrol_addr_share;
    let (rate, burst) = (c.addr_per_sec.max(share), c.addr_burst.max(share * 2.0));
    let key = AddrKey::Public(client_addr(&req, &c.trusted_proxies));
    if !st.addr_limiter.allow_with(&key, rate, burst) {
        return Err(ApiErr::rate_limited());
    }
    Ok(next.run(req).await)
}

/// Enrolment: this address's share first, so what it sends beyond its share
/// never drains the server-wide bucket everyone else enrols through.
async fn enrol_limit(
    State(st): St,
    req: Request,
    next: middleware::Next,
) -> Result<axum::response::Response, ApiErr> {
    let rate = st.config.enrol_per_sec;
    let share = rate * st.config.enrol_addr_share;
    let key = AddrKey::Enrol(client_addr(&req, &st.config.trusted_proxies));
    if !st.addr_limiter.allow_with(&key, share, share * 2.0)
        || !st.limiter.allow_with("\0enrol", rate, rate * 2.0)
    {
        return Err(ApiErr::rate_limited());
    }
    Ok(next.run(req).await)
}

/// A per-address bucket: which routes, and which address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AddrKey {
    Public(IpAddr),
    Enrol(IpAddr),
    Scim(IpAddr),
}

/// The client's address: the connection's peer, or the last hop a trusted
/// proxy added to `X-Forwarded-For`. IPv6 addresses count per /64, the block
/// one subscriber usually holds.
fn client_addr(req: &Request, trusted_proxies: &[IpAddr]) -> IpAddr {
    client_addr_of(req.headers(), req.extensions(), trusted_proxies)
}

/// [`client_addr`] from a request's parts.
pub(crate) fn client_addr_of(
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
    trusted_proxies: &[IpAddr],
) -> IpAddr {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
            c.0.ip().to_canonical()
        });
    let ip = if trusted_proxies.iter().any(|p| p.to_canonical() == peer) {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .map_or(peer, |ip| ip.to_canonical())
    } else {
        peer
    };
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A route's body limit (`JsonBody`); without one, [`SMALL_BODY`].
#[derive(Clone, Copy)]
pub(crate) struct BodyLimit(pub usize);

/// A JSON body whose every rejection is an [`ApiErr`].
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, st: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(SMALL_BODY, |l| l.0);
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Refused on its declared length before a byte of it is read.
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiErr::body_too_large());
        }
        let read = async {
            let unreadable =
                || ApiErr::bad_request("bad_body", "the request body could not be read");
            let mut body = req.into_body().into_data_stream();
            let first = declared
                .map_or(0, |n| n as usize)
                .min(limit)
                .min(SMALL_BODY);
            let mut buf = Vec::with_capacity(first);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|_| unreadable())?;
                if buf.len() + chunk.len() > limit {
                    return Err(ApiErr::body_too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf)
        };
        let bytes = tokio::time::timeout(st.config.body_read_timeout, read)
            .await
            .map_err(|_| ApiErr::body_timeout())??;
        // serde's message may quote the submitted values: give the place only.
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiErr::bad_request(
                "bad_json",
                &format!(
                    "invalid JSON body, or not the expected fields (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })
    }
}

/// The device behind the bearer token, rate limited.
pub(crate) struct Auth(pub DeviceRow);

/// A browser cannot set headers on a WebSocket: on `/v1/ws` alone, the
/// token may come as the subprotocol `bearer.TOKEN` beside `sitrep` (the
/// one the server answers with, so the token is never echoed).
fn ws_protocol_token(parts: &Parts) -> Option<&str> {
    if parts.uri.path() != "/v1/ws" {
        return None;
    }
    parts
        .headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?
        .split(',')
        .find_map(|p| p.trim().strip_prefix("bearer."))
}

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
            .or_else(|| ws_protocol_token(parts))
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

/// Most buckets one limiter keeps; past it, new keys share one bucket until
/// pruning makes room (a flood of fresh keys cannot grow memory without end).
const MAX_BUCKETS: usize = 200_000;

/// Token buckets by key: device ids (and the server-wide enrolment bucket, and
/// claimer/target pairs), or client addresses. Buckets that have refilled are
/// pruned (`prune`, every few seconds): a new bucket starts full, so dropping
/// one changes nothing.
pub(crate) struct RateLimiter<K = String> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    by_key: HashMap<K, Bucket>,
    overflow: Option<Bucket>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// When it will have refilled, if nothing takes from it.
    full_at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
            full_at: now,
        }
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        let secs = if rate > 0.0 {
            ((burst - self.tokens).max(0.0) / rate).min(1e9)
        } else {
            1e9
        };
        self.full_at = now
            .checked_add(std::time::Duration::from_secs_f64(secs))
            .unwrap_or(now);
        ok
    }
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self::with_max_keys(rate, burst, MAX_BUCKETS)
    }

    pub(crate) fn with_max_keys(rate: f64, burst: f64, max_keys: usize) -> Self {
        Self {
            rate,
            burst,
            max_keys,
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                overflow: None,
            }),
        }
    }

    pub(crate) fn allow<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.allow_with(key, self.rate, self.burst)
    }

    pub(crate) fn allow_with<Q>(&self, key: &Q, rate: f64, burst: f64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Buckets { by_key, overflow } = &mut *b;
        if !by_key.contains_key(key) && by_key.len() < self.max_keys {
            by_key.insert(key.to_owned(), Bucket::full(burst, now));
        }
        let bucket = match by_key.get_mut(key) {
            Some(bucket) => bucket,
            None => overflow.get_or_insert(Bucket::full(burst, now)),
        };
        bucket.take(now, rate, burst)
    }

    /// Forget the buckets that have refilled.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.by_key.retain(|_, bucket| bucket.full_at > now);
        if b.overflow.is_some_and(|o| o.full_at <= now) {
            b.overflow = None;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.by_key.len()
    }
}

#[cfg(test)]
mod rate_limiter_tests {
    use super::*;

    #[test]
    fn a_key_is_limited_to_its_burst_and_others_are_not() {
        let l: RateLimiter = RateLimiter::new(0.001, 3.0);
        assert!((0..3).all(|_| l.allow("a")));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
    }

    #[test]
    fn refilled_buckets_are_pruned_and_drained_ones_kept() {
        let l: RateLimiter = RateLimiter::new(1e9, 2.0);
        assert!(l.allow("fast"));
        assert!(l.allow_with("slow", 0.001, 2.0));
        std::thread::sleep(std::time::Duration::from_millis(5));
        l.prune();
        assert_eq!(l.len(), 1, "only the bucket still refilling is kept");
        assert!(l.allow_with("slow", 0.001, 2.0));
        assert!(
            !l.allow_with("slow", 0.001, 2.0),
            "pruning did not refill it"
        );
    }

    #[test]
    fn keys_past_the_cap_share_one_bucket() {
        let l: RateLimiter = RateLimiter::with_max_keys(0.001, 2.0, 2);
        assert!(l.allow("a") && l.allow("b"));
        assert!(l.allow("c") && l.allow("d"));
        assert!(!l.allow("e"), "c, d and e share the overflow bucket");
        assert_eq!(l.len(), 2);
        assert!(l.allow("a"), "known keys keep their own bucket");
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiErr> + Send + 'static,
) -> Result<T, ApiErr> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiErr::internal())?
}

/// A position in the log as a client gives it: the store keeps positions as
/// SQLite integers (i64), so anything above would wrap (and once let
/// `inbox?after=` skip the acknowledged cursor).
fn log_seq(v: u64) -> Result<u64, ApiErr> {
    if v > i64::MAX as u64 {
        return Err(ApiErr::bad_request(
            "bad_seq",
            "positions in the log are at most 2^63 - 1",
        ));
    }
    Ok(v)
}

fn enrolled(dev: &DeviceRow) -> crate::ds::Enrolled {
    crate::ds::Enrolled {
        device_id: dev.device_id.clone(),
        signature_key: dev.signature_key.clone(),
    }
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
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "alive", body = api::Health), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
)]
async fn health(State(st): St) -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
        org_fingerprint: st.org.fingerprint(),
    })
}

/// # GET /readyz
/// 200 once the store answers within 2 s, else 503 `not_ready` (for a load
/// balancer or an orchestrator; `/healthz` only says the process is alive).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, description = "the store answers", body = serde_json::Value), (status = 503, description = "the store is not answering", body = api::ApiError), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
)]
async fn ready(State(st): St) -> Result<Json<serde_json::Value>, ApiErr> {
    let check = blocking(move || st.db.ready());
    match tokio::time::timeout(std::time::Duration::from_secs(2), check).await {
        Ok(Ok(())) => Ok(Json(serde_json::json!({ "status": "ready" }))),
        _ => Err(ApiErr::unavailable(
            "not_ready",
            "the store is not answering",
        )),
    }
}

/// # GET /v1/devices
/// The caller's user's devices.
#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "devices",
    responses((status = 200, description = "the caller's user's devices", body = Vec<api::DeviceInfo>), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
#[utoipa::path(
    post,
    path = "/v1/devices/{device}/wipe",
    tag = "devices",
    params(("device" = String, Path, description = "device id")),
    responses((status = 200, description = "revoked", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
    blocking(move || {
        st2.db.revoke_own(
            &dev.user_id,
            &d,
            now_secs(),
            (&st2.org.key, &actor, &detail),
        )
    })
    .await?;
    let st3 = st.clone();
    blocking(move || {
        st3.db
            .sweep_revocations(now_secs(), |p| st3.hub.publish(p))
            .map(|_| ())
    })
    .await?;
    tracing::info!(device = %device, "device revoked by its user");
    Ok(Json(serde_json::json!({ "revoked": device })))
}

/// # GET /v1/directory
/// The organisation's signed directory (roles, holders, call-out lists), for
/// enrolled devices; they verify the organisation's signature.
#[utoipa::path(
    get,
    path = "/v1/directory",
    tag = "directory",
    responses((status = 200, description = "the signed directory, base64, or null", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
#[utoipa::path(
    post,
    path = "/v1/roles/{role}/take",
    tag = "directory",
    params(("role" = String, Path, description = "role id")),
    responses((status = 200, description = "taken", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn take_role(
    State(st): St,
    Auth(dev): Auth,
    Path(role): Path<String>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    role_change(st, dev, role, true).await
}

/// # POST /v1/roles/{role}/handback
/// The caller hands a role back.
#[utoipa::path(
    post,
    path = "/v1/roles/{role}/handback",
    tag = "directory",
    params(("role" = String, Path, description = "role id")),
    responses((status = 200, description = "handed back", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
#[utoipa::path(
    post,
    path = "/v1/audit",
    tag = "records",
    request_body(content = api::AuditRequest),
    responses((status = 200, description = "audited", body = api::AuditResponse), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn audit(
    State(st): St,
    Auth(dev): Auth,
    JsonBody(req): JsonBody<sitrep_wire::api::AuditRequest>,
) -> Result<Json<sitrep_wire::api::AuditResponse>, ApiErr> {
    let Some(detail) = req.detail() else {
        return Err(ApiErr::bad_request(
            "bad_audit",
            "unknown action, or not the fields that action takes",
        ));
    };
    if req.records_only() {
        // Only the records account named in the signed policy searches and
        // exports records; nobody else can put such entries in the log.
        let st2 = st.clone();
        let signed = blocking(move || st2.db.policy()).await?;
        let records_user = signed
            .and_then(|b| sitrep_wire::policy::SignedPolicy::verify(&b, &st.org.public_key()).ok())
            .and_then(|p| p.records_user);
        if records_user.as_deref() != Some(dev.user_id.as_str()) {
            return Err(ApiErr::forbidden(
                "not_records",
                "only the organisation's records account reports records actions",
            ));
        }
    }
    let actor = format!("{}/{}", dev.user_id, dev.device_id);
    let (seq, hash) = blocking(move || {
        st.db
            .audit(&st.org.key, &actor, &req.action, &detail, now_secs())
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
#[utoipa::path(
    get,
    path = "/v1/policy",
    tag = "enrolment",
    responses((status = 200, description = "the signed policy, base64, or null", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
)]
async fn policy(State(st): St) -> Result<Json<serde_json::Value>, ApiErr> {
    let signed = blocking(move || st.db.policy()).await?;
    Ok(Json(
        serde_json::json!({ "policy": signed.map(|b| sitrep_wire::b64::encode(&b)) }),
    ))
}

/// # POST /v1/enrol
/// Redeem an enrolment code: the device sends the signature key it made, the
/// organisation signs a credential binding it to the invited person.
#[utoipa::path(
    post,
    path = "/v1/enrol",
    tag = "enrolment",
    request_body(content = api::EnrolRequest),
    responses((status = 200, description = "enrolled", body = api::EnrolResponse), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
)]
async fn enrol(
    State(st): St,
    JsonBody(req): JsonBody<api::EnrolRequest>,
) -> Result<Json<api::EnrolResponse>, ApiErr> {
    // Rate limited before the body is read: `enrol_limit` in `router`.
    if req.signature_key.len() != 32 || req.code.len() > 64 {
        return Err(ApiErr::bad_request(
            "bad_enrolment",
            "expected an Ed25519 public key and a code",
        ));
    }
    // The device must hold the private key it asks the organisation to vouch
    // for: nobody can enrol someone else's key as their own.
    let proven = <[u8; 32]>::try_from(req.signature_key.as_slice())
        .ok()
        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
        .zip(<[u8; 64]>::try_from(req.proof.as_slice()).ok())
        .is_some_and(|(k, sig)| {
            let msg = api::EnrolRequest::proof_message(&req.code, &req.signature_key);
            k.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
                .is_ok()
        });
    if !proven {
        return Err(ApiErr::bad_request(
            "bad_proof",
            "the enrolment request is not signed by the key it enrols",
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
#[utoipa::path(
    post,
    path = "/v1/keypackages",
    tag = "keypackages",
    request_body(content = api::UploadKeyPackages),
    responses((status = 200, description = "stored", body = api::KeyPackageCount), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
        || req.key_packages.len() as u64 > MAX_KEY_PACKAGES
    {
        return Err(ApiErr::bad_request(
            "bad_key_package",
            "KeyPackages are 1 byte to 64 KiB, at most 500 at once",
        ));
    }
    // Every KeyPackage is checked before any is stored: a device cannot plant
    // one that its colleagues' clients would refuse.
    let (req, dev) = {
        let org_public = st.org.public_key();
        blocking(move || {
            let who = crate::mls::Uploader {
                device_id: &dev.device_id,
                user_id: &dev.user_id,
                signature_key: &dev.signature_key,
            };
            let one_time = req.key_packages.iter().map(|k| (k, false));
            for (i, (kp, lr)) in one_time
                .chain(req.last_resort.iter().map(|k| (k, true)))
                .enumerate()
            {
                crate::mls::validate_key_package(kp, &who, &org_public, lr).map_err(|e| {
                    ApiErr::bad_request("bad_key_package", &format!("KeyPackage {i}: {e}"))
                })?;
            }
            Ok((req, dev))
        })
        .await?
    };
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
#[utoipa::path(
    get,
    path = "/v1/keypackages/count",
    tag = "keypackages",
    responses((status = 200, description = "what is left", body = api::KeyPackageCount), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
#[utoipa::path(
    post,
    path = "/v1/keypackages/claim",
    tag = "keypackages",
    request_body(content = api::ClaimRequest),
    responses((status = 200, description = "claimed", body = api::ClaimResponse), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn claim_key_packages(
    State(st): St,
    Auth(dev): Auth,
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
    let st2 = st.clone();
    let claimer = dev.device_id;
    let (found, missing) = blocking(move || {
        st2.db
            .claim_key_packages(&req.user_ids, &req.device_ids, |target| {
                target == claimer
                    || st2.side_limiter.allow_with(
                        &format!("\0claim\0{claimer}\0{target}"),
                        CLAIM_PER_SEC,
                        CLAIM_BURST,
                    )
            })
    })
    .await?;
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
#[utoipa::path(
    post,
    path = "/v1/groups",
    tag = "groups",
    request_body(content = api::CreateGroup),
    responses((status = 200, description = "registered", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
    // The server's own view of the group starts from the creator's signed
    // GroupInfo: one member, the creating device.
    blocking(move || {
        let state = crate::ds::create(
            &req.group_id,
            &req.group_info,
            &enrolled(&dev),
            &st.org.public_key(),
        )
        .map_err(|e| ApiErr::bad_request("bad_group_info", &e.to_string()))?;
        st.db
            .create_group(&req.group_id, &dev.device_id, now_secs(), &state)
    })
    .await?;
    Ok(Json(serde_json::json!({ "epoch": 0 })))
}

/// # POST /v1/groups/{group}/commit
/// Accepted only while the group is at `epoch`; otherwise 409 with the current
/// epoch. The Welcome is released (to the joiners only) with the winning commit.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/commit",
    tag = "groups",
    params(("group" = String, Path, description = "MLS group id, hex")),
    request_body(content = api::CommitRequest),
    responses((status = 200, description = "accepted", body = api::CommitResponse), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
            &enrolled(&dev),
            &st2.org.public_key(),
            &gid,
            &req.client_id,
            req.epoch,
            req.commit,
            req.welcome,
            now_secs(),
            |p| st2.hub.publish(p),
        )
    })
    .await?;
    if !duplicate {
        st.metrics.committed();
    }
    Ok(Json(api::CommitResponse { epoch, duplicate }))
}

/// # POST /v1/groups/{group}/messages
/// Answers only after the message is durably stored for every other member.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/messages",
    tag = "messages",
    params(("group" = String, Path, description = "MLS group id, hex")),
    request_body(content = api::SendRequest),
    responses((status = 200, description = "stored for every other member", body = api::SendResponse), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
    let start = std::time::Instant::now();
    let st2 = st.clone();
    let (recipients, duplicate, seq) = blocking(move || {
        st2.db.send(
            &dev.device_id,
            &gid,
            &req.client_id,
            req.payload,
            now_secs(),
            |payload, gid, epoch| {
                crate::ds::application(payload, gid, epoch)
                    .map_err(|e| ApiErr::bad_request("bad_message", &e.to_string()))
            },
            |p| st2.hub.publish_marked(p, req.urgent),
        )
    })
    .await?;
    st.metrics.sent(duplicate, start.elapsed());
    Ok(Json(api::SendResponse {
        recipients,
        duplicate,
        seq,
    }))
}

/// # POST /v1/groups/{group}/read
/// The device has shown the group's messages up to `seq`.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/read",
    tag = "messages",
    params(("group" = String, Path, description = "MLS group id, hex")),
    request_body(content = api::ReadRequest),
    responses((status = 200, description = "recorded", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn mark_read(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<api::ReadRequest>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    let gid = group_id(&group)?;
    let seq = log_seq(req.seq)?;
    let seq = blocking(move || st.db.mark_read(&dev.device_id, &gid, seq, now_secs())).await?;
    Ok(Json(serde_json::json!({ "read": seq })))
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    seq: u64,
}

/// # GET /v1/groups/{group}/status?seq=N
/// Per device that was in the group when message N was sent: delivered, and
/// read (when). Members of the group only.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}/status",
    tag = "messages",
    params(("group" = String, Path, description = "MLS group id, hex"), ("seq" = u64, Query, description = "the message")),
    responses((status = 200, description = "per device", body = api::MessageStatus), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn message_status(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
    q: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::MessageStatus>, ApiErr> {
    let Query(q) = q.map_err(|_| ApiErr::bad_request("bad_query", "seq is a number"))?;
    let gid = group_id(&group)?;
    log_seq(q.seq)?;
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

/// # GET /v1/groups/{group}/receipts
/// How far each member device has got in the group's messages (delivered,
/// read), for every message's state in one request. Members only.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}/receipts",
    tag = "messages",
    params(("group" = String, Path, description = "MLS group id, hex")),
    responses((status = 200, description = "per device", body = api::Receipts), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn receipts(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
) -> Result<Json<api::Receipts>, ApiErr> {
    let gid = group_id(&group)?;
    let devices = blocking(move || st.db.receipts(&dev.device_id, &gid)).await?;
    Ok(Json(api::Receipts { devices }))
}

/// # POST /v1/groups/{group}/leave
/// The device leaves: delivery to it stops at once, and its Remove proposal goes
/// to the other members, the next of whom to sync commits it.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/leave",
    tag = "groups",
    params(("group" = String, Path, description = "MLS group id, hex")),
    request_body(content = api::LeaveRequest),
    responses((status = 200, description = "left", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
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
            &enrolled(&dev),
            &st2.org.public_key(),
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

/// # POST /v1/groups/{group}/rejoin
/// The device is out of step with the group (it missed a commit) and asks
/// the other members to re-add it; a member's next sync does. At most ten
/// requests, then one every ten seconds, per device.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/rejoin",
    tag = "groups",
    params(("group" = String, Path, description = "MLS group id, hex")),
    request_body(content = api::RejoinRequest),
    responses((status = 200, description = "asked", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn rejoin(
    State(st): St,
    Auth(dev): Auth,
    Path(group): Path<String>,
    JsonBody(req): JsonBody<api::RejoinRequest>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    let gid = group_id(&group)?;
    if !valid_client_id(&req.client_id) {
        return Err(ApiErr::bad_request(
            "bad_client_id",
            "client_id is 32 lowercase hex chars",
        ));
    }
    // One bucket per device (not per group it names: the group is checked
    // only later, and a key per made-up group would fill the limiter).
    if !st
        .side_limiter
        .allow_with(&format!("\0rejoin\0{}", dev.device_id), 1.0 / 10.0, 10.0)
    {
        return Err(ApiErr::rate_limited());
    }
    let st2 = st.clone();
    let duplicate = blocking(move || {
        st2.db
            .rejoin(&dev.device_id, &gid, &req.client_id, now_secs(), |p| {
                st2.hub.publish(p)
            })
    })
    .await?;
    Ok(Json(
        serde_json::json!({ "requested": true, "duplicate": duplicate }),
    ))
}

#[derive(Deserialize)]
struct InboxQuery {
    #[serde(default)]
    after: u64,
    limit: Option<u64>,
}

/// # GET /v1/inbox?after=SEQ&limit=N
#[utoipa::path(
    get,
    path = "/v1/inbox",
    tag = "messages",
    params(("after" = Option<u64>, Query, description = "entries after this seq"), ("limit" = Option<u64>, Query, description = "at most this many (1 to 1000)")),
    responses((status = 200, description = "a page", body = api::InboxResponse), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn inbox(
    State(st): St,
    Auth(dev): Auth,
    q: Result<Query<InboxQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::InboxResponse>, ApiErr> {
    let Query(q) =
        q.map_err(|_| ApiErr::bad_request("bad_query", "after and limit are numbers"))?;
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let after = log_seq(q.after)?;
    let st2 = st.clone();
    let (entries, more) = blocking(move || {
        st2.db
            .fetch(&dev.device_id, after, limit, st2.config.page_bytes)
    })
    .await?;
    st.metrics.delivered("fetch", entries.len() as u64);
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
#[utoipa::path(
    post,
    path = "/v1/inbox/ack",
    tag = "messages",
    request_body(content = api::AckRequest),
    responses((status = 200, description = "acknowledged", body = serde_json::Value), (status = "4XX", description = "refused: see `error`", body = api::ApiError)),
    security(("bearer" = [])),
)]
async fn ack(
    State(st): St,
    Auth(dev): Auth,
    JsonBody(req): JsonBody<api::AckRequest>,
) -> Result<Json<serde_json::Value>, ApiErr> {
    log_seq(req.up_to)?;
    blocking(move || st.db.ack(&dev.device_id, req.up_to)).await?;
    Ok(Json(serde_json::json!({ "acknowledged": req.up_to })))
}
