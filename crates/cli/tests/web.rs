//! The web app as `sitrep serve` serves it: MIME types, the strict
//! Content-Security-Policy and the other headers on every file, gzip only
//! to a browser that takes it, the app's routes answered with its shell,
//! nothing outside the bundle (a path that climbs out is not a file), the
//! API's own 404s untouched, and the browser's WebSocket login (the token
//! as a subprotocol, on `/v1/ws` only).

mod common;

use common::*;
use sitrep_core::DEFAULT_CIPHERSUITE;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn bundle(dir: &std::path::Path) -> std::path::PathBuf {
    let dist = dir.join("dist");
    std::fs::create_dir_all(dist.join("assets")).expect("dirs");
    std::fs::write(
        dist.join("index.html"),
        "<!doctype html><title>Sitrep</title>",
    )
    .expect("w");
    std::fs::write(dist.join("assets/app-1a2b.js"), "console.log('app')").expect("w");
    std::fs::write(dist.join("assets/app-1a2b.js.gz"), b"\x1f\x8bGZIPPED").expect("w");
    std::fs::write(dist.join("assets/engine-3c4d.wasm"), b"\0asm\x01\0\0\0").expect("w");
    std::fs::write(
        dist.join("sw.js"),
        "self.addEventListener('push', () => {})",
    )
    .expect("w");
    std::fs::write(dist.join("manifest.webmanifest"), "{}").expect("w");
    // Beside the bundle, never served.
    std::fs::write(dir.join("secret.txt"), "org key").expect("w");
    dist
}

async fn get(url: &str, gzip: bool) -> reqwest::Response {
    let c = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client");
    let mut r = c.get(url);
    if gzip {
        r = r.header("accept-encoding", "gzip, br");
    }
    r.send().await.expect("answer")
}

#[tokio::test]
async fn the_bundle_is_served_with_its_types_and_a_strict_policy() {
    let t = TempDir::new("webdist");
    let dist = bundle(t.path());
    let s = TestServer::start_with(|c| c.web_dir = Some(dist.clone())).await;

    let r = get(&format!("{}/", s.url), true).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().expect("ascii");
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval'"),
        "{csp}"
    );
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("object-src 'none'"), "{csp}");
    for weak in [
        "unsafe-inline",
        "'unsafe-eval'",
        "*",
        "http:",
        "https:",
        "blob:",
    ] {
        assert!(!csp.contains(weak), "{weak} in {csp}");
    }
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(r.text().await.expect("body").contains("<title>Sitrep"));

    // Gzip only when asked for; hashed assets cached for good.
    let r = get(&format!("{}/assets/app-1a2b.js", s.url), true).await;
    assert_eq!(
        r.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .expect("ascii")
            .contains("immutable")
    );
    assert_eq!(&r.bytes().await.expect("b")[..], b"\x1f\x8bGZIPPED");
    let r = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client")
        .get(format!("{}/assets/app-1a2b.js", s.url))
        .header("accept-encoding", "br, gzip;q=0")
        .send()
        .await
        .expect("answer");
    assert!(
        r.headers().get("content-encoding").is_none(),
        "gzip;q=0 refuses gzip"
    );
    let r = get(&format!("{}/assets/app-1a2b.js", s.url), false).await;
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.text().await.expect("b"), "console.log('app')");
    // A .gz is not a file of its own.
    let r = get(&format!("{}/assets/app-1a2b.js.gz", s.url), false).await;
    assert_eq!(r.status(), 404);

    let r = get(&format!("{}/assets/engine-3c4d.wasm", s.url), false).await;
    assert_eq!(r.headers()["content-type"], "application/wasm");
    assert!(r.headers().contains_key("content-security-policy"));
    let r = get(&format!("{}/manifest.webmanifest", s.url), false).await;
    assert_eq!(r.headers()["content-type"], "application/manifest+json");
    let r = get(&format!("{}/sw.js", s.url), false).await;
    assert_eq!(r.headers()["cache-control"], "no-cache");

    // The app's own routes get the shell; a missing file does not.
    let r = get(&format!("{}/c/resus", s.url), false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let r = get(&format!("{}/assets/gone-0000.js", s.url), false).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");

    // Nothing outside the bundle, however the path is spelt (raw request
    // lines: an HTTP client would normalise them).
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/../../secret.txt",
        "/..%2fsecret.txt",
        "//secret.txt",
    ] {
        let (status, body) = raw_get(&s.url, path).await;
        assert!(!body.contains("org key"), "{path}: {status} {body}");
    }

    // The API's prefixes, and a doubled slash, keep the JSON 404.
    for path in [
        "//v1/inbox",
        "/scim",
        "/healthz/x",
        "/metrics/x",
        "/readyz/x",
        "/v1",
    ] {
        let (status, body) = raw_get(&s.url, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("application/json"), "{path}: {body}");
    }

    // The API keeps its JSON answers: an unknown API path, a POST.
    let r = get(&format!("{}/v1/nothing", s.url), false).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.expect("b").contains("no_route"));
    let r = reqwest::Client::new()
        .post(format!("{}/", s.url))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);
    assert!(r.text().await.expect("b").contains("no_route"));
    s.stop().await;
}

async fn raw_get(url: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = url.trim_start_matches("http://");
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[tokio::test]
async fn without_a_bundle_the_root_says_how_to_build_one() {
    let s = TestServer::start().await;
    let r = get(&format!("{}/", s.url), false).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("b").contains("web/build.sh"));
    let r = get(&format!("{}/index.html", s.url), false).await;
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn a_bundle_without_its_shell_stops_the_server_from_starting() {
    let t = TempDir::new("webempty");
    std::fs::create_dir_all(t.path().join("dist")).expect("dir");
    let dir = TempDir::new("server");
    sitrep_server::org::Org::open_or_create(dir.path(), None).expect("org");
    let mut config = sitrep_server::Config::new(dir.path());
    config.web_dir = Some(t.path().join("dist"));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let e = sitrep_server::run(l, config, async {})
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("index.html"), "{e}");
}

/// A browser's WebSocket sends the token as a subprotocol; the server
/// answers with `sitrep` (never echoing the token), refuses a wrong one,
/// and takes the subprotocol nowhere but `/v1/ws`.
#[tokio::test]
async fn the_browser_logs_in_to_its_websocket_with_a_subprotocol() {
    let s = TestServer::start().await;
    let (_d, p) = device(&s.url, &s.invite("alice"), DEFAULT_CIPHERSUITE).await;
    let token = p.client.token().to_string();
    let ws_url = format!("ws://{}/v1/ws", s.url.trim_start_matches("http://"));

    let mut req = ws_url.as_str().into_client_request().expect("req");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("sitrep, bearer.{token}").parse().expect("header"),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgraded");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "sitrep");

    let mut req = ws_url.as_str().into_client_request().expect("req");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "sitrep, bearer.not-a-token".parse().expect("header"),
    );
    let e = tokio_tungstenite::connect_async(req)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("401"), "{e}");

    // Elsewhere the header is not a login.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/inbox?after=0", s.url))
        .header("sec-websocket-protocol", format!("sitrep, bearer.{token}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    s.stop().await;
}
