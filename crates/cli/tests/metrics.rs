//! `/metrics`: scraped from the real server after real traffic and parsed.
//! The counts must match what was done, the labels must be route templates
//! (no group id, no user, no made-up path), and the scrape must be refused
//! off loopback or through a proxy without the token.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use sitrep_core::DEFAULT_CIPHERSUITE;

const TOKEN: &str = "scrape-token-7c1d2e3f4a5b";

/// The exposition as `name{labels}` -> value; panics on a line that is
/// neither a comment nor `series value`.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends in # EOF"
    );
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let v: f64 = value.parse().expect("a number");
        assert!(
            out.insert(series.to_string(), v).is_none(),
            "{series} twice"
        );
    }
    out
}

fn get(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in {:?}", m.keys().collect::<Vec<_>>()))
}

/// A scrape as Prometheus makes it (asking for OpenMetrics).
async fn scrape(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut r = reqwest::Client::new().get(format!("{url}/metrics")).header(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    );
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("scrape");
    let status = resp.status().as_u16();
    if status == 200 {
        let ct = resp.headers()["content-type"].to_str().expect("ascii");
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    }
    (status, resp.text().await.expect("body"))
}

/// The classic text format (no Accept): every series under a `# TYPE`
/// that names it or its histogram family, no `# EOF`.
fn parse_classic(text: &str) -> HashMap<String, f64> {
    assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
    let mut families = HashMap::new();
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("name and type");
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let name = series.split('{').next().expect("name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| families.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            families.contains_key(family),
            "{name} has no # TYPE of its own"
        );
        out.insert(series.to_string(), value.parse::<f64>().expect("a number"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_name_no_one() {
    let server = TestServer::start_with(|c| {
        c.metrics_token = Some(TOKEN.into());
        c.addr_per_sec = 20.0;
        c.addr_burst = 40.0;
    })
    .await;
    let (_a_dir, mut alice) =
        device(&server.url, &server.invite("alice"), DEFAULT_CIPHERSUITE).await;
    let (_b_dir, mut bob) = device(&server.url, &server.invite("bob"), DEFAULT_CIPHERSUITE).await;
    let name = "resus-7-metrics";
    sitrep_cli::chat_create(&mut alice, name, &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut bob).await.expect("bob joins");

    // Bob's WebSocket is open while Alice sends three: each is pushed.
    let mut ws = bob
        .remote()
        .expect("remote")
        .ws("/v1/ws", Duration::from_secs(5))
        .await
        .expect("ws");
    // The backlog (nothing left after the sync) and the subscription.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..3 {
        sitrep_cli::send(&mut alice, name, &format!("m{i}"))
            .await
            .expect("send");
    }
    let mut frames = 0;
    while frames < 3 {
        let f = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a push")
            .expect("open")
            .expect("frame");
        if f.is_binary() {
            frames += 1;
        }
    }
    // A made-up path must not become a label.
    let junk = "/v1/zz-9f8e7d6c5b4a";
    let r = reqwest::get(format!("{}{junk}", server.url))
        .await
        .expect("junk");
    assert_eq!(r.status(), 404);

    let (status, text) = scrape(&server.url, &[]).await;
    assert_eq!(status, 200, "{text}");
    if std::env::var_os("SHOW_METRICS").is_some() {
        eprintln!("{text}");
    }
    let m = parse(&text);
    assert_eq!(get(&m, "sitrep_sends_total{outcome=\"stored\"}"), 3.0);
    assert_eq!(get(&m, "sitrep_fanout_seconds_count"), 3.0);
    assert_eq!(
        get(
            &m,
            "sitrep_http_requests_total{route=\"/v1/groups/{group}/messages\",method=\"POST\",status=\"200\"}"
        ),
        3.0
    );
    assert_eq!(
        get(
            &m,
            "sitrep_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}"
        ),
        1.0
    );
    assert!(get(&m, "sitrep_deliveries_total{via=\"push\"}") >= 3.0);
    assert!(
        get(&m, "sitrep_deliveries_total{via=\"fetch\"}") >= 1.0,
        "bob's join was fetched"
    );
    assert_eq!(get(&m, "sitrep_connected_devices"), 1.0);
    assert_eq!(get(&m, "sitrep_websocket_connections"), 1.0);
    assert!(get(&m, "sitrep_commits_total") >= 1.0);
    assert_eq!(get(&m, "sitrep_devices{state=\"active\"}"), 2.0);
    assert_eq!(get(&m, "sitrep_devices{state=\"revoked\"}"), 0.0);
    assert!(get(&m, "sitrep_stored_entries") >= 1.0);
    // Every series of a histogram's buckets ends in +Inf.
    assert_eq!(get(&m, "sitrep_fanout_seconds_bucket{le=\"+Inf\"}"), 3.0);
    // No group id, no user, no device, no made-up path.
    let group_hex = hex::encode(
        &alice
            .client
            .conversation(name)
            .expect("conversation")
            .group_id,
    );
    for secret in [
        group_hex.as_str(),
        "alice",
        "bob",
        name,
        "zz-9f8e7d6c5b4a",
        alice.client.device_id(),
        bob.client.device_id(),
    ] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }

    // Anyone else (no Accept) gets the classic text format, the same counts.
    let resp = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("classic");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    let classic = parse_classic(&resp.text().await.expect("body"));
    assert_eq!(classic["sitrep_sends_total{outcome=\"stored\"}"], 3.0);
    assert_eq!(classic["sitrep_fanout_seconds_count"], 3.0);

    // Off loopback (here: through a proxy, which says so) the token is asked for.
    let proxied = [("x-forwarded-for", "203.0.113.9")];
    assert_eq!(scrape(&server.url, &proxied).await.0, 403);
    assert_eq!(
        scrape(&server.url, &[("forwarded", "for=203.0.113.9")])
            .await
            .0,
        403
    );
    let wrong = format!("Bearer {TOKEN}x");
    assert_eq!(
        scrape(
            &server.url,
            &[proxied[0], ("authorization", wrong.as_str())]
        )
        .await
        .0,
        403
    );
    let right = format!("Bearer {TOKEN}");
    let (status, _) = scrape(
        &server.url,
        &[proxied[0], ("authorization", right.as_str())],
    )
    .await;
    assert_eq!(status, 200);

    // A flood on a public route is refused, and counted.
    let client = reqwest::Client::new();
    let mut refused = 0;
    for _ in 0..80 {
        let r = client
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .expect("healthz");
        if r.status() == 429 {
            refused += 1;
        }
    }
    assert!(refused > 0);
    // The scrape shares the address's bucket: let it refill.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (status, text) = scrape(&server.url, &[]).await;
    assert_eq!(status, 200, "{text}");
    let m = parse(&text);
    assert!(get(&m, "sitrep_rate_limited_total{route=\"/healthz\"}") >= f64::from(refused));
    drop(ws);
    server.stop().await;
}
