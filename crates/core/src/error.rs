//! Errors of the client core. Messages never contain message text, names or keys.

/// Everything the client core can refuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passcode does not open this store (or the store was tampered with).
    #[error("wrong passcode, or the local store is damaged")]
    WrongPasscode,
    /// The store file is not a Sitrep store.
    #[error("not a Sitrep local store: {0}")]
    BadStore(&'static str),
    /// Reading or writing the local store failed.
    #[error("local store: {0}")]
    Io(String),
    /// No conversation by that name.
    #[error("no conversation named {0:?}")]
    UnknownConversation(String),
    /// More than one of this user's conversations has that name.
    #[error(
        "you have more than one conversation named {name:?}: give its short id instead ({})",
        .ids.join(" or ")
    )]
    AmbiguousConversation {
        /// The name asked for.
        name: String,
        /// The short ids of those conversations.
        ids: Vec<String>,
    },
    /// A conversation by that name exists already.
    #[error("a conversation named {0:?} exists already")]
    ConversationExists(String),
    /// A member's credential failed verification.
    #[error("refused: {0}")]
    Unverified(String),
    /// The server's answer does not fit what we asked.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The conversation's PID policy is `warn` and the message holds
    /// patient-identifiable data: show the findings, send only on confirmation.
    #[error("the message may contain patient-identifiable data ({})", kinds(.0))]
    PidNeedsConfirmation(Vec<sitrep_pid::Finding>),
    /// The conversation's PID policy is `block` and the message holds PID.
    #[error("blocked: this conversation does not allow patient-identifiable data ({})", kinds(.0))]
    PidBlocked(Vec<sitrep_pid::Finding>),
    /// A message could not be decrypted (e.g. sent after this device was removed).
    #[error("{0}")]
    Undecryptable(String),
    /// An MLS operation failed.
    #[error("MLS: {0}")]
    Mls(String),
    /// Records commands are for the organisation's records account only.
    #[error("this is not the organisation's records account: records commands are refused")]
    NotRecords,
    /// A request was not valid.
    #[error("{0}")]
    Invalid(String),
}

fn kinds(f: &[sitrep_pid::Finding]) -> String {
    let mut k: Vec<&str> = f.iter().map(|f| f.kind.as_str()).collect();
    k.dedup();
    k.join(", ")
}

impl Error {
    pub(crate) fn mls(e: impl std::fmt::Debug) -> Self {
        Self::Mls(format!("{e:?}"))
    }
}
