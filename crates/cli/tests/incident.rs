//! Issue 5 end to end against the real server: the signed directory, a
//! DECLARED with METHANE opening the incident's conversations, call-in,
//! command channel, alert and acknowledgement, decision log, casualty board,
//! role take-over, stand down; and the server holds none of it in clear.

mod common;

use common::{TempDir, TestServer, contains, device, files_under};
use sitrep_core::INTEROP_CIPHERSUITE;
use sitrep_wire::directory::Role;
use sitrep_wire::incident::*;

fn role(
    id: &str,
    team: &str,
    holders: &[&str],
    deputy: Option<&str>,
    declare: bool,
    cmd: bool,
) -> Role {
    Role {
        id: id.into(),
        name: id.into(),
        team: team.into(),
        holders: holders.iter().map(|h| h.to_string()).collect(),
        eligible: holders.iter().map(|h| h.to_string()).collect(),
        deputy: deputy.map(String::from),
        can_declare: declare,
        commander: cmd,
        ..Role::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_call_in_alert_decide_and_stand_down() {
    let server = TestServer::start().await;
    let data = server.dir.path();
    sitrep_server::directory::admin_update(data, &sitrep_server::admin_actor(), "role.set", |d| {
        d.roles = vec![
            role(
                "ed-consultant",
                "ed",
                &["alice"],
                Some("site-manager"),
                true,
                true,
            ),
            role("site-manager", "management", &["bob"], None, false, true),
            role(
                "anaesthetist",
                "anaesthetics",
                &["carol", "dave"],
                None,
                false,
                false,
            ),
        ];
        // Dave may take the site-manager role too.
        d.roles[1].eligible.push("dave".into());
        d.callout_standby = vec!["site-manager".into()];
        d.callout_declared = vec!["site-manager".into(), "anaesthetist".into()];
        Ok("setup".into())
    })
    .expect("directory");
    let mut s = Vec::new();
    for u in ["alice", "bob", "carol", "dave"] {
        s.push(device(&server.url, &server.invite(u), INTEROP_CIPHERSUITE).await);
    }
    let methane = Methane {
        major_incident: true,
        exact_location: "SECRET-LOCATION-Westgate".into(),
        incident_type: "explosion".into(),
        hazards: "secondary device".into(),
        access: "north gate".into(),
        casualties: Casualties {
            estimated: 30,
            p1: 5,
            p2: 10,
            p3: 10,
            dead: 1,
        },
        emergency_services: "police, fire".into(),
    };
    // Bob may not declare.
    assert!(
        sitrep_cli::incident::raise(
            &mut s[1].1,
            "MI-1",
            Level::Declared,
            Some(methane.clone()),
            ""
        )
        .await
        .is_err()
    );
    let r = sitrep_cli::incident::raise(&mut s[0].1, "MI-1", Level::Declared, Some(methane), "")
        .await
        .expect("declare");
    assert_eq!(r.called, 3);
    assert!(r.unreachable.is_empty());
    for (_, p) in s.iter_mut().skip(1) {
        sitrep_cli::sync(p).await.expect("sync");
        let inc: Vec<_> = p.client.incidents().collect();
        assert_eq!(inc.len(), 1, "{}", p.client.user_id());
        assert_eq!(inc[0].level, Level::Declared);
    }
    // Call-in.
    for (i, a) in [
        (1, Availability::Unavailable),
        (2, Availability::Now),
        (3, Availability::In(20)),
    ] {
        sitrep_cli::incident::callin_reply(&mut s[i].1, "MI-1", a, None)
            .await
            .expect("reply");
    }
    sitrep_cli::sync(&mut s[0].1).await.expect("sync");
    let t = s[0].1.client.callin_tally("MI-1").expect("tally");
    assert_eq!(t.replies, 3);
    assert_eq!(t.by_role["anaesthetist"].now, 1);
    assert_eq!(t.by_role["anaesthetist"].later, vec![20]);
    assert_eq!(t.by_role["site-manager"].unavailable, 1);
    // Command channel: Bob (commander) posts, Carol cannot.
    sitrep_cli::send(&mut s[1].1, "MI-1-command", "Silver: hold electives")
        .await
        .expect("commander posts");
    assert!(
        sitrep_cli::send(&mut s[2].1, "MI-1-command", "me too")
            .await
            .is_err()
    );
    // An urgent alert to the site manager, acknowledged.
    let id = sitrep_cli::incident::alert_send(
        &mut s[2].1,
        "site-manager",
        Priority::Urgent,
        "ICU full, need decision on transfers",
        60,
        Some("MI-1".into()),
    )
    .await
    .expect("alert");
    sitrep_cli::sync(&mut s[1].1).await.expect("sync");
    assert_eq!(s[1].1.client.alerts_for_me(sitrep_cli::now_ms()).len(), 1);
    sitrep_cli::incident::ack(&mut s[1].1, &id)
        .await
        .expect("ack");
    sitrep_cli::sync(&mut s[2].1).await.expect("sync");
    let st = s[2].1.client.alert_state(&id).expect("state");
    assert_eq!(st.acked.as_ref().map(|a| a.0.as_str()), Some("bob"));
    assert!(
        st.read_by.contains("bob"),
        "Bob's client sent a read receipt"
    );
    let seen = sitrep_cli::message_status(&s[2].1, "MI-1", &id)
        .await
        .expect("delivery status");
    assert!(
        seen.iter().any(|x| x.user_id == "bob" && x.delivered),
        "the server reports the alert delivered to Bob: {seen:?}"
    );
    // Decisions, signed and chained, exported and verified.
    sitrep_cli::incident::decide(
        &mut s[0].1,
        "MI-1-command",
        DecisionKind::Decision,
        "Declare; open theatre 3",
    )
    .await
    .expect("decide");
    sitrep_cli::incident::decide(
        &mut s[1].1,
        "MI-1-command",
        DecisionKind::Action,
        "Site manager to clear ward 7",
    )
    .await
    .expect("action");
    let out = TempDir::new("decisions");
    let file = out.path().join("log.json");
    let n = sitrep_cli::incident::decisions_export(&mut s[0].1, "MI-1-command", &file)
        .await
        .expect("export");
    assert_eq!(n, 2);
    let bytes = std::fs::read(&file).expect("log");
    assert_eq!(sitrep_core::incident::verify_decision_log(&bytes), Ok(2));
    let edited = String::from_utf8(bytes)
        .expect("utf8")
        .replace("ward 7", "ward 8");
    assert!(sitrep_core::incident::verify_decision_log(edited.as_bytes()).is_err());
    // Casualty board.
    sitrep_cli::incident::casualty(
        &mut s[3].1,
        "MI-1",
        Casualty {
            mi: "MI-0001".into(),
            triage: Triage::P1,
            location: "resus 1".into(),
            note: String::new(),
        },
    )
    .await
    .expect("casualty");
    sitrep_cli::sync(&mut s[0].1).await.expect("sync");
    assert_eq!(s[0].1.client.casualties("MI-1").expect("board").len(), 1);
    // Dave takes on the site-manager role; the re-signed directory reaches Alice.
    sitrep_cli::incident::role_change(&mut s[3].1, "site-manager", true)
        .await
        .expect("take");
    sitrep_cli::sync(&mut s[0].1).await.expect("sync");
    let holders = s[0]
        .1
        .client
        .directory()
        .role("site-manager")
        .expect("role")
        .holders
        .clone();
    assert_eq!(holders, vec!["bob", "dave"]);
    // Stand down.
    sitrep_cli::incident::raise(&mut s[0].1, "MI-1", Level::StandDown, None, "all clear")
        .await
        .expect("stand down");
    sitrep_cli::sync(&mut s[2].1).await.expect("sync");
    assert_eq!(
        s[2].1.client.incidents().next().map(|i| i.level),
        Some(Level::StandDown)
    );
    // The audit log has the role change; the server holds no incident content.
    let log = sitrep_server::audit_entries(data).expect("audit");
    assert!(log.iter().any(|e| e.action == "role.take"));
    for f in files_under(data) {
        let b = std::fs::read(&f).expect("read");
        for needle in [
            "SECRET-LOCATION-Westgate",
            "ICU full",
            "open theatre 3",
            "resus 1",
        ] {
            assert!(
                !contains(&b, needle.as_bytes()),
                "{needle} in {}",
                f.display()
            );
        }
    }
    server.stop().await;
}
