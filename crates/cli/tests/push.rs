//! Content-free Web Push against a push service played by a local HTTP
//! listener: an offline device's endpoint gets an empty POST signed with
//! the server's VAPID key (ES256 JWT for the endpoint's origin), holding
//! nothing of the message, the conversation or the sender; a connected
//! device gets none; an endpoint the service calls gone (410) is deleted;
//! endpoints outside the allowed push services are refused.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::*;
use p256::ecdsa::signature::Verifier as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use sitrep_core::DEFAULT_CIPHERSUITE;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Debug, Clone)]
struct Hit {
    path: String,
    head: String,
    body_len: usize,
    body: Vec<u8>,
}

/// A push service: answers 410 under `/gone/`, 201 elsewhere, and keeps
/// every request.
async fn push_service() -> (String, Arc<Mutex<Vec<Hit>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let hits = Arc::new(Mutex::new(Vec::new()));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = c.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = c.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let status = if path.starts_with("/gone/") {
                    "410 Gone"
                } else {
                    "201 Created"
                };
                h.lock().expect("hits").push(Hit {
                    path,
                    head: head.clone(),
                    body_len: len.max(buf.len() - head_end),
                    body: buf[head_end..].to_vec(),
                });
                let _ = c
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (url, hits)
}

async fn post(url: &str, token: &str, path: &str, body: serde_json::Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("answer");
    (r.status().as_u16(), r.text().await.expect("body"))
}

