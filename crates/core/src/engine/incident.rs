//! Major-incident steps over the network, as tasks every front end runs the
//! same way: [`AddUsers`] (whoever of a list can be added, without one
//! broken KeyPackage blocking the rest) and [`Raise`] (raising a level,
//! which opens the incident's conversations and calls the call-out list in).
//! The rules themselves are in [`crate::incident`].

use sitrep_wire::incident::{IncidentMsg, Level, Methane, Structured};

use super::Reply;
use super::create::{Claim, Create, Setup};
use super::sync::{Change, Outbox, Sync};
use super::task::{Action, Failure, Task};
use crate::{Client, Event};

const RAISE: &str = "raising the incident level";

/// Add whichever of `users` have an enrolled device with a usable
/// KeyPackage to a conversation; then [`AddUsers::missing`] (no device)
/// and [`AddUsers::skipped`] (devices left out, with why).
pub struct AddUsers {
    conv: String,
    claim: Option<Claim>,
    change: Option<Change<'static>>,
    missing: Vec<String>,
    skipped: Vec<String>,
    events: Vec<Event>,
}

impl AddUsers {
    /// Add `users` (those already members are left alone) to `conv`.
    pub fn new(c: &Client, conv: &str, users: &[String]) -> Self {
        let present: Vec<String> = c
            .members(conv)
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.user_id)
            .collect();
        let wanted: Vec<String> = users
            .iter()
            .filter(|u| !present.contains(u))
            .cloned()
            .collect();
        Self {
            conv: conv.to_string(),
            claim: Some(Claim::users(&wanted)),
            change: None,
            missing: Vec::new(),
            skipped: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Users with no enrolled device.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// Devices left out because their KeyPackage was unusable, with why.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }
}

impl Task for AddUsers {
    fn poll(&mut self, c: &mut Client, now_ms: u64) -> Result<Action, Failure> {
        if let Some(claim) = &mut self.claim {
            match claim.poll(c, now_ms)? {
                Action::Done(_) => {}
                a => return Ok(a),
            }
            self.missing = claim.missing().to_vec();
            let kps = claim.claimed().to_vec();
            self.claim = None;
            if !kps.is_empty() {
                let conv = self.conv.clone();
                self.change = Some(Change::commit(move |c| c.prepare_add(&conv, &kps)));
            }
        }
        if let Some(change) = &mut self.change {
            match change.poll(c, now_ms) {
                Ok(Action::Done(events)) => {
                    self.change = None;
                    for e in events {
                        match e {
                            Event::Refused { reason } => self.skipped.push(reason),
                            e => self.events.push(e),
                        }
                    }
                }
                // Every claimed KeyPackage was unusable: report, do not block.
                Err(Failure {
                    kind: super::FailureKind::Local(crate::Error::Unverified(why)),
                    ..
                }) => {
                    self.change = None;
                    self.skipped.push(why);
                }
                other => return other,
            }
        }
        Ok(Action::Done(std::mem::take(&mut self.events)))
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        if let Some(claim) = &mut self.claim {
            return claim.feed(c, reply, now_ms);
        }
        if let Some(change) = &mut self.change {
            return change.feed(c, reply, now_ms);
        }
        Ok(())
    }
}

/// What raising a level did.
#[derive(Debug, Default, Clone)]
pub struct Raised {
    /// Call-out list members (and commanders) asked for.
    pub called: usize,
    /// On the list but with no enrolled device.
    pub unreachable: Vec<String>,
    /// Devices left out because their KeyPackage was unusable, with why.
    pub skipped: Vec<String>,
}

/// The conversation an incident coordinates in.
pub fn coordination(id: &str) -> String {
    id.to_string()
}

/// The incident's command channel.
pub fn command(id: &str) -> String {
    format!("{id}-command")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Sync,
    CreateCoord,
    AddCoord,
    CreateCommand,
    AddCommand,
    Post,
    Done,
}

/// Raise STANDBY, DECLARED, CANCELLED or STAND DOWN, after a sync (the
/// directory decides who may): STANDBY and DECLARED open the coordination
/// conversation (named after the incident) with the level's call-out list
/// and the commanders; DECLARED also opens the command channel
/// (`<id>-command`), where only commanders post; then the item goes into
/// both. Results in [`Raise::raised`].
pub struct Raise {
    item: Structured,
    id: String,
    level: Level,
    step: Step,
    sub: Option<Box<dyn Task + Send>>,
    add: Option<AddUsers>,
    raised: Raised,
    events: Vec<Event>,
}

impl Raise {
    /// Raise `level` for incident `id`.
    pub fn new(id: &str, level: Level, methane: Option<Methane>, note: &str) -> Self {
        Self {
            item: Structured::Incident(IncidentMsg {
                incident: id.to_string(),
                level,
                methane,
                note: note.to_string(),
            }),
            id: id.to_string(),
            level,
            step: Step::Sync,
            sub: Some(Box::new(Sync::new())),
            add: None,
            raised: Raised::default(),
            events: Vec::new(),
        }
    }

