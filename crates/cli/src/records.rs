//! Records and disclosure: the records account's search and export, transfer
//! of messages to the health record (FHIR R4), a person's own export, and
//! verification of an export bundle.
//!
//! Every search and export is written to the organisation's audit log first;
//! when the server cannot record it, nothing is searched or exported.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use sitrep_core::export::{ExportFile, VerifiedBundle};
use sitrep_core::{JournalEntry, RecordMatch, RecordsQuery};
use sitrep_wire::api;

use crate::{Profile, now_ms, sync};

/// Write an audit entry; the caller goes ahead only if this succeeded.
async fn audit(p: &Profile, req: api::AuditRequest) -> anyhow::Result<api::AuditResponse> {
    p.remote()?
        .post("/v1/audit", &req)
        .await
        .context("the organisation's audit log did not record this action, so it was not done")
}

fn query_audit(action: &str, hmac: &str) -> api::AuditRequest {
    api::AuditRequest {
        action: action.into(),
        query_hmac: Some(hmac.to_string()),
        ..Default::default()
    }
}

fn describe(q: &RecordsQuery) -> String {
    serde_json::json!({
        "identifier": q.identifier,
        "text": q.text,
        "from_ms": q.from_ms,
        "to_ms": q.to_ms,
        "participant": q.participant,
    })
    .to_string()
}

async fn records_first(p: &mut Profile) -> anyhow::Result<()> {
    // Take up the latest policy and messages first; the policy names the
    // records account.
    sync(p).await?;
    if !p.client.is_records_account() {
        return Err(sitrep_core::Error::NotRecords.into());
    }
    Ok(())
}

/// Search what the records account holds (audited).
pub async fn records_search(p: &mut Profile, q: &RecordsQuery) -> anyhow::Result<Vec<RecordMatch>> {
    records_first(p).await?;
    let query = describe(q);
    let hash = p.client.audit_hash(&query);
    let entry = audit(p, query_audit("records.search", &hash)).await?;
    let found = p.client.records_search(q)?;
    p.client.journal(JournalEntry {
        at: now_ms(),
        action: "records.search".into(),
        query,
        query_hash: hash,
        audit_seq: entry.seq,
    });
    p.save()?;
    Ok(found)
}

/// Write a records disclosure bundle for one identifier into `out` (audited).
pub async fn records_export(
    p: &mut Profile,
    identifier: &str,
    out: &Path,
) -> anyhow::Result<Vec<ExportFile>> {
    records_first(p).await?;
    let query = describe(&RecordsQuery {
        identifier: Some(identifier.to_string()),
        ..RecordsQuery::default()
    });
    let hash = p.client.audit_hash(&query);
    let entry = audit(p, query_audit("records.export", &hash)).await?;
    let files = p.client.records_export(identifier, entry.seq, now_ms())?;
    write_bundle(out, &files)?;
    p.client.journal(JournalEntry {
        at: now_ms(),
        action: "records.export".into(),
        query,
        query_hash: hash,
        audit_seq: entry.seq,
    });
    p.save()?;
    Ok(files)
}

/// Write a person's own conversations into `out` (audited).
pub async fn personal_export(p: &mut Profile, out: &Path) -> anyhow::Result<Vec<ExportFile>> {
    sync(p).await?;
    let entry = audit(
        p,
        api::AuditRequest {
            action: "export.personal".into(),
            ..Default::default()
        },
    )
    .await?;
    let files = p.client.personal_export(entry.seq, now_ms())?;
    write_bundle(out, &files)?;
    Ok(files)
}

fn write_bundle(out: &Path, files: &[ExportFile]) -> anyhow::Result<()> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    std::fs::create_dir_all(out)?;
    for f in files {
        write_durably(&out.join(&f.name), &f.bytes)?;
    }
    Ok(())
}

fn write_durably(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Check an export bundle directory.
pub fn verify_bundle(dir: &Path) -> anyhow::Result<VerifiedBundle> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            files.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path())?,
            );
        }
    }
    sitrep_core::export::verify_bundle(&files).map_err(anyhow::Error::msg)
}

/// Whom a transfer is about.
pub enum Patient {
    /// A 10-digit NHS number (checked with Modulus 11).
    Nhs(String),
    /// A major-incident number, e.g. MI-0042.
    MajorIncident(String),
}

impl Patient {
    /// Parse what a clinician typed: an NHS number in any spacing, or an MI number.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match sitrep_core::records::identifier_key(s) {
            Some(k) if k.starts_with("nhs:") => {
                let d = &k[4..];
                let digits: [u8; 10] = d
                    .bytes()
                    .map(|b| b - b'0')
                    .collect::<Vec<u8>>()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("an NHS number has 10 digits"))?;
                if !sitrep_pid::mod11_valid(&digits) {
                    bail!("{s} is not a valid NHS number (Modulus 11 check failed)");
                }
                Ok(Self::Nhs(d.to_string()))
            }
            Some(k) if k.starts_with("mi:") => Ok(Self::MajorIncident(format!(
                "MI-{:04}",
                &k[3..].parse::<u64>().unwrap_or(0)
            ))),
            _ => bail!("give the patient's NHS number or major-incident number (MI-0042)"),
        }
    }
}

/// Transfer messages to the patient's health record: write them as a FHIR R4
/// `Communication` (a `Bundle` of them for several) to `out`, record it in the
/// audit log, and announce the transfer in the conversation, after which every
/// member's client marks the messages, and deletes them if the organisation's
/// policy says so. Returns the FHIR JSON.
pub async fn record_transfer(
    p: &mut Profile,
    conversation: &str,
    message_ids: &[String],
    patient: &Patient,
    out: &Path,
) -> anyhow::Result<String> {
    sync(p).await?;
    let conv = p.client.conversation(conversation)?;
    let conv_name = conv.name.clone();
    let members = p.client.members(conversation)?;
    let mut msgs = Vec::new();
    for id in message_ids {
        let e = conv
            .history
            .iter()
            .find(|e| &e.id == id && e.kind == "text")
            .with_context(|| format!("no message {id} in {conversation} (see `history --json`)"))?;
        let role = members
            .iter()
            .find(|m| m.user_id == e.sender)
            .map(|m| m.role.clone())
            .unwrap_or_default();
        msgs.push(sitrep_fhir::Message {
            id: e.id.clone(),
            conversation: conv_name.clone(),
            sender_user: e.sender.clone(),
            sender_name: e.sender_name.clone(),
            sender_role: role,
            sent_at_ms: e.sent_at,
            text: e.body.clone(),
        });
    }
    let subject = match patient {
        Patient::Nhs(n) => sitrep_fhir::Subject::NhsNumber(n.clone()),
        Patient::MajorIncident(m) => sitrep_fhir::Subject::MajorIncident(m.clone()),
    };
    let by = format!("{} ({})", p.client.display_name(), p.client.user_id());
    let json = sitrep_fhir::to_fhir_json(&sitrep_fhir::Transfer {
        organisation: p.client.org_name(),
        transferred_by: &by,
        subject,
        messages: &msgs,
        now_ms: now_ms(),
    })?;
    write_durably(out, json.as_bytes())?;
    let ids: Vec<String> = message_ids.to_vec();
    audit(
        p,
        api::AuditRequest {
            action: "record.transfer".into(),
            messages: ids,
            ..Default::default()
        },
    )
    .await?;
    for id in message_ids {
        p.client.mark_transferred(conversation, id, now_ms())?;
    }
    p.save()?;
    crate::flush_outbox(p).await?;
    Ok(json)
}
