//! The engine's tasks: [`Sync`] (everything a device does to be current,
//! in order), and the pieces it and the front ends' commands are made of:
//! [`Pull`], [`Resolve`], [`Change`], [`Outbox`], [`TopUp`].
//!
//! The order of a sync, and why:
//! 1. the organisation's policy and directory (signed; a forged one stops
//!    the sync, a newer one is taken up before anything is processed);
//! 2. [`Resolve`]: changes whose answer was lost are settled first, since
//!    their group's log cannot be processed while their fate is unknown;
//! 3. [`Pull`]: every page of the inbox processed, sealed (the driver
//!    writes before the ack goes), then acknowledged;
//! 4. retention: expired messages and old keys purged;
//! 5. asking to be re-added where this device fell out of step, re-adding
//!    members who asked, committing members' leaves, bringing the user's
//!    new devices in ([`Change`], each settled for its conversation alone);
//! 6. [`Outbox`]: what was written, encrypted now (at the current epoch)
//!    and posted in order, each exactly once;
//! 7. incident follow-ups (escalations due, read receipts), then
//!    KeyPackage top-up.

use std::collections::VecDeque;

use sitrep_wire::api;

use super::task::{
    Action, Failure, FailureKind, Task, answer, decode, fate_unknown, get, post, post_lazy,
};
use super::{OpStep, Reply, Request, Step};
use crate::{Client, Event};

/// How many times a change is rebuilt after another member's commit took
/// the epoch, before giving up for now.
pub const COMMIT_ATTEMPTS: u32 = 8;
/// Posts of a change whose answer was lost, before leaving it to the next sync.
const REPOSTS: u32 = 4;
/// Wait between those posts.
const REPOST_BACKOFF_MS: u64 = 500;
/// Pages one pull fetches at most (of up to 1,000 entries); the next sync
/// goes on from there.
const MAX_PAGES: u32 = 10_000;
/// One-time KeyPackages kept on the server for this device.
pub const KEY_PACKAGE_TARGET: u64 = 20;

/// Fetch, process, then acknowledge every page of the inbox. The driver
/// writes the changes before each request, so a page is sealed before its
/// ack leaves: a crash at any point loses nothing and processes nothing twice.
#[derive(Debug, Default)]
pub struct Pull {
    pages: u32,
    ack: Option<u64>,
    more: bool,
    done: bool,
    events: Vec<Event>,
}

impl Pull {
    /// A pull from this device's cursor.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Task for Pull {
    fn poll(&mut self, c: &mut Client, _now_ms: u64) -> Result<Action, Failure> {
        if self.done {
            return Ok(Action::Done(std::mem::take(&mut self.events)));
        }
        Ok(Action::Request(match self.ack {
            Some(up_to) => post("ack", "/v1/inbox/ack", &api::AckRequest { up_to }),
            None => get(format!("/v1/inbox?after={}&limit=1000", c.last_seq())),
        }))
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        if self.done {
            return Ok(());
        }
        if self.ack.is_some() {
            answer(c, "acknowledging messages", reply)?;
            self.ack = None;
            self.done = !self.more;
            return Ok(());
        }
        let mut page: api::InboxResponse = decode(c, "fetching messages", reply)?;
        // In the log's order whatever order they came in (an entry below one
        // already processed would be skipped as seen), each once.
        page.entries.sort_by_key(|e| e.seq);
        page.entries.dedup_by_key(|e| e.seq);
        let before = c.last_seq();
        let Some(last) = page.entries.last().map(|e| e.seq) else {
            self.done = true;
            return Ok(());
        };
        if last <= before {
            // Nothing new (a server replaying what this device holds):
            // acknowledge what is held and stop, so it cannot loop.
            self.ack = Some(before);
            self.more = false;
            return Ok(());
        }
        self.events.extend(
            c.handle_entries(
                page.entries
                    .iter()
                    .map(|e| (e.seq, e.kind, e.payload.as_slice())),
                now_ms,
            ),
        );
        self.pages += 1;
        self.ack = Some(last);
        // A long catch-up stops after MAX_PAGES; the next sync goes on.
        self.more = page.more && self.pages < MAX_PAGES;
        Ok(())
    }
}

