//! `sitrep bench ...`: the measurements behind BENCHMARKS.md. Each starts the
//! real server in this process on a loopback port with a real SQLite file in a
//! fresh temporary directory, and talks to it over HTTP and WebSocket.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use futures_util::{SinkExt as _, StreamExt as _};
use sitrep_core::{Ciphersuite, Client, PendingEnrolment};
use sitrep_wire::api;

use crate::Remote;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// (a) Durable sends, one client, one message at a time.
    Send {
        /// Messages through the bare API (pre-encrypted).
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Messages through the whole client (encrypt, write the sealed store, POST).
        #[arg(long, default_value_t = 200)]
        client_count: usize,
        /// Sizes of history the whole-client sends are measured at.
        #[arg(long, value_delimiter = ',', default_values_t = [100usize, 100_000])]
        history: Vec<usize>,
        /// Over TLS (a certificate from a CA made for the run), as against
        /// plain HTTP on loopback.
        #[arg(long)]
        tls: bool,
    },
    /// Catching up: a device (a real sealed profile, `sitrep sync`) that was
    /// offline while messages arrived in many conversations.
    Catchup {
        /// Messages that arrive while it is offline, per round.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Conversations they are spread over.
        #[arg(long, default_value_t = 20)]
        conversations: usize,
        /// Rounds (offline, then catch up), for a median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Live delivery to a `sitrep watch` process: from the sender's encrypt
    /// to the line on the watcher's screen.
    Watch {
        /// Messages, one at a time.
        #[arg(long, default_value_t = 200)]
        messages: usize,
    },
    /// (b) One sender to a group of devices all connected over WebSocket.
    Fanout {
        /// Devices in the group (sender included).
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Messages sent one at a time for the latency distribution.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Messages sent back to back for sustained throughput.
        #[arg(long, default_value_t = 500)]
        burst: usize,
        /// Over TLS (HTTPS and wss), as against plain HTTP on loopback.
        #[arg(long)]
        tls: bool,
    },
    /// (d) A DECLARED incident's call-in: `replies` members of staff, each a
    /// real MLS member of the coordination group, reply; the coordinator's
    /// device fetches, decrypts and tallies them all.
    Tally {
        /// Staff on the call-out list, all of whom reply.
        #[arg(long, default_value_t = 1000)]
        replies: usize,
    },
    /// (e) "Who has not seen it": delivery and read status of one message
    /// in a group of `members` devices, half of which have read it.
    Status {
        /// Devices in the group (sender included).
        #[arg(long, default_value_t = 5000)]
        members: usize,
        /// Status queries timed.
        #[arg(long, default_value_t = 50)]
        queries: usize,
    },
    /// (f) What the delivery service's commit validation costs: one device
    /// commits to a group of `members` (both suites); the server validates
    /// each commit against its public view of the group, stores and fans it
    /// out. An application message of the same size through the unvalidated
    /// path is the reference.
    Commit {
        /// Group sizes.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        members: Vec<usize>,
        /// Commits timed per size and suite.
        #[arg(long, default_value_t = 10)]
        commits: usize,
        /// `classic` (0x0001), `pq` (0x004E) or `both`.
        #[arg(long, default_value = "both")]
        suite: String,
    },
    /// Idle connections: `sitrep serve` in a process of its own, and this
    /// process holding authenticated WebSockets to it; the server's resident
    /// memory per connection at each count.
    Idle {
        /// Connection counts, ascending (each adds to the last).
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,15000")]
        connections: Vec<usize>,
        /// Devices enrolled; the connections are spread over them.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Over TLS (wss), as against plain WebSocket.
        #[arg(long)]
        tls: bool,
    },
    /// (c) MLS costs through the client core against bare openmls.
    Mls {
        /// Group sizes.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        members: Vec<usize>,
        /// Operations timed per measurement.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
    },
}

/// Run a benchmark.
pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Send {
            count,
            client_count,
            history,
            tls,
        } => bench_send(count, client_count, &history, tls).await,
        BenchCmd::Fanout {
            devices,
            messages,
            burst,
            tls,
        } => bench_fanout(devices, messages, burst, tls).await,
        BenchCmd::Tally { replies } => bench_tally(replies).await,
        BenchCmd::Idle {
            connections,
            devices,
            tls,
        } => idle::bench(&connections, devices, tls).await,
        BenchCmd::Watch { messages } => bench_watch(messages).await,
        BenchCmd::Catchup {
            messages,
            conversations,
            rounds,
        } => bench_catchup(messages, conversations, rounds).await,
        BenchCmd::Status { members, queries } => bench_status(members, queries).await,
        BenchCmd::Commit {
            members,
            commits,
            suite,
        } => {
            let suites: Vec<Ciphersuite> = match suite.as_str() {
                "classic" => vec![sitrep_core::INTEROP_CIPHERSUITE],
                "pq" => vec![sitrep_core::DEFAULT_CIPHERSUITE],
                "both" => vec![
                    sitrep_core::INTEROP_CIPHERSUITE,
                    sitrep_core::DEFAULT_CIPHERSUITE,
                ],
                other => bail!("unknown suite {other:?}: classic, pq or both"),
            };
            for cs in suites {
                for &n in &members {
                    bench_commit(n, commits, cs).await?;
                }
            }
            Ok(())
        }
        BenchCmd::Mls {
            members,
            iterations,
        } => tokio::task::spawn_blocking(move || mls::bench(&members, iterations)).await?,
    }
}

