//! `sitrep watch`: the live client at a terminal.
//!
//! A loop of two phases. **Work**, holding the profile lock: read the state
//! as other commands left it, sync (which also sends the outbox), run what
//! the user typed, show what is new, save, release the lock. **Wait**,
//! without the lock (so `send` from another terminal works): for a push on
//! the WebSocket, a typed line, the profile changing on disk, or what the
//! engine's timers ([`Live`], on the same clock as everything else) say is
//! due: an alert's escalation, the fallback poll (which also applies
//! retention), the idle lock, or the retry after a network failure, which
//! backs off exponentially with jitter.
//!
//! The WebSocket is only a wake-up: every entry is fetched, processed and
//! acknowledged by the same sync as `sitrep sync`, so a dropped connection
//! or a crash between a push and its processing loses nothing.

use std::collections::HashSet;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use sitrep_cli::{Profile, now_ms};
use sitrep_core::Event;
use sitrep_core::engine::{Due, Live};
use tokio_tungstenite::tungstenite::Message;

use crate::{fmt_clock, fmt_day};

/// How often the wait phase looks at the profile file (the timers
/// themselves are the engine's: [`Live`]).
const TICK: Duration = Duration::from_millis(250);

struct Style {
    colour: bool,
}

impl Style {
    fn new() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            colour: std::io::stdout().is_terminal() && !no_color,
        }
    }
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

use sitrep_cli::Ws;

async fn connect(p: &Profile) -> anyhow::Result<Ws> {
    p.remote()?.ws("/v1/ws", Duration::from_secs(10)).await
}

/// What the user typed, parsed.
enum Typed {
    Text(String),
    Ack(Option<String>),
    Reply(Option<String>, String),
    Help,
    Quit,
}

fn parse(line: &str) -> Option<Typed> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let mut words = line.split_whitespace();
    Some(match words.next() {
        Some("/quit" | "/exit") => Typed::Quit,
        Some("/help" | "/?") => Typed::Help,
        Some("/ack") => Typed::Ack(words.next().map(str::to_string)),
        Some("/reply") => {
            let rest: Vec<&str> = words.collect();
            match rest.as_slice() {
                [answer] => Typed::Reply(None, (*answer).to_string()),
                [id, answer] => Typed::Reply(Some((*id).to_string()), (*answer).to_string()),
                _ => Typed::Help,
            }
        }
        Some(w) if w.starts_with("//") => Typed::Text(line[1..].to_string()),
        Some(w) if w.starts_with('/') => Typed::Help,
        _ => Typed::Text(line.to_string()),
    })
}

const HELP: &str = "type a message and press Enter to send it; /ack [ALERT] acknowledges an \
alert (the latest if none given); /reply [INCIDENT] now|MINUTES|no answers a call-in; \
/quit stops (so does Ctrl-C or Ctrl-D)";

struct Watch {
    p: Profile,
    target: Option<String>,
    style: Style,
    /// Entry ids by group, already shown or there before the watch began.
    seen: std::collections::HashMap<String, HashSet<String>>,
    /// Alerts announced (by id).
    announced: HashSet<String>,
    /// Incident levels shown, by incident id.
    levels: std::collections::HashMap<String, sitrep_wire::incident::Level>,
    day: String,
    offline_since: Option<Instant>,
}

/// How the watch ended, or that it locked.
enum Exit {
    Done,
    /// Idle past the policy's time: the profile was dropped (its key
    /// zeroised); the push channel stays open for content-free notices.
    Locked(Option<Box<Ws>>),
}

