//! The client killed with SIGKILL at random points in `send`, `sync` and a
//! commit (`chat update`), 50 times, as real processes against a real
//! `sitrep serve`: after each kill the profile opens and the next `sync`
//! recovers; at the end no message is lost that a `send` acknowledged, none
//! arrives twice, and neither device is left behind its group (both still
//! read each other).

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, free_port, serve_on};

const PASS: &str = "kill-test-passcode";
const RUNS: usize = 50;

fn cmd(args: &[&str]) -> Command {
    let mut c = common::cli(PASS, args);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn ok(args: &[&str]) -> String {
    common::cli_ok(cmd(args), args)
}

fn enrol(d: &str, url: &str, profile: &str, user: &str) {
    common::cli_enrol(PASS, d, url, profile, user);
}

/// (sender, body) of every text in the conversation, as this device has it.
fn texts(profile: &str) -> Vec<(String, String)> {
    ok(&["--profile", profile, "history", "ward", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
        .filter(|v| v["kind"] == "text")
        .map(|v| {
            (
                v["sender"].as_str().expect("sender").to_string(),
                v["body"].as_str().expect("body").to_string(),
            )
        })
        .collect()
}

/// A small deterministic generator (the seed is printed, to replay a run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The command finished and said so (exit 0).
    Acked,
    /// Killed, or failed: it may or may not have gone out.
    Unknown,
}

#[test]
fn kill_9_of_the_client_at_random_points_loses_nothing_and_duplicates_nothing() {
    let data = TempDir::new("ckill-data");
    let profiles = TempDir::new("ckill-profiles");
    let d = data.path().to_str().expect("utf8").to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = serve_on(&d, port);
    let prof = |u: &str| profiles.path().join(u).to_str().expect("utf8").to_string();
    let (a, b) = (prof("alice"), prof("bob"));
    enrol(&d, &url, &a, "alice");
    enrol(&d, &url, &b, "bob");
    ok(&[
        "--profile",
        &a,
        "chat",
        "create",
        "ward",
        "--members",
        "bob",
    ]);
    ok(&["--profile", &b, "sync"]);

    // How long each operation takes when left alone: kills land anywhere
    // from its start to a little past its end.
    let timed = |args: &[&str]| {
        let t = Instant::now();
        ok(args);
        t.elapsed()
    };
    let span = [
        timed(&["--profile", &a, "send", "ward", "warm-up send"]),
        timed(&["--profile", &a, "sync"]),
        timed(&["--profile", &a, "chat", "update", "ward"]),
    ];
    ok(&["--profile", &b, "sync"]);

    let seed = std::env::var("SITREP_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed {seed} (SITREP_KILL_SEED to replay); spans {span:?}");
    let mut rng = Rng(seed);
    let mut fates: HashMap<String, Fate> = HashMap::new();
    let mut from_bob = Vec::new();
    let mut killed = [0usize; 3];
    for run in 0..RUNS {
        let op = run % 3;
        // Something for Alice's sync to take in.
        if op == 1 {
            let t = format!("bob {run}");
            ok(&["--profile", &b, "send", "ward", &t]);
            from_bob.push(t);
        }
        let text = format!("alice {run}");
        let args: Vec<&str> = match op {
            0 => vec!["--profile", &a, "send", "ward", &text],
            1 => vec!["--profile", &a, "sync"],
            _ => vec!["--profile", &a, "chat", "update", "ward"],
        };
        let mut child = cmd(&args).spawn().expect("spawn");
        let limit = span[op].as_micros() as u64 * 6 / 5;
        std::thread::sleep(Duration::from_micros(rng.below(limit)));
        let exited = child.try_wait().expect("try_wait");
        if exited.is_none() {
            let _ = child.kill(); // SIGKILL
            killed[op] += 1;
        }
        let status = child.wait().expect("reap");
        if op == 0 {
            let fate = if exited.is_some_and(|s| s.success()) {
                Fate::Acked
            } else {
                Fate::Unknown
            };
            fates.insert(text.clone(), fate);
        }
        let _ = status;
        // The profile opens and the next sync recovers whatever was cut.
        ok(&["--profile", &a, "sync"]);
    }
    eprintln!(
        "killed mid-way: send {}, sync {}, commit {}",
        killed[0], killed[1], killed[2]
    );
    assert!(
        killed.iter().sum::<usize>() >= RUNS / 3,
        "too few kills landed mid-command ({killed:?}): the test would prove little"
    );

    // Both directions still work: nobody is behind the group.
    ok(&["--profile", &a, "send", "ward", "final from alice"]);
    ok(&["--profile", &b, "sync"]);
    ok(&["--profile", &b, "send", "ward", "final from bob"]);
    ok(&["--profile", &a, "sync"]);

    let at_bob = texts(&b);
    let at_alice = texts(&a);
    let count = |list: &[(String, String)], who: &str, body: &str| {
        list.iter().filter(|(s, t)| s == who && t == body).count()
    };
    for (text, fate) in &fates {
        let n = count(&at_bob, "alice", text);
        assert!(n <= 1, "{text:?} arrived {n} times (seed {seed})");
        if *fate == Fate::Acked {
            assert_eq!(n, 1, "{text:?} was acknowledged and lost (seed {seed})");
        }
        assert!(
            count(&at_alice, "alice", text) == n,
            "{text:?}: Alice's own history and Bob's disagree (seed {seed})"
        );
    }
    for t in &from_bob {
        assert_eq!(
            count(&at_alice, "bob", t),
            1,
            "{t:?} at Alice (seed {seed})"
        );
    }
    assert_eq!(count(&at_bob, "alice", "final from alice"), 1);
    assert_eq!(count(&at_alice, "bob", "final from bob"), 1);
    // Alice's messages arrive at Bob in the order she wrote them.
    let order: Vec<usize> = at_bob
        .iter()
        .filter(|(s, t)| s == "alice" && t.starts_with("alice "))
        .map(|(_, t)| t[6..].parse().expect("run number"))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order: {order:?}"
    );
    // Nothing is left waiting.
    assert!(
        ok(&["--profile", &a, "outbox", "--json"]).trim().is_empty(),
        "the outbox is not empty"
    );
}
