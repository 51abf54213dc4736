//! Disclosure bundles: a records export for one identifier (FOI, SAR) and a
//! person's export of their own conversations (GDPR right of access).
//!
//! A bundle is `export.json` (machine-readable), `export.html` (readable,
//! printable) and `manifest.json`: the SHA-256 of every file, who made it and
//! when, the audit-log entry that recorded it, signed with the exporting
//! device's key under its organisation-signed credential. [`verify_bundle`]
//! detects an edited, added or missing file and a forged manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::records::{RecordsQuery, identifier_key, redact_others};
use crate::{Client, Error};

const MANIFEST_LABEL: &[u8] = b"sitrep-export-manifest-v1";

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    /// File name inside the bundle directory.
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct ExportDoc {
    format: String,
    kind: String,
    organisation: String,
    generated_at: String,
    generated_by: Person,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    subject: Option<String>,
    redaction: String,
    conversations: Vec<ExportConversation>,
}

#[derive(Serialize, Deserialize)]
struct Person {
    user_id: String,
    device_id: String,
    name: String,
}

#[derive(Serialize, Deserialize)]
struct ExportConversation {
    name: String,
    group: String,
    messages: Vec<ExportMessage>,
}

#[derive(Serialize, Deserialize)]
struct ExportMessage {
    id: String,
    sender: String,
    sender_name: String,
    sent_at: String,
    sent_at_ms: u64,
    kind: String,
    body: String,
    redacted_items: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    transferred_at: Option<String>,
}

/// The signed part of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestBody {
    /// `sitrep-manifest-v1`.
    pub format: String,
    /// `records` or `personal`.
    pub kind: String,
    /// ISO 8601 UTC.
    pub created_at: String,
    /// User id of the exporter.
    pub created_by: String,
    /// Device id of the exporter.
    pub device: String,
    /// The organisation's audit log entry for this export.
    pub audit_seq: u64,
    /// The organisation key's fingerprint, to compare with the one the
    /// organisation publishes.
    pub org_fingerprint: String,
    /// Every other file of the bundle.
    pub files: Vec<ManifestFile>,
}

/// One file in a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    /// File name.
    pub name: String,
    /// Hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    manifest: ManifestBody,
    /// Base64 organisation public key.
    org_public_key: String,
    /// Base64 `SignedCredential` of the exporting device.
    credential: String,
    /// Base64 Ed25519 signature over `sitrep-export-manifest-v1 || JSON(manifest)`.
    signature: String,
}

