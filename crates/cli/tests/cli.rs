//! The CLI contract scripts rely on, run as real processes against a real
//! `sitrep serve`: admin invite (code on the last line), enrol, chat create,
//! send (with the PID guard), sync, history --json, pid scan.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{Served, TempDir, free_port, serve_on};

fn sitrep(args: &[&str]) -> std::process::Output {
    common::cli(PASS, args).output().expect("run sitrep")
}

const PASS: &str = "cli-test-passcode";

fn ok(args: &[&str]) -> String {
    common::cli_ok(common::cli(PASS, args), args)
}

/// `sitrep serve` on a free loopback port; killed on drop.
fn serve(d: &str) -> (Served, String) {
    let port = free_port();
    (serve_on(d, port), format!("http://127.0.0.1:{port}"))
}

fn enrol(d: &str, url: &str, profile: &str, user: &str) {
    common::cli_enrol(PASS, d, url, profile, user);
}

/// Issue 6's CLI contract, as scripts use it.
#[test]
fn records_contract_through_the_cli() {
    let data = TempDir::new("cli-rec-data");
    let d = data.path().to_str().expect("path").to_string();
    let (_server, url) = serve(&d);
    let profiles = TempDir::new("cli-rec-profiles");
    let prof = |u: &str| profiles.path().join(u).to_str().expect("path").to_string();
    for u in ["alice", "bob", "records"] {
        enrol(&d, &url, &prof(u), u);
    }
    ok(&["admin", "records", "--data", &d, "--user", "records"]);
    ok(&[
        "--profile",
        &prof("alice"),
        "chat",
        "create",
        "resus",
        "--members",
        "bob",
        "--recorded",
    ]);
    ok(&["--profile", &prof("bob"), "sync"]);
    let info = ok(&["--profile", &prof("bob"), "chat", "info", "resus"]);
    assert!(
        info.contains("recorded by Sitrep Organisation Records"),
        "{info}"
    );
    let id = ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "resus",
        "NHS 9434765919 to CT, bed 4 is 401 023 2137",
        "--allow-pid",
    ]);
    let id = id.trim().to_string();
    ok(&["--profile", &prof("records"), "sync"]);
    let found = ok(&[
        "--profile",
        &prof("records"),
        "records",
        "search",
        "--identifier",
        "943 476 5919",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 1, "{found}");
    assert_eq!(lines[0]["id"], id.as_str());
    let refused = sitrep(&[
        "--profile",
        &prof("bob"),
        "records",
        "search",
        "--identifier",
        "9434765919",
    ]);
    assert!(!refused.status.success());
    let out = profiles.path().join("disclosure");
    let o = out.to_str().expect("path");
    ok(&[
        "--profile",
        &prof("records"),
        "records",
        "export",
        "--identifier",
        "9434765919",
        "--out",
        o,
    ]);
    let json = std::fs::read_to_string(out.join("export.json")).expect("export.json");
    assert!(
        json.contains("9434765919") && !json.contains("401 023 2137"),
        "{json}"
    );
    assert!(out.join("export.html").exists());
    ok(&["verify", o]);
    std::fs::write(out.join("export.json"), json.replace("to CT", "to MRI")).expect("edit");
    assert!(!sitrep(&["verify", o]).status.success());
    let fhir = profiles.path().join("fhir.json");
    let f = fhir.to_str().expect("path");
    ok(&[
        "--profile",
        &prof("alice"),
        "record",
        "transfer",
        "resus",
        "--message",
        &id,
        "--patient",
        "9434765919",
        "--out",
        f,
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&fhir).expect("fhir")).expect("json");
    assert_eq!(v["resourceType"], "Communication");
    let mine = profiles.path().join("mine");
    ok(&[
        "--profile",
        &prof("bob"),
        "export",
        "--out",
        mine.to_str().expect("path"),
    ]);
    assert!(mine.join("manifest.json").exists());
    let audit = ok(&["admin", "audit", "verify", "--data", &d]);
    assert!(audit.contains("verified"), "{audit}");
}

