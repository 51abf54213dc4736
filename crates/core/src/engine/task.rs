//! Tasks: the engine's unit of work over the network. A task is polled for
//! its next [`Action`] and fed the [`Reply`] to each request it asked for;
//! time comes in as `now_ms` (the driver's clock, so tests control it).
//!
//! A driver's loop, whatever its I/O (see `sitrep_cli::drive`):
//!
//! ```text
//! loop {
//!     match task.poll(&mut client, now())? {
//!         Action::Request(r) => { write(client.changes(vault), r.durable); reply = perform(r); task.feed(&mut client, reply, now())? }
//!         Action::Wait { until_ms } => sleep_until(until_ms),
//!         Action::Done(events) => { write(client.changes(vault), lazy); return events }
//!     }
//! }
//! ```
//!
//! Writing the changes before every request is what makes a task crash
//! safe: whatever the server may act on (a post, a commit, an ack) is sealed
//! on disk before it leaves (durably, when [`Request::durable`]: surviving a
//! power cut), so after a restart its fate is asked again instead of
//! guessed. What follows the last answer may be written lazily: lost only
//! in a power cut, it is asked again.

use sitrep_wire::api;

use super::{Reply, Request};
use crate::{Client, Event};

/// What a task asks its driver to do next.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Write [`Client::changes`], make this request, and feed its reply back
    /// with [`Task::feed`].
    Request(Request),
    /// Nothing to do before this time (a backoff): poll again then.
    Wait {
        /// On the driver's clock.
        until_ms: u64,
    },
    /// Finished, with what happened for the user; write the changes.
    Done(Vec<Event>),
}

/// A unit of engine work (a sync, a commit, an outbox flush).
pub trait Task {
    /// The next action. Polling again before feeding a reply asks for the
    /// same request again.
    fn poll(&mut self, c: &mut Client, now_ms: u64) -> Result<Action, Failure>;
    /// The reply to the request the last poll returned.
    fn feed(&mut self, c: &mut Client, reply: Reply<'_>, now_ms: u64) -> Result<(), Failure>;
}

/// Why a task stopped: which operation, and whether it can pass.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Failure {
    /// What the task was doing, in words ("fetching messages").
    pub op: &'static str,
    /// What went wrong.
    pub kind: FailureKind,
}

/// What went wrong in a task.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailureKind {
    /// No answer, a server error or "slow down": nothing was lost; try again
    /// later (whatever the server may have taken is sealed and asked again).
    #[error("cannot reach the server at {server} ({}){}", status_text(*.status), detail_text(.detail))]
    Unreachable {
        /// The server's address.
        server: String,
        /// Its HTTP status, if it answered.
        status: Option<u16>,
        /// What is kept meanwhile, for the user.
        detail: String,
    },
    /// A change was sent and its answer never seen: it is kept, sealed, and
    /// its fate is settled by the next sync.
    #[error(
        "the server did not confirm the change; it is kept and will be confirmed at the next sync"
    )]
    Unconfirmed,
    /// Other members' changes kept winning: try again later.
    #[error("gave up after repeated epoch conflicts")]
    Contended,
    /// The server refused; asking again will not help.
    #[error("server refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The API's stable error code.
        code: String,
        /// Its sentence.
        message: String,
    },
    /// The server offered something the organisation did not sign.
    #[error("the server offered a {what} the organisation did not sign: {source}")]
    Untrusted {
        /// "device policy", "directory".
        what: &'static str,
        /// Why it was refused.
        source: crate::Error,
    },
    /// The organisation revoked this device: destroy its keys and history.
    #[error("this device was wiped by the organisation")]
    Wiped,
    /// A local step failed (MLS, the store, an invalid request).
    #[error(transparent)]
    Local(#[from] crate::Error),
}

fn status_text(s: Option<u16>) -> String {
    s.map_or_else(|| "no answer".into(), |s| format!("HTTP {s}"))
}

fn detail_text(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!("; {d}")
    }
}

impl Failure {
    /// Whether trying the same thing later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::Unreachable { .. } | FailureKind::Unconfirmed | FailureKind::Contended
        )
    }

    /// The device was wiped.
    pub fn wiped(&self) -> bool {
        matches!(self.kind, FailureKind::Wiped)
    }

    pub(crate) fn new(op: &'static str, kind: FailureKind) -> Self {
        Self { op, kind }
    }

    pub(crate) fn local(op: &'static str, e: crate::Error) -> Self {
        Self::new(op, FailureKind::Local(e))
    }

    pub(crate) fn unreachable(c: &Client, op: &'static str, status: Option<u16>) -> Self {
        Self::new(
            op,
            FailureKind::Unreachable {
                server: c.server().to_string(),
                status,
                detail: String::new(),
            },
        )
    }
}

/// A status with which the request's fate is unknown (it may have been
/// applied): ask again later, never give up.
pub(crate) fn fate_unknown(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// The body of a 2xx answer; anything else as a [`Failure`] of `op`.
pub(crate) fn answer<'a>(
    c: &Client,
    op: &'static str,
    reply: Reply<'a>,
) -> Result<&'a [u8], Failure> {
    let (status, body) = match reply {
        Reply::Lost => return Err(Failure::unreachable(c, op, None)),
        Reply::Answered { status, body } => (status, body),
    };
    if (200..300).contains(&status) {
        return Ok(body);
    }
    if fate_unknown(status) {
        return Err(Failure::unreachable(c, op, Some(status)));
    }
    // Only the API's own refusal (its JSON error) is a refusal; a proxy's
    // page with a 4xx says nothing about what the server did.
    let Ok(err) = serde_json::from_slice::<api::ApiError>(body) else {
        return Err(Failure::unreachable(c, op, Some(status)));
    };
    if status == 401 && err.error == "device_wiped" {
        return Err(Failure::new(op, FailureKind::Wiped));
    }
    Err(Failure::new(
        op,
        FailureKind::Refused {
            status,
            code: err.error,
            message: err.message,
        },
    ))
}

/// A 2xx answer's JSON body, decoded.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    c: &Client,
    op: &'static str,
    reply: Reply<'_>,
) -> Result<T, Failure> {
    let body = answer(c, op, reply)?;
    // A 2xx that is not the API's answer (a captive portal, a proxy's page)
    // is no answer: try again later.
    serde_json::from_slice(body).map_err(|_| {
        let mut f = Failure::unreachable(
            c,
            op,
            match reply {
                Reply::Answered { status, .. } => Some(status),
                Reply::Lost => None,
            },
        );
        if let FailureKind::Unreachable { detail, .. } = &mut f.kind {
            *detail = "its answer could not be read".into();
        }
        f
    })
}

/// A request with a JSON body, written durably first.
pub(crate) fn post(
    id: impl Into<String>,
    path: impl Into<String>,
    body: &impl serde::Serialize,
) -> Request {
    Request {
        id: id.into(),
        method: super::Method::Post,
        path: path.into(),
        body: serde_json::to_vec(body).expect("API requests serialise"),
        durable: true,
    }
}

/// A POST that depends on nothing new the device holds (a claim, a rejoin
/// request): a lazy write first is enough.
pub(crate) fn post_lazy(
    id: impl Into<String>,
    path: impl Into<String>,
    body: &impl serde::Serialize,
) -> Request {
    Request {
        durable: false,
        ..post(id, path, body)
    }
}

/// A GET request.
pub(crate) fn get(path: impl Into<String>) -> Request {
    let path = path.into();
    Request {
        id: path.clone(),
        method: super::Method::Get,
        path,
        body: Vec::new(),
        durable: false,
    }
}