    /// What it did (once done).
    pub fn raised(&self) -> &Raised {
        &self.raised
    }

    fn has(c: &Client, name: &str) -> bool {
        c.conversations().any(|x| x.active && x.name == name)
    }

    /// Set up the next step after `self.step` finished.
    fn advance(&mut self, c: &mut Client, now_ms: u64) -> Result<(), Failure> {
        let me = c.user_id().to_string();
        let dir = c.directory();
        let coord = coordination(&self.id);
        let opens = matches!(self.level, Level::Standby | Level::Declared);
        loop {
            self.step = match self.step {
                Step::Sync => {
                    self.item
                        .validate()
                        .map_err(|e| Failure::local(RAISE, crate::Error::Invalid(e.to_string())))?;
                    if !dir.can_declare(&me) {
                        return Err(Failure::local(
                            RAISE,
                            crate::Error::Invalid(format!(
                                "{me} holds no role the organisation authorises to raise incident levels"
                            )),
                        ));
                    }
                    Step::CreateCoord
                }
                Step::CreateCoord => Step::AddCoord,
                Step::AddCoord => {
                    if let Some(a) = self.add.take() {
                        self.raised.unreachable.extend(a.missing);
                        self.raised.skipped.extend(a.skipped);
                    }
                    Step::CreateCommand
                }
                Step::CreateCommand => Step::AddCommand,
                Step::AddCommand => {
                    if let Some(a) = self.add.take() {
                        self.raised.skipped.extend(a.skipped);
                    }
                    Step::Post
                }
                Step::Post | Step::Done => Step::Done,
            };
            match self.step {
                Step::CreateCoord if opens && !Self::has(c, &coord) => {
                    let setup = Setup {
                        pid_policy: "warn".into(),
                        ..Setup::default()
                    };
                    self.sub = Some(Box::new(Create::new(c, &coord, &[], setup)));
                    return Ok(());
                }
                Step::AddCoord if opens => {
                    let mut users: Vec<String> = dir
                        .callout(self.level)
                        .into_iter()
                        .map(|(u, _)| u)
                        .collect();
                    users.extend(dir.commanders());
                    users.retain(|u| *u != me);
                    users.sort();
                    users.dedup();
                    self.raised.called = users.len();
                    self.add = Some(AddUsers::new(c, &coord, &users));
                    return Ok(());
                }
                Step::CreateCommand
                    if self.level == Level::Declared && !Self::has(c, &command(&self.id)) =>
                {
                    let mut posters: Vec<String> = dir.commanders().into_iter().collect();
                    if !posters.contains(&me) {
                        posters.push(me.clone());
                    }
                    let setup = Setup {
                        pid_policy: "warn".into(),
                        posters,
                        ..Setup::default()
                    };
                    self.sub = Some(Box::new(Create::new(c, &command(&self.id), &[], setup)));
                    return Ok(());
                }
                Step::AddCommand if self.level == Level::Declared => {
                    let others: Vec<String> = c
                        .conversation(&command(&self.id))
                        .map(|x| x.posters.clone())
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|u| *u != me)
                        .collect();
                    self.add = Some(AddUsers::new(c, &command(&self.id), &others));
                    return Ok(());
                }
                Step::Post => {
                    for conv in [coord.clone(), command(&self.id)] {
                        if Self::has(c, &conv) {
                            c.send_structured(&conv, &self.item, now_ms)
                                .map_err(|e| Failure::local(RAISE, e))?;
                        }
                    }
                    self.sub = Some(Box::new(Outbox::new()));
                    return Ok(());
                }
                Step::Done => return Ok(()),
                _ => {}
            }
        }
    }
}

impl Task for Raise {
    fn poll(&mut self, c: &mut Client, now_ms: u64) -> Result<Action, Failure> {
        loop {
            if self.step == Step::Done {
                return Ok(Action::Done(std::mem::take(&mut self.events)));
            }
            let action = if let Some(a) = &mut self.add {
                a.poll(c, now_ms)?
            } else if let Some(t) = &mut self.sub {
                t.poll(c, now_ms)?
            } else {
                Action::Done(Vec::new())
            };
            match action {
                Action::Done(events) => {
                    self.events.extend(events);
                    self.sub = None;
                    self.advance(c, now_ms)?;
                }
                a => return Ok(a),
            }
        }
    }

    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure> {
        if let Some(a) = &mut self.add {
            return a.feed(c, reply, now_ms);
        }
        match &mut self.sub {
            Some(t) => t.feed(c, reply, now_ms),
            None => Ok(()),
        }
    }
}