/// Settle every change whose answer was never seen (a lost answer, a crash
/// between sealing and the answer): post it again, unchanged (the server
/// answers a repeated client id with its first outcome). While one stays
/// unknown the task fails, retryable, and nothing is acknowledged.
#[derive(Debug, Default)]
pub struct Resolve {
    queue: Option<VecDeque<Request>>,
    events: Vec<Event>,
}

impl Resolve {
    /// Settle what is pending now.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Task for Resolve {
    fn poll(&mut self, c: &mut Client, _now_ms: u64) -> Result<Action, Failure> {
        let q = self.queue.get_or_insert_with(|| c.op_requests().into());
        Ok(match q.front() {
            Some(r) => Action::Request(r.clone()),
            None => Action::Done(std::mem::take(&mut self.events)),
        })
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        let Some(req) = self.queue.as_mut().and_then(VecDeque::pop_front) else {
            return Ok(());
        };
        let op = "confirming a change sent earlier";
        match c
            .op_reply(&req.id, reply, now_ms)
            .map_err(|e| Failure::local(op, e))?
        {
            OpStep::Retry => {
                let mut f = Failure::unreachable(c, op, status_of(reply));
                if let FailureKind::Unreachable { detail, .. } = &mut f.kind {
                    *detail = "a change sent earlier is still unconfirmed".into();
                }
                return Err(f);
            }
            OpStep::Accepted(ev) | OpStep::Left(ev) => self.events.extend(ev),
            OpStep::Conflict => self.events.push(Event::Refused {
                reason: "a change sent earlier was overtaken by another member's".into(),
            }),
            OpStep::Refused { reason } => self.events.push(Event::Refused { reason }),
            _ => {}
        }
        Ok(())
    }
}

fn status_of(reply: Reply<'_>) -> Option<u16> {
    match reply {
        Reply::Answered { status, .. } => Some(status),
        Reply::Lost => None,
    }
}

/// Records a change (a commit or a leave) in the client and returns its
/// group, or `None` when there is nothing to do.
type Build<'a> = Box<dyn FnMut(&mut Client) -> Result<Option<String>, crate::Error> + Send + 'a>;

/// One change to a group (a commit, or leaving), run until the server
/// accepts it: sealed before it is posted; a lost answer posted again
/// unchanged after a backoff, then left sealed for the next sync
/// ([`FailureKind::Unconfirmed`]); after another member's commit wins the
/// epoch, catch up and build it again ([`COMMIT_ATTEMPTS`] times).
pub struct Change<'a> {
    build: Build<'a>,
    state: ChangeState,
    attempts: u32,
    reposts: u32,
    events: Vec<Event>,
}

enum ChangeState {
    Resolve(Resolve),
    Build,
    Posted(Request),
    Backoff { until_ms: u64, req: Request },
    Pull(Pull),
    Done,
}

impl<'a> Change<'a> {
    /// A commit built by `build` (rebuilt after a conflict).
    pub fn commit(
        mut build: impl FnMut(&mut Client) -> Result<crate::PreparedCommit, crate::Error> + Send + 'a,
    ) -> Self {
        Self::commit_if(move |c| build(c).map(Some))
    }

    /// A commit `build` may find there is no need for (`None`).
    pub fn commit_if(
        mut build: impl FnMut(&mut Client) -> Result<Option<crate::PreparedCommit>, crate::Error>
        + Send
        + 'a,
    ) -> Self {
        Self::new(Box::new(move |c| {
            let Some(p) = build(c)? else {
                return Ok(None);
            };
            c.record_commit(&p)?;
            Ok(Some(p.group_hex))
        }))
    }

    /// Leave conversation `name`: the server stops delivering it to this
    /// device at once; the next member to sync commits the removal.
    pub fn leave(name: &'a str) -> Self {
        Self::new(Box::new(move |c| {
            let (hex, req) = c.prepare_leave(name)?;
            c.record_leave(&hex, &req)?;
            Ok(Some(hex))
        }))
    }

    fn new(build: Build<'a>) -> Self {
        Self {
            build,
            state: ChangeState::Resolve(Resolve::new()),
            attempts: 0,
            reposts: 0,
            events: Vec::new(),
        }
    }
}

const CHANGE: &str = "making a change to a conversation";

