//! Bulk enrolment from a staff CSV, and the directory and audit commands
//! from the admin's own device (`--server`), through the real binary
//! against a real `sitrep serve`: codes that enrol, a re-run that skips who
//! is done, a bad file that creates nothing, a member without a grant
//! refused, and a tampered audit log caught by the admin's device.

mod common;

use std::process::Stdio;

use common::{PASSCODE, TempDir, cli, cli_enrol, free_port, serve_on};

fn run(args: &[&str]) -> std::process::Output {
    cli(PASSCODE, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bulk_codes_enrol_reruns_skip_and_the_admin_edits_the_directory_remotely() {
    let work = TempDir::new("bulk");
    let d = work.path().join("server");
    let d = d.to_str().expect("path");
    let port = free_port();
    let _server = serve_on(d, port);
    let url = format!("http://127.0.0.1:{port}");
    let prof = |u: &str| work.path().join(u).to_str().expect("path").to_string();
    let file = |n: &str| work.path().join(n).to_str().expect("path").to_string();
    let (pa, pb) = (prof("alice"), prof("bob"));
    cli_enrol(PASSCODE, d, &url, &pa, "alice");
    cli_enrol(PASSCODE, d, &url, &pb, "bob");
    ok(&["admin", "grant", "alice", "--data", d]);
    let users = |d: &str| {
        ok(&["admin", "users", "--data", d, "--json"])
            .lines()
            .count()
    };
    let before = users(d);

    // A file with one bad line creates nothing, not even the codes file.
    let bad = file("bad.csv");
    std::fs::write(
        &bad,
        "user,name,role,team\ncarol,Carol C,Nurse,ed\nd ave,Dave D,Nurse,ed\n",
    )
    .expect("write");
    let e = fails(&[
        "--profile",
        &pa,
        "admin",
        "bulk-invite",
        "--csv",
        &bad,
        "--out",
        &file("never.csv"),
        "--server",
        &url,
    ]);
    assert!(e.contains("line 3"), "{e}");
    assert!(!std::path::Path::new(&file("never.csv")).exists());
    assert_eq!(users(d), before);

    // Bob leaves: a later staff list that still names him gives him no code.
    ok(&["admin", "user", "disable", "bob", "--data", d]);
    // The staff list as a spreadsheet exports it; alice is enrolled already.
    let staff = file("staff.csv");
    std::fs::write(
        &staff,
        "\u{feff}user,name,role,team\r\ncarol,\"Carter, Carol\",Charge nurse,ed-seniors\r\ndave,Dave D,Registrar,ed-seniors\r\nerin,Erin E,Porter,\r\nalice,Dr alice,ED consultant,\r\nbob,Bob B,Porter,\r\n",
    )
    .expect("write");
    let codes = file("codes.csv");
    let out = ok(&[
        "--profile",
        &pa,
        "admin",
        "bulk-invite",
        "--csv",
        &staff,
        "--out",
        &codes,
        "--server",
        &url,
    ]);
    assert!(out.contains("3 codes"), "{out}");
    assert!(out.contains("skipped: alice"), "{out}");
    assert!(
        out.contains("no code (use admin invite if meant): bob"),
        "{out}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&codes)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "codes are for the admin's eyes");
    }
    let text = std::fs::read_to_string(&codes).expect("codes");
    let mut rows = csv_rows(&text);
    assert_eq!(
        rows.remove(0)[..5],
        ["user", "name", "role", "team", "code"]
    );
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0][1], "Carter, Carol");
    // Each code enrols its person.
    let carol = rows.iter().find(|r| r[0] == "carol").expect("carol");
    let pc = prof("carol");
    let enrolled = ok(&[
        "--profile",
        &pc,
        "enrol",
        "--server",
        &url,
        "--code",
        &carol[4],
    ]);
    assert!(enrolled.contains("carol"), "{enrolled}");
    // A second run makes nobody a second code, and never writes over a file.
    let e = fails(&[
        "--profile",
        &pa,
        "admin",
        "bulk-invite",
        "--csv",
        &staff,
        "--out",
        &codes,
        "--server",
        &url,
    ]);
    assert!(e.contains("must not exist"), "{e}");
    let again = ok(&[
        "admin",
        "bulk-invite",
        "--csv",
        &staff,
        "--out",
        &file("codes2.csv"),
        "--data",
        d,
    ]);
    assert!(again.contains("0 codes"), "{again}");
    assert_eq!(
        csv_rows(&std::fs::read_to_string(file("codes2.csv")).expect("read")).len(),
        1
    );

    // The team landed in the signed directory.
    let dir_json = ok(&["--profile", &pa, "admin", "role", "list", "--server", &url]);
    let v: serde_json::Value = serde_json::from_str(&dir_json).expect("json");
    let team = v["teams"]
        .as_array()
        .expect("teams")
        .iter()
        .find(|t| t["id"] == "ed-seniors")
        .expect("ed-seniors");
    assert_eq!(team["members"], serde_json::json!(["carol", "dave"]));

    // Roles, teams, call-out lists and the records account from her device.
    for args in [
        vec!["admin", "team", "--id", "night", "--members", "carol,dave"],
        vec![
            "admin",
            "role",
            "add",
            "--id",
            "triage",
            "--name",
            "Triage lead",
            "--team",
            "night",
            "--holders",
            "carol",
        ],
        vec![
            "admin", "callout", "--level", "standby", "--roles", "triage",
        ],
        vec!["admin", "records", "--user", "erin"],
    ] {
        let mut a = vec!["--profile", pa.as_str()];
        a.extend(args);
        a.extend(["--server", url.as_str()]);
        ok(&a);
    }
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["admin", "role", "list", "--data", d])).expect("json");
    assert_eq!(v["callout_standby"], serde_json::json!(["triage"]));
    assert!(
        v["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r["id"] == "triage")
    );
    let policy = ok(&["admin", "policy", "show", "--data", d]);
    assert!(policy.contains("\"records_user\":\"erin\""), "{policy}");
    // Carol has no grant: refused, and nothing changes.
    let e = fails(&[
        "--profile",
        &pc,
        "admin",
        "team",
        "--id",
        "night",
        "--members",
        "bob",
        "--server",
        &url,
    ]);
    assert!(e.contains("admin grant"), "{e}");
    // The audit log names alice's device, and verifies from her device
    // against the key it pinned.
    let audit = ok(&["admin", "audit", "show", "--data", d, "--json"]);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"team.set\"") && l.contains("admin:alice/")),
        "{audit}"
    );
    let verified = ok(&[
        "--profile",
        &pa,
        "admin",
        "audit",
        "verify",
        "--server",
        &url,
    ]);
    assert!(verified.contains("verified"), "{verified}");

    // Someone with the database removes the newest entries: the chain that
    // is left still verifies, but her device remembers the last one it saw.
    let db = rusqlite::Connection::open(std::path::Path::new(d).join("sitrep.db")).expect("db");
    db.busy_timeout(std::time::Duration::from_secs(5))
        .expect("timeout");
    db.execute(
        "DELETE FROM audit WHERE seq >= (SELECT MAX(seq) - 1 FROM audit)",
        [],
    )
    .expect("cut");
    let e = fails(&[
        "--profile",
        &pa,
        "admin",
        "audit",
        "verify",
        "--server",
        &url,
    ]);
    assert!(e.contains("no longer holds entry"), "{e}");
    // Someone with the database edits an entry: her device finds it.
    db.execute("UPDATE audit SET detail = 'user=nobody' WHERE seq = 2", [])
        .expect("tamper");
    drop(db);
    let e = fails(&[
        "--profile",
        &pa,
        "admin",
        "audit",
        "verify",
        "--server",
        &url,
    ]);
    assert!(e.contains("FAILED") && e.contains("entry 2"), "{e}");
}

fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    r.records()
        .map(|r| r.expect("row").iter().map(str::to_string).collect())
        .collect()
}