async fn wait_for(hits: &Arc<Mutex<Vec<Hit>>>, path: &str) -> Hit {
    for _ in 0..200 {
        if let Some(h) = hits.lock().expect("hits").iter().find(|h| h.path == path) {
            return h.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no push to {path}");
}

fn count(hits: &Arc<Mutex<Vec<Hit>>>, path: &str) -> usize {
    hits.lock()
        .expect("hits")
        .iter()
        .filter(|h| h.path == path)
        .count()
}

#[tokio::test]
async fn an_offline_browser_gets_an_empty_signed_push_and_nothing_else() {
    let (push, hits) = push_service().await;
    let s = TestServer::start_with(|c| c.push_hosts = vec!["127.0.0.1".into()]).await;
    let (_da, mut alice) = device(&s.url, &s.invite("alice"), DEFAULT_CIPHERSUITE).await;
    let (_db, bob) = device(&s.url, &s.invite("bob"), DEFAULT_CIPHERSUITE).await;
    let (_dc, carol) = device(&s.url, &s.invite("carol"), DEFAULT_CIPHERSUITE).await;
    let (_dd, dave) = device(&s.url, &s.invite("dave"), DEFAULT_CIPHERSUITE).await;
    let tok = |p: &sitrep_cli::Profile| p.client.token().to_string();

    // Endpoints elsewhere than a push service are refused.
    for bad in [
        "https://evil.example/push/1".to_string(),
        "http://10.0.0.1/push".into(),
        "file:///etc/passwd".into(),
        "not a url".into(),
        format!(
            "http://user:pw@127.0.0.1:{}/x",
            push.rsplit(':').next().expect("port")
        ),
        format!("{push}/{}", "x".repeat(3000)),
    ] {
        let (st, body) = post(
            &s.url,
            &tok(&bob),
            "/v1/push/subscribe",
            serde_json::json!({"endpoint": bad}),
        )
        .await;
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(body.contains("bad_endpoint"), "{body}");
    }
    let (st, _) = post(
        &s.url,
        "not-a-token",
        "/v1/push/subscribe",
        serde_json::json!({"endpoint": format!("{push}/ok/x")}),
    )
    .await;
    assert_eq!(st, 401);

    for (p, path) in [
        (&bob, "/ok/bob"),
        (&carol, "/gone/carol"),
        (&dave, "/ok/dave"),
    ] {
        let (st, body) = post(
            &s.url,
            &tok(p),
            "/v1/push/subscribe",
            serde_json::json!({"endpoint": format!("{push}{path}")}),
        )
        .await;
        assert_eq!(st, 200, "{body}");
    }
    // Dave is connected: the WebSocket is his wake-up, not a push.
    let _dave_ws = dave
        .remote()
        .expect("remote")
        .ws("/v1/ws", Duration::from_secs(5))
        .await
        .expect("ws");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let text = "Resus 2: NHS 943 476 5919 arriving";
    sitrep_cli::chat_create(
        &mut alice,
        "resus",
        &["bob".into(), "carol".into(), "dave".into()],
        "off",
    )
    .await
    .expect("create");
    sitrep_cli::send(&mut alice, "resus", text)
        .await
        .expect("send");
    let gid = alice.client.group_hex("resus").expect("gid");

    let hit = wait_for(&hits, "/ok/bob").await;
    assert_eq!(hit.body_len, 0, "an empty push");
    // Past the request line (the endpoint is the push service's own) and
    // the signature (checked below), nothing but fixed headers.
    let head = hit.head.to_ascii_lowercase();
    let headers: String = head
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("authorization:"))
        .collect::<Vec<_>>()
        .join("\n");
    for leak in ["resus", "943", "alice", &gid[..16]] {
        assert!(!headers.contains(leak), "{leak} in the push: {headers}");
    }
    assert!(head.contains("\r\nttl: "), "{head}");
    // The VAPID header verifies with the server's published key, for this
    // push service's origin.
    let key: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/push/key", s.url))
        .bearer_auth(tok(&bob))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let public = key["public_key"].as_str().expect("key");
    let auth = hit
        .head
        .lines()
        .find_map(|l| l.strip_prefix("authorization: "))
        .expect("authorization");
    let rest = auth.strip_prefix("vapid t=").expect("vapid scheme");
    let (jwt, k) = rest.split_once(", k=").expect("t and k");
    assert_eq!(k.trim(), public);
    let (signed, sig) = jwt.rsplit_once('.').expect("jwt");
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&B64.decode(public).expect("b64"))
        .expect("point");
    let sig = p256::ecdsa::Signature::from_slice(&B64.decode(sig).expect("b64")).expect("sig");
    vk.verify(signed.as_bytes(), &sig)
        .expect("the JWT is the server's");
    let claims: serde_json::Value = serde_json::from_slice(
        &B64.decode(signed.split('.').nth(1).expect("claims"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(claims["aud"], push);
    assert!(claims["exp"].as_u64().expect("exp") > sitrep_cli::now_ms() / 1000);
    assert!(claims["sub"].as_str().expect("sub").starts_with("mailto:"));
    let mut keys: Vec<_> = claims
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(keys, ["aud", "exp", "sub"], "the JWT says nothing else");

    // Carol's push service said gone: her endpoint was deleted, so the
    // next message (past the coalescing gap) does not go there again.
    wait_for(&hits, "/gone/carol").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&hits, "/ok/dave"),
        0,
        "a connected device gets no push"
    );
    tokio::time::sleep(sitrep_server::push::MIN_GAP + Duration::from_millis(500)).await;
    sitrep_cli::send(&mut alice, "resus", "second")
        .await
        .expect("send");
    for _ in 0..100 {
        if count(&hits, "/ok/bob") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&hits, "/ok/bob"), 2, "bob woken again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&hits, "/gone/carol"),
        1,
        "a gone endpoint is forgotten"
    );

    // Unsubscribing stops them.
    let (st, _) = post(
        &s.url,
        &tok(&bob),
        "/v1/push/unsubscribe",
        serde_json::json!({"endpoint": format!("{push}/ok/bob")}),
    )
    .await;
    assert_eq!(st, 200);
    tokio::time::sleep(sitrep_server::push::MIN_GAP + Duration::from_millis(500)).await;
    sitrep_cli::send(&mut alice, "resus", "third")
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&hits, "/ok/bob"), 2, "none after unsubscribing");
    drop(bob);
    s.stop().await;
}