/// The idle time after which the watch locks: the organisation's policy,
/// or shorter where this device says so (`SITREP_IDLE_LOCK_SECS`: a ward PC
/// may lock sooner, never later).
fn idle_limit(p: &Profile) -> Duration {
    let policy = u64::from(p.client.policy().lock_after_idle_secs);
    let local = std::env::var("SITREP_IDLE_LOCK_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    Duration::from_secs(local.map_or(policy, |l| l.min(policy)))
}

/// Lines from the terminal, read on their own thread (stdin blocks). When
/// `secret` is set, the next line is read without echo (a passcode).
struct Input {
    lines: tokio::sync::mpsc::Receiver<Option<String>>,
    secret: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Input {
    fn start() -> Self {
        let (tx, lines) = tokio::sync::mpsc::channel::<Option<String>>(64);
        let secret = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hidden = secret.clone();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            loop {
                let tty = stdin.is_terminal();
                let line = if hidden.swap(false, std::sync::atomic::Ordering::SeqCst) && tty {
                    rpassword::read_password().map(|l| l + "\n")
                } else {
                    let mut line = String::new();
                    stdin.read_line(&mut line).map(|_| line)
                };
                match line {
                    Ok(l) if l.is_empty() => {
                        let _ = tx.blocking_send(None);
                        return;
                    }
                    Err(_) => {
                        let _ = tx.blocking_send(None);
                        return;
                    }
                    Ok(l) => {
                        if tx.blocking_send(Some(l)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self { lines, secret }
    }
}

/// Run until Ctrl-C, end of input, `/quit`, or `for_secs`; lock when idle.
pub async fn run(p: Profile, target: Option<String>, for_secs: Option<u64>) -> anyhow::Result<()> {
    let dir = p.dir().to_path_buf();
    let deadline = for_secs.map(|s| Instant::now() + Duration::from_secs(s));
    let mut input = Input::start();
    let mut p = p;
    loop {
        match watch(p, &target, deadline, &mut input).await? {
            Exit::Done => return Ok(()),
            Exit::Locked(ws) => match locked(&dir, ws, deadline, &mut input).await? {
                Some(unlocked) => p = unlocked,
                None => return Ok(()),
            },
        }
    }
}

/// Locked: nothing is decrypted or shown; a push says only that something
/// arrived. Enter, then the passcode (counted like any unlock), opens the
/// profile again.
async fn locked(
    dir: &std::path::Path,
    mut ws: Option<Box<Ws>>,
    deadline: Option<Instant>,
    input: &mut Input,
) -> anyhow::Result<Option<Profile>> {
    let style = Style::new();
    eprintln!(
        "{}",
        style.paint(
            "1",
            "locked (idle): press Enter, then type your passcode, to continue"
        )
    );
    // What the next line is: Enter (to start), the passcode, or (when the
    // policy asks for two-step verification) the authenticator code.
    enum Asking {
        Enter,
        Passcode,
        Code(zeroize::Zeroizing<String>),
    }
    let mut asking = Asking::Enter;
    let mut arrived = 0usize;
    let prompt = |label: &str| {
        input
            .secret
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if std::io::stderr().is_terminal() {
            eprint!("{label}: ");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{label}:");
        }
    };
    loop {
        let ws_next = async {
            match ws.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = ws_next => match frame {
                Some(Ok(Message::Binary(_))) => {
                    arrived += 1;
                    eprintln!(
                        "{}",
                        style.paint("1", &format!(
                            "{}: new activity while locked ({arrived} so far); unlock to read",
                            fmt_clock(now_ms())
                        ))
                    );
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => ws = None,
            },
            line = input.lines.recv() => match line.flatten() {
                None => return Ok(None),
                Some(line) => {
                    let line = zeroize::Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
                    let (pass, code) = match std::mem::replace(&mut asking, Asking::Enter) {
                        Asking::Enter => {
                            asking = Asking::Passcode;
                            prompt("Passcode");
                            continue;
                        }
                        // A code given in SITREP_TOTP at start is long
                        // stale: the lock screen asks for a fresh one.
                        Asking::Passcode => (line, None),
                        Asking::Code(pass) => (pass, Some(line)),
                    };
                    match Profile::open_with_code(dir, &pass, code.as_deref().map(|c| c.as_str())) {
                        Ok(p) => {
                            eprintln!("{}", style.paint("32", "unlocked"));
                            return Ok(Some(p));
                        }
                        Err(e) => {
                            let two_step = matches!(
                                e.downcast_ref::<sitrep_core::UnlockError>(),
                                Some(sitrep_core::UnlockError::TwoStepRequired { .. })
                            );
                            if two_step {
                                if code.is_some() {
                                    eprintln!("{e:#}");
                                }
                                asking = Asking::Code(pass);
                                prompt("Authenticator code");
                                continue;
                            }
                            eprintln!("{e:#}");
                            let gone = matches!(
                                e.downcast_ref::<sitrep_core::UnlockError>(),
                                Some(sitrep_core::UnlockError::Wiped)
                            );
                            if gone || sitrep_cli::is_wiped(&e) {
                                return Err(e);
                            }
                            eprintln!("press Enter to try again");
                        }
                    }
                }
            },
            _ = until_deadline => return Ok(None),
            _ = tokio::signal::ctrl_c() => return Ok(None),
        }
    }
}

async fn watch(
    p: Profile,
    target: &Option<String>,
    deadline: Option<Instant>,
    input: &mut Input,
) -> anyhow::Result<Exit> {
    let target = target.clone();
    if let Some(t) = &target {
        p.client.conversation(t)?;
    }
    let mut w = Watch {
        seen: std::collections::HashMap::new(),
        announced: HashSet::new(),
        levels: p
            .client
            .incidents()
            .map(|i| (i.id.clone(), i.level))
            .collect(),
        p,
        target,
        style: Style::new(),
        day: String::new(),
        offline_since: None,
    };
    // What was there before is not news, except what is still unread.
    let own = w.p.client.user_id().to_string();
    for c in w.p.client.conversations() {
        let hex = sitrep_core::records::group_hex_of(c);
        for h in &c.history {
            if h.received_at <= c.shown_through || h.sender == own || h.kind == "system" {
                w.seen.entry(hex.clone()).or_default().insert(h.id.clone());
            }
        }
    }
    let n = w.p.client.conversations().filter(|c| c.active).count();
    eprintln!(
        "watching {} as {} ({}); {HELP}",
        crate::plural(n, "conversation", "conversations"),
        w.p.client.display_name(),
        match &w.target {
            Some(t) => format!("typed messages go to {t}"),
            None => "give a conversation name to send from here".into(),
        }
    );
    let seed = now_ms() ^ u64::from(std::process::id()).rotate_left(32);
    let mut live = Live::new(idle_limit(&w.p).as_secs(), now_ms(), seed);
    let typed = &mut input.lines;
    let mut pending: Vec<Typed> = Vec::new();
    let mut ws: Option<Ws> = None;
    let mut input_open = true;
    let mut quit = false;
    loop {
        if quit || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Exit::Done);
        }
        match live.next(&w.p.client, now_ms(), !pending.is_empty()) {
            Due::Lock => {
                dropped_on_lock(&pending);
                return Ok(Exit::Locked(ws.map(Box::new)));
            }
            Due::Sync => {
                let full = live.full_sync_due(now_ms());
                // A sync still going when the lock falls due (a slow or
                // hostile server) is stopped there: everything it sent was
                // written first, so stopping it is like a crash, and the
                // screen locks on time.
                let lock_in = live
                    .lock_at(!pending.is_empty())
                    .map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
                w.p.reacquire()?;
                let outcome = tokio::select! {
                    o = w.work(&mut pending, &mut quit, full) => Some(o),
                    _ = async {
                        match lock_in {
                            Some(d) => tokio::time::sleep(d).await,
                            None => std::future::pending().await,
                        }
                    } => None,
                };
                w.p.release();
                let Some(outcome) = outcome else {
                    dropped_on_lock(&pending);
                    return Ok(Exit::Locked(ws.map(Box::new)));
                };
                match outcome {
                    Ok(()) => {
                        if w.offline_since.take().is_some() {
                            eprintln!("{}", w.style.paint("32", "connected again"));
                        }
                        live.synced(true, now_ms());
                    }
                    Err(e) if sitrep_cli::is_wiped(&e) => return Err(e),
                    Err(e) => {
                        if w.offline_since.is_none() {
                            w.offline_since = Some(Instant::now());
                            eprintln!(
                                "{}",
                                w.style.paint(
                                    "33",
                                    &format!(
                                        "offline: {e:#}; retrying (what you type is kept and sent when the server is back)"
                                    )
                                )
                            );
                        }
                        ws = None;
                        live.synced(false, now_ms());
                    }
                }
                if !input_open && pending.is_empty() && deadline.is_none() {
                    return Ok(Exit::Done);
                }
            }
            Due::Connect => match connect(&w.p).await {
                Ok(s) => {
                    ws = Some(s);
                    live.connected(true, now_ms());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "websocket not connected");
                    live.connected(false, now_ms());
                }
            },
            Due::Sleep { until_ms } => {
                let wait = Duration::from_millis(until_ms.saturating_sub(now_ms())).min(TICK);
                let ws_next = async {
                    match ws.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    frame = ws_next => match frame {
                        Some(Ok(Message::Binary(_))) => live.frame(true),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            ws = None;
                            live.disconnected(now_ms());
                        }
                    },
                    line = typed.recv(), if input_open => match line.flatten() {
                        Some(l) => {
                            live.input(now_ms());
                            if let Some(t) = parse(&l) {
                                pending.push(t);
                                live.wake();
                            }
                        }
                        None => {
                            input_open = false;
                            if deadline.is_none() {
                                live.wake();
                            }
                        }
                    },
                    _ = tokio::signal::ctrl_c() => return Ok(Exit::Done),
                    _ = tokio::time::sleep(wait) => {
                        // Another command on this profile wrote it (a
                        // `send`), or an alert reached this user.
                        if w.p.changed_elsewhere() || w.alert_due() {
                            live.wake();
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Typed commands that could not go out (the server away) are not kept
/// across the lock: say so.
fn dropped_on_lock(pending: &[Typed]) {
    if !pending.is_empty() {
        eprintln!(
            "not sent before locking (the server could not be reached): {}; type again after unlocking",
            crate::plural(pending.len(), "command", "commands")
        );
    }
}

impl Watch {
    /// One round with the lock held. Shown output is printed even when the
    /// network part fails (what was stored locally is still news).
    async fn work(
        &mut self,
        pending: &mut Vec<Typed>,
        quit: &mut bool,
        full: bool,
    ) -> anyhow::Result<()> {
        self.p.purge()?;
        let result = if full {
            sitrep_cli::sync(&mut self.p).await
        } else {
            sitrep_cli::catch_up(&mut self.p).await
        };
        let mut failed = None;
        let events = match result {
            Ok(e) => e,
            Err(e) => {
                failed = Some(e);
                Vec::new()
            }
        };
        // Typed lines: messages go to the outbox whether or not the server
        // answers; acks and replies need the server.
        let mut keep = Vec::new();
        for t in pending.drain(..) {
            match t {
                Typed::Quit => *quit = true,
                Typed::Help => eprintln!("{HELP}"),
                Typed::Text(text) => self.send(&text).await,
                t @ (Typed::Ack(_) | Typed::Reply(..)) if failed.is_some() => keep.push(t),
                Typed::Ack(id) => self.ack(id.as_deref()).await,
                Typed::Reply(id, answer) => self.reply(id.as_deref(), &answer).await,
            }
        }
        *pending = keep;
        let shown = self.show(&events);
        if failed.is_none() && !shown.is_empty() {
            // Read receipts; one not sent now goes with the next.
            if let Err(e) = sitrep_cli::mark_read(&self.p, &shown).await {
                tracing::debug!(error = %e, "read marker not sent");
            }
        }
        if let Some(e) = failed {
            self.p.save()?;
            return Err(e);
        }
        Ok(())
    }

    async fn send(&mut self, text: &str) {
        let Some(target) = self.target.clone() else {
            eprintln!("not sent: start `sitrep watch NAME` to send to conversation NAME");
            return;
        };
        if let Err(sitrep_core::Error::PidNeedsConfirmation(f)) =
            self.p.client.pid_check(&target, text, false)
        {
            let kinds: Vec<&str> = f.iter().map(|f| f.kind.as_str()).collect();
            eprintln!(
                "not sent: the message may contain patient-identifiable data ({}); send it with `sitrep send {target} ... --allow-pid` if it must go",
                kinds.join(", ")
            );
            return;
        }
        match sitrep_cli::send_queued(&mut self.p, &target, text, false).await {
            Ok(s) => {
                if let Some(why) = s.queued {
                    eprintln!(
                        "{}",
                        self.style
                            .paint("33", &format!("queued: it goes out when it can ({why})"))
                    );
                }
            }
            Err(e) => eprintln!("not sent: {e:#}"),
        }
    }

    async fn ack(&mut self, id: Option<&str>) {
        let now = now_ms();
        let mine: Vec<(String, u64)> = self
            .p
            .client
            .alerts_for_me(now)
            .into_iter()
            .map(|(id, a)| (id.clone(), a.sent_at))
            .collect();
        let found = match id {
            Some(prefix) => {
                let m: Vec<&(String, u64)> =
                    mine.iter().filter(|(i, _)| i.starts_with(prefix)).collect();
                match m.as_slice() {
                    [one] => Some(one.0.clone()),
                    [] => None,
                    _ => {
                        eprintln!("more than one alert starts with {prefix}: give more of its id");
                        return;
                    }
                }
            }
            None => mine
                .iter()
                .max_by_key(|(_, at)| *at)
                .map(|(i, _)| i.clone()),
        };
        let Some(alert) = found else {
            eprintln!(
                "no unacknowledged alert for you{}",
                match id {
                    Some(i) => format!(" with id {i}"),
                    None => String::new(),
                }
            );
            return;
        };
        match sitrep_cli::incident::ack(&mut self.p, &alert).await {
            Ok(()) => eprintln!("acknowledged alert {}", &alert[..alert.len().min(8)]),
            Err(e) => eprintln!("not acknowledged: {e:#}"),
        }
    }

    async fn reply(&mut self, id: Option<&str>, answer: &str) {
        use sitrep_wire::incident::{Availability, Level};
        let availability = match answer {
            "now" | "yes" => Availability::Now,
            "no" | "unavailable" => Availability::Unavailable,
            m => match m.trim_end_matches('m').parse::<u32>() {
                Ok(n) if (1..=720).contains(&n) => Availability::In(n),
                _ => {
                    eprintln!("answer now, a number of minutes (1 to 720), or no");
                    return;
                }
            },
        };
        let incident = match id {
            Some(i) => i.to_string(),
            None => {
                let open: Vec<&sitrep_core::incident::IncidentState> = self
                    .p
                    .client
                    .incidents()
                    .filter(|i| matches!(i.level, Level::Standby | Level::Declared))
                    .collect();
                match open.as_slice() {
                    [one] => one.id.clone(),
                    [] => {
                        eprintln!("no incident is open: nothing to reply to");
                        return;
                    }
                    many => {
                        let ids: Vec<&str> = many.iter().map(|i| i.id.as_str()).collect();
                        eprintln!(
                            "more than one incident is open ({}): /reply INCIDENT {answer}",
                            ids.join(", ")
                        );
                        return;
                    }
                }
            }
        };
        match sitrep_cli::incident::callin_reply_synced(&mut self.p, &incident, availability, None)
            .await
        {
            Ok(()) => eprintln!("replied to the call-in for {incident}: {availability}"),
            Err(e) => eprintln!("not replied: {e:#}"),
        }
    }

    /// An alert that has reached this user (directly or by an escalation
    /// falling due) and has not been announced.
    fn alert_due(&self) -> bool {
        self.p
            .client
            .alerts_for_me(now_ms())
            .iter()
            .any(|(id, _)| !self.announced.contains(*id))
    }

    /// Print what is new; the conversations it showed messages of.
    fn show(&mut self, events: &[Event]) -> Vec<String> {
        let mut out = std::io::stdout().lock();
        let own = self.p.client.user_id().to_string();
        for e in events {
            match e {
                Event::Joined { conversation } => {
                    let _ = writeln!(
                        out,
                        "{}",
                        self.style.paint("1", &format!("you joined {conversation}"))
                    );
                }
                Event::Removed { conversation } => {
                    let _ = writeln!(
                        out,
                        "{}",
                        self.style
                            .paint("1", &format!("you are no longer in {conversation}"))
                    );
                }
                Event::Refused { reason } => {
                    eprintln!("{}", self.style.paint("33", &format!("refused: {reason}")))
                }
                _ => {}
            }
        }
        // Everything new in the history, whichever command stored it.
        let mut fresh: Vec<(String, String, sitrep_core::HistoryEntry)> = Vec::new();
        for c in self.p.client.conversations() {
            let hex = sitrep_core::records::group_hex_of(c);
            for h in &c.history {
                if !self.seen.get(&hex).is_some_and(|s| s.contains(&h.id)) {
                    fresh.push((hex.clone(), c.name.clone(), h.clone()));
                }
            }
        }
        fresh.sort_by_key(|(_, _, h)| h.received_at);
        let mut names = Vec::new();
        for (hex, name, h) in fresh {
            self.seen.entry(hex).or_default().insert(h.id.clone());
            let day = fmt_day(h.sent_at);
            if day != self.day {
                let _ = writeln!(out, "-- {day} --");
                self.day = day;
            }
            let text = sitrep_core::incident::summary(&h.kind, &h.body);
            let who = if h.sender == own {
                "you".to_string()
            } else {
                h.sender_name.clone()
            };
            let line = match h.kind.as_str() {
                "system" => self
                    .style
                    .paint("2", &format!("{} [{name}] {text}", fmt_clock(h.sent_at))),
                "incident" => self.style.paint(
                    "1;41;97",
                    &format!("{} [{name}] {who}: {text}", fmt_clock(h.sent_at)),
                ),
                "alert" => self.style.paint(
                    "1;31",
                    &format!("{} [{name}] {who}: {text}", fmt_clock(h.sent_at)),
                ),
                _ => format!(
                    "{} {} {}: {text}",
                    fmt_clock(h.sent_at),
                    self.style.paint("36", &format!("[{name}]")),
                    self.style.paint("1", &who)
                ),
            };
            let _ = writeln!(out, "{line}");
            if !names.contains(&name) {
                names.push(name);
            }
        }
        // Incident levels, as a banner when they change.
        for i in self.p.client.incidents() {
            if self.levels.get(&i.id) != Some(&i.level) {
                self.levels.insert(i.id.clone(), i.level);
                let banner = format!("*** {} {} ***", i.id, i.level.to_string().to_uppercase());
                let _ = writeln!(out, "{}", self.style.paint("1;41;97", &banner));
            }
        }
        // Alerts that reach this user, once each, with a bell when urgent.
        let now = now_ms();
        for (id, a) in self.p.client.alerts_for_me(now) {
            if !self.announced.insert(id.clone()) {
                continue;
            }
            let urgent = !matches!(a.alert.priority, sitrep_wire::incident::Priority::Routine);
            let bell = if urgent && std::io::stdout().is_terminal() {
                "\x07"
            } else {
                ""
            };
            let banner = format!(
                "!!! {} ALERT from {}: {} (acknowledge: /ack {}) !!!",
                a.alert.priority.to_string().to_uppercase(),
                a.sender,
                a.alert.text,
                &id[..id.len().min(8)]
            );
            let _ = writeln!(out, "{bell}{}", self.style.paint("1;5;31", &banner));
        }
        let _ = out.flush();
        drop(out);
        if names.is_empty() {
            return names;
        }
        for n in &names {
            let _ = self.p.client.mark_shown(n);
        }
        if let Err(e) = self.p.save() {
            eprintln!("could not save: {e:#}");
        }
        names
    }
}
