//! Bulk enrolment (`sitrep admin bulk-invite`): a CSV of staff, as a
//! spreadsheet or the rota system exports it, in; one enrolment code per
//! person out, to a file only the admin can read, for mail merge or printed
//! slips.
//!
//! - Every row is checked before any code is made: one bad row (an invalid
//!   id, a name too long, a user twice) stops the run, naming its line.
//! - Staff already enrolled or holding an open code are skipped, so a run
//!   that stopped half way is simply run again; so are leavers (disabled:
//!   devices revoked, none active) and staff the identity system has
//!   deactivated, who get a code only from a deliberate `admin invite`.
//! - Each code is written to the file (and flushed) as soon as it is made;
//!   the file is new (never overwritten) and owner-only.
//! - Teams are added to the signed directory in one change at the end
//!   (members merged into the team, nobody removed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, bail};
use sitrep_server::admin::InviteRequest;

use crate::admin::Admin;

/// The columns, in this order, with a header row naming them.
pub const HEADER: [&str; 4] = ["user", "name", "role", "team"];

/// Most rows in one file.
pub const MAX_ROWS: usize = 50_000;

/// One member of staff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staff {
    /// User id.
    pub user: String,
    /// Name colleagues see.
    pub name: String,
    /// Role the invitation carries.
    pub role: String,
    /// Team id in the directory, if any.
    pub team: Option<String>,
}

/// Whether an invitation was refused because SCIM deactivated the user.
fn deactivated(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::ServerError>()
        .is_some_and(|s| s.body.error == "user_deactivated")
        || format!("{e:#}").contains("deactivated in the identity system")
}

fn text_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && !s.chars().any(char::is_control)
}

/// Read and check the whole file.
pub fn parse(bytes: &[u8]) -> anyhow::Result<Vec<Staff>> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(bytes);
    let header: Vec<String> = r
        .headers()
        .context("the CSV has no header row")?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    if header != HEADER {
        bail!(
            "the header row must be {} (found {})",
            HEADER.join(","),
            header.join(",")
        );
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for rec in r.records() {
        let rec = rec.context("the CSV could not be read")?;
        let line = rec.position().map_or(0, csv::Position::line);
        if out.len() == MAX_ROWS {
            bail!("more than {MAX_ROWS} staff in one file: split it");
        }
        let (user, name, role, team) = (&rec[0], &rec[1], &rec[2], &rec[3]);
        if !sitrep_wire::api::valid_id(user) {
            bail!("line {line}: user {user:?} is not 1-64 of letters, digits, '.', '_' and '-'");
        }
        if !text_ok(name) || !text_ok(role) {
            bail!("line {line}: name and role are 1 to 64 bytes of text");
        }
        if !team.is_empty() && !sitrep_wire::api::valid_id(team) {
            bail!("line {line}: team {team:?} is not 1-64 of letters, digits, '.', '_' and '-'");
        }
        if !seen.insert(user.to_string()) {
            bail!("line {line}: {user} is in the file twice");
        }
        out.push(Staff {
            user: user.into(),
            name: name.into(),
            role: role.into(),
            team: (!team.is_empty()).then(|| team.into()),
        });
    }
    if out.is_empty() {
        bail!("the CSV has a header and no staff");
    }
    Ok(out)
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Codes made and written.
    pub invited: usize,
    /// Already enrolled or holding an open code.
    pub skipped: Vec<String>,
    /// Disabled leavers, or deactivated by the identity system: no code.
    pub refused: Vec<String>,
    /// Teams changed.
    pub teams: usize,
}

