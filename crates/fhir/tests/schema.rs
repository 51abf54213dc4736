//! Validates `to_fhir_json` output against the FHIR R4 (4.0.1) JSON Schema
//! vendored in `schema/fhir.schema.json` (see `schema/README.md`), with
//! negative cases showing that the validator really rejects bad resources.
#![allow(clippy::unwrap_used)]

use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::{Value, json};
use sitrep_fhir::{Message, Subject, Transfer, to_fhir_json};

/// The whole official schema: its root is a `oneOf` over every R4 resource,
/// discriminated by `resourceType`, so an instance is checked as the
/// resource it claims to be.
static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/fhir.schema.json");
    let text = std::fs::read_to_string(path).expect("read vendored FHIR schema");
    serde_json::from_str(&text).expect("FHIR schema is JSON")
});

static VALIDATOR: LazyLock<Validator> =
    LazyLock::new(|| jsonschema::draft6::new(&SCHEMA).expect("FHIR schema compiles as draft-06"));

/// Errors from validating `instance` against the Communication or Bundle
/// definition directly, which gives readable messages (the root `oneOf`
/// only says "not valid under any of the schemas").
fn detailed_errors(instance: &Value) -> Vec<String> {
    let rt = instance["resourceType"].as_str().unwrap_or("?");
    let schema = json!({
        "$schema": "http://json-schema.org/draft-06/schema#",
        "$ref": format!("#/definitions/{rt}"),
        "definitions": SCHEMA["definitions"],
    });
    let v = jsonschema::draft6::new(&schema).expect("sub-schema compiles");
    v.iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn assert_valid(instance: &Value) {
    assert!(
        VALIDATOR.is_valid(instance),
        "not valid FHIR R4: {:#?}\n{instance:#}",
        detailed_errors(instance)
    );
}

fn assert_invalid(instance: &Value) {
    assert!(
        !VALIDATOR.is_valid(instance),
        "unexpectedly valid FHIR R4:\n{instance:#}"
    );
}

fn message(n: u8, text: &str) -> Message {
    Message {
        id: format!("{n:02x}").repeat(16),
        conversation: "Resus 2 – trauma call".to_owned(),
        sender_user: format!("user-{n}"),
        sender_name: "Dr Asha Patel".to_owned(),
        sender_role: "ED Consultant".to_owned(),
        sent_at_ms: 1_740_837_909_042 + u64::from(n) * 61_000,
        text: text.to_owned(),
    }
}

fn render(subject: Subject, messages: &[Message]) -> Value {
    let t = Transfer {
        organisation: "St Elsewhere NHS Foundation Trust",
        transferred_by: "Dr Ben Okafor",
        subject,
        messages,
        now_ms: 1_740_840_000_000,
    };
    serde_json::from_str(&to_fhir_json(&t).expect("renders")).expect("output is JSON")
}

fn nhs() -> Subject {
    Subject::NhsNumber("9434765919".to_owned())
}

fn mi() -> Subject {
    Subject::MajorIncident("MI-0042".to_owned())
}

fn one() -> Vec<Message> {
    vec![message(
        1,
        "GCS 14, BP 90/60, HR 120. Query splenic injury.\nFAST +ve.",
    )]
}

fn several() -> Vec<Message> {
    vec![
        message(1, "Arrived in resus, primary survey started"),
        message(2, "CT head: no acute bleed"),
        message(3, "Decision: to theatre for laparotomy"),
    ]
}

#[test]
fn vendored_schema_is_fhir_r4_draft06() {
    assert_eq!(SCHEMA["$schema"], "http://json-schema.org/draft-06/schema#");
    assert_eq!(SCHEMA["id"], "http://hl7.org/fhir/json-schema/4.0");
    let versions =
        &SCHEMA["definitions"]["StructureDefinition"]["properties"]["fhirVersion"]["enum"];
    assert_eq!(versions.as_array().unwrap().last().unwrap(), "4.0.1");
    assert!(SCHEMA["definitions"]["Communication"].is_object());
}

#[test]
fn communication_with_nhs_number_is_valid_r4() {
    let v = render(nhs(), &one());
    assert_eq!(v["resourceType"], "Communication");
    assert_valid(&v);
}

#[test]
fn communication_with_major_incident_number_is_valid_r4() {
    let v = render(mi(), &one());
    assert_eq!(v["subject"]["identifier"]["value"], "MI-0042");
    assert_valid(&v);
}

#[test]
fn bundle_with_nhs_number_is_valid_r4() {
    let v = render(nhs(), &several());
    assert_eq!(v["resourceType"], "Bundle");
    assert_eq!(v["entry"].as_array().unwrap().len(), 3);
    assert_valid(&v);
}

#[test]
fn bundle_with_major_incident_number_is_valid_r4() {
    let v = render(mi(), &several());
    assert_eq!(v["resourceType"], "Bundle");
    assert_valid(&v);
}

#[test]
fn invalid_sent_time_fails_validation() {
    let mut v = render(nhs(), &one());
    v["sent"] = json!("yesterday");
    assert_invalid(&v);
    // A time without a zone is not a valid FHIR dateTime either.
    v["sent"] = json!("2025-03-01T14:05:09");
    assert_invalid(&v);
}

#[test]
fn invalid_status_code_fails_validation() {
    // R4's schema types Communication.status as `code` (no enum), so a
    // malformed code is what it can catch here.
    let mut v = render(nhs(), &one());
    v["status"] = json!(" completed");
    assert_invalid(&v);
    v["status"] = json!("");
    assert_invalid(&v);
}

#[test]
fn unknown_field_fails_validation() {
    let mut v = render(mi(), &one());
    v["colour"] = json!("red");
    assert_invalid(&v);
}

#[test]
fn invalid_bundle_fails_validation() {
    let mut v = render(nhs(), &several());
    v["type"] = json!("bogus");
    assert_invalid(&v);

    let mut v = render(nhs(), &several());
    v["entry"][1]["resource"]["sent"] = json!("yesterday");
    assert_invalid(&v);

    let mut v = render(nhs(), &several());
    v["entry"][2]["resource"]["payload"][0]["contentString"] = json!(42);
    assert_invalid(&v);
}
