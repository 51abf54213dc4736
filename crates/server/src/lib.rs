//! Sitrep server: the MLS delivery service and authentication service a trust
//! runs itself.
//!
//! It enrols devices (signing their credentials with the organisation key),
//! hands out KeyPackages, orders each group's commits by epoch, and keeps a
//! durable log per group that each device reads from its acknowledged cursor,
//! pushed over WebSocket and fetched over HTTP.
//!
//! It must never see message plaintext, conversation names, patient data or any
//! device's private keys: everything it stores about a message is ciphertext and
//! routing metadata (group id, epoch, sender device, sizes, times). Its logs carry
//! ids and sizes only.

pub mod audit;
mod db;
pub mod directory;
mod error;
mod http;
mod hub;
pub mod org;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;

pub use db::{
    Db, admin_actor, audit_dir, audit_entries, audit_verify, create_invite, revoke_device,
    set_policy, show_policy,
};
pub use error::ApiErr;

/// Server settings; the defaults suit one trust on one machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory with the database and the organisation key.
    pub data_dir: PathBuf,
    /// Largest request body (commits with Welcomes for large groups are big).
    pub max_body: usize,
    /// Largest application message payload.
    pub max_message: usize,
    /// Most undelivered entries kept per group; past it the oldest are deleted
    /// (a device that far behind sees a gap and must be re-added).
    pub max_backlog: u64,
    /// Undelivered entries older than this are deleted (seconds).
    pub max_age_secs: u64,
    /// Requests per second per device (token bucket), and burst.
    pub rate_per_sec: f64,
    /// Burst for the token bucket.
    pub rate_burst: f64,
    /// Enrolments per second across the whole server (codes are 80 bits, this
    /// only blunts floods).
    pub enrol_per_sec: f64,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_body: 16 * 1024 * 1024,
            max_message: 256 * 1024,
            max_backlog: 100_000,
            max_age_secs: 30 * 24 * 3600,
            rate_per_sec: 2_000.0,
            rate_burst: 4_000.0,
            enrol_per_sec: 20.0,
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub db: Db,
    pub org: org::Org,
    pub hub: hub::Hub,
    pub config: Config,
    pub limiter: http::RateLimiter,
    pub acks: AckBatcher,
}

/// WebSocket acknowledgements, coalesced per device and applied in one
/// transaction every few milliseconds instead of one transaction each.
#[derive(Default)]
pub(crate) struct AckBatcher {
    pending: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl AckBatcher {
    pub(crate) fn add(&self, device_id: &str, seq: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let e = p.entry(device_id.to_string()).or_insert(0);
        *e = (*e).max(seq);
    }

    fn take(&self) -> Vec<(String, u64)> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.drain().collect()
    }
}

async fn flush_acks(state: &Arc<AppState>) {
    let batch = state.acks.take();
    if batch.is_empty() {
        return;
    }
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.db.ack_many(&batch)).await;
}

/// Open (or create) the organisation and the store, then serve on `listener`
/// until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (org, _) = org::Org::open_or_create(&config.data_dir, None)?;
    let db = Db::open(&config.data_dir)?;
    let state = Arc::new(AppState {
        db,
        org,
        hub: hub::Hub::default(),
        limiter: http::RateLimiter::new(config.rate_per_sec, config.rate_burst),
        acks: AckBatcher::default(),
        config,
    });
    let flusher = {
        let st = state.clone();
        tokio::spawn(async move {
            let mut ticks = 0u64;
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                flush_acks(&st).await;
                ticks += 1;
                if ticks.is_multiple_of(25) {
                    let st2 = st.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        st2.db.sweep_revocations(now_secs(), |p| st2.hub.publish(p))
                    })
                    .await;
                }
                if ticks.is_multiple_of(100) {
                    let st2 = st.clone();
                    let (age, backlog) = (st.config.max_age_secs, st.config.max_backlog);
                    let _ =
                        tokio::task::spawn_blocking(move || st2.db.gc(now_secs(), age, backlog))
                            .await;
                }
            }
        })
    };
    let app = http::router(state.clone());
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ServeError::Io(e.to_string()));
    flusher.abort();
    flush_acks(&state).await;
    served
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Database trouble.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// File or socket trouble.
    #[error("{0}")]
    Io(String),
}

impl From<std::io::Error> for ServeError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the OS random source is available");
    b
}
