//! Administration over the API (`sitrep admin ... --server URL`): an admin's
//! own enrolled device with an admin grant, its two-step code where the
//! policy asks, and the signed audit log naming who did what. Tried as the
//! admin, as an ordinary member, with no token, with wrong, reused and
//! guessed codes, and against a leaver mid-conversation.

mod common;

use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{PASSCODE, TempDir, TestServer, cli, cli_enrol, cli_ok, device, free_port, serve_on};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn code_of(uri: &str, at: u64) -> String {
    totp_rs::TOTP::from_url(uri)
        .expect("otpauth URI")
        .generate(at)
}

/// Every admin route, with a body where it takes one.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/admin/users"),
    ("GET", "/v1/admin/devices"),
    ("GET", "/v1/admin/devices?user=alice"),
    ("POST", "/v1/admin/users/alice/disable"),
    ("POST", "/v1/admin/devices/x/wipe"),
    ("POST", "/v1/admin/invites"),
    ("GET", "/v1/admin/policy"),
    ("POST", "/v1/admin/policy"),
    ("GET", "/v1/admin/audit"),
    ("GET", "/v1/admin/admins"),
    ("POST", "/v1/admin/admins/bob"),
    ("POST", "/v1/admin/admins/alice/revoke"),
];

async fn raw(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    totp: Option<&str>,
) -> (u16, serde_json::Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = reqwest::Client::new().request(m.clone(), format!("{url}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(c) = totp {
        r = r.header("x-sitrep-totp", c);
    }
    if m == reqwest::Method::POST {
        let body = if path.ends_with("/invites") {
            serde_json::json!({"user_id": "mallory", "display_name": "M", "role": "r", "ttl_secs": 60})
        } else if path.ends_with("/policy") {
            serde_json::to_value(sitrep_wire::policy::OrgPolicy::default()).expect("json")
        } else {
            serde_json::json!({})
        };
        r = r.json(&body);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_granted_admin_gets_in_and_two_step_codes_cannot_be_guessed_or_reused() {
    let server = TestServer::start().await;
    let (_a, alice) = device(
        &server.url,
        &server.invite("alice"),
        sitrep_core::INTEROP_CIPHERSUITE,
    )
    .await;
    let (_b, bob) = device(
        &server.url,
        &server.invite("bob"),
        sitrep_core::INTEROP_CIPHERSUITE,
    )
    .await;
    let dir = server.dir.path();

    // No token, an ordinary member: nothing, and nothing done.
    for (m, p) in ROUTES {
        let (s, _) = raw(&server.url, m, p, None, None).await;
        assert_eq!(s, 401, "{m} {p} without a token");
        let (s, body) = raw(&server.url, m, p, Some(bob.client.token()), None).await;
        assert_eq!(s, 403, "{m} {p} as an ordinary member: {body}");
        assert_eq!(body["error"], "not_admin");
    }
    assert!(sitrep_server::admin::list(dir).expect("admins").is_empty());
    assert!(
        sitrep_server::list_users(dir)
            .expect("users")
            .iter()
            .all(|u| u.user_id != "mallory"),
        "a refused invite was made"
    );

    // Granted (on the server's machine): alice gets in; the grant is audited.
    let g = sitrep_server::admin::grant(dir, "admin:root", "alice")
        .expect("grant")
        .expect("alice exists");
    assert!(
        sitrep_server::admin::grant(dir, "admin:root", "nobody")
            .expect("grant")
            .is_none()
    );
    let (s, users) = raw(
        &server.url,
        "GET",
        "/v1/admin/users",
        Some(alice.client.token()),
        None,
    )
    .await;
    assert_eq!(s, 200, "{users}");
    assert_eq!(users.as_array().map(Vec::len), Some(2));

    // Bad input is refused plainly.
    for (m, p) in [
        ("POST", "/v1/admin/users/..%2F..%2Fx/disable"),
        ("GET", "/v1/admin/devices?user=a%20b"),
        ("POST", "/v1/admin/users/nobody/disable"),
    ] {
        let (s, body) = raw(&server.url, m, p, Some(alice.client.token()), None).await;
        assert!((400..500).contains(&s), "{m} {p}: {s} {body}");
    }
    let r = reqwest::Client::new()
        .post(format!("{}/v1/admin/invites", server.url))
        .bearer_auth(alice.client.token())
        .json(&serde_json::json!({"user_id": "x", "display_name": "", "role": "r", "ttl_secs": 60}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/admin/policy", server.url))
        .bearer_auth(alice.client.token())
        .json(&serde_json::json!({"lock_after_idle_secs": 1}))
        .send()
        .await
        .expect("send");
    assert!(r.status().is_client_error(), "a partial policy was taken");

    // The policy asks for two-step verification: now every admin request
    // needs the grant's current code.
    let org = sitrep_server::org::Org::open(dir).expect("org");
    let mut p = sitrep_server::show_policy(dir, &org).expect("policy");
    p.two_step_required = true;
    sitrep_server::set_policy(dir, &org, p, "admin:root").expect("set");
    let tok = Some(alice.client.token());
    let (s, body) = raw(&server.url, "GET", "/v1/admin/users", tok, None).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("totp_required")));
    let good = code_of(&g.otpauth_uri, now());
    let (s, _) = raw(&server.url, "GET", "/v1/admin/users", tok, Some(&good)).await;
    assert_eq!(s, 200);
    // The same code again (someone who saw it): refused.
    let (s, body) = raw(&server.url, "GET", "/v1/admin/users", tok, Some(&good)).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("totp_invalid")));
    // Guessing: five wrong codes (the replay above was one) lock the
    // grant, and then even the right code is refused for a while.
    for guess in ["000000", "111111", "222222", "333333"] {
        if guess == code_of(&g.otpauth_uri, now()) {
            continue;
        }
        let (s, _) = raw(&server.url, "GET", "/v1/admin/users", tok, Some(guess)).await;
        assert_eq!(s, 403);
    }
    let next = code_of(&g.otpauth_uri, now() + 30);
    let (s, body) = raw(&server.url, "GET", "/v1/admin/users", tok, Some(&next)).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (429, Some("totp_locked")),
        "{body}"
    );

    // Another user's code does not open alice's grant; a re-grant resets it.
    let g2 = sitrep_server::admin::grant(dir, "admin:root", "alice")
        .expect("grant")
        .expect("alice");
    assert_ne!(g.otpauth_uri, g2.otpauth_uri);
    let (s, _) = raw(
        &server.url,
        "GET",
        "/v1/admin/users",
        tok,
        Some(&code_of(&g2.otpauth_uri, now())),
    )
    .await;
    assert_eq!(s, 200);

    // Ungranted: out again.
    assert!(sitrep_server::admin::ungrant(dir, "admin:root", "alice").expect("ungrant"));
    let (s, body) = raw(
        &server.url,
        "GET",
        "/v1/admin/users",
        tok,
        Some(&code_of(&g2.otpauth_uri, now() + 30)),
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (403, Some("not_admin")));
    let actions: Vec<String> = sitrep_server::audit_entries(dir)
        .expect("audit")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.iter().filter(|a| *a == "admin.grant").count() == 2,
        "{actions:?}"
    );
    assert!(actions.contains(&"admin.revoke".to_string()), "{actions:?}");
    server.stop().await;
}

