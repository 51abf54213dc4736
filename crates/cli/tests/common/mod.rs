//! Shared test harness: a real server on a loopback port, real SQLite files,
//! real sealed profiles in fresh temporary directories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sitrep_cli::Profile;
use sitrep_core::Ciphersuite;

pub const PASSCODE: &str = "test-passcode-1";

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let mut b = [0u8; 8];
        getrandom(&mut b);
        let p = std::env::temp_dir().join(format!("sitrep-test-{tag}-{}", hex::encode(b)));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn getrandom(b: &mut [u8]) {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(b))
        .expect("urandom");
}

/// The real server in this process, on 127.0.0.1:0.
pub struct TestServer {
    pub dir: TempDir,
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut sitrep_server::Config)) -> Self {
        let dir = TempDir::new("server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        sitrep_server::org::Org::open_or_create(dir.path(), None).expect("organisation");
        let mut config = sitrep_server::Config::new(dir.path());
        tune(&mut config);
        let task = tokio::spawn(async move {
            sitrep_server::run(listener, config, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        // The organisation is created by `run`; wait until it answers.
        for _ in 0..100 {
            if reqwest::get(format!("{url}/healthz")).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Self {
            dir,
            url,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn invite(&self, user: &str) -> String {
        sitrep_server::create_invite(
            self.dir.path(),
            user,
            &format!("Dr {user}"),
            "ED consultant",
            3600,
        )
        .expect("invite")
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Enrol a user's device into a fresh profile directory.
pub async fn device(server_url: &str, code: &str, cs: Ciphersuite) -> (TempDir, Profile) {
    let dir = TempDir::new("profile");
    let p = sitrep_cli::enrol(dir.path(), server_url, code, PASSCODE, cs)
        .await
        .expect("enrol");
    (dir, p)
}

pub fn bodies(p: &Profile, name: &str) -> Vec<String> {
    p.client
        .conversation(name)
        .expect("conversation")
        .history
        .iter()
        .filter(|h| h.kind == "text")
        .map(|h| h.body.clone())
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A `sitrep serve` process; killed on drop.
pub struct Served(pub std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sitrep serve --data d` on `port`, once it accepts connections.
pub fn serve_on(d: &str, port: u16) -> Served {
    serve_on_with(d, port, &[])
}

/// [`serve_on`] with more flags (e.g. `--tls-cert`).
pub fn serve_on_with(d: &str, port: u16, more: &[&std::ffi::OsStr]) -> Served {
    use std::process::{Command, Stdio};
    let server = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args([
            "serve",
            "--init",
            "--data",
            d,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(more)
        .env("SITREP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let served = Served(server);
    assert!(listening(port), "server did not start");
    served
}

/// Whether something accepts connections on loopback `port` within 10 s.
pub fn listening(port: u16) -> bool {
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}

/// Alice and Bob enrolled (with `enrol`), in conversation "ward" that Alice
/// created, Bob synced into it.
pub fn alice_and_bob_in_ward(passcode: &str, d: &str, url: &str, prof: impl Fn(&str) -> String) {
    for u in ["alice", "bob"] {
        cli_enrol(passcode, d, url, &prof(u), u);
    }
    let create = [
        "--profile",
        &prof("alice"),
        "chat",
        "create",
        "ward",
        "--members",
        "bob",
    ];
    cli_ok(cli(passcode, &create), &create);
    let sync = ["--profile", &prof("bob"), "sync"];
    cli_ok(cli(passcode, &sync), &sync);
}

/// The `sitrep` binary as a script runs it: the passcode from the
/// environment, quiet logs, no colour, a fixed time zone, no input.
pub fn cli(passcode: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sitrep"));
    c.args(args)
        .env("SITREP_PASSCODE", passcode)
        .env("SITREP_LOG", "warn")
        .env("NO_COLOR", "1")
        .env("TZ", "Europe/London")
        .stdin(std::process::Stdio::null());
    c
}

/// Run a [`cli`] command to the end; it must succeed. Its stdout.
pub fn cli_ok(mut c: std::process::Command, args: &[&str]) -> String {
    let out = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run sitrep");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Invite `user` ("Dr USER", ED consultant) with `sitrep admin invite` on
/// data directory `d`; the enrolment code.
pub fn cli_invite(passcode: &str, d: &str, user: &str) -> String {
    let name = format!("Dr {user}");
    let args = [
        "admin",
        "invite",
        "--data",
        d,
        "--user",
        user,
        "--name",
        &name,
        "--role",
        "ED consultant",
    ];
    let out = cli_ok(cli(passcode, &args), &args);
    out.lines().last().expect("code line").trim().to_string()
}

/// [`cli_invite`], then enrol the code into `profile`; `enrol`'s output.
pub fn cli_enrol(passcode: &str, d: &str, url: &str, profile: &str, user: &str) -> String {
    let code = cli_invite(passcode, d, user);
    let args = [
        "--profile",
        profile,
        "enrol",
        "--server",
        url,
        "--code",
        &code,
    ];
    cli_ok(cli(passcode, &args), &args)
}
