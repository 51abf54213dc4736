//! Denial-of-service attacks on the real server (issue 11, point 5): every
//! buffer is bounded in bytes and in time. Each test attacks a server on a
//! loopback port and checks what a user or an operator would notice.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use sitrep_core::INTEROP_CIPHERSUITE;
use sitrep_wire::api;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

/// The tests measure this process's memory and open a thousand sockets: one
/// at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1024 * 1024;

fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Resident memory of this process (KiB).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A sender and a receiver (real enrolled devices) in a real group (the
/// server validates commits); application payloads are opaque to it, so the
/// test writes them directly.
struct Pair {
    _dirs: (TempDir, TempDir),
    sender: String,
    receiver: String,
    gid: String,
    http: reqwest::Client,
    url: String,
}

impl Pair {
    async fn new(server: &TestServer) -> Self {
        let (da, mut a) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
        let (db, b) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
        sitrep_cli::chat_create(&mut a, "dos", &["bob".into()], "off")
            .await
            .expect("group");
        Self {
            _dirs: (da, db),
            sender: a.client.token().to_string(),
            receiver: b.client.token().to_string(),
            gid: a.client.group_hex("dos").expect("group"),
            http: reqwest::Client::new(),
            url: server.url.clone(),
        }
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        body: &impl serde::Serialize,
    ) -> serde_json::Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request");
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.expect("json")
    }

    /// Send `n` messages of `len` bytes; their sequence numbers.
    async fn send(&self, n: usize, len: usize) -> BTreeSet<u64> {
        let mut seqs = BTreeSet::new();
        let gid = hex::decode(&self.gid).expect("hex");
        for i in 0..n {
            // A well-framed MLS application message nobody decrypts.
            // Epoch 1: the group after its creator added the receiver.
            let payload = sitrep_cli::bench::opaque_application(&gid, 1, len);
            let r: api::SendResponse = serde_json::from_value(
                self.post(
                    &format!("/v1/groups/{}/messages", self.gid),
                    &self.sender,
                    &api::SendRequest {
                        client_id: format!("{len:016x}{i:016x}"),
                        payload,
                        urgent: false,
                    },
                )
                .await,
            )
            .expect("send response");
            seqs.insert(r.seq);
        }
        seqs
    }

    async fn websocket(
        &self,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = self.url.replacen("http://", "ws://", 1) + "/v1/ws";
        let mut req = url.into_client_request().expect("ws request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.receiver).parse().expect("header"),
        );
        tokio_tungstenite::connect_async(req).await.expect("ws").0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_and_health_still_answers() {
    let _serial = SERIAL.lock().await;
    // Fewer connection slots than attackers: only the header timeout frees them.
    let server = TestServer::start_with(|c| {
        c.header_read_timeout = Duration::from_secs(2);
        c.max_connections = 1_000;
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..1_100 {
        let mut s = tokio::net::TcpStream::connect(addr(&server))
            .await
            .expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            .await
            .expect("half a request");
        stalled.push(s);
    }
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
        .get(format!("{}/healthz", server.url))
        .send()
        .await
        .expect("healthz answers while 1,100 half-sent requests are open");
    assert_eq!(health.status(), 200);
    // Every stalled connection is closed by the server (408, then EOF).
    let closed = futures_util::future::join_all(stalled.iter_mut().map(|s| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
            .await
            .is_ok()
    }))
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} stalled connections still open");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_reads_is_dropped_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start_with(|c| {
        c.max_message = MIB;
        c.ws_queue_bytes = 2 * MIB;
        c.write_timeout = Duration::from_secs(1);
    })
    .await;
    let pair = Pair::new(&server).await;
    let mut stuck = pair.websocket().await;
    let before = rss_kib();
    // 96 MiB pushed at a client that reads nothing.
    let sent = pair.send(96, MIB).await;
    let grown = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown < 48,
        "server memory grew by {grown} MiB for one client that does not read"
    );
    // The server has given up on it: its stream ends after what the kernel
    // had buffered.
    let mut first = BTreeSet::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(m)) = stuck.next().await {
            if let Message::Binary(b) = m {
                let (seq, _, _) = sitrep_wire::frame::decode(&b, 2 * MIB).expect("frame");
                first.insert(seq);
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the non-reading connection was never closed");
    assert!(
        !sent.is_subset(&first),
        "the stuck client got everything: the attack never filled a buffer"
    );
    // Reconnecting, nothing was acknowledged: every entry comes from the store.
    let mut ws = pair.websocket().await;
    let mut got = BTreeSet::new();
    let complete = tokio::time::timeout(Duration::from_secs(60), async {
        while !sent.is_subset(&got) {
            let Some(Ok(m)) = ws.next().await else { break };
            if let Message::Binary(b) = m {
                let (seq, kind, payload) = sitrep_wire::frame::decode(&b, 2 * MIB).expect("frame");
                if kind == api::EntryKind::Application {
                    assert_eq!(payload.len(), MIB);
                    assert!(got.insert(seq), "seq {seq} delivered twice");
                }
            }
        }
    })
    .await;
    assert!(complete.is_ok(), "reconnected client stalled");
    assert_eq!(got, sent, "every message reaches the reconnected client");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_pages_are_bounded_in_bytes_and_page_through_every_entry_once() {
    let _serial = SERIAL.lock().await;
    let page = MIB;
    let server = TestServer::start_with(|c| {
        c.page_bytes = page;
        c.max_message = 2 * page;
    })
    .await;
    let pair = Pair::new(&server).await;
    // An entry larger than a page must still come through, alone.
    let mut sent = pair.send(1, 3 * page / 2).await;
    sent.extend(pair.send(12, 300 * 1024).await);
    let http = reqwest::Client::new();
    let (mut after, mut seen, mut pages) = (0u64, Vec::new(), 0);
    let mut big_alone = false;
    loop {
        let r = http
            .get(format!("{}/v1/inbox?after={after}", server.url))
            .bearer_auth(&pair.receiver)
            .send()
            .await
            .expect("inbox");
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.expect("body");
        let inbox: api::InboxResponse = serde_json::from_slice(&body).expect("inbox json");
        pages += 1;
        assert!(!inbox.entries.is_empty(), "an empty page said more");
        let payload: usize = inbox.entries.iter().map(|e| e.payload.len()).sum();
        if inbox.entries.len() == 1 {
            big_alone |= inbox.entries[0].payload.len() > page;
        } else {
            assert!(payload <= page, "page of {payload} payload bytes");
            // base64 and JSON around it
            assert!(
                body.len() <= page * 4 / 3 + 4096,
                "page of {} bytes",
                body.len()
            );
        }
        seen.extend(inbox.entries.iter().map(|e| e.seq));
        after = inbox.entries.last().map_or(after, |e| e.seq);
        if !inbox.more {
            break;
        }
        assert!(pages < 100, "paging does not end");
    }
    assert!(big_alone, "the oversized entry came alone in its page");
    assert!(pages >= 5, "{pages} pages for 13 entries of 4.9 MiB");
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an entry came twice");
    assert!(sent.is_subset(&unique), "every message was paged through");
    assert_eq!(unique.len(), sent.len() + 1, "the messages and the Welcome");
    server.stop().await;
}

/// Write `head` and part of a body, stop, and read what the server answers.
async fn answer_to_partial(server: &TestServer, head: &str, body_part: usize) -> String {
    let mut s = tokio::net::TcpStream::connect(addr(server))
        .await
        .expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    s.write_all(&vec![b'{'; body_part]).await.expect("body");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer while the body was still being sent"
    );
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_before_they_are_read() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    // 16 MiB announced to the unauthenticated enrolment: 413 with 64 KiB sent.
    let answer = answer_to_partial(
        &server,
        "POST /v1/enrol HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 16777216\r\n\r\n",
        64 * 1024,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too_large\""), "{answer}");
    // The same without a length: cut off once past the route's limit.
    let answer = answer_to_partial(
        &server,
        "POST /v1/enrol HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n10000\r\n",
        64 * 1024,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // An authenticated small route takes kilobytes, not the commit limit.
    let (_dir, a) = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let padded = format!("{{\"up_to\": 1, \"pad\": \"{}\"}}", "x".repeat(200 * 1024));
    let r = reqwest::Client::new()
        .post(format!("{}/v1/inbox/ack", server.url))
        .bearer_auth(a.client.token())
        .header("content-type", "application/json")
        .body(padded)
        .send()
        .await
        .expect("ack");
    assert_eq!(r.status(), 413);
    let e: api::ApiError = r.json().await.expect("error json");
    assert_eq!(e.error, "too_large");
    server.stop().await;
}

/// A client whose connections come from `ip` (any 127/8 address is local).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_flooding_enrolment_is_limited_and_others_still_enrol() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let flood = client_from("127.0.0.2");
    let mut limited = 0;
    for _ in 0..60 {
        let r = flood
            .post(format!("{}/v1/enrol", server.url))
            .json(&serde_json::json!({
                "code": "AAAA-BBBB-CCCC-DDDD",
                "signature_key": sitrep_wire::b64::encode(&[1u8; 32]),
            }))
            .send()
            .await
            .expect("enrol");
        match r.status().as_u16() {
            429 => limited += 1,
            // Refused by the enrolment itself (no such code, no proof).
            400 | 403 => {}
            s => panic!("unexpected {s}"),
        }
    }
    assert!(limited >= 40, "only {limited} of 60 were limited");
    // Someone else, from another address, enrols at once: the flood did not
    // drain the server-wide bucket.
    let (_dir, bob) = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    assert!(!bob.client.device_id().is_empty());
    let r = client_from("127.0.0.3")
        .post(format!("{}/v1/enrol", server.url))
        .json(&serde_json::json!({"code": "AAAA-BBBB-CCCC-DDDD"}))
        .send()
        .await
        .expect("enrol");
    assert_ne!(r.status(), 429, "a third address is still served");
    // The same for the public reads.
    let probe = client_from("127.0.0.4");
    let mut health_limited = 0;
    for _ in 0..80 {
        let r = probe
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .expect("healthz");
        health_limited += usize::from(r.status() == 429);
    }
    assert!(health_limited >= 20, "only {health_limited} of 80 limited");
    let r = client_from("127.0.0.5")
        .get(format!("{}/v1/policy", server.url))
        .send()
        .await
        .expect("policy");
    assert_eq!(r.status(), 200);
    server.stop().await;
}
