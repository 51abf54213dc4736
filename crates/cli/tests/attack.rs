//! Issue 11: Sitrep attacked by an insider (an ordinary enrolled member with a
//! raw HTTP client or a modified client) and by a faulty network (a proxy on
//! loopback that loses answers). Each test asserts what a user would notice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use common::*;
use sitrep_core::INTEROP_CIPHERSUITE;
use sitrep_wire::api;
use sitrep_wire::directory::{Role, SignedDirectory};
use sitrep_wire::incident::Level;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

/// A raw request as a device (or anyone) would send it, with no client-side
/// checks: (status, JSON body).
async fn raw(
    url: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, format!("{url}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

fn role(id: &str, holders: &[&str], declare: bool) -> Role {
    Role {
        id: id.into(),
        name: id.into(),
        team: "ed".into(),
        holders: holders.iter().map(|h| h.to_string()).collect(),
        eligible: holders.iter().map(|h| h.to_string()).collect(),
        can_declare: declare,
        commander: declare,
        ..Role::default()
    }
}

fn org(data: &std::path::Path) -> sitrep_server::org::Org {
    sitrep_server::org::Org::open_or_create(data, None)
        .expect("org")
        .0
}

/// Finding 1: a member cannot make herself commander. The server refuses
/// the take; and where a directory (from a server that lists her anyway, or
/// her own modified client) says she holds the role without the admin having
/// made her eligible, every other client refuses her declaration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_make_herself_incident_commander() {
    let server = TestServer::start().await;
    let data = server.dir.path();
    sitrep_server::directory::admin_update(data, &sitrep_server::admin_actor(), "role.set", |d| {
        d.roles = vec![
            role("ed-consultant", &["alice"], true),
            role("anaesthetist", &["bob"], false),
        ];
        d.callout_standby = vec!["anaesthetist".into()];
        Ok("setup".into())
    })
    .expect("directory");
    let (_da, mut alice) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    let (_dm, mut mallory) =
        device(&server.url, &server.invite("mallory"), INTEROP_CIPHERSUITE).await;

    // The raw take the CLI would never send for her.
    let (status, body) = raw(
        &server.url,
        reqwest::Method::POST,
        "/v1/roles/ed-consultant/take",
        Some(mallory.client.token()),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "not_eligible");
    let d = sitrep_server::directory::show(data).expect("directory");
    assert_eq!(
        d.role("ed-consultant").expect("role").holders,
        vec!["alice"]
    );
    // The eligible holder can still take and hand back.
    sitrep_cli::incident::role_change(&mut alice, "ed-consultant", false)
        .await
        .expect("handback");
    sitrep_cli::incident::role_change(&mut alice, "ed-consultant", true)
        .await
        .expect("take");

    // A directory that lists Mallory as a holder without making her eligible
    // (what the old server signed on any take) counts for nothing.
    let key = org(data).key;
    let mut forged = sitrep_server::directory::show(data).expect("directory");
    forged.serial = 1_000;
    forged.roles[0].holders.push("mallory".into());
    let on_server = SignedDirectory::sign(&forged, &key).expect("sign");
    for p in [&mut alice, &mut bob, &mut mallory] {
        p.client.apply_directory(&on_server).expect("apply");
        assert!(!p.client.directory().can_declare("mallory"));
    }
    let err = sitrep_cli::incident::raise(&mut mallory, "MI-9", Level::Standby, None, "")
        .await
        .expect_err("her own client refuses");
    assert!(err.to_string().contains("holds no role"), "{err}");

    // Her modified client believes she is eligible (a directory only she
    // holds); she declares, and every other client refuses it.
    let mut hers = forged.clone();
    hers.serial = 2_000;
    hers.roles[0].eligible.push("mallory".into());
    let hers = SignedDirectory::sign(&hers, &key).expect("sign");
    mallory.client.apply_directory(&hers).expect("apply");
    sitrep_cli::incident::raise(&mut mallory, "MI-9", Level::Standby, None, "")
        .await
        .expect("her client sends it");
    let events = sitrep_cli::sync(&mut bob).await.expect("bob syncs");
    assert!(
        bob.client.incidents().next().is_none(),
        "Bob must not see an incident declared by someone not eligible"
    );
    let history = &bob.client.conversation("MI-9").expect("added").history;
    assert!(
        history
            .iter()
            .any(|h| h.kind == "system" && h.body.contains("holds no role")),
        "Bob is told the declaration was refused: {history:?} {events:?}"
    );
    server.stop().await;
}

/// Direct writes to the server's store, as a bug or an old version would
/// have left it (the API no longer accepts these).
fn db(server: &TestServer) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(server.dir.path().join("sitrep.db")).expect("db");
    c.busy_timeout(Duration::from_secs(10)).expect("timeout");
    c
}