/// What a browser does with an `aes128gcm` push body (RFC 8291/8188).
fn open_push(ua: &p256::SecretKey, auth: &[u8], body: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead as _, KeyInit as _};
    let salt = &body[..16];
    let idlen = body[20] as usize;
    let as_public = &body[21..21 + idlen];
    let sealed = &body[21 + idlen..];
    let ua_public = ua.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(
        ua.to_nonzero_scalar(),
        p256::PublicKey::from_sec1_bytes(as_public)
            .expect("point")
            .as_affine(),
    );
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_public.as_bytes());
    info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(auth), shared.raw_secret_bytes().as_slice())
        .expand(&info, &mut ikm)
        .expect("ikm");
    let prk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .expect("cek");
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .expect("nonce");
    let mut plain = aes_gcm::Aes128Gcm::new_from_slice(&cek)
        .expect("key")
        .decrypt(aes_gcm::Nonce::from_slice(&nonce), sealed)
        .expect("the browser can open it");
    assert_eq!(plain.pop(), Some(2), "one last record");
    plain
}

#[tokio::test]
async fn an_urgent_alert_carries_one_encrypted_word_and_a_message_none() {
    let (push, hits) = push_service().await;
    let s = TestServer::start_with(|c| c.push_hosts = vec!["127.0.0.1".into()]).await;
    let (_da, mut alice) = device(&s.url, &s.invite("alice"), DEFAULT_CIPHERSUITE).await;
    let (_de, erin) = device(&s.url, &s.invite("erin"), DEFAULT_CIPHERSUITE).await;
    let ua = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let auth = [9u8; 16];
    let keys = serde_json::json!({
        "p256dh": B64.encode(ua.public_key().to_encoded_point(false).as_bytes()),
        "auth": B64.encode(auth),
    });
    // Keys that are not a browser's are refused.
    for bad in [
        serde_json::json!({"p256dh": "AAAA", "auth": B64.encode(auth)}),
        serde_json::json!({"p256dh": keys["p256dh"], "auth": "AAAA"}),
    ] {
        let (st, body) = post(
            &s.url,
            erin.client.token(),
            "/v1/push/subscribe",
            serde_json::json!({"endpoint": format!("{push}/ok/erin"), "keys": bad}),
        )
        .await;
        assert_eq!(st, 400, "{body}");
        assert!(body.contains("bad_keys"), "{body}");
    }
    let (st, body) = post(
        &s.url,
        erin.client.token(),
        "/v1/push/subscribe",
        serde_json::json!({"endpoint": format!("{push}/ok/erin"), "keys": keys}),
    )
    .await;
    assert_eq!(st, 200, "{body}");

    sitrep_cli::chat_create(&mut alice, "resus", &["erin".into()], "off")
        .await
        .expect("create");
    // The Welcome: an empty push.
    let first = wait_for(&hits, "/ok/erin").await;
    assert_eq!(first.body_len, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = count(&hits, "/ok/erin");
    // An alert goes at once, past the coalescing gap, with `urgent` inside.
    sitrep_cli::incident::alert_send(
        &mut alice,
        "user:erin",
        sitrep_wire::incident::Priority::Urgent,
        "Resus now: NHS 943 476 5919",
        60,
        Some("resus".into()),
    )
    .await
    .expect("alert");
    let mut hit = None;
    for _ in 0..100 {
        let h = hits
            .lock()
            .expect("hits")
            .iter()
            .filter(|h| h.path == "/ok/erin")
            .nth(before)
            .cloned();
        if h.is_some() {
            hit = h;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hit = hit.expect("an urgent push");
    assert!(
        hit.head
            .to_ascii_lowercase()
            .contains("content-encoding: aes128gcm"),
        "{}",
        hit.head
    );
    assert_eq!(
        open_push(&ua, &auth, &hit.body),
        b"urgent",
        "the one word, nothing of the alert"
    );
    s.stop().await;
}
