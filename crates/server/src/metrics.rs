//! # GET /metrics
//! Counters, gauges and histograms for the trust's monitoring, in the
//! OpenMetrics text format to a scraper that asks for it (Prometheus does),
//! else the classic Prometheus text format. Labels are route templates,
//! methods, status codes and fixed words: never an id, a name or a path with
//! a group in it.
//!
//! Answered to a loopback client that is not a proxy passing a request on
//! (no `X-Forwarded-For` or `Forwarded`), or to anyone with the scrape token
//! (`Config::metrics_token`, a bearer token as Prometheus sends it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::error::ApiErr;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViaLabel {
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

type Histo = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// One server's metrics (its own registry: servers in one process, as in
/// tests and benchmarks, never share counts).
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histo,
    rate_limited: Family<RouteLabel, Counter>,
    sends: Family<OutcomeLabel, Counter>,
    commits: Counter,
    deliveries: Family<ViaLabel, Counter>,
    fanout: Histogram,
    connected_devices: Gauge,
    connections: Gauge,
    stored_entries: Gauge,
    devices: Family<StateLabel, Gauge>,
    gc_runs: Counter,
    gc_deleted: Counter,
    gc_seconds: Histogram,
    revocations_swept: Counter,
    pushes: Family<OutcomeLabel, Counter>,
}

/// Latency buckets, seconds: 0.5 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("sitrep");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let duration: Histo = Family::new_with_constructor(latency);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            duration.clone(),
        );
        let rate_limited = Family::<RouteLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit (429), by route template",
            rate_limited.clone(),
        );
        let pushes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "web_pushes",
            "Content-free Web Pushes, by outcome: sent, gone (the subscription was deleted), failed",
            pushes.clone(),
        );
        let sends = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "sends",
            "Application messages accepted: stored, or a repeat of one already stored",
            sends.clone(),
        );
        let commits = Counter::default();
        registry.register("commits", "Commits accepted", commits.clone());
        let deliveries = Family::<ViaLabel, Counter>::default();
        registry.register(
            "deliveries",
            "Inbox entries handed to devices: pushed on a WebSocket or fetched from the inbox",
            deliveries.clone(),
        );
        let fanout = latency();
        registry.register(
            "fanout_seconds",
            "From a send's arrival to its entry stored for every member and queued for every connected one",
            fanout.clone(),
        );
        let connected_devices = Gauge::default();
        registry.register(
            "connected_devices",
            "Devices with at least one WebSocket open",
            connected_devices.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "websocket_connections",
            "WebSocket connections open",
            connections.clone(),
        );
        let stored_entries = Gauge::default();
        registry.register(
            "stored_entries",
            "Inbox entries stored and not yet collected (the backlog not every recipient has acknowledged)",
            stored_entries.clone(),
        );
        let devices = Family::<StateLabel, Gauge>::default();
        registry.register(
            "devices",
            "Enrolled devices, active or revoked",
            devices.clone(),
        );
        let gc_runs = Counter::default();
        registry.register("gc_runs", "Garbage-collection passes", gc_runs.clone());
        let gc_deleted = Counter::default();
        registry.register(
            "gc_deleted",
            "Stored entries deleted by garbage collection",
            gc_deleted.clone(),
        );
        let gc_seconds = latency();
        registry.register(
            "gc_duration_seconds",
            "Time of one garbage-collection pass",
            gc_seconds.clone(),
        );
        let revocations_swept = Counter::default();
        registry.register(
            "revocation_sweeps",
            "Revoked devices removed from their conversations by the server's sweep",
            revocations_swept.clone(),
        );
        Self {
            pushes,
            registry,
            requests,
            duration,
            rate_limited,
            sends,
            commits,
            deliveries,
            fanout,
            connected_devices,
            connections,
            stored_entries,
            devices,
            gc_runs,
            gc_deleted,
            gc_seconds,
            revocations_swept,
        }
    }

    pub(crate) fn sent(&self, duplicate: bool, took: Duration) {
        let outcome = if duplicate { "duplicate" } else { "stored" };
        self.sends.get_or_create(&OutcomeLabel { outcome }).inc();
        if !duplicate {
            self.fanout.observe(took.as_secs_f64());
        }
    }

    pub(crate) fn committed(&self) {
        self.commits.inc();
    }

    /// `n` entries handed to a device: `via` is "push" or "fetch".
    pub(crate) fn delivered(&self, via: &'static str, n: u64) {
        if n > 0 {
            self.deliveries.get_or_create(&ViaLabel { via }).inc_by(n);
        }
    }

    pub(crate) fn collected(&self, deleted: u64, took: Duration) {
        self.gc_runs.inc();
        self.gc_deleted.inc_by(deleted);
        self.gc_seconds.observe(took.as_secs_f64());
    }

    /// One Web Push: "sent", "gone" or "failed".
    pub(crate) fn pushed(&self, outcome: &'static str) {
        self.pushes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub(crate) fn swept(&self, devices: u64) {
        self.revocations_swept.inc_by(devices);
    }

    fn answered(&self, route: &str, method: String, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method,
                status,
            })
            .inc();
        let route = RouteLabel {
            route: route.to_string(),
        };
        self.duration
            .get_or_create(&route)
            .observe(took.as_secs_f64());
        if status == 429 {
            self.rate_limited.get_or_create(&route).inc();
        }
    }
}

