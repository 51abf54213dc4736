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

pub mod admin;
pub mod audit;
mod db;
pub mod directory;
mod ds;
mod error;
mod http;
mod hub;
mod metrics;
mod mls;
pub mod openapi;
pub mod org;
pub mod push;
pub mod scim;
mod tls;
pub mod web;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use db::{
    Backup, Db, DeviceAdminRow, Disabled, UserRow, admin_actor, audit_dir, audit_entries,
    audit_verify, backup, create_invite, disable_user, list_devices, list_users, restore,
    revoke_device, set_policy, show_policy,
};
pub use error::ApiErr;
pub use tls::TlsFiles;

/// Server settings; the defaults suit one trust on one machine.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory with the database and the organisation key.
    pub data_dir: PathBuf,
    /// Largest request body, on the two routes that take large ones: commits
    /// (with Welcomes for large groups) and KeyPackage uploads. Messages and
    /// leaves take `max_message` in base64 plus a little; every other route a
    /// few KiB (`http.rs`). 32 MiB: a post-quantum add of 500 to a group of
    /// 4,500 is a 15.5 MB commit and Welcome, 21 MB in base64
    /// (`sitrep bench commit`).
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
    /// Share of `enrol_per_sec` (and of its burst) one address may use, so one
    /// address cannot lock everyone else out of enrolling.
    pub enrol_addr_share: f64,
    /// Requests per second per address on the routes without a token
    /// (`/healthz`, `/v1/policy`, `/v1/enrol`); never below the address's
    /// enrolment share, since each enrolment reads the policy first.
    pub addr_per_sec: f64,
    /// Burst for the per-address bucket.
    pub addr_burst: f64,
    /// Peers (reverse proxies) whose `X-Forwarded-For` names the client for the
    /// per-address limits; everyone else is keyed by the connection's address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Most payload bytes in one inbox page or WebSocket backlog page; a
    /// single larger entry still goes out, alone.
    pub page_bytes: usize,
    /// Most frame bytes queued for one WebSocket connection; past it the
    /// connection re-reads the store.
    pub ws_queue_bytes: usize,
    /// A connection whose writes make no progress for this long is closed
    /// (a client that stops reading its WebSocket or its response).
    pub write_timeout: Duration,
    /// Time to send a request's line and headers (also the idle keep-alive
    /// time between requests).
    pub header_read_timeout: Duration,
    /// Time to send a request body.
    pub body_read_timeout: Duration,
    /// Most connections open at once (WebSockets included); the server waits
    /// to accept more. Capped at start to three quarters of the process's
    /// open-file limit.
    pub max_connections: usize,
    /// TLS certificate and key; without them the server speaks plain HTTP,
    /// which it does only on a loopback address unless `plain_http` is set.
    pub tls: Option<TlsFiles>,
    /// Plain HTTP on a non-loopback address: for a reverse proxy in front
    /// that terminates TLS itself.
    pub plain_http: bool,
    /// Bearer token that lets a scraper off loopback read `/metrics`;
    /// without it, only loopback clients may.
    pub metrics_token: Option<String>,
    /// The web app's built bundle (`web/dist`), served at `/`; read once at
    /// start. Without it `/` says how to build it.
    pub web_dir: Option<PathBuf>,
    /// Push service hosts (and their subdomains) that Web Push endpoints
    /// may name: [`push::DEFAULT_HOSTS`] unless the trust says otherwise.
    pub push_hosts: Vec<String>,
    /// The contact in every VAPID JWT (`mailto:` or `https:`), for a push
    /// service to reach the trust's IT about its traffic.
    pub push_contact: String,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_body: 32 * 1024 * 1024,
            max_message: 256 * 1024,
            max_backlog: 100_000,
            max_age_secs: 30 * 24 * 3600,
            rate_per_sec: 2_000.0,
            rate_burst: 4_000.0,
            enrol_per_sec: 20.0,
            enrol_addr_share: 0.25,
            addr_per_sec: 10.0,
            addr_burst: 50.0,
            trusted_proxies: Vec::new(),
            page_bytes: 4 * 1024 * 1024,
            ws_queue_bytes: 8 * 1024 * 1024,
            write_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 8_192,
            tls: None,
            plain_http: false,
            metrics_token: None,
            web_dir: None,
            push_hosts: push::DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect(),
            push_contact: "mailto:sitrep-admin@localhost".into(),
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub db: Db,
    /// The web app, when the server was given one.
    pub web: Option<web::Bundle>,
    /// The key that signs Web Push requests.
    pub vapid: push::Vapid,
    pub org: org::Org,
    pub hub: hub::Hub,
    pub config: Config,
    pub limiter: http::RateLimiter,
    /// Per-address buckets on the routes without a token.
    pub addr_limiter: http::RateLimiter<http::AddrKey>,
    /// Claims of one-time KeyPackages and rejoin requests: apart from the
    /// per-device request buckets, so filling one never throttles the other.
    pub side_limiter: http::RateLimiter,
    pub acks: AckBatcher,
    pub metrics: metrics::Metrics,
    pub admin_sessions: admin::Sessions,
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