#[test]
fn three_staff_chat_through_the_cli() {
    let data = TempDir::new("cli-data");
    let d = data.path().to_str().expect("path").to_string();
    let (server, url) = serve(&d);
    let profiles = TempDir::new("cli-profiles");
    let prof = |u: &str| profiles.path().join(u).to_str().expect("path").to_string();
    for u in ["alice", "bob", "carol"] {
        let code = common::cli_invite(PASS, &d, u);
        assert_eq!(
            code.len(),
            39,
            "code on the last line, with its organisation: {code}"
        );
        ok(&[
            "--profile",
            &prof(u),
            "enrol",
            "--server",
            &url,
            "--code",
            &code,
        ]);
        // Single use.
        assert!(
            !sitrep(&[
                "--profile",
                &prof(&format!("{u}2")),
                "enrol",
                "--server",
                &url,
                "--code",
                &code
            ])
            .status
            .success()
        );
    }
    ok(&[
        "--profile",
        &prof("alice"),
        "chat",
        "create",
        "resus",
        "--members",
        "bob,carol",
    ]);
    let id = ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "resus",
        "Resus 2 ready",
    ]);
    assert_eq!(id.trim().len(), 32);
    // The PID guard holds back a message with an NHS number unless confirmed.
    let held = sitrep(&[
        "--profile",
        &prof("alice"),
        "send",
        "resus",
        "NHS 943 476 5919 to CT",
        "--json",
    ]);
    assert!(!held.status.success());
    assert!(String::from_utf8_lossy(&held.stderr).contains("nhs_number"));
    ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "resus",
        "NHS 943 476 5919 to CT",
        "--allow-pid",
    ]);
    let synced = ok(&["--profile", &prof("bob"), "sync"]);
    assert!(synced.contains("joined resus"), "{synced}");
    ok(&["--profile", &prof("bob"), "send", "resus", "On my way"]);
    ok(&["--profile", &prof("carol"), "sync"]);
    let hist = ok(&["--profile", &prof("carol"), "history", "resus", "--json"]);
    let texts: Vec<String> = hist
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object per line"))
        .filter(|v| v["kind"] == "text")
        .map(|v| v["body"].as_str().expect("body").to_string())
        .collect();
    assert_eq!(
        texts,
        ["Resus 2 ready", "NHS 943 476 5919 to CT", "On my way"]
    );
    // Who has seen a message: Bob's `sync` showed it, Carol has not synced.
    let id2 = ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "resus",
        "Bay 3 needs O-neg",
    ]);
    ok(&["--profile", &prof("bob"), "sync"]);
    let seen = ok(&["--profile", &prof("alice"), "seen", "resus", id2.trim()]);
    assert!(seen.contains("bob\tread "), "{seen}");
    assert!(seen.contains("carol\tnot delivered"), "{seen}");
    assert!(seen.contains("read by 1 of 2"), "{seen}");
    assert!(seen.contains("not seen by: carol"), "{seen}");
    let info = ok(&["--profile", &prof("carol"), "chat", "info", "resus"]);
    assert_eq!(
        info.lines().filter(|l| l.starts_with("member:")).count(),
        3,
        "{info}"
    );
    ok(&[
        "--profile",
        &prof("alice"),
        "chat",
        "remove",
        "resus",
        "carol",
    ]);
    // A wrong passcode opens nothing.
    let wrong = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["--profile", &prof("bob"), "history", "resus"])
        .env("SITREP_PASSCODE", "wrong-passcode")
        .output()
        .expect("run");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passcode"));
    drop(server);
}

#[test]
fn pid_scan_writes_one_json_object_per_input_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["pid", "scan"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let input = "Pt NHS 943 476 5919 in bay 3\nBP 120/80, bleep 2222, MI-0042\n\nemail j.smith@example.com\n";
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 4);
    let f0 = &lines[0]["findings"][0];
    assert_eq!(f0["kind"], "nhs_number");
    assert_eq!(
        (f0["start"].as_u64(), f0["end"].as_u64()),
        (Some(7), Some(19))
    );
    assert_eq!(lines[1]["findings"].as_array().map(Vec::len), Some(0));
    assert_eq!(lines[2]["findings"].as_array().map(Vec::len), Some(0));
    assert_eq!(lines[3]["findings"][0]["kind"], "email");
}