struct Server {
    dir: PathBuf,
    url: String,
    /// The private CA its TLS certificate chains to, when it speaks TLS.
    ca: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// A client of this server, trusting its CA.
    fn remote(&self, token: Option<&str>) -> anyhow::Result<Remote> {
        Remote::with_ca(&self.url, token, self.ca.as_deref())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_server(tune: impl FnOnce(&mut sitrep_server::Config)) -> anyhow::Result<Server> {
    start_server_tls(false, tune).await
}

/// The server, over TLS (a certificate from a CA made here, for
/// `localhost`) or plain HTTP.
async fn start_server_tls(
    tls: bool,
    tune: impl FnOnce(&mut sitrep_server::Config),
) -> anyhow::Result<Server> {
    let dir = std::env::temp_dir().join(format!("sitrep-bench-{}", hex::encode(rand16())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    sitrep_server::org::Org::open_or_create(&dir, Some("Bench Trust"))?;
    let mut config = sitrep_server::Config::new(&dir);
    let (url, ca) = if tls {
        let made = crate::tls::make_private_ca(&dir.join("tls"), &["localhost"])?;
        config.tls = Some(made.files);
        (format!("https://localhost:{port}"), Some(made.ca_pem))
    } else {
        (format!("http://127.0.0.1:{port}"), None)
    };
    tune(&mut config);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = sitrep_server::run(listener, config, async {
            let _ = rx.await;
        })
        .await;
    });
    let r = Remote::with_ca(&url, None, ca.as_deref())?;
    for _ in 0..200 {
        if r.get::<api::Health>("/healthz").await.is_ok() {
            return Ok(Server {
                dir,
                url,
                ca,
                stop: Some(tx),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("server did not start")
}

fn rand16() -> [u8; 16] {
    let c = PendingEnrolment::new(sitrep_core::INTEROP_CIPHERSUITE).expect("signer");
    let k = c.signature_key();
    let mut out = [0u8; 16];
    out.copy_from_slice(&k[..16]);
    out
}

/// Enrol an in-memory device (no sealed profile) and upload KeyPackages.
async fn device(
    server: &Server,
    user: &str,
    cs: Ciphersuite,
    kps: usize,
) -> anyhow::Result<Client> {
    let code = sitrep_server::create_invite(&server.dir, user, user, "bench", 3600)?;
    let pending = PendingEnrolment::new(cs)?;
    let resp: api::EnrolResponse = server
        .remote(None)?
        .post("/v1/enrol", &pending.enrol_request(&code)?)
        .await?;
    let mut c = pending.finish(&server.url, resp)?;
    c.set_server_ca(server.ca.clone());
    let up = c.key_packages(kps)?;
    let _: api::KeyPackageCount = server
        .remote(Some(c.token()))?
        .post("/v1/keypackages", &up)
        .await?;
    c.last_resort_uploaded();
    Ok(c)
}

/// Create a conversation of `sender` with `users`, through the server.
async fn conversation(
    server: &Server,
    sender: &mut Client,
    name: &str,
    users: &[String],
) -> anyhow::Result<String> {
    let r = server.remote(Some(sender.token()))?;
    let (gid, req) = sender.create_conversation(name, "off")?;
    let _: serde_json::Value = r.post("/v1/groups", &req).await?;
    let (kps, _) = crate::claim_key_packages(&r, users).await?;
    let prepared = sender.prepare_add(name, &kps)?;
    let _: api::CommitResponse = r
        .post(&format!("/v1/groups/{gid}/commit"), &prepared.request)
        .await?;
    sender.commit_accepted(&gid, crate::now_ms())?;
    Ok(gid)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{label}: n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        ms.len(),
        pct(&ms, 0.5),
        pct(&ms, 0.9),
        pct(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

async fn bench_send(
    count: usize,
    client_count: usize,
    history: &[usize],
    tls: bool,
) -> anyhow::Result<()> {
    let server = start_server_tls(tls, |_| {}).await?;
    let cs = sitrep_core::DEFAULT_CIPHERSUITE;
    let mut a = device(&server, "alice", cs, 2).await?;
    let _b = device(&server, "bob", cs, 2 + history.len()).await?;
    let gid = conversation(&server, &mut a, "bench", &["bob".to_string()]).await?;
    let r = server.remote(Some(a.token()))?;
    let path = format!("/v1/groups/{gid}/messages");
    let outs: Vec<_> = (0..count)
        .map(|i| {
            a.encrypt_text(
                "bench",
                &format!("observation update {i}: BP 120/80 HR 88"),
                0,
            )
        })
        .collect::<Result<_, _>>()?;
    let mut lat = Vec::with_capacity(count);
    let t0 = Instant::now();
    for o in &outs {
        let t = Instant::now();
        let resp: api::SendResponse = r.post(&path, &o.request).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if resp.recipients != 1 {
            bail!("expected one recipient");
        }
    }
    let total = t0.elapsed().as_secs_f64();
    println!(
        "(a) durable sends over {}, one at a time, SQLite WAL synchronous=FULL",
        if tls {
            "HTTPS (TLS 1.3, HTTP/2)"
        } else {
            "plain HTTP/1.1"
        }
    );
    summary("    send latency (POST until stored)", lat);
    println!(
        "    throughput: {:.0} msgs/s ({count} messages in {total:.2} s)",
        count as f64 / total
    );

    // The whole client path, at two sizes of history: encrypt, write what
    // changed to the sealed store (one SQLite transaction, fsync), POST. The
    // acknowledgement is written with the next change: until then the
    // message is still in the outbox, and a crash re-posts it under the same
    // client id, which the server answers with its first outcome.
    for (k, history) in history.iter().enumerate() {
        let user = format!("alice{}", k + 2);
        let dir = server.dir.join(format!("profile-{user}"));
        let code = sitrep_server::create_invite(&server.dir, &user, &user, "bench", 3600)?;
        let mut p = crate::enrol_with_ca(
            &dir,
            &server.url,
            &code,
            "bench-passcode",
            cs,
            server.ca.clone(),
        )
        .await?;
        let name = format!("bench-{history}");
        crate::chat_create(&mut p, &name, &["bob".to_string()], "off").await?;
        let gid = p.client.group_hex(&name)?;
        // History this device wrote earlier (encrypted and kept, not posted:
        // the server never sees them, the store holds them all).
        let t_fill = Instant::now();
        while p.client.conversation(&name)?.history.len() < *history {
            let o = p.client.encrypt_text(
                &name,
                "observation update: BP 120/80 HR 88, reviewed, plan unchanged",
                crate::now_ms(),
            )?;
            p.client.sent(&o.request.client_id);
        }
        p.save()?;
        let fill = t_fill.elapsed().as_secs_f64();
        let db = std::fs::metadata(dir.join("profile.db"))
            .map(|m| m.len())
            .unwrap_or(0);
        let mut lat = Vec::with_capacity(client_count);
        let mut written = Vec::with_capacity(client_count);
        let mut parts: [Vec<f64>; 4] = Default::default();
        let r = r_for(&p)?;
        let path = format!("/v1/groups/{gid}/messages");
        let t0 = Instant::now();
        for i in 0..client_count {
            let t = Instant::now();
            let out = p
                .client
                .encrypt_text(&name, &format!("update {i}"), crate::now_ms())?;
            let t1 = Instant::now();
            let ch = p.changes();
            let t2 = Instant::now();
            written.push(ch.bytes() as f64);
            p.write(&ch)?;
            let t3 = Instant::now();
            let resp: api::SendResponse = r.post(&path, &out.request).await?;
            p.client.sent_at_seq(&out.request.client_id, resp.seq);
            let t4 = Instant::now();
            lat.push((t4 - t).as_secs_f64() * 1e3);
            for (v, d) in parts.iter_mut().zip([t1 - t, t2 - t1, t3 - t2, t4 - t3]) {
                v.push(d.as_secs_f64() * 1e3);
            }
        }
        let total = t0.elapsed().as_secs_f64();
        written.sort_by(|a, b| a.total_cmp(b));
        println!(
            "    whole client with {history} messages of history (store {:.1} MB, filled in {fill:.1} s): \
             encrypt + write changes (fsync) + POST, one at a time:",
            db as f64 / 1e6
        );
        summary("    client send latency", lat);
        for (label, mut v) in ["encrypt", "seal changes", "write (fsync)", "POST"]
            .into_iter()
            .zip(parts)
        {
            v.sort_by(|a, b| a.total_cmp(b));
            println!("      {label}: p50 {:.3} ms", pct(&v, 0.5));
        }
        println!(
            "    sealed bytes written per send: median {:.0}",
            pct(&written, 0.5)
        );
        println!("    throughput: {:.0} msgs/s", client_count as f64 / total);

        // Through the engine, as `sitrep send` and `watch` do it: the text
        // is queued, then the Outbox task encrypts it, the driver seals that
        // durably before the POST, and the answer is written lazily.
        let mut lat = Vec::with_capacity(client_count);
        let t0 = Instant::now();
        for i in 0..client_count {
            let t = Instant::now();
            p.client
                .queue_text(&name, &format!("engine {i}"), crate::now_ms(), true)?;
            crate::drive(&mut p, &mut sitrep_core::engine::Outbox::new()).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let total = t0.elapsed().as_secs_f64();
        if !p.client.waiting().is_empty() {
            bail!("messages left in the outbox");
        }
        println!(
            "    through the engine (queue_text, then the Outbox task driven by `drive`), one at a time:"
        );
        summary("    client send latency", lat);
        println!("    throughput: {:.0} msgs/s", client_count as f64 / total);
        // A burst written while the server was busy or away: one Outbox
        // task encrypts all of it, seals once, then posts each in order.
        let burst = 20;
        let t0 = Instant::now();
        for round in 0..client_count.div_ceil(burst) {
            for i in 0..burst {
                p.client
                    .queue_text(&name, &format!("burst {round}.{i}"), crate::now_ms(), true)?;
            }
            crate::drive(&mut p, &mut sitrep_core::engine::Outbox::new()).await?;
        }
        let total = t0.elapsed().as_secs_f64();
        println!(
            "    through the engine, bursts of {burst} queued then one Outbox task: {:.0} msgs/s",
            (client_count.div_ceil(burst) * burst) as f64 / total
        );

        // The same, as the outbox drains: the next message is encrypted and
        // written while the previous one's POST is in flight (still sealed
        // before it is posted, still one POST at a time, in order).
        let mut lat = Vec::with_capacity(client_count);
        let mut inflight: Option<(
            tokio::task::JoinHandle<anyhow::Result<api::SendResponse>>,
            String,
            Instant,
        )> = None;
        let t0 = Instant::now();
        for i in 0..=client_count {
            let next = if i < client_count {
                let t = Instant::now();
                let out =
                    p.client
                        .encrypt_text(&name, &format!("pipelined {i}"), crate::now_ms())?;
                let ch = p.changes();
                p.write(&ch)?;
                Some((out, t))
            } else {
                None
            };
            if let Some((h, id, t)) = inflight.take() {
                let resp = h.await??;
                p.client.sent_at_seq(&id, resp.seq);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if let Some((out, t)) = next {
                let r = r.clone();
                let path = path.clone();
                let id = out.request.client_id.clone();
                let h = tokio::spawn(async move {
                    r.post::<_, api::SendResponse>(&path, &out.request).await
                });
                inflight = Some((h, id, t));
            }
        }
        let total = t0.elapsed().as_secs_f64();
        p.save()?;
        println!("    the same, pipelined (next one sealed while the last POST is in flight):");
        summary("    client send latency", lat);
        println!("    throughput: {:.0} msgs/s", client_count as f64 / total);
    }
    Ok(())
}

/// A server without rate limits, Alice as an in-memory device, and Bob as a
/// real sealed profile (and its directory).
async fn alice_and_bob() -> anyhow::Result<(Server, Client, PathBuf, crate::Profile)> {
    let server = start_server(|c| {
        c.rate_per_sec = 1e6;
        c.rate_burst = 1e6;
    })
    .await?;
    let cs = sitrep_core::DEFAULT_CIPHERSUITE;
    let a = device(&server, "alice", cs, 2).await?;
    let dir = server.dir.join("profile-bob");
    let code = sitrep_server::create_invite(&server.dir, "bob", "bob", "bench", 3600)?;
    let bob = crate::enrol(&dir, &server.url, &code, "bench-passcode", cs).await?;
    Ok((server, a, dir, bob))
}

async fn bench_watch(messages: usize) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let (server, mut a, dir, mut bob) = alice_and_bob().await?;
    let gid = conversation(&server, &mut a, "ward", &["bob".to_string()]).await?;
    crate::sync(&mut bob).await?;
    drop(bob);
    // Bob's `sitrep watch`, a process of its own; its lines with the time
    // each was read.
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--profile")
        .arg(&dir)
        .args(["watch", "ward", "--for-secs", "3600"])
        .env("SITREP_PASSCODE", "bench-passcode")
        .env("SITREP_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send((line, Instant::now())).is_err() {
                return;
            }
        }
    });
    let wait_for = |marker: &str| -> anyhow::Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok((line, at)) if line.contains(marker) => return Ok(at),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        bail!("{marker:?} was not shown")
    };
    let r = server.remote(Some(a.token()))?;
    let path = format!("/v1/groups/{gid}/messages");
    let mut lat = Vec::with_capacity(messages);
    for i in 0..=messages {
        // Message 0 warms up (the watcher's first connection).
        let marker = format!("live update {i:05} <end>");
        let t = Instant::now();
        let o = a.encrypt_text("ward", &marker, crate::now_ms())?;
        let _: api::SendResponse = r.post(&path, &o.request).await?;
        let shown = tokio::task::block_in_place(|| wait_for(&marker))?;
        if i > 0 {
            lat.push(shown.duration_since(t).as_secs_f64() * 1e3);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "live delivery to a `sitrep watch` process (its own sealed profile), one message at a time:"
    );
    summary(
        "    send-to-display (encrypt, POST, push, fetch, decrypt, seal, print)",
        lat,
    );
    Ok(())
}

async fn bench_catchup(messages: usize, convs: usize, rounds: usize) -> anyhow::Result<()> {
    let (server, mut a, _dir, mut bob) = alice_and_bob().await?;
    let mut gids = Vec::new();
    for c in 0..convs {
        gids.push(conversation(&server, &mut a, &format!("ward {c}"), &["bob".to_string()]).await?);
    }
    crate::sync(&mut bob).await?;
    let r = server.remote(Some(a.token()))?;
    let mut times = Vec::new();
    for round in 0..rounds {
        // Bob is offline: Alice writes round robin over the conversations,
        // several posts in flight (each conversation's in order).
        let outs: Vec<_> = (0..messages)
            .map(|i| {
                a.encrypt_text(
                    &format!("ward {}", i % convs),
                    &format!("round {round} update {i}: bed 4 ready, porter requested"),
                    crate::now_ms(),
                )
            })
            .collect::<Result<_, _>>()?;
        for chunk in outs.chunks(convs) {
            let posts = chunk.iter().map(|o| {
                let r = r.clone();
                async move {
                    r.post::<_, api::SendResponse>(
                        &format!("/v1/groups/{}/messages", o.group_hex),
                        &o.request,
                    )
                    .await
                }
            });
            for res in futures_util::future::join_all(posts).await {
                res?;
            }
        }
        let before: usize = bob.client.conversations().map(|c| c.history.len()).sum();
        let t = Instant::now();
        crate::sync(&mut bob).await?;
        let secs = t.elapsed().as_secs_f64();
        let after: usize = bob.client.conversations().map(|c| c.history.len()).sum();
        if after - before < messages {
            bail!("caught up with {} of {messages}", after - before);
        }
        println!(
            "    round {round}: {messages} messages in {convs} conversations: current in {secs:.2} s ({:.0} msgs/s), history now {after}",
            messages as f64 / secs
        );
        times.push(secs);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "catch-up, median of {rounds}: {:.2} s for {messages} messages in {convs} conversations",
        pct(&times, 0.5)
    );
    Ok(())
}

fn r_for(p: &crate::Profile) -> anyhow::Result<Remote> {
    p.remote()
}

async fn bench_fanout(
    devices: usize,
    messages: usize,
    burst: usize,
    tls: bool,
) -> anyhow::Result<()> {
    if devices < 2 {
        bail!("need at least two devices");
    }
    let server = start_server_tls(tls, |c| {
        c.enrol_per_sec = 1e6;
    })
    .await?;
    let cs = sitrep_core::INTEROP_CIPHERSUITE;
    let t_setup = Instant::now();
    let mut sender = device(&server, "sender", cs, 1).await?;
    let mut tokens = Vec::new();
    let mut users = Vec::new();
    for i in 1..devices {
        let u = format!("staff{i:05}");
        let c = device(&server, &u, cs, 1).await?;
        tokens.push(c.token().to_string());
        users.push(u);
    }
    let gid = conversation(&server, &mut sender, "fanout", &users).await?;
    // The receivers count frames and do not join the MLS group, so they skip
    // the Welcome (acknowledged over HTTP, never downloaded): with thousands of
    // members it is megabytes per device, all held in this one process.
    if let Some(first) = tokens.first() {
        let r = server.remote(Some(first))?;
        let inbox: api::InboxResponse = r.get("/v1/inbox?after=0&limit=1").await?;
        let up_to = inbox.entries.first().map_or(0, |e| e.seq);
        for t in &tokens {
            let _: serde_json::Value = server
                .remote(Some(t))?
                .post("/v1/inbox/ack", &api::AckRequest { up_to })
                .await?;
        }
    }
    println!(
        "(b) fan-out to {} receiving devices over {} (setup {:.1} s)",
        devices - 1,
        if tls {
            "wss (TLS 1.3)"
        } else {
            "plain WebSocket"
        },
        t_setup.elapsed().as_secs_f64()
    );

    let total_msgs = messages + burst;
    let receivers = devices - 1;
    let t0 = Instant::now();
    let last: Arc<Vec<AtomicU64>> = Arc::new((0..total_msgs).map(|_| AtomicU64::new(0)).collect());
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..total_msgs).map(|_| AtomicU64::new(0)).collect());
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    let ready = Arc::new(AtomicU64::new(0));
    for token in tokens {
        let ws = server
            .remote(Some(&token))?
            .ws("/v1/ws", Duration::from_secs(30))
            .await
            .context("websocket")?;
        // Connected past the skipped Welcome: what is published from now on
        // reaches it (the server replays from the device's cursor).
        ready.fetch_add(1, Ordering::Relaxed);
        let (last, counts, delivered, done) = (
            last.clone(),
            counts.clone(),
            delivered.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let mut k = 0usize;
            let mut unacked = 0;
            while let Some(Ok(msg)) = stream.next().await {
                let tokio_tungstenite::tungstenite::Message::Binary(b) = msg else {
                    continue;
                };
                let Ok((seq, kind, _)) = sitrep_wire::frame::decode(&b, 1 << 24) else {
                    continue;
                };
                if kind == api::EntryKind::Application && k < last.len() {
                    let now = t0.elapsed().as_nanos() as u64;
                    last[k].fetch_max(now, Ordering::Relaxed);
                    if counts[k].fetch_add(1, Ordering::AcqRel) + 1 == receivers as u64 {
                        done.notify_waiters();
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
                unacked += 1;
                if unacked >= 256 {
                    unacked = 0;
                    let ack = format!("{{\"ack\":{seq}}}");
                    if sink
                        .send(tokio_tungstenite::tungstenite::Message::Text(ack.into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if k >= last.len() {
                    let ack = format!("{{\"ack\":{seq}}}");
                    let _ = sink
                        .send(tokio_tungstenite::tungstenite::Message::Text(ack.into()))
                        .await;
                    break;
                }
            }
        }));
    }
    while ready.load(Ordering::Relaxed) < receivers as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = server.remote(Some(sender.token()))?;
    let path = format!("/v1/groups/{gid}/messages");
    let outs: Vec<_> = (0..total_msgs)
        .map(|i| sender.encrypt_text("fanout", &format!("major incident update {i}"), 0))
        .collect::<Result<_, _>>()?;
    // Latency: one message at a time, wait for the last delivery.
    let mut lat = Vec::new();
    for (k, o) in outs.iter().take(messages).enumerate() {
        let notified = done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let start = t0.elapsed().as_nanos() as u64;
        let _: api::SendResponse = r.post(&path, &o.request).await?;
        while counts[k].load(Ordering::Acquire) < receivers as u64 {
            tokio::time::timeout(Duration::from_millis(50), notified.as_mut())
                .await
                .ok();
            notified.set(done.notified());
            notified.as_mut().enable();
        }
        lat.push((last[k].load(Ordering::Relaxed).saturating_sub(start)) as f64 / 1e6);
    }
    summary("    send-to-last-delivery", lat);
    // Sustained: back to back, four requests in flight.
    let before = delivered.load(Ordering::Relaxed);
    let tb = Instant::now();
    let burst_outs: Vec<_> = outs.into_iter().skip(messages).collect();
    let mut inflight = futures_util::stream::iter(burst_outs.into_iter().map(|o| {
        let r = r.clone();
        let path = path.clone();
        async move { r.post::<_, api::SendResponse>(&path, &o.request).await }
    }))
    .buffered(4);
    while let Some(res) = inflight.next().await {
        res?;
    }
    let sent_for = tb.elapsed().as_secs_f64();
    let want = before + (burst * receivers) as u64;
    while delivered.load(Ordering::Relaxed) < want {
        if tb.elapsed() > Duration::from_secs(300) {
            bail!(
                "deliveries stalled at {}",
                delivered.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all = tb.elapsed().as_secs_f64();
    println!(
        "    sustained: {burst} messages x {receivers} devices = {} deliveries in {all:.2} s: {:.0} deliveries/s ({:.0} msgs/s accepted)",
        burst * receivers,
        (burst * receivers) as f64 / all,
        burst as f64 / sent_for
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// An MLS application message of `len` bytes for group `group_id` whose
/// ciphertext is random filler: the framing the server checks (RFC 9420
/// §6: version, wire format, group id, epoch, content type), content nobody
/// can read. For load where members need not decrypt.
pub fn opaque_application(group_id: &[u8], epoch: u64, len: usize) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, n: usize) {
        match n {
            0..64 => out.push(n as u8),
            64..16384 => out.extend_from_slice(&(0x4000 | n as u16).to_be_bytes()),
            _ => out.extend_from_slice(&(0x8000_0000 | n as u32).to_be_bytes()),
        }
    }
    let mut m = vec![0, 1, 0, 2]; // mls10, private_message
    varint(&mut m, group_id.len());
    m.extend_from_slice(group_id);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.push(1); // application
    varint(&mut m, 0); // authenticated data
    varint(&mut m, 16);
    m.extend_from_slice(&[0x5a; 16]); // encrypted sender data
    let body = len.saturating_sub(m.len() + 4).max(1);
    varint(&mut m, body);
    m.extend((0..body).map(|i| (i % 251) as u8));
    m
}

async fn bench_commit(members: usize, commits: usize, cs: Ciphersuite) -> anyhow::Result<()> {
    if members < 2 {
        bail!("need at least two members");
    }
    let server = start_server(|c| {
        c.enrol_per_sec = 1e6;
    })
    .await?;
    let t_setup = Instant::now();
    let mut sender = device(&server, "sender", cs, 1).await?;
    let mut users = Vec::new();
    for i in 1..members {
        let u = format!("staff{i:05}");
        device(&server, &u, cs, 1).await?;
        users.push(u);
    }
    let r = server.remote(Some(sender.token()))?;
    let (gid, req) = sender.create_conversation("commits", "off")?;
    let _: serde_json::Value = r.post("/v1/groups", &req).await?;
    // Added in batches, as incidents do: every add is itself validated.
    let mut add_ms = Vec::new();
    let mut max_add = 0;
    let mut epoch = 0u64;
    for chunk in users.chunks(500) {
        let (kps, _) = crate::claim_key_packages(&r, chunk).await?;
        let prepared = sender.prepare_add("commits", &kps)?;
        max_add = max_add.max(
            prepared.request.commit.len() + prepared.request.welcome.as_ref().map_or(0, Vec::len),
        );
        let t = Instant::now();
        let _: api::CommitResponse = r
            .post(&format!("/v1/groups/{gid}/commit"), &prepared.request)
            .await?;
        add_ms.push(t.elapsed().as_secs_f64() * 1e3);
        sender.commit_accepted(&gid, crate::now_ms())?;
        epoch += 1;
    }
    println!(
        "(f) {:?}, {members} members (setup {:.1} s)",
        cs,
        t_setup.elapsed().as_secs_f64()
    );
    summary(
        &format!("  add of up to 500 (largest body {max_add} bytes), POST to validated answer"),
        add_ms,
    );
    let mut ms = Vec::new();
    let mut reference = Vec::new();
    let mut bytes = 0;
    for _ in 0..commits {
        let prepared = sender.prepare_update("commits")?;
        bytes = prepared.request.commit.len();
        let t = Instant::now();
        let _: api::CommitResponse = r
            .post(&format!("/v1/groups/{gid}/commit"), &prepared.request)
            .await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        sender.commit_accepted(&gid, crate::now_ms())?;
        epoch += 1;
        // The same bytes as an application message: stored and fanned out,
        // only its framing checked.
        let gid_bytes = hex::decode(&gid)?;
        let payload = opaque_application(&gid_bytes, epoch, bytes.min(255 * 1024));
        let t = Instant::now();
        let _: api::SendResponse = r
            .post(
                &format!("/v1/groups/{gid}/messages"),
                &api::SendRequest {
                    client_id: sender.new_client_id(),
                    payload,
                    urgent: false,
                },
            )
            .await?;
        reference.push(t.elapsed().as_secs_f64() * 1e3);
    }
    summary(
        &format!("  self-update commit ({bytes} bytes), POST to validated answer"),
        ms,
    );
    summary(
        &format!(
            "  reference: application message of {} bytes (unvalidated)",
            bytes.min(256 * 1024)
        ),
        reference,
    );
    Ok(())
}

async fn bench_status(members: usize, queries: usize) -> anyhow::Result<()> {
    if members < 2 {
        bail!("need at least two devices");
    }
    let server = start_server(|c| {
        c.enrol_per_sec = 1e6;
    })
    .await?;
    let cs = sitrep_core::INTEROP_CIPHERSUITE;
    let t_setup = Instant::now();
    let mut sender = device(&server, "sender", cs, 1).await?;
    let users: Vec<String> = (1..members).map(|i| format!("staff{i:05}")).collect();
    let others: Vec<Client> = futures_util::stream::iter(users.iter())
        .map(|u| device(&server, u, cs, 1))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let gid = conversation(&server, &mut sender, "status", &users).await?;
    let r = server.remote(Some(sender.token()))?;
    let out = sender.encrypt_text("status", "who has not seen this?", 0)?;
    let sent: api::SendResponse = r
        .post(&format!("/v1/groups/{gid}/messages"), &out.request)
        .await?;
    // Half the devices fetch it (a cursor past it), and half of those show it.
    let half = others.len() / 2;
    futures_util::stream::iter(others.iter().take(half).enumerate())
        .map(|(i, c)| {
            let r = server.remote(Some(c.token()));
            let gid = gid.clone();
            async move {
                let r = r?;
                let _: serde_json::Value = r
                    .post("/v1/inbox/ack", &api::AckRequest { up_to: sent.seq })
                    .await?;
                if i % 2 == 0 {
                    let _: serde_json::Value = r
                        .post(
                            &format!("/v1/groups/{gid}/read"),
                            &api::ReadRequest { seq: sent.seq },
                        )
                        .await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    println!(
        "(e) status of one message in a group of {members} devices (setup {:.1} s)",
        t_setup.elapsed().as_secs_f64()
    );
    let mut ms = Vec::new();
    let mut last = None;
    for _ in 0..queries {
        let t = Instant::now();
        let st: api::MessageStatus = r
            .get(&format!("/v1/groups/{gid}/status?seq={}", sent.seq))
            .await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(st);
    }
    let st = last.context("no query")?;
    let delivered = st.devices.iter().filter(|d| d.delivered).count();
    let read = st.devices.iter().filter(|d| d.read_at.is_some()).count();
    println!(
        "    {} devices listed: {delivered} delivered, {read} read, {} not seen",
        st.devices.len(),
        st.devices.len() - read
    );
    if st.devices.len() != members - 1 || delivered != half || read != half.div_ceil(2) {
        bail!("status does not match what the devices did");
    }
    summary("    status query (HTTP, JSON)", ms);
    Ok(())
}

async fn bench_tally(replies: usize) -> anyhow::Result<()> {
    use sitrep_wire::incident::{Availability, CallinReply, Level, Structured};
    let server = start_server(|c| {
        c.enrol_per_sec = 1e6;
    })
    .await?;
    let t_setup = Instant::now();
    let users: Vec<String> = (0..replies).map(|i| format!("staff{i:05}")).collect();
    crate::drill::set_up_directory(&server.dir, &users, "bench tally")?;
    let mut coord = crate::drill::enrol(
        &server.dir,
        &server.url,
        &server.dir,
        "coordinator",
        "Dr Coordinator",
    )
    .await?;
    let cs = sitrep_core::INTEROP_CIPHERSUITE;
    let staff: Vec<Client> = futures_util::stream::iter(users.iter())
        .map(|u| device(&server, u, cs, 1))
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let id = "MI-BENCH-01";
    let methane = crate::drill::exercise_methane("Bench");
    let t = Instant::now();
    let raised =
        crate::incident::raise(&mut coord, id, Level::Declared, Some(methane), "bench").await?;
    println!(
        "(d) call-in tally: {} staff called; DECLARED with the coordination group in {:.1} s",
        raised.called,
        t.elapsed().as_secs_f64()
    );
    // Each member of staff: fetch the directory and the inbox (the Welcome
    // and the DECLARED alert), join, reply, and drop its in-memory state.
    let t = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let url = server.url.clone();
    let results: Vec<anyhow::Result<()>> =
        futures_util::stream::iter(staff.into_iter().enumerate())
            .map(|(i, mut c)| {
                let (url, done) = (url.clone(), done.clone());
                // A task each, so the joins use both cores.
                let task = tokio::spawn(async move {
                    let r = Remote::new(&url, Some(c.token()))?;
                    let d: serde_json::Value = r.get("/v1/directory").await?;
                    let b64 = d["directory"].as_str().context("no directory")?;
                    c.apply_directory(&sitrep_wire::b64::decode(b64).context("base64")?)?;
                    // Up to the DECLARED alert: the replies of those who were
                    // quicker are not needed for this device's own reply.
                    while c.incidents().next().is_none() {
                        let page: api::InboxResponse = r
                            .get(&format!("/v1/inbox?after={}&limit=2", c.last_seq()))
                            .await?;
                        for e in &page.entries {
                            c.handle_entry(e.seq, e.kind, &e.payload, crate::now_ms());
                        }
                        if !page.more {
                            break;
                        }
                    }
                    let conv = crate::incident::incident_conversation(&c, id)?;
                    let availability = match i % 20 {
                        0..=11 => Availability::Now,
                        12..=16 => Availability::In(15 + (i as u32 % 4) * 15),
                        _ => Availability::Unavailable,
                    };
                    let role = c
                        .directory()
                        .roles_of(c.user_id())
                        .next()
                        .map_or_else(|| "staff".to_string(), |r| r.id.clone());
                    let item = Structured::Callin(CallinReply {
                        incident: id.to_string(),
                        availability,
                        role,
                    });
                    let out = c.send_structured(&conv, &item, crate::now_ms())?;
                    let _: api::SendResponse = r
                        .post(
                            &format!("/v1/groups/{}/messages", out.group_hex),
                            &out.request,
                        )
                        .await?;
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % 500 == 0 {
                        eprintln!("    {n} replies sent ({:.0} s)", t.elapsed().as_secs_f64());
                    }
                    anyhow::Ok(())
                });
                async move { task.await? }
            })
            .buffer_unordered(4)
            .collect()
            .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    println!(
        "    {replies} members joined and replied in {:.1} s (setup, not the measurement; total setup {:.1} s)",
        t.elapsed().as_secs_f64(),
        t_setup.elapsed().as_secs_f64()
    );
    // The measurement: the coordinator's device syncs (fetches, decrypts,
    // applies and seals every reply) and counts.
    let t = Instant::now();
    crate::sync(&mut coord).await?;
    let synced = t.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let tally = coord.client.callin_tally(id)?;
    let counted = t2.elapsed().as_secs_f64();
    let total = t.elapsed().as_secs_f64();
    println!(
        "    coordinator: {} replies tallied, {} not replied, in {total:.2} s (sync {synced:.2} s, tally {:.1} ms)",
        tally.replies,
        tally.not_replied.len(),
        counted * 1e3
    );
    if tally.replies as usize != replies {
        bail!("tallied {} replies, expected {replies}", tally.replies);
    }
    Ok(())
}

mod mls {
    //! Our client core against bare openmls on the same operations.

    use std::time::Instant;

    use ed25519_dalek::SigningKey;
    use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use serde_bytes::ByteBuf;
    use sitrep_core::{Ciphersuite, Client, PendingEnrolment};
    use sitrep_wire::api::{ClaimedKeyPackage, EnrolResponse, EntryKind};
    use sitrep_wire::credential::{DeviceCredential, SignedCredential};

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }

    fn ours_member(
        org: &SigningKey,
        cs: Ciphersuite,
        i: usize,
    ) -> anyhow::Result<(Client, ClaimedKeyPackage)> {
        let pending = PendingEnrolment::new(cs)?;
        let user = format!("u{i}");
        let cred = DeviceCredential {
            v: 1,
            org: "Bench Trust".into(),
            user_id: user.clone(),
            device_id: format!("d{i}"),
            display_name: user.clone(),
            role: "bench".into(),
            signature_key: ByteBuf::from(pending.signature_key()),
            issued_at: 0,
        };
        let resp = EnrolResponse {
            org_public_key: org.verifying_key().to_bytes().to_vec(),
            org_name: "Bench Trust".into(),
            user_id: user.clone(),
            device_id: format!("d{i}"),
            credential: SignedCredential::sign(&cred, org).encode(),
            token: String::new(),
        };
        let mut c = pending.finish("http://bench", resp)?;
        let mut up = c.key_packages(1)?;
        let kp = ClaimedKeyPackage {
            user_id: user,
            device_id: format!("d{i}"),
            key_package: up.key_packages.remove(0),
        };
        Ok((c, kp))
    }

    struct Row {
        enc: f64,
        dec: f64,
        commit: f64,
        process_commit: f64,
    }

    fn ours(cs: Ciphersuite, n: usize, iters: usize) -> anyhow::Result<Row> {
        let org = SigningKey::from_bytes(&[9u8; 32]);
        let (mut a, _) = ours_member(&org, cs, 0)?;
        let mut kps = Vec::new();
        let mut b = None;
        for i in 1..n {
            let (c, kp) = ours_member(&org, cs, i)?;
            if i == 1 {
                b = Some(c);
            }
            kps.push(kp);
        }
        let mut b = b.ok_or_else(|| anyhow::anyhow!("need two members"))?;
        a.create_conversation("bench", "off")?;
        let add = a.prepare_add("bench", &kps)?;
        a.commit_accepted(&add.group_hex, 0)?;
        let welcome = add.request.welcome.clone().unwrap_or_default();
        let mut seq = 1u64;
        b.handle_entry(seq, EntryKind::Welcome, &welcome, 0);
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        for i in 0..iters {
            let t = Instant::now();
            let out =
                a.encrypt_text("bench", &format!("message {i} with some clinical text"), 0)?;
            enc.push(t.elapsed().as_secs_f64() * 1e3);
            a.sent(&out.request.client_id);
            seq += 1;
            let t = Instant::now();
            let ev = b.handle_entry(seq, EntryKind::Application, &out.request.payload, 0);
            dec.push(t.elapsed().as_secs_f64() * 1e3);
            if ev.len() != 1 {
                anyhow::bail!("message not delivered: {ev:?}");
            }
        }
        let mut commit = Vec::new();
        let mut process = Vec::new();
        for _ in 0..(iters / 10).max(5) {
            let t = Instant::now();
            let p = a.prepare_update("bench")?;
            a.commit_accepted(&p.group_hex, 0)?;
            commit.push(t.elapsed().as_secs_f64() * 1e3);
            seq += 1;
            let t = Instant::now();
            b.handle_entry(seq, EntryKind::Commit, &p.request.commit, 0);
            process.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(Row {
            enc: median(enc),
            dec: median(dec),
            commit: median(commit),
            process_commit: median(process),
        })
    }

    fn bare(cs: Ciphersuite, n: usize, iters: usize, cred_len: usize) -> anyhow::Result<Row> {
        let member = |i: usize| -> anyhow::Result<(
            OpenMlsRustCrypto,
            SignatureKeyPair,
            CredentialWithKey,
        )> {
            let p = OpenMlsRustCrypto::default();
            let s = SignatureKeyPair::new(cs.signature_algorithm())
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            s.store(p.storage()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let cwk = CredentialWithKey {
                // Same size as a Sitrep signed credential, so the tree carries as many
                // bytes and only the code paths differ.
                credential: BasicCredential::new({
                    let mut id = format!("u{i}").into_bytes();
                    id.resize(cred_len, 0);
                    id
                })
                .into(),
                signature_key: s.public().into(),
            };
            Ok((p, s, cwk))
        };
        let e = |e: &dyn std::fmt::Debug| anyhow::anyhow!("{e:?}");
        let (pa, sa, ca) = member(0)?;
        let mut kps = Vec::new();
        let mut b = None;
        for i in 1..n {
            let (p, s, c) = member(i)?;
            let kp = KeyPackage::builder()
                .build(cs, &p, &s, c)
                .map_err(|x| e(&x))?;
            kps.push(kp.key_package().clone());
            if i == 1 {
                b = Some((p, s));
            }
        }
        let (pb, _sb) = b.ok_or_else(|| anyhow::anyhow!("need two members"))?;
        let mut ga = MlsGroup::builder()
            .ciphersuite(cs)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(5)
            .build(&pa, &sa, ca)
            .map_err(|x| e(&x))?;
        let (_, welcome, _) = ga.add_members(&pa, &sa, &kps).map_err(|x| e(&x))?;
        ga.merge_pending_commit(&pa).map_err(|x| e(&x))?;
        let wbytes = welcome.tls_serialize_detached().map_err(|x| e(&x))?;
        let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(wbytes.as_slice())
            .map_err(|x| e(&x))?
            .extract()
        else {
            anyhow::bail!("not a welcome");
        };
        let join = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .max_past_epochs(5)
            .build();
        let mut gb = StagedWelcome::new_from_welcome(&pb, &join, w, None)
            .map_err(|x| e(&x))?
            .into_group(&pb)
            .map_err(|x| e(&x))?;
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        for i in 0..iters {
            let text = format!("message {i} with some clinical text");
            let t = Instant::now();
            let m = ga
                .create_message(&pa, &sa, text.as_bytes())
                .map_err(|x| e(&x))?;
            let bytes = m.tls_serialize_detached().map_err(|x| e(&x))?;
            enc.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let proto = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
                .map_err(|x| e(&x))?
                .try_into_protocol_message()
                .map_err(|x| e(&x))?;
            let pm = gb.process_message(&pb, proto).map_err(|x| e(&x))?;
            dec.push(t.elapsed().as_secs_f64() * 1e3);
            if !matches!(
                pm.into_content(),
                ProcessedMessageContent::ApplicationMessage(_)
            ) {
                anyhow::bail!("not an application message");
            }
        }
        let mut commit = Vec::new();
        let mut process = Vec::new();
        for _ in 0..(iters / 10).max(5) {
            let t = Instant::now();
            let bundle = ga
                .self_update(&pa, &sa, LeafNodeParameters::default())
                .map_err(|x| e(&x))?;
            let bytes = bundle
                .commit()
                .tls_serialize_detached()
                .map_err(|x| e(&x))?;
            ga.merge_pending_commit(&pa).map_err(|x| e(&x))?;
            commit.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let proto = MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
                .map_err(|x| e(&x))?
                .try_into_protocol_message()
                .map_err(|x| e(&x))?;
            let pm = gb.process_message(&pb, proto).map_err(|x| e(&x))?;
            if let ProcessedMessageContent::StagedCommitMessage(sc) = pm.into_content() {
                gb.merge_staged_commit(&pb, *sc).map_err(|x| e(&x))?;
            }
            process.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(Row {
            enc: median(enc),
            dec: median(dec),
            commit: median(commit),
            process_commit: median(process),
        })
    }

    pub(super) fn bench(sizes: &[usize], iters: usize) -> anyhow::Result<()> {
        let cred_len = {
            let org = SigningKey::from_bytes(&[9u8; 32]);
            let cred = DeviceCredential {
                v: 1,
                org: "Bench Trust".into(),
                user_id: "u1".into(),
                device_id: "d1".into(),
                display_name: "u1".into(),
                role: "bench".into(),
                signature_key: ByteBuf::from(vec![0u8; 32]),
                issued_at: 0,
            };
            SignedCredential::sign(&cred, &org).encode().len()
        };
        println!("(c) MLS costs, medians in ms: Sitrep client core vs bare openmls 0.9.2");
        println!("    (bare openmls uses BasicCredentials of the same size, {cred_len} bytes)");
        println!("| suite | members | operation | sitrep | openmls | overhead |");
        println!("|---|---|---|---|---|---|");
        for cs in [
            sitrep_core::INTEROP_CIPHERSUITE,
            sitrep_core::DEFAULT_CIPHERSUITE,
        ] {
            for &n in sizes {
                let o = ours(cs, n, iters)?;
                let b = bare(cs, n, iters, cred_len)?;
                let name = if cs == sitrep_core::DEFAULT_CIPHERSUITE {
                    "0x004E"
                } else {
                    "0x0001"
                };
                for (op, x, y) in [
                    ("encrypt message", o.enc, b.enc),
                    ("decrypt message", o.dec, b.dec),
                    ("self-update commit", o.commit, b.commit),
                    ("process commit", o.process_commit, b.process_commit),
                ] {
                    println!(
                        "| {name} | {n} | {op} | {x:.3} | {y:.3} | {:+.0}% |",
                        (x / y - 1.0) * 100.0
                    );
                }
            }
        }
        Ok(())
    }
}

mod idle {
    //! `sitrep bench idle`: the server as a child process (so its memory is
    //! its own), WebSockets held open by this one.

    use std::time::{Duration, Instant};

    use anyhow::{Context as _, bail};
    use futures_util::StreamExt as _;
    use sitrep_core::PendingEnrolment;
    use sitrep_wire::api;

    use crate::Remote;

    /// The child's resident set, bytes (Linux).
    fn rss(pid: u32) -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context("reading the server's /proc status (Linux only)")?;
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kb * 1024)
    }

    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub(super) async fn bench(counts: &[usize], devices: usize, tls: bool) -> anyhow::Result<()> {
        if counts.is_empty() || counts.windows(2).any(|w| w[0] > w[1]) || devices == 0 {
            bail!("--connections ascending, --devices at least 1");
        }
        let dir =
            std::env::temp_dir().join(format!("sitrep-idle-{}", hex::encode(super::rand16())));
        sitrep_server::org::Org::open_or_create(&dir, Some("Bench Trust"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.arg("serve")
            .arg("--data")
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("SITREP_LOG", "warn")
            .env("SITREP_LIMITS_ENROL_PER_SEC", "1000000.0")
            .env("SITREP_LIMITS_ADDR_PER_SEC", "1000000.0")
            .env("SITREP_LIMITS_ADDR_BURST", "1000000.0")
            .env("SITREP_LIMITS_MAX_CONNECTIONS", "20000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        let (url, ca) = if tls {
            let made = crate::tls::make_private_ca(&dir.join("tls"), &["localhost"])?;
            cmd.arg("--tls-cert")
                .arg(&made.files.cert)
                .arg("--tls-key")
                .arg(&made.files.key);
            (format!("https://localhost:{port}"), Some(made.ca_pem))
        } else {
            (format!("http://127.0.0.1:{port}"), None)
        };
        let child = Child(cmd.spawn()?);
        let pid = child.0.id();
        let tokens = {
            let r = Remote::with_ca(&url, None, ca.as_deref())?;
            let mut up = false;
            for _ in 0..500 {
                if r.get::<api::Health>("/healthz").await.is_ok() {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !up {
                bail!("the server did not start");
            }
            let t = Instant::now();
            let mut tokens = Vec::with_capacity(devices);
            for i in 0..devices {
                let u = format!("idle{i:05}");
                let code = sitrep_server::create_invite(&dir, &u, &u, "bench", 3600)?;
                let pending = PendingEnrolment::new(sitrep_core::INTEROP_CIPHERSUITE)?;
                let resp: api::EnrolResponse =
                    r.post("/v1/enrol", &pending.enrol_request(&code)?).await?;
                tokens.push(resp.token);
            }
            println!(
                "idle connections over {}: {devices} devices enrolled in {:.1} s",
                if tls {
                    "wss (TLS 1.3)"
                } else {
                    "plain WebSocket"
                },
                t.elapsed().as_secs_f64()
            );
            tokens
        };
        // The enrolment connection gone, the store warm.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let base = rss(pid)?;
        println!(
            "    server RSS before any WebSocket: {:.1} MiB",
            base as f64 / 1048576.0
        );
        let mut held = Vec::with_capacity(*counts.last().unwrap_or(&0));
        let remotes: Vec<Remote> = tokens
            .iter()
            .map(|t| Remote::with_ca(&url, Some(t), ca.as_deref()))
            .collect::<Result<_, _>>()?;
        for &n in counts {
            let t = Instant::now();
            let need = n - held.len();
            let start = held.len();
            let opened: Vec<_> = futures_util::stream::iter((start..start + need).map(|i| {
                let r = &remotes[i % remotes.len()];
                async move { r.ws("/v1/ws", Duration::from_secs(60)).await }
            }))
            .buffer_unordered(64)
            .collect()
            .await;
            for ws in opened {
                held.push(ws.context("a WebSocket was refused")?);
            }
            let took = t.elapsed().as_secs_f64();
            // Let the backlog reads and buffers settle.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = rss(pid)?;
            println!(
                "    {n} connections (opened {need} in {took:.1} s): server RSS {:.1} MiB, {:.1} KiB per connection over the base",
                now as f64 / 1048576.0,
                now.saturating_sub(base) as f64 / 1024.0 / n as f64
            );
        }
        drop(held);
        drop(child);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
