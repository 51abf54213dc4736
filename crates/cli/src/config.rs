//! The server's configuration file (`sitrep serve --config FILE`, TOML):
//! every setting in one place, documented in `docs/configuration.md` with
//! its default. Unknown keys are errors. Each key can also be set in the
//! environment: `SITREP_<KEY>` for a top-level key, `SITREP_<SECTION>_<KEY>`
//! for one in a section (e.g. `SITREP_LIMITS_RATE_PER_SEC=500`). A
//! command-line flag wins over the environment, which wins over the file,
//! which wins over the default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The file, as written (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Data directory (made by `sitrep init`).
    pub data: Option<PathBuf>,
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// Name for `serve --init` when the directory is new.
    pub org_name: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Option<Vec<IpAddr>>,
    /// Sizes and rates.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts, in seconds.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// TLS.
    #[serde(default)]
    pub tls: Tls,
    /// `/metrics`.
    #[serde(default)]
    pub metrics: Metrics,
    /// The web app.
    #[serde(default)]
    pub web: Web,
    /// Web Push.
    #[serde(default)]
    pub push: Push,
}

/// `[push]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// Push service hosts endpoints may name (replaces the default list).
    pub allowed_hosts: Option<Vec<String>>,
    /// The VAPID contact (`mailto:` or `https:`).
    pub contact: Option<String>,
}

/// `[web]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Web {
    /// The built web app (`web/dist`, made by `web/build.sh`), served at `/`.
    pub dir: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File holding the bearer token a scraper off loopback sends.
    pub token_file: Option<PathBuf>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate chain, PEM, leaf first (re-read on SIGHUP).
    pub cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub key: Option<PathBuf>,
    /// Plain HTTP on a non-loopback address (behind a TLS-terminating proxy).
    pub plain_http: Option<bool>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest commit or KeyPackage upload body, bytes.
    pub max_body_bytes: Option<usize>,
    /// Largest application message payload, bytes.
    pub max_message_bytes: Option<usize>,
    /// Most undelivered entries kept per group.
    pub max_backlog: Option<u64>,
    /// Undelivered entries older than this are deleted, seconds.
    pub max_age_secs: Option<u64>,
    /// Requests per second per device, and burst.
    pub rate_per_sec: Option<f64>,
    /// Burst of the per-device bucket.
    pub rate_burst: Option<f64>,
    /// Enrolments per second across the server.
    pub enrol_per_sec: Option<f64>,
    /// Share of the enrolment rate one address may use (0 to 1).
    pub enrol_addr_share: Option<f64>,
    /// Requests per second per address on the routes without a token.
    pub addr_per_sec: Option<f64>,
    /// Burst of the per-address bucket.
    pub addr_burst: Option<f64>,
    /// Most bytes in one inbox page.
    pub page_bytes: Option<usize>,
    /// Most bytes queued for one WebSocket connection.
    pub ws_queue_bytes: Option<usize>,
    /// Most connections open at once.
    pub max_connections: Option<usize>,
}

/// `[timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// A response or push that makes no progress for this long closes the
    /// connection.
    pub write_secs: Option<u64>,
    /// Request headers must arrive within this.
    pub header_read_secs: Option<u64>,
    /// A request body must arrive within this.
    pub body_read_secs: Option<u64>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// A `tracing` filter: `info`, `warn`, `sitrep_server=debug`, ...
    pub level: Option<String>,
    /// `text` or `json`.
    pub format: Option<String>,
}

/// Every key the environment may set, as `(section, key)`.
const KEYS: &[(&str, &str)] = &[
    ("", "data"),
    ("", "listen"),
    ("", "org_name"),
    ("", "trusted_proxies"),
    ("limits", "max_body_bytes"),
    ("limits", "max_message_bytes"),
    ("limits", "max_backlog"),
    ("limits", "max_age_secs"),
    ("limits", "rate_per_sec"),
    ("limits", "rate_burst"),
    ("limits", "enrol_per_sec"),
    ("limits", "enrol_addr_share"),
    ("limits", "addr_per_sec"),
    ("limits", "addr_burst"),
    ("limits", "page_bytes"),
    ("limits", "ws_queue_bytes"),
    ("limits", "max_connections"),
    ("timeouts", "write_secs"),
    ("timeouts", "header_read_secs"),
    ("timeouts", "body_read_secs"),
    ("log", "level"),
    ("log", "format"),
    ("tls", "cert"),
    ("tls", "key"),
    ("tls", "plain_http"),
    ("metrics", "token_file"),
    ("web", "dir"),
    ("push", "allowed_hosts"),
    ("push", "contact"),
];

