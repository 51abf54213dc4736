//! Creating a conversation, all or nothing: every member's devices are
//! claimed first (an unknown member refuses the whole command before
//! anything exists), then the group is made locally, registered with the
//! server (posted again after a lost answer: the server answers its
//! creator's repeat as the first time), and the members are added in one
//! [`Change`]. A registration the server refused, or never confirmed,
//! abandons the local group, so no half-made conversation is left.

use std::collections::VecDeque;

use sitrep_wire::api;

use super::sync::Change;
use super::task::{Action, Failure, FailureKind, Task, decode, post_lazy};
use super::{Reply, Request};
use crate::Client;

/// Users asked for in one claim (the server's bound).
const CLAIM_CHUNK: usize = 500;
/// Posts of a registration whose answer was lost.
const REGISTER_TRIES: u32 = 3;
/// Wait between them.
const REGISTER_BACKOFF_MS: u64 = 500;

/// Claim one KeyPackage for each device of some users, in requests within
/// the server's bound; then [`Claim::claimed`] and [`Claim::missing`].
#[derive(Debug, Default)]
pub struct Claim {
    chunks: VecDeque<Vec<String>>,
    claimed: Vec<api::ClaimedKeyPackage>,
    missing: Vec<String>,
}

impl Claim {
    /// For every device of `users`.
    pub fn users(users: &[String]) -> Self {
        Self {
            chunks: users.chunks(CLAIM_CHUNK).map(<[String]>::to_vec).collect(),
            ..Self::default()
        }
    }

    /// The KeyPackages claimed.
    pub fn claimed(&self) -> &[api::ClaimedKeyPackage] {
        &self.claimed
    }

    /// Users with no enrolled device (or no KeyPackage at all).
    pub fn missing(&self) -> &[String] {
        &self.missing
    }
}

const CLAIM: &str = "claiming members' keys";

impl Task for Claim {
    fn poll(&mut self, _c: &mut Client, _now_ms: u64) -> Result<Action, Failure> {
        Ok(match self.chunks.front() {
            Some(users) => Action::Request(post_lazy(
                "claim",
                "/v1/keypackages/claim",
                &api::ClaimRequest {
                    user_ids: users.clone(),
                    device_ids: Vec::new(),
                },
            )),
            None => Action::Done(Vec::new()),
        })
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, _now_ms: u64) -> Result<(), Failure> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let r: api::ClaimResponse = decode(c, CLAIM, reply)?;
        self.chunks.pop_front();
        self.claimed.extend(r.key_packages);
        self.missing.extend(r.missing);
        Ok(())
    }
}

/// How a new conversation is set up.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// PID guard policy: off, warn, block, pseudonymise.
    pub pid_policy: String,
    /// Retention in seconds; 0 is the organisation's default.
    pub retention_secs: u64,
    /// Recorded by the organisation's records account (added visibly).
    pub recorded: bool,
    /// Only these users post (a command channel); empty: everyone.
    pub posters: Vec<String>,
}

/// Create conversation `name` with `members` (all their devices), all or
/// nothing. Done's events are the add's.
pub struct Create {
    name: String,
    members: Vec<String>,
    setup: Setup,
    state: CreateState,
}

enum CreateState {
    Claim(Claim),
    Register {
        req: Request,
        hex: String,
        tries: u32,
        until_ms: u64,
        claimed: Vec<api::ClaimedKeyPackage>,
    },
    Add(Change<'static>),
    Done,
}

const CREATE: &str = "creating a conversation";

impl Create {
    /// A new conversation; `members` other than this user (duplicates
    /// ignored) are claimed, then added.
    pub fn new(c: &Client, name: &str, members: &[String], setup: Setup) -> Self {
        let mut others: Vec<String> = Vec::new();
        for m in members {
            if m != c.user_id() && !others.contains(m) {
                others.push(m.clone());
            }
        }
        if setup.recorded
            && let Some(r) = c.records_user()
            && r != c.user_id()
            && !others.contains(&r)
        {
            others.push(r);
        }
        Self {
            name: name.to_string(),
            state: CreateState::Claim(Claim::users(&others)),
            members: others,
            setup,
        }
    }

    fn abandon(c: &mut Client, hex: &str, f: Failure) -> Failure {
        match c.abandon_conversation(hex) {
            Ok(()) => f,
            Err(e) => Failure::local(CREATE, e),
        }
    }
}

impl Task for Create {
    fn poll(&mut self, c: &mut Client, now_ms: u64) -> Result<Action, Failure> {
        loop {
            match &mut self.state {
                CreateState::Claim(t) => {
                    match t.poll(c, now_ms)? {
                        Action::Done(_) => {}
                        a => return Ok(a),
                    }
                    if !t.missing().is_empty() {
                        return Err(Failure::local(
                            CREATE,
                            crate::Error::Invalid(format!(
                                "no enrolled device for: {}; nothing was created",
                                t.missing().join(", ")
                            )),
                        ));
                    }
                    let claimed = std::mem::take(&mut t.claimed);
                    let (hex, req) = c
                        .create_conversation_full(
                            &self.name,
                            &self.setup.pid_policy,
                            self.setup.retention_secs,
                            self.setup.recorded,
                            &self.setup.posters,
                            now_ms,
                        )
                        .map_err(|e| Failure::local(CREATE, e))?;
                    let mut req = post_lazy(hex.clone(), "/v1/groups", &req);
                    // The group's keys must outlive a power cut before the
                    // server holds its first state.
                    req.durable = true;
                    self.state = CreateState::Register {
                        req,
                        hex,
                        tries: 0,
                        until_ms: 0,
                        claimed,
                    };
                }
                CreateState::Register { req, until_ms, .. } => {
                    if now_ms < *until_ms {
                        return Ok(Action::Wait {
                            until_ms: *until_ms,
                        });
                    }
                    return Ok(Action::Request(req.clone()));
                }
                CreateState::Add(t) => return t.poll(c, now_ms),
                CreateState::Done => return Ok(Action::Done(Vec::new())),
            }
        }
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        match &mut self.state {
            CreateState::Claim(t) => t.feed(c, reply, now_ms),
            CreateState::Add(t) => t.feed(c, reply, now_ms),
            CreateState::Done => Ok(()),
            CreateState::Register {
                hex,
                tries,
                until_ms,
                claimed,
                ..
            } => match decode::<serde_json::Value>(c, CREATE, reply) {
                Ok(_) => {
                    let hex = hex.clone();
                    if self.members.is_empty() {
                        self.state = CreateState::Done;
                        return Ok(());
                    }
                    let claimed = std::mem::take(claimed);
                    self.state =
                        CreateState::Add(Change::commit(move |c| c.prepare_add(&hex, &claimed)));
                    Ok(())
                }
                Err(f) if f.retryable() && *tries + 1 < REGISTER_TRIES => {
                    *tries += 1;
                    *until_ms = now_ms + REGISTER_BACKOFF_MS;
                    Ok(())
                }
                Err(f) => {
                    let hex = hex.clone();
                    self.state = CreateState::Done;
                    let f = if f.retryable() {
                        Failure::new(
                            CREATE,
                            FailureKind::Unreachable {
                                server: c.server().to_string(),
                                status: None,
                                detail: "nothing was created".into(),
                            },
                        )
                    } else {
                        f
                    };
                    Err(Self::abandon(c, &hex, f))
                }
            },
        }
    }
}
