//! The sans-I/O engine. The engine says what request it needs made
//! ([`Request`]: method, path, body, with an id) and takes back what
//! happened ([`Reply`]: an answer, or none); time comes in from the
//! driver's clock. A driver performs the request, feeds the reply back, and
//! writes [`Client::changes`] before the next request. No I/O here.
//!
//! - [`task`]: the [`Task`] protocol (poll for an [`Action`], feed a
//!   [`Reply`]) and typed [`Failure`]s (per operation, retryable or not);
//! - [`sync`]: the tasks a device runs ([`Sync`], and [`Pull`],
//!   [`Resolve`], [`Change`], [`Outbox`], [`TopUp`] that it and the front
//!   ends' commands are made of);
//! - [`live`]: the timers of a live front end ([`Live`]: when to sync,
//!   reconnect, lock);
//! - here: what a reply to an outbox post or to a pending change means.
//!
//! What a reply to an outbox post means is decided here, once, for every
//! front end:
//! - 2xx: stored (a repeat of an earlier post with the same client id is
//!   answered with the first outcome): the message moves to history with
//!   its place in the log.
//! - no answer, 5xx, 429: its fate is unknown: it stays, and is posted
//!   again under the same client id ([`Step::Retry`]); never dropped.
//! - a refusal that re-encrypting can mend (the group moved on past the
//!   epoch it was encrypted at): the text goes back to the queue, once, to
//!   be encrypted again at the current epoch under the same id
//!   ([`Step::Requeued`]).
//! - any other refusal: dropped, with a line in the conversation saying it
//!   was not sent and why ([`Step::Refused`]): never a silent drop.

use sitrep_wire::api;

use crate::Client;

pub mod create;
pub mod incident;
pub mod live;
pub mod sync;
pub mod task;

use crate::state::Queued;
pub use create::{Claim, Create, Setup};
pub use live::{Due, Live};
pub use sync::{Change, Outbox, Pull, Resolve, Sync, TopUp};
pub use task::{Action, Failure, FailureKind, Task};

/// An HTTP method the engine asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// GET.
    Get,
    /// POST with a JSON body.
    Post,
}

/// A request the engine needs made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the reply is fed back under (for the outbox: the client id).
    pub id: String,
    /// Method.
    pub method: Method,
    /// Path on the server, e.g. `/v1/groups/{g}/messages`.
    pub path: String,
    /// JSON body.
    pub body: Vec<u8>,
    /// Write [`Client::changes`] durably before performing it: it carries
    /// something the device made (a ciphertext, a commit, keys) or acts on
    /// what it processed (an ack). `false`: whatever changed since the last
    /// durable write follows answers the server would give again, and a
    /// lazy write is enough.
    pub durable: bool,
}

/// What became of a [`Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The server answered.
    Answered {
        /// HTTP status.
        status: u16,
        /// Body (JSON).
        body: &'a [u8],
    },
    /// No answer (connection refused or cut, timeout): the request may or
    /// may not have been applied.
    Lost,
}

/// What the engine did with a reply to an outbox post.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Stored by the server at this place in its log.
    Sent {
        /// Its seq.
        seq: u64,
    },
    /// Fate unknown: post the same request again later (after a backoff).
    Retry,
    /// Refused for its epoch: back in the queue, to be encrypted again after
    /// the next catch-up.
    Requeued,
    /// Refused for good: dropped, and said so in the conversation.
    Refused {
        /// Why, for the user.
        reason: String,
    },
    /// The reply was for nothing in the outbox (already settled): ignored.
    Unknown,
}

impl Client {
    /// The next message to post, the oldest first; `None` when the outbox
    /// is empty. The caller writes [`Client::changes`] before sending it.
    pub fn outbox_request(&self) -> Option<Request> {
        let p = self.state.outbox.first()?;
        let body = serde_json::to_vec(&api::SendRequest {
            client_id: p.client_id.clone(),
            payload: p.payload.to_vec(),
            // A priority alert wakes offline browsers as one.
            urgent: p.entry.kind == "alert",
        })
        .expect("a SendRequest serialises");
        Some(Request {
            id: p.client_id.clone(),
            method: Method::Post,
            path: format!("/v1/groups/{}/messages", p.group_hex),
            body,
            durable: true,
        })
    }