/// Count every answer by its route template (a request that matched no
/// route is "unmatched", so made-up paths never become labels).
pub(crate) async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .answered(&route, method, resp.status().as_u16(), start.elapsed());
    resp
}

/// The scrape: gauges read now (connections from the hub, counts from the
/// store), then the whole registry.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "OpenMetrics text to an Accept naming it, else the classic text format", content((String = "text/plain"), (String = "application/openmetrics-text"))), (status = 403, description = "not loopback and no scrape token", body = sitrep_wire::api::ApiError), (status = "4XX", description = "refused: see `error`", body = sitrep_wire::api::ApiError)),
    security((), ("metrics" = [])),
)]
pub(crate) async fn scrape(State(st): State<Arc<AppState>>, req: Request) -> Response {
    if !allowed(&st, &req) {
        return ApiErr::forbidden(
            "metrics_forbidden",
            "metrics are served to loopback or with the scrape token",
        )
        .into_response();
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (devices, connections) = st.hub.counts();
    let m = &st.metrics;
    m.connected_devices.set(devices as i64);
    m.connections.set(connections as i64);
    let st2 = st.clone();
    let stats = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || st2.db.stats()),
    )
    .await;
    if let Ok(Ok(Ok(s))) = stats {
        m.stored_entries.set(s.stored_entries as i64);
        m.devices
            .get_or_create(&StateLabel { state: "active" })
            .set(s.active_devices as i64);
        m.devices
            .get_or_create(&StateLabel { state: "revoked" })
            .set(s.revoked_devices as i64);
    }
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &m.registry).is_err() {
        return ApiErr::internal().into_response();
    }
    // OpenMetrics to a scraper that asks for it (Prometheus does), the
    // classic text format (0.0.4) to anyone else.
    let openmetrics = accept
        .as_deref()
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (body, ct) = if openmetrics {
        (
            body,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (classic(&body), "text/plain; version=0.0.4; charset=utf-8")
    };
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// OpenMetrics text as the classic Prometheus text format: a counter's
/// family is named by its `_total` series, and there is no `# UNIT` or
/// `# EOF` (everything else is the same in both).
fn classic(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn allowed(st: &AppState, req: &Request) -> bool {
    // Loopback, and not through a proxy (which would answer the world).
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let proxied = req.headers().contains_key("x-forwarded-for")
        || req.headers().contains_key(header::FORWARDED);
    // A proxy on this machine may pass requests on without saying so.
    let behind_proxy = st.config.plain_http
        || peer.is_some_and(|p| {
            st.config
                .trusted_proxies
                .iter()
                .any(|t| t.to_canonical() == p)
        });
    if peer.is_some_and(|p| p.is_loopback()) && !proxied && !behind_proxy {
        return true;
    }
    let Some(want) = &st.config.metrics_token else {
        return false;
    };
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared as hashes: the time taken says nothing about the token.
    crate::org::token_hash(got) == crate::org::token_hash(want)
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_names_counter_families_by_their_series() {
        let om = "# HELP sitrep_sends Sends.\n# TYPE sitrep_sends counter\nsitrep_sends_total{outcome=\"stored\"} 3\n\
                  # HELP sitrep_connected_devices Devices.\n# TYPE sitrep_connected_devices gauge\nsitrep_connected_devices 1\n# EOF\n";
        let c = super::classic(om);
        assert_eq!(
            c,
            "# HELP sitrep_sends_total Sends.\n# TYPE sitrep_sends_total counter\nsitrep_sends_total{outcome=\"stored\"} 3\n\
             # HELP sitrep_connected_devices Devices.\n# TYPE sitrep_connected_devices gauge\nsitrep_connected_devices 1\n"
        );
    }
}
