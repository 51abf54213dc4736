//! Major-incident mode over the network: the signed directory, raising
//! incident levels (which opens the incident's conversations and adds the
//! call-out list), call-in replies, priority alerts and acknowledgements,
//! escalation and read receipts at every sync, the decision log and the
//! casualty board. The rules themselves live in `sitrep_core::incident`.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use sitrep_core::Client;
use sitrep_wire::incident::{
    Alert, Availability, Casualty, DecisionKind, Level, Methane, Priority, Structured,
};

use crate::{Profile, flush_outbox, now_ms, sync};

/// Send one structured item and wait for the server to store it; returns its id.
pub async fn post(p: &mut Profile, conv: &str, item: &Structured) -> anyhow::Result<String> {
    sync(p).await?;
    let out = p.client.send_structured(conv, item, now_ms())?;
    p.save()?;
    flush_outbox(p).await?;
    Ok(out.request.client_id)
}

/// Add whichever of `users` have an enrolled device with a usable
/// KeyPackage; returns those without a device, and the devices left out with
/// why (one broken KeyPackage never blocks the others): the engine's
/// [`sitrep_core::engine::incident::AddUsers`].
pub async fn add_available(
    p: &mut Profile,
    conv: &str,
    users: &[String],
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut t = sitrep_core::engine::incident::AddUsers::new(&p.client, conv, users);
    crate::drive(p, &mut t).await?;
    Ok((t.missing().to_vec(), t.skipped().to_vec()))
}

/// The conversations an incident uses.
pub fn coordination(id: &str) -> String {
    sitrep_core::engine::incident::coordination(id)
}

/// The command channel of an incident.
pub fn command(id: &str) -> String {
    sitrep_core::engine::incident::command(id)
}

pub use sitrep_core::engine::incident::Raised;

fn has_conversation(c: &Client, name: &str) -> bool {
    c.conversations().any(|x| x.active && x.name == name)
}

/// Raise STANDBY, DECLARED, CANCELLED or STAND DOWN: the engine's
/// [`sitrep_core::engine::incident::Raise`] (STANDBY and DECLARED open the
/// incident's coordination group with the call-out list for that level;
/// DECLARED also opens the command channel, where only commanders post).
pub async fn raise(
    p: &mut Profile,
    id: &str,
    level: Level,
    methane: Option<Methane>,
    note: &str,
) -> anyhow::Result<Raised> {
    let mut t = sitrep_core::engine::incident::Raise::new(id, level, methane, note);
    crate::drive(p, &mut t).await?;
    Ok(t.raised().clone())
}

/// Reply to an incident's call-in.
pub async fn callin_reply(
    p: &mut Profile,
    id: &str,
    availability: Availability,
    role: Option<String>,
) -> anyhow::Result<()> {
    sync(p).await?;
    callin_reply_synced(p, id, availability, role).await
}

/// [`callin_reply`] on a device that has just synced.
pub async fn callin_reply_synced(
    p: &mut Profile,
    id: &str,
    availability: Availability,
    role: Option<String>,
) -> anyhow::Result<()> {
    p.client.callin_reply(id, availability, role, now_ms())?;
    p.save()?;
    flush_outbox(p).await.map(drop)
}

pub(crate) fn incident_conversation(c: &Client, id: &str) -> anyhow::Result<String> {
    let inc = c
        .incidents()
        .find(|i| i.id == id)
        .with_context(|| format!("no incident {id} on this device (sync first?)"))?;
    c.conversations()
        .find(|x| sitrep_core::records::group_hex_of(x) == inc.group)
        .map(sitrep_core::records::group_hex_of)
        .context("the incident's conversation is gone")
}

