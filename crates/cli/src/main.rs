//! `sitrep`: the server, the admin tools and the client in one binary.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use sitrep_cli::{Profile, now_ms};
use sitrep_core::Event;

mod watch;

#[derive(Parser)]
#[command(
    name = "sitrep",
    version,
    about = "End-to-end encrypted messaging for hospital staff"
)]
struct Cli {
    /// Profile directory of this device (sealed local store).
    #[arg(long, global = true, default_value = "sitrep-profile")]
    profile: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the organisation (its signing key and store) in a new data
    /// directory; `serve` and `admin` refuse a directory that was never
    /// initialised.
    Init {
        /// Data directory to create.
        #[arg(long, default_value = "sitrep-data")]
        data: PathBuf,
        /// The organisation's name, as staff see it.
        #[arg(long)]
        org: String,
    },
    /// Run the server (delivery and authentication service) on its embedded store.
    Serve {
        /// Data directory (database and organisation key), made by `sitrep init`
        /// [default: sitrep-data].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8448].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Every setting, in TOML (docs/configuration.md); flags and the
        /// environment win over it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Create the organisation if the data directory holds none.
        #[arg(long)]
        init: bool,
        /// Organisation name, used by `--init` when the data directory is new
        /// [default: Sitrep Organisation].
        #[arg(long)]
        org_name: Option<String>,
        /// Address of a reverse proxy whose `X-Forwarded-For` names the
        /// client (for per-address limits); repeat for several.
        #[arg(long)]
        trusted_proxy: Vec<std::net::IpAddr>,
        /// TLS certificate chain (PEM, leaf first); re-read on SIGHUP.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM); re-read on SIGHUP.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Speak plain HTTP on an address other machines reach (only behind
        /// a reverse proxy that terminates TLS); loopback needs no flag.
        #[arg(long)]
        plain_http: bool,
        /// The built web app to serve at `/` (`web/dist`, made by
        /// `web/build.sh`).
        #[arg(long)]
        web: Option<PathBuf>,
    },
    /// Administration on the server's data directory (works while it runs).
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Enrol this device with an invitation code.
    Enrol {
        /// Server URL, e.g. https://sitrep.example.nhs.uk:8448 (plain
        /// http:// only to this machine, e.g. http://127.0.0.1:8448).
        #[arg(long)]
        server: String,
        /// The code from `sitrep admin invite`.
        #[arg(long)]
        code: String,
        /// The trust's private CA (PEM), if the server's certificate is not
        /// from a CA the system trusts; kept in the sealed profile.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// MLS ciphersuite: `pq` or `classic` (RFC 9420's mandatory suite);
        /// by default the one the organisation's policy names (`pq` unless set).
        #[arg(long)]
        ciphersuite: Option<String>,
    },
    /// Conversations.
    Chat {
        #[command(subcommand)]
        cmd: ChatCmd,
    },
    /// Send a text message (checked by the PID guard first).
    Send {
        /// Conversation name.
        name: String,
        /// The message.
        text: String,
        /// Accept PID-guard warnings without asking (for scripts).
        #[arg(long)]
        allow_pid: bool,
        /// Print PID-guard findings as JSON when the message is held back.
        #[arg(long)]
        json: bool,
        /// Log it as a DECISION (signed, hash-chained).
        #[arg(long, conflicts_with = "action")]
        decision: bool,
        /// Log it as an ACTION (signed, hash-chained).
        #[arg(long)]
        action: bool,
    },
    /// The PID guard on its own.
    Pid {
        #[command(subcommand)]
        cmd: PidCmd,
    },
    /// Fetch and process everything pending, and send what waits in the outbox.
    Sync,
    /// Stay connected: show messages, alerts and incident levels as they
    /// arrive (reconnecting when the network drops), and send what you type.
    /// Other commands (e.g. `send` from another terminal) work meanwhile.
    Watch {
        /// Conversation that typed lines go to (all conversations are shown).
        name: Option<String>,
        /// Stop after this many seconds (for scripts; default: until Ctrl-C
        /// or end of input).
        #[arg(long)]
        for_secs: Option<u64>,
    },
    /// The passcode that unlocks this device's data.
    Passcode {
        #[command(subcommand)]
        cmd: PasscodeCmd,
    },
    /// Messages written and not yet stored by the server (the server could
    /// not be reached): they go out at the next `sync`.
    Outbox {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Where a message has got to, per member: delivered, read (when), and
    /// who has not seen it.
    Seen {
        /// Conversation name.
        name: String,
        /// Message id (or its first 8+ characters, as `history --json` shows).
        id: String,
        /// One JSON object per member.
        #[arg(long)]
        json: bool,
    },
    /// Show a conversation's messages, one per line.
    History {
        /// Conversation name.
        name: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// This user's devices, one per line, the device id first.
    Devices {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Remote-wipe another of your devices (lost, stolen, redeployed).
    Wipe {
        /// Device id (see `sitrep devices`).
        device: String,
    },
    /// Take on or hand back a role (e.g. the night medical registrar).
    Role {
        #[command(subcommand)]
        cmd: RoleCmd,
    },
    /// Major incidents: STANDBY, DECLARED (with METHANE), CANCELLED, STAND DOWN.
    Incident {
        #[command(subcommand)]
        cmd: IncidentCmd,
    },
    /// Staff call-in: reply, or see the live tally.
    Callin {
        #[command(subcommand)]
        cmd: CallinCmd,
    },
    /// Priority alerts that need acknowledgement (pager replacement).
    Alert {
        #[command(subcommand)]
        cmd: AlertCmd,
    },
    /// Acknowledge an alert.
    Ack {
        /// Alert id.
        id: String,
    },
    /// The signed, hash-chained decision and action log.
    Decisions {
        #[command(subcommand)]
        cmd: DecisionsCmd,
    },
    /// The casualty board (major-incident numbers, no names).
    Casualty {
        #[command(subcommand)]
        cmd: CasualtyCmd,
    },
    /// Records account: search and disclose what it recorded (audited).
    Records {
        #[command(subcommand)]
        cmd: RecordsCmd,
    },
    /// Transfer to the patient's health record.
    Record {
        #[command(subcommand)]
        cmd: RecordCmd,
    },
    /// Export your own conversations (right of access): export.json,
    /// export.html and a signed manifest.json in DIR.
    Export {
        /// Output directory (new or empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an export bundle: the signed manifest and every file's hash.
    Verify {
        /// The bundle directory.
        dir: PathBuf,
    },
    /// A scripted major-incident exercise against a real server with simulated
    /// staff: standby, declare, call-in, an escalating alert, decisions, stand down.
    Drill {
        /// Simulated staff on the call-out list.
        #[arg(long, default_value_t = 500)]
        staff: usize,
    },
    /// Measure the server and the MLS layer (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        cmd: sitrep_cli::bench::BenchCmd,
    },
    /// Print the server's OpenAPI 3.1 description (as GET /v1/openapi.json).
    Openapi,
}

#[derive(Subcommand)]
enum PasscodeCmd {
    /// Choose a new passcode (asked twice; scripts set SITREP_NEW_PASSCODE).
    /// The local data is sealed again under it.
    Change,
}

#[derive(Subcommand)]
enum RoleCmd {
    /// Take on a role.
    Take {
        /// Role id.
        role: String,
    },
    /// Hand a role back.
    Handback {
        /// Role id.
        role: String,
    },
    /// Roles and who holds them.
    List,
}

#[derive(clap::Args, Default)]
struct MethaneArgs {
    /// E: exact location.
    #[arg(long)]
    location: Option<String>,
    /// T: type of incident.
    #[arg(long = "type")]
    incident_type: Option<String>,
    /// H: hazards.
    #[arg(long)]
    hazards: Option<String>,
    /// A: access and egress.
    #[arg(long)]
    access: Option<String>,
    /// N: casualties: ESTIMATED or ESTIMATED,P1,P2,P3,DEAD.
    #[arg(long)]
    casualties: Option<String>,
    /// E: emergency services present and required.
    #[arg(long)]
    services: Option<String>,
}

#[derive(Subcommand)]
enum IncidentCmd {
    /// STANDBY: alert the standby call-out list (optional ETHANE report).
    Standby {
        /// Incident id, e.g. MI-2026-11-26.
        id: String,
        #[command(flatten)]
        ethane: MethaneArgs,
        /// Free text.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// DECLARED: a METHANE report (every field); opens the coordination group
    /// and command channel and calls in the DECLARED call-out list.
    Declare {
        /// Incident id.
        id: String,
        #[command(flatten)]
        methane: MethaneArgs,
        /// Free text.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// CANCELLED.
    Cancel {
        /// Incident id.
        id: String,
        /// Free text.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// STAND DOWN.
    StandDown {
        /// Incident id.
        id: String,
        /// Free text.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Incidents this device knows, with their level and timeline.
    Status {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CallinCmd {
    /// Answer the call-in: --now, --in MINUTES or --unavailable.
    Reply {
        /// Incident id.
        id: String,
        /// Available now.
        #[arg(long, conflicts_with_all = ["in_minutes", "unavailable"])]
        now: bool,
        /// Available in this many minutes.
        #[arg(long = "in")]
        in_minutes: Option<u32>,
        /// Not available.
        #[arg(long)]
        unavailable: bool,
        /// Role you would fill (default: your first role).
        #[arg(long)]
        role: Option<String>,
    },
    /// Live tally by role, and who has not replied.
    Status {
        /// Incident id.
        id: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AlertCmd {
    /// Send an alert to a person, role or team (user:ID, role:ID, team:ID or an id).
    Send {
        /// routine, urgent or emergency.
        #[arg(long, default_value = "urgent")]
        priority: String,
        /// Recipient.
        #[arg(long)]
        to: String,
        /// Escalate after this many seconds without acknowledgement.
        #[arg(long, default_value_t = 120)]
        ack_within: u32,
        /// Conversation to send in (default: alerts-<recipient>).
        #[arg(long = "in")]
        conversation: Option<String>,
        /// The text.
        text: String,
    },
    /// Per recipient: read, acknowledged, escalated.
    Status {
        /// Alert id.
        id: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Alerts waiting for your acknowledgement.
    Pending,
}

#[derive(Subcommand)]
enum DecisionsCmd {
    /// Write the decision log: FILE (JSON, verifiable) and FILE.md.
    Export {
        /// Conversation.
        name: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an exported log: signatures, chain, head.
    Verify {
        /// The JSON file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CasualtyCmd {
    /// Add a casualty.
    Add {
        /// Conversation.
        name: String,
        /// Major-incident number, e.g. MI-0001.
        mi: String,
        /// P1, P2, P3 or DEAD.
        #[arg(long)]
        triage: String,
        /// Where the casualty is.
        #[arg(long)]
        location: String,
        /// Update text.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Update a casualty (same fields).
    Update {
        /// Conversation.
        name: String,
        /// Major-incident number.
        mi: String,
        /// P1, P2, P3 or DEAD.
        #[arg(long)]
        triage: String,
        /// Where the casualty is.
        #[arg(long)]
        location: String,
        /// Update text.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The board.
    List {
        /// Conversation.
        name: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RecordsCmd {
    /// Find recorded messages: one match per line.
    Search {
        /// NHS number (any spacing), major-incident number (MI-0042),
        /// hospital number, or any text.
        #[arg(long)]
        identifier: Option<String>,
        /// Free text (case-insensitive).
        #[arg(long)]
        text: Option<String>,
        /// Sent on or after this date (YYYY-MM-DD, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Sent before this date (YYYY-MM-DD, UTC).
        #[arg(long)]
        to: Option<String>,
        /// Sender's user id.
        #[arg(long)]
        participant: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// A disclosure bundle for one identifier, other patients redacted.
    Export {
        /// NHS number or major-incident number.
        #[arg(long)]
        identifier: String,
        /// Output directory (new or empty): export.json, export.html, manifest.json.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum RecordCmd {
    /// Write messages as a FHIR R4 Communication for the patient's record,
    /// then mark them transferred in the conversation (and, by policy, delete them).
    Transfer {
        /// Conversation name.
        name: String,
        /// Message id (from `history NAME --json`); repeat or comma-separate.
        #[arg(long, required = true, value_delimiter = ',')]
        message: Vec<String>,
        /// The patient's NHS number, or a major-incident number.
        #[arg(long)]
        patient: String,
        /// Output file (FHIR JSON).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where an admin command goes: the server's data directory, or its API as
/// this profile's admin device.
#[derive(clap::Args, Debug)]
struct Target {
    /// Data directory of the server (on the server's machine).
    #[arg(long, default_value = "sitrep-data")]
    data: PathBuf,
    /// The server's URL instead: the request goes over the API as this
    /// profile's device, whose user needs an admin grant (and, where the
    /// policy asks, SITREP_ADMIN_TOTP or a prompt for the two-step code).
    #[arg(long, conflicts_with = "data")]
    server: Option<String>,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain and the organisation's signatures.
    Verify {
        #[command(flatten)]
        at: Target,
    },
    /// Print the audit log.
    Show {
        #[command(flatten)]
        at: Target,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PidCmd {
    /// Read one message per line on stdin; write one JSON object per line:
    /// {"findings":[{"kind":"nhs_number","start":B,"end":E,...}]}, byte offsets.
    Scan,
}

#[derive(Subcommand)]
enum AdminUserCmd {
    /// A leaver: revoke every device (each is removed from every
    /// conversation and wipes itself when it next connects) and cancel their
    /// enrolment codes. Works while the server runs.
    Disable {
        /// User id.
        user: String,
        #[command(flatten)]
        at: Target,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Print the device policy in force (JSON).
    Show {
        #[command(flatten)]
        at: Target,
    },
    /// Change the device policy: signed with the organisation key, taken up
    /// by every device at its next sync. Unset options keep their value.
    Set {
        #[command(flatten)]
        at: Target,
        /// Lock after this many seconds idle (10-3600; default 120).
        #[arg(long)]
        lock_after_idle: Option<u32>,
        /// Wrong passcodes before the device's data is wiped (1-100; default 10).
        #[arg(long)]
        max_failed_unlocks: Option<u8>,
        /// Shortest passcode (4-64; default 6).
        #[arg(long)]
        min_passcode: Option<u8>,
        /// Lock-screen previews: off, on or forbidden.
        #[arg(long)]
        previews: Option<String>,
        /// Ciphersuite for new devices: pq or classic.
        #[arg(long)]
        ciphersuite: Option<String>,
        /// Require two-step verification at unlock.
        #[arg(long)]
        two_step: Option<bool>,
        /// Retention for conversations that set none (e.g. 30d, 12h, 90m).
        #[arg(long)]
        retention_default: Option<String>,
        /// Longest retention a conversation may set.
        #[arg(long)]
        retention_max: Option<String>,
        /// How long the records account keeps records (0: until the records team deletes them).
        #[arg(long)]
        records_retention: Option<String>,
        /// Make every new conversation recorded.
        #[arg(long)]
        record_all: Option<bool>,
        /// Delete messages on every device once transferred to the health record.
        #[arg(long)]
        delete_after_transfer: Option<bool>,
    },
}

#[derive(Subcommand)]
enum AdminRoleCmd {
    /// Add or replace a role.
    Add {
        #[command(flatten)]
        at: Target,
        /// Role id.
        #[arg(long)]
        id: String,
        /// Name people see.
        #[arg(long)]
        name: String,
        /// Team id.
        #[arg(long)]
        team: String,
        /// Users holding it (they are made eligible too).
        #[arg(long, value_delimiter = ',')]
        holders: Vec<String>,
        /// Users who may take it themselves (`sitrep role take`).
        #[arg(long, value_delimiter = ',')]
        eligible: Vec<String>,
        /// Teams (`sitrep admin team`) whose members may take it.
        #[arg(long, value_delimiter = ',')]
        eligible_teams: Vec<String>,
        /// Role an unacknowledged alert escalates to.
        #[arg(long)]
        deputy: Option<String>,
        /// May raise incident levels.
        #[arg(long)]
        can_declare: bool,
        /// Posts in command channels.
        #[arg(long)]
        commander: bool,
    },
    /// Remove a role.
    Remove {
        #[command(flatten)]
        at: Target,
        /// Role id.
        #[arg(long)]
        id: String,
    },
    /// Print the directory (JSON).
    List {
        #[command(flatten)]
        at: Target,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Give a user admin rights over the API (`--server` from their own
    /// device); prints a TOTP secret for the two-step code the policy may ask for.
    Grant {
        /// User id (enrolled or invited).
        user: String,
        #[command(flatten)]
        at: Target,
    },
    /// Take a user's admin rights away.
    Ungrant {
        /// User id.
        user: String,
        #[command(flatten)]
        at: Target,
    },
    /// One enrolment code per member of staff from a CSV with the header
    /// user,name,role,team (team may be empty), written to a new owner-only
    /// file as user,name,role,team,code,expires_at. Every row is checked
    /// first; staff already enrolled or invited are skipped, so a stopped
    /// run is run again; teams are added to the directory.
    BulkInvite {
        /// The staff list.
        #[arg(long)]
        csv: PathBuf,
        /// The file to write the codes to (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Days each code stays valid (at most 30).
        #[arg(long, default_value_t = 14)]
        ttl_days: u64,
        #[command(flatten)]
        at: Target,
    },
    /// A new bearer token for the identity system's SCIM client (Entra ID:
    /// Provisioning, Tenant URL https://HOST/scim/v2, Secret Token); the
    /// previous token stops working. Shown once.
    ScimToken {
        #[command(flatten)]
        at: Target,
    },
    /// Who has admin rights.
    Admins {
        #[command(flatten)]
        at: Target,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Make a private CA and a TLS certificate for the server, for a trust
    /// with no PKI of its own (or a laptop when IT is down): `serve` takes
    /// the certificate and key, each device enrols with `--ca ca.pem`.
    TlsCert {
        /// Directory to write ca.pem, server-cert.pem and server-key.pem to.
        #[arg(long)]
        out: PathBuf,
        /// A DNS name or IP address devices reach the server by; repeat.
        #[arg(long, required = true)]
        name: Vec<String>,
    },
    /// Roles and teams of the organisation's directory (signed).
    Role {
        #[command(subcommand)]
        cmd: AdminRoleCmd,
    },
    /// Set a team's members (for who may take which role).
    Team {
        #[command(flatten)]
        at: Target,
        /// Team id.
        #[arg(long)]
        id: String,
        /// Its members' user ids (empty removes the team).
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Set the call-out list for a level.
    Callout {
        #[command(flatten)]
        at: Target,
        /// standby or declared.
        #[arg(long)]
        level: String,
        /// Role ids called at that level.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Name the organisation's records account (signed into the policy).
    Records {
        #[command(flatten)]
        at: Target,
        /// User id of the records account.
        #[arg(long)]
        user: String,
    },
    /// The organisation's audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Revoke a device and have it wipe itself (works while the server runs).
    Wipe {
        #[command(flatten)]
        at: Target,
        /// Device id.
        #[arg(long)]
        device: String,
    },
    /// Every user invited or enrolled: devices, open invitations, last seen.
    Users {
        #[command(flatten)]
        at: Target,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Every device, or one user's: enrolled, last seen, revoked.
    Devices {
        /// Only this user's.
        user: Option<String>,
        #[command(flatten)]
        at: Target,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// A user's account.
    User {
        #[command(subcommand)]
        cmd: AdminUserCmd,
    },
    /// Copy the store to a new file, consistent as of one moment, while the
    /// server runs. The organisation key (org.key) is not in it: keep that
    /// safe on its own.
    Backup {
        /// Data directory of the server.
        #[arg(long, default_value = "sitrep-data")]
        data: PathBuf,
        /// The file to write (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Put a backup in place of the store (the server stopped; the data
    /// directory initialised with the same organisation key). The replaced
    /// store is kept as sitrep.db.before-restore.
    Restore {
        /// Data directory of the server.
        #[arg(long, default_value = "sitrep-data")]
        data: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
    },
    /// The organisation's signed device policy.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Create a single-use, expiring enrolment code (printed on the last line).
    Invite {
        #[command(flatten)]
        at: Target,
        /// User id (letters, digits, `.`, `_`, `-`).
        #[arg(long)]
        user: String,
        /// Name colleagues see.
        #[arg(long)]
        name: String,
        /// Role, e.g. "ED consultant".
        #[arg(long)]
        role: String,
        /// Hours the code stays valid.
        #[arg(long, default_value_t = 72)]
        ttl_hours: u64,
    },
}

#[derive(Subcommand)]
enum ChatCmd {
    /// Create a conversation with the given users.
    Create {
        /// Conversation name (travels encrypted).
        name: String,
        /// Comma-separated user ids.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        /// PID guard policy: off, warn, block, pseudonymise.
        #[arg(long, default_value = "warn")]
        pid_policy: String,
        /// Add the organisation's records account as a visible member.
        #[arg(long)]
        recorded: bool,
        /// Delete messages this long after they are sent (e.g. 7d, 12h);
        /// the organisation's default when not given.
        #[arg(long)]
        retention: Option<String>,
    },
    /// Add users to a conversation.
    Add {
        /// Conversation name.
        name: String,
        /// User ids.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove a user (all their devices) from a conversation.
    Remove {
        /// Conversation name.
        name: String,
        /// User id.
        user: String,
    },
    /// Leave a conversation (nothing sent afterwards reaches this device).
    Leave {
        /// Conversation name.
        name: String,
    },
    /// Refresh this device's keys in a conversation.
    Update {
        /// Conversation name.
        name: String,
    },
    /// List conversations.
    List,
    /// Show a conversation's members (verified) and policy.
    Info {
        /// Conversation name.
        name: String,
    },
}

fn passcode() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("SITREP_PASSCODE") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("set SITREP_PASSCODE or run in a terminal to be asked for the passcode");
    }
    Ok(rpassword::prompt_password("Passcode: ")?)
}

/// A new passcode: from `env` (scripts), or typed twice at a terminal.
fn new_passcode(env: &str, what: &str) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var(env) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("set {env} or run in a terminal to be asked for the {what}");
    }
    for _ in 0..3 {
        let first = rpassword::prompt_password(format!("Choose a {what}: "))?;
        let again = rpassword::prompt_password(format!("Type the {what} again: "))?;
        if first == again {
            return Ok(first);
        }
        eprintln!("The two did not match; try again.");
    }
    bail!("the {what} was not confirmed: nothing was changed")
}

/// Unlock the profile: the passcode, and a TOTP code when the organisation
/// requires two-step verification (from SITREP_TOTP or a prompt). At a
/// terminal a wrong passcode or code may be typed again; every try counts
/// towards the organisation's limit, and the message says how many are left.
/// Where an admin command goes: the data directory, or the API as this
/// profile's device (unlocked here).
fn admin_target(profile: &std::path::Path, at: Target) -> anyhow::Result<sitrep_cli::admin::Admin> {
    match at.server {
        None => Ok(sitrep_cli::admin::Admin::Data(at.data)),
        Some(url) => {
            sitrep_cli::tls::check_url(&url)?;
            let p = open_profile(profile)?;
            sitrep_cli::admin::Admin::api(&p, &url)
        }
    }
}

fn valid_id_or_bail(id: &str) -> anyhow::Result<bool> {
    if !sitrep_wire::api::valid_id(id) {
        bail!("ids are 1-64 of letters, digits, '.', '_' and '-'");
    }
    Ok(true)
}

fn open_profile(dir: &std::path::Path) -> anyhow::Result<Profile> {
    use sitrep_core::UnlockError;
    let interactive = std::io::stdin().is_terminal();
    let from_env = std::env::var("SITREP_PASSCODE").is_ok();
    let mut pass = passcode()?;
    let mut code = std::env::var("SITREP_TOTP").ok();
    loop {
        let err = match Profile::open_with_code(dir, &pass, code.as_deref()) {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        if !interactive {
            return Err(err);
        }
        match err.downcast_ref::<UnlockError>() {
            Some(UnlockError::WrongPasscode { .. }) if !from_env => {
                eprintln!("{err}");
                pass = rpassword::prompt_password("Passcode: ")?;
            }
            Some(UnlockError::TwoStepRequired { .. }) if std::env::var("SITREP_TOTP").is_err() => {
                if code.is_some() {
                    eprintln!("{err}");
                }
                code = Some(rpassword::prompt_password("Authenticator code: ")?);
            }
            _ => return Err(err),
        }
    }
}

fn print_events(events: &[Event]) {
    for e in events {
        match e {
            Event::Joined { conversation } => println!("joined {conversation}"),
            Event::Message {
                conversation,
                entry,
            } => {
                let text = sitrep_core::incident::summary(&entry.kind, &entry.body);
                let flag = if entry.kind == "alert" {
                    " [ALERT]"
                } else {
                    ""
                };
                println!("[{conversation}]{flag} {}: {text}", entry.sender_name)
            }
            Event::Membership {
                conversation,
                summary,
            } => println!("[{conversation}] {summary}"),
            Event::Removed { conversation } => println!("removed from {conversation}"),
            Event::Refused { reason } => eprintln!("refused: {reason}"),
            _ => {}
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs: plain text, coloured only on a terminal, or one JSON object per
    // line with SITREP_LOG_FORMAT=json (for a log collector). They carry ids
    // and sizes, never message text, names or keys.
    // The server's settings: its file with the environment over it.
    let settings = match &cli.cmd {
        Cmd::Serve { config, .. } => {
            sitrep_cli::config::File::load(config.as_deref(), |k| std::env::var(k).ok())?
        }
        _ => sitrep_cli::config::File::default(),
    };
    let serve = matches!(cli.cmd, Cmd::Serve { .. });
    let level = std::env::var("SITREP_LOG")
        .ok()
        .or(settings.log.level.clone())
        // The server reports what it does; client commands stay quiet.
        .unwrap_or_else(|| if serve { "info" } else { "warn" }.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&level)
                .with_context(|| format!("log level {level:?} is not a tracing filter"))?,
        )
        .with_writer(std::io::stderr);
    let format = settings
        .log
        .format
        .clone()
        .or_else(|| std::env::var("SITREP_LOG_FORMAT").ok());
    match format.as_deref() {
        Some("json") => logs.json().init(),
        Some("text") | None => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        Some(other) => anyhow::bail!("SITREP_LOG_FORMAT is text or json, not {other:?}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let profile = cli.profile.clone();
    let result = rt.block_on(run(cli, settings));
    if let Err(e) = &result
        && sitrep_cli::is_wiped(e)
    {
        // Any command that learns the device was revoked destroys its data.
        let _ = sitrep_core::store::SqliteStore::new(&profile)
            .and_then(|s| sitrep_core::store::ProfileStore::destroy(&s));
        anyhow::bail!("{}", sitrep_cli::WIPED);
    }
    result
}

/// The state of one of this user's own messages: "sent" (the server stored
/// it), "delivered" (everyone has it), "read" (everyone has shown it), with
/// the tally when the server could be asked.
fn message_state(
    seq: u64,
    own: &str,
    receipts: Option<&sitrep_wire::api::Receipts>,
) -> (&'static str, Option<sitrep_wire::api::Tally>) {
    if seq == 0 {
        return ("sent", None);
    }
    let Some(r) = receipts else {
        return ("sent", None);
    };
    let t = r.tally(seq, own);
    let word = if t.recipients > 0 && t.read == t.recipients {
        "read"
    } else if t.recipients > 0 && t.delivered == t.recipients {
        "delivered"
    } else {
        "sent"
    };
    (word, Some(t))
}

async fn run(cli: Cli, settings: sitrep_cli::config::File) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init { data, org } => {
            let org = sitrep_server::org::Org::create(&data, &org)?;
            drop(sitrep_server::Db::open(&data)?);
            println!("created organisation {:?} in {}", org.name, data.display());
            println!("organisation key fingerprint: {}", org.fingerprint());
        }
        Cmd::Serve {
            data,
            listen,
            config: _,
            org_name,
            trusted_proxy,
            init,
            tls_cert,
            tls_key,
            plain_http,
            web,
        } => {
            let data = data
                .or(settings.data.clone())
                .unwrap_or_else(|| PathBuf::from("sitrep-data"));
            let listen = listen
                .or(settings.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8448)));
            let org_name = org_name
                .or(settings.org_name.clone())
                .unwrap_or_else(|| "Sitrep Organisation".into());
            let mut config = settings.server_config(data.clone())?;
            if !trusted_proxy.is_empty() {
                config.trusted_proxies = trusted_proxy;
            }
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                config.tls = Some(sitrep_server::TlsFiles { cert, key });
            }
            config.plain_http |= plain_http;
            if web.is_some() {
                config.web_dir = web;
            }
            let (org, created) = if init {
                sitrep_server::org::Org::open_or_create(&data, Some(&org_name))?
            } else {
                (sitrep_server::org::Org::open(&data)?, false)
            };
            if created {
                println!("created organisation {:?} in {}", org.name, data.display());
            }
            println!("organisation key fingerprint: {}", org.fingerprint());
            let stop = shutdown_signal()?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            println!("listening on {scheme}://{addr}");
            tracing::info!(
                listen = %addr,
                tls = config.tls.is_some(),
                org_fingerprint = %org.fingerprint(),
                version = env!("CARGO_PKG_VERSION"),
                "sitrep serve started"
            );
            let shutdown = async move {
                stop.await;
                tracing::info!("shutting down: finishing the requests in progress");
            };
            sitrep_server::run(listener, config, shutdown).await?;
            tracing::info!("sitrep serve stopped");
        }
        Cmd::Admin {
            cmd: AdminCmd::Policy { cmd },
        } => match cmd {
            PolicyCmd::Show { at } => {
                let p = admin_target(&cli.profile, at)?.policy().await?;
                println!("{}", policy_json(&p));
            }
            PolicyCmd::Set {
                at,
                lock_after_idle,
                max_failed_unlocks,
                min_passcode,
                previews,
                ciphersuite,
                two_step,
                retention_default,
                retention_max,
                records_retention,
                record_all,
                delete_after_transfer,
            } => {
                let admin = admin_target(&cli.profile, at)?;
                let mut p = admin.policy().await?;
                if let Some(v) = lock_after_idle {
                    p.lock_after_idle_secs = v;
                }
                if let Some(v) = max_failed_unlocks {
                    p.max_failed_unlocks = v;
                }
                if let Some(v) = min_passcode {
                    p.min_passcode_len = v;
                }
                if let Some(v) = previews {
                    p.previews = match v.as_str() {
                        "off" => sitrep_core::Previews::Off,
                        "on" => sitrep_core::Previews::On,
                        "forbidden" => sitrep_core::Previews::Forbidden,
                        _ => bail!("previews: off, on or forbidden"),
                    };
                }
                if let Some(v) = ciphersuite {
                    p.ciphersuite = u16::from(
                        sitrep_core::parse_ciphersuite(&v).context("unknown ciphersuite")?,
                    );
                }
                if let Some(v) = two_step {
                    p.two_step_required = v;
                }
                if let Some(v) = retention_default {
                    p.retention_default_secs = parse_duration(&v)?;
                }
                if let Some(v) = retention_max {
                    p.retention_max_secs = parse_duration(&v)?;
                }
                if let Some(v) = records_retention {
                    p.records_retention_secs = parse_duration(&v)?;
                }
                if let Some(v) = record_all {
                    p.record_all = v;
                }
                if let Some(v) = delete_after_transfer {
                    p.delete_after_transfer = v;
                }
                let p = admin.set_policy(p).await?;
                println!("{}", policy_json(&p));
            }
        },
        Cmd::Admin {
            cmd:
                AdminCmd::Invite {
                    at,
                    user,
                    name,
                    role,
                    ttl_hours,
                },
        } => {
            if !sitrep_wire::api::valid_id(&user) {
                bail!("user ids are 1-64 of letters, digits, '.', '_' and '-'");
            }
            if name.is_empty() || name.len() > 64 || role.is_empty() || role.len() > 64 {
                bail!("name and role are 1 to 64 bytes");
            }
            let admin = admin_target(&cli.profile, at)?;
            let (org_name, fingerprint) = admin.organisation()?;
            let code = admin
                .invite(&sitrep_server::admin::InviteRequest {
                    user_id: user.clone(),
                    display_name: name,
                    role,
                    ttl_secs: ttl_hours.saturating_mul(3600),
                })
                .await?;
            println!(
                "invitation for {user} to {org_name:?}, valid {ttl_hours} h, single use; the code names the organisation's key (fingerprint {fingerprint}), and a device refuses a server with another:"
            );
            println!("{code}");
        }
        Cmd::Enrol {
            server,
            code,
            ca,
            ciphersuite,
        } => {
            let cs = match ciphersuite {
                Some(c) => Some(sitrep_core::parse_ciphersuite(&c).context("unknown ciphersuite")?),
                None => None,
            };
            let ca = ca.as_deref().map(sitrep_cli::tls::read_ca).transpose()?;
            // Checked before the passcode is asked for.
            sitrep_cli::tls::check_url(&server)?;
            let pass = new_passcode("SITREP_PASSCODE", "passcode")?;
            let p = sitrep_cli::enrol_with_ca(&cli.profile, &server, &code, &pass, cs, ca).await?;
            if let Some(uri) = p.client.totp_uri() {
                println!(
                    "two-step verification: add this to an authenticator app; every unlock then asks for its 6-digit code (scripts set SITREP_TOTP)"
                );
                println!("{uri}");
                if let Ok(qr) = qrcode::QrCode::new(uri.as_bytes()) {
                    println!(
                        "{}",
                        qr.render::<qrcode::render::unicode::Dense1x2>()
                            .quiet_zone(true)
                            .build()
                    );
                }
            }
            println!(
                "enrolled {} ({}) as device {} of {}",
                p.client.display_name(),
                p.client.user_id(),
                p.client.device_id(),
                p.client.org_name()
            );
        }
        Cmd::Chat { cmd } => {
            let mut p = open_profile(&cli.profile)?;
            match cmd {
                ChatCmd::Create {
                    name,
                    members,
                    pid_policy,
                    recorded,
                    retention,
                } => {
                    let retention_secs = match retention {
                        Some(r) => parse_duration(&r)?,
                        None => 0,
                    };
                    let opts = sitrep_cli::ChatOptions {
                        pid_policy,
                        retention_secs,
                        recorded,
                    };
                    let events =
                        sitrep_cli::chat_create_with(&mut p, &name, &members, &opts).await?;
                    print_events(&events);
                    println!("created {name}");
                    if let Some(r) = p.client.recorded_by(&name)? {
                        println!("recorded by {r}");
                    }
                }
                ChatCmd::Add { name, users } => {
                    let events = sitrep_cli::chat_add(&mut p, &name, &users).await?;
                    print_events(&events);
                    println!("added {} to {name}", users.join(", "));
                }
                ChatCmd::Remove { name, user } => {
                    sitrep_cli::chat_remove(&mut p, &name, &user).await?;
                    println!("removed {user} from {name}");
                }
                ChatCmd::Leave { name } => {
                    sitrep_cli::chat_leave(&mut p, &name).await?;
                    println!("left {name}");
                }
                ChatCmd::Update { name } => {
                    sitrep_cli::chat_update(&mut p, &name).await?;
                    println!("keys refreshed in {name}");
                }
                ChatCmd::List => {
                    let own = p.client.user_id().to_string();
                    let rows: Vec<(String, usize, &str, String, usize)> = p
                        .client
                        .conversations()
                        .map(|c| {
                            let hex = sitrep_core::records::group_hex_of(c);
                            let status = if c.active {
                                "active"
                            } else if c
                                .history
                                .iter()
                                .rev()
                                .find(|h| h.kind == "system")
                                .is_some_and(|h| h.body.contains("you left"))
                            {
                                "left"
                            } else {
                                "ended"
                            };
                            let members =
                                p.client
                                    .members(&sitrep_core::short_id(&hex))
                                    .map_or(0, |m| {
                                        let mut u: Vec<String> =
                                            m.into_iter().map(|m| m.user_id).collect();
                                        u.sort();
                                        u.dedup();
                                        u.len()
                                    });
                            (
                                c.name.clone(),
                                sitrep_core::unread_in(c, &own),
                                status,
                                sitrep_core::short_id(&hex),
                                members,
                            )
                        })
                        .collect();
                    if rows.is_empty() {
                        println!("No conversations yet.");
                    } else {
                        let w = rows
                            .iter()
                            .map(|r| r.0.chars().count())
                            .max()
                            .unwrap_or(0)
                            .max(12);
                        println!(
                            "{:w$}  {:>6}  {:7}  {:>7}  ID",
                            "CONVERSATION", "UNREAD", "STATUS", "MEMBERS"
                        );
                        for (name, unread, status, id, members) in &rows {
                            let dup = rows.iter().filter(|r| &r.0 == name).count() > 1;
                            println!(
                                "{name:w$}  {unread:>6}  {status:7}  {members:>7}  {id}{}",
                                if dup {
                                    "  (name shared: use the id)"
                                } else {
                                    ""
                                }
                            );
                        }
                    }
                }
                ChatCmd::Info { name } => {
                    let conv = p.client.conversation(&name)?;
                    println!("conversation: {}", conv.name);
                    println!("PID policy: {}", conv.pid_policy);
                    match p.client.retention_secs(&name)? {
                        Some(s) => println!(
                            "retention: messages are deleted {} after they are sent",
                            human_secs(s)
                        ),
                        None => println!(
                            "retention: kept by the records account under the trust's records schedule"
                        ),
                    }
                    match p.client.recorded_by(&name)? {
                        Some(r) => println!(
                            "recorded by {r}: every message is kept by the organisation's records account"
                        ),
                        None if conv.recorded => println!(
                            "not recorded: created to be recorded, but the records account is not a member"
                        ),
                        None => println!("not recorded"),
                    }
                    for m in p.client.members(&name)? {
                        println!(
                            "member: {} ({}) {} device {}",
                            m.display_name, m.user_id, m.role, m.device_id
                        );
                    }
                    println!(
                        "every member's credential is signed by {:?}, key fingerprint {}",
                        p.client.org_name(),
                        p.client.org_fingerprint()
                    );
                }
            }
        }
        Cmd::Send {
            name,
            text,
            decision,
            action,
            ..
        } if decision || action => {
            use sitrep_wire::incident::DecisionKind;
            let kind = if decision {
                DecisionKind::Decision
            } else {
                DecisionKind::Action
            };
            let mut p = open_profile(&cli.profile)?;
            let id = sitrep_cli::incident::decide(&mut p, &name, kind, &text).await?;
            println!("{id}");
        }
        Cmd::Send {
            name,
            text,
            allow_pid,
            json,
            ..
        } => {
            let mut p = open_profile(&cli.profile)?;
            let mut confirmed = allow_pid;
            if !confirmed
                && let Err(sitrep_core::Error::PidNeedsConfirmation(findings)) =
                    p.client.pid_check(&name, &text, false)
            {
                show_findings(&text, &findings, json)?;
                confirmed = std::io::stdin().is_terminal() && ask("Send anyway? [y/N] ")?;
                if !confirmed {
                    bail!(
                        "not sent: the message may contain patient-identifiable data (use --allow-pid to send anyway)"
                    );
                }
            }
            match sitrep_cli::send_queued(&mut p, &name, &text, confirmed).await {
                Ok(sent) => {
                    println!("{}", sent.id);
                    if let Some(why) = sent.queued {
                        eprintln!(
                            "queued: the message is kept on this device and goes out at the next `sitrep sync` ({why})"
                        );
                    }
                }
                Err(e) => {
                    if let Some(sitrep_core::Error::PidBlocked(f)) =
                        e.downcast_ref::<sitrep_core::Error>()
                    {
                        show_findings(&text, f, json)?;
                    }
                    return Err(e);
                }
            }
        }
        Cmd::Pid { cmd: PidCmd::Scan } => {
            use std::io::{BufRead as _, Write as _};
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            for line in stdin.lock().split(b'\n') {
                let line = line?;
                let line = String::from_utf8_lossy(&line);
                let line = line.strip_suffix('\r').unwrap_or(&line);
                writeln!(out, "{}", sitrep_pid::scan_line_json(line))?;
            }
            out.flush()?;
        }
        Cmd::Outbox { json } => {
            let p = open_profile(&cli.profile)?;
            let waiting = p.client.waiting();
            if json {
                for w in &waiting {
                    println!("{}", serde_json::to_string(w)?);
                }
            } else if waiting.is_empty() {
                println!("Nothing waiting to be sent.");
            } else {
                let n = waiting.len();
                println!(
                    "{n} {} waiting to be sent (they go out at the next `sitrep sync`):",
                    if n == 1 { "message" } else { "messages" }
                );
                let width = waiting
                    .iter()
                    .map(|w| w.conversation.chars().count())
                    .max()
                    .unwrap_or(0);
                for w in &waiting {
                    println!(
                        "{}  {:width$}  {}  {}",
                        fmt_time(w.written_at),
                        w.conversation,
                        if w.encrypted { "sending" } else { "queued " },
                        w.body
                    );
                }
            }
        }
        Cmd::Passcode {
            cmd: PasscodeCmd::Change,
        } => {
            let mut p = open_profile(&cli.profile)?;
            let new = new_passcode("SITREP_NEW_PASSCODE", "new passcode")?;
            p.change_passcode(&new)?;
            println!("passcode changed: this device now unlocks with the new passcode only");
        }
        Cmd::Watch { name, for_secs } => {
            let p = open_profile(&cli.profile)?;
            watch::run(p, name, for_secs).await?;
        }
        Cmd::Sync => {
            let mut p = open_profile(&cli.profile)?;
            let events = sitrep_cli::sync(&mut p).await?;
            print_events(&events);
            let mut shown: Vec<String> = events
                .iter()
                .filter_map(|e| match e {
                    sitrep_core::Event::Message { conversation, .. } => Some(conversation.clone()),
                    _ => None,
                })
                .collect();
            shown.sort();
            shown.dedup();
            for name in &shown {
                let _ = p.client.mark_shown(name);
            }
            if !shown.is_empty() {
                p.save()?;
            }
            // Everything is fetched and kept; a marker not sent now goes
            // with the next one.
            if let Err(e) = sitrep_cli::mark_read(&p, &shown).await {
                tracing::warn!(error = %e, "read marker not sent");
            }
        }
        Cmd::Seen { name, id, json } => {
            let mut p = open_profile(&cli.profile)?;
            sitrep_cli::sync(&mut p).await?;
            let seen = sitrep_cli::message_status(&p, &name, &id).await?;
            for s in &seen {
                if json {
                    println!("{}", serde_json::to_string(s)?);
                } else {
                    let what = match (s.read_at, s.delivered) {
                        (Some(at), _) => format!("read {}", fmt_time(at * 1000)),
                        (None, true) => "delivered, not read".into(),
                        (None, false) => "not delivered".into(),
                    };
                    println!("{}\t{what}", s.user_id);
                }
            }
            if !json {
                let read = seen.iter().filter(|s| s.read_at.is_some()).count();
                let delivered = seen.iter().filter(|s| s.delivered).count();
                println!("read by {read} of {}, delivered to {delivered}", seen.len());
                let not: Vec<&str> = seen
                    .iter()
                    .filter(|s| s.read_at.is_none())
                    .map(|s| s.user_id.as_str())
                    .collect();
                if !not.is_empty() {
                    println!("not seen by: {}", not.join(", "));
                }
            }
        }
        Cmd::History { name, json } => {
            let mut p = open_profile(&cli.profile)?;
            // Shown now: tell the server, if it can be reached (the history
            // itself is local and shown either way), and ask how far the
            // others have got, for the state of this user's own messages.
            if let Err(e) = sitrep_cli::mark_read(&p, std::slice::from_ref(&name)).await {
                tracing::debug!(error = %e, "read marker not sent");
            }
            let receipts = match tokio::time::timeout(
                std::time::Duration::from_secs(3),
                sitrep_cli::receipts(&p, &name),
            )
            .await
            {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "receipts not fetched");
                    None
                }
                Err(_) => None,
            };
            let own = p.client.user_id().to_string();
            let conv = p.client.conversation(&name)?;
            let mut day = String::new();
            for h in &conv.history {
                let state = (h.sender == own && h.kind != "system")
                    .then(|| message_state(h.seq, &own, receipts.as_ref()));
                if json {
                    let mut v = serde_json::to_value(h)?;
                    if let Some((word, tally)) = &state {
                        v["state"] = serde_json::json!(word);
                        if let Some(t) = tally {
                            v["recipients"] = serde_json::json!(t.recipients);
                            v["delivered"] = serde_json::json!(t.delivered);
                            v["read"] = serde_json::json!(t.read);
                        }
                    }
                    println!("{v}");
                    continue;
                }
                let d = fmt_day(h.sent_at);
                if d != day {
                    if !day.is_empty() {
                        println!();
                    }
                    println!("-- {d} --");
                    day = d;
                }
                let suffix = match &state {
                    Some((word, Some(t))) if t.recipients > 0 => {
                        format!(
                            "  ({word}: read by {} of {}, delivered to {})",
                            t.read, t.recipients, t.delivered
                        )
                    }
                    Some((word, _)) => format!("  ({word})"),
                    None => String::new(),
                };
                println!(
                    "{} {}: {}{suffix}",
                    fmt_clock(h.sent_at),
                    h.sender_name,
                    sitrep_core::incident::summary(&h.kind, &h.body)
                );
            }
            // What this user wrote that has not gone out yet.
            let hex = p.client.group_hex(&name)?;
            let waiting: Vec<_> = p
                .client
                .waiting()
                .into_iter()
                .filter(|w| w.group_hex == hex)
                .collect();
            for w in &waiting {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"id": w.id, "sender": own, "kind": "text",
                            "body": w.body, "sent_at": w.written_at, "state": "queued"})
                    );
                } else {
                    println!(
                        "{} {}: {}  (queued: goes out when the server can be reached)",
                        fmt_clock(w.written_at),
                        p.client.display_name(),
                        w.body
                    );
                }
            }
            if !json && conv.history.is_empty() && waiting.is_empty() {
                println!("No messages in {name} yet.");
            }
            p.client.mark_shown(&name)?;
            p.save()?;
        }
        Cmd::Bench { cmd } => sitrep_cli::bench::run(cmd).await?,
        Cmd::Drill { staff } => sitrep_cli::drill::run(staff).await?,
        Cmd::Role { cmd } => {
            let mut p = open_profile(&cli.profile)?;
            match cmd {
                RoleCmd::Take { role } => {
                    sitrep_cli::incident::role_change(&mut p, &role, true).await?;
                    println!("you now hold {role}");
                }
                RoleCmd::Handback { role } => {
                    sitrep_cli::incident::role_change(&mut p, &role, false).await?;
                    println!("you handed back {role}");
                }
                RoleCmd::List => {
                    sitrep_cli::sync(&mut p).await?;
                    let d = p.client.directory();
                    for r in &d.roles {
                        let holders: Vec<&str> = d.holders(r).map(String::as_str).collect();
                        println!("{}\t{}\t{}\t{}", r.id, r.name, r.team, holders.join(","));
                    }
                }
            }
        }
        Cmd::Incident { cmd } => {
            use sitrep_wire::incident::Level;
            let mut p = open_profile(&cli.profile)?;
            let (id, level, methane, note) = match cmd {
                IncidentCmd::Standby { id, ethane, note } => {
                    let any = ethane.location.is_some() || ethane.incident_type.is_some();
                    let m = if any {
                        Some(methane_from(ethane, false)?)
                    } else {
                        None
                    };
                    (id, Level::Standby, m, note)
                }
                IncidentCmd::Declare { id, methane, note } => (
                    id,
                    Level::Declared,
                    Some(methane_from(methane, true)?),
                    note,
                ),
                IncidentCmd::Cancel { id, note } => (id, Level::Cancelled, None, note),
                IncidentCmd::StandDown { id, note } => (id, Level::StandDown, None, note),
                IncidentCmd::Status { json } => {
                    sitrep_cli::sync(&mut p).await?;
                    for i in p.client.incidents() {
                        if json {
                            println!("{}", serde_json::to_string(i)?);
                        } else {
                            println!("{}  {}", i.id, i.level);
                            for (l, at, by) in &i.timeline {
                                println!("  {}  {} by {by}", fmt_time(*at), l);
                            }
                        }
                    }
                    return Ok(());
                }
            };
            let r = sitrep_cli::incident::raise(&mut p, &id, level, methane, &note).await?;
            println!(
                "{level:?} {id}: {} called, {} without a device",
                r.called,
                r.unreachable.len()
            );
            for s in &r.skipped {
                eprintln!("refused: {s}");
            }
        }
        Cmd::Callin { cmd } => {
            let mut p = open_profile(&cli.profile)?;
            match cmd {
                CallinCmd::Reply {
                    id,
                    now,
                    in_minutes,
                    unavailable,
                    role,
                } => {
                    use sitrep_wire::incident::Availability;
                    let a = match (now, in_minutes, unavailable) {
                        (true, None, false) => Availability::Now,
                        (false, Some(m), false) => Availability::In(m),
                        (false, None, true) => Availability::Unavailable,
                        _ => bail!("give one of --now, --in MINUTES, --unavailable"),
                    };
                    sitrep_cli::incident::callin_reply(&mut p, &id, a, role).await?;
                    println!("replied to {id}");
                }
                CallinCmd::Status { id, json } => {
                    sitrep_cli::sync(&mut p).await?;
                    let t = p.client.callin_tally(&id)?;
                    if json {
                        println!("{}", serde_json::to_string(&t)?);
                    } else {
                        println!("{} replies, {} not replied", t.replies, t.not_replied.len());
                        for (role, r) in &t.by_role {
                            println!(
                                "{role}: {} now, {} later ({}), {} unavailable",
                                r.now,
                                r.later.len(),
                                r.later
                                    .iter()
                                    .map(|m| format!("{m} min"))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                r.unavailable
                            );
                        }
                        if !t.not_replied.is_empty() {
                            println!("not replied: {}", t.not_replied.join(", "));
                        }
                    }
                }
            }
        }
        Cmd::Alert { cmd } => {
            let mut p = open_profile(&cli.profile)?;
            match cmd {
                AlertCmd::Send {
                    priority,
                    to,
                    ack_within,
                    conversation,
                    text,
                } => {
                    use sitrep_wire::incident::Priority;
                    let pr = match priority.as_str() {
                        "routine" => Priority::Routine,
                        "urgent" => Priority::Urgent,
                        "emergency" => Priority::Emergency,
                        _ => bail!("priority: routine, urgent or emergency"),
                    };
                    let id = sitrep_cli::incident::alert_send(
                        &mut p,
                        &to,
                        pr,
                        &text,
                        ack_within,
                        conversation,
                    )
                    .await?;
                    println!("{id}");
                }
                AlertCmd::Status { id, json } => {
                    sitrep_cli::sync(&mut p).await?;
                    let st = p
                        .client
                        .alert_state(&id)
                        .context("no such alert on this device")?;
                    // Delivery is the server's to know (device cursors);
                    // read and acknowledged come end to end from the devices.
                    let conv = p
                        .client
                        .conversations()
                        .find(|c| sitrep_core::records::group_hex_of(c) == st.group)
                        .map(sitrep_core::records::group_hex_of);
                    let delivered: std::collections::BTreeSet<String> = match conv {
                        Some(c) => sitrep_cli::message_status(&p, &c, &id)
                            .await
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|s| s.delivered)
                            .map(|s| s.user_id)
                            .collect(),
                        None => Default::default(),
                    };
                    if json {
                        let mut v = serde_json::to_value(st)?;
                        v["delivered_to"] = serde_json::to_value(&delivered)?;
                        println!("{v}");
                    } else {
                        println!(
                            "{} alert to {}: {}",
                            st.alert.priority, st.alert.to, st.alert.text
                        );
                        // The recipients, then whoever each escalation step reached.
                        let mut rows: Vec<(String, String)> = st
                            .recipients
                            .iter()
                            .map(|r| (r.clone(), "recipient".to_string()))
                            .collect();
                        for (step, at, to) in &st.escalations {
                            for u in p.client.expand_target(to) {
                                if !rows.iter().any(|(r, _)| *r == u) {
                                    rows.push((
                                        u,
                                        format!("escalated (step {step}) {}", fmt_time(*at)),
                                    ));
                                }
                            }
                        }
                        for (r, how) in &rows {
                            let read = match (st.read_by.contains(r), delivered.contains(r)) {
                                (true, _) => "delivered\tread",
                                (false, true) => "delivered\tnot read",
                                (false, false) => "not delivered\tnot read",
                            };
                            let acked = match &st.acked {
                                Some((u, at)) if u == r => {
                                    format!("acknowledged {}", fmt_time(*at))
                                }
                                _ => "not acknowledged".into(),
                            };
                            println!("{r}\t{how}\t{read}\t{acked}");
                        }
                        if let Some((u, at)) = &st.acked {
                            println!("acknowledged by {u} at {}", fmt_time(*at));
                        }
                        for (step, at, to) in &st.escalations {
                            println!("escalated (step {step}) to {to:?} at {}", fmt_time(*at));
                        }
                    }
                }
                AlertCmd::Pending => {
                    sitrep_cli::sync(&mut p).await?;
                    for (id, a) in p.client.alerts_for_me(now_ms()) {
                        let bt = if a.alert.breakthrough {
                            " [BREAK-THROUGH]"
                        } else {
                            ""
                        };
                        println!(
                            "{id}\t{}{bt}\tfrom {}\t{}",
                            a.alert.priority, a.sender, a.alert.text
                        );
                    }
                }
            }
        }
        Cmd::Ack { id } => {
            let mut p = open_profile(&cli.profile)?;
            sitrep_cli::incident::ack(&mut p, &id).await?;
            println!("acknowledged {id}");
        }
        Cmd::Decisions { cmd } => match cmd {
            DecisionsCmd::Export { name, out } => {
                let mut p = open_profile(&cli.profile)?;
                let n = sitrep_cli::incident::decisions_export(&mut p, &name, &out).await?;
                println!(
                    "wrote {} ({n} entries) and {}.md",
                    out.display(),
                    out.display()
                );
            }
            DecisionsCmd::Verify { file } => {
                let bytes = std::fs::read(&file)?;
                let n = sitrep_core::incident::verify_decision_log(&bytes)
                    .map_err(|e| anyhow::anyhow!("decision log FAILED verification: {e}"))?;
                println!(
                    "decision log verified: {n} entries, each signed by its author, none changed, removed or reordered"
                );
            }
        },
        Cmd::Casualty { cmd } => {
            let mut p = open_profile(&cli.profile)?;
            match cmd {
                CasualtyCmd::Add {
                    name,
                    mi,
                    triage,
                    location,
                    note,
                }
                | CasualtyCmd::Update {
                    name,
                    mi,
                    triage,
                    location,
                    note,
                } => {
                    use sitrep_wire::incident::Triage;
                    let t = match triage.to_ascii_uppercase().as_str() {
                        "P1" => Triage::P1,
                        "P2" => Triage::P2,
                        "P3" => Triage::P3,
                        "DEAD" => Triage::Dead,
                        _ => bail!("triage: P1, P2, P3 or DEAD"),
                    };
                    let c = sitrep_wire::incident::Casualty {
                        mi: mi.clone(),
                        triage: t,
                        location,
                        note,
                    };
                    sitrep_cli::incident::casualty(&mut p, &name, c).await?;
                    println!("{mi} recorded");
                }
                CasualtyCmd::List { name, json } => {
                    sitrep_cli::sync(&mut p).await?;
                    for (c, at, by) in p.client.casualties(&name)? {
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({"casualty": c, "updated_at": at, "by": by})
                            );
                        } else {
                            println!(
                                "{}\t{}\t{}\t{}\t{} by {by}",
                                c.mi,
                                c.triage,
                                c.location,
                                c.note,
                                fmt_time(at)
                            );
                        }
                    }
                }
            }
        }
        Cmd::Admin {
            cmd: AdminCmd::Role { cmd },
        } => match cmd {
            AdminRoleCmd::Add {
                at,
                id,
                name,
                team,
                holders,
                eligible,
                eligible_teams,
                deputy,
                can_declare,
                commander,
            } => {
                let d = admin_target(&cli.profile, at)?
                    .update_directory("role.set", |d| {
                        d.roles.retain(|r| r.id != id);
                        let mut eligible = eligible.clone();
                        for h in &holders {
                            if !eligible.contains(h) {
                                eligible.push(h.clone());
                            }
                        }
                        d.roles.push(sitrep_wire::directory::Role {
                            id: id.clone(),
                            name: name.clone(),
                            team: team.clone(),
                            holders: holders.clone(),
                            deputy: deputy.clone(),
                            can_declare,
                            commander,
                            eligible,
                            eligible_teams: eligible_teams.clone(),
                        });
                        Ok(format!("role={id}"))
                    })
                    .await?;
                println!("role {id} set (directory serial {})", d.serial);
            }
            AdminRoleCmd::Remove { at, id } => {
                let d = admin_target(&cli.profile, at)?
                    .update_directory("role.remove", |d| {
                        d.roles.retain(|r| r.id != id);
                        d.callout_standby.retain(|r| *r != id);
                        d.callout_declared.retain(|r| *r != id);
                        Ok(format!("role={id}"))
                    })
                    .await?;
                println!("role {id} removed (directory serial {})", d.serial);
            }
            AdminRoleCmd::List { at } => {
                let d = admin_target(&cli.profile, at)?.directory().await?;
                println!("{}", serde_json::to_string_pretty(&d)?);
            }
        },
        Cmd::Admin {
            cmd: AdminCmd::Team { at, id, members },
        } => {
            let d = admin_target(&cli.profile, at)?
                .update_directory("team.set", |d| {
                    d.teams.retain(|t| t.id != id);
                    if !members.is_empty() {
                        d.teams.push(sitrep_wire::directory::Team {
                            id: id.clone(),
                            members: members.clone(),
                        });
                    }
                    Ok(format!("team={id}"))
                })
                .await?;
            println!("team {id} set (directory serial {})", d.serial);
        }
        Cmd::Admin {
            cmd: AdminCmd::Callout { at, level, roles },
        } => {
            let lvl = level.clone();
            let d = admin_target(&cli.profile, at)?
                .update_directory("callout.set", |d| {
                    match lvl.as_str() {
                        "standby" => d.callout_standby = roles.clone(),
                        "declared" => d.callout_declared = roles.clone(),
                        _ => {
                            return Err(sitrep_wire::directory::DirectoryError::Invalid(
                                "level: standby or declared",
                            ));
                        }
                    }
                    Ok(format!("level={lvl} roles={}", roles.join(",")))
                })
                .await?;
            println!(
                "call-out list for {level} set (directory serial {})",
                d.serial
            );
        }
        Cmd::Records {
            cmd:
                RecordsCmd::Search {
                    identifier,
                    text,
                    from,
                    to,
                    participant,
                    json,
                },
        } => {
            let mut p = open_profile(&cli.profile)?;
            let q = sitrep_core::RecordsQuery {
                identifier,
                text,
                from_ms: from.as_deref().map(parse_date).transpose()?,
                to_ms: to.as_deref().map(parse_date).transpose()?,
                participant,
            };
            if q.identifier.is_none() && q.text.is_none() && q.participant.is_none() {
                bail!("give --identifier, --text or --participant");
            }
            for m in sitrep_cli::records::records_search(&mut p, &q).await? {
                if json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    println!(
                        "{} [{}] {} ({}): {}",
                        fmt_time(m.entry.sent_at),
                        m.conversation,
                        m.entry.sender_name,
                        m.entry.sender,
                        m.entry.body
                    );
                }
            }
        }
        Cmd::Records {
            cmd: RecordsCmd::Export { identifier, out },
        } => {
            let mut p = open_profile(&cli.profile)?;
            let files = sitrep_cli::records::records_export(&mut p, &identifier, &out).await?;
            for f in files {
                println!("{}", out.join(f.name).display());
            }
        }
        Cmd::Record {
            cmd:
                RecordCmd::Transfer {
                    name,
                    message,
                    patient,
                    out,
                },
        } => {
            let mut p = open_profile(&cli.profile)?;
            let patient = sitrep_cli::records::Patient::parse(&patient)?;
            sitrep_cli::records::record_transfer(&mut p, &name, &message, &patient, &out).await?;
            println!(
                "wrote {} ({} message(s)); marked transferred in {name}",
                out.display(),
                message.len()
            );
        }
        Cmd::Export { out } => {
            let mut p = open_profile(&cli.profile)?;
            let files = sitrep_cli::records::personal_export(&mut p, &out).await?;
            for f in files {
                println!("{}", out.join(f.name).display());
            }
        }
        Cmd::Verify { dir } => {
            let v = sitrep_cli::records::verify_bundle(&dir)?;
            println!(
                "verified: {} file(s), {} export made {} by {} ({}, device {}), audit entry {}, organisation key {}",
                v.manifest.files.len(),
                v.manifest.kind,
                v.manifest.created_at,
                v.signer_name,
                v.manifest.created_by,
                v.manifest.device,
                v.manifest.audit_seq,
                v.manifest.org_fingerprint
            );
        }
        Cmd::Admin {
            cmd: AdminCmd::Records { at, user },
        } => {
            if !sitrep_wire::api::valid_id(&user) {
                bail!("user ids are 1-64 of letters, digits, '.', '_' and '-'");
            }
            let admin = admin_target(&cli.profile, at)?;
            let mut p = admin.policy().await?;
            p.records_user = Some(user.clone());
            let p = admin.set_policy(p).await?;
            // Over the API the server's `policy.set` entry records it.
            if let sitrep_cli::admin::Admin::Data(data) = &admin {
                sitrep_server::audit_dir(
                    data,
                    &sitrep_server::admin_actor(),
                    "records.account",
                    &format!("user={user}"),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            println!(
                "records account: {user} (policy serial {}); devices take it up at their next sync",
                p.serial
            );
        }
        Cmd::Admin {
            cmd: AdminCmd::Audit { cmd },
        } => match cmd {
            AuditCmd::Verify { at } => {
                let n = match at.server {
                    None => {
                        sitrep_cli::admin::Admin::Data(at.data)
                            .verify_audit()
                            .await?
                            .0
                    }
                    Some(url) => {
                        sitrep_cli::tls::check_url(&url)?;
                        let mut p = open_profile(&cli.profile)?;
                        let (n, last) = sitrep_cli::admin::Admin::api(&p, &url)?
                            .verify_audit()
                            .await?;
                        if let Some((seq, hash)) = last {
                            p.client.set_audit_pin(seq, hash);
                            p.save()?;
                        }
                        n
                    }
                };
                println!(
                    "audit log verified: {n} entries, chained and signed by the organisation key"
                );
            }
            AuditCmd::Show { at, json } => {
                for e in admin_target(&cli.profile, at)?.audit().await? {
                    if json {
                        println!("{}", serde_json::to_string(&e)?);
                    } else {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            e.seq,
                            fmt_time(e.at * 1000),
                            e.actor,
                            e.action,
                            e.detail
                        );
                    }
                }
            }
        },
        Cmd::Devices { json } => {
            let p = open_profile(&cli.profile)?;
            for d in sitrep_cli::devices(&p).await? {
                if json {
                    println!("{}", serde_json::to_string(&d)?);
                } else {
                    let state = if d.revoked_at.is_some() {
                        "wiped"
                    } else {
                        "active"
                    };
                    let me = if d.this_device { " (this device)" } else { "" };
                    println!(
                        "{}\t{state}\tenrolled {}{me}",
                        d.device_id,
                        fmt_secs(d.enrolled_at)
                    );
                }
            }
            if !json {
                println!(
                    "organisation {:?}, key fingerprint {} (compare it with the one your admin has)",
                    p.client.org_name(),
                    p.client.org_fingerprint()
                );
            }
        }
        Cmd::Wipe { device } => {
            let p = open_profile(&cli.profile)?;
            sitrep_cli::wipe_device(&p, &device).await?;
            println!(
                "device {device} revoked: it is removed from its conversations and wipes itself when it next connects"
            );
        }
        Cmd::Admin {
            cmd: AdminCmd::TlsCert { out, name },
        } => {
            if out.join("server-key.pem").exists() {
                anyhow::bail!(
                    "{} already holds a server key; choose another directory",
                    out.display()
                );
            }
            let names: Vec<&str> = name.iter().map(String::as_str).collect();
            let ca = sitrep_cli::tls::make_private_ca(&out, &names)?;
            println!(
                "CA certificate (for `sitrep enrol --ca`): {}",
                ca.ca_file.display()
            );
            println!(
                "server: sitrep serve --tls-cert {} --tls-key {}",
                ca.files.cert.display(),
                ca.files.key.display()
            );
        }
        Cmd::Admin {
            cmd: AdminCmd::Backup { data, out },
        } => {
            let b = sitrep_server::backup(&data, &out)?;
            println!(
                "backup written to {} ({} bytes, through position {} of the log, organisation {})",
                out.display(),
                b.bytes,
                b.last_seq,
                b.org_fingerprint
            );
        }
        Cmd::Admin {
            cmd: AdminCmd::Restore { data, from },
        } => {
            let b = sitrep_server::restore(&data, &from)?;
            println!(
                "restored {} (taken {}, through position {} of the log); start the server again",
                from.display(),
                fmt_secs(b.taken_at),
                b.last_seq
            );
        }
        Cmd::Admin {
            cmd: AdminCmd::Users { at, json },
        } => {
            let users = admin_target(&cli.profile, at)?.users().await?;
            if json {
                print_json_lines(&users)?;
            } else {
                let mut rows = vec![[
                    "USER".to_string(),
                    "NAME".into(),
                    "ROLE".into(),
                    "DEVICES".into(),
                    "LAST SEEN".into(),
                ]];
                for u in &users {
                    let devices = match (u.active_devices, u.revoked_devices, u.open_invites) {
                        (0, 0, i) if i > 0 => "invited, not enrolled".to_string(),
                        (0, r, _) if r > 0 => "disabled".into(),
                        (a, r, _) => {
                            let mut d = format!("{a} active");
                            if r > 0 {
                                d.push_str(&format!(", {r} revoked"));
                            }
                            d
                        }
                    };
                    rows.push([
                        u.user_id.clone(),
                        u.display_name.clone(),
                        u.role.clone(),
                        devices,
                        fmt_seen(u.last_seen),
                    ]);
                }
                print_columns(&rows);
            }
        }
        Cmd::Admin {
            cmd: AdminCmd::Devices { user, at, json },
        } => {
            if let Some(u) = &user
                && !sitrep_wire::api::valid_id(u)
            {
                bail!("user ids are 1-64 of letters, digits, '.', '_' and '-'");
            }
            let devices = admin_target(&cli.profile, at)?
                .devices(user.as_deref())
                .await?;
            if json {
                print_json_lines(&devices)?;
            } else {
                let mut rows = vec![[
                    "DEVICE".to_string(),
                    "USER".into(),
                    "ENROLLED".into(),
                    "LAST SEEN".into(),
                    "STATE".into(),
                ]];
                for d in &devices {
                    rows.push([
                        d.device_id.clone(),
                        d.user_id.clone(),
                        fmt_secs(d.enrolled_at),
                        fmt_seen(d.last_seen),
                        d.revoked_at.map_or_else(
                            || "active".into(),
                            |t| format!("revoked {}", fmt_secs(t)),
                        ),
                    ]);
                }
                print_columns(&rows);
            }
        }
        Cmd::Admin {
            cmd:
                AdminCmd::User {
                    cmd: AdminUserCmd::Disable { user, at },
                },
        } => match admin_target(&cli.profile, at)?.disable(&user).await? {
            None => bail!("no user {user:?} was ever invited"),
            Some(d) => println!(
                "{user} disabled: {} revoked (each is removed from its conversations and wipes itself when it next connects), {} cancelled",
                plural(d.devices_revoked as usize, "device", "devices"),
                plural(
                    d.invites_cancelled as usize,
                    "enrolment code",
                    "enrolment codes"
                ),
            ),
        },
        Cmd::Admin {
            cmd: AdminCmd::Grant { user, at },
        } => {
            valid_id_or_bail(&user)?;
            let Some(g) = admin_target(&cli.profile, at)?.grant(&user).await? else {
                bail!("no user {user:?} is enrolled or invited");
            };
            println!(
                "{user} may now administer from their enrolled devices (sitrep admin ... --server URL)."
            );
            println!(
                "Their two-step secret, for an authenticator app (asked for when the policy requires two-step verification; shown only now):"
            );
            println!("{}", g.otpauth_uri);
            if let Ok(qr) = qrcode::QrCode::new(g.otpauth_uri.as_bytes()) {
                println!(
                    "{}",
                    qr.render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build()
                );
            }
        }
        Cmd::Admin {
            cmd: AdminCmd::Ungrant { user, at },
        } => {
            valid_id_or_bail(&user)?;
            if !admin_target(&cli.profile, at)?.ungrant(&user).await? {
                bail!("{user} has no admin grant");
            }
            println!("{user} no longer has admin rights");
        }
        Cmd::Openapi => {
            use std::io::Write as _;
            let json = sitrep_server::openapi::document().to_pretty_json()?;
            // A reader that stops early (`| head`) is not an error.
            match writeln!(std::io::stdout(), "{json}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                _ => {}
            }
        }
        Cmd::Admin {
            cmd:
                AdminCmd::BulkInvite {
                    csv,
                    out,
                    ttl_days,
                    at,
                },
        } => {
            if ttl_days == 0 || ttl_days > 30 {
                bail!("--ttl-days is 1 to 30");
            }
            let bytes =
                std::fs::read(&csv).with_context(|| format!("cannot read {}", csv.display()))?;
            let staff = sitrep_cli::bulk::parse(&bytes)?;
            let admin = admin_target(&cli.profile, at)?;
            let (org_name, fingerprint) = admin.organisation()?;
            let r = sitrep_cli::bulk::invite_all(&admin, &staff, &out, ttl_days * 86_400).await?;
            println!(
                "{} codes for {org_name:?} (key fingerprint {fingerprint}) written to {}, valid {ttl_days} days, single use",
                r.invited,
                out.display()
            );
            if !r.skipped.is_empty() {
                println!(
                    "{} already enrolled or holding an open code, skipped: {}",
                    r.skipped.len(),
                    r.skipped.join(", ")
                );
            }
            if !r.refused.is_empty() {
                println!(
                    "{} disabled or deactivated in the identity system, no code (use admin invite if meant): {}",
                    r.refused.len(),
                    r.refused.join(", ")
                );
            }
            if r.teams > 0 {
                println!("{} teams updated in the directory", r.teams);
            }
        }
        Cmd::Admin {
            cmd: AdminCmd::ScimToken { at },
        } => {
            let token = admin_target(&cli.profile, at)?.scim_token().await?;
            eprintln!(
                "SCIM token (shown only now; the previous one no longer works). The tenant URL is the server's address followed by /scim/v2."
            );
            println!("{token}");
        }
        Cmd::Admin {
            cmd: AdminCmd::Admins { at, json },
        } => {
            let admins = admin_target(&cli.profile, at)?.admins().await?;
            if json {
                print_json_lines(&admins)?;
            } else {
                let mut rows = vec![["USER".to_string(), "GRANTED".into(), "BY".into()]];
                for a in &admins {
                    rows.push([
                        a.user_id.clone(),
                        fmt_secs(a.granted_at),
                        a.granted_by.clone(),
                    ]);
                }
                print_columns(&rows);
            }
        }
        Cmd::Admin {
            cmd: AdminCmd::Wipe { at, device },
        } => {
            if !valid_id_or_bail(&device)? || !admin_target(&cli.profile, at)?.wipe(&device).await?
            {
                bail!("no device {device}");
            }
            println!(
                "device {device} revoked: refused from now on, removed from its conversations within seconds, wiped when it next connects"
            );
        }
    }
    let _ = now_ms;
    Ok(())
}

fn policy_json(p: &sitrep_core::OrgPolicy) -> String {
    serde_json::json!({
        "serial": p.serial,
        "ciphersuite": format!("0x{:04X}", p.ciphersuite),
        "min_passcode_len": p.min_passcode_len,
        "lock_after_idle_secs": p.lock_after_idle_secs,
        "max_failed_unlocks": p.max_failed_unlocks,
        "previews": p.previews,
        "argon2": { "m_kib": p.argon2.0, "t": p.argon2.1, "p": p.argon2.2 },
        "two_step_required": p.two_step_required,
        "retention_default_secs": p.retention_default_secs,
        "retention_max_secs": p.retention_max_secs,
        "records_user": p.records_user,
        "record_all": p.record_all,
        "records_retention_secs": p.records_retention_secs,
        "delete_after_transfer": p.delete_after_transfer,
    })
    .to_string()
}

/// Show PID-guard findings: JSON, or the message with each finding highlighted.
fn show_findings(text: &str, findings: &[sitrep_pid::Finding], json: bool) -> anyhow::Result<()> {
    if json {
        eprintln!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "findings": findings }))?
        );
        return Ok(());
    }
    let colour = std::io::stderr().is_terminal();
    let mut shown = String::new();
    let mut at = 0;
    for f in findings {
        if f.start < at
            || f.end > text.len()
            || !text.is_char_boundary(f.start)
            || !text.is_char_boundary(f.end)
        {
            continue;
        }
        shown.push_str(&text[at..f.start]);
        if colour {
            shown.push_str(&format!("\x1b[1;37;41m{}\x1b[0m", &text[f.start..f.end]));
        } else {
            shown.push_str(&format!("[[{}]]", &text[f.start..f.end]));
        }
        at = f.end;
    }
    shown.push_str(&text[at..]);
    eprintln!("PID guard: this message may identify a patient:");
    eprintln!("  {shown}");
    for f in findings {
        eprintln!(
            "  - {} (confidence {:.2}); suggested: {}",
            f.kind.as_str(),
            f.confidence,
            f.replacement
        );
    }
    Ok(())
}

fn ask(prompt: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// The local time zone (`TZ`, else the system's), looked up once.
fn zone() -> &'static jiff::tz::TimeZone {
    static ZONE: std::sync::OnceLock<jiff::tz::TimeZone> = std::sync::OnceLock::new();
    ZONE.get_or_init(|| jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC))
}

fn local(ms: u64) -> jiff::ZonedDateTime {
    let ts = i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.to_zoned_datetime(zone().clone())
}

/// A moment in local time with its date: "Wed 2 Dec 2026 18:34:07 GMT".
fn fmt_time(ms: u64) -> String {
    local(ms).strftime("%a %-d %b %Y %H:%M:%S %Z").to_string()
}

/// The time of day only, for lines under a day heading: "18:34".
fn fmt_clock(ms: u64) -> String {
    local(ms).strftime("%H:%M").to_string()
}

/// A day heading: "Wednesday 2 December 2026".
fn fmt_day(ms: u64) -> String {
    local(ms).strftime("%A %-d %B %Y").to_string()
}

/// SIGINT (Ctrl-C) or SIGTERM (a service manager's stop), listened for
/// from the moment this is called (before the port is bound, so a stop sent
/// as soon as the server answers is not missed).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// A time given in seconds, in local time.
fn fmt_secs(secs: u64) -> String {
    fmt_time(secs.saturating_mul(1000))
}

/// When last seen (seconds), or never.
fn fmt_seen(secs: Option<u64>) -> String {
    secs.map_or_else(|| "never".into(), fmt_secs)
}

/// One JSON object per line.
fn print_json_lines<T: serde::Serialize>(items: &[T]) -> anyhow::Result<()> {
    for i in items {
        println!("{}", serde_json::to_string(i)?);
    }
    Ok(())
}

/// Rows in aligned columns (the last one not padded).
fn print_columns<const N: usize>(rows: &[[String; N]]) {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "30d", "12h", "90m", "45s" or plain seconds.
fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration (e.g. 30d, 12h, 90m, 45s)"))?;
    n.checked_mul(mult).context("duration too long")
}

fn human_secs(s: u64) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// YYYY-MM-DD (UTC midnight) to ms since the Unix epoch.
fn parse_date(s: &str) -> anyhow::Result<u64> {
    let parts: Vec<&str> = s.split('-').collect();
    let bad = || anyhow::anyhow!("{s:?} is not a date (YYYY-MM-DD)");
    if parts.len() != 3 {
        return Err(bad());
    }
    let y: i64 = parts[0].parse().map_err(|_| bad())?;
    let m: i64 = parts[1].parse().map_err(|_| bad())?;
    let d: i64 = parts[2].parse().map_err(|_| bad())?;
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days as u64 * 86_400_000)
}

fn methane_from(a: MethaneArgs, major: bool) -> anyhow::Result<sitrep_wire::incident::Methane> {
    let need = |v: Option<String>, what: &str| v.with_context(|| format!("METHANE needs --{what}"));
    let cas = need(a.casualties, "casualties")?;
    let n: Vec<u32> = cas
        .split(',')
        .map(|x| x.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .context("--casualties: ESTIMATED or ESTIMATED,P1,P2,P3,DEAD")?;
    let casualties = match n.as_slice() {
        [e] => sitrep_wire::incident::Casualties {
            estimated: *e,
            ..Default::default()
        },
        [e, p1, p2, p3, d] => sitrep_wire::incident::Casualties {
            estimated: *e,
            p1: *p1,
            p2: *p2,
            p3: *p3,
            dead: *d,
        },
        _ => bail!("--casualties: ESTIMATED or ESTIMATED,P1,P2,P3,DEAD"),
    };
    let m = sitrep_wire::incident::Methane {
        major_incident: major,
        exact_location: need(a.location, "location")?,
        incident_type: need(a.incident_type, "type")?,
        hazards: need(a.hazards, "hazards")?,
        access: need(a.access, "access")?,
        casualties,
        emergency_services: need(a.services, "services")?,
    };
    m.validate()?;
    Ok(m)
}