/// An organisation is set up on purpose: `serve` and every `admin` command
/// refuse a data directory that was never initialised (a mistyped `--data`
/// creates nothing) and say how to create one; `init` creates it once.
#[test]
fn an_organisation_is_created_by_init_and_never_by_a_mistyped_data_directory() {
    let tmp = TempDir::new("init");
    let d = tmp.path().join("trust");
    let d = d.to_str().expect("path");
    let typo = tmp.path().join("trsut");
    let typo = typo.to_str().expect("path");
    for args in [
        vec![
            "admin", "invite", "--data", typo, "--user", "alice", "--name", "A", "--role", "x",
        ],
        vec!["admin", "policy", "show", "--data", typo],
        vec!["admin", "audit", "verify", "--data", typo],
        vec!["serve", "--data", typo, "--listen", "127.0.0.1:0"],
    ] {
        let out = sitrep(&args);
        assert!(!out.status.success(), "{args:?} must refuse");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("holds no Sitrep organisation") && err.contains("sitrep init"),
            "{args:?}: {err}"
        );
        assert!(
            !std::path::Path::new(typo).join("org.key").exists()
                && !std::path::Path::new(typo).join("sitrep.db").exists(),
            "{args:?} created an organisation"
        );
    }
    let out = ok(&["init", "--data", d, "--org", "Northfield NHS Trust"]);
    assert!(
        out.contains("Northfield NHS Trust") && out.contains("fingerprint"),
        "{out}"
    );
    let again = sitrep(&["init", "--data", d, "--org", "Another"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let port = free_port();
    let _server = serve_on(d, port);
    let url = format!("http://127.0.0.1:{port}");
    let profiles = TempDir::new("init-profiles");
    let prof = profiles.path().join("alice");
    let out = common::cli_enrol(PASS, d, &url, prof.to_str().expect("path"), "alice");
    assert!(
        out.contains("Northfield NHS Trust"),
        "the name init gave: {out}"
    );
}

/// A trust's admin sees its users and devices (with when each was last
/// seen) and disables a leaver: every device revoked and out of every
/// conversation, open enrolment codes cancelled, in the audit log.
#[test]
fn admin_lists_users_and_devices_and_disables_a_leaver() {
    let data = TempDir::new("leaver-data");
    let d = data.path().to_str().expect("path").to_string();
    let (_server, url) = serve(&d);
    let profiles = TempDir::new("leaver-profiles");
    let prof = |u: &str| profiles.path().join(u).to_str().expect("path").to_string();
    common::alice_and_bob_in_ward(PASS, &d, &url, prof);
    let spare = common::cli_invite(PASS, &d, "bob");
    let users = ok(&["admin", "users", "--data", &d]);
    let bob_row = users
        .lines()
        .find(|l| l.starts_with("bob"))
        .expect("bob listed");
    assert!(bob_row.contains("1 active"), "{users}");
    assert!(users.lines().any(|l| l.starts_with("alice")), "{users}");
    // Last seen is written within a second or so of a request.
    let mut seen = String::new();
    for _ in 0..50 {
        seen = ok(&["admin", "devices", "bob", "--data", &d]);
        if !seen.lines().nth(1).expect("a row").contains("never") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !seen.lines().nth(1).expect("row").contains("never"),
        "{seen}"
    );
    assert_eq!(seen.lines().count(), 2, "only bob's device: {seen}");

    let out = ok(&["admin", "user", "disable", "bob", "--data", &d]);
    assert!(
        out.contains("1 device revoked") && out.contains("1 enrolment code cancelled"),
        "{out}"
    );
    let nobody = sitrep(&["admin", "user", "disable", "nobody", "--data", &d]);
    assert!(!nobody.status.success());
    // Bob's device learns it was wiped; his spare code no longer enrols.
    let b = sitrep(&["--profile", &prof("bob"), "sync"]);
    assert!(!b.status.success());
    assert!(
        String::from_utf8_lossy(&b.stderr).contains("wiped"),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    let again = sitrep(&[
        "--profile",
        &prof("bob2"),
        "enrol",
        "--server",
        &url,
        "--code",
        &spare,
    ]);
    assert!(!again.status.success(), "a cancelled code enrols nobody");
    // Alice's conversation no longer has bob (her syncs commit the removal).
    let mut info = String::new();
    for _ in 0..20 {
        ok(&["--profile", &prof("alice"), "sync"]);
        info = ok(&["--profile", &prof("alice"), "chat", "info", "ward"]);
        if !info.contains("(bob)") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(!info.contains("(bob)"), "{info}");
    let users = ok(&["admin", "users", "--data", &d]);
    assert!(
        users
            .lines()
            .any(|l| l.starts_with("bob") && l.contains("disabled")),
        "{users}"
    );
    let audit = ok(&["admin", "audit", "show", "--data", &d]);
    assert!(audit.contains("user.disable"), "{audit}");
}

/// The server's log: start and shutdown (on SIGTERM, as a service manager
/// stops it) are logged; no colour codes when not a terminal; one JSON
/// object per line with SITREP_LOG_FORMAT=json.
#[test]
fn the_server_logs_start_and_shutdown_plainly_or_as_json() {
    for format in ["text", "json"] {
        let data = TempDir::new("logs");
        let d = data.path().to_str().expect("path").to_string();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_sitrep"))
            .args([
                "serve",
                "--init",
                "--data",
                &d,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env_remove("SITREP_LOG")
            .env("SITREP_LOG_FORMAT", format)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve");
        assert!(common::listening(port), "the server started");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let out = child.wait_with_output().expect("exits");
        assert!(out.status.success(), "a clean shutdown: {:?}", out.status);
        let log = String::from_utf8(out.stderr).expect("utf8");
        assert!(
            !log.contains('\u{1b}'),
            "no colour codes when not a terminal: {log}"
        );
        assert!(log.contains("sitrep serve started"), "{log}");
        assert!(log.contains("sitrep serve stopped"), "{log}");
        if format == "json" {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(line).expect("a JSON object per line");
                assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            }
        }
    }
}

/// `serve --config FILE`: the file's settings are used (here the address);
/// a misspelt key is an error naming it, and nothing starts.
#[test]
fn serve_takes_its_settings_from_a_config_file_and_refuses_unknown_keys() {
    let data = TempDir::new("config");
    let d = data.path().join("trust");
    let file = data.path().join("sitrep.toml");
    let port = free_port();
    std::fs::write(
        &file,
        format!(
            "data = {:?}\nlisten = \"127.0.0.1:{port}\"\n[limits]\nmax_message_bytes = 65536\n[log]\nformat = \"json\"\n",
            d.to_str().expect("path")
        ),
    )
    .expect("write");
    let bad = data.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_mesage_bytes = 1\n").expect("write");
    let out = sitrep(&["serve", "--init", "--config", bad.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_mesage_bytes"),
        "names the unknown key: {err}"
    );

    let child = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["serve", "--init", "--config", file.to_str().expect("path")])
        .env_remove("SITREP_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    assert!(common::listening(port), "listening where the file says");
    assert!(d.join("org.key").exists(), "the file's data directory");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    let out = child.wait_with_output().expect("exits");
    let log = String::from_utf8(out.stderr).expect("utf8");
    let first = log.lines().next().expect("a log line");
    serde_json::from_str::<serde_json::Value>(first).expect("the file's log format: json");
}

/// A backup taken while the server runs and messages are being sent, then
/// restored: every message acknowledged before the backup is there; the
/// log's positions never go back (a device that saw later ones still
/// receives what comes after the restore); a restore is refused while the
/// server runs and for another organisation's directory.
#[test]
fn backup_under_load_then_restore_keeps_every_acknowledged_message() {
    let data = TempDir::new("backup-data");
    let d = data.path().join("trust");
    let d = d.to_str().expect("path").to_string();
    let out = data.path().join("backup.db");
    let out = out.to_str().expect("path").to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = serve_on(&d, port);
    let profiles = TempDir::new("backup-profiles");
    let prof = |u: &str| profiles.path().join(u).to_str().expect("path").to_string();
    common::alice_and_bob_in_ward(PASS, &d, &url, prof);
    let before: Vec<String> = (0..6).map(|i| format!("before backup {i}")).collect();
    for t in &before {
        ok(&["--profile", &prof("alice"), "send", "ward", t]);
    }
    // Under load: Alice keeps sending while the backup is taken.
    let alice = prof("alice");
    let load = std::thread::spawn(move || {
        for i in 0..4 {
            let _ = common::cli(
                PASS,
                &["--profile", &alice, "send", "ward", &format!("during {i}")],
            )
            .output();
        }
    });
    let b = ok(&["admin", "backup", "--data", &d, "--out", &out]);
    assert!(b.contains("backup written"), "{b}");
    load.join().expect("load");
    // Bob sees everything, including what came after the backup (so his
    // device has seen positions the backup does not hold).
    ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "ward",
        "after the backup",
    ]);
    ok(&["--profile", &prof("bob"), "sync"]);
    let refused = sitrep(&["admin", "restore", "--data", &d, "--from", &out]);
    assert!(!refused.status.success(), "not while the server runs");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it"));
    let other = TempDir::new("backup-other");
    let o = other.path().to_str().expect("path");
    ok(&["init", "--data", o, "--org", "Another Trust"]);
    let wrong = sitrep(&["admin", "restore", "--data", o, "--from", &out]);
    assert!(!wrong.status.success(), "another organisation");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("another organisation"));

    drop(server);
    let r = ok(&["admin", "restore", "--data", &d, "--from", &out]);
    assert!(r.contains("restored"), "{r}");
    let _server = serve_on(&d, port);
    ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "ward",
        "after the restore",
    ]);
    ok(&["--profile", &prof("bob"), "sync"]);
    let hist = ok(&["--profile", &prof("bob"), "history", "ward", "--json"]);
    let texts: Vec<String> = hist
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter(|v| v["kind"] == "text")
        .map(|v| v["body"].as_str().expect("body").to_string())
        .collect();
    for t in &before {
        assert!(
            texts.contains(t),
            "{t} acknowledged before the backup: {texts:?}"
        );
    }
    assert!(
        texts.iter().any(|t| t == "after the restore"),
        "positions did not go back: {texts:?}"
    );
    let audit = ok(&["admin", "audit", "show", "--data", &d]);
    assert!(
        audit.contains("backup") && audit.contains("restore"),
        "{audit}"
    );
}