/// Open the organisation and the store (the data directory must have been
/// initialised: [`org::Org::create`]), then serve on `listener` until
/// `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(tls::Tls::new(files)?)),
        None => {
            let addr = listener.local_addr()?;
            if !addr.ip().is_loopback() && !config.plain_http {
                return Err(ServeError::PlainNotLoopback(addr.to_string()));
            }
            None
        }
    };
    let org = org::Org::open(&config.data_dir)?;
    // One server per data directory, held while it runs (a restore checks it).
    let _running = db::serve_lock(&config.data_dir)?;
    let db = Db::open(&config.data_dir)?;
    let web = match &config.web_dir {
        Some(d) => Some(web::Bundle::load(d).map_err(|e| ServeError::Web(d.clone(), e))?),
        None => None,
    };
    let vapid = push::Vapid::load_or_create(&config.data_dir)?;
    let state = Arc::new(AppState {
        db,
        web,
        vapid,
        org,
        hub: hub::Hub::new(config.ws_queue_bytes),
        limiter: http::RateLimiter::new(config.rate_per_sec, config.rate_burst),
        addr_limiter: http::RateLimiter::new(config.addr_per_sec, config.addr_burst),
        side_limiter: http::RateLimiter::new(config.rate_per_sec, config.rate_burst),
        acks: AckBatcher::default(),
        metrics: metrics::Metrics::new(),
        admin_sessions: admin::Sessions::default(),
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
                        if let Ok(n) = st2.db.sweep_revocations(now_secs(), |p| st2.hub.publish(p))
                        {
                            st2.metrics.swept(n as u64);
                        }
                        st2.db.flush_seen()
                    })
                    .await;
                }
                if ticks.is_multiple_of(100) {
                    st.limiter.prune();
                    st.addr_limiter.prune();
                    st.side_limiter.prune();
                    let st2 = st.clone();
                    let (age, backlog) = (st.config.max_age_secs, st.config.max_backlog);
                    let _ = tokio::task::spawn_blocking(move || {
                        let start = std::time::Instant::now();
                        if let Ok(n) = st2.db.gc(now_secs(), age, backlog) {
                            st2.metrics.collected(n, start.elapsed());
                        }
                    })
                    .await;
                }
            }
        })
    };
    let (sink, pusher) = push::spawn(state.clone());
    state.hub.set_offline(sink);
    let reloader = reload_on_hangup(tls.clone())?;
    let app = http::router(state.clone());
    accept_loop(listener, app, &state.config, tls, shutdown).await;
    reloader.abort();
    pusher.abort();
    flusher.abort();
    flush_acks(&state).await;
    Ok(())
}

/// On SIGHUP, read the certificate and key again (the usual way to tell a
/// service its certificate was renewed). Listened for before the first
/// connection is accepted; without TLS the signal is logged and ignored
/// rather than ending the server.
fn reload_on_hangup(tls: Option<Arc<tls::Tls>>) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        Ok(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match &tls {
                    None => tracing::info!("SIGHUP: no TLS certificate to reload"),
                    Some(t) => match t.reload() {
                        Ok(()) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "TLS certificate not reloaded; the one in use stays"
                        ),
                    },
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = tls;
        Ok(tokio::spawn(async {}))
    }
}

