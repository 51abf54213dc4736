//! Issue 6 end to end against the real server: the visible records member,
//! records search and disclosure export (redacted, manifest-checked, audited),
//! transfer to the health record as FHIR R4, personal export, and the
//! organisation's hash-chained audit log.

mod common;

use common::{TempDir, TestServer, bodies, contains, device, files_under};
use sitrep_core::{INTEROP_CIPHERSUITE, RecordsQuery};

const SUBJECT: &str = "943 476 5919";
const OTHER: &str = "401 023 2137";

struct Ward {
    server: TestServer,
    alice: (TempDir, sitrep_cli::Profile),
    bob: (TempDir, sitrep_cli::Profile),
    records: (TempDir, sitrep_cli::Profile),
}

/// The trust names "records" as its records account; Alice creates a
/// recorded conversation with Bob and writes about two patients.
async fn ward() -> Ward {
    let server = TestServer::start().await;
    let (org, _) = sitrep_server::org::Org::open_or_create(server.dir.path(), None).expect("org");
    let policy = sitrep_core::OrgPolicy {
        records_user: Some("records".into()),
        ..sitrep_core::OrgPolicy::default()
    };
    sitrep_server::set_policy(
        server.dir.path(),
        &org,
        policy,
        &sitrep_server::admin_actor(),
    )
    .expect("policy");
    let alice = device(&server.url, &server.invite("alice"), INTEROP_CIPHERSUITE).await;
    let bob = device(&server.url, &server.invite("bob"), INTEROP_CIPHERSUITE).await;
    let records = device(&server.url, &server.invite("records"), INTEROP_CIPHERSUITE).await;
    let mut w = Ward {
        server,
        alice,
        bob,
        records,
    };
    sitrep_cli::chat_create_with(
        &mut w.alice.1,
        "resus",
        &["bob".into()],
        &sitrep_cli::ChatOptions {
            pid_policy: "warn".into(),
            recorded: true,
            ..sitrep_cli::ChatOptions::default()
        },
    )
    .await
    .expect("create recorded");
    for text in [
        format!("MI-0042 NHS {SUBJECT} to CT now"),
        format!("bed 4 is {OTHER} (MI-0043), stable"),
        "theatre 2 ready in 10 min".to_string(),
    ] {
        sitrep_cli::send_checked(&mut w.alice.1, "resus", &text, true)
            .await
            .expect("send");
    }
    sitrep_cli::sync(&mut w.bob.1).await.expect("sync bob");
    sitrep_cli::sync(&mut w.records.1)
        .await
        .expect("sync records");
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_conversation_shows_its_records_member_to_everyone() {
    let w = ward().await;
    for p in [&w.alice.1, &w.bob.1, &w.records.1] {
        assert_eq!(
            p.client.recorded_by("resus").expect("info").as_deref(),
            Some("Sitrep Organisation Records"),
            "{} sees the records member",
            p.client.user_id()
        );
    }
    let members = w.bob.1.client.members("resus").expect("members");
    assert!(members.iter().any(|m| m.user_id == "records"));
    let history = &w.bob.1.client.conversation("resus").expect("conv").history;
    let announced = w
        .alice
        .1
        .client
        .conversation("resus")
        .expect("conv")
        .history
        .iter()
        .any(|h| {
            h.kind == "system"
                && h.body
                    .contains("now recorded by Sitrep Organisation Records")
        });
    assert!(announced, "joining of the records member is announced");
    assert_eq!(history.iter().filter(|h| h.kind == "text").count(), 3);
    // An unrecorded conversation says so.
    let mut alice = w.alice;
    sitrep_cli::chat_create(&mut alice.1, "tea", &["bob".into()], "warn")
        .await
        .expect("create");
    assert_eq!(alice.1.client.recorded_by("tea").expect("info"), None);
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_search_finds_an_nhs_number_in_any_spacing_and_only_for_records() {
    let mut w = ward().await;
    for q in [SUBJECT, "9434765919", "943-476-5919"] {
        let found = sitrep_cli::records::records_search(
            &mut w.records.1,
            &RecordsQuery {
                identifier: Some(q.into()),
                ..RecordsQuery::default()
            },
        )
        .await
        .expect("search");
        assert_eq!(found.len(), 1, "{q}");
        assert!(found[0].entry.body.contains("to CT now"));
        assert_eq!(found[0].conversation, "resus");
    }
    let mi = sitrep_cli::records::records_search(
        &mut w.records.1,
        &RecordsQuery {
            identifier: Some("MI-0043".into()),
            ..RecordsQuery::default()
        },
    )
    .await
    .expect("search");
    assert_eq!(mi.len(), 1);
    assert!(mi[0].entry.body.contains("stable"));
    let text = sitrep_cli::records::records_search(
        &mut w.records.1,
        &RecordsQuery {
            text: Some("THEATRE".into()),
            participant: Some("alice".into()),
            ..RecordsQuery::default()
        },
    )
    .await
    .expect("search");
    assert_eq!(text.len(), 1);
    // Anyone else is refused, even in a conversation they are in.
    let err = sitrep_cli::records::records_search(
        &mut w.bob.1,
        &RecordsQuery {
            identifier: Some(SUBJECT.into()),
            ..RecordsQuery::default()
        },
    )
    .await
    .expect_err("refused");
    assert!(
        err.to_string()
            .contains("not the organisation's records account"),
        "{err}"
    );
    // Every search is in the audit log, without the identifier.
    let log = sitrep_server::audit_entries(w.server.dir.path()).expect("audit");
    assert_eq!(
        log.iter().filter(|e| e.action == "records.search").count(),
        5
    );
    for e in &log {
        assert!(!e.detail.contains("9434765919") && !e.detail.contains("943 476"));
    }
    assert_eq!(w.records.1.client.journal_entries().len(), 5);
    // The server holds no patient identifier anywhere.
    for f in files_under(w.server.dir.path()) {
        let bytes = std::fs::read(&f).expect("read");
        for needle in ["9434765919", SUBJECT, OTHER, "MI-0042", "to CT now"] {
            assert!(
                !contains(&bytes, needle.as_bytes()),
                "{needle} in {}",
                f.display()
            );
        }
    }
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_redacts_other_patients_and_its_manifest_detects_edits() {
    let mut w = ward().await;
    let out = TempDir::new("export");
    let dir = out.path().join("bundle");
    sitrep_cli::records::records_export(&mut w.records.1, "9434765919", &dir)
        .await
        .expect("export");
    let json = std::fs::read_to_string(dir.join("export.json")).expect("json");
    let html = std::fs::read_to_string(dir.join("export.html")).expect("html");
    for doc in [&json, &html] {
        assert!(doc.contains(SUBJECT), "the subject's own identifier stays");
        assert!(doc.contains("to CT now"));
        assert!(
            !doc.contains("stable"),
            "other patients' messages are not included"
        );
        assert!(
            !doc.contains("MI-0042"),
            "other identifiers in the message are redacted"
        );
    }
    // A message naming both patients: the other one is redacted.
    sitrep_cli::send_checked(
        &mut w.alice.1,
        "resus",
        &format!("swap beds: {SUBJECT} and {OTHER}"),
        true,
    )
    .await
    .expect("send");
    let dir2 = out.path().join("bundle2");
    sitrep_cli::records::records_export(&mut w.records.1, SUBJECT, &dir2)
        .await
        .expect("export");
    let json = std::fs::read_to_string(dir2.join("export.json")).expect("json");
    assert!(json.contains("swap beds"));
    assert!(
        !json.contains(OTHER),
        "third party's NHS number redacted: {json}"
    );
    assert!(json.contains("[REDACTED NHS-NUMBER]"), "{json}");

    let v = sitrep_cli::records::verify_bundle(&dir2).expect("verifies");
    assert_eq!(v.manifest.files.len(), 2);
    assert_eq!(v.manifest.created_by, "records");
    // Edit one byte of the readable copy: detected.
    let mut html = std::fs::read(dir2.join("export.html")).expect("html");
    let n = html.len() / 2;
    html[n] ^= 0x20;
    std::fs::write(dir2.join("export.html"), &html).expect("write");
    let err = sitrep_cli::records::verify_bundle(&dir2).expect_err("edited");
    assert!(err.to_string().contains("export.html was changed"), "{err}");
    // Editing the manifest's hash to match breaks its signature.
    let m = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    std::fs::write(
        dir.join("manifest.json"),
        m.replacen("\"records\"", "\"personal\"", 1),
    )
    .expect("write");
    assert!(sitrep_cli::records::verify_bundle(&dir).is_err());
    // Each export is audited; a non-records account cannot export.
    let log = sitrep_server::audit_entries(w.server.dir.path()).expect("audit");
    assert_eq!(
        log.iter().filter(|e| e.action == "records.export").count(),
        2
    );
    assert!(
        sitrep_cli::records::records_export(&mut w.bob.1, SUBJECT, &out.path().join("b"))
            .await
            .is_err()
    );
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_writes_valid_fhir_and_deletes_the_originals_by_policy() {
    let mut w = ward().await;
    let id = w
        .alice
        .1
        .client
        .conversation("resus")
        .expect("conv")
        .history
        .iter()
        .find(|h| h.body.contains("to CT now"))
        .expect("message")
        .id
        .clone();
    let out = TempDir::new("fhir");
    let file = out.path().join("communication.json");
    let patient = sitrep_cli::records::Patient::parse(SUBJECT).expect("nhs");
    assert!(
        sitrep_cli::records::Patient::parse("943 476 5918").is_err(),
        "Modulus 11"
    );
    sitrep_cli::records::record_transfer(
        &mut w.alice.1,
        "resus",
        std::slice::from_ref(&id),
        &patient,
        &file,
    )
    .await
    .expect("transfer");
    let fhir: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("file")).expect("json");
    assert_eq!(fhir["resourceType"], "Communication");
    assert_eq!(
        fhir["subject"]["identifier"]["system"],
        "https://fhir.nhs.uk/Id/nhs-number"
    );
    assert_eq!(fhir["subject"]["identifier"]["value"], "9434765919");
    assert!(
        fhir["payload"][0]["contentString"]
            .as_str()
            .expect("text")
            .contains("to CT now")
    );
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fhir/schema/fhir.schema.json"
        ))
        .expect("schema"),
    )
    .expect("schema json");
    let validator = jsonschema::draft6::new(&schema).expect("compiles");
    let errors: Vec<String> = validator
        .iter_errors(&fhir)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "FHIR R4 schema: {errors:?}");

    // Every member's client marks it and, by default policy, deletes it.
    for p in [&mut w.alice.1, &mut w.bob.1] {
        sitrep_cli::sync(p).await.expect("sync");
        let b = bodies(p, "resus");
        assert!(!b.iter().any(|t| t.contains("to CT now")), "{b:?}");
        assert_eq!(b.len(), 2);
        assert!(
            p.client
                .conversation("resus")
                .expect("conv")
                .history
                .iter()
                .any(|h| h.kind == "system" && h.body.contains("transferred message"))
        );
    }
    // The records account keeps it, marked transferred.
    sitrep_cli::sync(&mut w.records.1).await.expect("sync");
    let kept = w
        .records
        .1
        .client
        .conversation("resus")
        .expect("conv")
        .history
        .iter()
        .find(|h| h.id == id)
        .expect("kept by records")
        .clone();
    assert!(kept.transferred_at.is_some());
    let log = sitrep_server::audit_entries(w.server.dir.path()).expect("audit");
    assert!(log.iter().any(|e| e.action == "record.transfer"));
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_export_and_the_audit_log_verify_and_edits_are_detected() {
    let mut w = ward().await;
    let out = TempDir::new("mine");
    let dir = out.path().join("bob");
    sitrep_cli::records::personal_export(&mut w.bob.1, &dir)
        .await
        .expect("export");
    let json = std::fs::read_to_string(dir.join("export.json")).expect("json");
    assert!(json.contains("theatre 2 ready") && json.contains("\"kind\": \"personal\""));
    sitrep_cli::records::verify_bundle(&dir).expect("verifies");
    std::fs::write(dir.join("extra.txt"), b"x").expect("write");
    assert!(
        sitrep_cli::records::verify_bundle(&dir).is_err(),
        "unlisted file"
    );

    let data = w.server.dir.path();
    let n = sitrep_server::audit_verify(data).expect("verifies");
    let log = sitrep_server::audit_entries(data).expect("entries");
    assert_eq!(n as usize, log.len());
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    for a in ["policy.set", "invite", "export.personal"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    // Someone with database access edits an entry: verification fails there.
    let conn = rusqlite::Connection::open(data.join("sitrep.db")).expect("db");
    conn.execute(
        "UPDATE audit SET detail = 'user=mallory ttl_secs=3600' WHERE seq = 2",
        [],
    )
    .expect("edit");
    let err = sitrep_server::audit_verify(data).expect_err("edited");
    assert!(err.to_string().contains("audit entry 2"), "{err}");
    w.server.stop().await;
}