fn one_time_count(server: &TestServer, device: &str) -> i64 {
    db(server)
        .query_row(
            "SELECT COUNT(*) FROM key_packages WHERE device_id = ?1 AND last_resort = 0",
            [device],
            |r| r.get(0),
        )
        .expect("count")
}

/// Finding 2: draining a colleague's KeyPackages neither blocks adding her
/// (the last-resort one now works, repeatedly) nor goes faster than a few
/// per claimer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_keypackages_never_block_adding_a_colleague() {
    let server = TestServer::start().await;
    let (_da, mut alice) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    let (_dc, mut carol) = device(&server.url, &server.invite("carol"), INTEROP_CIPHERSUITE).await;
    let (_dm, mallory) = device(&server.url, &server.invite("mallory"), INTEROP_CIPHERSUITE).await;
    let bob_dev = bob.client.device_id().to_string();
    let before = one_time_count(&server, &bob_dev);
    assert!(before >= 10);
    // Mallory claims Bob's KeyPackages as fast as she can.
    for _ in 0..30 {
        let (status, body) = raw(
            &server.url,
            reqwest::Method::POST,
            "/v1/keypackages/claim",
            Some(mallory.client.token()),
            Some(serde_json::json!({ "user_ids": ["bob"] })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["key_packages"].as_array().map(Vec::len), Some(1));
    }
    let after = one_time_count(&server, &bob_dev);
    assert_eq!(before - after, 4, "a claimer takes at most a burst of 4");

    // Every one-time KeyPackage gone (many claimers, or a server bug): only
    // the last-resort one is left, and it works, twice over.
    db(&server)
        .execute(
            "DELETE FROM key_packages WHERE device_id = ?1 AND last_resort = 0",
            [&bob_dev],
        )
        .expect("drain");
    sitrep_cli::chat_create(&mut alice, "ward", &["bob".into()], "warn")
        .await
        .expect("add with the last-resort KeyPackage");
    sitrep_cli::chat_create(&mut carol, "theatres", &["bob".into()], "warn")
        .await
        .expect("and again in another conversation");
    sitrep_cli::sync(&mut bob).await.expect("bob joins both");
    sitrep_cli::send(&mut alice, "ward", "bed 3 needs review")
        .await
        .expect("send");
    sitrep_cli::send(&mut carol, "theatres", "list starts at 2")
        .await
        .expect("send");
    sitrep_cli::sync(&mut bob).await.expect("bob reads");
    assert_eq!(bodies(&bob, "ward"), vec!["bed 3 needs review"]);
    assert_eq!(bodies(&bob, "theatres"), vec!["list starts at 2"]);
    server.stop().await;
}