/// Make a code for each member of `staff` not yet enrolled or invited,
/// written to `out` (a new file) as `user,name,role,team,code,expires_at`.
pub async fn invite_all(
    admin: &Admin,
    staff: &[Staff],
    out: &Path,
    ttl_secs: u64,
) -> anyhow::Result<Report> {
    #[derive(Clone, Copy, PartialEq)]
    enum Known {
        Busy,
        Leaver,
        Free,
    }
    let known: BTreeMap<String, Known> = admin
        .users()
        .await?
        .into_iter()
        .map(|u| {
            let k = if u.active_devices > 0 || u.open_invites > 0 {
                Known::Busy
            } else if u.revoked_devices > 0 {
                Known::Leaver
            } else {
                Known::Free
            };
            (u.user_id, k)
        })
        .collect();
    // Only once the listing worked: a failed run leaves no file in the way.
    let file = new_private_file(out)?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(["user", "name", "role", "team", "code", "expires_at"])?;
    w.flush()?;
    let mut report = Report::default();
    let expires = crate::now_ms() / 1000 + ttl_secs;
    for s in staff {
        match known.get(&s.user).copied().unwrap_or(Known::Free) {
            Known::Busy => {
                report.skipped.push(s.user.clone());
                continue;
            }
            Known::Leaver => {
                report.refused.push(s.user.clone());
                continue;
            }
            Known::Free => {}
        }
        let made = admin
            .invite(&InviteRequest {
                user_id: s.user.clone(),
                display_name: s.name.clone(),
                role: s.role.clone(),
                ttl_secs,
            })
            .await;
        if made.as_ref().is_err_and(deactivated) {
            report.refused.push(s.user.clone());
            continue;
        }
        let code = made.with_context(|| {
            format!(
                "no code for {} ({} made before it are in {})",
                s.user,
                report.invited,
                out.display()
            )
        })?;
        w.write_record([
            s.user.as_str(),
            s.name.as_str(),
            s.role.as_str(),
            s.team.as_deref().unwrap_or(""),
            code.as_str(),
            &sitrep_wire::time::rfc3339(expires),
        ])?;
        // On disk before the next code is made.
        w.flush()?;
        report.invited += 1;
    }
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("{}", e.error()))?
        .sync_all()?;
    let mut teams: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in staff {
        if let Some(t) = &s.team {
            teams.entry(t).or_default().push(&s.user);
        }
    }
    if !teams.is_empty() {
        let changed = std::cell::Cell::new(0usize);
        admin
            .update_directory("team.set", |d| {
                let mut n = 0;
                for (team, members) in &teams {
                    let t = match d.teams.iter_mut().position(|t| t.id == *team) {
                        Some(i) => &mut d.teams[i],
                        None => {
                            d.teams.push(sitrep_wire::directory::Team {
                                id: (*team).to_string(),
                                members: Vec::new(),
                            });
                            d.teams.last_mut().expect("just pushed")
                        }
                    };
                    let before = t.members.len();
                    for m in members {
                        if !t.members.iter().any(|x| x == m) {
                            t.members.push((*m).to_string());
                        }
                    }
                    n += usize::from(t.members.len() != before);
                }
                changed.set(n);
                let ids: Vec<&str> = teams.keys().copied().collect();
                Ok(format!("bulk teams={}", ids.join(",")))
            })
            .await
            .context("the codes are written, but the teams were not set")?;
        report.teams = changed.get();
    }
    Ok(report)
}

/// A new file readable only by its owner (codes are secrets until used).
fn new_private_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path).with_context(|| {
        format!(
            "cannot create {} (it must not exist yet: codes are never written over)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_as_spreadsheets_write_them() {
        let csv = "\u{feff}User,Name,Role,Team\r\nalice,\"Adams, Alice\",ED consultant, ed-seniors \r\nbob,Bob B,Registrar,\r\n";
        let s = parse(csv.as_bytes()).expect("parses");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "Adams, Alice");
        assert_eq!(s[0].team.as_deref(), Some("ed-seniors"));
        assert_eq!(s[1].team, None);
    }

    #[test]
    fn a_bad_row_stops_everything_and_names_its_line() {
        for (csv, want) in [
            ("user,name,role,team\nalice,A,R,\nal ice,B,R,\n", "line 3"),
            ("user,name,role,team\nalice,A,R,\nalice,B,R,\n", "twice"),
            ("user,name,role,team\nalice,,R,\n", "line 2"),
            ("user,name,role,team\nalice,A,R,t eam\n", "team"),
            ("user,name,role\nalice,A,R\n", "header"),
            ("user,name,role,team\nalice,A,R\n", "could not be read"),
            ("user,name,role,team\n", "no staff"),
        ] {
            let e = parse(csv.as_bytes()).expect_err(csv);
            assert!(format!("{e:#}").contains(want), "{csv}: {e:#}");
        }
    }
}