/// Largest request line and headers (hyper's buffer, per connection).
const MAX_HEAD: usize = 16 * 1024;

/// Accept connections until `shutdown`, at most `Config::max_connections` at
/// once, each with a header-read timeout (which bounds the TLS handshake too)
/// and a write timeout; then let the open HTTP exchanges finish. Upgraded
/// WebSockets run on by themselves, as they did under `axum::serve`. Plain
/// connections speak HTTP/1.1; TLS ones HTTP/2 or HTTP/1.1 as ALPN chose.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &Config,
    tls: Option<Arc<tls::Tls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let max = connection_limit(config.max_connections);
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(MAX_HEAD);
    let mut http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    http2
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD as u32)
        .keep_alive_interval(Some(H2_PING))
        .keep_alive_timeout(config.header_read_timeout);
    let builders = Arc::new((http1, http2));
    let write_timeout = config.write_timeout;
    let handshake_timeout = config.header_read_timeout;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // The permit is taken before accepting: past the limit, connections
        // wait in the kernel's backlog instead of costing a descriptor here.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Responses go out as soon as they are written: TLS records and
        // HTTP/2 frames come in several writes, and Nagle's algorithm would
        // hold the last one for the peer's delayed ACK (40 ms a request).
        let _ = tcp.set_nodelay(true);
        let io = TimedStream {
            io: tcp,
            write_timeout,
            stalled: None,
            _permit: permit,
        };
        let app = app.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            });
        let (builders, tls) = (builders.clone(), tls.clone());
        // Held until the connection ends: the loop's end waits for them all.
        let alive = stop_rx.clone();
        tokio::spawn(async move {
            let mut stop = alive.clone();
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let (http1, http2) = &*builders;
            match tls {
                None => {
                    let io = hyper_util::rt::TokioIo::new(io);
                    let conn = http1.serve_connection(io, svc).with_upgrades();
                    drive_connection(conn, stopping, write_timeout).await;
                }
                Some(tls) => {
                    let handshake =
                        tokio::time::timeout(handshake_timeout, tls.acceptor.accept(io));
                    let stream = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            _ => return,
                        },
                        () = stopping => return,
                    };
                    let mut stop = alive.clone();
                    let stopping = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if h2 {
                        let conn = http2.serve_connection(io, svc);
                        drive_connection(conn, stopping, write_timeout).await;
                    } else {
                        let conn = http1.serve_connection(io, svc).with_upgrades();
                        drive_connection(conn, stopping, write_timeout).await;
                    }
                }
            }
            drop(alive);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    // Every connection task holds a receiver until it ends.
    stop_tx.closed().await;
}

/// Most requests in flight on one HTTP/2 connection.
const MAX_STREAMS: u32 = 128;

/// How often an idle HTTP/2 connection is pinged (a dead peer is found and
/// its connection closed).
const H2_PING: Duration = Duration::from_secs(30);

/// A hyper connection that can be asked to finish what it has started.
trait Graceful: std::future::Future {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    Self: std::future::Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    Self: std::future::Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Run a connection to its end, or once the server stops, let it finish the
/// exchanges in progress for at most `grace`.
async fn drive_connection<C: Graceful>(
    conn: C,
    stopping: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopping => {
            conn.as_mut().graceful();
            let _ = tokio::time::timeout(grace, conn).await;
        }
    }
}

/// Errors of one connection come and go; running out of descriptors or memory
/// lasts a moment, so wait before the next accept instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::warn!(error = %e, "accept failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `wanted`, capped at three quarters of the open-file limit (raised to its
/// hard limit first where allowed), so the store, the logs and the listener
/// always have descriptors left.
fn connection_limit(wanted: usize) -> usize {
    let cap = open_file_limit()
        .map(|n| usize::try_from(n / 4 * 3).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX);
    let max = wanted
        .min(cap)
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    if max < wanted {
        tracing::warn!(
            max,
            wanted,
            "connection limit lowered to fit the open-file limit"
        );
    }
    max
}

