//! The CLI as a clinician meets it, run as real processes against a real
//! `sitrep serve`: `watch` live (with `send` from another terminal on the
//! same profile, typed replies, a server restart), `passcode change`, "removed
//! by", all-or-nothing `chat create`, shared conversation names, local times.

mod common;

use std::io::{BufRead as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{TempDir, free_port, serve_on};

const PASS: &str = "watch-test-passcode";

fn cmd(args: &[&str]) -> Command {
    common::cli(PASS, args)
}

fn run(args: &[&str]) -> std::process::Output {
    cmd(args).output().expect("run sitrep")
}

fn ok(args: &[&str]) -> String {
    common::cli_ok(cmd(args), args)
}

fn enrol(d: &str, url: &str, profile: &str, user: &str) {
    common::cli_enrol(PASS, d, url, profile, user);
}

/// A running `sitrep watch`: its stdout lines arrive on a channel.
struct Watching {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watching {
    fn start(profile: &str, name: &str) -> Self {
        Self::start_with(profile, name, &[])
    }

    /// With extra environment; stderr lines arrive too, as `[stderr] ...`.
    fn start_with(profile: &str, name: &str, env: &[(&str, &str)]) -> Self {
        let mut args = vec!["--profile", profile, "watch"];
        if !name.is_empty() {
            args.push(name);
        }
        let mut c = cmd(&args);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("watch");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("watch stderr: {l}");
                let _ = tx_err.send(format!("[stderr] {l}"));
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait for a line containing `text`.
    fn expect(&mut self, text: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("watch never showed {text:?}; it showed {:#?}", self.seen);
    }

    fn type_line(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{text}").expect("type");
        stdin.flush().expect("flush");
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn texts(profile: &str, name: &str) -> Vec<String> {
    ok(&["--profile", profile, "history", name, "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter(|v| v["kind"] == "text")
        .map(|v| v["body"].as_str().expect("body").to_string())
        .collect()
}

#[test]
fn watch_is_live_and_other_commands_work_beside_it_through_a_server_restart() {
    let data = TempDir::new("watch-data");
    let profiles = TempDir::new("watch-profiles");
    let d = data.path().to_str().expect("path").to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = serve_on(&d, port);
    let prof = |u: &str| profiles.path().join(u).to_str().expect("path").to_string();
    common::alice_and_bob_in_ward(PASS, &d, &url, prof);

    let mut w = Watching::start(&prof("bob"), "ward");
    // A push, not a poll: well within the fallback poll's 30 s.
    ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "ward",
        "BP 90/60, coming to resus",
    ]);
    let line = w.expect("BP 90/60, coming to resus", Duration::from_secs(10));
    assert!(line.contains("Dr alice"), "{line}");
    assert!(line.contains("[ward]"), "{line}");

    // Another terminal on the same profile while watch runs.
    let out = run(&[
        "--profile",
        &prof("bob"),
        "send",
        "ward",
        "from the other terminal",
    ]);
    assert!(
        out.status.success(),
        "send beside watch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("queued"));
    // The watch shows it too (it was stored by the other process).
    w.expect("from the other terminal", Duration::from_secs(10));

    // Typed in the watch.
    w.type_line("typed in the watch");
    let end = Instant::now() + Duration::from_secs(10);
    while !texts(&prof("alice"), "ward").contains(&"typed in the watch".to_string()) {
        assert!(Instant::now() < end, "alice never got the typed message");
        ok(&["--profile", &prof("alice"), "sync"]);
        std::thread::sleep(Duration::from_millis(200));
    }

    // The server goes away; what bob types waits; the watch reconnects.
    drop(server);
    w.type_line("typed while the server was down");
    std::thread::sleep(Duration::from_secs(2));
    server = serve_on(&d, port);
    ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "ward",
        "after the restart",
    ]);
    w.expect("after the restart", Duration::from_secs(45));
    let end = Instant::now() + Duration::from_secs(45);
    loop {
        ok(&["--profile", &prof("alice"), "sync"]);
        let got = texts(&prof("alice"), "ward");
        if got.contains(&"typed while the server was down".to_string()) {
            assert_eq!(
                got.iter()
                    .filter(|t| *t == "typed while the server was down")
                    .count(),
                1,
                "exactly once: {got:?}"
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "the queued message never arrived: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(w);
    // Shown in the watch: nothing unread left for bob.
    let list = ok(&["--profile", &prof("bob"), "chat", "list"]);
    let row = list.lines().find(|l| l.starts_with("ward")).expect("row");
    assert_eq!(row.split_whitespace().nth(1), Some("0"), "{list}");
    drop(server);
}

#[test]
fn clinician_cli_passcode_removal_names_and_times() {
    let data = TempDir::new("clin-data");
    let profiles = TempDir::new("clin-profiles");
    let d = data.path().to_str().expect("path").to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = serve_on(&d, port);
    let prof = |u: &str| profiles.path().join(u).to_str().expect("path").to_string();
    for u in ["alice", "bob", "carol"] {
        enrol(&d, &url, &prof(u), u);
    }

    // All or nothing: one unknown member, and no conversation is left.
    let out = run(&[
        "--profile",
        &prof("alice"),
        "chat",
        "create",
        "theatre",
        "--members",
        "bob,nobody",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nobody") && err.contains("nothing was created"),
        "{err}"
    );
    let list = ok(&["--profile", &prof("alice"), "chat", "list"]);
    assert!(!list.contains("theatre"), "{list}");
    ok(&["--profile", &prof("bob"), "sync"]);
    assert!(!ok(&["--profile", &prof("bob"), "chat", "list"]).contains("theatre"));

    // Unread counts in aligned columns, then shown by history with a date.
    ok(&[
        "--profile",
        &prof("alice"),
        "chat",
        "create",
        "ward",
        "--members",
        "bob",
    ]);
    ok(&["--profile", &prof("alice"), "send", "ward", "first"]);
    ok(&["--profile", &prof("alice"), "send", "ward", "second"]);
    // A send syncs too: it takes the messages in without showing them.
    ok(&["--profile", &prof("bob"), "send", "ward", "seen?"]);
    let list = ok(&["--profile", &prof("bob"), "chat", "list"]);
    let row = list.lines().find(|l| l.starts_with("ward")).expect("row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"2"), "two unread: {list}");
    assert_eq!(cols.get(2), Some(&"active"), "{list}");
    let hist = ok(&["--profile", &prof("bob"), "history", "ward"]);
    let today = {
        // The date heading in local time (TZ=Europe/London).
        let h = hist.lines().next().expect("heading");
        assert!(h.starts_with("-- ") && h.ends_with(" --"), "{hist}");
        h.to_string()
    };
    assert!(today.chars().any(|c| c.is_ascii_digit()), "{today}");
    assert!(hist.contains("Dr alice: first"), "{hist}");
    assert!(!hist.contains("Z "), "no UTC stamps: {hist}");
    let list = ok(&["--profile", &prof("bob"), "chat", "list"]);
    let row = list.lines().find(|l| l.starts_with("ward")).expect("row");
    assert_eq!(row.split_whitespace().nth(1), Some("0"), "{list}");

    // Two conversations share a name: the CLI says so and takes a short id.
    ok(&[
        "--profile",
        &prof("carol"),
        "chat",
        "create",
        "ward",
        "--members",
        "bob",
    ]);
    ok(&["--profile", &prof("bob"), "sync"]);
    let out = run(&["--profile", &prof("bob"), "send", "ward", "which one?"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more than one conversation named"), "{err}");
    let list = ok(&["--profile", &prof("bob"), "chat", "list"]);
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.starts_with("ward"))
        .map(|l| l.split_whitespace().nth(4).expect("id column").to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(err.contains(&ids[0]) && err.contains(&ids[1]), "{err}");
    for id in &ids {
        ok(&["--profile", &prof("bob"), "send", id, &format!("to {id}")]);
    }
    ok(&["--profile", &prof("alice"), "sync"]);
    ok(&["--profile", &prof("carol"), "sync"]);
    let a = texts(&prof("alice"), "ward");
    let c = texts(&prof("carol"), "ward");
    assert_eq!(
        a.iter().filter(|t| t.starts_with("to ")).count()
            + c.iter().filter(|t| t.starts_with("to ")).count(),
        2,
        "each went to one conversation: {a:?} {c:?}"
    );

    // Removed by name, not "left".
    ok(&["--profile", &prof("carol"), "chat", "remove", "ward", "bob"]);
    let synced = ok(&["--profile", &prof("bob"), "sync"]);
    assert!(
        synced.contains("you were removed by Dr carol (carol)"),
        "{synced}"
    );
    assert!(!synced.contains("bob) left"), "{synced}");
    ok(&["--profile", &prof("alice"), "sync"]);

    // Passcode change: the old one stops working, the new one opens.
    let out = cmd(&["--profile", &prof("alice"), "passcode", "change"])
        .env("SITREP_NEW_PASSCODE", "a-new-passcode-for-alice")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old = run(&["--profile", &prof("alice"), "chat", "list"]);
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr).contains("wrong passcode"));
    let new = cmd(&["--profile", &prof("alice"), "chat", "list"])
        .env("SITREP_PASSCODE", "a-new-passcode-for-alice")
        .output()
        .expect("run");
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
    assert!(String::from_utf8_lossy(&new.stdout).contains("ward"));
    // Too short for the policy: refused, nothing changed.
    let short = cmd(&["--profile", &prof("alice"), "passcode", "change"])
        .env("SITREP_PASSCODE", "a-new-passcode-for-alice")
        .env("SITREP_NEW_PASSCODE", "abc")
        .output()
        .expect("run");
    assert!(!short.status.success());
}

/// The watch locks after the idle time (here shortened on this device, as
/// a ward PC may be), shows nothing of what arrives while locked but that
/// something did, counts a wrong passcode, and shows it all once unlocked.
#[test]
fn watch_locks_when_idle_and_shows_nothing_until_unlocked() {
    let data = TempDir::new("watch-lock-data");
    let profiles = TempDir::new("watch-lock-profiles");
    let d = data.path().to_str().expect("path").to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = serve_on(&d, port);
    let prof = |u: &str| profiles.path().join(u).to_str().expect("path").to_string();
    common::alice_and_bob_in_ward(PASS, &d, &url, prof);
    let mut w = Watching::start_with(&prof("bob"), "ward", &[("SITREP_IDLE_LOCK_SECS", "2")]);
    w.expect("watching", Duration::from_secs(10));
    w.expect("locked (idle)", Duration::from_secs(10));
    ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "ward",
        "bed 9: sats 88%, please review",
    ]);
    w.expect("new activity while locked", Duration::from_secs(10));
    // A wrong passcode is refused and counted.
    w.type_line("");
    w.expect("Passcode", Duration::from_secs(5));
    w.type_line("not-the-passcode");
    w.expect("wrong passcode", Duration::from_secs(10));
    assert!(
        !w.seen.iter().any(|l| l.contains("sats 88%")),
        "shown while locked: {:#?}",
        w.seen
    );
    let failures = std::fs::read_to_string(profiles.path().join("bob").join("unlock-failures"))
        .expect("counter");
    assert!(failures.starts_with('1'), "{failures}");
    // The right one.
    w.type_line("");
    w.type_line(PASS);
    w.expect("unlocked", Duration::from_secs(10));
    w.expect("bed 9: sats 88%, please review", Duration::from_secs(10));
}

/// Where the organisation requires two-step verification, the lock screen
/// asks for the authenticator code after the passcode; a wrong code is
/// refused (and counted), the right one opens.
#[test]
fn watch_lock_asks_for_the_authenticator_code_when_the_policy_requires_it() {
    let data = TempDir::new("watch-totp-data");
    let profiles = TempDir::new("watch-totp-profiles");
    let d = data.path().to_str().expect("path").to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = serve_on(&d, port);
    let prof = profiles
        .path()
        .join("bob")
        .to_str()
        .expect("path")
        .to_string();
    let out = common::cli_enrol(PASS, &d, &url, &prof, "bob");
    let uri = out
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .expect("the TOTP URI is shown at enrolment")
        .to_string();
    ok(&["admin", "policy", "set", "--data", &d, "--two-step", "true"]);
    let totp = totp_rs::TOTP::from_url(&uri).expect("otpauth URI");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    // The sync that takes up the policy is itself behind the new rule.
    let first = totp.generate(now());
    let mut c = cmd(&["--profile", &prof, "sync"]);
    c.env("SITREP_TOTP", &first);
    let out = c.output().expect("sync");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The code given at start is long stale when the screen locks: the
    // lock screen asks for a fresh one after the passcode.
    let mut w = Watching::start_with(
        &prof,
        "",
        &[("SITREP_IDLE_LOCK_SECS", "2"), ("SITREP_TOTP", &first)],
    );
    w.expect("watching", Duration::from_secs(10));
    w.expect("locked (idle)", Duration::from_secs(10));
    w.type_line("");
    w.expect("Passcode", Duration::from_secs(5));
    w.type_line(PASS);
    w.expect("Authenticator code", Duration::from_secs(10));
    w.type_line("000000");
    w.expect("two-step verification", Duration::from_secs(10));
    let failures = std::fs::read_to_string(profiles.path().join("bob").join("unlock-failures"))
        .expect("counter");
    assert!(
        failures.starts_with('1'),
        "a wrong code is counted: {failures}"
    );
    w.type_line(&totp.generate(now()));
    w.expect("unlocked", Duration::from_secs(10));
}

/// `history` shows the state of each of the user's own messages: sent,
/// delivered, read (with the tally), and queued while the server is away.
#[test]
fn history_shows_sent_delivered_read_and_queued() {
    let data = TempDir::new("state-data");
    let profiles = TempDir::new("state-profiles");
    let d = data.path().to_str().expect("path").to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let server = serve_on(&d, port);
    let prof = |u: &str| profiles.path().join(u).to_str().expect("path").to_string();
    for u in ["alice", "bob", "carol"] {
        enrol(&d, &url, &prof(u), u);
    }
    ok(&[
        "--profile",
        &prof("alice"),
        "chat",
        "create",
        "ward",
        "--members",
        "bob,carol",
    ]);
    ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "ward",
        "theatre 2 is ready",
    ]);
    let state = |who: &str| -> serde_json::Value {
        ok(&["--profile", &prof(who), "history", "ward", "--json"])
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
            .find(|v| v["body"] == "theatre 2 is ready")
            .expect("the message")
    };
    let s = state("alice");
    assert_eq!(
        (s["state"].as_str(), s["recipients"].as_u64()),
        (Some("sent"), Some(2))
    );
    assert_eq!(s["delivered"], 0);
    // Both fetch it; Bob is shown it (`sync` prints it), Carol's device
    // only fetches it (`seen` syncs without showing messages).
    let id = s["id"].as_str().expect("id").to_string();
    ok(&["--profile", &prof("carol"), "seen", "ward", &id]);
    ok(&["--profile", &prof("bob"), "sync"]);
    let s = state("alice");
    assert_eq!(s["delivered"], 2, "{s}");
    assert_eq!(s["read"], 1, "{s}");
    assert_eq!(s["state"], "delivered");
    ok(&["--profile", &prof("carol"), "history", "ward"]);
    let s = state("alice");
    assert_eq!(s["state"], "read", "{s}");
    let text = ok(&["--profile", &prof("alice"), "history", "ward"]);
    assert!(
        text.contains("(read: read by 2 of 2, delivered to 2)"),
        "{text}"
    );
    // The server goes away: a new message is shown as queued.
    drop(server);
    ok(&[
        "--profile",
        &prof("alice"),
        "send",
        "ward",
        "porter to bay 3",
    ]);
    let text = ok(&["--profile", &prof("alice"), "history", "ward"]);
    assert!(
        text.lines()
            .any(|l| l.contains("porter to bay 3") && l.contains("(queued")),
        "{text}"
    );
}
