//! Issue 2, test 5: the server process is killed with SIGKILL mid-conversation
//! and restarted on the same data directory; no acknowledged message is lost.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sitrep_core::INTEROP_CIPHERSUITE;

#[allow(clippy::zombie_processes)] // the caller kills and waits for the returned child
async fn spawn_server(data: &std::path::Path, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["serve", "--init", "--data"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("SITREP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sitrep serve");
    for _ in 0..200 {
        if reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t5_sigkill_and_restart_loses_no_acknowledged_message() {
    let data = TempDir::new("crash");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(data.path(), port).await;
    let invite = |u: &str| {
        sitrep_server::create_invite(data.path(), u, u, "ED consultant", 3600).expect("invite")
    };
    let (_da, mut a) = device(&url, &invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut b) = device(&url, &invite("bob"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut a, "ward", &["bob".into()], "warn")
        .await
        .expect("create");
    sitrep_cli::sync(&mut b).await.expect("b joins");

    // Alice keeps sending while the server is killed under her; every message
    // the server acknowledged must reach Bob after the restart.
    let mut acked = Vec::new();
    for i in 0..40 {
        if i == 25 {
            // SIGKILL: no shutdown, no flush.
            server.kill().expect("kill");
            server.wait().expect("reap");
            server = spawn_server(data.path(), port).await;
        }
        let text = format!("obs {i:02}");
        sitrep_cli::send(&mut a, "ward", &text)
            .await
            .expect("send acknowledged");
        acked.push(text);
    }
    // Kill once more right after the last acknowledgement.
    server.kill().expect("kill");
    server.wait().expect("reap");
    let mut server = spawn_server(data.path(), port).await;
    sitrep_cli::sync(&mut b)
        .await
        .expect("b syncs after restart");
    assert_eq!(bodies(&b, "ward"), acked);
    sitrep_cli::send(&mut b, "ward", "still here")
        .await
        .expect("conversation continues");
    sitrep_cli::sync(&mut a).await.expect("a syncs");
    assert_eq!(
        bodies(&a, "ward").last().map(String::as_str),
        Some("still here")
    );
    server.kill().expect("kill");
    let _ = server.wait();
}

/// Issue 12, outbox first: messages written while the server is down are
/// kept sealed on the device, `send` succeeds and says they are queued, and
/// once the server is back one sync delivers every one, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_while_the_server_is_down_are_queued_then_delivered_once_in_order() {
    let data = TempDir::new("outbox");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(data.path(), port).await;
    let invite = |u: &str| {
        sitrep_server::create_invite(data.path(), u, u, "ED consultant", 3600).expect("invite")
    };
    let (_da, mut a) = device(&url, &invite("alice"), INTEROP_CIPHERSUITE).await;
    let (_db, mut b) = device(&url, &invite("bob"), INTEROP_CIPHERSUITE).await;
    sitrep_cli::chat_create(&mut a, "ward", &["bob".into()], "off")
        .await
        .expect("create");
    sitrep_cli::sync(&mut b).await.expect("b joins");

    server.kill().expect("kill");
    server.wait().expect("wait");
    for i in 0..40 {
        let sent = sitrep_cli::send_queued(&mut a, "ward", &format!("offline {i}"), false)
            .await
            .expect("send succeeds with the server down");
        assert!(sent.queued.is_some(), "message {i} should be queued");
    }
    assert_eq!(a.client.waiting().len(), 40);

    let mut server = spawn_server(data.path(), port).await;
    sitrep_cli::sync(&mut a).await.expect("a sends the outbox");
    assert!(a.client.waiting().is_empty());
    // A second sync sends nothing again.
    sitrep_cli::sync(&mut a).await.expect("a syncs again");
    sitrep_cli::sync(&mut b).await.expect("b receives");
    let got: Vec<String> = bodies(&b, "ward")
        .into_iter()
        .filter(|t| t.starts_with("offline "))
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("offline {i}")).collect();
    assert_eq!(got, want);
    server.kill().expect("kill");
    server.wait().expect("wait");
}