/// The whole thing through the CLI, as a trust's admin does it from their
/// own machine.
#[test]
fn the_admin_runs_every_command_from_their_device_and_a_leaver_reads_nothing_more() {
    let work = TempDir::new("admin-api");
    let d = work.path().join("server");
    let d = d.to_str().expect("path");
    let port = free_port();
    let _server = serve_on(d, port);
    let url = format!("http://127.0.0.1:{port}");
    let prof = |u: &str| work.path().join(u).to_str().expect("path").to_string();
    let (pa, pb) = (prof("alice"), prof("bob"));
    let enrol_out = cli_enrol(PASSCODE, d, &url, &pa, "alice");
    let device_uri = enrol_out
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .expect("alice's device TOTP")
        .to_string();
    cli_enrol(PASSCODE, d, &url, &pb, "bob");
    let run = |args: &[&str], envs: &[(&str, String)]| {
        let mut c = cli(PASSCODE, args);
        for (k, v) in envs {
            c.env(k, v);
        }
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run")
    };
    let ok = |args: &[&str], envs: &[(&str, String)]| {
        let out = run(args, envs);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    };
    let args = [
        "--profile",
        &pa,
        "chat",
        "create",
        "ward",
        "--members",
        "bob",
    ];
    cli_ok(cli(PASSCODE, &args), &args);
    let args = ["--profile", &pb, "sync"];
    cli_ok(cli(PASSCODE, &args), &args);

    // Without a grant, alice's device is refused.
    let out = run(&["--profile", &pa, "admin", "users", "--server", &url], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin grant"));
    // --server with the wrong profile's server is refused before anything.
    let out = run(
        &[
            "--profile",
            &pa,
            "admin",
            "users",
            "--server",
            "http://127.0.0.1:1",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("enrolled with"));
    // --data and --server together are a usage error.
    let out = run(&["admin", "users", "--data", d, "--server", &url], &[]);
    assert!(!out.status.success());

    let grant = ok(&["admin", "grant", "alice", "--data", d], &[]);
    let admin_uri = grant
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .expect("grant's TOTP")
        .to_string();
    let users = ok(&["--profile", &pa, "admin", "users", "--server", &url], &[]);
    assert!(users.contains("bob") && users.contains("alice"), "{users}");
    let admins = ok(
        &["--profile", &pa, "admin", "admins", "--server", &url],
        &[],
    );
    assert!(admins.contains("alice"), "{admins}");
    let devices = ok(
        &[
            "--profile",
            &pa,
            "admin",
            "devices",
            "bob",
            "--server",
            &url,
            "--json",
        ],
        &[],
    );
    assert_eq!(devices.lines().count(), 1, "{devices}");

    // An invitation made remotely enrols carol.
    let out = ok(
        &[
            "--profile",
            &pa,
            "admin",
            "invite",
            "--server",
            &url,
            "--user",
            "carol",
            "--name",
            "Dr Carol",
            "--role",
            "FY1",
        ],
        &[],
    );
    let code = out.lines().last().expect("code").trim().to_string();
    let pc = prof("carol");
    ok(
        &["--profile", &pc, "enrol", "--server", &url, "--code", &code],
        &[],
    );

    // The policy, remotely: two-step verification on. From now on alice's
    // unlock needs her device code, and each admin request the grant's.
    let set = ok(
        &[
            "--profile",
            &pa,
            "admin",
            "policy",
            "set",
            "--server",
            &url,
            "--two-step",
            "true",
        ],
        &[],
    );
    assert!(
        set.contains("\"two_step_required\": true") || set.contains("\"two_step_required\":true"),
        "{set}"
    );
    let device_code = || ("SITREP_TOTP", code_of(&device_uri, now()));
    let out = run(
        &["--profile", &pa, "admin", "users", "--server", &url],
        &[device_code()],
    );
    assert!(!out.status.success(), "no admin code asked for");
    assert!(String::from_utf8_lossy(&out.stderr).contains("SITREP_ADMIN_TOTP"));
    let out = run(
        &["--profile", &pa, "admin", "users", "--server", &url],
        &[device_code(), ("SITREP_ADMIN_TOTP", "123456".into())],
    );
    assert!(!out.status.success(), "a wrong admin code was taken");

    // The leaver: disabled from alice's machine mid-conversation.
    let admin_code = ("SITREP_ADMIN_TOTP", code_of(&admin_uri, now()));
    let out = ok(
        &[
            "--profile",
            &pa,
            "admin",
            "user",
            "disable",
            "bob",
            "--server",
            &url,
        ],
        &[device_code(), admin_code],
    );
    assert!(out.contains("1 device"), "{out}");
    let args = ["--profile", &pa, "send", "ward", "after bob left"];
    ok(&args, &[device_code()]);
    let out = run(&["--profile", &pb, "sync"], &[]);
    assert!(!out.status.success(), "a disabled device synced");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("after bob left"));
    // Its local data is gone; nothing later can be read from it.
    for f in common::files_under(std::path::Path::new(&pb)) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!common::contains(&bytes, b"after bob left"), "{f:?}");
    }

    // The audit log (read remotely, next step's code: each code is single use)
    // names alice's device for what she did, and the OS user for the grant.
    let later = ("SITREP_ADMIN_TOTP", code_of(&admin_uri, now() + 30));
    let log = ok(
        &[
            "--profile",
            &pa,
            "admin",
            "audit",
            "show",
            "--server",
            &url,
            "--json",
        ],
        &[device_code(), later],
    );
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let actor_of = |action: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["actor"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for action in ["user.disable", "invite", "policy.set"] {
        let actors = actor_of(action);
        assert!(
            actors.iter().any(|a| a.starts_with("admin:alice/")),
            "{action}: {actors:?}"
        );
    }
    assert!(
        actor_of("admin.grant")
            .iter()
            .all(|a| !a.starts_with("admin:alice/"))
    );
    let args = ["admin", "audit", "verify", "--data", d];
    cli_ok(cli(PASSCODE, &args), &args);

    // A command of several requests (read the directory, write it back, read
    // the audit log to verify it) needs one code: it opens a session. The
    // next step's code, as each code is single use.
    // (Into the next step, so the step after it is both unused and in the window.)
    std::thread::sleep(std::time::Duration::from_secs(30 - now() % 30 + 1));
    let next = ("SITREP_ADMIN_TOTP", code_of(&admin_uri, now() + 30));
    let team = [
        "--profile",
        &pa,
        "admin",
        "team",
        "--id",
        "ward-team",
        "--members",
        "alice,carol",
        "--server",
        &url,
    ];
    ok(&team, &[device_code(), next.clone()]);
    // That code is spent: a second command with it is refused.
    let out = run(&team, &[device_code(), next]);
    assert!(!out.status.success(), "a used code opened a second session");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("totp_invalid")
            || String::from_utf8_lossy(&out.stderr).contains("already used"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
