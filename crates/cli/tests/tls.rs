//! TLS end to end: `sitrep serve --tls-cert/--tls-key` with certificates made
//! here (rcgen, through `sitrep_cli::tls::make_private_ca`), devices enrolled
//! with `--ca`, and what an attacker or a careless setup tries: no CA, the
//! wrong name, plain HTTP across a network, a TLS port spoken to in clear, a
//! handshake that never finishes, a certificate renewed (SIGHUP) and one
//! that is broken.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PASSCODE as PASS, Served, TempDir, cli, cli_invite, cli_ok, free_port, listening};

/// `sitrep serve` over TLS on `port`, once it accepts connections.
fn serve_tls(d: &str, port: u16, ca: &sitrep_cli::tls::PrivateCa) -> Served {
    common::serve_on_with(
        d,
        port,
        &[
            "--tls-cert".as_ref(),
            ca.files.cert.as_os_str(),
            "--tls-key".as_ref(),
            ca.files.key.as_os_str(),
        ],
    )
}

fn run(args: &[&str]) -> std::process::Output {
    cli(PASS, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run sitrep")
}

/// The leaf certificate a TLS server on `port` presents, trusting `ca_pem`;
/// `None` if the handshake fails.
async fn presented(port: u16, ca_pem: &str) -> Option<Vec<u8>> {
    let pem = rustls_pem_certs(ca_pem);
    let mut roots = rustls::RootCertStore::empty();
    for c in pem {
        roots.add(c).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    Some(certs.first()?.to_vec())
}

fn rustls_pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("pem")
}

#[test]
fn devices_enrol_and_talk_over_tls_with_a_private_ca() {
    let dir = TempDir::new("tls-e2e");
    let d = dir.path().join("server");
    let d = d.to_str().expect("path");
    // As a trust without a PKI makes them.
    let tls = dir.path().join("tls");
    let args = [
        "admin",
        "tls-cert",
        "--out",
        tls.to_str().expect("path"),
        "--name",
        "localhost",
    ];
    let out = cli_ok(cli(PASS, &args), &args);
    assert!(out.contains("ca.pem"), "{out}");
    // Never over an existing key.
    assert!(!run(&args).status.success(), "overwrote a server key");
    let ca = sitrep_cli::tls::PrivateCa {
        files: sitrep_server::TlsFiles {
            cert: tls.join("server-cert.pem"),
            key: tls.join("server-key.pem"),
        },
        ca_file: tls.join("ca.pem"),
        ca_pem: std::fs::read_to_string(tls.join("ca.pem")).expect("ca.pem"),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&ca.files.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    }
    let port = free_port();
    let _server = serve_tls(d, port, &ca);
    let url = format!("https://localhost:{port}");
    let ca_file = ca.ca_file.to_str().expect("path");
    let prof = |u: &str| dir.path().join(u).to_str().expect("path").to_string();

    // Without the trust's CA the certificate is refused, before the code is
    // sent: the same code then still enrols.
    let code = cli_invite(PASS, d, "alice");
    let pa = prof("alice");
    let out = run(&["--profile", &pa, "enrol", "--server", &url, "--code", &code]);
    assert!(!out.status.success(), "enrolled without trusting the CA");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the server"), "{err}");
    // The wrong name: the certificate is for localhost, not 127.0.0.1.
    let by_ip = format!("https://127.0.0.1:{port}");
    let out = run(&[
        "--profile",
        &pa,
        "enrol",
        "--server",
        &by_ip,
        "--code",
        &code,
        "--ca",
        ca_file,
    ]);
    assert!(
        !out.status.success(),
        "a certificate for another name was accepted"
    );
    let args = [
        "--profile",
        &pa,
        "enrol",
        "--server",
        &url,
        "--code",
        &code,
        "--ca",
        ca_file,
    ];
    cli_ok(cli(PASS, &args), &args);

    // Bob, then a conversation over TLS; the CA is kept in each profile, so
    // later commands need no --ca.
    let code = cli_invite(PASS, d, "bob");
    let pb = prof("bob");
    let args = [
        "--profile",
        &pb,
        "enrol",
        "--server",
        &url,
        "--code",
        &code,
        "--ca",
        ca_file,
    ];
    cli_ok(cli(PASS, &args), &args);
    let args = [
        "--profile",
        &pa,
        "chat",
        "create",
        "ward",
        "--members",
        "bob",
    ];
    cli_ok(cli(PASS, &args), &args);
    let args = ["--profile", &pa, "send", "ward", "bed 4 needs review"];
    cli_ok(cli(PASS, &args), &args);
    let args = ["--profile", &pb, "sync"];
    let out = cli_ok(cli(PASS, &args), &args);
    assert!(out.contains("bed 4 needs review"), "{out}");
    // The CA file can go: the profile holds it.
    std::fs::remove_file(&ca.ca_file).expect("rm");
    let args = ["--profile", &pb, "send", "ward", "on my way"];
    cli_ok(cli(PASS, &args), &args);
    let args = ["--profile", &pa, "sync"];
    let out = cli_ok(cli(PASS, &args), &args);
    assert!(out.contains("on my way"), "{out}");
    // Nothing about the CA or the certificates is in the profile in clear.
    let needle = &rustls_pem_certs(&ca.ca_pem)[0];
    for f in common::files_under(std::path::Path::new(&pb)) {
        let bytes = std::fs::read(&f).expect("read");
        assert!(
            !common::contains(&bytes, &needle[..64]),
            "{f:?} holds the CA in clear"
        );
        assert!(!common::contains(&bytes, b"BEGIN CERTIFICATE"), "{f:?}");
    }
}

#[tokio::test]
async fn http2_websocket_and_what_a_tls_port_does_with_bad_peers() {
    let dir = TempDir::new("tls-server");
    let ca = sitrep_cli::tls::make_private_ca(&dir.path().join("tls"), &["localhost"])
        .expect("certificates");
    let data = dir.path().join("server");
    sitrep_server::org::Org::open_or_create(&data, None).expect("organisation");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut config = sitrep_server::Config::new(&data);
    config.tls = Some(ca.files.clone());
    config.header_read_timeout = Duration::from_secs(1);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sitrep_server::run(listener, config, async {
        let _ = rx.await;
    }));
    let url = format!("https://localhost:{port}");
    let remote = sitrep_cli::Remote::with_ca(&url, None, Some(&ca.ca_pem)).expect("remote");
    let mut up = false;
    for _ in 0..100 {
        if remote.get::<serde_json::Value>("/healthz").await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "TLS server did not answer");

    // HTTP/2 where the client offers it (ALPN), HTTP/1.1 where it does not.
    let ca_cert = reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).expect("ca");
    let h2 = reqwest::Client::builder()
        .add_root_certificate(ca_cert.clone())
        .tls_built_in_root_certs(false)
        .build()
        .expect("client");
    let r = h2.get(format!("{url}/healthz")).send().await.expect("h2");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(r.status().is_success());
    let h1 = reqwest::Client::builder()
        .add_root_certificate(ca_cert)
        .tls_built_in_root_certs(false)
        .http1_only()
        .build()
        .expect("client");
    let r = h1.get(format!("{url}/healthz")).send().await.expect("h1");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    // A device enrolled over TLS holds a live WebSocket (wss://).
    let code =
        sitrep_server::create_invite(&data, "carol", "Dr Carol", "ED", 3600).expect("invite");
    let pdir = TempDir::new("tls-carol");
    let p = sitrep_cli::enrol_with_ca(
        pdir.path(),
        &url,
        &code,
        PASS,
        sitrep_core::INTEROP_CIPHERSUITE,
        Some(ca.ca_pem.clone()),
    )
    .await
    .expect("enrol over TLS");
    let ws = p
        .remote()
        .expect("remote")
        .ws("/v1/ws", Duration::from_secs(10))
        .await;
    assert!(ws.is_ok(), "wss: {:?}", ws.err());

    // Plain HTTP to the TLS port: no answer in clear (a TLS alert at most),
    // the connection is closed, and the server goes on.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed, not left hanging")
        .ok();
    assert!(!common::contains(&buf, b"HTTP/1.1"), "answered in clear");
    assert!(buf.len() < 64, "{} bytes answered to plain HTTP", buf.len());

    // A handshake that never finishes is closed after the header timeout
    // instead of holding a connection for ever.
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(&[0x16, 0x03, 0x01])
        .await
        .expect("a partial ClientHello");
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut [0u8; 64]))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the server answered a partial ClientHello");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    assert!(remote.get::<serde_json::Value>("/healthz").await.is_ok());

    let _ = tx.send(());
    task.await.expect("join").expect("server ran");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_broken_one_keeps_the_old() {
    let dir = TempDir::new("tls-reload");
    let d = dir.path().join("server");
    let d = d.to_str().expect("path").to_string();
    let first = sitrep_cli::tls::make_private_ca(&dir.path().join("a"), &["localhost"])
        .expect("certificates");
    let second = sitrep_cli::tls::make_private_ca(&dir.path().join("b"), &["localhost"])
        .expect("certificates");
    // The server reads the files at `first`'s paths.
    let port = free_port();
    let server = serve_tls(&d, port, &first);
    assert!(presented(port, &first.ca_pem).await.is_some());
    assert!(presented(port, &second.ca_pem).await.is_none());

    let pid = server.0.id().to_string();
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -HUP");
    };
    // Renewed: the files now hold the second certificate.
    std::fs::copy(&second.files.cert, &first.files.cert).expect("copy");
    std::fs::copy(&second.files.key, &first.files.key).expect("copy");
    hup();
    let mut switched = false;
    for _ in 0..100 {
        if presented(port, &second.ca_pem).await.is_some() {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "SIGHUP did not load the new certificate");
    assert!(presented(port, &first.ca_pem).await.is_none());

    // A half-written renewal (a key that does not match, then garbage):
    // the server keeps the certificate in use and keeps running.
    std::fs::copy(&first.ca_file, &first.files.cert).expect("copy");
    hup();
    std::fs::write(&first.files.key, b"-----BEGIN PRIVATE KEY-----\ngarbage\n").expect("write");
    hup();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        presented(port, &second.ca_pem).await.is_some(),
        "lost its certificate"
    );
    drop(server);
}