/// Finding 2: a device cannot upload KeyPackages its colleagues' clients
/// would refuse: garbage, someone else's, or a one-time one as last-resort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keypackage_uploads_are_validated() {
    let server = TestServer::start().await;
    let (_db, bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    let (_dm, mut mallory) =
        device(&server.url, &server.invite("mallory"), INTEROP_CIPHERSUITE).await;
    let upload = |kps: Vec<Vec<u8>>, lr: Option<Vec<u8>>| {
        serde_json::to_value(api::UploadKeyPackages {
            key_packages: kps,
            last_resort: lr,
        })
        .expect("json")
    };
    let token = mallory.client.token().to_string();
    let post = |body| {
        raw(
            &server.url,
            reqwest::Method::POST,
            "/v1/keypackages",
            Some(&token),
            Some(body),
        )
    };
    let (s, b) = post(upload(vec![b"not a key package".to_vec()], None)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("bad_key_package")),
        "{b}"
    );
    // Bob's genuine KeyPackage, uploaded as Mallory's.
    let (_, claimed) = raw(
        &server.url,
        reqwest::Method::POST,
        "/v1/keypackages/claim",
        Some(&token),
        Some(serde_json::json!({ "user_ids": ["bob"] })),
    )
    .await;
    let claimed: api::ClaimResponse = serde_json::from_value(claimed).expect("claim");
    let bobs = claimed.key_packages[0].key_package.clone();
    let (s, b) = post(upload(vec![bobs], None)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("bad_key_package")),
        "{b}"
    );
    // Her own one-time KeyPackage passed off as last-resort, and the reverse.
    let mine = mallory.client.key_packages(1).expect("kp");
    let (s, b) = post(upload(vec![], Some(mine.key_packages[0].clone()))).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("bad_key_package")),
        "{b}"
    );
    // One bad KeyPackage among good ones: nothing is stored.
    let good = mallory.client.key_packages(2).expect("kp");
    let mut mixed = good.key_packages.clone();
    mixed.push(vec![0u8; 100]);
    let before = one_time_count(&server, mallory.client.device_id());
    let (s, _) = post(upload(mixed, None)).await;
    assert_eq!(s, 400);
    assert_eq!(one_time_count(&server, mallory.client.device_id()), before);
    // Her genuine ones are taken.
    let (s, b) = post(upload(good.key_packages, None)).await;
    assert_eq!(s, 200, "{b}");
    drop(bob);
    server.stop().await;
}

/// Finding 2: one colleague's unusable KeyPackage (left in the store by a
/// bug or an old server) does not block the add: everyone else is added and
/// the adder is told which device was left out and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unusable_keypackage_does_not_block_the_add() {
    let server = TestServer::start().await;
    let (_da, mut alice) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    let (_dd, dave) = device(&server.url, &server.invite("dave"), INTEROP_CIPHERSUITE).await;
    let dave_dev = dave.client.device_id().to_string();
    let c = db(&server);
    c.execute("DELETE FROM key_packages WHERE device_id = ?1", [&dave_dev])
        .expect("delete");
    c.execute(
        "INSERT INTO key_packages (device_id, last_resort, kp) VALUES (?1, 1, ?2)",
        rusqlite::params![&dave_dev, vec![1u8; 64]],
    )
    .expect("plant");
    let events =
        sitrep_cli::chat_create(&mut alice, "ward", &["bob".into(), "dave".into()], "warn")
            .await
            .expect("the add goes ahead");
    let refused: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            sitrep_core::Event::Refused { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert!(
        refused[0].contains(&dave_dev) && refused[0].contains("not added"),
        "{refused:?}"
    );
    let members: Vec<String> = alice
        .client
        .members("ward")
        .expect("members")
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert!(members.contains(&"bob".to_string()) && !members.contains(&"dave".to_string()));
    sitrep_cli::sync(&mut bob).await.expect("bob joins");
    sitrep_cli::send(&mut alice, "ward", "hello")
        .await
        .expect("send");
    sitrep_cli::sync(&mut bob).await.expect("bob reads");
    assert_eq!(bodies(&bob, "ward"), vec!["hello"]);
    server.stop().await;
}

/// A loopback proxy between one device and the server that can lose the
/// answers to commits (the request reaches the server; the answer never
/// comes back), or hold them forever.
struct Proxy {
    url: String,
    mode: Arc<AtomicU8>,
    /// Commit requests that reached the server while answers were withheld.
    withheld: Arc<std::sync::atomic::AtomicUsize>,
}

const PASS: u8 = 0;
const DROP_COMMIT_ANSWERS: u8 = 1;
const HOLD_COMMIT_ANSWERS: u8 = 2;

