//! `sitrep drill`: a scripted major-incident exercise against a real server
//! (started in-process on a loopback port, on its embedded store) with
//! simulated staff, each a real enrolled device with its own sealed profile:
//! STANDBY, DECLARED with METHANE, call-in of every member of staff, an alert
//! that escalates once, decisions logged and verified, STAND DOWN. Prints a
//! readable timeline with timings. Doubles as a demo.

use std::time::Instant;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use sitrep_wire::directory::Role;
use sitrep_wire::incident::{Availability, Casualties, DecisionKind, Level, Methane, Priority};

use crate::{Profile, incident, now_ms, sync};

pub(crate) const PASS: &str = "drill-passcode-0";
/// Staff devices worked on at once.
const PARALLEL: usize = 16;

struct Clock(Instant);

impl Clock {
    fn say(&self, what: impl AsRef<str>) {
        println!(
            "+{:>8.3}s  {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

const STAFF_ROLES: [(&str, &str); 5] = [
    ("anaesthetist", "anaesthetics"),
    ("ed-nurse", "ed"),
    ("theatre-nurse", "theatres"),
    ("icu-nurse", "icu"),
    ("surgeon", "surgery"),
];

/// Run the drill with `staff` simulated members of staff.
pub async fn run(staff: usize) -> anyhow::Result<()> {
    let clock = Clock(Instant::now());
    let dir = tempdir()?;
    let data = dir.join("server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    sitrep_server::org::Org::open_or_create(&data, Some("Drill Trust"))?;
    let mut config = sitrep_server::Config::new(&data);
    // Hundreds of simulated devices enrol from one address within seconds.
    config.enrol_per_sec = 10_000.0;
    let server = tokio::spawn(async move {
        let _ = sitrep_server::run(listener, config, async {
            let _ = stopped.await;
        })
        .await;
    });
    for _ in 0..200 {
        if reqwest::get(format!("{url}/healthz")).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    clock.say(format!("server up at {url}, data in {}", data.display()));

    // The trust's set-up: cheap local-store sealing for simulated devices,
    // the directory and call-out lists.
    let users: Vec<String> = (0..staff).map(|i| format!("staff{i:04}")).collect();
    set_up_directory(&data, &users, &format!("drill staff={staff}"))?;

    let t = Instant::now();
    let mut coord = enrol(&data, &url, &dir, "coordinator", "Dr Coordinator").await?;
    let mut manager = enrol(&data, &url, &dir, "manager", "Site Manager").await?;
    let mut deputy = enrol(&data, &url, &dir, "deputy", "Deputy Manager").await?;
    let mut people: Vec<Profile> = futures_util::stream::iter(users.iter().cloned())
        .map(|u| {
            let (data, url, dir) = (data.clone(), url.clone(), dir.clone());
            async move { enrol(&data, &url, &dir, &u, &u).await }
        })
        .buffered(PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    clock.say(format!(
        "{} devices enrolled ({:.1} s)",
        staff + 3,
        t.elapsed().as_secs_f64()
    ));

    let id = "MI-DRILL-01";
    let t = Instant::now();
    let r = incident::raise(
        &mut coord,
        id,
        Level::Standby,
        None,
        "drill: possible major incident",
    )
    .await?;
    clock.say(format!(
        "STANDBY raised by the ED consultant: {} on the standby call-out list added ({:.2} s)",
        r.called,
        t.elapsed().as_secs_f64()
    ));
    let methane = exercise_methane("Drill");
    let t = Instant::now();
    let r = incident::raise(&mut coord, id, Level::Declared, Some(methane), "drill").await?;
    clock.say(format!(
        "DECLARED with METHANE: coordination group and command channel open, {} staff called ({:.2} s)",
        r.called,
        t.elapsed().as_secs_f64()
    ));

    let t = Instant::now();
    let results: Vec<anyhow::Result<Vec<sitrep_core::Event>>> =
        futures_util::stream::iter(people.iter_mut())
            .map(|p| async move { sync(p).await })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    let got = results
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?
        .iter()
        .filter(|ev| {
            ev.iter().any(|e| {
                matches!(e, sitrep_core::Event::Message { entry, .. } if entry.kind == "incident")
            })
        })
        .count();
    clock.say(format!(
        "{got} of {staff} staff devices joined the coordination group and decrypted the DECLARED alert ({:.1} s, all devices simulated on this machine)",
        t.elapsed().as_secs_f64()
    ));
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> =
        futures_util::stream::iter(people.iter_mut().enumerate())
            .map(|(i, p)| async move {
                let a = match i % 20 {
                    0..=11 => Availability::Now,
                    12..=16 => Availability::In(15 + (i as u32 % 4) * 15),
                    _ => Availability::Unavailable,
                };
                incident::callin_reply_synced(p, id, a, None).await
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    clock.say(format!(
        "{staff} call-in replies sent ({:.1} s)",
        t.elapsed().as_secs_f64()
    ));
    let t = Instant::now();
    sync(&mut coord).await?;
    let tally = coord.client.callin_tally(id)?;
    clock.say(format!(
        "coordinator's tally: {} replies, {} not replied ({:.2} s to fetch and count)",
        tally.replies,
        tally.not_replied.len(),
        t.elapsed().as_secs_f64()
    ));
    for (role, r) in &tally.by_role {
        println!(
            "             {role:<15} now {:>4}  later {:>4}  unavailable {:>4}",
            r.now,
            r.later.len(),
            r.unavailable
        );
    }

    // An urgent alert to the site manager, not acknowledged: it escalates.
    sync(&mut manager).await?;
    sync(&mut deputy).await?;
    let alert = incident::alert_send(
        &mut coord,
        "site-manager",
        Priority::Urgent,
        "Drill: ICU at capacity, decide on transfers",
        30,
        Some(id.into()),
    )
    .await?;
    clock.say(format!(
        "URGENT alert {} to the site manager (ack within 30 s)",
        &alert[..8]
    ));
    // The coordinator's device plays no further part: the deputy's own
    // device works out that the alert has escalated to it.
    clock.say("waiting 30 s for the acknowledgement time to run out");
    tokio::time::sleep(std::time::Duration::from_millis(30_500)).await;
    sync(&mut deputy).await?;
    let mine: Vec<String> = deputy
        .client
        .alerts_for_me(now_ms())
        .into_iter()
        .map(|(id, _)| id.clone())
        .collect();
    anyhow::ensure!(
        mine.contains(&alert),
        "the deputy's device did not escalate the alert to itself"
    );
    clock.say(
        "no acknowledgement after 30 s: the deputy manager's own device has the alert (the coordinator's device not consulted)",
    );
    incident::ack(&mut deputy, &alert).await?;
    sync(&mut coord).await?;
    let st = coord.client.alert_state(&alert).context("alert state")?;
    clock.say(format!(
        "acknowledged by {} after {} escalation(s)",
        st.acked.as_ref().map_or("nobody", |a| a.0.as_str()),
        st.escalations.len()
    ));

    let cmd = incident::command(id);
    incident::decide(
        &mut coord,
        &cmd,
        DecisionKind::Decision,
        "Drill: cancel elective lists",
    )
    .await?;
    incident::decide(
        &mut manager,
        &cmd,
        DecisionKind::Action,
        "Drill: open ward 7 as decant",
    )
    .await?;
    let log = dir.join("decision-log.json");
    let n = incident::decisions_export(&mut coord, &cmd, &log).await?;
    let verified = sitrep_core::incident::verify_decision_log(&std::fs::read(&log)?)
        .map_err(anyhow::Error::msg)?;
    clock.say(format!(
        "{n} decisions logged, exported to {} and verified ({verified} entries)",
        log.display()
    ));
    incident::raise(&mut coord, id, Level::StandDown, None, "drill complete").await?;
    clock.say("STAND DOWN");
    let _ = stop.send(());
    let _ = server.await;
    clock.say(format!("drill over; its files are in {}", dir.display()));
    Ok(())
}

/// The drill's trust: a policy with cheap local-store sealing (simulated
/// devices), and a directory with an ED consultant (`coordinator`) who may
/// declare, a site manager and deputy, and `users` spread over five staff
/// roles, all on the DECLARED call-out list.
pub(crate) fn set_up_directory(
    data: &std::path::Path,
    users: &[String],
    why: &str,
) -> anyhow::Result<()> {
    let (org, _) = sitrep_server::org::Org::open_or_create(data, None)?;
    let policy = sitrep_core::OrgPolicy {
        argon2: (8 * 1024, 1, 1),
        ..sitrep_core::OrgPolicy::default()
    };
    sitrep_server::set_policy(data, &org, policy, &sitrep_server::admin_actor())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    sitrep_server::directory::admin_update(data, &sitrep_server::admin_actor(), "role.set", |d| {
        let role =
            |id: &str, team: &str, holders: Vec<String>, deputy: Option<&str>, declare: bool| {
                Role {
                    id: id.into(),
                    name: id.replace('-', " "),
                    team: team.into(),
                    eligible: holders.clone(),
                    holders,
                    deputy: deputy.map(String::from),
                    can_declare: declare,
                    commander: declare || id == "site-manager",
                    ..Role::default()
                }
            };
        d.roles = vec![
            role(
                "ed-consultant",
                "ed",
                vec!["coordinator".into()],
                Some("site-manager"),
                true,
            ),
            role(
                "site-manager",
                "management",
                vec!["manager".into()],
                Some("deputy-manager"),
                false,
            ),
            role(
                "deputy-manager",
                "management",
                vec!["deputy".into()],
                None,
                false,
            ),
        ];
        for (k, (rid, team)) in STAFF_ROLES.iter().enumerate() {
            let holders = users
                .iter()
                .skip(k)
                .step_by(STAFF_ROLES.len())
                .cloned()
                .collect();
            d.roles.push(role(rid, team, holders, None, false));
        }
        d.callout_standby = vec!["site-manager".into(), "anaesthetist".into()];
        d.callout_declared = std::iter::once("site-manager".to_string())
            .chain(std::iter::once("deputy-manager".to_string()))
            .chain(STAFF_ROLES.iter().map(|r| r.0.to_string()))
            .collect();
        Ok(why.to_string())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The exercise's METHANE report, every line marked with `label`.
pub(crate) fn exercise_methane(label: &str) -> Methane {
    Methane {
        major_incident: true,
        exact_location: format!("{label}: Central Station concourse"),
        incident_type: format!("{label}: structural collapse"),
        hazards: format!("{label}: unstable roof"),
        access: format!("{label}: east entrance"),
        casualties: Casualties {
            estimated: 60,
            p1: 8,
            p2: 15,
            p3: 30,
            dead: 2,
        },
        emergency_services: format!("{label}: fire, police, HART"),
    }
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let mut b = [0u8; 6];
    getrandom_bytes(&mut b)?;
    let d = std::env::temp_dir().join(format!("sitrep-drill-{}", hex::encode(b)));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn getrandom_bytes(b: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(b)?;
    Ok(())
}

pub(crate) async fn enrol(
    data: &std::path::Path,
    url: &str,
    dir: &std::path::Path,
    user: &str,
    name: &str,
) -> anyhow::Result<Profile> {
    let code = sitrep_server::create_invite(data, user, name, "staff", 3600)?;
    crate::enrol(
        &dir.join("profiles").join(user),
        url,
        &code,
        PASS,
        Some(sitrep_core::INTEROP_CIPHERSUITE),
    )
    .await
}
