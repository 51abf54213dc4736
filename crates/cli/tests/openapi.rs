//! The OpenAPI description (`/v1/openapi.json`) against the live server: it
//! names every route, and schemathesis (from PyPI, installed into
//! `target/st-venv` on first use) fuzzes every operation as an admin's
//! device and as the SCIM client, finding no 5xx and no answer that breaks
//! the description (status, content type, body schema).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use sitrep_core::DEFAULT_CIPHERSUITE;

/// Pinned: a new release may add checks; take it on purpose.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// Every route the router serves.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/enrol"),
    ("get", "/v1/policy"),
    ("post", "/v1/keypackages"),
    ("get", "/v1/keypackages/count"),
    ("post", "/v1/keypackages/claim"),
    ("post", "/v1/groups"),
    ("post", "/v1/groups/{group}/commit"),
    ("post", "/v1/groups/{group}/messages"),
    ("post", "/v1/groups/{group}/leave"),
    ("post", "/v1/groups/{group}/rejoin"),
    ("post", "/v1/groups/{group}/read"),
    ("get", "/v1/groups/{group}/status"),
    ("get", "/v1/groups/{group}/receipts"),
    ("get", "/v1/inbox"),
    ("post", "/v1/inbox/ack"),
    ("get", "/v1/devices"),
    ("post", "/v1/devices/{device}/wipe"),
    ("post", "/v1/audit"),
    ("get", "/v1/push/key"),
    ("post", "/v1/push/subscribe"),
    ("post", "/v1/push/unsubscribe"),
    ("get", "/v1/directory"),
    ("post", "/v1/roles/{role}/take"),
    ("post", "/v1/roles/{role}/handback"),
    ("get", "/v1/ws"),
    ("get", "/v1/admin/users"),
    ("post", "/v1/admin/users/{user}/disable"),
    ("get", "/v1/admin/devices"),
    ("post", "/v1/admin/devices/{device}/wipe"),
    ("post", "/v1/admin/invites"),
    ("get", "/v1/admin/policy"),
    ("post", "/v1/admin/policy"),
    ("get", "/v1/admin/audit"),
    ("get", "/v1/admin/admins"),
    ("post", "/v1/admin/admins/{user}"),
    ("post", "/v1/admin/admins/{user}/revoke"),
    ("post", "/v1/admin/scim/token"),
    ("post", "/v1/admin/session"),
    ("get", "/v1/admin/directory"),
    ("post", "/v1/admin/directory"),
    ("post", "/scim/v2/Users"),
    ("get", "/scim/v2/Users"),
    ("get", "/scim/v2/Users/{id}"),
    ("put", "/scim/v2/Users/{id}"),
    ("patch", "/scim/v2/Users/{id}"),
    ("delete", "/scim/v2/Users/{id}"),
    ("get", "/scim/v2/ServiceProviderConfig"),
];

/// `st` from `target/st-venv`, made with the machine's python3 and PyPI if
/// it is not there yet (or `SITREP_SCHEMATHESIS` naming one).
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("SITREP_SCHEMATHESIS") {
        return p.into();
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let venv = target.join("st-venv");
    let st = venv.join("bin/st");
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    let works = |st: &PathBuf| {
        ok(Command::new(st)
            .arg("--version")
            .stdout(std::process::Stdio::null()))
    };
    if works(&st) {
        return st;
    }
    // One test binary at a time makes it (others wait on the lock file).
    std::fs::create_dir_all(&target).expect("target");
    let lock = std::fs::File::create(target.join("st-venv.lock")).expect("lock");
    lock.lock().expect("lock");
    if !works(&st) {
        assert!(
            ok(Command::new("python3").arg("-m").arg("venv").arg(&venv)),
            "python3 -m venv failed: schemathesis needs python3 with venv"
        );
        assert!(
            ok(Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                SCHEMATHESIS
            ])),
            "pip install {SCHEMATHESIS} failed (PyPI unreachable?)"
        );
    }
    assert!(
        works(&st),
        "schemathesis is not runnable at {}",
        st.display()
    );
    st
}

fn fuzz(st: &PathBuf, url: &str, token: &str, filter: [&str; 2], report: &str) {
    let report_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/schemathesis")
        .join(report);
    std::fs::create_dir_all(&report_dir).expect("report dir");
    let out = Command::new(st)
        // Its example cache (.schemathesis/) goes there too, not in the tree.
        .current_dir(&report_dir)
        .arg("run")
        .arg(format!("{url}/v1/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "50",
            "--seed",
            "4242",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--no-color",
            "--warnings",
            "off",
            "--phases",
            "examples,coverage,fuzzing",
            "--continue-on-failure",
        ])
        .args(filter)
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--report")
        .arg("junit")
        .arg("--report-dir")
        .arg(&report_dir)
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    println!("{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_names_every_route_and_schemathesis_finds_nothing() {
    let st = tokio::task::spawn_blocking(schemathesis)
        .await
        .expect("install");
    let server = TestServer::start_with(|c| {
        c.rate_per_sec = 1e6;
        c.rate_burst = 1e6;
        c.addr_per_sec = 1e6;
        c.addr_burst = 1e6;
        c.enrol_per_sec = 1e6;
    })
    .await;
    let dir = server.dir.path().to_path_buf();
    let (_ad, mut alice) = device(&server.url, &server.invite("alice"), DEFAULT_CIPHERSUITE).await;
    let (_bd, mut bob) = device(&server.url, &server.invite("bob"), DEFAULT_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut alice, "resus", &["bob".into()], "warn")
        .await
        .expect("a real group");
    sitrep_cli::send(&mut alice, "resus", "hello")
        .await
        .expect("send");
    sitrep_cli::sync(&mut bob).await.expect("sync");
    sitrep_server::admin::grant(&dir, "admin:test", "alice").expect("grant");
    let scim = sitrep_server::scim::new_token(&dir, "admin:test").expect("scim token");

    // The description itself: OpenAPI 3.1, every route, every operation
    // with its refusals described.
    let doc: serde_json::Value = reqwest::get(format!("{}/v1/openapi.json", server.url))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        assert!(
            op["responses"]["4XX"].is_object(),
            "{method} {path} does not describe its refusals"
        );
    }
    let described: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().expect("item").len())
        .sum();
    assert_eq!(
        described,
        ROUTES.len(),
        "a described route the router lacks"
    );

    // SCIM first (the admin's run may make a new SCIM token).
    let url = server.url.clone();
    let (st2, url2) = (st.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        fuzz(
            &st2,
            &url2,
            &scim,
            ["--include-path-regex", "^/scim/"],
            "scim",
        )
    })
    .await
    .expect("scim fuzz");
    let token = alice.client.token().to_string();
    tokio::task::spawn_blocking(move || {
        fuzz(
            &st,
            &url,
            &token,
            ["--exclude-path-regex", "^/scim/"],
            "api",
        )
    })
    .await
    .expect("api fuzz");
    // Still serving, and the store still whole.
    let r = reqwest::get(format!("{}/readyz", server.url))
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    sitrep_server::audit_verify(&dir).expect("audit log intact");
    server.stop().await;
}
