//! Notifications: what a front end may show outside the app (lock screen, OS
//! notification centre). By default only "new message" and a count; message
//! content only where the organisation's policy allows previews and the user
//! has them on. A front end gets nothing else to show, so it cannot put
//! patient data on a lock screen by accident.

use sitrep_wire::policy::Previews;

use crate::{Client, Event};

/// A notification for the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// New messages in this batch.
    pub new_messages: usize,
    /// Conversations they arrived in.
    pub conversations: usize,
    /// "Sender: text" of the latest message, only where previews are allowed.
    pub preview: Option<String>,
}

/// Longest preview, in characters.
pub const PREVIEW_CHARS: usize = 80;

impl Client {
    /// Summarise a batch of events. `user_previews` is the user's own setting
    /// (`None`: not chosen). Policy `off`: previews only if the user turned them
    /// on; `on`: unless the user turned them off; `forbidden`: never.
    pub fn notification(
        &self,
        events: &[Event],
        user_previews: Option<bool>,
    ) -> Option<Notification> {
        let messages: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Message {
                    conversation,
                    entry,
                } => Some((conversation, entry)),
                _ => None,
            })
            .collect();
        let (_, last) = messages.last()?;
        let mut convs: Vec<&String> = messages.iter().map(|(c, _)| *c).collect();
        convs.sort();
        convs.dedup();
        let allowed = match self.policy().previews {
            Previews::Forbidden => false,
            Previews::Off => user_previews == Some(true),
            Previews::On => user_previews != Some(false),
        };
        let preview = allowed.then(|| {
            let text: String = last.body.chars().take(PREVIEW_CHARS).collect();
            format!("{}: {text}", last.sender_name)
        });
        Some(Notification {
            new_messages: messages.len(),
            conversations: convs.len(),
            preview,
        })
    }
}
