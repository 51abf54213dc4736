//! Prints the FHIR JSON for a sample transfer: one message with an NHS number,
//! or (with any argument) two messages for a major-incident casualty.
//!
//! `cargo run -p sitrep-fhir --example transfer [bundle]`

use sitrep_fhir::{Message, Subject, Transfer, to_fhir_json};

fn main() -> Result<(), sitrep_fhir::Error> {
    let message = |id: &str, sent_at_ms: u64, text: &str| Message {
        id: id.to_owned(),
        conversation: "Resus 2 trauma call".to_owned(),
        sender_user: "7f3a9c".to_owned(),
        sender_name: "Dr Asha Patel".to_owned(),
        sender_role: "ED Consultant".to_owned(),
        sent_at_ms,
        text: text.to_owned(),
    };
    let bundle = std::env::args().nth(1).is_some();
    let (subject, messages) = if bundle {
        (
            Subject::MajorIncident("MI-0042".to_owned()),
            vec![
                message(
                    "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                    1_740_837_909_042,
                    "CT head: no acute bleed",
                ),
                message(
                    "00112233445566778899aabbccddeeff",
                    1_740_838_029_000,
                    "Decision: to theatre",
                ),
            ],
        )
    } else {
        (
            Subject::NhsNumber("9434765919".to_owned()),
            vec![message(
                "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
                1_740_837_909_042,
                "GCS 14, BP 90/60. FAST +ve.",
            )],
        )
    };
    let transfer = Transfer {
        organisation: "St Elsewhere NHS Foundation Trust",
        transferred_by: "Dr Ben Okafor",
        subject,
        messages: &messages,
        now_ms: 1_740_840_000_000,
    };
    println!("{}", to_fhir_json(&transfer)?);
    Ok(())
}