    /// Feed back what became of an outbox post.
    pub fn outbox_reply(&mut self, id: &str, reply: Reply<'_>, now_ms: u64) -> Step {
        let Some(pos) = self.state.outbox.iter().position(|p| p.client_id == id) else {
            return Step::Unknown;
        };
        let (status, body) = match reply {
            Reply::Lost => return Step::Retry,
            Reply::Answered { status, body } => (status, body),
        };
        if (200..300).contains(&status) {
            let Ok(r) = serde_json::from_slice::<api::SendResponse>(body) else {
                // Stored (2xx) but the answer is garbled: ask again, the
                // server answers a repeated id with its first outcome.
                return Step::Retry;
            };
            self.sent_at_seq(id, r.seq);
            return Step::Sent { seq: r.seq };
        }
        if status >= 500 || status == 429 || status == 408 {
            return Step::Retry;
        }
        // Only the API's own refusal drops a message; a 4xx page from a
        // proxy says nothing about what the server did with it.
        let Ok(err) = serde_json::from_slice::<api::ApiError>(body) else {
            return Step::Retry;
        };
        if status == 401 {
            // Not this message's fault (a wiped or unknown device): kept;
            // the sync's other requests say what happened.
            return Step::Retry;
        }
        let err = Some(err);
        let code = err.as_ref().map_or("", |e| e.error.as_str());
        let p = self.state.outbox.remove(pos);
        // Text and structured items alike (an alert's acknowledgement
        // dropped here would let the alert escalate): not a transfer.
        let stale_epoch = matches!(code, "bad_message" | "epoch_conflict")
            && p.entry.kind != "transferred"
            && !p.requeued;
        let active = self
            .state
            .conversations
            .get(&p.group_hex)
            .is_some_and(|c| c.active);
        if stale_epoch && active {
            let q = Queued {
                group_hex: p.group_hex,
                id: p.client_id,
                body: p.entry.body,
                written_at: p.entry.sent_at,
                requeued: true,
                kind: p.entry.kind,
            };
            // Before anything written after it.
            let at = self
                .state
                .queued
                .iter()
                .position(|o| o.written_at > q.written_at)
                .unwrap_or(self.state.queued.len());
            self.state.queued.insert(at, q);
            return Step::Requeued;
        }
        let why = match (status, code) {
            (403, _) => "you are no longer in this conversation".to_string(),
            (413, _) => "it is too large".to_string(),
            _ => err.map_or_else(
                || format!("the server refused it (HTTP {status})"),
                |e| e.message,
            ),
        };
        let short: String = crate::incident::summary(&p.entry.kind, &p.entry.body)
            .chars()
            .take(40)
            .collect();
        let reason = format!("your message \"{short}\" was not sent: {why}");
        let line_id = u64::from_be_bytes(self.random::<8>());
        self.system_line(&p.group_hex, line_id, reason.clone(), now_ms);
        Step::Refused { reason }
    }
}

/// What became of a commit or leave the device sent (posted again after a
/// lost answer or a restart, unchanged, under its client id).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum OpStep {
    /// The commit was taken: merged, the group is at its new epoch.
    Accepted(Vec<crate::Event>),
    /// The leave was taken: this device is out of the conversation.
    Left(Vec<crate::Event>),
    /// Fate still unknown: kept, sealed; ask again later. Until then the
    /// group's log must not be processed.
    Retry,
    /// Another commit took the epoch first: cleared; catch up and rebuild.
    Conflict,
    /// Refused for good: cleared, and why.
    Refused {
        /// For the user.
        reason: String,
    },
    /// Nothing pending for that group (already settled): ignored.
    Unknown,
}

impl Client {
    /// The changes sent whose answer was not seen, to post again unchanged
    /// (the server answers a repeated client id with its first outcome).
    /// Each request's id is its group (hex).
    pub fn op_requests(&self) -> Vec<Request> {
        self.state
            .pending_ops
            .iter()
            .map(|op| Request {
                id: op.group_hex.clone(),
                method: Method::Post,
                path: op.path(),
                body: op.body.to_vec(),
                durable: true,
            })
            .collect()
    }

    /// Feed back what became of a pending commit or leave.
    pub fn op_reply(
        &mut self,
        group_hex: &str,
        reply: Reply<'_>,
        now_ms: u64,
    ) -> Result<OpStep, crate::Error> {
        let Some(kind) = self
            .state
            .pending_ops
            .iter()
            .find(|o| o.group_hex == group_hex)
            .map(|o| o.kind)
        else {
            return Ok(OpStep::Unknown);
        };
        let (status, body) = match reply {
            Reply::Lost => return Ok(OpStep::Retry),
            Reply::Answered { status, body } => (status, body),
        };
        if status >= 500 || status == 429 || status == 408 {
            return Ok(OpStep::Retry);
        }
        let ok = (200..300).contains(&status);
        let err: Option<api::ApiError> = (!ok).then(|| serde_json::from_slice(body).ok()).flatten();
        if !ok && (err.is_none() || status == 401) {
            // Not the server's refusal of this change (a proxy's page, or
            // the device itself refused): its fate is still unknown.
            return Ok(OpStep::Retry);
        }
        let why = || {
            err.as_ref()
                .map_or_else(|| format!("HTTP {status}"), |e| e.message.clone())
        };
        Ok(match (kind, ok) {
            (crate::OpKind::Commit, true) => match self.commit_accepted(group_hex, now_ms) {
                Ok(ev) => OpStep::Accepted(ev),
                // The commit is gone from the group's state (it cannot be
                // merged): drop the record rather than block the group.
                Err(e) => {
                    self.commit_rejected(group_hex)?;
                    OpStep::Refused {
                        reason: format!("a change sent earlier could not be applied: {e}"),
                    }
                }
            },
            (crate::OpKind::Commit, false) => {
                self.commit_rejected(group_hex)?;
                if status == 409 && err.as_ref().is_some_and(|e| e.error == "epoch_conflict") {
                    OpStep::Conflict
                } else {
                    OpStep::Refused {
                        reason: format!("a change sent earlier was not accepted: {}", why()),
                    }
                }
            }
            (_, true) => OpStep::Left(self.left(group_hex, now_ms)),
            (_, false) => {
                self.leave_rejected(group_hex)?;
                OpStep::Refused {
                    reason: format!("leaving was not accepted: {}", why()),
                }
            }
        })
    }
}