impl Proxy {
    async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let mode = Arc::new(AtomicU8::new(PASS));
        let withheld = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (m, w) = (mode.clone(), withheld.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (up, m, w) = (upstream.clone(), m.clone(), w.clone());
                tokio::spawn(async move {
                    let _ = Self::one(conn, &up, &m, &w).await;
                });
            }
        });
        Self {
            url,
            mode,
            withheld,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// One request per connection: read it, forward it with
    /// `Connection: close`, read the whole answer, then pass, drop or hold it.
    async fn one(
        conn: tokio::net::TcpStream,
        upstream: &str,
        mode: &AtomicU8,
        withheld: &std::sync::atomic::AtomicUsize,
    ) -> std::io::Result<()> {
        let mut conn = BufReader::new(conn);
        let mut head = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if !lower.starts_with("connection:") {
                head.push_str(&line);
            }
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body).await?;
        let commit = head
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("POST ") && l.contains("/commit"));
        let mut up = tokio::net::TcpStream::connect(upstream).await?;
        up.write_all(head.as_bytes()).await?;
        up.write_all(&body).await?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer).await?;
        match mode.load(Ordering::SeqCst) {
            DROP_COMMIT_ANSWERS if commit => {
                withheld.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            HOLD_COMMIT_ANSWERS if commit => {
                withheld.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            _ => conn.get_mut().write_all(&answer).await,
        }
    }
}

/// Finding 4: the server accepts a commit and every answer to it is lost.
/// The device keeps the commit (sealed), settles it at its next sync, and
/// reads every later message: none is refused or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_commit_loses_no_later_message() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(&server.url).await;
    let (_da, mut alice) = device(&proxy.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut alice, "ward", &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut bob).await.expect("bob joins");

    proxy.set(DROP_COMMIT_ANSWERS);
    let err = sitrep_cli::chat_update(&mut alice, "ward")
        .await
        .expect_err("no answer ever comes back");
    assert!(err.to_string().contains("did not confirm"), "{err:#}");
    assert!(proxy.withheld.load(Ordering::SeqCst) >= 1);
    proxy.set(PASS);

    // Bob is at the new epoch (the server took Alice's commit) and writes.
    let sent: Vec<String> = (0..5).map(|i| format!("obs {i}")).collect();
    for t in &sent {
        sitrep_cli::send(&mut bob, "ward", t)
            .await
            .expect("bob sends");
    }
    let events = sitrep_cli::sync(&mut alice).await.expect("alice syncs");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, sitrep_core::Event::Refused { .. })),
        "{events:?}"
    );
    assert_eq!(bodies(&alice, "ward"), sent);
    sitrep_cli::send(&mut alice, "ward", "thanks")
        .await
        .expect("send");
    sitrep_cli::sync(&mut bob).await.expect("bob reads");
    assert_eq!(
        bodies(&bob, "ward").last().map(String::as_str),
        Some("thanks")
    );
    server.stop().await;
}

/// Finding 4: the client is killed with SIGKILL while its commit is at the
/// server and the answer is on its way. After a restart it settles the
/// commit and reads everything sent since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_commit_loses_no_later_message() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(&server.url).await;
    let (da, mut alice) = device(&proxy.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut alice, "ward", &["bob".into()], "warn")
        .await
        .expect("create");
    drop(alice); // the CLI process below takes the profile lock
    sitrep_cli::sync(&mut bob).await.expect("bob joins");

    proxy.set(HOLD_COMMIT_ANSWERS);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .arg("--profile")
        .arg(da.path())
        .args(["chat", "update", "ward"])
        .env("SITREP_PASSCODE", PASSCODE)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    for _ in 0..600 {
        if proxy.withheld.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        proxy.withheld.load(Ordering::SeqCst) > 0,
        "the commit reached the server"
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    proxy.set(PASS);

    let sent: Vec<String> = (0..3).map(|i| format!("obs {i}")).collect();
    for t in &sent {
        sitrep_cli::send(&mut bob, "ward", t)
            .await
            .expect("bob sends");
    }
    let mut alice = sitrep_cli::Profile::open(da.path(), PASSCODE).expect("reopen");
    sitrep_cli::sync(&mut alice).await.expect("alice syncs");
    assert_eq!(bodies(&alice, "ward"), sent);
    server.stop().await;
}