/// The environment variable for a key.
pub fn env_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("SITREP_{}", key.to_uppercase())
    } else {
        format!("SITREP_{}_{}", section.to_uppercase(), key.to_uppercase())
    }
}

impl File {
    /// The file at `path` (or none), with the environment laid over it.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut table: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| {
                    format!("cannot read the configuration file {}", p.display())
                })?;
                text.parse()
                    .with_context(|| format!("{} is not valid TOML", p.display()))?
            }
            None => toml::Table::new(),
        };
        for (section, key) in KEYS {
            let name = env_name(section, key);
            let Some(raw) = env(&name) else {
                continue;
            };
            // A TOML value (a number, a list) if it reads as one, else a string.
            let value = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            let into = if section.is_empty() {
                &mut table
            } else {
                table
                    .entry(section.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .with_context(|| format!("[{section}] must be a section"))?
            };
            into.insert(key.to_string(), value);
        }
        let file: File = File::deserialize(table).map_err(|e| {
            anyhow::anyhow!(
                "configuration{}: {e}",
                path.map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default()
            )
        })?;
        if let Some(f) = &file.log.format
            && !matches!(f.as_str(), "text" | "json")
        {
            bail!("log.format is text or json, not {f:?}");
        }
        if let Some(s) = file.limits.enrol_addr_share
            && !(s > 0.0 && s <= 1.0)
        {
            bail!("limits.enrol_addr_share is between 0 and 1, not {s}");
        }
        for (name, v) in [
            ("rate_per_sec", file.limits.rate_per_sec),
            ("rate_burst", file.limits.rate_burst),
            ("enrol_per_sec", file.limits.enrol_per_sec),
            ("addr_per_sec", file.limits.addr_per_sec),
            ("addr_burst", file.limits.addr_burst),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                bail!("limits.{name} must be above 0, not {v}");
            }
        }
        Ok(file)
    }

    /// The server's settings: these over the defaults.
    pub fn server_config(&self, data: PathBuf) -> anyhow::Result<sitrep_server::Config> {
        let mut c = sitrep_server::Config::new(data);
        let l = &self.limits;
        macro_rules! set {
            ($field:ident, $v:expr) => {
                if let Some(v) = $v {
                    c.$field = v;
                }
            };
        }
        set!(max_body, l.max_body_bytes);
        set!(max_message, l.max_message_bytes);
        set!(max_backlog, l.max_backlog);
        set!(max_age_secs, l.max_age_secs);
        set!(rate_per_sec, l.rate_per_sec);
        set!(rate_burst, l.rate_burst);
        set!(enrol_per_sec, l.enrol_per_sec);
        set!(enrol_addr_share, l.enrol_addr_share);
        set!(addr_per_sec, l.addr_per_sec);
        set!(addr_burst, l.addr_burst);
        set!(page_bytes, l.page_bytes);
        set!(ws_queue_bytes, l.ws_queue_bytes);
        set!(max_connections, l.max_connections);
        let t = &self.timeouts;
        set!(write_timeout, t.write_secs.map(Duration::from_secs));
        set!(
            header_read_timeout,
            t.header_read_secs.map(Duration::from_secs)
        );
        set!(body_read_timeout, t.body_read_secs.map(Duration::from_secs));
        if let Some(p) = &self.trusted_proxies {
            c.trusted_proxies = p.clone();
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => {
                c.tls = Some(sitrep_server::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                });
            }
            (None, None) => {}
            _ => bail!("tls.cert and tls.key go together"),
        }
        c.plain_http = self.tls.plain_http.unwrap_or(false);
        if let Some(f) = &self.metrics.token_file {
            let token = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read metrics.token_file {}", f.display()))?;
            let token = token.trim();
            if token.len() < 16 || token.len() > 128 || !token.is_ascii() {
                bail!("metrics.token_file holds 16 to 128 ASCII characters");
            }
            c.metrics_token = Some(token.to_string());
        }
        c.web_dir = self.web.dir.clone();
        if let Some(h) = &self.push.allowed_hosts {
            c.push_hosts = h.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
            if let Some(bad) = c
                .push_hosts
                .iter()
                .find(|h| !sitrep_server::push::valid_host(h))
            {
                bail!(
                    "push.allowed_hosts: {bad:?} is not a host name (no scheme, port, path or empty part)"
                );
            }
        }
        if let Some(contact) = &self.push.contact {
            if !(contact.starts_with("mailto:") || contact.starts_with("https://")) {
                bail!("push.contact is a mailto: or https: address, not {contact:?}");
            }
            c.push_contact = contact.clone();
        }
        if c.max_message > c.max_body {
            bail!(
                "limits.max_message_bytes ({}) is larger than limits.max_body_bytes ({})",
                c.max_message,
                c.max_body
            );
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example sets every key, and each key the environment
    /// may set is one the file knows.
    #[test]
    fn the_documented_example_parses_and_every_key_is_known() {
        let doc = include_str!("../../../docs/configuration.md");
        let mut examples = doc
            .split("```toml")
            .skip(1)
            .filter_map(|s| s.split("```").next());
        let example = examples
            .next()
            .expect("an example in docs/configuration.md");
        let production = examples.next().expect("a production example");
        let dir = std::env::temp_dir().join(format!("sitrep-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sitrep.toml");
        std::fs::write(&path, example).expect("write");
        let f = File::load(Some(&path), |_| None).expect("the example parses");
        let c = f.server_config(PathBuf::from("d")).expect("valid");
        assert_eq!(c.rate_per_sec, 2_000.0);
        for (section, key) in KEYS {
            // A key without a default is shown commented out.
            assert!(
                example.contains(&format!("\n{key} ="))
                    || example.contains(&format!("\n# {key} =")),
                "{section}.{key} is in the example"
            );
        }
        assert!(c.tls.is_none() && !c.plain_http);
        std::fs::write(&path, production).expect("write");
        let f = File::load(Some(&path), |_| None).expect("the production example parses");
        let c = f.server_config(PathBuf::from("d")).expect("valid");
        assert!(c.tls.is_some());
        // A certificate without its key is refused.
        std::fs::write(&path, "[tls]\ncert = \"c.pem\"\n").expect("write");
        let f = File::load(Some(&path), |_| None).expect("parses");
        assert!(f.server_config(PathBuf::from("d")).is_err());
        // Unknown keys are errors, in the file and in a section.
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisten_adress = \"x\"\n").expect("write");
        let e = File::load(Some(&path), |_| None).expect_err("unknown key");
        assert!(e.to_string().contains("listen_adress"), "{e}");
        std::fs::write(&path, "[limits]\nrate_per_second = 5\n").expect("write");
        assert!(File::load(Some(&path), |_| None).is_err());
        // The environment wins over the file; a bad value is refused.
        std::fs::write(&path, "[limits]\nrate_per_sec = 5.0\n").expect("write");
        let f = File::load(Some(&path), |k| {
            (k == "SITREP_LIMITS_RATE_PER_SEC").then(|| "7.5".to_string())
        })
        .expect("env");
        assert_eq!(f.limits.rate_per_sec, Some(7.5));
        assert!(
            File::load(None, |k| (k == "SITREP_LIMITS_RATE_PER_SEC")
                .then(|| "0".into()))
            .is_err()
        );
        assert!(File::load(None, |k| (k == "SITREP_LOG_FORMAT").then(|| "xml".into())).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn push_hosts_must_be_host_names() {
        for bad in [
            "",
            " ",
            ".",
            ".fcm.googleapis.com",
            "https://fcm.googleapis.com",
            "fcm.googleapis.com:443",
            "a..b",
            "host/",
        ] {
            let f = File::load(None, |k| {
                (k == "SITREP_PUSH_ALLOWED_HOSTS").then(|| format!("[\"{bad}\"]"))
            })
            .expect("parses");
            assert!(
                f.server_config(PathBuf::from("d")).is_err(),
                "{bad:?} refused"
            );
        }
        let f = File::load(None, |k| {
            (k == "SITREP_PUSH_ALLOWED_HOSTS")
                .then(|| "[\"Push.Example.NHS.uk\", \"127.0.0.1\"]".to_string())
        })
        .expect("parses");
        let c = f.server_config(PathBuf::from("d")).expect("valid");
        assert_eq!(c.push_hosts, ["push.example.nhs.uk", "127.0.0.1"]);
    }
}