/// The soft open-file limit after raising it to the hard one; `None` if
/// unlimited or unknown.
#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        let raised = Rlimit {
            current: l.maximum,
            maximum: l.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return l.maximum;
        }
    }
    l.current
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// A connection whose writes fail once they have made no progress for
/// `write_timeout`: a peer that stops reading cannot hold a task, its buffers
/// and a descriptor for ever. It also holds the connection's permit, through a
/// WebSocket upgrade too, until it is dropped.
struct TimedStream {
    io: tokio::net::TcpStream,
    write_timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl TimedStream {
    fn progress<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future as _;
        use std::task::Poll;
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let t = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.write_timeout)));
        match t.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write stalled",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for TimedStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TimedStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(cx, r)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.progress(cx, r)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_shutdown(cx);
        this.progress(cx, r)
    }
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
    /// The data directory was never initialised (a mistyped `--data`
    /// must not silently start a new organisation).
    #[error(
        "{0} holds no Sitrep organisation: create one with `sitrep init --data {0} --org NAME` (or start `sitrep serve --init`)"
    )]
    NotInitialised(String),
    /// A certificate or key that cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Plain HTTP asked for on an address other machines reach.
    #[error(
        "{0} is not a loopback address: give a certificate (--tls-cert and --tls-key), or --plain-http behind a reverse proxy that terminates TLS"
    )]
    PlainNotLoopback(String),
    /// `sitrep init` on a directory that holds one already.
    #[error("{0} already holds a Sitrep organisation ({1:?})")]
    AlreadyInitialised(String, String),
    /// The web bundle named by `web_dir` cannot be read.
    #[error("the web app in {0}: {1}")]
    Web(PathBuf, std::io::Error),
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

/// Entry points for the fuzz targets (`crates/fuzzing`, `fuzz/`): the
/// server's validation of untrusted MLS bytes, reachable without a running
/// server. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// [`crate::mls::validate_key_package`]: whether an upload would be taken.
    pub fn key_package(
        bytes: &[u8],
        device_id: &str,
        user_id: &str,
        signature_key: &[u8],
        org_public: &[u8],
        last_resort: bool,
    ) -> bool {
        let who = crate::mls::Uploader {
            device_id,
            user_id,
            signature_key,
        };
        crate::mls::validate_key_package(bytes, &who, org_public, last_resort).is_ok()
    }

    fn enrolled(device_id: &str, signature_key: &[u8]) -> crate::ds::Enrolled {
        crate::ds::Enrolled {
            device_id: device_id.into(),
            signature_key: signature_key.into(),
        }
    }

    /// [`crate::ds::create`]: the public state a GroupInfo starts, if valid.
    pub fn group_state(
        group_id: &[u8],
        group_info: &[u8],
        device_id: &str,
        signature_key: &[u8],
        org_public: &[u8],
    ) -> Option<Vec<u8>> {
        let who = enrolled(device_id, signature_key);
        crate::ds::create(group_id, group_info, &who, org_public).ok()
    }

    /// [`crate::ds::commit`] (every device known, with `signature_key`):
    /// the state after the commit, if it is accepted.
    pub fn commit(
        state: &[u8],
        group_id: &[u8],
        commit: &[u8],
        welcome: Option<&[u8]>,
        device_id: &str,
        signature_key: &[u8],
        org_public: &[u8],
    ) -> Option<Vec<u8>> {
        let who = enrolled(device_id, signature_key);
        crate::ds::commit(state, group_id, commit, welcome, &who, org_public, |_| {
            Some(signature_key.to_vec())
        })
        .ok()
        .map(|a| a.state)
    }

    /// [`crate::ds::leave`]: the state after the proposal, if accepted.
    pub fn leave(
        state: &[u8],
        group_id: &[u8],
        proposal: &[u8],
        device_id: &str,
        signature_key: &[u8],
        org_public: &[u8],
    ) -> Option<Vec<u8>> {
        let who = enrolled(device_id, signature_key);
        crate::ds::leave(state, group_id, proposal, &who, org_public).ok()
    }

    /// [`crate::ds::application`]: whether the framing is accepted.
    pub fn application(bytes: &[u8], group_id: &[u8], epoch: u64) -> bool {
        crate::ds::application(bytes, group_id, epoch).is_ok()
    }
}