/// Send a priority alert. Without `conv`, it goes in a conversation named
/// `alerts-<target>` holding the recipients and everyone on its escalation
/// chain (created if needed). Returns the alert id.
pub async fn alert_send(
    p: &mut Profile,
    to: &str,
    priority: Priority,
    text: &str,
    ack_within_secs: u32,
    conv: Option<String>,
) -> anyhow::Result<String> {
    sync(p).await?;
    let dir = p.client.directory();
    let target = p.client.parse_target(to);
    let conv = match conv {
        Some(c) => c,
        None => {
            let name = format!("alerts-{}", to.replace(':', "-"));
            let mut users = p.client.expand_target(&target);
            // Everyone the chain can reach must be able to read it.
            for step in sitrep_core::incident::escalation_chain(&dir, &target) {
                users.extend(p.client.expand_target(&step));
            }
            let me = p.client.user_id().to_string();
            users.retain(|u| *u != me);
            users.sort();
            users.dedup();
            if !has_conversation(&p.client, &name) {
                crate::chat_create(p, &name, &[], "warn").await?;
            }
            add_available(p, &name, &users).await?;
            name
        }
    };
    let item = Structured::Alert(Alert::new(priority, target, text, ack_within_secs));
    let out = p.client.send_structured(&conv, &item, now_ms())?;
    p.save()?;
    flush_outbox(p).await?;
    Ok(out.request.client_id)
}

/// Acknowledge an alert by id.
pub async fn ack(p: &mut Profile, alert: &str) -> anyhow::Result<()> {
    sync(p).await?;
    p.client.ack_alert(alert, now_ms())?;
    p.save()?;
    flush_outbox(p).await.map(drop)
}

/// Log a DECISION or ACTION in a conversation (signed, hash-chained).
pub async fn decide(
    p: &mut Profile,
    conv: &str,
    kind: DecisionKind,
    text: &str,
) -> anyhow::Result<String> {
    sync(p).await?;
    let item = p.client.decision(conv, kind, text, now_ms())?;
    let out = p.client.send_structured(conv, &item, now_ms())?;
    p.save()?;
    flush_outbox(p).await?;
    Ok(out.request.client_id)
}

/// Write a conversation's decision log: `out` (JSON, verifiable) and
/// `out` with `.md` appended (readable).
pub async fn decisions_export(p: &mut Profile, conv: &str, out: &Path) -> anyhow::Result<usize> {
    sync(p).await?;
    let log = p.client.export_decisions(conv, now_ms())?;
    let json = serde_json::to_vec_pretty(&log)?;
    let mut md = format!(
        "# Decision log: {}\n\nExported {} by {} ({}). Organisation key {}.\n\n| # | Time (UTC) | By | Kind | Entry |\n|---|---|---|---|---|\n",
        log.conversation,
        sitrep_core::export::iso8601(log.exported_at),
        p.client.display_name(),
        p.client.user_id(),
        log.org_fingerprint
    );
    for (i, d) in log.entries.iter().enumerate() {
        let kind = match d.entry.kind {
            DecisionKind::Decision => "DECISION",
            DecisionKind::Action => "ACTION",
        };
        md.push_str(&format!(
            "| {} | {} | {} | {kind} | {} |\n",
            i + 1,
            sitrep_core::export::iso8601(d.entry.at),
            d.entry.author,
            d.entry.text.replace('|', "\\|").replace('\n', " ")
        ));
    }
    md.push_str(&format!(
        "\nHead hash: `{}`. Check with `sitrep decisions verify {}`.\n",
        log.head,
        out.display()
    ));
    let mut f = std::fs::File::create(out)?;
    f.write_all(&json)?;
    f.sync_all()?;
    let mut md_path = out.as_os_str().to_owned();
    md_path.push(".md");
    std::fs::write(md_path, md)?;
    Ok(log.entries.len())
}

/// Add or update a casualty-board entry.
pub async fn casualty(p: &mut Profile, conv: &str, c: Casualty) -> anyhow::Result<()> {
    post(p, conv, &Structured::Casualty(c)).await.map(|_| ())
}

/// Take on or hand back a role; the server re-signs the directory.
pub async fn role_change(p: &mut Profile, role: &str, take: bool) -> anyhow::Result<()> {
    let verb = if take { "take" } else { "handback" };
    let _: serde_json::Value = p
        .remote()?
        .post(&format!("/v1/roles/{role}/{verb}"), &())
        .await?;
    sync(p).await?;
    Ok(())
}