/// Finding 4: a device that did fall out of step with its group (here: its
/// profile restored from an older copy, so it never saw a commit) tells its
/// user, asks to be re-added, is re-added by the next member to sync, says
/// how many messages it could not read, and reads what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_step_device_is_readded_and_says_what_it_missed() {
    let server = TestServer::start().await;
    let (_da, mut alice) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut alice, "ward", &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut bob).await.expect("bob joins");
    drop(bob);
    // Closed, so the whole store is in its one file.
    let sealed = db.path().join("profile.db");
    let old = std::fs::read(&sealed).expect("copy");

    // Alice moves the group on; Bob's device follows and acknowledges.
    sitrep_cli::chat_update(&mut alice, "ward")
        .await
        .expect("update");
    let mut bob = sitrep_cli::Profile::open(db.path(), PASSCODE).expect("open");
    sitrep_cli::sync(&mut bob).await.expect("bob follows");
    drop(bob);
    // ... and then Bob's profile is rolled back to before that commit.
    std::fs::write(&sealed, &old).expect("restore");
    for f in ["profile.db-wal", "profile.db-shm"] {
        let _ = std::fs::remove_file(db.path().join(f));
    }
    let mut bob = sitrep_cli::Profile::open(db.path(), PASSCODE).expect("open");

    sitrep_cli::send(&mut alice, "ward", "lost 1")
        .await
        .expect("send");
    sitrep_cli::send(&mut alice, "ward", "lost 2")
        .await
        .expect("send");
    let events = sitrep_cli::sync(&mut bob).await.expect("bob syncs");
    assert!(
        events.iter().any(
            |e| matches!(e, sitrep_core::Event::Refused { reason } if reason.contains("out of step"))
        ),
        "{events:?}"
    );
    let conv = bob.client.conversation("ward").expect("ward");
    assert!(conv.out_of_step && conv.unreadable == 2, "{conv:?}");
    // Alice's next sync re-adds Bob's device.
    sitrep_cli::sync(&mut alice).await.expect("alice re-adds");
    sitrep_cli::send(&mut alice, "ward", "after")
        .await
        .expect("send");
    sitrep_cli::sync(&mut bob).await.expect("bob rejoins");
    let conv = bob.client.conversation("ward").expect("ward");
    assert!(!conv.out_of_step);
    assert!(
        conv.history
            .iter()
            .any(|h| h.kind == "system" && h.body.contains("2 messages")),
        "{:?}",
        conv.history
    );
    assert_eq!(bodies(&bob, "ward"), vec!["after"]);
    // And Bob can write again; he was re-added once, not at every sync.
    sitrep_cli::send(&mut bob, "ward", "back")
        .await
        .expect("send");
    sitrep_cli::sync(&mut alice).await.expect("alice reads");
    sitrep_cli::sync(&mut alice)
        .await
        .expect("alice syncs again");
    assert_eq!(
        bodies(&alice, "ward").last().map(String::as_str),
        Some("back")
    );
    sitrep_cli::sync(&mut bob).await.expect("bob syncs");
    let conv = bob.client.conversation("ward").expect("ward");
    let readds = conv
        .history
        .iter()
        .filter(|h| h.kind == "system" && h.body.contains("was re-added"))
        .count();
    assert_eq!(readds, 1, "{:?}", conv.history);
    assert!(conv.active);
    server.stop().await;
}