/// ISO 8601 UTC from ms since the Unix epoch.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn html(doc: &ExportDoc) -> String {
    let mut h = String::new();
    let title = match &doc.subject {
        Some(s) => format!("Records disclosure: {}", escape(s)),
        None => format!("Personal export: {}", escape(&doc.generated_by.name)),
    };
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!("<title>{title}</title>"));
    h.push_str(
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}\
         table{border-collapse:collapse;width:100%}td,th{border:1px solid #999;padding:4px;\
         vertical-align:top;text-align:left}@media print{h2{page-break-before:auto}}</style>",
    );
    h.push_str("</head><body>\n");
    h.push_str(&format!("<h1>{title}</h1>\n"));
    h.push_str(&format!(
        "<p>{} &middot; generated {} by {} ({}, device {})</p>\n<p>{}</p>\n",
        escape(&doc.organisation),
        escape(&doc.generated_at),
        escape(&doc.generated_by.name),
        escape(&doc.generated_by.user_id),
        escape(&doc.generated_by.device_id),
        escape(&doc.redaction)
    ));
    for c in &doc.conversations {
        h.push_str(&format!(
            "<h2>{}</h2>\n<table><tr><th>Sent (UTC)</th><th>From</th><th>Message</th></tr>\n",
            escape(&c.name)
        ));
        for m in &c.messages {
            let note = match &m.transferred_at {
                Some(t) => format!(" <em>(transferred to the health record {})</em>", escape(t)),
                None => String::new(),
            };
            h.push_str(&format!(
                "<tr><td>{}</td><td>{} ({})</td><td>{}{note}</td></tr>\n",
                escape(&m.sent_at),
                escape(&m.sender_name),
                escape(&m.sender),
                escape(&m.body)
            ));
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl Client {
    /// A records disclosure bundle for one identifier: every message the
    /// records account holds that mentions it, with every other patient
    /// identifier redacted. `audit_seq` is the organisation's audit entry for
    /// this export (the caller records it first). Records account only.
    pub fn records_export(
        &self,
        identifier: &str,
        audit_seq: u64,
        now_ms: u64,
    ) -> Result<Vec<ExportFile>, Error> {
        let matches = self.records_search(&RecordsQuery {
            identifier: Some(identifier.to_string()),
            ..RecordsQuery::default()
        })?;
        let subject_key = identifier_key(identifier);
        let mut by_conv: BTreeMap<(String, String), Vec<ExportMessage>> = BTreeMap::new();
        for m in matches {
            let (body, n) = redact_others(&m.entry.body, subject_key.as_deref());
            by_conv
                .entry((m.conversation, m.group))
                .or_default()
                .push(export_message(&m.entry, body, n));
        }
        let doc = self.doc(
            "records",
            Some(identifier.trim().to_string()),
            "Other patients' identifiers (NHS, CHI, hospital and major-incident numbers) and \
             all other patient-identifiable data found by the PID guard are redacted; the \
             subject's own identifier is kept. Staff names are not redacted.",
            by_conv,
            now_ms,
        );
        self.bundle("records", &doc, audit_seq, now_ms)
    }

    /// A person's own conversations, everything this device holds (GDPR right
    /// of access). Nothing is redacted: it is the person's own view.
    pub fn personal_export(&self, audit_seq: u64, now_ms: u64) -> Result<Vec<ExportFile>, Error> {
        let mut by_conv: BTreeMap<(String, String), Vec<ExportMessage>> = BTreeMap::new();
        for (hex, c) in &self.state.conversations {
            let msgs = c
                .history
                .iter()
                .map(|e| export_message(e, e.body.clone(), 0))
                .collect();
            by_conv.insert((c.name.clone(), hex.clone()), msgs);
        }
        let doc = self.doc(
            "personal",
            None,
            "Nothing is redacted: this is the account holder's own copy.",
            by_conv,
            now_ms,
        );
        self.bundle("personal", &doc, audit_seq, now_ms)
    }

    fn doc(
        &self,
        kind: &str,
        subject: Option<String>,
        redaction: &str,
        by_conv: BTreeMap<(String, String), Vec<ExportMessage>>,
        now_ms: u64,
    ) -> ExportDoc {
        ExportDoc {
            format: "sitrep-export-v1".into(),
            kind: kind.into(),
            organisation: self.org_name().to_string(),
            generated_at: iso8601(now_ms),
            generated_by: Person {
                user_id: self.user_id().to_string(),
                device_id: self.device_id().to_string(),
                name: self.display_name().to_string(),
            },
            subject,
            redaction: redaction.into(),
            conversations: by_conv
                .into_iter()
                .map(|((name, group), messages)| ExportConversation {
                    name,
                    group,
                    messages,
                })
                .collect(),
        }
    }

    fn bundle(
        &self,
        kind: &str,
        doc: &ExportDoc,
        audit_seq: u64,
        now_ms: u64,
    ) -> Result<Vec<ExportFile>, Error> {
        let json = serde_json::to_vec_pretty(doc).map_err(|e| Error::Invalid(e.to_string()))?;
        let files = vec![
            ExportFile {
                name: "export.json".into(),
                bytes: json,
            },
            ExportFile {
                name: "export.html".into(),
                bytes: html(doc).into_bytes(),
            },
        ];
        let body = ManifestBody {
            format: "sitrep-manifest-v1".into(),
            kind: kind.into(),
            created_at: iso8601(now_ms),
            created_by: self.user_id().to_string(),
            device: self.device_id().to_string(),
            audit_seq,
            org_fingerprint: sitrep_wire::credential::fingerprint(self.org_public_key()),
            files: files
                .iter()
                .map(|f| ManifestFile {
                    name: f.name.clone(),
                    sha256: sha256_hex(&f.bytes),
                    bytes: f.bytes.len() as u64,
                })
                .collect(),
        };
        let signed = serde_json::to_vec(&body).map_err(|e| Error::Invalid(e.to_string()))?;
        let sig = self.sign_detached(MANIFEST_LABEL, &signed)?;
        let b64 = sitrep_wire::b64::encode;
        let manifest = Manifest {
            manifest: body,
            org_public_key: b64(self.org_public_key()),
            credential: b64(self.credential()),
            signature: b64(&sig),
        };
        let mut out = files;
        out.push(ExportFile {
            name: "manifest.json".into(),
            bytes: serde_json::to_vec_pretty(&manifest)
                .map_err(|e| Error::Invalid(e.to_string()))?,
        });
        Ok(out)
    }
}

fn export_message(e: &crate::HistoryEntry, body: String, redacted: usize) -> ExportMessage {
    ExportMessage {
        id: e.id.clone(),
        sender: e.sender.clone(),
        sender_name: e.sender_name.clone(),
        sent_at: iso8601(e.sent_at),
        sent_at_ms: e.sent_at,
        kind: e.kind.clone(),
        body,
        redacted_items: redacted,
        transferred_at: e.transferred_at.map(iso8601),
    }
}

/// What a verified bundle says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// The signed manifest.
    pub manifest: ManifestBody,
    /// Who signed it, as the organisation vouches.
    pub signer_name: String,
}

/// Check a bundle: the manifest's signature under an organisation-signed
/// credential, every listed file's hash, and that no file is missing or
/// unlisted. `files` is every file in the bundle directory by name.
pub fn verify_bundle(files: &BTreeMap<String, Vec<u8>>) -> Result<VerifiedBundle, String> {
    let raw = files
        .get("manifest.json")
        .ok_or("manifest.json is missing")?;
    let m: Manifest =
        serde_json::from_slice(raw).map_err(|e| format!("manifest.json is not a manifest: {e}"))?;
    let b64 = |s: &str, what: &str| {
        sitrep_wire::b64::decode(s).ok_or_else(|| format!("manifest.json: bad {what}"))
    };
    let org = b64(&m.org_public_key, "organisation key")?;
    let cred = b64(&m.credential, "credential")?;
    let sig = b64(&m.signature, "signature")?;
    if sitrep_wire::credential::fingerprint(&org) != m.manifest.org_fingerprint {
        return Err("manifest.json: organisation key does not match its fingerprint".into());
    }
    let signed = serde_json::to_vec(&m.manifest).map_err(|e| e.to_string())?;
    let who = sitrep_wire::credential::verify_detached(&org, &cred, MANIFEST_LABEL, &signed, &sig)
        .map_err(|e| format!("manifest signature does not verify: {e}"))?;
    if who.user_id != m.manifest.created_by || who.device_id != m.manifest.device {
        return Err("manifest was signed by another device than it names".into());
    }
    for f in &m.manifest.files {
        let bytes = files
            .get(&f.name)
            .ok_or_else(|| format!("{} is listed but missing", f.name))?;
        if sha256_hex(bytes) != f.sha256 || bytes.len() as u64 != f.bytes {
            return Err(format!("{} was changed after export", f.name));
        }
    }
    for name in files.keys() {
        if name != "manifest.json" && !m.manifest.files.iter().any(|f| &f.name == name) {
            return Err(format!("{name} is not listed in the manifest"));
        }
    }
    Ok(VerifiedBundle {
        manifest: m.manifest,
        signer_name: who.display_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_780_000_000_000), "2026-05-28T20:26:40Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
