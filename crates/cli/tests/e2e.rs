//! End-to-end tests of the backbone: the real server on a loopback port, several
//! real clients with real sealed profiles (issue 2, tests 1-4 and 6-9).

mod common;

use common::*;
use sitrep_core::{Ciphersuite, DEFAULT_CIPHERSUITE, Event, INTEROP_CIPHERSUITE};
use sitrep_wire::api;

async fn three_staff(cs: Ciphersuite) -> (TestServer, Vec<(TempDir, sitrep_cli::Profile)>) {
    let server = TestServer::start().await;
    let mut devs = Vec::new();
    for u in ["alice", "bob", "carol"] {
        devs.push(device(&server.url, &server.invite(u), cs).await);
    }
    (server, devs)
}

async fn messages_flow_both_ways(cs: Ciphersuite) {
    let (server, mut d) = three_staff(cs).await;
    let marker = "PLAINTEXT-MARKER-7f3a";
    let name = "resus-bay-secret-name";
    sitrep_cli::chat_create(&mut d[0].1, name, &["bob".into(), "carol".into()], "warn")
        .await
        .expect("create");
    for i in 0..3 {
        sitrep_cli::send(&mut d[0].1, name, &format!("A{i} {marker}"))
            .await
            .expect("send");
    }
    let ev = sitrep_cli::sync(&mut d[1].1).await.expect("sync b");
    assert!(ev.contains(&Event::Joined {
        conversation: name.into()
    }));
    for i in 0..2 {
        sitrep_cli::send(&mut d[1].1, name, &format!("B{i}"))
            .await
            .expect("send");
    }
    sitrep_cli::sync(&mut d[0].1).await.expect("sync a");
    sitrep_cli::sync(&mut d[2].1).await.expect("sync c");
    let expect_c = vec![
        format!("A0 {marker}"),
        format!("A1 {marker}"),
        format!("A2 {marker}"),
        "B0".to_string(),
        "B1".to_string(),
    ];
    assert_eq!(bodies(&d[2].1, name), expect_c);
    assert_eq!(bodies(&d[0].1, name), expect_c);
    assert_eq!(bodies(&d[1].1, name), expect_c);

    // Test 6: the server's files (database, WAL) and the clients' sealed stores
    // hold neither the message text nor the conversation name.
    let mut scanned = 0;
    for dir in [
        server.dir.path(),
        d[0].0.path(),
        d[1].0.path(),
        d[2].0.path(),
    ] {
        for f in files_under(dir) {
            let bytes = std::fs::read(&f).expect("read");
            scanned += bytes.len();
            assert!(
                !contains(&bytes, marker.as_bytes()),
                "plaintext in {}",
                f.display()
            );
            assert!(
                !contains(&bytes, name.as_bytes()),
                "conversation name in {}",
                f.display()
            );
        }
    }
    assert!(scanned > 10_000, "scanned only {scanned} bytes");
    assert!(
        files_under(server.dir.path())
            .iter()
            .any(|f| f.to_string_lossy().ends_with("-wal"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_t6_messages_flow_pq_suite() {
    messages_flow_both_ways(DEFAULT_CIPHERSUITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_t6_messages_flow_rfc9420_suite() {
    messages_flow_both_ways(INTEROP_CIPHERSUITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_offline_member_gets_all_100_in_order_once() {
    let (server, mut d) = three_staff(DEFAULT_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut d[0].1, "ward", &["bob".into(), "carol".into()], "warn")
        .await
        .expect("create");
    let sent: Vec<String> = (0..100).map(|i| format!("update {i:03}")).collect();
    for m in &sent {
        sitrep_cli::send(&mut d[0].1, "ward", m)
            .await
            .expect("send");
    }
    sitrep_cli::sync(&mut d[2].1).await.expect("sync c");
    assert_eq!(bodies(&d[2].1, "ward"), sent);
    // A second sync brings nothing twice.
    sitrep_cli::sync(&mut d[2].1).await.expect("sync again");
    assert_eq!(bodies(&d[2].1, "ward").len(), 100);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_removed_member_cannot_decrypt_later_messages() {
    let (server, mut d) = three_staff(INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut d[0].1, "ward", &["bob".into(), "carol".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut d[2].1).await.expect("c joins");
    sitrep_cli::chat_remove(&mut d[0].1, "ward", "carol")
        .await
        .expect("remove");
    sitrep_cli::send(&mut d[0].1, "ward", "after removal")
        .await
        .expect("send");
    let ev = sitrep_cli::sync(&mut d[2].1).await.expect("c syncs");
    assert!(
        ev.contains(&Event::Removed {
            conversation: "ward".into()
        }),
        "{ev:?}"
    );
    assert!(bodies(&d[2].1, "ward").is_empty());
    // The server no longer routes to carol; hand her the ciphertext anyway.
    let conn = rusqlite::Connection::open(server.dir.path().join("sitrep.db")).expect("db");
    let payload: Vec<u8> = conn
        .query_row(
            "SELECT payload FROM messages WHERE kind = 3 ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("the message waits for bob");
    let seq = d[2].1.client.last_seq() + 1;
    let ev = d[2]
        .1
        .client
        .handle_entry(seq, api::EntryKind::Application, &payload, 0);
    // Refused (from its epoch on, it is out of step: nothing is readable).
    assert!(
        ev.iter().any(|e| matches!(e, Event::Refused { .. }))
            && !ev.iter().any(|e| matches!(e, Event::Message { .. })),
        "{ev:?}"
    );
    assert!(bodies(&d[2].1, "ward").is_empty());
    sitrep_cli::sync(&mut d[1].1).await.expect("b syncs");
    assert_eq!(bodies(&d[1].1, "ward"), vec!["after removal"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_concurrent_commits_one_wins_other_retries() {
    let (server, mut d) = three_staff(INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut d[0].1, "ward", &["bob".into(), "carol".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut d[1].1).await.expect("b joins");
    sitrep_cli::sync(&mut d[2].1).await.expect("c joins");

    // Two commits built on the same epoch: exactly one is accepted.
    let pa = d[0].1.client.prepare_update("ward").expect("a builds");
    let pb = d[1].1.client.prepare_update("ward").expect("b builds");
    let ra = sitrep_cli::Remote::new(&server.url, Some(d[0].1.client.token())).expect("remote");
    let rb = sitrep_cli::Remote::new(&server.url, Some(d[1].1.client.token())).expect("remote");
    let url_a = format!("/v1/groups/{}/commit", pa.group_hex);
    let (a, b) = tokio::join!(
        ra.post::<_, api::CommitResponse>(&url_a, &pa.request),
        rb.post::<_, api::CommitResponse>(&url_a, &pb.request),
    );
    let (winner, loser) = match (a, b) {
        (Ok(_), Err(e)) => (0, (1, e)),
        (Err(e), Ok(_)) => (1, (0, e)),
        other => panic!("expected exactly one winner: {other:?}"),
    };
    let err = loser
        .1
        .downcast::<sitrep_cli::ServerError>()
        .expect("server error");
    assert_eq!(err.status, 409);
    assert_eq!(err.body.current_epoch, Some(pa.request.epoch + 1));
    let (wp, lp) = if winner == 0 { (&pa, &pb) } else { (&pb, &pa) };
    d[winner]
        .1
        .client
        .commit_accepted(&wp.group_hex, 0)
        .expect("merge");
    d[loser.0]
        .1
        .client
        .commit_rejected(&lp.group_hex)
        .expect("clear");

    // The loser recovers without user action: its next commit syncs and retries.
    sitrep_cli::chat_update(&mut d[loser.0].1, "ward")
        .await
        .expect("retry succeeds");
    // And a stale member's commit (carol has not synced) also retries by itself.
    sitrep_cli::chat_update(&mut d[2].1, "ward")
        .await
        .expect("stale member retries");
    for (i, dev) in d.iter_mut().enumerate() {
        sitrep_cli::send(&mut dev.1, "ward", &format!("from {i}"))
            .await
            .expect("send");
    }
    for (i, dev) in d.iter_mut().enumerate() {
        sitrep_cli::sync(&mut dev.1).await.expect("sync");
        let mut got = bodies(&dev.1, "ward");
        got.sort();
        assert_eq!(got, vec!["from 0", "from 1", "from 2"], "device {i}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_device_inserted_behind_the_servers_back_is_refused() {
    let (server, mut d) = three_staff(INTEROP_CIPHERSUITE).await;
    // Mallory enrols against a rogue organisation key...
    let rogue = TestServer::start().await;
    let (_rd, mut m) = device(&rogue.url, &rogue.invite("mallory"), INTEROP_CIPHERSUITE).await;
    let kps = m.client.key_packages(1).expect("kp");
    // ...and someone with database access slips her device into our server.
    let conn = rusqlite::Connection::open(server.dir.path().join("sitrep.db")).expect("db");
    conn.execute(
        "INSERT INTO devices (device_id, user_id, display_name, role, token_hash, signature_key, credential, created_at)
         VALUES ('dmallory', 'mallory', 'Dr M', 'ED consultant', x'00', x'00', x'00', 0)",
        [],
    )
    .expect("insert device");
    conn.execute(
        "INSERT INTO key_packages (device_id, last_resort, kp) VALUES ('dmallory', 0, ?1)",
        [&kps.key_packages[0]],
    )
    .expect("insert kp");
    sitrep_cli::chat_create(&mut d[0].1, "ward", &["bob".into()], "warn")
        .await
        .expect("create");
    let err = sitrep_cli::chat_add(&mut d[0].1, "ward", &["mallory".into()])
        .await
        .expect_err("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("not signed by the organisation"), "{msg}");
    assert_eq!(d[0].1.client.members("ward").expect("members").len(), 2);
    rogue.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t8_wrong_passcode_cannot_open_a_store() {
    let server = TestServer::start().await;
    let (dir, p) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    drop(p);
    let err = sitrep_cli::Profile::open(dir.path(), "not-the-passcode")
        .err()
        .expect("refused");
    assert!(err.to_string().contains("wrong passcode"), "{err}");
    assert!(sitrep_cli::Profile::open(dir.path(), PASSCODE).is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t9_malformed_and_oversized_requests_get_clear_4xx() {
    // A small body limit, so an oversized body fits in the socket buffers and the
    // client reads the 413 instead of racing the server's close.
    let server = TestServer::start_with(|c| {
        c.max_body = 64 * 1024;
        c.max_message = 16 * 1024;
    })
    .await;
    let (_dir, mut a) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut a, "x", &[], "warn")
        .await
        .expect("create");
    let http = reqwest::Client::new();
    let token = a.client.token().to_string();
    let check = |resp: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        if status == 413 {
            // The unread rest of the body is still on that connection.
            assert_eq!(
                resp.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "a 413 must close its connection"
            );
        }
        let body: api::ApiError = resp.json().await.expect("JSON error body");
        assert_eq!(body.error, code);
        assert!(!body.message.is_empty());
    };
    let u = &server.url;
    check(
        http.post(format!("{u}/v1/enrol"))
            .body("{not json")
            .send()
            .await
            .expect("req"),
        400,
        "bad_json",
    )
    .await;
    check(
        http.post(format!("{u}/v1/enrol"))
            .json(&serde_json::json!({"code":"AAAA-BBBB","signature_key":"AAAA"}))
            .send()
            .await
            .expect("req"),
        400,
        "bad_enrolment",
    )
    .await;
    // A key the requester does not hold (no proof, or someone else's).
    check(
        http.post(format!("{u}/v1/enrol"))
            .json(&serde_json::json!({"code":"AAAA-BBBB-CCCC-DDDD","signature_key":sitrep_wire::b64::encode(&[1u8; 32])}))
            .send()
            .await
            .expect("req"),
        400,
        "bad_proof",
    )
    .await;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let public = key.verifying_key().to_bytes().to_vec();
    let signed = |code: &str, signed_code: &str| {
        use ed25519_dalek::Signer as _;
        let proof = key.sign(&api::EnrolRequest::proof_message(signed_code, &public));
        api::EnrolRequest {
            code: code.into(),
            signature_key: public.clone(),
            proof: proof.to_bytes().to_vec(),
        }
    };
    check(
        http.post(format!("{u}/v1/enrol"))
            .json(&signed("AAAA-BBBB-CCCC-DDDD", "another code"))
            .send()
            .await
            .expect("req"),
        400,
        "bad_proof",
    )
    .await;
    check(
        http.post(format!("{u}/v1/enrol"))
            .json(&signed("AAAA-BBBB-CCCC-DDDD", "AAAA-BBBB-CCCC-DDDD"))
            .send()
            .await
            .expect("req"),
        403,
        "invalid_code",
    )
    .await;
    check(
        http.get(format!("{u}/v1/inbox")).send().await.expect("req"),
        401,
        "unauthorised",
    )
    .await;
    check(
        http.get(format!("{u}/v1/inbox"))
            .bearer_auth("forged")
            .send()
            .await
            .expect("req"),
        401,
        "unauthorised",
    )
    .await;
    let big = vec![b'a'; 100 * 1024];
    check(
        http.post(format!("{u}/v1/groups/00/messages"))
            .bearer_auth(&token)
            .body(big)
            .send()
            .await
            .expect("req"),
        413,
        "too_large",
    )
    .await;
    check(
        http.post(format!("{u}/v1/groups/00ff/messages"))
            .bearer_auth(&token)
            .json(&serde_json::json!({
                "client_id": "0123456789abcdef0123456789abcdef",
                "payload": sitrep_wire::b64::encode(&[0u8; 20 * 1024]),
            }))
            .send()
            .await
            .expect("req"),
        413,
        "too_large",
    )
    .await;
    check(
        http.post(format!("{u}/v1/groups/zz/messages"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"client_id":"0","payload":""}))
            .send()
            .await
            .expect("req"),
        400,
        "bad_group",
    )
    .await;
    check(
        http.post(format!("{u}/v1/groups/00ff/messages"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"client_id":"0123456789abcdef0123456789abcdef","payload":"AAAA"}))
            .send()
            .await
            .expect("req"),
        404,
        "unknown_group",
    )
    .await;
    check(
        http.post(format!("{u}/v1/groups/00ff/messages"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"client_id":"nope","payload":"AAAA"}))
            .send()
            .await
            .expect("req"),
        400,
        "bad_client_id",
    )
    .await;
    check(
        http.get(format!("{u}/v1/inbox?after=minus-one"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("req"),
        400,
        "bad_query",
    )
    .await;
    check(
        http.post(format!("{u}/v1/keypackages/claim"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"user_ids":["bad id!"]}))
            .send()
            .await
            .expect("req"),
        400,
        "bad_users",
    )
    .await;
    check(
        http.get(format!("{u}/v1/nowhere"))
            .send()
            .await
            .expect("req"),
        404,
        "no_route",
    )
    .await;
    // Idempotent retry: the same client id twice stores one message.
    let gid = a.client.group_hex("x").expect("group");
    let out = a.client.encrypt_text("x", "one", 0).expect("encrypt");
    let r = sitrep_cli::Remote::new(u, Some(&token)).expect("remote");
    let first: api::SendResponse = r
        .post(&format!("/v1/groups/{gid}/messages"), &out.request)
        .await
        .expect("send");
    let again: api::SendResponse = r
        .post(&format!("/v1/groups/{gid}/messages"), &out.request)
        .await
        .expect("retry");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_policy_travels_in_the_group_and_is_enforced_before_encryption() {
    let (server, mut d) = three_staff(INTEROP_CIPHERSUITE).await;
    let nhs = "Pt NHS 943 476 5919 for CT";
    sitrep_cli::chat_create(&mut d[0].1, "blocked", &["bob".into()], "block")
        .await
        .expect("create");
    sitrep_cli::chat_create(&mut d[0].1, "pseudo", &["bob".into()], "pseudonymise")
        .await
        .expect("create");
    sitrep_cli::chat_create(&mut d[0].1, "warned", &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut d[1].1).await.expect("b joins");
    // The policy reached bob inside the encrypted group context.
    assert_eq!(
        d[1].1
            .client
            .conversation("blocked")
            .expect("conv")
            .pid_policy,
        "block"
    );
    let err = sitrep_cli::send_checked(&mut d[0].1, "blocked", nhs, true)
        .await
        .expect_err("blocked");
    assert!(
        matches!(
            err.downcast_ref::<sitrep_core::Error>(),
            Some(sitrep_core::Error::PidBlocked(_))
        ),
        "{err}"
    );
    let err = sitrep_cli::send(&mut d[0].1, "warned", nhs)
        .await
        .expect_err("needs confirmation");
    assert!(matches!(
        err.downcast_ref::<sitrep_core::Error>(),
        Some(sitrep_core::Error::PidNeedsConfirmation(_))
    ));
    sitrep_cli::send_checked(&mut d[0].1, "warned", nhs, true)
        .await
        .expect("confirmed");
    sitrep_cli::send(&mut d[0].1, "pseudo", nhs)
        .await
        .expect("rewritten");
    sitrep_cli::sync(&mut d[1].1).await.expect("b syncs");
    assert!(bodies(&d[1].1, "blocked").is_empty());
    assert_eq!(bodies(&d[1].1, "warned"), vec![nhs]);
    assert_eq!(
        bodies(&d[1].1, "pseudo"),
        vec!["Pt NHS [NHS-NUMBER] for CT"]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaves_and_the_others_commit_the_removal() {
    let (server, mut d) = three_staff(INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut d[0].1, "ward", &["bob".into(), "carol".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut d[1].1).await.expect("b joins");
    sitrep_cli::sync(&mut d[2].1).await.expect("c joins");
    let ev = sitrep_cli::chat_leave(&mut d[2].1, "ward")
        .await
        .expect("leave");
    assert!(ev.contains(&Event::Removed {
        conversation: "ward".into()
    }));
    // Both remaining members sync at once: one commits the removal, the other
    // finds it done (after a 409, or by processing the winner's commit).
    let (a, b) = {
        let (x, y) = d.split_at_mut(1);
        tokio::join!(sitrep_cli::sync(&mut x[0].1), sitrep_cli::sync(&mut y[0].1))
    };
    a.expect("a syncs");
    b.expect("b syncs");
    sitrep_cli::sync(&mut d[0].1).await.expect("a syncs again");
    sitrep_cli::sync(&mut d[1].1).await.expect("b syncs again");
    for (i, dev) in d.iter().take(2).enumerate() {
        let members = dev.1.client.members("ward").expect("members");
        assert_eq!(members.len(), 2, "device {i}: {members:?}");
        assert!(members.iter().all(|m| m.user_id != "carol"));
    }
    sitrep_cli::send(&mut d[0].1, "ward", "after carol left")
        .await
        .expect("send");
    sitrep_cli::sync(&mut d[1].1).await.expect("b reads");
    assert_eq!(bodies(&d[1].1, "ward"), vec!["after carol left"]);
    sitrep_cli::sync(&mut d[2].1).await.expect("c syncs");
    assert!(bodies(&d[2].1, "ward").is_empty());
    assert!(
        sitrep_cli::send(&mut d[2].1, "ward", "still here?")
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_policy_reaches_devices_and_a_forged_one_is_refused() {
    let server = TestServer::start().await;
    let (org, _) = sitrep_server::org::Org::open_or_create(server.dir.path(), None).expect("org");
    let (_dir, mut a) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    assert_eq!(
        a.client.policy().lock_after_idle_secs,
        120,
        "NHS-guidance default"
    );
    let p = sitrep_core::OrgPolicy {
        lock_after_idle_secs: 60,
        min_passcode_len: 12,
        max_failed_unlocks: 5,
        ..sitrep_core::OrgPolicy::default()
    };
    sitrep_server::set_policy(server.dir.path(), &org, p, &sitrep_server::admin_actor())
        .expect("set");
    sitrep_cli::sync(&mut a).await.expect("sync");
    assert_eq!(a.client.policy().lock_after_idle_secs, 60);
    assert_eq!(a.client.policy().max_failed_unlocks, 5);
    // A new device must meet the new passcode length, and is refused before its
    // single-use code is spent.
    let code = server.invite("bob");
    let short = TempDir::new("short");
    let err = sitrep_cli::enrol(
        short.path(),
        &server.url,
        &code,
        "ten chars!",
        INTEROP_CIPHERSUITE,
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("at least 12"), "{err}");
    let ok = TempDir::new("long");
    sitrep_cli::enrol(
        ok.path(),
        &server.url,
        &code,
        "a much longer passcode",
        INTEROP_CIPHERSUITE,
    )
    .await
    .expect("same code still works");
    // Someone with database access slips in a policy the organisation did not sign.
    let rogue = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let forged = sitrep_core::SignedPolicy::sign(
        &sitrep_core::OrgPolicy {
            serial: 99,
            lock_after_idle_secs: 3600,
            ..sitrep_core::OrgPolicy::default()
        },
        &rogue,
    )
    .expect("sign")
    .encode();
    let conn = rusqlite::Connection::open(server.dir.path().join("sitrep.db")).expect("db");
    conn.execute(
        "INSERT INTO policies (serial, signed, created_at) VALUES (99, ?1, 0)",
        [&forged],
    )
    .expect("insert");
    let err = sitrep_cli::sync(&mut a)
        .await
        .expect_err("forged policy reported");
    assert!(format!("{err:#}").contains("did not sign"), "{err:#}");
    assert_eq!(
        a.client.policy().lock_after_idle_secs,
        60,
        "the last valid policy stays"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_wipe_revokes_removes_from_groups_and_destroys_local_data() {
    let (server, mut d) = three_staff(INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut d[0].1, "ward", &["bob".into(), "carol".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut d[1].1).await.expect("b joins");
    sitrep_cli::sync(&mut d[2].1).await.expect("c joins");
    let carol_device = d[2].1.client.device_id().to_string();
    let carol_token = d[2].1.client.token().to_string();
    // The admin wipes carol's lost phone while the server runs.
    assert!(
        sitrep_server::revoke_device(
            server.dir.path(),
            &carol_device,
            &sitrep_server::admin_actor()
        )
        .expect("revoke")
    );
    let http = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/v1/inbox"),
        ("GET", "/v1/devices"),
        ("POST", "/v1/inbox/ack"),
        ("GET", "/v1/keypackages/count"),
    ] {
        let req = if method == "GET" {
            http.get(format!("{}{path}", server.url))
        } else {
            http.post(format!("{}{path}", server.url))
                .json(&serde_json::json!({"up_to": 1}))
        };
        let resp = req.bearer_auth(&carol_token).send().await.expect("req");
        assert_eq!(resp.status().as_u16(), 401, "{path}");
        let body: api::ApiError = resp.json().await.expect("json");
        assert_eq!(body.error, "device_wiped");
    }
    // Within seconds an online member commits carol's removal.
    let mut removed = false;
    for _ in 0..100 {
        sitrep_cli::sync(&mut d[1].1).await.expect("b syncs");
        if d[1].1.client.members("ward").expect("members").len() == 2 {
            removed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(removed, "carol's device was not removed from the group");
    sitrep_cli::sync(&mut d[0].1).await.expect("a syncs");
    assert!(
        d[0].1
            .client
            .members("ward")
            .expect("members")
            .iter()
            .all(|m| m.user_id != "carol")
    );
    sitrep_cli::send(&mut d[0].1, "ward", "after the wipe")
        .await
        .expect("send");
    // The revoked device cannot decrypt what was sent after the revocation.
    let conn = rusqlite::Connection::open(server.dir.path().join("sitrep.db")).expect("db");
    let payload: Vec<u8> = conn
        .query_row(
            "SELECT payload FROM messages WHERE kind = 3 ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("message");
    let seq = d[2].1.client.last_seq() + 1;
    let ev = d[2]
        .1
        .client
        .handle_entry(seq, api::EntryKind::Application, &payload, 0);
    // Refused (from its epoch on, it is out of step: nothing is readable).
    assert!(
        ev.iter().any(|e| matches!(e, Event::Refused { .. }))
            && !ev.iter().any(|e| matches!(e, Event::Message { .. })),
        "{ev:?}"
    );
    // Its next sync fails clearly and destroys its keys and history.
    let dir = d[2].0.path().to_path_buf();
    let records = || {
        use sitrep_core::store::ProfileStore as _;
        sitrep_core::store::SqliteStore::new(&dir)
            .expect("store")
            .load()
            .expect("load")
    };
    assert!(records().is_some());
    let err = sitrep_cli::sync(&mut d[2].1).await.expect_err("wiped");
    assert!(
        format!("{err:#}").contains("wiped by the organisation"),
        "{err:#}"
    );
    assert!(records().is_none(), "local store destroyed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_lists_devices_and_wipes_a_lost_one_from_another() {
    let server = TestServer::start().await;
    let (_d1, phone) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_d2, pc) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let list = sitrep_cli::devices(&pc).await.expect("devices");
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .any(|d| d.this_device && d.device_id == pc.client.device_id())
    );
    sitrep_cli::wipe_device(&pc, phone.client.device_id())
        .await
        .expect("wipe");
    let list = sitrep_cli::devices(&pc).await.expect("devices");
    assert!(
        list.iter()
            .any(|d| d.device_id == phone.client.device_id() && d.revoked_at.is_some())
    );
    let err = sitrep_cli::devices(&phone).await.expect_err("revoked");
    assert!(sitrep_cli::is_wiped(&err));
    // Another user's device cannot be wiped.
    let (_d3, bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    assert!(
        sitrep_cli::wipe_device(&bob, pc.client.device_id())
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_step_policy_needs_the_authenticator_code_to_open_a_profile() {
    let server = TestServer::start().await;
    let (org, _) = sitrep_server::org::Org::open_or_create(server.dir.path(), None).expect("org");
    let (dir, mut a) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let uri = a.client.totp_uri().expect("set up at enrolment");
    let p = sitrep_core::OrgPolicy {
        two_step_required: true,
        ..sitrep_core::OrgPolicy::default()
    };
    sitrep_server::set_policy(server.dir.path(), &org, p, &sitrep_server::admin_actor())
        .expect("set");
    sitrep_cli::sync(&mut a).await.expect("takes up the policy");
    drop(a);
    let err = sitrep_cli::Profile::open_with_code(dir.path(), PASSCODE, None)
        .err()
        .expect("code needed");
    assert!(matches!(
        err.downcast_ref::<sitrep_core::UnlockError>(),
        Some(sitrep_core::UnlockError::TwoStepRequired { .. })
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let code = totp_code(&uri, now);
    sitrep_cli::Profile::open_with_code(dir.path(), PASSCODE, Some(&code))
        .expect("opens with the code");
    server.stop().await;
}

/// An authenticator app: RFC 6238 from the otpauth URI.
fn totp_code(uri: &str, unix: u64) -> String {
    totp_rs::TOTP::from_url(uri)
        .expect("otpauth URI")
        .generate(unix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_joins_all_the_users_conversations() {
    let server = TestServer::start().await;
    let (_p, mut phone) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_b, mut bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut phone, "resus", &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::chat_create(&mut phone, "ward", &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut bob).await.expect("bob joins");
    // The admin approves alice's PC by issuing it a code for the same user.
    let (_pc_dir, mut pc) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::sync(&mut phone)
        .await
        .expect("phone brings the PC in");
    let ev = sitrep_cli::sync(&mut pc).await.expect("pc joins");
    let joined: Vec<&Event> = ev
        .iter()
        .filter(|e| matches!(e, Event::Joined { .. }))
        .collect();
    assert_eq!(joined.len(), 2, "{ev:?}");
    sitrep_cli::send(&mut bob, "resus", "to both of alice's devices")
        .await
        .expect("send");
    sitrep_cli::sync(&mut pc).await.expect("pc reads");
    sitrep_cli::sync(&mut phone).await.expect("phone reads");
    assert_eq!(bodies(&pc, "resus"), vec!["to both of alice's devices"]);
    assert_eq!(bodies(&phone, "resus"), vec!["to both of alice's devices"]);
    sitrep_cli::send(&mut pc, "ward", "from the PC")
        .await
        .expect("pc sends");
    sitrep_cli::sync(&mut bob).await.expect("bob reads");
    assert_eq!(bodies(&bob, "ward"), vec!["from the PC"]);
    server.stop().await;
}

/// Issue 5: per member, delivered and read, and who has not seen a message;
/// only members may ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_and_read_status_per_member() {
    let (server, mut d) = three_staff(INTEROP_CIPHERSUITE).await;
    let (_dave_dir, dave) = device(&server.url, &server.invite("dave"), INTEROP_CIPHERSUITE).await;
    let name = "ward-7";
    sitrep_cli::chat_create(&mut d[0].1, name, &["bob".into(), "carol".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut d[1].1).await.expect("bob joins");
    sitrep_cli::sync(&mut d[2].1).await.expect("carol joins");
    let id = sitrep_cli::send(&mut d[0].1, name, "bed 4 free")
        .await
        .expect("send");
    let status = |who: &str, s: &[sitrep_cli::Seen]| {
        s.iter()
            .find(|x| x.user_id == who)
            .map(|x| (x.delivered, x.read_at.is_some()))
    };

    let s = sitrep_cli::message_status(&d[0].1, name, &id)
        .await
        .expect("status");
    assert_eq!(s.len(), 2, "bob and carol, not the sender: {s:?}");
    assert_eq!(status("bob", &s), Some((false, false)));
    assert_eq!(status("carol", &s), Some((false, false)));

    // Bob's device fetches it: delivered. Then shows it: read.
    sitrep_cli::sync(&mut d[1].1).await.expect("bob syncs");
    let s = sitrep_cli::message_status(&d[0].1, name, &id)
        .await
        .expect("status");
    assert_eq!(status("bob", &s), Some((true, false)));
    assert_eq!(status("carol", &s), Some((false, false)));
    sitrep_cli::mark_read(&d[1].1, &[name.to_string()])
        .await
        .expect("read");
    let s = sitrep_cli::message_status(&d[0].1, name, &id)
        .await
        .expect("status");
    assert_eq!(status("bob", &s), Some((true, true)));
    let not_seen: Vec<_> = s
        .iter()
        .filter(|x| x.read_at.is_none())
        .map(|x| x.user_id.as_str())
        .collect();
    assert_eq!(not_seen, ["carol"]);

    // A later message is not read by an earlier marker.
    let id2 = sitrep_cli::send(&mut d[0].1, name, "bed 5 free")
        .await
        .expect("send");
    sitrep_cli::sync(&mut d[1].1).await.expect("bob syncs");
    let s = sitrep_cli::message_status(&d[0].1, name, &id2)
        .await
        .expect("status");
    assert_eq!(status("bob", &s), Some((true, false)));

    // Someone outside the conversation is refused.
    let gid = d[0].1.client.group_hex(name).expect("gid");
    let seq = d[0]
        .1
        .client
        .conversation(name)
        .expect("conv")
        .history
        .last()
        .expect("entry")
        .seq;
    assert!(seq > 0);
    let r = reqwest::Client::new()
        .get(format!("{}/v1/groups/{gid}/status?seq={seq}", server.url))
        .bearer_auth(dave.client.token())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/groups/{gid}/read", server.url))
        .bearer_auth(dave.client.token())
        .json(&api::ReadRequest { seq })
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403);
}

/// `/readyz` says the store answers (for a load balancer); `/healthz` that
/// the process is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_once_the_store_does() {
    let server = TestServer::start().await;
    let r = reqwest::get(format!("{}/readyz", server.url))
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["status"], "ready");
    server.stop().await;
}

/// An invitation names its organisation's key: a device refuses to enrol
/// with a server that offers another (a rogue server, or a machine in the
/// middle), before the code leaves it, so the code still works at the real
/// one; a code with a check altered is refused too. The fingerprint is shown
/// to staff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_refuses_a_server_that_is_not_the_invitations_organisation() {
    let real = TestServer::start().await;
    let rogue = TestServer::start().await;
    let code = real.invite("alice");
    assert_eq!(code.len(), 39, "{code}");
    let dir = TempDir::new("rogue-profile");
    let err = sitrep_cli::enrol(dir.path(), &rogue.url, &code, PASSCODE, INTEROP_CIPHERSUITE)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("not the organisation this invitation is from"),
        "{err:#}"
    );
    // A check changed by one character: refused as well.
    let mut forged: Vec<char> = code.chars().collect();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == '0' { '1' } else { '0' };
    let forged: String = forged.into_iter().collect();
    let dir2 = TempDir::new("forged-profile");
    assert!(
        sitrep_cli::enrol(
            dir2.path(),
            &real.url,
            &forged,
            PASSCODE,
            INTEROP_CIPHERSUITE
        )
        .await
        .is_err()
    );
    // The code was never given to the rogue server: it still enrols at the real one.
    let (_d, p) = device(&real.url, &code, INTEROP_CIPHERSUITE).await;
    let (org, _) = sitrep_server::org::Org::open_or_create(real.dir.path(), None).expect("org");
    assert_eq!(p.client.org_fingerprint(), org.fingerprint());
    rogue.stop().await;
    real.stop().await;
}
