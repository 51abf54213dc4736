//! The web app, served at `/` on the API's origin.
//!
//! The built bundle (`web/dist`: `web/build.sh`) is read into memory once at
//! start, so a request names an entry in a map, never a path on disk (no
//! traversal, no half-written file while a new build lands). Each file goes
//! out with its MIME type, gzip where the bundle has a `.gz` beside it and
//! the browser takes it, and the same strict headers: a Content-Security-
//! Policy that allows only this origin, with `'wasm-unsafe-eval'` for the
//! engine and nothing inline; no framing, no referrer, no sniffing.
//! A path with no file extension that is not in the bundle is the app's own
//! route: it gets `index.html`.

use std::collections::HashMap;
use std::path::Path;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every page: this origin only; scripts
/// from files (no inline, no eval) and wasm compilation; no plugins, no
/// framing, no base or form target elsewhere.
pub const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; worker-src 'self'; \
manifest-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
frame-ancestors 'none'; form-action 'none'";

/// Largest bundle read at start (the wasm engine is most of it).
const MAX_BUNDLE: u64 = 64 * 1024 * 1024;

struct File {
    body: Bytes,
    gzip: Option<Bytes>,
    mime: &'static str,
}

/// The bundle in memory.
pub struct Bundle {
    files: HashMap<String, File>,
}

/// The MIME type for a file name.
pub fn mime(name: &str) -> &'static str {
    match name.rsplit_once('.').map_or("", |(_, e)| e) {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

impl Bundle {
    /// Read `dir` (recursively). It must hold `index.html`.
    pub fn load(dir: &Path) -> std::io::Result<Bundle> {
        let mut files = HashMap::new();
        let mut total = 0u64;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let e = e?;
                let ty = e.file_type()?;
                let p = e.path();
                if ty.is_dir() {
                    stack.push(p);
                    continue;
                }
                if !ty.is_file() {
                    continue;
                }
                let rel = p
                    .strip_prefix(dir)
                    .map_err(std::io::Error::other)?
                    .to_string_lossy()
                    .replace('\\', "/");
                if rel.ends_with(".gz") {
                    continue;
                }
                let body = std::fs::read(&p)?;
                total += body.len() as u64;
                let gz = p.with_file_name(format!(
                    "{}.gz",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ));
                let gzip = std::fs::read(gz).ok().map(Bytes::from);
                if total > MAX_BUNDLE {
                    return Err(std::io::Error::other("the web bundle is over 64 MiB"));
                }
                files.insert(
                    rel.clone(),
                    File {
                        body: Bytes::from(body),
                        gzip,
                        mime: mime(&rel),
                    },
                );
            }
        }
        if !files.contains_key("index.html") {
            return Err(std::io::Error::other(format!(
                "{} holds no index.html: build the web app first (web/build.sh)",
                dir.display()
            )));
        }
        Ok(Bundle { files })
    }

    /// Files in the bundle.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the bundle is empty (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The answer to `GET path`, or `None` when the path is not the app's.
    pub fn serve(&self, path: &str, headers: &HeaderMap) -> Option<Response> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "index.html" } else { rel };
        let (name, file) = match self.files.get_key_value(rel) {
            Some((n, f)) => (n.as_str(), f),
            // The app's own routes (no extension): the shell.
            None if !rel.rsplit('/').next().unwrap_or("").contains('.') => {
                ("index.html", &self.files["index.html"])
            }
            None => return None,
        };
        let gzip_ok = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(accepts_gzip);
        let (body, gz) = match (&file.gzip, gzip_ok) {
            (Some(g), true) => (g.clone(), true),
            _ => (file.body.clone(), false),
        };
        // Hashed names never change; the shell, the service worker and the
        // manifest are asked again each time.
        let cache = if name.starts_with("assets/") {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        let mut r = Response::new(Body::from(body));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.mime));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        if gz {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        secure(h);
        if name == "sw.js" {
            h.insert("service-worker-allowed", HeaderValue::from_static("/"));
        }
        Some(r)
    }
}

/// Whether an `Accept-Encoding` value takes gzip (`gzip;q=0` refuses it).
pub fn accepts_gzip(v: &str) -> bool {
    v.split(',').any(|e| {
        let mut parts = e.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        coding.eq_ignore_ascii_case("gzip") && q > 0.0
    })
}

/// The headers every page of the app carries.
pub fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
}

/// `GET /` without a bundle: say how to get one (a page, not an API
/// error: a person opened it).
pub fn not_built() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "This Sitrep server runs without its web app: build it (web/build.sh) and start \
         `sitrep serve --web web/dist`.\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_unless_refused() {
        for yes in [
            "gzip",
            "gzip, deflate, br",
            "br;q=1, GZIP;q=0.5",
            "gzip;q=0.001",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in ["", "br", "gzip;q=0", "gzip; q=0.0", "x-gzip", "identity"] {
            assert!(!accepts_gzip(no), "{no}");
        }
    }
}