impl Task for Change<'_> {
    fn poll(&mut self, c: &mut Client, now_ms: u64) -> Result<Action, Failure> {
        loop {
            match &mut self.state {
                ChangeState::Resolve(t) => match t.poll(c, now_ms)? {
                    Action::Done(ev) => {
                        self.events.extend(ev);
                        self.state = ChangeState::Build;
                    }
                    a => return Ok(a),
                },
                ChangeState::Pull(t) => match t.poll(c, now_ms)? {
                    Action::Done(ev) => {
                        self.events.extend(ev);
                        self.state = ChangeState::Build;
                    }
                    a => return Ok(a),
                },
                ChangeState::Build => {
                    if self.attempts >= COMMIT_ATTEMPTS {
                        return Err(Failure::new(CHANGE, FailureKind::Contended));
                    }
                    self.attempts += 1;
                    let Some(hex) = (self.build)(c).map_err(|e| Failure::local(CHANGE, e))? else {
                        self.state = ChangeState::Done;
                        continue;
                    };
                    let req = c
                        .op_requests()
                        .into_iter()
                        .find(|r| r.id == hex)
                        .ok_or_else(|| {
                            Failure::local(
                                CHANGE,
                                crate::Error::Invalid("change not recorded".into()),
                            )
                        })?;
                    self.reposts = 0;
                    self.state = ChangeState::Posted(req);
                }
                ChangeState::Posted(req) => return Ok(Action::Request(req.clone())),
                ChangeState::Backoff { until_ms, req } => {
                    if now_ms < *until_ms {
                        return Ok(Action::Wait {
                            until_ms: *until_ms,
                        });
                    }
                    self.state = ChangeState::Posted(req.clone());
                }
                ChangeState::Done => return Ok(Action::Done(std::mem::take(&mut self.events))),
            }
        }
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        let req = match &mut self.state {
            ChangeState::Resolve(t) => return t.feed(c, reply, now_ms),
            ChangeState::Pull(t) => return t.feed(c, reply, now_ms),
            ChangeState::Posted(req) => req.clone(),
            _ => return Ok(()),
        };
        // The server's own words for a refusal, before the engine clears it.
        let refusal = match reply {
            Reply::Answered { status, .. }
                if !(200..300).contains(&status) && !fate_unknown(status) =>
            {
                answer(c, CHANGE, reply).err()
            }
            _ => None,
        };
        match c
            .op_reply(&req.id, reply, now_ms)
            .map_err(|e| Failure::local(CHANGE, e))?
        {
            OpStep::Accepted(ev) | OpStep::Left(ev) => {
                self.events.extend(ev);
                self.state = ChangeState::Done;
            }
            OpStep::Retry => {
                self.reposts += 1;
                if self.reposts >= REPOSTS {
                    return Err(Failure::new(CHANGE, FailureKind::Unconfirmed));
                }
                self.state = ChangeState::Backoff {
                    until_ms: now_ms + REPOST_BACKOFF_MS,
                    req,
                };
            }
            OpStep::Conflict => self.state = ChangeState::Pull(Pull::new()),
            OpStep::Refused { reason } => {
                // No refusal from the server: it took the change and this
                // device could not apply it (reported, never "nothing to do").
                return Err(
                    refusal.unwrap_or_else(|| Failure::local(CHANGE, crate::Error::Mls(reason)))
                );
            }
            _ => self.state = ChangeState::Done,
        }
        Ok(())
    }
}

/// Post the outbox: what was written is encrypted now (after the caller
/// caught up, so at the current epoch), then posted in order, each sealed
/// before it goes. A message refused for its epoch is encrypted again
/// after one more catch-up; one whose fate is unknown stops the task
/// (retryable) and stays, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    encrypted: bool,
    /// Posted something since the last encryption (later posts carry
    /// ciphertexts already sealed durably with the first).
    posted: bool,
    second_round: bool,
    requeued: bool,
    pull: Option<Pull>,
    in_flight: Option<String>,
    events: Vec<Event>,
}