/// Finding 6: the audit log takes no free text and no records entries from
/// anyone but the records account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_records_account_writes_records_audit_entries() {
    let server = TestServer::start().await;
    let data = server.dir.path();
    let o = org(data);
    let policy = sitrep_core::OrgPolicy {
        records_user: Some("records".into()),
        ..sitrep_core::OrgPolicy::default()
    };
    sitrep_server::set_policy(data, &o, policy, &sitrep_server::admin_actor()).expect("policy");
    let (_dm, mallory) = device(&server.url, &server.invite("mallory"), INTEROP_CIPHERSUITE).await;
    let (_dr, records) = device(&server.url, &server.invite("records"), INTEROP_CIPHERSUITE).await;
    let hmac = "ab".repeat(32);
    let audit = |token: String, body: serde_json::Value| {
        let url = server.url.clone();
        async move {
            raw(
                &url,
                reqwest::Method::POST,
                "/v1/audit",
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let m = mallory.client.token().to_string();
    // A records entry from someone who is not the records account.
    let (s, b) = audit(
        m.clone(),
        serde_json::json!({"action": "records.search", "query_hmac": hmac}),
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (403, Some("not_records")), "{b}");
    // Free text, in any field.
    for body in [
        serde_json::json!({"action": "export.personal", "detail": "NHS 943 476 5919"}),
        serde_json::json!({"action": "record.transfer", "messages": ["943 476 5919"]}),
        // A bare NHS number is valid hex: too short for a message id.
        serde_json::json!({"action": "record.transfer", "messages": ["9434765919"]}),
        serde_json::json!({"action": "records.search", "query_hmac": "943 476 5919"}),
        serde_json::json!({"action": "export.personal", "query_hmac": hmac}),
    ] {
        let (s, b) = audit(m.clone(), body.clone()).await;
        assert_eq!(s, 400, "{body} -> {b}");
        assert!(
            !b.to_string().contains("943"),
            "the error echoes nothing: {b}"
        );
    }
    // What is allowed is written, structured.
    let (s, _) = audit(
        m.clone(),
        serde_json::json!({"action": "record.transfer", "messages": [format!("94347659190{}", "0".repeat(21))]}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = audit(
        records.client.token().to_string(),
        serde_json::json!({"action": "records.search", "query_hmac": hmac}),
    )
    .await;
    assert_eq!(s, 200);
    let entries = sitrep_server::audit_entries(data).expect("entries");
    // Even an identifier hidden in a well-formed id reaches the log only hashed.
    assert!(entries.iter().all(|e| !e.detail.contains("9434765919")));
    assert!(entries.iter().any(|e| e.action == "records.search"
        && e.actor.starts_with("records/")
        && e.detail == format!("query_hmac={hmac}")));
    assert!(
        !entries
            .iter()
            .any(|e| e.actor.starts_with("mallory/") && e.action.starts_with("records."))
    );
    assert_eq!(
        sitrep_server::audit_verify(data).expect("verify"),
        entries.len() as u64
    );
    server.stop().await;
}

/// Finding 7: the smaller ones. A cursor position past 2^63 is refused (it
/// once wrapped and replayed everything acknowledged), and the data
/// directory and database are owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_positions_are_refused_and_the_store_is_owner_only() {
    let server = TestServer::start().await;
    let (_da, mut alice) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut alice, "ward", &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::send(&mut alice, "ward", "one")
        .await
        .expect("send");
    sitrep_cli::sync(&mut bob)
        .await
        .expect("bob reads and acknowledges");
    let t = bob.client.token().to_string();
    let huge = 1u64 << 63;
    for (method, path, body) in [
        (
            reqwest::Method::GET,
            format!("/v1/inbox?after={huge}"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/inbox/ack".to_string(),
            Some(serde_json::json!({ "up_to": huge })),
        ),
    ] {
        let (s, b) = raw(&server.url, method, &path, Some(&t), body).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("bad_seq")),
            "{path}: {b}"
        );
    }
    // The largest allowed position replays nothing acknowledged.
    let (s, b) = raw(
        &server.url,
        reqwest::Method::GET,
        &format!("/v1/inbox?after={}", i64::MAX),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(b["entries"].as_array().map(Vec::len), Some(0), "{b}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(server.dir.path()), 0o700);
        for f in ["sitrep.db", "sitrep.db-wal", "org.key"] {
            assert_eq!(mode(&server.dir.path().join(f)), 0o600, "{f}");
        }
    }
    server.stop().await;
}

/// Finding 3: the delivery service validates handshakes. A member's garbage
/// commit, a commit whose routing lists lie (cut Bob off, bring an outsider
/// in), a stale one, and a handshake smuggled as an application message are
/// refused or routed by what the commit really does; the others go on
/// reading, and the attacker can still be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_and_garbage_commits_do_not_break_the_group() {
    let server = TestServer::start().await;
    let (_da, mut alice) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    let (_dm, mut mallory) =
        device(&server.url, &server.invite("mallory"), INTEROP_CIPHERSUITE).await;
    let (_de, eve) = device(&server.url, &server.invite("eve"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(
        &mut alice,
        "ward",
        &["bob".into(), "mallory".into()],
        "warn",
    )
    .await
    .expect("create");
    sitrep_cli::sync(&mut bob).await.expect("bob joins");
    sitrep_cli::sync(&mut mallory).await.expect("mallory joins");
    let gid = alice.client.group_hex("ward").expect("gid");
    let path = format!("/v1/groups/{gid}/commit");
    let t = mallory.client.token().to_string();
    let post = |path: String, body: serde_json::Value| {
        let (url, t) = (server.url.clone(), t.clone());
        async move { raw(&url, reqwest::Method::POST, &path, Some(&t), Some(body)).await }
    };

    // Garbage at the current epoch: refused, the epoch does not move.
    let epoch = 1;
    let (s, b) = post(
        path.clone(),
        serde_json::json!({
            "client_id": "00000000000000000000000000000001",
            "epoch": epoch,
            "commit": sitrep_wire::b64::encode(b"not a commit"),
            "add_devices": [], "remove_devices": [],
        }),
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_commit")), "{b}");

    // A genuine add of Eve with a garbage Welcome, or none: Eve would sit in
    // the tree with nothing to join by. Refused.
    let remote = sitrep_cli::Remote::new(&server.url, Some(&t)).expect("remote");
    let (kps, _) = sitrep_cli::claim_key_packages(&remote, &["eve".to_string()])
        .await
        .expect("claim");
    let mut add = mallory.client.prepare_add("ward", &kps).expect("add");
    for welcome in [Some(b"not a welcome".to_vec()), None] {
        add.request.welcome = welcome;
        let (s, b) = post(
            path.clone(),
            serde_json::to_value(&add.request).expect("json"),
        )
        .await;
        assert_eq!((s, b["error"].as_str()), (400, Some("bad_commit")), "{b}");
    }
    mallory.client.commit_rejected(&gid).expect("clear");

    // A genuine commit of hers with lying routing lists: Bob "removed",
    // Eve (an outsider) "added". The server reads the commit, not the lists.
    let mut prepared = mallory.client.prepare_update("ward").expect("update");
    prepared.request.add_devices = vec![eve.client.device_id().to_string()];
    prepared.request.remove_devices = vec![bob.client.device_id().to_string()];
    // The same commit as an "application message" first: refused.
    let (s, b) = post(
        format!("/v1/groups/{gid}/messages"),
        serde_json::json!({
            "client_id": "00000000000000000000000000000002",
            "payload": sitrep_wire::b64::encode(&prepared.request.commit),
        }),
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_message")), "{b}");
    let (s, b) = post(
        path.clone(),
        serde_json::to_value(&prepared.request).expect("json"),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    mallory
        .client
        .commit_accepted(&gid, sitrep_cli::now_ms())
        .expect("merge");
    // An "application message" from an epoch the group has not reached would
    // tell every member it is out of step: refused.
    let gid_bytes = hex::decode(&gid).expect("hex");
    let (s, b) = post(
        format!("/v1/groups/{gid}/messages"),
        serde_json::json!({
            "client_id": "00000000000000000000000000000004",
            "payload": sitrep_wire::b64::encode(&sitrep_cli::bench::opaque_application(&gid_bytes, 9, 200)),
        }),
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_message")), "{b}");
    // Resent at the old epoch: a conflict, nothing applied.
    let mut stale = prepared.request.clone();
    stale.client_id = "00000000000000000000000000000003".into();
    let (s, b) = post(path.clone(), serde_json::to_value(&stale).expect("json")).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (409, Some("epoch_conflict")),
        "{b}"
    );

    // Bob still receives; Eve received nothing.
    sitrep_cli::send(&mut alice, "ward", "still here")
        .await
        .expect("send");
    sitrep_cli::sync(&mut bob).await.expect("bob syncs");
    assert_eq!(bodies(&bob, "ward"), vec!["still here"]);
    let (s, inbox) = raw(
        &server.url,
        reqwest::Method::GET,
        "/v1/inbox",
        Some(eve.client.token()),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        inbox["entries"].as_array().map(Vec::len),
        Some(0),
        "{inbox}"
    );

    // Mallory can be removed, and reads nothing after.
    sitrep_cli::chat_remove(&mut alice, "ward", "mallory")
        .await
        .expect("remove mallory");
    sitrep_cli::send(&mut alice, "ward", "after mallory")
        .await
        .expect("send");
    sitrep_cli::sync(&mut mallory).await.expect("mallory syncs");
    assert!(!bodies(&mallory, "ward").contains(&"after mallory".to_string()));
    sitrep_cli::sync(&mut bob).await.expect("bob syncs");
    assert_eq!(
        bodies(&bob, "ward").last().map(String::as_str),
        Some("after mallory")
    );
    server.stop().await;
}

/// What a validating delivery service cannot stop (RFC 9750): a member's
/// commit whose signature verifies but whose membership tag (or path
/// secrets) only members can check. The server takes it; every other member
/// is told at once that it could not apply a change, stops sending into a
/// group nobody could read, and asks to be re-added; nothing fails silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_only_members_can_refuse_is_shown_not_swallowed() {
    let server = TestServer::start().await;
    let (_da, mut alice) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_dm, mut mallory) =
        device(&server.url, &server.invite("mallory"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut alice, "ward", &["mallory".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut mallory).await.expect("mallory joins");
    let gid = alice.client.group_hex("ward").expect("gid");
    let mut prepared = mallory.client.prepare_update("ward").expect("update");
    // The membership tag is the last field of the PublicMessage and outside
    // the signature.
    let last = prepared.request.commit.len() - 1;
    prepared.request.commit[last] ^= 0xff;
    let (s, b) = raw(
        &server.url,
        reqwest::Method::POST,
        &format!("/v1/groups/{gid}/commit"),
        Some(mallory.client.token()),
        Some(serde_json::to_value(&prepared.request).expect("json")),
    )
    .await;
    assert_eq!(s, 200, "the server cannot check the membership tag: {b}");
    let events = sitrep_cli::sync(&mut alice).await.expect("alice syncs");
    assert!(
        events.iter().any(|e| matches!(e, sitrep_core::Event::Refused { reason } if reason.contains("could not be applied"))),
        "{events:?}"
    );
    let conv = alice.client.conversation("ward").expect("ward");
    assert!(conv.out_of_step, "Alice knows she cannot read on");
    // Nothing is encrypted into a group nobody could read: the message waits,
    // unencrypted and sealed, until this device is re-added.
    let sent = sitrep_cli::send_queued(&mut alice, "ward", "anyone?", false)
        .await
        .expect("kept in the outbox");
    let why = sent.queued.expect("queued, not sent");
    assert!(why.contains("re-added"), "{why}");
    let waiting = alice.client.waiting();
    assert_eq!(waiting.len(), 1);
    assert!(!waiting[0].encrypted, "not encrypted at the broken epoch");
    server.stop().await;
}

/// Receipts (how far each member has got, for every message's state) go to
/// current members only, and tell a member nothing about the others'
/// other conversations: a device's place is given in this group's own
/// messages, never its cursor in the server's global log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_for_members_and_say_nothing_of_other_groups() {
    let server = TestServer::start().await;
    let (_da, mut alice) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    let (_dc, carol) = device(&server.url, &server.invite("carol"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut alice, "ward", &["bob".into()], "off")
        .await
        .expect("create");
    sitrep_cli::chat_create(&mut bob, "private", &["alice".into()], "off")
        .await
        .expect("create");
    let sent = sitrep_cli::send(&mut alice, "ward", "bed 4 is free")
        .await
        .expect("send");
    let _ = sent;
    // Bob reads the ward, then much happens in another conversation.
    sitrep_cli::sync(&mut bob).await.expect("sync");
    for i in 0..5 {
        sitrep_cli::send(&mut bob, "private", &format!("elsewhere {i}"))
            .await
            .expect("send");
    }
    sitrep_cli::sync(&mut bob).await.expect("sync");
    let gid = alice.client.group_hex("ward").expect("hex");
    let path = format!("/v1/groups/{gid}/receipts");
    // Not a member: refused, whatever the group.
    let (status, _) = raw(
        &server.url,
        reqwest::Method::GET,
        &path,
        Some(carol.client.token()),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = raw(&server.url, reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 401);
    // A member: Bob's place is the ward's last message, not further.
    let r = sitrep_cli::receipts(&alice, "ward")
        .await
        .expect("receipts");
    let ward_last = alice
        .client
        .conversation("ward")
        .expect("conv")
        .history
        .iter()
        .map(|h| h.seq)
        .max()
        .expect("seq");
    let b = r
        .devices
        .iter()
        .find(|d| d.user_id == "bob")
        .expect("bob's row");
    assert_eq!(b.delivered_through, ward_last, "{r:?}");
    let t = r.tally(ward_last, "alice");
    assert_eq!((t.recipients, t.delivered), (1, 1));
    server.stop().await;
}