#[test]
fn plain_http_only_on_loopback_unless_asked() {
    let dir = TempDir::new("tls-plain");
    let d = dir.path().join("server");
    let d = d.to_str().expect("path");
    // The server: a non-loopback address without TLS is refused, and says why.
    let out = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["serve", "--init", "--data", d, "--listen", "0.0.0.0:0"])
        .env("SITREP_LOG", "warn")
        .output()
        .expect("serve");
    assert!(!out.status.success(), "served plain HTTP to the network");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-cert") && err.contains("--plain-http"),
        "{err}"
    );
    // A certificate without its key is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["serve", "--data", d, "--tls-cert", "x.pem"])
        .output()
        .expect("serve");
    assert!(!out.status.success());
    // A missing certificate file is named.
    let out = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(["serve", "--data", d, "--listen", "127.0.0.1:0"])
        .args([
            "--tls-cert",
            "/nonexistent/c.pem",
            "--tls-key",
            "/nonexistent/k.pem",
        ])
        .env("SITREP_LOG", "warn")
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
    // Asked for (behind a proxy): it starts.
    let port = free_port();
    let served = Served(
        Command::new(env!("CARGO_BIN_EXE_sitrep"))
            .args(["serve", "--data", d, "--plain-http", "--listen"])
            .arg(format!("0.0.0.0:{port}"))
            .env("SITREP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve"),
    );
    assert!(listening(port));
    drop(served);

    // The client: plain http:// to another machine is refused before any
    // connection (the address is not even reachable here), with the reason.
    let code = cli_invite(PASS, d, "dave");
    let p = dir.path().join("dave");
    let t = Instant::now();
    let out = run(&[
        "--profile",
        p.to_str().expect("path"),
        "enrol",
        "--server",
        "http://10.255.255.1:8448",
        "--code",
        &code,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing plain http://"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "it tried to connect");
    assert!(!p.join("profile.db").exists() && !p.join("store.db").exists());
}