impl Outbox {
    /// Flush what is queued now.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Task for Outbox {
    fn poll(&mut self, c: &mut Client, now_ms: u64) -> Result<Action, Failure> {
        loop {
            if let Some(p) = &mut self.pull {
                match p.poll(c, now_ms)? {
                    Action::Done(ev) => {
                        self.events.extend(ev);
                        self.pull = None;
                        self.encrypted = false;
                    }
                    a => return Ok(a),
                }
            }
            if !self.encrypted {
                self.events.extend(c.encrypt_queued(now_ms));
                self.encrypted = true;
                self.posted = false;
            }
            if let Some(mut r) = c.outbox_request() {
                self.in_flight = Some(r.id.clone());
                r.durable = !self.posted;
                return Ok(Action::Request(r));
            }
            if self.requeued && !self.second_round {
                // Some were refused for their epoch: catch up, encrypt again.
                self.second_round = true;
                self.requeued = false;
                self.pull = Some(Pull::new());
                continue;
            }
            return Ok(Action::Done(std::mem::take(&mut self.events)));
        }
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        if let Some(p) = &mut self.pull {
            return p.feed(c, reply, now_ms);
        }
        let Some(id) = self.in_flight.take() else {
            return Ok(());
        };
        self.posted = true;
        if let Err(f) = answer(c, "sending messages", reply)
            && f.wiped()
        {
            return Err(f);
        }
        match c.outbox_reply(&id, reply, now_ms) {
            Step::Retry => {
                let n = c.waiting().len();
                let mut f = Failure::unreachable(c, "sending messages", status_of(reply));
                if let FailureKind::Unreachable { detail, .. } = &mut f.kind {
                    *detail = format!("{} kept in the outbox", plural_messages(n));
                }
                Err(f)
            }
            Step::Requeued => {
                self.requeued = true;
                Ok(())
            }
            Step::Refused { reason } => {
                self.events.push(Event::Refused { reason });
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// "1 message", "2 messages".
pub fn plural_messages(n: usize) -> String {
    if n == 1 {
        "1 message".into()
    } else {
        format!("{n} messages")
    }
}

/// Keep enough KeyPackages on the server (generated and sealed before the
/// upload goes, so a lost answer never leaves a KeyPackage whose private
/// key is gone).
#[derive(Debug, Default)]
pub struct TopUp {
    upload: Option<(Request, bool)>,
    done: bool,
}

impl TopUp {
    /// Count, then upload what is missing.
    pub fn new() -> Self {
        Self::default()
    }
}

const TOP_UP: &str = "uploading KeyPackages";

impl Task for TopUp {
    fn poll(&mut self, _c: &mut Client, _now_ms: u64) -> Result<Action, Failure> {
        Ok(match (&self.upload, self.done) {
            (_, true) => Action::Done(Vec::new()),
            (Some((r, _)), _) => Action::Request(r.clone()),
            (None, _) => Action::Request(get("/v1/keypackages/count")),
        })
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, _now_ms: u64) -> Result<(), Failure> {
        if let Some((_, last_resort)) = &self.upload {
            answer(c, TOP_UP, reply)?;
            if *last_resort {
                c.last_resort_uploaded();
            }
            self.done = true;
            return Ok(());
        }
        let count: api::KeyPackageCount = decode(c, TOP_UP, reply)?;
        if count.available >= KEY_PACKAGE_TARGET / 2 && count.last_resort {
            self.done = true;
            return Ok(());
        }
        let n = (KEY_PACKAGE_TARGET - count.available.min(KEY_PACKAGE_TARGET)) as usize;
        let upload = c.key_packages(n).map_err(|e| Failure::local(TOP_UP, e))?;
        let last_resort = upload.last_resort.is_some();
        self.upload = Some((post("upload", "/v1/keypackages", &upload), last_resort));
        Ok(())
    }
}

/// How a sub-task's failure is taken inside a sync: for one conversation,
/// without stopping the sync for all the others.
enum Settle {
    /// Fails the sync.
    Propagate,
    /// A change the sync makes on its own (re-adds, the user's new devices):
    /// nothing left to do is fine; a refusal or a local failure is reported.
    Report(String),
    /// Committing members' leaves: a refusal or a local failure is
    /// reported, contention waits for the next sync.
    Leaves(String),
}

impl Settle {
    fn take(&self, f: Failure, events: &mut Vec<Event>) -> Result<(), Failure> {
        match (self, &f.kind) {
            (Settle::Propagate, _) | (_, FailureKind::Wiped) => Err(f),
            (Settle::Report(_), FailureKind::Local(crate::Error::Invalid(_))) => Ok(()),
            (
                Settle::Report(what),
                FailureKind::Refused { .. } | FailureKind::Local(_) | FailureKind::Contended,
            ) => {
                events.push(Event::Refused {
                    reason: format!("{what} failed: {f}"),
                });
                Ok(())
            }
            // One conversation's broken state must not stop every sync
            // (and so every other conversation's outbox): reported.
            (Settle::Leaves(name), FailureKind::Refused { .. } | FailureKind::Local(_)) => {
                events.push(Event::Refused {
                    reason: format!("removing members from {name:?} failed: {f}"),
                });
                Ok(())
            }
            (Settle::Leaves(_), FailureKind::Contended) => Ok(()),
            _ => Err(f),
        }
    }
}

/// Conversations with members to re-add: (conversation, [(user, device)]).
type Readds = VecDeque<(String, Vec<(String, String)>)>;

/// Where a sync is.
enum Phase {
    Policy,
    Directory,
    Resolve,
    Pull,
    Purge,
    Rejoin(Option<VecDeque<String>>),
    Readd(Option<Readds>),
    Leaves(Option<VecDeque<String>>),
    OwnDevices {
        mine: Option<Vec<String>>,
        conversations: VecDeque<String>,
    },
    Outbox,
    Incident,
    TopUp,
    Done,
}

/// Everything a device does to be current, in order (see the module
/// documentation). Conversations are independent: a change refused in one
/// is reported ([`Event::Refused`]) and the others go on.
pub struct Sync {
    phase: Phase,
    /// Also the organisation's policy and directory, the user's new
    /// devices and KeyPackage top-up (not on every push: see [`Sync::catch_up`]).
    full: bool,
    sub: Option<(Box<dyn Task + Send>, Settle)>,
    /// The request in flight for the phase itself, and what it is for.
    pending: Option<(Request, String)>,
    events: Vec<Event>,
    /// A newer policy or directory was taken up, or retention deleted
    /// something: the next request writes durably (a power cut must not
    /// bring back a looser policy or an expired message).
    must_sync: bool,
}

impl Default for Sync {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(serde::Deserialize)]
struct Signed {
    #[serde(with = "sitrep_wire::b64::opt", default, alias = "directory")]
    policy: Option<Vec<u8>>,
}

impl Sync {
    /// A sync from the start.
    pub fn new() -> Self {
        Self {
            phase: Phase::Policy,
            full: true,
            sub: None,
            pending: None,
            events: Vec::new(),
            must_sync: false,
        }
    }

    /// What a push calls for: everything but the housekeeping a push does
    /// not change (the user's new devices, KeyPackage top-up). The policy
    /// and directory are still fetched first: an entry must be judged
    /// under the directory it was sent under (a newly named commander's
    /// declaration), and a refusal is for good. A live front end runs a
    /// whole [`Sync::new`] at start, after an outage and on its poll
    /// ([`super::Live::full_sync_due`]).
    pub fn catch_up() -> Self {
        Self {
            full: false,
            ..Self::new()
        }
    }

    fn run(&mut self, t: impl Task + Send + 'static, settle: Settle) {
        self.sub = Some((Box::new(t), settle));
    }

    fn ask(&mut self, req: Request, what: String) -> Action {
        self.pending = Some((req.clone(), what));
        Action::Request(req)
    }

    /// The phase's next request, or `None` when it moved on (loop again).
    fn step(&mut self, c: &mut Client, now_ms: u64) -> Result<Option<Action>, Failure> {
        let next = match &mut self.phase {
            Phase::Policy => return Ok(Some(self.ask(get("/v1/policy"), String::new()))),
            Phase::Directory => return Ok(Some(self.ask(get("/v1/directory"), String::new()))),
            Phase::Resolve => {
                self.run(Resolve::new(), Settle::Propagate);
                Phase::Pull
            }
            Phase::Pull => {
                self.run(Pull::new(), Settle::Propagate);
                Phase::Purge
            }
            Phase::Purge => {
                let purged = c
                    .purge_expired(now_ms)
                    .map_err(|e| Failure::local("applying retention", e))?;
                self.must_sync |= purged > 0;
                Phase::Rejoin(None)
            }
            Phase::Rejoin(q) => {
                let q = q.get_or_insert_with(|| c.rejoins_to_request(now_ms).into());
                match q.pop_front() {
                    Some(hex) => {
                        let req = post_lazy(
                            hex.clone(),
                            format!("/v1/groups/{hex}/rejoin"),
                            &api::RejoinRequest {
                                client_id: c.new_client_id(),
                            },
                        );
                        return Ok(Some(self.ask(req, hex)));
                    }
                    None => Phase::Readd(None),
                }
            }
            Phase::Readd(q) => {
                let q = q.get_or_insert_with(|| c.pending_readds().into());
                match q.pop_front() {
                    Some((name, devices)) => {
                        let mut users: Vec<String> =
                            devices.iter().map(|(u, _)| u.clone()).collect();
                        users.dedup();
                        let req = post_lazy(
                            name.clone(),
                            "/v1/keypackages/claim",
                            &api::ClaimRequest {
                                user_ids: users,
                                device_ids: devices.into_iter().map(|(_, d)| d).collect(),
                            },
                        );
                        return Ok(Some(self.ask(req, name)));
                    }
                    None => Phase::Leaves(None),
                }
            }
            Phase::Leaves(q) => {
                let q = q.get_or_insert_with(|| c.pending_proposals().into());
                match q.pop_front() {
                    Some(name) => {
                        let shown = display_name(c, &name);
                        self.run(
                            Change::commit_if(move |c| c.prepare_commit_pending(&name)),
                            Settle::Leaves(shown),
                        );
                        return Ok(None);
                    }
                    None if self.full => Phase::OwnDevices {
                        mine: None,
                        conversations: VecDeque::new(),
                    },
                    None => Phase::Outbox,
                }
            }
            Phase::OwnDevices {
                mine,
                conversations,
            } => {
                let Some(mine) = mine else {
                    return Ok(Some(self.ask(get("/v1/devices"), String::new())));
                };
                let mut next = None;
                while let Some(name) = conversations.pop_front() {
                    let present: Vec<String> = c
                        .members(&name)
                        .map_err(|e| Failure::local("bringing in your new devices", e))?
                        .into_iter()
                        .map(|m| m.device_id)
                        .collect();
                    let missing: Vec<String> = mine
                        .iter()
                        .filter(|d| !present.contains(d))
                        .cloned()
                        .collect();
                    if !missing.is_empty() {
                        next = Some((name, missing));
                        break;
                    }
                }
                match next {
                    Some((name, missing)) => {
                        let req = post_lazy(
                            name.clone(),
                            "/v1/keypackages/claim",
                            &api::ClaimRequest {
                                user_ids: vec![c.user_id().to_string()],
                                device_ids: missing,
                            },
                        );
                        return Ok(Some(self.ask(req, name)));
                    }
                    None => Phase::Outbox,
                }
            }
            Phase::Outbox => {
                self.run(Outbox::new(), Settle::Propagate);
                Phase::Incident
            }
            Phase::Incident => {
                // Escalations that fell due are worked out on this device
                // (nothing is sent for them); read receipts go out, one per
                // conversation.
                c.escalations_due(now_ms);
                let items = c.pending_receipts(now_ms);
                for (conv, item) in &items {
                    c.send_structured(conv, item, now_ms)
                        .map_err(|e| Failure::local("sending read receipts", e))?;
                }
                if !items.is_empty() {
                    self.run(Outbox::new(), Settle::Propagate);
                }
                if self.full { Phase::TopUp } else { Phase::Done }
            }
            Phase::TopUp => {
                self.run(TopUp::new(), Settle::Propagate);
                Phase::Done
            }
            Phase::Done => return Ok(Some(Action::Done(std::mem::take(&mut self.events)))),
        };
        self.phase = next;
        Ok(None)
    }

    /// The reply to the phase's own request.
    fn answered(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        let Some((_, what)) = self.pending.take() else {
            return Ok(());
        };
        match &mut self.phase {
            Phase::Policy => {
                self.phase = Phase::Directory;
                // The public route is rate limited per address (behind a
                // proxy, everyone's): the policy in force stays.
                if status_of(reply) == Some(429) {
                    return Ok(());
                }
                let s: Signed = decode(c, "fetching the device policy", reply)?;
                let Some(signed) = s.policy else {
                    return Ok(());
                };
                let newer = sitrep_wire::policy::SignedPolicy::peek_unverified(&signed)
                    .is_some_and(|np| np.serial > c.policy().serial);
                if newer {
                    self.must_sync = true;
                    c.apply_policy(&signed).map_err(|source| {
                        Failure::new(
                            "fetching the device policy",
                            FailureKind::Untrusted {
                                what: "device policy",
                                source,
                            },
                        )
                    })?;
                }
            }
            Phase::Directory => {
                self.phase = Phase::Resolve;
                let s: Signed = decode(c, "fetching the directory", reply)?;
                if let Some(signed) = s.policy {
                    let serial = c.directory().serial;
                    c.apply_directory(&signed).map_err(|source| {
                        Failure::new(
                            "fetching the directory",
                            FailureKind::Untrusted {
                                what: "directory",
                                source,
                            },
                        )
                    })?;
                    self.must_sync |= c.directory().serial != serial;
                }
            }
            Phase::Rejoin(_) => {
                let hex = what;
                match answer(c, "asking to be re-added", reply) {
                    Ok(_) => c.rejoin_requested(&hex, now_ms),
                    // No longer a member (removed while out of step): the
                    // server's own answer, not a proxy's.
                    Err(Failure {
                        kind: FailureKind::Refused { status, code, .. },
                        ..
                    }) if matches!(
                        (status, code.as_str()),
                        (403, "not_a_member") | (404, "unknown_group")
                    ) =>
                    {
                        self.events.extend(c.rejoin_refused(&hex, now_ms))
                    }
                    Err(f) if f.wiped() || status_of(reply).is_none() => return Err(f),
                    // Asked too often, or a refusal not understood: ask
                    // again at a later sync.
                    Err(f) => self.events.push(Event::Refused {
                        reason: format!("asking to be re-added failed: {f}"),
                    }),
                }
            }
            Phase::Readd(_) => {
                let claim: api::ClaimResponse = decode(c, "re-adding members", reply)?;
                let shown = display_name(c, &what);
                let name = what;
                // Nothing left to do is fine: another member re-added them first.
                self.run(
                    Change::commit(move |c| c.prepare_readd(&name, &claim.key_packages)),
                    Settle::Report(format!("re-adding a member to {shown:?}")),
                );
            }
            Phase::OwnDevices {
                mine,
                conversations,
            } => {
                if mine.is_none() {
                    let list: Vec<api::DeviceInfo> =
                        decode(c, "bringing in your new devices", reply)?;
                    let ids: Vec<String> = list
                        .into_iter()
                        .filter(|d| d.revoked_at.is_none() && !d.this_device)
                        .map(|d| d.device_id)
                        .collect();
                    if !ids.is_empty() {
                        *conversations = c
                            .conversations()
                            .filter(|x| x.active)
                            .map(crate::records::group_hex_of)
                            .collect();
                    }
                    *mine = Some(ids);
                    return Ok(());
                }
                let claim: api::ClaimResponse = decode(c, "bringing in your new devices", reply)?;
                if !claim.key_packages.is_empty() {
                    let name = what;
                    let what = format!("bringing your new device into {name:?}");
                    self.run(
                        Change::commit(move |c| c.prepare_add(&name, &claim.key_packages)),
                        Settle::Report(what),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn display_name(c: &Client, conversation: &str) -> String {
    c.conversation(conversation)
        .map_or_else(|_| conversation.to_string(), |x| x.name.clone())
}

impl Task for Sync {
    fn poll(&mut self, c: &mut Client, now_ms: u64) -> Result<Action, Failure> {
        let mut a = self.next_action(c, now_ms)?;
        if let Action::Request(r) = &mut a
            && self.must_sync
        {
            r.durable = true;
        }
        Ok(a)
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        // The request just answered was written durably.
        self.must_sync = false;
        self.feed_inner(c, reply, now_ms)
    }
}

impl Sync {
    fn next_action(&mut self, c: &mut Client, now_ms: u64) -> Result<Action, Failure> {
        loop {
            if let Some((t, settle)) = &mut self.sub {
                match t.poll(c, now_ms) {
                    Ok(Action::Done(ev)) => {
                        self.events.extend(ev);
                        self.sub = None;
                    }
                    Ok(a) => return Ok(a),
                    Err(f) => {
                        settle.take(f, &mut self.events)?;
                        self.sub = None;
                    }
                }
                continue;
            }
            if let Some((req, _)) = &self.pending {
                return Ok(Action::Request(req.clone()));
            }
            if let Some(a) = self.step(c, now_ms)? {
                return Ok(a);
            }
        }
    }

    fn feed_inner(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        if let Some((t, settle)) = &mut self.sub {
            if let Err(f) = t.feed(c, reply, now_ms) {
                settle.take(f, &mut self.events)?;
                self.sub = None;
            }
            return Ok(());
        }
        self.answered(c, reply, now_ms)
    }
}
